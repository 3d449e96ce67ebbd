#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: pam COMMAND [options]\n"
            "\n"
            "commands:\n"
            "  run      -m MODEL -p PROMPT [-n N] [sampling flags] [-t THREADS]  generate text\n"
            "  serve    -m MODEL [--port N] [--parallel N]              OpenAI-compatible HTTP server\n"
            "  inspect  MODEL                                      print metadata and tensors\n"
            "  convert  CHECKPOINT.bin TOKENIZER.bin -o OUT.gguf   llama2.c -> GGUF\n"
            "  gen-model --shape SHAPE --type TYPE -o OUT.gguf     random-weight model in a real shape\n"
            "  bench    -m MODEL [-t THREADS] [--depth LIST]       decode/prefill speed vs memory bandwidth\n"
            "  perplexity -m MODEL -f TEXT [-c CTX]                perplexity (llama.cpp's method), KL vs exact\n"
            "  locality -m MODEL -f TEXT [-c CTX]                  where attention mass goes, block by block\n"
            "  sim      [--model NAME] [--systems LIST] [--json]   simulated PIM hardware (HBM, DDR, SSD)\n"
            "\n"
            "`pam COMMAND --help` describes a command's options.\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "run")) return pam_cli_run(argc - 1, argv + 1);
    if (!strcmp(cmd, "serve")) return pam_cli_serve(argc - 1, argv + 1);
    if (!strcmp(cmd, "inspect")) return pam_cli_inspect(argc - 1, argv + 1);
    if (!strcmp(cmd, "convert")) return pam_cli_convert(argc - 1, argv + 1);
    if (!strcmp(cmd, "gen-model")) return pam_cli_gen_model(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench")) return pam_cli_bench(argc - 1, argv + 1);
    if (!strcmp(cmd, "perplexity")) return pam_cli_perplexity(argc - 1, argv + 1);
    if (!strcmp(cmd, "locality")) return pam_cli_locality(argc - 1, argv + 1);
    if (!strcmp(cmd, "sim")) return pam_cli_sim(argc - 1, argv + 1);
    fprintf(stderr, "pam: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
