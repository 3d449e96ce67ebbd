#include <stdio.h>

#include "cli/cli.h"

int pam_cli_run(int argc, char **argv) {
    fprintf(stderr, "pam run: not built yet\n");
    return 1;
}
