"""Recomputing cheap shared tensors in each loop, dropping their originals, and re-tuning chunks.

A causal mask [1,1,L,L] made once and read by every layer is the case: each layer's loop must
rebuild its chunk of the mask from the small [1,1,L,1] / [1,1,1,L] tensors, and once every
reader does, the full mask must disappear from the graph and from the estimate.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from autochunk_onnx import api, chunkflow
from autochunk_onnx.peak import estimate_graph
from autochunk_onnx.plan import Loop
from autochunk_onnx.planner import _shrink_peak_loop, plan, retune
from autochunk_onnx.rewrite import rewrite
from autochunk_onnx.schedule import dead_nodes, estimate_plan
from models import synthetic

SEQ = 1024


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "gpt.onnx"
    import onnx
    onnx.save(synthetic.transformer(layers=2, d_model=64, heads=4, vocab=256), str(path))
    return api.load(path, {"input_ids": [1, SEQ]})


def _run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_each_layer_recomputes_the_mask_and_the_original_dies(gpt):
    g = gpt.graph
    est = estimate_graph(g)
    p = plan(g, int(est.peak_bytes * 0.25), est)
    assert p.fits and len(p.regions) >= 2
    recomputed = [r for r in p.regions if r.clones]
    assert len(recomputed) >= 2, "every layer's loop should rebuild its mask chunk"
    dead = dead_nodes(g, list(p.regions))
    assert dead == p.dropped
    cloned = set().union(*(r.clones for r in recomputed))
    assert dead and dead <= cloned | {g.producer[i] for n in dead for i in g.nodes[n].inputs if i in g.producer}
    # the full-size mask is gone from the rewritten outer graph, but lives on in the loop bodies
    model = rewrite(gpt.original, g, p.loops, p.dropped)
    outer_ops = {n.name for n in model.graph.node}
    assert not any(g.nodes[i].name in outer_ops for i in dead)
    feeds = {"input_ids": np.random.default_rng(0).integers(0, 256, (1, SEQ), dtype=np.int64)}
    want, got = _run(gpt.original, feeds), _run(model, feeds)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)


def test_recomputation_lowers_the_reachable_peak(gpt, monkeypatch):
    est = estimate_graph(gpt.graph)
    budget = int(est.peak_bytes * 0.05)
    with_clones = plan(gpt.graph, budget, est)
    monkeypatch.setattr(chunkflow, "CLONE_GAIN", 10**12)
    fresh = api.load(gpt.path, {"input_ids": [1, SEQ]})  # cones are cached per graph
    without = plan(fresh.graph, budget, est)
    assert not any(r.clones for r in without.regions)
    assert with_clones.final.peak_bytes < without.final.peak_bytes
    # the full mask no longer held, each loop can afford larger chunks: fewer iterations
    assert with_clones.fits
    assert with_clones.predicted_slowdown < without.predicted_slowdown


def test_shrink_lowers_a_loop_that_holds_the_peak(gpt):
    g = gpt.graph
    est = estimate_graph(g)
    p = plan(g, int(est.peak_bytes * 0.25), est)
    lp = max(p.loops, key=lambda lp: lp.region.units)
    wide = Loop(lp.region, lp.region.units - 1)  # as if an early stage had picked it while other memory was live
    loops = [wide if x is lp else x for x in p.loops]
    big, order = estimate_plan(g, loops)
    if order[big.peak_index] is not wide:
        pytest.skip("the widened loop does not hold the peak in this configuration")
    out = _shrink_peak_loop(g, loops, big, order, p.budget, None)
    assert out is not None
    new_est, _, shrunk = out
    assert shrunk[loops.index(wide)].chunk < wide.chunk and new_est.peak_bytes < big.peak_bytes


def test_retune_grows_chunks_within_the_limit(gpt):
    g = gpt.graph
    est = estimate_graph(g)
    p = plan(g, int(est.peak_bytes * 0.25), est)
    chosen = [lp.chunk for lp in p.loops]
    loops = [Loop(lp.region, max(1, lp.chunk // 4)) for lp in p.loops]
    small, order = estimate_plan(g, loops)
    new_est, _, grown = retune(g, loops, small, order, p.budget, None)
    assert new_est.peak_bytes <= p.budget
    assert all(lp.chunk >= max(1, c // 4) for lp, c in zip(grown, chosen))
    assert any(lp.chunk > max(1, c // 4) for lp, c in zip(grown, chosen))
