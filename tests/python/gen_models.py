#!/usr/bin/env python3
"""gen_models.py OUTDIR - tiny checkpoints of every supported MoE family, written by the
reference writers (the `safetensors` and `gguf` Python packages), with inputs and fp64
reference outputs computed here in NumPy (independent of libmoe).

Writes OUTDIR/models/<name>/ (Hugging Face directories) or OUTDIR/models/<name>.gguf, plus
OUTDIR/models/<name>.x.npy (n_tokens, d_model) f32 and <name>.ref.npy (n_tokens, d_model) f32,
and OUTDIR/models/MANIFEST with one line per model:

    name  path  layer  nmse_tol  family  n_experts  top_k  n_moe_layers  d_model

The reference applies each family's routing and expert MLP exactly as upstream defines it
(transformers modeling_* / llama.cpp graphs) to the weights as stored (rounded to their dtype,
or dequantized by ml_dtypes / gguf.quants), in float64.
"""
import json
import os
import sys

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file
import gguf
from gguf.constants import GGMLQuantizationType as QT

OUT = os.path.join(sys.argv[1] if len(sys.argv) > 1 else "build/testdata", "models")
T = 5  # tokens
rng = np.random.default_rng(20261128)
MANIFEST = []


# ----- reference math (float64) -----

def silu(v):
    return v / (1.0 + np.exp(-v))


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def topk(score, k):
    """Indices of the k largest (ties to the lower index), and the gap after the k-th."""
    order = sorted(range(len(score)), key=lambda i: (-score[i], i))
    gap = score[order[k - 1]] - score[order[k]] if k < len(score) else np.inf
    return order[:k], gap


def route(logits, r):
    """-> (ids, weights, smallest decision margin) for one token."""
    k, sc = r["k"], r["scoring"]
    if sc == "softmax_topk":
        ids, gap = topk(logits, k)
        return ids, softmax(logits[ids]), gap
    if sc == "llama4":
        ids, gap = topk(logits, k)
        return ids, sigmoid(logits[ids]), gap
    p = softmax(logits) if sc == "softmax" else sigmoid(logits)
    sel = p + (r["bias"] if r.get("bias") is not None else 0.0)
    gap = np.inf
    ng = r.get("n_group", 0)
    if ng and ng > 1:
        g = sel.reshape(ng, -1)
        if r.get("bias") is not None:
            gs = np.sort(g, axis=1)[:, -2:].sum(axis=1)
        else:
            gs = g.max(axis=1)
        keep, gap = topk(gs, r["topk_group"])
        mask = np.full(len(sel), -np.inf)
        for gi in keep:
            mask[gi * g.shape[1]:(gi + 1) * g.shape[1]] = 0.0
        sel = sel + mask
    ids, gap2 = topk(sel, k)
    w = p[ids]
    if r.get("renorm"):
        w = w / w.sum()
    return ids, w * r.get("rsf", 1.0), min(gap, gap2)


def aquant(v, kind):
    """The activation rounding a weight format's kernels apply to their input row (libmoe's
    documented contract, quant.h): bf16 for BF16, MXFP4 and 4-bit GPTQ/AWQ (W4A16), e4m3 per 128 columns with scale
    max(amax, 1e-10)/448 for FP8_BLOCK, ggml q8_0 blocks of 32 for the GGUF formats."""
    if kind is None:
        return v
    v32 = v.astype(np.float32)
    if kind == "bf16":
        return v32.astype(ml_dtypes.bfloat16).astype(np.float64)
    out = np.empty(len(v32), np.float64)
    g = {"fp8b": 128, "q8_k": 256}.get(kind, 32)
    for i in range(0, len(v32), g):
        blk = v32[i:i + g]
        amax = np.float32(np.abs(blk).max())
        if kind == "fp8b":
            sc = np.float32(max(amax, np.float32(1e-10)) / np.float32(448.0))
            q = (blk / sc).astype(np.float32).astype(ml_dtypes.float8_e4m3fn)
            out[i:i + g] = q.astype(np.float32) * sc
        elif kind == "q8_k":  # the signed value of largest magnitude maps to -127
            g = 256
            blk = v32[i:i + g]
            mx = blk[np.argmax(np.abs(blk))]
            if mx == 0:
                out[i:i + g] = 0
                continue
            iscale = np.float32(np.float32(-127.0) / mx)
            q = np.minimum(np.rint((iscale * blk).astype(np.float32)), 127)
            out[i:i + g] = (q * np.float32(np.float32(1.0) / iscale)).astype(np.float32)
        else:  # q8_0
            d = np.float32(amax / np.float32(127.0))
            idv = np.float32(1.0) / d if d else np.float32(0.0)
            q = np.rint((blk * idv).astype(np.float32))
            out[i:i + g] = (q * np.float32(np.float16(d))).astype(np.float32)
    return out


def expert(x, Wg, Wu, Wd, act="silu", bg=None, bu=None, bd=None, limit=7.0, aq=None):
    """aq: the activation rounding of both projections, or a pair (W13's, W2's) when the
    down projection is stored in another type."""
    aq, aq2 = aq if isinstance(aq, tuple) else (aq, aq)
    x = aquant(x, aq)
    g, u = Wg @ x, Wu @ x
    if bg is not None:
        g, u = g + bg, u + bu
    if act == "silu":
        h = silu(g) * u
    else:  # gpt-oss swiglu: clamp, then (up + 1) * gate * sigmoid(1.702 gate)
        g = np.minimum(g, limit)
        u = np.clip(u, -limit, limit)
        h = (u + 1.0) * g * sigmoid(1.702 * g)
    y = Wd @ aquant(h, aq2)
    return y + bd if bd is not None else y


def moe_ref(X, W, r):
    """X (T, H) float64 -> (out (T, H), min margin)."""
    out = np.zeros_like(X)
    margin = np.inf
    E = W["gate"].shape[0]
    for t in range(X.shape[0]):
        x = X[t]
        logits = W["gate"] @ x + (W["gate_b"] if W.get("gate_b") is not None else 0.0)
        ids, w, gap = route(logits, r)
        margin = min(margin, gap)
        for e, wj in zip(ids, w):
            assert 0 <= e < E
            kw = dict(act=r.get("act", "silu"), aq=r.get("aq"))
            if W.get("b_gate") is not None:
                kw.update(bg=W["b_gate"][e], bu=W["b_up"][e], bd=W["b_down"][e])
            if r["scoring"] == "llama4":
                out[t] += expert(x * wj, W["w_gate"][e], W["w_up"][e], W["w_down"][e], **kw)
            else:
                out[t] += wj * expert(x, W["w_gate"][e], W["w_up"][e], W["w_down"][e], **kw)
        if W.get("sh_gate") is not None:
            s = expert(x, W["sh_gate"], W["sh_up"], W["sh_down"], aq=r.get("aq_sh"))
            if W.get("sh_gw") is not None:
                s = s * sigmoid(W["sh_gw"] @ x)
            out[t] += s
    return out, margin


# ----- weights -----

def cast(a, dt):
    """Rounds a float64 array to storage dtype dt; returns (stored array, its float64 value)."""
    np_dt = {"F32": np.float32, "BF16": ml_dtypes.bfloat16, "F16": np.float16}[dt]
    s = a.astype(np_dt)
    return s, s.astype(np.float64)


def make_weights(E, H, I, S=0, wscale=0.3, gate_scale=1.0):
    W = {"gate": rng.standard_normal((E, H)) * gate_scale / np.sqrt(H),
         "w_gate": rng.standard_normal((E, I, H)) * wscale / np.sqrt(H) * 3,
         "w_up": rng.standard_normal((E, I, H)) * wscale / np.sqrt(H) * 3,
         "w_down": rng.standard_normal((E, H, I)) * wscale / np.sqrt(I) * 3}
    if S:
        W["sh_gate"] = rng.standard_normal((S, H)) / np.sqrt(H)
        W["sh_up"] = rng.standard_normal((S, H)) / np.sqrt(H)
        W["sh_down"] = rng.standard_normal((H, S)) / np.sqrt(S)
    return W


def round_all(W, dt):
    """Rounds every weight to dt in place; returns the stored arrays."""
    stored = {}
    for k, v in W.items():
        if v is None:
            continue
        stored[k], W[k] = cast(v, dt)
    return stored


def inputs_and_ref(name, W, r, H, margin_min=2e-3):
    for _ in range(200):
        X = rng.standard_normal((T, H)).astype(np.float32).astype(np.float64)
        ref, margin = moe_ref(X, W, r)
        if margin > margin_min:
            np.save(os.path.join(OUT, name + ".x.npy"), X.astype(np.float32))
            np.save(os.path.join(OUT, name + ".ref.npy"), ref.astype(np.float32))
            return
    raise SystemExit("%s: could not draw inputs with a routing margin" % name)


def manifest(name, path, layer, tol, family, E, k, n_moe, H):
    MANIFEST.append("%s %s %d %g %s %d %d %d %d" % (name, path, layer, tol, family, E, k, n_moe, H))


def write_hf(name, cfg, tensors, shards=1):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    if shards == 1:
        save_file(tensors, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        return
    names = sorted(tensors)
    per = (len(names) + shards - 1) // shards
    wm, total = {}, 0
    for s in range(shards):
        fn = "model-%05d-of-%05d.safetensors" % (s + 1, shards)
        part = {n: tensors[n] for n in names[s * per:(s + 1) * per]}
        save_file(part, os.path.join(d, fn), metadata={"format": "pt"})
        for n, a in part.items():
            wm[n] = fn
            total += a.nbytes
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2)


def dense_mlp(prefix, H, I, dt):
    return {prefix + p + ".weight": cast(rng.standard_normal(s) * 0.1, dt)[0]
            for p, s in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I)))}


# ----- Hugging Face families -----

def hf_split(name, family, cfg, layers, moe_layer, E, k, H, I, dt, r, S=0, shards=1, tol=1e-10,
             expert_names=("gate_proj", "up_proj", "down_proj"), moe_path="mlp", experts="experts",
             shared_name=None, shared_gate=False, corr=False, dense=()):
    W = make_weights(E, H, I, S)
    if shared_gate:
        W["sh_gw"] = rng.standard_normal(H) / np.sqrt(H)
    if corr:
        W["corr"] = rng.standard_normal(E) * 0.05
    st = round_all(W, dt)
    if corr:  # e_score_correction_bias is kept in f32 by DeepSeek-V3
        st["corr"], W["corr"] = cast(W["corr"], "F32")
        r["bias"] = W["corr"]
    p = "model.layers.%d.%s." % (moe_layer, moe_path)
    t = {p + "gate.weight": st["gate"], "model.norm.weight": cast(np.ones(H), dt)[0]}
    for e in range(E):
        for j, key in enumerate(("w_gate", "w_up", "w_down")):
            t[p + "%s.%d.%s.weight" % (experts, e, expert_names[j])] = np.ascontiguousarray(st[key][e])
    if S:
        for j, key in enumerate(("sh_gate", "sh_up", "sh_down")):
            t[p + "%s.%s.weight" % (shared_name, ("gate_proj", "up_proj", "down_proj")[j])] = st[key]
    if shared_gate:
        t[p + "shared_expert_gate.weight"] = st["sh_gw"].reshape(1, H)
    if corr:
        t[p + "gate.e_score_correction_bias"] = st["corr"]
    for L in dense:
        t.update(dense_mlp("model.layers.%d.mlp." % L, H, I, dt))
    write_hf(name, cfg, t, shards)
    if dt == "BF16":  # bf16 weights run with bf16 activations (quant.h)
        r = dict(r, aq="bf16", aq_sh="bf16")
    inputs_and_ref(name, W, r, H)
    manifest(name, name, moe_layer, tol, family, E, k, layers - len(dense), H)


def gen_hf():
    E, k, H, I = 4, 2, 64, 32
    cfg = {"model_type": "mixtral", "num_hidden_layers": 1, "hidden_size": H, "intermediate_size": I,
           "num_local_experts": E, "num_experts_per_tok": k, "hidden_act": "silu", "torch_dtype": "float32"}
    hf_split("mixtral", "mixtral", cfg, 1, 0, E, k, H, I, "F32",
             {"k": k, "scoring": "softmax", "renorm": True}, expert_names=("w1", "w3", "w2"),
             moe_path="block_sparse_moe")
    S = 48
    cfg = {"model_type": "qwen2_moe", "num_hidden_layers": 2, "hidden_size": H, "moe_intermediate_size": I,
           "intermediate_size": 96, "shared_expert_intermediate_size": S, "num_experts": E,
           "num_experts_per_tok": k, "norm_topk_prob": False, "decoder_sparse_step": 1,
           "mlp_only_layers": [0], "hidden_act": "silu"}
    hf_split("qwen2_moe", "qwen2_moe", cfg, 2, 1, E, k, H, I, "F32",
             {"k": k, "scoring": "softmax", "renorm": False}, S=S, shards=2,
             shared_name="shared_expert", shared_gate=True, dense=(0,))
    cfg = {"model_type": "qwen3_moe", "num_hidden_layers": 1, "hidden_size": H, "moe_intermediate_size": I,
           "num_experts": 8, "num_experts_per_tok": 3, "norm_topk_prob": True, "hidden_act": "silu"}
    hf_split("qwen3_moe_bf16", "qwen3_moe", cfg, 1, 0, 8, 3, H, I, "BF16",
             {"k": 3, "scoring": "softmax", "renorm": True}, tol=1e-5)
    cfg = {"model_type": "olmoe", "num_hidden_layers": 1, "hidden_size": H, "intermediate_size": I,
           "num_experts": E, "num_experts_per_tok": k, "norm_topk_prob": False, "hidden_act": "silu"}
    hf_split("olmoe_f16", "olmoe", cfg, 1, 0, E, k, H, I, "F16",
             {"k": k, "scoring": "softmax", "renorm": False}, tol=1e-5)
    E8 = 8
    cfg = {"model_type": "deepseek_v2", "num_hidden_layers": 2, "hidden_size": H, "intermediate_size": 96,
           "moe_intermediate_size": I, "n_routed_experts": E8, "num_experts_per_tok": k,
           "n_shared_experts": 2, "first_k_dense_replace": 1, "moe_layer_freq": 1, "n_group": 4,
           "topk_group": 2, "topk_method": "group_limited_greedy", "scoring_func": "softmax",
           "norm_topk_prob": False, "routed_scaling_factor": 2.0, "hidden_act": "silu"}
    hf_split("deepseek_v2", "deepseek_v2", cfg, 2, 1, E8, k, H, I, "F32",
             {"k": k, "scoring": "softmax", "renorm": False, "n_group": 4, "topk_group": 2, "rsf": 2.0},
             S=2 * I, shared_name="shared_experts", dense=(0,))
    cfg = {"model_type": "deepseek_v3", "num_hidden_layers": 1, "hidden_size": H, "moe_intermediate_size": I,
           "n_routed_experts": E8, "num_experts_per_tok": k, "n_shared_experts": 1, "first_k_dense_replace": 0,
           "n_group": 4, "topk_group": 2, "topk_method": "noaux_tc", "scoring_func": "sigmoid",
           "norm_topk_prob": True, "routed_scaling_factor": 2.5, "hidden_act": "silu"}
    hf_split("deepseek_v3", "deepseek_v3", cfg, 1, 0, E8, k, H, I, "F32",
             {"k": k, "scoring": "sigmoid", "renorm": True, "n_group": 4, "topk_group": 2, "rsf": 2.5},
             S=I, shared_name="shared_experts", corr=True)
    gen_deepseek_fp8()
    gen_gpt_oss()
    gen_gpt_oss_mxfp4()
    gen_llama4()
    gen_quantized()


def fp8_block(w):
    """DeepSeek-style 128x128 block fp8: -> (q e4m3fn, scale_inv f32, dequantized float64)."""
    R, C = w.shape
    s = np.zeros(((R + 127) // 128, (C + 127) // 128), np.float32)
    q = np.zeros((R, C), ml_dtypes.float8_e4m3fn)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            blk = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            sc = np.float32(max(np.abs(blk).max(), 1e-12) / 448.0)
            s[i, j] = sc
            q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = (blk / sc).astype(ml_dtypes.float8_e4m3fn)
    deq = q.astype(np.float64) * np.kron(s.astype(np.float64), np.ones((128, 128)))[:R, :C]
    return q, s, deq


def gen_deepseek_fp8():
    E, k, H, I = 4, 2, 128, 128
    W = make_weights(E, H, I, S=I)
    t = {}
    p = "model.layers.0.mlp."
    st_gate, W["gate"] = cast(W["gate"], "BF16")
    t[p + "gate.weight"] = st_gate
    for e in range(E):
        for key, pn in (("w_gate", "gate_proj"), ("w_up", "up_proj"), ("w_down", "down_proj")):
            q, s, W[key][e] = fp8_block(W[key][e])
            t[p + "experts.%d.%s.weight" % (e, pn)] = q
            t[p + "experts.%d.%s.weight_scale_inv" % (e, pn)] = s
    for key, pn in (("sh_gate", "gate_proj"), ("sh_up", "up_proj"), ("sh_down", "down_proj")):
        q, s, W[key] = fp8_block(W[key])
        t[p + "shared_experts.%s.weight" % pn] = q
        t[p + "shared_experts.%s.weight_scale_inv" % pn] = s
    corr = (rng.standard_normal(E) * 0.05).astype(np.float32)
    t[p + "gate.e_score_correction_bias"] = corr
    cfg = {"model_type": "deepseek_v3", "num_hidden_layers": 1, "hidden_size": H, "moe_intermediate_size": I,
           "n_routed_experts": E, "num_experts_per_tok": k, "n_shared_experts": 1, "n_group": 1,
           "topk_group": 1, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
           "routed_scaling_factor": 1.5, "hidden_act": "silu",
           "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                   "weight_block_size": [128, 128]}}
    write_hf("deepseek_v3_fp8", cfg, t)
    inputs_and_ref("deepseek_v3_fp8", W, {"k": k, "scoring": "sigmoid", "renorm": True, "rsf": 1.5,
                                          "bias": corr.astype(np.float64), "aq": "fp8b", "aq_sh": "fp8b"}, H)
    manifest("deepseek_v3_fp8", "deepseek_v3_fp8", 0, 1e-6, "deepseek_v3", E, k, 1, H)


# ----- GPTQ / AWQ checkpoints (AutoGPTQ / AutoAWQ layouts, packed here in NumPy) -----

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AWQ packs column AWQ_ORDER[p] of 8 at nibble p


def gptq_pack(w, bits, g, g_idx):
    """Symmetric GPTQ (checkpoint_format gptq, sym true): w (N, K) -> (qweight int32 (K*bits/32, N),
    qzeros int32 (K/g, N*bits/32) holding zero - 1, scales f16 (K/g, N), dequantized float64)."""
    N, K = w.shape
    per, zero, qmax = 32 // bits, 1 << (bits - 1), (1 << bits) - 1
    ng = K // g
    sc = np.zeros((ng, N), np.float16)
    for gi in range(ng):
        cols = np.nonzero(g_idx == gi)[0]
        sc[gi] = (np.abs(w[:, cols]).max(axis=1) / (zero - 1)).astype(np.float16)
    s_k = sc.astype(np.float64)[g_idx].T  # (N, K): the scale of each weight
    q = np.clip(np.rint(w / s_k) + zero, 0, qmax).astype(np.uint32)
    qw = np.zeros((K // per, N), np.uint32)
    for k in range(K):
        qw[k // per] |= q[:, k] << np.uint32(bits * (k % per))
    qz = np.zeros((ng, N // per), np.uint32)
    for n in range(N):
        qz[:, n // per] |= np.uint32(zero - 1) << np.uint32(bits * (n % per))
    return qw.view(np.int32), qz.view(np.int32), sc, (q.astype(np.float64) - zero) * s_k


def awq_pack(w, g):
    """AWQ gemm (zero_point true, 4 bits): w (N, K) -> (qweight int32 (K, N/8), qzeros int32
    (K/g, N/8), scales f16 (K/g, N), dequantized float64)."""
    N, K = w.shape
    ng = K // g
    wg = w.reshape(N, ng, g)
    lo, hi = wg.min(axis=2), wg.max(axis=2)
    sc = np.ascontiguousarray(((hi - lo) / 15.0).T.astype(np.float16))  # (ng, N), C order
    s = sc.astype(np.float64).T  # (N, ng)
    z = np.clip(np.rint(-lo / s), 0, 15).astype(np.uint32)  # (N, ng)
    q = np.clip(np.rint(wg / s[:, :, None]) + z[:, :, None], 0, 15).astype(np.uint32).reshape(N, K)
    deq = ((q.reshape(N, ng, g).astype(np.float64) - z[:, :, None]) * s[:, :, None]).reshape(N, K)
    qw = np.zeros((K, N // 8), np.uint32)
    qz = np.zeros((ng, N // 8), np.uint32)
    for p, col in enumerate(AWQ_ORDER):
        qw |= q.T[:, col::8] << np.uint32(4 * p)
        qz |= z.T[:, col::8] << np.uint32(4 * p)
    return qw.view(np.int32), qz.view(np.int32), sc, deq


def quantized_proj(t, name, w, kind, bits, g, g_idx):
    """Stores projection w (N, K) under name.* and returns its dequantized value."""
    if kind == "awq":
        qw, qz, sc, deq = awq_pack(w, g)
    else:
        qw, qz, sc, deq = gptq_pack(w, bits, g, g_idx)
        t[name + ".g_idx"] = g_idx.astype(np.int32)
    t[name + ".qweight"], t[name + ".qzeros"], t[name + ".scales"] = qw, qz, sc
    return deq


def hf_quantized(name, family, cfg, kind, bits, g, act_order, E, k, H, I, r, S=0, moe_path="mlp",
                 names=("gate_proj", "up_proj", "down_proj"), shared_name=None, shared_gate=False):
    """A one-layer checkpoint whose routed (and shared) experts are GPTQ or AWQ; router and shared
    gate stay f16 (the quantizers leave them), the reference uses the dequantized weights."""
    W = make_weights(E, H, I, S)
    if shared_gate:
        W["sh_gw"] = rng.standard_normal(H) / np.sqrt(H)
    p = "model.layers.0.%s." % moe_path
    t = {}
    t[p + "gate.weight"], W["gate"] = cast(W["gate"], "F16")

    def gidx(K):  # act order: a permutation of the groups' members, as desc_act checkpoints hold
        base = np.arange(K) // g
        return rng.permutation(base) if act_order else base

    gi_h, gi_i = gidx(H), gidx(I)
    for e in range(E):
        for key, pn, gi in (("w_gate", names[0], gi_h), ("w_up", names[1], gi_h),
                            ("w_down", names[2], gi_i)):
            W[key][e] = quantized_proj(t, p + "experts.%d.%s" % (e, pn), W[key][e], kind, bits, g, gi)
    if S:
        gi_s = gidx(S)
        for key, pn, gi in (("sh_gate", "gate_proj", gi_h), ("sh_up", "up_proj", gi_h),
                            ("sh_down", "down_proj", gi_s)):
            W[key] = quantized_proj(t, p + "%s.%s" % (shared_name, pn), W[key], kind, bits, g, gi)
    if shared_gate:
        st, W["sh_gw"] = cast(W["sh_gw"], "F16")
        t[p + "shared_expert_gate.weight"] = st.reshape(1, H)
    qc = {"quant_method": kind, "bits": bits, "group_size": g}
    qc.update({"zero_point": True, "version": "gemm"} if kind == "awq" else
              {"sym": True, "desc_act": act_order, "checkpoint_format": "gptq"})
    cfg = dict(cfg, quantization_config=qc)
    write_hf(name, cfg, t)
    inputs_and_ref(name, W, dict(r, aq="bf16", aq_sh="bf16") if bits == 4 else r, H)
    manifest(name, name, 0, 1e-9, family, E, k, 1, H)


def gen_quantized():
    E, k, H, I = 4, 2, 256, 128
    cfg = {"model_type": "qwen3_moe", "num_hidden_layers": 1, "hidden_size": H, "moe_intermediate_size": I,
           "num_experts": E, "num_experts_per_tok": k, "norm_topk_prob": True, "hidden_act": "silu"}
    hf_quantized("qwen3_moe_gptq4", "qwen3_moe", cfg, "gptq", 4, 64, True, E, k, H, I,
                 {"k": k, "scoring": "softmax", "renorm": True})
    cfg = {"model_type": "mixtral", "num_hidden_layers": 1, "hidden_size": H, "intermediate_size": I,
           "num_local_experts": E, "num_experts_per_tok": k, "hidden_act": "silu"}
    hf_quantized("mixtral_gptq8", "mixtral", cfg, "gptq", 8, 128, False, E, k, H, I,
                 {"k": k, "scoring": "softmax", "renorm": True}, moe_path="block_sparse_moe",
                 names=("w1", "w3", "w2"))
    S = 128
    cfg = {"model_type": "qwen2_moe", "num_hidden_layers": 1, "hidden_size": H, "moe_intermediate_size": I,
           "intermediate_size": 384, "shared_expert_intermediate_size": S, "num_experts": E,
           "num_experts_per_tok": k, "norm_topk_prob": False, "decoder_sparse_step": 1,
           "hidden_act": "silu"}
    hf_quantized("qwen2_moe_awq", "qwen2_moe", cfg, "awq", 4, 64, False, E, k, H, I,
                 {"k": k, "scoring": "softmax", "renorm": False}, S=S, shared_name="shared_expert",
                 shared_gate=True)


def gen_gpt_oss():
    E, k, H, I = 4, 2, 64, 32
    W = make_weights(E, H, I, wscale=1.5)  # large enough that the swiglu clamp at 7 engages
    W["gate_b"] = rng.standard_normal(E) * 0.1
    W["b_gate"] = rng.standard_normal((E, I)) * 0.5
    W["b_up"] = rng.standard_normal((E, I)) * 0.5
    W["b_down"] = rng.standard_normal((E, H)) * 0.1
    st = round_all(W, "F32")
    p = "model.layers.0.mlp."
    gate_up = np.zeros((E, H, 2 * I), np.float32)  # transformers: gate = [..., ::2], up = [..., 1::2]
    gate_up[:, :, 0::2] = st["w_gate"].transpose(0, 2, 1)
    gate_up[:, :, 1::2] = st["w_up"].transpose(0, 2, 1)
    gub = np.zeros((E, 2 * I), np.float32)
    gub[:, 0::2], gub[:, 1::2] = st["b_gate"], st["b_up"]
    t = {p + "router.weight": st["gate"], p + "router.bias": st["gate_b"],
         p + "experts.gate_up_proj": gate_up, p + "experts.gate_up_proj_bias": gub,
         p + "experts.down_proj": np.ascontiguousarray(st["w_down"].transpose(0, 2, 1)),
         p + "experts.down_proj_bias": st["b_down"]}
    cfg = {"model_type": "gpt_oss", "num_hidden_layers": 1, "hidden_size": H, "intermediate_size": I,
           "num_local_experts": E, "num_experts_per_tok": k, "swiglu_limit": 7.0}
    write_hf("gpt_oss", cfg, t)
    inputs_and_ref("gpt_oss", W, {"k": k, "scoring": "softmax_topk", "act": "swiglu"}, H)
    manifest("gpt_oss", "gpt_oss", 0, 1e-10, "gpt_oss", E, k, 1, H)


E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])


def mxfp4_random(rows, cols):
    """Random OCP MXFP4 (gpt-oss layout): blocks (rows, cols/32, 16), scales (rows, cols/32), value."""
    codes = rng.integers(0, 16, (rows, cols))
    scales = rng.integers(120, 125, (rows, cols // 32)).astype(np.uint8)
    blocks = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8).reshape(rows, cols // 32, 16)
    val = E2M1[codes] * np.repeat(2.0 ** (scales.astype(np.float64) - 127), 32, axis=1)
    return blocks, scales, val


def gen_gpt_oss_mxfp4():
    E, k, H, I = 4, 2, 64, 64
    W = {"gate": rng.standard_normal((E, H)) / np.sqrt(H)}
    st_gate, W["gate"] = cast(W["gate"], "BF16")
    W["gate_b"] = rng.standard_normal(E) * 0.1
    st_gb, W["gate_b"] = cast(W["gate_b"], "BF16")
    b13, s13 = np.zeros((E, 2 * I, H // 32, 16), np.uint8), np.zeros((E, 2 * I, H // 32), np.uint8)
    b2, s2 = np.zeros((E, H, I // 32, 16), np.uint8), np.zeros((E, H, I // 32), np.uint8)
    W["w_gate"], W["w_up"], W["w_down"] = np.zeros((E, I, H)), np.zeros((E, I, H)), np.zeros((E, H, I))
    for e in range(E):
        b13[e], s13[e], v = mxfp4_random(2 * I, H)
        W["w_gate"][e], W["w_up"][e] = v[0::2], v[1::2]  # rows interleaved: 2i gate, 2i+1 up
        b2[e], s2[e], W["w_down"][e] = mxfp4_random(H, I)
    W["b_gate"], W["b_up"] = rng.standard_normal((E, I)) * 0.5, rng.standard_normal((E, I)) * 0.5
    W["b_down"] = rng.standard_normal((E, H)) * 0.1
    gub = np.zeros((E, 2 * I))
    gub[:, 0::2], gub[:, 1::2] = W["b_gate"], W["b_up"]
    st_gub, gub = cast(gub, "BF16")
    W["b_gate"], W["b_up"] = gub[:, 0::2], gub[:, 1::2]
    st_bd, W["b_down"] = cast(W["b_down"], "BF16")
    p = "model.layers.0.mlp."
    t = {p + "router.weight": st_gate, p + "router.bias": st_gb,
         p + "experts.gate_up_proj_blocks": b13, p + "experts.gate_up_proj_scales": s13,
         p + "experts.down_proj_blocks": b2, p + "experts.down_proj_scales": s2,
         p + "experts.gate_up_proj_bias": st_gub, p + "experts.down_proj_bias": st_bd}
    cfg = {"model_type": "gpt_oss", "num_hidden_layers": 1, "hidden_size": H, "intermediate_size": I,
           "num_local_experts": E, "num_experts_per_tok": k, "swiglu_limit": 7.0,
           "quantization_config": {"quant_method": "mxfp4"}}
    write_hf("gpt_oss_mxfp4", cfg, t)
    inputs_and_ref("gpt_oss_mxfp4", W, {"k": k, "scoring": "softmax_topk", "act": "swiglu", "aq": "bf16"}, H)
    manifest("gpt_oss_mxfp4", "gpt_oss_mxfp4", 0, 1e-6, "gpt_oss", E, k, 1, H)


def gen_llama4():
    E, k, H, I = 4, 1, 64, 32
    W = make_weights(E, H, I, S=I)
    st = round_all(W, "F32")
    p = "language_model.model.layers.1.feed_forward."
    gate_up = np.concatenate([st["w_gate"].transpose(0, 2, 1), st["w_up"].transpose(0, 2, 1)], axis=2)
    t = {p + "router.weight": st["gate"], p + "experts.gate_up_proj": np.ascontiguousarray(gate_up),
         p + "experts.down_proj": np.ascontiguousarray(st["w_down"].transpose(0, 2, 1)),
         p + "shared_expert.gate_proj.weight": st["sh_gate"], p + "shared_expert.up_proj.weight": st["sh_up"],
         p + "shared_expert.down_proj.weight": st["sh_down"]}
    t.update(dense_mlp("language_model.model.layers.0.feed_forward.", H, 96, "F32"))
    cfg = {"model_type": "llama4", "text_config": {
        "model_type": "llama4_text", "num_hidden_layers": 2, "hidden_size": H, "intermediate_size": I,
        "intermediate_size_mlp": 96, "num_local_experts": E, "num_experts_per_tok": k,
        "interleave_moe_layer_step": 2, "hidden_act": "silu"}}
    write_hf("llama4", cfg, t)
    inputs_and_ref("llama4", W, {"k": k, "scoring": "llama4"}, H)
    manifest("llama4", "llama4", 1, 1e-10, "llama4", E, k, 1, H)


# ----- GGUF -----

def random_kquant(shape, q):
    """Random Q4_K / Q6_K blocks with small positive f16 scales (the uint8 rows gguf-py writes)."""
    rows = int(np.prod(shape[:-1]))
    nb = shape[-1] // 256
    size = 144 if q == QT.Q4_K else 210
    b = rng.integers(0, 256, (rows, nb, size), dtype=np.uint8)
    if q == QT.Q4_K:  # d, dmin at bytes 0..3
        b[:, :, 0:2] = rng.uniform(0.001, 0.004, (rows, nb)).astype(np.float16).view(np.uint8).reshape(rows, nb, 2)
        b[:, :, 2:4] = rng.uniform(0.001, 0.01, (rows, nb)).astype(np.float16).view(np.uint8).reshape(rows, nb, 2)
    else:  # d at bytes 208..209
        b[:, :, 208:210] = rng.uniform(0.0005, 0.002, (rows, nb)).astype(np.float16).view(np.uint8).reshape(rows, nb, 2)
    return b.reshape(tuple(shape[:-1]) + (nb * size,))


def gguf_model(name, arch, family, W, r, E, k, H, I, layers=1, moe_layer=0, kv=None, qtype=None, S=0,
               fused=False, tol=1e-10, extra=None, legacy=False, qdown="same", sh_q=(None, None)):
    """qdown: the type of ffn_down_exps when it differs from qtype (Q4_K_M stores down in
    Q6_K); sh_q: the types of the shared expert's gate/up and down (None = F32)."""
    qdown = qtype if qdown == "same" else qdown
    path = os.path.join(OUT, name + ".gguf")
    w = gguf.GGUFWriter(path, arch)
    w.add_uint32(arch + ".block_count", layers)
    w.add_uint32(arch + ".embedding_length", H)
    w.add_uint32(arch + ".expert_count", E)
    w.add_uint32(arch + ".expert_used_count", k)
    w.add_uint32(arch + ".expert_feed_forward_length", I)
    for key, (kind, v) in (kv or {}).items():
        getattr(w, "add_" + kind)(arch + "." + key, v)
    b = "blk.%d." % moe_layer

    def add(n, a, q=None):
        if q in (QT.Q4_K, QT.Q6_K):  # no quantizer in gguf-py: random valid blocks
            data = random_kquant(a.shape, q)
            w.add_tensor(n, data, raw_shape=data.shape, raw_dtype=q)
            return gguf.quants.dequantize(data, q).astype(np.float64).reshape(a.shape)
        if q is None:
            w.add_tensor(n, np.ascontiguousarray(a, dtype=np.float32))
            return a.astype(np.float32).astype(np.float64)
        data = gguf.quants.quantize(np.ascontiguousarray(a, dtype=np.float32), q)
        w.add_tensor(n, data, raw_shape=data.shape, raw_dtype=q)
        return gguf.quants.dequantize(data, q).astype(np.float64).reshape(a.shape)

    W["gate"] = add(b + "ffn_gate_inp.weight", W["gate"])
    if legacy:  # pre-merge files: one 2-D tensor per expert and projection
        for e in range(E):
            W["w_gate"][e] = add(b + "ffn_gate.%d.weight" % e, W["w_gate"][e])
            W["w_up"][e] = add(b + "ffn_up.%d.weight" % e, W["w_up"][e])
            W["w_down"][e] = add(b + "ffn_down.%d.weight" % e, W["w_down"][e])
    elif fused:
        gu = add(b + "ffn_gate_up_exps.weight", np.concatenate([W["w_gate"], W["w_up"]], axis=1), qtype)
        W["w_gate"], W["w_up"] = gu[:, :I], gu[:, I:]
    else:
        W["w_gate"] = add(b + "ffn_gate_exps.weight", W["w_gate"], qtype)
        W["w_up"] = add(b + "ffn_up_exps.weight", W["w_up"], qtype)
    if not legacy:
        W["w_down"] = add(b + "ffn_down_exps.weight", W["w_down"], qdown)
    if S:
        W["sh_gate"] = add(b + "ffn_gate_shexp.weight", W["sh_gate"], sh_q[0])
        W["sh_up"] = add(b + "ffn_up_shexp.weight", W["sh_up"], sh_q[0])
        W["sh_down"] = add(b + "ffn_down_shexp.weight", W["sh_down"], sh_q[1])
    if W.get("sh_gw") is not None:
        W["sh_gw"] = add(b + "ffn_gate_inp_shexp.weight", W["sh_gw"])
    if W.get("corr") is not None:
        W["corr"] = add(b + "exp_probs_b.bias", W["corr"])
        r["bias"] = W["corr"]
    if W.get("gate_b") is not None:
        W["gate_b"] = add(b + "ffn_gate_inp.bias", W["gate_b"])
        W["b_gate"] = add(b + "ffn_gate_exps.bias", W["b_gate"])
        W["b_up"] = add(b + "ffn_up_exps.bias", W["b_up"])
        W["b_down"] = add(b + "ffn_down_exps.bias", W["b_down"])
    for L in range(layers):
        if L != moe_layer:  # a dense layer (no ffn_gate_inp)
            add("blk.%d.ffn_up.weight" % L, rng.standard_normal((96, H)) * 0.1)
    add("output_norm.weight", np.ones(H))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    inputs_and_ref(name, W, r, H)
    manifest(name, name + ".gguf", moe_layer, tol, family, E, k, 1, H)


def gen_gguf():
    E, k, H, I, S = 4, 2, 64, 32, 48
    W = make_weights(E, H, I, S)
    W["sh_gw"] = rng.standard_normal(H) / np.sqrt(H)
    gguf_model("qwen2moe_gguf", "qwen2moe", "qwen2_moe", W, {"k": k, "scoring": "softmax", "renorm": False},
               E, k, H, I, S=S, kv={"expert_shared_feed_forward_length": ("uint32", S)})
    W = make_weights(8, H, I, 2 * I)
    W["corr"] = rng.standard_normal(8) * 0.05
    gguf_model("deepseek2_gguf", "deepseek2", "deepseek_v3", W,
               {"k": k, "scoring": "sigmoid", "renorm": True, "n_group": 4, "topk_group": 2, "rsf": 2.5},
               8, k, H, I, layers=2, moe_layer=1, S=2 * I,
               kv={"expert_shared_count": ("uint32", 2), "expert_gating_func": ("uint32", 2),
                   "expert_weights_norm": ("bool", True), "expert_weights_scale": ("float32", 2.5),
                   "expert_group_count": ("uint32", 4), "expert_group_used_count": ("uint32", 2),
                   "leading_dense_block_count": ("uint32", 1)})
    W = make_weights(E, H, I, wscale=1.5)
    W["gate_b"] = rng.standard_normal(E) * 0.1
    W["b_gate"], W["b_up"] = rng.standard_normal((E, I)) * 0.5, rng.standard_normal((E, I)) * 0.5
    W["b_down"] = rng.standard_normal((E, H)) * 0.1
    gguf_model("gpt_oss_gguf", "gpt-oss", "gpt_oss", W, {"k": k, "scoring": "softmax_topk", "act": "swiglu"},
               E, k, H, I)
    W = make_weights(E, H, 64)
    gguf_model("mixtral_q8_0_gguf", "llama", "mixtral", W,
               {"k": k, "scoring": "softmax", "renorm": True, "aq": "q8_0"}, E, k, H, 64, qtype=QT.Q8_0, tol=1e-6)
    W = make_weights(E, H, 64)
    gguf_model("qwen3moe_q4_0_gguf", "qwen3moe", "qwen3_moe", W,
               {"k": k, "scoring": "softmax", "renorm": True, "aq": "q8_0"}, E, k, H, 64, qtype=QT.Q4_0, tol=1e-6)
    W = make_weights(E, 256, 256)
    gguf_model("qwen3moe_q4_k_gguf", "qwen3moe", "qwen3_moe", W,
               {"k": k, "scoring": "softmax", "renorm": True, "aq": "q8_k"}, E, k, 256, 256, qtype=QT.Q4_K, tol=1e-6)
    W = make_weights(E, 256, 256)
    gguf_model("olmoe_q6_k_gguf", "olmoe", "olmoe", W,
               {"k": k, "scoring": "softmax", "renorm": False, "aq": "q8_k"}, E, k, 256, 256, qtype=QT.Q6_K, tol=1e-6)
    W = make_weights(E, 256, 64)
    W["gate_b"] = rng.standard_normal(E) * 0.1
    W["b_gate"], W["b_up"] = rng.standard_normal((E, 64)) * 0.5, rng.standard_normal((E, 64)) * 0.5
    W["b_down"] = rng.standard_normal((E, 256)) * 0.1
    gguf_model("gpt_oss_mxfp4_gguf", "gpt-oss", "gpt_oss", W,
               {"k": k, "scoring": "softmax_topk", "act": "swiglu", "aq": "q8_0"}, E, k, 256, 64, qtype=QT.MXFP4,
               tol=1e-6)
    W = make_weights(E, H, I)
    gguf_model("mixtral_legacy_gguf", "llama", "mixtral", W, {"k": k, "scoring": "softmax", "renorm": True},
               E, k, H, I, legacy=True)
    W = make_weights(E, H, I)
    gguf_model("olmoe_fused_gguf", "olmoe", "olmoe", W, {"k": k, "scoring": "softmax", "renorm": False},
               E, k, H, I, fused=True)
    W = make_weights(E, H, I, S=I)
    gguf_model("llama4_gguf", "llama4", "llama4", W, {"k": 1, "scoring": "llama4"}, E, 1, H, I, S=I,
               kv={"expert_shared_count": ("uint32", 1)})
    # Mixed types in one layer, as llama.cpp's Q4_K_M writes them: gate/up Q4_K, down Q6_K;
    # then with a shared expert whose gate/up (Q8_0) and down (F32) differ as well.
    W = make_weights(E, 256, 256)
    gguf_model("qwen3moe_q4_k_m_gguf", "qwen3moe", "qwen3_moe", W,
               {"k": k, "scoring": "softmax", "renorm": True, "aq": "q8_k"}, E, k, 256, 256, qtype=QT.Q4_K,
               qdown=QT.Q6_K, tol=1e-6)
    W = make_weights(E, 256, 256, S=64)
    W["sh_gw"] = rng.standard_normal(256) / np.sqrt(256)
    gguf_model("qwen2moe_mixed_gguf", "qwen2moe", "qwen2_moe", W,
               {"k": k, "scoring": "softmax", "renorm": False, "aq": "q8_k", "aq_sh": ("q8_0", None)},
               E, k, 256, 256, qtype=QT.Q4_K, qdown=QT.Q6_K, S=64, sh_q=(QT.Q8_0, None), tol=1e-6,
               kv={"expert_shared_feed_forward_length": ("uint32", 64)})


def main():
    os.makedirs(OUT, exist_ok=True)
    gen_hf()
    gen_gguf()
    with open(os.path.join(OUT, "MANIFEST"), "w") as f:
        f.write("# name path layer nmse_tol family n_experts top_k n_moe_layers d_model\n")
        f.write("\n".join(MANIFEST) + "\n")
    print("  %d models in %s" % (len(MANIFEST), OUT))


if __name__ == "__main__":
    main()
