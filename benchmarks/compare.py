"""All methods on the same data, model, seeds and metrics: one comparison table.

Protocols (task-incremental, one head per task):

- ``split-mnist``: Split-MNIST 5×2 as in Hsu et al. (2018): MLP 2×400 without BatchNorm,
  Adam lr 1e-3 (SGD lr 0.01 for GEM and A-GEM, as there), batch 128, 4 epochs per task,
  memories of 1100 samples in total;
- ``permuted-mnist``: Permuted-MNIST, 10 tasks, in a CPU-sized form: 1000 training images
  per class and task, MLP 2×400 without BatchNorm, Adam lr 1e-3, batch 128, 4 epochs.

EideticNet runs the same protocol and then prunes (Taylor, 10 % steps, tolerance 0.5 %),
which costs it extra epochs. Published numbers (same protocol, where one exists) are
printed beside ours. Run: ``python -m benchmarks.compare split-mnist --data-root DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

import torch

import eidetic_func as ef
from eidetic_func.methods.eidetic import EideticNet
from eidetic_func.methods.protocol import traits
from eidetic_func.methods.registry import create
from eidetic_func.runner.config import RunConfig
from eidetic_func.training.allocator import keep_freed_memory
from eidetic_func.training.config import TrainConfig
from eidetic_func.training.metrics import summarize

from ._timing import RESULTS, environment

# Hsu et al. 2018, "Re-evaluating continual learning scenarios", Split-MNIST incremental task.
PUBLISHED = {
    "split-mnist": {
        "ewc": 97.70,
        "online-ewc": 98.04,
        "si": 98.56,
        "mas": 99.22,
        "lwf": 99.60,
        "gem": 98.42,
        "er": 99.40,
        "joint": 99.52,
    },
    # EideticNet paper's Permuted-MNIST table (its protocol: full data, MLP 2×2000).
    "permuted-mnist": {"eidetic": 98.31, "ewc": 97.0, "si": 97.2},
    # Hsu et al. 2018, Table 2: Split-MNIST incremental class and incremental domain.
    "split-mnist/class": {
        "ewc": 19.80,
        "online-ewc": 19.77,
        "si": 19.67,
        "mas": 19.52,
        "lwf": 24.17,
        "gem": 92.20,
        "dgr": 91.24,
        "er": 90.78,
        "joint": 97.53,
    },
    "split-mnist/domain": {
        "ewc": 58.85,
        "si": 64.76,
        "mas": 68.57,
        "lwf": 71.02,
        "gem": 96.16,
        "dgr": 95.74,
        "joint": 98.59,
    },
}

OPTIONS: dict[str, dict[str, Any]] = {
    "finetune": {},
    "joint": {},
    "ewc": {"lambda_ewc": 1000.0},
    "online-ewc": {"lambda_ewc": 1000.0, "gamma": 1.0},
    "si": {"c": 5.0},
    "mas": {"reg_lambda": 1.0},
    "lwf": {},
    "er": {"buffer_size": 1100},
    "der": {"buffer_size": 1100},
    "der++": {"buffer_size": 1100},
    "agem": {"memory_per_task": 220},
    "gem": {"memory_per_task": 220},
    "dgr": {},
    "oml": {"buffer_size": 1100},
    "packnet": {},
    "progressive": {},
    "eidetic": {},
    # a hybrid (the seed tutorial's Exercise 3): EWC's penalty on ER's replayed loss
    "ewc+er": {"lambda_ewc": 1000.0, "buffer_size": 1100},
}
SGD_METHODS = ("gem", "agem")


def protocol(
    name: str, method: str, *, data_root: str | None, seed: int, scenario: str = "task"
) -> RunConfig:
    """The run configuration of ``method`` under protocol ``name`` and ``scenario``."""
    base: dict[str, Any] = {
        "scenario": scenario,
        "data_root": data_root,
        "model": "mlp",
        "width": 400,
        "layers": 2,
        "bn": False,
        "batch_size": 128,
        "optimizer": "sgd" if method in SGD_METHODS else "adam",
        "lr": 0.01 if method in SGD_METHODS else 1e-3,
        "router": False,
        "seed": seed,
        "progress": False,
        "checkpoint_every": "never",
        "method": method,
        "method_options": OPTIONS[method],
    }
    if method == "progressive":
        base["width"] = 100  # one column per task: 5 or 10 columns of 100 units
    if name == "split-mnist":
        base.update(dataset="split-mnist")
    elif name == "permuted-mnist":
        base.update(dataset="permuted-mnist", num_tasks=10, limit_per_class=1000)
    else:
        raise SystemExit(f"unknown protocol {name!r}")
    train = TrainConfig(max_epochs=4, patience=4)
    eidetic = EideticNet(
        pruning_step=0.1, pruning_type="taylor", tolerance=0.005, max_recovery_epochs=1
    )
    return RunConfig(**base, train=train, eidetic=eidetic)


def task_only(method: str) -> bool:
    """``method`` keeps one head or column per task: it is task-incremental only."""
    return traits(create(method, **OPTIONS.get(method, {}))).task_incremental


def run_all(
    name: str, methods: list[str], data_root: str | None, seed: int, scenario: str = "task"
) -> list[dict[str, Any]]:
    rows = []
    key = name if scenario == "task" else f"{name}/{scenario}"
    for method in methods:
        if scenario != "task" and task_only(method):
            continue
        config = protocol(name, method, data_root=data_root, seed=seed, scenario=scenario)
        result = ef.run(config, log=lambda _: None)
        summary = summarize(result.matrix)
        published = PUBLISHED.get(key, {}).get(method)
        row = {
            "method": method,
            "average_accuracy": 100 * summary.average_accuracy,
            "forgetting": 100 * summary.forgetting,
            "backward_transfer": 100 * summary.backward_transfer,
            "forward_transfer": 100 * summary.forward_transfer,
            "seconds": result.seconds,
            "extra_memory_mib": result.extra_memory_bytes / 2**20,
            "published": published,
            "matrix": result.matrix,
            "options": config.method_options,
        }
        rows.append(row)
        print(
            f"{method:12s} avg {row['average_accuracy']:6.2f}  forgetting {row['forgetting']:5.2f}  "
            f"BWT {row['backward_transfer']:6.2f}  FWT {row['forward_transfer']:6.2f}  "
            f"{row['seconds']:7.1f} s  {row['extra_memory_mib']:6.2f} MiB"
            + (f"  (published {published})" if published else ""),
            flush=True,
        )
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | avg. accuracy (%) | published (%) | forgetting | BWT | FWT | wall time (s) | extra memory (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        published = f"{r['published']:.2f}" if r["published"] is not None else "–"
        lines.append(
            f"| {r['method']} | {r['average_accuracy']:.2f} | {published} | {r['forgetting']:.2f} | "
            f"{r['backward_transfer']:.2f} | {r['forward_transfer']:.2f} | {r['seconds']:.0f} | "
            f"{r['extra_memory_mib']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("protocol", choices=["split-mnist", "permuted-mnist"])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--methods", default=",".join(OPTIONS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tag", default="", help="appended to the output file name (a partial table)"
    )
    parser.add_argument(
        "--scenario",
        choices=["task", "class", "domain"],
        default="task",
        help="task-incremental (per-task heads), class- or domain-incremental (one head; "
        "EideticNet, PackNet and progressive networks are task-incremental only)",
    )
    args = parser.parse_args()
    keep_freed_memory()  # the CLI does the same: steadier step times
    methods = [m for m in args.methods.split(",") if args.scenario == "task" or not task_only(m)]
    rows = run_all(args.protocol, methods, args.data_root, args.seed, args.scenario)
    table = to_markdown(rows)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "compare",
        "protocol": args.protocol,
        "seed": args.seed,
        "scenario": args.scenario,
        "config": {
            m: dataclasses.asdict(
                protocol(args.protocol, m, data_root=None, seed=args.seed, scenario=args.scenario)
            )
            for m in methods
        },
        "environment": environment(torch.device("cpu")),
        "results": rows,
        "markdown": table,
    }
    suffix = ("" if args.scenario == "task" else f"-{args.scenario}") + (
        f"-{args.tag}" if args.tag else ""
    )
    out = RESULTS / f"compare-{args.protocol}{suffix}"
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    out.with_suffix(".md").write_text(table + "\n")
    print(f"wrote {out}.json and {out}.md")


if __name__ == "__main__":
    main()
