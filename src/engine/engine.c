/* Continuous-batching engine over the paged KV cache (see engine.h for the
 * scheduling loop, the prefix cache and preemption).
 *
 * States of a request: QUEUED (in the FIFO, no KV) -> RUNNING (owns a kvm
 * sequence and a context; in a batch slot, or paused: in the paused list,
 * out of the batch, its blocks demoted) -> DONE. A queued request that is
 * cancelled goes straight to DONE. The other choices of a group wait in
 * WAITING (in no list: their first request holds them in sibs) until the
 * first one's prompt is prefilled; then they fork its KV and are RUNNING, or
 * DONE if the first one ended before that. Invariants:
 *   - only the engine thread touches the KV manager, contexts, the prefix
 *     cache and the engine-side fields of a running request (n_past,
 *     sampler, detok, gen text, seq, ctx);
 *   - everything a client reads (out text, done, counts, stats) and the
 *     queue are guarded by e->mu;
 *   - positions 0 .. n_past-1 of a running request's sequence hold the KV of
 *     its prompt followed by its generated tokens; a prefix-cache entry's
 *     sequence holds exactly the KV of its tok[0 .. n_tok), and is never
 *     written (requests fork it), which is what makes prefix reuse exact;
 *   - a running request's sequence has reserved blocks for what the next
 *     step stores (admission and the pre-step check), so a forward pass
 *     never finds the cache full;
 *   - a request is freed when both the client (release) and the engine
 *     (DONE) have let go of it (refs). */
#include "engine/engine.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/status.h"
#include "core/timing.h"
#include "engine/prefill.h"
#include "kv/tier.h"
#include "model/tokenizer.h"

#define DEFAULT_BLOCK_TOKENS 16
/* Decode positions reserved at admission when max_tokens is unbounded. */
#define DECODE_RESERVE_BLOCKS 2

enum { REQ_QUEUED, REQ_WAITING, REQ_RUNNING, REQ_DONE };

struct pam_request {
    pam_engine *e;
    /* immutable after submit */
    int32_t *prompt;  /* then, after a requeue, the generated tokens already in the KV */
    int32_t n_prompt;
    int32_t max_tokens;
    int32_t priority;
    int ignore_eos;
    int score_only;
    int32_t lp_k, plp_k; /* logprobs, prompt_logprobs (< 0: none) */
    int own_sparse; /* a sparse budget other than the default: no prefix cache */
    pam_kv_sparse sparse;
    int n_stop;
    char *stop[PAM_ENGINE_MAX_STOP];
    int64_t t_submit_ns;
    /* a group's first request, until its prompt is prefilled: the others */
    struct pam_request **sibs;
    int32_t n_sibs, group_n;

    /* engine thread only */
    pam_sampler *sampler;
    int slot;         /* batch slot, or -1 (queued or paused) */
    int paused;
    int32_t seq;      /* kvm sequence, or -1 */
    pam_ctx *ctx;     /* backed by seq */
    uint64_t admit_order;
    int32_t n_past;   /* tokens in the sequence's KV */
    int32_t n_fill;   /* tokens of prompt[] to prefill before decoding: n_prompt, more after a requeue */
    int refill;       /* requeued with last_tok sampled: prefill n_fill, then decode last_tok */
    int32_t n_requeued;
    int32_t last_tok; /* sampled, not yet fed */
    int32_t *gen_tok; /* generated ids (n_gen of them) */
    pam_detok dt;
    char *gen;        /* generated text after stop filtering decisions */
    size_t gen_len, gen_cap, gen_emitted;
    int stop_cut;     /* a stop string cut gen */
    pam_token_logprob *gen_lp;    /* [room] per generated token (lp_k >= 0) */
    pam_token_logprob *prompt_lp; /* [n_prompt] (plp_k >= 0) */
    int32_t lp_emitted;           /* gen_lp entries published */
    int plp_done;                 /* prompt_lp is complete (never written again) */
    int64_t t_first_ns, t_last_ns;
    /* remote tier: blocks 0..r_chained-1 have chain keys (the last in
     * r_prev); blocks below r_skip are already there or were published by
     * whoever computed them */
    uint8_t r_prev[32];
    int32_t r_chained, r_skip;
    pam_finish finishing; /* set by the step; published under the lock */
    struct pam_request *next_q; /* FIFO link, or paused-list link */

    /* guarded by e->mu */
    int state;
    int cancel;
    int refs;
    int32_t n_gen;
    int32_t n_cached;
    pam_finish finish;
    char *out;
    size_t out_len, out_cap;
    pam_token_logprob *lp_out;
    int32_t n_lp_out, cap_lp_out;
    int prompt_lp_ready;
    pthread_cond_t cv;
    void (*notify)(void *); /* pam_request_set_notify */
    void *notify_arg;
};

/* A cached prefix: a kvm sequence nobody writes, its tokens, and the hash
 * chain over its full blocks. */
typedef struct cache_entry {
    int32_t seq;
    int32_t *tok;
    int32_t n_tok;
    uint64_t *keys; /* n_tok / block_tokens */
    uint64_t last_used;
} cache_entry;

struct pam_engine {
    const pam_model *m;
    const pam_tokenizer *tk;
    pam_engine_params p;
    int32_t n_vocab;
    pam_pool *pool;
    pam_kvm *kvm;
    int own_kvm;
    int32_t bt; /* tokens per KV block */
    int32_t n_layer;
    int n_tiers;
    int64_t kv_capacity_tokens; /* one sequence with every tier to itself */

    pam_request **run; /* [n_slots]: the batch; NULL = free slot */
    pam_request *paused; /* by priority (high first), then admission order */
    pam_request **demote; /* [n_slots]: preempted this iteration, to demote */
    int n_demote;
    cache_entry *cache;
    int32_t n_cache, cap_cache;
    uint64_t *pkeys; /* prompt hash chain scratch */
    float *rk, *rv;  /* one block of one layer, f32 (remote tier) */
    uint64_t clock, admit_clock;

    /* n_slots + prefill_chunk rows: a step samples each sequence at most
     * once, and prompt log-probabilities take at most prefill_chunk prompt
     * tokens a step, so the burst budget needs no rows of its own */
    float *logits;
    int32_t batch_cap;
    int32_t *order, *pslot; /* prefill plan scratch, n_slots each */
    pam_prefill_item *pitems;
    pam_ctx **b_ctx;
    int32_t *b_tok, *b_pos;
    pam_request **b_req; /* sampled after this token, or NULL */
    pam_request **b_own; /* the token's request */
    uint8_t *b_want;     /* logits wanted for this batch entry */

    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* engine thread waits for work */
    pthread_cond_t idle_cv; /* drain waits for an empty engine */
    pam_request *q_head, *q_tail;
    int32_t n_queued, n_running, n_paused;
    int stop, draining;
    pam_engine_stats st;
};

void pam_engine_params_default(pam_engine_params *p) {
    memset(p, 0, sizeof *p);
    p->n_slots = 4;
    p->n_ctx = 0;
    p->kv_type = PAM_KV_F16;
    p->n_queue = 64;
    p->prefill_chunk = 256;
    p->prefill_burst = 2048;
    p->prefix_cache = 1;
    p->n_prefix_entries = 0;
    p->kvm = NULL;
}

void pam_request_params_default(pam_request_params *p) {
    memset(p, 0, sizeof *p);
    pam_sampler_params_default(&p->sampling);
    p->max_tokens = 0;
    p->logprobs = -1;
    p->prompt_logprobs = -1;
}

const char *pam_finish_str(pam_finish f) {
    switch (f) {
    case PAM_FINISH_STOP: return "stop";
    case PAM_FINISH_LENGTH: return "length";
    case PAM_FINISH_CANCELLED: return "cancelled";
    case PAM_FINISH_ERROR: return "error";
    default: return "none";
    }
}

static void hist_init(pam_histogram *h, const double *le, int n) {
    memset(h, 0, sizeof *h);
    h->n_buckets = n;
    memcpy(h->le, le, (size_t)n * sizeof *le);
}

static void hist_observe(pam_histogram *h, double v) {
    int i = 0;
    while (i < h->n_buckets && v > h->le[i]) i++;
    h->count[i]++;
    h->sum += v;
    h->n++;
}

static void *engine_main(void *arg);

int32_t pam_engine_n_ctx(const pam_engine *e) { return e->p.n_ctx; }
int32_t pam_engine_n_slots(const pam_engine *e) { return e->p.n_slots; }

static void engine_free(pam_engine *e) {
    for (int32_t i = 0; i < e->n_cache; i++) {
        pam_kvm_seq_free(e->kvm, e->cache[i].seq);
        free(e->cache[i].tok);
        free(e->cache[i].keys);
    }
    if (e->own_kvm) pam_kvm_destroy(e->kvm);
    free(e->cache);
    free(e->pkeys);
    free(e->rk);
    free(e->rv);
    free(e->run);
    free(e->demote);
    free(e->logits);
    free(e->order);
    free(e->pslot);
    free(e->pitems);
    free(e->b_ctx);
    free(e->b_tok);
    free(e->b_pos);
    free(e->b_req);
    free(e->b_own);
    free(e->b_want);
    free(e);
}

pam_status pam_engine_create(const pam_model *m, pam_pool *pool, const pam_engine_params *p, pam_engine **out) {
    const pam_model_hparams *hp = pam_model_get_hparams(m);
    if (p->n_slots < 1 || p->n_slots > 1024) return PAM_ERR(PAM_ERR_INVALID, "engine: slots must be in 1..1024, got %d", p->n_slots);
    if (p->n_queue < 0) return PAM_ERR(PAM_ERR_INVALID, "engine: negative queue size");
    if (p->prefill_chunk < 1) return PAM_ERR(PAM_ERR_INVALID, "engine: prefill chunk must be >= 1");
    if (p->prefill_burst < 0 || p->prefill_burst > 65536)
        return PAM_ERR(PAM_ERR_INVALID, "engine: prefill burst must be in 0..65536, got %d", p->prefill_burst);
    if (p->kvm) {
        const pam_kv_shape *ks = pam_kvm_shape(p->kvm);
        if (ks->n_layer != hp->n_layer || ks->n_head_kv != hp->n_head_kv || ks->head_dim != hp->head_dim)
            return PAM_ERR(PAM_ERR_INVALID, "engine: the KV manager's shape does not match the model");
    }
    pam_engine *e = calloc(1, sizeof *e);
    if (!e) return PAM_ERR(PAM_ERR_NOMEM, "engine");
    e->m = m;
    e->pool = pool;
    e->tk = pam_model_tokenizer(m);
    e->p = *p;
    if (e->p.n_ctx <= 0) e->p.n_ctx = hp->n_ctx_train;
    if (e->p.n_prefix_entries <= 0) e->p.n_prefix_entries = 4 * e->p.n_slots + 4;
    e->n_vocab = hp->n_vocab;
    e->n_layer = hp->n_layer;
    pam_status st = PAM_OK;
    if (p->kvm) {
        e->kvm = p->kvm;
    } else {
        pam_kv_shape shape = {hp->n_layer, hp->n_head_kv, hp->head_dim, DEFAULT_BLOCK_TOKENS};
        uint64_t per_slot = (uint64_t)((e->p.n_ctx + DEFAULT_BLOCK_TOKENS - 1) / DEFAULT_BLOCK_TOKENS) + 1;
        uint64_t block_bytes =
            (uint64_t)hp->n_head_kv * (uint64_t)pam_kvh_bytes(e->p.kv_type, hp->head_dim, DEFAULT_BLOCK_TOKENS);
        pam_tier *t = NULL;
        st = pam_tier_dram_open_type(&shape, e->p.kv_type,
                                     (uint64_t)e->p.n_slots * per_slot * (uint64_t)hp->n_layer * block_bytes, &t);
        if (st == PAM_OK) {
            pam_kvm_config kc = {.shape = shape, .tiers = &t, .n_tiers = 1, .policy = PAM_KV_POLICY_PAM};
            st = pam_kvm_create(&kc, pool, &e->kvm);
            if (st != PAM_OK) pam_tier_close(t);
        }
        if (st != PAM_OK) {
            free(e);
            return st;
        }
        e->own_kvm = 1;
    }
    e->bt = pam_kvm_shape(e->kvm)->block_tokens;
    e->n_tiers = pam_kvm_n_tiers(e->kvm);
    if (e->p.prefill_burst < e->p.prefill_chunk) e->p.prefill_burst = e->p.prefill_chunk;
    e->batch_cap = e->p.n_slots + e->p.prefill_burst;
    e->cap_cache = e->p.n_prefix_entries;
    e->cache = calloc((size_t)e->cap_cache, sizeof *e->cache);
    e->pkeys = malloc(((size_t)e->p.n_ctx / (size_t)e->bt + 1) * sizeof *e->pkeys);
    e->run = calloc((size_t)e->p.n_slots, sizeof *e->run);
    e->demote = calloc((size_t)e->p.n_slots, sizeof *e->demote);
    e->logits = malloc((size_t)(e->p.n_slots + e->p.prefill_chunk) * (size_t)e->n_vocab * sizeof(float));
    e->order = malloc((size_t)e->p.n_slots * sizeof *e->order);
    e->pslot = malloc((size_t)e->p.n_slots * sizeof *e->pslot);
    e->pitems = malloc((size_t)e->p.n_slots * sizeof *e->pitems);
    e->b_ctx = malloc((size_t)e->batch_cap * sizeof *e->b_ctx);
    e->b_tok = malloc((size_t)e->batch_cap * sizeof *e->b_tok);
    e->b_pos = malloc((size_t)e->batch_cap * sizeof *e->b_pos);
    e->b_req = malloc((size_t)e->batch_cap * sizeof *e->b_req);
    e->b_own = malloc((size_t)e->batch_cap * sizeof *e->b_own);
    e->b_want = malloc((size_t)e->batch_cap * sizeof *e->b_want);
    if (e->p.remote || e->p.persist) {
        size_t blk = (size_t)e->bt * (size_t)hp->n_head_kv * (size_t)hp->head_dim;
        e->rk = malloc(blk * sizeof(float));
        e->rv = malloc(blk * sizeof(float));
        if (!e->rk || !e->rv) {
            engine_free(e);
            return PAM_ERR(PAM_ERR_NOMEM, "engine buffers");
        }
    }
    if (!e->cache || !e->pkeys || !e->run || !e->demote || !e->logits || !e->order || !e->pslot || !e->pitems ||
        !e->b_ctx || !e->b_tok || !e->b_pos || !e->b_req || !e->b_own || !e->b_want) {
        engine_free(e);
        return PAM_ERR(PAM_ERR_NOMEM, "engine buffers");
    }
    static const double ttft_le[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
    static const double tpot_le[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
    hist_init(&e->st.ttft, ttft_le, (int)(sizeof ttft_le / sizeof *ttft_le));
    hist_init(&e->st.tpot, tpot_le, (int)(sizeof tpot_le / sizeof *tpot_le));
    e->st.kv_block_tokens = (uint64_t)e->bt;
    e->st.kv_n_tiers = e->n_tiers < PAM_ENGINE_MAX_TIERS ? e->n_tiers : PAM_ENGINE_MAX_TIERS;
    for (int i = 0; i < e->st.kv_n_tiers; i++) {
        const pam_tier *t = pam_kvm_tier(e->kvm, i);
        pam_engine_tier_stats *ts = &e->st.kv_tiers[i];
        snprintf(ts->name, sizeof ts->name, "%s", t->name);
        ts->blocks_capacity = t->capacity_blocks;
        ts->block_bytes = t->block_bytes;
        e->kv_capacity_tokens += (int64_t)(t->capacity_blocks / (uint64_t)e->n_layer) * e->bt;
        e->st.kv_blocks_capacity += t->capacity_blocks;
        e->st.kv_bytes_capacity += t->capacity_blocks * t->block_bytes;
    }
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->work_cv, NULL);
    pthread_cond_init(&e->idle_cv, NULL);
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        pthread_mutex_destroy(&e->mu);
        pthread_cond_destroy(&e->work_cv);
        pthread_cond_destroy(&e->idle_cv);
        engine_free(e);
        return PAM_ERR(PAM_ERR_NOMEM, "engine: cannot start its thread");
    }
    *out = e;
    return PAM_OK;
}

static void request_free(pam_request *r) {
    pthread_cond_destroy(&r->cv);
    pam_sampler_free(r->sampler);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->prompt);
    free(r->gen_tok);
    free(r->gen);
    free(r->out);
    free(r->gen_lp);
    free(r->prompt_lp);
    free(r->lp_out);
    free(r->sibs);
    free(r);
}

/* e->mu held. Wakes whoever waits on r: a blocked pam_request_next and the
 * caller's notifier. */
static void request_signal(pam_request *r) {
    pthread_cond_broadcast(&r->cv);
    if (r->notify) r->notify(r->notify_arg);
}

/* e->mu held. The engine lets go of r: finished for whatever reason. A
 * group's first request that ends before its prompt was prefilled takes the
 * waiting choices with it. */
static void request_done(pam_engine *e, pam_request *r, pam_finish f) {
    for (int32_t i = 0; i < r->n_sibs; i++) request_done(e, r->sibs[i], f);
    r->n_sibs = 0;
    r->finish = f;
    r->state = REQ_DONE;
    e->st.n_finished[f]++;
    if (f != PAM_FINISH_CANCELLED && r->n_gen > 0) {
        hist_observe(&e->st.ttft, (double)(r->t_first_ns - r->t_submit_ns) / 1e9);
        if (r->n_gen > 1) hist_observe(&e->st.tpot, (double)(r->t_last_ns - r->t_first_ns) / 1e9 / (r->n_gen - 1));
    }
    request_signal(r);
    if (--r->refs == 0) request_free(r);
}

static int engine_idle(const pam_engine *e) { return e->n_queued == 0 && e->n_running == 0 && e->n_paused == 0; }

void pam_engine_destroy(pam_engine *e) {
    if (!e) return;
    pthread_mutex_lock(&e->mu);
    e->stop = 1;
    pthread_cond_signal(&e->work_cv);
    pthread_mutex_unlock(&e->mu);
    pthread_join(e->thread, NULL);
    /* The thread retired every running and paused request; queued ones are left. */
    while (e->q_head) {
        pam_request *r = e->q_head;
        e->q_head = r->next_q;
        request_done(e, r, PAM_FINISH_CANCELLED);
    }
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->work_cv);
    pthread_cond_destroy(&e->idle_cv);
    engine_free(e);
}

/* A request for prompt with sampling seed `seed`, not queued yet. */
static pam_status request_new(pam_engine *e, const int32_t *prompt, int32_t n_prompt, const pam_request_params *p,
                              uint64_t seed, pam_request **out) {
    pam_sampler_params sp = p->sampling;
    sp.seed = seed;
    if (sp.repeat_last_n == -1) sp.repeat_last_n = e->p.n_ctx; /* llama.cpp's -1: the whole context */
    pam_request *r = calloc(1, sizeof *r);
    if (!r) return PAM_ERR(PAM_ERR_NOMEM, "request");
    r->e = e;
    r->slot = -1;
    r->seq = -1;
    r->priority = p->priority;
    r->refs = 2;
    r->max_tokens = p->max_tokens;
    r->ignore_eos = p->ignore_eos;
    r->score_only = p->score_only;
    pam_kv_sparse def;
    pam_kvm_sparse_info(e->kvm, &def);
    r->own_sparse = p->kv_sparse_given && (p->kv_sparse.tokens != def.tokens || p->kv_sparse.frac != def.frac);
    r->sparse = p->kv_sparse;
    r->lp_k = p->logprobs;
    r->plp_k = p->prompt_logprobs;
    r->group_n = 1;
    r->prompt = malloc((size_t)n_prompt * sizeof *r->prompt);
    int32_t room = e->p.n_ctx - n_prompt + 1;
    r->gen_tok = malloc((size_t)room * sizeof *r->gen_tok);
    pthread_cond_init(&r->cv, NULL);
    int ok = r->prompt && r->gen_tok;
    if (ok && r->lp_k >= 0) ok = (r->gen_lp = malloc((size_t)room * sizeof *r->gen_lp)) != NULL;
    if (ok && r->plp_k >= 0) ok = (r->prompt_lp = malloc((size_t)n_prompt * sizeof *r->prompt_lp)) != NULL;
    for (int i = 0; ok && i < p->n_stop; i++) {
        if (!p->stop[i] || !p->stop[i][0]) continue; /* empty stop strings never match */
        if (!(r->stop[r->n_stop] = strdup(p->stop[i]))) ok = 0;
        else r->n_stop++;
    }
    pam_status st = ok ? pam_sampler_create(&sp, e->n_vocab, &r->sampler) : PAM_ERR(PAM_ERR_NOMEM, "request");
    if (st != PAM_OK) {
        request_free(r);
        return st;
    }
    memcpy(r->prompt, prompt, (size_t)n_prompt * sizeof *prompt);
    r->n_prompt = n_prompt;
    r->n_fill = n_prompt;
    if (r->prompt_lp) {
        memset(&r->prompt_lp[0], 0, sizeof r->prompt_lp[0]);
        r->prompt_lp[0].id = prompt[0];
        r->prompt_lp[0].logprob = NAN; /* nothing precedes the first token */
        r->prompt_lp[0].text_off = -1;
    }
    for (int32_t i = 0; i < n_prompt; i++) pam_sampler_accept_prompt(r->sampler, prompt[i]);
    pam_detok_init(&r->dt, e->tk);
    /* SentencePiece drops the leading space of the first piece after BOS;
     * generated text continues the prompt, so only do that for an empty one. */
    r->dt.at_start = 0;
    r->t_submit_ns = pam_time_ns();
    *out = r;
    return PAM_OK;
}

pam_status pam_engine_submit_n(pam_engine *e, const int32_t *prompt, int32_t n_prompt, const pam_request_params *p,
                               int32_t n, pam_request **out) {
    if (n < 1 || n > PAM_ENGINE_MAX_CHOICES)
        return PAM_ERR(PAM_ERR_INVALID, "choices must be in [1, %d], got %d", PAM_ENGINE_MAX_CHOICES, n);
    if (n_prompt <= 0) return PAM_ERR(PAM_ERR_INVALID, "the prompt is empty");
    if (n_prompt >= e->p.n_ctx)
        return PAM_ERR(PAM_ERR_RANGE, "the prompt has %d tokens but the context holds %d", n_prompt, e->p.n_ctx);
    for (int32_t i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= e->n_vocab)
            return PAM_ERR(PAM_ERR_RANGE, "token id %d out of range (vocabulary of %d)", prompt[i], e->n_vocab);
    if (p->max_tokens > 0 && (int64_t)n_prompt + p->max_tokens > e->p.n_ctx)
        return PAM_ERR(PAM_ERR_RANGE,
                       "the prompt (%d tokens) plus max_tokens (%d) is %lld tokens, %lld over the context of %d",
                       n_prompt, p->max_tokens, (long long)n_prompt + p->max_tokens,
                       (long long)n_prompt + p->max_tokens - e->p.n_ctx, e->p.n_ctx);
    int64_t need = (int64_t)n_prompt + (p->max_tokens > 0 ? p->max_tokens : 1);
    if (need > e->kv_capacity_tokens && !pam_kvm_evicts(e->kvm)) /* eviction lets it go on */
        return PAM_ERR(PAM_ERR_RANGE,
                       "the prompt plus max_tokens needs %lld tokens of KV, %lld more than all KV tiers hold (%lld)",
                       (long long)need, (long long)(need - e->kv_capacity_tokens), (long long)e->kv_capacity_tokens);
    if (p->n_stop < 0 || p->n_stop > PAM_ENGINE_MAX_STOP)
        return PAM_ERR(PAM_ERR_INVALID, "at most %d stop strings", PAM_ENGINE_MAX_STOP);
    if (p->logprobs > PAM_MAX_TOP_LOGPROBS || p->prompt_logprobs > PAM_MAX_TOP_LOGPROBS)
        return PAM_ERR(PAM_ERR_INVALID, "at most %d alternatives per log-probability", PAM_MAX_TOP_LOGPROBS);
    pam_sampler_params sp = p->sampling;
    if (sp.repeat_last_n == -1) sp.repeat_last_n = e->p.n_ctx; /* llama.cpp's -1: the whole context */
    PAM_TRY(pam_sampler_params_check(&sp));
    if (p->kv_sparse_given && (p->kv_sparse.tokens < 0 || !(p->kv_sparse.frac >= 0.0f && p->kv_sparse.frac <= 1.0f)))
        return PAM_ERR(PAM_ERR_INVALID, "bad sparse budget");
    if (p->kv_sparse_given && (p->kv_sparse.tokens > 0 || p->kv_sparse.frac > 0.0f) &&
        !pam_kvm_sparse_info(e->kvm, NULL))
        return PAM_ERR(PAM_ERR_INVALID, "sparse attention per request needs a server started with --kv-sparse");
    pam_request *lead = NULL;
    pam_status st = request_new(e, prompt, n_prompt, p, p->sampling.seed, &lead);
    if (st != PAM_OK) return st;
    if (n > 1 && !(lead->sibs = calloc((size_t)n - 1, sizeof *lead->sibs))) st = PAM_ERR(PAM_ERR_NOMEM, "request");
    for (int32_t i = 1; st == PAM_OK && i < n; i++) {
        st = request_new(e, prompt, n_prompt, p, p->sampling.seed + (uint64_t)i, &lead->sibs[i - 1]);
        if (st == PAM_OK) lead->n_sibs = i;
    }
    if (st != PAM_OK) {
        for (int32_t i = 0; i < lead->n_sibs; i++) request_free(lead->sibs[i]);
        request_free(lead);
        return st;
    }
    lead->group_n = n;

    pthread_mutex_lock(&e->mu);
    if (e->draining || e->stop || e->n_queued >= e->p.n_queue) {
        int draining = e->draining || e->stop;
        e->st.n_rejected_full++;
        pthread_mutex_unlock(&e->mu);
        for (int32_t i = 0; i < lead->n_sibs; i++) request_free(lead->sibs[i]);
        request_free(lead);
        return draining ? PAM_ERR(PAM_ERR_FULL, "the server is shutting down")
                        : PAM_ERR(PAM_ERR_FULL, "the request queue is full (%d waiting)", e->p.n_queue);
    }
    lead->state = REQ_QUEUED;
    for (int32_t i = 0; i < lead->n_sibs; i++) lead->sibs[i]->state = REQ_WAITING;
    if (e->q_tail) e->q_tail->next_q = lead;
    else e->q_head = lead;
    e->q_tail = lead;
    e->n_queued++;
    e->st.n_submitted += (uint64_t)n;
    out[0] = lead;
    for (int32_t i = 1; i < n; i++) out[i] = lead->sibs[i - 1];
    pthread_cond_signal(&e->work_cv);
    pthread_mutex_unlock(&e->mu);
    return PAM_OK;
}

pam_status pam_engine_submit(pam_engine *e, const int32_t *prompt, int32_t n_prompt, const pam_request_params *p,
                             pam_request **out) {
    return pam_engine_submit_n(e, prompt, n_prompt, p, 1, out);
}

void pam_engine_drain(pam_engine *e) {
    pthread_mutex_lock(&e->mu);
    e->draining = 1;
    while (!engine_idle(e)) pthread_cond_wait(&e->idle_cv, &e->mu);
    pthread_mutex_unlock(&e->mu);
}

int pam_request_next(pam_request *r, int64_t timeout_ms, pam_request_update *u) {
    pam_engine *e = r->e;
    memset(u, 0, sizeof *u);
    pthread_mutex_lock(&e->mu);
    if (r->out_len == 0 && r->n_lp_out == 0 && r->state != REQ_DONE && timeout_ms > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t ns = ts.tv_nsec + (timeout_ms % 1000) * 1000000;
        ts.tv_sec += (time_t)(timeout_ms / 1000 + ns / 1000000000);
        ts.tv_nsec = (long)(ns % 1000000000);
        while (r->out_len == 0 && r->n_lp_out == 0 && r->state != REQ_DONE)
            if (pthread_cond_timedwait(&r->cv, &e->mu, &ts) != 0) break;
    }
    if (r->out_len > 0) {
        u->text = r->out;
        u->len = r->out_len;
        r->out = NULL;
        r->out_len = r->out_cap = 0;
    }
    if (r->n_lp_out > 0) {
        u->logprobs = r->lp_out;
        u->n_logprobs = r->n_lp_out;
        r->lp_out = NULL;
        r->n_lp_out = r->cap_lp_out = 0;
    }
    u->done = r->state == REQ_DONE; /* with the last text, if any */
    u->finish = u->done ? r->finish : PAM_FINISH_NONE;
    u->n_prompt_tokens = r->n_prompt;
    u->n_completion_tokens = r->n_gen;
    u->n_cached_tokens = r->n_cached;
    int got = u->text != NULL || u->logprobs != NULL || u->done;
    pthread_mutex_unlock(&e->mu);
    return got;
}

const pam_token_logprob *pam_request_prompt_logprobs(pam_request *r, int32_t *n) {
    pthread_mutex_lock(&r->e->mu);
    int ready = r->prompt_lp_ready;
    pthread_mutex_unlock(&r->e->mu);
    *n = ready ? r->n_prompt : 0;
    return ready ? r->prompt_lp : NULL; /* written before ready was set, never after */
}

int32_t pam_request_tokens(pam_request *r, int32_t *out, int32_t cap) {
    pthread_mutex_lock(&r->e->mu);
    int32_t n = r->n_gen < cap ? r->n_gen : cap;
    memcpy(out, r->gen_tok, (size_t)n * sizeof *out);
    pthread_mutex_unlock(&r->e->mu);
    return n;
}

/* e->mu held. */
static void request_cancel_locked(pam_engine *e, pam_request *r) {
    if (r->state == REQ_QUEUED) {
        pam_request **pp = &e->q_head, *prev = NULL;
        while (*pp && *pp != r) {
            prev = *pp;
            pp = &(*pp)->next_q;
        }
        if (*pp) {
            *pp = r->next_q;
            if (e->q_tail == r) e->q_tail = prev;
            e->n_queued--;
            if (engine_idle(e)) pthread_cond_broadcast(&e->idle_cv);
            request_done(e, r, PAM_FINISH_CANCELLED);
        }
    } else if (r->state == REQ_RUNNING || r->state == REQ_WAITING) {
        /* a waiting choice is retired when its group's first request forks or ends */
        r->cancel = 1;
        pthread_cond_signal(&e->work_cv);
    }
}

void pam_request_cancel(pam_request *r) {
    pam_engine *e = r->e;
    pthread_mutex_lock(&e->mu);
    request_cancel_locked(e, r);
    pthread_mutex_unlock(&e->mu);
}

void pam_request_set_notify(pam_request *r, void (*fn)(void *), void *arg) {
    pthread_mutex_lock(&r->e->mu);
    r->notify = fn;
    r->notify_arg = arg;
    int ready = r->out_len > 0 || r->n_lp_out > 0 || r->state == REQ_DONE;
    pthread_mutex_unlock(&r->e->mu);
    if (ready && fn) fn(arg);
}

void pam_request_release(pam_request *r) {
    if (!r) return;
    pam_engine *e = r->e;
    pthread_mutex_lock(&e->mu);
    r->notify = NULL; /* its argument may be freed as soon as we return */
    if (--r->refs == 0) request_free(r); /* the engine had let go already */
    else request_cancel_locked(e, r);    /* frees r if it was queued */
    pthread_mutex_unlock(&e->mu);
}

void pam_engine_get_stats(pam_engine *e, pam_engine_stats *s) {
    pthread_mutex_lock(&e->mu);
    *s = e->st;
    s->n_slots = e->p.n_slots;
    s->n_ctx = e->p.n_ctx;
    s->n_queued = e->n_queued;
    s->n_running = e->n_running;
    s->n_paused = e->n_paused;
    pthread_mutex_unlock(&e->mu);
    s->remote_enabled = e->p.remote != NULL;
    if (e->p.remote) pam_kv_remote_stats_get(e->p.remote, &s->remote);
    s->persist_enabled = e->p.persist != NULL;
    if (e->p.persist) pam_kv_remote_stats_get(e->p.persist, &s->persist);
}

/* ---- engine thread: KV bookkeeping ---- */

/* e->mu held (engine thread): refreshes the KV numbers of the stats. Tier
 * stats are read here only, by the thread that drives the KV manager. */
static void snapshot_kv(pam_engine *e) {
    pam_engine_stats *s = &e->st;
    s->kv_blocks_used = s->kv_bytes_used = 0;
    for (int i = 0; i < s->kv_n_tiers; i++) {
        pam_tier_stats ts;
        pam_tier_stats_get(pam_kvm_tier(e->kvm, i), &ts);
        s->kv_tiers[i].blocks_used = ts.blocks_used;
        s->kv_blocks_used += ts.blocks_used;
        s->kv_bytes_used += ts.blocks_used * s->kv_tiers[i].block_bytes;
    }
    uint64_t tokens = 0;
    for (int32_t i = 0; i < e->p.n_slots; i++)
        if (e->run[i]) tokens += (uint64_t)e->run[i]->n_past;
    for (pam_request *r = e->paused; r; r = r->next_q) tokens += (uint64_t)r->n_past;
    for (int32_t i = 0; i < e->n_cache; i++) tokens += (uint64_t)e->cache[i].n_tok;
    s->kv_tokens = tokens;
    s->prefix_entries = e->n_cache;
}

/* Key of a full block given the previous block's key: a hash chain, so
 * equal keys at index i mean (up to collisions, which the token comparison
 * rules out) equal tokens in blocks 0..i. */
static uint64_t block_key(uint64_t prev, const int32_t *tok, int32_t n) {
    uint64_t h = prev ^ 0x9E3779B97F4A7C15ull;
    for (int32_t i = 0; i < n; i++) {
        h ^= (uint32_t)tok[i];
        h *= 0x100000001B3ull;
        h ^= h >> 29;
    }
    return h;
}

static void key_chain(const pam_engine *e, const int32_t *tok, int32_t n_tok, uint64_t *keys) {
    uint64_t prev = 0;
    for (int32_t i = 0; i < n_tok / e->bt; i++) keys[i] = prev = block_key(prev, tok + (size_t)i * e->bt, e->bt);
}

static void cache_drop(pam_engine *e, int32_t i) {
    cache_entry *c = &e->cache[i];
    pam_kvm_seq_free(e->kvm, c->seq);
    free(c->tok);
    free(c->keys);
    e->cache[i] = e->cache[--e->n_cache];
}

/* Frees the least recently used cached prefix; 0 if there is none. */
static int cache_evict_lru(pam_engine *e) {
    if (e->n_cache == 0) return 0;
    int32_t lru = 0;
    for (int32_t i = 1; i < e->n_cache; i++)
        if (e->cache[i].last_used < e->cache[lru].last_used) lru = i;
    cache_drop(e, lru);
    e->st.prefix_evictions++;
    return 1;
}

/* The entry sharing the longest prefix with prompt (full blocks by the hash
 * chain, then tokens of the next block); *match gets the length, at most
 * n_prompt - 1 so the last prompt token runs for its logits. -1 if none. */
static int32_t cache_lookup(pam_engine *e, const int32_t *prompt, int32_t n_prompt, int32_t *match) {
    int32_t nk = n_prompt / e->bt, best = -1, best_len = 0;
    key_chain(e, prompt, n_prompt, e->pkeys);
    for (int32_t i = 0; i < e->n_cache; i++) {
        const cache_entry *c = &e->cache[i];
        int32_t ck = c->n_tok / e->bt, j = 0;
        while (j < nk && j < ck && c->keys[j] == e->pkeys[j]) j++;
        int32_t t = j * e->bt;
        if (memcmp(c->tok, prompt, (size_t)t * sizeof *prompt) != 0) t = 0; /* a hash collision */
        int32_t lim = c->n_tok < n_prompt - 1 ? c->n_tok : n_prompt - 1;
        if (t > lim) t = lim;
        while (t < lim && c->tok[t] == prompt[t]) t++;
        if (t > best_len || (t == best_len && t > 0 && c->last_used > e->cache[best].last_used)) {
            best = i;
            best_len = t;
        }
    }
    *match = best_len;
    return best_len > 0 ? best : -1;
}

/* Keeps r's sequence (positions 0..n_past-1) as a cached prefix, or frees
 * it. Entries whose tokens are a prefix of r's become redundant and go. */
static void cache_insert(pam_engine *e, pam_request *r) {
    int32_t n = r->n_past, seq = r->seq;
    r->seq = -1;
    int32_t *tok = n > 0 ? malloc((size_t)n * sizeof *tok) : NULL;
    uint64_t *keys = tok ? malloc(((size_t)n / (size_t)e->bt + 1) * sizeof *keys) : NULL;
    if (!keys || pam_kvm_seq_truncate(e->kvm, seq, n) != PAM_OK) {
        free(tok);
        free(keys);
        pam_kvm_seq_free(e->kvm, seq);
        return;
    }
    int32_t np = n < r->n_prompt ? n : r->n_prompt;
    memcpy(tok, r->prompt, (size_t)np * sizeof *tok);
    if (n > np) memcpy(tok + np, r->gen_tok, (size_t)(n - np) * sizeof *tok);
    key_chain(e, tok, n, keys);
    for (int32_t i = e->n_cache - 1; i >= 0; i--) {
        const cache_entry *c = &e->cache[i];
        if (c->n_tok <= n && memcmp(c->tok, tok, (size_t)c->n_tok * sizeof *tok) == 0) cache_drop(e, i);
    }
    if (e->n_cache == e->cap_cache) cache_evict_lru(e);
    e->cache[e->n_cache++] = (cache_entry){.seq = seq, .tok = tok, .n_tok = n, .keys = keys, .last_used = ++e->clock};
}

/* Reserves n_tokens more positions of seq, evicting cached prefixes while
 * the cache is full. */
static pam_status reserve_evicting(pam_engine *e, int32_t seq, int32_t n_tokens) {
    for (;;) {
        pam_status st = pam_kvm_reserve(e->kvm, seq, n_tokens);
        if (st != PAM_ERR_FULL || !cache_evict_lru(e)) return st;
    }
}

/* The request's KV goes: into the prefix cache, or freed. */
static void release_kv(pam_engine *e, pam_request *r, pam_finish f) {
    pam_ctx_free(r->ctx);
    r->ctx = NULL;
    if (r->seq < 0) return;
    if (e->p.prefix_cache && !r->own_sparse && f != PAM_FINISH_ERROR && r->n_past > 0) {
        cache_insert(e, r);
    } else {
        pam_kvm_seq_free(e->kvm, r->seq);
        r->seq = -1;
    }
}

/* Moves every block of seq to the slowest tier (best effort: a block that
 * cannot move stays where it is; placement never changes results). */
static void demote_seq(pam_engine *e, int32_t seq) {
    int slow = e->n_tiers - 1;
    if (slow == 0) return;
    uint64_t moved = 0;
    for (int32_t l = 0; l < e->n_layer; l++) {
        for (int32_t b = 0;; b++) {
            int t = pam_kvm_block_tier(e->kvm, seq, l, b);
            if (t < 0) break;
            if (t != slow && pam_kvm_migrate(e->kvm, seq, l, b, slow) == PAM_OK) moved++;
        }
    }
    pthread_mutex_lock(&e->mu);
    e->st.n_demoted_blocks += moved;
    pthread_mutex_unlock(&e->mu);
}

/* ---- engine thread: admission ---- */

/* e->mu held. Retires a running or paused request. */
static void retire(pam_engine *e, pam_request *r, pam_finish f) {
    if (r->slot >= 0) {
        e->run[r->slot] = NULL;
        r->slot = -1;
        e->n_running--;
    } else if (r->paused) {
        pam_request **pp = &e->paused;
        while (*pp && *pp != r) pp = &(*pp)->next_q;
        if (*pp) *pp = r->next_q;
        r->next_q = NULL;
        r->paused = 0;
        e->n_paused--;
    }
    release_kv(e, r, f);
    request_done(e, r, f);
    if (engine_idle(e)) pthread_cond_broadcast(&e->idle_cv);
}

static int free_slot(const pam_engine *e) {
    for (int32_t i = 0; i < e->p.n_slots; i++)
        if (!e->run[i]) return i;
    return -1;
}

/* Decode positions a request reserves at admission. */
static int32_t decode_reserve(const pam_engine *e, const pam_request *r) {
    int32_t room = e->p.n_ctx - r->n_fill;
    int32_t decode = r->score_only         ? 0
                     : r->max_tokens > 0 ? r->max_tokens - r->n_gen
                                         : DECODE_RESERVE_BLOCKS * e->bt;
    return decode > room ? room : decode;
}

/* e->mu held: the paused list is ordered by priority (high first), then
 * admission order. */
static void paused_insert(pam_engine *e, pam_request *v) {
    pam_request **pp = &e->paused;
    while (*pp && ((*pp)->priority > v->priority ||
                   ((*pp)->priority == v->priority && (*pp)->admit_order < v->admit_order)))
        pp = &(*pp)->next_q;
    v->next_q = *pp;
    *pp = v;
    v->paused = 1;
    e->n_paused++;
}

/* The running request a queued one of priority prio may preempt: the lowest
 * priority below prio, the most recently admitted among equals. */
static pam_request *pick_victim(const pam_engine *e, int32_t prio) {
    pam_request *v = NULL;
    for (int32_t i = 0; i < e->p.n_slots; i++) {
        pam_request *r = e->run[i];
        if (!r || r->priority >= prio || r->finishing != PAM_FINISH_NONE) continue;
        if (!v || r->priority < v->priority || (r->priority == v->priority && r->admit_order > v->admit_order)) v = r;
    }
    return v;
}

/* e->mu held: the victim leaves the batch for the paused list; its blocks
 * are demoted after the lock is dropped. Returns its slot. */
static int preempt(pam_engine *e, pam_request *v) {
    int slot = v->slot;
    e->run[slot] = NULL;
    v->slot = -1;
    e->n_running--;
    paused_insert(e, v);
    e->demote[e->n_demote++] = v;
    e->st.n_preempted++;
    return slot;
}

static void resume(pam_engine *e, pam_request *r, int slot) {
    e->paused = r->next_q;
    r->next_q = NULL;
    r->paused = 0;
    r->slot = slot;
    e->run[slot] = r;
    e->n_paused--;
    e->n_running++;
    e->st.n_resumed++;
}

/* ---- remote tier ---- */

typedef struct remote_sink_ctx {
    pam_engine *e;
    int32_t seq, have; /* local full blocks kept */
    int32_t n_prompt, decode; /* n_prompt: the tokens to prefill (n_fill) */
    int truncated;
    int32_t started;   /* blocks with a layer stored */
    int32_t done;      /* blocks whose every layer is stored */
} remote_sink_ctx;

static pam_status remote_sink(void *arg, int32_t block, int32_t layer, const float *k, const float *v) {
    remote_sink_ctx *c = arg;
    pam_engine *e = c->e;
    if (!c->truncated) {
        /* a partially matched local block gives way to the remote's full one */
        c->truncated = 1;
        if (pam_kvm_seq_len(e->kvm, c->seq) > c->have * e->bt) {
            PAM_TRY(pam_kvm_seq_truncate(e->kvm, c->seq, c->have * e->bt));
            PAM_TRY(reserve_evicting(e, c->seq, c->n_prompt - c->have * e->bt + c->decode));
        }
    }
    c->started = block + 1 - c->have;
    size_t row = (size_t)pam_kvm_shape(e->kvm)->n_head_kv * (size_t)pam_kvm_shape(e->kvm)->head_dim;
    for (int32_t t = 0; t < e->bt; t++)
        PAM_TRY(pam_kvm_store(e->kvm, c->seq, layer, block * e->bt + t, k + (size_t)t * row, v + (size_t)t * row));
    if (layer == e->n_layer - 1) c->done = block + 1 - c->have;
    return PAM_OK;
}

/* After the local prefix cache matched *match tokens of r's prompt (its
 * n_fill tokens to prefill; seq holds them, with room reserved for the
 * rest), takes the prompt's further full blocks from the persistent journal, then from the remote tier, while
 * they have them. Whatever they do, seq ends holding exactly *match tokens
 * (updated) with room reserved; an error means that room could not be had. */
static pam_status remote_fetch(pam_engine *e, pam_request *r, int32_t seq, int32_t *match, int32_t decode) {
    int32_t want = (r->n_fill - 1) / e->bt, have = *match / e->bt;
    if (want <= have) return PAM_OK;
    uint8_t(*keys)[32] = malloc((size_t)want * sizeof *keys);
    if (!keys) return PAM_OK;
    pam_kv_remote_chain(e->p.persist ? e->p.persist : e->p.remote, NULL, r->prompt, want, keys);
    remote_sink_ctx c = {.e = e, .seq = seq, .have = have, .n_prompt = r->n_fill, .decode = decode};
    pam_kv_remote *stores[2] = {e->p.persist, e->p.remote};
    int32_t got[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        if (!stores[i] || c.have + c.done >= want || c.started != c.done) continue;
        int32_t before = c.done;
        pam_kv_remote_fetch(stores[i], (const uint8_t(*)[32])keys, have + c.done, want - have - c.done, remote_sink, &c);
        got[i] = c.done - before;
    }
    free(keys);
    if (!c.truncated) return PAM_OK;
    int32_t keep = (have + c.done) * e->bt;
    /* a block stored in some layers only (a failed store) is dropped */
    if (c.started != c.done || pam_kvm_seq_len(e->kvm, seq) != keep) PAM_TRY(pam_kvm_seq_truncate(e->kvm, seq, keep));
    PAM_TRY(reserve_evicting(e, seq, r->n_fill - keep + decode));
    e->st.persist_tokens_reused += (uint64_t)got[0] * (uint64_t)e->bt;
    e->st.remote_tokens_reused += (uint64_t)got[1] * (uint64_t)e->bt;
    *match = keep;
    return PAM_OK;
}

/* Engine thread: queues r's newly completed full blocks for the remote
 * tier (those below r_skip are there already). */
static void remote_publish(pam_engine *e, pam_request *r) {
    int32_t full = r->n_past / e->bt;
    while (r->r_chained < full) {
        int32_t b = r->r_chained, pos = b * e->bt;
        int32_t tok[4096];
        int32_t *t = e->bt <= 4096 ? tok : NULL;
        if (!t) return;
        for (int32_t i = 0; i < e->bt; i++) {
            int32_t p = pos + i;
            t[i] = p < r->n_prompt ? r->prompt[p] : r->gen_tok[p - r->n_prompt];
        }
        uint8_t key[32], parent[32];
        memcpy(parent, r->r_prev, 32);
        pam_kv_remote_chain(e->p.persist ? e->p.persist : e->p.remote, b ? parent : NULL, t, 1, &key);
        memcpy(r->r_prev, key, 32);
        r->r_chained++;
        if (b < r->r_skip) {
            /* reused (the local prefix cache or a fetch): recently used for the journal's compaction */
            if (e->p.persist) pam_kv_remote_touch(e->p.persist, key);
            continue;
        }
        for (int32_t l = 0; l < e->n_layer; l++) {
            if (pam_kvm_read_block(e->kvm, r->seq, l, b, e->rk, e->rv) != PAM_OK) break;
            if (e->p.persist) pam_kv_remote_put(e->p.persist, key, b ? parent : NULL, l, e->rk, e->rv);
            if (e->p.remote) pam_kv_remote_put(e->p.remote, key, b ? parent : NULL, l, e->rk, e->rv);
        }
    }
}

/* In-flight prefix sharing. Requests that arrive together with the same
 * long prefix (a system prompt, a document, a retried prompt) would each
 * prefill it in the same steps, since the prefix cache only learns a prefix
 * when its request finishes. Instead, a running request's complete blocks
 * are forked like a cached prefix's, and a queued request whose prompt
 * shares at least one more full block with a running request still
 * prefilling it waits until those blocks exist: it could not use them
 * before, and computing them itself would spend the same prefill budget on
 * a copy. Only complete blocks below the running request's n_past are
 * shared: it never writes them again, so neither side needs a copy-on-write
 * reservation it did not make. Results are unchanged: blocks hold the same
 * bits whoever computed them (batch invariance), as with the prefix cache. */

/* Whole blocks of r's prompt (below n_fill - 1, so its last prompt token
 * runs for its logits) that running request a shares: *now of them exist,
 * the return value once a has prefilled them. */
static int32_t shared_blocks(const pam_engine *e, const pam_request *r, const pam_request *a, int32_t *now) {
    int32_t n = r->n_fill - 1 < a->n_fill ? r->n_fill - 1 : a->n_fill, t = 0;
    while (t < n && a->prompt[t] == r->prompt[t]) t++;
    int32_t full = t / e->bt * e->bt, done = a->n_past / e->bt * e->bt;
    *now = full < done ? full : done;
    return full;
}

/* e->mu held. *avail: the most prompt tokens a running request holds for r
 * now, in sequence *src (-1: none). Returns 1 when r should wait: a running
 * request still prefilling will share a block more than max(have, *avail). */
static int running_share(const pam_engine *e, const pam_request *r, int32_t have, int32_t *avail, int32_t *src) {
    *avail = 0;
    *src = -1;
    if (pam_kvm_evicts(e->kvm)) return 0; /* a sequence may have dropped blocks */
    int32_t later = 0;
    for (int32_t i = 0; i < e->p.n_slots; i++) {
        const pam_request *a = e->run[i];
        if (!a || a == r || a->seq < 0 || a->own_sparse || a->finishing != PAM_FINISH_NONE) continue;
        int32_t now, full = shared_blocks(e, r, a, &now);
        if (now > *avail) *avail = now, *src = a->seq;
        if (full > now && full > later) later = full;
    }
    if (*avail > have) have = *avail;
    return later >= have + e->bt;
}

/* e->mu held: gives the queue head a KV sequence (a fork of the best cached
 * or running prefix, truncated to the match, or a new one) with room
 * reserved for the rest of its prompt and a decode reserve. 1: ready; 0: it
 * does not fit now, or waits for a running request's prefill (nothing
 * changed); -1: it can never fit (finished). */
static int prepare_kv(pam_engine *e, pam_request *r, int32_t *reuse) {
    /* Prompt log-probabilities need the logits of every prompt position
     * (once: a request requeued after that reuses its KV like any other). */
    int share = e->p.prefix_cache && !r->own_sparse && (!r->prompt_lp || r->plp_done);
    int32_t match = 0, hit = share ? cache_lookup(e, r->prompt, r->n_fill, &match) : -1;
    int32_t seq = -1, run_avail = 0, run_src = -1;
    pam_status st = PAM_OK;
    if (share && running_share(e, r, match, &run_avail, &run_src)) {
        e->st.inflight_waits++;
        return 0;
    }
    if (run_src >= 0 && run_avail > match) {
        st = pam_kvm_seq_fork(e->kvm, run_src, &seq);
        if (st == PAM_OK) st = pam_kvm_seq_truncate(e->kvm, seq, run_avail);
        if (st != PAM_OK && seq >= 0) pam_kvm_seq_free(e->kvm, seq);
        if (st != PAM_OK) seq = -1; /* fall back to the cache, or a fresh sequence */
        else match = run_avail, hit = -1, e->st.inflight_shared_tokens += (uint64_t)run_avail;
    }
    if (seq < 0 && hit >= 0) {
        st = pam_kvm_seq_fork(e->kvm, e->cache[hit].seq, &seq);
        if (st == PAM_OK) st = pam_kvm_seq_truncate(e->kvm, seq, match);
        if (st != PAM_OK && seq >= 0) pam_kvm_seq_free(e->kvm, seq);
        if (st != PAM_OK) match = 0, seq = -1; /* fall back to a fresh sequence */
        else e->cache[hit].last_used = ++e->clock; /* most recent: evicted last below */
    }
    if (seq < 0) {
        match = 0;
        if (pam_kvm_seq_create(e->kvm, &seq) != PAM_OK) return 0;
        if (r->own_sparse && pam_kvm_seq_set_sparse(e->kvm, seq, &r->sparse) != PAM_OK) { /* checked at submit */
            pam_kvm_seq_free(e->kvm, seq);
            return -1;
        }
    }
    int32_t decode = decode_reserve(e, r);
    /* a partially matched block is shared: its first store copies it */
    int32_t cow = match % e->bt ? e->bt : 0;
    /* The group's other choices, until they fork: each recomputes the last
     * prompt token, decodes, and may copy two shared blocks; fork_choices
     * hands this out. */
    int32_t group = r->n_sibs * (1 + decode + 2 * e->bt);
    st = reserve_evicting(e, seq, r->n_fill - match + decode + cow + group);
    if (st == PAM_ERR_FULL && e->n_running == 0 && e->n_paused == 0) {
        /* Nothing else holds KV: the minimum (prompt and one token) or never. */
        st = reserve_evicting(e, seq, r->n_fill - match + 1 + cow);
        if (st == PAM_ERR_FULL) {
            pam_kvm_seq_free(e->kvm, seq);
            return -1;
        }
    }
    if (st != PAM_OK) {
        pam_kvm_seq_free(e->kvm, seq);
        return 0;
    }
    /* (not for prompt log-probabilities still to compute: they need every position's logits) */
    if ((e->p.persist || e->p.remote) && (!r->prompt_lp || r->plp_done) &&
        remote_fetch(e, r, seq, &match, decode + group) != PAM_OK) {
        pam_kvm_seq_free(e->kvm, seq);
        return 0;
    }
    r->seq = seq;
    r->r_skip = match / e->bt;
    *reuse = match;
    return 1;
}

/* e->mu held: the queue head, with its KV ready, takes slot. */
static void start(pam_engine *e, pam_request *r, int slot, int32_t reuse) {
    e->q_head = r->next_q;
    if (!e->q_head) e->q_tail = NULL;
    r->next_q = NULL;
    e->n_queued--;
    pam_ctx_params cp;
    pam_ctx_params_default(&cp);
    cp.n_ctx = e->p.n_ctx;
    cp.kvm = e->kvm;
    cp.kv_seq = r->seq;
    if (pam_ctx_create_ex(e->m, &cp, e->pool, &r->ctx) != PAM_OK) {
        pam_kvm_seq_free(e->kvm, r->seq);
        r->seq = -1;
        r->ctx = NULL;
        request_done(e, r, PAM_FINISH_ERROR);
        if (engine_idle(e)) pthread_cond_broadcast(&e->idle_cv);
        return;
    }
    e->run[slot] = r;
    e->n_running++;
    r->slot = slot;
    r->admit_order = ++e->admit_clock;
    r->n_past = reuse;
    r->state = REQ_RUNNING;
    if (r->n_requeued > 0) return; /* counted when it first started */
    r->n_cached = reuse;
    e->st.n_prompt_tokens += (uint64_t)r->n_prompt;
    if (e->p.prefix_cache) {
        e->st.prefix_lookups++;
        if (reuse > 0) e->st.prefix_hits++;
        e->st.prefix_tokens_reused += (uint64_t)reuse;
    }
}

/* e->mu held, engine thread: the step that prefilled r's prompt. Its
 * waiting choices fork its sequence, truncated to all but the last prompt
 * token (each recomputes that one for its own first draw, which gives the
 * logits the first request had), and take a free slot or wait in the paused
 * list holding their KV. A partly filled last block stays shared until a
 * store copies it. */
static void fork_choices(pam_engine *e, pam_request *r) {
    int32_t n = r->n_sibs;
    r->n_sibs = 0;
    int32_t match = r->n_prompt - 1, decode = decode_reserve(e, r);
    int32_t cow = match % e->bt ? e->bt : 0;
    /* r's reservation covered the group: give it back, and take r's share
     * if it goes on (best effort; room_for tops it up each step). */
    pam_kvm_seq_truncate(e->kvm, r->seq, r->n_past);
    if (!r->score_only && r->finishing == PAM_FINISH_NONE)
        reserve_evicting(e, r->seq, decode + (r->n_past % e->bt ? e->bt : 0));
    for (int32_t i = 0; i < n; i++) {
        pam_request *c = r->sibs[i];
        if (c->cancel) {
            request_done(e, c, PAM_FINISH_CANCELLED);
            continue;
        }
        if (c->prompt_lp) {
            memcpy(c->prompt_lp, r->prompt_lp, (size_t)r->n_prompt * sizeof *c->prompt_lp);
            c->plp_done = c->prompt_lp_ready = 1;
        }
        c->n_cached = r->n_cached;
        if (r->score_only) {
            request_done(e, c, PAM_FINISH_LENGTH);
            continue;
        }
        int32_t seq = -1;
        pam_status st = pam_kvm_seq_fork(e->kvm, r->seq, &seq);
        if (st == PAM_OK) st = pam_kvm_seq_truncate(e->kvm, seq, match);
        if (st == PAM_OK) {
            st = reserve_evicting(e, seq, 1 + decode + cow);
            if (st == PAM_ERR_FULL) st = reserve_evicting(e, seq, 1 + cow);
        }
        if (st == PAM_OK) {
            pam_ctx_params cp;
            pam_ctx_params_default(&cp);
            cp.n_ctx = e->p.n_ctx;
            cp.kvm = e->kvm;
            cp.kv_seq = seq;
            st = pam_ctx_create_ex(e->m, &cp, e->pool, &c->ctx);
        }
        if (st != PAM_OK) {
            if (seq >= 0) pam_kvm_seq_free(e->kvm, seq);
            c->ctx = NULL;
            request_done(e, c, PAM_FINISH_ERROR);
            continue;
        }
        c->seq = seq;
        c->n_past = match;
        c->r_skip = match / e->bt; /* the first request publishes the prompt's blocks */
        c->state = REQ_RUNNING;
        c->admit_order = ++e->admit_clock;
        int slot = free_slot(e);
        if (slot >= 0) {
            e->run[slot] = c;
            c->slot = slot;
            e->n_running++;
        } else {
            paused_insert(e, c);
        }
    }
}

/* e->mu held. */
static void admit(pam_engine *e) {
    for (;;) {
        pam_request *h = e->q_head, *p = e->paused;
        int slot = free_slot(e);
        if (p && slot >= 0 && (!h || p->priority >= h->priority)) {
            resume(e, p, slot);
            continue;
        }
        if (!h) return;
        pam_request *victim = NULL;
        if (slot < 0 && !(victim = pick_victim(e, h->priority))) return;
        int32_t reuse = 0;
        int rc = prepare_kv(e, h, &reuse);
        if (rc < 0) {
            e->q_head = h->next_q;
            if (!e->q_head) e->q_tail = NULL;
            e->n_queued--;
            request_done(e, h, PAM_FINISH_ERROR);
            if (engine_idle(e)) pthread_cond_broadcast(&e->idle_cv);
            continue;
        }
        if (rc == 0) {
            /* The head waits for KV; a paused request needs none. */
            if (p && slot >= 0) {
                resume(e, p, slot);
                continue;
            }
            return;
        }
        if (victim) slot = preempt(e, victim);
        start(e, h, slot, reuse);
    }
}

static int gen_append(pam_request *r, const char *s, size_t n) {
    if (r->gen_len + n + 1 > r->gen_cap) {
        size_t cap = r->gen_cap ? r->gen_cap : 256;
        while (cap < r->gen_len + n + 1) cap *= 2;
        char *g = realloc(r->gen, cap);
        if (!g) return 0;
        r->gen = g;
        r->gen_cap = cap;
    }
    memcpy(r->gen + r->gen_len, s, n);
    r->gen_len += n;
    r->gen[r->gen_len] = '\0';
    return 1;
}

/* After new text: finds a stop string in the unemitted text. Returns 1 and
 * truncates gen at the match if one is found. Otherwise *safe gets how much
 * of gen may be emitted: everything except a tail that could still grow
 * into a stop string. */
static int stop_check(pam_request *r, size_t *safe) {
    const char *tail = r->gen + r->gen_emitted;
    size_t n = r->gen_len - r->gen_emitted;
    size_t first = (size_t)-1;
    for (int i = 0; i < r->n_stop; i++) {
        const char *hit = memmem(tail, n, r->stop[i], strlen(r->stop[i]));
        if (hit && (size_t)(hit - tail) < first) first = (size_t)(hit - tail);
    }
    if (first != (size_t)-1) {
        r->stop_cut = 1;
        r->gen_len = r->gen_emitted + first;
        r->gen[r->gen_len] = '\0';
        *safe = r->gen_len;
        return 1;
    }
    size_t hold = 0;
    for (int i = 0; i < r->n_stop; i++) {
        size_t sl = strlen(r->stop[i]);
        for (size_t k = sl - 1 < n ? sl - 1 : n; k > hold; k--)
            if (memcmp(tail + n - k, r->stop[i], k) == 0) {
                hold = k;
                break;
            }
    }
    *safe = r->gen_len - hold;
    return 0;
}

/* Engine thread, lock not held: handles token tok sampled for r. Sets
 * r->finishing when the request ends; the text to publish is then all of gen
 * (a matched stop string has already been cut off). Returns 1 if the token
 * counts as generated (end-of-generation tokens do not). */
static int on_token(pam_engine *e, pam_request *r, int32_t tok, const pam_token_logprob *lp, int64_t now) {
    if (r->t_first_ns == 0) r->t_first_ns = now;
    r->t_last_ns = now;
    char buf[4096];
    size_t safe;
    int counted = 0;
    if (!r->ignore_eos && pam_tokenizer_is_eog(e->tk, tok)) {
        r->finishing = PAM_FINISH_STOP;
    } else {
        r->gen_tok[r->n_gen] = tok; /* index n_gen is not visible to readers yet */
        if (lp && r->gen_lp) {
            r->gen_lp[r->n_gen] = *lp;
            r->gen_lp[r->n_gen].text_off = (int32_t)r->gen_len;
        }
        pthread_mutex_lock(&e->mu);
        r->n_gen++;
        pthread_mutex_unlock(&e->mu);
        counted = 1;
        pam_sampler_accept(r->sampler, tok);
        r->last_tok = tok;
        size_t w = pam_detok_push(&r->dt, tok, buf, sizeof buf);
        if (!gen_append(r, buf, w)) {
            r->finishing = PAM_FINISH_ERROR;
            return counted;
        }
        if (stop_check(r, &safe)) {
            r->finishing = PAM_FINISH_STOP;
            return counted;
        }
        /* prompt + output never exceed the context: the last token sampled
         * need not fit in the KV, but it counts */
        if ((r->max_tokens > 0 && r->n_gen >= r->max_tokens) || r->n_prompt + r->n_gen >= e->p.n_ctx)
            r->finishing = PAM_FINISH_LENGTH;
    }
    if (r->finishing != PAM_FINISH_NONE) {
        /* The end: bytes held back for an unfinished character go out too
         * (and may complete a stop string). */
        size_t w = pam_detok_flush(&r->dt, buf, sizeof buf);
        if (gen_append(r, buf, w) && stop_check(r, &safe)) r->finishing = PAM_FINISH_STOP;
    }
    return counted;
}

/* e->mu held: moves the log-probabilities of the tokens whose text starts
 * before upto (at the end: of every token, unless a stop string cut the
 * text) to the client's buffer. */
static void publish_logprobs(pam_request *r, size_t upto, int final) {
    int32_t k = r->lp_emitted;
    while (k < r->n_gen && ((size_t)r->gen_lp[k].text_off < upto || (final && !r->stop_cut))) k++;
    int32_t n = k - r->lp_emitted;
    if (n == 0) return;
    if (r->n_lp_out + n > r->cap_lp_out) {
        int32_t cap = r->cap_lp_out ? r->cap_lp_out : 16;
        while (cap < r->n_lp_out + n) cap *= 2;
        pam_token_logprob *o = realloc(r->lp_out, (size_t)cap * sizeof *o);
        if (!o) return; /* they stay pending and go out with the next publish */
        r->lp_out = o;
        r->cap_lp_out = cap;
    }
    memcpy(r->lp_out + r->n_lp_out, r->gen_lp + r->lp_emitted, (size_t)n * sizeof *r->lp_out);
    r->n_lp_out += n;
    r->lp_emitted = k;
    request_signal(r);
}

/* e->mu held: moves emittable text to the client's buffer. */
static void publish(pam_request *r, size_t upto, int final) {
    if (r->gen_lp) publish_logprobs(r, upto, final);
    if (upto <= r->gen_emitted) return;
    size_t n = upto - r->gen_emitted;
    if (r->out_len + n > r->out_cap) {
        size_t cap = r->out_cap ? r->out_cap : 256;
        while (cap < r->out_len + n) cap *= 2;
        char *o = realloc(r->out, cap);
        if (!o) return; /* the text stays pending and goes out with the next publish */
        r->out = o;
        r->out_cap = cap;
    }
    memcpy(r->out + r->out_len, r->gen + r->gen_emitted, n);
    r->out_len += n;
    r->gen_emitted = upto;
    request_signal(r);
}

/* Engine thread: r ends now, without a new token. */
static void finish_now(pam_request *r, pam_finish f) {
    char buf[4096];
    size_t safe;
    r->finishing = f;
    size_t w = pam_detok_flush(&r->dt, buf, sizeof buf);
    if (gen_append(r, buf, w) && stop_check(r, &safe) && f != PAM_FINISH_ERROR) r->finishing = PAM_FINISH_STOP;
}

/* e->mu held: r (running, not in this step's batch yet) gives up its slot
 * and its KV and goes back to the head of the queue. Its KV goes to the
 * prefix cache, where it is the first thing reused when r comes back and
 * the first thing evicted while others need room; r then prefills what is
 * left of its prompt and of the tokens it generated (the last sampled one
 * is decoded as usual), so its output is what it would have been alone. */
static void requeue(pam_engine *e, pam_request *r) {
    if (r->n_gen > 0) {
        int32_t n = r->n_prompt + r->n_gen - 1;
        int32_t *p = realloc(r->prompt, (size_t)n * sizeof *p);
        if (!p) {
            finish_now(r, PAM_FINISH_ERROR);
            return;
        }
        memcpy(p + r->n_prompt, r->gen_tok, (size_t)(r->n_gen - 1) * sizeof *p);
        r->prompt = p;
        r->n_fill = n;
        r->refill = 1;
    }
    release_kv(e, r, PAM_FINISH_NONE);
    r->seq = -1;
    e->run[r->slot] = NULL;
    r->slot = -1;
    e->n_running--;
    r->state = REQ_QUEUED;
    r->n_past = 0;
    r->n_requeued++;
    r->next_q = e->q_head;
    e->q_head = r;
    if (!e->q_tail) e->q_tail = r;
    e->n_queued++;
    e->st.n_requeued++;
}

/* e->mu held: makes sure r's sequence can store k more positions this step
 * (evicting cached prefixes if needed). When the tiers are full, r yields:
 * it is requeued (its KV kept in the prefix cache) and resumes when others
 * have finished, so running out of KV never cuts a reply short. Submit
 * refuses what could never fit, so a request alone always has room. */
static int room_for(pam_engine *e, pam_request *r, int32_t k) {
    int32_t len = pam_kvm_seq_len(e->kvm, r->seq);
    if (r->n_past + k <= len) return 1;
    pam_status st = reserve_evicting(e, r->seq, r->n_past + k - len);
    if (st == PAM_OK) return 1;
    if (st == PAM_ERR_FULL && (e->n_running > 1 || e->n_paused > 0)) requeue(e, r);
    else finish_now(r, st == PAM_ERR_FULL ? PAM_FINISH_LENGTH : PAM_FINISH_ERROR);
    return 0;
}

/* e->mu held: the prefilling slots in the order they get this step's
 * prompt budget (pam_prefill_plan), into e->order, and the budget. Batch
 * composition never changes a request's output, so this affects timing only. */
static int32_t prefill_order(pam_engine *e, int32_t *budget) {
    int32_t n = 0;
    for (int32_t i = 0; i < e->p.n_slots; i++) {
        pam_request *r = e->run[i];
        if (!r || r->n_past >= r->n_fill || r->finishing != PAM_FINISH_NONE) continue;
        e->pitems[n] = (pam_prefill_item){.remaining = r->n_fill - r->n_past,
                                          .first_pending = !r->refill && r->n_gen == 0,
                                          .t_submit_ns = r->t_submit_ns,
                                          .admit_order = r->admit_order};
        e->pslot[n++] = i;
    }
    *budget = pam_prefill_plan(e->pitems, n, e->p.prefill_chunk, e->p.prefill_burst, e->order);
    for (int32_t j = 0; j < n; j++) e->order[j] = e->pslot[e->order[j]];
    return n;
}

static void *engine_main(void *arg) {
    pam_engine *e = arg;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        for (int32_t i = 0; i < e->p.n_slots; i++) {
            pam_request *r = e->run[i];
            if (r && (r->cancel || e->stop)) retire(e, r, PAM_FINISH_CANCELLED);
        }
        for (pam_request *r = e->paused, *next; r; r = next) {
            next = r->next_q;
            if (r->cancel || e->stop) retire(e, r, PAM_FINISH_CANCELLED);
        }
        if (e->stop) break;
        admit(e);
        if (e->n_demote > 0) {
            /* Preempted: blocks to the slowest tier, without the lock (I/O).
             * Only this thread retires requests, so they stay valid. */
            int nd = e->n_demote;
            e->n_demote = 0;
            pthread_mutex_unlock(&e->mu);
            for (int i = 0; i < nd; i++)
                if (e->demote[i]->paused) demote_seq(e, e->demote[i]->seq);
            pthread_mutex_lock(&e->mu);
        }
        snapshot_kv(e);
        if (e->n_running == 0) {
            pthread_cond_wait(&e->work_cv, &e->mu);
            continue;
        }
        /* Batch: decode tokens first, then prompt tokens (prefill_order).
         * Each sequence has room reserved for what it stores. */
        int32_t n = 0;
        for (int32_t i = 0; i < e->p.n_slots; i++) {
            pam_request *r = e->run[i];
            if (!r || r->n_past < r->n_fill || r->finishing != PAM_FINISH_NONE || !room_for(e, r, 1)) continue;
            e->b_ctx[n] = r->ctx, e->b_tok[n] = r->last_tok, e->b_pos[n] = r->n_past, e->b_req[n] = r;
            e->b_own[n] = r;
            n++;
        }
        int32_t budget, n_order = prefill_order(e, &budget), lp_left = e->p.prefill_chunk;
        for (int32_t j = 0; j < n_order && budget > 0; j++) {
            pam_request *r = e->run[e->order[j]];
            if (!r || r->n_past >= r->n_fill || r->finishing != PAM_FINISH_NONE) continue;
            int32_t take = r->n_fill - r->n_past < budget ? r->n_fill - r->n_past : budget;
            int lp = r->prompt_lp && !r->plp_done;
            if (lp && take > lp_left) take = lp_left; /* a logits row per token: within the chunk */
            if (take == 0) continue;
            if (!room_for(e, r, take)) continue;
            for (int32_t k = 0; k < take; k++) {
                e->b_ctx[n] = r->ctx, e->b_tok[n] = r->prompt[r->n_past + k], e->b_pos[n] = r->n_past + k;
                /* logits of interest: the chunk's last token, unless a
                 * requeued request only restores its KV (its next token is
                 * already sampled) */
                e->b_req[n] = k == take - 1 && !r->refill ? r : NULL;
                e->b_own[n] = r;
                n++;
            }
            budget -= take;
            if (lp) lp_left -= take;
        }
        pthread_mutex_unlock(&e->mu);

        int32_t n_new = 0, n_prefilled = 0;
        pam_kvm_report rep = {0};
        if (n > 0) {
            /* Logits only where a token is sampled (decode tokens and the
             * last token of a prompt chunk) or a prompt token's
             * log-probability is wanted; rows come back compacted. */
            for (int32_t i = 0; i < n; i++) {
                const pam_request *o = e->b_own[i];
                e->b_want[i] = e->b_req[i] != NULL || (o->prompt_lp && !o->plp_done && e->b_pos[i] + 1 < o->n_prompt);
            }
            pam_status st = pam_forward_batch_ex(e->b_ctx, e->b_tok, e->b_pos, n, e->b_want, e->logits);
            int64_t now = pam_time_ns();
            int32_t n_rows = 0;
            for (int32_t i = 0; i < n; i++) {
                int32_t my_row = e->b_want[i] ? n_rows++ : -1;
                pam_request *owner = e->b_own[i];
                if (st != PAM_OK) {
                    owner->finishing = PAM_FINISH_ERROR;
                    continue;
                }
                owner->n_past = e->b_pos[i] + 1; /* the token is in the KV now */
                if (owner->n_past <= owner->n_fill) n_prefilled++;
                if (owner->refill && owner->n_past >= owner->n_fill) owner->refill = 0;
                const float *row = my_row >= 0 ? e->logits + (size_t)my_row * e->n_vocab : NULL;
                if (row && owner->prompt_lp && !owner->plp_done && owner->n_past < owner->n_prompt)
                    pam_logprobs(row, e->n_vocab, owner->prompt[owner->n_past], owner->plp_k,
                                 &owner->prompt_lp[owner->n_past]);
                pam_request *r = e->b_req[i];
                if (!r || r->n_past < r->n_fill) continue;
                if (r->finishing != PAM_FINISH_NONE) continue;
                if (r->score_only) {
                    finish_now(r, PAM_FINISH_LENGTH);
                    continue;
                }
                int32_t tok = pam_sampler_sample(r->sampler, row);
                pam_token_logprob lp;
                if (r->lp_k >= 0) pam_sampler_logprobs(r->sampler, tok, r->lp_k, &lp);
                n_new += on_token(e, r, tok, r->lp_k >= 0 ? &lp : NULL, now);
            }
            if ((e->p.remote || e->p.persist) && st == PAM_OK)
                for (int32_t i = 0; i < e->p.n_slots; i++)
                    if (e->run[i] && e->run[i]->finishing != PAM_FINISH_ERROR) remote_publish(e, e->run[i]);
            /* Between steps: importance, scheduling, migrations. */
            pam_kvm_step_end(e->kvm);
            pam_kvm_report_get(e->kvm, &rep);
        }

        pthread_mutex_lock(&e->mu);
        if (n > 0) {
            e->st.n_steps++;
            e->st.n_migrations += rep.migrations_step;
            e->st.n_migration_failures = rep.migration_failures;
        }
        e->st.n_prefilled_tokens += (uint64_t)n_prefilled;
        e->st.n_generated_tokens += (uint64_t)n_new;
        for (int32_t i = 0; i < e->p.n_slots; i++) {
            pam_request *r = e->run[i];
            if (!r) continue;
            if (r->n_past >= r->n_prompt) {
                if (r->prompt_lp && !r->plp_done) r->plp_done = r->prompt_lp_ready = 1;
                if (r->n_sibs > 0 && r->finishing != PAM_FINISH_ERROR) fork_choices(e, r);
            }
            if (r->finishing != PAM_FINISH_NONE) {
                publish(r, r->gen_len, 1);
                retire(e, r, r->finishing);
            } else if (r->n_past >= r->n_fill && !r->refill) {
                size_t safe;
                stop_check(r, &safe);
                publish(r, safe, 0);
            }
        }
    }
    snapshot_kv(e);
    pthread_mutex_unlock(&e->mu);
    return NULL;
}
