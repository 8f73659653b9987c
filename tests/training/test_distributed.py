"""Data parallelism on two gloo processes (CPU, loopback only), launched with torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from shared_once import computed_once
from small_runs import SMALL_ARGS

import eidetic_func as ef

pytestmark = pytest.mark.slow

ARGS = [*SMALL_ARGS, "--no-router"]
# the shared two-rank run's batches: with 60 images a rank, each shard's last batch holds one
SHARED = ["--batch-size", "59"]


def _torchrun(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *args,
    ]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}


def _run_on_two_ranks(out: Path, *args: str) -> dict:
    """``eidetic-func run`` on two gloo ranks; its results, checked to be those of identical
    states (every rank compared its state digest with the others' after every task)."""
    done = subprocess.run(
        _torchrun("-m", "eidetic_func", "run", *ARGS, *args, "--output-dir", str(out)),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-8000:]
    results = json.loads((out / "results.json").read_text())
    assert results["parallel"]["world_size"] == 2
    assert len(results["parallel"]["state_digest"]) == 64
    state = ef.load(out / "checkpoint.safetensors").state
    assert ef.distributed.digest(state) == results["parallel"]["state_digest"]
    return results


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The small run on two ranks, uninterrupted: its results (run once for every xdist
    worker; the killed-and-resumed run is compared with it)."""
    out = tmp_path_factory.mktemp("two_ranks")
    result: dict = computed_once(
        tmp_path_factory, "two_rank_run", lambda: _run_on_two_ranks(out / "run", *SHARED)
    )
    return result


def test_two_ranks_train_the_embedded_default_with_identical_states(two_rank_run: dict) -> None:
    matrix = two_rank_run["accuracy_matrix"]
    for t in range(len(matrix)):
        assert all(row[t] == matrix[t][t] for row in matrix[t:]), f"task {t} changed"


SCORING = textwrap.dedent(
    """
    import json, sys, torch, torch.distributed as dist
    import eidetic_func as ef
    from eidetic_func.training.distributed import from_environment
    from eidetic_func.models import MLP

    parallel = from_environment(torch.device("cpu"))
    torch.manual_seed(0)
    model = MLP(20, [3], num_layers=2, width=24)
    topology = model.topology()
    state = ef.init(model)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(96, 20, generator=g), torch.randint(0, 3, (96,), generator=g)
    mine = [(x[i:i + 16], y[i:i + 16]) for i in range(16 * parallel.rank, 96, 32)]
    everything = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 96, 16)]
    out = {}
    for method in ("taylor", "taylor_batch"):
        shared = ef.score(model, state, mine, method=method, task=0,
                          reduce=parallel.reduce)
        alone = ef.score(model, state, everything, method=method, task=0)
        a = ef.prune(state, shared, fraction=0.4, method=method)
        b = ef.prune(state, alone, fraction=0.4, method=method)
        same_keep = all(torch.equal(a.keep[k], b.keep[k]) for k in a.keep)
        close = all(torch.allclose(shared[n], alone[n], rtol=1e-6) for n in shared)
        out[method] = {"same_keep": same_keep, "close": close,
                       "pruned": int(sum((~a.keep[k]).sum() for k in a.keep))}
    digests = [None, None]
    dist.all_gather_object(digests, out)
    if parallel.is_main:
        json.dump(digests, open(sys.argv[1], "w"))
    dist.destroy_process_group()
    """
)


def test_distributed_scores_prune_like_one_process_on_the_combined_data(tmp_path: Path) -> None:
    script = tmp_path / "score.py"
    script.write_text(SCORING)
    result = tmp_path / "result.json"
    done = subprocess.run(
        _torchrun(str(script), str(result)),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-8000:]
    per_rank = json.loads(result.read_text())
    for rank in per_rank:
        for method, outcome in rank.items():
            assert outcome["same_keep"] and outcome["close"], (method, outcome)
            assert outcome["pruned"] > 0
    assert per_rank[0] == per_rank[1]


def test_a_distributed_run_killed_mid_task_resumes_with_the_same_world_size(
    tmp_path: Path, two_rank_run: dict
) -> None:
    crashed = tmp_path / "crashed"
    proc = subprocess.Popen(
        _torchrun("-m", "eidetic_func", "run", *ARGS, *SHARED, "--output-dir", str(crashed)),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    checkpoint = crashed / "checkpoint.safetensors"
    deadline, killed = time.monotonic() + 300, False
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoint.exists():
            try:
                meta = ef.load(checkpoint).meta
            except ef.CheckpointError:
                continue
            if meta["visit"] >= 1 and meta["progress"] is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed, "the run ended before it could be killed mid-task"
    done = subprocess.run(
        _torchrun("-m", "eidetic_func", "run", "--resume", "--output-dir", str(crashed)),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-8000:]
    got = json.loads((crashed / "results.json").read_text())
    for key in ("accuracy_matrix", "accuracy_after_finish", "capacity", "parallel"):
        assert got[key] == two_rank_run[key], key


def test_parallel_helpers_in_a_single_process_group() -> None:
    import torch.distributed as dist

    from eidetic_func.training.distributed import Parallel

    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    try:
        parallel = Parallel(rank=0, world_size=1)
        grads = {"a": torch.ones(2, 3), "b": torch.arange(4.0)}
        averaged = parallel.average_grads(grads, lambda x, t: x, {})
        assert all(torch.equal(averaged[k], grads[k]) for k in grads)
        sums, count = parallel.reduce({"u": torch.tensor([1.0, 2.0], dtype=torch.float64)}, 3)
        assert count == 3 and torch.equal(sums["u"], torch.tensor([1.0, 2.0], dtype=torch.float64))
        assert parallel.sum_metrics(3, 4, 1.5) == (3, 4, 1.5)
        from eidetic_func.models import MLP

        state = ef.init(MLP(4, [2], num_layers=1, width=3))
        assert parallel.check_identical(state, "here") == ef.distributed.digest(state)
        assert ef.distributed.digest(state) != ef.distributed.digest(state.replace(task=1))
    finally:
        dist.destroy_process_group()


def test_a_shard_whose_last_batch_holds_one_sample_trains(two_rank_run: dict) -> None:
    # the shared run: 120 images per task, 60 per rank, in batches of 59 (one left over,
    # which is dropped: a batch of one cannot be batch-normalized in training mode)
    assert two_rank_run["config"]["batch_size"] == 59
    assert len(two_rank_run["accuracy_matrix"]) == 5


def test_a_stopped_peer_fails_the_run_after_the_timeout_naming_the_rank(tmp_path: Path) -> None:
    script = tmp_path / "peer.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, time, torch
            import eidetic_func as ef
            parallel = ef.distributed.from_environment(torch.device("cpu"), timeout_s=3)
            if parallel.rank == 1:
                time.sleep(8)  # a peer that stopped answering (past the 3 s timeout)
                sys.exit(0)
            try:
                parallel.sum_metrics(1, 2, 0.5)
            except ef.DistributedError as e:
                print("CAUGHT", e, flush=True)
                os._exit(0)
            """
        )
    )
    done = subprocess.run(
        _torchrun(str(script)),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "CAUGHT rank 0 of 2: sum_metrics failed" in done.stdout, done.stderr[-8000:]


def test_baselines_train_data_parallel_with_identical_states(tmp_path: Path) -> None:
    """EWC's penalty, SI's path integral and ER's replay (one chain of the three) act
    through averaged gradients: the run checks after every task that both ranks hold the
    same state."""
    _run_on_two_ranks(tmp_path / "out", "--method", "ewc+si+er")
