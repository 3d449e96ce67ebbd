#include <stdio.h>

#include "cli/cli.h"

int pam_cli_convert(int argc, char **argv) {
    fprintf(stderr, "pam convert: not built yet\n");
    return 1;
}
