/* AVX2 + FMA + F16C dot products (see quant_isa.h). Only called after
 * pam_cpu_detect() reported AVX2, so this file alone is built with -mavx2.
 *
 * Determinism: every kernel walks its row in a fixed order with a fixed set
 * of lane accumulators and one fixed horizontal sum at the end, so a result
 * depends only on the data and n; the tiled (prefill) kernels reproduce it
 * bit for bit. Integer products use the maddubs trick:
 * |a| as unsigned bytes times b carrying a's sign, which cannot saturate for
 * int8 in [-127, 127] (2 * 127 * 127 < 32767) or for the 4/6-bit quants. */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <string.h>

#include "kernels/quant.h"
#include "kernels/quant_isa.h"

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float f16(pam_f16 h) { return _cvtsh_ss(h); }

/* ---- float rows against f32 activations ---------------------------------
 * 32 elements per step in four accumulators (enough FMAs in flight to cover
 * their latency), then 8 at a time into the first, then a scalar tail. */

#define FLOAT_DOT_BODY(LOAD8, SCALAR)                                                      \
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();                        \
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();                        \
    int64_t i = 0;                                                                         \
    for (; i + 32 <= n; i += 32) {                                                         \
        acc0 = _mm256_fmadd_ps(LOAD8(i + 0), _mm256_loadu_ps(x + i + 0), acc0);            \
        acc1 = _mm256_fmadd_ps(LOAD8(i + 8), _mm256_loadu_ps(x + i + 8), acc1);            \
        acc2 = _mm256_fmadd_ps(LOAD8(i + 16), _mm256_loadu_ps(x + i + 16), acc2);          \
        acc3 = _mm256_fmadd_ps(LOAD8(i + 24), _mm256_loadu_ps(x + i + 24), acc3);          \
    }                                                                                      \
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(LOAD8(i), _mm256_loadu_ps(x + i), acc0); \
    float sum = hsum8(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3))); \
    for (; i < n; i++) sum += SCALAR(i) * x[i];                                            \
    return sum;

float pam_dot_f32_avx2(const void *row, const void *act, int64_t n) {
    const float *w = row, *x = act;
#define LOAD8(k) _mm256_loadu_ps(w + (k))
#define SCALAR(k) w[k]
    FLOAT_DOT_BODY(LOAD8, SCALAR)
#undef LOAD8
#undef SCALAR
}

float pam_dot_f16_avx2(const void *row, const void *act, int64_t n) {
    const pam_f16 *w = row;
    const float *x = act;
#define LOAD8(k) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + (k))))
#define SCALAR(k) f16(w[k])
    FLOAT_DOT_BODY(LOAD8, SCALAR)
#undef LOAD8
#undef SCALAR
}

/* bf16 is the top half of an f32: widen to 32 bits and shift into place. */
static inline __m256 load_bf16x8(const pam_bf16 *p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

float pam_dot_bf16_avx2(const void *row, const void *act, int64_t n) {
    const pam_bf16 *w = row;
    const float *x = act;
#define LOAD8(k) load_bf16x8(w + (k))
#define SCALAR(k) pam_bf16_to_f32(w[k])
    FLOAT_DOT_BODY(LOAD8, SCALAR)
#undef LOAD8
#undef SCALAR
}

/* ---- float rows: one row x T tokens --------------------------------------
 * Every (row, token) pair keeps the single-row kernel's four accumulators,
 * its steps (32, then 8 at a time), its final sums and its scalar tail, so
 * each output is bit-identical to pam_dot_*_avx2; a converted weight vector
 * serves FT8 tokens (16 registers: 4 accumulators x 3 tokens + loads). */

enum { FT8_F32, FT8_F16, FT8_BF16 };
#define FT8 3

static inline __m256 fload8(const void *w, int64_t j, const int type) {
    if (type == FT8_F32) return _mm256_loadu_ps((const float *)w + j);
    if (type == FT8_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const pam_f16 *)w + j)));
    return load_bf16x8((const pam_bf16 *)w + j);
}

static inline float fscalar(const void *w, int64_t j, const int type) {
    if (type == FT8_F32) return ((const float *)w)[j];
    if (type == FT8_F16) return f16(((const pam_f16 *)w)[j]);
    return pam_bf16_to_f32(((const pam_bf16 *)w)[j]);
}

static inline __attribute__((always_inline)) void ftile8(const void *w, const float *X, int64_t ldx, int64_t n,
                                                         float *Y, int64_t ldy, const int T, const int type) {
    __m256 acc[FT8][4];
#pragma GCC unroll 4
    for (int t = 0; t < T; t++)
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) acc[t][c] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            const __m256 wv = fload8(w, i + 8 * c, type);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++)
                acc[t][c] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(X + t * ldx + i + 8 * c), acc[t][c]);
        }
    for (; i + 8 <= n; i += 8) {
        const __m256 wv = fload8(w, i, type);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) acc[t][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(X + t * ldx + i), acc[t][0]);
    }
    for (int t = 0; t < T; t++) {
        float sum = hsum8(_mm256_add_ps(_mm256_add_ps(acc[t][0], acc[t][1]), _mm256_add_ps(acc[t][2], acc[t][3])));
        for (int64_t j = i; j < n; j++) sum += fscalar(w, j, type) * X[t * ldx + j];
        Y[t * ldy] = sum;
    }
}

#define FTILE8_FN(NAME, TYPE)                                                                          \
    void NAME(const void *W, size_t row_bytes, int64_t rows, const void *act, size_t act_bytes,       \
              int64_t n_tok, int64_t cols, float *Y, int64_t ldy, void *scratch) {                    \
        const float *X = act;                                                                         \
        const int64_t ldx = (int64_t)(act_bytes / sizeof(float));                                     \
        for (int64_t t = 0; t < n_tok; t += FT8)                                                      \
            for (int64_t r = 0; r < rows; r++) {                                                      \
                const uint8_t *w = (const uint8_t *)W + (size_t)r * row_bytes;                        \
                const int64_t nt = n_tok - t;                                                         \
                if (nt >= 3) ftile8(w, X + t * ldx, ldx, cols, Y + t * ldy + r, ldy, 3, TYPE);        \
                else if (nt == 2) ftile8(w, X + t * ldx, ldx, cols, Y + t * ldy + r, ldy, 2, TYPE);   \
                else ftile8(w, X + t * ldx, ldx, cols, Y + t * ldy + r, ldy, 1, TYPE);                \
            }                                                                                         \
    }
FTILE8_FN(pam_tile_f32_avx2, FT8_F32)
FTILE8_FN(pam_tile_f16_avx2, FT8_F16)
FTILE8_FN(pam_tile_bf16_avx2, FT8_BF16)

/* ---- Q8_0 / Q4_0 against Q8_0: groups of 8 blocks -----------------------
 * Per block the integer dot is exact (maddubs on |w| and a * sign(w), then
 * pairs to int32), eight int32 lanes per block. A hadd tree turns 8 blocks
 * into one vector with block b's sum in lane b; one gather each fetches the
 * 8 weight and activation scales. One convert and one FMA then cover 8
 * blocks: the roundings are w_d * a_d, the FMA and the final 8-lane sum. */

#define GROUP8 8

/* 32 nibbles: low nibbles in bytes 0..15, high in 16..31, minus 8. */
static inline __m256i unpack_q4_0(const uint8_t *qs) {
    const __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    const __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
    return _mm256_sub_epi8(_mm256_and_si256(both, _mm256_set1_epi8(0x0f)), _mm256_set1_epi8(8));
}

/* Exact int32 partial sums of w * a over 32 int8 pairs (|w|, |a| <= 127). */
static inline __m256i dot_i8x32(__m256i w, __m256i a) {
    const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

/* Lane b = sum of the 8 lanes of p[b]. */
static inline __m256i reduce8(const __m256i p[GROUP8]) {
    const __m256i h01 = _mm256_hadd_epi32(p[0], p[1]), h23 = _mm256_hadd_epi32(p[2], p[3]);
    const __m256i h45 = _mm256_hadd_epi32(p[4], p[5]), h67 = _mm256_hadd_epi32(p[6], p[7]);
    const __m256i lo = _mm256_hadd_epi32(h01, h23), hi = _mm256_hadd_epi32(h45, h67);
    /* lo = [b0..b3 from low halves | b0..b3 from high halves], hi likewise */
    return _mm256_add_epi32(_mm256_permute2x128_si256(lo, hi, 0x20), _mm256_permute2x128_si256(lo, hi, 0x31));
}

/* The f16 scales at the start of the first cnt blocks `stride` bytes apart,
 * as floats (0 beyond cnt). Reads 4 bytes inside each block. */
static inline __m256 gather_scales8(const void *base, int stride, int cnt) {
    const __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(stride));
    const __m256i k = _mm256_cmpgt_epi32(_mm256_set1_epi32(cnt), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i g = _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), (const int *)base, idx, k, 1);
    g = _mm256_and_si256(g, _mm256_set1_epi32(0xffff));
    const __m256i h = _mm256_permute4x64_epi64(_mm256_packus_epi32(g, g), 0x08);
    return _mm256_cvtph_ps(_mm256_castsi256_si128(h));
}

typedef struct {
    __m256i a[GROUP8];
    __m256i c8[GROUP8]; /* Q4_0 only: int16 pair sums of 8 * a, the nibbles' offset */
    __m256 d;
} act_group8;

static inline void act_group8_load(act_group8 *g, const pam_block_q8_0 *a, int cnt, const int q4) {
    for (int b = 0; b < GROUP8; b++) {
        g->a[b] = b < cnt ? _mm256_loadu_si256((const __m256i *)a[b].qs) : _mm256_setzero_si256();
        if (q4) g->c8[b] = _mm256_maddubs_epi16(_mm256_set1_epi8(8), g->a[b]);
    }
    g->d = gather_scales8(a, sizeof *a, cnt);
}

/* Q4_0 block: nibbles as unsigned bytes times a, minus 8 * a, all exact in
 * int16 (|pair| <= 2 * 15 * 127 + 2 * 8 * 127), then pairs to int32. */
static inline __m256i dot_q4_0(const pam_block_q4_0 *w, __m256i a, __m256i c8) {
    const __m128i raw = _mm_loadu_si128((const __m128i *)w->qs);
    const __m256i q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0f));
    return _mm256_madd_epi16(_mm256_sub_epi16(_mm256_maddubs_epi16(q, a), c8), _mm256_set1_epi16(1));
}

static inline __m256i load_q8_0(const pam_block_q8_0 *w) { return _mm256_loadu_si256((const __m256i *)w->qs); }
static inline __m256i load_q4_0(const pam_block_q4_0 *w) { return unpack_q4_0(w->qs); }

#define GROUP8_FN(NAME, WTYPE, DOT)                                                                   \
    static inline __m256 NAME(const WTYPE *w, const act_group8 *g, int cnt, __m256 acc) {             \
        __m256i p[GROUP8];                                                                            \
        for (int b = 0; b < GROUP8; b++) p[b] = b < cnt ? DOT : _mm256_setzero_si256();               \
        const __m256 d = _mm256_mul_ps(gather_scales8(w, sizeof *w, cnt), g->d);                      \
        return _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce8(p)), d, acc);                               \
    }
GROUP8_FN(group8_q8_0, pam_block_q8_0, dot_i8x32(load_q8_0(&w[b]), g->a[b]))
GROUP8_FN(group8_q4_0, pam_block_q4_0, dot_q4_0(&w[b], g->a[b], g->c8[b]))

/* R rows against one activation vector; per row the group order, the two
 * accumulators (even groups, odd groups, a partial group into the second)
 * and the final sum do not depend on R. */
#define DOT8_ROWS_BODY(WTYPE, GROUP_FN, Q4)                                                             \
    const pam_block_q8_0 *a = act;                                                                    \
    const int64_t nb = n / PAM_QK8_0;                                                                 \
    __m256 acc0[R], acc1[R];                                                                          \
    for (int r = 0; r < R; r++) acc0[r] = acc1[r] = _mm256_setzero_ps();                              \
    act_group8 g;                                                                                     \
    int64_t i = 0;                                                                                    \
    for (; i + GROUP8 <= nb; i += GROUP8) {                                                           \
        act_group8_load(&g, a + i, GROUP8, Q4);                                                         \
        const int odd = (int)((i / GROUP8) & 1);                                                      \
        for (int r = 0; r < R; r++) {                                                                 \
            const WTYPE *w = (const WTYPE *)((const uint8_t *)row + r * row_bytes) + i;               \
            if (odd)                                                                                  \
                acc1[r] = GROUP_FN(w, &g, GROUP8, acc1[r]);                                           \
            else                                                                                      \
                acc0[r] = GROUP_FN(w, &g, GROUP8, acc0[r]);                                           \
        }                                                                                             \
    }                                                                                                 \
    if (i < nb) {                                                                                     \
        const int cnt = (int)(nb - i);                                                                \
        act_group8_load(&g, a + i, cnt, Q4);                                                            \
        for (int r = 0; r < R; r++)                                                                   \
            acc1[r] = GROUP_FN((const WTYPE *)((const uint8_t *)row + r * row_bytes) + i, &g, cnt, acc1[r]); \
    }                                                                                                 \
    for (int r = 0; r < R; r++) out[r] = hsum8(_mm256_add_ps(acc0[r], acc1[r]));

static inline void dot8_rows_q8_0(const void *row, size_t row_bytes, const void *act, int64_t n, float *out,
                                  const int R) {
    DOT8_ROWS_BODY(pam_block_q8_0, group8_q8_0, 0)
}

static inline void dot8_rows_q4_0(const void *row, size_t row_bytes, const void *act, int64_t n, float *out,
                                  const int R) {
    DOT8_ROWS_BODY(pam_block_q4_0, group8_q4_0, 1)
}

float pam_dot_q8_0_avx2(const void *row, const void *act, int64_t n) {
    float out;
    dot8_rows_q8_0(row, 0, act, n, &out, 1);
    return out;
}

float pam_dot_q4_0_avx2(const void *row, const void *act, int64_t n) {
    float out;
    dot8_rows_q4_0(row, 0, act, n, &out, 1);
    return out;
}

void pam_dot4_q8_0_avx2(const void *row, size_t row_bytes, const void *act, int64_t n, float out[4]) {
    dot8_rows_q8_0(row, row_bytes, act, n, out, 4);
}

void pam_dot4_q4_0_avx2(const void *row, size_t row_bytes, const void *act, int64_t n, float out[4]) {
    dot8_rows_q4_0(row, row_bytes, act, n, out, 4);
}

/* ---- Q8_0 / Q4_0: many rows x many tokens (prefill) ----------------------
 * Same scheme as the AVX-512 tile (see quant_avx512.c): the float state is
 * the single-row kernel's, transposed to one vector per block lane holding
 * 8 rows, A[token][g % 2][b], so every output sees the same roundings as
 * pam_dot_q8_0_avx2 / pam_dot_q4_0_avx2. The integer sums come from
 * weights repacked 4 bytes x 8 rows per vector against 4 broadcast
 * activation bytes: maddubs(|w|, a * sign(w)), pairs to int32, 8 steps a
 * block. Panels of 16 rows (two vectors) x TILE8_T tokens. */

#define RV8 2
#define TILE8_T 4
_Static_assert(TILE8_T == 4, "tile8_run finishes the last 1..3 tokens by hand");

typedef struct {
    int8_t uw[RV8][8][32]; /* |w|: [row vector][4-byte step][row lane][byte] */
    int8_t sw[RV8][8][32]; /* w, for its signs */
    float d[RV8][8];
} panel8_block;

size_t pam_tile_scratch_avx2(int64_t cols) { return (size_t)(cols / PAM_QK8_0) * sizeof(panel8_block) + 32; }

/* 8 rows x 8 dwords transposed: out[k] lane l = in[l] dword k. */
static inline void transpose8x8(__m256i v[8]) {
    const __m256i t0 = _mm256_unpacklo_epi32(v[0], v[1]), t1 = _mm256_unpackhi_epi32(v[0], v[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(v[2], v[3]), t3 = _mm256_unpackhi_epi32(v[2], v[3]);
    const __m256i t4 = _mm256_unpacklo_epi32(v[4], v[5]), t5 = _mm256_unpackhi_epi32(v[4], v[5]);
    const __m256i t6 = _mm256_unpacklo_epi32(v[6], v[7]), t7 = _mm256_unpackhi_epi32(v[6], v[7]);
    const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
    const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
    const __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
    const __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
    v[0] = _mm256_permute2x128_si256(u0, u4, 0x20);
    v[1] = _mm256_permute2x128_si256(u1, u5, 0x20);
    v[2] = _mm256_permute2x128_si256(u2, u6, 0x20);
    v[3] = _mm256_permute2x128_si256(u3, u7, 0x20);
    v[4] = _mm256_permute2x128_si256(u0, u4, 0x31);
    v[5] = _mm256_permute2x128_si256(u1, u5, 0x31);
    v[6] = _mm256_permute2x128_si256(u2, u6, 0x31);
    v[7] = _mm256_permute2x128_si256(u3, u7, 0x31);
}

/* Rows >= rows read as zero weights with scale 0; their outputs are never stored. */
#define REPACK8(NAME, WTYPE, LOAD)                                                                    \
    static void NAME(panel8_block *P, const void *W, size_t row_bytes, int rows, int64_t nb) {        \
        for (int v = 0; v < RV8; v++)                                                                 \
            for (int64_t i = 0; i < nb; i++) {                                                        \
                __m256i q[8];                                                                         \
                for (int l = 0; l < 8; l++) {                                                         \
                    const int r = 8 * v + l;                                                          \
                    const WTYPE *w = (const WTYPE *)((const uint8_t *)W + (size_t)r * row_bytes) + i; \
                    q[l] = r < rows ? LOAD(w) : _mm256_setzero_si256();                               \
                    P[i].d[v][l] = r < rows ? _cvtsh_ss(w->d) : 0.0f;                                 \
                }                                                                                     \
                transpose8x8(q);                                                                      \
                for (int k = 0; k < 8; k++) {                                                         \
                    _mm256_store_si256((__m256i *)P[i].sw[v][k], q[k]);                               \
                    _mm256_store_si256((__m256i *)P[i].uw[v][k], _mm256_sign_epi8(q[k], q[k]));       \
                }                                                                                     \
            }                                                                                         \
    }
REPACK8(repack8_q8_0, pam_block_q8_0, load_q8_0)
REPACK8(repack8_q4_0, pam_block_q4_0, load_q4_0)

typedef struct {
    __m256 a[TILE8_T][2][GROUP8][RV8];
} tile8_acc;

static inline __attribute__((always_inline)) void tile8_tokens(const panel8_block *P, int64_t nb,
                                                               const uint8_t *act, size_t act_bytes, float *Y,
                                                               int64_t ldy, const int nrows[RV8], tile8_acc *A,
                                                               const int T, const int q4) {
    const pam_block_q8_0 *a[TILE8_T];
    for (int t = 0; t < T; t++) a[t] = (const pam_block_q8_0 *)(act + (size_t)t * act_bytes);
    for (int t = 0; t < T; t++)
        for (int c = 0; c < 2; c++)
            for (int b = 0; b < GROUP8; b++)
                for (int v = 0; v < RV8; v++) A->a[t][c][b][v] = _mm256_setzero_ps();

    const __m256i ones = _mm256_set1_epi16(1);
    const int64_t nfull = nb / GROUP8;
    for (int64_t i = 0; i < nb; i++) {
        const int64_t g = i / GROUP8;
        const int b = (int)(i % GROUP8), c = g < nfull ? (int)(g & 1) : 1;
        const panel8_block *pb = &P[i];
        __m256i s[TILE8_T][RV8];
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
#pragma GCC unroll 4
            for (int v = 0; v < RV8; v++) s[t][v] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) {
                int32_t q;
                memcpy(&q, a[t][i].qs + 4 * k, 4);
                const __m256i ab = _mm256_set1_epi32(q);
#pragma GCC unroll 4
                for (int v = 0; v < RV8; v++) {
                    const __m256i p16 =
                        _mm256_maddubs_epi16(_mm256_load_si256((const __m256i *)pb->uw[v][k]),
                                             _mm256_sign_epi8(ab, _mm256_load_si256((const __m256i *)pb->sw[v][k])));
                    /* Q4_0 (|w| <= 8): 8 steps of int16 pairs stay below 8 * 2 * 8 * 127 */
                    s[t][v] = q4 ? _mm256_add_epi16(s[t][v], p16)
                                 : _mm256_add_epi32(s[t][v], _mm256_madd_epi16(p16, ones));
                }
            }
        }
        if (q4)
#pragma GCC unroll 8
            for (int t = 0; t < T; t++)
#pragma GCC unroll 4
                for (int v = 0; v < RV8; v++) s[t][v] = _mm256_madd_epi16(s[t][v], ones);
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            const __m256 ad = _mm256_set1_ps(_cvtsh_ss(a[t][i].d));
#pragma GCC unroll 4
            for (int v = 0; v < RV8; v++)
                A->a[t][c][b][v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[t][v]),
                                                   _mm256_mul_ps(_mm256_load_ps(pb->d[v]), ad), A->a[t][c][b][v]);
        }
    }
    /* the partial group's empty lanes: acc + 0 * 0, as the single-row kernel */
    if (nb % GROUP8)
        for (int b = (int)(nb % GROUP8); b < GROUP8; b++)
            for (int t = 0; t < T; t++)
                for (int v = 0; v < RV8; v++) A->a[t][1][b][v] = _mm256_add_ps(A->a[t][1][b][v], _mm256_setzero_ps());

    /* hsum8(acc0 + acc1), lane by lane */
    for (int t = 0; t < T; t++)
        for (int v = 0; v < RV8; v++) {
            __m256 x[GROUP8];
            for (int b = 0; b < GROUP8; b++) x[b] = _mm256_add_ps(A->a[t][0][b][v], A->a[t][1][b][v]);
            for (int h = GROUP8 / 2; h >= 1; h /= 2)
                for (int b = 0; b < h; b++) x[b] = _mm256_add_ps(x[b], x[b + h]);
            float *y = Y + t * ldy + 8 * v;
            if (nrows[v] == 8) {
                _mm256_storeu_ps(y, x[0]);
            } else {
                float tmp[8];
                _mm256_storeu_ps(tmp, x[0]);
                for (int l = 0; l < nrows[v]; l++) y[l] = tmp[l];
            }
        }
}

static inline __attribute__((always_inline)) void tile8_run(const panel8_block *P, int rows, const void *act,
                                                            size_t act_bytes, int64_t n_tok, int64_t nb, float *Y,
                                                            int64_t ldy, const int q4) {
    int nrows[RV8];
    for (int v = 0; v < RV8; v++) {
        const int left = rows - 8 * v;
        nrows[v] = left >= 8 ? 8 : left <= 0 ? 0 : left;
    }
    tile8_acc A;
    const uint8_t *a = act;
    int64_t t = 0;
    for (; t + TILE8_T <= n_tok; t += TILE8_T)
        tile8_tokens(P, nb, a + (size_t)t * act_bytes, act_bytes, Y + t * ldy, ldy, nrows, &A, TILE8_T, q4);
    const uint8_t *at = a + (size_t)t * act_bytes;
    switch (n_tok - t) { /* the last few tokens together too */
    case 3: tile8_tokens(P, nb, at, act_bytes, Y + t * ldy, ldy, nrows, &A, 3, q4); break;
    case 2: tile8_tokens(P, nb, at, act_bytes, Y + t * ldy, ldy, nrows, &A, 2, q4); break;
    case 1: tile8_tokens(P, nb, at, act_bytes, Y + t * ldy, ldy, nrows, &A, 1, q4); break;
    default: break;
    }
}

#define TILE8_FN(NAME, REPACK, QK, Q4)                                                                     \
    void NAME(const void *W, size_t row_bytes, int64_t rows, const void *act, size_t act_bytes,       \
              int64_t n_tok, int64_t cols, float *Y, int64_t ldy, void *scratch) {                    \
        const int64_t nb = cols / (QK);                                                               \
        panel8_block *P = (panel8_block *)(((uintptr_t)scratch + 31) & ~(uintptr_t)31);              \
        for (int64_t r = 0; r < rows; r += 8 * RV8) {                                                 \
            const int nr = rows - r < 8 * RV8 ? (int)(rows - r) : 8 * RV8;                            \
            REPACK(P, (const uint8_t *)W + (size_t)r * row_bytes, row_bytes, nr, nb);                 \
            tile8_run(P, nr, act, act_bytes, n_tok, nb, Y + r, ldy, Q4);                                \
        }                                                                                             \
    }
TILE8_FN(pam_tile_q8_0_avx2, repack8_q8_0, PAM_QK8_0, 0)
TILE8_FN(pam_tile_q4_0_avx2, repack8_q4_0, PAM_QK4_0, 1)

/* ---- Q8_0 activations ----------------------------------------------------
 * Byte-identical to the reference quantiser (see quant_avx512.c). */

static inline __m256i round_away_i32(__m256 v) {
    const __m256i i = _mm256_cvttps_epi32(v);
    const __m256 f = _mm256_sub_ps(v, _mm256_cvtepi32_ps(i)); /* exact: |v| < 2^23 */
    /* compare masks are -1 where true: subtracting adds one, adding subtracts */
    const __m256i up = _mm256_castps_si256(_mm256_cmp_ps(f, _mm256_set1_ps(0.5f), _CMP_GE_OQ));
    const __m256i down = _mm256_castps_si256(_mm256_cmp_ps(f, _mm256_set1_ps(-0.5f), _CMP_LE_OQ));
    return _mm256_add_epi32(_mm256_sub_epi32(i, up), down);
}

void pam_quantize_q8_0_avx2(const float *x, void *dst, int64_t n) {
    pam_block_q8_0 *y = dst;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n / PAM_QK8_0; i++, x += PAM_QK8_0) {
        __m256 v[4];
        for (int k = 0; k < 4; k++) v[k] = _mm256_loadu_ps(x + 8 * k);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                                 _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        const float amax = _mm_cvtss_f32(h);
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = pam_f32_to_f16(d);
        const __m256 vid = _mm256_set1_ps(id);
        __m256i q[4];
        for (int k = 0; k < 4; k++) q[k] = round_away_i32(_mm256_mul_ps(v[k], vid));
        /* int32 -> int8 in order: packs interleave 128-bit lanes, a permute undoes it */
        const __m256i p16 = _mm256_packs_epi32(q[0], q[1]), p16b = _mm256_packs_epi32(q[2], q[3]);
        const __m256i p8 = _mm256_packs_epi16(p16, p16b);
        _mm256_storeu_si256((__m256i *)y[i].qs,
                            _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    }
}

/* ---- Q4_K against Q8_K ----------------------------------------------------
 * Per block: sum_j sc_j * (q4 . q8)_j in int32 lanes, times d; the mins
 * contribute dmin * sum_j m_j * (bsum_2j + bsum_2j+1). */

/* The 12 packed bytes as 8 scales then 8 mins, one byte each (ggml's utmp). */
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

/* One row against T token activations (T = 1: the plain dot): the weight
 * side is unpacked once per block for all T tokens, and each token's
 * arithmetic is the same whatever T. */
#define KT8 4 /* tokens per call in the tiled K-quant kernels */

static inline __attribute__((always_inline)) void q4_K_tokens(const void *row, const void *const *acts, int64_t n,
                                                              float *out, int64_t out_stride, const int T) {
    const pam_block_q4_K *w = row;
    const int64_t nb = n / PAM_QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    __m256 acc[KT8];
    __m128 acc_m[KT8];
    for (int t = 0; t < T; t++) {
        acc[t] = _mm256_setzero_ps();
        acc_m[t] = _mm_setzero_ps();
    }

    for (int64_t i = 0; i < nb; i++) {
        uint8_t sm[16];
        unpack_q4_K_scales(w[i].scales, sm);
        const __m256i sm16 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)sm));
        __m256i lo[PAM_QK_K / 64], hi[PAM_QK_K / 64], scale_l[PAM_QK_K / 64], scale_h[PAM_QK_K / 64];
        for (int j = 0; j < PAM_QK_K / 64; j++) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)(w[i].qs + 32 * j));
            lo[j] = _mm256_and_si256(bits, m4);
            hi[j] = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            scale_l[j] = _mm256_set1_epi16(sm[2 * j]);
            scale_h[j] = _mm256_set1_epi16(sm[2 * j + 1]);
        }
        for (int t = 0; t < T; t++) {
            const pam_block_q8_K *a = (const pam_block_q8_K *)acts[t] + i;
            const float d = a->d * f16(w[i].d);
            const float dmin = -a->d * f16(w[i].dmin);
            /* mins: bsums pairwise summed to one value per 32-element sub-block */
            const __m256i bs = _mm256_loadu_si256((const __m256i *)a->bsums);
            const __m128i bs8 = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
            const __m128i mprod = _mm_madd_epi16(_mm256_extracti128_si256(sm16, 1), bs8);
            acc_m[t] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(mprod), acc_m[t]);

            const int8_t *q8 = a->qs;
            __m256i sumi = _mm256_setzero_si256();
            for (int j = 0; j < PAM_QK_K / 64; j++, q8 += 64) {
                const __m256i pl = _mm256_madd_epi16(
                    scale_l[j], _mm256_maddubs_epi16(lo[j], _mm256_loadu_si256((const __m256i *)q8)));
                const __m256i ph = _mm256_madd_epi16(
                    scale_h[j], _mm256_maddubs_epi16(hi[j], _mm256_loadu_si256((const __m256i *)(q8 + 32))));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
            }
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc[t]);
        }
    }
    for (int t = 0; t < T; t++) {
        __m128 m = acc_m[t];
        m = _mm_add_ps(m, _mm_movehl_ps(m, m));
        m = _mm_add_ss(m, _mm_movehdup_ps(m));
        out[t * out_stride] = hsum8(acc[t]) + _mm_cvtss_f32(m);
    }
}

float pam_dot_q4_K_avx2(const void *row, const void *act, int64_t n) {
    float out;
    q4_K_tokens(row, &act, n, &out, 1, 1);
    return out;
}

/* ---- Q6_K against Q8_K ----------------------------------------------------
 * q6 is stored offset by 32; maddubs needs the unsigned form, so the offset
 * is taken out afterwards as 32 * sum_j sc_j * bsum_j. */
static inline __attribute__((always_inline)) void q6_K_tokens(const void *row, const void *const *acts, int64_t n,
                                                              float *out, int64_t out_stride, const int T) {
    const pam_block_q6_K *w = row;
    const int64_t nb = n / PAM_QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i m2 = _mm256_set1_epi8(0x03);
    __m256 acc[KT8];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();

    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *ql = w[i].ql;
        const uint8_t *qh = w[i].qh;
        const int8_t *sc = w[i].scales;
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc));
        __m256i q[PAM_QK_K / 128][4], s[PAM_QK_K / 128][4];
        for (int j = 0; j < PAM_QK_K / 128; j++, ql += 64, qh += 32, sc += 8) {
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
            const __m256i h = _mm256_loadu_si256((const __m256i *)qh);
            /* values l..l+31 of each 32-group: low nibble | two high bits << 4 */
            q[j][0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(h, m2), 4));
            q[j][1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                      _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), m2), 4));
            q[j][2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                      _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), m2), 4));
            q[j][3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                      _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), m2), 4));
            /* each 32-group spans two 16-element sub-blocks with own scales:
             * int16 lanes 0..7 take the first, 8..15 the second */
            for (int k = 0; k < 4; k++)
                s[j][k] = _mm256_set_m128i(_mm_set1_epi16(sc[2 * k + 1]), _mm_set1_epi16(sc[2 * k]));
        }
        for (int t = 0; t < T; t++) {
            const pam_block_q8_K *a = (const pam_block_q8_K *)acts[t] + i;
            const float d = a->d * f16(w[i].d);
            const __m256i bs = _mm256_loadu_si256((const __m256i *)a->bsums);
            const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5);
            const int8_t *q8 = a->qs;
            __m256i sumi = _mm256_setzero_si256();
            for (int j = 0; j < PAM_QK_K / 128; j++, q8 += 128) {
                __m256i p[4];
                for (int k = 0; k < 4; k++)
                    p[k] = _mm256_madd_epi16(
                        s[j][k], _mm256_maddubs_epi16(q[j][k], _mm256_loadu_si256((const __m256i *)(q8 + 32 * k))));
                sumi = _mm256_add_epi32(
                    sumi, _mm256_add_epi32(_mm256_add_epi32(p[0], p[1]), _mm256_add_epi32(p[2], p[3])));
            }
            sumi = _mm256_sub_epi32(sumi, offset);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc[t]);
        }
    }
    for (int t = 0; t < T; t++) out[t * out_stride] = hsum8(acc[t]);
}

float pam_dot_q6_K_avx2(const void *row, const void *act, int64_t n) {
    float out;
    q6_K_tokens(row, &act, n, &out, 1, 1);
    return out;
}

/* Tiled K-quants: each row against KT8 tokens at a time, the panel's rows
 * staying in cache while the tokens pass. */
#define KTILE8_FN(NAME, TOKENS)                                                                        \
    void NAME(const void *W, size_t row_bytes, int64_t rows, const void *act, size_t act_bytes,       \
              int64_t n_tok, int64_t cols, float *Y, int64_t ldy, void *scratch) {                    \
        for (int64_t t = 0; t < n_tok; t += KT8) {                                                    \
            const void *acts[KT8];                                                                    \
            const int64_t nt = n_tok - t < KT8 ? n_tok - t : KT8;                                     \
            for (int k = 0; k < nt; k++) acts[k] = (const uint8_t *)act + (size_t)(t + k) * act_bytes; \
            for (int64_t r = 0; r < rows; r++) {                                                      \
                const void *w = (const uint8_t *)W + (size_t)r * row_bytes;                           \
                float *y = Y + t * ldy + r;                                                           \
                if (nt == KT8)                                                                        \
                    TOKENS(w, acts, cols, y, ldy, KT8);                                               \
                else                                                                                  \
                    for (int k = 0; k < nt; k++) TOKENS(w, acts + k, cols, y + k * ldy, ldy, 1);      \
            }                                                                                         \
        }                                                                                             \
    }
KTILE8_FN(pam_tile_q4_K_avx2, q4_K_tokens)
KTILE8_FN(pam_tile_q6_K_avx2, q6_K_tokens)

#endif
