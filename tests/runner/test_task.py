"""The training shell: stopping rules, pruning loop, history, checkpoints and resume."""

from __future__ import annotations

import sys

import pytest
import torch
from eidetic_func.models import MLP

import eidetic_func as ef
from eidetic_func.methods.eidetic import EideticNet, Pruning
from eidetic_func.runner.task import train_task
from eidetic_func.training.config import TrainConfig
from eidetic_func.training.loop import TaskProgress


def _data(seed: int, n: int = 96, noise: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A linearly separable 2-class problem in 10 dimensions, in batches of 16."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    if noise:
        flip = torch.rand(n, generator=g) < noise
        y = torch.where(flip, 1 - y, y)
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


def _setup(width: int = 16) -> tuple[MLP, ef.EideticState, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = MLP(10, [2, 2], num_layers=2, width=width)
    return model, ef.init(model), torch.optim.Adam(model.parameters(), lr=1e-2)


def test_train_task_learns_prunes_and_finishes_the_task() -> None:
    model, state, opt = _setup()
    data = _data(0)
    state, _, history = train_task(
        model,
        state,
        data,
        task=0,
        optimizer=opt,
        config=TrainConfig(max_epochs=15, patience=2),
        method=EideticNet(pruning_step=0.3, tolerance=0.05),
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    phases = [h["phase"] for h in history]
    assert phases[0] == "train" and "prune" in phases and phases[-2:] == ["finish", "end_task"]
    assert state.task == 1 and state.finished == (0,)
    assert ef.metrics.evaluate(model, state, data, task=0) >= 0.9
    report = ef.capacity(state)
    assert 0 < report.owned[0] < report.total, "pruning should leave capacity for later tasks"
    for record in history:
        if record["phase"] in ("train", "recover"):
            assert 0.0 <= record["metric"] <= 1.0 and record["loss"] >= 0


def test_pruning_stops_below_tolerance_and_restores_the_last_good_snapshot() -> None:
    model, state, opt = _setup(width=8)
    data = _data(1, noise=0.2)
    checkpoints: list[tuple[ef.EideticState, TaskProgress]] = []
    final, _, history = train_task(
        model,
        state,
        data,
        task=0,
        optimizer=opt,
        config=TrainConfig(max_epochs=6, patience=1, finish=False),
        method=EideticNet(pruning_step=0.5, tolerance=0.0, max_recovery_epochs=1),
        generator=torch.Generator().manual_seed(0),
        progress=False,
        checkpoint=lambda s, ms, p, h: checkpoints.append((s, p)),
    )
    stops = [h for h in history if h["phase"] == "stop"]
    assert len(stops) == 1
    # the returned state is the last one checkpointed as good (or the trained one)
    good = [s for s, p in checkpoints if p.phase in ("end", "done")]
    assert any(all(torch.equal(final.params[k], s.params[k]) for k in final.params) for s in good)


def test_masking_ratio_bounds_the_pruned_share() -> None:
    model, state, opt = _setup()
    final, _, history = train_task(
        model,
        state,
        _data(2),
        task=0,
        optimizer=opt,
        config=TrainConfig(max_epochs=3, patience=1, finish=False),
        method=EideticNet(pruning_step=0.3, tolerance=0.5, max_masking_ratio=0.5),
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    assert ef.capacity(final).pruned_fraction <= 0.5 + 1e-9
    assert any("pruned fraction" in h.get("reason", "") for h in history if h["phase"] == "stop")


def _pruned(schedule: str, **fields: object) -> tuple[ef.EideticState, list, list]:
    model, state, opt = _setup(width=32)
    checkpoints: list[ef.EideticState] = []
    method = EideticNet(
        pruning_step=0.1,
        max_recovery_epochs=1,
        pruning_schedule=schedule,
        **fields,  # type: ignore[arg-type]
    )
    final, _, history = train_task(
        model,
        state,
        _data(4, n=160),
        task=0,
        optimizer=opt,
        config=TrainConfig(max_epochs=3, patience=1, finish=False),
        method=method,
        generator=torch.Generator().manual_seed(0),
        progress=False,
        checkpoint=lambda s, ms, p, h: checkpoints.append(s),
    )
    return final, history, checkpoints


def test_adaptive_schedule_reaches_the_capacity_of_the_fixed_one_in_fewer_recoveries() -> None:
    fixed, fixed_history, _ = _pruned("fixed", tolerance=0.5, max_masking_ratio=0.9)
    adaptive, history, _ = _pruned("adaptive", tolerance=0.5, max_masking_ratio=0.9)
    recoveries = [
        len([h for h in hs if h["phase"] == "recover"]) for hs in (fixed_history, history)
    ]
    assert recoveries[1] * 2 < recoveries[0], recoveries
    kept = [ef.capacity(s).pruned_fraction for s in (fixed, adaptive)]
    assert kept[0] <= kept[1] <= 0.9 + 1e-9, kept
    steps = [h["step"] for h in history if h["phase"] == "prune"]
    assert steps[0] == 0.5 and all(s <= 0.5 for s in steps)


def test_adaptive_schedule_restores_the_snapshot_and_halves_the_step_after_a_failed_step() -> None:
    final, history, checkpoints = _pruned(
        "adaptive", tolerance=0.0, first_pruning_step=0.8, max_masking_ratio=0.95
    )
    phases = [h["phase"] for h in history]
    assert "restore" in phases and phases[-2:] == ["stop", "end_task"]
    prunes = [h for h in history if h["phase"] in ("prune", "restore")]
    for before, restore, after in zip(prunes, prunes[1:], prunes[2:]):
        if restore["phase"] == "restore" and after["phase"] == "prune":
            assert after["step"] <= before["step"] / 2 + 1e-12
    assert "fell below 0.1" in history[-2]["reason"] or "no neuron" in history[-2]["reason"]
    # the result is a state that was kept (checkpointed as good), never a failed step's
    assert any(
        all(torch.equal(final.params[k], s.params[k]) for k in final.params) for s in checkpoints
    )


def test_pruning_settings_cycle_and_the_last_task_is_not_pruned() -> None:
    model, state, opt = _setup()
    config = TrainConfig(max_epochs=3, patience=1, finish=False)
    method = EideticNet(
        pruning_step=(0.2, 0.1),
        pruning_type=("l2", "random"),
        tolerance=0.5,
        max_masking_ratio=0.9,
        pruning_schedule="fixed",  # the steps and scorings it cycles
    )
    _, _, history = train_task(
        model,
        state,
        _data(3),
        task=0,
        optimizer=opt,
        config=config,
        method=method,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    prunes = [h for h in history if h["phase"] == "prune"]
    assert [p["scoring"] for p in prunes[:4]] == ["l2", "random", "l2", "random"]
    assert [p["step"] for p in prunes[:4]] == [0.2, 0.1, 0.2, 0.1]
    model, state, opt = _setup()
    _, _, history = train_task(
        model,
        state,
        _data(3),
        task=0,
        optimizer=opt,
        config=config,
        method=method,
        generator=torch.Generator().manual_seed(0),
        progress=False,
        last=True,
    )
    assert not any(h["phase"] == "prune" for h in history)


def test_training_stops_at_perfect_accuracy_and_lowers_the_learning_rate() -> None:
    model, state, opt = _setup()
    config = TrainConfig(max_epochs=50, patience=10, lr_factor=0.5)
    _, _, history = train_task(
        model,
        state,
        _data(4),
        task=0,
        optimizer=opt,
        config=config,
        generator=torch.Generator().manual_seed(0),
        progress=False,
        last=True,
    )
    epochs = [h for h in history if h["phase"] == "train"]
    assert len(epochs) < 50
    assert any(h["metric"] == 1.0 for h in epochs)
    assert epochs[0]["lr"] == 1e-2 and epochs[-1]["lr"] == 5e-3  # the epoch after the plateau
    assert opt.param_groups[0]["lr"] == 1e-2, "the next task starts at the task's rate"


@pytest.mark.parametrize("max_epochs", [1, 30])
def test_learning_rate_is_lowered_once_per_pruning_phase_and_every_task_starts_at_its_rate(
    max_epochs: int,
) -> None:
    # max_epochs=1 ends training before any plateau: pruning still runs at the lowered rate
    model, state, opt = _setup()
    config = TrainConfig(max_epochs=max_epochs, patience=1, lr_factor=0.5)
    for task in range(2):
        state, _, history = train_task(
            model,
            state,
            _data(task),
            task=task,
            optimizer=opt,
            config=config,
            method=EideticNet(pruning_step=0.3, tolerance=0.05),
            generator=torch.Generator().manual_seed(0),
            progress=False,
        )
        train = [h["lr"] for h in history if h["phase"] == "train"]
        pruning = [h["lr"] for h in history if h["phase"] in ("prune", "recover")]
        assert train[0] == 1e-2, f"task {task} started at {train[0]}"
        assert set(train[:-1]) <= {1e-2}, "lowered only for the epoch after the plateau"
        assert pruning and set(pruning) == {5e-3}, "lowered once, not compounded"
        assert opt.param_groups[0]["lr"] == 1e-2


@pytest.mark.parametrize("schedule", ["fixed", "adaptive"])
def test_resuming_from_any_checkpoint_gives_the_uninterrupted_result(schedule: str) -> None:
    config = TrainConfig(max_epochs=4, patience=1)
    method = EideticNet(
        pruning_step=0.25, tolerance=0.05, max_recovery_epochs=1, pruning_schedule=schedule
    )
    data = _data(5)

    def fresh() -> tuple[MLP, ef.EideticState, torch.optim.Optimizer, torch.Generator]:
        model, state, opt = _setup()
        return model, state, opt, torch.Generator().manual_seed(7)

    model, state, opt, g = fresh()
    saved = []

    def keep(s: ef.EideticState, ms: object, p: TaskProgress, h: list) -> None:
        saved.append((s, p, _opt_copy(opt), g.get_state(), ms))

    reference, _, reference_history = train_task(
        model,
        state,
        data,
        task=0,
        optimizer=opt,
        config=config,
        method=method,
        generator=g,
        progress=False,
        checkpoint=keep,
    )
    reference_steps = [h["step"] for h in reference_history if h["phase"] == "prune"]
    mid_training = [entry for entry in saved if entry[1].phase == "train"]
    mid_pruning = [e for e in saved if isinstance(e[4], Pruning)]
    assert mid_training, "expected a checkpoint after a training epoch"
    assert mid_pruning, "expected a checkpoint after a pruning step"
    assert all(e[4].schedule.iteration > 0 and e[4].snapshot is None for e in mid_pruning)
    if schedule == "adaptive":  # a checkpoint after a halved step must resume at that step
        halved = [e[4].schedule.adaptive_step < method.first_pruning_step for e in mid_pruning]
        assert any(halved)
    for s, p, opt_state, g_state, ms in (mid_training[0], mid_pruning[0], mid_pruning[-1]):
        model, _, opt, g = fresh()
        opt.load_state_dict(opt_state)
        g.set_state(g_state)
        resumed, _, history = train_task(
            model,
            s,
            data,
            task=0,
            optimizer=opt,
            config=config,
            method=method,
            generator=g,
            progress=False,
            resume=p,
            mstate=ms,
        )
        steps = [h["step"] for h in history if h["phase"] == "prune"]
        assert steps == reference_steps[len(reference_steps) - len(steps) :], p
        for k in reference.params:
            assert torch.equal(resumed.params[k], reference.params[k]), (p.phase, k)
            assert torch.equal(resumed.owner[k], reference.owner[k]), (p.phase, k)


def _opt_copy(opt: torch.optim.Optimizer) -> dict:
    import copy

    return copy.deepcopy(opt.state_dict())


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_epochs", 0), ("patience", -1), ("lr_factor", 2.0), ("finish", 1), ("compiled", "no")],
)
def test_invalid_loop_settings_are_refused_before_training(field: str, value: object) -> None:
    with pytest.raises(ef.ConfigError, match=field.split("_")[0]):
        TrainConfig(**{field: value})


def test_an_empty_loader_is_a_clear_error() -> None:
    model, state, opt = _setup()
    with pytest.raises(ef.DataError, match="empty"):
        train_task(
            model,
            state,
            [],
            task=0,
            optimizer=opt,
            generator=torch.Generator(),
            progress=False,
        )


def test_with_a_stop_loader_the_stopping_metric_is_eval_accuracy_on_it() -> None:
    model, state, opt = _setup()
    data = _data(0)
    flipped = [(x, 1 - y) for x, y in data]  # held-out labels the model cannot fit
    _, _, history = train_task(
        model,
        state,
        data,
        task=0,
        optimizer=opt,
        config=TrainConfig(max_epochs=6, patience=1),
        method=EideticNet(pruning_step=0.3, tolerance=0.05),
        generator=torch.Generator().manual_seed(0),
        progress=False,
        stop_loader=flipped,
    )
    train = [h for h in history if h["phase"] == "train"]
    assert all(0.0 <= h["metric"] <= 1.0 for h in train)
    assert train[-1]["train_metric"] > 0.8 and train[-1]["metric"] < 0.3


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_is_a_line_per_epoch_in_a_log_and_bars_on_a_terminal(
    terminal: bool, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log (stderr a file or a pipe) gets no carriage returns: one plain line per epoch."""
    monkeypatch.setattr(type(sys.stderr), "isatty", lambda self: terminal)
    model, state, opt = _setup()
    _, _, history = train_task(
        model,
        state,
        _data(0),
        task=0,
        optimizer=opt,
        config=TrainConfig(max_epochs=3, patience=1),
        method=EideticNet(pruning_step=0.5, max_masking_ratio=0.5),
        generator=torch.Generator().manual_seed(0),
        progress=True,
    )
    err = capsys.readouterr().err
    epochs = [h for h in history if h["phase"] in ("train", "recover")]
    if terminal:
        assert "\r" in err and "eidetic task 0 epoch 1" in err
    else:
        assert "\r" not in err
        lines = err.splitlines()
        assert len(lines) == len(epochs)
        for line, record in zip(lines, epochs):
            assert line.startswith("eidetic task 0 ") and f"accuracy {record['metric']:.4f}" in line
