"""Compile options: the plain forward/backward partition on CPU, and compiled paths that
agree with eager ones."""

from __future__ import annotations

import pickle

import torch
from eidetic_func.models import MLP

import eidetic_func as ef
from eidetic_func.core.compiling import (
    compile_kwargs,
    device_of,
    optimizer_compile_kwargs,
    optimizer_device,
)
from eidetic_func.importance.taylor import accumulate_squares, compile_scorer

CPU = torch.device("cpu")


def test_cpu_inductor_compiles_get_the_plain_partition_and_nothing_else_changes() -> None:
    options = compile_kwargs(CPU)["options"]
    assert set(options) == {"custom_partitioner_fn"}
    assert (
        options["custom_partitioner_fn"] is compile_kwargs(CPU)["options"]["custom_partitioner_fn"]
    )
    assert compile_kwargs(CPU, {"dynamic": False})["dynamic"] is False
    for given in (
        {"backend": "aot_eager"},
        {"options": {"max_autotune": True}},
        {"mode": "default"},
    ):
        assert compile_kwargs(CPU, given) == given
    assert compile_kwargs(torch.device("cuda"), {"dynamic": False}) == {"dynamic": False}


def test_device_of_a_module_without_parameters_is_the_cpu() -> None:
    assert device_of(torch.nn.ReLU()) == CPU
    assert device_of(torch.nn.Linear(2, 2, device="meta")) == torch.device("meta")


def test_relu_gradients_under_the_plain_partition_equal_eager() -> None:
    torch.manual_seed(0)
    x, w = torch.randn(16, 8), torch.randn(8, 8, requires_grad=True)

    def f(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ w).square().sum()

    compiled = torch.compile(f, **compile_kwargs(CPU))
    (eager,) = torch.autograd.grad(f(x, w), w)
    (got,) = torch.autograd.grad(compiled(x, w), w)
    assert torch.allclose(got, eager, rtol=1e-5, atol=1e-6)


def test_the_compiled_taylor_scorer_equals_the_eager_fast_path() -> None:
    torch.manual_seed(0)
    model = MLP(7, [3, 3], num_layers=2, width=5).eval()
    state, topology = ef.init(model), model.topology()
    batches = [(torch.randn(6, 7), torch.randint(0, 3, (6,))) for _ in range(2)]
    scorer = compile_scorer(model, topology, 1)
    compiled = accumulate_squares(scorer(state.params, state.buffers, x, y) for x, y in batches)
    eager = ef.score(model, state, batches, method="taylor", task=1)
    for unit in topology.units:
        assert torch.allclose(compiled[unit.name], eager[unit.name], rtol=1e-4, atol=1e-9)


def test_the_plain_partitioner_pickles_so_inductor_can_cache_its_graphs() -> None:
    partitioner = compile_kwargs(CPU)["options"]["custom_partitioner_fn"]
    again = pickle.loads(pickle.dumps(partitioner))
    assert type(again) is type(partitioner)
    assert again.uuid() == partitioner.uuid()


def test_cpu_optimizer_compiles_compute_scalars_once_and_nothing_else_changes() -> None:
    assert optimizer_compile_kwargs(CPU) == {"options": {"realize_opcount_threshold": 1}}
    assert optimizer_compile_kwargs(CPU, {"dynamic": False})["dynamic"] is False
    for given in (
        {"backend": "aot_eager"},
        {"options": {"max_autotune": True}},
        {"mode": "default"},
    ):
        assert optimizer_compile_kwargs(CPU, given) == given
    assert optimizer_compile_kwargs(torch.device("cuda")) == {}


def test_optimizer_device_is_where_its_parameters_live() -> None:
    meta = torch.nn.Parameter(torch.zeros(2, device="meta"))
    assert optimizer_device(torch.optim.SGD([meta], lr=0.1)) == torch.device("meta")
    assert optimizer_device(torch.optim.SGD([{"params": []}], lr=0.1)) == CPU


def test_a_compiled_adamw_step_with_realized_scalars_follows_the_eager_one() -> None:
    torch.manual_seed(0)
    eager_p, compiled_p = (torch.nn.Parameter(torch.randn(64, 40)) for _ in range(2))
    with torch.no_grad():
        compiled_p.copy_(eager_p)
    start = eager_p.detach().clone()
    eager = torch.optim.AdamW([eager_p], lr=1e-2, weight_decay=1e-2)
    compiled = torch.optim.AdamW([compiled_p], lr=1e-2, weight_decay=1e-2)
    step = torch.compile(compiled.step, **optimizer_compile_kwargs(CPU))
    for _ in range(4):
        grad = torch.randn(64, 40)
        eager_p.grad, compiled_p.grad = grad.clone(), grad.clone()
        eager.step()
        step()
    assert torch.allclose(compiled_p, eager_p, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(compiled_p, start, rtol=1e-3, atol=1e-3)  # it did step
