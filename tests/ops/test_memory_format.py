"""Finished tasks stay bit-identical whatever memory format the model, the inputs or a loaded
checkpoint have: every state holds contiguous tensors, and inputs are made contiguous."""

from __future__ import annotations

from pathlib import Path

import torch
from eidetic_func.models import ConvNet
from torch import Tensor

import eidetic_func as ef

CL = torch.channels_last


def _batches(seed: int, n: int = 3) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 1, 12, 12, generator=g), torch.randint(0, 2, (8,), generator=g))
        for _ in range(n)
    ]


def _channels_last_run(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ConvNet(1, [2, 2], num_layers=2, width=6, image_size=12).to(memory_format=CL)
    state = ef.init(model)
    assert all(p.is_contiguous() for p in [*state.params.values(), *state.buffers.values()])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for x, y in _batches(0):
        state, _ = ef.train_step(model, state, (x.to(memory_format=CL), y), optimizer=optimizer)
    state = ef.finish_task(state)
    probe = _batches(9, 1)[0][0]

    def logits(s: ef.EideticState) -> list[Tensor]:
        return [
            ef.forward(model, s, probe.to(memory_format=fmt), task=0, train=False)[0]
            for fmt in (torch.contiguous_format, CL)
        ]

    finished = logits(state)
    assert torch.equal(finished[0], finished[1]), "the input's format changed the logits"
    for x, y in _batches(1):
        state, _ = ef.train_step(
            model, state, (x.to(memory_format=CL), y), optimizer=optimizer, task=1
        )
        assert all(p.is_contiguous() for p in state.params.values())
    after = logits(state)
    assert all(torch.equal(a, b) for a, b in zip(after, finished)), "task 0 changed"
    loaded = ef.load(ef.save(tmp_path / "state.safetensors", state), model=model).state
    assert all(torch.equal(a, b) for a, b in zip(logits(loaded), finished)), "after a reload"
    grown, state = ef.grow(
        model, state, unit="blocks.0", neurons=2, generator=torch.Generator().manual_seed(1)
    )
    probe_logits = ef.forward(grown, state, probe.to(memory_format=CL), task=0, train=False)[0]
    assert torch.equal(probe_logits, finished[0]), "after growth"


def test_a_channels_last_network_keeps_finished_tasks_bit_identical(tmp_path: Path) -> None:
    _channels_last_run(tmp_path)
