"""Fine-tuning: each task trained in turn with plain cross-entropy (the lower bound).

Nothing protects earlier tasks: the shared parameters are simply trained on the next
task (earlier heads are not trained, but the features they read drift). Every method
should beat it on the tasks already learned.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from eidetic_func.methods.protocol import Traits


@dataclasses.dataclass(frozen=True)
class FineTune:
    """Plain cross-entropy on the current task's head; no method state, nothing at task end
    (no hooks: the protocol's defaults)."""

    # every update of the network is an averaged gradient: data-parallel processes agree
    traits: ClassVar[Traits] = Traits(data_parallel=True)

    name: str = "finetune"
