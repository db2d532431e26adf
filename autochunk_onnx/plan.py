"""The plan: what the planner decided, as one immutable value the rewrite consumes as it is.

A `Loop` is a traced region with its chunk size. A `Plan` holds the loops, the order they run in
among the plain nodes, the nodes dropped because every reader recomputes them inside a loop,
and what the estimate predicts. `Plan` checks on construction what the rewrite relies on: loops
own disjoint nodes, chunks fit their lengths, dropped nodes belong to no loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from .chunkflow import Region
from .peak import Estimate
from .graph import Graph


@dataclass(frozen=True)
class Rows:
    """Rows per iteration computed at run time (a length range, `ranges.py`): max(1, k // L**power),
    L the run-time size of dim `dim` of graph input `input`."""

    k: int
    input: str
    dim: int
    power: int = 1  # 2 where the loop's bytes per row grow as L² (triangle attention over a pair)

    def at(self, length: int) -> int:
        return max(1, self.k // length ** self.power)


@dataclass(frozen=True, eq=False)
class Loop:
    """One chunk loop of the plan: the region it computes, `chunk` units per iteration (at the
    pinned shape; `rows`, when set, computes them from the run-time length instead)."""

    region: Region
    chunk: int
    rows: Rows | None = None

    @property
    def iterations(self) -> int:
        return -(-self.region.units // self.chunk)


@dataclass(frozen=True)
class Plan:
    """The loops to emit and what the estimate predicts for them."""

    budget: int
    original: Estimate
    final: Estimate
    loops: tuple[Loop, ...] = ()
    order: tuple = ()  # execution order: plain node indices and the loops
    dropped: frozenset[int] = frozenset()  # nodes every reader recomputes in a loop: not emitted
    predicted_slowdown: float = 0.0
    fits: bool = False
    search_s: float = 0.0
    stages: int = 0
    bounds: tuple = ()  # bounds.Bound: what is live at the final peak, and why it was not cut
    shared: tuple = ()  # (loop, earlier loop): the loop's stage reused that loop's search (reuse.py)

    def __post_init__(self) -> None:
        owned: set[int] = set()
        for lp in self.loops:
            r = lp.region
            if not 1 <= lp.chunk <= r.units:
                raise ValueError(f"loop over {r.end}: chunk {lp.chunk} outside 1..{r.units}")
            mine = {n.index for n in r.owned}
            if mine & owned:
                raise ValueError(f"loop over {r.end} shares nodes with an earlier loop")
            owned |= mine
        if self.dropped & owned:
            raise ValueError("a dropped node is computed in a loop")

    @property
    def regions(self) -> tuple[Region, ...]:
        return tuple(lp.region for lp in self.loops)


def portable(graph: Graph, region: Region, dynamic: dict[str, tuple] | None) -> bool:
    """Whether the region's Loop stays right at other input sizes.

    Slice bounds and patched shapes use each cut's elements-per-unit as a constant. When a dim
    merges the cut with a dynamic one ([batch*seq] cut by batch), that constant changes with the
    input and the Loop would be wrong at any other length: such regions are not planned. Nor
    are loops that slice nothing along a dynamic dim (their trip count would be a constant).
    `dynamic` holds every tensor's shape at a second pinning (dynamic input dims doubled).
    """
    if not region.slices:
        # the trip count is then a constant: right only if the cut dim never changes
        end = dynamic.get(region.end) if dynamic else None
        c = region.cuts[region.end]
        if end is None or end[c.axis] != graph.shape(region.end)[c.axis]:
            return False
    if not dynamic:
        return all(c.scale == 1 for c in list(region.cuts.values()) + [c for _, c in region.slices])
    ratio = None
    for t, c in list(region.cuts.items()) + list(region.slices):
        s1, s2 = graph.shape(t), dynamic.get(t)
        if s2 is None or len(s2) != len(s1):
            if c.scale != 1:
                return False
            continue
        r = Fraction(s2[c.axis], s1[c.axis])
        if ratio is not None and r != ratio:
            return False
        ratio = r
    return True
