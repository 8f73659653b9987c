"""Fixed-seed small runs whose accuracy matrices are committed as a reference.

A refactor of the shell (training loop, sequence, checkpointing, methods) must not change
what a run computes. ``tests/test_reference_runs.py`` replays every run below and compares
its accuracy matrix (and the task router's accuracies) with ``reference/runs.json`` to the
last digit. Regenerate the file only for an intended change of results::

    python -m tests.reference_runs --write [--data-root DIR]

Every preset (shrunk) and every method, EideticNet in its modes, one CPU thread.

The runs execute in a child interpreter whose CPU kernels are pinned to AVX2 where the
processor has it (:func:`pinned_isa_env`). torch picks its vectorized kernels by
instruction set, and its AVX-512 kernels add in a different order: on an AVX-512 machine
the same run differs in the last bits, enough to move an accuracy by one image. The
reference was recorded under AVX2, the widest set every x86-64 machine we test on has.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eidetic_func.config import TrainConfig
from eidetic_func.methods import METHODS
from eidetic_func.presets import PRESETS
from eidetic_func.run_config import RunConfig
from eidetic_func.sequence import run

REFERENCE = Path(__file__).with_name("reference") / "runs.json"
_REPO = Path(__file__).resolve().parents[1]

_SMALL = TrainConfig(
    max_epochs=2, patience=1, pruning_step=0.3, max_recovery_epochs=1, tolerance=0.02
)
_BASE = RunConfig(
    dataset="embedded",
    limit_per_class=20,
    width=32,
    batch_size=32,
    train=_SMALL,
    router=False,
    progress=False,
    threads=1,
)


def _eidetic(**changes: Any) -> RunConfig:
    train = {k: changes.pop(k) for k in list(changes) if k in TrainConfig.__dataclass_fields__}
    return dataclasses.replace(_BASE, train=dataclasses.replace(_BASE.train, **train), **changes)


def _preset(name: str) -> RunConfig:
    """Preset ``name`` with its distinctive settings, shrunk to seconds."""
    config = PRESETS[name].config
    return dataclasses.replace(
        config,
        num_tasks=2,
        limit_per_class=20,
        width=min(config.width or 32, 32),
        progress=False,
        threads=1,
        train=dataclasses.replace(config.train, max_epochs=2, patience=1, max_recovery_epochs=1),
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


def needs_data_root(config: RunConfig) -> bool:
    return config.dataset != "embedded"


def fingerprint(config: RunConfig, data_root: str | None = None) -> dict[str, Any]:
    """The run's accuracy matrix and task-router accuracies."""
    if needs_data_root(config):
        config = dataclasses.replace(config, data_root=data_root)
    result = run(config, log=lambda _: None)
    return {"matrix": result.matrix, "router": result.router}


def pinned_isa_env(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """Environment variables that make torch (ATen, oneDNN, MKL) use its AVX2 kernels, on an
    x86-64 processor that has AVX2 (Linux: read from ``cpuinfo``); empty elsewhere."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    try:
        flags = next(
            (
                line.split(":", 1)[1].split()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("flags")
            ),
            [],
        )
    except OSError:
        return {}
    if "avx2" not in flags:
        return {}
    return {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    }


def fingerprints(data_root: str | None, only: Sequence[str] | None = None) -> dict[str, Any]:
    """``{name: fingerprint}`` of the reference runs (all, or ``only``), computed in a child
    interpreter under :func:`pinned_isa_env`; ``"_cpu_capability"`` is the kernel set the
    child's torch used."""
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "fingerprints.json"
        command = [sys.executable, "-m", "tests.reference_runs", "--in-process", str(output)]
        if data_root is not None:
            command += ["--data-root", data_root]
        if only:
            command += ["--only", *only]
        done = subprocess.run(
            command,
            cwd=_REPO,
            env={**os.environ, **pinned_isa_env()},
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the reference runs failed:\n{done.stderr[-4000:]}")
        result: dict[str, Any] = json.loads(output.read_text())
        return result


def _compute(data_root: str | None, only: Sequence[str] | None) -> dict[str, Any]:
    import torch

    results: dict[str, Any] = {"_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    for name, config in reference_configs().items():
        if only and name not in only:
            continue
        results[name] = fingerprint(config, data_root)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite the reference file")
    parser.add_argument("--data-root", default=None, help="a writable copy of ../shared/data")
    parser.add_argument("--only", nargs="*", default=None, help="run these names only")
    parser.add_argument("--in-process", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_process is not None:  # the child of fingerprints(): environment already set
        Path(args.in_process).write_text(json.dumps(_compute(args.data_root, args.only)))
        return
    results = fingerprints(args.data_root, args.only)
    print(f"CPU kernels: {results.pop('_cpu_capability')}")
    for name, measured in results.items():
        print(name, json.dumps(measured), flush=True)
    if args.write:
        REFERENCE.parent.mkdir(exist_ok=True)
        REFERENCE.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
