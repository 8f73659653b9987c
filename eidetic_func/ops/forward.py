"""The network as a pure function of the state: ``forward(model, state, x, task, train)``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call

from eidetic_func.core.errors import ShapeError, TopologyError
from eidetic_func.core.state import EideticState, bn_prefixes, check_state
from eidetic_func.core.validate import task_id
from eidetic_func.nn.batchnorm import FrozenAffine, frozen_affine
from eidetic_func.ops.mask import apply_task_mask, needs_task_mask
from eidetic_func.ops.step_masks import StepMasks, frozen_channels


def forward(
    model: nn.Module, state: EideticState, x: Tensor, *, task: int, train: bool
) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits of head ``task`` for ``x`` and the BatchNorm buffers after this call.

    Runs ``model(x, task)`` through ``torch.func.functional_call`` with the parameters of
    ``task``'s subnetwork (see :func:`eidetic_func.apply_task_mask`). In training mode,
    BN channels owned by finished tasks normalize with their frozen running statistics and
    their statistics come back unchanged; free channels behave as ordinary BatchNorm.
    Neither ``state`` nor the model's own tensors are modified; the model's train/eval
    flags are restored on return.
    """
    check_task(model, task)
    check_state(model, state)
    check_input(model, x, _dtype(state))
    params = apply_task_mask(state, task) if needs_task_mask(state, task) else state.params
    return _call(model, state, params, standard_layout(x), task=task, train=train)


def standard_layout(x: Tensor) -> Tensor:
    """``x``, or a copy with the standard (row-major) strides when it has others.

    Convolutions choose their algorithm, hence their rounding, by the input's strides: a
    channels_last batch — even one ``is_contiguous()`` calls contiguous, as a one-channel
    image is — would give a finished task other last bits than the same values laid out
    in rows.
    """
    expected, step = [], 1
    for size in reversed(x.shape):
        expected.append(step)
        step *= size
    if tuple(reversed(expected)) == x.stride():
        return x
    return x.clone(memory_format=torch.contiguous_format)


def _call(
    model: nn.Module,
    state: EideticState,
    params: dict[str, Tensor],
    x: Tensor,
    *,
    task: int,
    train: bool,
) -> tuple[Tensor, dict[str, Tensor]]:
    buffers = {k: v.clone() for k, v in state.buffers.items()} if train else state.buffers
    # the state's own tensors (buffers are copies in training mode): none may be written
    own = {**params, **({} if train else buffers)}
    versions = [t._version for t in own.values()]
    # in eval mode every channel uses its running statistics: no frozen channel to find
    flags = frozen_channels(state) if train else _no_frozen_channels(state)
    with train_mode(model, train):
        logits = functional_call(model, (params, buffers, flags), (x,), {"task": task}, strict=True)
    if versions != [t._version for t in own.values()]:
        written = next(k for (k, t), v in zip(own.items(), versions) if t._version != v)
        raise TopologyError(
            f"the forward of {type(model).__name__} wrote {written!r} in place: a forward may "
            "not write the state it is given (this state's tensor has changed: reload it from "
            "a checkpoint); keep the forward free of in-place writes to parameters and buffers"
        )
    return logits, buffers


def _no_frozen_channels(state: EideticState) -> dict[str, Tensor]:
    prefixes = bn_prefixes(state)
    if not prefixes:
        return {}
    like = state.buffers[f"{prefixes[0]}.running_mean"]
    none = torch.zeros(0, dtype=torch.long, device=like.device)
    return {f"{prefix}.frozen_channels": none for prefix in prefixes}


@contextlib.contextmanager
def frozen_channels_set(
    model: nn.Module,
    masks: StepMasks,
    affines: dict[str, FrozenAffine] | None = None,
) -> Iterator[None]:
    """Give the model's Task BatchNorm modules the frozen channels of ``masks`` (and their
    blend vectors) for the block; with ``affines`` (per prefix, a
    :data:`~eidetic_func.nn.batchnorm.FrozenAffine`), their frozen channels' affine maps
    too, prepared once for many steps.

    For running the model itself (its own parameters and buffers as a workspace) rather
    than through ``functional_call``; the modules' previous values come back on exit.
    """
    # through the modules' buffer tables and attribute dicts: nn.Module.__setattr__ costs
    # more than the rest of this per-step call (the name is a registered buffer, so it is
    # the same update)
    before: list[tuple[dict[str, Tensor | None], Tensor | None, dict[str, object]]] = []
    for prefix, blend in masks.blends.items():
        module = model.get_submodule(prefix)
        table, attributes = module._buffers, module.__dict__
        before.append((table, table["frozen_channels"], attributes))
        table["frozen_channels"] = blend[0]
        attributes["frozen_blend"] = blend
        if affines is not None:
            attributes["frozen_affine"] = affines[prefix]
    try:
        yield
    finally:
        for table, previous, attributes in before:
            table["frozen_channels"] = previous
            attributes.pop("frozen_blend", None)
            attributes.pop("frozen_affine", None)


def frozen_affines(
    model: nn.Module,
    masks: StepMasks,
    state: EideticState,
    live: dict[str, Tensor],
    buffers: dict[str, Tensor],
) -> dict[str, FrozenAffine]:
    """Per Task BatchNorm, its frozen channels' affine map from ``state``'s frozen entries
    (which no training step changes), for the model's own tensors ``live`` (parameters)
    and ``buffers`` holding ``state``: prepared once for many steps
    (:func:`frozen_channels_set`)."""
    affines: dict[str, FrozenAffine] = {}
    for prefix, blend in masks.blends.items():
        frozen, names = blend[1], [f"{prefix}.{n}" for n in ("running_mean", "running_var")]
        shift, scale = frozen_affine(
            state.buffers[names[0]],
            state.buffers[names[1]],
            state.params.get(f"{prefix}.weight"),
            state.params.get(f"{prefix}.bias"),
            float(model.get_submodule(prefix).eps),  # type: ignore[arg-type]
            frozen,
        )
        own = (buffers[names[0]], buffers[names[1]])
        weights = (live.get(f"{prefix}.weight"), live.get(f"{prefix}.bias"))
        affines[prefix] = (frozen, shift, scale, (*own, *weights))
    return affines


def _dtype(state: EideticState) -> torch.dtype | None:
    for p in state.params.values():
        return p.dtype
    return None


@contextlib.contextmanager
def train_mode(
    model: nn.Module, train: bool, *, modules: list[nn.Module] | None = None
) -> Iterator[None]:
    """Set every submodule's training flag for the duration of the block, then restore it
    (``modules``: ``list(model.modules())``, if the caller has it)."""
    before = [(m, m.training) for m in (model.modules() if modules is None else modules)]
    if any(flag != train for _, flag in before):  # most steps find it set already
        model.train(train)
    try:
        yield
    finally:
        for m, flag in before:
            if m.training != flag:
                m.training = flag


def check_task(model: nn.Module, task: int) -> None:
    """Raise :class:`TaskError` unless ``task`` names one of the model's heads."""
    task_id(task, num_tasks=getattr(model, "num_tasks", None))


def check_input(model: nn.Module, x: Tensor, dtype: torch.dtype | None = None) -> None:
    """Raise :class:`ShapeError` for a non-tensor, an empty batch, a dtype other than the
    parameters' ``dtype``, or a shape the model rejects.

    Models state what they accept with a ``check_input(x)`` method (the models in
    ``models/`` do); without one, only the batch and dtype are checked.
    """
    if not isinstance(x, Tensor):
        raise ShapeError(f"x must be a Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ShapeError(f"x must be a non-empty batch, got shape {tuple(x.shape)}")
    if dtype is not None and x.dtype != dtype:
        raise ShapeError(f"x has dtype {x.dtype}; the model's parameters are {dtype}")
    model_check = getattr(model, "check_input", None)
    if callable(model_check):
        model_check(x)
