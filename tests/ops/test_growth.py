"""Growing the network (``ef.grow``): finished tasks stay bit-identical, the state stays whole."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from eidetic_func.models import MLP, ConvNet, ResNet, TaskModel
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import Tensor

import eidetic_func as ef
from eidetic_func.io.state_checks import state_problems
from eidetic_func.methods.eidetic import EideticNet
from eidetic_func.nn.grown_layers import GrownLinear
from eidetic_func.runner.config import RunConfig
from eidetic_func.runner.sequence import run
from eidetic_func.training.config import TrainConfig
from tests.strategies import ALL_KINDS, KEEP_ALL, KEEP_ONE, prune_by_plan, pruning_plans


def _build(kind: str, bn: bool, size: int, seed: int) -> tuple[TaskModel, tuple[int, ...]]:
    """A 3-task model and its input shape; ``size`` sets the MLP's odd widths (BLAS blocks
    a product of odd shapes differently from a slightly wider one)."""
    torch.manual_seed(seed)
    heads = [3, 3, 3]
    if kind == "mlp":
        return MLP(size, heads, num_layers=2, width=size // 2 + 1, bn=bn), (size,)
    if kind == "convnet":
        return ConvNet(2, heads, num_layers=1, width=2, bn=bn), (2, 8, 8)
    if kind == "convnet_flat":
        return ConvNet(2, heads, num_layers=1, width=2, bn=bn, image_size=8), (2, 8, 8)
    if kind == "resnet":
        return ResNet(2, heads, n_blocks=[1, 2], width=3, bn=bn), (2, 8, 8)
    return ResNet(2, heads, n_blocks=[1, 1], expansion=4, width=2, bn=bn), (2, 8, 8)


def _inserted(state: ef.EideticState, unit: str, k: int) -> dict[str, tuple[int, int, int]]:
    """Where growing ``unit`` by ``k`` inserts entries, worked out from the topology alone."""
    u = ef.topology_of(state).unit(unit)
    size = state.params[f"{u.producers[0]}.weight"].shape[0]
    where = {}
    for layer in [*u.producers, *u.norms]:
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            where[f"{layer}.{leaf}"] = (0, size, k)
    for r in u.readers:
        where[f"{r.layer}.weight"] = (1, r.offset + size * r.repeat, k * r.repeat)
    return where


def _assert_consistent(state: ef.EideticState) -> None:
    """Shapes, dtypes and keys fit, and every free entry the mask removes is exactly zero."""
    assert state_problems(state) == []
    for k, p in state.params.items():
        removed = ~state.keep[k] & (state.owner[k] < 0)
        assert bool((p[removed] == 0).all()), f"a removed free entry of {k} is not zero"


def _without(t: Tensor, dim: int, at: int, count: int) -> Tensor:
    return torch.cat(
        [t.narrow(dim, 0, at), t.narrow(dim, at + count, t.shape[dim] - at - count)], dim
    )


def _assert_old_entries_kept(
    old: ef.EideticState, new: ef.EideticState, inserted: dict[str, tuple[int, int, int]]
) -> None:
    """Every entry the state had is still there, bit for bit, with its owner."""
    for field in ("params", "buffers", "owner"):
        before, after = getattr(old, field), getattr(new, field)
        assert before.keys() == after.keys()
        for key, value in before.items():
            now = after[key]
            if key in inserted:
                now = _without(now, *inserted[key])
            assert torch.equal(now, value), f"{field}[{key}] changed by growth"


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(ALL_KINDS),
    bn=st.booleans(),
    forward_transfer=st.booleans(),
    seed=st.integers(0, 2**16),
    size=st.integers(40, 400),
    plan=pruning_plans(),
    growths=st.lists(st.tuples(st.integers(0, 20), st.integers(1, 5)), min_size=1, max_size=4),
    mid_task=st.booleans(),
)
# the corners: a layer wholly owned by task 0 (bias-only survivors next to it without
# forward transfer), and growing a unit no neuron of which is free
@example(
    kind="mlp", bn=False, forward_transfer=False, seed=0, size=367, plan=(KEEP_ALL, KEEP_ONE),
    growths=[(0, 3), (1, 5)], mid_task=True,
)  # fmt: skip
@example(
    kind="resnet", bn=True, forward_transfer=False, seed=1, size=40, plan=(KEEP_ONE, KEEP_ALL),
    growths=[(0, 2), (3, 1), (5, 4)], mid_task=False,
)  # fmt: skip
def test_growth_leaves_every_finished_task_bit_identical(
    kind: str,
    bn: bool,
    forward_transfer: bool,
    seed: int,
    size: int,
    plan: tuple[int, ...],
    growths: list[tuple[int, int]],
    mid_task: bool,
) -> None:
    model, shape = _build(kind, bn, size, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, *shape, generator=g)
    y = torch.randint(0, 3, (6,), generator=g)
    probe = torch.randn(5, *shape, generator=g)
    state = ef.init(model)
    expected: dict[int, Tensor] = {}

    def check(where: str) -> None:
        for task, out in expected.items():
            now, _ = ef.forward(model, state, probe, task=task, train=False)
            assert torch.equal(now, out), f"task {task} changed {where}"

    def grow_checked(index: int, k: int) -> tuple[torch.nn.Module, ef.EideticState, str]:
        """Grow unit ``index`` (modulo the units) by ``k``; check the entries and shapes."""
        units = ef.topology_of(state).units
        name = units[index % len(units)].name
        grown, new = ef.grow(
            model, state, unit=name, neurons=k, generator=g, forward_transfer=forward_transfer
        )
        _assert_old_entries_kept(state, new, _inserted(state, name, k))
        _assert_consistent(new)
        assert all(p.shape == new.params[n].shape for n, p in grown.named_parameters())
        assert all(p.shape == state.params[n].shape for n, p in model.named_parameters())
        return grown, new, name

    for task in range(3):
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)  # a grown model needs a new one
        for _ in range(2):
            state, _ = ef.train_step(model, state, (x, y), optimizer=opt, task=task)
        state = prune_by_plan(state, ef.topology_of(state), plan, g)
        if mid_task and task < 2:  # grow while this task has pruned (free, masked) neurons
            model, state, _ = grow_checked(*growths[task % len(growths)])
            opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        state, _ = ef.train_step(model, state, (x, y), optimizer=opt, task=task)
        check(f"while task {task} trained")
        state = ef.finish_task(state, forward_transfer=forward_transfer)
        expected[task], _ = ef.forward(model, state, probe, task=task, train=False)
        state = ef.recycle(state, generator=g)
        for index, k in growths[task::3] if task < 2 else []:
            model, state, name = grow_checked(index, k)
            check(f"by growing {name} by {k} after task {task}")
    check("at the end")


def test_growth_adds_free_neurons_the_next_task_trains() -> None:
    model = MLP(6, [2, 2], num_layers=2, width=4, bn=True)
    state = ef.init(model)
    state = ef.finish_task(state)  # task 0 takes every neuron
    assert ef.full_units(state) == ("blocks.0", "blocks.1")
    g = torch.Generator().manual_seed(0)
    grown, state = ef.grow(model, state, unit="blocks.1", neurons=3, generator=g)
    assert ef.full_units(state) == ("blocks.0",)
    assert state.growth == (ef.Growth("blocks.1", 3),)
    cap = ef.capacity(state).units[1]
    assert (cap.size, cap.free, cap.owned) == (7, 3, {0: 4})
    before = state.params["blocks.1.linear.weight"].clone()
    x, y = torch.randn(8, 6), torch.randint(0, 2, (8,))
    opt = torch.optim.SGD(grown.parameters(), lr=0.1)
    state, _ = ef.train_step(grown, state, (x, y), optimizer=opt, task=1)
    after = state.params["blocks.1.linear.weight"]
    assert not torch.equal(after[4:], before[4:]), "the new neurons did not train"
    assert torch.equal(after[:4], before[:4])
    # the heads read the new neurons: task 0's (owned) reads them through zeros it owns
    assert torch.equal(state.params["heads.0.weight"][:, 4:], torch.zeros(2, 3))
    assert bool((state.owner["heads.0.weight"][:, 4:] == 0).all())


def test_growth_without_forward_transfer_masks_what_reads_other_tasks() -> None:
    model = MLP(6, [2, 2], num_layers=2, width=4, bn=False)
    state = ef.finish_task(ef.init(model), forward_transfer=False)
    _, state = ef.grow(
        model,
        state,
        unit="blocks.1",
        neurons=2,
        generator=torch.Generator(),
        forward_transfer=False,
    )
    # the new neurons of blocks.1 read blocks.0, all task 0's: masked out and zero
    assert not bool(state.keep["blocks.1.linear.weight"][4:].any())
    assert bool((state.params["blocks.1.linear.weight"][4:] == 0).all())
    assert bool(state.keep["blocks.1.linear.bias"][4:].all())  # alive: a bias-only neuron


def test_grow_leaves_its_inputs_untouched() -> None:
    model = ConvNet(2, [2, 2], num_layers=1, width=2, bn=True)
    state = ef.finish_task(ef.init(model))
    fields = ("params", "buffers", "owner", "keep")
    before = {f: {k: v.clone() for k, v in getattr(state, f).items()} for f in fields}
    module_params = {k: v.detach().clone() for k, v in model.named_parameters()}
    classes = {k: type(m) for k, m in model.named_modules()}
    ef.grow(model, state, unit="blocks.2", neurons=2, generator=torch.Generator())
    ef.regrow(model, (ef.Growth("blocks.2", 2),))
    for f in fields:
        assert all(torch.equal(before[f][k], v) for k, v in getattr(state, f).items()), f
    assert all(torch.equal(module_params[k], v) for k, v in model.named_parameters())
    assert classes == {k: type(m) for k, m in model.named_modules()}
    assert state.growth == ()


def test_a_grown_checkpoint_loads_into_a_regrown_fresh_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ResNet(2, [2, 2], n_blocks=[1, 1], width=3, bn=True)
    state = ef.finish_task(ef.init(model))
    g = torch.Generator().manual_seed(0)
    for unit, k in (("stream.0", 2), ("blocks.1.convs.0", 3)):
        model, state = ef.grow(model, state, unit=unit, neurons=k, generator=g)
    path = ef.save(tmp_path / "grown.safetensors", state)
    probe = torch.randn(3, 2, 8, 8)
    expected, _ = ef.forward(model, state, probe, task=0, train=False)

    fresh = ResNet(2, [2, 2], n_blocks=[1, 1], width=3, bn=True)
    with pytest.raises(ef.CheckpointError, match=r"grown.*ef\.regrow"):
        ef.load(path, model=fresh)
    checkpoint = ef.load(path)
    assert checkpoint.state.growth == state.growth
    regrown, topology = ef.regrow(fresh, checkpoint.state.growth)
    checkpoint.fit(model=regrown)
    loaded = ef.with_topology(checkpoint.state, topology)
    got, _ = ef.forward(regrown, loaded, probe, task=0, train=False)
    assert torch.equal(got, expected)
    assert torch.equal(
        ef.load(path, model=regrown).state.params["stem.weight"], state.params["stem.weight"]
    )


def test_grow_refuses_what_it_cannot_do() -> None:
    model = MLP(6, [2, 2], num_layers=1, width=4)
    state = ef.init(model)
    g = torch.Generator()
    with pytest.raises(ef.ConfigError, match="positive int"):
        ef.grow(model, state, unit="blocks.0", neurons=0, generator=g)
    with pytest.raises(ef.TopologyError, match="no unit named"):
        ef.grow(model, state, unit="blocks.9", neurons=1, generator=g)
    with pytest.raises(ef.StateMismatchError):
        ef.grow(
            MLP(6, [2, 2], num_layers=1, width=5), state, unit="blocks.0", neurons=1, generator=g
        )


def test_a_grown_layer_computes_its_old_block_exactly_as_before() -> None:
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 318), torch.randn(51, 318), torch.randn(51)
    grown = GrownLinear(323, 51)
    grown.weight.data = torch.cat([w, torch.zeros(51, 5)], 1)
    grown.bias.data = b.clone()
    grown.row_groups, grown.column_groups = ((0, 51),), (((0, 318),), ((318, 323),))
    # a plain product of the wider shapes may differ from this in the last bit (BLAS
    # blocks it differently); the grown layer computes the old product, then adds +0.0
    assert torch.equal(
        grown(torch.cat([x, torch.randn(2, 5)], 1)), torch.nn.functional.linear(x, w, b)
    )


@pytest.mark.parametrize("kind", ["mlp", "convnet", "resnet"])
def test_taylor_scores_of_a_grown_network_equal_the_vmap_definition(kind: str) -> None:
    model, shape = _build(kind, True, 41, seed=0)
    state = ef.finish_task(ef.init(model))
    unit = ef.topology_of(state).units[-1].name
    model, state = ef.grow(model, state, unit=unit, neurons=3, generator=torch.Generator())
    batches = [(torch.randn(5, *shape), torch.randint(0, 3, (5,)))]
    fast = ef.score(model, state, batches, method="taylor", implementation="fast")
    exact = ef.score(model, state, batches, method="taylor", implementation="vmap")
    for name, s in fast.items():
        assert torch.equal(torch.isfinite(s), torch.isfinite(exact[name]))
        assert int(torch.isfinite(s).sum()) == (3 if name == unit else 0)  # only the new ones
        torch.testing.assert_close(s[torch.isfinite(s)], exact[name][torch.isfinite(s)])


def test_a_run_grows_when_a_task_finds_no_free_neuron_and_forgets_nothing() -> None:
    config = RunConfig(
        dataset="embedded",
        limit_per_class=30,
        width=6,
        batch_size=32,
        train=TrainConfig(max_epochs=2, patience=1),
        eidetic=EideticNet(pruning_step=0.25, score_batches=2, pruning_schedule="fixed"),
        grow=4,
        progress=False,
    )
    logged: list[str] = []
    result = run(config, log=logged.append)
    assert result.state.growth, "a 6-neuron MLP ran out of neurons, yet nothing grew"
    assert any("grew (when-full)" in line for line in logged)
    assert result.summary["forgetting"] == 0.0 and result.summary["backward_transfer"] == 0.0
    for t, row in enumerate(result.matrix):  # every finished task's accuracy, to the last bit
        assert all(later[t] == row[t] for later in result.matrix[t:])
    sizes = {u["name"]: u["size"] for u in result.capacity["units"]}
    grown = {g.unit for g in result.state.growth}
    assert all(sizes[u] > 6 for u in grown)
    # the history (history.csv) records every growth: which unit, how many neurons, before
    # which task
    rows = [r for r in result.history if r["phase"] == "grow"]
    assert sorted((r["unit"], r["neurons"]) for r in rows) == sorted(
        (g.unit, g.neurons) for g in result.state.growth
    )
    assert all(r["reason"] == "when-full" and r["task"] in (*range(5), "router") for r in rows)


@pytest.mark.parametrize("growth", [{"grow": 2}, {"grow_policy": "refill"}])
def test_growing_is_refused_for_methods_whose_state_follows_the_parameters(
    growth: dict[str, Any],
) -> None:
    with pytest.raises(ef.ConfigError, match=r"cannot grow.*ewc does not support it"):
        RunConfig(dataset="embedded", limit_per_class=30, method="ewc", **growth)


@pytest.mark.parametrize("method", ["eidetic+er", "eidetic+lwf", "ewc+er"])
def test_growing_a_chain_is_refused_at_construction_naming_the_members_without_it(
    method: str,
) -> None:
    members = [m for m in method.split("+") if m != "eidetic"]
    refusing = " and ".join(members) + (" does" if len(members) == 1 else " do")
    with pytest.raises(ef.ConfigError, match=re.escape(method) + f" cannot grow.*{refusing} not"):
        RunConfig(method=method, grow=4)


class _DenseMLP(torch.nn.Module):
    """A layer and the heads read two units at once (``torch.cat``): growing the first
    unit inserts columns in the middle of their inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(37, 23)
        self.second = torch.nn.Linear(23, 19)
        self.third = torch.nn.Linear(42, 17)
        self.heads = torch.nn.ModuleList(torch.nn.Linear(59, 3) for _ in range(3))

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        a = torch.relu(self.first(x))
        b = torch.relu(self.second(a))
        c = torch.relu(self.third(torch.cat([a, b], 1)))
        return self.heads[task](torch.cat([a, b, c], 1))


@pytest.mark.parametrize("forward_transfer", [True, False])
def test_growth_inside_a_concatenation_keeps_finished_tasks_bit_identical(
    forward_transfer: bool,
) -> None:
    torch.manual_seed(0)
    model = _DenseMLP()
    topology = ef.trace_topology(model, torch.randn(4, 37))
    state = ef.init(model, topology=topology)
    g = torch.Generator().manual_seed(0)
    x, y, probe = torch.randn(8, 37), torch.randint(0, 3, (8,)), torch.randn(5, 37)
    expected: dict[int, Tensor] = {}
    for task in range(3):
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(3):
            state, _ = ef.train_step(model, state, (x, y), optimizer=opt, task=task)
        state = prune_by_plan(state, ef.topology_of(state), (KEEP_ONE,), g)
        state = ef.finish_task(state, forward_transfer=forward_transfer)
        expected[task], _ = ef.forward(model, state, probe, task=task, train=False)
        state = ef.recycle(state, generator=g)
        if task < 2:
            old = state
            model, state = ef.grow(
                model,
                state,
                unit="first",
                neurons=4,
                generator=g,
                forward_transfer=forward_transfer,
            )
            # the heads read first | second | third: second's and third's columns moved
            readers = {r.layer: r.offset for u in ef.topology_of(state).units for r in u.readers}
            assert readers["heads.0"] == 23 + 4 * (task + 1) + 19
            _assert_old_entries_kept(old, state, _inserted(old, "first", 4))
        for t, out in expected.items():
            now, _ = ef.forward(model, state, probe, task=t, train=False)
            assert torch.equal(now, out), f"task {t} changed after task {task}"


def test_the_growth_plans_name_the_full_units_or_refill_to_the_first_tasks_capacity() -> None:
    model = MLP(6, [2, 2, 2], num_layers=2, width=5, bn=False)
    state = ef.init(model)
    assert ef.growth_plan(state, policy="when-full", neurons=3) == {}
    assert ef.growth_plan(state, policy="refill") == {}  # nothing owned yet
    # task 0 keeps 2 neurons of blocks.0 and all 5 of blocks.1
    state = ef.bridge(ef.prune_neurons(state, {"blocks.0": torch.tensor([0, 1, 1, 0, 1]).bool()}))
    state = ef.finish_task(state)
    assert ef.growth_plan(state, policy="when-full", neurons=3) == {"blocks.1": 3}
    assert ef.growth_plan(state, policy="when-full", neurons=0) == {}
    plan = ef.growth_plan(state, policy="refill")
    assert plan == {"blocks.0": 2, "blocks.1": 5}
    for unit, k in plan.items():
        model, state = ef.grow(model, state, unit=unit, neurons=k, generator=torch.Generator())
    assert [u.free for u in ef.capacity(state).units] == [5, 5]  # the first task's capacity
    assert ef.growth_plan(state, policy="refill") == {}
    with pytest.raises(ef.ConfigError, match="policy"):
        ef.growth_plan(state, policy="always")
    with pytest.raises(ef.ConfigError, match="no effect"):
        RunConfig(grow=4, grow_policy="refill")


def test_a_run_with_the_refill_policy_starts_every_task_with_the_first_tasks_capacity() -> None:
    config = RunConfig(
        dataset="embedded", limit_per_class=20, width=10, batch_size=32,
        train=TrainConfig(max_epochs=1, patience=1),
        eidetic=EideticNet(pruning_step=0.5, score_batches=1), grow_policy="refill",
        router=False, progress=False,
    )  # fmt: skip
    result = run(config, log=lambda _: None)
    assert result.summary["backward_transfer"] == 0.0
    for unit in result.capacity["units"]:
        # before each task but the first, refill added what the tasks so far had taken, so
        # a unit is its 10 neurons plus what every task but the last (no refill after it) owns
        last = len(result.task_names) - 1
        owned = sum(n for t, n in unit["owned"].items() if int(t) < last)
        assert unit["size"] == 10 + owned
