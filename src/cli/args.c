#include "cli/args.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void pam_args_init(pam_args *a, int argc, char **argv, const char *cmd) {
    memset(a, 0, sizeof *a);
    a->argc = argc;
    a->argv = argv;
    a->i = 0; /* argv[0] is the subcommand */
    a->cmd = cmd;
}

int pam_args_next(pam_args *a) {
    while (++a->i < a->argc) {
        const char *s = a->argv[a->i];
        if (s[0] == '-' && s[1] != '\0') {
            a->arg = s;
            const char *eq = s[1] == '-' ? strchr(s, '=') : NULL;
            a->inline_value = eq ? eq + 1 : NULL;
            return 1;
        }
        if (a->n_positional < (int)(sizeof a->positional / sizeof a->positional[0]))
            a->positional[a->n_positional++] = s;
        else {
            fprintf(stderr, "%s: too many arguments ('%s')\n", a->cmd, s);
            a->failed = 1;
        }
    }
    return 0;
}

int pam_args_is(pam_args *a, const char *short_name, const char *long_name) {
    if (short_name && !strcmp(a->arg, short_name)) return 1;
    if (!long_name) return 0;
    size_t n = strlen(long_name);
    return !strncmp(a->arg, long_name, n) && (a->arg[n] == '\0' || (a->arg[n] == '=' && a->inline_value));
}

const char *pam_args_value(pam_args *a) {
    if (a->inline_value) return a->inline_value;
    if (a->i + 1 >= a->argc) {
        fprintf(stderr, "%s: %s needs a value\n", a->cmd, a->arg);
        a->failed = 1;
        return NULL;
    }
    return a->argv[++a->i];
}

int pam_args_long(pam_args *a, long lo, long hi, long *out) {
    const char *flag = a->arg, *v = pam_args_value(a);
    if (!v) return 0;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "%s: %s expects an integer in [%ld, %ld], got '%s'\n", a->cmd, flag, lo, hi, v);
        a->failed = 1;
        return 0;
    }
    *out = x;
    return 1;
}

int pam_args_double(pam_args *a, double lo, double hi, double *out) {
    const char *flag = a->arg, *v = pam_args_value(a);
    if (!v) return 0;
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || *end || end == v || !isfinite(x) || x < lo || x > hi) {
        fprintf(stderr, "%s: %s expects a number in [%g, %g], got '%s'\n", a->cmd, flag, lo, hi, v);
        a->failed = 1;
        return 0;
    }
    *out = x;
    return 1;
}

void pam_args_unknown(pam_args *a) {
    fprintf(stderr, "%s: unknown option '%s'\n", a->cmd, a->arg);
    a->failed = 1;
}
