"""Fixed-seed small runs whose accuracy matrices are committed as a reference.

A refactor of the shell (training loop, sequence, checkpointing, methods) must not change
what a run computes. ``tests/test_reference_runs.py`` replays every run below and compares
its accuracy matrix (and the task router's accuracies) with ``reference/runs.json`` to the
last digit. Regenerate the file only for an intended change of results::

    python -m tests.reference_runs --write [--data-root DIR]

Every preset (shrunk) and every method, EideticNet in its modes, one CPU thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from eidetic_func.config import TrainConfig
from eidetic_func.methods import METHODS
from eidetic_func.presets import PRESETS
from eidetic_func.run_config import RunConfig
from eidetic_func.sequence import run

REFERENCE = Path(__file__).with_name("reference") / "runs.json"

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite the reference file")
    parser.add_argument("--data-root", default=None, help="a writable copy of ../shared/data")
    parser.add_argument("--only", nargs="*", default=None, help="run these names only")
    args = parser.parse_args()
    results = {}
    for name, config in reference_configs().items():
        if args.only and name not in args.only:
            continue
        results[name] = fingerprint(config, args.data_root)
        print(name, json.dumps(results[name]), flush=True)
    if args.write:
        REFERENCE.parent.mkdir(exist_ok=True)
        REFERENCE.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
