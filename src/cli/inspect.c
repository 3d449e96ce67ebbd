#include <stdio.h>

#include "cli/cli.h"

int pam_cli_inspect(int argc, char **argv) {
    fprintf(stderr, "pam inspect: not built yet\n");
    return 1;
}
