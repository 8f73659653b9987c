"""Hypothesis profiles: ``ci`` (default, small and fast) and ``long`` (thorough).

Select with ``EIDETIC_HYPOTHESIS_PROFILE=long pytest``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("EIDETIC_HYPOTHESIS_PROFILE", "ci"))

# Under pytest-xdist each worker gets one thread, so workers do not oversubscribe the cores.
torch.set_num_threads(
    1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads())
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test: tiny models gain nothing from a second, and it costs
    a lot (spinning OpenMP workers) when the cores are shared with other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of ``../shared/data`` MNIST/FashionMNIST (torchvision layout)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the verified datasets are expected at {SHARED_DATA}")
    root = tmp_path_factory.mktemp("data")
    for name in ("MNIST", "FashionMNIST"):
        shutil.copytree(SHARED_DATA / name, root / name)
    return root
