"""What one kernel costs in ONNX Runtime 1.31 CPU: scratch bytes beyond its outputs, and FLOPs.

These are the per-op functions the op registry (`ops.py`) points at. Each scratch formula was
measured one node at a time (profiler `mem_in_use_peak` minus in-use before, exact arena) and
matches on every probed shape (tests/test_estimate.py re-runs the probes). Ops without one:
MatMul, Gemm, FusedMatMul (also with broadcast batch dims), LayerNormalization,
InstanceNormalization, Transpose, Concat, Split, Slice, Gather, Expand, Resize measured 0; Conv
in a Loop body or not rewritten to NCHWc (MLAS convolves in tiles: 0.12 MiB whatever the size;
the NCHWc buffers of a main-graph 2-D Conv are `conv_scratch`).
"""
from __future__ import annotations

import math

import onnx

from . import notes
from .graph import Graph, Node, itemsize
from .graphutil import ellipsis_labels, parse_einsum

LOOP_BODY = "_loop_body"  # set on the Graph of a Loop/If/Scan body (estimate_loops): ORT's level-3 rewrites skip bodies


# --- scratch -------------------------------------------------------------------------------------
def einsum_node_scratch(graph: Graph, node: Node) -> int:
    eq = node.attr("equation", "")
    shapes = [graph.shape(i) for i in node.inputs if i]
    info = graph.info(node.outputs[0])
    if eq and all(shapes) and info is not None:
        try:
            return einsum_scratch(eq, shapes, itemsize(info.elem_type))
        except (ValueError, KeyError, IndexError) as e:
            notes.note(f"Einsum scratch of node {node.name} not modelled ({type(e).__name__}: {e}): a bound is used")
    return sum(graph.nbytes(i) for i in node.inputs if i) + 2 * graph.nbytes(node.outputs[0])


def where_scratch(graph: Graph, node: Node) -> int:
    """Where selects in two passes, each into a temporary of broadcast(cond, branch) elements
    (measured 13 broadcast combinations on [1,4,1024,1024]: exact)."""
    if len(node.inputs) != 3:
        return 0
    out = graph.info(node.outputs[0])
    c = graph.shape(node.inputs[0])
    branches = [graph.shape(b) or () for b in node.inputs[1:]]
    if out is None or c is None or any(d is None for s in [c] + branches for d in s):
        return 2 * graph.nbytes(node.outputs[0])  # a dim unknown (inside a Loop body): the output's size
    size = itemsize(out.elem_type)
    return int(sum(_bcast_numel(c, b) for b in branches) * size)


def softmax_scratch(graph: Graph, node: Node) -> int:
    """Softmax over any axis but the last transposes to and from it (measured 2.0x the output)."""
    shape = graph.shape(node.inputs[0]) or ()
    axis = node.attr("axis", -1)
    if shape and axis % len(shape) != len(shape) - 1:
        return 2 * graph.nbytes(node.outputs[0])
    return 0


def attention_scratch(graph: Graph, node: Node) -> int:
    """ONNX opset-23 Attention on CPU materializes the scores [b, h, q, k] (measured)."""
    q, k = graph.shape(node.inputs[0]), graph.shape(node.inputs[1])
    info = graph.info(node.outputs[0])
    if not (q and k and info is not None):
        return 0
    heads = node.attr("q_num_heads", 0) or (q[1] if len(q) == 4 else 1)
    ql, kl = (q[2], k[2]) if len(q) == 4 else (q[1], k[1])
    size = itemsize(info.elem_type)
    scores = q[0] * heads * ql * kl * size
    causal = ql * kl * 4 if node.attr("is_causal", 0) else 0  # float mask (measured +q*k*4)
    mask = graph.info(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None
    # a boolean mask is turned into an additive one of its own shape (measured: 4 shapes x 4 sizes)
    converted = mask.numel * size if mask is not None and mask.numel and mask.elem_type == onnx.TensorProto.BOOL else 0
    return int(scores + causal + converted)


def ms_attention_scratch(graph: Graph, node: Node) -> int:
    """com.microsoft Attention (fused QKV projection) on CPU: the scores [b, h, q, past + q], the
    packed Q, K, V projections (3x the output) and the context before its transpose (1x the
    output). Measured one node at a time (exact arena), D=256 H=4 at L=1024 / 2048, with and
    without a mask_index: 20.0 / 72.0 MiB, exact. CUDA: unverified (no GPU here)."""
    x = graph.shape(node.inputs[0])
    info = graph.info(node.outputs[0])
    if not (x and info is not None and len(x) == 3):
        return 0
    heads = node.attr("num_heads", 1)
    past_shape = graph.shape(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] else None
    past = past_shape[3] if past_shape and len(past_shape) == 5 else 0
    size = itemsize(info.elem_type)
    scores = x[0] * heads * x[1] * (x[1] + past) * size
    return int(scores + 4 * graph.nbytes(node.outputs[0]))


def ms_attention_loop_extra(graph: Graph, node: Node) -> int:
    """com.microsoft Attention cut along query rows (contribrules.position_attention): K, V of the
    whole input [2, b, h, L, d/h] made before the loop, per chunk the `past` without the chunk's
    rows and the `present` the kernel must write (each as large), and the 2-D key mask made
    before the loop and permuted per chunk."""
    x = graph.shape(node.inputs[0])
    info = graph.info(node.outputs[0])
    if not (x and info is not None and len(x) == 3):
        return 0
    kv = 2 * graph.nbytes(node.outputs[0])
    return int(3 * kv + 2 * x[0] * x[1] * 4)


# --- com.microsoft ops (issue 16), ORT 1.31 CPU, measured one node at a time (exact arena, profiler
# mem_in_use_peak) at L = 1024, 2048, 4096 (`python -m bench.contrib --ops`). Rows without a scratch
# function measured 0 beyond their outputs: RotaryEmbedding, SkipLayerNormalization,
# SkipSimplifiedLayerNormalization, SimplifiedLayerNormalization, QuickGelu,
# EmbedLayerNormalization. CUDA: none of this is verified (no GPU
# here); the CUDA kernels use other paths (flash / memory-efficient attention, cuBLAS workspaces).

# MLAS flash attention (MHA without mask or bias, GQA): per intra-op thread a block of
# q_block x (kv_block + head + 2) floats; 128 x 512 measured at head 64 (the blocks follow the L2
# cache size: other CPUs differ). ORT's default pool has one thread per core.
FLASH_Q_BLOCK, FLASH_KV_BLOCK = 128, 512


def _flash_buffer(q_len: int, kv_len: int, head: int) -> int:
    import os
    qb, kb = min(FLASH_Q_BLOCK, q_len), min(FLASH_KV_BLOCK, kv_len)
    return (os.cpu_count() or 1) * qb * (kb + head + 2) * 4


def _input(graph: Graph, node: Node, k: int):
    return graph.shape(node.inputs[k]) if len(node.inputs) > k and node.inputs[k] else None


def ms_mha_scratch(graph: Graph, node: Node) -> int:
    """MultiHeadAttention (separate Q, K, V [b, s, d]) on CPU. With a key padding mask or an
    attention bias: the unfused path, scores [b, h, q, k] + 4x the output (272.0 MiB at L=4096,
    D=256, H=4, measured 272.0). Without: MLAS flash attention, Q, K, V in head layout (3x the
    output) + the per-thread flash buffers (3.56 / 12.56 MiB at L=1024 / 4096, exact). With a QKV
    bias the allocator hands out one more output-sized buffer (4x, exact arena) that the RSS
    method does not see touched (3x + buffers): the RSS figure is used."""
    q, k = _input(graph, node, 0), _input(graph, node, 1)
    info = graph.info(node.outputs[0])
    if not (q and info is not None and len(q) == 3):
        return 2 * graph.nbytes(node.outputs[0])  # packed layouts: not probed
    heads = node.attr("num_heads", 1)
    kv_len = k[1] if k and len(k) == 3 else k[2] if k and len(k) == 4 else q[1]
    out = graph.nbytes(node.outputs[0])
    masked = _input(graph, node, 4) is not None or _input(graph, node, 5) is not None
    if masked or node.attr("unidirectional", 0):
        return int(q[0] * heads * q[1] * kv_len * itemsize(info.elem_type) + 4 * out)
    return int(3 * out + _flash_buffer(q[1], kv_len, q[2] // heads))


def ms_gqa_scratch(graph: Graph, node: Node) -> int:
    """GroupQueryAttention on CPU (prefill, empty past): Q in head layout and the context before
    its transpose (2x the output) + the per-thread flash buffers: 2.56 / 8.56 MiB at L=1024 / 4096,
    4 query and 2 KV heads of 64, exact. Decoding with a long past: not probed."""
    q = _input(graph, node, 0)
    info = graph.info(node.outputs[0])
    if not (q and info is not None and len(q) == 3):
        return 2 * graph.nbytes(node.outputs[0])
    heads = node.attr("num_heads", 1)
    pk = _input(graph, node, 3)
    kv_len = q[1] + (pk[2] if pk and len(pk) == 4 else 0)
    return int(2 * graph.nbytes(node.outputs[0]) + _flash_buffer(q[1], kv_len, q[2] // heads))


def ms_matmul_nbits_scratch(graph: Graph, node: Node) -> int:
    """MatMulNBits (4 bits, block 32): 0 beyond the output at accuracy_level 0; at level 4 (int8
    compute, what onnxruntime-genai's builder writes) A quantized to int8 with a scale and a block
    sum per block: rows x (K + K/block x 8) bytes (0.313 / 1.25 MiB at [1, L, 256], L = 1024 / 4096,
    exact)."""
    if node.attr("accuracy_level", 0) != 4:
        return 0
    a = _input(graph, node, 0)
    if not a:
        return 0
    k, block = a[-1], node.attr("block_size", 32)
    return int(math.prod(a[:-1]) * (k + -(-k // block) * 8))


def ms_bias_gelu_scratch(graph: Graph, node: Node) -> int:
    """BiasGelu, FastGelu with a bias: the biased input is a temporary of the output's size
    (4.0 / 8.0 MiB at [1, L, 1024], L = 1024 / 2048, exact). FastGelu without bias: 0."""
    if node.op_type == "FastGelu" and _input(graph, node, 1) is None:
        return 0
    return graph.nbytes(node.outputs[0])


_NCHWC_BLOCK: int | None = None


def nchwc_block() -> int:
    """MLAS's NCHWc block on this CPU (16 with AVX-512F, 8 with AVX2; 1: ORT makes no NCHWc Conv),
    read once from ORT's own level-3 graph of a 1-channel Conv (its weight is padded to the block)."""
    global _NCHWC_BLOCK
    if _NCHWC_BLOCK is None:
        _NCHWC_BLOCK = _probe_nchwc_block()
    return _NCHWC_BLOCK


def _probe_nchwc_block() -> int:
    import os
    import tempfile

    import numpy as np
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    try:
        import onnxruntime as ort

        g = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1])], "nchwc_probe",
                         [h.make_tensor_value_info("x", T.FLOAT, [1, 1, 4, 4])],
                         [h.make_tensor_value_info("y", T.FLOAT, [1, 1, 4, 4])],
                         [nh.from_array(np.ones((1, 1, 1, 1), np.float32), "w")])
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)], ir_version=8)
        with tempfile.TemporaryDirectory(prefix="autochunk-nchwc-") as d:
            so = ort.SessionOptions()
            so.log_severity_level = 4
            so.optimized_model_filepath = os.path.join(d, "opt.onnx")
            ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
            opt = onnx.load(so.optimized_model_filepath)
        inits = {t.name: t for t in opt.graph.initializer}
        conv = next((n for n in opt.graph.node if n.domain == "com.microsoft.nchwc" and n.op_type == "Conv"), None)
        if conv is None:
            return 1
        return int(inits[conv.input[1]].dims[0])
    except Exception as e:  # noqa: BLE001 - without the probe, Conv scratch is taken as plain MLAS's
        notes.note(f"estimate may be low: ORT's NCHWc block size not read ({type(e).__name__}: {e}); "
                   "2-D Conv taken without NCHWc buffers")
        return 1


def conv_scratch(graph: Graph, node: Node) -> int:
    """ORT's level-3 NCHWc rewrite of a float32 2-D Conv in the main graph (not in a Loop/If body:
    measured plain there): the output is written channel-blocked, its channels padded to the
    block B (nchwc_block), then copied to NCHW (ReorderOutput) while both are held; an input of
    B channels or more (always for depthwise) is first copied blocked (ReorderInput). Measured on
    [1, C, 128, 128] at B=16, 17 single and chained Convs (k 1 and 3, C 3..32, bias, fused
    Relu/Tanh, depthwise): exact. Chained Convs of B+ channels that skip the reorders between
    them are counted with them (over by one copy)."""
    b = nchwc_block()
    if b <= 1 or graph.__dict__.get(LOOP_BODY) or not _nchwc_conv(graph, node):
        return 0
    x, w, out = graph.info(node.inputs[0]), graph.shape(node.inputs[1]), graph.info(node.outputs[0])
    cin, cout, group = x.shape[1], w[0], node.attr("group", 1)
    up = lambda c: -(-c // b) * b  # noqa: E731
    y = out.nbytes
    yc = y // cout * up(cout)
    xr = x.nbytes // cin * up(cin) if (cin >= b or group > 1) else 0
    d = x.nbytes if _dies_at(graph, node, node.inputs[0]) else 0
    return max(0, xr - y, xr + yc - y - d, yc - d)


def _nchwc_conv(graph: Graph, node: Node) -> bool:
    """Conv that ORT's NchwcTransformer rewrites: float32, 2-D, constant weight (and bias), and
    one group or depthwise (one filter per channel)."""
    x, out = graph.info(node.inputs[0]), graph.info(node.outputs[0]) if node.outputs else None
    w = graph.shape(node.inputs[1]) if len(node.inputs) > 1 else None
    if x is None or out is None or w is None or x.shape is None or out.nbytes is None or len(x.shape) != 4:
        return False
    if x.elem_type != onnx.TensorProto.FLOAT or len(w) != 4 or not graph.is_weight(node.inputs[1]):
        return False
    if len(node.inputs) > 2 and node.inputs[2] and not graph.is_weight(node.inputs[2]):
        return False
    group = node.attr("group", 1)
    return group == 1 or (group == x.shape[1] and w[0] == group and w[1] == 1)


def _dies_at(graph: Graph, node: Node, t: str) -> bool:
    """`t` is counted (not a graph input or weight) and `node` is its only reader."""
    return (t not in graph.input_names and not graph.is_weight(t) and graph.read_count.get(t, 0) == 1)


def group_norm_scratch(graph: Graph, node: Node) -> int:
    """GroupNormalization-21 has no ORT 1.31 CPU kernel: its function body runs, with the input
    cast to the float32 stash type (a copy even from float32), x - mean and its square alive
    together: 3 float32 copies of the input at once, the output among them; the input is freed at
    the Cast when this is its only reader. Measured on [1, 8, 128, 128] alone and after a Conv:
    exact (3.0x the output)."""
    out = graph.info(node.outputs[0]) if node.outputs else None
    if graph.opset < 21 or out is None or out.numel is None or out.nbytes is None:
        return 0
    d = graph.nbytes(node.inputs[0]) if _dies_at(graph, node, node.inputs[0]) else 0
    return max(0, 3 * out.numel * 4 - out.nbytes - d)


def variadic_scratch(graph: Graph, node: Node) -> int:
    """Min, Max, Sum, Mean of three inputs or more fold them pairwise through one temporary of
    the output's size (two inputs: none). Measured on [3, 64, 64, 16] with 2, 3 and 4 inputs,
    broadcast or not: exact."""
    if len([i for i in node.inputs if i]) < 3 or not node.outputs:
        return 0
    return graph.nbytes(node.outputs[0])


def function_temp_scratch(graph: Graph, node: Node) -> int:
    """HardSwish and Mish have no ORT 1.31 CPU kernel at opsets 18-23: their function bodies run,
    x * HardSigmoid(x) and x * Tanh(Softplus(x)), with one temporary of the output's size alive
    at the final Mul. Measured on [1, 4, 256, 256] at opsets 18, 21, 22, 23: exact."""
    return graph.nbytes(node.outputs[0]) if node.outputs else 0


def _bcast_numel(a, b) -> int:
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    return math.prod(max(x, y) for x, y in zip(a, b))


def _in_order(labels, idx: dict) -> bool:
    return [idx[c] for c in labels] == sorted(idx[c] for c in labels)


def einsum_scratch(equation: str, shapes: list, size: float = 4) -> int:
    """Bytes ORT's CPU Einsum allocates besides its output (einsum_typed_compute_processor.cc).

    Inputs whose axes are not in the order labels first appear are transposed first; each pair
    is permuted to [batch, left, reduced, right] for a MatMul (a copy unless already in order),
    the MatMul result is a temporary, transposed once more if the output order differs, then
    copied into the output. All are alive at the final copy. Exact on 13 measured equations
    (attention, triangle and outer-product forms, with and without ellipsis).
    """
    labels, out = parse_einsum(equation, [len(s) for s in shapes])
    for lab, s in zip(labels, shapes):
        if len(lab) != len(s):
            raise ValueError(equation)
    order = list(dict.fromkeys(list(ellipsis_labels(_n_ellipsis(equation, shapes))) + [c for lab in labels for c in lab]))
    idx = {c: i for i, c in enumerate(order)}
    total = sum(math.prod(s) for lab, s in zip(labels, shapes) if not _in_order(lab, idx))  # input transposes
    hom = [dict(zip(lab, s)) for lab, s in zip(labels, shapes)]
    last = {}  # label -> the last input it appears in (-1: kept in the output)
    for k, lab in enumerate(labels):
        for c in lab:
            last[c] = k
    for c in out:
        last[c] = -1
    if len(labels) == 1:
        return int((total + math.prod(hom[0].get(c, 1) for c in out)) * size)
    left = dict(hom[0])
    red0 = [c for c in order if last.get(c) == 0]
    if red0:  # labels only input 0 has are summed away first
        for c in red0:
            left[c] = 1
        total += math.prod(left.values())
    for k in range(1, len(labels)):
        step, left = _pair_scratch(order, idx, out, left, dict(hom[k]), {c for c in order if last.get(c) == k},
                                   bool(red0) if k == 1 else True, k == len(labels) - 1)
        total += step
    return int(total * size)


def _n_ellipsis(equation: str, shapes: list) -> int:
    terms = equation.replace(" ", "").partition("->")[0].split(",")
    return max((len(s) - len(t.replace("...", "")) for t, s in zip(terms, shapes) if "..." in t), default=0)


def _pair_scratch(order: list, idx: dict, out: str, left: dict, right: dict, red: set, reduced_left: bool,
                  final: bool) -> tuple[int, dict]:
    """Elements one pairwise contraction allocates (left x right -> result), and the result's dims."""
    total = 0
    lro, lo, ro, rd = [], [], [], []
    for c in order:
        ld, rdim = left.get(c, 1), right.get(c, 1)
        if c in red:
            rd.append(c)
            if ld > 1 and rdim == 1:  # summed out of the left operand alone first
                left[c] = 1
                total += math.prod(left.values())
                reduced_left = True
            elif rdim > 1 and ld == 1:
                right[c] = 1
                total += math.prod(right.values())
        elif ld > 1 and rdim > 1:
            lro.append(c)
        elif ld > 1:
            lo.append(c)
        else:
            ro.append(c)
    perm_l = lro + lo + rd + ro
    if not _in_order(perm_l, idx):
        big = [idx[c] for c in perm_l if left.get(c, 1) > 1]
        if not (reduced_left and big == sorted(big)):
            total += math.prod(left.values())
    if not _in_order(lro + rd + ro + lo, idx):
        total += math.prod(right.values())
    mm = math.prod(left.get(c, 1) for c in lro + lo) * math.prod(right.get(c, 1) for c in ro)
    total += mm
    if final:
        cand = [c for c in lro + lo + ro if c in out]
        if [out.index(c) for c in cand] != sorted(out.index(c) for c in cand):
            total += mm  # the result transposed into the output's order
        return total, left
    result = {c: (left.get(c, 1) if c in lro or c in lo else right.get(c, 1) if c in ro else 1) for c in order}
    return total, result


# --- FLOPs ---------------------------------------------------------------------------------------
def matmul_flops(graph: Graph, n: Node) -> float:
    a = graph.shape(n.inputs[0])
    y = graph.shape(n.outputs[0])
    if a and y:
        k = a[-1] if not (n.op_type == "Gemm" and n.attr("transA", 0)) else a[0]
        return 2.0 * math.prod(y) * k
    return 0.0


def einsum_flops(graph: Graph, n: Node) -> float:
    shapes = [graph.shape(i) for i in n.inputs]
    if not all(shapes):
        return 0.0
    ins, _ = parse_einsum(n.attr("equation"), [len(s) for s in shapes])
    sizes: dict[str, int] = {}
    for term, s in zip(ins, shapes):
        for ch, d in zip(term, s):
            sizes[ch] = max(sizes.get(ch, 1), d)
    return 2.0 * math.prod(sizes.values())


def conv_flops(graph: Graph, n: Node) -> float:
    w, y = graph.shape(n.inputs[1]), graph.shape(n.outputs[0])
    if w and y:
        return 2.0 * math.prod(y) * math.prod(w[1:])
    return 0.0
