"""An epoch of training through the functional core vs a plain PyTorch epoch.

Same models, state and optimizer (AdamW) as :mod:`benchmarks.step`: task 0 owns half of
every layer, task 1 trains. An epoch is ``--batches`` distinct batches. Variants:

* ``plain``: the fastest plain loop — zero_grad, forward, backward, step; loss and
  correct predictions summed on the device and read once at the end (no host read per
  step, as the functional epoch);
* ``train_epoch``: :func:`eidetic_func.train_epoch` (frozen entries restored in place after
  every step, the state materialised once);
* ``train_step loop``: the same steps as single :func:`eidetic_func.train_step` calls;
* ``plain again``: a second plain epoch; its ratio to ``plain`` is the machine's noise;
* the plain and functional epochs with AdamW's fused kernel.

Rounds interleave the variants; reported are the median and quartiles over the rounds of
each time and of the per-round ratio. Run: ``python -m benchmarks.epoch [--repeats 15]``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F

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
from .step import _models, _state_with_owned_entries

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def _plain(model: torch.nn.Module, data: Batches, *, fused: bool) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2, fused=fused)

    def epoch() -> None:
        model.train()
        total = torch.zeros((), device=data[0][0].device)
        correct = torch.zeros((), device=data[0][0].device, dtype=torch.long)
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            logits = model(x, 1)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            total += loss.detach()
            correct += (logits.detach().argmax(1) == y).sum()
        torch.stack([total, correct.float()]).tolist()

    return epoch


def _functional(
    model: torch.nn.Module, start: ef.EideticState, data: Batches, *, fused: bool, steps: bool
) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2, fused=fused)
    masks = ef.step_masks(start)  # prepared once per task, as the task loop does
    workspace = ef.Workspace()
    held = [start]

    def epoch() -> None:
        held[0], _ = ef.train_epoch(
            model, held[0], data, optimizer=opt, task=1, masks=masks, workspace=workspace
        )

    def step_loop() -> None:
        state = held[0]
        for batch in data:
            state, _ = ef.train_step(
                model, state, batch, optimizer=opt, task=1, masks=masks, workspace=workspace
            )
        held[0] = state

    return step_loop if steps else epoch


def _measure(
    model: torch.nn.Module,
    shape: tuple[int, ...],
    batch: int,
    *,
    batches: int,
    device: torch.device,
    repeats: int,
    warmup: int,
) -> dict[str, list[float]]:
    model = model.to(device)
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    start = _state_with_owned_entries(model, (x, y), opt)
    data = [
        (torch.randn(batch, *shape, device=device), torch.randint(0, 10, (batch,), device=device))
        for _ in range(batches)
    ]
    copies = [copy.deepcopy(model) for _ in range(6)]
    return interleaved_samples(
        {
            "plain": _plain(copies[0], data, fused=False),
            "train_epoch": _functional(copies[1], start, data, fused=False, steps=False),
            "train_step loop": _functional(copies[2], start, data, fused=False, steps=True),
            "plain again": _plain(copies[3], data, fused=False),
            "plain, fused AdamW": _plain(copies[4], data, fused=True),
            "train_epoch, fused AdamW": _functional(
                copies[5], start, data, fused=True, steps=False
            ),
        },
        repeats=repeats,
        warmup=warmup,
        device=device,
    )


def run(
    device: torch.device, repeats: int, warmup: int, batches: int, only: str | None
) -> dict[str, object]:
    torch.manual_seed(0)
    rows = []
    for name, (model, shape, batch) in _models().items():
        if only is not None and only not in name:
            continue
        times = _measure(
            model, shape, batch, batches=batches, device=device, repeats=repeats, warmup=warmup
        )
        ratios = {
            "epoch_ratio": ratio_spread(times["train_epoch"], times["plain"]),
            "step_loop_ratio": ratio_spread(times["train_step loop"], times["plain"]),
            "noise_floor_ratio": ratio_spread(times["plain again"], times["plain"]),
            "fused_epoch_ratio": ratio_spread(
                times["train_epoch, fused AdamW"], times["plain, fused AdamW"]
            ),
        }
        rows.append(
            {
                "model": name,
                "batch": batch,
                "batches": batches,
                "ms": {k: spread([1e3 * t for t in v]) for k, v in times.items()},
                **ratios,
            }
        )
        print(
            f"{name:38s} plain {rows[-1]['ms']['plain']['median']:8.1f} ms   "
            + "   ".join(
                f"{label} {r['median']:5.3f} [{r['q1']:.3f}–{r['q3']:.3f}]"
                for label, r in ratios.items()
            ),
            flush=True,
        )
    return timed_results(
        "epoch", rows, repeats=repeats, device=device, optimizer="AdamW", target_ratio=1.10
    )


def markdown(payload: dict[str, object]) -> str:
    """The README's table of a payload: medians, and ratios as median [quartiles]."""

    def ratio(r: dict[str, float]) -> str:
        return f"{r['median']:.3f} [{r['q1']:.3f}–{r['q3']:.3f}]"

    lines = [
        "| model | batch × batches | plain epoch (ms) | train_epoch / plain | train_step loop / "
        "plain | both fused AdamW | plain / plain |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in payload["results"]:  # type: ignore[attr-defined]
        lines.append(
            f"| {row['model']} | {row['batch']} × {row['batches']} | "
            f"{row['ms']['plain']['median']:.1f} | **{ratio(row['epoch_ratio'])}** | "
            f"{ratio(row['step_loop_ratio'])} | {ratio(row['fused_epoch_ratio'])} | "
            f"{ratio(row['noise_floor_ratio'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = timing_parser(__doc__, repeats=15, warmup=3, device=True)
    parser.add_argument("--batches", type=int, default=10, help="batches per epoch")
    parser.add_argument("--only", default=None, help="run the models whose name contains this")
    args = parser.parse_args()
    prepare_timing(args.threads)
    device = torch.device(args.device)
    payload = run(device, args.repeats, args.warmup, args.batches, args.only)
    suffix = "" if args.only is None else "-partial"
    path = write_json(f"epoch-{device.type}{suffix}.json", payload)
    print(f"wrote {path}")
    print(markdown(payload))


if __name__ == "__main__":
    main()
