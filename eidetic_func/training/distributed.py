"""Data parallelism on ``torch.distributed`` (launched with ``torchrun``).

Every process holds the same state and trains on its own shard of each task's data
(``DistributedSampler``). Gradients are averaged across processes before the optimizer
step, BatchNorm statistics of free channels are averaged after it, and owned entries are
restored as always — so the state stays identical on every process, which is checked
after every task (a digest of every tensor, compared across ranks). Data-driven importance
scores are summed over processes before normalizing and thresholding, so every process
prunes the same neurons as a single process scoring the union of the shards would.

Collective operations only; gloo on CPU, NCCL on GPUs::

    torchrun --nproc_per_node 2 -m eidetic_func run --device cpu ...
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime
import functools
import hashlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from eidetic_func.core.errors import DistributedError, EideticError, StateMismatchError
from eidetic_func.core.state import EideticState
from eidetic_func.training.step import Apply

T = TypeVar("T")


def _collective(method: Callable[..., T]) -> Callable[..., T]:
    """Turn a failed collective (a peer that stopped, hung past the timeout, or crashed)
    into a :class:`DistributedError` that names this rank and the operation."""

    @functools.wraps(method)
    def wrapped(self: Parallel, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except EideticError:
            raise
        except RuntimeError as e:  # torch.distributed.DistError and raw gloo/NCCL errors
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {method.__name__} failed "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); another "
                "process of the run stopped, crashed or hung past the timeout (--dist-timeout). "
                "Resume the run with the same number of processes (--resume)"
            ) from e

    return wrapped


def _all_reduce_sum(tensors: list[Tensor]) -> list[Tensor]:
    """The sums over processes of ``tensors`` (same dtype): one all-reduce of them all."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


@dataclasses.dataclass(frozen=True)
class Single:
    """One process: what :func:`eidetic_func.train_task` runs on when not data-parallel.

    The same interface as :class:`Parallel`, where every combination is the identity (and
    no gradient transform or score reduction is added at all)."""

    rank: int = 0
    world_size: int = 1
    is_main: bool = True
    grad_transform: None = None  # no averaging
    score_reduce: None = None  # scores are this process's

    buffer_sync: None = None  # buffers are this process's

    def sum_metrics(self, correct: int, count: int, loss_sum: float) -> tuple[int, int, float]:
        return correct, count, loss_sum

    def check_identical(self, state: EideticState, where: str) -> str:
        """Nothing to compare with (and no digest computed): ``""``."""
        return ""

    def shard_of(self, loader: Any, batch_size: int, *, seed: int) -> Any:
        """``loader`` itself: one process reads all the data."""
        return loader


SINGLE = Single()


@dataclasses.dataclass(frozen=True)
class Parallel:
    """This process's place in an initialized process group."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and shows progress."""
        return self.rank == 0

    @property
    def grad_transform(self) -> Callable[..., dict[str, Tensor]]:
        return self.average_grads

    @property
    def score_reduce(self) -> Callable[..., tuple[dict[str, Tensor], int]]:
        return self.reduce

    @_collective
    def average_grads(
        self, grads: dict[str, Tensor], apply: Apply, params: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """A ``grad_transform`` for ``train_step``: the mean gradient over processes."""
        names = list(grads)
        summed = _all_reduce_sum([grads[n] for n in names])
        return {n: g / self.world_size for n, g in zip(names, summed)}

    @property
    def buffer_sync(self) -> Callable[[dict[str, Tensor]], None]:
        """Averages a model's buffers over processes after each step (the training epoch
        restores owned statistics around it: the average of equal values is not always
        bit-equal)."""
        return self.average_buffers_

    @_collective
    def average_buffers_(self, buffers: dict[str, Tensor]) -> None:
        """Average the floating ``buffers`` over processes, in place."""
        names = [k for k, v in buffers.items() if v.is_floating_point()]
        if not names:
            return
        with torch.no_grad():
            for k, t in zip(names, _all_reduce_sum([buffers[k] for k in names])):
                buffers[k].copy_(t / self.world_size)

    @_collective
    def reduce(self, sums: dict[str, Tensor], count: int) -> tuple[dict[str, Tensor], int]:
        """Sum per-unit partial sums and the sample count over processes (for scoring)."""
        names = sorted(sums)
        ref = sums[names[0]]
        total = torch.tensor([float(count)], dtype=ref.dtype, device=ref.device)
        *summed, counted = _all_reduce_sum([sums[n] for n in names] + [total])
        return dict(zip(names, summed)), int(counted.item())

    @_collective
    def sum_metrics(self, correct: int, count: int, loss_sum: float) -> tuple[int, int, float]:
        """Epoch metrics over all shards, so every process takes the same decisions."""
        t = torch.tensor([float(correct), float(count), loss_sum], dtype=torch.float64)
        dist.all_reduce(t)
        return int(t[0]), int(t[1]), float(t[2])

    @_collective
    def check_identical(self, state: EideticState, where: str) -> str:
        """Raise :class:`StateMismatchError` unless every process holds the same state."""
        mine = digest(state)
        digests: list[Any] = [None] * self.world_size
        dist.all_gather_object(digests, mine)
        if any(d != mine for d in digests):
            raise StateMismatchError(
                f"processes diverged {where}: state digests differ across ranks {digests}"
            )
        return mine

    def shard_of(self, loader: Any, batch_size: int, *, seed: int) -> ShardedLoader:
        """This process's shard of ``loader``'s dataset, reshuffled with ``seed`` each pass."""
        return ShardedLoader(loader.dataset, batch_size, self, seed=seed)


class ShardedLoader:
    """This process's shard of ``dataset``, reshuffled (seeded) at every pass.

    Each process gets the same number of batches (``DistributedSampler`` pads), so the
    collective operations of every step line up.
    """

    def __init__(
        self, dataset: Dataset[Any], batch_size: int, parallel: Parallel, *, seed: int
    ) -> None:
        self.sampler: DistributedSampler[Any] = DistributedSampler(
            dataset, num_replicas=parallel.world_size, rank=parallel.rank, shuffle=True, seed=seed
        )
        # every rank's shard has the same length, so all ranks drop a last batch of one
        # sample (it cannot be batch-normalized in training mode) together
        self.loader = DataLoader(
            dataset, batch_size, sampler=self.sampler, drop_last=len(self.sampler) % batch_size == 1
        )
        self.epoch = 0

    def __iter__(self) -> Iterator[Any]:
        self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def _end_with_parent() -> None:
    """Ask Linux to send SIGTERM to this process when its parent (the launcher) dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def digest(state: EideticState) -> str:
    """SHA-256 of every tensor of ``state`` (values, dtypes, shapes) and its static fields."""
    h = hashlib.sha256(repr((state.task, state.finished)).encode())
    for group in (state.params, state.buffers, state.owner, state.keep):
        for k in sorted(group):
            t = group[k].detach().cpu().contiguous()
            h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


DEFAULT_TIMEOUT_S = 300.0


def from_environment(
    device: torch.device, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Parallel | Single:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1), else :data:`SINGLE`.

    A collective that waits longer than ``timeout_s`` for a peer fails with
    :class:`DistributedError`. On Linux each worker also ends when its launcher dies
    (``PR_SET_PDEATHSIG``), so killing ``torchrun`` alone leaves no worker behind.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    _end_with_parent()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as e:
            raise DistributedError(
                f"rank {os.environ.get('RANK', '?')} of {world}: cannot join the process "
                f"group ({type(e).__name__}: {e})"
            ) from e
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Parallel(rank=dist.get_rank(), world_size=dist.get_world_size())
