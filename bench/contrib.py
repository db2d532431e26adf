"""Models fused by ONNX Runtime's transformers optimizer (issue 16): estimate against measured peak.

    python -m bench.contrib                                   # fused bench models, L=1024,2048,4096
    python -m bench.contrib --models models/tiny/bert_tiny_ts_fused.onnx --lengths 256
    python -m bench.contrib --ops                             # one contrib node at a time

For each model and length: `estimate`'s peak, the measured peak (RSS method of measure.py, its own
child process, arena off) and ORT's allocator peak (profiler, exact arena: bench.estimate_accuracy),
and the estimate's error against each. `--ops` does the same for one-node graphs of every contrib
op with a registry row (the probes kernels.py's formulas were fitted on).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from autochunk_onnx import api, notes
from autochunk_onnx.inputs import make_inputs
from autochunk_onnx.measure import measure
from bench.estimate_accuracy import arena_peak

MiB = 2**20
FUSED = ["models/out/bert_bench_ts_fused.onnx", "models/out/gpt2_bench_ts_fused.onnx", "models/out/bert_base_ts_fused.onnx",
         "models/out/qwen2_genai_bench_fp32/model.onnx", "models/out/qwen2_genai_bench_int4/model.onnx"]


def _shapes(path: str, L: int) -> dict:
    """[1, L] token inputs; an onnxruntime-genai model gets a KV cache of one past token (the
    tool takes no zero-sized dim, so a prefill is measured after one cached token)."""
    m = onnx.load(path, load_external_data=False)
    past = [i for i in m.graph.input if i.name.startswith("past_key_values")]
    shapes = {}
    for i in m.graph.input:
        dims = [d.dim_value for d in i.type.tensor_type.shape.dim]
        if i in past:  # [batch, kv heads, past, head]: the head size from the rotary cache [pos, head/2]
            cos = next(t for t in m.graph.initializer if t.name == "cos_cache")
            shapes[i.name] = [1, dims[1], 1, dims[3] or 2 * cos.dims[1]]
        else:
            shapes[i.name] = [1, L + 1] if past and i.name == "attention_mask" else [1, L]
    return shapes


def one(path: str, shapes: dict, repeats: int = 1, feeds: dict | None = None) -> dict:
    """Estimate, measured (RSS) and allocator (arena) peaks of one model at one pinning."""
    with notes.collect() as got:
        m, est = api.estimate(path, shapes)
    feeds = feeds if feeds is not None else make_inputs(m.original, m.shapes)
    if any(k.startswith("past_key_values") for k in feeds) and "attention_mask" in feeds:
        feeds["attention_mask"] = np.ones_like(feeds["attention_mask"])  # GQA: no padding in a prefill
    meas = measure(path, feeds, repeats=repeats).peak_bytes
    arena = arena_peak(path, feeds)
    return dict(model=Path(path).name, shapes=shapes, estimate=est.peak_bytes, measured=meas, arena=arena,
                peak_node=est.peak_node, notes=[n.text for n in got])


def say(r: dict) -> None:
    print(f"{r['model']:28s} {json.dumps(r['shapes']):44s} estimate {r['estimate'] / MiB:8.1f}  measured "
          f"{r['measured'] / MiB:8.1f}  arena {r['arena'] / MiB:8.1f} MiB  est/meas {r['estimate'] / r['measured']:.3f}  "
          f"est/arena {r['estimate'] / r['arena']:.3f}", flush=True)
    for t in r["notes"]:
        print(f"    note: {t}")


def op_cases(lengths) -> list[tuple[str, onnx.ModelProto, dict]]:
    """One-node graphs of every contrib op with a row (models/contrib_graphs.py)."""
    from models.contrib_graphs import CASES
    return [(f"{name}@{L}",) + build(L) for name, build in CASES for L in lengths]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=FUSED)
    ap.add_argument("--lengths", default="1024,2048,4096")
    ap.add_argument("--ops", action="store_true", help="one node at a time instead of whole models")
    ap.add_argument("--only", help="--ops: comma-separated case names (models/contrib_graphs.py CASES)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    rows = []
    if a.ops:
        with tempfile.TemporaryDirectory(prefix="contrib-ops-") as d:
            from models.contrib_graphs import feeds
            for name, model, shapes in op_cases([int(x) for x in a.lengths.split(",")]):
                if a.only and name.split("@")[0] not in a.only.split(","):
                    continue
                p = str(Path(d) / f"{name}.onnx")
                onnx.save(model, p)
                r = one(p, shapes, a.repeats, feeds(model, shapes))
                r["model"] = name
                rows.append(r)
                say(r)
    else:
        for path in a.models:
            for L in (int(x) for x in a.lengths.split(",")):
                rows.append(one(path, _shapes(path, L), a.repeats))
                say(rows[-1])
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
