"""msseg-predict: colour masks and overlays for image files, through `Segmenter.segment`.

For every input image `<stem>.<ext>` it writes `<stem>_mask.png` (class colours) and
`<stem>_overlay.png` (the mask blended over the image), both at the image's own resolution.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from msseg_core.inference import BACKENDS, PRECISIONS, Segmenter

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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="msseg-predict", description=__doc__.split("\n")[0])
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    p.add_argument("--checkpoint", default="",
                   help="a zoo model (camvid, camvid_fast) or a .safetensors checkpoint (default: camvid)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask, 0..1")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS))
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="inference backend (as the node's)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the usable cores)")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if not 0.0 <= args.alpha <= 1.0:
        p.error(f"--alpha must be within 0..1, got {args.alpha}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        files = collect_images(args.inputs)
        segmenter = Segmenter.from_checkpoint(args.checkpoint or None, device=args.device, precision=args.precision,
                                              backend=args.backend, threads=args.threads)
        written = predict_files(segmenter, files, args.out, alpha=args.alpha)
    except (ValueError, OSError) as exc:  # CheckpointError is a ValueError; PIL raises OSError subclasses
        print(f"msseg-predict: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {2 * len(written)} files for {len(written)} images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
