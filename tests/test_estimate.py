"""The estimate replays ONNX Runtime's CPU allocation planner: each rule checked against ORT itself.

`bench.estimate_accuracy.arena_peak` runs a model in a child process with ORT's profiler and an arena that allocates exactly
what is asked (no rounding, no free-list slack): the peak of its allocator statistics is what ORT's
planner and kernels really hold, with none of the malloc and RSS noise of `measure.py`. Single ops
must agree to the byte (up to the arena's 256-byte rounding), whole models to a few percent. The kernel tables (Einsum, Where) are also
checked against the figures measured when they were written (ORT 1.31.1 CPU).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from autochunk_onnx import api
from bench.estimate_accuracy import arena_peak  # the one exact-arena measurement (also the harness's)
from autochunk_onnx.peak import estimate_graph
from autochunk_onnx.kernels import einsum_scratch
from autochunk_onnx.inputs import make_inputs
from models import synthetic

MiB = 2**20

def _compare(path, shapes, tmp_path) -> tuple[int, int]:
    m, est = api.estimate(str(path), shapes)
    got = arena_peak(str(path), make_inputs(m.original, m.shapes))
    return est.peak_bytes, got


def _save(model: onnx.ModelProto, tmp_path, name="m.onnx") -> str:
    p = tmp_path / name
    onnx.save(model, str(p))
    return str(p)


def _model(nodes, inputs, outputs, inits=(), opset=20) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def _vi(name, dims, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, dims)


# --- kernel tables ---------------------------------------------------------------------------------
# equation, input shapes, scratch measured on ORT 1.31.1 CPU (MiB, profiler peak minus in-use before)
EINSUM_MEASURED = [
    ("...qc,...kc->...qk", [(1, 96, 2, 96, 4), (1, 96, 2, 96, 4)], 14.34),
    ("...qk,...kc->...qc", [(1, 96, 2, 96, 96), (1, 96, 2, 96, 4)], 7.59),
    ("...bac,...dae->...bdce", [(1, 96, 4, 4), (1, 96, 4, 4)], 1.14),
    ("...ij,...jk->...ik", [(1, 8, 96, 96), (1, 8, 96, 96)], 1.12),
    ("baihc,bajhc->bahij", [(1, 64, 64, 2, 8), (1, 64, 64, 2, 8)], 4.75),
    ("bahij,bajhc->baihc", [(1, 64, 2, 64, 64), (1, 64, 64, 2, 8)], 3.00),
    ("bsic,bsjd->bijcd", [(1, 4, 64, 8), (1, 4, 64, 8)], 2.02),
    ("bikc,bjkc->bijc", [(1, 64, 64, 8), (1, 64, 64, 8)], 0.62),
    ("bhqd,bhkd->bhqk", [(1, 4, 256, 16), (1, 4, 256, 16)], 2.19),
    ("bhqk,bhkd->bhqd", [(1, 4, 256, 256), (1, 4, 256, 16)], 1.19),
    ("bqhd,bkhd->bhqk", [(1, 256, 4, 16), (1, 256, 4, 16)], 2.19),
    ("ij,jk", [(512, 64), (64, 512)], 1.12),
]


@pytest.mark.parametrize("eq,shapes,mib", EINSUM_MEASURED)
def test_einsum_scratch_matches_measurement(eq, shapes, mib):
    assert einsum_scratch(eq, shapes, 4) / MiB == pytest.approx(mib, abs=0.006)


def test_einsum_and_where_scratch_against_ort(tmp_path):
    """One Einsum (openfold's triangle attention form) and one broadcast Where, run in ORT."""
    n = 64
    nodes = [helper.make_node("Neg", ["a"], ["na"]), helper.make_node("Neg", ["b"], ["nb"]),
             helper.make_node("Einsum", ["na", "nb"], ["e"], equation="...qc,...kc->...qk"),
             helper.make_node("Where", ["c", "e", "zero"], ["w"]),
             helper.make_node("ReduceSum", ["w"], ["y"], keepdims=0)]
    shape = ["B", "N", 2, "N", 4]
    model = _model(nodes, [_vi("a", shape), _vi("b", shape), _vi("c", ["B", "N", 1, 1, "N"], TensorProto.BOOL)],
                   [_vi("y", [])], [onnx.numpy_helper.from_array(np.array(0, np.float32), "zero")])
    path = _save(model, tmp_path)
    shapes = {"a": [1, n, 2, n, 4], "b": [1, n, 2, n, 4], "c": [1, n, 1, 1, n]}
    est, got = _compare(path, shapes, tmp_path)
    assert est == pytest.approx(got, abs=4096)


# --- planner rules -----------------------------------------------------------------------------------
def test_inplace_only_where_ort_can_name_the_shape(tmp_path):
    """Softmax writes into its input when ORT can prove the shapes equal, not after a Reshape to -1."""
    def attention(reshape_unnamed: bool):
        nodes = [helper.make_node("Neg", ["x"], ["q"])]
        q = "q"
        if reshape_unnamed:  # [b, c, h, w] -> [b, c, h*w]: ORT cannot name h*w
            nodes.append(helper.make_node("Reshape", ["q", "shape"], ["q2"]))
            q = "q2"
        nodes += [helper.make_node("Transpose", [q], ["qt"], perm=[0, 2, 1]),
                  helper.make_node("MatMul", ["qt", q], ["s"]),
                  helper.make_node("Softmax", ["s"], ["p"], axis=-1),
                  helper.make_node("ReduceSum", ["p"], ["y"], keepdims=0)]
        inits = [onnx.numpy_helper.from_array(np.array([0, 0, -1], np.int64), "shape")]
        dims = ["b", 8, "h", "w"] if reshape_unnamed else ["b", 8, "n"]
        return _model(nodes, [_vi("x", dims)], [_vi("y", [])], inits if reshape_unnamed else [])
    named, got_named = _compare(_save(attention(False), tmp_path, "a.onnx"), {"x": [1, 8, 1024]}, tmp_path)
    unnamed, got_unnamed = _compare(_save(attention(True), tmp_path, "b.onnx"), {"x": [1, 8, 32, 32]}, tmp_path)
    assert named == pytest.approx(got_named, abs=4096) and unnamed == pytest.approx(got_unnamed, abs=4096)
    assert named < 5 * MiB <= 8 * MiB <= unnamed  # one [1024, 1024] score buffer, or two


def test_dead_buffer_is_held_until_a_later_tensor_reuses_it(tmp_path):
    """`a` dies early, but ORT keeps its buffer for `v` (same shape): it counts while `t` is live."""
    nodes = [helper.make_node("Neg", ["x"], ["a"]), helper.make_node("ReduceSum", ["a"], ["ra"], keepdims=0),
             helper.make_node("Neg", ["y"], ["t"]), helper.make_node("ReduceSum", ["t"], ["rt"], keepdims=0),
             helper.make_node("Neg", ["z"], ["v"]), helper.make_node("ReduceSum", ["v"], ["rv"], keepdims=0),
             helper.make_node("Sum", ["ra", "rt", "rv"], ["out"])]
    model = _model(nodes, [_vi("x", ["n", "m"]), _vi("y", ["n", "k"]), _vi("z", ["n", "m"])], [_vi("out", [])])
    path = _save(model, tmp_path)
    est, got = _compare(path, {"x": [1024, 1024], "y": [1024, 512], "z": [1024, 1024]}, tmp_path)
    assert est == pytest.approx(got, abs=4096)  # the arena rounds each scalar up to 256 bytes
    assert est == 4 * MiB + 2 * MiB + 2 * 4  # a's buffer (held) + t, plus two scalars


# --- whole models ------------------------------------------------------------------------------------
def _evo(n):
    return {"msa": [1, 4, n, 16], "pair": [1, n, n, 8], "msa_mask": [1, 4, n], "pair_mask": [1, n, n]}


WHOLE = {
    "gpt2_tiny": ("models/tiny/gpt2_tiny.onnx", {"input_ids": [1, 384], "attention_mask": [1, 384]}),
    "bert_tiny": ("models/tiny/bert_tiny.onnx", {"input_ids": [1, 384], "attention_mask": [1, 384]}),
    "gpt2_tiny_opset23": ("models/tiny/gpt2_tiny_opset23.onnx", {"input_ids": [1, 384], "attention_mask": [1, 384]}),
    "evoformer_tiny": ("models/tiny/evoformer_tiny.onnx", _evo(48)),
    "synthetic_attention": (synthetic.attention_block, {"x": [1, 512, 64]}),
    "synthetic_mlp": (synthetic.mlp_block, {"x": [1, 1024, 64]}),
    "synthetic_unet": (synthetic.unet_like, {"sample": [1, 32, 24, 16]}),
    "synthetic_attention_opset23": (synthetic.attention_opset23, {"x": [1, 512, 64]}),
}


@pytest.mark.parametrize("name", list(WHOLE))
def test_whole_model_matches_ort_allocator(name, tmp_path):
    spec, shapes = WHOLE[name]
    path = spec if isinstance(spec, str) else _save(spec(), tmp_path)
    est, got = _compare(path, shapes, tmp_path)
    print(f"{name}: estimate {est} ORT {got} ratio {est / got:.4f}")
    # The replay follows ORT's own node order (ort_order): within 0.1% on each (graph order: up to
    # +2.8%, as ORT computes V after the softmax).
    assert est == pytest.approx(got, rel=0.01)


def test_inputs_are_not_counted_and_estimate_is_cached(tmp_path):
    path = _save(synthetic.mlp_block(), tmp_path)
    m = api.load(path, {"x": [1, 4096, 64]})
    a = estimate_graph(m.graph)
    b = estimate_graph(m.graph)
    assert a.peak_bytes == b.peak_bytes
    assert a.input_bytes == 4096 * 64 * 4
    # LayerNorm out (1 MiB) held for reuse, MatMul out + BiasGelu out + its temporary (4 MiB each)
    assert a.peak_bytes == 13 * MiB


def test_chunked_plan_estimate_matches_measured(tmp_path):
    """Inside a chunk loop the rewriter names every chunk dim: Softmax runs in place there."""
    src = _save(synthetic.unet_like(), tmp_path)
    res = api.optimize(src, tmp_path / "c.onnx", "25%", {"sample": [1, 32, 48, 48]})
    ratio = res.plan.final.peak_bytes / res.verify.chunked.peak_bytes
    print(f"plan estimate {res.plan.final.peak_bytes} measured {res.verify.chunked.peak_bytes} ratio {ratio:.3f}")
    assert 0.85 <= ratio <= 1.15
