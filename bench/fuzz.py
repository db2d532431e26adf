"""Differential fuzzer: random graphs, optimized at random budgets, checked equal in ONNX Runtime.

    python -m bench.fuzz --seeds 0-999 [--budget-mode random|ladder] [--budget 20%] [-v]

Why: the rewriter's correctness rests on per-op rules and on the Loop it emits; random valid
graphs (`models/random_graphs.py`) reach combinations no hand-written test does. Each seed fixes
the model, the budget, the second sequence length and the inputs, so `--seeds N -v` replays one
case exactly. Per case: build, optimize through the Python API (`best_effort`, no verification:
the comparison here runs in-process on CPU), check the written model with `onnx.checker`
(`full_check`), run both models in ORT on seeded inputs and compare them with the tool's own rule
(`autochunk_onnx.compare`), then again at a second length of the `seq` dim when it is dynamic.
A float16 model that differs gets a second opinion against the original rounded to float16 after
every node (`rounded_per_node` says why); the summary counts the cases that needed it.

Each case runs in a forked child (`--in-process` for debuggers), so a segfault in ORT or a hang
is one CRASH and the run goes on.

Verdicts: `chunked` (a plan that fits, verified), `unchanged` (the budget held without a loop),
`unreachable` (exit-3 style; the best partial plan is still written and verified), `MISMATCH`,
`CRASH` (any exception from the tool, a model the checker or ORT refuses, a timeout), `ORT_CRASH`
(the case's process died of a signal, and the same case passes with the fuzzer's sessions at
ORT_ENABLE_EXTENDED: ONNX Runtime's level-3 optimizers crash on a valid model) and `INVALID` (the
generator built a model ORT cannot run: a fuzzer bug, never the tool's). An output that differs
under the tool's tolerances gets the second opinions of `second_opinion` (each names why it is
still right; the summary counts them). Exit code 1 when any case is MISMATCH, CRASH, ORT_CRASH or
INVALID.
"""
from __future__ import annotations

import argparse
import faulthandler
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from autochunk_onnx import api
from autochunk_onnx._measure_child import _proc_status_kib, _reset_hwm
from autochunk_onnx.compare import compare_outputs
from autochunk_onnx.errors import BudgetUnreachableError
from autochunk_onnx.inputs import padding_mask
from models.random_graphs import VOCAB, at_length, random_model, seq_length

LADDER = ("50%", "30%", "20%", "10%")
FAILED = ("MISMATCH", "CRASH", "ORT_CRASH", "INVALID")
EST_TOLERANCE = 0.15  # an estimate further than this from the measured peak is an estimate miss
EST_MIN_BYTES = 8 << 20  # below this the RSS method's noise (heap, page granularity) dominates
_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
       "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


@dataclass
class CaseResult:
    """The verdict on one seed, with what is needed to read it in one line."""

    seed: int
    status: str
    budget: str = ""
    regions: int = 0
    seconds: float = 0.0
    reason: str = ""
    blocks: str = ""
    est_miss: str = ""  # "original: ..." (the estimate of the input model) or "chunked: ..." (the plan's prediction)

    @property
    def failed(self) -> bool:
        return self.status in FAILED

    def line(self) -> str:
        extra = f": {self.reason}" if self.reason else ""
        extra += f" [estimate miss: {self.est_miss}]" if self.est_miss else ""
        return (f"seed {self.seed}: {self.status} (budget {self.budget}, {self.regions} region(s), "
                f"{self.seconds:.2f} s; {self.blocks}){extra}")


class CaseTimeout(BaseException):
    """A case ran past --timeout (BaseException: no `except Exception` in the tool may swallow it)."""


def parse_seeds(text: str) -> list[int]:
    """`0-999`, `5`, `1,4,9-12`: the seeds to run, in order."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    return seeds


def pick_budget(seed: int, mode: str) -> str:
    """The case's budget, as a percentage of the estimated peak; seeded, independent of the model."""
    if mode == "ladder":
        return LADDER[seed % len(LADDER)]
    rng = np.random.default_rng([seed, 1])
    if rng.random() < 0.25:
        return f"{int(rng.integers(5, 91))}%"
    return LADDER[int(rng.integers(0, len(LADDER)))]


def second_length(seed: int, s1: int) -> int:
    """Another length of `seq` (shorter, longer, sometimes tiny), never the pinned one."""
    rng = np.random.default_rng([seed, 2])
    s2 = int(rng.choice([rng.integers(4, 16), rng.integers(16, s1 + 1), rng.integers(s1 + 1, s1 + 80)]))
    return s2 + 1 if s2 == s1 else s2


def make_feeds(sess: ort.InferenceSession, shapes: dict[str, list[int]], seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs: normals for floats, ids below the embedding size; masks padded per batch row
    (even seeds, the tool's own `padding_mask`) or random with every row attending somewhere."""
    feeds = {}
    for k, i in enumerate(sess.get_inputs()):
        rng = np.random.default_rng([seed, 3, k])
        shape, dtype = shapes[i.name], _NP[i.type]
        if "mask" in i.name and seed % 2 == 0:
            feeds[i.name] = padding_mask(i.name, tuple(shape), np.dtype(dtype))
        elif "mask" in i.name:
            m = rng.random(shape) < 0.8
            m[..., 0] = True  # every row attends somewhere
            feeds[i.name] = m.astype(dtype)
        elif dtype in (np.int64, np.int32):
            feeds[i.name] = rng.integers(0, VOCAB, size=shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[i.name] = rng.random(shape) < 0.5
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def session(path: str | bytes, optimize: bool = True) -> ort.InferenceSession:
    """A one-thread CPU session; `optimize=False` runs the graph as written (ORT_DISABLE_ALL)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = OPT_LEVEL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 4
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


OPT_LEVEL = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # EXTENDED in the replay of a case ORT crashed on
CRASH_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE)
TRACEBACKS = False  # --traceback: print the stack of every exception a case meets
ESTIMATE_EVERY = 1  # --estimate-every N: measure peaks for the estimate check on every Nth seed only
EXTENDED = False  # --extended: 2-D Conv, GroupNormalization, opset-23 Attention, If/Loop, long sequences


def first_error(e: BaseException) -> str:
    if TRACEBACKS:
        traceback.print_exception(e)
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def differ(ref: dict, got: dict, where: str) -> str | None:
    """None when every output matches under the tool's tolerance rule, else one line saying how not."""
    for d in compare_outputs(ref, got):
        if not d.ok:
            note = f"; {d.note}" if d.note else ""
            return (f"{where}: output {d.name!r} differs (max abs {d.max_abs:.3g}, max rel {d.max_rel:.3g}, "
                    f"{d.mismatches}/{d.total} out of tolerance{note})")
    return None


def run_case(seed: int, budget_mode: str, tmp: Path, budget: str | None = None, keep: Path | None = None) -> CaseResult:
    """Build, optimize, check and compare one seed; never raises (but for KeyboardInterrupt)."""
    t0 = time.perf_counter()
    res = CaseResult(seed, "CRASH", budget or pick_budget(seed, budget_mode))
    try:
        _run_case(res, tmp, keep)
    except CaseTimeout:
        res.status, res.reason = "CRASH", "timeout"
    res.seconds = time.perf_counter() - t0
    for p in case_paths(tmp, seed):
        p.unlink(missing_ok=True)
    return res


def case_paths(folder: Path, seed: int) -> tuple[Path, Path]:
    """Where one case's original and chunked models are written."""
    return folder / f"s{seed}.onnx", folder / f"s{seed}.chunked.onnx"


def _run_case(res: CaseResult, tmp: Path, keep: Path | None) -> None:
    try:
        model, shapes = random_model(res.seed, EXTENDED)
        res.blocks = model.doc_string.removeprefix("blocks: ")
        src, out = case_paths(tmp, res.seed)
        onnx.save(model, str(src))
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            onnx.save(model, str(case_paths(keep, res.seed)[0]))
        orig = session(str(src))
        feeds = make_feeds(orig, shapes, res.seed)
        want = run(orig, feeds)
    except Exception as e:  # noqa: BLE001 - the generator's fault, reported as such
        res.status, res.reason = "INVALID", f"generator: {first_error(e)}"
        return
    try:
        r = api.optimize(src, out, res.budget, shapes, verify_output=False, best_effort=True)
    except BudgetUnreachableError:
        res.status = "unreachable"
        return
    except Exception as e:  # noqa: BLE001 - anything else the tool raises on a valid model is a bug
        res.reason = f"optimize: {first_error(e)}"
        return
    res.regions = len(r.plan.regions)
    if keep is not None:
        onnx.save(onnx.load(str(out)), str(case_paths(keep, res.seed)[1]))
    verdict = "unreachable" if not r.plan.fits else "chunked" if r.plan.regions else "unchanged"
    problem = _check_written(res, out, model, shapes, feeds, want, orig)
    if problem is None:
        res.status = verdict
        if res.seed % ESTIMATE_EVERY == 0:
            res.est_miss = _estimate_miss(src, out, shapes, feeds, r.plan)
    else:
        res.status, res.reason = problem


def measured_peak(path: str, feeds: dict) -> int:
    """Peak activation bytes of one run, measured here as `autochunk_onnx.measure` does in its child
    (arena off, large blocks mmapped: see `use_mmap_for_large_blocks`; VmHWM reset before the run)."""
    so = ort.SessionOptions()
    so.enable_cpu_mem_arena = False
    so.enable_mem_pattern = False
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 4
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    sess.run(None, feeds)
    if not _reset_hwm():
        return -1
    before = _proc_status_kib("VmRSS")
    out = sess.run(None, feeds)
    peak = (_proc_status_kib("VmHWM") - before) * 1024
    del out
    return peak


def _miss(what: str, est: int, got: int) -> str:
    if got <= 0 or max(est, got) < EST_MIN_BYTES or abs(est - got) <= EST_TOLERANCE * got:
        return ""
    return f"{what}: estimated {est / 2**20:.1f} MiB, measured {got / 2**20:.1f} MiB ({(est - got) / got:+.0%})"


def _estimate_miss(src: Path, out: Path, shapes: dict, feeds: dict, plan) -> str:
    """The original's estimate and the plan's predicted peak against measured peaks (at the pinned
    length); '' when both are within EST_TOLERANCE or too small to measure."""
    try:
        est = api.estimate(src, shapes)[1].peak_bytes
        misses = [_miss("original", est, measured_peak(str(src), feeds))]
        if plan.regions:
            misses.append(_miss("chunked", plan.final.peak_bytes, measured_peak(str(out), feeds)))
    except Exception as e:  # noqa: BLE001 - the outputs were checked already; say why there is no figure
        return f"not measured: {first_error(e)}"
    return "; ".join(m for m in misses if m)


def _check_written(res: CaseResult, out: Path, model: onnx.ModelProto, shapes: dict, feeds: dict, want: dict,
                   orig: ort.InferenceSession) -> tuple[str, str] | None:
    """The written model must pass the checker, load, and equal the original at both lengths."""
    try:
        onnx.checker.check_model(str(out), full_check=True)
    except Exception as e:  # noqa: BLE001
        return "CRASH", f"checker: {first_error(e)}"
    try:
        chunked = session(str(out))
    except Exception as e:  # noqa: BLE001
        return "CRASH", f"ORT refuses the chunked model: {first_error(e)}"
    s1 = seq_length(model, shapes)
    written = onnx.load(str(out))
    problem = _compare(res, model, chunked, written, feeds, want, f"seq {s1}" if s1 else "static shapes")
    if problem is not None or s1 is None:
        return problem
    s2 = second_length(res.seed, s1)
    try:
        feeds2 = make_feeds(orig, at_length(model, shapes, s1, s2), res.seed + 1)
        want2 = run(orig, feeds2)
    except Exception as e:  # noqa: BLE001
        return "INVALID", f"generator at seq {s2}: {first_error(e)}"
    return _compare(res, model, chunked, written, feeds2, want2, f"seq {s2} (pinned {s1})")


def _compare(res: CaseResult, model: onnx.ModelProto, chunked: ort.InferenceSession, written: onnx.ModelProto,
             feeds: dict, want: dict, where: str) -> tuple[str, str] | None:
    """Run the chunked model and compare under the tool's tolerances; an output that differs gets
    the second opinions of `second_opinion` (each a stated reason, never a wider tolerance)."""
    try:
        got = run(chunked, feeds)
    except Exception as e:  # noqa: BLE001
        return "CRASH", f"ORT on the chunked model at {where}: {first_error(e)}"
    bad = differ(want, got, where)
    if bad:
        why = second_opinion(model, written, feeds, want, got, where)
        if why:
            res.reason = f"{why} ({bad})"
            return None
    return ("MISMATCH", bad) if bad else None


def second_opinion(model: onnx.ModelProto, written: onnx.ModelProto, feeds: dict, want: dict, got: dict,
                   where: str) -> str:
    """Why an output that differs under the tool's tolerances is still right, or '' (a mismatch).

    1. `unoptimized`: the chunked model equals the original run as written (ORT_DISABLE_ALL),
       under the same tolerances. Why: ORT's level-3 rewrites (NCHWc Conv layout, fusions) reach
       the main graph but not a Loop body, so a chunked Conv runs the plain kernel while the
       original runs the NCHWc one; an ill-conditioned op after it (GroupNormalization of an image
       whose channel mean is 20x its spread, seed 7108 of --extended) turns that other summation
       order into 5e-4 on outputs of magnitude 3. The original without those rewrites is the
       graph's own definition, so matching it is the faithful result.
    2. float16 only (`rounded_per_node`, then `exact_in_float32` and `as_near_as_original`): equal
       to the original rounded where the chunked model rounds; or the rewrite is exact once both
       graphs compute in float32 AND its float16 result is no further from float32 than twice the
       original's own error + the fp16 atol (seed 8676: 0.213 vs 0.151 on outputs of magnitude 24,
       where one fp16 ulp is 0.0156: 14 ulps against 10).
    """
    plain = run(session(model.SerializeToString(), optimize=False), feeds)
    if differ({k: plain[k] for k in want}, got, where) is None:
        gap = max(float(np.abs(want[k].astype(np.float64) - plain[k]).max()) for k in want if want[k].size)
        return f"equal to the original run unoptimized (ORT's optimized original is {gap:.3g} from it)"
    if not _has_fp16(model):
        return ""
    strict = run(rounded_per_node(model), feeds)
    if differ({k: strict[k] for k in want}, got, where) is None:
        return "float16: equal to the original rounded per node"
    if not exact_in_float32(model, written, feeds, where):
        return ""
    near = as_near_as_original(model, feeds, want, got)
    return f"float16: exact in float32 and {near}" if near else ""


def _widened(feeds: dict) -> dict:
    return {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in feeds.items()}


def exact_in_float32(model: onnx.ModelProto, written: onnx.ModelProto, feeds: dict, where: str) -> bool:
    """The chunked graph computes the original's function: both widened to float32 agree under the
    float32 tolerances (run as written, so ORT's own rewrites cannot tell them apart)."""
    a = run(session(float32_copy(model).SerializeToString(), optimize=False), _widened(feeds))
    b = run(session(float32_copy(written).SerializeToString(), optimize=False), _widened(feeds))
    return differ(a, b, where) is None


FP16_SLACK = 2.0  # the chunked model may be this many times further from float32 than the original


def as_near_as_original(model: onnx.ModelProto, feeds: dict, want: dict, got: dict) -> str:
    """A third opinion for float16 at long lengths, where kernels accumulate in another order per
    chunk: both models against the same graph in float32. '' unless every output of the chunked
    model is within FP16_SLACK x the original's own error (+ the fp16 atol) of float32."""
    ref = run(session(float32_copy(model).SerializeToString()), _widened(feeds))
    worst, worst_err = "", -1.0
    for k in want:
        if want[k].dtype != np.float16:
            continue
        r = ref[k].astype(np.float64)
        e_orig = float(np.abs(want[k].astype(np.float64) - r).max())
        e_got = float(np.abs(got[k].astype(np.float64) - r).max())
        if not e_got <= FP16_SLACK * e_orig + 1e-2:
            return ""
        if e_got > worst_err:
            worst_err = e_got
            worst = f"as near float32 as the original (max abs error {e_got:.3g} vs {e_orig:.3g})"
    return worst


def float32_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph computing in float32: float16 weights, types, Cast targets and constants widened."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT

    def widen(t: onnx.TensorProto) -> None:
        if t.data_type == f16:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))

    def walk(g: onnx.GraphProto) -> None:
        for t in g.initializer:
            widen(t)
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            for tt in (vi.type.tensor_type, vi.type.sequence_type.elem_type.tensor_type):  # Loop bodies carry sequences
                if tt.elem_type == f16:
                    tt.elem_type = f32
        for n in g.node:
            for a in n.attribute:
                if a.name in ("to", "dtype") and a.type == onnx.AttributeProto.INT and a.i == f16:
                    a.i = f32
                elif a.type == onnx.AttributeProto.TENSOR:
                    widen(a.t)
                elif a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
    walk(m.graph)
    return m


def _has_fp16(model: onnx.ModelProto) -> bool:
    return any(vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for vi in model.graph.input)


def rounded_per_node(model: onnx.ModelProto) -> ort.InferenceSession:
    """The original with every node output also a graph output, so ORT rounds each to float16.

    Why: ORT on CPU runs float16 nodes that lack a float16 kernel in float32 and drops the Casts
    between neighbours, so a chain of them keeps float32 precision in the original; a Loop
    boundary rounds to float16 there. Either result is right; exposing every output makes the
    original round where the chunked model does, and that comparison has to hold.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    have = {o.name for o in m.graph.output}
    for n in m.graph.node:
        for o in n.output:
            if o and o not in have and types.get(o) == onnx.TensorProto.FLOAT16:
                m.graph.output.append(onnx.helper.make_tensor_value_info(o, types[o], None))
    return session(m.SerializeToString())


@dataclass
class Summary:
    """Counts over a run; `line()` is the one-line report."""

    results: list
    seconds: float

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def with_loops(self) -> int:
        """Cases whose written model has at least one verified Loop region."""
        return sum(r.regions > 0 and not r.failed for r in self.results)

    @property
    def failures(self) -> list:
        return [r for r in self.results if r.failed]

    def est_misses(self, what: str) -> list:
        """Cases whose `what` ("original" or "chunked") estimate missed the measured peak."""
        return [r for r in self.results if what + ":" in r.est_miss]

    def line(self, seeds: str = "") -> str:
        partial = sum(r.status == "unreachable" and r.regions > 0 for r in self.results)
        second = [r for r in self.results if r.reason and not r.failed]  # accepted by a second opinion
        fp16 = sum(r.reason.startswith("float16") for r in second)
        where = f" (seeds {seeds})" if seeds else ""
        return (f"fuzz: {len(self.results)} cases{where}, {self.count('chunked')} chunked, "
                f"{self.count('unchanged')} unchanged, {self.count('unreachable')} unreachable "
                f"({partial} partly chunked), {self.count('MISMATCH')} mismatches, {self.count('CRASH')} crashes, "
                f"{self.count('ORT_CRASH')} ORT crashes (fine at ORT_ENABLE_EXTENDED), "
                f"{self.count('INVALID')} invalid, estimate misses (>{EST_TOLERANCE:.0%}): "
                f"{len(self.est_misses('original'))} original, {len(self.est_misses('chunked'))} chunked, "
                f"{self.seconds:.1f} s"
                + (f" ({len(second)} cases right only by a second opinion: {len(second) - fp16} equal to the "
                   f"original unoptimized, {fp16} float16)" if second else ""))


def fuzz(seeds: list[int], budget_mode: str = "random", budget: str | None = None, timeout_s: int = 120,
         verbose: bool = False, keep: Path | None = None, say: Callable[[str], None] = print,
         isolate: bool = True, extended: bool = False, estimate_every: int = 1) -> Summary:
    """Run every seed, each in its own forked process by default (a segfault in ORT or the tool
    is then one CRASH, not the end of the run) and bounded by `timeout_s`."""
    global EXTENDED, ESTIMATE_EVERY
    EXTENDED, ESTIMATE_EVERY = extended, max(1, estimate_every)
    t0 = time.perf_counter()
    results = []
    use_mmap_for_large_blocks()
    one = run_forked if isolate and hasattr(os, "fork") else run_alarmed
    if one is run_forked:
        _warm_up()
    with tempfile.TemporaryDirectory(prefix="autochunk-fuzz-") as tmp:
        for seed in seeds:
            r = one(seed, budget_mode, Path(tmp), budget, keep, timeout_s)
            results.append(r)
            if verbose or r.failed or r.est_miss:
                say(r.line())
            elif len(results) % 250 == 0:
                say(f"... {len(results)} cases, {sum(x.failed for x in results)} failed, {time.perf_counter() - t0:.0f} s")
    return Summary(results, time.perf_counter() - t0)


def use_mmap_for_large_blocks() -> None:
    """What `measure` sets in its child's environment, for this process and its forks: every block
    over 64 KiB is its own mmap, returned when freed, so RSS follows the live tensors."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 65536)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 0)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: the figures are noisier, the comparison still runs


def _warm_up() -> None:
    """Pay the one-time costs (lazy imports, ORT's environment) before forking, not in every child."""
    import onnxruntime.tools.symbolic_shape_infer  # noqa: F401 - imported lazily by shapes.py
    model, shapes = random_model(0, EXTENDED)
    sess = session(model.SerializeToString())
    run(sess, make_feeds(sess, shapes, 0))


def run_forked(seed: int, budget_mode: str, tmp: Path, budget: str | None, keep: Path | None,
               timeout_s: int) -> CaseResult:
    """`run_case` in a child process: a crash or a hang there is reported, never inherited."""
    mp = multiprocessing.get_context("fork")
    receive, send = mp.Pipe(duplex=False)
    child = mp.Process(target=_child, args=(send, seed, budget_mode, tmp, budget, keep), daemon=True)
    t0 = time.perf_counter()
    child.start()
    send.close()
    res = None
    if receive.poll(timeout_s if timeout_s > 0 else None):
        try:
            res = receive.recv()
        except EOFError:  # died before sending
            pass
    child.join(5 if res is not None else 0)
    if child.is_alive():  # hung: in the case, or after it
        child.kill()
        child.join()
    if res is None:
        res = CaseResult(seed, "CRASH", budget or pick_budget(seed, budget_mode), seconds=time.perf_counter() - t0,
                         reason=_death(child.exitcode, timeout_s), blocks=_blocks(seed))
        for p in case_paths(tmp, seed):
            p.unlink(missing_ok=True)
        if (child.exitcode or 0) < 0 and -child.exitcode in CRASH_SIGNALS and OPT_LEVEL == ort.GraphOptimizationLevel.ORT_ENABLE_ALL:
            _replay_at_extended(res, budget_mode, tmp, budget, keep, timeout_s)
    return res


def _replay_at_extended(res: CaseResult, budget_mode: str, tmp: Path, budget: str | None, keep: Path | None,
                        timeout_s: int) -> None:
    """A case whose process died of a signal, run again with the fuzzer's sessions at
    ORT_ENABLE_EXTENDED: when it then passes, ORT's level-3 optimizers crashed on a valid model
    (ORT_CRASH, reported apart: see tests/test_fuzz.py for the reduced model)."""
    global OPT_LEVEL
    OPT_LEVEL = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    try:
        again = run_forked(res.seed, budget_mode, tmp, budget, keep, timeout_s)
    finally:
        OPT_LEVEL = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not again.failed:
        res.status = "ORT_CRASH"
        res.regions = again.regions
        res.reason = f"{res.reason} at ORT_ENABLE_ALL; at ORT_ENABLE_EXTENDED the case is {again.status}"


def _child(send, seed: int, budget_mode: str, tmp: Path, budget: str | None, keep: Path | None) -> None:
    ort.set_default_logger_severity(4)
    send.send(run_case(seed, budget_mode, tmp, budget, keep))
    send.close()


def _blocks(seed: int) -> str:
    try:
        return random_model(seed, EXTENDED)[0].doc_string.removeprefix("blocks: ")
    except Exception:  # noqa: BLE001 - only a label
        return "?"


def _death(exitcode: int | None, timeout_s: int) -> str:
    if exitcode is None or exitcode == -signal.SIGKILL:
        return f"timeout ({timeout_s} s)"
    if exitcode < 0:
        return f"the case's process died of {signal.Signals(-exitcode).name}"
    return f"the case's process exited with {exitcode} without a verdict"


def run_alarmed(seed: int, budget_mode: str, tmp: Path, budget: str | None, keep: Path | None,
                timeout_s: int) -> CaseResult:
    """`run_case` in this process (--in-process: for debuggers), bounded by SIGALRM."""
    use_alarm = timeout_s > 0 and hasattr(signal, "SIGALRM")
    if use_alarm:
        old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(timeout_s)
    try:
        return run_case(seed, budget_mode, tmp, budget, keep)
    finally:
        if use_alarm:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)


def _on_alarm(signum, frame):
    raise CaseTimeout()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0-99", help="seed range(s): 0-999, 5, 1,4,9-12")
    ap.add_argument("--budget-mode", choices=("random", "ladder"), default="random",
                    help="random: 50/30/20/10%% or a random percentage per seed; ladder: 50/30/20/10%% by seed")
    ap.add_argument("--budget", help="one budget for every case (overrides --budget-mode)")
    ap.add_argument("--timeout", type=int, default=120, help="seconds per case before it counts as a crash")
    ap.add_argument("--keep", type=Path, help="write each original and chunked model to this folder (repros)")
    ap.add_argument("--traceback", action="store_true", help="print the stack of every exception (debugging)")
    ap.add_argument("--in-process", action="store_true",
                    help="run the cases in this process, not one forked child each (debuggers; a segfault ends the run)")
    ap.add_argument("--extended", action="store_true",
                    help="half the seeds also get 2-D Conv/GroupNormalization, opset-23 Attention, If/Loop, long sequences")
    ap.add_argument("--estimate-every", type=int, default=1, metavar="N",
                    help="check the estimates against measured peaks on every Nth seed (1: all)")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per case, not only failures")
    args = ap.parse_args(argv)
    faulthandler.enable()
    ort.set_default_logger_severity(4)
    global TRACEBACKS
    TRACEBACKS = args.traceback
    s = fuzz(parse_seeds(args.seeds), args.budget_mode, args.budget, args.timeout, args.verbose, args.keep,
             isolate=not args.in_process, extended=args.extended, estimate_every=args.estimate_every)
    print(s.line(args.seeds))
    for r in s.failures:
        print(f"  FAILED seed {r.seed}: {r.status}: {r.reason}")
    for r in [r for r in s.results if r.est_miss]:
        print(f"  ESTIMATE seed {r.seed} ({r.blocks}): {r.est_miss}")
    return 1 if s.failures else 0


if __name__ == "__main__":
    sys.exit(main())
