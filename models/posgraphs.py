"""Hand-built decoders/encoders whose masks and biases are built in the graph, as exporters emit them.

Used by tests/test_posrules.py and for before/after measurements of position-aware chunking:

* ``gpt_trilu``: causal mask ``Shape -> Gather -> Unsqueeze -> Concat -> ConstantOfShape([L, L])
  -> Trilu(k=1) -> Cast(bool) -> Where`` (transformers' in-graph causal mask);
* ``gpt_range``: causal mask from two aranges (``Range -> Unsqueeze -> Less``), see
  ``models.synthetic.transformer``;
* ``t5_encoder``: relative-position buckets (aranges subtracted, Abs/Log/Min/Where, Gather from a
  [buckets, H] table) giving a [1, H, L, L] bias computed once and added in every layer;
* ``baddbmm_attention``: diffusers' classic attention, scores = Expand(0, [B*H, L, L]) * beta +
  alpha * Q K^T.

Outputs are the last hidden states ([B, L, d]): no vocabulary head that would set the floor.
CLI: ``python -m models.posgraphs NAME --out FILE.onnx [--layers N]``.
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto

from .synthetic import _Graph, _merge_heads, _qkv_heads, _vi


def _attention(g: _Graph, x: str, d: int, heads: int, scope: str, *, mask: Optional[str] = None,
               bias: Optional[str] = None) -> str:
    q4, k4, v4 = _qkv_heads(g, x, d, heads, scope)
    kt = g.op("Transpose", [k4], scope=scope, perm=[0, 1, 3, 2])
    s = g.op("MatMul", [q4, kt], scope=scope)
    s = g.op("Mul", [s, g.f(1.0 / math.sqrt(d // heads))], scope=scope)
    if bias is not None:
        s = g.op("Add", [s, bias], scope=scope)
    if mask is not None:
        s = g.op("Where", [mask, s, g.f(np.finfo(np.float32).min)], scope=scope)
    p = g.op("Softmax", [s], scope=scope, axis=-1)
    o = g.op("MatMul", [p, v4], scope=scope)
    return g.linear(_merge_heads(g, o, d, scope), d, d, f"{scope}.o_proj")


def _layers(g: _Graph, h: str, layers: int, d: int, heads: int, *, mask=None, bias=None) -> str:
    for li in range(layers):
        a = g.layernorm(h, d, f"layers.{li}.ln_1")
        h = g.op("Add", [h, _attention(g, a, d, heads, f"layers.{li}.attn", mask=mask, bias=bias)], scope=f"/layers.{li}")
        m = g.layernorm(h, d, f"layers.{li}.ln_2")
        m = g.linear(m, d, 4 * d, f"layers.{li}.mlp.fc_in")
        m = g.gelu_erf(m, scope=f"/layers.{li}/mlp/act")
        m = g.linear(m, 4 * d, d, f"layers.{li}.mlp.fc_out")
        h = g.op("Add", [h, m], scope=f"/layers.{li}")
    return g.layernorm(h, d, "ln_f")


def _model(g: _Graph, h: str, name: str, opset: int = 20) -> onnx.ModelProto:
    g.nodes.append(onnx.helper.make_node("Identity", [h], ["hidden"], name="/out/Identity"))
    return g.model([_vi("x", TensorProto.FLOAT, ["batch", "seq", "d"])],
                   [_vi("hidden", TensorProto.FLOAT, ["batch", "seq", "d"])], name=name, opset=opset)


def _input(g: _Graph, d: int) -> str:
    return g.linear("x", d, d, "embed")


def gpt_trilu(layers: int = 2, d_model: int = 64, heads: int = 4, seed: int = 0) -> onnx.ModelProto:
    """Decoder with the causal mask ConstantOfShape([L, L]) -> Trilu -> Cast(bool) -> Where."""
    g = _Graph(seed)
    h = _input(g, d_model)
    sc = "/mask"
    sh = g.op("Shape", ["x"], scope=sc)
    ln = g.op("Gather", [sh, g.i(1)], scope=sc, axis=0)
    ln1 = g.op("Unsqueeze", [ln, g.i([0])], scope=sc)
    shape = g.op("Concat", [ln1, ln1], scope=sc, axis=0)
    ones = g.op("ConstantOfShape", [shape], scope=sc, value=onnx.numpy_helper.from_array(np.array([1.0], np.float32)))
    low = g.op("Trilu", [ones, g.i(0)], scope=sc, upper=0)  # 1 on and below the diagonal: allowed
    allowed = g.op("Cast", [low], scope=sc, to=TensorProto.BOOL)
    mask = g.op("Unsqueeze", [allowed, g.i([0, 1])], scope=sc)  # [1, 1, L, L]
    return _model(g, _layers(g, h, layers, d_model, heads, mask=mask), "gpt_trilu")


def gpt_range(layers: int = 2, d_model: int = 64, heads: int = 4, seed: int = 0) -> onnx.ModelProto:
    """Decoder with the causal mask from two aranges: rows >= cols allowed."""
    g = _Graph(seed)
    h = _input(g, d_model)
    sc = "/mask"
    sh = g.op("Shape", ["x"], scope=sc)
    ln = g.op("Gather", [sh, g.i(1)], scope=sc, axis=0)
    pos = g.op("Range", [g.i(0), ln, g.i(1)], scope=sc)
    rows = g.op("Unsqueeze", [pos, g.i([1])], scope=sc)
    cols = g.op("Unsqueeze", [pos, g.i([0])], scope=sc)
    allowed = g.op("GreaterOrEqual", [rows, cols], scope=sc)
    mask = g.op("Unsqueeze", [allowed, g.i([0, 1])], scope=sc)
    return _model(g, _layers(g, h, layers, d_model, heads, mask=mask), "gpt_range")


def relative_buckets(g: _Graph, length: str, heads: int, buckets: int = 32, max_distance: int = 128,
                     scope: str = "/relbias") -> str:
    """T5's bidirectional relative-position bucket bias [1, H, L, L] from the run-time length."""
    ctx = g.op("Range", [g.i(0), length, g.i(1)], scope=scope)
    mem = g.op("Range", [g.i(0), length, g.i(1)], scope=scope)
    rows = g.op("Unsqueeze", [ctx, g.i([1])], scope=scope)
    cols = g.op("Unsqueeze", [mem, g.i([0])], scope=scope)
    rel = g.op("Sub", [cols, rows], scope=scope)  # [L, L]: j - i
    nb = buckets // 2
    pos = g.op("Cast", [g.op("Greater", [rel, g.i(0)], scope=scope)], scope=scope, to=TensorProto.INT64)
    ret = g.op("Mul", [pos, g.i(nb)], scope=scope)
    n = g.op("Abs", [rel], scope=scope)
    max_exact = nb // 2
    small = g.op("Less", [n, g.i(max_exact)], scope=scope)
    nf = g.op("Cast", [n], scope=scope, to=TensorProto.FLOAT)
    lg = g.op("Log", [g.op("Div", [nf, g.f(float(max_exact))], scope=scope)], scope=scope)
    lg = g.op("Mul", [lg, g.f((nb - max_exact) / math.log(max_distance / max_exact))], scope=scope)
    large = g.op("Add", [g.op("Cast", [lg], scope=scope, to=TensorProto.INT64), g.i(max_exact)], scope=scope)
    large = g.op("Min", [large, g.i(nb - 1)], scope=scope)
    bucket = g.op("Add", [ret, g.op("Where", [small, n, large], scope=scope)], scope=scope)
    table = g.normal("relative_attention_bias.weight", (buckets, heads), 1.0)
    vals = g.op("Gather", [table, bucket], scope=scope, axis=0)  # [L, L, H]
    vals = g.op("Transpose", [vals], scope=scope, perm=[2, 0, 1])
    return g.op("Unsqueeze", [vals, g.i([0])], scope=scope)  # [1, H, L, L]


def t5_encoder(layers: int = 2, d_model: int = 64, heads: int = 4, seed: int = 0) -> onnx.ModelProto:
    """Encoder whose attention bias is T5's relative-position buckets, computed once, read by every layer."""
    g = _Graph(seed)
    h = _input(g, d_model)
    sh = g.op("Shape", ["x"], scope="/relbias")
    ln = g.op("Gather", [sh, g.i(1)], scope="/relbias", axis=0)
    bias = relative_buckets(g, ln, heads)
    return _model(g, _layers(g, h, layers, d_model, heads, bias=bias), "t5_encoder")


def _shape_of(g: _Graph, x: str, lead: Sequence[int], keep: Sequence[int], tail: Sequence[int], scope: str) -> str:
    """Exporter-style target shape: constants `lead`, x's run-time dims `keep`, constants `tail`."""
    sh = g.op("Shape", [x], scope=scope)
    parts = [g.i(list(lead))]
    for ax in keep:
        parts.append(g.op("Unsqueeze", [g.op("Gather", [sh, g.i(ax)], scope=scope, axis=0), g.i([0])], scope=scope))
    return g.op("Concat", parts + [g.i(list(tail))], scope=scope, axis=0)


def baddbmm_attention(d_model: int = 64, heads: int = 4, seed: int = 0) -> onnx.ModelProto:
    """diffusers' classic attention: Expand(0, [B*H, L, L]) * 0 + scale * Q K^T, Softmax, @ V."""
    g = _Graph(seed)
    d, dh = d_model, d_model // heads
    sc = "/attn"
    x = g.layernorm("x", d, "norm")
    q, k, v = (g.linear(x, d, d, f"attn.to_{n}", bias=False) for n in "qkv")

    def heads_first(t):  # [B, L, d] -> [B*H, L, dh]
        t = g.op("Reshape", [t, g.i([0, 0, heads, dh])], scope=sc)
        t = g.op("Transpose", [t], scope=sc, perm=[0, 2, 1, 3])
        return g.op("Reshape", [t, _shape_of(g, t, [-1], [2], [dh], sc)], scope=sc)

    q, k, v = heads_first(q), heads_first(k), heads_first(v)
    sh_q = g.op("Shape", [q], scope=sc)
    bh = g.op("Unsqueeze", [g.op("Gather", [sh_q, g.i(0)], scope=sc, axis=0), g.i([0])], scope=sc)
    lq = g.op("Unsqueeze", [g.op("Gather", [sh_q, g.i(1)], scope=sc, axis=0), g.i([0])], scope=sc)
    sh_k = g.op("Shape", [k], scope=sc)
    lk = g.op("Unsqueeze", [g.op("Gather", [sh_k, g.i(1)], scope=sc, axis=0), g.i([0])], scope=sc)
    empty = g.op("Expand", [g.f(0.0), g.op("Concat", [bh, lq, lk], scope=sc, axis=0)], scope=sc)
    base = g.op("Mul", [empty, g.f(0.0)], scope=sc)  # beta = 0
    kt = g.op("Transpose", [k], scope=sc, perm=[0, 2, 1])
    s = g.op("Mul", [g.op("MatMul", [q, kt], scope=sc), g.f(1.0 / math.sqrt(dh))], scope=sc)
    s = g.op("Add", [base, s], scope=sc)
    p = g.op("Softmax", [s], scope=sc, axis=-1)
    o = g.op("MatMul", [p, v], scope=sc)  # [B*H, L, dh]
    o = g.op("Reshape", [o, _shape_of(g, o, [-1, heads], [1], [dh], sc)], scope=sc)
    o = g.op("Transpose", [o], scope=sc, perm=[0, 2, 1, 3])  # [B, H, L, dh] -> [B, L, H, dh]
    o = g.op("Reshape", [o, g.i([0, 0, d])], scope=sc)
    o = g.linear(o, d, d, "attn.to_out")
    return _model(g, g.op("Add", ["x", o], scope=sc), "baddbmm_attention")


BUILDERS = {"gpt_trilu": gpt_trilu, "gpt_range": gpt_range, "t5_encoder": t5_encoder,
            "baddbmm_attention": baddbmm_attention}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.posgraphs", description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=sorted(BUILDERS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    a = ap.parse_args(argv)
    kw = {"d_model": a.d_model, "heads": a.heads}
    if a.layers is not None and a.name != "baddbmm_attention":
        kw["layers"] = a.layers
    m = BUILDERS[a.name](**kw)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
