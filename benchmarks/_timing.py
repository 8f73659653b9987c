"""Timing helpers shared by the benchmarks: interleaved medians after warm-up."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from eidetic_func.training.allocator import freed_memory_kept, keep_freed_memory

# where the benchmarks write their JSON; EIDETIC_BENCH_RESULTS points elsewhere (the GPU
# check: its own folder, so that a check never overwrites the committed results)
RESULTS = Path(
    os.environ.get("EIDETIC_BENCH_RESULTS") or Path(__file__).resolve().parent / "results"
)


def timing_parser(
    doc: str | None,
    *,
    repeats: int | None = None,
    warmup: int | None = None,
    device: bool = False,
    threads: int | None = 1,
) -> argparse.ArgumentParser:
    """The arguments every timing benchmark shares, described by its module ``doc``'s first
    line: ``--threads`` (torch's intra-op threads; None: torch's default) and, when given
    defaults, ``--repeats``, ``--warmup`` and ``--device``. Call :func:`prepare_timing` with
    the parsed ``threads`` before measuring."""
    parser = argparse.ArgumentParser(description=(doc or "").partition("\n")[0] or None)
    if device:
        parser.add_argument("--device", default="cpu")
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats)
    if warmup is not None:
        parser.add_argument("--warmup", type=int, default=warmup)
    shown = "torch's default" if threads is None else threads
    parser.add_argument(
        "--threads", type=int, default=threads, help=f"torch threads (default: {shown})"
    )
    return parser


def set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


def prepare_timing(threads: int | None) -> None:
    """The process settings every timing benchmark runs under: freed memory kept (as the
    CLI does: steadier step times), ``threads`` torch threads, and subnormals flushed (their
    arithmetic is 10-100x slower on x86 and appears in AdamW's second moments of weights
    with vanishing gradients; flushed for every variant alike)."""
    keep_freed_memory()
    set_threads(threads)
    torch.set_flush_denormal(True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_samples(
    fns: dict[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int,
    device: torch.device,
) -> dict[str, list[float]]:
    """Seconds of each call of each function, ``repeats`` rounds after ``warmup`` rounds.

    Every round calls each function once, in an order that alternates between rounds, so
    drift on the machine and the position in a round hit all functions alike.
    """
    if repeats < 5:
        raise ValueError(f"report a median over at least 5 repeats, got {repeats}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    for round_ in range(repeats):
        for name, fn in order if round_ % 2 == 0 else reversed(order):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def spread(values: list[float]) -> dict[str, float]:
    """Median, quartiles and range of ``values`` (the numbers a table reports)."""
    if len(values) == 1:
        q1 = q3 = values[0]
    else:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {
        "median": statistics.median(values),
        "q1": q1,
        "q3": q3,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def ratio_spread(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """The spread of per-round ratios (rounds are interleaved, so each pair shares drift)."""
    return spread([a / b for a, b in zip(numerator, denominator)])


def print_spreads(
    title: str, times_us: dict[str, dict[str, float]], ratios: dict[str, dict[str, float]]
) -> None:
    """Print a block of timings (µs) and ratios as median [quartiles], under ``title``."""
    print(title, flush=True)
    width = max(map(len, [*times_us, *ratios]), default=0)
    for k, s in times_us.items():
        print(f"  {k:{width}s} {s['median']:9.1f} µs [{s['q1']:.1f}–{s['q3']:.1f}]")
    for k, s in ratios.items():
        print(f"  {k:{width}s} {s['median']:9.2f}×  [{s['q1']:.2f}–{s['q3']:.2f}]", flush=True)


def timed_results(
    benchmark: str, rows: list[Any], *, repeats: int, device: torch.device, **settings: Any
) -> dict[str, Any]:
    """A timing benchmark's JSON payload: its name, ``settings``, the rounds, the machine
    and the measured ``rows``."""
    return {
        "benchmark": benchmark,
        **settings,
        "repeats": repeats,
        "environment": environment(device),
        "results": rows,
    }


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        # torch's vectorized kernels (AVX2, AVX512, ...): machines named alike may differ
        "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "glibc_freed_memory_kept": freed_memory_kept(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
