"""One training step through the functional core vs a plain PyTorch step.

Same module architecture, batch and optimizer (AdamW); the functional step runs with
owned entries present (one task finished owning half of every layer). Two copies
of the plain step run in every round too: their ratio is the noise floor of the
machine. Both the plain and the functional step also run with AdamW's fused kernel
(``fused=True``). Rounds interleave the variants; reported are the median and quartiles over
the rounds of each time and of the per-round ratio.
Run: ``python -m benchmarks.step [--device cuda] [--repeats 30]``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from eidetic_func.models import MLP, ConvNet, ResNet

import eidetic_func as ef

from ._timing import (
    interleaved_samples,
    prepare_timing,
    ratio_spread,
    spread,
    timed_results,
    timing_parser,
    write_json,
)


def _models() -> dict[str, tuple[torch.nn.Module, tuple[int, ...], int]]:
    """name -> (model, input shape, batch size)"""
    return {
        "MLP 784-400-400 (BN), the main job's": (
            MLP(784, [10, 10], num_layers=2, width=400),
            (784,),
            64,
        ),
        "MLP 784-1000-1000 (BN)": (MLP(784, [10, 10], num_layers=2, width=1000), (784,), 128),
        "ConvNet (seed, 3x32x32)": (ConvNet(3, [10, 10], num_layers=2, width=32), (3, 32, 32), 64),
        "ResNet-18 (3x32x32)": (ResNet(3, [10, 10]), (3, 32, 32), 16),
    }


def _state_with_owned_entries(
    model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], opt: torch.optim.Optimizer
) -> ef.EideticState:
    """Task 0 trained, half of every unit's neurons pruned, finished and recycled: task 1
    then trains the free half of every layer beside the frozen half (and its BN channels).
    """
    topology = model.topology()  # type: ignore[operator]
    state = ef.init(model)
    for _ in range(2):
        state, _ = ef.train_step(model, state, batch, optimizer=opt, task=0)
    halves = {
        unit.name: torch.arange(
            state.params[f"{unit.producers[0]}.weight"].shape[0], device=batch[0].device
        )
        % 2
        == 0
        for unit in topology.units
    }
    state = ef.bridge(ef.prune_neurons(state, halves))
    state = ef.finish_task(state, task=0)
    return ef.recycle(state, generator=torch.Generator().manual_seed(0))


def _measure(
    model: torch.nn.Module,
    shape: tuple[int, ...],
    batch: int,
    device: torch.device,
    repeats: int,
    warmup: int,
) -> dict[str, list[float]]:
    model = model.to(device)
    plain, plain_again, for_compile = (copy.deepcopy(model) for _ in range(3))
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    fused_model = copy.deepcopy(model)
    fused_opt = torch.optim.AdamW(fused_model.parameters(), lr=1e-3, weight_decay=1e-2, fused=True)
    compiled_opt = torch.optim.AdamW(for_compile.parameters(), lr=1e-3, weight_decay=1e-2)
    start = _state_with_owned_entries(model, (x, y), opt)
    states = {"functional": start, "compiled": start, "fused": start}
    masks = ef.step_masks(start)  # prepared once, as the task loop does per task
    spaces = {name: ef.Workspace() for name in states}

    def functional() -> None:
        states["functional"], _ = ef.train_step(
            model,
            states["functional"],
            (x, y),
            optimizer=opt,
            task=1,
            masks=masks,
            workspace=spaces["functional"],
        )

    def fused() -> None:
        states["fused"], _ = ef.train_step(
            fused_model,
            states["fused"],
            (x, y),
            optimizer=fused_opt,
            task=1,
            masks=masks,
            workspace=spaces["fused"],
        )

    def compiled() -> None:
        states["compiled"], _ = ef.train_step(
            for_compile,
            states["compiled"],
            (x, y),
            optimizer=compiled_opt,
            task=1,
            compiled=True,
            masks=masks,
            workspace=spaces["compiled"],
        )

    def plain_step(net: torch.nn.Module, fused: bool = False) -> Callable[[], None]:
        net_opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2, fused=fused)

        def step() -> None:
            net_opt.zero_grad(set_to_none=True)
            net.train()
            F.cross_entropy(net(x, 1), y).backward()
            net_opt.step()

        return step

    return interleaved_samples(
        {
            "plain": plain_step(plain),
            "functional": functional,
            "functional, compiled": compiled,
            "plain again": plain_step(plain_again),
            "plain, fused AdamW": plain_step(copy.deepcopy(model), fused=True),
            "functional, fused AdamW": fused,
        },
        repeats=repeats,
        warmup=warmup,
        device=device,
    )


def run(device: torch.device, repeats: int, warmup: int, only: str | None) -> dict[str, object]:
    torch.manual_seed(0)
    rows = []
    for name, (model, shape, batch) in _models().items():
        if only is not None and only not in name:
            continue
        times = _measure(model, shape, batch, device, repeats, warmup)
        ratio = ratio_spread(times["functional"], times["plain"])
        compiled = ratio_spread(times["functional, compiled"], times["plain"])
        floor = ratio_spread(times["plain again"], times["plain"])
        fused_same = ratio_spread(times["functional, fused AdamW"], times["plain, fused AdamW"])
        fused_default = ratio_spread(times["functional, fused AdamW"], times["plain"])
        rows.append(
            {
                "model": name,
                "batch": batch,
                "plain_ms": spread([1e3 * t for t in times["plain"]]),
                "functional_ms": spread([1e3 * t for t in times["functional"]]),
                "compiled_ms": spread([1e3 * t for t in times["functional, compiled"]]),
                "ratio": ratio,
                "compiled_ratio": compiled,
                "noise_floor_ratio": floor,
                "plain_fused_ms": spread([1e3 * t for t in times["plain, fused AdamW"]]),
                "functional_fused_ms": spread([1e3 * t for t in times["functional, fused AdamW"]]),
                "fused_ratio": fused_same,
                "fused_vs_plain_ratio": fused_default,
            }
        )
        print(
            f"{name:38s} plain {rows[-1]['plain_ms']['median']:8.2f} ms   "
            + "   ".join(
                f"{label} {r['median']:5.3f} [{r['q1']:.3f}–{r['q3']:.3f}]"
                for label, r in (
                    ("ratio", ratio),
                    ("compiled", compiled),
                    ("plain/plain", floor),
                    ("fused/fused", fused_same),
                    ("fused/plain", fused_default),
                )
            ),
            flush=True,
        )
    return timed_results(
        "step",
        rows,
        repeats=repeats,
        device=device,
        optimizer="AdamW",
        target_ratio=1.10,
        target_compiled_ratio=0.9,
    )


def main() -> None:
    parser = timing_parser(__doc__, repeats=30, warmup=5, device=True)
    parser.add_argument("--only", default=None, help="run the models whose name contains this")
    args = parser.parse_args()
    prepare_timing(args.threads)
    device = torch.device(args.device)
    payload = run(device, args.repeats, args.warmup, args.only)
    suffix = "" if args.only is None else "-partial"
    path = write_json(f"step-{device.type}{suffix}.json", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
