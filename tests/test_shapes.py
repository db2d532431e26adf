"""Shape inference (shapes.py): both engines on a weightless skeleton, onnx's concrete shapes
winning over ORT's, and shape computations evaluated where both engines leave holes."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from autochunk_onnx import api
from autochunk_onnx.loader import pin_input_shapes
from autochunk_onnx.shapes import infer_shapes, skeleton


def _model(nodes, inits, out_dims, opset=18):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, ["b", "s", 96])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, out_dims)], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _i64(name, v):
    return numpy_helper.from_array(np.array(v, np.int64), name)


def test_einsum_with_ellipsis_takes_onnx_shape():
    """ORT 1.31's symbolic inference gives [96, 12, 12] here; the right answer is [3, 109, 12]."""
    m = _model([helper.make_node("Einsum", ["x", "w"], ["y"], equation="...x,xy->...y")],
               [numpy_helper.from_array(np.ones((96, 12), np.float32), "w")], ["b", "s", 12])
    pin_input_shapes(m, {"x": [3, 109, 96]})
    assert infer_shapes(m)["y"].shape == (3, 109, 12)


def test_range_resolved_when_ort_inference_stops_early(tmp_path):
    """ORT's inference stops at a MatMul after ReduceMax-18 (axes as an input) and onnx's cannot
    read Range's limit from Shape -> Gather: the evaluated shape computation fills the hole."""
    nodes = [
        helper.make_node("ReduceMax", ["x", "axes"], ["rmax"], keepdims=1),
        helper.make_node("MatMul", ["rmax", "w1"], ["mm"]),  # [b, s, 96]
        helper.make_node("Shape", ["x"], ["shp"]),
        helper.make_node("Gather", ["shp", "one"], ["seq"], axis=0),
        helper.make_node("Range", ["zero", "seq", "one"], ["pos"]),  # [s]
        helper.make_node("Cast", ["pos"], ["posf"], to=TP.FLOAT),
        helper.make_node("Unsqueeze", ["posf", "one"], ["pos2"]),  # [s, 1]
        helper.make_node("Add", ["mm", "pos2"], ["y"]),  # [b, s, 96]
    ]
    inits = [_i64("axes", [-1]), numpy_helper.from_array(np.ones((1, 96), np.float32), "w1"), _i64("one", 1),
             _i64("zero", 0)]
    m = _model(nodes, inits, ["b", "s", 96])
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    loaded = api.load(path, {"x": [3, 109, 96]})  # raised "stays [None]" before
    assert loaded.graph.shape("pos") == (109,)
    assert loaded.graph.shape("y") == (3, 109, 96)
    # the folded values stay an inference aid: the graph planned on is the model's own
    assert [n.op_type for n in loaded.graph.nodes] == [n.op_type for n in m.graph.node]


def test_skeleton_declares_weights_as_inputs():
    big = numpy_helper.from_array(np.zeros((300, 300), np.float32), "big")
    ext = onnx.TensorProto()
    ext.name, ext.data_type = "ext", TP.FLOAT
    ext.dims.extend([4, 96])
    for k, v in (("location", "w.data"), ("offset", "0"), ("length", str(4 * 96 * 4))):
        e = ext.external_data.add()
        e.key, e.value = k, v
    ext.data_location = TP.EXTERNAL
    small = _i64("small", [0, 0, 96])
    nodes = [helper.make_node("Reshape", ["x", "small"], ["r"]), helper.make_node("Identity", ["big"], ["y"]),
             helper.make_node("Identity", ["ext"], ["y2"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, ["b", "s", 96])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, None)], initializer=[big, ext, small])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    sk, stripped = skeleton(m)
    assert sorted(stripped) == ["big", "ext"]
    assert [t.name for t in sk.graph.initializer] == ["small"]
    dims = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in sk.graph.input}
    assert dims["big"] == [300, 300] and dims["ext"] == [4, 96]
    assert sk.ByteSize() < 2000 and len(m.graph.initializer) == 3  # the model itself is untouched
