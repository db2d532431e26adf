"""`estimate` on models with Loops and tensor sequences (chunked ones, ours and hand-built), and the
order ORT runs nodes in. Each figure is checked against ORT itself: the peak its allocator hands
out (profiler, exact arena: bench/estimate_accuracy.arena_peak) and, where tensors are large enough
for it, the RSS high-water mark of measure.py."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from autochunk_onnx import api
from autochunk_onnx.inputs import make_inputs
from autochunk_onnx.measure import measure
from autochunk_onnx.ort_order import ort_order
from bench.estimate_accuracy import arena_peak
from models import synthetic

MiB = 2**20


def _evo(n):
    return {"msa": [1, 4, n, 16], "pair": [1, n, n, 8], "msa_mask": [1, 4, n], "pair_mask": [1, n, n]}


def _toks(n):
    return {"input_ids": [1, n], "attention_mask": [1, n]}


# every family: tiny real exports and synthetic graphs, at one budget each (20% or 50%)
CHUNKED = {
    "gpt2_tiny": ("models/tiny/gpt2_tiny.onnx", _toks(1024), "20%"),
    "bert_tiny": ("models/tiny/bert_tiny.onnx", _toks(1024), "50%"),
    "vit_tiny": ("models/tiny/vit_tiny.onnx", {"pixel_values": [1, 3, 512, 512]}, "20%"),
    "unet_tiny": ("models/tiny/unet_tiny.onnx",
                  {"sample": [1, 4, 32, 32], "timestep": [1], "encoder_hidden_states": [1, 8, 32]}, "50%"),
    "evoformer_tiny": ("models/tiny/evoformer_tiny.onnx", _evo(96), "20%"),
    "synthetic_transformer": (synthetic.transformer, {"input_ids": [1, 1024]}, "50%"),
    "synthetic_attention": (synthetic.attention_block, {"x": [1, 2048, 64]}, "20%"),
    "synthetic_evoformer": (synthetic.evoformer_like, {"msa": [1, 4, 128, 16], "pair": [1, 128, 128, 16]}, "50%"),
    "synthetic_unet": (synthetic.unet_like, {"sample": [1, 32, 32, 32]}, "20%"),
    "synthetic_attention_opset23": (synthetic.attention_opset23, {"x": [1, 2048, 64]}, "50%"),
}


def _path(spec, tmp_path) -> str:
    if isinstance(spec, str):
        return spec
    p = tmp_path / "m.onnx"
    onnx.save(spec(), str(p))
    return str(p)


@pytest.mark.parametrize("name", list(CHUNKED))
def test_estimate_of_a_chunked_model_matches_ort(name, tmp_path):
    """The written model's estimate (Loops, sequences and all) against ORT's allocator: the body's
    peak at the chunk's shapes, the chunks collected so far, the joined output."""
    spec, shapes, budget = CHUNKED[name]
    src = _path(spec, tmp_path)
    out = tmp_path / "c.onnx"
    res = api.optimize(src, out, budget, shapes, verify_output=False, best_effort=True)
    assert res.plan.loops, "nothing was chunked: the test would check nothing"
    m, est = api.estimate(str(out), shapes)
    got = arena_peak(str(out), make_inputs(m.original, m.shapes))
    print(f"{name} {budget}: plan {res.plan.final.peak_bytes} estimate {est.peak_bytes} ORT {got} "
          f"ratio {est.peak_bytes / got:.4f}")
    assert est.peak_bytes == pytest.approx(got, rel=0.06)  # measured: within 0.1% but bert (-1.9%..-4.8%)


def test_chunked_estimate_against_rss(tmp_path):
    """The same through measure.py's RSS method, on a model whose chunks are far above 64 KiB."""
    src = _path(synthetic.transformer, tmp_path)
    out = tmp_path / "c.onnx"
    shapes = {"input_ids": [1, 1024]}
    api.optimize(src, out, "20%", shapes, verify_output=False)
    m, est = api.estimate(str(out), shapes)
    got = measure(str(out), make_inputs(m.original, m.shapes), repeats=1).peak_bytes
    print(f"estimate {est.peak_bytes} RSS {got} ratio {est.peak_bytes / got:.3f}")
    assert 0.95 * got <= est.peak_bytes <= 1.10 * got  # an under-estimate is the worse error


def _foreign_loop(n: int, trips: int) -> onnx.ModelProto:
    """A Loop nobody chunked for us: a scan output, a carried tensor and a sequence accumulator,
    each iteration building an [n, n] intermediate from the outer x."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x", "xt"], ["s"]),  # [n, n] from the outer scope
         helper.make_node("Softmax", ["s"], ["p"], axis=-1),
         helper.make_node("MatMul", ["p", "x"], ["y"]),  # [n, d]
         helper.make_node("Add", ["acc_in", "y"], ["acc_out"]),
         helper.make_node("SequenceInsert", ["seq_in", "y"], ["seq_out"]),
         helper.make_node("Identity", ["y"], ["scan"]),
         helper.make_node("Identity", ["cond"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, ["n", 64]),
         helper.make_tensor_sequence_value_info("seq_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, ["n", 64]),
         helper.make_tensor_sequence_value_info("seq_out", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("scan", TensorProto.FLOAT, ["n", 64])])
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
        helper.make_node("Constant", [], ["trips"], value=helper.make_tensor("t", TensorProto.INT64, [], [trips])),
        helper.make_node("SequenceEmpty", [], ["seq0"], dtype=TensorProto.FLOAT),
        helper.make_node("Loop", ["trips", "", "x", "seq0"], ["acc", "seq", "scans"], body=body),
        helper.make_node("ConcatFromSequence", ["seq"], ["joined"], axis=0),
        helper.make_node("ReduceSum", ["scans"], ["r1"], keepdims=0),
        helper.make_node("ReduceSum", ["joined"], ["r2"], keepdims=0),
        helper.make_node("ReduceSum", ["acc"], ["r3"], keepdims=0),
        helper.make_node("Sum", ["r1", "r2", "r3"], ["out"]),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    return m


def test_foreign_loop_with_scan_outputs_and_sequences(tmp_path):
    p = tmp_path / "loop.onnx"
    onnx.save(_foreign_loop(1024, 5), str(p))
    m, est = api.estimate(str(p), {"x": [1024, 64]})
    got = arena_peak(str(p), make_inputs(m.original, m.shapes))
    print(f"estimate {est.peak_bytes} ORT {got} ratio {est.peak_bytes / got:.4f}")
    assert est.peak_bytes >= 4 * MiB  # the body's [1024, 1024] scores are seen
    # measured +11%: the last carried value and scan pieces are counted as copies (an over-estimate
    # is the safer error); never under
    assert got <= est.peak_bytes <= 1.15 * got


# --- ORT's node order ---------------------------------------------------------------------------
_ORDER_CHILD = r"""
import json, sys
import numpy as np, onnxruntime as ort
so = ort.SessionOptions()
so.optimized_model_filepath = sys.argv[2]
so.log_severity_level = 3
ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
"""


@pytest.mark.parametrize("path,shapes", [
    ("models/tiny/bert_tiny.onnx", _toks(64)),
    ("models/tiny/evoformer_tiny.onnx", _evo(16)),
    ("models/examples/gpt_small.onnx", {"input_ids": [1, 64]}),
])
def test_ort_order_is_the_order_ort_runs(path, shapes, tmp_path):
    """ORT saves its optimized graph in the order it runs it (checked against the profiler's node
    events): our replay of its reverse DFS gives the same order for every node that survives."""
    opt = tmp_path / "opt.onnx"
    r = subprocess.run([sys.executable, "-c", _ORDER_CHILD, path, str(opt)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ran = [n.name for n in onnx.load(str(opt), load_external_data=False).graph.node]
    m = api.load(path, shapes)
    names = [n.name for n in m.graph.nodes]
    ours = [names[k] for k in ort_order(m.graph) if names[k] in set(ran)]
    theirs = [n for n in ran if n in set(ours)]
    assert len(ours) > 0.3 * len(names)  # the rest ORT folds away (shape computations)
    assert ours == theirs
    assert ours != [n for n in names if n in set(ours)]  # and it is not the model's own order
