"""autochunk-onnx: cut activation memory of long-sequence ONNX models by chunked Loops.

Pipeline (one module a step): loader -> shapes (graph) -> peak (the estimate) -> chunkflow -> search
-> select (costmodel) -> planner (schedule; returns a plan.Plan) -> rewrite -> save -> verify
(measure, compare) -> report. What each op does is one row of the registry in ops.py (dim rules in
dimrules.py, kernel scratch and FLOPs in kernels.py); shared graph utilities are in graphutil.py.
"""
from .api import estimate, load, optimize, verify  # noqa: F401

__version__ = "0.1.0"
