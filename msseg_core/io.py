"""Files that are never half written: every checkpoint, export, report and cache entry goes through here."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any], suffix: str = ".tmp",
                 durable: bool = True) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, then rename it over `path`.

    A reader (or a process killed half-way) sees the old file or the new one, never a mix. `suffix`
    is the temporary file's ending, for writers that choose a format by extension (".tmp.onnx").
    durable: fsync the file and its folder, so a power cut cannot leave an empty file under the new
    name (checkpoints, training state); caches and reports may skip it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        # mkstemp makes 0600, and some writers (safetensors) replace the file: set the mode last
        os.chmod(tmp, 0o666 & ~umask)
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if durable:
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str, durable: bool = False) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text), durable=durable)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, durable: bool = False) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), durable=durable)


def write_json_atomic(path: str | os.PathLike, obj: Any, durable: bool = False) -> Path:
    """JSON, indented, newline-terminated."""
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n", durable=durable)


def new_figure(**kwargs: Any) -> Any:
    """A matplotlib Figure that draws with Agg without touching pyplot or the process's backend: library
    code must not change global state (pyplot's backend, its list of open figures) of a program that
    imports it. `kwargs` go to Figure (figsize, dpi); use fig.subplots / fig.add_gridspec on it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | os.PathLike, tight: bool = True) -> Path:
    """Write a figure from `new_figure` atomically (the format from the path's extension, PNG by default)."""
    path = Path(path)
    if tight:
        fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png"),
                 suffix=".tmp" + path.suffix, durable=False)
    return path
