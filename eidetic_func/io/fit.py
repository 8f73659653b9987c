"""Whether a checkpoint fits a model (parameter and buffer names, shapes, dtypes) and an
optimizer (class, parameter groups), and loading the optimizer from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from eidetic_func.core.errors import CheckpointError
from eidetic_func.core.state import EideticState, Growth
from eidetic_func.io.container import dtype_name
from eidetic_func.io.listing import MAX_LISTED, listed


def check_model(path: Path, model: nn.Module, state: EideticState) -> None:
    expected: dict[str, dict[str, Tensor]] = {
        "params": dict(model.named_parameters()),
        "buffers": {
            k: v
            for k, v in model.named_buffers()
            if k.rsplit(".", 1)[-1] != "frozen_channels"  # derived from owner, not state
        },
    }
    lines: list[str] = []
    for what, want in expected.items():
        got: dict[str, Tensor] = getattr(state, what)
        missing, unexpected = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
        if missing:
            lines.append(f"{what}: the checkpoint lacks the model's {listed(missing)}")
        if unexpected:
            lines.append(f"{what}: the checkpoint has {listed(unexpected)}, the model does not")
        for k in sorted(want.keys() & got.keys()):
            a, b = got[k], want[k]
            if a.shape != b.shape or a.dtype != b.dtype:
                lines.append(
                    f"{what}[{k!r}]: checkpoint {dtype_name(a.dtype)} {tuple(a.shape)}, model "
                    f"{dtype_name(b.dtype)} {tuple(b.shape)}"
                )
    if lines:
        shown = lines[:MAX_LISTED] + (
            [f"... and {len(lines) - MAX_LISTED} more"] if len(lines) > MAX_LISTED else []
        )
        if state.growth:
            shown.append(
                f"the checkpoint's network was grown ({_growth_text(state.growth)}): load it "
                "without a model, then model, topology = ef.regrow(model, checkpoint.state.growth)"
            )
        raise CheckpointError(f"{path} does not fit the model:\n  " + "\n  ".join(shown))


def _growth_text(growth: tuple[Growth, ...]) -> str:
    return ", ".join(f"{g.unit} +{g.neurons}" for g in growth)


def load_optimizer(
    path: Path,
    optimizer: torch.optim.Optimizer,
    saved: dict[str, Any] | None,
    state_dict: dict[str, Any] | None,
) -> None:
    if saved is None or state_dict is None:
        raise CheckpointError(f"{path} holds no optimizer state (saved without optimizer=)")
    cls = type(optimizer)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if saved["class"] != name:
        raise CheckpointError(f"{path} holds {saved['class']} state, the optimizer is a {name}")
    want = saved["param_shapes"]
    have = [[list(p.shape) for p in g["params"]] for g in optimizer.param_groups]
    if len(want) != len(have):
        raise CheckpointError(
            f"{path}: the checkpoint's optimizer has {len(want)} parameter groups, this one "
            f"{len(have)}"
        )
    for i, (w, h) in enumerate(zip(want, have)):
        if len(w) != len(h):
            raise CheckpointError(
                f"{path}: optimizer parameter group {i} has {len(w)} parameters in the "
                f"checkpoint, {len(h)} here"
            )
        for j, (a, b) in enumerate(zip(w, h)):
            if a != b:
                raise CheckpointError(
                    f"{path}: optimizer parameter group {i}, parameter {j}: checkpoint shape "
                    f"{tuple(a)}, optimizer shape {tuple(b)}"
                )
    # Optimizers keep the tensors they are given; a copy keeps the checkpoint unchanged.
    own = {
        "state": {
            k: {n: v.clone() if isinstance(v, Tensor) else v for n, v in s.items()}
            for k, s in state_dict["state"].items()
        },
        "param_groups": state_dict["param_groups"],
    }
    try:
        optimizer.load_state_dict(own)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: the optimizer refused the saved state: {e}") from e
