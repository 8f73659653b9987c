"""The training step: any optimizer, clear errors, nothing changed on failure."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from eidetic_func.models import MLP, ConvNet
from hypothesis import example, given, settings
from strategies import OPTIMIZERS, SEQUENCES, ModelSpec, OptimizerFactory, run_sequence

import eidetic_func as ef


@pytest.fixture
def setup() -> tuple[MLP, ef.EideticState, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = MLP(8, [3, 3], num_layers=1, width=5)
    return model, ef.init(model), torch.optim.Adam(model.parameters(), lr=1e-2)


def _batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 8), torch.randint(0, 3, (n,))


def test_step_lowers_the_loss_and_reports_metrics(setup) -> None:
    model, state, opt = setup
    x, y = _batch(32)
    first = None
    for _ in range(30):
        state, metrics = ef.train_step(model, state, (x, y), optimizer=opt, task=0)
        first = first or metrics
    assert metrics.loss < first.loss
    assert metrics.count == 32 and 0 <= metrics.correct <= 32


def test_returned_state_never_aliases_the_optimizer_workspace(setup) -> None:
    model, state, opt = setup
    new, _ = ef.train_step(model, state, _batch(), optimizer=opt, task=0)
    workspace = {p.data_ptr() for p in model.parameters()}
    assert not any(p.data_ptr() in workspace for p in new.params.values())
    snapshot = {k: v.clone() for k, v in new.params.items()}
    ef.train_step(model, new, _batch(), optimizer=opt, task=0)
    for k, v in new.params.items():
        assert torch.equal(v, snapshot[k])


def test_non_finite_loss_raises_and_leaves_state_and_optimizer_untouched(setup) -> None:
    model, state, opt = setup
    state, _ = ef.train_step(model, state, _batch(), optimizer=opt, task=0)
    moments = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()}
    x, y = _batch()
    x[0, 0] = float("nan")
    before = {k: v.clone() for k, v in state.params.items()}
    with pytest.raises(ef.NonFiniteError, match="loss is nan"):
        ef.train_step(model, state, (x, y), optimizer=opt, task=0)
    for k, v in state.params.items():
        assert torch.equal(v, before[k])
    for p in model.parameters():
        for k, v in opt.state[p].items():
            assert torch.equal(v, moments[id(p)][k])


def test_training_a_finished_task_needs_an_explicit_revisit(setup) -> None:
    model, state, opt = setup
    state = ef.finish_task(state, task=0)
    with pytest.raises(ef.TaskError, match="revisit"):
        ef.train_step(model, state, _batch(), optimizer=opt, task=0)
    revisited = ef.revisit(state, task=0)
    ef.train_step(model, revisited, _batch(), optimizer=opt, task=0)


def test_tasks_out_of_order_or_out_of_range_are_refused(setup) -> None:
    model, state, opt = setup
    with pytest.raises(ef.TaskError, match="not the task being trained"):
        ef.train_step(model, state, _batch(), optimizer=opt, task=1)
    with pytest.raises(ef.TaskError, match="out of range"):
        ef.forward(model, state, _batch()[0], task=2, train=False)
    with pytest.raises(ef.TaskError):
        ef.forward(model, state, _batch()[0], task=-1, train=False)


def test_mismatched_inputs_are_refused(setup) -> None:
    model, state, opt = setup
    with pytest.raises(ef.ShapeError, match="8 features"):
        ef.train_step(
            model,
            state,
            (torch.randn(4, 7), torch.zeros(4, dtype=torch.long)),
            optimizer=opt,
            task=0,
        )
    with pytest.raises(ef.ShapeError, match="batch size"):
        ef.train_step(
            model,
            state,
            (torch.randn(4, 8), torch.zeros(3, dtype=torch.long)),
            optimizer=opt,
            task=0,
        )
    with pytest.raises(ef.ShapeError, match="empty"):
        ef.forward(model, state, torch.randn(0, 8), task=0, train=False)
    conv = ConvNet(3, [2], num_layers=1, width=2)
    with pytest.raises(ef.ShapeError, match="images"):
        ef.forward(conv, ef.init(conv), torch.randn(2, 1, 8, 8), task=0, train=False)


def test_an_optimizer_over_foreign_tensors_is_refused(setup) -> None:
    model, state, _ = setup
    foreign = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1)
    with pytest.raises(ef.ConfigError, match=r"model\.parameters"):
        ef.train_step(model, state, _batch(), optimizer=foreign, task=0)


def test_a_state_of_another_model_is_refused(setup) -> None:
    _, state, _ = setup
    other = MLP(8, [3, 3], num_layers=2, width=5)
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    with pytest.raises(ef.StateMismatchError):
        ef.train_step(other, state, _batch(), optimizer=opt, task=0)


def _two_steps_from(state: ef.EideticState, model: MLP, opt: torch.optim.Optimizer, batches):
    for batch in batches:
        state, _ = ef.train_step(model, state, batch, optimizer=opt, task=0)
    return state


def test_the_workspace_is_reloaded_whenever_it_does_not_hold_the_state_passed() -> None:
    torch.manual_seed(0)
    batches = [_batch(8) for _ in range(3)]
    model = MLP(8, [3, 3], num_layers=1, width=5)
    start = ef.init(model)
    reference = _two_steps_from(start, model, torch.optim.SGD(model.parameters(), lr=0.1), batches)
    # the same steps, with the workspace written between them, and an older state stepped
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first, _ = ef.train_step(model, start, batches[0], optimizer=opt, task=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # a user's in-place write: the next step must not train from it
    again = _two_steps_from(first, model, opt, batches[1:])
    for k in reference.params:
        assert torch.equal(again.params[k], reference.params[k]), k
    older = _two_steps_from(start, model, torch.optim.SGD(model.parameters(), lr=0.1), batches)
    for k in reference.params:
        assert torch.equal(older.params[k], reference.params[k]), k


def test_a_compiled_step_keeps_owned_entries_and_bn_statistics_bit_identical() -> None:
    torch.manual_seed(0)
    model = MLP(8, [3, 3], num_layers=2, width=6)  # BN: owned channels stay frozen in training
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    state = ef.init(model)
    for _ in range(3):
        state, _ = ef.train_step(model, state, _batch(8), optimizer=opt, task=0)
    key = "blocks.0.linear.weight"
    keep = state.keep[key].clone()
    keep[::2] = False
    state = ef.bridge(state.replace(keep={**state.keep, key: keep}))
    state = ef.recycle(ef.finish_task(state, task=0), generator=torch.Generator())
    eager_model = MLP(8, [3, 3], num_layers=2, width=6)
    eager_opt = torch.optim.AdamW(eager_model.parameters(), lr=1e-2, weight_decay=0.1)
    eager_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # the same moments
    compiled, eager = state, state
    for _ in range(3):
        batch = _batch(8)
        compiled, _ = ef.train_step(model, compiled, batch, optimizer=opt, task=1, compiled=True)
        eager, _ = ef.train_step(eager_model, eager, batch, optimizer=eager_opt, task=1)
    for k, p in compiled.params.items():
        owned = state.owner[k] >= 0
        assert torch.equal(p[owned], state.params[k][owned]), k
        assert torch.allclose(p, eager.params[k], atol=1e-5), k
    for k, b in compiled.buffers.items():
        if k in state.owner:
            owned = state.owner[k] >= 0
            assert torch.equal(b[owned], state.buffers[k][owned]), k
    x = torch.randn(8, 8)
    assert torch.equal(
        ef.forward(model, state, x, task=0, train=False)[0],
        ef.forward(model, compiled, x, task=0, train=False)[0],
    )
    assert any(not torch.equal(p, state.params[k]) for k, p in compiled.params.items())


def test_a_gradient_transform_runs_the_network_in_training_mode_with_frozen_bn_channels() -> None:
    torch.manual_seed(0)
    model = MLP(8, [3, 3], num_layers=1, width=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = ef.init(model)
    state, _ = ef.train_step(model, state, _batch(8), optimizer=opt, task=0)
    state = ef.recycle(ef.finish_task(state, task=0), generator=torch.Generator())
    bn = model.blocks[0].norm
    seen: list[tuple[bool, int]] = []

    def transform(grads, apply, params):
        apply(_batch(8)[0], 1)  # e.g. a reference gradient on a replay memory
        seen.append((bn.training, bn.frozen_channels.numel()))
        return grads

    model.eval()  # the caller's mode must not leak into the step
    ef.train_step(model, state, _batch(8), optimizer=opt, task=1, grad_transform=transform)
    assert seen == [(True, 6)]
    assert not model.training and bn.frozen_channels.numel() == 0, "restored after the step"


def test_a_step_trains_the_states_task_unless_one_is_named(setup) -> None:
    model, state, opt = setup
    new, _ = ef.train_step(model, state, _batch(), optimizer=opt)
    assert not torch.equal(new.params["heads.0.weight"], state.params["heads.0.weight"])
    assert torch.equal(new.params["heads.1.weight"], state.params["heads.1.weight"])
    with pytest.raises(ef.TaskError, match="not the task being trained"):
        ef.train_step(model, new, _batch(), optimizer=opt, task=1)


class PlainStep:
    """The training step written out without a workspace or any cache: the state's
    parameters into leaf tensors of a second optimizer of the same kind, ``ef.forward`` in
    training mode, backward, the optimizer's step, and :func:`ef.freeze`."""

    def __init__(self, model: torch.nn.Module, make_optimizer: OptimizerFactory) -> None:
        self.params = {
            k: torch.nn.Parameter(p.detach().clone()) for k, p in model.named_parameters()
        }
        self.optimizer = make_optimizer(list(self.params.values()))

    def __call__(
        self,
        model: torch.nn.Module,
        state: ef.EideticState,
        data: tuple[torch.Tensor, torch.Tensor],
        task: int,
    ) -> ef.EideticState:
        x, y = data
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(state.params[k])
        self.optimizer.zero_grad(set_to_none=True)
        logits, buffers = ef.forward(
            model, state.replace(params=dict(self.params)), x, task=task, train=True
        )
        F.cross_entropy(logits, y).backward()
        self.optimizer.step()
        stepped = {k: p.detach().clone() for k, p in self.params.items()}
        return ef.freeze(state.replace(params=stepped, buffers=buffers), state)


@settings(deadline=None)
@given(**{k: v for k, v in SEQUENCES.items() if k != "epochs"})  # it watches single steps
@example(  # a fused kernel bumps no version counter: the step used to be dropped
    spec=ModelSpec("mlp", True, width=4, num_layers=2, num_tasks=2),
    optimizer="adam_fused",
    forward_transfer=True,
    seed=0,
    plan=None,
)
@example(  # .data writes bump no version counter either, and reach heads without a gradient
    spec=ModelSpec("mlp", True, width=4, num_layers=2, num_tasks=2),
    optimizer="sgd_through_data",
    forward_transfer=True,
    seed=0,
    plan=None,
)
def test_train_step_equals_the_plain_step_followed_by_the_projection(
    spec: ModelSpec,
    optimizer: str,
    forward_transfer: bool,
    seed: int,
    plan: tuple[int, ...] | None,
) -> None:
    model = spec.build(seed)
    plain = PlainStep(spec.build(seed), OPTIMIZERS[optimizer])
    opt = OPTIMIZERS[optimizer](list(model.parameters()))

    def same_as_plain(
        before: ef.EideticState,
        data: tuple[torch.Tensor, torch.Tensor],
        task: int,
        after: ef.EideticState,
    ) -> None:
        expected = plain(model, before, data, task)
        for kind in ("params", "buffers"):
            got, want = getattr(after, kind), getattr(expected, kind)
            for k in want:
                assert torch.equal(got[k], want[k]), f"{kind} {k} of task {task}"

    for _ in run_sequence(
        model,
        spec,
        opt,
        seed=seed,
        steps=1,
        forward_transfer=forward_transfer,
        plan=plan,
        on_step=same_as_plain,
    ):
        pass
