"""Faults: failures on a frame (CUDA out of memory, CUDA errors, runs of them, a decoder out of memory),
bad checkpoints and parameters at start-up, an unusable device, camera publishers that die and come back
with either QoS, broken dataset files, and training processes killed with SIGKILL at random moments.

What test_node.py already covers is not repeated here (one injected OOM, invalid parameter values,
run-time parameter rejection); test_train.py covers in-process resume, this file kills real processes.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticStatus
from helpers_ros import (
    FAST_PARAMS,
    DiagnosticsLog,
    InProcessNode,
    SegmentationClient,
    frame_counters,
    image_array,
    namespace,
    node_args,
    random_rgb,
    rgb_image,
)
from safetensors.torch import load_file, save_file

import msseg_ros.node.segmentation_node as node_mod
from msseg_core import checkpoint as ckpt
from msseg_core.checkpoint import CheckpointMeta, load_checkpoint, load_meta, save_checkpoint
from msseg_core.cli import train as train_cli
from msseg_core.models import build_model
from msseg_core.runtime.segmenter import Segmenter
from msseg_core.training import train as train_mod
from msseg_core.training.state import load_train_state
from msseg_ros.node.pipeline import all_accounted
from msseg_ros.node.segmentation_node import ConfigError
from msseg_ros.transport.graph import NodeProcess

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def reference(tiny_checkpoint) -> Segmenter:  # noqa: F811
    return Segmenter.from_checkpoint(tiny_checkpoint, **FAST_PARAMS)


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()




# -- failures on a frame ---------------------------------------------------------------------------
def test_failing_frames_are_counted_and_the_node_recovers(tiny_checkpoint, reference: Segmenter,  # noqa: F811
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA error, then a run of five CUDA out-of-memory errors, then a decoder out of memory: each
    failing frame is lost and counted (errors), diagnostics turn ERROR / WARN naming it, and the next
    good frame is answered correctly; after an OOM on a CUDA device the cached blocks are released."""
    ns = namespace("faults_frames")
    with InProcessNode({"checkpoint": str(tiny_checkpoint)}, ns) as node, \
            SegmentationClient(ns, outputs=("labels", "road_mask")) as client:
        seg = node.node
        diagnostics = DiagnosticsLog(client, seg.get_fully_qualified_name())
        client.wait_until_served()
        # Failures are injected into both halves of inference: the network (worker thread) and the
        # full-resolution postprocess (publisher thread), alternating frame by frame.
        real = {name: getattr(seg.segmenter, name) for name in ("run_network", "postprocess")}
        failures: list[BaseException] = []
        stage_of_next_failure = ["run_network"]

        def failing(name):
            def call(*args, **kwargs):
                if failures and stage_of_next_failure[0] == name:
                    stage_of_next_failure[0] = "postprocess" if name == "run_network" else "run_network"
                    raise failures.pop(0)
                return real[name](*args, **kwargs)
            return call

        for name in real:
            monkeypatch.setattr(seg.segmenter, name, failing(name))
        emptied: list[int] = []
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))

        def good_frame_answered() -> None:
            rgb = random_rgb(20, 28, seed=len(emptied) + frame_counters(seg)["errors"])
            outputs = client.request(rgb_image(rgb))
            np.testing.assert_array_equal(image_array(outputs["labels"]), reference.predict(rgb))

        def fail_frames(errors: list[BaseException]) -> None:
            start = frame_counters(seg)
            failures.extend(errors)
            for _ in errors:  # one at a time: none of them is dropped as stale
                before = frame_counters(seg)["errors"]
                lost = client.publish(rgb_image(random_rgb(12, 16)))
                assert wait_until(lambda b=before: frame_counters(seg)["errors"] == b + 1), frame_counters(seg)
                assert lost not in client.received
            end = frame_counters(seg)
            assert end["errors"] - start["errors"] == len(errors) and end["processed"] == start["processed"]
            good_frame_answered()

        mark = len(diagnostics)
        fail_frames([RuntimeError("CUDA error: an illegal memory access was encountered")])
        status = diagnostics.wait_for(lambda s: "illegal memory access" in s.message, mark)
        assert status.level == DiagnosticStatus.ERROR and "inference failed: RuntimeError" in status.message

        mark = len(diagnostics)
        oom = [torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {i + 1}.00 GiB") for i in range(5)]
        fail_frames(oom)
        status = diagnostics.wait_for(lambda s: "OutOfMemoryError" in s.message, mark)
        assert status.level == DiagnosticStatus.ERROR
        assert emptied == [], "empty_cache on a CPU device"
        # Recovered: later statuses are OK again and count every lost frame.
        diagnostics.wait_for(lambda s: s.level == DiagnosticStatus.OK and
                             {kv.key: kv.value for kv in s.values}["errors"] == "6", mark)

        # On a CUDA device an OOM releases PyTorch's cached blocks (a CUDA error does not), whichever
        # half of inference raised it.
        monkeypatch.setattr(seg, "device", torch.device("cuda", 0))
        assert stage_of_next_failure == ["run_network"]
        cuda_oom = torch.cuda.OutOfMemoryError("CUDA out of memory.")
        fail_frames([cuda_oom, cuda_oom, RuntimeError("CUDA error: unknown error")])  # network, postprocess, network
        assert emptied == [1, 1]
        monkeypatch.setattr(seg, "device", torch.device("cpu"))

        # Not only inference: a decoder running out of memory on a frame loses that frame only.
        real_decode = node_mod.decode_serialized
        calls: list[int] = []

        def decode(*args, **kwargs):
            calls.append(1)
            if len(calls) == 1:
                raise MemoryError("cannot allocate 190 MB for a 8192x8192 frame")
            return real_decode(*args, **kwargs)

        monkeypatch.setattr(node_mod, "decode_serialized", decode)
        mark = len(diagnostics)
        before = frame_counters(seg)
        client.publish(rgb_image(random_rgb(12, 16)))
        assert wait_until(lambda: frame_counters(seg)["errors"] == before["errors"] + 1), frame_counters(seg)
        assert seg.threads_alive()
        good_frame_answered()
        assert "MemoryError" in diagnostics.wait_for(lambda s: "MemoryError" in s.message, mark).message
        assert wait_until(lambda: all_accounted(frame_counters(seg))) and frame_counters(seg)["errors"] == 10


# -- start-up: checkpoints, parameters, device --------------------------------------------------------
def _rewrite(src: Path, dst: Path, **meta_changes) -> Path:
    """`src` with its weights and metadata, some metadata fields replaced, written without validation."""
    meta = json.loads(load_meta(src).to_json())
    meta.update(meta_changes)
    save_file(load_file(str(src)), str(dst), metadata={"format": ckpt.FORMAT, "meta": json.dumps(meta)})
    return dst


def _two_class_checkpoint(path: Path) -> Path:
    """A KITTI-Road-like checkpoint: classes background / road."""
    torch.manual_seed(0)
    net = build_model("mssanet", num_classes=2, width=0.0625).eval()
    meta = CheckpointMeta(model="mssanet", model_args={"width": 0.0625}, class_names=["background", "road"],
                          palette=[[0, 0, 0], [255, 0, 255]], road_classes=["road"], input_size=[32, 48],
                          dataset="kitti_road")
    return save_checkpoint(path, net, meta)


def _bad_checkpoints(tmp: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, text the one-line error must contain)."""
    data = good.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    cases = {
        "unknown model": (_rewrite(good, tmp / "nonet.safetensors", model="nonet"), "unknown model 'nonet'"),
        "model args": (_rewrite(good, tmp / "args.safetensors", model_args={"width": 0.0625, "depth": 7}),
                       "cannot build model"),
        "weights of another size": (_rewrite(good, tmp / "wide.safetensors", model_args={"width": 0.125}),
                                    "weights do not match"),
        "metadata not JSON": (tmp / "json.safetensors", "not valid JSON"),
        "truncated": (tmp / "truncated.safetensors", "cannot read"),
        "header cut": (tmp / "header.safetensors", "cannot read"),
        "zeros": (tmp / "zeros.safetensors", "cannot read"),
        "empty": (tmp / "empty.safetensors", "cannot read"),
        "not a checkpoint": (tmp / "foreign.safetensors", "not an msseg checkpoint"),
        "a directory": (tmp, "checkpoint not found"),
        "missing": (tmp / "missing.safetensors", "checkpoint not found"),
    }
    save_file(load_file(str(good)), str(tmp / "json.safetensors"), metadata={"format": ckpt.FORMAT, "meta": "{oops"})
    (tmp / "truncated.safetensors").write_bytes(data[: 8 + header_len + (len(data) - 8 - header_len) // 2])
    (tmp / "header.safetensors").write_bytes(data[: 8 + header_len // 2])
    (tmp / "zeros.safetensors").write_bytes(bytes(len(data)))
    (tmp / "empty.safetensors").write_bytes(b"")
    save_file({"w": torch.zeros(3)}, str(tmp / "foreign.safetensors"))
    return cases


def test_bad_checkpoints_stop_the_node_with_one_clear_line(tiny_checkpoint, tmp_path: Path) -> None:  # noqa: F811
    for name, (path, expected) in _bad_checkpoints(tmp_path, tiny_checkpoint).items():
        with pytest.raises(ConfigError) as info:
            InProcessNode({"checkpoint": str(path)}, namespace("faults_ckpt")).close()
        message = str(info.value)
        assert expected in message and "\n" not in message, (name, message)
        assert message.startswith("parameter checkpoint:") or str(path) in message, (name, message)


BAD_PARAMETERS = [
    ({"checkpoint": 5}, "parameter checkpoint: expected type string, got 5"),
    ({"road_classes": "Road"}, "parameter road_classes: expected type string array"),
    ({"threads": "two"}, "parameter threads: expected type integer, got 'two'"),
    ({"max_input_pixels": 1.5}, "parameter max_input_pixels: expected type integer"),
    ({"device": "cuda"}, "CUDA is not available"),
]


@pytest.mark.parametrize(("params", "expected"), BAD_PARAMETERS)
def test_wrong_types_and_unusable_device(tiny_checkpoint, params: dict, expected: str) -> None:  # noqa: F811
    if "device" in params and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError) as info:
        InProcessNode({"checkpoint": str(tiny_checkpoint), **params}, namespace("faults_params")).close()
    assert expected in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_road_classes_the_checkpoint_does_not_have(tmp_path: Path) -> None:
    """The CamVid YAML's road_classes with a KITTI-Road checkpoint: one line listing the real classes;
    without the override the checkpoint's own road classes are used."""
    two = _two_class_checkpoint(tmp_path / "kitti.safetensors")
    with pytest.raises(ConfigError) as info:
        InProcessNode({"checkpoint": str(two), "road_classes": ["Road"]}, namespace("faults_road")).close()
    assert str(info.value) == "parameter road_classes: unknown classes ['Road']; classes are ['background', 'road']"
    with InProcessNode({"checkpoint": str(two)}, namespace("faults_road")) as node:
        assert node.node.get_parameter("road_classes").value == ["road"]


def test_device_auto_falls_back_to_the_cpu(tiny_checkpoint) -> None:  # noqa: F811
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with InProcessNode({"checkpoint": str(tiny_checkpoint), "device": "auto"}, namespace("faults_auto")) as node:
        assert node.node.device.type == "cpu" and node.node.segmenter.device.type == "cpu"


def test_unusable_device_and_bad_checkpoint_end_the_process_with_one_line(tiny_checkpoint,  # noqa: F811
                                                                          tmp_path: Path) -> None:
    """The command line: exit status 2, exactly one ERROR line naming the problem, no traceback."""
    bad = _rewrite(tiny_checkpoint, tmp_path / "nonet.safetensors", model="nonet")
    cases = [(node_args(tiny_checkpoint, device="cuda"), "CUDA is not available"),
             (node_args(bad), "unknown model 'nonet'")]
    if torch.cuda.is_available():
        cases = cases[1:]
    procs = [NodeProcess("segmentation_node", args) for args, _ in cases]
    try:
        for proc, (args, expected) in zip(procs, cases, strict=True):
            rc = proc.wait(timeout=120)
            out = proc.output()
            errors = [line for line in out.splitlines() if "ERROR" in line]
            assert rc == 2 and len(errors) == 1 and expected in errors[0] and "Traceback" not in out, (args, out)
    finally:
        for proc in procs:
            proc.close()


# -- camera publishers that die and come back ---------------------------------------------------------
def _outputs_from(client: SegmentationClient, frame_id: str) -> int:
    return client.count_received(lambda outs: "labels" in outs and outs["labels"].header.frame_id == frame_id)


def test_camera_process_killed_and_restarted_with_either_qos(tiny_checkpoint) -> None:  # noqa: F811
    """A camera process killed with SIGKILL (its participant vanishes without a goodbye) and started
    again, reliable then best effort then reliable: the node serves each new process within seconds."""
    ns = namespace("faults_camera")
    with InProcessNode({"checkpoint": str(tiny_checkpoint)}, ns) as node, \
            SegmentationClient(ns, outputs=("labels",), name="restart_client") as client:
        for i, reliability in enumerate(("reliable", "best_effort", "reliable")):
            frame_id = f"camera_{i}_{reliability}"
            args = ["--ros-args", "-r", f"__ns:={ns}", "-p", "rate:=8.0", "-p", "width:=64", "-p", "height:=48",
                    "-p", f"frame_id:={frame_id}", "-p", f"reliability:={reliability}"]
            with NodeProcess("synthetic_camera", args) as camera:
                ok = wait_until(lambda f=frame_id: _outputs_from(client, f) >= 3, timeout=60)
                assert ok, f"no outputs for {frame_id}: {camera.output()[-2000:]}"
                camera.proc.kill()  # SIGKILL: no clean shutdown of the participant
                camera.wait(10)
        c = frame_counters(node.node)
        assert c["errors"] == c["invalid"] == 0
        assert wait_until(lambda: all_accounted(frame_counters(node.node)))


# -- broken dataset files during training ---------------------------------------------------------------
TINY_RECIPE = """
model: {{name: mssanet, args: {{width: 0.0625, num_pools: 3}}}}
data: {{dataset: camvid, root: {root}, crop_size: [32, 48], eval_size: [32, 48], scale_range: [0.75, 1.25],
       pipeline: {pipeline}, workers: 0}}
optim: {{name: adamw, lr: 0.03, schedule: poly, warmup_epochs: 0.5}}
train: {{epochs: {epochs}, batch_size: 4, val_batch_size: 4, class_weighting: mfb, device: cpu, seed: 3, threads: 1}}
"""


def _camvid(root: Path, n_train: int = 8) -> Path:
    from fake_datasets import write_fake_camvid

    write_fake_camvid(root, "train", n=n_train, size=(32, 48), seed=0)
    write_fake_camvid(root, "val", n=4, size=(32, 48), seed=1)
    return root


def _recipe(path: Path, root: Path, epochs: int, pipeline: str = "gpu_resident") -> Path:
    path.write_text(TINY_RECIPE.format(root=root, epochs=epochs, pipeline=pipeline))
    return path


@pytest.mark.parametrize("pipeline", ["gpu_resident", "loader"])
@pytest.mark.parametrize("fault", ["unreadable image", "label size", "label value"])
def test_training_names_the_broken_dataset_file(tmp_path: Path, capsys, pipeline: str, fault: str) -> None:
    import cv2

    root = _camvid(tmp_path / "data", n_train=4)
    image = sorted((root / "train").glob("*.png"))[2]
    label = root / "trainannot" / image.name
    if fault == "unreadable image":
        image.write_bytes(image.read_bytes()[:40])
        culprit = image
    elif fault == "label size":
        cv2.imwrite(str(label), np.zeros((30, 48), np.uint8))
        culprit = label
    else:
        values = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
        values[3, 4] = 42
        cv2.imwrite(str(label), values)
        culprit = label
    recipe = _recipe(tmp_path / "r.yaml", root, epochs=1, pipeline=pipeline)
    assert train_cli.main(["--config", str(recipe), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("msseg-train: error:") and str(culprit) in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_training_names_an_unreadable_image_read_by_a_loader_worker(tmp_path: Path) -> None:
    """With DataLoader worker processes the error comes back through the worker (PyTorch re-raises it
    with the worker's traceback in the text), still naming the file, with exit status 2. Run as the CLI
    in its own process, as users run it: DataLoader forks its workers, and forking this test process
    (DDS and executor threads of earlier tests) is not what a training process ever does."""
    root = _camvid(tmp_path / "data", n_train=4)
    image = sorted((root / "train").glob("*.png"))[1]
    image.write_bytes(image.read_bytes()[:40])
    recipe = _recipe(tmp_path / "r.yaml", root, epochs=1, pipeline="loader")
    recipe.write_text(recipe.read_text().replace("workers: 0", "workers: 2"))
    proc = subprocess.run([sys.executable, "-m", "msseg_core.cli.train", "--config", str(recipe), "--out",
                           str(tmp_path / "run"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("msseg-train: error:")]
    assert len(errors) == 1 and f"{image}: cannot decode image" in errors[0], proc.stderr  # (OpenCV may warn too)
    assert "Traceback" not in proc.stderr


# -- training killed with SIGKILL -----------------------------------------------------------------------
EPOCHS = 12
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+) ", re.M)
RESUMED = re.compile(r"^resuming .* after epoch (\d+) ", re.M)
CHECKPOINTS = ("last.safetensors", "best.safetensors")
STATE = "train_state.safetensors"


class Trainer:
    """`python -m msseg_core.training.train` in a subprocess, stdout in a file."""

    def __init__(self, recipe: Path, out: Path, resume: bool, log: Path):
        cmd = [sys.executable, "-m", "msseg_core.cli.train", "--config", str(recipe), "--out", str(out)]
        self.log = log
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(cmd + (["--resume"] if resume else []), stdout=fh,
                                         stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.started = time.monotonic()
        self.training_at: float | None = None  # when it said it resumes / reported its first epoch

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def poll_started(self) -> None:
        if self.training_at is None and ("resuming" in (text := self.text()) or EPOCH_LINE.search(text)):
            self.training_at = time.monotonic()

    def epochs_reported(self, start: int) -> int:
        """The last epoch this process reported finished (reported after its files were written)."""
        return max([int(m.group(1)) for m in EPOCH_LINE.finditer(self.text())], default=start)


def _tmp_files(out: Path) -> list[str]:
    try:
        return [e.name for e in os.scandir(out) if e.name.endswith(".tmp")]
    except FileNotFoundError:
        return []


def _kill_when(trainer: Trainer, out: Path, how: str, delay: float, stale: set[str], timeout: float = 120.0) -> bool:
    """SIGKILL the trainer: 'random' `delay` s after it started, '.last' / '.best' / '.train_state' as
    soon as a new temporary copy of that file appears (mid-write). Returns False if it finished first."""
    deadline = time.monotonic() + timeout
    while trainer.proc.poll() is None:
        assert time.monotonic() < deadline, trainer.text()
        trainer.poll_started()
        if how == "random":
            if time.monotonic() - trainer.started >= delay:
                break
        elif any(name.startswith(f"{how}.") and name not in stale for name in _tmp_files(out)):
            break
        time.sleep(0.0005)
    else:
        return False
    trainer.proc.send_signal(signal.SIGKILL)
    trainer.proc.wait(10)
    return True


def _check_run_folder(out: Path) -> dict:
    """Every checkpoint-named file loads completely; temporary files are hidden and never *.safetensors."""
    found = sorted(p.name for p in out.glob("*.safetensors"))
    assert set(found) <= {*CHECKPOINTS, STATE}, found
    epochs = {}
    for name in found:
        if name == STATE:
            epochs[name] = int(load_train_state(out / name)["epoch"])
        else:
            model, meta = load_checkpoint(out / name)
            epochs[name] = int(meta.metrics["epoch"])
    for name in _tmp_files(out):
        assert name.startswith(".") and not name.endswith(".safetensors"), name
    return epochs


@pytest.mark.slow
def test_training_killed_at_random_moments_resumes_losing_at_most_one_epoch(tmp_path: Path) -> None:
    """Real `msseg_core.training.train` processes, SIGKILLed at random moments and while writing checkpoints;
    `--resume` after each kill. After every kill each checkpoint file present loads; a resumed run
    starts from the last epoch the killed one reported done or the next (at most the epoch in progress
    is redone); the last run reaches the final epoch with one metrics row per epoch."""
    root = _camvid(tmp_path / "data")
    recipe = _recipe(tmp_path / "recipe.yaml", root, EPOCHS)
    out = tmp_path / "run"
    rng = random.Random(20261123)
    # Kills mid-write of each file, and at random moments from start-up to a few epochs in (loading,
    # training, validation, logging, writing).
    plan = [".best.safetensors", "random", f".{STATE}", "random", ".last.safetensors"]
    trials, start, startup = [], 0, 4.0
    for i, how in enumerate([*plan, "finish"]):
        tmp_before = set(_tmp_files(out))
        trainer = Trainer(recipe, out, resume=(out / "last.safetensors").exists(), log=tmp_path / f"train_{i}.log")
        if how == "finish":
            assert trainer.proc.wait(300) == 0, trainer.text()
        else:
            assert _kill_when(trainer, out, how, rng.uniform(0.0, startup + 1.0), tmp_before), trainer.text()
            if trainer.training_at is not None:  # adapt the random window to this machine's start-up time
                startup = trainer.training_at - trainer.started
        text = trainer.text()
        assert "Traceback" not in text and "error" not in text.lower(), text
        resumed = RESUMED.search(text)
        if resumed:  # (a process killed while starting up says nothing)
            resumed_at = int(resumed.group(1))
            # Nothing reported done is lost; at most the epoch in progress is redone.
            assert start <= resumed_at <= start + 1, (start, resumed_at, text)
            trials[-1]["resumed_at"] = resumed_at
        start = trainer.epochs_reported(int(resumed.group(1)) if resumed else start)
        files = _check_run_folder(out)
        trials.append({"kill": how, "epochs_reported": start, "files": files,
                       "tmp_left": sorted(set(_tmp_files(out)) - tmp_before)})
    assert start == EPOCHS
    rows = [int(line.split(",")[0]) for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert rows == list(range(1, EPOCHS + 1))
    files = _check_run_folder(out)
    # The state may stay one epoch behind (killed before it, then "already trained").
    assert files["last.safetensors"] == EPOCHS and files[STATE] >= EPOCHS - 1, files
    print("\nkill-and-resume trials:", json.dumps(trials))


class Interrupt(Exception):
    """A kill between last.safetensors and train_state.safetensors of the first epoch."""


def _interrupt_before_state(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Stand-in for a SIGKILL after last.safetensors of `epoch` was written, before its training state."""
    real = train_mod.save_train_state

    def save(path, state):
        if state["epoch"] == epoch:
            raise Interrupt
        real(path, state)

    monkeypatch.setattr(train_mod, "save_train_state", save)


def test_two_kills_between_checkpoint_and_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = _recipe(tmp_path / "r.yaml", _camvid(tmp_path / "data", n_train=4), epochs=4)
    out = tmp_path / "run"
    for epoch, args in ((2, []), (3, ["--resume"])):
        with monkeypatch.context() as m:
            _interrupt_before_state(m, epoch)
            with pytest.raises(Interrupt):
                train_cli.main(["--config", str(recipe), "--out", str(out), "--quiet", *args])
    assert load_meta(out / "last.safetensors").metrics["epoch"] == 3
    assert train_cli.main(["--config", str(recipe), "--resume", "--out", str(out), "--quiet"]) == 0


def test_kill_between_checkpoint_and_best(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = _recipe(tmp_path / "r.yaml", _camvid(tmp_path / "data", n_train=4), epochs=2)
    out = tmp_path / "run"
    real = train_mod.save_checkpoint

    def save(path, model, meta, *args, **kwargs):
        if Path(path).name == "best.safetensors" and meta.metrics["epoch"] == 2:
            raise Interrupt
        return real(path, model, meta, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(train_mod, "save_checkpoint", save)
        with pytest.raises(Interrupt):
            train_cli.main(["--config", str(recipe), "--out", str(out), "--quiet"])
    assert train_cli.main(["--config", str(recipe), "--resume", "--out", str(out), "--quiet"]) == 0
    last = load_meta(out / "last.safetensors").metrics
    assert last["epoch"] == 2 and last["val_miou"] == last["best_miou"]  # epoch 2 was the best
    assert load_meta(out / "best.safetensors").metrics["epoch"] == 2


def test_kill_before_the_first_training_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = _recipe(tmp_path / "r.yaml", _camvid(tmp_path / "data", n_train=4), epochs=2)
    out = tmp_path / "run"

    with monkeypatch.context() as m:
        _interrupt_before_state(m, 1)
        with pytest.raises(Interrupt):
            train_cli.main(["--config", str(recipe), "--out", str(out), "--quiet"])
    assert (out / "last.safetensors").exists() and not (out / STATE).exists()
    assert train_cli.main(["--config", str(recipe), "--resume", "--out", str(out), "--quiet"]) == 0
