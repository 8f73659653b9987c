"""Writing a run's results: JSON, CSV history, markdown summary and PNG plots."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eidetic_func.runner.config_file import CONFIG_FILE, to_toml
from eidetic_func.training import metrics

if TYPE_CHECKING:
    from eidetic_func.runner.result import RunResult


def write_outputs(result: RunResult, output_dir: str | Path) -> dict[str, Path]:
    """``results.json``, ``history.csv``, ``summary.md`` and PNG plots into ``output_dir``."""
    return write_report(result, Path(output_dir))


def write_report(result: RunResult, output_dir: Path) -> dict[str, Path]:
    """Write ``results.json``, ``history.csv``, ``summary.md`` and (with matplotlib) plots.

    Every file is written atomically (temporary file, then rename). Returns the paths.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    written = {
        "results": write_text_atomic(
            output_dir / "results.json", json.dumps(result.to_dict(), indent=2) + "\n"
        ),
        "history": write_history(result.history, output_dir / "history.csv"),
        "summary": write_text_atomic(output_dir / "summary.md", summary_markdown(result)),
        "config": write_text_atomic(output_dir / CONFIG_FILE, to_toml(result.config)),
    }
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:  # plots are an optional extra: pip install 'eidetic-func[plots]'
        return written
    written["accuracy_plot"] = plot_accuracy_matrix(result, output_dir / "accuracy_matrix.png")
    if result.capacity is not None and any(u["owned"] for u in result.capacity["units"]):
        # only a method that owns neurons (EideticNet, PackNet) has capacity to show
        names = list(result.task_names) + (["router"] if result.router is not None else [])
        written["capacity_plot"] = plot_capacity(
            result.capacity, output_dir / "capacity.png", task_names=names
        )
    return written


def summary_markdown(result: RunResult) -> str:
    """The accuracy matrix (first pass) and metrics as markdown, plus router and timing."""
    n = len(result.task_names)
    lines = [f"# {result.config.dataset} · {result.config.model} · {result.config.method}", ""]
    lines.append(metrics.to_markdown(result.matrix[:n], result.task_names))
    if len(result.matrix) > n:
        lines += [
            "",
            f"Final accuracy after {len(result.matrix)} visits: "
            + ", ".join(f"{a:.2%}" for a in result.final),
        ]
    if result.router is not None:
        r = result.router
        lines += [
            "",
            "| task router | value (%) |",
            "|---|---:|",
            f"| task-id accuracy | {100 * r['task_accuracy']:.2f} |",
            f"| class-incremental accuracy (routed) | {100 * r['class_incremental_accuracy']:.2f} |",
            f"| task-incremental accuracy (oracle) | {100 * r['oracle_task_incremental_accuracy']:.2f} |",
        ]
    lines += [
        "",
        f"Extra memory (ownership masks or method state): "
        f"{result.extra_memory_bytes / 2**20:.2f} MiB",
        f"Wall time: {result.seconds:.1f} s",
        "",
    ]
    if result.warnings:
        lines += ["**Warnings**", "", *(f"- {w}" for w in result.warnings), ""]
    return "\n".join(lines)


def plot_accuracy_matrix(result: RunResult, path: Path) -> Path:
    import matplotlib.pyplot as plt

    matrix = result.matrix
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(matrix[0]), 1.0 + 0.6 * len(matrix)))
    image = ax.imshow([[100 * a for a in row] for row in matrix], vmin=0, vmax=100, cmap="viridis")
    for i, row in enumerate(matrix):
        for j, a in enumerate(row):
            ax.text(
                j,
                i,
                f"{100 * a:.1f}",
                ha="center",
                va="center",
                color="white" if a < 0.6 else "black",
                fontsize=8,
            )
    ax.set_xticks(range(len(matrix[0])), result.task_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(
        range(len(matrix)),
        [f"after {result.task_names[t]}" for t in result.visits[: len(matrix)]],
        fontsize=8,
    )
    ax.set_xlabel("accuracy on task (%)")
    fig.colorbar(image, ax=ax, fraction=0.04)
    ax.set_title("Accuracy matrix")
    return _save(fig, path)


def plot_capacity(
    report: dict[str, Any], path: Path, *, task_names: list[str] | None = None
) -> Path:
    """Stacked bars per unit (labelled with its size): neurons owned by each task, pruned,
    and free.

    ``task_names[t]`` labels task ``t`` (e.g. its classes, or ``"router"``); the legend
    stands beside the bars, never over them.
    """
    import matplotlib.pyplot as plt

    units = report["units"]
    tasks = sorted({int(t) for u in units for t in u["owned"]})
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(units) + 2) + 2.2, 3.5))
    bottom = [0.0] * len(units)
    cmap = plt.get_cmap("tab10")
    for t in tasks:
        share = [u["owned"].get(str(t), 0) / u["size"] for u in units]
        name = task_names[t] if task_names is not None and t < len(task_names) else None
        label = f"task {t}" if name is None else (name if name == "router" else f"{t}: {name}")
        ax.bar(range(len(units)), share, bottom=bottom, label=label, color=cmap(t % 10))
        bottom = [b + s for b, s in zip(bottom, share)]
    free = [(u["free"] + u["pruned"]) / u["size"] for u in units]
    ax.bar(range(len(units)), free, bottom=bottom, label="free", color="lightgrey")
    ax.set_xticks(
        range(len(units)),
        [f"{u['name']} ({u['size']})" for u in units],  # sizes differ once a unit grows
        rotation=45,
        ha="right",
        fontsize=7,
    )
    ax.set_ylabel("share of neurons")
    ax.set_ylim(0, 1)
    # reversed, so the legend reads top to bottom like the stacks
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    ax.set_title("Capacity owned per task")
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_history(history: list[dict[str, Any]], path: Path) -> Path:
    """Write a run's per-epoch records as CSV (one column per key any record has), atomically."""
    columns: list[str] = []
    for record in history:
        columns.extend(k for k in record if k not in columns)

    def write(f: Any) -> None:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)

    return _atomic_write(path, write)


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that a crash leaves the old file or the new, never part."""
    return _atomic_write(path, lambda f: f.write(text))


def _atomic_write(path: Path, write: Callable[[Any], object]) -> Path:
    """Write through a temporary file beside ``path`` and rename it over ``path``; the file
    gets the mode a plainly created one would (mkstemp's is 0600); nothing is left behind
    when a write fails (e.g. a full disk)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask
