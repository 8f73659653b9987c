"""Topology validation: shapes, exact tiling of reader columns, full coverage."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from eidetic_func.models import MLP

import eidetic_func as ef
from eidetic_func.core import topology


@pytest.fixture
def mlp() -> tuple[MLP, ef.EideticState, ef.Topology]:
    model = MLP(6, [2, 2], num_layers=2, width=4)
    return model, ef.init(model), model.topology()


def test_models_topology_is_valid(mlp) -> None:
    _, state, topology = mlp
    ef.check_topology(topology, state.params, state.buffers)
    assert topology.num_tasks == 2


def test_a_parameter_outside_the_topology_is_an_error_because_it_would_never_freeze(mlp) -> None:
    _, state, topology = mlp
    without_head = dataclasses.replace(topology, heads=topology.heads[:1])
    with pytest.raises(ef.TopologyError, match="never be frozen"):
        ef.check_topology(without_head, state.params, state.buffers)


def test_readers_must_tile_the_input_columns_exactly(mlp) -> None:
    _, state, topology = mlp
    first = topology.units[0]
    shifted = dataclasses.replace(first, readers=(ef.Reader("blocks.1.linear", offset=1),))
    bad = dataclasses.replace(topology, units=(shifted, *topology.units[1:]))
    with pytest.raises(ef.TopologyError, match="tile"):
        ef.check_topology(bad, state.params, state.buffers)
    doubled = dataclasses.replace(first, readers=(ef.Reader("blocks.1.linear", repeat=2),))
    bad = dataclasses.replace(topology, units=(doubled, *topology.units[1:]))
    with pytest.raises(ef.TopologyError, match="cover"):
        ef.check_topology(bad, state.params, state.buffers)


def test_wrong_layers_and_norms_are_named(mlp) -> None:
    _, state, topology = mlp
    first = topology.units[0]
    for broken, message in [
        (dataclasses.replace(first, producers=("blocks.0.norm",)), "not a Linear/Conv"),
        (dataclasses.replace(first, norms=("blocks.1.linear",)), "not a BatchNorm"),
        (dataclasses.replace(first, producers=("blocks.0.linear", "heads.0")), "outputs"),
    ]:
        bad = dataclasses.replace(topology, units=(broken, *topology.units[1:]))
        with pytest.raises(ef.TopologyError, match=message):
            ef.check_topology(bad, state.params, state.buffers)
    with pytest.raises(ef.TopologyError, match="no unit named"):
        topology.unit("nope")


def test_rows_and_columns_broadcast_channel_masks() -> None:
    w = torch.zeros(3, 4, 2, 2)
    assert topology.rows(torch.tensor([True, False, True]), w).shape == (3, 1, 1, 1)
    assert topology.columns(torch.ones(4, dtype=torch.bool), w).shape == (1, 4, 1, 1)
    cols = topology.reader_columns(
        ef.Reader("x", repeat=2, offset=1), torch.tensor([True, False]), 6
    )
    assert cols.tolist() == [False, True, True, False, False, False]
