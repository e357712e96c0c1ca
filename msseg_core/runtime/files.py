"""Colour masks and overlays for image files, through `Segmenter.segment` (msseg-predict).

For every input image `<stem>.<ext>` it writes `<stem>_mask.png` (class colours) and
`<stem>_overlay.png` (the mask blended over the image), both at the image's own resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from msseg_core.runtime.segmenter import Segmenter

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their images (sorted, not recursive); stems must be unique."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such image or folder: {path}")
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen and seen[f.stem] != f:
            raise ValueError(f"{seen[f.stem]} and {f} would write the same outputs ({f.stem}_mask.png)")
        seen[f.stem] = f
    return list(dict.fromkeys(files))


def read_rgb(path: str | Path) -> np.ndarray:
    """Any image file -> H x W x 3 uint8 RGB (grey and alpha are converted)."""
    with Image.open(path) as im:
        return np.array(im.convert("RGB"), dtype=np.uint8)  # writable: torch.from_numpy warns on read-only


def predict_files(segmenter: Segmenter, files: Sequence[Path], out_dir: str | Path,
                  alpha: float = 0.5) -> list[tuple[Path, Path]]:
    """Write mask and overlay for each file; returns the (mask, overlay) paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for f in files:
        result = segmenter.segment(read_rgb(f), outputs=("color_mask", "overlay"), overlay_alpha=alpha)
        mask_path, overlay_path = out_dir / f"{f.stem}_mask.png", out_dir / f"{f.stem}_overlay.png"
        Image.fromarray(result["color_mask"]).save(mask_path)
        Image.fromarray(result["overlay"]).save(overlay_path)
        written.append((mask_path, overlay_path))
    return written
