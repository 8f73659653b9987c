"""The open-world promise, over generated user networks (DESIGN.md, invariant 7): a network
the library accepts keeps every finished task bit-identical through later tasks, pruning,
growth and save/load, with the tasks disjoint when forward transfer is off; a network it
cannot keep so is refused with an error that names the node, tensor or module.

Networks come from a small grammar of fx-traceable blocks — Linear/BatchNorm/activation,
residual adds, concatenated branches, constant buffers, dropout in its correct forms, an
optional convolutional front (contiguous or channels_last) — and of blocks that break the
promise (a running buffer, dropout or noise in evaluation, pooling across neurons, a
forward that writes its weights, a per-neuron buffer added to a unit, an in-place
activation the trace does not follow), which must be refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import eidetic_func as ef

ACTIVATIONS = {"relu": F.relu, "tanh": torch.tanh, "gelu": F.gelu}
GOOD = ("dense", "residual", "branches", "constant offset", "dropout module", "dropout flag")
BAD = (
    "running offset",
    "channel offset",
    "functional dropout",
    "noise",
    "pool across neurons",
    "max-norm",
    "inplace activation",
)


class Block(nn.Module):
    """One block of the grammar: ``kind`` applied to a ``(batch, width)`` tensor."""

    def __init__(self, kind: str, width: int, out: int, bn: bool, act: str) -> None:
        super().__init__()
        self.kind, self.act = kind, act
        self.width = out if kind in ("dense", "branches", "max-norm") else width
        if kind in ("dense", "max-norm"):
            self.fc = nn.Linear(width, out)
            self.bn = ef.TaskBatchNorm1d(out) if bn else nn.Identity()
        elif kind == "residual":
            self.fc = nn.Linear(width, width)
        elif kind == "branches":
            self.a, self.b = nn.Linear(width, out // 2), nn.Linear(width, out - out // 2)
        elif kind in ("constant offset", "running offset"):
            self.register_buffer("offset", torch.tensor(0.25))
        elif kind == "channel offset":
            self.register_buffer("offset", torch.linspace(-0.5, 0.5, width))
        elif kind == "dropout module":
            self.drop = nn.Dropout(0.3)

    def forward(self, h: Tensor) -> Tensor:
        act = ACTIVATIONS[self.act]
        if self.kind == "dense":
            return act(self.bn(self.fc(h)))
        if self.kind == "residual":
            return h + act(self.fc(h))
        if self.kind == "branches":
            return torch.cat([act(self.a(h)), act(self.b(h))], dim=1)
        if self.kind == "constant offset":
            return h + self.offset
        if self.kind == "dropout module":
            return self.drop(h)
        if self.kind == "dropout flag":
            return F.dropout(h, 0.3, self.training)
        if self.kind == "running offset":
            if self.training:
                self.offset.mul_(0.9).add_(0.1 * h.detach().mean())
            return h + self.offset
        if self.kind == "channel offset":  # a per-neuron tensor that no layer holds
            return h + self.offset
        if self.kind == "inplace activation":  # writes the features in place
            return h.relu_()
        if self.kind == "functional dropout":
            return F.dropout(h, 0.3)
        if self.kind == "noise":
            return h + 0.01 * torch.randn(())
        if self.kind == "pool across neurons":
            return F.max_pool1d(h, 1)
        if self.kind == "max-norm":
            with torch.no_grad():
                self.fc.weight.renorm_(2, 0, 0.5)
            return act(self.bn(self.fc(h)))
        raise AssertionError(self.kind)


@dataclass(frozen=True)
class Spec:
    conv: bool
    channels_last: bool
    blocks: tuple[tuple[str, int, bool, str], ...]  # (kind, out width, bn, activation)
    seed: int

    @property
    def bad(self) -> bool:
        return any(kind in BAD for kind, *_ in self.blocks)


class UserNet(nn.Module):
    def __init__(self, spec: Spec) -> None:
        super().__init__()
        self.conv = spec.conv
        if spec.conv:
            self.stem = nn.Conv2d(1, 4, 3, padding=1)
            self.norm = ef.TaskBatchNorm2d(4)
            width = 4 * 4 * 4  # 8×8 images pooled to 4×4
        else:
            width = 6
        blocks = []
        for kind, out, bn, act in spec.blocks:
            blocks.append(Block(kind, width, out, bn, act))
            width = blocks[-1].width
        self.blocks = nn.ModuleList(blocks)
        self.heads = nn.ModuleList([nn.Linear(width, 2), nn.Linear(width, 2)])

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        h = x
        if self.conv:
            h = F.max_pool2d(F.relu(self.norm(self.stem(h))), 2).flatten(1)
        for block in self.blocks:
            h = block(h)
        return self.heads[task](h)


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    bad = draw(st.booleans())
    kinds = st.sampled_from(GOOD)
    blocks = [
        (
            draw(kinds),
            draw(st.integers(4, 10)),
            draw(st.booleans()),
            draw(st.sampled_from(list(ACTIVATIONS))),
        )
        for _ in range(draw(st.integers(1, 3)))
    ]
    blocks.insert(0, ("dense", draw(st.integers(4, 10)), draw(st.booleans()), "relu"))
    if bad:
        at = draw(st.integers(0, len(blocks)))
        blocks.insert(at, (draw(st.sampled_from(BAD)), draw(st.integers(4, 10)), False, "relu"))
    conv = draw(st.booleans())
    return Spec(conv, conv and draw(st.booleans()), tuple(blocks), draw(st.integers(0, 2**16)))


def _inputs(spec: Spec, n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g) if spec.conv else torch.randn(n, 6, generator=g)
    return x.to(memory_format=torch.channels_last) if spec.channels_last else x


def _train(
    model: nn.Module, state: ef.EideticState, opt: torch.optim.Optimizer, spec: Spec, seed: int
) -> ef.EideticState:
    g = torch.Generator().manual_seed(seed)
    for i in range(3):
        x, y = _inputs(spec, 8, seed * 10 + i), torch.randint(0, 2, (8,), generator=g)
        state, _ = ef.train_step(model, state, (x, y), optimizer=opt, task=state.task)
    return state


def _logits(model: nn.Module, state: ef.EideticState, probe: Tensor, task: int) -> Tensor:
    return ef.forward(model, state, probe, task=task, train=False)[0]


@given(spec=specs(), forward_transfer=st.booleans())
def test_a_user_network_is_refused_naming_the_cause_or_keeps_its_finished_tasks(
    spec: Spec, forward_transfer: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    torch.manual_seed(spec.seed)
    model = UserNet(spec)
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    try:
        topology = ef.trace_topology(model, torch.zeros_like(_inputs(spec, 2, 0)))
    except ef.TopologyError as e:
        refusal = str(e)
    else:
        refusal = None
    if refusal is not None:  # a refusal names where: a graph node, or the tensor written
        assert "node" in refusal or "writes its" in refusal, refusal
        return
    assert not spec.bad, f"accepted a network that cannot keep its tasks: {spec}"
    state = ef.init(model, topology=topology)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = _train(model, state, opt, spec, seed=1)
    batch = [(_inputs(spec, 8, 5), torch.randint(0, 2, (8,)))]
    scores = ef.score(model, state, batch, method="taylor")
    state = ef.bridge(ef.prune(state, scores, fraction=0.25, method="taylor"))
    state = _train(model, state, opt, spec, seed=2)
    state = ef.finish_task(state, forward_transfer=forward_transfer)
    probe = _inputs(spec, 5, 9)
    finished = _logits(model, state, probe, 0)

    state = _train(model, state, opt, spec, seed=3)
    assert torch.equal(_logits(model, state, probe, 0), finished), "task 0 changed"
    if not forward_transfer:  # task 1 reads nothing task 0 owns
        current = _logits(model, state, probe, 1)
        perturbed = {
            k: torch.where(state.owner[k] == 0, p + 1.0, p) for k, p in state.params.items()
        }
        assert torch.equal(_logits(model, state.replace(params=perturbed), probe, 1), current)
    path = tmp_path_factory.mktemp("user") / "state.safetensors"
    loaded = ef.with_topology(ef.load(ef.save(path, state)).state, topology)
    assert torch.equal(_logits(model, loaded, probe, 0), finished), "changed by save/load"
    unit = topology.units[0].name
    grown, state = ef.grow(
        model, state, unit=unit, neurons=2, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(_logits(grown, state, probe, 0), finished), "changed by growth"
