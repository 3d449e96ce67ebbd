/* dram tier: K/V in host memory in one of the KV types of kernels/attnkv.h
 * (f32, f16 (the default), bf16, q8, q4).
 *
 * Layout: one arena of capacity_blocks slots. A slot holds one block of one
 * layer: n_head_kv head runs, each K then V of one KV head in the type's
 * layout (f16: K transposed [head_dim][block_tokens], V rows
 * [block_tokens][head_dim]), so attention over a block streams one
 * contiguous run per head and the head group shares each load. Channel-major
 * K (f16, f32) and the channel-interleaved codes of bf16/q8/q4 let the scores
 * of a tile of tokens be vertical dot products (pam_kvh_partial) instead of
 * one horizontal sum per token and query head.
 *
 * Recent window: in a lossy type (bf16, q8, q4) a block that is not full yet
 * (a sequence's tail, growing a token per decode step) is kept as an f16
 * image beside the arena and encoded in the type, from that image, by the
 * write that fills it: the newest tokens, which attention weighs most,
 * stay exact, as dramq keeps its tails (KIVI). Attention over such a block
 * uses the f16 kernel. Tail images are host memory beyond capacity_blocks *
 * block_bytes, one per partially filled block.
 *
 * Invariants: free slots are exactly the ones on the free stack; a slot's
 * tokens beyond what was written are undefined and never used (callers pass
 * n_tokens). alloc/free/write/read run on one thread at a time; attend may
 * run concurrently on disjoint block lists, so the counters it updates are
 * atomic and it writes nothing else.
 *
 * Bandwidth: read_gbps is a configured estimate (PAM_TIER_DRAM_GBPS), not a
 * measurement; a benchmark that measures the machine may overwrite it. */
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "core/fp16.h"
#include "core/status.h"
#include "core/timing.h"
#include "kernels/attention.h"
#include "kernels/attnkv.h"
#include "kv/tier.h"

#define PAM_TIER_DRAM_GBPS 10.0

typedef struct dram_tier {
    pam_kv_shape shape;
    pam_kv_type type;
    size_t run_bytes;   /* one head run: K and V of one KV head */
    size_t block_bytes; /* n_head_kv * run_bytes */
    uint64_t capacity;
    uint8_t *arena;
    /* lossy types only (else NULL): tokens written (high-water mark) per
     * slot, the f16 image of a block not full yet, and a buffer to encode a
     * tail that fills (write runs on one thread at a time) */
    int32_t *hi;
    uint8_t **tail;
    size_t tail_run_bytes; /* one head's f16 run */
    float *conv;
    uint32_t *free_stack;
    uint64_t n_free;
    uint64_t bytes_read, bytes_written, n_errors; /* read, written: atomic */
    int64_t attend_ns;                             /* atomic */
} dram_tier;

static uint8_t *slot_ptr(dram_tier *d, uint32_t slot) { return d->arena + (size_t)slot * d->block_bytes; }

static pam_status dram_alloc(void *impl, uint32_t *slot) {
    dram_tier *d = impl;
    if (d->n_free == 0) return PAM_ERR(PAM_ERR_FULL, "dram tier full (%llu blocks)", (unsigned long long)d->capacity);
    *slot = d->free_stack[--d->n_free];
    if (d->hi) d->hi[*slot] = 0;
    return PAM_OK;
}

static void dram_free(void *impl, uint32_t slot) {
    dram_tier *d = impl;
    if (slot < d->capacity && d->n_free < d->capacity) {
        d->free_stack[d->n_free++] = slot;
        if (d->tail) {
            free(d->tail[slot]);
            d->tail[slot] = NULL;
            d->hi[slot] = 0;
        }
    }
}

static pam_status check_range(const dram_tier *d, uint32_t slot, int32_t off, int32_t n) {
    if (slot >= d->capacity) return PAM_ERR(PAM_ERR_INVALID, "dram tier: slot %u out of range", slot);
    if (off < 0 || n < 0 || off + n > d->shape.block_tokens)
        return PAM_ERR(PAM_ERR_INVALID, "dram tier: tokens %d..%d outside a block of %d", off, off + n - 1,
                       d->shape.block_tokens);
    return PAM_OK;
}

/* A lossy type's write of a block that is (or stays) not full: into its f16
 * image; the write that fills it encodes the image in the type. */
static pam_status dram_write_tail(dram_tier *d, uint32_t slot, int32_t off, int32_t n, const float *k, const float *v,
                                  int32_t hi) {
    const int hd = d->shape.head_dim, nkv = d->shape.n_head_kv, bt = d->shape.block_tokens;
    const size_t row = (size_t)nkv * hd;
    uint8_t *tl = d->tail[slot];
    if (!tl) {
        tl = calloc(1, (size_t)nkv * d->tail_run_bytes);
        if (!tl) return PAM_ERR(PAM_ERR_NOMEM, "dram tier: recent-window block");
        d->tail[slot] = tl;
    }
    if (hi < bt) {
        for (int h = 0; h < nkv; h++)
            pam_kvh_write(PAM_KV_F16, hd, bt, tl + (size_t)h * d->tail_run_bytes, off, n, k + (size_t)h * hd,
                          v + (size_t)h * hd, row);
        d->hi[slot] = hi;
        return PAM_OK;
    }
    /* full: the tail's tokens and the new ones move into the arena in the
     * type (which encodes the f16 rounding of its input, so this gives the
     * codes a whole-block write of the same rows gives) */
    float *kb = d->conv, *vb = d->conv + (size_t)bt * row;
    for (int h = 0; h < nkv; h++)
        pam_kvh_read(PAM_KV_F16, hd, bt, tl + (size_t)h * d->tail_run_bytes, bt, kb + (size_t)h * hd,
                     vb + (size_t)h * hd, row);
    memcpy(kb + (size_t)off * row, k, sizeof(float) * (size_t)n * row);
    memcpy(vb + (size_t)off * row, v, sizeof(float) * (size_t)n * row);
    uint8_t *b = slot_ptr(d, slot);
    for (int h = 0; h < nkv; h++)
        pam_kvh_write(d->type, hd, bt, b + (size_t)h * d->run_bytes, 0, bt, kb + (size_t)h * hd, vb + (size_t)h * hd,
                      row);
    d->hi[slot] = hi;
    free(tl);
    d->tail[slot] = NULL;
    return PAM_OK;
}

static pam_status dram_write(void *impl, uint32_t slot, int32_t off, int32_t n, const float *k, const float *v) {
    dram_tier *d = impl;
    PAM_TRY(check_range(d, slot, off, n));
    int hd = d->shape.head_dim, nkv = d->shape.n_head_kv, bt = d->shape.block_tokens;
    size_t row = (size_t)nkv * hd;
    if (d->tail) {
        const int32_t hi = off + n > d->hi[slot] ? off + n : d->hi[slot];
        if (hi < bt || d->tail[slot]) {
            PAM_TRY(dram_write_tail(d, slot, off, n, k, v, hi));
            __atomic_fetch_add(&d->bytes_written, (uint64_t)n * row * 2 * sizeof(uint16_t), __ATOMIC_RELAXED);
            return PAM_OK;
        }
    }
    uint8_t *b = slot_ptr(d, slot);
    for (int h = 0; h < nkv; h++)
        pam_kvh_write(d->type, hd, bt, b + (size_t)h * d->run_bytes, off, n, k + (size_t)h * hd, v + (size_t)h * hd,
                      row);
    if (d->hi) d->hi[slot] = bt;
    /* atomic: the offload staging area is written from several threads (disjoint slots) */
    __atomic_fetch_add(&d->bytes_written, (uint64_t)n * d->block_bytes / (uint64_t)bt, __ATOMIC_RELAXED);
    return PAM_OK;
}

static pam_status dram_read(void *impl, uint32_t slot, int32_t n, float *k, float *v) {
    dram_tier *d = impl;
    PAM_TRY(check_range(d, slot, 0, n));
    int hd = d->shape.head_dim, nkv = d->shape.n_head_kv, bt = d->shape.block_tokens;
    size_t row = (size_t)nkv * hd;
    const uint8_t *tl = d->tail ? d->tail[slot] : NULL;
    const uint8_t *b = tl ? tl : slot_ptr(d, slot);
    const size_t run = tl ? d->tail_run_bytes : d->run_bytes;
    for (int h = 0; h < nkv; h++)
        pam_kvh_read(tl ? PAM_KV_F16 : d->type, hd, bt, b + (size_t)h * run, n, k + (size_t)h * hd, v + (size_t)h * hd,
                     row);
    __atomic_fetch_add(&d->bytes_read, (uint64_t)n * d->block_bytes / (uint64_t)bt, __ATOMIC_RELAXED);
    return PAM_OK;
}

/* f16: the list in runs of up to PAM_ATTN_RUN_MAX blocks, each folded per
 * KV head in one call (pam_attn_partial_f16_kt_run: bit for bit the
 * per-block fold, so runs, tiers and pieces never change the result). While
 * a head's run computes, the next head's part of the same blocks (or the
 * next run's first head) is fetched into L2: the slots are anywhere in the
 * arena. */
static void attend_f16_runs(dram_tier *d, const pam_tier_attn *r, int ng, float *scratch) {
    const int hd = d->shape.head_dim, nkv = d->shape.n_head_kv, bt = d->shape.block_tokens;
    const uint16_t *kt[PAM_ATTN_RUN_MAX], *vr[PAM_ATTN_RUN_MAX];
    const void *pf[PAM_ATTN_RUN_MAX];
    int32_t nt[PAM_ATTN_RUN_MAX];
    const size_t kbytes = (size_t)hd * (size_t)bt * sizeof(uint16_t);
    for (int64_t b0 = 0; b0 < r->n_blocks; b0 += PAM_ATTN_RUN_MAX) {
        const int nb = r->n_blocks - b0 < PAM_ATTN_RUN_MAX ? (int)(r->n_blocks - b0) : PAM_ATTN_RUN_MAX;
        for (int j = 0; j < nb; j++) nt[j] = r->blocks[b0 + j].n_tokens;
        for (int h = 0; h < nkv; h++) {
            /* fetched while block j computes: block j's next head, or from
             * the last head, block j of the next run's first head */
            for (int j = 0; j < nb; j++) {
                const int64_t pb = h + 1 < nkv ? b0 + j : b0 + nb + j;
                const size_t head = h + 1 < nkv ? (size_t)(h + 1) : 0;
                pf[j] = pb < r->n_blocks ? slot_ptr(d, r->blocks[pb].slot) + head * d->run_bytes : NULL;
            }
            for (int j = 0; j < nb; j++) {
                const uint8_t *run = slot_ptr(d, r->blocks[b0 + j].slot) + (size_t)h * d->run_bytes;
                kt[j] = (const uint16_t *)run;
                vr[j] = (const uint16_t *)(run + kbytes);
            }
            pam_attn_partial_f16_kt_run(r->q + (size_t)h * ng * hd, ng, hd, r->scale, kt, vr, nt, nb, bt, b0 == 0,
                                        r->m + (size_t)h * ng, r->l + (size_t)h * ng, r->o + (size_t)h * ng * hd,
                                        r->blk_m ? r->blk_m + (size_t)b0 * r->n_head + (size_t)h * ng : NULL,
                                        r->blk_m ? r->blk_l + (size_t)b0 * r->n_head + (size_t)h * ng : NULL,
                                        (size_t)r->n_head, pf, d->run_bytes, scratch);
        }
    }
}

/* Per KV head: the listed blocks folded in list order, the first block's
 * partial straight into the output, later ones through pam_attn_merge. */
static pam_status dram_attend(void *impl, const pam_tier_attn *r) {
    dram_tier *d = impl;
    int64_t t0 = pam_time_ns();
    int hd = d->shape.head_dim, nkv = d->shape.n_head_kv, bt = d->shape.block_tokens;
    if (r->n_head <= 0 || r->n_head % nkv != 0)
        return PAM_ERR(PAM_ERR_INVALID, "dram tier: %d query heads for %d KV heads", r->n_head, nkv);
    int ng = r->n_head / nkv;
    for (int64_t b = 0; b < r->n_blocks; b++)
        if (r->blocks[b].slot >= d->capacity || r->blocks[b].n_tokens < 1 || r->blocks[b].n_tokens > bt)
            return PAM_ERR(PAM_ERR_INVALID, "dram tier: bad block %lld in attention request", (long long)b);
    for (int g = 0; g < r->n_head; g++) {
        r->m[g] = -INFINITY;
        r->l[g] = 0.0f;
    }
    memset(r->o, 0, sizeof(float) * (size_t)r->n_head * (size_t)hd);
    if (r->n_blocks == 0) return PAM_OK;
    /* kernel scratch, one partial (m, l, o), the query of every KV head
     * prepared for the type */
    size_t sc_floats = pam_kvh_scratch_floats(d->type, ng, hd, bt);
    if (pam_attn_run_scratch_floats(ng, hd, bt) > sc_floats) sc_floats = pam_attn_run_scratch_floats(ng, hd, bt);
    const size_t qbytes = (pam_kvh_query_bytes(d->type, ng, hd) + 15) & ~(size_t)15;
    pam_kvh_query *qr = malloc(sizeof *qr * 2 * (size_t)nkv); /* [nkv] the type's, [nkv] f16 for tails */
    float *scratch = qr ? malloc(sizeof(float) * (sc_floats + (size_t)ng * (2 + (size_t)hd)) + qbytes * (size_t)nkv)
                        : NULL;
    if (!scratch) {
        free(qr);
        return PAM_ERR(PAM_ERR_NOMEM, "dram tier: attention scratch");
    }
    float *pm = scratch + sc_floats, *pl = pm + ng, *po = pl + ng;
    uint8_t *qbuf = (uint8_t *)(po + (size_t)ng * hd);
    for (int h = 0; h < nkv; h++) {
        pam_kvh_query_init(&qr[h], d->type, r->q + (size_t)h * ng * hd, ng, hd, r->scale, qbuf + (size_t)h * qbytes);
        pam_kvh_query_init(&qr[nkv + h], PAM_KV_F16, r->q + (size_t)h * ng * hd, ng, hd, r->scale, NULL);
    }
    uint64_t bytes = 0;
    if (d->type == PAM_KV_F16) {
        attend_f16_runs(d, r, ng, scratch);
        for (int64_t b = 0; b < r->n_blocks; b++) bytes += (uint64_t)r->blocks[b].n_tokens * d->block_bytes / (uint64_t)bt;
        goto done;
    }
    /* Blocks outer, heads inner: a block's head runs are adjacent, so the
     * tier streams each slot front to back; per head, blocks still fold in
     * list order. */
    for (int64_t b = 0; b < r->n_blocks; b++) {
        const pam_tier_block *blk = &r->blocks[b];
        const uint8_t *tl = d->tail ? d->tail[blk->slot] : NULL;
        const uint8_t *slot = tl ? tl : slot_ptr(d, blk->slot);
        const size_t run = tl ? d->tail_run_bytes : d->run_bytes;
        const pam_kvh_query *qt = tl ? qr + nkv : qr;
        /* the next block's slot is anywhere in the arena: fetch it a head
         * run at a time while this one computes */
        const uint8_t *nx = b + 1 < r->n_blocks ? slot_ptr(d, r->blocks[b + 1].slot) : NULL;
        const int first = b == 0;
        for (int h = 0; h < nkv; h++) {
            float *m = r->m + (size_t)h * ng, *l = r->l + (size_t)h * ng, *o = r->o + (size_t)h * ng * hd;
            if (nx)
                for (size_t i = 0; i < d->run_bytes; i += 64) __builtin_prefetch(nx + (size_t)h * d->run_bytes + i);
            pam_kvh_partial(&qt[h], slot + (size_t)h * run, bt, blk->n_tokens, first ? m : pm, first ? l : pl,
                            first ? o : po, scratch);
            if (r->blk_m) {
                memcpy(r->blk_m + (size_t)b * r->n_head + (size_t)h * ng, first ? m : pm, sizeof(float) * (size_t)ng);
                memcpy(r->blk_l + (size_t)b * r->n_head + (size_t)h * ng, first ? l : pl, sizeof(float) * (size_t)ng);
            }
            if (!first) pam_attn_merge(ng, hd, m, l, o, pm, pl, po);
        }
        bytes += (uint64_t)blk->n_tokens * (uint64_t)nkv * run / (uint64_t)bt;
    }
done:
    free(qr);
    free(scratch);
    __atomic_fetch_add(&d->bytes_read, bytes, __ATOMIC_RELAXED);
    __atomic_fetch_add(&d->attend_ns, pam_time_ns() - t0, __ATOMIC_RELAXED);
    return PAM_OK;
}

static void dram_stats(void *impl, pam_tier_stats *out) {
    dram_tier *d = impl;
    memset(out, 0, sizeof *out);
    out->blocks_used = d->capacity - d->n_free;
    out->blocks_capacity = d->capacity;
    out->bytes_read = __atomic_load_n(&d->bytes_read, __ATOMIC_RELAXED);
    out->bytes_written = __atomic_load_n(&d->bytes_written, __ATOMIC_RELAXED);
    out->n_errors = d->n_errors;
    out->attend_ns = __atomic_load_n(&d->attend_ns, __ATOMIC_RELAXED);
}

static void dram_close(void *impl) {
    dram_tier *d = impl;
    if (!d) return;
    free(d->arena);
    free(d->free_stack);
    if (d->tail)
        for (uint64_t i = 0; i < d->capacity; i++) free(d->tail[i]);
    free(d->tail);
    free(d->hi);
    free(d->conv);
    free(d);
}

static const pam_tier_ops k_dram_ops = {
    .kind = "dram",
    .alloc = dram_alloc,
    .free = dram_free,
    .write = dram_write,
    .read = dram_read,
    .attend = dram_attend,
    .stats = dram_stats,
    .close = dram_close,
};

pam_status pam_tier_dram_open_type(const pam_kv_shape *shape, pam_kv_type type, uint64_t capacity_bytes,
                                  pam_tier **out) {
    *out = NULL;
    if (shape->n_head_kv <= 0 || shape->head_dim <= 0 || shape->block_tokens <= 0 || shape->block_tokens > 4096)
        return PAM_ERR(PAM_ERR_INVALID, "dram tier: bad KV shape (%d KV heads, head dim %d, block %d tokens)",
                       shape->n_head_kv, shape->head_dim, shape->block_tokens);
    pam_status st = pam_kvh_check(type, shape->head_dim, shape->block_tokens);
    if (st != PAM_OK) return PAM_ERR(st, "dram tier: %s", pam_last_error());
    size_t run_bytes = pam_kvh_bytes(type, shape->head_dim, shape->block_tokens);
    uint64_t block_bytes = (uint64_t)shape->n_head_kv * run_bytes;
    uint64_t cap = capacity_bytes / block_bytes;
    if (cap == 0)
        return PAM_ERR(PAM_ERR_INVALID, "dram tier: %llu bytes hold no block of %llu bytes",
                       (unsigned long long)capacity_bytes, (unsigned long long)block_bytes);
    if (cap > UINT32_MAX) return PAM_ERR(PAM_ERR_RANGE, "dram tier: more than 2^32 blocks");
    if (cap > SIZE_MAX / block_bytes) return PAM_ERR(PAM_ERR_RANGE, "dram tier: capacity exceeds the address space");
    dram_tier *d = calloc(1, sizeof *d);
    pam_tier *t = calloc(1, sizeof *t);
    if (d) {
        d->shape = *shape;
        d->type = type;
        d->run_bytes = run_bytes;
        d->block_bytes = (size_t)block_bytes;
        d->capacity = cap;
        /* Pages are committed on first write, so a large tier costs only what it holds. */
        d->arena = malloc((size_t)(cap * block_bytes));
        d->free_stack = malloc((size_t)cap * sizeof(uint32_t));
    }
    const int lossy = type == PAM_KV_BF16 || type == PAM_KV_Q8 || type == PAM_KV_Q4;
    if (d && lossy) {
        d->hi = calloc((size_t)cap, sizeof *d->hi);
        d->tail = calloc((size_t)cap, sizeof *d->tail);
        d->tail_run_bytes = pam_kvh_bytes(PAM_KV_F16, shape->head_dim, shape->block_tokens);
        d->conv = malloc(sizeof(float) * 2 * (size_t)shape->block_tokens * (size_t)shape->n_head_kv *
                         (size_t)shape->head_dim);
    }
    if (!d || !t || !d->arena || !d->free_stack || (lossy && (!d->hi || !d->tail || !d->conv))) {
        dram_close(d);
        free(t);
        return PAM_ERR(PAM_ERR_NOMEM, "dram tier: %llu bytes", (unsigned long long)(cap * block_bytes));
    }
    /* Pop order: slot 0 first, so blocks fill the arena from its start. */
    for (uint64_t i = 0; i < cap; i++) d->free_stack[i] = (uint32_t)(cap - 1 - i);
    d->n_free = cap;
    t->ops = &k_dram_ops;
    t->impl = d;
    if (type == PAM_KV_F16) strcpy(t->name, "dram");
    else snprintf(t->name, sizeof t->name, "dram:%s", pam_kv_type_name(type));
    t->capacity_blocks = cap;
    t->block_bytes = block_bytes;
    t->read_gbps = PAM_TIER_DRAM_GBPS;
    /* f32 and f16 store the rows as given (f16-rounded rows round-trip bit
     * for bit through either); bf16, q8 and q4 are lossy. */
    t->exact = type == PAM_KV_F16 || type == PAM_KV_F32;
    t->kv_type = type;
    *out = t;
    return PAM_OK;
}

pam_status pam_tier_dram_open(const pam_kv_shape *shape, uint64_t capacity_bytes, pam_tier **out) {
    return pam_tier_dram_open_type(shape, PAM_KV_F16, capacity_bytes, out);
}
