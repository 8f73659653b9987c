"""What a run says about itself when its numbers cannot mean what they seem to.

Pure functions of the run's settings, data and record, each returning sentences that name
the cause and the fix: a task that never left chance level before it was pruned (its
pruning decisions were made on noise), a task with fewer training items than one batch
(an epoch is one step), a task with one class (100 % by construction), and ``--grow``
that never triggered (no unit ran out of free neurons).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eidetic_func.data.sequences import TaskSequence
from eidetic_func.runner.config import RunConfig

CHANCE_MARGIN = 0.05  # a best accuracy within this of chance (absolute) is chance level


def data_warnings(config: RunConfig, sequence: TaskSequence) -> list[str]:
    """Tasks too small for a batch, and tasks of one class."""
    found = []
    for t, task in enumerate(sequence):
        items = len(task.train)
        if items < config.batch_size:
            found.append(
                f"task {t} ({task.name}) has {items} training items, fewer than one batch "
                f"({config.batch_size}): every epoch is one step; lower --batch-size or use "
                "more data"
            )
        if task.num_classes == 1:
            found.append(
                f"task {t} ({task.name}) has one class: its accuracy is 100 % by construction"
            )
    return found


def chance_warnings(sequence: TaskSequence, history: Sequence[dict[str, Any]]) -> list[str]:
    """Tasks whose best training-phase accuracy stayed within :data:`CHANCE_MARGIN` of
    chance (``1 / classes``); said of pruning where the task was pruned."""
    found = []
    for t, task in enumerate(sequence):
        mine = [r for r in history if r.get("task") == t]
        metrics = [r["metric"] for r in mine if r["phase"] == "train"]
        chance = 1 / task.num_classes
        if not metrics or task.num_classes == 1 or max(metrics) > chance + CHANCE_MARGIN:
            continue
        pruned = any(r["phase"] == "prune" for r in mine)
        when = " before pruning (pruning then kept what noise needs)" if pruned else ""
        found.append(
            f"task {t} ({task.name}) never left chance level{when}: best accuracy while training "
            f"{max(metrics):.1%} for {task.num_classes} classes (chance {chance:.1%}); train "
            "longer (--epochs), on more data, or with another --lr"
        )
    return found


def growth_warnings(config: RunConfig, grew: bool) -> list[str]:
    """``--grow`` asked for, never triggered."""
    if config.grow <= 0 or grew:
        return []
    return [
        f"--grow {config.grow} never triggered: no unit ran out of free neurons when a task "
        "began (the network never filled); a narrower --width or more tasks make it grow"
    ]


__all__ = ["CHANCE_MARGIN", "chance_warnings", "data_warnings", "growth_warnings"]
