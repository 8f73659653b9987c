"""One optimizer step: AdamW's three implementations in torch.

``for-loop`` (``foreach=False``: torch's default on CPU, one tensor at a time),
``foreach`` (all tensors per operation; what the runner uses, the same bits) and
``fused`` (one kernel; ``--fused-optimizer``, equal up to float rounding).

On the parameters of the shipped MLPs, with every gradient nonzero and with half of
every tensor's gradient exactly zero, as entries frozen behind a finished task's BN
channels or pruned get (their second moments then stay exactly zero, where CPU ``sqrt``
can be slow). Rounds interleave the variants; reported are the median and quartiles of
each time and of the per-round ratio to the for-loop step on nonzero gradients.
Run: ``python -m benchmarks.optimizer [--device cuda] [--repeats 200]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from eidetic_func.models import MLP

from ._timing import (
    interleaved_samples,
    prepare_timing,
    ratio_spread,
    spread,
    timed_results,
    timing_parser,
    write_json,
)


def _models() -> dict[str, torch.nn.Module]:
    return {
        "MLP 784-400-400 (BN), the main job's": MLP(784, [10, 10], num_layers=2, width=400),
        "MLP 784-1000-1000 (BN)": MLP(784, [10, 10], num_layers=2, width=1000),
    }


def _step(
    model: torch.nn.Module, device: torch.device, *, kind: str, zero_share: float
) -> Callable[[], None]:
    """An AdamW step over fresh copies of ``model``'s parameters with fixed gradients."""
    generator = torch.Generator().manual_seed(0)
    params = []
    for p in model.parameters():
        q = torch.nn.Parameter(p.detach().clone().to(device))
        grad = torch.randn(p.shape, generator=generator)
        grad.view(-1)[: int(grad.numel() * zero_share)] = 0.0
        q.grad = grad.to(device)
        params.append(q)
    implementation = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}}
    options = implementation.get(kind, {"fused": True})
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2, **options)
    return optimizer.step  # type: ignore[return-value]


def run(device: torch.device, repeats: int, warmup: int) -> dict[str, object]:
    torch.manual_seed(0)
    rows = []
    for name, model in _models().items():
        variants = {
            f"{kind}, {zeros} zero gradients": _step(model, device, kind=kind, zero_share=share)
            for kind in ("for-loop", "foreach", "fused")
            for zeros, share in (("no", 0.0), ("half", 0.5))
        }
        times = interleaved_samples(variants, repeats=repeats, warmup=warmup, device=device)
        base = times["for-loop, no zero gradients"]
        row = {
            "model": name,
            "parameters": sum(p.numel() for p in model.parameters()),
            "variants": {
                label: {
                    "ms": spread([1e3 * t for t in ts]),
                    "ratio_to_for_loop": ratio_spread(ts, base),
                }
                for label, ts in times.items()
            },
        }
        rows.append(row)
        print(name, flush=True)
        for label, v in row["variants"].items():  # type: ignore[attr-defined]
            r = v["ratio_to_for_loop"]
            print(
                f"  {label:30s} {v['ms']['median']:7.3f} ms   "
                f"{r['median']:5.3f} [{r['q1']:.3f}–{r['q3']:.3f}]",
                flush=True,
            )
    return timed_results(
        "optimizer",
        rows,
        repeats=repeats,
        device=device,
        optimizer="AdamW(lr=1e-3, weight_decay=1e-2)",
    )


def main() -> None:
    args = timing_parser(__doc__, repeats=200, warmup=10, device=True).parse_args()
    prepare_timing(args.threads)
    device = torch.device(args.device)
    payload = run(device, args.repeats, args.warmup)
    path = write_json(f"optimizer-{device.type}.json", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
