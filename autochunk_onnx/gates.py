"""Regression gates: fail a build (exit 5) when memory or latency regress, outputs still matching.

A gate compares one measured figure with a limit the user gave: `max_mem_ratio` (chunked peak /
original peak), `max_latency_ratio` (median chunked / median original, interleaved timing) and
`max_peak` (chunked peak in bytes). A gate whose figure could not be measured fails: a build must
not pass on a number nobody saw.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Gate:
    name: str  # "max_mem_ratio", "max_latency_ratio", "max_peak"
    flag: str  # the CLI flag, for messages
    limit: float
    measured: float | None  # None: not measured (a failed gate)
    ok: bool

    def line(self) -> str:
        """One line saying which gate and the measured figure."""
        if self.measured is None:
            return f"{self.flag} {_fmt(self.name, self.limit)}: not measurable here, so the gate fails"
        verdict = "passed" if self.ok else "FAILED"
        return f"{self.flag} {_fmt(self.name, self.limit)} {verdict}: measured {_fmt(self.name, self.measured)}"


def _fmt(name: str, v: float) -> str:
    if name == "max_peak":
        return f"{int(v)} B ({v / 2**20:.1f} MiB)"
    return f"{v:.3f}"


def check(mem_ratio: float | None, latency_ratio: float | None, chunked_peak: int | None, *,
          max_mem_ratio: float | None = None, max_latency_ratio: float | None = None,
          max_peak: int | None = None) -> list[Gate]:
    """One Gate per limit given, in flag order."""
    gates = []
    for name, flag, limit, value in (("max_mem_ratio", "--max-mem-ratio", max_mem_ratio, mem_ratio),
                                     ("max_latency_ratio", "--max-latency-ratio", max_latency_ratio, latency_ratio),
                                     ("max_peak", "--max-peak", max_peak, chunked_peak)):
        if limit is None:
            continue
        measured = None if value is None or (isinstance(value, float) and math.isnan(value)) or value < 0 else value
        gates.append(Gate(name, flag, float(limit), measured, measured is not None and measured <= limit))
    return gates
