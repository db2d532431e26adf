"""State that lives across the calls of one planning run on one pinned graph.

Facts that are costly to find and do not change while a graph is planned are computed once and
kept here, as declared fields, rather than on the graph object's `__dict__`: what ORT's own
analysis says (`estimate`), the recomputation cones (`chunkflow`), and every tensor's shape at
a second pinning of the inputs (`api`, read by the planner's portability check and the rewrite).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Session:
    ort: Any = None  # estimate._OrtInfo: ORT-provable shapes, folded constants, fusions, step cache
    cones: dict = field(default_factory=dict)  # chunkflow: (tensor, cut) -> recompute cone or None
    dynamic: dict[str, tuple] | None = None  # tensor -> shape with dynamic input dims doubled; None: unknown
