"""What the regularization methods share: the quadratic penalty and their task's data.

EWC, online EWC, SI and MAS add ``strength · Σ importance · (θ − θ*)²``
(:func:`quadratic_penalty`) to the task loss through
:func:`~eidetic_func.methods.protocol.penalty_plan`; LwF a distillation loss. SI's plan
also observes the task loss's gradient (``penalty_plan(..., observe=...)``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from eidetic_func.core.state import EideticState
from eidetic_func.core.types import Batch


def quadratic_penalty(
    importance: dict[str, Tensor], anchor: dict[str, Tensor], params: dict[str, Tensor]
) -> Tensor:
    """``Σ_k Σ importance_k · (params_k − anchor_k)²`` over the keys of ``importance``.

    Keys must be in ``anchor`` and ``params`` (same shapes); differentiable in ``params``.
    Returns a scalar on the parameters' device (zero for an empty ``importance``).
    """
    terms = [(imp * (params[k] - anchor[k]).square()).sum() for k, imp in importance.items()]
    if not terms:
        ref = next(iter(params.values()))
        return torch.zeros((), dtype=ref.dtype, device=ref.device)
    return torch.stack(terms).sum()


def state_batches(loader: Iterable[Batch], state: EideticState) -> Iterable[Batch]:
    """``loader``'s batches on the device of the state's parameters."""
    device = next(iter(state.params.values())).device
    return ((x.to(device), y.to(device)) for x, y in loader)
