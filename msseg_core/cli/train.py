"""msseg-train: train a registered network on a dataset from a YAML recipe.

    msseg-train --config config/train/camvid_mssanet.yaml [--set key=value ...] [--resume] [--out DIR]
    torchrun --nproc_per_node 4 -m msseg_core.cli.train --config ...     # DDP, one process per GPU

Per epoch: train, validate mIoU on the val split through a `Segmenter` at the recipe's eval size
(the numbers msseg-eval would report), log (TensorBoard, metrics.csv, curves.png) and write
`last.safetensors` (+ `best.safetensors` when val mIoU improves) and then `train_state.safetensors`
(optimizer, scheduler, scaler, RNG, epoch) for `--resume`. Every file is replaced atomically, so a
kill at any moment leaves a consistent run that loses at most the epoch in progress.

Randomness is reseeded at the start of every epoch from (seed, epoch, rank), so an epoch draws the
same numbers whether the run went straight through or was resumed before it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from msseg_core.checkpoint import CheckpointError
from msseg_core.cli.common import configure_process
from msseg_core.data.datasets import DatasetError
from msseg_core.runtime.segmenter import resolve_device
from msseg_core.training.recipe import RecipeError, load_recipe
from msseg_core.training.state import TrainStateError
from msseg_core.training.train import RECIPE, fit, recipe_yaml


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="msseg-train", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n")[1] + "\n\nAll keys: msseg-train --config X --print-recipe",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="recipe YAML (with --resume: default <out>/recipe.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set train.epochs=10 --set data.root=/data/camvid")
    p.add_argument("--out", default=None, help="run folder (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--print-recipe", action="store_true", help="print the resolved recipe and exit")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.config is None and not (args.resume and args.out):
        print("msseg-train: error: --config is required (or --resume with --out of an existing run)", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    config = args.config if args.config is not None else out / RECIPE
    try:
        recipe = load_recipe(config, args.overrides)
        if args.print_recipe:
            print(recipe_yaml(recipe), end="")
            return 0
        # threads 0: PyTorch's own default (under torchrun on a CPU, set it per process)
        configure_process(recipe.train.threads or torch.get_num_threads(), resolve_device(recipe.train.device))
        fit(recipe, out, resume=args.resume, quiet=args.quiet)
    except (RecipeError, TrainStateError, CheckpointError, DatasetError, FileNotFoundError) as exc:
        print(f"msseg-train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
