"""A small trained run to checkpoint, and exact comparisons of what comes back (shared by
the tests of eidetic_func.io)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from eidetic_func.models import MLP
from strategies import prune_rows
from torch import Tensor

import eidetic_func as ef


def small_mlp(width: int = 6, num_layers: int = 2, bn: bool = True, seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(8, [3, 3], num_layers=num_layers, width=width, bn=bn)


def batches(n: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(n)
    ]


def train(
    model: MLP, state: ef.EideticState, opt: torch.optim.Optimizer, batches: list[Any]
) -> ef.EideticState:
    for batch in batches:
        state, _ = ef.train_step(model, state, batch, optimizer=opt, task=state.task)
    return state


_TRAINED: dict[str, tuple[MLP, ef.EideticState, torch.optim.Optimizer]] = {}


def trained(
    opt_cls: type[torch.optim.Optimizer] = torch.optim.AdamW, **opt_kwargs: Any
) -> tuple[MLP, ef.EideticState, torch.optim.Optimizer]:
    """Task 0 trained, two neurons pruned, finished without forward transfer; task 1 trained.

    Built once per optimizer; each call returns a deep copy (model and optimizer copied
    together, so the optimizer still holds the copied model's parameters).
    """
    key = f"{opt_cls.__name__}{sorted(opt_kwargs.items())}"
    if key not in _TRAINED:
        _TRAINED[key] = _train_from_scratch(opt_cls, opt_kwargs)
    return copy.deepcopy(_TRAINED[key])


def _train_from_scratch(
    opt_cls: type[torch.optim.Optimizer], opt_kwargs: dict[str, Any]
) -> tuple[MLP, ef.EideticState, torch.optim.Optimizer]:
    model = small_mlp()
    topology = model.topology()
    opt = opt_cls(model.parameters(), **(opt_kwargs or {"lr": 1e-2, "weight_decay": 0.1}))
    state = train(model, ef.init(model), opt, batches(4, seed=1))
    state = prune_rows(state, topology, "blocks.0.linear.weight", [1, 4])
    state = ef.finish_task(state, task=0, forward_transfer=False)
    state = train(model, state, opt, batches(3, seed=2))
    return model, state, opt


def _bits(t: Tensor) -> Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def assert_same(a: Any, b: Any, where: str = "root") -> None:
    """Same types, same dict key order, bit-identical tensors and floats (NaN, -0.0)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, Tensor):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        assert torch.equal(_bits(a), _bits(b)), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}/{i}")
    elif isinstance(a, float):
        assert repr(a) == repr(b), where
    else:
        assert a == b, where


def assert_same_state(a: ef.EideticState, b: ef.EideticState) -> None:
    for field in ("params", "buffers", "owner", "keep"):
        assert_same(getattr(a, field), getattr(b, field), field)
    assert (a.task, a.finished) == (b.task, b.finished)
    assert isinstance(b.finished, tuple)


def extra_tree(state: ef.EideticState) -> dict[str, Any]:
    big = torch.arange(12.0).reshape(3, 4)
    return {
        "fisher": {k: torch.rand_like(v) for k, v in state.params.items()},
        "anchors": state.params,  # the very tensors of the state: shared memory
        "buffer": {
            "x": torch.randn(5, 8),
            "y": torch.randint(0, 3, (5,)),
            "empty": torch.empty(0, 8),
        },
        "views": (big.t(), big[1:], big, big[:, 1]),  # strided and overlapping views
        "dtypes": [
            torch.ones(2, dtype=d)
            for d in (
                torch.bfloat16,
                torch.float16,
                torch.float64,
                torch.int8,
                torch.uint8,
                torch.int16,
                torch.int32,
                torch.int64,
                torch.bool,
                torch.complex64,
            )
        ],
        "grad": torch.ones(3, requires_grad=True) * 2,
        "keys": {1: torch.ones(1), "1": torch.zeros(1), "$odd": None, 2.5: "float key"},
        "scalars": [0, -1, 2**62, 1.5, -0.0, float("inf"), float("nan"), True, None, "s", ""],
        "special": torch.tensor([float("nan"), -0.0, float("-inf")]),
        "scalar": torch.tensor(3.5),
    }


HISTORY = [
    {"epoch": 0, "loss": 0.5, "acc": (0.9, 0.8)},
    {"epoch": 1, "loss": float("nan"), "pruned": [0.1, 0.2]},
]
META = {"config": {"lr": 1e-2, "width": 6, "tasks": [0, 1]}, "run": "abc"}
