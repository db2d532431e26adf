"""Issue 15 bench: one model planned for a 16x length range at a fixed absolute budget.

    python -m bench.ranges --only qwen2 [--iterations 7] [--out /tmp/ranges.json]

For each target it plans the range (`api.optimize`, no verification), then:
* measures the written model's peak (RSS high-water, each run alone in a fresh child) at four
  lengths across the range, against the budget (target: <= budget + 5%);
* times the original and the range model at the bottom, interleaved in one child (target: ratio
  of medians <= 1.02), and compares their outputs there and at the next length;
* plans the same budget pinned at the top and times that model against the range model at the
  top (target: range / pinned <= 1.10);
* checks the written model with onnx.checker full_check, and that a second run writes the same bytes.
Per-round ratios give the spread. Latency on a shared machine is noisy: the record says the load.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from autochunk_onnx import api, ranges
from autochunk_onnx.compare import all_ok, compare_outputs
from autochunk_onnx.inputs import make_inputs
from autochunk_onnx.measure import interleaved, measure

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "models" / "out"


@dataclass
class Target:
    name: str
    path: Path
    shape: str  # the --input-shape with the range
    budget: str


def _evo(r: str) -> str:
    return f"msa:1x16x{r}x64 pair:1x{r}x{r}x32 msa_mask:1x16x{r} pair_mask:1x{r}x{r}"


TARGETS = {
    "gpt_small": Target("gpt_small", ROOT / "models" / "examples" / "gpt_small.onnx", "input_ids:1x512..8192", "200MiB"),
    "qwen2": Target("qwen2", OUT / "qwen2_bench.onnx", "input_ids:1x512..8192 attention_mask:1x512..8192", "320MiB"),
    "evoformer": Target("evoformer", OUT / "evoformer_bench.onnx", _evo("24..384"), "512MiB"),
}


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _spread(lat, a: int, b: int) -> dict:
    """Ratio of medians b/a, and min / median / max of the per-round ratios."""
    per = [rb / ra for ra, rb in zip(lat.runs_s[a], lat.runs_s[b])]
    return {"ratio_of_medians": float(np.median(lat.runs_s[b]) / np.median(lat.runs_s[a])),
            "round_ratio_min": min(per), "round_ratio_median": float(np.median(per)), "round_ratio_max": max(per),
            "median_s": [float(np.median(lat.runs_s[a])), float(np.median(lat.runs_s[b]))], "rounds": lat.rounds}


def run(t: Target, iterations: int, tmp: Path) -> dict:
    say = lambda m: print(f"[{t.name}] {m}", file=sys.stderr, flush=True)  # noqa: E731
    sr = ranges.split(t.shape.split())
    out, again = tmp / f"{t.name}.range.onnx", tmp / f"{t.name}.range2.onnx"
    t0 = time.perf_counter()
    res = api.optimize(str(t.path), str(out), t.budget, t.shape.split(), verify_output=False)
    plan_s = time.perf_counter() - t0
    budget = res.budget
    say(res.range.text())
    api.optimize(str(t.path), str(again), t.budget, t.shape.split(), verify_output=False)
    onnx.checker.check_model(str(out), full_check=True)
    rec = {"model": t.name, "range": [sr.lo, sr.hi], "budget_bytes": budget, "plan_s": plan_s,
           "deterministic": _sha(out) == _sha(again), "checker_full": True,
           "estimate": [p.to_dict() for p in res.range.points], "rules": [r.to_dict() for r in res.range.rules],
           "loadavg_start": os.getloadavg()}
    lengths = sr.lengths(4)
    peaks = []
    for L in lengths:
        m = api.load(str(t.path), sr.at(L))
        feeds = make_inputs(m.original, m.shapes, seed=0)
        meas = measure(str(out), feeds, repeats=0)
        est = {p.length: p for p in res.range.checked}.get(L)
        _, est_w = api.estimate(str(out), sr.at(L))
        peaks.append({"length": L, "measured_bytes": meas.peak_bytes, "estimated_bytes": est_w.peak_bytes,
                      "ratio_to_budget": meas.peak_bytes / budget, "ok": meas.peak_bytes <= 1.05 * budget,
                      "plan_point": est.to_dict() if est else None})
        say(f"L={L}: measured {meas.peak_bytes / 2**20:.1f} MiB, estimated {est_w.peak_bytes / 2**20:.1f} MiB, "
            f"budget {budget / 2**20:.1f} MiB ({meas.peak_bytes / budget:.3f})")
    rec["peaks"] = peaks
    # outputs at the bottom and the next length; latency at the bottom vs the original
    for L in lengths[:2]:
        m = api.load(str(t.path), sr.at(L))
        feeds = make_inputs(m.original, m.shapes, seed=0)
        with tempfile.TemporaryDirectory() as d:
            a = measure(str(t.path), feeds, repeats=0, keep_outputs=True, outputs_path=os.path.join(d, "a.npz"))
            b = measure(str(out), feeds, repeats=0, keep_outputs=True, outputs_path=os.path.join(d, "b.npz"))
            from autochunk_onnx.inputs import load_inputs
            diffs = compare_outputs(load_inputs(a.outputs_path), load_inputs(b.outputs_path))
        rec.setdefault("outputs_match", {})[L] = all_ok(diffs)
        say(f"L={L}: outputs {'match' if all_ok(diffs) else 'DIFFER'} (max abs {max(d.max_abs for d in diffs):.3g})")
    m = api.load(str(t.path), sr.at(sr.lo))
    feeds = make_inputs(m.original, m.shapes, seed=0)
    lat = interleaved([str(t.path), str(out)], feeds, iterations=iterations)
    rec["latency_bottom"] = _spread(lat, 0, 1)
    say(f"bottom L={sr.lo}: range/original {rec['latency_bottom']}")
    pinned = tmp / f"{t.name}.pinned.onnx"
    top_shapes = sr.top
    resp = api.optimize(str(t.path), str(pinned), t.budget, top_shapes, verify_output=False)
    rec["pinned_top"] = {"chunks": [lp.chunk for lp in resp.plan.loops], "predicted_peak_bytes": resp.plan.final.peak_bytes,
                         "range_chunks": list(res.range.points[-1].chunks)}
    m = api.load(str(t.path), top_shapes)
    feeds = make_inputs(m.original, m.shapes, seed=0)
    lat = interleaved([str(pinned), str(out)], feeds, iterations=max(3, iterations // 2))
    rec["latency_top"] = _spread(lat, 0, 1)
    say(f"top L={sr.hi}: range/pinned {rec['latency_top']}")
    rec["loadavg_end"] = os.getloadavg()
    rec["targets"] = {
        "peak_within_5pct": all(p["ok"] for p in peaks),
        "bottom_latency_le_1.02": rec["latency_bottom"]["ratio_of_medians"] <= 1.02,
        "top_latency_le_1.10": rec["latency_top"]["ratio_of_medians"] <= 1.10,
        "outputs_match": all(rec["outputs_match"].values()),
        "deterministic": rec["deterministic"],
    }
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ranges")
    ap.add_argument("--only", default="qwen2,evoformer", help="comma-separated: " + ", ".join(TARGETS))
    ap.add_argument("--iterations", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    recs = []
    with tempfile.TemporaryDirectory(prefix="bench-ranges-") as tmp:
        for name in args.only.split(","):
            t = TARGETS[name]
            if not t.path.exists():
                print(f"{t.path} missing: run `make models`", file=sys.stderr)
                return 2
            recs.append(run(t, args.iterations, Path(tmp)))
    text = json.dumps(recs, indent=1, default=lambda o: o if not isinstance(o, float) or math.isfinite(o) else None)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
