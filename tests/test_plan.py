"""The plan's and the rewrite's stated contracts, checked in code: what each refuses."""
import onnx
import pytest

from autochunk_onnx import api
from autochunk_onnx.plan import Loop, Plan
from autochunk_onnx.planner import plan
from autochunk_onnx.peak import estimate_graph
from autochunk_onnx.rewrite import rewrite
from models import synthetic


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "gpt.onnx"
    onnx.save(synthetic.transformer(layers=2, d_model=64, heads=4, vocab=256), str(path))
    m = api.load(path, {"input_ids": [1, 512]})
    est = estimate_graph(m.graph)
    p = plan(m.graph, int(est.peak_bytes * 0.25), est)
    assert len(p.loops) >= 2
    return m, p


def test_plan_refuses_loops_sharing_nodes_or_bad_chunks(planned):
    m, p = planned
    lp = p.loops[0]
    with pytest.raises(ValueError, match="shares nodes"):
        Plan(p.budget, p.original, p.final, loops=(lp, Loop(lp.region, lp.chunk)))
    with pytest.raises(ValueError, match="outside"):
        Plan(p.budget, p.original, p.final, loops=(Loop(lp.region, lp.region.units + 1),))
    owned = lp.region.owned[0].index
    with pytest.raises(ValueError, match="dropped"):
        Plan(p.budget, p.original, p.final, loops=(lp,), dropped=frozenset({owned}))


def test_plan_is_immutable(planned):
    _, p = planned
    with pytest.raises(AttributeError):
        p.loops[0].chunk = 1
    with pytest.raises(AttributeError):
        p.loops[0].region.units = 1


def test_rewrite_refuses_a_graph_the_plan_was_not_made_on(planned):
    m, p = planned
    other = onnx.ModelProto()
    other.CopyFrom(m.original)
    del other.graph.node[-1]
    with pytest.raises(ValueError, match="another graph"):
        rewrite(other, m.graph, p.loops, p.dropped)


def test_rewrite_output_passes_the_checker(planned):
    m, p = planned
    onnx.checker.check_model(rewrite(m.original, m.graph, p.loops, p.dropped), full_check=True)


def test_rewrite_refuses_to_return_a_model_the_checker_rejects(planned, monkeypatch):
    from onnx import helper

    from autochunk_onnx import rewrite as rw

    m, p = planned
    real = rw._toposort
    monkeypatch.setattr(rw, "_toposort", lambda items: real(items) + [helper.make_node("NoSuchOp", ["x"], ["y"])])
    with pytest.raises(RuntimeError, match="fails onnx.checker"):
        rewrite(m.original, m.graph, p.loops, p.dropped)
