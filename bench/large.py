"""`make bench-large`: time and peak RSS of `estimate` and `optimize --no-verify` on a big model.

Generates `models.synthetic.big_transformer` (GPT-like decoder, all weights in one external
file, written block by block) into a temporary folder, then runs each step as its own child
process and reads that child's peak RSS from `os.wait4` (ru_maxrss, as `/usr/bin/time -v`
reports it; it also counts this parent's pages at the fork, and this parent imports nothing
but the standard library before the steps, so that is ~10 MiB at most). Targets (issue 2):
estimate < 10 s and < 500 MiB, optimize --no-verify < 30 s and < 700 MiB, for >= 1 GiB of
weights. Also checks the output: `onnx.checker` by path (full check: shape inference by path),
a fresh external data file holding every weight byte for byte, and, with --run, both models in
ONNX Runtime at a short length with equal outputs.

    python -m bench.large [--gib 1.0] [--seq 4096] [--budget 20%] [--run] [--keep DIR]

Exit status 1 when a target is missed (targets apply from 1 GiB of weights on).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_EXE = Path(sys.executable).parent / "autochunk-onnx"  # the console script, as users run it
CLI = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "autochunk_onnx"]

TARGETS = {"estimate": (10.0, 500), "optimize --no-verify": (30.0, 700)}  # seconds, MiB


def run_child(argv: list[str], env: dict | None = None) -> tuple[int, float, float, str, str]:
    """Run argv; return (exit code, wall seconds, peak RSS MiB of that child alone, stdout, stderr)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return proc.returncode, wall, usage.ru_maxrss / 1024, out.read().decode(), err.read().decode()


def _same_bytes(model_a: Path, model_b: Path) -> bool:
    """Every external tensor of b holds the bytes of the same-named tensor of a (read in blocks)."""
    import onnx

    def ext(path):
        m = onnx.load(str(path), load_external_data=False)
        res = {}
        for t in m.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                info = {e.key: e.value for e in t.external_data}
                res[t.name] = (path.parent / info["location"], int(info.get("offset", 0)), int(info["length"]))
        return res

    a, b = ext(model_a), ext(model_b)
    if set(a) != set(b):
        return False
    handles = {}
    try:
        for name, (fa, oa, la) in a.items():
            fb, ob, lb = b[name]
            if la != lb:
                return False
            for f in (fa, fb):
                handles.setdefault(f, open(f, "rb"))
            done = 0
            while done < la:
                n = min(8 << 20, la - done)
                if os.pread(handles[fa].fileno(), n, oa + done) != os.pread(handles[fb].fileno(), n, ob + done):
                    return False
                done += n
    finally:
        for h in handles.values():
            h.close()
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.large", description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0, help="GiB of external weights (default 1.0)")
    ap.add_argument("--seq", type=int, default=4096, help="pinned sequence length (default 4096)")
    ap.add_argument("--budget", default="20%", help="optimize budget (default 20%%)")
    ap.add_argument("--run", action="store_true", help="also run input and output in ORT at --run-seq and compare")
    ap.add_argument("--run-seq", type=int, default=64)
    ap.add_argument("--keep", default=None, help="write the models into this folder and keep them")
    ap.add_argument("--json", dest="json_out", default=None, help="write the figures to this JSON file")
    args = ap.parse_args(argv)

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="autochunk-large-"))
    tmp.mkdir(parents=True, exist_ok=True)
    src, out = tmp / "big.onnx", tmp / "out" / "big.chunked.onnx"
    out.parent.mkdir(exist_ok=True)
    rows, failed = [], False
    try:
        code = ("import sys; from models.synthetic import big_transformer; "
                f"big_transformer({str(src)!r}, weight_gib={args.gib})")
        rc, wall, rss, _, err = run_child([sys.executable, "-c", code])
        if rc:
            print(f"generation failed: {err.strip()}", file=sys.stderr)
            return 2
        data = src.with_name(src.name + ".data")
        gib = data.stat().st_size / 2**30
        rows.append(("generate", rc, wall, rss, None))
        shape = f"input_ids:1x{args.seq}"
        steps = [
            ("estimate", CLI + ["estimate", str(src), "-s", shape]),
            ("optimize --no-verify", CLI + ["optimize", str(src), str(out), "-s", shape, "--budget", args.budget,
                                            "--no-verify", "--json"]),
            ("checker (by path, full)", [sys.executable, "-c",
                                         f"import onnx; onnx.checker.check_model({str(out)!r}, full_check=True)"]),
        ]
        regions = None
        for name, cmd in steps:
            rc, wall, rss, so, err = run_child(cmd)
            if rc:
                print(f"{name} failed (exit {rc}): {err.strip()[-2000:]}", file=sys.stderr)
                failed = True
            if name.startswith("optimize") and rc == 0:
                regions = len(json.loads(so)["plan"]["regions"])
            rows.append((name, rc, wall, rss, TARGETS.get(name)))
        out_data = out.with_name(out.name + ".data")
        fresh = (out_data.exists() and not os.path.samefile(out_data, data)
                 and os.stat(out_data).st_nlink == 1 and _same_bytes(src, out))
        ran = None
        if args.run and not failed:
            code = (
                "import numpy as np, onnxruntime as ort, sys\n"
                f"ids = np.random.default_rng(0).integers(0, 1000, (1, {args.run_seq})).astype(np.int64)\n"
                f"a = ort.InferenceSession({str(src)!r}, providers=['CPUExecutionProvider']).run(None, {{'input_ids': ids}})[0]\n"
                f"b = ort.InferenceSession({str(out)!r}, providers=['CPUExecutionProvider']).run(None, {{'input_ids': ids}})[0]\n"
                "print(float(np.abs(a - b).max()))\n")
            rc, wall, rss, so, err = run_child([sys.executable, "-c", code])
            ran = (rc, wall, rss, so.strip() if rc == 0 else err.strip()[-500:])
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"model: big_transformer, {gib:.2f} GiB of external weights, input_ids 1x{args.seq}, budget {args.budget}; "
          f"{os.cpu_count()} CPUs")
    print(f"{'step':<26} {'exit':>4} {'time s':>8} {'peak RSS MiB':>13}  target")
    for name, rc, wall, rss, target in rows:
        verdict = ""
        if target is not None:
            ok = rc == 0 and wall < target[0] and rss < target[1]
            if gib >= 1.0:
                failed |= not ok
            verdict = f"< {target[0]:.0f} s, < {target[1]} MiB: {'PASS' if ok else 'FAIL'}"
        print(f"{name:<26} {rc:>4} {wall:>8.2f} {rss:>13.1f}  {verdict}")
    print(f"chunked regions: {regions}; output data fresh and complete: {fresh}")
    failed |= not fresh or not regions
    if ran is not None:
        rc, wall, rss, what = ran
        print(f"ORT run of both at 1x{args.run_seq}: exit {rc}, {wall:.1f} s, peak RSS {rss:.0f} MiB, max abs diff {what}")
        failed |= rc != 0
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({
            "weight_gib": gib, "seq": args.seq, "budget": args.budget, "regions": regions, "fresh": fresh,
            "steps": [{"step": n, "exit": rc, "time_s": w, "peak_rss_mib": r} for n, rc, w, r, _ in rows],
            "ort_run": None if ran is None else {"exit": ran[0], "time_s": ran[1], "peak_rss_mib": ran[2], "result": ran[3]},
        }, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
