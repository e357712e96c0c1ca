"""Network backends behind `Segmenter`: one call, normalised float NCHW in, float32 logits out.

Pre- and post-processing (upload, resize, normalise, argmax, colours, masks) live in `inference.py`
and are shared, so PyTorch and ONNX Runtime produce the same outputs from the same frames; a backend
only runs the network at the fixed network input size.

- `TorchEngine`: eager PyTorch with the inference-time tricks that are safe for any model: BatchNorm
  folded into the preceding convolution (checked numerically, undone if it changes the output),
  channels_last memory, autocast (fp16/bf16), optional `torch.compile`, optional CUDA graphs.
- `OrtEngine`: ONNX Runtime with full graph optimisation, on the TensorRT, CUDA or CPU execution
  provider (whichever is installed and matches the device), fed through I/O binding so tensors are
  not copied between PyTorch and ONNX Runtime. It runs the fp32/fp16 exports and the INT8 QDQ file.

OpenVINO and TensorRT live in `openvino_backend.py` and `tensorrt_backend.py` (optional packages);
`engines.py` chooses among all of them.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

AUTOCAST = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class EngineUnavailable(ValueError):
    """An engine that cannot run here (not installed, no GPU): a configuration error, like asking for a
    CUDA device on a machine without one; the message is one line saying why and what to do."""


def default_threads() -> int:
    """Cores this process may run on (affinity-aware, unlike os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@functools.cache
def _cpuinfo() -> str:
    """/proc/cpuinfo, read once per process (it does not change, and cache keys ask for it on every engine build)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_name() -> str:
    """The processor's model name (benchmarks and cache keys record which machine measured)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# The instruction-set extensions that change CPU inference speed (INT8 gains most with VNNI/AMX), in this order.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
               "amx_bf16", "asimd", "asimddp", "sve")


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The speed-relevant ISA flags of this CPU (`SPEED_FLAGS` present in /proc/cpuinfo): machines with the same
    model name can differ here, and INT8 figures mean little without them. Empty where /proc/cpuinfo is absent."""
    have: set[str] = set()
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, ARM
            have.update(value.split())
            break
    return [f for f in SPEED_FLAGS if f in have]


# ------------------------------------------------------------------------------ BatchNorm folding


def _fold_pair(conv: nn.Module, bn: nn.BatchNorm2d) -> nn.Module:
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    return fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(bn, nn.BatchNorm2d)
            and bn.track_running_stats and bn.running_mean is not None
            and conv.out_channels == bn.num_features)


def _fold_sequential(seq: nn.Sequential) -> int:
    """Conv directly followed by BN inside a Sequential: the conv's output feeds only that BN."""
    folded = 0
    keys = list(seq._modules)
    for a, b in zip(keys, keys[1:], strict=False):
        conv, bn = seq._modules[a], seq._modules[b]
        if conv is not None and bn is not None and _foldable(conv, bn):
            seq._modules[a] = _fold_pair(conv, bn)
            seq._modules[b] = nn.Identity()
            folded += 1
    return folded


def _fold_fx(module: nn.Module) -> tuple[nn.Module, int]:
    """Trace `module` with torch.fx and fold every conv -> BN edge whose conv output has no other use."""
    import torch.fx

    gm = torch.fx.symbolic_trace(module)
    mods = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.BatchNorm2d):
            continue
        prev = node.args[0] if node.args else None
        if not isinstance(prev, torch.fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        conv, bn = mods[prev.target], mods[node.target]
        if calls.get(prev.target) != 1 or calls.get(node.target) != 1 or not _foldable(conv, bn):
            continue  # a shared module: folding would change its other call sites
        parent_name, _, attr = prev.target.rpartition(".")
        setattr(gm.get_submodule(parent_name) if parent_name else gm, attr, _fold_pair(conv, bn))
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded += 1
    if folded:
        gm.graph.lint()
        gm.recompile()
    return (gm if folded else module), folded


def fold_batchnorm(module: nn.Module) -> tuple[nn.Module, int]:
    """Fold eval-mode BatchNorm2d into the convolution before it, wherever that is provably safe.

    Whole-model fx tracing fails on models with shape-dependent Python control flow (padding to a
    multiple of the stride), so this recurses: Sequential containers by adjacency, other modules by
    tracing them, and their children when tracing fails. Returns (module, number of BNs folded).
    """
    if isinstance(module, nn.Sequential):
        # Adjacency means dataflow only with Sequential's own forward (a subclass may override it).
        folded = _fold_sequential(module) if type(module).forward is nn.Sequential.forward else 0
        for name, child in list(module.named_children()):
            new, n = fold_batchnorm(child)
            module._modules[name] = new
            folded += n
        return module, folded
    if not any(isinstance(m, nn.BatchNorm2d) for m in module.modules()):
        return module, 0
    if type(module).__module__.startswith("torch.nn."):
        return module, 0  # a leaf layer or torch container: nothing to trace
    try:
        return _fold_fx(module)
    except Exception:  # noqa: BLE001 - any tracing failure just means "recurse instead"
        folded = 0
        for name, child in list(module.named_children()):
            new, n = fold_batchnorm(child)
            if new is not child:
                setattr(module, name, new)
            folded += n
        return module, folded


# ------------------------------------------------------------------------------------- PyTorch


class TorchEngine:
    """Eager (optionally compiled / graph-captured) PyTorch on any device."""

    name = "torch"

    def __init__(self, model: nn.Module, device: torch.device, precision: str = "fp32",
                 input_size: Sequence[int] | None = None, channels_last: bool | None = None,
                 fuse: bool = True, compile: bool = False, cuda_graphs: bool = False):
        if precision not in AUTOCAST:
            raise ValueError(f"precision must be one of {', '.join(AUTOCAST)}, got {precision!r}")
        self.device = torch.device(device)
        self.precision = precision
        self._autocast = AUTOCAST[precision]
        # channels_last: cuDNN and oneDNN both prefer NHWC for convolutions (measured: see BENCHMARKS.md).
        self.channels_last = True if channels_last is None else bool(channels_last)
        model = model.eval()
        self.folded = 0
        if fuse:
            model, self.folded = self._fold_checked(model, input_size)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model  # what runs (hooks registered here fire)
        self._forward = model
        if compile:
            try:
                self._forward = torch.compile(model, mode="max-autotune-no-cudagraphs" if cuda_graphs else None,
                                              dynamic=False)
            except Exception as exc:  # noqa: BLE001 - an optional speed-up must never stop inference
                log.warning("torch.compile failed (%s); running eager", exc)
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        if cuda_graphs and self.device.type != "cuda":
            log.warning("cuda_graphs needs a CUDA device; ignored on %s", self.device)
        self._graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._graph_failed: set[tuple[int, ...]] = set()

    def replica(self) -> TorchEngine:
        """The same module for another thread (eager forward passes may run concurrently); CUDA graphs,
        whose static buffers are per caller, are captured again per replica."""
        twin = copy.copy(self)
        twin._graphs, twin._graph_failed = {}, set()
        return twin

    @staticmethod
    def _fold_checked(model: nn.Module, input_size: Sequence[int] | None) -> tuple[nn.Module, int]:
        """Fold BN into a copy, keep it only if its logits match the original's on a random input."""
        if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
            return model, 0
        try:
            candidate, n = fold_batchnorm(copy.deepcopy(model))
        except Exception as exc:  # noqa: BLE001
            log.debug("BatchNorm folding failed: %s", exc)
            return model, 0
        if not n:
            return model, 0
        h, w = (int(v) for v in (input_size or (32, 32)))
        h, w = min(h, 32), min(w, 32)  # a small probe is enough to catch a wrong fold, and cheap
        dev = next((p.device for p in model.parameters()), torch.device("cpu"))
        x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(dev)
        with torch.inference_mode():
            ref, out = model(x).float(), candidate.eval()(x).float()
        tol = 1e-3 * max(1.0, ref.abs().max().item())
        if out.shape != ref.shape or not torch.allclose(out, ref, atol=tol, rtol=1e-3):
            log.warning("BatchNorm folding changed the logits (max diff %.3g); not folding",
                        (out - ref).abs().max().item() if out.shape == ref.shape else float("nan"))
            return model, 0
        log.debug("folded %d BatchNorm layers into convolutions", n)
        return candidate, n

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self._autocast is not None:
            with torch.autocast(self.device.type, dtype=self._autocast):
                return self._forward(x)
        return self._forward(x)

    def _graph(self, x: torch.Tensor) -> torch.Tensor | None:
        """Replay a CUDA graph captured for this exact input shape (captured on first use)."""
        key = tuple(x.shape)
        if key in self._graph_failed:
            return None
        entry = self._graphs.get(key)
        if entry is None:
            try:
                static_in = torch.empty_like(x).copy_(x)
                stream = torch.cuda.Stream(self.device)
                stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(stream):
                    for _ in range(3):  # warm-up on a side stream: cuDNN autotuning, lazy inits
                        self._run(static_in)
                torch.cuda.current_stream(self.device).wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_out = self._run(static_in)
                entry = (graph, static_in, static_out)
                self._graphs[key] = entry
            except Exception as exc:  # noqa: BLE001 - capture is an optimisation: fall back, say so
                log.warning("CUDA graph capture failed for input %s (%s); running without graphs", key, exc)
                self._graph_failed.add(key)
                return None
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out  # overwritten by the next replay: the caller consumes it first

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x h x w normalised float32 on the device -> N x C x h x w logits (float32 or autocast dtype)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.cuda_graphs:
            out = self._graph(x)
            if out is not None:
                return out
        return self._run(x)


# -------------------------------------------------------------------------------- ONNX Runtime


def ort_providers(device: torch.device, precision: str = "fp32", cache_dir: str | os.PathLike | None = None,
                  available: Sequence[str] | None = None) -> list:
    """Execution providers for a device, best first, among those this onnxruntime build has."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    index = device.index or 0
    chosen: list = []
    if "TensorrtExecutionProvider" in available:
        opts = {"device_id": index, "trt_fp16_enable": precision == "fp16"}
        if cache_dir:
            opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir))
        chosen.append(("TensorrtExecutionProvider", opts))
    if "CUDAExecutionProvider" in available:
        chosen.append(("CUDAExecutionProvider", {"device_id": index, "cudnn_conv_algo_search": "EXHAUSTIVE"}))
    if not chosen:
        raise RuntimeError(f"device {device} requested but this onnxruntime has no CUDA/TensorRT provider "
                           f"(available: {', '.join(available)}); install onnxruntime-gpu or use device cpu")
    chosen.append("CPUExecutionProvider")
    return chosen


_ORT_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(double)": torch.float64}


class OrtEngine:
    """An ONNX model (float NCHW input at a fixed H x W, logits output) run by ONNX Runtime."""

    name = "onnxruntime"
    channels_last = False

    def __init__(self, onnx_path: str | os.PathLike, device: torch.device, threads: int | None = None,
                 precision: str = "fp32", cache_dir: str | os.PathLike | None = None,
                 providers: Sequence | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise EngineUnavailable("backend onnxruntime: the onnxruntime package is not installed "
                                    "(pip install onnxruntime)") from None

        self.device = torch.device(device)
        self.path = Path(onnx_path)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = int(threads or default_threads())
        so.inter_op_num_threads = 1
        # ORT's pool would otherwise busy-wait after each run, stealing the cores PyTorch's pre- and
        # post-processing needs right then (measured: see BENCHMARKS.md).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        self.providers = list(providers) if providers is not None else ort_providers(self.device, precision, cache_dir)
        self._session_args = (str(self.path), so, self.providers)
        self.session = ort.InferenceSession(*self._session_args)
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.input_dtype = _ORT_TYPES.get(inp.type, torch.float32)
        self.input_shape = list(inp.shape)
        self.static_batch = isinstance(inp.shape[0], int)
        self.num_classes = out.shape[1] if isinstance(out.shape[1], int) else None
        self.active_providers = self.session.get_providers()
        self._binding = self.session.io_binding()
        self._out: dict[tuple[int, ...], torch.Tensor] = {}

    def replica(self) -> OrtEngine:
        """The engine for another thread, with its own I/O binding and output buffer. One thread per call:
        the same session (ORT runs concurrent calls of one session, each on its caller's thread). More: a
        session of its own, because a session's intra-op pool is shared by its concurrent calls (the
        weights are then held twice; small next to the process)."""
        twin = copy.copy(self)
        if int(self._session_args[1].intra_op_num_threads) > 1:
            import onnxruntime as ort

            twin.session = ort.InferenceSession(*self._session_args)
        twin._binding, twin._out = twin.session.io_binding(), {}
        return twin

    @property
    def input_size(self) -> tuple[int, int] | None:
        h, w = self.input_shape[2], self.input_shape[3]
        return (h, w) if isinstance(h, int) and isinstance(w, int) else None

    def _bind(self, name: str, t: torch.Tensor, output: bool) -> None:
        """Hand ORT the tensor's memory itself (CPU or CUDA): no copy in either direction."""
        dev = "cuda" if t.device.type == "cuda" else "cpu"
        elem = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64}[t.dtype]
        fn = self._binding.bind_output if output else self._binding.bind_input
        fn(name, dev, t.device.index or 0, np.dtype(elem), list(t.shape), t.data_ptr())

    def _out_buffer(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.num_classes is None:
            return None
        key = (x.shape[0], x.shape[2], x.shape[3])
        buf = self._out.get(key)
        if buf is None:
            buf = torch.empty((x.shape[0], self.num_classes, x.shape[2], x.shape[3]), dtype=self.input_dtype,
                              device=x.device)
            self._out = {key: buf}  # one size at a time: the network size is fixed
        return buf

    def _run_one(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.input_dtype).contiguous()
        if x.device.type == "cuda" and self.device.type == "cuda":
            torch.cuda.current_stream(x.device).synchronize()  # ORT runs on its own stream
        out = self._out_buffer(x)
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        self._bind(self.input_name, x, output=False)
        if out is not None:
            self._bind(self.output_name, out, output=True)
        else:  # unknown class count: let ORT allocate on the device
            self._binding.bind_output(self.output_name, "cuda" if x.device.type == "cuda" else "cpu",
                                      x.device.index or 0)
        self.session.run_with_iobinding(self._binding)
        if x.device.type == "cuda":
            self._binding.synchronize_outputs()  # ORT's stream -> the output is complete for PyTorch
        if out is None:
            value = self._binding.get_outputs()[0]
            out = torch.from_numpy(value.numpy()).to(x.device)
        # The output buffer is reused: the caller consumes it before the next call (as with graphs).
        return out.float() if out.dtype != torch.float32 else out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x h x w normalised float on the device -> N x C x h x w float32 logits."""
        if self.static_batch and x.shape[0] != self.input_shape[0]:
            return torch.cat([self._run_one(x[i:i + 1]).clone() for i in range(x.shape[0])])
        return self._run_one(x)
