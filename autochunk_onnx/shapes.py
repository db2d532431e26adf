"""Infer every tensor's concrete shape once the input dims are pinned.

ONNX Runtime's symbolic shape inference resolves far more than onnx's own (shape subgraphs,
Reshape targets); onnx's with data propagation is run too and wins where it finds a concrete
shape. Both run on a weightless skeleton of the model; where both leave holes, the shape
computations that became known are evaluated and both run again.
"""
from __future__ import annotations

import contextlib
import io
import logging

import onnx

from . import notes, ops
from .errors import BadInputError
from .graph import Graph, TensorInfo
from .graphutil import copy_fields, is_standard, opset_of, skeleton  # noqa: F401 - skeleton: shapes.skeleton


def _infer_ort(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """ORT's symbolic shape inference; an incomplete result is kept (onnx's fills the holes).

    Its `infer_shapes` raises on an incomplete result after saving the model as
    `sym_shape_infer_temp.onnx` in the current folder: the loop below is that function without
    the save and without the raise. When it stops on a node it cannot handle, the shapes of the
    nodes it had already done (it goes in topological order) are kept.
    """
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError as e:
        _failed("ONNX Runtime's symbolic shape inference is not importable", e)
        return None
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    ssi = None
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ssi = SymbolicShapeInference(2**31 - 1, True, True, 0)
            if not all(hasattr(ssi, a) for a in ("_preprocess", "_infer_impl", "_update_output_from_vi", "run_")):
                ssi = None
                return SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
            ssi._preprocess(model)
            while ssi.run_:
                ssi._infer_impl()
            ssi._update_output_from_vi()
            return ssi.out_mp_
    except Exception as e:  # noqa: BLE001 - keep what was done; onnx's engine fills the rest
        _failed(f"ONNX Runtime's symbolic shape inference stopped", e)
        out = getattr(ssi, "out_mp_", None)
        return out if isinstance(out, onnx.ModelProto) else None


def _infer_onnx(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as e:  # noqa: BLE001 - ORT's answer stands alone
        _failed("onnx's shape inference failed", e)
        return model


def _collect(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    g = model.graph
    out: dict[str, TensorInfo] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        shape = None
        if tt.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        prev = out.get(vi.name)
        if prev is not None and prev.shape is not None and (shape is None or None in shape):
            continue
        out[vi.name] = TensorInfo(vi.name, shape, tt.elem_type)
    for t in g.initializer:
        out[t.name] = TensorInfo(t.name, tuple(t.dims), t.data_type)
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            t = n.attribute[0].t
            out.setdefault(n.output[0], TensorInfo(n.output[0], tuple(t.dims), t.data_type))
    return out


def _merge(sk: onnx.ModelProto) -> dict[str, TensorInfo]:
    """Both engines' answers: onnx's where it finds a concrete shape, ORT's for the rest.

    ORT's symbolic inference resolves far more (shape subgraphs, contrib ops), but where both
    find a concrete shape and differ, onnx's (the spec's own inference functions) is the right
    one: ORT 1.31 gets `Einsum('...x,xy->...y')` on [3,109,96] x [96,12] wrong as [96,12,12].
    """
    ort = _infer_ort(sk)
    fb = _collect(_infer_onnx(sk))
    _ONNX_KNOWN.clear()
    _ONNX_KNOWN.update(k for k, v in fb.items() if v.numel is not None)
    if ort is None:
        return fb
    merged = _collect(ort)
    merged.update({k: v for k, v in fb.items() if v.numel is not None or k not in merged})
    return merged


_ONNX_KNOWN: set[str] = set()  # tensors onnx's engine sized in the last _merge (ORT's may be wrong)


def _holes(tensors: dict[str, TensorInfo], model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node for o in n.output if o and (tensors.get(o) is None or tensors[o].numel is None))


# Shape computations (ops with `OpInfo.fold`) are evaluated on small values when both engines leave holes.
FOLD_MAX_ELEMS = 1 << 16


def _fold(sk: onnx.ModelProto, tensors: dict[str, TensorInfo]) -> tuple[onnx.ModelProto, dict[str, TensorInfo]] | None:
    """Evaluate the shape computations whose inputs are now known (Shape of a tensor of known shape,
    small constants) and put their values in as initializers, so the engines can read Reshape
    targets, Range limits, ... that they could not derive (ORT's symbolic inference stops at the
    first node it cannot handle). Returns (folded skeleton, infos of the folded tensors) or None."""
    import numpy as np
    from onnx import numpy_helper

    try:
        from onnx.reference import ReferenceEvaluator
    except ImportError as e:
        _failed("onnx's reference evaluator (folding) is not importable", e)
        return None
    opset = opset_of(sk)
    values: dict = {}
    for t in sk.graph.initializer:
        if np.prod(t.dims, dtype=np.int64) <= FOLD_MAX_ELEMS:
            try:
                values[t.name] = numpy_helper.to_array(t)
            except Exception as e:  # noqa: BLE001 - a value we cannot read is simply unknown
                _failed(f"folding could not read constant {t.name!r}", e)
    folded = set()  # node indices (protobuf wrappers are transient: no id())
    for k, n in enumerate(sk.graph.node):
        if not ops.info(n).fold or not n.output or not n.output[0]:
            continue
        ins = [i for i in n.input if i]
        try:
            if n.op_type in ("Shape", "Size"):
                t = tensors.get(n.input[0])
                if t is None or t.numel is None:
                    continue
                if n.op_type == "Size":
                    out = np.array(t.numel, dtype=np.int64)
                else:
                    attrs = {a.name: a.i for a in n.attribute}
                    out = np.array(t.shape, dtype=np.int64)[attrs.get("start", 0):attrs.get("end", len(t.shape)) or None]
                    if "end" in attrs and attrs["end"] == 0:
                        out = out[:0]
            else:
                if not all(i in values for i in ins):
                    continue
                if any(values[i].size > FOLD_MAX_ELEMS for i in ins):
                    continue
                if n.op_type == "Range":
                    a, b, c = (values[i].item() for i in n.input[:3])
                    if c == 0 or max(0, -(-(b - a) // c)) > FOLD_MAX_ELEMS:
                        continue
                if n.op_type == "ConstantOfShape" and np.prod(values[n.input[0]], dtype=np.int64) > FOLD_MAX_ELEMS:
                    continue
                res = ReferenceEvaluator(n, opsets={"": opset}).run(None, {i: values[i] for i in ins})
                if len(res) != len([o for o in n.output if o]):
                    continue
                for o, v in zip([o for o in n.output if o], res):
                    v = np.asarray(v)
                    if v.size <= FOLD_MAX_ELEMS and v.dtype != object:
                        values[o] = v
                if all(o in values for o in n.output if o):
                    folded.add(k)
                continue
        except Exception as e:  # noqa: BLE001 - unknown stays unknown
            _failed(f"folding {n.op_type} node {n.name or n.output[0]!r} failed", e)
            continue
        values[n.output[0]] = out
        folded.add(k)
    if not folded:
        return None
    out_model = onnx.ModelProto()
    copy_fields(sk, out_model, skip="graph")
    copy_fields(sk.graph, out_model.graph, skip="node")
    new_vals = {}
    for k, n in enumerate(sk.graph.node):
        if k in folded:
            for o in n.output:
                if o:
                    out_model.graph.initializer.append(numpy_helper.from_array(values[o], o))
                    new_vals[o] = TensorInfo(o, tuple(values[o].shape), onnx.helper.np_dtype_to_tensor_dtype(values[o].dtype))
        else:
            out_model.graph.node.append(n)
    return out_model, new_vals


_FAILURES: list[str] = []  # what went wrong in the current infer_shapes call (said only if holes remain)


def _failed(what: str, e: BaseException) -> None:
    text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    _FAILURES.append(f"{what} ({type(e).__name__}{': ' + text if text else ''})")


# Ops whose output has their first input's shape and type (Einsum: its equation's), whatever the engines say.
SAME_SHAPE_OPS = {"Einsum", "GroupNormalization", "LayerNormalization", "InstanceNormalization", "BatchNormalization",
                  "RMSNormalization", "Relu", "Sigmoid", "Tanh", "Gelu", "Softmax", "LogSoftmax"}


def _same_shape(model: onnx.ModelProto, tensors: dict[str, TensorInfo]) -> list[TensorInfo]:
    """Outputs of SAME_SHAPE_OPS nodes that onnx's engine did not size (onnx 1.23 skips function
    ops such as GroupNormalization-21), from inputs onnx sized; ORT's answer is not trusted there
    (its symbolic inference carries its Einsum mistake down a chain onnx stopped on)."""
    declared = {vi.name for vi in model.graph.value_info}
    cur = {k: tensors[k] for k in _ONNX_KNOWN if k in tensors}  # a chain (GroupNormalization -> Tanh) is followed
    out = []
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx") or n.op_type not in SAME_SHAPE_OPS or not n.output or not n.input:
            continue
        t = cur.get(n.input[0])
        if n.output[0] in declared or n.output[0] in cur or t is None or t.numel is None:
            continue
        if any(i and i not in cur and i not in _ONNX_KNOWN for i in n.input[1:]) and n.op_type == "Einsum":
            continue
        shape = t.shape
        if n.op_type == "Einsum":
            shape = _einsum_shape(n, [cur.get(i) for i in n.input])
            if shape is None:
                continue
        cur[n.output[0]] = TensorInfo(n.output[0], shape, t.elem_type)
        out.append(cur[n.output[0]])
    return out


def _einsum_shape(n: onnx.NodeProto, infos: list) -> tuple[int, ...] | None:
    """Einsum's output shape from its equation (ORT 1.31's symbolic inference gets
    '...x,xy->...y' on [3,109,96] x [96,12] wrong as [96,12,12]); None when it cannot be read."""
    eq = next((a.s.decode() for a in n.attribute if a.name == "equation"), "").replace(" ", "")
    if "->" not in eq or any(t is None or t.shape is None for t in infos):
        return None
    lhs, rhs = eq.split("->")
    terms = lhs.split(",")
    if len(terms) != len(infos):
        return None
    sizes: dict[str, int] = {}
    ell: tuple[int, ...] = ()
    for term, t in zip(terms, infos):
        letters = term.replace("...", "")
        n_ell = len(t.shape) - len(letters)
        if n_ell < 0 or (n_ell and "..." not in term):
            return None
        head = term.split("...")[0] if "..." in term else term
        dims = list(t.shape)
        e = tuple(dims[len(head):len(head) + n_ell]) if "..." in term else ()
        if len(e) > len(ell):
            ell = tuple(e[: len(e) - len(ell)]) + tuple(max(a, b) for a, b in zip(e[len(e) - len(ell):], ell))
        elif e:
            ell = tuple(ell[: len(ell) - len(e)]) + tuple(max(a, b) for a, b in zip(ell[len(ell) - len(e):], e))
        rest = dims[:len(head)] + dims[len(head) + n_ell:]
        for c, d in zip(letters, rest):
            sizes[c] = max(sizes.get(c, 1), d)
    head, _, tail = rhs.partition("...")
    if any(c not in sizes for c in head + tail):
        return None
    return tuple([sizes[c] for c in head] + (list(ell) if "..." in rhs else []) + [sizes[c] for c in tail])


def infer_shapes(pinned: onnx.ModelProto, note_holes: bool = True) -> dict[str, TensorInfo]:
    """Shapes of every tensor of a model whose inputs are pinned (best of both engines).

    Both engines run on the weightless skeleton: weights stay on disk and no model of any size
    is serialized whole. Where both leave holes, the shape computations that became known are
    evaluated and both run again (at most 5 times).
    """
    sk, _ = skeleton(pinned)
    del _FAILURES[:]
    tensors = _merge(sk)
    work = sk
    for _ in range(5):
        holes = _holes(tensors, sk)
        same = _same_shape(work, tensors)  # empty unless onnx's engine stopped somewhere
        if not holes and not same:
            break
        # not in a round that declares same-shape outputs: past where onnx's engine stopped, the sizes
        # are ORT's, which may be wrong (its Einsum mistake); a Shape folded from one would stay wrong
        res = _fold(work, tensors) if holes and not same else None
        same += _carried(work.graph, tensors)
        if res is None and not same:
            break
        work, new_vals = res or (work, {})
        if same:  # declared, so onnx's engine goes on past ops it does not infer (onnx 1.23 skips
            # function ops such as GroupNormalization-21) instead of leaving ORT's answer downstream
            work.graph.value_info.extend(onnx.helper.make_tensor_value_info(t.name, t.elem_type, list(t.shape))
                                         for t in same)
        more = _merge(work)
        more.update(new_vals)
        # the rerun knew more (folded values, declared shapes): where it finds a size, it wins
        filled = {k: v for k, v in more.items() if v.numel is not None and tensors.get(k) != v}
        if not filled and not same:
            break
        tensors.update(filled)
    for t in pinned.graph.initializer:  # the stripped weights: dims from their protos, as before
        tensors[t.name] = TensorInfo(t.name, tuple(t.dims), t.data_type)
    _loop_carried(pinned.graph, tensors)
    # a failure that cost nothing is not worth a word; a caller that fills holes itself (a Loop body's
    # sequence values, estimate_loops.complete) says what is left after it (note_holes=False)
    # a model with Loop/If/Scan (a chunked one): the estimate follows those and what they feed itself
    # (estimate_loops), and notes what it cannot; here only holes of plain models are said
    left = 0 if any(n.op_type in ("Loop", "If", "Scan") for n in pinned.graph.node) else _holes(tensors, pinned)
    if note_holes and _FAILURES and left:
        notes.note(f"shape inference left {left} tensor(s) unknown: " + "; ".join(dict.fromkeys(_FAILURES)))
    return tensors


def _carried(graph: onnx.GraphProto, tensors: dict[str, TensorInfo]) -> list[TensorInfo]:
    """A Loop's carried value whose shape neither engine infers takes its initial value's shape
    (what it keeps unless the body reshapes it; the Loop is opaque to planning either way)."""
    out = []
    for n in graph.node:
        if n.op_type != "Loop" or not is_standard(n.domain):
            continue
        carried = list(n.input)[2:]
        for init, o in zip(carried, n.output):
            have, start = tensors.get(o), tensors.get(init)
            if o and start is not None and start.numel is not None and (have is None or have.numel is None):
                out.append(TensorInfo(o, start.shape, start.elem_type))
    return out


def _loop_carried(graph: onnx.GraphProto, tensors: dict[str, TensorInfo]) -> None:
    for t in _carried(graph, tensors):
        tensors[t.name] = t


def infer_graph(pinned: onnx.ModelProto) -> Graph:
    """Shape-infer a model whose inputs are pinned; return the Graph index (best of both engines).

    Tensor sequences and the bodies of Loop/Scan/If are sized too (estimate_loops)."""
    from .estimate_loops import _EXTRA, complete, has_control

    tensors = infer_shapes(pinned)
    if not has_control(pinned):
        return Graph(pinned, tensors)
    done: dict[int, tuple] = {}
    extra = complete(pinned, tensors, done=done)
    work = pinned
    for _ in range(len(pinned.graph.node)):  # each round sizes the next loop of a chain
        if not _holes(tensors, pinned):
            break
        known = {k: v for k, v in tensors.items() if v.numel is not None and k not in work.graph.initializer}
        work = _with_value_info(pinned, known)
        more = infer_shapes(work)
        filled = {k: v for k, v in more.items() if v.numel is not None and (tensors.get(k) is None or tensors[k].numel is None)}
        if not filled:
            break
        tensors.update(filled)
        extra = complete(pinned, tensors, done=done)
    graph = Graph(pinned, tensors)
    graph.__dict__[_EXTRA] = extra
    return graph


def _with_value_info(model: onnx.ModelProto, known: dict[str, TensorInfo]) -> onnx.ModelProto:
    """A copy of `model` whose value_info states the shapes found so far (seeds the next inference)."""
    out = onnx.ModelProto()
    copy_fields(model, out, skip="graph")
    copy_fields(model.graph, out.graph, skip="value_info")
    names = {o for n in model.graph.node for o in n.output if o}
    for k, v in known.items():
        if k in names and v.shape is not None:
            out.graph.value_info.append(onnx.helper.make_tensor_value_info(k, v.elem_type, list(v.shape)))
    return out


def require_shapes(graph: Graph) -> None:
    """Name the first tensor whose size stays unknown: the estimate cannot stand without it."""
    from .estimate_loops import SequenceInfo

    for n in graph.nodes:
        for o in n.outputs:
            if not o:
                continue
            t = graph.info(o)
            if isinstance(t, SequenceInfo):
                continue
            if (t is None or t.numel is None) and ops.info(n).sequence:
                raise BadInputError(
                    f"cannot size {o!r} (node {n.name}, {n.op_type}): the estimate does not follow tensor sequences "
                    "(a chunked model's loops use them); estimate the original model, or measure the chunked one "
                    "with `autochunk-onnx verify ORIGINAL CHUNKED`")
            if t is None or t.numel is None:
                shape = "unknown" if t is None or t.shape is None else str(list(t.shape))
                raise BadInputError(
                    f"shape of tensor {o!r} (output of node {n.name}, {n.op_type}) stays {shape} after shape inference; "
                    "hint: pin every dynamic input dim with --input-shape NAME:DIMS"
                )
