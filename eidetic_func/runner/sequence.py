"""Run a whole task sequence: train every task, evaluate the accuracy matrix, checkpoint.

:func:`run` is what the ``eidetic-func run`` command and the benchmark presets call. It
builds the data, model and optimizer from a :class:`RunConfig`, trains the tasks in order
(several passes revisit tasks: the cyclical experiment), evaluates every task after every
visit (the accuracy matrix), optionally trains a task router for class-incremental
prediction, and checkpoints after every training epoch, kept pruning step and task so an
interrupted run resumes where it stopped (:func:`run` with ``resume=True``).

The parts live in their own modules: :mod:`~eidetic_func.runner.build` (factories),
:mod:`~eidetic_func.runner.setup`, :mod:`~eidetic_func.runner.environment`,
:mod:`~eidetic_func.runner.resume`, :mod:`~eidetic_func.runner.record`,
:mod:`~eidetic_func.runner.loop`, :mod:`~eidetic_func.runner.router` and
:mod:`~eidetic_func.runner.result`; this module re-exports what callers use.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from eidetic_func.runner import environment, loop
from eidetic_func.runner import resume as resuming
from eidetic_func.runner import setup as run_setup
from eidetic_func.runner.build import (
    build_model,
    build_optimizer,
    load_run_sequence,
    model_topology,
    reorder,
    uses_router,
)
from eidetic_func.runner.config import RunConfig
from eidetic_func.runner.environment import cpu_threads, is_main_process, output_held
from eidetic_func.runner.record import CHECKPOINT_FILE, RunCheckpoint, RunRecord
from eidetic_func.runner.result import RunResult, dumps, measure
from eidetic_func.runner.resume import (
    OPERATIONAL,
    Given,
    SavedRun,
    config_conflicts,
    saved_run,
)
from eidetic_func.runner.router import route_and_classify, task_id_dataset

__all__ = [
    "CHECKPOINT_FILE",
    "OPERATIONAL",
    "RunCheckpoint",
    "RunRecord",
    "RunResult",
    "SavedRun",
    "build_model",
    "build_optimizer",
    "config_conflicts",
    "cpu_threads",
    "dumps",
    "is_main_process",
    "load_run_sequence",
    "model_topology",
    "reorder",
    "route_and_classify",
    "run",
    "run_held",
    "saved_run",
    "task_id_dataset",
    "uses_router",
]


def run(
    config: RunConfig | None,
    *,
    output_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Train ``config``'s task sequence end to end and measure it.

    With ``output_dir``, the directory is held for this run (another run writing it is
    refused, see :mod:`eidetic_func.runner.rundir`), and a checkpoint is written there
    (atomically) after every finished task, and after every training epoch and kept
    pruning step unless ``checkpoint_every`` says otherwise. A fresh run refuses to replace
    an existing checkpoint unless ``overwrite``. ``resume=True`` continues from that
    checkpoint with its saved config: ``config=None`` takes it as it is; a given ``config``
    must equal it except in the :data:`OPERATIONAL` settings (progress, device,
    checkpointing, timeout, threads; else :class:`CheckpointError` lists the differences),
    and the number of processes must be the one that wrote it. On CPU, a resumed run gives
    exactly the results of an uninterrupted one.
    """
    with output_held(output_dir, resume=resume, overwrite=overwrite, log=log):
        return run_held(config, output_dir, resume=resume, log=log)


def run_held(
    given: Given,
    output_dir: str | Path | None,
    *,
    resume: bool,
    log: Callable[[str], None],
) -> RunResult:
    """:func:`run` in an output directory the caller holds (see
    :func:`eidetic_func.runner.environment.output_held`); resuming, ``given`` may also be
    the settings to change (see :data:`eidetic_func.runner.resume.Given`)."""
    started = time.perf_counter()
    start = resuming.start(given, output_dir, resume=resume)
    process = environment.enter(start.config, log)
    if start.saved is not None:
        resuming.check_world_size(start.saved, process.parallel.world_size)
    setup = run_setup.prepare(start.config, process, start.path, started)
    if start.saved is None:
        record = loop.first_record(setup)
    else:
        setup, record = resuming.restore(setup, start.saved)
    setup, record = loop.fold(setup, record)
    return measure(setup, record)
