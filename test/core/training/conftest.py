"""The small generated CamVid that the real training runs of this folder train and validate on."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def camvid_root(tmp_path_factory) -> Path:
    from fake_datasets import write_fake_camvid

    root = tmp_path_factory.mktemp("camvid")
    write_fake_camvid(root, "train", n=12, size=(32, 48), seed=0)
    write_fake_camvid(root, "val", n=4, size=(32, 48), seed=1)
    return root
