/* dramq: quantised KV in host memory, KIVI-style (DESIGN.md §2.1).
 *
 * Encoding of one full block, per KV head (B = block_tokens, D = head_dim),
 * the layout kernels/attnq.h computes on:
 *   K codes [D][B]       keys quantised per CHANNEL: each channel d has its
 *   K min[D], scale[D]   own (min, scale) over the block's B tokens (f16);
 *                        codes channel-major, a row of B bytes per channel
 *                        (int8) or per channel pair (int4: 2i in the low
 *                        nibbles, 2i+1 in the high ones);
 *   V codes [B][D]       values quantised per TOKEN in groups of G channels
 *   V min[D/G][B] then   (G = 32, or D when D is not a multiple of 32; f16),
 *   scale[D/G][B]        per group the mins of all tokens, then the scales.
 * Codes are asymmetric unsigned: x ~ min + scale * q, q in [0, 2^bits - 1];
 * int4 packs two codes per byte, low nibble first.
 *
 * States of a slot:
 *   free      on the free list, no data;
 *   staged    written tokens 0..hi-1 live in an f16 staging copy (the
 *             "recent window": a block that is not yet full, typically a
 *             sequence's tail), the quantised area is unused;
 *   quantised hi == B and no staging copy: the codes above are the data.
 * A write that makes hi reach B quantises the staging copy and drops it. A
 * write into a quantised block (rare: overwrites, copy-on-write) decodes it to
 * a staging copy first. Staging copies are extra memory beyond
 * capacity_blocks * block_bytes: one per partially filled block.
 *
 * Attention over a staged block uses the f16 kernel on the staging copy;
 * over a quantised block the kernels of kernels/attnq.h compute scores and
 * the weighted sum of values from the codes, each block read once for all
 * query heads of its group. The tier is lossy: exact = 0. */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fp16.h"
#include "core/status.h"
#include "core/timing.h"
#include "kernels/attention.h"
#include "kernels/attnq.h"
#include "kv/tier.h"

typedef struct dq_slot {
    int32_t hi;      /* tokens 0..hi-1 have been written */
    int32_t used;    /* allocated */
    uint16_t *stage; /* f16 K [H][B][D] then V [H][B][D]; NULL unless staged */
} dq_slot;

typedef struct dramq {
    pam_kv_shape sh;
    int bits, qmax, group;
    size_t row;         /* floats per token: H * D */
    size_t k_row_bytes; /* one row of K codes: B */
    /* byte offsets within a head: K min/scale, V codes, V min/scale */
    size_t k_par_off, v_codes_off, v_par_off;
    size_t head_bytes, slot_bytes;
    size_t stage_elems; /* f16 values in a staging copy (K and V) */
    uint64_t cap;
    uint8_t *arena;
    dq_slot *slots;
    uint32_t *free_list;
    uint64_t n_free;
    _Atomic uint64_t bytes_read, bytes_written, n_errors;
    _Atomic int64_t attend_ns;
} dramq;

/* ---- codes ---------------------------------------------------------------- */

/* Stores code q in byte i, or in its high or low nibble (int4). */
static inline void dq_put(uint8_t *codes, int bits, size_t i, int high, int q) {
    if (bits == 8) {
        codes[i] = (uint8_t)q;
    } else {
        uint8_t *b = codes + i;
        *b = high ? (uint8_t)((*b & 0x0f) | (q << 4)) : (uint8_t)((*b & 0xf0) | q);
    }
}

/* (min, scale) of n values spaced by stride, rounded to f16 as stored; codes
 * are computed against the rounded pair so decode matches encode. */
static void dq_range(const uint16_t *x, size_t stride, int n, int qmax, uint16_t *mn_h,
                     uint16_t *sc_h) {
    float mn = INFINITY, mx = -INFINITY;
    for (int i = 0; i < n; i++) {
        float f = pam_f16_to_f32(x[(size_t)i * stride]);
        if (f < mn) mn = f;
        if (f > mx) mx = f;
    }
    *mn_h = pam_f32_to_f16(mn);
    float mnr = pam_f16_to_f32(*mn_h);
    /* The rounded min may sit above the true min; widen so max still fits. */
    float lo = mnr < mn ? mnr : mn;
    *sc_h = pam_f32_to_f16((mx - lo) / (float)qmax);
    /* Rounding the scale down could leave the max one step short: bump it. */
    if (pam_f16_to_f32(*sc_h) * (float)qmax < mx - mnr && mx > mnr) (*sc_h)++;
}

static inline int dq_code(float x, float mn, float sc, int qmax) {
    if (sc <= 0.0f) return 0;
    int q = (int)lrintf((x - mn) / sc);
    return q < 0 ? 0 : q > qmax ? qmax : q;
}

static uint8_t *dq_head(dramq *d, uint32_t slot, int h) {
    return d->arena + (size_t)slot * d->slot_bytes + (size_t)h * d->head_bytes;
}

/* Staging copy layout helpers: K of head h, then V. */
static uint16_t *dq_stage_k(const dramq *d, uint16_t *st, int h) {
    return st + (size_t)h * d->sh.block_tokens * d->sh.head_dim;
}
static uint16_t *dq_stage_v(const dramq *d, uint16_t *st, int h) {
    return st + d->stage_elems / 2 + (size_t)h * d->sh.block_tokens * d->sh.head_dim;
}

/* The kernels' view of head h of a quantised slot. */
static pam_attnq_kv dq_view(const dramq *d, uint32_t slot, int h) {
    const uint8_t *p = d->arena + (size_t)slot * d->slot_bytes + (size_t)h * d->head_bytes;
    const uint16_t *kpar = (const uint16_t *)(p + d->k_par_off), *vpar = (const uint16_t *)(p + d->v_par_off);
    const size_t B = (size_t)d->sh.block_tokens;
    return (pam_attnq_kv){.bits = d->bits,
                          .group = d->group,
                          .k_codes = p,
                          .k_row_bytes = d->k_row_bytes,
                          .k_min = kpar,
                          .k_scale = kpar + d->sh.head_dim,
                          .v_codes = p + d->v_codes_off,
                          .v_min = vpar,
                          .v_scale = vpar + B,
                          .v_par_stride = 2 * B};
}

static void dq_quantise(dramq *d, uint32_t slot, uint16_t *st) {
    const int B = d->sh.block_tokens, D = d->sh.head_dim, G = d->group;
    for (int h = 0; h < d->sh.n_head_kv; h++) {
        uint8_t *p = dq_head(d, slot, h);
        uint8_t *kc = p, *vc = p + d->v_codes_off;
        uint16_t *kmin = (uint16_t *)(p + d->k_par_off), *ksc = kmin + D;
        uint16_t *vpar = (uint16_t *)(p + d->v_par_off);
        const uint16_t *K = dq_stage_k(d, st, h), *V = dq_stage_v(d, st, h);
        memset(p, 0, d->head_bytes);
        for (int c = 0; c < D; c++) {
            dq_range(K + c, (size_t)D, B, d->qmax, &kmin[c], &ksc[c]);
            float mn = pam_f16_to_f32(kmin[c]), sc = pam_f16_to_f32(ksc[c]);
            for (int t = 0; t < B; t++)
                dq_put(kc, d->bits, (size_t)(d->bits == 8 ? c : c >> 1) * d->k_row_bytes + (size_t)t, c & 1,
                       dq_code(pam_f16_to_f32(K[(size_t)t * D + c]), mn, sc, d->qmax));
        }
        for (int t = 0; t < B; t++) {
            for (int g0 = 0; g0 < D; g0 += G) {
                uint16_t *vmin = vpar + (size_t)(g0 / G) * 2 * (size_t)B + (size_t)t, *vsc = vmin + B;
                dq_range(V + (size_t)t * D + g0, 1, G, d->qmax, vmin, vsc);
                float mn = pam_f16_to_f32(*vmin), sc = pam_f16_to_f32(*vsc);
                for (int c = g0; c < g0 + G; c++)
                    dq_put(vc, d->bits, d->bits == 8 ? (size_t)t * D + c : ((size_t)t * D + c) >> 1, c & 1,
                           dq_code(pam_f16_to_f32(V[(size_t)t * D + c]), mn, sc, d->qmax));
            }
        }
    }
}

/* Decodes tokens 0..n-1 of head h of a quantised block to f32 [n][D]. */
static void dq_decode_head(const dramq *d, uint32_t slot, int h, int n, float *K, float *V) {
    pam_attnq_kv kv = dq_view(d, slot, h);
    pam_attnq_decode(&kv, d->sh.head_dim, n, K, V);
}

/* ---- ops ------------------------------------------------------------------ */

static pam_status dq_alloc(void *impl, uint32_t *slot) {
    dramq *d = impl;
    if (d->n_free == 0)
        return PAM_ERR(PAM_ERR_FULL, "dramq:int%d tier full (%llu blocks)", d->bits,
                       (unsigned long long)d->cap);
    uint32_t s = d->free_list[--d->n_free];
    d->slots[s].used = 1;
    d->slots[s].hi = 0;
    d->slots[s].stage = NULL;
    *slot = s;
    return PAM_OK;
}

static void dq_free(void *impl, uint32_t slot) {
    dramq *d = impl;
    if (slot >= d->cap || !d->slots[slot].used) return;
    free(d->slots[slot].stage);
    d->slots[slot].stage = NULL;
    d->slots[slot].used = 0;
    d->slots[slot].hi = 0;
    d->free_list[d->n_free++] = slot;
}

static pam_status dq_check_slot(const dramq *d, uint32_t slot) {
    if (slot >= d->cap || !d->slots[slot].used)
        return PAM_ERR(PAM_ERR_INVALID, "dramq tier: slot %u is not allocated", slot);
    return PAM_OK;
}

static pam_status dq_write(void *impl, uint32_t slot, int32_t off, int32_t n, const float *k,
                           const float *v) {
    dramq *d = impl;
    const int B = d->sh.block_tokens, D = d->sh.head_dim, H = d->sh.n_head_kv;
    PAM_TRY(dq_check_slot(d, slot));
    if (off < 0 || n < 1 || off + n > B)
        return PAM_ERR(PAM_ERR_INVALID, "dramq tier: write of tokens %d..%d outside a %d-token block",
                       off, off + n - 1, B);
    dq_slot *s = &d->slots[slot];
    uint16_t *st = s->stage;
    if (!st) {
        /* Allocate before touching anything: a failure leaves the slot as it was. */
        st = calloc(d->stage_elems, sizeof *st);
        if (!st) return PAM_ERR(PAM_ERR_NOMEM, "dramq tier: staging copy of a block");
        if (s->hi == B && !(off == 0 && n == B)) {
            float *K = malloc(sizeof(float) * 2 * (size_t)B * (size_t)D);
            if (!K) {
                free(st);
                return PAM_ERR(PAM_ERR_NOMEM, "dramq tier: decode scratch");
            }
            for (int h = 0; h < H; h++) {
                dq_decode_head(d, slot, h, B, K, K + (size_t)B * D);
                for (size_t i = 0; i < (size_t)B * D; i++) {
                    dq_stage_k(d, st, h)[i] = pam_f32_to_f16(K[i]);
                    dq_stage_v(d, st, h)[i] = pam_f32_to_f16(K[(size_t)B * D + i]);
                }
            }
            free(K);
        }
    }
    for (int t = 0; t < n; t++)
        for (int h = 0; h < H; h++) {
            const float *kr = k + (size_t)t * d->row + (size_t)h * D;
            const float *vr = v + (size_t)t * d->row + (size_t)h * D;
            uint16_t *ks = dq_stage_k(d, st, h) + (size_t)(off + t) * D;
            uint16_t *vs = dq_stage_v(d, st, h) + (size_t)(off + t) * D;
            for (int c = 0; c < D; c++) {
                ks[c] = pam_f32_to_f16(kr[c]);
                vs[c] = pam_f32_to_f16(vr[c]);
            }
        }
    int32_t hi = off + n > s->hi ? off + n : s->hi;
    if (hi == B) {
        dq_quantise(d, slot, st);
        free(st);
        st = NULL;
    }
    s->stage = st;
    s->hi = hi;
    atomic_fetch_add_explicit(&d->bytes_written, (uint64_t)n * d->row * 4, memory_order_relaxed);
    return PAM_OK;
}

static pam_status dq_read(void *impl, uint32_t slot, int32_t n, float *k, float *v) {
    dramq *d = impl;
    const int B = d->sh.block_tokens, D = d->sh.head_dim, H = d->sh.n_head_kv;
    PAM_TRY(dq_check_slot(d, slot));
    const dq_slot *s = &d->slots[slot];
    if (n < 1 || n > s->hi)
        return PAM_ERR(PAM_ERR_INVALID, "dramq tier: read of %d tokens from a block holding %d", n, s->hi);
    if (s->stage) {
        for (int t = 0; t < n; t++)
            for (int h = 0; h < H; h++)
                for (int c = 0; c < D; c++) {
                    k[(size_t)t * d->row + (size_t)h * D + c] =
                        pam_f16_to_f32(dq_stage_k(d, s->stage, h)[(size_t)t * D + c]);
                    v[(size_t)t * d->row + (size_t)h * D + c] =
                        pam_f16_to_f32(dq_stage_v(d, s->stage, h)[(size_t)t * D + c]);
                }
        atomic_fetch_add_explicit(&d->bytes_read, (uint64_t)n * d->row * 4, memory_order_relaxed);
        return PAM_OK;
    }
    float *K = malloc(sizeof(float) * 2 * (size_t)B * (size_t)D);
    if (!K) return PAM_ERR(PAM_ERR_NOMEM, "dramq tier: decode scratch");
    float *V = K + (size_t)B * D;
    for (int h = 0; h < H; h++) {
        dq_decode_head(d, slot, h, n, K, V);
        for (int t = 0; t < n; t++) {
            memcpy(k + (size_t)t * d->row + (size_t)h * D, K + (size_t)t * D, sizeof(float) * (size_t)D);
            memcpy(v + (size_t)t * d->row + (size_t)h * D, V + (size_t)t * D, sizeof(float) * (size_t)D);
        }
    }
    free(K);
    atomic_fetch_add_explicit(&d->bytes_read, d->slot_bytes, memory_order_relaxed);
    return PAM_OK;
}

static pam_status dq_attend(void *impl, const pam_tier_attn *r) {
    dramq *d = impl;
    const int B = d->sh.block_tokens, D = d->sh.head_dim, H = d->sh.n_head_kv;
    if (r->n_head <= 0 || r->n_head % H != 0)
        return PAM_ERR(PAM_ERR_INVALID, "dramq tier: %d query heads for %d KV heads", r->n_head, H);
    const int nq = r->n_head / H;
    int64_t t0 = pam_time_ns();
    for (int g = 0; g < r->n_head; g++) {
        r->m[g] = -INFINITY;
        r->l[g] = 0.0f;
    }
    memset(r->o, 0, sizeof(float) * (size_t)r->n_head * (size_t)D);
    size_t n_scratch = pam_attnq_scratch_floats(nq, D, d->group, B) + 2 * (size_t)nq + (size_t)nq * D;
    float *sc = malloc(sizeof(float) * n_scratch);
    if (!sc) return PAM_ERR(PAM_ERR_NOMEM, "dramq tier: attention scratch");
    float *bm = sc + pam_attnq_scratch_floats(nq, D, d->group, B), *bl = bm + nq, *bo = bl + nq;
    uint64_t bytes = 0;
    pam_status st = PAM_OK;
    for (int64_t b = 0; b < r->n_blocks && st == PAM_OK; b++) {
        uint32_t slot = r->blocks[b].slot;
        int n = r->blocks[b].n_tokens;
        if (slot >= d->cap || !d->slots[slot].used || n < 1 || n > d->slots[slot].hi) {
            st = PAM_ERR(PAM_ERR_INVALID, "dramq tier: attend over %d tokens of slot %u (holds %d)",
                         n, slot, slot < d->cap ? d->slots[slot].hi : 0);
            break;
        }
        const uint16_t *stage = d->slots[slot].stage;
        /* The next block's head h is fetched while head h of this one is
         * computed: a block's codes are a few KiB per head, too short a
         * run for the hardware prefetcher to reach full bandwidth. */
        const uint8_t *next = NULL;
        if (b + 1 < r->n_blocks && r->blocks[b + 1].slot < d->cap)
            next = d->arena + (size_t)r->blocks[b + 1].slot * d->slot_bytes;
        for (int h = 0; h < H; h++) {
            const float *q = r->q + (size_t)h * nq * D;
            for (size_t off = 0; next && off < d->head_bytes; off += 64)
                __builtin_prefetch(next + (size_t)h * d->head_bytes + off, 0, 2);
            if (stage) {
                const uint16_t *sk = stage + (size_t)h * B * D;
                const uint16_t *sv = stage + d->stage_elems / 2 + (size_t)h * B * D;
                pam_attn_partial_f16(q, nq, D, r->scale, sk, sv, (size_t)D, n, bm, bl, bo, sc);
            } else {
                pam_attnq_kv kv = dq_view(d, slot, h);
                pam_attnq_partial(q, nq, D, r->scale, &kv, n, bm, bl, bo, sc);
            }
            if (r->blk_m && r->blk_l)
                for (int g = 0; g < nq; g++) {
                    r->blk_m[b * r->n_head + h * nq + g] = bm[g];
                    r->blk_l[b * r->n_head + h * nq + g] = bl[g];
                }
            pam_attn_merge(nq, D, r->m + h * nq, r->l + h * nq, r->o + (size_t)h * nq * D, bm, bl, bo);
        }
        bytes += stage ? 2 * (size_t)n * d->row * 2 : d->slot_bytes;
    }
    free(sc);
    if (st != PAM_OK) atomic_fetch_add_explicit(&d->n_errors, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&d->bytes_read, bytes, memory_order_relaxed);
    atomic_fetch_add_explicit(&d->attend_ns, pam_time_ns() - t0, memory_order_relaxed);
    return st;
}

static void dq_stats(void *impl, pam_tier_stats *out) {
    dramq *d = impl;
    out->blocks_used = d->cap - d->n_free;
    out->blocks_capacity = d->cap;
    out->bytes_read = atomic_load(&d->bytes_read);
    out->bytes_written = atomic_load(&d->bytes_written);
    out->n_errors = atomic_load(&d->n_errors);
    out->attend_ns = atomic_load(&d->attend_ns);
}

static void dq_close(void *impl) {
    dramq *d = impl;
    if (!d) return;
    if (d->slots)
        for (uint64_t i = 0; i < d->cap; i++) free(d->slots[i].stage);
    free(d->slots);
    free(d->free_list);
    free(d->arena);
    free(d);
}

static const pam_tier_ops dq_ops = {
    .kind = "dramq",
    .alloc = dq_alloc,
    .free = dq_free,
    .write = dq_write,
    .read = dq_read,
    .attend = dq_attend,
    .stats = dq_stats,
    .close = dq_close,
};

/* Effective read rate assumed until the KV manager measures one: decoding
 * costs more per byte than the f16 tier's streaming reads. */
#define DQ_DEFAULT_GBPS 8.0

pam_status pam_tier_dramq_open(const pam_kv_shape *shape, int bits, uint64_t capacity_bytes,
                               pam_tier **out) {
    *out = NULL;
    const int B = shape->block_tokens, D = shape->head_dim, H = shape->n_head_kv;
    if (bits != 8 && bits != 4)
        return PAM_ERR(PAM_ERR_INVALID, "dramq tier: %d-bit codes (supported: int8, int4)", bits);
    if (B < 1 || D < 2 || D > 512 || H < 1 || (D & 1))
        return PAM_ERR(PAM_ERR_INVALID,
                       "dramq tier: shape block_tokens=%d head_dim=%d n_head_kv=%d (head_dim even, 2..512)",
                       B, D, H);
    dramq *d = calloc(1, sizeof *d);
    pam_tier *t = calloc(1, sizeof *t);
    if (!d || !t) {
        free(d);
        free(t);
        return PAM_ERR(PAM_ERR_NOMEM, "dramq tier");
    }
    d->sh = *shape;
    d->bits = bits;
    d->qmax = (1 << bits) - 1;
    d->group = D % 32 == 0 ? 32 : D;
    d->row = (size_t)H * (size_t)D;
    /* Parameters on 2-byte boundaries, heads on 4-byte ones. */
    d->k_row_bytes = (size_t)B;
    d->k_par_off = ((size_t)D * d->k_row_bytes * (size_t)bits / 8 + 1) & ~(size_t)1;
    d->v_codes_off = d->k_par_off + 2 * (size_t)D * sizeof(uint16_t);
    d->v_par_off = (d->v_codes_off + (size_t)B * D * (size_t)bits / 8 + 1) & ~(size_t)1;
    d->head_bytes = (d->v_par_off + 2 * (size_t)B * (size_t)(D / d->group) * sizeof(uint16_t) + 3) & ~(size_t)3;
    d->slot_bytes = d->head_bytes * (size_t)H;
    d->stage_elems = 2 * (size_t)B * d->row;
    d->cap = capacity_bytes / d->slot_bytes;
    if (d->cap > UINT32_MAX - 1) d->cap = UINT32_MAX - 1;
    if (d->cap == 0) {
        size_t sb = d->slot_bytes;
        free(d);
        free(t);
        return PAM_ERR(PAM_ERR_INVALID, "dramq tier: %llu bytes hold no block of %zu bytes",
                       (unsigned long long)capacity_bytes, sb);
    }
    /* calloc of a large arena maps zero pages lazily: memory is touched only
     * as blocks are written. */
    d->arena = calloc(d->cap, d->slot_bytes);
    d->slots = calloc(d->cap, sizeof *d->slots);
    d->free_list = malloc(sizeof(uint32_t) * d->cap);
    if (!d->arena || !d->slots || !d->free_list) {
        uint64_t cap = d->cap;
        dq_close(d);
        free(t);
        return PAM_ERR(PAM_ERR_NOMEM, "dramq tier: %llu blocks", (unsigned long long)cap);
    }
    for (uint64_t i = 0; i < d->cap; i++) d->free_list[i] = (uint32_t)(d->cap - 1 - i);
    d->n_free = d->cap;
    t->ops = &dq_ops;
    t->impl = d;
    snprintf(t->name, sizeof t->name, "dramq:int%d", bits);
    t->capacity_blocks = d->cap;
    t->block_bytes = d->slot_bytes;
    t->read_gbps = DQ_DEFAULT_GBPS;
    t->exact = 0;
    t->kv_type = PAM_KV_F16; /* its own encoding; f16 is what its recent window holds */
    *out = t;
    return PAM_OK;
}
