/*
 * cmd-formats.c - `moe formats`: every weight format with its block
 * geometry, bits per weight (side-table scales included; group formats at
 * group 128 with f16 scales) and which backends of this build have kernels
 * for it. Uses the public API only.
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const char *mark(int v) { return v > 0 ? "yes" : v == 0 ? "-" : "?"; }

CLI_COMMAND(formats, "moe formats [--json]: weight formats, bits per weight, backends") {
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else {
            fprintf(stderr, "usage: moe formats [--json]\n");
            return 2;
        }
    }
    if (!json)
        printf("%-12s %6s %6s %9s  %-4s %-4s %-4s\n", "format", "block", "bytes", "bits/w", "ref",
               "cpu", "cuda");
    for (int f = 0; f < MOE_FORMAT_COUNT; f++) {
        moe_format_info in;
        if (moe_format_get_info((moe_format)f, &in)) continue;
        int r = moe_format_supported((moe_format)f, MOE_BACKEND_REF);
        int c = moe_format_supported((moe_format)f, MOE_BACKEND_CPU);
        int g = moe_format_supported((moe_format)f, MOE_BACKEND_CUDA);
        if (json)
            printf("{\"format\":\"%s\",\"block_elems\":%d,\"block_bytes\":%d,"
                   "\"bits_per_weight\":%.4f,\"quantized\":%s,\"ref\":%d,\"cpu\":%d,\"cuda\":%d}\n",
                   in.name, in.block_elems, in.block_bytes, in.bits_per_weight,
                   in.is_quantized ? "true" : "false", r, c, g);
        else
            printf("%-12s %6d %6d %9.4f  %-4s %-4s %-4s\n", in.name, in.block_elems, in.block_bytes,
                   in.bits_per_weight, mark(r), mark(c), mark(g));
    }
    return 0;
}
