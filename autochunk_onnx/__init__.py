"""autochunk-onnx: cut activation memory of long-sequence ONNX models by chunked Loops.

Pipeline (one module a step): loader -> shapes -> estimate -> chunkflow (dimrules) -> search ->
select (costmodel) -> planner (schedule) -> rewrite -> save -> verify (measure, compare) -> report.
"""
from .api import estimate, load, optimize, verify  # noqa: F401

__version__ = "0.1.0"
