"""Hand-built ONNX models (onnx.helper only, no torch) for tests, demos, fuzzing
and search-speed benchmarks.

Every builder is deterministic for a given ``seed`` (``numpy.random.default_rng``),
uses symbolic input dims (``dim_param``) and returns an ``onnx.ModelProto``
(opset 20 unless stated, ir_version 10) that passes
``onnx.checker.check_model(m, full_check=True)``.

CLI::

    python -m models.synthetic NAME --out FILE.onnx [--layers N] [--seed S]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 20
IR_VERSION = 10
MAX_POSITIONS = 16384

# --------------------------------------------------------------------------
# Graph-building helper
# --------------------------------------------------------------------------
class _Graph:
    """Tiny helper that accumulates nodes/initializers with unique names."""

    def __init__(self, seed: int = 0, weight_dtype: str = "float32"):
        if weight_dtype not in ("float32", "float16"):
            raise ValueError(f"weight_dtype must be float32 or float16, got {weight_dtype!r}")
        self.rng = np.random.default_rng(seed)
        self.weight_dtype = weight_dtype
        self.nodes: List[onnx.NodeProto] = []
        self.inits: List[onnx.TensorProto] = []
        self._counts: Dict[str, int] = {}
        self._const_cache: Dict[Tuple, str] = {}
        self._names: set = set()

    # names -----------------------------------------------------------------
    def uniq(self, base: str) -> str:
        n = self._counts.get(base, 0)
        self._counts[base] = n + 1
        name = base if n == 0 else f"{base}_{n}"
        while name in self._names:
            n += 1
            self._counts[base] = n + 1
            name = f"{base}_{n}"
        self._names.add(name)
        return name

    # nodes -----------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1,
           scope: str = "", domain: str = "", **attrs):
        prefix = f"{scope}/" if scope else "/"
        node_name = self.uniq(f"{prefix}{op_type}")
        outputs = [f"{node_name}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs,
                                           name=node_name, domain=domain or None,
                                           **attrs))
        return outputs[0] if n_out == 1 else outputs

    # constants ---------------------------------------------------------------
    def const(self, value, dtype=np.int64, name: Optional[str] = None) -> str:
        """A (deduplicated) constant initializer (shapes, scalars, axes)."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if name is None and key in self._const_cache:
            return self._const_cache[key]
        if name is None:
            if arr.ndim == 0:
                name = self.uniq(f"const_{arr.dtype.name}_scalar")
            else:
                name = self.uniq(f"const_{arr.dtype.name}_{'x'.join(map(str, arr.shape))}")
        else:
            name = self.uniq(name)
        self.inits.append(numpy_helper.from_array(arr, name))
        if key not in self._const_cache:
            self._const_cache[key] = name
        return name

    def f(self, value) -> str:
        return self.const(value, dtype=np.float32)

    def i(self, value) -> str:
        return self.const(value, dtype=np.int64)

    def param(self, name: str, arr: np.ndarray) -> str:
        """A learned parameter; stored as float16 + Cast when weight_dtype='float16'."""
        arr = np.asarray(arr, dtype=np.float32)
        if self.weight_dtype == "float32":
            nm = self.uniq(name)
            self.inits.append(numpy_helper.from_array(arr, nm))
            return nm
        nm = self.uniq(name)
        self.inits.append(numpy_helper.from_array(arr.astype(np.float16), nm))
        return self.op("Cast", [nm], scope=nm, to=TensorProto.FLOAT)

    def normal(self, name: str, shape, std: float) -> str:
        return self.param(name, self.rng.standard_normal(shape) * std)

    def weight(self, name: str, fan_in: int, fan_out: int) -> str:
        return self.normal(name, (fan_in, fan_out), 1.0 / math.sqrt(fan_in))

    def bias(self, name: str, n: int) -> str:
        return self.normal(name, (n,), 0.02)

    def ln_params(self, name: str, n: int) -> Tuple[str, str]:
        gamma = self.param(f"{name}.weight", 1.0 + 0.1 * self.rng.standard_normal(n))
        beta = self.param(f"{name}.bias", 0.02 * self.rng.standard_normal(n))
        return gamma, beta

    # common layers -------------------------------------------------------------
    def linear(self, x: str, fan_in: int, fan_out: int, name: str, bias: bool = True) -> str:
        w = self.weight(f"{name}.weight", fan_in, fan_out)
        y = self.op("MatMul", [x, w], scope=name)
        if bias:
            y = self.op("Add", [y, self.bias(f"{name}.bias", fan_out)], scope=name)
        return y

    def layernorm(self, x: str, n: int, name: str, axis: int = -1) -> str:
        gamma, beta = self.ln_params(name, n)
        return self.op("LayerNormalization", [x, gamma, beta], scope=name,
                       axis=axis, epsilon=1e-5)

    def gelu_erf(self, x: str, scope: str) -> str:
        """GELU as exporters emit it: 0.5 * x * (1 + erf(x / sqrt(2)))."""
        d = self.op("Div", [x, self.f(math.sqrt(2.0))], scope=scope)
        e = self.op("Erf", [d], scope=scope)
        a = self.op("Add", [e, self.f(1.0)], scope=scope)
        m = self.op("Mul", [x, a], scope=scope)
        return self.op("Mul", [m, self.f(0.5)], scope=scope)

    def dim(self, x: str, axis: int, scope: str) -> str:
        """Scalar int64 size of ``x`` along ``axis`` (Shape -> Gather)."""
        sh = self.op("Shape", [x], scope=scope)
        return self.op("Gather", [sh, self.i(axis)], scope=scope, axis=0)

    def shape_from(self, x: str, keep_axes: Sequence[int], tail: Sequence[int], scope: str) -> str:
        """Exporter-style dynamic target shape: Shape(x) -> Gather(axis) ->
        Unsqueeze -> Concat(..., constant tail)."""
        sh = self.op("Shape", [x], scope=scope)
        parts = []
        for ax in keep_axes:
            g = self.op("Gather", [sh, self.i(ax)], scope=scope, axis=0)
            parts.append(self.op("Unsqueeze", [g, self.i([0])], scope=scope))
        for t in tail:
            parts.append(self.i([t]))
        return self.op("Concat", parts, scope=scope, axis=0)

    def model(self, inputs, outputs, name: str, opset: int = OPSET) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="autochunk-onnx.models.synthetic")
        m.ir_version = IR_VERSION
        return m


def _vi(name: str, elem_type: int, dims) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, list(dims))


# --------------------------------------------------------------------------
# Shared blocks
# --------------------------------------------------------------------------
def _qkv_heads(g: _Graph, x: str, d: int, heads: int, scope: str, dynamic_reshape: bool = True) -> list[str]:
    """Q, K, V projections of x [b, s, d], each split into heads: [b, h, s, d/h]."""
    if d % heads:
        raise ValueError(f"d_model={d} not divisible by heads={heads}")
    dh = d // heads
    q = g.linear(x, d, d, f"{scope}.q_proj")
    k = g.linear(x, d, d, f"{scope}.k_proj")
    v = g.linear(x, d, d, f"{scope}.v_proj")

    def split(t: str) -> str:
        if dynamic_reshape:
            tgt = g.shape_from(t, [0, 1], [heads, dh], scope=scope)
        else:
            tgt = g.i([0, 0, heads, dh])
        r = g.op("Reshape", [t, tgt], scope=scope)
        return g.op("Transpose", [r], scope=scope, perm=[0, 2, 1, 3])  # [b, h, s, dh]

    return [split(q), split(k), split(v)]


def _merge_heads(g: _Graph, o: str, d: int, scope: str, dynamic_reshape: bool = True) -> str:
    """[b, h, s, d/h] -> [b, s, d]."""
    o = g.op("Transpose", [o], scope=scope, perm=[0, 2, 1, 3])  # [b, s, h, dh]
    tgt = g.shape_from(o, [0, 1], [d], scope=scope) if dynamic_reshape else g.i([0, 0, d])
    return g.op("Reshape", [o, tgt], scope=scope)


def _self_attention(g: _Graph, x: str, d: int, heads: int, scope: str, *,
                    dynamic_reshape: bool = True, mask: Optional[str] = None) -> str:
    """Multi-head self-attention on x [b, s, d] (already normalized).

    ``mask``: optional bool tensor broadcastable to [b, h, s, s]; True = masked out.
    Returns the output projection (no residual)."""
    q4, k4, v4 = _qkv_heads(g, x, d, heads, scope, dynamic_reshape)
    kt = g.op("Transpose", [k4], scope=scope, perm=[0, 1, 3, 2])  # [b, h, dh, s]
    scores = g.op("MatMul", [q4, kt], scope=scope)
    scores = g.op("Mul", [scores, g.f(1.0 / math.sqrt(d // heads))], scope=scope)
    if mask is not None:
        scores = g.op("Where", [mask, g.f(np.finfo(np.float32).min), scores], scope=scope)
    probs = g.op("Softmax", [scores], scope=scope, axis=-1)
    o = g.op("MatMul", [probs, v4], scope=scope)  # [b, h, s, dh]
    o = _merge_heads(g, o, d, scope, dynamic_reshape)
    return g.linear(o, d, d, f"{scope}.o_proj")


def _causal_mask(g: _Graph, positions: str, scope: str = "/mask") -> str:
    """Bool mask [1, 1, s, s], True where key index > query index (future).
    Built from the dynamic Range of positions (Range/Less/Unsqueeze)."""
    rows = g.op("Unsqueeze", [positions, g.i([1])], scope=scope)  # [s, 1]
    cols = g.op("Unsqueeze", [positions, g.i([0])], scope=scope)  # [1, s]
    future = g.op("Less", [rows, cols], scope=scope)  # [s, s]: row < col
    return g.op("Unsqueeze", [future, g.i([0, 1])], scope=scope)  # [1, 1, s, s]


def _sinusoidal(g: _Graph, positions: str, d: int, scope: str = "/pos") -> str:
    """In-graph sinusoidal position table [s, d] from int64 positions [s]."""
    half = d // 2
    inv_freq = np.exp(-math.log(10000.0) * np.arange(half, dtype=np.float64) / half)
    p = g.op("Cast", [positions], scope=scope, to=TensorProto.FLOAT)
    p = g.op("Unsqueeze", [p, g.i([1])], scope=scope)  # [s, 1]
    ang = g.op("Mul", [p, g.f(inv_freq[None, :])], scope=scope)  # [s, half]
    s = g.op("Sin", [ang], scope=scope)
    c = g.op("Cos", [ang], scope=scope)
    parts = [s, c]
    if d % 2:
        zeros_col = g.op("Mul", [g.op("Slice", [s, g.i([0]), g.i([1]), g.i([1])], scope=scope),
                                 g.f(0.0)], scope=scope)
        parts.append(zeros_col)
    return g.op("Concat", parts, scope=scope, axis=1)


# --------------------------------------------------------------------------
# 1. GPT-like decoder
# --------------------------------------------------------------------------
def transformer(layers: int = 2, d_model: int = 64, heads: int = 4, ffn_mult: int = 4,
                vocab: int = 512, seed: int = 0, causal: bool = True,
                dynamic_reshape: bool = True, *, max_positions: int = MAX_POSITIONS,
                pos_embedding: str = "learned", weight_dtype: str = "float32",
                tie_embeddings: bool = False, _graph: Optional["_Graph"] = None) -> onnx.ModelProto:
    """GPT-like decoder, shaped like an exporter (torch.onnx) graph.

    input ``input_ids`` int64 [batch, seq] -> output ``logits`` float32 [batch, seq, vocab].

    Extra keyword options (defaults give the plain exporter-like model):
      * ``pos_embedding``: "learned" (Gather(Range(0, seq)) into a [max_positions, d]
        table) or "sinusoidal" (computed in-graph from the same Range; no table).
      * ``weight_dtype``: "float16" stores every learned parameter as float16 followed
        by a Cast to float32 (halves file size; activations remain float32).
      * ``tie_embeddings``: LM head = MatMul with Transpose(token embedding).
    """
    if pos_embedding not in ("learned", "sinusoidal"):
        raise ValueError(f"pos_embedding must be 'learned' or 'sinusoidal', got {pos_embedding!r}")
    g = _graph if _graph is not None else _Graph(seed, weight_dtype)
    d = d_model
    ids = "input_ids"

    tok_table = g.normal("embed_tokens.weight", (vocab, d), 1.0)
    h = g.op("Gather", [tok_table, ids], scope="/embed_tokens", axis=0)  # [b, s, d]

    seq_len = g.dim(ids, 1, scope="/embed_positions")  # scalar
    positions = g.op("Range", [g.i(0), seq_len, g.i(1)], scope="/embed_positions")  # [s]
    if pos_embedding == "learned":
        pos_table = g.normal("embed_positions.weight", (max_positions, d), 1.0)
        pos = g.op("Gather", [pos_table, positions], scope="/embed_positions", axis=0)
    else:
        pos = _sinusoidal(g, positions, d, scope="/embed_positions")
    h = g.op("Add", [h, pos], scope="/embed")

    mask = _causal_mask(g, positions) if causal else None

    for li in range(layers):
        sc = f"/layers.{li}"
        a = g.layernorm(h, d, f"layers.{li}.ln_1")
        a = _self_attention(g, a, d, heads, f"layers.{li}.attn",
                            dynamic_reshape=dynamic_reshape, mask=mask)
        h = g.op("Add", [h, a], scope=sc)
        m = g.layernorm(h, d, f"layers.{li}.ln_2")
        m = g.linear(m, d, ffn_mult * d, f"layers.{li}.mlp.fc_in")
        m = g.gelu_erf(m, scope=f"{sc}/mlp/act")
        m = g.linear(m, ffn_mult * d, d, f"layers.{li}.mlp.fc_out")
        h = g.op("Add", [h, m], scope=sc)

    h = g.layernorm(h, d, "ln_f")
    if tie_embeddings:
        w_head = g.op("Transpose", [tok_table], scope="/lm_head", perm=[1, 0])
        # embeddings have std 1: rescale so logits stay O(1)
        h = g.op("Mul", [h, g.f(1.0 / math.sqrt(d))], scope="/lm_head")
    else:
        w_head = g.weight("lm_head.weight", d, vocab)
    g.nodes.append(helper.make_node("MatMul", [h, w_head], ["logits"], name="/lm_head/MatMul"))

    return g.model(
        [_vi(ids, TensorProto.INT64, ["batch", "seq"])],
        [_vi("logits", TensorProto.FLOAT, ["batch", "seq", vocab])],
        name="transformer",
    )


def stacked_transformer(layers: int = 24, d_model: int = 64, heads: int = 4,
                        seed: int = 0, **kw) -> onnx.ModelProto:
    """Deep transformer(...) used to time the chunk search on ~1000+ nodes."""
    return transformer(layers=layers, d_model=d_model, heads=heads, seed=seed, **kw)


# --------------------------------------------------------------------------
# 2. / 3. single blocks
# --------------------------------------------------------------------------
def attention_block(d_model: int = 64, heads: int = 4, seed: int = 0, *,
                    dynamic_reshape: bool = True) -> onnx.ModelProto:
    """x [batch, seq, d_model] -> y: LayerNorm, QKV, softmax attention, out proj, residual."""
    g = _Graph(seed)
    a = g.layernorm("x", d_model, "ln")
    a = _self_attention(g, a, d_model, heads, "attn", dynamic_reshape=dynamic_reshape)
    g.nodes.append(helper.make_node("Add", ["x", a], ["y"], name="/residual/Add"))
    return g.model([_vi("x", TensorProto.FLOAT, ["batch", "seq", d_model])],
                   [_vi("y", TensorProto.FLOAT, ["batch", "seq", d_model])],
                   name="attention_block")


def mlp_block(d_model: int = 64, mult: int = 4, seed: int = 0) -> onnx.ModelProto:
    """x [batch, seq, d] -> LayerNorm -> MatMul(4d)+Add -> Gelu (opset 20 op) -> MatMul+Add -> residual."""
    g = _Graph(seed)
    h = g.layernorm("x", d_model, "ln")
    h = g.linear(h, d_model, mult * d_model, "fc_in")
    h = g.op("Gelu", [h], scope="/act")
    h = g.linear(h, mult * d_model, d_model, "fc_out")
    g.nodes.append(helper.make_node("Add", ["x", h], ["y"], name="/residual/Add"))
    return g.model([_vi("x", TensorProto.FLOAT, ["batch", "seq", d_model])],
                   [_vi("y", TensorProto.FLOAT, ["batch", "seq", d_model])],
                   name="mlp_block")


# --------------------------------------------------------------------------
# 4. AlphaFold-style Evoformer block (Einsum heavy)
# --------------------------------------------------------------------------
def _rename(g: _Graph, old: str, new: str) -> None:
    for n in g.nodes:
        for k, name in enumerate(n.input):
            if name == old:
                n.input[k] = new
        for k, name in enumerate(n.output):
            if name == old:
                n.output[k] = new


def _split_heads5(g: _Graph, t: str, heads: int, c: int, scope: str) -> str:
    """[b, a, i, H*c] -> [b, a, i, H, c] with an exporter-style dynamic shape."""
    tgt = g.shape_from(t, [0, 1, 2], [heads, c], scope=scope)
    return g.op("Reshape", [t, tgt], scope=scope)


def _merge_heads5(g: _Graph, t: str, width: int, scope: str) -> str:
    """[b, a, i, H, c] -> [b, a, i, H*c]."""
    tgt = g.shape_from(t, [0, 1, 2], [width], scope=scope)
    return g.op("Reshape", [t, tgt], scope=scope)


def _pair_bias(g: _Graph, z: str, c_z: int, heads: int, name: str) -> str:
    """Per-head bias from a normalized pair tensor z [b, i, j, c_z] -> [b, 1, H, i, j]."""
    bias = g.linear(z, c_z, heads, name, bias=False)  # [b, i, j, H]
    bias = g.op("Transpose", [bias], scope=name, perm=[0, 3, 1, 2])  # [b, H, i, j]
    return g.op("Unsqueeze", [bias, g.i([1])], scope=name)  # [b, 1, H, i, j]


def _gated_attention(g: _Graph, x: str, c_in: int, bias: str, heads: int, c: int,
                     name: str) -> str:
    """Gated multi-head attention along axis 2 of x [b, a, i, c_in], with an additive
    bias [b, 1, H, i, j]. Returns the output projection [b, a, i, c_in]."""
    hc = heads * c
    q = g.linear(x, c_in, hc, f"{name}.linear_q", bias=False)
    k = g.linear(x, c_in, hc, f"{name}.linear_k", bias=False)
    v = g.linear(x, c_in, hc, f"{name}.linear_v", bias=False)
    q = g.op("Mul", [q, g.f(1.0 / math.sqrt(c))], scope=name)
    q5 = _split_heads5(g, q, heads, c, name)
    k5 = _split_heads5(g, k, heads, c, name)
    v5 = _split_heads5(g, v, heads, c, name)
    logits = g.op("Einsum", [q5, k5], scope=name, equation="baihc,bajhc->bahij")
    logits = g.op("Add", [logits, bias], scope=name)
    probs = g.op("Softmax", [logits], scope=name, axis=-1)
    o = g.op("Einsum", [probs, v5], scope=name, equation="bahij,bajhc->baihc")
    o = _merge_heads5(g, o, hc, name)
    gate = g.op("Sigmoid", [g.linear(x, c_in, hc, f"{name}.linear_g")], scope=name)
    o = g.op("Mul", [o, gate], scope=name)
    return g.linear(o, hc, c_in, f"{name}.linear_o")


def _transition(g: _Graph, x: str, c: int, name: str) -> str:
    """Residual LayerNorm -> Linear(4c) -> Relu -> Linear(c), the Evoformer's MSA and pair transitions."""
    t = g.layernorm(x, c, f"{name}.layer_norm")
    t = g.op("Relu", [g.linear(t, c, 4 * c, f"{name}.linear_1")], scope=name)
    t = g.linear(t, 4 * c, c, f"{name}.linear_2")
    return g.op("Add", [x, t], scope=name)


def evoformer_like(c_m: int = 16, c_z: int = 16, heads: int = 2, seed: int = 0, *,
                   c_hidden: int = 8) -> onnx.ModelProto:
    """One Evoformer-like block.

    inputs ``msa`` [batch, n_seq, n_res, c_m], ``pair`` [batch, n_res, n_res, c_z]
    outputs ``msa_out`` (same shape as msa), ``pair_out`` (same shape as pair).

    MSA row attention with pair bias -> MSA transition -> outer-product mean ->
    triangle multiplicative update (outgoing) -> triangle attention (starting node)
    -> pair transition. All residual."""
    g = _Graph(seed)
    msa, pair = "msa", "pair"
    ch = c_hidden

    # --- MSA row attention with pair bias -----------------------------------------
    name = "msa_row_attn"
    m = g.layernorm(msa, c_m, f"{name}.layer_norm_m")
    z = g.layernorm(pair, c_z, f"{name}.layer_norm_z")
    bias = _pair_bias(g, z, c_z, heads, f"{name}.linear_z")
    a = _gated_attention(g, m, c_m, bias, heads, ch, name)
    msa = g.op("Add", [msa, a], scope=name)

    msa = _transition(g, msa, c_m, "msa_transition")
    msa_final = msa

    # --- outer product mean (MSA -> pair) ----------------------------------------------
    name = "outer_product_mean"
    m = g.layernorm(msa, c_m, f"{name}.layer_norm")
    a = g.linear(m, c_m, ch, f"{name}.linear_1")  # [b, s, i, c]
    b = g.linear(m, c_m, ch, f"{name}.linear_2")  # [b, s, j, d]
    o = g.op("Einsum", [a, b], scope=name, equation="bsic,bsjd->bijcd")
    tgt = g.shape_from(o, [0, 1, 2], [ch * ch], scope=name)
    o = g.op("Reshape", [o, tgt], scope=name)  # [b, i, j, c*d]
    o = g.linear(o, ch * ch, c_z, f"{name}.linear_out")
    n_seq = g.dim(msa, 1, scope=name)
    n_seq = g.op("Cast", [n_seq], scope=name, to=TensorProto.FLOAT)
    o = g.op("Div", [o, n_seq], scope=name)
    pair = g.op("Add", [pair, o], scope=name)

    # --- triangle multiplicative update (outgoing edges) ------------------------------
    name = "tri_mul_out"
    z = g.layernorm(pair, c_z, f"{name}.layer_norm_in")
    ga = g.op("Sigmoid", [g.linear(z, c_z, ch, f"{name}.linear_a_g")], scope=name)
    a = g.op("Mul", [g.linear(z, c_z, ch, f"{name}.linear_a_p"), ga], scope=name)  # [b,i,k,c]
    gb = g.op("Sigmoid", [g.linear(z, c_z, ch, f"{name}.linear_b_g")], scope=name)
    b = g.op("Mul", [g.linear(z, c_z, ch, f"{name}.linear_b_p"), gb], scope=name)  # [b,j,k,c]
    x = g.op("Einsum", [a, b], scope=name, equation="bikc,bjkc->bijc")
    x = g.layernorm(x, ch, f"{name}.layer_norm_out")
    x = g.linear(x, ch, c_z, f"{name}.linear_z")
    gz = g.op("Sigmoid", [g.linear(z, c_z, c_z, f"{name}.linear_g")], scope=name)
    x = g.op("Mul", [x, gz], scope=name)
    pair = g.op("Add", [pair, x], scope=name)

    # --- triangle attention (starting node): attend over k for each row i -----------
    name = "tri_att_start"
    z = g.layernorm(pair, c_z, f"{name}.layer_norm")
    bias = _pair_bias(g, z, c_z, heads, f"{name}.linear_tri")  # [b,1,H,j,k]
    a = _gated_attention(g, z, c_z, bias, heads, ch, name)
    pair = g.op("Add", [pair, a], scope=name)

    pair = _transition(g, pair, c_z, "pair_transition")

    _rename(g, msa_final, "msa_out")
    _rename(g, pair, "pair_out")
    return g.model(
        [_vi("msa", TensorProto.FLOAT, ["batch", "n_seq", "n_res", c_m]),
         _vi("pair", TensorProto.FLOAT, ["batch", "n_res", "n_res", c_z])],
        [_vi("msa_out", TensorProto.FLOAT, ["batch", "n_seq", "n_res", c_m]),
         _vi("pair_out", TensorProto.FLOAT, ["batch", "n_res", "n_res", c_z])],
        name="evoformer_like",
    )


# --------------------------------------------------------------------------
# 5. UNet-like block (conv + GroupNorm + spatial self-attention)
# --------------------------------------------------------------------------
def _group_norm(g: _Graph, x: str, channels: int, groups: int, name: str) -> str:
    """GroupNorm as torch exports it: Reshape [b, G, -1] -> InstanceNormalization
    (scale ones, bias zeros) -> Reshape back (Shape of x) -> per-channel Mul/Add."""
    r = g.op("Reshape", [x, g.i([0, groups, -1])], scope=name)
    ones = g.const(np.ones(groups), np.float32, name=f"{name}.instnorm_scale")
    zeros = g.const(np.zeros(groups), np.float32, name=f"{name}.instnorm_bias")
    n = g.op("InstanceNormalization", [r, ones, zeros], scope=name, epsilon=1e-5)
    n = g.op("Reshape", [n, g.op("Shape", [x], scope=name)], scope=name)
    gamma = g.param(f"{name}.weight", (1.0 + 0.1 * g.rng.standard_normal((channels, 1, 1))))
    beta = g.param(f"{name}.bias", 0.02 * g.rng.standard_normal((channels, 1, 1)))
    n = g.op("Mul", [n, gamma], scope=name)
    return g.op("Add", [n, beta], scope=name)


def _conv(g: _Graph, x: str, c_in: int, c_out: int, k: int, name: str) -> str:
    w = g.normal(f"{name}.weight", (c_out, c_in, k, k), 1.0 / math.sqrt(c_in * k * k))
    b = g.bias(f"{name}.bias", c_out)
    pad = k // 2
    return g.op("Conv", [x, w, b], scope=name, kernel_shape=[k, k],
                pads=[pad, pad, pad, pad], strides=[1, 1], dilations=[1, 1], group=1)


def unet_like(channels: int = 32, groups: int = 8, seed: int = 0, *,
              heads: int = 4) -> onnx.ModelProto:
    """input ``sample`` [batch, channels, height, width] -> output ``out`` (same shape).

    Conv3x3 -> GroupNorm -> SiLU -> spatial self-attention over h*w tokens
    (residual) -> Conv1x1."""
    if channels % groups:
        raise ValueError(f"channels={channels} not divisible by groups={groups}")
    g = _Graph(seed)
    c = channels
    h = _conv(g, "sample", c, c, 3, "conv_in")
    h = _group_norm(g, h, c, groups, "norm1")
    h = g.op("Mul", [h, g.op("Sigmoid", [h], scope="/act")], scope="/act")  # SiLU

    name = "attn"
    t = g.op("Reshape", [h, g.i([0, c, -1])], scope=name)  # [b, c, hw]
    t = g.op("Transpose", [t], scope=name, perm=[0, 2, 1])  # [b, hw, c]
    a = g.layernorm(t, c, f"{name}.norm")
    a = _self_attention(g, a, c, heads, name, dynamic_reshape=True)  # [b, hw, c]
    a = g.op("Transpose", [a], scope=name, perm=[0, 2, 1])  # [b, c, hw]
    a = g.op("Reshape", [a, g.op("Shape", [h], scope=name)], scope=name)  # [b, c, h, w]
    h = g.op("Add", [h, a], scope=name)

    out = _conv(g, h, c, c, 1, "conv_out")
    _rename(g, out, "out")
    return g.model([_vi("sample", TensorProto.FLOAT, ["batch", c, "height", "width"])],
                   [_vi("out", TensorProto.FLOAT, ["batch", c, "height", "width"])],
                   name="unet_like")


# --------------------------------------------------------------------------
# 6. opset-23 Attention op
# --------------------------------------------------------------------------
def attention_opset23(d_model: int = 64, heads: int = 4, seed: int = 0, *,
                      is_causal: bool = False) -> onnx.ModelProto:
    """attention_block, but the core is the standard ONNX (opset 23) ``Attention`` op
    on 4-D Q/K/V [batch, heads, seq, dh]. x [batch, seq, d_model] -> y. Opset 23,
    ir_version 11 (the minimum IR version for opset 23)."""
    if d_model % heads:
        raise ValueError(f"d_model={d_model} not divisible by heads={heads}")
    g = _Graph(seed)
    d, dh = d_model, d_model // heads
    a = g.layernorm("x", d, "ln")
    name = "attn"
    q4, k4, v4 = _qkv_heads(g, a, d, heads, name)
    o = g.op("Attention", [q4, k4, v4], scope=name,
             scale=1.0 / math.sqrt(dh), is_causal=int(is_causal))  # [b, h, s, dh]
    o = _merge_heads(g, o, d, name)
    o = g.linear(o, d, d, f"{name}.o_proj")
    g.nodes.append(helper.make_node("Add", ["x", o], ["y"], name="/residual/Add"))
    m = g.model([_vi("x", TensorProto.FLOAT, ["batch", "seq", d])],
                [_vi("y", TensorProto.FLOAT, ["batch", "seq", d])],
                name="attention_opset23", opset=23)
    m.ir_version = 11
    return m


# --------------------------------------------------------------------------
# 8. external data
# --------------------------------------------------------------------------
_ALIGN = 4096


def _set_external(t: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del t.external_data[:]
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v
    t.data_location = TensorProto.EXTERNAL


def with_external_data(model: onnx.ModelProto, path: Union[str, os.PathLike],
                       min_bytes: int = 1024) -> str:
    """Save ``model`` to ``path`` with every initializer whose data is >= ``min_bytes``
    bytes in ONE external file next to it (``<basename>.data``, referenced by a relative
    location; offsets 4096-aligned). ``model`` itself is not modified. Returns the
    path of the data file."""
    path = os.fspath(path)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    location = os.path.basename(path) + ".data"
    data_path = os.path.join(os.path.dirname(os.path.abspath(path)), location)
    offset = 0
    with open(data_path, "wb") as fh:
        for t in m.graph.initializer:
            if t.data_location == TensorProto.EXTERNAL:
                raise ValueError(f"initializer {t.name!r} already uses external data")
            arr = numpy_helper.to_array(t)
            raw = arr.tobytes()
            if len(raw) < min_bytes:
                continue
            pad = (-offset) % _ALIGN
            if pad:
                fh.write(b"\0" * pad)
                offset += pad
            fh.write(raw)
            name = t.name
            t.Clear()
            t.name = name
            t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
            t.dims.extend(arr.shape)
            _set_external(t, location, offset, len(raw))
            offset += len(raw)
    onnx.save_model(m, path)
    return data_path


def big_external_model(path: Union[str, os.PathLike], weight_gib: float = 1.0, *,
                       d: int = 8192, seed: int = 0) -> str:
    """Write a model whose external weights total >= ``weight_gib`` GiB.

    A chain of ``n = ceil(weight_gib GiB / (4*d*d))`` MatMuls with [d, d] float32
    weights (std 1/sqrt(d), random normal, deterministic), small activations:
    input ``x`` [batch, seq, d] -> output ``y`` [batch, seq, d].
    Weights are generated and written row-block by row-block straight into
    ``<basename>.data`` (never more than ~32 MiB of weights in memory); the
    TensorProto entries are created with data_location=EXTERNAL by hand.
    Returns the path of the data file."""
    path = os.fspath(path)
    rng = np.random.default_rng(seed)
    per = 4 * d * d
    n = max(1, math.ceil(weight_gib * (1 << 30) / per))
    location = os.path.basename(path) + ".data"
    data_path = os.path.join(os.path.dirname(os.path.abspath(path)), location)
    rows = max(1, (8 << 20) // (4 * d))  # ~8 MiB per block
    std = np.float32(1.0 / math.sqrt(d))
    inits, nodes = [], []
    h = "x"
    offset = 0
    with open(data_path, "wb") as fh:
        for li in range(n):
            pad = (-offset) % _ALIGN
            if pad:
                fh.write(b"\0" * pad)
                offset += pad
            for r0 in range(0, d, rows):
                blk = rng.standard_normal((min(rows, d - r0), d), dtype=np.float32)
                blk *= std
                fh.write(blk.tobytes())
                del blk
            t = TensorProto()
            t.name = f"layers.{li}.weight"
            t.data_type = TensorProto.FLOAT
            t.dims.extend([d, d])
            _set_external(t, location, offset, per)
            offset += per
            inits.append(t)
            out = "y" if li == n - 1 else f"/layers.{li}/MatMul_output_0"
            nodes.append(helper.make_node("MatMul", [h, t.name], [out],
                                          name=f"/layers.{li}/MatMul"))
            h = out
    graph = helper.make_graph(nodes, "big_external", [_vi("x", TensorProto.FLOAT, ["batch", "seq", d])],
                              [_vi("y", TensorProto.FLOAT, ["batch", "seq", d])],
                              initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                          producer_name="autochunk-onnx.models.synthetic")
    m.ir_version = IR_VERSION
    onnx.save_model(m, path)
    return data_path


class _ExternalGraph(_Graph):
    """_Graph whose normal-distributed parameters of >= ``min_bytes`` are written straight into
    an open data file, block by block (~8 MiB of weights in memory at a time), as external
    tensors; small parameters (LayerNorm, constants) stay inline."""

    def __init__(self, seed: int, fh, location: str, min_bytes: int = 1024):
        super().__init__(seed)
        self.fh, self.location, self.offset, self.min_bytes = fh, location, 0, min_bytes

    def normal(self, name: str, shape, std: float) -> str:
        shape = tuple(int(s) for s in shape)
        n = math.prod(shape)
        if 4 * n < self.min_bytes:
            return super().normal(name, shape, std)
        nm = self.uniq(name)
        pad = (-self.offset) % _ALIGN
        if pad:
            self.fh.write(b"\0" * pad)
            self.offset += pad
        row = n // shape[0]
        step = max(1, (8 << 20) // (4 * row))
        for r0 in range(0, shape[0], step):
            blk = self.rng.standard_normal((min(step, shape[0] - r0),) + shape[1:], dtype=np.float32)
            blk *= np.float32(std)
            self.fh.write(blk.tobytes())
        t = TensorProto()
        t.name = nm
        t.data_type = TensorProto.FLOAT
        t.dims.extend(shape)
        _set_external(t, self.location, self.offset, 4 * n)
        self.offset += 4 * n
        self.inits.append(t)
        return nm


def big_transformer_layers(weight_gib: float, d_model: int, vocab: int, max_positions: int,
                           ffn_mult: int = 4) -> int:
    """Layers big_transformer needs for >= ``weight_gib`` GiB of float32 weights."""
    d = d_model
    per_layer = 4 * ((4 + 2 * ffn_mult) * d * d + (9 + ffn_mult) * d)
    tables = 4 * (2 * vocab * d + max_positions * d)
    return max(1, math.ceil((weight_gib * (1 << 30) - tables) / per_layer))


def big_transformer(path: Union[str, os.PathLike], weight_gib: float = 1.0, *, d_model: int = 2048,
                    heads: int = 16, vocab: int = 16384, max_positions: int = 4096,
                    layers: Optional[int] = None, seed: int = 0) -> str:
    """Write transformer(...) (GPT-like decoder, input ``input_ids`` [batch, seq] -> ``logits``)
    sized to hold >= ``weight_gib`` GiB of float32 weights, all in ONE external file
    ``<basename>.data`` next to ``path``. The weights are generated and written block by block
    while the graph is built, so they are never all in memory (RSS stays ~100 MiB whatever the
    size). Its activation peak is the attention scores [batch, heads, seq, seq]: at seq 4096 and
    16 heads, 1 GiB in float32. Returns the path of the data file."""
    path = os.fspath(path)
    if layers is None:
        layers = big_transformer_layers(weight_gib, d_model, vocab, max_positions)
    location = os.path.basename(path) + ".data"
    data_path = os.path.join(os.path.dirname(os.path.abspath(path)), location)
    with open(data_path, "wb") as fh:
        g = _ExternalGraph(seed, fh, location)
        m = transformer(layers=layers, d_model=d_model, heads=heads, vocab=vocab, seed=seed,
                        max_positions=max_positions, _graph=g)
    m.graph.name = "big_transformer"
    onnx.save_model(m, path)
    return data_path


# The committed README demo model models/examples/gpt_small.onnx is
# transformer(**GPT_SMALL_EXAMPLE). float16-stored weights + in-graph sinusoidal
# positions keep it < 2 MB (float32 weights alone would be ~2.6 MB, and a learned
# 16384-row position table another 8 MB).
GPT_SMALL_EXAMPLE = dict(layers=2, d_model=128, heads=4, vocab=1024,
                         pos_embedding="sinusoidal", weight_dtype="float16")


# --------------------------------------------------------------------------
# 9. CLI
# --------------------------------------------------------------------------
BUILDERS = {
    "transformer": transformer,
    "attention_block": attention_block,
    "mlp_block": mlp_block,
    "evoformer_like": evoformer_like,
    "unet_like": unet_like,
    "attention_opset23": attention_opset23,
    "stacked_transformer": stacked_transformer,
}

__all__ = list(BUILDERS) + ["with_external_data", "big_external_model", "big_transformer", "BUILDERS",
                           "GPT_SMALL_EXAMPLE", "main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.synthetic",
                                description="Write a synthetic ONNX model.")
    p.add_argument("name", choices=sorted(list(BUILDERS) + ["big_external", "big_transformer"]))
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--layers", type=int, default=None,
                   help="number of layers (transformer / stacked_transformer)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weight-gib", type=float, default=1.0, help="big_external, big_transformer: GiB of weights")
    p.add_argument("--d", type=int, default=8192, help="big_external: weight matrix size d x d")
    p.add_argument("--external", action="store_true",
                   help="save initializers >= 1 KiB as external data")
    args = p.parse_args(argv)

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    if args.name == "big_external":
        big_external_model(args.out, weight_gib=args.weight_gib, d=args.d, seed=args.seed)
        print(f"wrote {args.out}")
        return 0
    if args.name == "big_transformer":
        big_transformer(args.out, weight_gib=args.weight_gib, layers=args.layers, seed=args.seed)
        print(f"wrote {args.out}")
        return 0
    kw = {"seed": args.seed}
    if args.layers is not None:
        if args.name not in ("transformer", "stacked_transformer"):
            p.error(f"--layers is not supported by {args.name}")
        kw["layers"] = args.layers
    m = BUILDERS[args.name](**kw)
    if args.external:
        with_external_data(m, args.out)
    else:
        onnx.save_model(m, args.out)
    print(f"wrote {args.out} ({len(m.graph.node)} nodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
