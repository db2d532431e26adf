"""The zoo of real export variants (issue 11 item 4), run the way users run the tool.

Each tiny variant in models/tiny/ (both torch exporters, every attention implementation the
libraries offer, the newer families) goes through `api.optimize` at a length where something can
be chunked: where the budget is reachable, the written model is verified in ONNX Runtime and
compared with the original in ONNX Runtime at that length and at another one; where the current
tool cannot reach it, the honest outcome is asserted (BudgetUnreachableError, i.e. CLI exit 3,
naming the peak node; nothing written), the best-effort plan is still checked the same way, and the
case says which construct blocks it (`blocked_by`; when the tool learns it, the case fails and is
flipped to a reached budget).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from autochunk_onnx import api
from autochunk_onnx.errors import BudgetUnreachableError
from autochunk_onnx.inputs import make_inputs

TINY = "models/tiny"


def _tok(n: int) -> dict[str, list[int]]:
    return {"input_ids": [1, n], "attention_mask": [1, n]}


def _ids(n: int) -> dict[str, list[int]]:
    return {"input_ids": [1, n]}


def _img(h: int, w: int) -> dict[str, list[int]]:
    return {"pixel_values": [1, 3, h, w]}


def _unet(h: int, w: int, ctx: int = 8, dim: int = 32) -> dict[str, list[int]]:
    return {"sample": [1, 4, h, w], "timestep": [1], "encoder_hidden_states": [1, ctx, dim]}


def _evo(s: int, r: int) -> dict[str, list[int]]:
    return {"msa": [1, s, r, 16], "pair": [1, r, r, 8], "msa_mask": [1, s, r], "pair_mask": [1, r, r]}


def _pf(r: int) -> dict[str, list[int]]:
    return {"single": [1, r, 16], "pair": [1, r, r, 8], "single_mask": [1, r], "pair_mask": [1, r, r]}


@dataclass
class Case:
    file: str
    shapes: dict[str, list[int]]  # the planned length
    other: dict[str, list[int]]  # another length the written model must also be right at
    budget: str
    # None: the budget is reached. Otherwise the construct that blocks it today (the reason the
    # tool stops; issue 11 items 1-3 work on these): the case asserts exit-3 behaviour.
    blocked_by: str | None = None


_T, _O = _tok(512), _tok(333)
CASES: dict[str, Case] = {
    # --- GPT-2 (transformers): TorchScript export, and sdpa with both exporters. 50%: at 20% the
    # logits output [1, L, vocab] alone is over the budget at these lengths (the model's floor).
    "gpt2_ts": Case(f"{TINY}/gpt2_tiny_ts.onnx", _T, _O, "50%"),
    "gpt2_sdpa": Case(f"{TINY}/gpt2_tiny_sdpa.onnx", _T, _O, "50%"),
    # --- BERT
    "bert_ts": Case(f"{TINY}/bert_tiny_ts.onnx", _T, _O, "20%"),
    "bert_sdpa": Case(f"{TINY}/bert_tiny_sdpa.onnx", _T, _O, "20%"),
    "bert_sdpa_ts": Case(f"{TINY}/bert_tiny_sdpa_ts.onnx", _T, _O, "20%"),
    # --- ViT
    "vit_sdpa": Case(f"{TINY}/vit_tiny_sdpa.onnx", _img(384, 384), _img(224, 288), "20%"),
    # TorchScript export: the position-embedding grid's Reshape target is Pow(Constant, Constant)
    # (the table's side, sqrt of its length) through Cast/Unsqueeze/Concat; folded since Pow has
    # `fold` (was exit 2: the Reshape's shape stayed unknown after shape inference).
    "vit_ts": Case(f"{TINY}/vit_tiny_ts.onnx", _img(384, 384), _img(224, 288), "20%"),
    # --- diffusers UNet: TorchScript export (AttnProcessor2_0) and the classic AttnProcessor
    "unet_ts": Case(f"{TINY}/unet_tiny_ts.onnx", _unet(32, 32), _unet(24, 40), "25%"),
    # The classic processor's baddbmm(empty, q, k^T, beta=0, alpha=scale) exports as an Expand of a
    # zero to [B*H, L, L], Mul (beta 0), Add; the dynamo exporter builds that zero once and adds it
    # in every self-attention. Each attention loop rebuilds its chunk of the zero (chunkflow's
    # shared cones stay outside the loop that would own them), and the planner skips candidates
    # that cannot lower the peak before its per-stage cut: reached since issue 11 (was ~94%).
    "unet_classic": Case(f"{TINY}/unet_tiny_classic.onnx", _unet(32, 32), _unet(24, 40), "20%"),
    "unetsd_classic": Case(f"{TINY}/unetsd_tiny_classic.onnx", _unet(32, 32), _unet(24, 40), "25%"),
    # --- the newer families
    "evoformer_ts": Case(f"{TINY}/evoformer_tiny_ts.onnx", _evo(4, 64), _evo(3, 41), "25%"),
    "pairformer": Case(f"{TINY}/pairformer_tiny.onnx", _pf(96), _pf(61), "20%"),
    "pairformer_ts": Case(f"{TINY}/pairformer_tiny_ts.onnx", _pf(96), _pf(61), "20%"),
    "qwen2": Case(f"{TINY}/qwen2_tiny.onnx", _T, _O, "20%"),
    "qwen2_sdpa": Case(f"{TINY}/qwen2_tiny_sdpa.onnx", _T, _O, "20%"),
    "qwen2_ts": Case(f"{TINY}/qwen2_tiny_ts.onnx", _T, _O, "20%"),
    # T5's relative position bias, buckets computed in the graph (Range - Range, Abs, Log, Min,
    # Where, Gather from the bias table) into [1, H, L, L] read by every layer: each layer's loop
    # rebuilds its chunk (reached at L=512 once the planner stopped spending its per-stage tries on
    # candidates that cannot lower the peak; was ~34%); the chain is computed once on the 2L-1
    # distinct offsets (relpos), so the bench-size exports reach 20% too (TorchScript: 0.51, sdpa 0.73 before).
    "t5": Case(f"{TINY}/t5_tiny.onnx", _T, _O, "20%"),
    "t5_ts": Case(f"{TINY}/t5_tiny_ts.onnx", _T, _O, "20%"),
    "t5_sdpa_ts": Case(f"{TINY}/t5_tiny_sdpa_ts.onnx", _T, _O, "20%"),
    # The causal mask built in the graph (ones(L, L) -> Trilu -> Cast(bool) -> Where) is rebuilt per
    # chunk with the Trilu's k offset (posrules): reached since issue 11 item 1.
    "gptcausal": Case(f"{TINY}/gptcausal_tiny.onnx", _ids(1024), _ids(517), "20%"),
    "gptcausal_ts": Case(f"{TINY}/gptcausal_tiny_ts.onnx", _ids(1024), _ids(517), "20%"),
}


def _run(path: str, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)


def _same_at(src: str, out: str, shapes: dict[str, list[int]]) -> None:
    orig = onnx.load(src, load_external_data=False)
    feeds = make_inputs(orig, {k: tuple(v) for k, v in shapes.items()}, seed=1)
    for a, b in zip(_run(src, feeds), _run(out, feeds)):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)


def _check_written(src: str, out: str, case: Case) -> None:
    """The written model: a checked standard-ONNX model with Loops, equal to the original in ORT at
    the planned length and at another one (the tool's own measured verification is covered by
    tests/test_pipeline.py; here ORT runs in-process to keep ~25 variants within a minute)."""
    m = onnx.load(out)
    onnx.checker.check_model(m, full_check=True)
    assert any(n.op_type == "Loop" for n in m.graph.node)
    assert all(n.domain in ("", "ai.onnx") for n in m.graph.node)
    _same_at(src, out, case.shapes)
    _same_at(src, out, case.other)


def test_every_tiny_variant_has_a_case():
    manifest = {e["name"] for e in json.load(open(f"{TINY}/manifest.json"))}
    zoo = {c.file.rsplit("/", 1)[-1][:-5] for c in CASES.values()}
    older = {"gpt2_tiny", "bert_tiny", "vit_tiny", "unet_tiny", "evoformer_tiny", "gpt2_tiny_opset23"}
    assert manifest - older <= zoo, sorted(manifest - older - zoo)


@pytest.mark.parametrize("name", list(CASES))
def test_zoo_variant(name, tmp_path):
    case = CASES[name]
    src = case.file
    before = open(src, "rb").read()
    out = tmp_path / "chunked.onnx"
    if case.blocked_by is None:
        res = api.optimize(src, out, case.budget, case.shapes, verify_output=False)
        assert res.plan.fits and res.plan.regions, f"{name}: no plan fits {case.budget}"
        assert res.plan.final.peak_bytes <= res.budget
    else:
        with pytest.raises(BudgetUnreachableError) as err:
            api.optimize(src, out, case.budget, case.shapes, verify_output=False)
        msg = str(err.value)
        assert "unreachable" in msg and "best plan reaches" in msg and "peak at node" in msg, msg
        assert not out.exists()  # nothing written on exit 3
        best = err.value.best_plan
        assert best is not None and not best.fits
        # a tiny UNet's peak can be a 2-D Conv's NCHWc buffers (4 channels padded to the block of 16),
        # which no loop lowers: nothing to chunk there is the right answer
        conv_peak = best.original.peak_op == "Conv"
        assert conv_peak or best.final.peak_bytes < best.original.peak_bytes, f"{name}: nothing chunked at all"
        # the best effort is still a correct model (partly chunked)
        res = api.optimize(src, out, case.budget, case.shapes, best_effort=True, verify_output=False)
        assert not res.plan.fits and (res.plan.regions or conv_peak)
    if res.plan.regions:
        _check_written(src, str(out), case)
    assert open(src, "rb").read() == before  # input untouched


@pytest.mark.parametrize("name", ["t5_ts", "gptcausal_ts", "t5_sdpa_ts"])
def test_estimate_reads_the_written_model(name, tmp_path):
    """`estimate` of a chunked TorchScript export follows its Loops (issue 12 item 5): the bodies
    read outer scalars (the attention scale, shape []) and an Expand target built from
    ConstantOfShape/Where on a [4] shape; both keep their values and shapes inside the body, else
    the loop's output is unknown (exit 2). The estimate matches ORT's allocator (exact arena)."""
    from bench.estimate_accuracy import arena_peak
    case = CASES[name]
    out = tmp_path / "chunked.onnx"
    api.optimize(case.file, out, case.budget, case.shapes, verify_output=False)
    _, est = api.estimate(out, case.shapes)
    feeds = make_inputs(onnx.load(str(out)), {k: tuple(v) for k, v in case.shapes.items()}, seed=0)
    measured = arena_peak(str(out), feeds)
    assert abs(est.peak_bytes / measured - 1) < 0.05, (est.peak_bytes, measured)


@pytest.mark.parametrize("name", ["t5_sdpa_ts", "t5_ts"])
def test_plan_predicts_the_written_models_peak(name, tmp_path):
    """The planner's prediction of a loop's body follows ORT's order: in the T5 sdpa export ORT
    computes a chunk's scores before the bias rows it adds to them, so both are live while the
    masked bias is built (graph order predicted 14% low here, 20% at the bench size)."""
    from bench.estimate_accuracy import arena_peak
    case = CASES[name]
    out = tmp_path / "chunked.onnx"
    res = api.optimize(case.file, out, case.budget, case.shapes, verify_output=False)
    feeds = make_inputs(onnx.load(str(out)), {k: tuple(v) for k, v in case.shapes.items()}, seed=0)
    measured = arena_peak(str(out), feeds)
    assert abs(res.plan.final.peak_bytes / measured - 1) < 0.05, (res.plan.final.peak_bytes, measured)
