"""Position-aware chunking: ops whose values depend on the absolute index along the cut.

Each op gets a tiny graph whose output is cut along the position axis: the traced region must run
the op inside the Loop (not hoisted whole), and the rewritten model must equal the original in
ONNX Runtime at the planned length and at other lengths (the offset is read at run time). Then
whole models whose masks/biases are built in the graph: the mask or bias never exists at [L, L]
in the plan, and the written model is right at every length.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from autochunk_onnx import notes
from onnx import TensorProto, helper, numpy_helper

from autochunk_onnx import api
from autochunk_onnx.chunkflow import trace_region
from autochunk_onnx.peak import estimate_graph
from autochunk_onnx.inputs import make_inputs
from autochunk_onnx.plan import Loop, portable
from autochunk_onnx.rewrite import rewrite
from models import posgraphs

D = 8



@pytest.fixture(autouse=True)
def _second_pinning_holes():
    """ORT's symbolic shape inference stops (AssertionError) on these hand-built mask graphs when the
    planner re-pins them at a second input size to find the dynamic dims; the tool says so in a note
    (a known degraded path: loops are then judged without it) and still plans."""
    with notes.expected("shape inference left", "shape inference at a second input size"):
        yield


def _model(nodes, inits, out_dims, out_type=TensorProto.FLOAT) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "pos", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["L", D])],
                          [helper.make_tensor_value_info("y", out_type, out_dims)],
                          initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    m.ir_version = 10
    onnx.checker.check_model(m, full_check=True)
    return m


def _length_nodes() -> list:
    """L as a scalar (`len`) and as [1] (`len1`), from x's run-time shape."""
    return [helper.make_node("Shape", ["x"], ["shp"]),
            helper.make_node("Gather", ["shp", "i0"], ["len"], axis=0),
            helper.make_node("Unsqueeze", ["len", "ax0"], ["len1"])]


def _gram() -> list:
    """s = x x^T [L, L]: a tensor read along both axes, so every loop slices an input."""
    return [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "xt"], ["s"])]


BASE = {"i0": np.array(0, np.int64), "ax0": np.array([0], np.int64), "one": np.array(1, np.int64)}


def _run(m: onnx.ModelProto, n: int) -> list[np.ndarray]:
    x = np.random.default_rng(n).standard_normal((n, D)).astype(np.float32)
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def _chunk_and_check(model, op: str, axis: int, tmp_path, chunk: int = 3, length: int = 10, others=(17, 4, 1),
                     emitted: str | None = None):
    """Trace y's `axis` over the whole graph; `op` must run in the loop (as `emitted` where its
    position rule writes it with other ops); outputs equal at every length."""
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    m = api.load(path, {"x": [length, D]})
    g = m.graph
    r = trace_region(g, list(range(len(g.nodes))), g.producer["y"], "y", axis, 0)
    assert r is not None, f"no region along axis {axis}"
    assert any(n.op_type == op for n in r.body), f"{op} is not chunked: body {[n.op_type for n in r.body]}"
    dyn = api.dynamic_shapes(m)
    assert portable(g, r, dyn)
    g.session.dynamic = dyn
    out = rewrite(m.original, g, [Loop(r, chunk)])
    onnx.checker.check_model(out, full_check=True)
    assert any(n.op_type == "Loop" for n in out.graph.node)
    loop = next(n for n in out.graph.node if n.op_type == "Loop")
    body = {n.op_type for n in loop.attribute[0].g.node}
    assert (emitted or op) in body
    if emitted in ("Identity", "Constant"):  # a uniform tensor stands in as its one number
        assert op not in body
    for n in (length,) + tuple(others):
        want, got = _run(model, n), _run(out, n)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5, err_msg=f"L={n}")
    return r


@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, 0, 2, -3])
@pytest.mark.parametrize("axis", [0, 1])

def test_trilu_rows_and_columns_take_the_offset(upper, k, axis, tmp_path):
    nodes = _length_nodes() + [
        helper.make_node("Concat", ["len1", "len1"], ["ls"], axis=0),
        helper.make_node("ConstantOfShape", ["ls"], ["ones"], value=numpy_helper.from_array(np.array([1.0], np.float32))),
        helper.make_node("Trilu", ["ones"] + ([] if k is None else ["k"]), ["tri"], upper=upper),
    ] + _gram() + [helper.make_node("Mul", ["tri", "s"], ["y"])]
    inits = dict(BASE)
    if k is not None:
        inits["k"] = np.array(k, np.int64)
    _chunk_and_check(_model(nodes, inits, ["L", "L"]), "Trilu", axis, tmp_path)


def test_trilu_on_data_with_a_batch_dim(tmp_path):
    """Trilu of real values [2, L, L] (x x^T per batch): rows, then the batch axis (no offset)."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "xt"], ["xx"]),
        helper.make_node("Unsqueeze", ["xx", "ax0"], ["xx1"]),
        helper.make_node("Concat", ["xx1", "xx1"], ["b"], axis=0),
        helper.make_node("Trilu", ["b", "k"], ["y"], upper=1),
    ]
    inits = dict(BASE, k=np.array(1, np.int64))
    _chunk_and_check(_model(nodes, inits, [2, "L", "L"]), "Trilu", 1, tmp_path)


def test_range_chunk_starts_at_the_offset(tmp_path):
    """Range(3, 3 + 2L, 2) cut along its only axis, read as positions of x's rows."""
    nodes = _length_nodes() + [
        helper.make_node("Mul", ["len", "two_i"], ["l2"]),
        helper.make_node("Add", ["l2", "three"], ["lim"]),
        helper.make_node("Range", ["three", "lim", "two_i"], ["pos"]),
        helper.make_node("Cast", ["pos"], ["posf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["posf", "ax1"], ["pcol"]),
        helper.make_node("Mul", ["x", "pcol"], ["y"]),
    ]
    inits = dict(BASE, two_i=np.array(2, np.int64), three=np.array(3, np.int64), ax1=np.array([1], np.int64))
    r = _chunk_and_check(_model(nodes, inits, ["L", D]), "Range", 0, tmp_path)
    assert not any(t == "pos" for t, _ in r.slices)  # made in the loop, not sliced from a whole arange


def test_float_range_is_not_offset(tmp_path):
    """A float Range could round its chunk's length differently: it stays outside (sliced)."""
    nodes = _length_nodes() + [
        helper.make_node("Cast", ["len"], ["lenf"], to=TensorProto.FLOAT),
        helper.make_node("Range", ["zf", "lenf", "onef"], ["pos"]),
        helper.make_node("Unsqueeze", ["pos", "ax1"], ["pcol"]),
        helper.make_node("Mul", ["x", "pcol"], ["y"]),
    ]
    inits = dict(BASE, zf=np.array(0.0, np.float32), onef=np.array(1.0, np.float32), ax1=np.array([1], np.int64))
    path = tmp_path / "m.onnx"
    onnx.save(_model(nodes, inits, ["L", D]), str(path))
    g = api.load(path, {"x": [10, D]}).graph
    r = trace_region(g, list(range(len(g.nodes))), g.producer["y"], "y", 0, 0)
    assert r is not None and not any(n.op_type == "Range" for n in r.body)


def test_constant_of_shape_takes_the_chunk_length(tmp_path):
    nodes = _length_nodes() + [
        helper.make_node("Concat", ["len1", "dcol"], ["ls"], axis=0),
        helper.make_node("ConstantOfShape", ["ls"], ["c"], value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Greater", ["x", "zf"], ["pos"]),
        helper.make_node("Where", ["pos", "c", "x"], ["y"]),  # not a broadcast of the one number
    ]
    inits = dict(BASE, dcol=np.array([D], np.int64), zf=np.array(0.0, np.float32))
    _chunk_and_check(_model(nodes, inits, ["L", D]), "ConstantOfShape", 0, tmp_path)


@pytest.mark.parametrize("start", ["zero", "tail", "negative"])
@pytest.mark.parametrize("axis", [0, 1])
def test_slice_of_a_buffer_by_the_run_time_length(start, axis, tmp_path):
    """mask_buffer[s0 : s0 + L, s0 : s0 + L] (GPT-2's causal-mask buffer cut by the length): rows
    or columns [s, e) of the result are rows [s0 + s, s0 + e) of the buffer, s0 normalised at run time."""
    n_max = 32
    buf = np.tril(np.ones((n_max, n_max), np.float32)) * np.arange(1, n_max + 1, dtype=np.float32)[None, :]
    nodes = _length_nodes()
    if start == "zero":
        nodes.append(helper.make_node("Identity", ["z1"], ["st1"]))
    elif start == "tail":  # n_max - L: the last L rows
        nodes.append(helper.make_node("Sub", ["nmax1", "len1"], ["st1"]))
    else:  # -L: the last L rows, as a negative start
        nodes.append(helper.make_node("Neg", ["len1"], ["st1"]))
    nodes += [
        helper.make_node("Add", ["st1", "len1"], ["en1"]),
        helper.make_node("Concat", ["st1", "st1"], ["starts"], axis=0),
        helper.make_node("Concat", ["en1", "en1"], ["ends"], axis=0),
        helper.make_node("Slice", ["buf", "starts", "ends", "axes"], ["cut"]),
    ] + _gram() + [helper.make_node("Mul", ["cut", "s"], ["y"])]
    if start == "negative":  # -L + L = 0 would be empty: end at the buffer's end instead
        k = next(i for i, n in enumerate(nodes) if n.output[0] == "en1")
        nodes[k] = helper.make_node("Identity", ["big1"], ["en1"])
    inits = dict(BASE, buf=buf, z1=np.array([0], np.int64), nmax1=np.array([n_max], np.int64),
                 axes=np.array([0, 1], np.int64), big1=np.array([n_max], np.int64))
    _chunk_and_check(_model(nodes, inits, ["L", "L"]), "Slice", axis, tmp_path, others=(17, 4, 1, n_max))


def test_gather_from_a_position_table_by_an_arange(tmp_path):
    table = np.random.default_rng(0).standard_normal((64, D)).astype(np.float32)
    nodes = _length_nodes() + [
        helper.make_node("Range", ["i0", "len", "one"], ["pos"]),
        helper.make_node("Gather", ["table", "pos"], ["pe"], axis=0),
        helper.make_node("Add", ["x", "pe"], ["y"]),
    ]
    _chunk_and_check(_model(nodes, dict(BASE, table=table), ["L", D]), "Gather", 0, tmp_path)


def test_expand_of_zero_to_a_computed_shape(tmp_path):
    """baddbmm's `Expand(0, [L, L])`: the shape built by Shape -> Gather -> Unsqueeze -> Concat; read
    by an Add that broadcasts it against the full scores, the chunk is built as the one number
    (rewrite._uniform_nodes). Read by an op that needs its shape (Softmax), it is expanded per chunk."""
    nodes = _length_nodes() + [
        helper.make_node("Concat", ["len1", "len1"], ["ls"], axis=0),
        helper.make_node("Expand", ["zero", "ls"], ["e"]),
        helper.make_node("Mul", ["e", "zero"], ["e0"]),
    ] + _gram() + [helper.make_node("Add", ["e0", "s"], ["y"])]
    model = _model(nodes, dict(BASE, zero=np.array(0.0, np.float32)), ["L", "L"])
    _chunk_and_check(model, "Expand", 0, tmp_path, emitted="Identity")
    nodes[-1] = helper.make_node("Softmax", ["e0"], ["sm"], axis=-1)
    nodes.append(helper.make_node("Add", ["sm", "s"], ["y"]))
    _chunk_and_check(_model(nodes, dict(BASE, zero=np.array(0.0, np.float32)), ["L", "L"]), "Expand", 0, tmp_path)


def test_constant_of_shape_zero_added_to_the_scores_is_one_number_per_chunk(tmp_path):
    """The TorchScript export of baddbmm: ConstantOfShape([L, L]) * 0 + scores; the chunk's zero is a
    one-element Constant, not a [c, L] tensor."""
    nodes = _length_nodes() + [
        helper.make_node("Concat", ["len1", "len1"], ["ls"], axis=0),
        helper.make_node("ConstantOfShape", ["ls"], ["z"]),
        helper.make_node("Mul", ["z", "zero"], ["z0"]),
    ] + _gram() + [helper.make_node("Add", ["s", "z0"], ["y"])]
    _chunk_and_check(_model(nodes, dict(BASE, zero=np.array(0.0, np.float32)), ["L", "L"]), "ConstantOfShape", 0,
                     tmp_path, emitted="Constant")


@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumsum_along_the_cut_adds_the_running_total(exclusive, reverse, tmp_path):
    """Position ids as exporters write them (cumsum of a mask of ones, minus one): the chunk's
    cumsum plus the total of what comes before it (after it, reversed)."""
    nodes = _length_nodes() + [
        helper.make_node("ConstantOfShape", ["len1"], ["ones"], value=numpy_helper.from_array(np.array([1], np.int64))),
        helper.make_node("CumSum", ["ones", "i0"], ["cs"], exclusive=exclusive, reverse=reverse),
        helper.make_node("Sub", ["cs", "one"], ["pos"]),
        helper.make_node("Cast", ["pos"], ["posf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["posf", "ax1"], ["pcol"]),
        helper.make_node("Mul", ["x", "pcol"], ["y"]),
    ]
    inits = dict(BASE, ax1=np.array([1], np.int64))
    _chunk_and_check(_model(nodes, inits, ["L", D]), "CumSum", 0, tmp_path)


@pytest.mark.parametrize("k", [0, 2, -3])
@pytest.mark.parametrize("axis", [0, 1])
def test_eye_like_rows_and_columns_take_the_offset(k, axis, tmp_path):
    nodes = _gram() + [helper.make_node("EyeLike", ["s"], ["eye"], k=k), helper.make_node("Mul", ["eye", "s"], ["y"])]
    _chunk_and_check(_model(nodes, dict(BASE), ["L", "L"]), "EyeLike", axis, tmp_path, emitted="Equal")


def test_tile_of_a_row_by_the_run_time_length(tmp_path):
    """A [1, D] bias tiled to [L, D] by a repeat count read from x's shape: each chunk tiles its rows."""
    row = np.random.default_rng(1).standard_normal((1, D)).astype(np.float32)
    nodes = _length_nodes() + [
        helper.make_node("Concat", ["len1", "one1"], ["reps"], axis=0),
        helper.make_node("Tile", ["row", "reps"], ["t"]),
        helper.make_node("Add", ["x", "t"], ["y"]),
    ]
    inits = dict(BASE, row=row, one1=np.array([1], np.int64))
    _chunk_and_check(_model(nodes, inits, ["L", D]), "Tile", 0, tmp_path)


def test_tile_along_a_repeated_axis_gathers_modulo_the_size(tmp_path):
    """Tile(x x^T, [1, 3]) [L, 3L] cut along the repeated columns: column j is column j mod L. Nothing
    is sliced, so the trip count is the planned length's (the planner keeps such a loop out:
    `portable` is False); the emitted chunks are checked at that length."""
    nodes = _gram() + [helper.make_node("Tile", ["s", "reps"], ["y"])]
    model = _model(nodes, dict(BASE, reps=np.array([1, 3], np.int64)), ["L", "L3"])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    m = api.load(path, {"x": [10, D]})
    g = m.graph
    r = trace_region(g, list(range(len(g.nodes))), g.producer["y"], "y", 1, 0)
    assert r is not None and any(n.op_type == "Tile" for n in r.body)
    assert not portable(g, r, api.dynamic_shapes(m))
    out = rewrite(m.original, g, [Loop(r, 4)])
    onnx.checker.check_model(out, full_check=True)
    body = next(n for n in out.graph.node if n.op_type == "Loop").attribute[0].g.node
    assert {"Tile", "Mod", "Gather"} <= {n.op_type for n in body}
    np.testing.assert_allclose(_run(out, 10)[0], _run(model, 10)[0], rtol=1e-5, atol=1e-5)


# --- whole models -----------------------------------------------------------------------------

MODELS = {
    "gpt_trilu": (posgraphs.gpt_trilu, "/mask/Trilu_output_0"),
    "gpt_range": (posgraphs.gpt_range, "/mask/GreaterOrEqual_output_0"),
    "t5_encoder": (posgraphs.t5_encoder, "/relbias/Gather_1_output_0"),
    "baddbmm_attention": (posgraphs.baddbmm_attention, "/attn/Expand_output_0"),
}
L = 512


@pytest.mark.parametrize("name", list(MODELS))
def test_mask_or_bias_is_built_chunk_by_chunk(name, tmp_path):
    build, big = MODELS[name]
    src = tmp_path / f"{name}.onnx"
    onnx.save(build(), str(src))
    out = tmp_path / "chunked.onnx"
    res = api.optimize(src, out, "20%", {"x": [1, L, 64]})
    p = res.plan
    assert p.fits and res.verify.ok, [d for d in res.verify.diffs if not d.ok]
    # the [L, L] tensor is only built inside loops: no outer node makes it whole
    m = onnx.load(str(out))
    assert big not in {o for n in m.graph.node for o in n.output}
    assert any(big + "/" in o for n in m.graph.node if n.op_type == "Loop" for b in n.attribute
               for bn in b.g.node for o in bn.output)
    # outputs equal at other lengths (the offsets and chunk counts are read at run time)
    orig = onnx.load(str(src))
    for n in (L + 77, 130):
        feeds = make_inputs(orig, {"x": (1, n, 64)}, seed=n)
        a = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)
        b = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)
        np.testing.assert_allclose(b[0], a[0], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["gpt_trilu", "t5_encoder"])
def test_smallest_plan_holds_no_square_tensor(name, tmp_path):
    """At the smallest reachable budget no [L, L] tensor is live at the peak any more."""
    build, _ = MODELS[name]
    src = tmp_path / f"{name}.onnx"
    onnx.save(build(), str(src))
    res = api.optimize(src, None, 1, {"x": [1, L, 64]}, best_effort=True, dry_run=True)
    est = res.plan.final
    square = [lt for lt in est.live_at_peak if lt.shape and list(lt.shape[-2:]) == [L, L]]
    assert not square, square
    assert est.peak_bytes < 0.10 * estimate_graph(api.load(src, {"x": [1, L, 64]}).graph).peak_bytes


# --- what bounds the plan ---------------------------------------------------------------------

def test_bounds_name_what_is_live_and_why(tmp_path):
    """Unreachable budget: every tensor listed is live at the final peak, with a model/tool verdict;
    K of an attention is read whole (every axis mixed: Softmax over keys, MatMul over head dims)."""
    src = tmp_path / "gpt.onnx"
    onnx.save(posgraphs.gpt_trilu(), str(src))
    res = api.optimize(src, None, 1, {"x": [1, L, 64]}, best_effort=True, dry_run=True)
    p = res.plan
    assert not p.fits and p.bounds
    live = {lt.name: lt.bytes for lt in p.final.live_at_peak}
    for b in p.bounds:
        assert b.limit in ("model", "tool") and b.reason
        assert b.tensor in live and b.bytes == live[b.tensor] or b.tensor.startswith("loop [")
    # K (the transposed key heads) read whole by the attention loop: the model's limit, Softmax named
    k_bounds = [b for b in p.bounds if "read whole by loop" in b.reason]
    assert k_bounds and all(b.limit == "model" for b in k_bounds)
    assert any("Softmax" in b.reason or "MatMul" in b.reason for b in k_bounds)
    from autochunk_onnx.report import plan_json, plan_text
    doc = plan_json(p)
    assert [b["tensor"] for b in doc["bounds"]] == [b.tensor for b in p.bounds]
    assert "bounded by" in plan_text(p)


def test_bounds_mark_inputs_and_outputs_as_the_model(tmp_path):
    """An MLP-only graph at a budget below its output: the output is listed as the model's limit."""
    src = tmp_path / "m.onnx"
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["L", D])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["L", 4 * D])],
                          initializer=[numpy_helper.from_array(np.ones((D, 4 * D), np.float32), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    m.ir_version = 10
    onnx.save(m, str(src))
    res = api.optimize(src, None, 1, {"x": [4096, D]}, best_effort=True, dry_run=True)
    by_name = {b.tensor: b for b in res.plan.bounds}
    assert by_name["y"].limit == "model" and "output" in by_name["y"].reason
    if "x" in by_name:  # live at the peak only where the first loop still reads it
        assert by_name["x"].limit == "model" and "input" in by_name["x"].reason


def test_cli_exit_3_lists_the_bounds(tmp_path):
    import subprocess
    import sys
    src = tmp_path / "gpt.onnx"
    onnx.save(posgraphs.gpt_trilu(), str(src))
    args = [sys.executable, "-m", "autochunk_onnx", "optimize", str(src), str(tmp_path / "o.onnx"), "-b", "1KB",
            "-s", f"x:1x{L}x64"]
    env = dict(os.environ, AUTOCHUNK_STRICT="0")  # the second-pinning note (see the fixture) is expected here too
    p = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=str(Path(__file__).resolve().parents[1]),
                       env=env)
    assert p.returncode == 3, p.stderr
    errors = [ln for ln in p.stderr.strip().splitlines() if not ln.startswith("autochunk-onnx: note:")]
    assert len(errors) == 1  # the one error line (notes before it)
    assert "bounded by" in p.stdout and ("model" in p.stdout or "tool" in p.stdout)
    assert not (tmp_path / "o.onnx").exists()


def test_plan_sizes_a_broadcast_zero_as_one_number(tmp_path):
    """baddbmm's zero (Expand(0, [L, L]) * 0 added to the scores) is built as one number in the body
    (uniform.py): the plan's estimate says so too, so it matches the estimate of the written model
    (counted at [c, L] per chunk it would be a third above it)."""
    nodes = _length_nodes() + [
        helper.make_node("Concat", ["len1", "len1"], ["ls"], axis=0),
        helper.make_node("Expand", ["zero", "ls"], ["e"]),
        helper.make_node("Mul", ["e", "zero"], ["e0"]),
    ] + _gram() + [
        helper.make_node("Mul", ["s", "alpha"], ["sa"]),
        helper.make_node("Add", ["sa", "e0"], ["b"]),
        helper.make_node("Softmax", ["b"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "x"], ["y"]),
    ]
    model = _model(nodes, dict(BASE, zero=np.array(0.0, np.float32), alpha=np.array(0.5, np.float32)), ["L", D])
    src, out = tmp_path / "m.onnx", tmp_path / "c.onnx"
    onnx.save(model, str(src))
    res = api.optimize(str(src), str(out), "30%", {"x": [512, D]}, verify_output=False)
    body = next(n for n in onnx.load(str(out)).graph.node if n.op_type == "Loop").attribute[0].g.node
    assert "Expand" not in {n.op_type for n in body}
    _, written = api.estimate(str(out), {"x": [512, D]})
    assert abs(res.plan.final.peak_bytes - written.peak_bytes) <= 0.05 * written.peak_bytes, \
        (res.plan.final.peak_bytes, written.peak_bytes)
    np.testing.assert_allclose(_run(onnx.load(str(out)), 300)[0], _run(model, 300)[0], rtol=1e-5, atol=1e-5)
