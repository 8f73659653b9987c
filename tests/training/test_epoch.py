"""ef.train_epoch: the result of the same train_step calls, bit for bit, with no host read
inside a step; a bad step is found at the next read, named, and the last good state kept."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
import torch
from eidetic_func.models import MLP
from host_reads import HostReads
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import OPTIMIZERS, SEQUENCES, ModelSpec, batch, run_sequence

import eidetic_func as ef
from eidetic_func.core.pytree import tree_leaves

INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16}


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns (NaN == NaN, -0.0 != +0.0)."""
    return t.view(INT_VIEW[t.dtype]) if t.dtype in INT_VIEW else t


def assert_same_bits(a: Any, b: Any, what: str) -> None:
    left, right = tree_leaves(a), tree_leaves(b)
    assert len(left) == len(right), what
    for i, (x, y) in enumerate(zip(left, right)):
        if isinstance(x, torch.Tensor):
            assert x.shape == y.shape and torch.equal(bits(x), bits(y)), f"{what}: leaf {i}"
        else:
            assert x == y, f"{what}: leaf {i}"


def optimizer_tensors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]


def _states_to_compare(
    spec: ModelSpec, optimizer: str, forward_transfer: bool, seed: int, plan: Any
) -> Any:
    """(model, optimizer, state) at each point of a sequence where a task trains: after a
    pruning step (pruned entries in the masks), after a recycle (owned entries), and a
    finished task revisited at the end (its forward reads later tasks' entries as zero)."""
    model = spec.build(seed)
    opt = OPTIMIZERS[optimizer](list(model.parameters()))
    state = None
    for event in run_sequence(
        model, spec, opt, seed=seed, steps=1, forward_transfer=forward_transfer, plan=plan
    ):
        state = event.state
        if event.kind in ("prune", "recycle") and event.state.task < spec.num_tasks:
            yield model, opt, event.state
    assert state is not None
    yield model, opt, ef.revisit(state, task=0, forward_transfer=forward_transfer)


@settings(deadline=None)
@given(
    **{k: v for k, v in SEQUENCES.items() if k != "epochs"},
    check_every=st.none() | st.integers(1, 3),
    zero_frozen_grads=st.booleans(),
)
def test_an_epoch_is_bit_identical_to_the_same_train_steps(
    spec: ModelSpec,
    optimizer: str,
    forward_transfer: bool,
    seed: int,
    plan: tuple[int, ...] | None,
    check_every: int | None,
    zero_frozen_grads: bool,
) -> None:
    generator = torch.Generator().manual_seed(seed + 1)
    for model, opt, state in _states_to_compare(spec, optimizer, forward_transfer, seed, plan):
        data = [batch(spec, generator) for _ in range(3)]
        (m1, o1), (m2, o2) = copy.deepcopy((model, opt)), copy.deepcopy((model, opt))
        stepped, loss_sum, correct, workspace = state, 0.0, 0, ef.Workspace()
        for b in data:
            stepped, m = ef.train_step(
                m1,
                stepped,
                b,
                optimizer=o1,
                zero_frozen_grads=zero_frozen_grads,
                workspace=workspace,
            )
            loss_sum, correct = loss_sum + m.loss * m.count, correct + m.correct
        epoch, metrics = ef.train_epoch(
            m2,
            state,
            data,
            optimizer=o2,
            zero_frozen_grads=zero_frozen_grads,
            check_every=check_every,
        )
        assert_same_bits(epoch.params, stepped.params, "params")
        assert_same_bits(epoch.buffers, stepped.buffers, "buffers")
        assert (metrics.loss_sum, metrics.correct, metrics.count) == (loss_sum, correct, 18)
        assert_same_bits(optimizer_tensors(o2), optimizer_tensors(o1), "optimizer state")


def test_an_epoch_leaves_its_input_state_untouched_and_shares_no_tensor_with_the_model() -> None:
    model, state, opt, data = _setup(batches=4)
    fingerprint = [(t._version, t.clone()) for t in tree_leaves(state)]
    new, _ = ef.train_epoch(model, state, data, optimizer=opt)
    for t, (version, value) in zip(tree_leaves(state), fingerprint):
        assert t._version == version and torch.equal(t, value)
    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    assert not storages & {t.untyped_storage().data_ptr() for t in tree_leaves(new)}


def _setup(batches: int, seed: int = 0) -> tuple[MLP, ef.EideticState, Any, list[Any]]:
    torch.manual_seed(seed)
    model = MLP(6, [3], num_layers=2, width=8)
    data = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(batches)]
    return model, ef.init(model), torch.optim.SGD(model.parameters(), lr=0.1), data


def test_the_counter_catches_every_kind_of_host_read() -> None:
    t = torch.tensor([1.0, 0.0])
    reads = [
        lambda: t[0].item(),
        lambda: t.tolist(),
        lambda: bool(t[0]),
        lambda: float(t[0]),
        lambda: int(t[0]),
        lambda: [0, 1][torch.tensor(1)],
        lambda: t.nonzero(),
        lambda: torch.nonzero(t),
        lambda: t.numpy(),
        lambda: torch.equal(t, t),
    ]
    for read in reads:
        with HostReads() as counter:
            read()
        assert counter.count >= 1, read


def test_a_step_of_an_epoch_reads_nothing_from_the_device_and_the_epoch_reads_once() -> None:
    model, state, opt, data = _setup(batches=6)
    masks = ef.step_masks(state)  # prepared once per task (it reads the device)
    seen: list[int] = []
    with HostReads() as counter:
        ef.train_epoch(model, state, counter.between(data, seen), optimizer=opt, masks=masks)
    steps = [b - a for a, b in itertools.pairwise(seen)]  # from one batch to the next
    assert steps == [0] * 6
    assert counter.count - seen[-1] == 1  # the epoch's one read, in finish


def test_a_step_of_train_task_reads_nothing_from_the_device() -> None:
    """The shell's path: every training and recovery epoch of EideticNet's task, pruning
    included; the reads between two batches of one epoch are one step's."""
    model, state, opt, data = _setup(batches=5)
    seen: list[int] = []
    counter = HostReads()

    class Counted:
        def __iter__(self) -> Any:
            marks: list[int] = []
            seen.append(-1)  # an epoch starts
            yield from counter.between(data, marks)
            seen.extend(marks)

    config = ef.TrainConfig(max_epochs=2, patience=0)
    with counter:
        ef.train_task(
            model,
            state,
            Counted(),
            task=0,
            optimizer=opt,
            generator=torch.Generator().manual_seed(0),
            config=config,
            method=ef.EideticNet(pruning_step=0.5, max_masking_ratio=0.5, max_recovery_epochs=1),
        )
    epochs = [list(g) for g in _split(seen)]
    assert len(epochs) >= 3  # training, then recovery after pruning
    for marks in epochs:
        assert [b - a for a, b in itertools.pairwise(marks)] == [0] * len(data)


def _split(marks: list[int]) -> list[list[int]]:
    groups: list[list[int]] = []
    for m in marks:
        if m == -1:
            groups.append([])
        else:
            groups[-1].append(m)
    return groups


def _poisoned(data: list[Any], at: int) -> list[Any]:
    """``data`` with batch ``at`` (0-based) made of infinite inputs: a non-finite loss."""
    x, y = data[at]
    return [*data[:at], (torch.full_like(x, float("inf")), y), *data[at + 1 :]]


@pytest.mark.parametrize("check_every", [None, 2])
def test_a_non_finite_loss_is_named_at_its_step_and_the_last_good_state_kept(
    check_every: int | None,
) -> None:
    model, state, opt, data = _setup(batches=5)
    reference, good_model = copy.deepcopy((model, opt)), None
    with pytest.raises(ef.NonFiniteError, match="step 3 of") as caught:
        ef.train_epoch(model, state, _poisoned(data, 2), optimizer=opt, check_every=check_every)
    kept = caught.value.state  # type: ignore[attr-defined]
    if check_every is None:
        assert kept is state  # nothing was read as good after the start
    else:  # the check after step 2: the state of the first two train_steps
        good_model, good_opt = reference
        expected = state
        for b in data[:2]:
            expected, _ = ef.train_step(good_model, expected, b, optimizer=good_opt)
        assert_same_bits(kept.params, expected.params, "params")


def test_targets_outside_the_head_are_named_at_their_step_without_a_raw_torch_error() -> None:
    model, state, opt, data = _setup(batches=4)
    x, y = data[1]
    data[1] = (x, torch.full_like(y, 7))
    with pytest.raises(ef.ShapeError, match=r"got 7\.\.7 in step 2 of") as caught:
        ef.train_epoch(model, state, data, optimizer=opt)
    assert caught.value.state is state  # type: ignore[attr-defined]


def test_parameters_made_non_finite_by_the_last_step_are_found_at_the_next_read() -> None:
    model, state, opt, data = _setup(batches=3)
    calls = []

    def blow_up(grads: dict[str, torch.Tensor], apply: Any, params: Any) -> dict[str, torch.Tensor]:
        calls.append(1)
        if len(calls) < 3:
            return grads
        return {k: torch.full_like(g, float("inf")) for k, g in grads.items()}

    with pytest.raises(ef.NonFiniteError, match=r"one of steps 1\.\.3 of 'epoch'.*non-finite"):
        ef.train_epoch(model, state, data, optimizer=opt, grad_transform=blow_up)
    model, state, opt, data = _setup(batches=3)
    calls.clear()
    with pytest.raises(ef.NonFiniteError, match=r"^step 3 of 'epoch' produced .* non-finite"):
        ef.train_epoch(model, state, data, optimizer=opt, grad_transform=blow_up, check_every=1)


def test_an_epoch_without_batches_is_refused() -> None:
    model, state, opt, _ = _setup(batches=0)
    with pytest.raises(ef.DataError, match="no training data in 'epoch'"):
        ef.train_epoch(model, state, [], optimizer=opt)


@pytest.mark.parametrize("every", [0, -1, True, 1.5])
def test_check_every_must_be_a_positive_integer(every: Any) -> None:
    model, state, opt, data = _setup(batches=1)
    with pytest.raises(ef.ConfigError, match="check_every"):
        ef.train_epoch(model, state, data, optimizer=opt, check_every=every)
