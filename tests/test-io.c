/*
 * test-io.c - the model-file readers piece by piece: the JSON parser, valid
 * safetensors and GGUF edge cases parsed to the exact tensor table, the
 * memory bound against declared counts (2^60 tensors), configurable
 * limits, allocation failures on every allocation of an open, and .npy
 * round trips.
 */
#include "test.h"
#include "../src/io/gguf.h"
#include "../src/io/json.h"
#include "../src/io/safetensors.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ===== Counting allocator: peak bytes, optional failure at call N ===== */

static size_t g_cur, g_peak;
static long   g_calls, g_fail_at = -1;

static void *count_malloc(size_t size, void *ud) {
    (void)ud;
    if (g_fail_at >= 0 && g_calls++ == g_fail_at) return NULL;
    size_t *p = malloc(size + 16);
    if (!p) return NULL;
    p[0] = size;
    g_cur += size;
    if (g_cur > g_peak) g_peak = g_cur;
    return (char *)p + 16;
}
static void count_free(void *ptr, void *ud) {
    (void)ud;
    if (!ptr) return;
    size_t *p = (size_t *)((char *)ptr - 16);
    g_cur -= p[0];
    free(p);
}
static void count_begin(long fail_at) {
    g_cur = g_peak = 0;
    g_calls = 0;
    g_fail_at = fail_at;
    moe_allocator a = { count_malloc, count_free, NULL };
    moe_set_allocator(&a);
}
static void count_end(void) { moe_set_allocator(NULL); }

/* ===== JSON ===== */

static moe_status json(const char *s, moe__json *j) {
    char err[256];
    moe__json_limits lim = { 0 };
    return moe__json_parse(s, strlen(s), &lim, j, err, sizeof err);
}

TEST(io_json_values) {
    moe__json j;
    REQUIRE(json(" {\"a\": [18446744073709551615, -9223372036854775808, 1e308, -0.5, true, null],"
                 " \"s\": \"\\u00e9\\ud83d\\ude00\\n\\\"\", \"o\": {}} \n", &j) == MOE_OK);
    uint32_t a = moe__json_get(&j, 0, "a");
    REQUIRE(a && j.nodes[a].type == MOE__JSON_ARRAY && j.nodes[a].n_children == 6);
    const moe__json_node *n0 = &j.nodes[moe__json_child(&j, a)];
    const moe__json_node *n1 = &j.nodes[n0->next], *n2 = &j.nodes[n1->next], *n3 = &j.nodes[n2->next];
    CHECK((n0->num_flags & MOE__JSON_U64) && n0->u == UINT64_MAX && !(n0->num_flags & MOE__JSON_I64));
    CHECK((n1->num_flags & MOE__JSON_I64) && n1->i == INT64_MIN && !(n1->num_flags & MOE__JSON_U64));
    CHECK(n2->num == 1e308 && !(n2->num_flags & MOE__JSON_INT));
    CHECK(n3->num == -0.5);
    uint32_t s = moe__json_get(&j, 0, "s");
    REQUIRE(s && j.nodes[s].type == MOE__JSON_STRING);
    CHECK(j.nodes[s].len == 2 + 4 + 2 && !memcmp(j.nodes[s].str, "\xc3\xa9\xf0\x9f\x98\x80\n\"", 8),
          "decoded %zu bytes", j.nodes[s].len);
    CHECK(moe__json_get(&j, 0, "missing") == 0);
    int64_t v;
    char err[128];
    CHECK_STATUS(moe__json_get_i64(&j, 0, "s", 0, 10, &v, err, sizeof err), MOE_ERR_CONFIG);
    CHECK_STATUS(moe__json_get_i64(&j, 0, "nope", 0, 10, &v, err, sizeof err), MOE_ERR_MISSING);
    moe__json_free(&j);
}

TEST(io_json_errors) {
    static const struct { const char *text; moe_status want; } cases[] = {
        { "", MOE_ERR_JSON }, { "{", MOE_ERR_JSON }, { "[1,]", MOE_ERR_JSON }, { "{\"a\" 1}", MOE_ERR_JSON },
        { "01", MOE_ERR_JSON }, { "1.", MOE_ERR_JSON }, { "1e", MOE_ERR_JSON }, { "-", MOE_ERR_JSON },
        { "+1", MOE_ERR_JSON }, { "1e400", MOE_ERR_JSON }, { "\"\\x\"", MOE_ERR_JSON },
        { "\"\\ud800\"", MOE_ERR_JSON }, { "\"\\udc00\"", MOE_ERR_JSON }, { "\"\\ud800\\u0041\"", MOE_ERR_JSON },
        { "\"\xc0\x80\"", MOE_ERR_JSON }, { "\"\xed\xa0\x80\"", MOE_ERR_JSON }, { "\"\xf4\x90\x80\x80\"", MOE_ERR_JSON },
        { "\"\t\"", MOE_ERR_JSON }, { "tru", MOE_ERR_JSON }, { "nul", MOE_ERR_JSON }, { "[] x", MOE_ERR_JSON },
        { "{\"a\":1,\"a\":2}", MOE_ERR_DUPLICATE },
        { "{\"a\":1,\"b\":1,\"c\":1,\"d\":1,\"e\":1,\"f\":1,\"g\":1,\"h\":1,\"i\":1,\"b\":1}", MOE_ERR_DUPLICATE },
        { "{\"a\\u0000\":1,\"a\":1}", MOE_OK }, /* distinct keys: one has a NUL */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        moe__json j;
        moe_status s = json(cases[i].text, &j);
        CHECK(s == cases[i].want, "case %zu \"%s\": %s", i, cases[i].text, moe_status_name(s));
        if (!s) moe__json_free(&j);
    }
    /* depth: 64 nested arrays parse, 65 do not; the limit is configurable */
    char deep[200];
    for (int d = 64; d <= 65; d++) {
        memset(deep, '[', (size_t)d);
        memset(deep + d, ']', (size_t)d);
        deep[2 * d] = '\0';
        moe__json j;
        moe_status s = json(deep, &j);
        CHECK(s == (d == 64 ? MOE_OK : MOE_ERR_LIMIT), "depth %d: %s", d, moe_status_name(s));
        if (!s) moe__json_free(&j);
    }
    moe__json j;
    char err[128];
    moe__json_limits lim = { .max_bytes = 4 };
    CHECK_STATUS(moe__json_parse("[1,2]", 5, &lim, &j, err, sizeof err), MOE_ERR_LIMIT);
}

/* ===== safetensors edge cases that must parse ===== */

static size_t st_build(uint8_t *buf, const char *hdr, const void *data, size_t n_data) {
    size_t n = strlen(hdr);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(n >> (8 * i));
    memcpy(buf + 8, hdr, n);
    if (n_data) memcpy(buf + 8 + n, data, n_data);
    return 8 + n + n_data;
}

TEST(io_safetensors_valid_edge_cases) {
    uint8_t buf[512], data[7] = { 1, 2, 3, 4, 5, 6, 7 };
    moe__io_limits lim;
    moe__io_limits_init(&lim, NULL);
    char err[256];
    moe__st_file f;
    /* leading whitespace (writers may pad), rank-0, zero-size, U8 then F16 at
     * an odd offset (unaligned data is legal), metadata */
    size_t n = st_build(buf, "\n  {\"r0\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1]},"
                        "\"z\":{\"shape\":[2,0],\"dtype\":\"BF16\",\"data_offsets\":[1,1]},"
                        "\"h\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[1,7]},"
                        "\"__metadata__\":{\"format\":\"pt\"}}  ", data, 7);
    REQUIRE(moe__st_parse(buf, n, &lim, &f, err, sizeof err) == MOE_OK, "%s", err);
    CHECK(f.n_tensors == 3 && f.metadata != 0);
    CHECK(!strcmp(f.tensors[0].name, "r0") && f.tensors[0].n_dims == 0 && f.tensors[0].end == 1);
    CHECK(f.tensors[1].dtype == MOE__DT_BF16 && f.tensors[1].n_dims == 2 && f.tensors[1].shape[1] == 0);
    CHECK(f.tensors[2].dtype == MOE__DT_F16 && f.tensors[2].begin == 1 && f.tensors[2].shape[0] == 3);
    CHECK(f.data_size == 7);
    moe__st_free(&f);
    /* the empty header {} with no data */
    n = st_build(buf, "{}", NULL, 0);
    CHECK_STATUS(moe__st_parse(buf, n, &lim, &f, err, sizeof err), MOE_OK);
    moe__st_free(&f);
    /* a configured header limit */
    lim.max_header_bytes = 8;
    n = st_build(buf, "{       }", NULL, 0);
    CHECK_STATUS(moe__st_parse(buf, n, &lim, &f, err, sizeof err), MOE_ERR_LIMIT);
}

/* ===== GGUF: declared counts never drive allocation ===== */

static size_t gguf_header(uint8_t *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    memcpy(b, "GGUF", 4);
    for (int i = 0; i < 4; i++) b[4 + i] = (uint8_t)(version >> (8 * i));
    for (int i = 0; i < 8; i++) b[8 + i] = (uint8_t)(n_tensors >> (8 * i));
    for (int i = 0; i < 8; i++) b[16 + i] = (uint8_t)(n_kv >> (8 * i));
    return 24;
}

TEST(io_gguf_huge_counts_bounded_memory) {
    uint8_t buf[4096] = { 0 };
    moe__io_limits lim;
    char err[256];
    moe__gguf g;
    /* 2^60 tensors: over the default limit */
    gguf_header(buf, 3, (uint64_t)1 << 60, 0);
    moe__io_limits_init(&lim, NULL);
    count_begin(-1);
    moe_status s = moe__gguf_parse(buf, sizeof buf, &lim, &g, err, sizeof err);
    count_end();
    CHECK(s == MOE_ERR_LIMIT, "%s", moe_status_name(s));
    CHECK(g_peak == 0, "peak %zu bytes", g_peak);
    /* with the limit lifted, the file's bytes refuse it before any allocation */
    moe_model_options o = { .max_tensors = (uint64_t)1 << 62, .max_kv = (uint64_t)1 << 62 };
    moe__io_limits_init(&lim, &o);
    count_begin(-1);
    s = moe__gguf_parse(buf, sizeof buf, &lim, &g, err, sizeof err);
    count_end();
    CHECK(s == MOE_ERR_TRUNCATED, "%s", moe_status_name(s));
    CHECK(g_peak == 0, "peak %zu bytes", g_peak);
    /* a plausible count (100 tensors fit in 4 KiB) with garbage infos: the
     * table grows only with what was read */
    gguf_header(buf, 3, 100, 0);
    count_begin(-1);
    s = moe__gguf_parse(buf, sizeof buf, &lim, &g, err, sizeof err);
    count_end();
    CHECK(s == MOE_ERR_NAME, "%s: %s", moe_status_name(s), err); /* empty first name */
    CHECK(g_peak <= 16 * sizeof(moe__gguf_tensor) + 64, "peak %zu bytes", g_peak);
    CHECK(g_cur == 0, "%zu bytes leaked", g_cur);
}

static size_t put_str(uint8_t *b, const char *s) {
    uint64_t n = strlen(s);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(n >> (8 * i));
    memcpy(b + 8, s, n);
    return 8 + n;
}
static size_t put_u32(uint8_t *b, uint32_t v) { for (int i = 0; i < 4; i++) b[i] = (uint8_t)(v >> (8 * i)); return 4; }
static size_t put_u64(uint8_t *b, uint64_t v) { for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (8 * i)); return 8; }

TEST(io_gguf_valid_table) {
    static uint8_t buf[8192];
    memset(buf, 0, sizeof buf);
    size_t p = gguf_header(buf, 2, 3, 4);
    p += put_str(buf + p, "general.alignment"); p += put_u32(buf + p, 4); p += put_u32(buf + p, 64);
    p += put_str(buf + p, "x.flag"); p += put_u32(buf + p, 7); buf[p++] = 1;
    p += put_str(buf + p, "x.name"); p += put_u32(buf + p, 8); p += put_str(buf + p, "tiny");
    /* nested array [[1, 2], [3]] of u8: read and skipped */
    p += put_str(buf + p, "x.nested"); p += put_u32(buf + p, 9); p += put_u32(buf + p, 9); p += put_u64(buf + p, 2);
    p += put_u32(buf + p, 0); p += put_u64(buf + p, 2); buf[p++] = 1; buf[p++] = 2;
    p += put_u32(buf + p, 0); p += put_u64(buf + p, 1); buf[p++] = 3;
    /* tensors: f32 (4, 2) ne = {4, 2}; q8_0 ne = {64}; zero-size ne = {0, 3} */
    p += put_str(buf + p, "a"); p += put_u32(buf + p, 2); p += put_u64(buf + p, 4); p += put_u64(buf + p, 2);
    p += put_u32(buf + p, 0); p += put_u64(buf + p, 0);
    p += put_str(buf + p, "q"); p += put_u32(buf + p, 1); p += put_u64(buf + p, 64);
    p += put_u32(buf + p, 8); p += put_u64(buf + p, 64);
    p += put_str(buf + p, "z"); p += put_u32(buf + p, 2); p += put_u64(buf + p, 0); p += put_u64(buf + p, 3);
    p += put_u32(buf + p, 0); p += put_u64(buf + p, 192);
    size_t data = (p + 63) / 64 * 64, size = data + 192;
    moe__io_limits lim;
    moe__io_limits_init(&lim, NULL);
    moe__gguf g;
    char err[256], str[16];
    REQUIRE(moe__gguf_parse(buf, size, &lim, &g, err, sizeof err) == MOE_OK, "%s", err);
    CHECK(g.version == 2 && g.alignment == 64 && g.data_offset == data && g.n_tensors == 3);
    CHECK(g.tensors[0].nbytes == 32 && g.tensors[0].ne[0] == 4 && g.tensors[0].ne[1] == 2);
    CHECK(g.tensors[1].dtype == MOE__DT_Q8_0 && g.tensors[1].nbytes == 68 && g.tensors[1].offset == 64);
    CHECK(g.tensors[2].nbytes == 0 && g.tensors[2].offset == 192);
    int64_t v;
    int b;
    CHECK(moe__gguf_get_i64(&g, "general.alignment", &v, err, sizeof err) == MOE_OK && v == 64);
    CHECK(moe__gguf_get_bool(&g, "x.flag", &b, err, sizeof err) == MOE_OK && b == 1);
    CHECK(moe__gguf_get_str(&g, "x.name", str, sizeof str, err, sizeof err) == MOE_OK && !strcmp(str, "tiny"));
    CHECK_STATUS(moe__gguf_get_i64(&g, "x.name", &v, err, sizeof err), MOE_ERR_CONFIG); /* no type confusion */
    CHECK_STATUS(moe__gguf_get_i64(&g, "x.none", &v, err, sizeof err), MOE_ERR_MISSING);
    const moe__gguf_kv *kv = moe__gguf_find(&g, "x.nested");
    CHECK(kv && kv->type == 9 && kv->arr_type == 9 && kv->arr_n == 2);
    moe__gguf_free(&g);
    /* one byte short of the Q8_0 tensor's end: truncated */
    CHECK_STATUS(moe__gguf_parse(buf, data + 64 + 67, &lim, &g, err, sizeof err), MOE_ERR_TRUNCATED);
}

/* ===== Whole-model opens: allocation failures and limits ===== */

TEST(io_model_open_allocation_failures) {
    char path[1024], err[256];
    snprintf(path, sizeof path, "%s/models/deepseek_v3", test_data_dir());
    moe_model *m = NULL;
    if (moe_model_open(path, NULL, &m, err, sizeof err) != MOE_OK) TEST_SKIP("%s: %s", path, err);
    moe_model_close(m);
    /* fail each allocation in turn: every open either succeeds or reports
     * MOE_ERR_NOMEM, and nothing leaks */
    int nomem = 0;
    for (long n = 0; n < 400; n++) {
        count_begin(n);
        moe_status s = moe_model_open(path, NULL, &m, err, sizeof err);
        moe_model_layer *ml = NULL;
        if (!s) {
            s = moe_model_layer_create(m, 0, NULL, &ml, err, sizeof err);
            moe_model_layer_destroy(ml);
            moe_model_close(m);
        }
        count_end();
        CHECK(s == MOE_OK || s == MOE_ERR_NOMEM, "fail at %ld: %s: %s", n, moe_status_name(s), err);
        CHECK(g_cur == 0, "fail at %ld: %zu bytes leaked", n, g_cur);
        if (s == MOE_ERR_NOMEM) nomem++;
        if (s == MOE_OK && g_calls <= n) break; /* all allocations passed */
    }
    CHECK(nomem > 10, "only %d allocation failures exercised", nomem);
    if (getenv("MOE_TEST_VERBOSE")) fprintf(stderr, "    %d opens failed with MOE_ERR_NOMEM, none leaked\n", nomem);
    /* limits: a header over max_header_bytes */
    moe_model_options o = { .max_header_bytes = 100 };
    CHECK_STATUS(moe_model_open(path, &o, &m, err, sizeof err), MOE_ERR_LIMIT);
    moe_model_options o2 = { .max_tensors = 3 };
    CHECK_STATUS(moe_model_open(path, &o2, &m, err, sizeof err), MOE_ERR_LIMIT);
}

/* ===== .npy ===== */

TEST(io_npy_round_trip) {
    char path[256], err[256];
    snprintf(path, sizeof path, "/tmp/moe-test-npy-%d.npy", (int)getpid());
    float x[6] = { 1, -2, 3.5f, 0, 1e-3f, -7 };
    uint16_t h[6];
    moe_format fmts[3] = { MOE_FORMAT_F32, MOE_FORMAT_BF16, MOE_FORMAT_F16 };
    for (int f = 0; f < 3; f++) {
        int64_t shape[2] = { 2, 3 };
        const void *data = x;
        if (f == 1) for (int i = 0; i < 6; i++) { union { float f; uint32_t u; } v = { x[i] }; h[i] = (uint16_t)(v.u >> 16); }
        if (f == 2) { uint16_t f16[6] = { 0x3c00, 0xc000, 0x4300, 0, 0x1419, 0xc700 }; memcpy(h, f16, sizeof h); }
        if (f) data = h;
        REQUIRE(moe_npy_write(path, fmts[f], 2, shape, data, err, sizeof err) == MOE_OK, "%s", err);
        moe_npy a;
        REQUIRE(moe_npy_read(path, &a, err, sizeof err) == MOE_OK, "%s", err);
        CHECK(a.format == fmts[f] && a.n_dims == 2 && a.shape[0] == 2 && a.shape[1] == 3);
        CHECK(a.nbytes == (f ? 12u : 24u) && !memcmp(a.data, data, a.nbytes));
        moe_npy_free(&a);
    }
    int64_t one[1] = { 4 };
    REQUIRE(moe_npy_write(path, MOE_FORMAT_F32, 1, one, x, err, sizeof err) == MOE_OK);
    moe_npy a;
    CHECK(moe_npy_read(path, &a, err, sizeof err) == MOE_OK && a.n_dims == 1 && a.shape[0] == 4);
    moe_npy_free(&a);
    remove(path);
}

/* Peak heap while parsing a safetensors header is linear in the header
 * bytes (JSON nodes + strings + the tensor table) and within the P4 budget of
 * reliability-and-formats.md: measured on 5000 tensors. */
TEST(io_safetensors_peak_memory_linear) {
    enum { N = 5000 };
    size_t cap = (size_t)N * 96 + 64;
    char *hdr = malloc(cap);
    uint8_t *buf = malloc(cap + 8 + (size_t)N * 4);
    REQUIRE(hdr && buf);
    size_t o = 0;
    o += (size_t)snprintf(hdr + o, cap - o, "{");
    for (int i = 0; i < N; i++)
        o += (size_t)snprintf(hdr + o, cap - o, "%s\"model.layers.%d.w\":{\"dtype\":\"F32\",\"shape\":[1],"
                              "\"data_offsets\":[%d,%d]}", i ? "," : "", i, 4 * i, 4 * i + 4);
    o += (size_t)snprintf(hdr + o, cap - o, "}");
    memset(buf + 8 + o, 0, (size_t)N * 4);
    size_t n = st_build(buf, hdr, buf + 8 + o, 0) + (size_t)N * 4;
    moe__io_limits lim;
    moe__io_limits_init(&lim, NULL);
    moe__st_file f;
    char err[256];
    count_begin(-1);
    moe_status s = moe__st_parse(buf, n, &lim, &f, err, sizeof err);
    size_t peak = g_peak;
    if (!s) moe__st_free(&f);
    count_end();
    CHECK(s == MOE_OK, "%s", err);
    CHECK(f.n_tensors == 0); /* freed */
    /* the budget of reliability goal P4: 2 x header + 256 B per tensor + 1 MiB */
    size_t budget = 2 * o + 256 * (size_t)N + (1u << 20);
    CHECK(peak <= budget, "peak %zu bytes for a %zu-byte header (%.1fx), budget %zu", peak, o,
          (double)peak / (double)o, budget);
    if (getenv("MOE_TEST_VERBOSE")) fprintf(stderr, "    header %zu B, peak heap %zu B (%.1fx)\n", o, peak, (double)peak / (double)o);
    free(hdr);
    free(buf);
}
