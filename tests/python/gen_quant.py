#!/usr/bin/env python3
"""gen_quant.py OUTDIR - golden data for the quantized formats (tests/test-quant.c).

Expected values come from implementations nobody on this project wrote:
ml_dtypes (float8_e4m3fn, float4_e2m1fn, float8_e8m0fnu) and llama.cpp's gguf
package (gguf.quants.dequantize / quantize). Inputs are arbitrary bytes, so
NaN/Inf scales, subnormals and 0xFF exponents are all exercised.

File format (little-endian), one file per case, quant_<case>.bin:
    char[8] magic "MOEQTD01"
    u64 n_in          bytes of input
    u64 n_items       number of items (blocks, or values for conversions)
    u64 n_vals        f32 values per item
    u64 n_full        items whose expected values are stored in full
    u8  in[n_in]
    u64 hash[n_items] FNV-1a 64 of each item's expected f32 bit patterns, NaN
                      canonicalized to 0x7fc00000 (NaN compares as a class)
    f32 full[n_full * n_vals] the first n_full items' values, for diagnostics
Hashes keep 10^5 K-quant blocks at a few MB instead of 100 MB of floats.
"""
import os
import struct
import sys

import ml_dtypes
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

N_BLOCKS = 100_000
N_FULL = 256
FNV_OFF = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)


def item_hashes(vals):
    """vals (n_items, n_vals) f32 -> FNV-1a 64 over each row's 4-byte words (bytewise)."""
    bits = vals.astype(np.float32).view(np.uint32).copy()
    bits[np.isnan(vals)] = 0x7FC00000
    b = bits.view(np.uint8).reshape(vals.shape[0], -1)
    h = np.full(vals.shape[0], FNV_OFF, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(b.shape[1]):
            h = (h ^ b[:, j].astype(np.uint64)) * FNV_PRIME
    return h


def write_case(outdir, name, inp, vals):
    inp = np.ascontiguousarray(inp).view(np.uint8).reshape(-1)
    vals = np.ascontiguousarray(vals, dtype=np.float32)
    n_items, n_vals = vals.shape
    n_full = min(N_FULL, n_items)
    with open(os.path.join(outdir, f"quant_{name}.bin"), "wb") as f:
        f.write(b"MOEQTD01")
        f.write(struct.pack("<4Q", inp.size, n_items, n_vals, n_full))
        f.write(inp.tobytes())
        f.write(item_hashes(vals).astype("<u8").tobytes())
        f.write(vals[:n_full].astype("<f4").tobytes())


def random_bytes(rng, n):
    return rng.integers(0, 256, size=n, dtype=np.uint8)


def gen_conversions(outdir, rng):
    # Every e4m3fn / e8m0 code and every e2m1 code, decoded by ml_dtypes.
    codes = np.arange(256, dtype=np.uint8)
    write_case(outdir, "e4m3_decode", codes, codes.view(ml_dtypes.float8_e4m3fn).astype(np.float32)[:, None])
    write_case(outdir, "e8m0_decode", codes, codes.view(ml_dtypes.float8_e8m0fnu).astype(np.float32)[:, None])
    c16 = np.arange(16, dtype=np.uint8)
    write_case(outdir, "e2m1_decode", c16, c16.view(ml_dtypes.float4_e2m1fn).astype(np.float32)[:, None])

    # f32 -> e4m3fn: random bit patterns with |x| <= 464 (beyond it ml_dtypes
    # gives NaN where we saturate to 448, tested separately in C), every
    # rounding midpoint between neighbouring codes, and subnormals.
    bits = rng.integers(0, 2**32, size=4 * N_BLOCKS, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = x[np.isfinite(x) & (np.abs(x) <= 464)][: N_BLOCKS // 2]
    vals = codes.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    pos = np.sort(vals[np.isfinite(vals) & (vals >= 0)])
    mids = ((pos[1:].astype(np.float64) + pos[:-1]) / 2).astype(np.float32)
    small = rng.uniform(-2.0**-5, 2.0**-5, size=N_BLOCKS // 4).astype(np.float32)
    wide = (rng.standard_normal(N_BLOCKS // 4) * 50).astype(np.float32)
    x = np.concatenate([x, mids, -mids, small, wide, np.float32([0, -0.0, 448, -448, 464, -464])])
    x = x[np.abs(x) <= 464]
    write_case(outdir, "e4m3_encode", x, x.astype(ml_dtypes.float8_e4m3fn).astype(np.float32)[:, None])

    # f32 -> e2m1 (ml_dtypes saturates at +-6 as we do; NaN excluded: e2m1 has none).
    v2 = np.float32([0, 0.5, 1, 1.5, 2, 3, 4, 6])
    mids2 = (v2[1:] + v2[:-1]) / 2
    y = np.concatenate([rng.uniform(-8, 8, size=N_BLOCKS).astype(np.float32), mids2, -mids2,
                        np.float32([0, -0.0, 6, 7, 100, -100, np.inf, -np.inf])])
    write_case(outdir, "e2m1_encode", y, y.astype(ml_dtypes.float4_e2m1fn).astype(np.float32)[:, None])


def gen_mxfp4(outdir, rng):
    # OCP MXFP4 block = 16 data bytes then 1 e8m0 byte (our test's packing);
    # element 2j is the low nibble of byte j.
    raw = random_bytes(rng, N_BLOCKS * 17).reshape(N_BLOCKS, 17)
    q, e = raw[:, :16], raw[:, 16]
    codes = np.stack([q & 15, q >> 4], axis=-1).reshape(N_BLOCKS, 32)
    v = codes.view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    s = e.view(ml_dtypes.float8_e8m0fnu).astype(np.float32)[:, None]
    with np.errstate(over="ignore"):
        out = v * s
    write_case(outdir, "mxfp4", raw, out)


def gen_nvfp4(outdir, rng):
    # NVFP4 block = 8 data bytes, 1 e4m3 scale byte, then an f32 global scale
    # (random positive normal numbers); w = (e2m1 * e4m3) * scale2.
    raw = random_bytes(rng, N_BLOCKS * 9).reshape(N_BLOCKS, 9)
    g = np.exp2(rng.uniform(-20, 20, size=N_BLOCKS)).astype(np.float32)
    q, sc = raw[:, :8], raw[:, 8]
    codes = np.stack([q & 15, q >> 4], axis=-1).reshape(N_BLOCKS, 16)
    v = codes.view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    s = sc.view(ml_dtypes.float8_e4m3fn).astype(np.float32)[:, None]
    out = (v * s) * g[:, None]
    inp = np.concatenate([raw, g.view(np.uint8).reshape(N_BLOCKS, 4)], axis=1)
    write_case(outdir, "nvfp4", inp, out)


def gen_gguf(outdir, rng):
    for name, qt in [("q8_0", T.Q8_0), ("q4_0", T.Q4_0), ("q4_k", T.Q4_K), ("q6_k", T.Q6_K),
                     ("gguf_mxfp4", T.MXFP4)]:
        block_elems, block_bytes = quants.GGML_QUANT_SIZES[qt]
        raw = random_bytes(rng, N_BLOCKS * block_bytes).reshape(N_BLOCKS, block_bytes)
        with np.errstate(all="ignore"):
            out = quants.dequantize(raw, qt).reshape(N_BLOCKS, block_elems)
        write_case(outdir, name, raw, out)

    # gguf's quantizers for Q8_0 and Q4_0 claim bit-exactness with ggml's
    # reference; our quantize_ref must produce the same bytes. Expected
    # values here are the dequantized result of gguf's blocks (so the hash
    # covers the bytes' meaning), input the f32 source.
    for name, qt in [("q8_0_quant", T.Q8_0), ("q4_0_quant", T.Q4_0)]:
        x = (rng.standard_normal((N_BLOCKS // 10, 32)) * np.exp2(rng.uniform(-10, 10, (N_BLOCKS // 10, 1))))
        x = x.astype(np.float32)
        x[::97] = 0  # all-zero blocks
        q = quants.quantize(x, qt)
        write_case(outdir, name, x, q.view(np.uint8).astype(np.float32))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: gen_quant.py OUTDIR")
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    rng = np.random.default_rng(20261128)
    gen_conversions(outdir, rng)
    gen_mxfp4(outdir, rng)
    gen_nvfp4(outdir, rng)
    gen_gguf(outdir, rng)


if __name__ == "__main__":
    main()
