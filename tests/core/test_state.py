"""The state pytree: construction, both registries, and torch.func round trips."""

from __future__ import annotations

import sys

import optree
import pytest
import torch
import torch.utils._pytree as torch_pytree
from eidetic_func.models import MLP
from torch.func import functional_call, vmap

import eidetic_func as ef


@pytest.fixture
def model() -> MLP:
    torch.manual_seed(0)
    return MLP(6, [2, 3], num_layers=2, width=4)


def test_init_copies_every_parameter_and_statistic_and_marks_everything_free(model: MLP) -> None:
    state = ef.init(model)
    assert state.params.keys() == dict(model.named_parameters()).keys()
    assert "blocks.0.norm.running_mean" in state.buffers
    assert not any(k.endswith("frozen_channels") for k in state.buffers)
    for k, p in model.named_parameters():
        assert torch.equal(state.params[k], p)
        assert state.params[k].data_ptr() != p.data_ptr()
        assert not state.params[k].requires_grad
        assert bool((state.owner[k] == ef.FREE).all())
        assert bool(state.keep[k].all())
    assert state.owner["blocks.0.norm.running_var"].shape == (4,)
    assert state.task == 0 and state.finished == ()


def test_init_rejects_plain_batchnorm_and_convert_batchnorm_fixes_it() -> None:
    plain = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    with pytest.raises(ef.TopologyError, match="convert_batchnorm"):
        ef.init(plain)
    converted = ef.convert_batchnorm(plain)
    assert isinstance(converted[1], ef.TaskBatchNorm1d)
    assert isinstance(plain[1], torch.nn.BatchNorm1d) and not isinstance(
        plain[1], ef.TaskBatchNorm1d
    )
    ef.init(converted)


def test_state_is_a_pytree_in_optree_and_torch_with_static_task(model: MLP) -> None:
    state = ef.init(model).replace(task=1, finished=(0,))
    leaves, spec = optree.tree_flatten(state, namespace=ef.NAMESPACE)
    t_leaves, t_spec = torch_pytree.tree_flatten(state)
    assert (
        len(leaves)
        == len(t_leaves)
        == 2 * len(state.params) + len(state.buffers) + len(state.owner)
    )
    assert all(isinstance(x, torch.Tensor) for x in leaves)
    rebuilt = optree.tree_unflatten(spec, leaves)
    assert rebuilt.task == 1 and rebuilt.finished == (0,)
    t_rebuilt = torch_pytree.tree_unflatten(t_leaves, t_spec)
    assert isinstance(t_rebuilt, ef.EideticState) and t_rebuilt.task == 1


def test_tree_map_round_trip_preserves_structure_and_values(model: MLP) -> None:
    state = ef.init(model)
    doubled = ef.tree_map(lambda t: t.clone(), state)
    assert isinstance(doubled, ef.EideticState)
    for a, b in zip(ef.tree_leaves(state), ef.tree_leaves(doubled)):
        assert torch.equal(a, b) and a is not b


def test_vmap_round_trip_over_a_batch_of_states(model: MLP) -> None:
    state = ef.init(model)
    batched = ef.tree_map(lambda t: torch.stack([t, t]), state)
    out = vmap(lambda s: s)(batched)
    assert isinstance(out, ef.EideticState)
    for a, b in zip(ef.tree_leaves(batched), ef.tree_leaves(out)):
        assert torch.equal(a, b)

    x = torch.randn(5, 6)
    model.eval()

    def logits(s: ef.EideticState) -> torch.Tensor:
        return functional_call(model, (s.params, s.buffers), (x, 0))

    stacked = vmap(logits)(batched)
    single = logits(state)
    assert torch.allclose(stacked[0], single) and torch.allclose(stacked[1], single)


def test_state_is_frozen(model: MLP) -> None:
    state = ef.init(model)
    with pytest.raises(AttributeError):
        state.task = 3  # type: ignore[misc]
    assert state.replace(task=2).task == 2 and state.task == 0


def test_check_state_names_what_differs(model: MLP) -> None:
    state = ef.init(model)
    other = MLP(6, [2, 3], num_layers=2, width=5)
    with pytest.raises(ef.StateMismatchError, match="shape"):
        ef.forward(other, state, torch.randn(2, 6), task=0, train=False)
    broken = state.replace(params={k: v for k, v in state.params.items() if "heads.1" not in k})
    with pytest.raises(ef.StateMismatchError, match="missing"):
        ef.forward(model, broken, torch.randn(2, 6), task=0, train=False)


def test_the_state_carries_its_topology_checked_once_at_init(
    model: MLP, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks: list[int] = []
    real = ef.check_topology
    for module in [m for name, m in sys.modules.items() if name.startswith("eidetic_func")]:
        if getattr(module, "check_topology", None) is real:  # wherever it was imported
            monkeypatch.setattr(module, "check_topology", lambda *a: checks.append(1) or real(*a))
    state = ef.init(model)
    assert state.topology == model.topology() and checks == [1]
    scores = ef.score(model, state, None, method="l2")  # the state's task
    state = ef.bridge(ef.prune(state, scores, fraction=0.5, method="l2"))
    ef.capacity(state)
    state = ef.recycle(ef.finish_task(state), generator=torch.Generator().manual_seed(0))
    assert state.finished == (0,) and checks == [1], "the pure functions never re-check it"


def test_a_topology_that_does_not_fit_is_refused_when_attached(model: MLP) -> None:
    other = MLP(6, [2, 3], num_layers=1, width=5).topology()
    with pytest.raises(ef.TopologyError):
        ef.init(model, topology=other)
    with pytest.raises(ef.TopologyError, match="must be a Topology"):
        ef.with_topology(ef.init(model), "mlp")  # type: ignore[arg-type]


def test_a_state_without_a_topology_says_how_to_get_one(model: MLP) -> None:
    bare = ef.init(model).replace(topology=None)
    for call in (lambda: ef.capacity(bare), lambda: ef.bridge(bare), lambda: ef.finish_task(bare)):
        with pytest.raises(ef.TopologyError, match=r"ef\.init\(model, topology="):
            call()
    assert ef.with_topology(bare, model.topology()).topology == model.topology()


def test_a_named_task_must_be_the_states_and_a_loaded_state_gets_its_topology_back(
    model: MLP, tmp_path: object
) -> None:
    state = ef.init(model)
    with pytest.raises(ef.TaskError, match="training task 0"):
        ef.finish_task(state, task=1)
    path = ef.save(f"{tmp_path}/s.safetensors", state)
    assert ef.load(path).state.topology is None, "the topology belongs to the model"
    assert ef.load(path, model=model).state.topology == model.topology()
