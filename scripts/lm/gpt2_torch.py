"""GPT-2 in PyTorch, written for this repository's tests and reference model.

The parameters carry Hugging Face's GPT-2 names and layouts (Conv1D: y = x W + b with W
[in, out]; the unembedding tied to `wte`), so `state_dict()` is a Hugging Face GPT-2 checkpoint.
`hooked_forward` also returns the values TransformerLens's `HookedTransformer` gives at its hook
points with its default processing (`fold_ln`, `center_writing_weights`, `center_unembed`):
every write into the residual stream has zero mean over d_model, so `hook_embed`,
`hook_pos_embed`, `hook_attn_out`, `hook_mlp_out` and `hook_resid_*` are the Hugging Face values
minus their per-token mean; `mlp.hook_pre` / `mlp.hook_post` are unchanged; with the final
LayerNorm's weight and bias folded into the unembedding, `ln_final.hook_normalized` is
(x - mean) / sqrt(var + eps) without them.

Used by tests/data/lm/make_tiny_gpt2.py and scripts/lm/train_reference.py, with Debian's
python3-torch (/usr/bin/python3). No other dependency.
"""

import json
import math
import struct

import torch
from torch import nn

BOS = 50256

# Hook names of a block, in the order the forward reaches them.
BLOCK_HOOKS = (
    "hook_resid_pre",
    "hook_attn_out",
    "hook_resid_mid",
    "mlp.hook_pre",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)


def hook_names(n_layer):
    """Every hook point, in forward order."""
    names = ["hook_embed", "hook_pos_embed"]
    for layer in range(n_layer):
        names += [f"blocks.{layer}.{h}" for h in BLOCK_HOOKS]
    names.append("ln_final.hook_normalized")
    return names


def gelu_new(x):
    """GPT-2's GELU, the tanh approximation."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


class Conv1D(nn.Module):
    """y = x W + b with W [n_in, n_out], as GPT-2 stores its linear layers."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(
            *x.shape[:-1], -1
        )


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg["n_head"]
        self.c_attn = Conv1D(cfg["n_embd"], 3 * cfg["n_embd"])
        self.c_proj = Conv1D(cfg["n_embd"], cfg["n_embd"])

    def forward(self, x):
        batch, seq, width = x.shape
        head = width // self.n_head
        q, k, v = self.c_attn(x).split(width, dim=-1)
        q, k, v = (t.view(batch, seq, self.n_head, head).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(head)
        causal = torch.ones(seq, seq, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        z = torch.softmax(scores, dim=-1) @ v
        return self.c_proj(z.transpose(1, 2).reshape(batch, seq, width))


class Mlp(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = Conv1D(cfg["n_embd"], 4 * cfg["n_embd"])
        self.c_proj = Conv1D(4 * cfg["n_embd"], cfg["n_embd"])


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        eps = cfg["layer_norm_epsilon"]
        self.ln_1 = nn.LayerNorm(cfg["n_embd"], eps=eps)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg["n_embd"], eps=eps)
        self.mlp = Mlp(cfg)


class GPT2(nn.Module):
    """GPT-2 (pre-LayerNorm blocks, learned positions, gelu_new, tied unembedding).

    `cfg` holds Hugging Face's config keys: n_embd, n_layer, n_head, n_positions, vocab_size,
    layer_norm_epsilon.
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = dict(cfg)
        self.wte = nn.Embedding(cfg["vocab_size"], cfg["n_embd"])
        self.wpe = nn.Embedding(cfg["n_positions"], cfg["n_embd"])
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.01)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg["n_layer"]))
        self.ln_f = nn.LayerNorm(cfg["n_embd"], eps=cfg["layer_norm_epsilon"])
        # GPT-2's scaled initialisation of the projections that write into the residual stream.
        for block in self.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * cfg["n_layer"]))

    def forward(self, tokens, hooks=None):
        """Logits [batch, seq, vocab] of tokens [batch, seq] (int64).

        With `hooks` (a dict), also fills hooks[name] with TransformerLens's value at each
        hook point, shaped [batch, seq, width].
        """

        def centred(x):
            return x - x.mean(dim=-1, keepdim=True)

        def record(name, value):
            if hooks is not None:
                hooks[name] = value.detach().clone()

        seq = tokens.shape[1]
        embed = self.wte(tokens)
        pos = self.wpe(torch.arange(seq, device=tokens.device)).unsqueeze(0).expand_as(embed)
        record("hook_embed", centred(embed))
        record("hook_pos_embed", centred(pos))
        resid = embed + pos
        for layer, block in enumerate(self.h):
            prefix = f"blocks.{layer}."
            record(prefix + "hook_resid_pre", centred(resid))
            attn_out = block.attn(block.ln_1(resid))
            record(prefix + "hook_attn_out", centred(attn_out))
            resid = resid + attn_out
            record(prefix + "hook_resid_mid", centred(resid))
            pre = block.mlp.c_fc(block.ln_2(resid))
            post = gelu_new(pre)
            record(prefix + "mlp.hook_pre", pre)
            record(prefix + "mlp.hook_post", post)
            mlp_out = block.mlp.c_proj(post)
            record(prefix + "hook_mlp_out", centred(mlp_out))
            resid = resid + mlp_out
            record(prefix + "hook_resid_post", centred(resid))
        normalized = nn.functional.layer_norm(
            resid, (resid.shape[-1],), eps=self.cfg["layer_norm_epsilon"]
        )
        record("ln_final.hook_normalized", normalized)
        final = normalized * self.ln_f.weight + self.ln_f.bias
        return final @ self.wte.weight.t()


def hooked_forward(model, tokens):
    """(logits [batch, seq, vocab], {hook name: [batch, seq, width]}) in the model's dtype."""
    hooks = {}
    with torch.no_grad():
        logits = model(tokens, hooks)
    return logits, hooks


# ------------------------------------------------------------------ Hugging Face folders


def hf_config(cfg):
    """config.json of a Hugging Face GPT-2 folder (BOS/EOS 50256, or the last id of a small vocabulary)."""
    special = min(BOS, cfg["vocab_size"] - 1)
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "n_embd": cfg["n_embd"],
        "n_layer": cfg["n_layer"],
        "n_head": cfg["n_head"],
        "n_positions": cfg["n_positions"],
        "n_ctx": cfg["n_positions"],
        "vocab_size": cfg["vocab_size"],
        "layer_norm_epsilon": cfg["layer_norm_epsilon"],
        "activation_function": "gelu_new",
        "bos_token_id": special,
        "eos_token_id": special,
    }


_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int32: "I32",
    torch.int64: "I64",
}


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: tensor} as a .safetensors file (tensors in their own dtype, row-major)."""
    header = {}
    chunks = []
    offset = 0
    for name, tensor in tensors.items():
        tensor = tensor.detach().contiguous().cpu()
        if tensor.dtype == torch.bfloat16:
            data = tensor.view(torch.int16).numpy().tobytes()
        else:
            data = tensor.numpy().tobytes()
        header[name] = {
            "dtype": _DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in chunks:
            f.write(data)


def read_safetensors(path):
    """{name: tensor} of a .safetensors file, each in its stored dtype."""
    inverse = {v: k for k, v in _DTYPES.items()}
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        data = f.read()
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = inverse[entry["dtype"]]
        begin, end = entry["data_offsets"]
        raw = bytearray(data[begin:end])
        if dtype == torch.bfloat16:
            t = torch.frombuffer(raw, dtype=torch.int16).view(torch.bfloat16)
        else:
            t = torch.frombuffer(raw, dtype=dtype)
        out[name] = t.reshape(entry["shape"]).clone()
    return out


def save_hf_folder(model, folder, dtype=torch.float32, prefix=""):
    """Writes config.json and model.safetensors (GPT-2 names, optional `transformer.` prefix)."""
    import os

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(hf_config(model.cfg), f, indent=2)
        f.write("\n")
    tensors = {prefix + k: v.to(dtype) for k, v in model.state_dict().items()}
    write_safetensors(os.path.join(folder, "model.safetensors"), tensors, {"format": "pt"})


def load_hf_folder(folder, dtype=torch.float64):
    """A GPT2 from a folder save_hf_folder wrote, its weights converted to `dtype`."""
    import os

    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    tensors = read_safetensors(os.path.join(folder, "model.safetensors"))
    state = {}
    for name, tensor in tensors.items():
        name = name.removeprefix("transformer.")
        if name.endswith(".attn.bias") or name.endswith(".attn.masked_bias"):
            continue
        state[name] = tensor.to(dtype)
    model = GPT2(cfg).to(dtype)
    model.load_state_dict(state)
    return model


# ------------------------------------------------------------------ expected values

# Columns of the logits kept in full; beyond them, only log-sum-exp and the next token's logit.
LOGIT_COLUMNS = 512


def write_expected(path, model, tokens):
    """Writes the values the C++ engine's tests compare with, computed in float64.

    tokens: int64 [batch, seq]. The file holds (F32 unless said):
      tokens           I32 [batch, seq]
      logits_head      [batch*seq, min(vocab, LOGIT_COLUMNS)]  the first logits of each row
      logsumexp        [batch*seq]                             log-sum-exp of each row's logits
      logit_next       [batch*seq]   the logit of the row's next token (of token 0 at the end)
      hook.NAME        [batch*seq, width]   TransformerLens's value at each hook point
    Rows are positions, batch-major (row b*seq + t).
    """
    model = model.to(torch.float64)
    logits, hooks = hooked_forward(model, tokens)
    batch, seq = tokens.shape
    flat = logits.reshape(batch * seq, -1)
    following = torch.cat([tokens[:, 1:], tokens[:, :1]], dim=1).reshape(-1)
    out = {
        "tokens": tokens.to(torch.int32),
        "logits_head": flat[:, :LOGIT_COLUMNS].float(),
        "logsumexp": torch.logsumexp(flat, dim=-1).float(),
        "logit_next": flat.gather(1, following.unsqueeze(1)).squeeze(1).float(),
    }
    for name in hook_names(model.cfg["n_layer"]):
        value = hooks[name]
        out["hook." + name] = value.reshape(batch * seq, value.shape[-1]).float()
    write_safetensors(path, out, {"format": "sae-lm-expected"})
