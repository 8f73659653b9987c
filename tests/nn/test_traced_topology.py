"""Topology by tracing: equal to the declared one for every model, right for user models,
and a clear refusal for what structured masks cannot prune."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from eidetic_func.models import MLP, ConvNet, ResNet
from hypothesis import given
from hypothesis import strategies as st
from strategies import prune_free_neurons
from torch import Tensor, nn

import eidetic_func as ef


def _canonical(topology: ef.Topology) -> tuple[object, ...]:
    """Units as sets of producers, norms and readers (names and order are labels)."""
    units = sorted(
        (
            tuple(sorted(u.producers)),
            tuple(sorted(u.norms)),
            tuple(sorted((r.layer, r.repeat, r.offset) for r in u.readers)),
        )
        for u in topology.units
    )
    return (units, topology.heads)


MODELS = {
    "mlp-bn": (lambda: MLP(784, [2, 3], num_layers=2, width=8), (2, 1, 28, 28)),
    "mlp": (lambda: MLP(784, [2, 3], num_layers=3, width=8, bn=False), (2, 784)),
    "convnet-bn": (lambda: ConvNet(1, [2, 3], num_layers=2, width=2), (2, 1, 28, 28)),
    "convnet-flat": (
        lambda: ConvNet(1, [2, 3], num_layers=1, width=2, bn=False, image_size=16),
        (2, 1, 16, 16),
    ),
    "resnet18": (lambda: ResNet(3, [2, 2], n_blocks=[2, 2, 2, 2], width=4), (2, 3, 32, 32)),
    "resnet18-no-bn": (
        lambda: ResNet(3, [2, 2], n_blocks=[2, 2, 2, 2], width=4, bn=False),
        (2, 3, 32, 32),
    ),
    "resnet50": (
        lambda: ResNet(3, [2, 2], n_blocks=[3, 4, 6, 3], expansion=4, width=2),
        (2, 3, 32, 32),
    ),
    "resnet50-no-bn": (
        lambda: ResNet(3, [2, 2], n_blocks=[3, 4, 6, 3], expansion=4, width=2, bn=False),
        (2, 3, 32, 32),
    ),
    "resnet-imagenet-stem": (
        lambda: ResNet(3, [2], n_blocks=[1, 1], width=4, low_res=False),
        (2, 3, 64, 64),
    ),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_traced_topology_equals_the_declared_one(name: str) -> None:
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    traced = ef.trace_topology(model, torch.randn(shape))
    assert _canonical(traced) == _canonical(model.topology())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), "tracing changed the model"


class Branchy(nn.Module):
    """A user's own network: two branches concatenated, a residual add, per-task heads."""

    def __init__(self, heads: list[int]) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.left = nn.Conv2d(4, 3, 3, padding=1)
        self.right = nn.Conv2d(4, 5, 1)
        self.right_norm = ef.TaskBatchNorm2d(5)
        self.mix = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 6)
        self.heads = nn.ModuleList(nn.Linear(6, k) for k in heads)

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        h = F.relu(self.stem(x))
        both = torch.cat([F.relu(self.left(h)), F.relu(self.right_norm(self.right(h)))], dim=1)
        h = F.relu(self.mix(both) + h)  # residual: mix and stem are one stream
        h = F.max_pool2d(h, 2).flatten(1)
        return self.heads[task](F.relu(self.fc(h)))


def test_a_user_model_with_branches_concat_and_a_residual_traces_correctly() -> None:
    topology = ef.trace_topology(Branchy([2, 2, 2]), torch.randn(2, 2, 8, 8))
    units = {u.name: u for u in topology.units}
    assert set(units) == {"stream.0", "left", "right", "fc"}
    stream = units["stream.0"]
    assert set(stream.producers) == {"stem", "mix"}
    assert {(r.layer, r.repeat, r.offset) for r in stream.readers} == {
        ("left", 1, 0),
        ("right", 1, 0),
        ("fc", 16, 0),
    }
    assert units["left"].readers == (ef.Reader("mix", 1, 0),)
    assert units["right"].readers == (ef.Reader("mix", 1, 3),)
    assert units["right"].norms == ("right_norm",)
    assert {r.layer for r in units["fc"].readers} == {"heads.0", "heads.1", "heads.2"}


@given(seed=st.integers(0, 2**16), forward_transfer=st.booleans())
def test_a_traced_user_model_keeps_finished_tasks_bit_identical(
    seed: int, forward_transfer: bool
) -> None:
    torch.manual_seed(seed)
    model = Branchy([2, 2, 2])
    topology = ef.trace_topology(model, torch.randn(2, 2, 8, 8))
    g = torch.Generator().manual_seed(seed)
    probe = torch.randn(3, 2, 8, 8, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    state, expected = ef.init(model, topology=topology), {}
    for task in range(3):
        for _ in range(3):
            batch = (torch.randn(6, 2, 8, 8, generator=g), torch.randint(0, 2, (6,), generator=g))
            state, _ = ef.train_step(model, state, batch, optimizer=opt, task=task)
        state = prune_free_neurons(state, topology, g, 0.4)
        for _ in range(2):
            batch = (torch.randn(6, 2, 8, 8, generator=g), torch.randint(0, 2, (6,), generator=g))
            state, _ = ef.train_step(model, state, batch, optimizer=opt, task=task)
        before, _ = ef.forward(model, state, probe, task=task, train=False)
        state = ef.finish_task(state, task=task, forward_transfer=forward_transfer)
        state = ef.recycle(state, generator=g)
        expected[task] = before
        for t, out in expected.items():
            now, _ = ef.forward(model, state, probe, task=t, train=False)
            assert torch.equal(now, out), f"task {t} changed after task {task}"


class _Wrap(nn.Module):
    def __init__(self, body: nn.Module, features: int) -> None:
        super().__init__()
        self.body = body
        self.heads = nn.ModuleList([nn.Linear(features, 2)])

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        return self.heads[task](self.body(x).flatten(1))


REFUSED = {
    "depthwise": (
        _Wrap(
            nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, groups=4)),
            4 * 16,
        ),
        "groups=4",
    ),
    "layernorm": (_Wrap(nn.Sequential(nn.Linear(16, 8), nn.LayerNorm(8)), 8), "LayerNorm"),
    "attention": (
        _Wrap(nn.Sequential(nn.Linear(16, 8), nn.MultiheadAttention(8, 2)), 8),
        "MultiheadAttention",
    ),
}


class _InputResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.heads = nn.ModuleList([nn.Linear(16, 2)])

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        return self.heads[task](self.fc(x) + x)


class _Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 8), nn.Linear(16, 8)
        self.heads = nn.ModuleList([nn.Linear(8, 2)])

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        return self.heads[task](self.a(x) * torch.sigmoid(self.b(x)))


@pytest.mark.parametrize(
    ("model", "shape", "why"),
    [
        (REFUSED["depthwise"][0], (2, 2, 4, 4), "groups=4"),
        (REFUSED["layernorm"][0], (2, 16), "LayerNorm"),
        (REFUSED["attention"][0], (2, 16), "MultiheadAttention"),
        (_InputResidual(), (2, 16), "network input is added"),
        (_Gated(), (2, 16), "does not know"),
        (nn.Linear(4, 2), (2, 4), "no `heads` ModuleList"),
    ],
)
def test_what_cannot_be_pruned_soundly_is_refused_naming_the_node(
    model: nn.Module, shape: tuple[int, ...], why: str
) -> None:
    with pytest.raises(ef.TopologyError, match=why):
        ef.trace_topology(model, torch.randn(shape))


class _SpatialMean(nn.Module):
    """Global average pooling written as view + mean, where height equals channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.heads = nn.ModuleList([nn.Linear(4, 2)])

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        h = self.conv(x)
        return self.heads[task](h.view(h.shape[0], h.shape[1], -1).mean(-1))


class _ChannelMean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.heads = nn.ModuleList([nn.Linear(16, 2)])

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        return self.heads[task](self.conv(x).mean(1).flatten(1))  # (B, 4, 4): H equals C


def test_reductions_are_judged_by_their_dimensions_not_by_coincident_sizes() -> None:
    topology = ef.trace_topology(_SpatialMean(), torch.randn(2, 2, 4, 4))
    assert topology.units[0].readers == (ef.Reader("heads.0", 1, 0),)
    with pytest.raises(ef.TopologyError, match="channel dimension"):
        ef.trace_topology(_ChannelMean(), torch.randn(2, 2, 4, 4))
