"""bench/results.json -> bench/RESULTS.md and the peak-memory plot (bench/peak_memory.png).

    python -m bench.report [DIR]   # rebuild DIR/RESULTS.md (+ plot) from DIR/results.json

Everything in the report comes from results.json: no number is written by hand.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

MIB = 2**20
MEM_TARGET = 0.2
LAT_TARGET = 1.10
TARGET_FAMILIES = ["gpt", "vit", "unet", "evoformer"]  # the four; bert is reported as well
FAMILY_ORDER = ["gpt", "bert", "vit", "unet", "evoformer"]
PLOT = "peak_memory.png"


def _mib(b) -> str:
    return "" if b is None or b < 0 else f"{b / MIB:.1f}"


def _ratio(x) -> str:
    return "" if x is None else f"{x:.3f}"


def _pct(x) -> str:
    return "" if x is None else f"{x:+.1%}"


def _s(x) -> str:
    return "" if x is None else f"{x:.2f}"


def _budget(r: dict) -> str:
    if r.get("budget") == "min":
        pct = r.get("budget_pct")
        return f"min ({pct:.1f}%)" if pct is not None else "min"
    return str(r.get("budget", ""))


def row_target(r: dict) -> tuple[bool, str]:
    """(met, why not): mem_ratio <= 0.2 and latency_ratio <= 1.10, outputs equal."""
    if r.get("status") != "ok":
        return False, r.get("status", "?")
    why = []
    if not r.get("outputs_equal", True):
        why.append("outputs differ")
    mr, lr = r.get("mem_ratio"), r.get("latency_ratio")
    if mr is None or mr > MEM_TARGET:
        why.append(f"mem {_ratio(mr) or '?'} > {MEM_TARGET}")
    if lr is None:
        why.append("latency not measured")
    elif lr > LAT_TARGET:
        why.append(f"latency {lr:.3f} > {LAT_TARGET:.2f}")
    return not why, "; ".join(why)


def family_verdict(records: list[dict], family: str) -> dict:
    rows = [r for r in records if r.get("section") == "main" and r["family"] == family]
    if not rows:
        return {"family": family, "state": "not run", "best": "", "why": ""}
    met = [r for r in rows if row_target(r)[0]]
    if met:
        best = min(met, key=lambda r: r["mem_ratio"])
        return {"family": family, "state": "met", "why": f"{len(met)} of {len(rows)} cases meet it",
                "best": f"{best['length_name']} {best['seq_len']}, budget {_budget(best)}: mem {best['mem_ratio']:.3f}, "
                        f"latency {best['latency_ratio']:.3f}"}
    ok = [r for r in rows if r.get("status") == "ok" and r.get("mem_ratio") is not None]
    why = []
    if ok:
        lo = min(ok, key=lambda r: r["mem_ratio"])
        why.append(f"lowest measured mem ratio {lo['mem_ratio']:.3f} ({lo['length_name']} {lo['seq_len']}, budget {_budget(lo)}, "
                   f"latency {_ratio(lo.get('latency_ratio')) or '-'})")
        small = [r for r in ok if r["mem_ratio"] <= MEM_TARGET and r.get("latency_ratio") is not None]
        if small:
            fast = min(small, key=lambda r: r["latency_ratio"])
            why.append(f"where mem <= {MEM_TARGET}, the best latency ratio is {fast['latency_ratio']:.3f} "
                       f"({fast['length_name']} {fast['seq_len']}, budget {_budget(fast)})")
    unreach = [r for r in rows if r.get("status") == "unreachable"]
    if unreach:
        r = unreach[-1]
        why.append(f"{r['length_name']} {r['seq_len']} budget {r['budget']}: {r.get('reason', 'unreachable')}")
    bad = [r for r in rows if r.get("status") in ("mismatch", "error")]
    for r in bad:
        why.append(f"{r['length_name']} {r['seq_len']} budget {r['budget']}: {r['status']}: {r.get('reason', '')}")
    return {"family": family, "state": "MISSED", "best": "", "why": "; ".join(why) or "no case ran"}


def _header(res: dict) -> list[str]:
    meta = res.get("meta", {})
    m = meta.get("machine", {})
    mode = meta.get("mode", "?")
    lines = ["# Benchmark results", ""]
    if mode != "full":
        lines += [f"> **This is a {mode.upper()} run, not the full bench** (`{meta.get('command')}`): "
                  + ("tiny committed models at short lengths, a smoke test of the bench itself; its figures say "
                     "little about the targets." if mode.startswith("quick") else "some families, lengths, budgets or "
                     "sections were left out."), ""]
    load = lambda x: "/".join(f"{v:.1f}" for v in x) if x else "?"  # noqa: E731
    mem = m.get("mem_bytes")
    lines += [
        f"- command: `{meta.get('command')}` ({mode}), {meta.get('date_utc')}, took {meta.get('duration_s', 0) / 60:.1f} min",
        f"- machine: {m.get('cpu')}, {m.get('cpu_count')} logical CPUs, {mem / 2**30:.0f} GiB RAM" if mem else
        f"- machine: {m.get('cpu')}, {m.get('cpu_count')} logical CPUs",
        f"- load average (1/5/15 min) at start {load(m.get('load_start'))}, at end {load(m.get('load_end'))} "
        "(other jobs on the machine make latencies noisy; the interleaving is there for that)",
        f"- onnxruntime {m.get('onnxruntime')} (providers used: {', '.join(_providers(res)) or '?'}), onnx {m.get('onnx')}, "
        f"numpy {m.get('numpy')}, Python {m.get('python')}; autochunk-onnx at {m.get('git')}",
        "",
        "How it is measured: each case is `autochunk_onnx.api.optimize(model, out, budget, shapes)`, then the chunked "
        "model is verified as `api.verify` does it: run on the same seeded inputs as the original in a fresh child "
        "process (`autochunk_onnx.measure`), outputs compared with the original's (`autochunk_onnx.compare`, fp32 atol "
        "1e-4, rtol 1e-3), peak activation memory of one run measured as the RSS high-water mark above the resident "
        "size before the run (weights excluded; arena and memory pattern off, glibc mmap threshold 64 KiB; method "
        "`cpu-rss-hwm`). The original is run and measured once per length, shared by that length's budgets. Latency: "
        "the original and every chunked model of one length in one child process with ORT's default session options, "
        "runs interleaved (A B C, C B A, ...), ratio of the medians (`bench/interleave.py`). Budgets in % are of the "
        "original's *estimated* peak; `min` is the smallest budget the planner reaches (bisection on dry-run plans). "
        "mem ratio = chunked / original measured peak; est. error = (estimated - measured) / measured, for the chunked "
        "model (and, est. error orig, for the original).",
        "",
    ]
    return lines


def _providers(res: dict) -> list[str]:
    seen = []
    for r in res.get("records", []):
        for p in r.get("providers") or []:
            if p not in seen:
                seen.append(p)
    return seen


def _targets(res: dict) -> list[str]:
    recs = res.get("records", [])
    lines = [f"## Targets: mem ratio <= {MEM_TARGET} with latency ratio <= {LAT_TARGET:.2f}", "",
             "| family | target | best case meeting it | why missed |", "|---|---|---|---|"]
    fams = [f for f in FAMILY_ORDER if any(r["family"] == f for r in recs if r.get("section") == "main")]
    for f in fams:
        v = family_verdict(recs, f)
        name = f if f in TARGET_FAMILIES else f"{f} (extra)"
        lines.append(f"| {name} | {v['state']} | {v['best']} | {v['why'] if v['state'] != 'met' else ''} |")
    not_run = [f for f in TARGET_FAMILIES if f not in fams]
    if not_run:
        lines += ["", f"Not run in this run: {', '.join(not_run)}."]
    return lines + [""]


def _measured(r: dict) -> str:
    """The measured cells every results table shares: peaks, ratios, estimate error."""
    return (f"{_mib(r['orig_peak_bytes'])} | {_mib(r['chunked_peak_bytes'])} | {_ratio(r['mem_ratio'])} | "
            f"{_ratio(r.get('latency_ratio'))} | {_pct(r.get('est_error'))}")


def _main_table(res: dict) -> list[str]:
    recs = [r for r in res.get("records", []) if r.get("section") == "main"]
    if not recs:
        return []
    lines = ["## Original vs chunked", "",
             "| family | model | length | budget | orig peak MiB | chunked MiB | mem ratio | latency ratio | "
             "est. error | est. error orig | regions | search s | target | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(recs, key=lambda r: (FAMILY_ORDER.index(r["family"]) if r["family"] in FAMILY_ORDER else 99)):
        length = f"{r['length_name']} {r['seq_len']}"
        if r["status"] != "ok":
            lines.append(f"| {r['family']} | {r['model']} | {length} | {_budget(r)} | | | | | | | | {_s(r.get('search_s'))} "
                         f"| missed | {r['status']}: {r.get('reason', '')} |")
            continue
        met, why = row_target(r)
        search = _s(r.get("search_s"))
        if r.get("min_search"):
            search += f" (+{r['min_search']['search_s']:.1f} finding min)"
        lines.append(
            f"| {r['family']} | {r['model']} | {length} | {_budget(r)} | {_measured(r)} | "
            f"{_pct(r.get('est_error_orig'))} | {r.get('regions', '')} | {search} | "
            f"{'met' if met else 'missed: ' + why} | ok |")
    return lines + [""]


def _maxlen(res: dict) -> list[str]:
    rows = res.get("max_length", [])
    if not rows:
        return []
    meta = res.get("meta", {})
    B = meta.get("maxlen_budget_bytes")
    lines = [f"## Longest input that fits {_mib(B)} MiB of activations", "",
             "The original is measured at growing lengths until its peak exceeds the budget. The chunked model is "
             "`optimize --budget` at that budget at growing lengths, measured (not verified here: outputs are verified in "
             "the table above), until the budget is unreachable, the measured peak exceeds it, one run takes longer than "
             f"the time cap ({meta.get('time_cap_s')} s), or the grid / the model's position table ends (then the gain is "
             "a lower bound, marked >=). *With one retry*: where the measured peak is over the budget (the estimate was "
             "low), optimize once more at a budget of estimated x budget / measured x 0.97, as a user would.", "",
             "| family | length | original: longest that fits (peak MiB) | chunked: longest (peak MiB) | gain | gain in tokens "
             "| stopped by | with one retry: longest (peak MiB) | gain | stopped by |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def peak_of(r, variant, n):
        for p in r["probes"]:
            if p["variant"] == variant and p["seq_len"] == n and p.get("fits"):
                return p.get("peak_bytes")
        return None

    def cell(r, n):
        if not n:
            return "-"
        pk = peak_of(r, "chunked", n)
        if pk is None:  # nothing longer than the original's longest fitted: the original itself
            pk = peak_of(r, "original", n)
        return f"{n} ({_mib(pk)})"

    def gain(x, lb):
        return "-" if not x else f"{'>= ' if lb else ''}{x:.2f}x"

    for r in rows:
        if "error" in r:
            lines.append(f"| {r['family']} | | | | | | error: {r['error']} | | | |")
            continue
        o = r.get("orig_max")
        o_s = f"{o} ({_mib(peak_of(r, 'original', o))})" if o else f"< {r['grid'][0]} ({r.get('orig_stop')})"
        retry = r.get("retry")
        lines.append(
            f"| {r['family']} | {r['length_name']} | {o_s} | {cell(r, r.get('chunked_max'))} | "
            f"{gain(r.get('gain'), r.get('lower_bound'))} | {gain(r.get('tokens_gain'), r.get('lower_bound'))} | "
            f"{r.get('chunked_stop')} | "
            + (f"{cell(r, r.get('chunked_max_retry'))} | {gain(r.get('gain_retry'), r.get('lower_bound_retry'))} | "
               f"{r.get('chunked_stop_retry')} |" if retry else "(no retry) | | |"))
    misses = [(r["family"], w) for r in rows for w in r.get("strict_misses", [])]
    if misses:
        lines += ["", "First tries at the budget that were over it (the estimate was low):", ""]
        lines += [f"- {f}: {w}" for f, w in misses]
    lines += ["", "<details><summary>every probe</summary>", "",
              "| family | variant | length | budget MiB | measured peak MiB | estimated MiB | fits | one run s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for p in r.get("probes", []):
            state = "yes" if p.get("fits") else ("no" if "fits" in p else p.get("status", "error"))
            var = p["variant"] + (f" ({p['kind']})" if p.get("kind") else "")
            lines.append(f"| {r['family']} | {var} | {p['seq_len']} | {_mib(p.get('budget_bytes', B))} | "
                         f"{_mib(p.get('peak_bytes'))} | {_mib(p.get('est_peak_bytes'))} | {state} | {_s(p.get('latency_s'))} |")
    return lines + ["", "</details>", ""]


def _peers(res: dict) -> list[str]:
    recs = [r for r in res.get("records", []) if r.get("section") == "peer"]
    built = res.get("peers", [])
    if not recs and not built:
        return []
    lines = ["## Peers: ONNX Runtime's fused operators, alone and with autochunk on top", ""]
    for b in built:
        if "error" in b or "skipped" in b:
            lines.append(f"- {b['family']} {b['peer']}: {b.get('error') or 'skipped: ' + b.get('skipped', '')}")
            continue
        fused = ", ".join(f"{k} x{v}" for k, v in (b.get("fused") or {}).items()) or "-"
        att = b.get("attention_fused")
        lines.append(f"- {b['family']} `{b['peer']}` ({b.get('path')}): {b['settings']}. Fused: {fused}. "
                     + ("**Attention was not fused** (the optimizer's patterns do not match this export)."
                        if att == 0 else ""))
    lines += ["", "Ratios are against the unfused original measured in the same run (mem ratio = peak / original's "
              "peak); budgets in % are of the original's estimated peak, the same bytes as in the table above; `min` is "
              "the smallest the planner reaches on the peer; est. error is for the model measured.", "",
              "| family | length | variant | budget | orig peak MiB | peak MiB | mem ratio | latency ratio | est. error | "
              "regions | status |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        length = f"{r['length_name']} {r['seq_len']}"
        if r["status"] != "ok":
            lines.append(f"| {r['family']} | {length} | {r['variant']} | {_budget(r)} | | | | | | | {r['status']}: {r.get('reason', '')} |")
            continue
        lines.append(f"| {r['family']} | {length} | {r['variant']} | {_budget(r) if r['budget'] != '-' else '-'} | "
                     f"{_measured(r)} | {r.get('regions', '-')} | ok |")
    return lines + [""]


def _search(res: dict) -> list[str]:
    rows = res.get("search_scaling", [])
    if not rows:
        return []
    lines = ["## Search time against graph size (synthetic stacked transformer, L=2048, budget 20%)", "",
             "| layers | nodes | search s | regions | fits |", "|---|---|---|---|---|"]
    lines += [f"| {s['layers']} | {s['nodes']} | {s['search_s']:.2f} | {s['regions']} | {s['fits']} |" for s in rows]
    return lines + [""]


def _timing(res: dict) -> list[str]:
    sec = res.get("section_s", {})
    if not sec:
        return []
    parts = ", ".join(f"{k} {v / 60:.1f}" for k, v in sec.items())
    return [f"Time per section (min): {parts}.", ""]


def plot(res: dict, path: Path) -> str | None:
    """Peak memory against length, per family: original, chunked at each budget, max-length probes.

    Returns None when written, else why it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (`pip install matplotlib`, or the `plot` extra)"
    recs = [r for r in res.get("records", []) if r.get("section") == "main" and r.get("status") == "ok"]
    maxlen = {r["family"]: r for r in res.get("max_length", []) if "probes" in r}
    fams = [f for f in FAMILY_ORDER if any(r["family"] == f for r in recs) or f in maxlen]
    if not fams:
        return "no measured case to plot"
    from matplotlib.ticker import FuncFormatter

    cols = min(3, len(fams))
    nrows = (len(fams) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5.0 * cols, 4.0 * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(fams):]:
        ax.set_visible(False)
    B = res.get("meta", {}).get("maxlen_budget_bytes")
    for ax, f in zip(flat, fams):
        rows = [r for r in recs if r["family"] == f]
        orig: dict[int, list[int]] = {}
        for r in rows:
            orig.setdefault(r["seq_len"], []).append(r["orig_peak_bytes"])
        ml = maxlen.get(f)
        if ml:
            for p in ml["probes"]:
                if p["variant"] == "original" and p.get("peak_bytes", -1) >= 0:
                    orig.setdefault(p["seq_len"], []).append(p["peak_bytes"])
        xs = sorted(orig)
        ax.plot(xs, [sorted(orig[x])[len(orig[x]) // 2] / MIB for x in xs], "o-", color="black", label="original")
        for b in sorted({r["budget"] for r in rows}, key=lambda b: (b == "min", -float(b.strip("%")) if b != "min" else 0)):
            pts = sorted((r["seq_len"], r["chunked_peak_bytes"] / MIB) for r in rows if r["budget"] == b)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "s--" if b != "min" else "v-",
                    label=f"chunked {b}" if b != "min" else "chunked, smallest budget")
        if ml:
            for kind, style, label in (("strict", "^:", f"chunked, budget {B / MIB:.0f} MiB"),
                                       ("retry", "x", "chunked, retry at a lower budget")):
                pts = [(p["seq_len"], p["peak_bytes"] / MIB) for p in ml["probes"]
                       if p["variant"] == "chunked" and p.get("kind", "strict") == kind and p.get("peak_bytes", -1) >= 0]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color="tab:purple", label=label)
            if B:
                ax.axhline(B / MIB, color="grey", lw=0.8, ls=":")
        name = rows[0]["length_name"] if rows else (ml or {}).get("length_name", "length")
        ax.set_title(f"{f} ({(rows[0]['model'] if rows else (ml or {}).get('model', ''))})")
        ax.set_xlabel(name)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:e}"[0] in "25" else ""))
        ax.grid(True, which="both", alpha=0.3)
        if ax in axes[:, 0]:
            ax.set_ylabel("measured peak activation (MiB)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write(res: dict, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    skipped = plot(res, out_dir / PLOT)
    lines = _header(res) + _targets(res) + _main_table(res) + _maxlen(res) + _peers(res) + _search(res)
    lines += ["## Peak memory against length", ""]
    lines += [f"Plot skipped: {skipped}.", ""] if skipped else [f"![peak memory against length]({PLOT})", ""]
    lines += _timing(res)
    md = out_dir / "RESULTS.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    d = Path(argv[0]) if argv else Path(__file__).resolve().parent
    res = json.loads((d / "results.json").read_text())
    print(write(res, d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
