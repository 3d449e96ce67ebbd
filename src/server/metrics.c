/* Prometheus metrics text. Names follow the exposition conventions: counters
 * end in _total, units in the name (_seconds, _bytes). KV numbers are the
 * paged cache's own: a block holds --kv-block tokens of one layer, and
 * per-tier series are labelled with the tier's name, fastest first. */
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

/* The tier label of tier i: its name (backslash, quote and newline
 * escaped: ssd names carry paths), with "#i" appended when an earlier tier
 * has the same name, so series stay distinct. */
static const char *tier_label(const pam_engine_stats *st, int i, char *buf, size_t cap) {
    const char *s = st->kv_tiers[i].name;
    int dup = 0;
    for (int j = 0; j < i; j++) dup |= strcmp(st->kv_tiers[j].name, s) == 0;
    size_t n = 0;
    for (; *s && n + 3 < cap; s++) {
        if (*s == '\\' || *s == '"') buf[n++] = '\\';
        if (*s == '\n') {
            buf[n++] = '\\';
            buf[n++] = 'n';
            continue;
        }
        buf[n++] = *s;
    }
    buf[n] = '\0';
    if (dup) snprintf(buf + n, cap - n, "#%d", i);
    return buf;
}

static void metric(out *o, const char *name, const char *type, const char *help) {
    put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One unlabelled sample with its HELP and TYPE lines. */
static void scalar(out *o, const char *name, const char *type, const char *help, unsigned long long v) {
    metric(o, name, type, help);
    put(o, "%s %llu\n", name, v);
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

/* The series of a shared block store (the remote tier, the persistent
 * journal), each name prefixed with p. */
static void store_metrics(out *o, const char *p, const char *what, const pam_kv_remote_stats *rs, uint64_t reused) {
    char n[96], h[192];
#define S(suffix, type, ...)                        \
    do {                                            \
        snprintf(n, sizeof n, "%s_%s", p, suffix);  \
        snprintf(h, sizeof h, __VA_ARGS__);         \
        metric(o, n, type, h);                      \
    } while (0)
    S("lookups_total", "counter", "Admissions that looked up the %s.", what);
    put(o, "%s %llu\n", n, (unsigned long long)rs->lookups);
    S("hit_blocks_total", "counter", "Blocks (all layers) read from the %s, verified and used.", what);
    put(o, "%s %llu\n", n, (unsigned long long)rs->hit_blocks);
    S("miss_blocks_total", "counter", "Blocks asked of the %s and absent.", what);
    put(o, "%s %llu\n", n, (unsigned long long)rs->miss_blocks);
    S("tokens_reused_total", "counter", "Prompt tokens taken from the %s.", what);
    put(o, "%s %llu\n", n, (unsigned long long)reused);
    S("read_bytes_total", "counter", "Value bytes read from the %s.", what);
    put(o, "%s %llu\n", n, (unsigned long long)rs->bytes_read);
    S("written_bytes_total", "counter", "Value bytes written to the %s.", what);
    put(o, "%s %llu\n", n, (unsigned long long)rs->bytes_written);
    S("rejects_total", "counter", "Values of the %s refused (never used), by reason.", what);
    for (int k = 0; k < PAM_KV_REJECT_N; k++)
        put(o, "%s{reason=\"%s\"} %llu\n", n, pam_kv_remote_reject_name((pam_kv_remote_reject)k),
            (unsigned long long)rs->rejects[k]);
    S("puts_total", "counter", "Values (one block of one layer) queued for the %s, by outcome.", what);
    put(o, "%s{result=\"ok\"} %llu\n", n, (unsigned long long)rs->put_values);
    put(o, "%s{result=\"error\"} %llu\n", n, (unsigned long long)rs->put_errors);
    put(o, "%s{result=\"dropped\"} %llu\n", n, (unsigned long long)rs->put_dropped);
    S("io_errors_total", "counter", "Reads of the %s that got no answer (unreachable, timeout, failover, I/O error).", what);
    put(o, "%s %llu\n", n, (unsigned long long)rs->io_errors);
#undef S
    pam_histogram lat = {.n_buckets = PAM_KV_REMOTE_LAT_BUCKETS, .sum = rs->lat_sum, .n = rs->lat_n};
    memcpy(lat.le, rs->lat_le, sizeof rs->lat_le);
    memcpy(lat.count, rs->lat_count, sizeof rs->lat_count);
    snprintf(n, sizeof n, "%s_fetch_seconds", p);
    snprintf(h, sizeof h, "Latency of one fetch from the %s (one pipelined round trip, up to 64 blocks).", what);
    histogram(o, n, h, &lat);
}

char *pam_metrics_render(const pam_engine_stats *st, const pam_http_counters *h) {
    out o = {0};
    metric(&o, "pam_requests_total", "counter", "Requests finished by the engine, by finish reason.");
    for (int f = PAM_FINISH_STOP; f <= PAM_FINISH_ERROR; f++)
        put(&o, "pam_requests_total{finish_reason=\"%s\"} %llu\n", pam_finish_str((pam_finish)f),
            (unsigned long long)st->n_finished[f]);
    scalar(&o, "pam_requests_submitted_total", "counter", "Requests accepted into the queue.", st->n_submitted);
    metric(&o, "pam_requests_rejected_total", "counter", "Requests refused, by reason.");
    put(&o, "pam_requests_rejected_total{reason=\"queue_full\"} %llu\n", (unsigned long long)h->queue_full);
    put(&o, "pam_requests_rejected_total{reason=\"bad_request\"} %llu\n", (unsigned long long)h->bad_request);
    put(&o, "pam_requests_rejected_total{reason=\"body_too_large\"} %llu\n", (unsigned long long)h->too_large);
    metric(&o, "pam_http_responses_total", "counter", "HTTP responses by status class.");
    for (int c = 1; c <= 5; c++)
        put(&o, "pam_http_responses_total{code=\"%dxx\"} %llu\n", c, (unsigned long long)h->by_status[c]);
    scalar(&o, "pam_client_disconnects_total", "counter", "Clients gone before their request finished.", h->disconnects);
    scalar(&o, "pam_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", st->n_prompt_tokens);
    scalar(&o, "pam_prefill_tokens_total", "counter", "Prompt tokens actually computed (not reused).", st->n_prefilled_tokens);
    scalar(&o, "pam_generation_tokens_total", "counter", "Generated tokens.", st->n_generated_tokens);
    scalar(&o, "pam_engine_steps_total", "counter", "Batched forward steps.", st->n_steps);
    scalar(&o, "pam_queue_length", "gauge", "Requests waiting for a slot.", (unsigned long long)st->n_queued);
    scalar(&o, "pam_requests_running", "gauge", "Requests in the batch.", (unsigned long long)st->n_running);
    scalar(&o, "pam_slots", "gauge", "Batch slots (--parallel).", (unsigned long long)st->n_slots);
    histogram(&o, "pam_time_to_first_token_seconds", "Time from submission to the first generated token.", &st->ttft);
    histogram(&o, "pam_time_per_output_token_seconds", "Mean time per generated token after the first, per request.",
              &st->tpot);
    scalar(&o, "pam_requests_paused", "gauge", "Requests preempted and waiting to resume (their KV in the slowest tier).", (unsigned long long)st->n_paused);
    scalar(&o, "pam_preemptions_total", "counter", "Requests preempted by a higher-priority one (KV demoted, not recomputed).", st->n_preempted);
    scalar(&o, "pam_kv_requeues_total", "counter",
           "Requests that found the KV tiers full mid-generation and yielded (KV kept in the prefix cache, resumed later).",
           st->n_requeued);
    scalar(&o, "pam_resumptions_total", "counter", "Preempted requests back in the batch.", st->n_resumed);
    if (st->persist_enabled) store_metrics(&o, "pam_kv_persist", "persistent journal", &st->persist, st->persist_tokens_reused);
    if (st->remote_enabled) store_metrics(&o, "pam_kv_remote", "remote tier", &st->remote, st->remote_tokens_reused);
    char lb[160];
    scalar(&o, "pam_kv_block_tokens", "gauge", "Tokens per KV block (of one layer).", st->kv_block_tokens);
    metric(&o, "pam_kv_blocks", "gauge", "KV blocks in use, per tier.");
    for (int i = 0; i < st->kv_n_tiers; i++)
        put(&o, "pam_kv_blocks{tier=\"%s\"} %llu\n", tier_label(st, i, lb, sizeof lb),
            (unsigned long long)st->kv_tiers[i].blocks_used);
    metric(&o, "pam_kv_blocks_capacity", "gauge", "KV blocks available, per tier.");
    for (int i = 0; i < st->kv_n_tiers; i++)
        put(&o, "pam_kv_blocks_capacity{tier=\"%s\"} %llu\n", tier_label(st, i, lb, sizeof lb),
            (unsigned long long)st->kv_tiers[i].blocks_capacity);
    metric(&o, "pam_kv_bytes", "gauge", "KV bytes in use, per tier (in the tier's encoding).");
    for (int i = 0; i < st->kv_n_tiers; i++)
        put(&o, "pam_kv_bytes{tier=\"%s\"} %llu\n", tier_label(st, i, lb, sizeof lb),
            (unsigned long long)(st->kv_tiers[i].blocks_used * st->kv_tiers[i].block_bytes));
    metric(&o, "pam_kv_bytes_capacity", "gauge", "KV bytes available, per tier.");
    for (int i = 0; i < st->kv_n_tiers; i++)
        put(&o, "pam_kv_bytes_capacity{tier=\"%s\"} %llu\n", tier_label(st, i, lb, sizeof lb),
            (unsigned long long)(st->kv_tiers[i].blocks_capacity * st->kv_tiers[i].block_bytes));
    scalar(&o, "pam_kv_tokens", "gauge", "Token positions held by running, paused and cached sequences (shared blocks counted per sequence).", st->kv_tokens);
    scalar(&o, "pam_kv_migrations_total", "counter", "KV blocks moved between tiers (scheduler and preemption).", st->n_migrations);
    scalar(&o, "pam_kv_migration_failures_total", "counter", "KV block moves that failed (the block stayed where it was).", st->n_migration_failures);
    scalar(&o, "pam_kv_demoted_blocks_total", "counter", "KV blocks moved to the slowest tier by preemption.", st->n_demoted_blocks);
    scalar(&o, "pam_prefix_cache_entries", "gauge", "Finished sequences kept as cached prefixes.", (unsigned long long)st->prefix_entries);
    scalar(&o, "pam_prefix_cache_evictions_total", "counter", "Cached prefixes dropped (least recently used first).", st->prefix_evictions);
    scalar(&o, "pam_prefix_cache_lookups_total", "counter", "Admissions that looked up the prefix cache.", st->prefix_lookups);
    scalar(&o, "pam_prefix_cache_hits_total", "counter", "Admissions that reused cached prompt tokens.", st->prefix_hits);
    scalar(&o, "pam_prefix_cache_tokens_reused_total", "counter", "Prompt tokens reused from the prefix cache.", st->prefix_tokens_reused);
    scalar(&o, "pam_prefix_inflight_tokens_total", "counter",
           "Prompt tokens forked from a request still running (part of the reused tokens).", st->inflight_shared_tokens);
    scalar(&o, "pam_prefix_inflight_waits_total", "counter",
           "Admissions put off while a running request prefilled a prefix they share.", st->inflight_waits);
    metric(&o, "pam_prefix_cache_hit_rate", "gauge", "Fraction of prompt tokens reused from the prefix cache.");
    put(&o, "pam_prefix_cache_hit_rate %.6f\n",
        st->n_prompt_tokens ? (double)st->prefix_tokens_reused / (double)st->n_prompt_tokens : 0.0);
    if (o.oom) {
        free(o.p);
        return NULL;
    }
    return o.p;
}
