"""eidetic_func: continual learning without forgetting, as a torch.func functional core.

The core is a set of pure functions over an immutable :class:`EideticState`::

    import eidetic_func as ef
    state = ef.init(model)
    state, metrics = ef.train_step(model, state, (x, y), optimizer=opt, task=0)
    state = ef.finish_task(state, model.topology(), task=0)
    state = ef.recycle(state, generator=torch.Generator().manual_seed(0))

Methods (EideticNet, and the baselines in :mod:`eidetic_func.baselines`) follow one protocol
(:mod:`eidetic_func.method`) and train through one shell, :func:`train_task`. The
whole-run shell (``run``, ``RunConfig``, ``RunResult``) and the baselines are imported on
first use: importing the core never imports them.
"""

import importlib
from typing import Any

from . import data, distributed, metrics, task_split
from .acceptance import check_network
from .batchnorm import TaskBatchNorm1d, TaskBatchNorm2d, convert_batchnorm
from .bridge import bridge
from .capacity import Capacity, UnitCapacity, capacity
from .checkpoint import Checkpoint, load, save
from .config import TrainConfig
from .eidetic import EideticNet
from .errors import (
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
from .forward import forward
from .freeze import freeze, freeze_grads, trainable
from .growth import full_units, grow, growth_plan, regrow
from .lifecycle import finish_task, recycle, revisit
from .mask import apply_task_mask, task_entries
from .method import (
    BaseMethod,
    Chain,
    Method,
    StepPlan,
    TaskContext,
    Traits,
    chain,
    method_step,
)
from .multihead import MultiHead, multihead
from .prune import prune, prune_neurons
from .pytree import NAMESPACE, tree_flatten, tree_leaves, tree_map
from .score import SCORING_METHODS, prunable, score
from .state import FREE, EideticState, Growth, init, topology_of, with_topology
from .step import StepMetrics, train_step
from .topology import Reader, Topology, Unit, check_topology
from .traced_topology import trace_topology
from .train import TaskProgress, train_task

# the shell above the core, imported on first use: (module, attribute or None)
_LAZY = {
    "baselines": ("baselines", None),
    "methods": ("methods", None),
    "report": ("report", None),
    "presets": ("presets", None),
    "sequence": ("sequence", None),
    "run": ("sequence", "run"),
    "RunResult": ("sequence", "RunResult"),
    "RunConfig": ("run_config", "RunConfig"),
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
    "BaseMethod",
    "Capacity",
    "Chain",
    "Checkpoint",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DistributedError",
    "EideticError",
    "EideticNet",
    "EideticState",
    "Growth",
    "Method",
    "MultiHead",
    "NoTopology",
    "NonFiniteError",
    "NothingToPrune",
    "OutputDirError",
    "Reader",
    "RunConfig",
    "RunResult",
    "ShapeError",
    "StateMismatchError",
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
    "Traits",
    "Unit",
    "UnitCapacity",
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
    "method_step",
    "methods",
    "metrics",
    "multihead",
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
    "task_entries",
    "task_split",
    "topology_of",
    "trace_topology",
    "train_step",
    "train_task",
    "trainable",
    "tree_flatten",
    "tree_leaves",
    "tree_map",
    "with_topology",
]
