"""Safe loading: model weights come only from safetensors + JSON metadata, nothing on any load path of
the node or the command-line tools unpickles, and nothing from a message is ever used as a path.

- The source: no pickle / marshal / shelve / dill / joblib, no eval or exec, torch.load only with
  weights_only=True, no np.load(allow_pickle=True), no unsafe yaml loaders, torch.jit.load only where
  msseg-export reads back the file it has just written (a static scan of every module).
- At run time, with pickle.load, pickle.loads, pickle.Unpickler and torch.load patched to fail: the node's
  start-up, Segmenter.from_checkpoint, msseg-eval, msseg-predict, msseg-bag eval and msseg-train --resume.
- A foreign PyTorch file (the VGG16 encoder import) that carries a pickled payload is refused without
  running it.
- Parameters name files and are used as files only (a FIFO or a device is refused, never opened);
  frame_id / encoding / format strings that look like paths never touch the file system (audit hook,
  a FIFO that would block anyone opening it, a file whose access time would move, a watched folder).
"""

from __future__ import annotations

import array
import ast
import os
import pickle
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers_ros import (
    FAST_PARAMS,
    REPO,
    InProcessNode,
    SegmentationClient,
    image_in_encoding,
    make_header,
    random_rgb,
)
from sensor_msgs.msg import CompressedImage

from msseg_ros.node.segmentation_node import ConfigError
from msseg_ros.transport.image_codec import encode_compressed

pytestmark = pytest.mark.ros
SOURCES = sorted(p for pkg in ("msseg_core", "msseg_ros") for p in (REPO / pkg).rglob("*.py"))
# torch.jit.load runs TorchScript code: only msseg-export's check of the file it has just written may.
JIT_LOAD_ALLOWED = {("msseg_core/runtime/artifacts.py", "load_torchscript")}


# -- the source ------------------------------------------------------------------------------------
def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe_loads(path: Path) -> list[str]:
    """Every deserialisation in a module that could run code, as 'file:line: what'."""
    rel = path.relative_to(REPO).as_posix()
    tree = ast.parse(path.read_text(), filename=rel)
    problems = []
    # names bound to torch.load by `from torch import load [as x]` / `from torch.serialization import load`
    torch_load = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                  and n.module in ("torch", "torch.serialization") for a in n.names if a.name == "load"}
    functions = {}
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(fn):
                functions.setdefault(id(inner), fn.name)
    for node in ast.walk(tree):
        where = f"{rel}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name and name.split(".")[0] in ("pickle", "cPickle", "_pickle", "dill", "joblib", "marshal",
                                                   "shelve", "cloudpickle"):
                    problems.append(f"{where}: imports {name}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in ("eval", "exec"):
            problems.append(f"{where}: {name}()")
        elif name.endswith(("torch.load", "serialization.load")) or name in torch_load:
            weights_only = _kw(node, "weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                problems.append(f"{where}: {name} without weights_only=True")
        elif name in ("np.load", "numpy.load"):
            allow = _kw(node, "allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                problems.append(f"{where}: np.load with allow_pickle")
        elif name in ("yaml.load", "yaml.load_all"):
            loader = _kw(node, "Loader")
            if loader is None or not _dotted(loader).endswith(("SafeLoader", "CSafeLoader")):
                problems.append(f"{where}: {name} without a safe Loader")
        elif name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
            problems.append(f"{where}: {name}")
        elif name.endswith("jit.load") and (rel, functions.get(id(node))) not in JIT_LOAD_ALLOWED:
            problems.append(f"{where}: torch.jit.load outside {JIT_LOAD_ALLOWED}")
    return problems


def test_no_code_executing_deserialisation_in_the_source() -> None:
    assert len(SOURCES) > 30
    problems = [p for path in SOURCES for p in unsafe_loads(path)]
    assert problems == []
    # The scan sees what it looks for: the one torch.load (foreign VGG16 / EfficientNet-Lite weights) is there.
    encoders = (REPO / "msseg_core" / "models" / "encoders.py").read_text()
    assert "torch.load(str(path), weights_only=True" in encoders


def test_the_scan_catches_unsafe_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = REPO / "msseg_core" / "_scan_probe.py"  # never written: the scan is given the text via read_text
    text = ("import pickle\nimport torch, numpy as np, yaml\nx = torch.load('a')\n"
            "y = torch.load('a', weights_only=False)\nz = np.load('a', allow_pickle=True)\nw = yaml.load(s)\n"
            "v = yaml.load(s, Loader=yaml.SafeLoader)\nu = eval('1')\nt = torch.jit.load('m')\n"
            "from torch import load as tl\ns = tl('a')\nr = torch.load('a', weights_only=True)\nload(3)\n")
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: text)
    found = unsafe_loads(bad)
    assert len(found) == 8, found  # pickle import, 3 torch.load, np.load, yaml.load, eval, jit.load


# -- load paths at run time, with the unpicklers booby-trapped ------------------------------------------
class NoPickle:
    """Patches every unpickling entry point to fail loudly."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls: list[str] = []

        def trap(name: str):
            def refuse(*args, **kwargs):
                self.calls.append(name)
                raise AssertionError(f"{name} called on a load path")
            return refuse

        monkeypatch.setattr(pickle, "load", trap("pickle.load"))
        monkeypatch.setattr(pickle, "loads", trap("pickle.loads"))
        monkeypatch.setattr(pickle, "Unpickler", trap("pickle.Unpickler"))
        monkeypatch.setattr(torch, "load", trap("torch.load"))
        monkeypatch.setattr(torch.serialization, "load", trap("torch.serialization.load"))


@pytest.fixture(scope="module")
def camvid(tmp_path_factory) -> Path:
    from fake_datasets import write_fake_camvid

    root = tmp_path_factory.mktemp("camvid")
    for split, seed in (("train", 0), ("val", 1)):
        write_fake_camvid(root, split, n=4, size=(32, 48), seed=seed)
    return root


def test_node_start_up_and_segmenter_never_unpickle(tiny_checkpoint, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from msseg_core.runtime.segmenter import Segmenter

    trap = NoPickle(monkeypatch)
    segmenter = Segmenter.from_checkpoint(tiny_checkpoint, **FAST_PARAMS)
    assert segmenter.predict(random_rgb(16, 24)).shape == (16, 24)
    with InProcessNode({"checkpoint": str(tiny_checkpoint)}, "/safe_start") as node:
        assert node.node.model_name == "mssanet"
    assert trap.calls == []


def test_command_line_load_paths_never_unpickle(tiny_checkpoint, camvid: Path, tmp_path: Path,  # noqa: F811
                                                monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from msseg_core.cli import train as train_cli
    from msseg_core.cli.evaluate import main as eval_main
    from msseg_core.cli.predict import main as predict_main
    from msseg_ros.bag import cli

    # A real 1-epoch run and a bag to read, made before the trap is set.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{name: mssanet, args: {{width: 0.0625, num_pools: 3}}}}\n"
        f"data: {{dataset: camvid, root: {camvid}, crop_size: [32, 48], eval_size: [32, 48], workers: 0}}\n"
        "train: {epochs: 1, batch_size: 4, val_batch_size: 4, device: cpu, seed: 3, threads: 1}\n")
    assert train_cli.main(["--config", str(recipe), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert cli.main(["make", "--data-root", str(camvid), "--split", "val", "--out", str(tmp_path / "bag")]) == 0
    common = ["--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--backend", "torch", "--threads", "1"]
    capsys.readouterr()

    trap = NoPickle(monkeypatch)
    assert eval_main(["--data-root", str(camvid), "--split", "val", "--quiet", *common]) == 0
    assert predict_main([str(camvid / "val"), "--out", str(tmp_path / "pred"), *common]) == 0
    assert cli.main(["eval", "--bag", str(tmp_path / "bag"), *common]) == 0
    # resume reads last.safetensors and train_state.safetensors (optimizer, scheduler, RNG states)
    assert train_cli.main(["--resume", "--out", str(tmp_path / "run"), "--set", "train.epochs=2", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert trap.calls == [] and "error" not in err, err
    from msseg_core.checkpoint import load_meta

    assert load_meta(tmp_path / "run" / "last.safetensors").metrics["epoch"] == 2


class _Payload:
    """What a malicious .pth carries: unpickling it would create `marker`."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_foreign_pytorch_file_with_a_payload_is_refused_unrun(tmp_path: Path) -> None:
    from msseg_core.models import build_model
    from msseg_core.models.encoders import load_vgg16_encoder

    marker = tmp_path / "payload_ran"
    evil = tmp_path / "vgg16.pth"
    torch.save({"features.0.weight": torch.zeros(1), "hook": _Payload(str(marker))}, evil)
    model = build_model("fcn8s", num_classes=3, width=0.0625)
    with pytest.raises(Exception) as info:  # noqa: B017 - whatever torch raises, the payload must not run
        load_vgg16_encoder(model, evil)
    assert "weights_only" in str(info.value) or "Unsupported" in str(info.value), info.value
    assert not marker.exists()


# -- parameters are files, messages are never paths -----------------------------------------------------
@pytest.fixture
def watched(tmp_path: Path) -> Iterator[dict]:
    """A folder with a FIFO (opening it blocks: anything that opens it hangs) and a PNG whose access
    time is set before its modification time (any read moves it on a relatime file system)."""
    folder = tmp_path / "watched"
    folder.mkdir()
    fifo = folder / "fifo"
    os.mkfifo(fifo)
    secret = folder / "secret.png"
    cv2.imwrite(str(secret), np.zeros((8, 8, 3), np.uint8))
    st = secret.stat()
    os.utime(secret, ns=(st.st_mtime_ns - 10**12, st.st_mtime_ns))
    yield {"folder": folder, "fifo": fifo, "secret": secret}


def _atime(path: Path) -> int:
    return path.stat().st_atime_ns


def test_parameters_name_regular_files_only(watched: dict) -> None:
    """A FIFO or a device given as the checkpoint is refused without being opened (it would block)."""
    for path in (watched["fifo"], Path("/dev/zero"), watched["folder"]):
        result: list[BaseException | None] = []

        def start(path: Path = path, result: list = result) -> None:
            try:
                InProcessNode({"checkpoint": str(path)}, "/safe_param").close()
                result.append(None)
            except BaseException as exc:  # noqa: BLE001 - examined below
                result.append(exc)

        thread = threading.Thread(target=start, daemon=True)
        thread.start()
        thread.join(30)
        assert not thread.is_alive(), f"start-up blocked on {path}"
        assert isinstance(result[0], ConfigError) and "checkpoint not found" in str(result[0]), result


class FileSystemAudit:
    """Python audit events that touch the file system or start processes, while recording."""

    EVENTS = {"open", "os.listdir", "os.scandir", "os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.symlink",
              "os.link", "os.chmod", "os.chown", "os.utime", "os.truncate", "shutil.rmtree", "shutil.copyfile",
              "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.startfile"}
    recording = False
    events: list[tuple] = []
    _installed = False

    @classmethod
    def install(cls) -> None:
        if not cls._installed:  # audit hooks cannot be removed: one for the whole session, idle by default
            sys.addaudithook(cls._hook)
            cls._installed = True

    @classmethod
    def _hook(cls, event: str, args: tuple) -> None:
        if cls.recording and event in cls.EVENTS:
            cls.events.append((event, tuple(str(a) for a in args)))


def _path_like(watched: dict) -> list[str]:
    f = watched["folder"]
    return [str(watched["fifo"]), str(watched["secret"]), f"{f}/msseg_pwned_new", f"../../../..{f}/msseg_pwned",
            f"file://{watched['secret']}", f"{f}/../watched/msseg_pwned; rm -rf {f}", f"$(touch {f}/msseg_pwned)"]


@pytest.mark.parametrize("transport", ["raw", "compressed"])
def test_message_strings_are_never_paths(tiny_checkpoint, watched: dict, transport: str) -> None:  # noqa: F811
    ns = f"/safe_msg_{transport}"
    compressed = transport == "compressed"
    strings = _path_like(watched)
    before = sorted(os.listdir(watched["folder"]))
    atime = _atime(watched["secret"])
    FileSystemAudit.install()
    with InProcessNode({"checkpoint": str(tiny_checkpoint), "input_transport": transport}, ns) as node, \
            SegmentationClient(ns, outputs=("labels",), compressed=compressed, name=f"safe_{transport}") as c:
        valid = (lambda: encode_compressed(random_rgb(16, 24), make_header(), "png")) if compressed else None
        c.wait_until_served(valid)
        seg = node.node
        start = dict(vars(seg.counters))
        FileSystemAudit.events.clear()
        FileSystemAudit.recording = True
        try:
            answered = 0
            for text in strings:
                rgb = random_rgb(16, 24, seed=len(text))
                if compressed:
                    good = encode_compressed(rgb, make_header(text), "png")  # path-like frame_id: processed
                    good.format = text  # and a path-like format: ignored (the bytes say PNG)
                    bad = CompressedImage(header=make_header(text), format=f"{text}; compressedDepth png")
                    bad.data = array.array("B", b"\x89PNG\r\n\x1a\n")
                else:
                    good = image_in_encoding(rgb, "rgb8", make_header(text))
                    bad = image_in_encoding(rgb, "rgb8", make_header(text))
                    bad.encoding = text  # unsupported: counted invalid, never looked up anywhere
                out = c.request(good, timeout=20)["labels"]
                assert out.header.frame_id == text  # the frame_id is copied, as text
                answered += 1
                invalid = seg.counters.invalid
                c.publish(bad)
                deadline = time.monotonic() + 20
                while seg.counters.invalid == invalid and time.monotonic() < deadline:
                    time.sleep(0.005)
            c.request(valid() if compressed else image_in_encoding(random_rgb(8, 8), "rgb8"))  # worker not blocked
        finally:
            FileSystemAudit.recording = False
        touched = [e for e in FileSystemAudit.events
                   if any(str(watched["folder"]) in a or "msseg_pwned" in a for a in e[1])]
        assert touched == [], touched
        assert seg.counters.invalid - start["invalid"] == len(strings)
        assert seg.counters.processed - start["processed"] == answered + 1
    assert sorted(os.listdir(watched["folder"])) == before
    assert _atime(watched["secret"]) == atime, "something read the file named in a message"
    # The access-time check can see a read at all (relatime: atime before mtime is always updated).
    watched["secret"].read_bytes()
    assert _atime(watched["secret"]) != atime
