"""TensorRT backend: an engine built from the checkpoint's ONNX export, run on a CUDA GPU.

Precisions follow TensorRT's strong typing (the only mode in TensorRT 11, which removed the FP16 and
INT8 builder flags): the engine computes in the types the ONNX file states. So fp32 builds from the
fp32 export, fp16 from the fp16 export (`msseg-export --fp16`: half weights and I/O), and int8 from
the QDQ file of msseg-quantize (explicit quantisation; TensorRT needs signed, symmetric Q/DQ).

Building takes seconds to minutes, so the serialised engine is cached under `<cache>/tensorrt/`,
keyed by the ONNX file's content, the checkpoint digest, the precision, the input size, TensorRT's
version and the GPU (name and compute capability: an engine is specific to both). A stale or corrupt
file is rebuilt, never deserialised (`engine_cache`).

At start-up the engine runs a few warm-up calls, then is captured in a CUDA graph (one replay per
frame: no per-layer launch overhead). Capture can fail (some plugins, old drivers); then every call
enqueues the engine directly, which is the same computation without the graph.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch

from msseg_core.runtime.engines.cache import file_sha256, load_or_build
from msseg_core.runtime.engines.torch_ort import EngineUnavailable

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
WARMUP_CALLS = 3
WORKSPACE_BYTES = 2 << 30


def import_tensorrt():
    """The tensorrt module, or a one-line EngineUnavailable saying how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise EngineUnavailable("backend tensorrt: the tensorrt package is not installed "
                                "(pip install tensorrt-cu12)") from None
    return tensorrt


def tensorrt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt.__version__


def require_cuda(device: torch.device) -> None:
    """TensorRT runs on NVIDIA GPUs only: a clear error for a CPU device or a machine without CUDA."""
    if device.type != "cuda":
        raise EngineUnavailable(f"backend tensorrt needs a CUDA device, got {device} (use device cuda or "
                                f"backend onnxruntime/openvino on the CPU)")
    if not torch.cuda.is_available():
        raise EngineUnavailable("backend tensorrt needs a CUDA GPU, and none is available here")


def cache_key(onnx_sha256: str, input_size: tuple[int, int] | None, precision: str, version: str,
              gpu_name: str, capability: tuple[int, int], source_digest: str | None = None) -> dict:
    """Everything a serialised engine depends on; a change in any field means a rebuild."""
    return {"engine": "tensorrt", "version": version, "onnx_sha256": onnx_sha256, "checkpoint": source_digest,
            "input_size": list(input_size) if input_size else None, "precision": precision,
            "gpu": gpu_name, "capability": list(capability), "workspace": WORKSPACE_BYTES}


def build_engine(trt, onnx_path: Path) -> bytes:
    """Parse the ONNX file into a strongly typed network and build a serialised engine."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None:
        raise EngineUnavailable(f"backend tensorrt: TensorRT {trt.__version__} has no strongly typed networks "
                                f"(need >= 10)")
    network = builder.create_network(1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    log.info("building a TensorRT engine from %s (once; cached, this takes a while)", onnx_path.name)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path.name} (see its log above)")
    return bytes(plan)


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16}
    if dtype not in table:
        raise RuntimeError(f"TensorRT engine I/O type {dtype} is not supported here (float32 or float16)")
    return table[dtype]


class TensorRTEngine:
    """A TensorRT engine with one static input (N x 3 x h x w) and one output (logits)."""

    name = "tensorrt"
    channels_last = False

    def __init__(self, onnx_path: str | os.PathLike, device: torch.device, precision: str = "fp32",
                 cache_dir: str | os.PathLike | None = None, source_digest: str | None = None,
                 cuda_graphs: bool = True):
        if precision not in PRECISIONS:
            raise ValueError(f"backend tensorrt runs {', '.join(PRECISIONS)}, not {precision}")
        trt = import_tensorrt()
        self.device = torch.device(device)
        require_cuda(self.device)
        self.path = Path(onnx_path)
        self.precision = precision
        index = self.device.index or 0
        torch.cuda.set_device(index)
        from msseg_core.runtime.artifacts import onnx_input_size

        key = cache_key(file_sha256(self.path), onnx_input_size(self.path), precision, trt.__version__,
                        torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index), source_digest)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))

        def load(plan: bytes):
            engine = runtime.deserialize_cuda_engine(plan)
            if engine is None:  # TensorRT reports a bad plan by returning None, not by raising
                raise RuntimeError("TensorRT could not deserialise the engine")
            return engine

        directory = Path(cache_dir) if cache_dir else self.path.parent
        self.engine, self.built = load_or_build(directory / "tensorrt", self.path.stem, key,
                                                lambda: build_engine(trt, self.path), load)
        self.key = key
        self._trt, self._cuda_graphs = trt, cuda_graphs
        self._open_context()

    def replica(self) -> TensorRTEngine:
        """The same engine for another thread: its own execution context, buffers, CUDA stream and graph."""
        twin = copy.copy(self)
        twin._open_context()
        return twin

    def _open_context(self) -> None:
        """An execution context with its own input/output buffers and stream, warmed up (and captured)."""
        trt = self._trt
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise RuntimeError(f"expected one input and one output, the engine has {inputs} -> {outputs}")
        self._in_name, self._out_name = inputs[0], outputs[0]
        in_shape = tuple(self.engine.get_tensor_shape(self._in_name))
        out_shape = tuple(self.engine.get_tensor_shape(self._out_name))
        if min(in_shape) < 1 or min(out_shape) < 1:
            raise RuntimeError(f"the engine has dynamic shapes {in_shape} -> {out_shape}; export a static one")
        self.input_shape = list(in_shape)
        self.input_size = tuple(in_shape[2:])
        self._in = torch.empty(in_shape, dtype=_torch_dtype(trt, self.engine.get_tensor_dtype(self._in_name)),
                               device=self.device)
        self._out = torch.empty(out_shape, dtype=_torch_dtype(trt, self.engine.get_tensor_dtype(self._out_name)),
                                device=self.device)
        self.context.set_tensor_address(self._in_name, self._in.data_ptr())
        self.context.set_tensor_address(self._out_name, self._out.data_ptr())
        self._stream = torch.cuda.Stream(self.device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._in.zero_()
        for _ in range(WARMUP_CALLS):  # first calls pick tactics and allocate: keep them out of frame 1
            self._enqueue()
        self._stream.synchronize()
        self.cuda_graphs = bool(self._cuda_graphs) and self._capture()

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")

    def _capture(self) -> bool:
        """Capture one enqueue in a CUDA graph; on failure keep the direct path (same results)."""
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                self._enqueue()
            graph.replay()
            self._stream.synchronize()
            self._graph = graph
            return True
        except Exception as exc:  # noqa: BLE001 - an optimisation: fall back, say so
            log.warning("TensorRT: CUDA graph capture failed (%s); enqueueing directly", exc)
            self._graph = None
            return False

    def _run_one(self, x: torch.Tensor) -> torch.Tensor:
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)  # x was written on PyTorch's stream
        with torch.cuda.stream(self._stream):
            self._in.copy_(x.reshape(self._in.shape), non_blocking=True)
            if self._graph is not None:
                self._graph.replay()
            else:
                self._enqueue()
        current.wait_stream(self._stream)  # the logits are complete before PyTorch reads them
        # The output buffer is reused: the caller consumes it before the next call.
        return self._out if self._out.dtype == torch.float32 else self._out.float()

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x h x w normalised float on the GPU -> N x C x h x w float32 logits (batch-1 engines loop)."""
        x = x.to(self.device)
        if x.shape[0] != self.input_shape[0]:
            return torch.cat([self._run_one(x[i:i + 1]).clone() for i in range(x.shape[0])])
        return self._run_one(x)
