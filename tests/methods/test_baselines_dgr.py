"""Deep generative replay: the functional VAE and Adam, and less forgetting than fine-tuning."""

from __future__ import annotations

import pytest
import torch
from eidetic_func.models import MLP
from small_runs import embedded_summaries

import eidetic_func as ef
from eidetic_func.methods.dgr import DGR, adam_init, adam_update, vae_init, vae_loss
from eidetic_func.methods.protocol import TaskContext, end_task, init_state, method_step


def test_the_functional_adam_step_equals_torch_adam() -> None:
    g = torch.Generator().manual_seed(0)
    params = vae_init(12, 8, 3, g)
    opt = adam_init(params)
    reference = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    torch_adam = torch.optim.Adam(reference.values(), lr=1e-2)
    for _ in range(3):
        grads = {k: torch.randn(v.shape, generator=g) for k, v in params.items()}
        params, opt = adam_update(params, grads, opt, 1e-2)
        for k, p in reference.items():
            p.grad = grads[k].clone()
        torch_adam.step()
    for k, p in reference.items():
        torch.testing.assert_close(params[k], p.detach(), rtol=1e-5, atol=1e-6)


def test_the_generator_learns_the_inputs_it_sees() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 12, generator=g)
    params = vae_init(12, 16, 4, g)
    opt = adam_init(params)
    noise = torch.randn(32, 4, generator=g)
    first = float(vae_loss(params, x, noise))
    for _ in range(60):
        leaves = {k: v.requires_grad_(True) for k, v in params.items()}
        grads = torch.autograd.grad(vae_loss(leaves, x, noise), list(leaves.values()))
        params, opt = adam_update(
            {k: v.detach() for k, v in params.items()}, dict(zip(params, grads)), opt, 1e-2
        )
    assert float(vae_loss(params, x, noise)) < 0.5 * first


def test_replay_starts_with_the_second_task_and_the_state_is_never_mutated() -> None:
    torch.manual_seed(0)
    model = MLP(12, [2, 2], num_layers=1, width=8, bn=False)
    method = DGR(hidden=8, latent=3)
    state = ef.init(model)
    mstate = init_state(method, model, state)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = (torch.randn(6, 12), torch.randint(0, 2, (6,)))
    before = {k: v.clone() for k, v in mstate.vae.items()}
    _, after, _ = method_step(method, model, state, mstate, batch, optimizer=opt, task=0)
    for k, v in mstate.vae.items():
        assert torch.equal(v, before[k]), "the method state passed in was modified"
    assert any(not torch.equal(after.vae[k], before[k]) for k in before), "the VAE trained"
    _, ended, _ = end_task(
        method, model, state, after, TaskContext([batch], task=0, generator=torch.Generator())
    )
    assert ended.heads == (0,)
    assert all(torch.equal(ended.old_vae[k], after.vae[k]) for k in before)


def test_dgr_needs_a_model_whose_inputs_it_can_generate() -> None:
    with pytest.raises(ef.ConfigError, match="flattened inputs"):
        DGR().init(torch.nn.Conv2d(1, 1, 1), ef.init(MLP(4, [2], num_layers=1, width=2)))


@pytest.mark.slow
def test_dgr_forgets_less_than_fine_tuning_on_split_mnist() -> None:
    results = embedded_summaries(("finetune", "dgr"), limit_per_class=600, epochs=3)
    assert results["dgr"]["backward_transfer"] > results["finetune"]["backward_transfer"] + 0.02
    assert results["dgr"]["average_accuracy"] > results["finetune"]["average_accuracy"]
