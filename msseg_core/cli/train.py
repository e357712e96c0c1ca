"""msseg-train: train a registered network on a dataset from a YAML recipe.

    msseg-train --config config/train/camvid_mssanet.yaml [--set key=value ...] [--resume] [--out DIR]
    msseg-train --init camvid --dataset folder --data-root data/my_robot    # fine-tune a zoo model on your data
    torchrun --nproc_per_node 4 -m msseg_core.cli.train --config ...     # DDP, one process per GPU

Writes last/best checkpoints, logs and the training state into --out after every epoch (atomically:
a kill loses at most the epoch in progress); --resume continues from there. The loop and why it is so:
msseg_core.training.train.
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
from msseg_core.training.recipe import FINETUNE_RECIPE, RecipeError, load_recipe, packaged_recipe, resolve_recipe
from msseg_core.training.state import TrainStateError
from msseg_core.training.train import RECIPE, fit, recipe_yaml


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="msseg-train", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n")[1] + "\n\nAll keys: msseg-train --config X --print-recipe",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None,
                   help=f"recipe YAML (with --resume: default <out>/recipe.yaml; with --init, --dataset or "
                        f"--data-root: default the fine-tuning recipe config/train/{FINETUNE_RECIPE})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set train.epochs=10 --set data.root=/data/camvid")
    p.add_argument("--init", default=None, metavar="SPEC",
                   help="= --set model.init_from=SPEC: start from a zoo model (camvid, camvid_fast) or a checkpoint; "
                        "its network unless the recipe names one; a new class table re-initialises the classifier")
    p.add_argument("--dataset", default=None, help="= --set data.dataset=NAME (camvid, cityscapes, kitti_road, folder)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="= --set data.root=DIR")
    p.add_argument("--out", default=None,
                   help="run folder (default: runs/<recipe name>; fine-tuning recipe: runs/finetune_<data root>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--print-recipe", action="store_true", help="print the resolved recipe and exit")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    shortcuts = [f"{key}={value}" for key, value in (("model.init_from", args.init), ("data.dataset", args.dataset),
                                                        ("data.root", args.data_root)) if value is not None]
    finetune = args.config is None and not (args.resume and args.out) and bool(shortcuts)
    if args.config is None and not (args.resume and args.out) and not finetune:
        print("msseg-train: error: --config is required (or --resume with --out of an existing run, or --init / "
              "--dataset / --data-root for the fine-tuning recipe)", file=sys.stderr)
        return 2
    try:
        if finetune:
            args.config = str(packaged_recipe(FINETUNE_RECIPE))
        overrides = [*args.overrides, *shortcuts]
        if args.config is None:  # --resume --out: the run's own recipe
            out = Path(args.out)
            recipe = load_recipe(out / RECIPE, overrides)
        else:
            recipe = load_recipe(args.config, overrides)
            default = f"finetune_{Path(recipe.data.root).resolve().name}" if finetune else Path(args.config).stem
            out = Path(args.out) if args.out else Path("runs") / default
        if args.print_recipe:
            print(recipe_yaml(resolve_recipe(recipe)), end="")
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
