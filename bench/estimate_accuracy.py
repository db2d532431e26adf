"""How close `estimate` comes to the measured peak, on original and chunked models of every family.

For each family, length and budget: the original is estimated and measured; `api.optimize` writes
the chunked model (no verification); then the planner's own estimate of its plan, `estimate` of
the written model (what a user gets from `autochunk-onnx estimate chunked.onnx`) and the measured
peak (RSS method of measure.py, a child process per model, arena off) are compared.

    python -m bench.estimate_accuracy                 # tiny exports and synthetic graphs, 20% and 50%
    python -m bench.estimate_accuracy --only gpt,bert --budgets 20% --json out.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from autochunk_onnx import api, notes
from autochunk_onnx.inputs import make_inputs
from autochunk_onnx.measure import measure
from bench import families as fams
from models import synthetic

MiB = 2**20

_ARENA_CHILD = r"""
import json, os, sys
import numpy as np, onnxruntime as ort
path, feeds_path = sys.argv[1], sys.argv[2]
feeds = dict(np.load(feeds_path))
mi = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
# grow by exactly the request and always split chunks: in-use bytes are the requested bytes
ort.create_and_register_allocator(mi, ort.OrtArenaCfg({"arena_extend_strategy": 1, "max_dead_bytes_per_chunk": 1,
                                                        "initial_chunk_size_bytes": 1024}))
so = ort.SessionOptions()
so.add_session_config_entry("session.use_env_allocators", "1")
so.enable_profiling = True
so.profile_file_prefix = os.path.join(os.path.dirname(feeds_path), "prof")
so.log_severity_level = 3
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
s.run(None, feeds)
events = json.load(open(s.end_profiling()))
rows = [e["args"] for e in events if e.get("cat") == "Node" and e["name"].endswith("kernel_time")]
base = int(rows[0]["mem_bytes_in_use"]) - int(rows[0]["mem_in_use_delta"])
print(json.dumps(max(int(r["mem_in_use_peak"]) for r in rows) - base))
"""


def arena_peak(path: str, feeds: dict[str, np.ndarray]) -> int:
    """Peak bytes ORT's allocator hands out in one run (profiler stats, exact arena; weights and
    inputs excluded): what ORT's planner and kernels hold, without malloc's and RSS's noise, which
    matter below a few MiB (tensors under 64 KiB come from the heap)."""
    with tempfile.TemporaryDirectory(prefix="arena-") as d:
        fp = Path(d) / "feeds.npz"
        np.savez(fp, **feeds)
        out = subprocess.run([sys.executable, "-c", _ARENA_CHILD, str(path), str(fp)], capture_output=True, text=True,
                             timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return int(json.loads(out.stdout.strip().splitlines()[-1]))


def cases(tmp: Path) -> list[tuple[str, Path, dict]]:
    """(name, model path, input shapes) for every family: tiny real exports and synthetic graphs."""
    out = []
    for fam in fams.quick():
        n = {"gpt": 1024, "bert": 1024, "vit": 512, "unet": 32, "evoformer": 96}[fam.family]
        out.append((fam.family, fam.path, fam.shapes(n)))
    synth = {
        "syn_transformer": (synthetic.transformer, {"input_ids": [1, 1024]}),
        "syn_attention": (synthetic.attention_block, {"x": [1, 2048, 64]}),
        "syn_mlp": (synthetic.mlp_block, {"x": [1, 8192, 64]}),
        "syn_evoformer": (synthetic.evoformer_like, {"msa": [1, 4, 128, 16], "pair": [1, 128, 128, 16]}),
        "syn_unet": (synthetic.unet_like, {"sample": [1, 32, 32, 32]}),
        "syn_attention23": (synthetic.attention_opset23, {"x": [1, 2048, 64]}),
    }
    for name, (build, shapes) in synth.items():
        p = tmp / f"{name}.onnx"
        onnx.save(build(), str(p))
        m = onnx.load(str(p), load_external_data=False)
        names = {i.name for i in m.graph.input}
        out.append((name, p, {k: v for k, v in shapes.items() if k in names}))
    return out


def run(only: set[str] | None, budgets: list[str], repeats: int = 1) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="est-acc-") as d:
        tmp = Path(d)
        for name, path, shapes in cases(tmp):
            if only and name not in only:
                continue
            m, est = api.estimate(str(path), shapes)
            feeds = make_inputs(m.original, m.shapes)
            got = measure(str(path), feeds, repeats=repeats).peak_bytes
            rows.append(dict(model=name, shapes=shapes, budget="-", plan=None, estimate=est.peak_bytes, measured=got,
                             arena=arena_peak(str(path), feeds)))
            _say(rows[-1])
            for b in budgets:
                out = tmp / f"{name}_{b.strip('%')}.onnx"
                with notes.collect():
                    res = api.optimize(str(path), out, b, shapes, verify_output=False, best_effort=True)
                    if not res.plan.loops:
                        continue
                    _, est_c = api.estimate(str(out), shapes)
                got = measure(str(out), feeds, repeats=repeats).peak_bytes
                rows.append(dict(model=name, shapes=shapes, budget=b, plan=res.plan.final.peak_bytes,
                                 estimate=est_c.peak_bytes, measured=got, arena=arena_peak(str(out), feeds),
                                 loops=len(res.plan.loops)))
                _say(rows[-1])
    return rows


def _say(r: dict) -> None:
    plan = f"{r['plan'] / MiB:8.2f}" if r["plan"] is not None else "       -"
    err = r["estimate"] / r["measured"] - 1 if r["measured"] > 0 else float("nan")
    perr = (r["plan"] / r["measured"] - 1) if r["plan"] is not None and r["measured"] > 0 else float("nan")
    print(f"{r['model']:16s} {r['budget']:>4s}  plan {plan}  estimate {r['estimate'] / MiB:8.2f}  "
          f"measured {r['measured'] / MiB:8.2f} MiB  est err {err:+7.1%}  plan err {perr:+7.1%}  "
          f"arena {r['arena'] / MiB:8.2f}  est/arena {r['estimate'] / r['arena'] - 1:+7.1%}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated model names (gpt, bert, vit, unet, evoformer, syn_*)")
    ap.add_argument("--budgets", default="20%,50%")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    rows = run(set(a.only.split(",")) if a.only else None, a.budgets.split(","), a.repeats)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
