"""Model registry: every network is built by name, so a checkpoint can rebuild its model alone.

Each registered builder takes `num_classes` plus its own keyword arguments (all JSON-serialisable,
since they are stored in checkpoints), accepts float input N x 3 x H x W of any H, W and returns
logits N x num_classes x H x W. Every builder takes `width` (channel multiplier) so tests can build
tiny instances.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
# Modules that register models on import; imported lazily so `list_models` sees them all.
_MODEL_MODULES = ("mssanet", "fcn", "dsunet", "peers")
_loaded = False


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register `fn(num_classes, **kwargs) -> nn.Module` under `name`."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return wrap


def _load_all() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in _MODEL_MODULES:
            importlib.import_module(f"{__name__}.{mod}")


def list_models() -> list[str]:
    """Names of every registered network, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered network; unknown names give the list of known ones."""
    _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return _REGISTRY[name](num_classes=num_classes, **kwargs)
