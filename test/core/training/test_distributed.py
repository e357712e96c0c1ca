"""DDP on the CPU (gloo): two ranks launched like torchrun (RANK / WORLD_SIZE / MASTER_* in the
environment) end with identical weights, rank 0 alone writes one set of checkpoints and logs, the validation
confusion matrices are summed over the ranks' shards, and `train.sync_bn` shares BatchNorm's batch statistics
across the ranks. The loader run also keeps the weights' moving average (train.ema_decay), whose BatchNorm
statistics must agree across the ranks too."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers_ddp import free_port
from safetensors.torch import load_file, save_file

PIPELINES = ("gpu_resident", "loader")
RECIPE = """
model: {name: mssanet, args: {width: 0.0625, num_pools: 3}}
data: {root: DATA, crop_size: [32, 48], eval_size: [32, 48], scale_range: [0.75, 1.25], pipeline: PIPELINE,
       workers: 0}
optim: {name: adamw, lr: 0.01, schedule: poly}
train: {epochs: 2, batch_size: 2, val_batch_size: 2, class_weighting: mfb, device: cpu, sync_bn: true, ema_decay: EMA}
"""
EMA = {"gpu_resident": 0.0, "loader": 0.5}


def worker(rank: int, world: int, ports: list[int], tmp: str) -> None:
    """One rank, as torchrun would start it; saves the weights it ends with."""
    torch.set_num_threads(1)
    from msseg_core.training.recipe import load_recipe
    from msseg_core.training.train import fit

    for pipeline, port in zip(PIPELINES, ports, strict=True):
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        recipe = load_recipe(Path(tmp) / f"{pipeline}.yaml")
        model = fit(recipe, Path(tmp) / pipeline, quiet=True)
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(Path(tmp) / f"{pipeline}_rank{rank}.safetensors"))
        norms = {type(m).__name__ for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
        (Path(tmp) / f"{pipeline}_rank{rank}_norms.txt").write_text(" ".join(sorted(norms)))


pytestmark = pytest.mark.slow  # real DDP runs (two processes)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    from fake_datasets import write_fake_camvid

    tmp = tmp_path_factory.mktemp("ddp")
    data = write_fake_camvid(tmp / "data", "train", n=9, size=(32, 48), seed=0)  # 9: ranks get padded shards
    write_fake_camvid(data, "val", n=5, size=(32, 48), seed=1)  # 5: shards of 3 and 2 images
    for pipeline in PIPELINES:
        (tmp / f"{pipeline}.yaml").write_text(RECIPE.replace("DATA", str(data)).replace("PIPELINE", pipeline)
                                                  .replace("EMA", str(EMA[pipeline])))
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS",)}
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        mp.spawn(worker, args=(2, [free_port(), free_port()], str(tmp)), nprocs=2, join=True)
    finally:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return tmp, data


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_ranks_end_identical_with_one_set_of_checkpoints(ddp_runs, pipeline):
    tmp, _ = ddp_runs
    a = load_file(str(tmp / f"{pipeline}_rank0.safetensors"))
    b = load_file(str(tmp / f"{pipeline}_rank1.safetensors"))
    assert a.keys() == b.keys()
    for k in a:  # parameters and BatchNorm buffers
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    last = load_file(str(tmp / pipeline / "last.safetensors"))
    for k in a:
        torch.testing.assert_close(last[k], a[k], rtol=0, atol=0, msg=k)
    out = tmp / pipeline
    names = sorted(p.name for p in out.iterdir())
    raw = ["last_raw.safetensors"] if EMA[pipeline] else []
    assert names == sorted(["best.safetensors", "curves.png", "last.safetensors", "metrics.csv", "recipe.yaml",
                            "tensorboard", "train_state.safetensors", *raw])
    assert len(list((out / "tensorboard").iterdir())) == 1
    with open(out / "metrics.csv", newline="") as fh:
        assert [r["epoch"] for r in csv.DictReader(fh)] == ["1", "2"]


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_sync_bn_shares_batch_statistics_across_cpu_ranks(ddp_runs, pipeline):
    """train.sync_bn on gloo: every BatchNorm of the trained network normalised over both ranks' crops."""
    tmp, _ = ddp_runs
    for rank in (0, 1):
        assert (tmp / f"{pipeline}_rank{rank}_norms.txt").read_text() == "GroupBatchNorm2d"


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_val_metrics_cover_the_whole_split(ddp_runs, pipeline):
    """The logged mIoU equals a single-process evaluation of the saved model on all val images."""
    from msseg_core.data import build_dataset
    from msseg_core.evaluation.evaluate import evaluate_split
    from msseg_core.runtime.segmenter import Segmenter

    tmp, data = ddp_runs
    seg = Segmenter.from_checkpoint(tmp / pipeline / "last.safetensors", device="cpu", backend="torch", fuse=False,
                                    threads=1)
    cm = evaluate_split(seg, build_dataset("camvid", data, "val"))
    with open(tmp / pipeline / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[-1]["val_miou"]) == pytest.approx(cm.miou, abs=1e-9)
    assert float(rows[-1]["val_pixel_acc"]) == pytest.approx(cm.pixel_accuracy, abs=1e-9)
