"""How long the ``eidetic-func`` command takes to answer what needs no training.

Each variant is a fresh process of the installed console script (its interpreter start
counts, as for a user): ``--help``, ``run --help``, ``methods``, ``bench --list`` and an
argument error, beside ``python -c "import torch"`` for scale. Rounds run every variant once,
in alternating order; reported are the median and quartiles of the wall times.
Run: ``python -m benchmarks.cli_startup [--repeats 15]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

from ._timing import environment, spread, write_json

COMMAND = str(Path(sys.executable).with_name("eidetic-func"))
VARIANTS = {
    "eidetic-func --help": [COMMAND, "--help"],
    "eidetic-func run --help": [COMMAND, "run", "--help"],
    "eidetic-func methods": [COMMAND, "methods"],
    "eidetic-func bench --list": [COMMAND, "bench", "--list"],
    "eidetic-func run --epochs x (an error)": [COMMAND, "run", "--epochs", "x"],
    'python -c "import torch" (for scale)': [sys.executable, "-c", "import torch"],
}


def _seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def run(repeats: int) -> dict[str, object]:
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_ in range(repeats):
        order = list(VARIANTS) if round_ % 2 == 0 else list(reversed(VARIANTS))
        for name in order:
            samples[name].append(_seconds(VARIANTS[name]))
    return {
        "benchmark": "cli_startup",
        "repeats": repeats,
        "environment": environment(torch.device("cpu")),
        "results": [
            {"variant": name, "command": VARIANTS[name][1:], "seconds": spread(samples[name])}
            for name in VARIANTS
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    payload = run(parser.parse_args().repeats)
    for row in payload["results"]:  # type: ignore[attr-defined]
        s = row["seconds"]
        print(f"{row['variant']:42s} {s['median']:6.3f} s [{s['q1']:.3f}–{s['q3']:.3f}]")
    print(f"wrote {write_json('cli-startup-cpu.json', payload)}")


if __name__ == "__main__":
    main()
