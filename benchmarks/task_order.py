"""Task-order sensitivity (the seed tutorial's Exercise 2): EWC and EideticNet on Split-MNIST
in several task orders, under the comparison protocol of :mod:`benchmarks.compare`.

    python -m benchmarks.task_order --data-root ../shared/data [--orders given,reverse,random:1]

Each (method, order) run is appended to the JSON file as soon as it ends, and runs already
there are skipped, so an interrupted study continues where it stopped. The markdown table
reports, per method, the mean and the spread (min–max) of the average accuracy and the
backward transfer over the orders.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

from eidetic_func.runner.sequence import run

from .compare import protocol

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--methods", default="ewc,eidetic")
    parser.add_argument("--orders", default="given,reverse,random:1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS / "task-order-split-mnist.json")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = json.loads(args.output.read_text()) if args.output.exists() else []
    done = {(r["method"], r["order"]) for r in rows}
    for order in args.orders.split(","):
        for method in args.methods.split(","):
            if (method, order) in done:
                continue
            config = protocol("split-mnist", method, data_root=args.data_root, seed=args.seed)
            if order != "given":
                config = dataclasses.replace(config, task_order=order)
            started = time.perf_counter()
            result = run(config, log=lambda _: None)
            rows.append(
                {
                    "method": method,
                    "order": order,
                    "tasks": result.task_names,
                    "final": result.final,
                    "average_accuracy": result.summary["average_accuracy"],
                    "backward_transfer": result.summary["backward_transfer"],
                    "seconds": time.perf_counter() - started,
                }
            )
            args.output.write_text(json.dumps(rows, indent=2) + "\n")
            print(f"{method} {order}: {100 * rows[-1]['average_accuracy']:.2f} %", flush=True)
    args.output.with_suffix(".md").write_text(table(rows))
    print(table(rows))


def table(rows: list[dict[str, Any]]) -> str:
    """Per method: mean and min–max over orders of average accuracy and BWT (percent)."""
    lines = [
        "| method | orders | avg. accuracy (%) mean [min–max] | BWT (%) mean [min–max] |",
        "|---|---:|---|---|",
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        acc = [100 * r["average_accuracy"] for r in mine]
        bwt = [100 * r["backward_transfer"] for r in mine]
        lines.append(
            f"| {method} | {len(mine)} | {statistics.mean(acc):.2f} [{min(acc):.2f}–{max(acc):.2f}]"
            f" | {statistics.mean(bwt):.2f} [{min(bwt):.2f}–{max(bwt):.2f}] |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
