"""Per-parameter sums of per-sample squared or absolute gradients: Fisher and MAS importance.

For a per-sample scalar loss ``ℓ_i = loss(f(x_i; θ), t_i)`` it computes, per parameter,

    S = Σ_i w_i · r(∂ℓ_i/∂θ)        with r = square (Fisher) or abs (MAS), elementwise,

a *sum* over samples (callers divide by the count). ``vmap`` and ``loop`` are the shared
per-sample engine's (:mod:`eidetic_func.importance.per_sample`), with the statistic
``w_i · r(∂ℓ_i/∂θ)``; ``fast`` is this module's: no per-sample weight gradient is ever
formed. A Linear layer with 2-D input ``x [B, in]`` and per-sample output gradient
``g [B, out]`` has per-sample weight gradient ``g_i x_iᵀ``, so ``Σ_i w_i (g_i x_iᵀ)² =
(w·g²)ᵀ(x²)`` and ``Σ_i w_i |g_i x_iᵀ| = (w·|g|)ᵀ|x|``: one matrix product. BatchNorm in
inference mode is affine per channel (``γ x̂ + β``), so its per-sample gradients are
``Σ_positions g x̂`` and ``Σ_positions g``. The output gradients of all samples come from
one backward of ``Σ_i ℓ_i``: the model is traced with ``torch.fx`` into a graph that also
returns those layers' inputs and outputs (no hooks). Parameters of any other module (or of
a module called more than once, or of a model fx cannot trace) fall back to ``vmap``.

``vmap`` and ``fast`` equal ``loop`` (tests compare them in float64).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from eidetic_func.core import validate
from eidetic_func.core.errors import TopologyError
from eidetic_func.importance.per_sample import (
    Implementation,
    SampleLoss,
    check_batch,
    check_implementation,
    per_sample_stats,
    restrict,
    takes_task,
    vmap_kernel,
)
from eidetic_func.nn.tracing import detach_uses, module_calls, returning, trace
from eidetic_func.ops.forward import train_mode

Reduction = Literal["square", "abs"]


def per_sample_sums(
    model: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x: Tensor,
    targets: Tensor,
    *,
    task: int,
    loss: SampleLoss,
    reduction: Reduction,
    weights: Tensor | None = None,
    implementation: Implementation = "fast",
    chunk_size: int | None = None,
) -> dict[str, Tensor]:
    """``{name: Σ_i w_i · r(∂ℓ_i/∂θ)}`` for every parameter in ``params`` (same shapes).

    ``x [B, ...]``, ``targets [B]``, ``weights [B]`` (default 1). Parameters the loss does
    not reach (other heads) get zeros. Runs the model in inference mode; ``params``,
    ``buffers`` and the model's own tensors are not modified.
    """
    check_implementation(implementation)
    validate.choice(reduction, "reduction", ("square", "abs"))
    if chunk_size is not None:
        validate.integer(chunk_size, "chunk_size", minimum=1)
    check_batch(x, targets)
    params = {k: v.detach() for k, v in params.items()}
    w = torch.ones(x.shape[0], dtype=x.dtype, device=x.device) if weights is None else weights
    w = w.detach().to(next(iter(params.values())).dtype)

    def engine(wrt: list[str], how: Literal["vmap", "loop"] = "vmap") -> dict[str, Tensor]:
        """``Σ_i w_i · r(∂ℓ_i/∂θ)`` for the parameters ``wrt`` by the shared engine."""
        return per_sample_stats(
            model,
            params,
            buffers,
            x,
            targets,
            task=task,
            loss=loss,
            stat=_weighted(reduction),
            combine="sum",
            extras=(w,),
            wrt=wrt,
            implementation=how,
            chunk_size=chunk_size,
        )

    with train_mode(model, False):
        if implementation == "fast":
            return _fast(model, params, buffers, x, targets, w, task, loss, reduction, engine)
        totals = engine(list(params), implementation)
    # parameters the loss never reaches (other heads): the loop has no gradient for them
    return {k: totals[k] if k in totals else torch.zeros_like(v) for k, v in params.items()}


def per_sample_fn(
    model: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    *,
    task: int,
    loss: SampleLoss,
    reduction: Reduction,
    wrt: Iterable[str] | None = None,
) -> Callable[[Tensor, Tensor, Tensor], dict[str, Tensor]]:
    """The ``vmap`` kernel as a pure function ``(x, targets, weights) -> {name: Σ_i ...}``.

    What ``implementation="vmap"`` runs per chunk, for the parameters ``wrt`` (default:
    all; the others are constants). Exposed so that it can be wrapped, e.g. in
    ``torch.compile`` (which fuses the per-sample outer products with their reduction).
    Call it with the model in inference mode and detached ``params``.
    """
    return vmap_kernel(
        model,
        params,
        buffers,
        task=task,
        loss=loss,
        stat=_weighted(reduction),
        combine="sum",
        wrt=wrt,
    )


# --------------------------------------------------------------------------- implementations


def _reducer(reduction: Reduction) -> Callable[[Tensor], Tensor]:
    return torch.square if reduction == "square" else torch.abs


def _weighted(reduction: Reduction) -> Callable[[dict[str, Tensor], Tensor], dict[str, Tensor]]:
    """The per-sample statistic ``{name: w_i · r(∂ℓ_i/∂θ)}``."""
    reduce = _reducer(reduction)

    def stat(grads: dict[str, Tensor], wi: Tensor) -> dict[str, Tensor]:
        return {k: wi * reduce(v) for k, v in grads.items()}

    return stat


def _fast(
    model: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x: Tensor,
    targets: Tensor,
    w: Tensor,
    task: int,
    loss: SampleLoss,
    reduction: Reduction,
    engine: Callable[[list[str]], dict[str, Tensor]],
) -> dict[str, Tensor]:
    """Sums from the traced graph's Linear/BatchNorm inputs and output gradients; the
    parameters of any other module from ``engine`` (the ``vmap`` reference)."""
    reduce = _reducer(reduction)
    modules = dict(model.named_modules())
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    try:
        traced, io_names = _traced_io(model, _affine_modules(model, params), task)
    except TopologyError:  # not traceable: every parameter the reference way
        return engine(list(params))
    used = restrict(traced, leaves, buffers)
    args = (x, task) if takes_task(model) else (x,)
    logits, io = functional_call(traced, used, args)
    # A per-sample gradient is one outer product only for one call on 2-D input (Linear)
    # or in inference mode with running statistics (BatchNorm).
    covered = {n: io[n] for n in io_names if _separable(modules[n], io[n][0])}
    total = vmap(loss)(logits, targets).sum()
    outputs = [out for _, out in covered.values()]
    grads = torch.autograd.grad(total, outputs, allow_unused=True) if outputs else ()
    totals: dict[str, Tensor] = {}
    for (name, (inp, _)), g in zip(covered.items(), grads):
        if g is not None:  # None: the loss does not read this module
            totals.update(_module_stats(modules[name], name, inp.detach(), g, w, reduce, buffers))
    # parameters the traced graph never reads (other heads) have zero gradients
    done = {k for n in covered for k in _leaf_names(modules[n], n)} | {
        k for k in params if k not in used[0]
    }
    rest = [k for k in params if k not in done]
    if rest:
        totals.update(engine(rest))
    return {
        k: totals[k].detach() if k in totals else torch.zeros_like(v) for k, v in params.items()
    }


def _traced_io(model: nn.Module, names: list[str], task: int) -> tuple[fx.GraphModule, list[str]]:
    """``model`` returning ``(logits, {name: (input, output)})`` for modules called once."""
    graph = trace(model, task if takes_task(model) else None)
    io = {}
    for name, nodes in module_calls(graph, names).items():
        if len(nodes) == 1 and nodes[0].args:
            # downstream reads a copy: an in-place op after the module (ReLU(inplace=True)
            # after BatchNorm) must not overwrite the output we differentiate against
            detach_uses(graph, nodes[0])
            io[name] = (nodes[0].args[0], nodes[0])
    return returning(model, graph, io), sorted(io)


def _leaf_names(module: nn.Module, name: str) -> list[str]:
    return [f"{name}.{leaf}" for leaf, _ in module.named_parameters(recurse=False)]


def _affine_modules(model: nn.Module, params: dict[str, Tensor]) -> list[str]:
    """Linear and BatchNorm modules whose parameters are all in ``params`` and not shared."""
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | _BatchNorm):
            continue
        own = list(module.named_parameters(recurse=False))
        if own and all(f"{name}.{leaf}" in params and owners[id(p)] == 1 for leaf, p in own):
            out.append(name)
    return out


def _separable(module: nn.Module, inp: Tensor) -> bool:
    if isinstance(module, nn.Linear):
        return inp.dim() == 2
    assert isinstance(module, _BatchNorm)
    return not module.training and module.track_running_stats and module.running_mean is not None


def _module_stats(
    module: nn.Module,
    name: str,
    inp: Tensor,
    g: Tensor,
    w: Tensor,
    reduce: Callable[[Tensor], Tensor],
    buffers: dict[str, Tensor],
) -> dict[str, Tensor]:
    """Σ_i w_i r(per-sample gradient) of the module's parameters from its input and ∂ℓ/∂out."""
    out: dict[str, Tensor] = {}
    if isinstance(module, nn.Linear):
        rg = reduce(g) * w[:, None]
        out[f"{name}.weight"] = rg.T @ reduce(inp)
        if module.bias is not None:
            out[f"{name}.bias"] = rg.sum(0)
        return out
    assert isinstance(module, _BatchNorm)
    mean = buffers.get(f"{name}.running_mean", module.running_mean)
    var = buffers.get(f"{name}.running_var", module.running_var)
    assert mean is not None and var is not None
    shape = (1, -1) + (1,) * (inp.dim() - 2)
    normalized = (inp - mean.view(shape)) * torch.rsqrt(var.view(shape) + module.eps)
    dims = tuple(range(2, inp.dim()))

    def per_sample(t: Tensor) -> Tensor:  # [B, C, ...] -> [B, C], summed over positions
        return t.sum(dims) if dims else t

    if module.weight is not None:
        out[f"{name}.weight"] = (reduce(per_sample(g * normalized)) * w[:, None]).sum(0)
    if module.bias is not None:
        out[f"{name}.bias"] = (reduce(per_sample(g)) * w[:, None]).sum(0)
    return out
