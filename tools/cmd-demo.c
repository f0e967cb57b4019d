/*
 * cmd-demo.c - `moe demo`: the main job on an embedded default. Builds a
 * synthetic layer of a real model's shape, runs it on the CPU for 1, 16 and
 * 256 tokens, checks it against the fp64 reference and prints a table.
 */
#include "bench.h"
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A progress line on a terminal; nothing when stderr is a file or pipe. */
static void progress(double f) {
    static int last = -1;
    int pct = (int)(100 * f);
    if (pct == last || !isatty(2)) return;
    last = pct;
    if (pct < 100) fprintf(stderr, "\r  building layer %3d%%", pct);
    else fprintf(stderr, "\r%24s\r", "");
    fflush(stderr);
}

static void status_line(const char *msg, long n) {
    if (!isatty(2)) return;
    if (msg) fprintf(stderr, "\r  %s %ld tokens...", msg, n);
    else fprintf(stderr, "\r%40s\r", "");
    fflush(stderr);
}

static void usage(void) {
    fprintf(stderr,
            "usage: moe demo [--preset NAME] [--format F] [--threads N]\n"
            "  --preset   model shape (default qwen3-30b-a3b; `moe bench --list` lists them)\n"
            "  --format   weight format (default bf16; `moe formats` lists them)\n"
            "  --threads  CPU threads (default: all cores)\n");
}

CLI_COMMAND(demo, "run a real model's MoE layer on the CPU and check it against the reference") {
    if (cli_flag(argc, argv, "--help")) { usage(); return 0; }
    const char *pname = cli_opt(argc, argv, "--preset"), *fname = cli_opt(argc, argv, "--format");
    const char *threads = cli_opt(argc, argv, "--threads");
    const moe_preset *p = moe_preset_find(pname ? pname : "qwen3-30b-a3b");
    moe_format f = MOE_FORMAT_BF16;
    if (!p || (fname && moe_format_from_name(fname, &f))) {
        fprintf(stderr, "moe demo: unknown %s '%s'\n", p ? "format" : "preset", p ? fname : pname);
        usage();
        return 2;
    }
    char err[512];
    synth_layer s;
    printf("libmoe %s demo: %s MoE layer (d_model %lld, d_ff %lld, %d experts, top-%d%s), %s weights\n",
           moe_version(), p->name, (long long)p->d_model, (long long)p->d_ff, p->n_experts, p->top_k,
           p->shared_d_ff ? ", shared experts" : "", moe_format_name(f));
    if (synth_create(p, f, 0, 42, progress, &s, err, sizeof err)) {
        fprintf(stderr, "moe demo: %s\n", err);
        return 1;
    }
    moe_context *ctx = NULL;
    moe_context_options co = { .n_threads = threads ? atoi(threads) : 0 };
    moe_layer *cpu = NULL, *ref = NULL;
    moe_layer_options lo = { .router = s.router, .experts = s.experts, .max_tokens = 256,
                             .shared = s.shared, .backend = MOE_BACKEND_CPU };
    int rc = 1;
    if (moe_context_create(&co, &ctx, err, sizeof err)) goto fail;
    lo.context = ctx;
    if (moe_layer_create(&lo, &cpu, err, sizeof err)) goto fail;
    lo.backend = MOE_BACKEND_REF;
    lo.max_tokens = 32;
    if (moe_layer_create(&lo, &ref, err, sizeof err)) goto fail;

    printf("backend %s, %d threads; reference: scalar fp64 (%s)\n\n", moe_layer_experts_impl(cpu),
           moe_context_n_threads(ctx), moe_layer_experts_impl(ref));
    printf("%8s %12s %12s %14s %12s %10s\n", "tokens", "us/layer", "tokens/s", "GB/s touched",
           "NMSE vs ref", "check");
    const long tokens[] = { 1, 16, 256 };
    uint64_t seed = 7;
    int ok = 1;
    for (int i = 0; i < 3; i++) {
        long n = tokens[i], check = n < 32 ? n : 32;
        bench_result r;
        double nmse;
        status_line("running", n);
        if (bench_layer(&s, cpu, n, n >= 256 ? 3 : 5, 1, NULL, &seed, &r, err, sizeof err) ||
            bench_check(&s, cpu, ref, n, check, &seed, &nmse, err, sizeof err))
            goto fail;
        double tol = moe_format_name(f) && (f == MOE_FORMAT_F32) ? 1e-10 : 5e-4;
        int pass = nmse <= tol;
        ok &= pass;
        status_line(NULL, 0);
        printf("%8ld %12.1f %12.0f %14.1f %12.2e %10s\n", n, r.us, n / (r.us * 1e-6),
               r.touched_bytes / (r.us * 1e-6) / 1e9, nmse, pass ? "ok" : "FAIL");
        if (check < n) printf("%8s (reference run on the first %ld of the %ld tokens)\n", "", check, n);
    }
    printf("\n%s\n", ok ? "all outputs match the reference" : "MISMATCH against the reference");
    rc = ok ? 0 : 1;
    goto done;
fail:
    fprintf(stderr, "moe demo: %s\n", err);
done:
    moe_layer_destroy(cpu);
    moe_layer_destroy(ref);
    moe_context_destroy(ctx);
    synth_destroy(&s);
    return rc;
}
