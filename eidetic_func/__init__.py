"""eidetic_func: continual learning without forgetting, as a torch.func functional core.

The core is a set of pure functions over an immutable :class:`EideticState`::

    import eidetic_func as ef
    state = ef.init(model)
    state, metrics = ef.train_step(model, state, (x, y), optimizer=opt, task=0)
    state = ef.finish_task(state, task=0)
    state = ef.recycle(state, generator=torch.Generator().manual_seed(0))

Methods (EideticNet, and the baselines in :mod:`eidetic_func.methods`) follow one protocol
(:mod:`eidetic_func.methods.protocol`) and train through one shell, :func:`train_task`.

Every name is imported on first use (``ef.init`` imports :mod:`eidetic_func.nn.init`):
``import eidetic_func`` imports neither torch nor the run shell, so the command line
answers ``--help`` and argument errors at once. Only the errors come with the package
(they import nothing).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from eidetic_func.core.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DistributedError,
    EideticError,
    NonFiniteError,
    NothingToPrune,
    NoTopology,
    OutputDirError,
    ShapeError,
    StateMismatchError,
    TaskError,
    TopologyError,
)

if TYPE_CHECKING:  # what the names below resolve to, for type checkers
    from eidetic_func import data
    from eidetic_func.core.pytree import NAMESPACE, tree_flatten, tree_leaves, tree_map
    from eidetic_func.core.state import FREE, EideticState, Growth, topology_of, with_topology
    from eidetic_func.core.topology import Reader, Topology, Unit, check_topology
    from eidetic_func.data import task_split
    from eidetic_func.importance.score import SCORING_METHODS, prunable, score
    from eidetic_func.io.checkpoint import Checkpoint, load, save
    from eidetic_func.methods.chain import Chain, ChainState, chain
    from eidetic_func.methods.decisions import Continue, Done, Recover, ScaleLearningRate, TrainWith
    from eidetic_func.methods.eidetic import EideticNet
    from eidetic_func.methods.epoch import method_epoch
    from eidetic_func.methods.fields import validate_fields
    from eidetic_func.methods.protocol import (
        Method,
        StepPlan,
        TaskContext,
        Traits,
        method_step,
        objective_plan,
        penalty_plan,
    )
    from eidetic_func.nn.acceptance import check_network
    from eidetic_func.nn.batchnorm import TaskBatchNorm1d, TaskBatchNorm2d, convert_batchnorm
    from eidetic_func.nn.init import init
    from eidetic_func.nn.multihead import MultiHead, multihead
    from eidetic_func.nn.traced_topology import trace_topology
    from eidetic_func.ops.bridge import bridge
    from eidetic_func.ops.capacity import Capacity, UnitCapacity, capacity
    from eidetic_func.ops.forward import forward
    from eidetic_func.ops.freeze import freeze, freeze_grads
    from eidetic_func.ops.growth import full_units, grow, growth_plan, regrow
    from eidetic_func.ops.lifecycle import finish_task, recycle, revisit
    from eidetic_func.ops.mask import apply_task_mask, task_entries
    from eidetic_func.ops.prune import prune, prune_neurons
    from eidetic_func.ops.step_masks import StepMasks, step_masks, trainable
    from eidetic_func.ops.workspace import Workspace
    from eidetic_func.training import distributed, metrics
    from eidetic_func.training.config import TrainConfig
    from eidetic_func.training.epoch import Epoch, EpochMetrics, train_epoch
    from eidetic_func.training.loop import TaskProgress
    from eidetic_func.training.step import StepMetrics, train_step

# name: (module under eidetic_func, attribute of it; None: the module itself)
_LAZY = {
    "data": ("data", None),
    "NAMESPACE": ("core.pytree", "NAMESPACE"),
    "tree_flatten": ("core.pytree", "tree_flatten"),
    "tree_leaves": ("core.pytree", "tree_leaves"),
    "tree_map": ("core.pytree", "tree_map"),
    "FREE": ("core.state", "FREE"),
    "EideticState": ("core.state", "EideticState"),
    "Growth": ("core.state", "Growth"),
    "topology_of": ("core.state", "topology_of"),
    "with_topology": ("core.state", "with_topology"),
    "Reader": ("core.topology", "Reader"),
    "Topology": ("core.topology", "Topology"),
    "Unit": ("core.topology", "Unit"),
    "check_topology": ("core.topology", "check_topology"),
    "task_split": ("data.task_split", None),
    "SCORING_METHODS": ("importance.score", "SCORING_METHODS"),
    "prunable": ("importance.score", "prunable"),
    "score": ("importance.score", "score"),
    "Checkpoint": ("io.checkpoint", "Checkpoint"),
    "load": ("io.checkpoint", "load"),
    "save": ("io.checkpoint", "save"),
    "Chain": ("methods.chain", "Chain"),
    "ChainState": ("methods.chain", "ChainState"),
    "chain": ("methods.chain", "chain"),
    "Continue": ("methods.decisions", "Continue"),
    "Done": ("methods.decisions", "Done"),
    "Recover": ("methods.decisions", "Recover"),
    "ScaleLearningRate": ("methods.decisions", "ScaleLearningRate"),
    "TrainWith": ("methods.decisions", "TrainWith"),
    "EideticNet": ("methods.eidetic", "EideticNet"),
    "method_epoch": ("methods.epoch", "method_epoch"),
    "validate_fields": ("methods.fields", "validate_fields"),
    "Method": ("methods.protocol", "Method"),
    "StepPlan": ("methods.protocol", "StepPlan"),
    "TaskContext": ("methods.protocol", "TaskContext"),
    "Traits": ("methods.protocol", "Traits"),
    "method_step": ("methods.protocol", "method_step"),
    "objective_plan": ("methods.protocol", "objective_plan"),
    "penalty_plan": ("methods.protocol", "penalty_plan"),
    "check_network": ("nn.acceptance", "check_network"),
    "TaskBatchNorm1d": ("nn.batchnorm", "TaskBatchNorm1d"),
    "TaskBatchNorm2d": ("nn.batchnorm", "TaskBatchNorm2d"),
    "convert_batchnorm": ("nn.batchnorm", "convert_batchnorm"),
    "init": ("nn.init", "init"),
    "MultiHead": ("nn.multihead", "MultiHead"),
    "multihead": ("nn.multihead", "multihead"),
    "trace_topology": ("nn.traced_topology", "trace_topology"),
    "bridge": ("ops.bridge", "bridge"),
    "Capacity": ("ops.capacity", "Capacity"),
    "UnitCapacity": ("ops.capacity", "UnitCapacity"),
    "capacity": ("ops.capacity", "capacity"),
    "forward": ("ops.forward", "forward"),
    "freeze": ("ops.freeze", "freeze"),
    "freeze_grads": ("ops.freeze", "freeze_grads"),
    "full_units": ("ops.growth", "full_units"),
    "grow": ("ops.growth", "grow"),
    "growth_plan": ("ops.growth", "growth_plan"),
    "regrow": ("ops.growth", "regrow"),
    "finish_task": ("ops.lifecycle", "finish_task"),
    "recycle": ("ops.lifecycle", "recycle"),
    "revisit": ("ops.lifecycle", "revisit"),
    "apply_task_mask": ("ops.mask", "apply_task_mask"),
    "task_entries": ("ops.mask", "task_entries"),
    "prune": ("ops.prune", "prune"),
    "prune_neurons": ("ops.prune", "prune_neurons"),
    "StepMasks": ("ops.step_masks", "StepMasks"),
    "step_masks": ("ops.step_masks", "step_masks"),
    "trainable": ("ops.step_masks", "trainable"),
    "Workspace": ("ops.workspace", "Workspace"),
    "distributed": ("training.distributed", None),
    "metrics": ("training.metrics", None),
    "TrainConfig": ("training.config", "TrainConfig"),
    "Epoch": ("training.epoch", "Epoch"),
    "EpochMetrics": ("training.epoch", "EpochMetrics"),
    "train_epoch": ("training.epoch", "train_epoch"),
    "TaskProgress": ("training.loop", "TaskProgress"),
    "StepMetrics": ("training.step", "StepMetrics"),
    "train_step": ("training.step", "train_step"),
    # the shell above the core
    "baselines": ("methods", None),  # the former name of the methods package
    "methods": ("methods", None),
    "report": ("runner.report", None),
    "presets": ("runner.presets", None),
    "sequence": ("runner.sequence", None),
    "run": ("runner.sequence", "run"),
    "RunResult": ("runner.sequence", "RunResult"),
    "RunConfig": ("runner.config", "RunConfig"),
    "train_task": ("runner.task", "train_task"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(f".{module_name}", __name__)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "FREE",
    "NAMESPACE",
    "SCORING_METHODS",
    "Capacity",
    "Chain",
    "ChainState",
    "Checkpoint",
    "CheckpointError",
    "ConfigError",
    "Continue",
    "DataError",
    "DistributedError",
    "Done",
    "EideticError",
    "EideticNet",
    "EideticState",
    "Epoch",
    "EpochMetrics",
    "Growth",
    "Method",
    "MultiHead",
    "NoTopology",
    "NonFiniteError",
    "NothingToPrune",
    "OutputDirError",
    "Reader",
    "Recover",
    "RunConfig",
    "RunResult",
    "ScaleLearningRate",
    "ShapeError",
    "StateMismatchError",
    "StepMasks",
    "StepMetrics",
    "StepPlan",
    "TaskBatchNorm1d",
    "TaskBatchNorm2d",
    "TaskContext",
    "TaskError",
    "TaskProgress",
    "Topology",
    "TopologyError",
    "TrainConfig",
    "TrainWith",
    "Traits",
    "Unit",
    "UnitCapacity",
    "Workspace",
    "apply_task_mask",
    "baselines",
    "bridge",
    "capacity",
    "chain",
    "check_network",
    "check_topology",
    "convert_batchnorm",
    "data",
    "distributed",
    "finish_task",
    "forward",
    "freeze",
    "freeze_grads",
    "full_units",
    "grow",
    "growth_plan",
    "init",
    "load",
    "method_epoch",
    "method_step",
    "methods",
    "metrics",
    "multihead",
    "objective_plan",
    "penalty_plan",
    "presets",
    "prunable",
    "prune",
    "prune_neurons",
    "recycle",
    "regrow",
    "report",
    "revisit",
    "run",
    "save",
    "score",
    "sequence",
    "step_masks",
    "task_entries",
    "task_split",
    "topology_of",
    "trace_topology",
    "train_epoch",
    "train_step",
    "train_task",
    "trainable",
    "tree_flatten",
    "tree_leaves",
    "tree_map",
    "validate_fields",
    "with_topology",
]
