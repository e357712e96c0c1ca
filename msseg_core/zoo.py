"""The model zoo: packaged checkpoints by name, so `checkpoint: camvid_fast` works wherever a path does.

| name          | tier                  | network                                                  | input   |
|---------------|-----------------------|----------------------------------------------------------|---------|
| `camvid`      | accurate (default)    | MSSANet decoder on ImageNet EfficientNet-Lite2           | 448x864 |
| `camvid_fast` | fast (>= 50 FPS, CPU) | half-width MSSANet decoder on ImageNet EfficientNet-Lite0 | 192x320 |

Both trained on CamVid train+val with a recipe and schedule chosen on train -> val (docs/models.md).
Each file is an ordinary msseg checkpoint (weights + metadata, incl. the calibrated temperature); its
model card (data, recipe, commands, scores, speed) is in docs/models.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class ZooEntry:
    file: str
    summary: str


ZOO: dict[str, ZooEntry] = {
    "camvid": ZooEntry("camvid.safetensors", "accurate: MSSANet decoder on ImageNet EfficientNet-Lite2, 448x864"),
    "camvid_fast": ZooEntry("camvid_fast.safetensors",
                            "fast: half-width MSSANet decoder on EfficientNet-Lite0, 192x320"),
}
DEFAULT_MODEL = "camvid"


def zoo_names() -> list[str]:
    return list(ZOO)


def zoo_path(name: str) -> Path:
    """The packaged file of a zoo model (a clear error for unknown names or a broken install)."""
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; the zoo has {', '.join(ZOO)}")
    path = WEIGHTS_DIR / ZOO[name].file
    if not path.is_file():
        raise FileNotFoundError(f"zoo model {name!r} is missing from the installation: {path}")
    return path


def resolve_checkpoint(spec: str | os.PathLike | None) -> Path:
    """'' or None: the default zoo model; a zoo name: its packaged file; anything else: a path, as given."""
    if spec is None or str(spec) == "":
        return zoo_path(DEFAULT_MODEL)
    if isinstance(spec, str) and spec in ZOO:
        return zoo_path(spec)
    return Path(spec)
