/* Attention partials against float64 softmax attention, at every ISA level
 * the CPU has, and the merge of partials: two halves merged equal the whole,
 * and an empty partial (m = -inf) is the identity of the merge. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fp16.h"
#include "kernels/attention.h"
#include "kernels/cpu.h"
#include "util/test_util.h"

static const int k_hds[] = {8, 64, 128};
static const int k_nqs[] = {1, 4, 7};
static const int64_t k_ns[] = {1, 7, 8, 9, 255, 256, 1000};
#define COUNT(a) (int)(sizeof(a) / sizeof((a)[0]))

typedef struct {
    int hd, n_q;
    int64_t n;
    size_t stride; /* floats or halves between rows: wider than a head, as in a real cache */
    float *q, *Kf, *Vf;
    uint16_t *Kh, *Vh;
    float *m, *l, *o, *scores;
} attn_case;

static void case_make(attn_case *c, int hd, int n_q, int64_t n, pam_test_rng *r) {
    c->hd = hd;
    c->n_q = n_q;
    c->n = n;
    c->stride = (size_t)hd + 24;
    size_t kv = c->stride * (size_t)n;
    c->q = malloc(sizeof(float) * (size_t)n_q * (size_t)hd);
    c->Kf = malloc(sizeof(float) * kv);
    c->Vf = malloc(sizeof(float) * kv);
    c->Kh = malloc(sizeof(uint16_t) * kv);
    c->Vh = malloc(sizeof(uint16_t) * kv);
    c->m = malloc(sizeof(float) * (size_t)n_q);
    c->l = malloc(sizeof(float) * (size_t)n_q);
    c->o = malloc(sizeof(float) * (size_t)n_q * (size_t)hd);
    c->scores = malloc(sizeof(float) * (size_t)n_q * (size_t)n);
    assert_true(c->q && c->Kf && c->Vf && c->Kh && c->Vh && c->m && c->l && c->o && c->scores);
    for (int i = 0; i < n_q * hd; i++) c->q[i] = (float)pam_test_rng_normal(r);
    /* K and V hold values exactly representable in f16, so the f32 and f16
     * kernels see the same numbers and share one oracle. */
    for (size_t i = 0; i < kv; i++) {
        c->Kh[i] = pam_f32_to_f16((float)pam_test_rng_normal(r));
        c->Vh[i] = pam_f32_to_f16((float)pam_test_rng_normal(r));
        c->Kf[i] = pam_f16_to_f32(c->Kh[i]);
        c->Vf[i] = pam_f16_to_f32(c->Vh[i]);
    }
}

static void case_free(attn_case *c) {
    free(c->q);
    free(c->Kf);
    free(c->Vf);
    free(c->Kh);
    free(c->Vh);
    free(c->m);
    free(c->l);
    free(c->o);
    free(c->scores);
}

static void run_partial(const attn_case *c, int f16, int64_t t0, int64_t cnt, float *m, float *l, float *o,
                        float scale) {
    const size_t off = (size_t)t0 * c->stride;
    if (f16)
        pam_attn_partial_f16(c->q, c->n_q, c->hd, scale, c->Kh + off, c->Vh + off, c->stride, cnt, m, l, o,
                             c->scores);
    else
        pam_attn_partial_f32(c->q, c->n_q, c->hd, scale, c->Kf + off, c->Vf + off, c->stride, cnt, m, l, o,
                             c->scores);
}

/* Float64 softmax attention of head g: out[hd], and the partial's m and l. */
static void oracle(const attn_case *c, int g, float scale, double *out, double *m_out, double *l_out) {
    double *s = malloc(sizeof(double) * (size_t)c->n);
    double mx = -INFINITY;
    for (int64_t t = 0; t < c->n; t++) {
        double acc = 0;
        for (int d = 0; d < c->hd; d++)
            acc += (double)c->q[g * c->hd + d] * c->Kf[(size_t)t * c->stride + (size_t)d];
        s[t] = acc * scale;
        mx = fmax(mx, s[t]);
    }
    double sum = 0;
    for (int d = 0; d < c->hd; d++) out[d] = 0;
    for (int64_t t = 0; t < c->n; t++) {
        double p = exp(s[t] - mx);
        sum += p;
        for (int d = 0; d < c->hd; d++) out[d] += p * c->Vf[(size_t)t * c->stride + (size_t)d];
    }
    for (int d = 0; d < c->hd; d++) out[d] /= sum;
    *m_out = mx;
    *l_out = sum;
    free(s);
}

static int n_isas(void) { return (int)pam_cpu_detect() + 1; }

static void test_partial_vs_f64(void **state) {
    pam_test_rng r = {11};
    double worst = 0;
    for (int hi = 0; hi < COUNT(k_hds); hi++)
        for (int qi = 0; qi < COUNT(k_nqs); qi++)
            for (int ni = 0; ni < COUNT(k_ns); ni++) {
                attn_case c;
                case_make(&c, k_hds[hi], k_nqs[qi], k_ns[ni], &r);
                const float scale = 1.0f / sqrtf((float)c.hd);
                double *want = malloc(sizeof(double) * (size_t)c.n_q * (size_t)c.hd);
                double *wm = malloc(sizeof(double) * (size_t)c.n_q), *wl = malloc(sizeof(double) * (size_t)c.n_q);
                for (int g = 0; g < c.n_q; g++) oracle(&c, g, scale, want + g * c.hd, &wm[g], &wl[g]);
                for (int isa = 0; isa < n_isas(); isa++) {
                    assert_int_equal(pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)isa)), PAM_OK);
                    for (int f16 = 0; f16 < 2; f16++) {
                        run_partial(&c, f16, 0, c.n, c.m, c.l, c.o, scale);
                        pam_attn_finish(c.n_q, c.hd, c.l, c.o);
                        for (int g = 0; g < c.n_q; g++) {
                            /* scores carry ~hd ulps of |q||k|; exp turns that into a
                             * relative error of the weights, so outputs are off by
                             * about that times max|v| */
                            double tol_s = 1e-6 * (1 + fabs(wm[g]));
                            int bad = !(fabs(c.m[g] - wm[g]) <= tol_s) ||
                                      !(fabs(c.l[g] - wl[g]) <= 2e-5 * wl[g]);
                            for (int d = 0; d < c.hd; d++) {
                                double e = fabs(c.o[g * c.hd + d] - want[g * c.hd + d]);
                                worst = fmax(worst, e);
                                if (!(e <= 2e-5)) bad = 1;
                            }
                            if (bad) {
                                fprintf(stderr, "%s %s hd=%d n_q=%d n=%lld g=%d: m %.9g/%.9g l %.9g/%.9g\n",
                                        pam_cpu_isa(), f16 ? "f16" : "f32", c.hd, c.n_q, (long long)c.n, g,
                                        c.m[g], wm[g], c.l[g], wl[g]);
                                fail();
                            }
                        }
                    }
                }
                free(want);
                free(wm);
                free(wl);
                case_free(&c);
            }
    printf("# worst |o - o64| = %.3g\n", worst);
    assert_int_equal(pam_cpu_set_isa(NULL), PAM_OK);
}

/* The same call twice gives the same bits, at every level. */
static void test_partial_deterministic(void **state) {
    pam_test_rng r = {12};
    attn_case c;
    case_make(&c, 128, 4, 1000, &r);
    float *o2 = malloc(sizeof(float) * 4 * 128), m2[4], l2[4];
    for (int isa = 0; isa < n_isas(); isa++) {
        assert_int_equal(pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)isa)), PAM_OK);
        for (int f16 = 0; f16 < 2; f16++) {
            run_partial(&c, f16, 0, c.n, c.m, c.l, c.o, 0.088f);
            run_partial(&c, f16, 0, c.n, m2, l2, o2, 0.088f);
            assert_memory_equal(c.m, m2, sizeof m2);
            assert_memory_equal(c.l, l2, sizeof l2);
            assert_memory_equal(c.o, o2, sizeof(float) * 4 * 128);
        }
    }
    free(o2);
    case_free(&c);
    assert_int_equal(pam_cpu_set_isa(NULL), PAM_OK);
}

static int close_rel(const float *a, const float *b, int n, double rel) {
    double mag = 0;
    for (int i = 0; i < n; i++) mag = fmax(mag, fabs(b[i]));
    for (int i = 0; i < n; i++)
        if (!(fabs(a[i] - b[i]) <= rel * mag + 1e-30)) return 0;
    return 1;
}

/* Tokens [0, k) and [k, n) as two partials, merged in order, equal [0, n). */
static void test_merge_split(void **state) {
    pam_test_rng r = {13};
    const int64_t ns[] = {2, 9, 256, 1000};
    for (int isa = 0; isa < n_isas(); isa++) {
        assert_int_equal(pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)isa)), PAM_OK);
        for (int ni = 0; ni < COUNT(ns); ni++)
            for (int f16 = 0; f16 < 2; f16++) {
                attn_case c;
                case_make(&c, 64, 4, ns[ni], &r);
                const int nq = c.n_q, hd = c.hd;
                float mb[4], lb[4], *ob = malloc(sizeof(float) * (size_t)nq * (size_t)hd);
                float mw[4], lw[4], *ow = malloc(sizeof(float) * (size_t)nq * (size_t)hd);
                const int64_t splits[] = {1, c.n / 3 > 0 ? c.n / 3 : 1, c.n - 1};
                run_partial(&c, f16, 0, c.n, mw, lw, ow, 0.125f);
                pam_attn_finish(nq, hd, lw, ow);
                for (int si = 0; si < 3; si++) {
                    const int64_t k = splits[si];
                    run_partial(&c, f16, 0, k, c.m, c.l, c.o, 0.125f);
                    run_partial(&c, f16, k, c.n - k, mb, lb, ob, 0.125f);
                    pam_attn_merge(nq, hd, c.m, c.l, c.o, mb, lb, ob);
                    assert_true(close_rel(c.m, mw, nq, 1e-6));
                    assert_true(close_rel(c.l, lw, nq, 1e-5));
                    pam_attn_finish(nq, hd, c.l, c.o);
                    if (!close_rel(c.o, ow, nq * hd, 1e-5)) {
                        fprintf(stderr, "%s %s n=%lld split %lld\n", pam_cpu_isa(), f16 ? "f16" : "f32",
                                (long long)c.n, (long long)k);
                        fail();
                    }
                }
                free(ob);
                free(ow);
                case_free(&c);
            }
    }
    assert_int_equal(pam_cpu_set_isa(NULL), PAM_OK);
}

/* An empty partial (m = -inf, l = 0, o = 0) merged from either side leaves
 * the other unchanged, and two empties stay empty without NaN. */
static void test_merge_empty(void **state) {
    pam_test_rng r = {14};
    attn_case c;
    case_make(&c, 8, 4, 9, &r);
    enum { NQ = 4, HD = 8 };
    run_partial(&c, 1, 0, c.n, c.m, c.l, c.o, 0.35f);
    float m_full[NQ], l_full[NQ], o_full[NQ * HD];
    memcpy(m_full, c.m, sizeof m_full);
    memcpy(l_full, c.l, sizeof l_full);
    memcpy(o_full, c.o, sizeof o_full);

    float me[NQ], le[NQ], oe[NQ * HD];
    for (int g = 0; g < NQ; g++) {
        me[g] = -INFINITY;
        le[g] = 0;
    }
    memset(oe, 0, sizeof oe);

    /* full <- empty */
    pam_attn_merge(NQ, HD, c.m, c.l, c.o, me, le, oe);
    assert_memory_equal(c.m, m_full, sizeof m_full);
    assert_memory_equal(c.l, l_full, sizeof l_full);
    assert_memory_equal(c.o, o_full, sizeof o_full);

    /* empty <- full */
    float m2[NQ], l2[NQ], o2[NQ * HD];
    memcpy(m2, me, sizeof m2);
    memcpy(l2, le, sizeof l2);
    memcpy(o2, oe, sizeof o2);
    pam_attn_merge(NQ, HD, m2, l2, o2, m_full, l_full, o_full);
    assert_memory_equal(m2, m_full, sizeof m_full);
    assert_memory_equal(l2, l_full, sizeof l_full);
    assert_memory_equal(o2, o_full, sizeof o_full);

    /* empty <- empty */
    pam_attn_merge(NQ, HD, me, le, oe, me, le, oe);
    for (int g = 0; g < NQ; g++) {
        assert_true(me[g] == -INFINITY);
        assert_true(le[g] == 0);
    }
    for (int i = 0; i < NQ * HD; i++) assert_true(oe[i] == 0);
    case_free(&c);
}

/* The transposed-K kernel (K [hd][B] per block, V [B][hd]) against the
 * float64 oracle and against the row-major kernel on the same numbers, at
 * every ISA, for block sizes that are and are not multiples of a tile, query
 * groups larger than one register group, and partly filled blocks whose
 * unwritten slots hold NaN (they must never be read). */
static void test_partial_kt(void **state) {
    static const int hds[] = {8, 13, 64, 128};
    static const int nqs[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 12};
    pam_test_rng r = {23};
    double worst = 0, worst_rm = 0;
    for (int hi = 0; hi < COUNT(hds); hi++)
        for (int qi = 0; qi < COUNT(nqs); qi++)
            for (int64_t B = 1; B <= 33; B++) {
                const int64_t ns[] = {B, B - 1, (B + 1) / 2, 1};
                attn_case c;
                case_make(&c, hds[hi], nqs[qi], B, &r);
                const int hd = c.hd, n_q = c.n_q;
                const float scale = 1.0f / sqrtf((float)hd);
                uint16_t *Kt = malloc(sizeof(uint16_t) * (size_t)hd * (size_t)B);
                uint16_t *Vp = malloc(sizeof(uint16_t) * (size_t)hd * (size_t)B);
                float *m2 = malloc(sizeof(float) * (size_t)n_q), *l2 = malloc(sizeof(float) * (size_t)n_q);
                float *o2 = malloc(sizeof(float) * (size_t)n_q * (size_t)hd);
                double *want = malloc(sizeof(double) * (size_t)n_q * (size_t)hd);
                double *wm = malloc(sizeof(double) * (size_t)n_q), *wl = malloc(sizeof(double) * (size_t)n_q);
                assert_true(Kt && Vp && m2 && l2 && o2 && want && wm && wl);
                for (int ni = 0; ni < 4; ni++) {
                    const int64_t n = ns[ni];
                    if (n < 1 || (ni > 0 && n == ns[ni - 1])) continue;
                    for (int64_t t = 0; t < B; t++)
                        for (int d = 0; d < hd; d++) {
                            const int live = t < n;
                            Kt[(size_t)d * (size_t)B + (size_t)t] = live ? c.Kh[(size_t)t * c.stride + (size_t)d] : 0x7e00;
                            Vp[(size_t)t * (size_t)hd + (size_t)d] = live ? c.Vh[(size_t)t * c.stride + (size_t)d] : 0x7e00;
                        }
                    c.n = n;
                    for (int g = 0; g < n_q; g++) oracle(&c, g, scale, want + g * hd, &wm[g], &wl[g]);
                    for (int isa = 0; isa < n_isas(); isa++) {
                        assert_int_equal(pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)isa)), PAM_OK);
                        pam_attn_partial_f16_kt(c.q, n_q, hd, scale, Kt, Vp, B, n, c.m, c.l, c.o, c.scores);
                        pam_attn_partial_f16(c.q, n_q, hd, scale, c.Kh, c.Vh, c.stride, n, m2, l2, o2, c.scores);
                        for (int g = 0; g < n_q; g++) {
                            double tol_s = 1e-6 * (1 + fabs(wm[g]));
                            int bad = !(fabs(c.m[g] - wm[g]) <= tol_s) || !(fabs(c.l[g] - wl[g]) <= 2e-5 * wl[g]) ||
                                      !(fabs(c.m[g] - m2[g]) <= tol_s) || !(fabs(c.l[g] - l2[g]) <= 2e-5 * wl[g]);
                            for (int d = 0; d < hd; d++) {
                                /* unnormalised o against the row-major kernel, relative to l */
                                double e2 = fabs(c.o[g * hd + d] - o2[g * hd + d]) / wl[g];
                                worst_rm = fmax(worst_rm, e2);
                                if (!(e2 <= 2e-5)) bad = 1;
                            }
                            pam_attn_finish(1, hd, &c.l[g], c.o + g * hd);
                            for (int d = 0; d < hd; d++) {
                                double e = fabs(c.o[g * hd + d] - want[g * hd + d]);
                                worst = fmax(worst, e);
                                if (!(e <= 2e-5)) bad = 1;
                            }
                            if (bad) {
                                fprintf(stderr, "kt %s hd=%d n_q=%d B=%lld n=%lld g=%d: m %.9g/%.9g/%.9g l %.9g/%.9g/%.9g\n",
                                        pam_cpu_isa(), hd, n_q, (long long)B, (long long)n, g, c.m[g], m2[g], wm[g],
                                        c.l[g], l2[g], wl[g]);
                                fail();
                            }
                        }
                    }
                }
                free(Kt);
                free(Vp);
                free(m2);
                free(l2);
                free(o2);
                free(want);
                free(wm);
                free(wl);
                case_free(&c);
            }
    printf("# kt: worst |o - o64| = %.3g, worst |o - o_rowmajor| / l = %.3g\n", worst, worst_rm);
    assert_int_equal(pam_cpu_set_isa(NULL), PAM_OK);
    (void)state;
}

/* pam_attn_partial_f16_kt_run: at every ISA, bit for bit the per-block fold
 * (pam_attn_partial_f16_kt + pam_attn_merge) for runs of 1..16 blocks of
 * 16 slots with full and partly filled blocks (unwritten slots hold NaN),
 * with and without a partial to fold into, and with blk_m/blk_l strided as
 * the tiers write them; and the folded result against the float64 oracle
 * over all the run's tokens. */
static void test_partial_kt_run(void **state) {
    static const int hds[] = {16, 48, 64, 128};
    static const int nqs[] = {1, 3, 4, 5, 8, 9};
    enum { B = 16, NB = PAM_ATTN_RUN_MAX };
    pam_test_rng r = {31};
    double worst = 0;
    for (int hi = 0; hi < COUNT(hds); hi++)
        for (int qi = 0; qi < COUNT(nqs); qi++)
            for (int nblk = 1; nblk <= NB; nblk += (nblk < 4 ? 1 : 5)) {
                const int hd = hds[hi], n_q = nqs[qi];
                const float scale = 1.0f / sqrtf((float)hd);
                attn_case c;
                case_make(&c, hd, n_q, (int64_t)nblk * B, &r);
                uint16_t *blk = malloc(sizeof(uint16_t) * (size_t)nblk * 2 * (size_t)hd * B);
                const uint16_t *kt[NB], *vr[NB];
                int32_t nt[NB];
                const size_t stride = (size_t)n_q + 3; /* blk_m rows wider than the heads, as in a tier */
                float *out = malloc(sizeof(float) * 2 * ((size_t)n_q * (2 + (size_t)hd) + 2 * (size_t)NB * stride));
                float *scratch = malloc(sizeof(float) * pam_attn_run_scratch_floats(n_q, hd, B));
                double *want = malloc(sizeof(double) * (size_t)hd);
                assert_true(blk && out && scratch && want);
                /* the run's tokens: block j holds nt[j] of them (some blocks partly filled) */
                int64_t tok = 0; /* the live tokens are rows 0..tok-1 of the case, the oracle's input */
                for (int j = 0; j < nblk; j++) {
                    nt[j] = (j % 3 == 2) ? 1 + (j * 7) % B : B;
                    uint16_t *K = blk + (size_t)j * 2 * hd * B, *V = K + (size_t)hd * B;
                    for (int t = 0; t < B; t++)
                        for (int d = 0; d < hd; d++) {
                            const int live = t < nt[j];
                            const size_t src = (size_t)(tok + t) * c.stride + (size_t)d;
                            K[(size_t)d * B + (size_t)t] = live ? c.Kh[src] : 0x7e00;
                            V[(size_t)t * hd + (size_t)d] = live ? c.Vh[src] : 0x7e00;
                        }
                    tok += nt[j];
                    kt[j] = K;
                    vr[j] = V;
                }
                c.n = tok;
                for (int isa = 0; isa < n_isas(); isa++) {
                    assert_int_equal(pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)isa)), PAM_OK);
                    for (int init = 1; init >= 0; init--) {
                        float *res[2];
                        for (int w = 0; w < 2; w++) {
                            float *m = out + (size_t)w * ((size_t)n_q * (2 + (size_t)hd) + 2 * (size_t)NB * stride);
                            float *l = m + n_q, *o = l + n_q, *bm = o + (size_t)n_q * hd, *bl = bm + (size_t)NB * stride;
                            memset(bm, 0, sizeof(float) * 2 * (size_t)NB * stride);
                            if (!init) { /* a partial of the first block to fold the rest into */
                                pam_attn_partial_f16_kt(c.q, n_q, hd, scale, kt[0], vr[0], B, nt[0], m, l, o, scratch);
                                for (int g = 0; g < n_q; g++) m[g] -= 0.5f; /* a different running max */
                            }
                            const int from = init ? 0 : 1;
                            if (from < nblk) {
                                if (w == 0)
                                    pam_attn_partial_f16_kt_run(c.q, n_q, hd, scale, kt + from, vr + from, nt + from,
                                                                nblk - from, B, init, m, l, o, bm, bl, stride,
                                                                (const void *const *)kt, 4 * (size_t)hd * B, scratch);
                                else
                                    pam_attn_partial_f16_kt_run_fold(c.q, n_q, hd, scale, kt + from, vr + from,
                                                                     nt + from, nblk - from, B, init, m, l, o, bm, bl,
                                                                     stride, scratch);
                            }
                            res[w] = m;
                        }
                        const size_t nbytes = sizeof(float) * ((size_t)n_q * (2 + (size_t)hd) + 2 * (size_t)NB * stride);
                        if (memcmp(res[0], res[1], nbytes) != 0) {
                            fprintf(stderr, "run %s hd=%d n_q=%d nblk=%d init=%d: differs from the fold\n",
                                    pam_cpu_isa(), hd, n_q, nblk, init);
                            fail();
                        }
                        if (!init) continue;
                        float *m = res[0], *l = m + n_q, *o = l + n_q;
                        for (int g = 0; g < n_q; g++) {
                            double wm, wl;
                            oracle(&c, g, scale, want, &wm, &wl);
                            assert_true(fabs(l[g] * exp((double)m[g] - wm) - wl) <= 2e-5 * wl);
                            for (int d = 0; d < hd; d++) {
                                double e = fabs(o[g * hd + d] / l[g] - want[d]);
                                worst = fmax(worst, e);
                                if (!(e <= 2e-5)) {
                                    fprintf(stderr, "run %s hd=%d n_q=%d nblk=%d g=%d d=%d: %.9g vs %.9g\n",
                                            pam_cpu_isa(), hd, n_q, nblk, g, d, o[g * hd + d] / l[g], want[d]);
                                    fail();
                                }
                            }
                        }
                    }
                }
                free(blk);
                free(out);
                free(scratch);
                free(want);
                case_free(&c);
            }
    printf("# kt run: worst |o - o64| = %.3g\n", worst);
    assert_int_equal(pam_cpu_set_isa(NULL), PAM_OK);
    (void)state;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_partial_vs_f64),
        cmocka_unit_test(test_partial_deterministic),
        cmocka_unit_test(test_merge_split),
        cmocka_unit_test(test_merge_empty),
        cmocka_unit_test(test_partial_kt),
        cmocka_unit_test(test_partial_kt_run),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
