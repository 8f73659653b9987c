"""Importance scores: the three Taylor implementations agree; unprunable neurons score +inf."""

from __future__ import annotations

import pytest
import torch
from eidetic_func.models import MLP, ConvNet, ResNet
from hypothesis import given
from hypothesis import strategies as st
from strategies import prune_rows

import eidetic_func as ef

MODELS = {
    "mlp": (lambda: MLP(7, [3, 3], num_layers=2, width=5), (7,)),
    "convnet": (lambda: ConvNet(2, [3, 3], num_layers=1, width=2), (2, 8, 8)),
    "convnet_flat": (lambda: ConvNet(2, [3, 3], num_layers=1, width=2, image_size=8), (2, 8, 8)),
    "resnet_basic": (lambda: ResNet(2, [3, 3], n_blocks=[1, 2], width=3), (2, 6, 6)),
    "resnet_bottleneck": (
        lambda: ResNet(2, [3, 3], n_blocks=[1, 1], width=2, expansion=4),
        (2, 6, 6),
    ),
}


def _perturbed_state(model: torch.nn.Module, seed: int) -> ef.EideticState:
    """A state with non-trivial BN statistics (fresh ones are 0 / 1)."""
    g = torch.Generator().manual_seed(seed)
    state = ef.init(model)
    buffers = {}
    for k, v in state.buffers.items():
        if k.endswith("running_mean"):
            v = v + 0.1 * torch.randn(v.shape, generator=g, dtype=v.dtype)
        elif k.endswith("running_var"):
            v = v + torch.rand(v.shape, generator=g, dtype=v.dtype)
        buffers[k] = v
    return state.replace(buffers=buffers)


@pytest.mark.parametrize("kind", sorted(MODELS))
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 5))
def test_fast_taylor_equals_vmap_equals_loop(kind: str, seed: int, batch: int) -> None:
    build, shape = MODELS[kind]
    torch.manual_seed(seed)
    model = build().double()
    state = _perturbed_state(model, seed)
    g = torch.Generator().manual_seed(seed)
    batches = [
        (
            torch.randn(batch, *shape, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (batch,), generator=g),
        )
        for _ in range(2)
    ]
    topology = model.topology()
    results = {
        impl: ef.score(model, state, batches, method="taylor", task=1, implementation=impl)
        for impl in ("fast", "vmap", "loop")
    }
    for unit in topology.units:
        fast, ref, loop = (results[i][unit.name] for i in ("fast", "vmap", "loop"))
        assert torch.allclose(fast, ref, rtol=1e-9, atol=1e-18), unit.name
        assert torch.allclose(loop, ref, rtol=1e-9, atol=1e-18), unit.name


def test_taylor_is_the_square_of_the_per_sample_weight_gradient_sum_by_hand() -> None:
    torch.manual_seed(0)
    model = MLP(3, [2], num_layers=1, width=2, bn=False).double()
    state = ef.init(model)
    x = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0])
    expected = torch.zeros(2, dtype=torch.float64)
    for i in range(4):
        params = {k: v.clone().requires_grad_(True) for k, v in state.params.items()}
        loss = torch.nn.functional.cross_entropy(
            torch.func.functional_call(model, params, (x[i : i + 1], 0)), y[i : i + 1]
        )
        w, b = "blocks.0.linear.weight", "blocks.0.linear.bias"
        gw, gb = torch.autograd.grad(loss, [params[w], params[b]])
        expected += ((state.params[w] * gw).sum(1) + state.params[b] * gb) ** 2
    scores = ef.score(model, state, [(x, y)], method="taylor", task=0)
    assert torch.allclose(scores["blocks.0"], expected / 4)


def test_owned_and_already_pruned_neurons_score_infinity() -> None:
    torch.manual_seed(0)
    model = MLP(6, [2, 2], num_layers=2, width=6)
    topology = model.topology()
    state = ef.init(model)
    state = prune_rows(state, topology, "blocks.0.linear.weight", [0, 1])
    state = ef.finish_task(state, task=0)  # neurons 2..5 owned, 0 and 1 free
    state = prune_rows(state, topology, "blocks.0.linear.weight", [0])  # pruned in task 1
    data = [(torch.randn(4, 6), torch.randint(0, 2, (4,)))]
    g = torch.Generator().manual_seed(0)
    for method in ef.SCORING_METHODS:
        s = ef.score(model, state, data, method=method, task=1, generator=g)["blocks.0"]
        assert torch.isinf(s[[0, 2, 3, 4, 5]]).all(), method
        assert torch.isfinite(s[1]), method


def test_lp_scores_are_row_norms_and_random_is_seeded() -> None:
    model = MLP(4, [2], num_layers=1, width=3)
    state = ef.init(model)
    w = state.params["blocks.0.linear.weight"]
    l1 = ef.score(model, state, None, method="l1", task=0)["blocks.0"]
    l2 = ef.score(model, state, None, method="l2", task=0)["blocks.0"]
    assert torch.allclose(l1, w.abs().sum(1)) and torch.allclose(l2, w.norm(dim=1))
    r1 = ef.score(
        model,
        state,
        None,
        method="random",
        task=0,
        generator=torch.Generator().manual_seed(3),
    )
    r2 = ef.score(
        model,
        state,
        None,
        method="random",
        task=0,
        generator=torch.Generator().manual_seed(3),
    )
    assert torch.equal(r1["blocks.0"], r2["blocks.0"])


def test_bad_scoring_requests_raise_clear_errors() -> None:
    model = MLP(4, [2], num_layers=1, width=3)
    state = ef.init(model)
    with pytest.raises(ef.ConfigError, match="unknown scoring method"):
        ef.score(model, state, None, method="l3", task=0)
    with pytest.raises(ef.ConfigError, match="Generator"):
        ef.score(model, state, None, method="random", task=0)
    with pytest.raises(ef.ConfigError, match="needs batches"):
        ef.score(model, state, None, method="taylor", task=0)
    with pytest.raises(ef.DataError, match="empty"):
        ef.score(model, state, [], method="taylor", task=0)
    bad = [(torch.full((2, 4), float("nan")), torch.zeros(2, dtype=torch.long))]
    with pytest.raises(ef.NonFiniteError):
        ef.score(model, state, bad, method="taylor", task=0)


def test_batch_level_taylor_matches_hooks_on_the_plain_module() -> None:
    torch.manual_seed(1)
    model = ConvNet(2, [3], num_layers=1, width=2)
    state = ef.init(model)
    x, y = torch.randn(6, 2, 8, 8), torch.randint(0, 3, (6,))
    outputs, expected = {}, {}
    convs = {f"blocks.{i}": b.conv for i, b in enumerate(model.blocks)}
    handles = []
    for name, conv in convs.items():
        handles.append(
            conv.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o))
        )
    model.eval()
    loss = torch.nn.functional.cross_entropy(model(x, 0), y)
    grads = torch.autograd.grad(loss, list(outputs.values()))
    for (name, z), g in zip(outputs.items(), grads):
        expected[name] = (z * g).abs().mean((0, 2, 3))
    for h in handles:
        h.remove()
    scores = ef.score(model, state, [(x, y)], method="taylor_batch", task=0)
    for name, value in expected.items():
        assert torch.allclose(scores[name], value, rtol=1e-5, atol=1e-9), name
