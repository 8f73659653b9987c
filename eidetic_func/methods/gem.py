"""Gradient episodic memory: A-GEM (Chaudhry et al. 2019) and GEM (Lopez-Paz & Ranzato 2017).

Both keep an episodic memory — ``memory_per_task`` examples of each finished task, drawn
uniformly from its training data at ``end_task`` — and change only the *gradient* of the
current task (through ``train_step``'s ``grad_transform``), never the loss:

- **A-GEM**: one reference gradient ``g_ref`` on a random batch of the whole memory; if
  ``⟨g, g_ref⟩ < 0``, ``g ← g − (⟨g, g_ref⟩ / ⟨g_ref, g_ref⟩) g_ref``
  (:func:`agem_project`), so the memory loss does not increase to first order.
- **GEM**: one gradient ``g_k`` per finished task (on all of its memory); if any
  ``⟨g, g_k⟩ < 0``, ``g`` is replaced by the solution of the quadratic program
  ``min ½‖g̃ − g‖² s.t. ⟨g̃, g_k⟩ ≥ 0 ∀k``, solved exactly through its dual
  (:func:`gem_project`, :func:`solve_gem_dual`).

The guarantees are about the gradient handed to the optimizer: with SGD the update is
``−lr · g̃`` and inherits them; momentum and adaptive optimizers (Adam rescales every
coordinate) change the update's direction, so they hold only approximately — the papers
use plain SGD.

Gradients are flattened over every parameter, restricted to the entries a step may change
(``eidetic_func.trainable``): frozen entries do not move, so they must not enter the
constraints either. Memory samples run through their own task's head, in training mode
(with BatchNorm, those passes also update the running statistics).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eidetic_func.core.errors import ConfigError, NonFiniteError, ShapeError
from eidetic_func.core.pytree import pytree_dataclass
from eidetic_func.core.state import EideticState
from eidetic_func.core.types import Batch
from eidetic_func.methods.decisions import DONE, Decision
from eidetic_func.methods.fields import integer, number, validate_fields
from eidetic_func.methods.protocol import StepPlan, TaskContext
from eidetic_func.methods.reservoir import (
    Samples,
    concat_samples,
    generator_from,
    grouped_by_task,
    rng_init,
    sample,
    sample_loader,
    samples_take,
)
from eidetic_func.ops.freeze import trainable
from eidetic_func.training.step import Apply, GradTransform

__all__ = [
    "AGEM",
    "GEM",
    "EpisodicState",
    "agem_project",
    "gem_project",
    "solve_gem_dual",
]


# --------------------------------------------------------------------------- projections


def agem_project(g: Tensor, g_ref: Tensor) -> Tensor:
    """A-GEM's projection of a flat gradient ``g [D]`` given the reference ``g_ref [D]``.

    ``g`` itself when ``⟨g, g_ref⟩ ≥ 0``; else ``g − (⟨g, g_ref⟩ / ⟨g_ref, g_ref⟩) g_ref``,
    for which ``⟨g̃, g_ref⟩ = 0``. No device synchronization.
    """
    if g.shape != g_ref.shape or g.dim() != 1:
        raise ShapeError(f"g and g_ref must be 1-D of one shape, got {g.shape}, {g_ref.shape}")
    # The projection does not depend on g_ref's scale: rescale it to max |entry| = 1 first,
    # so that ⟨g_ref, g_ref⟩ neither underflows nor overflows (memory gradients can be tiny).
    tiny = torch.finfo(g.dtype).tiny
    r = g_ref / g_ref.abs().max().clamp_min(tiny)
    dot = torch.dot(g, r)
    # dot < 0 implies r ≠ 0, so ⟨r, r⟩ ≥ 1 there; the clamp only keeps the other branch finite
    coef = torch.where(dot < 0, dot / torch.dot(r, r).clamp_min(tiny), 0.0)
    return g - coef * r


def solve_gem_dual(gram: Tensor, q: Tensor, *, margin: float | Tensor = 0.0) -> Tensor:
    """``argmin_{v ≥ margin} ½ vᵀPv + qᵀv`` for a PSD ``P = gram [K, K]``, ``q [K]`` (float64).

    ``margin`` is a number or a per-coordinate bound ``[K]`` (all ``≥ 0``). Substituting
    ``v = margin + w`` gives ``min_{w ≥ 0} ½ wᵀPw + cᵀw`` with ``c = q + P·margin``: a
    non-negative least-squares problem in Gram form, solved by the Lawson–Hanson
    active-set method (finite termination; each inner solve is a ``|S|×|S|`` least-squares
    problem, rank-revealing so duplicate or collinear constraints are fine). ``K`` — the
    number of finished tasks — is small. Returned on the CPU.
    """
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1] or q.shape != (gram.shape[0],):
        raise ShapeError(
            f"gram must be [K, K] and q [K], got {tuple(gram.shape)}, {tuple(q.shape)}"
        )
    K = gram.shape[0]
    lower = torch.as_tensor(margin, dtype=torch.float64).cpu().expand(K)
    if not bool((torch.isfinite(lower) & (lower >= 0)).all()):
        raise ConfigError(f"margin must be finite and >= 0, got {margin!r}")
    P, q = gram.double().cpu(), q.double().cpu()
    if not (torch.isfinite(P).all() and torch.isfinite(q).all()):
        raise NonFiniteError("GEM's memory gradients are not finite")
    c = q + P @ lower
    scale = max(float(P.abs().max()), float(c.abs().max()), 1e-300)
    tol = 1e3 * K * torch.finfo(torch.float64).eps * scale
    w = torch.zeros(K, dtype=torch.float64)
    passive = torch.zeros(K, dtype=torch.bool)
    for _ in range(10 * K + 50):  # Lawson–Hanson needs about K passes; the cap is a guard
        descent = -(P @ w + c)  # minus the gradient: positive where raising w_j helps
        candidates = ~passive & (descent > tol)
        if not candidates.any():
            break
        j = int(torch.where(candidates, descent, -torch.inf).argmax())
        passive[j] = True
        for _ in range(K + 1):  # each pass removes at least one index
            s = _solve_passive(P, c, passive)
            if bool((s[passive] > 0).all()):
                w = s
                break
            # step from w towards s until the first passive variable reaches zero; that one
            # (and any other that rounding brought to zero) leaves the passive set
            shrinking = passive & (s <= 0)
            ratio = torch.full_like(w, torch.inf)
            ratio[shrinking] = w[shrinking] / (w[shrinking] - s[shrinking])
            first = int(ratio.argmin())
            w = (w + ratio[first] * (s - w)).clamp_min(0.0)
            w[first] = 0.0
            passive = passive & (w > 0)
            w = torch.where(passive, w, 0.0)
            if not passive.any():
                break
    return lower + w


def _solve_passive(gram: Tensor, c: Tensor, passive: Tensor) -> Tensor:
    """Unconstrained minimizer over the passive set (others at zero): ``P_SS s_S = −c_S``."""
    idx = passive.nonzero().squeeze(1)
    s = torch.zeros_like(c)
    sub = gram[idx][:, idx]
    s[idx] = torch.linalg.lstsq(sub, -c[idx].unsqueeze(1), driver="gelsy").solution.squeeze(1)
    return s


def gem_project(g: Tensor, memory_grads: Tensor, *, margin: float = 0.0) -> Tensor:
    """GEM's projection of ``g [D]`` onto ``{g̃ : G g̃ ≥ 0}``, ``G = memory_grads [K, D]``.

    ``g`` itself when no constraint is violated (``G g ≥ 0``); else ``Gᵀv + g`` with ``v``
    the dual solution (:func:`solve_gem_dual` with ``P = G Gᵀ``, ``q = G g``). With
    ``margin = 0`` this is the closest vector to ``g`` satisfying every constraint; with
    ``margin > 0`` (the dual bound ``v ≥ margin`` of the authors' code, their ``γ``) every
    constraint still holds (KKT: ``G g̃`` is the dual objective's gradient) and ``g̃`` is
    biased towards the memory gradients. Computed in float64, returned in ``g``'s dtype.
    """
    G = memory_grads
    if G.dim() != 2 or g.dim() != 1 or G.shape[1] != g.shape[0]:
        raise ShapeError(
            f"memory_grads must be [K, D] and g [D], got {tuple(G.shape)}, {tuple(g.shape)}"
        )
    if G.shape[0] == 0:
        return g
    Gd, gd = G.double(), g.double()
    dots = Gd @ gd
    if not bool((dots < 0).any()):
        return g
    # Constraints are scale-free: solve with unit rows N = G / ‖g_k‖ (a well-scaled Gram
    # matrix even when one task's memory gradient is 10⁶ times smaller than another's).
    # The dual is the same problem: Gᵀv = Nᵀu with u = ‖g_k‖·v, so v ≥ margin becomes
    # u ≥ margin·‖g_k‖. Zero rows constrain nothing and are left out.
    norms = Gd.norm(dim=1)
    rows = norms > 0
    N = Gd[rows] / norms[rows].unsqueeze(1)
    u = solve_gem_dual(N @ N.T, N @ gd, margin=margin * norms[rows]).to(Gd.device)
    return (N.T @ u + gd).to(g.dtype)


# --------------------------------------------------------------------------- flat gradients


def _flatten(
    grads: Mapping[str, Tensor | None], params: Mapping[str, Tensor], mask: Mapping[str, Tensor]
) -> Tensor:
    parts = []
    for k, p in params.items():
        g = grads.get(k)
        if g is None:
            parts.append(p.new_zeros(p.numel()))
        else:
            parts.append(torch.where(mask[k], g, 0.0).reshape(-1))
    return torch.cat(parts)


def _unflatten(flat: Tensor, params: Mapping[str, Tensor], present: set[str]) -> dict[str, Tensor]:
    out, offset = {}, 0
    for k, p in params.items():
        n = p.numel()
        if k in present:
            out[k] = flat[offset : offset + n].view_as(p).clone()
        offset += n
    return out


def _memory_grads(apply: Apply, params: dict[str, Tensor], samples: Samples) -> dict[str, Tensor]:
    """Gradient of the mean cross-entropy on ``samples`` (each through its head)."""
    total: Tensor | None = None
    for t, index in grouped_by_task(samples):
        part = F.cross_entropy(apply(samples.x[index], t), samples.y[index], reduction="sum")
        total = part if total is None else total + part
    assert total is not None  # callers pass non-empty samples
    names = list(params)
    grads = torch.autograd.grad(total / len(samples), [params[k] for k in names], allow_unused=True)
    return {k: g for k, g in zip(names, grads) if g is not None}


# --------------------------------------------------------------------------- methods


@pytree_dataclass
class EpisodicState:
    """A-GEM / GEM state: the episodic memory (every finished task's examples) and the rng."""

    memory: Samples
    rng: Tensor


def episodic_init(seed: int) -> EpisodicState:
    """An empty episodic memory."""
    return EpisodicState(memory=Samples.empty(), rng=rng_init(seed))


def remember_task(
    memory_per_task: int, state: EideticState, mstate: EpisodicState, ctx: TaskContext
) -> EpisodicState:
    """``mstate`` with ``memory_per_task`` examples of the ended task, drawn uniformly from
    its loader."""
    device = next(iter(state.params.values())).device
    new = sample_loader(
        ctx.loader, memory_per_task, task=ctx.task, generator=ctx.generator, device=device
    )
    return dataclasses.replace(mstate, memory=concat_samples(mstate.memory, new))


@dataclasses.dataclass(frozen=True)
class AGEM:
    """Averaged GEM: project only against the gradient on a random memory batch.

    ``memory_per_task`` examples are stored per finished task; each step draws
    ``buffer_sample_size`` of all of them (without replacement) for ``g_ref``.
    """

    # not data-parallel (the default traits): each process projects against its own memory
    memory_per_task: int = integer(256, minimum=1)
    seed: int = 0
    buffer_sample_size: int = integer(256, minimum=1)
    name: str = "agem"

    def __post_init__(self) -> None:
        validate_fields(self)

    def init(self, model: nn.Module, state: EideticState) -> EpisodicState:
        return episodic_init(self.seed)

    def end_task(
        self, model: nn.Module, state: EideticState, mstate: EpisodicState, ctx: TaskContext
    ) -> tuple[EideticState, EpisodicState, Decision]:
        return state, remember_task(self.memory_per_task, state, mstate, ctx), DONE

    def plan(
        self,
        model: nn.Module,
        state: EideticState,
        mstate: EpisodicState,
        batch: Batch,
        *,
        task: int,
    ) -> StepPlan:
        generator = generator_from(mstate.rng)
        reference = sample(mstate.memory, self.buffer_sample_size, generator)
        transform: GradTransform | None = None
        if len(reference) > 0:
            mask = trainable(state)

            def project(
                grads: dict[str, Tensor], apply: Apply, params: dict[str, Tensor]
            ) -> dict[str, Tensor]:
                ref = _memory_grads(apply, params, reference)
                g = _flatten(grads, params, mask)
                projected = agem_project(g, _flatten(ref, params, mask))
                return _unflatten(projected, params, set(grads) | set(ref))

            transform = project

        def update() -> EpisodicState:
            return dataclasses.replace(mstate, rng=generator.get_state())

        return StepPlan(grad_transform=transform, update=update)


@dataclasses.dataclass(frozen=True)
class GEM:
    """Gradient episodic memory: one constraint ``⟨g̃, g_k⟩ ≥ 0`` per finished task.

    ``g_k`` is the gradient on all of task ``k``'s ``memory_per_task`` examples. When a
    constraint is violated the step's gradient is projected by the exact QP solution
    (:func:`gem_project`). ``margin`` is the paper's ``γ`` ("a small constant added to
    v*"), implemented like the authors' code (``memory_strength``, 0.5 in their
    experiments) as the dual bound ``v ≥ margin``; ``margin=0`` is the plain projection.
    """

    # not data-parallel (the default traits): each process projects against its own memory
    memory_per_task: int = integer(256, minimum=1)
    seed: int = 0
    margin: float = number(0.5, low=0.0)
    name: str = "gem"

    def __post_init__(self) -> None:
        validate_fields(self)

    def init(self, model: nn.Module, state: EideticState) -> EpisodicState:
        return episodic_init(self.seed)

    def end_task(
        self, model: nn.Module, state: EideticState, mstate: EpisodicState, ctx: TaskContext
    ) -> tuple[EideticState, EpisodicState, Decision]:
        return state, remember_task(self.memory_per_task, state, mstate, ctx), DONE

    def plan(
        self,
        model: nn.Module,
        state: EideticState,
        mstate: EpisodicState,
        batch: Batch,
        *,
        task: int,
    ) -> StepPlan:
        memory = mstate.memory
        previous = [(t, index) for t, index in grouped_by_task(memory) if t != task]
        if not previous:
            return StepPlan()
        mask = trainable(state)

        def project(
            grads: dict[str, Tensor], apply: Apply, params: dict[str, Tensor]
        ) -> dict[str, Tensor]:
            present = set(grads)
            rows = []
            for _, index in previous:
                g_k = _memory_grads(apply, params, samples_take(memory, index))
                present |= set(g_k)
                rows.append(_flatten(g_k, params, mask))
            g = _flatten(grads, params, mask)
            projected = gem_project(g, torch.stack(rows), margin=self.margin)
            return _unflatten(projected, params, present)

        return StepPlan(grad_transform=project)
