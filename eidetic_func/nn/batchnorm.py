"""BatchNorm whose channels owned by finished tasks stay in inference mode while training.

A finished task's BN channels must keep normalizing with the running statistics it was
evaluated with, even while a later task trains (in training mode) through the same layer,
and those statistics must come back unchanged. Plain ``nn.BatchNorm`` cannot do that per
channel, so models used with eidetic_func use :class:`TaskBatchNorm1d` /
:class:`TaskBatchNorm2d` (``convert_batchnorm`` swaps them into any model).

The frozen channels arrive as the buffer ``frozen_channels`` (their indices), which
:func:`eidetic_func.ops.forward` derives from the state's ownership and passes through
``functional_call``; the module keeps no state of its own. An empty ``frozen_channels``
(the default) means "no channel is frozen" and is exactly the plain ``nn.BatchNorm``.
A training step also sets the plain attribute ``frozen_blend`` beside them: the blend
vectors of those indices (:func:`blend_masks`), prepared once per task in
:class:`eidetic_func.ops.step_masks.StepMasks`; without it (or for other indices) the
module derives them per call.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from eidetic_func.core.errors import TopologyError

# (indices, frozen, free, is_frozen): channel indices, then blend_masks of them
FrozenBlend = tuple[Tensor, Tensor, Tensor, Tensor]
# (frozen, shift, scale, the (running_mean, running_var, weight, bias) they were made for)
FrozenAffine = tuple[Tensor, Tensor, Tensor, tuple[Tensor | None, ...]]


class _TaskBatchNorm(_BatchNorm):
    frozen_channels: Tensor
    frozen_blend: FrozenBlend | None = None  # set for a step beside frozen_channels

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats=True,
            device=device,
            dtype=dtype,
        )
        self.register_buffer(
            "frozen_channels", torch.zeros(0, dtype=torch.long, device=device), persistent=False
        )

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or self.frozen_channels.numel() == 0:
            return super().forward(input)
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average, as nn.BatchNorm
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        frozen, free, is_frozen = self._blend()
        mean, var = self.running_mean, self.running_var
        weight, bias = self.weight, self.bias
        # Frozen channels: inference-mode normalization with the frozen statistics, an
        # affine map applied once; its scale and shift are constants (owned), but the
        # gradient reaches the input: a frozen channel may read free entries (PackNet
        # owns single weights, so an owned row can hold weights a later task trains).
        # Free channels: the batch-normalized output. The blend is exact (one side
        # times 1, the other 0).
        # prepared once for many steps, from these very tensors (not from parameters a
        # functional_call substitutes, e.g. a finished head's masked ones)
        prepared = self.__dict__.get("frozen_affine")
        if (
            prepared is None
            or torch.compiler.is_compiling()
            or prepared[0] is not frozen
            or any(a is not b for a, b in zip(prepared[3], (mean, var, weight, bias)))
        ):
            prepared = (frozen, *frozen_affine(mean, var, weight, bias, self.eps, frozen), ())
        shape = (1, -1) + (1,) * (input.dim() - 2)
        shift, scale = prepared[1].view(shape), prepared[2].view(shape)
        frozen_part = torch.addcmul(shift, input, scale)
        # batch norm updates the statistics of every channel (of copies it keeps for its
        # backward); only the free channels' updates are taken
        new_mean, new_var = mean.clone(), var.clone()
        batch_normalized = F.batch_norm(
            input, new_mean, new_var, weight, bias, True, factor, self.eps
        )
        with torch.no_grad():
            torch.where(is_frozen, mean, new_mean, out=mean)
            torch.where(is_frozen, var, new_var, out=var)
        return torch.addcmul(frozen_part, batch_normalized, free.view(shape))

    def _blend(self) -> tuple[Tensor, Tensor, Tensor]:
        """The blend vectors of ``frozen_channels``: the prepared ones when they are of
        these very indices (compiled code computes them in the graph, once)."""
        prepared, like = self.frozen_blend, self.running_mean
        assert like is not None
        if (
            torch.compiler.is_compiling()
            or prepared is None
            or prepared[0] is not self.frozen_channels
            or prepared[1].dtype != like.dtype
            or prepared[1].shape != like.shape
        ):
            return blend_masks(self.frozen_channels, like)
        return prepared[1], prepared[2], prepared[3]


def frozen_affine(
    mean: Tensor,
    var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    frozen: Tensor,
) -> tuple[Tensor, Tensor]:
    """``(shift, scale)``, ``[C]``: the frozen channels' inference-mode normalization as an
    affine map (``x * scale + shift``), zero on the other channels (``frozen``: the 0/1
    vector of :func:`blend_masks`). It reads only frozen entries, which a training epoch
    never changes, so an epoch prepares it once (``frozen_affine`` beside
    ``frozen_blend``: ``(frozen, shift, scale, (running_mean, running_var, weight, bias))``,
    used only while the module runs on those very tensors) and every step gets the same
    bits as computing it afresh."""
    with torch.no_grad():
        scale = (var + eps).rsqrt_()
        if weight is not None:
            scale.mul_(weight)
        shift = torch.sub(bias, mean * scale) if bias is not None else (mean * scale).neg_()
        return shift.mul_(frozen), scale.mul_(frozen)


def blend_masks(frozen_channels: Tensor, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(frozen, 1 - frozen, frozen as bool)`` for the channel indices ``frozen_channels``:
    0/1 vectors shaped like ``like`` (a BN statistic), and the bool mask."""
    frozen = torch.zeros_like(like).index_fill_(0, frozen_channels, 1.0)
    return frozen, 1 - frozen, frozen.bool()


class TaskBatchNorm1d(_TaskBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with per-channel frozen statistics (see module docstring)."""


class TaskBatchNorm2d(_TaskBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with per-channel frozen statistics (see module docstring)."""


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Return a copy of ``module`` with every ``nn.BatchNorm1d/2d`` replaced by its Task variant.

    Parameters and running statistics are copied; the input module is not modified.
    """
    converted = copy.deepcopy(module)
    if isinstance(converted, nn.BatchNorm1d | nn.BatchNorm2d):
        return _to_task_bn(converted)
    for child in list(converted.modules()):
        for child_name, grandchild in list(child.named_children()):
            if isinstance(grandchild, nn.BatchNorm1d | nn.BatchNorm2d):
                child.add_module(child_name, _to_task_bn(grandchild))
    return converted


def _to_task_bn(bn: _BatchNorm) -> _TaskBatchNorm:
    if isinstance(bn, _TaskBatchNorm):
        return bn
    if not bn.track_running_stats or bn.running_mean is None:
        raise TopologyError(
            "BatchNorm without running statistics cannot freeze per-task statistics; "
            "build it with track_running_stats=True"
        )
    cls = TaskBatchNorm1d if isinstance(bn, nn.BatchNorm1d) else TaskBatchNorm2d
    new = cls(
        bn.num_features,
        bn.eps,
        bn.momentum,
        bn.affine,
        bn.running_mean.device,
        bn.running_mean.dtype,
    )
    new.load_state_dict(bn.state_dict())
    new.train(bn.training)
    return new


def is_task_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, _TaskBatchNorm)
