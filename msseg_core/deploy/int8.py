"""A checkpoint's INT8 model: one QDQ ONNX file calibrated once on training frames (msseg-quantize).

Why a QDQ file (QuantizeLinear/DequantizeLinear pairs around an fp32 graph): ONNX Runtime and OpenVINO
run the same file, so one calibration serves both CPU engines and is judged once (TensorRT runs a
sibling calibrated on the same frames, see below). It is written beside the checkpoint
(`camvid.safetensors` -> `camvid.int8.onnx`), where `Segmenter.from_checkpoint(..., precision='int8')`
looks for it. It carries the checkpoint's metadata (a bare file runs in `Segmenter.from_onnx`) and the
checkpoint's content digest: a file calibrated for other weights is refused with the command that
rebuilds it, never used.

Quantiser, chosen by measurement (BENCHMARKS.md, EfficientNet-Lite2 model on CamVid val): ONNX
Runtime's static quantiser, per-channel int8 weights, uint8 asymmetric activations, min/max over the
calibration frames. ONNX Runtime and OpenVINO run that file with the same mIoU and at their best
speed. Two alternatives lost: NNCF's ONNX output (`--method nncf`) ran 2-3x slower than fp32 in ONNX
Runtime (its Q/DQ placement is not fused into integer kernels) and OpenVINO misread it (val mIoU
-23 points); signed symmetric activations ran 2x slower in ONNX Runtime on AVX2 (no VNNI) and cost
OpenVINO 14 IoU points on Pavement. TensorRT, however, accepts only zero-point-0 int8 Q/DQ, so it
gets its own file from the same frames: `--for tensorrt` writes `<name>.int8-tensorrt.onnx`
(symmetric int8 activations), which `Segmenter` uses on CUDA.
The first layer (the convolution reading the input) stays fp32: `input_convolutions` says why.
Other layers that lose too much accuracy can stay fp32 too (`--keep-fp32 REGEX`, matched against ONNX
node names, e.g. '/attention/'); the file records which.

`--eval-split val` then scores fp32 and INT8 (every installed CPU engine) on that split with
msseg-eval's code and prints per-class IoU; the exit status is 1 when INT8 loses more than
`--max-drop` mIoU points (default 1.0).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from msseg_core.checkpoint import CheckpointMeta, load_checkpoint
from msseg_core.io import atomic_write
from msseg_core.runtime.artifacts import SUFFIXES, int8_model_path
from msseg_core.zoo import resolve_checkpoint

log = logging.getLogger(__name__)

METHODS = ("onnxruntime", "nncf")
DEFAULT_FRAMES = 300


# ---------------------------------------------------------------------------------- calibration


def calibration_indices(total: int, frames: int) -> list[int]:
    """`frames` indices spread evenly over a split (CamVid's are video sequences: neighbours look alike)."""
    if total < 1:
        raise ValueError("the calibration split holds no images")
    frames = min(int(frames), total)
    return sorted({int(round(v)) for v in np.linspace(0, total - 1, frames)})


def calibration_inputs(images: Iterable[np.ndarray], model: nn.Module, meta: CheckpointMeta,
                       input_size: Sequence[int]) -> list[np.ndarray]:
    """Frames -> 1 x 3 x h x w float32 arrays, preprocessed by the Segmenter itself (resize, normalise)."""
    import torch

    from msseg_core.runtime.segmenter import Segmenter

    seg = Segmenter(model, meta, device="cpu", input_size=input_size, backend="torch", fuse=False,
                    channels_last=False, threads=torch.get_num_threads())  # leaves the caller's thread count
    return [seg.network_input(np.asarray(im)).numpy().copy() for im in images]


def input_convolutions(onnx_path: str | os.PathLike) -> list[str]:
    """The convolutions that read the network input (through padding, slicing, ...): the first layer.

    It stays fp32 by default. On x86 CPUs without VNNI (AVX2), ONNX Runtime multiplies uint8
    activations by int8 weights with an instruction that saturates pairwise sums at int16; the input
    layer, with full-range activations on bright pixels, is where that bites: measured on the fast
    zoo model, Sky IoU fell from 90.6 to 59.0 with it quantised and stayed at 89.4 without (OpenVINO,
    which does not saturate, lost 4 points there). NNCF's default "overflow fix" targets the same layer.
    The layer is a few percent of the network's FLOPs.
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found, frontier, seen = [], [i.name for i in graph.input], set()
    while frontier:
        tensor = frontier.pop()
        for node in consumers.get(tensor, []):
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in ("Conv", "ConvTranspose"):
                found.append(node.name)
            else:
                frontier.extend(node.output)
    return found


def matching_nodes(onnx_path: str | os.PathLike, patterns: Sequence[str]) -> list[str]:
    """Names of the graph's nodes matching any regex (the layers to keep in fp32)."""
    import onnx

    if not patterns:
        return []
    regexes = [re.compile(p) for p in patterns]
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    names = [n.name for n in graph.node if any(r.search(n.name) for r in regexes)]
    missing = [p for p, r in zip(patterns, regexes, strict=True) if not any(r.search(n) for n in names)]
    if missing:
        raise ValueError(f"--keep-fp32 patterns match no node: {missing}")
    return names


def _quantize_onnxruntime(fp32: Path, inputs: list[np.ndarray], out: str, keep_fp32: Sequence[str],
                          symmetric: bool) -> list[str]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(inputs)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {"input": x}

    with tempfile.TemporaryDirectory(prefix="msseg-quantize-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Shape inference and graph clean-up first (ORT's advice): it lets the quantiser fold BatchNorm
        # and place Q/DQ pairs so that ONNX Runtime fuses them into integer kernels.
        cwd, source = os.getcwd(), Path(fp32).resolve()  # (a relative cache path would not survive the chdir)
        os.chdir(tmp)  # the pre-processor drops temporary files into the working directory
        try:
            quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
        finally:
            os.chdir(cwd)
        excluded = list(dict.fromkeys(input_convolutions(pre) + matching_nodes(pre, keep_fp32)))
        with _root_log_level(logging.WARNING):  # one INFO line per rescaled bias channel otherwise
            quantize_static(
                str(pre), out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                # Batches of 16 frames are reduced as they come: keeping every activation of 300 frames would
                # need tens of GB. Symmetric activations (zero point 0) only for TensorRT (module docstring).
                extra_options={"ActivationSymmetric": symmetric, "CalibMaxIntermediateOutputs": 16})
    return excluded


@contextlib.contextmanager
def _root_log_level(level: int):
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(previous, level))
    try:
        yield
    finally:
        root.setLevel(previous)


def _quantize_nncf(fp32: Path, inputs: list[np.ndarray], out: str, keep_fp32: Sequence[str],
                   symmetric: bool) -> list[str]:
    import nncf
    import onnx

    excluded = list(dict.fromkeys(input_convolutions(fp32) + matching_nodes(fp32, keep_fp32)))
    scope = nncf.IgnoredScope(names=excluded) if excluded else None
    preset = nncf.QuantizationPreset.PERFORMANCE if symmetric else nncf.QuantizationPreset.MIXED
    q = nncf.quantize(onnx.load(str(fp32)), nncf.Dataset(inputs, lambda x: {"input": x}), subset_size=len(inputs),
                      ignored_scope=scope, preset=preset)
    onnx.save(q, out)
    return excluded


def quantize_onnx(fp32: str | os.PathLike, inputs: list[np.ndarray], out: str | os.PathLike, meta: CheckpointMeta,
                  source_digest: str | None, method: str = "onnxruntime", keep_fp32: Sequence[str] = (),
                  calibration: dict | None = None, target: str = "cpu") -> Path:
    """Quantise an fp32 msseg ONNX file into a QDQ file with msseg metadata (written atomically)."""
    import onnx

    from msseg_core.checkpoint import onnx_metadata
    from msseg_core.runtime.artifacts import onnx_input_size

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if target not in SUFFIXES:
        raise ValueError(f"target must be one of {', '.join(SUFFIXES)}, got {target!r}")
    fp32 = Path(fp32)
    h, w = onnx_input_size(fp32)
    info = dict(calibration or {}, method=method, frames=len(inputs), target=target)

    def write(tmp: str) -> None:
        quantiser = _quantize_onnxruntime if method == "onnxruntime" else _quantize_nncf
        excluded = quantiser(fp32, inputs, tmp, keep_fp32, symmetric=target == "tensorrt")
        info["fp32_nodes"] = excluded
        proto = onnx.load(tmp)
        del proto.metadata_props[:]
        extra = {"precision": "int8", "dynamic": False, "dynamic_batch": False, "source_digest": source_digest,
                 "calibration": info}
        for key, value in onnx_metadata(dataclasses.replace(meta, input_size=[h, w]), extra).items():
            proto.metadata_props.add(key=key, value=value)
        proto.producer_name = "msseg-quantize"
        onnx.save(proto, tmp)

    return atomic_write(out, write, suffix=".tmp.onnx", durable=False)


def quantize_checkpoint(checkpoint: str, data_root: str, split: str = "train", frames: int = DEFAULT_FRAMES,
                        out: str | os.PathLike | None = None, method: str = "onnxruntime",
                        keep_fp32: Sequence[str] = (), dataset: str | None = None,
                        input_size: Sequence[int] | None = None, target: str = "cpu") -> Path:
    """The whole job: load, export fp32 (cached), calibrate on `frames` frames of `split`, write the QDQ file."""
    from msseg_core.data import build_dataset
    from msseg_core.runtime.artifacts import cache_dir, cached_onnx, model_digest

    path = resolve_checkpoint(checkpoint)
    model, meta = load_checkpoint(path, device="cpu")
    size = tuple(int(v) for v in (input_size or meta.input_size))
    digest = model_digest(model, meta)
    fp32 = cached_onnx(model, meta, size, cache_dir(), digest=digest)
    data = build_dataset(dataset or meta.dataset or "camvid", data_root, split)
    indices = calibration_indices(len(data), frames)
    t0 = time.perf_counter()
    inputs = calibration_inputs((data[i][0] for i in indices), model, meta, size)
    log.info("calibration: %d frames of %s/%s preprocessed in %.1f s", len(inputs), data_root, split,
             time.perf_counter() - t0)
    t0 = time.perf_counter()
    result = quantize_onnx(fp32, inputs, Path(out) if out else int8_model_path(path, target), meta, digest, method,
                           keep_fp32, {"dataset": dataset or meta.dataset or "camvid", "split": split,
                                       "checkpoint": Path(path).name}, target)
    log.info("quantised with %s in %.1f s", method, time.perf_counter() - t0)
    return result


def speed_only_int8(model: nn.Module, meta: CheckpointMeta, input_size: Sequence[int],
                    directory: str | os.PathLike, target: str = "cpu", frames: int = 4) -> Path:
    """An INT8 file for timing a network without its data (msseg-bench on random weights): calibrated on
    a few synthetic street frames, cached. Integer kernels cost the same whatever the scales are, so
    its speed is the real one; its accuracy means nothing."""
    from msseg_core.runtime.artifacts import cached_onnx, model_digest
    from msseg_core.synthetic import render_scene

    h, w = (int(v) for v in input_size)
    digest = model_digest(model, meta)
    out = Path(directory) / f"{meta.model}-{digest}-{h}x{w}{SUFFIXES[target].replace('.onnx', '-speed.onnx')}"
    if not out.is_file():
        fp32 = cached_onnx(model, meta, (h, w), directory, digest=digest)
        scale = min(1.0, (360 * 480 / (h * w)) ** 0.5)  # rendering costs ~1 s per 360x480 frame
        images = [render_scene(seed, max(8, round(w * scale)), max(8, round(h * scale)))[0] for seed in range(frames)]
        inputs = calibration_inputs(images, model, meta, (h, w))
        quantize_onnx(fp32, inputs, out, meta, digest, keep_fp32=(), target=target,
                      calibration={"dataset": "synthetic street frames (speed only)", "split": "", "checkpoint": ""})
    return out


# ------------------------------------------------------------------------------------ evaluation


def compare_on_split(checkpoint: str, int8_path: Path, data_root: str, split: str, engines: Sequence[str],
                     threads: int | None = None, dataset: str | None = None,
                     input_size: tuple[int, int] | None = None) -> dict:
    """val mIoU and per-class IoU of fp32 (ONNX Runtime) and of the INT8 file in each engine, at the network
    input the file was made for (`input_size`; default the checkpoint's)."""
    from msseg_core.data import build_dataset
    from msseg_core.evaluation.evaluate import evaluate_split
    from msseg_core.runtime.segmenter import Segmenter

    rows = {}
    configs = [("fp32", "onnxruntime", {})] + [("int8", e, {"onnx_path": int8_path}) for e in engines]
    data = None
    for precision, engine, extra in configs:
        seg = Segmenter.from_checkpoint(checkpoint, device="cpu", precision=precision, backend=engine,
                                        threads=threads, input_size=input_size, **extra)
        data = data or build_dataset(dataset or seg.meta.dataset or "camvid", data_root, split)
        cm = evaluate_split(seg, data)
        rows[f"{engine} {precision}"] = {"miou": float(cm.miou), "per_class_iou": dict(zip(seg.class_names,
                                         (float(v) for v in cm.iou()), strict=True))}
    return rows


def format_comparison(rows: dict) -> str:
    """Per-class IoU (%) of each configuration against the first (fp32), with the difference."""
    names = list(next(iter(rows.values()))["per_class_iou"])
    keys = list(rows)
    ref = rows[keys[0]]
    lines = ["| class | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for cls in [*names, "mIoU"]:
        cells = []
        for k in keys:
            v = rows[k]["miou"] if cls == "mIoU" else rows[k]["per_class_iou"][cls]
            r = ref["miou"] if cls == "mIoU" else ref["per_class_iou"][cls]
            cells.append(f"{100 * v:.2f}" + ("" if k == keys[0] else f" ({100 * (v - r):+.2f})"))
        lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- CLI
