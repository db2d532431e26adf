"""Interleaved latency: two or more models in ONE child process, runs alternating.

The machine a benchmark runs on drifts (other jobs, frequency, page cache), so timing the
original in one process and the chunked model minutes later in another compares two machine
states. Here one fresh child process creates every session (ORT's default session options: CPU
arena and memory pattern on, as users run it), runs each once to warm up, then runs them in
rounds; the order inside a round alternates (A B C, C B A, ...) so none always runs first. The
median of each model's runs and the ratio of each median to the first model's are reported, as
well as the median of the per-round ratios.

    latency = interleaved([original, chunked_50, chunked_20], feeds, rounds=7)
    latency["ratios"]  # [1.0, median(chunked_50) / median(original), median(chunked_20) / ...]

The child imports only numpy and onnxruntime: `python -m bench.interleave WORKDIR`.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    # np.savez(**d) breaks on names like 'file'; write the members by hand
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)


def rounds_for(per_round_s: float, target_s: float, lo: int, hi: int) -> int:
    """How many rounds fit `target_s` when one round (every model once) takes `per_round_s`."""
    if not per_round_s or per_round_s <= 0 or per_round_s != per_round_s:
        return lo
    return max(lo, min(hi, int(round(target_s / per_round_s))))


def interleaved(paths: list[str], feeds: dict[str, np.ndarray], rounds: int = 7,
                providers: list[str] | None = None, timeout_s: float = 1800) -> dict:
    """Median latency of each model over `rounds` alternating rounds in one child process.

    Returns {"medians_s": [...], "runs_s": [[...], ...], "ratios": [median(paths[i]) / median(paths[0])],
    "round_ratio_medians": [median over rounds of t_i/t_0], "ratio"/"round_ratio_median" (those of
    paths[1]), "rounds", "providers" (per session: what ORT really used), "cpu_count"}.
    Raises RuntimeError with the child's last line when it fails (out of memory, ...).
    """
    if providers is None:
        from autochunk_onnx.measure import default_providers

        providers = default_providers()
    with tempfile.TemporaryDirectory(prefix="autochunk-interleave-") as work:
        _save_npz(os.path.join(work, "feeds.npz"), feeds)
        with open(os.path.join(work, "request.json"), "w") as f:
            json.dump({"paths": [os.path.abspath(p) for p in paths], "rounds": int(rounds),
                       "providers": list(providers)}, f)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH", "")) if p)
        try:
            proc = subprocess.run([sys.executable, "-m", "bench.interleave", work], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"interleaved latency ran past {timeout_s:g} s") from None
        res_path = os.path.join(work, "result.json")
        if not os.path.isfile(res_path):
            lines = [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
            why = f"killed by signal {-proc.returncode} (out of memory?)" if proc.returncode < 0 else (
                lines[-1] if lines else f"exit code {proc.returncode}")
            raise RuntimeError(f"interleaved latency child failed: {why}")
        with open(res_path) as f:
            res = json.load(f)
    if "error" in res:
        raise RuntimeError(f"interleaved latency: {res['error']}")
    return res


def _child(work: str) -> int:
    import onnxruntime as ort

    with open(os.path.join(work, "request.json")) as f:
        req = json.load(f)
    with np.load(os.path.join(work, "feeds.npz"), allow_pickle=False) as data:
        feeds = {k: data[k] for k in data.files}
    result: dict
    try:
        sessions = []
        for p in req["paths"]:
            so = ort.SessionOptions()  # defaults: what users run with
            so.log_severity_level = 3
            sessions.append(ort.InferenceSession(p, sess_options=so, providers=req["providers"]))
        for s in sessions:  # warm-up: lazy allocations, kernel choice, thread pool
            s.run(None, feeds)
        n = len(sessions)
        runs: list[list[float]] = [[] for _ in range(n)]
        for r in range(int(req["rounds"])):
            order = range(n) if r % 2 == 0 else range(n - 1, -1, -1)
            for i in order:
                t0 = time.perf_counter()
                out = sessions[i].run(None, feeds)
                runs[i].append(time.perf_counter() - t0)
                del out
        med = [statistics.median(x) for x in runs]
        ratios = [m / med[0] if med[0] > 0 else None for m in med]
        round_ratios = [statistics.median(b / a for a, b in zip(runs[0], runs[i])) for i in range(n)]
        result = {
            "medians_s": med, "runs_s": runs, "rounds": int(req["rounds"]),
            "ratios": ratios, "round_ratio_medians": round_ratios,
            "ratio": ratios[1] if n > 1 else None,
            "round_ratio_median": round_ratios[1] if n > 1 else None,
            "providers": [s.get_providers() for s in sessions],
            "cpu_count": os.cpu_count(),
        }
    except Exception as exc:  # one line back to the parent
        text = str(exc).strip()
        result = {"error": text.splitlines()[0] if text else type(exc).__name__}
    with open(os.path.join(work, "result.json"), "w") as f:
        json.dump(result, f)
    return 0 if "error" not in result else 3


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
