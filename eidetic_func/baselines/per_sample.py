"""Per-sample gradient statistics of every parameter: the engine of Fisher and MAS importance.

For a per-sample scalar loss ``ℓ_i = loss(f(x_i; θ), t_i)`` it computes, per parameter,

    S = Σ_i w_i · r(∂ℓ_i/∂θ)        with r = square (Fisher) or abs (MAS), elementwise,

a *sum* over samples (callers divide by the count). Every sample's gradient is its own:
the network runs in inference mode (BatchNorm with running statistics, no dropout), so a
sample's loss does not depend on the other samples. Implementations, all exact:

- ``vmap``: ``vmap(grad(ℓ_i))`` over samples with ``functional_call``, reduced inside the
  vmapped function and summed per chunk of ``chunk_size`` samples (the reference);
- ``loop``: one ``autograd.grad`` per sample (what most continual-learning code does);
- ``fast``: no per-sample weight gradient is ever formed. A Linear layer with 2-D input
  ``x [B, in]`` and per-sample output gradient ``g [B, out]`` has per-sample weight
  gradient ``g_i x_iᵀ``, so ``Σ_i w_i (g_i x_iᵀ)² = (w·g²)ᵀ(x²)`` and ``Σ_i w_i |g_i x_iᵀ| =
  (w·|g|)ᵀ|x|``: one matrix product. BatchNorm in inference mode is affine per channel
  (``γ x̂ + β``), so its per-sample gradients are ``Σ_positions g x̂`` and ``Σ_positions g``.
  The output gradients of all samples come from one backward of ``Σ_i ℓ_i``: the model is
  traced with ``torch.fx`` into a graph that also returns those layers' inputs and outputs
  (no hooks). Parameters of any other module (or of a module called more than once, or of
  a model fx cannot trace) fall back to ``vmap``.

``vmap`` and ``fast`` equal ``loop`` (tests compare them in float64). ``vmap`` holds
``chunk_size × |θ|`` gradient entries at once; by default chunks are sized so that one
parameter's chunk stays below 16 MiB (larger buffers are slow to allocate on CPU).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Literal

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from .. import validate
from ..errors import DataError, NonFiniteError, ShapeError, TopologyError
from ..forward import train_mode
from ..tracing import detach_uses, module_calls, returning, trace
from ..types import Batch

# loss(logits [C] of one sample, its target) -> scalar
SampleLoss = Callable[[Tensor, Tensor], Tensor]
Reduction = Literal["square", "abs"]
Implementation = Literal["vmap", "fast", "loop"]
IMPLEMENTATIONS: tuple[str, ...] = ("vmap", "fast", "loop")

_CHUNK_BYTES = 16 << 20


def call_logits(
    model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, task: int
) -> Tensor:
    """``model(x, task=task)`` (or ``model(x)`` if its forward takes no ``task``) via
    ``functional_call`` with ``params`` and ``buffers``; the module's mode is the caller's."""
    kwargs = {"task": task} if takes_task(model) else {}
    return functional_call(model, (params, buffers), (x,), kwargs)


def takes_task(model: nn.Module) -> bool:
    """Whether ``model.forward`` has a ``task`` parameter (a multi-head model)."""
    return "task" in inspect.signature(model.forward).parameters


def cross_entropy_loss(logits: Tensor, target: Tensor) -> Tensor:
    """``−log softmax(logits)[target]`` for one sample (``logits [C]``, integer ``target``)."""
    return -torch.log_softmax(logits, -1).gather(0, target.reshape(1)).squeeze(0)


def squared_norm_loss(logits: Tensor, target: Tensor) -> Tensor:
    """``‖logits‖²₂`` for one sample (MAS); ``target`` is ignored."""
    return logits.square().sum()


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
    validate.choice(implementation, "implementation", IMPLEMENTATIONS)
    validate.choice(reduction, "reduction", ("square", "abs"))
    if chunk_size is not None:
        validate.integer(chunk_size, "chunk_size", minimum=1)
    if x.dim() == 0 or x.shape[0] == 0 or targets.shape[:1] != x.shape[:1]:
        raise ShapeError(
            f"x and targets must be non-empty batches of equal size, got {tuple(x.shape)} "
            f"and {tuple(targets.shape)}"
        )
    params = {k: v.detach() for k, v in params.items()}
    w = torch.ones(x.shape[0], dtype=x.dtype, device=x.device) if weights is None else weights
    w = w.detach().to(next(iter(params.values())).dtype)
    with train_mode(model, False):
        if implementation == "loop":
            return _loop(model, params, buffers, x, targets, w, task, loss, reduction)
        if implementation == "vmap":
            return _vmap(model, params, buffers, x, targets, w, task, loss, reduction, chunk_size)
        return _fast(model, params, buffers, x, targets, w, task, loss, reduction, chunk_size)


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
    reduce = _reducer(reduction)
    diff = {k: params[k] for k in (params if wrt is None else wrt)}

    def sample_loss(p: dict[str, Tensor], xi: Tensor, ti: Tensor) -> Tensor:
        logits = call_logits(model, {**params, **p}, buffers, xi.unsqueeze(0), task)
        return loss(logits.squeeze(0), ti)

    def one(xi: Tensor, ti: Tensor, wi: Tensor) -> dict[str, Tensor]:
        g = grad(sample_loss)(diff, xi, ti)
        return {k: wi * reduce(v) for k, v in g.items()}

    batched = vmap(one)

    def sums(x: Tensor, targets: Tensor, weights: Tensor) -> dict[str, Tensor]:
        return {k: v.sum(0) for k, v in batched(x, targets, weights).items()}

    return sums


def add_into(totals: dict[str, Tensor], sums: dict[str, Tensor]) -> dict[str, Tensor]:
    """``totals + sums`` key by key (a new dict; keys missing from ``totals`` are taken)."""
    return {**totals, **{k: totals[k] + v if k in totals else v for k, v in sums.items()}}


def take_samples(batches: Iterable[Batch], max_samples: int | None) -> list[Batch]:
    """The batches holding the first ``max_samples`` samples (all if None), last one cut."""
    if max_samples is not None:
        validate.integer(max_samples, "max_samples", minimum=1)
    out: list[Batch] = []
    seen = 0
    for x, y in batches:
        if max_samples is not None and seen + x.shape[0] > max_samples:
            x, y = x[: max_samples - seen], y[: max_samples - seen]
        if x.shape[0]:
            out.append((x, y))
            seen += x.shape[0]
        if max_samples is not None and seen >= max_samples:
            break
    if not out:
        raise DataError("no samples to estimate importance with: the batches were empty")
    return out


def check_finite(stats: dict[str, Tensor], what: str) -> None:
    """Raise :class:`NonFiniteError` if any entry of ``stats`` is NaN or infinite."""
    for k, v in stats.items():
        if not bool(torch.isfinite(v).all()):
            raise NonFiniteError(f"{what} of parameter {k!r} is not finite (NaN or inf)")


# --------------------------------------------------------------------------- implementations


def _reducer(reduction: Reduction) -> Callable[[Tensor], Tensor]:
    return torch.square if reduction == "square" else torch.abs


def _auto_chunk(params: dict[str, Tensor], batch: int) -> int:
    largest = max(v.numel() * v.element_size() for v in params.values())
    return max(1, min(batch, _CHUNK_BYTES // max(largest, 1)))


def _vmap(
    model: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x: Tensor,
    targets: Tensor,
    w: Tensor,
    task: int,
    loss: SampleLoss,
    reduction: Reduction,
    chunk_size: int | None,
) -> dict[str, Tensor]:
    return _chunked(model, params, buffers, x, targets, w, task, loss, reduction, chunk_size, None)


def _chunked(
    model: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x: Tensor,
    targets: Tensor,
    w: Tensor,
    task: int,
    loss: SampleLoss,
    reduction: Reduction,
    chunk_size: int | None,
    wrt: list[str] | None,
) -> dict[str, Tensor]:
    fn = per_sample_fn(model, params, buffers, task=task, loss=loss, reduction=reduction, wrt=wrt)
    sized = params if wrt is None else {k: params[k] for k in wrt}
    chunk = chunk_size or _auto_chunk(sized, x.shape[0])
    # Summing chunk by chunk (rather than vmap's own chunk_size, which concatenates every
    # chunk's per-sample results) keeps memory at one chunk of gradients.
    totals: dict[str, Tensor] = {}
    for s in range(0, x.shape[0], chunk):
        totals = add_into(totals, fn(x[s : s + chunk], targets[s : s + chunk], w[s : s + chunk]))
    return totals


def _loop(
    model: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x: Tensor,
    targets: Tensor,
    w: Tensor,
    task: int,
    loss: SampleLoss,
    reduction: Reduction,
) -> dict[str, Tensor]:
    reduce = _reducer(reduction)
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    totals = {k: torch.zeros_like(v) for k, v in params.items()}
    for i in range(x.shape[0]):
        logits = call_logits(model, leaves, buffers, x[i : i + 1], task)
        grads = torch.autograd.grad(
            loss(logits.squeeze(0), targets[i]), list(leaves.values()), allow_unused=True
        )
        for k, g in zip(leaves, grads):
            if g is not None:
                totals[k] = totals[k] + w[i] * reduce(g)
    return totals


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
    chunk_size: int | None,
) -> dict[str, Tensor]:
    reduce = _reducer(reduction)
    modules = dict(model.named_modules())
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    try:
        traced, io_names = _traced_io(model, _affine_modules(model, params), task)
    except TopologyError:  # not traceable: every parameter the reference way
        return _chunked(
            model, params, buffers, x, targets, w, task, loss, reduction, chunk_size, list(params)
        )
    names = {n for n, _ in traced.named_parameters()} | {n for n, _ in traced.named_buffers()}
    args = (x, task) if takes_task(model) else (x,)
    logits, io = functional_call(
        traced,
        (
            {k: v for k, v in leaves.items() if k in names},
            {k: v for k, v in buffers.items() if k in names},
        ),
        args,
    )
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
        k for k in params if k not in names
    }
    rest = [k for k in params if k not in done]
    if rest:
        totals.update(
            _chunked(model, params, buffers, x, targets, w, task, loss, reduction, chunk_size, rest)
        )
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
