"""Shared test setup: every test run talks DDS on a domain of its own, on this host only.

The domain is taken, never inherited: a developer's ROS_DOMAIN_ID may be the one a robot uses, so it
is never used here. Of the domains 1..101 (the ones every DDS port layout allows), the run takes the
first that no other test run on this host holds (an exclusive lock file per domain, held until pytest
exits), so two concurrent runs cannot collide; discovery stays on this host. Subprocess nodes inherit
the environment, so a test and the nodes it starts share the domain. Topics of one test go under a
namespace unique to the run as well (helpers_ros.namespace).

Tiers (markers, registered in pyproject.toml): `ros` marks tests of msseg_ros and anything else that
needs rclpy, DDS or rosbag2 (a whole module with `pytestmark`); `slow` marks tests of more than about
ten seconds here (training runs, killed processes). `make test-fast` runs the rest, msseg_core's quick
tests, so a change to a model or a transform gets an answer in a minute or two; `make test` (CI) runs
everything.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

import pytest


def _take_domain() -> int:
    """A free ROS domain id for this run (see the module docstring); the lock lives as long as pytest."""
    developer = os.environ.get("ROS_DOMAIN_ID", "").strip()
    lock_dir = Path(tempfile.gettempdir()) / "msseg_test_domains"
    lock_dir.mkdir(exist_ok=True)
    start = os.getpid() % 101
    for k in range(101):
        domain = 1 + (start + k) % 101
        if str(domain) == developer:
            continue
        handle = open(lock_dir / f"{domain}.lock", "w")  # noqa: SIM115 - held until the process exits
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _HELD.append(handle)
        return domain
    raise RuntimeError(f"every ROS domain 1..101 is held by another test run (locks in {lock_dir})")


_HELD: list = []
os.environ["ROS_DOMAIN_ID"] = str(_take_domain())
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.pop("ROS_STATIC_PEERS", None)
os.environ["MSSEG_TEST_RUN_ID"] = f"r{os.getpid()}"
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
    """The programs set torch's process-wide thread count (configure_process: every core by default), and
    some tests run them in this process; every test starts from one thread, the fast setting on small
    shared machines."""
    import torch

    torch.set_num_threads(1)
    yield
