"""Activation-memory estimate: liveness over the execution order, modelling ORT's buffer reuse.

A tensor lives from its producer until its last consumer has run; graph inputs from the start,
graph outputs to the end; initializers are weights, reported apart. Where ONNX Runtime is certain
to share a buffer (view ops such as Reshape; in-place elementwise ops whose input dies at that
node) the estimate shares it too, so it tracks what ORT really allocates.
"""
from __future__ import annotations

import math

from dataclasses import asdict, dataclass, field

import onnx

from .graph import Graph, Node, TensorInfo, itemsize

# Ops whose output is a view of input 0 in ORT (no new buffer).
ALIAS_OPS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Dropout"})
# Ops ORT runs in place on input 0 when that input dies at the node and sizes match (measured
# with ORT 1.31 CPU: Relu, Sigmoid, Tanh and Softmax reuse their input; Erf, Exp, Gelu do not).
INPLACE_UNARY = frozenset({
    "Relu", "LeakyRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "Tanh", "Softplus", "Softsign",
    "ThresholdedRelu", "Softmax", "LogSoftmax",
})
# Binary ops ORT runs in place when both inputs already have the output's shape (no broadcast).
INPLACE_BINARY = frozenset({"Add", "Sub", "Mul", "Div"})


@dataclass
class Step:
    """One unit of execution: a node, or a chunked region standing in for many nodes."""

    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    extra_bytes: int = 0  # transient memory held while the step runs, above its outputs
    alias: bool = False
    inplace: bool = False
    src: int = 0  # which input an alias/in-place output shares its buffer with


@dataclass
class LiveTensor:
    name: str
    shape: list[int] | None
    dtype: str
    bytes: int
    producer: str


@dataclass
class TimelinePoint:
    index: int
    node: str
    op_type: str
    live_bytes: int


@dataclass
class Estimate:
    """Peak activation bytes, where it happens, and what is live there."""

    peak_bytes: int
    peak_index: int
    peak_node: str
    peak_op: str
    weight_bytes: int
    input_bytes: int
    output_bytes: int
    live_at_peak: list[LiveTensor] = field(default_factory=list)
    timeline: list[TimelinePoint] = field(default_factory=list)
    after: list[int] = field(default_factory=list, repr=False)  # live bytes once each step freed its inputs

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("after")
        return d


def node_step(graph: Graph, node: Node, fused: dict[int, int] | None = None) -> Step:
    """The Step for a plain graph node, with ORT's reuse behaviour and known workspaces."""
    op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
    extra = workspace_bytes(graph, node)
    ins = [i for i in node.inputs if i]
    step = Step(node.name, op, ins, [o for o in node.outputs if o], extra, alias=op in ALIAS_OPS,
                inplace=op in INPLACE_UNARY)
    if op in INPLACE_BINARY and len(ins) == 2:
        out = graph.shape(node.outputs[0])
        step.inplace = all(graph.shape(i) == out for i in ins)
    if fused and node.index in fused:
        step.alias, step.src = True, ins.index(node.inputs[fused[node.index]])
    if op == "Gelu" and fused and graph.producer.get(node.inputs[0]) in fused:
        step.extra_bytes += graph.nbytes(node.outputs[0])  # BiasGelu holds an output-sized temporary (measured)
    return step


def _scalar_const(graph: Graph, name: str) -> bool:
    v = graph.const_value(name)
    return v is not None and v.size == 1


def fusions(graph: Graph) -> dict[int, int]:
    """Nodes ORT's graph optimizer folds into a neighbour, so their output never gets a buffer.

    Returns node index -> the input whose buffer the output shares. Patterns (ORT level-2
    fusions, checked against ORT's optimized model): MatMul followed by Mul/Div by a scalar
    (FusedMatMul), the Erf form of GELU (Div, Erf, Add 1, Mul x, Mul 0.5 -> Gelu), and
    Add bias + Gelu (BiasGelu).
    """
    out: dict[int, int] = {}
    nodes = graph.nodes

    def single_consumer(t: str) -> int | None:
        c = graph.consumers.get(t, [])
        return c[0] if len(c) == 1 and t not in graph.output_names else None

    for n in nodes:
        if n.op_type in ("Mul", "Div") and len(n.inputs) == 2:
            for k in (0, 1) if n.op_type == "Mul" else (0,):
                data, other = n.inputs[k], n.inputs[1 - k]
                p = graph.producer.get(data)
                if p is not None and nodes[p].op_type == "MatMul" and _scalar_const(graph, other) and single_consumer(data) == n.index:
                    out[n.index] = k
        if n.op_type == "Erf":
            p = graph.producer.get(n.inputs[0])
            if p is not None and nodes[p].op_type in ("Div", "Mul") and _scalar_const(graph, nodes[p].inputs[1]):
                out[p] = 0
            out[n.index] = 0
            c = single_consumer(n.outputs[0])
            if c is not None and nodes[c].op_type == "Add":
                out[c] = nodes[c].inputs.index(n.outputs[0])
                m = single_consumer(nodes[c].outputs[0])
                if m is not None and nodes[m].op_type == "Mul":
                    h = single_consumer(nodes[m].outputs[0])
                    if h is not None and nodes[h].op_type == "Mul" and any(_scalar_const(graph, i) for i in nodes[h].inputs):
                        out[h] = 0 if not _scalar_const(graph, nodes[h].inputs[0]) else 1
        if n.op_type == "Gelu":
            p = graph.producer.get(n.inputs[0])
            if p is not None and nodes[p].op_type == "Add" and single_consumer(n.inputs[0]) == n.index:
                pa = nodes[p]
                data = next((k for k, i in enumerate(pa.inputs) if graph.producer.get(i) is not None
                             and graph.shape(i) == graph.shape(pa.outputs[0])), None)
                if data is not None:
                    out[p] = data  # BiasGelu reads the MatMul output directly; no Add buffer
    return out


def workspace_bytes(graph: Graph, node: Node) -> int:
    """Scratch memory a kernel needs beyond its outputs (ORT CPU), where it is large and certain."""
    op = node.op_type
    if op == "Einsum":  # ORT's Einsum copies inputs into transposed temporaries around its GEMMs
        return sum(graph.nbytes(i) for i in node.inputs if i) + 2 * graph.nbytes(node.outputs[0])
    if op == "Where":  # ORT's Where builds the result in two masked passes (measured 1.25-2x output)
        same = all(graph.shape(i) == graph.shape(node.outputs[0]) for i in node.inputs)
        return graph.nbytes(node.outputs[0]) * (2 if same else 5) // (1 if same else 4)
    if op == "Conv":
        w = graph.shape(node.inputs[1]) if len(node.inputs) > 1 else None
        y = graph.shape(node.outputs[0])
        if w and y and len(w) >= 3 and any(k != 1 for k in w[2:]):
            group = node.attr("group", 1)
            col = (w[1] * int(math.prod(w[2:]))) * int(math.prod(y[2:]))  # im2col buffer of one image, one group
            return int(col * itemsize(graph.info(node.outputs[0]).elem_type)) if group == 1 else 0
    if node.has_subgraph:
        return subgraph_peak(graph, node)
    return 0



def subgraph_peak(graph: Graph, node: Node) -> int:
    """Peak of a Loop/If/Scan body from the shapes inference left in it; 0 when unknown."""
    best = 0
    for a in node.proto.attribute:
        bodies = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []
        for body in bodies:
            tensors: dict[str, TensorInfo] = {}
            for vi in list(body.value_info) + list(body.output):
                tt = vi.type.tensor_type
                if vi.type.HasField("tensor_type") and tt.HasField("shape"):
                    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
                    tensors[vi.name] = TensorInfo(vi.name, shape, tt.elem_type)
            sizes = {k: (v.nbytes or 0) for k, v in tensors.items()}
            steps = [Step(n.name, n.op_type, [i for i in n.input if i], [o for o in n.output if o],
                          alias=n.op_type in ALIAS_OPS, inplace=n.op_type in INPLACE_OPS) for n in body.node]
            inner = {o for n in body.node for o in n.output}
            peak, *_ = liveness(steps, sizes, inputs=[], outputs=[o.name for o in body.output], external=lambda t: t not in inner)
            best = max(best, peak)
    return best


def liveness(steps: list[Step], sizes: dict[str, int], inputs: list[str], outputs: list[str], external=lambda t: False):
    """Core walk. Returns (peak, peak_index, live roots at the peak, bytes at each step, bytes after each step).

    `external(t)` marks tensors that are not activations of this walk (weights, outer scope).
    """
    last_use: dict[str, int] = {}
    for i, s in enumerate(steps):
        for t in s.inputs:
            last_use[t] = i
    end = len(steps)
    for t in outputs:
        last_use[t] = end
    owner: dict[str, str] = {}  # tensor -> buffer root
    buf_bytes: dict[str, int] = {}
    buf_last: dict[str, int] = {}
    protected: set[str] = set(inputs)  # ORT never writes into graph inputs
    live = 0
    for t in inputs:
        owner[t] = t
        buf_bytes[t] = sizes.get(t, 0)
        buf_last[t] = last_use.get(t, -1)
        live += buf_bytes[t]
    frees: dict[int, list[str]] = {}
    for t, b in buf_last.items():
        frees.setdefault(max(b, -1), []).append(t)
    peak, peak_i, peak_live = live, -1, None
    timeline = []
    after = []
    live_roots: set[str] = set(inputs)
    for i, s in enumerate(steps):
        alloc = 0
        for k, o in enumerate(s.outputs):
            src = s.inputs[s.src] if s.inputs else None
            nbytes = sizes.get(o, 0)
            lu = last_use.get(o, i)
            if k == 0 and src is not None and not external(src) and src in owner and (
                s.alias or (s.inplace and buf_last[owner[src]] == i and owner[src] not in protected and buf_bytes[owner[src]] == nbytes)
            ):
                root = owner[src]
                owner[o] = root
                if lu > buf_last[root]:
                    frees[buf_last[root]].remove(root)
                    buf_last[root] = lu
                    frees.setdefault(lu, []).append(root)
                continue
            owner[o] = o
            buf_bytes[o] = nbytes
            buf_last[o] = lu
            frees.setdefault(lu, []).append(o)
            live_roots.add(o)
            alloc += nbytes
        live += alloc
        here = live + s.extra_bytes
        if here > peak:
            peak, peak_i, peak_live = here, i, set(live_roots)
        timeline.append(here)
        for t in frees.pop(i, []):
            live -= buf_bytes[t]
            live_roots.discard(t)
        after.append(live)
    if peak_live is None:
        peak_live = set(live_roots)
    return peak, peak_i, peak_live, timeline, after


def graph_steps(graph: Graph) -> list[Step]:
    fused = fusions(graph)
    return [node_step(graph, n, fused) for n in graph.nodes]


def estimate_steps(graph: Graph, steps: list[Step], producer_name: dict[str, str] | None = None) -> Estimate:
    """Estimate a step list over `graph`'s tensors (steps may be regions from the planner)."""
    sizes = {k: (v.nbytes or 0) for k, v in graph.tensors.items()}
    weights = graph.initializers
    consts = {o for n in graph.nodes if n.op_type == "Constant" for o in n.outputs}
    inputs = list(graph.input_names)
    peak, pi, roots, timeline, after = liveness(steps, sizes, inputs, graph.output_names,
                                            external=lambda t: t in weights or t in consts)
    if producer_name is None:
        producer_name = {o: s.name for s in steps for o in s.outputs}
    live = []
    for t in sorted(roots, key=lambda t: -sizes.get(t, 0)):
        info = graph.info(t)
        live.append(LiveTensor(t, list(info.shape) if info and info.shape else None,
                               info.dtype_name if info else "?", sizes.get(t, 0), producer_name.get(t, "<input>")))
    wbytes = sum(int(math.prod(t.dims) * itemsize(t.data_type)) for t in weights.values())
    pstep = steps[pi] if pi >= 0 else None
    return Estimate(
        peak_bytes=int(peak), peak_index=pi,
        peak_node=pstep.name if pstep else "<inputs>", peak_op=pstep.op_type if pstep else "-",
        weight_bytes=wbytes,
        input_bytes=sum(sizes.get(t, 0) for t in inputs),
        output_bytes=sum(sizes.get(t, 0) for t in graph.output_names),
        live_at_peak=live,
        timeline=[TimelinePoint(i, s.name, s.op_type, int(b)) for i, (s, b) in enumerate(zip(steps, timeline))],
        after=[int(a) for a in after],
    )


def estimate_graph(graph: Graph) -> Estimate:
    return estimate_steps(graph, graph_steps(graph))
