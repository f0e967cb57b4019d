/*
 * moe.c - the `moe` command line: dispatches to the registered commands.
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f, "moe %s - Mixture-of-Experts layers for LLM inference\n\nusage: moe COMMAND [options]\n\n",
            moe_version());
    for (const cli_command *c = cli_first(); c; c = c->next)
        if (!strstr(c->name, "bench-")) fprintf(f, "  %-10s %s\n", c->name, c->summary);
    fprintf(f, "\n`moe COMMAND --help` describes a command's options.\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "help") || !strcmp(argv[1], "--help") ||
        !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("moe %s\n", moe_version());
        return 0;
    }
    const cli_command *c = cli_find(argv[1]);
    if (!c) {
        fprintf(stderr, "moe: unknown command '%s'\n\n", argv[1]);
        usage(stderr);
        return 2;
    }
    return c->run(argc - 1, argv + 1);
}
