"""What a run is (:class:`RunConfig`): data, network, method, optimizer, scenario and
operational settings. Frozen, validated on construction (the method too, through the
registry), JSON-serializable; saved with every checkpoint."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any

from torch import nn

from eidetic_func.core import validate
from eidetic_func.core.errors import ConfigError
from eidetic_func.data.scenario import SCENARIOS
from eidetic_func.data.sequences import SEQUENCE_NAMES
from eidetic_func.methods.eidetic import EideticNet
from eidetic_func.methods.protocol import Method, traits
from eidetic_func.methods.registry import create
from eidetic_func.ops.growth import GROW_POLICIES
from eidetic_func.training.config import TrainConfig, option
from eidetic_func.training.distributed import DEFAULT_TIMEOUT_S

MODELS = ("mlp", "convnet", "resnet18", "resnet34", "resnet50", "resnet101")
IMPORT = "import:"  # "import:package.module:factory": a user's own network
IMAGEFOLDER = "imagefolder:"  # "imagefolder:DIR": class folders read from disk per item
TORCHVISION = "torchvision:"  # "torchvision:resnet18": any torchvision classifier, multi-head
OPTIMIZERS = ("adam", "adamw", "sgd")
CHECKPOINT_EVERY = ("pruning-step", "task", "never")
NESTED = {"train": TrainConfig, "eidetic": EideticNet}
"""The fields of RunConfig that are configs of their own (their fields are flags too)."""
EIDETIC_SETTINGS = frozenset(f.name for f in dataclasses.fields(EideticNet)) - {"name"}
"""EideticNet's settings (once ``train``'s fields; configs saved then still load)."""
_GROWTH = frozenset({"grow", "grow_policy"})  # once ``train``'s fields, now the run's


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a run depends on; saved with every checkpoint (JSON-serializable)."""

    dataset: str = option(
        "embedded",
        f"task sequence: {', '.join(SEQUENCE_NAMES)} (embedded needs no download), or "
        "imagefolder:DIR (class folders read from disk: DIR/train/<class>, DIR/test/<class>, "
        "or one folder per task with train/ and test/ inside)",
        group="data",
        metavar="DATASET",
    )
    data_root: str | None = option(
        None,
        "directory with torchvision's dataset layout (e.g. DIR/MNIST/raw/*.gz)",
        group="data",
        metavar="DIR",
        none="none, enough for embedded and image folders",
    )
    num_tasks: int | None = option(
        None, "number of tasks", group="data", metavar="N", none="the dataset's"
    )
    limit_per_class: int | None = option(
        None,
        "keep only this many images per class (quick runs)",
        group="data",
        metavar="N",
        none="all",
    )
    model: str = option(
        "mlp",
        f"network: {', '.join(MODELS)}; torchvision:NAME for any torchvision classifier made "
        "multi-head (e.g. torchvision:resnet18; weights=None); or import:package.module:factory "
        "for your own (called with num_classes=[...] and input_shape=(C, H, W); topology traced)",
        group="model",
        metavar="MODEL",
    )
    width: int | None = option(
        None,
        "hidden width (MLP) or base channels (ConvNet, ResNet)",
        group="model",
        metavar="N",
        none="MLP 400, ConvNet 32, ResNet 64",
    )
    layers: int = option(
        2, "hidden layers (MLP) or convolutions per stage (ConvNet)", group="model"
    )
    bn: bool = option(True, "build the model with BatchNorm", group="model")
    dropout: float = option(0.0, "dropout after every hidden layer (MLP, ConvNet)", group="model")
    method: str = "eidetic"
    method_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    optimizer: str = option(
        "adam", "one optimizer for the whole sequence", group="training", choices=OPTIMIZERS
    )
    fused_optimizer: bool = option(
        False,
        "step Adam and AdamW with torch's fused kernel (one pass over the parameters on CPU "
        "and CUDA, faster than the foreach implementation used otherwise; equal "
        "to it up to float rounding, so results change in their last digits)",
        group="training",
    )
    lr: float = option(1e-3, "learning rate", group="training")
    weight_decay: float = option(0.0, "weight decay", group="training")
    batch_size: int = option(64, "training batch size", group="training")
    eval_batch_size: int = option(512, "evaluation batch size", group="training")
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eidetic: EideticNet = dataclasses.field(default_factory=EideticNet)
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
    holdout: float = option(
        0.0,
        "hold out this fraction of each task's training data and decide when to stop "
        "training and pruning by eval-mode accuracy on it (0: by the running training "
        "accuracy, the original's rule)",
        group="method",
    )
    classes_per_task: int | None = option(
        None,
        "imagefolder: classes per task (the sorted class folders, in groups)",
        group="data",
        metavar="N",
        none="one task per task folder",
    )
    image_size: int | None = option(
        None,
        "imagefolder: images are resized and center-cropped to this size",
        group="data",
        metavar="PIXELS",
        none="64",
    )
    augment: bool = option(
        False,
        "imagefolder: train on RandomResizedCrop + horizontal flips (the original's option)",
        group="data",
    )
    num_workers: int = option(
        0, "DataLoader worker processes that read data from disk", group="data"
    )
    task_order: str | None = option(
        None,
        "train the tasks in another order: reverse, random:SEED, or a permutation such as "
        "4,3,2,1,0",
        group="data",
        metavar="ORDER",
        none="the dataset's order",
    )
    scenario: str = option(
        "task",
        "task-incremental (one head per task, task id given), class-incremental (one head "
        "over all classes, no task id) or domain-incremental (one shared head); EideticNet, "
        "PackNet and progressive networks are task-incremental",
        group="data",
        choices=SCENARIOS,
    )
    cycles: int = option(
        1, "passes over the task sequence; >1 revisits tasks (cyclical)", group="method"
    )
    router: bool = option(
        True,
        "train the task router (class-incremental prediction) after the sequence",
        group="method",
    )
    seed: int = option(0, "one seed for everything", group="run")
    device: str = option("cpu", "cpu, cuda, cuda:1, ...", group="run")
    checkpoint_every: str = option(
        "pruning-step",
        "checkpoint after every pruning step, every task, or never",
        group="run",
        choices=CHECKPOINT_EVERY,
    )
    progress: bool = option(True, "progress bars", group="run")
    dist_timeout: float = option(
        DEFAULT_TIMEOUT_S,
        "with torchrun: how long a process waits for a stopped or hung peer before the run "
        "fails with an error naming the rank",
        group="run",
        metavar="SECONDS",
    )
    threads: int | None = option(
        None,
        "CPU threads for torch; two torch processes on one machine slow each other "
        "several-fold when both use every core, so give each a share, e.g. --threads 1 on 2 "
        "cores",
        group="run",
        metavar="N",
        none="torch's, shared among torchrun's local processes",
    )

    def __post_init__(self) -> None:
        self._check_growth()
        self._check_dataset()
        for name in ("classes_per_task", "image_size"):
            if getattr(self, name) is not None:
                validate.integer(getattr(self, name), name, minimum=1)
        validate.integer(self.num_workers, "num_workers", minimum=0)
        if self.task_order is not None:
            parse_task_order(self.task_order)
        validate.choice(self.scenario, "scenario", SCENARIOS)
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
        for name in ("router", "progress", "bn"):
            validate.boolean(getattr(self, name), name)
        if not isinstance(self.method_options, dict):
            raise ConfigError(f"method_options must be a dict, got {self.method_options!r}")
        for name, cls in NESTED.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be a {cls.__name__}, got {getattr(self, name)!r}")
        self._check_method()
        if self.data_root is not None and not isinstance(self.data_root, str):
            raise ConfigError(f"data_root must be a path string, got {self.data_root!r}")
        validate.device(self.device)

    def _check_dataset(self) -> None:
        from eidetic_func.data.sequences import SEQUENCE_NAMES

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

    def _check_growth(self) -> None:
        validate.integer(self.grow, "grow", minimum=0)
        validate.choice(self.grow_policy, "grow_policy", GROW_POLICIES)
        if self.grow and self.grow_policy == "refill":
            raise ConfigError(
                f"grow={self.grow} has no effect with grow_policy='refill' (refill adds what "
                "each unit lacks); drop --grow, or use grow_policy='when-full'"
            )

    @property
    def grows(self) -> bool:
        """Whether the run grows its network between tasks."""
        return self.grow > 0 or self.grow_policy == "refill"

    def build_method(self) -> Method:
        """The method ``method`` names (chains like ``"ewc+er"`` too), with its options;
        EideticNet (alone or a member) with the settings of ``eidetic``."""
        return create(self.method, seed=self.seed, bases=(self.eidetic,), **self.method_options)

    def _check_method(self) -> None:
        """The method exists, takes the options, and fits the scenario, model and cycles."""
        if not isinstance(self.method_options, dict):
            raise ConfigError(f"method_options must be a dict, got {self.method_options!r}")
        settings = sorted(
            k for k in self.method_options if k.rpartition(".")[2] in EIDETIC_SETTINGS
        )
        if settings:
            flags = ", ".join("--" + k.rpartition(".")[2].replace("_", "-") for k in settings)
            raise ConfigError(
                f"method options {settings} are EideticNet's settings: the run's eidetic field "
                f"holds them (RunConfig(eidetic=EideticNet(...)); flags {flags})"
            )
        kind = traits(self.build_method())
        if self.scenario != "task" and kind.task_incremental:
            raise ConfigError(
                f"{self.method} keeps one head (or column) per task: it is task-incremental. "
                + (
                    "Its class-incremental score is its task router's (router=True)"
                    if kind.router
                    else f"Run {self.method} with scenario='task'"
                )
            )
        if self.grows and not kind.grows:
            method = self.build_method()
            members = getattr(method, "methods", (method,))
            refusing = [m.name for m in members if not traits(m).grows]
            raise ConfigError(
                f"{self.method} cannot grow the network (--grow, --grow-policy refill): "
                f"growth is implemented for EideticNet, and {' and '.join(refusing)} "
                f"{'does' if len(refusing) == 1 else 'do'} not support it"
            )
        if self.cycles > 1 and not kind.revisits:
            raise ConfigError(f"{self.method} cannot revisit finished tasks: use cycles=1")
        if kind.network == "progressive" and self.model != "mlp":
            raise ConfigError("progressive networks are built from MLP columns: use model='mlp'")
        if self.dropout and (self.model not in ("mlp", "convnet") or kind.network is not None):
            raise ConfigError("dropout is an option of the MLP and the ConvNet (not progressive)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """The inverse of :meth:`to_dict`; also reads the layout saved before EideticNet's
        settings left ``train`` (``train.pruning_step`` → ``eidetic.pruning_step``,
        ``train.grow`` → ``grow``, ...)."""
        d = _current_layout(d)
        nested = {
            name: kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in d[name].items()})
            for name, kind in NESTED.items()
            if name in d
        }
        return cls(**{**d, **nested})


def _current_layout(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with the fields an old layout kept in ``train`` at their place now (a run
    saved with ``train.last_task`` set pruned no task: no place can hold that)."""
    train = dict(d.get("train", {}))
    if not set(train) & (EIDETIC_SETTINGS | _GROWTH | {"last_task"}):
        return d
    if train.pop("last_task", False):
        raise ConfigError("this run was saved with train.last_task=True, which no longer exists")
    eidetic = {k: train.pop(k) for k in list(train) if k in EIDETIC_SETTINGS}
    run = {k: train.pop(k) for k in list(train) if k in _GROWTH}
    return {**d, **run, "train": train, "eidetic": {**d.get("eidetic", {}), **eidetic}}


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
