"""GPT-2 forward and generation speed in PyTorch: the peer of benchmarks/bench_gpt2_forward.

Run with Debian's python3-torch (/usr/bin/python3):

    /usr/bin/python3 benchmarks/peer/torch_gpt2_forward.py --model DIR [--batch 8]
        [--context 128] [--iters 5] [--warmup 1] [--threads 2] [--dtype fp32|amp-bf16]
        [--layer L] [--generate 32] [--prompt 16] [--json FILE] [--ignore-floor]

The model is scripts/lm/gpt2_torch.py's GPT2, loaded from the same Hugging Face folder as the
C++ side with `load_hf_folder(dir, torch.float32)`, run under `torch.inference_mode()` with
`torch.set_num_threads(N)`. `amp-bf16` runs the same fp32 model under
`torch.autocast("cpu", dtype=torch.bfloat16)`.

What is timed (the median of --iters calls after --warmup), mirroring the C++ benchmark:
  * the forward with logits of a [batch, context] batch of random token ids: embeddings, the
    blocks (the module's own attention: Hugging Face's eager attention, masked softmax; the MLP
    with torch's fused tanh GELU, `gelu(x, approximate="tanh")`, which is gelu_new), ln_f, and
    the unembedding against wte. The hook values of GPT2.forward (TransformerLens's centring)
    are not computed: this is the plain Hugging Face forward, the strongest form of the peer;
  * the forward up to block L's hook_resid_pre (the residual entering block L), no logits;
  * generation, batch 1, greedy: with a simple KV cache (per block a preallocated key / value
    buffer; the prompt runs once, then one position per token) and with the full recompute of
    the window per token, both unembedding only the last position.

At the start it times its own GEMM (2048 x 768 times 768 x 3072, fp32) and refuses to report
(exit 3) below a floor of 10 GFLOP/s per thread: torch built against Debian's reference BLAS
(no libopenblas0-pthread) does about a tenth of OpenBLAS's rate, 5-10 GFLOP/s on this class of
machine whatever the thread count, while OpenBLAS gives 40-100 per thread even when the machine
is shared; the floor sits between the two. --ignore-floor reports anyway.

Prints the GEMM rate on stderr and the results as JSON on stdout (and into --json FILE).
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "lm"))
import gpt2_torch  # noqa: E402

FLOOR_GFLOPS_PER_THREAD = 10.0


def gemm_rate():
    a = torch.randn(2048, 768)
    b = torch.randn(768, 3072)
    for _ in range(3):
        a @ b
    n = 10
    t0 = time.perf_counter()
    for _ in range(n):
        a @ b
    return 2 * 2048 * 768 * 3072 * n / (time.perf_counter() - t0) / 1e9


def run_blocks(model, x, stop_layer=None):
    """The blocks on the residual x [batch, seq, d]; stops before block stop_layer."""
    for layer, block in enumerate(model.h):
        if layer == stop_layer:
            return x
        x = x + block.attn(block.ln_1(x))
        h = F.gelu(block.mlp.c_fc(block.ln_2(x)), approximate="tanh")
        x = x + block.mlp.c_proj(h)
    return x


def embed(model, tokens, position=0):
    seq = tokens.shape[1]
    return model.wte(tokens) + model.wpe(torch.arange(position, position + seq)).unsqueeze(0)


def forward_logits(model, tokens, last_only=False):
    x = run_blocks(model, embed(model, tokens))
    if last_only:
        x = x[:, -1:]
    return model.ln_f(x) @ model.wte.weight.t()


def forward_stop(model, tokens, layer):
    return run_blocks(model, embed(model, tokens), stop_layer=layer)


class KvCache:
    """Per block keys and values [1, heads, capacity, head_dim], filled up to `length`."""

    def __init__(self, model, capacity):
        cfg = model.cfg
        heads, hd = cfg["n_head"], cfg["n_embd"] // cfg["n_head"]
        self.k = [torch.empty(1, heads, capacity, hd) for _ in model.h]
        self.v = [torch.empty(1, heads, capacity, hd) for _ in model.h]
        self.length = 0


def cached_step(model, cache, tokens):
    """Logits of the last of `tokens` [1, n], appended after the cache's positions."""
    pos = cache.length
    n = tokens.shape[1]
    x = embed(model, tokens, pos)
    d = model.cfg["n_embd"]
    heads = model.cfg["n_head"]
    hd = d // heads
    end = pos + n
    mask = None
    if n > 1:
        mask = torch.ones(n, end, dtype=torch.bool).tril(diagonal=pos)
    for layer, block in enumerate(model.h):
        attn = block.attn
        q, k, v = attn.c_attn(block.ln_1(x)).split(d, dim=-1)
        q, k, v = (t.view(1, n, heads, hd).transpose(1, 2) for t in (q, k, v))
        cache.k[layer][:, :, pos:end] = k
        cache.v[layer][:, :, pos:end] = v
        keys, values = cache.k[layer][:, :, :end], cache.v[layer][:, :, :end]
        scores = (q @ keys.transpose(-1, -2)) / math.sqrt(hd)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        z = torch.softmax(scores, dim=-1) @ values
        x = x + attn.c_proj(z.transpose(1, 2).reshape(1, n, d))
        h = F.gelu(block.mlp.c_fc(block.ln_2(x)), approximate="tanh")
        x = x + block.mlp.c_proj(h)
    cache.length = end
    return model.ln_f(x[:, -1:]) @ model.wte.weight.t()


def generate(model, prompt, n_new, use_cache):
    seq = prompt.clone()
    cache = KvCache(model, prompt.shape[1] + n_new) if use_cache else None
    out = []
    for step in range(n_new):
        if use_cache:
            logits = cached_step(model, cache, seq if step == 0 else seq[:, -1:])
        else:
            logits = forward_logits(model, seq, last_only=True)
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
        seq = torch.cat([seq, torch.tensor([[nxt]], dtype=seq.dtype)], dim=1)
    return out


def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="Hugging Face GPT-2 folder")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", choices=["fp32", "amp-bf16"], default="fp32")
    p.add_argument("--layer", type=int, default=-1, help="early-stop block (default n_layer / 2)")
    p.add_argument("--generate", type=int, default=32, help="tokens to generate (0: skip)")
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--json", help="also write the JSON here")
    p.add_argument("--ignore-floor", action="store_true", help="report below the GEMM floor too")
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rate = gemm_rate()
    floor = FLOOR_GFLOPS_PER_THREAD * a.threads
    print(f"torch {torch.__version__}: GEMM 2048x768x3072 fp32, {a.threads} threads: "
          f"{rate:.1f} GFLOP/s (floor {floor:.0f})", file=sys.stderr)
    if rate < floor and not a.ignore_floor:
        print("torch_gpt2_forward: torch's GEMM is below the sanity floor: is torch using the "
              "reference BLAS? Install libopenblas0-pthread (or pass --ignore-floor)",
              file=sys.stderr)
        return 3

    model = gpt2_torch.load_hf_folder(a.model, torch.float32).eval()
    cfg = model.cfg
    context = min(a.context, cfg["n_positions"])
    layer = cfg["n_layer"] // 2 if a.layer < 0 else min(a.layer, cfg["n_layer"] - 1)
    d, vocab = cfg["n_embd"], cfg["vocab_size"]
    block_flops = 24 * d * d + 4 * d * context
    full_flops = cfg["n_layer"] * block_flops + 2 * d * vocab
    stop_flops = layer * block_flops
    gen = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, vocab - 1, (a.batch, context), generator=gen)
    ntok = a.batch * context
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if a.dtype == "amp-bf16"
                else torch.autocast("cpu", enabled=False))

    res = {"engine": "torch", "torch": torch.__version__, "model": a.model, "dtype": a.dtype,
           "threads": a.threads, "batch": a.batch, "context": context, "iters": a.iters,
           "layer": layer, "gemm_gflops": rate, "gemm_floor_gflops": floor}
    with torch.inference_mode(), autocast:
        full_t = timed(lambda: forward_logits(model, tokens), a.warmup, a.iters)
        stop_t = timed(lambda: forward_stop(model, tokens, layer), a.warmup, a.iters)
        full_s, stop_s = statistics.median(full_t), statistics.median(stop_t)
        res.update({
            "full_tokens_per_s": ntok / full_s, "full_ms": full_s * 1e3,
            "full_gflops": full_flops * ntok / full_s / 1e9,
            "stop_tokens_per_s": ntok / stop_s, "stop_ms": stop_s * 1e3,
            "stop_gflops": stop_flops * ntok / stop_s / 1e9,
            "full_times_s": full_t, "stop_times_s": stop_t,
        })
        if a.generate > 0:
            prompt_len = min(a.prompt, cfg["n_positions"] - a.generate)
            prompt = torch.randint(0, vocab - 1, (1, prompt_len), generator=gen)
            reps = 1  # one timed generation after a warm-up one, as the C++ side
            per = {}
            for name, cache in (("cached", True), ("recompute", False)):
                t = timed(lambda: generate(model, prompt, a.generate, cache),
                          1 if a.warmup > 0 else 0, reps)
                per[name] = statistics.median(t) * 1e3 / a.generate
            res["generate"] = {"prompt": prompt_len, "tokens": a.generate,
                               "cached_ms_per_token": per["cached"],
                               "recompute_ms_per_token": per["recompute"],
                               "kv_cache": "simple (preallocated per-block buffers)"}
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
