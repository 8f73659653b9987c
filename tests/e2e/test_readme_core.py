"""The README's tour of the functional core runs as written, and keeps its promise."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
from readme_blocks import README, block_after


@pytest.mark.usefixtures("one_thread")
def test_the_functional_core_tour_trains_five_tasks_and_task_0_answers_as_it_did(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every task finds neurons left to train (it raised NothingToPrune at task 4 when each
    task kept four fifths of the free ones), and task 0's outputs after the fifth task are
    those the block computes at its end, recomputed from a copy of the state taken when
    task 0 was finished."""
    import eidetic_func as ef

    finished: dict[int, ef.EideticState] = {}
    real_finish = ef.finish_task

    def finish_and_keep(state: ef.EideticState, **kwargs: object) -> ef.EideticState:
        done = real_finish(state, **kwargs)
        finished[state.task] = done
        return done

    monkeypatch.setattr(ef, "finish_task", finish_and_keep)
    module = types.ModuleType("readme_core")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(block_after("## The functional core"), str(README), "exec"), module.__dict__)
    state, model, x = module.state, module.model, module.x
    assert state.finished == (0, 1, 2, 3, 4) and sorted(finished) == [0, 1, 2, 3, 4]
    then, _ = ef.forward(model, finished[0], x, task=0, train=False)
    assert torch.equal(module.logits, then)


def test_the_grown_checkpoint_example_loads_into_a_regrown_model_with_its_optimizer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import eidetic_func as ef

    monkeypatch.chdir(tmp_path)
    module = types.ModuleType("readme_growth")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    block = block_after("checkpoint yourself, regrow the fresh model")
    exec(compile(block, str(README), "exec"), module.__dict__)
    saved = ef.load(tmp_path / "grown.safetensors").state
    fresh, state = module.fresh, module.state
    assert [p.shape for p in fresh.parameters()] == [p.shape for p in module.model.parameters()]
    assert all(torch.equal(state.params[k], saved.params[k]) for k in saved.params)
    probe = torch.randn(3, 784)
    assert torch.equal(
        ef.forward(fresh, state, probe, task=0, train=False)[0],
        ef.forward(module.model, saved, probe, task=0, train=False)[0],
    )
