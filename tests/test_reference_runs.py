"""Every preset and method computes exactly what it computed when the reference was recorded.

The shell around the functional core may be restructured freely; its results may not
change. ``reference/runs.json`` holds fixed-seed accuracy matrices (one CPU thread); see
``tests/reference_runs.py`` to regenerate it after an intended change of results.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reference_runs import REFERENCE, fingerprint, needs_data_root, reference_configs

CONFIGS = reference_configs()
RECORDED = json.loads(REFERENCE.read_text())


def test_every_reference_run_is_recorded() -> None:
    assert sorted(RECORDED) == sorted(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_run_reproduces_its_recorded_accuracy_matrix(
    name: str, request: pytest.FixtureRequest
) -> None:
    config = CONFIGS[name]
    root: Path | None = request.getfixturevalue("mnist_root") if needs_data_root(config) else None
    measured = fingerprint(config, None if root is None else str(root))
    assert measured == RECORDED[name], f"{name}: the run's results changed"
