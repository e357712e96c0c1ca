"""Which engine runs a Segmenter's network, and how it is built: PyTorch, ONNX Runtime, OpenVINO, TensorRT.

Every engine runs the same contract (normalised float NCHW at the network size in, float32 logits
out); pre- and post-processing stay in `inference.py`, so engines differ only in the network call.

| engine        | CPU           | CUDA               | file it runs                                       |
|---------------|---------------|--------------------|----------------------------------------------------|
| `torch`       | fp32, bf16    | fp32, fp16, bf16   | the checkpoint's module                                |
| `onnxruntime` | fp32, int8    | fp32, fp16, int8   | the ONNX export (cached), or `<ckpt>.int8.onnx`        |
| `openvino`    | fp32, int8    | -                  | the same files; compiled blob cached                   |
| `tensorrt`    | -             | fp32, fp16, int8   | fp32 / fp16 export, `<ckpt>.int8-tensorrt.onnx`; plan cached |

`auto` races the installed engines that can run the requested device and precision on this model
at this input size (PyTorch on CUDA is raced only against TensorRT), once; the decision is cached
next to the ONNX export. An engine wins only if its labels agree with PyTorch fp32 on a synthetic
street frame (MIN_AGREEMENT) and, for a non-PyTorch engine, only if it is at least 1 - AUTO_MARGIN
faster than the fastest PyTorch variant (ONNX Runtime plays PyTorch's part where no PyTorch model is
available, e.g. a bare .onnx or INT8). The decision, every timing, every check and every engine
that could not be built are in `EngineFactory.report` (Segmenter.describe()['auto']).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from msseg_core.checkpoint import CheckpointMeta
from msseg_core.io import write_json_atomic
from msseg_core.runtime.engines.cache import key_digest
from msseg_core.runtime.engines.torch_ort import EngineUnavailable, OrtEngine, TorchEngine, cpu_flags, cpu_name

log = logging.getLogger(__name__)

ENGINES = ("torch", "onnxruntime", "openvino", "tensorrt")
BACKENDS = ("auto", *ENGINES)
SUPPORT: dict[tuple[str, str], tuple[str, ...]] = {
    ("torch", "cpu"): ("fp32", "bf16"),
    ("torch", "cuda"): ("fp32", "fp16", "bf16"),
    ("onnxruntime", "cpu"): ("fp32", "int8"),
    ("onnxruntime", "cuda"): ("fp32", "fp16", "int8"),
    ("openvino", "cpu"): ("fp32", "int8"),
    ("tensorrt", "cuda"): ("fp32", "fp16", "int8"),
}
# 'auto' takes a non-PyTorch engine only when its median forward time is below this fraction of the
# fastest PyTorch variant's (or, without PyTorch, of ONNX Runtime's): small gains are not worth a switch.
AUTO_MARGIN = 0.9
# Start-up timing budget of 'auto' (seconds, after one warm-up each): enough to see a 10% difference.
AUTO_BUDGET_S = 6.0
# Label agreement with PyTorch fp32 an engine needs on the probe frame to be eligible for 'auto'.
# fp32/fp16 engines compute the same function: 99% of all pixels (the msseg-export check). INT8
# legitimately flips near-ties (it is judged by mIoU, msseg-eval), and the synthetic probe frame is
# full of them (a CamVid model is unsure of rendered scenes), so INT8 is checked on the pixels PyTorch
# is sure of (max probability >= CONFIDENT): measured 95-97% there for good INT8 engines, 80% for
# ONNX Runtime's saturating AVX2 kernels on the fast model (quantize.input_convolutions).
MIN_AGREEMENT = {"fp32": 0.99, "fp16": 0.99, "bf16": 0.95, "int8": 0.90}
CONFIDENT = 0.5
AUTO_RULE = 3  # bump when the choice rule changes: cached decisions of older rules are ignored


def engine_versions() -> dict[str, str | None]:
    """Installed version of each engine's package (None: not installed)."""
    from msseg_core.runtime.engines.openvino_engine import openvino_version
    from msseg_core.runtime.engines.tensorrt_engine import tensorrt_version

    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    return {"torch": torch.__version__, "onnxruntime": ort, "openvino": openvino_version(),
            "tensorrt": tensorrt_version()}


def check_supported(backend: str, device: torch.device, precision: str) -> None:
    """A clear ValueError for an engine/device/precision combination that no engine build can satisfy."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        if not any(precision in SUPPORT.get((e, device.type), ()) for e in ENGINES):
            raise ValueError(f"no engine runs precision {precision} on {device.type}")
        return
    runs = SUPPORT.get((backend, device.type), ())
    if not runs:
        hint = {"tensorrt": " (it needs an NVIDIA GPU; on the CPU use onnxruntime or openvino)",
                "openvino": " (here: CPU; Intel GPUs through openvino_device='GPU')"}.get(backend, "")
        raise ValueError(f"backend {backend} does not run on {device.type}{hint}")
    if precision not in runs:
        hint = {"int8": "; INT8 runs in onnxruntime or openvino (CPU) and tensorrt (CUDA)",
                "bf16": "; bf16 runs in torch"}.get(precision, "")
        raise ValueError(f"backend {backend} runs {', '.join(runs)} on {device.type}, not {precision}{hint}")


@dataclass
class EngineRequest:
    """What the Segmenter wants run: a model (or an ONNX file) on a device at a precision and size."""

    model: nn.Module | None
    meta: CheckpointMeta
    device: torch.device
    precision: str
    input_size: tuple[int, int]
    threads: int
    torch_options: dict
    cache_dir: Path
    onnx_path: Path | None = None  # a given ONNX file (bare export or INT8 QDQ) instead of exporting one
    openvino_device: str = "CPU"
    probe: Callable[[], torch.Tensor] | None = None  # a realistic normalised input for the checks
    digest: str | None = None  # the checkpoint's content hash (cache keys)
    streams: int = 1  # frames in flight at once (Segmenter.replica); OpenVINO compiles that many streams


class EngineFactory:
    """Builds the engine a Segmenter asked for; for 'auto', races the candidates (see module docstring)."""

    def __init__(self, request: EngineRequest):
        self.req = request
        self.onnx_path: Path | None = Path(request.onnx_path) if request.onnx_path else None
        self.report: dict = {}  # the auto decision: choice, timings, checks, skipped engines

    @property
    def timings(self) -> dict[str, float]:
        return dict(self.report.get("timings_ms", {}))

    # -- building one engine ---------------------------------------------------------------------
    def create(self, backend: str):
        check_supported(backend, self.req.device, self.req.precision)
        if backend == "auto":
            return self._auto()
        return self.build(backend)

    def build(self, engine: str, channels_last: bool | None = None):
        """One engine, built now (no timing, no fallback): errors say why it cannot run here."""
        req = self.req
        check_supported(engine, req.device, req.precision)
        if engine == "torch":
            if req.model is None:
                raise ValueError("backend 'torch' needs a PyTorch model (a checkpoint, not a bare .onnx)")
            options = dict(req.torch_options)
            if channels_last is not None:
                options["channels_last"] = channels_last
            return TorchEngine(req.model, req.device, req.precision, req.input_size, **options)
        path = self.onnx_file()
        if engine == "onnxruntime":
            net = OrtEngine(path, req.device, threads=req.threads, precision=req.precision,
                             cache_dir=req.cache_dir / "trt")
        elif engine == "openvino":
            from msseg_core.runtime.engines.openvino_engine import OpenVinoEngine

            net = OpenVinoEngine(path, threads=req.threads, precision=req.precision, cache_dir=req.cache_dir,
                                  device_name=req.openvino_device, source_digest=self._digest(),
                                  streams=req.streams)
        else:
            from msseg_core.runtime.engines.tensorrt_engine import TensorRTEngine

            net = TensorRTEngine(path, req.device, precision=req.precision, cache_dir=req.cache_dir,
                                  source_digest=self._digest())
        if net.input_size is not None and tuple(net.input_size) != tuple(req.input_size):
            raise ValueError(f"{path} takes {tuple(net.input_size)} inputs, not {tuple(req.input_size)}")
        return net

    def _digest(self) -> str | None:
        if self.req.digest is None and self.req.model is not None:
            from msseg_core.runtime.artifacts import model_digest

            self.req.digest = model_digest(self.req.model, self.req.meta)
        return self.req.digest

    def onnx_file(self) -> Path:
        """The ONNX file the non-PyTorch engines run: given, or exported once and cached."""
        if self.onnx_path is None:
            req = self.req
            if req.precision == "int8":
                raise ValueError("precision int8 needs the calibrated INT8 model (msseg-quantize): "
                                 "Segmenter.from_checkpoint finds it beside the checkpoint, or pass onnx_path")
            if req.model is None:
                raise ValueError("no ONNX file and no model to export one from")
            from msseg_core.runtime.artifacts import cached_onnx

            self.onnx_path = cached_onnx(req.model, req.meta, req.input_size, req.cache_dir,
                                         digest=self._digest(), fp16=req.precision == "fp16")
        return self.onnx_path

    # -- auto --------------------------------------------------------------------------------------
    def candidates(self) -> list[str]:
        """Engines 'auto' considers here: installed, able to run the device and precision, applicable."""
        req = self.req
        versions = engine_versions()
        out = []
        for engine in ENGINES:
            if req.precision not in SUPPORT.get((engine, req.device.type), ()) or not versions[engine]:
                continue
            if engine == "torch" and req.model is None:
                continue
            if engine != "torch" and req.model is not None and req.torch_options.get("compile"):
                continue  # torch.compile was asked for: the user wants PyTorch
            if engine == "onnxruntime" and req.device.type == "cuda":
                continue  # on CUDA the contest is PyTorch against TensorRT (ORT's GPU build is rarely there)
            out.append(engine)
        return out

    def _auto(self):
        names = self.candidates()
        if not names:
            raise EngineUnavailable(f"backend auto: no installed engine runs {self.req.precision} on "
                                    f"{self.req.device.type}")
        if len(names) == 1:
            self.report = {"choice": names[0], "candidates": names, "reason": "only candidate"}
            return self.build(names[0])
        key = self._choice_key(names)
        cached = self._cached_choice(key)
        if cached is not None:
            try:
                net = self._build_variant(cached["choice"])
            except Exception as exc:  # noqa: BLE001 - the cached engine no longer builds here: measure again
                log.warning("backend auto: the cached choice %s does not build any more (%s); measuring again",
                            cached["choice"], " ".join(str(exc).split())[:200])
            else:
                self.report = {**cached, "cached": True}
                log.info("backend auto: %s (cached measurement, ms %s)", cached["choice"], cached.get("timings_ms"))
                return net
        nets, skipped = {}, {}
        for name in names:
            variants = [name]
            if name == "torch" and self.req.torch_options.get("channels_last") is None:
                variants.append("torch_nchw")  # which layout oneDNN runs faster depends on the model
            for variant in variants:
                try:
                    nets[variant] = self._build_variant(variant)
                except Exception as exc:  # noqa: BLE001 - an engine that cannot run here is skipped, said why
                    skipped[variant] = " ".join(str(exc).split())[:200]
                    log.warning("backend auto: %s skipped (%s)", variant, skipped[variant])
        if not nets:
            raise EngineUnavailable(f"backend auto: no engine could be built ({skipped})")
        x = torch.randn(1, 3, *self.req.input_size, generator=torch.Generator().manual_seed(0))
        times = _race(nets, x.to(self.req.device), AUTO_BUDGET_S)
        agreement = self._agreement(nets)
        winner = choose(times, agreement, self.req.precision)
        self.report = {"choice": winner, "candidates": names,
                       "timings_ms": {k: round(v * 1e3, 3) for k, v in times.items()},
                       "agreement": {k: round(v, 5) for k, v in agreement.items()},
                       "min_agreement": MIN_AGREEMENT[self.req.precision], "skipped": skipped, "cached": False}
        log.info("backend auto: %s (median forward ms %s, label agreement with PyTorch fp32 %s)", winner,
                 self.report["timings_ms"], self.report["agreement"])
        with contextlib.suppress(OSError):
            write_json_atomic(self._choice_file(key), {"key": key, **{k: v for k, v in self.report.items()
                                                                      if k != "cached"}})
        return nets[winner]

    def _build_variant(self, variant: str):
        return self.build("torch", channels_last=False) if variant == "torch_nchw" else self.build(variant)

    def _agreement(self, nets: dict) -> dict[str, float]:
        """Label agreement of each engine with PyTorch fp32 (else ONNX Runtime) on the probe frame
        (INT8: on the pixels the reference is sure of, see MIN_AGREEMENT)."""
        req = self.req
        x = (req.probe() if req.probe else torch.randn(1, 3, *req.input_size)).to(req.device)
        with torch.inference_mode():
            if req.model is not None:
                ref_model = copy.deepcopy(req.model).float().eval().to("cpu")
                ref = ref_model(x.float().cpu())
            elif "onnxruntime" in nets:
                ref = nets["onnxruntime"](x).float().cpu().clone()
            else:
                return {k: float("nan") for k in nets}
            where = torch.ones_like(ref[:, 0], dtype=torch.bool)
            if req.precision == "int8":
                sure = torch.softmax(ref, 1).amax(1) >= CONFIDENT
                where = sure if sure.any() else where
            out = {}
            for k, net in nets.items():
                labels = net(x).float().cpu().argmax(1)
                out[k] = float((labels == ref.argmax(1))[where].float().mean())
        return out

    def _choice_key(self, names: list[str]) -> dict:
        req = self.req
        source = _file_id(self.onnx_file()) if (req.precision == "int8" or req.model is None) else self._digest()
        return {"rule": AUTO_RULE, "cpu": cpu_name(), "cpu_flags": cpu_flags(), "threads": req.threads,
                "device": str(req.device),
                "precision": req.precision, "input_size": list(req.input_size), "source": source,
                "versions": engine_versions(), "options": repr(sorted(req.torch_options.items())),
                "openvino_device": req.openvino_device, "candidates": names}

    def _choice_file(self, key: dict) -> Path:
        given = self.req.onnx_path
        stem = f"{self.req.meta.model}-{self._digest()}" if self.req.model is not None else Path(given).stem
        return self.req.cache_dir / f"{stem}.{key_digest(key)}.choice.json"

    def _cached_choice(self, key: dict) -> dict | None:
        try:
            record = json.loads(self._choice_file(key).read_text())
        except (OSError, ValueError):
            return None
        if record.get("key") != key or record.get("choice") not in (*ENGINES, "torch_nchw"):
            return None
        return {k: v for k, v in record.items() if k != "key"}


def choose(times: dict[str, float], agreement: dict[str, float], precision: str) -> str:
    """The fastest engine that agrees numerically; a non-PyTorch one must beat the baseline by AUTO_MARGIN.

    The baseline is the fastest agreeing PyTorch variant, else ONNX Runtime, else the fastest.
    An engine whose agreement is NaN (no reference to check against) counts as agreeing.
    """
    need = MIN_AGREEMENT[precision]
    ok = [k for k in times if not agreement.get(k, 1.0) < need]
    if not ok:
        raise RuntimeError(f"backend auto: no engine agrees with the reference on >= {100 * need:.0f}% of "
                           f"pixels ({', '.join(f'{k} {100 * v:.1f}%' for k, v in agreement.items())})")
    torch_ok = [k for k in ok if k.startswith("torch")]
    if torch_ok:
        baseline = min(torch_ok, key=times.__getitem__)
    elif "onnxruntime" in ok:
        baseline = "onnxruntime"
    else:
        return min(ok, key=times.__getitem__)
    challengers = [k for k in ok if not k.startswith("torch") and k != baseline
                   and times[k] < AUTO_MARGIN * times[baseline]]
    return min(challengers, key=times.__getitem__) if challengers else baseline


def _race(nets: dict, x: torch.Tensor, budget_s: float) -> dict[str, float]:
    """Median forward time (s) of each engine: one warm-up call each, then interleaved rounds (so a
    burst of load on a shared machine hits every engine alike) until the budget is spent."""
    samples: dict[str, list[float]] = {k: [] for k in nets}
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for net in nets.values():
            net(x)
        start = time.perf_counter()
        for rounds in range(1, 8):
            for k, net in nets.items():
                t0 = time.perf_counter()
                net(x)
                sync()
                samples[k].append(time.perf_counter() - t0)
            if rounds >= 3 and time.perf_counter() - start > budget_s:
                break
    return {k: float(np.median(v)) for k, v in samples.items()}


def _file_id(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
