"""Whole runs on CUDA (skipped, with the reason, where there is no CUDA device): the data
live on the GPU and finished tasks stay bit-identical there too."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from eidetic_func.methods.eidetic import EideticNet
from eidetic_func.runner.config import RunConfig
from eidetic_func.runner.environment import enter
from eidetic_func.runner.sequence import run
from eidetic_func.runner.setup import prepare
from eidetic_func.training.config import TrainConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _on_cuda(**changes: object) -> RunConfig:
    """A run of seconds on the embedded data, on CUDA (built only where CUDA exists)."""
    config = RunConfig(
        dataset="embedded",
        num_tasks=2,
        limit_per_class=60,
        model="mlp",
        width=48,
        batch_size=32,
        holdout=0.25,
        router=True,
        device="cuda",
        train=TrainConfig(max_epochs=3, patience=1),
        eidetic=EideticNet(
            pruning_step=0.25, tolerance=0.02, max_recovery_epochs=1, score_batches=4
        ),
        progress=False,
    )
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def _quiet(*_: object) -> None:
    pass


def test_a_cuda_run_keeps_every_task_bit_identical_with_a_holdout_and_the_router() -> None:
    result = run(_on_cuda(), log=_quiet)
    n = len(result.task_names)
    for t in range(n):
        assert result.matrix[t][t] == result.after_finish[t][0]
        for later in range(t, n):
            assert result.matrix[later][t] == result.matrix[t][t], f"task {t} changed"
    assert result.summary["forgetting"] == 0.0 and result.router is not None


def test_a_cuda_run_moves_its_data_to_the_gpu_once() -> None:
    config = _on_cuda()
    setup = prepare(config, enter(config, _quiet), None, time.perf_counter())
    first = setup.sequence[0].train
    assert first.images.is_cuda and first.labels.is_cuda
    assert all(task.train.images is first.images for task in setup.sequence)  # one copy
    x, y = next(iter(setup.trains[0]))
    assert x.is_cuda and y.is_cuda
    workers = _on_cuda(num_workers=1)
    kept = prepare(workers, enter(workers, _quiet), None, time.perf_counter())
    assert not kept.sequence[0].train.images.is_cuda  # forked workers read host memory
