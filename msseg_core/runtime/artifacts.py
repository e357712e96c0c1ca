"""Files a network runs from besides its checkpoint: ONNX / TorchScript exports (checked against PyTorch)
and the INT8 files msseg-quantize writes, found and verified here.

The contract of an exported network is the clean one: float32 (float16 with --fp16) normalised NCHW
input at the network size, logits N x C x H x W out. Pre- and post-processing stay outside, as in
`Segmenter`, so every runtime can share them. The checkpoint metadata (model, classes, palette, road
classes, mean/std, input size) goes into ONNX `metadata_props` (TorchScript: an extra file), so a bare
.onnx file is enough for `Segmenter.from_checkpoint("model.onnx")`.

Every export is verified before it is reported done: the exported model (ONNX Runtime for ONNX, the
loaded TorchScript module for TorchScript) runs the same inputs as the PyTorch module, and the
maximum absolute logit difference and the argmax label agreement are printed; the exit status is
non-zero when either is outside tolerance.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from msseg_core.checkpoint import CheckpointError, CheckpointMeta, load_onnx_meta, onnx_metadata
from msseg_core.io import atomic_write

log = logging.getLogger(__name__)

TORCHSCRIPT_META = "msseg_meta.json"
INPUT_NAME, OUTPUT_NAME = "input", "logits"
# Tolerances of the export check: max |logit difference| relative to the logits' range, label agreement.
TOLERANCE = {"fp32": (1e-3, 0.99), "fp16": (5e-2, 0.95)}


# ------------------------------------------------------------------------------------ helpers


def cache_dir() -> Path:
    """Where on-the-fly exports are cached: $MSSEG_CACHE_DIR, else $XDG_CACHE_HOME/msseg, else ~/.cache/msseg."""
    env = os.environ.get("MSSEG_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "msseg"


def model_digest(model: nn.Module, meta: CheckpointMeta) -> str:
    """Content hash of the weights and metadata: the cache key of everything derived from a model."""
    h = hashlib.sha256(meta.to_json().encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()[:20]


def example_input(batch: int, height: int, width: int, meta: CheckpointMeta, seed: int = 0) -> torch.Tensor:
    """Normalised random uint8 images: what the network really sees, unlike unit-variance noise."""
    g = torch.Generator().manual_seed(seed)
    u8 = torch.randint(0, 256, (batch, 3, height, width), generator=g, dtype=torch.uint8)
    mean = torch.tensor(meta.mean).view(1, 3, 1, 1)
    std = torch.tensor(meta.std).view(1, 3, 1, 1)
    return (u8.float() / 255.0 - mean) / std


def _export_meta(meta: CheckpointMeta, height: int, width: int) -> CheckpointMeta:
    return dataclasses.replace(meta, input_size=[int(height), int(width)])


# --------------------------------------------------------------------------------------- ONNX


def onnx_input_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(height, width) of an ONNX file's input, or None where they are dynamic."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    h, w = dims[2].dim_value, dims[3].dim_value
    return (int(h), int(w)) if h > 0 and w > 0 else None


@contextlib.contextmanager
def _quiet_logging():
    """The exporters log every optimisation pass at INFO; keep the caller's log readable."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(previous)


def _torch_onnx_export(model: nn.Module, x: torch.Tensor, path: str, opset: int | None,
                       dynamic_batch: bool, dynamic_hw: bool, exporter: str) -> None:
    """torch.onnx.export, quietly; the torch.export-based exporter first, the legacy one as fallback."""
    axes = {0: "batch"} if dynamic_batch else {}
    if dynamic_hw:
        axes.update({2: "height", 3: "width"})
    order = {"dynamo": ("dynamo", "legacy"), "legacy": ("legacy", "dynamo")}[exporter]
    errors = []
    for kind in order:
        if kind == "legacy" and dynamic_hw:
            errors.append("legacy: cannot export a dynamic height/width faithfully (it traces shapes as constants)")
            continue
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_logging():
                warnings.simplefilter("ignore")
                if kind == "dynamo":
                    dyn = None
                    if axes:
                        dyn = ({i: torch.export.Dim.DYNAMIC for i in axes},)
                    torch.onnx.export(model, (x,), path, dynamo=True, input_names=[INPUT_NAME],
                                      output_names=[OUTPUT_NAME], opset_version=opset, dynamic_shapes=dyn,
                                      external_data=False)
                else:
                    torch.onnx.export(model, (x,), path, dynamo=False, input_names=[INPUT_NAME],
                                      output_names=[OUTPUT_NAME], opset_version=opset or 17,
                                      dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes} if axes else None,
                                      do_constant_folding=True)
            return
        except Exception as exc:  # noqa: BLE001 - try the next exporter, report all failures together
            errors.append(f"{kind}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            log.debug("ONNX export with the %s exporter failed", kind, exc_info=True)
    raise RuntimeError("ONNX export failed: " + " | ".join(errors))


def export_onnx(model: nn.Module, meta: CheckpointMeta, path: str | os.PathLike,
                input_size: Sequence[int] | None = None, opset: int | None = None, fp16: bool = False,
                dynamic: bool = False, dynamic_batch: bool = False, exporter: str = "dynamo") -> Path:
    """Write `model` as ONNX with its metadata; atomic (a temp file renamed into place).

    dynamic: batch, height and width all dynamic; dynamic_batch: only the batch (what Segmenter's
    cache uses: one file serves predict and predict_batch at the fixed network size).
    """
    import onnx

    path = Path(path)
    model, x = _trace_pair(model, meta, input_size, fp16)

    def write(tmp: str) -> None:
        _torch_onnx_export(model, x, tmp, opset, dynamic_batch or dynamic, dynamic, exporter)
        proto = onnx.load(tmp)
        extra = {"precision": "fp16" if fp16 else "fp32", "dynamic": dynamic,
                 "dynamic_batch": dynamic_batch or dynamic}
        del proto.metadata_props[:]
        for key, value in onnx_metadata(_export_meta(meta, *x.shape[-2:]), extra).items():
            proto.metadata_props.add(key=key, value=value)
        proto.producer_name = "msseg"
        proto.doc_string = f"msseg {meta.model}: {INPUT_NAME} NCHW normalised RGB -> {OUTPUT_NAME} NCHW"
        onnx.save(proto, tmp)

    return atomic_write(path, write, suffix=".tmp.onnx", durable=False)


def _trace_pair(model: nn.Module, meta: CheckpointMeta, input_size: Sequence[int] | None,
                fp16: bool) -> tuple[nn.Module, torch.Tensor]:
    """The model in eval mode on the CPU and an example input at the export size (both fp16 with `fp16`)."""
    h, w = (int(v) for v in (input_size or meta.input_size))
    model = _on_cpu(model).eval()
    x = example_input(1, h, w, meta)
    if fp16:
        model, x = _half_copy(model), x.half()
    return model, x


def _on_cpu(model: nn.Module) -> nn.Module:
    """The model on the CPU without moving the caller's (a copy only when it lives elsewhere)."""
    if all(t.device.type == "cpu" for t in model.state_dict().values()):
        return model
    return copy.deepcopy(model).to("cpu")


def _half_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).half()


def cached_onnx(model: nn.Module, meta: CheckpointMeta, input_size: Sequence[int],
                directory: str | os.PathLike | None = None, digest: str | None = None, fp16: bool = False) -> Path:
    """The ONNX export of (weights, metadata, input size), exported once and reused from the cache."""
    h, w = (int(v) for v in input_size)
    digest = digest or model_digest(model, meta)
    tag = "-fp16" if fp16 else ""
    path = Path(directory or cache_dir()) / f"{meta.model}-{digest}-{h}x{w}{tag}.onnx"
    if not path.is_file():
        log.info("exporting %s at %dx%d to %s (once; cached)", meta.model, h, w, path)
        # Static shapes (batch 1; OrtEngine loops over larger batches): a trace at the exact size is
        # faithful by construction, and batching buys little on a CPU. The legacy exporter: 5-15x faster
        # to export than the torch.export-based one, the same speed in ONNX Runtime (measured on mssanet
        # and lraspp); the torch.export-based one is the fallback.
        export_onnx(model, meta, path, (h, w), fp16=fp16, exporter="legacy")
    return path


# -------------------------------------------------------------------------------- TorchScript


def export_torchscript(model: nn.Module, meta: CheckpointMeta, path: str | os.PathLike,
                       input_size: Sequence[int] | None = None, fp16: bool = False) -> Path:
    """Trace `model` at the given size (scripting fails on most real models); metadata as an extra file."""
    path = Path(path)
    model, x = _trace_pair(model, meta, input_size, fp16)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (x,), check_trace=False)

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(traced, tmp, _extra_files={TORCHSCRIPT_META: _export_meta(meta, *x.shape[-2:]).to_json()})

    return atomic_write(path, write, durable=False)


def load_torchscript(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, CheckpointMeta]:
    """A TorchScript file from `export_torchscript` and its metadata."""
    extra = {TORCHSCRIPT_META: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    if not extra[TORCHSCRIPT_META]:
        raise CheckpointError(f"{path} carries no msseg metadata")
    return module.eval(), CheckpointMeta.from_json(extra[TORCHSCRIPT_META])


# ------------------------------------------------------------------------------------- checks


@dataclass
class ExportCheck:
    """How closely an exported model reproduces PyTorch on the same inputs."""

    max_abs_diff: float
    logit_scale: float
    agreement: float
    atol: float
    min_agreement: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol and self.agreement >= self.min_agreement

    def __str__(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (f"max |logit diff| {self.max_abs_diff:.3g} (tolerance {self.atol:.3g}, logits up to "
                f"{self.logit_scale:.3g}); label agreement {100 * self.agreement:.3f}% (minimum "
                f"{100 * self.min_agreement:.1f}%): {verdict}")


def compare_logits(ref: torch.Tensor, out: torch.Tensor, fp16: bool = False,
                   rel_tol: float | None = None, min_agreement: float | None = None) -> ExportCheck:
    """Max abs difference against a tolerance relative to the logits' magnitude, plus argmax agreement."""
    ref, out = ref.float(), out.float()
    if ref.shape != out.shape:
        raise ValueError(f"exported model output {tuple(out.shape)} != PyTorch output {tuple(ref.shape)}")
    d_rel, d_agree = TOLERANCE["fp16" if fp16 else "fp32"]
    scale = max(1.0, ref.abs().max().item())
    return ExportCheck(
        max_abs_diff=(ref - out).abs().max().item(),
        logit_scale=scale,
        agreement=(ref.argmax(1) == out.argmax(1)).float().mean().item(),
        atol=(rel_tol if rel_tol is not None else d_rel) * scale,
        min_agreement=min_agreement if min_agreement is not None else d_agree,
    )


def _reference_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval().float()(x.float())


def check_onnx(path: str | os.PathLike, model: nn.Module, meta: CheckpointMeta, batch: int = 2,
               rel_tol: float | None = None, min_agreement: float | None = None) -> ExportCheck:
    """Run the ONNX file in ONNX Runtime (CPU) and the fp32 PyTorch model on the same inputs."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    h, w = (int(v) for v in load_onnx_meta(path).input_size)
    fp16 = inp.type == "tensor(float16)"
    n = batch if not isinstance(inp.shape[0], int) else int(inp.shape[0])
    x = example_input(n, h, w, meta, seed=1)
    out = sess.run(None, {inp.name: (x.half() if fp16 else x).numpy()})[0]
    return compare_logits(_reference_logits(model, x), torch.from_numpy(out), fp16, rel_tol, min_agreement)


def check_torchscript(path: str | os.PathLike, model: nn.Module, meta: CheckpointMeta, batch: int = 2,
                      rel_tol: float | None = None, min_agreement: float | None = None) -> ExportCheck:
    """Run the saved TorchScript module (as loaded from disk) and the fp32 PyTorch model."""
    module, ts_meta = load_torchscript(path)
    h, w = ts_meta.input_size
    x = example_input(batch, h, w, meta, seed=1)
    dtype = next((p.dtype for p in module.parameters()), torch.float32)
    fp16 = dtype == torch.float16
    with torch.inference_mode():
        out = module(x.to(dtype))
    return compare_logits(_reference_logits(model, x), out, fp16, rel_tol, min_agreement)


# ----------------------------------------------------------------------------------------- CLI


INT8_SUFFIXES = {"cpu": ".int8.onnx", "tensorrt": ".int8-tensorrt.onnx"}  # which engines a file is for
SUFFIXES = INT8_SUFFIXES

# ------------------------------------------------------------------------------ INT8 files (msseg-quantize)


def int8_model_path(checkpoint: str | os.PathLike, target: str = "cpu") -> Path:
    """Where a checkpoint's INT8 model lives: beside it, `<name>.int8.onnx` (`<name>.int8-tensorrt.onnx`)."""
    path = Path(checkpoint)
    return path.with_name(path.stem + SUFFIXES[target])


def build_command(checkpoint: str | os.PathLike, target: str = "cpu") -> str:
    """The one command that builds the INT8 model of `checkpoint` (for error messages and docs)."""
    tail = "" if target == "cpu" else f" --for {target}"
    return f"msseg-quantize --checkpoint {checkpoint} --data-root <dataset root> --split train{tail}"


def int8_props(path: str | os.PathLike) -> dict[str, str]:
    """The msseg metadata_props of an ONNX file (JSON-encoded values as written)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def find_int8_model(checkpoint: str | os.PathLike, model: nn.Module, meta: CheckpointMeta,
                    input_size: Sequence[int] | None = None, target: str = "cpu") -> Path:
    """The verified INT8 file of `checkpoint`, or a one-line CheckpointError naming the command to build it."""
    path = int8_model_path(checkpoint, target)
    command = build_command(checkpoint, target)
    if not path.is_file():
        raise CheckpointError(f"no INT8 model for {checkpoint} (expected {path}); build it once with `{command}`")
    try:
        props = int8_props(path)
    except Exception as exc:  # noqa: BLE001 - protobuf raises assorted errors on corrupt files
        raise CheckpointError(f"cannot read {path} ({exc}); rebuild it with `{command}`") from None
    if json.loads(props.get("precision", '""')) != "int8":
        raise CheckpointError(f"{path} is not an msseg INT8 model; rebuild it with `{command}`")
    if json.loads(props.get("source_digest", '""')) != model_digest(model, meta):
        raise CheckpointError(f"{path} was calibrated for other weights than {checkpoint} (stale); rebuild it "
                              f"with `{command}`")
    size = json.loads(props.get("input_size", "null"))
    if input_size is not None and list(size or []) != [int(v) for v in input_size]:
        raise CheckpointError(f"{path} runs at {size[0]}x{size[1]}, not {input_size[0]}x{input_size[1]}; "
                              f"rebuild it with --height/--width and --out, and pass onnx_path")
    return path
