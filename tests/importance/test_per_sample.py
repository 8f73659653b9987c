"""The shared per-sample engine: vmap == loop (any statistic, any chunking), the Fisher and
MAS fast path == loop, non-finite values raise, inputs are never modified."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, cast

import pytest
import torch
import torch.nn.functional as F
from eidetic_func.models import MLP, ConvNet
from strategies import perturbed
from torch import Tensor, nn

import eidetic_func as ef
from eidetic_func.importance.gradient_stats import Reduction, per_sample_sums
from eidetic_func.importance.per_sample import (
    IMPLEMENTATIONS,
    Implementation,
    add_into,
    check_finite,
    check_implementation,
    cross_entropy_loss,
    per_sample_stats,
    squared_norm_loss,
    take_samples,
)
from eidetic_func.methods import fisher_diagonal

# tiny models: a second thread gains nothing and costs a lot on shared cores
pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- tiny models


class InplaceBN(nn.Module):
    """Linear → BN → ReLU(inplace): the fast path must not read the overwritten BN output."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(5, 4), ef.TaskBatchNorm1d(4), nn.ReLU(inplace=True), nn.Linear(4, 3)
        )

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        return self.body(x.flatten(1))


class Shared(nn.Module):
    """One Linear applied twice (weight sharing): its per-sample gradient is not one outer
    product, so the fast path must fall back to vmap for it."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 4)
        self.shared = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        h = torch.tanh(self.shared(torch.tanh(self.inp(x.flatten(1)))))
        return self.out(torch.tanh(self.shared(h)))


class ReadsAnUncalledLinear(nn.Module):
    """Uses a Linear's weight without calling the Linear (tied output weights): the fast
    path must not take "never called" for "unused"."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 3)
        self.tied = nn.Linear(3, 3)

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        return F.linear(torch.tanh(self.inp(x.flatten(1))), self.tied.weight)


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp_bn": (lambda: MLP(5, [3, 3], num_layers=2, width=4), (5,)),
    "mlp": (lambda: MLP(5, [3, 3], num_layers=1, width=4, bn=False), (5,)),
    "convnet": (lambda: ConvNet(2, [3, 3], num_layers=1, width=2), (2, 8, 8)),
    "inplace_bn": (InplaceBN, (5,)),
    "shared": (Shared, (5,)),
    "tied": (ReadsAnUncalledLinear, (5,)),
}


def _data(shape: tuple[int, ...], n: int = 7) -> tuple[Tensor, Tensor, Tensor]:
    """``x [n, *shape]``, labels ``[n]`` in 0..2 and weights ``[n]`` in [0, 1), float64."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y, torch.rand(n, generator=g, dtype=torch.float64)


# --------------------------------------------------------------------------- the engine


def _signed_stat(grads: dict[str, Tensor], wi: Tensor) -> dict[str, Tensor]:
    """A statistic that keeps the gradient's sign and a per-sample extra: ``w_i · g_i``."""
    return {k: wi * g for k, g in grads.items()}


@pytest.mark.parametrize("kind", ["mlp_bn", "convnet", "shared"])
@pytest.mark.parametrize("chunk_size", [1, 3, None])
def test_engine_vmap_equals_loop_for_stacked_and_summed_statistics(
    kind: str, chunk_size: int | None
) -> None:
    build, shape = MODELS[kind]
    torch.manual_seed(1)
    model = build().double().eval()
    params, buffers = perturbed(model, 1)
    x, y, w = _data(shape)

    def run(impl: Literal["vmap", "loop"], combine: Literal["sum", "stack"]) -> dict[str, Tensor]:
        return per_sample_stats(
            model,
            params,
            buffers,
            x,
            y,
            task=1,
            loss=cross_entropy_loss,
            stat=_signed_stat,
            combine=combine,
            extras=(w,),
            implementation=impl,
            chunk_size=chunk_size,
        )

    stacked, summed, loop_stacked = run("vmap", "stack"), run("vmap", "sum"), run("loop", "stack")
    # the loop leaves out the parameters the loss does not reach; vmap's gradient is 0 there
    assert set(loop_stacked) <= set(stacked) == set(params)
    for k, v in stacked.items():
        assert v.shape == (x.shape[0], *params[k].shape)
        assert torch.allclose(summed[k], v.sum(0), rtol=1e-12, atol=1e-15), k
        ref = loop_stacked.get(k, torch.zeros_like(v))
        assert torch.allclose(v, ref, rtol=1e-10, atol=1e-15), k


def test_engine_takes_gradients_only_for_wrt() -> None:
    torch.manual_seed(0)
    model = MLP(5, [3, 3], num_layers=1, width=4, bn=False).double().eval()
    params, buffers = perturbed(model, 0)
    x, y, _ = _data((5,), n=4)
    wrt = ["blocks.0.linear.weight"]
    seen: list[set[str]] = []

    def stat(grads: dict[str, Tensor]) -> dict[str, Tensor]:
        seen.append(set(grads))
        return grads

    for impl in ("vmap", "loop"):
        out = per_sample_stats(
            model,
            params,
            buffers,
            x,
            y,
            task=0,
            loss=cross_entropy_loss,
            stat=stat,
            combine="sum",
            wrt=wrt,
            implementation=cast(Any, impl),
        )
        assert set(out) == set(wrt)
    assert all(s == set(wrt) for s in seen)


@pytest.mark.parametrize("implementation", ["vmap", "loop"])
def test_engine_does_not_modify_its_inputs(implementation: Literal["vmap", "loop"]) -> None:
    torch.manual_seed(0)
    model = MLP(5, [3, 3], num_layers=2, width=4).eval()
    params, buffers = perturbed(model, 0)
    before = {k: v.clone() for k, v in {**params, **buffers}.items()}
    x, y, w = _data((5,), n=4)
    x, w = x.float(), w.float()
    x_before = x.clone()
    per_sample_stats(
        model,
        params,
        buffers,
        x,
        y,
        task=1,
        loss=squared_norm_loss,
        stat=_signed_stat,
        combine="stack",
        extras=(w,),
        implementation=implementation,
        chunk_size=3,
    )
    for k, v in {**params, **buffers}.items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(x, x_before)
    assert not any(v.requires_grad for v in params.values())
    assert all(torch.equal(p, params[k]) for k, p in model.named_parameters())


def test_engine_rejects_bad_requests() -> None:
    model = MLP(3, [2], num_layers=1, width=2, bn=False).double()
    params, buffers = perturbed(model, 0)
    x, y, _ = _data((3,), n=2)

    def run(**kwargs: Any) -> None:
        options: dict[str, Any] = {"combine": "sum", "implementation": "vmap", **kwargs}
        inputs = options.pop("inputs", (x, y))
        per_sample_stats(
            model,
            params,
            buffers,
            *inputs,
            task=0,
            loss=squared_norm_loss,
            stat=lambda g: g,
            **options,
        )

    with pytest.raises(ef.ConfigError, match="implementation"):
        run(implementation="fast")  # the fast paths are each statistic's own
    with pytest.raises(ef.ConfigError, match="combine"):
        run(combine="mean")
    with pytest.raises(ef.ConfigError, match="chunk_size"):
        run(chunk_size=0)
    with pytest.raises(ef.ShapeError, match="non-empty"):
        run(inputs=(x[:0], y[:0]))
    with pytest.raises(ef.ShapeError, match="equal size"):
        run(inputs=(x, y[:1]))
    assert check_implementation("loop") == "loop"
    with pytest.raises(ef.ConfigError, match="implementation must be one of"):
        check_implementation("jit")


# --------------------------------------------------------------------------- batch helpers


def test_take_samples_keeps_the_first_samples_and_cuts_the_last_batch() -> None:
    batches = [(torch.arange(3.0), torch.arange(3)), (torch.arange(3.0, 7.0), torch.arange(3, 7))]
    taken = take_samples(batches, 5)
    assert [b[1].tolist() for b in taken] == [[0, 1, 2], [3, 4]]
    assert sum(b[0].shape[0] for b in take_samples(batches, None)) == 7
    with pytest.raises(ef.DataError, match="empty"):
        take_samples([(torch.zeros(0), torch.zeros(0))], None)
    with pytest.raises(ef.ConfigError, match="max_samples"):
        take_samples(batches, 0)


def test_add_into_adds_key_by_key_and_returns_a_new_dict() -> None:
    totals = {"a": torch.tensor(1.0)}
    out = add_into(totals, {"a": torch.tensor(2.0), "b": torch.tensor(5.0)})
    assert out == {"a": torch.tensor(3.0), "b": torch.tensor(5.0)}
    assert totals == {"a": torch.tensor(1.0)}


# --------------------------------------------------------------------------- finite checks


def test_non_finite_values_raise_naming_the_entry() -> None:
    check_finite({"w": torch.ones(2)}, "the statistic")
    with pytest.raises(ef.NonFiniteError, match=r"the statistic of unit 'u' is not finite"):
        check_finite(
            {"w": torch.ones(2), "u": torch.tensor([1.0, float("inf")])}, "the statistic", of="unit"
        )
    model = MLP(4, [2], num_layers=1, width=3)
    state = ef.init(model)
    bad = [(torch.full((2, 4), float("nan")), torch.zeros(2, dtype=torch.long))]
    for impl in IMPLEMENTATIONS:
        with pytest.raises(ef.NonFiniteError, match=r"Taylor importance of unit 'blocks\.0'"):
            ef.score(
                model,
                state,
                bad,
                method="taylor",
                task=0,
                implementation=cast(Implementation, impl),
            )
        with pytest.raises(ef.NonFiniteError, match="Fisher information of parameter"):
            fisher_diagonal(
                model,
                state.params,
                state.buffers,
                bad,
                task=0,
                fisher="empirical",
                implementation=cast(Implementation, impl),
            )
    with pytest.raises(ef.NonFiniteError, match="batch-level Taylor importance of unit"):
        ef.score(model, state, bad, method="taylor_batch", task=0)


# --------------------------------------------------------------------------- Fisher and MAS: fast == vmap == loop


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("statistic", ["fisher", "mas"])
def test_per_sample_statistics_vmap_equals_loop_equals_fast(kind: str, statistic: str) -> None:
    build, shape = MODELS[kind]
    torch.manual_seed(1)
    model = build().double()
    params, buffers = perturbed(model, 1)
    x, y, w = _data(shape)
    loss, reduction = (
        (cross_entropy_loss, "square") if statistic == "fisher" else (squared_norm_loss, "abs")
    )
    reduction = cast(Reduction, reduction)
    results = {
        impl: per_sample_sums(
            model,
            params,
            buffers,
            x,
            y,
            task=1,
            loss=loss,
            reduction=reduction,
            weights=w,
            implementation=impl,
            chunk_size=3,
        )
        for impl in cast(tuple[Implementation, ...], IMPLEMENTATIONS)
    }
    for k in params:
        ref = results["loop"][k]
        for impl in ("vmap", "fast"):
            assert torch.allclose(results[impl][k], ref, rtol=1e-10, atol=1e-15), (impl, k)
    zero = {k for k in params if results["loop"][k].abs().sum() == 0}
    assert zero <= {"heads.0.weight", "heads.0.bias", "tied.bias"}  # unused by head 1
