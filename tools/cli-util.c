/*
 * cli-util.c - small helpers shared by the `moe` commands.
 */
#include "cli.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static cli_command *g_commands;

void cli_register(cli_command *c) {
    /* Keep the list sorted by name, for `moe help`. */
    cli_command **p = &g_commands;
    while (*p && strcmp((*p)->name, c->name) < 0) p = &(*p)->next;
    c->next = *p;
    *p      = c;
}

const cli_command *cli_find(const char *name) {
    for (cli_command *c = g_commands; c; c = c->next)
        if (!strcmp(c->name, name)) return c;
    return NULL;
}

const cli_command *cli_first(void) { return g_commands; }

double cli_now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

int cli_parse_list(const char *s, long *vals, int cap) {
    int n = 0;
    while (s && *s) {
        char *end;
        long  v = strtol(s, &end, 10);
        if (end == s || v < 0 || n == cap) return -1;
        vals[n++] = v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    return n;
}

const char *cli_opt(int argc, char **argv, const char *name) {
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], name)) return argv[i + 1];
    return NULL;
}

int cli_flag(int argc, char **argv, const char *name) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], name)) return 1;
    return 0;
}
