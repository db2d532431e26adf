"""Every dim rule of the op registry, checked against ONNX Runtime.

For each registry row with a rule, a one-node graph per case below: for every output and every
axis the rule does not call MIX, the output is computed in two chunks along that axis (each
input sliced as the rule says, shape inputs patched as the rewrite patches them), joined, and
compared with the whole run. A rule that claims a cut it cannot make fails here. Adding an op to
the registry needs a case here (`test_every_rule_has_a_case`).
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autochunk_onnx import ops
from autochunk_onnx.shapes import infer_graph

ort = pytest.importorskip("onnxruntime")

rng = np.random.default_rng(0)


def f(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def pos(*shape):
    return (rng.random(shape) + 0.5).astype(np.float32)


def i64(*vals):
    return np.array(vals, dtype=np.int64)


class C:
    """A constant input: an initializer (rules may read its value)."""

    def __init__(self, value):
        self.value = np.asarray(value)


def case(*inputs, n_out=1, opset=None, **attrs):
    return dict(inputs=list(inputs), attrs=attrs, n_out=n_out, opset=opset)


UNARY = ["Not", "Neg", "Abs", "Sqrt", "Reciprocal", "Exp", "Log", "Erf", "Tanh", "Sigmoid", "Relu", "LeakyRelu", "Elu",
         "Selu", "Celu", "ThresholdedRelu", "Gelu", "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Mish", "Swish",
         "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Floor", "Ceil", "Round", "Sign", "IsNaN", "IsInf",
         "BitwiseNot", "Identity", "Dropout"]
BINARY = ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Equal", "Less", "LessOrEqual", "Greater",
          "GreaterOrEqual", "PRelu"]
LOGIC = ["And", "Or", "Xor"]
BITWISE = ["BitwiseAnd", "BitwiseOr", "BitwiseXor"]
REDUCE = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
          "ReduceLogSumExp", "ReduceSumSquare"]

CASES: dict[str, list[dict]] = {}
for op in UNARY:
    x = (rng.random((3, 4, 2)) < 0.5) if op == "Not" else rng.integers(0, 9, (3, 4, 2)).astype(np.int32) \
        if op == "BitwiseNot" else f(3, 4, 2)
    CASES[op] = [case(x)]
for op in BINARY:
    CASES[op] = [case(f(3, 4, 2), f(4, 1)), case(f(1, 4, 2), f(3, 4, 2))]
CASES["Pow"] = [case(pos(3, 4, 2), f(4, 1))]
CASES["PRelu"] = [case(f(3, 4, 2), f(4, 1))]
for op in LOGIC:
    CASES[op] = [case(rng.random((3, 4, 2)) < 0.5, rng.random((4, 1)) < 0.5)]
for op in BITWISE:
    CASES[op] = [case(rng.integers(0, 9, (3, 4, 2)).astype(np.int32), rng.integers(0, 9, (4, 1)).astype(np.int32))]
CASES["Mod"] = [case(rng.integers(0, 50, (3, 4, 2)), rng.integers(1, 7, (4, 1)))]
CASES["Where"] = [case(rng.random((3, 4, 2)) < 0.5, f(4, 2), f(1)), case(rng.random((4, 1)) < 0.5, f(3, 4, 2), f(3, 1, 2))]
CASES["Cast"] = [case(f(3, 4, 2), to=TensorProto.DOUBLE)]
CASES["CastLike"] = [case(f(3, 4, 2), np.zeros(1, np.float64))]
CASES["Clip"] = [case(f(3, 4, 2), C(np.float32(-0.5)), C(np.float32(0.5)))]
for op in ("Softmax", "LogSoftmax", "Hardmax"):
    CASES[op] = [case(f(3, 4, 5), axis=-1), case(f(3, 4, 5), axis=1)]
CASES["LayerNormalization"] = [case(f(3, 4, 5), C(f(5)), C(f(5))), case(f(3, 4, 5), C(f(4, 5)), axis=1)]
CASES["RMSNormalization"] = [case(f(3, 4, 5), C(f(5)), opset=23)]
CASES["SimplifiedLayerNormalization"] = [case(f(3, 4, 5), C(f(5)), axis=-1)]
CASES["InstanceNormalization"] = [case(f(2, 3, 4, 5), C(f(3)), C(f(3)))]
CASES["GroupNormalization"] = [case(f(2, 4, 3, 3), C(f(4)), C(f(4)), num_groups=2, opset=21)]
CASES["BatchNormalization"] = [case(f(2, 3, 4, 5), C(f(3)), C(f(3)), C(f(3)), C(pos(3)))]
CASES["MatMul"] = [case(f(2, 3, 4), f(4, 5)), case(f(2, 1, 3, 4), f(3, 4, 5)), case(f(3, 4), f(4)), case(f(4), f(2, 4, 5))]
CASES["Gemm"] = [case(f(3, 4), f(4, 5), f(5)), case(f(4, 3), f(5, 4), f(3, 1), transA=1, transB=1)]
CASES["Einsum"] = [case(f(2, 3, 4), f(2, 4, 5), equation="bij,bjk->bik"), case(f(2, 3, 4), f(4, 5), equation="...ij,jk"),
                   case(f(2, 3, 3), equation="bii->bi"), case(f(3, 4), f(5, 4), equation="ik,jk->ij")]
CASES["Conv"] = [case(f(2, 3, 5, 5), f(4, 3, 1, 1), f(4)), case(f(2, 3, 5, 5), f(4, 3, 3, 3), pads=[1, 1, 1, 1]),
                 case(f(2, 4, 5, 5), f(4, 2, 1, 1), group=2)]
CASES["ConvTranspose"] = [case(f(2, 2, 4, 4), f(2, 3, 3, 3))]
CASES["Attention"] = [case(f(2, 2, 4, 8), f(2, 2, 5, 8), f(2, 2, 5, 8), opset=23),
                      case(f(2, 2, 4, 8), f(2, 2, 5, 8), f(2, 2, 5, 8), f(4, 5), opset=23),
                      case(f(2, 4, 16), f(2, 5, 16), f(2, 5, 16), q_num_heads=2, kv_num_heads=2, opset=23)]
CASES["Transpose"] = [case(f(2, 3, 4), perm=[2, 0, 1]), case(f(2, 3, 4))]
CASES["Reshape"] = [case(f(2, 3, 4), C(i64(2, 12))), case(f(2, 3, 4), C(i64(6, 4))), case(f(2, 3, 4), C(i64(2, 3, 2, 2))),
                    case(f(2, 3, 4), C(i64(0, -1)))]
CASES["Flatten"] = [case(f(2, 3, 4), axis=1), case(f(2, 3, 4), axis=2)]
CASES["Squeeze"] = [case(f(2, 1, 4), C(i64(1)))]
CASES["Unsqueeze"] = [case(f(2, 3), C(i64(1)))]
CASES["Expand"] = [case(f(3, 1), C(i64(2, 3, 4)))]
CASES["Concat"] = [case(f(2, 3), f(2, 2), axis=1)]
CASES["Split"] = [case(f(4, 6), C(i64(2, 4)), axis=1, n_out=2)]
CASES["Slice"] = [case(f(4, 6), C(i64(1)), C(i64(5)), C(i64(1))), case(f(4, 6), C(i64(0)), C(i64(99)), C(i64(1)))]
CASES["Gather"] = [case(f(5, 4), rng.integers(0, 5, (2, 3)), axis=0), case(f(5, 4), rng.integers(0, 4, (2, 3)), axis=1)]
CASES["GatherElements"] = [case(f(3, 4), rng.integers(0, 4, (3, 2)), axis=1), case(f(3, 4), rng.integers(0, 3, (2, 4)), axis=0)]
CASES["Tile"] = [case(f(2, 3), C(i64(1, 2)))]
CASES["Resize"] = [case(f(1, 2, 4, 4), "", C(np.array([1, 1, 2, 2], np.float32)), mode="nearest")]
CASES["Pad"] = [case(f(3, 4), C(i64(0, 1, 0, 1))), case(f(3, 4), C(i64(1, 0, -1, 0)))]
CASES["Trilu"] = [case(f(2, 4, 4)), case(f(2, 4, 4), upper=0), case(f(2, 5, 4), C(np.array(-1, np.int64)), upper=1)]
# position rules (posrules): the chunk's offset is put in by the row's `position`, emitted as the rewrite does
CASES["Range"] = [case(C(np.array(3, np.int64)), C(np.array(20, np.int64)), C(np.array(2, np.int64)))]
CASES["ConstantOfShape"] = [case(C(i64(4, 6)), value=numpy_helper.from_array(np.array([0.5], np.float32)))]
CASES["Slice"].append(case(f(6, 5), C(i64(-4)), C(i64(-1)), C(i64(0))))
CASES["Tile"] += [case(f(2, 3), C(i64(3, 2))), case(f(1, 4), C(i64(5, 1))), case(f(2, 1, 3), rng.integers(1, 3, 3) * 0 + i64(2, 3, 1))]
CASES["CumSum"] = [case(f(4, 6), C(i64(1))), case(f(4, 6), C(i64(-2)), exclusive=1),
                   case(f(5, 4), C(np.array(0, np.int32)), reverse=1),
                   case(rng.integers(0, 2, (2, 7)), C(i64(1)), exclusive=1, reverse=1)]
CASES["EyeLike"] = [case(f(5, 6)), case(f(5, 6), k=2), case(f(6, 4), k=-3, dtype=TensorProto.INT64)]
for op in REDUCE:
    x = pos(3, 4, 5)
    CASES[op] = [case(x, C(i64(1))), case(x, C(i64(-1)), keepdims=0)]
for op in ("ArgMax", "ArgMin"):
    CASES[op] = [case(f(3, 4, 5), axis=1), case(f(3, 4, 5), axis=2, keepdims=0)]


def _tensor_type(v) -> int:
    return helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype)


def _build(op: str, row: ops.OpInfo, c: dict, arrays: list) -> onnx.ModelProto:
    """One node of `op` on `arrays` (None: an absent optional input); constants as initializers."""
    names, inputs, inits = [], [], []
    for k, (spec, a) in enumerate(zip(c["inputs"], arrays)):
        if isinstance(spec, str):
            names.append("")
            continue
        name = f"in{k}"
        names.append(name)
        if isinstance(spec, C):
            inits.append(numpy_helper.from_array(np.asarray(a), name))
        else:
            inputs.append(helper.make_tensor_value_info(name, _tensor_type(a), list(np.shape(a))))
    outs = [f"out{k}" for k in range(c["n_out"])]
    node = helper.make_node(op, names, outs, name="n0", domain=row.domain, **c["attrs"])
    graph = helper.make_graph([node], "g", inputs, [helper.make_value_info(o, onnx.TypeProto()) for o in outs],
                              initializer=inits)
    opset = c["opset"] or max(18, row.first_opset or 1)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]
                          + ([helper.make_opsetid(row.domain, 1)] if row.domain else []))
    m.ir_version = 10
    return m


def _run(model: onnx.ModelProto, arrays: list, specs: list) -> list:
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        if "NOT_IMPLEMENTED" in str(e) or "Could not find an implementation" in str(e):
            pytest.skip(f"ONNX Runtime has no CPU kernel: {str(e).splitlines()[0][:120]}")
        raise
    feeds = {f"in{k}": a for k, (s, a) in enumerate(zip(specs, arrays)) if not isinstance(s, (C, str))}
    return sess.run(None, feeds)


def _take(a, axis: int, lo: int, hi: int):
    idx = [slice(None)] * np.ndim(a)
    idx[axis] = slice(lo, hi)
    return np.asarray(a)[tuple(idx)]


def _chunk_arrays(row, graph, node, arrays, cuts, out_axis, lo, hi):
    """The inputs of one chunk [lo, hi) of the output along `out_axis`, as the rewrite makes them."""
    out = []
    for k, (a, c) in enumerate(zip(arrays, cuts)):
        if c is not None:
            axis, ratio = c
            a = _take(a, axis, int(lo * ratio), int(hi * ratio))
        elif row.shape_input == k and a is not None:
            a = np.array(a)
            rank = len(graph.shape(node.outputs[0]))
            p = out_axis - (rank - a.shape[0])
            if p >= 0:
                a[p] = hi - lo
        out.append(a)
    return out


def _apply_position(row, graph, node, model: onnx.ModelProto, axis: int, lo: int, hi: int) -> None:
    """Replace the chunk model's node by what the row's position rule emits for chunk [lo, hi)
    (`start`/`length` as the rewrite's body holds them), as rewrite._Emitter calls it."""
    from autochunk_onnx.chunkflow import Cut
    from autochunk_onnx.rewrite import PositionPatch, _Names

    proto = onnx.NodeProto()
    proto.CopyFrom(model.graph.node[0])
    body: list = []
    pp = PositionPatch(graph, node, proto, Cut(axis, Fraction(1)), "chunk_start", "chunk_len", body, _Names(model), "t")
    row.position(pp)
    del model.graph.node[:]
    model.graph.node.extend(body)
    model.graph.initializer.extend([numpy_helper.from_array(i64(lo), "chunk_start"),
                                    numpy_helper.from_array(i64(hi - lo), "chunk_len")])


RULED = sorted(op for (dom, op), row in ops.REGISTRY.items() if row.rule is not None and not dom)  # com.microsoft: test_contrib


def test_every_rule_has_a_case():
    assert sorted(CASES) == RULED


def check_rule_against_ort(domain: str, op: str, cases: list[dict], apply_position, atol: float) -> None:
    """Each axis the registry row allows: the output in two chunks (inputs sliced as the rule says,
    the position rule applied by `apply_position(row, graph, node, chunk_model, axis, lo, hi, arrays,
    case)`) joined equals the whole run in ORT. Shared by the standard rows here and the
    com.microsoft rows of test_contrib, so both are held to one check."""
    row = ops.lookup(domain, op)
    checked = 0
    for c in cases:
        arrays = [None if isinstance(s, str) else s.value if isinstance(s, C) else s for s in c["inputs"]]
        model = _build(op, row, c, arrays)
        graph = infer_graph(model)
        node = graph.nodes[0]
        whole = _run(model, arrays, c["inputs"])
        for k in range(c["n_out"]):
            for axis, n in enumerate(whole[k].shape):
                if n < 2:
                    continue
                cuts = ops.trace_node(graph, node, k, axis)
                if cuts == ops.MIX:
                    continue
                assert len(cuts) == len(node.inputs)
                unit = math.lcm(*(Fraction(x[1]).denominator for x in cuts if x is not None))  # output elements per unit
                if n % unit or n // unit < 2:
                    continue  # the chunk flow plans no loop here either
                mid = n // unit // 2 * unit
                parts = []
                for lo, hi in ((0, mid), (mid, n)):
                    sub = _chunk_arrays(row, graph, node, arrays, cuts, axis, lo, hi)
                    chunk_model = _build(op, row, c, sub)
                    if row.position is not None:
                        apply_position(row, graph, node, chunk_model, axis, lo, hi, arrays, c)
                    parts.append(_run(chunk_model, sub, c["inputs"])[k])
                joined = np.concatenate(parts, axis=axis)
                np.testing.assert_allclose(joined.astype(np.float64), whole[k].astype(np.float64), rtol=1e-5, atol=atol,
                                           equal_nan=True, err_msg=f"{op} {c['attrs']} output {k} cut on axis {axis}")
                checked += 1
    assert checked > 0, f"no case of {op} has a chunkable axis: the rule is never exercised"


@pytest.mark.parametrize("op", RULED)
def test_rule_agrees_with_onnxruntime(op):
    check_rule_against_ort("", op, CASES[op], lambda *a: _apply_position(*a[:7]), atol=1e-6)


def test_rule_exception_propagates_under_strict_and_is_a_note_otherwise(monkeypatch):
    import dataclasses

    from autochunk_onnx import notes

    def broken(g, n, k, axis):
        raise IndexError("broken rule")

    monkeypatch.setitem(ops.REGISTRY, ("", "Relu"), dataclasses.replace(ops.lookup("", "Relu"), rule=broken))
    model = _build("Relu", ops.lookup("", "Relu"), case(f(3, 4)), [f(3, 4)])
    graph = infer_graph(model)
    with pytest.raises(IndexError):
        ops.trace_node(graph, graph.nodes[0], 0, 0)
    monkeypatch.setenv("AUTOCHUNK_STRICT", "0")
    with notes.collect() as got:
        assert ops.trace_node(graph, graph.nodes[0], 0, 0) == ops.MIX
    assert any("Relu rule failed on node n0" in n.text for n in got)


def test_custom_domain_ops_have_no_standard_facts():
    node = helper.make_node("Relu", ["x"], ["y"], domain="com.example")
    assert ops.info(node) is ops.UNKNOWN
    assert ops.lookup("ai.onnx", "Relu") is ops.lookup("", "Relu")


def test_the_check_catches_a_wrong_rule(monkeypatch):
    """Not vacuous: the old Pad rule (same size = chunkable, though pads (1, -1) shift the rows)
    and a Trilu rule that ignores the diagonal fail the ORT comparison."""
    import dataclasses

    from autochunk_onnx import dimrules

    for op, wrong in (("Pad", dimrules.same_size_only), ("Trilu", dimrules.elementwise)):
        monkeypatch.setitem(ops.REGISTRY, ("", op), dataclasses.replace(ops.lookup("", op), rule=wrong, position=None))
        with pytest.raises(AssertionError, match="Not equal to tolerance"):
            test_rule_agrees_with_onnxruntime(op)


def test_position_rule_emits_the_body_node(monkeypatch, tmp_path):
    """The rewrite hands a row's position rule each chunked body node of that op, with the chunk's
    start and length: a rule that emits the node unchanged gives the same model byte for byte."""
    import dataclasses

    from autochunk_onnx import api
    from models.synthetic import attention_block

    src = tmp_path / "a.onnx"
    onnx.save_model(attention_block(), str(src))
    plain = api.optimize(str(src), str(tmp_path / "plain.onnx"), "50%", {"x": [1, 256, 64]}, verify_output=False)
    calls = []

    def emit_as_is(p):
        calls.append((p.node.op_type, p.start, p.length))
        p.body.append(p.proto)

    monkeypatch.setitem(ops.REGISTRY, ("", "Softmax"), dataclasses.replace(ops.lookup("", "Softmax"), position=emit_as_is))
    hooked = api.optimize(str(src), str(tmp_path / "hooked.onnx"), "50%", {"x": [1, 256, 64]}, verify_output=False)
    assert plain.plan.regions and calls and all(op == "Softmax" for op, _, _ in calls)
    assert (tmp_path / "plain.onnx").read_bytes() == (tmp_path / "hooked.onnx").read_bytes()


def test_the_check_catches_a_position_rule_that_ignores_the_offset(monkeypatch):
    """Not vacuous for position rules either: Trilu and Range emitted without the chunk's offset fail."""
    import dataclasses

    def as_is(p):
        p.body.append(p.proto)

    for op in ("Trilu", "Range"):
        monkeypatch.setitem(ops.REGISTRY, ("", op), dataclasses.replace(ops.lookup("", op), position=as_is))
        with pytest.raises(AssertionError, match="Not equal to tolerance"):
            test_rule_agrees_with_onnxruntime(op)
