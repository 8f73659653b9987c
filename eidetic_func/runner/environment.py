"""The process a run trains in: its rank among ``torchrun``'s processes, its device, its
CPU threads and its log (only the main process speaks and writes files)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from eidetic_func.runner import rundir
from eidetic_func.runner.config import RunConfig
from eidetic_func.runner.record import CHECKPOINT_FILE
from eidetic_func.training.distributed import Parallel, Single, from_environment


@dataclasses.dataclass(frozen=True)
class Process:
    """This process's part in a run."""

    parallel: Parallel | Single
    device: torch.device  # with several processes on CUDA: this process's GPU
    log: Callable[[str], None]  # silent but in the main process


def enter(config: RunConfig, log: Callable[[str], None]) -> Process:
    """Join ``config``'s process group (a ``torchrun`` launch, else a single process) and
    set this process's CPU threads."""
    device = torch.device(config.device)
    parallel = from_environment(device, timeout_s=config.dist_timeout)
    if device.type == "cuda" and parallel.world_size > 1:
        device = torch.device("cuda", torch.cuda.current_device())  # this process's GPU
    torch.set_num_threads(cpu_threads(config.threads))
    return Process(parallel, device, log if parallel.is_main else silent)


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


@contextlib.contextmanager
def output_held(
    output_dir: str | Path | None,
    *,
    resume: bool,
    overwrite: bool,
    log: Callable[[str], None],
) -> Iterator[None]:
    """Hold ``output_dir`` for one run (:func:`eidetic_func.runner.rundir.hold`) in the main
    process; the other processes of a launch, and a run without one, hold nothing."""
    if output_dir is None or not is_main_process():
        yield
        return
    with rundir.hold(
        output_dir, checkpoint=CHECKPOINT_FILE, resume=resume, overwrite=overwrite, log=log
    ):
        yield


def silent(message: str) -> None:
    """The log of processes other than the main one."""
