"""Fuse exports with ONNX Runtime's transformers optimizer (issue 16): the models users deploy.

    python -m models.fuse --size bench --src models/out --out models/out
    python -m models.fuse --size tiny --src models/tiny --out models/tiny

Each source export (`*_ts`, the TorchScript exporter's graphs, which the optimizer's patterns
match best) is fused by `onnxruntime.transformers.optimizer.optimize_model` on CPU at opt_level 0
(graph fusions only: the file keeps ONNX ops plus com.microsoft ones, no ORT-internal layout) into
`<stem>_fused.onnx`, and checked: the fused model's outputs equal the source's in ONNX Runtime at
two lengths (padded attention mask; max abs diff printed). The optimizer's fused-op counts are
printed and written to `--report` (models/README.md records them). Needs only onnxruntime (the
optimizer ships in its wheel), numpy and onnx; runs in either venv.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx

# (source stem, model_type, num_heads, hidden_size) per size: the configs of models/export.py
FUSE = {
    "bench": [("bert_bench_ts", "bert", 4, 256), ("gpt2_bench_ts", "gpt2", 4, 256), ("bert_base_ts", "bert", 12, 768)],
    "tiny": [("bert_tiny_ts", "bert", 2, 64), ("gpt2_tiny_ts", "gpt2", 2, 64)],
}
CHECK_LENGTHS = {"bench": (64, 200), "tiny": (33, 70)}
VOCAB = {"bench": 8192, "tiny": 1000}


def _feeds(model: onnx.ModelProto, seq: int, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seq)
    feeds = {}
    for i in model.graph.input:
        if i.name == "input_ids":
            feeds[i.name] = rng.integers(0, vocab, (2, seq), dtype=np.int64)
        elif i.name == "attention_mask":
            m = np.ones((2, seq), np.int64)
            m[1, seq - seq // 4:] = 0  # the second row padded at its end
            feeds[i.name] = m
        else:
            raise SystemExit(f"unexpected input {i.name}")
    return feeds


def _run(path: Path, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def fuse_one(src: Path, dst: Path, model_type: str, heads: int, hidden: int, size: str) -> dict:
    """Fuse `src` into `dst`; returns the record (fusions, op counts, check diffs)."""
    from onnxruntime.transformers import optimizer
    m = optimizer.optimize_model(str(src), model_type=model_type, num_heads=heads, hidden_size=hidden,
                                 opt_level=0, use_gpu=False)
    stats = {k: v for k, v in m.get_fused_operator_statistics().items() if v}
    m.save_model_to_file(str(dst))
    fused = onnx.load(str(dst))
    onnx.checker.check_model(fused)
    contrib = {}
    for n in fused.graph.node:
        if n.domain == "com.microsoft":
            contrib[n.op_type] = contrib.get(n.op_type, 0) + 1
    checks = []
    for seq in CHECK_LENGTHS[size]:
        feeds = _feeds(fused, seq, VOCAB[size])
        a, b = _run(src, feeds), _run(dst, feeds)
        diff = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
        ref = max(float(np.abs(x).max()) for x in a)
        if not diff <= 1e-3 * max(1.0, ref):
            raise SystemExit(f"{dst.name}: fused output differs from {src.name} at seq {seq}: max abs {diff:.3g}")
        checks.append({"seq": seq, "max_abs_diff": diff, "max_abs_ref": ref})
    return {"file": dst.name, "source": src.name, "model_type": model_type, "num_heads": heads, "hidden_size": hidden,
            "optimizer_fusions": stats, "contrib_ops": contrib, "bytes": dst.stat().st_size, "checks": checks}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(FUSE), default="bench")
    ap.add_argument("--src", type=Path, default=Path("models/out"))
    ap.add_argument("--out", type=Path, default=Path("models/out"))
    ap.add_argument("--report", type=Path, help="write the records as JSON")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    for stem, mt, heads, hidden in FUSE[args.size]:
        src = args.src / f"{stem}.onnx"
        if not src.exists():
            print(f"missing {src}: run the exports first (make models)", file=sys.stderr)
            return 1
        rec = fuse_one(src, args.out / f"{stem}_fused.onnx", mt, heads, hidden, args.size)
        records.append(rec)
        print(f"{rec['file']}: fusions {rec['optimizer_fusions']}; max abs diff "
              + ", ".join(f"{c['max_abs_diff']:.2g} at seq {c['seq']}" for c in rec["checks"]), flush=True)
    if args.report:
        args.report.write_text(json.dumps(records, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
