"""OpenVINO backend: the checkpoint's ONNX export (or the INT8 QDQ file) compiled by OpenVINO.

OpenVINO is the field's CPU engine (Intel and AMD) and also drives Intel GPUs (`device_name='GPU'`).
It reads the same ONNX file as ONNX Runtime, including the INT8 QDQ file from msseg-quantize, which
it turns into its own low-precision kernels. Compiling takes a second or two for a real network, so
the compiled blob is cached under `<cache>/openvino/`, keyed by the ONNX file's content (which
encodes the checkpoint and the input size), the checkpoint digest, OpenVINO's version, the device,
the CPU and the compile options (see `engine_cache` for why a cached blob is verified before use).
"""

from __future__ import annotations

import copy
import io
import logging
import os
from pathlib import Path

import torch

from msseg_core.runtime.engines.cache import file_sha256, load_or_build
from msseg_core.runtime.engines.torch_ort import EngineUnavailable, cpu_flags, cpu_name, default_threads

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8")
# Let the OS schedule OpenVINO's worker threads, as it does PyTorch's and ONNX Runtime's: OpenVINO
# otherwise pins each thread to a core of its own choice, which on a machine shared with other busy
# processes may be the busiest core (the process's affinity mask, e.g. `taskset`, is honoured either way).
CPU_PINNING = False


def openvino_version() -> str | None:
    """The installed OpenVINO's version, or None when it is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    return ov.get_version()


def compile_config(device_name: str, threads: int, precision: str, streams: int = 1) -> dict:
    """Compile options: `streams` streams (one per frame in flight; 1 for a single camera), latency
    hint, `threads` workers per stream, exact float where it matters."""
    config: dict = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": int(streams)}
    threads *= int(streams)
    if device_name.upper().startswith("CPU"):
        # On CPUs with AMX or AVX512-BF16 OpenVINO silently runs fp32 models in bf16; fp32 must mean fp32
        # (labels must agree with PyTorch's), and INT8 keeps its non-quantised layers in fp32 too.
        config.update(INFERENCE_NUM_THREADS=int(threads), INFERENCE_PRECISION_HINT="f32",
                      ENABLE_CPU_PINNING=CPU_PINNING)
    return config


def cache_key(onnx_sha256: str, input_size: tuple[int, int] | None, precision: str, device_name: str,
              config: dict, version: str, source_digest: str | None = None, cpu: str | None = None) -> dict:
    """Everything a compiled blob depends on; a change in any field means a rebuild."""
    return {"engine": "openvino", "version": version, "onnx_sha256": onnx_sha256, "checkpoint": source_digest,
            "input_size": list(input_size) if input_size else None, "precision": precision,
            "device": device_name, "cpu": cpu if cpu is not None else cpu_name(), "cpu_flags": cpu_flags(),
            "config": config}


class OpenVinoEngine:
    """An ONNX model (float NCHW input at a fixed size, logits out) compiled and run by OpenVINO."""

    name = "openvino"
    channels_last = False  # OpenVINO takes plain NCHW buffers

    def __init__(self, onnx_path: str | os.PathLike, threads: int | None = None, precision: str = "fp32",
                 cache_dir: str | os.PathLike | None = None, device_name: str = "CPU",
                 source_digest: str | None = None, streams: int = 1):
        try:
            import openvino as ov
        except ImportError:
            raise EngineUnavailable("backend openvino: the openvino package is not installed "
                                    "(pip install openvino)") from None
        if precision not in PRECISIONS:
            raise ValueError(f"backend openvino runs {' or '.join(PRECISIONS)}, not {precision}")
        self.path = Path(onnx_path)
        self.precision = precision
        self.device_name = device_name
        self.threads = int(threads or default_threads())
        core = ov.Core()
        if device_name.split(".")[0] not in {d.split(".")[0] for d in core.available_devices}:
            raise EngineUnavailable(f"backend openvino: device {device_name} not found "
                                    f"(available: {', '.join(core.available_devices)})")
        config = compile_config(device_name, self.threads, precision, streams)
        model = core.read_model(str(self.path))
        shape = model.input(0).get_partial_shape()
        self.input_shape = [d.get_length() if d.is_static else None for d in shape]
        self.input_size = tuple(self.input_shape[2:]) if None not in self.input_shape[2:] else None
        self.key = cache_key(file_sha256(self.path), self.input_size, precision, device_name, config,
                             ov.get_version(), source_digest)

        def build() -> bytes:
            log.info("compiling %s with OpenVINO on %s (once; cached)", self.path.name, device_name)
            stream = io.BytesIO()  # export_model() returns a BytesIO or bytes depending on the version
            core.compile_model(model, device_name, config).export_model(stream)
            return stream.getvalue()

        def load(blob: bytes):
            return core.import_model(blob, device_name, config)

        directory = Path(cache_dir) if cache_dir else self.path.parent
        self.compiled, self.built = load_or_build(directory / "openvino", self.path.stem, self.key, build, load)
        self._request = self.compiled.create_infer_request()
        self.static_batch = self.input_shape[0]

    def replica(self) -> OpenVinoEngine:
        """The same compiled model for another thread, with its own infer request (requests run at the
        same time on the compiled model's streams)."""
        twin = copy.copy(self)
        twin._request = self.compiled.create_infer_request()
        return twin

    def _run_one(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to("cpu", torch.float32).contiguous()
        self._request.infer({0: x.numpy()}, share_inputs=True, share_outputs=True)
        # A view of OpenVINO's output buffer, overwritten by the next call: the caller consumes it first.
        return torch.from_numpy(self._request.get_output_tensor(0).data)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x h x w normalised float32 -> N x C x h x w float32 logits (a static batch-1 model loops)."""
        if self.static_batch is not None and x.shape[0] != self.static_batch:
            return torch.cat([self._run_one(x[i:i + 1]).clone() for i in range(x.shape[0])])
        return self._run_one(x)
