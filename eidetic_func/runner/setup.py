"""What stays fixed during a run (:class:`RunSetup`), built once from its config.

:func:`prepare` seeds the global RNG with ``config.seed`` and builds, in this order (the
order of random draws depends on it), the task sequence, the network, its topology, the
optimizer, the generators and the loaders. The method is built once, here. In-memory data
are moved once onto the run's device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eidetic_func import data as data_module
from eidetic_func.core.errors import ConfigError
from eidetic_func.core.topology import Topology
from eidetic_func.methods.protocol import Method, traits
from eidetic_func.runner import build
from eidetic_func.runner.config import RunConfig
from eidetic_func.runner.environment import Process
from eidetic_func.runner.record import Sampling
from eidetic_func.training.distributed import Parallel, Single


@dataclasses.dataclass(frozen=True)
class RunSetup:
    """What stays fixed during a run: data, network, method, optimizer, generators (the
    network, its topology and the optimizer change only when the network grows)."""

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
    path: Path | None  # the run's checkpoint file
    log: Callable[[str], None]
    started: float  # time.perf_counter() when the run started

    @property
    def router(self) -> bool:
        """Whether the run trains a task router (after its last visit)."""
        return build.uses_router(self.config, self.method)

    def sampling(self) -> Sampling:
        """Where the generators and the training loaders are now (for a checkpoint)."""
        return Sampling(
            data=tuple(g.get_state() for g in self.generators),
            core=self.core.get_state(),
            epochs=tuple(getattr(loader, "epoch", 0) for loader in self.trains),
        )

    def set_sampling(self, sampling: Sampling) -> None:
        """Put the generators and the training loaders where ``sampling`` says (resume)."""
        for g, s in zip(self.generators, sampling.data):
            g.set_state(s)
        self.core.set_state(sampling.core)
        for loader, epoch in zip(self.trains, sampling.epochs):
            if hasattr(loader, "epoch"):
                loader.epoch = epoch

    def with_network(self, model: nn.Module, topology: Topology | None) -> RunSetup:
        """This setup with a new (grown) network, and an optimizer built afresh for it."""
        optimizer = build.build_optimizer(self.config, model)
        return dataclasses.replace(self, model=model, topology=topology, optimizer=optimizer)


def prepare(config: RunConfig, process: Process, path: Path | None, started: float) -> RunSetup:
    """Data, network, method, optimizer and generators of ``config`` (seeded)."""
    method = config.build_method()
    if process.parallel.world_size > 1 and not traits(method).data_parallel:
        raise ConfigError(f"{method.name} does not support data parallelism; run one process")
    torch.manual_seed(config.seed)
    sequence = _placed(build.load_run_sequence(config), config, process.device)
    model = _model(config, sequence, method, process.device)
    # every network but progressive columns has a prune topology (checked once, by init)
    topology = None if traits(method).network else build.model_topology(model, sequence)
    optimizer = build.build_optimizer(config, model)
    generators = [
        torch.Generator().manual_seed(config.seed * 1000 + t) for t in range(len(sequence) + 1)
    ]
    core = torch.Generator().manual_seed(config.seed + 1)
    loaders = _loaders(config, sequence, generators)
    # with data parallelism each process trains on its shard of every task
    trains = [
        process.parallel.shard_of(lo.train, config.batch_size, seed=config.seed * 1000 + t)
        for t, lo in enumerate(loaders)
    ]
    return RunSetup(
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
        schedule=[t for _ in range(config.cycles) for t in range(len(sequence))],
        parallel=process.parallel,
        path=path,
        log=process.log,
        started=started,
    )


def _placed(
    sequence: data_module.TaskSequence, config: RunConfig, device: torch.device
) -> data_module.TaskSequence:
    """``sequence`` with its in-memory data on ``device`` (copied there once, not batch by
    batch); where loader worker processes read them, they stay in host memory (CUDA tensors
    cannot be shared with forked workers)."""
    return sequence if config.num_workers else data_module.on_device(sequence, device)


def _model(
    config: RunConfig, sequence: data_module.TaskSequence, method: Method, device: torch.device
) -> nn.Module:
    try:
        return build.build_model(config, sequence, method).to(device)
    except (RuntimeError, MemoryError) as e:  # e.g. a width whose weights cannot be allocated
        raise ConfigError(
            f"cannot build the {config.model} (width {config.width}) on {device}: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e


def _loaders(
    config: RunConfig, sequence: data_module.TaskSequence, generators: list[torch.Generator]
) -> list[data_module.TaskLoaders]:
    """Every task's loaders; with a holdout, a stratified split of each task's training
    data decides when to stop."""
    return [
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
