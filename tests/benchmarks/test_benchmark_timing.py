"""The benchmarks' measuring rules: interleaved rounds, medians over ≥ 5, spreads reported."""

from __future__ import annotations

import pytest
import torch
from eidetic_func.models import MLP

from benchmarks._timing import (
    environment,
    interleaved_samples,
    print_spreads,
    ratio_spread,
    set_threads,
    spread,
    timed_results,
    timing_parser,
)
from eidetic_func.training.allocator import freed_memory_kept, keep_freed_memory


def test_rounds_interleave_the_variants_in_alternating_order() -> None:
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    samples = interleaved_samples(fns, repeats=5, warmup=1, device=torch.device("cpu"))
    assert {k: len(v) for k, v in samples.items()} == {"a": 5, "b": 5, "c": 5}
    rounds = [calls[i : i + 3] for i in range(3, len(calls), 3)]  # after the warm-up round
    assert rounds[0] == ["a", "b", "c"] and rounds[1] == ["c", "b", "a"]
    assert all(t >= 0 for ts in samples.values() for t in ts)


def test_fewer_than_five_repeats_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 5"):
        interleaved_samples({"a": lambda: None}, repeats=4, warmup=0, device=torch.device("cpu"))


def test_spread_reports_median_quartiles_and_range() -> None:
    s = spread([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median"], s["q1"], s["q3"], s["min"], s["max"], s["n"]) == (3, 2, 4, 1, 5, 5)
    r = ratio_spread([2.0, 4.0, 9.0, 2.0, 2.0], [1.0, 2.0, 3.0, 1.0, 1.0])
    assert r["median"] == 2.0 and r["max"] == 3.0


def test_environment_records_machine_kernels_threads_and_allocator() -> None:
    applied = keep_freed_memory()
    env = environment(torch.device("cpu"))
    assert env["threads"] == torch.get_num_threads() and env["cores"] >= 1 and env["cpu"]
    assert env["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
    assert env["glibc_freed_memory_kept"] is freed_memory_kept() is applied


def test_threads_default_to_one_and_set_what_the_environment_records() -> None:
    parser = timing_parser("a benchmark\n\nmore", repeats=7, warmup=2)
    defaults = parser.parse_args([])
    assert (defaults.threads, defaults.repeats, defaults.warmup) == (1, 7, 2)
    assert parser.description == "a benchmark"
    assert timing_parser(None, threads=None).parse_args([]).threads is None
    before = torch.get_num_threads()
    try:
        set_threads(parser.parse_args(["--threads", "1"]).threads)
        assert environment(torch.device("cpu"))["threads"] == 1
        set_threads(None)  # torch's default: left as it is
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="at least 1"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_print_spreads_shows_medians_and_quartiles_of_times_and_ratios(
    capsys: pytest.CaptureFixture[str],
) -> None:
    times = {"eager": spread([1.0, 2.0, 3.0, 4.0, 5.0])}
    print_spreads("shape", times, {"compiled / eager": spread([0.5, 0.5, 0.5, 0.5, 0.5])})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "shape"
    assert "eager" in lines[1] and "3.0 µs [2.0–4.0]" in lines[1]
    assert "compiled / eager" in lines[2] and "0.50×" in lines[2]


def test_timed_results_record_name_settings_rounds_machine_and_rows() -> None:
    got = timed_results("demo", [{"x": 1}], repeats=7, device=torch.device("cpu"), target=0.9)
    assert list(got) == ["benchmark", "target", "repeats", "environment", "results"]
    assert got["benchmark"] == "demo" and got["target"] == 0.9 and got["repeats"] == 7
    assert got["results"] == [{"x": 1}] and got["environment"]["device"] == "cpu"


def test_the_epoch_benchmark_measures_every_variant_and_tabulates_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from benchmarks import epoch, step

    small = {"MLP (BN)": (MLP(20, [10, 10], num_layers=2, width=16), (20,), 8)}
    monkeypatch.setattr(epoch, "_models", lambda: small)
    assert step._models  # the real models stay the step benchmark's
    payload = epoch.run(torch.device("cpu"), repeats=5, warmup=0, batches=2, only=None)
    (row,) = payload["results"]
    assert set(row["ms"]) == {
        "plain",
        "train_epoch",
        "train_step loop",
        "plain again",
        "plain, fused AdamW",
        "train_epoch, fused AdamW",
    }
    assert all(row["ms"][k]["n"] == 5 for k in row["ms"])
    table = epoch.markdown(payload).splitlines()
    assert len(table) == 3 and table[2].startswith("| MLP (BN) | 8 × 2 |")
