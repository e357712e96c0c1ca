"""Shared test setup: every pytest process talks DDS on its own domain, on this host only.

Subprocess nodes inherit the environment, so a test and the node it starts share the domain while
concurrent test runs (CI, developers) cannot see each other's topics.
"""

import os
import tempfile

import pytest

os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_LOG_DIR", os.path.join(tempfile.gettempdir(), "msseg_test_ros_logs"))
os.environ.setdefault("MPLBACKEND", "Agg")
# One OpenMP thread per process: tests run a node subprocess next to pytest on small machines, where
# two processes of two spinning threads each on two cores run tiny convolutions ~10x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def ros_domain_id() -> int:
    """The DDS domain this test session (and the nodes it starts) uses."""
    return int(os.environ["ROS_DOMAIN_ID"])


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """Path of a tiny CamVid checkpoint (test/tiny_model.py) shared by the whole session."""
    from tiny_model import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Segmenter and the trainer set torch's process-wide thread count (to every core by default);
    every test starts from one thread, the fast setting on small shared machines."""
    import torch

    torch.set_num_threads(1)
    yield
