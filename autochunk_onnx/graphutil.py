"""Small graph utilities every stage shares: one definition of each.

The standard ONNX domain test, the model's opset, the Einsum equation parser, the subgraph
walkers and the names a node's subgraphs read from the enclosing scope.
"""
from __future__ import annotations

from typing import Iterator

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
