"""Models below opset 13: when a Loop is emitted the model is converted to opset 13 (Loop over
sequences needs it) and the report says so; when nothing is chunked the opset is left alone; when
the conversion fails the error is one line with exit 2."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autochunk_onnx.cli.main import main  # noqa: E402
from models import synthetic as syn  # noqa: E402

ort = pytest.importorskip("onnxruntime")

D, HEADS = 32, 4
SHAPE = f"x:1x512x{D}"


def attention11(opset: int = 11, seed: int = 0) -> onnx.ModelProto:
    """Pre-norm self-attention block with residual, written with opset-11 ops only (ReduceMean
    layer norm with `axes` attributes, Unsqueeze with `axes` attribute, Softmax-11 on the last axis)."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def w(name, shape):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) / math.sqrt(shape[0])).astype(np.float32), name))
        return name

    def c(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def n(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], name=out, **kw))
        return out

    dh = D // HEADS
    mu = n("ReduceMean", ["x"], "ln/mean", axes=[-1])
    xc = n("Sub", ["x", mu], "ln/xc")
    var = n("ReduceMean", [n("Mul", [xc, xc], "ln/sq")], "ln/var", axes=[-1])
    h = n("Div", [xc, n("Sqrt", [n("Add", [var, c("eps", np.float32(1e-5))], "ln/ve")], "ln/std")], "ln/out")
    split = c("split_shape", np.array([0, 0, HEADS, dh], np.int64))

    def heads(name):
        t = n("MatMul", [h, w(f"{name}.weight", (D, D))], f"{name}/MatMul")
        return n("Transpose", [n("Reshape", [t, split], f"{name}/Reshape")], f"{name}/Transpose", perm=[0, 2, 1, 3])

    q, k, v = heads("q"), heads("k"), heads("v")
    kt = n("Transpose", [k], "attn/kT", perm=[0, 1, 3, 2])
    scores = n("Mul", [n("MatMul", [q, kt], "attn/QK"), c("scale", np.float32(1 / math.sqrt(dh)))], "attn/scaled")
    bias = n("Unsqueeze", [c("head_bias", (0.1 * rng.standard_normal(HEADS)).astype(np.float32))], "attn/bias",
             axes=[1, 2])  # [heads, 1, 1]
    probs = n("Softmax", [n("Add", [scores, bias], "attn/biased")], "attn/probs", axis=3)
    o = n("Transpose", [n("MatMul", [probs, v], "attn/PV")], "attn/merge", perm=[0, 2, 1, 3])
    o = n("Reshape", [o, c("merge_shape", np.array([0, 0, D], np.int64))], "attn/Reshape")
    o = n("MatMul", [o, w("o.weight", (D, D))], "o/MatMul")
    nodes.append(helper.make_node("Add", ["x", o], ["y"], name="residual"))
    g = helper.make_graph(nodes, "attention11", [helper.make_tensor_value_info("x", TP.FLOAT, ["batch", "seq", D])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, ["batch", "seq", D])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests.test_opset")
    m.ir_version = 6
    onnx.checker.check_model(m, full_check=True)
    return m


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def opset_of(path: Path) -> int:
    m = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))


def outputs(path: Path, seq: int) -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((1, seq, D)).astype(np.float32)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("opset", [11, 12])
def test_optimize_raises_opset_to_13(tmp_path, opset):
    src, out = tmp_path / "a.onnx", tmp_path / "out" / "a.chunked.onnx"
    onnx.save(attention11(opset), str(src))
    r = cli("optimize", src, out, "-b", "30%", "-s", SHAPE, "--json")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    doc = json.loads(r.stdout)
    note = f"opset raised from {opset} to 13: Loop over sequences needs it"
    assert doc["notes"] == [{"kind": "changed", "text": note}] and note in r.stderr
    assert doc["verify"]["ok"] and doc["plan"]["regions"]
    assert opset_of(out) == 13
    m = onnx.load(str(out))
    assert m.ir_version >= 7 and any(n.op_type == "Loop" for n in m.graph.node)
    onnx.checker.check_model(m, full_check=True)
    for seq in (512, 77):  # the plan length and another one
        np.testing.assert_allclose(outputs(out, seq), outputs(src, seq), atol=1e-5, rtol=1e-4)


def test_opset_kept_when_nothing_is_chunked(tmp_path):
    src, out = tmp_path / "a.onnx", tmp_path / "a.same.onnx"
    onnx.save(attention11(), str(src))
    r = cli("optimize", src, out, "-b", "1GiB", "-s", SHAPE, "--no-verify", "--json")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    doc = json.loads(r.stdout)
    assert doc["plan"]["regions"] == [] and doc["notes"] == [] and "opset" not in r.stderr
    assert opset_of(out) == 11


def test_opset_raised_with_external_weights(tmp_path):
    """Conversion runs on the weightless skeleton: external weights are put back, copied once."""
    src = tmp_path / "in" / "a.onnx"
    src.parent.mkdir()
    syn.with_external_data(attention11(), src, min_bytes=1024)
    out = tmp_path / "out" / "a.chunked.onnx"
    r = cli("optimize", src, out, "-b", "30%", "-s", SHAPE, "--no-verify")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert "opset raised from 11 to 13" in r.stderr
    assert opset_of(out) == 13
    m = onnx.load(str(out), load_external_data=False)
    ext = [t.name for t in m.graph.initializer if t.data_location == TP.EXTERNAL]
    assert sorted(ext) == ["k.weight", "o.weight", "q.weight", "v.weight"]
    assert not any(i.name in ext for i in m.graph.input)
    onnx.checker.check_model(str(out), full_check=True)
    np.testing.assert_allclose(outputs(out, 300), outputs(src, 300), atol=1e-5, rtol=1e-4)


def test_conversion_failure_is_one_line_exit_2(tmp_path, monkeypatch):
    from onnx import version_converter

    def refuse(model, target):
        raise RuntimeError("No Adapter To Version 13 for Frobnicate\nsecond line")

    monkeypatch.setattr(version_converter, "convert_version", refuse)
    src, out_dir = tmp_path / "a.onnx", tmp_path / "out"
    onnx.save(attention11(), str(src))
    r = cli("optimize", src, out_dir / "a.onnx", "-b", "30%", "-s", SHAPE)
    assert r.exit_code == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("autochunk-onnx: error:"), r.stderr
    assert "opset >= 13" in lines[0] and "from opset 11" in lines[0] and "Frobnicate" in lines[0]
    assert not out_dir.exists() or not any(out_dir.iterdir())
