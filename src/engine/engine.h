/* Serving engine: a request queue and an iteration-level scheduler
 * (continuous batching) over one model.
 *
 * One engine thread owns every context. Each iteration it
 *   1. retires cancelled requests (their slot is free for the next admission),
 *   2. admits queued requests while a slot is free (FIFO), choosing the free
 *      slot whose cached tokens share the longest prefix with the prompt,
 *   3. runs ONE pam_forward_batch over the decode token of every running
 *      sequence plus up to prefill_chunk prompt tokens of the sequences still
 *      prefilling (oldest first), so weights are read once per step,
 *   4. samples, detokenizes, applies stop strings and publishes new text.
 *
 * KV backend: today a slot is a per-sequence context (pam_ctx_create_ex,
 * n_ctx tokens each), so "free KV capacity" is "a free slot" and prefix
 * caching works at slot granularity (a finished request's tokens stay in its
 * slot until the slot is reused; a new prompt sharing a prefix with them only
 * prefills the rest). The paged, tiered cache will replace the slot with a
 * block table; the API below does not expose slots, so callers do not change.
 *
 * Determinism (DESIGN.md §2.9): pam_forward_batch gives every token the
 * logits it would get alone, and sampling uses a per-request seeded sampler,
 * so a request's output does not depend on what runs beside it, on prefill
 * chunking, or on prefix reuse.
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
#include "model/model.h"
#include "pam.h"

#define PAM_ENGINE_MAX_STOP 16
#define PAM_HIST_MAX_BUCKETS 16

typedef struct pam_engine_params {
    int32_t n_slots;       /* sequences decoded together (--parallel) */
    int32_t n_ctx;         /* context per slot; <= 0: the model's training context */
    pam_dtype kv_type;     /* PAM_DT_F16 (default) or PAM_DT_F32 */
    int32_t n_queue;       /* waiting requests beyond the running ones; submit fails with PAM_ERR_FULL past it */
    int32_t prefill_chunk; /* prompt tokens per step, over all prefilling sequences */
    int prefix_cache;      /* reuse a free slot's cached prefix */
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
    pam_sampler_params sampling;
    int32_t max_tokens; /* <= 0: until end of generation or a full context */
    int32_t n_stop;
    const char *stop[PAM_ENGINE_MAX_STOP]; /* copied at submit; not emitted */
    int ignore_eos;
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
 * prompt or bad sampling parameters, PAM_ERR_RANGE if the prompt does not
 * leave room for one generated token in the context, PAM_ERR_FULL if the
 * queue is full or the engine is draining. */
pam_status pam_engine_submit(pam_engine *e, const int32_t *prompt, int32_t n_prompt, const pam_request_params *p,
                             pam_request **out);

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
} pam_request_update;

/* Waits up to timeout_ms (0: do not wait) until there is new text or the
 * request is done, and takes it. Returns 1 if the update carries text or
 * completion, 0 on timeout. */
int pam_request_next(pam_request *r, int64_t timeout_ms, pam_request_update *u);
/* Generated token ids so far (valid until the next call or release). Safe
 * once done; while running it copies under the engine's lock. */
int32_t pam_request_tokens(pam_request *r, int32_t *out, int32_t cap);
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

typedef struct pam_engine_stats {
    int32_t n_slots, n_ctx;
    int32_t n_queued, n_running;
    uint64_t n_submitted, n_rejected_full;
    uint64_t n_finished[PAM_FINISH_ERROR + 1]; /* by pam_finish */
    uint64_t n_prompt_tokens, n_prefilled_tokens, n_generated_tokens;
    uint64_t n_steps;
    uint64_t prefix_lookups, prefix_hits, prefix_tokens_reused;
    uint64_t kv_tokens;          /* tokens held in all slots (running and cached) */
    uint64_t kv_bytes_used;      /* their KV bytes */
    uint64_t kv_bytes_capacity;  /* KV bytes of all slots */
    uint64_t kv_block_tokens;    /* accounting block size (tokens) for kv_blocks_* */
    uint64_t kv_blocks_used, kv_blocks_capacity;
    uint64_t n_migrations;       /* always 0 until the tiered cache lands */
    pam_histogram ttft;          /* submit -> first token */
    pam_histogram tpot;          /* mean time per output token after the first, per request */
} pam_engine_stats;

void pam_engine_get_stats(pam_engine *e, pam_engine_stats *s);

#endif
