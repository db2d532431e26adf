"""Load a model by path with its weights left on disk, and pin its dynamic input dims.

Real users run multi-gigabyte models: planning never needs weight values, so external data is
never read; we only check that every external location stays inside the model's folder.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from . import notes
from .errors import BadInputError
from .graphutil import is_standard, opset_of

MAX_IR_VERSION = onnx.IR_VERSION
MAX_OPSET = onnx.defs.onnx_opset_version()


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Parse `path` without loading external data; raise BadInputError naming what is wrong."""
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"{p}: no such file")
    if p.is_dir():
        raise BadInputError(f"{p}: is a folder, not an ONNX model file")
    if p.stat().st_size == 0:
        raise BadInputError(f"{p}: empty file, not an ONNX model")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, UnicodeDecodeError) as e:
        raise BadInputError(f"{p}: not a valid ONNX model (truncated or not ONNX: {type(e).__name__})") from e
    except OSError as e:
        raise BadInputError(f"{p}: cannot read: {e.strerror or e}") from e
    validate_model(model, str(p), p.parent)
    return model


def validate_model(model: onnx.ModelProto, label: str, base: Path | None) -> None:
    """The checks every input model gets, read from a file or given as a ModelProto (`base` None:
    external data cannot be resolved, so it is refused)."""
    p = label
    if not isinstance(model, onnx.ModelProto):
        raise BadInputError(f"{label}: expected a path or an onnx.ModelProto, got {type(model).__name__}")
    if not model.HasField("graph") or len(model.graph.node) == 0 and len(model.graph.output) == 0:
        raise BadInputError(f"{p}: not an ONNX model (no graph found)")
    if model.ir_version == 0 or model.ir_version > MAX_IR_VERSION:
        raise BadInputError(f"{p}: unsupported IR version {model.ir_version} (this onnx supports up to {MAX_IR_VERSION})")
    for o in model.opset_import:
        if is_standard(o.domain) and (o.version < 1 or o.version > MAX_OPSET):
            raise BadInputError(f"{p}: unsupported opset {o.version} (supported: 1..{MAX_OPSET})")
    if base is None:
        ext = next((t.name for t in _external_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL), None)
        if ext is not None:
            raise BadInputError(f"{p}: initializer {ext!r} has external data, which a ModelProto cannot locate; "
                                f"pass the model's path instead")
    else:
        check_external_data(model, base)


def _external_tensors(model: onnx.ModelProto):
    yield from onnx.external_data_helper._get_all_tensors(model)


def check_external_data(model: onnx.ModelProto, base: Path) -> None:
    """Refuse external locations outside `base` (path traversal) and missing external files."""
    base = base.resolve()
    for t in _external_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        if not loc or os.path.isabs(loc):
            raise BadInputError(f"initializer {t.name!r}: external data location {loc!r} must be a path relative to the model's folder")
        target = (base / loc).resolve()
        if base != target and base not in target.parents:
            raise BadInputError(f"initializer {t.name!r}: external data {loc!r} resolves outside the model's folder")
        if not target.is_file():
            raise BadInputError(f"initializer {t.name!r}: external data file {loc!r} is missing")
        need = int(info.get("offset", 0)) + int(info.get("length", 0))
        if need > target.stat().st_size:
            raise BadInputError(f"initializer {t.name!r}: external data file {loc!r} is truncated ({target.stat().st_size} bytes, needs {need})")


_DIMS = re.compile(r"^(?:\[(?P<b>[^\]]*)\]|\((?P<p>[^)]*)\)|(?P<x>[0-9]+(?:\s*[xX*,]\s*[0-9]+)*))$")
SHAPE_FORMS = "NAME:1x4096, NAME:[1,4096] or NAME:1,4096"


def parse_input_shapes(specs) -> dict[str, list[int]]:
    """Parse input shapes as users of Polygraphy, onnxsim and trtexec write them.

    `specs` is one string or a list of them; each may hold several specs separated by spaces, and by
    commas where a comma starts a new NAME:DIMS. The name is split from the dims on the LAST colon
    (`input_ids:0:1x1024` names `input_ids:0`); dims are `1x1024`, `[1,1024]`, `(1,1024)` or `1,1024`
    (`[]` is a scalar). A dict {name: dims} is accepted too (dims as a list or as such a string).
    """
    if specs is None:
        return {}
    if isinstance(specs, dict):
        return {str(k): _dims_of(str(k), v) for k, v in specs.items()}
    if isinstance(specs, str):
        specs = [specs]
    out: dict[str, list[int]] = {}
    for spec in specs:
        if not isinstance(spec, str):
            raise BadInputError(f"--input-shape {spec!r}: expected a string like {SHAPE_FORMS}")
        for item in _split_specs(spec):
            name, sep, dims = item.rpartition(":")
            name = name.strip()
            if not sep or not name:
                raise BadInputError(f"--input-shape {item!r}: expected {SHAPE_FORMS} (name and dims split on the last colon)")
            out[name] = _dims_of(name, dims, item)
    return out


def _dims_of(name: str, dims, item: str | None = None) -> list[int]:
    """Dims from a list of ints or one of the accepted strings; positive integers only."""
    shown = item if item is not None else f"{name}:{dims}"
    if isinstance(dims, (list, tuple)):
        vals = list(dims)
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in vals):
            raise BadInputError(f"--input-shape {shown!r}: dims must be integers")
    else:
        text = str(dims).strip()
        m = _DIMS.match(text)
        if not m:
            raise BadInputError(f"--input-shape {shown!r}: dims must be integers, as in {SHAPE_FORMS}")
        body = next(g for g in (m.group("b"), m.group("p"), m.group("x"), "") if g is not None)
        parts = [p.strip() for p in re.split(r"[xX*,]", body)] if body.strip() else []
        try:
            vals = [int(p) for p in parts]
        except ValueError:
            raise BadInputError(f"--input-shape {shown!r}: dims must be integers, as in {SHAPE_FORMS}") from None
    if any(d <= 0 for d in vals):
        raise BadInputError(f"--input-shape {shown!r}: dims must be positive")
    return vals


def _split_specs(spec: str) -> list[str]:
    """Split one argument into NAME:DIMS items: on spaces outside brackets, and on commas outside
    brackets that start a new item (the next piece has a colon; `a:1,1024` stays one item)."""
    pieces, depth, cur = [], 0, ""
    for ch in spec:
        depth += ch in "[("
        depth -= ch in "])"
        if depth == 0 and (ch == "," or ch.isspace()):
            pieces.append((cur, ch))
            cur = ""
        else:
            cur += ch
    pieces.append((cur, ""))
    items: list[str] = []
    for text, sep in pieces:
        if not text.strip():
            continue
        if items and ":" not in text and items[-1][1] == ",":
            items[-1] = (items[-1][0] + "," + text, sep)  # more dims of the previous item
        else:
            items.append((text, sep))
    return [t.strip() for t, _ in items]


def _subgraph_values(graph: onnx.GraphProto) -> list:
    """Declared inputs, outputs and values of every subgraph, nested ones too."""
    out = []
    for n in graph.node:
        for a in n.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                out += list(g.input) + list(g.output) + list(g.value_info) + _subgraph_values(g)
    return out


def pin_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> dict[str, int]:
    """Write the given dims into the graph inputs (in place) and return symbol -> value.

    A symbolic dim named by one input is pinned in every input that shares its name, so
    `input_ids:1x4096` also pins `attention_mask`'s `seq`.
    """
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    by_name = {i.name: i for i in graph.input if i.name not in inits}
    symbols: dict[str, int] = {}
    for name, dims in shapes.items():
        if name not in by_name:
            raise BadInputError(f"--input-shape names {name!r}, which is not a model input (inputs: {', '.join(by_name) or 'none'})")
        vi = by_name[name]
        if not vi.type.HasField("tensor_type"):
            raise BadInputError(f"input {name!r} is not a tensor")
        model_dims = vi.type.tensor_type.shape.dim
        if len(model_dims) != len(dims):
            raise BadInputError(f"--input-shape {name}: rank {len(dims)} given, the model's input has rank {len(model_dims)}")
        for k, (d, v) in enumerate(zip(model_dims, dims)):
            if d.HasField("dim_value") and d.dim_value != v:
                raise BadInputError(f"--input-shape {name}: dim {k} is {v}, but the model fixes it to {d.dim_value}")
            if d.HasField("dim_param") and d.dim_param:
                prev = symbols.get(d.dim_param)
                if prev is not None and prev != v:
                    raise BadInputError(f"--input-shape {name}: dim {k} ({d.dim_param}) is {v}, but another input sets {d.dim_param}={prev}")
                symbols[d.dim_param] = v
    for vi in by_name.values():
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in symbols:
                d.dim_value = symbols[d.dim_param]
        if vi.name in shapes:
            for d, v in zip(vi.type.tensor_type.shape.dim, shapes[vi.name]):
                d.dim_value = v
    # The same symbol means the same size across the model: declared shapes of outputs and values
    # (the only ones an op of unknown domain has) take the pinned values too.
    # So do the declared values of subgraphs (If branches, Loop bodies): without them an If's output
    # merges a concrete branch with a symbolic one and stays unknown.
    for vi in list(graph.output) + list(graph.value_info) + _subgraph_values(graph):
        if vi.type.HasField("tensor_type"):
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_param") and d.dim_param in symbols:
                    d.dim_value = symbols[d.dim_param]
    return symbols


def unpinned_inputs(model: onnx.ModelProto) -> list[str]:
    """Inputs that still have a dim without a value, as 'name dim k (symbol)' strings."""
    inits = {t.name for t in model.graph.initializer}
    missing = []
    for vi in model.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            if not d.HasField("dim_value"):
                missing.append(f"{vi.name} dim {k} ({d.dim_param or '?'})")
    return missing


def unpinned_error(model: onnx.ModelProto) -> BadInputError | None:
    """One error naming EVERY dim still without a value, with the flag to pass (None: all pinned).

    Names learnt one run at a time made a UNet take three runs; this lists them all at once and
    shows a --input-shape line with the symbols where values are needed.
    """
    missing = unpinned_inputs(model)
    if not missing:
        return None
    inits = {t.name for t in model.graph.initializer}
    need = []
    for vi in model.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            need.append(f"{vi.name}:{'x'.join(_dim_text(d, vi.name, k) for k, d in enumerate(dims)) or '[]'}")
    return BadInputError(f"input dims not pinned: {', '.join(missing)}; pass --input-shape {' '.join(need)} "
                         f"with numbers for the symbols (autochunk-onnx inspect MODEL lists every input)")


BATCH_SYMBOLS = ("batch", "batch_size", "n", "b", "bs")  # filled with 1 in suggested --input-shape lines


def _dim_text(d, name: str, k: int) -> str:
    if d.HasField("dim_value"):
        return str(d.dim_value)
    if d.dim_param.lower() in BATCH_SYMBOLS:
        return "1"
    return d.dim_param.upper() if d.dim_param else f"{name}_DIM{k}".upper()


LOOP_OPSET = 13  # Loop with sequence-typed loop-carried values (the chunks of each output)


default_opset = opset_of


def _clone(msg):
    c = type(msg)()
    c.CopyFrom(msg)
    return c


def upgrade_opset(model: onnx.ModelProto, target: int = LOOP_OPSET) -> onnx.ModelProto:
    """Return `model` converted to default-domain opset `target` by onnx.version_converter.

    The conversion runs on the weightless skeleton (weights stay on disk, nothing near protobuf's
    2 GiB limit is serialized); the original initializer protos are put back afterwards, in their
    order. Raises BadInputError (one line) when the converter cannot do it.
    """
    from onnx import version_converter

    from .shapes import skeleton

    old = default_opset(model)
    sk, stripped = skeleton(model)
    try:
        conv = version_converter.convert_version(sk, target)
    except Exception as e:  # noqa: BLE001 - the converter raises many kinds
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInputError(f"chunking needs opset >= {target} (Loop over sequences) and converting the model from opset "
                            f"{old} failed: {why}") from None
    if default_opset(conv) != target:
        raise BadInputError(f"chunking needs opset >= {target} (Loop over sequences) and converting the model from opset "
                            f"{old} failed: the converter left opset {default_opset(conv)}")
    stripped_set = set(stripped)
    was_input = {vi.name for vi in model.graph.input}
    inputs = [vi for vi in conv.graph.input if vi.name not in stripped_set or vi.name in was_input]
    if stripped_set - {vi.name for vi in conv.graph.input}:
        raise BadInputError(f"chunking needs opset >= {target} (Loop over sequences) and converting the model from opset "
                            f"{old} failed: the converter dropped weights")
    orig_inputs = {vi.name: vi for vi in model.graph.input}
    inputs = [orig_inputs[vi.name] if vi.name in stripped_set else _clone(vi) for vi in inputs]
    new_inits = {t.name: _clone(t) for t in conv.graph.initializer}  # small ones only: cheap
    del conv.graph.input[:]
    conv.graph.input.extend(inputs)
    ordered = []
    for t in model.graph.initializer:
        ordered.append(t if t.name in stripped_set else new_inits.pop(t.name, t))
    ordered.extend(new_inits.values())  # initializers the converter added
    del conv.graph.initializer[:]
    conv.graph.initializer.extend(ordered)
    # the converter keeps the IR version; opset 13 needs IR >= 7
    min_ir = min((ir for _, ir, op, *_ in onnx.helper.VERSION_TABLE if op == target), default=conv.ir_version)
    conv.ir_version = max(conv.ir_version, min_ir)
    return conv


# The first IR version that can carry each newer element type (onnx docs/IR.md).
_TYPE_IR = {17: 9, 18: 9, 19: 9, 20: 9, 21: 10, 22: 10, 23: 11, 24: 12, 25: 13, 26: 13, 27: 14, 28: 14}


@functools.lru_cache(maxsize=1)
def ort_max_ir() -> int | None:
    """The highest IR version the installed onnxruntime loads (probed once on a one-node model);
    None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    g = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    so = ort.SessionOptions()
    so.log_severity_level = 4
    for ir in range(MAX_IR_VERSION, 6, -1):
        m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 13)])
        m.ir_version = ir
        try:
            ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
            return ir
        except Exception:  # noqa: BLE001 - "unsupported IR version": try the next lower one
            continue
    return None


def required_ir(model: onnx.ModelProto) -> tuple[int, str]:
    """The lowest IR version that can hold `model`: from its opsets and the element types it uses."""
    need, why = 3, "IR 3"
    for o in model.opset_import:
        try:
            ir = onnx.helper.find_min_ir_version_for([o], ignore_unknown=True)
        except Exception:  # noqa: BLE001 - an opset onnx does not know: checked at load
            continue
        if ir > need:
            need, why = ir, f"opset {o.version} of {o.domain or 'ai.onnx'}"
    for elem in _elem_types(model.graph):
        ir = _TYPE_IR.get(elem, 0)
        if ir > need:
            need, why = ir, f"element type {onnx.TensorProto.DataType.Name(elem)}"
    return need, why


def _elem_types(graph: onnx.GraphProto):
    for t in graph.initializer:
        yield t.data_type
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.type.HasField("tensor_type"):
            yield vi.type.tensor_type.elem_type
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t.data_type
            elif a.type == onnx.AttributeProto.INT and a.name in ("to", "dtype", "output_dtype", "saturate_dtype"):
                yield a.i
            elif a.type == onnx.AttributeProto.GRAPH:
                yield from _elem_types(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from _elem_types(sub)


def ir_for_ort(model: onnx.ModelProto) -> int:
    """The IR version to give ONNX Runtime a copy of `model` in (analyses, verification).

    onnx 1.23 saves IR 14, which ORT 1.31 does not load although such a model rarely uses anything
    past IR 10: the copy is lowered to what ORT reads when the model needs nothing newer (a CHANGED
    note says so; the written model keeps its IR), and a model that does need more is refused.
    """
    top = ort_max_ir()
    if top is None or model.ir_version <= top:
        return model.ir_version
    need, why = required_ir(model)
    if need > top:
        import onnxruntime
        raise BadInputError(f"the model needs IR version {need} ({why}) and the installed onnxruntime "
                            f"{onnxruntime.__version__} reads IR <= {top}")
    notes.note(f"IR version {model.ir_version} lowered to {top} for ONNX Runtime's analyses and verification "
               f"(the model uses nothing newer; the written model keeps IR {model.ir_version})", kind=notes.CHANGED)
    return top
