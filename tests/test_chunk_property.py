"""Property tests: chunked regions compute what the whole graph computes; `largest_fitting`
equals brute force."""
import copy
import itertools

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from autochunk_onnx.chunkflow import trace_region
from autochunk_onnx.loader import pin_input_shapes
from autochunk_onnx.plan import Loop
from autochunk_onnx.rewrite import rewrite
from autochunk_onnx.select import largest_fitting
from autochunk_onnx.shapes import infer_graph

ort = pytest.importorskip("onnxruntime")

F = TensorProto.FLOAT
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _model(nodes, inputs, outputs, inits):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _trace(model, shapes, out, axis):
    pinned = copy.deepcopy(model)
    pin_input_shapes(pinned, shapes)
    g = infer_graph(pinned)
    order = list(range(len(g.nodes)))
    return g, trace_region(g, order, len(order) - 1, out, axis, 0)


def _check_units(g, r):
    """Every chunked tensor's cut length is units * elements-per-unit."""
    for t, c in list(r.cuts.items()) + list(r.slices):
        assert c.scale.denominator == 1
        assert g.shape(t)[c.axis] == r.units * c.scale, (t, c, g.shape(t), r.units)


def _chunked_equals_whole(model, g, r, chunk, feeds):
    chunked = rewrite(model, g, [Loop(r, chunk)])
    assert any(n.op_type == "Loop" for n in chunked.graph.node)
    onnx.checker.check_model(chunked)
    want = _run(model, feeds)
    got = _run(chunked, feeds)
    assert len(want) == len(got)
    for w, o in zip(want, got):
        assert w.shape == o.shape
        np.testing.assert_allclose(o, w, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ (a) elementwise chains

@st.composite
def chains(draw):
    rank = draw(st.integers(2, 4))
    dims = draw(st.lists(st.integers(2, 6), min_size=rank, max_size=rank))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    ops = draw(st.lists(st.sampled_from(["Add", "Mul", "Sub", "Relu", "Tanh", "Where"]), min_size=1, max_size=5))

    def bshape():
        """A broadcast operand: a suffix of the full shape, some dims 1."""
        k = draw(st.integers(0, rank))
        return [1 if draw(st.booleans()) else d for d in dims[rank - k:]]

    nodes, inits = [], []
    cur = "x"
    for i, op in enumerate(ops):
        out = f"t{i}"
        if op in ("Relu", "Tanh"):
            nodes.append(helper.make_node(op, [cur], [out], name=f"n{i}"))
        elif op == "Where":
            c, y = f"cond{i}", f"other{i}"
            inits.append(numpy_helper.from_array(rng.random(bshape()) < 0.5, c))
            inits.append(numpy_helper.from_array(rng.standard_normal(bshape()).astype(np.float32), y))
            args = [c, cur, y] if draw(st.booleans()) else [c, y, cur]
            nodes.append(helper.make_node("Where", args, [out], name=f"n{i}"))
        else:
            w = f"w{i}"
            inits.append(numpy_helper.from_array(rng.standard_normal(bshape()).astype(np.float32), w))
            args = [cur, w] if draw(st.booleans()) else [w, cur]
            nodes.append(helper.make_node(op, args, [out], name=f"n{i}"))
        cur = out
    E = draw(st.integers(2, 5))
    inits.append(numpy_helper.from_array(rng.standard_normal((dims[-1], E)).astype(np.float32), "proj"))
    nodes.append(helper.make_node("MatMul", [cur, "proj"], ["logits"], name="mm"))
    nodes.append(helper.make_node("Softmax", ["logits"], ["y"], name="sm", axis=-1))
    sym = [f"d{k}" for k in range(rank - 1)] + [dims[-1]]
    model = _model(nodes, [helper.make_tensor_value_info("x", F, sym)],
                   [helper.make_tensor_value_info("y", F, [None] * rank)], inits)
    x = rng.standard_normal(dims).astype(np.float32)
    return model, dims, x


@SETTINGS
@given(chains(), st.data())
def test_elementwise_chain_chunked_equals_whole(case, data):
    model, dims, x = case
    rank = len(dims)
    axis = data.draw(st.integers(0, rank - 2), label="axis")
    g, r = _trace(model, {"x": dims}, "y", axis)
    assert r is not None
    # the whole chain is elementwise along `axis`: every node is in the loop
    assert {n.index for n in r.body} == set(range(len(g.nodes)))
    assert r.units == dims[axis]
    _check_units(g, r)
    chunk = data.draw(st.integers(1, r.units - 1), label="chunk")
    _chunked_equals_whole(model, g, r, chunk, {"x": x})


@SETTINGS
@given(chains())
def test_cutting_softmax_axis_leaves_softmax_whole(case):
    model, dims, x = case
    g, r = _trace(model, {"x": dims}, "y", len(dims) - 1)
    sm = next(n.index for n in g.nodes if n.op_type == "Softmax")
    assert r is None or sm not in {n.index for n in r.body}
    # tracing the MatMul output instead: softmax is not even in the window's loop, the N dim
    # comes from the weight
    order = list(range(len(g.nodes)))
    r2 = trace_region(g, order, sm - 1, "logits", len(dims) - 1, 0)
    if r2 is not None:
        assert sm not in {n.index for n in r2.body}


# ------------------------------------------------------------------ (b) largest_fitting

@SETTINGS
@given(st.integers(-20, 20), st.lists(st.integers(0, 5), min_size=1, max_size=60), st.integers(-10, 120), st.data())
def test_largest_fitting_matches_brute_force(lo, steps, limit, data):
    hi = lo + len(steps) - 1
    base = data.draw(st.integers(-10, 10), label="base")
    vals = [base + s for s in itertools.accumulate(steps)]
    calls = []

    def f(c):
        assert lo <= c <= hi
        calls.append(c)
        return vals[c - lo]

    want = max((c for c in range(lo, hi + 1) if f(c) <= limit), default=None)
    calls.clear()
    got = largest_fitting(f, lo, hi, limit)
    assert got == want
    assert len(calls) <= 2 + len(steps).bit_length()


def test_largest_fitting_empty_range():
    assert largest_fitting(lambda c: 0, 5, 4, 10) is None


# ------------------------------------------------------------------ (c) reshape split/merge chains

@st.composite
def reshape_chains(draw):
    B, L, H, dh = (draw(st.integers(2, 4)) for _ in range(4))
    D = H * dh
    pre = draw(st.booleans())  # x comes as [B*L, D] and is split into [B, L, D]
    post = draw(st.booleans())  # the result is merged into [B*L, D]
    zeros = draw(st.booleans())  # Reshape targets copy dims with 0
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def shape_const(name, vals):
        inits.append(numpy_helper.from_array(np.asarray(vals, np.int64), name))
        return name

    cur = "x"
    if pre:
        nodes.append(helper.make_node("Reshape", [cur, shape_const("s_pre", [B, L, D])], ["x3"], name="pre"))
        cur = "x3"
    split = [0, 0, H, dh] if zeros else [B, L, H, dh]
    nodes.append(helper.make_node("Reshape", [cur, shape_const("s_split", split)], ["heads"], name="split"))
    nodes.append(helper.make_node("Transpose", ["heads"], ["bhld"], name="tr1", perm=[0, 2, 1, 3]))
    inits.append(numpy_helper.from_array(rng.standard_normal((H, 1, dh)).astype(np.float32), "hb"))
    nodes.append(helper.make_node("Add", ["bhld", "hb"], ["biased"], name="add"))
    nodes.append(helper.make_node("Tanh", ["biased"], ["act"], name="tanh"))
    nodes.append(helper.make_node("Transpose", ["act"], ["blhd"], name="tr2", perm=[0, 2, 1, 3]))
    merge = [0, 0, D] if zeros else [B, L, D]
    nodes.append(helper.make_node("Reshape", ["blhd", shape_const("s_merge", merge)], ["merged"], name="merge"))
    out_rank = 3
    cur = "merged"
    if post:
        nodes.append(helper.make_node("Reshape", [cur, shape_const("s_post", [B * L, D])], ["flat"], name="post"))
        cur, out_rank = "flat", 2
    inits.append(numpy_helper.from_array(rng.standard_normal((D, 3)).astype(np.float32), "proj"))
    nodes.append(helper.make_node("MatMul", [cur, "proj"], ["y"], name="mm"))
    xshape = [B * L, D] if pre else [B, L, D]
    sym = ["n", D] if pre else ["b", "l", D]
    model = _model(nodes, [helper.make_tensor_value_info("x", F, sym)],
                   [helper.make_tensor_value_info("y", F, [None] * out_rank)], inits)
    x = rng.standard_normal(xshape).astype(np.float32)
    return model, xshape, x, out_rank, (B, L, H, dh, pre, post)


@SETTINGS
@given(reshape_chains(), st.data())
def test_reshape_chain_chunked_equals_whole(case, data):
    model, xshape, x, out_rank, (B, L, H, dh, pre, post) = case
    axis = data.draw(st.integers(0, out_rank - 2), label="axis")
    g, r = _trace(model, {"x": xshape}, "y", axis)
    # cutting B always reaches back through every reshape; L only when nothing merges it
    if axis == 0:
        assert r is not None
        assert r.units == B
    if axis == 1 and not post:
        assert r is not None
        assert r.units == L
    if r is None:
        return
    _check_units(g, r)
    assert "tr1" in {n.name for n in r.body} and "add" in {n.name for n in r.body}
    chunk = data.draw(st.integers(1, r.units - 1), label="chunk")
    _chunked_equals_whole(model, g, r, chunk, {"x": x})


def test_matmul_vector_rhs_chunked_equals_whole():
    L = 4
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu"), helper.make_node("MatMul", ["h", "v"], ["y"], name="mv")]
    model = _model(nodes, [helper.make_tensor_value_info("x", F, ["b", L, L])],
                   [helper.make_tensor_value_info("y", F, [None, None])],
                   [numpy_helper.from_array(np.arange(L, dtype=np.float32), "v")])
    g, r = _trace(model, {"x": [2, L, L]}, "y", 1)
    assert r is not None
    x = np.random.default_rng(0).standard_normal((2, L, L)).astype(np.float32)
    _chunked_equals_whole(model, g, r, 2, {"x": x})
