"""Deep generative replay (Shin et al. 2017; the seed tutorial's ``GenerativeReplay``).

A VAE (the tutorial's: two hidden layers of ``hidden`` units, ``latent`` dimensions, loss
``MSE(reconstruction) + 0.1 · KL``, Adam at ``generator_lr``) learns the inputs of every
task so far. While task ``t`` trains, the generator and solver frozen at the end of the
previous task replay: ``replay_ratio × batch`` samples are drawn from the old generator,
and every earlier head ``h`` is trained on them with the old solver's labels
``argmax f*_h(x̃)``:

    L = CE(f_t(x), y) + mean_{h<t} CE(f_h(x̃), argmax f*_h(x̃))

The generator trains on the current inputs mixed with the replayed ones (as Shin et al.;
the tutorial's loop trains it on the current inputs only, which lets it forget earlier
tasks). No real data of earlier tasks is stored. Everything is functional: the VAE's
parameters and Adam moments are tensors of the method state, updated by pure functions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eidetic_func.core.errors import ConfigError
from eidetic_func.core.pytree import pytree_dataclass, static_field
from eidetic_func.core.state import EideticState
from eidetic_func.core.types import Batch
from eidetic_func.importance.per_sample import call_logits
from eidetic_func.methods.decisions import DONE, Decision
from eidetic_func.methods.fields import integer, number, validate_fields
from eidetic_func.methods.protocol import StepPlan, TaskContext, Traits, objective_plan
from eidetic_func.methods.reservoir import generator_from
from eidetic_func.ops.forward import train_mode
from eidetic_func.training.step import Apply

VAE_LAYERS = ("enc0", "enc1", "mu", "logvar", "dec0", "dec1", "dec2")


def vae_init(dim: int, hidden: int, latent: int, generator: torch.Generator) -> dict[str, Tensor]:
    """VAE parameters ``{layer.weight, layer.bias}`` with PyTorch's Linear initialization."""
    shapes = {
        "enc0": (hidden, dim),
        "enc1": (hidden, hidden),
        "mu": (latent, hidden),
        "logvar": (latent, hidden),
        "dec0": (hidden, latent),
        "dec1": (hidden, hidden),
        "dec2": (dim, hidden),
    }
    params = {}
    for name, (out, fan_in) in shapes.items():
        bound = 1.0 / math.sqrt(fan_in)
        params[f"{name}.weight"] = (torch.rand(out, fan_in, generator=generator) * 2 - 1) * bound
        params[f"{name}.bias"] = (torch.rand(out, generator=generator) * 2 - 1) * bound
    return params


def _linear(params: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    return F.linear(x, params[f"{name}.weight"], params[f"{name}.bias"])


def vae_decode(params: dict[str, Tensor], z: Tensor) -> Tensor:
    """Inputs ``[N, dim]`` (flattened) from latents ``z`` ``[N, latent]``."""
    h = F.relu(_linear(params, "dec1", F.relu(_linear(params, "dec0", z))))
    return _linear(params, "dec2", h)


def vae_loss(params: dict[str, Tensor], x: Tensor, noise: Tensor) -> Tensor:
    """The tutorial's loss on flattened ``x`` ``[N, dim]``: ``MSE + 0.1 · KL`` (means);
    ``noise`` ``[N, latent]`` is the reparameterization's standard normal draw."""
    h = F.relu(_linear(params, "enc1", F.relu(_linear(params, "enc0", x))))
    mu, logvar = _linear(params, "mu", h), _linear(params, "logvar", h)
    recon = vae_decode(params, mu + noise * torch.exp(0.5 * logvar))
    kl = -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())
    return F.mse_loss(recon, x) + 0.1 * kl


@pytree_dataclass
class Adam:
    """Adam moments for a dict of tensors (``step`` counts the updates)."""

    m: dict[str, Tensor]
    v: dict[str, Tensor]
    step: Tensor


def adam_init(params: dict[str, Tensor]) -> Adam:
    zeros = {k: torch.zeros_like(p) for k, p in params.items()}
    return Adam(m=zeros, v=dict(zeros), step=torch.zeros((), dtype=torch.int64))


def adam_update(
    params: dict[str, Tensor], grads: dict[str, Tensor], opt: Adam, lr: float
) -> tuple[dict[str, Tensor], Adam]:
    """One Adam step (β = 0.9, 0.999; ε = 1e-8), as ``torch.optim.Adam``; pure."""
    step = opt.step + 1
    t = float(step)
    m = {k: 0.9 * opt.m[k] + 0.1 * g for k, g in grads.items()}
    v = {k: 0.999 * opt.v[k] + 0.001 * g * g for k, g in grads.items()}
    scale = lr / (1 - 0.9**t)
    correction = math.sqrt(1 - 0.999**t)
    new = {k: p - scale * m[k] / (v[k].sqrt() / correction + 1e-8) for k, p in params.items()}
    return new, Adam(m=m, v=v, step=step)


@pytree_dataclass
class DGRState:
    """The generator (``vae``, its Adam moments), the generator and solver frozen at the end
    of the last task, the generator of the next step's draws, and the heads trained."""

    vae: dict[str, Tensor]
    vae_opt: Adam
    old_vae: dict[str, Tensor]
    solver_params: dict[str, Tensor]
    solver_buffers: dict[str, Tensor]
    rng: Tensor
    heads: tuple[int, ...] = static_field(default=())


@dataclasses.dataclass(frozen=True)
class DGR:
    """Deep generative replay with the tutorial's VAE and ``replay_ratio`` (default 0.5).

    Each step also takes one Adam step of the VAE (in the step's ``update``): the
    generator is part of the method state, computed from the task's data like a Fisher,
    not the network the loop trains — so it may train inside the method's functions.
    The classifier is trained only by the loop's steps."""

    # every update of the network is an averaged gradient: data-parallel processes agree
    traits: ClassVar[Traits] = Traits(data_parallel=True)

    hidden: int = integer(256, minimum=1)
    latent: int = integer(32, minimum=1)
    generator_lr: float = number(1e-3, low=0.0, low_open=True)
    replay_ratio: float = number(0.5, low=0.0, low_open=True)
    seed: int = integer(0, minimum=0)
    name: str = "dgr"

    def __post_init__(self) -> None:
        validate_fields(self)

    def init(self, model: nn.Module, state: EideticState) -> DGRState:
        dim = _input_dim(model)
        g = torch.Generator().manual_seed(self.seed)
        device = next(iter(state.params.values())).device
        vae = {k: v.to(device) for k, v in vae_init(dim, self.hidden, self.latent, g).items()}
        return DGRState(
            vae=vae,
            vae_opt=adam_init(vae),
            old_vae=dict(vae),
            solver_params=dict(state.params),
            solver_buffers=dict(state.buffers),
            rng=g.get_state(),
        )

    def plan(
        self, model: nn.Module, state: EideticState, mstate: DGRState, batch: Batch, *, task: int
    ) -> StepPlan:
        x, y = batch
        g = generator_from(mstate.rng)
        heads = [h for h in mstate.heads if h != task]
        replayed: Tensor | None = None
        labels: dict[int, Tensor] = {}
        if heads:
            n = max(2, round(self.replay_ratio * x.shape[0]))
            z = torch.randn(n, self.latent, generator=g).to(x.device)
            with torch.no_grad():
                replayed = vae_decode(mstate.old_vae, z).view(n, *x.shape[1:])
                with train_mode(model, False):
                    for h in heads:
                        old = call_logits(
                            model, mstate.solver_params, mstate.solver_buffers, replayed, h
                        )
                        labels[h] = old.argmax(1)

        def objective(apply: Apply, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
            logits = apply(x, task)
            loss = F.cross_entropy(logits, y)
            if replayed is not None:
                terms = [F.cross_entropy(apply(replayed, h), labels[h]) for h in heads]
                loss = loss + torch.stack(terms).mean()
            return loss, logits

        def update() -> DGRState:
            inputs = (
                x.flatten(1) if replayed is None else torch.cat([x.flatten(1), replayed.flatten(1)])
            )
            noise = torch.randn(inputs.shape[0], self.latent, generator=g).to(x.device)
            leaves = {k: v.detach().requires_grad_(True) for k, v in mstate.vae.items()}
            values = torch.autograd.grad(vae_loss(leaves, inputs, noise), list(leaves.values()))
            grads = dict(zip(leaves, values))
            vae, vae_opt = adam_update(mstate.vae, grads, mstate.vae_opt, self.generator_lr)
            return dataclasses.replace(mstate, vae=vae, vae_opt=vae_opt, rng=g.get_state())

        return objective_plan(objective, update)

    def end_task(
        self, model: nn.Module, state: EideticState, mstate: DGRState, ctx: TaskContext
    ) -> tuple[EideticState, DGRState, Decision]:
        task = ctx.task
        return (
            state,
            dataclasses.replace(
                mstate,
                old_vae=dict(mstate.vae),
                solver_params=dict(state.params),
                solver_buffers=dict(state.buffers),
                heads=tuple(sorted({*mstate.heads, task})),
            ),
            DONE,
        )


def _input_dim(model: nn.Module) -> int:
    """Flattened input size: the model's ``input_shape`` or ``in_features`` (an MLP)."""
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        return math.prod(shape)
    features = getattr(model, "in_features", None)
    if isinstance(features, int):
        return features
    raise ConfigError(
        f"dgr generates flattened inputs: it needs an MLP (in_features) or a model with an "
        f"input_shape, not a {type(model).__name__}"
    )
