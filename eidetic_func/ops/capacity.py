"""How the network's neurons are used: owned per task, pruned in this task, free."""

from __future__ import annotations

from dataclasses import dataclass, field

from eidetic_func.core.state import EideticState, topology_of
from eidetic_func.core.topology import neuron_alive, neuron_owner


@dataclass(frozen=True)
class UnitCapacity:
    """Neuron counts of one unit."""

    name: str
    size: int
    owned: dict[int, int]
    pruned: int
    free: int


@dataclass(frozen=True)
class Capacity:
    """Per-unit and total neuron counts; ``pruned_fraction`` is of this task's neurons."""

    units: tuple[UnitCapacity, ...]
    total: int
    owned: dict[int, int] = field(default_factory=dict)
    pruned: int = 0
    free: int = 0

    @property
    def pruned_fraction(self) -> float:
        """Pruned / (pruned + free): the share of the task's available neurons removed."""
        available = self.pruned + self.free
        return self.pruned / available if available else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "total": self.total,
            "owned": {str(t): n for t, n in sorted(self.owned.items())},
            "pruned": self.pruned,
            "free": self.free,
            "units": [
                {
                    "name": u.name,
                    "size": u.size,
                    "owned": {str(t): n for t, n in sorted(u.owned.items())},
                    "pruned": u.pruned,
                    "free": u.free,
                }
                for u in self.units
            ],
        }


def capacity(state: EideticState) -> Capacity:
    """Count every unit's neurons: owned by each task, pruned in this task, still free."""
    topology = topology_of(state)
    units = []
    owned_total: dict[int, int] = {}
    for unit in topology.units:
        owner = neuron_owner(unit, state.owner)
        alive = neuron_alive(unit, state.keep)
        free = owner < 0
        owned = {int(t): int((owner == t).sum()) for t in owner[~free].unique().tolist()}
        for t, n in owned.items():
            owned_total[t] = owned_total.get(t, 0) + n
        units.append(
            UnitCapacity(
                unit.name,
                owner.numel(),
                owned,
                int((free & ~alive).sum()),
                int((free & alive).sum()),
            )
        )
    return Capacity(
        units=tuple(units),
        total=sum(u.size for u in units),
        owned=owned_total,
        pruned=sum(u.pruned for u in units),
        free=sum(u.free for u in units),
    )
