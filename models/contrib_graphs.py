"""One-node graphs of the com.microsoft ops ONNX Runtime's fusers and model builders emit (issue 16).

Used to measure each op's memory one node at a time (`python -m bench.contrib --ops`) and by
tests/test_contrib.py (estimate and chunk-flow rules against ONNX Runtime). Random weights, seeded.
Each builder takes the sequence length L and returns (model, input shapes); D = 256, 4 heads
(head size 64) unless said.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

MS = "com.microsoft"


def _w(name: str, shape, rng, dtype=np.float32, scale=0.1) -> onnx.TensorProto:
    if np.issubdtype(dtype, np.integer):
        return numpy_helper.from_array(rng.integers(0, 16, shape).astype(dtype), name)
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(dtype), name)


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    g = h.make_graph(nodes, "g", inputs, outputs, inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid(MS, 1)])
    m.ir_version = 9
    return m


def _vi(name, shape, dtype=T.FLOAT):
    return h.make_tensor_value_info(name, dtype, shape)


def attention(L: int, D: int = 256, H: int = 4, mask: bool = False):
    rng = np.random.default_rng(0)
    ins = ["x", "W", "B"] + (["mask"] if mask else [])
    n = h.make_node("Attention", ins, ["y"], domain=MS, num_heads=H, name="attn")
    inputs = [_vi("x", [1, "L", D])] + ([_vi("mask", [1, "L"], T.INT32)] if mask else [])
    m = _model([n], inputs, [_vi("y", [1, "L", D])], [_w("W", [D, 3 * D], rng), _w("B", [3 * D], rng)])
    return m, {"x": [1, L, D], **({"mask": [1, L]} if mask else {})}


def multi_head_attention(L: int, D: int = 256, H: int = 4, bias: bool = False, mask: bool = False):
    """Separate Q, K, V [1, L, D]; optional packed bias [3D] and key padding mask [1, L] (int32)."""
    rng = np.random.default_rng(1)
    ins = ["q", "k", "v"] + (["bias"] if bias else [""] if mask else []) + (["mask"] if mask else [])
    n = h.make_node("MultiHeadAttention", ins, ["y"], domain=MS, num_heads=H, name="mha")
    inputs = [_vi(x, [1, "L", D]) for x in "qkv"] + ([_vi("mask", [1, "L"], T.INT32)] if mask else [])
    m = _model([n], inputs, [_vi("y", [1, "L", D])], [_w("bias", [3 * D], rng)] if bias else [])
    return m, {**{x: [1, L, D] for x in "qkv"}, **({"mask": [1, L]} if mask else {})}


def group_query_attention(L: int, H: int = 4, KV: int = 2, dh: int = 64):
    """A prefill: no past, seqlens_k = L - 1, total_sequence_length = L (given as inputs)."""
    n = h.make_node("GroupQueryAttention", ["q", "k", "v", "", "", "seqlens_k", "total_len"],
                    ["y", "present_key", "present_value"], domain=MS, num_heads=H, kv_num_heads=KV, name="gqa")
    inputs = [_vi("q", [1, "L", H * dh]), _vi("k", [1, "L", KV * dh]), _vi("v", [1, "L", KV * dh]),
              _vi("seqlens_k", [1], T.INT32), _vi("total_len", [], T.INT32)]
    outs = [_vi("y", [1, "L", H * dh]), _vi("present_key", [1, KV, "L", dh]), _vi("present_value", [1, KV, "L", dh])]
    m = _model([n], inputs, outs, [])
    return m, {"q": [1, L, H * dh], "k": [1, L, KV * dh], "v": [1, L, KV * dh], "seqlens_k": [1], "total_len": []}


def rotary_embedding(L: int, D: int = 256, H: int = 4, max_pos: int = 8192):
    rng = np.random.default_rng(2)
    dh = D // H
    n = h.make_node("RotaryEmbedding", ["x", "pos", "cos", "sin"], ["y"], domain=MS, num_heads=H, name="rot")
    m = _model([n], [_vi("x", [1, "L", D]), _vi("pos", [1, "L"], T.INT64)], [_vi("y", [1, "L", D])],
               [_w("cos", [max_pos, dh // 2], rng), _w("sin", [max_pos, dh // 2], rng)])
    return m, {"x": [1, L, D], "pos": [1, L]}


def skip_layer_norm(L: int, D: int = 256, simplified: bool = False):
    rng = np.random.default_rng(3)
    op = "SkipSimplifiedLayerNormalization" if simplified else "SkipLayerNormalization"
    ins = ["x", "skip", "gamma"] + ([] if simplified else ["beta", "bias"])
    inits = [_w("gamma", [D], rng)] + ([] if simplified else [_w("beta", [D], rng), _w("bias", [D], rng)])
    n = h.make_node(op, ins, ["y"], domain=MS, epsilon=1e-5, name="sln")
    m = _model([n], [_vi("x", [1, "L", D]), _vi("skip", [1, "L", D])], [_vi("y", [1, "L", D])], inits)
    return m, {"x": [1, L, D], "skip": [1, L, D]}


def simplified_layer_norm(L: int, D: int = 256):
    rng = np.random.default_rng(4)
    n = h.make_node("SimplifiedLayerNormalization", ["x", "gamma"], ["y"], axis=-1, epsilon=1e-5, name="rms")
    m = _model([n], [_vi("x", [1, "L", D])], [_vi("y", [1, "L", D])], [_w("gamma", [D], rng)])
    return m, {"x": [1, L, D]}


def gelu_op(op: str, F: int = 1024, bias: bool = True):
    def build(L: int):
        rng = np.random.default_rng(5)
        if op == "QuickGelu" or not bias:
            n = h.make_node(op, ["x"], ["y"], domain=MS, name="g", **({"alpha": 1.702} if op == "QuickGelu" else {}))
            inits = []
        else:
            n = h.make_node(op, ["x", "bias"], ["y"], domain=MS, name="g")
            inits = [_w("bias", [F], rng)]
        return _model([n], [_vi("x", [1, "L", F])], [_vi("y", [1, "L", F])], inits), {"x": [1, L, F]}
    return build


def embed_layer_norm(L: int, D: int = 256, vocab: int = 8192, max_pos: int = 8192):
    rng = np.random.default_rng(6)
    n = h.make_node("EmbedLayerNormalization", ["ids", "seg", "wemb", "pemb", "semb", "gamma", "beta", "mask"],
                    ["y", "mask_index"], domain=MS, epsilon=1e-12, name="emb")
    inits = [_w("wemb", [vocab, D], rng), _w("pemb", [max_pos, D], rng), _w("semb", [2, D], rng),
             _w("gamma", [D], rng), _w("beta", [D], rng)]
    m = _model([n], [_vi("ids", [1, "L"], T.INT32), _vi("seg", [1, "L"], T.INT32), _vi("mask", [1, "L"], T.INT32)],
               [_vi("y", [1, "L", D]), _vi("mask_index", [1], T.INT32)], inits)
    return m, {"ids": [1, L], "seg": [1, L], "mask": [1, L]}


def matmul_nbits(L: int, K: int = 256, N: int = 1024, bits: int = 4, block: int = 32, accuracy_level: int = 0):
    rng = np.random.default_rng(7)
    blocks = K // block
    wq = rng.integers(0, 256, (N, blocks, block * bits // 8)).astype(np.uint8)
    scales = (rng.random(N * blocks).astype(np.float32) * 0.02 + 0.01)
    n = h.make_node("MatMulNBits", ["a", "wq", "scales"], ["y"], domain=MS, K=K, N=N, bits=bits, block_size=block,
                    name="mm4", **({"accuracy_level": accuracy_level} if accuracy_level else {}))
    m = _model([n], [_vi("a", [1, "L", K])], [_vi("y", [1, "L", N])],
               [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(scales, "scales")])
    return m, {"a": [1, L, K]}


# (name, builder(L) -> (model, shapes))
CASES = [
    ("Attention", attention),
    ("Attention_mask", lambda L: attention(L, mask=True)),
    ("MultiHeadAttention", multi_head_attention),
    ("MultiHeadAttention_bias_mask", lambda L: multi_head_attention(L, bias=True, mask=True)),
    ("MultiHeadAttention_bias", lambda L: multi_head_attention(L, bias=True)),
    ("GroupQueryAttention", group_query_attention),
    ("RotaryEmbedding", rotary_embedding),
    ("SkipLayerNormalization", skip_layer_norm),
    ("SkipSimplifiedLayerNormalization", lambda L: skip_layer_norm(L, simplified=True)),
    ("SimplifiedLayerNormalization", simplified_layer_norm),
    ("BiasGelu", gelu_op("BiasGelu")),
    ("FastGelu", gelu_op("FastGelu")),
    ("FastGelu_nobias", gelu_op("FastGelu", bias=False)),
    ("QuickGelu", gelu_op("QuickGelu")),
    ("EmbedLayerNormalization", embed_layer_norm),
    ("MatMulNBits", matmul_nbits),
    ("MatMulNBits_acc4", lambda L: matmul_nbits(L, accuracy_level=4)),  # what the genai builder writes
]


def feeds(model: onnx.ModelProto, shapes: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid inputs: ids within the tables, positions 0..L-1, a full mask, GQA's prefill lengths."""
    rng = np.random.default_rng(seed)
    out = {}
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    for name, shape in shapes.items():
        if name == "seqlens_k":
            out[name] = np.array([shapes["q"][1] - 1], np.int32)
        elif name == "total_len":
            out[name] = np.array(shapes["q"][1], np.int32)
        elif name == "pos":
            out[name] = np.tile(np.arange(shape[1], dtype=np.int64), (shape[0], 1))
        elif name == "ids":
            out[name] = rng.integers(0, 1000, shape).astype(np.int32)
        elif name == "seg":
            out[name] = rng.integers(0, 2, shape).astype(np.int32)
        elif name == "mask":
            out[name] = np.ones(shape, np.int32)
        elif types[name] == T.FLOAT:
            out[name] = rng.standard_normal(shape).astype(np.float32)
        else:
            raise ValueError(name)
    return out
