"""`msseg-demo` for real: segmentation node + synthetic camera subprocesses over DDS, a tiny model,
a handful of small frames; then its montage, rosbag2 and printed summary, a replay of its own bag,
and its failure report when the node dies."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from paths import REPO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_model import write_tiny_checkpoint  # noqa: E402

from msseg_ros.transport import topics  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
OUTPUT_TOPICS = [topics.in_namespace(topics.NAMESPACE, o) for o in topics.OUTPUTS]


def run_demo(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """The console script as a user runs it (the repo on PYTHONPATH so a stale editable install
    cannot hide this tree's modules)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    script = Path(sys.executable).parent / "msseg-demo"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "msseg_ros.tools.demo"]
    return subprocess.run(cmd + list(args), env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("demo_ckpt") / "tiny.safetensors")


@pytest.fixture(scope="module")
def demo_run(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = run_demo("--checkpoint", str(checkpoint), "--frames", "5", "--size", "160x120", "--rate", "10",
                    "--device", "cpu", "--out", str(out))
    return proc, out


def _bag_messages(path: Path) -> dict[str, list]:
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    msgs: dict[str, list] = {}
    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        for conn, _, raw in reader.messages():
            msgs.setdefault(conn.topic, []).append(reader.deserialize(raw, conn.msgtype))
    return msgs


def test_demo_prints_a_summary_with_miou(demo_run):
    proc, out = demo_run
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    text = proc.stdout
    processed = int(re.search(r"frames processed\s+(\d+)", text).group(1))
    assert processed == 5
    assert re.search(r"output rate\s+\d+\.\d+ Hz", text)
    assert re.search(r"latency \(ms\)\s+mean \d+\.\d+\s+p50 \d+\.\d+\s+p99 \d+\.\d+", text)
    miou = float(re.search(r"mIoU\s+(\d\.\d+)", text).group(1))
    assert 0.0 <= miou <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_processed"] == 5
    assert summary["metrics"]["miou"] == pytest.approx(miou, abs=1e-4)
    assert summary["metrics"]["num_images"] == 5
    assert summary["latency_ms"]["p50"] > 0
    assert (out / "node.log").read_text().count("model mssanet") == 1  # the real node ran


def test_demo_writes_a_montage(demo_run):
    proc, out = demo_run
    assert proc.returncode == 0, proc.stderr
    img = cv2.imread(str(out / "montage.png"))
    assert img is not None
    h, w = img.shape[:2]
    assert w > 1000 and h > 400 and w > h  # 6 columns x 4 rows of 4:3 frames, legend, title
    assert img.std() > 30  # not blank
    # every class colour of the legend is drawn (BGR on disk)
    from msseg_core.classes import CAMVID

    pixels = img.reshape(-1, 3)
    for name, (r, g, b) in zip(CAMVID.names, CAMVID.palette, strict=True):
        assert ((pixels == (b, g, r)).all(1)).sum() >= 20, f"legend colour of {name} missing"


def test_demo_bag_holds_input_and_every_output(demo_run):
    proc, out = demo_run
    assert proc.returncode == 0, proc.stderr
    msgs = _bag_messages(out / "bag")
    for topic in ["/camera/image_raw", "/camera/camera_info", "/ground_truth/labels", *OUTPUT_TOPICS]:
        assert len(msgs.get(topic, [])) >= 5, f"{topic}: {len(msgs.get(topic, []))} messages; topics {sorted(msgs)}"
    stamps = {t: {(m.header.stamp.sec, m.header.stamp.nanosec) for m in msgs[t]} for t in msgs}
    answered = set.intersection(*(stamps[t] for t in OUTPUT_TOPICS))
    assert len(answered) >= 5 and answered <= stamps["/camera/image_raw"] <= stamps["/camera/camera_info"]
    labels = msgs["/msseg/labels"][0]
    assert (labels.encoding, labels.width, labels.height) == ("mono8", 160, 120)
    assert msgs["/msseg/overlay"][0].encoding == "rgb8"
    gt = np.asarray(msgs["/ground_truth/labels"][0].data).reshape(120, 160)
    assert set(np.unique(gt)) <= set(range(11))


def test_demo_replays_its_own_bag(demo_run, checkpoint, tmp_path):
    """--input a rosbag: the camera replays it (image + ground truth), the node answers, mIoU is scored."""
    proc, out = demo_run
    assert proc.returncode == 0, proc.stderr
    replay = run_demo("--checkpoint", str(checkpoint), "--input", str(out / "bag"), "--frames", "3",
                      "--rate", "10", "--device", "cpu", "--out", str(tmp_path / "replay"), "--montage-frames", "2")
    assert replay.returncode == 0, f"stdout:\n{replay.stdout}\nstderr:\n{replay.stderr}"
    assert "recording" in replay.stdout and "/camera/image_raw" in replay.stdout
    # The recording has a few frames at 10 Hz: a node slowed down by a busy machine answers only the
    # newest (the rest are dropped and counted), so fewer than --frames may come back before it ends.
    processed, published = map(int, re.search(r"frames processed\s+(\d+) of (\d+)", replay.stdout).groups())
    assert 1 <= processed <= min(3, published)
    assert re.search(r"mIoU\s+\d\.\d+", replay.stdout)
    assert (tmp_path / "replay" / "montage.png").is_file()


def test_demo_reports_a_node_that_dies(checkpoint, tmp_path):
    """A checkpoint whose weights do not fit its metadata: the node refuses to start; the demo exits 1
    quoting the node's own error instead of waiting forever."""
    import torch

    from msseg_core.checkpoint import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(checkpoint)
    meta.model_args = {**meta.model_args, "width": meta.model_args.get("width", 0.0625) * 2}
    bad = tmp_path / "mismatched.safetensors"
    with torch.no_grad():
        save_checkpoint(bad, model, meta)
    proc = run_demo("--checkpoint", str(bad), "--frames", "2", "--size", "160x120", "--device", "cpu",
                    "--out", str(tmp_path / "out"), "--timeout", "90")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "segmentation_node exited with status" in proc.stderr
    assert "cannot" in proc.stderr  # the node's own error line, quoted from its log


def test_demo_rejects_a_missing_checkpoint(tmp_path):
    proc = run_demo("--checkpoint", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "out"), timeout=60)
    assert proc.returncode == 1
    assert "checkpoint not found" in proc.stderr


@pytest.mark.parametrize("source", ["synthetic:0", "/" + "x" * 120,
                                    "/data/drives/2026-11-30/a/very/long/folder/path/of/camera_front/images"])
def test_montage_title_source_fits(source: str) -> None:
    """`make demo INPUT=<long path>`: the montage title shows the path's end, short enough to fit."""
    from msseg_ros.tools.demo import shorten_source

    short = shorten_source(source)
    assert len(short) <= 48
    if len(source) <= 48:
        assert short == source
    else:
        assert short.startswith(".../") and source.endswith(short[4:])


def test_demo_takes_zoo_names_and_paths(tmp_path) -> None:
    """`msseg-demo --checkpoint camvid_fast` runs the fast zoo model; a path still works; a missing one is
    one clear error."""
    from msseg_core.zoo import zoo_path
    from msseg_ros.tools.demo import DemoError, resolve_checkpoint

    assert resolve_checkpoint("camvid_fast") == zoo_path("camvid_fast")
    assert resolve_checkpoint(str(zoo_path("camvid"))) == zoo_path("camvid")
    with pytest.raises(DemoError, match="not found"):
        resolve_checkpoint(str(tmp_path / "missing.safetensors"))


def test_a_frame_counts_on_its_outputs_but_is_whole_only_with_its_inputs() -> None:
    """On a loaded machine a frame's ground truth can reach the demo after the node's answer: the frame is
    answered (counted) at once, and the demo waits until `inputs_whole` before it scores and records."""
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CameraInfo, Image

    from msseg_ros.tools.demo import OUTPUTS, Collector

    def raw(msg_type, sec: int) -> bytes:
        msg = msg_type()
        msg.header.stamp.sec = sec
        return serialize_message(msg)

    col = Collector()
    for name in ("image", *OUTPUTS):
        col.on_message(name, name, raw(Image, 1))
    assert col.complete() and not col.inputs_whole(("camera_info", "ground_truth"))
    col.on_message("camera_info", "camera_info", raw(CameraInfo, 1))
    assert col.inputs_whole(("camera_info",)) and not col.inputs_whole(("camera_info", "ground_truth"))
    col.on_message("ground_truth", "ground_truth", raw(Image, 1))
    assert col.inputs_whole(("camera_info", "ground_truth"))
    col.on_message("image", "image", raw(Image, 2))  # the next frame's image, its calibration still on its way
    assert not col.inputs_whole(("camera_info",)) and col.inputs == 2
