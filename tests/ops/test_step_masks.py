"""Step masks: derived from the state's ownership and pruning mask once, as a value, and
refused with any state whose masks are other tensors."""

from __future__ import annotations

import pytest
import torch
from eidetic_func.models import MLP
from hypothesis import given
from hypothesis import strategies as st
from strategies import prune_rows

import eidetic_func as ef
from eidetic_func.core.errors import StateMismatchError
from eidetic_func.nn.batchnorm import blend_masks
from eidetic_func.ops.workspace import anchor, restore_, restorer


def _finished_state() -> tuple[MLP, ef.EideticState, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = MLP(8, [3, 3], num_layers=2, width=6)
    state = ef.init(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = (torch.randn(16, 8), torch.randint(0, 3, (16,)))
    for _ in range(2):
        state, _ = ef.train_step(model, state, batch, optimizer=opt, task=0)
    state = prune_rows(state, model.topology(), "blocks.0.linear.weight", [0, 1])
    state = ef.finish_task(state, task=0)
    return model, ef.recycle(state, generator=torch.Generator().manual_seed(0)), batch


def _assert_same_masks(a: ef.StepMasks, b: ef.StepMasks) -> None:
    assert a.coverage == b.coverage
    for field in ("bits", "owned", "frozen_channels"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), (field, k)
    assert a.blends.keys() == b.blends.keys()
    for k in a.blends:
        for s, t in zip(a.blends[k], b.blends[k]):
            assert s.dtype == t.dtype and torch.equal(s, t), k


def test_masks_prepared_once_equal_masks_derived_fresh_after_many_steps() -> None:
    model, state, batch = _finished_state()
    masks = ef.step_masks(state)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    for _ in range(3):
        state, _ = ef.train_step(model, state, batch, optimizer=opt, masks=masks)
        assert masks.matches(state)
    _assert_same_masks(masks, ef.step_masks(state))


def test_masks_hold_what_freezing_and_the_frozen_bn_channels_derive() -> None:
    _, state, _ = _finished_state()
    masks = ef.step_masks(state)
    for k, mask in ef.trainable(state).items():
        assert torch.equal(masks.bits[k].bool(), mask)
        expected = True if bool(mask.all()) else False if not bool(mask.any()) else None
        assert masks.coverage[k] is expected
    owned = state.owner["blocks.0.norm.running_mean"] >= 0
    assert bool(owned.any()) and not bool(owned.all()), "the test needs a mixed layer"
    assert torch.equal(masks.owned["blocks.0.norm.running_var"], owned)
    indices = masks.frozen_channels["blocks.0.norm.frozen_channels"]
    assert torch.equal(indices, owned.nonzero().squeeze(1))
    blend = masks.blends["blocks.0.norm"]
    assert blend[0] is indices
    for s, t in zip(blend[1:], blend_masks(indices, state.buffers["blocks.0.norm.running_mean"])):
        assert torch.equal(s, t)


def test_a_step_with_prepared_masks_is_bit_identical_to_one_deriving_them() -> None:
    _, state, batch = _finished_state()
    masks = ef.step_masks(state)
    results = []
    for prepared in (masks, None):
        torch.manual_seed(1)
        net = MLP(8, [3, 3], num_layers=2, width=6)
        opt = torch.optim.AdamW(net.parameters(), lr=0.1, weight_decay=0.5)
        s = state
        for _ in range(2):
            s, _ = ef.train_step(net, s, batch, optimizer=opt, masks=prepared)
        results.append(s)
    for k in state.params:
        assert torch.equal(
            results[0].params[k].view(-1).view(torch.int32),
            results[1].params[k].view(-1).view(torch.int32),
        )
    for k in state.buffers:
        assert torch.equal(results[0].buffers[k], results[1].buffers[k])


@pytest.mark.parametrize("change", ["finish", "prune", "written owner"])
def test_masks_of_another_state_are_refused_and_nothing_changes(change: str) -> None:
    model, state, batch = _finished_state()
    masks = ef.step_masks(state)
    if change == "finish":
        other = ef.finish_task(state, task=1)
        other = other.replace(task=1, finished=state.finished)  # trainable task, new owner
    elif change == "prune":
        other = prune_rows(state, model.topology(), "blocks.0.linear.weight", [0])
    else:
        other = state.replace(owner={k: v.clone() for k, v in state.owner.items()})
        with torch.no_grad():
            other.owner["blocks.0.linear.weight"][0, 0] = 0
        masks = ef.step_masks(other)
        other.owner["blocks.0.linear.weight"][0, 0] = 1  # an in-place write after preparing
    assert not masks.matches(other)
    before = {k: (p.clone(), p._version) for k, p in other.params.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(StateMismatchError, match="step_masks"):
        ef.train_step(model, other, batch, optimizer=opt, task=1, masks=masks)
    with pytest.raises(StateMismatchError):
        ef.freeze(other, other, masks=masks)
    for k, (value, version) in before.items():
        assert other.params[k]._version == version and torch.equal(other.params[k], value)


def test_preparing_masks_leaves_the_state_untouched() -> None:
    _, state, _ = _finished_state()
    tensors = [*state.owner.values(), *state.keep.values(), *state.params.values()]
    before = [(t.clone(), t._version) for t in tensors]
    masks = ef.step_masks(state)
    assert masks.matches(state)
    for t, (value, version) in zip(tensors, before):
        assert t._version == version and torch.equal(t, value)


def test_the_prepared_bn_blend_is_lent_to_the_modules_for_the_step_only() -> None:
    model, state, batch = _finished_state()
    masks = ef.step_masks(state)
    bn = model.get_submodule("blocks.0.norm")
    seen = []
    hook = bn.register_forward_pre_hook(lambda m, _: seen.append(m.frozen_blend))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ef.train_step(model, state, batch, optimizer=opt, masks=masks)
    hook.remove()
    assert seen == [masks.blends["blocks.0.norm"]]
    assert bn.frozen_blend is None and bn.frozen_channels.numel() == 0


def _with_frozen(
    rows: list[int], columns: list[int], single: tuple[int, int] | None
) -> tuple[ef.EideticState, str]:
    """A conv layer's state whose weight has frozen ``rows`` (owned), frozen ``columns``
    (pruned inputs) and, optionally, one more frozen entry (owned)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(5, 7, 3))
    state = ef.init(model)
    name = "0.weight"
    owner, keep = state.owner[name].clone(), state.keep[name].clone()
    owner[rows] = 0
    keep[:, columns] = False
    if single is not None:
        owner[single] = 0
    return state.replace(owner={**state.owner, name: owner}, keep={**state.keep, name: keep}), name


@given(
    rows=st.lists(st.integers(0, 6), max_size=7, unique=True),
    columns=st.lists(st.integers(0, 4), max_size=5, unique=True),
    single=st.none() | st.tuples(st.integers(0, 6), st.integers(0, 4)),
    seed=st.integers(0, 2**16),
)
def test_restoring_frozen_lines_is_bit_identical_to_restoring_every_frozen_entry(
    rows: list[int], columns: list[int], single: tuple[int, int] | None, seed: int
) -> None:
    state, name = _with_frozen(rows, columns, single)
    masks = ef.step_masks(state)
    if masks.coverage[name] is not None:
        return  # nothing or everything frozen: no restore by lines at all
    lines = masks.lines[name]
    frozen = ~masks.bits[name].bool()
    if lines is None:  # only when one more entry lies outside the frozen lines
        assert single is not None and single[0] not in rows and single[1] not in columns
        return
    assert sorted(lines[0].tolist()) == sorted(rows)
    assert sorted(lines[1].tolist()) == sorted(columns)
    g = torch.Generator().manual_seed(seed)
    old = torch.randn(state.params[name].shape, generator=g)
    new = torch.randn(old.shape, generator=g)
    old.view(-1)[:3] = torch.tensor([float("nan"), -0.0, float("inf")])  # exact bits, not values
    new.view(-1)[3:6] = torch.tensor([float("nan"), -0.0, float("-inf")])
    expected = torch.where(frozen, old.view(torch.int32), new.view(torch.int32))
    restore_(masks, name, anchor(masks, name, old), new, old)
    assert torch.equal(new.view(torch.int32), expected)


def test_frozen_rows_copied_as_wide_elements_keep_every_bit_signalling_nans_included() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 6))  # rows of 32 bytes: 16-byte elements
    state = ef.init(model)
    name = "0.weight"
    owner = state.owner[name].clone()
    owner[[0, 2, 5]] = 0
    state = state.replace(owner={**state.owner, name: owner})
    masks = ef.step_masks(state)
    assert masks.lines[name] is not None
    g = torch.Generator().manual_seed(0)
    old = torch.randint(-(2**31), 2**31 - 1, (6, 8), dtype=torch.int32, generator=g)
    pairs = old.view(torch.int64)  # float64 signalling NaNs and a negative one, as pairs
    pairs[:, 0] = 0x7FF0000000000001
    pairs[:, 3] = -0x000FFFFFFFFFFFFF
    old_f, new = old.view(torch.float32), torch.randn(6, 8, generator=g)
    expected = torch.where(~masks.bits[name].bool(), old, new.view(torch.int32))
    for restore in ("restore_", "restorer"):
        out = new.clone()
        kept = anchor(masks, name, old_f)
        if restore == "restore_":
            restore_(masks, name, kept, out, old_f)
        else:
            restorer(masks, name, kept, out, old_f)()
        assert torch.equal(out.view(torch.int32), expected), restore
