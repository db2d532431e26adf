"""autochunk-onnx: cut activation memory of long-sequence ONNX models by chunked Loops.

Pipeline (one module a step): loader -> shapes (graph) -> peak (the estimate) -> chunkflow -> search
-> select (costmodel) -> planner (schedule; returns a plan.Plan) -> rewrite -> save -> verify
(measure, compare) -> report. What each op does is one row of the registry in ops.py (dim rules in
dimrules.py, kernel scratch and FLOPs in kernels.py); shared graph utilities are in graphutil.py.

    import autochunk_onnx as ac
    res = ac.optimize("model.onnx", None, "20%", "input_ids:1x4096")  # res.model: the rewritten ModelProto
"""
from .api import (Loaded, ModelInfo, OptimizeResult, VerifyReport, estimate, inspect, load, optimize,  # noqa: F401
                  verify)
from .errors import (AutochunkError, BadInputError, BudgetUnreachableError, GateError,  # noqa: F401
                     VerificationError)

__version__ = "0.1.0"
__all__ = ["optimize", "estimate", "verify", "inspect", "load", "OptimizeResult", "VerifyReport", "ModelInfo",
           "Loaded", "AutochunkError", "BadInputError", "BudgetUnreachableError", "VerificationError", "GateError",
           "__version__"]
