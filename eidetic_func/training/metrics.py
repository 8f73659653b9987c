"""Continual-learning metrics over an accuracy matrix, and task-incremental evaluation.

The accuracy matrix ``A`` (the ``matrix`` argument everywhere) has shape ``[T, T]``: ``A[i, j]`` is the accuracy (a fraction in
``[0, 1]``) on task ``j``'s test set after training tasks ``0..i``. Row ``i`` covers *every*
task, including the ones not trained yet (``j > i``), because forward transfer reads the
upper triangle. To score a run in progress, pass the leading block ``A[:k, :k]``.

Definitions follow the tutorial's "Measuring Forgetting" (``ContinualMetrics``):

- average accuracy  ``mean_j A[T-1, j]``
- forgetting        ``mean_{j<T-1} (max_{i>=j} A[i, j] - A[T-1, j])``   (always ``>= 0``)
- backward transfer ``mean_{j<T-1} (A[T-1, j] - A[j, j])``              (negative = forgetting)
- forward transfer  ``mean_{j>=1} A[j-1, j]``, or with a baseline ``b`` (GEM, Lopez-Paz &
  Ranzato 2017) ``mean_{j>=1} (A[j-1, j] - b[j])``

With a single task (``T == 1``) the three means are over nothing; they are defined as
``0.0`` (not NaN, so summaries stay valid JSON, and not ``None``, so every metric is a
``float``). Callers that must tell "no transfer" from "nothing to measure" check ``T``.

Every input is validated: a matrix that is not a non-empty square of finite values in
``[0, 1]`` raises :class:`ConfigError`. NaN placeholders for unevaluated entries are
rejected on purpose: evaluate the whole row, or slice the leading block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from eidetic_func.core.errors import ConfigError, DataError, ShapeError
from eidetic_func.core.state import EideticState
from eidetic_func.ops.forward import forward

# A [T, T] accuracy matrix as a tensor, an array, or nested sequences of floats.
MatrixLike = Tensor | np.ndarray | Sequence[Sequence[float]]
# A [T] vector (the forward-transfer baseline) in the same forms.
VectorLike = Tensor | np.ndarray | Sequence[float]


# --------------------------------------------------------------------------- matrix metrics


def average_accuracy(matrix: MatrixLike) -> float:
    """Mean accuracy over all ``T`` tasks after training the last one: ``mean(A[T-1])``."""
    a = _as_matrix(matrix)
    return float(a[-1].mean())


def forgetting(matrix: MatrixLike) -> float:
    """Mean over ``j < T-1`` of ``max_{i>=j} A[i, j] - A[T-1, j]``; ``>= 0``; ``0.0`` if ``T == 1``.

    The maximum runs over rows ``j..T-1`` only (from learning task ``j`` on), so accuracy a
    task had by chance before it was learned is not counted as forgotten.
    """
    a = _as_matrix(matrix)
    T = a.shape[0]
    if T == 1:
        return 0.0
    drops = [a[j:, j].max() - a[-1, j] for j in range(T - 1)]
    return float(np.mean(drops))


def backward_transfer(matrix: MatrixLike) -> float:
    """Mean over ``j < T-1`` of ``A[T-1, j] - A[j, j]``; negative means forgetting.

    ``0.0`` if ``T == 1``. Exactly ``0.0`` when every task's accuracy is unchanged since it
    was learned (what freezing promises), since ``x - x == 0`` in floating point.
    """
    a = _as_matrix(matrix)
    T = a.shape[0]
    if T == 1:
        return 0.0
    return float(np.mean([a[-1, j] - a[j, j] for j in range(T - 1)]))


def forward_transfer(matrix: MatrixLike, baseline: VectorLike | None = None) -> float:
    """Mean over ``j >= 1`` of the accuracy on task ``j`` just before learning it.

    Without ``baseline`` this is the tutorial's ``mean_j A[j-1, j]`` (an accuracy, in
    ``[0, 1]``). With ``baseline`` (shape ``[T]``, e.g. the accuracy of the freshly
    initialized network on each task) it is GEM's ``mean_j (A[j-1, j] - baseline[j])``, in
    ``[-1, 1]``: positive when earlier tasks helped. ``baseline[0]`` is not used. ``0.0`` if
    ``T == 1``.
    """
    a = _as_matrix(matrix)
    T = a.shape[0]
    b = _as_baseline(baseline, T) if baseline is not None else np.zeros(T)
    if T == 1:
        return 0.0
    return float(np.mean([a[j - 1, j] - b[j] for j in range(1, T)]))


@dataclasses.dataclass(frozen=True)
class ContinualSummary:
    """The four metrics of one accuracy matrix, and the matrix itself (fractions in [0, 1]).

    ``matrix`` (and ``baseline``, when forward transfer was measured against one) are tuples
    so that the summary is immutable; :meth:`to_dict` gives nested lists for JSON.
    """

    average_accuracy: float
    forgetting: float
    backward_transfer: float
    forward_transfer: float
    matrix: tuple[tuple[float, ...], ...]
    baseline: tuple[float, ...] | None = None

    @property
    def num_tasks(self) -> int:
        return len(self.matrix)

    def to_dict(self) -> dict[str, Any]:
        """Plain ``float`` / ``list`` / ``None`` values only, ready for ``json.dumps``."""
        return {
            "average_accuracy": self.average_accuracy,
            "forgetting": self.forgetting,
            "backward_transfer": self.backward_transfer,
            "forward_transfer": self.forward_transfer,
            "matrix": [list(row) for row in self.matrix],
            "baseline": None if self.baseline is None else list(self.baseline),
        }


def summarize(matrix: MatrixLike, *, baseline: VectorLike | None = None) -> ContinualSummary:
    """All four metrics of ``A`` (``[T, T]``); forward transfer is GEM-style if ``baseline``."""
    a = _as_matrix(matrix)
    b = None if baseline is None else _as_baseline(baseline, a.shape[0])
    return ContinualSummary(
        average_accuracy=average_accuracy(a),
        forgetting=forgetting(a),
        backward_transfer=backward_transfer(a),
        forward_transfer=forward_transfer(a, b),
        matrix=tuple(tuple(float(v) for v in row) for row in a),
        baseline=None if b is None else tuple(float(v) for v in b),
    )


def to_markdown(
    matrix: MatrixLike,
    task_names: Sequence[str] | None = None,
    *,
    baseline: VectorLike | None = None,
) -> str:
    """The matrix and its summary as two markdown tables, in percent with 2 decimals.

    Rows are "after training task i", columns "accuracy on task j". ``task_names`` (length
    ``T``) labels both; the default is ``task 0 .. task T-1``.
    """
    s = summarize(matrix, baseline=baseline)
    T = s.num_tasks
    if task_names is None:
        names = [f"task {t}" for t in range(T)]
    else:
        names = [str(n) for n in task_names]
        if len(names) != T:
            raise ConfigError(f"task_names has {len(names)} names for {T} tasks")
    names = [_md_escape(n) for n in names]
    lines = [
        "| after training \\ accuracy on (%) | " + " | ".join(names) + " |",
        "|---|" + "---:|" * T,
    ]
    lines += [
        f"| {names[i]} | " + " | ".join(_pct(v) for v in row) + " |"
        for i, row in enumerate(s.matrix)
    ]
    fwt = "forward transfer" + (" (vs. baseline)" if s.baseline is not None else "")
    lines += [
        "",
        "| metric | value (%) |",
        "|---|---:|",
        f"| average accuracy | {_pct(s.average_accuracy)} |",
        f"| forgetting | {_pct(s.forgetting)} |",
        f"| backward transfer | {_pct(s.backward_transfer)} |",
        f"| {fwt} | {_pct(s.forward_transfer)} |",
    ]
    return "\n".join(lines) + "\n"


def _pct(x: float) -> str:
    text = f"{100.0 * x:.2f}"
    # A tiny negative (e.g. -1e-17 from rounding) would print as "-0.00": show it as zero.
    return "0.00" if text == "-0.00" else text


def _md_escape(name: str) -> str:
    return name.replace("|", "\\|").replace("\n", " ")


def _as_matrix(matrix: MatrixLike) -> np.ndarray:
    """``A`` as a float64 ``[T, T]`` array, checked: non-empty, square, finite, in ``[0, 1]``."""
    a = _as_array(matrix, "the accuracy matrix")
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ConfigError(
            f"the accuracy matrix must be a non-empty square [T, T] array, got shape {a.shape}"
        )
    _check_fractions(a, "the accuracy matrix")
    return a


def _as_baseline(b: VectorLike, num_tasks: int) -> np.ndarray:
    v = _as_array(b, "baseline")
    if v.shape != (num_tasks,):
        raise ConfigError(
            f"baseline must have shape ({num_tasks},) for {num_tasks} tasks, got {v.shape}"
        )
    _check_fractions(v, "baseline")
    return v


def _as_array(x: MatrixLike | VectorLike, what: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        # A copy: callers may keep mutating their matrix, and results must not alias it.
        return np.array(x, dtype=np.float64)
    except (TypeError, ValueError) as e:  # ragged rows, strings, ...
        raise ConfigError(f"{what} must be numeric and rectangular: {e}") from None


def _check_fractions(a: np.ndarray, what: str) -> None:
    if not np.isfinite(a).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise ConfigError(
            f"{what} must be finite, got {a[bad]} at index {bad} (evaluate every entry, or "
            "pass the leading block of a run in progress)"
        )
    if (a < 0).any() or (a > 1).any():
        # Percentages (0..100) are the likely mistake; they would silently skew every metric.
        raise ConfigError(
            f"{what} must hold accuracies as fractions in [0, 1], got values in "
            f"[{a.min()}, {a.max()}]"
        )


# --------------------------------------------------------------------------- evaluation


def evaluate(
    model: nn.Module,
    state: EideticState,
    loader: Iterable[Any],
    *,
    task: int,
    device: torch.device | str | None = None,
) -> float:
    """Task-incremental accuracy of head ``task`` on ``loader``, a fraction in ``[0, 1]``.

    ``loader`` yields ``(x, y)`` batches (iterated once) with labels ``y`` of shape
    ``[batch]`` in ``0..C-1`` for the head's ``C`` classes. The task id is given (oracle):
    each batch runs through ``eidetic_func.ops.forward(model, state, x, task=task, train=False)``
    under ``torch.no_grad()``, so ``state`` is never modified. Accuracy is micro-averaged
    (correct / total over all samples), as torchmetrics' ``MulticlassAccuracy`` counts. ``device`` defaults to the
    device of the state's parameters. Raises :class:`DataError` for an empty loader or
    out-of-range labels, :class:`ShapeError` for malformed batches.
    """
    dev = _state_device(state) if device is None else torch.device(device)

    def predict(x: Tensor) -> Tensor:
        logits, _ = forward(model, state, x, task=task, train=False)
        return logits

    return _accuracy(predict, loader, dev, what=f"task {task}")


def accuracy_row(
    model: nn.Module,
    state: EideticState,
    loaders_by_task: Mapping[int, Iterable[Any]] | Sequence[Iterable[Any]],
    tasks: Iterable[int],
    *,
    device: torch.device | str | None = None,
) -> list[float]:
    """One row of the accuracy matrix: :func:`evaluate` on each of ``tasks``, in order.

    ``loaders_by_task[t]`` is task ``t``'s test loader (a mapping or a list indexed by task).
    For a full row after training task ``i``, pass every task, including later ones, so
    that forward transfer can be measured.
    """
    row = []
    for t in tasks:
        try:
            loader = loaders_by_task[t]
        except (KeyError, IndexError):
            raise DataError(f"no test loader for task {t}") from None
        row.append(evaluate(model, state, loader, task=t, device=device))
    return row


# The seam for other evaluation protocols: anything mapping a batch of inputs to logits.
# Class-incremental evaluation (a task router picking the head per sample) plugs in here.
Predict = Callable[[Tensor], Tensor]


def _accuracy(predict: Predict, loader: Iterable[Any], device: torch.device, *, what: str) -> float:
    # Counted on the device as torchmetrics' micro MulticlassAccuracy counts (argmax, then
    # correct / total in float32; a test holds them equal): importing torchmetrics costs
    # every process about 2.6 s (it imports torchvision and torch._dynamo).
    correct: Tensor | None = None
    total = 0
    with torch.no_grad():
        for n, batch in enumerate(loader):
            x, y = _unpack(batch, n)
            x, y = x.to(device), y.to(device)
            logits = predict(x)
            if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
                raise ShapeError(
                    f"batch {n}: logits have shape {tuple(logits.shape)} for {y.shape[0]} labels"
                )
            num_classes = int(logits.shape[1])
            lo, hi = int(y.min()), int(y.max())  # one range check per batch (a device sync)
            if lo < 0 or hi >= num_classes:
                raise DataError(
                    f"batch {n} of {what}: labels must be in 0..{num_classes - 1}, got "
                    f"{lo}..{hi} (are labels remapped per task?)"
                )
            hits = (logits.argmax(dim=1) == y).sum()
            correct = hits if correct is None else correct + hits
            total += y.shape[0]
    if correct is None:
        raise DataError(f"the test loader of {what} yielded no batches")
    return float((correct.float() / torch.tensor(float(total), device=device)).item())


def _unpack(batch: Any, n: int) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ShapeError(f"batch {n}: expected an (x, y) pair, got {type(batch).__name__}")
    x, y = batch
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ShapeError(
            f"batch {n}: x and y must be Tensors, got {type(x).__name__}, {type(y).__name__}"
        )
    if (
        y.dim() != 1
        or y.shape[0] == 0
        or y.dtype == torch.bool
        or y.is_floating_point()
        or y.is_complex()
    ):
        raise ShapeError(
            f"batch {n}: y must be a non-empty 1-D integer tensor of class indices, got "
            f"shape {tuple(y.shape)} dtype {y.dtype}"
        )
    return x, y


def _state_device(state: EideticState) -> torch.device:
    for v in state.params.values():
        return v.device
    return torch.device("cpu")


__all__ = [
    "ContinualSummary",
    "MatrixLike",
    "VectorLike",
    "accuracy_row",
    "average_accuracy",
    "backward_transfer",
    "evaluate",
    "forgetting",
    "forward_transfer",
    "summarize",
    "to_markdown",
]
