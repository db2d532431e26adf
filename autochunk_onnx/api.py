"""The Python API: load -> shapes -> estimate -> plan -> rewrite -> verify -> report.

The CLI is a thin layer over these functions; they raise AutochunkError subclasses carrying the
exit code, and never print.
"""
from __future__ import annotations

import functools
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import onnx

from . import notes
from .budget import parse_budget
from .compare import OutputDiff, all_ok, compare_outputs
from .errors import AutochunkError, BadInputError, BudgetUnreachableError, VerificationError
from .peak import Estimate, estimate_graph
from .graph import Graph
from .inputs import load_inputs, make_inputs
from .loader import (LOOP_OPSET, default_opset, ir_for_ort, load_model, parse_input_shapes, pin_input_shapes,
                     unpinned_inputs, upgrade_opset)
from ._measure_child import save_npz
from .measure import Measurement, measure
from .paths import check_model_output, check_writable_file
from .plan import Plan
from .planner import plan
from .rewrite import rewrite
from .save import discard, publish, publish_as, save_model, stage
from .shapes import infer_graph, infer_shapes, require_shapes, skeleton


def _noted(fn):
    """Run an API call inside one notes collector: its result's `notes` (and a raised error's
    `notes`) get the texts of every degraded or changed path taken, in order."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        with notes.collect() as sink:
            try:
                result = fn(*args, **kwargs)
            except AutochunkError as e:
                e.notes = [n.text for n in sink]
                raise
            for r in result if isinstance(result, tuple) else (result,):
                if hasattr(r, "notes"):
                    r.notes = [n.text for n in sink]
            return result
    return call


@dataclass
class Loaded:
    """A model read from disk (weights left there), pinned and shape-inferred."""

    path: Path
    original: onnx.ModelProto
    pinned: onnx.ModelProto
    graph: Graph
    shapes: dict[str, tuple[int, ...]]  # concrete shape of every graph input
    notes: list[str] = field(default_factory=list)  # degraded or changed paths taken (see notes.py)


def load(path: str | os.PathLike, input_shapes: dict[str, list[int]] | list[str] | tuple[str, ...] | None = None) -> Loaded:
    """Load, pin the input dims, infer every shape; BadInputError names what is missing."""
    if input_shapes is None:
        input_shapes = {}
    if not isinstance(input_shapes, dict):
        input_shapes = parse_input_shapes(input_shapes)
    return _prepare(Path(path), load_model(path), input_shapes)


def _prepare(path: Path, original: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> Loaded:
    ir_for_ort(original)  # exit 2 now when ORT cannot read the model at any IR it supports
    pinned = onnx.ModelProto()
    pinned.CopyFrom(original)  # weights are external (or small): a cheap copy
    pin_input_shapes(pinned, input_shapes)
    missing = unpinned_inputs(pinned)
    if missing:
        raise BadInputError(f"input dim not pinned: {missing[0]}; hint: pass --input-shape NAME:DIMS for every dynamic input")
    graph = infer_graph(pinned)
    require_shapes(graph)
    shapes = {n: graph.shape(n) for n in graph.input_names}
    return Loaded(path, original, pinned, graph, shapes)


@_noted
def estimate(path, input_shapes=None) -> tuple[Loaded, Estimate]:
    m = load(path, input_shapes)
    return m, estimate_graph(m.graph)


def dynamic_shapes(m: Loaded) -> dict[str, tuple]:
    """Every tensor's shape at a second pinning (dynamic dims doubled): dims that differ are dynamic."""
    second, _ = skeleton(m.original)  # no weights: a few hundred KiB whatever the model size
    shapes2 = {}
    for vi in m.original.graph.input:
        if vi.name not in m.shapes:
            continue
        dims = vi.type.tensor_type.shape.dim
        shapes2[vi.name] = [v if d.HasField("dim_value") else 2 * v for d, v in zip(dims, m.shapes[vi.name])]
    try:
        pin_input_shapes(second, shapes2)
        tensors = infer_shapes(second)
    except Exception as e:  # noqa: BLE001 - without it every dim is declared symbolic, still correct
        notes.note(f"shape inference at a second input size failed ({type(e).__name__}: {str(e)[:200]}): "
                   "loops are judged without it")
        return {}
    return {k: v.shape for k, v in tensors.items() if v.shape is not None and None not in v.shape}


@dataclass
class VerifyReport:
    """Both models run on the same inputs: per-output differences, memory and latency of each."""

    ok: bool
    diffs: list[OutputDiff]
    original: Measurement
    chunked: Measurement
    atol: float | None
    rtol: float | None
    notes: list[str] = field(default_factory=list)  # degraded or changed paths taken (see notes.py)

    @property
    def mem_ratio(self) -> float:
        return self.chunked.peak_bytes / self.original.peak_bytes if self.original.peak_bytes > 0 else float("nan")

    @property
    def latency_ratio(self) -> float:
        return self.chunked.latency_s / self.original.latency_s if self.original.latency_s > 0 else float("nan")


@_noted
def verify(original_path, chunked_path, input_shapes=None, *, feeds=None, inputs_path: str | None = None,
           providers: list[str] | None = None, atol: float | None = None, rtol: float | None = None,
           seed: int = 0, repeats: int = 3, loaded: Loaded | None = None,
           save_inputs: str | os.PathLike | None = None) -> VerifyReport:
    """Run both models (each in its own child process) and compare every output; `save_inputs`
    keeps the inputs used (.npz, one array per input name) to replay them with --load-inputs."""
    if save_inputs is not None:
        check_writable_file(save_inputs, "--save-inputs")
    if feeds is None:
        if inputs_path:
            feeds = load_inputs(inputs_path)
        else:
            m = loaded or load(original_path, input_shapes)
            feeds = make_inputs(m.original, m.shapes, seed=seed)
    if save_inputs is not None:
        save_npz(str(save_inputs), feeds)
    with tempfile.TemporaryDirectory(prefix="autochunk-verify-") as tmp:
        a = measure(str(original_path), feeds, providers=providers, repeats=repeats, keep_outputs=True,
                    outputs_path=os.path.join(tmp, "a.npz"))
        b = measure(str(chunked_path), feeds, providers=providers, repeats=repeats, keep_outputs=True,
                    outputs_path=os.path.join(tmp, "b.npz"))
        ref, got = load_inputs(a.outputs_path), load_inputs(b.outputs_path)
    a.outputs_path = b.outputs_path = None
    diffs = compare_outputs(ref, got, atol=atol, rtol=rtol)
    return VerifyReport(all_ok(diffs), diffs, a, b, atol, rtol)


@dataclass
class OptimizeResult:
    plan: Plan
    output_path: Path | None
    written: list[Path] = field(default_factory=list)
    verify: VerifyReport | None = None
    timings: dict[str, float] = field(default_factory=dict)
    budget: int = 0
    budget_text: str = ""
    notes: list[str] = field(default_factory=list)  # degraded or changed paths taken (opset raised, IR lowered, ...)


@_noted
def optimize(path, out_path, budget: str | int, input_shapes=None, *, verify_output: bool = True,
             best_effort: bool = False, dry_run: bool = False, force: bool = False, keep_failed: bool = False,
             providers: list[str] | None = None, atol: float | None = None, rtol: float | None = None,
             seed: int = 0, inputs_path: str | None = None, save_inputs: str | os.PathLike | None = None,
             progress: Callable[[str], None] | None = None) -> OptimizeResult:
    """Plan and write a chunked model that fits `budget`; verify it unless told not to."""
    say = progress or (lambda _msg: None)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    src = Path(path)
    out = Path(out_path) if out_path is not None else None
    if out is not None and not dry_run:
        check_model_output(src, out, force, keep_failed)
    if save_inputs is not None:
        check_writable_file(save_inputs, "--save-inputs")
    say("loading and inferring shapes")
    m = load(src, input_shapes)
    timings["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    original = estimate_graph(m.graph)
    budget_bytes = budget if isinstance(budget, int) else parse_budget(budget, original.peak_bytes)
    timings["estimate_s"] = time.perf_counter() - t
    say("searching chunk regions")
    t = time.perf_counter()
    p = _plan(m, budget_bytes, original)
    old_opset = default_opset(m.original)
    if p.regions and old_opset < LOOP_OPSET and (p.fits or best_effort):
        # Loops will be emitted: convert, then plan again on the converted graph (its nodes differ)
        say(f"raising opset {old_opset} -> {LOOP_OPSET}")
        m2 = _prepare(src, upgrade_opset(m.original, LOOP_OPSET), {k: list(v) for k, v in m.shapes.items()})
        p2 = _plan(m2, budget_bytes, estimate_graph(m2.graph))
        if p2.regions:  # else nothing to chunk after all: the model keeps its opset
            m, p = m2, p2
            notes.note(f"opset raised from {old_opset} to {LOOP_OPSET}: Loop over sequences needs it", kind=notes.CHANGED)
    timings["search_s"] = time.perf_counter() - t
    result = OptimizeResult(p, None, timings=timings, budget=budget_bytes, budget_text=str(budget))
    if not p.fits and not best_effort:
        where = f"peak at node {p.final.peak_node}, {p.final.peak_op}"
        raise BudgetUnreachableError(
            f"budget {_fmt(budget_bytes)} unreachable: best plan reaches {_fmt(p.final.peak_bytes)} ({where})", best_plan=p)
    if dry_run or out is None:
        return result
    say("rewriting into Loops")
    t = time.perf_counter()
    model = rewrite(m.original, m.graph, p.loops, p.dropped)
    if p.regions:
        _record_change(model, p)
    timings["rewrite_s"] = time.perf_counter() - t
    t = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    if not verify_output:
        written = save_model(model, out, src.parent)
        timings["write_s"] = time.perf_counter() - t
    else:
        # staged under its final name next to OUTPUT, verified there, then moved in by rename:
        # the weights are copied once
        staged = stage(model, out, src.parent)
        timings["write_s"] = time.perf_counter() - t
        say("verifying in ONNX Runtime")
        t = time.perf_counter()
        try:
            rep = verify(src, staged, feeds=None, inputs_path=inputs_path, providers=providers, atol=atol, rtol=rtol,
                         seed=seed, loaded=m, save_inputs=save_inputs)
        except BaseException:
            discard(staged)
            raise
        timings["verify_s"] = time.perf_counter() - t
        result.verify = rep
        if not rep.ok:
            if keep_failed:
                publish_as(staged, out.with_name(out.name + ".failed.onnx"))
            else:
                discard(staged)
            bad = next(d for d in rep.diffs if not d.ok)
            raise VerificationError(
                f"verification failed: output {bad.name!r} differs (max abs {bad.max_abs:.3g}, max rel {bad.max_rel:.3g}, "
                f"{bad.mismatches}/{bad.total} elements out of tolerance{'; ' + bad.note if bad.note else ''})", report=rep)
        written = publish(staged, out)
    result.output_path = out
    result.written = written
    return result


def _plan(m: Loaded, budget: int, original: Estimate) -> Plan:
    """Plan only loops that stay right at other input sizes (judged on a second pinning, kept in
    the graph's session for the rewrite too)."""
    m.graph.session.dynamic = dynamic_shapes(m)
    return plan(m.graph, budget, original, portable_only=True)


def _record_change(model: onnx.ModelProto, p: Plan) -> None:
    """Say in the model what was done, without touching the user's own metadata keys."""
    entry = next((e for e in model.metadata_props if e.key == "autochunk"), None)
    if entry is None:
        entry = model.metadata_props.add()
        entry.key = "autochunk"
    entry.value = f"{len(p.regions)} chunked regions; estimated peak {p.original.peak_bytes} -> {p.final.peak_bytes} bytes"




def _fmt(n: int) -> str:
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"
