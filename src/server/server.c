/* HTTP front end (see server.h). libmicrohttpd runs an epoll event loop on
 * a few threads of its own; no handler ever blocks. A generation request
 * suspends its connection while it waits for the engine, and the engine's
 * notifier (pam_request_set_notify) resumes it when text or the end
 * arrives, so an idle or waiting socket costs no thread. A ticker resumes
 * every waiting connection a few times a second so a client that went away
 * is noticed (and its request cancelled) even when no token comes.
 *
 * Per connection, state lives in conn_state (body bytes, size checks, a
 * non-streaming request being collected) and, for a stream, in stream (the
 * request and the bytes not yet written). The engine request is released
 * exactly once: by the handler for a non-streaming response (or on_completed
 * if the connection dies first), by the response's free callback for a
 * stream (which MHD calls on completion and on a broken connection alike, so
 * a client that goes away cancels its request and frees its slot). */
#include "server/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/status.h"
#include "core/timing.h"
#include "server/api.h"
#include "server/metrics.h"
#include "server/oai.h"

typedef struct waiter waiter;

struct pam_server {
    pam_engine *e;
    const pam_model *m;
    const pam_tokenizer *tk;
    pam_server_params p;
    char alias[256];
    pam_chat_template *chat;
    char chat_desc[640];
    struct MHD_Daemon *d;
    int port;
    int64_t created;

    pthread_mutex_t mu; /* guards everything below */
    pthread_cond_t idle_cv;
    pam_http_counters hc;
    int draining;
    int n_active; /* requests between first call and completion */
    uint64_t next_id;
    waiter *waiters; /* suspended-or-suspendable connections, for the ticker */

    pthread_t ticker;
    int ticker_started, ticker_stop;
    pthread_cond_t ticker_cv;
};

/* ---- waiting without a thread ----
 * A connection that waits on the engine is suspended; whoever has news
 * (the engine's notifier, the ticker) resumes it. `pending` covers the race
 * where news arrives between the handler's last look and its suspend. Lock
 * order: server mu, then waiter mu; the engine calls notify under its own
 * lock, and nothing holding a waiter mu takes another lock. */
struct waiter {
    pam_server *s;
    struct MHD_Connection *c;
    pthread_mutex_t mu;
    int suspended, pending;
    waiter *next, *prev;
};

static void waiter_notify(void *arg) {
    waiter *w = arg;
    pthread_mutex_lock(&w->mu);
    if (w->suspended) {
        w->suspended = 0;
        MHD_resume_connection(w->c);
    } else {
        w->pending = 1;
    }
    pthread_mutex_unlock(&w->mu);
}

/* Suspends the connection unless news came since the last look: returns 1
 * when suspended (the handler must return at once), 0 to look again. */
static int waiter_suspend(waiter *w) {
    pthread_mutex_lock(&w->mu);
    int sus = !w->pending;
    w->pending = 0;
    if (sus) {
        w->suspended = 1;
        MHD_suspend_connection(w->c);
    }
    pthread_mutex_unlock(&w->mu);
    return sus;
}

static waiter *waiter_new(pam_server *s, struct MHD_Connection *c) {
    waiter *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->s = s;
    w->c = c;
    pthread_mutex_init(&w->mu, NULL);
    pthread_mutex_lock(&s->mu);
    w->next = s->waiters;
    if (s->waiters) s->waiters->prev = w;
    s->waiters = w;
    pthread_mutex_unlock(&s->mu);
    return w;
}

/* The request it served must already be released (no notifier left). */
static void waiter_free(waiter *w) {
    if (!w) return;
    pam_server *s = w->s;
    pthread_mutex_lock(&s->mu);
    if (w->prev) w->prev->next = w->next;
    else s->waiters = w->next;
    if (w->next) w->next->prev = w->prev;
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

static void *ticker_main(void *arg) {
    pam_server *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->ticker_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 250 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&s->ticker_cv, &s->mu, &ts);
        for (waiter *w = s->waiters; w; w = w->next) waiter_notify(w);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

typedef struct conn_state {
    char *body;
    size_t len, cap;
    int too_large;
    size_t discarded;
    /* a non-streaming generation being collected */
    struct gen *g;
    waiter *w;
    char id[64];
    int64_t created;
} conn_state;

void pam_server_params_default(pam_server_params *p) {
    memset(p, 0, sizeof *p);
    p->host = "127.0.0.1";
    p->port = 8080;
    p->max_body_bytes = 1 << 20;
    p->max_connections = 8192;
    p->max_conn_per_client = 0;
    p->timeout_s = 600;
    p->chat_family = -1;
}

int pam_server_port(const pam_server *s) { return s->port; }
pam_chat_family pam_server_chat_family(const pam_server *s) { return pam_chat_template_family(s->chat); }
const char *pam_server_chat_template_desc(const pam_server *s) { return s->chat_desc; }

static void count_status(pam_server *s, unsigned status) {
    pthread_mutex_lock(&s->mu);
    if (status / 100 < 6) s->hc.by_status[status / 100]++;
    if (status == 400) s->hc.bad_request++;
    if (status == 413) s->hc.too_large++;
    if (status == 503) s->hc.queue_full++;
    pthread_mutex_unlock(&s->mu);
}

/* Takes body (malloc'd). */
static enum MHD_Result send_body(pam_server *s, struct MHD_Connection *c, unsigned status, const char *ctype,
                                 char *body, const char *retry_after) {
    if (!body) return MHD_NO;
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (retry_after) MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, retry_after);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    count_status(s, status);
    return ret;
}

static enum MHD_Result send_json(pam_server *s, struct MHD_Connection *c, unsigned status, json_t *root) {
    char *body = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return send_body(s, c, status, "application/json", body, NULL);
}

static enum MHD_Result send_error(pam_server *s, struct MHD_Connection *c, const pam_api_error *err) {
    const char *retry = err->http_status == 503 || err->http_status == 429 ? "1" : NULL;
    return send_body(s, c, (unsigned)err->http_status, "application/json", pam_api_error_json(err), retry);
}

static enum MHD_Result send_error_msg(pam_server *s, struct MHD_Connection *c, int status, const char *type,
                                      const char *code, const char *param, const char *msg) {
    pam_api_error err;
    pam_api_error_set(&err, status, type, code, param, "%s", msg);
    return send_error(s, c, &err);
}

/* The client closed its side (or the socket failed): nothing will read what
 * we produce. */
static int peer_closed(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return 0;
    char b;
    ssize_t r = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static const char *finish_reason(pam_finish f) { return f == PAM_FINISH_LENGTH ? "length" : "stop"; }

/* ---- one generation: n choices of each prompt ---- */

/* A choice: its request, the text returned so far (the echoed prompt
 * first), its log-probabilities not yet written out. */
typedef struct choice {
    pam_request *r;
    char *text;
    size_t len, cap, sent; /* sent: bytes already in stream chunks */
    size_t cur_b, cur_c;   /* text[0..cur_b) holds cur_c characters (text_offset) */
    size_t echo_len;
    pam_oai_lp lp;
    int group; /* its prompt */
    int started, done;
    pam_finish finish;
    int32_t n_completion, n_cached;
} choice;

/* Choice i belongs to prompt i / n_per. */
typedef struct gen {
    pam_server *s;
    pam_api_kind kind;
    int n, n_per, echo, lp_k;
    int n_groups;
    int32_t **prompts; /* [n_groups], kept for echo */
    int32_t *n_prompts;
    choice *ch;
} gen;

static void gen_free(gen *g) {
    if (!g) return;
    for (int i = 0; g->ch && i < g->n; i++) {
        pam_request_release(g->ch[i].r); /* cancels it if still running: the slot is freed */
        free(g->ch[i].text);
        pam_oai_lp_free(&g->ch[i].lp);
    }
    free(g->ch);
    for (int p = 0; g->prompts && p < g->n_groups; p++) free(g->prompts[p]);
    free(g->prompts);
    free(g->n_prompts);
    free(g);
}

static void choice_append(choice *c, const char *p, size_t n) {
    if (c->len + n + 1 > c->cap) {
        size_t cap = c->cap ? c->cap : 256;
        while (cap < c->len + n + 1) cap *= 2;
        char *t = realloc(c->text, cap);
        if (!t) return;
        c->text = t;
        c->cap = cap;
    }
    memcpy(c->text + c->len, p, n);
    c->len += n;
    c->text[c->len] = '\0';
}

/* Characters in text[0..b): offsets only grow, so a cursor walks forward. */
static size_t choice_chars(choice *c, size_t b) {
    if (!c->text) return 0;
    if (b > c->len) b = c->len;
    if (b < c->cur_b) c->cur_b = c->cur_c = 0;
    c->cur_c += pam_oai_utf8_chars(c->text + c->cur_b, b - c->cur_b);
    c->cur_b = b;
    return c->cur_c;
}

/* First news of a choice: with echo, the prompt's text (and its tokens'
 * log-probabilities) goes first. */
static void choice_start(gen *g, choice *c) {
    c->started = 1;
    if (!g->echo) return;
    int32_t n_lp = 0;
    const pam_token_logprob *plp = g->lp_k >= 0 ? pam_request_prompt_logprobs(c->r, &n_lp) : NULL;
    pam_detok dt;
    pam_detok_init(&dt, g->s->tk);
    char buf[4096];
    for (int32_t i = 0; i < g->n_prompts[c->group]; i++) {
        size_t at = c->len;
        choice_append(c, buf, pam_detok_push(&dt, g->prompts[c->group][i], buf, sizeof buf));
        if (plp && i < n_lp) pam_oai_lp_add(&c->lp, &plp[i], choice_chars(c, at), i == 0);
    }
    choice_append(c, buf, pam_detok_flush(&dt, buf, sizeof buf));
    c->echo_len = c->len;
}

/* Takes an update of choice c (frees its buffers). */
static void choice_update(gen *g, choice *c, pam_request_update *u) {
    if (!c->started) choice_start(g, c);
    if (u->text) choice_append(c, u->text, u->len);
    for (int32_t k = 0; k < u->n_logprobs; k++)
        pam_oai_lp_add(&c->lp, &u->logprobs[k], choice_chars(c, c->echo_len + (size_t)u->logprobs[k].text_off), 0);
    free(u->text);
    free(u->logprobs);
    c->n_cached = u->n_cached_tokens;
    if (u->done) {
        c->done = 1;
        c->finish = u->finish;
        c->n_completion = u->n_completion_tokens;
    }
}

/* Takes the news of every unfinished choice (never waits); on_update (if
 * set) sees each choice that had some. Returns the number of updates. */
static int gen_poll(gen *g, void (*on_update)(void *, int), void *cls) {
    int got = 0;
    for (int i = 0; i < g->n; i++) {
        choice *c = &g->ch[i];
        if (c->done) continue;
        pam_request_update u;
        if (pam_request_next(c->r, 0, &u)) {
            choice_update(g, c, &u);
            if (on_update) on_update(cls, i);
            got++;
        }
    }
    return got;
}

static int gen_all_done(const gen *g) {
    for (int i = 0; i < g->n; i++)
        if (!g->ch[i].done) return 0;
    return 1;
}

/* A choice that failed or was cancelled: the response is an error. */
static const choice *gen_failed(const gen *g) {
    for (int i = 0; i < g->n; i++)
        if (g->ch[i].done && (g->ch[i].finish == PAM_FINISH_ERROR || g->ch[i].finish == PAM_FINISH_CANCELLED))
            return &g->ch[i];
    return NULL;
}

/* usage counts each prompt once and every choice's tokens. */
static json_t *gen_usage(const gen *g) {
    int32_t comp = 0, prompt = 0, cached = 0;
    for (int i = 0; i < g->n; i++) comp += g->ch[i].n_completion;
    for (int p = 0; p < g->n_groups; p++) {
        prompt += g->n_prompts[p];
        cached += g->ch[p * g->n_per].n_cached;
    }
    return json_pack("{s:i,s:i,s:i,s:{s:i}}", "prompt_tokens", prompt, "completion_tokens", comp, "total_tokens",
                     prompt + comp, "prompt_tokens_details", "cached_tokens", cached);
}

static json_t *choice_logprobs(gen *g, choice *c) {
    json_t *lp = g->lp_k >= 0 ? pam_oai_lp_take(&c->lp) : NULL;
    return lp ? lp : json_null();
}

/* ---- streaming ---- */

typedef struct stream {
    pam_server *s;
    gen *g;
    struct MHD_Connection *c;
    char id[64];
    int64_t created;
    int include_usage;
    char *buf;
    size_t len, off, cap;
    int sent_role, finished, got_done, failed;
    int64_t keepalive_ns; /* when the next keep-alive comment is due */
    waiter *w;
} stream;

static int st_append(stream *st, const char *p, size_t n) {
    if (st->len + n > st->cap) {
        size_t cap = st->cap ? st->cap : 1024;
        while (cap < st->len + n) cap *= 2;
        char *b = realloc(st->buf, cap);
        if (!b) return 0;
        st->buf = b;
        st->cap = cap;
    }
    memcpy(st->buf + st->len, p, n);
    st->len += n;
    return 1;
}

static void st_event(stream *st, json_t *root) {
    char *js = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!js) return;
    st_append(st, "data: ", 6);
    st_append(st, js, strlen(js));
    st_append(st, "\n\n", 2);
    free(js);
}

/* One chunk of choice idx: text (may be NULL), its log-probabilities (NULL:
 * null), finish reason (NULL while running). */
static void st_chunk(stream *st, int idx, const char *text, size_t len, json_t *lp, const char *finish, int role,
                     json_t *usage) {
    json_t *one;
    if (!lp) lp = json_null();
    if (st->g->kind == PAM_API_CHAT) {
        json_t *delta = json_object();
        if (role) json_object_set_new(delta, "role", json_string("assistant"));
        if (text || role) json_object_set_new(delta, "content", pam_oai_text(text, len));
        one = json_pack("{s:i,s:o,s:o,s:o}", "index", idx, "delta", delta, "logprobs", lp, "finish_reason",
                           finish ? json_string(finish) : json_null());
    } else {
        one = json_pack("{s:i,s:o,s:o,s:o}", "index", idx, "text", pam_oai_text(text, len), "logprobs", lp,
                           "finish_reason", finish ? json_string(finish) : json_null());
    }
    json_t *root = json_pack("{s:s,s:s,s:I,s:s,s:[o]}", "id", st->id, "object",
                             st->g->kind == PAM_API_CHAT ? "chat.completion.chunk" : "text_completion", "created",
                             (json_int_t)st->created, "model", st->s->alias, "choices", one);
    if (usage) json_object_set_new(root, "usage", usage);
    st_event(st, root);
}

/* New text or log-probabilities of choice i become a chunk; its end a chunk
 * with the finish reason (the last one to end carries usage). */
static void st_on_update(void *cls, int i) {
    stream *st = cls;
    gen *g = st->g;
    choice *c = &g->ch[i];
    if (st->failed) return;
    if (c->done && (c->finish == PAM_FINISH_ERROR || c->finish == PAM_FINISH_CANCELLED)) {
        pam_api_error err;
        pam_api_error_set(&err, 500, "server_error", NULL, NULL, "generation %s",
                          c->finish == PAM_FINISH_ERROR ? "failed" : "was cancelled");
        char *js = pam_api_error_json(&err);
        if (js) {
            st_append(st, "data: ", 6);
            st_append(st, js, strlen(js));
            st_append(st, "\n\n", 2);
            free(js);
        }
        st->failed = 1;
        return;
    }
    if (c->len > c->sent || pam_oai_lp_pending(&c->lp)) {
        st_chunk(st, i, c->text + c->sent, c->len - c->sent, g->lp_k >= 0 ? pam_oai_lp_take(&c->lp) : NULL, NULL, 0,
                 NULL);
        c->sent = c->len;
    }
    if (c->done) st_chunk(st, i, NULL, 0, NULL, finish_reason(c->finish), 0, gen_all_done(g) ? gen_usage(g) : NULL);
}

/* Never blocks: with nothing to write it suspends the connection until the
 * engine (or the ticker) resumes it, and returns 0. */
static ssize_t st_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    stream *st = cls;
    gen *g = st->g;
    for (;;) {
        if (st->off < st->len) {
            size_t n = st->len - st->off < max ? st->len - st->off : max;
            memcpy(buf, st->buf + st->off, n);
            st->off += n;
            if (st->off == st->len) st->off = st->len = 0;
            st->keepalive_ns = pam_time_ns() + (int64_t)2000000000;
            return (ssize_t)n;
        }
        if (st->finished) return MHD_CONTENT_READER_END_OF_STREAM;
        if (g->kind == PAM_API_CHAT && !st->sent_role) {
            st->sent_role = 1;
            for (int i = 0; i < g->n; i++) st_chunk(st, i, "", 0, NULL, NULL, 1, NULL);
            continue;
        }
        int got = gen_poll(g, st_on_update, st);
        if (st->failed || gen_all_done(g)) {
            st->got_done = 1;
            if (!st->failed && st->include_usage) {
                json_t *root = json_pack("{s:s,s:s,s:I,s:s,s:[],s:o}", "id", st->id, "object",
                                         g->kind == PAM_API_CHAT ? "chat.completion.chunk" : "text_completion",
                                         "created", (json_int_t)st->created, "model", st->s->alias, "choices",
                                         "usage", gen_usage(g));
                st_event(st, root);
            }
            st_append(st, "data: [DONE]\n\n", 14);
            st->finished = 1;
            continue;
        }
        if (got) continue;
        if (peer_closed(st->c)) return MHD_CONTENT_READER_END_WITH_ERROR;
        /* A comment line now and then: a gone client shows up as a failed write. */
        if (pam_time_ns() > st->keepalive_ns) {
            st_append(st, ": keep-alive\n\n", 14);
            continue;
        }
        if (waiter_suspend(st->w)) return 0;
    }
}

static void st_free(void *cls) {
    stream *st = cls;
    if (!st->got_done) {
        pthread_mutex_lock(&st->s->mu);
        st->s->hc.disconnects++;
        pthread_mutex_unlock(&st->s->mu);
    }
    gen_free(st->g); /* cancels what still runs: the slots are freed */
    waiter_free(st->w);
    free(st->buf);
    free(st);
}

/* ---- endpoints ---- */

static void make_id(pam_server *s, pam_api_kind kind, char *out, size_t cap) {
    pthread_mutex_lock(&s->mu);
    uint64_t n = ++s->next_id;
    pthread_mutex_unlock(&s->mu);
    snprintf(out, cap, "%s-%llx%06llx", kind == PAM_API_CHAT ? "chatcmpl" : "cmpl", (unsigned long long)s->created,
             (unsigned long long)n);
}

static uint64_t random_seed(pam_server *s) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    pthread_mutex_lock(&s->mu);
    uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ (++s->next_id * 0x9E3779B97F4A7C15ull);
    pthread_mutex_unlock(&s->mu);
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    return x ^ (x >> 29);
}

/* The prompt's token ids (malloc'd), BOS added as the vocabulary asks;
 * NULL if it cannot be tokenized. */
static int32_t *tokenize_prompt(pam_server *s, const char *text, int32_t *n_out) {
    size_t len = strlen(text), cap = len + 8, n = 0;
    int32_t *ids = NULL;
    for (int attempt = 0; attempt < 2; attempt++) {
        free(ids);
        if (!(ids = malloc(cap * sizeof *ids))) return NULL;
        pam_status st = pam_tokenizer_encode(s->tk, text, len, pam_tokenizer_add_bos(s->tk), 1, ids, cap, &n);
        if (st == PAM_OK) {
            *n_out = (int32_t)n;
            return ids;
        }
        if (st != PAM_ERR_RANGE) break;
        cap = n;
    }
    free(ids);
    return NULL;
}

static enum MHD_Result collect_generate(pam_server *s, struct MHD_Connection *c, conn_state *cs);

static enum MHD_Result handle_generate(pam_server *s, struct MHD_Connection *c, conn_state *cs, pam_api_kind kind) {
    pthread_mutex_lock(&s->mu);
    int draining = s->draining;
    pthread_mutex_unlock(&s->mu);
    if (draining) return send_error_msg(s, c, 503, "server_error", "shutting_down", NULL, "the server is shutting down");

    pam_api_request ar;
    pam_api_error err;
    if (pam_api_parse_chat(cs->body ? cs->body : "", cs->len, kind, s->chat, &ar, &err) != 0) return send_error(s, c, &err);
    if (ar.model && strcmp(ar.model, s->alias) != 0) {
        pam_api_error_set(&err, 404, "invalid_request_error", "model_not_found", "model",
                          "The model '%.200s' does not exist (this server serves '%.200s')", ar.model, s->alias);
        pam_api_request_free(&ar);
        return send_error(s, c, &err);
    }
    /* Every prompt as token ids (text is tokenized here), all checked
     * before anything is submitted. */
    int n_prompts = 1 + ar.n_more;
    int32_t n_ctx = pam_engine_n_ctx(s->e);
    for (int p = 0; p < n_prompts; p++) {
        const char *text = p ? ar.more[p - 1].text : ar.prompt;
        int32_t **ids = p ? &ar.more[p - 1].ids : &ar.prompt_ids;
        int32_t *n_ids = p ? &ar.more[p - 1].n_ids : &ar.n_prompt_ids;
        if (!*ids && !(*ids = tokenize_prompt(s, text, n_ids))) {
            pam_api_request_free(&ar);
            return send_error_msg(s, c, 500, "server_error", NULL, NULL, "cannot tokenize the prompt");
        }
        if (*n_ids == 0) {
            pam_api_request_free(&ar);
            return send_error_msg(s, c, 400, "invalid_request_error", NULL, "prompt", "the prompt is empty");
        }
        if (*n_ids >= n_ctx) {
            char which[32] = "";
            if (n_prompts > 1) snprintf(which, sizeof which, " %d", p);
            pam_api_error_set(&err, 400, "invalid_request_error", "context_length_exceeded",
                              kind == PAM_API_CHAT ? "messages" : "prompt",
                              "This model's maximum context length is %d tokens, but the prompt%s has %d tokens", n_ctx,
                              which, (int)*n_ids);
            pam_api_request_free(&ar);
            return send_error(s, c, &err);
        }
    }
    if (pam_api_check_vocab(&ar, pam_model_get_hparams(s->m)->n_vocab, &err) != 0) {
        pam_api_request_free(&ar);
        return send_error(s, c, &err);
    }
    if (!ar.seed_given) ar.params.sampling.seed = random_seed(s);
    gen *g = calloc(1, sizeof *g);
    pam_request **reqs = calloc((size_t)ar.n, sizeof *reqs);
    int ok = g && reqs;
    if (ok) {
        g->s = s, g->kind = kind, g->echo = ar.echo, g->lp_k = ar.logprobs, g->n_per = ar.n, g->n_groups = n_prompts;
        g->ch = calloc((size_t)(n_prompts * ar.n), sizeof *g->ch);
        g->prompts = calloc((size_t)n_prompts, sizeof *g->prompts);
        g->n_prompts = calloc((size_t)n_prompts, sizeof *g->n_prompts);
        ok = g->ch && g->prompts && g->n_prompts;
    }
    for (int p = 0; ok && p < n_prompts; p++) {
        const int32_t *ids = p ? ar.more[p - 1].ids : ar.prompt_ids;
        g->n_prompts[p] = p ? ar.more[p - 1].n_ids : ar.n_prompt_ids;
        if (!ar.echo) continue;
        if (!(g->prompts[p] = malloc((size_t)g->n_prompts[p] * sizeof **g->prompts))) ok = 0;
        else memcpy(g->prompts[p], ids, (size_t)g->n_prompts[p] * sizeof *ids);
    }
    if (!ok) {
        free(reqs);
        gen_free(g);
        pam_api_request_free(&ar);
        return send_error_msg(s, c, 500, "server_error", NULL, NULL, "out of memory");
    }
    int stream_mode = ar.stream, include_usage = ar.include_usage;
    for (int p = 0; p < n_prompts; p++) {
        const int32_t *ids = p ? ar.more[p - 1].ids : ar.prompt_ids;
        /* A default output length (16 for completions) gives way to the
         * context; one the client asked for is checked by submit. */
        pam_request_params pp = ar.params;
        if (!ar.max_tokens_given && pp.max_tokens > n_ctx - g->n_prompts[p]) pp.max_tokens = n_ctx - g->n_prompts[p];
        pam_status st = pam_engine_submit_n(s->e, ids, g->n_prompts[p], &pp, ar.n, reqs);
        if (st != PAM_OK) {
            fprintf(stderr, "pam serve: request refused: %s\n", pam_last_error());
            if (st == PAM_ERR_FULL)
                pam_api_error_set(&err, 503, "server_error", "queue_full", NULL, "%s; retry later",
                                  pam_last_error_message());
            else if (st == PAM_ERR_RANGE)
                pam_api_error_set(&err, 400, "invalid_request_error", "context_length_exceeded", NULL, "%s",
                                  pam_last_error_message());
            else
                pam_api_error_set(&err, 400, "invalid_request_error", NULL, NULL, "%s", pam_last_error_message());
            free(reqs);
            gen_free(g); /* cancels the prompts submitted before */
            pam_api_request_free(&ar);
            return send_error(s, c, &err);
        }
        for (int i = 0; i < ar.n; i++, g->n++) {
            g->ch[g->n].r = reqs[i];
            g->ch[g->n].group = p;
            pam_oai_lp_init(&g->ch[g->n].lp, kind, s->tk);
        }
    }
    free(reqs);
    pam_api_request_free(&ar);
    char id[64];
    make_id(s, kind, id, sizeof id);
    int64_t created = (int64_t)time(NULL);

    if (stream_mode) {
        stream *stm = calloc(1, sizeof *stm);
        waiter *w = stm ? waiter_new(s, c) : NULL;
        struct MHD_Response *resp =
            w ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, st_reader, stm, st_free) : NULL;
        if (!resp) {
            gen_free(g);
            waiter_free(w);
            free(stm);
            return MHD_NO;
        }
        stm->s = s, stm->g = g, stm->c = c, stm->created = created, stm->w = w;
        stm->include_usage = include_usage;
        stm->keepalive_ns = pam_time_ns() + (int64_t)2000000000;
        snprintf(stm->id, sizeof stm->id, "%s", id);
        for (int i = 0; i < g->n; i++) pam_request_set_notify(g->ch[i].r, waiter_notify, w);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        enum MHD_Result ret = MHD_queue_response(c, 200, resp);
        MHD_destroy_response(resp); /* st_free runs when MHD is done with it */
        count_status(s, 200);
        pthread_mutex_lock(&s->mu);
        s->hc.streams++;
        pthread_mutex_unlock(&s->mu);
        return ret;
    }

    /* Non-streaming: collect the choices while the connection sleeps. */
    cs->w = waiter_new(s, c);
    if (!cs->w) {
        gen_free(g);
        return MHD_NO;
    }
    cs->g = g;
    cs->created = created;
    snprintf(cs->id, sizeof cs->id, "%s", id);
    for (int i = 0; i < g->n; i++) pam_request_set_notify(g->ch[i].r, waiter_notify, cs->w);
    return collect_generate(s, c, cs);
}

/* Takes what the choices produced so far; answers when every one is done
 * (or one failed), or suspends the connection until there is more. A
 * client that goes away cancels. */
static enum MHD_Result collect_generate(pam_server *s, struct MHD_Connection *c, conn_state *cs) {
    gen *g = cs->g;
    while (!gen_all_done(g) && !gen_failed(g)) {
        if (gen_poll(g, NULL, NULL)) continue;
        if (peer_closed(c)) {
            gen_free(g);
            cs->g = NULL;
            pthread_mutex_lock(&s->mu);
            s->hc.disconnects++;
            pthread_mutex_unlock(&s->mu);
            return MHD_NO;
        }
        if (waiter_suspend(cs->w)) return MHD_YES;
    }
    cs->g = NULL;
    pam_api_kind kind = g->kind;
    const choice *bad = gen_failed(g);
    if (bad) {
        pam_finish f = bad->finish;
        gen_free(g); /* cancels the other choices */
        return send_error_msg(s, c, 500, "server_error", NULL, NULL,
                              f == PAM_FINISH_ERROR ? "generation failed" : "generation was cancelled");
    }
    json_t *choices = json_array();
    for (int i = 0; i < g->n; i++) {
        choice *ch = &g->ch[i];
        if (!ch->started) choice_start(g, ch);
        json_t *text = pam_oai_text(ch->text, ch->len);
        json_t *one = kind == PAM_API_CHAT
                          ? json_pack("{s:i,s:{s:s,s:o},s:o,s:s}", "index", i, "message", "role", "assistant",
                                      "content", text, "logprobs", choice_logprobs(g, ch), "finish_reason",
                                      finish_reason(ch->finish))
                          : json_pack("{s:i,s:o,s:o,s:s}", "index", i, "text", text, "logprobs",
                                      choice_logprobs(g, ch), "finish_reason", finish_reason(ch->finish));
        json_array_append_new(choices, one);
    }
    json_t *root = json_pack("{s:s,s:s,s:I,s:s,s:o,s:o}", "id", cs->id, "object",
                             kind == PAM_API_CHAT ? "chat.completion" : "text_completion", "created",
                             (json_int_t)cs->created, "model", s->alias, "choices", choices, "usage", gen_usage(g));
    gen_free(g);
    return send_json(s, c, 200, root);
}

static enum MHD_Result handle_models(pam_server *s, struct MHD_Connection *c) {
    const pam_model_hparams *hp = pam_model_get_hparams(s->m);
    json_t *root = json_pack("{s:s,s:[{s:s,s:s,s:I,s:s,s:{s:s,s:i,s:i,s:i}}]}", "object", "list", "data", "id",
                             s->alias, "object", "model", "created", (json_int_t)s->created, "owned_by", "pam", "meta",
                             "arch", hp->arch, "n_vocab", hp->n_vocab, "n_ctx", pam_engine_n_ctx(s->e), "n_slots",
                             pam_engine_n_slots(s->e));
    return send_json(s, c, 200, root);
}

static enum MHD_Result handle_metrics(pam_server *s, struct MHD_Connection *c) {
    pam_engine_stats st;
    pam_engine_get_stats(s->e, &st);
    pam_http_counters hc;
    pthread_mutex_lock(&s->mu);
    hc = s->hc;
    pthread_mutex_unlock(&s->mu);
    return send_body(s, c, 200, "text/plain; version=0.0.4", pam_metrics_render(&st, &hc), NULL);
}

/* llama-server's POST /apply-template: the prompt a chat request's messages
 * become, as {"prompt": "..."} (BOS left out when the tokenizer adds it). */
static enum MHD_Result handle_apply_template(pam_server *s, struct MHD_Connection *c, conn_state *cs) {
    pam_api_error err;
    char *prompt = NULL;
    if (pam_api_apply_template(cs->body ? cs->body : "", cs->len, s->chat, &prompt, &err) != 0)
        return send_error(s, c, &err);
    json_t *text = json_stringn(prompt, strlen(prompt));
    free(prompt);
    if (!text) return send_error_msg(s, c, 500, "server_error", NULL, NULL, "the prompt is not valid UTF-8");
    return send_json(s, c, 200, json_pack("{s:o}", "prompt", text));
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload_data, size_t *upload_data_size,
                                 void **con_cls) {
    pam_server *s = cls;
    conn_state *cs = *con_cls;
    if (!cs) {
        cs = calloc(1, sizeof *cs);
        if (!cs) return MHD_NO;
        *con_cls = cs;
        pthread_mutex_lock(&s->mu);
        s->n_active++;
        pthread_mutex_unlock(&s->mu);
        if (!strcmp(method, "POST")) {
            /* Refuse an oversized body before reading any of it. */
            const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
            if (cl) {
                char *end;
                errno = 0;
                unsigned long long n = strtoull(cl, &end, 10);
                if (errno || end == cl || n > s->p.max_body_bytes) {
                    cs->too_large = 1;
                    char msg[128];
                    snprintf(msg, sizeof msg, "the request body exceeds %zu bytes", s->p.max_body_bytes);
                    return send_error_msg(s, c, 413, "invalid_request_error", "body_too_large", NULL, msg);
                }
            }
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (!cs->too_large && cs->len + n > s->p.max_body_bytes) {
            cs->too_large = 1;
            free(cs->body);
            cs->body = NULL;
            cs->len = cs->cap = 0;
        }
        if (cs->too_large) {
            /* Chunked bodies have no length up front: drop what comes; give
             * up on the connection if it keeps coming. */
            cs->discarded += n;
            return cs->discarded > 4 * s->p.max_body_bytes ? MHD_NO : MHD_YES;
        }
        if (cs->len + n + 1 > cs->cap) {
            size_t cap = cs->cap ? cs->cap : 4096;
            while (cap < cs->len + n + 1) cap *= 2;
            char *b = realloc(cs->body, cap);
            if (!b) return MHD_NO;
            cs->body = b;
            cs->cap = cap;
        }
        memcpy(cs->body + cs->len, upload_data, n);
        cs->len += n;
        cs->body[cs->len] = '\0';
        return MHD_YES;
    }
    if (cs->g) return collect_generate(s, c, cs); /* resumed */
    if (cs->too_large) {
        char msg[128];
        snprintf(msg, sizeof msg, "the request body exceeds %zu bytes", s->p.max_body_bytes);
        return send_error_msg(s, c, 413, "invalid_request_error", "body_too_large", NULL, msg);
    }
    int is_get = !strcmp(method, "GET"), is_post = !strcmp(method, "POST");
    if (!strcmp(url, "/v1/completions") || !strcmp(url, "/completions") || !strcmp(url, "/v1/chat/completions") ||
        !strcmp(url, "/chat/completions")) {
        if (!is_post)
            return send_error_msg(s, c, 405, "invalid_request_error", NULL, NULL, "use POST for this endpoint");
        return handle_generate(s, c, cs, strstr(url, "chat") ? PAM_API_CHAT : PAM_API_COMPLETION);
    }
    if (!strcmp(url, "/apply-template")) {
        if (!is_post)
            return send_error_msg(s, c, 405, "invalid_request_error", NULL, NULL, "use POST for this endpoint");
        return handle_apply_template(s, c, cs);
    }
    if (!strcmp(url, "/tokenize") || !strcmp(url, "/detokenize")) {
        if (!is_post)
            return send_error_msg(s, c, 405, "invalid_request_error", NULL, NULL, "use POST for this endpoint");
        pam_api_error err;
        char *out = NULL;
        const char *body = cs->body ? cs->body : "";
        int rc = url[1] == 't' ? pam_oai_tokenize(s->tk, body, cs->len, &out, &err)
                               : pam_oai_detokenize(s->tk, body, cs->len, &out, &err);
        return rc == 0 ? send_body(s, c, 200, "application/json", out, NULL) : send_error(s, c, &err);
    }
    if (!strcmp(url, "/v1/models") || !strcmp(url, "/models") || !strcmp(url, "/health") || !strcmp(url, "/metrics")) {
        if (!is_get) return send_error_msg(s, c, 405, "invalid_request_error", NULL, NULL, "use GET for this endpoint");
        if (!strcmp(url, "/health")) {
            pthread_mutex_lock(&s->mu);
            int draining = s->draining;
            pthread_mutex_unlock(&s->mu);
            return send_json(s, c, draining ? 503 : 200, json_pack("{s:s}", "status", draining ? "draining" : "ok"));
        }
        if (!strcmp(url, "/metrics")) return handle_metrics(s, c);
        return handle_models(s, c);
    }
    char msg[300];
    snprintf(msg, sizeof msg, "no endpoint %.200s %.60s", method, url);
    return send_error_msg(s, c, 404, "invalid_request_error", "not_found", NULL, msg);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    pam_server *s = cls;
    conn_state *cs = *con_cls;
    if (!cs) return;
    gen_free(cs->g); /* the connection died while it waited */
    waiter_free(cs->w);
    free(cs->body);
    free(cs);
    *con_cls = NULL;
    pthread_mutex_lock(&s->mu);
    s->n_active--;
    pthread_cond_broadcast(&s->idle_cv);
    pthread_mutex_unlock(&s->mu);
}

/* A template that cannot render a plain one-message conversation (it uses
 * something our interpreter lacks, or is broken) would fail every chat
 * request: find out at start. Its own refusal (raise_exception, a
 * TemplateError) is its choice, not a failure. */
static pam_status try_template(const pam_chat_template *t, char *err, size_t err_cap) {
    json_t *msgs = json_pack("[{s:s,s:s}]", "role", "user", "content", "Hello");
    if (!msgs) return PAM_ERR_NOMEM;
    char *out = NULL;
    pam_status st = pam_chat_template_apply(t, msgs, NULL, 1, &out, err, err_cap);
    json_decref(msgs);
    free(out);
    if (st == PAM_ERR_INVALID && !strncmp(err, "TemplateError: ", 15)) return PAM_OK;
    return st;
}

/* The chat template, by precedence: the user's Jinja file, a built-in
 * family named by the user, the model's tokenizer.chat_template, and the
 * built-in family its text suggests when our interpreter cannot parse or
 * run it (or the fallback format when the model has none). */
static pam_status make_chat_template(pam_server *s, const pam_server_params *p) {
    int32_t bos = pam_tokenizer_bos(s->tk), eos = pam_tokenizer_eos(s->tk);
    const char *bos_s = bos >= 0 ? pam_tokenizer_piece(s->tk, bos) : NULL;
    const char *eos_s = eos >= 0 ? pam_tokenizer_piece(s->tk, eos) : NULL;
    int strip_bos = bos >= 0 && pam_tokenizer_add_bos(s->tk);
    char err[512];
    pam_status st;
    if (p->chat_template) {
        st = pam_chat_template_jinja(p->chat_template, strlen(p->chat_template), bos_s, eos_s, strip_bos, &s->chat, err,
                                     sizeof err);
        if (st == PAM_ERR_INVALID) return PAM_ERR(PAM_ERR_INVALID, "the chat template does not parse: %s", err);
        if (st != PAM_OK) return PAM_ERR(st, "chat template");
        if ((st = try_template(s->chat, err, sizeof err)) != PAM_OK) {
            pam_chat_template_free(s->chat);
            s->chat = NULL;
            if (st == PAM_ERR_INVALID)
                return PAM_ERR(PAM_ERR_INVALID, "the chat template fails on a one-message conversation: %s", err);
            return PAM_ERR(st, "chat template");
        }
        snprintf(s->chat_desc, sizeof s->chat_desc, "jinja (from the given file)");
        return PAM_OK;
    }
    if (p->chat_family >= 0) {
        s->chat = pam_chat_template_builtin((pam_chat_family)p->chat_family);
        snprintf(s->chat_desc, sizeof s->chat_desc, "%s (built-in)", pam_chat_family_name((pam_chat_family)p->chat_family));
        return s->chat ? PAM_OK : PAM_ERR(PAM_ERR_NOMEM, "chat template");
    }
    pam_gguf_str tmpl = {0};
    if (pam_gguf_get_str(pam_model_gguf(s->m), "tokenizer.chat_template", &tmpl) != PAM_OK) {
        pam_error_clear();
        s->chat = pam_chat_template_builtin(PAM_CHAT_FALLBACK);
        snprintf(s->chat_desc, sizeof s->chat_desc, "fallback (built-in; the model has no tokenizer.chat_template)");
        return s->chat ? PAM_OK : PAM_ERR(PAM_ERR_NOMEM, "chat template");
    }
    st = pam_chat_template_jinja(tmpl.ptr, (size_t)tmpl.len, bos_s, eos_s, strip_bos, &s->chat, err, sizeof err);
    const char *why = "does not parse";
    if (st == PAM_OK) {
        if ((st = try_template(s->chat, err, sizeof err)) == PAM_OK) {
            snprintf(s->chat_desc, sizeof s->chat_desc, "jinja (the model's tokenizer.chat_template)");
            return PAM_OK;
        }
        pam_chat_template_free(s->chat);
        s->chat = NULL;
        why = "fails on a one-message conversation";
    }
    if (st != PAM_ERR_INVALID) return PAM_ERR(st, "chat template");
    pam_chat_family f = pam_chat_detect(tmpl.ptr, (size_t)tmpl.len);
    s->chat = pam_chat_template_builtin(f);
    snprintf(s->chat_desc, sizeof s->chat_desc, "%s (built-in; the model's template %s: %.400s)",
             pam_chat_family_name(f), why, err);
    return s->chat ? PAM_OK : PAM_ERR(PAM_ERR_NOMEM, "chat template");
}

/* Every open connection is a descriptor: lift the soft limit towards what
 * the connection limit needs (up to the hard limit; failure only means
 * MHD refuses connections earlier). */
static void raise_fd_limit(rlim_t want) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want) return;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
}

pam_status pam_server_start(pam_engine *e, const pam_model *m, const pam_server_params *p, pam_server **out) {
    pam_server *s = calloc(1, sizeof *s);
    if (!s) return PAM_ERR(PAM_ERR_NOMEM, "server");
    s->e = e;
    s->m = m;
    s->tk = pam_model_tokenizer(m);
    s->p = *p;
    if (!s->p.host) s->p.host = "127.0.0.1";
    if (s->p.max_body_bytes == 0) s->p.max_body_bytes = 1 << 20;
    if (s->p.max_connections <= 0) s->p.max_connections = 8192;
    if (s->p.timeout_s <= 0) s->p.timeout_s = 600;
    snprintf(s->alias, sizeof s->alias, "%s", p->alias && p->alias[0] ? p->alias : "model");
    s->created = (int64_t)time(NULL);
    pam_status cst = make_chat_template(s, p);
    if (cst != PAM_OK) {
        free(s);
        return cst;
    }

    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, s->p.host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)s->p.port);
    } else if (inet_pton(AF_INET6, s->p.host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)s->p.port);
        flags |= MHD_USE_IPv6;
    } else {
        pam_chat_template_free(s->chat);
        free(s);
        return PAM_ERR(PAM_ERR_INVALID, "--host must be an IPv4 or IPv6 address, got '%s'", p->host);
    }
    if (p->port < 0 || p->port > 65535) {
        pam_chat_template_free(s->chat);
        free(s);
        return PAM_ERR(PAM_ERR_INVALID, "--port must be in 0..65535, got %d", p->port);
    }
    raise_fd_limit((rlim_t)s->p.max_connections + 256);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->idle_cv, NULL);
    pthread_cond_init(&s->ticker_cv, NULL);
    /* A few event-loop threads: handlers never block, so these only parse,
     * tokenise and format; more would just contend for the cores the
     * forward pass uses. */
    s->d = MHD_start_daemon(flags, (uint16_t)s->p.port, NULL, NULL, on_access, s, MHD_OPTION_SOCK_ADDR,
                            (struct sockaddr *)&ss, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)2,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->p.max_connections,
                            MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)s->p.max_conn_per_client,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)s->p.timeout_s, MHD_OPTION_NOTIFY_COMPLETED,
                            on_completed, s, MHD_OPTION_END);
    if (s->d && pthread_create(&s->ticker, NULL, ticker_main, s) == 0) s->ticker_started = 1;
    if (!s->d || !s->ticker_started) {
        int err = s->d ? EAGAIN : errno;
        if (s->d) MHD_stop_daemon(s->d);
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->idle_cv);
        pthread_cond_destroy(&s->ticker_cv);
        pam_chat_template_free(s->chat);
        free(s);
        return PAM_ERR(PAM_ERR_IO, "cannot listen on %s:%d: %s", p->host, p->port, strerror(err));
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : p->port;
    *out = s;
    return PAM_OK;
}

void pam_server_drain(pam_server *s) {
    pthread_mutex_lock(&s->mu);
    s->draining = 1;
    pthread_mutex_unlock(&s->mu);
    pam_engine_drain(s->e);
    /* The engine is idle; let responses still being written finish (bounded:
     * a client that stops reading must not hold the exit forever). */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 30;
    pthread_mutex_lock(&s->mu);
    while (s->n_active > 0)
        if (pthread_cond_timedwait(&s->idle_cv, &s->mu, &ts) != 0) break;
    pthread_mutex_unlock(&s->mu);
}

void pam_server_stop(pam_server *s) {
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->ticker_stop = 1;
    pthread_cond_signal(&s->ticker_cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->ticker, NULL);
    MHD_stop_daemon(s->d);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->idle_cv);
    pthread_cond_destroy(&s->ticker_cv);
    pam_chat_template_free(s->chat);
    free(s);
}
