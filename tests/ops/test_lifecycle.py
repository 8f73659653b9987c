"""finish_task ownership rules, recycling and revisits."""

from __future__ import annotations

import pytest
import torch
from eidetic_func.models import MLP
from strategies import prune_rows

import eidetic_func as ef


def _model() -> MLP:
    torch.manual_seed(0)
    return MLP(5, [2, 2, 2], num_layers=2, width=4)


def _prune_rows(
    state: ef.EideticState, key: str, rows: list[int], topology: ef.Topology
) -> ef.EideticState:
    return prune_rows(state, topology, key, rows)


def test_finish_task_owns_survivors_whole_rows_and_the_head_and_frees_pruned_neurons() -> None:
    model = _model()
    topology = model.topology()
    state = _prune_rows(ef.init(model), "blocks.0.linear.weight", [1, 3], topology)
    done = ef.finish_task(state, task=0)
    w0 = done.owner["blocks.0.linear.weight"]
    assert (w0[[0, 2]] == 0).all() and (w0[[1, 3]] == -1).all()
    assert (done.params["blocks.0.linear.weight"][[1, 3]] == 0).all()
    assert (done.owner["blocks.0.norm.weight"] == torch.tensor([0, -1, 0, -1])).all()
    assert (done.owner["blocks.0.norm.running_mean"] == torch.tensor([0, -1, 0, -1])).all()
    assert (done.params["blocks.0.norm.weight"][[1, 3]] == 0).all()
    # the next layer's rows are owned whole, with the pruned neurons' columns at zero
    w1 = done.owner["blocks.1.linear.weight"]
    assert (w1 == 0).all()
    assert (done.params["blocks.1.linear.weight"][:, [1, 3]] == 0).all()
    assert (done.owner["heads.0.weight"] == 0).all() and (done.owner["heads.0.bias"] == 0).all()
    assert (done.owner["heads.1.weight"] == -1).all()
    assert done.task == 1 and done.finished == (0,)
    assert all(bool(k.all()) for k in done.keep.values())


def test_without_forward_transfer_the_next_task_cannot_read_owned_neurons() -> None:
    model = _model()
    topology = model.topology()
    state = _prune_rows(ef.init(model), "blocks.0.linear.weight", [1, 3], topology)
    state = _prune_rows(state, "blocks.1.linear.weight", [0, 1], topology)
    done = ef.finish_task(state, task=0, forward_transfer=False)
    keep1 = done.keep["blocks.1.linear.weight"]
    # free rows 0, 1 of layer 1 may not read owned neurons 0, 2 of layer 0
    assert not keep1[0:2][:, [0, 2]].any() and keep1[0:2][:, [1, 3]].all()
    assert (done.params["blocks.1.linear.weight"][0:2][:, [0, 2]] == 0).all()
    # the next head may only read the free neurons 0, 1 of the last layer
    assert not done.keep["heads.1.weight"][:, [2, 3]].any()
    # the first layer reads the input, never masked
    assert done.keep["blocks.0.linear.weight"].all()
    with_ft = ef.finish_task(state, task=0, forward_transfer=True)
    assert all(bool(k.all()) for k in with_ft.keep.values())


def test_recycle_is_deterministic_and_resets_only_free_entries() -> None:
    model = _model()
    topology = model.topology()
    state = _prune_rows(ef.init(model), "blocks.0.linear.weight", [1, 3], topology)
    done = ef.finish_task(state, task=0)
    a = ef.recycle(done, generator=torch.Generator().manual_seed(7))
    b = ef.recycle(done, generator=torch.Generator().manual_seed(7))
    c = ef.recycle(done, generator=torch.Generator().manual_seed(8))
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k])
        own = done.owner[k] >= 0
        assert torch.equal(a.params[k][own], done.params[k][own])
    w = a.params["blocks.0.linear.weight"][[1, 3]]
    assert (w != 0).all() and (w.abs() <= 1 / 5**0.5).all()
    assert not torch.equal(a.params["blocks.0.linear.weight"], c.params["blocks.0.linear.weight"])
    assert (a.params["blocks.0.norm.weight"][[1, 3]] == 1).all()
    assert (a.params["blocks.0.norm.bias"][[1, 3]] == 0).all()
    assert (a.buffers["blocks.0.norm.running_mean"][[1, 3]] == 0).all()
    assert (a.buffers["blocks.0.norm.running_var"][[1, 3]] == 1).all()
    bound = 1 / 4**0.5
    assert (a.params["heads.1.bias"].abs() <= bound).all()


def test_recycle_keeps_masked_out_free_entries_at_zero() -> None:
    model = _model()
    done = ef.finish_task(ef.init(model), task=0, forward_transfer=False)
    # everything was owned: nothing is free in the body; heads 1, 2 read owned neurons
    recycled = ef.recycle(done, generator=torch.Generator().manual_seed(0))
    masked = ~recycled.keep["heads.1.weight"]
    assert masked.all() and (recycled.params["heads.1.weight"] == 0).all()


def test_revisit_releases_only_the_head_and_keeps_others_bit_identical() -> None:
    model = _model()
    topology = model.topology()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(8, 5), torch.randint(0, 2, (8,))
    state = ef.init(model)
    for task in range(2):
        state = (
            _prune_rows(state, "blocks.0.linear.weight", [task * 2], topology)
            if task == 0
            else state
        )
        state, _ = ef.train_step(model, state, (x, y), optimizer=opt, task=task)
        state = ef.finish_task(state, task=task)
    out1, _ = ef.forward(model, state, x, task=1, train=False)
    again = ef.revisit(state, task=0)
    assert (again.owner["heads.0.weight"] == -1).all() and again.task == 0
    assert again.finished == (1,)
    for _ in range(3):
        again, _ = ef.train_step(model, again, (x, y), optimizer=opt, task=0)
    again = ef.finish_task(again, task=0)
    assert torch.equal(ef.forward(model, again, x, task=1, train=False)[0], out1)
    with pytest.raises(ef.TaskError, match="revisit"):
        ef.train_step(model, again, (x, y), optimizer=opt, task=1)
    with pytest.raises(ef.TaskError, match="not finished"):
        ef.revisit(again, task=2)


def test_finish_task_refuses_the_wrong_task() -> None:
    model = _model()
    with pytest.raises(ef.TaskError, match="training task 0"):
        ef.finish_task(ef.init(model), task=1)
