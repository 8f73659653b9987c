"""The reference runs: exact guarantees on every machine, exact results on the recording one.

``reference/runs.json`` holds every run's visits, accuracy matrix and router, the
fingerprint of the machine that recorded them, and the cross-machine tolerance of each
run's summary statistics (see ``tests/reference_runs.py``; regenerate it only for an
intended change of results).
"""

from __future__ import annotations

import copy
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from shared_once import computed_once

from tests.reference_runs import (
    REFERENCE,
    compare,
    differences,
    freezes,
    machine_fingerprint,
    measure,
    reference_configs,
    statistics_of,
)

CONFIGS = reference_configs()
RECORDED = json.loads(REFERENCE.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every run measured twice: in two fresh interpreters, in opposite orders.

    The two interpreters run at once (each on one thread, as ``measure`` sets): they share
    nothing, so the order of either's draws and operations is what it is alone, and the
    tests wait for the slower one instead of the sum of both."""
    forward, backward = computed_once(tmp_path_factory, "reference_runs", _both_orders)
    return forward, backward


def _both_orders() -> tuple[dict[str, Any], dict[str, Any]]:
    with ThreadPoolExecutor(2) as pool:
        forward, backward = pool.submit(measure), pool.submit(measure, reverse=True)
        return forward.result(), backward.result()


def test_every_reference_run_is_recorded_with_its_tolerance() -> None:
    assert sorted(RECORDED["runs"]) == sorted(CONFIGS)
    assert sorted(RECORDED["tolerance"]) == sorted(CONFIGS)
    assert RECORDED["machine"].keys() == machine_fingerprint().keys()


def test_the_same_run_twice_is_identical_to_the_last_bit(
    runs: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    first, second = runs
    changed = sorted(name for name in CONFIGS if first[name] != second[name])
    assert not changed, f"not deterministic (or dependent on what ran before): {changed}"


def test_finished_tasks_never_change_under_the_methods_that_freeze(
    runs: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    """Backward transfer 0, exactly: between two visits of a task, its column is constant."""
    frozen = [name for name, config in CONFIGS.items() if freezes(config)]
    assert len(frozen) >= 11  # EideticNet's modes, PackNet, progressive, the presets
    for name in frozen:
        visits, matrix = runs[0][name]["visits"], runs[0][name]["matrix"]
        for row, task in enumerate(visits):
            later = [r for r, t in enumerate(visits) if t == task and r > row]
            until = later[0] if later else len(matrix)
            column = [matrix[r][task] for r in range(row, until)]
            assert len(set(column)) == 1, f"{name}: task {task} changed after visit {row}"


def test_the_matrix_and_the_router_have_the_shape_of_the_run(
    runs: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    for name, config in CONFIGS.items():
        measured = runs[0][name]
        tasks = config.num_tasks or 5  # the embedded default is Split-MNIST 5x2
        assert measured["visits"] == list(range(tasks)) * config.cycles, name
        assert all(len(row) == tasks for row in measured["matrix"]), name
        assert all(0.0 <= a <= 1.0 for row in measured["matrix"] for a in row), name
        if measured["router"] is not None:
            assert config.router, name
            assert set(measured["router"]) == {
                "task_accuracy",
                "class_incremental_accuracy",
                "oracle_task_incremental_accuracy",
            }, name


def test_recorded_results_hold_exactly_here_or_within_tolerance_on_another_machine(
    runs: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    exact, changed = compare(RECORDED, runs[0])
    how = "to the last digit" if exact else "within the recorded tolerance (another machine)"
    assert not changed, f"these runs' results changed ({how}): {changed}"


# --------------------------------------------------------------------------- the comparison


def _one_run(accuracy: float) -> dict[str, Any]:
    return {"visits": [0, 1], "matrix": [[accuracy, 0.5], [accuracy, 0.7]], "router": None}


def test_exact_comparison_names_a_run_that_moved_by_one_image() -> None:
    reference = {"runs": {"a": _one_run(0.9)}, "tolerance": {"a": {"average_accuracy": 0.1}}}
    moved = {"a": _one_run(0.905)}
    assert differences(reference, moved, exact=True) == {"a": "results differ"}
    assert differences(reference, moved, exact=False) == {}  # within tolerance elsewhere
    assert differences(reference, {"a": _one_run(0.9)}, exact=True) == {}


def test_tolerant_comparison_names_a_statistic_beyond_its_tolerance() -> None:
    reference = {"runs": {"a": _one_run(0.9)}, "tolerance": {"a": {"average_accuracy": 0.1}}}
    far = {"a": _one_run(0.6)}  # average accuracy 0.65 against 0.8
    assert "average_accuracy 0.6500 against 0.8000" in differences(reference, far, exact=False)["a"]
    assert differences(reference, {}, exact=False) == {"a": "not measured"}
    assert statistics_of(_one_run(0.9)) == {"average_accuracy": pytest.approx(0.8)}


def test_results_are_compared_exactly_only_on_the_machine_that_recorded_them() -> None:
    here = {"runs": {"a": _one_run(0.9)}, "tolerance": {"a": {"average_accuracy": 0.1}}}
    here["machine"] = machine_fingerprint()
    moved = {"a": _one_run(0.905)}
    assert compare(here, moved) == (True, {"a": "results differ"})
    for field in here["machine"]:
        elsewhere = copy.deepcopy(here)
        elsewhere["machine"][field] = "another"
        assert compare(elsewhere, moved) == (False, {}), field


@pytest.mark.parametrize(
    ("model", "flags"),
    [("family 25 model 1", "fpu avx2 fma"), ("family 25 model 17", "fpu avx2 fma avx512f")],
)
def test_the_fingerprint_tells_processors_apart(tmp_path: Path, model: str, flags: str) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    family, number = model.split()[1], model.split()[3]
    cpuinfo.write_text(
        f"processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\nmodel\t\t: "
        f"{number}\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n\nprocessor\t: 1\n"
    )
    fingerprint = machine_fingerprint(cpuinfo)
    assert fingerprint["cpu"] == "AMD EPYC"
    assert f"model={number}" in fingerprint["cpu_id"]
    other = tmp_path / "other"
    other.write_text(cpuinfo.read_text().replace(flags, flags + " sha_ni"))
    assert machine_fingerprint(other)["cpu_flags_sha256"] != fingerprint["cpu_flags_sha256"]
