"""Per-epoch training logs: metrics.csv, TensorBoard scalars and curves.png (rank 0 only).

The CSV is the source of truth: it is rewritten whole (atomically) every epoch, and on `--resume`
rows after the resumed epoch (from an epoch that was cut off) are dropped, as are TensorBoard
events after it (`purge_step`), so the logs show one continuous run.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

from msseg_core.io import new_figure, save_figure, write_bytes_atomic

COLUMNS = ("epoch", "train_loss", "val_loss", "val_miou", "val_pixel_acc", "lr", "seconds")
CSV_NAME, CURVES_NAME, TB_DIR = "metrics.csv", "curves.png", "tensorboard"


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Rows of a metrics.csv as dicts of floats (None where a column is empty, e.g. no validation)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            row = {k: (float(v) if v not in ("", None) else None) for k, v in raw.items() if k in COLUMNS}
            row["epoch"] = int(row["epoch"])
            rows.append(row)
    return rows


def write_metrics(path: Path, rows: Sequence[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS})
    write_bytes_atomic(path, buf.getvalue().encode())


def plot_curves(rows: Sequence[dict], path: Path) -> None:
    """Loss (train, val) and val mIoU / pixel accuracy against epoch."""
    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig = new_figure(figsize=(10, 4), dpi=100)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        ax_loss.plot(*series(key), marker=".", label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    for key, label in (("val_miou", "val mIoU"), ("val_pixel_acc", "val pixel acc")):
        ax_acc.plot(*series(key), marker=".", label=label)
    ax_acc.set(xlabel="epoch", ylim=(0, 1), title="validation")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path)


class RunLog:
    """The logs of one run folder; a no-op where `enabled` is false (ranks other than 0)."""

    def __init__(self, out: Path, recipe_yaml: str, start_epoch: int = 0, enabled: bool = True):
        self.out, self.enabled, self.writer = Path(out), enabled, None
        if not enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.rows = [r for r in read_metrics(self.out / CSV_NAME) if r["epoch"] <= start_epoch] if start_epoch else []
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.out / TB_DIR), purge_step=start_epoch + 1 if start_epoch else None)
        if not start_epoch:
            self.writer.add_text("recipe", "```\n" + recipe_yaml + "```", 0)

    def epoch(self, row: dict, per_class_iou: dict | None = None) -> None:
        """Record one finished epoch (`row` has COLUMNS; val columns may be missing)."""
        if not self.enabled:
            return
        self.rows.append(dict(row))
        write_metrics(self.out / CSV_NAME, self.rows)
        step = int(row["epoch"])
        for key, tag in (("train_loss", "loss/train"), ("val_loss", "loss/val"), ("val_miou", "val/miou"),
                         ("val_pixel_acc", "val/pixel_acc"), ("lr", "lr"), ("seconds", "time/epoch_seconds")):
            if row.get(key) is not None:
                self.writer.add_scalar(tag, row[key], step)
        for name, iou in (per_class_iou or {}).items():
            if iou is not None:
                self.writer.add_scalar(f"val_iou/{name}", iou, step)
        self.writer.flush()
        plot_curves(self.rows, self.out / CURVES_NAME)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
