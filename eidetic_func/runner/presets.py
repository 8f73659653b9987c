"""Benchmark presets: named, documented run configurations (``eidetic-func bench``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from eidetic_func.core.errors import ConfigError
from eidetic_func.methods.eidetic import EideticNet
from eidetic_func.runner.config import RunConfig
from eidetic_func.training.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named run configuration and what it is (one line of ``eidetic-func bench --list``)."""

    about: str
    config: RunConfig


PRESETS: dict[str, Preset] = {
    "split-mnist": Preset(
        about="Split-MNIST, 5 tasks × 2 classes, task-incremental; MLP 2×400, Taylor pruning.",
        config=RunConfig(
            dataset="split-mnist",
            model="mlp",
            width=400,
            layers=2,
            batch_size=64,
            lr=1e-3,
            train=TrainConfig(
                max_epochs=10,
                patience=2,
            ),
            eidetic=EideticNet(
                pruning_step=0.1,
                pruning_type="taylor",
                max_recovery_epochs=2,
                tolerance=0.005,
            ),
        ),
    ),
    "permuted-mnist-paper": Preset(
        about="Permuted-MNIST, 10 tasks; the EideticNet paper's protocol (Sec. 4, Table 2): "
        "MLP 2×2000 with dropout 0.1, Adam lr 2e-4 (no weight decay), batch 256, early "
        "stopping with patience 10, learning rate halved before pruning, Taylor step 5%, "
        "tolerance 0.1%, at most 5 recovery epochs (hours on 2 CPU cores; --device cuda).",
        config=RunConfig(
            dataset="permuted-mnist",
            num_tasks=10,
            model="mlp",
            width=2000,
            layers=2,
            dropout=0.1,
            batch_size=256,
            optimizer="adam",
            lr=2e-4,
            weight_decay=0.0,
            router=False,
            train=TrainConfig(
                max_epochs=100,
                patience=10,
                lr_factor=0.5,
            ),
            eidetic=EideticNet(
                pruning_step=0.05,
                pruning_type="taylor",
                max_recovery_epochs=5,
                tolerance=0.001,
                pruning_schedule="fixed",  # the paper's
            ),
        ),
    ),
    "permuted-mnist-cpu": Preset(
        about="Permuted-MNIST, 10 tasks, CPU-friendly: MLP 2×400, 1000 images per class, "
        "Taylor step 10%, tolerance 1%.",
        config=RunConfig(
            dataset="permuted-mnist",
            num_tasks=10,
            limit_per_class=1000,
            model="mlp",
            width=400,
            layers=2,
            batch_size=128,
            lr=1e-3,
            router=False,
            train=TrainConfig(
                max_epochs=8,
                patience=2,
            ),
            eidetic=EideticNet(
                pruning_step=0.1,
                pruning_type="taylor",
                max_recovery_epochs=1,
                tolerance=0.01,
                # the adaptive schedule keeps 5 more neurons here (628 against 623 in tasks
                # 0-8, benchmarks/results/schedule-presets.md): the fixed one stays
                pruning_schedule="fixed",
            ),
        ),
    ),
    "split-fashion-mnist": Preset(
        about="Split-FashionMNIST, 5 tasks × 2 classes, task-incremental; MLP 2×400, Taylor.",
        config=RunConfig(
            dataset="split-fashion-mnist",
            model="mlp",
            width=400,
            layers=2,
            batch_size=64,
            lr=1e-3,
            train=TrainConfig(
                max_epochs=10,
                patience=2,
            ),
            eidetic=EideticNet(
                pruning_step=0.1,
                pruning_type="taylor",
                max_recovery_epochs=2,
                tolerance=0.005,
            ),
        ),
    ),
}


def preset(name: str, **overrides: Any) -> RunConfig:
    """The configuration of preset ``name``, with top-level fields replaced by ``overrides``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name].config, **overrides)
