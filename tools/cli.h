/*
 * cli.h - the `moe` command line: commands register themselves.
 *
 * Each tools/cmd-*.c file defines its commands with CLI_COMMAND; tools/moe.c
 * finds them by name, so adding a command edits no shared list. The CLI is a
 * client of include/moe.h only: no internal header is included here.
 *
 *     CLI_COMMAND(info, "moe info PATH: describe a model file") {
 *         ... argc/argv as after the command name (argv[0] is "info") ...
 *         return 0;
 *     }
 *
 * A command returns the process exit status: 0 ok, 1 failure, 2 usage.
 * `moe bench` forwards to the command "bench-cuda" when given --backend cuda,
 * to "bench-ep" when given --ep N, and to "bench-model" when given --model.
 */
#ifndef MOE_CLI_H
#define MOE_CLI_H

#include "moe.h"

typedef struct cli_command {
    const char         *name;
    const char         *summary;   /* one line for `moe help` */
    int               (*run)(int argc, char **argv);
    struct cli_command *next;
} cli_command;

void               cli_register(cli_command *c);
const cli_command *cli_find(const char *name);
const cli_command *cli_first(void);      /* commands sorted by name */

#define CLI_COMMAND(ident, text)                                                   \
    static int cli_run_##ident(int argc, char **argv);                             \
    __attribute__((constructor)) static void cli_reg_##ident(void) {               \
        static cli_command c = { #ident, text, cli_run_##ident, NULL };            \
        cli_register(&c);                                                          \
    }                                                                              \
    static int cli_run_##ident(int argc, char **argv)

/* Command names with dashes register through CLI_COMMAND_NAMED. */
#define CLI_COMMAND_NAMED(ident, name_str, text)                                   \
    static int cli_run_##ident(int argc, char **argv);                             \
    __attribute__((constructor)) static void cli_reg_##ident(void) {               \
        static cli_command c = { name_str, text, cli_run_##ident, NULL };          \
        cli_register(&c);                                                          \
    }                                                                              \
    static int cli_run_##ident(int argc, char **argv)

/* Small shared helpers (tools/cli-util.c). */
double cli_now_us(void);                           /* monotonic clock, microseconds */
/* Parses "1,8,64" into vals (at most cap); returns the count, or -1. */
int    cli_parse_list(const char *s, long *vals, int cap);
/* Finds "--name VALUE" in argv; returns VALUE or NULL. */
const char *cli_opt(int argc, char **argv, const char *name);
/* True when the flag "--name" is present. */
int    cli_flag(int argc, char **argv, const char *name);

#endif /* MOE_CLI_H */
