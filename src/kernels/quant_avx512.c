/* AVX-512 (F/BW/VL/DQ) + VNNI dot products (see quant_isa.h). Only called
 * after pam_cpu_detect() reported PAM_ISA_AVX512, so this file alone is built
 * with the AVX-512 flags.
 *
 * Decode streams every weight byte once per token, so these kernels aim at
 * memory bandwidth rather than arithmetic:
 *  - Q8_0/Q4_0 work on groups of 16 blocks. Two blocks share a zmm; VNNI
 *    (vpdpbusd) forms their int32 lane sums; a permute tree reduces the 16
 *    blocks to one int32 per block in one vector, and the 16 block scales are
 *    fetched with one gather each for weights and activations. One convert
 *    and one FMA then cover 16 blocks instead of one each. The integer block
 *    sums are exact, so the only roundings are w_d * a_d, the FMA and the
 *    final 16-lane sum.
 *  - vpdpbusd multiplies unsigned by signed bytes. Weights are made unsigned
 *    by an offset (q8 ^ 0x80 = q8 + 128, q4 nibbles are already 0..15) and
 *    the offset is taken out with a second vpdpbusd of the constant against
 *    the activations: dot(w, a) = dot(w + c, a) - dot(c, a), exact in int32.
 *
 * Prefill (many tokens) goes through the tiled kernels further down, which
 * reuse each weight load for several tokens and reproduce the single-row
 * arithmetic exactly.
 *
 * Determinism: every kernel walks its row in a fixed order with fixed lane
 * accumulators and one fixed horizontal sum, so a result depends only on the
 * data and n (never on alignment, threads or the caller). */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <string.h>

#include "kernels/quant.h"
#include "kernels/quant_isa.h"

static inline float hsum16(__m512 v) {
    __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __mmask16 mask16(int64_t k) { return (__mmask16)((1u << k) - 1u); }

/* ---- float rows against f32 activations ---------------------------------
 * 64 elements per step in four accumulators, then 16 at a time into the
 * first, then one masked step for the last n % 16 into the second. */

#define FLOAT_DOT512(LOAD16, MLOAD16)                                                       \
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();                         \
    __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();                         \
    int64_t i = 0;                                                                          \
    for (; i + 64 <= n; i += 64) {                                                          \
        acc0 = _mm512_fmadd_ps(LOAD16(i + 0), _mm512_loadu_ps(x + i + 0), acc0);           \
        acc1 = _mm512_fmadd_ps(LOAD16(i + 16), _mm512_loadu_ps(x + i + 16), acc1);         \
        acc2 = _mm512_fmadd_ps(LOAD16(i + 32), _mm512_loadu_ps(x + i + 32), acc2);         \
        acc3 = _mm512_fmadd_ps(LOAD16(i + 48), _mm512_loadu_ps(x + i + 48), acc3);         \
    }                                                                                       \
    for (; i + 16 <= n; i += 16) acc0 = _mm512_fmadd_ps(LOAD16(i), _mm512_loadu_ps(x + i), acc0); \
    if (i < n) {                                                                            \
        const __mmask16 k = mask16(n - i);                                                  \
        acc1 = _mm512_fmadd_ps(MLOAD16(k, i), _mm512_maskz_loadu_ps(k, x + i), acc1);       \
    }                                                                                       \
    return hsum16(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));

float pam_dot_f32_avx512(const void *row, const void *act, int64_t n) {
    const float *w = row, *x = act;
#define LOAD16(j) _mm512_loadu_ps(w + (j))
#define MLOAD16(k, j) _mm512_maskz_loadu_ps(k, w + (j))
    FLOAT_DOT512(LOAD16, MLOAD16)
#undef LOAD16
#undef MLOAD16
}

float pam_dot_f16_avx512(const void *row, const void *act, int64_t n) {
    const pam_f16 *w = row;
    const float *x = act;
#define LOAD16(j) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + (j))))
#define MLOAD16(k, j) _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, w + (j)))
    FLOAT_DOT512(LOAD16, MLOAD16)
#undef LOAD16
#undef MLOAD16
}

/* bf16 is the top half of an f32: widen to 32 bits and shift into place, so
 * activations stay f32 (vdpbf16ps would round them to bf16). */
static inline __m512 bf16x16_to_ps(__m256i v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

float pam_dot_bf16_avx512(const void *row, const void *act, int64_t n) {
    const pam_bf16 *w = row;
    const float *x = act;
#define LOAD16(j) bf16x16_to_ps(_mm256_loadu_si256((const __m256i *)(w + (j))))
#define MLOAD16(k, j) bf16x16_to_ps(_mm256_maskz_loadu_epi16(k, w + (j)))
    FLOAT_DOT512(LOAD16, MLOAD16)
#undef LOAD16
#undef MLOAD16
}

/* ---- float rows: R rows x T tokens --------------------------------------
 * Every (row, token) pair keeps the single-row kernel's own four
 * accumulators and walks the same steps (64 at a time, then 16, then one
 * masked step, then the same final sums), so each output is bit-identical
 * to pam_dot_*_avx512; a converted weight vector serves T tokens and an
 * activation vector R rows. */

enum { FT_F32, FT_F16, FT_BF16 };
#define FR 2 /* rows per register tile */
#define FT 3 /* tokens per register tile */

static inline __m512 fload16(const void *w, int64_t j, const int type) {
    if (type == FT_F32) return _mm512_loadu_ps((const float *)w + j);
    if (type == FT_F16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const pam_f16 *)w + j)));
    return bf16x16_to_ps(_mm256_loadu_si256((const __m256i *)((const pam_bf16 *)w + j)));
}

static inline __m512 fmload16(const void *w, int64_t j, __mmask16 k, const int type) {
    if (type == FT_F32) return _mm512_maskz_loadu_ps(k, (const float *)w + j);
    if (type == FT_F16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, (const pam_f16 *)w + j));
    return bf16x16_to_ps(_mm256_maskz_loadu_epi16(k, (const pam_bf16 *)w + j));
}

/* ---- float rows, four at a time -------------------------------------------
 * Each row keeps the single-row kernel's four accumulators, steps and final
 * sum, so its result is bit-identical to pam_dot_*_avx512 (and the float
 * tiles serve both); the activations, 4 bytes per element against the
 * weights' 2 (f16, bf16), are loaded once for four rows instead of per row. */
static inline __attribute__((always_inline)) void float_dot4(const uint8_t *W, size_t row_bytes, const float *x,
                                                             int64_t n, float out[4], const int type) {
    __m512 acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64)
        for (int c = 0; c < 4; c++) {
            const __m512 xv = _mm512_loadu_ps(x + i + 16 * c);
            for (int r = 0; r < 4; r++)
                acc[r][c] = _mm512_fmadd_ps(fload16(W + (size_t)r * row_bytes, i + 16 * c, type), xv, acc[r][c]);
        }
    for (; i + 16 <= n; i += 16) {
        const __m512 xv = _mm512_loadu_ps(x + i);
        for (int r = 0; r < 4; r++) acc[r][0] = _mm512_fmadd_ps(fload16(W + (size_t)r * row_bytes, i, type), xv, acc[r][0]);
    }
    if (i < n) {
        const __mmask16 k = mask16(n - i);
        const __m512 xv = _mm512_maskz_loadu_ps(k, x + i);
        for (int r = 0; r < 4; r++)
            acc[r][1] = _mm512_fmadd_ps(fmload16(W + (size_t)r * row_bytes, i, k, type), xv, acc[r][1]);
    }
    for (int r = 0; r < 4; r++)
        out[r] = hsum16(_mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]), _mm512_add_ps(acc[r][2], acc[r][3])));
}

void pam_dot4_f32_avx512(const void *row, size_t row_bytes, const void *act, int64_t n, float out[4]) {
    float_dot4(row, row_bytes, act, n, out, FT_F32);
}

void pam_dot4_f16_avx512(const void *row, size_t row_bytes, const void *act, int64_t n, float out[4]) {
    float_dot4(row, row_bytes, act, n, out, FT_F16);
}

void pam_dot4_bf16_avx512(const void *row, size_t row_bytes, const void *act, int64_t n, float out[4]) {
    float_dot4(row, row_bytes, act, n, out, FT_BF16);
}


static inline __attribute__((always_inline)) void ftile512(const uint8_t *W, size_t row_bytes, const float *X,
                                                           int64_t ldx, int64_t n, float *Y, int64_t ldy,
                                                           const int R, const int T, const int type) {
    __m512 acc[FR][FT][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) acc[r][t][c] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64)
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            __m512 w[FR];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) w[r] = fload16(W + (size_t)r * row_bytes, i + 16 * c, type);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) {
                const __m512 x = _mm512_loadu_ps(X + t * ldx + i + 16 * c);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) acc[r][t][c] = _mm512_fmadd_ps(w[r], x, acc[r][t][c]);
            }
        }
    for (; i + 16 <= n; i += 16)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const __m512 w = fload16(W + (size_t)r * row_bytes, i, type);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++)
                acc[r][t][0] = _mm512_fmadd_ps(w, _mm512_loadu_ps(X + t * ldx + i), acc[r][t][0]);
        }
    if (i < n) {
        const __mmask16 k = mask16(n - i);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const __m512 w = fmload16(W + (size_t)r * row_bytes, i, k, type);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++)
                acc[r][t][1] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(k, X + t * ldx + i), acc[r][t][1]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++)
            Y[t * ldy + r] = hsum16(_mm512_add_ps(_mm512_add_ps(acc[r][t][0], acc[r][t][1]),
                                                  _mm512_add_ps(acc[r][t][2], acc[r][t][3])));
}

/* Token tiles outside, row pairs inside: the rows (one panel) stay in cache
 * while every token passes. */
#define FTILE512_FN(NAME, TYPE)                                                                        \
    void NAME(const void *W, size_t row_bytes, int64_t rows, const void *act, size_t act_bytes,       \
              int64_t n_tok, int64_t cols, float *Y, int64_t ldy, void *scratch) {                    \
        const float *X = act;                                                                         \
        const int64_t ldx = (int64_t)(act_bytes / sizeof(float));                                     \
        for (int64_t t = 0; t < n_tok; t += FT) {                                                     \
            const int64_t nt = n_tok - t;                                                             \
            for (int64_t r = 0; r < rows; r += FR) {                                                  \
                const uint8_t *w = (const uint8_t *)W + (size_t)r * row_bytes;                        \
                const float *x = X + t * ldx;                                                         \
                float *y = Y + t * ldy + r;                                                           \
                if (rows - r >= 2) {                                                                  \
                    if (nt >= 3) ftile512(w, row_bytes, x, ldx, cols, y, ldy, 2, 3, TYPE);            \
                    else if (nt == 2) ftile512(w, row_bytes, x, ldx, cols, y, ldy, 2, 2, TYPE);       \
                    else ftile512(w, row_bytes, x, ldx, cols, y, ldy, 2, 1, TYPE);                    \
                } else {                                                                              \
                    if (nt >= 3) ftile512(w, row_bytes, x, ldx, cols, y, ldy, 1, 3, TYPE);            \
                    else if (nt == 2) ftile512(w, row_bytes, x, ldx, cols, y, ldy, 1, 2, TYPE);       \
                    else ftile512(w, row_bytes, x, ldx, cols, y, ldy, 1, 1, TYPE);                    \
                }                                                                                     \
            }                                                                                         \
        }                                                                                             \
    }
FTILE512_FN(pam_tile_f32_avx512, FT_F32)
FTILE512_FN(pam_tile_f16_avx512, FT_F16)
FTILE512_FN(pam_tile_bf16_avx512, FT_BF16)

/* ---- Q8_0 / Q4_0 against Q8_0: groups of 16 blocks ---------------------- */

#define GROUP 16



/* Adjacent int32 lanes of the 32-lane concatenation (a, b) summed: lane i is
 * c[2i] + c[2i+1]. Three levels turn 8 vectors of [block 2k | block 2k+1]
 * lane sums into one vector with block b's sum in lane b. */
static inline __m512i pair_sum(__m512i a, __m512i b) {
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_add_epi32(_mm512_permutex2var_epi32(a, even, b), _mm512_permutex2var_epi32(a, odd, b));
}

static inline __m512i reduce_group(const __m512i p[GROUP / 2]) {
    const __m512i q0 = pair_sum(p[0], p[1]), q1 = pair_sum(p[2], p[3]);
    const __m512i q2 = pair_sum(p[4], p[5]), q3 = pair_sum(p[6], p[7]);
    return pair_sum(pair_sum(q0, q1), pair_sum(q2, q3));
}

/* The f16 scale at the start of each of the first k blocks `stride` bytes
 * apart, as floats (0 in masked-off lanes). Reads 4 bytes per block: the
 * scale and the first two quant bytes, all inside the block. */
static inline __m512 gather_scales(const void *base, int stride, __mmask16 k) {
    const __m512i idx = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(stride));
    const __m512i g = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), k, idx, base, 1);
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g));
}

static inline __m512i load_pair_i8(const int8_t *p0, const int8_t *p1) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)p0)),
                              _mm256_loadu_si256((const __m256i *)p1), 1);
}

static inline __m512i load_one_i8(const int8_t *p0) {
    return _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)p0));
}

/* 32 nibbles of each of two Q4_0 blocks as bytes 0..15, in element order:
 * [low nibbles b0 | high nibbles b0 | low b1 | high b1]. */
static inline __m512i unpack_pair_q4(const uint8_t *q0, const uint8_t *q1) {
    const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)q0)),
                                              _mm_loadu_si128((const __m128i *)q1), 1);
    const __m512i z = _mm512_shuffle_i64x2(_mm512_castsi256_si512(v), _mm512_castsi256_si512(v),
                                           _MM_SHUFFLE(1, 1, 0, 0));
    const __m512i s = _mm512_srlv_epi64(z, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0));
    return _mm512_and_si512(s, _mm512_set1_epi8(0x0f));
}

/* Activations of one group of cnt <= 16 blocks, two blocks per vector
 * (blocks >= cnt read as zero), the int32 sums dot(off, a) per block that
 * take out the weights' offset, and the activation scales. Computed once
 * per group and shared by every row of a multi-row call. */
typedef struct {
    __m512i a[GROUP / 2];
    __m512i corr; /* lane b: sum over block b of off * a */
    __m512 d;     /* lane b: activation scale of block b, 0 for b >= cnt */
} act_group;

static inline void act_group_load(act_group *g, const pam_block_q8_0 *a, int cnt, __m512i off) {
    __m512i c[GROUP / 2];
    for (int k = 0; k < GROUP / 2; k++) {
        const int b = 2 * k;
        if (b + 1 < cnt)
            g->a[k] = load_pair_i8(a[b].qs, a[b + 1].qs);
        else if (b < cnt)
            g->a[k] = load_one_i8(a[b].qs);
        else
            g->a[k] = _mm512_setzero_si512();
        c[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), off, g->a[k]);
    }
    g->corr = reduce_group(c);
    g->d = gather_scales(a, sizeof *a, mask16(cnt));
}

/* Folds one row's group into acc: the exact int32 block sums
 * dot(w + off, a) - dot(off, a), times w_d * a_d, by one FMA. */
static inline __m512 group_q8_0(const pam_block_q8_0 *w, const act_group *g, int cnt, __m512 acc) {
    const __m512i off = _mm512_set1_epi8((char)0x80);
    __m512i p[GROUP / 2];
    for (int k = 0; k < GROUP / 2; k++) {
        const int b = 2 * k;
        if (b + 1 < cnt)
            p[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(),
                                       _mm512_xor_si512(load_pair_i8(w[b].qs, w[b + 1].qs), off), g->a[k]);
        else if (b < cnt)
            p[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(load_one_i8(w[b].qs), off),
                                       g->a[k]);
        else
            p[k] = _mm512_setzero_si512();
    }
    const __m512i s = _mm512_sub_epi32(reduce_group(p), g->corr);
    const __m512 d = _mm512_mul_ps(gather_scales(w, sizeof *w, mask16(cnt)), g->d);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), d, acc);
}

static inline __m512 group_q4_0(const pam_block_q4_0 *w, const act_group *g, int cnt, __m512 acc) {
    __m512i p[GROUP / 2];
    for (int k = 0; k < GROUP / 2; k++) {
        const int b = 2 * k;
        if (b + 1 < cnt) /* the partial pair reads block b twice; its activations are zero */
            p[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), unpack_pair_q4(w[b].qs, w[b + 1].qs), g->a[k]);
        else if (b < cnt)
            p[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), unpack_pair_q4(w[b].qs, w[b].qs), g->a[k]);
        else
            p[k] = _mm512_setzero_si512();
    }
    const __m512i s = _mm512_sub_epi32(reduce_group(p), g->corr);
    const __m512 d = _mm512_mul_ps(gather_scales(w, sizeof *w, mask16(cnt)), g->d);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), d, acc);
}

/* R rows against one activation vector. Per row the group order, the two
 * accumulators (even groups, odd groups, the last full group into the
 * first, a partial group into the second) and the final sum are the same
 * for every R, so a row's result is bit-identical to the R = 1 call. */
#define DOT_ROWS_BODY(WTYPE, GROUP_FN, OFF)                                               \
    const pam_block_q8_0 *a = act;                                                         \
    const int64_t nb = n / PAM_QK8_0;                                                      \
    const __m512i off = OFF;                                                               \
    __m512 acc0[R], acc1[R];                                                               \
    for (int r = 0; r < R; r++) acc0[r] = acc1[r] = _mm512_setzero_ps();                   \
    act_group g;                                                                           \
    int64_t i = 0;                                                                         \
    for (; i + 2 * GROUP <= nb; i += 2 * GROUP) {                                          \
        act_group_load(&g, a + i, GROUP, off);                                             \
        for (int r = 0; r < R; r++)                                                        \
            acc0[r] = GROUP_FN((const WTYPE *)((const uint8_t *)row + r * row_bytes) + i, &g, GROUP, acc0[r]); \
        act_group_load(&g, a + i + GROUP, GROUP, off);                                     \
        for (int r = 0; r < R; r++)                                                        \
            acc1[r] = GROUP_FN((const WTYPE *)((const uint8_t *)row + r * row_bytes) + i + GROUP, &g, GROUP, \
                               acc1[r]);                                                   \
    }                                                                                      \
    for (; i + GROUP <= nb; i += GROUP) {                                                  \
        act_group_load(&g, a + i, GROUP, off);                                             \
        for (int r = 0; r < R; r++)                                                        \
            acc0[r] = GROUP_FN((const WTYPE *)((const uint8_t *)row + r * row_bytes) + i, &g, GROUP, acc0[r]); \
    }                                                                                      \
    if (i < nb) {                                                                          \
        const int cnt = (int)(nb - i);                                                     \
        act_group_load(&g, a + i, cnt, off);                                               \
        for (int r = 0; r < R; r++)                                                        \
            acc1[r] = GROUP_FN((const WTYPE *)((const uint8_t *)row + r * row_bytes) + i, &g, cnt, acc1[r]); \
    }                                                                                      \
    for (int r = 0; r < R; r++) out[r] = hsum16(_mm512_add_ps(acc0[r], acc1[r]));

static inline void dot_rows_q8_0(const void *row, size_t row_bytes, const void *act, int64_t n, float *out,
                                 const int R) {
    DOT_ROWS_BODY(pam_block_q8_0, group_q8_0, _mm512_set1_epi8((char)0x80))
}

static inline void dot_rows_q4_0(const void *row, size_t row_bytes, const void *act, int64_t n, float *out,
                                 const int R) {
    DOT_ROWS_BODY(pam_block_q4_0, group_q4_0, _mm512_set1_epi8(8))
}

float pam_dot_q8_0_avx512(const void *row, const void *act, int64_t n) {
    float out;
    dot_rows_q8_0(row, 0, act, n, &out, 1);
    return out;
}

float pam_dot_q4_0_avx512(const void *row, const void *act, int64_t n) {
    float out;
    dot_rows_q4_0(row, 0, act, n, &out, 1);
    return out;
}

void pam_dot4_q8_0_avx512(const void *row, size_t row_bytes, const void *act, int64_t n, float out[4]) {
    dot_rows_q8_0(row, row_bytes, act, n, out, 4);
}

void pam_dot4_q4_0_avx512(const void *row, size_t row_bytes, const void *act, int64_t n, float out[4]) {
    dot_rows_q4_0(row, row_bytes, act, n, out, 4);
}

/* ---- Q8_0 / Q4_0, the same arithmetic with 256-bit integer work ---------
 * The kernels above spend most of their time in the cross-lane permutes of
 * reduce_group, which cost two or more cycles each where 512-bit operations
 * are split in two (AMD Zen 4). These do one block per ymm and reduce eight
 * blocks' int32 lanes with in-lane unpacks and one 128-bit swap; the block
 * sums are exact integers either way, and the float work (one convert and
 * one FMA per 16-block group, the same accumulators, the same final sum) is
 * unchanged, so every result is bit-identical to pam_dot_q8_0_avx512 /
 * pam_dot_q4_0_avx512 and the tiled kernels serve both. */

/* Lane b of the result: the sum of the 8 int32 lanes of p[b]. */
static inline __m256i reduce8(const __m256i p[8]) {
    __m256i l1[4], l2[2];
    for (int k = 0; k < 4; k++)
        l1[k] = _mm256_add_epi32(_mm256_unpacklo_epi32(p[2 * k], p[2 * k + 1]),
                                 _mm256_unpackhi_epi32(p[2 * k], p[2 * k + 1]));
    for (int k = 0; k < 2; k++)
        l2[k] = _mm256_add_epi32(_mm256_unpacklo_epi64(l1[2 * k], l1[2 * k + 1]),
                                 _mm256_unpackhi_epi64(l1[2 * k], l1[2 * k + 1]));
    /* l2[k] = [blocks 4k..4k+3, lanes 0-3 | the same blocks, lanes 4-7] */
    return _mm256_add_epi32(_mm256_permute2x128_si256(l2[0], l2[1], 0x20),
                            _mm256_permute2x128_si256(l2[0], l2[1], 0x31));
}

static inline __m512i reduce16(const __m256i p[GROUP]) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(reduce8(p)), reduce8(p + 8), 1);
}

/* Word k of window k / per: scale k sits at word (k % per) * stride / 2. */
static const uint16_t k_scale_idx18[32] = {0, 9, 18, 27, 36, 45, 54, 63, 0, 9, 18, 27, 36, 45, 54, 63};
static const uint16_t k_scale_idx34[32] = {0, 17, 34, 51, 0, 17, 34, 51, 0, 17, 34, 51, 0, 17, 34, 51};

static inline __m512 group_scales(const uint8_t *w, const int stride, const int per) {
    const __m512i idx = _mm512_loadu_si512(stride == 18 ? k_scale_idx18 : k_scale_idx34);
    __m512i r = _mm512_setzero_si512();
    for (int j = 0; j < GROUP / per; j++) {
        const uint8_t *base = w + (size_t)j * per * stride;
        const __mmask32 m = (__mmask32)(((1u << per) - 1u) << (j * per));
        r = _mm512_or_si512(r, _mm512_maskz_permutex2var_epi16(m, _mm512_loadu_si512(base), idx,
                                                               _mm512_loadu_si512(base + 64)));
    }
    return _mm512_cvtph_ps(_mm512_castsi512_si256(r));
}

typedef struct {
    __m256i a[GROUP];
    __m512i corr; /* lane b: dot(off, a) over block b */
    __m512 d;
} act_group_y;

static inline void act_group_y_load(act_group_y *g, const pam_block_q8_0 *a, int cnt, __m256i off) {
    __m256i c[GROUP];
    for (int b = 0; b < GROUP; b++) {
        g->a[b] = b < cnt ? _mm256_loadu_si256((const __m256i *)a[b].qs) : _mm256_setzero_si256();
        c[b] = _mm256_dpbusd_epi32(_mm256_setzero_si256(), off, g->a[b]);
    }
    g->corr = reduce16(c);
    g->d = cnt == GROUP ? group_scales((const uint8_t *)a, (int)sizeof *a, 4) : gather_scales(a, sizeof *a, mask16(cnt));
}

/* The 16 f16 scales of a full group without a gather (slow on some CPUs):
 * windows of 128 bytes that each hold the scales of `per` consecutive
 * blocks (scale k at 16-bit word k * stride / 2 of its window, stride even),
 * picked by one word permute per window and blended. Every byte read lies
 * inside the group's blocks. */
static inline __m512 group_y_finish(const __m256i p[GROUP], const void *w, int stride, const act_group_y *g,
                                    int cnt, __m512 acc) {
    const __m512i s = _mm512_sub_epi32(reduce16(p), g->corr);
    const __m512 ws = cnt == GROUP ? group_scales(w, stride, stride == 18 ? 8 : 4)
                                   : gather_scales(w, stride, mask16(cnt));
    const __m512 d = _mm512_mul_ps(ws, g->d);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), d, acc);
}

static inline __m512 group_y_q8_0(const pam_block_q8_0 *w, const act_group_y *g, int cnt, __m512 acc) {
    const __m256i off = _mm256_set1_epi8((char)0x80);
    __m256i p[GROUP];
    for (int b = 0; b < GROUP; b++)
        p[b] = b < cnt ? _mm256_dpbusd_epi32(_mm256_setzero_si256(),
                                             _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)w[b].qs), off),
                                             g->a[b])
                       : _mm256_setzero_si256();
    return group_y_finish(p, w, sizeof *w, g, cnt, acc);
}

/* Q4_0 packs the low nibbles (elements 0..15) and the high ones (16..31) of
 * a block in the same 16 bytes, so one ymm holds two blocks' packed bytes
 * and two vpdpbusd against activations rearranged once per group,
 * [first halves of blocks 2k, 2k+1] and [second halves], leave four lanes per
 * block: half the reduction work of one block per ymm. Same exact sums. */
typedef struct {
    __m256i a1[GROUP / 2], a2[GROUP / 2]; /* [a_2k[0:16] | a_2k+1[0:16]], [a_2k[16:32] | a_2k+1[16:32]] */
    __m512i corr;
    __m512 d;
} act_group_h;

/* p[k]: lanes 0-3 partial sums of block 2k, lanes 4-7 of block 2k+1; lane b
 * of the result is block b's total. */
static inline __m512i reduce16_h(const __m256i p[GROUP / 2]) {
    __m256i t[2];
    for (int h = 0; h < 2; h++) {
        const __m256i *q = p + 4 * h;
        const __m256i s01 = _mm256_add_epi32(_mm256_unpacklo_epi32(q[0], q[1]), _mm256_unpackhi_epi32(q[0], q[1]));
        const __m256i s23 = _mm256_add_epi32(_mm256_unpacklo_epi32(q[2], q[3]), _mm256_unpackhi_epi32(q[2], q[3]));
        /* [b0 b2 b4 b6 | b1 b3 b5 b7] of this half's 8 blocks */
        t[h] = _mm256_add_epi32(_mm256_unpacklo_epi64(s01, s23), _mm256_unpackhi_epi64(s01, s23));
    }
    const __m512i idx = _mm512_set_epi32(23, 19, 22, 18, 21, 17, 20, 16, 7, 3, 6, 2, 5, 1, 4, 0);
    return _mm512_permutex2var_epi32(_mm512_castsi256_si512(t[0]), idx, _mm512_castsi256_si512(t[1]));
}

static inline __m256i load_halves(const int8_t *p0, const int8_t *p1) {
    return _mm256_loadu2_m128i((const __m128i *)p1, (const __m128i *)p0);
}

static inline void act_group_h_load(act_group_h *g, const pam_block_q8_0 *a, int cnt) {
    const __m256i eight = _mm256_set1_epi8(8);
    __m256i c[GROUP / 2];
    for (int k = 0; k < GROUP / 2; k++) {
        const int b = 2 * k;
        if (b + 1 < cnt) {
            g->a1[k] = load_halves(a[b].qs, a[b + 1].qs);
            g->a2[k] = load_halves(a[b].qs + 16, a[b + 1].qs + 16);
        } else if (b < cnt) {
            g->a1[k] = _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)a[b].qs));
            g->a2[k] = _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)(a[b].qs + 16)));
        } else {
            g->a1[k] = g->a2[k] = _mm256_setzero_si256();
        }
        c[k] = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), eight, g->a1[k]), eight, g->a2[k]);
    }
    g->corr = reduce16_h(c);
    g->d = cnt == GROUP ? group_scales((const uint8_t *)a, (int)sizeof *a, 4) : gather_scales(a, sizeof *a, mask16(cnt));
}

static inline __m512 group_h_q4_0(const pam_block_q4_0 *w, const act_group_h *g, int cnt, __m512 acc) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    __m256i p[GROUP / 2];
    for (int k = 0; k < GROUP / 2; k++) {
        const int b = 2 * k;
        if (b < cnt) { /* a lone last block is read twice; its partner's activations are zero */
            const __m256i v = _mm256_loadu2_m128i((const __m128i *)w[b + 1 < cnt ? b + 1 : b].qs,
                                                  (const __m128i *)w[b].qs);
            p[k] = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_and_si256(v, m4), g->a1[k]),
                                       _mm256_and_si256(_mm256_srli_epi16(v, 4), m4), g->a2[k]);
        } else {
            p[k] = _mm256_setzero_si256();
        }
    }
    const __m512i s = _mm512_sub_epi32(reduce16_h(p), g->corr);
    const __m512 ws = cnt == GROUP ? group_scales((const uint8_t *)w, (int)sizeof *w, 8)
                                   : gather_scales(w, sizeof *w, mask16(cnt));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(ws, g->d), acc);
}

#define DOT_ROWS_Y_BODY(WTYPE, GROUP_FN, OFF)                                             \
    const pam_block_q8_0 *a = act;                                                         \
    const int64_t nb = n / PAM_QK8_0;                                                      \
    const __m256i off = OFF;                                                               \
    __m512 acc0[R], acc1[R];                                                               \
    for (int r = 0; r < R; r++) acc0[r] = acc1[r] = _mm512_setzero_ps();                   \
    act_group_y g;                                                                         \
    int64_t i = 0;                                                                         \
    for (; i + 2 * GROUP <= nb; i += 2 * GROUP) {                                          \
        act_group_y_load(&g, a + i, GROUP, off);                                           \
        for (int r = 0; r < R; r++)                                                        \
            acc0[r] = GROUP_FN((const WTYPE *)((const uint8_t *)row + r * row_bytes) + i, &g, GROUP, acc0[r]); \
        act_group_y_load(&g, a + i + GROUP, GROUP, off);                                   \
        for (int r = 0; r < R; r++)                                                        \
            acc1[r] = GROUP_FN((const WTYPE *)((const uint8_t *)row + r * row_bytes) + i + GROUP, &g, GROUP, \
                               acc1[r]);                                                   \
    }                                                                                      \
    for (; i + GROUP <= nb; i += GROUP) {                                                  \
        act_group_y_load(&g, a + i, GROUP, off);                                           \
        for (int r = 0; r < R; r++)                                                        \
            acc0[r] = GROUP_FN((const WTYPE *)((const uint8_t *)row + r * row_bytes) + i, &g, GROUP, acc0[r]); \
    }                                                                                      \
    if (i < nb) {                                                                          \
        const int cnt = (int)(nb - i);                                                     \
        act_group_y_load(&g, a + i, cnt, off);                                             \
        for (int r = 0; r < R; r++)                                                        \
            acc1[r] = GROUP_FN((const WTYPE *)((const uint8_t *)row + r * row_bytes) + i, &g, cnt, acc1[r]); \
    }                                                                                      \
    for (int r = 0; r < R; r++) out[r] = hsum16(_mm512_add_ps(acc0[r], acc1[r]));

#define DOT_ROWS_H_BODY(WTYPE, GROUP_FN)                                                       \
    const pam_block_q8_0 *a = act;                                                         \
    const int64_t nb = n / PAM_QK8_0;                                                      \
    __m512 acc0[R], acc1[R];                                                               \
    for (int r = 0; r < R; r++) acc0[r] = acc1[r] = _mm512_setzero_ps();                   \
    act_group_h g;                                                                         \
    int64_t i = 0;                                                                         \
    for (; i + 2 * GROUP <= nb; i += 2 * GROUP) {                                          \
        act_group_h_load(&g, a + i, GROUP);                                                \
        for (int r = 0; r < R; r++)                                                        \
            acc0[r] = GROUP_FN((const WTYPE *)((const uint8_t *)row + r * row_bytes) + i, &g, GROUP, acc0[r]); \
        act_group_h_load(&g, a + i + GROUP, GROUP);                                        \
        for (int r = 0; r < R; r++)                                                        \
            acc1[r] = GROUP_FN((const WTYPE *)((const uint8_t *)row + r * row_bytes) + i + GROUP, &g, GROUP, \
                               acc1[r]);                                                   \
    }                                                                                      \
    for (; i + GROUP <= nb; i += GROUP) {                                                  \
        act_group_h_load(&g, a + i, GROUP);                                                \
        for (int r = 0; r < R; r++)                                                        \
            acc0[r] = GROUP_FN((const WTYPE *)((const uint8_t *)row + r * row_bytes) + i, &g, GROUP, acc0[r]); \
    }                                                                                      \
    if (i < nb) {                                                                          \
        const int cnt = (int)(nb - i);                                                     \
        act_group_h_load(&g, a + i, cnt);                                                  \
        for (int r = 0; r < R; r++)                                                        \
            acc1[r] = GROUP_FN((const WTYPE *)((const uint8_t *)row + r * row_bytes) + i, &g, cnt, acc1[r]); \
    }                                                                                      \
    for (int r = 0; r < R; r++) out[r] = hsum16(_mm512_add_ps(acc0[r], acc1[r]));

static inline __attribute__((always_inline)) void dot_rows_y_q8_0(const void *row, size_t row_bytes,
                                                                  const void *act, int64_t n, float *out, const int R) {
    DOT_ROWS_Y_BODY(pam_block_q8_0, group_y_q8_0, _mm256_set1_epi8((char)0x80))
}

static inline __attribute__((always_inline)) void dot_rows_y_q4_0(const void *row, size_t row_bytes,
                                                                  const void *act, int64_t n, float *out, const int R) {
    DOT_ROWS_H_BODY(pam_block_q4_0, group_h_q4_0)
}

/* Single rows over activations prepared once per product: every group's
 * act_group (loads, offset sums, scales) is computed once for all rows and
 * stored, so one row costs what it costs inside the 4-row kernel while the
 * rows are still read as one stream. Same operations in the same order as
 * the kernels above: bit-identical results. */
#define DOT_PREP_BODY(WTYPE, GTYPE, GROUP_FN)                                             \
    const GTYPE *G = prepared;                                                             \
    const int64_t nb = n / PAM_QK8_0;                                                      \
    const WTYPE *w = row;                                                                  \
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();                         \
    int64_t i = 0;                                                                         \
    for (; i + 2 * GROUP <= nb; i += 2 * GROUP) {                                          \
        acc0 = GROUP_FN(w + i, &G[i / GROUP], GROUP, acc0);                                \
        acc1 = GROUP_FN(w + i + GROUP, &G[i / GROUP + 1], GROUP, acc1);                    \
    }                                                                                      \
    for (; i + GROUP <= nb; i += GROUP) acc0 = GROUP_FN(w + i, &G[i / GROUP], GROUP, acc0); \
    if (i < nb) acc1 = GROUP_FN(w + i, &G[i / GROUP], (int)(nb - i), acc1);                \
    return hsum16(_mm512_add_ps(acc0, acc1));

size_t pam_prep_bytes_q8_0_avx512y(int64_t n) {
    return (size_t)((n / PAM_QK8_0 + GROUP - 1) / GROUP) * sizeof(act_group_y);
}

size_t pam_prep_bytes_q4_0_avx512y(int64_t n) {
    return (size_t)((n / PAM_QK8_0 + GROUP - 1) / GROUP) * sizeof(act_group_h);
}

void pam_prep_q8_0_avx512y(const void *act, int64_t n, void *dst) {
    const pam_block_q8_0 *a = act;
    act_group_y *G = dst;
    const int64_t nb = n / PAM_QK8_0;
    for (int64_t i = 0; i < nb; i += GROUP)
        act_group_y_load(&G[i / GROUP], a + i, nb - i < GROUP ? (int)(nb - i) : GROUP, _mm256_set1_epi8((char)0x80));
}

void pam_prep_q4_0_avx512y(const void *act, int64_t n, void *dst) {
    const pam_block_q8_0 *a = act;
    act_group_h *G = dst;
    const int64_t nb = n / PAM_QK8_0;
    for (int64_t i = 0; i < nb; i += GROUP) act_group_h_load(&G[i / GROUP], a + i, nb - i < GROUP ? (int)(nb - i) : GROUP);
}

float pam_dot_prep_q8_0_avx512y(const void *row, const void *prepared, int64_t n) {
    DOT_PREP_BODY(pam_block_q8_0, act_group_y, group_y_q8_0)
}

float pam_dot_prep_q4_0_avx512y(const void *row, const void *prepared, int64_t n) {
    DOT_PREP_BODY(pam_block_q4_0, act_group_h, group_h_q4_0)
}

float pam_dot_q8_0_avx512y(const void *row, const void *act, int64_t n) {
    float out;
    dot_rows_y_q8_0(row, 0, act, n, &out, 1);
    return out;
}

float pam_dot_q4_0_avx512y(const void *row, const void *act, int64_t n) {
    float out;
    dot_rows_y_q4_0(row, 0, act, n, &out, 1);
    return out;
}

void pam_dot4_q8_0_avx512y(const void *row, size_t row_bytes, const void *act, int64_t n, float out[4]) {
    dot_rows_y_q8_0(row, row_bytes, act, n, out, 4);
}

void pam_dot4_q4_0_avx512y(const void *row, size_t row_bytes, const void *act, int64_t n, float out[4]) {
    dot_rows_y_q4_0(row, row_bytes, act, n, out, 4);
}

/* ---- Q4_K against Q8_K ----------------------------------------------------
 * As the AVX2 kernel, but 64 elements (two 32-element sub-blocks) per zmm:
 * low and high nibbles of 32 bytes line up with 64 consecutive activations. */

static inline void unpack_q4_K_scales(const uint8_t *s, uint8_t out[16]) {
    uint32_t u[4];
    memcpy(u, s, 12);
    const uint32_t kmask1 = 0x3f3f3f3f, kmask2 = 0x0f0f0f0f, kmask3 = 0x03030303;
    u[3] = ((u[2] >> 4) & kmask2) | (((u[1] >> 6) & kmask3) << 4);
    const uint32_t m03 = u[1] & kmask1;
    u[1] = (u[2] & kmask2) | (((u[0] >> 6) & kmask3) << 4);
    u[2] = m03;
    u[0] &= kmask1;
    memcpy(out, u, 16); /* bytes 0..7 scales, 8..15 mins */
}

/* int16 lanes 0..15 = v[lo], 16..31 = v[lo + 1] (for a 32-lane int16 vector). */
static inline __m512i spread_pair16(__m512i v, int lo) {
    const __m512i idx = _mm512_add_epi16(
        _mm512_set1_epi16((short)lo),
        _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(1), 1));
    return _mm512_permutexvar_epi16(idx, v);
}

/* One row against T token activations (T = 1: the plain dot). The weight
 * side (scales, nibbles) is unpacked once per block for all T tokens; each
 * token's arithmetic is the same whatever T, so the results are too. */
#define KT 4 /* tokens per call in the tiled K-quant kernels */

static inline __attribute__((always_inline)) void q4_K_tokens(const void *row, const void *const *acts, int64_t n,
                                                              float *out, int64_t out_stride, const int T) {
    const pam_block_q4_K *w = row;
    const int64_t nb = n / PAM_QK_K;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512 acc[KT];
    __m128 acc_m[KT];
    for (int t = 0; t < T; t++) {
        acc[t] = _mm512_setzero_ps();
        acc_m[t] = _mm_setzero_ps();
    }

    for (int64_t i = 0; i < nb; i++) {
        uint8_t sm[16];
        unpack_q4_K_scales(w[i].scales, sm);
        const __m256i sm16 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)sm));
        const __m512i sc = _mm512_castsi256_si512(sm16);
        __m512i q[PAM_QK_K / 64], scj[PAM_QK_K / 64];
        for (int j = 0; j < PAM_QK_K / 64; j++) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)(w[i].qs + 32 * j));
            q[j] = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(bits), _mm256_srli_epi16(bits, 4), 1),
                                    m4);
            scj[j] = spread_pair16(sc, 2 * j);
        }
        for (int t = 0; t < T; t++) {
            const pam_block_q8_K *a = (const pam_block_q8_K *)acts[t] + i;
            const float d = a->d * _cvtsh_ss(w[i].d);
            const float dmin = -a->d * _cvtsh_ss(w[i].dmin);
            const __m256i bs = _mm256_loadu_si256((const __m256i *)a->bsums);
            const __m128i bs8 = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
            const __m128i mprod = _mm_madd_epi16(_mm256_extracti128_si256(sm16, 1), bs8);
            acc_m[t] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(mprod), acc_m[t]);
            __m512i sumi = _mm512_setzero_si512();
            for (int j = 0; j < PAM_QK_K / 64; j++) {
                const __m512i p16 = _mm512_maddubs_epi16(q[j], _mm512_loadu_si512(a->qs + 64 * j));
                sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(scj[j], p16));
            }
            acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc[t]);
        }
    }
    for (int t = 0; t < T; t++) {
        __m128 m = acc_m[t];
        m = _mm_add_ps(m, _mm_movehl_ps(m, m));
        m = _mm_add_ss(m, _mm_movehdup_ps(m));
        out[t * out_stride] = hsum16(acc[t]) + _mm_cvtss_f32(m);
    }
}

/* unpack_q4_K_scales straight into a register: a 16-byte load of bytes
 * just stored as four words would wait for the stores (no forwarding). */
static inline __m128i unpack_q4_K_scales_v(const uint8_t *s) {
    uint32_t u0, u1, u2;
    memcpy(&u0, s, 4);
    memcpy(&u1, s + 4, 4);
    memcpy(&u2, s + 8, 4);
    const uint32_t kmask1 = 0x3f3f3f3f, kmask2 = 0x0f0f0f0f, kmask3 = 0x03030303;
    const uint32_t v3 = ((u2 >> 4) & kmask2) | (((u1 >> 6) & kmask3) << 4);
    const uint32_t v2 = u1 & kmask1;
    const uint32_t v1 = (u2 & kmask2) | (((u0 >> 6) & kmask3) << 4);
    const uint32_t v0 = u0 & kmask1;
    return _mm_set_epi32((int)v3, (int)v2, (int)v1, (int)v0);
}

/* The same dot with cheaper scale handling: the sub-block scales reach their
 * int16 lanes by an in-lane byte shuffle of the 16 unpacked scale bytes
 * (instead of a cross-lane word permute), the nibbles come from one 32-byte
 * broadcast, the mins meet the activation block sums in one madd over 16
 * lanes (no horizontal add), and scale products accumulate by vpdpwssd. Integer sums per lane are regrouped, so the
 * float results differ from pam_dot_q4_K_avx512 in the last bits: this is
 * its own variant with its own tiled kernel. */
static inline __attribute__((always_inline)) void q4_K_tokens_p(const void *row, const void *const *acts, int64_t n,
                                                                float *out, int64_t out_stride, const int T) {
    const pam_block_q4_K *w = row;
    const int64_t nb = n / PAM_QK_K;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512i nib_shift = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0);
    /* mins as int16 pairs: lane k takes byte 8 + k / 2 (high byte zero) */
    const __m256i min_ctrl = _mm256_set_epi8(-128, 15, -128, 15, -128, 14, -128, 14, -128, 13, -128, 13, -128, 12,
                                             -128, 12, -128, 11, -128, 11, -128, 10, -128, 10, -128, 9, -128, 9, -128,
                                             8, -128, 8);
    __m512 acc[KT];
    __m256 acc_m[KT];
    for (int t = 0; t < T; t++) {
        acc[t] = _mm512_setzero_ps();
        acc_m[t] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < nb; i++) {
        const __m128i sm128 = unpack_q4_K_scales_v(w[i].scales);
        const __m512i bsc = _mm512_broadcast_i32x4(sm128);
        const __m256i mins = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(sm128), min_ctrl);
        __m512i q[PAM_QK_K / 64], scj[PAM_QK_K / 64];
        for (int j = 0; j < PAM_QK_K / 64; j++) {
            const __m512i bits = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(w[i].qs + 32 * j)));
            q[j] = _mm512_and_si512(_mm512_srlv_epi64(bits, nib_shift), m4);
            /* int16 lanes 0..15: scale 2j, 16..31: scale 2j + 1 */
            const __m512i ctrl = _mm512_inserti64x4(_mm512_set1_epi16((short)(0x8000 | (2 * j))),
                                                    _mm256_set1_epi16((short)(0x8000 | (2 * j + 1))), 1);
            scj[j] = _mm512_shuffle_epi8(bsc, ctrl);
        }
        for (int t = 0; t < T; t++) {
            const pam_block_q8_K *a = (const pam_block_q8_K *)acts[t] + i;
            const float d = a->d * _cvtsh_ss(w[i].d);
            const float dmin = -a->d * _cvtsh_ss(w[i].dmin);
            const __m256i mprod = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)a->bsums), mins);
            acc_m[t] = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(mprod), acc_m[t]);
            __m512i sumi = _mm512_setzero_si512();
            for (int j = 0; j < PAM_QK_K / 64; j++) {
                const __m512i p16 = _mm512_maddubs_epi16(q[j], _mm512_loadu_si512(a->qs + 64 * j));
                sumi = _mm512_dpwssd_epi32(sumi, scj[j], p16); /* madd + add in one */
            }
            acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc[t]);
        }
    }
    for (int t = 0; t < T; t++) {
        __m128 m = _mm_add_ps(_mm256_castps256_ps128(acc_m[t]), _mm256_extractf128_ps(acc_m[t], 1));
        m = _mm_add_ps(m, _mm_movehl_ps(m, m));
        m = _mm_add_ss(m, _mm_movehdup_ps(m));
        out[t * out_stride] = hsum16(acc[t]) + _mm_cvtss_f32(m);
    }
}

float pam_dot_q4_K_avx512p(const void *row, const void *act, int64_t n) {
    float out;
    q4_K_tokens_p(row, &act, n, &out, 1, 1);
    return out;
}

float pam_dot_q4_K_avx512(const void *row, const void *act, int64_t n) {
    float out;
    q4_K_tokens(row, &act, n, &out, 1, 1);
    return out;
}

/* ---- Q6_K against Q8_K ----------------------------------------------------
 * 64 values per zmm: [q0 | q1] from ql[0..63] low nibbles and qh bits 0..3,
 * [q2 | q3] from the high nibbles and qh bits 4..7; the offset 32 is taken
 * out with the activation block sums as in the AVX2 kernel. */

/* int16 lanes 8k..8k+7 = v[lo + k] for k < 4. */
static inline __m512i spread_quad16(__m512i v, int lo) {
    const __m512i idx = _mm512_add_epi16(
        _mm512_set1_epi16((short)lo),
        _mm512_set_epi16(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0,
                         0, 0, 0));
    return _mm512_permutexvar_epi16(idx, v);
}

static inline __attribute__((always_inline)) void q6_K_tokens(const void *row, const void *const *acts, int64_t n,
                                                              float *out, int64_t out_stride, const int T) {
    const pam_block_q6_K *w = row;
    const int64_t nb = n / PAM_QK_K;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512i m2 = _mm512_set1_epi8(0x03);
    __m256 acc[KT];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();

    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *ql = w[i].ql;
        const uint8_t *qh = w[i].qh;
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w[i].scales));
        const __m512i sc = _mm512_castsi256_si512(sc16);
        __m512i qa[PAM_QK_K / 128], qb[PAM_QK_K / 128], sa[PAM_QK_K / 128], sb[PAM_QK_K / 128];
        for (int j = 0; j < PAM_QK_K / 128; j++, ql += 64, qh += 32) {
            const __m512i l = _mm512_loadu_si512(ql);
            const __m256i h = _mm256_loadu_si256((const __m256i *)qh);
            const __m512i h2 = _mm512_inserti64x4(_mm512_castsi256_si512(h), _mm256_srli_epi16(h, 2), 1);
            qa[j] = _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_slli_epi16(_mm512_and_si512(h2, m2), 4));
            qb[j] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                    _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(h2, 4), m2), 4));
            sa[j] = spread_quad16(sc, 8 * j);
            sb[j] = spread_quad16(sc, 8 * j + 4);
        }
        for (int t = 0; t < T; t++) {
            const pam_block_q8_K *a = (const pam_block_q8_K *)acts[t] + i;
            const float d = a->d * _cvtsh_ss(w[i].d);
            const __m256i bs = _mm256_loadu_si256((const __m256i *)a->bsums);
            const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5);
            __m512i sumi = _mm512_setzero_si512();
            for (int j = 0; j < PAM_QK_K / 128; j++) {
                const __m512i pa = _mm512_maddubs_epi16(qa[j], _mm512_loadu_si512(a->qs + 128 * j));
                const __m512i pb = _mm512_maddubs_epi16(qb[j], _mm512_loadu_si512(a->qs + 128 * j + 64));
                sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(sa[j], pa));
                sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(sb[j], pb));
            }
            /* 16 lanes to 8, then the offset, in the AVX2 kernel's lane layout */
            __m256i s8 = _mm256_add_epi32(_mm512_castsi512_si256(sumi), _mm512_extracti64x4_epi64(sumi, 1));
            s8 = _mm256_sub_epi32(s8, offset);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(s8), acc[t]);
        }
    }
    for (int t = 0; t < T; t++) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[t]), _mm256_extractf128_ps(acc[t], 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        out[t * out_stride] = _mm_cvtss_f32(s);
    }
}

float pam_dot_q6_K_avx512(const void *row, const void *act, int64_t n) {
    float out;
    q6_K_tokens(row, &act, n, &out, 1, 1);
    return out;
}

/* The same with VNNI's vpdpwssd (madd and add in one instruction): the
 * same integer sums, so the same bits as pam_dot_q6_K_avx512. */
static inline __attribute__((always_inline)) void q6_K_tokens_p(const void *row, const void *const *acts, int64_t n,
                                                              float *out, int64_t out_stride, const int T) {
    const pam_block_q6_K *w = row;
    const int64_t nb = n / PAM_QK_K;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512i m2 = _mm512_set1_epi8(0x03);
    __m256 acc[KT];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();

    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *ql = w[i].ql;
        const uint8_t *qh = w[i].qh;
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w[i].scales));
        const __m512i sc = _mm512_castsi256_si512(sc16);
        __m512i qa[PAM_QK_K / 128], qb[PAM_QK_K / 128], sa[PAM_QK_K / 128], sb[PAM_QK_K / 128];
        for (int j = 0; j < PAM_QK_K / 128; j++, ql += 64, qh += 32) {
            const __m512i l = _mm512_loadu_si512(ql);
            const __m256i h = _mm256_loadu_si256((const __m256i *)qh);
            const __m512i h2 = _mm512_inserti64x4(_mm512_castsi256_si512(h), _mm256_srli_epi16(h, 2), 1);
            qa[j] = _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_slli_epi16(_mm512_and_si512(h2, m2), 4));
            qb[j] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                    _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(h2, 4), m2), 4));
            sa[j] = spread_quad16(sc, 8 * j);
            sb[j] = spread_quad16(sc, 8 * j + 4);
        }
        for (int t = 0; t < T; t++) {
            const pam_block_q8_K *a = (const pam_block_q8_K *)acts[t] + i;
            const float d = a->d * _cvtsh_ss(w[i].d);
            const __m256i bs = _mm256_loadu_si256((const __m256i *)a->bsums);
            const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5);
            __m512i sumi = _mm512_setzero_si512();
            for (int j = 0; j < PAM_QK_K / 128; j++) {
                const __m512i pa = _mm512_maddubs_epi16(qa[j], _mm512_loadu_si512(a->qs + 128 * j));
                const __m512i pb = _mm512_maddubs_epi16(qb[j], _mm512_loadu_si512(a->qs + 128 * j + 64));
                sumi = _mm512_dpwssd_epi32(sumi, sa[j], pa);
                sumi = _mm512_dpwssd_epi32(sumi, sb[j], pb);
            }
            /* 16 lanes to 8, then the offset, in the AVX2 kernel's lane layout */
            __m256i s8 = _mm256_add_epi32(_mm512_castsi512_si256(sumi), _mm512_extracti64x4_epi64(sumi, 1));
            s8 = _mm256_sub_epi32(s8, offset);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(s8), acc[t]);
        }
    }
    for (int t = 0; t < T; t++) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[t]), _mm256_extractf128_ps(acc[t], 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        out[t * out_stride] = _mm_cvtss_f32(s);
    }
}

float pam_dot_q6_K_avx512p(const void *row, const void *act, int64_t n) {
    float out;
    q6_K_tokens_p(row, &act, n, &out, 1, 1);
    return out;
}

/* Tiled K-quants: each row against KT tokens at a time, the panel's rows
 * staying in cache while the tokens pass. */
#define KTILE_FN(NAME, TOKENS)                                                                         \
    void NAME(const void *W, size_t row_bytes, int64_t rows, const void *act, size_t act_bytes,       \
              int64_t n_tok, int64_t cols, float *Y, int64_t ldy, void *scratch) {                    \
        for (int64_t t = 0; t < n_tok; t += KT) {                                                     \
            const void *acts[KT];                                                                     \
            const int64_t nt = n_tok - t < KT ? n_tok - t : KT;                                       \
            for (int k = 0; k < nt; k++) acts[k] = (const uint8_t *)act + (size_t)(t + k) * act_bytes; \
            for (int64_t r = 0; r < rows; r++) {                                                      \
                const void *w = (const uint8_t *)W + (size_t)r * row_bytes;                           \
                float *y = Y + t * ldy + r;                                                           \
                if (nt == KT)                                                                         \
                    TOKENS(w, acts, cols, y, ldy, KT);                                                \
                else                                                                                  \
                    for (int k = 0; k < nt; k++) TOKENS(w, acts + k, cols, y + k * ldy, ldy, 1);      \
            }                                                                                         \
        }                                                                                             \
    }
KTILE_FN(pam_tile_q4_K_avx512, q4_K_tokens)
KTILE_FN(pam_tile_q6_K_avx512, q6_K_tokens)
KTILE_FN(pam_tile_q4_K_avx512p, q4_K_tokens_p)
KTILE_FN(pam_tile_q6_K_avx512p, q6_K_tokens_p)

/* ---- Q8_0 activations ----------------------------------------------------
 * Byte-identical to the reference quantiser: the same amax, d = amax / 127,
 * id = 1 / d, and roundf (half away from zero) done exactly as truncation
 * plus a correction when the dropped fraction is at least one half. */

static inline __m128i round_away_i8(__m512 v) {
    __m512i i = _mm512_cvttps_epi32(v);
    const __m512 f = _mm512_sub_ps(v, _mm512_cvtepi32_ps(i)); /* exact: |v| < 2^23 */
    i = _mm512_mask_add_epi32(i, _mm512_cmp_ps_mask(f, _mm512_set1_ps(0.5f), _CMP_GE_OQ), i, _mm512_set1_epi32(1));
    i = _mm512_mask_sub_epi32(i, _mm512_cmp_ps_mask(f, _mm512_set1_ps(-0.5f), _CMP_LE_OQ), i, _mm512_set1_epi32(1));
    return _mm512_cvtepi32_epi8(i);
}

void pam_quantize_q8_0_avx512(const float *x, void *dst, int64_t n) {
    pam_block_q8_0 *y = dst;
    for (int64_t i = 0; i < n / PAM_QK8_0; i++, x += PAM_QK8_0) {
        const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = pam_f32_to_f16(d);
        _mm_storeu_si128((__m128i *)y[i].qs, round_away_i8(_mm512_mul_ps(v0, _mm512_set1_ps(id))));
        _mm_storeu_si128((__m128i *)(y[i].qs + 16), round_away_i8(_mm512_mul_ps(v1, _mm512_set1_ps(id))));
    }
}

/* ---- Q8_0 / Q4_0: many rows x many tokens (prefill) ----------------------
 * The single-row kernel above sees, per row and 16-block group g, a vector
 * whose lane b is the exact int32 sum of block 16g + b; it multiplies it by
 * w_d * a_d in the same lane and adds it into accumulator g % 2 (a trailing
 * partial group into accumulator 1, its empty lanes adding 0), and ends with
 * hsum16(acc0 + acc1). So each row's result is 32 independent FMA chains,
 * chain (c, b) over the blocks 16g + b of the groups g that go to
 * accumulator c, in increasing g, then a fixed tree over (c, b).
 *
 * Here one vector holds 16 rows, and the tile walks the blocks chain by
 * chain (lane b, then accumulator c, then g), so one register per token and
 * row vector carries a chain from its first block to its last; a finished
 * chain is parked in memory, and the final hsum16 becomes the same tree of
 * vertical adds over (c, b). Every output sees the identical sequence of
 * roundings, so results are bit-identical to the single-row kernel, while
 * the float work per block is one convert, one multiply and one FMA per
 * 16 rows and token, all in registers.
 *
 * The integer sums come from a register tile in the classic GEMM shape:
 * a panel of PANEL rows is repacked so that one zmm holds 4 bytes of the
 * same block for 16 rows; vpdpbusd with 4 broadcast activation bytes then
 * adds into a per-row lane, and 8 steps finish a block with no horizontal
 * work at all. vpdpbusd wants one unsigned operand: activations come in
 * offset by +128, the weights stay signed, and the accumulator starts at
 * -128 * sum(w) over the block (from the repack). The activations are
 * brought into that form once per product (pam_tile_prep_act_avx512):
 * each token's blocks' 32 bytes ^ 0x80 back to back, then its block scales
 * as floats, so no panel converts a scale again.
 * Each weight vector feeds TILE_T tokens and each activation broadcast RV
 * row vectors. */

#define PANEL PAM_TILE_ROWS
#define RV (PANEL / 16)
#define TILE_T 4

typedef struct {
    int8_t w[RV][8][64]; /* [row vector][4-byte step k][row lane l][byte] */
    int32_t corr[RV][16]; /* -128 * sum of the block's weights, per row */
    float d[RV][16];      /* weight scale, per row (0 for padding rows) */
} panel_block;


/* Repacking. Rows of a full 16-row vector are read with plain loads and
 * transposed in registers; a vector with missing rows (the last panel of a
 * matrix whose row count is not a multiple of 16) gathers 4 bytes of one
 * block from each row instead, rows >= `rows` masked off to 0. */
static inline __m512i gather_rows(const uint8_t *base, __m512i off, __mmask16 k) {
    return _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), k, off, base, 1);
}

static inline __m512i row_offsets(size_t row_bytes, int v) {
    return _mm512_mullo_epi32(_mm512_add_epi32(_mm512_set1_epi32(16 * v),
                                               _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0)),
                              _mm512_set1_epi32((int)row_bytes));
}

/* Where block i of a row sits in the panel: in the order the tile walks
 * the chains (lane b, then accumulator c, then g), so the walk is one
 * sequential stream. */
static inline int64_t chain_pos(int64_t i, int64_t nb) {
    const int64_t nfull = nb / GROUP, g = i / GROUP, b = i % GROUP, rem = nb % GROUP;
    const int64_t lane = b * nfull + (b < rem ? b : rem); /* blocks of the lanes before b */
    if (g == nfull) return lane + nfull;                   /* the partial group ends chain 1 */
    return lane + (g % 2 == 0 ? g / 2 : (nfull + 1) / 2 + g / 2);
}

static inline __mmask16 rows_mask(int rows, int v) {
    const int left = rows - 16 * v;
    return left >= 16 ? (__mmask16)0xffff : left <= 0 ? (__mmask16)0 : mask16(left);
}

/* Dwords 0..3 at p + l * rb for rows l = 0..15, as r[k] with row l's dword
 * k in lane l: four 128-bit loads per vector (rows m, 4 + m, 8 + m, 12 + m)
 * and an in-lane 4 x 4 transpose. */
static inline void load_t16x4(const uint8_t *p, size_t rb, __m512i r[4]) {
    for (int m = 0; m < 4; m++) {
        __m512i x = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(p + (size_t)m * rb)));
        x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(p + (size_t)(4 + m) * rb)), 1);
        x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(p + (size_t)(8 + m) * rb)), 2);
        r[m] = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(p + (size_t)(12 + m) * rb)), 3);
    }
    const __m512i t0 = _mm512_unpacklo_epi32(r[0], r[1]), t1 = _mm512_unpackhi_epi32(r[0], r[1]);
    const __m512i t2 = _mm512_unpacklo_epi32(r[2], r[3]), t3 = _mm512_unpackhi_epi32(r[2], r[3]);
    r[0] = _mm512_unpacklo_epi64(t0, t2);
    r[1] = _mm512_unpackhi_epi64(t0, t2);
    r[2] = _mm512_unpacklo_epi64(t1, t3);
    r[3] = _mm512_unpackhi_epi64(t1, t3);
}

/* The 16 rows' f16 scales (each block's first two bytes) as floats. */
static inline void panel_scales(panel_block *pb, int v, const uint8_t *blk, __m512i off, __mmask16 k) {
    _mm512_store_ps(pb->d[v], _mm512_cvtph_ps(_mm512_cvtepi32_epi16(gather_rows(blk, off, k))));
}

static inline void panel_corr(panel_block *pb, int v) {
    __m512i sum = _mm512_setzero_si512();
    for (int s = 0; s < 8; s++)
        sum = _mm512_dpbusd_epi32(sum, _mm512_set1_epi8(1), _mm512_load_si512(pb->w[v][s]));
    _mm512_store_si512(pb->corr[v], _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sum, 7)));
}

static void repack_q8_0(panel_block *P, const void *W, size_t row_bytes, int rows, int64_t nb) {
    for (int v = 0; v < RV; v++) {
        const __m512i off = row_offsets(row_bytes, v);
        const __mmask16 k = rows_mask(rows, v);
        const uint8_t *base = (const uint8_t *)W + (size_t)(16 * v) * row_bytes;
        for (int64_t i = 0; i < nb; i++) {
            const uint8_t *blk = (const uint8_t *)W + (size_t)i * sizeof(pam_block_q8_0);
            panel_block *pb = &P[chain_pos(i, nb)];
            if (k == 0xffff) {
                __m512i r[4];
                for (int h = 0; h < 2; h++) {
                    load_t16x4(base + (size_t)i * sizeof(pam_block_q8_0) + 2 + 16 * h, row_bytes, r);
                    for (int s = 0; s < 4; s++) _mm512_store_si512(pb->w[v][4 * h + s], r[s]);
                }
            } else {
                for (int s = 0; s < 8; s++)
                    _mm512_store_si512(pb->w[v][s], gather_rows(blk + 2 + 4 * s, off, k));
            }
            panel_corr(pb, v);
            panel_scales(pb, v, blk, off, k);
        }
    }
}

/* Q4_0: byte j of a block holds element j (low nibble) and 16 + j (high);
 * step s < 4 takes the low nibbles of bytes 4s..4s+3, step s + 4 the high
 * ones, matching activation bytes 4s.. and 16 + 4s... The nibbles' sum
 * (at most 8 * 15 per byte before the widening dot) gives the correction:
 * sum(w) = sum(nibbles) - 8 * 32. */
static void repack_q4_0(panel_block *P, const void *W, size_t row_bytes, int rows, int64_t nb) {
    const __m512i m4 = _mm512_set1_epi8(0x0f), eight = _mm512_set1_epi8(8);
    for (int v = 0; v < RV; v++) {
        const __m512i off = row_offsets(row_bytes, v);
        const __mmask16 k = rows_mask(rows, v);
        const uint8_t *base = (const uint8_t *)W + (size_t)(16 * v) * row_bytes;
        for (int64_t i = 0; i < nb; i++) {
            const uint8_t *blk = (const uint8_t *)W + (size_t)i * sizeof(pam_block_q4_0);
            panel_block *pb = &P[chain_pos(i, nb)];
            __m512i r[4];
            if (k == 0xffff)
                load_t16x4(base + (size_t)i * sizeof(pam_block_q4_0) + 2, row_bytes, r);
            else
                for (int s = 0; s < 4; s++) r[s] = gather_rows(blk + 2 + 4 * s, off, k);
            __m512i nib = _mm512_setzero_si512();
            for (int s = 0; s < 4; s++) {
                const __m512i lo = _mm512_and_si512(r[s], m4), hi = _mm512_and_si512(_mm512_srli_epi16(r[s], 4), m4);
                nib = _mm512_add_epi8(nib, _mm512_add_epi8(lo, hi));
                _mm512_store_si512(pb->w[v][s], _mm512_sub_epi8(lo, eight));
                _mm512_store_si512(pb->w[v][s + 4], _mm512_sub_epi8(hi, eight));
            }
            /* padding rows read as 0 nibbles: their (unused) correction is 128 * 256 */
            const __m512i sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), nib, _mm512_set1_epi8(1));
            _mm512_store_si512(pb->corr[v], _mm512_slli_epi32(_mm512_sub_epi32(_mm512_set1_epi32(256), sum), 7));
            panel_scales(pb, v, blk, off, k);
        }
    }
}

/* One block of T tokens into the chains acc[t][v]: the exact int32 block
 * sums, times w_d * a_d, by one FMA each. q[t]: token t's activation bytes,
 * ad[t]: its block scales. */
static inline __attribute__((always_inline)) void tile_block(const panel_block *pb, const uint8_t *const q[],
                                                             const float *const ad[], int64_t i,
                                                             __m512 acc[TILE_T][RV], const int T) {
    __m512i s[TILE_T][RV];
#pragma GCC unroll 4
    for (int v = 0; v < RV; v++) {
        const __m512i c = _mm512_load_si512(pb->corr[v]);
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) s[t][v] = c;
    }
#pragma GCC unroll 8
    for (int k = 0; k < 8; k++) {
        __m512i w[RV];
#pragma GCC unroll 4
        for (int v = 0; v < RV; v++) w[v] = _mm512_load_si512(pb->w[v][k]);
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            int32_t x;
            memcpy(&x, q[t] + 32 * i + 4 * k, 4);
            const __m512i ab = _mm512_set1_epi32(x);
#pragma GCC unroll 4
            for (int v = 0; v < RV; v++) s[t][v] = _mm512_dpbusd_epi32(s[t][v], ab, w[v]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) {
        const __m512 d = _mm512_set1_ps(ad[t][i]);
#pragma GCC unroll 4
        for (int v = 0; v < RV; v++)
            acc[t][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[t][v]), _mm512_mul_ps(_mm512_load_ps(pb->d[v]), d),
                                        acc[t][v]);
    }
}

/* Finished chains of a token tile: [token][accumulator][block lane][row vector]. */
typedef __m512 tile_chains[TILE_T][2][GROUP][RV];

/* Chain (c, b) of T tokens: its len blocks, from pb on, in order. */
static inline __attribute__((always_inline)) void tile_chain(const panel_block *pb, int64_t len, int c, int b,
                                                             int64_t nb, const uint8_t *const q[],
                                                             const float *const ad[], tile_chains *X, const int T) {
    const int64_t nfull = nb / GROUP;
    __m512 acc[TILE_T][RV];
    for (int t = 0; t < T; t++)
        for (int v = 0; v < RV; v++) acc[t][v] = _mm512_setzero_ps();
    for (int64_t j = 0; j < len; j++) {
        const int64_t g = c + 2 * j; /* g = nfull: the partial group, last in chain 1 */
        tile_block(pb + j, q, ad, GROUP * (g < nfull ? g : nfull) + b, acc, T);
    }
    if (c == 1 && nb % GROUP && b >= nb % GROUP) /* the partial group's empty lanes: acc + 0 * 0 */
        for (int t = 0; t < T; t++)
            for (int v = 0; v < RV; v++) acc[t][v] = _mm512_add_ps(acc[t][v], _mm512_setzero_ps());
    for (int t = 0; t < T; t++)
        for (int v = 0; v < RV; v++) (*X)[t][c][b][v] = acc[t][v];
}

static inline __attribute__((always_inline)) void tile_tokens(const panel_block *P, int64_t nb, const uint8_t *act,
                                                              size_t act_bytes, float *Y, int64_t ldy,
                                                              const __mmask16 km[RV], tile_chains *X, const int T) {
    const uint8_t *q[TILE_T];
    const float *ad[TILE_T];
    for (int t = 0; t < T; t++) {
        q[t] = act + (size_t)t * act_bytes;
        ad[t] = (const float *)(q[t] + (size_t)nb * PAM_QK8_0);
    }
    const int64_t nfull = nb / GROUP;
    const int rem = (int)(nb % GROUP);
    const panel_block *pb = P;
    for (int b = 0; b < GROUP; b++)
        for (int c = 0; c < 2; c++) {
            const int64_t len = c == 0 ? (nfull + 1) / 2 : nfull / 2 + (b < rem);
            tile_chain(pb, len, c, b, nb, q, ad, X, T);
            pb += len;
        }
    /* hsum16(acc0 + acc1), lane by lane */
    for (int t = 0; t < T; t++)
        for (int v = 0; v < RV; v++) {
            __m512 x[GROUP];
            for (int b = 0; b < GROUP; b++) x[b] = _mm512_add_ps((*X)[t][0][b][v], (*X)[t][1][b][v]);
            for (int h = GROUP / 2; h >= 1; h /= 2)
                for (int b = 0; b < h; b++) x[b] = _mm512_add_ps(x[b], x[b + h]);
            _mm512_mask_storeu_ps(Y + t * ldy + 16 * v, km[v], x[0]);
        }
}

static void tile_run(const panel_block *P, int rows, const void *act, size_t act_bytes, int64_t n_tok,
                     int64_t nb, float *Y, int64_t ldy, tile_chains *X) {
    __mmask16 km[RV];
    for (int v = 0; v < RV; v++) km[v] = rows_mask(rows, v);
    const uint8_t *a = act;
    int64_t t = 0;
    for (; t + TILE_T <= n_tok; t += TILE_T)
        tile_tokens(P, nb, a + (size_t)t * act_bytes, act_bytes, Y + t * ldy, ldy, km, X, TILE_T);
    const uint8_t *at = a + (size_t)t * act_bytes;
    switch (n_tok - t) { /* the last few tokens together too */
    case 3: tile_tokens(P, nb, at, act_bytes, Y + t * ldy, ldy, km, X, 3); break;
    case 2: tile_tokens(P, nb, at, act_bytes, Y + t * ldy, ldy, km, X, 2); break;
    case 1: tile_tokens(P, nb, at, act_bytes, Y + t * ldy, ldy, km, X, 1); break;
    default: break;
    }
}
_Static_assert(TILE_T == 4, "tile_run finishes the last 1..3 tokens by hand");

/* The panel, then a token tile's finished chains. */
size_t pam_tile_scratch_avx512(int64_t cols) {
    return (size_t)(cols / PAM_QK8_0) * sizeof(panel_block) + sizeof(tile_chains) + 64;
}

size_t pam_tile_act_bytes_avx512(int64_t cols) {
    return (size_t)(cols / PAM_QK8_0) * (PAM_QK8_0 + sizeof(float));
}

void pam_tile_prep_act_avx512(const void *act, int64_t cols, void *dst) {
    const pam_block_q8_0 *a = act;
    const int64_t nb = cols / PAM_QK8_0;
    uint8_t *q = dst;
    float *d = (float *)(q + (size_t)nb * PAM_QK8_0);
    for (int64_t i = 0; i < nb; i++) {
        const __m256i x = _mm256_loadu_si256((const __m256i *)a[i].qs);
        _mm256_storeu_si256((__m256i *)(q + 32 * i), _mm256_xor_si256(x, _mm256_set1_epi8((char)0x80)));
        float f = _cvtsh_ss(a[i].d);
        memcpy(d + i, &f, sizeof f);
    }
}

static inline panel_block *panel_of(void *scratch) {
    return (panel_block *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
}

void pam_tile_q8_0_avx512(const void *W, size_t row_bytes, int64_t rows, const void *act, size_t act_bytes,
                          int64_t n_tok, int64_t cols, float *Y, int64_t ldy, void *scratch) {
    const int64_t nb = cols / PAM_QK8_0;
    panel_block *P = panel_of(scratch);
    repack_q8_0(P, W, row_bytes, (int)rows, nb);
    tile_chains *X = (tile_chains *)(P + nb);
    tile_run(P, (int)rows, act, act_bytes, n_tok, nb, Y, ldy, X);
}

void pam_tile_q4_0_avx512(const void *W, size_t row_bytes, int64_t rows, const void *act, size_t act_bytes,
                          int64_t n_tok, int64_t cols, float *Y, int64_t ldy, void *scratch) {
    const int64_t nb = cols / PAM_QK4_0;
    panel_block *P = panel_of(scratch);
    repack_q4_0(P, W, row_bytes, (int)rows, nb);
    tile_chains *X = (tile_chains *)(P + nb);
    tile_run(P, (int)rows, act, act_bytes, n_tok, nb, Y, ldy, X);
}

#endif

