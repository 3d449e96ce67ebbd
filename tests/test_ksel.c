/* The per-machine kernel chooser: registration, PAM_ISA, forcing, and the
 * cache of choices (used when valid, ignored when corrupt, for another CPU,
 * naming an unknown variant, or unwritable). No assertion depends on which
 * variant is faster: timing only ever decides among equally correct ones. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels/cpu.h"
#include "kernels/ksel.h"
#include "kernels/quant.h"
#include "util/test_util.h"

/* A kernel whose variants spin for a given number of steps. */
static volatile unsigned g_spin;
static int g_setups, g_teardowns;

static void *spin_setup(void) {
    g_setups++;
    return (void *)(uintptr_t)&g_spin;
}
static void spin_run(void *ctx, const void *impl) {
    const int steps = *(const int *)impl;
    for (int i = 0; i < steps; i++) g_spin = g_spin * 3u + 1u;
}
static void spin_teardown(void *ctx) { g_teardowns++; }
static int never(void) { return 0; }

static const int k_steps[4] = {100, 2000, 50, 10};
static const pam_ksel_variant k_spin_v[] = {
    {.name = "slow", .isa = PAM_ISA_SCALAR, .impl = &k_steps[1]},
    {.name = "plain", .isa = PAM_ISA_SCALAR, .impl = &k_steps[0]},
    {.name = "wide", .isa = PAM_ISA_AVX2, .impl = &k_steps[2]},
    {.name = "absent", .isa = PAM_ISA_SCALAR, .usable = never, .impl = &k_steps[3]},
};
static const pam_ksel_kernel k_spin = {.name = "test.spin",
                                       .variants = k_spin_v,
                                       .n_variants = 4,
                                       .setup = spin_setup,
                                       .run = spin_run,
                                       .teardown = spin_teardown};

static char g_cache_home[512];

/* A fresh, empty cache directory for each test, and the chooser forgets. */
static void fresh_cache(const char *name) {
    snprintf(g_cache_home, sizeof g_cache_home, "%s", pam_test_tmp(name));
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_cache_home);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(mkdir(g_cache_home, 0755), 0);
    assert_int_equal(setenv("XDG_CACHE_HOME", g_cache_home, 1), 0);
    pam_ksel_forget();
}

static void write_file(const char *path, const char *text) {
    char dir[600];
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = 0;
    (void)mkdir(dir, 0755);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int spin_id(void) {
    int id = pam_ksel_register(&k_spin);
    assert_true(id >= 0);
    return id;
}

/* Runs first: PAM_ISA is read once, on the level's first use. */
static void test_env_forces_level(void **state) {
    fresh_cache("ksel_env");
    assert_int_equal(setenv("PAM_ISA", "scalar", 1), 0);
    assert_int_equal(pam_cpu_isa_level(), PAM_ISA_SCALAR);
    assert_true(pam_cpu_isa_forced());
    int id = pam_vec_kernel_id(PAM_DT_Q8_0);
    assert_true(id >= 0);
    const pam_ksel_variant *v = pam_ksel_choice(id);
    assert_string_equal(v->name, "scalar");
    assert_string_equal(pam_ksel_how(id), "only");
    /* the spin kernel has two scalar variants: chosen between them only */
    const pam_ksel_variant *s = pam_ksel_choice(spin_id());
    assert_int_equal(s->isa, PAM_ISA_SCALAR);
    assert_true(strcmp(s->name, "slow") == 0 || strcmp(s->name, "plain") == 0);
    assert_int_equal(pam_cpu_set_isa(NULL), PAM_OK);
    assert_false(pam_cpu_isa_forced());
    unsetenv("PAM_ISA");
}

static void test_register(void **state) {
    int id = spin_id();
    assert_int_equal(pam_ksel_register(&k_spin), id); /* same name: same id */
    assert_int_equal(pam_ksel_find("test.spin"), id);
    assert_int_equal(pam_ksel_find("test.none"), -1);
    assert_string_equal(pam_ksel_name(id), "test.spin");
    assert_null(pam_ksel_name(-1));
    assert_null(pam_ksel_choice(pam_ksel_count()));
    assert_int_equal(pam_ksel_n_variants(id), 4);
    pam_ksel_kernel bad = k_spin;
    bad.name = "has space";
    assert_int_equal(pam_ksel_register(&bad), PAM_ERR_INVALID);
    bad = k_spin;
    bad.n_variants = 0;
    assert_int_equal(pam_ksel_register(&bad), PAM_ERR_INVALID);
    bad = k_spin;
    bad.run = NULL;
    assert_int_equal(pam_ksel_register(&bad), PAM_ERR_INVALID);
    /* every matvec type is registered */
    const pam_dtype types[] = {PAM_DT_F32, PAM_DT_F16, PAM_DT_BF16, PAM_DT_Q8_0, PAM_DT_Q4_0, PAM_DT_Q4_K, PAM_DT_Q6_K};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) assert_true(pam_vec_kernel_id(types[i]) >= 0);
    assert_int_equal(pam_vec_kernel_id(PAM_DT_Q8_K), -1);
}

static void test_timed_then_cached(void **state) {
    fresh_cache("ksel_timed");
    int id = spin_id();
    g_setups = g_teardowns = 0;
    const pam_ksel_variant *v = pam_ksel_choice(id);
    assert_non_null(v);
    assert_true(pam_ksel_can_run(v));
    assert_string_not_equal(v->name, "absent");
    if (pam_cpu_detect() < PAM_ISA_AVX2) assert_string_not_equal(v->name, "wide");
    assert_string_equal(pam_ksel_how(id), "timed");
    assert_int_equal(g_setups, 1);
    assert_int_equal(g_teardowns, 1);
    /* fixed from now on: no second timing */
    for (int i = 0; i < 10; i++) assert_ptr_equal(pam_ksel_choice(id), v);
    assert_int_equal(g_setups, 1);
    /* the file names this CPU and the choice */
    size_t size = 0;
    char *text = pam_test_read_file(pam_ksel_cache_path(), &size);
    assert_non_null(text);
    char want[256];
    snprintf(want, sizeof want, "pam-ksel 1\ncpu %s\n", pam_cpu_model());
    assert_memory_equal(text, want, strlen(want));
    snprintf(want, sizeof want, "test.spin auto %s\n", v->name);
    assert_non_null(strstr(text, want));
    free(text);
    /* a new process (here: forget) takes it from the cache without timing */
    pam_ksel_forget();
    assert_ptr_equal(pam_ksel_choice(id), v);
    assert_string_equal(pam_ksel_how(id), "cached");
    assert_int_equal(g_setups, 1);
}

/* A valid cache is obeyed even when it names the slowest variant. */
static void test_cache_is_used(void **state) {
    fresh_cache("ksel_used");
    int id = spin_id();
    char text[512];
    snprintf(text, sizeof text, "pam-ksel 1\ncpu %s\ntest.spin auto slow\n", pam_cpu_model());
    write_file(pam_ksel_cache_path(), text);
    pam_ksel_forget();
    assert_string_equal(pam_ksel_choice(id)->name, "slow");
    assert_string_equal(pam_ksel_how(id), "cached");
}

/* Each defect makes the file count as absent: the choice is timed, nothing
 * fails, and the file is rewritten whole. */
static void test_bad_caches_ignored(void **state) {
    char model_line[256];
    snprintf(model_line, sizeof model_line, "cpu %s\n", pam_cpu_model());
    const char *bodies[] = {
        "garbage\n\x01\x02",
        "pam-ksel 2\n%stest.spin auto slow\n",                 /* another format version */
        "pam-ksel 1\ncpu Some Other CPU\ntest.spin auto slow\n", /* another model */
        "pam-ksel 1\n%stest.spin auto\n",                      /* short line */
        "pam-ksel 1\n%stest.spin sometimes slow\n",            /* unknown setting */
        "pam-ksel 1\n%stest.spin auto slow extra\n",           /* long line */
        "pam-ksel 1\n%stest.spin auto slow",                   /* torn: no newline */
        "",                                                    /* empty */
    };
    int id = spin_id();
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        fresh_cache("ksel_bad");
        char text[512];
        snprintf(text, sizeof text, bodies[i], model_line);
        write_file(pam_ksel_cache_path(), text);
        pam_ksel_forget();
        assert_non_null(pam_ksel_choice(id));
        if (strcmp(pam_ksel_how(id), "timed") != 0) {
            fprintf(stderr, "cache body %zu was not ignored\n", i);
            fail();
        }
        size_t size = 0;
        char *now = pam_test_read_file(pam_ksel_cache_path(), &size);
        assert_non_null(now);
        assert_memory_equal(now, "pam-ksel 1\n", 11);
        free(now);
    }
    /* a variant this build lacks, or this CPU cannot run: that line only */
    fresh_cache("ksel_unknown");
    char text[512];
    snprintf(text, sizeof text, "pam-ksel 1\n%stest.spin auto absent\nmatvec.q4_0 auto nosuch\n", model_line);
    write_file(pam_ksel_cache_path(), text);
    pam_ksel_forget();
    assert_string_not_equal(pam_ksel_choice(id)->name, "absent");
    assert_string_equal(pam_ksel_how(id), "timed");
}

static void test_unwritable_cache(void **state) {
    fresh_cache("ksel_ro");
    /* XDG_CACHE_HOME is a regular file: no directory can be made under it */
    char file[600];
    snprintf(file, sizeof file, "%s/not-a-dir", g_cache_home);
    write_file(file, "x");
    assert_int_equal(setenv("XDG_CACHE_HOME", file, 1), 0);
    pam_ksel_forget();
    int id = spin_id();
    assert_non_null(pam_ksel_choice(id));
    assert_string_equal(pam_ksel_how(id), "timed");
    /* and with no cache location at all */
    unsetenv("XDG_CACHE_HOME");
    char *home = getenv("HOME") ? strdup(getenv("HOME")) : NULL;
    unsetenv("HOME");
    pam_ksel_forget();
    assert_string_equal(pam_ksel_cache_path(), "");
    assert_non_null(pam_ksel_choice(id));
    assert_string_equal(pam_ksel_how(id), "timed");
    if (home) {
        setenv("HOME", home, 1);
        free(home);
    }
}

static void test_force_and_isa(void **state) {
    fresh_cache("ksel_force");
    int id = spin_id();
    assert_int_equal(pam_ksel_force(id, "nosuch"), PAM_ERR_INVALID);
    assert_int_equal(pam_ksel_force(id, "absent"), PAM_ERR_UNSUPPORTED);
    assert_int_equal(pam_ksel_force(-1, "slow"), PAM_ERR_INVALID);
    assert_int_equal(pam_ksel_force(id, "slow"), PAM_OK);
    assert_string_equal(pam_ksel_choice(id)->name, "slow");
    assert_string_equal(pam_ksel_how(id), "forced");
    assert_int_equal(pam_ksel_force(id, NULL), PAM_OK);
    /* a forced level with one variant of its own; above it, the best lower
     * level's variants stand in */
    if (pam_cpu_detect() >= PAM_ISA_AVX2) {
        assert_int_equal(pam_cpu_set_isa("avx2"), PAM_OK);
        assert_string_equal(pam_ksel_choice(id)->name, "wide");
        assert_string_equal(pam_ksel_how(id), "only");
    }
    if (pam_cpu_detect() >= PAM_ISA_AVX512) {
        assert_int_equal(pam_cpu_set_isa("avx512"), PAM_OK);
        assert_string_equal(pam_ksel_choice(id)->name, "wide");
    }
    /* matvec: each forced level runs that level's kernels */
    for (int isa = 0; isa <= (int)pam_cpu_detect(); isa++) {
        assert_int_equal(pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)isa)), PAM_OK);
        for (pam_dtype t = 0; t < PAM_DT_COUNT; t++) {
            int mv = pam_vec_kernel_id(t);
            if (mv >= 0) assert_int_equal((int)pam_ksel_choice(mv)->isa, isa);
        }
    }
    assert_int_equal(pam_cpu_set_isa(NULL), PAM_OK);
    /* the free choice never picks a variant the CPU lacks */
    for (pam_dtype t = 0; t < PAM_DT_COUNT; t++) {
        int mv = pam_vec_kernel_id(t);
        if (mv >= 0) assert_true(pam_ksel_can_run(pam_ksel_choice(mv)));
    }
}

/* A workload that uses another chosen kernel: the inner choice happens
 * inside the outer one's timing, on the same thread, without deadlock. */
static int g_inner_id = -1;
static void nest_run(void *ctx, const void *impl) {
    const pam_ksel_variant *v = pam_ksel_choice(g_inner_id);
    spin_run(ctx, v->impl);
    spin_run(ctx, impl);
}
static const pam_ksel_variant k_nest_v[] = {
    {.name = "a", .isa = PAM_ISA_SCALAR, .impl = &k_steps[0]},
    {.name = "b", .isa = PAM_ISA_SCALAR, .impl = &k_steps[2]},
};
static const pam_ksel_kernel k_nest = {
    .name = "test.nest", .variants = k_nest_v, .n_variants = 2, .setup = spin_setup, .run = nest_run, .teardown = spin_teardown};

static void test_nested_choice(void **state) {
    fresh_cache("ksel_nest");
    g_inner_id = spin_id();
    int id = pam_ksel_register(&k_nest);
    assert_true(id >= 0);
    assert_non_null(pam_ksel_choice(id));
    assert_string_equal(pam_ksel_how(id), "timed");
    assert_string_equal(pam_ksel_how(g_inner_id), "timed");
}

static void test_cpu_model(void **state) {
    const char *m = pam_cpu_model();
    assert_non_null(m);
    assert_true(m[0] != 0);
    assert_null(strchr(m, '\n'));
    assert_true(m[0] != ' ' && m[strlen(m) - 1] != ' ');
    printf("# cpu model: %s\n", m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_env_forces_level), cmocka_unit_test(test_register),
        cmocka_unit_test(test_timed_then_cached), cmocka_unit_test(test_cache_is_used),
        cmocka_unit_test(test_bad_caches_ignored), cmocka_unit_test(test_unwritable_cache),
        cmocka_unit_test(test_force_and_isa),     cmocka_unit_test(test_nested_choice),
        cmocka_unit_test(test_cpu_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
