"""Nothing lost under faults: locks, refused resumes, filesystem errors, batch edges, peers."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import safetensors
import torch
from eidetic_func.models import MLP
from small_runs import SMALL_ARGS

import eidetic_func as ef
from eidetic_func.methods.eidetic import EideticNet
from eidetic_func.runner import build, cli, rundir
from eidetic_func.runner import record as run_record
from eidetic_func.runner.cli import main
from eidetic_func.runner.config import RunConfig
from eidetic_func.runner.sequence import CHECKPOINT_FILE, run
from eidetic_func.training.config import TrainConfig

TINY = RunConfig(
    dataset="embedded",
    limit_per_class=20,
    num_tasks=2,
    width=16,
    batch_size=16,
    router=False,
    train=TrainConfig(max_epochs=1, patience=0),
    eidetic=EideticNet(pruning_step=0.5, max_recovery_epochs=1),
    progress=False,
)
TINY_ARGS = [*SMALL_ARGS, "--num-tasks", "2", "--no-router", "--limit-per-class", "20"]


def _quiet(*_: object) -> None:
    pass


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    run(TINY, output_dir=out, log=_quiet)
    return out


# ------------------------------------------------------------------ batches of one sample


def test_a_batch_of_one_sample_with_batchnorm_is_a_clear_error() -> None:
    model = MLP(6, [2], num_layers=1, width=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ef.ShapeError, match="batch of 1 sample"):
        ef.train_step(
            model, ef.init(model), (torch.randn(1, 6), torch.tensor([0])), optimizer=opt, task=0
        )


@pytest.mark.slow
def test_a_router_whose_last_batch_holds_one_sample_trains(tmp_path: Path) -> None:
    # 10 × 61 router images in batches of 29 leave one sample in the last batch
    out = tmp_path / "run"
    args = [*SMALL_ARGS, "--limit-per-class", "61", "--batch-size", "29", "--epochs", "1"]
    assert main(["run", *args, "--output-dir", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["router"] is not None


# --------------------------------------------------------------------- the output directory


def test_a_second_run_on_a_held_directory_is_refused_naming_the_holder(tmp_path: Path) -> None:
    with rundir.hold(tmp_path, checkpoint=CHECKPOINT_FILE, resume=False, log=_quiet):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "eidetic_func",
                "run",
                *TINY_ARGS,
                "--output-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2
    assert "in use by another run" in done.stderr and f"pid {os.getpid()}" in done.stderr
    assert not (tmp_path / CHECKPOINT_FILE).exists()


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path: Path) -> None:
    code = f"""
        from eidetic_func.runner import rundir
        import time
        with rundir.hold({str(tmp_path)!r}, checkpoint="c", resume=False, log=print):
            print("held", flush=True)
            time.sleep(60)
    """
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with (
        pytest.raises(ef.OutputDirError, match=f"pid {holder.pid}"),
        rundir.hold(tmp_path, checkpoint="c", resume=False, log=_quiet),
    ):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    holder.stdout.close()
    with rundir.hold(tmp_path, checkpoint="c", resume=False, log=_quiet):
        pass


def test_a_fresh_run_refuses_to_overwrite_a_checkpoint_unless_told_to(
    finished_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "copy"
    out.mkdir()
    (out / CHECKPOINT_FILE).write_bytes((finished_run / CHECKPOINT_FILE).read_bytes())
    with pytest.raises(ef.OutputDirError, match="--overwrite"):
        run(TINY, output_dir=out, log=_quiet)
    assert main(["run", *TINY_ARGS, "--output-dir", str(out)]) == 2
    assert main(["run", *TINY_ARGS, "--output-dir", str(out), "--overwrite"]) == 0
    assert (out / "results.json").is_file()


@pytest.mark.parametrize(
    "bad",
    [
        ["--dataset", "split-mnist", "--data-root", "/no/such/root"],
        ["--model", "torchvision:mobilenet_v2"],  # depthwise convolutions: refused
        ["--method", "er", "--cycles", "2"],  # refused by the config, before any directory
    ],
    ids=["missing-files", "refused-model", "refused-setting"],
)
def test_a_run_that_fails_before_it_starts_leaves_no_directory_behind(
    tmp_path: Path, bad: list[str]
) -> None:
    out = tmp_path / "new" / "runs" / "latest"
    assert main(["run", *TINY_ARGS, *bad, "--output-dir", str(out)]) == 2
    assert list(tmp_path.iterdir()) == []
    kept = tmp_path / "kept"  # a directory that was there stays, and holds nothing new
    (kept / "notes.txt").parent.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert main(["run", *TINY_ARGS, *bad, "--output-dir", str(kept)]) == 2
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    "bad",
    [
        ["--dataset", "imagefolder:/no/such/folder"],
        ["--model", "import:no_such_module:make"],
        ["--dataset", "split-mnist"],  # no --data-root
        ["--dataset", "split-mnist", "--data-root", "/no/such/root"],
        ["--model", "torchvision:mobilenet_v2"],  # depthwise convolutions: refused
    ],
    ids=["imagefolder-typo", "import-typo", "no-data-root", "missing-files", "refused-model"],
)
def test_overwrite_keeps_the_old_run_when_the_new_one_is_refused(
    finished_run: Path, tmp_path: Path, bad: list[str]
) -> None:
    out = tmp_path / "copy"
    out.mkdir()
    old = (finished_run / CHECKPOINT_FILE).read_bytes()
    (out / CHECKPOINT_FILE).write_bytes(old)
    assert main(["run", *TINY_ARGS, *bad, "--output-dir", str(out), "--overwrite"]) == 2
    assert (out / CHECKPOINT_FILE).read_bytes() == old
    assert [p.name for p in out.iterdir() if "replaced" in p.name] == []
    assert main(["run", "--resume", "--output-dir", str(out)]) == 0  # the old run, complete


def test_an_overwritten_checkpoint_set_aside_by_a_killed_run_comes_back(tmp_path: Path) -> None:
    aside = tmp_path / f".{CHECKPOINT_FILE}{rundir.ASIDE_SUFFIX}"
    aside.write_bytes(b"the old run")
    messages: list[str] = []
    with rundir.hold(tmp_path, checkpoint=CHECKPOINT_FILE, resume=True, log=messages.append):
        assert (tmp_path / CHECKPOINT_FILE).read_bytes() == b"the old run"
    assert not aside.exists() and "overwritten run's again" in messages[0]
    aside.write_bytes(b"the old run")  # the new run had written its own: the old one goes
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"the new run")
    with rundir.hold(tmp_path, checkpoint=CHECKPOINT_FILE, resume=True, log=_quiet):
        pass
    assert not aside.exists() and (tmp_path / CHECKPOINT_FILE).read_bytes() == b"the new run"


def test_a_successful_overwrite_leaves_only_the_new_run(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"the old run")
    with rundir.hold(
        tmp_path, checkpoint=CHECKPOINT_FILE, resume=False, overwrite=True, log=_quiet
    ):
        assert not (tmp_path / CHECKPOINT_FILE).exists()  # a --resume cannot find the old run
    assert sorted(p.name for p in tmp_path.iterdir()) == [rundir.LOCK_FILE]


def test_stale_temporary_files_of_killed_writes_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / f".{CHECKPOINT_FILE}.0123456789ab.tmp"
    stale.write_bytes(b"x" * 1000)
    messages: list[str] = []
    with rundir.hold(tmp_path, checkpoint=CHECKPOINT_FILE, resume=False, log=messages.append):
        assert not stale.exists()
    assert any("temporary file" in m for m in messages)


def test_an_output_path_that_is_a_file_or_a_symlink_loop_is_refused(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    with pytest.raises(ef.OutputDirError, match="is a file"):
        run(TINY, output_dir=a_file, log=_quiet)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(ef.OutputDirError, match="symbolic links"):
        run(TINY, output_dir=loop, log=_quiet)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / CHECKPOINT_FILE).symlink_to(tmp_path / "d" / CHECKPOINT_FILE)
    with pytest.raises(ef.CheckpointError, match="symbolic links") as caught:
        run(None, output_dir=tmp_path / "d", resume=True, log=_quiet)
    assert "does not exist" not in str(caught.value)


def test_a_read_only_output_directory_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(*_: object, **__: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(rundir.tempfile, "mkstemp", read_only)
    started = time.perf_counter()
    with pytest.raises(ef.OutputDirError, match="Read-only file system"):
        run(TINY, output_dir=tmp_path, log=_quiet)
    assert time.perf_counter() - started < 5, "refused before any training"


# ---------------------------------------------------------------------------------- resume


def test_resume_refuses_settings_that_differ_from_the_saved_run(finished_run: Path) -> None:
    with pytest.raises(ef.CheckpointError, match="model: given 'convnet', saved 'mlp'"):
        run(dataclasses.replace(TINY, model="convnet"), output_dir=finished_run, resume=True)
    code = main(["run", "--resume", "--output-dir", str(finished_run), "--seed", "7"])
    assert code == 2
    # operational settings may change; the run is complete, so nothing is trained
    messages: list[str] = []
    result = run(
        dataclasses.replace(TINY, checkpoint_every="never"),
        output_dir=finished_run,
        resume=True,
        log=messages.append,
    )
    assert any("the run is complete (2/2 visits)" in m for m in messages)
    assert result.summary["backward_transfer"] == 0.0


def test_resume_with_another_number_of_processes_is_refused(
    finished_run: Path, tmp_path: Path
) -> None:
    ckpt = ef.load(finished_run / CHECKPOINT_FILE)
    ef.save(
        tmp_path / CHECKPOINT_FILE,
        ckpt.state,
        extra=ckpt.extra,
        history=ckpt.history,
        meta={**ckpt.meta, "world_size": 2},
    )
    with pytest.raises(ef.CheckpointError, match="checkpointed by 2 process"):
        run(None, output_dir=tmp_path, resume=True, log=_quiet)


def test_resume_of_a_file_that_is_not_a_run_checkpoint_is_a_checkpoint_error(
    finished_run: Path, tmp_path: Path
) -> None:
    model = MLP(6, [2], num_layers=1, width=4)
    ef.save(tmp_path / CHECKPOINT_FILE, ef.init(model))
    with pytest.raises(ef.CheckpointError, match="not the checkpoint of a run"):
        run(None, output_dir=tmp_path, resume=True, log=_quiet)
    ckpt = ef.load(finished_run / CHECKPOINT_FILE)
    config = {**ckpt.meta["config"], "no_such_setting": 1}
    ef.save(
        tmp_path / CHECKPOINT_FILE,
        ckpt.state,
        extra=ckpt.extra,
        history=ckpt.history,
        meta={**ckpt.meta, "config": config},
    )
    with pytest.raises(ef.CheckpointError, match="no_such_setting"):
        run(None, output_dir=tmp_path, resume=True, log=_quiet)


# ------------------------------------------------------------------------------ filesystem


def test_a_full_disk_is_an_os_error_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*_: object, **__: object) -> None:
        raise safetensors.SafetensorError("No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    model = MLP(6, [2], num_layers=1, width=4)
    with pytest.raises(OSError, match="No space left"):
        ef.save(tmp_path / "c.safetensors", ef.init(model))
    assert list(tmp_path.iterdir()) == []


def test_results_are_written_to_a_fallback_when_the_output_cannot_take_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = cli.write_outputs
    out = tmp_path / "run"

    def flaky(result: object, directory: Path) -> object:
        if Path(directory) == out:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(result, directory)  # type: ignore[arg-type]

    monkeypatch.setattr(cli, "write_outputs", flaky)
    code = main(["run", *TINY_ARGS, "--checkpoint-every", "never", "--output-dir", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    fallback = Path(err.split("written to ")[1].split()[0])
    assert json.loads((fallback / "results.json").read_text())["summary"]


def test_results_files_get_the_mode_of_plainly_created_files(finished_run: Path) -> None:
    old = os.umask(0o022)
    try:
        result = run(None, output_dir=finished_run, resume=True, log=_quiet)
        paths = ef.report.write_outputs(result, finished_run)
    finally:
        os.umask(old)
    for name in ("results", "history", "summary"):
        assert stat.S_IMODE(paths[name].stat().st_mode) == 0o644, name


# ------------------------------------------------------------------- bad input, bad steps


def test_labels_of_other_integer_dtypes_train_and_float_or_bool_labels_are_refused() -> None:
    model = MLP(6, [3], num_layers=1, width=4, bn=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state, x = ef.init(model), torch.randn(4, 6)
    for labels in (torch.tensor([0, 1, 2, 1], dtype=torch.int32), torch.tensor([0, 1, 2, 1])):
        ef.train_step(model, state, (x, labels), optimizer=opt, task=0)
    for labels in (torch.tensor([0.0, 1.0, 2.0, 1.0]), torch.tensor([True, False, True, True])):
        with pytest.raises(ef.ShapeError, match="class indices"):
            ef.train_step(model, state, (x, labels), optimizer=opt, task=0)


def test_a_step_that_makes_parameters_non_finite_raises_and_keeps_the_state() -> None:
    model = MLP(6, [3], num_layers=1, width=4, bn=False)
    opt = torch.optim.SGD(model.parameters(), lr=float("inf"))
    state = ef.init(model)
    before = {k: v.clone() for k, v in state.params.items()}
    with pytest.raises(ef.NonFiniteError, match="non-finite parameters"):
        ef.train_step(
            model, state, (torch.randn(4, 6), torch.tensor([0, 1, 2, 0])), optimizer=opt, task=0
        )
    for k, v in state.params.items():
        assert torch.equal(v, before[k])


def test_lbfgs_is_refused_clearly() -> None:
    model = MLP(6, [3], num_layers=1, width=4, bn=False)
    opt = torch.optim.LBFGS(model.parameters())
    with pytest.raises(ef.ConfigError, match="LBFGS needs a closure"):
        ef.train_step(
            model,
            ef.init(model),
            (torch.randn(4, 6), torch.tensor([0, 1, 2, 0])),
            optimizer=opt,
            task=0,
        )


def test_bad_devices_seeds_map_locations_and_generators_are_eidetic_errors(tmp_path: Path) -> None:
    with pytest.raises(ef.ConfigError, match="meta"):
        RunConfig(device="meta")
    if not torch.cuda.is_available():
        with pytest.raises(ef.ConfigError, match="CUDA is not available"):
            RunConfig(device="cuda")
    with pytest.raises(ef.ConfigError, match="seed"):
        RunConfig(seed=2**64)
    model = MLP(6, [2], num_layers=1, width=4)
    ef.save(tmp_path / "c.safetensors", ef.init(model))
    with pytest.raises(ef.ConfigError, match="map_location"):
        ef.load(tmp_path / "c.safetensors", map_location="bogus")
    with pytest.raises(ef.ConfigError, match=r"torch\.Generator"):
        ef.recycle(ef.init(model), generator=123)  # type: ignore[arg-type]


def test_a_model_too_large_to_allocate_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_memory(*_: object) -> None:
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
        )

    monkeypatch.setattr(build, "build_model", no_memory)
    with pytest.raises(ef.ConfigError, match="cannot build the mlp"):
        run(dataclasses.replace(TINY, width=100_000_000), log=_quiet)


# ---------------------------------------------------------------------- stopped peers


def test_a_worker_ends_when_its_launcher_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "worker.pid"
    launcher = f"""
        import subprocess, sys, time
        code = (
            "import os, time, pathlib\\n"
            "from eidetic_func.training.distributed import _end_with_parent\\n"
            "_end_with_parent()\\n"
            "pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\\n"
            "time.sleep(60)\\n"
        )
        subprocess.Popen([sys.executable, "-c", code])
        time.sleep(60)
    """
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(launcher)])
    deadline = time.time() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() < deadline, "the worker did not start"
        time.sleep(0.1)
    worker = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    deadline = time.time() + 30
    while _alive(worker):
        assert time.time() < deadline, "the worker outlived its launcher"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def test_a_resumed_run_reads_its_checkpoint_once_while_holding_the_directory(
    finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "copy"
    out.mkdir()
    (out / CHECKPOINT_FILE).write_bytes((finished_run / CHECKPOINT_FILE).read_bytes())
    reads: list[bool] = []  # per read of the file: was the directory held by this process

    def counted_load(path: Path, **options: object) -> object:
        reads.append(out.resolve() in rundir._held)
        return ef.load(path, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(run_record, "load", counted_load)
    resumed = run(None, output_dir=out, resume=True, log=_quiet)
    assert reads == [True]
    assert main(["run", "--resume", "--output-dir", str(out), "--no-progress"]) == 0
    assert reads == [True, True]
    assert resumed.matrix == run(None, output_dir=finished_run, resume=True, log=_quiet).matrix
