"""Pruning and bridging: properties over random states, and end-to-end bit-identity."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import OPTIMIZERS, ModelSpec, batch, model_specs, prune_free_neurons, prune_rows

import eidetic_func as ef
from eidetic_func.core.topology import neuron_alive, neuron_owner, reader_columns, rows


def _random_partial_state(
    spec: ModelSpec, seed: int
) -> tuple[torch.nn.Module, ef.EideticState, ef.Topology]:
    """A state with one finished task and some neurons pruned in the current task."""
    model = spec.build(seed)
    topology = model.topology()
    g = torch.Generator().manual_seed(seed)
    state = prune_free_neurons(ef.init(model), topology, g, 0.5)
    state = ef.finish_task(state, task=0)
    state = ef.recycle(state, generator=g)
    return model, prune_free_neurons(state, topology, g, 0.3), topology


@given(
    spec=model_specs(("mlp", "convnet", "resnet")),
    seed=st.integers(0, 2**16),
    fraction=st.floats(0.05, 0.95),
    method=st.sampled_from(["l1", "l2", "random", "taylor"]),
    constant_step=st.booleans(),
)
def test_prune_never_touches_owned_entries_never_unprunes_and_prunes_the_ruled_count(
    spec: ModelSpec, seed: int, fraction: float, method: str, constant_step: bool
) -> None:
    model, state, _ = _random_partial_state(spec, seed)
    g = torch.Generator().manual_seed(seed)
    data = [batch(spec, g)]
    scores = ef.score(model, state, data, method=method, task=1, generator=g)
    before = ef.prunable(state)
    try:
        after_state = ef.prune(
            state, scores, fraction=fraction, method=method, constant_step=constant_step
        )
    except ef.NothingToPrune:
        return
    for k, own in state.owner.items():
        if k in state.params:
            owned = own >= 0
            assert torch.equal(after_state.params[k][owned], state.params[k][owned])
            assert not bool((state.keep[k] & ~after_state.keep[k] & owned).any())
            assert bool((after_state.keep[k] <= state.keep[k]).all()), "un-pruned an entry"
    after = ef.prunable(after_state)
    pruned = {n: before[n] & ~after[n] for n in before}
    for name in pruned:
        assert not bool((after[name] & ~before[name]).any())
        if bool(before[name].any()):
            assert bool(after[name].any()), f"unit {name} lost its last free neuron"
    if method == "taylor":
        base = (
            sum(m.numel() for m in before.values())
            if constant_step
            else sum(int(m.sum()) for m in before.values())
        )
        ceiling = math.floor(fraction * base)
        total = sum(int(m.sum()) for m in pruned.values())
        # exactly the rule, less only the one best candidate each unit must keep
        assert ceiling - len(before) <= total <= ceiling
        threshold = max(
            (float(scores[n][m].max()) for n, m in pruned.items() if m.any()), default=None
        )
        if threshold is not None:
            for name, m in after.items():
                survivors = scores[name][m]
                # no survivor scores strictly below a pruned neuron, save each unit's kept best
                assert int((survivors < threshold).sum()) <= 1
    else:
        for name, mask in pruned.items():
            base = before[name].numel() if constant_step else int(before[name].sum())
            expected = min(math.floor(fraction * base), max(int(before[name].sum()) - 1, 0))
            assert int(mask.sum()) == expected, name


@given(spec=model_specs(("mlp", "convnet", "convnet_flat", "resnet")), seed=st.integers(0, 2**16))
def test_after_bridge_no_live_weight_reads_a_pruned_neuron_and_bridge_is_idempotent(
    spec: ModelSpec, seed: int
) -> None:
    _model, state, topology = _random_partial_state(spec, seed)
    g = torch.Generator().manual_seed(seed + 1)
    # prune whole neurons at random, and mask the weight rows of others on one side only
    # (those keep a bias or BatchNorm entry, so they stay alive), then bridge
    dead_sets, rows_only = {}, {}
    for unit in topology.units:
        size = state.params[f"{unit.producers[0]}.weight"].shape[0]
        free = neuron_owner(unit, state.owner) < 0
        draw = torch.rand(size, generator=g)
        dead_sets[unit.name] = (draw < 0.3) & free
        rows_only[unit.name] = (draw > 0.8) & free
    state = ef.prune_neurons(state, dead_sets)
    keep = dict(state.keep)
    for unit in topology.units:
        key = f"{unit.producers[0]}.weight"
        keep[key] = keep[key] & ~rows(rows_only[unit.name], keep[key])
    rough = state.replace(keep=keep)
    bridged = ef.bridge(rough)
    for k in keep:
        assert bool((bridged.keep[k] <= rough.keep[k]).all()), "bridge added an entry back"
        own = state.owner[k] >= 0
        assert torch.equal(bridged.params[k][own], state.params[k][own])
        assert bool((bridged.params[k][~bridged.keep[k] & ~own] == 0).all())
    for unit in topology.units:
        dead = ~neuron_alive(unit, bridged.keep)
        free = neuron_owner(unit, state.owner) < 0
        dead = dead & free
        for layer in unit.producers:
            assert not bool(bridged.keep[f"{layer}.weight"][dead].any())
        for norm in unit.norms:
            assert not bool(bridged.keep[f"{norm}.weight"][dead].any())
        for reader in unit.readers:
            w = bridged.params[f"{reader.layer}.weight"]
            cols = reader_columns(reader, dead, w.shape[1])
            assert bool((w[:, cols] == 0).all()), (
                f"{reader.layer} reads a pruned neuron of {unit.name}"
            )
    twice = ef.bridge(bridged)
    for k in keep:
        assert torch.equal(twice.keep[k], bridged.keep[k])
        assert torch.equal(twice.params[k], bridged.params[k])


@pytest.mark.parametrize("kind", ["convnet", "resnet"])
@pytest.mark.parametrize("method", ["l1", "l2", "random", "taylor"])
@given(seed=st.integers(0, 2**16), forward_transfer=st.booleans())
def test_pruned_then_finished_tasks_stay_bit_identical_while_later_tasks_train(
    kind: str, method: str, seed: int, forward_transfer: bool
) -> None:
    spec = ModelSpec(kind, bn=True, width=3, num_layers=1, num_tasks=3)
    model = spec.build(seed)
    topology = model.topology()
    opt = OPTIMIZERS["adamw"](list(model.parameters()))
    g = torch.Generator().manual_seed(seed)
    probe = batch(spec, torch.Generator().manual_seed(seed + 5), size=4)[0]
    state = ef.init(model)
    expected: dict[int, torch.Tensor] = {}
    for task in range(spec.num_tasks):
        for step in range(4):
            data = batch(spec, g)
            state, _ = ef.train_step(model, state, data, optimizer=opt, task=task)
            if step == 1:
                state = prune_free_neurons(state, topology, g, 0.4, method, model, [data])
            for t, out in expected.items():
                assert torch.equal(ef.forward(model, state, probe, task=t, train=False)[0], out)
        state = ef.finish_task(state, task=task, forward_transfer=forward_transfer)
        state = ef.recycle(state, generator=g)
        expected[task] = ef.forward(model, state, probe, task=task, train=False)[0]
        for t, out in expected.items():
            assert torch.equal(ef.forward(model, state, probe, task=t, train=False)[0], out)


def test_nothing_to_prune_is_explicit() -> None:
    spec = ModelSpec("mlp", bn=True, width=2, num_layers=1, num_tasks=2)
    model = spec.build(0)
    state = ef.init(model)
    scores = ef.score(model, state, None, method="l2", task=0)
    with pytest.raises(ef.NothingToPrune, match="candidate"):
        ef.prune(state, scores, fraction=0.4, method="l2")


def test_random_and_lp_pruning_never_reach_frozen_neurons_when_few_free_remain() -> None:
    spec = ModelSpec("mlp", bn=True, width=8, num_layers=2, num_tasks=2)
    model = spec.build(0)
    topology = model.topology()
    state = ef.init(model)
    for key in ("blocks.0.linear.weight", "blocks.1.linear.weight"):
        state = prune_rows(state, topology, key, [0, 1])  # 2 stay free after task 0
    state = ef.finish_task(state, task=0)
    g = torch.Generator().manual_seed(0)
    for method in ("random", "l1", "l2"):
        scores = ef.score(model, state, None, method=method, task=1, generator=g)
        pruned = ef.prune(state, scores, fraction=0.9, method=method, constant_step=True)
        for k, own in state.owner.items():
            if k in state.params:
                assert bool(pruned.keep[k][own >= 0].all()), method
        assert all(int(m.sum()) == 1 for m in ef.prunable(pruned).values())


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 2.0, float("nan")])
def test_fractions_outside_the_open_unit_interval_are_refused(fraction: float) -> None:
    spec = ModelSpec("mlp", bn=True, width=4, num_layers=1, num_tasks=2)
    model = spec.build(0)
    state = ef.init(model)
    scores = ef.score(model, state, None, method="l1", task=0)
    with pytest.raises(ef.ConfigError, match="fraction"):
        ef.prune(state, scores, fraction=fraction, method="l1")


def test_capacity_counts_owned_pruned_and_free_neurons() -> None:
    spec = ModelSpec("mlp", bn=True, width=6, num_layers=2, num_tasks=2)
    model = spec.build(0)
    topology = model.topology()
    state = ef.init(model)
    state = prune_rows(state, topology, "blocks.0.linear.weight", [0, 1])
    state = ef.finish_task(state, task=0)
    report = ef.capacity(prune_rows(state, topology, "blocks.0.linear.weight", [0]))
    first = report.units[0]
    assert (first.size, first.owned, first.pruned, first.free) == (6, {0: 4}, 1, 1)
    assert (
        report.total == 12 and report.owned == {0: 10} and report.pruned == 1 and report.free == 1
    )
    assert report.pruned_fraction == 0.5
    assert report.to_dict()["owned"] == {"0": 10}


@pytest.mark.parametrize("bn", [False, True])
def test_a_neuron_with_only_its_bias_or_batchnorm_shift_left_stays_alive(bn: bool) -> None:
    spec = ModelSpec("mlp", bn=bn, width=4, num_layers=2, num_tasks=2)
    model = spec.build(0)
    topology = model.topology()
    state = ef.init(model)
    keep = dict(state.keep)
    keep["blocks.1.linear.weight"] = torch.zeros_like(keep["blocks.1.linear.weight"])
    bridged = ef.bridge(state.replace(keep=keep))
    # every input column is gone, but readers still see the bias (or BN shift): alive
    assert bool(neuron_alive(topology.units[1], bridged.keep).all())
    assert bool(bridged.keep["heads.0.weight"].all())
    assert int(ef.capacity(bridged).units[1].free) == 4
    # pruning removes a neuron's every entry, and then the head no longer reads it
    pruned = prune_rows(state, topology, "blocks.1.linear.weight", [0])
    assert not bool(neuron_alive(topology.units[1], pruned.keep)[0])
    assert not bool(pruned.keep["heads.0.weight"][:, 0].any())
