"""Parse byte sizes (`--budget`, `--max-peak`): a number with a unit, or a percentage of the peak.

Spellings (case-insensitive, spaces allowed, scientific notation allowed: `1e9B`, `1.5e3MiB`):

* decimal units with a B: `KB` = 10^3, `MB` = 10^6, `GB` = 10^9, `TB` = 10^12;
* binary units: `KiB`, `MiB`, `GiB`, `TiB` = 2^10 .. 2^40, and the one-letter `K`, `M`, `G`, `T`,
  which are binary too, as in `ulimit`, `docker --memory` and `free -g`: `4G` = 4 GiB, `4GB` = 4·10^9;
* `B` or no unit: bytes;
* `20%`: a percentage of the original model's estimated activation peak (`--budget` only).
"""
from __future__ import annotations

import re

from .errors import BadInputError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z%]*)\s*$")
SPELLINGS = "4GB (10^9-based), 4GiB or 4G (2^30-based), 512MiB, 1e9B, 1e9"


def parse_budget(text: str | int, original_peak: int | None = None, flag: str = "--budget") -> int:
    """'4GB' -> 4e9, '4G' -> 4*2^30, '1e9B' -> 1e9, '20%' -> 20% of `original_peak`."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise BadInputError(f"{flag} {text}: must be positive")
        return text
    m = _RE.match(str(text))
    if not m:
        pct = " or a percentage like 20%" if original_peak is not None or flag == "--budget" else ""
        raise BadInputError(f"{flag} {str(text)!r}: expected a size like {SPELLINGS}{pct}")
    value, unit = float(m.group(1)), m.group(2).upper()
    if unit == "%":
        if flag != "--budget":
            raise BadInputError(f"{flag} {text!r}: a percentage is not allowed here; give bytes ({SPELLINGS})")
        if not 0 < value <= 100:
            raise BadInputError(f"{flag} {text!r}: a percentage must be in (0, 100]")
        if original_peak is None:
            raise BadInputError(f"{flag} as a percentage needs the original estimate")
        return int(original_peak * value / 100)
    if unit not in _UNITS:
        raise BadInputError(f"{flag} {text!r}: unknown unit {m.group(2)!r} (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB, "
                            f"K, M, G, T{' or %' if flag == '--budget' else ''})")
    nbytes = int(value * _UNITS[unit])
    if nbytes <= 0:
        raise BadInputError(f"{flag} {text!r}: must be at least 1 byte")
    return nbytes
