"""A user's network is accepted only if the masks can keep its finished tasks bit-identical:
its forward writes no parameter and no buffer but BatchNorm statistics, and evaluates
deterministically; otherwise it is refused where it is first accepted, naming the cause."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from eidetic_func.models import MLP
from eidetic_func.models.progressive import ProgressiveMLP
from torch import Tensor, nn

import eidetic_func as ef
from eidetic_func.data.scenario import prefixed
from eidetic_func.data.sequences import load_sequence
from eidetic_func.nn.acceptance import check_network
from eidetic_func.runner.sequence import model_topology

X = torch.zeros(2, 6)


class Net(nn.Module):
    """``forward(x, task)``: body, then ``heads[task]``; ``middle`` runs between two layers."""

    def __init__(self, middle: nn.Module | None = None, bn: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.bn = ef.TaskBatchNorm1d(8) if bn else nn.Identity()
        self.middle = middle if middle is not None else nn.Identity()
        self.fc2 = nn.Linear(8, 8)
        self.heads = nn.ModuleList([nn.Linear(8, 2), nn.Linear(8, 2)])

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        h = self.middle(F.relu(self.bn(self.fc1(x))))
        return self.heads[task](F.relu(self.fc2(h)))


class RunningOffset(nn.Module):
    """An input normaliser with a running statistic of its own, updated like BatchNorm's (a
    scalar: a per-channel one is refused by the trace itself, see below)."""

    def __init__(self, reassign: bool = False) -> None:
        super().__init__()
        self.reassign = reassign
        self.register_buffer("offset", torch.zeros(()))

    def forward(self, h: Tensor) -> Tensor:
        if self.training:
            if self.reassign:
                self.offset = 0.9 * self.offset - 0.1 * h.detach().mean()
            else:
                self.offset.mul_(0.9).sub_(0.1 * h.detach().mean())
        return h + self.offset


class ConstantOffset(nn.Module):
    def __init__(self, width: int = 1) -> None:
        super().__init__()
        self.register_buffer("offset", torch.linspace(-1, 1, width).squeeze())

    def forward(self, h: Tensor) -> Tensor:
        return h + self.offset


class MaxNorm(nn.Module):
    """Wraps a Linear whose rows are clipped to norm 1 in forward (in place, or by .data)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.how = how

    def forward(self, h: Tensor) -> Tensor:
        with torch.no_grad():
            if self.how == "in place":
                self.fc.weight.renorm_(2, 0, 1.0)
            else:
                self.fc.weight.data = self.fc.weight.renorm(2, 0, 1.0)
        return self.fc(h)


class Noise(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, h: Tensor) -> Tensor:
        if self.kind == "functional dropout":
            return F.dropout(h, 0.5)  # training defaults to True: random in evaluation too
        if self.kind == "added noise":
            return h + 0.1 * torch.randn(())
        if self.kind == "dropout module":
            return F.dropout(h, 0.5, self.training)
        raise AssertionError(self.kind)


@pytest.mark.parametrize("reassign", [False, True], ids=["in-place", "reassigned"])
def test_a_buffer_updated_in_training_mode_is_refused_naming_it(reassign: bool) -> None:
    model = Net(RunningOffset(reassign=reassign))
    with pytest.raises(ef.TopologyError, match=r"writes its buffer 'middle.offset'.*training"):
        ef.trace_topology(model, X)
    with pytest.raises(ef.TopologyError, match=r"middle\.offset"):
        ef.init(ef.multihead(_Backbone(RunningOffset(reassign=reassign)), [2], input_shape=(6,)))


@pytest.mark.parametrize("how", ["in place", "through .data"])
def test_a_forward_that_writes_a_parameter_is_refused_naming_it(how: str) -> None:
    model = Net(MaxNorm(how))
    with torch.no_grad():
        model.middle.fc.weight.mul_(10)  # rows far beyond norm 1: the constraint acts
    with pytest.raises(ef.TopologyError, match=r"writes its parameter 'middle.fc.weight'"):
        check_network(model, X)
    with pytest.raises(ef.TopologyError):  # the tracer refuses it too, one way or another
        ef.trace_topology(model, X)


@pytest.mark.parametrize(
    ("kind", "named"),
    [
        ("functional dropout", "at graph nodes 'dropout' (dropout)"),
        (
            "added noise",
            "outside the graph, e.g. random draws, at graph nodes ['_tensor_constant0']",
        ),
    ],
)
def test_random_evaluation_is_refused_naming_the_random_node(kind: str, named: str) -> None:
    """The random node is named: a random operation of the graph, or the constant that a
    draw with no traced input (``torch.randn(())``) became while tracing."""
    with pytest.raises(ef.TopologyError, match=rf"two different outputs.*{re.escape(named)}"):
        ef.trace_topology(Net(Noise(kind)), X)


def test_a_per_channel_tensor_no_layer_holds_is_refused_naming_it() -> None:
    """``h + buffer`` with a buffer per neuron: a pruned neuron would still carry it, and
    growth could not widen it."""
    with pytest.raises(ef.TopologyError, match=r"\(8,\) that no layer .*\(middle\.offset\)"):
        ef.trace_topology(Net(ConstantOffset(width=8)), X)


@pytest.mark.parametrize(
    "middle",
    [ConstantOffset(), Noise("dropout module"), nn.Dropout(0.5), None],
    ids=["constant buffer", "dropout(training=self.training)", "nn.Dropout", "plain"],
)
def test_networks_the_masks_can_keep_are_accepted(middle: nn.Module | None) -> None:
    topology = ef.trace_topology(Net(middle, bn=True), X)
    assert [u.name for u in topology.units] == ["fc1", "fc2"]


def test_the_checks_change_neither_the_model_nor_the_random_state() -> None:
    model = Net(RunningOffset(), bn=True).train()
    before = {k: (v.clone(), v._version) for k, v in model.state_dict(keep_vars=True).items()}
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    with pytest.raises(ef.TopologyError):
        check_network(model, X)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training
    for key, (value, version) in before.items():
        tensor = model.state_dict(keep_vars=True)[key]
        assert torch.equal(tensor, value) and tensor._version == version, key


class _Backbone(nn.Module):
    """A torchvision-style classifier: features, then one Linear classifier ``fc``."""

    def __init__(self, middle: nn.Module) -> None:
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.middle = middle
        self.fc = nn.Linear(8, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.middle(F.relu(self.body(x))))


def test_init_and_load_surface_the_tracers_refusal(tmp_path: Path) -> None:
    """``ef.init`` and ``ef.load(model=)`` raise where the network is first accepted, not a
    state without topology that fails later with another message."""
    bad = ef.multihead(_Backbone(Noise("added noise")), [2, 2], input_shape=(6,))
    with pytest.raises(ef.TopologyError, match="two different outputs"):
        ef.init(bad)
    good = ef.multihead(_Backbone(nn.Identity()), [2, 2], input_shape=(6,))
    path = tmp_path / "state.safetensors"
    ef.save(path, ef.init(good))
    bad.load_state_dict(good.state_dict())
    with pytest.raises(ef.TopologyError, match="two different outputs"):
        ef.load(path, model=bad)
    assert ef.load(path, model=good).state.topology is not None


def test_a_network_without_a_topology_by_design_still_initializes() -> None:
    model = ProgressiveMLP(6, [2, 2], num_layers=1, width=4)
    with pytest.raises(ef.NoTopology):
        model.topology()
    assert ef.init(model).topology is None


# --------------------------------------------------------------------------- mixing neurons


class Mixer(nn.Module):
    """``fc1 → (mix) → fc2 → heads``: ``mix`` names one way to mix neurons across units."""

    def __init__(self, mix: str) -> None:
        super().__init__()
        self.mix = mix
        self.fc1 = nn.Linear(6, 8)
        self.bn = ef.TaskBatchNorm1d(8)
        self.fc2 = nn.Linear(16 if mix == "double read" else 8, 8)
        self.pool = nn.AdaptiveAvgPool1d(8)
        self.heads = nn.ModuleList([nn.Linear(8, 2), nn.Linear(8, 2)])

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        h = F.relu(self.fc1(x))
        if self.mix == "1-D pooling":
            h = F.max_pool1d(h, 1)  # (batch, features): pooled as an unbatched (C, L) tensor
        elif self.mix == "1-D pooling module":
            h = self.pool(h)
        elif self.mix == "double read":
            h = torch.cat([h, h * 2], dim=1)
        if self.mix == "shared BatchNorm":
            h = self.bn(h)  # normalizes fc1's unit, then fc2's below
        h = self.fc2(h)
        if self.mix == "shared BatchNorm":
            h = self.bn(h)
        elif self.mix == "head twice":
            return self.heads[task](h) + self.heads[task](F.relu(h))
        return self.heads[task](F.relu(h))


@pytest.mark.parametrize(
    ("mix", "node", "why"),
    [
        ("1-D pooling", "max_pool1d", "pools across channels"),
        ("1-D pooling module", "pool", "pools across channels"),
        ("shared BatchNorm", "bn_1", "BatchNorm is called twice"),
        ("head twice", "heads_1", "head is called twice"),
        ("double read", "fc2", "reads the same unit twice"),
    ],
)
def test_operations_that_mix_neurons_are_refused_naming_the_node(
    mix: str, node: str, why: str
) -> None:
    with pytest.raises(ef.TopologyError, match=rf"'{node}'.*{why}"):
        ef.trace_topology(Mixer(mix), X)


# --------------------------------------------------------------------------- declared topologies


class WritingMLP(nn.Module):
    """A network with a hand-written ``topology()`` whose forward rescales a weight in place."""

    def __init__(self, in_features: int = 6) -> None:
        super().__init__()
        self.net = MLP(in_features, [2, 2], num_layers=1, width=4, bn=False)
        self.heads = self.net.heads

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        with torch.no_grad():
            self.net.blocks[0].linear.weight.mul_(1.0)  # same values, but a write
        return self.net(x, task)

    def topology(self) -> ef.Topology:
        return prefixed(self.net.topology(), "net.")


def test_a_forward_that_writes_the_state_it_is_given_is_refused_naming_the_tensor() -> None:
    """A hand-written topology is not traced, so nothing refused the network up front: the
    forward itself notices the write (version counters) and names the tensor."""
    model = WritingMLP()
    state = ef.init(model)
    with pytest.raises(ef.TopologyError, match=r"wrote 'net\.blocks\.0\.linear\.weight' in place"):
        ef.forward(model, state, X, task=0, train=False)


def test_the_shell_checks_a_network_with_a_declared_topology_too() -> None:
    sequence = load_sequence("embedded", limit_per_class=2, num_tasks=5)
    with pytest.raises(ef.TopologyError, match=r"writes its parameter 'net\.blocks\.0\.linear"):
        model_topology(WritingMLP(in_features=784), sequence)


def test_init_and_load_check_a_declared_topology_network_given_an_example(
    tmp_path: Path,
) -> None:
    """A hand-written topology is not traced; with ``example_input``, ``ef.init`` and
    ``ef.load`` run the network's forward checks all the same."""
    model = WritingMLP()
    honest = MLP(6, [2, 2], num_layers=1, width=4, bn=False)
    with pytest.raises(ef.TopologyError, match=r"writes its parameter 'net\.blocks\.0\.linear"):
        ef.init(model, example_input=X)
    state = ef.init(honest, example_input=X)  # an honest network passes
    path = ef.save(tmp_path / "state.safetensors", ef.init(model))
    with pytest.raises(ef.TopologyError, match=r"writes its parameter"):
        ef.load(path, model=model, example_input=X)
    assert ef.load(ef.save(tmp_path / "honest.safetensors", state), model=honest, example_input=X)


def test_a_training_step_that_writes_a_buffer_is_refused_with_the_state_unchanged() -> None:
    """Through the Python API a network need not pass the tracer: ``ef.train_step`` notices
    a buffer outside BatchNorm written in training mode, names it, and returns nothing."""

    class Normalised(WritingMLP):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("seen", torch.zeros(()))

        def forward(self, x: Tensor, task: int = 0) -> Tensor:
            if self.training:
                self.seen.add_(1)
            return self.net(x, task)

    model = Normalised()
    state = ef.init(model)
    before = {k: v.clone() for k, v in state.buffers.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ef.TopologyError, match=r"writes its buffer 'seen' in training mode"):
        ef.train_step(
            model, state, (torch.randn(4, 6), torch.tensor([0, 1, 0, 1])), optimizer=optimizer
        )
    assert all(torch.equal(state.buffers[k], v) for k, v in before.items())
