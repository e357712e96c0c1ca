"""msseg-predict: colour masks and overlays for image files, through `Segmenter.segment`.

    msseg-predict IMAGE_OR_DIR ... --out DIR [--checkpoint camvid_fast] [--tta flip]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from msseg_core.cli.common import add_segmenter_arguments, configure_process, segmenter_options
from msseg_core.runtime.files import collect_images, predict_files
from msseg_core.runtime.segmenter import Segmenter


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="msseg-predict", description=__doc__.split("\n")[0])
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    p.add_argument("--checkpoint", default="",
                   help="a zoo model (camvid, camvid_fast) or a .safetensors checkpoint (default: camvid)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask, 0..1")
    add_segmenter_arguments(p)
    args = p.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        p.error(f"--alpha must be within 0..1, got {args.alpha}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_process(getattr(args, "threads", None), getattr(args, "device", "cpu"))
    try:
        files = collect_images(args.inputs)
        segmenter = Segmenter.from_checkpoint(args.checkpoint or None, **segmenter_options(args))
        written = predict_files(segmenter, files, args.out, alpha=args.alpha)
    except (ValueError, OSError) as exc:  # CheckpointError is a ValueError; PIL raises OSError subclasses
        print(f"msseg-predict: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {2 * len(written)} files for {len(written)} images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
