"""Structural reuse (issue 14): stages that take an earlier stage's search plan what the search
would have planned, and the schedule's fast path orders as the stable toposort does."""
from __future__ import annotations

import json

import pytest

from autochunk_onnx import api, planner
from autochunk_onnx.graphutil import stable_toposort
from autochunk_onnx.peak import estimate_graph
from autochunk_onnx.plan import Loop
from autochunk_onnx.report import plan_json, plan_text
from autochunk_onnx.schedule import _sorted_if_topological
from models.synthetic import transformer


def _plan(model, frac: float, reuse: bool, seq: int = 128):
    m = api.load(model, {"input_ids": [1, seq]})
    orig = estimate_graph(m.graph)
    m.graph.session.dynamic = api.dynamic_shapes(m)
    return planner.plan(m.graph, int(orig.peak_bytes * frac), orig, portable_only=True, reuse=reuse)


def _key(p) -> str:
    """Everything the plan says (its JSON without the timing) and its order."""
    d = plan_json(p)
    d.pop("search_s")
    d["order"] = [x if not isinstance(x, Loop) else ["loop", x.region.end_index, x.chunk] for x in p.order]
    d["dropped"] = sorted(p.dropped)
    return json.dumps(d, sort_keys=True)


@pytest.fixture(scope="module")
def stack():
    """A 10-layer decoder planned at 20% by search at every stage, and with reuse."""
    model = transformer(layers=10, d_model=32, heads=2, vocab=64)
    return model, _plan(model, 0.2, reuse=False), _plan(model, 0.2, reuse=True)


def test_reuse_plans_what_the_search_plans(stack):
    """Later layers' stages reuse an earlier layer's search, and the plan is the one searching
    at every stage gives (regions, chunks, order, dropped nodes, predicted peak, bounds)."""
    _, searched, reused = stack
    assert searched.shared == ()
    assert len(reused.shared) >= 4, "no stage reused a search: the test no longer covers reuse"
    assert _key(searched) == _key(reused)
    assert all(k > s for k, s in reused.shared)
    assert f"share the plan of loop [{reused.shared[0][1]}]" in plan_text(reused)


def test_a_different_layer_is_searched(stack):
    """One layer's activation changed (Erf -> Tanh, same shapes): the stages whose search would
    read it search again, and the plan still equals the all-search plan."""
    model, _, reused_before = stack
    m = type(model)()
    m.CopyFrom(model)
    hit = [n for n in m.graph.node if n.op_type == "Erf" and n.name.startswith("/layers.7/")]
    assert len(hit) == 1
    hit[0].op_type = "Tanh"
    searched = _plan(m, 0.2, reuse=False)
    reused = _plan(m, 0.2, reuse=True)
    assert _key(searched) == _key(reused)
    assert len(reused.shared) < len(reused_before.shared)


def test_sorted_order_is_the_stable_toposort():
    """When key order is topological it is what stable_toposort returns; when it is not, None."""
    keys = [0, 1, 5, 3, 4]  # item 2 (key 5) is a loop standing for nodes 2..5
    reads = [[], ["a"], ["b"], ["a"], ["c"]]  # item 4 reads c, which the loop writes: loop first
    writes = [["a"], ["b"], ["c"], ["d"], ["e"]]
    assert _sorted_if_topological(keys, reads, writes) is None
    assert stable_toposort(keys, reads, writes) == [0, 1, 3, 2, 4]
    reads[4] = ["d"]
    assert _sorted_if_topological(keys, reads, writes) == stable_toposort(keys, reads, writes) == [0, 1, 3, 4, 2]
