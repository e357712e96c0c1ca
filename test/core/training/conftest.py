"""The small generated CamVid that the real training runs of this folder train and validate on (a module may
set CAMVID_TRAIN_FRAMES to train on fewer frames)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def camvid_root(tmp_path_factory, request) -> Path:
    from fake_datasets import write_fake_camvid

    root = tmp_path_factory.mktemp("camvid")
    write_fake_camvid(root, "train", n=getattr(request.module, "CAMVID_TRAIN_FRAMES", 12), size=(32, 48), seed=0)
    write_fake_camvid(root, "val", n=4, size=(32, 48), seed=1)
    return root
