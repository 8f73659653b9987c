"""The run's checkpoint as a typed record: it round-trips exactly, through a tree and
through a file, and a foreign or tampered record is refused with an error naming the part."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from eidetic_func.models import MLP

import eidetic_func as ef
from eidetic_func.methods.registry import create
from eidetic_func.runner import record as run_record
from eidetic_func.runner.config import RunConfig
from eidetic_func.runner.record import RunCheckpoint, RunRecord, Sampling
from eidetic_func.training.loop import TaskProgress


def _checkpoint() -> tuple[RunCheckpoint, torch.optim.Optimizer]:
    model = MLP(6, [2, 2], num_layers=1, width=4)
    state = ef.init(model)
    generators = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    torch.rand(3, generator=generators[1])  # one generator moved on: its state differs
    record = RunRecord(
        state=state,
        mstate=create("ewc").init(model, state),  # a dataclass: encoded and rebuilt
        visit=1,
        progress=TaskProgress(phase="end", epoch=2, best=0.5, lrs=(0.1,)),
        matrix=((0.75, 0.5),),
        after_finish={0: (0.75,)},
        history=({"task": 0, "loss": 1.25},),
        router=None,
        seconds=3.5,
    )
    sampling = Sampling(
        data=tuple(g.get_state() for g in generators[:2]),
        core=generators[2].get_state(),
        epochs=(2, 0),
    )
    optimizer = torch.optim.Adam(model.parameters())
    return RunCheckpoint(RunConfig(progress=False), 1, record, sampling), optimizer


def _same(a: RunCheckpoint, b: RunCheckpoint) -> None:
    assert a.config == b.config and a.world_size == b.world_size
    ra, rb = a.record, b.record
    for name in ("visit", "progress", "matrix", "after_finish", "history", "router", "seconds"):
        assert getattr(ra, name) == getattr(rb, name), name
    assert ra.mstate == rb.mstate
    for key, value in ra.state.params.items():
        assert torch.equal(value, rb.state.params[key])
    assert all(torch.equal(x, y) for x, y in zip(a.sampling.data, b.sampling.data))
    assert torch.equal(a.sampling.core, b.sampling.core)
    assert a.sampling.epochs == b.sampling.epochs


def test_a_run_checkpoint_round_trips_through_its_tree_and_through_a_file(tmp_path: Path) -> None:
    checkpoint, optimizer = _checkpoint()
    _same(RunCheckpoint.from_tree(checkpoint.to_tree()), checkpoint)
    path = tmp_path / "run.safetensors"
    run_record.write(path, checkpoint, optimizer)
    read, contents = run_record.read(path)
    _same(read, checkpoint)
    assert contents.optimizer_state is not None  # the optimizer travels beside the record
    assert contents.meta["visit"] == 1  # the layout every run has written: meta and extra
    assert set(contents.extra) == {"data", "core", "epochs", "method"}


def test_reading_a_record_may_replace_the_saved_device() -> None:
    checkpoint, _ = _checkpoint()
    tree = checkpoint.to_tree()
    tree["meta"]["config"]["device"] = "cuda:7"  # saved on a machine with eight GPUs
    assert RunCheckpoint.from_tree(tree, device="cpu").config.device == "cpu"


def _tampered(change: Any) -> dict[str, Any]:
    checkpoint, _ = _checkpoint()
    tree = checkpoint.to_tree()
    change(tree)
    return tree


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.update(meta=None), "not the checkpoint of a run"),
        (lambda t: t["meta"].pop("config"), "not the checkpoint of a run"),
        (lambda t: t.update(extra=None), "no generator states"),
        (lambda t: t["meta"].pop("visit"), "lacks 'visit'"),
        (lambda t: t["meta"].update(visit="1"), "visit is '1', not a count"),
        (lambda t: t["meta"].update(world_size=-2), "world_size is -2"),
        (lambda t: t["meta"].update(matrix=[[0.5, "x"]]), "matrix is 'x', not a number"),
        (lambda t: t["meta"].update(after_finish={"zero": [0.5]}), "after_finish"),
        (lambda t: t["meta"].update(router=[1, 2]), "router is"),
        (lambda t: t["meta"].update(progress={"no_such_field": 1}), "task state is not valid"),
        (lambda t: t["meta"]["config"].update(lr=-1.0), "configuration is not valid here"),
        (lambda t: t["extra"].update(core="seed"), "generator states are not tensors"),
        (lambda t: t["extra"].update(epochs=[1, 2.5]), "epochs is 2.5"),
        (lambda t: t.update(history={"loss": 1}), "history is not a list"),
        (
            lambda t: t["extra"].update(method={"$dataclass": "os:system"}),
            "method or task state is not valid",
        ),
    ],
)
def test_a_foreign_or_tampered_record_is_refused_naming_what_is_wrong(
    change: Any, message: str
) -> None:
    with pytest.raises(ef.CheckpointError, match=message):
        RunCheckpoint.from_tree(_tampered(change))


def test_a_state_saved_with_ef_save_is_not_a_run_and_reading_it_says_so(tmp_path: Path) -> None:
    path = tmp_path / "state.safetensors"
    ef.save(path, ef.init(MLP(6, [2], num_layers=1, width=4)))
    with pytest.raises(ef.CheckpointError, match=r"state\.safetensors: it is not the checkpoint"):
        run_record.read(path)


def test_the_record_is_immutable() -> None:
    checkpoint, _ = _checkpoint()
    with pytest.raises(dataclasses.FrozenInstanceError):
        checkpoint.record.visit = 2  # type: ignore[misc]
