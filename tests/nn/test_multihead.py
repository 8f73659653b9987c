"""Any torchvision classifier, multi-head: traced, trained, pruned, finished, bit-identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from small_runs import SMALL_ARGS
from strategies import prune_free_neurons

import eidetic_func as ef
from eidetic_func.runner.cli import main
from eidetic_func.runner.config import RunConfig
from eidetic_func.runner.sequence import run
from eidetic_func.training.config import TrainConfig

pytestmark = pytest.mark.slow


def _sequence_keeps_finished_logits(model: ef.MultiHead, tasks: int, steps: int) -> None:
    """Train, prune, finish and recycle ``tasks`` tasks; every finished task's logits on a
    probe must stay bit-identical to what they were before its finish."""
    topology = model.topology()
    g = torch.Generator().manual_seed(0)
    shape = model.input_shape
    probe = torch.randn(3, *shape, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    state, expected = ef.init(model), {}
    for task in range(tasks):
        for phase in range(2):
            for _ in range(steps):
                batch = (
                    torch.randn(4, *shape, generator=g),
                    torch.randint(0, 2, (4,), generator=g),
                )
                state, _ = ef.train_step(model, state, batch, optimizer=opt, task=task)
            if phase == 0:
                state = prune_free_neurons(state, topology, g, 0.3, method="l2")
        expected[task], _ = ef.forward(model, state, probe, task=task, train=False)
        state = ef.recycle(ef.finish_task(state, task=task), generator=g)
        for t, out in expected.items():
            now, _ = ef.forward(model, state, probe, task=t, train=False)
            assert torch.equal(now, out), f"task {t} changed after task {task}"


def test_torchvision_resnet18_from_python_keeps_every_finished_task_bit_identical() -> None:
    torch.manual_seed(0)
    backbone = torchvision.models.resnet18(weights=None)
    model = ef.multihead(backbone, [2, 2, 2], input_shape=(1, 16, 16))  # grey → RGB
    assert isinstance(backbone.fc, torch.nn.Linear), "the backbone itself is untouched"
    _sequence_keeps_finished_logits(model, tasks=3, steps=2)


@pytest.mark.parametrize("name", ["resnet50", "vgg11_bn"])
def test_torchvision_resnet50_and_vgg11_bn_keep_finished_tasks_bit_identical(name: str) -> None:
    torch.manual_seed(0)
    backbone = torchvision.models.get_model(name, weights=None)
    if name == "vgg11_bn":
        # VGG's classifier (25088→4096→4096, 120M weights) is most of its cost and none of
        # its structure: the same Linear/ReLU/Dropout chain, narrower, keeps what is traced
        # (BN convs, an adaptive pool, a flatten, dropout between linears, the head swap)
        backbone.classifier = _narrow_vgg_classifier(backbone.classifier, width=32)
    model = ef.multihead(backbone, [2, 2], input_shape=(3, 32, 32))
    _sequence_keeps_finished_logits(model, tasks=2, steps=1)


def _narrow_vgg_classifier(classifier: torch.nn.Sequential, width: int) -> torch.nn.Sequential:
    """VGG's classifier with its hidden Linear layers ``width`` wide (same layer types)."""
    layers = list(classifier)
    linears = [i for i, m in enumerate(layers) if isinstance(m, torch.nn.Linear)]
    first, last = linears[0], linears[-1]
    for i in linears:
        fan_in = layers[i].in_features if i == first else width
        fan_out = layers[i].out_features if i == last else width
        layers[i] = torch.nn.Linear(fan_in, fan_out)
    return torch.nn.Sequential(*layers)


def test_torchvision_resnet18_runs_a_three_task_sequence_from_the_cli(
    mnist_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = [
        *SMALL_ARGS,
        "--model",
        "torchvision:resnet18",
        "--dataset",
        "permuted-mnist",
        "--data-root",
        str(mnist_root),
        "--num-tasks",
        "3",
        "--limit-per-class",
        "4",
        "--batch-size",
        "20",
        "--epochs",
        "1",
        "--no-router",
        # a pruned and recovered step or two per task is what this test needs, not 95 %
        "--max-masking-ratio",
        "0.5",
    ]
    assert main(["run", *args, "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    matrix = results["accuracy_matrix"]
    assert len(matrix) == 3 and results["summary"]["backward_transfer"] == 0.0
    for t in range(3):
        assert all(row[t] == matrix[t][t] for row in matrix[t:]), f"task {t} changed"
    phases = [row.split(",")[1] for row in (out / "history.csv").read_text().splitlines()[1:]]
    assert phases.count("prune") >= 2  # the tasks were pruned, not only trained


@pytest.mark.parametrize("method", [m for m in ef.methods.METHODS if m != "progressive"])
def test_baselines_run_on_a_torchvision_backbone(method: str, mnist_root: Path) -> None:
    config = RunConfig(
        dataset="permuted-mnist",
        data_root=str(mnist_root),
        num_tasks=2,
        limit_per_class=2,
        model="torchvision:resnet18",
        method=method,
        batch_size=10,
        train=TrainConfig(max_epochs=1, patience=0),
        # half the free neurons per step: EideticNet's pruning still runs (and recovers), in
        # two steps rather than the default's dozen
        eidetic=ef.EideticNet(pruning_step=0.5, max_recovery_epochs=1),
        progress=False,
    )
    result = run(config, log=lambda _: None)
    assert len(result.matrix) == 2
    if method == "packnet":  # packnet freezes by ownership: its first task never moves
        assert result.matrix[1][0] == result.matrix[0][0]


def test_a_classifier_without_a_linear_head_or_with_grouped_convs_is_refused() -> None:
    with pytest.raises(ef.TopologyError, match="no Linear classifier"):
        ef.multihead(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), [2])
    model = ef.multihead(
        torchvision.models.mobilenet_v2(weights=None), [2], input_shape=(3, 32, 32)
    )
    with pytest.raises(ef.TopologyError, match="groups="):
        model.topology()
    with pytest.raises(ef.ConfigError, match="torchvision has no classification model"):
        RunConfig(model="torchvision:resnet19")


def test_progressive_networks_refuse_a_torchvision_backbone() -> None:
    with pytest.raises(ef.ConfigError, match="MLP columns"):
        RunConfig(model="torchvision:resnet18", method="progressive")
