"""Where the functional step's time goes on the MLPs, and how fast any step could be.

Same state as :mod:`benchmarks.step` (task 0 owns half of every layer, task 1 trains),
fused AdamW everywhere. Two groups of variants, interleaved round by round:

* the functional step with one part switched off at a time — the finiteness check, the
  projection (replaced by a plain copy), the frozen BatchNorm channels (every channel in
  training mode), the argument checks — so the drop in time is that part's cost. Those
  variants measure time only: they are not valid steps.
* the parts of a plain step — forward + backward alone, and an AdamW step eager (foreach
  and fused) and compiled as compiled steps compile it — which bound a compiled step from below: a step needs at least
  forward + backward + the fastest optimizer step, before anything added for freezing.

Run: ``python -m benchmarks.step_parts [--repeats 100]``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

import eidetic_func as ef
from eidetic_func.core.compiling import optimizer_compile_kwargs, optimizer_device
from eidetic_func.training import step as step_module

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

Patch = tuple[str, Any]


def _no_op(*_: object, **__: object) -> None:
    return None


def _copy_only(
    _: ef.Workspace, workspace: dict[str, torch.Tensor], *__: object
) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {k: p.clone() for k, p in workspace.items()}


@contextlib.contextmanager
def _no_frozen_channels(*_: object) -> Iterator[None]:
    yield


# the part switched off -> the step module's names replaced while the step runs
SWITCHED_OFF: dict[str, list[Patch]] = {
    "no finiteness check": [("check_finite_step", _no_op)],
    "projection replaced by a copy": [("project_workspace", _copy_only)],
    "no frozen BN channels": [("frozen_channels_set", _no_frozen_channels)],
    "no argument checks": [
        (name, _no_op)
        for name in (
            "check_trainable",
            "check_task",
            "_check_same",
            "check_input",
            "check_optimizer",
        )
    ],
}


def _adamw(model: torch.nn.Module, fused: bool) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2, fused=fused)


def _functional(
    model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], patches: list[Patch]
) -> Callable[[], None]:
    net = copy.deepcopy(model)
    optimizer = _adamw(net, fused=True)
    states = [_state_with_owned_entries(net, batch, optimizer)]
    saved = {name: getattr(step_module, name) for name, _ in patches}
    masks, workspace = ef.step_masks(states[0]), ef.Workspace()

    def step() -> None:
        for name, value in patches:
            setattr(step_module, name, value)
        try:
            states[0], _ = ef.train_step(
                net, states[0], batch, optimizer=optimizer, task=1, masks=masks, workspace=workspace
            )
        finally:
            for name, value in saved.items():
                setattr(step_module, name, value)

    return step


def _plain_parts(
    model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> dict[str, Callable[[], None]]:
    x, y = batch
    kinds = ("plain", "plain foreach", "backward", "optim")
    nets = {kind: copy.deepcopy(model).train() for kind in kinds}
    plain_opt = _adamw(nets["plain"], fused=True)
    foreach_opt = _adamw(nets["plain foreach"], fused=False)
    for p in nets["optim"].parameters():
        p.grad = torch.randn_like(p)
    foreach, fused = _adamw(nets["optim"], fused=False), _adamw(nets["optim"], fused=True)
    to_compile = _adamw(nets["optim"], fused=False)

    # compiled as the library's compiled steps compile it (scalars realized on CPU)
    @torch.compile(**optimizer_compile_kwargs(optimizer_device(to_compile)))
    def compiled() -> None:
        to_compile.step()

    def plain() -> None:
        plain_opt.zero_grad(set_to_none=True)
        F.cross_entropy(nets["plain"](x, 1), y).backward()
        plain_opt.step()

    def plain_foreach() -> None:
        foreach_opt.zero_grad(set_to_none=True)
        F.cross_entropy(nets["plain foreach"](x, 1), y).backward()
        foreach_opt.step()

    def forward_backward() -> None:
        nets["backward"].zero_grad(set_to_none=True)
        F.cross_entropy(nets["backward"](x, 1), y).backward()

    return {
        "plain step (fused AdamW)": plain,
        "plain step (foreach AdamW, torch's default)": plain_foreach,
        "forward + backward": forward_backward,
        "AdamW step, foreach": foreach.step,  # type: ignore[dict-item]
        "AdamW step, fused": fused.step,  # type: ignore[dict-item]
        "AdamW step, compiled": compiled,
    }


def run(repeats: int, warmup: int) -> dict[str, object]:
    torch.manual_seed(0)
    rows = []
    for name, (model, shape, size) in _models().items():
        if not name.startswith("MLP"):
            continue
        batch = (torch.randn(size, *shape), torch.randint(0, 10, (size,)))
        variants = {"functional step (fused AdamW)": _functional(model, batch, [])}
        variants |= {part: _functional(model, batch, p) for part, p in SWITCHED_OFF.items()}
        variants |= _plain_parts(model, batch)
        times = interleaved_samples(
            variants, repeats=repeats, warmup=warmup, device=torch.device("cpu")
        )
        full, plain = times["functional step (fused AdamW)"], times["plain step (fused AdamW)"]
        row = {
            "model": name,
            "batch": size,
            "ms": {k: spread([1e3 * t for t in ts]) for k, ts in times.items()},
            "cost_of_part_ms": {
                part: spread([1e3 * (a - b) for a, b in zip(full, times[part])])
                for part in SWITCHED_OFF
            },
            "functional_over_plain": ratio_spread(full, plain),
        }
        fastest_optimizer = min(
            row["ms"][k]["median"]  # type: ignore[index]
            for k in ("AdamW step, fused", "AdamW step, compiled")
        )
        bound = row["ms"]["forward + backward"]["median"] + fastest_optimizer  # type: ignore[index]
        row["step_lower_bound_ms"] = bound
        for label, key in (("fused", "fused AdamW"), ("foreach", "foreach AdamW, torch's default")):
            plain_ms = row["ms"][f"plain step ({key})"]["median"]  # type: ignore[index]
            row[f"lower_bound_over_plain_{label}"] = bound / plain_ms
        rows.append(row)
        print(name, flush=True)
        for k, s in row["ms"].items():  # type: ignore[attr-defined]
            print(f"  {k:34s} {s['median']:8.3f} ms [{s['q1']:.3f}–{s['q3']:.3f}]", flush=True)
        for k, s in row["cost_of_part_ms"].items():  # type: ignore[attr-defined]
            print(f"  cost of {k:26s} {s['median']:8.3f} ms [{s['q1']:.3f}–{s['q3']:.3f}]")
        print(
            f"  lower bound of a step: {bound:.3f} ms, "
            f"{row['lower_bound_over_plain_fused']:.3f}× a plain fused step, "
            f"{row['lower_bound_over_plain_foreach']:.3f}× a plain foreach step"
        )
    return timed_results("step_parts", rows, repeats=repeats, device=torch.device("cpu"))


def main() -> None:
    args = timing_parser(__doc__, repeats=100, warmup=10).parse_args()
    prepare_timing(args.threads)
    payload = run(args.repeats, args.warmup)
    print(f"wrote {write_json('step-parts-cpu.json', payload)}")


if __name__ == "__main__":
    main()
