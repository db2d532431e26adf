"""Predicted speed cost of running a region as a chunk loop, relative to the whole model.

time(model) ~ sum over nodes of (FLOPs / FLOP_RATE + bytes touched / MEM_RATE + NODE_S);
a chunk loop adds, per iteration, ITER_S plus NODE_S for every node in the body; copies of the
sliced inputs and of the joined outputs (sequence insert + concat: twice the output bytes); and
GEMMs whose row count shrinks to the chunk run less efficiently: efficiency(m) = m / (m + GEMM_M0).
Constants were fitted with `python -m bench.calibrate --repeats 9` (interleaved ORT micro-benchmarks:
a 1024^3 GEMM, a chain of Adds on 16 MiB tensors, Loops of 1-64 iterations x 1-32 tiny nodes,
[m,256]x[256,256] GEMMs for m = 1..1024) on ORT 1.31.1 CPU, this project's 2-core machine,
2026-11-29. Only ratios between plans matter for selection: a Loop iteration and a body node cost
well under a microsecond here, so what separates plans is mostly GEMM rows (m / (m + 27)).
"""
from __future__ import annotations

from dataclasses import dataclass

from . import ops
from .graph import Graph, Node

FLOP_RATE = 4.7e11  # FLOP/s of large fp32 GEMMs
MEM_RATE = 6.2e10  # bytes/s for elementwise ops and copies
NODE_S = 2.0e-7  # per kernel launch inside a Loop body
ITER_S = 5.2e-7  # per Loop iteration
GEMM_M0 = 27.0  # rows at which a GEMM reaches half its large-size throughput


def node_flops(graph: Graph, n: Node) -> float:
    """Multiply-adds x2 of GEMM-like ops (`OpInfo.flops`); elementwise work is counted as bytes instead."""
    flops = ops.info(n).flops
    return flops(graph, n) if flops is not None else 0.0


def node_time(graph: Graph, n: Node) -> float:
    moved = sum(graph.nbytes(t) for t in n.inputs + n.outputs if t and not graph.is_weight(t))
    return node_flops(graph, n) / FLOP_RATE + moved / MEM_RATE + NODE_S


def model_time(graph: Graph) -> float:
    return sum(node_time(graph, n) for n in graph.nodes)


@dataclass
class LoopCost:
    extra_s: float
    iterations: int


def loop_cost(graph: Graph, region, chunk: int) -> LoopCost:
    """Extra seconds the region costs as a loop with `chunk` units per iteration."""
    iters = -(-region.units // chunk)
    extra = iters * (ITER_S + NODE_S * (len(region.body) + 2 * len(region.slices) + 2 * len(region.outputs)))
    extra += sum(graph.nbytes(t) for t, _ in region.slices) / MEM_RATE
    extra += 2 * sum(graph.nbytes(t) for t in region.outputs) / MEM_RATE
    for n in region.body:
        f = node_flops(graph, n)
        if not f:
            continue
        cuts = region.cuts.get(n.outputs[0])
        y = graph.shape(n.outputs[0])
        if cuts is None or not y:
            continue
        rows_full = y[-2] if len(y) >= 2 else 1
        rows = rows_full
        if cuts.axis == len(y) - 2:  # the GEMM's M dim is the one cut
            rows = max(1, chunk * int(cuts.scale))
        eff = lambda m: m / (m + GEMM_M0)  # noqa: E731
        extra += f / FLOP_RATE * (eff(rows_full) / eff(min(rows, rows_full)) - 1.0)
    return LoopCost(extra, iters)
