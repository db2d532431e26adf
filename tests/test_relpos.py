"""relpos: a relative-position chain (aranges subtracted, elementwise ops, Gather from a table) is
computed once on its 2L-1 distinct offsets, with outputs identical to the original's."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from autochunk_onnx import api, relpos
from autochunk_onnx.inputs import make_inputs
from models import posgraphs


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_t5_bias_chain_is_computed_per_offset_with_identical_outputs():
    model = posgraphs.t5_encoder()
    m = api.load(model, {"x": [1, 96, 64]})
    res = relpos.apply(m.graph, m.original)
    assert res is not None
    new, count = res
    assert count == 1
    onnx.checker.check_model(new, full_check=True)
    # every op of the bucket chain now reads a 1-D tensor (the offsets), none a [L, L] one
    chain_ops = {"Abs", "Log", "Less", "Min", "Where", "Greater"}
    g = api.load(new, {"x": [1, 96, 64]}).graph
    for n in g.nodes:
        if n.op_type in chain_ops:
            assert g.shape(n.outputs[0]) == (2 * 96 - 1,), (n.name, g.shape(n.outputs[0]))
    # the same outputs, bit for bit, at the planned length and at others (run-time aranges)
    for length in (96, 7, 300):
        feeds = make_inputs(model, {"x": (1, length, 64)}, seed=length)
        for a, b in zip(_run(model, feeds), _run(new, feeds)):
            np.testing.assert_array_equal(a, b)


def _sub_model(delta: int = 1, other: bool = False) -> onnx.ModelProto:
    """d = arange(0, L, delta)[None, :] - arange(0, L, delta)[:, None] -> Abs -> Cast(float)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["sh"]),
        helper.make_node("Gather", ["sh", "zero"], ["n"], axis=0),
        helper.make_node("Range", ["zero", "n", "delta"], ["r"]),
        helper.make_node("Unsqueeze", ["r", "ax0"], ["c"]),
        helper.make_node("Unsqueeze", ["r" if not other else "xi", "ax1"], ["rw"]),
        helper.make_node("Sub", ["c", "rw"], ["d"]),
        helper.make_node("Abs", ["d"], ["a"]),
        helper.make_node("Cast", ["a"], ["y"], to=TensorProto.FLOAT),
    ]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array(delta, np.int64), "delta"),
             numpy_helper.from_array(np.array([0], np.int64), "ax0"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1")]
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["L"])]
    if other:
        ins.append(helper.make_tensor_value_info("xi", TensorProto.INT64, ["L"]))
    g = helper.make_graph(nodes, "sub", ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    m.ir_version = 10
    return m


def test_plain_chain_output_is_gathered_back_whole():
    model = _sub_model()
    new, _ = relpos.apply(api.load(model, {"x": [50]}).graph, model)
    x = np.zeros(50, np.float32)
    np.testing.assert_array_equal(_run(model, {"x": x})[0], _run(new, {"x": x})[0])


def test_not_aranges_or_other_steps_are_left_alone():
    """A Sub of a run-time tensor, or of aranges with another step, is not a relative position."""
    model = _sub_model(other=True)
    assert relpos.apply(api.load(model, {"x": [50], "xi": [50]}).graph, model) is None
    model = _sub_model(delta=2)
    assert relpos.apply(api.load(model, {"x": [50]}).graph, model) is None


def test_a_loop_rebuilding_the_peak_nodes_output_covers_the_peak():
    """T5 sdpa TorchScript export: the masked bias Where(mask, bias, min) [1, H, L, L] is built once in
    layer 0 and read by every layer, and the plan peaks at that Where. A query-row loop of layer 0
    that rebuilds its rows of the bias (the Where among its clones) acts on that peak: once every
    layer's loop does, the Where is gone. select must rank it as covering the peak (it ranked such
    loops last, and the bench export stopped at 0.73 of the original)."""
    from autochunk_onnx.peak import fusions
    from autochunk_onnx.schedule import Readers, estimate_plan
    from autochunk_onnx.search import candidates
    from autochunk_onnx.select import QuickCost

    shapes = {"input_ids": [1, 512], "attention_mask": [1, 512]}
    m = api.load("models/tiny/t5_tiny_sdpa_ts.onnx", shapes)
    new, _ = relpos.apply(m.graph, m.original)
    g = api.load(new, shapes).graph
    fused = fusions(g)
    est, order = estimate_plan(g, [], fused)
    assert g.nodes[order[est.peak_index]].op_type == "Where"
    quick = QuickCost(g, est, order, fused, Readers(g, []))
    rebuilding = [r for r in candidates(g, est, set(), None) if order[est.peak_index] in r.clones]
    assert rebuilding
    assert all(quick.loop_fn(r)[2] for r in rebuilding)
