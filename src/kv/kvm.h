/* KV manager: the paged, tiered KV cache (DESIGN.md §2.2–2.5).
 *
 * Owns the tiers (ordered fastest first), the block pool (reference-counted
 * blocks, each living in one (tier, slot)), per-sequence block tables (one per
 * layer: logical block -> block id), per-block importance, and runs
 * PAMattention: every tier holding blocks of a sequence computes its partial
 * concurrently on the thread pool and the partials are merged exactly.
 * Between steps, pam_kvm_step_end() updates importance, asks the scheduler
 * (kv/sched.h) for moves and migrates blocks (copy, verify, switch, free old;
 * a failure at any point leaves the old copy in use).
 *
 * Policies: PAM (above), OFFLOAD (before attention, copy every block outside
 * the fastest tier into a staging area in the fastest tier, then compute
 * there: the vLLM-style baseline), SINGLE (everything in tiers[0]; fails
 * cleanly with PAM_ERR_FULL when it is full).
 *
 * Thread safety: one caller thread drives a pam_kvm; it uses the pool
 * internally. */
#ifndef PAM_KV_KVM_H
#define PAM_KV_KVM_H

#include <stdint.h>
#include <stdio.h>

#include "core/threadpool.h"
#include "kv/tier.h"
#include "pam.h"

typedef enum pam_kv_policy {
    PAM_KV_POLICY_PAM = 0,
    PAM_KV_POLICY_OFFLOAD = 1,
    PAM_KV_POLICY_SINGLE = 2,
} pam_kv_policy;

/* Sparse attention (DESIGN.md §2.7, opt-in): a budget of attended tokens
 * per sequence, per layer, per query; tokens > 0 is a count, else frac in
 * (0, 1] is a share of the query's context; both 0 is exact attention. */
typedef struct pam_kv_sparse {
    int32_t tokens;
    float frac;
} pam_kv_sparse;

/* Where the scheduler puts blocks (measurement of placement policies):
 * by importance (default), by recency only (newest blocks fastest), or
 * static (blocks stay where they were written). */
typedef enum pam_kv_place {
    PAM_KV_PLACE_IMPORTANCE = 0,
    PAM_KV_PLACE_RECENCY = 1,
    PAM_KV_PLACE_STATIC = 2,
} pam_kv_place;

typedef struct pam_kvm_config {
    pam_kv_shape shape;
    pam_tier **tiers; /* ownership passes to the kvm */
    int n_tiers;
    pam_kv_policy policy;
    uint64_t migrate_bytes_per_step; /* budget; 0 = default (e.g. 64 MiB) */
    float importance_decay;          /* EMA factor in (0,1]; 0 = default 0.9 */
    FILE *trace;                     /* --kv-trace: one JSON line per step, or NULL (not owned) */
    int readahead_off;               /* 1: no read-ahead hints to the tiers (A/B measurements) */
    /* Sparse attention: the default budget of new sequences ({0, 0}: exact).
     * Key summaries are kept (host memory: 2*head_dim floats per KV head per
     * block) when a budget is set or sparse_allow is 1, and sequences can
     * only go sparse then. */
    pam_kv_sparse sparse;
    int sparse_allow;
    /* 1: when every tier is full, a sequence that needs a block drops its
     * own lowest-importance block of that layer (never block 0, the sink,
     * nor the blocks of its last block_tokens positions) instead of failing
     * with PAM_ERR_FULL. Attention skips dropped blocks. */
    int evict;
    pam_kv_place place;
} pam_kvm_config;

/* Parses a --kv-sparse budget: a token count ("256") or a percentage of the
 * context ("25%", "12.5%"); "0" or "off" is exact. PAM_ERR_INVALID with a
 * message otherwise. */
pam_status pam_kv_sparse_parse(const char *s, pam_kv_sparse *out);
/* Attended-token budget for a query over n_pos positions (n_pos when exact). */
int32_t pam_kv_sparse_tokens(const pam_kv_sparse *sp, int32_t n_pos);

typedef struct pam_kvm pam_kvm;

pam_status pam_kvm_create(const pam_kvm_config *cfg, pam_pool *pool, pam_kvm **out);
/* Frees every block, sequence and tier. */
void pam_kvm_destroy(pam_kvm *kvm);

/* Sequences ---------------------------------------------------------------- */
pam_status pam_kvm_seq_create(pam_kvm *kvm, int32_t *seq);
/* Drops the sequence's references; blocks no one references are freed at once. */
void pam_kvm_seq_free(pam_kvm *kvm, int32_t seq);
/* 1 if the manager keeps key summaries (sequences may go sparse); its
 * default budget goes to *def. */
int pam_kvm_sparse_info(const pam_kvm *kvm, pam_kv_sparse *def);
/* 1 if the manager was created with evict on. */
int pam_kvm_evicts(const pam_kvm *kvm);
/* Sets the sequence's sparse budget (NULL: the config's default). A budget
 * on a manager without key summaries (config sparse_allow 0 and no default
 * budget) is PAM_ERR_INVALID. */
pam_status pam_kvm_seq_set_sparse(pam_kvm *kvm, int32_t seq, const pam_kv_sparse *sp);
int32_t pam_kvm_seq_len(const pam_kvm *kvm, int32_t seq);
/* Admission: makes sure blocks for n_tokens more tokens of every layer can
 * be allocated (reserving them). PAM_ERR_FULL, with a message giving the
 * capacity, when all tiers together cannot hold them; nothing changes then. */
pam_status pam_kvm_reserve(pam_kvm *kvm, int32_t seq, int32_t n_tokens);

/* Stores K/V rows (n_head_kv*head_dim floats) of the token at pos of layer.
 * Positions are appended in order per layer (pos == current length of that
 * layer, or an overwrite of an existing position). New blocks go to the
 * fastest tier with room. */
pam_status pam_kvm_store(pam_kvm *kvm, int32_t seq, int32_t layer, int32_t pos, const float *k,
                         const float *v);

/* Attention of one query token (n_head heads, q: n_head*head_dim) over
 * positions 0..n_pos-1 of layer: out = softmax(q k^T * scale) v, exact merge
 * of the per-tier partials. Also accumulates the importance by-product. */
pam_status pam_kvm_attend(pam_kvm *kvm, int32_t seq, int32_t layer, int32_t n_pos, const float *q,
                          int32_t n_head, float scale, float *out);

/* Between decode steps: importance EMA update, scheduling, migration within
 * budget, trace line. Failures of individual migrations are counted and
 * leave blocks where they were; they are not errors of the step. */
pam_status pam_kvm_step_end(pam_kvm *kvm);

/* Tests and benchmarks ----------------------------------------------------- */
/* Moves one block (seq, layer, logical block) to tier index `to` now
 * (copy, verify, switch, free). On failure the block stays where it was. */
pam_status pam_kvm_migrate(pam_kvm *kvm, int32_t seq, int32_t layer, int32_t block, int to);
/* Tier index of a logical block; -1 if none (or evicted). */
int pam_kvm_block_tier(const pam_kvm *kvm, int32_t seq, int32_t layer, int32_t block);
/* Fills positions 0..n-1 of every layer of seq with reproducible synthetic
 * K/V (benchmarks at depth without a long prefill). */
pam_status pam_kvm_fill_synthetic(pam_kvm *kvm, int32_t seq, int32_t n, uint64_t seed);

typedef struct pam_kvm_tier_report {
    const char *name;
    uint64_t blocks_used, blocks_capacity;
    uint64_t bytes_read_step; /* during the last step */
    double attend_ms_step;
    double bound_ms_step; /* bytes_read_step / read_gbps */
} pam_kvm_tier_report;
typedef struct pam_kvm_report {
    int n_tiers;
    pam_kvm_tier_report tiers[8];
    uint64_t migrations_step, migration_bytes_step, migration_failures;
    uint64_t n_blocks;
    uint64_t staged_bytes_step; /* offload policy: bytes copied into the staging area */
    /* sparse attention during the last step: blocks attended and skipped
     * (summed over calls); evicted: blocks dropped by --kv-evict, in total */
    uint64_t sparse_attended_step, sparse_skipped_step, evicted_blocks;
} pam_kvm_report;
/* The report of the last pam_kvm_step_end (zeros before the first). */
void pam_kvm_report_get(const pam_kvm *kvm, pam_kvm_report *out);

/* Sharing ------------------------------------------------------------------- */
/* A new sequence referencing every block of src (refcounts + 1); a later
 * store into a shared block copies it first (copy-on-write). */
pam_status pam_kvm_seq_fork(pam_kvm *kvm, int32_t src, int32_t *dst);
/* Keeps the first n_tokens positions of every layer: blocks past them lose
 * this sequence's reference (freed if no one else holds them), a partially
 * kept block stays (shared ones are copied on the next store), and the
 * sequence's reservation is given back. n_tokens >= the length only drops
 * the reservation. PAM_ERR_INVALID for a bad sequence or n_tokens < 0. */
pam_status pam_kvm_seq_truncate(pam_kvm *kvm, int32_t seq, int32_t n_tokens);

/* Which logical blocks the last sparse pam_kvm_attend of (seq, layer)
 * attended: picked[b] = 1 or 0 for b < n_blocks (at most cap written).
 * Returns the number of blocks of that call, 0 if none was sparse. */
int64_t pam_kvm_last_pick(const pam_kvm *kvm, int32_t seq, int32_t layer, uint8_t *picked, int64_t cap);

/* Observation (analysis tools such as `pam locality`) ------------------------ */
/* Sees every K row pam_kvm_store stores (n_head_kv*head_dim floats, before
 * the tier encodes it) and, after each pam_kvm_attend, the query and each
 * logical block's share of every query head's attention mass: mass[b*n_head
 * + h] for blocks b = 0..n_blocks-1 in logical order, summing to 1 over b for
 * each h. The callbacks run on the caller's thread; either may be NULL. */
typedef struct pam_kvm_observer {
    void *user;
    void (*on_store)(void *user, int32_t seq, int32_t layer, int32_t pos, const float *k);
    void (*on_attend)(void *user, int32_t seq, int32_t layer, int32_t n_pos, const float *q, int32_t n_head,
                      const float *mass, int64_t n_blocks);
} pam_kvm_observer;
/* Installs obs (copied), or removes the observer when obs is NULL. Without
 * one, attention does no extra work. */
void pam_kvm_set_observer(pam_kvm *kvm, const pam_kvm_observer *obs);

/* Replay (benchmarks on random weights, which have no locality): the mass
 * callback gives each logical block's share of a call's attention mass
 * (mass[b], b < n_blocks, summing to 1), e.g. from a recorded trace of a
 * real model (kv/loctrace.h). With it set, a sparse call ranks the blocks it
 * may skip by that mass (higher first, ties to the older block) instead of
 * the key-summary bound (the bounds are still computed, so the call costs
 * what it would), and the importance by-product of every call is that mass
 * renormalised over the blocks attended, instead of the computed one. The
 * attention itself still runs over the attended blocks through their tiers:
 * only which blocks are hot is replayed. The callback runs on the caller's
 * thread and must depend on its arguments only (determinism). NULL removes
 * it. */
typedef struct pam_kvm_replay {
    void *user;
    void (*mass)(void *user, int32_t seq, int32_t layer, int32_t n_pos, float *mass, int64_t n_blocks);
} pam_kvm_replay;
void pam_kvm_set_replay(pam_kvm *kvm, const pam_kvm_replay *rp);

/* Decodes every token of full block `block` of layer to f32 rows
 * (block_tokens rows of n_head_kv*head_dim each for k and v): what the
 * remote tier publishes. PAM_ERR_INVALID when the block is not full. */
pam_status pam_kvm_read_block(pam_kvm *kvm, int32_t seq, int32_t layer, int32_t block, float *k, float *v);

/* Introspection ------------------------------------------------------------- */
const pam_kv_shape *pam_kvm_shape(const pam_kvm *kvm);
int pam_kvm_n_tiers(const pam_kvm *kvm);
/* Tier i (0 = fastest), still owned by the kvm; NULL when out of range. */
pam_tier *pam_kvm_tier(pam_kvm *kvm, int i);
/* Importance (EMA of attention mass) of a logical block; -1 if none (or
 * evicted). */
float pam_kvm_block_importance(const pam_kvm *kvm, int32_t seq, int32_t layer, int32_t block);

#endif
