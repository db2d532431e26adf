"""Parse `--budget`: bytes with a unit (1000- or 1024-based) or a percentage of the original peak."""
from __future__ import annotations

import re

from .errors import BadInputError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 2**10, "M": 2**20, "G": 2**30}
_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([A-Za-z%]*)\s*$")


def parse_budget(text: str, original_peak: int | None = None) -> int:
    """'4GB' -> 4e9, '512MiB' -> 512*2^20, '20%' -> 20% of `original_peak`."""
    m = _RE.match(str(text))
    if not m:
        raise BadInputError(f"--budget {text!r}: expected a size like 4GB, 512MiB, 1e9B... or a percentage like 20%")
    value, unit = float(m.group(1)), m.group(2).upper()
    if unit == "%":
        if not 0 < value <= 100:
            raise BadInputError(f"--budget {text!r}: a percentage must be in (0, 100]")
        if original_peak is None:
            raise BadInputError("--budget as a percentage needs the original estimate")
        return int(original_peak * value / 100)
    if unit not in _UNITS:
        raise BadInputError(f"--budget {text!r}: unknown unit {m.group(2)!r} (use B, KB, MB, GB, KiB, MiB, GiB or %)")
    if value <= 0:
        raise BadInputError(f"--budget {text!r}: must be positive")
    return int(value * _UNITS[unit])


def is_percentage(text: str) -> bool:
    return str(text).strip().endswith("%")
