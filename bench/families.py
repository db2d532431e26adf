"""The model families the bench runs: which file, how a length becomes input shapes, which lengths.

Full runs use the bench-size exports that `make models` writes to models/out/ (gitignored);
`--quick` uses the committed tiny exports in models/tiny/ at short lengths. The "length" of a
family is the knob that makes its activations grow: tokens for GPT-2 and BERT, the image side in
pixels for ViT (tokens = (side/16)^2 + 1), the latent side for the UNet (self-attention over
side^2 positions), the residue count for the Evoformer (pair representation n_res x n_res).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "models" / "out"
TINY = ROOT / "models" / "tiny"


@dataclass
class Family:
    family: str  # name in the results: gpt, bert, vit, unet, evoformer
    model: str  # file stem, the "model" field of a record
    path: Path
    length_name: str  # what seq_len means for this family
    shapes: Callable[[int], dict[str, list[int]]]
    tokens: Callable[[int], int]  # the longest attention axis at this length
    lengths: list[int]  # main table lengths
    grid: list[int]  # lengths tried for the longest-length-at-a-budget search, ascending
    max_length: int | None = None  # what the model supports (position table), if bounded
    peers: list[str] = field(default_factory=list)  # ORT optimizer peers that apply ("ort-bert", ...)
    peer_lengths: list[int] = field(default_factory=list)


def _tokens(n: int) -> dict[str, list[int]]:
    return {"input_ids": [1, n], "attention_mask": [1, n]}


def _image(n: int) -> dict[str, list[int]]:
    return {"pixel_values": [1, 3, n, n]}


def _latent(ctx: int, dim: int) -> Callable[[int], dict[str, list[int]]]:
    return lambda n: {"sample": [1, 4, n, n], "timestep": [1], "encoder_hidden_states": [1, ctx, dim]}


def _pair(n_seq: int, c_m: int, c_z: int) -> Callable[[int], dict[str, list[int]]]:
    return lambda n: {"msa": [1, n_seq, n, c_m], "pair": [1, n, n, c_z], "msa_mask": [1, n_seq, n], "pair_mask": [1, n, n]}


def _ids_only(n: int) -> dict[str, list[int]]:
    return {"input_ids": [1, n]}


def _single_pair(c_s: int, c_z: int) -> Callable[[int], dict[str, list[int]]]:
    return lambda n: {"single": [1, n, c_s], "pair": [1, n, n, c_z], "single_mask": [1, n], "pair_mask": [1, n, n]}


def _vit_tokens(n: int) -> int:
    return (n // 16) ** 2 + 1


def full() -> list[Family]:
    """Bench-size models (models/README.md lists their configs and ORT baselines)."""
    return [
        # GPT-2: the logits output (seq x 8192 vocab, fp32) is live at the end whatever is chunked:
        # 64 MiB at 2048, 256 MiB at 8192, so only the long length can reach a small fraction.
        Family("gpt", "gpt2_bench", OUT / "gpt2_bench.onnx", "seq", _tokens, lambda n: n,
               [2048, 4096, 8192], [1024, 2048, 3072, 4096, 6144, 8192], max_length=8192),
        Family("bert", "bert_bench", OUT / "bert_bench.onnx", "seq", _tokens, lambda n: n,
               [2048, 4096], [1024, 2048, 3072, 4096, 6144, 8192], max_length=8192,
               peers=["ort-bert", "onnx-attention"], peer_lengths=[4096]),
        Family("vit", "vit_bench", OUT / "vit_bench.onnx", "image", _image, _vit_tokens,
               [512, 768, 1024], [384, 512, 640, 768, 1024, 1280, 1536, 2048]),
        Family("unet", "unet_bench", OUT / "unet_bench.onnx", "latent", _latent(77, 64), lambda n: n * n,
               [48, 64], [32, 40, 48, 56, 64, 80, 96, 112, 128], peers=["ort-unet"], peer_lengths=[64]),
        Family("evoformer", "evoformer_bench", OUT / "evoformer_bench.onnx", "n_res", _pair(16, 64, 32), lambda n: n,
               [128, 256], [96, 128, 160, 192, 256, 320, 384]),
    ] + zoo()


_LONG_TOKENS = [1024, 2048, 3072, 4096, 6144, 8192, 12288, 16384]


def zoo() -> list[Family]:
    """The zoo of export variants (issue 11 item 4; models/README.md): newer families and the export
    patterns users hit (attention processors, TorchScript-based exports), at fewer lengths."""
    return [
        # Qwen2: rotary, RMSNorm, grouped-query attention, SwiGLU; causal mask built in the graph
        Family("qwen2", "qwen2_bench", OUT / "qwen2_bench.onnx", "seq", _tokens, lambda n: n,
               [4096, 8192], _LONG_TOKENS),
        # GPT-style decoder with ones(L, L) -> Trilu -> Cast(bool) -> Where in the graph
        Family("gptcausal", "gptcausal_bench", OUT / "gptcausal_bench.onnx", "seq", _ids_only, lambda n: n,
               [4096, 8192], _LONG_TOKENS),
        # T5 encoder: relative position buckets computed in the graph, [1, H, L, L] bias in every layer
        Family("t5", "t5_bench", OUT / "t5_bench.onnx", "seq", _tokens, lambda n: n,
               [2048, 4096], _LONG_TOKENS),
        # diffusers' classic attention processor (baddbmm: Expand of a zero to [B*H, L, L])
        Family("unet-classic", "unet_bench_classic", OUT / "unet_bench_classic.onnx", "latent", _latent(77, 64),
               lambda n: n * n, [64], [32, 40, 48, 56, 64, 80, 96, 112, 128]),
        # Stable-Diffusion-like heads (48/96 channels per head), attention at three resolutions
        Family("unetsd", "unetsd_bench_classic", OUT / "unetsd_bench_classic.onnx", "latent", _latent(77, 128),
               lambda n: n * n, [48, 64], [32, 40, 48, 56, 64, 80, 96]),
        Family("unetsd-sdpa", "unetsd_bench_sdpa", OUT / "unetsd_bench_sdpa.onnx", "latent", _latent(77, 128),
               lambda n: n * n, [64], [32, 40, 48, 56, 64, 80, 96]),
        # AlphaFold3 Pairformer block (openfold3)
        Family("pairformer", "pairformer_bench", OUT / "pairformer_bench.onnx", "n_res", _single_pair(64, 32),
               lambda n: n, [128, 256], [96, 128, 160, 192, 256, 320, 384]),
        # the other exports of the in-graph mask/bias families (issue 11 item 4): TorchScript-based
        # exporter, and T5's sdpa attention (its bias masked once with Where and read by every layer)
        Family("t5-ts", "t5_bench_ts", OUT / "t5_bench_ts.onnx", "seq", _tokens, lambda n: n, [4096], _LONG_TOKENS),
        Family("t5-sdpa-ts", "t5_bench_sdpa_ts", OUT / "t5_bench_sdpa_ts.onnx", "seq", _tokens, lambda n: n,
               [4096], _LONG_TOKENS),
        Family("gptcausal-ts", "gptcausal_bench_ts", OUT / "gptcausal_bench_ts.onnx", "seq", _ids_only, lambda n: n,
               [8192], _LONG_TOKENS),
        Family("qwen2-ts", "qwen2_bench_ts", OUT / "qwen2_bench_ts.onnx", "seq", _tokens, lambda n: n, [8192], _LONG_TOKENS),
        Family("qwen2-sdpa", "qwen2_bench_sdpa", OUT / "qwen2_bench_sdpa.onnx", "seq", _tokens, lambda n: n,
               [8192], _LONG_TOKENS),
        # the TorchScript-based exporter (dynamo=False) of the decoder
        Family("gpt-ts", "gpt2_bench_ts", OUT / "gpt2_bench_ts.onnx", "seq", _tokens, lambda n: n,
               [8192], [1024, 2048, 3072, 4096, 6144, 8192], max_length=8192),
        # TorchScript-based exports of the classic-attention UNets (ConstantOfShape zero [B*H, L, L])
        Family("unet-classic-ts", "unet_bench_classic_ts", OUT / "unet_bench_classic_ts.onnx", "latent",
               _latent(77, 64), lambda n: n * n, [64], [32, 40, 48, 56, 64, 80, 96, 112, 128]),
        Family("unetsd-classic-ts", "unetsd_bench_classic_ts", OUT / "unetsd_bench_classic_ts.onnx", "latent",
               _latent(77, 128), lambda n: n * n, [64], [32, 40, 48, 56, 64, 80, 96]),
        # TorchScript-based ViT exports (position grid Reshape target from Pow(Constant, Constant))
        Family("vit-ts", "vit_bench_ts", OUT / "vit_bench_ts.onnx", "image", _image, _vit_tokens,
               [1024], [384, 512, 640, 768, 1024, 1280, 1536, 2048]),
        Family("vit-sdpa-ts", "vit_bench_sdpa_ts", OUT / "vit_bench_sdpa_ts.onnx", "image", _image, _vit_tokens,
               [1024], [384, 512, 640, 768, 1024, 1280, 1536, 2048]),
    ]


def quick() -> list[Family]:
    """The committed tiny exports (models/tiny/README.md) at short lengths: a smoke pass."""
    return [
        Family("gpt", "gpt2_tiny", TINY / "gpt2_tiny.onnx", "seq", _tokens, lambda n: n,
               [1024], [256, 384, 512, 768, 1024], max_length=1024),
        Family("bert", "bert_tiny", TINY / "bert_tiny.onnx", "seq", _tokens, lambda n: n,
               [1024], [256, 384, 512, 768, 1024], max_length=1024, peers=["ort-bert"], peer_lengths=[1024]),
        Family("vit", "vit_tiny", TINY / "vit_tiny.onnx", "image", _image, _vit_tokens,
               [512], [256, 384, 512, 640, 768]),
        Family("unet", "unet_tiny", TINY / "unet_tiny.onnx", "latent", _latent(8, 32), lambda n: n * n,
               [32], [16, 24, 32, 40, 48], peers=["ort-unet"], peer_lengths=[32]),
        Family("evoformer", "evoformer_tiny", TINY / "evoformer_tiny.onnx", "n_res", _pair(4, 16, 8), lambda n: n,
               [96], [48, 64, 96, 128, 160]),
    ]


# The bert peers' settings (the bench configs: 4 heads, hidden 256; tiny: 2 heads, hidden 64)
BERT_HEADS = {"bert_bench": (4, 256), "bert_tiny": (2, 64)}
# The opset-23 export with ONNX's standard `Attention` op, made by `make models` next to bert_bench
ONNX_ATTENTION = {"bert_bench": OUT / "bert_bench_sdpa_opset23.onnx"}
