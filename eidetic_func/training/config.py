"""How a task is trained and pruned (:class:`TrainConfig`): frozen, validated on
construction, JSON-serializable; its fields carry their command-line help (:func:`option`).
What a whole run is: :class:`eidetic_func.runner.config.RunConfig`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from eidetic_func.core import validate
from eidetic_func.core.errors import ConfigError
from eidetic_func.importance.score import SCORING_METHODS
from eidetic_func.ops.growth import GROW_POLICIES

SCHEDULES = ("fixed", "adaptive")


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
    """How one task is trained and pruned (defaults follow the original where it has one).

    ``pruning_step`` and ``pruning_type`` may be sequences, used in turn and cycled.
    ``tolerance`` is relative: pruning stops when accuracy < ``best × (1 − tolerance)``.
    ``max_masking_ratio`` bounds the pruned share of the neurons this task may use.
    ``lr_factor`` multiplies the learning rate once before pruning (1.0: unchanged); the
    task's starting rate is restored when it ends, so every task starts at the same rate.
    ``score_batches`` caps the batches used for data-driven scores (None: all).
    ``pruning_schedule``: ``"fixed"`` (the original) prunes ``pruning_step`` per step
    until the accuracy leaves the tolerance; ``"adaptive"`` starts with
    ``first_pruning_step``, keeps its size while steps succeed, and after a failed step
    restores the snapshot and halves it, stopping when it falls below ``pruning_step``
    (or at ``max_masking_ratio``, which it approaches exactly): the same kept capacity in
    far fewer recovery epochs.
    ``last_task`` skips pruning (as ``train_task(last=True)``, which a run passes for its
    last task). ``finish`` closes the task (``finish_task`` + ``recycle``).
    ``compiled`` runs every training step under ``torch.compile`` (see ``train_step``).
    """

    max_epochs: int = option(
        20, "maximum epochs per task before pruning", group="training", flag="epochs"
    )
    patience: int = option(3, "early-stopping patience in epochs", group="training")
    pruning_step: float | Sequence[float] = option(
        0.1,
        "fraction of the remaining neurons pruned per step; a comma list cycles",
        group="method",
        metavar="STEP[,STEP...]",
    )
    pruning_type: str | Sequence[str] = option(
        "taylor",
        "how neurons are scored for pruning; a comma list cycles",
        group="method",
        choices=SCORING_METHODS,
        metavar="TYPE[,TYPE...]",
    )
    max_recovery_epochs: int = option(
        2, "epochs to recover after each pruning step", group="method"
    )
    tolerance: float = option(
        0.01, "stop pruning when accuracy < best × (1 − tolerance)", group="method"
    )
    max_masking_ratio: float = option(
        0.95, "stop once this share of a task's neurons is pruned", group="method"
    )
    constant_step: bool = option(
        False,
        "prune a fraction of all neurons per step, not of the remaining ones",
        group="method",
    )
    pruning_schedule: str = option(
        "fixed",
        "fixed: the original's steps of --pruning-step until the accuracy drops; adaptive: "
        "start with --first-pruning-step, halve it (restoring the snapshot) after a failed "
        "step, stop below --pruning-step: similar kept capacity in far fewer recovery epochs",
        group="method",
        choices=SCHEDULES,
    )
    first_pruning_step: float = option(
        0.5, "the adaptive schedule's first step, of the remaining neurons", group="method"
    )
    lr_factor: float = option(
        1.0, "multiply the learning rate by this before pruning", group="training"
    )
    score_batches: int | None = option(
        16,
        "batches of training data used for data-driven pruning scores (Taylor)",
        group="method",
        metavar="N",
    )
    last_task: bool = False
    forward_transfer: bool = option(
        True,
        "later tasks read earlier tasks' features (--no-forward-transfer: every task gets "
        "a disjoint subnetwork)",
        group="method",
    )
    finish: bool = True
    compiled: bool = option(
        False,
        "run every training step under torch.compile (the first step of each task compiles; "
        "worth it on a GPU or for long runs, see the README's step benchmark)",
        group="method",
        flag="compile",
    )

    grow: int = option(
        0,
        "when a task begins and a unit has no free neuron left, add this many neurons to it "
        "(finished tasks stay bit-identical; 0: never grow)",
        group="method",
        metavar="N",
    )
    grow_policy: str = option(
        "when-full",
        "when-full: --grow N neurons for each unit with no free neuron; refill (the "
        "original's policy, needs no --grow): before each task, every unit grows back to as "
        "many free neurons as it started with",
        group="method",
        choices=GROW_POLICIES,
    )

    def __post_init__(self) -> None:
        validate.integer(self.max_epochs, "max_epochs", minimum=1)
        validate.integer(self.grow, "grow", minimum=0)
        validate.choice(self.grow_policy, "grow_policy", GROW_POLICIES)
        if self.grow and self.grow_policy == "refill":
            raise ConfigError(
                f"grow={self.grow} has no effect with grow_policy='refill' (refill adds what "
                "each unit lacks); drop --grow, or use grow_policy='when-full'"
            )
        validate.integer(self.patience, "patience", minimum=0)
        validate.integer(self.max_recovery_epochs, "max_recovery_epochs", minimum=1)
        if not as_list(self.pruning_step) or not as_list(self.pruning_type):
            raise ConfigError("pruning_step and pruning_type must not be empty")
        for step in as_list(self.pruning_step):
            validate.fraction(step, "pruning_step")
        for kind in as_list(self.pruning_type):
            validate.choice(kind, "pruning_type", SCORING_METHODS)
        validate.number(self.tolerance, "tolerance", low=0.0, high=1.0, high_open=True)
        validate.number(
            self.max_masking_ratio, "max_masking_ratio", low=0.0, high=1.0, low_open=True
        )
        validate.number(self.lr_factor, "lr_factor", low=0.0, high=1.0, low_open=True)
        validate.choice(self.pruning_schedule, "pruning_schedule", SCHEDULES)
        validate.fraction(self.first_pruning_step, "first_pruning_step")
        if self.score_batches is not None:
            validate.integer(self.score_batches, "score_batches", minimum=1)
        for name in ("constant_step", "last_task", "forward_transfer", "finish", "compiled"):
            validate.boolean(getattr(self, name), name)


def grows(config: TrainConfig) -> bool:
    """Whether a run with ``config`` grows its network between tasks."""
    return config.grow > 0 or config.grow_policy == "refill"


def as_list(value: Any) -> list[Any]:
    """``value`` as a list: sequences as they are, anything else as one item."""
    return list(value) if isinstance(value, list | tuple) else [value]
