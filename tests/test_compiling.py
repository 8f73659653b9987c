"""Compile options: the plain forward/backward partition on CPU, and compiled paths that
agree with eager ones."""

from __future__ import annotations

import pickle

import torch

import eidetic_func as ef
from eidetic_func.compiling import compile_kwargs, device_of
from eidetic_func.taylor import accumulate_squares, compile_scorer
from models import MLP

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
