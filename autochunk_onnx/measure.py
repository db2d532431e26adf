"""Measure a model's real peak activation memory and latency in ONNX Runtime.

Each model runs in ONE fresh child process (`python -m autochunk_onnx._measure_child`), so
nothing from an earlier model stays in the heap and the high-water mark can be reset right before
the measured run. The method (see design/method.md §3) on CPU:

* session with `enable_cpu_mem_arena=False`, `enable_mem_pattern=False`, and the child started
  with `MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0`, so every tensor above 64 KiB is its
  own mmap that goes back to the OS when freed and RSS tracks live tensors;
* one warm-up run (lazy allocations, thread pool);
* write `5` to `/proc/self/clear_refs` (VmHWM := VmRSS), read VmRSS, run, read VmHWM;
  peak = VmHWM - VmRSS before. Weights are loaded before, so they are not in the figure: it is
  the activation (and output) memory of one run. Method name "cpu-rss-hwm".

On CUDA (NOT tested on a GPU yet): the CUDA EP's arena is created with
`arena_extend_strategy=kSameAsRequested` so it grows by exactly what is requested and, as ORT's
arena never returns memory to the device during a session, the device memory it holds after the
warm-up and a measured run is the peak of live device tensors plus fragmentation. Device memory
in use is read with `cudaMemGetInfo` from libcudart (ctypes) after session creation (weights on
the device already) and after the runs; peak = the difference. It also counts cuBLAS/cuDNN
workspaces created on the first run, and, being device-wide, any other process's allocations
made meanwhile: run on an otherwise idle GPU. Method "cuda-arena-memgetinfo"; where libcudart
cannot be loaded the figure is -1 with method "cuda-unmeasured". onnxruntime-gpu silently falls
back to CPU when CUDA cannot load, so the providers REALLY active (`session.get_providers()`)
are reported, and the CPU method is used whenever CUDA is not active.
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ._measure_child import save_npz
from .errors import AutochunkError, BadInputError

_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


@dataclass
class Measurement:
    """One model's measured run: peak activation bytes (-1 if not measurable) and latency."""

    peak_bytes: int
    latency_s: float  # median of latencies_s
    latencies_s: list[float]
    providers: list[str]  # what the session really ran with, not what was asked
    method: str  # "cpu-rss-hwm", "cuda-arena-memgetinfo", "cpu-unmeasured", "cuda-unmeasured"
    outputs_path: str | None
    note: str = field(default="")

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20


def default_providers() -> list[str]:
    """CUDA then CPU where a session really runs on CUDA (onnxruntime-gpu lists it even without a
    GPU: `providers.probe` tries a one-node session), else CPU."""
    import onnxruntime as ort

    from .providers import probe

    return [_CUDA, _CPU] if _CUDA in ort.get_available_providers() and probe(_CUDA) else [_CPU]


def measure(
    model_path: str,
    feeds: dict[str, np.ndarray],
    providers: list[str] | None = None,
    repeats: int = 3,
    keep_outputs: bool = False,
    timeout_s: float = 600,
    *,
    outputs_path: str | None = None,
) -> Measurement:
    """Run `model_path` once for memory and `repeats` times for latency in a fresh child process.

    repeats=0 measures memory only (latency_s is NaN): `interleaved` times models as users run them.

    keep_outputs: save the measured run's outputs (by output name) to `outputs_path`, or to a new
    temporary .npz that the caller owns (its path is in the result).
    Raises BadInputError when the model cannot be loaded or run with these feeds (ORT's one-line
    message), AutochunkError when the child is killed (out of memory) or runs past timeout_s.
    """
    if not os.path.isfile(model_path):
        raise BadInputError(f"model file not found: {model_path}")
    if repeats < 0:
        raise BadInputError(f"repeats must be >= 0 (0: memory only), got {repeats}")
    providers = list(providers) if providers else default_providers()
    if keep_outputs and outputs_path is None:
        fd, outputs_path = tempfile.mkstemp(prefix="autochunk-outputs-", suffix=".npz")
        os.close(fd)
    if not keep_outputs:
        outputs_path = None

    with tempfile.TemporaryDirectory(prefix="autochunk-measure-") as workdir:
        save_npz(os.path.join(workdir, "feeds.npz"), feeds)
        request = {
            "model_path": os.path.abspath(model_path),
            "providers": providers,
            "repeats": int(repeats),
            "outputs_path": os.path.abspath(outputs_path) if outputs_path else None,
            "ir_version": _ir_for_ort(model_path),
        }
        result, returncode, stderr = _run_child(workdir, request, timeout_s, f"measuring {model_path}", None, _MALLOC_ENV)

    if (result is None or "error" in result) and keep_outputs and outputs_path and os.path.isfile(outputs_path):
        os.unlink(outputs_path)  # the empty placeholder made above; nothing was written to it
    if result is None:
        raise AutochunkError(_death_message(model_path, returncode, stderr))
    if "error" in result:
        err = result["error"]
        stage, msg = err.get("stage"), err.get("message", "unknown error")
        if stage == "load":
            raise BadInputError(f"onnxruntime cannot load {model_path}: {msg}")
        if stage == "run":
            raise BadInputError(f"onnxruntime failed running {model_path}: {msg}")
        if stage == "memory":
            raise AutochunkError(f"out of memory running {model_path}: {msg}")
        raise AutochunkError(f"measurement of {model_path} failed: {msg}")
    return Measurement(
        peak_bytes=int(result["peak_bytes"]),
        latency_s=float(result["latency_s"]) if result["latency_s"] is not None else float("nan"),
        latencies_s=[float(x) for x in result["latencies_s"]],
        providers=list(result["providers"]),
        method=str(result["method"]),
        outputs_path=result.get("outputs_path"),
        note=result.get("note", ""),
    )


def _ir_for_ort(model_path: str) -> int | None:
    """The IR version the child must lower the model to before ORT loads it, or None (as it is)."""
    from .loader import ir_for_ort, load_model

    try:
        model = load_model(model_path)  # the graph only: external weights stay on disk
    except BadInputError:
        return None  # not a model onnx reads: ORT's own message will say why, from the child
    ir = ir_for_ort(model)
    return ir if ir != model.ir_version else None


def _death_message(model_path: str, returncode: int, stderr: bytes) -> str:
    """One line on why the child died without a result."""
    if returncode < 0:
        sig = -returncode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        if sig == signal.SIGKILL:
            return f"measuring {model_path}: the child process was killed ({name}), most likely out of memory"
        if sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE):
            return (f"measuring {model_path}: ONNX Runtime crashed in the child process ({name}): a crash inside "
                    f"ORT, not an output that differs (ORT 1.31 segfaults at ORT_ENABLE_ALL on some float16 Loop "
                    f"bodies, see README 'ORT crashes'); try another --budget")
        return f"measuring {model_path}: the child process died ({name})"
    lines = [ln for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    tail = lines[-1].strip() if lines else "no message"
    return f"measuring {model_path}: the child process exited with code {returncode}: {tail}"


@dataclass
class Latency:
    """Interleaved timing of several models in one process (ORT default session options)."""

    paths: list[str]
    runs_s: list[list[float]]  # per model, one entry per round
    rounds: int
    warmup: int
    providers: list[list[str]]  # per session: what ORT really used
    cpu_count: int | None
    round_ratio_medians: list[float]  # per model: median over rounds of t_i / t_0
    method: str = "ort-default-interleaved"

    @property
    def medians_s(self) -> list[float]:
        return [statistics.median(r) for r in self.runs_s]

    @property
    def mins_s(self) -> list[float]:
        return [min(r) for r in self.runs_s]

    @property
    def maxs_s(self) -> list[float]:
        return [max(r) for r in self.runs_s]

    def ratio(self, i: int = 1) -> float:
        """median(model i) / median(model 0)."""
        a, b = self.medians_s[0], self.medians_s[i]
        return b / a if a > 0 else float("nan")


def interleaved(paths: list[str], feeds: dict[str, np.ndarray], providers: list[str] | None = None, *,
                iterations: int | None = None, time_target_s: float | None = None, max_iterations: int = 10_000,
                warmup: int = 1, timeout_s: float = 1800,
                progress: Callable[[int, int | None], None] | None = None) -> Latency:
    """Time `paths` the way users run them: ORT's default session options, all in ONE fresh child
    process, `warmup` untimed runs each, then rounds of one run of each model, order alternating.

    Rounds: `iterations` (default 10); with `time_target_s`, until that many seconds of timed runs
    have passed, at least `iterations` (default 3) and at most `max_iterations`. `progress(done,
    total)` is called from the child's reports (total None with a time target). Raises
    BadInputError when ORT cannot load or run a model, AutochunkError when the child dies.
    """
    for p in paths:
        if not os.path.isfile(p):
            raise BadInputError(f"model file not found: {p}")
    if iterations is not None and iterations < 1:
        raise BadInputError(f"--iterations must be >= 1, got {iterations}")
    if time_target_s is not None and time_target_s < 0:
        raise BadInputError(f"--latency-time must be >= 0 seconds, got {time_target_s:g}")
    if iterations is None:
        iterations = 3 if time_target_s else 10
    providers = list(providers) if providers else default_providers()
    with tempfile.TemporaryDirectory(prefix="autochunk-latency-") as workdir:
        save_npz(os.path.join(workdir, "feeds.npz"), feeds)
        request = {"mode": "latency", "paths": [os.path.abspath(p) for p in paths], "providers": providers,
                   "ir_versions": [_ir_for_ort(p) for p in paths],
                   "iterations": int(iterations), "time_target_s": float(time_target_s or 0.0),
                   "max_iterations": int(max_iterations), "warmup": int(warmup), "progress": progress is not None}
        result, code, err = _run_child(workdir, request, timeout_s, "timing " + ", ".join(paths), progress, env_extra={})
    if result is None:
        raise AutochunkError(_death_message(", ".join(paths), code, err))
    if "error" in result:
        stage, msg = result["error"].get("stage"), result["error"].get("message", "unknown error")
        if stage == "memory":
            raise AutochunkError(f"out of memory timing {', '.join(paths)}: {msg}")
        if stage in ("load", "run"):
            raise BadInputError(f"onnxruntime failed {'loading' if stage == 'load' else 'running'} for latency: {msg}")
        raise AutochunkError(f"latency measurement failed: {msg}")
    return Latency(paths=list(paths), runs_s=[[float(x) for x in r] for r in result["runs_s"]],
                   rounds=int(result["rounds"]), warmup=int(result["warmup"]), providers=result["providers"],
                   cpu_count=result.get("cpu_count"), round_ratio_medians=[float(x) for x in result["round_ratio_medians"]])


def _run_child(workdir: str, request: dict, timeout_s: float, what: str,
               progress: Callable[[int, int | None], None] | None, env_extra: dict[str, str]):
    """Start the child on `request`; relay its progress lines; (result or None, returncode, stderr)."""
    with open(os.path.join(workdir, "request.json"), "w") as f:
        json.dump(request, f)
    env = dict(os.environ, **env_extra)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "autochunk_onnx._measure_child", workdir], env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True)
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                parts = line.split()
                if progress and len(parts) == 3 and parts[0] == "progress":
                    progress(int(parts[1]), None if parts[2] == "?" else int(parts[2]))
            proc.wait()
        finally:
            timed_out = not timer.is_alive()
            timer.cancel()
        if timed_out and proc.returncode and proc.returncode < 0:
            raise AutochunkError(f"{what} ran past {timeout_s:g} s and was stopped")
        err.seek(0)
        stderr = err.read()
    result = None
    result_file = os.path.join(workdir, "result.json")
    if os.path.isfile(result_file):
        with open(result_file) as f:
            result = json.load(f)
    return result, proc.returncode, stderr
