"""Human-readable tables, and the one JSON document every subcommand prints (docs/json-schema.md).

Every document has the same top-level keys (`envelope`), null where a section does not apply, so
a pipeline parses one shape whatever the subcommand or the outcome, failures included.
"""
from __future__ import annotations

import math

import onnx

from .bounds import text as bounds_text
from .compare import default_tolerances, format_diffs
from .peak import Estimate
from .plan import Plan

SCHEMA_VERSION = 1
STATUS_BY_EXIT = {0: "ok", 1: "internal_error", 2: "bad_input", 3: "budget_unreachable", 4: "verification_failed",
                  5: "gate_failed", 130: "interrupted"}


def fmt_bytes(n: int | float) -> str:
    if n is None or n < 0:
        return "n/a"
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{int(n)} B"


def estimate_text(est: Estimate, top: int = 8) -> str:
    lines = [
        f"estimated peak activation memory: {fmt_bytes(est.peak_bytes)} at node {est.peak_node} ({est.peak_op}, #{est.peak_index})",
        f"weights: {fmt_bytes(est.weight_bytes)} (not counted above)   inputs: {fmt_bytes(est.input_bytes)}   outputs: {fmt_bytes(est.output_bytes)}",
        "tensors live at the peak:",
        f"  {'bytes':>10}  {'dtype':8} {'shape':24} {'tensor':40} producer",
    ]
    for lt in est.live_at_peak[:top]:
        shape = "x".join(map(str, lt.shape)) if lt.shape else "?"
        lines.append(f"  {fmt_bytes(lt.bytes):>10}  {lt.dtype:8} {shape:24} {lt.name[:40]:40} {lt.producer}")
    if len(est.live_at_peak) > top:
        rest = sum(lt.bytes for lt in est.live_at_peak[top:])
        lines.append(f"  {fmt_bytes(rest):>10}  ({len(est.live_at_peak) - top} more)")
    return "\n".join(lines)


def np_dtype(name: str) -> str:
    """numpy's name for an ONNX element type name ('float' -> 'float32'), used everywhere in JSON."""
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.DataType.Value(name.upper())).name
    except (ValueError, KeyError, TypeError):
        return name


def estimate_json(est: Estimate) -> dict:
    d = est.to_dict()
    for lt in d.get("live_at_peak", []):
        lt["dtype"] = np_dtype(lt["dtype"])
    d["timeline"] = [{"index": p["index"], "node": p["node"], "op_type": p["op_type"], "live_bytes": p["live_bytes"]} for p in d["timeline"]]
    return d


def plan_json(p: Plan) -> dict:
    regions = []
    for lp in p.loops:
        r = lp.region
        cut = r.cuts[r.end]
        regions.append({
            "end_tensor": r.end, "nodes": [n.name for n in r.owned], "first_node": r.owned[0].name,
            "last_node": r.owned[-1].name, "recomputed_nodes": [n.name for n in r.body if n.index in r.clones],
            "chunk_axis": cut.axis, "units": r.units, "chunk_size": lp.chunk, "chunks": lp.iterations,
            "sliced_inputs": [{"tensor": t, "axis": c.axis} for t, c in r.slices],
            "whole_inputs": list(r.outer_reads), "outputs": list(r.outputs),
        })
    return {
        "budget_bytes": p.budget, "fits": p.fits, "stages": p.stages,
        "original_peak_bytes": p.original.peak_bytes, "predicted_peak_bytes": p.final.peak_bytes,
        "predicted_peak_node": p.final.peak_node, "predicted_peak_op": p.final.peak_op,
        "predicted_latency_ratio": 1.0 + p.predicted_slowdown, "search_s": p.search_s, "regions": regions,
        "bounds": [b.to_dict() for b in p.bounds],
    }


def plan_text(p: Plan, show_bounds: bool | None = None) -> str:
    """The plan; what bounds it (live at its peak, and why) when over budget or asked (dry run)."""
    ratio = p.final.peak_bytes / p.original.peak_bytes if p.original.peak_bytes else 1.0
    lines = [
        f"plan: {len(p.regions)} chunked region(s) in {p.stages} stage(s), search {p.search_s:.2f} s",
        f"  estimated peak {fmt_bytes(p.original.peak_bytes)} -> {fmt_bytes(p.final.peak_bytes)} ({ratio:.1%}), "
        f"budget {fmt_bytes(p.budget)}: {'fits' if p.fits else 'OVER BUDGET'}; predicted slowdown {p.predicted_slowdown:+.1%}",
    ]
    for k, lp in enumerate(p.loops):
        r = lp.region
        cut = r.cuts[r.end]
        own = r.owned
        lines.append(f"  [{k}] {len(own):3d} nodes {own[0].name} .. {own[-1].name}")
        lines.append(f"       dim {cut.axis} of {r.end}: {r.units} -> chunks of {lp.chunk} x {lp.iterations}; "
                     f"sliced {', '.join(t for t, _ in r.slices) or '-'}")
        if r.clones:
            names = [n.name for n in r.body if n.index in r.clones]
            lines.append(f"       recomputes {len(names)} node(s) per chunk: {', '.join(names)}")
    by: dict[int, list[int]] = {}
    for k, src in p.shared:  # structural reuse (reuse.py): stages that took an earlier stage's search
        by.setdefault(src, []).append(k)
    for src, ks in by.items():
        lines.append(f"  loops {_spans(ks)} share the plan of loop [{src}]: same layer structure and shapes, "
                     f"its search reused")
    if show_bounds if show_bounds is not None else not p.fits:
        lines += bounds_text(p.bounds)
    return "\n".join(lines)


def _spans(ks: list[int]) -> str:
    """[3]-[9], [12] for 3..9 and 12."""
    out, k = [], 0
    while k < len(ks):
        j = k
        while j + 1 < len(ks) and ks[j + 1] == ks[j] + 1:
            j += 1
        out.append(f"[{ks[k]}]" if j == k else f"[{ks[k]}]-[{ks[j]}]")
        k = j + 1
    return ", ".join(out)


def verify_text(rep) -> str:
    a, b = rep.original, rep.chunked
    lat = rep.latency
    lines = [format_diffs(rep.diffs),
             f"{'':12} {'peak memory':>14}   latency min / median / max         memory: {b.method}, {', '.join(b.providers)}"]
    for k, (name, m) in enumerate((("original", a), ("chunked", b))):
        timing = (f"{lat.mins_s[k] * 1e3:9.1f} / {lat.medians_s[k] * 1e3:7.1f} / {lat.maxs_s[k] * 1e3:7.1f} ms"
                  if lat is not None else f"{'n/a':>31}")
        lines.append(f"{name:12} {fmt_bytes(m.peak_bytes):>14}   {timing}")
    lines.append(f"{'ratio':12} {rep.mem_ratio:>14.3f}   {'':>12}{rep.latency_ratio:>7.3f}")
    if lat is not None:
        lines.append(f"latency: {lat.rounds} interleaved rounds in one process after {lat.warmup} warm-up run(s) each, "
                     f"ORT default session options, {', '.join(lat.providers[-1])}; ratio of medians")
    if rep.budget is not None:
        if b.peak_bytes < 0:
            lines.append(f"chunked peak not measured ({b.method}); budget {fmt_bytes(rep.budget)}")
        else:
            verdict = "OVER budget" if rep.over_budget else "within budget"
            lines.append(f"measured chunked peak {fmt_bytes(b.peak_bytes)} vs budget {fmt_bytes(rep.budget)}: {verdict} "
                         f"({b.peak_bytes / rep.budget:.1%} of it)")
    for g in rep.gates:
        lines.append("gate " + g.line())
    return "\n".join(lines)


def _num(x):
    """JSON has no NaN: unmeasured figures are null."""
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return None
    return x


def verify_json(rep) -> dict:
    def meas(m):
        return {"peak_bytes": m.peak_bytes if m.peak_bytes >= 0 else None, "providers": m.providers,
                "method": m.method, "note": m.note or None}

    lat = rep.latency
    latency = None
    if lat is not None:
        latency = {
            "method": lat.method, "rounds": lat.rounds, "warmup_runs": lat.warmup, "providers": lat.providers[-1],
            "original": {"min_s": lat.mins_s[0], "median_s": lat.medians_s[0], "max_s": lat.maxs_s[0], "runs_s": lat.runs_s[0]},
            "chunked": {"min_s": lat.mins_s[1], "median_s": lat.medians_s[1], "max_s": lat.maxs_s[1], "runs_s": lat.runs_s[1]},
            "ratio": _num(lat.ratio(1)), "round_ratio_median": _num(lat.round_ratio_medians[1]),
        }
    outputs = []
    for d in rep.diffs:
        atol, rtol = effective_tolerances(d.dtype, rep.atol, rep.rtol)
        outputs.append({"name": d.name, "shape": list(d.shape) if d.shape else None, "dtype": np_dtype(d.dtype),
                        "max_abs": _num(d.max_abs), "max_rel": _num(d.max_rel), "mismatches": d.mismatches,
                        "total": d.total, "atol": atol, "rtol": rtol, "ok": d.ok, "note": d.note or None})
    return {
        "ok": rep.ok, "atol_given": rep.atol, "rtol_given": rep.rtol,
        "memory": {"original": meas(rep.original), "chunked": meas(rep.chunked), "ratio": _num(rep.mem_ratio),
                   "budget_bytes": rep.budget, "over_budget": rep.over_budget},
        "latency": latency, "latency_ratio": _num(rep.latency_ratio), "mem_ratio": _num(rep.mem_ratio),
        "outputs": outputs,
    }


def effective_tolerances(dtype: str, atol: float | None, rtol: float | None) -> tuple[float, float]:
    """The (atol, rtol) compare.py applied to an output of this dtype: given ones for floats, else
    the dtype's defaults (integers and bool are always exact)."""
    import numpy as np

    try:
        dt = np.dtype(dtype)
    except TypeError:  # bfloat16 without ml_dtypes registered
        dt = None
    floating = dt is None or dt.kind in "fc"
    d_atol, d_rtol = (1e-2, 1e-2) if dt is None else default_tolerances(dt)
    return (atol if floating and atol is not None else d_atol), (rtol if floating and rtol is not None else d_rtol)


def gates_json(gates) -> list[dict]:
    return [{"name": g.name, "flag": g.flag, "limit": g.limit, "measured": g.measured, "ok": g.ok} for g in gates]


def notes_json(notes) -> list[dict]:
    return [{"kind": getattr(n, "kind", "info"), "text": str(n)} for n in notes]


def envelope(command: str, exit_code: int, *, status: str | None = None, error: str | None = None, **fields) -> dict:
    """The one JSON document (schema_version 1): every key always present, null when not applicable."""
    import onnxruntime

    from . import __version__

    doc = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "autochunk-onnx", "version": __version__},
        "onnx_version": onnx.__version__, "onnxruntime_version": onnxruntime.__version__,
        "command": command, "status": status or STATUS_BY_EXIT.get(exit_code, "error"), "exit_code": exit_code,
        "error": error,
        "model": None, "original": None, "chunked": None, "output": None, "written": [],
        "input_shapes": None, "budget": None, "gates": [],
        "plan": None, "estimate": None, "inspect": None, "verify": None,
        "timings_s": {}, "notes": [],
    }
    for k, v in fields.items():
        if k not in doc:
            raise KeyError(f"not a schema field: {k}")
        doc[k] = v
    return doc
