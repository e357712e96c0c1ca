
"""Your camera, your classes, end to end on data the test makes: synthetic street frames -> a rosbag2 ->
`msseg-bag frames` (spacing, near-duplicates, manifest, pre-labels, every input encoding) -> labels in another
class table (road / sidewalk / obstacle / other) -> `msseg-data check` -> a short fine-tune from the `camvid`
zoo model, which beats the same network trained from ImageNet for the same steps -> the real segmentation
node on a real DDS graph publishing the new classes and a road mask from the new drivable class."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers_ros import FAST_PARAMS, SegmentationClient, image_array, namespace, rgb_image
from paths import REPO
from rosbags.rosbag2 import Reader, Writer

from msseg_core.checkpoint import load_meta
from msseg_core.cli import data as data_cli
from msseg_core.cli import train as train_cli
from msseg_core.synthetic import SceneSequence, render_scene
from msseg_ros.bag import cli as bag_cli
from msseg_ros.bag.frames import MANIFEST, change, read_manifest, thumbnail
from msseg_ros.bag.info import BAG_VERSION, storage_plugin
from msseg_ros.bag.make import make_bag
from msseg_ros.transport import topics
from msseg_ros.transport.cdr import typestore
from msseg_ros.transport.graph import NodeProcess, ros_arguments
from msseg_ros.transport.messages import mono8_array, stamp_ns

pytestmark = pytest.mark.ros

H, W = 96, 128
TRAIN_SEEDS, VAL_SEEDS = (3, 5, 8), (13, 21)  # streets: the val ones are held out
PER_SEED = 6  # frames per street, 0.5 s apart in the drive (4 m at 8 m/s)
STILL = 4  # extra copies of one frame: the robot stands still for 0.4 s
RATE = 10.0  # Hz of the bag's stamps
NAMES = ["road", "sidewalk", "obstacle", "other"]
PALETTE = [(128, 64, 128), (244, 35, 232), (220, 20, 60), (70, 70, 70)]
CLASSES_YAML = """name: my_robot
classes:
  - {name: road, color: [128, 64, 128], drivable: true}
  - {name: sidewalk, color: [244, 35, 232]}
  - {name: obstacle, color: [220, 20, 60]}
  - {name: other, color: [70, 70, 70]}
"""
CAMVID_TO_4 = np.full(256, 255, np.uint8)  # Road -> road, Pavement -> sidewalk, things -> obstacle, rest -> other
for _camvid, _new in {3: 0, 4: 1, 2: 2, 6: 2, 7: 2, 8: 2, 9: 2, 10: 2, 0: 3, 1: 3, 5: 3}.items():
    CAMVID_TO_4[_camvid] = _new


class Drive:
    """The frames of the bag, in message order: (rgb, CamVid labels, street seed)."""

    def __init__(self) -> None:
        self.frames: list[tuple[np.ndarray, np.ndarray, int]] = []
        for seed in (*TRAIN_SEEDS, *VAL_SEEDS):
            seq = SceneSequence(seed, W, H, fps=2.0)
            for i in range(PER_SEED):
                f = seq.frame(i)
                self.frames.append((f.rgb, f.labels, seed))
                if seed == TRAIN_SEEDS[0] and i == 2:
                    self.frames += [(f.rgb, f.labels, seed)] * STILL
        self.names = [f"drive_f{n:04d}" for n in range(len(self.frames))]

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.frames[i][:2]


@pytest.fixture(scope="module")
def drive() -> Drive:
    return Drive()


@pytest.fixture(scope="module")
def bag(drive: Drive, tmp_path_factory) -> Path:
    """The drive as a rosbag2: rgb8 images, CameraInfo and CamVid ground truth with one stamp per frame."""
    out = tmp_path_factory.mktemp("bags") / "drive"
    make_bag(drive, out, rate=RATE)
    return out


def ground_truth(bag: Path) -> dict[int, np.ndarray]:
    ts = typestore()
    found = {}
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == topics.GROUND_TRUTH_LABELS]
        for conn, _, raw in reader.messages(connections=conns):
            msg = ts.deserialize_cdr(raw, conn.msgtype)
            found[stamp_ns(msg.header.stamp)] = mono8_array(msg)
    return found


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# -------------------------------------------------------------------------------------- msseg-bag frames
def test_frames_at_a_spacing_in_time_skip_a_standing_robot(bag: Path, drive: Drive, tmp_path, capsys):
    out = tmp_path / "frames"
    assert bag_cli.main(["frames", str(bag), "--out", str(out), "--every", "0.25"]) == 0
    rows = read_manifest(out)
    assert list(rows[0]) == ["file", "bag", "topic", "stamp_ns", "index"]
    stamps = [r["stamp_ns"] for r in rows]
    assert all(b - a >= 0.25e9 for a, b in zip(stamps, stamps[1:], strict=False))
    start = int(1_700_000_000 * 1e9)
    for r in rows:  # the stamp and index are the message's; the image is that message's frame, losslessly
        assert r["stamp_ns"] == start + round(r["index"] * 1e9 / RATE) and r["topic"] == topics.CAMERA_IMAGE
        assert r["bag"] == str(bag) and r["file"] == f"images/drive_{r['index']:06d}.png"
        written = cv2.imread(str(out / r["file"]))[:, :, ::-1]
        np.testing.assert_array_equal(written, drive.frames[r["index"]][0])
    summary = capsys.readouterr().out
    assert '"similar": 1' in summary  # one candidate fell in the standing-still stretch after a written frame
    thumbs = [thumbnail(cv2.imread(str(out / r["file"]))[:, :, ::-1]) for r in rows]
    assert min(change(a, b) for a, b in zip(thumbs, thumbs[1:], strict=False)) >= 3.0
    assert files(out) == sorted([MANIFEST, *(r["file"] for r in rows)])  # no labels, no temporary files


def test_frames_every_n_messages_and_min_change_zero_keeps_duplicates(bag: Path, drive: Drive, tmp_path, capsys):
    keep = tmp_path / "all"
    assert bag_cli.main(["frames", str(bag), "--out", str(keep), "--every-frames", "1", "--min-change", "0"]) == 0
    assert [r["index"] for r in read_manifest(keep)] == list(range(len(drive)))
    dedup = tmp_path / "dedup"
    assert bag_cli.main(["frames", str(bag), "--out", str(dedup), "--every-frames", "1"]) == 0
    kept = [r["index"] for r in read_manifest(dedup)]
    assert len(kept) == len(drive) - STILL and '"similar": 4' in capsys.readouterr().out
    third = tmp_path / "third"
    assert bag_cli.main(["frames", str(bag), "--out", str(third), "--every-frames", "3", "--min-change", "0",
                         "--image-format", "jpg", "--limit", "5"]) == 0
    rows = read_manifest(third)
    assert [r["index"] for r in rows] == [0, 3, 6, 9, 12] and rows[0]["file"].endswith(".jpg")


@pytest.mark.parametrize("encoding", ["bgr8", "mono8", "yuv422", "jpeg"])
def test_frames_decode_what_the_node_takes(drive: Drive, tmp_path, encoding):
    """A camera's own encoding (here bgr8, mono8, UYVY and JPEG CompressedImage on its own topic name)."""
    ts = typestore()
    rgb = drive.frames[0][0]
    path = tmp_path / f"cam_{encoding}"
    msgtype = "sensor_msgs/msg/CompressedImage" if encoding == "jpeg" else "sensor_msgs/msg/Image"
    with Writer(path, version=BAG_VERSION, storage_plugin=storage_plugin("mcap")) as writer:
        conn = writer.add_connection("/front/image", msgtype, typestore=ts)
        for k in range(3):
            t = 1_000_000_000 * (k + 1)
            header = ts.types["std_msgs/msg/Header"](
                stamp=ts.types["builtin_interfaces/msg/Time"](sec=k + 1, nanosec=0), frame_id="cam")
            frame = np.ascontiguousarray(np.roll(rgb, 40 * k, axis=1))  # a moving view
            if encoding == "jpeg":
                ok, buf = cv2.imencode(".jpg", frame[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
                msg = ts.types[msgtype](header=header, format="jpeg", data=buf.reshape(-1))
            else:
                code = {"bgr8": cv2.COLOR_RGB2BGR, "mono8": cv2.COLOR_RGB2GRAY, "yuv422": cv2.COLOR_RGB2YUV_UYVY}
                pixels = np.ascontiguousarray(cv2.cvtColor(frame, code[encoding])).reshape(H, -1)
                msg = ts.types[msgtype](header=header, height=H, width=W, encoding=encoding, is_bigendian=0,
                                        step=pixels.shape[1], data=pixels.reshape(-1))
            writer.write(conn, t, ts.serialize_cdr(msg, msgtype))
    out = tmp_path / "out"
    assert bag_cli.main(["frames", str(path), "--out", str(out), "--every", "0.5"]) == 0
    rows = read_manifest(out)
    assert [r["stamp_ns"] for r in rows] == [1e9, 2e9, 3e9] and rows[0]["topic"] == "/front/image"
    written = cv2.imread(str(out / rows[1]["file"]))[:, :, ::-1].astype(int)
    expected = np.roll(rgb, 40, axis=1).astype(int)
    if encoding == "mono8":
        expected = np.repeat(cv2.cvtColor(np.roll(rgb, 40, axis=1), cv2.COLOR_RGB2GRAY)[:, :, None], 3, 2).astype(int)
    tolerance = {"bgr8": 0, "mono8": 0, "yuv422": 12, "jpeg": 12}[encoding]  # chroma subsampling, JPEG
    assert np.abs(written - expected).mean() <= tolerance


def test_frames_errors_are_one_line_and_write_nothing(bag: Path, tmp_path, capsys):
    out = tmp_path / "out"
    assert bag_cli.main(["frames", str(tmp_path / "no_bag"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("msseg-bag frames: error:") and "\n" not in err and not out.exists()
    assert bag_cli.main(["frames", str(bag), "--out", str(out), "--image-topic", topics.CAMERA_CAMERA_INFO]) == 2
    assert "not an Image or CompressedImage" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit) as exc:
        bag_cli.main(["frames", str(bag), "--out", str(out), "--every", "1", "--every-frames", "2"])
    assert exc.value.code == 2
    assert bag_cli.main(["frames", str(bag), "--out", str(out), "--limit", "2"]) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert bag_cli.main(["frames", str(bag), "--out", str(out)]) == 2  # a finished folder is never mixed into
    assert "already holds frames" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


@pytest.mark.slow
def test_prelabels_are_the_models_masks_in_the_folder_layout(bag: Path, tmp_path, capsys):
    out = tmp_path / "pre"
    assert bag_cli.main(["frames", str(bag), "--out", str(out), "--every", "1.0", "--limit", "3",
                         "--prelabel", "camvid", "--device", "cpu", "--backend", "torch", "--threads", "1"]) == 0
    rows = read_manifest(out)
    assert len(rows) == 3
    from msseg_core.runtime.segmenter import Segmenter

    seg = Segmenter.from_checkpoint("camvid", device="cpu", backend="torch", threads=1)
    truth = ground_truth(bag)
    agree, majority = [], []
    for r in rows:
        stem = Path(r["file"]).stem
        label = cv2.imread(str(out / "labels" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        image = cv2.imread(str(out / r["file"]))[:, :, ::-1]
        assert label.ndim == 2 and label.shape == (H, W) and label.max() < 11
        np.testing.assert_array_equal(label, seg.predict(np.ascontiguousarray(image)))
        agree.append((label == truth[r["stamp_ns"]]).mean())
        majority.append(np.bincount(truth[r["stamp_ns"]].ravel()).max() / truth[r["stamp_ns"]].size)
    # A useful start for the labeller, not noise: better than painting each frame in its most common class
    # (the synthetic street is not CamVid, so the zoo model is far from perfect on it).
    assert np.mean(agree) > np.mean(majority), (agree, majority)
    table = (out / "classes.yaml").read_text()
    assert "name: Road" in table and "drivable: true" in table and table.count("drivable") == 1
    capsys.readouterr()
    assert data_cli.main(["check", str(out)]) == 0  # the folder trains as it is
    assert "split train: 2 images" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ end to end
def label_as_my_robot(data: Path, bag: Path, drive: Drive) -> tuple[list[str], list[str]]:
    """The labeller: each extracted frame's ground truth (found by the manifest's stamp) in the new class
    table, alternately as a class-id PNG and a colour PNG; train.txt / val.txt by street."""
    truth = ground_truth(bag)
    (data / "labels").mkdir()
    train, val = [], []
    for k, row in enumerate(read_manifest(data)):
        stem = Path(row["file"]).stem
        ids = CAMVID_TO_4[truth[row["stamp_ns"]]]
        label = ids if k % 2 == 0 else np.asarray(PALETTE, np.uint8)[ids][:, :, ::-1]
        assert cv2.imwrite(str(data / "labels" / f"{stem}.png"), label)
        (val if drive.frames[row["index"]][2] in VAL_SEEDS else train).append(stem)
    (data / "train.txt").write_text("\n".join(train) + "\n")
    (data / "val.txt").write_text("\n".join(val) + "\n")
    (data / "classes.yaml").write_text(CLASSES_YAML)
    return train, val


def final_val(run: Path) -> dict:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))[-1]


STEPS = ["--set", "data.crop_size=[96,128]", "--set", "data.eval_size=[96,128]",
         "--set", "data.scale_range=[0.75,1.25]", "--set", "train.batch_size=4", "--set", "train.val_batch_size=8",
         "--set", "train.epochs=5", "--set", "train.threads=1", "--set", "train.device=cpu",
         "--set", "train.channels_last=off", "--set", "optim.lr=5e-3", "--set", "optim.freeze_encoder_epochs=1"]


@pytest.mark.slow
def test_from_a_bag_to_a_finetuned_model_on_the_node(bag: Path, drive: Drive, tmp_path, capsys):
    data = tmp_path / "my_robot"
    # 1. frames to label
    assert bag_cli.main(["frames", str(bag), "--out", str(data), "--every", "0.1"]) == 0
    assert len(read_manifest(data)) == len(drive) - STILL
    # 2. labelled in our own classes, 3. checked
    train, val = label_as_my_robot(data, bag, drive)
    assert len(train) == len(TRAIN_SEEDS) * PER_SEED and len(val) == len(VAL_SEEDS) * PER_SEED
    capsys.readouterr()
    assert data_cli.main(["check", str(data)]) == 0, capsys.readouterr().out
    assert "split val: 12 images" in capsys.readouterr().out
    # 4. fine-tune from the zoo, and the same network from ImageNet for the same steps
    tuned, scratch = tmp_path / "tuned", tmp_path / "imagenet"
    assert train_cli.main(["--init", "camvid", "--dataset", "folder", "--data-root", str(data), "--out", str(tuned),
                           *STEPS]) == 0
    log = capsys.readouterr().out
    init_line = [line for line in log.splitlines() if line.startswith("init from camvid:")]
    assert init_line == ["init from camvid: 520 of 523 tensors kept; re-initialised: score.weight, score.bias, "
                         "upscore.weight (classes differ: 11 -> 4)"], log
    assert "encoder frozen for epochs 1-1" in log and "encoder trained from epoch 2 on" in log
    assert train_cli.main(["--config", str(REPO / "config/train/folder_finetune_cpu.yaml"), "--data-root", str(data),
                           "--out", str(scratch), "--set", "model.init_from=",
                           "--set", "model.args={encoder: efficientnet_lite2}",
                           "--set", "model.encoder_weights=imagenet",
                           "--set", "data.mean=[0.498039,0.498039,0.498039]",
                           "--set", "data.std=[0.501961,0.501961,0.501961]", *STEPS]) == 0
    a, b = final_val(tuned), final_val(scratch)
    print(f"val mIoU after {a['epoch']} epochs: fine-tuned from camvid {float(a['val_miou']):.3f} "
          f"(pixel acc {float(a['val_pixel_acc']):.3f}), from ImageNet {float(b['val_miou']):.3f} "
          f"(pixel acc {float(b['val_pixel_acc']):.3f})")
    assert a["epoch"] == b["epoch"] == "5"
    assert float(a["val_miou"]) > float(b["val_miou"]) + 0.1, (a, b)
    assert float(a["val_pixel_acc"]) > float(b["val_pixel_acc"]), (a, b)
    best = tuned / "best.safetensors"
    meta = load_meta(best)
    assert meta.class_names == NAMES and meta.palette == [list(c) for c in PALETTE] and meta.road_classes == ["road"]
    assert meta.input_size == [96, 128] and meta.model_args == {"encoder": "efficientnet_lite2"}

    # 5. the node with the shipped parameters file (as the launch file starts it) and checkpoint:=best.safetensors
    ns = namespace("own_data")
    rgb, camvid = render_scene(34, W, H)  # a street neither split has seen
    args = ros_arguments(ns, params={"checkpoint": str(best), **FAST_PARAMS}, params_file=REPO / "config/camvid.yaml")
    with NodeProcess("segmentation_node", args) as proc:
        proc.wait_for_output("subscribed to", timeout=120)
        with SegmentationClient(ns) as client:
            client.wait_until_served(lambda: rgb_image(rgb), timeout=90)
            params = client.get_parameters(f"{ns}/msseg_node", ["class_names", "class_colors", "road_classes"])
            outputs = client.request(rgb_image(rgb))
        assert proc.alive, proc.output()
    assert params == {"class_names": NAMES, "road_classes": ["road"],
                      "class_colors": ["#{:02x}{:02x}{:02x}".format(*c) for c in PALETTE]}
    labels, road = image_array(outputs["labels"]), image_array(outputs["road_mask"])
    from msseg_core.runtime.segmenter import Segmenter

    reference = Segmenter.from_checkpoint(best, **FAST_PARAMS)
    np.testing.assert_array_equal(labels, reference.predict(rgb))  # the node runs the fine-tuned model
    assert labels.max() < 4 and set(np.unique(labels)) >= {0, 3}
    np.testing.assert_array_equal(image_array(outputs["color_mask"]), np.asarray(PALETTE, np.uint8)[labels])

    def iou(x: np.ndarray, y: np.ndarray) -> float:
        return float((x & y).sum() / max(1, (x | y).sum()))

    assert iou(road > 0, labels == 0) > 0.9  # road_mask is the new drivable class (after its clean-up)
    assert iou(road > 0, CAMVID_TO_4[camvid] == 0) > 0.6  # and it is where the road is
