"""msseg-bench: honest speed figures for the networks, the Segmenter and the ROS node.

    msseg-bench model      [--models a,b] [--sizes 360x480,512x768,720x960] [--precision fp32,fp16]
                           [--modes eager,compiled] [--batch 1,8] [--device auto] [--iters N] [--warmup N]
                           [--max-seconds S] [--json OUT] [--md OUT]
    msseg-bench segmenter  [--checkpoint C | --model NAME] [--sizes 360x480,720x960]
                           [--backends naive,torch,onnxruntime,openvino] [--precision fp32,int8]
                           [--outputs ...] [--json OUT] [--md OUT]
    msseg-bench pareto     --data-root D [--checkpoints camvid,camvid_fast] [--chart PNG]
                           (mIoU against frames/s per model x engine x precision: msseg_core.pareto)
    msseg-bench node       [--checkpoint C] [--sizes 360x480,720x960] [--frames N]
                           (msseg_ros.bench_node: the console script hands `node` there; needs rclpy)

How the figures are taken: every configuration gets `--warmup` untimed calls (cuDNN autotuning,
lazy initialisation, compilation), then up to `--iters` timed calls, each ending with a CUDA
synchronisation so a latency is the real wall time of one call; a configuration stops early after
`--max-seconds` (at least 3 timed calls), and the JSON says how many calls were timed. Latency
percentiles are over single calls; FPS = 1 / mean latency at batch 1; throughput = batch / mean
latency (images/s) at batch > 1. Random weights at each model's default configuration: speed does
not depend on the values. GFLOPs are forward FLOPs (2 per multiply-add, `models.stats.gflops`) at
360x480, batch 1.

Modes (`model`): naive (fp32 NCHW eager, nothing else: the baseline), eager (BatchNorm folded,
channels_last, autocast: Segmenter's PyTorch backend), compiled (eager + torch.compile),
cuda_graphs (eager + CUDA graph replay; CUDA only), onnxruntime, openvino, tensorrt (the ONNX
export in that engine; precision int8 runs a QDQ file calibrated on synthetic frames: its speed is
real, its accuracy meaningless). Backends (`segmenter`): naive (the original Segmenter: fp32 eager
model, float resize, argmax, softmax; the reference the issue's speed-up target is measured
against), torch, onnxruntime, openvino, tensorrt, auto (what `Segmenter` picks by default); each
with every `--precision` it runs (int8: the checkpoint's INT8 file from msseg-quantize, or for
random weights a speed-only one). Every row states the threads its engine ran with (`--threads`,
the same for PyTorch and the engines).

JSON: {"kind", "env": {torch, onnxruntime, device, device_name, cpu, threads, ...}, "args",
"results": [...]}; `model` rows: model, params, gflops_360x480, size [h, w], precision, mode, batch,
iters, first_call_ms, latency_ms {p50, p99, mean, min}, fps (batch 1) or throughput_ips (batch > 1),
error (only when the configuration failed or was skipped). `segmenter` rows: backend, frame_size,
input_size, outputs, iters, first_call_ms, latency_ms, fps, speedup_vs_naive (ratio of p50s),
labels_agreement_vs_first (fraction of pixels equal to the first backend's, naive by default), describe.
`node` rows: frame_size, frames, node_latency_ms, bare_latency_ms, overhead_ms, overhead_ratio.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from msseg_core.backends import OrtBackend, TorchBackend, cpu_name, default_threads
from msseg_core.checkpoint import CheckpointMeta
from msseg_core.inference import OUTPUTS, Segmenter, check_image, resolve_device

log = logging.getLogger(__name__)

MODEL_MODES = ("naive", "eager", "compiled", "cuda_graphs", "onnxruntime", "openvino", "tensorrt")
ONNX_MODES = ("onnxruntime", "openvino", "tensorrt")
SEGMENTER_BACKENDS = ("naive", "torch", "onnxruntime", "openvino", "tensorrt", "auto")
GFLOPS_SIZE = (360, 480)


# ------------------------------------------------------------------------------------ timing


def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_calls(fn: Callable[[], object], warmup: int, iters: int, max_seconds: float,
               sync: Callable[[], None] = lambda: None, min_iters: int = 3) -> dict:
    """Warm up, then time single calls (synchronised) until `iters` or the time budget is reached."""
    t0 = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        fn()
        sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max(1, iters):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
        if len(times) >= min_iters and time.perf_counter() - start > max_seconds:
            break
    return {"iters": len(times), "first_call_ms": round(first * 1e3, 3), **latency_stats(times)}


def latency_stats(times_s: Sequence[float]) -> dict:
    """p50 / p99 / mean / min of call durations, in milliseconds."""
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    return {"latency_ms": {"p50": round(float(np.percentile(ms, 50)), 3),
                           "p99": round(float(np.percentile(ms, 99)), 3),
                           "mean": round(float(ms.mean()), 3), "min": round(float(ms.min()), 3)}}


def environment(device: torch.device, threads: int) -> dict:
    """What the figures were taken on: versions, device, CPU, threads, load (noisy machines show)."""
    env = {"time": datetime.now(UTC).isoformat(timespec="seconds"), "torch": torch.__version__,
           "python": platform.python_version(), "device": str(device), "threads": threads,
           "cpu": cpu_name(), "cpu_count": os.cpu_count()}
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
        env["ort_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        env["onnxruntime"] = None
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    if hasattr(os, "getloadavg"):
        env["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    return env


# ------------------------------------------------------------------------------ model bench


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
        from msseg_core.export import cache_dir, cached_onnx
        from msseg_core.quantize import speed_only_int8

        cache = cache or cache_dir()
        if precision == "int8":
            path = speed_only_int8(model, meta, size, cache, target="tensorrt" if mode == "tensorrt" else "cpu")
        else:
            path = cached_onnx(model, meta, size, cache, fp16=precision == "fp16")
        if mode == "onnxruntime":
            return OrtBackend(path, device, threads=threads, precision=precision)
        if mode == "openvino":
            from msseg_core.openvino_backend import OpenVinoBackend

            return OpenVinoBackend(path, threads=threads, precision=precision, cache_dir=cache)
        from msseg_core.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(path, device, precision=precision, cache_dir=cache)
    if mode == "naive":
        if precision != "fp32":
            return "naive is fp32 by definition"
        m = copy.deepcopy(model).to(device).eval()
        return lambda x: m(x)
    return TorchBackend(copy.deepcopy(model), device, precision, size, channels_last=True, fuse=True,
                        compile=mode == "compiled", cuda_graphs=mode == "cuda_graphs")


def bench_models(args: argparse.Namespace) -> dict:
    from msseg_core.classes import CAMVID
    from msseg_core.models import build_model, list_models

    device = resolve_device(args.device)
    threads = args.threads or default_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads)
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
            meta = _meta_for(name, kwargs, size)
            for precision in split_list(args.precision):
                for mode in split_list(args.modes):
                    runner = None
                    for batch in _ints(args.batch):
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
                                row.update(time_calls(fn, args.warmup, args.iters, args.max_seconds, _sync(device)))
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


def _meta_for(name: str, kwargs: dict, size: tuple[int, int]) -> CheckpointMeta:
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


# ---------------------------------------------------------------------------- naive reference


class NaiveSegmenter:
    """The original Segmenter, kept verbatim as the baseline: fp32 eager model in NCHW, float resize
    on the device, `argmax`, a full softmax for confidence, float blend, `isin` road mask."""

    name = "naive"

    def __init__(self, model: nn.Module, meta: CheckpointMeta, device: str = "cpu",
                 input_size: Sequence[int] | None = None):
        self.device = resolve_device(device)
        self.meta = meta
        self.input_size = tuple(int(v) for v in (input_size or meta.input_size))
        self.model = copy.deepcopy(model).to(self.device).eval()
        std = torch.tensor(meta.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        mean = torch.tensor(meta.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * std)
        self._shift = -mean / std
        self._palette = torch.tensor(meta.palette, dtype=torch.uint8, device=self.device)
        self._road_ids = torch.tensor([meta.class_names.index(n) for n in meta.road_classes], dtype=torch.long,
                                      device=self.device)

    def describe(self) -> dict:
        return {"backend": "naive", "device": str(self.device), "precision": "fp32",
                "input_size": list(self.input_size)}

    @torch.inference_mode()
    def segment(self, rgb: np.ndarray, outputs=OUTPUTS, overlay_alpha: float = 0.5) -> dict[str, np.ndarray]:
        check_image(rgb)
        wanted = set(outputs)
        t = torch.from_numpy(np.ascontiguousarray(rgb[None]))
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        _, h, w, _ = t.shape
        x = t.permute(0, 3, 1, 2).float()
        if (h, w) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False,
                              antialias=h > self.input_size[0] or w > self.input_size[1])
        x = x * self._scale + self._shift
        logits = self.model(x).float()
        if logits.shape[-2:] != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        logits = logits[0]
        result: dict[str, torch.Tensor] = {}
        if "confidence" in wanted:
            max_prob, labels = torch.softmax(logits, dim=0).max(0)
            result["confidence"] = (max_prob * 255.0).round_().clamp_(0, 255).to(torch.uint8)
        else:
            labels = logits.argmax(0)
        labels = labels.to(torch.uint8)
        if "labels" in wanted:
            result["labels"] = labels
        if wanted & {"color_mask", "overlay"}:
            color = self._palette[labels.long()]
            if "color_mask" in wanted:
                result["color_mask"] = color
            if "overlay" in wanted:
                blended = torch.lerp(t[0].float(), color.float(), float(overlay_alpha))
                result["overlay"] = blended.round_().clamp_(0, 255).to(torch.uint8)
        if "road_mask" in wanted:
            result["road_mask"] = torch.isin(labels, self._road_ids.to(torch.uint8)).to(torch.uint8) * 255
        return {k: v.cpu().numpy() for k, v in result.items()}


# -------------------------------------------------------------------------- segmenter bench


def synthetic_frames(n: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """Driving-scene-like frames (sky, road, blobs, noise): smooth like camera images, cheap to make."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for _ in range(n):
        horizon = height * rng.uniform(0.35, 0.55)
        img = np.empty((height, width, 3), np.float32)
        sky = yy < horizon
        img[sky] = rng.uniform(120, 230, 3)
        img[~sky] = rng.uniform(40, 120, 3)
        for _ in range(6):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            r = rng.uniform(0.05, 0.2) * min(height, width)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 8, img.shape).astype(np.float32)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


def load_model_and_meta(args: argparse.Namespace) -> tuple[nn.Module, CheckpointMeta, str]:
    """--checkpoint, else --model (random weights), else the packaged default, else mssanet random."""
    from msseg_core.checkpoint import CheckpointError, default_checkpoint, load_checkpoint
    from msseg_core.classes import CAMVID
    from msseg_core.models import build_model

    if args.checkpoint:
        from msseg_core.zoo import resolve_checkpoint

        path = resolve_checkpoint(args.checkpoint)
        model, meta = load_checkpoint(path)
        return model, meta, str(path)
    if not args.model:
        try:
            path = default_checkpoint()
            model, meta = load_checkpoint(path)
            return model, meta, str(path)
        except CheckpointError:
            args.model = "mssanet"
    kwargs = json.loads(args.model_args) if args.model_args else {}
    torch.manual_seed(0)
    model = build_model(args.model, CAMVID.num_classes, **kwargs).eval()
    size = parse_sizes(args.input_size)[0] if args.input_size else (360, 480)
    return model, _meta_for(args.model, kwargs, size), f"{args.model} (random weights)"


def bench_segmenter(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    threads = args.threads or default_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads)  # the naive baseline runs with the same threads as the rest
    model, meta, source = load_model_and_meta(args)
    input_size = parse_sizes(args.input_size)[0] if args.input_size else tuple(meta.input_size)
    outputs = split_list(args.outputs) or list(OUTPUTS)
    results = []
    for frame_size in parse_sizes(args.sizes):
        frames = synthetic_frames(args.frames, *frame_size)
        reference: list[np.ndarray] | None = None
        naive_p50 = None
        configs = [(b, p) for b in split_list(args.backends) for p in split_list(args.precision)
                   if b != "naive" or p == "fp32"]  # naive is fp32 by definition
        for backend, precision in configs:
            row = {"backend": backend, "precision": precision, "threads": threads, "frame_size": list(frame_size),
                   "input_size": list(input_size), "outputs": outputs, "source": source}
            try:
                if backend == "naive":
                    seg = NaiveSegmenter(model, meta, device=str(device), input_size=input_size)
                else:
                    t0 = time.perf_counter()
                    onnx_path = _int8_file(model, meta, source, input_size, device, backend, args) \
                        if precision == "int8" else None
                    seg = Segmenter(copy.deepcopy(model), meta, device=str(device), input_size=input_size,
                                    precision=precision, backend=backend, threads=threads, onnx_path=onnx_path,
                                    cache_dir=args.cache_dir, compile=args.compile, cuda_graphs=args.cuda_graphs)
                    row["init_s"] = round(time.perf_counter() - t0, 3)
                row["describe"] = seg.describe()
                state = {"i": 0}

                def call(seg=seg, state=state, frames=frames):
                    out = seg.segment(frames[state["i"] % len(frames)], outputs)
                    state["i"] += 1
                    return out

                row.update(time_calls(call, args.warmup, args.iters, args.max_seconds, _sync(device)))
                row["fps"] = round(1e3 / row["latency_ms"]["mean"], 3)
                labels = [seg.segment(f, ["labels"])["labels"] for f in frames]
                if reference is None:
                    reference = labels
                agree = [(a == b).mean() for a, b in zip(labels, reference, strict=True)]
                row["labels_agreement_vs_first"] = round(float(np.mean(agree)), 5)
                if backend == "naive":
                    naive_p50 = row["latency_ms"]["p50"]
                if naive_p50:  # medians: robust to the odd preempted call on a shared machine
                    row["speedup_vs_naive"] = round(naive_p50 / row["latency_ms"]["p50"], 3)
                del seg
            except Exception as exc:  # noqa: BLE001
                row["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            log.info("segmenter %s %s %s: %s", backend, precision, frame_size,
                     row.get("error") or f"p50 {row['latency_ms']['p50']:.2f} ms, speed-up "
                                         f"{row.get('speedup_vs_naive', 'n/a')}")
            results.append(row)
    return {"kind": "segmenter", "env": environment(device, threads), "args": vars(args), "results": results}


def _int8_file(model: nn.Module, meta: CheckpointMeta, source: str, input_size, device: torch.device, backend: str,
               args: argparse.Namespace) -> Path:
    """The checkpoint's INT8 file (msseg-quantize), or a speed-only one for random weights."""
    from msseg_core.export import cache_dir
    from msseg_core.quantize import find_int8_model, speed_only_int8

    target = "tensorrt" if device.type == "cuda" else "cpu"
    if Path(source).is_file():
        return find_int8_model(source, model, meta, input_size, target)
    return speed_only_int8(model, meta, input_size, args.cache_dir or cache_dir(), target)


# ---------------------------------------------------------------------------------- Markdown


def to_markdown(report: dict) -> str:
    """A table of the results plus the environment, for BENCHMARKS.md."""
    env = report["env"]
    where = env.get("device_name") or env.get("cpu")
    lines = [f"<!-- msseg-bench {report['kind']} {env['time']} -->",
             f"Device: {env['device']} ({where}), threads {env['threads']}, torch {env['torch']}, "
             f"onnxruntime {env.get('onnxruntime')}, load average {env.get('loadavg')}", ""]
    rows = report["results"]
    if report["kind"] == "model":
        lines += ["| model | params (M) | GFLOPs @360x480 | size | precision | mode | threads | batch | p50 ms "
                  "| p99 ms | FPS / img/s | calls |", "|" + "---|" * 12]
        for r in rows:
            size = "x".join(map(str, r["size"]))
            head = (f"| {r['model']} | {r['params'] / 1e6:.2f} | {_fmt(r['gflops_360x480'])} | {size} "
                    f"| {r['precision']} | {r['mode']} | {r.get('threads', '')} | {r['batch']} |")
            if "error" in r:
                lines.append(f"{head} - | - | {r['error']} | 0 |")
            else:
                rate = r.get("fps", r.get("throughput_ips"))
                lines.append(f"{head} {r['latency_ms']['p50']:.2f} | {r['latency_ms']['p99']:.2f} | {rate:.1f} "
                             f"| {r['iters']} |")
    elif report["kind"] == "segmenter":
        lines += ["| backend | precision | threads | frame | network input | p50 ms | p99 ms | FPS | speed-up vs naive "
                  "| labels = first backend | runs as | calls |", "|" + "---|" * 12]
        for r in rows:
            frame = "x".join(map(str, r["frame_size"]))
            net = "x".join(map(str, r["input_size"]))
            head = f"| {r['backend']} | {r.get('precision', 'fp32')} | {r.get('threads', '')} | {frame} | {net}"
            if "error" in r:
                lines.append(f"{head} | - | - | - | - | - | {r['error']} | 0 |")
                continue
            d = r.get("describe", {})
            runs = d.get("backend", "")
            if d.get("providers"):
                runs += " (" + ", ".join(d["providers"]) + ")"
            lines.append(f"{head} | {r['latency_ms']['p50']:.2f} "
                         f"| {r['latency_ms']['p99']:.2f} | {r['fps']:.2f} | {_fmt(r.get('speedup_vs_naive'))} "
                         f"| {100 * r['labels_agreement_vs_first']:.2f}% | {runs} | {r['iters']} |")
    elif report["kind"] == "pareto":
        from msseg_core.pareto import to_markdown as pareto_markdown

        lines += pareto_markdown(report)
    elif report["kind"] == "node":
        rate_rows = [r for r in rows if r.get("mode") == "rate"]
        rows = [r for r in rows if r.get("mode") != "rate"]
        if rows:
            lines += ["| outputs | frame | frames | node p50 ms | node p99 ms | bare p50 ms | bare p99 ms "
                      "| overhead ms (p50) | overhead / bare | transport floor p50 ms | beyond the floor / bare "
                      "| backend |", "|" + "---|" * 12]
        for r in rows:
            frame = "x".join(map(str, r["frame_size"] or ["?"]))
            if "error" in r:
                lines.append(error_row([r.get("outputs", "-"), frame], r["error"], 12, error_at=8))
                continue
            n, b = r["node_latency_ms"], r["bare_latency_ms"]
            floor = r.get("transport_floor_ms")  # absent in reports from before the floor was measured
            floor_cells = (f"{floor['p50']:.2f} | {100 * r['overhead_beyond_transport_ratio']:.1f}%" if floor
                           else "- | -")
            lines.append(f"| {r.get('outputs', 'all')} ({r.get('bare_call', 'segment')}) | {frame} | {r['frames']} "
                         f"| {n['p50']:.2f} | {n['p99']:.2f} | {b['p50']:.2f} "
                         f"| {b['p99']:.2f} | {r['overhead_ms']:.2f} | {100 * r['overhead_ratio']:.1f}% "
                         f"| {floor_cells} | {r.get('backend', '')} |")
        if rate_rows:
            lines += ["", "| outputs | frame | bare call | bare rate Hz | bare pipelined Hz | node rate Hz | fed Hz "
                      "| node frames | overhead (1 - node / bare) | vs bare pipelined | node CPU ms/frame "
                      "(input / worker / publisher / other) | feeder CPU ms/frame |", "|" + "---|" * 12]
        for r in rate_rows:
            lines.append(f"| {r['outputs']} | {'x'.join(map(str, r['frame_size']))} | {r['bare_call']} "
                         f"| {r['bare_rate_hz']:.1f} | {r['bare_pipelined_rate_hz']:.1f} | {r['node_rate_hz']:.1f} "
                         f"| {r['fed_rate_hz']:.1f} | {r['node_frames']} | {100 * r['overhead_ratio']:.1f}% "
                         f"| {100 * r['overhead_vs_pipelined']:.1f}% | {_cpu_cell(r['node_cpu_ms_per_frame'])} "
                         f"| {r['feeder_cpu_ms_per_frame']:.1f} |")
    return "\n".join(lines) + "\n"


def _cpu_cell(cpu: dict[str, float]) -> str:
    if not cpu:
        return "-"
    return (f"{cpu['total']:.1f} ({cpu.get('msseg_input', 0.0):.1f} / {cpu['msseg_worker']:.1f} / "
            f"{cpu['msseg_publisher']:.1f} / {cpu['other']:.1f})")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def error_row(lead: list[str], error: str, columns: int, error_at: int = -1) -> str:
    """A Markdown table row for a measurement that failed: the leading cells, '-' in the others, and the
    error in column `error_at`, so a report shows what broke instead of losing the row."""
    cells = [*lead, *["-"] * (columns - len(lead))]
    cells[error_at] = error
    return "| " + " | ".join(cells) + " |"


# --------------------------------------------------------------------------------------- CLI


def split_list(text: str | None) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in split_list(text)]
    except ValueError:
        raise SystemExit(f"msseg-bench: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise SystemExit(f"msseg-bench: expected integers >= 1, got {text!r}")
    return values


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'360x480,720x960' -> [(360, 480), (720, 960)] (height x width)."""
    sizes = []
    for item in split_list(text):
        try:
            h, w = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"msseg-bench: sizes are HEIGHTxWIDTH, got {item!r}") from None
        if h < 1 or w < 1:
            raise SystemExit(f"msseg-bench: size must be positive, got {item!r}")
        sizes.append((h, w))
    if not sizes:
        raise SystemExit("msseg-bench: no sizes given")
    return sizes


def add_common_arguments(p: argparse.ArgumentParser, iters: int, warmup: int, max_seconds: float) -> None:
    """Options every subcommand has (also `msseg-bench node`, in msseg_ros.bench_node)."""
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = every usable core)")
    p.add_argument("--iters", type=int, default=iters, help="timed calls per configuration (at most)")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed calls first")
    p.add_argument("--max-seconds", type=float, default=max_seconds,
                   help="time budget per configuration; stops early (after >= 3 calls) when spent")
    p.add_argument("--cache-dir", default=None, help="ONNX export cache (default $MSSEG_CACHE_DIR or ~/.cache/msseg)")
    p.add_argument("--json", default=None, help="write the full report here")
    p.add_argument("--md", default=None, help="write a Markdown table here")
    p.add_argument("--out", default=None, help="folder: writes <kind>.json and <kind>.md there")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msseg-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("model", help="network forward latency / throughput per model, size, precision, mode",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m.add_argument("--models", default="", help="comma-separated registered names (default: all)")
    m.add_argument("--model-args", default="",
                   help='JSON builder kwargs, for all models ({"width": 0.25}) or per model ({"mssanet": {...}})')
    m.add_argument("--sizes", default="360x480,512x768,720x960", help="network input sizes HxW")
    m.add_argument("--precision", default="fp32,fp16", help="fp32, fp16 (CUDA only), bf16, int8")
    m.add_argument("--modes", default="eager,compiled", help=", ".join(MODEL_MODES))
    # (--precision int8: onnxruntime/openvino/tensorrt modes, a speed-only QDQ file)
    m.add_argument("--batch", default="1,8", help="batch sizes (1: latency and FPS; >1: throughput)")
    add_common_arguments(m, iters=50, warmup=10, max_seconds=30.0)

    s = sub.add_parser("segmenter", help="Segmenter end to end (uint8 frame in, uint8 outputs out) per backend",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--checkpoint", default="", help="checkpoint (default: packaged model, else --model)")
    s.add_argument("--model", default="", help="registered model with random weights instead of a checkpoint")
    s.add_argument("--model-args", default="", help="JSON builder kwargs for --model")
    s.add_argument("--input-size", default="", help="network input HxW (default: the checkpoint's)")
    s.add_argument("--sizes", default="360x480,720x960", help="frame sizes HxW")
    s.add_argument("--backends", default="naive,torch,onnxruntime", help=", ".join(SEGMENTER_BACKENDS))
    s.add_argument("--outputs", default=",".join(OUTPUTS), help="outputs requested per frame")
    s.add_argument("--frames", type=int, default=8, help="distinct synthetic frames, cycled")
    s.add_argument("--precision", default="fp32", help="Segmenter precisions, e.g. fp32,int8 (naive: fp32 only)")
    s.add_argument("--compile", action="store_true", help="Segmenter option compile (PyTorch backend)")
    s.add_argument("--cuda-graphs", action="store_true", help="Segmenter option cuda_graphs (CUDA only)")
    add_common_arguments(s, iters=30, warmup=3, max_seconds=60.0)

    from msseg_core import pareto

    c = sub.add_parser("pareto", help="mIoU against frames/s for every model x engine x precision, one chart",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    pareto.add_arguments(c)
    add_common_arguments(c, iters=30, warmup=3, max_seconds=20.0)

    return p


def write_report(report: dict, args: argparse.Namespace) -> None:
    """JSON and Markdown where asked (--json/--md, or --out DIR), and the table on stdout."""
    md = to_markdown(report)
    json_path, md_path = args.json, args.md
    if args.out:
        json_path = json_path or os.path.join(args.out, f"{report['kind']}.json")
        md_path = md_path or os.path.join(args.out, f"{report['kind']}.md")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=2, default=str) + "\n")
    if md_path:
        Path(md_path).parent.mkdir(parents=True, exist_ok=True)
        Path(md_path).write_text(md)
    print(md, end="")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.command == "pareto":
        from msseg_core.pareto import run as bench_pareto

        report = bench_pareto(args)
    else:
        report = bench_models(args) if args.command == "model" else bench_segmenter(args)
    write_report(report, args)
    failed = [r for r in report["results"] if "error" in r and not str(r["error"]).startswith("skipped")]
    return 1 if failed and len(failed) == len(report["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
