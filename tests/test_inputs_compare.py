"""make_inputs/load_inputs give plausible inputs; compare_outputs catches every kind of difference."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autochunk_onnx.compare import compare_outputs, format_diffs
from autochunk_onnx.errors import BadInputError
from autochunk_onnx.inputs import load_inputs, make_inputs

VOCAB = 50


def _lm_like() -> onnx.ModelProto:
    """input_ids -> Cast -> Gather(embedding[VOCAB, 8]); attention_mask, position_ids, timestep."""
    emb = numpy_helper.from_array(np.zeros((VOCAB, 8), np.float32), "wte")
    pos = numpy_helper.from_array(np.zeros((16, 8), np.float32), "wpe")
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
        helper.make_node("Gather", ["wte", "ids32"], ["tok"]),
        helper.make_node("Gather", ["wpe", "position_ids"], ["p"]),
        helper.make_node("Add", ["tok", "p"], ["h"]),
        helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mf", "axes"], ["m3"]),
        helper.make_node("Mul", ["h", "m3"], ["y0"]),
        helper.make_node("Add", ["y0", "bias"], ["y"]),
    ]
    inits = [emb, pos, numpy_helper.from_array(np.array([-1], np.int64), "axes")]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("bias", TensorProto.FLOAT, [8]),
        helper.make_tensor_value_info("timestep", TensorProto.INT64, [1]),
        helper.make_tensor_value_info("use_cache", TensorProto.BOOL, []),
        helper.make_tensor_value_info("other_int", TensorProto.INT32, [3]),
        helper.make_tensor_value_info("half", TensorProto.FLOAT16, [2, "n"]),
    ]
    graph = helper.make_graph(nodes, "lm", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


SHAPES = {"input_ids": (2, 1000), "attention_mask": (2, 1000), "position_ids": (2, 1000), "half": (2, 5)}


def test_make_inputs_plausible_and_seeded(tmp_path) -> None:
    model = _lm_like()
    feeds = make_inputs(model, SHAPES, seed=3)
    assert set(feeds) == {"input_ids", "attention_mask", "position_ids", "bias", "timestep", "use_cache", "other_int", "half"}
    ids = feeds["input_ids"]
    assert ids.dtype == np.int64 and ids.shape == (2, 1000)
    assert ids.min() >= 0 and ids.max() < VOCAB and ids.max() > VOCAB // 2  # the whole vocab is used
    mask = feeds["attention_mask"]  # padded: each batch row valid up to its own length, zeros after
    assert mask.dtype == np.int64 and set(np.unique(mask)) == {0, 1}
    lengths = mask.sum(axis=1)
    assert len(set(lengths)) == 2 and all((row[:n] == 1).all() for row, n in zip(mask, lengths))
    np.testing.assert_array_equal(feeds["position_ids"][1], np.arange(1000))
    assert feeds["bias"].dtype == np.float32 and feeds["bias"].shape == (8,)
    assert feeds["use_cache"].dtype == np.bool_ and feeds["use_cache"].shape == () and feeds["use_cache"]
    assert 0 <= feeds["other_int"].min() and feeds["other_int"].max() < 100
    assert feeds["half"].dtype == np.float16 and feeds["half"].shape == (2, 5)
    assert 1 <= feeds["timestep"][0] < 1000
    again = make_inputs(model, SHAPES, seed=3)
    other = make_inputs(model, SHAPES, seed=4)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)
    assert not np.array_equal(feeds["input_ids"], other["input_ids"])
    # also from a path
    path = str(tmp_path / "lm.onnx")
    onnx.save(model, path)
    assert np.array_equal(make_inputs(path, SHAPES, seed=3)["input_ids"], ids)


def test_make_inputs_errors() -> None:
    model = _lm_like()
    missing = dict(SHAPES)
    del missing["input_ids"]
    with pytest.raises(BadInputError, match=r"input_ids.*'batch'"):
        make_inputs(model, missing)
    with pytest.raises(BadInputError, match="unknown input"):
        make_inputs(model, {**SHAPES, "nope": (1,)})
    with pytest.raises(BadInputError, match="fixed to 8"):
        make_inputs(model, {**SHAPES, "bias": (9,)})
    with pytest.raises(BadInputError, match="rank"):
        make_inputs(model, {**SHAPES, "input_ids": (2,)})
    bf = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [2])]))
    with pytest.raises(BadInputError, match="bfloat16"):
        make_inputs(bf, {})


def test_load_inputs(tmp_path) -> None:
    good = tmp_path / "in.npz"
    np.savez(good, input_ids=np.arange(4), mask=np.ones(3, bool))
    loaded = load_inputs(str(good))
    assert set(loaded) == {"input_ids", "mask"} and loaded["mask"].dtype == np.bool_
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    for path in (str(bad), str(tmp_path / "absent.npz")):
        with pytest.raises(BadInputError, match="cannot read inputs"):
            load_inputs(path)
    single = tmp_path / "one.npy"
    np.save(single, np.arange(3))
    with pytest.raises(BadInputError, match="npz"):
        load_inputs(str(single))


def test_compare_exact_and_perturbed() -> None:
    rng = np.random.default_rng(0)
    ref = {"logits": rng.standard_normal((2, 8, 16)).astype(np.float32), "ids": np.arange(6)}
    same = compare_outputs(ref, {k: v.copy() for k, v in ref.items()})
    assert all(d.ok and d.mismatches == 0 and d.max_abs == 0 for d in same)
    got = {k: v.copy() for k, v in ref.items()}
    got["logits"][1, 3, 5] += 0.5
    got["logits"][0, 0, 0] += 1e-6  # within tolerance
    diffs = compare_outputs(ref, got)
    assert [d.name for d in diffs] == ["logits", "ids"]
    assert not diffs[0].ok and diffs[0].mismatches == 1 and diffs[0].total == 256
    assert math.isclose(diffs[0].max_abs, 0.5, rel_tol=1e-5)
    assert diffs[1].ok
    assert compare_outputs(ref, got, atol=1.0)[0].ok  # caller's tolerance
    got["ids"][2] += 1
    d_ids = compare_outputs(ref, got, atol=10.0)[1]
    assert not d_ids.ok and d_ids.mismatches == 1  # integers stay exact
    table = format_diffs(diffs)
    print("\n" + table)
    lines = table.splitlines()
    assert "FAIL" in lines[2] and "1/256" in lines[2] and "OK" in lines[3]
    assert lines[0].index("max abs") < lines[0].index("mismatches")


def test_compare_nan_shape_dtype_missing() -> None:
    a = np.array([1.0, np.nan, 3.0, np.inf], np.float32)
    assert compare_outputs({"y": a}, {"y": a.copy()})[0].ok  # NaN at the same place, equal inf
    b = a.copy()
    b[0] = np.nan
    d = compare_outputs({"y": a}, {"y": b})[0]
    assert not d.ok and d.mismatches == 1 and "NaN" in d.note
    d = compare_outputs({"y": a}, {"y": a[:2]})[0]
    assert not d.ok and "shape" in d.note
    d = compare_outputs({"y": a}, {"y": a.astype(np.float64)})[0]
    assert not d.ok and d.mismatches == 0 and "dtype" in d.note
    diffs = compare_outputs({"y": a, "z": a}, {"y": a, "extra": a})
    assert [(x.name, x.ok) for x in diffs] == [("y", True), ("z", False), ("extra", False)]
    assert "missing" in diffs[1].note and "not in the reference" in diffs[2].note
    h = np.array([100.0, 1.0], np.float16)
    assert compare_outputs({"h": h}, {"h": h + np.float16(0.5)})[0].ok is False
    assert compare_outputs({"h": h}, {"h": np.array([100.5, 1.0], np.float16)})[0].ok  # 0.5 <= 0.01 + 1.0
    print("\n" + format_diffs(diffs))
