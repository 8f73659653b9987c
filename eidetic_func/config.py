"""The configuration records: how a task is trained (:class:`TrainConfig`) and what a run
is (:class:`RunConfig`). Frozen, validated on construction, JSON-serializable."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from . import validate
from .distributed import DEFAULT_TIMEOUT_S
from .errors import ConfigError
from .scenario import SCENARIOS
from .score import SCORING_METHODS

SCHEDULES = ("fixed", "adaptive")


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
    ``last_task`` skips pruning. ``finish`` closes the task (``finish_task`` + ``recycle``).
    ``compiled`` runs every training step under ``torch.compile`` (see ``train_step``).
    """

    max_epochs: int = 20
    patience: int = 3
    pruning_step: float | Sequence[float] = 0.1
    pruning_type: str | Sequence[str] = "taylor"
    max_recovery_epochs: int = 2
    tolerance: float = 0.01
    max_masking_ratio: float = 0.95
    constant_step: bool = False
    pruning_schedule: str = "fixed"
    first_pruning_step: float = 0.5
    lr_factor: float = 1.0
    score_batches: int | None = 16
    last_task: bool = False
    forward_transfer: bool = True
    finish: bool = True
    compiled: bool = False

    def __post_init__(self) -> None:
        validate.integer(self.max_epochs, "max_epochs", minimum=1)
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


MODELS = ("mlp", "convnet", "resnet18", "resnet34", "resnet50", "resnet101")
IMPORT = "import:"  # "import:package.module:factory": a user's own network
IMAGEFOLDER = "imagefolder:"  # "imagefolder:DIR": class folders read from disk per item
TORCHVISION = "torchvision:"  # "torchvision:resnet18": any torchvision classifier, multi-head
OPTIMIZERS = ("adam", "adamw", "sgd")
CHECKPOINT_EVERY = ("pruning-step", "task", "never")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a run depends on; saved with every checkpoint (JSON-serializable)."""

    dataset: str = "embedded"
    data_root: str | None = None
    num_tasks: int | None = None
    limit_per_class: int | None = None
    model: str = "mlp"
    width: int | None = None
    layers: int = 2
    bn: bool = True
    dropout: float = 0.0
    method: str = "eidetic"
    method_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    eval_batch_size: int = 512
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    holdout: float = 0.0
    classes_per_task: int | None = None
    image_size: int | None = None
    augment: bool = False
    num_workers: int = 0
    task_order: str | None = None
    scenario: str = "task"
    cycles: int = 1
    router: bool = True
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: str = "pruning-step"
    progress: bool = True
    dist_timeout: float = DEFAULT_TIMEOUT_S
    threads: int | None = None

    def __post_init__(self) -> None:
        from .data import SEQUENCE_NAMES

        if isinstance(self.dataset, str) and self.dataset.startswith(IMAGEFOLDER):
            if not self.dataset.removeprefix(IMAGEFOLDER):
                raise ConfigError("imagefolder: needs a directory, e.g. imagefolder:data/tiny")
            if self.limit_per_class is not None:
                raise ConfigError("limit_per_class applies to the built-in datasets")
        else:
            validate.choice(self.dataset, "dataset", SEQUENCE_NAMES)
            for name in ("classes_per_task", "image_size"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{name} applies to imagefolder: datasets")
            if self.augment:
                raise ConfigError("augment applies to imagefolder: datasets (read per item)")
        for name in ("classes_per_task", "image_size"):
            if getattr(self, name) is not None:
                validate.integer(getattr(self, name), name, minimum=1)
        validate.integer(self.num_workers, "num_workers", minimum=0)
        if self.task_order is not None:
            parse_task_order(self.task_order)
        validate.choice(self.scenario, "scenario", SCENARIOS)
        if self.scenario != "task" and self.method in ("eidetic", "packnet", "progressive"):
            raise ConfigError(
                f"{self.method} keeps one head (or column) per task: it is task-incremental. "
                + (
                    "EideticNet's class-incremental score is its task router's (router=True)"
                    if self.method == "eidetic"
                    else f"Run {self.method} with scenario='task'"
                )
            )
        validate.boolean(self.augment, "augment")
        if isinstance(self.model, str) and self.model.startswith(TORCHVISION):
            torchvision_classifier(self.model.removeprefix(TORCHVISION))
        elif isinstance(self.model, str) and self.model.startswith(IMPORT):
            module, _, attribute = self.model.removeprefix(IMPORT).rpartition(":")
            if not module or not attribute:
                raise ConfigError(
                    f"model {self.model!r}: write import:package.module:factory (the factory "
                    "is called with num_classes=[...] and input_shape=(C, H, W))"
                )
        else:
            validate.choice(self.model, "model", MODELS)
        validate.choice(self.optimizer, "optimizer", OPTIMIZERS)
        validate.choice(self.method, "method", method_names())
        validate.choice(self.checkpoint_every, "checkpoint_every", CHECKPOINT_EVERY)
        for name in ("batch_size", "eval_batch_size", "cycles", "layers"):
            validate.integer(getattr(self, name), name, minimum=1)
        validate.integer(self.seed, "seed", minimum=0)
        if self.seed > validate.MAX_SEED:
            raise ConfigError(f"seed must be at most {validate.MAX_SEED}, got {self.seed}")
        for name in ("width", "num_tasks", "limit_per_class"):
            if getattr(self, name) is not None:
                validate.integer(getattr(self, name), name, minimum=1)
        validate.number(self.lr, "lr", low=0.0, low_open=True)
        validate.number(self.weight_decay, "weight_decay", low=0.0)
        validate.number(self.dropout, "dropout", low=0.0, high=1.0, high_open=True)
        validate.number(self.holdout, "holdout", low=0.0, high=1.0, high_open=True)
        validate.number(self.dist_timeout, "dist_timeout", low=0.0, low_open=True)
        if self.threads is not None:
            validate.integer(self.threads, "threads", minimum=1)
        if self.dropout and (self.model not in ("mlp", "convnet") or self.method == "progressive"):
            raise ConfigError("dropout is an option of the MLP and the ConvNet (not progressive)")
        for name in ("router", "progress", "bn"):
            validate.boolean(getattr(self, name), name)
        if not isinstance(self.method_options, dict):
            raise ConfigError(f"method_options must be a dict, got {self.method_options!r}")
        if self.method != "eidetic":
            from . import baselines

            baselines.create(self.method, **self.method_options)  # names and values checked
            if self.cycles > 1:
                raise ConfigError("revisiting tasks (cycles > 1) is an EideticNet feature")
            if self.method == "progressive" and self.model != "mlp":
                raise ConfigError(
                    "progressive networks are built from MLP columns: use model='mlp'"
                )
        elif self.method_options:
            raise ConfigError("method_options apply to baselines; eidetic is configured by train")
        if self.data_root is not None and not isinstance(self.data_root, str):
            raise ConfigError(f"data_root must be a path string, got {self.data_root!r}")
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(f"train must be a TrainConfig, got {self.train!r}")
        validate.device(self.device)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in d.get("train", {}).items()
        }
        return cls(**{**d, "train": TrainConfig(**fields)})


def method_names() -> tuple[str, ...]:
    """``eidetic`` and the baselines' names (``eidetic_func.baselines.METHODS``)."""
    from . import baselines

    return ("eidetic", *getattr(baselines, "METHODS", {}))


def parse_task_order(text: str) -> str | int | list[int]:
    """``"reverse"``, ``"random:SEED"`` (the seed) or ``"2,0,1"`` (a permutation)."""
    if not isinstance(text, str):
        raise ConfigError(f"task_order must be a string, got {text!r}")
    if text == "reverse":
        return text
    if text.startswith("random:"):
        seed = text.removeprefix("random:")
        if not seed.isdigit():
            raise ConfigError(f"task_order {text!r}: write random:SEED with an integer seed")
        return int(seed)
    try:
        order = [int(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(
            f"task_order {text!r}: write reverse, random:SEED or a permutation like 2,0,1"
        ) from None
    if sorted(order) != list(range(len(order))):
        raise ConfigError(f"task_order {text!r} is not a permutation of 0..{len(order) - 1}")
    return order


def torchvision_classifier(name: str) -> Callable[..., nn.Module]:
    """The builder of torchvision's classification model ``name``; ConfigError if none."""
    import torchvision.models

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        close = difflib.get_close_matches(str(name), names, n=3)
        raise ConfigError(
            f"torchvision has no classification model {name!r}"
            + (f" (similar: {', '.join(close)})" if close else "")
            + "; see torchvision.models.list_models()"
        )
    return torchvision.models.get_model_builder(name)


def as_list(value: Any) -> list[Any]:
    """``value`` as a list: sequences as they are, anything else as one item."""
    return list(value) if isinstance(value, list | tuple) else [value]
