"""Memory of control flow (Loop, Scan, If) and tensor sequences, for the estimate.

A chunked model (ours or anyone's) runs its big regions inside `Loop`s that collect one chunk per
iteration into a tensor sequence (`SequenceEmpty` -> `SequenceInsert` in the body ->
`ConcatFromSequence` after the loop). What ONNX Runtime 1.31 CPU holds there (profiler, exact arena,
node by node on a chunked GPT):

* inside iteration k: the chunks collected so far, plus the body's own live tensors (its peak is
  the body replayed like any graph, at the shapes of that iteration);
* `SequenceInsert` keeps a copy of the inserted chunk; the sequence grows by it each iteration;
* after the loop, `ConcatFromSequence` allocates the joined output while the sequence is still
  live (2x the output for a moment); scan outputs are joined the same way by the Loop itself.

Shapes inside a body are not in the model (only a symbolic chunk dim at best): each body is
flattened into a standalone model for one iteration (iteration number and condition as
constants, outer-scope tensors as inputs, small outer values as constants) and shape-inferred like
the main graph, at the first iteration and at the last (the uneven chunk). Iterations in between
are taken to be like the first. Where the trip count cannot be read (a loop stopped by its
condition), one iteration is assumed and a note says the estimate may be low.

`loop_peak` is the one model of a loop's memory: the planner's regions (schedule.region_step)
and loops read from a written model both use it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import notes
from .graph import Graph, Node, TensorInfo, itemsize, outer_reads
from .kernels import LOOP_BODY

SEQUENCE_OPS = frozenset({"SequenceEmpty", "SequenceConstruct", "SequenceInsert", "SequenceErase", "SplitToSequence",
                          "ConcatFromSequence", "SequenceAt", "SequenceLength"})
CONTROL_OPS = frozenset({"Loop", "Scan", "If"})
SHAPE_LIKE = 64  # elements: a ConstantOfShape this small builds a shape (full_like of a shape)
SMALL = 1 << 16  # elements: outer values passed into a body as constants (trip counts, chunk sizes)


@dataclass
class SequenceInfo(TensorInfo):
    """A tensor sequence: the shapes of its elements, and the bytes they hold."""

    elems: list[tuple[int, ...]] = field(default_factory=list)

    @cached_property
    def numel(self) -> int | None:  # type: ignore[override]
        return None

    @property
    def nbytes(self) -> int:  # type: ignore[override]
        return int(sum(math.prod(s) for s in self.elems) * itemsize(self.elem_type))


@dataclass
class BodyRun:
    """One iteration of a body: its peak (its own live tensors) and what it hands back."""

    peak: int
    kept: int  # bytes this iteration adds to the loop's sequences and scan outputs
    tensors: dict[str, TensorInfo]
    graph: Graph | None = None


def loop_peak(first_peak: int, last_peak: int, kept_per_iter: int, kept_last: int, trips: int, outputs: int,
              joined: int) -> int:
    """Bytes a Loop holds at its worst moment, outputs included.

    Iteration k holds what iterations 0..k-1 collected (`kept_per_iter` each) plus its own peak;
    the last iteration may be smaller (uneven chunk). After the loop, `joined` bytes are built while
    the collected pieces are still live (scan outputs joined by the Loop; for sequences that is the
    ConcatFromSequence after it, a step of its own, so 0 here). `outputs`: the Loop's own outputs.
    """
    trips = max(1, trips)
    during = max(first_peak + kept_per_iter * (trips - 2) if trips >= 2 else first_peak,
                 last_peak + kept_per_iter * (trips - 1))
    collected = kept_per_iter * (trips - 1) + kept_last
    return max(during, collected + joined, outputs)


# --- small outer values -------------------------------------------------------------------------
def small_values(g: onnx.GraphProto, tensors: dict[str, TensorInfo], opset: int, known: dict | None = None) -> dict:
    """Values of the small tensors computable from shapes and constants (trip counts, chunk sizes)."""
    from . import ops

    try:
        from onnx.reference import ReferenceEvaluator
    except ImportError:  # pragma: no cover - onnx always ships it
        return dict(known or {})
    values: dict = dict(known or {})
    for t in g.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL and math.prod(t.dims) <= SMALL:
            try:
                values[t.name] = numpy_helper.to_array(t)
            except Exception:  # noqa: BLE001 - a value we cannot read is simply unknown
                pass
    for n in g.node:
        if n.domain not in ("", "ai.onnx") or not ops.info(n).fold or not n.output or not n.output[0]:
            continue
        try:
            if n.op_type in ("Shape", "Size"):
                t = tensors.get(n.input[0])
                if t is None or t.numel is None:
                    continue
                if n.op_type == "Size":
                    values[n.output[0]] = np.array(t.numel, dtype=np.int64)
                else:
                    a = {x.name: x.i for x in n.attribute}
                    dims = np.array(t.shape, dtype=np.int64)
                    values[n.output[0]] = dims[a.get("start", 0):a["end"] if "end" in a else None]
                continue
            ins = [i for i in n.input if i]
            if not all(i in values and values[i].size <= SMALL for i in ins):
                continue
            if n.op_type == "Range" or (n.op_type == "ConstantOfShape"
                                        and math.prod(values[ins[0]].reshape(-1).tolist()) > SHAPE_LIKE):
                continue  # may be large; a shape-sized ConstantOfShape (an Expand target) is a value
            res = ReferenceEvaluator(n, opsets={"": opset}).run(None, {i: values[i] for i in ins})
            for o, v in zip([o for o in n.output if o], res):
                v = np.asarray(v)
                if v.size <= SMALL and v.dtype != object:
                    values[o] = v
        except Exception:  # noqa: BLE001 - unknown stays unknown
            continue
    return values


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


# --- flattening a body --------------------------------------------------------------------------
def _body_model(model: onnx.ModelProto, body: onnx.GraphProto, feeds: dict[str, object],
                tensors: dict[str, TensorInfo], values: dict) -> onnx.ModelProto:
    """A standalone model running `body` once: `feeds` give each body input a value (np.ndarray), a
    TensorInfo (shape) or a TypeProto; outer-scope reads become inputs (or constants when small)."""
    g = helper.make_graph([], body.name or "body", [], [])
    local = {i.name for i in body.input}
    for name, f in feeds.items():
        if isinstance(f, np.ndarray):
            g.initializer.append(numpy_helper.from_array(f, name))
        elif isinstance(f, TensorInfo) and not isinstance(f, SequenceInfo):
            g.input.append(helper.make_tensor_value_info(name, f.elem_type, list(f.shape) if f.shape is not None else None))
        else:
            vi = g.input.add()
            vi.name = name
            vi.type.CopyFrom(f if isinstance(f, onnx.TypeProto) else _seq_type(f.elem_type))
    fake = onnx.NodeProto()
    fake.attribute.add().CopyFrom(helper.make_attribute("body", body))
    for name in outer_reads(fake):
        if name in local:
            continue
        v = values.get(name)
        t = tensors.get(name)
        if v is not None and v.size <= SMALL:
            g.initializer.append(numpy_helper.from_array(np.asarray(v), name))
        elif isinstance(t, SequenceInfo):
            vi = g.input.add()
            vi.name = name
            vi.type.CopyFrom(_seq_type(t.elem_type))
        elif t is not None:
            g.input.append(helper.make_tensor_value_info(name, t.elem_type, list(t.shape) if t.shape is not None else None))
    g.node.extend(body.node)
    g.initializer.extend(body.initializer)
    for o in body.output:
        vi = g.output.add()
        vi.name = o.name
        vi.type.CopyFrom(o.type)
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    m.graph.CopyFrom(g)
    return m


def _seq_type(elem_type: int) -> onnx.TypeProto:
    tp = onnx.TypeProto()
    tp.sequence_type.elem_type.tensor_type.elem_type = elem_type
    return tp


def _run_body(model: onnx.ModelProto, body: onnx.GraphProto, feeds: dict[str, object], tensors: dict[str, TensorInfo],
              values: dict, seq_in: dict[str, SequenceInfo]) -> BodyRun:
    """Infer the body's shapes for one iteration and replay its memory (outer tensors not counted)."""
    from .peak import graph_steps, liveness
    from .shapes import infer_shapes

    flat = _body_model(model, body, feeds, tensors, values)
    inner = infer_shapes(flat, note_holes=False)
    extra = complete(flat, inner, seq_in)
    bg = Graph(flat, inner)
    bg.__dict__[_EXTRA] = extra
    bg.__dict__[LOOP_BODY] = True  # ORT's level-3 rewrites (NCHWc Conv) do not reach bodies
    steps = graph_steps(bg)
    produced = {o for n in body.node for o in n.output if o}
    sizes = {}
    for k, v in inner.items():
        if k in produced:
            sizes[k] = v.nbytes or 0
    kept = 0
    for n in bg.nodes:  # a sequence's own bytes here: what this step added to it
        if n.op_type in SEQUENCE_OPS and n.outputs and isinstance(inner.get(n.outputs[0]), SequenceInfo):
            sizes[n.outputs[0]] = _added_bytes(bg, n)
    for o in body.output:
        if o.name in produced:
            kept += sizes.get(o.name, 0)
    outs = [o.name for o in body.output]
    peak = liveness(steps, sizes, inputs=[], outputs=outs, named=False).peak
    return BodyRun(int(peak), int(kept), inner, bg)


def _added_bytes(g: Graph, n: Node) -> int:
    """Bytes a sequence op allocates: the copy of the inserted tensor (the others are shared)."""
    if n.op_type == "SequenceInsert":
        return g.nbytes(n.inputs[1])
    if n.op_type in ("SequenceConstruct", "SplitToSequence"):
        return sum(g.nbytes(i) for i in n.inputs[:1 if n.op_type == "SplitToSequence" else None] if i)
    return 0


# --- the graph's control flow -------------------------------------------------------------------
_EXTRA = "_control_extra"  # kept on the Graph: node index -> bytes held beyond its outputs


def attach(graph: Graph) -> Graph:
    """Size the graph's sequences and control flow (see `complete`) and keep the result on it."""
    graph.__dict__[_EXTRA] = complete(graph.model, graph.tensors)
    return graph


def control_extra(graph: Graph, node: Node) -> int:
    """Bytes a Loop/Scan/If holds while it runs, beyond its outputs (0 for other nodes)."""
    extra = graph.__dict__.get(_EXTRA)
    if extra is None:
        extra = attach(graph).__dict__[_EXTRA]
    return extra.get(node.index, 0)


def has_control(model: onnx.ModelProto) -> bool:
    return any(n.op_type in SEQUENCE_OPS or n.op_type in CONTROL_OPS for n in model.graph.node)


def complete(model: onnx.ModelProto, tensors: dict[str, TensorInfo], seq_in: dict[str, SequenceInfo] | None = None,
             done: dict[int, tuple] | None = None) -> dict[int, int]:
    """Fill in sequence sizes and the shapes behind control flow; return node -> extra bytes.

    Walks the graph in order: sequence ops get a SequenceInfo, Loop/Scan/If bodies are inferred per
    iteration, their outputs sized, ConcatFromSequence and SequenceAt outputs shaped from the
    sequence's elements. Mutates `tensors`. `done` (node -> (extra, outputs)) keeps the nodes
    already followed across calls: a control node whose inputs are not all sized yet is left for
    the next call (after shape inference has carried the new shapes down).
    """
    g = model.graph
    if seq_in:
        tensors.update(seq_in)
    if not has_control(model):
        return {}
    done = {} if done is None else done
    opset = _opset(model)
    values = small_values(g, tensors, opset)
    extra: dict[int, int] = {}
    for k, n in enumerate(g.node):
        if n.domain not in ("", "ai.onnx"):
            continue
        if k in done:
            extra[k], outs = done[k]
            tensors.update(outs)
            continue
        if n.op_type in SEQUENCE_OPS:
            _sequence_op(n, tensors)
            continue
        if n.op_type not in CONTROL_OPS:
            continue
        reads = [i for i in list(n.input) + outer_reads(n) if i]
        if any(tensors.get(i) is None or (tensors[i].numel is None and not isinstance(tensors[i], SequenceInfo))
               for i in reads if i not in values):
            continue  # not sized yet: the next round
        before = dict(tensors)
        try:
            if n.op_type == "Loop":
                extra[k] = _loop(model, n, tensors, values)
            elif n.op_type == "Scan":
                extra[k] = _scan(model, n, tensors, values)
            else:
                extra[k] = _if(model, n, tensors, values)
        except Exception as e:  # noqa: BLE001 - a body we cannot follow: said, not hidden
            notes.note(f"estimate: {n.op_type} node {n.name or k} not followed ({type(e).__name__}: {e}); "
                       "its memory is not counted, the estimate may be low")
            extra[k] = 0
        done[k] = (extra[k], {o: tensors[o] for o in n.output if o and tensors.get(o) is not before.get(o)
                              and tensors.get(o) is not None})
        values = small_values(g, tensors, opset, values)
    return extra


def _tensor_or_seq(tensors, name):
    return tensors.get(name) if name else None


def _sequence_op(n: onnx.NodeProto, tensors: dict[str, TensorInfo]) -> None:
    op = n.op_type
    out = n.output[0] if n.output else ""
    if not out:
        return
    if op == "SequenceEmpty":
        dtype = next((a.i for a in n.attribute if a.name == "dtype"), onnx.TensorProto.FLOAT)
        tensors[out] = SequenceInfo(out, None, dtype, [])
    elif op == "SequenceInsert":
        s, t = tensors.get(n.input[0]), tensors.get(n.input[1])
        if isinstance(s, SequenceInfo) and t is not None and t.shape is not None and t.numel is not None:
            tensors[out] = SequenceInfo(out, None, t.elem_type, s.elems + [tuple(t.shape)])
    elif op == "SequenceConstruct":
        ts = [tensors.get(i) for i in n.input]
        if ts and all(t is not None and t.numel is not None for t in ts):
            tensors[out] = SequenceInfo(out, None, ts[0].elem_type, [tuple(t.shape) for t in ts])
    elif op == "SequenceErase":
        s = tensors.get(n.input[0])
        if isinstance(s, SequenceInfo) and s.elems:
            tensors[out] = SequenceInfo(out, None, s.elem_type, s.elems[:-1])  # which one: unknown, same sizes here
    elif op == "SplitToSequence":
        t = tensors.get(n.input[0])
        if t is not None and t.numel is not None:
            tensors[out] = SequenceInfo(out, None, t.elem_type, [tuple(t.shape)])  # the same bytes, in pieces
    elif op == "ConcatFromSequence":
        s = tensors.get(n.input[0])
        have = tensors.get(out)
        if isinstance(s, SequenceInfo) and s.elems and (have is None or have.numel is None):
            a = {x.name: x.i for x in n.attribute}
            axis, new_axis = a.get("axis", 0), a.get("new_axis", 0)
            first = list(s.elems[0])
            if new_axis:
                r = len(first) + 1
                axis = axis % r
                shape = first[:axis] + [len(s.elems)] + first[axis:]
            else:
                axis = axis % len(first)
                shape = first[:axis] + [sum(e[axis] for e in s.elems)] + first[axis + 1:]
            tensors[out] = TensorInfo(out, tuple(shape), s.elem_type)
    elif op == "SequenceAt":
        s = tensors.get(n.input[0])
        have = tensors.get(out)
        if isinstance(s, SequenceInfo) and s.elems and (have is None or have.numel is None):
            big = max(s.elems, key=math.prod)  # which element: unknown here; the largest
            tensors[out] = TensorInfo(out, tuple(big), s.elem_type)


def _graph_attr(n: onnx.NodeProto, name: str) -> onnx.GraphProto:
    return next(a.g for a in n.attribute if a.name == name)


def _loop(model, n: onnx.NodeProto, tensors, values) -> int:
    body = _graph_attr(n, "body")
    trip_name = n.input[0] if len(n.input) > 0 else ""
    trips = None
    if trip_name and trip_name in values:
        trips = int(np.asarray(values[trip_name]).reshape(-1)[0])
    if trips is None:
        notes.note(f"estimate: the trip count of Loop {n.name or '?'} is not known before running it; "
                   "one iteration is counted, the estimate may be low")
        trips = 1
    carried = list(n.input[2:])
    n_carried = len(carried)
    b_in = list(body.input)

    def feeds(k: int) -> tuple[dict, dict]:
        f: dict[str, object] = {b_in[0].name: np.array(k, dtype=np.int64)}
        if len(b_in) > 1:
            f[b_in[1].name] = np.array(True)
        seqs = {}
        for vi, src in zip(b_in[2:], carried):
            t = tensors.get(src)
            if isinstance(t, SequenceInfo):
                seqs[vi.name] = SequenceInfo(vi.name, None, t.elem_type, list(t.elems))
                f[vi.name] = t
            elif src in values and values[src].size <= SMALL:
                f[vi.name] = np.asarray(values[src])
            elif t is not None:
                f[vi.name] = t
            else:
                f[vi.name] = vi.type
        return f, seqs

    f0, s0 = feeds(0)
    first = _run_body(model, body, f0, tensors, values, s0)
    last = first
    if trips > 1:
        fl, sl = feeds(trips - 1)
        last = _run_body(model, body, fl, tensors, values, sl)
    outs = list(n.output)
    b_out = [o.name for o in body.output]
    total_out = 0
    joined = 0
    for j, o in enumerate(outs):
        if not o:
            continue
        src = b_out[1 + j] if 1 + j < len(b_out) else None
        if j < n_carried:
            a, b = first.tensors.get(src), last.tensors.get(src)
            init = tensors.get(carried[j])
            if isinstance(b, SequenceInfo):
                grow0 = a.elems[len(init.elems):] if isinstance(init, SequenceInfo) and isinstance(a, SequenceInfo) else []
                growl = b.elems[len(init.elems):] if isinstance(init, SequenceInfo) else []
                elems = (list(init.elems) if isinstance(init, SequenceInfo) else []) + grow0 * (trips - 1) + growl
                tensors[o] = SequenceInfo(o, None, b.elem_type, elems)
            elif b is not None and b.numel is not None:
                if (tensors.get(o) is None or tensors[o].numel is None):
                    tensors[o] = TensorInfo(o, b.shape, b.elem_type)
                joined += b.nbytes or 0  # the last value is copied into the output
        else:  # scan output: one piece per iteration, joined along a new axis 0
            a, b = first.tensors.get(src), last.tensors.get(src)
            if b is not None and b.numel is not None:
                if tensors.get(o) is None or tensors[o].numel is None:
                    tensors[o] = TensorInfo(o, (trips,) + tuple(b.shape), b.elem_type)
                joined += tensors[o].nbytes or 0
        total_out += (tensors[o].nbytes or 0) if tensors.get(o) is not None else 0
    held = loop_peak(first.peak, last.peak, first.kept, last.kept, trips, total_out, joined)
    return max(0, held - total_out)


def _scan(model, n: onnx.NodeProto, tensors, values) -> int:
    body = _graph_attr(n, "body")
    a = {x.name: x for x in n.attribute}
    n_scan = a["num_scan_inputs"].i
    b_in = list(body.input)
    n_state = len(b_in) - n_scan
    axes = list(a["scan_input_axes"].ints) if "scan_input_axes" in a else [0] * n_scan
    ins = list(n.input)
    f: dict[str, object] = {}
    for vi, src in zip(b_in[:n_state], ins[:n_state]):
        t = tensors.get(src)
        f[vi.name] = np.asarray(values[src]) if src in values else (t if t is not None else vi.type)
    trips = 1
    for j, (vi, src) in enumerate(zip(b_in[n_state:], ins[n_state:])):
        t = tensors.get(src)
        if t is None or t.shape is None:
            f[vi.name] = vi.type
            continue
        ax = axes[j] % len(t.shape)
        trips = t.shape[ax]
        f[vi.name] = TensorInfo(vi.name, tuple(d for i, d in enumerate(t.shape) if i != ax), t.elem_type)
    run = _run_body(model, body, f, tensors, values, {})
    outs = list(n.output)
    b_out = [o.name for o in body.output]
    for j, o in enumerate(outs):
        b = run.tensors.get(b_out[j]) if j < len(b_out) else None
        if not o or b is None or b.numel is None or (tensors.get(o) is not None and tensors[o].numel is not None):
            continue
        tensors[o] = TensorInfo(o, b.shape if j < n_state else (trips,) + tuple(b.shape), b.elem_type)
    return run.peak  # scan outputs are written in place, one slice per iteration


def _if(model, n: onnx.NodeProto, tensors, values) -> int:
    peaks = []
    shapes: dict[str, list] = {}
    for attr in ("then_branch", "else_branch"):
        body = _graph_attr(n, attr)
        run = _run_body(model, body, {}, tensors, values, {})
        peaks.append(run.peak)
        for o, bo in zip(n.output, body.output):
            shapes.setdefault(o, []).append(run.tensors.get(bo.name))
    out_bytes = 0
    for o, cands in shapes.items():
        known = [c for c in cands if c is not None and c.numel is not None]
        if o and known and (tensors.get(o) is None or tensors[o].numel is None):
            big = max(known, key=lambda c: c.nbytes or 0)  # the branch is chosen at run time: the larger
            tensors[o] = TensorInfo(o, big.shape, big.elem_type)
        if o and tensors.get(o) is not None:
            out_bytes += tensors[o].nbytes or 0
    return max(0, max(peaks) - out_bytes)  # a branch writes its outputs into the If's
