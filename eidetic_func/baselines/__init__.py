"""Classic continual-learning methods in the same functional style, for comparison.

Every method follows :class:`eidetic_func.method.Method`: a small frozen object whose pure
functions thread an immutable method state (importance, anchors, buffers) next to the
:class:`EideticState`; :func:`eidetic_func.train_task` trains a task with any of them (or
a chain of them). The baselines import the core, never the reverse.
"""

__all__: list[str] = []

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

# Regularization methods, bounds and the Synapse adapter (ewc.py, si.py, mas.py, lwf.py,
# finetune.py, joint.py, synapse.py).
from .ewc import EWC, EWCState, OnlineEWC, OnlineEWCState, fisher_diagonal  # noqa: E402
from .finetune import FineTune  # noqa: E402
from .joint import Joint, JointState  # noqa: E402
from .lwf import LwF, LwFState, distillation_loss  # noqa: E402
from .mas import MAS, MASState, mas_importance  # noqa: E402
from .regularizer import RegularizedMethod, quadratic_penalty  # noqa: E402
from .si import SI, SIState  # noqa: E402
from .synapse import Synapse  # noqa: E402

__all__ += [
    "EWC",
    "MAS",
    "SI",
    "EWCState",
    "FineTune",
    "Joint",
    "JointState",
    "LwF",
    "LwFState",
    "MASState",
    "OnlineEWC",
    "OnlineEWCState",
    "RegularizedMethod",
    "SIState",
    "Synapse",
    "distillation_loss",
    "fisher_diagonal",
    "mas_importance",
    "quadratic_penalty",
]

# Generative replay and online meta-learning (dgr.py, oml.py).
from .dgr import DGR, DGRState  # noqa: E402
from .oml import OML, OMLState, adapt  # noqa: E402

__all__ += ["DGR", "OML", "DGRState", "OMLState", "adapt"]
