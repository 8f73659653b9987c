"""Every preset and method computes exactly what it computed when the reference was recorded.

The shell around the functional core may be restructured freely; its results may not
change. ``reference/runs.json`` holds fixed-seed accuracy matrices (one CPU thread, torch's
AVX2 kernels); see ``tests/reference_runs.py`` to regenerate it after an intended change of
results.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import pytest

from tests.reference_runs import REFERENCE, fingerprints, pinned_isa_env, reference_configs

CONFIGS = reference_configs()
RECORDED = json.loads(REFERENCE.read_text())


@pytest.fixture(scope="module")
def measured(mnist_root: Path) -> dict[str, Any]:
    return fingerprints(str(mnist_root))


def test_every_reference_run_is_recorded() -> None:
    assert sorted(RECORDED) == sorted(CONFIGS)


def test_every_run_reproduces_its_recorded_accuracy_matrix(measured: dict[str, Any]) -> None:
    changed = sorted(name for name in CONFIGS if measured[name] != RECORDED[name])
    assert not changed, f"these runs' results changed: {changed}"


def test_the_runs_use_avx2_kernels_where_the_cpu_has_them(measured: dict[str, Any]) -> None:
    expected = "AVX2" if pinned_isa_env() else measured["_cpu_capability"]
    assert measured["_cpu_capability"] == expected


@pytest.mark.parametrize(
    ("flags", "pinned"),
    [("fpu sse2 avx avx2 fma avx512f", True), ("fpu sse2 avx fma", False), (None, False)],
)
def test_kernels_are_pinned_to_avx2_only_on_a_cpu_that_has_it(
    tmp_path: Path, flags: str | None, pinned: bool
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    if flags is not None:
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    env = pinned_isa_env(cpuinfo)
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert bool(env) == (pinned and x86)
    if env:
        assert env["ATEN_CPU_CAPABILITY"] == "avx2"
