"""How the task loop trains a task (:class:`TrainConfig`): frozen, validated on
construction, JSON-serializable; its fields carry their command-line help (:func:`option`).
How EideticNet prunes is the method's own fields (:class:`eidetic_func.methods.eidetic.EideticNet`);
what a whole run is: :class:`eidetic_func.runner.config.RunConfig`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from eidetic_func.core import validate


def option(
    default: Any,
    text: str,
    *,
    group: str,
    flag: str | None = None,
    choices: Sequence[str] | None = None,
    metavar: str | None = None,
    none: str | None = None,
) -> Any:
    """A field with ``default`` that is a flag of ``eidetic-func`` (:mod:`eidetic_func.runner.cli`).

    Its metadata: the ``help`` ``text`` and the ``group`` it is listed in; the ``flag`` name
    where it is not the field's (dashes for underscores); the ``choices`` (a comma-list
    field's items are checked by ``__post_init__``); a ``metavar``; what a default of None
    means (``none``). The field's type says how a value is parsed: ``bool`` as ``--x`` /
    ``--no-x``, ``int | None`` as an int, ``float | Sequence[float]`` as a comma list.
    """
    metadata = {"help": text, "group": group, "flag": flag, "choices": choices}
    metadata |= {"metavar": metavar, "none": none}
    return dataclasses.field(
        default=default, metadata={k: v for k, v in metadata.items() if v is not None}
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How the task loop trains one task (defaults follow the original where it has one).

    ``max_epochs`` and ``patience`` bound the training before the method's end of task;
    ``lr_factor`` multiplies the learning rate once before the end of task (EideticNet's
    pruning; 1.0: unchanged); the task's starting rate is restored when it ends, so every
    task starts at the same rate. ``finish`` closes the task when it ends (EideticNet
    finishes and recycles it; other methods' tasks advance); False leaves that to the
    caller. ``compiled`` runs every training step under ``torch.compile`` (see
    ``train_step``). The steps' metrics and checks stay on the device and are read once per
    epoch, or every ``check_every`` steps (a bad step is found then and the state read as
    good before it kept: :mod:`eidetic_func.training.epoch`). How EideticNet prunes is its
    own fields (``EideticNet(pruning_step=…)``).
    """

    max_epochs: int = option(
        20, "maximum epochs per task before pruning", group="training", flag="epochs"
    )
    patience: int = option(3, "early-stopping patience in epochs", group="training")
    lr_factor: float = option(
        1.0, "multiply the learning rate by this before pruning", group="training"
    )
    finish: bool = True
    compiled: bool = option(
        False,
        "run every training step under torch.compile (the first step of each task compiles; "
        "worth it on a GPU or for long runs, see the README's step benchmark)",
        group="method",
        flag="compile",
    )
    check_every: int | None = option(
        None,
        "read the training steps' metrics and checks from the device every N steps",
        group="training",
        none="once per epoch",
    )

    def __post_init__(self) -> None:
        validate.integer(self.max_epochs, "max_epochs", minimum=1)
        validate.integer(self.patience, "patience", minimum=0)
        validate.number(self.lr_factor, "lr_factor", low=0.0, high=1.0, low_open=True)
        if self.check_every is not None:
            validate.integer(self.check_every, "check_every", minimum=1)
        for name in ("finish", "compiled"):
            validate.boolean(getattr(self, name), name)


def as_list(value: Any) -> list[Any]:
    """``value`` as a list: sequences as they are, anything else as one item."""
    return list(value) if isinstance(value, list | tuple) else [value]
