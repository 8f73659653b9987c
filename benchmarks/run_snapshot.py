"""What a run in progress has measured so far, from its checkpoint, as committed results.

A long run (the Permuted-MNIST paper protocol: 5.5 to 9 hours on 2 CPU cores) writes its
results only at the end; its checkpoint holds the accuracy matrix of the finished visits
and every epoch's record. This writes them out: ``progress.json`` (config, visits done, accuracy
matrix, accuracy after each finish, neurons owned per task in every layer) and
``history.csv``. Run: ``python -m benchmarks.run_snapshot CHECKPOINT OUTPUT_DIR``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import eidetic_func as ef
from eidetic_func.runner.report import write_history, write_text_atomic


def snapshot(checkpoint: ef.Checkpoint) -> dict[str, Any]:
    """The run's progress: visits done, accuracies, and per task the neurons (output rows)
    it owns in every weight of two or more dimensions."""
    meta, state = checkpoint.meta, checkpoint.state
    if not isinstance(meta, dict) or "matrix" not in meta or "visit" not in meta:
        raise ef.CheckpointError("not a run checkpoint: it has no accuracy matrix")
    layers = [k for k, p in state.params.items() if k.endswith(".weight") and p.dim() >= 2]
    owned: dict[str, dict[str, int]] = {}
    for task in sorted(state.finished):
        rows = {k: int((state.owner[k] == task).flatten(1).any(1).sum()) for k in layers}
        owned[str(task)] = {k: n for k, n in rows.items() if n}
    return {
        "note": "a run in progress: the visits counted are complete, a later one may have started",
        "config": meta.get("config"),
        "visits_done": meta["visit"],
        "accuracy_matrix": meta["matrix"],
        "accuracy_after_finish": meta.get("after_finish"),
        "neurons_owned_per_task": owned,
        "seconds_including_pauses": meta.get("seconds"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("output_dir", type=Path)
    args = parser.parse_args(argv)
    checkpoint = ef.load(args.checkpoint)
    payload = snapshot(checkpoint)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.output_dir / "progress.json", json.dumps(payload, indent=1) + "\n")
    write_history(list(checkpoint.history or []), args.output_dir / "history.csv")
    print(
        f"wrote {args.output_dir}/progress.json and history.csv ({payload['visits_done']} visits)"
    )


if __name__ == "__main__":
    main()
