"""Continual-learning methods: the protocol, chains, EideticNet and the classic baselines
(EWC, SI, MAS, LwF, ER, DER/DER++, A-GEM, GEM, PackNet, progressive networks, DGR, OML, …),
and the registry that names them (``"ewc+er"``).

Each method is a small frozen dataclass of hyperparameters whose pure functions thread an
immutable method state next to the :class:`~eidetic_func.EideticState`. Names are imported
on first use, so importing one method does not import the others.
"""

import importlib
from typing import Any

# name -> the module of this package that defines it
_WHERE = {
    "AGEM": "gem",
    "BaseMethod": "protocol",
    "Chain": "chain",
    "ChainState": "chain",
    "Continue": "decisions",
    "Decision": "decisions",
    "Done": "decisions",
    "ColumnModel": "progressive",
    "DER": "replay",
    "DERPP": "replay",
    "DGR": "dgr",
    "DGRState": "dgr",
    "ER": "replay",
    "EWC": "ewc",
    "EWCState": "ewc",
    "EideticNet": "eidetic",
    "EpisodicState": "gem",
    "FineTune": "finetune",
    "GEM": "gem",
    "Joint": "joint",
    "JointState": "joint",
    "LwF": "lwf",
    "LwFState": "lwf",
    "MAS": "mas",
    "MASState": "mas",
    "METHODS": "registry",
    "Method": "protocol",
    "OML": "oml",
    "OMLState": "oml",
    "OnlineEWC": "ewc",
    "OnlineEWCState": "ewc",
    "PackNet": "packnet",
    "Progressive": "progressive",
    "Recover": "decisions",
    "RegularizedMethod": "regularizer",
    "ReplayState": "replay",
    "ReservoirBuffer": "replay",
    "SI": "si",
    "SIState": "si",
    "Samples": "replay",
    "ScaleLearningRate": "decisions",
    "StepPlan": "protocol",
    "Synapse": "synapse",
    "TaskContext": "protocol",
    "Traits": "protocol",
    "adapt": "oml",
    "advance": "protocol",
    "agem_project": "gem",
    "buffer_sample": "replay",
    "chain": "chain",
    "column_entries": "progressive",
    "create": "registry",
    "decode_state": "registry",
    "distillation_loss": "lwf",
    "encode_state": "registry",
    "fisher_diagonal": "ewc",
    "gem_project": "gem",
    "magnitude_prune": "packnet",
    "mas_importance": "mas",
    "method_step": "protocol",
    "own_column": "progressive",
    "own_entries": "packnet",
    "packnet_prunable": "packnet",
    "parse_option": "registry",
    "quadratic_penalty": "regularizer",
    "reservoir_add": "replay",
    "reservoir_init": "replay",
    "sample_loader": "replay",
    "solve_gem_dual": "gem",
    "traits": "protocol",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


__all__ = sorted(_WHERE)
