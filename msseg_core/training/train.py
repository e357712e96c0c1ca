"""The training loop: a registered network on a dataset from a recipe (msseg-train; under torchrun, one
process per GPU with DDP).

Per epoch: train, validate mIoU on the val split through a `Segmenter` at the recipe's eval size
(the numbers msseg-eval would report), log (TensorBoard, metrics.csv, curves.png) and write
`last.safetensors` (+ `best.safetensors` when val mIoU improves) and then `train_state.safetensors`
(optimizer, scheduler, scaler, RNG, epoch) for `--resume`. With `train.ema_decay` the network validated and
written to those files is the weights' moving average (training/ema.py); the trained weights themselves go
to `last_raw.safetensors` (to compare: `msseg-eval --checkpoint last.safetensors --against
last_raw.safetensors`) and into the training state. Every file is replaced atomically, so a
kill at any moment leaves a consistent run that loses at most the epoch in progress.

Randomness is reseeded at the start of every epoch from (seed, epoch, rank), so an epoch draws the
same numbers whether the run went straight through or was resumed before it.

Fine-tuning: `model.init_from` (a zoo name or a checkpoint) gives the network, its normalisation and its
weights (`resolve_recipe`, `init_weights`); with another class table only the classifier starts afresh, and
`optim.freeze_encoder_epochs` keeps the encoder (weights and BatchNorm statistics) fixed for the first epochs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from msseg_core.checkpoint import CheckpointError, CheckpointMeta, load_meta, save_checkpoint
from msseg_core.classes import IGNORE_INDEX
from msseg_core.evaluation.metrics import ConfusionMatrix
from msseg_core.runtime.segmenter import Segmenter
from msseg_core.training.batches import TrainBatches
from msseg_core.training.distributed import Dist, seed_everything, setup_distributed
from msseg_core.training.ema import weight_ema
from msseg_core.training.log import RunLog
from msseg_core.training.losses import DetailHead, SegmentationLoss, mfb_weights
from msseg_core.training.network import build_network, make_optimizer, unwrap
from msseg_core.training.recipe import Recipe, RecipeError, resolve_recipe, save_recipe
from msseg_core.training.schedule import lr_factor, set_schedule_step
from msseg_core.training.state import load_train_state, rng_state, save_train_state, set_rng_state
from msseg_core.training.sync_bn import convert_group_batchnorm

LAST, BEST, STATE, RECIPE = "last.safetensors", "best.safetensors", "train_state.safetensors", "recipe.yaml"
RAW = "last_raw.safetensors"  # the trained weights when last/best hold their moving average


# --------------------------------------------------------------------------------- epoch functions
def train_one_epoch(model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]], criterion: nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler, ctx: Dist,
                    amp_dtype: torch.dtype | None, grad_clip: float = 0.0, progress=None,
                    channels_last: bool = False, frozen: nn.Module | None = None,
                    ema: torch.optim.swa_utils.AveragedModel | None = None) -> float:
    """One pass over the training batches; returns the mean loss over steps and ranks. `frozen`: a part of
    the model kept in eval mode (its BatchNorm statistics fixed; its parameters are set not to need gradients).
    `ema`: the weights' moving average, updated after every step."""
    model.train()
    if frozen is not None:
        frozen.eval()
    total, steps = torch.zeros((), dtype=torch.float64, device=ctx.device), 0
    for images, masks, *soft in batches:  # soft: the teacher's logits for this crop when distilling
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(ctx.device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
            logits = model(images)
        loss = criterion(logits.float(), masks, *soft)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(unwrap(model))
        total += loss.detach()
        steps += 1
        if progress is not None:
            progress.update(1)
            if steps % 10 == 0:
                progress.set_postfix(loss=f"{total.item() / steps:.4f}")
    loss_sum, count = ctx.all_sum([total.item(), steps])
    if not math.isfinite(loss_sum):
        raise FloatingPointError("training loss is not finite; lower optim.lr or disable train.amp")
    return float(loss_sum / max(count, 1))


@torch.no_grad()
def validate(model: nn.Module, meta: CheckpointMeta, dataset, criterion: nn.Module, ctx: Dist,
             batch_size: int) -> tuple[ConfusionMatrix, float]:
    """Val confusion matrix and loss at full label resolution through a Segmenter (as msseg-eval),
    each rank scoring every world_size-th image; matrices and losses are summed over ranks."""
    from msseg_core.evaluation.evaluate import check_classes, iter_logits

    # backend torch, no BN folding: score the live module itself, without touching its layout or threads
    segmenter = Segmenter(model, meta, device=str(ctx.device), precision="fp32", backend="torch", fuse=False,
                          channels_last=ctx.device.type == "cuda", threads=torch.get_num_threads())
    check_classes(segmenter, dataset)
    cm = ConfusionMatrix(meta.num_classes)
    weight = criterion.weight if criterion.weight is not None else torch.ones(meta.num_classes, device=ctx.device)
    loss_sum = loss_weight = 0.0
    for logits, target in iter_logits(segmenter, dataset, range(ctx.rank, len(dataset), ctx.world_size),
                                      batch_size):
        cm.update(logits.argmax(1), target)
        loss_sum += F.cross_entropy(logits, target, weight=criterion.weight, ignore_index=IGNORE_INDEX,
                                    reduction="sum").item()
        valid = target != IGNORE_INDEX
        loss_weight += weight[target[valid]].sum().item()
    summed = ctx.all_sum(np.concatenate([cm.mat.reshape(-1), [cm.num_images, loss_sum, loss_weight]]))
    n = meta.num_classes
    cm.mat = np.rint(summed[: n * n]).astype(np.int64).reshape(n, n)
    cm.num_images = int(round(summed[n * n]))
    model.train()
    return cm, float(summed[-2] / max(summed[-1], 1e-12))


# ------------------------------------------------------------------------------------------- fit
def _amp_dtype(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    if not recipe.train.amp or device.type != "cuda":
        return None  # autocast on the CPU is slower than fp32 for these convolutions
    return torch.bfloat16 if recipe.train.amp_dtype == "bf16" else torch.float16


def _sync_buffers(modules: Iterable[nn.Module], ctx: Dist) -> None:
    """BatchNorm running stats drift per rank between DDP's broadcasts (and so does their moving average):
    make rank 0's the truth."""
    if ctx.enabled:
        for module in modules:
            for buf in unwrap(module).buffers():
                dist.broadcast(buf, 0)


def fit(recipe: Recipe, out_dir: str | os.PathLike, resume: bool = False, quiet: bool = False) -> nn.Module:
    """Train `recipe` into `out_dir` (or continue it); returns the trained network (unwrapped). What the recipe
    leaves open is filled in first (`resolve_recipe`), and the run's recipe.yaml holds the result."""
    last = Path(out_dir) / LAST
    recipe = resolve_recipe(recipe, last if resume and last.exists() else None)
    ctx = setup_distributed(recipe.train.device)
    try:
        return _fit(recipe, Path(out_dir), resume, quiet, ctx)
    finally:
        if ctx.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _say(ctx: Dist, quiet: bool, text: str) -> None:
    if ctx.is_main and not quiet:
        print(text, flush=True)


@dataclass
class _Run:
    """Everything one training run works with, built by `_prepare`."""

    val_ds: object
    class_names: list[str]
    meta: CheckpointMeta
    model: nn.Module
    batches: TrainBatches
    criterion: SegmentationLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    channels_last: bool = False
    ema: torch.optim.swa_utils.AveragedModel | None = None

    @property
    def shipped(self) -> nn.Module:
        """The network that is validated and written to last/best: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.model


def _prepare(recipe: Recipe, ctx: Dist, quiet: bool, init: bool = True) -> _Run:
    """Datasets, checkpoint metadata, network (from model.init_from when `init`; a resumed run loads its own
    weights instead), loss (with class weights), optimizer, schedule, scaler."""
    from msseg_core.data import build_dataset

    device, t, d = ctx.device, recipe.train, recipe.data
    seed_everything(t.seed)  # the initial weights
    train_ds = build_dataset(d.dataset, d.root, d.train_split)
    val_ds = build_dataset(d.dataset, d.root, d.val_split)
    classes = train_ds.classes
    if val_ds.classes != classes:
        raise RecipeError(f"val split classes {val_ds.classes.names} differ from the train split's {classes.names}")
    _say(ctx, quiet, f"{len(train_ds)} training frames ({d.train_split}), {len(val_ds)} validation frames "
                     f"({d.val_split})")
    meta = CheckpointMeta(model=recipe.model.name, model_args=dict(recipe.model.args), class_names=list(classes.names),
                          palette=[list(c) for c in classes.palette], road_classes=list(classes.road),
                          ground_classes=list(classes.ground or classes.road),
                          input_size=list(d.eval_size), mean=list(d.mean), std=list(d.std), dataset=d.dataset,
                          recipe=recipe.to_dict())
    meta.validate()

    model = build_network(recipe, classes.num_classes, classes.names, init=init,
                          log=lambda line: _say(ctx, quiet, line))
    if recipe.optim.freeze_encoder_epochs and not isinstance(getattr(model, "encoder", None), nn.Module):
        raise RecipeError(f"optim.freeze_encoder_epochs: model {recipe.model.name!r} has no `encoder` to freeze "
                          "(set it to 0)")
    if ctx.enabled and t.sync_bn:  # torch's SyncBatchNorm has CUDA kernels only; on the CPU, ours (sync_bn.py)
        model = (nn.SyncBatchNorm.convert_sync_batchnorm(model) if device.type == "cuda"
                 else convert_group_batchnorm(model))
    model.to(device)
    channels_last = t.channels_last == "on" or (t.channels_last == "auto" and device.type == "cuda")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # measured: 1.3x faster steps for Lite2 on a CPU
    ema = None
    if t.ema_decay > 0:  # copied before the detail head hooks into the model: the copy must not feed it
        ema = weight_ema(model, t.ema_decay)

    batches = TrainBatches(train_ds, recipe, ctx)
    weights = None
    if t.class_weighting in ("mfb", "mfb_sqrt"):  # rank 0 counts, the others receive
        w = mfb_weights(batches.train_masks(), classes.num_classes) if ctx.is_main else np.zeros(classes.num_classes)
        if t.class_weighting == "mfb_sqrt":
            # Full mfb makes a fine-tuned network over-predict rare classes (CamVid val: 73% of its Pole pixels
            # were Building); the square root keeps the ordering at a third of the spread.
            w = np.sqrt(w)
        weights = torch.as_tensor(w, dtype=torch.float32, device=device)
        if ctx.enabled:
            dist.broadcast(weights, 0)
        _say(ctx, quiet, f"{t.class_weighting} class weights: " + ", ".join(
            f"{n} {v:.2f}" for n, v in zip(classes.names, weights.tolist(), strict=True)))
    ce = nn.CrossEntropyLoss(weight=weights, ignore_index=IGNORE_INDEX)
    distill = _distillation(recipe, batches, ce, classes.names, ctx, quiet) if recipe.distill.teacher else None
    detail = _detail_head(model, recipe, device) if recipe.loss.detail_weight > 0 else None
    criterion = SegmentationLoss(ce, recipe.loss.lovasz_weight, detail, recipe.loss.detail_weight, distill)
    optimizer = make_optimizer(model, recipe, detail.parameters() if detail is not None else ())
    warmup = round(recipe.optim.warmup_epochs * batches.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(recipe.optim.schedule, t.epochs * batches.steps, warmup, recipe.optim.poly_power))
    amp_dtype = _amp_dtype(recipe, device)
    if ema is not None:
        _say(ctx, quiet, f"validating and saving the weights' moving average: decay {t.ema_decay}, about "
                         f"{1 / (1 - t.ema_decay) / batches.steps:.1f} epochs of {batches.steps} steps")
    return _Run(val_ds=val_ds, class_names=list(classes.names), meta=meta, model=model, batches=batches,
                criterion=criterion, optimizer=optimizer,
                scheduler=scheduler, scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
                amp_dtype=amp_dtype, channels_last=channels_last, ema=ema)


def _detail_head(model: nn.Module, recipe: Recipe, device: torch.device) -> DetailHead:
    """The training-only boundary head on `loss.detail_layer`, built by one small forward pass."""
    try:
        head = DetailHead(model, recipe.loss.detail_layer)
    except ValueError as exc:
        raise RecipeError(f"loss.detail_layer: {exc}") from None
    was_training = model.training
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 64, 64, device=device))
    model.train(was_training)
    feature = head._feature
    head._feature = None
    if not isinstance(feature, torch.Tensor) or feature.ndim != 4:
        raise RecipeError(f"loss.detail_layer {recipe.loss.detail_layer!r} does not give an N x C x H x W feature")
    head.build(feature.shape[1], device)
    return head


def _distillation(recipe: Recipe, batches: TrainBatches, ce: nn.Module, class_names: Sequence[str], ctx: Dist,
                  quiet: bool) -> nn.Module:
    """Load the teacher, cache its logits for every training image, return the distillation loss."""
    from msseg_core.checkpoint import load_checkpoint
    from msseg_core.training.distill import DistillationLoss, teacher_logits
    from msseg_core.zoo import resolve_checkpoint

    d = recipe.distill
    try:
        teacher, meta = load_checkpoint(resolve_checkpoint(d.teacher), device=ctx.device)
    except (CheckpointError, ValueError, OSError) as exc:
        raise RecipeError(f"distill.teacher {d.teacher!r}: {exc}") from None
    if list(meta.class_names) != list(class_names):
        raise RecipeError(f"distill.teacher {d.teacher!r} predicts {meta.class_names}, the dataset has {class_names}")
    tic = time.perf_counter()
    source = batches.source
    source.set_soft_targets(teacher_logits(teacher, meta, source.images, ctx.device, d.target_scale, tta=d.tta))
    _say(ctx, quiet, f"distilling from {d.teacher} ({meta.model}, tta {d.tta}): teacher logits of {len(source)} "
                     f"images in {time.perf_counter() - tic:.0f} s, weight {d.weight}, temperature {d.temperature}")
    return DistillationLoss(ce, d.weight, d.temperature)


def _fit(recipe: Recipe, out: Path, resume: bool, quiet: bool, ctx: Dist) -> nn.Module:
    if not resume and (out / LAST).exists():
        raise RecipeError(f"{out} already holds a run ({LAST}); pass --resume to continue it or choose another --out")
    if resume and not (out / LAST).exists():
        raise RecipeError(f"--resume: no {LAST} in {out}")
    t = recipe.train
    # Killed after the first epoch's weights but before its training state: only epoch 1 is lost.
    over = resume and not (out / STATE).exists() and load_meta(out / LAST).metrics.get("epoch") == 1
    run = _prepare(recipe, ctx, quiet, init=not resume or over)  # a resumed run has its own weights
    start, best, best_epoch, last_val = 0, -1.0, 0, {}
    if over:
        _say(ctx, quiet, f"warning: {out} has {LAST} but no {STATE} (killed during epoch 1's writes); starting over")
    elif resume:
        start, best, best_epoch, last_val = _restore(out, recipe, run, ctx, quiet)
    if run.meta.trained_on(recipe.data.val_split):
        _say(ctx, quiet, f"note: the val split {recipe.data.val_split!r} is part of the training split "
                         f"{recipe.data.train_split!r}: its scores measure fit; choose on a train-only run")
    encoder = getattr(run.model, "encoder", None)
    model, frozen = None, None
    log = RunLog(out, recipe_yaml(recipe), start, enabled=ctx.is_main)
    if ctx.is_main:
        save_recipe(recipe, out / RECIPE)
    if start >= t.epochs:
        _say(ctx, quiet, f"{out}: already trained {start} of {t.epochs} epochs")
    show_bar = ctx.is_main and not quiet and sys.stderr.isatty()
    try:
        for epoch in range(start + 1, t.epochs + 1):
            tic = time.perf_counter()
            freeze = epoch <= recipe.optim.freeze_encoder_epochs
            if model is None or freeze != (frozen is not None):
                model = None  # a DDP wrapper's gradient hooks go before the next one's are made
                model, frozen = _set_frozen(run.model, encoder, freeze, ctx)
                if freeze or (epoch > 1 and recipe.optim.freeze_encoder_epochs):
                    _say(ctx, quiet, f"encoder frozen for epochs {epoch}-{recipe.optim.freeze_encoder_epochs}"
                         if freeze else f"encoder trained from epoch {epoch} on")
            seed_everything(t.seed, epoch, ctx.rank)  # dropout etc.: the same numbers after a resume
            with tqdm(total=run.batches.steps, desc=f"epoch {epoch}/{t.epochs}", unit="it", disable=not show_bar,
                      leave=False) as bar:
                train_loss = train_one_epoch(model, run.batches.epoch(epoch), run.criterion, run.optimizer,
                                             run.scheduler, run.scaler, ctx, run.amp_dtype, recipe.optim.grad_clip,
                                             progress=bar if show_bar else None, channels_last=run.channels_last,
                                             frozen=frozen, ema=run.ema)
            _sync_buffers([model] + ([run.ema.module] if run.ema is not None else []), ctx)
            row = {"epoch": epoch, "train_loss": train_loss, "lr": run.optimizer.param_groups[0]["lr"]}
            improved = False
            if epoch % t.val_every == 0 or epoch == t.epochs:
                cm, val_loss = validate(run.shipped, run.meta, run.val_ds, run.criterion, ctx, t.val_batch_size)
                last_val = {"val_miou": cm.miou, "val_pixel_acc": cm.pixel_accuracy, "val_loss": val_loss,
                            "per_class_iou": cm.to_dict(run.class_names)["per_class_iou"], "val_epoch": epoch}
                row.update(val_loss=val_loss, val_miou=cm.miou, val_pixel_acc=cm.pixel_accuracy)
                improved = cm.miou > best
                if improved:
                    best, best_epoch = cm.miou, epoch
            row["seconds"] = time.perf_counter() - tic
            if ctx.is_main:
                log.epoch(row, last_val["per_class_iou"] if "val_miou" in row else None)
                _save_epoch(out, run, epoch, improved, best, best_epoch, last_val, ctx)
            _say(ctx, quiet, _summary(row, t.epochs, improved))
            ctx.barrier()
    finally:
        log.close()
    return run.shipped


def _set_frozen(net: nn.Module, encoder: nn.Module | None, freeze: bool,
                ctx: Dist) -> tuple[nn.Module, nn.Module | None]:
    """Freeze the encoder (no gradients: its backward pass is skipped, and the optimizer leaves it alone) or
    let it train again; returns the module to train (DDP wraps it anew: DDP reduces the gradients of the
    parameters that needed them when it was built) and the frozen part (None when nothing is)."""
    if encoder is not None:
        for p in encoder.parameters():
            p.requires_grad_(not freeze)
    frozen = encoder if freeze else None
    if not ctx.enabled:
        return net, frozen
    return nn.parallel.DistributedDataParallel(net, device_ids=[ctx.device.index] if ctx.device.type == "cuda"
                                               else None), frozen


def _save_epoch(out: Path, run: _Run, epoch: int, improved: bool, best: float, best_epoch: int, last_val: dict,
                ctx: Dist) -> None:
    """Log row first (done by the caller), then best (if improved), last, and the training state, each file
    atomically: a kill between any two leaves a run that `--resume` continues without losing a finished epoch
    (best before last: a kill between them must not leave best.safetensors behind for good)."""
    run.meta.metrics = {"epoch": epoch, **last_val, "best_miou": max(best, 0.0), "best_epoch": best_epoch}
    if improved:
        save_checkpoint(out / BEST, run.shipped, run.meta)
    if run.ema is not None:  # not validated: its metrics say only which epoch it is
        save_checkpoint(out / RAW, run.model, dataclasses.replace(run.meta, metrics={
            "epoch": epoch, "weights": f"trained, not averaged ({LAST} holds the average)"}))
    save_checkpoint(out / LAST, run.shipped, run.meta)
    _save_state(out, run, epoch, best, best_epoch, last_val, ctx)


def _save_state(out: Path, run: _Run, epoch: int, best: float, best_epoch: int, last_val: dict, ctx: Dist) -> None:
    """The pickle-free training state (optimizer, schedule, scaler, RNG) that `--resume` needs."""
    save_train_state(out / STATE, {
        "epoch": epoch, "best_miou": best, "best_epoch": best_epoch, "last_val": last_val,
        "world_size": ctx.world_size, "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(), "rng": rng_state(),
        **({"detail_head": run.criterion.detail.state_dict()} if run.criterion.detail is not None else {}),
        **({"raw_model": run.model.state_dict(), "ema_updates": int(run.ema.n_averaged)}
           if run.ema is not None else {})})


def recipe_yaml(recipe: Recipe) -> str:
    import yaml

    return yaml.safe_dump(recipe.to_dict(), sort_keys=False, default_flow_style=None)


def _summary(row: dict, epochs: int, improved: bool) -> str:
    text = f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}"
    if "val_miou" in row:
        text += (f"  val_loss {row['val_loss']:.4f}  val_mIoU {100 * row['val_miou']:.2f}%"
                 f"  pixel_acc {100 * row['val_pixel_acc']:.2f}%")
    text += f"  lr {row['lr']:.3g}  {row['seconds']:.1f}s"
    return text + ("  (best)" if improved else "")


def _restore(out: Path, recipe: Recipe, run: _Run, ctx: Dist, quiet: bool) -> tuple[int, float, int, dict]:
    """Load last.safetensors + train_state into the live objects; returns (epoch, best, best_epoch, last_val)."""
    from safetensors.torch import load_file

    model, optimizer, scheduler, scaler = run.model, run.optimizer, run.scheduler, run.scaler

    meta = load_meta(out / LAST)
    if meta.model != recipe.model.name or meta.model_args != recipe.model.args:
        raise RecipeError(f"--resume: {out / LAST} holds {meta.model} {meta.model_args}, the recipe asks for "
                          f"{recipe.model.name} {recipe.model.args}")
    run.shipped.load_state_dict(load_file(str(out / LAST), device=str(ctx.device)), strict=True)
    state = load_train_state(out / STATE)
    ck_epoch, st_epoch = int(meta.metrics.get("epoch", -1)), int(state["epoch"])
    if ck_epoch not in (st_epoch, st_epoch + 1):
        raise RecipeError(f"--resume: {LAST} is from epoch {ck_epoch} but {STATE} from epoch {st_epoch}")
    detail = run.criterion.detail
    if detail is not None and "detail_head" in state:
        detail.load_state_dict(state["detail_head"])
    elif detail is not None or "detail_head" in state:
        raise RecipeError(f"--resume: {STATE} and the recipe disagree on loss.detail_weight (the detail head)")
    if (run.ema is not None) != ("raw_model" in state):
        raise RecipeError(f"--resume: {STATE} and the recipe disagree on train.ema_decay (whether {LAST} holds "
                          "the weights' moving average)")
    if run.ema is not None:
        model.load_state_dict({k: v.to(ctx.device) for k, v in state["raw_model"].items()}, strict=True)
        run.ema.n_averaged.fill_(int(state["ema_updates"]))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    if ck_epoch == st_epoch + 1:  # killed between the two writes: weights are one epoch newer
        _say(ctx, quiet, f"warning: {STATE} is one epoch older than {LAST}; continuing from epoch {ck_epoch} "
                         "with the older optimizer moments" + (" and trained weights (the average in "
                                                                f"{LAST} is epoch {ck_epoch}'s)" if run.ema else ""))
    # The schedule is a function of the step: re-anchor it (also right when epochs or batch size changed).
    set_schedule_step(scheduler, ck_epoch * run.batches.steps)
    best, best_epoch = float(state["best_miou"]), int(state["best_epoch"])
    if (out / BEST).exists():  # best.safetensors may be newer than the state (killed before the state write)
        bm = load_meta(out / BEST).metrics
        if float(bm.get("val_miou", -1.0)) > best:
            best, best_epoch = float(bm["val_miou"]), int(bm.get("epoch", best_epoch))
    last_val = dict(state.get("last_val") or {})
    if ck_epoch > st_epoch:
        last_val = {k: meta.metrics[k] for k in ("val_miou", "val_pixel_acc", "val_loss", "per_class_iou",
                                                 "val_epoch") if k in meta.metrics}
    if ck_epoch > st_epoch and ctx.is_main:
        # Catch the state up now: a second kill before the next state write must find them one epoch apart.
        _save_state(out, run, ck_epoch, best, best_epoch, last_val, ctx)
    _say(ctx, quiet, f"resuming {out} after epoch {ck_epoch} (best val mIoU {100 * max(best, 0):.2f}% "
                     f"at epoch {best_epoch})")
    return ck_epoch, best, best_epoch, last_val
