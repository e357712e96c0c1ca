"""The network a run trains: built from the registry, its encoder from ImageNet, or started from a trained
checkpoint (every weight that fits; a new classifier when the classes differ); and its optimizer's groups."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from msseg_core.training.recipe import Recipe, RecipeError, init_meta, resolve_recipe


def make_optimizer(model: nn.Module, recipe: Recipe, extra: Iterable[nn.Parameter] = ()) -> torch.optim.Optimizer:
    """adam / adamw / sgd over every trainable parameter; no weight decay on norms and biases; a pretrained
    encoder's parameters (`model.encoder`) at `optim.encoder_lr_mult` times the learning rate, so fine-tuning
    adapts its ImageNet features instead of overwriting them while the random decoder is still poor.
    `extra`: training-only parameters (the detail head), at the decoder's rate."""
    o = recipe.optim
    encoder = getattr(unwrap(model), "encoder", None)
    in_encoder = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in [*model.parameters(), *extra]:
        if p.requires_grad:
            buckets.setdefault((id(p) in in_encoder, p.ndim > 1), []).append(p)
    groups = [{"params": params, "weight_decay": o.weight_decay if decay else 0.0,
               "lr": o.lr * (o.encoder_lr_mult if enc else 1.0)}
              for (enc, decay), params in sorted(buckets.items())]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0)
    return {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[o.name](groups, lr=o.lr)


def build_network(recipe: Recipe, num_classes: int, class_names: Sequence[str] | None = None, init: bool = True,
                  log: Callable[[str], None] | None = None) -> nn.Module:
    """Registry model (+ optional local VGG16 encoder weights, which never go into model.args), started from
    `model.init_from` when `init` (see `init_weights`; `log` gets its one line)."""
    from msseg_core.models import build_model

    if init or not recipe.model.name:
        recipe = resolve_recipe(recipe)  # (fit passes a resolved recipe; a resumed run's init file may be gone)
    try:
        model = build_model(recipe.model.name, num_classes=num_classes, **recipe.model.args)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"model.args {recipe.model.args} do not fit model {recipe.model.name!r}: {exc}") from None
    if recipe.model.encoder_weights:
        from msseg_core.models.encoders import load_encoder_weights

        try:
            load_encoder_weights(model, recipe.model.encoder_weights)
        except (TypeError, ValueError, OSError) as exc:
            raise RecipeError(f"model.encoder_weights {recipe.model.encoder_weights!r}: {exc}") from None
    if recipe.model.init_from and init:
        line = init_weights(model, recipe, num_classes, class_names)
        if log is not None:
            log(line)
    return model


def _class_dependent(recipe: Recipe, num_classes: int) -> set[str]:
    """Names of the tensors whose shape follows the number of classes (the classifier), found by building the
    network for one class more, without memory (meta device)."""
    from msseg_core.models import build_model

    shapes = []
    for n in (num_classes, num_classes + 1):
        try:
            with torch.device("meta"):
                net = build_model(recipe.model.name, num_classes=n, **recipe.model.args)
        except (NotImplementedError, RuntimeError):  # a builder that needs real tensors
            net = build_model(recipe.model.name, num_classes=n, **recipe.model.args)
        shapes.append({k: tuple(v.shape) for k, v in net.state_dict().items()})
    return {k for k, shape in shapes[0].items() if shapes[1].get(k) != shape}


def _small_classifier(model: nn.Module, fresh: set[str]) -> None:
    """A re-initialised classifier layer (a dense convolution or linear layer whose output is the classes) starts
    with N(0, 0.01) weights and zero bias: near-uniform scores (loss ln C), so the first steps' gradients
    adapt the trained features instead of fighting a confidently wrong classifier (He init gave a loss of 4.4
    for 4 classes). Depthwise layers (a fixed bilinear upsampler per class) keep their own initialisation."""
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and f"{name}.weight" in fresh \
                    and getattr(m, "groups", 1) == 1:
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


def init_weights(model: nn.Module, recipe: Recipe, num_classes: int, class_names: Sequence[str] | None = None) -> str:
    """Start from a trained msseg checkpoint (`model.init_from`: a zoo name or a path); returns the one line
    that says what was kept.

    Every tensor whose name and shape fit is loaded. When the class table differs from the checkpoint's
    (other names, order or number; `class_names` None: the same when the number is), the tensors whose shape
    follows the number of classes (the classifier) keep their fresh initialisation, as do the tensors under
    `model.init_fresh` (layers the recipe adds or reshapes). Any other tensor that does not fit means another
    network: a one-line RecipeError, never a silent partial load.
    """
    from safetensors.torch import load_file

    from msseg_core.zoo import resolve_checkpoint

    recipe = resolve_recipe(recipe)
    spec = recipe.model.init_from
    meta = init_meta(spec)
    try:
        trained = load_file(str(resolve_checkpoint(spec)), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise RecipeError(f"model.init_from {spec!r}: cannot read its weights: {exc}") from None
    same_classes = (meta.num_classes == num_classes if class_names is None
                    else list(class_names) == list(meta.class_names))
    classifier = set() if same_classes else _class_dependent(recipe, num_classes)
    ours = model.state_dict()
    prefixes = tuple(recipe.model.init_fresh)

    def own_init(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    kept, fresh, own, misfit = {}, [], [], []
    for name, tensor in ours.items():
        theirs = trained.get(name)
        if name in classifier:
            fresh.append(name)
        elif own_init(name):
            own.append(name)
        elif theirs is not None and theirs.shape == tensor.shape:
            kept[name] = theirs.to(tensor.dtype)
        else:
            misfit.append(name if theirs is None else f"{name} {tuple(theirs.shape)} -> {tuple(tensor.shape)}")
    misfit += [f"{n} (not in the recipe's network)" for n in sorted(set(trained) - set(ours) - classifier)
               if not own_init(n)]
    if misfit:
        raise RecipeError(
            f"model.init_from {spec!r} holds {meta.model} {meta.model_args}, the recipe builds {recipe.model.name} "
            f"{recipe.model.args}: another architecture, {len(misfit)} tensors do not fit ({', '.join(misfit[:3])}"
            f"{', ...' if len(misfit) > 3 else ''})")
    model.load_state_dict(kept, strict=False)
    _small_classifier(model, set(fresh))
    line = f"init from {spec}: {len(kept)} of {len(ours)} tensors kept"
    if own:
        line += f"; {len(own)} under model.init_fresh ({', '.join(prefixes)}) start from their own initialisation"
    if fresh:
        line += (f"; re-initialised: {', '.join(fresh)} (classes differ: {meta.num_classes} -> {num_classes}"
                 f"{'' if meta.num_classes != num_classes else ', other names'})")
    return line


def unwrap(model: nn.Module) -> nn.Module:
    """The network itself, out of a DistributedDataParallel wrapper."""
    return getattr(model, "module", model)
