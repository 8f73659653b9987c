"""A checkpoint against a model and an optimizer: what does not fit is refused, named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trained_checkpoints import (
    small_mlp,
    trained,
)

import eidetic_func as ef

# ----------------------------------------------------------------------------- fitting


def test_a_model_of_another_width_is_refused_naming_key_and_shapes(tmp_path: Path) -> None:
    _, state, _ = trained()
    path = ef.save(tmp_path / "c", state)
    with pytest.raises(ef.CheckpointError) as info:
        ef.load(path, model=small_mlp(width=7))
    message = str(info.value)
    assert (
        "params['blocks.0.linear.weight']: checkpoint float32 (6, 8), model float32 (7, 8)"
        in message
    )
    assert (
        "buffers['blocks.0.norm.running_mean']: checkpoint float32 (6,), model float32 (7,)"
        in message
    )


def test_a_model_with_other_layers_is_refused_listing_missing_and_unexpected_keys(
    tmp_path: Path,
) -> None:
    _, state, _ = trained()
    path = ef.save(tmp_path / "c", state)
    with pytest.raises(ef.CheckpointError, match=r"lacks the model's \['blocks\.2\.linear\.weight"):
        ef.load(path, model=small_mlp(num_layers=3))
    with pytest.raises(ef.CheckpointError, match=r"has \['blocks\.0\.norm\.bias"):
        ef.load(path, model=small_mlp(bn=False))


def test_an_optimizer_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    model, state, opt = trained()
    path = ef.save(tmp_path / "c", state, optimizer=opt)
    with pytest.raises(ef.CheckpointError, match=r"holds torch\.optim\.adamw\.AdamW state"):
        ef.load(path, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    params = list(model.parameters())
    split = torch.optim.AdamW([{"params": params[:2]}, {"params": params[2:]}])
    with pytest.raises(ef.CheckpointError, match="1 parameter groups, this one 2"):
        ef.load(path, optimizer=split)
    wider = small_mlp(width=7)
    with pytest.raises(
        ef.CheckpointError,
        match=r"parameter 0: checkpoint shape \(6, 8\), optimizer shape \(7, 8\)",
    ):
        ef.load(path, optimizer=torch.optim.AdamW(wider.parameters()))
    without = ef.save(tmp_path / "d", state)
    with pytest.raises(ef.CheckpointError, match="no optimizer state"):
        ef.load(without, optimizer=opt)
