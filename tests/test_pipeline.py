"""Whole pipeline on the models under models/: plan, rewrite, verify in ORT, other lengths."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from autochunk_onnx import api
from autochunk_onnx.peak import estimate_graph
from autochunk_onnx.inputs import make_inputs
from autochunk_onnx.measure import measure
from models import synthetic

TINY = "models/tiny"

# name -> (model file or builder, input shapes at plan length, same at another length, budget)
CASES = {
    "gpt2": (f"{TINY}/gpt2_tiny.onnx", {"input_ids": [1, 512], "attention_mask": [1, 512]},
             {"input_ids": [1, 333], "attention_mask": [1, 333]}, "50%"),
    "bert": (f"{TINY}/bert_tiny.onnx", {"input_ids": [1, 512], "attention_mask": [1, 512]},
             {"input_ids": [1, 301], "attention_mask": [1, 301]}, "50%"),
    "vit": (f"{TINY}/vit_tiny.onnx", {"pixel_values": [1, 3, 384, 384]}, {"pixel_values": [1, 3, 224, 288]}, "50%"),
    "unet": (f"{TINY}/unet_tiny.onnx", {"sample": [1, 4, 48, 48], "timestep": [1], "encoder_hidden_states": [1, 8, 32]},
             {"sample": [1, 4, 40, 56], "timestep": [1], "encoder_hidden_states": [1, 8, 32]}, "25%"),
    "evoformer": (f"{TINY}/evoformer_tiny.onnx",
                  {"msa": [1, 4, 96, 16], "pair": [1, 96, 96, 8], "msa_mask": [1, 4, 96], "pair_mask": [1, 96, 96]},
                  {"msa": [1, 4, 61, 16], "pair": [1, 61, 61, 8], "msa_mask": [1, 4, 61], "pair_mask": [1, 61, 61]}, "25%"),
    "synthetic_gpt": (lambda: synthetic.transformer(layers=2, d_model=64, heads=4, vocab=256),
                      {"input_ids": [1, 1024]}, {"input_ids": [1, 517]}, "25%"),
    "synthetic_evoformer": (lambda: synthetic.evoformer_like(), {"msa": [1, 4, 64, 16], "pair": [1, 64, 64, 16]},
                            {"msa": [1, 4, 37, 16], "pair": [1, 37, 37, 16]}, "25%"),
    "synthetic_unet": (lambda: synthetic.unet_like(), {"sample": [1, 32, 48, 48]}, {"sample": [1, 32, 40, 24]}, "25%"),
    # the standard opset-23 Attention op: its scores are scratch inside the node, chunked by query rows
    "gpt2_opset23": (f"{TINY}/gpt2_tiny_opset23.onnx", {"input_ids": [1, 512], "attention_mask": [1, 512]},
                     {"input_ids": [1, 333], "attention_mask": [1, 333]}, "50%"),
    "synthetic_attention_opset23": (lambda: synthetic.attention_opset23(), {"x": [1, 1024, 64]}, {"x": [1, 517, 64]},
                                    "25%"),
}


def _model_path(spec, tmp_path) -> str:
    if isinstance(spec, str):
        return spec
    p = tmp_path / "model.onnx"
    onnx.save(spec(), str(p))
    return str(p)


def _run(path: str, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("name", list(CASES))
def test_optimize_verifies_and_runs_at_other_lengths(name, tmp_path):
    spec, shapes, other, budget = CASES[name]
    src = _model_path(spec, tmp_path)
    before = open(src, "rb").read()
    out = tmp_path / "chunked.onnx"
    res = api.optimize(src, out, budget, shapes)
    assert res.plan.fits and res.plan.regions, f"{name}: no plan fits {budget}"
    rep = res.verify
    assert rep.ok, [d for d in rep.diffs if not d.ok]
    # The chunked model really needs less memory: well under the original (measured, not estimated).
    assert rep.mem_ratio < 0.75, f"{name}: measured {rep.chunked.peak_bytes} vs {rep.original.peak_bytes}"
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    assert any(n.op_type == "Loop" for n in m.graph.node)
    assert all(n.domain in ("", "ai.onnx") for n in m.graph.node)
    assert open(src, "rb").read() == before  # input untouched
    # Same dynamic input/output dims as the original, and equal outputs at another length.
    orig = onnx.load(src, load_external_data=False)
    dims = lambda vis: [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in vis]  # noqa: E731
    assert dims(m.graph.input) == dims(orig.graph.input)
    assert dims(m.graph.output) == dims(orig.graph.output)
    feeds = make_inputs(orig, {k: tuple(v) for k, v in other.items()}, seed=1)
    for a, b in zip(_run(src, feeds), _run(str(out), feeds)):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)


def _ids(n: int) -> dict:
    return {"input_ids": [1, n], "attention_mask": [1, n]}


def _evo(s: int, n: int) -> dict:
    return {"msa": [1, s, n, 16], "pair": [1, n, n, 8], "msa_mask": [1, s, n], "pair_mask": [1, n, n]}


def _unet(h: int, w: int) -> dict:
    return {"sample": [1, 4, h, w], "timestep": [1], "encoder_hidden_states": [1, 8, 32]}


# Every family's small model at two lengths (peaks of 8-330 MiB: large enough for the RSS method
# to resolve; below a few MiB small tensors come from the malloc heap and it under-reads).
ESTIMATE_CASES = {
    "gpt2": (f"{TINY}/gpt2_tiny.onnx", [_ids(512), _ids(1024)]),
    "gpt2_opset23": (f"{TINY}/gpt2_tiny_opset23.onnx", [_ids(512), _ids(1024)]),
    "bert": (f"{TINY}/bert_tiny.onnx", [_ids(512), _ids(1024)]),
    "vit": (f"{TINY}/vit_tiny.onnx", [{"pixel_values": [1, 3, 384, 384]}, {"pixel_values": [1, 3, 512, 384]}]),
    "unet": (f"{TINY}/unet_tiny.onnx", [_unet(48, 48), _unet(40, 56)]),
    "evoformer": (f"{TINY}/evoformer_tiny.onnx", [_evo(4, 96), _evo(4, 72)]),
    "gpt_small_example": ("models/examples/gpt_small.onnx", [{"input_ids": [1, 1024]}, {"input_ids": [1, 768]}]),
    "synthetic_gpt": (CASES["synthetic_gpt"][0], [{"input_ids": [1, 1024]}, {"input_ids": [1, 517]}]),
    "synthetic_attention": (lambda: synthetic.attention_block(), [{"x": [1, 1024, 64]}, {"x": [1, 1536, 64]}]),
    "synthetic_attention_opset23": (lambda: synthetic.attention_opset23(), [{"x": [1, 1024, 64]}, {"x": [1, 1536, 64]}]),
    "synthetic_mlp": (lambda: synthetic.mlp_block(), [{"x": [1, 4096, 64]}, {"x": [1, 2048, 64]}]),
    "synthetic_evoformer": (CASES["synthetic_evoformer"][0],
                            [{"msa": [1, 4, 64, 16], "pair": [1, 64, 64, 16]}, {"msa": [1, 4, 96, 16], "pair": [1, 96, 96, 16]}]),
    "synthetic_unet": (CASES["synthetic_unet"][0], [{"sample": [1, 32, 48, 48]}, {"sample": [1, 32, 40, 24]}]),
}


@pytest.mark.parametrize("name,k", [pytest.param(n, k, id=f"{n}-{k}") for n, (_, lens) in ESTIMATE_CASES.items()
                                    for k in range(len(lens))])
def test_estimate_within_15_percent_of_measured(name, k, tmp_path):
    spec, lengths = ESTIMATE_CASES[name]
    shapes = lengths[k]
    src = _model_path(spec, tmp_path)
    m, est = api.estimate(src, shapes)
    got = measure(src, make_inputs(m.original, m.shapes), repeats=1)
    ratio = est.peak_bytes / got.peak_bytes
    print(f"{name} {shapes}: estimate {est.peak_bytes} measured {got.peak_bytes} ratio {ratio:.3f}")
    assert 0.85 <= ratio <= 1.15


def test_multi_stage_chunks_every_layer(tmp_path):
    """Identical layers peak at the same height: each stage must take one of them."""
    src = tmp_path / "m.onnx"
    onnx.save(synthetic.transformer(layers=3, d_model=64, heads=4, vocab=128), str(src))
    m = api.load(src, {"input_ids": [1, 1024]})
    est = estimate_graph(m.graph)
    from autochunk_onnx.planner import plan
    p = plan(m.graph, est.peak_bytes // 4, est)
    assert p.fits
    assert p.stages >= 3
    layers = {r.owned[0].name.split("/")[0] for r in p.regions}
    assert {"layers.0.attn", "layers.1.attn", "layers.2.attn"} <= layers
    assert p.final.peak_bytes <= est.peak_bytes // 4


def test_unreachable_budget_reports_best(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(synthetic.attention_block(d_model=32, heads=2), str(src))
    from autochunk_onnx.errors import BudgetUnreachableError
    with pytest.raises(BudgetUnreachableError) as e:
        api.optimize(src, tmp_path / "o.onnx", "1KB", {"x": [1, 512, 32]})
    assert "unreachable: best plan reaches" in str(e.value)
    assert not (tmp_path / "o.onnx").exists()
