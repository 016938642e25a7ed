#!/usr/bin/env python3
"""Writes the small SAE folders that tests/test_formats.cpp and tests/test_cli_formats.cpp read:
SAELens folders (SAELens 6 and pre-6.0 configs; float32, float64, float16 and bfloat16 weights;
every normalize_activations mode), sparsify folders (one SAE, and one run with a subfolder per
hookpoint), Gemma Scope params.npz archives, and broken inputs under bad/.

Run from anywhere:  python3 tests/data/formats/generate.py
Python standard library only (struct, json, zipfile): the safetensors, npy and npz files are
assembled by hand, so neither numpy, torch nor safetensors is needed. The outputs are committed
next to this script; re-running it reproduces them byte for byte.

Expected values. Every case folder with weights also holds
    x.npy             float32 [B, d_in]   the input
    feature_acts.npy  float64 [B, d_sae]  the feature activations of x
    sae_out.npy       float64 [B, d_in]   the reconstruction of x
computed here in float64 by a direct transcription of each format's published forward pass
(the formulas are in the docstrings of encode() below), from the weights exactly as stored
(rounded to the stored dtype first), so they do not depend on the library under test. Rows of
x are redrawn until every pre-activation is at least MARGIN away from a discontinuity of the
encoder (a TopK selection boundary, a JumpReLU threshold, a gate at 0, a ReLU at 0), so an
implementation that sums in another order or in float32 selects the same latents.
"""

import json
import math
import os
import random
import shutil
import struct
import zipfile

OUT = os.path.dirname(os.path.abspath(__file__))
D_IN, D_SAE, B, K = 6, 10, 8, 3
MARGIN = 2e-3

# ---------------------------------------------------------------------------------- storage


def f32(v):
    return struct.unpack("<f", struct.pack("<f", v))[0]


def f16(v):
    return struct.unpack("<e", struct.pack("<e", v))[0]


def bf16(v):
    """Rounds to bfloat16 (8 significant bits) to nearest even, in one rounding."""
    if v == 0.0:
        return 0.0
    m, e = math.frexp(v)  # v = m 2^e, 0.5 <= |m| < 1
    return math.ldexp(round(m * 256.0), e - 8)  # round() on floats is half-to-even


ROUND = {"F32": f32, "F64": float, "F16": f16, "BF16": bf16}


def pack(dtype, flat):
    if dtype == "F32":
        return struct.pack("<%df" % len(flat), *flat)
    if dtype == "F64":
        return struct.pack("<%dd" % len(flat), *flat)
    if dtype == "F16":
        return struct.pack("<%de" % len(flat), *flat)
    if dtype == "BF16":
        # The value is exact in bfloat16, so its float32 bits end in 16 zero bits.
        return b"".join(
            struct.pack("<H", struct.unpack("<I", struct.pack("<f", v))[0] >> 16) for v in flat
        )
    if dtype == "I32":
        return struct.pack("<%di" % len(flat), *[int(v) for v in flat])
    if dtype == "U8":
        return struct.pack("<%dB" % len(flat), *[int(v) for v in flat])
    raise ValueError(dtype)


def flatten(m):
    return [v for row in m for v in row] if m and isinstance(m[0], list) else list(m)


def shape_of(m):
    return [len(m), len(m[0])] if m and isinstance(m[0], list) else [len(m)]


def safetensors_bytes(tensors):
    """tensors: {name: (dtype, matrix or vector)}; data in name order, header padded to 8."""
    header, data = {}, b""
    for name in sorted(tensors):
        dtype, m = tensors[name]
        raw = pack(dtype, flatten(m))
        header[name] = {
            "dtype": dtype,
            "shape": shape_of(m),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


NPY_DESCR = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "U8": "|u1"}


def npy_bytes(dtype, m):
    shape = shape_of(m)
    shape_text = "(%d,)" % shape[0] if len(shape) == 1 else "(%d, %d)" % tuple(shape)
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (NPY_DESCR[dtype], shape_text)
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1") + pack(dtype, flatten(m))


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def write_json(path, obj):
    write(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_npz(path, arrays, compress=False):
    """np.savez layout: one '<name>.npy' member per array, stored (not compressed)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for name in arrays:
            dtype, m = arrays[name]
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            z.writestr(info, npy_bytes(dtype, m))


# ---------------------------------------------------------------------------------- weights


def matrix(rng, rows, cols, lo, hi):
    return [[rng.uniform(lo, hi) for _ in range(cols)] for _ in range(rows)]


def vector(rng, n, lo, hi):
    return [rng.uniform(lo, hi) for _ in range(n)]


def rounded(m, dtype):
    r = ROUND[dtype]
    return [[r(v) for v in row] for row in m] if isinstance(m[0], list) else [r(v) for v in m]


def make_params(rng, arch, d_in=D_IN, d_sae=D_SAE):
    p = {
        "W_enc": matrix(rng, d_in, d_sae, -0.8, 0.8),
        "W_dec": matrix(rng, d_sae, d_in, -0.6, 0.6),
        "b_dec": vector(rng, d_in, -0.5, 0.5),
    }
    if arch == "gated":
        p["b_gate"] = vector(rng, d_sae, -0.3, 0.3)
        p["b_mag"] = vector(rng, d_sae, -0.3, 0.3)
        p["r_mag"] = vector(rng, d_sae, -0.5, 0.5)
    else:
        p["b_enc"] = vector(rng, d_sae, -0.3, 0.3)
    if arch == "jumprelu":
        p["threshold"] = vector(rng, d_sae, 0.05, 0.6)
        p["threshold"][3] = -0.1  # relu(threshold) = 0 here
        p["threshold"][7] = 0.0
    return p


# ---------------------------------------------------------------------------------- math


def dot(a, b):
    return math.fsum(x * y for x, y in zip(a, b))


def col(m, j):
    return [row[j] for row in m]


def normalize_in(mode, x):
    """SAELens's normalize_activations on one row: returns x' and (mean, out_scale)."""
    d = len(x)
    if mode in ("none", "expected_average_only_in"):
        return list(x), (0.0, 1.0)
    if mode == "constant_norm_rescale":
        c = math.sqrt(d) / math.sqrt(math.fsum(v * v for v in x))
        return [v * c for v in x], (0.0, 1.0 / c)
    if mode == "layer_norm":
        mu = math.fsum(x) / d
        sigma = math.sqrt(math.fsum((v - mu) ** 2 for v in x) / (d - 1))
        return [(v - mu) / (sigma + 1e-5) for v in x], (mu, sigma)
    raise ValueError(mode)


def encode(case, x):
    """One row. Returns (feature_acts, reconstruction, margin).

    x' = normalize_in(x);  sae_in = x' - b_dec if apply_b_dec_to_input else x'
    standard:  f = relu(sae_in W_enc + b_enc)
    gated:     f = 1[sae_in W_enc + b_gate > 0] * relu(sae_in (W_enc * exp(r_mag)) + b_mag)
    topk:      h = sae_in W_enc + b_enc;  p = h * n if rescale else h  (n: W_dec row norms)
               f = relu(p) on the k largest p, 0 elsewhere; decoder input f / n if rescale
    jumprelu:  h = sae_in W_enc + b_enc;  f = h * 1[h > relu(threshold)]
    y = (decoder input * scale) W_dec + b_dec  (scale: pre-6.0 finetuning_scaling_factor, else 1)
    reconstruction = y * out_scale + mean  (undoing the normalisation)
    """
    p, arch = case["params"], case["arch"]
    d_sae = len(p["W_dec"])
    xn, (mean, out_scale) = normalize_in(case.get("normalize", "none"), x)
    b_dec = p["b_dec"]
    sae_in = [v - b for v, b in zip(xn, b_dec)] if case.get("apply_b_dec", True) else xn
    margins = []
    dec_in = [0.0] * d_sae
    if arch == "gated":
        f = [0.0] * d_sae
        for i in range(d_sae):
            w = col(p["W_enc"], i)
            gate = dot(sae_in, w) + p["b_gate"][i]
            mag = dot(sae_in, w) * math.exp(p["r_mag"][i]) + p["b_mag"][i]
            margins.append(abs(gate))
            if gate > 0:
                margins.append(abs(mag))
                f[i] = max(mag, 0.0)
        dec_in = list(f)
    else:
        h = [dot(sae_in, col(p["W_enc"], i)) + p["b_enc"][i] for i in range(d_sae)]
        if arch == "standard":
            f = [max(v, 0.0) for v in h]
            margins += [abs(v) for v in h]
            dec_in = list(f)
        elif arch == "jumprelu":
            t = [max(v, 0.0) for v in p["threshold"]]
            f = [hv if hv > tv else 0.0 for hv, tv in zip(h, t)]
            margins += [abs(hv - tv) for hv, tv in zip(h, t)]
            dec_in = list(f)
        elif arch == "topk":
            k = case["k"]
            n = [math.sqrt(dot(r, r)) for r in p["W_dec"]]
            rescale = case.get("rescale", False)
            s = [hv * nv for hv, nv in zip(h, n)] if rescale else list(h)
            order = sorted(range(d_sae), key=lambda i: -s[i])
            f = [0.0] * d_sae
            for i in order[:k]:
                f[i] = max(s[i], 0.0)
                margins.append(abs(s[i]))
            margins.append(s[order[k - 1]] - s[order[k]])
            dec_in = [fv / nv for fv, nv in zip(f, n)] if rescale else list(f)
        else:
            raise ValueError(arch)
    scale = case.get("decoder_scale")
    if scale is not None:
        dec_in = [a * b for a, b in zip(dec_in, scale)]
    y = [math.fsum(dec_in[i] * p["W_dec"][i][j] for i in range(d_sae)) + b_dec[j] for j in range(len(x))]
    return f, [v * out_scale + mean for v in y], min(margins)


def make_inputs(rng, cases, d_in=D_IN):
    """B rows of float32 input, each redrawn until every case is MARGIN from a discontinuity."""
    rows = []
    while len(rows) < B:
        x = [f32(rng.gauss(0.3, 1.5)) for _ in range(d_in)]
        if all(encode(c, x)[2] >= MARGIN for c in cases):
            rows.append(x)
    return rows


def write_expected(folder, case, xs):
    fs, ys = [], []
    for x in xs:
        f, y, _ = encode(case, x)
        fs.append(f)
        ys.append(y)
    write(os.path.join(folder, "x.npy"), npy_bytes("F32", xs))
    write(os.path.join(folder, "feature_acts.npy"), npy_bytes("F64", fs))
    write(os.path.join(folder, "sae_out.npy"), npy_bytes("F64", ys))


# ---------------------------------------------------------------------------------- SAELens


def saelens_cfg(arch, dtype, normalize="none", apply_b_dec=True, k=None, rescale=None, **extra):
    cfg = {
        "architecture": arch,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": dtype,
        "device": "cpu",
        "apply_b_dec_to_input": apply_b_dec,
        "normalize_activations": normalize,
        "reshape_activations": "none",
    }
    if k is not None:
        cfg["k"] = k
    if rescale is not None:
        cfg["rescale_acts_by_decoder_norm"] = rescale
    cfg["metadata"] = {"sae_lens_version": "6.18.0", "sae_lens_training_version": "6.18.0"}
    cfg.update(extra)
    return cfg


TORCH_TO_ST = {"float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16",
               "torch.float32": "F32"}


def saelens_case(rng, name, arch, st_dtype, cfg, **case_opts):
    """A SAELens folder: weights rounded to st_dtype, cfg.json, expected outputs."""
    params = {k: rounded(v, st_dtype) for k, v in make_params(rng, arch).items()}
    case = dict(arch=arch, params=params, **case_opts)
    return {"name": name, "case": case, "cfg": cfg, "dtype": st_dtype,
            "tensors": {k: (st_dtype, v) for k, v in params.items()}}


def write_saelens(spec, xs):
    folder = os.path.join(OUT, spec["name"])
    write_json(os.path.join(folder, "cfg.json"), spec["cfg"])
    write(os.path.join(folder, "sae_weights.safetensors"), safetensors_bytes(spec["tensors"]))
    write_expected(folder, spec["case"], xs)


def main():
    for entry in os.listdir(OUT):
        if os.path.isdir(os.path.join(OUT, entry)):
            shutil.rmtree(os.path.join(OUT, entry))
    rng = random.Random(20240611)
    specs = []

    # SAELens 6 folders: every architecture, every stored dtype, every normalisation.
    specs.append(saelens_case(rng, "saelens_standard_f32", "standard", "F32",
                              saelens_cfg("standard", "float32")))
    specs.append(saelens_case(rng, "saelens_gated_f16", "gated", "F16",
                              saelens_cfg("gated", "float16")))
    s = saelens_case(rng, "saelens_topk_bf16", "topk", "BF16",
                     saelens_cfg("topk", "bfloat16", k=K, rescale=True), k=K, rescale=True)
    specs.append(s)
    specs.append(saelens_case(rng, "saelens_jumprelu_f64", "jumprelu", "F64",
                              saelens_cfg("jumprelu", "float64", apply_b_dec=False),
                              apply_b_dec=False))
    specs.append(saelens_case(rng, "saelens_standard_constant_norm", "standard", "F32",
                              saelens_cfg("standard", "torch.float32",
                                          normalize="constant_norm_rescale"),
                              normalize="constant_norm_rescale"))
    specs.append(saelens_case(rng, "saelens_topk_layer_norm", "topk", "F32",
                              saelens_cfg("topk", "float32", normalize="layer_norm", k=K,
                                          rescale=False),
                              k=K, normalize="layer_norm"))
    s = saelens_case(rng, "saelens_jumprelu_expected_avg", "jumprelu", "F32",
                     saelens_cfg("jumprelu", "float32", normalize="expected_average_only_in"),
                     normalize="expected_average_only_in")
    s["cfg"]["reshape_activations"] = "hook_z"
    s["cfg"]["metadata"]["hook_name"] = "blocks.0.attn.hook_z"
    specs.append(s)

    # A SAELens < 6.48 JumpReLU training checkpoint: log_threshold instead of threshold.
    s = saelens_case(rng, "saelens_jumprelu_log_threshold", "jumprelu", "F32",
                     saelens_cfg("jumprelu", "float32"))
    thr = s["case"]["params"]["threshold"]
    log_thr = [f32(math.log(v)) if v > 0 else f32(math.log(0.02)) for v in thr]
    s["case"]["params"]["threshold"] = [math.exp(v) for v in log_thr]
    del s["tensors"]["threshold"]
    s["tensors"]["log_threshold"] = ("F32", log_thr)
    specs.append(s)

    # Pre-6.0 configs.
    legacy_common = {
        "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
        "model_name": "gpt2-small", "context_size": 128, "prepend_bos": True,
        "dataset_path": "Skylion007/openwebtext", "apply_b_dec_to_input": True,
    }
    s = saelens_case(rng, "saelens_legacy_relu", "standard", "F32", dict(
        legacy_common, hook_point="blocks.2.hook_resid_pre", hook_point_layer=2,
        hook_point_head_index=None, activation_fn_str="relu", normalize_activations=False,
        finetuning_scaling_factor=True, sae_lens_training_version="2.1.3"))
    scale = [f32(v) for v in vector(rng, D_SAE, 0.5, 1.5)]
    s["case"]["decoder_scale"] = scale
    s["tensors"]["scaling_factor"] = ("F32", scale)
    specs.append(s)
    s = saelens_case(rng, "saelens_legacy_topk", "topk", "F32", dict(
        legacy_common, architecture="standard", hook_name="blocks.4.hook_resid_post",
        hook_layer=4, hook_head_index=None, activation_fn="topk", activation_fn_kwargs={"k": K},
        normalize_activations="none", finetuning_scaling_factor=False,
        sae_lens_training_version="4.4.1"), k=K)
    s["tensors"]["scaling_factor"] = ("F32", [1.0] * D_SAE)  # all ones: dropped
    specs.append(s)
    specs.append(saelens_case(rng, "saelens_legacy_noarch_topk", "topk", "F32", dict(
        legacy_common, hook_point="blocks.1.hook_mlp_out", hook_point_layer=1,
        activation_fn_str="topk", activation_fn_kwargs={"k": K}, normalize_activations=True,
        sae_lens_training_version="3.13.0"), k=K, normalize="expected_average_only_in"))

    cases = [sp["case"] for sp in specs]

    # sparsify: encoder.weight [d_sae, d_in]; relu then the k largest; b_dec subtracted.
    def sparsify_case(d_sae, k, dtype):
        p = make_params(rng, "topk", d_sae=d_sae)
        for r in p["W_dec"]:  # normalize_decoder: unit rows (before rounding)
            n = math.sqrt(dot(r, r))
            r[:] = [v / n for v in r]
        p = {key: rounded(v, dtype) for key, v in p.items()}
        return dict(arch="topk", params=p, k=k)

    sp_single = sparsify_case(2 * D_IN, K, "F32")
    sp_l0 = sparsify_case(D_SAE, 2, "BF16")
    sp_l1 = sparsify_case(D_SAE, K, "F32")

    # Gemma Scope: JumpReLU, positive thresholds, b_dec not subtracted.
    gp = make_params(rng, "jumprelu")
    gp["threshold"] = vector(rng, D_SAE, 0.05, 0.6)
    gp = {key: rounded(v, "F32") for key, v in gp.items()}
    gemma = dict(arch="jumprelu", params=gp, apply_b_dec=False)

    xs = make_inputs(rng, cases + [sp_l0, sp_l1, gemma])
    xs_wide = make_inputs(rng, [sp_single])

    for sp in specs:
        write_saelens(sp, xs)
    # A sparsity file next to the first folder (log10 feature density).
    sparsity = [f32(v) for v in vector(rng, D_SAE, -6.0, -0.5)]
    write(os.path.join(OUT, "saelens_standard_f32", "sparsity.safetensors"),
          safetensors_bytes({"sparsity": ("F32", sparsity)}))

    def sparsify_cfg(d_sae, k, **extra):
        cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True,
               "num_latents": d_sae, "k": k, "multi_topk": False, "skip_connection": False,
               "transcode": False, "d_in": D_IN}
        cfg.update(extra)
        return cfg

    def sparsify_tensors(case, dtype):
        p = case["params"]
        enc_t = [col(p["W_enc"], i) for i in range(len(p["W_dec"]))]
        return {"encoder.weight": (dtype, enc_t), "encoder.bias": (dtype, p["b_enc"]),
                "W_dec": (dtype, p["W_dec"]), "b_dec": (dtype, p["b_dec"])}

    def write_sparsify(folder, case, dtype, cfg, inputs):
        write_json(os.path.join(folder, "cfg.json"), cfg)
        write(os.path.join(folder, "sae.safetensors"), safetensors_bytes(sparsify_tensors(case, dtype)))
        if inputs is not None:
            write_expected(folder, case, inputs)

    # num_latents 0: d_sae = d_in * expansion_factor = 12.
    write_sparsify(os.path.join(OUT, "sparsify_topk"), sp_single, "F32",
                   sparsify_cfg(0, K, expansion_factor=2, multi_topk=True), xs_wide)
    run = os.path.join(OUT, "sparsify_multi")
    write_sparsify(os.path.join(run, "layers.0"), sp_l0, "BF16", sparsify_cfg(D_SAE, 2), xs)
    write_sparsify(os.path.join(run, "layers.1.mlp"), sp_l1, "F32", sparsify_cfg(D_SAE, K), xs)
    write_json(os.path.join(run, "config.json"),
               {"sae": sparsify_cfg(D_SAE, K), "hookpoints": ["layers.0", "layers.1.mlp"],
                "batch_size": 32})

    gemma_arrays = {key: ("F32", gp[key]) for key in ["W_dec", "W_enc", "b_dec", "b_enc", "threshold"]}
    write_npz(os.path.join(OUT, "gemma_scope", "params.npz"), gemma_arrays)
    write_expected(os.path.join(OUT, "gemma_scope"), gemma, xs)
    renamed = {("w_" + key[2:] if key.startswith("W_") else key): v for key, v in gemma_arrays.items()}
    write_npz(os.path.join(OUT, "gemma_scope_w_names", "params.npz"), renamed)

    # ------------------------------------------------------------------------------ broken
    bad = os.path.join(OUT, "bad")
    base = specs[0]  # saelens_standard_f32

    def bad_saelens(name, cfg=None, tensors=None, raw=None):
        folder = os.path.join(bad, name)
        write_json(os.path.join(folder, "cfg.json"), cfg if cfg is not None else base["cfg"])
        if raw is not None:
            write(os.path.join(folder, "sae_weights.safetensors"), raw)
        elif tensors is not None:
            write(os.path.join(folder, "sae_weights.safetensors"), safetensors_bytes(tensors))

    t = dict(base["tensors"])
    bad_saelens("missing_tensor", tensors={k: v for k, v in t.items() if k != "b_enc"})
    w_dec = t["W_dec"][1]
    bad_saelens("wrong_shape", tensors=dict(t, W_dec=("F32", [[w_dec[i][j] for i in range(D_SAE)]
                                                           for j in range(D_IN)])))
    bad_saelens("extra_tensor", tensors=dict(t, b_gate=("F32", [0.0] * D_SAE)))
    bad_saelens("unknown_arch", cfg=dict(base["cfg"], architecture="crosscoder"), tensors=t)
    bad_saelens("batchtopk_arch", cfg=dict(base["cfg"], architecture="batchtopk"), tensors=t)
    bad_saelens("tensor_dtype", tensors=dict(t, W_enc=("I32", [[1] * D_SAE] * D_IN)))
    bad_saelens("cfg_dtype", cfg=dict(base["cfg"], dtype="float8_e4m3fn"), tensors=t)
    bad_saelens("normalize_unknown", cfg=dict(base["cfg"], normalize_activations="batch_norm"),
                tensors=t)
    bad_saelens("k_too_large", cfg=saelens_cfg("topk", "float32", k=D_SAE + 1, rescale=False),
                tensors=t)
    full = safetensors_bytes(t)
    bad_saelens("truncated", raw=full[:-10])
    nan_dec = [list(r) for r in w_dec]
    nan_dec[2][4] = float("nan")
    bad_saelens("nan_weight", tensors=dict(t, W_dec=("F32", nan_dec)))
    bad_saelens("missing_weights")
    legacy = dict(legacy_common, hook_point="blocks.0.hook_resid_pre", activation_fn_str="tanh-relu")
    bad_saelens("legacy_tanh", cfg=legacy, tensors=t)
    bad_saelens("scaling_no_flag",
                cfg=dict(legacy_common, hook_point="blocks.0.hook_resid_pre", activation_fn_str="relu"),
                tensors=dict(t, scaling_factor=("F32", [2.0] * D_SAE)))

    def bad_sparsify(name, cfg, extra_tensors=None):
        folder = os.path.join(bad, name)
        tensors = sparsify_tensors(sp_l1, "F32")
        tensors.update(extra_tensors or {})
        write_json(os.path.join(folder, "cfg.json"), cfg)
        write(os.path.join(folder, "sae.safetensors"), safetensors_bytes(tensors))

    w_skip = ("F32", [[0.0] * D_IN for _ in range(D_IN)])
    bad_sparsify("sparsify_skip", sparsify_cfg(D_SAE, K, skip_connection=True), {"W_skip": w_skip})
    bad_sparsify("sparsify_w_skip_only", sparsify_cfg(D_SAE, K), {"W_skip": w_skip})
    bad_sparsify("sparsify_transcode", sparsify_cfg(D_SAE, K, transcode=True))
    bad_sparsify("sparsify_groupmax", sparsify_cfg(D_SAE, K, activation="groupmax"))
    bad_sparsify("sparsify_num_latents", sparsify_cfg(D_SAE + 2, K))

    write_npz(os.path.join(bad, "gemma_missing_threshold", "params.npz"),
              {k: v for k, v in gemma_arrays.items() if k != "threshold"})
    write_npz(os.path.join(bad, "gemma_compressed", "params.npz"), gemma_arrays, compress=True)
    write_npz(os.path.join(bad, "gemma_int_threshold", "params.npz"),
              dict(gemma_arrays, threshold=("U8", [1] * D_SAE)))


if __name__ == "__main__":
    main()
