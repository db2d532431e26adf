"""Snapshot of every plan and written model, to prove a refactor changed no behaviour.

    python -m bench.plans_snapshot OUT.json [--write-dir DIR]

For each model (models/tiny, the shipped example, the synthetic families, models/out when
present) at one or two lengths and budgets of 50% and 20%, it records the dry-run plan as the
JSON report gives it (without `search_s`, a timing), or the exit-3 error text, and, for the small
models, the sha256 of the written model (no verification: the bytes are what must not change).
Two snapshots taken before and after a change are compared with `diff`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import onnx

from autochunk_onnx import api
from autochunk_onnx.errors import BudgetUnreachableError
from autochunk_onnx.report import plan_json
from bench import families
from models import synthetic

ROOT = Path(__file__).resolve().parent.parent
BUDGETS = ("50%", "20%")


def _cases(tmp: Path) -> list[tuple[str, Path, list[dict], bool]]:
    """(name, path, input shapes to try, write the model too) for every model that exists here."""
    out = []
    quick = {f.model: f for f in families.quick()}
    for p in sorted((ROOT / "models" / "tiny").glob("*.onnx")):
        f = quick.get(p.stem) or quick.get(p.stem.replace("_opset23", ""))
        # zoo exports have no quick family: every dynamic dim pinned to 64 and 256 (_default_shapes)
        out.append((p.stem, p, [f.shapes(n) for n in (f.grid[1], f.lengths[0])] if f else [], True))
    example = ROOT / "models" / "examples" / "gpt_small.onnx"
    out.append(("gpt_small", example, [{"input_ids": [1, 1024]}], True))
    out.append(("gpt_small", example, [{"input_ids": [1, 4096]}], False))
    for name, build in synthetic.BUILDERS.items():
        kw = {"layers": 4} if name == "stacked_transformer" else {}
        path = tmp / f"{name}.onnx"
        onnx.save_model(build(**kw), str(path))
        out.append((f"synthetic.{name}", path, [], True))
    for f in families.full():
        if f.path.exists():
            out.append((f"out.{f.model}", f.path, [f.shapes(f.lengths[0])], False))
    return out


def _default_shapes(path: Path, length: int) -> dict:
    """Every dynamic dim of every input pinned to `length` (batch-like first dims to 1)."""
    m = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    shapes = {}
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (1 if k == 0 else length)
                for k, d in enumerate(vi.type.tensor_type.shape.dim)]
        shapes[vi.name] = dims
    return shapes


def snapshot(write: bool = True) -> dict:
    doc = {}
    with tempfile.TemporaryDirectory(prefix="plans-snapshot-") as tmp:
        tmp = Path(tmp)
        for name, path, shapes, small in _cases(tmp):
            variants = shapes or [_default_shapes(path, n) for n in ((64, 256) if small else (1024,))]
            for s in variants:
                for b in BUDGETS:
                    key = f"{name} {json.dumps(s, sort_keys=True)} {b}"
                    out = tmp / "out.onnx"
                    try:
                        res = api.optimize(str(path), str(out), b, s, dry_run=not (write and small),
                                           verify_output=False, best_effort=True)
                        pj = plan_json(res.plan)
                        pj.pop("search_s")
                        rec = {"plan": pj, "notes": res.notes}
                        if write and small:
                            rec["sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
                            out.unlink()
                    except BudgetUnreachableError as e:
                        rec = {"error": str(e)}
                    except Exception as e:  # noqa: BLE001 - the snapshot records it, a change must keep it
                        rec = {"error": f"{type(e).__name__}: {e}"}
                    doc[key] = rec
                    print(key, "sha" if "sha256" in rec else "", rec.get("error", ""), file=sys.stderr)
    return doc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.plans_snapshot")
    ap.add_argument("out", type=Path)
    ap.add_argument("--no-write", action="store_true", help="plans only, no written models")
    args = ap.parse_args(argv)
    doc = snapshot(write=not args.no_write)
    args.out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"{len(doc)} cases -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
