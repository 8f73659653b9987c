"""Propagating pruning through the network so that nothing live reads a pruned neuron."""

from __future__ import annotations

import torch
from torch import Tensor

from eidetic_func.core.state import EideticState, topology_of
from eidetic_func.core.topology import columns, neuron_alive, reader_columns, rows


def bridge(state: EideticState) -> EideticState:
    """Make the pruning mask consistent; idempotent, and it only ever removes.

    A neuron is dead when none of its own entries is kept (the liveness rule of
    :func:`eidetic_func.core.topology.neuron_alive`). For every dead neuron, every free entry
    that belongs to it or reads it is removed (``keep = False``): all its producers' rows
    (residual streams are pruned on both sides), their biases, its BatchNorm channel and
    the input columns that read it in every reader (conv → linear: the channel's whole
    spatial block). A neuron left with no kept weight, bias or BatchNorm entry is dead in
    turn, until nothing changes; one that keeps only a bias or a BatchNorm shift stays
    alive (its readers still see it). Every removed free entry ends up zero; owned
    entries are never touched.
    """
    topology = topology_of(state)
    keep, params = dict(state.keep), dict(state.params)
    changed = True
    while changed:
        changed = False
        for unit in topology.units:
            dead = ~neuron_alive(unit, keep)
            if not bool(dead.any()):
                continue
            targets: list[tuple[str, Tensor]] = []
            for layer in unit.producers:
                for key in (f"{layer}.weight", f"{layer}.bias"):
                    if key in keep:
                        targets.append((key, rows(dead, keep[key])))
            for norm in unit.norms:
                for key in (f"{norm}.weight", f"{norm}.bias"):
                    if key in keep:
                        targets.append((key, dead))
            for reader in unit.readers:
                key = f"{reader.layer}.weight"
                cols = reader_columns(reader, dead, keep[key].shape[1])
                targets.append((key, columns(cols, keep[key])))
            for key, mask in targets:
                remove = mask & (state.owner[key] < 0) & keep[key]
                if bool(remove.any()):
                    keep[key] = keep[key] & ~remove
                    changed = True
    # every removed free entry is zero (also those a caller removed without zeroing)
    for key, k in keep.items():
        removed = ~k & (state.owner[key] < 0)
        if bool(removed.any()):
            params[key] = torch.where(removed, torch.zeros_like(params[key]), params[key])
    return state.replace(keep=keep, params=params)
