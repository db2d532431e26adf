"""`make bench`: original vs chunked, measured in one run, as ratios.

For each model x sequence length x budget: optimize (plan + rewrite), then run original and
chunked alternately in fresh child processes (ORT CPU here, CUDA where really active) and record
measured peak activation memory, median latency, estimate error and search time. Also: the time
the search takes against node count (synthetic transformers), and the longest sequence that fits
a fixed activation budget, original vs chunked. Writes bench/results.json and bench/RESULTS.md.
Bench-size exports under models/out/ are used when `make models` has made them; otherwise the
committed tiny exports and the synthetic builders stand in (the report says which).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnx

from autochunk_onnx import api
from autochunk_onnx.errors import BudgetUnreachableError
from autochunk_onnx.estimate import estimate_graph
from autochunk_onnx.inputs import make_inputs
from autochunk_onnx.measure import measure
from autochunk_onnx.planner import plan
from models import synthetic

ROOT = Path(__file__).resolve().parent.parent


def _shapes(kind: str, n: int) -> dict:
    return {
        "tokens": {"input_ids": [1, n], "attention_mask": [1, n]},
        "tokens_only": {"input_ids": [1, n]},
        "image": {"pixel_values": [1, 3, n, n]},
        "latent": {"sample": [1, 4, n, n], "timestep": [1], "encoder_hidden_states": [1, 8, 32]},
        "synth_latent": {"sample": [1, 32, n, n]},
        "pair": {"msa": [1, 4, n, 16], "pair": [1, n, n, 8], "msa_mask": [1, 4, n], "pair_mask": [1, n, n]},
    }[kind]


def models(quick: bool, tmp: Path):
    """(name, family, path, shape kind, lengths)."""
    out = []
    syn = tmp / "synthetic_gpt.onnx"
    onnx.save(synthetic.transformer(layers=2, d_model=128, heads=4, vocab=1024), str(syn))
    t = ROOT / "models" / "tiny"
    out.append(("gpt2_tiny", "gpt", str(t / "gpt2_tiny.onnx"), "tokens", [1024] if quick else [1024, 2048]))
    out.append(("synthetic_gpt", "gpt", str(syn), "tokens_only", [2048] if quick else [2048, 4096]))
    out.append(("bert_tiny", "bert", str(t / "bert_tiny.onnx"), "tokens", [1024] if quick else [1024, 2048]))
    out.append(("vit_tiny", "vit", str(t / "vit_tiny.onnx"), "image", [512] if quick else [512, 768]))
    out.append(("unet_tiny", "unet", str(t / "unet_tiny.onnx"), "latent", [48] if quick else [48, 64]))
    out.append(("evoformer_tiny", "evoformer", str(t / "evoformer_tiny.onnx"), "pair", [128] if quick else [128, 192]))
    return out


def run_case(name, family, path, kind, n, budget, tmp: Path, repeats: int) -> dict | None:
    shapes = _shapes(kind, n)
    out = tmp / f"{name}_{n}_{budget.strip('%')}.onnx"
    rec = {"model": name, "family": family, "seq_len": n, "budget": budget}
    try:
        res = api.optimize(path, out, budget, shapes, verify_output=False)
    except BudgetUnreachableError as e:
        rec.update(status="unreachable", note=str(e))
        return rec
    m = api.load(path, shapes)
    feeds = make_inputs(m.original, m.shapes)
    a_mem, b_mem, a_lat, b_lat = [], [], [], []
    for _ in range(repeats):  # interleaved: the machine is shared and drifts
        a = measure(path, feeds, repeats=3)
        b = measure(str(out), feeds, repeats=3)
        a_mem.append(a.peak_bytes), b_mem.append(b.peak_bytes), a_lat.append(a.latency_s), b_lat.append(b.latency_s)
    rep = api.verify(path, out, feeds=feeds, repeats=1)
    orig_peak, ch_peak = int(statistics.median(a_mem)), int(statistics.median(b_mem))
    rec.update(
        status="ok" if rep.ok else "mismatch",
        orig_peak_bytes=orig_peak, chunked_peak_bytes=ch_peak, mem_ratio=ch_peak / orig_peak,
        latency_ratio=statistics.median(b_lat) / statistics.median(a_lat),
        orig_latency_s=statistics.median(a_lat), chunked_latency_s=statistics.median(b_lat),
        est_orig_peak_bytes=res.plan.original.peak_bytes, est_chunked_peak_bytes=res.plan.final.peak_bytes,
        est_error=res.plan.original.peak_bytes / orig_peak - 1.0,
        est_error_chunked=res.plan.final.peak_bytes / ch_peak - 1.0,
        search_s=res.timings["search_s"], regions=len(res.plan.regions), fits=res.plan.fits,
        max_abs_err=max(d.max_abs for d in rep.diffs), providers=b.providers,
    )
    return rec


def search_scaling(tmp: Path, quick: bool) -> list[dict]:
    rows = []
    for layers in ([4, 12] if quick else [4, 12, 24, 48]):
        p = tmp / f"stack{layers}.onnx"
        onnx.save(synthetic.stacked_transformer(layers=layers, d_model=64, heads=4), str(p))
        m = api.load(p, {"input_ids": [1, 2048]})
        est = estimate_graph(m.graph)
        t = time.perf_counter()
        pl = plan(m.graph, est.peak_bytes // 5, est)
        rows.append({"layers": layers, "nodes": len(m.graph.nodes), "search_s": time.perf_counter() - t,
                     "regions": len(pl.regions), "fits": pl.fits})
        print(f"search: {layers} layers, {len(m.graph.nodes)} nodes: {rows[-1]['search_s']:.2f} s, {len(pl.regions)} regions", file=sys.stderr)
    return rows


def write_md(records, scaling, path: Path, quick: bool) -> None:
    lines = ["# Benchmark results", "",
             f"Measured on this machine in one run (`python -m bench.run{' --quick' if quick else ''}`): ORT CPU, "
             "peak activation memory by the RSS high-water method (design notes section 3), median latency of interleaved "
             "runs with default session options. Ratios are chunked / original in the same run.", "",
             "| model | family | seq | budget | orig peak MiB | chunked MiB | mem ratio | latency ratio | est. error | regions | search s | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r["status"] == "unreachable":
            lines.append(f"| {r['model']} | {r['family']} | {r['seq_len']} | {r['budget']} | | | | | | | | unreachable |")
            continue
        lines.append(f"| {r['model']} | {r['family']} | {r['seq_len']} | {r['budget']} | {r['orig_peak_bytes'] / 2**20:.1f} | "
                     f"{r['chunked_peak_bytes'] / 2**20:.1f} | {r['mem_ratio']:.3f} | {r['latency_ratio']:.3f} | "
                     f"{r['est_error']:+.1%} | {r['regions']} | {r['search_s']:.2f} | {r['status']} |")
    lines += ["", "Search time against graph size (synthetic transformer, L=2048, budget 20%):", "",
              "| layers | nodes | search s | regions | fits |", "|---|---|---|---|---|"]
    lines += [f"| {s['layers']} | {s['nodes']} | {s['search_s']:.2f} | {s['regions']} | {s['fits']} |" for s in scaling]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="one length, two budgets, one repeat: a smoke pass")
    ap.add_argument("--out", default=str(ROOT / "bench"))
    args = ap.parse_args(argv)
    budgets = ["50%", "20%"] if args.quick else ["50%", "20%", "10%"]
    repeats = 1 if args.quick else 3
    records = []
    with tempfile.TemporaryDirectory(prefix="autochunk-bench-") as tmp:
        tmp = Path(tmp)
        for name, family, path, kind, lengths in models(args.quick, tmp):
            for n in lengths:
                for b in budgets:
                    r = run_case(name, family, path, kind, n, b, tmp, repeats)
                    records.append(r)
                    print(json.dumps({k: r.get(k) for k in ("model", "seq_len", "budget", "status", "mem_ratio", "latency_ratio", "est_error")}), file=sys.stderr)
        scaling = search_scaling(tmp, args.quick)
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps({"records": records, "search_scaling": scaling}, indent=1) + "\n")
    write_md(records, scaling, out / "RESULTS.md", args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
