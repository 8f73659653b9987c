"""Any classifier as a multi-head network: ``ef.multihead(backbone, num_classes=[...])``.

The library's convention is ``forward(x, task)`` with one Linear head per task in
``heads``. :func:`multihead` gives it to a ready-made classifier (any torchvision model,
or a user's): its final classifier — the last ``nn.Linear``, or the one named — becomes the
identity, and one head per task reads the features it read. The result's topology is
traced (:func:`eidetic_func.trace_topology`), so nothing is declared by hand.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from eidetic_func.core.errors import ConfigError, ShapeError, TopologyError
from eidetic_func.core.topology import Topology
from eidetic_func.nn.batchnorm import convert_batchnorm
from eidetic_func.nn.traced_topology import trace_topology


class MultiHead(nn.Module):
    """``backbone`` (its classifier removed) with ``heads[t]``: logits of task ``t``.

    ``input_shape`` is one input's shape, ``(C, H, W)``; inputs with fewer channels than
    the backbone's ``in_channels`` (grey images into an RGB network) are repeated along
    the channel axis.
    """

    def __init__(
        self,
        backbone: nn.Module,
        heads: nn.ModuleList,
        *,
        input_shape: Sequence[int],
        in_channels: int,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.input_shape = tuple(int(d) for d in input_shape)
        self.in_channels = in_channels
        self.repeat_channels = self.input_shape[0] != in_channels  # static: traceable

    @property
    def num_tasks(self) -> int:
        return len(self.heads)

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        if self.repeat_channels:
            x = x.expand(-1, self.in_channels, *([-1] * (len(self.input_shape) - 1)))
        return self.heads[task](self.backbone(x))

    def check_input(self, x: Tensor) -> None:
        if x.dim() != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ShapeError(
                f"x has shape {tuple(x.shape)}; the model expects (batch, *{self.input_shape})"
            )

    def topology(self) -> Topology:
        """The traced prune topology (on a zero batch of ``input_shape``)."""
        return trace_topology(self, torch.zeros(2, *self.input_shape))


def multihead(
    backbone: nn.Module,
    num_classes: Sequence[int],
    *,
    input_shape: Sequence[int] = (3, 224, 224),
    classifier: str | None = None,
) -> MultiHead:
    """A copy of ``backbone`` with one head per task in place of its final classifier.

    - the classifier is the module at path ``classifier``, or else the backbone's last
      ``nn.Linear``; it becomes ``nn.Identity`` and ``heads[t] = Linear(its in_features,
      num_classes[t])``;
    - BatchNorm layers become Task BatchNorm (per-task frozen statistics);
    - in-place activations become out-of-place (the functional core never writes in place);
    - ``input_shape`` ``(C, H, W)`` is what the network is fed (grey images are repeated
      to the backbone's input channels).

    The backbone itself is never modified. Raises :class:`ConfigError` for empty
    ``num_classes`` and :class:`TopologyError` when there is no Linear classifier.
    """
    if not num_classes or any(not isinstance(k, int) or k < 1 for k in num_classes):
        raise ConfigError(f"num_classes must be positive ints, one per task, got {num_classes!r}")
    model = convert_batchnorm(copy.deepcopy(backbone))
    for m in model.modules():
        if getattr(m, "inplace", False) is True:
            setattr(m, "inplace", False)  # noqa: B010 (not every module declares it)
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    path = classifier if classifier is not None else (linears[-1] if linears else None)
    if path is None or path not in dict(model.named_modules()):
        raise TopologyError(
            f"{type(backbone).__name__} has no Linear classifier"
            + ("" if classifier is None else f" at {classifier!r}")
            + "; name it with classifier='path.to.linear'"
        )
    final = model.get_submodule(path)
    if not isinstance(final, nn.Linear):
        raise TopologyError(f"{path!r} is a {type(final).__name__}, not a Linear classifier")
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    parent.add_module(leaf, nn.Identity())
    heads = nn.ModuleList(nn.Linear(final.in_features, k) for k in num_classes)
    first = next((m for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d)), None)
    in_channels = first.in_channels if first is not None else int(input_shape[0])
    if len(input_shape) < 1 or int(input_shape[0]) not in (1, in_channels):
        raise ConfigError(
            f"input_shape {tuple(input_shape)}: the backbone takes {in_channels} channels"
        )
    return MultiHead(model, heads, input_shape=input_shape, in_channels=in_channels)
