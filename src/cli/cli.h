#ifndef PAM_CLI_CLI_H
#define PAM_CLI_CLI_H

/* Each subcommand parses its own flags (argv[0] is the subcommand name) and
 * returns the process exit status. */
int pam_cli_run(int argc, char **argv);
int pam_cli_inspect(int argc, char **argv);
int pam_cli_convert(int argc, char **argv);
int pam_cli_gen_model(int argc, char **argv);
int pam_cli_bench(int argc, char **argv);
/* `pam bench kv`: argv[0] is "kv". */
int pam_cli_bench_kv(int argc, char **argv);
int pam_cli_serve(int argc, char **argv);
int pam_cli_perplexity(int argc, char **argv);
int pam_cli_locality(int argc, char **argv);
int pam_cli_sim(int argc, char **argv);

#endif
