/* Block formats and dot products against float64 oracles and an independent
 * re-statement of ggml's rounding rules. Every check is run at every ISA level
 * the CPU has, so the scalar fallback is covered on any machine. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fp16.h"
#include "kernels/cpu.h"
#include "kernels/dtype.h"
#include "kernels/ksel.h"
#include "kernels/quant.h"
#include "util/test_util.h"

static const pam_dtype k_types[] = {PAM_DT_F32,  PAM_DT_F16,  PAM_DT_BF16, PAM_DT_Q8_0,
                                    PAM_DT_Q4_0, PAM_DT_Q4_K, PAM_DT_Q6_K};
#define N_TYPES (int)(sizeof k_types / sizeof k_types[0])

/* Data shapes that hit different paths: plain gaussian, uniform, outliers,
 * all-positive (Q4_K with a zero min), zeroed blocks, tiny magnitudes. */
enum { D_NORMAL, D_UNIFORM, D_OUTLIERS, D_POSITIVE, D_ZERO_BLOCKS, D_TINY, D_KINDS };

static void fill(pam_test_rng *r, int kind, float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double v = pam_test_rng_normal(r);
        switch (kind) {
        case D_UNIFORM: v = pam_test_rng_uniform(r, -1, 1); break;
        case D_OUTLIERS: v *= (i % 37 == 5) ? 30.0 : 1.0; break;
        case D_POSITIVE: v = pam_test_rng_uniform(r, 0.5, 2.0); break;
        case D_ZERO_BLOCKS: v = ((i / 32) % 3 == 1) ? 0.0 : v; break;
        case D_TINY: v *= 1e-3; break;
        default: break;
        }
        x[i] = (float)v;
    }
}

static int64_t block_elems(pam_dtype t) { return pam_dtype_get(t)->block_elems; }

static void *row_alloc(pam_dtype t, int64_t n) {
    size_t bytes = 0;
    assert_int_equal(pam_dtype_row_bytes(t, n, &bytes), PAM_OK);
    void *p = malloc(bytes + 1);
    assert_non_null(p);
    memset(p, 0xAB, bytes + 1); /* garbage, so unwritten bytes show up */
    return p;
}

static size_t row_bytes(pam_dtype t, int64_t n) {
    size_t bytes = 0;
    assert_int_equal(pam_dtype_row_bytes(t, n, &bytes), PAM_OK);
    return bytes;
}

/* ---- F16 / BF16 ---------------------------------------------------------- */

static void test_float_rows(void **state) {
    const int64_t sizes[] = {1, 7, 32, 33, 256, 1001};
    pam_test_rng r = {1};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int64_t n = sizes[s];
        float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
        uint16_t *h = malloc((size_t)n * 2);
        fill(&r, D_OUTLIERS, x, n);
        pam_quantize_row(PAM_DT_F16, x, h, n);
        pam_dequantize_row(PAM_DT_F16, h, y, n);
        for (int64_t i = 0; i < n; i++) {
            assert_int_equal(h[i], pam_f32_to_f16(x[i]));
            assert_true(y[i] == pam_f16_to_f32(h[i]));
            assert_true(fabsf(y[i] - x[i]) <= fabsf(x[i]) * (1.0f / 2048) + 6e-8f);
        }
        pam_quantize_row(PAM_DT_BF16, x, h, n);
        pam_dequantize_row(PAM_DT_BF16, h, y, n);
        for (int64_t i = 0; i < n; i++) {
            assert_int_equal(h[i], pam_f32_to_bf16(x[i]));
            assert_true(fabsf(y[i] - x[i]) <= fabsf(x[i]) * (1.0f / 256));
        }
        pam_quantize_row(PAM_DT_F32, x, y, n);
        assert_memory_equal(x, y, (size_t)n * sizeof *x);
        free(x);
        free(y);
        free(h);
    }
}

/* ---- Q8_0 / Q4_0: byte-identical to a restatement of ggml's rules ------- */

/* ggml: d = amax/127, q = roundf(x * (1/d)), halves away from zero. */
static void oracle_q8_0(const float *x, pam_block_q8_0 *b) {
    float amax = 0;
    for (int j = 0; j < 32; j++)
        if (fabsf(x[j]) > amax) amax = fabsf(x[j]);
    float d = amax / 127.0f;
    float inv = d != 0 ? 1.0f / d : 0.0f;
    b->d = pam_f32_to_f16(d);
    for (int j = 0; j < 32; j++) b->qs[j] = (int8_t)roundf(x[j] * inv);
}

/* ggml: the value of largest magnitude (first one on ties) becomes -8*d;
 * q = floor(x/d + 8.5) capped at 15, nibble j low and j+16 high. */
static void oracle_q4_0(const float *x, pam_block_q4_0 *b) {
    int imax = 0;
    for (int j = 1; j < 32; j++)
        if (fabsf(x[j]) > fabsf(x[imax])) imax = j;
    float d = x[imax] / -8.0f;
    float inv = d != 0 ? 1.0f / d : 0.0f;
    b->d = pam_f32_to_f16(d);
    for (int j = 0; j < 16; j++) {
        int lo = (int)floorf(x[j] * inv + 8.5f), hi = (int)floorf(x[j + 16] * inv + 8.5f);
        if (lo > 15) lo = 15;
        if (hi > 15) hi = 15;
        b->qs[j] = (uint8_t)(lo | hi << 4);
    }
}

static void test_q8_0_q4_0_blocks(void **state) {
    const int64_t sizes[] = {32, 96, 256, 768, 4352};
    pam_test_rng r = {2};
    for (int kind = 0; kind < D_KINDS; kind++) {
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            int64_t n = sizes[s], nb = n / 32;
            float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
            fill(&r, kind, x, n);
            if (kind == D_UNIFORM) { /* exact halves exercise the tie rules */
                for (int64_t i = 0; i < n; i += 32) x[i] = 127.0f, x[i + 1] = 0.5f, x[i + 2] = -2.5f;
            }
            pam_block_q8_0 *q8 = row_alloc(PAM_DT_Q8_0, n), want8;
            pam_quantize_row(PAM_DT_Q8_0, x, q8, n);
            pam_dequantize_row(PAM_DT_Q8_0, q8, y, n);
            for (int64_t b = 0; b < nb; b++) {
                oracle_q8_0(x + 32 * b, &want8);
                assert_memory_equal(&q8[b], &want8, sizeof want8);
                float amax = 0;
                for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[32 * b + j]));
                double df = amax / 127.0, dh = pam_f16_to_f32(q8[b].d);
                double bound = df / 2 + 127 * fabs(dh - df) + 1e-7 * amax;
                for (int j = 0; j < 32; j++) {
                    assert_true(fabs((double)y[32 * b + j] - x[32 * b + j]) <= bound);
                    assert_true(y[32 * b + j] == q8[b].qs[j] * (float)dh);
                }
            }
            pam_block_q4_0 *q4 = row_alloc(PAM_DT_Q4_0, n), want4;
            pam_quantize_row(PAM_DT_Q4_0, x, q4, n);
            pam_dequantize_row(PAM_DT_Q4_0, q4, y, n);
            for (int64_t b = 0; b < nb; b++) {
                oracle_q4_0(x + 32 * b, &want4);
                assert_memory_equal(&q4[b], &want4, sizeof want4);
                float amax = 0;
                for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[32 * b + j]));
                /* Half a step, except the top level (+7) is clipped: values in
                 * (7.5, 8] steps from zero are off by up to a whole step. */
                double df = amax / 8.0, dh = fabs(pam_f16_to_f32(q4[b].d));
                for (int j = 0; j < 32; j++) {
                    double xv = x[32 * b + j];
                    double steps = df ? fabs(xv) / df : 0;
                    double bound = (steps > 7.49 ? df : df / 2) + 8 * fabs(dh - df) + 1e-6 * amax;
                    assert_true(fabs((double)y[32 * b + j] - xv) <= bound);
                }
            }
            free(q8);
            free(q4);
            free(x);
            free(y);
        }
    }
}

/* ---- Golden: blocks produced by ggml's own quantize_row_*_ref ----------------
 * FNV-1a hashes of ggml's output (Q8_0, Q4_0, Q4_K, Q6_K, Q8_K) for 16384
 * values from the generator below, in four shapes. A mismatch means a
 * quantiser no longer writes what llama.cpp writes. */
static uint64_t golden_state;
static double golden_uniform(void) {
    golden_state = golden_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(golden_state >> 11) / 9007199254740992.0;
}

static uint64_t fnv1a(const void *p, size_t n) {
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ULL;
    return h;
}

static void test_ggml_golden(void **state) {
    static const uint64_t want[4][5] = {
        {0x299061eeaedf341full, 0x89e00b77f28c4019ull, 0x4f3301725f7c326eull, 0xf0c8b8d4a079763full, 0x6384389e3ed977dfull},
        {0x8740c6e0622a337cull, 0x24b5e49f1bdea554ull, 0x443212dd1d2c30fcull, 0x513cc3303f6db65full, 0x2e6f57f63ec1d3daull},
        {0x7c54bdb4531a085cull, 0x6aa6c165c08e4775ull, 0xd943cd788ddc2fe6ull, 0x1cd8f580294bc688ull, 0x24163936fb4d2e83ull},
        {0x7f15079bdefb6b2dull, 0xc8dd82a5072b9994ull, 0x4adb37e81866c8daull, 0x37e460f9dfca7483ull, 0xd51c46487d166677ull},
    };
    const pam_dtype ts[5] = {PAM_DT_Q8_0, PAM_DT_Q4_0, PAM_DT_Q4_K, PAM_DT_Q6_K, PAM_DT_Q8_K};
    enum { N = 16384 };
    float *x = malloc(N * sizeof *x);
    golden_state = 7;
    for (int kind = 0; kind < 4; kind++) {
        for (int i = 0; i < N; i++) {
            double v = (golden_uniform() - 0.5) * 2;
            if (kind == 1) v = v * v * v * 10; /* heavy centre, long tails */
            if (kind == 2) v = golden_uniform() + 0.5; /* all positive */
            if (kind == 3) v = (i % 37 == 3) ? v * 50 : v * 1e-3; /* sparse outliers */
            x[i] = (float)v;
        }
        for (int t = 0; t < 5; t++) {
            size_t bytes = row_bytes(ts[t], N);
            void *q = calloc(1, bytes);
            pam_quantize_row(ts[t], x, q, N);
            uint64_t h = fnv1a(q, bytes);
            if (h != want[kind][t]) {
                fprintf(stderr, "%s kind %d: hash %016llx\n", pam_dtype_name(ts[t]), kind,
                        (unsigned long long)h);
                fail();
            }
            free(q);
        }
    }
    free(x);
}

/* ---- K-quants ------------------------------------------------------------ */

static void unpack_q4_K_scale(const uint8_t *s, int j, int *sc, int *m) {
    /* Restated bit by bit: six bits each; j >= 4 split 4 low + 2 high. */
    if (j < 4) {
        *sc = s[j] & 0x3f;
        *m = s[j + 4] & 0x3f;
    } else {
        *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

static void pack_q4_K_scales(const int *sc, const int *m, uint8_t *s) {
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
        s[j + 4] = (uint8_t)(m[j] | (m[j + 4] >> 4) << 6);
        s[j + 8] = (uint8_t)((sc[j + 4] & 15) | (m[j + 4] & 15) << 4);
    }
}

/* Element e of a Q4_K block: 64-value groups, low nibbles then high. */
static int q4_K_quant(const pam_block_q4_K *b, int e) {
    uint8_t byte = b->qs[(e / 64) * 32 + e % 32];
    return (e % 64) < 32 ? byte & 15 : byte >> 4;
}

static int q6_K_quant(const pam_block_q6_K *b, int e) {
    int half = e / 128, r = e % 128, l = r % 32, quarter = r / 32;
    uint8_t lo = b->ql[half * 64 + l + (quarter & 1) * 32];
    int low4 = quarter < 2 ? lo & 15 : lo >> 4;
    int high2 = (b->qh[half * 32 + l] >> (2 * quarter)) & 3;
    return (low4 | high2 << 4) - 32;
}

static void q6_K_set(pam_block_q6_K *b, int e, int q) { /* q in [-32, 31] */
    int u = q + 32, half = e / 128, r = e % 128, l = r % 32, quarter = r / 32;
    uint8_t *lo = &b->ql[half * 64 + l + (quarter & 1) * 32];
    if (quarter < 2)
        *lo = (uint8_t)((*lo & 0xf0) | (u & 15));
    else
        *lo = (uint8_t)((*lo & 0x0f) | (u & 15) << 4);
    uint8_t *hi = &b->qh[half * 32 + l];
    *hi = (uint8_t)((*hi & ~(3 << (2 * quarter))) | ((u >> 4) << (2 * quarter)));
}

static void test_q4_K_handbuilt(void **state) {
    pam_test_rng r = {3};
    pam_block_q4_K b[2];
    int sc[2][8], m[2][8], q[2][256];
    for (int k = 0; k < 2; k++) {
        for (int j = 0; j < 8; j++) {
            sc[k][j] = (int)(pam_test_rng_u64(&r) % 64);
            m[k][j] = (int)(pam_test_rng_u64(&r) % 64);
        }
        sc[k][7] = 63, m[k][5] = 63; /* top bits set */
        pack_q4_K_scales(sc[k], m[k], b[k].scales);
        b[k].d = pam_f32_to_f16(k ? 0.25f : 0.0078125f);
        b[k].dmin = pam_f32_to_f16(k ? 0.125f : 0.5f);
        memset(b[k].qs, 0, sizeof b[k].qs);
        for (int e = 0; e < 256; e++) {
            q[k][e] = (int)(pam_test_rng_u64(&r) % 16);
            uint8_t *byte = &b[k].qs[(e / 64) * 32 + e % 32];
            *byte |= (uint8_t)((e % 64) < 32 ? q[k][e] : q[k][e] << 4);
        }
    }
    float y[512];
    pam_dequantize_row(PAM_DT_Q4_K, b, y, 512);
    for (int k = 0; k < 2; k++) {
        double d = pam_f16_to_f32(b[k].d), dmin = pam_f16_to_f32(b[k].dmin);
        for (int e = 0; e < 256; e++) {
            int j = e / 32;
            int usc, um;
            unpack_q4_K_scale(b[k].scales, j, &usc, &um);
            assert_int_equal(usc, sc[k][j]);
            assert_int_equal(um, m[k][j]);
            assert_int_equal(q4_K_quant(&b[k], e), q[k][e]);
            /* powers of two: every product and difference is exact */
            double want = d * sc[k][j] * q[k][e] - dmin * m[k][j];
            assert_true(y[256 * k + e] == (float)want);
        }
    }
}

static void test_q6_K_handbuilt(void **state) {
    pam_test_rng r = {4};
    pam_block_q6_K b;
    memset(&b, 0, sizeof b);
    int q[256];
    for (int j = 0; j < 16; j++) b.scales[j] = (int8_t)((int)(pam_test_rng_u64(&r) % 256) - 128);
    b.scales[3] = -128, b.scales[9] = 127;
    b.d = pam_f32_to_f16(0.03125f);
    for (int e = 0; e < 256; e++) {
        q[e] = (int)(pam_test_rng_u64(&r) % 64) - 32;
        if (e == 0) q[e] = -32;
        if (e == 255) q[e] = 31;
        q6_K_set(&b, e, q[e]);
    }
    float y[256];
    pam_dequantize_row(PAM_DT_Q6_K, &b, y, 256);
    for (int e = 0; e < 256; e++) {
        assert_int_equal(q6_K_quant(&b, e), q[e]);
        assert_true(y[e] == (float)(0.03125 * b.scales[e / 16] * q[e]));
    }
}

/* Round trip: every value lies within half a step of the grid of its
 * sub-block, or beyond the grid's end by no more than it is clipped; and the
 * whole row's relative RMS error is what these formats normally reach. */
static void check_k_roundtrip(pam_dtype t, const float *x, const void *blocks, const float *y,
                              int64_t n, int kind) {
    double se = 0, sx = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t bi = i / 256;
        int e = (int)(i % 256);
        double lo, hi, step;
        if (t == PAM_DT_Q4_K) {
            const pam_block_q4_K *b = (const pam_block_q4_K *)blocks + bi;
            int sc, m;
            unpack_q4_K_scale(b->scales, e / 32, &sc, &m);
            step = (double)pam_f16_to_f32(b->d) * sc;
            lo = -(double)pam_f16_to_f32(b->dmin) * m;
            hi = lo + 15 * step;
            assert_true(y[i] == (float)((float)(pam_f16_to_f32(b->d) * sc) * q4_K_quant(b, e) -
                                        (float)(pam_f16_to_f32(b->dmin) * m)));
        } else {
            const pam_block_q6_K *b = (const pam_block_q6_K *)blocks + bi;
            step = (double)pam_f16_to_f32(b->d) * b->scales[e / 16];
            lo = fmin(-32 * step, 31 * step);
            hi = fmax(-32 * step, 31 * step);
            step = fabs(step);
            assert_true(y[i] == (float)(pam_f16_to_f32(b->d) * b->scales[e / 16] * q6_K_quant(b, e)));
        }
        double xv = x[i];
        double bound = fmax(step / 2, fmax(lo - xv, xv - hi)) * (1 + 1e-5) + 1e-6 * fabs(xv);
        if (step == 0) bound = fabs(xv) + fabs(lo) + 1e-30; /* sub-block collapsed to its min */
        if (!(fabs(y[i] - xv) <= bound)) {
            fprintf(stderr, "%s i=%lld x=%g y=%g step=%g lo=%g hi=%g\n", pam_dtype_name(t),
                    (long long)i, xv, y[i], step, lo, hi);
            fail();
        }
        se += (y[i] - xv) * (y[i] - xv);
        sx += xv * xv;
    }
    double rel = sx > 0 ? sqrt(se / sx) : 0;
    /* measured on these inputs: Q4_K ~0.06-0.09, Q6_K ~0.015-0.02 (outliers excepted) */
    double limit = t == PAM_DT_Q4_K ? 0.12 : 0.03;
    if (kind == D_OUTLIERS) limit *= 2.5;
    if (rel > limit) {
        fprintf(stderr, "%s kind %d rel rms %g > %g\n", pam_dtype_name(t), kind, rel, limit);
        fail();
    }
}

static void test_k_roundtrip(void **state) {
    const int64_t sizes[] = {256, 768, 4352};
    pam_test_rng r = {5};
    const pam_dtype ts[] = {PAM_DT_Q4_K, PAM_DT_Q6_K};
    for (int ti = 0; ti < 2; ti++)
        for (int kind = 0; kind < D_KINDS; kind++)
            for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
                int64_t n = sizes[s];
                float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
                fill(&r, kind, x, n);
                void *q = row_alloc(ts[ti], n);
                pam_quantize_row(ts[ti], x, q, n);
                pam_dequantize_row(ts[ti], q, y, n);
                check_k_roundtrip(ts[ti], x, q, y, n, kind);
                free(q);
                free(x);
                free(y);
            }
    /* an all-zero row gives all-zero blocks */
    float z[256] = {0}, y[256];
    pam_block_q6_K b6;
    pam_quantize_row(PAM_DT_Q6_K, z, &b6, 256);
    pam_dequantize_row(PAM_DT_Q6_K, &b6, y, 256);
    for (int i = 0; i < 256; i++) assert_true(y[i] == 0.0f);
    pam_block_q4_K b4;
    pam_quantize_row(PAM_DT_Q4_K, z, &b4, 256);
    pam_dequantize_row(PAM_DT_Q4_K, &b4, y, 256);
    for (int i = 0; i < 256; i++) assert_true(y[i] == 0.0f);
}

static void test_q8_K_activations(void **state) {
    pam_test_rng r = {6};
    for (int kind = 0; kind < D_KINDS; kind++) {
        float x[768];
        fill(&r, kind, x, 768);
        if (kind == D_ZERO_BLOCKS) memset(x + 256, 0, 256 * sizeof *x);
        pam_block_q8_K a[3];
        pam_quantize_activations(PAM_DT_Q6_K, x, a, 768);
        assert_int_equal(pam_vec_dot_type(PAM_DT_Q4_K), PAM_DT_Q8_K);
        for (int b = 0; b < 3; b++) {
            float amax = 0;
            for (int j = 0; j < 256; j++) amax = fmaxf(amax, fabsf(x[256 * b + j]));
            assert_true(fabsf(fabsf(a[b].d) * 127 - amax) <= 1e-6f * amax);
            for (int g = 0; g < 16; g++) {
                int sum = 0;
                for (int j = 0; j < 16; j++) {
                    int q = a[b].qs[16 * g + j];
                    assert_true(q >= -127 && q <= 127);
                    sum += q;
                    float xv = x[256 * b + 16 * g + j];
                    assert_true(fabsf(a[b].d * q - xv) <= fabsf(a[b].d) * 0.5f * (1 + 1e-5f) + 1e-7f * amax);
                }
                assert_int_equal(a[b].bsums[g], sum);
            }
        }
    }
}

/* ---- Dot products -------------------------------------------------------- */

typedef struct {
    pam_dtype t;
    int64_t n;
    void *w;     /* weights in t */
    void *act;   /* activations in the vec-dot type */
    double want; /* float64 dot of dequantised weights and activations */
    double mag;  /* sum |w_i a_i|, the scale of rounding error */
} dot_case;

static void dot_case_make(dot_case *c, pam_dtype t, int64_t n, pam_test_rng *r, int kind) {
    c->t = t;
    c->n = n;
    float *x = malloc((size_t)n * sizeof *x), *a = malloc((size_t)n * sizeof *a);
    float *wd = malloc((size_t)n * sizeof *wd), *ad = malloc((size_t)n * sizeof *ad);
    fill(r, kind, x, n);
    fill(r, kind == D_POSITIVE ? D_NORMAL : kind, a, n);
    c->w = row_alloc(t, n);
    pam_quantize_row(t, x, c->w, n);
    c->act = malloc(pam_activation_bytes(t, n) + 1);
    pam_quantize_activations(t, a, c->act, n);
    pam_dequantize_row(t, c->w, wd, n);
    pam_dequantize_row(pam_vec_dot_type(t), c->act, ad, n);
    c->want = 0;
    c->mag = 0;
    for (int64_t i = 0; i < n; i++) {
        c->want += (double)wd[i] * ad[i];
        c->mag += fabs((double)wd[i] * ad[i]);
    }
    free(x);
    free(a);
    free(wd);
    free(ad);
}

static void dot_case_free(dot_case *c) {
    free(c->w);
    free(c->act);
}

/* Integer block sums are exact; what remains is float rounding of per-block
 * scales and the running sum, a few ulps of the magnitude (measured worst:
 * ~7e-7 for float rows summed element by element, ~1e-7 for blocks). */
static double dot_tol(const dot_case *c) {
    double rel = pam_dtype_get(c->t)->block_elems == 1 ? 1e-5 : 2e-6;
    return rel * c->mag + 1e-30;
}

static int n_isas(void) { return (int)pam_cpu_detect() + 1; }

/* Forces variant vi of weight type t's matvec kernel (kernels/ksel.h);
 * returns its name, or NULL when there is no such variant or this CPU cannot
 * run it (nothing is forced then). */
static const char *force_variant(pam_dtype t, int vi) {
    int id = pam_vec_kernel_id(t);
    const pam_ksel_variant *v = pam_ksel_variant_at(id, vi);
    if (!v || !pam_ksel_can_run(v)) return NULL;
    assert_int_equal(pam_ksel_force(id, v->name), PAM_OK);
    return v->name;
}

static void unforce(pam_dtype t) { assert_int_equal(pam_ksel_force(pam_vec_kernel_id(t), NULL), PAM_OK); }

/* Every variant the chooser can pick on this machine (every ISA level it has,
 * and each level's alternatives) against the float64 reference. */
static void test_vec_dot_vs_f64(void **state) {
    const int64_t fsizes[] = {1, 7, 32, 33, 96, 256, 1001, 4352};
    const int64_t qsizes[] = {32, 96, 256, 544, 768, 1056, 1600, 4352};
    const int64_t ksizes[] = {256, 768, 4352};
    pam_test_rng r = {7};
    double worst[N_TYPES] = {0};
    int tested = 0;
    for (int vi = 0; vi < 8; vi++) {
        for (int ti = 0; ti < N_TYPES; ti++) {
            pam_dtype t = k_types[ti];
            const char *vname = force_variant(t, vi);
            if (!vname) continue;
            tested++;
            const int64_t *sizes = block_elems(t) == 1 ? fsizes : block_elems(t) == 32 ? qsizes : ksizes;
            int ns = block_elems(t) == 1 ? 8 : block_elems(t) == 32 ? 8 : 3;
            for (int kind = 0; kind < D_KINDS; kind++)
                for (int s = 0; s < ns; s++) {
                    dot_case c;
                    dot_case_make(&c, t, sizes[s], &r, kind);
                    float got = pam_vec_dot(t, c.w, c.act, c.n);
                    float ref = pam_vec_dot_ref(t, c.w, c.act, c.n);
                    double tol = dot_tol(&c);
                    double e1 = fabs(got - c.want), e2 = fabs(ref - c.want);
                    if (c.mag > 0) worst[ti] = fmax(worst[ti], fmax(e1, e2) / c.mag);
                    if (!(e1 <= tol && e2 <= tol)) {
                        fprintf(stderr, "%s %s n=%lld kind=%d: got %.9g ref %.9g want %.9g tol %g\n",
                                vname, pam_dtype_name(t), (long long)c.n, kind, got, ref,
                                c.want, tol);
                        fail();
                    }
                    dot_case_free(&c);
                }
            unforce(t);
        }
    }
    for (int ti = 0; ti < N_TYPES; ti++)
        printf("# %-5s worst |err|/sum|wa| = %.3g\n", pam_dtype_name(k_types[ti]), worst[ti]);
    printf("# %d (type, variant) pairs tested\n", tested);
    assert_true(tested >= N_TYPES * n_isas());
}

/* Each ISA's kernel is deterministic and they agree with each other. */
static void test_dispatch(void **state) {
    assert_int_equal(pam_cpu_set_isa("sse9"), PAM_ERR_INVALID);
    if (pam_cpu_detect() < PAM_ISA_AVX512)
        assert_int_equal(pam_cpu_set_isa("avx512"), PAM_ERR_UNSUPPORTED);
    printf("# detected ISA: %s\n", pam_cpu_isa_name(pam_cpu_detect()));
    pam_test_rng r = {8};
    for (int ti = 0; ti < N_TYPES; ti++) {
        pam_dtype t = k_types[ti];
        int64_t n = block_elems(t) == 1 ? 4099 : 4352;
        dot_case c;
        dot_case_make(&c, t, n, &r, D_NORMAL);
        float first = 0;
        for (int isa = 0; isa < n_isas(); isa++) {
            assert_int_equal(pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)isa)), PAM_OK);
            float v = pam_vec_dot(t, c.w, c.act, n);
            for (int rep = 0; rep < 5; rep++) {
                float again = pam_vec_dot_select(t)(c.w, c.act, n);
                assert_memory_equal(&again, &v, sizeof v);
            }
            if (isa == 0) {
                first = v;
                float ref = pam_vec_dot_ref(t, c.w, c.act, n);
                assert_memory_equal(&ref, &v, sizeof v); /* scalar level is the reference */
            }
            assert_true(fabs((double)v - first) <= 2 * dot_tol(&c));
        }
        dot_case_free(&c);
    }
    assert_int_equal(pam_cpu_set_isa("auto"), PAM_OK);
    assert_string_equal(pam_cpu_isa(), pam_cpu_isa_name(pam_cpu_detect()));
}

/* Variants that share a tiled kernel give the same bits (the tile reproduces
 * one arithmetic), on rows with a partial 16-block group too. */
static void test_variants_of_a_level_agree(void **state) {
    pam_test_rng r = {81};
    int pairs = 0;
    for (int ti = 0; ti < N_TYPES; ti++) {
        pam_dtype t = k_types[ti];
        int id = pam_vec_kernel_id(t);
        assert_true(id >= 0);
        const int64_t n = block_elems(t) == 1 ? 1001 : block_elems(t) == 32 ? 32 * 50 : 256 * 5;
        dot_case c;
        dot_case_make(&c, t, n, &r, D_NORMAL);
        for (int a = 0; a < pam_ksel_n_variants(id); a++)
            for (int b = a + 1; b < pam_ksel_n_variants(id); b++) {
                const pam_ksel_variant *va = pam_ksel_variant_at(id, a), *vb = pam_ksel_variant_at(id, b);
                if (va->isa != vb->isa || !pam_ksel_can_run(va) || !pam_ksel_can_run(vb)) continue;
                assert_int_equal(pam_ksel_force(id, va->name), PAM_OK);
                float x = pam_vec_dot(t, c.w, c.act, n);
                pam_vec_tile_fn ta = pam_vec_tile_select(t);
                assert_int_equal(pam_ksel_force(id, vb->name), PAM_OK);
                float y = pam_vec_dot(t, c.w, c.act, n);
                if (!ta || ta != pam_vec_tile_select(t)) continue; /* own rounding, own tile */
                assert_memory_equal(&x, &y, sizeof x);
                pairs++;
            }
        assert_int_equal(pam_ksel_force(id, NULL), PAM_OK);
        assert_int_equal(pam_ksel_force(id, "no-such-variant"), PAM_ERR_INVALID);
        dot_case_free(&c);
    }
    if (pam_cpu_detect() >= PAM_ISA_AVX512) assert_true(pairs > 0);
}

/* A wrong nibble, scale or sign must not hide inside the tolerance. */
static void test_dot_catches_errors(void **state) {
    pam_test_rng r = {9};
    for (int ti = 0; ti < N_TYPES; ti++) {
        dot_case c;
        dot_case_make(&c, k_types[ti], 256, &r, D_NORMAL);
        uint8_t *bytes = c.w;
        size_t nbytes = row_bytes(c.t, 256);
        int esize = pam_dtype_get(c.t)->block_elems == 1 ? pam_dtype_get(c.t)->block_bytes : 0;
        if (esize) /* float weights: flip the sign of the first half */
            for (size_t i = (size_t)esize - 1; i < nbytes / 2; i += (size_t)esize) bytes[i] ^= 0x80;
        else
            for (size_t i = 0; i < nbytes; i += 7) bytes[i] ^= 0x11;
        float got = pam_vec_dot(c.t, c.w, c.act, c.n);
        if (fabs(got - c.want) <= dot_tol(&c))
            fprintf(stderr, "%s: got %g want %g\n", pam_dtype_name(c.t), got, c.want);
        assert_false(fabs(got - c.want) <= dot_tol(&c));
        dot_case_free(&c);
    }
}

/* Q8_0 activations at every level are byte-identical to the reference
 * quantiser, including exact halves (round half away from zero), values
 * just below a half, zero and tiny blocks. */
static void test_q8_0_activations_each_isa(void **state) {
    enum { N = 32 * 64 };
    float *x = malloc(sizeof(float) * N);
    pam_block_q8_0 want[N / 32], got[N / 32];
    pam_test_rng r = {10};
    for (int kind = 0; kind < D_KINDS + 1; kind++) {
        if (kind < D_KINDS) {
            fill(&r, kind, x, N);
        } else {
            /* blocks with amax 127, so id = 1 and x * id = x: ties and near-ties */
            const float near_half = nextafterf(0.5f, 0.0f);
            for (int i = 0; i < N; i++) {
                int j = i % 32;
                float v = (float)(i % 7) + (j % 4 == 0 ? 0.5f : j % 4 == 1 ? near_half : j % 4 == 2 ? 0.25f : 0.0f);
                x[i] = (j % 2 ? -v : v);
                if (j == 31) x[i] = (i / 32) % 2 ? 127.0f : -127.0f;
                if ((i / 32) % 5 == 3) x[i] *= 0.7f; /* and some with id != 1 */
            }
        }
        pam_quantize_row(PAM_DT_Q8_0, x, want, N);
        for (int isa = 0; isa < n_isas(); isa++) {
            assert_int_equal(pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)isa)), PAM_OK);
            memset(got, 0x5a, sizeof got);
            pam_quantize_activations(PAM_DT_Q4_0, x, got, N);
            if (memcmp(got, want, sizeof got) != 0) {
                fprintf(stderr, "q8_0 activations differ at %s, data kind %d\n", pam_cpu_isa(), kind);
                fail();
            }
        }
    }
    assert_int_equal(pam_cpu_set_isa(NULL), PAM_OK);
    free(x);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_float_rows),
        cmocka_unit_test(test_q8_0_q4_0_blocks),
        cmocka_unit_test(test_ggml_golden),
        cmocka_unit_test(test_q4_K_handbuilt),
        cmocka_unit_test(test_q6_K_handbuilt),
        cmocka_unit_test(test_k_roundtrip),
        cmocka_unit_test(test_q8_K_activations),
        cmocka_unit_test(test_vec_dot_vs_f64),
        cmocka_unit_test(test_dispatch),
        cmocka_unit_test(test_dot_catches_errors),
        cmocka_unit_test(test_q8_0_activations_each_isa),
        cmocka_unit_test(test_variants_of_a_level_agree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
