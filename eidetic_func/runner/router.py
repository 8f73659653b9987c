"""The task router: an extra head, trained last, that predicts which task an input is of,
so a task-incremental network answers class-incremental questions (route, then classify).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from eidetic_func import data as data_module
from eidetic_func.core.state import EideticState
from eidetic_func.ops.forward import forward
from eidetic_func.runner.setup import RunSetup


def router_loaders(setup: RunSetup) -> tuple[Any, DataLoader[tuple[Tensor, Tensor]] | None]:
    """The router's training batches (this process's shard) and, with a holdout, the
    batches it stops on: every task's training data (a relaxation, as the original's task
    classifier), labelled with the task id; the union of the tasks' holdouts."""
    config, loaders = setup.config, setup.loaders
    router = len(loaders)
    union = task_id_dataset([lo.train.dataset for lo in loaders])  # type: ignore[misc]
    # a last batch of one sample cannot be batch-normalized in training mode
    batches = data_module.batch_loader(
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
        stop = data_module.batch_loader(held, config.eval_batch_size)
    return loader, stop


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
                x, y = x.to(device), y.cpu()  # predictions are compared on the CPU
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
