"""End to end on real data: whole sequences, the CLI, revisits, the router, crash and resume."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from small_runs import SMALL_ARGS

import eidetic_func as ef
from benchmarks import run_snapshot
from eidetic_func.methods.eidetic import EideticNet
from eidetic_func.runner import loop, sequence
from eidetic_func.runner.cli import main
from eidetic_func.runner.config import RunConfig
from eidetic_func.runner.sequence import run
from eidetic_func.training.config import TrainConfig

pytestmark = pytest.mark.slow

SMALL = RunConfig(
    dataset="embedded",
    limit_per_class=60,
    model="mlp",
    width=48,
    batch_size=32,
    train=TrainConfig(max_epochs=3, patience=1),
    eidetic=EideticNet(pruning_step=0.25, tolerance=0.02, max_recovery_epochs=1, score_batches=4),
    progress=False,
)


# the fixed schedule prunes every task of these tiny runs (the adaptive one may undo a
# task's only step), which these tests of pruned tasks need
FIXED = dataclasses.replace(
    SMALL, eidetic=dataclasses.replace(SMALL.eidetic, pruning_schedule="fixed")
)


def _quiet(*_: object) -> None:
    pass


def test_every_task_keeps_its_accuracy_exactly_until_the_end_of_the_sequence() -> None:
    result = run(SMALL, log=_quiet)
    n = len(result.task_names)
    for t in range(n):
        assert result.matrix[t][t] == result.after_finish[t][0]
        for later in range(t, n):
            assert result.matrix[later][t] == result.matrix[t][t], f"task {t} changed"
    assert result.summary["backward_transfer"] == 0.0
    assert result.summary["forgetting"] == 0.0
    assert result.summary["average_accuracy"] > 0.8
    assert result.router is not None and 0.0 <= result.router["class_incremental_accuracy"] <= 1.0
    assert result.router["oracle_task_incremental_accuracy"] == pytest.approx(
        sum(result.final) / n, abs=0.01
    )


def test_with_the_router_every_real_task_is_pruned_and_the_router_takes_what_is_left() -> None:
    result = run(dataclasses.replace(FIXED, num_tasks=2), log=_quiet)
    n = len(result.task_names)
    pruned = {h["task"] for h in result.history if h["phase"] == "prune"}
    assert pruned == set(range(n)), "every real task, the last one included, is pruned"
    assert result.capacity is not None
    owned = result.capacity["owned"]
    assert int(owned[str(n)]) > 0, "the router (the last task) owns the capacity left to it"
    assert result.capacity["free"] == 0 and result.capacity["pruned"] == 0


def test_a_holdout_decides_when_to_stop_and_shrinks_the_training_data() -> None:
    config = dataclasses.replace(SMALL, num_tasks=2, holdout=0.25, router=True)
    result = run(config, log=_quiet)
    epochs = [h for h in result.history if h["phase"] in ("train", "recover")]
    assert epochs and all("train_metric" in h for h in epochs)
    assert any(h["metric"] != h["train_metric"] for h in epochs)
    assert result.summary["backward_transfer"] == 0.0
    assert result.router is not None


def test_split_mnist_from_a_data_root_in_torchvision_layout(mnist_root: Path) -> None:
    """The sequence read from ``.gz`` files (written from the embedded subset) trains."""
    config = RunConfig(
        **{
            **SMALL.__dict__,
            "dataset": "split-mnist",
            "data_root": str(mnist_root),
            "limit_per_class": 150,
            "router": False,
        }
    )
    result = run(config, log=_quiet)
    for t in range(5):
        assert result.final[t] == result.after_finish[t][0]
    assert result.summary["average_accuracy"] > 0.8


def test_cyclical_revisits_retrain_a_task_and_leave_the_others_bit_identical() -> None:
    config = RunConfig(**{**SMALL.__dict__, "cycles": 2, "router": False})
    result = run(config, log=_quiet)
    n = len(result.task_names)
    assert len(result.matrix) == 2 * n
    for visit in range(n, 2 * n):
        task = result.visits[visit]
        before, after = result.matrix[visit - 1], result.matrix[visit]
        for other in range(n):
            if other != task:
                assert after[other] == before[other], f"revisiting {task} changed task {other}"
    assert all(len(v) == 2 for v in result.after_finish.values())


def test_the_cli_runs_and_writes_results_history_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["run", *SMALL_ARGS, "--output-dir", str(out)]) == 0
    for name in (
        "results.json",
        "history.csv",
        "summary.md",
        "accuracy_matrix.png",
        "capacity.png",
        "checkpoint.safetensors",
    ):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert len(results["accuracy_matrix"]) == 5
    assert results["summary"]["backward_transfer"] == 0.0
    header = (out / "history.csv").read_text().splitlines()[0]
    assert "metric" in header and "pruned_fraction" in header


def test_the_cli_prunes_with_the_adaptive_schedule_when_asked(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["run", *SMALL_ARGS, "--pruning-schedule", "adaptive", "--first-pruning-step", "0.6"]
    assert main([*args, "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["eidetic"]["pruning_schedule"] == "adaptive"
    with (out / "history.csv").open() as f:
        steps = [float(r["step"]) for r in csv.DictReader(f) if r["phase"] == "prune"]
    assert steps and steps[0] == 0.6 and max(steps) == 0.6


@pytest.mark.parametrize("cap", [0, 1])
def test_a_short_run_prunes_at_most_max_pruning_steps_per_task(cap: int, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["run", *SMALL_ARGS, "--num-tasks", "2", "--no-router", "--max-pruning-steps", str(cap)]
    assert main([*args, "--output-dir", str(out)]) == 0
    with (out / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    for task in ("0", "1"):
        assert sum(r["phase"] == "prune" and r["task"] == task for r in rows) == (
            cap if task == "0" else 0
        )
    results = json.loads((out / "results.json").read_text())
    matrix = results["accuracy_matrix"]
    assert matrix[1][0] == matrix[0][0]  # finished tasks stay bit-identical all the same
    if cap == 0:  # unpruned: the first task owns every neuron it could use
        assert results["capacity"]["owned"]["0"] > results["capacity"]["owned"].get("1", 0)


def test_python_dash_m_and_help_document_every_option() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "eidetic_func", "run", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for option in (
        "--dataset",
        "--model",
        "--method",
        "--pruning-type",
        "--pruning-step",
        "--pruning-schedule",
        "--first-pruning-step",
        "--compile",
        "--no-forward-transfer",
        "--epochs",
        "--seed",
        "--device",
        "--data-root",
        "--output-dir",
        "--resume",
        "--cycles",
    ):
        assert option in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "mnist-5"], "dataset must be one of"),
        (["--dataset", "split-mnist", "--data-root", "/nonexistent"], "train-images-idx3-ubyte.gz"),
        (["--num-tasks", "3"], "classes"),
        (["--pruning-step", "1.5"], "--pruning-step must be in (0.0, 1.0)"),
        (["--pruning-type", "l3"], "--pruning-type must be one of"),
        (["--tolerance", "-0.1"], "tolerance"),
        (["--method", "nope"], "method must be one of"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
        (["--method", "ewc", "--method-option", "lambda=3"], "no option"),
        (["--method", "ewc", "--method-option", "nokey"], "key=value"),
        (["--method", "progressive", "--model", "convnet"], "MLP columns"),
        (["--method", "er", "--cycles", "2"], "cycles"),
    ],
)
def test_bad_input_fails_clearly_before_any_training(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(["run", *args, "--no-progress", "--output-dir", str(tmp_path)])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "results.json").exists()


def test_methods_are_listed_with_their_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in (
        "eidetic",
        "ewc",
        "online-ewc",
        "si",
        "mas",
        "lwf",
        "er",
        "der",
        "der++",
        "agem",
        "gem",
        "packnet",
        "progressive",
        "finetune",
        "dgr",
        "oml",
        "joint",
    ):
        assert f"\n{name} " in f"\n{out}", name
    assert "lambda_ewc=100.0" in out


def test_a_baseline_runs_from_the_cli_with_its_options(tmp_path: Path) -> None:
    out = tmp_path / "ewc"
    assert (
        main(
            [
                "run",
                *SMALL_ARGS,
                "--method",
                "ewc",
                "--method-option",
                "lambda_ewc=50",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["method_options"] == {"lambda_ewc": 50}
    assert results["router"] is None and results["extra_memory_bytes"] > 0
    # EWC owns no neurons: no capacity plot (it would be empty); the accuracy plot stays
    assert (out / "accuracy_matrix.png").is_file() and not (out / "capacity.png").exists()


def test_unknown_bench_preset_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "split-mnist-99"]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_bench_resume_without_a_checkpoint_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["bench", "split-mnist", "--resume", "--output-dir", str(tmp_path / "none")]
    assert main(args) == 2
    assert "nothing to resume" in capsys.readouterr().err


def _cli(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "eidetic_func",
        "run",
        *SMALL_ARGS,
        "--output-dir",
        str(out),
        *extra,
    ]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method", ["eidetic", "er", "eidetic+er", "eidetic --grow"])
def test_a_run_killed_mid_task_resumes_to_exactly_the_uninterrupted_result(
    method: str, tmp_path: Path
) -> None:
    """Every method (a chain too) resumes after any epoch or pruning step, bit for bit;
    a network that grew is regrown from the checkpoint (a narrow one, to make it grow)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    name, _, grows = method.partition(" ")
    # half SMALL_ARGS' images: still three visits of several checkpoints each to be killed in
    options = ["--limit-per-class", "30", "--method", name]
    options += ["--width", "6", "--grow", "4"] if grows else []
    # the uninterrupted run and the resume run in this process (with one thread, as the
    # killed one): only the run that is killed needs a process of its own
    reference = tmp_path / "reference"
    assert main(_cli(reference, *options)[3:]) == 0

    crashed = tmp_path / "crashed"
    proc = subprocess.Popen(
        _cli(crashed, *options), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint = crashed / "checkpoint.safetensors"
    deadline = time.monotonic() + 300
    killed_mid_task = False
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoint.exists():
            try:
                saved = ef.load(checkpoint)
            except ef.CheckpointError:  # being replaced right now
                continue
            meta, grown = saved.meta, bool(saved.state.growth)
            if meta["visit"] >= 2 and meta["progress"] is not None and grown == bool(grows):
                os.kill(proc.pid, signal.SIGKILL)
                killed_mid_task = True
                break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed_mid_task, "the run ended before it could be killed mid-task"
    assert not (crashed / "results.json").exists()
    assert main([*_cli(crashed, *options)[3:], "--resume"]) == 0

    expected = json.loads((reference / "results.json").read_text())
    got = json.loads((crashed / "results.json").read_text())
    for key in (
        "accuracy_matrix",
        "accuracy_after_finish",
        "final_accuracy",
        "summary",
        "capacity",
        "router",
        "extra_memory_bytes",
    ):
        assert got[key] == expected[key], key
    a, b = ef.load(reference / "checkpoint.safetensors").state, ef.load(checkpoint).state
    assert a.growth == b.growth and bool(a.growth) == bool(grows)
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]) and torch.equal(a.owner[k], b.owner[k]), k
    for k in a.buffers:
        assert torch.equal(a.buffers[k], b.buffers[k]), k


def test_one_seed_reproduces_a_run_exactly_and_another_seed_differs() -> None:
    config = RunConfig(**{**SMALL.__dict__, "router": False, "num_tasks": None})
    first, second = run(config, log=_quiet), run(config, log=_quiet)
    assert first.matrix == second.matrix
    assert first.capacity == second.capacity
    for k in first.state.params:
        assert torch.equal(first.state.params[k], second.state.params[k]), k
    other = run(RunConfig(**{**config.__dict__, "seed": 1}), log=_quiet)
    assert other.matrix != first.matrix


def test_task_order_reverses_or_permutes_the_tasks_and_keeps_them_frozen() -> None:
    config = dataclasses.replace(SMALL, num_tasks=None, router=False, task_order="reverse")
    result = run(config, log=_quiet)
    assert result.task_names == [f"classes {2 * t},{2 * t + 1}" for t in range(5)][::-1]
    assert result.summary["backward_transfer"] == 0.0
    shuffled = ef.sequence.reorder(ef.data.load_sequence("embedded"), "random:3")
    again = ef.sequence.reorder(ef.data.load_sequence("embedded"), "random:3")
    assert [t.name for t in shuffled] == [t.name for t in again]
    assert [t.index for t in shuffled] == list(range(5))
    for bad in ("2,0", "0,0,1,2,3", "sideways", "random:x"):
        with pytest.raises(ef.ConfigError, match="task_order"):
            ef.sequence.reorder(ef.data.load_sequence("embedded"), bad)


def test_threads_default_to_a_share_of_the_cores_under_torchrun(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert ef.sequence.cpu_threads(3) == 3
    assert ef.sequence.cpu_threads(None) == max(1, torch.get_num_threads() // 2)
    with pytest.raises(ef.ConfigError, match="threads"):
        RunConfig(threads=0)


def test_adam_and_adamw_step_fused_when_asked_and_sgd_never() -> None:
    from eidetic_func.models import MLP

    from eidetic_func.runner.sequence import build_optimizer

    model = MLP(4, [2, 2], num_layers=1, width=3)
    assert not build_optimizer(RunConfig(), model).defaults["fused"]  # torch's default
    for name in ("adam", "adamw"):
        config = RunConfig(optimizer=name, fused_optimizer=True)
        assert build_optimizer(config, model).defaults["fused"] is True
    # torch's fused SGD with momentum fails when a later head gets its first gradient
    config = RunConfig(optimizer="sgd", fused_optimizer=True)
    assert not build_optimizer(config, model).defaults["fused"]


def test_a_fused_run_trains_and_keeps_every_finished_task_bit_identical() -> None:
    config = dataclasses.replace(SMALL, fused_optimizer=True, router=False)
    matrix = run(config, log=_quiet).matrix
    for task in range(len(matrix)):
        assert matrix[task][task] > 0.6  # a step that trains nothing would sit at chance
        assert all(row[task] == matrix[task][task] for row in matrix[task:])


class _Stopped(Exception):
    """Stands in for a crash: raised right after a checkpoint was written."""


@pytest.mark.parametrize("grows", [False, True])
def test_a_run_stopped_while_training_the_router_resumes_there_to_the_uninterrupted_result(
    grows: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also when the network grew for the router (a narrow one, so it must): the resumed
    run regrows it from the checkpoint and does not grow it again."""
    config = SMALL
    if grows:
        config = dataclasses.replace(SMALL, width=6, grow=4)
    reference = run(config, output_dir=tmp_path / "reference", log=_quiet)
    assert bool(reference.state.growth) == grows
    written = loop.save
    stopped_at: list[dict[str, object]] = []

    def save_then_stop_inside_the_router(setup: object, record: sequence.RunRecord) -> None:
        written(setup, record)  # type: ignore[arg-type]
        mid_router = record.router is None and record.progress is not None
        if mid_router and record.visit == len(reference.visits) and not stopped_at:
            stopped_at.append(record.progress.to_dict())  # type: ignore[union-attr]
            raise _Stopped

    monkeypatch.setattr(loop, "save", save_then_stop_inside_the_router)
    with pytest.raises(_Stopped):
        run(config, output_dir=tmp_path / "stopped", log=_quiet)
    assert stopped_at, "no checkpoint was written while the router trained"
    assert ef.load(tmp_path / "stopped" / "checkpoint.safetensors").meta["progress"] is not None
    messages: list[str] = []
    resumed = run(None, output_dir=tmp_path / "stopped", resume=True, log=messages.append)
    assert any("training the task router" in m for m in messages)
    assert resumed.matrix == reference.matrix
    assert resumed.router == reference.router
    assert resumed.capacity == reference.capacity
    assert len(resumed.history) == len(reference.history)  # no router epoch trained twice
    assert resumed.state.growth == reference.state.growth
    for k in reference.state.params:
        assert torch.equal(resumed.state.params[k], reference.state.params[k]), k


def test_a_snapshot_of_a_run_reports_its_matrix_history_and_neurons_per_task(
    tmp_path: Path,
) -> None:
    config = dataclasses.replace(FIXED, router=False, num_tasks=2)
    result = run(config, output_dir=tmp_path / "run", log=_quiet)
    out = tmp_path / "snapshot"
    run_snapshot.main([str(tmp_path / "run" / "checkpoint.safetensors"), str(out)])
    got = json.loads((out / "progress.json").read_text())
    assert got["visits_done"] == 2 and got["accuracy_matrix"] == result.matrix
    by_unit = {u["name"]: u["owned"] for u in result.capacity["units"]}  # type: ignore[index]
    for task, layers in got["neurons_owned_per_task"].items():
        for unit, owned in by_unit.items():
            assert layers[f"{unit}.linear.weight"] == owned[task], (task, unit)
    with (out / "history.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(result.history)
    with pytest.raises(ef.CheckpointError, match="not a run checkpoint"):
        run_snapshot.snapshot(
            ef.Checkpoint(
                state=result.state,
                extra=None,
                history=None,
                meta={},
                rng=None,
                optimizer_state=None,
            )
        )
