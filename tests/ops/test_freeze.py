"""Freezing by projection, and why gradient zeroing alone is not freezing."""

from __future__ import annotations

import torch
from eidetic_func.models import MLP
from hypothesis import given
from hypothesis import strategies as st
from strategies import prune_rows

import eidetic_func as ef


def _finished_state(seed: int = 0) -> tuple[MLP, ef.EideticState]:
    torch.manual_seed(seed)
    model = MLP(8, [3, 3], num_layers=2, width=6)
    state = ef.init(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    for _ in range(3):
        state, _ = ef.train_step(model, state, (x, y), optimizer=opt, task=0)
    topology = model.topology()
    state = prune_rows(state, topology, "blocks.0.linear.weight", [0, 1])
    state = ef.finish_task(state, task=0)
    return model, ef.recycle(state, generator=torch.Generator().manual_seed(seed))


@given(seed=st.integers(0, 10_000))
def test_freeze_restores_owned_entries_bit_for_bit_whatever_the_new_values(seed: int) -> None:
    _, old = _finished_state()
    g = torch.Generator().manual_seed(seed)
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-45])
    params = {}
    for k, p in old.params.items():
        noise = torch.randn(p.shape, generator=g)
        pick = torch.randint(0, 6, p.shape, generator=g)
        params[k] = torch.where(pick < 5, specials[pick.clamp(max=4)], noise)
    buffers = {
        k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v
        for k, v in old.buffers.items()
    }
    frozen = ef.freeze(old.replace(params=params, buffers=buffers), old)
    trainable = ef.trainable(old)
    for k, p in frozen.params.items():
        fixed = ~trainable[k]
        assert torch.equal(p[fixed].view(torch.int32), old.params[k][fixed].view(torch.int32))
        assert torch.equal(p[~fixed].view(torch.int32), params[k][~fixed].view(torch.int32))
    for k, own in old.owner.items():
        if k in old.buffers:
            assert torch.equal(frozen.buffers[k][own >= 0], old.buffers[k][own >= 0])


def test_freeze_shares_wholly_frozen_tensors_and_never_aliases_the_new_ones() -> None:
    _, old = _finished_state()
    new = old.replace(params={k: p.detach().clone().add_(1.0) for k, p in old.params.items()})
    frozen = ef.freeze(new, old)
    trainable = ef.trainable(old)
    assert any(not bool(m.any()) for m in trainable.values()), "fixture: a wholly frozen tensor"
    assert any(bool(m.all()) for m in trainable.values()), "fixture: a wholly free tensor"
    for k, p in frozen.params.items():
        assert p.untyped_storage().data_ptr() != new.params[k].untyped_storage().data_ptr()
        if not bool(trainable[k].any()):
            assert p is old.params[k]  # immutable, so sharing is safe and costs nothing
        if bool(trainable[k].all()):
            assert torch.equal(p, new.params[k])


def test_freeze_grads_zeroes_exactly_the_entries_that_may_not_change() -> None:
    _, state = _finished_state()
    grads = {k: torch.ones_like(p) for k, p in state.params.items()}
    frozen = ef.freeze_grads(grads, state)
    trainable = ef.trainable(state)
    for k, g in frozen.items():
        assert torch.equal(g, trainable[k].float())
        assert bool((grads[k] == 1).all()), "freeze_grads wrote into its input"


def test_gradient_zeroing_alone_drifts_under_adamw_while_freeze_does_not() -> None:
    model, state = _finished_state()
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    owned = {k: own >= 0 for k, own in state.owner.items() if k in state.params}

    # The original approach: zero the gradients of frozen entries, then step.
    zeroing = {k: p.clone().requires_grad_(True) for k, p in state.params.items()}
    opt = torch.optim.AdamW(zeroing.values(), lr=1e-2, weight_decay=0.1)
    for _ in range(5):
        opt.zero_grad()
        logits = torch.func.functional_call(model, (zeroing, state.buffers), (x, 1))
        torch.nn.functional.cross_entropy(logits, y).backward()
        grads = {k: p.grad for k, p in zeroing.items() if p.grad is not None}
        for k, g in ef.freeze_grads(grads, state).items():
            zeroing[k].grad = g
        opt.step()
    drifted = [
        k
        for k, p in zeroing.items()
        if not torch.equal(p.detach()[owned[k]], state.params[k][owned[k]])
    ]
    assert drifted, "AdamW's decoupled weight decay should move gradient-zeroed weights"

    # The functional step: projection after every step.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    after = state
    for _ in range(5):
        after, _ = ef.train_step(
            model, after, (x, y), optimizer=opt, task=1, zero_frozen_grads=True
        )
    for k, mask in owned.items():
        assert torch.equal(after.params[k][mask], state.params[k][mask]), k


def test_trainable_is_free_and_kept() -> None:
    _, state = _finished_state()
    for k, mask in ef.trainable(state).items():
        assert torch.equal(mask, (state.owner[k] < 0) & state.keep[k])


def test_freeze_returns_tensors_detached_from_any_graph() -> None:
    torch.manual_seed(0)
    model = MLP(4, [2], num_layers=1, width=3, bn=False)
    state = ef.init(model)
    live = {k: (v * 1.0).requires_grad_(True) for k, v in state.params.items()}
    frozen = ef.freeze(state.replace(params=live), state)
    assert not any(v.requires_grad for v in frozen.params.values())
