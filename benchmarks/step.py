"""One training step through the functional core vs a plain PyTorch step.

Same module architecture, batch and optimizer (AdamW), batch 128; the functional step
runs with owned entries present (one task finished, half of the first layer pruned).
Run: ``python -m benchmarks.step [--device cuda] [--repeats 50]``.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F

import eidetic_func as ef
from models import MLP, ConvNet

from ._timing import environment, interleaved_medians, write_json


def _models() -> dict[str, tuple[torch.nn.Module, tuple[int, ...]]]:
    return {
        "MLP 784-1000-1000 (BN)": (MLP(784, [10, 10], num_layers=2, width=1000), (784,)),
        "ConvNet (seed, 3x32x32)": (ConvNet(3, [10, 10], num_layers=2, width=32), (3, 32, 32)),
    }


def _state_with_owned_entries(
    model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], opt: torch.optim.Optimizer
) -> ef.EideticState:
    topology = model.topology()  # type: ignore[operator]
    state = ef.init(model)
    for _ in range(2):
        state, _ = ef.train_step(model, state, batch, optimizer=opt, task=0)
    first = topology.units[0]
    key = f"{first.producers[0]}.weight"
    drop = torch.arange(state.keep[key].shape[0], device=state.keep[key].device) % 2 == 0
    rows = drop.view(-1, *([1] * (state.keep[key].dim() - 1)))
    keep = {**state.keep, key: state.keep[key] & ~rows}
    params = {**state.params, key: torch.where(rows, 0.0, state.params[key])}
    state = state.replace(keep=keep, params=params)
    state = ef.finish_task(state, topology, task=0)
    return ef.recycle(state, generator=torch.Generator().manual_seed(0))


def _measure(
    model: torch.nn.Module, shape: tuple[int, ...], device: torch.device, repeats: int, warmup: int
) -> dict[str, float]:
    model = model.to(device)
    plain = copy.deepcopy(model)
    x = torch.randn(128, *shape, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-3, weight_decay=1e-2)
    holder = {"state": _state_with_owned_entries(model, (x, y), opt)}

    def functional() -> None:
        holder["state"], _ = ef.train_step(model, holder["state"], (x, y), optimizer=opt, task=1)

    def plain_step() -> None:
        plain_opt.zero_grad(set_to_none=True)
        plain.train()
        F.cross_entropy(plain(x, 1), y).backward()
        plain_opt.step()

    return interleaved_medians(
        {"plain": plain_step, "functional": functional},
        repeats=repeats,
        warmup=warmup,
        device=device,
    )


def run(device: torch.device, repeats: int, warmup: int) -> dict[str, object]:
    torch.manual_seed(0)
    rows = []
    for name, (model, shape) in _models().items():
        times = _measure(model, shape, device, repeats, warmup)
        ratio = times["functional"] / times["plain"]
        rows.append(
            {
                "model": name,
                "plain_ms": 1e3 * times["plain"],
                "functional_ms": 1e3 * times["functional"],
                "ratio": ratio,
            }
        )
        print(
            f"{name:28s} plain {1e3 * times['plain']:9.2f} ms   functional "
            f"{1e3 * times['functional']:9.2f} ms   ratio {ratio:5.3f}",
            flush=True,
        )
    return {
        "benchmark": "step",
        "batch": 128,
        "optimizer": "AdamW",
        "target_ratio": 1.10,
        "environment": environment(device),
        "results": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    # Subnormal arithmetic is 10-100x slower on x86 and appears in AdamW's second moments
    # of weights with vanishing gradients; flush it for both sides alike.
    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    payload = run(device, args.repeats, args.warmup)
    path = write_json(f"step-{device.type}.json", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
