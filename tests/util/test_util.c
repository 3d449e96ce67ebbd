#include "util/test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model/convert.h"

const char *pam_test_shared(const char *rel) {
    static char buf[4096];
    const char *dir = getenv("PAM_SHARED_DIR");
    snprintf(buf, sizeof buf, "%s/%s", dir && *dir ? dir : PAM_SHARED_DIR, rel);
    return buf;
}

const char *pam_test_tmp(const char *name) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/test-tmp", PAM_BUILD_DIR);
    mkdir(buf, 0755);
    snprintf(buf, sizeof buf, "%s/test-tmp/%s", PAM_BUILD_DIR, name);
    return buf;
}

char *pam_test_read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        if (size) *size = (size_t)n;
    }
    return buf;
}

uint64_t pam_test_rng_u64(pam_test_rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

double pam_test_rng_uniform(pam_test_rng *r, double lo, double hi) {
    return lo + (hi - lo) * ((double)(pam_test_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0));
}

double pam_test_rng_normal(pam_test_rng *r) {
    double u1 = pam_test_rng_uniform(r, 1e-300, 1.0), u2 = pam_test_rng_uniform(r, 0.0, 1.0);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

pam_status pam_test_stories260k(const char *name, char *path, size_t cap) {
    snprintf(path, cap, "%s", pam_test_tmp(name));
    /* pam_test_shared returns a static buffer: copy the first path */
    char *ckpt = strdup(pam_test_shared("models/stories260K/stories260K.bin"));
    if (!ckpt) return PAM_ERR_NOMEM;
    pam_status st = pam_convert_llama2c(ckpt, pam_test_shared("models/stories260K/tok512.bin"), path, PAM_DT_F32);
    free(ckpt);
    return st;
}
