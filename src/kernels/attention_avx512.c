/* AVX-512 attention over f16 K/V rows, the 16-lane twin of
 * attention_avx2.c: tiles of 16 tokens are converted to f32 once into an
 * L1-resident buffer and used by every query head of the group, so each K/V
 * byte is read from memory once per step. The order of every reduction
 * depends only on head_dim and n. Requires head_dim % 16 == 0. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "core/fp16.h"
#include "kernels/attention.h"
#include "kernels/attention_avx512.h"

#define TILE 16
#define MAX_HD 256

/* Adjacent lanes of the 32-lane concatenation (a, b) summed. Four levels turn
 * 16 per-token accumulators into one vector with token j's score in lane j. */
static inline __m512 pair_sum_ps(__m512 a, __m512 b) {
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_add_ps(_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b));
}

/* Converts rows t0..t0+cnt-1 (cnt <= TILE) to f32, row-major [cnt][hd]. */
static inline void load_tile(const uint16_t *X, size_t stride, int64_t t0, int cnt, int hd, float *dst) {
    for (int j = 0; j < cnt; j++) {
        const uint16_t *row = X + (size_t)(t0 + j) * stride;
        for (int d = 0; d < hd; d += 16)
            _mm512_storeu_ps(dst + j * hd + d,
                             _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + d))));
    }
}

/* Dot of one query head with one f32 row: 16-lane accumulator, fixed order. */
static inline __m512 dot_acc(const float *qg, const float *k, int hd) {
    __m512 a0 = _mm512_mul_ps(_mm512_loadu_ps(qg), _mm512_loadu_ps(k));
    for (int d = 16; d < hd; d += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qg + d), _mm512_loadu_ps(k + d), a0);
    return a0;
}

/* o = the softmax weights in scores applied to V rows (row t at
 * V + t*stride): each converted tile is applied to every head. */
static void weighted_v512(const uint16_t *V, size_t stride, const float *scores, int n_q, int64_t n, int hd,
                          float *tile, float *o) {
    memset(o, 0, sizeof(float) * (size_t)n_q * (size_t)hd);
    for (int64_t t0 = 0; t0 < n; t0 += TILE) {
        const int cnt = n - t0 < TILE ? (int)(n - t0) : TILE;
        load_tile(V, stride, t0, cnt, hd, tile);
        for (int g = 0; g < n_q; g++) {
            const float *pg = scores + (size_t)g * n + t0;
            float *og = o + (size_t)g * hd;
            for (int d = 0; d < hd; d += 16) {
                __m512 o0 = _mm512_loadu_ps(og + d);
                for (int j = 0; j < cnt; j++)
                    o0 = _mm512_fmadd_ps(_mm512_set1_ps(pg[j]), _mm512_loadu_ps(tile + j * hd + d), o0);
                _mm512_storeu_ps(og + d, o0);
            }
        }
    }
}

void pam_attn_partial_f16_avx512(const float *q, int n_q, int head_dim, float scale,
                                 const uint16_t *K, const uint16_t *V, size_t stride, int64_t n,
                                 float *m, float *l, float *o, float *scores) {
    const int hd = head_dim;
    float tile[TILE * MAX_HD];
    if (hd > MAX_HD || hd % 16) {
        pam_attn_partial_f16_ref(q, n_q, head_dim, scale, K, V, stride, n, m, l, o, scores);
        return;
    }
    const __m512 vscale = _mm512_set1_ps(scale);

    /* Scores: a full tile yields 16 scores per head through a permute tree. */
    int64_t t0 = 0;
    for (; t0 + TILE <= n; t0 += TILE) {
        load_tile(K, stride, t0, TILE, hd, tile);
        for (int g = 0; g < n_q; g++) {
            const float *qg = q + (size_t)g * hd;
            __m512 a[TILE];
            for (int j = 0; j < TILE; j++) a[j] = dot_acc(qg, tile + j * hd, hd);
            __m512 b[TILE / 2], c[TILE / 4], e[TILE / 8];
            for (int j = 0; j < TILE / 2; j++) b[j] = pair_sum_ps(a[2 * j], a[2 * j + 1]);
            for (int j = 0; j < TILE / 4; j++) c[j] = pair_sum_ps(b[2 * j], b[2 * j + 1]);
            for (int j = 0; j < TILE / 8; j++) e[j] = pair_sum_ps(c[2 * j], c[2 * j + 1]);
            _mm512_storeu_ps(scores + (size_t)g * n + t0, _mm512_mul_ps(pair_sum_ps(e[0], e[1]), vscale));
        }
    }
    if (t0 < n) {
        const int cnt = (int)(n - t0);
        load_tile(K, stride, t0, cnt, hd, tile);
        for (int g = 0; g < n_q; g++) {
            const float *qg = q + (size_t)g * hd;
            for (int j = 0; j < cnt; j++)
                scores[(size_t)g * n + t0 + j] = hsum512(dot_acc(qg, tile + j * hd, hd)) * scale;
        }
    }

    softmax_rows512(scores, n_q, n, m, l);

    weighted_v512(V, stride, scores, n_q, n, hd, tile, o);
}

/* ---- K transposed per block (pam_attn_partial_f16_kt) ---------------------
 * Element (d, t) of K at Kt[d*B + t]: the 16 tokens of a tile are one
 * contiguous run per channel, so a score vector is built by broadcasting
 * q[d] and FMA-ing with that run, one accumulator pair (even/odd channels)
 * per query head, no horizontal sums. Heads go in groups of up to 8. */

#define KT_GROUP 8

/* Scores of tokens t0..t0+15 for NG heads (q: NG rows of hd), lanes outside
 * mask neither loaded nor stored. NG is a constant after inlining, so the
 * accumulators live in registers. */
static inline __attribute__((always_inline)) void kt_scores512(const float *q, const int NG, int hd,
                                                               const uint16_t *Kt, int64_t B, int64_t t0,
                                                               __mmask16 mask, __m512 vscale, float *sc,
                                                               int64_t n, const char *pf, int pf_per) {
    __m512 a[KT_GROUP], b[KT_GROUP];
    for (int g = 0; g < NG; g++) a[g] = b[g] = _mm512_setzero_ps();
    const uint16_t *k = Kt + t0;
    for (int d = 0; d < hd; d += 2) {
        /* pf: memory the caller needs next, fetched a few lines per step */
        if (pf)
            for (int i = 0; i < pf_per; i++) _mm_prefetch(pf + ((size_t)(d / 2) * (size_t)pf_per + (size_t)i) * 64, _MM_HINT_T1);
        const __m512 k0 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, k + (size_t)d * (size_t)B));
        const __m512 k1 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, k + (size_t)(d + 1) * (size_t)B));
        for (int g = 0; g < NG; g++) {
            a[g] = _mm512_fmadd_ps(_mm512_set1_ps(q[(size_t)g * hd + d]), k0, a[g]);
            b[g] = _mm512_fmadd_ps(_mm512_set1_ps(q[(size_t)g * hd + d + 1]), k1, b[g]);
        }
    }
    for (int g = 0; g < NG; g++)
        _mm512_mask_storeu_ps(sc + (size_t)g * n + t0, mask, _mm512_mul_ps(_mm512_add_ps(a[g], b[g]), vscale));
}

void pam_attn_partial_f16_kt_avx512(const float *q, int n_q, int head_dim, float scale,
                                    const uint16_t *Kt, const uint16_t *V, int64_t B, int64_t n,
                                    float *m, float *l, float *o, float *scores) {
    const int hd = head_dim;
    float tile[TILE * MAX_HD];
    if (hd > MAX_HD || hd % 16 || n < 1 || n > B) {
        pam_attn_partial_f16_kt_ref(q, n_q, head_dim, scale, Kt, V, B, n, m, l, o, scores);
        return;
    }
    if (B <= 16 && n_q <= 64) {
        /* the run kernel on one block: a block's partial is then the same
         * wherever it is computed (alone, in a run, in another tier) */
        float sc[64 * 16 + 2 * 64];
        const uint16_t *k1 = Kt, *v1 = V;
        const int32_t nt = (int32_t)n;
        pam_attn_partial_f16_kt_run_avx512(q, n_q, hd, scale, &k1, &v1, &nt, 1, B, 1, m, l, o, NULL, NULL, 0, NULL, 0,
                                           sc);
        return;
    }
    const __m512 vscale = _mm512_set1_ps(scale);

    for (int64_t t0 = 0; t0 < n; t0 += TILE) {
        const __mmask16 mask = n - t0 >= TILE ? (__mmask16)0xFFFF : lanes16(n - t0);
        for (int g0 = 0; g0 < n_q; g0 += KT_GROUP) {
            const float *qg = q + (size_t)g0 * hd;
            float *sg = scores + (size_t)g0 * n;
            switch (n_q - g0 < KT_GROUP ? n_q - g0 : KT_GROUP) {
            case 1: kt_scores512(qg, 1, hd, Kt, B, t0, mask, vscale, sg, n, NULL, 0); break;
            case 2: kt_scores512(qg, 2, hd, Kt, B, t0, mask, vscale, sg, n, NULL, 0); break;
            case 3: kt_scores512(qg, 3, hd, Kt, B, t0, mask, vscale, sg, n, NULL, 0); break;
            case 4: kt_scores512(qg, 4, hd, Kt, B, t0, mask, vscale, sg, n, NULL, 0); break;
            case 5: kt_scores512(qg, 5, hd, Kt, B, t0, mask, vscale, sg, n, NULL, 0); break;
            case 6: kt_scores512(qg, 6, hd, Kt, B, t0, mask, vscale, sg, n, NULL, 0); break;
            case 7: kt_scores512(qg, 7, hd, Kt, B, t0, mask, vscale, sg, n, NULL, 0); break;
            default: kt_scores512(qg, 8, hd, Kt, B, t0, mask, vscale, sg, n, NULL, 0); break;
            }
        }
    }

    softmax_rows512(scores, n_q, n, m, l);

    weighted_v512(V, (size_t)hd, scores, n_q, n, hd, tile, o);
}

/* ---- a run of blocks folded in one call (pam_attn_partial_f16_kt_run) -----
 * Bit for bit the per-block fold: each block's partial is the one
 * pam_attn_partial_f16_kt_avx512 computes (the same score, softmax and
 * weighted-sum order) and is merged into the running partial with
 * pam_attn_merge's arithmetic (expf of the max differences, o * ca + ob * cb
 * unfused). So where a block sits (which tier, which run, which piece)
 * changes nothing. What the run saves is the per-block traffic: the scores
 * of all its blocks come first, then the merge factors of every (block,
 * head) as scalars, then V through a register tile of HN heads x DV vectors
 * of channels that holds both the running o and the block's sum across the
 * whole run: o is loaded and stored once per run, V is read straight from
 * f16 (no f32 tile in memory), and no separate merge pass touches o. */

#define RUN_TILE 16

/* Lanes 0..7: the max (the sum) of each of x[0..7]'s 16 lanes, by a tree
 * of adjacent pairs that transposes as it reduces (lanes 8..15 repeat
 * them). The sum's order is fixed: ((x0 + x1) + (x2 + x3)) + ... per lane
 * pair, the same for every block and call. */
static inline __m512 tree8_max(const __m512 *x) {
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
#define PMAX(a, b) _mm512_max_ps(_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b))
    const __m512 y0 = PMAX(x[0], x[1]), y1 = PMAX(x[2], x[3]), y2 = PMAX(x[4], x[5]), y3 = PMAX(x[6], x[7]);
    const __m512 z0 = PMAX(y0, y1), z1 = PMAX(y2, y3);
    const __m512 w = PMAX(z0, z1);
    return PMAX(w, w);
#undef PMAX
}

static inline __m512 tree8_add(const __m512 *x) {
    const __m512 y0 = pair_sum_ps(x[0], x[1]), y1 = pair_sum_ps(x[2], x[3]), y2 = pair_sum_ps(x[4], x[5]),
                 y3 = pair_sum_ps(x[6], x[7]);
    const __m512 z0 = pair_sum_ps(y0, y1), z1 = pair_sum_ps(y2, y3);
    const __m512 w = pair_sum_ps(z0, z1);
    return pair_sum_ps(w, w);
}

/* Block j's weighted V sum for HN heads x DV vectors of channels from d0,
 * accumulated in registers over its tokens, then merged into o (in L1) as
 * pam_attn_merge does: o * ca + sum * cb, unfused (the first block of an
 * init run is stored as is). */
static inline __attribute__((always_inline)) void run_v512(const uint16_t *vb, int n, int hd, const float *pj,
                                                           size_t S, const float *ca, const float *cb, int first,
                                                           const int HN, const int DV, float *o) {
    __m512 acc[8][8];
    for (int h = 0; h < HN; h++)
        for (int u = 0; u < DV; u++) acc[h][u] = _mm512_setzero_ps();
    for (int t = 0; t < n; t++, vb += hd) {
        __m512 v[8];
        for (int u = 0; u < DV; u++) v[u] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vb + 16 * u)));
        for (int h = 0; h < HN; h++) {
            const __m512 w = _mm512_set1_ps(pj[(size_t)h * S + t]);
            for (int u = 0; u < DV; u++) acc[h][u] = _mm512_fmadd_ps(w, v[u], acc[h][u]);
        }
    }
    for (int h = 0; h < HN; h++) {
        float *oh = o + (size_t)h * hd;
        if (first) {
            for (int u = 0; u < DV; u++) _mm512_storeu_ps(oh + 16 * u, acc[h][u]);
            continue;
        }
        const __m512 a = _mm512_set1_ps(ca[h]), b = _mm512_set1_ps(cb[h]);
        for (int u = 0; u < DV; u++) {
            const __m512 x = _mm512_mul_ps(_mm512_loadu_ps(oh + 16 * u), a);
            const __m512 y = _mm512_mul_ps(acc[h][u], b);
            _mm512_storeu_ps(oh + 16 * u, _mm512_add_ps(x, y));
        }
    }
}

void pam_attn_partial_f16_kt_run_avx512(const float *q, int n_q, int head_dim, float scale,
                                        const uint16_t *const *Kt, const uint16_t *const *V, const int32_t *n_tok,
                                        int nblk, int64_t B, int init, float *m, float *l, float *o, float *blk_m,
                                        float *blk_l, size_t blk_stride, const void *const *pf, size_t pf_bytes,
                                        float *scratch) {
    const int hd = head_dim;
    /* lines of pf[j] per step of block j's score loop (hd / 2 steps) */
    const int pf_per = pf ? (int)((pf_bytes / 64 + (size_t)hd / 2 - 1) / ((size_t)hd / 2)) : 0;
    const size_t S = (size_t)nblk * RUN_TILE; /* score row of one head */
    float *sc = scratch, *ca = sc + (size_t)n_q * S, *cb = ca + (size_t)n_q * nblk;
    const __m512 vscale = _mm512_set1_ps(scale);
    for (int j = 0; j < nblk; j++) {
        const __mmask16 mask = lanes16(n_tok[j] < RUN_TILE ? n_tok[j] : RUN_TILE);
        for (int g0 = 0; g0 < n_q; g0 += KT_GROUP) {
            const float *qg = q + (size_t)g0 * hd;
            float *sg = sc + (size_t)g0 * S + (size_t)j * RUN_TILE;
            const char *pfj = pf && g0 == 0 ? (const char *)pf[j] : NULL;
            switch (n_q - g0 < KT_GROUP ? n_q - g0 : KT_GROUP) {
            case 1: kt_scores512(qg, 1, hd, Kt[j], B, 0, mask, vscale, sg, (int64_t)S, pfj, pf_per); break;
            case 2: kt_scores512(qg, 2, hd, Kt[j], B, 0, mask, vscale, sg, (int64_t)S, pfj, pf_per); break;
            case 3: kt_scores512(qg, 3, hd, Kt[j], B, 0, mask, vscale, sg, (int64_t)S, pfj, pf_per); break;
            case 4: kt_scores512(qg, 4, hd, Kt[j], B, 0, mask, vscale, sg, (int64_t)S, pfj, pf_per); break;
            case 5: kt_scores512(qg, 5, hd, Kt[j], B, 0, mask, vscale, sg, (int64_t)S, pfj, pf_per); break;
            case 6: kt_scores512(qg, 6, hd, Kt[j], B, 0, mask, vscale, sg, (int64_t)S, pfj, pf_per); break;
            case 7: kt_scores512(qg, 7, hd, Kt[j], B, 0, mask, vscale, sg, (int64_t)S, pfj, pf_per); break;
            default: kt_scores512(qg, 8, hd, Kt[j], B, 0, mask, vscale, sg, (int64_t)S, pfj, pf_per); break;
            }
        }
    }
    /* Per block, heads in groups of 8: the maxes and the sums of the
     * group's 8 score rows come out of one transposing tree each. */
    for (int j = 0; j < nblk; j++) {
        const __mmask16 mask = lanes16(n_tok[j] < RUN_TILE ? n_tok[j] : RUN_TILE);
        for (int g0 = 0; g0 < n_q; g0 += 8) {
            const int gn = n_q - g0 < 8 ? n_q - g0 : 8;
            __m512 x[8];
            float mb[16], lb[16];
            for (int g = 0; g < 8; g++)
                x[g] = g < gn ? _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), mask,
                                                     sc + (size_t)(g0 + g) * S + (size_t)j * RUN_TILE)
                              : _mm512_set1_ps(-INFINITY);
            _mm512_storeu_ps(mb, tree8_max(x));
            for (int g = 0; g < 8; g++) {
                x[g] = g < gn ? _mm512_maskz_mov_ps(mask, exp512_nonpos(_mm512_sub_ps(x[g], _mm512_set1_ps(mb[g]))))
                              : _mm512_setzero_ps();
                if (g < gn) _mm512_storeu_ps(sc + (size_t)(g0 + g) * S + (size_t)j * RUN_TILE, x[g]);
            }
            _mm512_storeu_ps(lb, tree8_add(x));
            for (int g = 0; g < gn; g++) {
                const int h = g0 + g;
                if (blk_m) {
                    blk_m[(size_t)j * blk_stride + h] = mb[g];
                    blk_l[(size_t)j * blk_stride + h] = lb[g];
                }
                if (init && j == 0) {
                    m[h] = mb[g];
                    l[h] = lb[g];
                    continue;
                }
                /* pam_attn_merge's factors; the larger max's is expf(0) = 1 */
                const float mx = m[h] > mb[g] ? m[h] : mb[g];
                const float fa = m[h] == -INFINITY ? 0.0f : m[h] == mx ? 1.0f : expf(m[h] - mx);
                const float fb = mb[g] == -INFINITY ? 0.0f : mb[g] == mx ? 1.0f : expf(mb[g] - mx);
                ca[(size_t)j * n_q + h] = fa;
                cb[(size_t)j * n_q + h] = fb;
                l[h] = l[h] * fa + lb[g] * fb;
                m[h] = mx;
            }
        }
    }
    /* V block by block (each stays in L1 across the head tiles), heads in
     * tiles of up to 8 x up to 16 * 16 / 8 channels: 16 accumulators */
    for (int j = 0; j < nblk; j++) {
        const int first = init && j == 0;
        for (int h0 = 0; h0 < n_q; h0 += 8) {
            const int hn = n_q - h0 < 8 ? n_q - h0 : 8;
            const int dvmax = hn <= 2 ? 8 : hn <= 4 ? 4 : 2;
            const float *pj = sc + (size_t)h0 * S + (size_t)j * RUN_TILE;
            const float *caj = ca + (size_t)j * n_q + h0, *cbj = cb + (size_t)j * n_q + h0;
            for (int d0 = 0; d0 < hd;) {
                int dv = (hd - d0) / 16;
                dv = dv >= dvmax ? dvmax : dv >= 4 ? 4 : dv >= 2 ? 2 : 1;
                const uint16_t *vb = V[j] + d0;
                float *oh = o + (size_t)h0 * hd + d0;
#define RUN_V(hn_, dv_) run_v512(vb, n_tok[j], hd, pj, S, caj, cbj, first, hn_, dv_, oh)
#define RUN_V_DV(hn_) \
    do { \
        if (dv >= 8) RUN_V(hn_, 8); \
        else if (dv >= 4) RUN_V(hn_, 4); \
        else if (dv >= 2) RUN_V(hn_, 2); \
        else RUN_V(hn_, 1); \
    } while (0)
                switch (hn) {
                case 1: RUN_V_DV(1); break;
                case 2: RUN_V_DV(2); break;
                case 3: RUN_V_DV(3); break;
                case 4: RUN_V_DV(4); break;
                case 5: RUN_V_DV(5); break;
                case 6: RUN_V_DV(6); break;
                case 7: RUN_V_DV(7); break;
                default: RUN_V_DV(8); break;
                }
#undef RUN_V_DV
#undef RUN_V
                d0 += 16 * dv;
            }
        }
    }
}
