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


def test_mismatch_seeds_of_the_10k_run_are_right_by_a_stated_second_opinion():
    """Seeds 7108 and 8676 of the 10,000-seed --extended run: 7108 (float32) differs from ORT's
    optimized original by 5e-4 but equals the original run unoptimized (ORT's NCHWc Conv reaches the
    main graph, not a Loop body); 8676 (float16) is exact once both graphs compute in float32."""
    s = fuzz([7108, 8676], timeout_s=90, say=lambda _line: None, extended=True)
    assert not s.failures, "\n".join(r.line() for r in s.failures)
    by = {r.seed: r for r in s.results}
    assert by[7108].regions and by[7108].reason.startswith("equal to the original run unoptimized"), by[7108].line()
    assert by[8676].regions and by[8676].reason.startswith("float16: exact in float32"), by[8676].line()


def test_second_opinions_reject_a_wrong_output_or_rewrite():
    """Neither opinion forgives a wrong value: 1% off everywhere is still a mismatch, and a written
    model whose weights differ is not exact in float32."""
    m, shapes = random_model(7108, extended=True)
    sess = fuzz_module.session(m.SerializeToString())
    feeds = fuzz_module.make_feeds(sess, shapes, 7108)
    want = fuzz_module.run(sess, feeds)
    wrong = {k: v * np.float32(1.01) for k, v in want.items()}
    assert fuzz_module.second_opinion(m, m, feeds, want, wrong, "test") == ""
    h, hshapes = random_model(8676, extended=True)
    hsess = fuzz_module.session(h.SerializeToString())
    hfeeds = fuzz_module.make_feeds(hsess, hshapes, 8676)
    assert fuzz_module.exact_in_float32(h, h, hfeeds, "test")
    bent = onnx.ModelProto()
    bent.CopyFrom(h)
    t = next(t for t in bent.graph.initializer if len(t.dims) == 2)
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float16(1.5), t.name))
    assert not fuzz_module.exact_in_float32(h, bent, hfeeds, "test")


def ort131_segv_model() -> onnx.ModelProto:
    """Seeds 1801 and 3771 of the 10,000-seed --extended run, reduced to three nodes: a float16
    MatMul by a constant weight, read inside a Loop body by a MatMul whose other operand is a
    batch-dim Transpose (perm (1, 0, 2); (1, 2, 0) crashes too, (2, 1, 0) does not). ORT 1.31
    segfaults creating the session at ORT_ENABLE_ALL and loads it at ORT_ENABLE_EXTENDED; in float32,
    or with the weight a graph input, it loads at every level."""
    from onnx import TensorProto as T, helper as h
    body = h.make_graph(
        [h.make_node("Transpose", ["a"], ["at"], perm=[1, 0, 2]), h.make_node("MatMul", ["at", "y"], ["mm"])], "body",
        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("c", T.BOOL, [])],
        [h.make_tensor_value_info("c", T.BOOL, []), h.make_tensor_value_info("mm", T.FLOAT16, [1, "n", 32])])
    g = h.make_graph(
        [h.make_node("MatMul", ["x", "w"], ["y"]), h.make_node("Loop", ["trip", ""], ["z"], body=body)], "ort131_segv",
        [h.make_tensor_value_info("x", T.FLOAT16, [32, 32]), h.make_tensor_value_info("trip", T.INT64, []),
         h.make_tensor_value_info("a", T.FLOAT16, ["n", 1, 32])],
        [h.make_tensor_value_info("z", T.FLOAT16, ["trip", 1, "n", 32])], [numpy_helper.from_array(np.ones((32, 32), np.float16), "w")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 18)], ir_version=8)


def _loads(path: str, level: str) -> int:
    import subprocess
    code = ("import onnxruntime as ort, sys\nso = ort.SessionOptions()\nso.log_severity_level = 4\n"
            f"so.graph_optimization_level = ort.GraphOptimizationLevel.{level}\n"
            "ort.InferenceSession(sys.argv[1], so, providers=['CPUExecutionProvider'])\n")
    return subprocess.run([sys.executable, "-c", code, path], capture_output=True, timeout=60).returncode


def test_reduced_ort_crash_is_still_an_ort_bug(tmp_path):
    """The ORT bug behind the fuzzer's ORT_CRASH verdicts, kept reduced: when an ORT upgrade fixes it,
    this fails and the README's 'ORT crashes' paragraph and the ORT_CRASH replay can go."""
    path = str(tmp_path / "segv.onnx")
    onnx.save(ort131_segv_model(), path)
    onnx.checker.check_model(path, full_check=True)
    assert _loads(path, "ORT_ENABLE_EXTENDED") == 0
    assert _loads(path, "ORT_ENABLE_ALL") == -signal.SIGSEGV


def test_a_case_that_crashes_ort_only_at_enable_all_is_an_ort_crash(monkeypatch):
    """A child killed by SIGSEGV is replayed with sessions at ORT_ENABLE_EXTENDED; passing there makes
    it ORT_CRASH (reported apart, still a failure); failing there leaves it a CRASH."""
    def case(seed, budget_mode, tmp, budget=None, keep=None):
        if fuzz_module.OPT_LEVEL == ort.GraphOptimizationLevel.ORT_ENABLE_ALL or seed == 4:
            faulthandler.disable()
            os.kill(os.getpid(), signal.SIGSEGV)
        return fuzz_module.CaseResult(seed, "chunked", "50%", regions=1)

    monkeypatch.setattr(fuzz_module, "run_case", case)
    s = fuzz([3, 4], timeout_s=20, say=lambda _line: None)
    assert [r.status for r in s.results] == ["ORT_CRASH", "CRASH"], [r.line() for r in s.results]
    assert "at ORT_ENABLE_EXTENDED the case is chunked" in s.results[0].reason
    assert "1 ORT crashes" in s.line() and len(s.failures) == 2


@pytest.mark.parametrize("seed", [2558, 6599])
def test_shapes_past_groupnorm_are_not_folded_from_ort_mistakes(seed):
    """12 conv2d seeds of the 10k run exited 2 on a shape hole: ORT's symbolic inference sized the
    chain after its Einsum mistake wrongly ((32, 8, 8, 8) for a (1, 8, 37, 37) Conv), onnx's stopped
    at GroupNormalization-21, and a Shape of the wrong size was folded into a constant before the
    same-shape declaration let onnx's engine go on; every tensor is sized now, the graph output as
    ORT runs it."""
    from autochunk_onnx import loader, shapes
    m, sh = random_model(seed, extended=True)
    pinned = onnx.ModelProto()
    pinned.CopyFrom(m)
    loader.pin_input_shapes(pinned, sh)
    t = shapes.infer_shapes(pinned)
    assert all(t.get(o) is not None and t[o].numel is not None for n in pinned.graph.node for o in n.output)
    sess = fuzz_module.session(m.SerializeToString())
    got = fuzz_module.run(sess, fuzz_module.make_feeds(sess, sh, seed))
    assert all(t[k].shape == v.shape for k, v in got.items())
