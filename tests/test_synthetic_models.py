"""Every synthetic model builder: passes the full ONNX checker, runs in onnxruntime
(CPU) at two sequence lengths with finite outputs of the expected shape, and is
deterministic for a given seed."""
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

ort = pytest.importorskip("onnxruntime")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from models import synthetic as syn  # noqa: E402


def _session(model_or_path):
    src = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"])


def _check_and_run(model, make_feeds, expect_shapes, sizes):
    onnx.checker.check_model(model, full_check=True)
    sess = _session(model)
    outs_names = [o.name for o in model.graph.output]
    assert [o.name for o in sess.get_outputs()] == outs_names
    for size in sizes:
        feeds = make_feeds(size)
        outs = sess.run(None, feeds)
        for name, out, shape in zip(outs_names, outs, expect_shapes(size)):
            assert out.shape == shape, (name, out.shape, shape)
            assert out.dtype == np.float32
            assert np.isfinite(out).all(), name
            assert 0.01 < float(out.std()) < 100.0, (name, float(out.std()))


def _rng():
    return np.random.default_rng(123)


def _ids(vocab, batch=2):
    return lambda s: {"input_ids": _rng().integers(0, vocab, (batch, s), dtype=np.int64)}


def _x(d, batch=2):
    return lambda s: {"x": _rng().standard_normal((batch, s, d), dtype=np.float32)}


SEQS = (7, 19)


@pytest.mark.parametrize("kw", [
    {},
    {"dynamic_reshape": False},
    {"causal": False},
    {"pos_embedding": "sinusoidal", "weight_dtype": "float16", "tie_embeddings": True},
])
def test_transformer(kw):
    m = syn.transformer(layers=2, d_model=32, heads=4, vocab=64, **kw)
    assert m.graph.input[0].name == "input_ids"
    assert m.graph.output[0].name == "logits"
    _check_and_run(m, _ids(64), lambda s: [(2, s, 64)], SEQS)


def test_transformer_structure():
    m = syn.transformer(layers=1)
    ops = {n.op_type for n in m.graph.node}
    for op in ("Gather", "Range", "Shape", "Unsqueeze", "Concat", "Reshape", "Transpose",
               "LayerNormalization", "MatMul", "Softmax", "Where", "Less", "Erf", "Div"):
        assert op in ops, op
    dims = [d.dim_param for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "seq"]
    static = syn.transformer(layers=1, dynamic_reshape=False)
    assert "Concat" not in {n.op_type for n in static.graph.node}


def test_transformer_is_causal():
    sess = _session(syn.transformer(layers=2, d_model=32, heads=4, vocab=64))
    ids = _rng().integers(0, 64, (1, 12), dtype=np.int64)
    a = sess.run(None, {"input_ids": ids})[0]
    ids2 = ids.copy()
    ids2[0, 8:] = (ids2[0, 8:] + 1) % 64
    b = sess.run(None, {"input_ids": ids2})[0]
    np.testing.assert_allclose(a[:, :8], b[:, :8], atol=1e-5)
    assert not np.allclose(a[:, 8:], b[:, 8:])


def test_attention_block():
    _check_and_run(syn.attention_block(d_model=32, heads=4), _x(32), lambda s: [(2, s, 32)], SEQS)


def test_mlp_block():
    m = syn.mlp_block(d_model=32)
    assert "Gelu" in {n.op_type for n in m.graph.node}
    _check_and_run(m, _x(32), lambda s: [(2, s, 32)], SEQS)


def test_evoformer_like():
    m = syn.evoformer_like(c_m=8, c_z=8, heads=2)
    assert [i.name for i in m.graph.input] == ["msa", "pair"]
    assert [o.name for o in m.graph.output] == ["msa_out", "pair_out"]
    assert sum(n.op_type == "Einsum" for n in m.graph.node) >= 5

    def feeds(n_res):
        r = _rng()
        n_seq = n_res // 2 + 1
        return {"msa": r.standard_normal((1, n_seq, n_res, 8), dtype=np.float32),
                "pair": r.standard_normal((1, n_res, n_res, 8), dtype=np.float32)}

    _check_and_run(m, feeds, lambda n: [(1, n // 2 + 1, n, 8), (1, n, n, 8)], (5, 11))


def test_unet_like():
    m = syn.unet_like(channels=16, groups=4)
    assert "InstanceNormalization" in {n.op_type for n in m.graph.node}

    def feeds(h):
        return {"sample": _rng().standard_normal((2, 16, h, h + 2), dtype=np.float32)}

    _check_and_run(m, feeds, lambda h: [(2, 16, h, h + 2)], (4, 7))


def test_attention_opset23_matches_block():
    m = syn.attention_opset23(d_model=32, heads=4)
    assert m.opset_import[0].version == 23
    assert "Attention" in {n.op_type for n in m.graph.node}
    _check_and_run(m, _x(32), lambda s: [(2, s, 32)], SEQS)
    # same seed -> same weights as attention_block -> same function
    x = _x(32)(9)
    a = _session(syn.attention_block(d_model=32, heads=4)).run(None, x)[0]
    b = _session(m).run(None, x)[0]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_stacked_transformer():
    m = syn.stacked_transformer(layers=24)
    assert len(m.graph.node) > 1000
    small = syn.stacked_transformer(layers=3, d_model=32, heads=4)
    # vocab defaults to 512
    _check_and_run(small, _ids(512), lambda s: [(2, s, 512)], SEQS)


@pytest.mark.parametrize("name", sorted(syn.BUILDERS))
def test_deterministic(name):
    kw = {"layers": 1} if "transformer" in name else {}
    a = syn.BUILDERS[name](seed=3, **kw).SerializeToString()
    b = syn.BUILDERS[name](seed=3, **kw).SerializeToString()
    c = syn.BUILDERS[name](seed=4, **kw).SerializeToString()
    assert a == b
    assert a != c


def test_with_external_data(tmp_path):
    m = syn.transformer(layers=1, d_model=32, heads=4, vocab=64)
    before = m.SerializeToString()
    path = str(tmp_path / "ext.onnx")
    data = syn.with_external_data(m, path, min_bytes=1024)
    assert m.SerializeToString() == before  # input untouched
    assert os.path.exists(data) and os.path.dirname(data) == str(tmp_path)
    loaded = onnx.load(path, load_external_data=False)
    n_ext = 0
    for t in loaded.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            n_ext += 1
            kv = {e.key: e.value for e in t.external_data}
            assert kv["location"] == "ext.onnx.data"
        else:
            assert len(onnx.numpy_helper.to_array(t).tobytes()) < 1024
    assert n_ext > 0
    onnx.checker.check_model(path, full_check=True)
    feeds = _ids(64)(9)
    np.testing.assert_allclose(_session(path).run(None, feeds)[0],
                               _session(m).run(None, feeds)[0], atol=1e-5)


def test_big_external_model_small(tmp_path):
    path = str(tmp_path / "big.onnx")
    data = syn.big_external_model(path, weight_gib=2.0 / 1024, d=256)  # 2 MiB -> 8 weights
    assert os.path.getsize(data) >= 2 * (1 << 20)
    m = onnx.load(path, load_external_data=False)
    assert len(m.graph.initializer) == 8
    onnx.checker.check_model(path, full_check=True)
    y = _session(path).run(None, _x(256, batch=1)(5))[0]
    assert y.shape == (1, 5, 256) and np.isfinite(y).all()


def test_big_external_model_rss(tmp_path):
    """Writing 256 MiB of weights must not hold them in memory."""
    code = (
        "import resource, sys; sys.path.insert(0, %r)\n"
        "from models.synthetic import big_external_model\n"
        "big_external_model(%r, weight_gib=0.25)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\n"
    ) % (ROOT, str(tmp_path / "big.onnx"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rss_mib = int(out.stdout.strip().splitlines()[-1])
    assert rss_mib < 600, rss_mib
    assert os.path.getsize(tmp_path / "big.onnx.data") >= (1 << 30) // 4


def test_cli(tmp_path):
    out = tmp_path / "t.onnx"
    subprocess.run([sys.executable, "-m", "models.synthetic", "transformer", "--out", str(out),
                    "--layers", "1", "--seed", "2"], cwd=ROOT, check=True, capture_output=True)
    m = onnx.load(str(out))
    assert m.SerializeToString() == syn.transformer(layers=1, seed=2).SerializeToString()


def test_example_model():
    path = os.path.join(ROOT, "models", "examples", "gpt_small.onnx")
    assert os.path.getsize(path) < 2_000_000
    m = onnx.load(path)
    assert m.SerializeToString() == syn.transformer(**syn.GPT_SMALL_EXAMPLE).SerializeToString()
    onnx.checker.check_model(m, full_check=True)
    _check_and_run(m, _ids(1024, batch=1), lambda s: [(1, s, 1024)], (16, 40))
