"""Command-line options shared by every `msseg-bench` subcommand (core and ROS): lists, sizes, timing budget."""

from __future__ import annotations

import argparse


def split_list(text: str | None) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def parse_ints(text: str) -> list[int]:
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
    """Options every subcommand has (also `msseg-bench node`, in msseg_ros.bench.node)."""
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
