"""The three continual-learning scenarios (van de Ven & Tolias; Hsu et al. 2018).

- ``task``: task-incremental — one head per task, the task id is given (the default, and
  EideticNet's setting);
- ``class``: class-incremental — one head over every class of every task, labels global
  (task ``t``'s classes follow those of tasks ``0..t-1``), no task id at test: each test
  image is classified among all classes;
- ``domain``: domain-incremental — one head shared by all tasks (which have the same
  number of classes), labels as within the task (e.g. Permuted-MNIST's digits, or
  Split-MNIST's "first or second digit of the pair").

A scenario is a relabelled :class:`TaskSequence` plus a :class:`SharedHead` network: its
``forward(x, task)`` ignores ``task`` and answers with its one head, so every method,
metric and shell works unchanged (the accuracy matrix of a shared head *is* the
class- or domain-incremental accuracy).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor, nn

from eidetic_func.core.errors import ConfigError
from eidetic_func.core.topology import Topology, Unit
from eidetic_func.data.image_dataset import ImageDataset
from eidetic_func.data.sequences import TaskSequence

SCENARIOS = ("task", "class", "domain")


class SharedHead(nn.Module):
    """``net`` (one head, ``heads.0``) answering for ``num_tasks`` tasks."""

    def __init__(self, net: nn.Module, num_tasks: int) -> None:
        super().__init__()
        self.net = net
        self._num_tasks = num_tasks
        # what methods that generate or check inputs read off the network
        self.input_shape = getattr(net, "input_shape", None)
        self.in_features = getattr(net, "in_features", None)

    @property
    def num_tasks(self) -> int:
        return self._num_tasks

    def head_of(self, task: int) -> int:
        """The head that answers for ``task``: the one head."""
        return 0

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        return self.net(x, 0)

    def topology(self) -> Topology:
        """The network's topology, its layers named as in this module (``net.*``)."""
        declared = getattr(self.net, "topology", None)
        inner = declared() if callable(declared) else None
        if not isinstance(inner, Topology):
            raise ConfigError(f"{type(self.net).__name__} declares no topology")
        return prefixed(inner, "net.")

    def check_input(self, x: Tensor) -> None:
        check = getattr(self.net, "check_input", None)
        if callable(check):
            check(x)


def prefixed(topology: Topology, prefix: str) -> Topology:
    """``topology`` with every layer path prefixed (a network wrapped in another)."""
    units = tuple(
        Unit(
            name=prefix + u.name,
            producers=tuple(prefix + p for p in u.producers),
            norms=tuple(prefix + n for n in u.norms),
            readers=tuple(dataclasses.replace(r, layer=prefix + r.layer) for r in u.readers),
        )
        for u in topology.units
    )
    return Topology(units=units, heads=tuple(prefix + h for h in topology.heads))


def head_sizes(sequence: TaskSequence, scenario: str) -> list[int]:
    """The model's heads: one per task (``task``), or the one shared head's width."""
    if scenario == "task":
        return list(sequence.num_classes)
    if scenario == "class":
        return [sum(sequence.num_classes)]
    return [sequence.num_classes[0]]


def scenario_sequence(sequence: TaskSequence, scenario: str) -> TaskSequence:
    """``sequence`` labelled for ``scenario``: class-incremental labels are global (offset
    by the classes of the earlier tasks); task- and domain-incremental keep the task's."""
    if scenario not in SCENARIOS:
        raise ConfigError(f"scenario must be one of {list(SCENARIOS)}, got {scenario!r}")
    if scenario == "domain" and len(set(sequence.num_classes)) > 1:
        raise ConfigError(
            f"domain-incremental learning shares one head: every task needs the same number "
            f"of classes, these have {list(sequence.num_classes)}"
        )
    if scenario != "class":
        return sequence
    tasks, offset = [], 0
    for task in sequence:
        tasks.append(
            dataclasses.replace(
                task, train=_offset(task.train, offset), test=_offset(task.test, offset)
            )
        )
        offset += task.num_classes
    return dataclasses.replace(sequence, tasks=tuple(tasks))


def _offset(dataset: Any, offset: int) -> Any:
    """``dataset`` with every label moved up by ``offset`` (sharing its inputs)."""
    if isinstance(dataset, ImageDataset):
        return ImageDataset(
            dataset.images,
            dataset.labels + offset,
            index=dataset.index,
            mean=dataset.mean,
            std=dataset.std,
            permutation=dataset.permutation,
        )
    from eidetic_func.data.task_split import TaskView

    if isinstance(dataset, TaskView):
        return TaskView(
            dataset.dataset, dataset.indices, dataset.labels + offset, dataset.transform
        )
    raise ConfigError(f"cannot relabel a {type(dataset).__name__} for class-incremental learning")


__all__ = ["SCENARIOS", "SharedHead", "head_sizes", "prefixed", "scenario_sequence"]
