"""Infer every tensor's concrete shape once the input dims are pinned.

ONNX Runtime's symbolic shape inference resolves far more than onnx's own (shape subgraphs,
Reshape targets); onnx's with data propagation is the fallback when it fails.
"""
from __future__ import annotations

import contextlib
import io
import logging

import onnx

from .errors import BadInputError
from .graph import Graph, TensorInfo


def _infer_ort(model: onnx.ModelProto) -> onnx.ModelProto | None:
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:
        return None
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    except Exception:  # noqa: BLE001 - any failure means: try the other engine
        return None


def _infer_onnx(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001
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


def _known(tensors: dict[str, TensorInfo], model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node for o in n.output if o and tensors.get(o) and tensors[o].numel is not None)


def infer_graph(pinned: onnx.ModelProto) -> Graph:
    """Shape-infer a model whose inputs are pinned; return the Graph index (best of both engines)."""
    candidates = []
    ort = _infer_ort(pinned)
    if ort is not None:
        candidates.append(_collect(ort))
    needs_fallback = not candidates or _known(candidates[0], pinned) < sum(1 for n in pinned.graph.node for o in n.output if o)
    if needs_fallback:
        fb = _collect(_infer_onnx(pinned))
        if candidates:  # fill the holes ORT left with onnx's answers
            merged = dict(fb)
            merged.update({k: v for k, v in candidates[0].items() if v.numel is not None or k not in fb})
            candidates[0] = merged
        else:
            candidates.append(fb)
    return Graph(pinned, candidates[0])


def require_shapes(graph: Graph) -> None:
    """Name the first tensor whose size stays unknown: the estimate cannot stand without it."""
    for n in graph.nodes:
        for o in n.outputs:
            if not o:
                continue
            t = graph.info(o)
            if t is None or t.numel is None:
                shape = "unknown" if t is None or t.shape is None else str(list(t.shape))
                raise BadInputError(
                    f"shape of tensor {o!r} (output of node {n.name}, {n.op_type}) stays {shape} after shape inference; "
                    "hint: pin every dynamic input dim with --input-shape NAME:DIMS"
                )
