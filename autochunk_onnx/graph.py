"""A small read-only index over an ONNX graph: nodes in order, tensor shapes, producers, consumers.

Planning works on this view; it never needs weight values, so initializers stay as protos (their
external data stays on disk) and only small constants are ever decoded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import onnx
from onnx import numpy_helper

from .graphutil import is_standard, opset_of, outer_reads
from .session import Session

# Bytes per element for ONNX dtypes numpy does not know (bfloat16, float8, 4-bit types).
_ITEMSIZE_FALLBACK = {
    onnx.TensorProto.BFLOAT16: 2,
    onnx.TensorProto.STRING: 8,
}


def itemsize(elem_type: int) -> float:
    """Bytes per element of an ONNX tensor type (0.5 for 4-bit types)."""
    if elem_type in _ITEMSIZE_FALLBACK:
        return _ITEMSIZE_FALLBACK[elem_type]
    name = onnx.TensorProto.DataType.Name(elem_type)
    if name.startswith("FLOAT8"):
        return 1
    if name in ("INT4", "UINT4", "FLOAT4E2M1"):
        return 0.5
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize


@dataclass
class TensorInfo:
    """Shape (concrete ints, or None where unknown) and dtype of one tensor."""

    name: str
    shape: tuple[int, ...] | None
    elem_type: int

    @cached_property
    def numel(self) -> int | None:
        if self.shape is None or any(d is None or d < 0 for d in self.shape):
            return None
        n = 1
        for d in self.shape:
            n *= d
        return n

    @cached_property
    def nbytes(self) -> int | None:
        n = self.numel
        return None if n is None else int(n * itemsize(self.elem_type))

    @property
    def dtype_name(self) -> str:
        return onnx.TensorProto.DataType.Name(self.elem_type).lower()


@dataclass
class Node:
    """One graph node with its position in execution order."""

    index: int
    proto: onnx.NodeProto

    @property
    def name(self) -> str:
        return self.proto.name or f"{self.proto.op_type}_{self.index}"

    @property
    def op_type(self) -> str:
        return self.proto.op_type

    @property
    def domain(self) -> str:
        return self.proto.domain

    @cached_property
    def inputs(self) -> list[str]:
        return list(self.proto.input)

    @cached_property
    def outputs(self) -> list[str]:
        return list(self.proto.output)

    @cached_property
    def attrs(self) -> dict:
        """Attribute values; string attributes (Einsum's equation, auto_pad, ...) as str, not bytes."""
        vals = {a.name: onnx.helper.get_attribute_value(a) for a in self.proto.attribute}
        return {k: v.decode() if isinstance(v, bytes) else v for k, v in vals.items()}

    def attr(self, name: str, default=None):
        return self.attrs.get(name, default)

    @cached_property
    def has_subgraph(self) -> bool:
        return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in self.proto.attribute)


@dataclass
class Graph:
    """Index over `onnx.GraphProto` plus the shapes that inference found."""

    model: onnx.ModelProto
    tensors: dict[str, TensorInfo]
    nodes: list[Node] = field(init=False)
    producer: dict[str, int] = field(init=False)
    consumers: dict[str, list[int]] = field(init=False)
    session: Session = field(init=False)  # facts kept across the calls that plan this graph

    def __post_init__(self) -> None:
        g = self.model.graph
        self.nodes = [Node(i, n) for i, n in enumerate(g.node)]
        self.producer = {}
        self.consumers = {}
        for n in self.nodes:
            for o in n.outputs:
                if o:
                    self.producer[o] = n.index
            for i in n.inputs:
                if i:
                    self.consumers.setdefault(i, []).append(n.index)
        self.initializers = {t.name: t for t in g.initializer}
        self.input_names = [i.name for i in g.input if i.name not in self.initializers]
        self.output_names = [o.name for o in g.output]
        self._const_cache: dict[str, np.ndarray | None] = {}
        self.session = Session()

    def reads(self, index: int) -> list[str]:
        """Tensors node `index` reads: its inputs, plus what its subgraphs read from this scope."""
        n = self.nodes[index]
        ins = [i for i in n.inputs if i]
        return ins + outer_reads(n.proto) if n.has_subgraph else ins

    @cached_property
    def read_count(self) -> dict[str, int]:
        """How many nodes (subgraph readers included) and graph outputs read each tensor."""
        counts: dict[str, int] = {}
        for n in self.nodes:
            for i in self.reads(n.index):
                counts[i] = counts.get(i, 0) + 1
        for o in self.output_names:
            counts[o] = counts.get(o, 0) + 1
        return counts

    @property
    def opset(self) -> int:
        return opset_of(self.model)

    def info(self, name: str) -> TensorInfo | None:
        return self.tensors.get(name)

    def shape(self, name: str) -> tuple[int, ...] | None:
        t = self.tensors.get(name)
        return None if t is None else t.shape

    def nbytes(self, name: str) -> int:
        t = self.tensors.get(name)
        return 0 if t is None else (t.nbytes or 0)

    def is_weight(self, name: str) -> bool:
        return name in self.initializers

    def const_value(self, name: str, max_elems: int = 1 << 16) -> np.ndarray | None:
        """Value of a small constant (initializer with inline data, or Constant node); None otherwise."""
        if name in self._const_cache:
            return self._const_cache[name]
        val = None
        if name in self.initializers:
            t = self.initializers[name]
            if t.data_location != onnx.TensorProto.EXTERNAL and np.prod(t.dims, dtype=np.int64) <= max_elems:
                val = numpy_helper.to_array(t)
        elif name in self.producer:
            n = self.nodes[self.producer[name]]
            if n.op_type == "Constant" and is_standard(n.domain):
                a = n.proto.attribute[0]
                if a.name == "value":
                    val = numpy_helper.to_array(a.t)
                elif a.name in ("value_int", "value_ints", "value_float", "value_floats"):
                    val = np.array(onnx.helper.get_attribute_value(a))
        self._const_cache[name] = val
        return val

