"""Classic continual-learning methods in the same functional style, for comparison.

Every method is a :class:`Method`: a small frozen object whose pure functions thread an
immutable method state (importance, anchors, buffers) next to the :class:`EideticState`.
:func:`train_method_task` is the shell that trains one task with any of them, sharing the
epoch loop and stopping rule of :func:`eidetic_func.train.train_task`.
"""

from .base import BaseMethod, Method, advance, train_method_task

__all__ = ["BaseMethod", "Method", "advance", "train_method_task"]

# Rehearsal, gradient episodic memory and parameter isolation (replay.py, gem.py,
# packnet.py, progressive.py).
from .gem import AGEM, GEM, EpisodicState, agem_project, gem_project, solve_gem_dual
from .packnet import PackNet, magnitude_prune, own_entries, packnet_prunable
from .progressive import ColumnModel, Progressive, column_entries, own_column
from .replay import (
    DER,
    DERPP,
    ER,
    ReplayState,
    ReservoirBuffer,
    Samples,
    buffer_sample,
    reservoir_add,
    reservoir_init,
    sample_loader,
)

__all__ += [
    "AGEM",
    "DER",
    "DERPP",
    "ER",
    "GEM",
    "ColumnModel",
    "EpisodicState",
    "PackNet",
    "Progressive",
    "ReplayState",
    "ReservoirBuffer",
    "Samples",
    "agem_project",
    "buffer_sample",
    "column_entries",
    "gem_project",
    "magnitude_prune",
    "own_column",
    "own_entries",
    "packnet_prunable",
    "reservoir_add",
    "reservoir_init",
    "sample_loader",
    "solve_gem_dual",
]
