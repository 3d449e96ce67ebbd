/* Serving engine: a request queue and an iteration-level scheduler
 * (continuous batching) over one model and one paged, tiered KV cache.
 *
 * One engine thread owns every context and the KV manager. Each iteration it
 *   1. retires cancelled requests (running or paused),
 *   2. admits: resumes paused requests and starts queued ones (FIFO, higher
 *      priority first among the paused) while a batch slot is free and the
 *      KV cache can reserve the prompt plus a decode reserve (evicting cached
 *      prefixes, least recently used first, when it cannot); when every slot
 *      is busy and the queue head has a higher priority than a running
 *      request, that request is preempted (below),
 *   3. runs ONE pam_forward_batch_ex over the decode token of every running
 *      sequence plus a budget of prompt tokens of the sequences still
 *      prefilling (engine/prefill.h: first-token waiters oldest first, the
 *      budget prefill_chunk, up to prefill_burst while first tokens wait),
 *      so weights are read once per step, then pam_kvm_step_end
 *      (importance, scheduling, migrations between steps),
 *   4. samples, detokenizes, applies stop strings and publishes new text.
 *
 * KV: every request's context is backed by a sequence of one pam_kvm
 * (kv/kvm.h) shared by all requests. Admission is by free KV capacity across
 * all tiers (pam_kvm_reserve), not by a fixed per-slot context.
 *
 * Prefix cache: a finished request's sequence stays cached (its blocks keep
 * their references) with its tokens and a hash chain over its full blocks
 * (key_i = hash(key_{i-1}, tokens of block i)). A new prompt takes the entry
 * with the longest matching chain of full blocks (plus matching tokens of the
 * next, partial block), forks that sequence (pam_kvm_seq_fork), truncates it
 * to the match and prefills only the rest; the first store into a shared
 * block copies it (copy-on-write in the KV manager). Entries are evicted LRU.
 *
 * Preemption by demotion: a preempted request leaves the batch and its
 * blocks migrate to the slowest tier (pam_kvm_migrate: no recomputation); it
 * resumes when a slot frees and its blocks move back through the normal
 * scheduler. Placement never changes results beyond rounding (exact merge).
 *
 * Several choices (pam_engine_submit_n): the first request prefills the
 * prompt; in the step that completes it the others fork its sequence
 * (pam_kvm_seq_fork), truncated to all but the last prompt token, which each
 * recomputes for its own first draw, so the prompt's blocks are shared and a
 * partly filled block is copied on its first store (copy-on-write). Each
 * choice has its own sampler, seeded with seed + i for choice i, and is an
 * ordinary running request from then on (its own slot; waiting in the paused
 * list, holding its KV, while every slot is busy).
 *
 * Determinism (DESIGN.md §2.9): pam_forward_batch gives every token the
 * logits it would get alone, and sampling uses a per-request seeded sampler,
 * so a request's output does not depend on what runs beside it, on prefill
 * chunking, on prefix reuse or on preemption (with exact tiers).
 *
 * Threads: every function here may be called from any thread. A pam_request
 * belongs to the caller until pam_request_release(); all requests must be
 * released before pam_engine_destroy(). */
#ifndef PAM_ENGINE_ENGINE_H
#define PAM_ENGINE_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "core/threadpool.h"
#include "engine/sampler.h"
#include "kernels/dtype.h"
#include "kv/kv_remote.h"
#include "model/model.h"
#include "pam.h"

#define PAM_ENGINE_MAX_STOP 16
#define PAM_ENGINE_MAX_CHOICES 128
#define PAM_HIST_MAX_BUCKETS 16

typedef struct pam_engine_params {
    int32_t n_slots;       /* sequences decoded together (--parallel) */
    int32_t n_ctx;         /* longest sequence (prompt + output); <= 0: the model's training context */
    pam_kv_type kv_type;   /* without a kvm: what the engine's own dram tier stores (default f16) */
    int32_t n_queue;       /* waiting requests beyond the running ones; submit fails with PAM_ERR_FULL past it */
    int32_t prefill_chunk; /* prompt tokens per step, over all prefilling sequences */
    int32_t prefill_burst; /* the per-step prompt budget rises up to this while requests wait for their
                            * first token (<= prefill_chunk: never rises; default 2048) */
    int prefix_cache;      /* keep finished sequences as cached prefixes and reuse them */
    int32_t n_prefix_entries; /* cached prefixes kept at most; <= 0: 4 * n_slots + 4 */
    /* The KV manager (borrowed; must use the same pool and outlive the
     * engine; its block size and tiers are the caller's). NULL: the engine
     * builds and owns one dram tier of n_slots * n_ctx tokens (16-token
     * blocks, one spare block per slot for copy-on-write). */
    pam_kvm *kvm;
    /* The remote KV tier (borrowed, outlives the engine), or NULL. After a
     * local prefix-cache miss, admission fetches the prompt's further full
     * blocks from it (verified; the first missing or rejected block ends
     * the reuse); every full block a request computes is queued for it. */
    pam_kv_remote *remote;
    /* The persistent local journal (--kv-persist; same interface, a
     * "file:DIR" pam_kv_remote), or NULL: looked up before the remote tier,
     * written like it, so a restarted server finds its prefixes again. */
    pam_kv_remote *persist;
} pam_engine_params;

void pam_engine_params_default(pam_engine_params *p);

typedef enum pam_finish {
    PAM_FINISH_NONE = 0,
    PAM_FINISH_STOP,      /* end-of-generation token or a stop string */
    PAM_FINISH_LENGTH,    /* max_tokens or the context is full */
    PAM_FINISH_CANCELLED, /* pam_request_cancel / release before the end */
    PAM_FINISH_ERROR,     /* the forward pass failed */
} pam_finish;

const char *pam_finish_str(pam_finish f); /* "stop", "length", "cancelled", "error" */

typedef struct pam_request_params {
    pam_sampler_params sampling; /* sampling.repeat_last_n -1: the whole context */
    int32_t max_tokens; /* <= 0: until end of generation or a full context */
    int32_t n_stop;
    const char *stop[PAM_ENGINE_MAX_STOP]; /* copied at submit; not emitted */
    int ignore_eos;
    int32_t priority; /* higher preempts lower when every slot is busy; default 0 */
    /* Log-probabilities (engine/sampler.h says of which distribution): < 0
     * none; k >= 0: of each generated token with its k (<= 20) most likely
     * alternatives (pam_request_update.logprobs). */
    int32_t logprobs;
    /* < 0 none; k >= 0: of every prompt token but the first, given the ones
     * before it, from the model's logits (no bias or penalties), with k
     * alternatives (pam_request_prompt_logprobs). Every prompt position is
     * computed: such a request does not reuse cached prefixes. */
    int32_t prompt_logprobs;
    int score_only; /* generate nothing: prefill the prompt and finish with "length" */
    /* Sparse attention for this request (kv/kvm.h pam_kv_sparse: tokens, or
     * a share of the context; both 0: exact); kv_sparse_given 0 takes the KV
     * manager's default. A budget other than the default needs a manager
     * with key summaries (PAM_ERR_INVALID otherwise) and keeps the request
     * out of the prefix cache: its KV is not what the others compute. */
    int kv_sparse_given;
    pam_kv_sparse kv_sparse;
} pam_request_params;

void pam_request_params_default(pam_request_params *p);

typedef struct pam_engine pam_engine;
typedef struct pam_request pam_request;

pam_status pam_engine_create(const pam_model *m, pam_pool *pool, const pam_engine_params *p, pam_engine **out);
/* Cancels whatever still runs and joins the engine thread. */
void pam_engine_destroy(pam_engine *e);
int32_t pam_engine_n_ctx(const pam_engine *e);
int32_t pam_engine_n_slots(const pam_engine *e);

/* Queues a request for prompt tokens (copied). PAM_ERR_INVALID for an empty
 * prompt or bad sampling parameters, PAM_ERR_RANGE (the message says by how
 * much) if the prompt does not leave room for one generated token in the
 * context, if prompt + max_tokens exceeds the context, or if prompt +
 * max_tokens (+1 without max_tokens) exceeds what all KV tiers can hold for
 * one sequence; PAM_ERR_FULL if the queue is full or the engine is
 * draining. A request that was accepted is never cut short for lack of KV:
 * when the tiers fill up mid-generation it yields its slot and KV and
 * resumes later with the same output. Prompt plus output never exceed
 * the context. */
pam_status pam_engine_submit(pam_engine *e, const int32_t *prompt, int32_t n_prompt, const pam_request_params *p,
                             pam_request **out);
/* n (1..PAM_ENGINE_MAX_CHOICES) choices for one prompt, out[0..n): choice i
 * samples with seed p->sampling.seed + i (mod 2^64), so choice 0 is what
 * pam_engine_submit gives. The group takes one place in the queue and is
 * admitted when the KV cache can reserve the prompt and every choice's
 * decode reserve. Cancelling (or releasing) out[0] before its prompt is
 * prefilled ends the others too; after that each stands alone. */
pam_status pam_engine_submit_n(pam_engine *e, const int32_t *prompt, int32_t n_prompt, const pam_request_params *p,
                               int32_t n, pam_request **out);

/* Stops admitting new requests (submit fails with PAM_ERR_FULL) and waits
 * until every queued and running request has finished. */
void pam_engine_drain(pam_engine *e);

typedef struct pam_request_update {
    char *text;   /* text produced since the previous call (malloc'd, caller frees), or NULL */
    size_t len;
    int done;     /* no more text will come */
    pam_finish finish;
    int32_t n_prompt_tokens;
    int32_t n_completion_tokens;
    int32_t n_cached_tokens; /* prompt tokens reused from the prefix cache */
    /* With params.logprobs >= 0: one entry per generated token whose text is
     * in this update (or, at the end, that produced no text), in order;
     * text_off is the byte offset of its text in the request's whole output.
     * Tokens cut off with a stop string are left out. malloc'd, caller frees. */
    pam_token_logprob *logprobs;
    int32_t n_logprobs;
} pam_request_update;

/* Waits up to timeout_ms (0: do not wait) until there is new text or the
 * request is done, and takes it. Returns 1 if the update carries text or
 * completion, 0 on timeout. */
int pam_request_next(pam_request *r, int64_t timeout_ms, pam_request_update *u);
/* Calls fn(arg) whenever r gets new text or finishes (and once now if an
 * update is already waiting), so an event loop can wait without a thread.
 * fn runs on the engine's thread with the engine's lock held: it must only
 * wake its owner, never call back into the engine. NULL fn stops it;
 * pam_request_release stops it too. */
void pam_request_set_notify(pam_request *r, void (*fn)(void *), void *arg);
/* Generated token ids so far (valid until the next call or release). Safe
 * once done; while running it copies under the engine's lock. */
int32_t pam_request_tokens(pam_request *r, int32_t *out, int32_t cap);
/* With params.prompt_logprobs >= 0, once the prompt has been prefilled:
 * n_prompt entries, entry i for prompt token i (entry 0 has logprob NaN and
 * no alternatives: nothing precedes it); NULL before that or without them.
 * Valid until release. */
const pam_token_logprob *pam_request_prompt_logprobs(pam_request *r, int32_t *n);
/* Asks the engine to stop the request; its slot is free before the next step. */
void pam_request_cancel(pam_request *r);
/* The caller is done with r (cancels it if still running). */
void pam_request_release(pam_request *r);

typedef struct pam_histogram {
    int n_buckets;
    double le[PAM_HIST_MAX_BUCKETS]; /* upper bounds in seconds; +Inf is implicit */
    uint64_t count[PAM_HIST_MAX_BUCKETS + 1]; /* per bucket (not cumulative); last is +Inf */
    double sum;
    uint64_t n;
} pam_histogram;

#define PAM_ENGINE_MAX_TIERS 8

typedef struct pam_engine_tier_stats {
    char name[64];
    uint64_t blocks_used, blocks_capacity; /* blocks of one layer each */
    uint64_t block_bytes;
} pam_engine_tier_stats;

typedef struct pam_engine_stats {
    int32_t n_slots, n_ctx;
    int32_t n_queued, n_running, n_paused;
    uint64_t n_submitted, n_rejected_full;
    uint64_t n_finished[PAM_FINISH_ERROR + 1]; /* by pam_finish */
    uint64_t n_prompt_tokens, n_prefilled_tokens, n_generated_tokens;
    uint64_t n_steps;
    uint64_t prefix_lookups, prefix_hits, prefix_tokens_reused;
    uint64_t prefix_evictions; /* cached prefixes dropped (LRU, for space or over the entry limit) */
    uint64_t inflight_shared_tokens; /* prompt tokens forked from a running request (part of prefix_tokens_reused) */
    uint64_t inflight_waits;         /* admissions put off a step for a running request's prefill of a shared prefix */
    int32_t prefix_entries;    /* cached prefixes now */
    uint64_t kv_tokens;          /* token positions held by running, paused and cached sequences (shared ones counted per sequence) */
    uint64_t kv_bytes_used;      /* bytes of the live blocks, all tiers */
    uint64_t kv_bytes_capacity;  /* all tiers */
    uint64_t kv_block_tokens;    /* tokens per block */
    uint64_t kv_blocks_used, kv_blocks_capacity; /* all tiers */
    int kv_n_tiers;
    pam_engine_tier_stats kv_tiers[PAM_ENGINE_MAX_TIERS]; /* fastest first */
    uint64_t n_migrations;         /* blocks moved between tiers (scheduler and demotion) */
    uint64_t n_migration_failures; /* moves that failed and left the block where it was */
    uint64_t n_preempted, n_resumed, n_demoted_blocks;
    uint64_t n_requeued; /* ran out of KV: gave it up and went back to the queue */
    uint64_t remote_tokens_reused; /* prompt tokens fetched from the remote tier (part of prefix_tokens_reused) */
    int remote_enabled;
    pam_kv_remote_stats remote;    /* when remote_enabled */
    uint64_t persist_tokens_reused; /* prompt tokens read from the persistent journal */
    int persist_enabled;
    pam_kv_remote_stats persist;   /* when persist_enabled */
    pam_histogram ttft;          /* submit -> first token */
    pam_histogram tpot;          /* mean time per output token after the first, per request */
} pam_engine_stats;

void pam_engine_get_stats(pam_engine *e, pam_engine_stats *s);

#endif
