/* KV types computed on directly (kernels/attnkv.h): the codec of every type
 * (round trip within its quantisation bound, partial writes), and the
 * partial of every type at every ISA level the CPU has against a float64
 * softmax over the decoded K/V, with the max score and the sum of
 * exponentials (the tier's blk_m/blk_l by-products), for head sizes that take
 * each SIMD path and the scalar fallback, blocks of 16, 32 and 13 slots
 * (not a multiple of 4), partial blocks and query-head counts that fill and
 * do not fill a register block. The data has tails: outlier channels of K and
 * scattered outliers in K, V and q. Buffers have their exact sizes, so the
 * sanitizer build catches a read past any of them. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fp16.h"
#include "kernels/attnkv.h"
#include "kernels/cpu.h"
#include "util/test_util.h"

#define COUNT(a) (int)(sizeof(a) / sizeof((a)[0]))

static int n_isas(void) { return (int)pam_cpu_detect() + 1; }

/* About N(0,1) with tails: 1 in 100 values x big, and for K every 7th
 * channel scaled x 6 (the outlier channels keys have). */
static void fill_tails(float *x, int n_rows, int D, int k_like, double big, pam_test_rng *r) {
    for (int t = 0; t < n_rows; t++)
        for (int d = 0; d < D; d++) {
            double v = pam_test_rng_normal(r);
            if (pam_test_rng_u64(r) % 100 == 0) v *= big;
            if (k_like && d % 7 == 3) v *= 6;
            x[(size_t)t * D + d] = (float)v;
        }
}

typedef struct kcase {
    pam_kv_type type;
    int D, B, n, nq;
    float *q, *k, *v;   /* original rows [B][D], q [nq][D] */
    float *dk, *dv;     /* decoded [n][D] */
    uint8_t *run;
} kcase;

static void kcase_make(kcase *c, pam_kv_type type, int D, int B, int n, int nq, pam_test_rng *r) {
    memset(c, 0, sizeof *c);
    *c = (kcase){.type = type, .D = D, .B = B, .n = n, .nq = nq};
    c->q = malloc(sizeof(float) * (size_t)nq * D);
    c->k = malloc(sizeof(float) * (size_t)B * D);
    c->v = malloc(sizeof(float) * (size_t)B * D);
    c->dk = malloc(sizeof(float) * (size_t)B * D);
    c->dv = malloc(sizeof(float) * (size_t)B * D);
    c->run = malloc(pam_kvh_bytes(type, D, B));
    assert_true(c->q && c->k && c->v && c->dk && c->dv && c->run);
    fill_tails(c->q, nq, D, 0, 4, r);
    fill_tails(c->k, B, D, 1, 10, r);
    fill_tails(c->v, B, D, 0, 20, r);
    /* slots never written hold garbage (NaN bytes included): never used */
    memset(c->run, 0xff, pam_kvh_bytes(type, D, B));
    /* written in two pieces, as a block grows */
    int h = n / 2;
    if (h > 0) pam_kvh_write(type, D, B, c->run, 0, h, c->k, c->v, (size_t)D);
    pam_kvh_write(type, D, B, c->run, h, n - h, c->k + (size_t)h * D, c->v + (size_t)h * D, (size_t)D);
    pam_kvh_read(type, D, B, c->run, n, c->dk, c->dv, (size_t)D);
}

static void kcase_free(kcase *c) {
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->dk);
    free(c->dv);
    free(c->run);
}

/* The decoded values are within the type's rounding of the originals. */
static void check_codec(const kcase *c) {
    const int G = c->D % 32 == 0 ? 32 : c->D;
    for (int which = 0; which < 2; which++) {
        const float *x = which ? c->v : c->k, *y = which ? c->dv : c->dk;
        for (int t = 0; t < c->n; t++)
            for (int g = 0; g < c->D / G; g++) {
                double amax = 0;
                for (int i = 0; i < G; i++) amax = fmax(amax, fabs(x[(size_t)t * c->D + g * G + i]));
                for (int i = 0; i < G; i++) {
                    const int d = g * G + i;
                    double a = x[(size_t)t * c->D + d], b = y[(size_t)t * c->D + d], tol;
                    switch (c->type) {
                    case PAM_KV_F32: tol = 0; break;
                    case PAM_KV_F16: tol = fabs(a) * 0x1p-11 + 1e-7; break;
                    /* f16, then bf16 rounding (the lossy types encode the f16 rounding) */
                    case PAM_KV_BF16: tol = fabs(a) * (0x1p-8 + 0x1p-11); break;
                    /* half a step of the f16-rounded scale, and that rounding */
                    case PAM_KV_Q8: tol = amax / 127 * 0.5 * 1.002 + amax * 0x1p-10; break;
                    default: tol = amax / 7 * 0.5 * 1.002 + amax * 0x1p-10; break;
                    }
                    if (!(fabs(a - b) <= tol)) {
                        fprintf(stderr, "%s D=%d B=%d: %s[%d][%d] = %g decodes to %g\n", pam_kv_type_name(c->type), c->D,
                                c->B, which ? "V" : "K", t, d, a, b);
                        fail();
                    }
                }
            }
    }
}

typedef struct kout {
    float *m, *l, *o;
} kout;

static void run_partial(const kcase *c, float scale, int scalar, kout *a) {
    a->m = malloc(sizeof(float) * (size_t)c->nq);
    a->l = malloc(sizeof(float) * (size_t)c->nq);
    a->o = malloc(sizeof(float) * (size_t)c->nq * c->D);
    float *scratch = malloc(sizeof(float) * pam_kvh_scratch_floats(c->type, c->nq, c->D, c->B));
    size_t qb = pam_kvh_query_bytes(c->type, c->nq, c->D);
    void *qbuf = malloc(qb ? qb : 1);
    assert_true(a->m && a->l && a->o && scratch && qbuf);
    pam_kvh_query qr;
    pam_kvh_query_init(&qr, c->type, c->q, c->nq, c->D, scale, qbuf);
    if (scalar) pam_kvh_partial_scalar(&qr, c->run, c->B, c->n, a->m, a->l, a->o, scratch);
    else pam_kvh_partial(&qr, c->run, c->B, c->n, a->m, a->l, a->o, scratch);
    free(scratch);
    free(qbuf);
}

static void kout_free(kout *a) {
    free(a->m);
    free(a->l);
    free(a->o);
}

/* Float64 attention over the decoded values, exact q: per head the
 * normalised output, the max score and the sum of exponentials; and the
 * bounds the type's rounding of q and of the softmax weights allows. */
typedef struct want {
    double *o, *m, *l;
    double vmax, ds; /* max |V|; bound on a score's error */
} want;

static void oracle(const kcase *c, double scale, want *w) {
    const int D = c->D, n = c->n;
    w->o = calloc((size_t)c->nq * D, sizeof(double));
    w->m = malloc(sizeof(double) * (size_t)c->nq);
    w->l = malloc(sizeof(double) * (size_t)c->nq);
    double *s = malloc(sizeof(double) * (size_t)n);
    w->vmax = 0;
    for (int i = 0; i < n * D; i++) w->vmax = fmax(w->vmax, fabs(c->dv[i]));
    w->ds = 0;
    for (int g = 0; g < c->nq; g++) {
        const float *q = c->q + (size_t)g * D;
        double mx = -INFINITY, qmax = 0;
        for (int d = 0; d < D; d++) qmax = fmax(qmax, fabs(q[d]));
        for (int t = 0; t < n; t++) {
            double acc = 0, aabs = 0, kabs = 0;
            for (int d = 0; d < D; d++) {
                acc += (double)q[d] * c->dk[(size_t)t * D + d];
                aabs += fabs((double)q[d] * c->dk[(size_t)t * D + d]);
                kabs += fabs(c->dk[(size_t)t * D + d]);
            }
            s[t] = acc * scale;
            mx = fmax(mx, s[t]);
            /* f32 accumulation, plus q rounded to bf16 or quantised to int8 */
            double e = aabs * scale * 1e-6;
            if (c->type == PAM_KV_BF16) e += aabs * scale * 0x1p-8;
            if (c->type == PAM_KV_Q8 || c->type == PAM_KV_Q4) e += kabs * scale * qmax / 254;
            w->ds = fmax(w->ds, e);
        }
        double sum = 0;
        for (int t = 0; t < n; t++) {
            double p = exp(s[t] - mx);
            sum += p;
            for (int d = 0; d < D; d++) w->o[(size_t)g * D + d] += p * c->dv[(size_t)t * D + d];
        }
        for (int d = 0; d < D; d++) w->o[(size_t)g * D + d] /= sum;
        w->m[g] = mx;
        w->l[g] = sum;
    }
    free(s);
}

static void want_free(want *w) {
    free(w->o);
    free(w->m);
    free(w->l);
}

/* Errors of a partial: output (normalised, in units of max |V|), m, and l
 * (relative, rescaled to the oracle's max). */
static void errors(const kcase *c, const kout *a, const want *w, double *oe, double *me, double *le) {
    *oe = *me = *le = 0;
    for (int g = 0; g < c->nq; g++) {
        for (int d = 0; d < c->D; d++)
            *oe = fmax(*oe, fabs((double)a->o[(size_t)g * c->D + d] / a->l[g] - w->o[(size_t)g * c->D + d]));
        *me = fmax(*me, fabs((double)a->m[g] - w->m[g]));
        *le = fmax(*le, fabs((double)a->l[g] * exp((double)a->m[g] - w->m[g]) - w->l[g]) / w->l[g]);
    }
    if (!(*oe == *oe)) *oe = INFINITY;
    if (!(*me == *me)) *me = INFINITY;
    if (!(*le == *le)) *le = INFINITY;
    *oe /= w->vmax > 0 ? w->vmax : 1;
}

/* The bounds: scores off by ds move each softmax weight by a factor within
 * e^(+-2 ds); q8/q4 round each weight to 7 bits of its block's largest
 * (p * V scale), at most n/254 of max |V| over the block; bf16 rounds the
 * weights to 8 bits. */
static void bounds(const kcase *c, const want *w, double *ob, double *mb, double *lb) {
    double wq = c->type == PAM_KV_Q8 || c->type == PAM_KV_Q4 ? (double)c->n / 254 : c->type == PAM_KV_BF16 ? 0x1p-8 : 0;
    double f = expm1(2.2 * w->ds);
    *ob = f + wq + 2e-6 * c->n;
    *mb = w->ds * 1.1 + 1e-6;
    *lb = f + 2e-6 * c->n;
}

static void test_codec(void **state) {
    (void)state;
    pam_test_rng r = {31};
    const int Ds[] = {8, 16, 48, 64, 128};
    const int Bs[] = {16, 13, 32};
    for (int t = 0; t < PAM_KV_TYPE_COUNT; t++)
        for (int di = 0; di < COUNT(Ds); di++)
            for (int bi = 0; bi < COUNT(Bs); bi++) {
                kcase c;
                kcase_make(&c, (pam_kv_type)t, Ds[di], Bs[bi], Bs[bi], 1, &r);
                check_codec(&c);
                kcase_free(&c);
            }
}

static void test_partial_every_isa(void **state) {
    (void)state;
    /* 128, 64, 96: every SIMD path (32-channel groups); 48, 16, 8: the
     * scalar fallback of the quantised types with one group per head */
    const int Ds[] = {128, 64, 96, 48, 16, 8};
    const int Bs[] = {16, 32, 13};
    const int nqs[] = {1, 3, 4, 8, 9};
    pam_test_rng r = {32};
    double worst[PAM_KV_TYPE_COUNT][PAM_ISA_COUNT + 1], worst_s[PAM_KV_TYPE_COUNT][PAM_ISA_COUNT + 1];
    memset(worst, 0, sizeof worst);
    memset(worst_s, 0, sizeof worst_s);
    int n_cases = 0;
    for (int ty = 0; ty < PAM_KV_TYPE_COUNT; ty++)
        for (int di = 0; di < COUNT(Ds); di++)
            for (int bi = 0; bi < COUNT(Bs); bi++)
                for (int qi = 0; qi < COUNT(nqs); qi++) {
                    const int B = Bs[bi];
                    const int ns[] = {1, 2, 3, 4, 5, B / 2 + 1, B - 1, B};
                    for (int ni = 0; ni < COUNT(ns); ni++) {
                        const pam_kv_type type = (pam_kv_type)ty;
                        if (pam_kvh_check(type, Ds[di], B) != PAM_OK) continue;
                        kcase c;
                        kcase_make(&c, type, Ds[di], B, ns[ni], nqs[qi], &r);
                        const float scale = 1.0f / sqrtf((float)c.D);
                        want w;
                        oracle(&c, scale, &w);
                        double ob, mb, lb;
                        bounds(&c, &w, &ob, &mb, &lb);
                        kout ref;
                        run_partial(&c, scale, 1, &ref);
                        for (int isa = -1; isa < n_isas(); isa++) {
                            kout a;
                            if (isa >= 0) assert_int_equal(pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)isa)), PAM_OK);
                            run_partial(&c, scale, isa < 0, &a);
                            double oe, me, le;
                            errors(&c, &a, &w, &oe, &me, &le);
                            worst[ty][isa + 1] = fmax(worst[ty][isa + 1], oe);
                            /* against the scalar variant: the same quantised
                             * inputs, so float rounding, and for q8/q4 a
                             * weight code that rounds the other way */
                            double se = 0;
                            for (int g = 0; g < c.nq; g++) {
                                if (!(fabs(a.m[g] - ref.m[g]) <= 1e-5 * (1 + fabs(ref.m[g])))) se = INFINITY;
                                if (!(fabs(a.l[g] - ref.l[g]) <= 1e-5 * ref.l[g])) se = INFINITY;
                                for (int d = 0; d < c.D; d++)
                                    se = fmax(se, fabs(a.o[(size_t)g * c.D + d] / a.l[g] - ref.o[(size_t)g * c.D + d] / ref.l[g]));
                            }
                            se /= w.vmax > 0 ? w.vmax : 1;
                            worst_s[ty][isa + 1] = fmax(worst_s[ty][isa + 1], se);
                            if (!(se <= 3.0 / 127 * (c.type == PAM_KV_Q8 || c.type == PAM_KV_Q4) + 1e-5)) {
                                fprintf(stderr, "%s %s D=%d B=%d n=%d n_q=%d: differs from scalar by %.3g\n",
                                        pam_kv_type_name(type), pam_cpu_isa(), c.D, B, c.n, c.nq, se);
                                fail();
                            }
                            if (!(oe <= ob && me <= mb && le <= lb)) {
                                fprintf(stderr,
                                        "%s %s D=%d B=%d n=%d n_q=%d: o %.3g (bound %.3g) m %.3g (%.3g) l %.3g (%.3g)\n",
                                        pam_kv_type_name(type), isa < 0 ? "scalar-entry" : pam_cpu_isa(), c.D, B, c.n,
                                        c.nq, oe, ob, me, mb, le, lb);
                                fail();
                            }
                            kout_free(&a);
                        }
                        kout_free(&ref);
                        want_free(&w);
                        kcase_free(&c);
                        n_cases++;
                    }
                }
    assert_int_equal(pam_cpu_set_isa(NULL), PAM_OK);
    printf("# %d cases; worst normalised output error vs float64 (units of max |V|):\n", n_cases);
    for (int ty = 0; ty < PAM_KV_TYPE_COUNT; ty++) {
        printf("#   %-4s scalar %.3g", pam_kv_type_name((pam_kv_type)ty), worst[ty][0]);
        for (int isa = 0; isa < n_isas(); isa++)
            printf(", %s %.3g (%.3g from scalar)", pam_cpu_isa_name((pam_isa)isa), worst[ty][isa + 1], worst_s[ty][isa + 1]);
        printf("\n");
    }
}

/* The same call twice gives the same bits, at every level and type. */
static void test_partial_deterministic(void **state) {
    (void)state;
    pam_test_rng r = {33};
    for (int ty = 0; ty < PAM_KV_TYPE_COUNT; ty++) {
        kcase c;
        kcase_make(&c, (pam_kv_type)ty, 128, 16, 11, 8, &r);
        for (int isa = 0; isa < n_isas(); isa++) {
            assert_int_equal(pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)isa)), PAM_OK);
            kout a, b;
            run_partial(&c, 0.088f, 0, &a);
            run_partial(&c, 0.088f, 0, &b);
            assert_memory_equal(a.m, b.m, sizeof(float) * 8);
            assert_memory_equal(a.l, b.l, sizeof(float) * 8);
            assert_memory_equal(a.o, b.o, sizeof(float) * 8 * 128);
            kout_free(&a);
            kout_free(&b);
        }
        kcase_free(&c);
    }
    assert_int_equal(pam_cpu_set_isa(NULL), PAM_OK);
}

static void test_type_names(void **state) {
    (void)state;
    const struct {
        const char *s;
        pam_kv_type t;
    } ok[] = {{"f32", PAM_KV_F32}, {"f16", PAM_KV_F16},  {"bf16", PAM_KV_BF16}, {"q8", PAM_KV_Q8},
              {"q8_0", PAM_KV_Q8}, {"q4", PAM_KV_Q4},   {"q4_0", PAM_KV_Q4}};
    for (int i = 0; i < COUNT(ok); i++) {
        pam_kv_type t = PAM_KV_TYPE_COUNT;
        assert_int_equal(pam_kv_type_parse(ok[i].s, &t), PAM_OK);
        assert_int_equal(t, ok[i].t);
    }
    for (int i = 0; i < PAM_KV_TYPE_COUNT; i++) {
        pam_kv_type t;
        assert_int_equal(pam_kv_type_parse(pam_kv_type_name((pam_kv_type)i), &t), PAM_OK);
        assert_int_equal(t, i);
    }
    const char *bad[] = {"", "F16", "q5", "int8", "q8_1", "f16 "};
    for (int i = 0; i < COUNT(bad); i++) {
        pam_kv_type t;
        assert_int_equal(pam_kv_type_parse(bad[i], &t), PAM_ERR_INVALID);
        assert_non_null(strstr(pam_last_error(), "q8"));
    }
    pam_kv_type t;
    assert_int_equal(pam_kv_type_parse(NULL, &t), PAM_ERR_INVALID);
    /* shapes a type cannot hold */
    assert_int_equal(pam_kvh_check(PAM_KV_Q4, 12, 16), PAM_ERR_INVALID);
    assert_non_null(strstr(pam_last_error(), "divisible by 8"));
    assert_int_equal(pam_kvh_check(PAM_KV_Q8, 6, 16), PAM_ERR_INVALID);
    assert_int_equal(pam_kvh_check(PAM_KV_BF16, 5, 16), PAM_ERR_INVALID);
    assert_int_equal(pam_kvh_check(PAM_KV_F16, 5, 16), PAM_OK);
    assert_int_equal(pam_kvh_check((pam_kv_type)9, 64, 16), PAM_ERR_INVALID);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_names),
        cmocka_unit_test(test_codec),
        cmocka_unit_test(test_partial_every_isa),
        cmocka_unit_test(test_partial_deterministic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
