"""The order ONNX Runtime runs a graph's nodes in (ORT 1.31, default ExecutionOrder).

ORT does not run nodes in the model's order. Its GraphViewer sorts them by a reverse depth-first
search from the leaves (nodes whose outputs no node reads), last leaf first, visiting each node's
producers from the largest node index down and emitting a node once all its producers are
emitted (graph.cc `ReverseDFSFrom` with `NodeCompare`). A node ORT's optimizer creates (a fusion)
gets an index after every node of the model, so its inputs are computed before its siblings'. Checked against the
node order of ORT's profiler and of the optimized model it saves (SessionOptions
.optimized_model_filepath) on the models under models/ (tests/test_estimate_loops.py).

The order matters for memory: a mask computed from its inputs early and read late (graph order)
is computed late by ORT, so it is live for a shorter time.
"""
from __future__ import annotations

from .graph import Graph


def ort_order(graph: Graph) -> list[int]:
    """Node indices in ORT's execution order."""
    producers: list[set[int]] = []
    for node in graph.nodes:
        ps = set()
        for t in graph.reads(node.index):  # a subgraph's outer-scope reads are edges too
            p = graph.producer.get(t)
            if p is not None and p != node.index:
                ps.add(p)
        producers.append(ps)
    return reverse_dfs(list(range(len(graph.nodes))), producers)


def reverse_dfs(keys: list, producers: list[set[int]]) -> list[int]:
    """ORT's ReverseDFSFrom over items 0..n-1: `keys[i]` stands for ORT's node index of item i
    (its position in the model), `producers[i]` the items it reads. Returns the items in order."""
    n = len(keys)
    has_reader = [False] * n
    for ps in producers:
        for p in ps:
            has_reader[p] = True
    by_key = sorted(range(n), key=lambda i: keys[i])
    stack: list[tuple[int, bool]] = [(k, False) for k in by_key if not has_reader[k]]  # last leaf on top
    visited = [False] * n
    order: list[int] = []
    while stack:
        k, leave = stack.pop()
        if leave:
            order.append(k)
            continue
        if visited[k]:
            continue
        visited[k] = True
        stack.append((k, True))
        for p in sorted(producers[k], key=lambda i: keys[i]):  # ascending: the largest is visited first
            if not visited[p]:
                stack.append((p, False))
    return order
