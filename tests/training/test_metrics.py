"""Continual-learning metrics: hand-computed matrices, properties, and evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from eidetic_func.models import MLP
from hypothesis import given
from hypothesis import strategies as st

import eidetic_func as ef
from eidetic_func.training.metrics import (
    ContinualSummary,
    accuracy_row,
    average_accuracy,
    backward_transfer,
    evaluate,
    forgetting,
    forward_transfer,
    summarize,
    to_markdown,
)

# Rows: after training task i; columns: accuracy on task j.
A3 = [
    [0.90, 0.20, 0.10],
    [0.70, 0.80, 0.30],
    [0.60, 0.85, 0.95],
]
# average accuracy = (0.60 + 0.85 + 0.95) / 3                       = 0.80
# forgetting: j=0: max(0.90, 0.70, 0.60) - 0.60 = 0.30
#             j=1: max(0.80, 0.85) - 0.85       = 0.00   -> mean    = 0.15
# BWT:        j=0: 0.60 - 0.90 = -0.30; j=1: 0.85 - 0.80 = +0.05 -> mean = -0.125
# FWT:        A[0, 1] = 0.20, A[1, 2] = 0.30                 -> mean = 0.25
# FWT vs baseline b = [0.5, 0.1, 0.2]: (0.20 - 0.1) + (0.30 - 0.2) = 0.2 -> mean = 0.10


def test_hand_computed_3x3() -> None:
    assert average_accuracy(A3) == pytest.approx(0.80)
    assert forgetting(A3) == pytest.approx(0.15)
    assert backward_transfer(A3) == pytest.approx(-0.125)
    assert forward_transfer(A3) == pytest.approx(0.25)
    assert forward_transfer(A3, baseline=[0.5, 0.1, 0.2]) == pytest.approx(0.10)


def test_forgetting_takes_the_max_from_the_row_that_learned_the_task_on() -> None:
    # Task 1 scores 0.95 by luck before it is learned (row 0), 0.70 once learned and after.
    # The tutorial's max over rows j.. ignores row 0: nothing of task 1 was forgotten.
    A = [
        [0.80, 0.95, 0.10],
        [0.80, 0.70, 0.10],
        [0.80, 0.70, 0.90],
    ]
    assert forgetting(A) == 0.0
    assert backward_transfer(A) == 0.0


def test_perfect_memory_has_exactly_zero_forgetting_and_bwt() -> None:
    # Every column is constant from the diagonal down (what freezing guarantees); the upper
    # triangle (tasks not learned yet) is arbitrary.
    A = np.array(
        [
            [0.91, 0.33, 0.47, 0.12],
            [0.91, 0.77, 0.52, 0.25],
            [0.91, 0.77, 0.63, 0.30],
            [0.91, 0.77, 0.63, 0.99],
        ]
    )
    assert forgetting(A) == 0.0
    assert backward_transfer(A) == 0.0
    assert average_accuracy(A) == pytest.approx((0.91 + 0.77 + 0.63 + 0.99) / 4)
    assert forward_transfer(A) == pytest.approx((0.33 + 0.52 + 0.30) / 3)


def test_monotone_forgetting() -> None:
    # Each task peaks right after it is learned and loses 0.1 per later task.
    A = [
        [0.9, 0.0, 0.0],
        [0.8, 0.9, 0.0],
        [0.7, 0.8, 0.9],
    ]
    # forgetting: j=0: 0.9 - 0.7 = 0.2; j=1: 0.9 - 0.8 = 0.1 -> 0.15; BWT = -0.15.
    assert forgetting(A) == pytest.approx(0.15)
    assert backward_transfer(A) == pytest.approx(-0.15)
    assert forward_transfer(A) == 0.0
    assert average_accuracy(A) == pytest.approx(0.8)


def test_single_task_transfer_metrics_are_zero() -> None:
    assert average_accuracy([[0.7]]) == pytest.approx(0.7)
    assert forgetting([[0.7]]) == 0.0
    assert backward_transfer([[0.7]]) == 0.0
    assert forward_transfer([[0.7]]) == 0.0
    assert forward_transfer([[0.7]], baseline=[0.5]) == 0.0


def test_tensor_array_and_list_inputs_agree_and_are_not_modified() -> None:
    t = torch.tensor(A3, dtype=torch.float32)
    before = t.clone()
    s_list, s_tensor, s_array = summarize(A3), summarize(t), summarize(np.array(A3))
    assert torch.equal(t, before)
    assert s_list == s_array
    # float32 storage rounds the entries; the metrics agree to float32 precision.
    for name in ("average_accuracy", "forgetting", "backward_transfer", "forward_transfer"):
        assert getattr(s_tensor, name) == pytest.approx(getattr(s_list, name), abs=1e-6)


@pytest.mark.parametrize(
    ("matrix", "match"),
    [
        ([], "non-empty square"),
        ([[0.5, 0.5]], "non-empty square"),
        ([[0.5], [0.5]], "non-empty square"),
        ([0.5, 0.5], "non-empty square"),
        ([[0.5, 0.5], [0.5]], "rectangular"),
        ([["a", "b"], ["c", "d"]], "numeric"),
        ([[0.5, float("nan")], [0.5, 0.5]], r"finite, got nan at index \(0, 1\)"),
        ([[0.5, 0.5], [float("inf"), 0.5]], "finite"),
        ([[50.0, 10.0], [40.0, 60.0]], r"fractions in \[0, 1\]"),
        ([[-0.1, 0.5], [0.5, 0.5]], r"fractions in \[0, 1\]"),
    ],
)
def test_invalid_matrices_raise_config_error(matrix: object, match: str) -> None:
    for fn in (average_accuracy, forgetting, backward_transfer, forward_transfer, summarize):
        with pytest.raises(ef.ConfigError, match=match):
            fn(matrix)  # type: ignore[arg-type]


def test_invalid_baseline_raises_config_error() -> None:
    with pytest.raises(ef.ConfigError, match=r"shape \(3,\)"):
        forward_transfer(A3, baseline=[0.5, 0.5])
    with pytest.raises(ef.ConfigError, match="finite"):
        forward_transfer(A3, baseline=[0.5, float("nan"), 0.5])
    with pytest.raises(ef.ConfigError, match="fractions"):
        summarize(A3, baseline=[0.5, 2.0, 0.5])


def test_summary_to_dict_is_plain_json() -> None:
    s = summarize(A3, baseline=[0.5, 0.1, 0.2])
    d = s.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["matrix"] == A3
    assert d["baseline"] == [0.5, 0.1, 0.2]
    assert d["forward_transfer"] == pytest.approx(0.10)
    assert s.num_tasks == 3
    with pytest.raises(AttributeError):
        s.forgetting = 0.0  # type: ignore[misc]
    assert summarize([[1.0]]).to_dict()["baseline"] is None


def test_to_markdown() -> None:
    md = to_markdown(A3, task_names=["mnist", "fashion|mnist", "kmnist"])
    lines = md.splitlines()
    assert lines[0] == "| after training \\ accuracy on (%) | mnist | fashion\\|mnist | kmnist |"
    assert lines[1] == "|---|---:|---:|---:|"
    assert lines[2] == "| mnist | 90.00 | 20.00 | 10.00 |"
    assert lines[4] == "| kmnist | 60.00 | 85.00 | 95.00 |"
    assert "| average accuracy | 80.00 |" in lines
    assert "| forgetting | 15.00 |" in lines
    assert "| backward transfer | -12.50 |" in lines
    assert "| forward transfer | 25.00 |" in lines
    default = to_markdown([[0.5]], baseline=[0.25])
    assert "| task 0 | 50.00 |" in default
    assert "| forward transfer (vs. baseline) | 0.00 |" in default
    with pytest.raises(ef.ConfigError, match="2 names for 3 tasks"):
        to_markdown(A3, task_names=["a", "b"])


def test_markdown_never_prints_negative_zero() -> None:
    # 0.1 + 0.2 is 0.30000000000000004, so BWT is about -5.6e-17: it must print as 0.00.
    A = [[0.1 + 0.2, 0.0], [0.3, 0.5]]
    assert -1e-15 < backward_transfer(A) < 0.0
    assert "| backward transfer | 0.00 |" in to_markdown(A)


# --------------------------------------------------------------------------- properties


def square_matrices(max_tasks: int = 5) -> st.SearchStrategy[list[list[float]]]:
    fractions = st.floats(0.0, 1.0)
    return st.integers(1, max_tasks).flatmap(
        lambda n: st.lists(st.lists(fractions, min_size=n, max_size=n), min_size=n, max_size=n)
    )


@given(square_matrices())
def test_forgetting_is_nonnegative_and_bounds_bwt(matrix: list[list[float]]) -> None:
    A = matrix
    f, b = forgetting(A), backward_transfer(A)
    assert 0.0 <= f <= 1.0
    assert -1.0 <= b <= 1.0
    # Per task, max_{i>=j} A[i, j] >= A[j, j], so forgetting >= -BWT (exactly, in floats:
    # rounding is monotone).
    assert f + b >= 0.0
    assert 0.0 <= forward_transfer(A) <= 1.0
    d = summarize(A).to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d


@st.composite
def peaked_matrices(draw: st.DrawFn) -> np.ndarray:
    """Each task's accuracy peaks when it is learned and never rises afterwards."""
    T = draw(st.integers(1, 5))
    A = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=T * T, max_size=T * T)))
    A = A.reshape(T, T)
    for j in range(T):
        for i in range(j + 1, T):
            A[i, j] = draw(st.floats(0.0, A[i - 1, j]))
    return A


@given(peaked_matrices())
def test_bwt_is_minus_forgetting_when_accuracy_only_decays(matrix: np.ndarray) -> None:
    A = matrix
    # max_{i>=j} A[i, j] = A[j, j], so each forgetting term is -(BWT term); negation is exact.
    assert backward_transfer(A) == -forgetting(A)


# --------------------------------------------------------------------------- evaluation


@pytest.fixture
def tiny() -> tuple[MLP, ef.EideticState]:
    torch.manual_seed(0)
    model = MLP(4, [2, 3], num_layers=1, width=3)
    return model, ef.init(model)


def _reference_logits(model: MLP, x: torch.Tensor, task: int) -> torch.Tensor:
    """The model's own eval-mode output, computed without eidetic_func."""
    model.eval()
    try:
        with torch.no_grad():
            return model(x, task)
    finally:
        model.train()


def _snapshot(state: ef.EideticState) -> dict[str, torch.Tensor]:
    groups = {"p": state.params, "b": state.buffers, "o": state.owner, "k": state.keep}
    return {f"{g}.{k}": v.clone() for g, d in groups.items() for k, v in d.items()}


def test_evaluate_matches_hand_computed_argmax_accuracy(tiny) -> None:
    model, state = tiny
    x = torch.randn(10, 4)
    pred = _reference_logits(model, x, task=1).argmax(1)
    # The first 7 labels agree with the argmax, the last 3 do not: accuracy 0.7 exactly.
    y = torch.cat([pred[:7], (pred[7:] + 1) % 3])
    loader = [(x[:4], y[:4]), (x[4:], y[4:])]
    before = _snapshot(state)
    model_before = {k: v.clone() for k, v in model.state_dict().items()}

    acc = evaluate(model, state, loader, task=1)

    assert acc == pytest.approx(0.7)
    assert isinstance(acc, float)
    after = _snapshot(state)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert all(torch.equal(v, model_before[k]) for k, v in model.state_dict().items())
    assert model.training  # the model's flags are restored
    # Micro accuracy does not depend on how the samples are batched.
    assert evaluate(model, state, [(x, y)], task=1, device="cpu") == pytest.approx(0.7)


@given(
    batches=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    classes=st.integers(1, 5),
    ties=st.booleans(),
    nan=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_evaluate_counts_exactly_as_torchmetrics_micro_accuracy(
    batches: list[int], classes: int, ties: bool, nan: bool, seed: int
) -> None:
    """The same float to the last bit as torchmetrics' ``MulticlassAccuracy(average="micro")``
    (which ``evaluate`` does not import), ties and NaN logits included."""
    from torchmetrics.classification import MulticlassAccuracy

    from eidetic_func.training.metrics import _accuracy

    g = torch.Generator().manual_seed(seed)
    loader = []
    for size in batches:
        logits = torch.randn(size, classes, generator=g)
        if ties:
            logits = logits.round()
        if nan:
            logits[0, -1] = float("nan")
        loader.append((logits, torch.randint(0, classes, (size,), generator=g)))
    metric = MulticlassAccuracy(num_classes=classes, average="micro", validate_args=False)
    for logits, y in loader:
        metric.update(logits, y)
    expected = float(metric.compute().item())
    assert _accuracy(lambda x: x, loader, torch.device("cpu"), what="t") == expected


def test_evaluate_uses_the_task_subnetwork_after_training(tiny) -> None:
    model, state = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x0, y0 = torch.randn(16, 4), torch.randint(0, 2, (16,))
    for _ in range(5):
        state, _ = ef.train_step(model, state, (x0, y0), optimizer=opt, task=0)
    state = ef.finish_task(state, task=0)
    logits, _ = ef.forward(model, state, x0, task=0, train=False)
    expected = (logits.argmax(1) == y0).double().mean().item()
    assert evaluate(model, state, [(x0, y0)], task=0) == pytest.approx(expected)


def test_accuracy_row(tiny) -> None:
    model, state = tiny
    x = torch.randn(6, 4)
    loaders = {
        0: [(x, _reference_logits(model, x, 0).argmax(1))],  # all correct
        1: [(x, (_reference_logits(model, x, 1).argmax(1) + 1) % 3)],  # all wrong
    }
    assert accuracy_row(model, state, loaders, [0, 1]) == [1.0, 0.0]
    assert accuracy_row(model, state, [loaders[0], loaders[1]], [1]) == [0.0]
    with pytest.raises(ef.DataError, match="no test loader for task 2"):
        accuracy_row(model, state, loaders, [0, 2])
    row = accuracy_row(model, state, loaders, range(2))
    assert isinstance(summarize([row, row]), ContinualSummary)


def test_evaluate_rejects_bad_data(tiny) -> None:
    model, state = tiny
    x = torch.randn(3, 4)
    with pytest.raises(ef.DataError, match="yielded no batches"):
        evaluate(model, state, [], task=0)
    with pytest.raises(ef.DataError, match=r"labels must be in 0..1, got 0..2"):
        evaluate(model, state, [(x, torch.tensor([0, 1, 2]))], task=0)
    with pytest.raises(ef.DataError, match="labels must be in"):
        evaluate(model, state, [(x, torch.tensor([0, -1, 1]))], task=0)
    with pytest.raises(ef.ShapeError, match=r"expected an \(x, y\) pair"):
        evaluate(model, state, [x], task=0)
    with pytest.raises(ef.ShapeError, match="integer tensor"):
        evaluate(model, state, [(x, torch.zeros(3))], task=0)
    with pytest.raises(ef.ShapeError, match="logits have shape"):
        evaluate(model, state, [(x, torch.zeros(2, dtype=torch.long))], task=0)
    with pytest.raises(ef.ShapeError):  # the model's own input check, via forward
        evaluate(model, state, [(torch.randn(3, 5), torch.zeros(3, dtype=torch.long))], task=0)
    with pytest.raises(ef.TaskError):
        evaluate(model, state, [(x, torch.zeros(3, dtype=torch.long))], task=2)


def test_evaluate_on_the_state_device_by_default(tiny) -> None:
    model, state = tiny
    x = torch.randn(5, 4)
    y = _reference_logits(model, x, 0).argmax(1)
    assert math.isclose(evaluate(model, state, [(x, y)], task=0), 1.0)
