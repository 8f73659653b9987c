"""eidetic_func: continual learning without forgetting, as a torch.func functional core.

The core is a set of pure functions over an immutable :class:`EideticState`::

    import eidetic_func as ef
    state = ef.init(model)
    state, metrics = ef.train_step(model, state, (x, y), optimizer=opt, task=0)
    state = ef.finish_task(state, model.topology(), task=0)
    state = ef.recycle(state, generator=torch.Generator().manual_seed(0))
"""

from . import baselines, data, distributed, metrics, report, task_split
from .batchnorm import TaskBatchNorm1d, TaskBatchNorm2d, convert_batchnorm
from .bridge import bridge
from .capacity import Capacity, UnitCapacity, capacity
from .checkpoint import Checkpoint, load, save
from .config import RunConfig, TrainConfig
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DistributedError,
    EideticError,
    NonFiniteError,
    NothingToPrune,
    OutputDirError,
    ShapeError,
    StateMismatchError,
    TaskError,
    TopologyError,
)
from .forward import forward
from .freeze import freeze, freeze_grads, trainable
from .lifecycle import finish_task, recycle, revisit
from .mask import apply_task_mask, task_entries
from .multihead import MultiHead, multihead
from .prune import prune, prune_neurons
from .pytree import NAMESPACE, tree_flatten, tree_leaves, tree_map
from .score import SCORING_METHODS, prunable, score
from .sequence import RunResult, run
from .state import FREE, EideticState, init
from .step import StepMetrics, train_step
from .topology import Reader, Topology, Unit, check_topology
from .traced_topology import trace_topology
from .train import TaskProgress, train_task

__all__ = [
    "FREE",
    "NAMESPACE",
    "SCORING_METHODS",
    "Capacity",
    "Checkpoint",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DistributedError",
    "EideticError",
    "EideticState",
    "MultiHead",
    "NonFiniteError",
    "NothingToPrune",
    "OutputDirError",
    "Reader",
    "RunConfig",
    "RunResult",
    "ShapeError",
    "StateMismatchError",
    "StepMetrics",
    "TaskBatchNorm1d",
    "TaskBatchNorm2d",
    "TaskError",
    "TaskProgress",
    "Topology",
    "TopologyError",
    "TrainConfig",
    "Unit",
    "UnitCapacity",
    "apply_task_mask",
    "baselines",
    "bridge",
    "capacity",
    "check_topology",
    "convert_batchnorm",
    "data",
    "distributed",
    "finish_task",
    "forward",
    "freeze",
    "freeze_grads",
    "init",
    "load",
    "metrics",
    "multihead",
    "prunable",
    "prune",
    "prune_neurons",
    "recycle",
    "report",
    "revisit",
    "run",
    "save",
    "score",
    "task_entries",
    "task_split",
    "trace_topology",
    "train_step",
    "train_task",
    "trainable",
    "tree_flatten",
    "tree_leaves",
    "tree_map",
]
