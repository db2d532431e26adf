"""Search time against model depth (issue 14): a table of nodes vs seconds with a fitted exponent.

Builds GPT-style decoders (`models.synthetic.transformer`, D=256 by default) of several depths,
then times, each in its own child process as users run it (the console script):

* `optimize --dry-run` end to end (load, shapes, estimate, plan, print) and its peak RSS;
* `optimize --no-verify` end to end (the same plus the rewrite and the write);
* the search alone, as the dry run's JSON report gives it (`timings_s.search_s`).

Each figure is the min / median / max of `--runs` runs, in wall seconds and in the child's CPU
seconds (user + system: on a shared machine the wall clock also counts waiting for a core). The exponent k of `seconds ~ nodes^k` is
fitted by least squares on the logs of the medians (linear search: k ~ 1). With `--big`, also a
deep decoder skeleton with GiB of external weights (`models.synthetic.big_transformer`), timed
by `optimize --no-verify` with its peak RSS (issue 14 targets: < 60 s, < 1 GiB).

    python -m bench.search_scaling [--layers 8,16,32,64] [--runs 3] [--big 100] [--json FILE]

Peak RSS is the child's own high-water mark (`os.wait4`, see bench/large.py).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.large import CLI, run_child


def run_timed(argv: list[str]) -> tuple[int, float, float, float, str, str]:
    """Run argv; (exit code, wall s, CPU s (user + system) and peak RSS MiB of that child, stdout,
    stderr). CPU seconds say what the work costs when the machine is shared (wall then waits)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        return (os.waitstatus_to_exitcode(status), wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
                out.read().decode(), err.read().decode())

ROOT = Path(__file__).resolve().parent.parent

# issue 14 targets
DRY_64_S = 6.0  # --dry-run on the 64-layer decoder, end to end
RATIO_64_8 = 10.0  # 64 layers cost at most this many times 8 layers
BIG_S, BIG_MIB = 60.0, 1024.0  # the big skeleton: optimize --no-verify


def _built_nodes(code: str, what: str) -> int:
    """Run `code` (which writes a model and prints its node count) in a child, so the parent that
    is measured stays small; the node count it printed."""
    rc, _, _, out, err = run_child([sys.executable, "-c", code])
    if rc:
        raise SystemExit(f"building {what} failed: {err.strip()[-500:]}")
    return int(out.strip())


def build(path: Path, layers: int, d_model: int, heads: int) -> int:
    """Write the decoder; return its node count."""
    return _built_nodes("import onnx, sys; from models.synthetic import transformer; "
                        f"m = transformer(layers={layers}, d_model={d_model}, heads={heads}); "
                        f"onnx.save(m, {str(path)!r}); print(len(m.graph.node))",
                        f"the {layers}-layer decoder")


def build_big(path: Path, layers: int, d_model: int, heads: int) -> tuple[int, float]:
    """Write the decoder skeleton with external weights; return its node count and GiB of weights."""
    nodes = _built_nodes("import onnx; from models.synthetic import big_transformer; "
                         f"big_transformer({str(path)!r}, layers={layers}, d_model={d_model}, heads={heads}); "
                         f"print(len(onnx.load({str(path)!r}, load_external_data=False).graph.node))",
                         "the big decoder")
    return nodes, path.with_name(path.name + ".data").stat().st_size / 2**30


def timed(argv: list[str], runs: int) -> list[dict]:
    """Run argv `runs` times: wall seconds, peak RSS MiB and the JSON report of each run."""
    res = []
    for _ in range(runs):
        rc, wall, cpu, rss, out, err = run_timed(argv)
        try:
            doc = json.loads(out)
        except ValueError:
            doc = {}
        if rc:
            raise SystemExit(f"{' '.join(argv)} failed (exit {rc}): {err.strip()[-1000:]}")
        res.append({"wall_s": wall, "cpu_s": cpu, "rss_mib": rss, "doc": doc})
    return res


def spread(xs: list[float]) -> dict:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs), "all": xs}


def fit_exponent(nodes: list[int], secs: list[float]) -> float | None:
    """k in seconds ~ c * nodes^k, least squares on the logs."""
    pts = [(math.log(n), math.log(s)) for n, s in zip(nodes, secs) if n > 0 and s > 0]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / den if den else None


def _f(s: dict) -> str:
    return f"{s['median']:6.2f} [{s['min']:.2f}-{s['max']:.2f}]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.search_scaling", description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="8,16,32,64", help="decoder depths (default 8,16,32,64)")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--budget", default="20%")
    ap.add_argument("--runs", type=int, default=3, help="runs of each timing (default 3)")
    ap.add_argument("--no-write", action="store_true", help="skip the optimize --no-verify timings")
    ap.add_argument("--big", type=int, default=0, metavar="LAYERS",
                    help="also a LAYERS-deep decoder skeleton with external weights (e.g. 100)")
    ap.add_argument("--big-d-model", type=int, default=1024)
    ap.add_argument("--big-heads", type=int, default=8)
    ap.add_argument("--big-runs", type=int, default=1)
    ap.add_argument("--keep", default=None, help="build the models into this folder and keep (and reuse) them")
    ap.add_argument("--json", dest="json_out", default=None, help="write the figures to this JSON file")
    args = ap.parse_args(argv)

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="autochunk-scaling-"))
    tmp.mkdir(parents=True, exist_ok=True)
    shape = f"input_ids:1x{args.seq}"
    rows = []
    big = None
    try:
        for layers in [int(x) for x in args.layers.split(",") if x]:
            src = tmp / f"decoder{layers}_d{args.d_model}.onnx"
            count = tmp / (src.name + ".nodes")
            if src.exists() and count.exists():
                nodes = int(count.read_text())
            else:
                nodes = build(src, layers, args.d_model, args.heads)
                count.write_text(str(nodes))
            dry = timed(CLI + ["optimize", str(src), str(tmp / "out.onnx"), "-s", shape, "--budget", args.budget,
                               "--dry-run", "--json"], args.runs)
            plan = dry[0]["doc"].get("plan") or {}
            row = {"layers": layers, "nodes": nodes,
                   "dry_run_s": spread([r["wall_s"] for r in dry]),
                   "dry_run_cpu_s": spread([r["cpu_s"] for r in dry]),
                   "search_s": spread([r["doc"]["timings_s"]["search_s"] for r in dry]),
                   "dry_run_rss_mib": spread([r["rss_mib"] for r in dry]),
                   "regions": len(plan.get("regions", [])), "stages": plan.get("stages"),
                   "predicted_peak_bytes": plan.get("predicted_peak_bytes"), "fits": plan.get("fits")}
            if not args.no_write:
                out = tmp / "out" / f"decoder{layers}.chunked.onnx"
                out.parent.mkdir(exist_ok=True)
                wr = timed(CLI + ["optimize", str(src), str(out), "-s", shape, "--budget", args.budget,
                                  "--no-verify", "--json"], args.runs)
                row["no_verify_s"] = spread([r["wall_s"] for r in wr])
                row["no_verify_cpu_s"] = spread([r["cpu_s"] for r in wr])
                row["no_verify_rss_mib"] = spread([r["rss_mib"] for r in wr])
            rows.append(row)
            print(f"{layers} layers, {nodes} nodes: dry run {_f(row['dry_run_s'])} s, search {_f(row['search_s'])} s",
                  file=sys.stderr, flush=True)
        if args.big:
            src = tmp / f"big{args.big}_d{args.big_d_model}.onnx"
            count = tmp / (src.name + ".nodes")
            if src.exists() and count.exists() and src.with_name(src.name + ".data").exists():
                nodes = int(count.read_text())
                gib = src.with_name(src.name + ".data").stat().st_size / 2**30
            else:
                nodes, gib = build_big(src, args.big, args.big_d_model, args.big_heads)
                count.write_text(str(nodes))
            out = tmp / "out" / "big.chunked.onnx"
            out.parent.mkdir(exist_ok=True)
            wr = timed(CLI + ["optimize", str(src), str(out), "-s", shape, "--budget", args.budget,
                              "--no-verify", "--json"], args.big_runs)
            plan = wr[0]["doc"].get("plan") or {}
            big = {"layers": args.big, "nodes": nodes, "weight_gib": gib,
                   "no_verify_s": spread([r["wall_s"] for r in wr]),
                   "no_verify_cpu_s": spread([r["cpu_s"] for r in wr]),
                   "rss_mib": spread([r["rss_mib"] for r in wr]),
                   "search_s": spread([r["doc"]["timings_s"]["search_s"] for r in wr]),
                   "timings_s": wr[0]["doc"].get("timings_s"),
                   "regions": len(plan.get("regions", [])), "fits": plan.get("fits")}
            for f in out.parent.glob("big.chunked.onnx*"):
                f.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"GPT-style decoder d_model {args.d_model}, {args.heads} heads, {shape}, budget {args.budget}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end; "
          f"median [min-max] of {args.runs} run(s)")
    head = (f"{'layers':>6} {'nodes':>6} {'regions':>7} {'dry run wall s':>21} {'dry run CPU s':>21} "
            f"{'search s':>21} {'RSS MiB':>8}")
    if not args.no_write:
        head += f" {'--no-verify wall s':>21} {'--no-verify CPU s':>21}"
    print(head)
    for r in rows:
        line = (f"{r['layers']:>6} {r['nodes']:>6} {r['regions']:>7} {_f(r['dry_run_s']):>21} "
                f"{_f(r['dry_run_cpu_s']):>21} {_f(r['search_s']):>21} {r['dry_run_rss_mib']['median']:>8.0f}")
        if "no_verify_s" in r:
            line += f" {_f(r['no_verify_s']):>21} {_f(r['no_verify_cpu_s']):>21}"
        print(line)
    nodes = [r["nodes"] for r in rows]
    fits = {}
    for key in ("dry_run_s", "dry_run_cpu_s", "search_s", "no_verify_s", "no_verify_cpu_s"):
        if all(key in r for r in rows):
            fits[key] = fit_exponent(nodes, [r[key]["median"] for r in rows])
    print("fitted exponent (seconds ~ nodes^k): " + ", ".join(
        f"{k[:-2]} k={v:.2f}" for k, v in fits.items() if v is not None))
    verdicts = []
    by = {r["layers"]: r for r in rows}
    if 64 in by:
        for key, what in (("dry_run_s", "wall"), ("dry_run_cpu_s", "CPU")):
            t = by[64][key]["median"]
            verdicts.append(f"64-layer --dry-run {what} {t:.2f} s <= {DRY_64_S:.0f} s: {'PASS' if t <= DRY_64_S else 'FAIL'}")
            if 8 in by:
                ratio = t / by[8][key]["median"]
                verdicts.append(f"64 / 8 layers (dry run {what}) {ratio:.1f}x <= {RATIO_64_8:.0f}x: "
                                f"{'PASS' if ratio <= RATIO_64_8 else 'FAIL'}")
    if big:
        t, m = big["no_verify_s"]["median"], big["rss_mib"]["max"]
        print(f"big: {big['layers']} layers, {big['nodes']} nodes, {big['weight_gib']:.2f} GiB external weights, "
              f"{big['regions']} regions: optimize --no-verify {_f(big['no_verify_s'])} s wall, "
              f"{_f(big['no_verify_cpu_s'])} s CPU, peak RSS {m:.0f} MiB, "
              f"search {_f(big['search_s'])} s; timings {big['timings_s']}")
        verdicts.append(f"big --no-verify {t:.1f} s < {BIG_S:.0f} s and {m:.0f} MiB < {BIG_MIB:.0f} MiB: "
                        f"{'PASS' if t < BIG_S and m < BIG_MIB else 'FAIL'}")
    for v in verdicts:
        print(v)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({
            "d_model": args.d_model, "heads": args.heads, "seq": args.seq, "budget": args.budget, "runs": args.runs,
            "rows": rows, "exponents": fits, "big": big, "verdicts": verdicts,
            "loadavg": os.getloadavg()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
