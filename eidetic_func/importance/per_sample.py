"""Per-sample gradients: the engine shared by Taylor, Fisher and MAS importance.

Every per-sample importance turns one sample's gradient ``∂ℓ_i/∂θ`` into a statistic —
per neuron (Taylor, :mod:`eidetic_func.importance.taylor`) or per parameter entry (Fisher and MAS,
:mod:`eidetic_func.importance.gradient_stats`) — and combines the samples'. Each has three
exact implementations (:data:`IMPLEMENTATIONS`); this module holds the two that do not
depend on the statistic, run by :func:`per_sample_stats`:

- ``vmap``: ``vmap(grad(ℓ_i))`` over samples with ``functional_call``, the statistic taken
  inside the vmapped function, one chunk of samples at a time (the reference);
- ``loop``: one ``autograd.grad`` per sample (the slow, obvious way).

The third, ``fast``, forms no per-sample weight gradient; it is the statistic's own (gates
for Taylor, outer-product identities for Fisher and MAS) and is tested equal to ``loop``.
Also here: the per-sample losses, the model call, batch helpers and the finite check.

The network must run in inference mode (BatchNorm with running statistics, no dropout),
so that a sample's loss does not depend on the other samples. ``vmap`` holds ``chunk ×
|θ_wrt|`` gradient entries at once; by default chunks are sized so that one parameter's
chunk stays below 16 MiB (larger buffers are slow to allocate on CPU).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from eidetic_func.core import validate
from eidetic_func.core.errors import DataError, NonFiniteError, ShapeError
from eidetic_func.core.types import Batch

Implementation = Literal["vmap", "fast", "loop"]
IMPLEMENTATIONS: tuple[str, ...] = ("vmap", "fast", "loop")
# loss(logits [C] of one sample, its target) -> scalar
SampleLoss = Callable[[Tensor, Tensor], Tensor]
# stat({name: ∂ℓ_i/∂θ} of one sample, *that sample's extras) -> {key: Tensor}
SampleStat = Callable[..., dict[str, Tensor]]
# how the samples' statistics combine: "sum" -> [...], "stack" -> [B, ...]
Combine = Literal["sum", "stack"]

_CHUNK_BYTES = 16 << 20


def check_implementation(implementation: object) -> Implementation:
    """``implementation`` if it is one of :data:`IMPLEMENTATIONS`, else :class:`ConfigError`."""
    validate.choice(implementation, "implementation", IMPLEMENTATIONS)
    return implementation  # type: ignore[return-value]


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


def check_batch(x: Tensor, targets: Tensor) -> None:
    """Raise :class:`ShapeError` unless ``x [B, ...]`` and ``targets [B]`` share a ``B ≥ 1``."""
    if x.dim() == 0 or x.shape[0] == 0 or targets.shape[:1] != x.shape[:1]:
        raise ShapeError(
            f"x and targets must be non-empty batches of equal size, got {tuple(x.shape)} "
            f"and {tuple(targets.shape)}"
        )


def restrict(
    module: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The entries of ``params`` and ``buffers`` that ``module`` has.

    A traced graph keeps only what it calls (one head), and ``functional_call`` rejects
    names the module does not have.
    """
    names = {n for n, _ in module.named_parameters()} | {n for n, _ in module.named_buffers()}
    return (
        {k: v for k, v in params.items() if k in names},
        {k: v for k, v in buffers.items() if k in names},
    )


def per_sample_stats(
    model: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x: Tensor,
    targets: Tensor,
    *,
    task: int,
    loss: SampleLoss,
    stat: SampleStat,
    combine: Combine,
    extras: Sequence[Tensor] = (),
    wrt: Iterable[str] | None = None,
    implementation: Literal["vmap", "loop"] = "vmap",
    chunk_size: int | None = None,
) -> dict[str, Tensor]:
    """``stat(∂ℓ_i/∂θ_wrt, *extras_i)`` of every sample, summed (``[...]``) or stacked (``[B, ...]``).

    ``x [B, ...]``, ``targets [B]``, each of ``extras`` ``[B, ...]``; ``ℓ_i =
    loss(logits_i, targets_i)`` of head ``task``. Gradients are taken for the parameters
    ``wrt`` (default: all; the others are constants); ``stat`` gets only those the loss
    reaches. Call with the model in inference mode; nothing is modified. ``vmap`` and
    ``loop`` give the same result up to rounding.
    """
    validate.choice(implementation, "implementation", ("vmap", "loop"))
    validate.choice(combine, "combine", ("sum", "stack"))
    if chunk_size is not None:
        validate.integer(chunk_size, "chunk_size", minimum=1)
    check_batch(x, targets)
    params = {k: v.detach() for k, v in params.items()}
    names = list(params if wrt is None else wrt)
    if implementation == "loop":
        return _loop(model, params, buffers, x, targets, extras, task, loss, stat, combine, names)
    fn = vmap_kernel(
        model, params, buffers, task=task, loss=loss, stat=stat, combine=combine, wrt=names
    )
    chunk = chunk_size or auto_chunk({k: params[k] for k in names}, x.shape[0])
    parts = [
        fn(x[s : s + chunk], targets[s : s + chunk], *(e[s : s + chunk] for e in extras))
        for s in range(0, x.shape[0], chunk)
    ]
    if combine == "stack":
        return (
            parts[0] if len(parts) == 1 else {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        )
    # Summing chunk by chunk (rather than vmap's own chunk_size, which concatenates every
    # chunk's per-sample results) keeps memory at one chunk of gradients.
    totals: dict[str, Tensor] = {}
    for part in parts:
        totals = add_into(totals, part)
    return totals


def vmap_kernel(
    model: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    *,
    task: int,
    loss: SampleLoss,
    stat: SampleStat,
    combine: Combine,
    wrt: Iterable[str] | None = None,
) -> Callable[..., dict[str, Tensor]]:
    """What ``vmap`` runs per chunk, as a pure function ``(x, targets, *extras) -> stats``.

    Exposed so that it can be wrapped, e.g. in ``torch.compile`` (which fuses the
    per-sample gradients with the statistic). Call it with the model in inference mode and
    detached ``params``.
    """
    diff = {k: params[k] for k in (params if wrt is None else wrt)}

    def sample_loss(p: dict[str, Tensor], xi: Tensor, ti: Tensor) -> Tensor:
        logits = call_logits(model, {**params, **p}, buffers, xi.unsqueeze(0), task)
        return loss(logits.squeeze(0), ti)

    def one(xi: Tensor, ti: Tensor, *extras: Tensor) -> dict[str, Tensor]:
        return stat(grad(sample_loss)(diff, xi, ti), *extras)

    batched = vmap(one)
    if combine == "stack":
        return batched

    def sums(x: Tensor, targets: Tensor, *extras: Tensor) -> dict[str, Tensor]:
        return {k: v.sum(0) for k, v in batched(x, targets, *extras).items()}

    return sums


def auto_chunk(params: dict[str, Tensor], batch: int) -> int:
    """Samples per ``vmap`` chunk: the largest parameter's gradients stay below 16 MiB."""
    largest = max((v.numel() * v.element_size() for v in params.values()), default=0)
    return max(1, min(batch, _CHUNK_BYTES // max(largest, 1)))


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


def check_finite(values: dict[str, Tensor], what: str, of: str = "parameter") -> None:
    """Raise :class:`NonFiniteError` naming the first key of ``values`` with a NaN or inf.

    The message reads ``"{what} of {of} '{key}' is not finite (NaN or inf)"``.
    """
    for k, v in values.items():
        if not bool(torch.isfinite(v).all()):
            raise NonFiniteError(f"{what} of {of} {k!r} is not finite (NaN or inf)")


def _loop(
    model: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x: Tensor,
    targets: Tensor,
    extras: Sequence[Tensor],
    task: int,
    loss: SampleLoss,
    stat: SampleStat,
    combine: Combine,
    wrt: list[str],
) -> dict[str, Tensor]:
    leaves = {k: params[k].detach().requires_grad_(True) for k in wrt}
    totals: dict[str, Tensor] = {}
    rows: list[dict[str, Tensor]] = []
    for i in range(x.shape[0]):
        logits = call_logits(model, {**params, **leaves}, buffers, x[i : i + 1], task)
        grads = torch.autograd.grad(
            loss(logits.squeeze(0), targets[i]), list(leaves.values()), allow_unused=True
        )
        # None: the loss does not reach this parameter (another head)
        used = {k: g for k, g in zip(leaves, grads) if g is not None}
        value = stat(used, *(e[i] for e in extras))
        if combine == "sum":
            totals = add_into(totals, value)
        else:
            rows.append(value)
    if combine == "sum":
        return totals
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
