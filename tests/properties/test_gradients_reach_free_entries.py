"""Gradients reach every free entry the loss depends on, whatever a finished task owns.

After a task is finished (by EideticNet, which owns whole neurons, or PackNet, which owns
single weights, so an owned BatchNorm channel can read weights a later task trains), the
gradient the next task's training sees for every trainable entry equals the gradient of the
plain semantics of Task BatchNorm — frozen channels normalized with their running
statistics, free ones with the batch's, blended by ``torch.where`` — in float64. A frozen
channel once computed as a constant blocked that gradient: PackNet then trained only its
heads (50 % on later tasks of Split-MNIST).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from eidetic_func.models import MLP, ConvNet
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

import eidetic_func as ef
from eidetic_func.methods.packnet import PackNet, magnitude_prune, own_entries, packnet_prunable
from eidetic_func.nn.batchnorm import _TaskBatchNorm


def _model(family: str) -> torch.nn.Module:
    if family == "mlp":
        return MLP(12, [2, 2], num_layers=2, width=6, bn=True).double()
    return ConvNet(1, [2, 2], num_layers=2, width=4, image_size=8).double()


def _batch(family: str, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (8, 12) if family == "mlp" else (8, 1, 8, 8)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randint(
        0, 2, (8,), generator=g
    )


def _finished_task_0(
    family: str, method: str, seed: int
) -> tuple[torch.nn.Module, ef.EideticState]:
    torch.manual_seed(seed)
    model = _model(family)
    state = ef.init(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for i in range(2):
        state, _ = ef.train_step(model, state, _batch(family, seed + i), optimizer=opt, task=0)
    if method == "eidetic":
        scores = ef.score(model, state, [_batch(family, seed + 7)], method="taylor")
        state = ef.finish_task(ef.bridge(ef.prune(state, scores, fraction=0.3, method="taylor")))
        state = ef.recycle(state, generator=torch.Generator().manual_seed(seed))
    else:
        packnet = PackNet(prune_ratio=0.5)
        state = magnitude_prune(state, packnet.prune_ratio, packnet_prunable(state))
        state = own_entries(state, task=0, entries=packnet.claims(state, 0))
    return model, state


def _loss(
    model: torch.nn.Module,
    state: ef.EideticState,
    params: dict[str, Tensor],
    batch: tuple[Tensor, Tensor],
) -> Tensor:
    logits, _ = ef.forward(model, state.replace(params=params), batch[0], task=1, train=True)
    return F.cross_entropy(logits, batch[1])


def _plain_task_batchnorm(self: Any, input: Tensor) -> Tensor:
    """Task BatchNorm's meaning, written plainly (differentiable everywhere it should be)."""
    if not self.training or self.frozen_channels.numel() == 0:
        return F.batch_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            self.momentum or 0.0,
            self.eps,
        )
    frozen = torch.zeros(input.shape[1], dtype=torch.bool)
    frozen[self.frozen_channels] = True
    shape = (1, -1) + (1,) * (input.dim() - 2)
    fixed = F.batch_norm(
        input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
    )
    batch = F.batch_norm(
        input,
        self.running_mean.clone(),
        self.running_var.clone(),
        self.weight,
        self.bias,
        True,
        self.momentum or 0.0,
        self.eps,
    )
    return torch.where(frozen.view(shape), fixed, batch)


def _grads(
    model: torch.nn.Module, state: ef.EideticState, batch: tuple[Tensor, Tensor]
) -> dict[str, Tensor]:
    params = {k: v.detach().clone().requires_grad_() for k, v in state.params.items()}
    grads = torch.autograd.grad(
        _loss(model, state, params, batch), list(params.values()), allow_unused=True
    )
    return {k: torch.zeros_like(p) if g is None else g for (k, p), g in zip(params.items(), grads)}


@pytest.mark.parametrize("family", ["mlp", "convnet"])
@pytest.mark.parametrize("method", ["eidetic", "packnet"])
@given(seed=st.integers(0, 2**16))
def test_every_entry_gets_the_gradient_of_task_batchnorms_plain_semantics(
    family: str, method: str, seed: int
) -> None:
    model, state = _finished_task_0(family, method, seed)
    assert any(bool((o[:1] == 0).any()) for k, o in state.owner.items() if "norm" in k)
    batch = _batch(family, seed + 100)
    got = _grads(model, state, batch)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_TaskBatchNorm, "forward", _plain_task_batchnorm)
        expected = _grads(model, state, batch)
    trainable = ef.trainable(state)  # owned or pruned entries never move: their gradient is moot
    for key, mask in trainable.items():
        torch.testing.assert_close(
            got[key][mask], expected[key][mask], rtol=1e-9, atol=1e-12, msg=key
        )
    if method == "packnet":  # owned channels read free weights: their gradient is not zero
        behind = [k for k in ef.trainable(state) if "conv" in k or "linear" in k]
        assert any(bool(got[k][ef.trainable(state)[k]].abs().sum() > 0) for k in behind)
