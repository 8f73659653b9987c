"""Hypothesis profiles: ``ci`` (default, small and fast) and ``long`` (thorough).

Select with ``EIDETIC_HYPOTHESIS_PROFILE=long pytest``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from tests.torchvision_files import patched_checksums, write_data_root

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


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test: tiny models gain nothing from a second, and it costs
    a lot (spinning OpenMP workers) when the cores are shared with other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A data root holding MNIST and FashionMNIST's original ``.gz`` files in torchvision's
    layout, written from the embedded subset (``tests/torchvision_files.py``); torchvision's
    md5 tables name the written files while the session lasts. Nothing outside the clone."""
    root = tmp_path_factory.mktemp("data")
    with patched_checksums(write_data_root(root)):
        yield root
