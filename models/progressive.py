"""Progressive networks (Rusu et al. 2016) with MLP columns: one column per task.

Column ``k`` computes, for hidden layers ``i = 1 .. L`` (``h_0 = x``; eq. 1 of the paper)::

    h_i^(k) = relu(W_i^(k) h_{i-1}^(k) + Σ_{j<k} U_i^(k:j) h_{i-1}^(j))     (no laterals for i = 1)
    logits^(k) = V^(k) h_L^(k) + Σ_{j<k} U_out^(k:j) h_L^(j)

Differences from the continual-learning tutorial's version, which this fixes:

- laterals enter *before* the nonlinearity and come from the previous layer ``i − 1`` of
  earlier columns (the tutorial adds same-layer activations after the ReLU, and gives
  the first layer laterals from other columns' first layer);
- the output layer has laterals too, as in the paper;
- every column is built up front, so the parameter set is fixed and one optimizer (and
  one functional state) serves the whole sequence (the tutorial adds modules per task,
  which a live optimizer never sees);
- freezing is not done here with ``requires_grad``: the tutorial froze earlier columns
  but not their lateral layers, and an optimizer that already holds gradients or state
  for a tensor (AdamW's decoupled weight decay, momentum) moves it anyway. Columns are
  frozen by ownership (``eidetic_func.methods.Progressive``): column ``k``'s layers,
  laterals and head are owned by task ``k`` once it is trained.

The adapters of the paper's section 3 (a learned scale and a projection on each lateral)
are left out: linear laterals are the basic model of eq. 1. Parameter names:
``columns.{k}.layers.{i}``, ``columns.{k}.laterals.{i-1}`` (``i ≥ 1``, ``k ≥ 1``),
``columns.{k}.out_lateral`` (``k ≥ 1``) and ``heads.{k}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from eidetic_func.models.base import TaskModel, check_flat, check_task_index, make_heads
from torch import Tensor, nn

from eidetic_func.core.errors import ConfigError, NoTopology, TopologyError
from eidetic_func.core.topology import Topology


class Column(nn.Module):
    """One task's column: ``num_layers`` Linear layers, and laterals from ``index`` earlier columns."""

    layers: nn.ModuleList
    laterals: nn.ModuleList
    out_lateral: nn.Linear | None

    def __init__(
        self, index: int, in_features: int, width: int, num_layers: int, num_classes: int
    ) -> None:
        super().__init__()
        fan_ins = [in_features] + [width] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(f, width) for f in fan_ins)
        self.laterals = nn.ModuleList(
            nn.Linear(index * width, width, bias=False)
            for _ in range(num_layers - 1 if index else 0)
        )
        self.out_lateral = nn.Linear(index * width, num_classes, bias=False) if index else None


class ProgressiveMLP(TaskModel):
    """``ProgressiveMLP(in_features, num_classes, num_layers=2, width=100)``: a column per task.

    ``forward(x, task)`` runs columns ``0 .. task`` (earlier columns feed the laterals) and
    returns task ``task``'s logits ``[batch, num_classes[task]]``. Inputs are flattened.
    Parameters grow linearly in the number of tasks for the columns and quadratically for
    the laterals.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: Sequence[int],
        num_layers: int = 2,
        width: int = 100,
    ) -> None:
        super().__init__(num_classes)
        if in_features < 1 or num_layers < 1 or width < 1:
            raise ConfigError(
                f"in_features, num_layers and width must be positive, got {in_features}, "
                f"{num_layers}, {width}"
            )
        self.in_features, self.width, self.num_layers = in_features, width, num_layers
        self.columns = nn.ModuleList(
            Column(k, in_features, width, num_layers, c) for k, c in enumerate(self.num_classes)
        )
        self.heads = make_heads(width, self.num_classes)

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        check_task_index(task, self.num_tasks)
        x = x.flatten(1)
        hidden: list[list[Tensor]] = []  # hidden[j][i]: h_{i+1} of column j
        for k in range(task + 1):
            column = cast(Column, self.columns[k])
            h = [torch.relu(column.layers[0](x))]
            for i in range(1, self.num_layers):
                pre = column.layers[i](h[-1])
                if k > 0:
                    pre = pre + column.laterals[i - 1](
                        torch.cat([hidden[j][i - 1] for j in range(k)], 1)
                    )
                h.append(torch.relu(pre))
            hidden.append(h)
        logits = self.heads[task](hidden[task][-1])
        if task > 0:
            lateral = cast(Column, self.columns[task]).out_lateral
            assert lateral is not None  # every column after the first has one
            logits = logits + lateral(torch.cat([hidden[j][-1] for j in range(task)], 1))
        return logits

    def column_prefixes(self, task: int) -> tuple[str, ...]:
        """Name prefixes of everything column ``task`` adds: its layers, laterals and head."""
        check_task_index(task, self.num_tasks)
        return (f"columns.{task}.", f"heads.{task}.")

    def check_input(self, x: Tensor) -> None:
        check_flat(x, self.in_features)

    def features(self, x: Tensor) -> Tensor:
        raise TopologyError("a progressive network has no shared features; call forward(x, task)")

    def topology(self) -> Topology:
        raise NoTopology(
            "progressive networks add a column per task instead of pruning; they have no "
            "prune topology"
        )
