"""A run says when its numbers cannot mean what they seem to: chance-level tasks, tasks
smaller than a batch, one-class tasks, growth that never triggered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from small_runs import SMALL_ARGS

from eidetic_func.data import load_sequence
from eidetic_func.runner import run_warnings
from eidetic_func.runner.cli import main
from eidetic_func.runner.config import RunConfig


def test_tasks_smaller_than_a_batch_and_one_class_tasks_are_named() -> None:
    sequence = load_sequence("embedded", classes=[(0,), (1, 2)], limit_per_class=20)
    found = run_warnings.data_warnings(RunConfig(batch_size=32), sequence)
    assert len(found) == 2
    assert (
        found[0].startswith("task 0 (")
        and "20 training items, fewer than one batch (32)" in found[0]
    )
    assert "task 0" in found[1] and "one class" in found[1]
    assert run_warnings.data_warnings(RunConfig(batch_size=20), sequence)[1:] == []


def _history(task: int, metrics: list[float], pruned: bool) -> list[dict]:
    rows = [{"task": task, "phase": "train", "metric": m} for m in metrics]
    return rows + ([{"task": task, "phase": "prune", "metric": None}] if pruned else [])


@pytest.mark.parametrize(
    ("metrics", "pruned", "warned"),
    [([0.48, 0.55], True, True), ([0.5, 0.56], True, False), ([0.51], False, True), ([], True, False)],
)  # fmt: skip
def test_a_task_at_chance_level_is_named_with_the_fix(
    metrics: list[float], pruned: bool, warned: bool
) -> None:
    sequence = load_sequence("embedded", classes=[(0, 1), (2, 3)], limit_per_class=5)
    history = _history(1, metrics, pruned) + _history(0, [0.99], True)
    found = run_warnings.chance_warnings(sequence, history)
    assert len(found) == int(warned)
    if warned:
        assert found[0].startswith("task 1 (") and "never left chance level" in found[0]
        assert ("before pruning" in found[0]) == pruned and "--epochs" in found[0]


def test_growth_that_never_triggered_is_named() -> None:
    assert run_warnings.growth_warnings(RunConfig(grow=8), grew=False)[0].startswith("--grow 8")
    assert run_warnings.growth_warnings(RunConfig(grow=8), grew=True) == []
    assert run_warnings.growth_warnings(RunConfig(), grew=False) == []


@pytest.mark.usefixtures("one_thread")
def test_a_runs_warnings_reach_its_results_summary_and_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*SMALL_ARGS, "--num-tasks", "2", "--no-router", "--batch-size", "400", "--grow", "4"]
    assert main(["run", *args, "--output-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    warnings = results["warnings"]
    assert sum("300 training items, fewer than one batch (400)" in w for w in warnings) == 2
    assert any(w.startswith("--grow 4 never triggered") for w in warnings)
    err = capsys.readouterr().err
    assert all(f"eidetic-func: warning: {w}" in err for w in warnings)
    assert "**Warnings**" in (tmp_path / "summary.md").read_text()
