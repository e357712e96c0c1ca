"""Benchmark reports: one JSON layout for every kind, the Markdown tables of BENCHMARKS.md, one atomic writer."""

from __future__ import annotations

import json
import os
from pathlib import Path

from msseg_core.io import write_text_atomic


def to_markdown(report: dict) -> str:
    """A table of the results plus the environment, for BENCHMARKS.md."""
    env = report["env"]
    where = env.get("device_name") or env.get("cpu")
    if env.get("cpu_flags") and not env.get("device_name"):
        where = f"{where}; {' '.join(env['cpu_flags'])}"
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
        lines += ["| backend | precision | threads | frame | network input | upsample | tta | p50 ms | p99 ms "
                  "| network p50 ms | post p50 ms | FPS | speed-up vs naive | labels = first row | runs as | calls |",
                  "|" + "---|" * 16]
        for r in rows:
            frame = "x".join(map(str, r["frame_size"]))
            net = "x".join(map(str, r["input_size"]))
            head = (f"| {r['backend']} | {r.get('precision', 'fp32')} | {r.get('threads', '')} | {frame} | {net} "
                    f"| {r.get('upsample', '-')} | {r.get('tta', '-')}")
            if "error" in r:
                lines.append(f"{head} | - | - | - | - | - | - | - | {r['error']} | 0 |")
                continue
            d = r.get("describe", {})
            runs = d.get("backend", "")
            if d.get("providers"):
                runs += " (" + ", ".join(d["providers"]) + ")"
            stages = " | ".join(f"{r[k]['p50']:.2f}" if k in r else "-" for k in ("network_ms", "postprocess_ms"))
            lines.append(f"{head} | {r['latency_ms']['p50']:.2f} | {r['latency_ms']['p99']:.2f} | {stages} "
                         f"| {r['fps']:.2f} | {_fmt(r.get('speedup_vs_naive'))} "
                         f"| {100 * r['labels_agreement_vs_first']:.2f}% | {runs} | {r['iters']} |")
    elif report["kind"] == "pareto":
        from msseg_core.bench.pareto import to_markdown as pareto_markdown

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


def report_paths(kind: str, json_path: str | None, md_path: str | None,
                 out: str | None) -> tuple[str | None, str | None]:
    """--json / --md as given, else <out>/<kind>.json and .md when --out names a folder."""
    if out:
        json_path = json_path or os.path.join(out, f"{kind}.json")
        md_path = md_path or os.path.join(out, f"{kind}.md")
    return json_path, md_path


def save_report(report: dict, json_path: str | os.PathLike | None = None, md_path: str | os.PathLike | None = None,
                markdown: str | None = None) -> str:
    """Write the JSON report and its Markdown table (each atomically, so an interrupted run never leaves half a
    file) where asked; returns the Markdown (`markdown`, else `to_markdown(report)`)."""
    md = to_markdown(report) if markdown is None else markdown
    for path, text in ((json_path, json.dumps(report, indent=2, default=str) + "\n"), (md_path, md)):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, text)
    return md
