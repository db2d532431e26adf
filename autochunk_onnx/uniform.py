"""Body tensors that are one number broadcast, which a Loop body builds as that one number.

diffusers' classic attention processor computes `baddbmm(empty, q, k^T, beta=0)`; exporters write
the `empty` as `Expand(0, [B*H, L, L])` (dynamo) or `ConstantOfShape([B*H, L, L])` (TorchScript),
times 0, added to the scores. Inside a chunk loop that would be a [B*H, c, L] tensor of zeros per
chunk: two passes over the scores' size for nothing. Where every reader broadcasts it against an
input that already has the reader's output shape, the rewrite emits the one number instead and
the body estimate (schedule.py) sizes it so. Values are unchanged: the readers broadcast the same
number.
"""
from __future__ import annotations

import numpy as np

from .chunkflow import Region
from .graph import Graph

_UNIFORM_OPS = {"Add", "Sub", "Mul", "Div", "Cast"}


def uniform_nodes(graph: Graph, r: Region) -> frozenset[int]:
    """Body nodes whose output is one number broadcast (diffusers' baddbmm zero,
    `Expand(0, [B*H, L, L]) * 0`, built in every chunk) and whose body readers broadcast it against
    an input that already has their output's shape: emitted as that one-element value, so a chunk
    builds no [B*H, c, L] tensor of one number (two passes over the scores per chunk, +40% time on a
    UNet with 4-channel heads). Values are unchanged: the readers broadcast the same number."""
    def one(t: str) -> int | None:  # rank of a one-element constant, else None
        v = graph.const_value(t)
        return np.ndim(v) if v is not None and np.size(v) == 1 else None

    rank: dict[str, int] = {}  # uniform clone output -> rank of the small value standing in for it
    for n in r.body:
        if len(n.outputs) != 1 or not n.outputs[0] or n.outputs[0] in r.outputs:
            continue
        if n.op_type == "Expand" and one(n.inputs[0]) is not None:
            rank[n.outputs[0]] = one(n.inputs[0])
        elif n.op_type == "ConstantOfShape":  # its value attribute is one element, [1]
            rank[n.outputs[0]] = 1
        elif n.op_type in _UNIFORM_OPS and all(i in rank or one(i) is not None for i in n.inputs if i):
            rank[n.outputs[0]] = max(rank[i] if i in rank else one(i) for i in n.inputs if i)
    # Every body reader of a small stand-in must be small itself or broadcast it against a
    # full-size input (its output keeps its shape); dropping one makes its producer's inputs full.
    body = r.nodes
    changed = True
    while changed:
        changed = False
        for t in list(rank):
            for c in graph.consumers.get(t, []):
                n = graph.nodes[c]
                if c not in body or n.outputs[0] in rank:
                    continue
                full = [i for i in n.inputs if i and i not in rank and graph.shape(i) == graph.shape(n.outputs[0])]
                if n.op_type not in _UNIFORM_OPS - {"Cast"} or not full or rank[t] > len(graph.shape(full[0])):
                    del rank[t]
                    changed = True
                    break
    return frozenset(graph.producer[t] for t in rank)
