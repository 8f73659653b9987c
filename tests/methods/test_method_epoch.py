"""ef.method_epoch: every method's epoch is the same method_step calls, bit for bit."""

from __future__ import annotations

import copy
from typing import Any

import optree
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import OPTIMIZERS, ModelSpec, batch, model_specs
from training.test_epoch import assert_same_bits, optimizer_tensors

import eidetic_func as ef
from eidetic_func.methods.protocol import advance, end_task, init_state
from eidetic_func.methods.registry import create, encode_state

# every method whose steps differ from the plain task loss, and a chain of all the parts
METHODS = [
    "ewc",
    "online-ewc",
    "si",
    "mas",
    "lwf",
    "er",
    "der++",
    "agem",
    "gem",
    "oml",
    "joint",
    "ewc+si+er",
]


def _method(name: str) -> ef.Method:
    if name == "ewc+si+er":
        return create(name, **{"er.buffer_size": 12})
    if name in ("agem", "gem"):
        return create(name, memory_per_task=6)
    return create(name, **({"buffer_size": 12} if name in ("er", "der++", "oml") else {}))


def _leaves(mstate: Any) -> list[Any]:
    return optree.tree_leaves(encode_state(mstate), none_is_leaf=True)


@pytest.mark.parametrize("name", METHODS)
@settings(deadline=None, max_examples=4)
@given(
    spec=model_specs(("mlp", "convnet")),
    optimizer=st.sampled_from(["sgd_momentum_wd", "adam", "adamw_fused"]),
    seed=st.integers(0, 2**16),
    check_every=st.none() | st.integers(1, 2),
)
def test_a_method_epoch_is_bit_identical_to_the_same_method_steps(
    name: str, spec: ModelSpec, optimizer: str, seed: int, check_every: int | None
) -> None:
    method = _method(name)
    model = spec.build(seed)
    opt = OPTIMIZERS[optimizer](list(model.parameters()))
    generator = torch.Generator().manual_seed(seed)
    state = ef.init(model)
    mstate = init_state(method, model, state)
    for task in range(2):  # task 0 ends (memories, anchors); task 1 is compared
        data = [batch(spec, generator) for _ in range(3)]
        (m1, o1), (m2, o2) = copy.deepcopy((model, opt)), copy.deepcopy((model, opt))
        stepped, ms = state, mstate
        for b in data:
            stepped, ms, _ = ef.method_step(method, m1, stepped, ms, b, optimizer=o1, task=task)
        epoch, me, _ = ef.method_epoch(
            method, m2, state, mstate, data, optimizer=o2, task=task, check_every=check_every
        )
        assert_same_bits(epoch.params, stepped.params, f"params of task {task}")
        assert_same_bits(epoch.buffers, stepped.buffers, f"buffers of task {task}")
        assert_same_bits(_leaves(me), _leaves(ms), f"method state of task {task}")
        assert_same_bits(optimizer_tensors(o2), optimizer_tensors(o1), "optimizer state")
        model, opt, state, mstate = m1, o1, stepped, ms
        ctx = ef.TaskContext([batch(spec, generator)], task=task, generator=generator)
        state, mstate, _ = end_task(method, model, state, mstate, ctx)
        state = advance(state, task)
