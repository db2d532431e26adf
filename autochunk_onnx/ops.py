"""The op registry: everything the tool knows about one op type, in one record.

Every stage asks here: the chunk flow for an op's dim rule and whether it may compute shape
values inside a loop or be recomputed per chunk; the estimate for ORT's buffer behaviour (view,
in place, constant folding, kernel scratch, which input dims its shape inference equates); the
cost model for FLOPs; shape inference for the ops it may evaluate on small values; the rewrite
for shape inputs to patch and (issue 11) position-dependent ops to offset by the chunk's start.

Adding an op is one `OpInfo` row below plus a case in tests/test_ops.py, which checks every
row's dim rule against ONNX Runtime. An op without a row is opaque: it is computed whole and
bounds a region (never an error). Ops of other domains match only rows of their own domain.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional

import onnx

from . import dimrules as R
from . import posrules as P
from . import contribrules as C
from . import kernels as K
from . import notes
from .graph import Graph, Node
from .graphutil import is_standard

MIX = R.MIX
Rule = R.Rule
# A position rule (issue 11): given the rewrite's view of one body node (rewrite.PositionPatch),
# emit the nodes that compute its chunk with the chunk's start offset; None: values do not
# depend on the absolute index along the cut.
PositionRule = Callable[[object], None]
# Input dims ORT's shape inference equates, for one node: (node, input shapes) -> groups of dims
# (numbers or symbols) that must be equal.
Equates = Callable[[Node, list], list]


@dataclass(frozen=True)
class OpInfo:
    """What the tool knows about one op type. Defaults describe an op it knows nothing of."""

    op_type: str
    domain: str = ""
    rule: Optional[Rule] = None  # dim rule (dimrules): input cuts for an output cut, or MIX
    alias: bool = False  # ORT view kernel: the output is input 0's buffer
    inplace: bool = False  # ORT MayInplace(0, 0): may write into input 0's buffer when it dies
    scratch: Optional[Callable[[Graph, Node], int]] = None  # kernel bytes beyond the outputs (kernels.py)
    flops: Optional[Callable[[Graph, Node], float]] = None  # for the cost model (kernels.py)
    ort_folds: bool = True  # ORT constant-folds it when every input is constant
    equates: Optional[Equates] = None  # input dims ORT's shape inference equates
    shape_input: Optional[int] = None  # input holding the output's shape: patched to the chunk's
    shape_output: bool = False  # the output is a shape or size: the input's values are never read
    shape_arith: bool = False  # may compute small shape values inside a loop
    fold: bool = False  # shape inference may evaluate it on small known values
    clone: bool = False  # cheap enough to recompute per chunk (no contraction, no reduction)
    gelu_island: bool = False  # element-wise op ORT's Gelu/FastGelu/QuickGelu fusions swallow
    passes_values: bool = False  # input 0's values pass through (an id input on its way to a Gather)
    sequence: bool = False  # makes or reads tensor sequences (no tensor shape)
    position: Optional[PositionRule] = None  # issue 11: patch inside the Loop body with the chunk offset
    opsets: Optional[tuple[int, int]] = None  # (first, last) opset it exists in; None: as onnx.defs says
    whole_too: tuple[int, ...] = ()  # inputs read whole as well as cut (its position rule reads them)
    loop_extra: Optional[Callable[[Graph, Node], int]] = None  # bytes its chunked form adds in a loop

    @property
    def first_opset(self) -> int | None:
        return self.opsets[0] if self.opsets else _first_opset(self.domain, self.op_type)


@lru_cache(maxsize=1)
def _schema_firsts() -> dict[tuple[str, str], int]:
    first: dict[tuple[str, str], int] = {}
    for s in onnx.defs.get_all_schemas_with_history():
        k = (s.domain, s.name)
        first[k] = min(first.get(k, s.since_version), s.since_version)
    return first


def _first_opset(domain: str, op_type: str) -> int | None:
    return _schema_firsts().get(("" if is_standard(domain) else domain, op_type))


# --- ORT's dim equations (which input dims its shape inference equates) ----------------------
def _eq_broadcast(n: Node, shapes: list) -> list:
    known = [s for s in shapes if s]
    r = max((len(s) for s in known), default=0)
    return [[s[-k] for s in known if len(s) >= k] for k in range(1, r + 1)]


def _eq_matmul(n: Node, shapes: list) -> list:
    if len(shapes) >= 2 and shapes[0] and shapes[1] and len(shapes[0]) >= 2 and len(shapes[1]) >= 2:
        return [[shapes[0][-1], shapes[1][-2]]]
    return []


def _eq_gemm(n: Node, shapes: list) -> list:
    if len(shapes) >= 2 and shapes[0] and shapes[1] and len(shapes[0]) == 2 == len(shapes[1]):
        return [[shapes[0][0 if n.attr("transA", 0) else 1], shapes[1][1 if n.attr("transB", 0) else 0]]]
    return []


def _eq_layer_norm(n: Node, shapes: list) -> list:
    if len(shapes) >= 2 and shapes[0] and shapes[1]:
        return [[shapes[0][-j], shapes[1][-j]] for j in range(1, len(shapes[1]) + 1)]
    return []


def _eq_conv(n: Node, shapes: list) -> list:
    if len(shapes) >= 2 and shapes[0] and shapes[1] and len(shapes[0]) >= 2 and isinstance(shapes[1][1], int):
        return [[shapes[0][1], shapes[1][1] * n.attr("group", 1)]]
    return []


# --- the registry --------------------------------------------------------------------------------
E, B = R.elementwise, _eq_broadcast
MS = "com.microsoft"
_ROWS = [
    # element-wise, binary (numpy broadcasting)
    OpInfo("Add", rule=E, equates=B, clone=True, shape_arith=True, fold=True, gelu_island=True),
    OpInfo("Sub", rule=E, equates=B, clone=True, shape_arith=True, fold=True, gelu_island=True),
    OpInfo("Mul", rule=E, equates=B, clone=True, shape_arith=True, fold=True, gelu_island=True),
    OpInfo("Div", rule=E, equates=B, clone=True, shape_arith=True, fold=True, gelu_island=True),
    OpInfo("Pow", rule=E, equates=B, clone=True, fold=True, gelu_island=True),
    OpInfo("Mod", rule=E, equates=B, clone=True, fold=True),
    OpInfo("Max", rule=E, equates=B, clone=True, shape_arith=True, fold=True, scratch=K.variadic_scratch),
    OpInfo("Min", rule=E, equates=B, clone=True, shape_arith=True, fold=True, scratch=K.variadic_scratch),
    OpInfo("Sum", rule=E, equates=B, clone=True, scratch=K.variadic_scratch),
    OpInfo("Mean", rule=E, equates=B, clone=True, scratch=K.variadic_scratch),
    OpInfo("Where", rule=E, equates=B, clone=True, shape_arith=True, fold=True, scratch=K.where_scratch),
    OpInfo("Equal", rule=E, equates=B, clone=True, shape_arith=True, fold=True),
    OpInfo("Less", rule=E, equates=B, clone=True, fold=True),
    OpInfo("LessOrEqual", rule=E, clone=True, fold=True),
    OpInfo("Greater", rule=E, equates=B, clone=True, fold=True),
    OpInfo("GreaterOrEqual", rule=E, clone=True, fold=True),
    OpInfo("And", rule=E, equates=B, clone=True, fold=True),
    OpInfo("Or", rule=E, equates=B, clone=True, fold=True),
    OpInfo("Xor", rule=E, clone=True),
    OpInfo("PRelu", rule=E, equates=B, clone=True),
    OpInfo("BitwiseAnd", rule=E, clone=True),
    OpInfo("BitwiseOr", rule=E, clone=True),
    OpInfo("BitwiseXor", rule=E, clone=True),
    # element-wise, unary
    OpInfo("Not", rule=E, clone=True, fold=True),
    OpInfo("Neg", rule=E, clone=True, shape_arith=True, fold=True),
    OpInfo("Abs", rule=E, clone=True, shape_arith=True, fold=True),
    OpInfo("Sqrt", rule=E, clone=True, fold=True, gelu_island=True),
    OpInfo("Reciprocal", rule=E, clone=True),
    OpInfo("Exp", rule=E, clone=True),
    OpInfo("Log", rule=E, clone=True),
    OpInfo("Erf", rule=E, clone=True, gelu_island=True),
    OpInfo("Tanh", rule=E, clone=True, inplace=True, gelu_island=True),
    OpInfo("Sigmoid", rule=E, clone=True, inplace=True, gelu_island=True),
    OpInfo("Relu", rule=E, clone=True, inplace=True),
    OpInfo("LeakyRelu", rule=E, clone=True, inplace=True),
    OpInfo("Elu", rule=E, clone=True, inplace=True),
    OpInfo("Selu", rule=E, clone=True, inplace=True),
    OpInfo("Celu", rule=E, clone=True, inplace=True),
    OpInfo("ThresholdedRelu", rule=E, clone=True, inplace=True),
    OpInfo("Gelu", rule=E, clone=True),
    OpInfo("HardSigmoid", rule=E, clone=True, inplace=True),
    OpInfo("HardSwish", rule=E, clone=True, scratch=K.function_temp_scratch),
    OpInfo("Softplus", rule=E, clone=True, inplace=True),
    OpInfo("Softsign", rule=E, clone=True, inplace=True),
    OpInfo("Mish", rule=E, clone=True, scratch=K.function_temp_scratch),
    OpInfo("Swish", rule=E, clone=True),
    OpInfo("Sin", rule=E, clone=True),
    OpInfo("Cos", rule=E, clone=True),
    OpInfo("Tan", rule=E, clone=True),
    OpInfo("Asin", rule=E, clone=True),
    OpInfo("Acos", rule=E, clone=True),
    OpInfo("Atan", rule=E, clone=True),
    OpInfo("Sinh", rule=E, clone=True),
    OpInfo("Cosh", rule=E, clone=True),
    OpInfo("Floor", rule=E, clone=True, fold=True),
    OpInfo("Ceil", rule=E, clone=True, fold=True),
    OpInfo("Round", rule=E, clone=True),
    OpInfo("Sign", rule=E, clone=True),
    OpInfo("IsNaN", rule=E, clone=True),
    OpInfo("IsInf", rule=E, clone=True),
    OpInfo("BitwiseNot", rule=E, clone=True),
    OpInfo("Identity", rule=E, clone=True, alias=True, shape_arith=True, fold=True, passes_values=True),
    OpInfo("Cast", rule=E, clone=True, shape_arith=True, fold=True, passes_values=True),
    OpInfo("CastLike", rule=E, clone=True),
    OpInfo("Shrink", inplace=True),
    OpInfo("Clip", rule=R.first_input_only, clone=True, inplace=True),
    OpInfo("Dropout", rule=R.first_input_only, alias=True),
    # normalisations and softmax
    OpInfo("Softmax", rule=R.softmax, inplace=True, scratch=K.softmax_scratch),
    OpInfo("LogSoftmax", rule=R.softmax, inplace=True, scratch=K.softmax_scratch),
    OpInfo("Hardmax", rule=R.softmax, scratch=K.softmax_scratch),
    OpInfo("LayerNormalization", rule=R.layer_norm, equates=_eq_layer_norm),
    OpInfo("RMSNormalization", rule=R.layer_norm),
    OpInfo("SimplifiedLayerNormalization", rule=R.layer_norm),  # ORT registers it in the ONNX domain
    OpInfo("InstanceNormalization", rule=R.instance_norm),
    OpInfo("GroupNormalization", rule=R.group_norm, scratch=K.group_norm_scratch),
    OpInfo("BatchNormalization", rule=R.batch_norm),
    # contractions
    OpInfo("MatMul", rule=R.matmul, flops=K.matmul_flops, equates=_eq_matmul),
    OpInfo("FusedMatMul", domain="com.microsoft", flops=K.matmul_flops, equates=_eq_matmul),
    OpInfo("Gemm", rule=R.gemm, flops=K.matmul_flops, equates=_eq_gemm),
    OpInfo("Einsum", rule=R.einsum, flops=K.einsum_flops, scratch=K.einsum_node_scratch),
    OpInfo("Conv", rule=R.conv, flops=K.conv_flops, equates=_eq_conv, scratch=K.conv_scratch),
    OpInfo("ConvTranspose", rule=R.conv),
    OpInfo("Attention", rule=R.attention, scratch=K.attention_scratch),
    # com.microsoft ops (issue 16: ORT's transformers optimizer, onnxruntime-genai): rules in
    # contribrules.py, scratch measured one node at a time (kernels.py); no scratch = measured 0.
    # Query rows: K, V of the whole input projected once before the loop, each chunk attends to
    # them as `past` (contribrules.position_attention).
    OpInfo("Attention", domain=MS, rule=C.attention_ms, scratch=K.ms_attention_scratch, ort_folds=False,
           whole_too=(0,), position=C.position_attention, loop_extra=K.ms_attention_loop_extra),
    OpInfo("MultiHeadAttention", domain=MS, rule=C.multi_head_attention, scratch=K.ms_mha_scratch, ort_folds=False),
    OpInfo("GroupQueryAttention", domain=MS, rule=C.group_query_attention, scratch=K.ms_gqa_scratch,
           ort_folds=False),  # KV cache: opaque, with a note
    OpInfo("RotaryEmbedding", domain=MS, rule=C.rotary_embedding, position=C.position_rotary),
    OpInfo("SkipLayerNormalization", domain=MS, rule=C.skip_layer_norm),
    OpInfo("SkipSimplifiedLayerNormalization", domain=MS, rule=C.skip_layer_norm),
    OpInfo("BiasGelu", domain=MS, rule=R.elementwise, scratch=K.ms_bias_gelu_scratch),
    OpInfo("FastGelu", domain=MS, rule=R.elementwise, scratch=K.ms_bias_gelu_scratch),
    OpInfo("QuickGelu", domain=MS, rule=R.elementwise),
    OpInfo("EmbedLayerNormalization", domain=MS, rule=C.embed_layer_norm),
    OpInfo("MatMulNBits", domain=MS, rule=C.matmul_nbits, flops=K.matmul_flops, scratch=K.ms_matmul_nbits_scratch),
    # layout and views
    OpInfo("Transpose", rule=R.transpose, clone=True, fold=True),
    OpInfo("Reshape", rule=R.reshape_like, alias=True, shape_input=1, shape_arith=True, fold=True, passes_values=True,
           clone=True),
    OpInfo("Flatten", rule=R.reshape_like, alias=True, fold=True, passes_values=True),
    OpInfo("Squeeze", rule=R.reshape_like, alias=True, clone=True, shape_arith=True, fold=True, passes_values=True),
    OpInfo("Unsqueeze", rule=R.reshape_like, alias=True, clone=True, shape_arith=True, fold=True, passes_values=True),
    OpInfo("Expand", rule=R.expand, shape_input=1, clone=True, passes_values=True),
    OpInfo("Concat", rule=R.concat, shape_arith=True, fold=True),
    OpInfo("Split", rule=R.split),
    # position-aware (posrules): the chunk's start offset goes into an input in the loop body
    OpInfo("Slice", rule=P.slice_or_offset, shape_arith=True, fold=True, clone=True, position=P.position_slice),
    OpInfo("Gather", rule=R.gather, shape_arith=True, fold=True, clone=True),
    OpInfo("GatherElements", rule=R.gather_elements),
    OpInfo("Tile", rule=P.tile, clone=True, position=P.position_tile),
    OpInfo("Resize", rule=R.resize),
    OpInfo("Pad", rule=R.pad),
    OpInfo("Trilu", rule=P.trilu, clone=True, position=P.position_trilu),
    # reductions
    OpInfo("ReduceSum", rule=R.reduce, fold=True),
    OpInfo("ReduceMean", rule=R.reduce),
    OpInfo("ReduceMax", rule=R.reduce, fold=True),
    OpInfo("ReduceMin", rule=R.reduce, fold=True),
    OpInfo("ReduceProd", rule=R.reduce, shape_arith=True, fold=True),
    OpInfo("ReduceL1", rule=R.reduce),
    OpInfo("ReduceL2", rule=R.reduce),
    OpInfo("ReduceLogSum", rule=R.reduce),
    OpInfo("ReduceLogSumExp", rule=R.reduce),
    OpInfo("ReduceSumSquare", rule=R.reduce),
    OpInfo("ArgMax", rule=R.reduce),
    OpInfo("ArgMin", rule=R.reduce),
    # shape computations
    OpInfo("Shape", shape_output=True, shape_arith=True, fold=True),
    OpInfo("Size", shape_output=True, shape_arith=True, fold=True),
    OpInfo("Constant", shape_arith=True, fold=True),
    OpInfo("ConstantOfShape", rule=P.constant_of_shape, shape_input=0, fold=True, clone=True),
    OpInfo("Range", rule=P.range_, fold=True, clone=True, position=P.position_range),
    OpInfo("EyeLike", rule=P.eye_like, clone=True, position=P.position_eye_like),
    OpInfo("CumSum", rule=P.cumsum, position=P.position_cumsum),
    # never constant-folded by ORT
    OpInfo("RandomNormal", ort_folds=False),
    OpInfo("RandomUniform", ort_folds=False),
    OpInfo("RandomNormalLike", ort_folds=False),
    OpInfo("RandomUniformLike", ort_folds=False),
    OpInfo("Multinomial", ort_folds=False),
    OpInfo("Bernoulli", ort_folds=False),
    OpInfo("Loop", ort_folds=False),
    OpInfo("If", ort_folds=False),
    OpInfo("Scan", ort_folds=False),
    # tensor sequences
    OpInfo("SequenceEmpty", ort_folds=False, sequence=True),
    OpInfo("SequenceConstruct", sequence=True),
    OpInfo("SequenceInsert", sequence=True),
    OpInfo("SequenceErase", sequence=True),
    OpInfo("SplitToSequence", sequence=True),
    OpInfo("ConcatFromSequence", sequence=True),
    OpInfo("SequenceAt", sequence=True),
]
del E, B, MS

REGISTRY: dict[tuple[str, str], OpInfo] = {(r.domain, r.op_type): r for r in _ROWS}
assert len(REGISTRY) == len(_ROWS), "an op has two rows"
UNKNOWN = OpInfo("")  # what the tool assumes of an op it has no row for


def lookup(domain: str, op_type: str) -> OpInfo:
    """The row of an op (UNKNOWN when there is none)."""
    return REGISTRY.get(("" if is_standard(domain) else domain, op_type), UNKNOWN)


def info(n: Node | onnx.NodeProto) -> OpInfo:
    """The row of a node's op (UNKNOWN when there is none)."""
    return lookup(n.domain, n.op_type)


def rule_for(n: Node) -> Rule | None:
    """The dim rule of a node, or None: opaque (custom domain, subgraphs, unknown op)."""
    if n.has_subgraph:
        return None
    return info(n).rule


def trace_node(g: Graph, n: Node, k: int, axis: int):
    """Apply the node's dim rule for output `k` cut along `axis`: per input `(axis, ratio)` or
    None, or MIX. Without a rule or a shape the node mixes. An exception inside a rule is a bug
    in the rule: it propagates under AUTOCHUNK_STRICT (tests) and is a note plus MIX otherwise."""
    rule = rule_for(n)
    if rule is None:
        return MIX
    if any(i and g.shape(i) is None for i in n.inputs) or g.shape(n.outputs[k]) is None:
        return MIX
    try:
        res = rule(g, n, k, axis)
    except (TypeError, IndexError, ValueError, KeyError, ZeroDivisionError, AttributeError) as e:
        if notes.strict():
            raise
        notes.note(f"the {n.op_type} rule failed on node {n.name} ({type(e).__name__}: {e}); it is computed whole")
        return MIX
    if res != MIX:
        # Sanity: every cut input must really have the axis.
        for i, c in zip(n.inputs, res):
            if c is not None and (not i or c[0] >= len(g.shape(i))):
                return MIX
    return res
