"""Parameter-isolation baselines: PackNet (entry-level ownership) and progressive networks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from eidetic_func.models import MLP
from eidetic_func.models.progressive import ProgressiveMLP
from small_runs import plain_mlp, run_sequence
from torch import Tensor

import eidetic_func as ef
from eidetic_func.methods import (
    PackNet,
    Progressive,
    column_entries,
    magnitude_prune,
    own_column,
    own_entries,
    packnet_prunable,
)
from eidetic_func.methods.finetune import FineTune
from eidetic_func.methods.protocol import TaskContext, end_task, init_state, method_step
from eidetic_func.training.config import TrainConfig


def _data(
    seed: int, n: int = 24, features: int = 6, classes: int = 2
) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return [(x[i : i + 8], y[i : i + 8]) for i in range(0, n, 8)]


def _snapshot(d: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in d.items()}


# --------------------------------------------------------------------------- PackNet


def test_magnitude_prune_removes_the_ratio_of_each_layers_free_weights_smallest_first() -> None:
    torch.manual_seed(0)
    model = MLP(6, [2, 2], num_layers=2, width=5, bn=False)
    state = ef.init(model)
    # a task already owns the first two rows of layer 0: they are not free
    owner = dict(state.owner)
    owner["blocks.0.linear.weight"] = owner["blocks.0.linear.weight"].clone()
    owner["blocks.0.linear.weight"][:2] = 0
    state = state.replace(owner=owner)
    before = _snapshot(state.params)
    keys = packnet_prunable(state)
    assert keys == ["blocks.0.linear.weight", "blocks.1.linear.weight"]  # no biases, no heads
    pruned = magnitude_prune(state, 0.6, keys)
    for k in state.params:
        assert torch.equal(state.params[k], before[k])  # pure
        removed = state.keep[k] & ~pruned.keep[k]
        if k not in keys:
            assert not removed.any() and torch.equal(pruned.params[k], before[k])
            continue
        free = state.owner[k] < 0
        assert int(removed.sum()) == round(0.6 * int(free.sum()))
        assert not (removed & ~free).any()  # owned entries are never pruned
        assert (pruned.params[k][removed] == 0).all()
        kept_free = free & pruned.keep[k]
        assert before[k][removed].abs().max() <= before[k][kept_free].abs().min()
        assert torch.equal(pruned.params[k][~removed], before[k][~removed])
    with pytest.raises(ef.ConfigError):
        magnitude_prune(state, 1.5, keys)


def _packnet_model(bn: bool) -> MLP:
    torch.manual_seed(1)
    return MLP(6, [2, 2, 2], num_layers=2, width=6, bn=bn)


def _packnet_retrain(
    model: MLP, state: ef.EideticState, loader: Any, *, task: int, epochs: int, lr: float
) -> ef.EideticState:
    """PackNet's former in-method retraining: a fresh Adam, plain steps over the loader."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        for batch in loader:
            state, _ = ef.train_step(model, state, batch, optimizer=optimizer, task=task)
    return state


def _packnet_end(
    method: PackNet, model: MLP, state: ef.EideticState, mstate: None, ctx: TaskContext
) -> tuple[ef.EideticState, None]:
    """PackNet's end of task, its TrainWith decision carried out as the task loop does."""
    state, mstate, decision = end_task(method, model, state, mstate, ctx)
    assert isinstance(decision, ef.TrainWith)
    assert decision.optimizer == ("adam", {"lr": method.retrain_lr})
    assert decision.epochs == method.retrain_epochs
    state = _packnet_retrain(
        model, state, ctx.loader, task=ctx.task, epochs=decision.epochs, lr=method.retrain_lr
    )
    state, mstate, decision = end_task(method, model, state, mstate, ctx.replace(metric=1.0))
    assert isinstance(decision, ef.Done)
    return state, mstate


def test_packnet_retraining_by_the_task_loop_equals_a_fresh_adam_loop_bit_for_bit() -> None:
    method = PackNet(prune_ratio=0.5, retrain_epochs=2, retrain_lr=1e-2)
    config = TrainConfig(max_epochs=2, finish=False)
    results = []
    for by_loop in (True, False):
        model = _packnet_model(bn=True)
        state = ef.init(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        generator = torch.Generator().manual_seed(0)
        state, _, history = ef.train_task(
            model,
            state,
            _data(0),
            task=0,
            optimizer=optimizer,
            generator=generator,
            method=method if by_loop else FineTune(),
            mstate=None,
            config=config,
            progress=False,
        )
        if not by_loop:  # the former PackNet.end_task: prune, retrain itself, own
            state = magnitude_prune(state, 0.5, packnet_prunable(state))
            state = _packnet_retrain(model, state, _data(0), task=0, epochs=2, lr=1e-2)
            state = own_entries(state, task=0, entries=method.claims(state, 0))
        else:
            assert [h["lr"] for h in history if h["phase"] == "retrain"] == [1e-2, 1e-2]
        results.append(state)
    by_loop_state, by_hand = results
    assert by_loop_state.task == by_hand.task == 1
    for k in by_hand.params:
        assert torch.equal(by_loop_state.params[k], by_hand.params[k]), k
        assert torch.equal(by_loop_state.owner[k], by_hand.owner[k]), k


def test_packnet_end_task_owns_kept_weights_its_head_and_the_shared_entries() -> None:
    model = _packnet_model(bn=False)
    state = ef.init(model)
    method = PackNet(prune_ratio=0.5, retrain_epochs=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    mstate = init_state(method, model, state)
    for batch in _data(0):
        state, mstate, _ = method_step(
            method, model, state, mstate, batch, optimizer=optimizer, task=0
        )
    done, _ = _packnet_end(
        method,
        model,
        state,
        mstate,
        TaskContext(_data(0), task=0, generator=torch.Generator().manual_seed(0)),
    )
    assert done.task == 1 and done.finished == (0,)
    assert all(bool(k.all()) for k in done.keep.values())
    for k in packnet_prunable(done):
        own, p = done.owner[k], done.params[k]
        assert int((own == 0).sum()) == own.numel() - round(0.5 * own.numel())
        assert (p[own < 0] == 0).all()  # pruned entries: free and zero
        assert ((own == 0) | (own == -1)).all()
    for k in ("blocks.0.linear.bias", "blocks.1.linear.bias", "heads.0.weight", "heads.0.bias"):
        assert (done.owner[k] == 0).all()
    for k in ("heads.1.weight", "heads.2.bias"):
        assert (done.owner[k] == -1).all()
    with pytest.raises(ef.TaskError):
        own_entries(done, task=0, entries={})


@pytest.mark.parametrize("bn", [False, True], ids=["plain", "batchnorm"])
def test_packnet_tasks_are_bit_identical_after_later_tasks_with_one_adamw(bn: bool) -> None:
    model = _packnet_model(bn)
    state = ef.init(model)
    method = PackNet(prune_ratio=0.75, retrain_epochs=1, retrain_lr=1e-2)
    mstate = init_state(method, model, state)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-2, weight_decay=0.5)
    probe = torch.randn(10, 6, generator=torch.Generator().manual_seed(99))
    outputs: dict[int, Tensor] = {}
    owned: dict[int, dict[str, Tensor]] = {}
    free_before: dict[str, int] = {}
    for t in range(3):
        free_before = {k: int((state.owner[k] < 0).sum()) for k in packnet_prunable(state)}
        start = _snapshot(state.params)
        for _ in range(3):
            for batch in _data(10 + t):
                state, mstate, _ = method_step(
                    method, model, state, mstate, batch, optimizer=optimizer, task=t
                )
        assert any(not torch.equal(start[k], state.params[k]) for k in state.params)  # it trains
        state, mstate = _packnet_end(
            method,
            model,
            state,
            mstate,
            TaskContext(_data(10 + t), task=t, generator=torch.Generator().manual_seed(t)),
        )
        for k in packnet_prunable(state):  # each task keeps (1 - ratio) of the free weights
            assert int((state.owner[k] == t).sum()) == free_before[k] - round(0.75 * free_before[k])
        for s in range(t):  # earlier tasks: weights and outputs bit for bit
            for k, v in owned[s].items():
                assert torch.equal(torch.where(state.owner[k] == s, state.params[k], 0.0), v), k
            out, _ = ef.forward(model, state, probe, task=s, train=False)
            assert torch.equal(out, outputs[s])
        owned[t] = {k: torch.where(state.owner[k] == t, state.params[k], 0.0) for k in state.params}
        outputs[t], _ = ef.forward(model, state, probe, task=t, train=False)
        # the task owns everything it uses: its masked outputs equal the unmasked network's
        unmasked, _ = ef.forward(model, state.replace(finished=()), probe, task=t, train=False)
        assert torch.equal(outputs[t], unmasked)
    if bn:  # BatchNorm is shared: it belongs to task 0, statistics included
        assert (state.owner["blocks.0.norm.running_mean"] == 0).all()
        assert (state.owner["blocks.1.norm.weight"] == 0).all()


def test_own_entries_never_reowns_and_leaves_pruned_entries_free_and_zero() -> None:
    model = _packnet_model(bn=False)
    state = ef.init(model)
    key = "blocks.0.linear.weight"
    keep = dict(state.keep)
    keep[key] = torch.ones_like(keep[key])
    keep[key][0, :3] = False
    params = {**state.params, key: torch.where(keep[key], state.params[key], 0.0)}
    state = state.replace(keep=keep, params=params)
    before = _snapshot(state.params)
    claim = {key: torch.ones_like(keep[key])}
    first = own_entries(state, task=0, entries=claim)
    assert (first.owner[key][0, :3] == -1).all() and (first.params[key][0, :3] == 0).all()
    assert (first.owner[key][1:] == 0).all()
    assert (first.owner["blocks.1.linear.weight"] == -1).all()  # not claimed: stays free
    assert all(torch.equal(before[k], state.params[k]) for k in before)  # pure
    second = own_entries(first, task=1, entries=claim)
    assert (second.owner[key][1:] == 0).all() and (second.owner[key][0, :3] == 1).all()
    assert second.finished == (0, 1) and second.task == 2
    with pytest.raises(ef.ConfigError, match="does not own"):
        own_entries(second, task=2, entries={"nope": torch.ones(1, dtype=torch.bool)})


def test_packnet_rejects_bad_hyperparameters_and_headless_models() -> None:
    with pytest.raises(ef.ConfigError, match="prune_ratio"):
        PackNet(prune_ratio=1.0)
    with pytest.raises(ef.ConfigError, match="retrain_epochs"):
        PackNet(retrain_epochs=-1)
    with pytest.raises(ef.ConfigError, match="retrain_lr"):
        PackNet(retrain_lr=0.0)
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ef.ConfigError, match="head"):
        PackNet().init(model, ef.init(model))


# --------------------------------------------------------------------------- progressive


def test_progressive_columns_read_only_earlier_columns() -> None:
    torch.manual_seed(0)
    model = ProgressiveMLP(6, [2, 3, 2], num_layers=3, width=4)
    state = ef.init(model)
    x = torch.randn(5, 6)
    assert [model(x, t).shape[1] for t in range(3)] == [2, 3, 2]
    assert state.params["columns.2.laterals.1.weight"].shape == (4, 8)
    assert state.params["columns.1.out_lateral.weight"].shape == (3, 4)
    assert "columns.0.laterals.0.weight" not in state.params  # the first column has none
    out1, _ = ef.forward(model, state, x, task=1, train=False)
    later = {
        k: v + 1.0 if k.startswith(("columns.2.", "heads.2.")) else v
        for k, v in state.params.items()
    }
    same, _ = ef.forward(model, state.replace(params=later), x, task=1, train=False)
    assert torch.equal(out1, same)  # column 2 does not feed task 1
    earlier = {
        k: v + 1.0 if k.startswith("columns.0.layers.1") else v for k, v in state.params.items()
    }
    moved, _ = ef.forward(model, state.replace(params=earlier), x, task=1, train=False)
    assert not torch.equal(out1, moved)  # column 0's hidden layer feeds column 1 laterally
    with pytest.raises(ef.TaskError):
        model(x, 3)
    with pytest.raises(ef.TopologyError):
        model.topology()


def test_own_column_is_pure_and_claims_exactly_the_columns_entries() -> None:
    torch.manual_seed(0)
    model = ProgressiveMLP(6, [2, 2], num_layers=2, width=3)
    state = ef.init(model)
    claims = column_entries(state, model.column_prefixes(1))
    assert {k for k, c in claims.items() if c.all()} == {
        k for k in state.params if k.startswith(("columns.1.", "heads.1."))
    }
    first = own_column(state, model, task=0)
    assert all((state.owner[k] == -1).all() for k in state.owner)  # input untouched
    for k, own in first.owner.items():
        assert (own == (0 if k.startswith(("columns.0.", "heads.0.")) else -1)).all(), k
    second = own_column(first, model, task=1)
    assert all((second.owner[k] >= 0).all() for k in second.owner)
    with pytest.raises(ef.ConfigError, match="column"):
        Progressive().init(MLP(6, [2, 2], width=3, bn=False), state)


def test_progressive_earlier_columns_are_bit_identical_after_later_tasks_with_one_adamw() -> None:
    torch.manual_seed(2)
    model = ProgressiveMLP(6, [2, 2, 2], num_layers=2, width=5)
    state = ef.init(model)
    method = Progressive()
    mstate = init_state(method, model, state)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-2, weight_decay=0.5)
    probe = torch.randn(10, 6, generator=torch.Generator().manual_seed(99))
    columns: dict[int, dict[str, Tensor]] = {}
    outputs: dict[int, Tensor] = {}
    for t in range(3):
        start = _snapshot(state.params)
        for _ in range(3):
            for batch in _data(20 + t):
                state, mstate, _ = method_step(
                    method, model, state, mstate, batch, optimizer=optimizer, task=t
                )
        mine = [k for k in state.params if k.startswith(model.column_prefixes(t))]
        assert all(not torch.equal(start[k], state.params[k]) for k in mine)  # laterals train too
        state, mstate, _ = end_task(
            method,
            model,
            state,
            mstate,
            TaskContext(_data(20 + t), task=t, generator=torch.Generator().manual_seed(t)),
        )
        for s in range(t):
            for k, v in columns[s].items():
                assert torch.equal(state.params[k], v), k
            out, _ = ef.forward(model, state, probe, task=s, train=False)
            assert torch.equal(out, outputs[s])
        columns[t] = {k: state.params[k].clone() for k in mine}
        outputs[t], _ = ef.forward(model, state, probe, task=t, train=False)
        unmasked, _ = ef.forward(model, state.replace(finished=()), probe, task=t, train=False)
        assert torch.equal(outputs[t], unmasked)  # column t and all it reads are owned
    assert state.finished == (0, 1, 2)


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_isolation_methods_forget_less_than_fine_tuning_on_split_mnist() -> None:
    # Split MNIST (embedded subset), interfering pairs 1/7, 4/9, 3/5; one epoch per task.
    finetune, _ = run_sequence(FineTune(), plain_mlp)
    packnet, packnet_last = run_sequence(PackNet(), plain_mlp)
    progressive, progressive_last = run_sequence(
        Progressive(), lambda classes: ProgressiveMLP(784, list(classes), width=100)
    )
    assert packnet > finetune + 0.05, (packnet, finetune)
    assert progressive > finetune + 0.05, (progressive, finetune)
    assert packnet_last > 0.9 and progressive_last > 0.9
