"""Per-sample importance microbenchmark: diagonal Fisher and MAS, vmap vs a per-sample loop.

Model: MLP 784-1000-1000 (BN), batch 128, inference mode. Per statistic (Fisher: squared
per-sample gradients of ``−log p(ŷ | x)`` with labels drawn from the model; MAS: absolute
per-sample gradients of ``‖f(x)‖²``) it times

- the floor: one forward+backward of the batch loss (no per-sample anything);
- the per-sample loop as continual-learning libraries write it: per sample, ``zero_grad``,
  ``backward`` through the ``nn.Module``, accumulate ``grad²`` (or ``|grad|``);
- ``vmap``: ``eidetic_func.importance.gradient_stats.per_sample_sums(implementation="vmap")``,
  ``vmap(grad)`` over ``functional_call``, summed per chunk (default chunks, and one
  chunk of all 128 samples);
- ``vmap`` under ``torch.compile`` (the same kernel, ``per_sample_fn``; compiling takes a
  minute or two, excluded from the timings);
- ``fast``: the Linear/BatchNorm identity ``Σ_i (g_i x_iᵀ)² = (g²)ᵀ(x²)`` (no per-sample
  weight gradient is formed).

Medians of interleaved repeats after warm-up, in one process; each result is checked
against the loop. Run: ``python -m benchmarks.fisher [--device cuda] [--threads N]
[--no-compile]``.
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from eidetic_func.models import MLP
from torch import Tensor, nn

import eidetic_func as ef
from eidetic_func.importance.gradient_stats import per_sample_fn, per_sample_sums
from eidetic_func.importance.per_sample import SampleLoss, cross_entropy_loss, squared_norm_loss
from eidetic_func.ops.forward import train_mode

from ._timing import (
    environment,
    interleaved_samples,
    prepare_timing,
    spread,
    timing_parser,
    write_json,
)

BATCH = 128
TARGET = 10.0  # vmap at least this many times faster than the per-sample loop
MODEL = "MLP 784-1000-1000 (BN)"


def library_loop(
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    loss: SampleLoss,
    reduce: Callable[[Tensor], Tensor],
) -> dict[str, Tensor]:
    """One backward per sample through the module, as most CL code computes a Fisher."""
    params = dict(model.named_parameters())
    totals = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in range(x.shape[0]):
        model.zero_grad(set_to_none=True)
        loss(model(x[i : i + 1], 0).squeeze(0), targets[i]).backward()
        for k, p in params.items():
            if p.grad is not None:
                totals[k] += reduce(p.grad)
    return totals


def run_statistic(
    label: str,
    model: nn.Module,
    state: ef.EideticState,
    x: Tensor,
    targets: Tensor,
    loss: SampleLoss,
    reduction: str,
    *,
    repeats: int,
    compile_vmap: bool,
) -> dict[str, Any]:
    reduce = torch.square if reduction == "square" else torch.abs
    params = state.params

    def ours(implementation: str, chunk: int | None = None) -> Callable[[], Any]:
        return lambda: per_sample_sums(
            model, params, state.buffers, x, targets, task=0, loss=loss,
            reduction=reduction, implementation=implementation, chunk_size=chunk,  # type: ignore[arg-type]
        )  # fmt: skip

    def floor() -> None:
        model.zero_grad(set_to_none=True)
        torch.func.vmap(loss)(model(x, 0), targets).sum().backward()

    fns: dict[str, Callable[[], Any]] = {
        "floor (forward+backward)": floor,
        "per-sample loop (library)": lambda: library_loop(model, x, targets, loss, reduce),
        "vmap (default chunks)": ours("vmap"),
        f"vmap (one chunk of {BATCH})": ours("vmap", BATCH),
        "fast (Linear/BN identity)": ours("fast"),
    }
    if compile_vmap:
        kernel = torch.compile(
            per_sample_fn(model, params, state.buffers, task=0, loss=loss, reduction=reduction)  # type: ignore[arg-type]
        )
        weights = torch.ones(BATCH, device=x.device)
        fns["vmap (torch.compile)"] = lambda: kernel(x, targets, weights)
    print(
        f"{label}: warming up (compiling)…" if compile_vmap else f"{label}: warming up…", flush=True
    )
    with train_mode(model, False), warnings.catch_warnings():
        # torch.compile reports functorch's missing batching rule for inference-mode BN
        # while it traces; the compiled kernel does not use the slow fallback.
        warnings.filterwarnings("ignore", message="There is a performance drop")
        reference = library_loop(model, x, targets, loss, reduce)
        errors = {}
        for name, fn in fns.items():
            if name.startswith("floor"):
                continue
            out = fn()
            errors[name] = max(
                float(
                    (out[k] - reference[k]).abs().max() / reference[k].abs().max().clamp_min(1e-30)
                )
                for k in reference
            )
        samples = interleaved_samples(fns, repeats=repeats, warmup=1, device=x.device)
    times = {name: statistics.median(ts) for name, ts in samples.items()}
    loop = times["per-sample loop (library)"]
    for name, t in times.items():
        print(f"  {name:28s} {1e3 * t:9.1f} ms  {loop / t:6.1f}× vs loop", flush=True)
    vmap_best = min(t for k, t in times.items() if k.startswith("vmap"))
    return {
        "statistic": label,
        "times_ms": {k: 1e3 * v for k, v in times.items()},
        "spread_ms": {k: spread([1e3 * t for t in ts]) for k, ts in samples.items()},
        "speedup_vs_loop": {k: loop / v for k, v in times.items()},
        "max_relative_error_vs_loop": errors,
        "vmap_eager_speedup_vs_loop": loop
        / min(times["vmap (default chunks)"], times[f"vmap (one chunk of {BATCH})"]),
        "vmap_best_speedup_vs_loop": loop / vmap_best,
        "fast_speedup_vs_loop": loop / times["fast (Linear/BN identity)"],
    }


def to_markdown(rows: list[dict[str, Any]]) -> str:
    labels = list(rows[0]["times_ms"])
    lines = [
        f"| {MODEL}, batch {BATCH} | " + " | ".join(r["statistic"] for r in rows) + " |",
        "|---|" + "---:|" * len(rows),
    ]
    for label in labels:
        cells = [
            f"{r['times_ms'][label]:.1f} ms [{r['spread_ms'][label]['q1']:.1f}–"
            f"{r['spread_ms'][label]['q3']:.1f}] ({r['speedup_vs_loop'][label]:.1f}× vs loop)"
            for r in rows
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = timing_parser(__doc__, repeats=7, device=True, threads=None)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd vmap")
    args = parser.parse_args()
    prepare_timing(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = MLP(784, [10], num_layers=2, width=1000).to(device)
    state = ef.init(model)
    g = torch.Generator().manual_seed(0)  # drawn on the CPU: the same batch on every device
    x = torch.randn(BATCH, 784, generator=g).to(device)
    with torch.no_grad(), train_mode(model, False):
        probs = F.softmax(model(x, 0), -1).cpu()
    # the true Fisher's labels
    sampled = torch.multinomial(probs, 1, generator=g).squeeze(1).to(device)
    rows = [
        run_statistic(
            "Fisher (sampled labels)", model, state, x, sampled, cross_entropy_loss, "square",
            repeats=args.repeats, compile_vmap=not args.no_compile,
        ),
        run_statistic(
            "MAS (‖f‖² gradients)", model, state, x, sampled, squared_norm_loss, "abs",
            repeats=args.repeats, compile_vmap=not args.no_compile,
        ),
    ]  # fmt: skip
    table = to_markdown(rows)
    print(table)
    eager = min(r["vmap_eager_speedup_vs_loop"] for r in rows)
    best = min(r["vmap_best_speedup_vs_loop"] for r in rows)
    path = write_json(
        f"fisher-{device.type}.json",
        {
            "benchmark": "fisher",
            "model": MODEL,
            "batch": BATCH,
            "environment": environment(device),
            "targets": {"vmap_vs_loop_min_speedup": TARGET},
            "target_met": {
                "vmap eager": eager >= TARGET,
                "vmap best (incl. torch.compile)": best >= TARGET,
            },
            "results": rows,
            "markdown": table,
        },
    )
    print(f"vmap vs loop: eager {eager:.1f}×, best {best:.1f}× (target {TARGET:.0f}×)")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
