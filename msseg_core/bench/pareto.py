"""msseg-bench pareto: CamVid val mIoU against frames/s for every model x engine x precision, one chart.

    msseg-bench pareto --checkpoints camvid,camvid_fast --data-root ../shared/datasets/camvid --split val \\
        --threads 1 --out out/bench --chart docs/engines_pareto.png

For each checkpoint and each engine x precision this machine can run, one `Segmenter` (as the node
would build it) is scored on the split with msseg-eval's code (every image, full resolution) and timed
on `predict` over the split's own frames (one call = one frame in, labels out at frame size). Each row
also carries the share of pixels whose labels equal PyTorch fp32's on those frames: msseg-export's
numerical check on real frames (>= 99% expected for fp32/fp16 engines; INT8 is judged by its mIoU).
The node's defaults (`checkpoint: ''` = the first checkpoint given, `backend: auto`, `precision: fp32`)
are marked on the chart: the point `auto` picks here.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CPU_CONFIGS = (("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("onnxruntime", "int8"),
               ("openvino", "int8"))
GPU_CONFIGS = (("torch", "fp32"), ("torch", "fp16"), ("tensorrt", "fp32"), ("tensorrt", "fp16"), ("tensorrt", "int8"))


def run(args: argparse.Namespace) -> dict:
    """Score and time every configuration; the report's `default` names the node's default point.
    With --from-json: the saved reports merged and charted instead (nothing measured)."""
    if getattr(args, "from_json", ""):
        return _from_json(args)
    if not args.data_root:
        raise SystemExit("msseg-bench pareto: --data-root is required (the split to score on)")

    from msseg_core.bench.segmenter import environment, split_list
    from msseg_core.runtime.engines.factory import engine_versions
    from msseg_core.runtime.engines.torch_ort import default_threads
    from msseg_core.runtime.segmenter import resolve_device

    device = resolve_device(args.device)
    threads = args.threads or default_threads()
    installed = {k for k, v in engine_versions().items() if v}
    configs = [tuple(c.split(":")) for c in split_list(args.configs)] or [
        c for c in (GPU_CONFIGS if device.type == "cuda" else CPU_CONFIGS) if c[0] in installed]
    checkpoints = split_list(args.checkpoints)
    split = _Split(args.data_root, args.split)
    results = []
    for ckpt in checkpoints:
        results += _checkpoint_rows(args, ckpt, configs, device, threads, split)
    default = _node_default(checkpoints[0], device, threads, args.cache_dir)
    env = dict(environment(device, threads), engines=engine_versions())
    report = {"kind": "pareto", "env": env, "args": vars(args), "results": results, "default": default}
    if args.chart:
        write_chart(report, args.chart, args.title)
    return report


def _from_json(args: argparse.Namespace) -> dict:
    """--from-json: saved reports merged (checkpoints renamed by --rename) and charted."""
    import json

    try:
        report = merge_reports([json.loads(Path(f).read_text()) for f in args.from_json.split(",") if f],
                               dict(r.split("=", 1) for r in getattr(args, "rename", [])))
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"msseg-bench pareto: --from-json: {exc}") from None
    if args.chart:
        write_chart(report, args.chart, args.title)
    return report


class _Split:
    """The split every configuration is scored and timed on: read once, when the first Segmenter is
    built (its metadata names the dataset), so every configuration sees the same frames."""

    def __init__(self, data_root: str, split: str):
        from msseg_core.data import build_dataset  # here, not in a row: a broken install is no row error

        self._build_dataset = build_dataset
        self.data_root, self.split = data_root, split
        self.dataset = None
        self.frames: list[np.ndarray] = []

    def load_for(self, seg) -> None:
        if self.dataset is None:
            self.dataset = self._build_dataset(seg.meta.dataset or "camvid", self.data_root, self.split)
            self.frames = [np.asarray(self.dataset[i][0]) for i in range(len(self.dataset))]


def _checkpoint_rows(args: argparse.Namespace, ckpt: str, configs, device, threads: int, split: _Split) -> list[dict]:
    """One row per engine x precision of a checkpoint. Labels agreement is against this checkpoint's
    torch fp32 labels, from the point that configuration has run (it comes first by default)."""
    from msseg_core.evaluation.evaluate import evaluate_split
    from msseg_core.runtime.segmenter import Segmenter

    results = []
    reference = None
    for backend, precision in configs:
        row = {"checkpoint": ckpt, "backend": backend, "precision": precision, "threads": threads}
        try:
            t0 = time.perf_counter()
            seg = Segmenter.from_checkpoint(ckpt, device=str(device), precision=precision, backend=backend,
                                            threads=threads, cache_dir=args.cache_dir)
            row["init_s"] = round(time.perf_counter() - t0, 3)
            split.load_for(seg)
            row.update(_accuracy(seg, evaluate_split(seg, split.dataset)))
            row.update(_time_predict(args, seg, split.frames, device))
            row["fps"] = round(1e3 / row["latency_ms"]["mean"], 3)
            row["frame_size"] = list(split.frames[0].shape[:2])
            labels = [seg.predict(f) for f in split.frames[:args.agreement_frames]]
            if reference is None and (backend, precision) == ("torch", "fp32"):
                reference = labels
            if reference is not None:
                row["labels_agreement_vs_torch_fp32"] = round(float(np.mean(
                    [(a == b).mean() for a, b in zip(labels, reference, strict=True)])), 5)
            row["describe"] = seg.describe()
            del seg
        except Exception as exc:  # noqa: BLE001 - one configuration that cannot run must not lose the rest
            row["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        log.info("pareto %s %s %s: %s", ckpt, backend, precision,
                 row.get("error") or f"mIoU {row['miou']:.4f}, {row['fps']:.2f} frames/s")
        results.append(row)
    return results


def _accuracy(seg, cm) -> dict:
    """The model and its mIoU and per-class IoU from the confusion matrix of the whole split."""
    return dict(model=seg.meta.model, model_args=seg.meta.model_args, input_size=list(seg.input_size),
                miou=round(float(cm.miou), 5), per_class_iou=dict(zip(
                    seg.class_names, (round(float(v), 5) for v in cm.iou()), strict=True)))


def _time_predict(args: argparse.Namespace, seg, frames: list[np.ndarray], device) -> dict:
    """time_calls' figures for `predict` cycling through the split's frames (one call = one frame in,
    labels out; on CUDA synchronised after each call)."""
    import torch

    from msseg_core.bench.segmenter import time_calls  # both loaded by run() already

    state = {"i": 0}

    def call(seg=seg, frames=frames, state=state):
        state["i"] += 1
        return seg.predict(frames[state["i"] % len(frames)])

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    return time_calls(call, args.warmup, args.iters, args.max_seconds, sync)


def _node_default(checkpoint: str, device, threads: int, cache_dir) -> dict | None:
    """What the node's defaults run (the first checkpoint, backend auto, fp32); None if it cannot be built."""
    from msseg_core.runtime.segmenter import Segmenter

    try:
        seg = Segmenter.from_checkpoint(checkpoint, device=str(device), threads=threads, cache_dir=cache_dir)
        return {"checkpoint": checkpoint, "backend": seg.backend, "precision": "fp32",
                "auto": seg.describe().get("auto", {})}
    except Exception as exc:  # noqa: BLE001
        log.warning("could not build the default Segmenter: %s", exc)
        return None


def merge_reports(reports: list[dict], rename: dict[str, str] | None = None) -> dict:
    """Several saved pareto reports as one (e.g. runs made at different times, for one chart): results in
    order, checkpoints renamed for the legend, the first report's environment, no node-default point."""
    if not reports:
        raise ValueError("no report to merge")
    rename = rename or {}
    results = [dict(r, checkpoint=rename.get(r["checkpoint"], r["checkpoint"])) for rep in reports
               for r in rep["results"]]
    return {"kind": "pareto", "env": reports[0]["env"], "args": reports[0]["args"], "results": results,
            "default": None}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both speed (x) and accuracy (y), by speed."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best_y = [], -np.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def write_chart(report: dict, path: str | Path, title: str = "") -> Path:
    """mIoU (y) against frames/s (x, log scale): colour = model, marker = engine, filled = fp32/fp16,
    hollow = int8; the dashed line is the Pareto front, the star the node's default."""
    from matplotlib import colormaps

    from msseg_core.io import new_figure, save_figure

    rows = [r for r in report["results"] if "error" not in r]
    markers = {"torch": "o", "onnxruntime": "s", "openvino": "D", "tensorrt": "^"}
    colours = {c: colormaps["tab10"](i) for i, c in enumerate(dict.fromkeys(r["checkpoint"] for r in rows))}
    offsets = {"torch": (6, 5), "onnxruntime": (6, -11), "openvino": (6, 7), "tensorrt": (6, -4)}
    fig = new_figure(figsize=(9, 6.5), dpi=110)
    ax = fig.subplots()
    for r in rows:
        int8 = r["precision"] == "int8"
        ax.scatter(r["fps"], 100 * r["miou"], s=70, marker=markers.get(r["backend"], "x"),
                   facecolors="none" if int8 else colours[r["checkpoint"]], edgecolors=colours[r["checkpoint"]],
                   linewidths=1.6)
        ax.annotate(f"{r['backend']} {r['precision']}", (r["fps"], 100 * r["miou"]), textcoords="offset points",
                    xytext=offsets.get(r["backend"], (6, 4)), fontsize=7)
    pts = [(r["fps"], 100 * r["miou"]) for r in rows]
    if pts:
        front = pareto_front(pts)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color="grey", lw=1, zorder=0)
    d = report.get("default")
    hit = [r for r in rows if d and (r["checkpoint"], r["backend"], r["precision"]) ==
           (d["checkpoint"], d["backend"], d["precision"])]
    for r in hit:
        ax.scatter(r["fps"], 100 * r["miou"], s=320, marker="*", color="gold", edgecolors="black", zorder=5,
                   label=f"node default ({Path(r['checkpoint']).stem}, backend auto -> {r['backend']}, fp32)")
    for ckpt, colour in colours.items():
        ax.scatter([], [], color=colour, label=Path(ckpt).stem)
    for engine, marker in markers.items():
        if any(r["backend"] == engine for r in rows):
            ax.scatter([], [], marker=marker, color="grey", label=engine)
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="grey", label="hollow: int8")
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    lo, hi = min(p[0] for p in pts), max(p[0] for p in pts)
    ax.set_xticks([t for t in (1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 500, 1000) if lo / 1.5 <= t <= hi * 1.5])
    ax.set_xlabel("frames/s (Segmenter.predict, frame in -> labels out)")
    ax.set_ylabel(f"mIoU % ({report['args'].get('split', 'val')})")
    env = report["env"]
    flags = f" ({' '.join(env['cpu_flags'])})" if env.get("cpu_flags") else ""
    ax.set_title(title or f"{env.get('cpu', env['device'])}{flags}, {env['threads']} thread(s)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)
    return save_figure(fig, path)


def to_markdown(report: dict) -> list[str]:
    """Table rows for BENCHMARKS.md."""
    lines = ["| checkpoint | backend | precision | threads | mIoU | frames/s | p50 ms | labels = torch fp32 | |",
             "|" + "---|" * 9]
    d = report.get("default") or {}
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['checkpoint']} | {r['backend']} | {r['precision']} | {r['threads']} | - | - | - | - "
                         f"| {r['error']} |")
            continue
        mark = "node default" if (r["checkpoint"], r["backend"], r["precision"]) == (
            d.get("checkpoint"), d.get("backend"), d.get("precision")) else ""
        agree = r.get("labels_agreement_vs_torch_fp32")
        lines.append(f"| {r['checkpoint']} | {r['backend']} | {r['precision']} | {r['threads']} "
                     f"| {100 * r['miou']:.2f} | {r['fps']:.2f} | {r['latency_ms']['p50']:.1f} "
                     f"| {'-' if agree is None else f'{100 * agree:.2f}%'} | {mark} |")
    return lines

