"""The command line's torch-free front: the same parser as the real one, listings and
argument errors without importing torch, suggestions, flags named in errors, ./ on the path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from eidetic_func.runner import cli, cli_front, cli_spec, method_listing

REPO = Path(__file__).resolve().parents[2]


def test_the_spec_file_is_the_parser_and_listings_it_describes() -> None:
    """Regenerate it with ``python -m eidetic_func.runner.cli_spec`` when this fails."""
    assert cli_spec.PATH.read_text() == cli_spec.render(cli_spec.build_spec())


def _helps(parser) -> dict[str, str]:
    helps = {"": parser.format_help()}
    for action in parser._actions:
        for name, child in (getattr(action, "choices", None) or {}).items():
            if hasattr(child, "format_help"):
                helps[name] = child.format_help()
    return helps


@pytest.mark.parametrize("columns", ["60", "100", "200"])
def test_the_light_parser_prints_the_real_parsers_help(
    columns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    real, light = _helps(cli.build_parser()), _helps(cli_front.light_parser())
    assert light.keys() == real.keys() == {"", "run", "methods", "bench"}
    for command in real:
        assert light[command] == real[command], command


@pytest.mark.parametrize(
    "argv",
    [["run", "--dataset", "split-mnist", "--epochs", "3", "--pruning-step", "0.1,0.2"],
     ["run", "--no-bn", "--method", "ewc+er", "--method-option", "ewc.lambda_ewc=5"],
     ["bench", "split-mnist", "--seed", "3"], ["bench", "--list"], ["methods"]],
)  # fmt: skip
def test_the_light_parser_reads_a_command_line_as_the_real_one(argv: list[str]) -> None:
    assert vars(cli_front.light_parser().parse_args(argv)) == vars(
        cli.build_parser().parse_args(argv)
    )


FRONT = (
    "import sys\n"
    "from eidetic_func.runner.cli_front import main\n"
    "try:\n"
    "    code = main(sys.argv[1:])\n"
    "except SystemExit as e:\n"
    "    code = e.code\n"
    "print('TORCH' if 'torch' in sys.modules else 'NO TORCH', code, file=sys.stderr)\n"
)


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (["--help"], 0, "{run,methods,bench}"),
        (["run", "--help"], 0, "--pruning-schedule"),
        (["bench", "--help"], 0, "--data-root"),
        (["methods"], 0, "options:"),
        (["bench", "--list"], 0, "permuted-mnist-paper"),
        (["rn"], 2, "did you mean 'run'?"),
        (["run", "--optimizer", "adamm"], 2, "did you mean 'adam'?"),
        (["run", "--method", "ewcc"], 2, "unknown method 'ewcc' (did you mean 'ewc'?)"),
        (["run", "--method", "eidetic+err"], 2, "unknown method 'err' (did you mean 'er'?)"),
        (["run", "--epochs", "x"], 2, "argument --epochs: invalid int value: 'x'"),
        (["run", "--pruning-step", "a,b"], 2, "expected comma-separated numbers"),
        (["run", "--sed", "3"], 2, "unrecognized arguments: --sed 3 (did you mean '--seed'?)"),
        (["bench", "split-mnst"], 2, "unknown preset 'split-mnst' (did you mean 'split-mnist'?)"),
    ],
)
def test_help_listings_and_argument_errors_answer_without_importing_torch(
    argv: list[str], code: int, says: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FRONT, *argv], capture_output=True, text=True, timeout=60
    )
    assert done.stderr.strip().endswith(f"NO TORCH {code}"), done.stderr[-2000:]
    assert says in done.stdout + done.stderr


LEFT = (
    "import os, sys\n"
    "read, write = os.pipe()\n"
    "os.close(read)  # the reader has left\n"
    "os.dup2(write, sys.stdout.fileno())\n"
    "from eidetic_func.runner.cli_front import main\n"
    "print('CODE', main(sys.argv[1:]), file=sys.stderr)\n"
)


@pytest.mark.parametrize("argv", [["methods"], ["bench", "--list"]])
def test_a_listing_whose_reader_left_ends_quietly(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", LEFT, *argv], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stderr == "CODE 141\n", done.stderr[-2000:]


def test_a_config_error_names_the_flag_the_user_wrote(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--epochs", "0", "--output-dir", "unused"]) == 2
    assert "eidetic-func: error: --epochs must be an integer >= 1, got 0" in capsys.readouterr().err
    assert not Path("unused").exists()


def test_the_methods_listing_keeps_a_sentence_with_an_abbreviation_whole() -> None:
    doc = "Replay (Chaudhry et al. 2019, i.e. a buffer). More text. Even more."
    assert method_listing._first_sentence(doc) == "Replay (Chaudhry et al. 2019, i.e. a buffer)."
    assert method_listing._first_sentence("A. B. Smith's method. Then.") == "A. B. Smith's method."
    assert method_listing._first_sentence("No full stop") == "No full stop"


MYNET = """
from pathlib import Path
from eidetic_func.models import MLP

Path("imported").write_text("yes")


def make(num_classes, input_shape):
    return MLP(784, num_classes, num_layers=1, width=8)
"""


@pytest.mark.slow
def test_an_import_model_is_found_in_the_working_directory(tmp_path: Path) -> None:
    """The console script puts the working directory on the path, after the installed
    packages."""
    (tmp_path / "mynet.py").write_text(textwrap.dedent(MYNET))
    # a file named like an installed package the run imports must not shadow it
    (tmp_path / "tqdm.py").write_text("raise RuntimeError('the working directory shadowed tqdm')\n")
    script = Path(sys.executable).with_name("eidetic-func")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(script), "run", "--model", "import:mynet:make", "--limit-per-class", "5",
         "--num-tasks", "2", "--epochs", "1", "--no-router", "--no-progress",
         "--max-masking-ratio", "0.3", "--output-dir", "out"],
        cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "imported").read_text() == "yes"
    assert len(json.loads((tmp_path / "out" / "results.json").read_text())["accuracy_matrix"]) == 2
