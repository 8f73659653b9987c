"""Run a whole task sequence: train every task, evaluate the accuracy matrix, checkpoint.

:func:`run` is what the ``eidetic-func run`` command and the benchmark presets call. It
builds the data, model and optimizer from a :class:`RunConfig`, trains the tasks in order
(several passes revisit tasks: the cyclical experiment), evaluates every task after every
visit (the accuracy matrix), optionally trains a task router for class-incremental
prediction, and checkpoints after every training epoch, kept pruning step and task so an
interrupted run resumes where it stopped (:func:`run` with ``resume=True``).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from eidetic_func.core.errors import CheckpointError, ConfigError, EideticError
from eidetic_func.core.state import EideticState, declared_topology, with_topology
from eidetic_func.core.topology import Topology
from eidetic_func.core.types import Record
from eidetic_func.data import loading as data_module
from eidetic_func.data.scenario import SharedHead, head_sizes, scenario_sequence
from eidetic_func.data.task_split import image_folder
from eidetic_func.io.checkpoint import Checkpoint, load, save
from eidetic_func.methods.protocol import Method, state_bytes, traits
from eidetic_func.methods.registry import decode_state, encode_state
from eidetic_func.nn.acceptance import check_network
from eidetic_func.nn.init import init
from eidetic_func.nn.multihead import MultiHead, multihead
from eidetic_func.nn.traced_topology import trace_topology
from eidetic_func.ops.capacity import capacity
from eidetic_func.ops.forward import forward
from eidetic_func.ops.growth import grow, growth_plan, regrow
from eidetic_func.runner import rundir
from eidetic_func.runner.config import (
    IMAGEFOLDER,
    IMPORT,
    TORCHVISION,
    RunConfig,
    parse_task_order,
    torchvision_classifier,
)
from eidetic_func.runner.task import CheckpointCallback, train_task
from eidetic_func.training import metrics
from eidetic_func.training.config import grows
from eidetic_func.training.distributed import Parallel, Single, from_environment
from eidetic_func.training.loop import TaskProgress

CHECKPOINT_FILE = "checkpoint.safetensors"


@dataclasses.dataclass
class RunResult:
    """What a run measured. ``matrix[i][j]``: accuracy on task ``j`` after visit ``i``."""

    config: RunConfig
    task_names: list[str]
    visits: list[int]
    matrix: list[list[float]]
    after_finish: dict[int, list[float]]
    final: list[float]
    summary: dict[str, Any]
    capacity: dict[str, Any] | None
    extra_memory_bytes: int
    router: dict[str, float] | None
    history: list[dict[str, Any]]
    seconds: float
    state: EideticState = dataclasses.field(repr=False)
    parallel: dict[str, Any] | None = None
    is_main: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "task_names": self.task_names,
            "visits": self.visits,
            "accuracy_matrix": self.matrix,
            "accuracy_after_finish": {str(k): v for k, v in self.after_finish.items()},
            "final_accuracy": self.final,
            "summary": self.summary,
            "capacity": self.capacity,
            "extra_memory_bytes": self.extra_memory_bytes,
            "router": self.router,
            "parallel": self.parallel,
            "seconds": self.seconds,
        }


def build_model(config: RunConfig, sequence: data_module.TaskSequence) -> nn.Module:
    """The network ``config.model`` for ``sequence``: one head per task, plus the router's;
    in the class- and domain-incremental scenarios one head, shared by every task."""
    heads = head_sizes(sequence, config.scenario) + ([len(sequence)] if uses_router(config) else [])
    network = _network(config, heads, sequence.input_shape)
    return network if config.scenario == "task" else SharedHead(network, len(sequence))


def _network(config: RunConfig, heads: list[int], input_shape: tuple[int, ...]) -> nn.Module:
    """``config.model`` with the given head sizes, for inputs of ``input_shape`` (C, H, W)."""
    from eidetic_func.models import MLP, ConvNet, ResNet

    channels = input_shape[0]
    if traits(config.build_method()).network == "progressive":
        from eidetic_func.models.progressive import ProgressiveMLP

        return ProgressiveMLP(
            math.prod(input_shape),
            heads,
            num_layers=config.layers,
            width=config.width or 100,
        )
    if config.model.startswith(IMPORT):
        return _import_model(config.model.removeprefix(IMPORT), heads, input_shape)
    if config.model.startswith(TORCHVISION):
        backbone = torchvision_classifier(config.model.removeprefix(TORCHVISION))(weights=None)
        return multihead(backbone, heads, input_shape=input_shape)
    if config.model == "mlp":
        return MLP(
            math.prod(input_shape),
            heads,
            num_layers=config.layers,
            width=config.width or 400,
            dropout=config.dropout,
            bn=config.bn,
        )
    if config.model == "convnet":
        return ConvNet(
            channels,
            heads,
            num_layers=config.layers,
            width=config.width or 32,
            dropout=config.dropout,
            bn=config.bn,
        )
    blocks = {
        "resnet18": ([2, 2, 2, 2], 1),
        "resnet34": ([3, 4, 6, 3], 1),
        "resnet50": ([3, 4, 6, 3], 4),
        "resnet101": ([3, 4, 23, 3], 4),
    }[config.model]
    low_res = input_shape[1] <= 64
    return ResNet(
        channels,
        heads,
        n_blocks=blocks[0],
        expansion=blocks[1],
        width=config.width or 64,
        low_res=low_res,
        bn=config.bn,
    )


def _import_model(spec: str, heads: list[int], input_shape: tuple[int, ...]) -> nn.Module:
    """A user's network: ``package.module:factory`` called with the heads and input shape."""
    module_name, _, attribute = spec.rpartition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import the model factory {spec!r}: {e}") from e
    model = factory(num_classes=heads, input_shape=input_shape)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{spec} returned a {type(model).__name__}, not an nn.Module")
    return model


def model_topology(model: nn.Module, sequence: data_module.TaskSequence) -> Topology:
    """The model's declared topology (``model.topology()``), else one traced on a zero batch;
    either way the network passes :func:`eidetic_func.nn.acceptance.check_network` (a traced
    one inside the tracer)."""
    device = next(model.parameters()).device
    example = torch.zeros(2, *sequence.input_shape, device=device)
    declared = declared_topology(model)
    if declared is not None:
        if not isinstance(model, MultiHead):  # a MultiHead's topology() is traced: checked
            check_network(model, example)
        return declared
    return trace_topology(model, example)


def reorder(sequence: data_module.TaskSequence, task_order: str) -> data_module.TaskSequence:
    """``sequence`` with its tasks in ``task_order`` (see :func:`parse_task_order`).

    Tasks keep their names (their classes); ``index`` becomes the training position.
    """
    parsed, n = parse_task_order(task_order), len(sequence)
    if parsed == "reverse":
        order = list(range(n))[::-1]
    elif isinstance(parsed, int):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(parsed)).tolist()
    else:
        order = list(parsed)  # type: ignore[arg-type]
        if len(order) != n:
            raise ConfigError(f"task_order {task_order!r} orders {len(order)} tasks, not {n}")
    tasks = tuple(dataclasses.replace(sequence[t], index=i) for i, t in enumerate(order))
    return dataclasses.replace(sequence, tasks=tasks)


def load_run_sequence(config: RunConfig) -> data_module.TaskSequence:
    """``config``'s task sequence: a built-in one, or an image folder (``imagefolder:DIR``),
    in ``config.task_order``."""
    sequence = _load_sequence(config)
    if config.task_order is not None:
        sequence = reorder(sequence, config.task_order)
    return scenario_sequence(sequence, config.scenario)


def _load_sequence(config: RunConfig) -> data_module.TaskSequence:
    if not config.dataset.startswith(IMAGEFOLDER):
        return data_module.load_sequence(
            config.dataset,
            config.data_root,
            seed=config.seed,
            num_tasks=config.num_tasks,
            limit_per_class=config.limit_per_class,
        )
    sequence = image_folder(
        config.dataset.removeprefix(IMAGEFOLDER),
        classes_per_task=config.classes_per_task,
        image_size=config.image_size or 64,
        augment=config.augment,
    )
    if config.num_tasks is not None:
        if config.num_tasks > len(sequence):
            raise ConfigError(f"num_tasks={config.num_tasks}, but the folder makes {len(sequence)}")
        sequence = dataclasses.replace(sequence, tasks=sequence.tasks[: config.num_tasks])
    return sequence


def uses_router(config: RunConfig) -> bool:
    """A task router is trained when asked and the method freezes what it is built on."""
    return config.router and traits(config.build_method()).router


def build_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The run's one optimizer over ``model``'s parameters.

    Adam and AdamW use torch's fused kernel when ``config.fused_optimizer`` and every
    parameter is on CPU or CUDA. SGD never does: torch's fused SGD with momentum fails once
    a tensor (a later task's head) gets its first gradient after the others.
    """
    params = list(model.parameters())
    options: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
    if (
        config.fused_optimizer
        and config.optimizer in ("adam", "adamw")
        and all(p.device.type in ("cpu", "cuda") for p in params)
    ):
        options["fused"] = True
    if config.optimizer == "adam":
        return torch.optim.Adam(params, **options)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, **options)
    return torch.optim.SGD(params, momentum=0.9, **options)


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """Where a run is: what :func:`run` folds over the visits, and what a checkpoint holds
    (with the optimizer's state and the generators'). Immutable."""

    state: EideticState
    mstate: Any = None
    visit: int = 0
    progress: TaskProgress | None = None  # mid-visit: where the visit's task is
    matrix: tuple[tuple[float, ...], ...] = ()
    after_finish: dict[int, tuple[float, ...]] = dataclasses.field(default_factory=dict)
    history: tuple[Record, ...] = ()
    router: dict[str, float] | None = None
    seconds: float = 0.0

    def replace(self, **changes: Any) -> RunRecord:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class SavedRun:
    """A run's checkpoint, read and verified once: its config and contents."""

    config: RunConfig
    checkpoint: Checkpoint
    stamp: tuple[int, int, int] = (0, 0, 0)  # the file's inode, size and mtime when read

    @property
    def world_size(self) -> int:
        return int(self.checkpoint.meta.get("world_size", 1))

    def is_current(self, path: Path) -> bool:
        """``path`` still holds the file that was read (no run replaced it since)."""
        try:
            return _stamp(path) == self.stamp
        except OSError:
            return False


def _stamp(path: Path) -> tuple[int, int, int]:
    info = os.stat(path)
    return info.st_ino, info.st_size, info.st_mtime_ns


@dataclasses.dataclass(frozen=True)
class _Setup:
    """What stays fixed during a run: data, network, method, optimizer, generators."""

    config: RunConfig
    sequence: data_module.TaskSequence
    model: nn.Module
    method: Method
    topology: Topology | None
    optimizer: torch.optim.Optimizer
    generators: list[torch.Generator]  # one per task's data order, and the router's
    core: torch.Generator  # pruning and recycling
    loaders: list[data_module.TaskLoaders]
    trains: list[Any]  # the training loaders (this process's shards under parallelism)
    schedule: list[int]  # the task of every visit
    parallel: Parallel | Single
    path: Path | None
    log: Callable[[str], None]
    started: float

    @property
    def router(self) -> bool:
        return self.config.router and traits(self.method).router


# settings a resumed run may change: they do not change what it computes
OPERATIONAL = ("progress", "device", "checkpoint_every", "dist_timeout", "threads")


def run(
    config: RunConfig | None,
    *,
    output_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    saved: SavedRun | None = None,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Train ``config``'s task sequence end to end and measure it.

    With ``output_dir``, the directory is held for this run (another run writing it is
    refused, see :mod:`eidetic_func.runner.rundir`), and a checkpoint is written there
    (atomically) after every finished task, and after every training epoch and kept pruning step unless
    ``checkpoint_every`` says otherwise. A fresh run refuses to replace an existing
    checkpoint unless ``overwrite``. ``resume=True`` continues from that checkpoint with
    its saved config: ``config=None`` takes it as it is; a given ``config`` must equal it
    except in the :data:`OPERATIONAL` settings (progress, device, checkpointing, timeout,
    threads; else
    :class:`CheckpointError` lists the differences), and the number of processes must be
    the one that wrote it. On CPU, a resumed run gives exactly the results of an
    uninterrupted one.
    """
    if output_dir is None or not is_main_process():
        return _run(config, output_dir, resume=resume, saved=saved, log=log)
    with rundir.hold(
        output_dir, checkpoint=CHECKPOINT_FILE, resume=resume, overwrite=overwrite, log=log
    ):
        return _run(config, output_dir, resume=resume, saved=saved, log=log)


def cpu_threads(threads: int | None) -> int:
    """CPU threads for this process: ``threads``, else torch's default divided among the
    processes ``torchrun`` started on this machine (so they do not oversubscribe the cores)."""
    if threads is not None:
        return threads
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, torch.get_num_threads() // max(local, 1))


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` launch (or a plain process): the one that writes files."""
    return os.environ.get("RANK", "0") == "0"


def saved_run(path: Path, *, device: str | None = None) -> SavedRun:
    """The run checkpointed at ``path``, read and verified; CheckpointError if there is
    none, or the file holds something else (a state saved with ``ef.save``).

    ``device`` replaces the saved device (a CUDA run may be resumed on another machine)."""
    try:
        stamp = _stamp(path)
    except FileNotFoundError:
        raise CheckpointError(f"nothing to resume: {path} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"nothing to resume: cannot read {path}: {e.strerror}") from e
    checkpoint = load(path)
    meta = checkpoint.meta
    if (
        not isinstance(meta, dict)
        or not isinstance(meta.get("config"), dict)
        or "visit" not in meta
    ):
        raise CheckpointError(
            f"{path} is not the checkpoint of a run (it has no run configuration; a state "
            "saved with ef.save is loaded with ef.load): nothing to resume"
        )
    saved = dict(meta["config"])
    if device is not None:
        saved["device"] = device
    try:
        return SavedRun(RunConfig.from_dict(saved), checkpoint, stamp)
    except (TypeError, ValueError, EideticError) as e:
        raise CheckpointError(f"{path}: the saved run configuration is not valid here: {e}") from e


def config_conflicts(given: RunConfig, saved: RunConfig) -> list[str]:
    """``"field: given X, saved Y"`` for every setting (``train.*`` too) that differs,
    except the operational ones a resumed run may change."""
    a, b = _flat(given.to_dict()), _flat(saved.to_dict())
    return [
        f"{k}: given {a.get(k)!r}, saved {b.get(k)!r}"
        for k in sorted(a.keys() | b.keys())
        if k not in OPERATIONAL and a.get(k) != b.get(k)
    ]


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k == "train":
            out.update(_flat(v, f"{k}."))
        else:
            out[prefix + k] = list(v) if isinstance(v, tuple) else v
    return out


def _run(
    config: RunConfig | None,
    output_dir: str | Path | None,
    *,
    resume: bool,
    saved: SavedRun | None,
    log: Callable[[str], None],
) -> RunResult:
    started = time.perf_counter()
    path = Path(output_dir) / CHECKPOINT_FILE if output_dir is not None else None
    if resume:
        if path is None:
            raise CheckpointError("nothing to resume: no output directory was given")
        if saved is None or not saved.is_current(path):  # read before the run held the dir
            saved = saved_run(path, device=None if config is None else config.device)
        config = _resumed_config(config, saved, path)
    if config is None:
        raise ConfigError("config is required unless resuming (resume=True)")
    setup = _setup(config, path, log, started, saved)
    if saved is None:
        record = _first_record(setup)
    else:
        setup, record = _restore(setup, saved)
    while record.visit < len(setup.schedule):
        setup, record = _grow(setup, record)
        record = _visit(setup, record)
    if setup.router and record.router is None:
        setup, record = _grow(setup, record)
        record = _route(setup, record)
    return _result(setup, record)


def _resumed_config(given: RunConfig | None, saved: SavedRun, path: Path) -> RunConfig:
    """The saved config, with the operational settings ``given`` changes."""
    if given is None:
        return saved.config
    conflicts = config_conflicts(given, saved.config)
    if conflicts:
        raise CheckpointError(
            f"the run in {path.parent} was started with other settings; resume it "
            "without them (or start a new run elsewhere):\n  " + "\n  ".join(conflicts)
        )
    return dataclasses.replace(saved.config, **{k: getattr(given, k) for k in OPERATIONAL})


def _setup(
    config: RunConfig,
    path: Path | None,
    log: Callable[[str], None],
    started: float,
    saved: SavedRun | None,
) -> _Setup:
    """Data, network, method, optimizer and generators of ``config`` (seeded)."""
    device = torch.device(config.device)
    parallel = from_environment(device, timeout_s=config.dist_timeout)
    if device.type == "cuda" and parallel.world_size > 1:
        device = torch.device("cuda", torch.cuda.current_device())  # this process's GPU
    log = log if parallel.is_main else _silent
    torch.set_num_threads(cpu_threads(config.threads))
    world_size = parallel.world_size
    if saved is not None and world_size != saved.world_size:
        raise CheckpointError(
            f"the run in {saved.checkpoint.source} was checkpointed by {saved.world_size} "
            f"process(es); resume it with {saved.world_size}, not {world_size} (the data "
            "shards differ)"
        )
    torch.manual_seed(config.seed)
    sequence = load_run_sequence(config)
    try:
        model = build_model(config, sequence).to(device)
    except (RuntimeError, MemoryError) as e:  # e.g. a width whose weights cannot be allocated
        raise ConfigError(
            f"cannot build the {config.model} (width {config.width}) on {device}: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    method = config.build_method()
    if world_size > 1 and not traits(method).data_parallel:
        raise ConfigError(f"{method.name} does not support data parallelism; run one process")
    # every network but progressive columns has a prune topology (checked once, by init)
    topology = None if traits(method).network else model_topology(model, sequence)
    optimizer = build_optimizer(config, model)
    generators = [
        torch.Generator().manual_seed(config.seed * 1000 + t) for t in range(len(sequence) + 1)
    ]
    core = torch.Generator().manual_seed(config.seed + 1)
    # with a holdout, a stratified split of each task's training data decides when to stop
    loaders = [
        data_module.loaders(
            task,
            config.batch_size,
            generator=generators[t],
            eval_batch_size=config.eval_batch_size,
            val_fraction=config.holdout,
            seed=config.seed * 1000 + t,
            num_workers=config.num_workers,
        )
        for t, task in enumerate(sequence)
    ]
    # with data parallelism each process trains on its shard of every task
    trains = [
        parallel.shard_of(lo.train, config.batch_size, seed=config.seed * 1000 + t)
        for t, lo in enumerate(loaders)
    ]
    schedule = [t for _ in range(config.cycles) for t in range(len(sequence))]
    return _Setup(
        config=config,
        sequence=sequence,
        model=model,
        method=method,
        topology=topology,
        optimizer=optimizer,
        generators=generators,
        core=core,
        loaders=loaders,
        trains=trains,
        schedule=schedule,
        parallel=parallel,
        path=path,
        log=log,
        started=started,
    )


def _first_record(setup: _Setup) -> RunRecord:
    state = init(setup.model, topology=setup.topology)
    return RunRecord(state=state, mstate=setup.method.init(setup.model, state))


def _grow(setup: _Setup, record: RunRecord) -> tuple[_Setup, RunRecord]:
    """Before a task begins: the units the growth policy names get their new neurons.

    The network, its topology and the optimizer (built afresh for the new parameters) are
    replaced; a task resumed mid-way grew already (its state records it).
    """
    train = setup.config.train
    if not grows(train) or record.progress is not None or record.state.topology is None:
        return setup, record
    plan = growth_plan(record.state, policy=train.grow_policy, neurons=train.grow)
    if not plan:
        return setup, record
    model, state = setup.model, record.state
    for name, neurons in plan.items():
        model, state = grow(
            model,
            state,
            unit=name,
            neurons=neurons,
            generator=setup.core,
            forward_transfer=train.forward_transfer,
        )
    added = ", ".join(f"{name} +{n}" for name, n in plan.items())
    setup.log(f"  grew ({train.grow_policy}): {added}")
    return _with_network(setup, model, state.topology), record.replace(state=state)


def _with_network(setup: _Setup, model: nn.Module, topology: Topology | None) -> _Setup:
    optimizer = build_optimizer(setup.config, model)
    return dataclasses.replace(setup, model=model, topology=topology, optimizer=optimizer)


def _visit(setup: _Setup, record: RunRecord) -> RunRecord:
    """Train the task of visit ``record.visit`` (or finish it, resumed) and evaluate all."""
    config, task = setup.config, setup.schedule[record.visit]
    visit = f"visit {record.visit + 1}/{len(setup.schedule)}"
    setup.log(f"task {task} ({setup.sequence[task].name}), {visit}")

    state, mstate, history = _train(
        setup,
        record,
        setup.trains[task],
        task=task,
        stop_loader=setup.loaders[task].val,
        # the router, when trained, is the last task and the only unpruned one (as in the
        # original's experiments): every real task leaves its capacity to it
        last=record.visit == len(setup.schedule) - 1 and not setup.router,
        checkpoint=_mid_task_checkpoint(setup, record),
    )
    tests = [lo.test for lo in setup.loaders]
    row = tuple(metrics.accuracy_row(setup.model, state, tests, range(len(setup.sequence))))
    setup.log("  accuracy " + " ".join(f"{a:.4f}" for a in row))
    record = record.replace(
        state=state,
        mstate=mstate,
        visit=record.visit + 1,
        progress=None,
        matrix=(*record.matrix, row),
        after_finish={**record.after_finish, task: (*record.after_finish.get(task, ()), row[task])},
        history=(*record.history, *history),
    )
    if config.checkpoint_every != "never":
        _save(setup, record)
    return record


def _mid_task_checkpoint(setup: _Setup, record: RunRecord) -> CheckpointCallback:
    """Save the run mid-task (after every epoch and pruning step, when so configured), so
    ``--resume`` continues the task where it was rather than from its start."""

    def checkpoint(s: EideticState, ms: Any, p: TaskProgress, h: list[Record]) -> None:
        if setup.config.checkpoint_every == "pruning-step" and p.phase != "done":
            mid = record.replace(state=s, mstate=ms, progress=p, history=(*record.history, *h))
            _save(setup, mid)

    return checkpoint


def _train(
    setup: _Setup,
    record: RunRecord,
    loader: Any,
    *,
    task: int,
    stop_loader: Any,
    last: bool,
    checkpoint: CheckpointCallback | None = None,
) -> tuple[EideticState, Any, list[Record]]:
    """Train ``task`` on ``loader`` from ``record`` with the run's method and settings."""
    return train_task(
        setup.model,
        record.state,
        loader,
        method=setup.method,
        mstate=record.mstate,
        task=task,
        optimizer=setup.optimizer,
        generator=setup.core,
        config=setup.config.train,
        stop_loader=stop_loader,
        last=last,
        progress=setup.config.progress,
        checkpoint=checkpoint,
        resume=record.progress,
        parallel=setup.parallel,
    )


def _route(setup: _Setup, record: RunRecord) -> RunRecord:
    """Train the task router and measure class-incremental accuracy with it."""
    state, mstate, history = _train_router(setup, record)
    tests = [lo.test for lo in setup.loaders]
    router = route_and_classify(
        setup.model, state, setup.sequence, tests, router=len(setup.sequence)
    )
    record = record.replace(
        state=state,
        mstate=mstate,
        router=router,
        progress=None,
        history=(*record.history, *history),
    )
    if setup.config.checkpoint_every != "never":
        _save(setup, record)
    return record


def _save(setup: _Setup, record: RunRecord) -> None:
    """The one place a run is checkpointed (by the main process, with an output dir)."""
    if setup.path is None or not setup.parallel.is_main:
        return
    meta = {
        "config": setup.config.to_dict(),
        "world_size": setup.parallel.world_size,
        "visit": record.visit,
        "progress": None if record.progress is None else record.progress.to_dict(),
        "matrix": [list(row) for row in record.matrix],
        "after_finish": {str(k): list(v) for k, v in record.after_finish.items()},
        "router": record.router,
        "seconds": record.seconds + time.perf_counter() - setup.started,
    }
    extra = {
        "data": [g.get_state() for g in setup.generators],
        "core": setup.core.get_state(),
        "epochs": [getattr(loader, "epoch", 0) for loader in setup.trains],
        "method": encode_state(record.mstate),
    }
    save(
        setup.path,
        record.state,
        optimizer=setup.optimizer,
        extra=extra,
        history=list(record.history),
        meta=meta,
    )


def _restore(setup: _Setup, saved: SavedRun) -> tuple[_Setup, RunRecord]:
    """The record a checkpoint holds; the network regrown, the optimizer, generators and
    loaders set as saved."""
    ckpt = saved.checkpoint
    if ckpt.state.growth:
        model, topology = regrow(setup.model, ckpt.state.growth, topology=setup.topology)
        setup = _with_network(setup, model, topology)
    ckpt.fit(model=setup.model, optimizer=setup.optimizer)
    ckpt.restore_rng()
    for g, s in zip(setup.generators, ckpt.extra["data"]):
        g.set_state(s)
    setup.core.set_state(ckpt.extra["core"])
    for loader, epoch in zip(setup.trains, ckpt.extra["epochs"]):
        if hasattr(loader, "epoch"):
            loader.epoch = epoch
    meta = ckpt.meta
    record = RunRecord(
        state=ckpt.state if setup.topology is None else with_topology(ckpt.state, setup.topology),
        mstate=decode_state(ckpt.extra.get("method")),
        visit=int(meta["visit"]),
        progress=None if meta["progress"] is None else TaskProgress(**meta["progress"]),
        matrix=tuple(tuple(r) for r in meta["matrix"]),
        after_finish={int(k): tuple(v) for k, v in meta["after_finish"].items()},
        history=tuple(ckpt.history),
        router=meta["router"],
        seconds=float(meta["seconds"]),
    )
    total = len(setup.schedule)
    if record.visit < total:
        setup.log(f"resuming at visit {record.visit + 1}/{total}")
    elif setup.router and record.router is None:
        setup.log(f"resuming: all {total} visits done, training the task router")
    else:
        setup.log(f"the run is complete ({total}/{total} visits): nothing to train")
    return setup, record


def _result(setup: _Setup, record: RunRecord) -> RunResult:
    parallel_info = None
    if setup.parallel.world_size > 1:
        parallel_info = {
            "world_size": setup.parallel.world_size,
            "state_digest": setup.parallel.check_identical(record.state, "at the end of the run"),
        }
    num_tasks = len(setup.sequence)
    matrix = [list(row) for row in record.matrix]
    return RunResult(
        config=setup.config,
        task_names=[t.name for t in setup.sequence],
        visits=setup.schedule,
        matrix=matrix,
        after_finish={k: list(v) for k, v in record.after_finish.items()},
        final=matrix[-1],
        summary=metrics.summarize(matrix[:num_tasks]).to_dict(),
        capacity=None if record.state.topology is None else capacity(record.state).to_dict(),
        extra_memory_bytes=_extra_memory(record.state, record.mstate),
        router=record.router,
        history=list(record.history),
        seconds=record.seconds + time.perf_counter() - setup.started,
        state=record.state,
        parallel=parallel_info,
        is_main=setup.parallel.is_main,
    )


def _extra_memory(state: EideticState, mstate: Any) -> int:
    """Bytes a method keeps beyond the network: its state, and the ownership masks of
    methods that freeze by ownership (EideticNet, PackNet, progressive networks)."""
    masks = sum(t.numel() * t.element_size() for t in [*state.owner.values(), *state.keep.values()])
    return state_bytes(mstate) + (masks if state.finished else 0)


def _silent(message: str) -> None:
    """The log of processes other than the main one."""


def task_id_dataset(datasets: list[data_module.ImageDataset]) -> Dataset[tuple[Tensor, Tensor]]:
    """The union of ``datasets`` labelled with their position (the router's targets).

    Batched like the tasks' own data when every part views the same images the same way
    (split datasets); otherwise item by item.
    """
    first = datasets[0]
    same_view = all(isinstance(d, data_module.ImageDataset) for d in datasets) and all(
        d.images is first.images
        and (d.mean, d.std) == (first.mean, first.std)
        and d.permutation is None
        and first.permutation is None
        for d in datasets
    )
    ids = torch.cat([torch.full((len(d),), t, dtype=torch.int64) for t, d in enumerate(datasets)])
    if same_view:
        index = torch.cat([d.index for d in datasets])
        return data_module.ImageDataset(
            first.images, ids, index=index, mean=first.mean, std=first.std
        )
    return ConcatDataset([_TaskIds(d, t) for t, d in enumerate(datasets)])


class _TaskIds(Dataset[tuple[Tensor, Tensor]]):
    """A task's images labelled with the task id."""

    def __init__(self, dataset: data_module.ImageDataset, task: int) -> None:
        self.dataset, self.task = dataset, task

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.dataset[i][0], torch.tensor(self.task)


def _train_router(setup: _Setup, record: RunRecord) -> tuple[EideticState, Any, list[Record]]:
    """Train the extra head that predicts the task id, on every task's training data.

    It is the last task: every real task was pruned, and it takes the capacity they left
    (unpruned); it needs the data of all tasks at the end (a relaxation, as the original's
    task classifier). With a holdout, it stops on the union of the tasks' holdouts.
    """
    config, loaders = setup.config, setup.loaders
    router = len(loaders)
    union = task_id_dataset([lo.train.dataset for lo in loaders])  # type: ignore[misc]
    # a last batch of one sample cannot be batch-normalized in training mode
    batches = DataLoader(
        union,
        config.batch_size,
        shuffle=True,
        generator=setup.generators[router],
        drop_last=len(union) % config.batch_size == 1,  # type: ignore[arg-type]
    )
    loader = setup.parallel.shard_of(batches, config.batch_size, seed=config.seed * 1000 + router)
    stop = None
    if config.holdout:
        held = task_id_dataset([lo.val.dataset for lo in loaders])  # type: ignore[union-attr, misc]
        stop = DataLoader(held, config.eval_batch_size)
    return _train(
        setup,
        record,
        loader,
        task=router,
        stop_loader=stop,
        last=True,
        checkpoint=_mid_task_checkpoint(setup, record),
    )


def route_and_classify(
    model: nn.Module,
    state: EideticState,
    sequence: data_module.TaskSequence,
    tests: list[DataLoader[tuple[Tensor, Tensor]]],
    *,
    router: int,
) -> dict[str, float]:
    """Class-incremental accuracy: the router head picks the task, that head the class.

    Returns the router's task accuracy, the class-incremental accuracy over all tasks'
    test sets (original class ids), and the task-incremental (oracle task id) accuracy.
    """
    device = next(iter(state.params.values())).device
    hits = correct = oracle = total = 0
    with torch.no_grad():
        for t, test in enumerate(tests):
            truth = torch.tensor(sequence[t].classes)
            for x, y in test:
                x = x.to(device)
                chosen = forward(model, state, x, task=router, train=False)[0].argmax(1).cpu()
                heads = {
                    k: forward(model, state, x, task=k, train=False)[0].argmax(1).cpu()
                    for k in {*chosen.tolist(), t}
                }
                predicted = torch.empty_like(y)
                for k in set(chosen.tolist()):
                    rows = chosen == k
                    predicted[rows] = torch.tensor(sequence[k].classes)[heads[k][rows]]
                hits += int((chosen == t).sum())
                correct += int((predicted == truth[y]).sum())
                oracle += int((heads[t] == y).sum())
                total += len(y)
    return {
        "task_accuracy": hits / total,
        "class_incremental_accuracy": correct / total,
        "oracle_task_incremental_accuracy": oracle / total,
    }


def dumps(result: RunResult) -> str:
    return json.dumps(result.to_dict(), indent=2)
