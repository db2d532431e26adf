"""Random valid ONNX graphs for differential fuzzing of the chunk rewriter (`bench/fuzz.py`).

Why: hand-written tests cover the shapes their authors thought of; random compositions of the ops
`autochunk_onnx/ops.py` knows (broadcasts, reshapes with 0 and -1, attention, reductions and
softmax over random axes, Concat/Split/Slice/Pad/Tile on the chunkable dim) find the rest.

`random_model(seed)` is deterministic. Every model has a residual stream `lead + [S, D]` that a
chain of random blocks rewrites; `S` is often symbolic (`seq`), and every dim is tracked as
`coef * S + const` so the graph stays valid at any length (`at_length` gives the input shapes at
another one). Sizes make one intermediate clearly the largest (attention scores, an MLP or a pair
tensor) while a run takes milliseconds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INT_MAX = 2**62
NEG = -1e4  # additive mask value, representable in float16
VOCAB = 50  # rows of the embedding table: token ids are drawn below it


@dataclass(frozen=True)
class Dim:
    """A dim as `coef * S + const`, S the sequence length: known at every length."""

    coef: int
    const: int

    def at(self, s: int) -> int:
        return self.coef * s + self.const

    @property
    def static(self) -> bool:
        return self.coef == 0

    def __mul__(self, k: int) -> "Dim":
        return Dim(self.coef * k, self.const * k)

    def __add__(self, o: "Dim") -> "Dim":
        return Dim(self.coef + o.coef, self.const + o.const)


Shape = tuple[Dim, ...]
SEQ = Dim(1, 0)


def st(n: int) -> Dim:
    return Dim(0, n)


def ones_like(shape: Shape) -> Shape:
    return tuple(st(1) for _ in shape)


@dataclass
class Builder:
    """Accumulates nodes, initializers and the symbolic shape and dtype of every tensor."""

    rng: np.random.Generator
    opset: int
    elem: int  # the model's float type
    s_name: str | None  # dim_param of S, None when S is static
    s1: int
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    shape: dict = field(default_factory=dict)
    dtype: dict = field(default_factory=dict)
    count: int = 0

    @property
    def np_float(self):
        return np.float16 if self.elem == TensorProto.FLOAT16 else np.float32

    def fresh(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def node(self, op: str, inputs: list[str], shapes: list[Shape] | Shape, dtype: int | None = None,
             **attrs) -> str | list[str]:
        """Add a node; `shapes` (one per output) are what the generator expects, recorded for later blocks."""
        multi = bool(shapes) and isinstance(shapes[0], tuple)
        outs_shapes = list(shapes) if multi else [shapes]
        name = self.fresh(op)
        outs = [f"{name}_out{k}" for k in range(len(outs_shapes))]
        et = dtype if dtype is not None else self._data_type(inputs)
        for o, s in zip(outs, outs_shapes):
            self.shape[o], self.dtype[o] = tuple(s), et
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs if multi else outs[0]

    def _data_type(self, inputs: list[str]) -> int:
        """An output's default dtype: that of the first non-bool input (Where's condition is not data)."""
        types = [self.dtype.get(i, self.elem) for i in inputs]
        return next((t for t in types if t != TensorProto.BOOL), self.elem)

    def const(self, value, dtype=np.int64) -> str:
        arr = np.asarray(value, dtype=dtype)
        name = self.fresh("c")
        self.inits.append(numpy_helper.from_array(arr, name))
        self.shape[name] = tuple(st(d) for d in arr.shape)
        self.dtype[name] = helper.np_dtype_to_tensor_dtype(arr.dtype)
        return name

    def fconst(self, value) -> str:
        return self.const(value, self.np_float)

    def weight(self, shape: tuple[int, ...], fan_in: int | None = None, positive: bool = False) -> str:
        scale = 1.0 / math.sqrt(fan_in) if fan_in else 0.5
        w = self.rng.standard_normal(shape) * scale
        return self.fconst(np.abs(w) + 0.5 if positive else w)

    def add_input(self, name: str, shape: Shape, elem: int) -> str:
        dims = [self.s_name if not d.static and self.s_name else d.at(self.s1) for d in shape]
        self.inputs.append(helper.make_tensor_value_info(name, elem, dims))
        self.shape[name], self.dtype[name] = tuple(shape), elem
        return name

    def value_info(self, name: str) -> onnx.ValueInfoProto:
        """Declared type of a graph output: `seq` where it is S itself, unnamed for 2S, S-1, ..."""
        dims = [d.const if d.static else d.at(self.s1) if self.s_name is None else
                self.s_name if d == SEQ else None for d in self.shape[name]]
        return helper.make_tensor_value_info(name, self.dtype[name], dims)

    def pick(self, options, p=None):
        return options[int(self.rng.choice(len(options), p=p))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)


# ----------------------------------------------------------------------------- shape helpers

def broadcast(a: Shape, b: Shape) -> Shape:
    """numpy broadcasting of two symbolic shapes (the generator only builds compatible pairs)."""
    r = max(len(a), len(b))
    a = (st(1),) * (r - len(a)) + tuple(a)
    b = (st(1),) * (r - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        assert x == y or x == st(1) or y == st(1), (a, b)
        out.append(y if x == st(1) else x)
    return tuple(out)


def operand_shape(b: Builder, shape: Shape, allow_dynamic: bool = False) -> Shape:
    """A random operand shape that broadcasts to `shape`: a suffix, some dims 1 (dynamic ones always)."""
    k = int(b.rng.integers(0, len(shape) + 1))
    suffix = shape[len(shape) - k:]
    return tuple(d if (d.static or allow_dynamic) and not b.chance(0.4) else st(1) for d in suffix)


def dim_prod(dims: Shape) -> Dim:
    """Product of dims of which at most one is dynamic (still linear in S)."""
    out = st(1)
    for d in dims:
        assert out.static or d.static, dims
        out = d * out.const if out.static else out * d.const
    return out


def reshape_target(b: Builder, src: Shape, dst: Shape) -> str:
    """A Reshape target for `dst`: 0 where a dim is copied in place, ints for static dims, one -1."""
    vals: list[int | None] = []
    for i, d in enumerate(dst):
        copy = i < len(src) and src[i] == d
        if copy and (not d.static or b.chance(0.5)):
            vals.append(0)
        elif d.static:
            vals.append(d.const)
        else:
            vals.append(None)
    holes = [i for i, v in enumerate(vals) if v is None]
    assert len(holes) <= 1, (src, dst)
    if not holes:  # a static or copied dim may still be -1
        cand = [i for i, v in enumerate(vals) if v != 0 and dst[i].const != 0]
        if cand and b.chance(0.5):
            holes = [b.pick(cand)]
    if holes:
        vals[holes[0]] = -1
    return b.const(vals)


def reshape(b: Builder, x: str, dst: Shape) -> str:
    return b.node("Reshape", [x, reshape_target(b, b.shape[x], dst)], tuple(dst))


def unsqueeze(b: Builder, x: str, axes: list[int]) -> str:
    shape = list(b.shape[x])
    for a in sorted(axes):
        shape.insert(a, st(1))
    return b.node("Unsqueeze", [x, b.const(axes)], tuple(shape))


def squeeze(b: Builder, x: str, axes: list[int]) -> str:
    shape = [d for i, d in enumerate(b.shape[x]) if i not in axes]
    return b.node("Squeeze", [x, b.const(axes)], tuple(shape))


def transpose(b: Builder, x: str, perm: list[int]) -> str:
    s = b.shape[x]
    return b.node("Transpose", [x], tuple(s[p] for p in perm), perm=perm)


def reduce(b: Builder, op: str, x: str, axes: list[int], keepdims: int) -> str:
    """A Reduce* node with axes as input (opset 18, or ReduceSum from 13) or as attribute (older)."""
    s = b.shape[x]
    rank = len(s)
    norm = sorted(a % rank for a in axes)
    out = tuple(st(1) if i in norm else d for i, d in enumerate(s) if keepdims or i not in norm)
    if b.opset >= 18 or op == "ReduceSum":
        return b.node(op, [x, b.const(axes)], out, keepdims=keepdims)
    return b.node(op, [x], out, axes=axes, keepdims=keepdims)


def shape_of(b: Builder, x: str) -> str:
    return b.node("Shape", [x], (st(len(b.shape[x])),), dtype=TensorProto.INT64)


def binary(b: Builder, op: str, x: str, y: str) -> str:
    return b.node(op, [x, y], broadcast(b.shape[x], b.shape[y]))


def unary(b: Builder, op: str, x: str, **attrs) -> str:
    return b.node(op, [x], b.shape[x], **attrs)


# ----------------------------------------------------------------------------- elementwise

SAFE_UNARY = ["Relu", "Tanh", "Sigmoid", "Neg", "Abs", "Erf", "Sin", "Cos", "Softplus", "Softsign",
              "Identity", "Atan", "LeakyRelu", "Elu", "Selu", "HardSigmoid", "HardSwish", "Celu"]
FP16_UNARY = ["Relu", "Tanh", "Sigmoid", "Neg", "Abs", "Erf", "Softplus", "LeakyRelu", "Identity"]


def random_unary(b: Builder, x: str) -> str:
    """A bounded-output unary op (or a guarded Exp/Log/Sqrt/Reciprocal/Pow/Clip/Cast round trip)."""
    fp16 = b.elem == TensorProto.FLOAT16
    # float16: bounded ops only. Its last bit at magnitude 16 is 0.016, more than the fp16
    # tolerance, so values that grow (Pow, Exp) make reordered sums look like mismatches.
    kind = b.pick(["plain", "guarded", "clip", "cast"] if not fp16 else ["plain", "clip"])
    if kind == "plain":
        op = b.pick(FP16_UNARY if fp16 else SAFE_UNARY + (["Mish"] if b.opset >= 18 else []) + ["Dropout"])
        if op == "Dropout":  # inference: identity, with an optional ratio input
            return b.node("Dropout", [x, b.fconst(0.3)], b.shape[x])
        return unary(b, op, x)
    if kind == "guarded":
        g = b.pick(["Exp", "Log", "Sqrt", "Reciprocal", "Pow"])
        if g == "Exp":
            return unary(b, "Exp", unary(b, "Tanh", x))
        pos = binary(b, "Add", unary(b, "Abs", x), b.fconst(1.0))
        if g == "Pow":
            return binary(b, "Pow", pos, b.fconst(b.pick([0.5, 2.0, 1.5])))
        return unary(b, g, pos)
    if kind == "clip":
        return b.node("Clip", [x, b.fconst(-1.5), b.fconst(2.0)], b.shape[x])
    # float64 and back: exact. (A float16 round trip inside a float32 model turns the last-bit
    # differences of a chunked MatMul into float16 steps, beyond the float32 tolerance.)
    to = TensorProto.DOUBLE
    y = b.node("Cast", [x], b.shape[x], dtype=to, to=to)
    y = b.node(b.pick(["Tanh", "Relu"]), [y], b.shape[y], dtype=to)
    return b.node("Cast", [y], b.shape[y], dtype=b.elem, to=b.elem)


def random_binary(b: Builder, x: str, other: str | None = None) -> str:
    """x op w, w a broadcast weight (or `other`), either side; divisions and powers kept finite."""
    w = other if other is not None else b.weight(tuple(d.const for d in operand_shape(b, b.shape[x])))
    op = b.pick(["Add", "Sub", "Mul", "Div", "Max", "Min", "Where", "PRelu", "Sum"])
    if op == "Sum":  # variadic, three operands
        vop = b.pick(["Sum", "Mean", "Max", "Min"])
        v = b.weight(tuple(d.const for d in operand_shape(b, b.shape[x])))
        return b.node(vop, [x, w, v], broadcast(broadcast(b.shape[x], b.shape[w]), b.shape[v]))
    if op == "Div":
        den = binary(b, "Add", unary(b, "Abs", w), b.fconst(1.0))
        return binary(b, "Div", x, den)
    if op == "Where":  # continuous: the two branches agree where the condition flips
        cond = b.node("Greater", [x, w], broadcast(b.shape[x], b.shape[w]), dtype=TensorProto.BOOL)
        return b.node("Where", [cond, x, w], broadcast(b.shape[x], b.shape[w]))
    if op == "PRelu" and broadcast(b.shape[x], b.shape[w]) == b.shape[x]:
        return b.node("PRelu", [x, w], b.shape[x])
    if op == "PRelu":
        op = "Add"
    args = [x, w] if b.chance(0.5) else [w, x]
    return binary(b, op, *args)


def elementwise_chain(b: Builder, x: str, n: int, extra: str | None = None) -> str:
    for _ in range(n):
        if b.chance(0.45):
            x = random_unary(b, x)
        else:
            use_extra = extra is not None and b.chance(0.5) and _fits(b, b.shape[extra], b.shape[x])
            x = random_binary(b, x, extra if use_extra else None)
    return x


def _fits(b: Builder, small: Shape, big: Shape) -> bool:
    """`small` broadcasts to `big` without growing it."""
    if len(small) > len(big):
        return False
    return all(s == d or s == st(1) for s, d in zip(small[::-1], big[::-1]))


# ----------------------------------------------------------------------------- projections

def project(b: Builder, x: str, din: int, dout: int, bias: bool | None = None) -> str:
    """x[..., din] -> [..., dout] by MatMul (2-D or broadcast 3-D weight), Einsum or Gemm."""
    s = b.shape[x]
    kind = b.pick(["matmul", "matmul3d", "einsum", "gemm"], p=[0.5, 0.1, 0.2, 0.2])
    if kind == "gemm":
        return _gemm(b, x, din, dout)
    out_shape = s[:-1] + (st(dout),)
    if kind == "einsum":
        w = b.weight((din, dout), din)
        letters = "abcdefg"[:len(s) - 1]
        eq = f"{letters}x,xy->{letters}y" if b.chance(0.6) else "...x,xy->...y"
        y = b.node("Einsum", [x, w], out_shape, equation=eq)
    elif kind == "matmul3d" and len(s) >= 3:
        g = s[-3].const if s[-3].static and b.chance(0.5) else 1
        w = b.weight((g, din, dout), din)
        y = b.node("MatMul", [x, w], out_shape)
    else:
        y = b.node("MatMul", [x, b.weight((din, dout), din)], out_shape)
    if b.chance(0.6) if bias is None else bias:
        y = binary(b, "Add", y, b.weight((dout,)))
    return y


def _gemm(b: Builder, x: str, din: int, dout: int) -> str:
    """Flatten to 2-D, Gemm (random transA, transB, alpha, bias), restore the leading dims from Shape(x)."""
    s = b.shape[x]
    rows = dim_prod(s[:-1])
    if len(s) == 2:
        x2 = x
    elif b.chance(0.5):
        x2 = b.node("Flatten", [x], (rows, st(din)), axis=len(s) - 1)
    else:
        x2 = b.node("Reshape", [x, b.const([-1, din])], (rows, st(din)))
    trans_a, trans_b = int(b.chance(0.25)), int(b.chance(0.5))
    if trans_a:
        x2 = transpose(b, x2, [1, 0])
    w = b.weight((dout, din) if trans_b else (din, dout), din)
    ins = [x2, w] + ([b.weight((dout,))] if b.chance(0.7) else [])
    y = b.node("Gemm", ins, (rows, st(dout)), transA=trans_a, transB=trans_b, alpha=float(b.pick([1.0, 0.5])))
    if len(s) == 2:
        return y
    lead = b.node("Slice", [shape_of(b, x), b.const([0]), b.const([len(s) - 1])], (st(len(s) - 1),),
                  dtype=TensorProto.INT64)
    target = b.node("Concat", [lead, b.const([dout])], (st(len(s)),), dtype=TensorProto.INT64, axis=0)
    return b.node("Reshape", [y, target], s[:-1] + (st(dout),))


# ----------------------------------------------------------------------------- model context

@dataclass
class Ctx:
    """What blocks share: layout of the stream, the lazily built shared mask, side tensors."""

    lead: Shape
    d: int
    mask_src: str | None = None  # an input mask [lead0?, S]
    mask_kind: str = "none"
    mask: str | None = None  # additive float mask, broadcastable to lead + [H, S, S]
    extra: str | None = None  # an extra float input broadcastable to the stream
    memory: str | None = None  # cross-attention source lead + [T, D]
    raw: str | None = None  # the stream as it enters the first block
    side: list = field(default_factory=list)  # candidates for extra graph outputs

    @property
    def seq_axis(self) -> int:
        return len(self.lead)

    @property
    def stream(self) -> Shape:
        return self.lead + (SEQ, st(self.d))


def shared_mask(b: Builder, ctx: Ctx, x: str) -> str | None:
    """The additive mask, built once and reused by every attention layer."""
    if ctx.mask is not None or ctx.mask_kind == "none":
        return ctx.mask
    if ctx.mask_kind == "padding":
        m = ctx.mask_src
        if b.dtype[m] != b.elem:
            m = b.node("Cast", [m], b.shape[m], dtype=b.elem, to=b.elem)
        inv = binary(b, "Sub", b.fconst(1.0), m)
        add = binary(b, "Mul", inv, b.fconst(NEG))
        if ctx.lead:  # [B, S] -> [B, 1, .., 1, S] against lead + [H, S, S]
            add = unsqueeze(b, add, list(range(1, len(ctx.lead) + 2)))
        ctx.mask = add
    else:
        ctx.mask = _causal(b, ctx, x)
    return ctx.mask


def _causal(b: Builder, ctx: Ctx, x: str) -> str:
    """[S, S] causal mask from the run-time length: Trilu of ones, or Range + Less + Where."""
    n = b.node("Gather", [shape_of(b, x), b.const(ctx.seq_axis)], (), dtype=TensorProto.INT64, axis=0)
    if b.chance(0.5):
        n1 = unsqueeze(b, n, [0])
        ss = b.node("Concat", [n1, n1], (st(2),), dtype=TensorProto.INT64, axis=0)
        ones = b.node("ConstantOfShape", [ss], (SEQ, SEQ), dtype=b.elem,
                      value=numpy_helper.from_array(np.ones(1, b.np_float)))
        tri = b.node("Trilu", [ones], (SEQ, SEQ), upper=0)
        return binary(b, "Mul", binary(b, "Sub", b.fconst(1.0), tri), b.fconst(NEG))
    r = b.node("Range", [b.const(0), n, b.const(1)], (SEQ,), dtype=TensorProto.INT64)
    row, col = unsqueeze(b, r, [1]), unsqueeze(b, r, [0])
    future = b.node("Less", [row, col], (SEQ, SEQ), dtype=TensorProto.BOOL)
    return b.node("Where", [future, b.fconst(NEG), b.fconst(0.0)], (SEQ, SEQ), dtype=b.elem)


# ----------------------------------------------------------------------------- blocks

def heads_of(b: Builder, d: int) -> int:
    return b.pick([h for h in (1, 2, 4, 8) if d % h == 0 and d // h >= 2])


def split_heads(b: Builder, x: str, h: int, key_t: bool = False) -> str:
    """lead + [S, D] -> lead + [H, S, Dh] (or lead + [H, Dh, S] for K^T)."""
    s = b.shape[x]
    lead, d = s[:-2], s[-1].const
    y = reshape(b, x, lead + (s[-2], st(h), st(d // h)))
    L = len(lead)
    perm = list(range(L)) + ([L + 1, L + 2, L] if key_t else [L + 1, L, L + 2])
    return transpose(b, y, perm)


def merge_heads(b: Builder, x: str) -> str:
    s = b.shape[x]
    L = len(s) - 3
    y = transpose(b, x, list(range(L)) + [L + 1, L, L + 2])
    ys = b.shape[y]
    return reshape(b, y, ys[:-2] + (st(ys[-2].const * ys[-1].const),))


def attention_block(b: Builder, ctx: Ctx, x: str) -> str:
    """QK^T, scale, shared or local mask, softmax, @V, merge heads, projection, residual."""
    d, h = ctx.d, heads_of(b, ctx.d)
    src = ctx.memory if ctx.memory is not None and b.chance(0.4) else x
    q, k, v = project(b, x, d, d), project(b, src, d, d), project(b, src, d, d)
    qh, vh = split_heads(b, q, h), split_heads(b, v, h)
    scaled = b.chance(0.3)
    if scaled:  # scale Q before the product
        qh = binary(b, "Mul", qh, b.fconst(1.0 / math.sqrt(d // h)))
    lead = "abcd"[:len(b.shape[qh]) - 3]
    if b.chance(0.3):
        kh = split_heads(b, k, h)
        scores = b.node("Einsum", [qh, kh], b.shape[qh][:-1] + (b.shape[kh][-2],),
                        equation=f"{lead}hqd,{lead}hkd->{lead}hqk")
    else:
        kt = split_heads(b, k, h, key_t=True)
        scores = b.node("MatMul", [qh, kt], b.shape[qh][:-1] + (b.shape[kt][-1],))
    if not scaled:
        div = b.chance(0.5)
        factor = math.sqrt(d // h) if div else 1.0 / math.sqrt(d // h)
        scores = binary(b, "Div" if div else "Mul", scores, b.fconst(factor))
    scores = _mask_scores(b, ctx, x, scores, src is x)
    probs = b.node("Softmax", [scores], b.shape[scores], axis=-1)
    if b.chance(0.05):
        ctx.side.append(probs)
    out_shape = b.shape[probs][:-1] + (b.shape[vh][-1],)
    if b.chance(0.25):
        out = b.node("Einsum", [probs, vh], out_shape, equation=f"{lead}hqk,{lead}hkd->{lead}hqd")
    else:
        out = b.node("MatMul", [probs, vh], out_shape)
    return binary(b, "Add", x, project(b, merge_heads(b, out), d, d))


def _mask_scores(b: Builder, ctx: Ctx, x: str, scores: str, self_attn: bool) -> str:
    """Shared additive mask, a Where on a bool mask, a Trilu of the scores, or nothing."""
    kind = b.pick(["shared", "trilu", "where", "none"], p=[0.55, 0.15, 0.1, 0.2]) if self_attn else "none"
    if kind == "shared":
        m = shared_mask(b, ctx, x)
        return binary(b, "Add", scores, m) if m is not None else scores
    if kind == "trilu":
        return b.node("Trilu", [scores, b.const(int(b.rng.integers(-1, 2)))], b.shape[scores], upper=int(b.chance(0.3)))
    if kind == "where":
        m = shared_mask(b, ctx, x)
        if m is None:
            return scores
        cond = b.node("Less", [m, b.fconst(NEG / 2)], b.shape[m], dtype=TensorProto.BOOL)
        return b.node("Where", [cond, b.fconst(NEG), scores], broadcast(b.shape[cond], b.shape[scores]))
    return scores


def mlp_block(b: Builder, ctx: Ctx, x: str) -> str:
    """Norm, up-projection (the large intermediate), activation (maybe gated), down, residual."""
    d = ctx.d
    f = d * b.pick([2, 4, 8])
    hidden = _norm(b, x)
    u = project(b, hidden, d, f)
    u = elementwise_chain(b, u, int(b.rng.integers(1, 3)))
    if b.chance(0.15):
        u = token_shift(b, u, ctx.seq_axis)
    if b.chance(0.3):
        u = binary(b, "Mul", u, unary(b, "Sigmoid", project(b, hidden, d, f)))
    return binary(b, "Add", x, project(b, u, f, d))


def token_shift(b: Builder, x: str, axis: int) -> str:
    """Shift by one position along S with Pad (+1 at the start, -1 at the end: same size)."""
    rank = len(b.shape[x])
    pads = [0] * (2 * rank)
    pads[axis], pads[rank + axis] = 1, -1
    return b.node("Pad", [x, b.const(pads)], b.shape[x], mode="constant")


def _norm(b: Builder, x: str) -> str:
    """LayerNormalization over the last axis, an RMS norm by hand, or nothing."""
    d = b.shape[x][-1].const
    kind = b.pick(["ln", "rms", "none"], p=[0.5, 0.25, 0.25])
    if kind == "ln":
        ins = [x, b.weight((d,), positive=True)] + ([b.weight((d,))] if b.chance(0.7) else [])
        return b.node("LayerNormalization", ins, b.shape[x], axis=-1, epsilon=1e-5)
    if kind == "rms":
        ms = reduce(b, "ReduceMean", binary(b, "Mul", x, x), [-1], 1)
        return binary(b, "Div", x, unary(b, "Sqrt", binary(b, "Add", ms, b.fconst(1e-5))))
    return x


def reduce_block(b: Builder, ctx: Ctx, x: str) -> str:
    """A reduction over random axes (often the chunkable one), brought back by broadcasting."""
    s = b.shape[x]
    rank = len(s)
    k = int(b.rng.integers(1, rank + 1))
    axes = sorted(int(a) for a in b.rng.choice(rank, size=k, replace=False))
    axes = [a - rank if b.chance(0.3) else a for a in axes]
    op = b.pick(["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceSumSquare",
                 "ReduceLogSumExp", "ReduceL1"])
    keep = int(b.chance(0.6))
    if b.chance(0.15):  # no axes: every axis
        r = b.node(op, [x], ones_like(s), keepdims=1)
    else:
        r = reduce(b, op, x, axes, keep)
    if not keep and b.shape[r] != ones_like(s):
        r = unsqueeze(b, r, sorted(a % rank for a in axes))
    if op in ("ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSumExp"):  # grow with the size
        r = unary(b, "Tanh", binary(b, "Mul", r, b.fconst(0.05)))
    return binary(b, b.pick(["Sub", "Add", "Mul"]), x, r)


def softmax_block(b: Builder, ctx: Ctx, x: str) -> str:
    """Softmax/LogSoftmax/LayerNormalization over a random axis (the chunkable one included)."""
    s = b.shape[x]
    rank = len(s)
    axis = int(b.rng.integers(-rank, rank))
    kind = b.pick(["Softmax", "LogSoftmax", "LayerNormalization"])
    if kind == "LayerNormalization":
        norm = s[axis % rank:]
        if all(d.static for d in norm):
            scale = b.weight(tuple(d.const for d in norm), positive=True)
            return binary(b, "Add", x, b.node(kind, [x, scale], s, axis=axis))
        kind = "Softmax"
    y = b.node(kind, [x], s, axis=axis)
    if kind == "LogSoftmax":
        y = unary(b, "Exp", y)
    return binary(b, "Mul", x, binary(b, "Add", y, b.fconst(0.5)))


def transpose_block(b: Builder, ctx: Ctx, x: str) -> str:
    """A random permutation, elementwise work in it, and the inverse permutation."""
    rank = len(b.shape[x])
    perm = [int(p) for p in b.rng.permutation(rank)]
    y = transpose(b, x, perm)
    y = elementwise_chain(b, y, int(b.rng.integers(1, 3)))
    inv = [perm.index(i) for i in range(rank)]
    return transpose(b, y, inv)


def reshape_block(b: Builder, ctx: Ctx, x: str) -> str:
    """Split the feature dim, merge it into S, or merge the batch into S, and back."""
    s = b.shape[x]
    lead, seq, d = s[:-2], s[-2], s[-1].const
    kind = b.pick(["split", "merge_seq", "merge_lead", "flatten"])
    if kind == "split" or d < 4:
        a = b.pick([f for f in (2, 4) if d % f == 0] or [1])
        y = reshape(b, x, lead + (seq, st(a), st(d // a)))
        y = elementwise_chain(b, y, 1)
        return reshape(b, y, s)
    if kind == "merge_seq":
        a = b.pick([f for f in (2, 4) if d % f == 0])
        y = reshape(b, x, lead + (seq * a, st(d // a)))
        y = elementwise_chain(b, y, 1)
        return reshape(b, y, s)
    if kind == "merge_lead" and lead:
        merged = seq * math.prod(dd.const for dd in lead) if all(dd.static for dd in lead) else None
        if merged is not None:
            y = reshape(b, x, (merged, st(d)))
            y = elementwise_chain(b, y, 1)
            return reshape(b, y, s)
    y = b.node("Flatten", [x], (seq * _static_prod(lead), st(d)), axis=len(s) - 1) \
        if all(dd.static for dd in lead) else x
    y = elementwise_chain(b, y, 1)
    return reshape(b, y, s) if y != x else y


def _static_prod(dims: Shape) -> int:
    return math.prod(d.const for d in dims)


def unsqueeze_block(b: Builder, ctx: Ctx, x: str) -> str:
    """Unsqueeze a new axis, Expand it (static target with 1s), weight it, reduce or squeeze back."""
    s = b.shape[x]
    a = int(b.rng.integers(0, len(s) + 1))
    y = unsqueeze(b, x, [a])
    if b.chance(0.5):
        k = int(b.rng.integers(2, 4))
        target = [1] * (len(s) + 1)
        target[a] = k
        ys = list(b.shape[y])
        ys[a] = st(k)
        y = b.node("Expand", [y, b.const(target)], tuple(ys))
        wshape = [1] * (len(s) + 1)
        wshape[a] = k
        y = binary(b, "Mul", y, b.weight(tuple(wshape)))
        return reduce(b, b.pick(["ReduceMean", "ReduceMax", "ReduceSum"]), y, [a], 0)
    y = elementwise_chain(b, y, 1)
    return squeeze(b, y, [a])


def expand_block(b: Builder, ctx: Ctx, x: str) -> str:
    """Expand to the stream's run-time shape (Shape -> Expand): a per-row statistic, or a weight
    (then nothing sliced carries S into the loop: its length comes from the Shape alone)."""
    if b.chance(0.4):
        e = b.node("Expand", [b.weight((1,) * (len(b.shape[x]) - 1) + (ctx.d,)), shape_of(b, x)], b.shape[x])
        f = ctx.d * b.pick([4, 8])
        h = project(b, elementwise_chain(b, project(b, e, ctx.d, f), 1), f, ctx.d)
        return binary(b, "Add", x, h)
    r = reduce(b, "ReduceMean", x, [-1], 1)
    r = unary(b, "Tanh", r)
    e = b.node("Expand", [r, shape_of(b, x)], b.shape[x])
    return binary(b, "Add", x, e)


def concat_split_block(b: Builder, ctx: Ctx, x: str) -> str:
    """Concat with a transformed copy on a random axis, then Split (equal or not) and combine."""
    s = b.shape[x]
    rank = len(s)
    axis = int(b.rng.integers(0, rank))
    y = elementwise_chain(b, x, 1)
    out_shape = tuple(d + d if i == axis else d for i, d in enumerate(s))
    c = b.node("Concat", [x, y], out_shape, axis=axis - rank if b.chance(0.3) else axis)
    c = elementwise_chain(b, c, 1)
    if axis == rank - 1 and b.chance(0.5):  # unequal split of the feature dim, then project back
        d2 = 2 * s[-1].const
        cut = int(b.rng.integers(1, d2))
        parts = b.node("Split", [c, b.const([cut, d2 - cut])],
                       [s[:-1] + (st(cut),), s[:-1] + (st(d2 - cut),)], axis=axis)
        p0 = project(b, parts[0], cut, s[-1].const)
        p1 = project(b, parts[1], d2 - cut, s[-1].const)
        return binary(b, "Add", p0, p1)
    attrs = {"num_outputs": 2} if b.opset >= 18 else {}
    parts = b.node("Split", [c], [s, s], axis=axis, **attrs)
    return binary(b, b.pick(["Add", "Mul", "Sub"]), parts[0], parts[1])


def slice_block(b: Builder, ctx: Ctx, x: str) -> str:
    """Slice the feature dim (maybe reversed) and project back, or slice S partly and Pad it back."""
    s = b.shape[x]
    rank = len(s)
    kind = b.pick(["feature", "seq_full", "seq_partial", "reverse"])
    if kind == "feature" and s[-1].const > 2:
        d = s[-1].const
        lo = int(b.rng.integers(0, d // 2))
        hi = int(b.rng.integers(lo + 1, d + 1))
        y = b.node("Slice", [x, b.const([lo]), b.const([hi]), b.const([-1])], s[:-1] + (st(hi - lo),))
        return binary(b, "Add", x, project(b, y, hi - lo, d))
    if kind == "seq_full":  # whole along S (start 0, end past it), partial along the feature dim
        d = s[-1].const
        y = b.node("Slice", [x, b.const([0, 0]), b.const([INT_MAX, d - 1]), b.const([ctx.seq_axis, rank - 1])],
                   s[:-1] + (st(d - 1),))
        pad = [0] * (2 * rank)
        pad[rank + rank - 1] = 1
        return binary(b, "Mul", x, b.node("Pad", [y, b.const(pad), b.fconst(1.0)], s, mode="constant"))
    if kind == "seq_partial":
        y = b.node("Slice", [x, b.const([1]), b.const([INT_MAX]), b.const([ctx.seq_axis])],
                   tuple(d + Dim(0, -1) if i == ctx.seq_axis else d for i, d in enumerate(s)))
        pad = [0] * (2 * rank)
        pad[ctx.seq_axis + rank] = 1  # pad the end: a shift by one position
        mode = b.pick(["constant", "edge", "reflect"])
        return binary(b, "Add", x, b.node("Pad", [y, b.const(pad)], s, mode=mode))
    y = b.node("Slice", [x, b.const([-1]), b.const([-INT_MAX]), b.const([-1]), b.const([-1])], s)
    return binary(b, "Add", x, unary(b, "Tanh", y))


def gather_block(b: Builder, ctx: Ctx, x: str) -> str:
    """Gather features by a constant index vector or matrix, or gather one position of S."""
    s = b.shape[x]
    d = s[-1].const
    kind = b.pick(["perm", "matrix", "position", "elements", "argmax", "rows"])
    if kind == "rows":
        return binary(b, "Add", x, _gather_rows(b, ctx, x))
    if kind == "perm":
        idx = b.const(b.rng.integers(-d, d, size=d))
        return binary(b, "Add", x, b.node("Gather", [x, idx], s, axis=len(s) - 1))
    if kind == "matrix":
        idx = b.const(b.rng.integers(0, d, size=(d, 2)))
        y = b.node("Gather", [x, idx], s + (st(2),), axis=len(s) - 1)
        return binary(b, "Add", x, reduce(b, "ReduceMean", y, [-1], 0))
    if kind == "position":
        pos = b.const(b.pick([0, -1]))
        y = b.node("Gather", [x, pos], s[:ctx.seq_axis] + s[ctx.seq_axis + 1:], axis=ctx.seq_axis)
        return binary(b, "Add", x, unsqueeze(b, y, [ctx.seq_axis]))
    if kind == "elements":
        return binary(b, "Add", x, _gather_elements(b, x))
    # ArgMax of the raw input (exact: no reordered sums upstream that could break a tie)
    am = b.node(b.pick(["ArgMax", "ArgMin"]), [ctx.raw], s[:-1] + (st(1),), dtype=TensorProto.INT64, axis=-1, keepdims=1)
    am = b.node("Cast", [am], b.shape[am], dtype=b.elem, to=b.elem)
    return binary(b, "Add", x, binary(b, "Mul", am, b.fconst(1.0 / d)))


def _gather_rows(b: Builder, ctx: Ctx, x: str) -> str:
    """GatherElements on the feature axis with one index row fewer than data rows along S (the
    indices Expanded to the run-time shape, then sliced), wide (a large output), projected,
    padded back to S rows."""
    s = b.shape[x]
    L, d, w = ctx.seq_axis, s[-1].const, s[-1].const * b.pick([16, 32])
    idx = b.const(b.rng.integers(-d, d, size=(1,) * (len(s) - 1) + (w,)))
    lead = b.node("Slice", [shape_of(b, x), b.const([0]), b.const([len(s) - 1])], (st(len(s) - 1),),
                  dtype=TensorProto.INT64)
    target = b.node("Concat", [lead, b.const([w])], (st(len(s)),), dtype=TensorProto.INT64, axis=0)
    idx = b.node("Expand", [idx, target], s[:-1] + (st(w),), dtype=TensorProto.INT64)
    fewer = tuple(dd + Dim(0, -1) if i == L else dd for i, dd in enumerate(s[:-1]))
    idx = b.node("Slice", [idx, b.const([1]), b.const([INT_MAX]), b.const([L])], fewer + (st(w),))
    y = b.node("GatherElements", [x, idx], fewer + (st(w),), dtype=b.elem, axis=len(s) - 1)
    y = b.node("MatMul", [y, b.weight((w, d), w)], fewer + (st(d),))
    pads = [0] * (2 * len(s))
    pads[len(s) + L] = 1
    return b.node("Pad", [y, b.const(pads)], s, mode="constant")


def _gather_elements(b: Builder, x: str) -> str:
    """GatherElements on the feature axis with k indices per row, Expanded to the run-time shape."""
    s = b.shape[x]
    d, k = s[-1].const, int(b.rng.integers(1, 4))
    idx = b.const(b.rng.integers(-d, d, size=(1,) * (len(s) - 1) + (k,)))
    lead = b.node("Slice", [shape_of(b, x), b.const([0]), b.const([len(s) - 1])], (st(len(s) - 1),),
                  dtype=TensorProto.INT64)
    target = b.node("Concat", [lead, b.const([k])], (st(len(s)),), dtype=TensorProto.INT64, axis=0)
    idx = b.node("Expand", [idx, target], s[:-1] + (st(k),), dtype=TensorProto.INT64)
    y = b.node("GatherElements", [x, idx], s[:-1] + (st(k),), dtype=b.elem, axis=len(s) - 1)
    return reduce(b, "ReduceMean", y, [-1], 1)


def tile_pad_block(b: Builder, ctx: Ctx, x: str) -> str:
    """Tile or Pad on a random axis, undone by Split/Slice or a projection."""
    s = b.shape[x]
    rank = len(s)
    axis = int(b.rng.integers(0, rank))
    if b.chance(0.5):
        reps = [1] * rank
        reps[axis] = 2
        y = b.node("Tile", [x, b.const(reps)], tuple(d * 2 if i == axis else d for i, d in enumerate(s)))
        y = elementwise_chain(b, y, 1)
        attrs = {"num_outputs": 2} if b.opset >= 18 else {}
        parts = b.node("Split", [y], [s, s], axis=axis, **attrs)
        return binary(b, "Add", parts[0], parts[1])
    pads = [0] * (2 * rank)
    pads[axis], pads[rank + axis] = 1, 2
    ps = tuple(d + st(3) if i == axis else d for i, d in enumerate(s))
    y = b.node("Pad", [x, b.const(pads), b.fconst(0.5)], ps, mode="constant")
    y = elementwise_chain(b, y, 1)
    return b.node("Slice", [y, b.const([1]), b.const([-2]), b.const([axis])], s)


def conv_block(b: Builder, ctx: Ctx, x: str) -> str:
    """1-D convolution over S (same padding, maybe depthwise or pointwise), channels-first."""
    s = b.shape[x]
    d = s[-1].const
    y = x if len(s) >= 3 else unsqueeze(b, x, [0])
    ys = b.shape[y]
    if len(ys) > 3:  # fold extra leading dims into the batch
        lead = ys[:-2]
        y = reshape(b, y, (st(_static_prod(lead)),) + ys[-2:]) if all(dd.static for dd in lead) else None
        if y is None:
            return x
    batch = b.shape[y][0]
    t = transpose(b, y, [0, 2, 1])  # [N, D, S]
    k = b.pick([1, 3, 5])
    group = d if k > 1 and b.chance(0.3) else 1
    c = d if group > 1 else d * b.pick([1, 2])
    w = b.weight((c, d // group, k), d * k // group)
    ins = [t, w] + ([b.weight((c,))] if b.chance(0.6) else [])
    h = b.node("Conv", ins, (batch, st(c), SEQ), pads=[(k - 1) // 2] * 2, group=group, kernel_shape=[k])
    h = unary(b, b.pick(["Relu", "Tanh", "Sigmoid"]), h)
    h = _channels_first_extra(b, h, c)
    w2 = b.weight((d, c, 1), c)
    h = b.node("Conv", [h, w2], (batch, st(d), SEQ), kernel_shape=[1])
    back = transpose(b, h, [0, 2, 1])
    back = reshape(b, back, s) if b.shape[back] != s else back
    return binary(b, "Add", x, back)


def _channels_first_extra(b: Builder, h: str, c: int) -> str:
    """On [N, C, S]: BatchNormalization, InstanceNormalization (stats over S), or Resize x2 + stride-2 Conv."""
    kind = b.pick(["none", "batchnorm", "instancenorm", "resize"])
    s = b.shape[h]
    if kind == "batchnorm":
        ins = [h, b.weight((c,), positive=True), b.weight((c,)), b.weight((c,)), b.weight((c,), positive=True)]
        return b.node("BatchNormalization", ins, s, epsilon=1e-5)
    if kind == "instancenorm":
        return b.node("InstanceNormalization", [h, b.weight((c,), positive=True), b.weight((c,))], s, epsilon=1e-5)
    if kind == "resize":
        up = b.node("Resize", [h, "", b.const([1.0, 1.0, 2.0], np.float32)], s[:2] + (s[2] * 2,), mode="nearest")
        w = b.weight((c, c, 2), 2 * c)
        return b.node("Conv", [up, w], s, kernel_shape=[2], strides=[2])
    return h


def pair_block(b: Builder, ctx: Ctx, x: str) -> str:
    """Outer sum to a pair tensor lead + [S, S, C] (the big one), mix C, reduce over one S."""
    L = ctx.seq_axis
    c = b.pick([4, 8, 16])
    a = project(b, x, ctx.d, c)
    bb = project(b, x, ctx.d, c)
    if b.chance(0.3):
        ao, bo = unsqueeze(b, a, [L + 1]), unsqueeze(b, bb, [L])
        p = binary(b, "Mul", ao, bo)
    else:
        p = binary(b, "Add", unsqueeze(b, a, [L + 1]), unsqueeze(b, bb, [L]))
    p = elementwise_chain(b, p, int(b.rng.integers(1, 3)))
    if b.chance(0.5):
        p = b.node("MatMul", [p, b.weight((c, c), c)], b.shape[p])
    red = b.pick(["ReduceMean", "ReduceMax"] + (["ReduceSum"] if b.elem == TensorProto.FLOAT else []))
    r = reduce(b, red, p, [L + 1], 0)
    if red == "ReduceSum":
        r = binary(b, "Div", r, b.fconst(float(b.s1)))
    return binary(b, "Add", x, project(b, r, c, ctx.d))


def einsum_block(b: Builder, ctx: Ctx, x: str) -> str:
    """Einsum forms other than projections: a row-wise dot, or an S x S similarity applied back."""
    s = b.shape[x]
    letters = "abcd"[:len(s) - 2]
    if b.chance(0.25):  # MatMul with a 1-D right operand: [..., S, D] @ [D] -> [..., S]
        dot = b.node("MatMul", [x, b.weight((ctx.d,), ctx.d)], s[:-1])
        return binary(b, "Add", x, unsqueeze(b, unary(b, "Tanh", dot), [len(s) - 1]))
    if b.chance(0.5):
        y = project(b, x, ctx.d, ctx.d)
        dot = b.node("Einsum", [x, y], s[:-1], equation=f"{letters}sd,{letters}sd->{letters}s")
        return binary(b, "Mul", x, unsqueeze(b, unary(b, "Tanh", dot), [len(s) - 1]))
    sim = b.node("Einsum", [x, x], s[:-1] + (SEQ,), equation=f"{letters}sd,{letters}td->{letters}st")
    sim = b.node("Softmax", [binary(b, "Mul", sim, b.fconst(1.0 / ctx.d))], b.shape[sim], axis=-1)
    y = b.node("Einsum", [sim, x], s, equation=f"{letters}st,{letters}td->{letters}sd")
    return binary(b, "Add", x, y)


def elementwise_block(b: Builder, ctx: Ctx, x: str) -> str:
    return elementwise_chain(b, x, int(b.rng.integers(1, 5)), ctx.extra)


def trilu_block(b: Builder, ctx: Ctx, x: str) -> str:
    """Trilu on the stream's last two dims [S, D]: row-dependent, so never chunkable along S."""
    k = b.const(int(b.rng.integers(-2, 3)))
    return binary(b, "Add", x, b.node("Trilu", [x, k], b.shape[x], upper=int(b.chance(0.5))))


def conv2d_block(b: Builder, ctx: Ctx, x: str) -> str:
    """2-D Conv (and GroupNormalization from opset 21) on a channels-first pair map [N, C, S, S]
    made from the stream by an outer sum, averaged back over one S."""
    s = b.shape[x]
    if len(s) != 3:
        return conv_block(b, ctx, x)
    c = b.pick([4, 8])
    a = transpose(b, project(b, x, ctx.d, c), [0, 2, 1])  # [N, c, S]
    p = binary(b, "Add", unsqueeze(b, a, [3]), unsqueeze(b, a, [2]))  # [N, c, S, S]
    k = b.pick([1, 3]) if b.s1 <= 256 else 1
    ins = [p, b.weight((c, c, k, k), c * k * k)] + ([b.weight((c,))] if b.chance(0.5) else [])
    h = b.node("Conv", ins, b.shape[p], pads=[(k - 1) // 2] * 4, kernel_shape=[k, k])
    if b.opset >= 21 and b.elem == TensorProto.FLOAT:  # opset 18's version is deprecated
        g = b.pick([1, 2, c])
        h = b.node("GroupNormalization", [h, b.weight((c,), positive=True), b.weight((c,))], b.shape[h],
                   num_groups=g, epsilon=1e-5)
    h = unary(b, b.pick(["Relu", "Tanh"]), h)
    back = transpose(b, reduce(b, "ReduceMean", h, [3], 0), [0, 2, 1])  # [N, S, c]
    return binary(b, "Add", x, project(b, back, c, ctx.d))


def attention23_block(b: Builder, ctx: Ctx, x: str) -> str:
    """ONNX's own Attention op (opset 23) on [N, H, S, Dh] heads: shared mask, is_causal, or none."""
    if len(b.shape[x]) != 3 or b.opset < 23 or b.elem != TensorProto.FLOAT:
        return attention_block(b, ctx, x)
    d, h = ctx.d, heads_of(b, ctx.d)
    q, k, v = (split_heads(b, project(b, x, d, d), h) for _ in range(3))
    ins, attrs = [q, k, v], {}
    m = shared_mask(b, ctx, x) if b.chance(0.6) else None
    if m is not None and b.shape[m][-2] != SEQ:
        # ORT 1.31's Attention wants the mask's query dim in full (the spec allows broadcasting it)
        n = unsqueeze(b, b.node("Gather", [shape_of(b, x), b.const(ctx.seq_axis)], (), dtype=TensorProto.INT64, axis=0), [0])
        ss = b.node("Concat", [n, n], (st(2),), dtype=TensorProto.INT64, axis=0)
        zeros = b.node("ConstantOfShape", [ss], (SEQ, SEQ), dtype=b.elem, value=numpy_helper.from_array(np.zeros(1, b.np_float)))
        m = binary(b, "Add", m, zeros)
    if m is not None:
        ins.append(m)
    elif b.chance(0.5):
        attrs["is_causal"] = 1
    out = b.node("Attention", ins, b.shape[q], **attrs)
    return binary(b, "Add", x, project(b, merge_heads(b, out), d, d))


def control_block(b: Builder, ctx: Ctx, x: str) -> str:
    """An If on a run-time scalar or a Loop with a fixed trip count carrying the stream: input
    models may hold both, and the tool must leave them whole and still chunk around them."""
    s, et = b.shape[x], b.dtype[x]
    if b.chance(0.5):
        mean = reduce(b, "ReduceMean", x, list(range(len(s))), 0)
        cond = b.node("Greater", [mean, b.fconst(0.0)], (), dtype=TensorProto.BOOL)
        outs = []
        for op in ("Relu", "Neg"):
            o = b.fresh(f"if_{op}")
            outs.append(helper.make_graph([helper.make_node(op, [x], [o])], b.fresh("branch"), [],
                                          [_declared(b, o, x)]))
        y = b.node("If", [cond], s, then_branch=outs[0], else_branch=outs[1])
    else:
        half, one = b.fconst(0.5), b.fconst(1.0)  # outer-scope values read by the body
        i, c_in, v_in, c_out, t, v_out = (b.fresh(n) for n in ("i", "cond", "v", "cond_out", "t", "v_out"))
        body = helper.make_graph(
            [helper.make_node("Identity", [c_in], [c_out]), helper.make_node("Mul", [v_in, half], [t]),
             helper.make_node("Add", [t, one], [v_out])], b.fresh("body"),
            [helper.make_tensor_value_info(i, TensorProto.INT64, []), helper.make_tensor_value_info(c_in, TensorProto.BOOL, []),
             _declared(b, v_in, x)],
            [helper.make_tensor_value_info(c_out, TensorProto.BOOL, []), _declared(b, v_out, x)])
        y = b.node("Loop", [b.const(int(b.rng.integers(1, 4))), "", x], s, body=body)
    return binary(b, "Add", x, y)


def _declared(b: Builder, name: str, like: str) -> onnx.ValueInfoProto:
    """A subgraph value declared with the type and shape of `like`, as exporters write them."""
    vi = b.value_info(like)
    vi.name = name
    return vi


# Blocks of the second generation, drawn from their own stream (`_extended`) so every seed that
# does not use them builds the same model as before (the regression seeds stay what they were).
NEW_BLOCKS: dict[str, Callable] = {"conv2d": conv2d_block, "attention23": attention23_block, "control": control_block}


BIG_BLOCKS: dict[str, Callable] = {"attention": attention_block, "mlp": mlp_block, "pair": pair_block}
SMALL_BLOCKS: dict[str, Callable] = {
    "reduce": reduce_block, "softmax": softmax_block, "transpose": transpose_block, "reshape": reshape_block,
    "unsqueeze": unsqueeze_block, "expand": expand_block, "concat_split": concat_split_block,
    "slice": slice_block, "gather": gather_block, "tile_pad": tile_pad_block, "conv": conv_block,
    "einsum": einsum_block, "elementwise": elementwise_block, "trilu": trilu_block,
}
FP16_BLOCKS = ("attention", "mlp", "pair", "reduce", "transpose", "reshape", "unsqueeze", "expand",
               "concat_split", "slice", "gather", "elementwise")


# ----------------------------------------------------------------------------- the model

@dataclass
class Spec:
    """The random choices that shape a model (all drawn from the seed)."""

    opset: int
    elem: int
    lead: Shape
    d: int
    s1: int
    s_name: str | None
    entry: str  # "float" or "ids"
    mask: str  # "none", "padding", "causal"
    extra: bool
    memory: bool


def _spec(rng: np.random.Generator) -> Spec:
    opset = int(rng.choice([17, 18]))
    elem = TensorProto.FLOAT16 if rng.random() < 0.12 else TensorProto.FLOAT
    rank = int(rng.choice([2, 3, 4], p=[0.15, 0.7, 0.15]))
    lead = tuple(st(int(rng.integers(1, 4))) for _ in range(rank - 2))
    d = int(rng.choice([8, 12, 16, 24, 32, 48, 64]))
    s1 = int(rng.integers(24, 161))
    s_name = "seq" if rng.random() < 0.7 else None
    entry = "ids" if rank == 3 and rng.random() < 0.25 else "float"
    mask = str(rng.choice(["none", "padding", "causal"], p=[0.3, 0.35, 0.35]))
    return Spec(opset, elem, lead, d, s1, s_name, entry, mask, bool(rng.random() < 0.25),
                bool(rng.random() < 0.15))


def _inputs(b: Builder, spec: Spec, ctx: Ctx) -> str:
    """Graph inputs: the stream (floats, or token ids through an embedding), mask, extras."""
    if spec.entry == "ids":
        ids = b.add_input("input_ids", spec.lead + (SEQ,), TensorProto.INT64)
        table = b.weight((VOCAB, spec.d))
        x = b.node("Gather", [table, ids], ctx.stream, dtype=b.elem, axis=0)
    else:
        x = b.add_input("x", ctx.stream, b.elem)
    if spec.mask == "padding":
        et = b.pick([TensorProto.INT64, b.elem, TensorProto.BOOL])
        ctx.mask_src = b.add_input("attention_mask", spec.lead[:1] + (SEQ,), et)
        if et == TensorProto.BOOL:
            ctx.mask_src = b.node("Cast", [ctx.mask_src], b.shape[ctx.mask_src], dtype=b.elem, to=b.elem)
    ctx.mask_kind = spec.mask
    if spec.extra:
        shape = operand_shape(b, ctx.stream, allow_dynamic=True)
        ctx.extra = b.add_input("extra", shape, b.elem) if shape else None
    if spec.memory:
        t = Dim(0, int(b.rng.integers(8, 40)))
        ctx.memory = b.add_input("memory", spec.lead + (t, st(spec.d)), b.elem)
    return x


def _blocks(b: Builder) -> list[str]:
    """1-4 blocks, at least one of which makes a large intermediate."""
    fp16 = b.elem == TensorProto.FLOAT16
    big = [k for k in BIG_BLOCKS if not fp16 or k in FP16_BLOCKS]
    small = [k for k in SMALL_BLOCKS if not fp16 or k in FP16_BLOCKS]
    n = int(b.rng.integers(1, 5))
    names = [b.pick(big)] + [b.pick(big) if b.chance(0.4) else b.pick(small) for _ in range(n - 1)]
    return [names[i] for i in b.rng.permutation(len(names))]


def _head(b: Builder, ctx: Ctx, x: str) -> str:
    """Final output: the stream, logits over a small vocabulary, or a pooled vector."""
    kind = b.pick(["stream", "logits", "pooled"], p=[0.4, 0.4, 0.2])
    if kind == "logits":
        return project(b, _norm(b, x), ctx.d, int(b.rng.integers(16, 80)), bias=False)
    if kind == "pooled":
        return reduce(b, "ReduceMean", x, [ctx.seq_axis], 0)
    return x


def _extended(seed: int, spec: Spec, extended: bool) -> list[str]:
    """With `extended`, half the seeds (their own stream) also get a newer opset (18, 21 or 23), sometimes a long
    sequence (256-512) and one or two blocks of NEW_BLOCKS; the others are built as before."""
    xr = np.random.default_rng([seed, 7])
    if not extended or xr.random() < 0.5:
        return []
    spec.opset = int(xr.choice([18, 21, 23], p=[0.2, 0.3, 0.5]))
    if xr.random() < 0.25:
        spec.s1 = int(xr.integers(256, 513))
    names = list(NEW_BLOCKS)
    if spec.elem != TensorProto.FLOAT:  # as FP16_BLOCKS: ORT's float16 kernels round where a chunk does not
        names = ["control"]
    elif spec.opset < 23 or len(spec.lead) != 1:
        names.remove("attention23")
    return [names[int(k)] for k in xr.choice(len(names), size=int(xr.integers(1, 3)))]


def random_model(seed: int, extended: bool = False) -> tuple[onnx.ModelProto, dict[str, list[int]]]:
    """A random valid model and the concrete shape of every input (S at its first length);
    `extended` adds the second-generation blocks and opsets (`_extended`) to half the seeds."""
    rng = np.random.default_rng(seed)
    spec = _spec(rng)
    extra = _extended(seed, spec, extended)
    b = Builder(rng, spec.opset, spec.elem, spec.s_name, spec.s1)
    ctx = Ctx(spec.lead, spec.d)
    x = _inputs(b, spec, ctx)
    ctx.raw = x
    names = _blocks(b)
    for name in extra:  # placed by their own stream too: the old draws stay in order
        names.insert(int(np.random.default_rng([seed, 8, len(names)]).integers(0, len(names) + 1)), name)
    for i, name in enumerate(names):
        x = {**BIG_BLOCKS, **SMALL_BLOCKS, **NEW_BLOCKS}[name](b, ctx, x)
        if i < len(names) - 1 and b.chance(0.15):
            ctx.side.append(x)
    outs = [_head(b, ctx, x)] + ctx.side
    graph = helper.make_graph(b.nodes, f"random_{seed}", b.inputs,
                              [b.value_info(o) for o in dict.fromkeys(outs)],
                              initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", spec.opset)],
                              producer_name="models.random_graphs")
    model.ir_version = 8
    model.doc_string = f"blocks: {', '.join(names)}"
    return model, input_shapes(b, spec.s1)


def input_shapes(b: Builder, s: int) -> dict[str, list[int]]:
    return {vi.name: [d.at(s) for d in b.shape[vi.name]] for vi in b.inputs}


def at_length(model: onnx.ModelProto, shapes: dict[str, list[int]], s_old: int, s_new: int) -> dict[str, list[int]] | None:
    """The input shapes at another length of the symbolic `seq` dim, or None when S is static."""
    out: dict[str, list[int]] = {}
    found = False
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        new = []
        for d, v in zip(dims, shapes[vi.name]):
            if d.HasField("dim_param") and d.dim_param == "seq":
                found = True
                new.append(s_new)
            else:
                new.append(v)
        out[vi.name] = new
    return out if found else None


def seq_length(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> int | None:
    """The pinned value of the `seq` dim, if the model has one."""
    for vi in model.graph.input:
        for d, v in zip(vi.type.tensor_type.shape.dim, shapes[vi.name]):
            if d.HasField("dim_param") and d.dim_param == "seq":
                return v
    return None
