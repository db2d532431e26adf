"""Export real architectures (random weights, built from configs) to ONNX.

Generation-time tool only: needs the `.venv-models` environment (see
models/README.md and models/requirements.txt), never the project's runtime.

    python -m models.export --family gpt|bert|vit|unet|evoformer|all \
        --out models/out [--opset 20|23] [--size tiny|bench]

Every family:
  * is built from a config (no model hub), all parameters re-drawn from a
    seeded normal distribution (libraries zero-init final projections, which
    would make blocks exact identities);
  * is exported with the dynamo exporter (`torch.onnx.export(dynamo=True)`)
    and/or the TorchScript-based one (`dynamo=False`, file stem `*_ts`), weights
    embedded;
  * is checked: onnx.checker, every intended dynamic input dim is symbolic
    (dim_param), and onnxruntime output == torch output at two sizes.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.export import Dim

SEED = 1234
FAMILIES = ("gpt", "bert", "vit", "unet", "unetsd", "evoformer", "pairformer", "qwen2", "t5", "gptcausal")


# --------------------------------------------------------------------------
# common helpers
# --------------------------------------------------------------------------


@dataclass
class Spec:
    """What one export needs: model, sample inputs, dynamic dims, checks."""

    name: str
    model: torch.nn.Module
    sample: dict[str, torch.Tensor]  # ordered: graph input order
    dynamic_shapes: dict[str, dict[int, Dim]]
    output_names: list[str]
    # input name -> axes that MUST stay symbolic in the ONNX graph
    dynamic_axes: dict[str, list[int]]
    # inputs at two other sizes for the onnxruntime-vs-torch check
    checks: list[dict[str, torch.Tensor]] = field(default_factory=list)
    # larger inputs for timing (bench only)
    timing: list[dict[str, torch.Tensor]] = field(default_factory=list)
    atol: float = 1e-3


def redraw_parameters(model: torch.nn.Module, seed: int = SEED) -> None:
    """Re-draw every parameter from a seeded normal distribution.

    Matrices/kernels: N(0, s) with s = clamp(1/sqrt(fan_in), 0.02, 0.2).
    Norm-layer scales: 1 + N(0, 0.1); other vectors (biases, norm shifts,
    position/cls tokens): N(0, 0.1)."""
    gen = torch.Generator().manual_seed(seed)
    norm_params = set()
    for mod in model.modules():
        if "norm" in type(mod).__name__.lower():
            w = getattr(mod, "weight", None)
            if isinstance(w, torch.nn.Parameter):
                norm_params.add(id(w))
    with torch.no_grad():
        for _, p in model.named_parameters():
            if id(p) in norm_params:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.dim() >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                std = min(0.2, max(0.02, 1.0 / math.sqrt(fan_in)))
                p.copy_(std * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def op_histogram(model) -> dict[str, int]:
    """op_type -> count over the main graph, subgraphs and local functions."""
    import onnx

    hist: collections.Counter = collections.Counter()

    def walk(graph):
        for node in graph.node:
            key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            hist[key] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        walk(g)

    walk(model.graph)
    for fn in model.functions:
        for node in fn.node:
            hist[f"{fn.name}/{node.op_type}"] += 1
    return dict(sorted(hist.items()))


def describe_io(model) -> dict:
    """Inputs/outputs as {name, dtype, dims} with symbolic names kept."""
    import onnx

    def one(vi):
        t = vi.type.tensor_type
        dims = []
        for d in t.shape.dim:
            if d.HasField("dim_param"):
                dims.append(d.dim_param)
            elif d.HasField("dim_value"):
                dims.append(d.dim_value)
            else:
                dims.append("?")
        return {
            "name": vi.name,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
            "dims": dims,
        }

    return {
        "inputs": [one(v) for v in model.graph.input],
        "outputs": [one(v) for v in model.graph.output],
    }


def _strip_metadata(model) -> None:
    """Drop the exporter's per-node debug metadata (stack traces, FX node text):
    it is most of a small model's file size and carries no semantics."""
    def walk(graph):
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                if attr.g is not None and attr.HasField("g"):
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)
        for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
            del vi.metadata_props[:]
        for init in graph.initializer:
            del init.metadata_props[:]

    walk(model.graph)
    for fn in model.functions:
        for node in fn.node:
            del node.metadata_props[:]


def check_dynamic_inputs(model, spec: Spec) -> None:
    """Fail loudly if an intended dynamic input dim became a constant."""
    inputs = {vi.name: vi for vi in model.graph.input}
    missing = set(spec.sample) - set(inputs)
    if missing:
        raise SystemExit(f"[{spec.name}] graph lost inputs {sorted(missing)}; has {sorted(inputs)}")
    for name, axes in spec.dynamic_axes.items():
        dims = inputs[name].type.tensor_type.shape.dim
        for ax in axes:
            d = dims[ax]
            if not d.HasField("dim_param") or d.HasField("dim_value"):
                raise SystemExit(
                    f"[{spec.name}] input {name!r} axis {ax} is not symbolic after export "
                    f"(dims: {[x.dim_param or x.dim_value for x in dims]})"
                )


def _torch_outputs(model, inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(**inputs)
    if isinstance(out, torch.Tensor):
        out = (out,)
    return [o.detach().numpy() for o in out]


def _ort_session(path: str, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _feed(inputs: dict[str, torch.Tensor], sess) -> dict[str, np.ndarray]:
    names = {i.name for i in sess.get_inputs()}
    return {k: v.numpy() for k, v in inputs.items() if k in names}


def _shape_str(inputs: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k}{list(v.shape)}" for k, v in inputs.items())


def run_checks(path: str, spec: Spec) -> list[dict]:
    """onnxruntime vs torch at the check sizes; raise on mismatch."""
    sess = _ort_session(path)
    results = []
    for inputs in spec.checks:
        ref = _torch_outputs(spec.model, inputs)
        got = sess.run(None, _feed(inputs, sess))
        if len(got) != len(ref):
            raise SystemExit(f"[{spec.name}] ORT gave {len(got)} outputs, torch {len(ref)}")
        diffs = []
        for r, g in zip(ref, got):
            if r.shape != g.shape:
                raise SystemExit(f"[{spec.name}] shape mismatch torch {r.shape} vs ORT {g.shape}")
            diffs.append(float(np.max(np.abs(r.astype(np.float64) - g.astype(np.float64)))))
        scale = max(float(np.max(np.abs(r))) for r in ref)
        res = {"inputs": _shape_str(inputs), "max_abs_diff": max(diffs), "max_abs_ref": scale}
        print(f"  [{spec.name}] ORT vs torch at {res['inputs']}: max|diff| {max(diffs):.3g} "
              f"(max|ref| {scale:.3g})")
        if not max(diffs) <= spec.atol * max(1.0, scale):
            raise SystemExit(f"[{spec.name}] ORT output differs from torch: {diffs}")
        results.append(res)
    return results


_TIMING_CHILD = r"""
import json, sys, time
import numpy as np
import onnxruntime as ort
path, npz, threads, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
feed = dict(np.load(npz))
so = ort.SessionOptions()
so.intra_op_num_threads = threads
so.inter_op_num_threads = 1
sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])  # kB
base = status("VmRSS")
try:  # reset the high-water mark so the peak is the run's, not session creation's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
best = float("inf")
for _ in range(repeat):
    t0 = time.perf_counter()
    sess.run(None, feed)
    best = min(best, time.perf_counter() - t0)
peak = status("VmHWM")
print(json.dumps({"seconds": best, "rss_before_run_mib": base / 1024, "peak_rss_mib": peak / 1024}))
"""


def run_timing(path: str, spec: Spec, threads: int = 2, repeat: int = 2) -> list[dict]:
    """ORT CPU wall time (best of `repeat`) and peak RSS, each size in a fresh
    process so the peak belongs to that size alone."""
    import subprocess
    import tempfile

    sess = _ort_session(path)
    names = {i.name for i in sess.get_inputs()}
    del sess
    results = []
    for inputs in spec.timing:
        with tempfile.TemporaryDirectory() as tmp:
            npz = os.path.join(tmp, "feed.npz")
            np.savez(npz, **{k: v.numpy() for k, v in inputs.items() if k in names})
            proc = subprocess.run(
                [sys.executable, "-c", _TIMING_CHILD, path, npz, str(threads), str(repeat)],
                capture_output=True, text=True)
        res = {"inputs": _shape_str(inputs), "threads": threads}
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:]
            res["error"] = f"exit {proc.returncode}" + (f": {tail[0]}" if tail else
                                                         " (killed: out of memory?)")
            print(f"  [{spec.name}] ORT CPU at {res['inputs']}: FAILED {res['error']}")
        else:
            m = json.loads(proc.stdout.strip().splitlines()[-1])
            res.update(seconds=round(m["seconds"], 3),
                       peak_rss_mib=round(m["peak_rss_mib"]),
                       rss_before_run_mib=round(m["rss_before_run_mib"]))
            print(f"  [{spec.name}] ORT CPU {threads} threads at {res['inputs']}: "
                  f"{res['seconds']:.3f} s, peak RSS {res['peak_rss_mib']} MiB "
                  f"(before run {res['rss_before_run_mib']} MiB)")
        results.append(res)
    return results


def _dim_names(spec: Spec) -> dict[str, dict[int, str]]:
    """The dynamic axes as the TorchScript exporter wants them: input -> {axis: dim name}."""
    return {name: {ax: d.__name__ for ax, d in dims.items()} for name, dims in spec.dynamic_shapes.items()}


def _export_proto(spec: Spec, opset: int, exporter: str):
    """The ModelProto of one export: the dynamo exporter (torch.export, `dynamic_shapes`) or the
    TorchScript-based one (`dynamo=False`: tracing, positional inputs, `dynamic_axes` by name)."""
    import io

    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            prog = torch.onnx.export(
                spec.model, args=(), kwargs=dict(spec.sample), dynamo=True,
                dynamic_shapes=spec.dynamic_shapes, opset_version=opset,
                output_names=spec.output_names, external_data=False, verbose=False)
            return prog.model_proto
        buf = io.BytesIO()
        torch.onnx.export(
            spec.model, tuple(spec.sample.values()), buf, dynamo=False,
            input_names=list(spec.sample), output_names=spec.output_names,
            dynamic_axes=_dim_names(spec), opset_version=opset, do_constant_folding=True)
        return onnx.load_from_string(buf.getvalue())


def export_spec(spec: Spec, out_dir: str, opset: int, timing: bool = False,
                exporter: str = "dynamo") -> dict:
    import onnx

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{spec.name}.onnx")
    spec.model.eval()
    proto = _export_proto(spec, opset, exporter)
    _strip_metadata(proto)
    onnx.save(proto, path)
    # drop a stale external-data file a previous run may have left
    if os.path.exists(path + ".data"):
        os.remove(path + ".data")
    onnx.checker.check_model(path, full_check=True)
    model = onnx.load(path)
    check_dynamic_inputs(model, spec)
    info = {
        "name": spec.name,
        "file": path,
        "bytes": os.path.getsize(path),
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "exporter": exporter,
        **describe_io(model),
        "ops": op_histogram(model),
    }
    print(f"[{spec.name}] exported {path} ({info['bytes'] / 1e6:.2f} MB, opset {info['opset']}, {exporter})")
    print(f"  inputs:  {[(i['name'], i['dtype'], i['dims']) for i in info['inputs']]}")
    print(f"  outputs: {[(o['name'], o['dtype'], o['dims']) for o in info['outputs']]}")
    print(f"  ops: {info['ops']}")
    info["checks"] = run_checks(path, spec)
    if timing and spec.timing:
        info["timing"] = run_timing(path, spec)
    return info


# --------------------------------------------------------------------------
# families
# --------------------------------------------------------------------------


class _LogitsOnly(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                          use_cache=False).logits


class _BertWrap(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class _VitWrap(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, pixel_values):
        return self.inner(pixel_values=pixel_values,
                          interpolate_pos_encoding=True).last_hidden_state


def _ids(batch, seq, vocab, seed):
    return torch.randint(0, vocab, (batch, seq), generator=_gen(seed), dtype=torch.int64)


def _mask(batch, seq, seed, pad=True):
    m = torch.ones(batch, seq, dtype=torch.int64)
    if pad and batch > 1:  # right-pad the last row a little
        m[-1, seq - max(1, seq // 8):] = 0
    return m


def _text_spec(family: str, size: str, attn: str, opset: int, model, vocab: int, max_len: int,
               output: str, sample_seed: int) -> Spec:
    """Spec of a token model with `input_ids` and `attention_mask` [batch, seq] (GPT-2, BERT)."""
    batch, seq = Dim("batch", min=1, max=64), Dim("seq", min=2, max=max_len)
    sample = {"input_ids": _ids(2, 17, vocab, sample_seed), "attention_mask": _mask(2, 17, sample_seed)}
    checks = [{"input_ids": _ids(2, s, vocab, s), "attention_mask": _mask(2, s, s)} for s in (33, 130)]
    timing = [{"input_ids": _ids(1, s, vocab, s), "attention_mask": _mask(1, s, s)}
              for s in (1024, 2048, 4096, 8192)]
    suffix = "" if attn == "eager" else f"_{attn}"
    suffix += "" if opset == 20 else f"_opset{opset}"
    return Spec(
        name=f"{family}_{size}{suffix}",
        model=model,
        sample=sample,
        dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
        output_names=[output],
        dynamic_axes={"input_ids": [0, 1], "attention_mask": [0, 1]},
        checks=checks,
        timing=timing,
    )


def gpt_spec(size: str, attn: str, opset: int) -> Spec:
    from transformers import GPT2Config, GPT2LMHeadModel

    if size == "tiny":
        cfg = dict(n_layer=2, n_embd=64, n_head=2, vocab_size=1000, n_positions=1024)
    else:
        cfg = dict(n_layer=2, n_embd=256, n_head=4, vocab_size=8192, n_positions=8192)
    config = GPT2Config(**cfg, attn_implementation=attn, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    torch.manual_seed(SEED)
    model = _LogitsOnly(GPT2LMHeadModel(config)).eval()
    redraw_parameters(model)
    return _text_spec("gpt2", size, attn, opset, model, config.vocab_size, config.n_positions, "logits", 1)


def bert_spec(size: str, attn: str, opset: int) -> Spec:
    from transformers import BertConfig, BertModel

    if size == "tiny":
        cfg = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2,
                   intermediate_size=256, vocab_size=1000, max_position_embeddings=1024)
    elif size == "base":  # BERT-base widths, 2 layers (issue 16's fused case)
        cfg = dict(num_hidden_layers=2, hidden_size=768, num_attention_heads=12,
                   intermediate_size=3072, vocab_size=8192, max_position_embeddings=8192)
    else:
        cfg = dict(num_hidden_layers=2, hidden_size=256, num_attention_heads=4,
                   intermediate_size=1024, vocab_size=8192, max_position_embeddings=8192)
    config = BertConfig(**cfg, attn_implementation=attn, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    torch.manual_seed(SEED)
    model = _BertWrap(BertModel(config, add_pooling_layer=False)).eval()
    redraw_parameters(model)
    return _text_spec("bert", size, attn, opset, model, config.vocab_size, config.max_position_embeddings,
                      "last_hidden_state", 2)


def vit_spec(size: str, attn: str, opset: int) -> Spec:
    from transformers import ViTConfig, ViTModel

    if size == "tiny":
        cfg = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2,
                   intermediate_size=256, image_size=64)
    else:
        cfg = dict(num_hidden_layers=2, hidden_size=256, num_attention_heads=4,
                   intermediate_size=1024, image_size=224)
    config = ViTConfig(**cfg, patch_size=16, num_channels=3, attn_implementation=attn,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(SEED)
    model = _VitWrap(ViTModel(config, add_pooling_layer=False)).eval()
    redraw_parameters(model)
    # H, W: any size (the patch conv floors to H//16 x W//16 patches).
    batch = Dim("batch", min=1, max=64)
    height, width = Dim("height", min=32, max=4096), Dim("width", min=32, max=4096)

    def px(b, h, w, seed):
        return {"pixel_values": torch.randn(b, 3, h, w, generator=_gen(seed))}

    # Sample must not equal image_size x image_size: ViT's interpolate_pos_encoding
    # short-cuts (and export specialises H, W) when the sample matches the config.
    sample = px(2, 96, 80, 3)
    return Spec(
        name=f"vit_{size}" + ("" if attn == "eager" else f"_{attn}")
        + ("" if opset == 20 else f"_opset{opset}"),
        model=model,
        sample=sample,
        dynamic_shapes={"pixel_values": {0: batch, 2: height, 3: width}},
        output_names=["last_hidden_state"],
        dynamic_axes={"pixel_values": [0, 2, 3]},
        checks=[px(1, 64, 128, 4), px(2, 160, 160, 5), px(1, 72, 100, 18),
                # tiny config's own image size: torch's short-cut path vs ONNX's Resize
                px(1, config.image_size, config.image_size, 19)],
        timing=[px(1, 512, 512, 6), px(1, 768, 768, 7), px(1, 1024, 1024, 20)],
        atol=2e-3,
    )


class _UNetWrap(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.inner(sample, timestep, encoder_hidden_states, return_dict=False)[0]


def _set_unet_processor(unet, attn: str) -> None:
    """diffusers' attention processors: 'classic' = AttnProcessor (baddbmm(empty, q, k^T, beta=0,
    alpha=scale): Expand of a zero to [B*H, L, L], Mul, Add, Softmax), 'sdpa' = AttnProcessor2_0
    (F.scaled_dot_product_attention); anything else keeps the library's default (2_0 on torch 2)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if attn == "classic":
        unet.set_attn_processor(AttnProcessor())
    elif attn == "sdpa":
        unet.set_attn_processor(AttnProcessor2_0())


def unet_spec(size: str, attn: str, opset: int, sd: bool = False) -> Spec:
    """diffusers UNet2DConditionModel. `sd`: a Stable-Diffusion-like layout (three levels,
    attention at full, 1/2 and 1/4 resolution plus the mid block, >= 40 channels per head);
    otherwise the small two-level one (head dim 4)."""
    from diffusers import UNet2DConditionModel

    if sd:
        # SD 1.x: 8 heads over 320/640/1280 channels = head dims 40/80/160. Here 2 heads (diffusers'
        # `attention_head_dim` is the head COUNT for UNet2DConditionModel) over 96/192/192 (bench,
        # head dims 48/96/96) or 1 head over 40/40 (tiny, head dim 40; 40/80 was 6.7 MB).
        if size == "tiny":
            cfg = dict(block_out_channels=(40, 40), norm_num_groups=8, cross_attention_dim=32,
                       attention_head_dim=1, sample_size=16,
                       down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                       up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
            ctx_len, ctx_dim = 8, 32
        else:
            cfg = dict(block_out_channels=(96, 192, 192), norm_num_groups=32, cross_attention_dim=128,
                       attention_head_dim=2, sample_size=32,
                       down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
            ctx_len, ctx_dim = 77, 128
    elif size == "tiny":
        cfg = dict(block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32,
                   attention_head_dim=8, sample_size=16,
                   down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
        ctx_len, ctx_dim = 8, 32
    else:
        cfg = dict(block_out_channels=(32, 64), norm_num_groups=32, cross_attention_dim=64,
                   attention_head_dim=8, sample_size=32,
                   down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
        ctx_len, ctx_dim = 77, 64
    levels = len(cfg["block_out_channels"])
    torch.manual_seed(SEED)
    inner = UNet2DConditionModel(in_channels=4, out_channels=4, layers_per_block=1, **cfg)
    _set_unet_processor(inner, attn)
    model = _UNetWrap(inner).eval()
    redraw_parameters(model)
    batch = Dim("batch", min=1, max=64)
    # latent H, W: multiples of 2**(levels-1) (diffusers branches on the size when upsampling)
    step = 2 ** (levels - 1)
    height, width = Dim("height", min=4, max=1024), Dim("width", min=4, max=1024)
    ctx = Dim("ctx_len", min=1, max=1024)

    def inp(b, h, w, L, seed):
        g = _gen(seed)
        return {
            "sample": torch.randn(b, 4, h, w, generator=g),
            "timestep": torch.rand(b, generator=g) * 1000.0,
            "encoder_hidden_states": torch.randn(b, L, ctx_dim, generator=g),
        }

    name = ("unetsd" if sd else "unet") + f"_{size}" + ("_classic" if attn == "classic" else
                                                       "_sdpa" if (sd and attn == "sdpa") else "")
    return Spec(
        name=name,
        model=model,
        sample=inp(2, 10 * step, 6 * step, ctx_len, 8),
        dynamic_shapes={
            "sample": {0: batch, 2: height, 3: width},
            "timestep": {0: batch},
            "encoder_hidden_states": {0: batch, 1: ctx},
        },
        output_names=["out_sample"],
        dynamic_axes={"sample": [0, 2, 3], "timestep": [0], "encoder_hidden_states": [0, 1]},
        checks=[inp(1, 8 * step, 12 * step, ctx_len, 9), inp(2, 16 * step, 16 * step, 5, 10)],
        timing=[inp(1, 64, 64, 77, 11), inp(1, 96, 96, 77, 12), inp(1, 128, 128, 77, 21)],
        atol=2e-3,
    )


def unetsd_spec(size: str, attn: str, opset: int) -> Spec:
    return unet_spec(size, attn, opset, sd=True)


class _EvoWrap(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, msa, pair, msa_mask, pair_mask):
        # chunk_size=None: no Python chunk loop (it would pin n_res during export)
        m, z = self.inner(msa, pair, msa_mask=msa_mask, pair_mask=pair_mask,
                          chunk_size=None, inplace_safe=False)
        return m, z


def _patch_openfold_pair_bias_loop() -> None:
    """openfold3's MSAAttention._prep_inputs runs layer_norm_z + linear_z over
    pair rows in a Python loop of 256-row chunks (`range(0, n_res, 256)`),
    which makes torch.export specialise n_res to the sample's value. Replace it
    by the same computation on the whole tensor (identical numerics)."""
    from openfold3.core.model.layers import msa as of_msa

    if getattr(of_msa.MSAAttention, "_autochunk_patched", False):
        return

    def _prep_inputs(self, m, z, mask, inplace_safe=False):
        n_seq, n_res = m.shape[-3:-1]
        if mask is None:
            mask = m.new_ones(m.shape[:-3] + (n_seq, n_res))
        mask_bias = (self.inf * (mask - 1))[..., :, None, None, :]
        if self.pair_bias and z is not None and self.layer_norm_z is not None \
                and self.linear_z is not None:
            z = self.linear_z(self.layer_norm_z(z))
            z = of_msa.permute_final_dims(z, (2, 0, 1)).unsqueeze(-4)
        return m, mask_bias, z

    of_msa.MSAAttention._prep_inputs = _prep_inputs
    of_msa.MSAAttention._autochunk_patched = True


def _patch_openfold_permute() -> None:
    """openfold3's `permute_final_dims` permutes with negative axes; the TorchScript-based exporter
    writes them into Transpose's `perm` as they are, which is invalid ONNX (the checker rejects
    `perm {0, -1, -3, -2}`). Replace it, in every openfold3 module that imported it, by the same
    permutation with non-negative axes (identical numerics; the dynamo exporter normalises anyway)."""
    from openfold3.core.utils import tensor_utils

    if getattr(tensor_utils, "_autochunk_patched", False):
        return
    original = tensor_utils.permute_final_dims

    def permute_final_dims(tensor: torch.Tensor, inds: list[int]):
        first = tensor.dim() - len(inds)
        return tensor.permute(list(range(first)) + [first + i for i in inds])

    for name, mod in list(sys.modules.items()):
        if name.startswith("openfold3") and getattr(mod, "permute_final_dims", None) is original:
            mod.permute_final_dims = permute_final_dims
    tensor_utils._autochunk_patched = True


def evoformer_spec(size: str, attn: str, opset: int) -> Spec:
    from openfold3.core.model.latent.evoformer import EvoformerBlock

    _patch_openfold_pair_bias_loop()
    _patch_openfold_permute()

    if size == "tiny":
        c_m, c_z, ch = 16, 8, 4
        heads_m, heads_z = 2, 2
    else:
        c_m, c_z, ch = 64, 32, 16
        heads_m, heads_z = 4, 4
    torch.manual_seed(SEED)
    block = EvoformerBlock(
        c_m=c_m, c_z=c_z, c_hidden_msa_att=ch, c_hidden_opm=ch, c_hidden_mul=2 * ch,
        c_hidden_pair_att=ch, no_heads_msa=heads_m, no_heads_pair=heads_z,
        transition_type="relu", transition_n=4, msa_dropout=0.0, pair_dropout=0.0,
        no_column_attention=False, opm_first=False, fuse_projection_weights=False,
        inf=1e9, eps=1e-3,
    )
    model = _EvoWrap(block).eval()
    redraw_parameters(model)
    batch = Dim("batch", min=1, max=64)
    n_seq = Dim("n_seq", min=2, max=4096)
    n_res = Dim("n_res", min=2, max=4096)

    def inp(b, s, r, seed):
        g = _gen(seed)
        mm = torch.ones(b, s, r)
        pm = torch.ones(b, r, r)
        if r > 4:  # mask out the last residue(s) of the last batch item
            mm[-1, :, -2:] = 0
            pm[-1, -2:, :] = 0
            pm[-1, :, -2:] = 0
        return {
            "msa": torch.randn(b, s, r, c_m, generator=g),
            "pair": torch.randn(b, r, r, c_z, generator=g),
            "msa_mask": mm,
            "pair_mask": pm,
        }

    return Spec(
        name=f"evoformer_{size}",
        model=model,
        sample=inp(2, 5, 11, 13),
        dynamic_shapes={
            "msa": {0: batch, 1: n_seq, 2: n_res},
            "pair": {0: batch, 1: n_res, 2: n_res},
            "msa_mask": {0: batch, 1: n_seq, 2: n_res},
            "pair_mask": {0: batch, 1: n_res, 2: n_res},
        },
        output_names=["msa_out", "pair_out"],
        dynamic_axes={"msa": [0, 1, 2], "pair": [0, 1, 2], "msa_mask": [0, 1, 2],
                      "pair_mask": [0, 1, 2]},
        checks=[inp(1, 4, 24, 14), inp(2, 7, 40, 15)],
        timing=[inp(1, 16, 128, 16), inp(1, 16, 256, 17)],
        atol=2e-3,
    )


# --------------------------------------------------------------------------
# the zoo's newer families: a modern decoder (Qwen2), a T5 encoder (relative position buckets
# computed in the graph), a GPT-style decoder whose causal mask is built in the graph, and an
# AlphaFold3-style Pairformer block
# --------------------------------------------------------------------------


def qwen2_spec(size: str, attn: str, opset: int) -> Spec:
    """transformers Qwen2ForCausalLM from a config: rotary embeddings, RMSNorm, grouped-query
    attention (2 key/value heads), SwiGLU MLP; the causal mask is built in the graph from the
    attention mask; rotary positions have no table, so no position limit."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if size == "tiny":
        cfg = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=128, vocab_size=256)
    else:  # head dim 64 as in real decoders
        cfg = dict(num_hidden_layers=2, hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=768, vocab_size=8192)
    config = Qwen2Config(**cfg, max_position_embeddings=131072, attn_implementation=attn,
                         attention_dropout=0.0, tie_word_embeddings=False, use_sliding_window=False)
    torch.manual_seed(SEED)
    model = _LogitsOnly(Qwen2ForCausalLM(config)).eval()
    redraw_parameters(model)
    return _text_spec("qwen2", size, attn, opset, model, config.vocab_size, 131072, "logits", 3)


class _T5Wrap(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def t5_spec(size: str, attn: str, opset: int) -> Spec:
    """transformers T5EncoderModel from a config: the attention bias comes from relative position
    buckets computed in the graph (two aranges subtracted, Abs/Log/Min/Where, Gather from the
    bias table) as [1, H, L, L], once in the first layer and added in every layer."""
    from transformers import T5Config, T5EncoderModel

    if size == "tiny":
        cfg = dict(num_layers=2, d_model=64, d_kv=32, num_heads=2, d_ff=128, vocab_size=256)
    else:
        cfg = dict(num_layers=2, d_model=256, d_kv=64, num_heads=4, d_ff=1024, vocab_size=8192)
    config = T5Config(**cfg, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                      dropout_rate=0.0, feed_forward_proj="relu", is_encoder_decoder=False,
                      use_cache=False, attn_implementation=attn)
    torch.manual_seed(SEED)
    model = _T5Wrap(T5EncoderModel(config)).eval()
    redraw_parameters(model)
    return _text_spec("t5", size, attn, opset, model, config.vocab_size, 131072, "last_hidden_state", 4)


class CausalGPT(torch.nn.Module):
    """A GPT-style decoder written the way many user models are: the causal mask is built in the
    forward pass, `torch.ones(L, L).tril().bool()` (ConstantOfShape/Expand -> Trilu -> Cast) and
    applied with `torch.where` to every layer's scores; no position table (no length limit)."""

    def __init__(self, vocab: int, d: int, heads: int, layers: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.emb = torch.nn.Embedding(vocab, d)
        self.blocks = torch.nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(torch.nn.ModuleDict(dict(
                ln1=torch.nn.LayerNorm(d), qkv=torch.nn.Linear(d, 3 * d), proj=torch.nn.Linear(d, d),
                ln2=torch.nn.LayerNorm(d), fc1=torch.nn.Linear(d, ffn), fc2=torch.nn.Linear(ffn, d))))
        self.ln_f = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, vocab, bias=False)

    def forward(self, input_ids):
        b, n = input_ids.shape
        x = self.emb(input_ids)
        d = x.shape[-1]
        dh = d // self.heads
        causal = torch.ones(n, n, device=x.device).tril().bool()
        neg = torch.tensor(torch.finfo(x.dtype).min, dtype=x.dtype)
        for blk in self.blocks:
            q, k, v = blk["qkv"](blk["ln1"](x)).split(d, dim=-1)
            q, k, v = (t.reshape(b, n, self.heads, dh).transpose(1, 2) for t in (q, k, v))
            s = torch.matmul(q, k.transpose(-1, -2)) * (dh ** -0.5)
            p = torch.softmax(torch.where(causal, s, neg), dim=-1)
            o = torch.matmul(p, v).transpose(1, 2).reshape(b, n, d)
            x = x + blk["proj"](o)
            x = x + blk["fc2"](torch.nn.functional.gelu(blk["fc1"](blk["ln2"](x))))
        return self.head(self.ln_f(x))


def gptcausal_spec(size: str, attn: str, opset: int) -> Spec:
    if size == "tiny":
        vocab, d, heads, layers, ffn = 256, 64, 2, 2, 256
    else:
        vocab, d, heads, layers, ffn = 8192, 256, 4, 2, 1024
    torch.manual_seed(SEED)
    model = CausalGPT(vocab, d, heads, layers, ffn).eval()
    redraw_parameters(model)
    batch, seq = Dim("batch", min=1, max=64), Dim("seq", min=2, max=131072)
    ids = lambda b, n, seed: {"input_ids": _ids(b, n, vocab, seed)}  # noqa: E731
    return Spec(
        name=f"gptcausal_{size}", model=model, sample=ids(2, 17, 5),
        dynamic_shapes={"input_ids": {0: batch, 1: seq}}, output_names=["logits"],
        dynamic_axes={"input_ids": [0, 1]},
        checks=[ids(2, 33, 33), ids(1, 130, 130)],
        timing=[ids(1, s, s) for s in (1024, 2048, 4096)],
    )


class _PairWrap(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, single, pair, single_mask, pair_mask):
        s, z = self.inner(s=single, z=pair, single_mask=single_mask, pair_mask=pair_mask,
                          chunk_size=None, inplace_safe=False)
        return s, z


def pairformer_spec(size: str, attn: str, opset: int) -> Spec:
    """openfold3 PairFormerBlock (AlphaFold3: triangle multiplications via Einsum, triangle
    attentions, pair transition, single attention with pair bias, single transition)."""
    from openfold3.core.model.latent.pairformer import PairFormerBlock

    _patch_openfold_permute()
    if size == "tiny":
        c_s, c_z, ch, heads_s, heads_z = 16, 8, 4, 2, 2
    else:
        c_s, c_z, ch, heads_s, heads_z = 64, 32, 16, 4, 4
    torch.manual_seed(SEED)
    block = PairFormerBlock(
        c_s=c_s, c_z=c_z, c_hidden_pair_bias=ch, no_heads_pair_bias=heads_s, c_hidden_mul=2 * ch,
        c_hidden_pair_att=ch, no_heads_pair=heads_z, transition_type="swiglu", transition_n=2,
        pair_dropout=0.0, fuse_projection_weights=False, inf=1e9)
    model = _PairWrap(block).eval()
    redraw_parameters(model)
    batch = Dim("batch", min=1, max=64)
    n_tok = Dim("n_token", min=2, max=4096)

    def inp(b, r, seed):
        g = _gen(seed)
        sm, pm = torch.ones(b, r), torch.ones(b, r, r)
        if r > 4:
            sm[-1, -2:] = 0
            pm[-1, -2:, :] = 0
            pm[-1, :, -2:] = 0
        return {"single": torch.randn(b, r, c_s, generator=g), "pair": torch.randn(b, r, r, c_z, generator=g),
                "single_mask": sm, "pair_mask": pm}

    return Spec(
        name=f"pairformer_{size}", model=model, sample=inp(2, 11, 13),
        dynamic_shapes={"single": {0: batch, 1: n_tok}, "pair": {0: batch, 1: n_tok, 2: n_tok},
                        "single_mask": {0: batch, 1: n_tok}, "pair_mask": {0: batch, 1: n_tok, 2: n_tok}},
        output_names=["single_out", "pair_out"],
        dynamic_axes={"single": [0, 1], "pair": [0, 1, 2], "single_mask": [0, 1], "pair_mask": [0, 1, 2]},
        checks=[inp(1, 24, 14), inp(2, 40, 15)],
        timing=[inp(1, 128, 16), inp(1, 256, 17)],
        atol=2e-3,
    )


BUILDERS: dict[str, Callable[[str, str, int], Spec]] = {
    "gpt": gpt_spec,
    "bert": bert_spec,
    "vit": vit_spec,
    "unet": unet_spec,
    "unetsd": unetsd_spec,
    "evoformer": evoformer_spec,
    "pairformer": pairformer_spec,
    "qwen2": qwen2_spec,
    "t5": t5_spec,
    "gptcausal": gptcausal_spec,
}
EXPORTERS = ("dynamo", "torchscript")

# (family, attention implementation, exporter) exported for each opset. Attention: transformers'
# eager / sdpa; diffusers' classic AttnProcessor / AttnProcessor2_0 ('-' = the library default,
# AttnProcessor2_0, kept for the original unet file name); '-' for families with one implementation.
_BOTH = EXPORTERS
VARIANTS = {
    20: [(fam, attn, ex) for ex in _BOTH for fam, attn in (
        ("gpt", "eager"), ("gpt", "sdpa"), ("bert", "eager"), ("bert", "sdpa"),
        ("vit", "eager"), ("vit", "sdpa"), ("unet", "-"), ("unet", "classic"),
        ("unetsd", "classic"), ("unetsd", "sdpa"), ("evoformer", "-"), ("pairformer", "-"),
        ("qwen2", "eager"), ("qwen2", "sdpa"), ("t5", "eager"), ("gptcausal", "-"))]
    # T5 with sdpa: the dynamo exporter fails (torch 2.13: "Cannot view a tensor with shape
    # [s0, s1, 2, 32] ... as (s0, s1, 64)" at the attention output reshape); TorchScript works
    + [("t5", "sdpa", "torchscript")],
    23: [("gpt", "sdpa", "dynamo"), ("bert", "sdpa", "dynamo")],
}


def variant_name(spec_name: str, exporter: str) -> str:
    """File stem: the builder's name, `_ts` for the TorchScript-based exporter."""
    return spec_name + ("_ts" if exporter == "torchscript" else "")


# The committed test-suite set: (family, attn, opset, exporter, file stem)
TINY_SUITE = [
    ("gpt", "eager", 20, "dynamo", "gpt2_tiny"),
    ("bert", "eager", 20, "dynamo", "bert_tiny"),
    ("vit", "eager", 20, "dynamo", "vit_tiny"),
    ("unet", "eager", 20, "dynamo", "unet_tiny"),
    ("evoformer", "eager", 20, "dynamo", "evoformer_tiny"),
    ("gpt", "sdpa", 23, "dynamo", "gpt2_tiny_opset23"),
    # the zoo (issue 11 item 4): every exporter x attention implementation the libraries offer
    ("gpt", "eager", 20, "torchscript", "gpt2_tiny_ts"),
    ("gpt", "sdpa", 20, "dynamo", "gpt2_tiny_sdpa"),
    ("bert", "eager", 20, "torchscript", "bert_tiny_ts"),
    ("bert", "sdpa", 20, "dynamo", "bert_tiny_sdpa"),
    ("bert", "sdpa", 20, "torchscript", "bert_tiny_sdpa_ts"),
    ("vit", "sdpa", 20, "dynamo", "vit_tiny_sdpa"),
    ("vit", "eager", 20, "torchscript", "vit_tiny_ts"),
    ("unet", "classic", 20, "dynamo", "unet_tiny_classic"),
    ("unet", "eager", 20, "torchscript", "unet_tiny_ts"),
    ("unetsd", "classic", 20, "dynamo", "unetsd_tiny_classic"),
    ("evoformer", "eager", 20, "torchscript", "evoformer_tiny_ts"),
    ("pairformer", "eager", 20, "dynamo", "pairformer_tiny"),
    ("pairformer", "eager", 20, "torchscript", "pairformer_tiny_ts"),
    ("qwen2", "eager", 20, "dynamo", "qwen2_tiny"),
    ("qwen2", "sdpa", 20, "dynamo", "qwen2_tiny_sdpa"),
    ("qwen2", "eager", 20, "torchscript", "qwen2_tiny_ts"),
    ("t5", "eager", 20, "dynamo", "t5_tiny"),
    ("t5", "eager", 20, "torchscript", "t5_tiny_ts"),
    ("t5", "sdpa", 20, "torchscript", "t5_tiny_sdpa_ts"),
    ("gptcausal", "eager", 20, "dynamo", "gptcausal_tiny"),
    ("gptcausal", "eager", 20, "torchscript", "gptcausal_tiny_ts"),
]
TINY_SUITE_CMD = "python -m models.export --tiny-suite --out models/tiny"
TINY_SUITE_MAX_BYTES = 20 * 1024 * 1024


def _fmt_dims(dims) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def write_tiny_readme(infos: list[dict], out_dir: str) -> None:
    total = sum(i["bytes"] for i in infos)
    lines = [
        "# Tiny real-architecture ONNX models (test fixtures)",
        "",
        "Generated, not hand-written: random weights (seeded normal re-draw of every",
        "parameter), built from configs, exported with `torch.onnx.export` (the dynamo",
        "exporter, or the TorchScript-based one, `dynamo=False`, for `*_ts` files), weights",
        "embedded. Regenerate (in the `.venv-models` environment, see `models/README.md`) with",
        "(`--keep-existing` keeps the files already there):",
        "",
        "```",
        f".venv-models/bin/{TINY_SUITE_CMD}",
        "```",
        "",
        "Each export is checked by `models/export.py`: `onnx.checker` (full check), every",
        "intended dynamic input axis is a symbolic `dim_param`, and onnxruntime output",
        "matches torch at the sizes listed under *checked*.",
        f"Total size: {total / 1e6:.2f} MB.",
        "",
        "Generated with torch " + torch.__version__.split("+")[0] + ", "
        + ", ".join(f"{m} {_version(m)}" for m in
                    ("transformers", "diffusers", "openfold3", "onnx", "onnxscript",
                     "onnxruntime")) + ".",
        "",
    ]
    for info in infos:
        name = os.path.basename(info["file"])
        lines += [f"## `{name}`", "",
                  f"- {info['description']}",
                  f"- opset {info['opset']}, {info.get('exporter', 'dynamo')} exporter, "
                  f"{info['bytes'] / 1e6:.2f} MB"]
        lines.append("- inputs:")
        for i in info["inputs"]:
            lines.append(f"  - `{i['name']}` {i['dtype']} {_fmt_dims(i['dims'])}")
        lines.append("- outputs:")
        for o in info["outputs"]:
            lines.append(f"  - `{o['name']}` {o['dtype']} {_fmt_dims(o['dims'])}")
        ops = ", ".join(f"{k} {v}" for k, v in info["ops"].items())
        lines.append(f"- ops ({len(info['ops'])} types, {sum(info['ops'].values())} nodes): {ops}")
        for c in info["checks"]:
            lines.append(f"- checked ORT vs torch at {c['inputs']}: max abs diff "
                         f"{c['max_abs_diff']:.2g} (max abs output {c['max_abs_ref']:.3g})")
        if info.get("notes"):
            lines.append(f"- note: {info['notes']}")
        lines.append("")
    union = sorted(set().union(*(i["ops"] for i in infos)))
    lines += ["## Union of op types", "", ", ".join(union), ""]
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write("\n".join(lines))


def _version(mod: str) -> str:
    from importlib.metadata import version

    try:
        return version(mod)
    except Exception:  # pragma: no cover
        return "?"


DESCRIPTIONS = {
    "gpt": "transformers GPT2LMHeadModel, 2 layers, n_embd 64, 2 heads, vocab 1000, "
           "n_positions 1024 (seq <= 1024)",
    "bert": "transformers BertModel (no pooler), 2 layers, hidden 64, 2 heads, "
            "intermediate 256, vocab 1000, max positions 1024 (seq <= 1024)",
    "vit": "transformers ViTModel (no pooler), patch 16, config image 64, 2 layers, "
           "hidden 64, 2 heads; interpolate_pos_encoding=True so any H, W >= 32 works "
           "(tokens = (H//16)*(W//16)+1)",
    "unet": "diffusers UNet2DConditionModel, block_out_channels (16, 32), "
            "CrossAttnDownBlock2D/DownBlock2D + UpBlock2D/CrossAttnUpBlock2D, "
            "layers_per_block 1, 8 GroupNorm groups, cross_attention_dim 32, head dim 8; "
            "height and width must be EVEN (one down/up-sampling stage; odd sizes fail "
            "at a Concat in ORT)",
    "evoformer": "openfold3 EvoformerBlock (AF2 style: MSA row attention with pair "
                 "bias, column attention, transition, outer product mean, triangle "
                 "multiplications, triangle attentions, pair transition), c_m 16, "
                 "c_z 8, hidden 4, 2 heads; pair-bias chunk loop patched out",
    "unetsd": "diffusers UNet2DConditionModel, Stable-Diffusion-like heads: block_out_channels "
              "(40, 40), 1 head (head dim 40), CrossAttnDownBlock2D x2 + "
              "CrossAttnUpBlock2D x2 + mid block: attention at full and 1/2 resolution; "
              "height and width must be even",
    "pairformer": "openfold3 PairFormerBlock (AlphaFold3: triangle multiplications via Einsum, "
                  "triangle attentions, swiglu pair transition, single attention with pair bias, "
                  "single transition), c_s 16, c_z 8, hidden 4, 2 heads",
    "qwen2": "transformers Qwen2ForCausalLM (rotary embeddings, RMSNorm, grouped-query attention "
             "4 query / 2 key-value heads, SwiGLU), 2 layers, hidden 64, intermediate 128, "
             "vocab 256; no position table",
    "t5": "transformers T5EncoderModel, 2 layers, d_model 64, 2 heads of 32, d_ff 128, vocab 256, "
          "32 relative-position buckets (max distance 128) computed in the graph",
    "gptcausal": "GPT-style decoder (models/export.py CausalGPT): causal mask built in the graph "
                 "(ones(L, L).tril().bool(), torch.where), 2 layers, d 64, 2 heads, vocab 256; "
                 "no position table",
}


def _tiny_description(fam: str, attn: str, exporter: str) -> str:
    text = DESCRIPTIONS[fam]
    if fam in ("gpt", "bert", "vit", "qwen2", "t5"):
        text += f"; attn_implementation={attn!r}"
    elif fam in ("unet", "unetsd"):
        text += "; attention processor " + ("AttnProcessor (classic baddbmm)" if attn == "classic"
                                            else "AttnProcessor2_0 (sdpa)")
    return text + ("; TorchScript-based exporter (dynamo=False)" if exporter == "torchscript"
                   else "; dynamo exporter")


def export_tiny_suite(out_dir: str, keep_existing: bool = False) -> list[dict]:
    """Export every TINY_SUITE entry; with `keep_existing`, a file already there (and listed in the
    old manifest) is kept as it is, with its old manifest entry."""
    old = {}
    manifest_path = os.path.join(out_dir, "manifest.json")
    if keep_existing and os.path.exists(manifest_path):
        with open(manifest_path) as f:
            old = {e["name"]: e for e in json.load(f)}
    infos = []
    for fam, attn, opset, exporter, stem in TINY_SUITE:
        path = os.path.join(out_dir, f"{stem}.onnx")
        if stem in old and os.path.exists(path):
            info = dict(old[stem], file=path)
            info.setdefault("exporter", exporter)
            print(f"[{stem}] kept {path}")
            infos.append(info)
            continue
        spec = BUILDERS[fam]("tiny", attn, opset)
        spec.name = stem
        info = export_spec(spec, out_dir, opset, exporter=exporter)
        info["description"] = _tiny_description(fam, attn, exporter)
        if opset >= 23:
            info["has_attention_op"] = "Attention" in info["ops"]
            if not info["has_attention_op"]:
                raise SystemExit(f"[{stem}] expected a standard Attention op at opset {opset}")
            info["notes"] = "sdpa at opset 23: attention is the standard ONNX `Attention` op"
        infos.append(info)
    total = sum(i["bytes"] for i in infos)
    if total > TINY_SUITE_MAX_BYTES:
        raise SystemExit(f"tiny suite is {total} bytes, over {TINY_SUITE_MAX_BYTES}")
    manifest = [{k: v for k, v in i.items() if k != "file"} | {"file": os.path.basename(i["file"])}
                for i in infos]
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    write_tiny_readme(infos, out_dir)
    return infos


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=FAMILIES + ("all",), default="all",
                    help="one family, or all")
    ap.add_argument("--out", default="models/out")
    ap.add_argument("--opset", type=int, choices=(20, 23), default=20)
    ap.add_argument("--size", choices=("tiny", "bench", "base"), default="bench",
                    help="base: BERT-base widths (768, 12 heads), 2 layers; bert only")
    ap.add_argument("--attn", choices=("eager", "sdpa", "classic", "both"), default="both",
                    help="attention implementation (transformers eager/sdpa, diffusers classic/sdpa)")
    ap.add_argument("--exporter", choices=EXPORTERS + ("both",), default="both",
                    help="torch exporter: dynamo, torchscript (dynamo=False) or both")
    ap.add_argument("--keep-existing", action="store_true",
                    help="--tiny-suite: keep files already exported (and their manifest entries)")
    ap.add_argument("--time", action="store_true",
                    help="also time onnxruntime CPU (2 threads) at bench lengths")
    ap.add_argument("--report", default=None, help="write a JSON summary here")
    ap.add_argument("--tiny-suite", action="store_true",
                    help="export the committed test fixtures (tiny size, fixed names) "
                         "plus README.md and manifest.json into --out")
    args = ap.parse_args(argv)

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if args.tiny_suite:
        export_tiny_suite(args.out, keep_existing=args.keep_existing)
        return 0
    variants = VARIANTS[args.opset]
    if args.family != "all":
        variants = [v for v in variants if v[0] == args.family]
        if not variants:
            ap.error(f"--opset {args.opset} has no variant for --family {args.family}")
    if args.size == "base" and args.family != "bert":
        ap.error("--size base is for --family bert only")
    if args.attn != "both":
        variants = [v for v in variants if v[1] in ("-", args.attn)]
    if args.exporter != "both":
        variants = [v for v in variants if v[2] == args.exporter]

    infos, failed = [], []
    for fam, attn, exporter in variants:
        spec = BUILDERS[fam](args.size, "eager" if attn == "-" else attn, args.opset)
        spec.name = variant_name(spec.name, exporter)
        try:
            info = export_spec(spec, args.out, args.opset, timing=args.time, exporter=exporter)
        except (Exception, SystemExit) as e:  # one failed variant must not stop the others
            print(f"[{spec.name}] FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  file=sys.stderr)
            failed.append(spec.name)
            continue
        if args.opset >= 23 and attn == "sdpa":
            info["has_attention_op"] = "Attention" in info["ops"]
            print(f"  [{spec.name}] standard Attention op present: {info['has_attention_op']}")
        infos.append(info)
    if args.report:
        with open(args.report, "w") as f:
            json.dump(infos, f, indent=1)
    if failed:
        print(f"{len(failed)} variant(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
