"""Step values stay on the device and are read many steps at a time."""

from __future__ import annotations

import torch

from eidetic_func.training.step_values import StepValues, guard_targets, read_steps, wide_float


def test_many_steps_are_read_at_once_and_targets_outside_the_head_are_named() -> None:
    logits = torch.zeros(3, 4)
    inside, inside_range = guard_targets(logits, torch.tensor([0, 3, 2]))
    outside, outside_range = guard_targets(logits, torch.tensor([-1, 9, 2]))
    assert torch.equal(inside, torch.tensor([0, 3, 2]))
    assert torch.equal(outside, torch.tensor([0, 3, 2]))  # clamped: the loss cannot fail
    soft, none = guard_targets(logits, torch.full((3, 4), 0.25))  # probabilities: no range
    assert none is None and soft.shape == (3, 4)
    steps = [
        StepValues(torch.tensor(0.5), torch.tensor(2), inside_range, 4),
        StepValues(torch.tensor(float("nan")), torch.tensor(0), None, 4),
        StepValues(torch.tensor(1.25), torch.tensor(1), outside_range, 4),
    ]
    rows, extra = read_steps(steps, torch.tensor(7.0))
    assert [(r.loss, r.correct, r.outside) for r in rows[::2]] == [
        (0.5, 2, None),
        (1.25, 1, (-1, 9)),
    ]
    assert rows[1].loss != rows[1].loss and rows[1].outside is None  # NaN, read as such
    assert extra == 7.0
    assert read_steps(steps[:1])[1] is None


def test_values_are_read_in_float64_except_on_apples_mps() -> None:
    assert wide_float(torch.device("cpu")) == torch.float64
    assert wide_float(torch.device("mps")) == torch.float32
