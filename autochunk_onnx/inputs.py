"""Test inputs for a model: seeded, dtype-aware and plausible for what each input means.

Random normals are fine for float activations, but token ids outside the vocabulary make Gather
fail, random masks change which positions attend, and random position ids index past the
position table. So inputs are generated from their names and from what consumes them, and the
caller pins every dynamic dim (a chunked model is verified at one concrete sequence length).
"""
from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import onnx

from . import ops
from .errors import BadInputError

_DEFAULT_INT_HIGH = 100
_TIMESTEP_HIGH = 1000


def _load_graph_only(model: onnx.ModelProto | str) -> onnx.ModelProto:
    """Load without external weights: only shapes and dims are needed here, never the data."""
    if isinstance(model, onnx.ModelProto):
        return model
    if not isinstance(model, (str, os.PathLike)) or not os.path.isfile(model):
        raise BadInputError(f"model file not found: {model}")
    try:
        return onnx.load(os.fspath(model), load_external_data=False)
    except Exception as exc:  # protobuf errors carry no useful type
        raise BadInputError(f"cannot read ONNX model {model}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Inputs the caller must feed: old models (IR < 4) also list initializers as inputs."""
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def _np_dtype(vi: onnx.ValueInfoProto) -> np.dtype:
    """numpy dtype of a tensor input, or BadInputError for types ORT's Python API cannot feed."""
    if not vi.type.HasField("tensor_type"):
        raise BadInputError(f"input '{vi.name}' is not a tensor (sequence/map/optional inputs are not supported)")
    elem = vi.type.tensor_type.elem_type
    if elem == onnx.TensorProto.BFLOAT16:
        raise BadInputError(
            f"input '{vi.name}' is bfloat16, which onnxruntime's Python API cannot take from numpy; "
            "export the model with float32 or float16 inputs"
        )
    if elem == onnx.TensorProto.STRING:
        raise BadInputError(f"input '{vi.name}' is a string tensor; cannot generate it")
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))
    except Exception:
        raise BadInputError(
            f"input '{vi.name}' has element type {onnx.TensorProto.DataType.Name(elem)}, not supported"
        ) from None


def _declared_dims(vi: onnx.ValueInfoProto) -> list[int | str | None] | None:
    """Declared dims: int for static, the dim_param name for symbolic, None for unnamed; None if no shape."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def _resolve_shape(vi: onnx.ValueInfoProto, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The concrete shape: the caller's, checked against the declaration, or the static declaration."""
    declared = _declared_dims(vi)
    if vi.name in shapes:
        shape = tuple(int(s) for s in shapes[vi.name])
        if any(s < 0 for s in shape):
            raise BadInputError(f"input '{vi.name}': negative dim in shape {shape}")
        if declared is not None:
            if len(declared) != len(shape):
                raise BadInputError(
                    f"input '{vi.name}' has rank {len(declared)} ({_fmt_dims(declared)}), shape given {shape}"
                )
            for i, (d, s) in enumerate(zip(declared, shape)):
                if isinstance(d, int) and d != s:
                    raise BadInputError(
                        f"input '{vi.name}' dim {i} is fixed to {d} in the model, shape given {shape}"
                    )
        return shape
    if declared is None:
        raise BadInputError(f"input '{vi.name}' has no declared shape; give its shape")
    for i, d in enumerate(declared):
        if not isinstance(d, int):
            name = f"'{d}'" if d else "(unnamed)"
            raise BadInputError(
                f"input '{vi.name}' has dynamic dim {i} {name} ({_fmt_dims(declared)}); give its shape"
            )
    return tuple(declared)  # type: ignore[arg-type]


def _fmt_dims(dims: Iterable[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _constant_dims(graph: onnx.GraphProto) -> dict[str, list[int]]:
    """Dims of initializers and Constant outputs: the tables a Gather may index."""
    dims = {t.name: list(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value" and a.HasField("t"):
                    dims[node.output[0]] = list(a.t.dims)
    return dims


def gather_vocab(model: onnx.ModelProto, input_name: str) -> int | None:
    """Size of the table the input indexes (smallest if several), walking through Cast/Unsqueeze/...

    Only the top-level graph is searched; ids consumed inside subgraphs fall back to the default.
    """
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    tables = _constant_dims(graph)
    found: list[int] = []
    seen: set[str] = set()
    frontier = [input_name]
    while frontier:
        name = frontier.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in consumers.get(name, []):
            if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name:
                dims = tables.get(node.input[0])
                if dims:
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    axis = axis + len(dims) if axis < 0 else axis
                    if 0 <= axis < len(dims) and dims[axis] > 0:
                        found.append(int(dims[axis]))
            elif ops.info(node).passes_values and node.input and node.input[0] == name:  # ids reach a Gather
                frontier.extend(o for o in node.output if o)
    return min(found) if found else None


def _kind(name: str) -> str:
    """What an input probably is, from its name (order matters: 'position_ids' is positions)."""
    low = name.lower()
    if "mask" in low:
        return "mask"
    if "position" in low or low.startswith("pos_") or low in {"pos", "pos_ids"}:
        return "position"
    if "timestep" in low:
        return "timestep"
    if "ids" in low or low.startswith("token") or low.startswith("input_id"):
        return "ids"
    return "other"


def valid_lengths(batch: int, length: int) -> np.ndarray:
    """A different valid length per batch row, in [1, length), shorter row by row (length > 1)."""
    if length <= 1:
        return np.full(batch, length, dtype=np.int64)
    return np.array([length - max(1, (b + 1) * length // (batch + 3)) for b in range(batch)], dtype=np.int64)


def padding_mask(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """What a padded batch feeds: per batch row (dim 0) ones up to its valid length along the last
    dim, zeros after it, the same for every middle dim (an MSA mask's sequences, a [B,1,1,L] mask);
    a pair mask ('pair' in the name, last two dims equal) is the outer product of that residue mask
    with itself. All ones would let a loop that slices a mask along the wrong axis pass."""
    if not shape or 0 in shape:
        return np.ones(shape, dtype=dtype)
    batch, n = (shape[0] if len(shape) > 1 else 1), shape[-1]
    rows = np.arange(n)[None, :] < valid_lengths(batch, n)[:, None]  # [batch, n]
    if "pair" in name.lower() and len(shape) >= 3 and shape[-1] == shape[-2]:
        rows = rows[:, :, None] & rows[:, None, :]  # [batch, n, n]
        full = rows.reshape((batch,) + (1,) * (len(shape) - 3) + (n, n))
    else:
        full = rows.reshape((batch,) + (1,) * (len(shape) - 2) + (n,)) if len(shape) > 1 else rows[0]
    return np.broadcast_to(full, shape).astype(dtype, copy=True)


def _make_one(
    model: onnx.ModelProto, name: str, dtype: np.dtype, shape: tuple[int, ...], rng: np.random.Generator,
    pad_masks: bool = True,
) -> np.ndarray:
    kind = _kind(name)
    if kind == "mask":
        return padding_mask(name, shape, dtype) if pad_masks else np.ones(shape, dtype=dtype)
    if dtype == np.bool_:
        return np.ones(shape, dtype=np.bool_)
    if kind == "position":
        last = shape[-1] if shape else 1
        return np.broadcast_to(np.arange(last), shape).astype(dtype, copy=True)
    if dtype.kind == "f":
        if kind == "timestep":
            return rng.integers(1, _TIMESTEP_HIGH, size=shape).astype(dtype)
        return rng.standard_normal(size=shape).astype(dtype)
    if dtype.kind in "iu":
        if kind == "timestep":
            return rng.integers(1, _TIMESTEP_HIGH, size=shape).astype(dtype)
        high = gather_vocab(model, name) or _DEFAULT_INT_HIGH
        high = min(high, int(np.iinfo(dtype).max) + 1)
        return rng.integers(0, high, size=shape).astype(dtype)
    if dtype.kind == "c":
        return (rng.standard_normal(size=shape) + 1j * rng.standard_normal(size=shape)).astype(dtype)
    raise BadInputError(f"input '{name}' has dtype {dtype}; cannot generate it")


def make_inputs(
    model: onnx.ModelProto | str, shapes: dict[str, tuple[int, ...]], seed: int = 0, pad_masks: bool = True
) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input (not initializers), one per name.

    Floats: normal(0, 1). Names with 'mask': a padding pattern (`padding_mask`; all ones with
    pad_masks=False). 'position*': arange along the
    last dim. 'timestep*': integers in [1, 1000) (as the input's dtype). Token ids ('*ids*',
    'token*') and other integers: [0, vocab) where vocab is the first dim of the table a Gather
    indexes with the input, else [0, 100). Bool: True. Each input draws from its own stream
    (seed and position) so adding an input does not change the others.
    """
    m = _load_graph_only(model)
    inputs = _graph_inputs(m)
    known = {vi.name for vi in inputs}
    unknown = sorted(set(shapes) - known)
    if unknown:
        raise BadInputError(
            f"shape given for unknown input(s) {', '.join(unknown)}; model inputs: {', '.join(sorted(known)) or '(none)'}"
        )
    feeds: dict[str, np.ndarray] = {}
    for idx, vi in enumerate(inputs):
        dtype = _np_dtype(vi)
        shape = _resolve_shape(vi, shapes)
        rng = np.random.default_rng([seed, idx])
        feeds[vi.name] = _make_one(m, vi.name, dtype, shape, rng, pad_masks)
    return feeds


def load_inputs(path: str) -> dict[str, np.ndarray]:
    """Inputs saved by the user with numpy.savez (one array per input name), for --load-inputs."""
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # OSError, ValueError, zipfile.BadZipFile, EOFError...
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInputError(f"cannot read inputs from {path}: {msg}") from None
    if isinstance(data, np.ndarray):
        raise BadInputError(f"{path}: expected an .npz archive of named arrays (numpy.savez), not a single array")
    try:
        with data:
            return {k: np.asarray(data[k]) for k in data.files}
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInputError(f"cannot read inputs from {path}: {msg}") from None
