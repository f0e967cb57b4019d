#!/usr/bin/env python3
"""gen_quant_ckpt.py OUTDIR - tiny quantized Hugging Face MoE checkpoints in the layouts that
ModelOpt (NVFP4, FP8, FP8 per channel) and compressed-tensors (fp8 channel / tensor,
pack-quantized int4 / int8, nvfp4-pack-quantized) export,
packed here in NumPy (+ ml_dtypes for e4m3), with inputs and float64 reference outputs computed
here from the weights as this script dequantizes them (independent of libmoe).

Layouts (ModelOpt unified HF export; compressed-tensors as llm-compressor saves it):
  nvfp4            weight u8 (N, K/2), weight_scale e4m3 (N, K/16), weight_scale_2 f32 (),
                   input_scale f32 ()
  mo_fp8           weight e4m3 (N, K), weight_scale f32 (), input_scale f32 () (static)
  mo_fp8_channel   weight e4m3 (N, K), weight_scale f32 (N)
  ct_fp8_channel   weight e4m3 (N, K), weight_scale bf16 (N, 1), dynamic per-token activations
  ct_fp8_tensor    weight e4m3 (N, K), weight_scale f32 (1), input_scale (not read: dynamic)
  ct_int4/8        weight_packed i32 (N, K*bits/32), weight_scale bf16 (N, K/g), weight_shape
  ct_int4_act      ct_int4 with actorder "group": + weight_g_idx i32 (K), the group of each
                   input column (one map for gate and up, which read the same input)
  ct_nvfp4         weight_packed u8 (N, K/2), weight_scale e4m3 (N, K/16), weight_global_scale
                   f32 (1) = 6 * 448 / amax: the dequantization divides by it (its float32
                   reciprocal is ModelOpt's weight_scale_2), input_global_scale f32 (1)

Writes OUTDIR/quant_ckpt/<name>/ (config.json, model.safetensors, maybe hf_quant_config.json),
<name>.L<layer>.x.npy (n_tokens, d_model) f32 and <name>.L<layer>.ref.npy (n_tokens, d_model) f32
for the layers tested (layer 1 of two MoE layers, and layer 0 where it is stored otherwise), and
OUTDIR/quant_ckpt/MANIFEST with one line per tested layer (format = that layer's experts):

    name  layer  nmse_tol  format_name  d_model

plus checkpoints bad_* that must fail to open or to build a layer (tests/test-io-quant-ckpt.c
knows what each must say).

Activations: libmoe runs NVFP4 as W4A16 (inputs of both projections rounded to bf16), FP8 with
e4m3 activations (static input_scale per tensor, or dynamic per token with scale
max(amax / 448, 1 / (448 * 512))), and int4 / int8 (GPTQ layout) with f32 activations; the reference
applies the same rounding to the vectors it feeds each projection.
"""
import json
import os
import sys

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

OUT = os.path.join(sys.argv[1] if len(sys.argv) > 1 else "build/testdata", "quant_ckpt")
T = 5
E, K_TOP, H, I, S = 4, 2, 64, 32, 64
rng = np.random.default_rng(20261129)
E4M3 = ml_dtypes.float8_e4m3fn
BF16 = ml_dtypes.bfloat16
E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
MANIFEST = []


# ----- quantizers (checkpoint layouts) and their dequantization -----

def to_e4m3(v):
    """float -> e4m3fn bytes, saturating at +-448 (ml_dtypes turns overflow into NaN)."""
    return np.clip(np.asarray(v, np.float32), -448.0, 448.0).astype(E4M3)


def nvfp4(w, gscale):
    """ModelOpt NVFP4 of w (N, K) with global scale gscale: -> (weight u8 (N, K/2) two e2m1 per
    byte, low nibble = even column; weight_scale e4m3 (N, K/16); dequantized float64)."""
    N, K = w.shape
    blk = w.reshape(N, K // 16, 16)
    bs = to_e4m3(np.abs(blk).max(axis=2) / 6.0 / gscale)
    bs = np.where(bs.astype(np.float32) == 0, to_e4m3(2.0 ** -9), bs)  # no zero block scale
    d = bs.astype(np.float64)[:, :, None] * gscale
    mag = np.abs(blk) / d
    code = np.abs(mag[..., None] - E2M1).argmin(axis=-1)
    code = code | np.where(blk < 0, 8, 0)
    vals = np.where(code & 8, -1.0, 1.0) * E2M1[code & 7]
    deq = (vals * d).reshape(N, K)
    c = code.reshape(N, K).astype(np.uint8)
    packed = (c[:, 0::2] | (c[:, 1::2] << 4)).astype(np.uint8)
    return packed, bs, deq


def fp8_tensor(w):
    s = np.float32(np.abs(w).max() / 448.0)
    q = to_e4m3(w / s)
    return q, s, q.astype(np.float64) * np.float64(s)


def fp8_channel(w):
    s = (np.abs(w).max(axis=1, keepdims=True) / 448.0).astype(np.float32)  # (N, 1)
    q = to_e4m3(w / s)
    return q, s, q.astype(np.float64) * s.astype(np.float64)


def act_gidx(K, g):
    """An act-order group map as GPTQ makes it: the columns in a random (activation) order,
    g per group; column k is in group gidx[k]."""
    gidx = np.empty(K, np.int32)
    gidx[rng.permutation(K)] = np.arange(K) // g
    return gidx


def ct_pack_int(w, g, bits, gidx=None):
    """compressed-tensors pack-quantized, symmetric int groups of g (columns k with one gidx[k];
    k // g without a map): -> (weight_packed int32 (N, K*bits/32), value k of row n at bits
    bits*(k%per) of word k/per (per = 32/bits), stored as q + 2^(bits-1); weight_scale bf16
    (N, K/g); dequantized float64 = q * scale of the column's group)."""
    N, K = w.shape
    per, half = 32 // bits, 1 << (bits - 1)
    gi = np.arange(K) // g if gidx is None else gidx
    amax = np.stack([np.abs(w[:, gi == j]).max(axis=1) for j in range(K // g)], axis=1)
    sc = (amax / (half - 1)).astype(BF16)
    sk = sc.astype(np.float64)[:, gi]  # (N, K): each column's scale
    q = np.clip(np.rint(w / sk), -half, half - 1).astype(np.int64)
    deq = q * sk
    u = (q + half).astype(np.uint32)
    packed = np.zeros((N, K // per), np.uint32)
    for i in range(per):
        packed |= u[:, i::per] << np.uint32(bits * i)
    return packed.view(np.int32), sc, deq


# ----- reference (float64) -----

def silu(v):
    return v / (1.0 + np.exp(-v))


def act_round(v, a):
    """The rounding of a projection's input vector v: a = None (f32), "bf16", ("fp8", scale)
    static, or "fp8tok" (dynamic per token)."""
    v32 = np.asarray(v, np.float32)
    if a is None:
        return v32.astype(np.float64)
    if a == "bf16":
        return v32.astype(BF16).astype(np.float64)
    if a == "fp8tok":
        sc = np.float32(max(np.float32(np.abs(v32).max()) / np.float32(448.0),
                            np.float32(1.0) / np.float32(448.0 * 512.0)))
    else:
        sc = np.float32(a[1])
    q = to_e4m3((v32 / sc).astype(np.float32))
    return q.astype(np.float32).astype(np.float64) * np.float64(sc)


def expert(x, Wg, Wu, Wd, a13, a2):
    xr = act_round(x, a13)
    h = silu(Wg @ xr) * (Wu @ xr)
    return Wd @ act_round(h, a2)


def moe_ref(X, R, layer):
    """X (T, H) -> (out (T, H), smallest top-k margin). qwen softmax routing, renormalized."""
    out = np.zeros_like(X)
    margin = np.inf
    for t in range(X.shape[0]):
        x = X[t]
        logits = R["gate"] @ x
        p = np.exp(logits - logits.max())
        p /= p.sum()
        order = sorted(range(E), key=lambda i: (-p[i], i))
        margin = min(margin, p[order[K_TOP - 1]] - p[order[K_TOP]])
        ids = order[:K_TOP]
        w = p[ids] / p[ids].sum()
        for e, wj in zip(ids, w):
            out[t] += wj * expert(x, layer["g"][e], layer["u"][e], layer["d"][e],
                                  layer["a13"][e], layer["a2"][e])
        if "sh" in R:
            g, u, d, a13, a2 = R["sh"]
            s = expert(x, g, u, d, a13, a2)
            out[t] += s / (1.0 + np.exp(-(R["sh_gw"] @ x)))
    return out, margin


# ----- checkpoints -----

def write(name, cfg, tensors, hf_quant=None):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    if hf_quant is not None:
        with open(os.path.join(d, "hf_quant_config.json"), "w") as f:
            json.dump(hf_quant, f, indent=2)
    save_file(tensors, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})


def base_cfg(qcfg, family="qwen3_moe"):
    cfg = {"model_type": family, "num_hidden_layers": 2, "hidden_size": H,
           "moe_intermediate_size": I, "num_experts": E, "num_experts_per_tok": K_TOP,
           "norm_topk_prob": True, "decoder_sparse_step": 1, "hidden_act": "silu"}
    if family == "qwen2_moe":
        cfg["shared_expert_intermediate_size"] = S
        cfg["intermediate_size"] = 96
    if qcfg is not None:
        cfg["quantization_config"] = qcfg
    return cfg


def rand_w(n, k, scale=1.0):
    return rng.standard_normal((n, k)) * scale / np.sqrt(k) * 2.0


def quant_mlp(kind, pe, ws, t):
    """Stores the MLP ws {gate_proj, up_proj, down_proj: (N, K) float64} under prefix pe as
    checkpoint `kind` stores it; returns (dequantized weights as libmoe runs them, activation
    rounding of W13's input, of W2's input)."""
    deq = {}
    if kind in ("nvfp4", "ct_nvfp4"):
        # gate and up of an expert share one global scale (libmoe requires it)
        a13 = max(np.abs(ws["gate_proj"]).max(), np.abs(ws["up_proj"]).max())
        a2 = np.abs(ws["down_proj"]).max()
        if kind == "nvfp4":  # ModelOpt: the multiplier
            g13, g2 = np.float32(a13 / (6.0 * 448.0)), np.float32(a2 / (6.0 * 448.0))
        else:  # compressed-tensors stores 6 * 448 / amax; the multiplier is its reciprocal
            c13, c2 = np.float32(6.0 * 448.0 / a13), np.float32(6.0 * 448.0 / a2)
            g13, g2 = np.float32(1.0) / c13, np.float32(1.0) / c2
        for n, w in ws.items():
            gs = g2 if n == "down_proj" else g13
            q, bs, deq[n] = nvfp4(w, np.float64(gs))
            t[pe + n + ".weight_scale"] = bs
            if kind == "nvfp4":
                t[pe + n + ".weight"] = q
                t[pe + n + ".weight_scale_2"] = np.array(gs, np.float32)  # shape ()
                t[pe + n + ".input_scale"] = np.array(1.0 / 448.0, np.float32)  # W4A4: unused
            else:
                t[pe + n + ".weight_packed"] = q
                t[pe + n + ".weight_global_scale"] = np.array([c2 if n == "down_proj" else c13],
                                                              np.float32)
                t[pe + n + ".input_global_scale"] = np.array([448.0], np.float32)  # unused
        return deq, "bf16", "bf16"
    if kind in ("mo_fp8", "ct_fp8_tensor"):
        sc, ins = {}, {}
        for n, w in ws.items():
            q, sc[n], deq[n] = fp8_tensor(w)
            t[pe + n + ".weight"] = q
            t[pe + n + ".weight_scale"] = (np.array(sc[n], np.float32) if kind == "mo_fp8"
                                           else np.array([sc[n]], np.float32))
            ins[n] = np.float32(rng.uniform(0.004, 0.012))
            t[pe + n + ".input_scale"] = np.array(ins[n], np.float32)
        # W13 carries one scale: the half with the smaller scale is re-quantized to the
        # larger one (vLLM's rule, documented by libmoe), in float32, to e4m3
        sg, su = np.float32(sc["gate_proj"]), np.float32(sc["up_proj"])
        big = max(sg, su)
        for n, s in (("gate_proj", sg), ("up_proj", su)):
            if s < big:
                v = t[pe + n + ".weight"].astype(np.float32)
                q2 = to_e4m3((v * s) / big)
                deq[n] = q2.astype(np.float64) * np.float64(big)
        if kind == "mo_fp8":  # static activations: one scale for the input gate and up share
            return deq, ("fp8", max(ins["gate_proj"], ins["up_proj"])), ("fp8", ins["down_proj"])
        return deq, "fp8tok", "fp8tok"  # dynamic: libmoe quantizes them per token
    if kind in ("ct_fp8_channel", "mo_fp8_channel"):
        for n, w in ws.items():
            q, s, _ = fp8_channel(w)
            t[pe + n + ".weight"] = q
            if kind == "ct_fp8_channel":  # bf16 (N, 1) as llm-compressor writes it
                t[pe + n + ".weight_scale"] = s.astype(BF16)
                deq[n] = q.astype(np.float64) * s.astype(BF16).astype(np.float64)
            else:  # f32 (N)
                t[pe + n + ".weight_scale"] = np.ascontiguousarray(s[:, 0])
                deq[n] = q.astype(np.float64) * s.astype(np.float64)
        return deq, "fp8tok", "fp8tok"
    if kind in ("ct_int4", "ct_int8", "ct_int4_act"):
        bits, g = (8, 32) if kind == "ct_int8" else (4, 32)
        gi = {}
        if kind == "ct_int4_act":  # gate and up quantize the same input: one map
            gi["gate_proj"] = gi["up_proj"] = act_gidx(ws["gate_proj"].shape[1], g)
            gi["down_proj"] = act_gidx(ws["down_proj"].shape[1], g)
        for n, w in ws.items():
            q, s, deq[n] = ct_pack_int(w, g, bits, gi.get(n))
            t[pe + n + ".weight_packed"] = q
            t[pe + n + ".weight_scale"] = s
            t[pe + n + ".weight_shape"] = np.array(w.shape, np.int64)
            if n in gi:
                t[pe + n + ".weight_g_idx"] = gi[n]
        a = "bf16" if bits == 4 else None  # int4 runs W4A16 with bf16 activations (quant.h)
        return deq, a, a
    raise ValueError(kind)


def build(kind, shared=None, mutate=None, plain0=False):
    """Tensors and float64 reference weights of a 2-layer checkpoint of `kind` (quant_mlp):
    -> (tensors, [per layer: router and shared expert], [per layer: routed experts]).
    shared: None (no shared expert), "bf16" (excluded from quantization) or "quant";
    plain0: layer 0's routed experts excluded from quantization (bf16)."""
    t, Rs, layers = {}, [], []
    for L in range(2):
        p = "model.layers.%d.mlp." % L
        gate = rand_w(E, H, 1.5).astype(BF16)  # the router is never quantized
        t[p + "gate.weight"] = gate
        R = {"gate": gate.astype(np.float64)}
        lay = {"g": [], "u": [], "d": [], "a13": [], "a2": []}
        for e in range(E):
            ws = {"gate_proj": rand_w(I, H), "up_proj": rand_w(I, H), "down_proj": rand_w(H, I)}
            if plain0 and L == 0:  # bf16 weights run with bf16 activations (quant.h)
                deq, a13, a2 = {}, "bf16", "bf16"
                for n, w in ws.items():
                    t[p + "experts.%d.%s.weight" % (e, n)] = w.astype(BF16)
                    deq[n] = w.astype(BF16).astype(np.float64)
            else:
                deq, a13, a2 = quant_mlp(kind, p + "experts.%d." % e, ws, t)
            lay["g"].append(deq["gate_proj"])
            lay["u"].append(deq["up_proj"])
            lay["d"].append(deq["down_proj"])
            lay["a13"].append(a13)
            lay["a2"].append(a2)
        layers.append(lay)
        if shared:
            ws = {"gate_proj": rand_w(S, H), "up_proj": rand_w(S, H), "down_proj": rand_w(H, S)}
            if shared == "bf16":  # excluded from quantization: kept as the checkpoint has it
                deq, a13, a2 = {}, "bf16", "bf16"
                for n, w in ws.items():
                    t[p + "shared_expert." + n + ".weight"] = w.astype(BF16)
                    deq[n] = w.astype(BF16).astype(np.float64)
            else:
                deq, a13, a2 = quant_mlp(kind, p + "shared_expert.", ws, t)
            gw = (rng.standard_normal((1, H)) / np.sqrt(H)).astype(BF16)
            t[p + "shared_expert_gate.weight"] = gw  # never quantized
            R["sh"] = (deq["gate_proj"], deq["up_proj"], deq["down_proj"], a13, a2)
            R["sh_gw"] = gw.astype(np.float64)[0]
        Rs.append(R)
    if mutate:
        mutate(t)
    return t, Rs, layers


def good(name, kind, cfg, tol, fmt_name, hf_quant=None, shared=None, plain0=False, layers=(1,)):
    """A checkpoint with reference outputs of the given layers (files <name>.L<layer>.*)."""
    t, Rs, lays = build(kind, shared, plain0=plain0)
    write(name, cfg, t, hf_quant)
    for L in layers:
        for _ in range(200):
            X = rng.standard_normal((T, H)).astype(np.float32).astype(np.float64)
            ref, margin = moe_ref(X, Rs[L], lays[L])
            if margin > 2e-3:
                break
        else:
            raise SystemExit(name + ": no inputs with a routing margin")
        np.save(os.path.join(OUT, "%s.L%d.x.npy" % (name, L)), X.astype(np.float32))
        np.save(os.path.join(OUT, "%s.L%d.ref.npy" % (name, L)), ref.astype(np.float32))
        fn = fmt_name if not (plain0 and L == 0) else "bf16"
        MANIFEST.append("%s %d %g %s %d" % (name, L, tol, fn, H))


MO_NVFP4 = {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16,
            "kv_cache_quant_algo": None,
            "exclude_modules": ["lm_head", "model.layers.*.mlp.gate",
                                "model.layers.*.mlp.shared_expert*"]}
HFQ_NVFP4 = {"producer": {"name": "modelopt", "version": "0.29.0"},
             "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": None,
                              "group_size": 16, "exclude_modules": ["lm_head"]}}
MO_NVFP4_ALL = {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16,
                "exclude_modules": ["lm_head", "model.layers.*.mlp.gate",
                                    "model.layers.*.mlp.shared_expert_gate"]}
MO_FP8_CH = {"quant_method": "modelopt", "quant_algo": "FP8_PER_CHANNEL_PER_TOKEN"}
MO_FP8 = {"quant_method": "modelopt", "quant_algo": "FP8", "exclude_modules": ["lm_head"]}


def ct_cfg(fmt, weights, acts):
    return {"quant_method": "compressed-tensors", "format": fmt,
            "quantization_status": "compressed", "ignore": ["lm_head", "re:.*mlp.gate$"],
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                          "input_activations": acts, "output_activations": None}}}


FP8_CH = ct_cfg("float-quantized",
                {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True,
                 "dynamic": False, "group_size": None, "actorder": None},
                {"num_bits": 8, "type": "float", "strategy": "token", "symmetric": True,
                 "dynamic": True, "group_size": None})
FP8_TN = ct_cfg("float-quantized",
                {"num_bits": 8, "type": "float", "strategy": "tensor", "symmetric": True,
                 "dynamic": False},
                {"num_bits": 8, "type": "float", "strategy": "tensor", "symmetric": True,
                 "dynamic": True})
W4A16 = ct_cfg("pack-quantized",
               {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 32,
                "symmetric": True, "dynamic": False, "actorder": "weight"}, None)
W4A16_ACT = ct_cfg("pack-quantized",
                   {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 32,
                    "symmetric": True, "dynamic": False, "actorder": "group"}, None)
def with_group(cfg, **fields):
    """cfg with fields of its config group group_0 replaced: a dict value updates that field's
    quantization args, anything else (None) replaces the field."""
    g = dict(cfg["config_groups"]["group_0"])
    for k, v in fields.items():
        g[k] = dict(g[k], **v) if isinstance(v, dict) else v
    return dict(cfg, config_groups={"group_0": g})


NVFP4_CT = ct_cfg("nvfp4-pack-quantized",
                  {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16,
                   "symmetric": True, "dynamic": False, "actorder": None},
                  {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16,
                   "symmetric": True, "dynamic": "local"})
W8A16 = ct_cfg("pack-quantized",
               {"num_bits": 8, "type": "int", "strategy": "group", "group_size": 32,
                "symmetric": True, "dynamic": False, "actorder": None}, None)


def bad(name, kind, cfg, mutate=None, hf_quant=None, shared=None):
    t, _, _ = build(kind, shared, mutate=mutate)
    write(name, cfg, t, hf_quant)


def main():
    os.makedirs(OUT, exist_ok=True)
    # bounds: 1e-6 for the e4m3 / bf16 activation paths (the rounding of a value that lands
    # on a boundary may differ between the f32 kernels and this f64 reference), 1e-8 for
    # int4 / int8 with f32 activations; a wrong layout or scale gives >= 1e-4
    good("nvfp4", "nvfp4", base_cfg(MO_NVFP4, "qwen2_moe"), 1e-6, "nvfp4", shared="bf16")
    good("nvfp4_plain0", "nvfp4", base_cfg(MO_NVFP4), 1e-6, "nvfp4", plain0=True, layers=(0, 1))
    good("nvfp4_hfq", "nvfp4", base_cfg(None), 1e-6, "nvfp4", hf_quant=HFQ_NVFP4)
    good("nvfp4_shared", "nvfp4", base_cfg(MO_NVFP4_ALL, "qwen2_moe"), 1e-6, "nvfp4",
         shared="quant")
    good("mo_fp8", "mo_fp8", base_cfg(MO_FP8, "qwen2_moe"), 1e-6, "fp8-tensor", shared="quant")
    good("mo_fp8_channel", "mo_fp8_channel", base_cfg(MO_FP8_CH), 1e-6, "fp8-channel")
    good("ct_fp8_channel", "ct_fp8_channel", base_cfg(FP8_CH), 1e-6, "fp8-channel")
    good("ct_fp8_tensor", "ct_fp8_tensor", base_cfg(FP8_TN), 1e-6, "fp8-tensor")
    good("ct_int4", "ct_int4", base_cfg(W4A16, "qwen2_moe"), 1e-8, "int4-gptq", shared="quant")
    good("ct_int8", "ct_int8", base_cfg(W8A16), 1e-8, "int8-gptq")
    # act order: the routed down_proj (K = I = 32) has one group, the shared one (K = S) two
    good("ct_int4_act", "ct_int4_act", base_cfg(W4A16_ACT, "qwen2_moe"), 1e-8, "int4-gptq",
         shared="quant")
    good("ct_nvfp4", "ct_nvfp4", base_cfg(NVFP4_CT, "qwen2_moe"), 1e-6, "nvfp4", shared="quant")

    def up_scale2(t):  # expert 2 of layer 1: up's global scale != gate's
        k = "model.layers.1.mlp.experts.2.up_proj.weight_scale_2"
        t[k] = np.array(t[k] * np.float32(1.5), np.float32)

    def nan_scale2(t):
        t["model.layers.0.mlp.experts.1.down_proj.weight_scale_2"] = np.array(np.nan, np.float32)

    def nan_block(t):  # one e4m3 block scale = 0x7F (NaN), row 3 block 2
        k = "model.layers.1.mlp.experts.3.gate_proj.weight_scale"
        s = t[k].view(np.uint8).copy()
        s[3, 2] = 0x7F
        t[k] = s.view(E4M3)

    def bad_shape(t):
        k = "model.layers.0.mlp.experts.0.up_proj.weight_scale"
        t[k] = np.ascontiguousarray(t[k][:, : H // 32])

    def zero_fp8_scale(t):
        t["model.layers.1.mlp.experts.0.down_proj.weight_scale"] = np.array(0.0, np.float32)

    def inf_input_scale(t):
        t["model.layers.0.mlp.experts.3.gate_proj.input_scale"] = np.array(np.inf, np.float32)

    def bad_weight_shape(t):
        t["model.layers.1.mlp.experts.1.down_proj.weight_shape"] = np.array([H, 2 * I], np.int64)

    def drop_input_scale(t):
        del t["model.layers.1.mlp.experts.2.up_proj.input_scale"]

    def gidx_mismatch(t):  # layer 1 expert 3: up's map differs from gate's
        k = "model.layers.1.mlp.experts.3.up_proj.weight_g_idx"
        t[k] = np.ascontiguousarray(t[k][::-1])

    def gidx_range(t):  # layer 0's shared down_proj: column 5 in group K/g (one past the last)
        k = "model.layers.0.mlp.shared_expert.down_proj.weight_g_idx"
        t[k] = t[k].copy()
        t[k][5] = S // 32

    def drop_gidx(t):
        del t["model.layers.0.mlp.experts.2.down_proj.weight_g_idx"]

    def tiny_global_scale(t):  # a subnormal weight_global_scale: no finite reciprocal
        k = "model.layers.1.mlp.experts.0.down_proj.weight_global_scale"
        t[k] = np.array([1e-45], np.float32)

    def signed_bytes(t):
        k = "model.layers.0.mlp.experts.0.gate_proj.weight"
        t[k] = t[k].view(np.int8)

    bad("bad_ct_weight_shape", "ct_int4", base_cfg(W4A16), bad_weight_shape)
    bad("bad_ct_gidx_mismatch", "ct_int4_act", base_cfg(W4A16_ACT), gidx_mismatch)
    bad("bad_ct_gidx_range", "ct_int4_act", base_cfg(W4A16_ACT, "qwen2_moe"), gidx_range,
        shared="quant")
    bad("bad_ct_gidx_missing", "ct_int4_act", base_cfg(W4A16_ACT), drop_gidx)
    bad("bad_fp8_missing_input_scale", "mo_fp8", base_cfg(MO_FP8), drop_input_scale)
    bad("bad_nvfp4_dtype", "nvfp4", base_cfg(MO_NVFP4), signed_bytes)
    bad("bad_ct_nvfp4_tiny_scale", "ct_nvfp4", base_cfg(NVFP4_CT), tiny_global_scale)
    bad("bad_ct_nvfp4_group", "ct_nvfp4",
        base_cfg(with_group(NVFP4_CT, weights={"group_size": 32})))
    bad("bad_ct_dynamic_string", "ct_nvfp4",
        base_cfg(with_group(NVFP4_CT, input_activations={"dynamic": "global"})))
    bad("bad_ct_fp8_weight_only", "ct_fp8_channel",
        base_cfg(with_group(FP8_CH, input_activations=None)))
    mixed = dict(W4A16)
    mixed["config_groups"] = {"group_0": W4A16["config_groups"]["group_0"],
                              "group_1": W8A16["config_groups"]["group_0"]}
    bad("bad_ct_mixed_groups", "ct_int4", base_cfg(mixed))
    bad("bad_nvfp4_scale2_mismatch", "nvfp4", base_cfg(MO_NVFP4), up_scale2)
    bad("bad_nvfp4_scale2_nan", "nvfp4", base_cfg(MO_NVFP4), nan_scale2)
    bad("bad_nvfp4_block_nan", "nvfp4", base_cfg(MO_NVFP4), nan_block)
    bad("bad_nvfp4_shape", "nvfp4", base_cfg(MO_NVFP4), bad_shape)
    bad("bad_fp8_zero_scale", "mo_fp8", base_cfg(MO_FP8), zero_fp8_scale)
    bad("bad_fp8_inf_input_scale", "mo_fp8", base_cfg(MO_FP8), inf_input_scale)
    bad("bad_modelopt_algo", "nvfp4",
        base_cfg(dict(MO_NVFP4, quant_algo="W4A8_AWQ")))
    bad("bad_ct_asym", "ct_int4",
        base_cfg(ct_cfg("pack-quantized", {"num_bits": 4, "type": "int", "strategy": "group",
                                           "group_size": 32, "symmetric": False,
                                           "dynamic": False}, None)))
    with open(os.path.join(OUT, "MANIFEST"), "w") as f:
        f.write("# name layer nmse_tol format d_model\n")
        f.write("\n".join(MANIFEST) + "\n")


main()
