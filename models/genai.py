"""LLMs written by onnxruntime-genai's model builder from a local random-weight config (issue 16).

    python -m models.genai --out models/out --size bench      # qwen2_genai_{fp32,int4}/model.onnx

Generation-time only, in its own environment: the builder needs torch and transformers (the
`.venv-models` ones) plus `onnxruntime-genai==0.18.0`, e.g. a scratch venv that sees
.venv-models' packages:

    python3 -m venv /tmp/venv-genai
    echo "$(.venv-models/bin/python -c 'import site; print(site.getsitepackages()[0])')" \\
        > "$(/tmp/venv-genai/bin/python -c 'import site; print(site.getsitepackages()[0])')/models.pth"
    /tmp/venv-genai/bin/pip install onnxruntime-genai==0.18.0
    /tmp/venv-genai/bin/python -m models.genai --out models/out

A transformers Qwen2ForCausalLM is built from a config (no hub), every parameter re-drawn from a
seeded normal, saved with `save_pretrained` into `<out>/qwen2_<size>_src`, and the builder writes
CPU models in fp32 and int4 (`-p fp32|int4 -e cpu`): GroupQueryAttention (packed QKV, rotary
inside), SkipSimplifiedLayerNormalization, SimplifiedLayerNormalization, MatMulNBits (int4,
accuracy_level 4), KV-cache inputs `past_key_values.*` and outputs `present.*`.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

SEED = 1234
CONFIGS = {
    "tiny": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                 num_hidden_layers=2, vocab_size=1000, max_position_embeddings=1024),
    "bench": dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=768,
                  num_hidden_layers=2, vocab_size=8192, max_position_embeddings=8192),
}


def make_source(folder: Path, size: str) -> None:
    """A random-weight Qwen2 checkpoint folder the builder reads with `-i`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**CONFIGS[size], tie_word_embeddings=False)
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.05 if p.dim() > 1 else 0.1))
    model.save_pretrained(str(folder))


def build(src: Path, dst: Path, precision: str, cache: Path) -> None:
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(dst), "-p", precision,
           "-e", "cpu", "-c", str(cache)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("models/out"))
    ap.add_argument("--size", choices=sorted(CONFIGS), default="bench")
    args = ap.parse_args(argv)
    src = args.out / f"qwen2_{args.size}_src"
    make_source(src, args.size)
    for precision in ("fp32", "int4"):
        dst = args.out / f"qwen2_genai_{args.size}_{precision}"
        build(src, dst, precision, args.out / "genai_cache")
        print(f"wrote {dst / 'model.onnx'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
