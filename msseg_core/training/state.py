"""Training state for `--resume` (optimizer, scheduler, scaler, epoch, best metric, RNG states) without pickle.

`torch.save` pickles, and unpickling a file can run arbitrary code. Instead the nested state dicts are
flattened: every tensor (and numpy array) goes into a safetensors file under a generated key, and the
structure around them (dicts, lists, tuples, numbers, strings) becomes JSON in the file's header,
with markers for what JSON cannot say (tuples, non-string dict keys, NaN/inf, tensor references).
The file is written atomically (temporary file, fsync, rename), like the checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from msseg_core.io import atomic_write

FORMAT = "msseg-train-state/1"
_MARKERS = ("__tensor__", "__ndarray__", "__tuple__", "__items__", "__float__")


class TrainStateError(ValueError):
    """A training-state file that is missing, corrupt or not ours."""


def flatten(obj: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split `obj` into a JSON-serialisable skeleton and a dict of tensors it references."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = x.detach().to("cpu").clone().contiguous()  # clone: no shared storage in the file
            return {"__tensor__": key}
        if isinstance(x, np.ndarray):
            key = f"t{len(tensors)}"
            tensors[key] = torch.from_numpy(np.ascontiguousarray(x).copy())
            return {"__ndarray__": key}
        if isinstance(x, (bool, int, str)) or x is None:
            return x
        if isinstance(x, float):
            return x if math.isfinite(x) else {"__float__": repr(x)}
        if isinstance(x, np.generic):
            return enc(x.item())
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v) for v in x]}
        if isinstance(x, list):
            return [enc(v) for v in x]
        if isinstance(x, dict):
            if all(isinstance(k, str) and k not in _MARKERS for k in x):
                return {k: enc(v) for k, v in x.items()}
            return {"__items__": [[enc(k), enc(v)] for k, v in x.items()]}  # e.g. optimizer state {0: ...}
        raise TypeError(f"cannot store a {type(x).__name__} in a training state: {x!r:.80}")

    return enc(obj), tensors


def unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `flatten`."""

    def dec(x: Any) -> Any:
        if isinstance(x, list):
            return [dec(v) for v in x]
        if not isinstance(x, dict):
            return x
        if len(x) == 1:
            (marker, value), = x.items()
            if marker == "__tensor__":
                return tensors[value]
            if marker == "__ndarray__":
                return tensors[value].numpy()
            if marker == "__float__":
                return float(value)
            if marker == "__tuple__":
                return tuple(dec(v) for v in value)
            if marker == "__items__":
                return {_hashable(dec(k)): dec(v) for k, v in value}
        return {k: dec(v) for k, v in x.items()}

    try:
        return dec(skeleton)
    except KeyError as exc:
        raise TrainStateError(f"training state references a missing tensor {exc}") from None


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


def save_train_state(path: str | os.PathLike, state: dict) -> Path:
    """Write `state` (nested dicts of tensors, numbers, strings) atomically as safetensors + JSON."""
    skeleton, tensors = flatten(state)
    header = {"format": FORMAT, "state": json.dumps(skeleton)}
    path = Path(path)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))
    return path


def load_train_state(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict:
    """Read a file written by `save_train_state`; nothing in it is executed."""
    path = Path(path)
    if not path.is_file():
        raise TrainStateError(f"training state not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        tensors = load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors has its own error types for corrupt files
        raise TrainStateError(f"cannot read training state {path}: {exc}") from None
    if header.get("format") != FORMAT or "state" not in header:
        raise TrainStateError(f"{path} is not an msseg training state (format {header.get('format')!r})")
    try:
        skeleton = json.loads(header["state"])
    except json.JSONDecodeError as exc:
        raise TrainStateError(f"{path}: training state header is not valid JSON: {exc}") from None
    return unflatten(skeleton, tensors)


def rng_state() -> dict:
    """Every global random generator training touches: Python, NumPy, torch CPU and CUDA."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured (CUDA states only where the same devices exist)."""
    random.setstate(_tuples(state["python"]))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"].to(torch.uint8))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.to(torch.uint8) for t in cuda])


def _tuples(x: Any) -> Any:
    """random.setstate wants tuples all the way down."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
