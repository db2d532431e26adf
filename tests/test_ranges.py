"""Length ranges (issue 15): `--input-shape input_ids:1x32..256` plans one model whose rows per
iteration are computed at run time, so the budget holds at every length of the range.

Tiny models and short lengths keep this file cheap: the estimate of the written model (its Loops
followed) is checked against the budget at three lengths, and the outputs against the original's
in ONNX Runtime at each of them.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from autochunk_onnx import api, ranges
from autochunk_onnx.cli.main import main
from autochunk_onnx.errors import BadInputError
from autochunk_onnx.inputs import make_inputs
from models import synthetic as syn

ort = pytest.importorskip("onnxruntime")

LO, HI = 32, 512
LENGTHS = (LO, 128, HI)


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(stderr: str, *needles: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def gpt(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ranges") / "gpt.onnx"
    onnx.save(syn.transformer(layers=2, d_model=32, heads=2, vocab=64), str(path))
    return str(path)


@pytest.fixture(scope="module")
def static_model(tmp_path_factory) -> str:
    """x [1, seq, 8] and y [1, 16, 8] (dim 1 of y fixed by the model)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "seq", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["z"]), helper.make_node("Relu", ["y"], ["w"])],
                          "g", [x, y], [z, w])
    path = tmp_path_factory.mktemp("ranges") / "static.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


# ----------------------------------------------------------------------------- parsing
def test_split_ranges_and_pinned_dims():
    sr = ranges.split("input_ids:1x512..32768")
    assert sr.ranges == (ranges.DimRange("input_ids", 1, 512, 32768),)
    assert sr.top == {"input_ids": [1, 32768]} and sr.at(512) == {"input_ids": [1, 512]}
    assert (sr.lo, sr.middle, sr.hi) == (512, 4096, 32768)
    assert sr.lengths(5) == [512, 1448, 4096, 11585, 32768]
    assert ranges.split("input_ids:1x512") is None  # no range: the pinned path, untouched
    both = ranges.split(["ids:[1,64..256]", "mask:1,64..256"])
    assert [(r.input, r.dim) for r in both.ranges] == [("ids", 1), ("mask", 1)]
    assert ranges.split({"ids": [1, (64, 256)]}).hi == 256
    assert ranges.split("ids:1x64..64") is None  # LO == HI pins it


@pytest.mark.parametrize("spec, needles", [
    ("ids:1x600..500", ("ids", "dim 1", "LO is larger than HI")),
    ("ids:1x0..500", ("ids", "dim 1", "positive")),
    ("ids:1x512..", ("ids", "dim 1", "LO..HI")),
])
def test_bad_range_text(spec, needles):
    with pytest.raises(BadInputError) as e:
        ranges.split(spec.split())
    assert all(n in str(e.value) for n in needles), str(e.value)


@pytest.mark.parametrize("shape, needles", [
    (["x:1x8..64x8", "y:1x17..32x8"], ("y", "dim 1", "contradicts", "16")),
    (["x:1x8..64x8", "y:1x8..32x8"], ("y", "dim 1", "fixes it to 16")),
    (["x:1x8..64x8", "y:1x16x8", "x:1x8..64x4..9"], ("x", "dim 2", "fixes it to 8")),
    (["x:1x300..200x8", "y:1x16x8"], ("x", "dim 1", "LO is larger than HI")),
    (["x:1x0..200x8", "y:1x16x8"], ("x", "dim 1", "positive")),
])
def test_bad_ranges_exit_2_naming_input_and_dim(static_model, tmp_path, shape, needles):
    for cmd in (["estimate", static_model], ["optimize", static_model, tmp_path / "o.onnx", "-b", "50%"],
                ["verify", static_model, static_model]):
        args = cmd + [a for s in shape for a in ("-s", s)]
        res = cli(*args)
        assert res.exit_code == 2, (cmd, res.stderr)
        one_line_error(res.stderr, *needles)
    assert not (tmp_path / "o.onnx").exists()


def test_range_on_symbol_pinned_elsewhere(tmp_path):
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, "seq"])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, "seq"])
    o = helper.make_tensor_value_info("o", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["o"])], "g", [a, b], [o])
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    res = cli("estimate", path, "-s", "a:1x8..64", "b:1x32")
    assert res.exit_code == 2
    one_line_error(res.stderr, "a", "dim 1", "b dim 1 pins seq=32")
    res = cli("estimate", path, "-s", "a:1x8..64", "b:1x8..32")
    assert res.exit_code == 2
    one_line_error(res.stderr, "b", "dim 1", "vary together")


def test_range_the_model_cannot_take(tmp_path):
    """A Reshape to a constant [4, 4] takes seq=16 only: the bottom of 8..16 fails strict shape inference."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "seq"])
    o = helper.make_tensor_value_info("o", TensorProto.FLOAT, None)
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [4, 4])
    g = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["o"])], "g", [x], [o], initializer=[shape])
    path = tmp_path / "fixed.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    res = cli("estimate", path, "-s", "x:1x8..16", "-q")
    assert res.exit_code == 2, res.stderr
    one_line_error(res.stderr, "x", "dim 1", "cannot range over 8..16", "length 8")


# ----------------------------------------------------------------------------- planning a range
@pytest.fixture(scope="module")
def planned(gpt, tmp_path_factory):
    """The tiny decoder planned for 32..512 at an absolute budget of 25% of its top peak."""
    _, top = api.estimate(gpt, f"input_ids:1x{HI}")
    budget = int(top.peak_bytes * 0.25)
    out = tmp_path_factory.mktemp("ranges") / "gpt.chunked.onnx"
    res = api.optimize(gpt, str(out), budget, f"input_ids:1x{LO}..{HI}", verify_output=False)
    return res, budget, str(out)


def test_range_plan_runtime_rows_in_graph(planned):
    res, budget, out = planned
    rp = res.range
    assert rp.fits and res.plan.loops
    assert [p.length for p in rp.points] == [LO, 128, HI]
    assert all(p.chunked_peak <= budget for p in rp.checked)
    # attention: per-row bytes grow with L, so rows = max(1, K // L) computed in the graph
    assert any(r.kind == "inverse" for r in rp.rules)
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert {"Loop", "Shape", "Gather", "Div", "Max"} <= ops
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    # at the bottom the whole region fits: each loop runs once
    bottom = rp.points[0]
    assert all(n == 1 for n in bottom.iterations), bottom
    assert max(rp.points[-1].iterations) > 1


@pytest.mark.parametrize("length", LENGTHS)
def test_written_model_estimate_within_budget_and_outputs_match(planned, gpt, length):
    res, budget, out = planned
    _, est = api.estimate(out, f"input_ids:1x{length}")  # the written model, its Loops followed
    assert est.peak_bytes <= budget, (length, est.peak_bytes, budget)
    point = {p.length: p for p in res.range.checked}[length]
    assert abs(est.peak_bytes - point.chunked_peak) <= 0.02 * point.chunked_peak  # what the plan predicted
    m = api.load(gpt, f"input_ids:1x{length}")
    feeds = make_inputs(m.original, m.shapes, seed=1)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    a = ort.InferenceSession(gpt, so, providers=["CPUExecutionProvider"]).run(None, feeds)
    b = ort.InferenceSession(out, so, providers=["CPUExecutionProvider"]).run(None, feeds)
    for x, y in zip(a, b):
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5)


def test_range_deterministic_and_pinned_shape_unchanged(planned, gpt, tmp_path):
    res, budget, out = planned
    again = tmp_path / "again.onnx"
    api.optimize(gpt, str(again), budget, f"input_ids:1x{LO}..{HI}", verify_output=False)
    digest = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()  # noqa: E731
    assert digest(again) == digest(out)
    # the same budget pinned at the top: a constant chunk, no run-time rows
    pinned = api.optimize(gpt, None, budget, f"input_ids:1x{HI}", verify_output=False)
    assert pinned.range is None and all(lp.rows is None for lp in pinned.plan.loops)
    assert "rows_k" not in {n.name.split("/")[-1] for n in pinned.model.graph.node}


def test_cli_range_json_and_sweep(gpt, planned, tmp_path):
    res, budget, out = planned
    r = cli("optimize", gpt, tmp_path / "o.onnx", "-b", f"{budget}B", "-s", f"input_ids:1x{LO}..{HI}", "--dry-run",
            "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    rng = doc["plan"]["range"]
    assert [p["length"] for p in rng["points"]] == [LO, 128, HI]
    assert all(p["predicted_peak_bytes"] <= budget for p in rng["points"])
    assert rng["rules"] and rng["rules"][0]["kind"] in ("inverse", "constant")
    r = cli("estimate", gpt, "-s", f"input_ids:1x{LO}..{HI}", "--chunked", out, "--sweep", "3", "--json")
    assert r.exit_code == 0, r.stderr
    pts = json.loads(r.stdout)["estimate"]["sweep"]["points"]
    assert [p["length"] for p in pts] == [LO, 128, HI]
    assert pts[-1]["chunked_peak_bytes"] < pts[-1]["original_peak_bytes"]
    assert all(p["chunked_peak_bytes"] <= budget for p in pts)
    png = tmp_path / "sweep.png"
    r = cli("estimate", gpt, "-s", f"input_ids:1x{LO}..{HI}", "--chunked", out, "--sweep", "3", "--plot", png)
    assert r.exit_code == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["length", "original", "est", "chunked", "est", "ratio"] and len(lines) == 4
    r = cli("estimate", gpt, "--sweep", "3", "-s", f"input_ids:1x{HI}")
    assert r.exit_code == 2 and "length range" in r.stderr


def test_verify_over_range(gpt, planned):
    res, budget, out = planned
    rep = api.verify(gpt, out, f"input_ids:1x{LO}..{LO + 1}", measure_latency=False)  # two children a length
    assert rep.ok
    assert [c.length for c in rep.range_checks] == [LO, LO + 1]  # bottom = middle here
    assert all(c.report is not None and c.report.ok for c in rep.range_checks)  # tiny: every length compared
    assert all(c.chunked.method and c.to_dict()["compared"] for c in rep.range_checks)
    assert api._gate_peak(rep) == max(c.chunked.peak_bytes for c in rep.range_checks)  # --max-peak: every length


def test_verify_range_exit_4_names_the_length(tmp_path):
    """Two models that differ on negative inputs: verify over a range stops at the first length
    whose outputs differ, exit 4 naming it."""
    def model(op: str, path):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "seq"])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seq"])
        g = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g", [x], [y])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
        return path

    a, b = model("Identity", tmp_path / "a.onnx"), model("Relu", tmp_path / "b.onnx")
    r = cli("verify", a, b, "-s", "x:1x8..64", "--iterations", "1", "--json")
    assert r.exit_code == 4, r.stderr
    one_line_error(r.stderr, "output 'y' differs at length 8")
    doc = json.loads(r.stdout)
    assert [c["length"] for c in doc["verify"]["range"]] == [8] and doc["verify"]["range"][0]["ok"] is False
