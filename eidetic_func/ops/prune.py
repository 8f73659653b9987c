"""Structured pruning: choose the neurons to remove from their scores; never an owned one."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from eidetic_func.core import validate
from eidetic_func.core.errors import ConfigError, NonFiniteError, NothingToPrune
from eidetic_func.core.state import EideticState, topology_of
from eidetic_func.core.topology import neuron_alive, neuron_owner, neuron_vector_keys, rows

SCORING_METHODS: tuple[str, ...] = ("l1", "l2", "random", "taylor", "taylor_batch")
# scores computed from data (the others from the weights alone)
DATA_METHODS = ("taylor", "taylor_batch")
GLOBAL_METHODS = DATA_METHODS  # one threshold across layers; the others prune per layer


def prune(
    state: EideticState,
    scores: dict[str, Tensor],
    *,
    fraction: float,
    method: str,
    constant_step: bool = False,
) -> EideticState:
    """The state with the lowest-scoring prunable neurons removed from ``keep`` (and zeroed).

    Only free neurons still alive in this task are candidates; every unit keeps at least
    one of them, so the task's subnetwork stays connected.

    - Taylor methods: one global threshold across units (scores L2-normalized over all
      finite scores, as the original); prune ``floor(fraction × remaining candidates)``,
      or ``floor(fraction × all neurons)`` with ``constant_step``.
    - ``l1`` / ``l2`` / ``random``: per unit, ``floor(fraction × its candidates)`` (or of
      its size with ``constant_step``).

    A chosen neuron loses all its own entries (producer rows, biases, BatchNorm scale and
    shift: see :func:`eidetic_func.core.topology.neuron_alive`); :func:`eidetic_func.ops.bridge`
    then removes the columns that read it. Raises :class:`NothingToPrune` when the rule
    selects no neuron.
    """
    fraction = validate.fraction(fraction, "fraction")
    validate.choice(method, "method", SCORING_METHODS)
    validate.boolean(constant_step, "constant_step")
    topology = topology_of(state)
    candidates = prunable(state)
    missing = {u.name for u in topology.units} - scores.keys()
    if missing:
        raise ConfigError(f"scores are missing for units {sorted(missing)}")
    for unit in topology.units:
        if scores[unit.name].shape != candidates[unit.name].shape:
            raise ConfigError(
                f"scores of unit {unit.name!r} have shape {tuple(scores[unit.name].shape)}, "
                f"expected {tuple(candidates[unit.name].shape)}"
            )
        if bool(scores[unit.name][candidates[unit.name]].isnan().any()):
            raise NonFiniteError(f"scores of unit {unit.name!r} contain NaN")
    # each unit keeps its best candidate: never prunable in this step
    allowed = {name: _all_but_best(c, scores[name]) for name, c in candidates.items()}
    if method in GLOBAL_METHODS:
        chosen = _global(scores, candidates, allowed, fraction, constant_step)
    else:
        chosen = {
            name: _lowest(scores[name], allowed[name], _count(fraction, c, constant_step))
            for name, c in candidates.items()
        }
    total = sum(int(c.sum()) for c in chosen.values())
    if total == 0:
        remaining = sum(int(c.sum()) for c in candidates.values())
        raise NothingToPrune(
            f"no neuron to prune: {remaining} candidate neurons remain (each unit keeps at "
            f"least one) and fraction={fraction} selects none"
        )
    return prune_neurons(state, chosen)


def prune_neurons(state: EideticState, neurons: dict[str, Tensor]) -> EideticState:
    """The state with the given neurons removed: ``neurons`` maps unit names to ``[C]`` bools.

    Each chosen neuron loses all its own entries (``keep = False``, value zero): its
    producer rows, biases and BatchNorm scale and shift. Units not named are untouched.
    Call :func:`eidetic_func.ops.bridge` next to remove the columns that read them. Raises
    :class:`TopologyError` for an unknown unit, :class:`ConfigError` for a wrong shape or
    an owned neuron.
    """
    topology = topology_of(state)
    keep, params = dict(state.keep), dict(state.params)
    for name, dead in neurons.items():
        unit = topology.unit(name)
        owner = neuron_owner(unit, state.owner)
        if not isinstance(dead, Tensor) or dead.dtype != torch.bool or dead.shape != owner.shape:
            raise ConfigError(
                f"neurons[{name!r}] must be a bool tensor of shape {tuple(owner.shape)}"
            )
        dead = dead.to(owner.device)
        if bool((dead & (owner >= 0)).any()):
            raise ConfigError(f"unit {name!r}: owned neurons cannot be pruned")
        if not bool(dead.any()):
            continue
        keys = [f"{layer}.weight" for layer in unit.producers] + list(neuron_vector_keys(unit))
        for key in keys:
            if key not in keep:
                continue
            mask = rows(dead, keep[key])
            keep[key] = keep[key] & ~mask
            params[key] = torch.where(mask, torch.zeros_like(params[key]), params[key])
    return state.replace(keep=keep, params=params)


def _count(fraction: float, candidates: Tensor, constant_step: bool) -> int:
    base = candidates.numel() if constant_step else int(candidates.sum())
    return math.floor(fraction * base)


def _all_but_best(candidates: Tensor, scores: Tensor) -> Tensor:
    allowed = candidates.clone()
    if bool(candidates.any()):
        masked = torch.where(candidates, scores, torch.full_like(scores, -float("inf")))
        allowed[int(masked.argmax())] = False
    return allowed


def _lowest(scores: Tensor, allowed: Tensor, n: int) -> Tensor:
    """Bool mask of the ``n`` lowest ``scores`` among ``allowed`` (ties: lower index first)."""
    out = torch.zeros_like(allowed)
    n = min(n, int(allowed.sum()))
    if n > 0:
        idx = allowed.nonzero().squeeze(1)
        order = torch.sort(scores[idx], stable=True).indices[:n]
        out[idx[order]] = True
    return out


def _global(
    scores: dict[str, Tensor],
    candidates: dict[str, Tensor],
    allowed: dict[str, Tensor],
    fraction: float,
    constant_step: bool,
) -> dict[str, Tensor]:
    names = list(scores)
    flat_scores = torch.cat([scores[n].double() for n in names])
    finite = torch.isfinite(flat_scores)
    norm = flat_scores[finite].norm()
    normalized = flat_scores / norm if float(norm) > 0 else flat_scores
    flat_candidates = torch.cat([candidates[n] for n in names])
    n = _count(fraction, flat_candidates, constant_step)
    picked = _lowest(normalized, torch.cat([allowed[n] for n in names]), n)
    return dict(zip(names, picked.split([scores[n].numel() for n in names])))


def prunable(state: EideticState) -> dict[str, Tensor]:
    """``{unit: [C] bool}``: free neurons still alive in the current task."""
    return {
        u.name: (neuron_owner(u, state.owner) < 0) & neuron_alive(u, state.keep)
        for u in topology_of(state).units
    }
