/* KV manager: block pool, block tables, PAMattention across tiers,
 * importance, scheduling and migration (DESIGN.md §2.2–2.5).
 *
 * State and invariants:
 *  - A block id names one block of one layer; a live block (refcnt > 0)
 *    lives in exactly one (tier, slot), and n_used[t] counts the live blocks
 *    of tier t. Free ids are chained through next_free.
 *  - A sequence's table for layer l lists len[l] tokens' blocks in logical
 *    order; block i holds positions i*bt .. i*bt+bt-1. A block referenced by
 *    several sequences (refcnt > 1) is never written: a store into it copies
 *    it first (copy-on-write).
 *  - Reservations: kvm->reserved = sum of the sequences' reserved blocks, and
 *    free slots (over the tiers the policy may use) >= kvm->reserved, so a
 *    reserved store never finds the cache full.
 *  - Migration never overwrites the only valid copy: copy into a new slot,
 *    read it back and compare, then switch the block's (tier, slot) and free
 *    the old slot. A failure frees the new slot and leaves the block as it was.
 *
 * PAMattention: the blocks of (seq, layer, n_pos) are cut into pieces: the
 * logical blocks are grouped in fixed chunks of PIECE_TOKENS tokens, and
 * within a chunk the blocks of each tier (in logical order) form one piece.
 * Pieces run as tasks of one pool job, so the tiers compute concurrently;
 * each writes a partial (m, l, o for all heads) and the caller merges them in
 * piece order (chunk, then first logical block). The grouping depends on the
 * data only, never on the thread count; placement changes the result only
 * through rounding (exact merge, DESIGN.md §2.3).
 *
 * Importance: the tiers also return each block's (max score, sum of exp);
 * after the merge, the block's attention mass is
 * sum_h blk_l[h] exp(blk_m[h] - m[h]) / l[h] / n_head, accumulated over a
 * step and folded into an EMA by pam_kvm_step_end.
 *
 * Trace (one JSON object per line, written by pam_kvm_step_end):
 *   {"step":N,"policy":"pam","tiers":[{"name":..,"blocks":..,"capacity":..,
 *    "bytes_read":..,"attend_ms":..,"bound_ms":..}],"migrations":..,
 *    "migration_bytes":..,"migration_failures":..,"staged_bytes":..,
 *    "importance_hist":[h0..h9]}
 *   importance_hist[i] counts blocks with importance in [10^-(i+1), 10^-i)
 *   (i = 0..8; 0 includes 1), and h9 those below 1e-9.
 *   With sparse attention or eviction on, also "sparse_attended",
 *   "sparse_skipped" (blocks, this step) and "evicted" (blocks, in total).
 *
 * Sparse attention (opt-in, per sequence): every block keeps a key summary
 * (kv/ksum.h: per KV head, per-channel min and max of its keys) in host
 * memory, widened by every store. A query attends the sink (block 0), the
 * blocks of its last block_tokens positions and, with several tiers, every
 * block in the fastest tier (reading those costs little); the other blocks
 * are ranked by their bound's margin to the best bound of the same query
 * head (max over heads of bound_h(b) - max_b' bound_h(b')), ties to the
 * older block, and attended while the budget of tokens lasts. Skipped
 * blocks are never read: they make no piece, no staging copy and, unless
 * attended by the previous step, no read-ahead hint (a call hints its own
 * chosen slow-tier blocks first, so they are read at depth). The exact merge then
 * runs over the attended blocks. A budget of at least the context attends
 * every block through the same pieces as exact mode, so the result is
 * bit-identical. With one tier (or the same tiers for each sequence) the
 * selection depends on the sequence's own data only; with several tiers it
 * also depends on which blocks sit in the fastest tier.
 *
 * Replay (pam_kvm_set_replay, benchmarks): a callback gives each call's
 * per-block mass (a real model's, recorded); it replaces the bound as the
 * ranking of skippable blocks and the computed mass as the importance
 * by-product, while the attention still reads and computes the attended
 * blocks in their tiers.
 *
 * Eviction (opt-in): a dropped block leaves a hole (KVM_NO_ID) in the table,
 * so logical block i still holds positions i*bt.. of the blocks that stay. */
#include "kv/kvm.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "kernels/attention.h"
#include "kv/ksum.h"
#include "kv/sched.h"

#define KVM_MAX_TIERS 8
#define KVM_PIECE_TOKENS 256
#define KVM_DEFAULT_BUDGET (64ull << 20)
#define KVM_DEFAULT_DECAY 0.9f
#define KVM_NO_ID UINT32_MAX

typedef struct kvm_block {
    int32_t tier; /* -1 while the id is free */
    uint32_t slot;
    int32_t refcnt;
    int32_t layer;
    int32_t n_tokens; /* tokens written (max over the sharing sequences) */
    float importance;
    float mass_step; /* attention mass accumulated since the last step_end */
    uint32_t next_free;
    uint64_t born;      /* write order, the key of recency-only placement */
    uint64_t pick_call; /* the sparse attention call that last attended it */
    uint64_t pick_step; /* step + 1 of that call; 0: never */
} kvm_block;

typedef struct kvm_seq {
    int used;
    int32_t *len;      /* [n_layer] tokens stored */
    uint32_t **table;  /* [n_layer][cap] block ids */
    int32_t *n_blocks; /* [n_layer] */
    int32_t *cap;      /* [n_layer] */
    uint64_t reserved; /* blocks reserved for later stores */
    pam_kv_sparse sparse;
    uint64_t *last_call; /* [n_layer] id of its last sparse attention call */
} kvm_seq;

typedef struct kvm_call {
    int32_t seq, layer;
} kvm_call;

typedef struct kvm_piece {
    pam_tier *t;
    int64_t first, count; /* range in the request arrays */
    pam_status st;
    char msg[256];
} kvm_piece;

struct pam_kvm {
    pam_kv_shape shape;
    size_t row; /* floats per token of one layer: n_head_kv * head_dim */
    pam_tier *tiers[KVM_MAX_TIERS];
    int n_tiers;
    uint64_t n_used[KVM_MAX_TIERS];
    pam_kv_policy policy;
    uint64_t budget;
    float decay;
    FILE *trace;
    pam_pool *pool;
    int readahead;
    pam_kv_sparse sparse_default;
    int summaries, evict;
    pam_kv_place place;
    float *ksum;        /* [cap_ids][n_head_kv][2][head_dim] when summaries */
    uint64_t n_born, n_calls;
    uint8_t *skip;      /* [cap_req] attention scratch: 1 = not attended */
    float *bnd;         /* [cap_req][piece_heads] bounds, then [cap_req] scores */
    int64_t *order;     /* [3][cap_req] candidates, their ranking, merge buffer */
    uint64_t sp_att, sp_skip, n_evicted;

    kvm_block *blocks;
    uint32_t n_ids, cap_ids, free_id;
    uint64_t n_live;

    kvm_seq *seqs;
    int32_t n_seqs;
    uint64_t reserved;

    /* attention scratch, grown on demand (caller thread only) */
    kvm_piece *pieces;
    int64_t cap_pieces;
    pam_tier_block *req_blocks;
    uint32_t *req_ids;
    float *blk_m, *blk_l;
    pam_kvm_observer obs;
    pam_kvm_replay replay;
    float *rp_mass; /* [cap_req] the replayed mass of the current call */
    float *obs_mass; /* [cap_req][piece_heads], only with an on_attend observer */
    int64_t cap_obs;
    int64_t cap_req;
    float *piece_out; /* [cap_pieces][n_head * (2 + head_dim)] */
    float *acc_ml;    /* merged m and l: [2][n_head] */
    int32_t piece_heads;
    const float *att_q;
    int32_t att_n_head, att_seq, att_layer;
    int att_hint; /* task 0 of the attention job gives the read-ahead hint */
    /* a sparse call's blocks (skip marks those not attended): the hint names
     * them first, so a slow tier reads the scattered chosen blocks at depth */
    const uint32_t *att_tab;
    const uint8_t *att_skip;
    int64_t att_nb;
    float att_scale;

    /* read-ahead hints: per tier, its blocks of the next calls */
    pam_tier_block *hint[KVM_MAX_TIERS];
    int64_t cap_hint[KVM_MAX_TIERS];
    /* the order of this step's attention calls (seq, layer), and of the
     * last step's: the next step's calls are predicted to repeat it */
    kvm_call *ord, *prev_ord;
    int64_t n_ord, n_prev_ord, cap_ord, cap_prev_ord, prev_cursor;

    /* migration and copy scratch: bt * row floats each */
    float *mk, *mv, *mk2, *mv2;

    /* offload staging (a private dram tier) */
    pam_tier *staging;
    uint32_t *staged_slots;
    int64_t cap_staged;
    float *stage_buf; /* [KVM_MAX_TIERS][2][bt*row] */
    uint64_t staged_bytes_step;

    /* step accounting */
    uint64_t step;
    pam_tier_stats prev[KVM_MAX_TIERS];
    pam_kvm_report report;
    uint64_t migr_n, migr_bytes, migr_fail;
    pam_sched_block *sched_blocks;
    pam_sched_move *sched_moves;
    uint64_t cap_sched;
};

static const char *policy_name(pam_kv_policy p) {
    return p == PAM_KV_POLICY_OFFLOAD ? "offload" : p == PAM_KV_POLICY_SINGLE ? "single" : "pam";
}

/* Tiers new blocks may use under the policy: all, or the first only. */
static int usable_tiers(const pam_kvm *kvm) { return kvm->policy == PAM_KV_POLICY_SINGLE ? 1 : kvm->n_tiers; }

static uint64_t free_slots(const pam_kvm *kvm) {
    uint64_t f = 0;
    for (int t = 0; t < usable_tiers(kvm); t++) f += kvm->tiers[t]->capacity_blocks - kvm->n_used[t];
    return f;
}

static int32_t blocks_for(const pam_kvm *kvm, int64_t n_tokens) {
    return (int32_t)((n_tokens + kvm->shape.block_tokens - 1) / kvm->shape.block_tokens);
}

static kvm_seq *get_seq(const pam_kvm *kvm, int32_t seq) {
    if (seq < 0 || seq >= kvm->n_seqs || !kvm->seqs[seq].used) return NULL;
    return &kvm->seqs[seq];
}

/* ---- create / destroy --------------------------------------------------- */

static void *grow(void *p, int64_t *cap, int64_t need, size_t elem) {
    if (need <= *cap) return p;
    int64_t nc = *cap ? *cap : 16;
    while (nc < need) nc *= 2;
    void *np = realloc(p, (size_t)nc * elem);
    if (np) *cap = nc;
    return np;
}

pam_status pam_kvm_create(const pam_kvm_config *cfg, pam_pool *pool, pam_kvm **out) {
    *out = NULL;
    const pam_kv_shape *s = &cfg->shape;
    if (cfg->n_tiers < 1 || cfg->n_tiers > KVM_MAX_TIERS || !cfg->tiers)
        return PAM_ERR(PAM_ERR_INVALID, "kv manager: %d tiers (1..%d supported)", cfg->n_tiers, KVM_MAX_TIERS);
    if (s->n_layer <= 0 || s->n_head_kv <= 0 || s->head_dim <= 0 || s->block_tokens <= 0)
        return PAM_ERR(PAM_ERR_INVALID, "kv manager: bad KV shape");
    if (cfg->policy != PAM_KV_POLICY_PAM && cfg->policy != PAM_KV_POLICY_OFFLOAD && cfg->policy != PAM_KV_POLICY_SINGLE)
        return PAM_ERR(PAM_ERR_INVALID, "kv manager: unknown policy %d", (int)cfg->policy);
    if (cfg->importance_decay < 0.0f || cfg->importance_decay > 1.0f)
        return PAM_ERR(PAM_ERR_INVALID, "kv manager: importance decay %g outside (0, 1]", (double)cfg->importance_decay);
    for (int t = 0; t < cfg->n_tiers; t++)
        if (!cfg->tiers[t]) return PAM_ERR(PAM_ERR_INVALID, "kv manager: tier %d is NULL", t);
    if (cfg->sparse.tokens < 0 || !(cfg->sparse.frac >= 0.0f && cfg->sparse.frac <= 1.0f))
        return PAM_ERR(PAM_ERR_INVALID, "kv manager: bad sparse budget (%d tokens, share %g)", (int)cfg->sparse.tokens,
                       (double)cfg->sparse.frac);
    if (cfg->place != PAM_KV_PLACE_IMPORTANCE && cfg->place != PAM_KV_PLACE_RECENCY &&
        cfg->place != PAM_KV_PLACE_STATIC)
        return PAM_ERR(PAM_ERR_INVALID, "kv manager: unknown placement %d", (int)cfg->place);
    pam_kvm *kvm = calloc(1, sizeof *kvm);
    if (!kvm) return PAM_ERR(PAM_ERR_NOMEM, "kv manager");
    kvm->shape = *s;
    kvm->row = (size_t)s->n_head_kv * (size_t)s->head_dim;
    kvm->n_tiers = cfg->n_tiers;
    for (int t = 0; t < cfg->n_tiers; t++) {
        kvm->tiers[t] = cfg->tiers[t];
        pam_tier_stats_get(kvm->tiers[t], &kvm->prev[t]);
    }
    kvm->policy = cfg->policy;
    kvm->budget = cfg->migrate_bytes_per_step ? cfg->migrate_bytes_per_step : KVM_DEFAULT_BUDGET;
    kvm->decay = cfg->importance_decay > 0.0f ? cfg->importance_decay : KVM_DEFAULT_DECAY;
    kvm->trace = cfg->trace;
    kvm->pool = pool;
    kvm->sparse_default = cfg->sparse;
    kvm->summaries = cfg->sparse_allow || cfg->sparse.tokens > 0 || cfg->sparse.frac > 0.0f;
    kvm->evict = cfg->evict;
    kvm->place = cfg->place;
    /* Hints cost a pass over the next calls' block tables: only worth it
     * when some tier can act on them. */
    kvm->readahead = 0;
    for (int t = 0; t < cfg->n_tiers && !cfg->readahead_off; t++)
        if (cfg->tiers[t]->ops->prefetch) kvm->readahead = 1;
    kvm->free_id = KVM_NO_ID;
    size_t blk = (size_t)s->block_tokens * kvm->row;
    kvm->mk = malloc(4 * blk * sizeof(float));
    kvm->stage_buf = malloc((size_t)KVM_MAX_TIERS * 2 * blk * sizeof(float));
    if (!kvm->mk || !kvm->stage_buf) {
        free(kvm->mk);
        free(kvm->stage_buf);
        free(kvm);
        return PAM_ERR(PAM_ERR_NOMEM, "kv manager scratch");
    }
    kvm->mv = kvm->mk + blk;
    kvm->mk2 = kvm->mv + blk;
    kvm->mv2 = kvm->mk2 + blk;
    *out = kvm;
    return PAM_OK;
}

void pam_kvm_destroy(pam_kvm *kvm) {
    if (!kvm) return;
    for (int32_t i = 0; i < kvm->n_seqs; i++)
        if (kvm->seqs[i].used) pam_kvm_seq_free(kvm, i);
    free(kvm->seqs);
    free(kvm->blocks);
    for (int t = 0; t < kvm->n_tiers; t++) pam_tier_close(kvm->tiers[t]);
    pam_tier_close(kvm->staging);
    free(kvm->staged_slots);
    free(kvm->pieces);
    free(kvm->req_blocks);
    free(kvm->req_ids);
    for (int t = 0; t < KVM_MAX_TIERS; t++) free(kvm->hint[t]);
    free(kvm->ord);
    free(kvm->prev_ord);
    free(kvm->blk_m);
    free(kvm->blk_l);
    free(kvm->obs_mass);
    free(kvm->rp_mass);
    free(kvm->piece_out);
    free(kvm->acc_ml);
    free(kvm->mk);
    free(kvm->stage_buf);
    free(kvm->sched_blocks);
    free(kvm->sched_moves);
    free(kvm->ksum);
    free(kvm->skip);
    free(kvm->bnd);
    free(kvm->order);
    free(kvm);
}

pam_status pam_kv_sparse_parse(const char *s, pam_kv_sparse *out) {
    out->tokens = 0;
    out->frac = 0.0f;
    if (!s || !*s) return PAM_ERR(PAM_ERR_INVALID, "sparse budget: empty");
    if (!strcmp(s, "off")) return PAM_OK;
    char *end = NULL;
    double v = strtod(s, &end);
    if (end == s || !(v >= 0.0))
        return PAM_ERR(PAM_ERR_INVALID, "sparse budget '%s': not a number of tokens or a percentage", s);
    if (*end == '%' && end[1] == '\0') {
        if (!(v > 0.0 && v <= 100.0))
            return PAM_ERR(PAM_ERR_INVALID, "sparse budget '%s': a percentage must be in (0, 100]", s);
        out->frac = (float)(v / 100.0);
        return PAM_OK;
    }
    if (*end != '\0' || v != floor(v) || v > 1e9)
        return PAM_ERR(PAM_ERR_INVALID, "sparse budget '%s': a whole number of tokens or a percentage like 25%%", s);
    out->tokens = (int32_t)v;
    return PAM_OK;
}

int32_t pam_kv_sparse_tokens(const pam_kv_sparse *sp, int32_t n_pos) {
    if (!sp || (sp->tokens <= 0 && !(sp->frac > 0.0f))) return n_pos;
    if (sp->tokens > 0) return sp->tokens < n_pos ? sp->tokens : n_pos;
    double t = ceil((double)sp->frac * (double)n_pos);
    return t >= (double)n_pos ? n_pos : (int32_t)t;
}

static int sparse_on(const pam_kv_sparse *sp) { return sp->tokens > 0 || sp->frac > 0.0f; }

static size_t ksum_floats(const pam_kvm *kvm) { return 2 * kvm->row; }

const pam_kv_shape *pam_kvm_shape(const pam_kvm *kvm) { return &kvm->shape; }
int pam_kvm_n_tiers(const pam_kvm *kvm) { return kvm->n_tiers; }
pam_tier *pam_kvm_tier(pam_kvm *kvm, int i) { return i >= 0 && i < kvm->n_tiers ? kvm->tiers[i] : NULL; }

/* ---- blocks ------------------------------------------------------------- */

static pam_status new_block_id(pam_kvm *kvm, uint32_t *id) {
    if (kvm->free_id != KVM_NO_ID) {
        *id = kvm->free_id;
        kvm->free_id = kvm->blocks[*id].next_free;
        return PAM_OK;
    }
    if (kvm->n_ids == kvm->cap_ids) {
        if (kvm->cap_ids >= UINT32_MAX / 2) return PAM_ERR(PAM_ERR_FULL, "kv manager: too many blocks");
        uint32_t nc = kvm->cap_ids ? kvm->cap_ids * 2 : 256;
        kvm_block *nb = realloc(kvm->blocks, (size_t)nc * sizeof *nb);
        if (!nb) return PAM_ERR(PAM_ERR_NOMEM, "kv manager: block table");
        kvm->blocks = nb;
        if (kvm->summaries) {
            float *ks = realloc(kvm->ksum, (size_t)nc * ksum_floats(kvm) * sizeof *ks);
            if (!ks) return PAM_ERR(PAM_ERR_NOMEM, "kv manager: key summaries");
            kvm->ksum = ks;
        }
        kvm->cap_ids = nc;
    }
    *id = kvm->n_ids++;
    return PAM_OK;
}

static void release_block_id(pam_kvm *kvm, uint32_t id) {
    kvm->blocks[id].tier = -1;
    kvm->blocks[id].next_free = kvm->free_id;
    kvm->free_id = id;
}

/* A slot in the fastest usable tier with room (skipping tiers that refuse). */
static pam_status alloc_slot(pam_kvm *kvm, int *tier, uint32_t *slot) {
    pam_status st = PAM_ERR_FULL;
    for (int t = 0; t < usable_tiers(kvm); t++) {
        if (kvm->n_used[t] >= kvm->tiers[t]->capacity_blocks) continue;
        st = pam_tier_alloc(kvm->tiers[t], slot);
        if (st == PAM_OK) {
            *tier = t;
            kvm->n_used[t]++;
            return PAM_OK;
        }
    }
    if (st == PAM_ERR_FULL)
        return PAM_ERR(PAM_ERR_FULL, "KV cache full: no free block in %d tier(s)", usable_tiers(kvm));
    return st;
}

static void free_slot(pam_kvm *kvm, int tier, uint32_t slot) {
    pam_tier_free(kvm->tiers[tier], slot);
    kvm->n_used[tier]--;
}

static void unref_block(pam_kvm *kvm, uint32_t id);

/* Eviction: drops the sequence's lowest-importance unshared block of layer
 * (ties: the oldest), never block 0 (the sink) nor a block holding one of its
 * last block_tokens positions. Returns 1 if a block was dropped (its slot is
 * free now), 0 if none can be. */
static int evict_one(pam_kvm *kvm, kvm_seq *s, int32_t layer) {
    int32_t bt = kvm->shape.block_tokens, len = s->len[layer];
    int32_t first_win = (len > bt ? len - bt : 0) / bt;
    int32_t best = -1;
    for (int32_t i = 1; i < s->n_blocks[layer] && i < first_win; i++) {
        uint32_t id = s->table[layer][i];
        if (id == KVM_NO_ID || kvm->blocks[id].refcnt != 1) continue;
        if (best < 0 || kvm->blocks[id].importance < kvm->blocks[s->table[layer][best]].importance) best = i;
    }
    if (best < 0) return 0;
    unref_block(kvm, s->table[layer][best]);
    s->table[layer][best] = KVM_NO_ID;
    kvm->n_evicted++;
    return 1;
}

/* A new block with one reference, charged to seq's reservation if it has one. */
static pam_status new_block(pam_kvm *kvm, kvm_seq *s, int32_t layer, uint32_t *out) {
    if (s->reserved == 0)
        while (kvm->evict && free_slots(kvm) <= kvm->reserved && evict_one(kvm, s, layer)) {
        }
    if (s->reserved == 0 && free_slots(kvm) <= kvm->reserved)
        return PAM_ERR(PAM_ERR_FULL, "KV cache full: every free block is reserved by other sequences%s",
                       kvm->evict ? ", and the sequence has no block it may drop" : "");
    uint32_t id = KVM_NO_ID, slot = 0;
    int tier = 0;
    PAM_TRY(new_block_id(kvm, &id));
    pam_status st = alloc_slot(kvm, &tier, &slot);
    if (st != PAM_OK) {
        release_block_id(kvm, id);
        return st;
    }
    kvm_block *b = &kvm->blocks[id];
    memset(b, 0, sizeof *b);
    b->tier = tier;
    b->slot = slot;
    b->refcnt = 1;
    b->layer = layer;
    b->next_free = KVM_NO_ID;
    b->born = ++kvm->n_born;
    if (kvm->summaries) {
        float *ks = kvm->ksum + (size_t)id * ksum_floats(kvm);
        for (int32_t g = 0; g < kvm->shape.n_head_kv; g++)
            pam_ksum_reset(ks + (size_t)g * 2 * kvm->shape.head_dim, ks + ((size_t)g * 2 + 1) * kvm->shape.head_dim,
                           kvm->shape.head_dim);
    }
    kvm->n_live++;
    if (s->reserved > 0) {
        s->reserved--;
        kvm->reserved--;
    }
    *out = id;
    return PAM_OK;
}

static void unref_block(pam_kvm *kvm, uint32_t id) {
    kvm_block *b = &kvm->blocks[id];
    if (--b->refcnt > 0) return;
    free_slot(kvm, b->tier, b->slot);
    kvm->n_live--;
    release_block_id(kvm, id);
}

/* The block's first n_tokens decoded from its tier into mk/mv. */
static pam_status read_block(pam_kvm *kvm, uint32_t id, float *k, float *v) {
    kvm_block *b = &kvm->blocks[id];
    return pam_tier_read(kvm->tiers[b->tier], b->slot, b->n_tokens, k, v);
}

/* Copy, verify, switch, free (module header). */
static pam_status migrate_block(pam_kvm *kvm, uint32_t id, int to) {
    kvm_block *b = &kvm->blocks[id];
    if (b->tier == to) return PAM_OK;
    pam_tier *src = kvm->tiers[b->tier], *dst = kvm->tiers[to];
    if (kvm->n_used[to] >= dst->capacity_blocks)
        return PAM_ERR(PAM_ERR_FULL, "migration: tier %s is full", dst->name);
    uint32_t slot;
    PAM_TRY(pam_tier_alloc(dst, &slot));
    kvm->n_used[to]++;
    int32_t n = b->n_tokens;
    size_t cnt = (size_t)n * kvm->row;
    pam_status st = pam_tier_read(src, b->slot, n, kvm->mk, kvm->mv);
    if (st == PAM_OK) st = pam_tier_write(dst, slot, 0, n, kvm->mk, kvm->mv);
    if (st == PAM_OK) st = pam_tier_read(dst, slot, n, kvm->mk2, kvm->mv2);
    if (st == PAM_OK) {
        if (src->exact && dst->exact && src->kv_type == dst->kv_type) {
            /* f16 (or f32) in, the same out: the copy must be bit-identical */
            if (memcmp(kvm->mk, kvm->mk2, cnt * sizeof(float)) || memcmp(kvm->mv, kvm->mv2, cnt * sizeof(float)))
                st = PAM_ERR(PAM_ERR_CORRUPT, "migration %s -> %s: the copy differs from the source", src->name, dst->name);
        } else {
            /* A lossy encoding: finite, and within a bound far above any
             * quantisation error (int4 groups err by at most range/30). */
            float amax = 0.0f;
            for (size_t i = 0; i < cnt; i++) {
                amax = fmaxf(amax, fabsf(kvm->mk[i]));
                amax = fmaxf(amax, fabsf(kvm->mv[i]));
            }
            float tol = 0.2f * amax + 1e-6f;
            for (size_t i = 0; i < cnt && st == PAM_OK; i++)
                if (!(fabsf(kvm->mk[i] - kvm->mk2[i]) <= tol) || !(fabsf(kvm->mv[i] - kvm->mv2[i]) <= tol))
                    st = PAM_ERR(PAM_ERR_CORRUPT, "migration %s -> %s: the copy does not verify", src->name, dst->name);
        }
    }
    if (st != PAM_OK) {
        pam_tier_free(dst, slot);
        kvm->n_used[to]--;
        return st;
    }
    int from = b->tier;
    uint32_t old = b->slot;
    b->tier = to;
    b->slot = slot;
    free_slot(kvm, from, old);
    return PAM_OK;
}

/* ---- sequences ---------------------------------------------------------- */

pam_status pam_kvm_seq_create(pam_kvm *kvm, int32_t *seq) {
    int32_t i = 0;
    while (i < kvm->n_seqs && kvm->seqs[i].used) i++;
    if (i == kvm->n_seqs) {
        kvm_seq *ns = realloc(kvm->seqs, (size_t)(kvm->n_seqs + 1) * sizeof *ns);
        if (!ns) return PAM_ERR(PAM_ERR_NOMEM, "kv manager: sequence");
        kvm->seqs = ns;
        memset(&ns[i], 0, sizeof ns[i]);
        kvm->n_seqs++;
    }
    kvm_seq *s = &kvm->seqs[i];
    int32_t L = kvm->shape.n_layer;
    s->len = calloc((size_t)L, sizeof *s->len);
    s->table = calloc((size_t)L, sizeof *s->table);
    s->n_blocks = calloc((size_t)L, sizeof *s->n_blocks);
    s->cap = calloc((size_t)L, sizeof *s->cap);
    s->last_call = calloc((size_t)L, sizeof *s->last_call);
    if (!s->len || !s->table || !s->n_blocks || !s->cap || !s->last_call) {
        free(s->last_call);
        free(s->len);
        free(s->table);
        free(s->n_blocks);
        free(s->cap);
        memset(s, 0, sizeof *s);
        return PAM_ERR(PAM_ERR_NOMEM, "kv manager: sequence");
    }
    s->reserved = 0;
    s->sparse = kvm->sparse_default;
    s->used = 1;
    *seq = i;
    return PAM_OK;
}

void pam_kvm_seq_free(pam_kvm *kvm, int32_t seq) {
    kvm_seq *s = get_seq(kvm, seq);
    if (!s) return;
    for (int32_t l = 0; l < kvm->shape.n_layer; l++) {
        for (int32_t i = 0; i < s->n_blocks[l]; i++)
            if (s->table[l][i] != KVM_NO_ID) unref_block(kvm, s->table[l][i]);
        free(s->table[l]);
    }
    kvm->reserved -= s->reserved;
    free(s->last_call);
    free(s->len);
    free(s->table);
    free(s->n_blocks);
    free(s->cap);
    memset(s, 0, sizeof *s);
}

static pam_status table_push(kvm_seq *s, int32_t layer, uint32_t id) {
    if (s->n_blocks[layer] == s->cap[layer]) {
        int32_t nc = s->cap[layer] ? s->cap[layer] * 2 : 16;
        uint32_t *nt = realloc(s->table[layer], (size_t)nc * sizeof *nt);
        if (!nt) return PAM_ERR(PAM_ERR_NOMEM, "kv manager: block table");
        s->table[layer] = nt;
        s->cap[layer] = nc;
    }
    s->table[layer][s->n_blocks[layer]++] = id;
    return PAM_OK;
}

pam_status pam_kvm_seq_fork(pam_kvm *kvm, int32_t src, int32_t *dst) {
    if (!get_seq(kvm, src)) return PAM_ERR(PAM_ERR_INVALID, "kv manager: no sequence %d", src);
    int32_t d;
    PAM_TRY(pam_kvm_seq_create(kvm, &d));
    kvm_seq *s = &kvm->seqs[src], *t = &kvm->seqs[d]; /* after create: seqs may have moved */
    for (int32_t l = 0; l < kvm->shape.n_layer; l++) {
        for (int32_t i = 0; i < s->n_blocks[l]; i++) {
            if (table_push(t, l, s->table[l][i]) != PAM_OK) {
                pam_kvm_seq_free(kvm, d);
                return PAM_ERR(PAM_ERR_NOMEM, "kv manager: block table");
            }
            if (s->table[l][i] != KVM_NO_ID) kvm->blocks[s->table[l][i]].refcnt++;
        }
        t->len[l] = s->len[l];
    }
    t->sparse = s->sparse;
    *dst = d;
    return PAM_OK;
}

pam_status pam_kvm_seq_truncate(pam_kvm *kvm, int32_t seq, int32_t n_tokens) {
    kvm_seq *s = get_seq(kvm, seq);
    if (!s) return PAM_ERR(PAM_ERR_INVALID, "kv manager: no sequence %d", seq);
    if (n_tokens < 0) return PAM_ERR(PAM_ERR_INVALID, "kv manager: truncate to %d tokens", n_tokens);
    int32_t keep = blocks_for(kvm, n_tokens);
    for (int32_t l = 0; l < kvm->shape.n_layer; l++) {
        while (s->n_blocks[l] > keep) {
            uint32_t id = s->table[l][--s->n_blocks[l]];
            if (id != KVM_NO_ID) unref_block(kvm, id);
        }
        if (s->len[l] > n_tokens) s->len[l] = n_tokens;
    }
    kvm->reserved -= s->reserved;
    s->reserved = 0;
    return PAM_OK;
}

int32_t pam_kvm_seq_len(const pam_kvm *kvm, int32_t seq) {
    const kvm_seq *s = get_seq(kvm, seq);
    if (!s) return 0;
    int32_t n = s->len[0];
    for (int32_t l = 1; l < kvm->shape.n_layer; l++)
        if (s->len[l] < n) n = s->len[l];
    return n;
}

pam_status pam_kvm_reserve(pam_kvm *kvm, int32_t seq, int32_t n_tokens) {
    kvm_seq *s = get_seq(kvm, seq);
    if (!s) return PAM_ERR(PAM_ERR_INVALID, "kv manager: no sequence %d", seq);
    if (n_tokens < 0) return PAM_ERR(PAM_ERR_INVALID, "kv manager: reserve %d tokens", n_tokens);
    uint64_t need = 0;
    for (int32_t l = 0; l < kvm->shape.n_layer; l++) {
        int32_t want = blocks_for(kvm, (int64_t)s->len[l] + n_tokens);
        if (want > s->n_blocks[l]) need += (uint64_t)(want - s->n_blocks[l]);
    }
    if (need <= s->reserved) return PAM_OK;
    uint64_t extra = need - s->reserved, avail = free_slots(kvm) - kvm->reserved;
    if (extra > avail && kvm->evict) { /* what is free now; stores past it evict */
        s->reserved += avail;
        kvm->reserved += avail;
        return PAM_OK;
    }
    if (extra > avail) {
        uint64_t cap = 0;
        for (int t = 0; t < usable_tiers(kvm); t++) cap += kvm->tiers[t]->capacity_blocks;
        return PAM_ERR(PAM_ERR_FULL,
                       "KV cache full: %d more tokens need %llu blocks of %d tokens, but only %llu of %llu are free "
                       "in %d tier(s) (policy %s); add or enlarge a --kv-tier",
                       n_tokens, (unsigned long long)extra, kvm->shape.block_tokens, (unsigned long long)avail,
                       (unsigned long long)cap, usable_tiers(kvm), policy_name(kvm->policy));
    }
    s->reserved = need;
    kvm->reserved += extra;
    return PAM_OK;
}

/* A private copy of a shared block, so a store does not change the others'. */
static pam_status cow_block(pam_kvm *kvm, kvm_seq *s, int32_t layer, int32_t bi) {
    uint32_t old = s->table[layer][bi], id = KVM_NO_ID;
    PAM_TRY(read_block(kvm, old, kvm->mk, kvm->mv));
    PAM_TRY(new_block(kvm, s, layer, &id));
    kvm_block *nb = &kvm->blocks[id], *ob = &kvm->blocks[old];
    pam_status st = pam_tier_write(kvm->tiers[nb->tier], nb->slot, 0, ob->n_tokens, kvm->mk, kvm->mv);
    if (st != PAM_OK) {
        unref_block(kvm, id);
        return st;
    }
    nb->n_tokens = ob->n_tokens;
    nb->importance = ob->importance;
    if (kvm->summaries)
        memcpy(kvm->ksum + (size_t)id * ksum_floats(kvm), kvm->ksum + (size_t)old * ksum_floats(kvm),
               ksum_floats(kvm) * sizeof(float));
    ob->refcnt--;
    s->table[layer][bi] = id;
    return PAM_OK;
}

/* Stores rows of positions pos..pos+n-1 (pos <= len) of one layer. */
static pam_status store_rows(pam_kvm *kvm, kvm_seq *s, int32_t layer, int32_t pos, int32_t n, const float *k,
                             const float *v) {
    int32_t bt = kvm->shape.block_tokens;
    while (n > 0) {
        int32_t bi = pos / bt, off = pos % bt, cnt = bt - off < n ? bt - off : n;
        int fresh = bi == s->n_blocks[layer];
        uint32_t id = KVM_NO_ID;
        if (fresh) {
            PAM_TRY(new_block(kvm, s, layer, &id));
            pam_status st = table_push(s, layer, id);
            if (st != PAM_OK) {
                unref_block(kvm, id);
                return st;
            }
        } else {
            if (s->table[layer][bi] == KVM_NO_ID)
                return PAM_ERR(PAM_ERR_INVALID, "kv manager: store at position %d, in a block evicted", pos);
            if (kvm->blocks[s->table[layer][bi]].refcnt > 1) PAM_TRY(cow_block(kvm, s, layer, bi));
            id = s->table[layer][bi];
        }
        kvm_block *b = &kvm->blocks[id];
        pam_status st = pam_tier_write(kvm->tiers[b->tier], b->slot, off, cnt, k, v);
        if (st != PAM_OK) {
            if (fresh) {
                s->n_blocks[layer]--;
                unref_block(kvm, id);
            }
            return st;
        }
        if (b->n_tokens < off + cnt) b->n_tokens = off + cnt;
        if (s->len[layer] < pos + cnt) s->len[layer] = pos + cnt;
        if (kvm->summaries) {
            int32_t hd = kvm->shape.head_dim;
            float *ks = kvm->ksum + (size_t)id * ksum_floats(kvm);
            for (int32_t r = 0; r < cnt; r++)
                for (int32_t g = 0; g < kvm->shape.n_head_kv; g++)
                    pam_ksum_add(ks + (size_t)g * 2 * hd, ks + ((size_t)g * 2 + 1) * hd,
                                 k + (size_t)r * kvm->row + (size_t)g * hd, hd);
        }
        pos += cnt;
        n -= cnt;
        k += (size_t)cnt * kvm->row;
        v += (size_t)cnt * kvm->row;
    }
    return PAM_OK;
}

pam_status pam_kvm_store(pam_kvm *kvm, int32_t seq, int32_t layer, int32_t pos, const float *k, const float *v) {
    kvm_seq *s = get_seq(kvm, seq);
    if (!s) return PAM_ERR(PAM_ERR_INVALID, "kv manager: no sequence %d", seq);
    if (layer < 0 || layer >= kvm->shape.n_layer) return PAM_ERR(PAM_ERR_INVALID, "kv manager: layer %d", layer);
    if (pos < 0 || pos > s->len[layer])
        return PAM_ERR(PAM_ERR_INVALID, "kv manager: store at position %d of a layer holding %d", pos, s->len[layer]);
    pam_status st = store_rows(kvm, s, layer, pos, 1, k, v);
    if (st == PAM_OK && kvm->obs.on_store) kvm->obs.on_store(kvm->obs.user, seq, layer, pos, k);
    return st;
}

void pam_kvm_set_replay(pam_kvm *kvm, const pam_kvm_replay *rp) {
    if (rp)
        kvm->replay = *rp;
    else
        memset(&kvm->replay, 0, sizeof kvm->replay);
}

void pam_kvm_set_observer(pam_kvm *kvm, const pam_kvm_observer *obs) {
    if (obs)
        kvm->obs = *obs;
    else
        memset(&kvm->obs, 0, sizeof kvm->obs);
}

/* The observer's per-block, per-head mass in logical block order. Pieces
 * hold blocks in tier order within a chunk, so each request is placed by
 * finding its block id in the layer's table (ids are unique within it). */
static pam_status observe_attend(pam_kvm *kvm, int32_t seq, int32_t layer, int32_t n_pos, const float *q,
                                 int32_t n_head, const uint32_t *tab, int64_t nb, int64_t n_req, const float *m,
                                 const float *l) {
    size_t need = (size_t)nb * (size_t)n_head;
    if ((int64_t)need > kvm->cap_obs) {
        float *om = realloc(kvm->obs_mass, need * sizeof *om);
        if (!om) return PAM_ERR(PAM_ERR_NOMEM, "attention observer scratch");
        kvm->obs_mass = om;
        kvm->cap_obs = (int64_t)need;
    }
    if (n_req < nb) memset(kvm->obs_mass, 0, need * sizeof(float)); /* blocks not attended: no mass */
    int64_t lb = 0;
    for (int64_t j = 0; j < n_req; j++) {
        const float *bm = kvm->blk_m + (size_t)j * n_head, *bl = kvm->blk_l + (size_t)j * n_head;
        for (int64_t t = 0; t < nb && tab[lb] != kvm->req_ids[j]; t++) lb = lb + 1 < nb ? lb + 1 : 0;
        float *dst = kvm->obs_mass + (size_t)lb * n_head;
        for (int32_t h = 0; h < n_head; h++) dst[h] = bl[h] * expf(bm[h] - m[h]) / l[h];
    }
    kvm->obs.on_attend(kvm->obs.user, seq, layer, n_pos, q, n_head, kvm->obs_mass, nb);
    return PAM_OK;
}

pam_status pam_kvm_fill_synthetic(pam_kvm *kvm, int32_t seq, int32_t n, uint64_t seed) {
    kvm_seq *s = get_seq(kvm, seq);
    if (!s) return PAM_ERR(PAM_ERR_INVALID, "kv manager: no sequence %d", seq);
    if (n < 0) return PAM_ERR(PAM_ERR_INVALID, "kv manager: fill %d positions", n);
    int32_t have = pam_kvm_seq_len(kvm, seq);
    if (n > have) PAM_TRY(pam_kvm_reserve(kvm, seq, n - have));
    uint64_t r = seed ? seed : 1;
    int32_t bt = kvm->shape.block_tokens;
    for (int32_t l = 0; l < kvm->shape.n_layer; l++) {
        for (int32_t p = 0; p < n; p += bt) {
            int32_t cnt = n - p < bt ? n - p : bt;
            for (size_t i = 0; i < (size_t)cnt * kvm->row; i++) {
                /* xorshift64*: values in [-1, 1) like normalised K/V */
                r ^= r >> 12, r ^= r << 25, r ^= r >> 27;
                uint64_t x = r * 0x2545F4914F6CDD1DULL;
                kvm->mk2[i] = (float)((int32_t)(x >> 32)) * (1.0f / 2147483648.0f);
                kvm->mv2[i] = (float)((int32_t)x) * (1.0f / 2147483648.0f);
            }
            PAM_TRY(store_rows(kvm, s, l, p, cnt, kvm->mk2, kvm->mv2));
        }
    }
    return PAM_OK;
}

pam_status pam_kvm_migrate(pam_kvm *kvm, int32_t seq, int32_t layer, int32_t block, int to) {
    kvm_seq *s = get_seq(kvm, seq);
    if (!s || layer < 0 || layer >= kvm->shape.n_layer || block < 0 || block >= s->n_blocks[layer])
        return PAM_ERR(PAM_ERR_INVALID, "kv manager: no block %d of layer %d in sequence %d", block, layer, seq);
    if (to < 0 || to >= usable_tiers(kvm)) return PAM_ERR(PAM_ERR_INVALID, "kv manager: no tier %d", to);
    uint32_t id = s->table[layer][block];
    if (id == KVM_NO_ID) return PAM_ERR(PAM_ERR_INVALID, "kv manager: block %d of layer %d was evicted", block, layer);
    int from = kvm->blocks[id].tier;
    /* traffic as the scheduler counts it: read at the source, written at the destination */
    uint64_t bytes = kvm->tiers[from]->block_bytes + kvm->tiers[to]->block_bytes;
    pam_status st = migrate_block(kvm, id, to);
    if (st != PAM_OK) {
        kvm->migr_fail++;
        return st;
    }
    if (from != to) {
        kvm->migr_n++;
        kvm->migr_bytes += bytes;
    }
    return PAM_OK;
}

int pam_kvm_block_tier(const pam_kvm *kvm, int32_t seq, int32_t layer, int32_t block) {
    const kvm_seq *s = get_seq(kvm, seq);
    if (!s || layer < 0 || layer >= kvm->shape.n_layer || block < 0 || block >= s->n_blocks[layer]) return -1;
    if (s->table[layer][block] == KVM_NO_ID) return -1;
    return kvm->blocks[s->table[layer][block]].tier;
}

pam_status pam_kvm_read_block(pam_kvm *kvm, int32_t seq, int32_t layer, int32_t block, float *k, float *v) {
    kvm_seq *s = get_seq(kvm, seq);
    if (!s || layer < 0 || layer >= kvm->shape.n_layer || block < 0 || block >= s->n_blocks[layer] ||
        (int64_t)(block + 1) * kvm->shape.block_tokens > s->len[layer])
        return PAM_ERR(PAM_ERR_INVALID, "kv manager: no full block %d of layer %d in sequence %d", block, layer, seq);
    const kvm_block *b = &kvm->blocks[s->table[layer][block]];
    return pam_tier_read(kvm->tiers[b->tier], b->slot, kvm->shape.block_tokens, k, v);
}

/* ---- PAMattention ------------------------------------------------------- */

static void hint_next(pam_kvm *kvm, int32_t seq, int32_t layer);

static void piece_task(void *arg, int64_t task, int thread) {
    (void)thread;
    pam_kvm *kvm = arg;
    if (kvm->att_hint) {
        if (task == 0) {
            hint_next(kvm, kvm->att_seq, kvm->att_layer);
            return;
        }
        task--;
    }
    kvm_piece *p = &kvm->pieces[task];
    int32_t H = kvm->att_n_head;
    float *po = kvm->piece_out + (size_t)task * (size_t)H * (2 + (size_t)kvm->shape.head_dim);
    pam_tier_attn req = {
        .q = kvm->att_q,
        .n_head = H,
        .scale = kvm->att_scale,
        .blocks = kvm->req_blocks + p->first,
        .n_blocks = p->count,
        .m = po,
        .l = po + H,
        .o = po + 2 * H,
        .blk_m = kvm->blk_m + (size_t)p->first * H,
        .blk_l = kvm->blk_l + (size_t)p->first * H,
    };
    p->st = pam_tier_attend(p->t, &req);
    if (p->st != PAM_OK) snprintf(p->msg, sizeof p->msg, "%s", pam_last_error());
}

typedef struct stage_job {
    pam_kvm *kvm;
    int64_t nb;
    const uint32_t *ids;  /* logical order */
    const uint8_t *skip; /* blocks not attended (sparse, evicted), or NULL */
    pam_status st[KVM_MAX_TIERS];
    char msg[KVM_MAX_TIERS][256];
} stage_job;

/* Offload: one task per slow tier copies its blocks into the staging tier
 * (each tier is read by one thread; staging slots are disjoint). */
static void stage_task(void *arg, int64_t task, int thread) {
    (void)thread;
    stage_job *j = arg;
    pam_kvm *kvm = j->kvm;
    int t = (int)task + 1;
    size_t blk = (size_t)kvm->shape.block_tokens * kvm->row;
    float *k = kvm->stage_buf + (size_t)t * 2 * blk, *v = k + blk;
    j->st[t] = PAM_OK;
    /* The whole list is hinted first, so a tier with read-ahead (ssd) reads
     * it at full queue depth, as an offloading engine's bulk copy would,
     * instead of one synchronous read per block. */
    pam_tier_block *h = kvm->hint[t];
    int64_t nh = 0;
    for (int64_t i = 0; i < j->nb && kvm->readahead; i++) {
        if (j->skip && j->skip[i]) continue;
        const kvm_block *b = &kvm->blocks[j->ids[i]];
        if (b->tier == t) h[nh++] = (pam_tier_block){.slot = b->slot, .n_tokens = b->n_tokens};
    }
    pam_tier_prefetch(kvm->tiers[t], h, nh);
    for (int64_t i = 0; i < j->nb; i++) {
        if (j->skip && j->skip[i]) continue;
        const kvm_block *b = &kvm->blocks[j->ids[i]];
        if (b->tier != t) continue;
        int32_t n = b->n_tokens;
        pam_status st = pam_tier_read(kvm->tiers[t], b->slot, n, k, v);
        if (st == PAM_OK) st = pam_tier_write(kvm->staging, kvm->staged_slots[i], 0, n, k, v);
        if (st != PAM_OK) {
            j->st[t] = st;
            snprintf(j->msg[t], sizeof j->msg[t], "%s", pam_last_error());
            return;
        }
    }
}

static pam_status stage_blocks(pam_kvm *kvm, const uint32_t *ids, const uint8_t *skip, int64_t nb) {
    int64_t need = 0;
    for (int64_t i = 0; i < nb; i++) need += !(skip && skip[i]) && kvm->blocks[ids[i]].tier != 0;
    if (need == 0) return PAM_OK;
    if (!kvm->staging || kvm->staging->capacity_blocks < (uint64_t)nb) {
        uint64_t cap = kvm->staging ? kvm->staging->capacity_blocks : 64;
        while (cap < (uint64_t)nb) cap *= 2;
        pam_tier *nt;
        /* the fastest tier's KV type, so offload computes with its kernels */
        PAM_TRY(pam_tier_dram_open_type(&kvm->shape, kvm->tiers[0]->kv_type, cap * kvm->tiers[0]->block_bytes, &nt));
        pam_tier_close(kvm->staging);
        kvm->staging = nt;
    }
    int64_t cap_staged = kvm->cap_staged;
    uint32_t *ns = grow(kvm->staged_slots, &cap_staged, nb, sizeof *ns);
    if (!ns) return PAM_ERR(PAM_ERR_NOMEM, "offload staging");
    kvm->staged_slots = ns;
    kvm->cap_staged = cap_staged;
    /* staging slot i for logical block i: the staging tier is private */
    for (int64_t i = 0; i < nb; i++) kvm->staged_slots[i] = (uint32_t)i;
    for (int t = 1; t < kvm->n_tiers; t++) { /* room for each tier's hint (stage_task) */
        pam_tier_block *h = grow(kvm->hint[t], &kvm->cap_hint[t], nb, sizeof *h);
        if (!h) return PAM_ERR(PAM_ERR_NOMEM, "offload staging");
        kvm->hint[t] = h;
    }
    stage_job j = {.kvm = kvm, .nb = nb, .ids = ids, .skip = skip};
    pam_pool_run(kvm->pool, stage_task, &j, kvm->n_tiers - 1);
    for (int t = 1; t < kvm->n_tiers; t++)
        if (j.st[t] != PAM_OK) return PAM_ERR(j.st[t], "offload staging from tier %s: %s", kvm->tiers[t]->name, j.msg[t]);
    kvm->staged_bytes_step += (uint64_t)need * kvm->staging->block_bytes;
    return PAM_OK;
}

static pam_status ensure_attend_scratch(pam_kvm *kvm, int64_t nb, int32_t n_head) {
    if (nb <= kvm->cap_req && n_head <= kvm->piece_heads) return PAM_OK;
    int64_t nc = kvm->cap_req > 16 ? kvm->cap_req : 16;
    while (nc < nb) nc *= 2;
    int32_t H = n_head > kvm->piece_heads ? n_head : kvm->piece_heads;
    size_t n = (size_t)nc;
    pam_tier_block *rb = realloc(kvm->req_blocks, n * sizeof *rb);
    if (rb) kvm->req_blocks = rb;
    uint32_t *ri = realloc(kvm->req_ids, n * sizeof *ri);
    if (ri) kvm->req_ids = ri;
    float *bm = realloc(kvm->blk_m, n * (size_t)H * sizeof(float));
    if (bm) kvm->blk_m = bm;
    float *bl = realloc(kvm->blk_l, n * (size_t)H * sizeof(float));
    if (bl) kvm->blk_l = bl;
    kvm_piece *pc = realloc(kvm->pieces, n * sizeof *pc); /* pieces <= blocks */
    if (pc) kvm->pieces = pc;
    float *po = realloc(kvm->piece_out, n * (size_t)H * (2 + (size_t)kvm->shape.head_dim) * sizeof(float));
    if (po) kvm->piece_out = po;
    float *ml = realloc(kvm->acc_ml, 2 * (size_t)H * sizeof(float));
    if (ml) kvm->acc_ml = ml;
    uint8_t *sk = realloc(kvm->skip, n);
    if (sk) kvm->skip = sk;
    float *bd = realloc(kvm->bnd, n * ((size_t)H + 1) * sizeof(float));
    if (bd) kvm->bnd = bd;
    int64_t *od = realloc(kvm->order, 3 * n * sizeof *od);
    if (od) kvm->order = od;
    float *rm = realloc(kvm->rp_mass, n * sizeof *rm);
    if (rm) kvm->rp_mass = rm;
    if (!rb || !ri || !bm || !bl || !pc || !po || !ml || !sk || !bd || !od || !rm)
        return PAM_ERR(PAM_ERR_NOMEM, "attention scratch");
    kvm->cap_req = nc;
    kvm->cap_pieces = nc;
    kvm->piece_heads = H;
    return PAM_OK;
}

/* Read-ahead: while this layer computes, tell each tier which of its blocks
 * the next attention calls are likely to want, so a slow tier's reads
 * overlap this call, the matrix work between calls and other sequences.
 * The guess is the order of the last step's calls (a decode step repeats
 * it, whether sequences run one after another or batched layer by layer),
 * from the position of this call in it, wrapping around. Before a step has
 * been seen, or for a call the last step did not make, it is the order of
 * one forward pass after another: the next layers of this sequence, then
 * layer 0 of the next live sequence. Each tier gets its blocks of the next
 * KVM_HINT_UNITS (seq, layer) calls that have blocks there, nearest first,
 * however far ahead those are: a tier is not left idle while sequences held
 * elsewhere compute. The tier reads as far as its buffers allow. A wrong
 * guess costs reads, never a result (tier.h, prefetch). */
#define KVM_HINT_UNITS 3
#define KVM_ORD_MAX (1 << 16) /* calls remembered per step */

/* Adds the blocks of call (seq, layer) to the hints of the tiers that still
 * want units; 0 once no tier does (or memory ran out). */
static int hint_unit(pam_kvm *kvm, int32_t seq, int32_t layer, int64_t *n, int *units) {
    int open = 0, seen[KVM_MAX_TIERS] = {0};
    for (int t = 0; t < kvm->n_tiers; t++) open += units[t] < KVM_HINT_UNITS;
    if (!open) return 0;
    if (seq < 0 || seq >= kvm->n_seqs || !kvm->seqs[seq].used) return 1;
    const kvm_seq *s = &kvm->seqs[seq];
    int64_t nb = s->n_blocks[layer];
    const uint32_t *tab = s->table[layer];
    /* sparse only if the budget is below the context (100% is exact) */
    int sparse = kvm->summaries && sparse_on(&s->sparse) &&
                 pam_kv_sparse_tokens(&s->sparse, s->len[layer]) < s->len[layer];
    for (int64_t i = 0; i < nb; i++) {
        if (tab[i] == KVM_NO_ID) continue;
        const kvm_block *b = &kvm->blocks[tab[i]];
        int t = b->tier;
        if (units[t] >= KVM_HINT_UNITS) continue;
        /* sparse: only what the last steps attended is likely to be read */
        if (sparse && (b->pick_step == 0 || b->pick_step < kvm->step)) continue;
        pam_tier_block *h = grow(kvm->hint[t], &kvm->cap_hint[t], n[t] + 1, sizeof *h);
        if (!h) return 0; /* a hint is optional */
        kvm->hint[t] = h;
        h[n[t]++] = (pam_tier_block){.slot = b->slot, .n_tokens = b->n_tokens};
        seen[t] = 1;
    }
    for (int t = 0; t < kvm->n_tiers; t++) units[t] += seen[t];
    return 1;
}

static void hint_next(pam_kvm *kvm, int32_t seq, int32_t layer) {
    int32_t L = kvm->shape.n_layer;
    int64_t n[KVM_MAX_TIERS] = {0};
    int units[KVM_MAX_TIERS] = {0};
    for (int64_t i = 0; kvm->att_skip && i < kvm->att_nb; i++) {
        if (kvm->att_skip[i]) continue;
        const kvm_block *b = &kvm->blocks[kvm->att_tab[i]];
        int t = b->tier;
        if (t == 0) continue; /* the fastest tier needs no read-ahead */
        pam_tier_block *h = grow(kvm->hint[t], &kvm->cap_hint[t], n[t] + 1, sizeof *h);
        if (!h) return;
        kvm->hint[t] = h;
        h[n[t]++] = (pam_tier_block){.slot = b->slot, .n_tokens = b->n_tokens};
    }
    int64_t np = kvm->n_prev_ord, at = -1;
    for (int64_t k = 0; k < np; k++) { /* usually the entry after the last match */
        int64_t j = (kvm->prev_cursor + 1 + k) % np;
        if (kvm->prev_ord[j].seq == seq && kvm->prev_ord[j].layer == layer) {
            at = j;
            break;
        }
    }
    if (at >= 0) {
        kvm->prev_cursor = at;
        for (int64_t k = 1; k < np; k++) {
            const kvm_call *c = &kvm->prev_ord[(at + k) % np];
            if (!hint_unit(kvm, c->seq, c->layer, n, units)) break;
        }
    } else {
        int32_t cs = seq, cl = layer;
        for (int64_t step = 0; step < (int64_t)L * kvm->n_seqs; step++) {
            if (++cl == L) { /* the next live sequence, layer 0 */
                cl = 0;
                for (int32_t i = 1; i <= kvm->n_seqs; i++) {
                    int32_t c = (cs + i) % kvm->n_seqs;
                    if (kvm->seqs[c].used) {
                        cs = c;
                        break;
                    }
                }
            }
            if (cs == seq && cl == layer) break; /* wrapped around */
            if (!hint_unit(kvm, cs, cl, n, units)) break;
        }
    }
    for (int t = 0; t < kvm->n_tiers; t++) pam_tier_prefetch(kvm->tiers[t], kvm->hint[t], n[t]);
}

/* Marks in kvm->skip the blocks a sparse query does not attend (module
 * header) and returns how many it skips (holes left by eviction included).
 * The ranking is a stable merge sort, so it depends on the data only. */
static int64_t sparse_select(pam_kvm *kvm, const kvm_seq *s, const uint32_t *tab, int64_t nb, int32_t n_pos,
                             const float *q, int32_t n_head, int sparse) {
    int32_t bt = kvm->shape.block_tokens, hd = kvm->shape.head_dim, grp = n_head / kvm->shape.n_head_kv;
    int64_t budget = sparse ? pam_kv_sparse_tokens(&s->sparse, n_pos) : n_pos;
    int64_t first_win = (n_pos > bt ? n_pos - bt : 0) / bt;
    int multi = kvm->n_tiers > 1 && kvm->policy == PAM_KV_POLICY_PAM;
    int64_t used = 0, n_cand = 0, n_skip = 0;
    /* order scratch: candidates' logical indices, their ranking, merge buffer */
    int64_t *cand = kvm->order, *a = kvm->order + kvm->cap_req, *buf = kvm->order + 2 * kvm->cap_req;
    for (int64_t i = 0; i < nb; i++) {
        int64_t left = (int64_t)n_pos - i * bt, ntok = left < bt ? left : bt;
        kvm->skip[i] = 1;
        if (tab[i] == KVM_NO_ID) continue;
        if (!sparse || i == 0 || i >= first_win || (multi && kvm->blocks[tab[i]].tier == 0)) {
            kvm->skip[i] = 0;
            used += ntok;
        } else {
            cand[n_cand++] = i;
        }
    }
    if (n_cand > 0 && used < budget) {
        /* bounds of every query head; scores relative to each head's best */
        float *bnd = kvm->bnd, *score = kvm->bnd + (size_t)kvm->cap_req * n_head, *best = kvm->acc_ml;
        for (int32_t h = 0; h < n_head; h++) best[h] = -INFINITY;
        for (int64_t c = 0; c < n_cand; c++) {
            const float *ks = kvm->ksum + (size_t)tab[cand[c]] * ksum_floats(kvm);
            for (int32_t h = 0; h < n_head; h++) {
                const float *mn = ks + (size_t)(h / grp) * 2 * hd, *mx = mn + hd;
                float b = pam_ksum_bound_fast(q + (size_t)h * hd, mn, mx, hd);
                bnd[(size_t)c * n_head + h] = b;
                if (b > best[h]) best[h] = b;
            }
        }
        for (int64_t c = 0; c < n_cand; c++) {
            float sc = -INFINITY;
            for (int32_t h = 0; h < n_head; h++) {
                if (best[h] == -INFINITY) continue; /* only empty summaries */
                float d = bnd[(size_t)c * n_head + h] - best[h];
                if (d > sc) sc = d;
            }
            /* replay: the recorded mass ranks them; the bounds above are
             * still computed so the call costs what a real one does */
            score[c] = kvm->replay.mass ? kvm->rp_mass[cand[c]] : sc;
            a[c] = c;
        }
        /* bottom-up merge sort of candidate positions: score descending,
         * ties to the older block (measured on stories260K: as good as
         * importance, better than newer first). Not by
         * importance: that depends on when steps end, which a batch may
         * change, and the selection must depend on the data alone. */
        for (int64_t w = 1; w < n_cand; w *= 2) {
            for (int64_t lo = 0; lo < n_cand; lo += 2 * w) {
                int64_t mid = lo + w < n_cand ? lo + w : n_cand, hi = lo + 2 * w < n_cand ? lo + 2 * w : n_cand;
                int64_t x = lo, y = mid, k = lo;
                while (x < mid || y < hi) {
                    int take_y = 0;
                    if (x >= mid) take_y = 1;
                    else if (y < hi) {
                        int64_t ca = a[x], cb = a[y];
                        take_y = score[cb] > score[ca] || (score[cb] == score[ca] && cand[cb] < cand[ca]);
                    }
                    buf[k++] = take_y ? a[y++] : a[x++];
                }
            }
            memcpy(a, buf, (size_t)n_cand * sizeof *a);
        }
        for (int64_t c = 0; c < n_cand && used + bt <= budget; c++) {
            kvm->skip[cand[a[c]]] = 0;
            used += bt;
        }
    }
    for (int64_t i = 0; i < nb; i++) n_skip += kvm->skip[i];
    return n_skip;
}

/* Appends (seq, layer) to this step's call order (once per run of calls). */
static void record_call(pam_kvm *kvm, int32_t seq, int32_t layer) {
    if (kvm->n_ord > 0 && kvm->ord[kvm->n_ord - 1].seq == seq && kvm->ord[kvm->n_ord - 1].layer == layer) return;
    if (kvm->n_ord >= KVM_ORD_MAX) return;
    kvm_call *o = grow(kvm->ord, &kvm->cap_ord, kvm->n_ord + 1, sizeof *o);
    if (!o) return; /* the order is only a guess */
    kvm->ord = o;
    kvm->ord[kvm->n_ord++] = (kvm_call){seq, layer};
}

pam_status pam_kvm_attend(pam_kvm *kvm, int32_t seq, int32_t layer, int32_t n_pos, const float *q, int32_t n_head,
                          float scale, float *out) {
    kvm_seq *s = get_seq(kvm, seq);
    if (!s) return PAM_ERR(PAM_ERR_INVALID, "kv manager: no sequence %d", seq);
    if (layer < 0 || layer >= kvm->shape.n_layer) return PAM_ERR(PAM_ERR_INVALID, "kv manager: layer %d", layer);
    if (n_pos < 1 || n_pos > s->len[layer])
        return PAM_ERR(PAM_ERR_INVALID, "kv manager: attention over %d positions of a layer holding %d", n_pos,
                       s->len[layer]);
    if (n_head <= 0 || n_head % kvm->shape.n_head_kv != 0 || n_head / kvm->shape.n_head_kv > 64)
        return PAM_ERR(PAM_ERR_INVALID, "kv manager: %d query heads for %d KV heads", n_head, kvm->shape.n_head_kv);
    int32_t bt = kvm->shape.block_tokens, hd = kvm->shape.head_dim;
    int64_t nb = blocks_for(kvm, n_pos);
    PAM_TRY(ensure_attend_scratch(kvm, nb, n_head));
    const uint32_t *tab = s->table[layer];
    /* Sparse selection, or holes left by eviction: skip marks the blocks not
     * attended. None skipped takes the exact path below unchanged. */
    const uint8_t *skip = NULL;
    int sparse = kvm->summaries && sparse_on(&s->sparse) && pam_kv_sparse_tokens(&s->sparse, n_pos) < n_pos;
    int holes = 0;
    for (int64_t i = 0; kvm->evict && !sparse && i < nb && !holes; i++) holes = tab[i] == KVM_NO_ID;
    if (kvm->replay.mass) kvm->replay.mass(kvm->replay.user, seq, layer, n_pos, kvm->rp_mass, nb);
    if (sparse || holes) {
        int64_t n_skip = sparse_select(kvm, s, tab, nb, n_pos, q, n_head, sparse);
        if (n_skip > 0) skip = kvm->skip;
        if (sparse) {
            kvm->sp_skip += (uint64_t)n_skip;
            kvm->sp_att += (uint64_t)(nb - n_skip);
            s->last_call[layer] = ++kvm->n_calls;
            for (int64_t i = 0; i < nb; i++) {
                if (kvm->skip[i]) continue;
                kvm->blocks[tab[i]].pick_call = kvm->n_calls;
                kvm->blocks[tab[i]].pick_step = kvm->step + 1;
            }
        }
    }
    int staged = kvm->policy == PAM_KV_POLICY_OFFLOAD && kvm->n_tiers > 1;
    if (staged) PAM_TRY(stage_blocks(kvm, tab, skip, nb));

    /* Pieces: fixed chunks of logical blocks; within a chunk, one piece per
     * tier in order of its first block. Tier index n_tiers = staging. */
    int64_t per_chunk = KVM_PIECE_TOKENS / bt > 0 ? KVM_PIECE_TOKENS / bt : 1;
    int64_t np = 0, pos = 0;
    for (int64_t c0 = 0; c0 < nb; c0 += per_chunk) {
        int64_t c1 = c0 + per_chunk < nb ? c0 + per_chunk : nb;
        int done[KVM_MAX_TIERS + 1] = {0};
        for (int64_t i = c0; i < c1; i++) {
            if (skip && skip[i]) continue;
            int ti = kvm->blocks[tab[i]].tier;
            if (staged && ti != 0) ti = kvm->n_tiers;
            if (done[ti]) continue;
            done[ti] = 1;
            kvm_piece *p = &kvm->pieces[np++];
            p->t = ti == kvm->n_tiers ? kvm->staging : kvm->tiers[ti];
            p->first = pos;
            for (int64_t j = i; j < c1; j++) {
                if (skip && skip[j]) continue;
                const kvm_block *b = &kvm->blocks[tab[j]];
                int tj = staged && b->tier != 0 ? kvm->n_tiers : b->tier;
                if (tj != ti) continue;
                int64_t left = (int64_t)n_pos - j * bt;
                kvm->req_blocks[pos].slot = tj == kvm->n_tiers ? kvm->staged_slots[j] : b->slot;
                kvm->req_blocks[pos].n_tokens = (int32_t)(left < bt ? left : bt);
                kvm->req_ids[pos] = tab[j];
                pos++;
            }
            p->count = pos - p->first;
        }
    }
    kvm->att_q = q;
    kvm->att_n_head = n_head;
    kvm->att_scale = scale;
    /* Task 0 gives the read-ahead hint for the next call, beside the pieces. */
    kvm->att_seq = seq;
    kvm->att_layer = layer;
    kvm->att_hint = !staged && kvm->readahead;
    kvm->att_tab = tab;
    kvm->att_skip = sparse ? skip : NULL;
    kvm->att_nb = nb;
    if (kvm->att_hint) record_call(kvm, seq, layer);
    pam_pool_run(kvm->pool, piece_task, kvm, np + kvm->att_hint);
    for (int64_t i = 0; i < np; i++)
        if (kvm->pieces[i].st != PAM_OK)
            return PAM_ERR(kvm->pieces[i].st, "attention in tier %s: %s", kvm->pieces[i].t->name, kvm->pieces[i].msg);

    /* Merge in piece order. */
    size_t pf = (size_t)n_head * (2 + (size_t)hd);
    float *m = kvm->acc_ml, *l = m + n_head;
    memcpy(m, kvm->piece_out, sizeof(float) * (size_t)n_head);
    memcpy(l, kvm->piece_out + n_head, sizeof(float) * (size_t)n_head);
    memcpy(out, kvm->piece_out + 2 * n_head, sizeof(float) * (size_t)n_head * hd);
    for (int64_t i = 1; i < np; i++) {
        const float *p = kvm->piece_out + (size_t)i * pf;
        pam_attn_merge(n_head, hd, m, l, out, p, p + n_head, p + 2 * n_head);
    }
    /* Importance by-product: each block's share of the attention mass
     * (replay: the recorded share, renormalised over the attended blocks,
     * as attention over them alone would give). */
    if (kvm->replay.mass) {
        double tot = 0;
        for (int64_t i = 0; i < nb; i++)
            if (!(skip && skip[i])) tot += kvm->rp_mass[i];
        for (int64_t i = 0; tot > 0 && i < nb; i++)
            if (!(skip && skip[i])) kvm->blocks[tab[i]].mass_step += (float)(kvm->rp_mass[i] / tot);
    }
    float inv = 1.0f / (float)n_head;
    for (int64_t j = 0; !kvm->replay.mass && j < pos; j++) {
        const float *bm = kvm->blk_m + (size_t)j * n_head, *bl = kvm->blk_l + (size_t)j * n_head;
        float mass = 0.0f;
        for (int32_t h = 0; h < n_head; h++) mass += bl[h] * expf(bm[h] - m[h]) / l[h];
        kvm->blocks[kvm->req_ids[j]].mass_step += mass * inv;
    }
    if (kvm->obs.on_attend) PAM_TRY(observe_attend(kvm, seq, layer, n_pos, q, n_head, tab, nb, pos, m, l));
    pam_attn_finish(n_head, hd, l, out);
    return PAM_OK;
}

/* ---- between steps ------------------------------------------------------ */

static pam_status ensure_sched_scratch(pam_kvm *kvm) {
    if (kvm->cap_sched >= kvm->n_live) return PAM_OK;
    uint64_t nc = kvm->cap_sched ? kvm->cap_sched : 256;
    while (nc < kvm->n_live) nc *= 2;
    pam_sched_block *nb = realloc(kvm->sched_blocks, (size_t)nc * sizeof *nb);
    if (nb) kvm->sched_blocks = nb;
    pam_sched_move *nm = realloc(kvm->sched_moves, (size_t)nc * sizeof *nm);
    if (nm) kvm->sched_moves = nm;
    if (!nb || !nm) return PAM_ERR(PAM_ERR_NOMEM, "scheduler scratch");
    kvm->cap_sched = nc;
    return PAM_OK;
}

static void schedule(pam_kvm *kvm) {
    if (ensure_sched_scratch(kvm) != PAM_OK) return; /* no moves this step: placement stays valid */
    pam_sched_tier st[KVM_MAX_TIERS];
    for (int t = 0; t < kvm->n_tiers; t++) {
        st[t].capacity_blocks = kvm->tiers[t]->capacity_blocks;
        st[t].used_blocks = kvm->n_used[t];
        st[t].block_bytes = kvm->tiers[t]->block_bytes;
        st[t].read_gbps = kvm->tiers[t]->read_gbps;
    }
    size_t n = 0;
    for (uint32_t id = 0; id < kvm->n_ids; id++) {
        const kvm_block *b = &kvm->blocks[id];
        if (b->tier < 0) continue;
        /* recency-only placement ranks by write order instead (newest hottest) */
        float key = kvm->place == PAM_KV_PLACE_RECENCY ? (float)b->born : b->importance;
        kvm->sched_blocks[n++] = (pam_sched_block){
            .id = id, .tier = b->tier, .importance = key, .pinned = b->n_tokens < kvm->shape.block_tokens};
    }
    size_t nm = pam_sched_plan(st, kvm->n_tiers, kvm->sched_blocks, n, kvm->budget, kvm->sched_moves, kvm->cap_sched);
    uint64_t moved = 0;
    for (size_t i = 0; i < nm; i++) {
        const pam_sched_move *mv = &kvm->sched_moves[i];
        if (mv->id >= kvm->n_ids || kvm->blocks[mv->id].tier != mv->from || mv->to < 0 || mv->to >= kvm->n_tiers)
            continue;
        uint64_t bytes = pam_sched_move_bytes(st, mv->from, mv->to);
        if (moved + bytes > kvm->budget) break;
        if (migrate_block(kvm, mv->id, mv->to) == PAM_OK) {
            moved += bytes;
            kvm->migr_n++;
            kvm->migr_bytes += bytes;
        } else {
            kvm->migr_fail++;
        }
    }
}

pam_status pam_kvm_step_end(pam_kvm *kvm) {
    float d = kvm->decay;
    unsigned long long hist[10] = {0};
    /* bin edges 10^-(i+1); a table, not powf: this loop visits every block each step */
    static const float edge[9] = {1e-1f, 1e-2f, 1e-3f, 1e-4f, 1e-5f, 1e-6f, 1e-7f, 1e-8f, 1e-9f};
    for (uint32_t id = 0; id < kvm->n_ids; id++) {
        kvm_block *b = &kvm->blocks[id];
        if (b->tier < 0) continue;
        b->importance = d * b->importance + (1.0f - d) * b->mass_step;
        b->mass_step = 0.0f;
        int bin = 0;
        float x = b->importance;
        while (bin < 9 && x < edge[bin]) bin++;
        hist[bin]++;
    }
    if (kvm->policy == PAM_KV_POLICY_PAM && kvm->n_tiers > 1 && kvm->place != PAM_KV_PLACE_STATIC) schedule(kvm);

    pam_kvm_report *r = &kvm->report;
    memset(r, 0, sizeof *r);
    r->n_tiers = kvm->n_tiers;
    for (int t = 0; t < kvm->n_tiers; t++) {
        pam_tier_stats now;
        pam_tier_stats_get(kvm->tiers[t], &now);
        pam_kvm_tier_report *tr = &r->tiers[t];
        tr->name = kvm->tiers[t]->name;
        tr->blocks_used = kvm->n_used[t];
        tr->blocks_capacity = kvm->tiers[t]->capacity_blocks;
        tr->bytes_read_step = now.bytes_read - kvm->prev[t].bytes_read;
        tr->attend_ms_step = (double)(now.attend_ns - kvm->prev[t].attend_ns) / 1e6;
        double gbps = kvm->tiers[t]->read_gbps > 0 ? kvm->tiers[t]->read_gbps : 1.0;
        tr->bound_ms_step = (double)tr->bytes_read_step / (gbps * 1e9) * 1e3;
        kvm->prev[t] = now;
    }
    r->migrations_step = kvm->migr_n;
    r->migration_bytes_step = kvm->migr_bytes;
    r->migration_failures = kvm->migr_fail;
    r->n_blocks = kvm->n_live;
    r->staged_bytes_step = kvm->staged_bytes_step;
    r->sparse_attended_step = kvm->sp_att;
    r->sparse_skipped_step = kvm->sp_skip;
    r->evicted_blocks = kvm->n_evicted;

    if (kvm->trace) {
        FILE *f = kvm->trace;
        fprintf(f, "{\"step\":%llu,\"policy\":\"%s\",\"tiers\":[", (unsigned long long)kvm->step, policy_name(kvm->policy));
        for (int t = 0; t < r->n_tiers; t++) {
            const pam_kvm_tier_report *tr = &r->tiers[t];
            fprintf(f, "%s{\"name\":\"", t ? "," : "");
            for (const char *c = tr->name; *c; c++) {
                if (*c == '"' || *c == '\\') fputc('\\', f);
                if ((unsigned char)*c >= 0x20) fputc(*c, f);
            }
            fprintf(f, "\",\"blocks\":%llu,\"capacity\":%llu,\"bytes_read\":%llu,\"attend_ms\":%.4f,\"bound_ms\":%.4f}",
                    (unsigned long long)tr->blocks_used, (unsigned long long)tr->blocks_capacity,
                    (unsigned long long)tr->bytes_read_step, tr->attend_ms_step, tr->bound_ms_step);
        }
        fprintf(f, "],\"migrations\":%llu,\"migration_bytes\":%llu,\"migration_failures\":%llu,\"staged_bytes\":%llu,"
                   "\"importance_hist\":[",
                (unsigned long long)r->migrations_step, (unsigned long long)r->migration_bytes_step,
                (unsigned long long)r->migration_failures, (unsigned long long)r->staged_bytes_step);
        for (int i = 0; i < 10; i++) fprintf(f, "%s%llu", i ? "," : "", hist[i]);
        fprintf(f, "]");
        if (kvm->summaries || kvm->evict)
            fprintf(f, ",\"sparse_attended\":%llu,\"sparse_skipped\":%llu,\"evicted\":%llu",
                    (unsigned long long)r->sparse_attended_step, (unsigned long long)r->sparse_skipped_step,
                    (unsigned long long)r->evicted_blocks);
        fprintf(f, "}\n");
        fflush(f);
    }
    kvm->step++;
    if (kvm->n_ord > 0) { /* this step's call order predicts the next one's */
        kvm_call *o = kvm->prev_ord;
        int64_t c = kvm->cap_prev_ord;
        kvm->prev_ord = kvm->ord, kvm->cap_prev_ord = kvm->cap_ord, kvm->n_prev_ord = kvm->n_ord;
        kvm->ord = o, kvm->cap_ord = c, kvm->n_ord = 0;
        kvm->prev_cursor = -1;
    }
    kvm->migr_n = 0;
    kvm->migr_bytes = 0;
    kvm->staged_bytes_step = 0;
    kvm->sp_att = kvm->sp_skip = 0;
    return PAM_OK;
}

void pam_kvm_report_get(const pam_kvm *kvm, pam_kvm_report *out) { *out = kvm->report; }

float pam_kvm_block_importance(const pam_kvm *kvm, int32_t seq, int32_t layer, int32_t block) {
    const kvm_seq *s = get_seq(kvm, seq);
    if (!s || layer < 0 || layer >= kvm->shape.n_layer || block < 0 || block >= s->n_blocks[layer]) return -1.0f;
    if (s->table[layer][block] == KVM_NO_ID) return -1.0f;
    return kvm->blocks[s->table[layer][block]].importance;
}

pam_status pam_kvm_seq_set_sparse(pam_kvm *kvm, int32_t seq, const pam_kv_sparse *sp) {
    kvm_seq *s = get_seq(kvm, seq);
    if (!s) return PAM_ERR(PAM_ERR_INVALID, "kv manager: no sequence %d", seq);
    pam_kv_sparse v = sp ? *sp : kvm->sparse_default;
    if (v.tokens < 0 || !(v.frac >= 0.0f && v.frac <= 1.0f))
        return PAM_ERR(PAM_ERR_INVALID, "kv manager: bad sparse budget (%d tokens, share %g)", (int)v.tokens,
                       (double)v.frac);
    if (sparse_on(&v) && !kvm->summaries)
        return PAM_ERR(PAM_ERR_INVALID, "sparse attention needs key summaries: start with a --kv-sparse budget");
    s->sparse = v;
    return PAM_OK;
}

int64_t pam_kvm_last_pick(const pam_kvm *kvm, int32_t seq, int32_t layer, uint8_t *picked, int64_t cap) {
    const kvm_seq *s = get_seq(kvm, seq);
    if (!s || layer < 0 || layer >= kvm->shape.n_layer || s->last_call[layer] == 0) return 0;
    int64_t nb = s->n_blocks[layer];
    for (int64_t i = 0; i < nb && i < cap; i++) {
        uint32_t id = s->table[layer][i];
        picked[i] = id != KVM_NO_ID && kvm->blocks[id].pick_call == s->last_call[layer];
    }
    return nb;
}

int pam_kvm_sparse_info(const pam_kvm *kvm, pam_kv_sparse *def) {
    if (def) *def = kvm->sparse_default;
    return kvm->summaries;
}

int pam_kvm_evicts(const pam_kvm *kvm) { return kvm->evict; }
