"""Small graph utilities every stage shares: one definition of each.

The standard ONNX domain test, the model's opset, the Einsum equation parser, the subgraph
walkers and the names a node's subgraphs read from the enclosing scope, the weightless skeleton
of a model, and the stable topological sort.
"""
from __future__ import annotations

from typing import Iterator

import heapq
import math

import onnx

STANDARD_DOMAINS = ("", "ai.onnx")


def is_standard(domain: str) -> bool:
    """Whether `domain` is the default ONNX operator set (spelled "" or "ai.onnx")."""
    return domain in STANDARD_DOMAINS


def opset_import(model: onnx.ModelProto) -> onnx.OperatorSetIdProto | None:
    """The model's default-domain opset entry, or None."""
    return next((o for o in model.opset_import if is_standard(o.domain)), None)


def opset_of(model: onnx.ModelProto) -> int:
    """The model's default-domain opset version (0 when it declares none)."""
    o = opset_import(model)
    return o.version if o is not None else 0


def parse_einsum(eq: str, ranks: list[int]) -> tuple[list[str], str]:
    """Expand an Einsum equation into per-input label strings and the output's.

    Each character is one label; the dims an ellipsis stands for get private labels (U+0100 on,
    right-aligned like numpy's broadcasting), which come first in an implicit output.
    """
    eq = eq.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    ell = max((r - len(t.replace("...", "")) for t, r in zip(terms, ranks) if "..." in t), default=0)
    ell_letters = ellipsis_labels(ell)

    def expand(t: str, rank: int | None) -> str:
        if "..." not in t:
            return t
        n = (rank - len(t.replace("...", ""))) if rank is not None else ell
        return t.replace("...", ell_letters[ell - n:] if n else "")

    ins = [expand(t, r) for t, r in zip(terms, ranks)]
    if "->" in eq:
        out = expand(rhs, None)
    else:
        counts: dict[str, int] = {}
        for t in ins:
            for ch in t:
                counts[ch] = counts.get(ch, 0) + 1
        out = ell_letters + "".join(sorted(ch for ch, c in counts.items() if c == 1 and ch not in ell_letters))
    return ins, out


def ellipsis_labels(n: int) -> str:
    """The private labels `parse_einsum` gives `n` ellipsis dims."""
    return "".join(chr(0x100 + i) for i in range(n))


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held in `node`'s attributes (Loop/Scan body, If branches)."""
    out: list[onnx.GraphProto] = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def all_graphs(g: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`g` and every graph nested in it, depth first."""
    yield g
    for n in g.node:
        for sg in subgraphs(n):
            yield from all_graphs(sg)


def outer_reads(node: onnx.NodeProto) -> list[str]:
    """Names the subgraphs of `node` read from the enclosing scope (nested subgraphs included)."""
    names: list[str] = []
    for g in subgraphs(node):
        local = {i.name for i in g.input} | {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
        for n in g.node:
            names += [i for i in list(n.input) + outer_reads(n) if i and i not in local]
    return list(dict.fromkeys(names))


# Initializers with more elements than this are never needed for their values by shape
# inference (shape constants are tiny), so the skeleton declares them as graph inputs instead.
BIG_INLINE_ELEMS = 1 << 16


def _is_big(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL or math.prod(t.dims) > BIG_INLINE_ELEMS


def copy_fields(src, dst, skip: str) -> None:
    """dst gets every set field of src but `skip` (no copy of the skipped one is ever made)."""
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        repeated = getattr(fd, "is_repeated", None)
        if repeated is None:  # protobuf < 5
            repeated = fd.label == fd.LABEL_REPEATED
        if repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def skeleton(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `model` without weight data, for shape inference and opset conversion.

    Every external initializer (and every inline one over BIG_INLINE_ELEMS elements) becomes a
    graph input of the same name, dtype and dims: shapes propagate exactly as before, but no engine
    can read, copy or serialize the weights (ORT's symbolic inference would otherwise try to read
    external bias values relative to the current folder, and fail). The skeleton stays small for any
    model size, so it is far below protobuf's 2 GiB limit. Returns (skeleton, names turned into inputs).
    """
    src = model.graph
    sk = onnx.ModelProto()
    copy_fields(model, sk, skip="graph")
    g = sk.graph
    copy_fields(src, g, skip="initializer")
    declared = {vi.name: vi for vi in g.input}
    stripped = []
    for t in src.initializer:
        if not _is_big(t):
            g.initializer.append(t)
            continue
        stripped.append(t.name)
        vi = onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        if t.name in declared:  # IR < 4: initializers are listed as inputs too
            declared[t.name].CopyFrom(vi)
        else:
            g.input.append(vi)
    return sk, stripped


def stable_toposort(keys: list, reads: list, writes: list) -> list[int]:
    """Positions of items in a topological order that keeps `keys` order wherever the data allow
    (ties by position). Item k reads the names `reads[k]` and writes `writes[k]`. Raises
    ValueError on a cycle."""
    produced: dict[str, int] = {}
    for k, outs in enumerate(writes):
        for o in outs:
            if o:
                produced[o] = k
    deps: list[set[int]] = [set() for _ in keys]
    users: list[list[int]] = [[] for _ in keys]
    for k, ins in enumerate(reads):
        for i in ins:
            p = produced.get(i)
            if p is not None and p != k and p not in deps[k]:
                deps[k].add(p)
                users[p].append(k)
    ready = [(keys[k], k) for k in range(len(keys)) if not deps[k]]
    heapq.heapify(ready)
    out: list[int] = []
    while ready:
        _, k = heapq.heappop(ready)
        out.append(k)
        for u in users[k]:
            deps[u].discard(k)
            if not deps[u]:
                heapq.heappush(ready, (keys[u], u))
    if len(out) != len(keys):
        raise ValueError("the order has a cycle")
    return out
