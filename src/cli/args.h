/* Minimal command-line parsing shared by the subcommands: flags with values
 * as "-x V", "--name V" or "--name=V". Errors are printed once and set
 * `failed`; parsing continues so every bad flag is reported. */
#ifndef PAM_CLI_ARGS_H
#define PAM_CLI_ARGS_H

typedef struct pam_args {
    int argc;
    char **argv;
    int i;
    const char *cmd;
    const char *arg;    /* current argument */
    const char *inline_value; /* value after '=' */
    int failed;
    int n_positional;
    const char *positional[8];
} pam_args;

void pam_args_init(pam_args *a, int argc, char **argv, const char *cmd);
/* Advances to the next flag; positional arguments are collected, not returned. */
int pam_args_next(pam_args *a);
int pam_args_is(pam_args *a, const char *short_name, const char *long_name);
/* The flag's value (NULL and an error if missing). */
const char *pam_args_value(pam_args *a);
int pam_args_long(pam_args *a, long lo, long hi, long *out);
int pam_args_double(pam_args *a, double lo, double hi, double *out);
void pam_args_unknown(pam_args *a);

#endif
