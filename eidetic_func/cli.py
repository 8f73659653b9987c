"""The ``eidetic-func`` command: ``run`` a task sequence, or ``bench`` a preset.

``eidetic-func run`` with no arguments trains the embedded default (Split-MNIST from a
small MNIST subset shipped with the package, an MLP, Taylor pruning) in a few minutes on
a laptop CPU, prints the accuracy matrix and writes results, history and plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from . import rundir
from .allocator import keep_freed_memory
from .baselines.registry import parse_option
from .config import CHECKPOINT_EVERY, MODELS, OPTIMIZERS, SCHEDULES, RunConfig, TrainConfig
from .errors import EideticError
from .report import write_outputs
from .sequence import (
    CHECKPOINT_FILE,
    RunResult,
    is_main_process,
    run,
    saved_run,
)

DEFAULT = RunConfig()
DEFAULT_TRAIN = TrainConfig()


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _words(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _add_run_options(p: argparse.ArgumentParser) -> None:
    from .data import SEQUENCE_NAMES

    data = p.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default=DEFAULT.dataset,
        metavar="DATASET",
        help=f"task sequence: {', '.join(SEQUENCE_NAMES)}, or imagefolder:DIR (class folders "
        "read from disk: DIR/train/<class>, DIR/test/<class>, or one folder per task with "
        "train/ and test/ inside) (default: %(default)s, needs no download)",
    )
    data.add_argument(
        "--scenario",
        default=DEFAULT.scenario,
        choices=("task", "class", "domain"),
        help="task-incremental (one head per task, task id given), class-incremental (one "
        "head over all classes, no task id) or domain-incremental (one shared head); "
        "EideticNet, PackNet and progressive networks are task-incremental "
        "(default: %(default)s)",
    )
    data.add_argument(
        "--task-order",
        default=None,
        help="train the tasks in another order: reverse, random:SEED, or a permutation "
        "such as 4,3,2,1,0 (default: the dataset's order)",
    )
    data.add_argument(
        "--classes-per-task",
        type=int,
        default=None,
        help="imagefolder: classes per task (the sorted class folders, in groups)",
    )
    data.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="imagefolder: images are resized and center-cropped to this size (default 64)",
    )
    data.add_argument(
        "--augment",
        action="store_true",
        help="imagefolder: train on RandomResizedCrop + horizontal flips (the original's option)",
    )
    data.add_argument(
        "--num-workers",
        type=int,
        default=DEFAULT.num_workers,
        help="DataLoader worker processes that read data from disk (default: %(default)s)",
    )
    data.add_argument(
        "--data-root",
        default=None,
        help="directory with torchvision's dataset layout (e.g. DIR/MNIST/raw/*.gz)",
    )
    data.add_argument(
        "--num-tasks", type=int, default=None, help="number of tasks (default: the dataset's)"
    )
    data.add_argument(
        "--limit-per-class",
        type=int,
        default=None,
        help="keep only this many images per class (quick runs)",
    )
    model = p.add_argument_group("model")
    model.add_argument(
        "--model",
        default=DEFAULT.model,
        metavar="MODEL",
        help=f"network: {', '.join(MODELS)}; torchvision:NAME for any torchvision "
        "classifier made multi-head (e.g. torchvision:resnet18; weights=None); or "
        "import:package.module:factory for your own (called with num_classes=[...] and "
        "input_shape=(C, H, W); topology traced) (default: %(default)s)",
    )
    model.add_argument(
        "--width",
        type=int,
        default=None,
        help="hidden width (MLP, default 400) or base channels (ConvNet 32, ResNet 64)",
    )
    model.add_argument(
        "--layers",
        type=int,
        default=DEFAULT.layers,
        help="hidden layers (MLP) or convolutions per stage (ConvNet); default %(default)s",
    )
    model.add_argument(
        "--no-bn", dest="bn", action="store_false", help="build the model without BatchNorm"
    )
    model.add_argument(
        "--dropout",
        type=float,
        default=DEFAULT.dropout,
        help="dropout after every hidden layer (MLP, ConvNet; default %(default)s)",
    )
    method = p.add_argument_group("method")
    method.add_argument(
        "--method",
        default=DEFAULT.method,
        help="eidetic (default) or a baseline: see `eidetic-func methods`",
    )
    method.add_argument(
        "--method-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a baseline's hyperparameter, e.g. lambda_ewc=100 (repeatable)",
    )
    method.add_argument(
        "--pruning-type",
        type=_words,
        default=(DEFAULT_TRAIN.pruning_type,),
        help="taylor, taylor_batch, l1, l2 or random; a comma list cycles (default: taylor)",
    )
    method.add_argument(
        "--pruning-step",
        type=_floats,
        default=(DEFAULT_TRAIN.pruning_step,),
        help="fraction of the remaining neurons pruned per step; a comma list cycles "
        "(default: %(default)s)",
    )
    method.add_argument(
        "--constant-step",
        action="store_true",
        help="prune a fraction of all neurons per step, not of the remaining ones",
    )
    method.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TRAIN.tolerance,
        help="stop pruning when accuracy < best × (1 − tolerance) (default: %(default)s)",
    )
    method.add_argument(
        "--holdout",
        type=float,
        default=DEFAULT.holdout,
        help="hold out this fraction of each task's training data and decide when to stop "
        "training and pruning by eval-mode accuracy on it (default %(default)s: the running "
        "training accuracy, the original's rule)",
    )
    method.add_argument(
        "--compile",
        action="store_true",
        help="run every training step under torch.compile (the first step of each task "
        "compiles; worth it on a GPU or for long runs, see the README's step benchmark)",
    )
    method.add_argument(
        "--pruning-schedule",
        choices=SCHEDULES,
        default=DEFAULT_TRAIN.pruning_schedule,
        help="fixed: the original's steps of --pruning-step until the accuracy drops; "
        "adaptive: start with --first-pruning-step, halve it (restoring the snapshot) after a "
        "failed step, stop below --pruning-step: similar kept capacity in far fewer recovery "
        "epochs (default: %(default)s)",
    )
    method.add_argument(
        "--first-pruning-step",
        type=float,
        default=DEFAULT_TRAIN.first_pruning_step,
        help="the adaptive schedule's first step, of the remaining neurons (default: %(default)s)",
    )
    method.add_argument(
        "--max-recovery-epochs",
        type=int,
        default=DEFAULT_TRAIN.max_recovery_epochs,
        help="epochs to recover after each pruning step (default: %(default)s)",
    )
    method.add_argument(
        "--max-masking-ratio",
        type=float,
        default=DEFAULT_TRAIN.max_masking_ratio,
        help="stop once this share of a task's neurons is pruned (default: %(default)s)",
    )
    method.add_argument(
        "--no-forward-transfer",
        dest="forward_transfer",
        action="store_false",
        help="give every task a disjoint subnetwork (default: later tasks read earlier features)",
    )
    method.add_argument(
        "--cycles",
        type=int,
        default=DEFAULT.cycles,
        help="passes over the task sequence; >1 revisits tasks (cyclical) (default: %(default)s)",
    )
    method.add_argument(
        "--no-router",
        dest="router",
        action="store_false",
        help="skip the task router (class-incremental prediction) after the sequence",
    )
    train = p.add_argument_group("training")
    train.add_argument(
        "--epochs",
        type=int,
        default=DEFAULT_TRAIN.max_epochs,
        help="maximum epochs per task before pruning (default: %(default)s)",
    )
    train.add_argument(
        "--patience",
        type=int,
        default=DEFAULT_TRAIN.patience,
        help="early-stopping patience in epochs (default: %(default)s)",
    )
    train.add_argument(
        "--lr-factor",
        type=float,
        default=DEFAULT_TRAIN.lr_factor,
        help="multiply the learning rate by this before pruning (default: %(default)s)",
    )
    train.add_argument(
        "--optimizer",
        default=DEFAULT.optimizer,
        choices=OPTIMIZERS,
        help="one optimizer for the whole sequence (default: %(default)s)",
    )
    train.add_argument(
        "--lr", type=float, default=DEFAULT.lr, help="learning rate (default: %(default)s)"
    )
    train.add_argument(
        "--weight-decay",
        type=float,
        default=DEFAULT.weight_decay,
        help="weight decay (default: %(default)s)",
    )
    train.add_argument(
        "--batch-size", type=int, default=DEFAULT.batch_size, help="default: %(default)s"
    )
    run_group = p.add_argument_group("run")
    run_group.add_argument(
        "--seed",
        type=int,
        default=DEFAULT.seed,
        help="one seed for everything (default: %(default)s)",
    )
    run_group.add_argument(
        "--device", default=DEFAULT.device, help="cpu, cuda, cuda:1, ... (default: %(default)s)"
    )
    run_group.add_argument(
        "--output-dir",
        type=Path,
        default=Path("runs/latest"),
        help="where results, plots and the checkpoint go (default: %(default)s)",
    )
    run_group.add_argument(
        "--checkpoint-every",
        default=DEFAULT.checkpoint_every,
        choices=CHECKPOINT_EVERY,
        help="checkpoint after every pruning step, every task, or never (default: %(default)s)",
    )
    run_group.add_argument(
        "--resume",
        action="store_true",
        help="continue the run checkpointed in --output-dir (its saved settings are used; "
        "options that would change them are refused)",
    )
    run_group.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an --output-dir that holds a run's checkpoint (it is deleted)",
    )
    run_group.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bars"
    )
    run_group.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's, shared among torchrun's local "
        "processes). Two torch processes on one machine slow each other several-fold when "
        "both use every core: give each a share, e.g. --threads 1 on 2 cores",
    )
    run_group.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT.dist_timeout,
        metavar="SECONDS",
        help="with torchrun: how long a process waits for a stopped or hung peer before the "
        "run fails with an error naming the rank (default: %(default)s)",
    )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    train = TrainConfig(
        max_epochs=args.epochs,
        patience=args.patience,
        pruning_step=args.pruning_step if len(args.pruning_step) > 1 else args.pruning_step[0],
        pruning_type=args.pruning_type if len(args.pruning_type) > 1 else args.pruning_type[0],
        max_recovery_epochs=args.max_recovery_epochs,
        tolerance=args.tolerance,
        max_masking_ratio=args.max_masking_ratio,
        constant_step=args.constant_step,
        pruning_schedule=args.pruning_schedule,
        compiled=args.compile,
        first_pruning_step=args.first_pruning_step,
        lr_factor=args.lr_factor,
        forward_transfer=args.forward_transfer,
    )
    return RunConfig(
        dataset=args.dataset,
        data_root=args.data_root,
        num_tasks=args.num_tasks,
        limit_per_class=args.limit_per_class,
        model=args.model,
        width=args.width,
        layers=args.layers,
        method=args.method,
        method_options=dict(parse_option(o) for o in args.method_option),
        bn=args.bn,
        dropout=args.dropout,
        holdout=args.holdout,
        classes_per_task=args.classes_per_task,
        image_size=args.image_size,
        augment=args.augment,
        num_workers=args.num_workers,
        task_order=args.task_order,
        scenario=args.scenario,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        train=train,
        cycles=args.cycles,
        router=args.router,
        seed=args.seed,
        device=args.device,
        checkpoint_every=args.checkpoint_every,
        progress=args.progress,
        dist_timeout=args.dist_timeout,
        threads=args.threads,
    )


def _report(result: RunResult, output_dir: Path) -> int:
    """Print the summary and write the results; if ``output_dir`` fails, write them to a
    fresh temporary directory and say where (exit status 1): a finished run is never lost."""
    from .report import summary_markdown

    if not result.is_main:  # data parallel: one process writes
        return 0
    print()
    print(summary_markdown(result))
    try:
        paths = write_outputs(result, output_dir)
    except OSError as e:
        fallback = Path(tempfile.mkdtemp(prefix="eidetic-func-results-"))
        paths = write_outputs(result, fallback)
        print(
            f"eidetic-func: cannot write the results to {output_dir} ({e}); they were "
            f"written to {fallback} instead",
            file=sys.stderr,
        )
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        return 1
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _run_and_report(config: RunConfig, output: Path, resume: bool, overwrite: bool) -> int:
    """Run and write the results while holding the output directory (rank 0 of a launch)."""
    if not is_main_process():
        return _report(run(config, output_dir=output, resume=resume), output)
    with rundir.hold(output, checkpoint=CHECKPOINT_FILE, resume=resume, overwrite=overwrite):
        result = run(config, output_dir=output, resume=resume, overwrite=overwrite)
        return _report(result, output)


def _resume_config(args: argparse.Namespace, defaults: argparse.Namespace) -> RunConfig:
    """The saved run's config, with the options given on this command line put in (``run``
    then refuses those that change what the run computes)."""
    given, default = config_from_args(args), config_from_args(defaults)
    saved, _ = saved_run(args.output_dir / CHECKPOINT_FILE, device=given.device)
    top = {
        f.name: getattr(given, f.name)
        for f in dataclasses.fields(RunConfig)
        if f.name != "train" and getattr(given, f.name) != getattr(default, f.name)
    }
    train = {
        f.name: getattr(given.train, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(given.train, f.name) != getattr(default.train, f.name)
    }
    return dataclasses.replace(saved, **top, train=dataclasses.replace(saved.train, **train))


def _list_methods() -> None:
    import dataclasses

    from .baselines import METHODS

    print(f"{'eidetic':12s} EideticNet: iterative pruning and freezing (the default)")
    for name, cls in sorted(METHODS.items()):
        options = ", ".join(
            f"{f.name}={f.default!r}" for f in dataclasses.fields(cls) if f.name != "name"
        )
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:12s} {doc}\n{'':12s} options: {options or 'none'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="eidetic-func",
        description="Continual learning without forgetting (EideticNet) on a torch.func core.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser(
        "run", help="train a task sequence and measure it", description=__doc__.splitlines()[0]
    )
    _add_run_options(run_parser)
    commands.add_parser("methods", help="list the methods and their options")
    bench = commands.add_parser("bench", help="run a benchmark preset (see --list)")
    bench.add_argument("preset", nargs="?", help="preset name")
    bench.add_argument("--list", action="store_true", help="list the presets")
    bench.add_argument(
        "--data-root", default=None, help="directory with the datasets (torchvision layout)"
    )
    bench.add_argument("--device", default="cpu", help="cpu, cuda, ... (default: %(default)s)")
    bench.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    bench.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (see run --help)"
    )
    bench.add_argument("--lr", type=float, default=None, help="override the preset's rate")
    bench.add_argument(
        "--holdout",
        type=float,
        default=None,
        help="override the preset's holdout fraction (the stopping metric's data)",
    )
    bench.add_argument(
        "--num-tasks", type=int, default=None, help="run only the first N tasks of the preset"
    )
    bench.add_argument(
        "--limit-per-class",
        type=int,
        default=None,
        help="use only this many training images per class (a smaller, quicker form)",
    )
    bench.add_argument(
        "--output-dir", type=Path, default=None, help="default: benchmarks/results/<preset>"
    )
    bench.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bars"
    )
    bench.add_argument(
        "--resume",
        action="store_true",
        help="continue the preset's run checkpointed in its output directory",
    )
    bench.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an output directory that holds a run's checkpoint",
    )
    args = parser.parse_args(argv)
    keep_freed_memory()  # steadier, faster steps on Linux (see eidetic_func.allocator)
    try:
        if args.command == "run":
            if args.resume:
                config = _resume_config(args, run_parser.parse_args([]))
            else:
                config = config_from_args(args)
            return _run_and_report(config, args.output_dir, args.resume, args.overwrite)
        if args.command == "methods":
            _list_methods()
            return 0
        from .presets import PRESETS, preset

        if args.list or not args.preset:
            for name, entry in PRESETS.items():
                print(f"{name:24s} {entry['about']}")
            return 0
        given = {
            "lr": args.lr,
            "holdout": args.holdout,
            "num_tasks": args.num_tasks,
            "limit_per_class": args.limit_per_class,
            "threads": args.threads,
        }
        overrides = {k: v for k, v in given.items() if v is not None}
        config = preset(
            args.preset,
            data_root=args.data_root,
            device=args.device,
            seed=args.seed,
            progress=args.progress,
            **overrides,
        )
        output = args.output_dir or Path("benchmarks/results") / args.preset
        return _run_and_report(config, output, args.resume, args.overwrite)
    except EideticError as err:
        print(f"eidetic-func: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eidetic-func: interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
