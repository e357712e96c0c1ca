"""Checkpoints rebuild their model from the file alone, never unpickle, and are written atomically."""

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from msseg_core import checkpoint as ckpt
from msseg_core.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint, load_meta, save_checkpoint


def test_round_trip_rebuilds_identical_model(tiny_checkpoint):
    model, meta = load_checkpoint(tiny_checkpoint)
    again, meta2 = load_checkpoint(tiny_checkpoint)
    assert meta == meta2
    assert meta.class_names[3] == "Road" and meta.road_classes == ["Road"]
    x = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), again(x))
    # The file holds every tensor of the model built from its own metadata.
    rebuilt_keys = set(model.state_dict())
    with torch.no_grad():
        state = {k: v.clone() for k, v in model.state_dict().items()}
    assert rebuilt_keys == set(state)


def test_saved_weights_equal_the_trained_ones(tmp_path, tiny_checkpoint):
    model, meta = load_checkpoint(tiny_checkpoint)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    path = save_checkpoint(tmp_path / "changed.safetensors", model, meta)
    loaded, _ = load_checkpoint(path)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)


def test_a_saved_checkpoint_is_readable_by_other_users(tmp_path, tiny_checkpoint):
    """An ordinary file (0644 under the usual umask), not the 0600 of the temporary file it was written to:
    a model trained by one account is loaded by the robot's."""
    import os

    model, meta = load_checkpoint(tiny_checkpoint)
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "shared.safetensors", model, meta)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_half_precision_file_is_smaller_and_close(tmp_path, tiny_checkpoint):
    model, meta = load_checkpoint(tiny_checkpoint)
    half = save_checkpoint(tmp_path / "half.safetensors", model, meta, half=True)
    assert half.stat().st_size < 0.7 * tiny_checkpoint.stat().st_size
    loaded, _ = load_checkpoint(half)
    for a, b in zip(model.parameters(), loaded.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-2)


def test_loading_never_unpickles(monkeypatch, tiny_checkpoint):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used on a load path")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model, meta = load_checkpoint(tiny_checkpoint)
    assert meta.model == "mssanet"


def test_failed_write_leaves_previous_file_intact(monkeypatch, tmp_path, tiny_checkpoint):
    model, meta = load_checkpoint(tiny_checkpoint)
    before = tiny_checkpoint.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(OSError):
        save_checkpoint(tiny_checkpoint, model, meta)
    assert tiny_checkpoint.read_bytes() == before
    assert [p.name for p in tiny_checkpoint.parent.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "cannot read"),
        (b"\x00" * 64, "cannot read"),
        (b"not a safetensors file at all", "cannot read"),
    ],
)
def test_corrupt_files_give_a_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_missing_file_and_foreign_safetensors_are_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_meta(tmp_path / "nope.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not an msseg checkpoint"):
        load_meta(foreign)


def test_weights_that_do_not_match_the_metadata_are_rejected(tmp_path, tiny_checkpoint):
    meta = load_meta(tiny_checkpoint)
    meta.model_args = {**meta.model_args, "width": meta.model_args["width"] * 2}
    model, _ = load_checkpoint(tiny_checkpoint)
    path = tmp_path / "liar.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": ckpt.FORMAT, "meta": meta.to_json()})
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(path)


def _meta(**overrides) -> CheckpointMeta:
    base = dict(model="mssanet", model_args={}, class_names=["a", "road"], palette=[[0, 0, 0], [1, 2, 3]],
                road_classes=["road"], input_size=[8, 8])
    return CheckpointMeta(**{**base, **overrides})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"road_classes": ["lane"]}, "road classes"),
        ({"palette": [[0, 0, 0]]}, "palette"),
        ({"palette": [[0, 0, 0], [256, 0, 0]]}, "palette"),
        ({"input_size": [0, 8]}, "input_size"),
        ({"class_names": ["a", "a"], "road_classes": []}, "duplicate"),
        ({"std": [0.0, 1.0, 1.0]}, "std"),
    ],
)
def test_metadata_is_validated(overrides, message):
    with pytest.raises(CheckpointError, match=message):
        _meta(**overrides).validate()


def test_metadata_json_round_trip_and_missing_keys():
    meta = _meta()
    assert CheckpointMeta.from_json(meta.to_json()) == meta
    data = json.loads(meta.to_json())
    del data["class_names"]
    with pytest.raises(CheckpointError, match="lacks"):
        CheckpointMeta.from_json(json.dumps(data))
    with pytest.raises(CheckpointError, match="JSON"):
        CheckpointMeta.from_json("{oops")
