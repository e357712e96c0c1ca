"""msseg_core: semantic segmentation of driving scenes, without ROS.

The front door (what the node, the tools and a user's script need)::

    from msseg_core import Segmenter
    seg = Segmenter.from_checkpoint("camvid")          # a zoo name or a .safetensors / .onnx path
    labels = seg.predict(rgb)                           # H x W uint8 class ids at the frame's size

    from msseg_core import build_model, load_checkpoint, list_models, zoo_names

Everything else lives in the layer it belongs to (imports run one way, top to bottom):
io, classes, zoo -> models -> checkpoint -> data, synthetic, ground -> runtime -> evaluation ->
training, deploy -> bench -> cli. The names below are imported on first use, so `import msseg_core`
stays cheap for code that needs only one layer.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_FRONT_DOOR = {
    "Segmenter": "msseg_core.runtime.segmenter",
    "OUTPUTS": "msseg_core.runtime.segmenter",
    "build_model": "msseg_core.models",
    "list_models": "msseg_core.models",
    "load_checkpoint": "msseg_core.checkpoint",
    "save_checkpoint": "msseg_core.checkpoint",
    "CheckpointMeta": "msseg_core.checkpoint",
    "resolve_checkpoint": "msseg_core.zoo",
    "zoo_names": "msseg_core.zoo",
    "DEFAULT_MODEL": "msseg_core.zoo",
}

__all__ = sorted(_FRONT_DOOR)


def __getattr__(name: str) -> Any:
    module = _FRONT_DOOR.get(name)
    if module is None:
        raise AttributeError(f"module 'msseg_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
