"""DESIGN.md invariants 1-4 as Hypothesis properties over models, optimizers and sequences.

Every example trains a small model of every family (MLP, ConvNet, ResNet basic and
bottleneck; with or without BatchNorm) through a whole task sequence with ONE optimizer
object reused across tasks, pruning, finishing and recycling each task, with forward
transfer on or off. Pruning is random or follows a plan that reaches the corners: layers
wholly owned by an earlier task, neurons left with only a bias or BatchNorm shift.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from strategies import (
    ALL_KINDS,
    DEVICES,
    KEEP_ALL,
    KEEP_ONE,
    OPTIMIZERS,
    SEQUENCES,
    ModelSpec,
    assert_owned_unchanged,
    batch,
    model_specs,
    optimizer_names,
    owned_snapshot,
    pruning_plans,
    run_sequence,
)

import eidetic_func as ef
from eidetic_func.training import step_compile

SEQUENCE = {**SEQUENCES, "steps": st.integers(1, 4)}


def chained_method() -> ef.Method:
    """Every part of a step plan at once: ER's own loss, EWC's penalty, SI's gradient
    transform and state update."""
    from eidetic_func.methods import ER, EWC, SI

    return ef.chain(EWC(lambda_ewc=10.0), SI(c=0.5), ER(buffer_size=16, buffer_sample_size=4))


@pytest.mark.parametrize("device", DEVICES)
@given(**SEQUENCE, chained=st.booleans())
def test_owned_parameters_and_bn_statistics_are_bit_identical_under_any_optimizer(
    device: str,
    spec: ModelSpec,
    optimizer: str,
    forward_transfer: bool,
    seed: int,
    steps: int,
    plan: tuple[int, ...] | None,
    chained: bool,
    epochs: bool,
) -> None:
    model = spec.build(seed).to(device)
    opt = OPTIMIZERS[optimizer](list(model.parameters()))
    snapshot = None
    for event in run_sequence(
        model,
        spec,
        opt,
        seed=seed,
        steps=steps,
        forward_transfer=forward_transfer,
        plan=plan,
        method=chained_method() if chained else None,
        device=device,
        epochs=epochs,
    ):
        if snapshot is not None:
            assert_owned_unchanged(snapshot, event.state, f"{event.kind} of task {event.task}")
        if event.kind == "finish":
            snapshot = owned_snapshot(event.state)


@settings(max_examples=3)  # every example compiles its model anew
@given(**SEQUENCES)
def test_owned_entries_stay_bit_identical_under_compiled_steps(
    spec: ModelSpec,
    optimizer: str,
    forward_transfer: bool,
    seed: int,
    plan: tuple[int, ...] | None,
    epochs: bool,
) -> None:
    # dynamo and AOTAutograd as in a real compiled step, without inductor's C++ codegen
    # (minutes per example on 2 cores); tests/training/test_step.py runs the full inductor step
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(step_compile.COMPILE_OPTIONS, "backend", "aot_eager")
        model = spec.build(seed)
        opt = OPTIMIZERS[optimizer](list(model.parameters()))
        snapshot = None
        for event in run_sequence(
            model,
            spec,
            opt,
            seed=seed,
            steps=2,
            forward_transfer=forward_transfer,
            plan=plan,
            compiled=True,
            epochs=epochs,
        ):
            if snapshot is not None:
                assert_owned_unchanged(snapshot, event.state, f"{event.kind} of {event.task}")
            if event.kind == "finish":
                snapshot = owned_snapshot(event.state)


@pytest.mark.parametrize("device", DEVICES)
@given(**SEQUENCE)
@example(
    spec=ModelSpec("resnet", True, width=4, num_layers=2, num_tasks=2),
    optimizer="adam",
    forward_transfer=False,
    seed=0,
    steps=2,
    plan=(KEEP_ONE, KEEP_ALL),
    epochs=True,
)
def test_finished_tasks_eval_outputs_are_bit_identical_after_later_tasks(
    device: str,
    spec: ModelSpec,
    optimizer: str,
    forward_transfer: bool,
    seed: int,
    steps: int,
    plan: tuple[int, ...] | None,
    epochs: bool,
) -> None:
    model = spec.build(seed).to(device)
    opt = OPTIMIZERS[optimizer](list(model.parameters()))
    probe = batch(spec, torch.Generator().manual_seed(seed + 1), size=5, device=device)[0]
    expected: dict[int, torch.Tensor] = {}
    for event in run_sequence(
        model,
        spec,
        opt,
        seed=seed,
        steps=steps,
        forward_transfer=forward_transfer,
        plan=plan,
        device=device,
        epochs=epochs,
    ):
        for task, out in expected.items():
            now, _ = ef.forward(model, event.state, probe, task=task, train=False)
            assert torch.equal(now, out), f"task {task} changed at {event.kind} of {event.task}"
        if event.kind == "finishing":  # the outputs it was trained to, before finish_task
            expected[event.task], _ = ef.forward(
                model, event.state, probe, task=event.task, train=False
            )


@pytest.mark.parametrize("kind", ALL_KINDS)
@given(
    bn=st.booleans(),
    forward_transfer=st.booleans(),
    seed=st.integers(0, 2**16),
    plan=pruning_plans(),
)
# the corners, always tried: a layer wholly owned by task 0 before (or after) a layer it
# prunes to one neuron, so that without forward transfer task 1's free neurons there read
# only task 0's neurons and keep nothing but a bias or a BatchNorm shift
@example(bn=False, forward_transfer=False, seed=0, plan=(KEEP_ALL, KEEP_ONE))
@example(bn=False, forward_transfer=False, seed=0, plan=(KEEP_ONE, KEEP_ALL))
@example(bn=True, forward_transfer=False, seed=0, plan=(KEEP_ONE, KEEP_ALL))
@example(bn=True, forward_transfer=False, seed=0, plan=(KEEP_ALL, KEEP_ONE, KEEP_ONE))
def test_finishing_a_task_leaves_its_eval_outputs_bit_identical(
    kind: str, bn: bool, forward_transfer: bool, seed: int, plan: tuple[int, ...]
) -> None:
    spec = ModelSpec(kind, bn, width=4, num_layers=2, num_tasks=2)
    model = spec.build(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = batch(spec, torch.Generator().manual_seed(seed + 1), size=5)[0]
    before = None
    for event in run_sequence(
        model, spec, opt, seed=seed, steps=2, forward_transfer=forward_transfer, plan=plan
    ):
        out, _ = ef.forward(model, event.state, probe, task=event.task, train=False)
        if event.kind == "finishing":
            before = out
        elif event.kind in ("finish", "recycle"):
            assert before is not None
            assert torch.equal(out, before), f"{event.kind} of task {event.task} changed it"


@given(**SEQUENCE)
def test_owner_only_grows(
    spec: ModelSpec,
    optimizer: str,
    forward_transfer: bool,
    seed: int,
    steps: int,
    plan: tuple[int, ...] | None,
    epochs: bool,
) -> None:
    model = spec.build(seed)
    opt = OPTIMIZERS[optimizer](list(model.parameters()))
    previous = None
    for event in run_sequence(
        model,
        spec,
        opt,
        seed=seed,
        steps=steps,
        forward_transfer=forward_transfer,
        plan=plan,
        epochs=epochs,
    ):
        owner = event.state.owner
        if previous is not None:
            for k, before in previous.items():
                owned = before >= 0
                assert torch.equal(owner[k][owned], before[owned]), f"{k} re-owned or freed"
                newly = (owner[k] >= 0) & ~owned
                if event.kind != "finish":
                    assert not bool(newly.any()), f"{k} became owned outside finish_task"
                else:
                    assert bool((owner[k][newly] == event.task).all())
        previous = {k: v.clone() for k, v in owner.items()}


def _fingerprint(tree: object) -> list[tuple[int, torch.Tensor]]:
    return [(t._version, t.clone()) for t in ef.tree_leaves(tree) if isinstance(t, torch.Tensor)]


def _assert_untouched(tree: object, fingerprint: list[tuple[int, torch.Tensor]]) -> None:
    leaves = [t for t in ef.tree_leaves(tree) if isinstance(t, torch.Tensor)]
    assert len(leaves) == len(fingerprint)
    for t, (version, value) in zip(leaves, fingerprint):
        assert t._version == version, "an input tensor was written in place"
        assert torch.equal(t, value) or (t.isnan() == value.isnan()).all()


@given(spec=model_specs(), seed=st.integers(0, 2**16), forward_transfer=st.booleans())
def test_pure_functions_do_not_mutate_their_inputs(
    spec: ModelSpec, seed: int, forward_transfer: bool
) -> None:
    model = spec.build(seed)
    generator = torch.Generator().manual_seed(seed)
    state = ef.init(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    state, _ = ef.train_step(model, state, batch(spec, generator), optimizer=opt, task=0)
    state = ef.finish_task(state, task=0, forward_transfer=forward_transfer)
    x = batch(spec, generator)[0]
    module_before = copy.deepcopy(model.state_dict())
    calls = {
        "forward/train": lambda s: ef.forward(model, s, x, task=1, train=True),
        "forward/eval": lambda s: ef.forward(model, s, x, task=0, train=False),
        "apply_task_mask": lambda s: ef.apply_task_mask(s, 0),
        "freeze": lambda s: ef.freeze(ef.recycle(s, generator=generator), s),
        "freeze_grads": lambda s: ef.freeze_grads(s.params, s),
        "bridge": lambda s: ef.bridge(s),
        "finish_task": lambda s: ef.finish_task(s, task=1, forward_transfer=False),
        "recycle": lambda s: ef.recycle(s, generator=generator),
        "revisit": lambda s: ef.revisit(s, task=0),
    }
    for name, call in calls.items():
        fingerprint = _fingerprint(state)
        call(state)
        _assert_untouched(state, fingerprint)
        for k, v in model.state_dict().items():
            assert torch.equal(v, module_before[k]), f"{name} changed the module's {k}"


@pytest.mark.parametrize("kind", ["mlp", "convnet", "convnet_flat", "resnet"])
@given(bn=st.booleans(), seed=st.integers(0, 2**16), train=st.booleans(), task=st.integers(0, 1))
def test_forward_with_all_channels_free_equals_the_plain_module(
    kind: str, bn: bool, seed: int, train: bool, task: int
) -> None:
    spec = ModelSpec(kind, bn, width=4, num_layers=2, num_tasks=2)
    model = spec.build(seed)
    state = ef.init(model)
    x = batch(spec, torch.Generator().manual_seed(seed))[0]
    reference = copy.deepcopy(model).train(train)
    out, buffers = ef.forward(model, state, x, task=task, train=train)
    expected = reference(x, task)
    assert torch.equal(out, expected)
    for k, v in reference.named_buffers():
        if not k.endswith("frozen_channels"):
            assert torch.equal(buffers[k], v), k


@given(
    spec=model_specs(ALL_KINDS),
    seed=st.integers(0, 2**16),
    optimizer=optimizer_names(),
    plan=st.none() | pruning_plans(),
)
def test_without_forward_transfer_other_tasks_entries_do_not_affect_a_task(
    spec: ModelSpec, seed: int, optimizer: str, plan: tuple[int, ...] | None
) -> None:
    model = spec.build(seed)
    opt = OPTIMIZERS[optimizer](list(model.parameters()))
    final = None
    for event in run_sequence(
        model, spec, opt, seed=seed, steps=2, forward_transfer=False, plan=plan
    ):
        final = event.state
    assert final is not None
    probe = batch(spec, torch.Generator().manual_seed(seed + 7))[0]
    noise = torch.Generator().manual_seed(seed + 3)
    for task in range(spec.num_tasks):
        before, _ = ef.forward(model, final, probe, task=task, train=False)
        params = {}
        for k, p in final.params.items():
            foreign = (final.owner[k] >= 0) & (final.owner[k] != task)
            params[k] = torch.where(foreign, torch.randn(p.shape, generator=noise), p)
        perturbed = final.replace(params=params)
        after, _ = ef.forward(model, perturbed, probe, task=task, train=False)
        assert torch.equal(before, after), f"task {task} reads another task's entries"
