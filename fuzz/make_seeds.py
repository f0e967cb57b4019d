#!/usr/bin/env python3
"""make_seeds.py OUTDIR TESTDATA BADDIR - seed corpora for the fuzz targets.

OUTDIR/<target>/ gets the valid files the generators wrote (TESTDATA/models: safetensors,
index JSON, config.json, GGUF, npy; TESTDATA/quant_ckpt: quantized checkpoints, bad ones too), the malformed corpus (BADDIR), and synthetic seeds made
here: a GGUF with one pair of every value type (nested arrays included) and tensors of several
ggml types, and safetensors edge cases (leading whitespace, zero-size and rank-0 tensors).
fuzz-model inputs that are not GGUF are u32 n + n bytes of config.json + one safetensors file.
"""
import glob
import os
import shutil
import struct
import sys

out, testdata, bad = sys.argv[1], sys.argv[2], sys.argv[3]
targets = ["safetensors", "index", "json", "config", "gguf", "npy", "model"]
for t in targets:
    os.makedirs(os.path.join(out, t), exist_ok=True)


def put(target, name, data):
    with open(os.path.join(out, target, name), "wb") as f:
        f.write(data)


def copy(target, path, prefix=""):
    name = prefix + os.path.relpath(path).replace("/", "_")
    shutil.copy(path, os.path.join(out, target, name[-120:]))


models = os.path.join(testdata, "models")
quant = os.path.join(testdata, "quant_ckpt")  # ModelOpt / compressed-tensors checkpoints
for p in (glob.glob(models + "/**/*.safetensors", recursive=True) + glob.glob(quant + "/*/*.safetensors")
          + glob.glob(bad + "/**/*.safetensors", recursive=True)):
    copy("safetensors", p)
for p in glob.glob(models + "/**/*.index.json", recursive=True) + glob.glob(bad + "/**/*.index.json", recursive=True):
    copy("index", p)
for p in (glob.glob(models + "/**/config.json", recursive=True) + glob.glob(quant + "/*/config.json")
          + glob.glob(bad + "/**/config.json", recursive=True)):
    copy("config", p)
    copy("json", p)
for p in glob.glob(models + "/*.gguf") + glob.glob(bad + "/*.gguf"):
    copy("gguf", p)
    copy("model", p)
for p in glob.glob(models + "/*.npy") + glob.glob(bad + "/*.npy"):
    copy("npy", p)
for d in glob.glob(models + "/*/") + glob.glob(quant + "/*/") + glob.glob(bad + "/*.d/"):
    cfg, st = os.path.join(d, "config.json"), os.path.join(d, "model.safetensors")
    if os.path.exists(cfg) and os.path.exists(st):
        c, s = open(cfg, "rb").read(), open(st, "rb").read()
        put("model", os.path.basename(d.rstrip("/")) + ".bin", struct.pack("<I", len(c)) + c + s)


def gstr(s):
    return struct.pack("<Q", len(s)) + s


def kv(key, typ, val):
    return gstr(key) + struct.pack("<I", typ) + val


kvs = [kv(b"u8", 0, b"\1"), kv(b"i8", 1, b"\xff"), kv(b"u16", 2, b"\1\0"), kv(b"i16", 3, b"\xff\xff"),
       kv(b"u32", 4, b"\1\0\0\0"), kv(b"i32", 5, b"\xff\xff\xff\xff"), kv(b"f32", 6, struct.pack("<f", 1.5)),
       kv(b"bool", 7, b"\1"), kv(b"str", 8, gstr(b"hello")),
       kv(b"arr.u32", 9, struct.pack("<IQ", 4, 3) + struct.pack("<3I", 1, 2, 3)),
       kv(b"arr.str", 9, struct.pack("<IQ", 8, 2) + gstr(b"a") + gstr(b"bc")),
       kv(b"arr.nested", 9, struct.pack("<IQ", 9, 2) + struct.pack("<IQ", 0, 2) + b"\1\2" +
          struct.pack("<IQ", 0, 1) + b"\3"),
       kv(b"u64", 10, struct.pack("<Q", 7)), kv(b"i64", 11, struct.pack("<q", -7)),
       kv(b"f64", 12, struct.pack("<d", 2.5)), kv(b"general.alignment", 4, struct.pack("<I", 64))]
tensors, data, off = b"", b"", 0
for name, typ, ne, nbytes in ((b"f32", 0, [4, 2], 32), (b"q8_0", 8, [32, 2], 68), (b"q4_k", 12, [256], 144),
                              (b"bf16", 30, [8], 16), (b"zero", 0, [0, 4], 0)):
    tensors += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne) + \
        struct.pack("<IQ", typ, off)
    blob = bytes(nbytes) + bytes((64 - nbytes % 64) % 64)
    data += blob
    off += len(blob)
head = b"GGUF" + struct.pack("<IQQ", 3, 5, len(kvs)) + b"".join(kvs) + tensors
put("gguf", "synthetic_all_types.gguf", head + bytes((64 - len(head) % 64) % 64) + data)
for hdr, body in ((b'  \n{"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}', b"\0" * 4),
                  (b'{"z":{"dtype":"BF16","shape":[2,0],"data_offsets":[0,0]},"__metadata__":{"k":"v"}}', b""),
                  (b'{"u":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"f":{"dtype":"F16","shape":[1],"data_offsets":[3,5]}}',
                   b"\0" * 5)):
    hdr += b" " * ((8 - len(hdr) % 8) % 8)
    put("safetensors", "edge_%d.safetensors" % len(hdr), struct.pack("<Q", len(hdr)) + hdr + body)
for i, j in enumerate([b'{"a":[1,-2,3.5e-3,true,false,null,"\\u00e9\\ud83d\\ude00\\n"],"b":{"c":{}}}',
                       b'[18446744073709551615,-9223372036854775808,1e308]', b'"\\"\\\\\\/\\b\\f\\n\\r\\t"']):
    put("json", "synthetic_%d.json" % i, j)
print("seeds in %s: %s" % (out, ", ".join("%s %d" % (t, len(os.listdir(os.path.join(out, t)))) for t in targets)))
