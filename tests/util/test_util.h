/* Shared helpers for the cmocka tests. Tests read models from PAM_SHARED_DIR
 * (../shared beside the checkout) and write scratch files under the build dir. */
#ifndef PAM_TESTS_TEST_UTIL_H
#define PAM_TESTS_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka needs the three headers above first */
#include <cmocka.h>

#include "pam.h"

/* Path of a file under ../shared (static buffer, valid until the next call). */
const char *pam_test_shared(const char *rel);
/* A fresh scratch path under the build dir: build/test-tmp/<name>. */
const char *pam_test_tmp(const char *name);
/* Reads a whole file; returns NULL if missing. Caller frees. */
char *pam_test_read_file(const char *path, size_t *size);

/* Converts ../shared's stories260K checkpoint (llama2.c) to an F32 GGUF
 * at pam_test_tmp(name) and copies that path into path (cap bytes). The
 * converter's status; its message is pam_last_error(). */
pam_status pam_test_stories260k(const char *name, char *path, size_t cap);

/* Deterministic PRNG for test data (splitmix64). */
typedef struct {
    uint64_t s;
} pam_test_rng;
uint64_t pam_test_rng_u64(pam_test_rng *r);
/* Uniform in [lo, hi). */
double pam_test_rng_uniform(pam_test_rng *r, double lo, double hi);
/* Standard normal (Box-Muller). */
double pam_test_rng_normal(pam_test_rng *r);

#endif
