"""The three scenarios: task-, class- and domain-incremental, for every method that can."""

from __future__ import annotations

import pytest
import torch
from eidetic_func.models import MLP
from small_runs import embedded_summaries

import eidetic_func as ef
from eidetic_func.data.scenario import SharedHead, head_sizes, scenario_sequence
from eidetic_func.runner.config import RunConfig


def test_class_incremental_labels_are_global_and_domain_keeps_the_tasks() -> None:
    seq = ef.data.load_sequence("embedded", limit_per_class=5)
    classes = scenario_sequence(seq, "class")
    assert head_sizes(classes, "class") == [10] and head_sizes(seq, "domain") == [2]
    for t, task in enumerate(classes):
        labels = {int(task.train[i][1]) for i in range(len(task.train))}
        assert labels == {2 * t, 2 * t + 1}, "task t's classes follow the earlier tasks'"
        assert torch.equal(task.train[0][0], seq[t].train[0][0]), "inputs are shared"
    assert scenario_sequence(seq, "domain") is seq
    uneven = ef.data.load_sequence("embedded", classes=[(0, 1), (2, 3, 4)], limit_per_class=5)
    with pytest.raises(ef.ConfigError, match="same number of classes"):
        scenario_sequence(uneven, "domain")
    with pytest.raises(ef.ConfigError, match="scenario"):
        scenario_sequence(seq, "sideways")


def test_a_shared_head_answers_every_task_with_its_one_head() -> None:
    torch.manual_seed(0)
    model = SharedHead(MLP(6, [10], num_layers=1, width=4), num_tasks=5)
    x = torch.randn(3, 6)
    assert model.num_tasks == 5 and torch.equal(model(x, 4), model(x, 0))
    topology = model.topology()
    assert topology.heads == ("net.heads.0",)
    ef.check_topology(topology, dict(model.named_parameters()), dict(model.named_buffers()))
    state = ef.init(model)
    out, _ = ef.forward(model, state, x, task=3, train=False)
    assert out.shape == (3, 10)


@pytest.mark.parametrize("method", ["eidetic", "packnet", "progressive"])
def test_methods_with_a_head_or_column_per_task_refuse_other_scenarios(method: str) -> None:
    with pytest.raises(ef.ConfigError, match="task-incremental"):
        RunConfig(method=method, scenario="class")


@pytest.mark.slow
def test_class_incremental_replay_remembers_where_fine_tuning_forgets() -> None:
    # the accuracy matrix of one shared head is the class-incremental accuracy
    summaries = embedded_summaries(
        ("finetune", "er"), limit_per_class=300, epochs=2, scenario="class"
    )
    finetune, er = summaries["finetune"], summaries["er"]
    assert finetune["average_accuracy"] < 0.3, "fine-tuning forgets every earlier class"
    assert er["average_accuracy"] > finetune["average_accuracy"] + 0.2
