"""The Python API: load -> shapes -> estimate -> plan -> rewrite -> verify -> report.

The CLI is a thin layer over these functions; they raise AutochunkError subclasses carrying the
exit code, and never print. Models are given as a path or as an onnx.ModelProto; input shapes as
{"name": [1, 4096]}, "name:1x4096 other:1x4096", or a list of such strings.
"""
from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Union

import onnx

from . import notes as _notes
from . import providers as _providers
from . import ranges as _ranges
from . import relpos as _relpos
from .budget import parse_budget
from .compare import OutputDiff, all_ok, compare_outputs
from .errors import AutochunkError, BadInputError, BudgetUnreachableError, GateError, VerificationError
from .gates import Gate, check as check_gates
from .peak import Estimate, estimate_graph
from .graph import Graph
from .inputs import load_inputs, make_inputs
from .paths import check_model_output, check_writable_file
from ._measure_child import save_npz
from .loader import (ir_for_ort, BATCH_SYMBOLS, LOOP_OPSET, default_opset, load_model, parse_input_shapes, pin_input_shapes,
                     unpinned_error, upgrade_opset, validate_model)
from .measure import Latency, Measurement, interleaved, measure
from .plan import Plan
from .planner import plan
from .rewrite import rewrite
from .save import discard, publish, publish_as, save_model, stage
from .shapes import infer_graph, infer_shapes, require_shapes, skeleton


@dataclass
class Loaded:
    """A model read from disk (weights left there) or given in memory, pinned and shape-inferred."""

    path: Path | None  # None: given as a ModelProto
    original: onnx.ModelProto
    pinned: onnx.ModelProto
    graph: Graph
    shapes: dict[str, tuple[int, ...]]  # concrete shape of every graph input
    notes: list[str] = field(default_factory=list)  # degraded or changed paths taken (api.estimate fills it)


ModelLike = Union[str, os.PathLike, onnx.ModelProto]


def _read(model: ModelLike) -> tuple[Path | None, onnx.ModelProto]:
    """(path or None, proto): a path is parsed with weights left on disk; a proto is checked and
    used as is (never modified: pinning works on a copy)."""
    if isinstance(model, onnx.ModelProto):
        validate_model(model, "ModelProto", None)
        return None, model
    if not isinstance(model, (str, os.PathLike)):
        raise BadInputError(f"model: expected a path or an onnx.ModelProto, got {type(model).__name__}")
    return Path(model), load_model(model)


def load(model: ModelLike, input_shapes=None) -> Loaded:
    """Load, pin the input dims, infer every shape; BadInputError names every dim still missing."""
    path, original = _read(model)
    return _prepare(path, original, parse_input_shapes(input_shapes))


def _prepare(path: Path | None, original: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> Loaded:
    ir_for_ort(original)  # exit 2 now when ORT cannot read the model at any IR it supports
    pinned = onnx.ModelProto()
    pinned.CopyFrom(original)  # weights are external (or small): a cheap copy
    pin_input_shapes(pinned, input_shapes)
    missing = unpinned_error(pinned)
    if missing is not None:
        raise missing
    graph = infer_graph(pinned)
    require_shapes(graph)
    shapes = {n: graph.shape(n) for n in graph.input_names}
    return Loaded(path, original, pinned, graph, shapes)


def estimate(model: ModelLike, input_shapes=None) -> tuple[Loaded, Estimate]:
    """(the loaded model, its estimated peak activation memory and what is live at the peak)."""
    with _notes.collect() as sink:
        m = load(model, input_shapes)
        est = estimate_graph(m.graph)
        m.notes = [str(n) for n in sink]
    return m, est


@dataclass
class Sweep:
    """Estimated peak against length over a range: the original, and a chunked model when given."""

    range: "_ranges.ShapeRange"
    lengths: list[int]
    original: list[int]
    chunked: list[int] | None = None

    def to_dict(self) -> dict:
        return {**self.range.to_dict(), "points": [
            {"length": L, "original_peak_bytes": o, "chunked_peak_bytes": None if self.chunked is None else self.chunked[k]}
            for k, (L, o) in enumerate(zip(self.lengths, self.original))]}


def sweep(model: ModelLike, input_shapes, chunked: ModelLike | None = None, points: int = _ranges.SAMPLES) -> Sweep:
    """Estimate the peak at `points` lengths across the range in `input_shapes` (geometric, bottom
    and top included), for the model and for `chunked` (a model this tool wrote from it)."""
    sr = _ranges.split(input_shapes)
    if sr is None:
        raise BadInputError("--sweep and --chunked need a length range in --input-shape, as in input_ids:1x512..8192")
    if points < 2:
        raise BadInputError(f"--sweep {points}: give 2 or more lengths")
    path, proto = _read(model)
    _ranges.check(proto, sr)
    _ranges.check_lengths(proto, sr)
    lengths = sr.lengths(points)
    with _notes.collect():
        orig = [estimate_graph(_ranges.prepare_at(lambda s: _prepare(path, proto, s), sr, L).graph).peak_bytes
                for L in lengths]
        ch = None
        if chunked is not None:
            cpath, cproto = _read(chunked)
            ch = [estimate_graph(_ranges.prepare_at(lambda s: _prepare(cpath, cproto, s), sr, L).graph).peak_bytes
                  for L in lengths]
    return Sweep(sr, lengths, orig, ch)


@dataclass
class ModelInfo:
    """A model's inputs and outputs as declared: dims are ints, symbol names, or None (unnamed)."""

    inputs: list[tuple[str, str, list]]  # (name, numpy dtype name, dims)
    outputs: list[tuple[str, str, list]]
    symbols: list[str]  # symbolic dims of the inputs, in order of first appearance

    def input_shape_line(self, values: dict[str, int] | None = None) -> str:
        """A --input-shape line: given symbol values filled in, batch-like symbols 1, others in capitals."""
        values = values or {}
        parts = []
        for name, _, dims in self.inputs:
            text = []
            for k, d in enumerate(dims):
                if isinstance(d, int):
                    text.append(str(d))
                elif d is not None and d in values:
                    text.append(str(values[d]))
                elif d is not None and d.lower() in BATCH_SYMBOLS:
                    text.append("1")
                else:
                    text.append((d or f"{name}_dim{k}").upper())
            parts.append(f"{name}:{'x'.join(text) if text else '[]'}")
        return "--input-shape " + " ".join(parts)


def inspect(model: ModelLike) -> ModelInfo:
    """The inputs and outputs a user must know to pin shapes (no shape inference, no weights read)."""
    _, proto = _read(model)
    inits = {t.name for t in proto.graph.initializer}

    def rows(vis):
        out = []
        for vi in vis:
            if vi.name in inits:
                continue
            tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt is not None and tt.elem_type else "?"
            dims = [] if tt is None else [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                          for d in tt.shape.dim]
            out.append((vi.name, dtype, dims))
        return out

    ins = rows(proto.graph.input)
    symbols = list(dict.fromkeys(d for _, _, dims in ins for d in dims if isinstance(d, str)))
    return ModelInfo(ins, rows(proto.graph.output), symbols)


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
        _notes.note(f"shape inference at a second input size failed ({type(e).__name__}: {str(e)[:200]}): "
                    "loops are judged without it")
        return {}
    return {k: v.shape for k, v in tensors.items() if v.shape is not None and None not in v.shape}


@dataclass
class VerifyReport:
    """Both models run on the same inputs: per-output differences, memory of each (measured alone,
    arena off), latency of both (interleaved in one process, default session options), gates."""

    ok: bool
    diffs: list[OutputDiff]
    original: Measurement
    chunked: Measurement
    atol: float | None  # as given; None: the per-dtype defaults (each output's effective pair is in diffs)
    rtol: float | None
    latency: Latency | None = None
    gates: list[Gate] = field(default_factory=list)
    budget: int | None = None  # optimize's budget in bytes: the measured chunked peak is judged against it
    range_checks: list = field(default_factory=list)  # a length range: RangeCheck at the bottom, middle, top

    @property
    def mem_ratio(self) -> float:
        return self.chunked.peak_bytes / self.original.peak_bytes if self.original.peak_bytes > 0 else float("nan")

    @property
    def latency_ratio(self) -> float:
        """median(chunked) / median(original) of the interleaved runs (NaN when not timed)."""
        return self.latency.ratio(1) if self.latency is not None else float("nan")

    @property
    def over_budget(self) -> bool | None:
        if self.budget is None or self.chunked.peak_bytes < 0:
            return None
        return self.chunked.peak_bytes > self.budget

    @property
    def failed_gates(self) -> list[Gate]:
        return [g for g in self.gates if not g.ok]


@contextmanager
def _on_disk(model: ModelLike, tmp: str, name: str) -> Iterator[str]:
    """A path ORT can load: the model's own path, or the ModelProto saved under `tmp`."""
    if isinstance(model, onnx.ModelProto):
        path = os.path.join(tmp, name)
        onnx.save(model, path)
        yield path
    else:
        yield str(model)


def verify(original, chunked, input_shapes=None, *, feeds=None, inputs_path: str | None = None,
           providers: list[str] | str | None = None, allow_fallback: bool = False, atol: float | None = None,
           rtol: float | None = None, seed: int = 0, iterations: int | None = None,
           latency_time_s: float | None = None, measure_latency: bool = True,
           max_mem_ratio: float | None = None, max_latency_ratio: float | None = None, max_peak=None,
           loaded: Loaded | None = None, progress: Callable[[str], None] | None = None,
           save_inputs: str | os.PathLike | None = None) -> VerifyReport:
    """Run both models (path or ModelProto) on the same inputs and compare every output.

    Memory: each model alone in a fresh child (arena off). Latency: both in one child, default
    session options, warm-up, `iterations` interleaved rounds or `latency_time_s` of them. Returns
    the report (ok False when outputs differ); raises GateError (exit 5) when outputs match but a
    gate fails, BadInputError when a requested provider is missing or was not really used.
    """
    with _notes.collect():
        if save_inputs is not None:
            check_writable_file(save_inputs, "--save-inputs")
        wanted = _providers.resolve(providers, allow_fallback)
        max_peak_b = parse_budget(max_peak, flag="--max-peak") if max_peak is not None else None
        sr = _range_of(_read(original)[1], input_shapes, inputs_path, save_inputs) if feeds is None else None
        with tempfile.TemporaryDirectory(prefix="autochunk-verify-") as tmp, \
                _on_disk(original, tmp, "original.onnx") as a_path, _on_disk(chunked, tmp, "chunked.onnx") as b_path:
            if sr is not None:
                src, proto = _read(original)
                rep, checks = _verify_range(a_path, b_path, sr, lambda shapes: _prepare(src, proto, shapes),
                                            providers=wanted, allow_fallback=allow_fallback, atol=atol, rtol=rtol,
                                            seed=seed, iterations=iterations, latency_time_s=latency_time_s,
                                            progress=progress, budget=None, measure_latency=measure_latency)
                rep.range_checks = checks
            else:
                    rep = _verify(a_path, b_path, input_shapes, feeds=feeds, inputs_path=inputs_path, providers=wanted,
                              allow_fallback=allow_fallback, atol=atol, rtol=rtol, seed=seed, iterations=iterations,
                              latency_time_s=latency_time_s, measure_latency=measure_latency, loaded=loaded,
                              progress=progress, save_inputs=save_inputs,
                              model=original if isinstance(original, onnx.ModelProto) else None)
        rep.gates = check_gates(rep.mem_ratio, rep.latency_ratio, _gate_peak(rep), max_mem_ratio=max_mem_ratio,
                                max_latency_ratio=max_latency_ratio, max_peak=max_peak_b)
        if rep.ok and rep.failed_gates:
            raise GateError(_gate_message(rep), result=rep, gates=rep.gates)
        return rep


def _gate_message(rep: VerifyReport) -> str:
    failed = rep.failed_gates
    return "gate failed: " + "; ".join(g.line() for g in failed) + " (outputs match)"


def _verify(a_path: str, b_path: str, input_shapes, *, feeds, inputs_path, providers, allow_fallback, atol, rtol,
            seed, iterations, latency_time_s, measure_latency, loaded, progress, model=None,
            save_inputs=None) -> VerifyReport:
    say = progress or (lambda _msg: None)
    if feeds is None:
        if inputs_path:
            feeds = load_inputs(inputs_path)
        else:
            m = loaded or load(model if model is not None else a_path, input_shapes)
            feeds = make_inputs(m.original, m.shapes, seed=seed)
    if save_inputs is not None:  # to replay them with --load-inputs
        save_npz(os.fspath(save_inputs), feeds)
    with tempfile.TemporaryDirectory(prefix="autochunk-verify-") as tmp:
        say("measuring peak memory of the original (own process, arena off)")
        a = measure(a_path, feeds, providers=providers, repeats=0, keep_outputs=True,
                    outputs_path=os.path.join(tmp, "a.npz"))
        _providers.check_active(providers, a.providers, allow_fallback, "the original")
        say("measuring peak memory of the chunked model (own process, arena off)")
        b = measure(b_path, feeds, providers=providers, repeats=0, keep_outputs=True,
                    outputs_path=os.path.join(tmp, "b.npz"))
        _providers.check_active(providers, b.providers, allow_fallback, "the chunked model")
        ref, got = load_inputs(a.outputs_path), load_inputs(b.outputs_path)
    a.outputs_path = b.outputs_path = None
    diffs = compare_outputs(ref, got, atol=atol, rtol=rtol)
    lat = None
    if measure_latency:
        what = f"{iterations} rounds" if iterations else (f"{latency_time_s:g} s" if latency_time_s else "10 rounds")
        say(f"timing original and chunked interleaved in one process ({what}, default session options)")

        def tick(done: int, total: int | None) -> None:
            say(f"latency: round {done}/{total}" if total else f"latency: round {done}")

        lat = interleaved([a_path, b_path], feeds, providers or a.providers, iterations=iterations,
                          time_target_s=latency_time_s, progress=tick if progress else None)
    return VerifyReport(all_ok(diffs), diffs, a, b, atol, rtol, latency=lat)


@dataclass
class OptimizeResult:
    """What optimize did: the plan, where the model went (or the model itself), what was measured."""

    plan: Plan
    output_path: Path | None
    written: list[Path] = field(default_factory=list)
    verify: VerifyReport | None = None
    timings: dict[str, float] = field(default_factory=dict)
    budget: int = 0
    budget_text: str = ""
    notes: list[str] = field(default_factory=list)  # what was changed or degraded besides chunking (texts)
    model: onnx.ModelProto | None = None  # the rewritten model when no output path was given
    input_shapes: dict[str, list[int]] = field(default_factory=dict)  # every input's pinned shape
    range: "_ranges.RangePlan | None" = None  # a length range: rows rules and the estimate across it
    range_checks: list = field(default_factory=list)  # RangeCheck at the bottom, middle and top

    @property
    def gates(self) -> list[Gate]:
        return self.verify.gates if self.verify else []


def optimize(path, out_path=None, budget: str | int = "50%", input_shapes=None, *, verify_output: bool = True,
             best_effort: bool = False, dry_run: bool = False, force: bool = False, keep_failed: bool = False,
             providers: list[str] | str | None = None, allow_fallback: bool = False, atol: float | None = None,
             rtol: float | None = None, seed: int = 0, inputs_path: str | None = None,
             iterations: int | None = None, latency_time_s: float | None = None,
             max_mem_ratio: float | None = None, max_latency_ratio: float | None = None, max_peak=None,
             progress: Callable[[str], None] | None = None,
             save_inputs: str | os.PathLike | None = None) -> OptimizeResult:
    """Plan and rewrite `path` (a path or a ModelProto) so its estimated peak fits `budget`; verify it
    unless told not to; write it to `out_path`, or, without one, return it as `result.model`.

    Raises BadInputError (2), BudgetUnreachableError (3, unless best_effort), VerificationError (4,
    nothing written), GateError (5: outputs match, a gate failed; the model IS written, `.result`).
    """
    with _notes.collect() as sink:
        try:
            result = _optimize(path, out_path, budget, input_shapes, verify_output, best_effort, dry_run, force,
                               keep_failed, providers, allow_fallback, atol, rtol, seed, inputs_path, iterations,
                               latency_time_s, max_mem_ratio, max_latency_ratio, max_peak, progress, save_inputs)
        except GateError as e:
            e.result.notes = e.notes = [str(n) for n in sink]
            raise
        except AutochunkError as e:  # the notes taken on the way to an error are part of it
            e.notes = [str(n) for n in sink]
            raise
        result.notes = [str(n) for n in sink]
        return result


def _optimize(path, out_path, budget, input_shapes, verify_output, best_effort, dry_run, force, keep_failed,
              providers, allow_fallback, atol, rtol, seed, inputs_path, iterations, latency_time_s,
              max_mem_ratio, max_latency_ratio, max_peak, progress, save_inputs=None) -> OptimizeResult:
    say = progress or (lambda _msg: None)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    src, original_proto = _read(path)
    out = Path(out_path) if out_path is not None else None
    gated = any(x is not None for x in (max_mem_ratio, max_latency_ratio, max_peak))
    if gated and not verify_output and not dry_run:
        raise BadInputError("--max-mem-ratio, --max-latency-ratio and --max-peak need the verification run; "
                            "drop --no-verify")
    wanted = _providers.resolve(providers, allow_fallback) if verify_output and not dry_run else None
    max_peak_b = parse_budget(max_peak, flag="--max-peak") if max_peak is not None else None
    if out is not None and not dry_run:
        check_model_output(src, out, force, keep_failed)
    if save_inputs is not None:
        check_writable_file(save_inputs, "--save-inputs")
    sr = _range_of(original_proto, input_shapes, inputs_path, save_inputs)
    say("loading and inferring shapes")
    m = _prepare(src, original_proto, sr.top if sr is not None else parse_input_shapes(input_shapes))
    timings["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    original = estimate_graph(m.graph)
    budget_bytes = parse_budget(budget, original.peak_bytes)
    timings["estimate_s"] = time.perf_counter() - t
    say("searching chunk regions")
    t = time.perf_counter()
    m, p = _plan_relpos(src, m, budget_bytes, original)
    old_opset = default_opset(m.original)
    if p.regions and old_opset < LOOP_OPSET and (p.fits or best_effort):
        # Loops will be emitted: convert, then plan again on the converted graph (its nodes differ)
        say(f"raising opset {old_opset} -> {LOOP_OPSET}")
        m2 = _prepare(src, upgrade_opset(m.original, LOOP_OPSET), {k: list(v) for k, v in m.shapes.items()})
        p2 = _plan(m2, budget_bytes, estimate_graph(m2.graph))
        if p2.regions:  # else nothing to chunk after all: the model keeps its opset
            m, p = m2, p2
            _notes.note(f"opset raised from {old_opset} to {LOOP_OPSET}: Loop over sequences needs it", kind=_notes.CHANGED)
    timings["search_s"] = time.perf_counter() - t
    result = OptimizeResult(p, None, timings=timings, budget=budget_bytes, budget_text=str(budget),
                            input_shapes={k: list(v) for k, v in m.shapes.items()})
    if not p.fits and not best_effort:
        where = f"peak at node {p.final.peak_node}, {p.final.peak_op}"
        raise BudgetUnreachableError(
            f"budget {_fmt(budget_bytes)} unreachable: best plan reaches {_fmt(p.final.peak_bytes)} ({where})",
            best_plan=p, result=result)
    if sr is not None:
        say(f"fitting rows per iteration over lengths {sr.lo}..{sr.hi}")
        t = time.perf_counter()
        m_top = m
        result.range = _ranges.fit(m_top, p, sr, lambda shapes: _prepare(src, m_top.original, shapes))
        result.plan = p = result.range.plan
        timings["range_s"] = time.perf_counter() - t
        if not result.range.fits:
            _notes.note(f"the estimated peak exceeds {_fmt(p.budget if p.fits else p.final.peak_bytes)} at some length of "
                        f"{sr.lo}..{sr.hi} (see the range table)", kind=_notes.INFO)
    if dry_run:
        return result
    say("rewriting into Loops")
    t = time.perf_counter()
    model = rewrite(m.original, m.graph, p.loops, p.dropped)
    if p.regions:
        _record_change(model, p)
    timings["rewrite_s"] = time.perf_counter() - t
    with tempfile.TemporaryDirectory(prefix="autochunk-optimize-") as tmp:
        src_dir = src.parent if src is not None else Path(tmp)
        if out is None:  # in memory: verify a temporary copy, hand back the model itself
            result.model = model
            if verify_output:
                staged = Path(tmp) / "chunked.onnx"
                onnx.save(model, str(staged))
                result.verify = _verify_timed(result, m, src, original_proto, tmp, staged, inputs_path, wanted,
                                              allow_fallback, atol, rtol, seed, iterations, latency_time_s, say, save_inputs,
                                              sr)
                if not result.verify.ok:
                    raise VerificationError(_mismatch(result.verify), report=result.verify)
        else:
            t = time.perf_counter()
            out.parent.mkdir(parents=True, exist_ok=True)
            if not verify_output:
                result.written = save_model(model, out, src_dir)
                timings["write_s"] = time.perf_counter() - t
            else:
                # staged under its final name next to OUTPUT, verified there, then moved in by rename:
                # the weights are copied once
                staged = stage(model, out, src_dir)
                timings["write_s"] = time.perf_counter() - t
                try:
                    rep = _verify_timed(result, m, src, original_proto, tmp, staged, inputs_path, wanted,
                                        allow_fallback, atol, rtol, seed, iterations, latency_time_s, say, save_inputs, sr)
                except BaseException:
                    discard(staged)
                    raise
                result.verify = rep
                if not rep.ok:
                    if keep_failed:
                        publish_as(staged, out.with_name(out.name + ".failed.onnx"))
                    else:
                        discard(staged)
                    raise VerificationError(_mismatch(rep), report=rep)
                result.written = publish(staged, out)
            result.output_path = out
    rep = result.verify
    if rep is not None:
        rep.budget = budget_bytes
        if rep.over_budget:
            est = p.final.peak_bytes
            _notes.note(f"measured chunked peak {_fmt(rep.chunked.peak_bytes)} is over the budget {_fmt(budget_bytes)} "
                        f"(+{rep.chunked.peak_bytes / budget_bytes - 1:.1%}; estimated {_fmt(est)}): the budget bounds the "
                        f"estimate; use --max-peak to fail on the measured figure", kind=_notes.INFO)
        rep.gates = check_gates(rep.mem_ratio, rep.latency_ratio, _gate_peak(rep), max_mem_ratio=max_mem_ratio,
                                max_latency_ratio=max_latency_ratio, max_peak=max_peak_b)
        if rep.failed_gates:
            raise GateError(_gate_message(rep) + ("; the model was written" if result.written else ""),
                            result=result, gates=rep.gates)
    return result


def _verify_timed(result: OptimizeResult, m: Loaded, src: Path | None, original_proto, tmp: str, staged: Path,
                  inputs_path, wanted, allow_fallback, atol, rtol, seed, iterations, latency_time_s, say, save_inputs,
                  sr=None):
    say("verifying in ONNX Runtime")
    t = time.perf_counter()
    with _on_disk(original_proto if src is None else src, tmp, "original.onnx") as a_path:
        if sr is not None:
            rep, result.range_checks = _verify_range(a_path, str(staged), sr, lambda shapes: _prepare(src, m.original, shapes),
                                                     providers=wanted, allow_fallback=allow_fallback, atol=atol, rtol=rtol,
                                                     seed=seed, iterations=iterations, latency_time_s=latency_time_s,
                                                     progress=say, budget=result.budget)
            result.timings["verify_s"] = time.perf_counter() - t
            return rep
        rep = _verify(a_path, str(staged), None, feeds=None, inputs_path=inputs_path, providers=wanted,
                      allow_fallback=allow_fallback, atol=atol, rtol=rtol, seed=seed, iterations=iterations,
                      latency_time_s=latency_time_s, measure_latency=True, loaded=m, progress=say,
                      save_inputs=save_inputs)
    result.timings["verify_s"] = time.perf_counter() - t
    return rep


@dataclass
class RangeCheck:
    """Verification at one length of a range: outputs compared (`report`) where the original fits
    this machine's memory, the chunked model's peak measured always."""

    length: int
    chunked: Measurement
    report: VerifyReport | None = None  # None: the original was not run at this length (memory)
    why_not_compared: str = ""

    @property
    def ok(self) -> bool:
        return self.report is None or self.report.ok

    def to_dict(self) -> dict:
        from .report import verify_json

        return {"length": self.length, "compared": self.report is not None, "ok": self.ok,
                "chunked_peak_bytes": self.chunked.peak_bytes, "method": self.chunked.method,
                "why_not_compared": self.why_not_compared or None,
                "verify": verify_json(self.report) if self.report is not None else None}


def _gate_peak(rep: VerifyReport) -> int:
    """The chunked peak --max-peak judges: over a length range, the largest measured at any length
    (-1, not measurable, when one was not)."""
    peaks = [c.chunked.peak_bytes for c in rep.range_checks] or [rep.chunked.peak_bytes]
    return -1 if min(peaks) < 0 else max(peaks)


def _range_of(original_proto: onnx.ModelProto, input_shapes, inputs_path, save_inputs):
    """The length range in the input shapes (None: pinned), checked against the model's dims."""
    sr = _ranges.split(input_shapes)
    if sr is None:
        return None
    if inputs_path is not None or save_inputs is not None:
        raise BadInputError("--load-inputs and --save-inputs need pinned shapes: a length range verifies on generated "
                            "inputs at several lengths")
    _ranges.check(original_proto, sr)
    _ranges.check_lengths(original_proto, sr)
    return sr


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _verify_range(a_path: str, b_path: str, sr, prepare, *, providers, allow_fallback, atol, rtol, seed, iterations,
                  latency_time_s, progress, budget: int | None = None,
                  measure_latency: bool = True) -> tuple[VerifyReport, list[RangeCheck]]:
    """Verify at the bottom, middle and top of the range: outputs and latency where the original's
    estimated peak fits a third of the memory available, the chunked peak everywhere. Returns the
    report at the longest compared length (the one gates judge) and every length's check."""
    say = progress or (lambda _msg: None)
    avail = _available_memory()
    checks: list[RangeCheck] = []
    main = None
    for L in sorted({sr.lo, sr.middle, sr.hi}):
        m = _ranges.prepare_at(prepare, sr, L)
        feeds = make_inputs(m.original, m.shapes, seed=seed)
        orig_est = estimate_graph(m.graph).peak_bytes
        if avail is not None and orig_est > avail // 3 and L != sr.lo:
            say(f"length {L}: measuring the chunked model's peak (the original's estimated {_fmt(orig_est)} is over a "
                f"third of the {_fmt(avail)} available)")
            b = measure(b_path, feeds, providers=providers, repeats=0)
            _providers.check_active(providers, b.providers, allow_fallback, "the chunked model")
            checks.append(RangeCheck(L, b, None, f"original estimated at {orig_est} bytes, over a third of the "
                                                 f"{avail} bytes available"))
            continue
        say(f"length {L}: verifying")
        rep = _verify(a_path, b_path, None, feeds=feeds, inputs_path=None, providers=providers,
                      allow_fallback=allow_fallback, atol=atol, rtol=rtol, seed=seed, iterations=iterations,
                      latency_time_s=latency_time_s, measure_latency=measure_latency, loaded=m, progress=progress)
        rep.budget = budget
        checks.append(RangeCheck(L, rep.chunked, rep))
        main = rep
        if not rep.ok:
            break  # exit 4 whatever the longer lengths say
    over = [c for c in checks if budget is not None and c.chunked.peak_bytes > budget]
    if over:
        _notes.note("measured chunked peak over the budget at length(s) " + ", ".join(
            f"{c.length} ({_fmt(c.chunked.peak_bytes)})" for c in over) + f" (budget {_fmt(budget)})", kind=_notes.INFO)
    bad = next((c for c in checks if not c.ok), None)
    if bad is not None:
        _notes.note(f"outputs differ at length {bad.length} of the range", kind=_notes.INFO)
        main = bad.report
    if main is None:  # pragma: no cover - the bottom is always compared
        raise BadInputError("no length of the range could be compared")
    main.range_checks = checks
    return main, checks


def _mismatch(rep: VerifyReport) -> str:
    bad = next(d for d in rep.diffs if not d.ok)
    where = next((f" at length {c.length}" for c in rep.range_checks if not c.ok), "")
    return (f"verification failed: output {bad.name!r} differs{where} (max abs {bad.max_abs:.3g}, max rel {bad.max_rel:.3g}, "
            f"{bad.mismatches}/{bad.total} elements out of tolerance{'; ' + bad.note if bad.note else ''})")


def _plan(m: Loaded, budget: int, original: Estimate) -> Plan:
    """Plan only loops that stay right at other input sizes (judged on a second pinning, kept in
    the graph's session for the rewrite too)."""
    m.graph.session.dynamic = dynamic_shapes(m)
    return plan(m.graph, budget, original, portable_only=True)


def _plan_relpos(src: Path | None, m: Loaded, budget: int, original: Estimate) -> tuple[Loaded, Plan]:
    """Plan on the model with its relative-position chains computed once per offset (relpos) when
    it has any and that plan chunks something; else on the model as it is. The budget stays
    relative to the original's estimate."""
    rp = _relpos.apply(m.graph, m.original)
    if rp is not None:
        m2 = _prepare(src, rp[0], {k: list(v) for k, v in m.shapes.items()})
        p2 = _plan(m2, budget, original)
        if p2.regions:
            _notes.note(f"{rp[1]} relative-position chain(s) computed once per offset ([L+L-1] instead of [L, L]) "
                        "and gathered per chunk", kind=_notes.CHANGED)
            return m2, p2
    return m, _plan(m, budget, original)


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
