/* Attention over quantised K/V codes (kernels/attnq.h): the reference
 * partial against a float64 softmax over the decoded values, and every ISA
 * level the CPU has against the reference, for int8 and int4, head sizes and
 * groups that take each SIMD path and its fallbacks, query-head counts that
 * fill and do not fill a register block, and token counts around the vector
 * widths. The buffers are allocated to their exact sizes, so the sanitizer
 * build catches a read past any of them. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fp16.h"
#include "kernels/attnq.h"
#include "kernels/cpu.h"
#include "util/test_util.h"

#define COUNT(a) (int)(sizeof(a) / sizeof((a)[0]))

typedef struct qcase {
    int bits, hd, n_q;
    int64_t n;
    pam_attnq_kv kv;
    uint8_t *kc, *vc;
    uint16_t *kpar, *vpar;
    float *q, *K, *V; /* K, V: decoded [n][hd] */
} qcase;

static uint16_t f16_of(double x) { return pam_f32_to_f16((float)x); }

/* Random codes and parameters. Rows carry slack (k_row_bytes and
 * v_par_stride beyond n) as a tier's block larger than n does. */
static void qcase_make(qcase *c, int bits, int hd, int group, int n_q, int64_t n, int slack, pam_test_rng *r) {
    memset(c, 0, sizeof *c);
    c->bits = bits;
    c->hd = hd;
    c->n_q = n_q;
    c->n = n;
    const int qmax = (1 << bits) - 1, ng = hd / group;
    const size_t k_row_bytes = (size_t)(n + slack), k_rows = bits == 8 ? (size_t)hd : (size_t)hd / 2;
    const size_t par_stride = (size_t)n + (size_t)slack;
    c->kc = malloc(k_rows * k_row_bytes);
    c->vc = malloc((size_t)n * (size_t)hd * (size_t)bits / 8);
    c->kpar = malloc(sizeof(uint16_t) * 2 * (size_t)hd);
    c->vpar = malloc(sizeof(uint16_t) * 2 * (size_t)ng * par_stride);
    c->q = malloc(sizeof(float) * (size_t)n_q * (size_t)hd);
    c->K = malloc(sizeof(float) * (size_t)n * (size_t)hd);
    c->V = malloc(sizeof(float) * (size_t)n * (size_t)hd);
    assert_true(c->kc && c->vc && c->kpar && c->vpar && c->q && c->K && c->V);
    for (size_t i = 0; i < k_rows * k_row_bytes; i++) c->kc[i] = (uint8_t)pam_test_rng_u64(r);
    for (size_t i = 0; i < (size_t)n * (size_t)hd * (size_t)bits / 8; i++) c->vc[i] = (uint8_t)pam_test_rng_u64(r);
    /* values about N(0,1): min near -range/2, range up to 3 */
    for (int d = 0; d < hd; d++) {
        double range = pam_test_rng_uniform(r, 0.0, 3.0);
        c->kpar[d] = f16_of(pam_test_rng_normal(r) * 0.3 - range / 2);
        c->kpar[hd + d] = f16_of(range / qmax);
    }
    for (size_t i = 0; i < (size_t)ng; i++)
        for (size_t t = 0; t < par_stride; t++) {
            double range = pam_test_rng_uniform(r, 0.0, 3.0);
            c->vpar[i * 2 * par_stride + t] = f16_of(pam_test_rng_normal(r) * 0.3 - range / 2);
            c->vpar[i * 2 * par_stride + par_stride + t] = f16_of(range / qmax);
        }
    for (int i = 0; i < n_q * hd; i++) c->q[i] = (float)pam_test_rng_normal(r);
    c->kv = (pam_attnq_kv){.bits = bits,
                           .group = group,
                           .k_codes = c->kc,
                           .k_row_bytes = k_row_bytes,
                           .k_min = c->kpar,
                           .k_scale = c->kpar + hd,
                           .v_codes = c->vc,
                           .v_min = c->vpar,
                           .v_scale = c->vpar + par_stride,
                           .v_par_stride = 2 * par_stride};
    pam_attnq_decode(&c->kv, hd, n, c->K, c->V);
}

static void qcase_free(qcase *c) {
    free(c->kc);
    free(c->vc);
    free(c->kpar);
    free(c->vpar);
    free(c->q);
    free(c->K);
    free(c->V);
}

/* Float64 attention of head g over the decoded values: normalised output,
 * max score and sum of exponentials. */
static void oracle(const qcase *c, int g, double scale, double *out, double *m_out, double *l_out) {
    double *s = malloc(sizeof(double) * (size_t)c->n), mx = -INFINITY, sum = 0;
    for (int64_t t = 0; t < c->n; t++) {
        double acc = 0;
        for (int d = 0; d < c->hd; d++) acc += (double)c->q[g * c->hd + d] * c->K[(size_t)t * c->hd + d];
        s[t] = acc * scale;
        mx = fmax(mx, s[t]);
    }
    for (int d = 0; d < c->hd; d++) out[d] = 0;
    for (int64_t t = 0; t < c->n; t++) {
        double p = exp(s[t] - mx);
        sum += p;
        for (int d = 0; d < c->hd; d++) out[d] += p * c->V[(size_t)t * c->hd + d];
    }
    for (int d = 0; d < c->hd; d++) out[d] /= sum;
    *m_out = mx;
    *l_out = sum;
    free(s);
}

typedef struct qout {
    float *m, *l, *o, *scratch;
} qout;

static void run(const qcase *c, float scale, int ref, qout *a) {
    size_t ns = pam_attnq_scratch_floats(c->n_q, c->hd, c->kv.group, c->n);
    a->m = malloc(sizeof(float) * (size_t)c->n_q);
    a->l = malloc(sizeof(float) * (size_t)c->n_q);
    a->o = malloc(sizeof(float) * (size_t)c->n_q * (size_t)c->hd);
    a->scratch = malloc(sizeof(float) * ns);
    assert_true(a->m && a->l && a->o && a->scratch);
    if (ref)
        pam_attnq_partial_ref(c->q, c->n_q, c->hd, scale, &c->kv, c->n, a->m, a->l, a->o, a->scratch);
    else
        pam_attnq_partial(c->q, c->n_q, c->hd, scale, &c->kv, c->n, a->m, a->l, a->o, a->scratch);
}

static void qout_free(qout *a) {
    free(a->m);
    free(a->l);
    free(a->o);
    free(a->scratch);
}

/* max over heads and channels of |o/l - want| / max |want|, and the worst
 * relative error of l e^m (defined up to the shared max). */
static void errors(const qcase *c, const qout *a, const double *want, const double *wm, const double *wl,
                   double *o_err, double *l_err) {
    double num = 0, den = 0, le = 0;
    for (int g = 0; g < c->n_q; g++) {
        for (int d = 0; d < c->hd; d++) {
            num = fmax(num, fabs((double)a->o[g * c->hd + d] / a->l[g] - want[g * c->hd + d]));
            den = fmax(den, fabs(want[g * c->hd + d]));
        }
        le = fmax(le, fabs((double)a->l[g] * exp((double)a->m[g] - wm[g]) - wl[g]) / wl[g]);
    }
    *o_err = num / (den > 0 ? den : 1);
    *l_err = le;
}

static int n_isas(void) { return (int)pam_cpu_detect() + 1; }

static void test_partial_every_isa(void **state) {
    const int bitss[] = {8, 4};
    /* (head_dim, group): the AVX-512 and AVX2 paths with int4 V in 32- and
     * 16-channel steps and their 16- and 8-channel remainders, AVX2 only
     * (group 8), the reference only (head_dim 6) */
    const int shapes[][2] = {{128, 32}, {64, 64}, {96, 32}, {48, 48}, {16, 16}, {80, 16}, {64, 8}, {24, 24}, {8, 8}, {6, 6}};
    const int nqs[] = {1, 2, 3, 4, 5, 8, 9, 12};
    const int64_t ns[] = {1, 3, 7, 8, 9, 15, 16, 17, 33};
    pam_test_rng r = {21};
    double worst_ref = 0, worst_isa[PAM_ISA_COUNT] = {0};
    int n_cases = 0;
    for (int bi = 0; bi < COUNT(bitss); bi++)
        for (int si = 0; si < COUNT(shapes); si++)
            for (int qi = 0; qi < COUNT(nqs); qi++)
                for (int ni = 0; ni < COUNT(ns); ni++) {
                    const int hd = shapes[si][0], group = shapes[si][1];
                    qcase c;
                    qcase_make(&c, bitss[bi], hd, group, nqs[qi], ns[ni], (int)(pam_test_rng_u64(&r) % 3), &r);
                    const float scale = 1.0f / sqrtf((float)hd);
                    double *want = malloc(sizeof(double) * (size_t)c.n_q * (size_t)hd);
                    double *wm = malloc(sizeof(double) * (size_t)c.n_q), *wl = malloc(sizeof(double) * (size_t)c.n_q);
                    for (int g = 0; g < c.n_q; g++) oracle(&c, g, scale, want + (size_t)g * hd, &wm[g], &wl[g]);
                    qout ref;
                    run(&c, scale, 1, &ref);
                    double oe, le;
                    errors(&c, &ref, want, wm, wl, &oe, &le);
                    worst_ref = fmax(worst_ref, fmax(oe, le));
                    if (!(oe <= 2e-5 && le <= 2e-5)) {
                        fprintf(stderr, "ref int%d hd=%d group=%d n_q=%d n=%lld: o %.3g l %.3g vs f64\n", c.bits, hd,
                                group, c.n_q, (long long)c.n, oe, le);
                        fail();
                    }
                    for (int isa = 0; isa < n_isas(); isa++) {
                        assert_int_equal(pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)isa)), PAM_OK);
                        qout a;
                        run(&c, scale, 0, &a);
                        errors(&c, &a, want, wm, wl, &oe, &le);
                        worst_isa[isa] = fmax(worst_isa[isa], fmax(oe, le));
                        /* m agrees to rounding of the scores; o and l to the
                         * same bound as the reference against float64 */
                        int bad = !(oe <= 2e-5 && le <= 2e-5);
                        for (int g = 0; g < c.n_q; g++)
                            if (!(fabs(a.m[g] - ref.m[g]) <= 1e-5 * (1 + fabs(ref.m[g])))) bad = 1;
                        if (bad) {
                            fprintf(stderr, "%s int%d hd=%d group=%d n_q=%d n=%lld: o %.3g l %.3g vs f64\n",
                                    pam_cpu_isa(), c.bits, hd, group, c.n_q, (long long)c.n, oe, le);
                            fail();
                        }
                        qout_free(&a);
                    }
                    qout_free(&ref);
                    free(want);
                    free(wm);
                    free(wl);
                    qcase_free(&c);
                    n_cases++;
                }
    assert_int_equal(pam_cpu_set_isa(NULL), PAM_OK);
    printf("# %d cases; worst error vs float64: ref %.3g", n_cases, worst_ref);
    for (int isa = 0; isa < n_isas(); isa++) printf(", %s %.3g", pam_cpu_isa_name((pam_isa)isa), worst_isa[isa]);
    printf("\n");
}

/* The same call twice gives the same bits, at every level. */
static void test_partial_deterministic(void **state) {
    pam_test_rng r = {22};
    for (int bits = 4; bits <= 8; bits += 4) {
        qcase c;
        qcase_make(&c, bits, 128, 32, 4, 16, 0, &r);
        for (int isa = 0; isa < n_isas(); isa++) {
            assert_int_equal(pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)isa)), PAM_OK);
            qout a, b;
            run(&c, 0.088f, 0, &a);
            run(&c, 0.088f, 0, &b);
            assert_memory_equal(a.m, b.m, sizeof(float) * 4);
            assert_memory_equal(a.l, b.l, sizeof(float) * 4);
            assert_memory_equal(a.o, b.o, sizeof(float) * 4 * 128);
            qout_free(&a);
            qout_free(&b);
        }
        qcase_free(&c);
    }
    assert_int_equal(pam_cpu_set_isa(NULL), PAM_OK);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_partial_every_isa),
        cmocka_unit_test(test_partial_deterministic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
