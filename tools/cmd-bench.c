/*
 * cmd-bench.c - `moe bench`: time a preset's layer on the host at several
 * token counts and report µs, tokens/s, GB/s of touched expert weights,
 * GFLOP/s, and the fraction of this machine's read bandwidth: with the
 * default flush, each timed forward follows a bandwidth probe with the same
 * threads, and %bw is the median over the runs of each forward's GB/s over
 * its own probe (probe GB/s: their median); with --no-flush, the probe
 * taken once before the runs. Forwards to bench-cuda / bench-ep /
 * bench-model when asked.
 */
#include "bench.h"
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(void) {
    fprintf(stderr,
        "usage: moe bench [--preset NAME] [--tokens 1,8,64,512] [--format F] [--threads N]\n"
        "                 [--runs N] [--max-gb G] [--no-flush] [--json]\n"
        "       moe bench --bandwidth [--threads N]\n"
        "       moe bench --list\n"
        "       moe bench --backend cuda ... | --ep N ... | --model PATH --layer N ...\n"
        "  --preset    model shape (default qwen3-30b-a3b)\n"
        "  --tokens    token counts (default 1,8,64,512)\n"
        "  --format    weight format (default bf16)\n"
        "  --threads   CPU threads (default all cores)\n"
        "  --spin-us   idle workers poll this long before sleeping; -1 = never sleep\n"
        "              (default 0: the library's 1000 us)\n"
        "  --runs      timed runs per row, median reported (default 7)\n"
        "  --max-gb    scale n_experts down so weights fit in G GB (default 8)\n"
        "  --no-flush  keep caches warm between runs (default: flush the caches by\n"
        "              probing the read bandwidth before each run, %%bw against it)\n"
        "  --json      one JSON object per row instead of the table\n");
}

static int forward_to(const char *name, int argc, char **argv) {
    const cli_command *c = cli_find(name);
    if (!c) {
        fprintf(stderr, "moe bench: this build has no %s (built without its dependency)\n", name);
        return 1;
    }
    return c->run(argc, argv);
}

static int bench_bandwidth(int threads) {
    double gbps = 0;
    moe_status st = moe_measure_read_bandwidth(threads, 0, &gbps);
    if (st) { fprintf(stderr, "moe bench: %s\n", moe_status_str(st)); return 1; }
    printf("memory read bandwidth: %.1f GB/s (%d threads, 1 GiB buffer, median)\n", gbps,
           threads ? threads : moe_cpu_count());
    return 0;
}

CLI_COMMAND(bench, "time a model's MoE layer (host; --backend cuda, --ep N, --model forward)") {
    if (cli_flag(argc, argv, "--help")) { usage(); return 0; }
    const char *backend = cli_opt(argc, argv, "--backend");
    if (backend && !strcmp(backend, "cuda")) return forward_to("bench-cuda", argc, argv);
    if (cli_opt(argc, argv, "--ep")) return forward_to("bench-ep", argc, argv);
    if (cli_opt(argc, argv, "--model")) return forward_to("bench-model", argc, argv);
    const char *ts = cli_opt(argc, argv, "--threads");
    int threads = ts ? atoi(ts) : 0;
    if (cli_flag(argc, argv, "--bandwidth")) return bench_bandwidth(threads);
    if (cli_flag(argc, argv, "--list")) {
        for (const moe_preset *p = moe_presets; p->name; p++)
            printf("%-18s H %-5lld I %-6lld E %-4d k %d%s\n", p->name, (long long)p->d_model,
                   (long long)p->d_ff, p->n_experts, p->top_k, p->shared_d_ff ? " +shared" : "");
        return 0;
    }
    if (backend && strcmp(backend, "cpu") && strcmp(backend, "ref")) {
        fprintf(stderr, "moe bench: unknown backend '%s'\n", backend);
        return 2;
    }
    const char *pname = cli_opt(argc, argv, "--preset"), *fname = cli_opt(argc, argv, "--format");
    const char *tok = cli_opt(argc, argv, "--tokens"), *rs = cli_opt(argc, argv, "--runs");
    const char *mg = cli_opt(argc, argv, "--max-gb");
    int json = cli_flag(argc, argv, "--json"), flush = !cli_flag(argc, argv, "--no-flush");
    int runs = rs ? atoi(rs) : 7;
    double max_gb = mg ? atof(mg) : 8.0;
    const moe_preset *p = moe_preset_find(pname ? pname : "qwen3-30b-a3b");
    moe_format f = MOE_FORMAT_BF16;
    long tokens[16];
    int n_tok = cli_parse_list(tok ? tok : "1,8,64,512", tokens, 16);
    if (!p || (fname && moe_format_from_name(fname, &f)) || n_tok <= 0 || runs < 1 || max_gb <= 0) {
        usage();
        return 2;
    }

    /* Scale E down when the layer would not fit: say so. */
    moe_quant_sizes q13, q2;
    char err[512];
    int64_t rows13 = p->activation == MOE_ACT_RELU2 ? p->d_ff : 2 * p->d_ff;
    if (moe_quant_sizes_get(f, rows13, p->d_model, 128, MOE_FORMAT_F16, &q13, err, sizeof err) ||
        moe_quant_sizes_get(f, p->d_model, p->d_ff, 128, MOE_FORMAT_F16, &q2, err, sizeof err)) {
        fprintf(stderr, "moe bench: %s\n", err);
        return 1;
    }
    double per_expert = (double)(q13.data + q13.scales + q13.zeros + q2.data + q2.scales + q2.zeros);
    int32_t e_max = (int32_t)(max_gb * 1e9 / per_expert);
    if (e_max < p->top_k) e_max = p->top_k;
    synth_layer s;
    if (synth_create(p, f, e_max, 42, NULL, &s, err, sizeof err)) {
        fprintf(stderr, "moe bench: %s\n", err);
        return 1;
    }
    long max_t = 0;
    for (int i = 0; i < n_tok; i++) max_t = tokens[i] > max_t ? tokens[i] : max_t;
    moe_context *ctx = NULL;
    moe_layer *layer = NULL;
    const char *spin = cli_opt(argc, argv, "--spin-us");
    moe_context_options co = { .n_threads = threads, .spin_us = spin ? atoi(spin) : 0 };
    moe_layer_options lo = { .router = s.router, .experts = s.experts, .max_tokens = max_t,
                             .shared = s.shared,
                             .backend = backend && !strcmp(backend, "ref") ? MOE_BACKEND_REF
                                                                           : MOE_BACKEND_CPU };
    double bw = 0;
    int rc = 1;
    if (moe_context_create(&co, &ctx, err, sizeof err)) goto fail;
    moe_context_measure_read_bandwidth(ctx, NULL, 0, &bw);
    lo.context = ctx;
    if (moe_layer_create(&lo, &layer, err, sizeof err)) goto fail;
    if (!json) {
        printf("%s, %s weights, %s backend, %d threads; measured read bandwidth %.1f GB/s\n", p->name,
               moe_format_name(f), moe_layer_experts_impl(layer), moe_context_n_threads(ctx), bw);
        if (s.p.n_experts != p->n_experts)
            printf("note: n_experts scaled %d -> %d to fit %.1f GB (top_k %d%s)\n", p->n_experts,
                   s.p.n_experts, max_gb, s.p.top_k,
                   s.p.n_group != p->n_group ? ", groups adjusted" : "");
        printf("%7s %11s %11s %11s %9s %9s %10s\n", "tokens", "us/layer", "tokens/s", "GB/s",
               "%bw", "GFLOP/s", "probe GB/s");
    }
    uint64_t seed = 11;
    for (int i = 0; i < n_tok; i++) {
        bench_result r;
        if (bench_layer(&s, layer, tokens[i], runs, flush, ctx, &seed, &r,
                        err, sizeof err))
            goto fail;
        const double gbs   = r.touched_bytes / (r.us * 1e-6) / 1e9;
        const double probe = r.bw_frac > 0 ? r.bw_gbps : bw;
        const double frac  = r.bw_frac > 0 ? r.bw_frac : bw > 0 ? gbs / bw : 0;
        if (json)
            printf("{\"preset\":\"%s\",\"format\":\"%s\",\"backend\":\"%s\",\"threads\":%d,"
                   "\"n_experts\":%d,\"tokens\":%ld,\"us\":%.2f,\"gbps\":%.2f,\"bw_gbps\":%.2f,"
                   "\"gflops\":%.2f,\"bw_frac\":%.4f}\n",
                   p->name, moe_format_name(f), moe_layer_experts_impl(layer),
                   moe_context_n_threads(ctx), s.p.n_experts, tokens[i], r.us, gbs, probe,
                   r.flops / (r.us * 1e-6) / 1e9, frac);
        else
            printf("%7ld %11.1f %11.0f %11.1f %8.0f%% %9.1f %10.1f\n", tokens[i], r.us,
                   tokens[i] / (r.us * 1e-6), gbs, 100 * frac, r.flops / (r.us * 1e-6) / 1e9,
                   probe);
        fflush(stdout);
    }
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "moe bench: %s\n", err);
done:
    moe_layer_destroy(layer);
    moe_context_destroy(ctx);
    synth_destroy(&s);
    return rc;
}
