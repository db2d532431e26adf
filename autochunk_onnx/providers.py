"""ONNX Runtime execution providers: short names, and whether what was asked for really ran.

onnxruntime-gpu lists CUDA among the available providers even where no GPU or CUDA library is
usable, and then runs on CPU without a word. So a requested provider is checked twice: before any
work against the providers this ORT build has, and after the runs against `session.get_providers()`
(what the session really used). A miss is exit 2 unless the user allows the fallback.
"""
from __future__ import annotations

import functools

from . import notes
from .errors import BadInputError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
SHORT = {
    "cpu": CPU,
    "cuda": CUDA,
    "trt": "TensorrtExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


def resolve(names: list[str] | str | None, allow_fallback: bool = False) -> list[str] | None:
    """Full ORT names for short or full, any-case names ('cuda,cpu' or a list); None stays None (auto).

    Unknown names and providers this ORT build lacks raise BadInputError (exit 2); with
    `allow_fallback` a missing one is dropped with a note instead (CPU is kept as the last resort).
    """
    if names is None:
        return None
    import onnxruntime as ort

    if isinstance(names, str):
        names = [names]
    items = [p.strip() for n in names for p in str(n).split(",") if p.strip()]
    if not items:
        return None
    known = {p.lower(): p for p in ort.get_all_providers()}
    available = set(ort.get_available_providers())
    out: list[str] = []
    for item in items:
        full = SHORT.get(item.lower()) or known.get(item.lower()) or known.get(item.lower() + "executionprovider")
        if full is None:
            raise BadInputError(f"--providers: unknown provider {item!r} (short names: {', '.join(sorted(SHORT))}; "
                                f"or a full ONNX Runtime name such as CUDAExecutionProvider)")
        if full not in available:
            msg = (f"provider {full} is not in this onnxruntime build (available: {', '.join(sorted(available))})")
            if not allow_fallback:
                raise BadInputError(f"--providers: {msg}; pass --allow-fallback to run on what is available")
            notes.note(f"{msg}: skipped (--allow-fallback)", kind=notes.CHANGED)
            continue
        if full != CPU and not probe(full):
            msg = f"provider {full} is listed by this onnxruntime build but a session cannot use it (no device or libraries)"
            if not allow_fallback:
                raise BadInputError(f"--providers: {msg}; pass --allow-fallback to run on what is available")
            notes.note(f"{msg}: falling back (--allow-fallback)", kind=notes.CHANGED)
            continue
        if full not in out:
            out.append(full)
    if CPU not in out:
        out.append(CPU)  # ORT places ops the requested provider lacks on CPU anyway; say it in the list
    return out


@functools.lru_cache(maxsize=None)
def probe(provider: str) -> bool:
    """Whether a session on a one-node model really runs on `provider` (onnxruntime-gpu lists CUDA
    even without a GPU, then quietly uses CPU): checked before any work, so a miss costs seconds."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    so = ort.SessionOptions()
    so.log_severity_level = 4
    ort.set_default_logger_severity(4)  # ORT logs a failed provider load itself, in several lines
    try:
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=[provider, CPU])
    except Exception:  # noqa: BLE001 - any failure to create it means the provider is not usable
        return False
    finally:
        ort.set_default_logger_severity(2)  # ORT's default: warnings
    return provider in sess.get_providers()


def check_active(requested: list[str] | None, active: list[str], allow_fallback: bool, what: str) -> None:
    """Raise (exit 2) when a requested provider was not really used by the session (ORT fell back)."""
    if not requested:
        return  # auto: CUDA when really active, else CPU, as documented; the report names what ran
    missed = [p for p in requested if p != CPU and p not in active]
    if not missed:
        return
    msg = f"{', '.join(missed)} requested but ONNX Runtime ran {what} on {', '.join(active) or 'nothing'}"
    if not allow_fallback:
        raise BadInputError(f"{msg} (CUDA libraries or device missing?); pass --allow-fallback to accept that")
    notes.note(f"{msg} (--allow-fallback)", kind=notes.CHANGED)
