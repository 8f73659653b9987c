"""The ``run`` and ``bench`` flags are derived from the config dataclasses' fields."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from eidetic_func import EideticNet, RunConfig, TrainConfig
from eidetic_func.core.errors import ConfigError
from eidetic_func.runner import method_listing
from eidetic_func.runner.cli import (
    BENCH_FLAGS,
    NOT_FLAGS,
    bench_config,
    build_parser,
    config_from_args,
    flag_fields,
    flag_name,
    value_parser,
)
from eidetic_func.runner.presets import PRESETS, Preset

CONFIGS = (RunConfig, TrainConfig, EideticNet)


def _subparser(name: str) -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = commands.choices[name]
    return parser


def _actions(name: str) -> dict[str, argparse.Action]:
    """``{dest: action}`` of subcommand ``name``."""
    return {a.dest: a for a in _subparser(name)._actions}


def _field(cls: type[Any], name: str) -> dataclasses.Field[Any]:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def test_every_config_field_is_a_run_flag_or_listed_with_the_reason_it_is_not() -> None:
    actions = _actions("run")
    names = [f.name for cls in CONFIGS for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names)), "a RunConfig and a TrainConfig field share a name"
    assert set(NOT_FLAGS) <= set(names), "NOT_FLAGS names a field that no longer exists"
    assert all(reason.strip() for reason in NOT_FLAGS.values())
    for cls in CONFIGS:
        for field in dataclasses.fields(cls):
            if field.name in NOT_FLAGS:
                assert field.name not in actions or field.name == "method"
                continue
            action = actions[field.name]
            assert flag_name(field) in action.option_strings, field.name
            assert action.default == field.default, field.name


def test_the_flags_keep_their_spelling() -> None:
    options = {s for a in _subparser("run")._actions for s in a.option_strings}
    for flag in (
        "--epochs",
        "--compile",
        "--no-bn",
        "--no-router",
        "--no-forward-transfer",
        "--no-progress",
        "--augment",
        "--constant-step",
        "--pruning-step",
        "--pruning-type",
        "--dist-timeout",
        "--method",
        "--method-option",
        "--output-dir",
        "--resume",
        "--overwrite",
    ):
        assert flag in options, flag


def test_help_and_choices_come_from_the_field_metadata() -> None:
    actions = _actions("run")
    for cls in CONFIGS:
        for field in flag_fields(cls):
            action = actions[field.name]
            assert action.help is not None
            assert action.help.startswith(field.metadata["help"].replace("%", "%%"))
            assert "(default: " in action.help
            choices = field.metadata.get("choices")
            if value_parser(cls, field.name)[1]:  # a comma list: its items are listed
                assert action.choices is None
                assert all(c in action.help for c in choices or ())
            else:
                assert action.choices == choices, field.name
    assert actions["optimizer"].choices == _field(RunConfig, "optimizer").metadata["choices"]
    text = _subparser("run").format_help()
    assert "{adam,adamw,sgd}" in text and "{fixed,adaptive}" in text
    assert "{pruning-step,task,never}" in text and "{task,class,domain}" in text
    assert "taylor_batch" in text
    for action in _subparser("run")._actions:
        assert action.help, action.dest


def test_no_flags_give_the_default_config() -> None:
    assert config_from_args(build_parser().parse_args(["run"])) == RunConfig()


def test_a_command_line_gives_the_expected_config() -> None:
    args = build_parser().parse_args(
        [
            "run",
            "--dataset",
            "split-mnist",
            "--data-root",
            "/data",
            "--num-tasks",
            "3",
            "--model",
            "convnet",
            "--width",
            "16",
            "--no-bn",
            "--method",
            "ewc",
            "--method-option",
            "lambda_ewc=50",
            "--optimizer",
            "sgd",
            "--lr",
            "0.05",
            "--epochs",
            "4",
            "--pruning-step",
            "0.2,0.1",
            "--pruning-type",
            "l2",
            "--pruning-schedule",
            "adaptive",
            "--compile",
            "--no-forward-transfer",
            "--score-batches",
            "8",
            "--no-router",
            "--seed",
            "7",
            "--checkpoint-every",
            "task",
            "--no-progress",
            "--threads",
            "1",
        ]
    )
    expected = RunConfig(
        dataset="split-mnist",
        data_root="/data",
        num_tasks=3,
        model="convnet",
        width=16,
        bn=False,
        method="ewc",
        method_options={"lambda_ewc": 50},
        optimizer="sgd",
        lr=0.05,
        train=TrainConfig(max_epochs=4, compiled=True),
        eidetic=EideticNet(
            pruning_step=(0.2, 0.1),
            pruning_type="l2",
            pruning_schedule="adaptive",
            forward_transfer=False,
            score_batches=8,
        ),
        router=False,
        seed=7,
        checkpoint_every="task",
        progress=False,
        threads=1,
    )
    assert config_from_args(args) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--optimizer", "rmsprop"], "invalid choice"),
        (["--pruning-step", "0.1,x"], "expected comma-separated numbers"),
        (["--epochs", "two"], "invalid int value"),
    ],
)
def test_a_flag_value_of_the_wrong_kind_is_refused_by_the_parser(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", *args])
    assert message in capsys.readouterr().err


def test_a_field_of_a_type_without_a_flag_is_refused() -> None:
    with pytest.raises(TypeError, match="method_options"):
        value_parser(RunConfig, "method_options")


def test_bench_replaces_only_the_fields_given() -> None:
    parser = build_parser()
    assert bench_config(parser.parse_args(["bench", "split-mnist"])) == (
        PRESETS["split-mnist"].config
    )
    args = parser.parse_args(
        ["bench", "permuted-mnist-cpu", "--lr", "0.01", "--num-tasks", "2", "--no-progress"]
    )
    expected = dataclasses.replace(
        PRESETS["permuted-mnist-cpu"].config, lr=0.01, num_tasks=2, progress=False
    )
    assert bench_config(args) == expected
    bench = _actions("bench")
    for name in BENCH_FLAGS:
        action = bench[name]
        assert flag_name(_field(RunConfig, name)) in action.option_strings
        assert action.help is not None and "the preset's" in action.help


def test_presets_are_typed() -> None:
    for preset in PRESETS.values():
        assert isinstance(preset, Preset)
        assert isinstance(preset.config, RunConfig) and preset.about


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    """``eidetic-func methods | head -1``: the closed pipe ends the listing quietly."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "eidetic_func", "methods"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the listing is written: the child imports torch first
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in err, err


@pytest.mark.parametrize("lines_read", [1, 8], ids=["while-training", "inside-the-summary"])
def test_a_run_piped_to_head_writes_every_result_and_exits_cleanly(
    tmp_path: Path, lines_read: int
) -> None:
    """``eidetic-func run | head -N``: the reader leaves while the run logs its tasks, or while
    it prints the summary; the run still trains to the end, writes every result and exits
    0 without a traceback (results are written before the summary is printed)."""
    out = tmp_path / "run"
    args = ["--limit-per-class", "20", "--width", "16", "--epochs", "1", "--patience", "1"]
    args += ["--pruning-step", "0.25", "--max-recovery-epochs", "1", "--num-tasks", "2"]
    args += ["--no-router", "--no-progress", "--output-dir", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "eidetic_func", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.stdout is not None and proc.stderr is not None
    for _ in range(lines_read):
        assert proc.stdout.readline(), "the run printed fewer lines than expected"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=300) == 0, err
    assert "Traceback" not in err and "Broken pipe" not in err, err
    results = json.loads((out / "results.json").read_text())
    assert len(results["accuracy_matrix"]) == 2
    for name in ("history.csv", "summary.md", "accuracy_matrix.png", "capacity.png"):
        assert (out / name).stat().st_size > 0, name


def test_methods_are_listed_with_their_first_sentence() -> None:
    assert method_listing._first_sentence(
        "Joint training (offline); ``seed`` drives\n    draws. More."
    ) == ("Joint training (offline); ``seed`` drives draws.")


@pytest.mark.parametrize("method", ["eidetic", "eidetic+er", "ewc+eidetic"])
def test_eidetic_flags_set_the_fields_of_the_built_method_alone_or_in_a_chain(
    method: str,
) -> None:
    flags = ["--pruning-step", "0.2", "--pruning-type", "taylor,l2", "--no-forward-transfer"]
    flags += ["--pruning-schedule", "adaptive", "--tolerance", "0.05"]
    args = build_parser().parse_args(["run", "--method", method, *flags])
    built = config_from_args(args).build_method()
    members = getattr(built, "methods", (built,))
    (eidetic,) = [m for m in members if isinstance(m, EideticNet)]
    assert eidetic == EideticNet(
        pruning_step=0.2,
        pruning_type=("taylor", "l2"),
        forward_transfer=False,
        pruning_schedule="adaptive",
        tolerance=0.05,
    )


def test_eidetic_settings_given_as_method_options_are_refused_naming_their_flags() -> None:
    with pytest.raises(ConfigError, match=r"\['pruning_step'\].*flags --pruning-step\)"):
        RunConfig(method_options={"pruning_step": 0.2})
    with pytest.raises(ConfigError, match=r"eidetic.tolerance.*flags --tolerance\)"):
        RunConfig(method="eidetic+er", method_options={"eidetic.tolerance": 0.2})


def test_a_config_saved_before_eidetics_settings_left_train_still_loads() -> None:
    old = RunConfig().to_dict()
    del old["eidetic"], old["grow"], old["grow_policy"]
    old["train"] = {
        "max_epochs": 4,
        "patience": 3,
        "pruning_step": [0.2, 0.1],
        "pruning_type": "l2",
        "max_recovery_epochs": 1,
        "tolerance": 0.05,
        "max_masking_ratio": 0.9,
        "constant_step": False,
        "pruning_schedule": "adaptive",
        "first_pruning_step": 0.5,
        "lr_factor": 0.5,
        "score_batches": 8,
        "last_task": False,
        "forward_transfer": False,
        "finish": True,
        "compiled": False,
        "grow": 3,
        "grow_policy": "when-full",
    }
    loaded = RunConfig.from_dict(old)
    assert loaded.train == TrainConfig(max_epochs=4, lr_factor=0.5)
    assert loaded.eidetic == EideticNet(
        pruning_step=(0.2, 0.1),
        pruning_type="l2",
        max_recovery_epochs=1,
        tolerance=0.05,
        max_masking_ratio=0.9,
        pruning_schedule="adaptive",
        score_batches=8,
        forward_transfer=False,
    )
    assert (loaded.grow, loaded.grow_policy) == (3, "when-full")
    assert RunConfig.from_dict(json.loads(json.dumps(loaded.to_dict()))) == loaded
    with pytest.raises(ConfigError, match="last_task"):
        RunConfig.from_dict({**old, "train": {**old["train"], "last_task": True}})
