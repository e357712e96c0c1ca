"""`msseg-bench model`: forward latency and throughput of every registered network per size, precision and mode."""

from __future__ import annotations

import argparse
import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from msseg_core.bench.options import parse_ints, parse_sizes, split_list
from msseg_core.bench.timing import device_sync, environment, time_calls
from msseg_core.checkpoint import CheckpointMeta
from msseg_core.runtime.engines.torch_ort import OrtEngine, TorchEngine, default_threads
from msseg_core.runtime.segmenter import resolve_device

log = logging.getLogger(__name__)

MODEL_MODES = ("naive", "eager", "compiled", "cuda_graphs", "onnxruntime", "openvino", "tensorrt")

ONNX_MODES = ("onnxruntime", "openvino", "tensorrt")

GFLOPS_SIZE = (360, 480)


def _model_stats(model: nn.Module) -> tuple[int, float | None]:
    from msseg_core.models.stats import count_parameters, gflops

    params = count_parameters(model)
    try:  # on the meta device: shapes only, no arithmetic, instant even for VGG-sized nets
        flops = gflops(copy.deepcopy(model).to("meta"), *GFLOPS_SIZE)
    except Exception:  # noqa: BLE001 - fall back to a real forward pass
        try:
            flops = gflops(model, *GFLOPS_SIZE)
        except Exception as exc:  # noqa: BLE001
            log.warning("GFLOPs failed: %s", exc)
            flops = None
    return params, (round(flops, 3) if flops is not None else None)


def _make_runner(model: nn.Module, meta: CheckpointMeta, mode: str, precision: str, device: torch.device,
                 size: tuple[int, int], threads: int, cache: Path | None):
    """A callable running the network one way (see MODEL_MODES), or a reason string when not applicable."""
    if precision == "fp16" and device.type != "cuda":
        return "fp16 needs CUDA"
    if mode == "cuda_graphs" and device.type != "cuda":
        return "CUDA graphs need CUDA"
    if precision == "int8" and mode not in ONNX_MODES:
        return "int8 runs in onnxruntime, openvino, tensorrt"
    if mode in ONNX_MODES:
        if precision == "bf16":
            return f"{mode} runs fp32/fp16/int8, not bf16"
        if mode == "openvino" and device.type != "cpu":
            return "openvino runs on the CPU here"
        from msseg_core.deploy.int8 import speed_only_int8
        from msseg_core.runtime.artifacts import cache_dir, cached_onnx

        cache = cache or cache_dir()
        if precision == "int8":
            path = speed_only_int8(model, meta, size, cache, target="tensorrt" if mode == "tensorrt" else "cpu")
        else:
            path = cached_onnx(model, meta, size, cache, fp16=precision == "fp16")
        if mode == "onnxruntime":
            return OrtEngine(path, device, threads=threads, precision=precision)
        if mode == "openvino":
            from msseg_core.runtime.engines.openvino_engine import OpenVinoEngine

            return OpenVinoEngine(path, threads=threads, precision=precision, cache_dir=cache)
        from msseg_core.runtime.engines.tensorrt_engine import TensorRTEngine

        return TensorRTEngine(path, device, precision=precision, cache_dir=cache)
    if mode == "naive":
        if precision != "fp32":
            return "naive is fp32 by definition"
        m = copy.deepcopy(model).to(device).eval()
        return lambda x: m(x)
    return TorchEngine(copy.deepcopy(model), device, precision, size, channels_last=True, fuse=True,
                        compile=mode == "compiled", cuda_graphs=mode == "cuda_graphs")


def bench_models(args: argparse.Namespace) -> dict:
    from msseg_core.classes import CAMVID
    from msseg_core.models import build_model, list_models

    device = resolve_device(args.device)
    threads = args.threads or default_threads()  # PyTorch's pool: set by the program (msseg-bench)
    names = split_list(args.models) or list_models()
    unknown = sorted(set(names) - set(list_models()))
    if unknown:
        raise SystemExit(f"msseg-bench: unknown models {unknown}; registered: {', '.join(list_models())}")
    model_args = json.loads(args.model_args) if args.model_args else {}
    cache = Path(args.cache_dir) if args.cache_dir else None
    results = []
    for name in names:
        torch.manual_seed(0)
        kwargs = model_args.get(name, model_args if not any(k in list_models() for k in model_args) else {})
        model = build_model(name, CAMVID.num_classes, **kwargs).eval()
        params, flops = _model_stats(model)
        log.info("%s: %.2f M parameters, %s GFLOPs at %dx%d", name, params / 1e6, flops, *GFLOPS_SIZE)
        for size in parse_sizes(args.sizes):
            meta = random_model_meta(name, kwargs, size)
            for precision in split_list(args.precision):
                for mode in split_list(args.modes):
                    runner = None
                    for batch in parse_ints(args.batch):
                        row = {"model": name, "model_args": kwargs, "params": params, "gflops_360x480": flops,
                               "size": list(size), "precision": precision, "mode": mode, "batch": batch,
                               "threads": threads}
                        try:
                            if runner is None:
                                runner = _make_runner(model, meta, mode, precision, device, size, threads, cache)
                            if isinstance(runner, str):
                                row["error"] = f"skipped: {runner}"
                            else:
                                x = torch.randn(batch, 3, *size, device=device)
                                fn = _no_grad(runner, x)
                                row.update(time_calls(fn, args.warmup, args.iters, args.max_seconds,
                                                       device_sync(device)))
                                mean_s = row["latency_ms"]["mean"] / 1e3
                                if batch == 1:
                                    row["fps"] = round(1.0 / mean_s, 3)
                                else:
                                    row["throughput_ips"] = round(batch / mean_s, 3)
                        except Exception as exc:  # noqa: BLE001 - one failing config must not lose the rest
                            row["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                        _log_row(row)
                        results.append(row)
                    del runner
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
    return {"kind": "model", "env": environment(device, threads), "args": vars(args), "results": results}


def _no_grad(runner, x: torch.Tensor) -> Callable[[], object]:
    def fn():
        with torch.inference_mode():
            return runner(x)

    return fn


def random_model_meta(name: str, kwargs: dict, size: tuple[int, int]) -> CheckpointMeta:
    from msseg_core.classes import CAMVID

    return CheckpointMeta(model=name, model_args=dict(kwargs), class_names=list(CAMVID.names),
                          palette=[list(c) for c in CAMVID.palette], road_classes=list(CAMVID.road),
                          input_size=list(size), dataset="camvid")


def _log_row(row: dict) -> None:
    if "error" in row:
        log.info("%s %s %s %s b%d: %s", row.get("model", row.get("backend")), row.get("size"), row.get("precision"),
                 row.get("mode"), row.get("batch", 1), row["error"])
    else:
        lat = row["latency_ms"]
        log.info("%s %s %s %s b%d: p50 %.2f ms p99 %.2f ms (%d calls)", row.get("model"), row.get("size"),
                 row.get("precision"), row.get("mode"), row.get("batch", 1), lat["p50"], lat["p99"], row["iters"])
