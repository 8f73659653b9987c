"""Configuration files: a config written as TOML reads back equal, ``--config`` with flags
over it, clear errors, and every run directory's ``config.toml`` reruns the run exactly."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from small_runs import SMALL_ARGS

import eidetic_func as ef
from eidetic_func.runner import cli
from eidetic_func.runner.config import RunConfig
from eidetic_func.runner.config_file import (
    CONFIG_FILE,
    config_from_file,
    read_settings,
    to_toml,
)
from eidetic_func.runner.presets import PRESETS
from eidetic_func.training.config import TrainConfig


def _round_trip(config: RunConfig, tmp_path: Path) -> RunConfig:
    path = tmp_path / "c.toml"
    path.write_text(to_toml(config), encoding="utf-8")
    return config_from_file(path)


CORNERS = {
    "default": RunConfig(),
    "no score batch cap (None where the default is 16)": RunConfig(
        eidetic=ef.EideticNet(score_batches=None)
    ),
    "lists of steps and types": RunConfig(
        eidetic=ef.EideticNet(pruning_step=(0.1, 0.25), pruning_type=("taylor", "l2"))
    ),
    "a chain's dotted options": RunConfig(
        method="ewc+er", method_options={"ewc.lambda_ewc": 5.0, "er.buffer_size": 100}
    ),
    "an option set to None (--method-option chunk_size=null)": RunConfig(
        method="ewc", method_options={"chunk_size": None, "fisher_samples": 32}
    ),
    "an awkward path": RunConfig(data_root='C:\\data\\"mnist" é\n\x7f\x00𐀀'),
    "every optional set": RunConfig(
        num_tasks=3, limit_per_class=7, width=33, threads=1, train=TrainConfig(check_every=4)
    ),
    **{f"preset {name}": preset.config for name, preset in PRESETS.items()},
}


@pytest.mark.parametrize("name", list(CORNERS))
def test_a_config_written_as_toml_reads_back_equal(name: str, tmp_path: Path) -> None:
    assert _round_trip(CORNERS[name], tmp_path) == CORNERS[name]


@given(
    lr=st.floats(1e-12, 1e3, allow_nan=False),
    weight_decay=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**40),
    data_root=st.text(st.characters(exclude_categories=("Cs",)), max_size=20),
    steps=st.lists(st.floats(1e-6, 0.999), min_size=1, max_size=3),
)
def test_any_floats_and_text_read_back_to_the_same_bits(
    lr: float, weight_decay: float, seed: int, data_root: str, steps: list[float]
) -> None:
    config = RunConfig(
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        data_root=data_root,
        eidetic=ef.EideticNet(pruning_step=tuple(steps) if len(steps) > 1 else steps[0]),
    )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        assert _round_trip(config, Path(tmp)) == config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def _parsed(argv: list[str]) -> RunConfig:
    """The RunConfig ``eidetic-func run ARGV`` would run, as the command line builds it."""
    parser = cli.build_parser()
    args = parser.parse_args(["run", *argv])
    base = cli.DEFAULT
    if args.config is not None:
        args, base = cli._file_config(parser, ["run", *argv], args.config)
    return cli.config_from_args(args, base)


def test_flags_given_override_the_file_and_the_rest_comes_from_it(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'lr = 0.01\nmethod = "ewc+er"\n[method_options]\n"ewc.lambda_ewc" = 5.0\n'
        "[train]\nmax_epochs = 7\npatience = 2\n[eidetic]\npruning_step = [0.2, 0.3]\n",
    )
    config = _parsed(["--config", str(path), "--epochs", "4", "--lr", "0.001"])
    assert config.lr == 0.001  # the flag, though it is the default value
    assert config.train.max_epochs == 4 and config.train.patience == 2
    assert config.method == "ewc+er" and config.eidetic.pruning_step == (0.2, 0.3)
    assert config.method_options == {"ewc.lambda_ewc": 5.0}
    both = _parsed(["--config", str(path), "--method-option", "er.buffer_size=10"])
    assert both.method_options == {"ewc.lambda_ewc": 5.0, "er.buffer_size": 10}
    assert _parsed([]) == RunConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lrr = 0.1\n", "unknown setting 'lrr' (did you mean 'lr'?)"),
        ("[train]\nmax_epoch = 3\n", "[train]: unknown setting 'max_epoch' (did you mean 'max_epochs'?)"),
        ("train = 3\n", "'train' must be a table"),
        ("lr = [\n", "is not valid TOML"),
        ("[train]\nmax_epochs = 0\n", "max_epochs must be an integer >= 1"),
        ('optimizer = "adamm"\n', "(did you mean 'adam'?)"),
    ],
)  # fmt: skip
def test_a_bad_file_is_refused_naming_the_setting(
    text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ef.ConfigError) as error:
        config_from_file(path)
    assert message in str(error.value)
    assert cli.main(["run", "--config", str(path), "--output-dir", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_missing_file_and_config_with_resume_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ef.ConfigError, match="cannot read the configuration file"):
        read_settings(tmp_path / "none.toml")
    path = _write(tmp_path, "lr = 0.01\n")
    assert cli.main(["run", "--config", str(path), "--resume"]) == 2
    assert "--config starts a run" in capsys.readouterr().err


@pytest.mark.usefixtures("one_thread")
def test_a_run_directorys_config_reruns_it_exactly(tmp_path: Path) -> None:
    args = [*SMALL_ARGS, "--num-tasks", "2", "--no-router", "--lr", "0.002"]
    assert cli.main(["run", *args, "--output-dir", str(tmp_path / "first")]) == 0
    saved = tmp_path / "first" / CONFIG_FILE
    assert saved.read_text().startswith("# eidetic-func run --config")
    again = ["run", "--config", str(saved), "--output-dir", str(tmp_path / "again")]
    assert cli.main(again) == 0
    first, second = (
        json.loads((tmp_path / d / "results.json").read_text()) for d in ("first", "again")
    )
    assert first["config"] == second["config"]
    assert first["accuracy_matrix"] == second["accuracy_matrix"]
    assert dataclasses.asdict(config_from_file(saved)) == first["config"]


def test_the_readmes_configuration_file_reads_as_it_says(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = readme.split("```toml\n")[1:]
    assert len(blocks) == 1
    config = config_from_file(_write(tmp_path, blocks[0].split("```")[0]))
    assert config.lr == 0.01 and config.method == "ewc+er"
    assert config.method_options == {"ewc.lambda_ewc": 5.0}
    assert config.train.max_epochs == 7 and config.eidetic.pruning_step == (0.2, 0.3)
