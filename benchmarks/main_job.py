"""The main job end to end: wall time and accuracy of ``eidetic-func run`` variants.

Each variant is the README's main job (``eidetic-func run``, the embedded default; the
adaptive pruning schedule) with extra options. Rounds run every variant once, in alternating
order, each in a fresh process (so imports and the data load count, as for a user);
reported are the median and quartiles of the wall times, and the accuracies of each run
(one seed: they repeat exactly for one thread count).
Run: ``python -m benchmarks.main_job [--repeats 5] [--threads N]
[--variant NAME=OPTIONS ...]``, e.g. ``--variant foreach=--no-fused-optimizer``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ._timing import environment, spread, write_json

MAIN_JOB = ["run", "--no-progress"]


def _one_run(options: list[str], threads: int | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "eidetic_func", *MAIN_JOB, "--output-dir", out]
        if threads is not None:
            command += ["--threads", str(threads)]
        start = time.perf_counter()
        subprocess.run([*command, *options], check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        results = json.loads((Path(out) / "results.json").read_text())
    router = results.get("router") or {}
    return {
        "seconds": seconds,
        "task_incremental": results["summary"]["average_accuracy"],
        "backward_transfer": results["summary"]["backward_transfer"],
        "routed_class_incremental": router.get("class_incremental_accuracy", float("nan")),
    }


def run(variants: dict[str, list[str]], repeats: int, threads: int | None) -> dict[str, object]:
    if repeats < 5:
        raise ValueError(f"report a median over at least 5 repeats, got {repeats}")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    order = list(variants.items())
    for round_ in range(repeats):
        for name, options in order if round_ % 2 == 0 else reversed(order):
            runs[name].append(_one_run(options, threads))
            last = runs[name][-1]
            print(
                f"round {round_ + 1}/{repeats} {name:12s} {last['seconds']:6.1f} s   "
                f"task-IL {100 * last['task_incremental']:.2f} %   "
                f"routed {100 * last['routed_class_incremental']:.2f} %",
                flush=True,
            )
    return {
        "benchmark": "main_job",
        "command": "eidetic-func " + " ".join(MAIN_JOB),
        "threads": threads if threads is not None else "torch's default",
        "repeats": repeats,
        "environment": environment(torch.device("cpu")),
        "results": [
            {
                "variant": name,
                "options": variants[name],
                "seconds": spread([r["seconds"] for r in runs[name]]),
                "runs": runs[name],
            }
            for name in variants
        ],
    }


def _variant(text: str) -> tuple[str, list[str]]:
    name, _, options = text.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"write NAME=OPTIONS, got {text!r}")
    return name, shlex.split(options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's own")
    parser.add_argument(
        "--variant",
        type=_variant,
        action="append",
        default=None,
        help="NAME=OPTIONS added to the main job (default: the main job alone)",
    )
    args = parser.parse_args()
    variants = dict(args.variant or [("default", [])])
    payload = run(variants, args.repeats, args.threads)
    for row in payload["results"]:  # type: ignore[attr-defined]
        s = row["seconds"]
        print(f"{row['variant']:12s} {s['median']:6.1f} s [{s['q1']:.1f}–{s['q3']:.1f}]")
    print(f"wrote {write_json('main-job-cpu.json', payload)}")


if __name__ == "__main__":
    main()
