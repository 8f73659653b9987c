"""Fuzzing the public API with bad inputs: only EideticError, and the state never changes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from eidetic_func.models import MLP
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import prune_rows

import eidetic_func as ef
from eidetic_func.runner.config import EIDETIC_SETTINGS, RunConfig
from eidetic_func.training.config import TrainConfig

MODEL = MLP(6, [2, 3], num_layers=2, width=5)
TOPOLOGY = MODEL.topology()


def _state() -> ef.EideticState:
    torch.manual_seed(0)
    state = ef.init(MODEL)
    state = prune_rows(state, TOPOLOGY, "blocks.0.linear.weight", [0])
    return ef.recycle(ef.finish_task(state, task=0), generator=torch.Generator().manual_seed(0))


STATE = _state()

weird_numbers = st.one_of(
    st.integers(-5, 10),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.booleans(),
    st.text(max_size=3),
)
weird_tensors = st.one_of(
    st.builds(
        lambda shape: torch.randn(tuple(shape)), st.lists(st.integers(0, 7), min_size=0, max_size=4)
    ),
    st.builds(lambda n: torch.full((n, 6), float("nan")), st.integers(1, 3)),
    st.builds(lambda n: torch.ones(n, 6, dtype=torch.int64), st.integers(1, 3)),
    st.builds(lambda n: torch.ones(n, 6, dtype=torch.bool), st.integers(1, 3)),
    st.builds(lambda n: torch.randn(n, 6, dtype=torch.float64), st.integers(1, 3)),
    st.just([[0.0] * 6]),
    st.none(),
)


def _fingerprint(state: ef.EideticState) -> list[tuple[int, torch.Tensor]]:
    return [(t._version, t.clone()) for t in ef.tree_leaves(state)]


def _call_safely(call: Callable[[], Any]) -> None:
    """The call may succeed or raise an EideticError; nothing else, and STATE is untouched."""
    before = _fingerprint(STATE)
    with contextlib.suppress(ef.EideticError):
        call()
    after = _fingerprint(STATE)
    for (v0, t0), (v1, t1) in zip(before, after):
        assert v0 == v1 and torch.equal(t0, t1), "the state was modified"


@given(x=weird_tensors, task=weird_numbers, train=st.booleans())
def test_forward_with_bad_inputs(x: Any, task: Any, train: bool) -> None:
    _call_safely(lambda: ef.forward(MODEL, STATE, x, task=task, train=train))


@given(x=weird_tensors, y=weird_tensors, task=weird_numbers)
@settings(max_examples=20)
def test_train_step_with_bad_inputs(x: Any, y: Any, task: Any) -> None:
    opt = torch.optim.SGD(MODEL.parameters(), lr=0.1)
    _call_safely(lambda: ef.train_step(MODEL, STATE, (x, y), optimizer=opt, task=task))


@given(task=weird_numbers, forward_transfer=st.booleans())
def test_lifecycle_with_bad_tasks(task: Any, forward_transfer: bool) -> None:
    _call_safely(lambda: ef.finish_task(STATE, task=task, forward_transfer=forward_transfer))
    _call_safely(lambda: ef.revisit(STATE, task=task))
    _call_safely(lambda: ef.apply_task_mask(STATE, task))


@given(
    fraction=weird_numbers,
    method=st.one_of(st.sampled_from(ef.SCORING_METHODS), st.text(max_size=4)),
    constant_step=st.booleans(),
    corrupt=st.sampled_from(["none", "nan", "shape", "missing", "inf"]),
)
def test_prune_with_bad_fractions_methods_and_scores(
    fraction: Any, method: Any, constant_step: bool, corrupt: str
) -> None:
    scores = ef.score(MODEL, STATE, None, method="l2", task=1)
    name = TOPOLOGY.units[0].name
    if corrupt == "nan":
        scores = {**scores, name: torch.full_like(scores[name], float("nan"))}
    elif corrupt == "inf":
        scores = {**scores, name: torch.full_like(scores[name], float("inf"))}
    elif corrupt == "shape":
        scores = {**scores, name: scores[name][:-1]}
    elif corrupt == "missing":
        scores = {k: v for k, v in scores.items() if k != name}
    _call_safely(
        lambda: ef.prune(
            STATE, scores, fraction=fraction, method=method, constant_step=constant_step
        )
    )


@given(
    method=st.one_of(st.sampled_from(ef.SCORING_METHODS), st.text(max_size=5)),
    task=weird_numbers,
    batches=st.one_of(
        st.none(), st.just([]), weird_tensors.map(lambda x: [(x, torch.zeros(2, dtype=torch.long))])
    ),
)
@settings(max_examples=20)
def test_score_with_bad_inputs(method: Any, task: Any, batches: Any) -> None:
    _call_safely(
        lambda: ef.score(
            MODEL,
            STATE,
            batches,
            method=method,
            task=task,
            generator=torch.Generator(),
        )
    )


@given(field=st.sampled_from(list(TrainConfig.__dataclass_fields__)), value=weird_numbers)
def test_train_config_with_bad_values(field: str, value: Any) -> None:
    with contextlib.suppress(ef.EideticError):
        TrainConfig(**{field: value})


@given(field=st.sampled_from(list(EIDETIC_SETTINGS)), value=weird_numbers)
def test_eidetic_settings_with_bad_values(field: str, value: Any) -> None:
    with contextlib.suppress(ef.EideticError):
        ef.EideticNet(**{field: value})


@given(
    field=st.sampled_from([f for f in RunConfig.__dataclass_fields__ if f != "train"]),
    value=weird_numbers,
)
def test_run_config_with_bad_values(field: str, value: Any) -> None:
    with contextlib.suppress(ef.EideticError):
        RunConfig(**{field: value})


@given(name=st.text(max_size=12), limit=weird_numbers, tasks=weird_numbers)
@settings(max_examples=15)
def test_load_sequence_with_bad_arguments(name: str, limit: Any, tasks: Any) -> None:
    with contextlib.suppress(ef.EideticError):
        ef.data.load_sequence(name, None, limit_per_class=limit, num_tasks=tasks)


@given(junk=st.binary(max_size=64))
@settings(max_examples=10)
def test_load_of_junk_files(junk: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("junk") / "file.safetensors"
    path.write_bytes(junk)
    with pytest.raises(ef.CheckpointError):
        ef.load(path, model=MODEL)


def test_wrong_model_for_a_checkpoint(tmp_path: Path) -> None:
    ef.save(tmp_path / "c.safetensors", STATE)
    with pytest.raises(ef.CheckpointError, match="does not fit the model"):
        ef.load(tmp_path / "c.safetensors", model=MLP(6, [2, 3], num_layers=2, width=7))


weird_labels = st.one_of(
    st.builds(lambda n: torch.zeros(n), st.integers(1, 3)),  # float class indices
    st.builds(lambda n: torch.zeros(n, dtype=torch.bool), st.integers(1, 3)),
    st.builds(lambda n: torch.zeros(n, dtype=torch.int32), st.integers(1, 3)),
    st.builds(lambda n: torch.zeros(n, dtype=torch.uint8), st.integers(1, 3)),
    st.builds(lambda n: torch.full((n,), 7), st.integers(1, 3)),  # out of the head's range
    st.builds(lambda n: torch.zeros(n, 3), st.integers(1, 3)),  # probabilities, wrong width
)


@given(labels=weird_labels)
@settings(max_examples=20)
def test_train_step_with_bad_label_dtypes_and_single_samples(labels: Any) -> None:
    opt = torch.optim.SGD(MODEL.parameters(), lr=0.1)
    x = torch.randn(labels.shape[0], 6)
    _call_safely(lambda: ef.train_step(MODEL, STATE, (x, labels), optimizer=opt, task=1))


@given(
    device=st.one_of(
        st.sampled_from(["meta", "cuda", "cuda:7", "mps", "bogus", "", "cpu:x"]), weird_numbers
    )
)
@settings(max_examples=20)
def test_devices_that_cannot_train_here_are_refused(device: Any) -> None:
    if isinstance(device, str) and device.startswith("cuda") and torch.cuda.is_available():
        return
    with contextlib.suppress(ef.EideticError):
        RunConfig(device=device)
    with contextlib.suppress(ef.EideticError):
        ef.load(Path("no-such-file.safetensors"), map_location=device)


@given(generator=st.one_of(weird_numbers, st.just(torch.Generator().manual_seed(0))))
def test_recycle_with_bad_generators(generator: Any) -> None:
    _call_safely(lambda: ef.recycle(STATE, generator=generator))


@given(seed=st.one_of(st.integers(-(2**70), 2**70), weird_numbers))
def test_seeds_beyond_what_generators_hold_are_refused(seed: Any) -> None:
    with contextlib.suppress(ef.EideticError):
        RunConfig(seed=seed)
