"""Writes the tiny random GPT-2 folders of tests/test_lm_gpt2.cpp and their expected values.

    /usr/bin/python3 tests/data/lm/make_tiny_gpt2.py      (Debian's python3-torch)

Three Hugging Face GPT-2 folders with the same random weights (vocab 101, n_embd 32, 2 layers,
4 heads, n_positions 16), each with expected.safetensors (scripts/lm/gpt2_torch.py's
write_expected, computed in float64 from the weights as stored):
  tiny-gpt2/        F32, Hugging Face's bare names (wte.weight, h.0.ln_1.weight, ...)
  tiny-gpt2-f16/    F16, with the `transformer.` prefix and the attn.bias / attn.masked_bias
                    buffers GPT2LMHeadModel checkpoints carry
  tiny-gpt2-bf16/   BF16
Weights are drawn larger than GPT-2's initialisation so that every part of the forward matters.
"""

import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "scripts", "lm"))
import gpt2_torch  # noqa: E402

CONFIG = {
    "vocab_size": 101,
    "n_embd": 32,
    "n_layer": 2,
    "n_head": 4,
    "n_positions": 16,
    "layer_norm_epsilon": 1e-5,
}


def make_model():
    torch.manual_seed(20261203)
    model = gpt2_torch.GPT2(CONFIG)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif p.dim() == 1:
                p.copy_(0.3 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[0] ** 0.5 * 1.5)
    return model


def main():
    model = make_model()
    generator = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, CONFIG["vocab_size"], (3, CONFIG["n_positions"]), generator=generator)
    for folder, dtype, prefix in (
        ("tiny-gpt2", torch.float32, ""),
        ("tiny-gpt2-f16", torch.float16, "transformer."),
        ("tiny-gpt2-bf16", torch.bfloat16, ""),
    ):
        path = os.path.join(HERE, folder)
        gpt2_torch.save_hf_folder(model, path, dtype=dtype, prefix=prefix)
        if folder == "tiny-gpt2-f16":
            # Hugging Face checkpoints may carry the causal-mask buffers; the engine ignores them.
            file = os.path.join(path, "model.safetensors")
            tensors = gpt2_torch.read_safetensors(file)
            n = CONFIG["n_positions"]
            for layer in range(CONFIG["n_layer"]):
                mask = torch.ones(n, n).tril().to(torch.float16).reshape(1, 1, n, n)
                tensors[f"transformer.h.{layer}.attn.bias"] = mask
                tensors[f"transformer.h.{layer}.attn.masked_bias"] = torch.tensor(-1e4).half()
            gpt2_torch.write_safetensors(file, tensors, {"format": "pt"})
        stored = gpt2_torch.load_hf_folder(path, dtype=torch.float64)
        gpt2_torch.write_expected(os.path.join(path, "expected.safetensors"), stored, tokens)
        print("wrote", path)


if __name__ == "__main__":
    main()
