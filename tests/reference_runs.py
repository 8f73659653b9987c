"""Fixed-seed small runs that guard refactors: what they must show everywhere, and what they
recorded on one machine.

Every preset (shrunk) and every method, EideticNet in its modes, one CPU thread, on data
that ships with the package (the embedded subset; the presets read it from a data root in
torchvision's layout that ``tests/torchvision_files.py`` writes). Nothing is downloaded.

Floating-point results depend on the machine: torch picks its kernels by instruction set
and vendor, and these tiny runs (200 test images a task) turn a last-bit difference into
another trajectory. So ``tests/e2e/test_reference_runs.py`` checks three kinds of things:

- on every machine, exactly: the same runs twice (in two processes, in opposite orders)
  are identical to the last bit; methods that freeze (EideticNet, PackNet, progressive)
  show backward transfer 0 and every finished task's column constant; the matrix and
  the router have the run's shape;
- on the machine that recorded ``reference/runs.json`` (same :func:`machine_fingerprint`:
  CPU model and flags, torch build and kernels, threads), every accuracy matrix and router
  to the last digit;
- elsewhere, every run's summary statistics (final average accuracy, routed accuracy)
  within the tolerance recorded beside them: four standard deviations of the difference
  of two runs, from the run's spread over ten seeds on the recording machine (a machine
  change perturbs a run no more than a new seed, which also changes the initialization
  and the data order), at least two test images.

To check that a change keeps results (a refactor), record on your machine before it and
compare after — on one machine the comparison is exact::

    python -m tests.reference_runs --write /tmp/before.json     # at the base commit
    python -m tests.reference_runs --compare /tmp/before.json   # after the change

``--write`` without a path rewrites ``reference/runs.json`` (an intended change of results;
it also measures the seed spreads: ten times the runs' time, about 7 minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from statistics import stdev
from typing import Any

from eidetic_func.methods.eidetic import EideticNet
from eidetic_func.methods.registry import METHODS
from eidetic_func.runner.config import RunConfig
from eidetic_func.runner.presets import PRESETS
from eidetic_func.training.config import TrainConfig

REFERENCE = Path(__file__).with_name("reference") / "runs.json"
_REPO = Path(__file__).resolve().parents[1]
THREADS = 1
SEEDS = tuple(range(10))  # their spread sets the cross-machine tolerance
TOLERANCE_SDS = 4  # standard deviations of the difference of two runs
MIN_TOLERANCE_IMAGES = 2
# Environment variables that change which kernels torch, oneDNN and MKL run.
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR")
# Methods that freeze what a finished task uses: its accuracy may never change.
FREEZING = frozenset({"eidetic", "packnet", "progressive"})

# Small, yet enough to learn (a fine-tuned task reaches about 95 %): a run that learns
# nothing has accuracies that a last-bit difference moves at random.
LIMIT_PER_CLASS = 100
EPOCHS = 3
_BASE = RunConfig(
    dataset="embedded",
    limit_per_class=LIMIT_PER_CLASS,
    width=32,
    batch_size=32,
    train=TrainConfig(max_epochs=EPOCHS, patience=1),
    eidetic=EideticNet(
        pruning_step=0.3, max_recovery_epochs=1, tolerance=0.02, pruning_schedule="fixed"
    ),
    router=False,
    progress=False,
    threads=THREADS,
)


def _eidetic(**changes: Any) -> RunConfig:
    nested = {
        name: dataclasses.replace(
            getattr(_BASE, name),
            **{k: changes.pop(k) for k in list(changes) if k in cls.__dataclass_fields__},
        )
        for name, cls in (("train", TrainConfig), ("eidetic", EideticNet))
    }
    return dataclasses.replace(_BASE, **nested, **changes)


def _preset(name: str) -> RunConfig:
    """Preset ``name`` with its distinctive settings, shrunk to seconds."""
    config = PRESETS[name].config
    return dataclasses.replace(
        config,
        num_tasks=2,
        limit_per_class=LIMIT_PER_CLASS,
        width=min(config.width or 32, 32),
        progress=False,
        threads=THREADS,
        train=dataclasses.replace(config.train, max_epochs=EPOCHS, patience=1),
        eidetic=dataclasses.replace(config.eidetic, max_recovery_epochs=1),
    )


def reference_configs() -> dict[str, RunConfig]:
    """``{name: config}`` of every reference run (presets need ``data_root`` set)."""
    configs: dict[str, RunConfig] = {
        "eidetic": _eidetic(),
        "eidetic-router": _eidetic(router=True),
        "eidetic-adaptive": _eidetic(pruning_schedule="adaptive", first_pruning_step=0.5),
        "eidetic-no-forward-transfer": _eidetic(forward_transfer=False),
        "eidetic-cycles": _eidetic(cycles=2),
        "eidetic-holdout-sgd": _eidetic(holdout=0.2, optimizer="sgd", lr=0.02, lr_factor=0.5),
        "eidetic-random-l2": _eidetic(pruning_type=["random", "l2"]),
    }
    for method in sorted(set(METHODS) - {"eidetic"}):
        configs[method] = dataclasses.replace(_BASE, method=method)
    for method in ("ewc", "er", "der++"):
        configs[f"{method}-class"] = dataclasses.replace(_BASE, method=method, scenario="class")
    for name in sorted(PRESETS):
        configs[f"preset:{name}"] = _preset(name)
    return configs


def freezes(config: RunConfig) -> bool:
    """Whether every member of ``config``'s method keeps finished tasks frozen."""
    return set(config.method.split("+")) <= FREEZING


# --------------------------------------------------------------------------- the machine


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        lines = path.read_text().split("\n\n", 1)[0].splitlines()
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def machine_fingerprint(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """What decides the last bits of a run: the processor (model, family, flags), the torch
    build and the kernels it chose, any kernel override in the environment, the threads."""
    import torch

    cpu = _cpuinfo(cpuinfo)
    flags = " ".join(sorted(cpu.get("flags", "").split()))
    return {
        "machine": platform.machine(),
        "cpu": cpu.get("model name") or platform.processor() or "unknown",
        "cpu_id": " ".join(
            f"{k}={cpu[k]}" for k in ("vendor_id", "cpu family", "model", "stepping") if k in cpu
        ),
        "cpu_flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16],
        "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "kernel_env": {k: os.environ[k] for k in KERNEL_ENV if k in os.environ},
        "threads": THREADS,
    }


# --------------------------------------------------------------------------- running


def fingerprint(config: RunConfig, data_root: str) -> dict[str, Any]:
    """The run's visits, accuracy matrix and task-router accuracies."""
    from eidetic_func.runner.sequence import run

    if config.dataset != "embedded":
        config = dataclasses.replace(config, data_root=data_root)
    result = run(config, log=lambda _: None)
    return {"visits": result.visits, "matrix": result.matrix, "router": result.router}


def _compute(names: Sequence[str], seed: int) -> dict[str, Any]:
    from tests.torchvision_files import write_data_root

    configs = reference_configs()
    with tempfile.TemporaryDirectory() as root:
        write_data_root(Path(root), extracted=True)  # read by torchvision's reader: no md5
        return {
            name: fingerprint(dataclasses.replace(configs[name], seed=seed), root) for name in names
        }


def measure(
    only: Sequence[str] | None = None, *, reverse: bool = False, seed: int = 0
) -> dict[str, Any]:
    """``{name: fingerprint}`` of the reference runs (all, or ``only``), computed in a fresh
    interpreter (no state left by other code), in the listed order or ``reverse``d."""
    names = [n for n in reference_configs() if not only or n in only]
    if reverse:
        names.reverse()
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "fingerprints.json"
        command = [sys.executable, "-m", "tests.reference_runs", "--in-process", str(output)]
        command += ["--seed", str(seed), "--only", *names]
        done = subprocess.run(
            command, cwd=_REPO, capture_output=True, text=True, check=False, env=os.environ
        )
        if done.returncode != 0:
            raise RuntimeError(f"the reference runs failed:\n{done.stderr[-4000:]}")
        result: dict[str, Any] = json.loads(output.read_text())
        return result


# --------------------------------------------------------------------------- comparing


def _test_images(config: RunConfig) -> int:
    """Test images of one task (the smallest), which sets an accuracy's granularity."""
    from eidetic_func.data.sequences import load_sequence
    from tests.torchvision_files import write_data_root

    if config.dataset == "embedded":
        seq = load_sequence("embedded", limit_per_class=config.limit_per_class)
    else:
        with tempfile.TemporaryDirectory() as root:
            write_data_root(Path(root), extracted=True)
            seq = load_sequence(
                config.dataset,
                root,
                num_tasks=config.num_tasks,
                limit_per_class=config.limit_per_class,
            )
    return min(len(task.test) for task in seq)


def statistics_of(run: dict[str, Any]) -> dict[str, float]:
    """The numbers compared across machines: the final average accuracy, and the routed
    class-incremental accuracy where a router was trained."""
    final = run["matrix"][-1]
    stats = {"average_accuracy": sum(final) / len(final)}
    if run["router"] is not None:
        stats["class_incremental_accuracy"] = run["router"]["class_incremental_accuracy"]
    return stats


def tolerances(runs_by_seed: Sequence[dict[str, Any]], images: dict[str, int]) -> dict[str, Any]:
    """``{name: {statistic: tolerance}}``. A run on another machine and the recorded one are
    taken as two draws from the run's spread over seeds (sample standard deviation ``s``):
    their difference has standard deviation ``√2·s``, and the tolerance is
    :data:`TOLERANCE_SDS` of those, at least :data:`MIN_TOLERANCE_IMAGES` test images of
    the run's smallest task."""
    out: dict[str, Any] = {}
    for name in runs_by_seed[0]:
        values = [statistics_of(runs[name]) for runs in runs_by_seed]
        floor = MIN_TOLERANCE_IMAGES / images[name]
        out[name] = {
            stat: round(
                max(TOLERANCE_SDS * math.sqrt(2) * stdev(v[stat] for v in values), floor), 4
            )
            for stat in values[0]
        }
    return out


def differences(
    reference: dict[str, Any], measured: dict[str, Any], *, exact: bool
) -> dict[str, str]:
    """``{name: what differs}`` between a reference file's runs and measured ones: every
    digit when ``exact``, else the statistics beyond their tolerance."""
    out = {}
    for name, recorded in reference["runs"].items():
        if name not in measured:
            out[name] = "not measured"
            continue
        if exact:
            if measured[name] != recorded:
                out[name] = "results differ"
            continue
        got, want = statistics_of(measured[name]), statistics_of(recorded)
        bad = [
            f"{stat} {got[stat]:.4f} against {want[stat]:.4f} (tolerance {tol})"
            for stat, tol in reference["tolerance"][name].items()
            if abs(got[stat] - want[stat]) > tol + 1e-9
        ]
        if bad:
            out[name] = "; ".join(bad)
    return out


def compare(reference: dict[str, Any], measured: dict[str, Any]) -> tuple[bool, dict[str, str]]:
    """``(exact, differences)``: exact when this machine's fingerprint is the recording one."""
    exact = reference["machine"] == machine_fingerprint()
    return exact, differences(reference, measured, exact=exact)


def record(path: Path, *, spread: bool) -> dict[str, Any]:
    """Measure every run here and write the reference file ``path`` (with the tolerance from
    :data:`SEEDS` when ``spread``, else none: an exact, same-machine record)."""
    runs = measure()
    reference: dict[str, Any] = {"machine": machine_fingerprint(), "runs": runs}
    if spread:
        by_seed = [runs, *(measure(seed=s) for s in SEEDS[1:])]
        configs = reference_configs()
        images = {name: _test_images(configs[name]) for name in runs}
        reference["seeds"] = list(SEEDS)
        reference["tolerance"] = tolerances(by_seed, images)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(reference, indent=1) + "\n")
    return reference


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--write",
        nargs="?",
        const=str(REFERENCE),
        metavar="PATH",
        help="record the runs on this machine (default: rewrite the committed reference)",
    )
    action.add_argument("--compare", metavar="PATH", help="compare the runs with a record")
    parser.add_argument("--only", nargs="*", default=None, help="run these names only")
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--in-process", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_process is not None:  # the child of measure()
        names = args.only or list(reference_configs())
        Path(args.in_process).write_text(json.dumps(_compute(names, args.seed)))
        return
    if args.write is not None:
        path = Path(args.write)
        record(path, spread=path.resolve() == REFERENCE.resolve())
        print(f"wrote {path}")
        return
    measured = measure(args.only)
    if args.compare is None:
        for name, runs in measured.items():
            print(name, json.dumps(runs), flush=True)
        return
    reference = json.loads(Path(args.compare).read_text())
    if args.only:
        reference["runs"] = {k: v for k, v in reference["runs"].items() if k in args.only}
    if reference["machine"] != machine_fingerprint() and "tolerance" not in reference:
        sys.exit(f"{args.compare} was recorded on another machine and holds no tolerance")
    exact, changed = compare(reference, measured)
    how = "to the last digit (same machine)" if exact else "within the recorded tolerance"
    for name, why in changed.items():
        print(f"CHANGED {name}: {why}")
    print(f"{len(reference['runs']) - len(changed)} of {len(reference['runs'])} runs match {how}")
    sys.exit(1 if changed else 0)


if __name__ == "__main__":
    main()
