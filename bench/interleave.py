"""Interleaved latency: two or more models in ONE child process, runs alternating.

The machine a benchmark runs on drifts (other jobs, frequency, page cache), so timing the
original in one process and the chunked model minutes later in another compares two machine
states. Here one fresh child process creates every session (ORT's default session options: CPU
arena and memory pattern on, as users run it), runs each once to warm up, then runs them in
rounds; the order inside a round alternates (A B C, C B A, ...) so none always runs first. The
median of each model's runs and the ratio of each median to the first model's are reported, as
well as the median of the per-round ratios.

    latency = interleaved([original, chunked_50, chunked_20], feeds, rounds=7)
    latency["ratios"]  # [1.0, median(chunked_50) / median(original), median(chunked_20) / ...]

The timing itself is `autochunk_onnx.measure.interleaved` (the same code `verify` uses); this
module keeps the bench's dict form and its round planning.
"""
from __future__ import annotations

import numpy as np

from autochunk_onnx.measure import interleaved as _interleaved

def rounds_for(per_round_s: float, target_s: float, lo: int, hi: int) -> int:
    """How many rounds fit `target_s` when one round (every model once) takes `per_round_s`."""
    if not per_round_s or per_round_s <= 0 or per_round_s != per_round_s:
        return lo
    return max(lo, min(hi, int(round(target_s / per_round_s))))


def interleaved(paths: list[str], feeds: dict[str, np.ndarray], rounds: int = 7,
                providers: list[str] | None = None, timeout_s: float = 1800) -> dict:
    """Median latency of each model over `rounds` alternating rounds in one child process.

    Returns {"medians_s": [...], "runs_s": [[...], ...], "ratios": [median(paths[i]) / median(paths[0])],
    "round_ratio_medians": [median over rounds of t_i/t_0], "ratio"/"round_ratio_median" (those of
    paths[1]), "rounds", "providers" (per session: what ORT really used), "cpu_count"}.
    Raises RuntimeError with the child's one-line reason when it fails (out of memory, ...).
    """
    try:
        lat = _interleaved(list(paths), feeds, providers, iterations=int(rounds), timeout_s=timeout_s)
    except Exception as exc:  # noqa: BLE001 - the bench records the reason and goes on
        raise RuntimeError(f"interleaved latency: {exc}") from None
    n = len(paths)
    ratios = [lat.ratio(i) for i in range(n)]
    return {
        "medians_s": lat.medians_s, "runs_s": lat.runs_s, "rounds": lat.rounds,
        "ratios": ratios, "round_ratio_medians": lat.round_ratio_medians,
        "ratio": ratios[1] if n > 1 else None,
        "round_ratio_median": lat.round_ratio_medians[1] if n > 1 else None,
        "providers": lat.providers, "cpu_count": lat.cpu_count,
    }
