"""A short differential fuzz run (bench/fuzz.py) and checks that it can fail.

Random valid graphs (models/random_graphs.py) are optimized at random budgets and must equal the
original in ONNX Runtime, at the pinned length and at a second one. Long runs are by hand
(`make fuzz`, 1,000 seeds); this keeps 50 of them in every test run.
"""
from __future__ import annotations

import dataclasses
import faulthandler
import os
import signal
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from autochunk_onnx import dimrules, ops  # noqa: E402
from bench import fuzz as fuzz_module  # noqa: E402
from bench.fuzz import fuzz, parse_seeds, pick_budget  # noqa: E402
from models.random_graphs import at_length, random_model, seq_length  # noqa: E402

SEEDS = list(range(0, 50))


def test_short_fuzz_run_finds_no_mismatch_or_crash():
    s = fuzz(SEEDS, timeout_s=60, say=lambda _line: None)
    assert not s.failures, "\n".join(r.line() for r in s.failures)
    # not vacuous: most cases must really have been rewritten into loops and compared
    assert s.with_loops >= 0.6 * len(SEEDS), s.line()
    assert s.count("chunked") >= 0.4 * len(SEEDS), s.line()


# Seeds that once failed outside the short range: a mask shared by two layers, built where first
# used, whose Less node a later loop took in while an earlier loop still read its output.
REGRESSIONS = [1677, 2376]


def test_regression_seeds():
    s = fuzz(REGRESSIONS, timeout_s=60, say=lambda _line: None)
    assert not s.failures, "\n".join(r.line() for r in s.failures)
    assert s.with_loops == len(REGRESSIONS), s.line()


def _shifts_by_pad(model: onnx.ModelProto) -> bool:
    """The model has a Pad with a negative pad (a same-size shift along a dim)."""
    inits = {t.name: t for t in model.graph.initializer}
    return any(n.op_type == "Pad" and n.input[1] in inits and (numpy_helper.to_array(inits[n.input[1]]) < 0).any()
               for n in model.graph.node)


def test_fuzzer_catches_the_old_pad_rule(monkeypatch):
    """Not vacuous: with the Pad rule it found wrong (same size = chunkable, though pads (+1, -1)
    shift the rows) the fuzzer must report mismatches on models that shift with Pad."""
    monkeypatch.setitem(ops.REGISTRY, ("", "Pad"), dataclasses.replace(ops.lookup("", "Pad"), rule=dimrules.same_size_only))
    seeds = [s for s in range(400) if _shifts_by_pad(random_model(s)[0])][:8]
    assert len(seeds) == 8
    s = fuzz(seeds, timeout_s=60, say=lambda _line: None)
    assert s.count("MISMATCH") >= 1, [r.line() for r in s.results]


@pytest.mark.parametrize("how, reason", [("hang", "timeout"), ("segfault", "died of SIGSEGV")])
def test_a_hang_or_a_segfault_is_one_crash(monkeypatch, how, reason):
    """Each case runs in a forked child: what kills or stalls it is reported, the run goes on."""
    def bad_case(*args, **kwargs):
        if how == "hang":
            time.sleep(30)
        faulthandler.disable()  # pytest's: it would print the child's stack
        os.kill(os.getpid(), signal.SIGSEGV)

    monkeypatch.setattr(fuzz_module, "run_case", bad_case)
    s = fuzz([3, 4], timeout_s=1, say=lambda _line: None)
    assert [r.status for r in s.results] == ["CRASH", "CRASH"]
    assert all(reason in r.reason for r in s.results), [r.reason for r in s.results]


@pytest.mark.parametrize("seed", [0, 7, 123])
def test_random_model_is_deterministic_and_valid(seed):
    a, shapes = random_model(seed)
    b, _ = random_model(seed)
    assert a.SerializeToString() == b.SerializeToString()
    onnx.checker.check_model(a, full_check=True)
    sess = ort.InferenceSession(a.SerializeToString(), providers=["CPUExecutionProvider"])
    s1 = seq_length(a, shapes)
    for sh in [shapes] + ([at_length(a, shapes, s1, s1 + 9)] if s1 else []):
        feeds = {i.name: np.ones(sh[i.name], {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                                              "tensor(int64)": np.int64, "tensor(bool)": np.bool_}[i.type])
                 for i in sess.get_inputs()}
        assert sess.run(None, feeds)


def test_seed_ranges_and_budgets_are_seeded():
    assert parse_seeds("0-3,7,9-10") == [0, 1, 2, 3, 7, 9, 10]
    assert [pick_budget(s, "random") for s in range(20)] == [pick_budget(s, "random") for s in range(20)]
    assert all(b.endswith("%") for b in (pick_budget(s, "random") for s in range(50)))


def test_extended_generator_covers_the_new_ops_and_keeps_old_seeds():
    """--extended: 2-D Conv, GroupNormalization, opset-23 Attention, If and Loop inside the input
    model, long sequences; seeds it leaves alone build the very same model as before."""
    ops, long_seq = set(), 0
    for seed in range(60):
        m, shapes = random_model(seed, extended=True)
        ops |= {n.op_type for n in m.graph.node}
        ops |= {n.op_type + ":2d" for n in m.graph.node if n.op_type == "Conv"
                and any(a.name == "kernel_shape" and len(a.ints) == 2 for a in n.attribute)}
        long_seq += max(max(v) for v in shapes.values()) >= 256
        if "conv2d" not in m.doc_string and "control" not in m.doc_string and "attention23" not in m.doc_string:
            assert m.SerializeToString() == random_model(seed)[0].SerializeToString()
    assert {"Conv:2d", "GroupNormalization", "Attention", "If", "Loop"} <= ops, ops
    assert long_seq >= 3


EXTENDED_SEEDS = [1, 3, 6, 10, 18, 29, 30, 36, 37, 5007, 5017]  # each uses a new block; 5007 is float16 at seq 293


def test_extended_fuzz_run_finds_no_mismatch_or_crash():
    s = fuzz(EXTENDED_SEEDS, timeout_s=90, say=lambda _line: None, extended=True)
    assert not s.failures, "\n".join(r.line() for r in s.failures)
    assert s.with_loops >= 0.5 * len(EXTENDED_SEEDS), s.line()


def test_float16_third_opinion_rejects_a_wrong_output():
    """The float32 comparison forgives accumulation order, not a wrong value."""
    m, shapes = next((m, s) for m, s in (random_model(k) for k in range(200))
                     if m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16)
    sess = fuzz_module.session(m.SerializeToString())
    feeds = fuzz_module.make_feeds(sess, shapes, 0)
    want = fuzz_module.run(sess, feeds)
    assert fuzz_module.as_near_as_original(m, feeds, want, want)
    wrong = {k: (v[..., ::-1] if v.ndim else v).copy() for k, v in want.items()}
    assert not fuzz_module.as_near_as_original(m, feeds, want, wrong)


def test_estimate_miss_is_reported_apart_from_outputs():
    """An estimate off by more than 15% (and over the noise floor) is an estimate miss, not a failure."""
    assert fuzz_module._miss("original", 10 << 20, 20 << 20).startswith("original: estimated 10.0 MiB, measured 20.0 MiB")
    assert fuzz_module._miss("original", 19 << 20, 20 << 20) == ""
    assert fuzz_module._miss("original", 1 << 20, 3 << 20) == ""  # below EST_MIN_BYTES: noise
    r = fuzz_module.CaseResult(1, "chunked", est_miss="original: estimated 10.0 MiB, measured 20.0 MiB (-50%)")
    s = fuzz_module.Summary([r], 1.0)
    assert not s.failures and len(s.est_misses("original")) == 1 and "1 original" in s.line()
