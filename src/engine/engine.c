/* Continuous-batching engine (see engine.h for the scheduling loop).
 *
 * States of a request: QUEUED (in the FIFO, no slot) -> RUNNING (owns a
 * slot; prefilling while n_past < n_prompt, then decoding) -> DONE. A queued
 * request that is cancelled goes straight to DONE. Invariants:
 *   - only the engine thread touches slots, contexts and the engine-side
 *     fields of a running request (n_past, sampler, detok, gen text);
 *   - everything a client reads (out text, done, counts) and the queue are
 *     guarded by e->mu;
 *   - a slot's cache_tok[0 .. n_cache) are exactly the tokens whose KV sits
 *     at those positions of the slot's context, which is what makes prefix
 *     reuse exact;
 *   - a request is freed when both the client (release) and the engine
 *     (DONE) have let go of it (refs). */
#include "engine/engine.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/status.h"
#include "core/timing.h"
#include "model/tokenizer.h"

#define KV_BLOCK_TOKENS 16

enum { REQ_QUEUED, REQ_RUNNING, REQ_DONE };

struct pam_request {
    pam_engine *e;
    /* immutable after submit */
    int32_t *prompt;
    int32_t n_prompt;
    int32_t max_tokens;
    int ignore_eos;
    int n_stop;
    char *stop[PAM_ENGINE_MAX_STOP];
    int64_t t_submit_ns;

    /* engine thread only */
    pam_sampler *sampler;
    int slot;
    int32_t n_past;   /* tokens in the slot's KV */
    int32_t last_tok; /* sampled, not yet fed */
    int32_t *gen_tok; /* generated ids (n_gen of them) */
    pam_detok dt;
    char *gen;        /* generated text after stop filtering decisions */
    size_t gen_len, gen_cap, gen_emitted;
    int64_t t_first_ns, t_last_ns;
    pam_finish finishing; /* set by the step; published under the lock */
    struct pam_request *next_q; /* FIFO link */

    /* guarded by e->mu */
    int state;
    int cancel;
    int refs;
    int32_t n_gen;
    int32_t n_cached;
    pam_finish finish;
    char *out;
    size_t out_len, out_cap;
    pthread_cond_t cv;
};

typedef struct slot {
    pam_ctx *ctx;
    int32_t *cache_tok;
    int32_t n_cache;     /* engine thread only */
    int32_t n_cache_pub; /* n_cache as of the last step, for stats (under mu) */
    pam_request *req;
    uint64_t last_used;
} slot;

struct pam_engine {
    const pam_model *m;
    const pam_tokenizer *tk;
    pam_engine_params p;
    int32_t n_vocab;
    slot *slots;
    float *logits;
    int32_t batch_cap;
    pam_ctx **b_ctx;
    int32_t *b_tok, *b_pos;
    pam_request **b_req;
    int32_t *b_slot;
    uint8_t *b_want; /* logits wanted for this batch entry */
    uint64_t use_clock;

    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* engine thread waits for work */
    pthread_cond_t idle_cv; /* drain waits for an empty engine */
    pam_request *q_head, *q_tail;
    int32_t n_queued, n_running;
    int stop, draining;
    pam_engine_stats st;
};

void pam_engine_params_default(pam_engine_params *p) {
    memset(p, 0, sizeof *p);
    p->n_slots = 4;
    p->n_ctx = 0;
    p->kv_type = PAM_DT_F16;
    p->n_queue = 64;
    p->prefill_chunk = 256;
    p->prefix_cache = 1;
}

void pam_request_params_default(pam_request_params *p) {
    memset(p, 0, sizeof *p);
    pam_sampler_params_default(&p->sampling);
    p->max_tokens = 0;
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

pam_status pam_engine_create(const pam_model *m, pam_pool *pool, const pam_engine_params *p, pam_engine **out) {
    const pam_model_hparams *hp = pam_model_get_hparams(m);
    if (p->n_slots < 1 || p->n_slots > 1024) return PAM_ERR(PAM_ERR_INVALID, "engine: slots must be in 1..1024, got %d", p->n_slots);
    if (p->n_queue < 0) return PAM_ERR(PAM_ERR_INVALID, "engine: negative queue size");
    if (p->prefill_chunk < 1) return PAM_ERR(PAM_ERR_INVALID, "engine: prefill chunk must be >= 1");
    pam_engine *e = calloc(1, sizeof *e);
    if (!e) return PAM_ERR(PAM_ERR_NOMEM, "engine");
    e->m = m;
    e->tk = pam_model_tokenizer(m);
    e->p = *p;
    if (e->p.n_ctx <= 0) e->p.n_ctx = hp->n_ctx_train;
    e->n_vocab = hp->n_vocab;
    e->batch_cap = e->p.n_slots + e->p.prefill_chunk;
    e->slots = calloc((size_t)e->p.n_slots, sizeof *e->slots);
    e->logits = malloc((size_t)e->batch_cap * (size_t)e->n_vocab * sizeof(float));
    e->b_ctx = malloc((size_t)e->batch_cap * sizeof *e->b_ctx);
    e->b_tok = malloc((size_t)e->batch_cap * sizeof *e->b_tok);
    e->b_pos = malloc((size_t)e->batch_cap * sizeof *e->b_pos);
    e->b_req = malloc((size_t)e->batch_cap * sizeof *e->b_req);
    e->b_slot = malloc((size_t)e->batch_cap * sizeof *e->b_slot);
    e->b_want = malloc((size_t)e->batch_cap * sizeof *e->b_want);
    pam_status st = PAM_OK;
    if (!e->slots || !e->logits || !e->b_ctx || !e->b_tok || !e->b_pos || !e->b_req || !e->b_slot || !e->b_want) {
        st = PAM_ERR(PAM_ERR_NOMEM, "engine buffers");
        goto fail;
    }
    pam_ctx_params cp = {.n_ctx = e->p.n_ctx, .kv_type = e->p.kv_type, .kv_seq = -1};
    for (int32_t i = 0; i < e->p.n_slots; i++) {
        slot *s = &e->slots[i];
        if ((st = pam_ctx_create_ex(m, &cp, pool, &s->ctx)) != PAM_OK) goto fail;
        s->cache_tok = malloc((size_t)e->p.n_ctx * sizeof(int32_t));
        if (!s->cache_tok) {
            st = PAM_ERR(PAM_ERR_NOMEM, "engine slot");
            goto fail;
        }
    }
    static const double ttft_le[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
    static const double tpot_le[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
    hist_init(&e->st.ttft, ttft_le, (int)(sizeof ttft_le / sizeof *ttft_le));
    hist_init(&e->st.tpot, tpot_le, (int)(sizeof tpot_le / sizeof *tpot_le));
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->work_cv, NULL);
    pthread_cond_init(&e->idle_cv, NULL);
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        pthread_mutex_destroy(&e->mu);
        pthread_cond_destroy(&e->work_cv);
        pthread_cond_destroy(&e->idle_cv);
        st = PAM_ERR(PAM_ERR_NOMEM, "engine: cannot start its thread");
        goto fail;
    }
    *out = e;
    return PAM_OK;
fail:
    for (int32_t i = 0; e->slots && i < e->p.n_slots; i++) {
        pam_ctx_free(e->slots[i].ctx);
        free(e->slots[i].cache_tok);
    }
    free(e->slots);
    free(e->logits);
    free(e->b_ctx);
    free(e->b_tok);
    free(e->b_pos);
    free(e->b_req);
    free(e->b_slot);
    free(e->b_want);
    free(e);
    return st;
}

static void request_free(pam_request *r) {
    pthread_cond_destroy(&r->cv);
    pam_sampler_free(r->sampler);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->prompt);
    free(r->gen_tok);
    free(r->gen);
    free(r->out);
    free(r);
}

/* e->mu held. The engine lets go of r: finished for whatever reason. */
static void request_done(pam_engine *e, pam_request *r, pam_finish f) {
    r->finish = f;
    r->state = REQ_DONE;
    e->st.n_finished[f]++;
    if (f != PAM_FINISH_CANCELLED && r->n_gen > 0) {
        hist_observe(&e->st.ttft, (double)(r->t_first_ns - r->t_submit_ns) / 1e9);
        if (r->n_gen > 1) hist_observe(&e->st.tpot, (double)(r->t_last_ns - r->t_first_ns) / 1e9 / (r->n_gen - 1));
    }
    pthread_cond_broadcast(&r->cv);
    if (--r->refs == 0) request_free(r);
}

void pam_engine_destroy(pam_engine *e) {
    if (!e) return;
    pthread_mutex_lock(&e->mu);
    e->stop = 1;
    pthread_cond_signal(&e->work_cv);
    pthread_mutex_unlock(&e->mu);
    pthread_join(e->thread, NULL);
    /* The thread retired every running request; queued ones are left. */
    while (e->q_head) {
        pam_request *r = e->q_head;
        e->q_head = r->next_q;
        request_done(e, r, PAM_FINISH_CANCELLED);
    }
    for (int32_t i = 0; i < e->p.n_slots; i++) {
        pam_ctx_free(e->slots[i].ctx);
        free(e->slots[i].cache_tok);
    }
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->work_cv);
    pthread_cond_destroy(&e->idle_cv);
    free(e->slots);
    free(e->logits);
    free(e->b_ctx);
    free(e->b_tok);
    free(e->b_pos);
    free(e->b_req);
    free(e->b_slot);
    free(e->b_want);
    free(e);
}

pam_status pam_engine_submit(pam_engine *e, const int32_t *prompt, int32_t n_prompt, const pam_request_params *p,
                             pam_request **out) {
    if (n_prompt <= 0) return PAM_ERR(PAM_ERR_INVALID, "the prompt is empty");
    if (n_prompt >= e->p.n_ctx)
        return PAM_ERR(PAM_ERR_RANGE, "the prompt has %d tokens but the context holds %d", n_prompt, e->p.n_ctx);
    for (int32_t i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= e->n_vocab)
            return PAM_ERR(PAM_ERR_RANGE, "token id %d out of range (vocabulary of %d)", prompt[i], e->n_vocab);
    if (p->n_stop < 0 || p->n_stop > PAM_ENGINE_MAX_STOP)
        return PAM_ERR(PAM_ERR_INVALID, "at most %d stop strings", PAM_ENGINE_MAX_STOP);
    PAM_TRY(pam_sampler_params_check(&p->sampling));
    pam_request *r = calloc(1, sizeof *r);
    if (!r) return PAM_ERR(PAM_ERR_NOMEM, "request");
    r->e = e;
    r->slot = -1;
    r->refs = 2;
    r->max_tokens = p->max_tokens;
    r->ignore_eos = p->ignore_eos;
    r->prompt = malloc((size_t)n_prompt * sizeof *r->prompt);
    int32_t room = e->p.n_ctx - n_prompt + 1;
    r->gen_tok = malloc((size_t)room * sizeof *r->gen_tok);
    pthread_cond_init(&r->cv, NULL);
    int ok = r->prompt && r->gen_tok;
    for (int i = 0; ok && i < p->n_stop; i++) {
        if (!p->stop[i] || !p->stop[i][0]) continue; /* empty stop strings never match */
        if (!(r->stop[r->n_stop] = strdup(p->stop[i]))) ok = 0;
        else r->n_stop++;
    }
    pam_status st = ok ? pam_sampler_create(&p->sampling, e->n_vocab, &r->sampler) : PAM_ERR(PAM_ERR_NOMEM, "request");
    if (st != PAM_OK) {
        request_free(r);
        return st;
    }
    memcpy(r->prompt, prompt, (size_t)n_prompt * sizeof *prompt);
    r->n_prompt = n_prompt;
    for (int32_t i = 0; i < n_prompt; i++) pam_sampler_accept(r->sampler, prompt[i]);
    pam_detok_init(&r->dt, e->tk);
    /* SentencePiece drops the leading space of the first piece after BOS;
     * generated text continues the prompt, so only do that for an empty one. */
    r->dt.at_start = 0;
    r->t_submit_ns = pam_time_ns();

    pthread_mutex_lock(&e->mu);
    if (e->draining || e->stop || e->n_queued >= e->p.n_queue) {
        int draining = e->draining || e->stop;
        e->st.n_rejected_full++;
        pthread_mutex_unlock(&e->mu);
        request_free(r);
        return draining ? PAM_ERR(PAM_ERR_FULL, "the server is shutting down")
                        : PAM_ERR(PAM_ERR_FULL, "the request queue is full (%d waiting)", e->p.n_queue);
    }
    r->state = REQ_QUEUED;
    if (e->q_tail) e->q_tail->next_q = r;
    else e->q_head = r;
    e->q_tail = r;
    e->n_queued++;
    e->st.n_submitted++;
    pthread_cond_signal(&e->work_cv);
    pthread_mutex_unlock(&e->mu);
    *out = r;
    return PAM_OK;
}

void pam_engine_drain(pam_engine *e) {
    pthread_mutex_lock(&e->mu);
    e->draining = 1;
    while (e->n_queued > 0 || e->n_running > 0) pthread_cond_wait(&e->idle_cv, &e->mu);
    pthread_mutex_unlock(&e->mu);
}

int pam_request_next(pam_request *r, int64_t timeout_ms, pam_request_update *u) {
    pam_engine *e = r->e;
    memset(u, 0, sizeof *u);
    pthread_mutex_lock(&e->mu);
    if (r->out_len == 0 && r->state != REQ_DONE && timeout_ms > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t ns = ts.tv_nsec + (timeout_ms % 1000) * 1000000;
        ts.tv_sec += (time_t)(timeout_ms / 1000 + ns / 1000000000);
        ts.tv_nsec = (long)(ns % 1000000000);
        while (r->out_len == 0 && r->state != REQ_DONE)
            if (pthread_cond_timedwait(&r->cv, &e->mu, &ts) != 0) break;
    }
    if (r->out_len > 0) {
        u->text = r->out;
        u->len = r->out_len;
        r->out = NULL;
        r->out_len = r->out_cap = 0;
    }
    u->done = r->state == REQ_DONE; /* with the last text, if any */
    u->finish = u->done ? r->finish : PAM_FINISH_NONE;
    u->n_prompt_tokens = r->n_prompt;
    u->n_completion_tokens = r->n_gen;
    u->n_cached_tokens = r->n_cached;
    int got = u->text != NULL || u->done;
    pthread_mutex_unlock(&e->mu);
    return got;
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
            if (e->n_queued == 0 && e->n_running == 0) pthread_cond_broadcast(&e->idle_cv);
            request_done(e, r, PAM_FINISH_CANCELLED);
        }
    } else if (r->state == REQ_RUNNING) {
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

void pam_request_release(pam_request *r) {
    if (!r) return;
    pam_engine *e = r->e;
    pthread_mutex_lock(&e->mu);
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
    uint64_t tokens = 0, blocks = 0, bytes = 0;
    for (int32_t i = 0; i < e->p.n_slots; i++) {
        int32_t n = e->slots[i].n_cache_pub;
        tokens += (uint64_t)n;
        blocks += (uint64_t)((n + KV_BLOCK_TOKENS - 1) / KV_BLOCK_TOKENS);
        bytes += pam_ctx_kv_bytes_at(e->slots[i].ctx, n);
    }
    s->kv_tokens = tokens;
    s->kv_bytes_used = bytes;
    s->kv_bytes_capacity = (uint64_t)e->p.n_slots * pam_ctx_kv_bytes_at(e->slots[0].ctx, e->p.n_ctx);
    s->kv_block_tokens = KV_BLOCK_TOKENS;
    s->kv_blocks_used = blocks;
    s->kv_blocks_capacity = (uint64_t)e->p.n_slots * (uint64_t)((e->p.n_ctx + KV_BLOCK_TOKENS - 1) / KV_BLOCK_TOKENS);
    pthread_mutex_unlock(&e->mu);
}

/* ---- engine thread ---- */

/* e->mu held. Retires a running request and frees its slot; the slot keeps
 * its cached tokens for prefix reuse. */
static void retire(pam_engine *e, pam_request *r, pam_finish f) {
    e->slots[r->slot].req = NULL;
    e->slots[r->slot].last_used = ++e->use_clock;
    r->slot = -1;
    e->n_running--;
    request_done(e, r, f);
    if (e->n_queued == 0 && e->n_running == 0) pthread_cond_broadcast(&e->idle_cv);
}

/* e->mu held. */
static void admit(pam_engine *e) {
    while (e->q_head) {
        int best = -1;
        int32_t best_lcp = -1;
        for (int32_t i = 0; i < e->p.n_slots; i++) {
            slot *s = &e->slots[i];
            if (s->req) continue;
            pam_request *r = e->q_head;
            int32_t lcp = 0;
            if (e->p.prefix_cache) {
                int32_t lim = s->n_cache < r->n_prompt ? s->n_cache : r->n_prompt;
                while (lcp < lim && s->cache_tok[lcp] == r->prompt[lcp]) lcp++;
            }
            /* Longest shared prefix; among equals the least recently used
             * slot, so recently finished prefixes survive longest. */
            if (best < 0 || lcp > best_lcp || (lcp == best_lcp && s->last_used < e->slots[best].last_used)) {
                best = i;
                best_lcp = lcp;
            }
        }
        if (best < 0) return;
        pam_request *r = e->q_head;
        e->q_head = r->next_q;
        if (!e->q_head) e->q_tail = NULL;
        r->next_q = NULL;
        e->n_queued--;
        e->n_running++;
        slot *s = &e->slots[best];
        /* At least the last prompt token runs, for its logits. */
        int32_t reuse = best_lcp < r->n_prompt ? best_lcp : r->n_prompt - 1;
        s->req = r;
        s->n_cache = reuse;
        r->slot = best;
        r->n_past = reuse;
        r->n_cached = reuse;
        r->state = REQ_RUNNING;
        e->st.n_prompt_tokens += (uint64_t)r->n_prompt;
        if (e->p.prefix_cache) {
            e->st.prefix_lookups++;
            if (reuse > 0) e->st.prefix_hits++;
            e->st.prefix_tokens_reused += (uint64_t)reuse;
        }
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
static int on_token(pam_engine *e, pam_request *r, int32_t tok, int64_t now) {
    if (r->t_first_ns == 0) r->t_first_ns = now;
    r->t_last_ns = now;
    char buf[4096];
    size_t safe;
    int counted = 0;
    if (!r->ignore_eos && pam_tokenizer_is_eog(e->tk, tok)) {
        r->finishing = PAM_FINISH_STOP;
    } else {
        r->gen_tok[r->n_gen] = tok; /* index n_gen is not visible to readers yet */
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
        if ((r->max_tokens > 0 && r->n_gen >= r->max_tokens) || r->n_past >= e->p.n_ctx)
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

/* e->mu held: moves emittable text to the client's buffer. */
static void publish(pam_request *r, size_t upto) {
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
    pthread_cond_broadcast(&r->cv);
}

static void *engine_main(void *arg) {
    pam_engine *e = arg;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        for (int32_t i = 0; i < e->p.n_slots; i++) {
            pam_request *r = e->slots[i].req;
            if (r && (r->cancel || e->stop)) retire(e, r, PAM_FINISH_CANCELLED);
        }
        if (e->stop) break;
        admit(e);
        if (e->n_running == 0) {
            pthread_cond_wait(&e->work_cv, &e->mu);
            continue;
        }
        /* Batch: decode tokens first, then prefill chunks, oldest first
         * (slot order is admission order only roughly; that is fine, every
         * prefilling sequence progresses each step while budget lasts). */
        int32_t n = 0, budget = e->p.prefill_chunk;
        for (int32_t i = 0; i < e->p.n_slots; i++) {
            slot *s = &e->slots[i];
            pam_request *r = s->req;
            if (!r || r->n_past < r->n_prompt) continue;
            e->b_ctx[n] = s->ctx, e->b_tok[n] = r->last_tok, e->b_pos[n] = r->n_past, e->b_req[n] = r;
            e->b_slot[n] = i;
            n++;
        }
        for (int32_t i = 0; i < e->p.n_slots && budget > 0; i++) {
            slot *s = &e->slots[i];
            pam_request *r = s->req;
            if (!r || r->n_past >= r->n_prompt) continue;
            int32_t take = r->n_prompt - r->n_past < budget ? r->n_prompt - r->n_past : budget;
            for (int32_t k = 0; k < take; k++) {
                e->b_ctx[n] = s->ctx, e->b_tok[n] = r->prompt[r->n_past + k], e->b_pos[n] = r->n_past + k;
                e->b_req[n] = k == take - 1 ? r : NULL; /* logits of interest: the chunk's last token */
                e->b_slot[n] = i;
                n++;
            }
            budget -= take;
        }
        pthread_mutex_unlock(&e->mu);

        /* Logits only where a token is sampled: decode tokens and the last
         * token of a prompt chunk; rows come back compacted. */
        for (int32_t i = 0; i < n; i++) e->b_want[i] = e->b_req[i] != NULL;
        pam_status st = pam_forward_batch_ex(e->b_ctx, e->b_tok, e->b_pos, n, e->b_want, e->logits);
        int64_t now = pam_time_ns();
        int32_t n_new = 0, n_prefilled = 0, row = 0;
        for (int32_t i = 0; i < n; i++) {
            int32_t my_row = e->b_want[i] ? row++ : -1;
            slot *s = &e->slots[e->b_slot[i]];
            pam_request *owner = s->req;
            if (st != PAM_OK) {
                owner->finishing = PAM_FINISH_ERROR;
                continue;
            }
            /* The token is in the KV now. */
            s->cache_tok[e->b_pos[i]] = e->b_tok[i];
            s->n_cache = e->b_pos[i] + 1;
            owner->n_past = e->b_pos[i] + 1;
            if (owner->n_past <= owner->n_prompt) n_prefilled++;
            pam_request *r = e->b_req[i];
            if (!r || r->n_past < r->n_prompt) continue;
            if (r->finishing != PAM_FINISH_NONE) continue;
            int32_t tok = pam_sampler_sample(r->sampler, e->logits + (size_t)my_row * e->n_vocab);
            n_new += on_token(e, r, tok, now);
        }

        pthread_mutex_lock(&e->mu);
        e->st.n_steps++;
        e->st.n_prefilled_tokens += (uint64_t)n_prefilled;
        e->st.n_generated_tokens += (uint64_t)n_new;
        for (int32_t i = 0; i < e->p.n_slots; i++) e->slots[i].n_cache_pub = e->slots[i].n_cache;
        for (int32_t i = 0; i < e->p.n_slots; i++) {
            pam_request *r = e->slots[i].req;
            if (!r) continue;
            if (r->finishing != PAM_FINISH_NONE) {
                publish(r, r->gen_len);
                retire(e, r, r->finishing);
            } else if (r->n_past >= r->n_prompt) {
                size_t safe;
                stop_check(r, &safe);
                publish(r, safe);
            }
        }
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}
