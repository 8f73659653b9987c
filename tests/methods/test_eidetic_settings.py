"""EideticNet's settings are its own validated fields, read by its schedule and its flags."""

from __future__ import annotations

import dataclasses

import pytest

import eidetic_func as ef
from eidetic_func.methods.eidetic import EideticNet
from eidetic_func.methods.registry import create
from eidetic_func.methods.replay import ER
from eidetic_func.training.config import TrainConfig


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pruning_step", 0.0),
        ("pruning_step", (0.1, 1.5)),
        ("pruning_type", "l3"),
        ("pruning_type", ()),
        ("tolerance", 1.0),
        ("max_masking_ratio", 0.0),
        ("max_recovery_epochs", -1),
        ("score_batches", 0),
        ("pruning_schedule", "bisect"),
        ("first_pruning_step", 0.0),
        ("constant_step", 1),
        ("forward_transfer", "yes"),
    ],
)
def test_invalid_eidetic_settings_are_refused_at_construction(field: str, value: object) -> None:
    with pytest.raises(ef.ConfigError, match=field.split("_")[0]):
        EideticNet(**{field: value})


def test_an_empty_step_list_is_refused_with_the_message_naming_both_lists() -> None:
    with pytest.raises(ef.ConfigError, match="pruning_step and pruning_type must not be empty"):
        EideticNet(pruning_step=())


def test_every_setting_is_a_frozen_field_with_flag_metadata_and_none_is_the_loops() -> None:
    settings = [f for f in dataclasses.fields(EideticNet) if f.name != "name"]
    assert all("help" in f.metadata and f.metadata["group"] == "method" for f in settings)
    assert not {f.name for f in settings} & set(TrainConfig.__dataclass_fields__)
    with pytest.raises(dataclasses.FrozenInstanceError):
        EideticNet().tolerance = 0.5  # type: ignore[misc]


def test_create_builds_eidetic_from_its_options_and_a_chain_member_from_its_base() -> None:
    assert create("eidetic", pruning_step=0.2) == EideticNet(pruning_step=0.2)
    base = EideticNet(tolerance=0.05, pruning_type=("l2", "random"))
    chained = create("eidetic+er", bases=(base,), buffer_size=7)
    assert chained.methods == (base, ER(buffer_size=7))  # type: ignore[attr-defined]
    assert create("eidetic", bases=(base,), tolerance=0.1) == dataclasses.replace(
        base, tolerance=0.1
    )
    with pytest.raises(ef.ConfigError, match="base of eidetic must be a EideticNet"):
        create("eidetic", bases=(dataclasses.replace(ER(), name="eidetic"),))
