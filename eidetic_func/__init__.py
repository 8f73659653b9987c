"""eidetic_func: continual learning without forgetting, as a torch.func functional core.

The core is a set of pure functions over an immutable :class:`EideticState`::

    import eidetic_func as ef
    state = ef.init(model)
    state, metrics = ef.train_step(model, state, (x, y), optimizer=opt, task=0)
    state = ef.finish_task(state, model.topology(), task=0)
    state = ef.recycle(state, generator=torch.Generator().manual_seed(0))

Methods (EideticNet, and the baselines in :mod:`eidetic_func.methods`) follow one protocol
(:mod:`eidetic_func.methods.protocol`) and train through one shell, :func:`train_task`. The
whole-run shell (``run``, ``RunConfig``, ``RunResult``) and the baselines are imported on
first use: importing the core never imports them.
"""

import importlib
from typing import Any

from eidetic_func import data
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

# the shell above the core, imported on first use: (module, attribute or None)
_LAZY = {
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
