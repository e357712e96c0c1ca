"""`msseg-bench segmenter`: the Segmenter end to end (uint8 frame in, uint8 outputs out) per backend,
precision, upsampling and test-time augmentation, against the naive reference path (an fp32 eager model,
float resize, argmax, softmax); each Segmenter row also times its two stages on their own (`run_network`,
then `postprocess` of a held result), so the network's share and the frame-size work are seen apart."""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from msseg_core.bench.models import random_model_meta
from msseg_core.bench.options import parse_sizes, split_list
from msseg_core.bench.timing import device_sync, environment, time_calls
from msseg_core.checkpoint import CheckpointMeta
from msseg_core.runtime.engines.torch_ort import default_threads
from msseg_core.runtime.segmenter import OUTPUTS, Segmenter, check_image, resolve_device

log = logging.getLogger(__name__)

SEGMENTER_BACKENDS = ("naive", "torch", "onnxruntime", "openvino", "tensorrt", "auto")


# ------------------------------------------------------------------------------------ timing


# ------------------------------------------------------------------------------ model bench


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
    from msseg_core.checkpoint import CheckpointError, load_checkpoint
    from msseg_core.classes import CAMVID
    from msseg_core.models import build_model
    from msseg_core.zoo import resolve_checkpoint

    if args.checkpoint:
        path = resolve_checkpoint(args.checkpoint)
        model, meta = load_checkpoint(path)
        return model, meta, str(path)
    if not args.model:
        try:
            path = resolve_checkpoint("")
            model, meta = load_checkpoint(path)
            return model, meta, str(path)
        except (CheckpointError, FileNotFoundError):
            args.model = "mssanet"
    kwargs = json.loads(args.model_args) if args.model_args else {}
    torch.manual_seed(0)
    model = build_model(args.model, CAMVID.num_classes, **kwargs).eval()
    size = parse_sizes(args.input_size)[0] if args.input_size else (360, 480)
    return model, random_model_meta(args.model, kwargs, size), f"{args.model} (random weights)"


def bench_segmenter(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    threads = args.threads or default_threads()  # PyTorch's pool: set by the program (msseg-bench)
    model, meta, source = load_model_and_meta(args)
    input_size = parse_sizes(args.input_size)[0] if args.input_size else tuple(meta.input_size)
    outputs = split_list(args.outputs) or list(OUTPUTS)
    results = []
    for frame_size in parse_sizes(args.sizes):
        frames = synthetic_frames(args.frames, *frame_size)
        reference: list[np.ndarray] | None = None
        naive_p50 = None
        upsample_modes = split_list(getattr(args, "upsample", "")) or ["boundary"]
        tta_modes = split_list(getattr(args, "tta", "")) or ["none"]
        configs = [(b, p, u, t) for b in split_list(args.backends) for p in split_list(args.precision)
                   for u in upsample_modes for t in tta_modes
                   if b != "naive" or (p, u, t) == ("fp32", upsample_modes[0], tta_modes[0])]  # naive: one row
        for backend, precision, upsample, tta in configs:
            naive = backend == "naive"
            row = {"backend": backend, "precision": precision, "threads": threads, "frame_size": list(frame_size),
                   "input_size": list(input_size), "outputs": outputs, "source": source,
                   "upsample": "exact" if naive else upsample, "tta": "none" if naive else tta}
            try:
                if backend == "naive":
                    seg = NaiveSegmenter(model, meta, device=str(device), input_size=input_size)
                else:
                    t0 = time.perf_counter()
                    onnx_path = _int8_file(model, meta, source, input_size, device, backend, args) \
                        if precision == "int8" else None
                    seg = Segmenter(copy.deepcopy(model), meta, device=str(device), input_size=input_size,
                                    precision=precision, backend=backend, threads=threads, onnx_path=onnx_path,
                                    cache_dir=args.cache_dir, compile=args.compile, cuda_graphs=args.cuda_graphs,
                                    upsample=upsample, tta=tta)
                    row["init_s"] = round(time.perf_counter() - t0, 3)
                row["describe"] = seg.describe()
                state = {"i": 0}

                def call(seg=seg, state=state, frames=frames):
                    out = seg.segment(frames[state["i"] % len(frames)], outputs)
                    state["i"] += 1
                    return out

                row.update(time_calls(call, args.warmup, args.iters, args.max_seconds, device_sync(device)))
                row["fps"] = round(1e3 / row["latency_ms"]["mean"], 3)
                if backend != "naive":
                    row.update(time_stages(seg, frames, outputs, args, device))
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


def time_stages(seg: Segmenter, frames: list[np.ndarray], outputs: list[str], args: argparse.Namespace,
                device: torch.device) -> dict:
    """The two stages of `segment` timed on their own: network_ms (`run_network`: upload, preprocess,
    network) and postprocess_ms (`postprocess` of results held from it: upsampling, outputs, download)."""
    sync = device_sync(device)
    state = {"i": 0}

    def network():
        seg.run_network(frames[state["i"] % len(frames)])
        state["i"] += 1

    held = [seg.run_network(f) for f in frames]

    def post():
        seg.postprocess(held[state["i"] % len(held)], outputs)
        state["i"] += 1

    net = time_calls(network, args.warmup, args.iters, args.max_seconds, sync)
    state["i"] = 0
    done = time_calls(post, args.warmup, args.iters, args.max_seconds, sync)
    return {"network_ms": net["latency_ms"], "postprocess_ms": done["latency_ms"]}


def _int8_file(model: nn.Module, meta: CheckpointMeta, source: str, input_size, device: torch.device, backend: str,
               args: argparse.Namespace) -> Path:
    """The checkpoint's INT8 file (msseg-quantize), or a speed-only one for random weights."""
    from msseg_core.deploy.int8 import speed_only_int8
    from msseg_core.runtime.artifacts import cache_dir, find_int8_model

    target = "tensorrt" if device.type == "cuda" else "cpu"
    if Path(source).is_file():
        return find_int8_model(source, model, meta, input_size, target)
    return speed_only_int8(model, meta, input_size, args.cache_dir or cache_dir(), target)


# ---------------------------------------------------------------------------------- Markdown


# --------------------------------------------------------------------------------------- CLI
