"""Small real-data runs shared by the end-to-end tests (CLI arguments, a baseline sequence)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from eidetic_func.models import MLP

import eidetic_func as ef
from eidetic_func.data import load_sequence, loaders
from eidetic_func.methods.protocol import init_state
from eidetic_func.runner.task import train_task
from eidetic_func.training.config import TrainConfig
from eidetic_func.training.metrics import evaluate

# `eidetic-func run` arguments for a run of seconds on the embedded data.
SMALL_ARGS = [
    "--limit-per-class",
    "60",
    "--width",
    "48",
    "--batch-size",
    "32",
    "--epochs",
    "3",
    "--patience",
    "1",
    "--pruning-step",
    "0.25",
    "--tolerance",
    "0.02",
    "--max-recovery-epochs",
    "1",
    "--no-progress",
]


def run_sequence(
    method: Any, model_factory: Callable[[Sequence[int]], torch.nn.Module], seed: int = 0
) -> tuple[float, float]:
    """Mean test accuracy on the earlier tasks and on the last task, after the sequence.

    Split MNIST (embedded subset) with the interfering pairs 1/7, 4/9, 3/5, two epochs per
    task, one SGD optimizer (momentum) reused across tasks.
    """
    seq = load_sequence("embedded", classes=[(1, 7), (4, 9), (3, 5)])
    torch.manual_seed(seed)
    model = model_factory(seq.num_classes)
    state = ef.init(model)
    mstate = init_state(method, model, state)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    task_loaders = [loaders(task, 32, seed=seed + i) for i, task in enumerate(seq)]
    for t in range(len(seq)):
        state, mstate, _ = train_task(
            model,
            state,
            task_loaders[t].train,
            mstate=mstate,
            method=method,
            task=t,
            optimizer=optimizer,
            config=TrainConfig(max_epochs=2, patience=2),
            generator=generator,
            progress=False,
        )
    accs = [evaluate(model, state, task_loaders[t].test, task=t) for t in range(len(seq))]
    return sum(accs[:-1]) / (len(accs) - 1), accs[-1]


def plain_mlp(num_classes: Sequence[int]) -> MLP:
    """MLP 784-100-100 without BatchNorm, one head per task."""
    return MLP(784, list(num_classes), num_layers=2, width=100, bn=False)


def embedded_summaries(
    methods: Sequence[str], *, limit_per_class: int, epochs: int, scenario: str = "task"
) -> dict[str, dict[str, Any]]:
    """``{method: summary}`` of ``eidetic_func.run`` on the embedded Split-MNIST with an MLP
    784-100-100 without BN, batch 32, ``epochs`` per task, no router, in ``scenario``."""
    from eidetic_func.runner.config import RunConfig
    from eidetic_func.runner.sequence import run

    summaries = {}
    for method in methods:
        config = RunConfig(
            dataset="embedded",
            limit_per_class=limit_per_class,
            width=100,
            bn=False,
            method=method,
            batch_size=32,
            train=TrainConfig(max_epochs=epochs, patience=epochs),
            router=False,
            progress=False,
            scenario=scenario,
        )
        summaries[method] = run(config, log=lambda _: None).summary
    return summaries
