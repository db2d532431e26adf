"""Issue 12: IR versions ORT cannot read, notes on every degraded path, and masks that are really tested.

Each test states the user-visible case it stands for; the output-path cases are in test_paths.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autochunk_onnx import api, notes  # noqa: E402
from autochunk_onnx.compare import compare_outputs  # noqa: E402
from autochunk_onnx.inputs import load_inputs, make_inputs, padding_mask, valid_lengths  # noqa: E402
from autochunk_onnx.loader import ort_max_ir, required_ir  # noqa: E402
from cli.main import main  # noqa: E402
from models import synthetic as syn  # noqa: E402

GPT = ROOT / "models" / "examples" / "gpt_small.onnx"
TINY = ROOT / "models" / "tiny"


def _with_ir(src: Path, dst: Path, ir: int) -> Path:
    m = onnx.load(str(src), load_external_data=False)
    m.ir_version = ir
    onnx.save(m, str(dst))
    return dst


# ----------------------------------------------------------------------------- IR versions
def test_ir14_model_plans_like_ir10(tmp_path):
    """onnx 1.23 saves IR 14, which ORT 1.31 cannot load: the plan was silently worse (306 vs 128 MiB
    at L=4096, 15%). The ORT-based analyses now run on a copy at the IR ORT reads, and say so."""
    assert ort_max_ir() is not None and ort_max_ir() < 14, "this test needs an ORT that cannot read IR 14"
    shapes = ["input_ids:1x4096"]
    ref = api.optimize(_with_ir(GPT, tmp_path / "ir10.onnx", 10), None, "15%", shapes, dry_run=True)
    new = api.optimize(_with_ir(GPT, tmp_path / "ir14.onnx", 14), None, "15%", shapes, dry_run=True)
    assert ref.plan.fits and new.plan.fits
    assert new.plan.final.peak_bytes == ref.plan.final.peak_bytes
    assert new.plan.original.peak_bytes == ref.plan.original.peak_bytes
    assert any("IR version 14 lowered" in n for n in new.notes), new.notes
    assert not any("IR version" in n for n in ref.notes)


def test_ir14_model_verifies_and_keeps_its_ir(tmp_path):
    """Verification runs the IR-14 model and its chunked copy in ORT; the written model keeps IR 14."""
    src = tmp_path / "ab.onnx"
    m = syn.attention_block(d_model=32, heads=2)
    m.ir_version = 14
    onnx.save(m, str(src))
    out = tmp_path / "o.onnx"
    r = CliRunner().invoke(main, ["optimize", str(src), str(out), "-b", "30%", "-s", "x:1x256x32"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    assert "note: IR version 14 lowered to" in r.stderr
    assert onnx.load(str(out)).ir_version == 14


def test_model_that_needs_a_newer_ir_exits_2(tmp_path):
    """Opset 28 needs IR 14: lowering would be a lie, so it is refused with the reason."""
    m = syn.attention_block(d_model=32, heads=2)
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 28
    m.ir_version = 14
    assert required_ir(m)[0] == 14
    src = tmp_path / "new.onnx"
    onnx.save(m, str(src))
    r = CliRunner().invoke(main, ["optimize", str(src), str(tmp_path / "o.onnx"), "-b", "30%", "-s", "x:1x256x32"],
                           catch_exceptions=False)
    assert r.exit_code == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "needs IR version 14" in line and "opset 28" in line, line
    assert not (tmp_path / "o.onnx").exists()


# ----------------------------------------------------------------------------- notes
def test_degraded_note_is_strict_in_tests_and_carried_otherwise(monkeypatch):
    """Under the suite a degraded note raises unless expected; outside it is collected per call."""
    with pytest.raises(notes.UnexpectedNote):
        notes.note("something degraded")
    with notes.expected("degraded"), notes.collect() as sink:
        notes.note("something degraded")
        notes.note("something degraded")
        notes.note("ir lowered", kind=notes.CHANGED)
    assert [n.text for n in sink] == ["something degraded", "ir lowered"]
    monkeypatch.setenv("AUTOCHUNK_STRICT", "0")
    with notes.collect() as sink:
        notes.note("quietly")
    assert [n.text for n in sink] == ["quietly"]


def test_failed_ort_analysis_is_a_note_in_result_and_on_stderr(tmp_path, monkeypatch):
    """The estimate's ORT analysis failing (as IR 14 did) is said, in the API result and on stderr."""
    import onnxruntime

    ort_max_ir()  # probed (and cached) before ORT is made to refuse everything

    def refuse(*args, **kwargs):
        raise RuntimeError("simulated refusal")
    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    src = tmp_path / "ab.onnx"
    onnx.save(syn.attention_block(d_model=32, heads=2), str(src))
    with notes.expected("cannot load"):
        m, _ = api.estimate(src, ["x:1x256x32"])
        r = CliRunner().invoke(main, ["estimate", str(src), "-s", "x:1x256x32"], catch_exceptions=False)
    assert any("cannot load" in n for n in m.notes)
    assert r.exit_code == 0
    assert "autochunk-onnx: note: ONNX Runtime cannot load the model for the estimate" in r.stderr
    assert "simulated refusal" in r.stderr


# ----------------------------------------------------------------------------- masks
def test_padding_masks_differ_per_row_and_pair_masks_are_outer_products():
    assert list(valid_lengths(3, 64)) == sorted(set(valid_lengths(3, 64)), reverse=True)
    assert all(0 < v < 64 for v in valid_lengths(3, 64))
    m = padding_mask("attention_mask", (3, 64), np.dtype(np.int64))
    assert [int(r.sum()) for r in m] == list(valid_lengths(3, 64))
    assert all((r[: r.sum()] == 1).all() and (r[r.sum():] == 0).all() for r in m)
    feeds = make_inputs(str(TINY / "evoformer_tiny.onnx"),
                        {"msa": (1, 4, 48, 16), "pair": (1, 48, 48, 8), "msa_mask": (1, 4, 48), "pair_mask": (1, 48, 48)})
    res = feeds["msa_mask"][0, 0]
    assert 0 < res.sum() < 48 and (feeds["msa_mask"][0] == res).all()
    assert np.array_equal(feeds["pair_mask"][0], np.outer(res, res))
    ones = make_inputs(str(TINY / "evoformer_tiny.onnx"), {"msa": (1, 4, 48, 16), "pair": (1, 48, 48, 8),
                                                           "msa_mask": (1, 4, 48), "pair_mask": (1, 48, 48)},
                       pad_masks=False)
    assert ones["pair_mask"].all()


def test_nan_or_inf_where_the_original_is_finite_is_a_mismatch():
    ref = {"y": np.array([1.0, 2.0, 3.0, np.inf], np.float32)}
    for bad in (np.nan, np.inf, -np.inf):
        got = {"y": np.array([1.0, bad, 3.0, np.inf], np.float32)}
        d = compare_outputs(ref, got, atol=np.inf, rtol=np.inf)[0]
        assert not d.ok and d.mismatches == 1, d
    assert compare_outputs(ref, {"y": ref["y"].copy()})[0].ok  # equal infinities are equal


L, D, C = 16, 8, 4  # length, width, chunk of the hand-built loop


def _key_masked_attention() -> onnx.ModelProto:
    """y = softmax(x x^T + key_mask) x, the mask [1, L] applied along the keys."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, L, D])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, L])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, L, D])
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(-1e4, np.float32), "big_neg"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1")]
    nodes = [helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Sub", ["one", "mf"], ["inv"]), helper.make_node("Mul", ["inv", "big_neg"], ["neg"]),
             helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1])]
    return nodes, inits, [x, mask], [y]


def _attention_original() -> onnx.ModelProto:
    nodes, inits, ins, outs = _key_masked_attention()
    nodes += [helper.make_node("Unsqueeze", ["neg", "ax1"], ["km"]),  # [1, 1, L]: along the keys
              helper.make_node("MatMul", ["x", "xt"], ["s"]), helper.make_node("Add", ["s", "km"], ["s2"]),
              helper.make_node("Softmax", ["s2"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "x"], ["y"])]
    g = helper.make_graph(nodes, "orig", ins, outs, initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _attention_wrongly_chunked() -> onnx.ModelProto:
    """A Loop over query rows that slices the key mask along the query axis: right only when the
    mask is all ones."""
    nodes, inits, ins, outs = _key_masked_attention()
    inits += [numpy_helper.from_array(np.array(C, np.int64), "c"), numpy_helper.from_array(np.array(L // C, np.int64), "n"),
              numpy_helper.from_array(np.array([0], np.int64), "ax0"), numpy_helper.from_array(np.array([2], np.int64), "ax2"),
              numpy_helper.from_array(np.array([1, L, D], np.int64), "yshape")]
    body_nodes = [helper.make_node("Mul", ["i", "c"], ["st0"]), helper.make_node("Add", ["st0", "c"], ["en0"]),
                  helper.make_node("Unsqueeze", ["st0", "ax0"], ["st"]), helper.make_node("Unsqueeze", ["en0", "ax0"], ["en"]),
                  helper.make_node("Slice", ["x", "st", "en", "ax1"], ["xc"]),
                  helper.make_node("MatMul", ["xc", "xt"], ["sc"]),
                  helper.make_node("Slice", ["neg", "st", "en", "ax1"], ["mc"]),  # the chunk's part of the KEY mask...
                  helper.make_node("Unsqueeze", ["mc", "ax2"], ["qm"]),  # ... applied along the queries
                  helper.make_node("Add", ["sc", "qm"], ["sc2"]), helper.make_node("Softmax", ["sc2"], ["pc"], axis=-1),
                  helper.make_node("MatMul", ["pc", "x"], ["yc"]), helper.make_node("Identity", ["cond"], ["cond_out"])]
    body = helper.make_graph(body_nodes, "body",
                             [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                              helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                             [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("yc", TensorProto.FLOAT, [1, C, D])])
    nodes += [helper.make_node("Loop", ["n", ""], ["stacked"], body=body),  # [n, 1, C, D]
              helper.make_node("Transpose", ["stacked"], ["tr"], perm=[1, 0, 2, 3]),
              helper.make_node("Reshape", ["tr", "yshape"], ["y"])]
    g = helper.make_graph(nodes, "wrong", ins, outs, initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_wrongly_chunked_mask_is_caught_with_padded_masks_only(tmp_path):
    """Proof that the default masks exercise a mask: the same wrong loop passes with all-ones masks."""
    orig, wrong = tmp_path / "orig.onnx", tmp_path / "wrong.onnx"
    onnx.save(_attention_original(), str(orig))
    onnx.save(_attention_wrongly_chunked(), str(wrong))
    shapes = {"x": (1, L, D), "attention_mask": (1, L)}
    padded = api.verify(orig, wrong, feeds=make_inputs(str(orig), shapes), measure_latency=False)
    ones = api.verify(orig, wrong, feeds=make_inputs(str(orig), shapes, pad_masks=False), measure_latency=False)
    assert ones.ok, ones.diffs
    assert not padded.ok, padded.diffs
    by_default = api.verify(orig, wrong, [f"x:1x{L}x{D}", f"attention_mask:1x{L}"], measure_latency=False)
    assert not by_default.ok


def test_save_inputs_keeps_the_padded_masks(tmp_path):
    src = tmp_path / "orig.onnx"
    onnx.save(_attention_original(), str(src))
    saved = tmp_path / "in.npz"
    r = CliRunner().invoke(main, ["verify", str(src), str(src), "-s", f"x:1x{L}x{D}", "-s", f"attention_mask:1x{L}",
                                  "--save-inputs", str(saved)], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    feeds = load_inputs(str(saved))
    assert set(feeds) == {"x", "attention_mask"}
    assert 0 < feeds["attention_mask"].sum() < L
    bad = CliRunner().invoke(main, ["verify", str(src), str(src), "-s", f"x:1x{L}x{D}", "-s", f"attention_mask:1x{L}",
                                    "--save-inputs", "/dev/null"], catch_exceptions=False)
    assert bad.exit_code == 2
