"""msseg-bag: make (both storages), offline eval (== msseg-eval), compressed bags, record, helpers."""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from msseg_ros import bag

N_FRAMES = 5
SIZE = (48, 64)  # (height, width)


@pytest.fixture(scope="module")
def camvid_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from msseg_core.data import write_fake_camvid

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
    from msseg_core.inference import Segmenter

    # backend torch: the comparison must not depend on which backend 'auto' times faster today.
    return Segmenter.from_checkpoint(checkpoint, device="cpu", backend="torch", threads=1)


@pytest.fixture(scope="module")
def mcap_bag(tmp_path_factory: pytest.TempPathFactory, camvid_root: Path) -> Path:
    out = tmp_path_factory.mktemp("bags") / "camvid_test"
    assert bag.main(["make", "--dataset", "camvid", "--data-root", str(camvid_root), "--split", "test",
                     "--out", str(out), "--rate", "4"]) == 0
    return out


def read_all(path: Path) -> dict[str, list[tuple[int, object]]]:
    """topic -> [(log time, deserialised message)] through the typestore."""
    ts = bag.typestore()
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
    summary = bag.make_bag(Reversed(dataset), out, storage=storage, rate=5.0)
    assert summary["frames"] == N_FRAMES
    meta = (out / "metadata.yaml").read_text()
    assert "rosbag2_bagfile_information" in meta and f"storage_identifier: {storage}" in meta
    assert "version: 8" in meta
    ts = bag.typestore()
    with Reader(out) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        assert types == {bag.IMAGE_TOPIC: "sensor_msgs/msg/Image", bag.INFO_TOPIC: "sensor_msgs/msg/CameraInfo",
                         bag.GT_TOPIC: "sensor_msgs/msg/Image"}
        for c in reader.connections:  # real definitions and type hashes, as ros2 bag needs them
            assert c.ext.serialization_format == "cdr"
            assert c.digest == ts.hash_rihs01(c.msgtype) == installed_type_hash(c.msgtype)
            assert c.msgcount == N_FRAMES
    msgs = read_all(out)
    stamps = {topic: [bag.stamp_ns(m.header.stamp) for _, m in items] for topic, items in msgs.items()}
    logs = {topic: [t for t, _ in items] for topic, items in msgs.items()}
    assert stamps[bag.IMAGE_TOPIC] == stamps[bag.GT_TOPIC] == stamps[bag.INFO_TOPIC] == logs[bag.IMAGE_TOPIC]
    assert np.all(np.diff(stamps[bag.IMAGE_TOPIC]) == 200_000_000)  # 1 / 5 Hz
    frames = json.loads(bag.bag_info(out).custom["msseg.frames"])
    assert frames == sorted(dataset.names, key=bag.frame_key)
    for n, name in enumerate(frames):
        rgb, mask = dataset[dataset.names.index(name)]
        img, gt, info = (msgs[t][n][1] for t in (bag.IMAGE_TOPIC, bag.GT_TOPIC, bag.INFO_TOPIC))
        assert img.encoding == "rgb8" and (img.height, img.width) == SIZE and img.step == SIZE[1] * 3
        assert np.array_equal(np.asarray(img.data).reshape(*SIZE, 3), rgb)
        assert gt.encoding == "mono8" and np.array_equal(bag.mono8_array(gt), mask)
        assert img.header.frame_id == gt.header.frame_id == info.header.frame_id == bag.CAMERA_FRAME
        fx = SIZE[1] / 2 / math.tan(math.radians(bag.CAMVID_HFOV_DEG) / 2)
        assert info.k[0] == pytest.approx(fx) and info.k[2] == pytest.approx((SIZE[1] - 1) / 2)
        assert (info.width, info.height) == (SIZE[1], SIZE[0]) and info.distortion_model == "plumb_bob"
    assert (np.asarray([bag.mono8_array(m) for _, m in msgs[bag.GT_TOPIC]]) == 255).any()  # void kept


def test_frame_key_orders_camvid_names() -> None:
    names = ["0001TP_008550", "Seq05VD_f00030", "0001TP_006690", "0006R0_f01000", "0006R0_f00930", "0001TP_06720"]
    assert sorted(names, key=bag.frame_key) == ["0001TP_006690", "0001TP_06720", "0001TP_008550", "0006R0_f00930",
                                                "0006R0_f01000", "Seq05VD_f00030"]


def test_eval_equals_msseg_eval(tmp_path: Path, mcap_bag: Path, camvid_root: Path, checkpoint: Path,
                                dataset, segmenter, capsys: pytest.CaptureFixture) -> None:
    from msseg_core.evaluate import evaluate_split
    from msseg_core.evaluate import main as eval_main

    report = bag.evaluate_bag(mcap_bag, segmenter)
    direct = evaluate_split(segmenter, dataset)
    assert report["confusion_matrix"] == direct.mat.tolist()
    assert report["miou"] == direct.miou and report["num_images"] == N_FRAMES
    assert report["frames_without_gt"] == 0 and report["gt_without_frames"] == 0
    assert report["throughput_fps"] > 0
    # The two command lines agree too, key for key on the shared schema.
    common = ["--checkpoint", str(checkpoint), "--device", "cpu", "--backend", "torch", "--threads", "1"]
    assert bag.main(["eval", "--bag", str(mcap_bag), "--json", str(tmp_path / "bag.json"), *common]) == 0
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
    png = bag.make_bag(dataset, tmp_path / "png", image_format="png", storage="sqlite3")
    assert png["image_topic"] == bag.COMPRESSED_TOPIC
    reference = bag.evaluate_bag(tmp_path / "png", segmenter)
    assert reference["image_topic"] == bag.COMPRESSED_TOPIC and reference["num_images"] == N_FRAMES
    from msseg_core.evaluate import evaluate_split

    assert reference["confusion_matrix"] == evaluate_split(segmenter, dataset).mat.tolist()  # PNG is lossless
    bag.make_bag(dataset, tmp_path / "jpeg", image_format="jpeg", jpeg_quality=90)
    lossy = bag.evaluate_bag(tmp_path / "jpeg", segmenter)
    assert lossy["num_images"] == N_FRAMES and lossy["frames_without_gt"] == 0


def test_eval_counts_frames_without_ground_truth(tmp_path: Path, mcap_bag: Path, segmenter) -> None:
    from rosbags.rosbag2 import Writer

    # Copy the bag, leaving out the labels of the first two frames.
    out = tmp_path / "partial"
    with Reader(mcap_bag) as reader, Writer(out, version=bag.BAG_VERSION) as writer:
        conns = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=bag.typestore()) for c in reader.connections}
        skipped = 0
        for conn, t, raw in reader.messages():
            if conn.topic == bag.GT_TOPIC and skipped < 2:
                skipped += 1
                continue
            writer.write(conns[conn.id], t, raw)
    report = bag.evaluate_bag(out, segmenter)
    assert report["num_images"] == N_FRAMES - 2 and report["frames_without_gt"] == 2 and report["images"] == N_FRAMES
    with pytest.raises(ValueError, match="not in the bag"):
        bag.evaluate_bag(mcap_bag, segmenter, gt_topic="/nope")
    assert bag.main(["eval", "--bag", str(mcap_bag), "--image-topic", "/nope"]) == 2


def test_mono8_array_honours_step() -> None:
    from sensor_msgs.msg import Image

    rows = np.arange(12, dtype=np.uint8).reshape(3, 4)
    padded = np.concatenate([rows, np.full((3, 2), 99, np.uint8)], axis=1)
    msg = Image(height=3, width=4, step=6, encoding="mono8", data=padded.tobytes())
    assert np.array_equal(bag.mono8_array(msg), rows)
    msg.encoding = "rgb8"
    with pytest.raises(ValueError, match="mono8"):
        bag.mono8_array(msg)


def test_record_writes_a_readable_bag(tmp_path: Path) -> None:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from nav_msgs.msg import OccupancyGrid
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    ctx = Context()
    rclpy.init(args=[], context=ctx)
    node = rclpy.create_node("msseg_test_record_source", context=ctx)
    pubs = {
        "/rec/image": node.create_publisher(Image, "/rec/image", 10),
        "/rec/compressed": node.create_publisher(CompressedImage, "/rec/compressed", 10),
        "/rec/info": node.create_publisher(CameraInfo, "/rec/info", 10),
        "/rec/grid": node.create_publisher(OccupancyGrid, "/rec/grid", 10),
        "/rec/diagnostics": node.create_publisher(DiagnosticArray, "/rec/diagnostics", 10),
    }
    count = [0]

    def publish() -> None:
        count[0] += 1
        image = Image(height=2, width=3, encoding="mono8", step=3, data=bytes(range(6)))
        image.header.stamp.sec = count[0]
        pubs["/rec/image"].publish(image)
        pubs["/rec/compressed"].publish(CompressedImage(format="png", data=b"\x89PNG"))
        pubs["/rec/info"].publish(CameraInfo(width=3, height=2))
        grid = OccupancyGrid()
        grid.info.width, grid.info.height, grid.data = 2, 1, [0, 100]
        pubs["/rec/grid"].publish(grid)
        pubs["/rec/diagnostics"].publish(DiagnosticArray(status=[DiagnosticStatus(name="x", message="ok")]))

    node.create_timer(0.05, publish)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    spinner = threading.Thread(target=lambda: _spin(executor), daemon=True)
    spinner.start()
    out = tmp_path / "recorded"
    try:
        # Discovery first (all five topics), then two seconds of recording.
        counts = bag.record_bag(str(out), list(pubs), duration=2.0, storage="sqlite3", discovery_timeout=20.0)
    finally:
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
    assert set(counts) == set(pubs) and all(c > 0 for c in counts.values()), counts
    info = bag.bag_info(out)
    assert {t: ty for t, (ty, _) in info.topics.items()} == {
        "/rec/image": "sensor_msgs/msg/Image", "/rec/compressed": "sensor_msgs/msg/CompressedImage",
        "/rec/info": "sensor_msgs/msg/CameraInfo", "/rec/grid": "nav_msgs/msg/OccupancyGrid",
        "/rec/diagnostics": "diagnostic_msgs/msg/DiagnosticArray"}
    msgs = read_all(out)
    image = msgs["/rec/image"][0][1]
    assert bag.mono8_array(image).tolist() == [[0, 1, 2], [3, 4, 5]] and image.header.stamp.sec >= 1
    assert list(msgs["/rec/grid"][0][1].data) == [0, 100]
    assert msgs["/rec/diagnostics"][0][1].status[0].name == "x"
    assert bytes(msgs["/rec/compressed"][0][1].data) == b"\x89PNG"
    times = [t for t, _ in msgs["/rec/image"]]
    assert times == sorted(times) and abs(times[0] / 1e9 - time.time()) < 120  # receive time as log time


def _spin(executor) -> None:
    import contextlib

    with contextlib.suppress(Exception):  # the context shuts down under spin()
        executor.spin()
