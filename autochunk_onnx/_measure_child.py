"""Child process of `measure.measure`: runs one model in a fresh process and reports as JSON.

A fresh process per model is what makes the peak figure mean something: the heap holds nothing
from a previous model, and VmHWM can be reset just before the run. Usage:

    python -m autochunk_onnx._measure_child WORKDIR

With `"mode": "latency"` in the request it times several models interleaved instead (`_latency`).
WORKDIR holds `request.json` and `feeds.npz`; the child writes `result.json` (and the outputs to
the requested .npz). Errors are reported in result.json as one line, never as a traceback.
Only numpy and onnxruntime are imported here, to keep the process small and start fast.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import json
import os
import statistics
import sys
import time
import traceback
import zipfile
from typing import Any

import numpy as np

_MEMORY_WORDS = ("failed to allocate", "bad_alloc", "out of memory", "cudaerrormemoryallocation")


def save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """np.savez with arbitrary names (np.savez(**d) breaks on a name like 'file')."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)


def load_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _CudaMemInfo:
    """Device memory in use via cudaMemGetInfo (libcudart through ctypes), or unavailable.

    Works on the current device's primary context, which is the one ORT's CUDA EP uses.
    """

    def __init__(self) -> None:
        self.lib = None
        candidates = ["libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so"]
        found = ctypes.util.find_library("cudart")
        if found:
            candidates.append(found)
        for site in sys.path:  # pip wheels nvidia-cuda-runtime-cu1x
            candidates += sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "lib", "libcudart.so*")))
            candidates += sorted(glob.glob(os.path.join(site, "nvidia", "cuda_runtime", "lib", "libcudart.so*")))
        for name in candidates:
            try:
                lib = ctypes.CDLL(name)
                lib.cudaMemGetInfo.argtypes = [ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
                lib.cudaMemGetInfo.restype = ctypes.c_int
                self.lib = lib
                self.name = name
                break
            except (OSError, AttributeError):
                continue

    def used(self) -> int | None:
        if self.lib is None:
            return None
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        if self.lib.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) != 0:
            return None
        return int(total.value - free.value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _model_source(req: dict[str, Any], so, path: str | None = None, ir_version: int | None = None) -> str | bytes:
    """The model's path, or its bytes at a lowered IR version (onnx 1.23 saves IR 14, which ORT 1.31
    does not load; the parent checked that the model uses nothing newer). External data is then
    found relative to the model's own folder."""
    path = path or req["model_path"]
    ir_version = ir_version if path != req.get("model_path") else req.get("ir_version")
    if not ir_version:
        return path
    import onnx

    model = onnx.load(path, load_external_data=False)
    model.ir_version = int(ir_version)
    so.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                os.path.dirname(os.path.abspath(path)))
    return model.SerializeToString()


def _run(req: dict[str, Any], workdir: str) -> dict[str, Any]:
    import onnxruntime as ort

    feeds = load_npz(os.path.join(workdir, "feeds.npz"))
    providers: list[str] = req["providers"]
    so = ort.SessionOptions()
    # Arena and memory pattern off: every tensor is a malloc/free of its own, so RSS follows the
    # live activations instead of an arena that keeps its high-water blocks.
    so.enable_cpu_mem_arena = False
    so.enable_mem_pattern = False
    so.log_severity_level = 3
    provider_args: list[Any] = []
    for p in providers:
        if p == "CUDAExecutionProvider":
            # Grow the CUDA arena by exactly what is asked, so what it holds after the runs is
            # the peak of live device tensors (plus fragmentation), not the next power of two.
            provider_args.append((p, {"arena_extend_strategy": "kSameAsRequested"}))
        else:
            provider_args.append(p)
    gpu_eps = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
    cuda_info = _CudaMemInfo() if any(p in providers for p in gpu_eps) else None
    try:
        source = _model_source(req, so)
        sess = ort.InferenceSession(source, sess_options=so, providers=provider_args)
    except Exception as exc:
        return {"error": {"stage": "load", "message": _first_line(exc)}}
    active = sess.get_providers()
    on_cuda = any(p in active for p in gpu_eps)

    def run_once() -> list[np.ndarray]:
        return sess.run(None, feeds)

    used_before = cuda_info.used() if (on_cuda and cuda_info) else None
    try:
        out = run_once()  # warm-up: lazy allocations, kernel selection, thread pool start
    except Exception as exc:
        return {"error": {"stage": "run", "message": _first_line(exc)}, "providers": active}
    del out

    note = ""
    try:
        if on_cuda:
            out = run_once()
            used_after = cuda_info.used() if cuda_info else None
            if used_before is None or used_after is None:
                peak, method = -1, "cuda-unmeasured"
                note = "libcudart not found or cudaMemGetInfo failed"
            else:
                peak, method = max(0, used_after - used_before), "cuda-arena-memgetinfo"
        else:
            reset = _reset_hwm()
            rss_before = _proc_status_kib("VmRSS")
            out = run_once()
            hwm = _proc_status_kib("VmHWM")
            if reset:
                peak, method = max(0, hwm - rss_before) * 1024, "cpu-rss-hwm"
            else:
                peak, method = -1, "cpu-unmeasured"
                note = "/proc/self/clear_refs not writable: VmHWM cannot be reset"
        out_names = [o.name for o in sess.get_outputs()]
        outputs = dict(zip(out_names, out))
        del out
        # Latency with the session options users run with (arena and memory pattern on): the
        # memory-measuring options above make every run pay fresh page faults. repeats=0: memory
        # only (verification times both models interleaved in one process instead, see _latency).
        if not on_cuda and int(req["repeats"]) > 0:
            del sess
            fast = ort.SessionOptions()
            fast.log_severity_level = 3
            sess = ort.InferenceSession(_model_source(req, fast), sess_options=fast, providers=provider_args)
            run_once()
        latencies: list[float] = []
        for _ in range(int(req["repeats"])):
            t0 = time.perf_counter()
            r = run_once()
            latencies.append(time.perf_counter() - t0)
            del r
    except Exception as exc:
        return {"error": {"stage": "run", "message": _first_line(exc)}, "providers": active}

    outputs_path = None
    if req.get("outputs_path"):
        outputs_path = req["outputs_path"]
        save_npz(outputs_path, outputs)
    return {
        "peak_bytes": int(peak),
        "latency_s": statistics.median(latencies) if latencies else float("nan"),
        "latencies_s": latencies,
        "providers": active,
        "method": method,
        "outputs_path": outputs_path,
        "note": note,
    }


def _latency(req: dict[str, Any], workdir: str) -> dict[str, Any]:
    """Several models in this one process, ORT's default session options, runs interleaved.

    This is the latency users see: arena and memory pattern on, one warm-up run per model, then
    rounds of one run of each model, the order alternating (A B, B A, ...) so that drift of the
    machine (other jobs, clock, page cache) hits every model alike. Rounds: `iterations`, or, with
    `time_target_s`, as many as fit that time (at least `iterations`, at most `max_iterations`).
    Progress lines ("progress DONE TOTAL") go to stdout for the parent, at most twice a second.
    """
    import onnxruntime as ort

    feeds = load_npz(os.path.join(workdir, "feeds.npz"))
    sessions = []
    for path, ir in zip(req["paths"], req.get("ir_versions") or [None] * len(req["paths"])):
        so = ort.SessionOptions()  # defaults: what users run with
        so.log_severity_level = 3
        try:
            sessions.append(ort.InferenceSession(_model_source(req, so, path, ir), sess_options=so,
                                                 providers=req["providers"]))
        except Exception as exc:
            return {"error": {"stage": "load", "message": f"{os.path.basename(path)}: {_first_line(exc)}"}}
    n = len(sessions)
    warm: list[float] = []
    try:
        for _ in range(int(req.get("warmup", 1))):
            for s in sessions:  # lazy allocations, kernel choice, thread pool start
                t0 = time.perf_counter()
                s.run(None, feeds)
                warm.append(time.perf_counter() - t0)
        iterations = int(req.get("iterations") or 0)
        target = float(req.get("time_target_s") or 0.0)
        cap = int(req.get("max_iterations") or 10_000)
        total = iterations if target <= 0 else None
        runs: list[list[float]] = [[] for _ in range(n)]
        start = last_said = time.perf_counter()
        r = 0
        while r < cap and (r < iterations or (target > 0 and time.perf_counter() - start < target)):
            order = range(n) if r % 2 == 0 else range(n - 1, -1, -1)
            for i in order:
                t0 = time.perf_counter()
                out = sessions[i].run(None, feeds)
                runs[i].append(time.perf_counter() - t0)
                del out
            r += 1
            if req.get("progress") and time.perf_counter() - last_said >= 0.5:
                last_said = time.perf_counter()
                print(f"progress {r} {total or '?'}", flush=True)
    except Exception as exc:
        return {"error": {"stage": "run", "message": _first_line(exc)}}
    if r == 0:
        return {"error": {"stage": "run", "message": "no timed round (iterations 0 and no time target)"}}
    med = [statistics.median(x) for x in runs]
    round_ratios = [statistics.median(b / a for a, b in zip(runs[0], runs[i]) if a > 0) for i in range(n)]
    return {
        "medians_s": med, "mins_s": [min(x) for x in runs], "maxs_s": [max(x) for x in runs], "runs_s": runs,
        "rounds": r, "warmup": int(req.get("warmup", 1)), "warmup_s": warm,
        "ratios": [m / med[0] if med[0] > 0 else None for m in med],
        "round_ratio_medians": round_ratios,
        "providers": [s.get_providers() for s in sessions],
        "cpu_count": os.cpu_count(),
    }


def main(argv: list[str]) -> int:
    workdir = argv[1]
    with open(os.path.join(workdir, "request.json")) as f:
        req = json.load(f)
    try:
        result = _latency(req, workdir) if req.get("mode") == "latency" else _run(req, workdir)
    except MemoryError:
        result = {"error": {"stage": "run", "message": "out of memory (MemoryError)"}}
    except Exception as exc:  # a bug here: report it in one line, keep the traceback for debugging
        result = {"error": {"stage": "internal", "message": _first_line(exc), "traceback": traceback.format_exc()}}
    if "error" in result:
        msg = result["error"]["message"].lower()
        if any(w in msg for w in _MEMORY_WORDS):
            result["error"]["stage"] = "memory"
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(result, f)
    return 3 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
