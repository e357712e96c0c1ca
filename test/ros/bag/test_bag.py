"""msseg-bag: make (both storages), offline eval (== msseg-eval), compressed bags, record, helpers."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from msseg_ros.bag import cli
from msseg_ros.bag.evaluate import evaluate_bag
from msseg_ros.bag.info import BAG_VERSION, bag_info
from msseg_ros.bag.make import CAMVID_HFOV_DEG, frame_key, make_bag
from msseg_ros.bag.record import record_bag
from msseg_ros.transport import topics
from msseg_ros.transport.cdr import typestore
from msseg_ros.transport.messages import mono8_array, stamp_ns

pytestmark = pytest.mark.ros

N_FRAMES = 5
IMAGE_TOPIC, INFO_TOPIC, GT_TOPIC = topics.CAMERA_IMAGE, topics.CAMERA_CAMERA_INFO, topics.GROUND_TRUTH_LABELS
SIZE = (48, 64)  # (height, width)


@pytest.fixture(scope="module")
def camvid_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fake_datasets import write_fake_camvid

    return write_fake_camvid(tmp_path_factory.mktemp("camvid"), "test", n=N_FRAMES, size=SIZE, seed=3)


@pytest.fixture(scope="module")
def dataset(camvid_root: Path):
    from msseg_core.data import build_dataset

    return build_dataset("camvid", camvid_root, "test")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_model import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", input_size=(32, 48))


@pytest.fixture(scope="module")
def segmenter(checkpoint: Path):
    from msseg_core.runtime.segmenter import Segmenter

    # backend torch: the comparison must not depend on which backend 'auto' times faster today.
    return Segmenter.from_checkpoint(checkpoint, device="cpu", backend="torch", threads=1)


@pytest.fixture(scope="module")
def mcap_bag(tmp_path_factory: pytest.TempPathFactory, camvid_root: Path) -> Path:
    out = tmp_path_factory.mktemp("bags") / "camvid_test"
    assert cli.main(["make", "--dataset", "camvid", "--data-root", str(camvid_root), "--split", "test",
                     "--out", str(out), "--rate", "4"]) == 0
    return out


def read_all(path: Path) -> dict[str, list[tuple[int, object]]]:
    """topic -> [(log time, deserialised message)] through the typestore."""
    ts = typestore()
    out: dict[str, list[tuple[int, object]]] = {}
    with Reader(path) as reader:
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, ts.deserialize_cdr(raw, conn.msgtype)))
    return out


def installed_type_hash(msgtype: str) -> str:
    """The RIHS01 hash the installed ROS 2 message package declares (share/<pkg>/msg/<Type>.json)."""
    pkg, _, name = msgtype.split("/")
    path = Path(sys.prefix, "share", pkg, "msg", f"{name}.json")
    if not path.is_file():
        pytest.skip(f"{path} not installed")
    hashes = json.loads(path.read_text())["type_hashes"]
    return next(h["hash_string"] for h in hashes if h["type_name"] == msgtype)


class Reversed:
    """The dataset with its items in reverse order: the bag must still be in frame order."""

    def __init__(self, ds):
        self.ds = ds
        self.names = list(reversed(ds.names))

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return self.ds[len(self.ds) - 1 - i]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_make_writes_a_valid_bag_in_frame_order(tmp_path: Path, dataset, storage: str) -> None:
    out = tmp_path / f"bag_{storage}"
    summary = make_bag(Reversed(dataset), out, storage=storage, rate=5.0)
    assert summary["frames"] == N_FRAMES
    meta = (out / "metadata.yaml").read_text()
    assert "rosbag2_bagfile_information" in meta and f"storage_identifier: {storage}" in meta
    assert "version: 8" in meta
    ts = typestore()
    with Reader(out) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        assert types == {IMAGE_TOPIC: "sensor_msgs/msg/Image", INFO_TOPIC: "sensor_msgs/msg/CameraInfo",
                         GT_TOPIC: "sensor_msgs/msg/Image"}
        for c in reader.connections:  # real definitions and type hashes, as ros2 bag needs them
            assert c.ext.serialization_format == "cdr"
            assert c.digest == ts.hash_rihs01(c.msgtype) == installed_type_hash(c.msgtype)
            assert c.msgcount == N_FRAMES
    msgs = read_all(out)
    stamps = {topic: [stamp_ns(m.header.stamp) for _, m in items] for topic, items in msgs.items()}
    logs = {topic: [t for t, _ in items] for topic, items in msgs.items()}
    assert stamps[IMAGE_TOPIC] == stamps[GT_TOPIC] == stamps[INFO_TOPIC] == logs[IMAGE_TOPIC]
    assert np.all(np.diff(stamps[IMAGE_TOPIC]) == 200_000_000)  # 1 / 5 Hz
    frames = json.loads(bag_info(out).custom["msseg.frames"])
    assert frames == sorted(dataset.names, key=frame_key)
    for n, name in enumerate(frames):
        rgb, mask = dataset[dataset.names.index(name)]
        img, gt, info = (msgs[t][n][1] for t in (IMAGE_TOPIC, GT_TOPIC, INFO_TOPIC))
        assert img.encoding == "rgb8" and (img.height, img.width) == SIZE and img.step == SIZE[1] * 3
        assert np.array_equal(np.asarray(img.data).reshape(*SIZE, 3), rgb)
        assert gt.encoding == "mono8" and np.array_equal(mono8_array(gt), mask)
        assert img.header.frame_id == gt.header.frame_id == info.header.frame_id == topics.CAMERA_FRAME
        fx = SIZE[1] / 2 / math.tan(math.radians(CAMVID_HFOV_DEG) / 2)
        assert info.k[0] == pytest.approx(fx) and info.k[2] == pytest.approx((SIZE[1] - 1) / 2)
        assert (info.width, info.height) == (SIZE[1], SIZE[0]) and info.distortion_model == "plumb_bob"
    assert (np.asarray([mono8_array(m) for _, m in msgs[GT_TOPIC]]) == 255).any()  # void kept


def test_frame_key_orders_camvid_names() -> None:
    names = ["0001TP_008550", "Seq05VD_f00030", "0001TP_006690", "0006R0_f01000", "0006R0_f00930", "0001TP_06720"]
    assert sorted(names, key=frame_key) == ["0001TP_006690", "0001TP_06720", "0001TP_008550", "0006R0_f00930",
                                                "0006R0_f01000", "Seq05VD_f00030"]


def test_eval_equals_msseg_eval(tmp_path: Path, mcap_bag: Path, camvid_root: Path, checkpoint: Path,
                                dataset, segmenter, capsys: pytest.CaptureFixture) -> None:
    from msseg_core.cli.evaluate import main as eval_main
    from msseg_core.evaluation.evaluate import evaluate_split

    report = evaluate_bag(mcap_bag, segmenter)
    direct = evaluate_split(segmenter, dataset)
    assert report["confusion_matrix"] == direct.mat.tolist()
    assert report["miou"] == direct.miou and report["num_images"] == N_FRAMES
    assert report["frames_without_gt"] == 0 and report["gt_without_frames"] == 0
    assert report["throughput_fps"] > 0
    # The two command lines agree too, key for key on the shared schema.
    common = ["--checkpoint", str(checkpoint), "--device", "cpu", "--backend", "torch", "--threads", "1"]
    assert cli.main(["eval", "--bag", str(mcap_bag), "--json", str(tmp_path / "bag.json"), *common]) == 0
    assert eval_main(["--data-root", str(camvid_root), "--split", "test", "--json", str(tmp_path / "eval.json"),
                      "--quiet", *common]) == 0
    capsys.readouterr()
    from_bag = json.loads((tmp_path / "bag.json").read_text())
    from_eval = json.loads((tmp_path / "eval.json").read_text())
    for key in ("miou", "mean_acc", "pixel_acc", "per_class_iou", "per_class_acc", "confusion_matrix", "num_images",
                "checkpoint"):
        assert from_bag[key] == from_eval[key], key
    assert {"throughput_fps", "frames_without_gt"} <= set(from_bag)


def test_compressed_bags(tmp_path: Path, dataset, segmenter) -> None:
    png = make_bag(dataset, tmp_path / "png", image_format="png", storage="sqlite3")
    assert png["image_topic"] == topics.CAMERA_COMPRESSED_IMAGE
    reference = evaluate_bag(tmp_path / "png", segmenter)
    assert reference["image_topic"] == topics.CAMERA_COMPRESSED_IMAGE and reference["num_images"] == N_FRAMES
    from msseg_core.evaluation.evaluate import evaluate_split

    assert reference["confusion_matrix"] == evaluate_split(segmenter, dataset).mat.tolist()  # PNG is lossless
    make_bag(dataset, tmp_path / "jpeg", image_format="jpeg", jpeg_quality=90)
    lossy = evaluate_bag(tmp_path / "jpeg", segmenter)
    assert lossy["num_images"] == N_FRAMES and lossy["frames_without_gt"] == 0


def test_eval_counts_frames_without_ground_truth(tmp_path: Path, mcap_bag: Path, segmenter) -> None:
    from rosbags.rosbag2 import Writer

    # Copy the bag, leaving out the labels of the first two frames.
    out = tmp_path / "partial"
    with Reader(mcap_bag) as reader, Writer(out, version=BAG_VERSION) as writer:
        conns = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=typestore()) for c in reader.connections}
        skipped = 0
        for conn, t, raw in reader.messages():
            if conn.topic == GT_TOPIC and skipped < 2:
                skipped += 1
                continue
            writer.write(conns[conn.id], t, raw)
    report = evaluate_bag(out, segmenter)
    assert report["num_images"] == N_FRAMES - 2 and report["frames_without_gt"] == 2 and report["images"] == N_FRAMES
    with pytest.raises(ValueError, match="not in the bag"):
        evaluate_bag(mcap_bag, segmenter, gt_topic="/nope")
    assert cli.main(["eval", "--bag", str(mcap_bag), "--image-topic", "/nope"]) == 2


def test_mono8_array_honours_step() -> None:
    from sensor_msgs.msg import Image

    rows = np.arange(12, dtype=np.uint8).reshape(3, 4)
    padded = np.concatenate([rows, np.full((3, 2), 99, np.uint8)], axis=1)
    msg = Image(height=3, width=4, step=6, encoding="mono8", data=padded.tobytes())
    assert np.array_equal(mono8_array(msg), rows)
    msg.encoding = "rgb8"
    with pytest.raises(ValueError, match="mono8"):
        mono8_array(msg)


def test_record_writes_a_readable_bag(tmp_path: Path) -> None:
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from helpers_ros import namespace
    from nav_msgs.msg import OccupancyGrid
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    from msseg_ros.transport.graph import PrivateContext

    ns = namespace("rec")
    types = {"image": Image, "compressed": CompressedImage, "info": CameraInfo, "grid": OccupancyGrid,
             "diagnostics": DiagnosticArray}
    count = [0]
    with PrivateContext("msseg_test_record_source") as ros:
        pubs = {name: ros.node.create_publisher(msg_type, f"{ns}/{name}", 10) for name, msg_type in types.items()}

        def publish() -> None:
            count[0] += 1
            image = Image(height=2, width=3, encoding="mono8", step=3, data=bytes(range(6)))
            image.header.stamp.sec = count[0]
            pubs["image"].publish(image)
            pubs["compressed"].publish(CompressedImage(format="png", data=b"\x89PNG"))
            pubs["info"].publish(CameraInfo(width=3, height=2))
            grid = OccupancyGrid()
            grid.info.width, grid.info.height, grid.data = 2, 1, [0, 100]
            pubs["grid"].publish(grid)
            pubs["diagnostics"].publish(DiagnosticArray(status=[DiagnosticStatus(name="x", message="ok")]))

        ros.node.create_timer(0.05, publish)
        out = tmp_path / "recorded"
        # Discovery first (all five topics), then two seconds of recording.
        counts = record_bag(str(out), [f"{ns}/{name}" for name in types], duration=2.0, storage="sqlite3",
                            discovery_timeout=20.0)
    assert set(counts) == {f"{ns}/{name}" for name in types} and all(c > 0 for c in counts.values()), counts
    info = bag_info(out)
    assert {t: ty for t, (ty, _) in info.topics.items()} == {
        f"{ns}/image": "sensor_msgs/msg/Image", f"{ns}/compressed": "sensor_msgs/msg/CompressedImage",
        f"{ns}/info": "sensor_msgs/msg/CameraInfo", f"{ns}/grid": "nav_msgs/msg/OccupancyGrid",
        f"{ns}/diagnostics": "diagnostic_msgs/msg/DiagnosticArray"}
    msgs = read_all(out)
    image = msgs[f"{ns}/image"][0][1]
    assert mono8_array(image).tolist() == [[0, 1, 2], [3, 4, 5]] and image.header.stamp.sec >= 1
    assert list(msgs[f"{ns}/grid"][0][1].data) == [0, 100]
    assert msgs[f"{ns}/diagnostics"][0][1].status[0].name == "x"
    assert bytes(msgs[f"{ns}/compressed"][0][1].data) == b"\x89PNG"
    times = [t for t, _ in msgs[f"{ns}/image"]]
    assert times == sorted(times) and abs(times[0] / 1e9 - time.time()) < 120  # receive time as log time
