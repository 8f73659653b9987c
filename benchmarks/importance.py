"""Importance-scoring microbenchmark: per-sample Taylor, fast path vs references.

For each model (batch 128): a plain forward+backward of the loss (the floor), the
original hook-based batch-level scores, a per-sample Python loop, the ``vmap(grad)``
reference, and the fast gated path, eager and ``torch.compile``d. Medians after warm-up,
all in one process; also the rank agreement (Spearman) of batch-level and per-sample
scores. Run: ``python -m benchmarks.importance [--device cuda] [--models mlp,convnet]
[--update]`` (``--update`` re-measures only those models' rows of the committed JSON).
"""

from __future__ import annotations

import json
import statistics
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from eidetic_func.models import MLP, ConvNet, ResNet
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

import eidetic_func as ef
from eidetic_func.importance.per_sample import restrict
from eidetic_func.importance.taylor import (
    _gate_contributions,
    _producer_params,
    accumulate_squares,
    compile_scorer,
    gated,
    per_sample_scores,
)
from eidetic_func.ops.forward import train_mode

from ._timing import (
    RESULTS,
    environment,
    interleaved_samples,
    prepare_timing,
    ratio_spread,
    spread,
    timing_parser,
    write_json,
)

MODELS: dict[str, tuple[str, Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": ("MLP 784-1000-1000 (BN)", lambda: MLP(784, [10], num_layers=2, width=1000), (784,)),
    "convnet": (
        "ConvNet (seed), 3x32x32",
        lambda: ConvNet(3, [10], num_layers=2, width=32),
        (3, 32, 32),
    ),
    "resnet18": ("ResNet-18, 3x32x32", lambda: ResNet(3, [10], n_blocks=[2, 2, 2, 2]), (3, 32, 32)),
}
# rounds of the quick variants per model: a call of ~10 ms varies more from round to round
# than one of seconds, and many rounds of it cost little
QUICK_REPEATS = {"mlp": 50, "convnet": 7, "resnet18": 7}


def _hook_scores(
    model: nn.Module, topology: ef.Topology, x: Tensor, y: Tensor
) -> dict[str, Tensor]:
    """The original implementation's way: forward/backward hooks, then ``loss.backward()``."""
    outputs: dict[str, Tensor] = {}
    scores: dict[str, Tensor] = {}
    handles = []
    modules = dict(model.named_modules())

    def forward_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Tensor) -> None:
            outputs[name] = output

        return hook

    def backward_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, grad_input: Any, grad_output: tuple[Tensor, ...]) -> None:
            raw = (grad_output[0] * outputs[name]).abs()
            raw = raw.flatten(2).mean(2).mean(0) if raw.dim() > 2 else raw.mean(0)
            scores[name] = scores.get(name, 0) + raw.detach()

        return hook

    for unit in topology.units:
        for p in unit.producers:
            handles.append(modules[p].register_forward_hook(forward_hook(p)))
            handles.append(modules[p].register_full_backward_hook(backward_hook(p)))
    try:
        model.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # the first layer's input needs no gradient; the hook fires on its output anyway
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            F.cross_entropy(model(x, 0), y).backward()
    finally:
        for h in handles:
            h.remove()
    return {u.name: sum(scores[p] for p in u.producers) for u in topology.units}  # type: ignore[misc]


def _spearman(a: Tensor, b: Tensor) -> float:
    def ranks(v: Tensor) -> Tensor:
        r = torch.empty_like(v)
        r[v.argsort()] = torch.arange(v.numel(), dtype=v.dtype, device=v.device)
        return r

    ra, rb = ranks(a.double()), ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def run_model(
    key: str, device: torch.device, repeats: int, slow_repeats: int, chunk: int, compile_fast: bool
) -> dict[str, Any]:
    name, build, shape = MODELS[key]
    torch.manual_seed(0)
    model = build().to(device).eval()
    topology = model.topology()  # type: ignore[operator]
    state = ef.init(model)
    x = torch.randn(128, *shape, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    module = gated(model, topology, 0)
    params, buffers = restrict(module, state.params, state.buffers)

    def floor() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x, 0), y).backward()

    def fast() -> None:
        with train_mode(module, False):
            accumulate_squares(
                [_gate_contributions(module, (params, buffers), (x, y), 0, topology)]
            )

    def reference(impl: str) -> Callable[[], None]:
        def run() -> None:
            per_sample_scores(
                model,
                state,
                state.params,
                [(x, y)],
                task=0,
                topology=topology,
                implementation=impl,  # type: ignore[arg-type]
                chunk_size=chunk,
            )

        return run

    def materialized() -> None:
        """The textbook way: every sample's full weight gradient, then the reduction."""
        needed = _producer_params(topology, state.params)

        def loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
            out = functional_call(model, ({**state.params, **p}, state.buffers), (xi[None], 0))
            return F.cross_entropy(out, yi[None], reduction="sum")

        grads = vmap(grad(loss), in_dims=(None, 0, 0), chunk_size=chunk)(needed, x, y)
        contributions = {}
        for unit in topology.units:
            total = 0
            for q in unit.producers:
                w = f"{q}.weight"
                total = total + (needed[w] * grads[w]).flatten(2).sum(2)
                if f"{q}.bias" in needed:
                    total = total + needed[f"{q}.bias"] * grads[f"{q}.bias"]
            contributions[unit.name] = total
        accumulate_squares([contributions])  # type: ignore[list-item]

    fns: dict[str, tuple[Callable[[], Any], int]] = {
        "floor (forward+backward)": (floor, repeats),
        "seed hooks (batch-level)": (lambda: _hook_scores(model, topology, x, y), repeats),
        "per-sample loop": (reference("loop"), slow_repeats),
        "vmap reference": (reference("vmap"), slow_repeats),
        "vmap, materialized gradients": (materialized, slow_repeats),
        "fast (eager)": (fast, repeats),
    }
    if compile_fast:
        scorer = compile_scorer(model, topology, 0)

        def compiled() -> None:
            accumulate_squares([scorer(state.params, state.buffers, x, y)])

        fns["fast (torch.compile)"] = (compiled, repeats)
    # The quick variants interleaved round by round (ratios to the floor per round); the
    # slow references interleaved among themselves with fewer rounds.
    quick = {k: fn for k, (fn, n) in fns.items() if n == repeats}
    slow = {k: fn for k, (fn, n) in fns.items() if n != repeats}
    samples = interleaved_samples(quick, repeats=repeats, warmup=1, device=device)
    samples.update(interleaved_samples(slow, repeats=slow_repeats, warmup=1, device=device))
    times = {label: statistics.median(ts) for label, ts in samples.items()}
    floor_samples = samples["floor (forward+backward)"]
    spreads = {}
    for label in fns:
        ms = spread([1e3 * t for t in samples[label]])
        ratio = ratio_spread(samples[label], floor_samples) if label in quick else None
        spreads[label] = {"ms": ms, "ratio_to_floor": ratio}
        shown = (
            f"  ratio {ratio['median']:.2f} [{ratio['q1']:.2f}–{ratio['q3']:.2f}]" if ratio else ""
        )
        print(
            f"  {label:28s} {ms['median']:10.2f} ms [{ms['q1']:.2f}–{ms['q3']:.2f}]{shown}",
            flush=True,
        )
    per_sample = per_sample_scores(model, state, state.params, [(x, y)], task=0, topology=topology)
    batch_level = _hook_scores(model, topology, x, y)
    names = [u.name for u in topology.units]
    flat_ps = torch.cat([per_sample[n] for n in names])
    flat_bl = torch.cat([batch_level[n] for n in names])
    per_unit = [_spearman(per_sample[n], batch_level[n]) for n in names]
    floor_s = times["floor (forward+backward)"]
    return {
        "model": name,
        "repeats": repeats,
        "slow_repeats": slow_repeats,
        "environment": environment(device),
        "times_ms": {k: 1e3 * v for k, v in times.items()},
        "ratio_to_floor": {k: v / floor_s for k, v in times.items()},
        "spread": spreads,
        "fast_speedup_vs_loop": times["per-sample loop"] / times["fast (eager)"],
        "fast_speedup_vs_vmap": times["vmap reference"] / times["fast (eager)"],
        "fast_speedup_vs_vmap_materialized": times["vmap, materialized gradients"]
        / times["fast (eager)"],
        "spearman_batch_vs_per_sample": {
            "all_neurons": _spearman(flat_ps, flat_bl),
            "mean_per_unit": statistics.mean(per_unit),
        },
    }


def _cell(s: dict[str, Any]) -> str:
    """``median ms [q1–q3] (ratio to the floor, per-round median)``."""
    ms, ratio = s["ms"], s["ratio_to_floor"]
    text = f"{ms['median']:.1f} ms [{ms['q1']:.1f}–{ms['q3']:.1f}]"
    return text + (f" ({ratio['median']:.2f}×)" if ratio else "")


def to_markdown(rows: list[dict[str, Any]]) -> str:
    labels = list(rows[0]["times_ms"])
    lines = [
        "| method | " + " | ".join(r["model"] for r in rows) + " |",
        "|---|" + "---:|" * len(rows),
    ]
    for label in labels:
        cells = [_cell(r["spread"][label]) if label in r["times_ms"] else "–" for r in rows]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(
        "| Spearman, batch-level vs per-sample (all / per unit) | "
        + " | ".join(
            f"{r['spearman_batch_vs_per_sample']['all_neurons']:.2f} / "
            f"{r['spearman_batch_vs_per_sample']['mean_per_unit']:.2f}"
            for r in rows
        )
        + " |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = timing_parser(__doc__, device=True)
    parser.add_argument("--models", default="mlp,convnet,resnet18")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"rounds of the quick variants (default per model: {QUICK_REPEATS})",
    )
    parser.add_argument("--slow-repeats", type=int, default=5)
    parser.add_argument("--chunk-size", type=int, default=32, help="vmap chunk (bounds memory)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument(
        "--update",
        action="store_true",
        help="replace only the rows of --models in the committed JSON, keep the others "
        "(each row records its own environment and rounds)",
    )
    args = parser.parse_args()
    prepare_timing(args.threads)
    device = torch.device(args.device)
    name = f"importance-{device.type}.json"
    keys = args.models.split(",")
    unknown = sorted(set(keys) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {sorted(MODELS)}")
    measured = {}
    for key in keys:
        print(MODELS[key][0], flush=True)
        repeats = args.repeats or QUICK_REPEATS[key]
        measured[MODELS[key][0]] = run_model(
            key, device, repeats, args.slow_repeats, args.chunk_size, not args.no_compile
        )
    committed = RESULTS / name
    kept = (
        json.loads(committed.read_text())["results"] if args.update and committed.exists() else []
    )
    by_model = {row["model"]: row for row in kept} | measured
    rows = [by_model[title] for title, _, _ in MODELS.values() if title in by_model]
    table = to_markdown(rows)
    print(table)
    path = write_json(
        name,
        {
            "benchmark": "importance",
            "batch": 128,
            "environment": environment(device),
            "targets": {
                "fast_eager_vs_floor_max": 0.8,
                "fast_compiled_vs_floor_max": 0.7,
                "fast_vs_loop_and_vmap_min_speedup_mlp": 30.0,
            },
            "results": rows,
            "markdown": table,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
