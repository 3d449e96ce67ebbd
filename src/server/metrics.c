/* Prometheus metrics text. Names follow the exposition conventions: counters
 * end in _total, units in the name (_seconds, _bytes). KV "blocks" are
 * 16-token accounting units until the paged cache lands; the one tier today
 * is dram. */
#include "server/metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct out {
    char *p;
    size_t n, cap;
    int oom;
} out;

static void put(out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(out *o, const char *fmt, ...) {
    if (o->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int w = vsnprintf(o->p ? o->p + o->n : NULL, o->p ? o->cap - o->n : 0, fmt, ap);
        va_end(ap);
        if (w < 0) {
            o->oom = 1;
            return;
        }
        if (o->p && o->n + (size_t)w < o->cap) {
            o->n += (size_t)w;
            return;
        }
        size_t cap = o->cap ? o->cap * 2 : 8192;
        while (cap < o->n + (size_t)w + 1) cap *= 2;
        char *np = realloc(o->p, cap);
        if (!np) {
            o->oom = 1;
            return;
        }
        o->p = np;
        o->cap = cap;
    }
}

static void metric(out *o, const char *name, const char *type, const char *help) {
    put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void histogram(out *o, const char *name, const char *help, const pam_histogram *h) {
    metric(o, name, "histogram", help);
    uint64_t cum = 0;
    for (int i = 0; i < h->n_buckets; i++) {
        cum += h->count[i];
        put(o, "%s_bucket{le=\"%g\"} %llu\n", name, h->le[i], (unsigned long long)cum);
    }
    cum += h->count[h->n_buckets];
    put(o, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    put(o, "%s_sum %.9g\n%s_count %llu\n", name, h->sum, name, (unsigned long long)h->n);
}

char *pam_metrics_render(const pam_engine_stats *st, const pam_http_counters *h) {
    out o = {0};
    metric(&o, "pam_requests_total", "counter", "Requests finished by the engine, by finish reason.");
    for (int f = PAM_FINISH_STOP; f <= PAM_FINISH_ERROR; f++)
        put(&o, "pam_requests_total{finish_reason=\"%s\"} %llu\n", pam_finish_str((pam_finish)f),
            (unsigned long long)st->n_finished[f]);
    metric(&o, "pam_requests_submitted_total", "counter", "Requests accepted into the queue.");
    put(&o, "pam_requests_submitted_total %llu\n", (unsigned long long)st->n_submitted);
    metric(&o, "pam_requests_rejected_total", "counter", "Requests refused, by reason.");
    put(&o, "pam_requests_rejected_total{reason=\"queue_full\"} %llu\n", (unsigned long long)h->queue_full);
    put(&o, "pam_requests_rejected_total{reason=\"bad_request\"} %llu\n", (unsigned long long)h->bad_request);
    put(&o, "pam_requests_rejected_total{reason=\"body_too_large\"} %llu\n", (unsigned long long)h->too_large);
    metric(&o, "pam_http_responses_total", "counter", "HTTP responses by status class.");
    for (int c = 1; c <= 5; c++)
        put(&o, "pam_http_responses_total{code=\"%dxx\"} %llu\n", c, (unsigned long long)h->by_status[c]);
    metric(&o, "pam_client_disconnects_total", "counter", "Clients gone before their request finished.");
    put(&o, "pam_client_disconnects_total %llu\n", (unsigned long long)h->disconnects);
    metric(&o, "pam_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.");
    put(&o, "pam_prompt_tokens_total %llu\n", (unsigned long long)st->n_prompt_tokens);
    metric(&o, "pam_prefill_tokens_total", "counter", "Prompt tokens actually computed (not reused).");
    put(&o, "pam_prefill_tokens_total %llu\n", (unsigned long long)st->n_prefilled_tokens);
    metric(&o, "pam_generation_tokens_total", "counter", "Generated tokens.");
    put(&o, "pam_generation_tokens_total %llu\n", (unsigned long long)st->n_generated_tokens);
    metric(&o, "pam_engine_steps_total", "counter", "Batched forward steps.");
    put(&o, "pam_engine_steps_total %llu\n", (unsigned long long)st->n_steps);
    metric(&o, "pam_queue_length", "gauge", "Requests waiting for a slot.");
    put(&o, "pam_queue_length %d\n", st->n_queued);
    metric(&o, "pam_requests_running", "gauge", "Requests holding a slot.");
    put(&o, "pam_requests_running %d\n", st->n_running);
    metric(&o, "pam_slots", "gauge", "Sequence slots (--parallel).");
    put(&o, "pam_slots %d\n", st->n_slots);
    histogram(&o, "pam_time_to_first_token_seconds", "Time from submission to the first generated token.", &st->ttft);
    histogram(&o, "pam_time_per_output_token_seconds", "Mean time per generated token after the first, per request.",
              &st->tpot);
    metric(&o, "pam_kv_blocks", "gauge", "KV blocks (16-token units) holding tokens, per tier.");
    put(&o, "pam_kv_blocks{tier=\"dram\"} %llu\n", (unsigned long long)st->kv_blocks_used);
    metric(&o, "pam_kv_blocks_capacity", "gauge", "KV blocks (16-token units) available, per tier.");
    put(&o, "pam_kv_blocks_capacity{tier=\"dram\"} %llu\n", (unsigned long long)st->kv_blocks_capacity);
    metric(&o, "pam_kv_bytes", "gauge", "KV bytes holding tokens, per tier.");
    put(&o, "pam_kv_bytes{tier=\"dram\"} %llu\n", (unsigned long long)st->kv_bytes_used);
    metric(&o, "pam_kv_bytes_capacity", "gauge", "KV bytes available, per tier.");
    put(&o, "pam_kv_bytes_capacity{tier=\"dram\"} %llu\n", (unsigned long long)st->kv_bytes_capacity);
    metric(&o, "pam_kv_tokens", "gauge", "Tokens held in the KV cache (running and cached for reuse).");
    put(&o, "pam_kv_tokens %llu\n", (unsigned long long)st->kv_tokens);
    metric(&o, "pam_kv_migrations_total", "counter", "KV block migrations between tiers.");
    put(&o, "pam_kv_migrations_total %llu\n", (unsigned long long)st->n_migrations);
    metric(&o, "pam_prefix_cache_lookups_total", "counter", "Admissions that looked up the prefix cache.");
    put(&o, "pam_prefix_cache_lookups_total %llu\n", (unsigned long long)st->prefix_lookups);
    metric(&o, "pam_prefix_cache_hits_total", "counter", "Admissions that reused cached prompt tokens.");
    put(&o, "pam_prefix_cache_hits_total %llu\n", (unsigned long long)st->prefix_hits);
    metric(&o, "pam_prefix_cache_tokens_reused_total", "counter", "Prompt tokens reused from the prefix cache.");
    put(&o, "pam_prefix_cache_tokens_reused_total %llu\n", (unsigned long long)st->prefix_tokens_reused);
    metric(&o, "pam_prefix_cache_hit_rate", "gauge", "Fraction of prompt tokens reused from the prefix cache.");
    put(&o, "pam_prefix_cache_hit_rate %.6f\n",
        st->n_prompt_tokens ? (double)st->prefix_tokens_reused / (double)st->n_prompt_tokens : 0.0);
    if (o.oom) {
        free(o.p);
        return NULL;
    }
    return o.p;
}
