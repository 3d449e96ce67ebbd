/* AVX2/FMA/F16C attention over f16 K/V rows. Works in tiles of 8 tokens: a
 * tile of K (or V) is converted to f32 once into an L1-resident buffer and
 * then used by every query head of the group, so each K/V byte is read from
 * memory once per step. The order of every reduction depends only on
 * head_dim and n. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "core/fp16.h"
#include "kernels/attention.h"
#include "kernels/attention_avx2.h"

#define TILE 8
#define MAX_HD 256

/* Converts rows t0..t0+cnt-1 (cnt <= TILE) to f32, row-major [cnt][hd]. */
static inline void load_tile(const uint16_t *X, size_t stride, int64_t t0, int cnt, int hd, float *dst) {
    for (int j = 0; j < cnt; j++) {
        const uint16_t *row = X + (size_t)(t0 + j) * stride;
        for (int d = 0; d < hd; d += 8)
            _mm256_storeu_ps(dst + j * hd + d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + d))));
    }
}

/* Dot of one query head with one f32 row: 8-lane accumulators, fixed order. */
static inline __m256 dot_acc(const float *qg, const float *k, int hd) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (int d = 0; d < hd; d += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qg + d), _mm256_loadu_ps(k + d), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qg + d + 8), _mm256_loadu_ps(k + d + 8), a1);
    }
    return _mm256_add_ps(a0, a1);
}

/* o = the softmax weights in scores applied to V rows (row t at
 * V + t*stride): each converted tile is applied to every head. */
static void weighted_v256(const uint16_t *V, size_t stride, const float *scores, int n_q, int64_t n, int hd,
                          float *tile, float *o) {
    memset(o, 0, sizeof(float) * (size_t)n_q * (size_t)hd);
    for (int64_t t0 = 0; t0 < n; t0 += TILE) {
        int cnt = n - t0 < TILE ? (int)(n - t0) : TILE;
        load_tile(V, stride, t0, cnt, hd, tile);
        for (int g = 0; g < n_q; g++) {
            const float *pg = scores + (size_t)g * n + t0;
            float *og = o + (size_t)g * hd;
            for (int d = 0; d < hd; d += 16) {
                __m256 o0 = _mm256_loadu_ps(og + d), o1 = _mm256_loadu_ps(og + d + 8);
                for (int j = 0; j < cnt; j++) {
                    __m256 p = _mm256_broadcast_ss(pg + j);
                    o0 = _mm256_fmadd_ps(p, _mm256_loadu_ps(tile + j * hd + d), o0);
                    o1 = _mm256_fmadd_ps(p, _mm256_loadu_ps(tile + j * hd + d + 8), o1);
                }
                _mm256_storeu_ps(og + d, o0);
                _mm256_storeu_ps(og + d + 8, o1);
            }
        }
    }
}

void pam_attn_partial_f16_avx2(const float *q, int n_q, int head_dim, float scale,
                               const uint16_t *K, const uint16_t *V, size_t stride, int64_t n,
                               float *m, float *l, float *o, float *scores) {
    const int hd = head_dim;
    float tile[TILE * MAX_HD];
    if (hd > MAX_HD) {
        pam_attn_partial_f16_ref(q, n_q, head_dim, scale, K, V, stride, n, m, l, o, scores);
        return;
    }
    const __m256 vscale = _mm256_set1_ps(scale);

    /* Scores. A full tile yields 8 scores per head through a horizontal-add
     * tree, which transposes the 8 dot products into one vector. */
    int64_t t0 = 0;
    for (; t0 + TILE <= n; t0 += TILE) {
        load_tile(K, stride, t0, TILE, hd, tile);
        for (int g = 0; g < n_q; g++) {
            const float *qg = q + (size_t)g * hd;
            __m256 a[TILE];
            for (int j = 0; j < TILE; j++) a[j] = dot_acc(qg, tile + j * hd, hd);
            __m256 h01 = _mm256_hadd_ps(a[0], a[1]), h23 = _mm256_hadd_ps(a[2], a[3]);
            __m256 h45 = _mm256_hadd_ps(a[4], a[5]), h67 = _mm256_hadd_ps(a[6], a[7]);
            __m256 h0123 = _mm256_hadd_ps(h01, h23), h4567 = _mm256_hadd_ps(h45, h67);
            /* lanes: [t0 t1 t2 t3 | t0 t1 t2 t3] halves of h0123, same for 4..7 */
            __m256 lo = _mm256_permute2f128_ps(h0123, h4567, 0x20);
            __m256 hi = _mm256_permute2f128_ps(h0123, h4567, 0x31);
            __m256 s = _mm256_mul_ps(_mm256_add_ps(lo, hi), vscale);
            _mm256_storeu_ps(scores + (size_t)g * n + t0, s);
        }
    }
    if (t0 < n) {
        int cnt = (int)(n - t0);
        load_tile(K, stride, t0, cnt, hd, tile);
        for (int g = 0; g < n_q; g++) {
            const float *qg = q + (size_t)g * hd;
            for (int j = 0; j < cnt; j++)
                scores[(size_t)g * n + t0 + j] = hsum256(dot_acc(qg, tile + j * hd, hd)) * scale;
        }
    }

    softmax_rows256(scores, n_q, n, m, l);

    weighted_v256(V, stride, scores, n_q, n, hd, tile, o);
}

/* ---- K transposed per block (pam_attn_partial_f16_kt) ---------------------
 * Element (d, t) of K at Kt[d*B + t]: a tile of 16 tokens is one contiguous
 * run per channel (two ymm of 8 after conversion), so scores come from
 * broadcasting q[d] and FMA-ing with that run, no horizontal sums. Heads go
 * in groups of up to 4 (two accumulators each); groups of 1-2 also split the
 * channels into even and odd chains to hide FMA latency. */

#define KT_TILE 16
#define KT_GROUP 4

/* Scores of 16 tokens at Kt + t0 (row stride B) for NG heads into
 * sc[g*sstride + j]. NG is a constant after inlining. */
static inline __attribute__((always_inline)) void kt_scores256(const float *q, const int NG, int hd,
                                                               const uint16_t *Kt, int64_t B, int64_t t0,
                                                               __m256 vscale, float *sc, size_t sstride,
                                                               const char *pf, int pf_lines) {
    enum { P = 2 };
    __m256 a[P][KT_GROUP][2];
    const int np = NG <= 2 ? 2 : 1;
    for (int p = 0; p < np; p++)
        for (int g = 0; g < NG; g++) a[p][g][0] = a[p][g][1] = _mm256_setzero_ps();
    const uint16_t *k = Kt + t0;
    /* pf: memory the caller needs next, fetched a few lines per step */
    const int pf_per = pf ? (pf_lines + hd / np - 1) / (hd / np) : 0;
    for (int d = 0; d < hd; d += np) {
        for (int i = 0; i < pf_per; i++) _mm_prefetch(pf + ((size_t)(d / np) * (size_t)pf_per + (size_t)i) * 64, _MM_HINT_T1);
        for (int p = 0; p < np; p++) {
            const uint16_t *kr = k + (size_t)(d + p) * (size_t)B;
            const __m256 k0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)kr));
            const __m256 k1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kr + 8)));
            for (int g = 0; g < NG; g++) {
                const __m256 qv = _mm256_broadcast_ss(q + (size_t)g * hd + d + p);
                a[p][g][0] = _mm256_fmadd_ps(qv, k0, a[p][g][0]);
                a[p][g][1] = _mm256_fmadd_ps(qv, k1, a[p][g][1]);
            }
        }
    }
    for (int g = 0; g < NG; g++) {
        __m256 s0 = a[0][g][0], s1 = a[0][g][1];
        if (np == 2) {
            s0 = _mm256_add_ps(s0, a[1][g][0]);
            s1 = _mm256_add_ps(s1, a[1][g][1]);
        }
        _mm256_storeu_ps(sc + (size_t)g * sstride, _mm256_mul_ps(s0, vscale));
        _mm256_storeu_ps(sc + (size_t)g * sstride + 8, _mm256_mul_ps(s1, vscale));
    }
}

void pam_attn_partial_f16_kt_avx2(const float *q, int n_q, int head_dim, float scale, const uint16_t *Kt,
                                  const uint16_t *V, int64_t B, int64_t n, float *m, float *l, float *o,
                                  float *scores) {
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
        pam_attn_partial_f16_kt_run_avx2(q, n_q, hd, scale, &k1, &v1, &nt, 1, B, 1, m, l, o, NULL, NULL, 0, NULL, 0, sc);
        return;
    }
    const __m256 vscale = _mm256_set1_ps(scale);

    for (int64_t t0 = 0; t0 < n; t0 += KT_TILE) {
        const int cnt = n - t0 < KT_TILE ? (int)(n - t0) : KT_TILE;
        /* A partial tile is copied, zero-padded, into a [hd][16] buffer so
         * that no slot past n is read; it runs the same code as a full one. */
        uint16_t pad[MAX_HD * KT_TILE];
        const uint16_t *src = Kt;
        int64_t sB = B, st0 = t0;
        if (cnt < KT_TILE) {
            memset(pad, 0, sizeof(uint16_t) * (size_t)hd * KT_TILE);
            for (int d = 0; d < hd; d++)
                memcpy(pad + (size_t)d * KT_TILE, Kt + (size_t)d * (size_t)B + (size_t)t0, sizeof(uint16_t) * (size_t)cnt);
            src = pad;
            sB = KT_TILE;
            st0 = 0;
        }
        for (int g0 = 0; g0 < n_q; g0 += KT_GROUP) {
            const float *qg = q + (size_t)g0 * hd;
            float buf[KT_GROUP * KT_TILE];
            const int ng = n_q - g0 < KT_GROUP ? n_q - g0 : KT_GROUP;
            float *dst = cnt == KT_TILE ? scores + (size_t)g0 * n + t0 : buf;
            const size_t ds = cnt == KT_TILE ? (size_t)n : KT_TILE;
            switch (ng) {
            case 1: kt_scores256(qg, 1, hd, src, sB, st0, vscale, dst, ds, NULL, 0); break;
            case 2: kt_scores256(qg, 2, hd, src, sB, st0, vscale, dst, ds, NULL, 0); break;
            case 3: kt_scores256(qg, 3, hd, src, sB, st0, vscale, dst, ds, NULL, 0); break;
            default: kt_scores256(qg, 4, hd, src, sB, st0, vscale, dst, ds, NULL, 0); break;
            }
            if (cnt < KT_TILE)
                for (int g = 0; g < ng; g++)
                    memcpy(scores + (size_t)(g0 + g) * n + t0, buf + g * KT_TILE, sizeof(float) * (size_t)cnt);
        }
    }

    softmax_rows256(scores, n_q, n, m, l);

    weighted_v256(V, (size_t)hd, scores, n_q, n, hd, tile, o);
}

/* ---- a run of blocks folded in one call (pam_attn_partial_f16_kt_run) -----
 * The AVX2 twin of the AVX-512 run kernel (see there): bit for bit the
 * per-block fold, because the per-block kernel above is this one on one
 * block whenever B <= 16. Per (block, head) the max, exp(s - max) and their
 * sum; pam_attn_merge's factors as scalars; V per block through a register
 * tile of up to 4 heads x 16 channels, merged into o (in L1) per block. */

#define RUN_TILE 16

static inline __attribute__((always_inline)) void run_v256(const uint16_t *vb, int n, int hd, const float *pj,
                                                           size_t S, const float *ca, const float *cb, int first,
                                                           const int HN, float *o) {
    __m256 acc[4][2];
    for (int h = 0; h < HN; h++) acc[h][0] = acc[h][1] = _mm256_setzero_ps();
    for (int t = 0; t < n; t++, vb += hd) {
        const __m256 v0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)vb));
        const __m256 v1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vb + 8)));
        for (int h = 0; h < HN; h++) {
            const __m256 w = _mm256_broadcast_ss(pj + (size_t)h * S + t);
            acc[h][0] = _mm256_fmadd_ps(w, v0, acc[h][0]);
            acc[h][1] = _mm256_fmadd_ps(w, v1, acc[h][1]);
        }
    }
    for (int h = 0; h < HN; h++) {
        float *oh = o + (size_t)h * hd;
        if (first) {
            _mm256_storeu_ps(oh, acc[h][0]);
            _mm256_storeu_ps(oh + 8, acc[h][1]);
            continue;
        }
        const __m256 a = _mm256_set1_ps(ca[h]), b = _mm256_set1_ps(cb[h]);
        for (int u = 0; u < 2; u++) {
            const __m256 x = _mm256_mul_ps(_mm256_loadu_ps(oh + 8 * u), a);
            const __m256 y = _mm256_mul_ps(acc[h][u], b);
            _mm256_storeu_ps(oh + 8 * u, _mm256_add_ps(x, y));
        }
    }
}

void pam_attn_partial_f16_kt_run_avx2(const float *q, int n_q, int head_dim, float scale, const uint16_t *const *Kt,
                                      const uint16_t *const *V, const int32_t *n_tok, int nblk, int64_t B, int init,
                                      float *m, float *l, float *o, float *blk_m, float *blk_l, size_t blk_stride,
                                      const void *const *pf, size_t pf_bytes, float *scratch) {
    const int hd = head_dim;
    const size_t S = (size_t)nblk * RUN_TILE;
    float *sc = scratch, *ca = sc + (size_t)n_q * S, *cb = ca + (size_t)n_q * nblk;
    const __m256 vscale = _mm256_set1_ps(scale);
    const int pf_lines = (int)((pf_bytes + 63) / 64);
    for (int j = 0; j < nblk; j++) {
        const int cnt = n_tok[j];
        /* a block not full is copied, zero-padded, so no slot past n is read */
        uint16_t pad[MAX_HD * RUN_TILE];
        const uint16_t *src = Kt[j];
        int64_t sB = B;
        if (cnt < RUN_TILE) {
            memset(pad, 0, sizeof(uint16_t) * (size_t)hd * RUN_TILE);
            for (int d = 0; d < hd; d++)
                memcpy(pad + (size_t)d * RUN_TILE, Kt[j] + (size_t)d * (size_t)B, sizeof(uint16_t) * (size_t)cnt);
            src = pad;
            sB = RUN_TILE;
        }
        for (int g0 = 0; g0 < n_q; g0 += KT_GROUP) {
            const float *qg = q + (size_t)g0 * hd;
            float *dst = sc + (size_t)g0 * S + (size_t)j * RUN_TILE;
            const char *pfj = pf && g0 == 0 ? (const char *)pf[j] : NULL;
            switch (n_q - g0 < KT_GROUP ? n_q - g0 : KT_GROUP) {
            case 1: kt_scores256(qg, 1, hd, src, sB, 0, vscale, dst, S, pfj, pf_lines); break;
            case 2: kt_scores256(qg, 2, hd, src, sB, 0, vscale, dst, S, pfj, pf_lines); break;
            case 3: kt_scores256(qg, 3, hd, src, sB, 0, vscale, dst, S, pfj, pf_lines); break;
            default: kt_scores256(qg, 4, hd, src, sB, 0, vscale, dst, S, pfj, pf_lines); break;
            }
        }
    }
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int j = 0; j < nblk; j++) {
        const __m256 k0 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n_tok[j]), lane));
        const __m256 k1 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n_tok[j] - 8), lane));
        for (int h = 0; h < n_q; h++) {
            float *e = sc + (size_t)h * S + (size_t)j * RUN_TILE;
            const __m256 s0 = _mm256_blendv_ps(ninf, _mm256_loadu_ps(e), k0);
            const __m256 s1 = _mm256_blendv_ps(ninf, _mm256_loadu_ps(e + 8), k1);
            const float mb = hmax256(_mm256_max_ps(s0, s1));
            const __m256 vm = _mm256_set1_ps(mb);
            const __m256 e0 = _mm256_and_ps(k0, exp256_nonpos(_mm256_sub_ps(s0, vm)));
            const __m256 e1 = _mm256_and_ps(k1, exp256_nonpos(_mm256_sub_ps(s1, vm)));
            _mm256_storeu_ps(e, e0);
            _mm256_storeu_ps(e + 8, e1);
            const float lb = hsum256(_mm256_add_ps(e0, e1));
            if (blk_m) {
                blk_m[(size_t)j * blk_stride + h] = mb;
                blk_l[(size_t)j * blk_stride + h] = lb;
            }
            if (init && j == 0) {
                m[h] = mb;
                l[h] = lb;
                continue;
            }
            /* pam_attn_merge's factors; the larger max's is expf(0) = 1 */
            const float mx = m[h] > mb ? m[h] : mb;
            const float fa = m[h] == -INFINITY ? 0.0f : m[h] == mx ? 1.0f : expf(m[h] - mx);
            const float fb = mb == -INFINITY ? 0.0f : mb == mx ? 1.0f : expf(mb - mx);
            ca[(size_t)j * n_q + h] = fa;
            cb[(size_t)j * n_q + h] = fb;
            l[h] = l[h] * fa + lb * fb;
            m[h] = mx;
        }
    }
    for (int j = 0; j < nblk; j++) {
        const int first = init && j == 0;
        for (int h0 = 0; h0 < n_q; h0 += 4) {
            const float *pj = sc + (size_t)h0 * S + (size_t)j * RUN_TILE;
            const float *caj = ca + (size_t)j * n_q + h0, *cbj = cb + (size_t)j * n_q + h0;
            for (int d0 = 0; d0 < hd; d0 += 16) {
                const uint16_t *vb = V[j] + d0;
                float *oh = o + (size_t)h0 * hd + d0;
                switch (n_q - h0 < 4 ? n_q - h0 : 4) {
                case 1: run_v256(vb, n_tok[j], hd, pj, S, caj, cbj, first, 1, oh); break;
                case 2: run_v256(vb, n_tok[j], hd, pj, S, caj, cbj, first, 2, oh); break;
                case 3: run_v256(vb, n_tok[j], hd, pj, S, caj, cbj, first, 3, oh); break;
                default: run_v256(vb, n_tok[j], hd, pj, S, caj, cbj, first, 4, oh); break;
                }
            }
        }
    }
}
