"""Why compiled steps gained nothing on this CPU: inductor's boolean stores.

Under ``torch.compile`` with gradients, the ReLU's backward keeps a boolean mask
(``out <= 0``) that the forward kernel writes. On this machine writing that bool tensor
from inductor's generated C++ costs far more than the whole eager operation. Timed here
on the activations of the shipped MLPs, eager against compiled (interleaved rounds):

* ``x * g <= 0`` returning the bool mask (no gradient),
* the same mask returned as float (no bool store),
* ``relu(x * g)`` forward + backward to ``g``: eager; compiled with inductor's default
  min-cut partition (the mask saved for the backward); compiled with the plain partition
  that :mod:`eidetic_func.core.compiling` gives the library's compiled paths on CPU (the
  float output saved, the mask recomputed inside the backward's kernel).

Run: ``python -m benchmarks.inductor_masks [--repeats 50]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from eidetic_func.core.compiling import compile_kwargs

from ._timing import (
    interleaved_samples,
    prepare_timing,
    print_spreads,
    ratio_spread,
    spread,
    timed_results,
    timing_parser,
    write_json,
)

# (batch, width) of the MLP activations: the main job's step, the importance benchmark's
SHAPES = {"64 x 400 (main job's step)": (64, 400), "128 x 1000 (Taylor, MLP 2x1000)": (128, 1000)}


def _bool_mask(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return x * g <= 0


def _float_mask(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (x * g <= 0).float()


def _relu(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.relu(x * g)


def _variants(shape: tuple[int, int]) -> dict[str, Callable[[], object]]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator)
    g = torch.ones(shape, requires_grad=True)
    out: dict[str, Callable[[], object]] = {}
    for label, fn in (("bool mask", _bool_mask), ("float mask", _float_mask)):
        compiled = torch.compile(fn)
        out[f"{label}, eager"] = lambda fn=fn: fn(x, g.detach())
        out[f"{label}, compiled"] = lambda c=compiled: c(x, g.detach())
    relus = {
        "eager": _relu,
        "compiled": torch.compile(_relu),
        "compiled, plain partition": torch.compile(_relu, **compile_kwargs(x.device)),
    }
    for label, fn in relus.items():

        def forward_backward(fn: Callable[..., torch.Tensor] = fn) -> object:
            return torch.autograd.grad(fn(x, g).sum(), g)

        out[f"relu forward + backward, {label}"] = forward_backward
    return out


def run(repeats: int) -> dict[str, object]:
    rows = []
    for name, shape in SHAPES.items():
        torch._dynamo.reset()
        times = interleaved_samples(
            _variants(shape), repeats=repeats, warmup=3, device=torch.device("cpu")
        )
        ms = {k: spread([1e6 * t for t in ts]) for k, ts in times.items()}
        ratios = {
            kind: ratio_spread(times[f"{kind}, compiled"], times[f"{kind}, eager"])
            for kind in ("bool mask", "float mask", "relu forward + backward")
        }
        relu = "relu forward + backward"
        ratios[f"{relu}, plain partition"] = ratio_spread(
            times[f"{relu}, compiled, plain partition"], times[f"{relu}, eager"]
        )
        rows.append({"shape": name, "us": ms, "compiled_over_eager": ratios})
        print_spreads(name, ms, {f"compiled / eager, {k}": r for k, r in ratios.items()})
    return timed_results("inductor_masks", rows, repeats=repeats, device=torch.device("cpu"))


def main() -> None:
    args = timing_parser(__doc__, repeats=50).parse_args()
    prepare_timing(args.threads)
    payload = run(args.repeats)
    print(f"wrote {write_json('inductor-masks-cpu.json', payload)}")


if __name__ == "__main__":
    main()
