"""Human-readable tables and JSON documents for estimates, plans and verification."""
from __future__ import annotations

from .compare import format_diffs
from .peak import Estimate
from .plan import Plan


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


def estimate_json(est: Estimate) -> dict:
    d = est.to_dict()
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
        "predicted_slowdown": p.predicted_slowdown, "search_s": p.search_s, "regions": regions,
    }


def plan_text(p: Plan) -> str:
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
    return "\n".join(lines)


def verify_text(rep) -> str:
    a, b = rep.original, rep.chunked
    lines = [
        format_diffs(rep.diffs),
        f"{'':12} {'peak memory':>14} {'latency':>12}   providers: {', '.join(b.providers)} ({b.method})",
        f"{'original':12} {fmt_bytes(a.peak_bytes):>14} {a.latency_s * 1e3:>9.1f} ms",
        f"{'chunked':12} {fmt_bytes(b.peak_bytes):>14} {b.latency_s * 1e3:>9.1f} ms",
        f"{'ratio':12} {rep.mem_ratio:>14.3f} {rep.latency_ratio:>12.3f}",
    ]
    return "\n".join(lines)


def verify_json(rep) -> dict:
    def meas(m):
        return {"peak_bytes": m.peak_bytes, "latency_s": m.latency_s, "latencies_s": m.latencies_s,
                "providers": m.providers, "method": m.method}
    return {
        "ok": rep.ok, "atol": rep.atol, "rtol": rep.rtol, "mem_ratio": rep.mem_ratio, "latency_ratio": rep.latency_ratio,
        "original": meas(rep.original), "chunked": meas(rep.chunked),
        "outputs": [{"name": d.name, "shape": list(d.shape) if d.shape else None, "max_abs": d.max_abs, "max_rel": d.max_rel,
                     "mismatches": d.mismatches, "total": d.total, "ok": d.ok, "note": d.note} for d in rep.diffs],
    }
