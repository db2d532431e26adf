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
def _self_attention(g: _Graph, x: str, d: int, heads: int, scope: str, *,
                    dynamic_reshape: bool = True, mask: Optional[str] = None) -> str:
    """Multi-head self-attention on x [b, s, d] (already normalized).

    ``mask``: optional bool tensor broadcastable to [b, h, s, s]; True = masked out.
    Returns the output projection (no residual)."""
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

    q4, k4, v4 = split(q), split(k), split(v)
    kt = g.op("Transpose", [k4], scope=scope, perm=[0, 1, 3, 2])  # [b, h, dh, s]
    scores = g.op("MatMul", [q4, kt], scope=scope)
    scores = g.op("Mul", [scores, g.f(1.0 / math.sqrt(dh))], scope=scope)
    if mask is not None:
        scores = g.op("Where", [mask, g.f(np.finfo(np.float32).min), scores], scope=scope)
    probs = g.op("Softmax", [scores], scope=scope, axis=-1)
    o = g.op("MatMul", [probs, v4], scope=scope)  # [b, h, s, dh]
    o = g.op("Transpose", [o], scope=scope, perm=[0, 2, 1, 3])  # [b, s, h, dh]
    if dynamic_reshape:
        tgt = g.shape_from(o, [0, 1], [d], scope=scope)
    else:
        tgt = g.i([0, 0, d])
    o = g.op("Reshape", [o, tgt], scope=scope)
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
                tie_embeddings: bool = False) -> onnx.ModelProto:
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
    g = _Graph(seed, weight_dtype)
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
