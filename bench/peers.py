"""Peers: ONNX Runtime's transformers optimizer (fused ops) on BERT and the UNet, and ONNX's own
`Attention` op (the opset-23 BERT export), each measured alone and with autochunk on top.

`onnxruntime.transformers.optimizer.optimize_model` is called as documented, with two
adjustments, both recorded in the result:

* its ORT pre-pass (`opt_level` >= 1) imports torch, which this environment does not have (torch
  is never a runtime dependency here). The bench runs the same pre-pass itself (an ORT session at
  ORT_ENABLE_BASIC that writes the optimized model, ConstantSharing disabled as the optimizer
  does) and then calls `optimize_model(..., opt_level=0)` on its output: the python fusions see
  what they would have seen.
* for the UNet on CPU the fusions into CUDA-only contrib ops (NhwcConv, GroupNorm, SkipGroupNorm,
  BiasSplitGelu, BiasAdd, packed QKV/KV) are turned off in `FusionOptions`, else the model cannot
  run on the CPU provider.

Which fusions really happened is returned (`fused`, contrib op counts): the optimizer matches
the patterns of torch-script exports, and on these dynamo exports it may not fuse attention.
"""
from __future__ import annotations

import collections
import logging
import os
from pathlib import Path

_CUDA_ONLY_UNET = ("enable_nhwc_conv", "enable_group_norm", "enable_skip_group_norm", "enable_bias_splitgelu",
                   "enable_bias_add", "enable_packed_qkv", "enable_packed_kv")


def _ort_basic_prepass(src: Path, dst: Path) -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"], disabled_optimizers=["ConstantSharing"])


def ort_transformers_optimize(src: Path, dst: Path, model_type: str, num_heads: int = 0, hidden_size: int = 0) -> dict:
    """Write src optimized by ORT's transformers optimizer to dst; say what it fused."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    # its fusion modules log every unmatched pattern at WARNING/DEBUG; keep the bench's output readable
    for name in ("onnxruntime.transformers", "fusion_base", "onnx_model"):
        logging.getLogger(name).setLevel(logging.ERROR)
    pre = dst.with_name(dst.stem + ".prepass.onnx")
    _ort_basic_prepass(src, pre)
    options = FusionOptions(model_type)
    disabled = []
    if model_type == "unet":
        for k in _CUDA_ONLY_UNET:
            if getattr(options, k, False):
                setattr(options, k, False)
                disabled.append(k)
    opt = optimize_model(str(pre), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                         optimization_options=options, opt_level=0, use_gpu=False)
    opt.save_model_to_file(str(dst))
    os.unlink(pre)
    stats = {k: v for k, v in (opt.get_fused_operator_statistics() or {}).items() if v}
    contrib = collections.Counter(f"{n.domain}:{n.op_type}" for n in opt.model.graph.node if n.domain not in ("", "ai.onnx"))
    attention = sum(v for k, v in contrib.items() if "Attention" in k)
    settings = (f"optimize_model(model_type={model_type!r}, num_heads={num_heads}, hidden_size={hidden_size}, "
                f"use_gpu=False) after an ORT basic pre-pass")
    if disabled:
        settings += "; CUDA-only fusions off: " + ", ".join(d.removeprefix("enable_") for d in disabled)
    return {"settings": settings, "fused": stats, "contrib_ops": dict(contrib), "attention_fused": attention,
            "nodes": len(opt.model.graph.node)}
