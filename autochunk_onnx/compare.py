"""Compare the chunked model's outputs with the original's, and say clearly where they differ.

Rule, element-wise, with a = reference: |a - b| <= atol + rtol * |a| (as numpy.isclose, not
symmetric: the reference decides the scale). Defaults by the reference dtype: float32/float64
atol 1e-4 rtol 1e-3; float16/bfloat16 atol 1e-2 rtol 1e-2; integers and bool exact (tolerances
given by the caller apply to floating outputs only: an index that is off by one is wrong).
NaN in both at one place is equal (a chunked model that keeps the original's NaNs is faithful),
NaN in one only is a mismatch; equal infinities are equal. A missing or extra output, or a
shape or dtype difference, is a mismatch with a note.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_TINY = np.finfo(np.float64).tiny


@dataclass
class OutputDiff:
    """How one output differs; `ok` is the verdict, `note` explains a structural problem."""

    name: str
    shape: tuple[int, ...] | None  # the reference's shape (the got's if only got has it)
    dtype: str
    max_abs: float
    max_rel: float
    mismatches: int
    total: int
    ok: bool
    note: str = ""


def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind in "fc" or dtype.name == "bfloat16"


def default_tolerances(dtype: np.dtype) -> tuple[float, float]:
    """(atol, rtol) for a reference of this dtype: exact for integers and bool."""
    if dtype.name in ("float16", "bfloat16"):
        return 1e-2, 1e-2
    if _is_float(dtype):
        return 1e-4, 1e-3
    return 0.0, 0.0


def _as_f64(x: np.ndarray) -> np.ndarray:
    if x.dtype.kind == "c":
        return x.astype(np.complex128)
    return x.astype(np.float64)


def _diff_stats(a: np.ndarray, b: np.ndarray, atol: float, rtol: float, exact: bool) -> tuple[float, float, int, str]:
    """(max_abs, max_rel, mismatches, note) for two arrays of one shape."""
    if a.size == 0:
        return 0.0, 0.0, 0, ""
    af, bf = _as_f64(a), _as_f64(b)
    nan_a, nan_b = np.isnan(af), np.isnan(bf)
    both_nan = nan_a & nan_b
    one_nan = nan_a ^ nan_b
    equal = (af == bf) | both_nan  # covers equal infinities
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(af - bf)
        diff = np.where(equal, 0.0, diff)
        if exact:
            bad = ~equal
        else:
            bad = ~equal & ~(diff <= atol + rtol * np.abs(af))  # NaN diff (one NaN, inf-inf) is bad
        # a NaN or Inf where the original is finite is wrong under any tolerance (even atol=inf)
        lost = np.isfinite(af) & ~np.isfinite(bf)
        bad = bad | lost
        finite = ~(nan_a | nan_b)
        d = diff[finite]
        max_abs = float(d.max()) if d.size else 0.0
        rel = d / np.maximum(np.abs(af[finite]), _TINY)
        max_rel = float(rel.max()) if rel.size else 0.0
    if math.isnan(max_abs):  # inf - inf of opposite signs
        max_abs = math.inf
    if math.isnan(max_rel):
        max_rel = math.inf
    notes = []
    n_one_nan = int(one_nan.sum())
    if n_one_nan:
        notes.append(f"{n_one_nan} NaN in one output only")
    n_lost = int(lost.sum()) - int((lost & nan_b).sum())
    if n_lost:
        notes.append(f"{n_lost} Inf where the original is finite")
    return max_abs, max_rel, int(bad.sum()), "; ".join(notes)


def compare_outputs(
    ref: dict[str, np.ndarray],
    got: dict[str, np.ndarray],
    atol: float | None = None,
    rtol: float | None = None,
) -> list[OutputDiff]:
    """One OutputDiff per output name in ref (in ref's order), then any output only in got."""
    diffs: list[OutputDiff] = []
    for name, a in ref.items():
        a = np.asarray(a)
        if name not in got:
            diffs.append(OutputDiff(name, tuple(a.shape), str(a.dtype), math.nan, math.nan, a.size, a.size, False,
                                    "missing in the compared outputs"))
            continue
        b = np.asarray(got[name])
        if a.shape != b.shape:
            diffs.append(OutputDiff(name, tuple(a.shape), str(a.dtype), math.nan, math.nan, max(a.size, b.size),
                                    max(a.size, b.size), False, f"shape {tuple(b.shape)} != reference {tuple(a.shape)}"))
            continue
        d_atol, d_rtol = default_tolerances(a.dtype)
        exact = not _is_float(a.dtype)
        use_atol = d_atol if (exact or atol is None) else atol
        use_rtol = d_rtol if (exact or rtol is None) else rtol
        notes = []
        if a.dtype != b.dtype:
            notes.append(f"dtype {b.dtype} != reference {a.dtype}")
        if not exact and not _is_float(b.dtype):
            exact = True
        max_abs, max_rel, bad, note = _diff_stats(a, b, use_atol, use_rtol, exact)
        if note:
            notes.append(note)
        ok = bad == 0 and a.dtype == b.dtype
        diffs.append(OutputDiff(name, tuple(a.shape), str(a.dtype), max_abs, max_rel, bad, int(a.size), ok,
                                "; ".join(notes)))
    for name, b in got.items():
        if name not in ref:
            b = np.asarray(b)
            diffs.append(OutputDiff(name, tuple(b.shape), str(b.dtype), math.nan, math.nan, b.size, b.size, False,
                                    "not in the reference outputs"))
    return diffs


def all_ok(diffs: list[OutputDiff]) -> bool:
    return all(d.ok for d in diffs)


def _fmt_float(x: float) -> str:
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:.3g}"


def format_diffs(diffs: list[OutputDiff]) -> str:
    """An aligned text table: output, shape, dtype, max abs, max rel, mismatches/total, OK/FAIL, note."""
    header = ["output", "shape", "dtype", "max abs", "max rel", "mismatches", "result"]
    rows = []
    for d in diffs:
        shape = "x".join(str(s) for s in d.shape) if d.shape is not None else "?"
        rows.append([
            d.name, f"[{shape}]", d.dtype, _fmt_float(d.max_abs), _fmt_float(d.max_rel),
            f"{d.mismatches}/{d.total}", "OK" if d.ok else "FAIL",
        ])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    right = {3, 4, 5}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    for r, d in zip(rows, diffs):
        text = line(r)
        if d.note:
            text += f"  ({d.note})"
        out.append(text)
    return "\n".join(out)
