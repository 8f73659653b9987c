"""The GPU check: one command that runs what needs a device, within a time budget.

Steps, in order, each under ``timeout`` (a failing or late step does not stop the others):
the CUDA tests (``needs CUDA``: checkpoints on CUDA, the bit-identity properties and a
whole run on CUDA), the step / importance / Fisher benchmarks with ``--device``,
``eidetic-func bench split-mnist``, then as many tasks of ``permuted-mnist-paper`` as the
time left allows (checkpointed after every epoch: the next check resumes it). Every step's
exit status, time and log go under ``--out`` (``summary.json``, ``<step>.log``).
Run: ``python -m benchmarks.gpu_check [--device cuda] [--budget 520] [--dry-run]``.
``--dry-run`` runs every step in a seconds-long form (on the CPU: proves the script runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PAPER = "permuted-mnist-paper"


def steps(device: str, data_root: str, out: Path, dry: bool) -> list[tuple[str, list[str], int]]:
    """``(name, command, seconds allowed)`` of every step but the paper run."""
    py = [sys.executable, "-m"]
    bench = [*py, "eidetic_func", "bench", "--device", device, "--data-root", data_root]
    tests = ["tests/io/test_checkpoint.py", "tests/properties/test_invariants.py"]
    tests += ["tests/runner/test_cuda_runs.py"]
    short = ["--limit-per-class", "20", "--num-tasks", "2"] if dry else []
    return [
        ("cuda-tests", [*py, "pytest", "-q", "-p", "no:cacheprovider", "-rs", *tests,
                        "-k", "cuda" if device == "cuda" else "cuda or cpu"], 150),
        ("step", [*py, "benchmarks.step", "--device", device, "--repeats", "5",
                  *(["--only", "MLP 784-400-400"] if dry else [])], 120),
        ("importance", [*py, "benchmarks.importance", "--device", device, "--models", "mlp",
                        "--slow-repeats", "5", *(["--no-compile"] if dry else [])], 90),
        ("fisher", [*py, "benchmarks.fisher", "--device", device, "--repeats", "5",
                    *(["--no-compile"] if dry else [])], 90),
        ("split-mnist", [*bench, "split-mnist", "--output-dir", str(out / "split-mnist"),
                         "--overwrite", "--no-progress", *short], 150),
    ]  # fmt: skip


def run_step(name: str, command: list[str], seconds: float, out: Path) -> dict[str, Any]:
    """Run ``command`` for at most ``seconds`` (then SIGINT, and SIGKILL 15 s later), its
    output to ``out/<name>.log``; its exit status (124: out of time) and time."""
    start = time.perf_counter()
    wrapped = ["timeout", "-s", "INT", "-k", "15", str(max(1, int(seconds))), *command]
    with (out / f"{name}.log").open("w") as log:
        log.write(" ".join(command) + "\n\n")
        log.flush()
        status = subprocess.call(wrapped, stdout=log, stderr=subprocess.STDOUT)
    seconds_taken = time.perf_counter() - start
    print(f"{name:14s} exit {status:4d} {seconds_taken:7.1f} s", flush=True)
    return {"step": name, "exit": status, "seconds": round(seconds_taken, 1), "command": command}


def paper_step(device: str, data_root: str, out: Path, seconds: float, dry: bool) -> dict[str, Any]:
    """As many tasks of the paper preset as fit in ``seconds``, resumed where the last
    check stopped; with how many task visits are done."""
    run_dir = out.parent / PAPER  # kept beside the checks, so the next one resumes it
    resume = ["--resume"] if (run_dir / "progress.json").exists() else []
    short = ["--limit-per-class", "20", "--num-tasks", "2"] if dry else []
    command = [sys.executable, "-m", "eidetic_func", "bench", PAPER, "--device", device,
               "--data-root", data_root, "--output-dir", str(run_dir), "--no-progress",
               *resume, *short]  # fmt: skip
    if seconds < 30:
        return {"step": PAPER, "exit": None, "seconds": 0.0, "skipped": "no time left"}
    result = run_step(PAPER, command, seconds, out)
    result["visits_done"] = _visits_done(run_dir)
    result["finished"] = (run_dir / "results.json").exists()
    return result


def _visits_done(run_dir: Path) -> int | None:
    for name, key in (("results.json", "accuracy_matrix"), ("progress.json", "visits_done")):
        path = run_dir / name
        if path.exists():
            value = json.loads(path.read_text()).get(key)
            return len(value) if isinstance(value, list) else value
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget", type=float, default=520.0, help="seconds for all steps")
    parser.add_argument("--data-root", default="../shared/data", help="holds MNIST/raw/*.gz")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu-check"))
    parser.add_argument("--dry-run", action="store_true", help="seconds-long steps")
    args = parser.parse_args(argv)
    deadline = time.perf_counter() + args.budget
    out = args.out / args.device
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONPATH", str(Path.cwd()))
    os.environ["EIDETIC_BENCH_RESULTS"] = str(out / "benchmarks")  # not the committed JSON
    results = []
    for name, command, seconds in steps(args.device, args.data_root, out, args.dry_run):
        left = deadline - time.perf_counter()
        if left < 10:
            results.append({"step": name, "exit": None, "seconds": 0.0, "skipped": "no time"})
            continue
        results.append(run_step(name, command, min(seconds, left), out))
    left = deadline - time.perf_counter()
    results.append(paper_step(args.device, args.data_root, out, left, args.dry_run))
    summary = {"device": args.device, "dry_run": args.dry_run, "budget_s": args.budget,
               "steps": results}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary: {out / 'summary.json'}")
    return 0 if all(r.get("exit") == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
