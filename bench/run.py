"""`make bench`: original vs chunked, verified and measured in one run; writes results.json + RESULTS.md.

Sections (all measured in this run, on the providers ORT really used):

* main: for each family x length x budget (50%, 20%, 10% of the original's estimated peak, and
  the smallest budget the planner reaches, found by bisection on dry-run plans): `api.optimize`
  writes the chunked model, which is then verified the way `api.verify` does it (each model run
  in a fresh child process by autochunk_onnx.measure, peak activation memory by its RSS
  high-water method, outputs compared by autochunk_onnx.compare with the default tolerances), the
  original being run once per length and shared by its budgets (`api.optimize(verify=True)` runs
  it again for every budget, which doubles the bench's time). Latency: the original and every
  chunked model of one length in one child process, runs interleaved (bench/interleave.py);
  ratio of medians.
* maxlen: at a fixed activation budget (512 MiB by default) the longest length the original fits
  (measured) and the longest the chunked model fits (optimize at that budget at growing lengths
  until the budget is unreachable, the measured peak exceeds it, a run takes longer than the
  time cap, or the grid / the model's position table ends).
* peers: ONNX Runtime's transformers optimizer on BERT and the UNet, and ONNX's `Attention` op
  (opset-23 BERT export), each alone and with autochunk on top (bench/peers.py).
* search: search time against graph size (synthetic stacked transformers).

    python -m bench.run                 # full run (bench-size models from `make models`)
    python -m bench.run --quick         # smoke pass on the committed tiny models (a few minutes)
    python -m bench.run --only bert --lengths 2048 --budgets 20% --sections main --out /tmp/b

A run restricted by --only/--lengths/--budgets/--sections is marked PARTIAL in RESULTS.md, a
--quick run QUICK. `python -m bench.report DIR` rebuilds RESULTS.md and the plot from results.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` as well as `python -m bench.run`
    sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402

from autochunk_onnx import api  # noqa: E402
from autochunk_onnx.budget import parse_budget  # noqa: E402
from autochunk_onnx.errors import AutochunkError, BudgetUnreachableError, VerificationError  # noqa: E402
from autochunk_onnx.peak import estimate_graph  # noqa: E402
from autochunk_onnx.compare import compare_outputs  # noqa: E402
from autochunk_onnx.inputs import load_inputs, make_inputs  # noqa: E402
from autochunk_onnx.measure import default_providers, measure  # noqa: E402
from autochunk_onnx.planner import plan  # noqa: E402
from bench import families as fams  # noqa: E402
from bench import report  # noqa: E402
from bench.interleave import interleaved, rounds_for  # noqa: E402
from bench.peers import ort_transformers_optimize  # noqa: E402

MIB = 2**20


@dataclass
class Config:
    quick: bool
    budgets: list[str]  # "50%", ... and "min"
    peer_budgets: list[str]
    maxlen_budget: int  # bytes
    time_cap_s: float  # a max-length probe whose run takes longer stops the growth
    lat_target_s: float  # time spent on interleaved rounds per case
    min_rounds: int
    max_rounds: int
    bisect_steps: int
    maxlen_retry: bool  # one more try at estimate*budget/measured when the measured peak is over


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _mib(b) -> str:
    return "-" if b is None else f"{b / MIB:.1f} MiB"


# ---------------------------------------------------------------------------------------------
# smallest reachable budget


def smallest_budget(src: Path, shapes: dict, steps: int) -> dict:
    """The smallest budget (bytes) at which `api.optimize` finds a plan, by dry runs of the API itself
    (it may plan another graph than the one loaded: it raises the opset when it emits Loops).

    First the floor: the best plan at a budget of 1 byte (best effort); if a plan at exactly that
    budget fits, that is it; else bisection between the floor and the original's estimated peak."""
    t = time.perf_counter()

    def dry(budget: int, best_effort: bool = False):
        return api.optimize(src, None, int(budget), shapes, dry_run=True, best_effort=best_effort).plan

    first = dry(1, best_effort=True)
    est_peak = first.original.peak_bytes
    floor = first.final.peak_bytes
    plans = 1

    def fits(budget: int) -> bool:
        nonlocal plans
        plans += 1
        try:
            return dry(budget).fits
        except BudgetUnreachableError:
            return False

    if fits(floor):
        best = floor
    else:
        lo, hi = floor, est_peak
        for _ in range(steps):
            mid = (lo + hi) // 2
            if fits(mid):
                hi = mid
            else:
                lo = mid
        best = hi
    return {"bytes": int(best), "fraction": best / est_peak, "floor_bytes": int(floor), "plans": plans,
            "search_s": time.perf_counter() - t}


# ---------------------------------------------------------------------------------------------
# verified, measured cases


@dataclass
class Reference:
    """The original at one length, measured once: its peak, outputs and latency."""

    path: Path
    peak_bytes: int
    latency_s: float
    outputs: dict
    providers: list[str]
    method: str
    est_peak_bytes: int


def measure_reference(path: Path, feeds, est_peak: int) -> Reference:
    meas = measure(str(path), feeds, repeats=1, keep_outputs=True)
    try:
        outputs = load_inputs(meas.outputs_path)
    finally:
        os.unlink(meas.outputs_path)
    return Reference(path, meas.peak_bytes, meas.latency_s, outputs, meas.providers, meas.method, est_peak)


def check_model(path: Path, feeds, ref: Reference) -> tuple[dict, float]:
    """Run `path` in a fresh child (peak measured), compare its outputs with the reference's."""
    meas = measure(str(path), feeds, repeats=1, keep_outputs=True)
    try:
        got = load_inputs(meas.outputs_path)
    finally:
        os.unlink(meas.outputs_path)
    diffs = compare_outputs(ref.outputs, got)
    bad = next((d for d in diffs if not d.ok), None)
    fields = {
        "status": "ok" if bad is None else "mismatch",
        "orig_peak_bytes": ref.peak_bytes, "chunked_peak_bytes": meas.peak_bytes,
        "mem_ratio": meas.peak_bytes / ref.peak_bytes if ref.peak_bytes > 0 else None,
        "outputs_equal": bad is None, "max_abs_err": max((d.max_abs for d in diffs), default=0.0),
        "providers": meas.providers, "memory_method": meas.method,
    }
    if bad is not None:
        fields["reason"] = (f"output {bad.name!r} differs: max abs {bad.max_abs:.3g}, {bad.mismatches}/{bad.total} "
                            f"out of tolerance{'; ' + bad.note if bad.note else ''}")
    return fields, meas.latency_s


def chunk_case(fam: fams.Family, src: Path, n: int, budget: str, budget_value, tmp: Path, feeds, ref: Reference, *,
               section: str = "main", variant: str = "autochunk", extra: dict | None = None,
               pct_base: int | None = None) -> tuple[dict, Path | None, float]:
    """optimize(src, budget) -> chunked model, run and compared with the reference (the original).

    Returns (record, chunked path or None, its one-run latency for sizing the latency rounds).
    pct_base: the estimated peak that budget_pct is a percentage of (default: src's own estimate).
    """
    rec = {"section": section, "model": fam.model if section == "main" else src.stem, "family": fam.family,
           "variant": variant, "seq_len": n, "length_name": fam.length_name, "tokens": fam.tokens(n),
           "budget": budget, **(extra or {})}
    out = tmp / f"{src.stem}_{n}_{budget.strip('%')}.chunked.onnx"
    t0 = time.perf_counter()
    try:
        res = api.optimize(src, out, budget_value, fam.shapes(n), verify_output=False)
    except BudgetUnreachableError as e:
        p = e.best_plan
        rec.update(status="unreachable", reason=str(e), wall_s=time.perf_counter() - t0)
        if p is not None:
            base = pct_base or p.original.peak_bytes
            rec.update(budget_bytes=p.budget, budget_pct=100 * p.budget / base, best_pct=100 * p.final.peak_bytes / base,
                       est_orig_peak_bytes=p.original.peak_bytes, search_s=p.search_s)
        return rec, None, 0.0
    except AutochunkError as e:
        rec.update(status="error", reason=str(e), wall_s=time.perf_counter() - t0)
        return rec, None, 0.0
    pl = res.plan
    rec.update(budget_bytes=res.budget, budget_pct=100 * res.budget / (pct_base or pl.original.peak_bytes),
               est_orig_peak_bytes=pl.original.peak_bytes, est_chunked_peak_bytes=pl.final.peak_bytes,
               search_s=res.timings.get("search_s"), timings=res.timings, regions=len(pl.regions), stages=pl.stages,
               predicted_slowdown=pl.predicted_slowdown, notes=list(res.notes))
    try:
        fields, lat = check_model(out, feeds, ref)
    except AutochunkError as e:
        rec.update(status="error", reason=f"running the chunked model: {e}", wall_s=time.perf_counter() - t0)
        return rec, None, 0.0
    rec.update(fields)
    ch = rec["chunked_peak_bytes"]
    rec["est_error"] = (pl.final.peak_bytes - ch) / ch if ch > 0 else None
    if section == "main":
        rec["est_error_orig"] = (ref.est_peak_bytes - ref.peak_bytes) / ref.peak_bytes if ref.peak_bytes > 0 else None
    else:  # the peer's own estimate against its own measured peak is in the peer-alone row
        rec["base_est_peak_bytes"] = pl.original.peak_bytes
    rec["wall_s"] = time.perf_counter() - t0
    return rec, (out if rec["status"] == "ok" else None), lat


def add_latency(ref: Reference, cases: list[tuple[dict, Path | None, float]], feeds, cfg: Config) -> float:
    """One child process, the original and every good model of this length, runs interleaved."""
    good = [(r, p, lat) for r, p, lat in cases if p is not None]
    if not good:
        return 0.0
    t0 = time.perf_counter()
    per_round = ref.latency_s + sum(lat for _, _, lat in good)
    rounds = rounds_for(per_round, cfg.lat_target_s, cfg.min_rounds, cfg.max_rounds)
    try:
        res = interleaved([str(ref.path)] + [str(p) for _, p, _ in good], feeds, rounds=rounds)
    except RuntimeError as e:
        for r, _, _ in good:
            r.update(latency_ratio=None, latency_error=str(e))
        log(f"  latency failed: {e}")
        return time.perf_counter() - t0
    for i, (r, _, _) in enumerate(good, start=1):
        r.update(latency_ratio=res["ratios"][i], latency_round_ratio_median=res["round_ratio_medians"][i],
                 orig_latency_s=res["medians_s"][0], chunked_latency_s=res["medians_s"][i],
                 latency_rounds=res["rounds"], latency_models=len(good) + 1, latency_providers=res["providers"][i])
    return time.perf_counter() - t0


def _cleanup(tmp: Path, cases) -> None:
    for _, p, _ in cases:
        if p is not None:
            for f in tmp.glob(p.name + "*"):
                f.unlink()


def _say(rec: dict) -> None:
    if rec["status"] not in ("ok", "mismatch"):
        log(f"  {rec['family']} {rec['seq_len']} {rec['variant']} {rec['budget']}: {rec['status']}: {rec.get('reason', '')}")
        return

    def f(key, spec):
        v = rec.get(key)
        return "-" if v is None else format(v, spec)

    log(f"  {rec['family']} {rec['seq_len']} {rec['variant']} {rec['budget']} ({f('budget_pct', '.1f')}%): "
        f"{_mib(rec['orig_peak_bytes'])} -> {_mib(rec['chunked_peak_bytes'])} mem {f('mem_ratio', '.3f')} "
        f"lat {f('latency_ratio', '.3f')} est.err {f('est_error', '+.1%')} search {f('search_s', '.2f')}s"
        + ("" if rec["status"] == "ok" else f" MISMATCH: {rec.get('reason')}"))


def main_section(fam: fams.Family, lengths, cfg: Config, tmp: Path) -> list[dict]:
    records = []
    for n in lengths:
        try:
            records += _main_length(fam, n, cfg, tmp)
        except Exception as e:  # noqa: BLE001 - one length failing (the original out of memory...) is a result
            log(f"{fam.model} {n}: failed: {type(e).__name__}: {e}")
            records.append({"section": "main", "model": fam.model, "family": fam.family, "variant": "autochunk",
                            "seq_len": n, "length_name": fam.length_name, "tokens": fam.tokens(n), "budget": "all",
                            "status": "error", "reason": f"{type(e).__name__}: {e}"})
    return records


def _main_length(fam: fams.Family, n: int, cfg: Config, tmp: Path) -> list[dict]:
    records = []
    t = time.perf_counter()
    m = api.load(fam.path, fam.shapes(n))
    est = estimate_graph(m.graph)
    feeds = make_inputs(m.original, m.shapes)
    mini = smallest_budget(fam.path, fam.shapes(n), cfg.bisect_steps) if "min" in cfg.budgets else None
    ref = measure_reference(fam.path, feeds, est.peak_bytes)
    log(f"{fam.model} {fam.length_name} {n}: original measured {_mib(ref.peak_bytes)} (estimated {_mib(est.peak_bytes)})"
        + (f", smallest reachable budget {100 * mini['fraction']:.1f}% ({_mib(mini['bytes'])}, {mini['plans']} plans, "
           f"{mini['search_s']:.1f} s)" if mini else ""))
    cases = []
    for b in cfg.budgets:
        value, extra = _min_value(mini) if b == "min" else (b, {})
        cases.append(chunk_case(fam, fam.path, n, b, value, tmp, feeds, ref, extra=extra))
    lat_s = add_latency(ref, cases, feeds, cfg)
    for r, _, _ in cases:
        r["latency_s_shared"] = lat_s
        _say(r)
        records.append(r)
    _cleanup(tmp, cases)
    log(f"{fam.model} {n}: {time.perf_counter() - t:.0f} s (latency rounds {lat_s:.0f} s)")
    return records


def _min_value(mini: dict | None):
    if mini is None:
        return None, {}
    return mini["bytes"], {"min_search": mini}


# ---------------------------------------------------------------------------------------------
# longest length at a fixed budget


def maxlen_section(fam: fams.Family, cfg: Config, tmp: Path) -> dict:
    B = cfg.maxlen_budget
    res = {"family": fam.family, "model": fam.model, "length_name": fam.length_name, "budget_bytes": B,
           "grid": fam.grid, "probes": []}
    t0 = time.perf_counter()
    orig_max, orig_stop = None, "grid end"
    idx = 0
    for idx, n in enumerate(fam.grid):
        m = api.load(fam.path, fam.shapes(n))
        feeds = make_inputs(m.original, m.shapes)
        est = estimate_graph(m.graph).peak_bytes
        try:
            meas = measure(str(fam.path), feeds, repeats=1)
        except AutochunkError as e:
            res["probes"].append({"variant": "original", "seq_len": n, "error": str(e), "est_peak_bytes": est})
            orig_stop = f"failed at {n}: {e}"
            break
        fits = 0 <= meas.peak_bytes <= B
        res["probes"].append({"variant": "original", "seq_len": n, "peak_bytes": meas.peak_bytes, "fits": fits,
                              "latency_s": meas.latency_s, "est_peak_bytes": est, "providers": meas.providers})
        log(f"  maxlen {fam.model} original {n}: {_mib(meas.peak_bytes)} {'fits' if fits else '> budget'}")
        if not fits:
            orig_stop = f"measured {_mib(meas.peak_bytes)} > budget at {n}"
            break
        orig_max = n
    else:
        idx = len(fam.grid)
    res.update(orig_max=orig_max, orig_stop=orig_stop)
    end_stop = "grid end" if fam.max_length is None or fam.grid[-1] < fam.max_length else \
        f"the model's limit ({fam.max_length})"
    strict_max = corr_max = None
    strict_misses: list[tuple[int, str]] = []
    stop = end_stop
    start = idx if orig_max is not None else 0
    for n in fam.grid[start:]:
        m = api.load(fam.path, fam.shapes(n))
        feeds = make_inputs(m.original, m.shapes)
        probe = _chunked_probe(fam, n, B, B, feeds, tmp, "strict")
        res["probes"].append(probe)
        fit_strict = probe.get("fits", False)
        fit, last = fit_strict, probe
        if not fit_strict and probe.get("status") == "ok" and cfg.maxlen_retry and probe["peak_bytes"] > 0:
            # the estimate was low: ask once more for an estimate scaled by budget / measured
            b2 = int(probe["est_peak_bytes"] * B / probe["peak_bytes"] * 0.97)
            last = _chunked_probe(fam, n, b2, B, feeds, tmp, "retry")
            res["probes"].append(last)
            fit = last.get("fits", False)
        if fit_strict:
            strict_max = n
        else:
            strict_misses.append((n, _why(probe, n)))
        if not fit:  # growth goes on while one of the two fits
            stop = _why(last, n)
            break
        corr_max = n
        if last["latency_s"] > cfg.time_cap_s and n != fam.grid[-1]:
            stop = f"time cap: one run took {last['latency_s']:.1f} s > {cfg.time_cap_s:g} s at {n}"
            break
    corr_stop = stop
    strict_stop = stop if (strict_max == corr_max or not cfg.maxlen_retry) else \
        next((w for k, w in strict_misses if k > (strict_max or 0)), stop)
    # nothing longer fits: at orig_max the original itself fits, so that is what the budget allows
    strict_max = strict_max or orig_max
    corr_max = corr_max or orig_max
    res["strict_misses"] = [w for _, w in strict_misses]

    def bound(stop):  # growth stopped by the grid, the model or the clock: the gain is a lower bound
        return stop.startswith("time cap") or stop == end_stop

    def gains(mx):
        if not (mx and orig_max):
            return None, None
        return mx / orig_max, fam.tokens(mx) / fam.tokens(orig_max)

    g, tg = gains(strict_max)
    gc, tgc = gains(corr_max)
    res.update(chunked_max=strict_max, chunked_stop=strict_stop, gain=g, tokens_gain=tg, lower_bound=bound(strict_stop),
               retry=cfg.maxlen_retry, chunked_max_retry=corr_max, chunked_stop_retry=corr_stop, gain_retry=gc,
               tokens_gain_retry=tgc, lower_bound_retry=bound(corr_stop), wall_s=time.perf_counter() - t0)
    fmt = lambda x: "-" if x is None else f"{x:.2f}x"  # noqa: E731
    log(f"maxlen {fam.model} at {_mib(B)}: original {orig_max}, chunked {strict_max} (gain {fmt(g)}; {strict_stop}); "
        f"with one budget retry {corr_max} (gain {fmt(gc)}; {corr_stop}) [{res['wall_s']:.0f}s]")
    return res


def _why(probe: dict, n: int) -> str:
    """Why a probe did not fit, as '<what> at <n> (<detail>)'."""
    if probe.get("status") == "ok":
        detail = (f"estimated {_mib(probe['est_peak_bytes'])} at budget {_mib(probe['budget_bytes'])}"
                  + (": within it, nothing chunked" if probe.get("regions") == 0 else ""))
        return f"measured {_mib(probe['peak_bytes'])} > budget at {n} ({detail})"
    return f"{probe.get('status')} at {n} ({probe.get('reason', '')})"


def _chunked_probe(fam: fams.Family, n: int, budget: int, limit: int, feeds, tmp: Path, kind: str) -> dict:
    """optimize at `budget` (no verification), measure the chunked model; fits = measured <= limit."""
    out = tmp / f"maxlen_{fam.model}_{n}_{kind}.onnx"
    probe = {"variant": "chunked", "kind": kind, "seq_len": n, "budget_bytes": budget}
    try:
        r = api.optimize(fam.path, out, budget, fam.shapes(n), verify_output=False)
        probe.update(est_peak_bytes=r.plan.final.peak_bytes, est_orig_peak_bytes=r.plan.original.peak_bytes,
                     regions=len(r.plan.regions), search_s=r.timings.get("search_s"))
        meas = measure(str(out), feeds, repeats=1)
    except BudgetUnreachableError as e:
        probe.update(status="unreachable", reason=str(e))
        log(f"  maxlen {fam.model} chunked {n} ({kind}, budget {_mib(budget)}): unreachable")
        return probe
    except AutochunkError as e:
        probe.update(status="error", reason=str(e))
        log(f"  maxlen {fam.model} chunked {n} ({kind}): {e}")
        return probe
    finally:
        for f in tmp.glob(out.name + "*"):
            f.unlink()
    fits = 0 <= meas.peak_bytes <= limit
    probe.update(status="ok", peak_bytes=meas.peak_bytes, fits=fits, latency_s=meas.latency_s, providers=meas.providers)
    log(f"  maxlen {fam.model} chunked {n} ({kind}, budget {_mib(budget)}): {_mib(meas.peak_bytes)} "
        f"(est. {_mib(probe['est_peak_bytes'])}) {'fits' if fits else '> budget'}, run {meas.latency_s:.2f} s")
    return probe


# ---------------------------------------------------------------------------------------------
# peers


def peers_section(fam: fams.Family, cfg: Config, tmp: Path, lengths) -> tuple[list[dict], list[dict]]:
    records, built = [], []
    models: list[tuple[str, Path, dict]] = []
    for peer in fam.peers:
        try:
            if peer in ("ort-bert", "ort-unet"):
                kind = peer.split("-")[1]
                heads, hidden = fams.BERT_HEADS.get(fam.model, (0, 0)) if kind == "bert" else (0, 0)
                dst = tmp / f"{fam.model}_ortopt.onnx"
                info = ort_transformers_optimize(fam.path, dst, kind, heads, hidden)
                models.append(("ort-optimizer", dst, info))
            elif peer == "onnx-attention":
                p = fams.ONNX_ATTENTION.get(fam.model)
                if p is None or not p.exists():
                    built.append({"family": fam.family, "peer": peer, "skipped": f"{p} not found (make models)"})
                    continue
                info = {"settings": f"{p.name}: torch sdpa exported at opset 23 as ONNX's standard Attention op",
                        "attention_fused": 2}
                models.append(("onnx-attention", p, info))
        except Exception as e:  # noqa: BLE001 - a peer that cannot be built is reported, not fatal
            built.append({"family": fam.family, "peer": peer, "error": f"{type(e).__name__}: {e}"})
            log(f"  peer {peer} failed: {e}")
            continue
        built.append({"family": fam.family, "peer": models[-1][0], "path": models[-1][1].name, **models[-1][2]})
        log(f"  peer {models[-1][0]} for {fam.model}: {models[-1][2].get('fused', '')} {models[-1][2].get('contrib_ops', '')}")
    for n in lengths:
        t = time.perf_counter()
        m = api.load(fam.path, fam.shapes(n))
        feeds = make_inputs(m.original, m.shapes)
        est_orig = estimate_graph(m.graph).peak_bytes  # peer budgets in % are of the ORIGINAL's estimate
        ref = measure_reference(fam.path, feeds, est_orig)
        log(f"peers {fam.model} {fam.length_name} {n}: original measured {_mib(ref.peak_bytes)}")
        cases = []
        for variant, path, info in models:
            rec = {"section": "peer", "model": path.stem, "family": fam.family, "variant": variant, "seq_len": n,
                   "length_name": fam.length_name, "tokens": fam.tokens(n), "budget": "-", "peer_settings": info["settings"]}
            try:
                m2 = api.load(path, fam.shapes(n))
                est2 = estimate_graph(m2.graph)
                fields, lat = check_model(path, feeds, ref)
            except AutochunkError as e:
                rec.update(status="error", reason=str(e))
                cases.append((rec, None, 0.0))
                continue
            rec.update(fields)
            p = rec["chunked_peak_bytes"]
            rec.update(est_chunked_peak_bytes=est2.peak_bytes, est_error=(est2.peak_bytes - p) / p if p > 0 else None)
            cases.append((rec, path if rec["status"] == "ok" else None, lat))
            if rec["status"] != "ok":
                continue
            mini = smallest_budget(path, fam.shapes(n), cfg.bisect_steps) if "min" in cfg.peer_budgets else None
            for b in cfg.peer_budgets:
                value, extra = _min_value(mini) if b == "min" else (parse_budget(b, est_orig), {})
                cases.append(chunk_case(fam, path, n, b, value, tmp, feeds, ref, section="peer",
                                        variant=variant + "+autochunk", extra={"peer_settings": info["settings"], **extra},
                                        pct_base=est_orig))
        add_latency(ref, cases, feeds, cfg)
        for r, _, _ in cases:
            _say(r)
            records.append(r)
        _cleanup(tmp, [c for c in cases if c[0]["variant"].endswith("+autochunk")])
        log(f"peers {fam.model} {n}: {time.perf_counter() - t:.0f} s")
    return records, built


# ---------------------------------------------------------------------------------------------
# search time against graph size


def search_section(quick: bool, tmp: Path) -> list[dict]:
    from models import synthetic

    rows = []
    for layers in ([4, 12] if quick else [4, 12, 24]):
        p = tmp / f"stack{layers}.onnx"
        onnx.save(synthetic.stacked_transformer(layers=layers, d_model=64, heads=4), str(p))
        m = api.load(p, {"input_ids": [1, 2048]})
        est = estimate_graph(m.graph)
        t = time.perf_counter()
        pl = plan(m.graph, est.peak_bytes // 5, est)
        rows.append({"layers": layers, "nodes": len(m.graph.nodes), "search_s": time.perf_counter() - t,
                     "regions": len(pl.regions), "fits": pl.fits})
        log(f"search: {layers} layers, {len(m.graph.nodes)} nodes: {rows[-1]['search_s']:.2f} s, {len(pl.regions)} regions")
    return rows


# ---------------------------------------------------------------------------------------------


def machine_info() -> dict:
    import numpy
    import onnxruntime

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(next(ln.split()[1] for ln in f if ln.startswith("MemTotal"))) * 1024
    except (OSError, StopIteration):
        pass
    try:
        git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "autochunk_onnx"],
                               capture_output=True, text=True).stdout.strip()
        git += " (autochunk_onnx/ modified)" if dirty else ""
    except OSError:
        git = None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "mem_bytes": mem, "platform": platform.platform(),
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "numpy": numpy.__version__, "git": git, "providers": default_providers(),
            "load_start": os.getloadavg()}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny committed models, short lengths: a smoke pass")
    ap.add_argument("--only", action="append", default=[], metavar="FAMILY",
                    help="run only this family (gpt, bert, vit, unet, evoformer); repeat or separate with commas")
    ap.add_argument("--lengths", help="main-table lengths for the selected families, e.g. 2048,4096")
    ap.add_argument("--budgets", help="budgets, e.g. 50%%,20%%,10%%,min (min: the smallest reachable)")
    ap.add_argument("--sections", default="main,maxlen,peers,search", help="any of main,maxlen,peers,search")
    ap.add_argument("--maxlen-budget", default=None, help="activation budget of the max-length section (default 512MiB, --quick 16MiB)")
    ap.add_argument("--time-cap", type=float, default=None,
                    help="max-length growth stops after a run longer than this (s; default 3, --quick 1)")
    ap.add_argument("--no-retry", action="store_true",
                    help="max-length section: no second try at a lower budget when the measured peak is over")
    ap.add_argument("--out", default=str(ROOT / "bench"), help="folder for results.json, RESULTS.md, the plot")
    args = ap.parse_args(argv)

    chosen = [f for o in args.only for f in o.split(",") if f]
    family_list = fams.quick() if args.quick else fams.full()
    names = [f.family for f in family_list]
    bad = [c for c in chosen if c not in names]
    if bad:
        print(f"bench: unknown family {bad[0]!r} (choose from {', '.join(names)})", file=sys.stderr)
        return 2
    if chosen:
        family_list = [f for f in family_list if f.family in chosen]
    missing = [f.path for f in family_list if not f.path.exists()]
    if missing:
        print(f"bench: {os.path.relpath(missing[0], ROOT)} not found: run `make models` first (torch, ~10 min), "
              f"or `make bench-quick` for the committed tiny models", file=sys.stderr)
        return 2
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    unknown = sections - {"main", "maxlen", "peers", "search"}
    if unknown:
        print(f"bench: unknown section {sorted(unknown)[0]!r}", file=sys.stderr)
        return 2
    budgets = [b.strip() for b in (args.budgets or "50%,20%,10%,min").split(",") if b.strip()]
    try:
        for b in budgets:
            if b != "min":
                parse_budget(b, 1000)
        if args.maxlen_budget:
            parse_budget(args.maxlen_budget)
        lengths_override = [int(x) for x in args.lengths.split(",")] if args.lengths else None
    except (AutochunkError, ValueError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    cfg = Config(
        quick=args.quick, budgets=budgets, peer_budgets=["20%", "min"] if "min" in budgets else budgets[-1:],
        maxlen_budget=parse_budget(args.maxlen_budget or ("16MiB" if args.quick else "512MiB")),
        time_cap_s=args.time_cap if args.time_cap is not None else (1.0 if args.quick else 3.0),
        lat_target_s=2.0 if args.quick else 8.0, min_rounds=3 if args.quick else 5,
        max_rounds=7 if args.quick else 21, bisect_steps=6,
        maxlen_retry=not args.no_retry)
    partial = bool(chosen or args.lengths or args.budgets or sections != {"main", "maxlen", "peers", "search"}
                   or args.maxlen_budget or args.time_cap is not None or args.no_retry)
    mode = ("quick" if args.quick else "full") + (" partial" if partial else "")

    t_start = time.time()
    meta = {"command": "python -m bench.run" + ("" if not argv else " " + " ".join(argv)), "mode": mode,
            "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine_info(), "budgets": budgets, "peer_budgets": cfg.peer_budgets,
            "maxlen_budget_bytes": cfg.maxlen_budget, "time_cap_s": cfg.time_cap_s,
            "latency": {"target_s": cfg.lat_target_s, "min_rounds": cfg.min_rounds, "max_rounds": cfg.max_rounds},
            "models": {f.family: os.path.relpath(f.path, ROOT) for f in family_list}}
    results = {"meta": meta, "records": [], "max_length": [], "peers": [], "search_scaling": [], "section_s": {}}
    log(f"bench ({mode}): {', '.join(f.model for f in family_list)}; sections {', '.join(sorted(sections))}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    interrupted = False
    tmp = Path(tempfile.mkdtemp(prefix="autochunk-bench-"))
    try:
        for fam in family_list:
            if "main" in sections:
                t = time.perf_counter()
                results["records"] += main_section(fam, lengths_override or fam.lengths, cfg, tmp)
                results["section_s"][f"main/{fam.family}"] = time.perf_counter() - t
        for fam in family_list:
            if "maxlen" in sections:
                t = time.perf_counter()
                try:
                    results["max_length"].append(maxlen_section(fam, cfg, tmp))
                except Exception as e:  # noqa: BLE001 - reported in the results, the run goes on
                    results["max_length"].append({"family": fam.family, "model": fam.model, "error": f"{type(e).__name__}: {e}",
                                                  "traceback": traceback.format_exc()})
                    log(f"maxlen {fam.model} failed: {e}")
                results["section_s"][f"maxlen/{fam.family}"] = time.perf_counter() - t
        for fam in family_list:
            if "peers" in sections and fam.peers:
                t = time.perf_counter()
                try:
                    recs, built = peers_section(fam, cfg, tmp, lengths_override or fam.peer_lengths)
                    results["records"] += recs
                    results["peers"] += built
                except Exception as e:  # noqa: BLE001 - reported in the results, the run goes on
                    results["peers"].append({"family": fam.family, "peer": ",".join(fam.peers),
                                             "error": f"{type(e).__name__}: {e}"})
                    log(f"peers {fam.model} failed: {e}")
                results["section_s"][f"peers/{fam.family}"] = time.perf_counter() - t
        if "search" in sections:
            t = time.perf_counter()
            results["search_scaling"] = search_section(args.quick, tmp)
            results["section_s"]["search"] = time.perf_counter() - t
    except KeyboardInterrupt:
        interrupted = True
        meta["mode"] += " INTERRUPTED"
        log("interrupted: writing what was measured")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta["duration_s"] = time.time() - t_start
    meta["machine"]["load_end"] = os.getloadavg()
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    report.write(results, out_dir)
    log(f"wrote {out_dir / 'results.json'}, {out_dir / 'RESULTS.md'} in {meta['duration_s'] / 60:.1f} min")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
