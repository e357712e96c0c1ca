"""msseg-calibrate: make `confidence` mean probability (temperature scaling, Guo et al. 2017).

    msseg-calibrate --checkpoint runs/x/best.safetensors --data-root ../shared/datasets/camvid \\
        --split val --out runs/x/calibrated.safetensors --png docs/reliability.png

Fits one temperature on the split, writes it into a copy of the checkpoint and draws the reliability
diagrams before and after (msseg_core.evaluation.temperature says why and how). `--input-size` deploys the
checkpoint at another network input (one chosen on val with `msseg-eval --input-size`): the temperature is
fitted there, and the copy runs there by default, wherever it is loaded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from msseg_core.cli.common import configure_process, parse_size
from msseg_core.evaluation.temperature import fit_split_temperature, plot_reliability


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="msseg-calibrate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a zoo model or .safetensors checkpoint")
    p.add_argument("--data-root", default=None, help="dataset root (e.g. ../shared/datasets/camvid)")
    p.add_argument("--temperature-from", default=None, metavar="CHECKPOINT",
                   help="fit nothing: take the temperature (and its figures) of this calibrated checkpoint, e.g. the "
                        "train-only run of the recipe when --checkpoint trained on train+val and has no held-out split")
    p.add_argument("--split", default="val",
                   help="held-out split to fit on (a split expression; refused when the checkpoint trained on it)")
    p.add_argument("--dataset", default=None, help="dataset loader (default: the checkpoint's)")
    p.add_argument("--out", required=True, help="where to write the calibrated checkpoint (may be --checkpoint)")
    p.add_argument("--input-size", type=parse_size, default=None, metavar="HxW",
                   help="the network input the copy runs at (default: the checkpoint's); the fit runs at it, and "
                        "with --temperature-from the donor must have been fitted at it")
    p.add_argument("--half", action="store_true",
                   help="store the weights as fp16 (half the file, how the zoo ships them; inference casts back)")
    p.add_argument("--png", default=None, help="reliability diagram before / after")
    p.add_argument("--json", default=None, help="write the figures as JSON")
    p.add_argument("--pixels-per-image", type=int, default=20000, help="labelled pixels sampled per image for the fit")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if not args.temperature_from and not args.data_root:
        p.error("--data-root is required (or --temperature-from)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_process(getattr(args, "threads", None), getattr(args, "device", "cpu"))
    from msseg_core.checkpoint import CheckpointError
    from msseg_core.data import build_dataset
    from msseg_core.io import write_json_atomic
    from msseg_core.runtime.segmenter import Segmenter

    if args.temperature_from:
        return _transfer(args)
    try:
        path, model, meta = _load(args)
        if meta.trained_on(args.split, args.dataset):
            raise ValueError(f"{path} trained on frames of {args.split!r} (train_split "
                             f"{meta.recipe['data']['train_split']!r}): a temperature fitted there is over-confident; "
                             "fit on a held-out split, or take --temperature-from the recipe's train-only run")
        segmenter = Segmenter(model, meta, device=args.device, backend="torch", threads=args.threads)
        dataset = build_dataset(args.dataset or meta.dataset or "camvid", args.data_root, args.split)
        result = fit_split_temperature(segmenter, dataset, pixels_per_image=args.pixels_per_image)
    except (CheckpointError, ValueError, FileNotFoundError, OSError) as exc:
        print(f"msseg-calibrate: error: {exc}", file=sys.stderr)
        return 2
    summary = {**result.summary(), "split": args.split, "checkpoint": str(path), "input_size": meta.input_size}
    _save_calibrated(args, path, model, meta, result.temperature, summary)
    print(f"temperature {result.temperature:.3f}: ECE {100 * result.before.ece:.2f}% -> {100 * result.after.ece:.2f}% "
          f"on {summary['pixels_scored']} pixels of {args.split}; wrote {args.out}")
    if args.png:
        print(f"reliability diagram: {plot_reliability(result, args.png, title=f'{meta.model} on {args.split}')}")
    if args.json:
        write_json_atomic(args.json, summary)
    return 0


def _load(args: argparse.Namespace):
    """The checkpoint to calibrate, set to run at --input-size when one is given."""
    from msseg_core.checkpoint import load_checkpoint
    from msseg_core.zoo import resolve_checkpoint

    path = resolve_checkpoint(args.checkpoint)
    model, meta = load_checkpoint(path)
    if args.input_size:
        meta.input_size = list(args.input_size)
    return path, model, meta


def _save_calibrated(args: argparse.Namespace, path, model, meta, temperature: float, figures: dict) -> None:
    """The checkpoint again with its temperature and the figures behind it (fp16 storage kept or asked)."""
    from msseg_core.checkpoint import save_checkpoint, stored_half

    meta.temperature = temperature
    meta.metrics = {**meta.metrics, "calibration": figures}
    save_checkpoint(args.out, model, meta, half=args.half or stored_half(path))


def _transfer(args: argparse.Namespace) -> int:
    """--temperature-from: the temperature of a calibrated sibling, its figures recorded with where they came
    from (a model that trained on every labelled split has none left to fit on)."""
    from msseg_core.checkpoint import CheckpointError, load_meta
    from msseg_core.zoo import resolve_checkpoint

    try:
        source = resolve_checkpoint(args.temperature_from)
        path, model, meta = _load(args)
        donor = load_meta(source)
        fitted = donor.metrics.get("calibration")
        if not fitted or donor.temperature == 1.0:
            raise ValueError(f"{source} is not calibrated (no fitted temperature): run msseg-calibrate on it first")
        if donor.input_size != meta.input_size:  # a temperature holds for the input it was fitted at
            raise ValueError(f"{source} was calibrated at a {_hw(donor.input_size)} network input, {path} runs at "
                             f"{_hw(meta.input_size)}: give --input-size {_hw(donor.input_size)}, or calibrate "
                             "the donor at this input")
    except (CheckpointError, ValueError, FileNotFoundError, OSError) as exc:
        print(f"msseg-calibrate: error: {exc}", file=sys.stderr)
        return 2
    _save_calibrated(args, path, model, meta, donor.temperature, {**fitted, "transferred_from": str(source)})
    print(f"temperature {donor.temperature:.3f} from {source} (fitted on its {fitted.get('split')}); wrote {args.out}")
    return 0


def _hw(size: list[int]) -> str:
    return f"{size[0]}x{size[1]}"


if __name__ == "__main__":
    sys.exit(main())
