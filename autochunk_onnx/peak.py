"""Activation-memory estimate: a replay of ONNX Runtime's CPU allocation planner.

Peak memory in ORT (CPU, as `measure.py` measures it) is decided by its allocation planner
(onnxruntime/core/framework/allocation_planner.cc). It walks the nodes in order and gives every
output, by preference:

* the buffer of input 0 for a view kernel (Reshape, Squeeze, ...: `Alias` in the kernel def);
* the buffer of input 0 for an in-place kernel (`MayInplace`: Relu, Sigmoid, Softmax, ...) when
  that buffer has no other reader left and ORT can *prove* the two shapes equal: every dim a
  number or a named symbol, pairwise the same. An unnamed dim (a Reshape to -1 of symbolic dims,
  a Conv over a symbolic height) defeats it: that is the second L x L buffer of the UNet attention;
* a dead buffer of an earlier tensor whose shape it can prove equal (most recently freed first).
  That buffer stays allocated from its first owner's death to the new owner's last reader, so
  dead tensors waiting for reuse count in the peak (the -17% of the GPT-2/BERT/ViT exports);
* otherwise a new buffer. A buffer is released after the last reader of every tensor it held; a
  tensor nobody reads is held to the end of the run; graph outputs get their own buffers.

`liveness` replays exactly that. What ORT does before planning is modelled from the ONNX graph:
which shapes ORT can name (`_ort_shapes`: ORT's own shape inference on a weightless copy of the
graph, once per graph), constant folding (`_folded`), the level-2 fusions that remove buffers
(`fusions`), and kernel scratch above the outputs (`workspace_bytes`: Einsum's transposed copies,
Where's two passes, ...). Graph inputs are the caller's memory and are not counted.

Evidence: ORT 1.31.1's profiler with an exact arena gives the bytes ORT's allocator holds at every
node; on every model under models/ the replay matches it node by node, and single-op probes back
each table below (tests/test_estimate.py re-runs them against the installed ORT). Steps run in
ORT's own order (ort_order.py: its reverse DFS from the leaves), not the graph's. Loops, Scan, If and tensor sequences are sized by estimate_loops.py.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import onnx

from . import notes, ops
from .graph import Graph, Node, TensorInfo, itemsize
from .graphutil import is_standard, skeleton, subgraphs
from .loader import ir_for_ort

# ORT kernel facts (ORT 1.31.1 CPU) are rows of the op registry (`ops.py`): views (`alias`, measured:
# no allocation at the node; Dropout/Identity are removed by the optimizer, the same for memory),
# MayInplace kernels (`inplace`, measured one node at a time on [1,4,512,512] float32 with named
# dims: they allocate nothing when input 0 dies at the node; Abs, Ceil, Cos, Erf, Exp, Floor, Gelu,
# HardSwish, Hardmax, Log, Mish, Neg, Reciprocal, Round, Sign, Sin, Sqrt, Tan, FastGelu, QuickGelu
# and the binary Add/Sub/Mul/Div/Pow/Max/Min, even with equal shapes, always allocate), constant
# folding (`ort_folds`), kernel scratch (`scratch`, kernels.py).


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
    keys: list | None = None  # per output: (shape as ORT names it or None, concrete shape); None: never reused


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


# --- what ORT knows about the graph -------------------------------------------------------------
class _OrtInfo:
    """Per-graph facts computed once: ORT-provable shapes, folded constants, fusion members."""

    def __init__(self, graph: Graph):
        self.sym = _ort_shapes(graph)  # None: ORT's inference unavailable, every shape counts as named
        self.folded = _folded(graph)
        self.fused, self.scratch = _fusion_groups(graph, self.folded, self.sym)
        self.steps: dict[tuple[int, bool], tuple] = {}  # node_step's fields per (node, fused?)
        self.sizes: dict[str, int] | None = None  # bytes of every tensor (filled by estimate_steps)
        self.weight_bytes = 0


def _info(graph: Graph) -> _OrtInfo:
    """The facts of `graph`, computed on first use and kept in its session."""
    if graph.session.ort is None:
        graph.session.ort = _OrtInfo(graph)
    return graph.session.ort


def _ort_shapes(graph: Graph) -> dict[str, tuple] | None:
    """The shape ORT infers for every tensor: dims are numbers, symbol names, or None (unnamed).

    ORT's allocation planner shares buffers only between shapes it can prove equal, from its own
    shape inference on the model as loaded (symbolic input dims, the model's value_info merged
    in). That inference is run here, once per graph, on a copy without weights (big initializers
    become inputs), with every tensor exposed as an output to read its inferred shape. The pinned
    graph no longer says which input dims were symbolic: each becomes a symbol (one per value) unless
    the graph equates it with a constant (a MatMul's inner dim against a weight, a broadcast
    against a constant dim, ...), which marks it static; ORT's ReshapeFusion is applied first.
    None when ORT cannot load the graph (custom ops): every shape then counts as named.
    """
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    model = _skeleton(graph)
    sym = _infer_with_ort(model)
    if sym is None:
        return None
    static = _static_values(graph, sym)
    if static:
        for v in model.graph.input:
            for d in v.type.tensor_type.shape.dim:
                v = _sym_value(d.dim_param)
                if v is not None and v in static:
                    d.dim_value = v
        sym = _infer_with_ort(model) or sym
    return sym


def _skeleton(graph: Graph) -> onnx.ModelProto:
    """The weightless skeleton ORT infers on: ReshapeFusion's constant targets put in, big weights
    as inputs, every other input dim a symbol named by its value, every tensor a graph output."""
    m, stripped = skeleton(graph.model)
    m.ir_version = ir_for_ort(graph.model)  # onnx 1.23's IR 14 is lowered where nothing newer is used
    g = m.graph
    for k, target in _reshape_fusion(graph).items():
        name = f"__reshape_fusion_{k}"
        g.initializer.append(onnx.helper.make_tensor(name, onnx.TensorProto.INT64, [len(target)], target))
        g.node[k].input[1] = name
    inits = set(graph.initializers)
    weights = [vi for vi in g.input if vi.name in stripped]
    kept = [vi for vi in g.input if vi.name not in inits]
    del g.input[:]
    g.input.extend(weights + kept)  # small initializers listed as inputs too (IR < 4) stay initializers only
    for v in g.input[len(weights):]:
        if v.type.HasField("tensor_type"):
            for d in v.type.tensor_type.shape.dim:
                if d.HasField("dim_value"):
                    d.dim_param = f"{_SYM}{d.dim_value}"
    graph_outputs = list(g.output)
    del g.output[:]
    seen = set()
    for n in g.node:
        for o in n.output:
            if o and o not in seen:
                seen.add(o)
                g.output.add().name = o
    for o in graph_outputs:
        if o.name not in seen:
            g.output.add().CopyFrom(o)
    return m


def _infer_with_ort(model: onnx.ModelProto) -> dict[str, tuple] | None:
    import onnxruntime as ort

    try:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 4
        so.intra_op_num_threads = so.inter_op_num_threads = 1  # no thread pool: only shapes are read
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - custom ops, odd opsets: fall back to "every shape is known"
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        notes.note(f"ONNX Runtime cannot load the model for the estimate's buffer-sharing analysis ({why}): "
                   "every shape counts as known to ORT, so the estimate may be low")
        return None
    out = {}
    for vi in model.graph.input:
        if vi.type.HasField("tensor_type"):
            out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                 for d in vi.type.tensor_type.shape.dim)
    for o in sess.get_outputs():
        if isinstance(o.shape, list):
            out[o.name] = tuple(d if isinstance(d, int) or (isinstance(d, str) and d) else None for d in o.shape)
    return out


_SYM = "autochunk_dim_"  # name given to each input dim before ORT's inference


def _sym_value(name: str) -> int | None:
    """The value behind a symbol made by `_skeleton`, else None."""
    return int(name[len(_SYM):]) if name.startswith(_SYM) and name[len(_SYM):].isdigit() else None


def _static_values(graph: Graph, sym: dict[str, tuple]) -> set[int]:
    """Values of input-dim symbols that the graph equates with that constant (so they were static)."""
    static: set[int] = set()

    def shape(t: str):
        if t in graph.initializers:
            return tuple(graph.initializers[t].dims)
        return sym.get(t)

    def meet(dims) -> None:
        vals = {d for d in dims if isinstance(d, int) and d > 1}
        for d in dims:
            v = _sym_value(d) if isinstance(d, str) else None
            if v is not None and v in vals:
                static.add(v)

    for n in graph.nodes:
        equates = ops.info(n).equates
        if equates is not None:
            for dims in equates(n, [shape(i) if i else None for i in n.inputs]):
                meet(dims)
    return static


def _reshape_fusion(graph: Graph) -> dict[int, list[int]]:
    """Reshape targets ORT's ReshapeFusion turns into constants: node index -> target.

    A target built by Concat from constants and Unsqueeze(Gather(Shape(data), i)) at position i
    becomes a constant with 0 (copy dim i) there. Its shape inference then names every output dim,
    which is what lets Softmax run in place in such graphs (measured: synthetic attention block).
    """
    out = {}
    nodes = graph.nodes
    for n in nodes:
        if n.op_type != "Reshape" or len(n.inputs) < 2 or graph.const_value(n.inputs[1]) is not None:
            continue
        p = graph.producer.get(n.inputs[1])
        if p is None or nodes[p].op_type != "Concat":
            continue
        target: list[int] = []
        for t in nodes[p].inputs:
            v = graph.const_value(t)
            if v is not None and v.ndim <= 1:
                target += [int(x) for x in v.reshape(-1)]
                continue
            u = graph.producer.get(t)
            un = nodes[u] if u is not None else None
            ga = un
            if un is not None and un.op_type == "Unsqueeze":
                q = graph.producer.get(un.inputs[0])
                ga = nodes[q] if q is not None else None
            if ga is None or ga.op_type != "Gather":
                break
            idx = graph.const_value(ga.inputs[1])
            sh = graph.producer.get(ga.inputs[0])
            if idx is None or idx.size != 1 or sh is None or nodes[sh].op_type != "Shape" \
                    or nodes[sh].inputs[0] != n.inputs[0] or int(idx.reshape(-1)[0]) != len(target):
                break
            target.append(0)
        else:
            if target.count(-1) <= 1:
                out[n.index] = target
    return out


def _folded(graph: Graph) -> set[str]:
    """Tensors ORT computes once at load (constant folding): weights, not activations."""
    const = set(graph.initializers)
    out = set()
    for n in graph.nodes:
        if n.op_type == "Constant" or (n.inputs and ops.info(n).ort_folds and not n.has_subgraph
                                       and all((not i) or i in const for i in n.inputs)):
            for o in n.outputs:
                if o:
                    const.add(o)
                    out.add(o)
    return out


def _scalar_const(graph: Graph, name: str) -> bool:
    v = graph.const_value(name)
    return v is not None and v.size == 1


def fusions(graph: Graph) -> dict[int, int]:
    """Nodes ORT's graph optimizer folds into a neighbour, so their output never gets a buffer.

    Returns node index -> the input whose buffer the output shares (see `_fusion_groups`).
    """
    return _info(graph).fused


def _fusion_groups(graph: Graph, folded: set[str], sym: dict[str, tuple] | None = None) -> tuple[dict[int, int], dict[int, int]]:
    """ORT's level-2 fusions that change buffers, found on the ONNX graph.

    Returns (absorbed node -> the input whose buffer its output stands for, node -> extra scratch
    bytes). An absorbed node allocates nothing and keeps its input alive until the fused node
    runs. Each pattern (a method of `_Fusions`) was checked against the nodes and tensors left in
    ORT's optimized model (SessionOptions.optimized_model_filepath) of the models under models/.
    Patterns are tried node by node in graph order, MatMulScaleFusion last over the whole graph.
    """
    f = _Fusions(graph, folded, sym)
    for n in graph.nodes:
        pattern = _Fusions.BY_ANCHOR.get(n.op_type)
        if pattern is not None:
            pattern(f, n)
    for n in graph.nodes:
        f.matmul_scale(n)
    return f.fused, f.scratch


class _Fusions:
    """The fusions found so far and the graph queries the patterns share."""

    def __init__(self, graph: Graph, folded: set[str], sym: dict[str, tuple] | None):
        self.graph, self.folded, self.sym = graph, folded, sym
        self.nodes = graph.nodes
        self.fused: dict[int, int] = {}
        self.scratch: dict[int, int] = {}
        self.taken: set[int] = set()  # results of fused nodes: not available to a later pattern

    # --- queries
    def is_const(self, t: str) -> bool:
        return t in self.folded or t in self.graph.initializers

    def producer(self, t: str) -> Node | None:
        p = self.graph.producer.get(t)
        return self.nodes[p] if p is not None else None

    def only_reader(self, t: str) -> int | None:
        c = self.graph.consumers.get(t, [])
        return c[0] if len(c) == 1 and t not in self.graph.output_names else None

    def same_shape(self, a: str, b: str):
        """The shape of a and b when ORT can tell they are equal (named dims, pairwise the same)."""
        if self.sym is None:
            sa = self.graph.shape(a)
            return sa if sa and sa == self.graph.shape(b) else None
        sa, sb = self.sym.get(a), self.sym.get(b)
        return sa if sa and sa == sb and None not in sa else None

    def absorb(self, n: Node) -> None:
        self.fused[n.index] = next((k for k, i in enumerate(n.inputs) if i and not self.is_const(i)), 0)

    def bias_add(self, t: str, readers: set[int]) -> bool:
        """t = Add(data, 1-D constant) read only by `readers`: absorbed as the fused node's bias."""
        g = self.graph
        p = self.producer(t)
        if p is None or p.op_type != "Add" or p.index in self.fused or t in g.output_names \
                or not set(g.consumers.get(t, [])) <= readers:
            return False
        cst = [i for i in p.inputs if self.is_const(i)]
        if len(p.inputs) != 2 or len(cst) != 1 or len(g.shape(cst[0]) or ()) != 1:
            return False
        self.absorb(p)
        return True

    def elementwise(self, n: Node) -> bool:
        return ops.info(n).gelu_island and all(not i or not self.is_const(i) or _scalar_const(self.graph, i) for i in n.inputs)

    def island(self, anchor: Node) -> tuple[str, list[Node]] | None:
        """The element-wise nodes computing f(x) around `anchor`: (x, nodes in order)."""
        members = {anchor.index}
        roots: set[str] = set()
        todo = [anchor]
        while todo:  # backwards to the one non-constant root x
            n = todo.pop()
            for i in n.inputs:
                p = self.producer(i) if i and not self.is_const(i) else None
                if p is not None and p.index not in members and self.elementwise(p) and self.only_reader(i) == n.index \
                        and anchor.index - p.index <= 8:
                    members.add(p.index)
                    todo.append(p)
                elif i and not self.is_const(i) and (p is None or p.index not in members):
                    roots.add(i)
        if len(roots) != 1:
            return None
        x = roots.pop()
        last = anchor
        while True:  # forwards while the result stays a function of x alone
            c = self.only_reader(last.outputs[0])
            if c is None or not self.elementwise(self.nodes[c]) or c - anchor.index > 8:
                break
            side = self._side_branch(self.nodes[c], x, last, members)
            if side is None:
                break
            members.update(side)
            members.add(c)
            last = self.nodes[c]
        ordered = [self.nodes[k] for k in sorted(members)]
        for k in members - {last.index}:  # nothing but the result may leave the island
            if any(c not in members for o in self.nodes[k].outputs if o for c in self.graph.consumers.get(o, [])) \
                    or any(o in self.graph.output_names for o in self.nodes[k].outputs):
                return None
        return x, ordered

    def _side_branch(self, c: Node, x: str, last: Node, members: set[int]) -> list[int] | None:
        """Producers of `c`'s other inputs when each is an element-wise f(x) (such as x*0.5), else None."""
        side = []
        for i in c.inputs:
            if not i or self.is_const(i) or i == x or i == last.outputs[0]:
                continue
            p = self.producer(i)
            if p is None or p.index in members or not self.elementwise(p) or x not in p.inputs or self.only_reader(i) != c.index \
                    or any(j and not self.is_const(j) and j != x for j in p.inputs):
                return None
            side.append(p.index)
        return side

    # --- patterns, one per ORT fusion
    def gelu(self, n: Node) -> None:
        """Gelu (Erf form) and FastGelu (Tanh form, GPT-2): the element-wise island between x and
        the result becomes one node with one output buffer; with an Add of a 1-D constant read
        only by it (BiasGelu / FastGelu with bias) the fused kernel also holds an output-sized
        temporary (measured: 1.0 x output)."""
        found = self.island(n)
        if found is None or len(found[1]) < (5 if n.op_type == "Erf" else 7):
            return
        x, ordered = found
        for m in ordered[:-1]:
            self.absorb(m)
        self.taken.add(ordered[-1].index)
        if self.bias_add(x, {m.index for m in ordered}):
            self.scratch[ordered[-1].index] = self.graph.nbytes(ordered[-1].outputs[0])

    def quick_gelu(self, n: Node) -> None:
        """QuickGelu: Mul(x, Sigmoid(x)) or Mul(x, Sigmoid(Mul(x, alpha))) (SiLU)."""
        x, pre = n.inputs[0], self.producer(n.inputs[0])
        if pre is not None and pre.op_type == "Mul" and self.only_reader(x) == n.index \
                and any(_scalar_const(self.graph, i) for i in pre.inputs):
            x = next((i for i in pre.inputs if not self.is_const(i)), x)
        else:
            pre = None
        c = self.only_reader(n.outputs[0])
        if c is not None and self.nodes[c].op_type == "Mul" and x in self.nodes[c].inputs:
            if pre is not None:
                self.absorb(pre)
            self.fused[n.index] = 0
            self.taken.add(c)

    def bias_gelu(self, n: Node) -> None:
        """BiasGelu: an Add of a 1-D constant read only by a Gelu (output-sized scratch)."""
        if self.bias_add(n.inputs[0], {n.index}):
            self.scratch[n.index] = self.graph.nbytes(n.outputs[0])

    def skip_layer_norm(self, n: Node) -> None:
        """SkipLayerNormalization: an Add of two 3-D tensors whose shapes ORT knows to be equal,
        read only by a LayerNormalization (and an Add of a 1-D bias feeding it), is absorbed."""
        t = n.inputs[0]
        p = self.producer(t)
        if p is None or p.op_type != "Add" or self.only_reader(t) != n.index or p.index in self.fused or len(p.inputs) != 2:
            return
        shape = self.same_shape(p.inputs[0], p.inputs[1])
        if not shape or len(shape) != 3 or any(self.is_const(i) for i in p.inputs) or n.attr("axis", -1) not in (-1, 2):
            return
        self.fused[p.index] = 0
        for i in p.inputs:  # Add(MatMul, bias) before it becomes the SkipLayerNormalization bias
            if self.bias_add(i, {p.index}):
                break

    def matmul_transpose(self, n: Node) -> None:
        """MatmulTransposeFusion: a Transpose swapping the last two axes, read only by a MatMul."""
        perm = list(n.attr("perm") or [])
        c = self.only_reader(n.outputs[0])
        if len(perm) >= 2 and perm == list(range(len(perm) - 2)) + [len(perm) - 1, len(perm) - 2] \
                and c is not None and self.nodes[c].op_type == "MatMul" and not self.is_const(n.inputs[0]):
            self.fused[n.index] = 0

    def matmul_scale(self, n: Node) -> None:
        """MatMulScaleFusion: MatMul followed by Mul/Div by a scalar, or fed by a Mul by a scalar
        -> FusedMatMul; the scaled tensor never exists (a Mul already in an island is left alone)."""
        if n.op_type not in ("Mul", "Div") or len(n.inputs) != 2 or n.index in self.fused or n.index in self.taken:
            return
        for k in (0, 1) if n.op_type == "Mul" else (0,):
            data, other = n.inputs[k], n.inputs[1 - k]
            if not _scalar_const(self.graph, other) or self.is_const(data):
                continue
            p, c = self.producer(data), self.only_reader(n.outputs[0])
            if (p is not None and p.op_type == "MatMul" and self.only_reader(data) == n.index) or \
                    (n.op_type == "Mul" and c is not None and self.nodes[c].op_type == "MatMul"):
                self.fused[n.index] = k
                return

    BY_ANCHOR = {"Erf": gelu, "Tanh": gelu, "Sigmoid": quick_gelu, "Gelu": bias_gelu,
                 "LayerNormalization": skip_layer_norm, "Transpose": matmul_transpose}


# --- kernel scratch ----------------------------------------------------------------------------
def workspace_bytes(graph: Graph, node: Node) -> int:
    """Scratch memory a kernel holds beyond its outputs (ORT 1.31 CPU), where it is large: the
    op's measured formula (`OpInfo.scratch`), or a Loop/If/Scan body's own peak."""
    facts = ops.info(node)
    if facts.scratch is not None:
        return facts.scratch(graph, node)
    if node.has_subgraph and is_standard(node.domain):
        from .estimate_loops import control_extra

        return control_extra(graph, node)
    if not is_standard(node.domain) and facts is ops.UNKNOWN:
        # no row: its kernel memory is unknown; count its inputs once more, conservatively
        notes.note(f"estimate may be low: scratch of {node.domain}.{node.op_type} unknown "
                   f"(node {node.name}); counted as the size of its inputs")
        return sum(graph.nbytes(i) for i in node.inputs if i and graph.info(i) is not None)
    return 0


# --- steps ---------------------------------------------------------------------------------------
def node_step(graph: Graph, node: Node, fused: dict[int, int] | None = None) -> Step:
    """The Step for a plain graph node, with ORT's reuse behaviour and known workspaces.

    `fused` is `fusions(graph)` to apply ORT's fusions (None: the node as written)."""
    info = _info(graph)
    key = (node.index, bool(fused))
    if fused and fused is not info.fused:  # a caller's own fusion table: not cached
        return Step(*_step_fields(graph, info, node, fused))
    fields = info.steps.get(key)
    if fields is None:
        fields = info.steps[key] = _step_fields(graph, info, node, fused)
    name, op, ins, outs, extra, alias, inplace, src, keys = fields
    return Step(name, op, list(ins), list(outs), extra, alias, inplace, src, keys)


def _step_fields(graph: Graph, info: _OrtInfo, node: Node, fused: dict[int, int] | None) -> tuple:
    facts = ops.info(node)
    op = node.op_type if is_standard(node.domain) else f"{node.domain}.{node.op_type}"
    ins = graph.reads(node.index) if node.has_subgraph else [i for i in node.inputs if i]  # a body reads outer tensors
    outs = [o for o in node.outputs if o]
    if node.op_type == "Constant" or (outs and all(o in info.folded for o in outs)):
        return node.name, op, [], [], 0, False, False, 0, None  # a weight after ORT's constant folding
    extra = workspace_bytes(graph, node)
    alias = facts.alias
    ti, to = (graph.info(ins[0]) if ins else None), (graph.info(outs[0]) if outs else None)
    if op == "Cast" and ti is not None and to is not None and ti.elem_type == to.elem_type:
        alias = True  # a Cast to the same type is removed
    keys = [_key(graph, info, o) for o in outs]
    inplace = False
    if facts.inplace and ins and keys and keys[0] is not None:
        k_in = _key(graph, info, ins[0])  # same concrete shape; whether ORT can tell is in the keys
        inplace = k_in is not None and k_in[1] == keys[0][1] and (k_in[0] is None) == (keys[0][0] is None)
    src = 0
    if fused:
        if node.index in fused:
            alias, inplace = True, False
            src = ins.index(node.inputs[fused[node.index]])
        extra += info.scratch.get(node.index, 0)
    return node.name, op, ins, outs, extra, alias, inplace, src, keys


def _key(graph: Graph, info: _OrtInfo, t: str):
    """What ORT's planner compares to share a buffer: (the shape as ORT names it, or None where it
    cannot name every dim; the concrete shape). None without a concrete shape."""
    ti = graph.info(t)
    if ti is None or not ti.shape or ti.numel is None:
        return None
    concrete = (ti.shape, ti.elem_type)
    if info.sym is None:
        return concrete, concrete
    sym = info.sym.get(t)
    return ((sym, ti.elem_type) if sym and None not in sym else None), concrete


def graph_steps(graph: Graph) -> list[Step]:
    """The graph's steps in the order ORT runs them (ort_order), not the model's."""
    from .ort_order import ort_order

    fused = fusions(graph)
    return [node_step(graph, graph.nodes[k], fused) for k in ort_order(graph)]


@dataclass
class Liveness:
    """What ORT's allocation planner holds over a step list."""

    peak: int
    peak_index: int  # the step where it peaks (-1: no step)
    live_at_peak: list[str]  # tensors holding a buffer at the peak, largest first
    timeline: list[int]  # bytes while each step runs
    after: list[int]  # bytes once each step freed its inputs


def liveness(steps: list[Step], sizes: dict[str, int], inputs: list[str], outputs: list[str], external=lambda t: False,
             named: bool | None = None) -> Liveness:
    """ORT's allocation planner replayed over `steps`, in their order. `inputs` (fed by the caller) are never written
    nor counted; `outputs` get buffers of their own, held to the end. Tensors no step produces
    (weights, outer scope, `external`) have no buffer here. `named`: share buffers only between
    shapes ORT can name (a model's graph); a chunk loop's body (no inputs: the default there) has
    every chunk tensor declared with named dims by the rewriter, so there concrete shapes decide.
    """
    named = bool(inputs) if named is None else named
    pick = 0 if named else 1
    n = len(steps)
    out_set = set(outputs)
    uses: dict[str, int] = {}
    for s in steps:
        for t in s.inputs:
            uses[t] = uses.get(t, 0) + 1
    for t in outputs:
        uses[t] = uses.get(t, 0) + 1
    root: dict[str, str] = {}  # tensor -> buffer it lives in (named by its first owner)
    remaining: dict[str, int] = {}  # buffer -> reads left (ORT's UseCount)
    rbytes: dict[str, int] = {}
    rkey: dict[str, object] = {}
    start: dict[str, int] = {}
    last: dict[str, int] = {}  # buffer -> position of its last reader
    held: dict[str, list[tuple[int, str]]] = {}  # buffer -> (position, tensor) of each owner
    free: dict[object, list[str]] = {}  # (key, bytes) -> dead buffers, most recently freed last
    for p, s in enumerate(steps):
        fresh = []
        keys = s.keys
        for k, o in enumerate(s.outputs):
            nb = sizes.get(o, 0)
            r, view = None, False
            if o not in out_set:
                src = s.inputs[s.src] if k == 0 and (s.alias or s.inplace) and s.src < len(s.inputs) else None
                if src is not None and s.alias:
                    r = root.get(src)
                    if r is None:  # a view of a weight or an input: no buffer of its own
                        continue
                    view = True
                elif src is not None and src in root and remaining[root[src]] == 1 and rbytes[root[src]] == nb \
                        and (not named or (keys and keys[0] is not None and keys[0][0] is not None)):
                    r, view = root[src], True  # in place: this step is the buffer's last reader
                else:
                    key = keys[k][pick] if keys is not None and k < len(keys) and keys[k] is not None else None
                    if key is not None and nb > 0:
                        lst = free.get((key, nb))
                        if lst:
                            r = lst.pop()
            if r is not None:
                root[o] = r
                remaining[r] += uses.get(o, 0)
                if not view:  # a new owner of a dead buffer
                    held[r].append((p, o))
                    fresh.append(r)
                continue
            root[o] = o
            remaining[o] = uses.get(o, 0)
            rbytes[o] = nb
            rkey[o] = keys[k][pick] if keys is not None and k < len(keys) and keys[k] is not None and o not in out_set else None
            start[o] = p
            held[o] = [(p, o)]
            fresh.append(o)
        for t in s.inputs:
            r = root.get(t)
            if r is None:
                continue
            last[r] = p
            remaining[r] -= 1
            if remaining[r] == 0 and rkey[r] is not None:
                free.setdefault((rkey[r], rbytes[r]), []).append(r)
        for r in fresh:
            if remaining[r] == 0 and rkey[r] is not None:  # nobody reads it: reusable, yet held to the end
                free.setdefault((rkey[r], rbytes[r]), []).append(r)
    # a buffer is released after the last reader of every tensor it held (never read: end of run)
    delta = [0] * (n + 2)
    ends_at = [0] * (n + 1)
    stop: dict[str, int] = {}
    for r, b in rbytes.items():
        e = n if r in out_set else max(last.get(r, n), start[r])
        stop[r] = e
        delta[start[r]] += b
        delta[e + 1] -= b
        ends_at[e] += b
    timeline = [0] * n
    after = [0] * n
    peak, peak_i, cur = 0, -1, 0
    for p, s in enumerate(steps):
        cur += delta[p]
        here = cur + s.extra_bytes
        timeline[p] = here
        after[p] = cur - ends_at[p]
        if here > peak:
            peak, peak_i = here, p
    names: list[str] = []
    if peak_i >= 0:  # every buffer held at the peak, by the tensor that last took it (largest first)
        for r, e in stop.items():
            if start[r] <= peak_i <= e:
                names.append(max((po for po in held[r] if po[0] <= peak_i), default=held[r][0])[1])
        names.sort(key=lambda t: (-rbytes[root[t]], t))
    return Liveness(peak, peak_i, names, timeline, after)


def estimate_steps(graph: Graph, steps: list[Step], producer_name: dict[str, str] | None = None) -> Estimate:
    """Estimate a step list over `graph`'s tensors (steps may be regions from the planner)."""
    facts = _info(graph)
    if facts.sizes is None:
        facts.sizes = {k: (v.nbytes or 0) for k, v in graph.tensors.items()}
        facts.weight_bytes = sum(int(math.prod(t.dims) * itemsize(t.data_type)) for t in graph.initializers.values())
    sizes = facts.sizes
    weights = graph.initializers
    folded = facts.folded
    inputs = list(graph.input_names)
    lv = liveness(steps, sizes, inputs, graph.output_names, external=lambda t: t in weights or t in folded)
    peak, pi, roots, timeline, after = lv.peak, lv.peak_index, lv.live_at_peak, lv.timeline, lv.after
    if producer_name is None:
        producer_name = {o: s.name for s in steps for o in s.outputs}
    live = []
    for t in roots:  # largest first
        info = graph.info(t)
        live.append(LiveTensor(t, list(info.shape) if info and info.shape else None,
                               info.dtype_name if info else "?", sizes.get(t, 0), producer_name.get(t, "<input>")))
    wbytes = facts.weight_bytes
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


def subgraph_peak(graph: Graph, node: Node) -> int:
    """Peak of a Loop/If/Scan body from the shapes inference left in it; 0 when unknown."""
    best = 0
    for body in subgraphs(node.proto):
        tensors: dict[str, TensorInfo] = {}
        for vi in list(body.value_info) + list(body.output):
            tt = vi.type.tensor_type
            if vi.type.HasField("tensor_type") and tt.HasField("shape"):
                shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
                tensors[vi.name] = TensorInfo(vi.name, shape, tt.elem_type)
        sizes = {k: (v.nbytes or 0) for k, v in tensors.items()}
        keys = {k: (((v.shape, v.elem_type),) * 2 if v.numel else None) for k, v in tensors.items()}
        steps = []
        for n in body.node:
            outs = [o for o in n.output if o]
            ins = [i for i in n.input if i]
            facts = ops.info(n)
            st = Step(n.name, n.op_type, ins, outs, alias=facts.alias, keys=[keys.get(o) for o in outs])
            st.inplace = facts.inplace and bool(ins) and keys.get(ins[0]) is not None and keys.get(ins[0]) == keys.get(outs[0] if outs else None)
            steps.append(st)
        inner = {o for n in body.node for o in n.output}
        lv = liveness(steps, sizes, inputs=[], outputs=[o.name for o in body.output], external=lambda t: t not in inner)
        best = max(best, lv.peak)
    return best
