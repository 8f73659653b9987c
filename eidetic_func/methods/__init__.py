"""Continual-learning methods: the protocol, chains, EideticNet and the classic baselines
(EWC, SI, MAS, LwF, ER, DER/DER++, A-GEM, GEM, PackNet, progressive networks, DGR, OML, …),
and the registry that names them (``"ewc+er"``).

Each method is a small frozen dataclass of hyperparameters (fields that carry their checks,
:mod:`~eidetic_func.methods.fields`) plus pure functions that thread an immutable method
state next to the :class:`~eidetic_func.EideticState`; no base class (hooks it does not
need are absent, :mod:`~eidetic_func.methods.protocol` supplies the defaults). Names are imported
on first use, so importing one method does not import the others.
"""

import importlib
from typing import Any

# name -> the module of this package that defines it
_WHERE = {
    "AGEM": "gem",
    "Chain": "chain",
    "ChainState": "chain",
    "ColumnModel": "progressive",
    "Continue": "decisions",
    "DER": "replay",
    "DERPP": "replay",
    "DGR": "dgr",
    "DGRState": "dgr",
    "Decision": "decisions",
    "Done": "decisions",
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
    "OPTIMIZERS": "decisions",
    "OnlineEWC": "ewc",
    "OnlineEWCState": "ewc",
    "PackNet": "packnet",
    "Progressive": "progressive",
    "Recover": "decisions",
    "ReplayState": "replay",
    "ReservoirBuffer": "reservoir",
    "SI": "si",
    "SIState": "si",
    "Samples": "reservoir",
    "ScaleLearningRate": "decisions",
    "StepPlan": "protocol",
    "Synapse": "synapse",
    "TaskContext": "protocol",
    "TrainWith": "decisions",
    "Traits": "protocol",
    "adapt": "oml",
    "advance": "protocol",
    "agem_project": "gem",
    "begin_task": "protocol",
    "buffer_sample": "reservoir",
    "chain": "chain",
    "checked": "fields",
    "column_entries": "progressive",
    "create": "registry",
    "decode_state": "registry",
    "distillation_loss": "lwf",
    "encode_state": "registry",
    "end_task": "protocol",
    "fisher_diagonal": "ewc",
    "gem_project": "gem",
    "init_state": "protocol",
    "magnitude_prune": "packnet",
    "mas_importance": "mas",
    "method_epoch": "epoch",
    "method_step": "protocol",
    "objective_plan": "protocol",
    "own_column": "progressive",
    "own_entries": "packnet",
    "packnet_prunable": "packnet",
    "parse_option": "registry",
    "penalty_plan": "protocol",
    "plan_step": "protocol",
    "quadratic_penalty": "regularizer",
    "reservoir_add": "reservoir",
    "reservoir_init": "reservoir",
    "sample_loader": "reservoir",
    "solve_gem_dual": "gem",
    "traits": "protocol",
    "validate_fields": "fields",
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
