"""The cost of pruning: EideticNet's fixed and adaptive schedules beside PackNet.

Split-MNIST, the comparison protocol of ``benchmarks.compare`` (MLP 2×400 without BN,
Adam 1e-3, batch 128, at most 4 epochs per task, Taylor pruning, tolerance 0.5 %, one
recovery epoch per step). The three runs are interleaved within each repeat, so drift
on the machine hits all alike; reported: the median wall time and its spread, the
average accuracy, the neurons each task keeps and the recovery epochs spent.
Run: ``python -m benchmarks.schedule --data-root DIR [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from typing import Any

import torch

import eidetic_func as ef
from eidetic_func.training.allocator import keep_freed_memory
from eidetic_func.training.metrics import summarize

from ._timing import environment, spread, write_json
from .compare import protocol

VARIANTS = {
    "packnet": ("packnet", None),
    "eidetic (fixed schedule)": ("eidetic", "fixed"),
    "eidetic (adaptive schedule)": ("eidetic", "adaptive"),
}


def _config(method: str, schedule: str | None, data_root: str, seed: int) -> ef.RunConfig:
    config = protocol("split-mnist", method, data_root=data_root, seed=seed)
    if schedule is None:
        return config
    return dataclasses.replace(
        config, eidetic=dataclasses.replace(config.eidetic, pruning_schedule=schedule)
    )


def _measure(config: ef.RunConfig) -> dict[str, Any]:
    result = ef.run(config, log=lambda _: None)
    owned = (result.capacity or {}).get("owned", {})
    return {
        "seconds": result.seconds,
        "average_accuracy": 100 * summarize(result.matrix).average_accuracy,
        "neurons_kept": [owned[str(t)] for t in range(len(result.task_names)) if str(t) in owned],
        "recovery_epochs": sum(1 for h in result.history if h["phase"] == "recover"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip-fixed",
        action="store_true",
        help="leave out the fixed schedule (the slowest variant; no longer the default)",
    )
    args = parser.parse_args()
    keep_freed_memory()  # the CLI does the same: steadier step times
    variants = {k: v for k, v in VARIANTS.items() if not (args.skip_fixed and v[1] == "fixed")}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        for name, (method, schedule) in variants.items():
            run = _measure(_config(method, schedule, args.data_root, args.seed))
            runs[name].append(run)
            print(f"repeat {repeat + 1}: {name:28s} {run}", flush=True)
    packnet = statistics.median(r["seconds"] for r in runs["packnet"])
    rows = []
    for name, measured in runs.items():
        seconds = [r["seconds"] for r in measured]
        rows.append(
            {
                "variant": name,
                "seconds": spread(seconds),
                "time_vs_packnet": statistics.median(seconds) / packnet,
                "average_accuracy": measured[0]["average_accuracy"],
                "neurons_kept": measured[0]["neurons_kept"],
                "recovery_epochs": measured[0]["recovery_epochs"],
                "runs": measured,
            }
        )
    lines = [
        "| variant | avg. accuracy (%) | neurons kept per task | recovery epochs | "
        "wall time (s), median [min–max] | × PackNet |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        s = r["seconds"]
        lines.append(
            f"| {r['variant']} | {r['average_accuracy']:.2f} | "
            f"{', '.join(map(str, r['neurons_kept'])) or '–'} | {r['recovery_epochs']} | "
            f"{s['median']:.0f} [{s['min']:.0f}–{s['max']:.0f}] | {r['time_vs_packnet']:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    path = write_json(
        "schedule-split-mnist.json",
        {
            "benchmark": "schedule",
            "protocol": "split-mnist (benchmarks.compare)",
            "repeats": args.repeats,
            "environment": environment(torch.device("cpu")),
            "results": rows,
            "markdown": table,
        },
    )
    path.with_suffix(".md").write_text(table + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
