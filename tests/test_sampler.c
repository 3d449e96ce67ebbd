/* engine/sampler: greedy, seeded draws against the softmax, each filter of the
 * chain, the repetition, frequency and presence penalties, logit bias (and
 * bans), log-probabilities against a float64 reference, and parameter
 * checks. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/sampler.h"
#include "util/test_util.h"

static pam_sampler_params params_off(void) {
    pam_sampler_params p;
    pam_sampler_params_default(&p);
    p.temp = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.repeat_penalty = 1.0f;
    p.repeat_last_n = 64;
    p.seed = 1234;
    return p;
}

static pam_sampler *make(const pam_sampler_params *p, int32_t n_vocab) {
    pam_sampler *s = NULL;
    assert_int_equal(pam_sampler_create(p, n_vocab, &s), PAM_OK);
    assert_non_null(s);
    return s;
}

static void softmax(const float *l, int n, double temp, double *out) {
    double mx = -INFINITY, sum = 0;
    for (int i = 0; i < n; i++) mx = l[i] > mx ? l[i] : mx;
    for (int i = 0; i < n; i++) sum += out[i] = isinf(l[i]) ? 0.0 : exp((l[i] - mx) / temp);
    for (int i = 0; i < n; i++) out[i] /= sum;
}

/* Draws n tokens and returns the chi-square statistic against expect (cells
 * with expected probability 0 must never be hit). */
static double chi_square(pam_sampler *s, const float *logits, int nv, const double *expect, int n) {
    int *hits = calloc((size_t)nv, sizeof *hits);
    for (int i = 0; i < n; i++) {
        int32_t t = pam_sampler_sample(s, logits);
        assert_true(t >= 0 && t < nv);
        hits[t]++;
    }
    double chi = 0;
    for (int i = 0; i < nv; i++) {
        if (expect[i] == 0.0) {
            assert_int_equal(hits[i], 0);
            continue;
        }
        double e = expect[i] * n, d = hits[i] - e;
        chi += d * d / e;
        /* Also a direct bound per cell: within 2 points of probability. */
        assert_true(fabs((double)hits[i] / n - expect[i]) < 0.02);
    }
    free(hits);
    return chi;
}

static void test_defaults_and_check(void **state) {
    pam_sampler_params p;
    pam_sampler_params_default(&p);
    assert_true(p.temp == 0.8f && p.top_k == 40 && p.top_p == 0.95f && p.min_p == 0.05f);
    assert_true(p.repeat_penalty == 1.0f && p.repeat_last_n == 64 && p.seed == 0);
    assert_int_equal(pam_sampler_params_check(&p), PAM_OK);

    pam_sampler_params q = p;
    q.temp = -0.1f;
    assert_int_equal(pam_sampler_params_check(&q), PAM_ERR_INVALID);
    assert_non_null(strstr(pam_last_error(), "temperature"));
    q = p;
    q.temp = NAN;
    assert_int_equal(pam_sampler_params_check(&q), PAM_ERR_INVALID);
    q = p;
    q.top_p = 0.0f;
    assert_int_equal(pam_sampler_params_check(&q), PAM_ERR_INVALID);
    assert_non_null(strstr(pam_last_error(), "top-p"));
    q = p;
    q.top_p = 1.5f;
    assert_int_equal(pam_sampler_params_check(&q), PAM_ERR_INVALID);
    q = p;
    q.min_p = -0.01f;
    assert_int_equal(pam_sampler_params_check(&q), PAM_ERR_INVALID);
    assert_non_null(strstr(pam_last_error(), "min-p"));
    q = p;
    q.min_p = 1.01f;
    assert_int_equal(pam_sampler_params_check(&q), PAM_ERR_INVALID);
    q = p;
    q.repeat_penalty = 0.0f;
    assert_int_equal(pam_sampler_params_check(&q), PAM_ERR_INVALID);
    assert_non_null(strstr(pam_last_error(), "repeat penalty"));
    q = p;
    q.repeat_last_n = -1;
    assert_int_equal(pam_sampler_params_check(&q), PAM_ERR_INVALID);
    assert_non_null(strstr(pam_last_error(), "repeat-last-n"));

    /* Boundary values are fine: top_p 1 and min_p 1 and 0, temp 0, top_k negative. */
    q = p;
    q.top_p = 1.0f;
    q.min_p = 1.0f;
    q.temp = 0.0f;
    q.top_k = -5;
    q.repeat_last_n = 0;
    assert_int_equal(pam_sampler_params_check(&q), PAM_OK);

    /* create checks too, and rejects an empty vocabulary. */
    pam_sampler *s = NULL;
    q = p;
    q.top_p = 2.0f;
    assert_int_equal(pam_sampler_create(&q, 10, &s), PAM_ERR_INVALID);
    assert_null(s);
    assert_int_equal(pam_sampler_create(&p, 0, &s), PAM_ERR_INVALID);
    assert_null(s);
}

static void test_greedy_argmax_and_ties(void **state) {
    pam_sampler_params p = params_off();
    p.temp = 0.0f;
    pam_sampler *s = make(&p, 6);
    float l1[6] = {0.1f, 2.0f, -3.0f, 5.0f, 4.9f, 1.0f};
    assert_int_equal(pam_sampler_sample(s, l1), 3);
    float l2[6] = {1.0f, 7.0f, 2.0f, 7.0f, 7.0f, -1.0f};
    assert_int_equal(pam_sampler_sample(s, l2), 1); /* tie: lowest id */
    float l3[6] = {-INFINITY, -INFINITY, -2.0f, -INFINITY, -2.0f, -INFINITY};
    assert_int_equal(pam_sampler_sample(s, l3), 2);
    float l4[6] = {NAN, -1.0f, 3.0f, NAN, 0.0f, 0.0f};
    assert_int_equal(pam_sampler_sample(s, l4), 2);
    pam_sampler_free(s);

    /* Large vocabulary, max near the end; logits must not be modified. */
    int nv = 128256;
    float *big = malloc(sizeof(float) * (size_t)nv);
    pam_test_rng r = {7};
    for (int i = 0; i < nv; i++) big[i] = (float)pam_test_rng_normal(&r);
    big[nv - 3] = 100.0f;
    float *copy = malloc(sizeof(float) * (size_t)nv);
    memcpy(copy, big, sizeof(float) * (size_t)nv);
    s = make(&p, nv);
    assert_int_equal(pam_sampler_sample(s, big), nv - 3);
    assert_memory_equal(big, copy, sizeof(float) * (size_t)nv);
    pam_sampler_free(s);
    free(big);
    free(copy);
}

static void test_seed_reproduces(void **state) {
    enum { NV = 50, N = 200 };
    float l[NV];
    for (int i = 0; i < NV; i++) l[i] = (float)(i % 7) * 0.3f;
    pam_sampler_params p = params_off();
    int32_t a[N], b[N], c[N];
    pam_sampler *s = make(&p, NV);
    for (int i = 0; i < N; i++) a[i] = pam_sampler_sample(s, l);
    pam_sampler_free(s);
    s = make(&p, NV);
    for (int i = 0; i < N; i++) b[i] = pam_sampler_sample(s, l);
    /* reset restarts the same sequence */
    pam_sampler_reset(s);
    for (int i = 0; i < N; i++) c[i] = pam_sampler_sample(s, l);
    pam_sampler_free(s);
    assert_memory_equal(a, b, sizeof a);
    assert_memory_equal(a, c, sizeof a);

    p.seed = 1235;
    s = make(&p, NV);
    int same = 0;
    for (int i = 0; i < N; i++) same += pam_sampler_sample(s, l) == a[i];
    pam_sampler_free(s);
    assert_true(same < N / 2); /* ~N/50 expected by chance */

    /* The draws are not all the same token. */
    int distinct = 0;
    for (int t = 0; t < NV; t++)
        for (int i = 0; i < N; i++)
            if (a[i] == t) {
                distinct++;
                break;
            }
    assert_true(distinct > 20);
}

static void test_distribution_matches_softmax(void **state) {
    enum { NV = 8, N = 20000 };
    float l[NV] = {1.0f, 0.5f, 2.0f, -1.0f, 0.0f, 1.5f, -INFINITY, 0.7f};
    double e[NV];
    softmax(l, NV, 1.0, e);
    pam_sampler_params p = params_off();
    pam_sampler *s = make(&p, NV);
    double chi = chi_square(s, l, NV, e, N);
    pam_sampler_free(s);
    /* 6 degrees of freedom: P(chi2 > 22.5) = 0.001. */
    assert_true(chi < 22.5);

    /* The same check catches a wrong distribution: draws from temp 1 against
     * the softmax at temp 2 are far off. */
    double wrong[NV];
    softmax(l, NV, 2.0, wrong);
    s = make(&p, NV);
    int hits[NV] = {0};
    for (int i = 0; i < N; i++) hits[pam_sampler_sample(s, l)]++;
    pam_sampler_free(s);
    double chi_wrong = 0;
    for (int i = 0; i < NV; i++)
        if (wrong[i] > 0) chi_wrong += pow(hits[i] - wrong[i] * N, 2) / (wrong[i] * N);
    assert_true(chi_wrong > 100.0);
}

static void test_temperature(void **state) {
    enum { NV = 5, N = 20000 };
    float l[NV] = {2.0f, 1.0f, 0.0f, -0.5f, 1.5f};
    pam_sampler_params p = params_off();
    for (int k = 0; k < 3; k++) {
        double t = k == 0 ? 0.5 : k == 1 ? 1.7 : 4.0;
        p.temp = (float)t;
        double e[NV];
        softmax(l, NV, t, e);
        pam_sampler *s = make(&p, NV);
        double chi = chi_square(s, l, NV, e, N);
        pam_sampler_free(s);
        assert_true(chi < 18.5); /* 4 dof, p = 0.001 */
    }
    /* Colder means more mass on the best token. */
    int best[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        p.temp = k == 0 ? 0.3f : 3.0f;
        pam_sampler *s = make(&p, NV);
        for (int i = 0; i < 2000; i++) best[k] += pam_sampler_sample(s, l) == 0;
        pam_sampler_free(s);
    }
    assert_true(best[0] > best[1] + 500);
}

static void test_filters_collapse_to_greedy(void **state) {
    enum { NV = 300 };
    pam_test_rng r = {99};
    float l[NV];
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < NV; i++) l[i] = (float)pam_test_rng_normal(&r);
        if (round % 2) l[(round * 37) % NV] = -INFINITY;
        pam_sampler_params g = params_off();
        g.temp = 0.0f;
        pam_sampler *sg = make(&g, NV);
        int32_t want = pam_sampler_sample(sg, l);
        pam_sampler_free(sg);

        pam_sampler_params p = params_off();
        p.seed = (uint64_t)round;
        p.temp = 1.5f;
        p.top_k = 1;
        pam_sampler *s = make(&p, NV);
        for (int i = 0; i < 20; i++) assert_int_equal(pam_sampler_sample(s, l), want);
        pam_sampler_free(s);

        p = params_off();
        p.seed = (uint64_t)round;
        p.top_p = 1e-6f;
        s = make(&p, NV);
        for (int i = 0; i < 20; i++) assert_int_equal(pam_sampler_sample(s, l), want);
        pam_sampler_free(s);

        p = params_off();
        p.seed = (uint64_t)round;
        p.min_p = 1.0f;
        s = make(&p, NV);
        for (int i = 0; i < 20; i++) assert_int_equal(pam_sampler_sample(s, l), want);
        pam_sampler_free(s);
    }
}

static void test_top_k_and_top_p_sets(void **state) {
    enum { NV = 1000, N = 20000 };
    float *l = malloc(sizeof(float) * NV);
    pam_test_rng r = {5};
    for (int i = 0; i < NV; i++) l[i] = (float)pam_test_rng_normal(&r) * 2.0f;
    /* Ranks by logit (ties impossible with these values). */
    int *order = malloc(sizeof(int) * NV);
    for (int i = 0; i < NV; i++) order[i] = i;
    for (int i = 0; i < NV; i++)
        for (int j = i + 1; j < NV; j++)
            if (l[order[j]] > l[order[i]]) {
                int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }

    /* top-k = 5: exactly the 5 best, in softmax proportion among themselves. */
    pam_sampler_params p = params_off();
    p.top_k = 5;
    double *e = calloc(NV, sizeof *e);
    double sum = 0;
    for (int i = 0; i < 5; i++) sum += e[order[i]] = exp(l[order[i]] - l[order[0]]);
    for (int i = 0; i < 5; i++) e[order[i]] /= sum;
    pam_sampler *s = make(&p, NV);
    double chi = chi_square(s, l, NV, e, N);
    pam_sampler_free(s);
    assert_true(chi < 18.5);

    /* top-p = 0.5: the smallest prefix of the ranking whose mass reaches 0.5. */
    double *full = malloc(sizeof(double) * NV);
    softmax(l, NV, 1.0, full);
    int keep = 0;
    double cum = 0;
    while (cum < 0.5) cum += full[order[keep++]];
    assert_true(keep > 1 && keep < 100);
    memset(e, 0, sizeof(double) * NV);
    sum = 0;
    for (int i = 0; i < keep; i++) sum += full[order[i]];
    for (int i = 0; i < keep; i++) e[order[i]] = full[order[i]] / sum;
    p = params_off();
    p.top_p = 0.5f;
    s = make(&p, NV);
    int *hits = calloc(NV, sizeof *hits);
    for (int i = 0; i < N; i++) hits[pam_sampler_sample(s, l)]++;
    pam_sampler_free(s);
    for (int i = 0; i < NV; i++) {
        if (e[i] == 0) assert_int_equal(hits[i], 0);
        else assert_true(fabs((double)hits[i] / N - e[i]) < 0.02);
    }

    /* min-p = 0.2: tokens below 0.2 * p_max are never drawn, the rest are. */
    p = params_off();
    p.min_p = 0.2f;
    s = make(&p, NV);
    memset(hits, 0, sizeof(int) * NV);
    for (int i = 0; i < N; i++) hits[pam_sampler_sample(s, l)]++;
    pam_sampler_free(s);
    double pmax = full[order[0]];
    for (int i = 0; i < NV; i++) {
        if (full[i] < 0.2 * pmax) assert_int_equal(hits[i], 0);
        else if (full[i] > 0.3 * pmax) assert_true(hits[i] > 0);
    }

    /* Chain: top-k 10 then top-p 0.9 then min-p then temperature all at once
     * only draws from the top 10. */
    p = params_off();
    p.top_k = 10;
    p.top_p = 0.9f;
    p.min_p = 0.05f;
    p.temp = 0.7f;
    s = make(&p, NV);
    for (int i = 0; i < 2000; i++) {
        int32_t t = pam_sampler_sample(s, l);
        int rank = 0;
        while (order[rank] != t) rank++;
        assert_true(rank < 10);
    }
    pam_sampler_free(s);

    free(hits);
    free(full);
    free(e);
    free(order);
    free(l);
}

static const float *g_sort_logits;
static int cmp_rank(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    float x = g_sort_logits[i], y = g_sort_logits[j];
    if (x != y) return x > y ? -1 : 1;
    return i - j;
}

/* Large peaked vocabulary: top-p (with and without min-p) against a
 * brute-force nucleus computed from a full sort in double. */
static void test_top_p_large_vocab(void **state) {
    enum { NV = 50000, N = 4000 };
    float *l = malloc(sizeof(float) * NV);
    pam_test_rng r = {11};
    for (int i = 0; i < NV; i++) l[i] = (float)pam_test_rng_normal(&r);
    for (int i = 0; i < 300; i++) l[(i * 7919) % NV] += 9.0f + (float)(i % 13) * 0.1f; /* a peak of ~300 */
    int *order = malloc(sizeof(int) * NV);
    for (int i = 0; i < NV; i++) order[i] = i;
    g_sort_logits = l;
    qsort(order, NV, sizeof *order, cmp_rank);
    double mx = l[order[0]], sum = 0;
    for (int i = 0; i < NV; i++) sum += exp(l[i] - mx);
    char *allowed = calloc(NV, 1);
    for (int variant = 0; variant < 2; variant++) {
        float top_p = variant ? 0.6f : 0.9f, min_p = variant ? 0.3f : 0.0f;
        memset(allowed, 0, NV);
        double cum = 0;
        int keep = 0;
        while (keep < NV) {
            double pr = exp(l[order[keep]] - mx);
            if (min_p > 0 && pr < min_p) break;
            cum += pr;
            allowed[order[keep++]] = 1;
            if (cum >= top_p * sum) break;
        }
        assert_true(keep > 3 && keep < 1000);
        pam_sampler_params p = params_off();
        p.top_p = top_p;
        p.min_p = min_p;
        pam_sampler *s = make(&p, NV);
        int *hits = calloc(NV, sizeof *hits);
        for (int i = 0; i < N; i++) {
            int32_t t = pam_sampler_sample(s, l);
            if (!allowed[t]) fail_msg("variant %d: token %d outside the nucleus of %d", variant, t, keep);
            hits[t]++;
        }
        pam_sampler_free(s);
        /* The most probable member is drawn, and so is the least probable
         * when the nucleus is small enough for N draws to reach it. */
        assert_true(hits[order[0]] > 0);
        if (keep < 40) assert_true(hits[order[keep - 1]] > 0);
        /* The tail of the nucleus gets its share: mass beyond rank keep/4. */
        double tail = 0, tail_hits = 0;
        for (int i = keep / 4; i < keep; i++) {
            tail += exp(l[order[i]] - mx) / cum;
            tail_hits += hits[order[i]];
        }
        if (fabs(tail_hits / N - tail) > 0.03)
            fail_msg("variant %d: tail mass %.3f drawn, %.3f expected (nucleus %d)", variant, tail_hits / N, tail, keep);
        free(hits);
    }
    free(allowed);
    free(order);
    free(l);
}

static void test_repetition_penalty(void **state) {
    pam_sampler_params p = params_off();
    p.temp = 0.0f;
    p.repeat_penalty = 2.0f;
    p.repeat_last_n = 3;

    /* Positive logit: divided. 2.0 -> 1.0 < 1.9 */
    float l[4] = {2.0f, 1.9f, -1.0f, -1.5f};
    pam_sampler *s = make(&p, 4);
    assert_int_equal(pam_sampler_sample(s, l), 0);
    pam_sampler_accept(s, 0);
    assert_int_equal(pam_sampler_sample(s, l), 1);
    pam_sampler_free(s);

    /* Negative logit: multiplied. -1.0 -> -2.0 < -1.5 */
    float n[3] = {-INFINITY, -1.0f, -1.5f};
    s = make(&p, 3);
    assert_int_equal(pam_sampler_sample(s, n), 1);
    pam_sampler_accept(s, 1);
    assert_int_equal(pam_sampler_sample(s, n), 2);
    pam_sampler_free(s);

    /* Once per distinct token: 3.0 / 1.5 = 2.0 > 1.5, though the token was
     * seen three times (three applications would give 0.89). */
    p.repeat_penalty = 1.5f;
    float o[2] = {3.0f, 1.5f};
    s = make(&p, 2);
    for (int i = 0; i < 3; i++) pam_sampler_accept(s, 0);
    assert_int_equal(pam_sampler_sample(s, o), 0);
    pam_sampler_free(s);

    /* Only the last repeat_last_n tokens count. */
    p.repeat_penalty = 2.0f;
    s = make(&p, 4);
    pam_sampler_accept(s, 0);
    assert_int_equal(pam_sampler_sample(s, l), 1);
    pam_sampler_accept(s, 3);
    pam_sampler_accept(s, 3);
    pam_sampler_accept(s, 3); /* pushes 0 out of the window of 3 */
    assert_int_equal(pam_sampler_sample(s, l), 0);
    /* Out-of-range ids are ignored, not stored. */
    pam_sampler_accept(s, -1);
    pam_sampler_accept(s, 4);
    pam_sampler_accept(s, 0);
    assert_int_equal(pam_sampler_sample(s, l), 1);
    /* reset forgets the history */
    pam_sampler_reset(s);
    assert_int_equal(pam_sampler_sample(s, l), 0);
    pam_sampler_free(s);

    /* With sampling: a penalised token is drawn less often. */
    p = params_off();
    p.repeat_penalty = 3.0f;
    float u[2] = {1.0f, 1.0f};
    s = make(&p, 2);
    pam_sampler_accept(s, 0);
    int zeros = 0;
    for (int i = 0; i < 4000; i++) zeros += pam_sampler_sample(s, u) == 0;
    pam_sampler_free(s);
    /* p(0) = 1 / (1 + e^(2/3)) = 0.339 */
    assert_true(fabs(zeros / 4000.0 - 0.339) < 0.03);
}

static void test_masked_logits_no_nan(void **state) {
    enum { NV = 64 };
    float l[NV];
    for (int i = 0; i < NV; i++) l[i] = -INFINITY;
    pam_sampler_params p = params_off();
    p.top_p = 0.9f;
    p.min_p = 0.1f;
    pam_sampler *s = make(&p, NV);
    /* Everything masked: still a valid id, deterministically. */
    assert_int_equal(pam_sampler_sample(s, l), 0);
    /* One or two live tokens: only they are drawn. */
    l[17] = -3.0f;
    for (int i = 0; i < 100; i++) assert_int_equal(pam_sampler_sample(s, l), 17);
    l[40] = -3.0f;
    int c17 = 0;
    for (int i = 0; i < 1000; i++) {
        int32_t t = pam_sampler_sample(s, l);
        assert_true(t == 17 || t == 40);
        c17 += t == 17;
    }
    assert_true(c17 > 400 && c17 < 600);
    pam_sampler_free(s);

    /* Huge magnitudes do not overflow the softmax. */
    float h[3] = {3e38f, -3e38f, 3e38f};
    p = params_off();
    s = make(&p, 3);
    for (int i = 0; i < 100; i++) {
        int32_t t = pam_sampler_sample(s, h);
        assert_true(t == 0 || t == 2);
    }
    pam_sampler_free(s);
}


static void test_logit_bias(void **state) {
    pam_sampler_params p = params_off();
    p.temp = 0.0f;
    float l[4] = {2.0f, 1.9f, 0.0f, -1.0f};
    /* +0.5 on token 2 is not enough, +2.5 is (0 + 2.5 > 2.0). */
    pam_logit_bias b1[] = {{2, 0.5f}};
    p.logit_bias = b1;
    p.n_logit_bias = 1;
    pam_sampler *s = make(&p, 4);
    assert_int_equal(pam_sampler_sample(s, l), 0);
    pam_sampler_free(s);
    b1[0].bias = 2.5f;
    s = make(&p, 4);
    b1[0].bias = -50.0f; /* the sampler copied the list at create */
    assert_int_equal(pam_sampler_sample(s, l), 2);
    pam_sampler_free(s);

    /* -100 bans: the argmax goes to the next token, and sampling never draws it. */
    pam_logit_bias ban[] = {{0, -100.0f}, {1, -100.0f}};
    p.logit_bias = ban;
    p.n_logit_bias = 2;
    s = make(&p, 4);
    assert_int_equal(pam_sampler_sample(s, l), 2);
    pam_token_logprob lp;
    pam_sampler_logprobs(s, 0, 4, &lp);
    assert_true(lp.logprob == -INFINITY);
    assert_int_equal(lp.n_top, 2); /* only tokens that can be drawn */
    pam_sampler_free(s);
    p.temp = 1.0f;
    s = make(&p, 4);
    float flat[4] = {5.0f, 5.0f, 0.0f, 0.0f};
    for (int i = 0; i < 500; i++) {
        int32_t t = pam_sampler_sample(s, flat);
        assert_true(t == 2 || t == 3);
    }
    pam_sampler_free(s);

    /* Ids are checked against the vocabulary, values for NaN / +inf. */
    pam_logit_bias out[] = {{4, 1.0f}};
    p.logit_bias = out;
    p.n_logit_bias = 1;
    pam_sampler *bad = NULL;
    assert_int_equal(pam_sampler_create(&p, 4, &bad), PAM_ERR_RANGE);
    assert_null(bad);
    out[0] = (pam_logit_bias){-1, 1.0f};
    assert_int_equal(pam_sampler_params_check(&p), PAM_ERR_INVALID);
    out[0] = (pam_logit_bias){1, NAN};
    assert_int_equal(pam_sampler_params_check(&p), PAM_ERR_INVALID);
    out[0] = (pam_logit_bias){1, INFINITY};
    assert_int_equal(pam_sampler_params_check(&p), PAM_ERR_INVALID);
    out[0] = (pam_logit_bias){1, -INFINITY}; /* a ban, like -100 */
    assert_int_equal(pam_sampler_params_check(&p), PAM_OK);
    p.logit_bias = NULL;
    assert_int_equal(pam_sampler_params_check(&p), PAM_ERR_INVALID);
}

/* OpenAI: l -= count * frequency + (count > 0) * presence, over generated
 * tokens only. */
static void test_frequency_presence(void **state) {
    pam_sampler_params p = params_off();
    p.temp = 0.0f;
    float l[3] = {2.0f, 1.5f, 0.0f};

    /* frequency scales with the count: 2 - 2 * 0.2 = 1.6 > 1.5, 2 - 3 * 0.2 = 1.4 < 1.5 */
    p.frequency_penalty = 0.2f;
    pam_sampler *s = make(&p, 3);
    pam_sampler_accept(s, 0);
    pam_sampler_accept(s, 0);
    assert_int_equal(pam_sampler_sample(s, l), 0);
    pam_sampler_accept(s, 0);
    assert_int_equal(pam_sampler_sample(s, l), 1);
    /* the log-probabilities are those of the penalised logits */
    pam_token_logprob lp;
    pam_sampler_logprobs(s, 0, 3, &lp);
    double e0 = exp(2.0 - 0.6), e1 = exp(1.5), e2 = exp(0.0);
    assert_true(fabs(lp.logprob - log(e0 / (e0 + e1 + e2))) < 1e-6);
    assert_int_equal(lp.top[0].id, 1);
    /* prompt tokens do not count */
    pam_sampler_reset(s);
    for (int i = 0; i < 10; i++) pam_sampler_accept_prompt(s, 0);
    assert_int_equal(pam_sampler_sample(s, l), 0);
    pam_sampler_free(s);

    /* presence does not: one or many occurrences cost the same 0.3 */
    p.frequency_penalty = 0.0f;
    p.presence_penalty = 0.3f;
    s = make(&p, 3);
    for (int i = 0; i < 5; i++) pam_sampler_accept(s, 0);
    assert_int_equal(pam_sampler_sample(s, l), 0); /* 1.7 > 1.5 */
    pam_sampler_free(s);
    p.presence_penalty = 0.6f;
    s = make(&p, 3);
    pam_sampler_accept(s, 0);
    assert_int_equal(pam_sampler_sample(s, l), 1); /* 1.4 < 1.5 */
    pam_sampler_free(s);

    /* negative values encourage repetition */
    p.presence_penalty = -1.0f;
    s = make(&p, 3);
    pam_sampler_accept(s, 2);
    assert_int_equal(pam_sampler_sample(s, l), 0);
    pam_sampler_accept(s, 2);
    p.frequency_penalty = -1.5f;
    pam_sampler_free(s);
    s = make(&p, 3);
    pam_sampler_accept(s, 2);
    assert_int_equal(pam_sampler_sample(s, l), 2); /* 0 + 1.5 + 1 > 2 */
    pam_sampler_free(s);

    /* With sampling: p(0) falls as in the reference softmax. */
    p = params_off();
    p.frequency_penalty = 0.5f;
    float u[2] = {1.0f, 1.0f};
    s = make(&p, 2);
    pam_sampler_accept(s, 0);
    pam_sampler_accept(s, 0);
    int zeros = 0;
    for (int i = 0; i < 4000; i++) zeros += pam_sampler_sample(s, u) == 0;
    pam_sampler_free(s);
    assert_true(fabs(zeros / 4000.0 - 1.0 / (1.0 + exp(1.0))) < 0.03); /* 0.269 */

    p.frequency_penalty = NAN;
    assert_int_equal(pam_sampler_params_check(&p), PAM_ERR_INVALID);
    p.frequency_penalty = 0.0f;
    p.presence_penalty = INFINITY;
    assert_int_equal(pam_sampler_params_check(&p), PAM_ERR_INVALID);
}

/* pam_logprobs against a float64 log-softmax, on a large vocabulary with
 * ties, masked entries and a large offset. */
static void test_logprobs_reference(void **state) {
    enum { NV = 5000 };
    float *l = malloc(NV * sizeof *l);
    uint64_t x = 42;
    for (int i = 0; i < NV; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        l[i] = 1000.0f + (float)((x >> 33) % 2000) / 100.0f; /* ties are frequent */
    }
    l[7] = -INFINITY;
    l[8] = NAN;
    double mx = -INFINITY, sum = 0;
    for (int i = 0; i < NV; i++)
        if (l[i] > -INFINITY && l[i] > mx) mx = l[i];
    for (int i = 0; i < NV; i++)
        if (l[i] > -INFINITY) sum += exp((double)l[i] - mx);
    double lse = mx + log(sum);
    for (int k = 0; k <= PAM_MAX_TOP_LOGPROBS + 3; k += 5) {
        pam_token_logprob lp;
        pam_logprobs(l, NV, 123, k, &lp);
        int kk = k > PAM_MAX_TOP_LOGPROBS ? PAM_MAX_TOP_LOGPROBS : k;
        assert_int_equal(lp.n_top, kk);
        assert_int_equal(lp.id, 123);
        assert_true(fabs(lp.logprob - ((double)l[123] - lse)) < 1e-5);
        double mass = 0;
        for (int i = 0; i < lp.n_top; i++) {
            assert_true(fabs(lp.top[i].logprob - ((double)l[lp.top[i].id] - lse)) < 1e-5);
            mass += exp(lp.top[i].logprob);
            if (i > 0) {
                /* rank order: higher logit first, equal logits by lower id */
                float a = l[lp.top[i - 1].id], b = l[lp.top[i].id];
                assert_true(a > b || (a == b && lp.top[i - 1].id < lp.top[i].id));
            }
        }
        assert_true(mass <= 1.0 + 1e-6);
        /* nothing outside the list ranks above its last entry */
        if (lp.n_top > 0) {
            const pam_logprob_top *w = &lp.top[lp.n_top - 1];
            int above = 0;
            for (int i = 0; i < NV; i++)
                above += l[i] > l[w->id] || (l[i] == l[w->id] && i < w->id);
            assert_int_equal(above, lp.n_top - 1);
        }
    }
    /* the greedy token is the first entry */
    pam_sampler_params p = params_off();
    p.temp = 0.0f;
    pam_sampler *s = make(&p, NV);
    int32_t t = pam_sampler_sample(s, l);
    pam_token_logprob lp;
    pam_sampler_logprobs(s, t, 3, &lp);
    assert_int_equal(lp.top[0].id, t);
    assert_true(lp.top[0].logprob == lp.logprob);
    pam_sampler_free(s);
    /* masked or NaN: -inf; everything masked: -inf, no alternatives */
    pam_logprobs(l, NV, 7, 2, &lp);
    assert_true(lp.logprob == -INFINITY);
    pam_logprobs(l, NV, 8, 2, &lp);
    assert_true(lp.logprob == -INFINITY);
    for (int i = 0; i < NV; i++) l[i] = -INFINITY;
    pam_logprobs(l, NV, 3, 5, &lp);
    assert_true(lp.logprob == -INFINITY);
    assert_int_equal(lp.n_top, 0);
    free(l);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_and_check),
        cmocka_unit_test(test_greedy_argmax_and_ties),
        cmocka_unit_test(test_seed_reproduces),
        cmocka_unit_test(test_distribution_matches_softmax),
        cmocka_unit_test(test_temperature),
        cmocka_unit_test(test_filters_collapse_to_greedy),
        cmocka_unit_test(test_top_k_and_top_p_sets),
        cmocka_unit_test(test_top_p_large_vocab),
        cmocka_unit_test(test_repetition_penalty),
        cmocka_unit_test(test_masked_logits_no_nan),
        cmocka_unit_test(test_logit_bias),
        cmocka_unit_test(test_frequency_presence),
        cmocka_unit_test(test_logprobs_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
