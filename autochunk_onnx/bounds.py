"""What bounds a plan: the tensors live at its residual peak, each with why it was not cut.

A user must see whether the limit is the model (graph inputs and outputs, tensors every axis of
which some op mixes: K/V of attention read whole by every query chunk, a LayerNorm's input along
its normalised dim) or the tool (a tensor a longer region could have cut, the loop's own chunk at
the iteration cap). Reasons come from the same dim rules the chunk flow uses, followed forward a
few nodes from the tensor along each of its axes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from . import ops
from .ops import MIX, rule_for, trace_node
from .graph import Graph
from .peak import Estimate

MODEL = "model"
TOOL = "tool"
REACH = 12  # nodes followed forward from a tensor along one axis
TOP = 8  # tensors explained, largest first
SHARE = 0.97  # ... or until they make this share of the live bytes


@dataclass(frozen=True)
class Bound:
    """One tensor (or a loop's own chunk) live at the plan's peak."""

    tensor: str
    bytes: int
    shape: tuple | None
    limit: str  # MODEL or TOOL
    reason: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape) if self.shape is not None else None
        return d


def explain(graph: Graph, loops: list, est: Estimate, iteration_cap: int) -> list[Bound]:
    """Bounds at `est`'s peak under the plan's `loops` (plan.Loop)."""
    out: list[Bound] = []
    regions = [lp.region for lp in loops]
    loop_of = {f"Loop[{lp.region.end}]": (k, lp) for k, lp in enumerate(loops)}
    if est.peak_node in loop_of:
        k, lp = loop_of[est.peak_node]
        r, chunk = lp.region, lp.chunk
        c_min = max(1, -(-r.units // iteration_cap))
        live = sum(lt.bytes for lt in est.live_at_peak)
        own = max(0, est.peak_bytes - live)
        cut = r.cuts[r.end]
        at_cap = chunk <= c_min
        out.append(Bound(f"loop [{k}] chunk", own, None, TOOL,
                         f"one iteration of loop [{k}] (chunk {chunk} of {r.units} along axis {cut.axis} of {r.end})"
                         + (f": at the iteration cap ({iteration_cap})" if at_cap else "")))
    made_by = {t: k for k, r in enumerate(regions) for t in r.outputs}
    read_whole_by = {}
    for k, r in enumerate(regions):
        for t in r.outer_reads:
            read_whole_by.setdefault(t, k)
    in_loop = {n.index: k for k, r in enumerate(regions) for n in r.owned}
    total = sum(lt.bytes for lt in est.live_at_peak) or 1
    shown = 0
    for lt in est.live_at_peak:
        if len(out) >= TOP or shown >= SHARE * total or lt.bytes <= 0:
            break
        shown += lt.bytes
        limit, reason = _reason(graph, lt.name, made_by, read_whole_by, in_loop)
        out.append(Bound(lt.name, lt.bytes, tuple(lt.shape) if lt.shape else None, limit, reason))
    return out


def _reason(graph: Graph, t: str, made_by: dict, read_whole_by: dict, in_loop: dict) -> tuple[str, str]:
    if t in graph.input_names:
        return MODEL, "graph input: the caller holds it whole"
    if t in graph.output_names:
        return MODEL, "graph output: returned whole"
    shape = graph.shape(t) or ()
    mixers = []
    free = []
    for a, d in enumerate(shape):
        if d < 2:
            continue
        m = _mixer(graph, t, a)
        if m is None:
            free.append(a)
        else:
            mixers.append(f"axis {a} by {m}")
    where = ""
    if t in made_by:
        where = f"joined whole after loop [{made_by[t]}]; "
    elif t in read_whole_by:
        where = f"read whole by loop [{read_whole_by[t]}]; "
    if not free:
        return MODEL, where + ("every axis is mixed: " + ", ".join(mixers) if mixers else "no axis longer than 1")
    return TOOL, where + f"axis {free[0]} is cut by every op within {REACH} nodes, but no planned region cuts it" + (
        f" (mixed: {', '.join(mixers)})" if mixers else "")


def _mixer(graph: Graph, t: str, axis: int) -> str | None:
    """The first op, forward from `t` along `axis`, that mixes it (names the op and what it does);
    None when every op within REACH nodes passes the axis on (or the walk reaches an output)."""
    frontier = [(t, axis)]
    seen = set()
    steps = 0
    while frontier and steps < REACH:
        u, a = frontier.pop(0)
        if (u, a) in seen:
            continue
        seen.add((u, a))
        for c in graph.consumers.get(u, []):
            steps += 1
            n = graph.nodes[c]
            row = ops.info(n)
            if row.shape_output or all(i != u or row.shape_input == k for k, i in enumerate(n.inputs)):
                continue  # reads the shape only, or reads it as a target shape
            if rule_for(n) is None:
                return f"{n.name} ({n.op_type}: no chunk rule)"
            outs = [o for o in n.outputs if o]
            passed = False
            for k, o in enumerate(n.outputs):
                if not o or not graph.shape(o):
                    continue
                for b, d in enumerate(graph.shape(o)):
                    res = trace_node(graph, n, k, b)
                    if res == MIX:
                        continue
                    if any(i == u and cut is not None and cut[0] == a for i, cut in zip(n.inputs, res)):
                        passed = True
                        frontier.append((o, b))
            if not passed and outs:
                return f"{n.name} ({n.op_type} {_verb(n.op_type)} it)"
    return None


def _verb(op: str) -> str:
    if op in ("MatMul", "Gemm", "Einsum", "Conv", "ConvTranspose", "Attention"):
        return "contracts or reads whole along"
    if op.startswith("Reduce") or op in ("Softmax", "LogSoftmax", "LayerNormalization", "GroupNormalization",
                                         "InstanceNormalization", "RMSNormalization", "ArgMax", "ArgMin"):
        return "reduces or normalises over"
    if op in ("Reshape", "Flatten"):
        return "reshapes across"
    if op in ("Concat", "Split", "Slice", "Pad", "Gather", "GatherElements", "Resize", "CumSum"):
        return "concatenates, gathers or shifts along"
    return "mixes along"


def text(bounds: list[Bound]) -> list[str]:
    """Plan-text lines: one per bound."""
    from .report import fmt_bytes  # report imports the plan; keep this module below it
    if not bounds:
        return []
    lines = ["  bounded by (live at the residual peak):"]
    for b in bounds:
        shape = "x".join(map(str, b.shape)) if b.shape else "-"
        lines.append(f"    {fmt_bytes(b.bytes):>10}  {b.limit:5}  {shape:18} {b.tensor[:48]}: {b.reason}")
    return lines
