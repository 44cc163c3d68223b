"""Quorum: a partition acts only with more than half of the configured votes.

Two-node clusters use corosync's rule instead: with ``two_node`` either node alone is quorate,
but with ``wait_for_all`` only after it has seen every node at least once since it started. A
plain majority would make every two-node cluster useless on a single failure; the price is that
two nodes that lose every link to each other both stay quorate, so ``two_node`` is only safe
with redundant links or a fencer that really powers nodes off (see docs/protocol.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Quorum:
    votes: Mapping[str, int]
    two_node: bool = False
    wait_for_all: bool = True
    #: the sum of the votes (asked for at every heartbeat: kept, not summed each time)
    total: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total", sum(self.votes.values()))

    def weight(self, nodes: Iterable[str]) -> int:
        return sum(self.votes.get(n, 0) for n in set(nodes))

    def quorate(self, nodes: Iterable[str], *, seen_all: bool = True) -> bool:
        weight = self.weight(nodes)
        if self.two_node:
            return weight >= 1 and (seen_all or not self.wait_for_all)
        return 2 * weight > self.total

    def describe(self, nodes: Iterable[str]) -> str:
        if self.two_node:
            return f"two_node: {self.weight(nodes)} of {self.total} votes"
        return f"{self.weight(nodes)} of {self.total} votes, need {self.total // 2 + 1}"
