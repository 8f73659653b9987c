"""Online meta-learning: the inner loop, the first-order outer step, less forgetting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from eidetic_func.models import MLP
from small_runs import embedded_summaries

import eidetic_func as ef
from eidetic_func.methods.oml import OML, adapt
from eidetic_func.methods.protocol import init_state, method_step


def _setup() -> tuple[MLP, ef.EideticState, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = MLP(6, [3, 3], num_layers=1, width=5, bn=False)
    return model, ef.init(model), (torch.randn(8, 6), torch.randint(0, 3, (8,)))


def test_the_inner_loop_takes_plain_gradient_steps_on_the_batch() -> None:
    model, state, (x, y) = _setup()
    assert all(
        torch.equal(v, state.params[k])
        for k, v in adapt(
            model, state.params, state.buffers, (x, y), task=0, lr=0.1, steps=0
        ).items()
    )
    one = adapt(model, state.params, state.buffers, (x, y), task=0, lr=0.1, steps=1)
    leaves = {k: v.clone().requires_grad_(True) for k, v in state.params.items()}
    logits = torch.func.functional_call(model, (leaves, state.buffers), (x,), {"task": 0})
    F.cross_entropy(logits, y).backward()
    for k, p in leaves.items():
        expected = p.detach() - 0.1 * (p.grad if p.grad is not None else 0.0)
        torch.testing.assert_close(one[k], expected)
    assert torch.equal(one["heads.1.weight"], state.params["heads.1.weight"])


def test_the_outer_step_uses_the_gradient_at_the_adapted_parameters() -> None:
    model, state, (x, y) = _setup()
    method = OML(inner_lr=0.1, inner_steps=2, buffer_size=4)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    new, mstate, metrics = method_step(
        method, model, state, init_state(method, model, state), (x, y), optimizer=opt, task=0
    )
    adapted = adapt(model, state.params, state.buffers, (x, y), task=0, lr=0.1, steps=2)
    leaves = {k: v.clone().requires_grad_(True) for k, v in adapted.items()}
    logits = torch.func.functional_call(model, (leaves, state.buffers), (x,), {"task": 0})
    loss = F.cross_entropy(logits, y)
    loss.backward()
    assert metrics.loss == pytest.approx(loss.item(), rel=1e-5)  # the value at θ'
    for k, p in leaves.items():  # SGD(lr=1): θ_new = θ − ∇_θ' L (empty memory at first)
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(new.params[k], state.params[k] - grad)
    assert mstate.buffer.size == 4


@pytest.mark.slow
def test_oml_forgets_less_than_fine_tuning_on_split_mnist() -> None:
    results = embedded_summaries(("finetune", "oml"), limit_per_class=300, epochs=2)
    assert results["oml"]["backward_transfer"] > results["finetune"]["backward_transfer"] + 0.02
