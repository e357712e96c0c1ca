"""Checkpoints: one `.safetensors` file holding the weights and, in its header, JSON metadata.

The metadata (model name and arguments, classes, palette, road classes, input size, normalisation,
recipe, metrics) is enough to rebuild the model, so a node or CLI needs no other configuration.
Loading never unpickles: safetensors stores raw tensors, the metadata is plain JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from msseg_core.io import atomic_write
from msseg_core.models import build_model
from msseg_core.splits import splits_overlap

FORMAT = "msseg-checkpoint/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, or does not match the model it describes."""


@dataclass
class CheckpointMeta:
    """Everything needed to rebuild and run a trained network."""

    model: str
    model_args: dict
    class_names: list[str]
    palette: list[list[int]]
    road_classes: list[str]
    input_size: list[int]  # [height, width] the network was trained at
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    dataset: str = ""
    recipe: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    temperature: float = 1.0  # logits are divided by it before softmax (msseg-calibrate fits it)
    ground_classes: list[str] = field(default_factory=list)  # lie on the ground plane; [] = see `ground`

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def trained_on(self, split: str, dataset: str | None = None) -> bool:
        """Whether frames of `split` (a split expression, msseg_core.splits; of `dataset`, default the
        checkpoint's) may have been trained on: a 'train+val' model's val score measures fit, not how it does
        on frames it never saw; 'train:0006R0' is held out from a 'train:-0006R0+val' model."""
        if dataset and self.dataset and dataset != self.dataset:
            return False
        train = str(self.recipe.get("data", {}).get("train_split", ""))
        return bool(train) and splits_overlap(split, train)

    @property
    def ground(self) -> list[str]:
        """The classes that lie on the ground plane (the ground points of msseg_core.ground.points): as
        stored, else those of the dataset's class table when the classes are that table's (checkpoints
        from before the field), else the road classes."""
        if self.ground_classes:
            return list(self.ground_classes)
        from msseg_core.classes import CLASS_SETS

        known = CLASS_SETS.get(self.dataset)
        if known is not None and list(known.names) == list(self.class_names) and known.ground:
            return list(known.ground)
        return list(self.road_classes)

    def validate(self) -> None:
        """Raise CheckpointError on inconsistent metadata, before any model is built from it."""
        n = self.num_classes
        if n < 1:
            raise CheckpointError("checkpoint metadata lists no classes")
        if len(set(self.class_names)) != n:
            raise CheckpointError(f"duplicate class names in checkpoint metadata: {self.class_names}")
        if len(self.palette) != n or any(
            len(c) != 3 or any(not isinstance(v, int) or not 0 <= v <= 255 for v in c) for c in self.palette
        ):
            raise CheckpointError(f"palette must hold {n} RGB triples of 0..255")
        for kind, names in (("road", self.road_classes), ("ground", self.ground_classes)):
            unknown = [r for r in names if r not in self.class_names]
            if unknown:
                raise CheckpointError(f"{kind} classes {unknown} are not among the classes {self.class_names}")
        if len(self.input_size) != 2 or any(not isinstance(v, int) or v < 1 for v in self.input_size):
            raise CheckpointError(f"input_size must be [height, width] > 0, got {self.input_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise CheckpointError("mean and std must have 3 entries, std > 0")
        if not isinstance(self.model_args, dict):
            raise CheckpointError("model_args must be a JSON object")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not 0 < self.temperature < float("inf"):
            raise CheckpointError(f"temperature must be a positive number, got {self.temperature!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CheckpointMeta:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"checkpoint metadata is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise CheckpointError("checkpoint metadata must be a JSON object")
        known = {f.name for f in fields(cls)}
        required = ("model", "model_args", "class_names", "palette", "road_classes", "input_size")
        missing = [k for k in required if k not in data]
        if missing:
            raise CheckpointError(f"checkpoint metadata lacks {missing}")
        meta = cls(**{k: v for k, v in data.items() if k in known})
        meta.validate()
        return meta


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: CheckpointMeta,
                    half: bool = False) -> Path:
    """Save weights + metadata atomically; `half` stores floating weights as fp16 (smaller file)."""
    meta.validate()
    model = getattr(model, "module", model)  # unwrap DDP
    state = {}
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu")
        if half and t.is_floating_point():
            t = t.half()
        state[name] = t.clone().contiguous()  # clone: tied weights must not share storage in the file
    path = Path(path)
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"format": FORMAT, "meta": meta.to_json()}))
    return path


def load_meta(path: str | os.PathLike) -> CheckpointMeta:
    """Read only the metadata (no tensors), e.g. to list classes or validate parameters."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    if header.get("format") != FORMAT or "meta" not in header:
        raise CheckpointError(f"{path} is not an msseg checkpoint (format {header.get('format')!r})")
    return CheckpointMeta.from_json(header["meta"])


def stored_half(path: str | os.PathLike) -> bool:
    """True when every floating tensor in the file is fp16 (re-saving should keep it that small)."""
    with safe_open(str(path), framework="pt") as fh:
        dtypes = {fh.get_slice(k).get_dtype() for k in fh.keys()}  # noqa: SIM118 - safe_open is no dict
    floats = dtypes & {"F16", "BF16", "F32", "F64"}
    return bool(floats) and floats == {"F16"}


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model from the file alone; shapes are checked against the metadata's model."""
    meta = load_meta(path)
    try:
        model = build_model(meta.model, num_classes=meta.num_classes, **meta.model_args)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build model {meta.model!r} from its metadata: {exc}") from None
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"cannot read weights from {path}: {exc}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: weights do not match model {meta.model!r}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    return model.to(device).eval(), meta


def read_meta(spec: str | os.PathLike | None) -> tuple[Path, CheckpointMeta]:
    """The one way from what a user typed (a zoo name, '' for the default model, a .safetensors
    checkpoint or an .onnx export) to its file and metadata, without loading weights: the node's
    parameters, the evaluator, the demo, msseg-bag and the benches all resolve through here."""
    from msseg_core.zoo import resolve_checkpoint

    try:
        path = resolve_checkpoint(spec)
    except (ValueError, FileNotFoundError) as exc:
        raise CheckpointError(str(exc)) from None
    return path, (load_onnx_meta(path) if path.suffix.lower() == ".onnx" else load_meta(path))


# ------------------------------------------------------------------------------- in ONNX files
# The same metadata travels in an ONNX file's metadata_props (msseg-export, msseg-quantize), so a bare
# .onnx file runs in Segmenter and the node as a checkpoint does.
ONNX_FORMAT = "msseg-onnx/1"


def onnx_metadata(meta: CheckpointMeta, extra: dict | None = None) -> dict[str, str]:
    """metadata_props entries: the full metadata JSON, plus readable per-field keys for other tools."""
    props = {
        "msseg.format": ONNX_FORMAT,
        "msseg.meta": meta.to_json(),
        "model": meta.model,
        "class_names": json.dumps(meta.class_names),
        "palette": json.dumps(meta.palette),
        "road_classes": json.dumps(meta.road_classes),
        "mean": json.dumps(meta.mean),
        "std": json.dumps(meta.std),
        "input_size": json.dumps(meta.input_size),
        "input_layout": "NCHW float, (x / 255 - mean) / std, RGB",
    }
    props.update({k: json.dumps(v) for k, v in (extra or {}).items()})
    return props


def meta_from_props(props: dict[str, str], source: str = "ONNX model") -> CheckpointMeta:
    """Rebuild CheckpointMeta from metadata_props (ONNX Runtime's custom_metadata_map is the same dict)."""
    if props.get("msseg.format") != ONNX_FORMAT or "msseg.meta" not in props:
        raise CheckpointError(f"{source} carries no msseg metadata (export it with msseg-export)")
    return CheckpointMeta.from_json(props["msseg.meta"])


def load_onnx_meta(path: str | os.PathLike) -> CheckpointMeta:
    """The metadata embedded in an ONNX file written by `export_onnx`."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX model not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises assorted errors on corrupt files
        raise CheckpointError(f"cannot read ONNX model {path}: {exc}") from None
    return meta_from_props({p.key: p.value for p in proto.metadata_props}, str(path))
