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
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

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
    """CUDA then CPU where onnxruntime-gpu lists CUDA (it may still fall back), else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [_CUDA, _CPU] if _CUDA in available else [_CPU]


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

    keep_outputs: save the measured run's outputs (by output name) to `outputs_path`, or to a new
    temporary .npz that the caller owns (its path is in the result).
    Raises BadInputError when the model cannot be loaded or run with these feeds (ORT's one-line
    message), AutochunkError when the child is killed (out of memory) or runs past timeout_s.
    """
    if not os.path.isfile(model_path):
        raise BadInputError(f"model file not found: {model_path}")
    if repeats < 1:
        raise BadInputError(f"repeats must be >= 1, got {repeats}")
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
        with open(os.path.join(workdir, "request.json"), "w") as f:
            json.dump(request, f)
        env = dict(os.environ, **_MALLOC_ENV)
        # the child imports this package; make it importable wherever the parent found it
        pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "autochunk_onnx._measure_child", workdir],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise AutochunkError(
                f"measuring {model_path} ran past {timeout_s:g} s and was stopped"
            ) from None
        result_file = os.path.join(workdir, "result.json")
        result = None
        if os.path.isfile(result_file):
            with open(result_file) as f:
                result = json.load(f)

    if (result is None or "error" in result) and keep_outputs and outputs_path and os.path.isfile(outputs_path):
        os.unlink(outputs_path)  # the empty placeholder made above; nothing was written to it
    if result is None:
        raise AutochunkError(_death_message(model_path, proc.returncode, proc.stderr))
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
        latency_s=float(result["latency_s"]),
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
        return f"measuring {model_path}: the child process died ({name})"
    lines = [ln for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    tail = lines[-1].strip() if lines else "no message"
    return f"measuring {model_path}: the child process exited with code {returncode}: {tail}"
