"""The step's workspace record: what the model's parameters hold, and the frozen anchors."""

from __future__ import annotations

import torch
from eidetic_func.models import MLP
from torch.autograd.graph import increment_version

import eidetic_func as ef
from eidetic_func.ops.workspace import load_workspace

KEY = "blocks.0.linear.weight"


def _owning_rows(state: ef.EideticState, rows: int) -> ef.EideticState:
    owner = state.owner[KEY].clone()
    owner[:rows] = 0
    return state.replace(owner={**state.owner, KEY: owner})


def test_entries_owned_since_the_last_step_stay_with_the_very_same_parameter_tensors() -> None:
    """More ownership with the very same parameter tensors (a hand-made state): the frozen
    anchors of the previous step no longer cover it and must not be reused."""
    torch.manual_seed(0)
    model = MLP(8, [3, 3], num_layers=1, width=5, bn=False)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    state = _owning_rows(ef.init(model).replace(finished=(0,), task=1), rows=1)
    batch = (torch.randn(8, 8), torch.randint(0, 3, (8,)))
    workspace = ef.Workspace()
    first, _ = ef.train_step(model, state, batch, optimizer=opt, workspace=workspace)
    more = _owning_rows(first, rows=3)
    assert more.params[KEY] is first.params[KEY]
    second, _ = ef.train_step(model, more, batch, optimizer=opt, workspace=workspace)
    assert torch.equal(second.params[KEY][:3], first.params[KEY][:3])
    assert not torch.equal(second.params[KEY][3:], first.params[KEY][3:])


def test_a_parameter_replaced_on_the_model_is_loaded_even_at_the_same_version() -> None:
    torch.manual_seed(0)
    model = MLP(8, [3, 3], num_layers=1, width=5, bn=False)
    state = ef.init(model)
    batch = (torch.randn(8, 8), torch.randint(0, 3, (8,)))
    workspace = ef.Workspace()
    stepped, _ = ef.train_step(
        model,
        state,
        batch,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        workspace=workspace,
    )
    layer = model.get_submodule(KEY.removesuffix(".weight"))
    fresh = torch.nn.Parameter(torch.zeros_like(layer.weight))
    while fresh._version < layer.weight._version:  # the version the record saw
        increment_version(fresh)
    layer.weight = fresh
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    again, _ = ef.train_step(model, stepped, batch, optimizer=opt, workspace=workspace)
    assert torch.equal(again.params[KEY], stepped.params[KEY])


def test_a_kept_workspace_copies_in_nothing_its_parameters_already_hold() -> None:
    torch.manual_seed(0)
    model = MLP(8, [3, 3], num_layers=1, width=5)
    state = _owning_rows(ef.init(model).replace(finished=(0,), task=1), rows=2)
    batch = (torch.randn(8, 8), torch.randint(0, 3, (8,)))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    workspace = ef.Workspace()
    stepped, _ = ef.train_step(model, state, batch, optimizer=opt, workspace=workspace)
    live = dict(model.named_parameters())
    versions = {k: p._version for k, p in live.items()}
    load_workspace(workspace, live, stepped.params)
    assert {k: p._version for k, p in live.items()} == versions, "copied again"
    load_workspace(ef.Workspace(), live, stepped.params)  # knows nothing: copies all
    assert all(p._version > versions[k] for k, p in live.items())
    for k, p in live.items():
        assert torch.equal(p, stepped.params[k])
