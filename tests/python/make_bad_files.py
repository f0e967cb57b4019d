#!/usr/bin/env python3
"""make_bad_files.py - writes the malformed-file corpus tests/data/bad/ and its MANIFEST.

Every case is built byte by byte here (struct, json), so each malformation is
exactly one change from a valid file. MANIFEST lines are

    NAME  MOE_ERR_CODE  why

NAME is a file (.safetensors, .gguf, .npy: opened with moe_model_open or
moe_npy_read) or a directory ending in .d (a Hugging Face checkpoint opened
with moe_model_open). tests/test-io-bad.c asserts each exact code.

usage: make_bad_files.py [OUTDIR]   (default: tests/data/bad next to this script)
"""
import json
import os
import shutil
import struct
import sys

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "data", "bad")
CASES = []


def add(name, code, why, data=None, files=None):
    """Registers a case: data = bytes of a file, files = {name: bytes} of a directory."""
    path = os.path.join(OUT, name)
    if files is not None:
        os.makedirs(path, exist_ok=True)
        for fn, b in files.items():
            with open(os.path.join(path, fn), "wb") as f:
                f.write(b)
    else:
        with open(path, "wb") as f:
            f.write(data)
    CASES.append((name, code, why))


# ----- safetensors -----

def st_raw(header_bytes, data=b"", n=None):
    return struct.pack("<Q", len(header_bytes) if n is None else n) + header_bytes + data


def st_json(obj, data=b"", pad=True):
    h = json.dumps(obj, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    return st_raw(h, data)


SIZES = {"F32": 4, "BF16": 2, "F16": 2, "I32": 4, "U8": 1, "F8_E4M3": 1}


def st_file(tensors):
    """tensors: list of (name, dtype, shape, bytes) -> a valid safetensors file."""
    hdr, data = {}, b""
    for name, dt, shape, b in tensors:
        hdr[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    return st_json(hdr, data)


def t(dt, shape, fill=1):
    n = 1
    for d in shape:
        n *= d
    return bytes([fill]) * (n * SIZES[dt]) if dt not in ("F32",) else struct.pack("<%df" % n, *([0.01 * fill] * n))


def tensor_entry(dt="F32", shape=(2,), off=(0, 8)):
    return {"dtype": dt, "shape": list(shape), "data_offsets": list(off)}


def safetensors_cases():
    ok8 = b"\0" * 8
    add("st_empty.safetensors", "MOE_ERR_TRUNCATED", "0 bytes: no header length", b"")
    add("st_short_length.safetensors", "MOE_ERR_TRUNCATED", "5 bytes: header length cut", b"\x10\0\0\0\0")
    add("st_header_too_large.safetensors", "MOE_ERR_LIMIT", "N = 100,000,001 > the 100 MB cap",
        struct.pack("<Q", 100000001) + b"{}")
    add("st_header_u64_max.safetensors", "MOE_ERR_LIMIT", "N = 2^64-1 (8 + N wraps)",
        struct.pack("<Q", 2**64 - 1) + b"{}")
    add("st_header_past_eof.safetensors", "MOE_ERR_TRUNCATED", "N = 1000 but 10 header bytes",
        st_raw(b'{"a":1}   ', n=1000))
    add("st_header_zero.safetensors", "MOE_ERR_JSON", "N = 0: empty JSON", st_raw(b""))
    add("st_not_json.safetensors", "MOE_ERR_JSON", "header is not JSON", st_raw(b"hello!!!"))
    add("st_bad_utf8.safetensors", "MOE_ERR_JSON", "0xFF byte in a key", st_raw(b'{"a\xff":1}  '))
    add("st_overlong_utf8.safetensors", "MOE_ERR_JSON", "overlong UTF-8 for '/'", st_raw(b'{"a\xc0\xaf":1}'))
    add("st_lone_surrogate.safetensors", "MOE_ERR_JSON", "\\ud800 without a low half",
        st_raw(b'{"\\ud800x":1}   '))
    add("st_trailing_comma.safetensors", "MOE_ERR_JSON", "trailing comma in the object", st_raw(b'{"a":"b",}'))
    add("st_unterminated.safetensors", "MOE_ERR_JSON", "string never closed", st_raw(b'{"abc'))
    add("st_raw_control.safetensors", "MOE_ERR_JSON", "raw 0x01 inside a string", st_raw(b'{"a\x01":"b"}'))
    add("st_nan_literal.safetensors", "MOE_ERR_JSON", "NaN is not JSON",
        st_raw(b'{"t":{"dtype":"F32","shape":[NaN],"data_offsets":[0,0]}}'))
    add("st_leading_zero.safetensors", "MOE_ERR_JSON", "number 01",
        st_raw(b'{"t":{"dtype":"F32","shape":[01],"data_offsets":[0,4]}}', b"\0" * 4))
    add("st_two_values.safetensors", "MOE_ERR_JSON", "a second value after the object", st_raw(b'{} {}   '))
    add("st_deep_nesting.safetensors", "MOE_ERR_LIMIT", "arrays nested 100 deep (limit 64)",
        st_raw(b'{"a":' + b"[" * 100 + b"]" * 100 + b"}"))
    add("st_root_array.safetensors", "MOE_ERR_FORMAT", "header is an array", st_raw(b"[]      "))
    add("st_dup_tensor.safetensors", "MOE_ERR_DUPLICATE", "tensor name twice",
        st_raw(b'{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
               b'"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', ok8))
    add("st_dup_field.safetensors", "MOE_ERR_DUPLICATE", "dtype twice in one entry",
        st_raw(b'{"t":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}', ok8))
    add("st_metadata_int.safetensors", "MOE_ERR_FORMAT", "__metadata__ value is a number",
        st_json({"__metadata__": {"format": 1}}))
    add("st_metadata_str.safetensors", "MOE_ERR_FORMAT", "__metadata__ is a string",
        st_json({"__metadata__": "pt"}))
    add("st_entry_number.safetensors", "MOE_ERR_FORMAT", "tensor entry is a number", st_json({"t": 5}))
    add("st_missing_dtype.safetensors", "MOE_ERR_MISSING", "entry without dtype",
        st_json({"t": {"shape": [2], "data_offsets": [0, 8]}}, ok8))
    add("st_missing_shape.safetensors", "MOE_ERR_MISSING", "entry without shape",
        st_json({"t": {"dtype": "F32", "data_offsets": [0, 8]}}, ok8))
    add("st_missing_offsets.safetensors", "MOE_ERR_MISSING", "entry without data_offsets",
        st_json({"t": {"dtype": "F32", "shape": [2]}}, ok8))
    add("st_unknown_field.safetensors", "MOE_ERR_FORMAT", "entry with an extra field",
        st_json({"t": dict(tensor_entry(), extra=1)}, ok8))
    add("st_unknown_dtype.safetensors", "MOE_ERR_DTYPE", "dtype F128",
        st_json({"t": tensor_entry("F128")}, ok8))
    add("st_dtype_lowercase.safetensors", "MOE_ERR_DTYPE", "dtype f32 (case matters)",
        st_json({"t": tensor_entry("f32")}, ok8))
    add("st_dtype_number.safetensors", "MOE_ERR_FORMAT", "dtype is a number",
        st_json({"t": {"dtype": 4, "shape": [2], "data_offsets": [0, 8]}}, ok8))
    add("st_shape_negative.safetensors", "MOE_ERR_FORMAT", "shape [-1]",
        st_json({"t": tensor_entry(shape=(-1,))}, ok8))
    add("st_shape_float.safetensors", "MOE_ERR_FORMAT", "shape [2.0]",
        st_raw(b'{"t":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}', ok8))
    add("st_shape_2_64.safetensors", "MOE_ERR_OVERFLOW", "shape [2^64] does not fit u64",
        st_raw(b'{"t":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,8]}}', ok8))
    add("st_shape_string.safetensors", "MOE_ERR_FORMAT", "shape is a string",
        st_json({"t": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, ok8))
    add("st_shape_9_dims.safetensors", "MOE_ERR_LIMIT", "9 dimensions (limit 8)",
        st_json({"t": tensor_entry(shape=(1,) * 9, off=(0, 4))}, b"\0" * 4))
    add("st_offsets_three.safetensors", "MOE_ERR_FORMAT", "data_offsets with 3 values",
        st_json({"t": tensor_entry(off=(0, 4, 8))}, ok8))
    add("st_offsets_negative.safetensors", "MOE_ERR_FORMAT", "data_offsets [-8, 0]",
        st_json({"t": tensor_entry(off=(-8, 0))}, ok8))
    add("st_elems_overflow.safetensors", "MOE_ERR_OVERFLOW", "shape product 2^65",
        st_json({"t": tensor_entry(shape=(2**32, 2**32, 2))}, ok8))
    add("st_bytes_overflow.safetensors", "MOE_ERR_OVERFLOW", "2^62 F32 elements = 2^67 bits",
        st_json({"t": tensor_entry(shape=(2**62,))}, ok8))
    add("st_f4_odd.safetensors", "MOE_ERR_ALIGNMENT", "3 F4 values = 12 bits, not whole bytes",
        st_json({"t": tensor_entry("F4", (3,), (0, 2))}, b"\0\0"))
    add("st_end_before_begin.safetensors", "MOE_ERR_OVERLAP", "data_offsets [8, 0]",
        st_json({"t": tensor_entry(off=(8, 0))}, ok8))
    add("st_end_past_eof.safetensors", "MOE_ERR_TRUNCATED", "END 1000 with 8 data bytes",
        st_json({"t": tensor_entry(shape=(250,), off=(0, 1000))}, ok8))
    add("st_size_mismatch.safetensors", "MOE_ERR_SHAPE", "2 F32 need 8 bytes, offsets give 12",
        st_json({"t": tensor_entry(off=(0, 12))}, b"\0" * 12))
    add("st_overlap.safetensors", "MOE_ERR_OVERLAP", "tensors [0,8) and [4,12)",
        st_json({"a": tensor_entry(off=(0, 8)), "b": tensor_entry(off=(4, 12))}, b"\0" * 12))
    add("st_alias.safetensors", "MOE_ERR_OVERLAP", "two tensors on the same bytes",
        st_json({"a": tensor_entry(off=(0, 8)), "b": tensor_entry(off=(0, 8))}, ok8))
    add("st_gap.safetensors", "MOE_ERR_OVERLAP", "4 unused bytes between tensors",
        st_json({"a": tensor_entry(off=(0, 8)), "b": tensor_entry(off=(12, 20))}, b"\0" * 20))
    add("st_first_not_zero.safetensors", "MOE_ERR_OVERLAP", "first tensor starts at 4",
        st_json({"a": tensor_entry(off=(4, 12))}, b"\0" * 12))
    add("st_trailing_bytes.safetensors", "MOE_ERR_OVERLAP", "4 bytes after the last tensor (polyglot)",
        st_json({"a": tensor_entry()}, b"\0" * 12))
    add("st_name_empty.safetensors", "MOE_ERR_NAME", "tensor name \"\"", st_json({"": tensor_entry()}, ok8))
    add("st_name_nul.safetensors", "MOE_ERR_NAME", "tensor name with \\u0000",
        st_json({"a\u0000b": tensor_entry()}, ok8))
    add("st_name_newline.safetensors", "MOE_ERR_NAME", "tensor name with a newline",
        st_json({"a\nb": tensor_entry()}, ok8))
    add("st_name_too_long.safetensors", "MOE_ERR_NAME", "tensor name of 300 bytes (limit 255)",
        st_json({"x" * 300: tensor_entry()}, ok8))


# ----- GGUF -----

def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)


def kv(key, typ, val):
    """val is already-encoded bytes of the value."""
    return gstr(key) + struct.pack("<I", typ) + val


def kv_u32(key, v):
    return kv(key, U32, struct.pack("<I", v))


def kv_str(key, v):
    return kv(key, STR, gstr(v))


def tinfo(name, ne, typ, off):
    return gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne) + \
        struct.pack("<II", typ, 0)[:4] + struct.pack("<Q", off)


def gguf(kvs=(), tensors=(), data=b"", version=3, n_t=None, n_kv=None, align=32, magic=b"GGUF", pad=True):
    h = magic + struct.pack("<IQQ", version, len(tensors) if n_t is None else n_t,
                            len(kvs) if n_kv is None else n_kv)
    h += b"".join(kvs) + b"".join(tensors)
    if pad:
        h += b"\0" * ((align - len(h) % align) % align)
    return h + data


def moe_gguf(arch="qwen3moe", E=2, k=1, H=32, I=32, extra_kv=(), drop=(), shapes=None, n_used=None,
             extra_tensors=(), types=None):
    """A small valid one-layer MoE GGUF (F32), with optional changes: extra
    tensors (name, ne) and ggml types per tensor name (Q8_0 = 8)."""
    kvs = [kv_str("general.architecture", arch), kv_u32(arch + ".block_count", 1),
           kv_u32(arch + ".embedding_length", H), kv_u32(arch + ".expert_count", E),
           kv_u32(arch + ".expert_used_count", k if n_used is None else n_used),
           kv_u32(arch + ".expert_feed_forward_length", I)] + list(extra_kv)
    ts = [("blk.0.ffn_gate_inp.weight", [H, E]), ("blk.0.ffn_gate_exps.weight", [H, I, E]),
          ("blk.0.ffn_up_exps.weight", [H, I, E]), ("blk.0.ffn_down_exps.weight", [I, H, E])]
    if shapes:
        ts = [(n, shapes.get(n, ne)) for n, ne in ts]
    ts = [x for x in ts if x[0] not in drop] + list(extra_tensors)
    infos, data, off = [], b"", 0
    for name, ne in ts:
        n = 1
        for d in ne:
            n *= d
        typ = (types or {}).get(name, 0)
        infos.append(tinfo(name, ne, typ, off))
        b = b"\0" * (4 * n if typ == 0 else n // 32 * 34)
        b += b"\0" * ((32 - len(b) % 32) % 32)
        data += b
        off += len(b)
    return gguf(kvs, infos, data)


def gguf_cases():
    one = [tinfo("t", [4], 0, 0)]
    d16 = b"\0" * 32
    add("gg_bad_magic.gguf", "MOE_ERR_MAGIC", "magic GGUX", gguf(magic=b"GGUX"))
    add("gg_version_0.gguf", "MOE_ERR_MAGIC", "version 0", gguf(version=0))
    add("gg_version_1.gguf", "MOE_ERR_MAGIC", "version 1 (no longer read)", gguf(version=1))
    add("gg_version_4.gguf", "MOE_ERR_MAGIC", "future version 4", gguf(version=4))
    add("gg_byteswapped.gguf", "MOE_ERR_MAGIC", "big-endian file (version 3 << 24)", gguf(version=3 << 24))
    add("gg_truncated_header.gguf", "MOE_ERR_TRUNCATED", "file ends inside the counts", b"GGUF\3\0\0\0\0\0")
    add("gg_tensors_2_60.gguf", "MOE_ERR_LIMIT", "declares 2^60 tensors", gguf(n_t=2**60))
    add("gg_kv_2_40.gguf", "MOE_ERR_LIMIT", "declares 2^40 pairs", gguf(n_kv=2**40))
    add("gg_kv_exceeds_bytes.gguf", "MOE_ERR_TRUNCATED", "50,000 pairs cannot fit in 40 bytes",
        gguf(n_kv=50000) + b"\0" * 16)
    add("gg_tensors_exceed_bytes.gguf", "MOE_ERR_TRUNCATED", "1,000,000 tensors in 64 bytes",
        gguf(n_t=1000000) + b"\0" * 32)
    add("gg_key_len_huge.gguf", "MOE_ERR_TRUNCATED", "key length 2^63",
        gguf([struct.pack("<Q", 2**63) + b"ab" + bytes(16)], pad=False))
    add("gg_key_empty.gguf", "MOE_ERR_NAME", "empty key", gguf([kv_u32("", 1)]))
    add("gg_key_control.gguf", "MOE_ERR_NAME", "key with a 0x07 byte", gguf([kv_u32("a\x07b", 1)]))
    add("gg_key_bad_utf8.gguf", "MOE_ERR_NAME", "key with byte 0xFF", gguf([kv(b"ab\xff", U32, b"\1\0\0\0")]))
    add("gg_dup_key.gguf", "MOE_ERR_DUPLICATE", "a.b twice", gguf([kv_u32("a.b", 1), kv_u32("a.b", 2)]))
    add("gg_bad_value_type.gguf", "MOE_ERR_DTYPE", "value type 13", gguf([kv("a", 13, b"\0" * 8)]))
    add("gg_bad_array_type.gguf", "MOE_ERR_DTYPE", "array of type 99",
        gguf([kv("a", ARR, struct.pack("<IQ", 99, 1) + b"\0" * 8)]))
    add("gg_bool_2.gguf", "MOE_ERR_FORMAT", "bool value 2", gguf([kv("a", BOOL, b"\2")]))
    add("gg_string_huge.gguf", "MOE_ERR_TRUNCATED", "string length 2^62",
        gguf([kv("a", STR, struct.pack("<Q", 2**62) + b"xy")], pad=False))
    add("gg_array_over_limit.gguf", "MOE_ERR_LIMIT", "array of 2^25 u8 (limit 2^24)",
        gguf([kv("a", ARR, struct.pack("<IQ", U8, 2**25))]))
    add("gg_array_truncated.gguf", "MOE_ERR_TRUNCATED", "1000 u32 declared, 8 bytes present",
        gguf([kv("a", ARR, struct.pack("<IQ", U32, 1000) + b"\0" * 8)], pad=False))
    add("gg_string_array_truncated.gguf", "MOE_ERR_TRUNCATED", "second string runs past the end",
        gguf([kv("a", ARR, struct.pack("<IQ", STR, 2) + gstr("x") + struct.pack("<Q", 100))], pad=False))
    nested = struct.pack("<IQ", ARR, 1)
    for _ in range(9):
        nested += struct.pack("<IQ", ARR, 1)
    nested += struct.pack("<IQ", U8, 1) + b"\0"
    add("gg_nested_too_deep.gguf", "MOE_ERR_LIMIT", "arrays nested 10 deep (limit 8)", gguf([kv("a", ARR, nested)]))
    add("gg_align_u64.gguf", "MOE_ERR_ALIGNMENT", "general.alignment stored as UINT64",
        gguf([kv("general.alignment", U64, struct.pack("<Q", 32))]))
    add("gg_align_zero.gguf", "MOE_ERR_ALIGNMENT", "general.alignment 0", gguf([kv_u32("general.alignment", 0)]))
    add("gg_align_48.gguf", "MOE_ERR_ALIGNMENT", "general.alignment 48 (not a power of two)",
        gguf([kv_u32("general.alignment", 48)]))
    add("gg_align_huge.gguf", "MOE_ERR_LIMIT", "general.alignment 2^24 (limit 1 MiB)",
        gguf([kv_u32("general.alignment", 1 << 24)]))
    add("gg_name_too_long.gguf", "MOE_ERR_NAME", "tensor name of 300 bytes", gguf([], [tinfo("x" * 300, [4], 0, 0)], d16))
    add("gg_name_empty.gguf", "MOE_ERR_NAME", "empty tensor name", gguf([], [tinfo("", [4], 0, 0)], d16))
    add("gg_name_len_huge.gguf", "MOE_ERR_TRUNCATED", "tensor name length 2^40",
        gguf([], [struct.pack("<Q", 2**40) + b"abc" + b"\0" * 30]))
    add("gg_dup_tensor.gguf", "MOE_ERR_DUPLICATE", "tensor t twice",
        gguf([], [tinfo("t", [4], 0, 0), tinfo("t", [4], 0, 32)], d16 * 2))
    add("gg_n_dims_5.gguf", "MOE_ERR_SHAPE", "5 dimensions", gguf([], [tinfo("t", [1] * 5, 0, 0)], d16))
    add("gg_ne_product_overflow.gguf", "MOE_ERR_OVERFLOW", "ne 2^32 x 2^32",
        gguf([], [tinfo("t", [2**32, 2**32], 0, 0)], d16))
    add("gg_ne_2_63.gguf", "MOE_ERR_OVERFLOW", "ne[0] = 2^63", gguf([], [tinfo("t", [2**63], 0, 0)], d16))
    add("gg_bytes_overflow.gguf", "MOE_ERR_OVERFLOW", "2^62 F32 = 2^64 bytes",
        gguf([], [tinfo("t", [2**62], 0, 0)], d16))
    add("gg_type_removed_4.gguf", "MOE_ERR_DTYPE", "ggml type 4 (removed Q4_2)",
        gguf([], [tinfo("t", [32], 4, 0)], d16))
    add("gg_type_1000.gguf", "MOE_ERR_DTYPE", "ggml type 1000", gguf([], [tinfo("t", [32], 1000, 0)], d16))
    add("gg_block_mismatch.gguf", "MOE_ERR_SHAPE", "Q8_0 row of 33 elements",
        gguf([], [tinfo("t", [33], 8, 0)], d16 * 3))
    add("gg_offset_misaligned.gguf", "MOE_ERR_ALIGNMENT", "offset 4 with alignment 32",
        gguf([], [tinfo("t", [4], 0, 4)], d16))
    add("gg_offset_gap.gguf", "MOE_ERR_OVERLAP", "second tensor at 64, expected 32",
        gguf([], [tinfo("a", [4], 0, 0), tinfo("b", [4], 0, 64)], d16 * 3))
    add("gg_offset_overlap.gguf", "MOE_ERR_OVERLAP", "both tensors at offset 0",
        gguf([], [tinfo("a", [4], 0, 0), tinfo("b", [4], 0, 0)], d16))
    add("gg_data_truncated.gguf", "MOE_ERR_TRUNCATED", "1024 F32 declared, 32 bytes of data",
        gguf([], [tinfo("t", [1024], 0, 0)], d16))
    add("gg_data_section_missing.gguf", "MOE_ERR_TRUNCATED", "header ends without padding or data",
        gguf([], one, b"", pad=False))
    # semantic (MoE) errors on valid containers
    add("gg_no_architecture.gguf", "MOE_ERR_CONFIG", "no general.architecture", gguf([kv_u32("a.b", 1)]))
    add("gg_arch_u32.gguf", "MOE_ERR_CONFIG", "general.architecture stored as UINT32",
        gguf([kv_u32("general.architecture", 7)]))
    add("gg_unknown_arch.gguf", "MOE_ERR_UNKNOWN_FAMILY", "architecture bert",
        gguf([kv_str("general.architecture", "bert")]))
    add("gg_llama_dense.gguf", "MOE_ERR_UNKNOWN_FAMILY", "llama without expert_count is not MoE",
        gguf([kv_str("general.architecture", "llama"), kv_u32("llama.block_count", 1),
              kv_u32("llama.embedding_length", 32)]))
    add("gg_missing_down_exps.gguf", "MOE_ERR_MISSING", "no blk.0.ffn_down_exps.weight",
        moe_gguf(drop=("blk.0.ffn_down_exps.weight",)))
    add("gg_expert_shape.gguf", "MOE_ERR_SHAPE", "ffn_up_exps holds 3 experts, expert_count is 2",
        moe_gguf(shapes={"blk.0.ffn_up_exps.weight": [32, 32, 3]}))
    add("gg_used_gt_count.gguf", "MOE_ERR_CONFIG", "expert_used_count 3 > expert_count 2", moe_gguf(n_used=3))
    add("gg_gating_func_3.gguf", "MOE_ERR_CONFIG", "deepseek2 expert_gating_func 3",
        moe_gguf(arch="deepseek2", extra_kv=[kv_u32("deepseek2.expert_gating_func", 3)]))
    add("gg_legacy_missing_down.gguf", "MOE_ERR_MISSING", "per-expert (legacy) layout without expert 1's down",
        moe_gguf(arch="llama", drop=("blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight",
                                     "blk.0.ffn_down_exps.weight"),
                 extra_tensors=[("blk.0.ffn_gate.0.weight", [32, 32]), ("blk.0.ffn_up.0.weight", [32, 32]),
                                ("blk.0.ffn_down.0.weight", [32, 32]), ("blk.0.ffn_gate.1.weight", [32, 32]),
                                ("blk.0.ffn_up.1.weight", [32, 32])]))
    add("gg_gptoss_fused_gate_up.gguf", "MOE_ERR_UNSUPPORTED", "gpt-oss with ffn_gate_up_exps (half order unknown)",
        moe_gguf(arch="gpt-oss", drop=("blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight"),
                 extra_tensors=[("blk.0.ffn_gate_up_exps.weight", [32, 64, 2])]))
    add("gg_gptoss_no_biases.gguf", "MOE_ERR_MISSING", "gpt-oss without expert biases", moe_gguf(arch="gpt-oss"))
    add("gg_probs_b_shape.gguf", "MOE_ERR_SHAPE", "exp_probs_b.bias of 3 values for 2 experts",
        moe_gguf(arch="deepseek2", extra_tensors=[("blk.0.exp_probs_b.bias", [3])]))
    add("gg_router_q8_0.gguf", "MOE_ERR_DTYPE", "router ffn_gate_inp stored as Q8_0",
        moe_gguf(types={"blk.0.ffn_gate_inp.weight": 8}))
    add("gg_shexp_size_mismatch.gguf", "MOE_ERR_SHAPE", "qwen2moe shexp of 16 rows, metadata says 48",
        moe_gguf(arch="qwen2moe", extra_kv=[kv_u32("qwen2moe.expert_shared_feed_forward_length", 48)],
                 extra_tensors=[("blk.0.ffn_gate_shexp.weight", [32, 16]), ("blk.0.ffn_up_shexp.weight", [32, 16]),
                                ("blk.0.ffn_down_shexp.weight", [16, 32]), ("blk.0.ffn_gate_inp_shexp.weight", [32])]))
    add("gg_count_wrong_type.gguf", "MOE_ERR_CONFIG", "expert_count stored as FLOAT32",
        moe_gguf(extra_kv=[]).replace(b"qwen3moe.expert_count\x04\x00\x00\x00\x02\x00\x00\x00",
                                      b"qwen3moe.expert_count\x06\x00\x00\x00\x00\x00\x00\x40"))


# ----- Hugging Face directories -----

def mixtral_cfg(**kw):
    c = {"model_type": "mixtral", "num_hidden_layers": 1, "hidden_size": 8, "intermediate_size": 4,
         "num_local_experts": 2, "num_experts_per_tok": 1, "hidden_act": "silu"}
    c.update(kw)
    return json.dumps(c).encode()


def mixtral_tensors(E=2, H=8, I=4, dt="F32", change=None):
    ts = [("model.layers.0.block_sparse_moe.gate.weight", "F32", (E, H))]
    for e in range(E):
        for w, shp in (("w1", (I, H)), ("w3", (I, H)), ("w2", (H, I))):
            ts.append(("model.layers.0.block_sparse_moe.experts.%d.%s.weight" % (e, w), dt, shp))
    if change:
        ts = change(ts)
    return [(n, d, s, t(d, s)) for n, d, s in ts]


def hf_cases():
    good = st_file(mixtral_tensors())
    add("hf_no_config.d", "MOE_ERR_MISSING", "model.safetensors without config.json", files={"model.safetensors": good})
    add("hf_no_weights.d", "MOE_ERR_MISSING", "config.json only", files={"config.json": mixtral_cfg()})
    add("hf_config_bad_json.d", "MOE_ERR_JSON", "config.json cut short",
        files={"config.json": mixtral_cfg()[:-5], "model.safetensors": good})
    add("hf_config_dup_key.d", "MOE_ERR_DUPLICATE", "hidden_size twice in config.json",
        files={"config.json": mixtral_cfg()[:-1] + b', "hidden_size": 16}', "model.safetensors": good})
    add("hf_unknown_family.d", "MOE_ERR_UNKNOWN_FAMILY", "model_type bert",
        files={"config.json": mixtral_cfg(model_type="bert"), "model.safetensors": good})
    cfg = json.loads(mixtral_cfg())
    del cfg["model_type"]
    add("hf_no_model_type.d", "MOE_ERR_CONFIG", "config.json without model_type",
        files={"config.json": json.dumps(cfg).encode(), "model.safetensors": good})
    cfg = json.loads(mixtral_cfg())
    del cfg["num_local_experts"]
    add("hf_missing_key.d", "MOE_ERR_CONFIG", "no num_local_experts",
        files={"config.json": json.dumps(cfg).encode(), "model.safetensors": good})
    add("hf_topk_gt_experts.d", "MOE_ERR_CONFIG", "num_experts_per_tok 3 > 2 experts",
        files={"config.json": mixtral_cfg(num_experts_per_tok=3), "model.safetensors": good})
    add("hf_key_wrong_type.d", "MOE_ERR_CONFIG", "hidden_size is a string",
        files={"config.json": mixtral_cfg(hidden_size="8"), "model.safetensors": good})
    add("hf_hidden_act_gelu.d", "MOE_ERR_CONFIG", "hidden_act gelu for mixtral",
        files={"config.json": mixtral_cfg(hidden_act="gelu"), "model.safetensors": good})
    add("hf_expert_shape.d", "MOE_ERR_SHAPE", "expert 1 w1 is (5, 8), not (4, 8)",
        files={"config.json": mixtral_cfg(), "model.safetensors": st_file(mixtral_tensors(
            change=lambda ts: [(n, d, (5, 8) if n.endswith("experts.1.w1.weight") else s) for n, d, s in ts]))})
    add("hf_missing_expert.d", "MOE_ERR_MISSING", "expert 1 has no w2",
        files={"config.json": mixtral_cfg(), "model.safetensors": st_file(mixtral_tensors(
            change=lambda ts: [x for x in ts if not x[0].endswith("experts.1.w2.weight")]))})
    add("hf_mixed_dtype.d", "MOE_ERR_DTYPE", "w3 of expert 0 is BF16, the rest F32",
        files={"config.json": mixtral_cfg(), "model.safetensors": st_file(mixtral_tensors(
            change=lambda ts: [(n, "BF16" if n.endswith("experts.0.w3.weight") else d, s) for n, d, s in ts]))})
    add("hf_router_int.d", "MOE_ERR_DTYPE", "router gate stored as I32",
        files={"config.json": mixtral_cfg(), "model.safetensors": st_file(mixtral_tensors(
            change=lambda ts: [(n, "I32" if n.endswith("gate.weight") else d, s) for n, d, s in ts]))})
    ds = {"model_type": "deepseek_v3", "num_hidden_layers": 1, "hidden_size": 8, "moe_intermediate_size": 4,
          "n_routed_experts": 2, "num_experts_per_tok": 1, "n_shared_experts": None, "n_group": 1,
          "topk_group": 1}
    ds_t = [(n.replace("block_sparse_moe", "mlp").replace(".w1.", ".gate_proj.").replace(".w3.", ".up_proj.")
             .replace(".w2.", ".down_proj."), d, s, b) for n, d, s, b in mixtral_tensors()]
    add("hf_groups_bad.d", "MOE_ERR_CONFIG", "2 experts in 3 groups",
        files={"config.json": json.dumps(dict(ds, n_group=3)).encode(), "model.safetensors": st_file(ds_t)})
    add("hf_scoring_bad.d", "MOE_ERR_CONFIG", "scoring_func relu",
        files={"config.json": json.dumps(dict(ds, scoring_func="relu")).encode(), "model.safetensors": st_file(ds_t)})
    add("hf_fp8_no_scale.d", "MOE_ERR_MISSING", "F8_E4M3 experts without weight_scale_inv",
        files={"config.json": json.dumps(ds).encode(), "model.safetensors": st_file(
            [(n, "F8_E4M3" if ".experts." in n else d, s, bytes(len(b) // 4) if ".experts." in n else b)
             for n, d, s, b in ds_t])})
    add("hf_fp8_block_64.d", "MOE_ERR_CONFIG", "fp8 quantization_config with 64 x 64 blocks",
        files={"config.json": json.dumps(dict(ds, quantization_config={"quant_method": "fp8",
               "weight_block_size": [64, 64]})).encode(), "model.safetensors": st_file(ds_t)})
    q2 = {"model_type": "qwen2_moe", "num_hidden_layers": 2, "hidden_size": 8, "moe_intermediate_size": 4,
          "num_experts": 2, "num_experts_per_tok": 1, "mlp_only_layers": [7]}
    add("hf_mlp_only_bad.d", "MOE_ERR_CONFIG", "mlp_only_layers names layer 7 of 2",
        files={"config.json": json.dumps(q2).encode(), "model.safetensors": good})
    go = {"model_type": "gpt_oss", "num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 32,
          "num_local_experts": 2, "num_experts_per_tok": 1}
    p = "model.layers.0.mlp."
    go_t = [(p + "router.weight", "F32", (2, 32)), (p + "router.bias", "F32", (2,)),
            (p + "experts.gate_up_proj_blocks", "U8", (2, 64, 1, 16)), (p + "experts.gate_up_proj_scales", "U8", (2, 64, 1)),
            (p + "experts.down_proj_blocks", "U8", (2, 32, 2, 16)), (p + "experts.down_proj_scales", "U8", (2, 32, 1)),
            (p + "experts.gate_up_proj_bias", "F32", (2, 64)), (p + "experts.down_proj_bias", "F32", (2, 32))]
    add("hf_gptoss_scales_shape.d", "MOE_ERR_SHAPE", "down_proj_blocks say 2 blocks per row, H/32 is 1",
        files={"config.json": json.dumps(go).encode(), "model.safetensors": st_file([(n, d, s, t(d, s)) for n, d, s in go_t])})
    add("hf_corr_bias_shape.d", "MOE_ERR_SHAPE", "e_score_correction_bias of 3 values for 2 experts",
        files={"config.json": json.dumps(ds).encode(), "model.safetensors": st_file(
            ds_t + [("model.layers.0.mlp.gate.e_score_correction_bias", "F32", (3,), t("F32", (3,)))])})
    add("hf_gptoss_no_router_bias.d", "MOE_ERR_MISSING", "gpt-oss router without its bias",
        files={"config.json": json.dumps(go).encode(), "model.safetensors": st_file(
            [(n, d, s, t(d, s)) for n, d, s in go_t if not n.endswith("router.bias")])})
    l4 = {"model_type": "llama4", "text_config": {"num_hidden_layers": 1, "hidden_size": 8, "intermediate_size": 4,
                                                  "num_local_experts": 2, "num_experts_per_tok": 1}}
    p4 = "language_model.model.layers.0.feed_forward."
    l4_t = [(p4 + "router.weight", "F32", (2, 8)), (p4 + "experts.gate_up_proj", "F32", (2, 4, 8)),
            (p4 + "experts.down_proj", "F32", (2, 4, 8)), (p4 + "shared_expert.gate_proj.weight", "F32", (4, 8)),
            (p4 + "shared_expert.up_proj.weight", "F32", (4, 8)), (p4 + "shared_expert.down_proj.weight", "F32", (8, 4))]
    add("hf_llama4_gate_up_untransposed.d", "MOE_ERR_SHAPE", "llama4 gate_up_proj stored (E, 2I, H), expected (E, H, 2I)",
        files={"config.json": json.dumps(l4).encode(), "model.safetensors": st_file([(n, d, s, t(d, s)) for n, d, s in l4_t])})
    # sharded checkpoints
    ts = mixtral_tensors()
    half = len(ts) // 2
    s1, s2 = st_file(ts[:half]), st_file(ts[half:])
    total = sum(len(b) for _, _, _, b in ts)
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]

    def index(wm, meta=None):
        return json.dumps({"metadata": meta if meta is not None else {"total_size": total}, "weight_map": wm}).encode()
    wm = {n: names[0] for n, _, _, _ in ts[:half]}
    wm.update({n: names[1] for n, _, _, _ in ts[half:]})

    def shard_dir(idx, a=s1, b=s2):
        return {"config.json": mixtral_cfg(), "model.safetensors.index.json": idx, names[0]: a, names[1]: b}
    bad = dict(wm)
    bad[ts[0][0]] = "../model-00001-of-00002.safetensors"
    add("hf_index_traversal.d", "MOE_ERR_NAME", "shard name ../model-00001-of-00002.safetensors", files=shard_dir(index(bad)))
    bad = dict(wm)
    bad[ts[0][0]] = "/etc/passwd"
    add("hf_index_absolute.d", "MOE_ERR_NAME", "shard name /etc/passwd", files=shard_dir(index(bad)))
    bad = dict(wm)
    bad[ts[0][0]] = names[1]
    add("hf_index_wrong_shard.d", "MOE_ERR_MISSING", "index names shard 2 for a tensor of shard 1",
        files=shard_dir(index(bad)))
    add("hf_index_dup_across_shards.d", "MOE_ERR_DUPLICATE", "the router weight stored in both shards",
        files=shard_dir(index(wm), s1, st_file(ts[half:] + ts[:1])))
    add("hf_index_total_size.d", "MOE_ERR_CONFIG", "total_size off by one",
        files=shard_dir(index(wm, {"total_size": total + 1})))
    add("hf_index_total_size_float.d", "MOE_ERR_FORMAT", "total_size 1.5",
        files=shard_dir(index(wm, {"total_size": 1.5})))
    d = shard_dir(index(wm))
    del d[names[1]]
    add("hf_index_missing_shard.d", "MOE_ERR_IO", "shard 2 file absent", files=d)
    add("hf_index_no_weight_map.d", "MOE_ERR_MISSING", "index without weight_map",
        files=shard_dir(json.dumps({"metadata": {}}).encode()))
    bad = dict(wm)
    del bad[ts[-1][0]]
    add("hf_index_unlisted_tensor.d", "MOE_ERR_MISSING", "a shard tensor the index does not list",
        files=shard_dir(index(bad, {})))
    bad = dict(wm)
    bad["model.layers.0.extra.weight"] = names[0]
    add("hf_index_phantom_tensor.d", "MOE_ERR_MISSING", "the index lists a tensor no shard has",
        files=shard_dir(index(bad, {})))
    add("hf_index_not_object.d", "MOE_ERR_FORMAT", "weight_map is a list",
        files=shard_dir(json.dumps({"weight_map": []}).encode()))
    add("hf_shard_corrupt.d", "MOE_ERR_OVERLAP", "shard 2 has trailing bytes",
        files=shard_dir(index(wm), s1, s2 + b"\0" * 8))


# ----- npy -----

def npy(header, data, version=1, magic=b"\x93NUMPY"):
    h = header.encode()
    h += b" " * ((64 - (len(h) + 11) % 64) % 64) + b"\n"
    pre = magic + bytes([version, 0]) + (struct.pack("<H", len(h)) if version == 1 else struct.pack("<I", len(h)))
    return pre + h + data


def npy_cases():
    f4 = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
    add("npy_bad_magic.npy", "MOE_ERR_MAGIC", "magic NUMPX", npy(f4, b"\0" * 24, magic=b"\x93NUMPX"))
    add("npy_version_9.npy", "MOE_ERR_MAGIC", "version 9.0", npy(f4, b"\0" * 24, version=9))
    add("npy_truncated_data.npy", "MOE_ERR_TRUNCATED", "(2, 3) f32 with 20 bytes", npy(f4, b"\0" * 20))
    add("npy_trailing_data.npy", "MOE_ERR_OVERLAP", "(2, 3) f32 with 28 bytes", npy(f4, b"\0" * 28))
    add("npy_header_past_eof.npy", "MOE_ERR_TRUNCATED", "header length 60000",
        b"\x93NUMPY\x01\x00" + struct.pack("<H", 60000) + b"{}")
    add("npy_fortran.npy", "MOE_ERR_FORMAT", "fortran_order True",
        npy(f4.replace("False", "True"), b"\0" * 24))
    add("npy_f64.npy", "MOE_ERR_DTYPE", "dtype <f8", npy(f4.replace("<f4", "<f8"), b"\0" * 48))
    add("npy_big_endian.npy", "MOE_ERR_DTYPE", "dtype >f4", npy(f4.replace("<f4", ">f4"), b"\0" * 24))
    add("npy_shape_overflow.npy", "MOE_ERR_OVERFLOW", "shape (2^62, 2^62)",
        npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4611686018427387904), }", b""))
    add("npy_extra_key.npy", "MOE_ERR_FORMAT", "an extra key in the header dict",
        npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1, }", b"\0" * 24))
    add("npy_missing_shape.npy", "MOE_ERR_FORMAT", "no shape key", npy("{'descr': '<f4', 'fortran_order': False, }", b""))
    add("npy_9_dims.npy", "MOE_ERR_LIMIT", "9 dimensions",
        npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 1, 1, 1, 1, 1), }", b"\0" * 4))


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    safetensors_cases()
    gguf_cases()
    hf_cases()
    npy_cases()
    # config.json beside the .safetensors cases: a valid mixtral config, so a
    # file that parses would go on to bind (none of them should get there)
    with open(os.path.join(OUT, "config.json"), "wb") as f:
        f.write(mixtral_cfg())
    with open(os.path.join(OUT, "MANIFEST"), "w") as f:
        f.write("# NAME  EXPECTED_STATUS  why   (generated by tests/python/make_bad_files.py)\n")
        for name, code, why in CASES:
            f.write("%-36s %-24s %s\n" % (name, code, why))
    print("%d malformed files in %s" % (len(CASES), OUT))


if __name__ == "__main__":
    main()
