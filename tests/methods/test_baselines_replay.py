"""Rehearsal and gradient-memory baselines: reservoir buffer, ER, DER, DER++, A-GEM, GEM."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from eidetic_func.models import MLP
from hypothesis import given
from hypothesis import strategies as st
from small_runs import plain_mlp, run_sequence
from torch import Tensor
from torch.func import functional_call

import eidetic_func as ef
from eidetic_func.methods import (
    AGEM,
    DER,
    DERPP,
    ER,
    GEM,
    Samples,
    agem_project,
    buffer_sample,
    gem_project,
    reservoir_add,
    reservoir_init,
    sample_loader,
    solve_gem_dual,
)
from eidetic_func.methods.finetune import FineTune
from eidetic_func.methods.protocol import TaskContext, end_task, init_state, method_step
from eidetic_func.methods.replay import der_loss, er_loss

# --------------------------------------------------------------------------- reservoir


def _stream(buffer, items: Tensor, batch: int, generator: torch.Generator):
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        buffer = reservoir_add(buffer, chunk.float().unsqueeze(1), chunk, 0, generator=generator)
    return buffer


def test_reservoir_keeps_every_streamed_item_with_equal_probability() -> None:
    # 1000 items into a buffer of 100, 1000 times: each item's inclusion count is
    # Binomial(1000, 0.1) under uniform sampling; the normalized squared deviations summed
    # over items are ~ chi-square with 1000 degrees of freedom (sd ~ 45).
    items, capacity, reps = torch.arange(1000), 100, 1000
    generator = torch.Generator().manual_seed(1234)
    counts = torch.zeros(1000)
    for rep in range(reps):
        batch = (1, 7, 50, 128)[rep % 4] if rep % 50 == 0 else 100  # a few odd batchings too
        buffer = _stream(reservoir_init(capacity), items, batch, generator)
        assert buffer.size == capacity and buffer.seen == 1000
        kept = buffer.contents().y
        assert kept.unique().numel() == capacity  # no item twice
        counts[kept] += 1
    p = capacity / len(items)
    chi2 = float(((counts - reps * p) ** 2).sum() / (reps * p * (1 - p)))
    assert 1000 - 5 * math.sqrt(2000) < chi2 < 1000 + 5 * math.sqrt(2000), chi2
    # and no drift along the stream: early, middle and late items are kept alike
    thirds = counts.view(-1)[:999].view(3, 333).mean(1)
    assert (thirds - reps * p).abs().max() < 3.0, thirds


def test_adding_a_batch_equals_adding_its_items_one_by_one() -> None:
    items = torch.arange(300)
    batched = _stream(reservoir_init(20), items, 37, torch.Generator().manual_seed(5))
    single = _stream(reservoir_init(20), items, 1, torch.Generator().manual_seed(5))
    assert torch.equal(batched.data.y, single.data.y) and torch.equal(batched.data.x, single.data.x)
    other = _stream(reservoir_init(20), items, 37, torch.Generator().manual_seed(6))
    assert not torch.equal(batched.data.y, other.data.y)


def test_buffer_fills_in_order_then_counts_seen_and_samples_without_replacement() -> None:
    g = torch.Generator().manual_seed(0)
    buffer = reservoir_init(8)
    assert buffer.size == 0 and len(buffer_sample(buffer, 4, generator=g)) == 0  # empty: graceful
    buffer = reservoir_add(buffer, torch.randn(5, 3), torch.arange(5), 2, generator=g)
    assert buffer.size == 5 and buffer.seen == 5 and buffer.data.x.shape == (8, 3)
    assert torch.equal(buffer.contents().y, torch.arange(5))  # fill phase: slot n for item n
    assert (buffer.contents().task == 2).all()
    sample = buffer_sample(buffer, 100, generator=g)
    assert len(sample) == 5 and sorted(sample.y.tolist()) == list(range(5))
    assert len(buffer_sample(buffer, 0, generator=g)) == 0
    buffer = reservoir_add(buffer, torch.randn(10, 3), torch.arange(5, 15), 3, generator=g)
    assert buffer.size == 8 and buffer.seen == 15
    with pytest.raises(ef.ConfigError, match="n must be"):
        buffer_sample(buffer, -1, generator=g)


def test_buffer_rejects_bad_configuration_and_shapes() -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ef.ConfigError, match="capacity"):
        reservoir_init(0)
    buffer = reservoir_add(reservoir_init(4), torch.randn(2, 3), torch.arange(2), 0, generator=g)
    with pytest.raises(ef.ShapeError, match="do not fit"):
        reservoir_add(buffer, torch.randn(2, 4), torch.arange(2), 0, generator=g)
    with pytest.raises(ef.ShapeError, match="y must have shape"):
        reservoir_add(buffer, torch.randn(2, 3), torch.arange(3), 0, generator=g)
    narrow = reservoir_init(4, logits_width=2)
    with pytest.raises(ef.ShapeError, match="columns"):
        reservoir_add(narrow, torch.randn(2, 3), torch.arange(2), 0, torch.randn(2, 3), generator=g)
    with pytest.raises(ef.ShapeError, match="stores logits"):
        reservoir_add(narrow, torch.randn(2, 3), torch.arange(2), 0, generator=g)
    with pytest.raises(ef.ConfigError, match="buffer_size"):
        ER(buffer_size=0)
    with pytest.raises(ef.ConfigError, match="alpha"):
        DER(alpha=-1.0)
    with pytest.raises(ef.ConfigError, match="beta"):
        DERPP(beta=float("nan"))
    with pytest.raises(ef.ConfigError, match="memory_per_task"):
        GEM(memory_per_task=0)
    with pytest.raises(ef.ConfigError, match="margin"):
        GEM(margin=-0.1)
    with pytest.raises(ef.ConfigError, match="buffer_sample_size"):
        AGEM(buffer_sample_size=0)


def _leaves(buffer) -> list[Tensor]:
    return [t.clone() for t in ef.tree_leaves(buffer)]


@given(
    capacity=st.integers(1, 12),
    batches=st.lists(st.integers(0, 9), min_size=1, max_size=8),
    with_logits=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_buffer_is_bounded_holds_only_streamed_items_and_is_pure(
    capacity: int, batches: list[int], with_logits: bool, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    buffer = reservoir_init(capacity, logits_width=3 if with_logits else 0)
    next_id = 0
    for t, n in enumerate(batches):
        ids = torch.arange(next_id, next_id + n)
        next_id += n
        x = ids.float().unsqueeze(1).repeat(1, 2)
        logits = ids.float().unsqueeze(1).repeat(1, 2) + 0.5 if with_logits else None
        before = _leaves(buffer)
        new = reservoir_add(buffer, x, ids * 3, t, logits, generator=g)
        for a, b in zip(before, ef.tree_leaves(buffer)):  # the input buffer is untouched
            assert torch.equal(a, b)
        buffer = new
        assert buffer.seen == next_id and buffer.size == min(next_id, capacity) <= capacity
        assert buffer.data.y.shape[0] in (0, capacity)
        kept = buffer.contents()
        if len(kept) == 0:
            continue
        ident = kept.x[:, 0].long()
        assert ident.unique().numel() == len(kept)  # distinct streamed items
        assert ((ident >= 0) & (ident < next_id)).all()
        assert torch.equal(kept.y, ident * 3)
        # each item carries the task of the batch it came in
        offsets = torch.tensor([0, *itertools.accumulate(batches)])
        expected_task = torch.bucketize(ident, offsets[1:], right=True)
        assert torch.equal(kept.task, expected_task)
        if with_logits:
            assert torch.equal(kept.logits[:, :2], kept.x + 0.5) and (kept.logits[:, 2] == 0).all()
        sample = buffer_sample(buffer, capacity // 2 + 1, generator=g)
        assert len(sample) == min(capacity // 2 + 1, buffer.size)
        assert sample.x[:, 0].unique().numel() == len(sample) if len(sample) else True


def test_sample_loader_draws_a_uniform_subset_of_one_pass() -> None:
    data = [
        (torch.arange(i, i + 10).float().unsqueeze(1), torch.arange(i, i + 10))
        for i in range(0, 50, 10)
    ]
    memory = sample_loader(data, 12, task=4, generator=torch.Generator().manual_seed(0))
    assert len(memory) == 12 and memory.y.unique().numel() == 12 and (memory.task == 4).all()
    small = sample_loader(data[:1], 12, task=0, generator=torch.Generator().manual_seed(0))
    assert len(small) == 10


# --------------------------------------------------------------------------- losses


def _linear_apply(weights: dict[int, Tensor]):
    def apply(x: Tensor, t: int) -> Tensor:
        return x @ weights[t]

    return apply


def _ce(logits: list[float], label: int) -> float:
    return math.log(sum(math.exp(v) for v in logits)) - logits[label]


def test_er_loss_is_the_mean_cross_entropy_over_batch_and_replay_by_head() -> None:
    w = {0: torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 1: torch.tensor([[0.0, 2.0], [1.0, 0.0]])}
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([1])
    replay = Samples(
        x=torch.tensor([[3.0, 0.0], [0.0, 1.0]]),
        y=torch.tensor([0, 1]),
        task=torch.tensor([0, 1]),
        logits=torch.zeros(2, 0),
    )
    loss, logits = er_loss(_linear_apply(w), x, y, 1, replay)
    # batch via head 1: [2, 2]; replay 0 via head 0: [3, 0]; replay 1 via head 1: [1, 0]
    expected = (_ce([2.0, 2.0], 1) + _ce([3.0, 0.0], 0) + _ce([1.0, 0.0], 1)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert torch.equal(logits, torch.tensor([[2.0, 2.0]]))
    alone, _ = er_loss(_linear_apply(w), x, y, 1, Samples.empty())
    assert alone.item() == pytest.approx(_ce([2.0, 2.0], 1), rel=1e-6)


def test_der_and_derpp_losses_equal_hand_computed_values() -> None:
    # head 0 has 2 outputs, head 1 has 3; stored logits are padded to 3 columns
    w = {
        0: torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        1: torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]),
    }
    x, y = torch.tensor([[1.0, 1.0]]), torch.tensor([2])
    replay = Samples(
        x=torch.tensor([[2.0, 0.0], [0.0, 1.0]]),
        y=torch.tensor([0, 1]),
        task=torch.tensor([0, 1]),
        logits=torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]),
    )
    replay_ce = Samples(
        x=torch.tensor([[1.0, 3.0]]),
        y=torch.tensor([0]),
        task=torch.tensor([0]),
        logits=torch.zeros(1, 3),
    )
    apply = _linear_apply(w)
    loss, logits = der_loss(apply, x, y, 1, replay, alpha=0.5)
    # batch via head 1: [1, 1, 2] -> CE for label 2
    ce = _ce([1.0, 1.0, 2.0], 2)
    # replay 0 via head 0: [2, 0] vs [1, 1]: squared errors 1 + 1
    # replay 1 via head 1: [0, 1, 1] vs [0, 0, 0]: squared errors 0 + 1 + 1
    mse = (1 + 1 + 0 + 1 + 1) / 5
    assert torch.equal(logits, torch.tensor([[1.0, 1.0, 2.0]]))
    assert loss.item() == pytest.approx(ce + 0.5 * mse, rel=1e-6)
    loss_pp, _ = der_loss(apply, x, y, 1, replay, alpha=0.5, replay_ce=replay_ce, beta=2.0)
    # replay_ce via head 0: [1, 3] -> CE for label 0
    assert loss_pp.item() == pytest.approx(ce + 0.5 * mse + 2.0 * _ce([1.0, 3.0], 0), rel=1e-6)
    empty, _ = der_loss(apply, x, y, 1, Samples.empty(3), alpha=0.5, replay_ce=None, beta=2.0)
    assert empty.item() == pytest.approx(ce, rel=1e-6)


def _tiny() -> tuple[MLP, ef.EideticState]:
    torch.manual_seed(0)
    model = MLP(6, [2, 3], num_layers=1, width=5, bn=False)
    return model, ef.init(model)


@pytest.mark.parametrize("method", [ER(buffer_size=16), DER(buffer_size=16), DERPP(buffer_size=16)])
def test_replay_steps_are_pure_seeded_and_store_the_step_logits(method) -> None:
    model, state = _tiny()
    mstate = init_state(method, model, state)
    torch.manual_seed(1)
    batches = [(torch.randn(4, 6), torch.randint(0, 2, (4,))) for _ in range(3)]
    for x, y in batches:
        before_logits, _ = ef.forward(model, state, x, task=0, train=True)
        old = _leaves(mstate)
        # plain SGD keeps no state: two steps from the same states must agree exactly
        twin, twin_m, _ = method_step(
            method,
            model,
            state,
            mstate,
            (x, y),
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            task=0,
        )
        state, new, metrics = method_step(
            method,
            model,
            state,
            mstate,
            (x, y),
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            task=0,
        )
        for a, b in zip(old, ef.tree_leaves(mstate)):  # the method state is not modified
            assert torch.equal(a, b)
        for a, b in zip(ef.tree_leaves((twin, twin_m)), ef.tree_leaves((state, new))):
            assert torch.equal(a, b)
        mstate = new
        assert metrics.count == 4
    assert mstate.buffer.seen == 12 and mstate.buffer.size == 12  # fill phase: in order
    assert torch.equal(mstate.buffer.contents().x, torch.cat([b[0] for b in batches]))
    if isinstance(method, DER):
        # the last batch's logits, as computed in its step (before the update), padded to 3
        stored = mstate.buffer.contents().logits[8:12]
        assert torch.allclose(stored[:, :2], before_logits) and (stored[:, 2] == 0).all()
    # task 1 (3 classes) replays task 0's samples through head 0
    state = state.replace(task=1)
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state, mstate, _ = method_step(
        method, model, state, mstate, (x, y), optimizer=optimizer, task=1
    )
    assert mstate.buffer.contents().task.tolist() == [0] * 12 + [1] * 4


# --------------------------------------------------------------------------- A-GEM


vectors = st.integers(1, 6).flatmap(
    lambda d: st.tuples(
        st.lists(st.floats(-100, 100), min_size=d, max_size=d),
        st.lists(st.floats(-100, 100), min_size=d, max_size=d),
    )
)


@given(vectors)
def test_agem_projection_never_opposes_the_reference_gradient(pair) -> None:
    g = torch.tensor(pair[0], dtype=torch.float64)
    ref = torch.tensor(pair[1], dtype=torch.float64)
    out = agem_project(g, ref)
    scale = float(g.norm() * ref.norm()) + 1e-300
    assert float(out @ ref) >= -1e-12 * scale
    if float(g @ ref) >= 0:
        assert torch.equal(out, g)  # already compatible: untouched
    else:
        assert float(out @ ref) == pytest.approx(0.0, abs=1e-12 * scale)
        assert float(out.norm()) <= float(g.norm()) * (1 + 1e-12)


def test_agem_projection_of_a_conflicting_gradient() -> None:
    out = agem_project(torch.tensor([1.0, -1.0]), torch.tensor([0.0, 1.0]))
    assert torch.equal(out, torch.tensor([1.0, 0.0]))
    assert torch.equal(
        agem_project(torch.tensor([1.0, 2.0]), torch.zeros(2)), torch.tensor([1.0, 2.0])
    )


# --------------------------------------------------------------------------- GEM


def _brute_force_projection(g: Tensor, G: Tensor) -> Tensor:  # noqa: N803
    """Closest h to g with G h >= 0: the best feasible projection onto {G_A h = 0} over all A.

    The optimum is the projection of g onto the null space of its active constraints, so
    trying every subset (and h = 0, always feasible) finds it. Rows are normalized (the
    constraints do not depend on their scale) to keep the feasibility check strict.
    """
    rows = G / G.norm(dim=1, keepdim=True)
    best = (float(g.norm()), torch.zeros_like(g))
    for r in range(G.shape[0] + 1):
        for active in itertools.combinations(range(G.shape[0]), r):
            h = g
            if active:
                na = rows[list(active)]
                h = g - na.T @ torch.linalg.pinv(na @ na.T) @ (na @ g)
            if bool((rows @ h >= -1e-10 * (1 + g.norm())).all()):
                d = float((h - g).norm())
                if d < best[0]:
                    best = (d, h)
    return best[1]


problems = st.tuples(
    st.integers(1, 3),
    st.integers(2, 5),
    st.integers(0, 2**20),
    st.sampled_from(["random", "duplicate", "opposed", "scaled"]),
)


def _problem(k: int, d: int, seed: int, kind: str) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(k, d, generator=gen, dtype=torch.float64)
    g = torch.randn(d, generator=gen, dtype=torch.float64)
    if kind == "duplicate" and k > 1:
        G[1] = 2 * G[0]  # collinear constraints: a singular Gram matrix
    if kind == "opposed":
        G[0] = -g  # guarantees a violation
    if kind == "scaled":  # memory gradients of very different sizes
        G = G * torch.logspace(-3, 3, k, dtype=torch.float64).unsqueeze(1)
    return g, G


@given(problems)
def test_gem_projection_is_the_closest_vector_satisfying_every_constraint(problem) -> None:
    g, G = _problem(*problem)
    out = gem_project(g, G, margin=0.0)
    rows = G / G.norm(dim=1, keepdim=True)
    assert bool((rows @ out >= -1e-9 * (1 + g.norm())).all())  # ⟨g̃, g_k⟩ ≥ 0, scale-free
    assert bool((G @ out >= -1e-6).all())
    expected = _brute_force_projection(g, G)
    assert torch.allclose(out, expected, atol=1e-7 * (1 + float(g.norm()))), (out, expected)
    if bool((G @ g >= 0).all()):
        assert torch.equal(out, g)


@given(problems, st.sampled_from([0.0, 0.5, 2.0]))
def test_gem_dual_solution_satisfies_the_kkt_conditions(problem, margin: float) -> None:
    g, G = _problem(*problem)
    P, q = G @ G.T, G @ g
    v = solve_gem_dual(P, q, margin=margin)
    grad = P @ v + q  # = G (Gᵀv + g): the constraint values of the projected gradient
    tol = 1e-8 * (1 + float(P.abs().max()) + float(q.abs().max())) * (1 + float(v.abs().max()))
    assert bool((v >= margin).all())
    assert bool((grad >= -tol).all())  # primal feasibility: ⟨g̃, g_k⟩ ≥ 0, with any margin
    assert float(((v - margin) * grad).abs().max()) <= tol  # complementary slackness
    out = gem_project(g, G, margin=margin)
    assert bool((G @ out >= -1e-6).all())


def test_gem_dual_rejects_bad_inputs() -> None:
    with pytest.raises(ef.ShapeError):
        solve_gem_dual(torch.eye(2), torch.zeros(3))
    with pytest.raises(ef.ConfigError, match="margin"):
        solve_gem_dual(torch.eye(2), torch.zeros(2), margin=-1.0)
    with pytest.raises(ef.NonFiniteError):
        solve_gem_dual(torch.eye(2) * float("nan"), torch.zeros(2))
    assert torch.equal(gem_project(torch.ones(3), torch.zeros(0, 3)), torch.ones(3))


def _ce_grad(model: MLP, params: dict[str, Tensor], x: Tensor, y: Tensor, task: int) -> Tensor:
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    loss = F.cross_entropy(functional_call(model, p, (x,), {"task": task}), y)
    grads = torch.autograd.grad(loss, list(p.values()), allow_unused=True)
    return torch.cat(
        [
            (torch.zeros_like(v) if gr is None else gr).reshape(-1)
            for v, gr in zip(p.values(), grads)
        ]
    )


@pytest.mark.parametrize(
    "method", [AGEM(memory_per_task=16, buffer_sample_size=64), GEM(memory_per_task=16, margin=0.0)]
)
def test_gradient_memory_steps_do_not_increase_earlier_losses_to_first_order(method) -> None:
    torch.manual_seed(3)
    model = MLP(6, [2, 2, 2], num_layers=2, width=8, bn=False)
    state = ef.init(model)
    mstate = init_state(method, model, state)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    memories = []
    for t in range(2):  # two finished tasks with memories; the network learned task t
        x, y = torch.randn(16, 6), torch.randint(0, 2, (16,))
        for _ in range(5):
            state, mstate, _ = method_step(
                method, model, state, mstate, (x, y), optimizer=optimizer, task=t
            )
        state, mstate, _ = end_task(
            method,
            model,
            state,
            mstate,
            TaskContext([(x, y)], task=t, generator=torch.Generator().manual_seed(t)),
        )
        state = state.replace(task=t + 1)
        memories.append((x, y))
    # task 2: the same inputs with flipped labels pull the shared layers the other way
    x, y = memories[0][0], 1 - memories[0][1]
    g = _ce_grad(model, state.params, x, y, 2)
    refs = [_ce_grad(model, state.params, mx, my, t) for t, (mx, my) in enumerate(memories)]
    assert min(float(g @ r) for r in refs) < 0  # the raw gradient conflicts with a memory
    before = torch.cat([p.reshape(-1) for p in state.params.values()])
    new, _, _ = method_step(method, model, state, mstate, (x, y), optimizer=optimizer, task=2)
    update = before - torch.cat([p.reshape(-1) for p in new.params.values()])  # = g̃ (SGD, lr 1)
    if isinstance(method, GEM):
        for r in refs:
            assert float(update @ r) >= -1e-5 * float(update.norm() * r.norm())
    else:
        # A-GEM's reference is the mean memory loss over both tasks (all 32 samples drawn)
        ref = (refs[0] + refs[1]) / 2
        assert float(update @ ref) >= -1e-5 * float(update.norm() * ref.norm())
        assert float(g @ ref) < 0
    assert not torch.allclose(update, g)  # the projection did act


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def finetune_accuracy() -> tuple[float, float]:
    return run_sequence(FineTune(), plain_mlp)


@pytest.mark.slow
@pytest.mark.parametrize("method", [ER(), DER(), DERPP(), AGEM(), GEM()], ids=lambda m: m.name)
def test_replay_methods_forget_less_than_fine_tuning_on_split_mnist(
    method, finetune_accuracy: tuple[float, float]
) -> None:
    # Split MNIST (embedded subset), pairs chosen to interfere: 1/7, 4/9, 3/5; one epoch
    # each with SGD + momentum (the optimizer of the GEM/A-GEM papers and of Mammoth).
    earlier, last = run_sequence(method, plain_mlp)
    finetune_earlier, _ = finetune_accuracy
    assert earlier > finetune_earlier + 0.05, (earlier, finetune_earlier)
    assert last > 0.9
