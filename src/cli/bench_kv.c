/* pam bench kv: decode speed with a tiered KV cache whose contents are
 * several times the fastest tier, for the policies side by side (DESIGN.md
 * §2.8, §5).
 *
 * For each policy: the tiers are opened from the --kv-tier specs (single:
 * one dram tier big enough for everything, or --single-tier), a KV manager is
 * made over them, and one inference context per sequence is backed by it.
 * Every sequence gets D (--depth) synthetic KV positions
 * (pam_kvm_fill_synthetic), then W untimed warmup steps and N timed steps
 * run; a step decodes one token of every sequence (positions D, D+1, ...)
 * in one batched forward, as a serving engine does (--sequential: one
 * forward per sequence in turn) and ends with pam_kvm_step_end
 * (importance, scheduling, migration:
 * part of the policy's cost, so it is timed). The logits are checked finite
 * after every token, outside the timed region.
 *
 * Per step, the manager's report gives each tier's bytes read and attention
 * time. The bound a step cannot beat: every device streams its bytes at its
 * measured rate, all devices at once. Host memory carries the weights (once
 * per step; once per sequence with --sequential), the host tiers' KV (dram, dramq) and offload's staging
 * copies; every other tier (ssd) is a device of its own:
 *   bound = max((weight_bytes + host_kv_bytes + staged_bytes) / bw,
 *               max over other tiers of bytes / read_gbps)
 * with bw measured at the start (pam_membw_read_gbps) and read_gbps from
 * pam_tier_calibrate. Reaching it needs every device busy for the whole
 * step: the ssd's reads overlapping the matrix work of all layers, not only
 * the attention of its own blocks. The host-memory tiers' read_gbps are set
 * to bw for the scheduler.
 *
 * --kv-replay FILE: random weights have no locality, so which blocks are
 * hot comes from a `pam locality --trace-out` trace of a real model
 * (kv/loctrace.h maps it onto these sequences, layers and depths): the KV
 * manager ranks a sparse call's skippable blocks and feeds the importance
 * EMA with the replayed mass (pam_kvm_set_replay). Everything else is real:
 * the attended blocks are read from their tiers and computed, the scheduler
 * moves blocks between the tiers. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "core/status.h"
#include "core/timing.h"
#include "kernels/cpu.h"
#include "kernels/membw.h"
#include "kv/kvm.h"
#include "kv/loctrace.h"
#include "kv/tier.h"
#include "model/model.h"

#define BKV_MAX_SPECS 8
#define BKV_MAX_POLICIES 8
/* pam with the KV manager's read-ahead hints off: the A/B of those hints */
#define BKV_PAM_NORA ((pam_kv_policy)3)
/* A run's code: the policy (low 4 bits), the placement (pam-recency,
 * pam-static: pam_kv_place in the next 4) and, for NAME-exact with
 * --kv-sparse, exact attention (bit 8). */
#define BKV_BASE(c) ((pam_kv_policy)((int)(c)&15))
#define BKV_PLACE(c) ((pam_kv_place)(((int)(c) >> 4) & 15))
#define BKV_EXACT(c) (((int)(c) >> 8) & 1)
#define BKV_MAX_SEQS 256
#define BKV_SEED 4321
#define BKV_WARMUP 2 /* default untimed steps */

typedef struct bkv_opts {
    const char *specs[BKV_MAX_SPECS];
    int n_specs;
    const char *single_spec;
    pam_kv_policy policies[BKV_MAX_POLICIES];
    char names[BKV_MAX_POLICIES][32];
    int n_policies;
    pam_kv_sparse sparse; /* --kv-sparse, for every run not named -exact */
    long block_tokens, n_seqs, depth, n_steps, bw_mib, budget_mib;
    const char *trace_path, *svg_path;
    int json;
    int sequential; /* one forward per sequence instead of one batch per step */
    long warmup;    /* untimed steps before the timed ones */
    const pam_loctrace *replay; /* --kv-replay, or NULL */
} bkv_opts;

/* What one policy's run measured; per-step series feed the plot. */
typedef struct bkv_result {
    pam_kv_policy policy; /* the KV manager's policy */
    char name[32];
    int ran;           /* 0: did not fit (single) or failed; see note */
    char note[256];
    int n_tiers;
    char tier_name[8][64];
    int tier_host[8];  /* tier in host memory: shares bw */
    double tier_gbps[8];       /* the rate the bound uses: the faster calibration */
    double tier_gbps_before[8], tier_gbps_after[8]; /* device tiers: before / after the steps (0: none) */
    double tier_busy[8]; /* device tiers: fraction of the timed steps their disk was busy (-1: unknown) */
    double tokens_per_second, step_ms, bound_ms;
    double cpu_ms_step; /* process CPU time per timed step, all threads */
    double bytes_step[8], attend_ms_step[8], blocks[8]; /* means over the timed steps */
    double migrations_step, migration_bytes_step, staged_bytes_step;
    uint64_t migration_failures;
    /* series over all steps (warmup included), [step * 8 + tier] */
    int n_series, warmup;
    double *s_blocks, *s_bytes;
} bkv_result;


static void bkv_usage(FILE *f) {
    fprintf(f,
            "usage: pam bench kv -m MODEL [options]\n"
            "\n"
            "Decode tokens/s of several long sequences whose KV spans several tiers, for each\n"
            "KV policy, with per-tier traffic and the bound set by the tiers' bandwidths.\n"
            "\n"
            "  -m, --model FILE      GGUF model (`pam gen-model` writes random-weight ones)\n"
            "  -t, --threads N       threads (default: number of CPUs)\n"
            "      --kv-tier SPEC    a tier, fastest first; repeat for more (dram:SIZE,\n"
            "                        dramq:int8|int4:SIZE, ssd:DIR:SIZE). Default: dram holding a\n"
            "                        quarter of the KV, then dramq:int8 for the rest\n"
            "      --kv-block N      tokens per block (default 16)\n"
            "      --policy LIST     comma-separated: pam,offload,single (default all three), and\n"
            "                        pam-nora: pam without read-ahead hints to the tiers,\n"
            "                        pam-recency, pam-static: pam placing blocks by recency only, or\n"
            "                        not moving them; NAME-exact (e.g. pam-exact): exact attention\n"
            "                        even with --kv-sparse\n"
            "      --kv-sparse B     sparse attention: at most B tokens (or B%% of the context) per\n"
            "                        sequence and layer (see pam run --help)\n"
            "      --single-tier SPEC  the one tier of `single` (default: dram holding all the KV)\n"
            "      --seqs N          sequences decoded together (default 4)\n"
            "      --depth D         synthetic KV positions per sequence (default 16384)\n"
            "  -n, --steps N         timed steps, one token per sequence each (default 16)\n"
            "      --warmup N        untimed steps before them (default %d)\n"
            "      --kv-replay FILE  which blocks are hot follows a trace of a real model's attention\n"
            "                        (pam locality --trace-out) instead of these random weights'\n"
            "      --budget-mib N    migration budget per step (default: the KV manager's)\n"
            "      --trace FILE      one JSON line per step and policy (the --kv-trace format)\n"
            "      --svg FILE        plot of blocks and bytes read per tier over the steps\n"
            "      --bw-mib N        buffer for the bandwidth measurement in MiB (default %zu)\n"
            "      --sequential      one forward per sequence in turn (default: one batched\n"
            "                        forward of all sequences per step)\n"
            "      --json            print a JSON array of records instead of a table\n",
            BKV_WARMUP, PAM_MEMBW_DEFAULT_BYTES >> 20);
}

static int bkv_parse_policies(const char *s, bkv_opts *o) {
    o->n_policies = 0;
    while (*s) {
        size_t n = strcspn(s, ","), base = n;
        int exact = n > 6 && !strncmp(s + n - 6, "-exact", 6);
        if (exact) base -= 6;
        pam_kv_policy p;
        if (base == 3 && !strncmp(s, "pam", 3))
            p = PAM_KV_POLICY_PAM;
        else if (base == 7 && !strncmp(s, "offload", 7))
            p = PAM_KV_POLICY_OFFLOAD;
        else if (base == 6 && !strncmp(s, "single", 6))
            p = PAM_KV_POLICY_SINGLE;
        else if (base == 8 && !strncmp(s, "pam-nora", 8))
            p = BKV_PAM_NORA;
        else if (base == 11 && !strncmp(s, "pam-recency", 11))
            p = (pam_kv_policy)(PAM_KV_POLICY_PAM | PAM_KV_PLACE_RECENCY << 4);
        else if (base == 10 && !strncmp(s, "pam-static", 10))
            p = (pam_kv_policy)(PAM_KV_POLICY_PAM | PAM_KV_PLACE_STATIC << 4);
        else
            return 0;
        if (exact) p = (pam_kv_policy)((int)p | 1 << 8);
        if (o->n_policies < BKV_MAX_POLICIES && n < sizeof o->names[0])
            snprintf(o->names[o->n_policies], sizeof o->names[0], "%.*s", (int)n, s);
        for (int i = 0; i < o->n_policies; i++)
            if (o->policies[i] == p) return 0;
        if (o->n_policies == BKV_MAX_POLICIES) return 0;
        o->policies[o->n_policies++] = p;
        s += n;
        if (*s == ',') s++;
    }
    return o->n_policies > 0;
}

static uint64_t bkv_rng(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* CPU time of the whole process: on a machine shared with other jobs, wall
 * time also measures them; this measures only us. */
static int64_t bkv_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int bkv_is_host(const pam_tier *t) {
    return !strcmp(t->ops->kind, "dram") || !strcmp(t->ops->kind, "dramq");
}

/* The busy time (ms with I/O in flight, /sys/dev/block/M:m/stat field 10) of
 * the block device holding an ssd spec's directory, or -1 where it cannot be
 * read (not Linux, not a block device, another tier kind). It counts every
 * process's I/O on that device. */
static long long bkv_dev_busy_ms(const char *spec) {
    if (!spec || strncmp(spec, "ssd:", 4) != 0) return -1;
    char dir[512];
    const char *end = strrchr(spec, ':');
    size_t n = end > spec + 3 ? (size_t)(end - (spec + 4)) : 0;
    if (n == 0 || n >= sizeof dir) return -1;
    memcpy(dir, spec + 4, n);
    dir[n] = 0;
    struct stat st;
    if (stat(dir, &st) != 0) return -1;
    char path[128];
    snprintf(path, sizeof path, "/sys/dev/block/%u:%u/stat", major(st.st_dev), minor(st.st_dev));
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    unsigned long long v[10];
    int got = 0;
    while (got < 10 && fscanf(f, "%llu", &v[got]) == 1) got++;
    fclose(f);
    return got == 10 ? (long long)v[9] : -1;
}

/* A device tier's rate through its own attend path, sustained: passes of
 * up to 1 GiB (about what a step of the default run reads from it), as a
 * disk may read short bursts faster than it keeps up for a whole step (a
 * virtual disk here: 1.5-2.4 GB/s over 128 MiB, 1.2 GB/s when busy for
 * seconds), and a bound must be a rate the tier can hold. Capped by the
 * tier's free room. */
static pam_status bkv_calibrate(pam_tier *t, const pam_kv_shape *shape, double *gbps) {
    pam_tier_stats s;
    pam_tier_stats_get(t, &s);
    uint64_t free_bytes = (s.blocks_capacity > s.blocks_used ? s.blocks_capacity - s.blocks_used : 0) * t->block_bytes;
    uint64_t want = 1ull << 30;
    if (want > free_bytes / 2) want = free_bytes / 2; /* leave room: the scheduler may still move blocks in */
    if (want < t->block_bytes) want = t->block_bytes;
    return pam_tier_calibrate(t, shape, want, gbps);
}

/* Opens the policy's tiers into tiers[] (caller closes them on failure). */
static pam_status bkv_open_tiers(const bkv_opts *o, const pam_kv_shape *shape, pam_kv_policy policy,
                                 uint64_t kv_bytes, double bw, pam_tier **tiers, int *n_tiers) {
    char spec[128];
    *n_tiers = 0;
    if (policy == PAM_KV_POLICY_SINGLE) {
        const char *s = o->single_spec;
        if (!s) {
            /* everything plus a block per sequence and layer of slack */
            uint64_t slack = (uint64_t)o->n_seqs * (uint64_t)shape->n_layer * 2 * (uint64_t)shape->block_tokens *
                             (uint64_t)shape->n_head_kv * (uint64_t)shape->head_dim * 4;
            snprintf(spec, sizeof spec, "dram:%llu", (unsigned long long)(kv_bytes + slack));
            s = spec;
        }
        PAM_TRY(pam_tier_open_spec(shape, s, &tiers[(*n_tiers)++]));
    } else if (o->n_specs == 0) {
        snprintf(spec, sizeof spec, "dram:%llu", (unsigned long long)(kv_bytes / 4));
        PAM_TRY(pam_tier_open_spec(shape, spec, &tiers[(*n_tiers)++]));
        snprintf(spec, sizeof spec, "dramq:int8:%llu", (unsigned long long)kv_bytes);
        PAM_TRY(pam_tier_open_spec(shape, spec, &tiers[(*n_tiers)++]));
    } else {
        for (int i = 0; i < o->n_specs; i++) PAM_TRY(pam_tier_open_spec(shape, o->specs[i], &tiers[(*n_tiers)++]));
    }
    for (int i = 0; i < *n_tiers; i++) {
        if (bkv_is_host(tiers[i])) {
            tiers[i]->read_gbps = bw;
        } else {
            /* a device tier's rate is measured through its own attend path
             * just before the policy runs (and again after it: see
             * bkv_policy), as a disk shared with others drifts */
            PAM_TRY(bkv_calibrate(tiers[i], shape, &tiers[i]->read_gbps));
        }
    }
    return PAM_OK;
}

static pam_status bkv_check_logits(const float *logits, int32_t n_vocab, int32_t seq, int32_t pos) {
    for (int32_t i = 0; i < n_vocab; i++)
        if (!isfinite(logits[i]))
            return PAM_ERR(PAM_ERR_CORRUPT, "sequence %d at position %d: logit %d is not finite", seq, pos, i);
    return PAM_OK;
}

typedef struct bkv_run {
    pam_kvm *kvm;
    pam_ctx *ctx[BKV_MAX_SEQS];
    int32_t seq[BKV_MAX_SEQS];
    int n_ctx;
} bkv_run;

static void bkv_run_free(bkv_run *r) {
    for (int i = 0; i < r->n_ctx; i++) pam_ctx_free(r->ctx[i]);
    pam_kvm_destroy(r->kvm);
}

/* The replayed per-block mass of a call (kv/loctrace.h). */
static void bkv_replay_mass(void *user, int32_t seq, int32_t layer, int32_t n_pos, float *mass, int64_t n_blocks) {
    pam_loctrace_map(user, seq, layer, n_pos, mass, n_blocks);
}

static void bkv_record_step(bkv_result *res, const pam_kvm_report *rep) {
    int s = res->n_series++;
    for (int t = 0; t < res->n_tiers && t < 8; t++) {
        res->s_blocks[s * 8 + t] = (double)rep->tiers[t].blocks_used;
        res->s_bytes[s * 8 + t] = (double)rep->tiers[t].bytes_read_step;
    }
}

static pam_status bkv_policy(const pam_model *m, pam_pool *pool, const bkv_opts *o, int which, double bw,
                             FILE *trace, float *logits, bkv_result *res) {
    pam_kv_policy code = o->policies[which], policy = BKV_BASE(code);
    const pam_model_hparams *hp = pam_model_get_hparams(m);
    pam_kv_shape shape = {.n_layer = hp->n_layer, .n_head_kv = hp->n_head_kv, .head_dim = hp->head_dim,
                          .block_tokens = (int32_t)o->block_tokens};
    int32_t n_seqs = (int32_t)o->n_seqs, depth = (int32_t)o->depth, n_steps = (int32_t)o->n_steps;
    int32_t warm = (int32_t)o->warmup;
    int32_t n_total = depth + warm + n_steps;
    uint64_t kv_bytes = (uint64_t)n_seqs * (uint64_t)n_total * (uint64_t)hp->n_layer * (uint64_t)hp->n_head_kv *
                        (uint64_t)hp->head_dim * 4; /* f16 K and V */
    memset(res, 0, sizeof *res);
    res->policy = policy == BKV_PAM_NORA ? PAM_KV_POLICY_PAM : policy;
    snprintf(res->name, sizeof res->name, "%s", o->names[which]);
    res->warmup = warm;
    res->s_blocks = calloc((size_t)(warm + n_steps) * 8, sizeof(double));
    res->s_bytes = calloc((size_t)(warm + n_steps) * 8, sizeof(double));
    if (!res->s_blocks || !res->s_bytes) return PAM_ERR(PAM_ERR_NOMEM, "bench kv: step series");

    pam_tier *tiers[BKV_MAX_SPECS] = {0};
    int n_tiers = 0;
    pam_status st = bkv_open_tiers(o, &shape, policy, kv_bytes, bw, tiers, &n_tiers);
    if (st != PAM_OK) {
        for (int i = 0; i < n_tiers; i++)
            if (tiers[i]) pam_tier_close(tiers[i]);
        return st;
    }
    res->n_tiers = n_tiers;
    for (int i = 0; i < n_tiers; i++) {
        snprintf(res->tier_name[i], sizeof res->tier_name[i], "%s", tiers[i]->name);
        res->tier_host[i] = bkv_is_host(tiers[i]);
        res->tier_gbps[i] = tiers[i]->read_gbps;
        res->tier_gbps_before[i] = res->tier_host[i] ? 0 : tiers[i]->read_gbps;
    }
    pam_kvm_config cfg = {.shape = shape, .tiers = tiers, .n_tiers = n_tiers,
                          .policy = policy == BKV_PAM_NORA ? PAM_KV_POLICY_PAM : policy,
                          .migrate_bytes_per_step = (uint64_t)o->budget_mib << 20, .trace = trace,
                          .readahead_off = policy == BKV_PAM_NORA,
                          .sparse = BKV_EXACT(code) ? (pam_kv_sparse){0, 0.0f} : o->sparse,
                          .place = BKV_PLACE(code)};
    bkv_run r = {0};
    PAM_TRY(pam_kvm_create(&cfg, pool, &r.kvm));
    if (o->replay) {
        pam_kvm_replay rp = {.user = (void *)o->replay, .mass = bkv_replay_mass};
        pam_kvm_set_replay(r.kvm, &rp);
    }

    /* Admission: every sequence reserves all it will need; a cache too small
     * for them (single with a small tier) fails here, cleanly. */
    for (int32_t s = 0; st == PAM_OK && s < n_seqs; s++) {
        st = pam_kvm_seq_create(r.kvm, &r.seq[s]);
        if (st == PAM_OK) st = pam_kvm_reserve(r.kvm, r.seq[s], n_total);
        if (st == PAM_OK) st = pam_kvm_fill_synthetic(r.kvm, r.seq[s], depth, BKV_SEED + (uint64_t)s);
        if (st == PAM_OK) {
            pam_ctx_params p;
            pam_ctx_params_default(&p);
            p.n_ctx = n_total;
            p.kvm = r.kvm;
            p.kv_seq = r.seq[s];
            st = pam_ctx_create_ex(m, &p, pool, &r.ctx[s]);
            if (st == PAM_OK) r.n_ctx++;
        }
    }
    if (st == PAM_ERR_FULL) {
        /* does not fit: a result of this configuration, not a failure */
        snprintf(res->note, sizeof res->note, "does not fit: %s", pam_last_error());
        bkv_run_free(&r);
        return PAM_OK;
    }
    /* per timed step: host-memory seconds, and each device tier's bytes */
    double *host_secs = calloc((size_t)n_steps, sizeof *host_secs);
    double *dev_bytes = calloc((size_t)n_steps * 8, sizeof *dev_bytes);
    if (!host_secs || !dev_bytes) st = PAM_ERR(PAM_ERR_NOMEM, "bench kv: per-step records");
    /* the spec each tier came from (device busy time), NULL: none */
    const char *tier_spec[8] = {0};
    for (int t = 0; policy != PAM_KV_POLICY_SINGLE && o->n_specs > 0 && t < n_tiers && t < 8; t++)
        tier_spec[t] = o->specs[t];
    double busy_ms[8] = {0};
    uint64_t rng = BKV_SEED;
    int64_t total_ns = 0, total_cpu_ns = 0;
    double sum_bytes[8] = {0}, sum_ms[8] = {0}, sum_blocks[8] = {0}, sum_mig = 0, sum_mig_bytes = 0, sum_staged = 0,
           sum_bound = 0;
    for (int32_t step = 0; st == PAM_OK && step < warm + n_steps; step++) {
        int timed = step >= warm;
        int32_t pos = depth + step;
        long long busy0[8];
        for (int t = 0; t < n_tiers && t < 8; t++) busy0[t] = bkv_dev_busy_ms(tier_spec[t]);
        int32_t toks[BKV_MAX_SEQS], poss[BKV_MAX_SEQS];
        for (int32_t s = 0; s < n_seqs; s++) {
            toks[s] = (int32_t)(bkv_rng(&rng) % (uint64_t)hp->n_vocab);
            poss[s] = pos;
        }
        int64_t t0 = pam_time_ns(), c0 = bkv_cpu_ns();
        if (o->sequential)
            for (int32_t s = 0; st == PAM_OK && s < n_seqs; s++)
                st = pam_forward(r.ctx[s], &toks[s], 1, pos, logits + (size_t)s * hp->n_vocab, 0);
        else
            st = pam_forward_batch(r.ctx, toks, poss, n_seqs, logits);
        int64_t step_ns = pam_time_ns() - t0, step_cpu_ns = bkv_cpu_ns() - c0;
        for (int32_t s = 0; st == PAM_OK && s < n_seqs; s++)
            st = bkv_check_logits(logits + (size_t)s * hp->n_vocab, hp->n_vocab, s, pos);
        if (st != PAM_OK) break;
        t0 = pam_time_ns();
        c0 = bkv_cpu_ns();
        st = pam_kvm_step_end(r.kvm);
        step_ns += pam_time_ns() - t0;
        step_cpu_ns += bkv_cpu_ns() - c0;
        if (st != PAM_OK) break;
        pam_kvm_report rep;
        pam_kvm_report_get(r.kvm, &rep);
        bkv_record_step(res, &rep);
        if (!timed) continue;
        total_ns += step_ns;
        total_cpu_ns += step_cpu_ns;
        for (int t = 0; t < n_tiers && t < 8; t++) {
            long long b1 = bkv_dev_busy_ms(tier_spec[t]);
            if (busy0[t] < 0 || b1 < 0) busy_ms[t] = -1e30;
            else busy_ms[t] += (double)(b1 - busy0[t]);
        }
        double host_s = 0;
        int ts = step - warm;
        for (int t = 0; t < n_tiers; t++) {
            sum_bytes[t] += (double)rep.tiers[t].bytes_read_step;
            sum_ms[t] += rep.tiers[t].attend_ms_step;
            sum_blocks[t] += (double)rep.tiers[t].blocks_used;
            if (res->tier_host[t])
                host_s += (double)rep.tiers[t].bytes_read_step / (bw * 1e9);
            else
                dev_bytes[(size_t)ts * 8 + (size_t)t] = (double)rep.tiers[t].bytes_read_step;
        }
        /* offload's staging copy: read from the slow tiers (counted above)
         * and written into host memory */
        host_s += (double)rep.staged_bytes_step / (bw * 1e9);
        /* weights: once per step batched, once per sequence one after another */
        host_s += (double)(o->sequential ? n_seqs : 1) * (double)pam_model_weight_bytes(m) / (bw * 1e9);
        host_secs[ts] = host_s;
        sum_mig += (double)rep.migrations_step;
        sum_mig_bytes += (double)rep.migration_bytes_step;
        sum_staged += (double)rep.staged_bytes_step;
        res->migration_failures = rep.migration_failures;
    }
    /* The device tiers again, now: the bound takes the faster of the two
     * rates (the stricter bound). A tier with no room left to calibrate in
     * keeps the first figure. */
    for (int t = 0; st == PAM_OK && t < n_tiers; t++) {
        if (res->tier_host[t]) continue;
        double after = 0;
        pam_status cs = bkv_calibrate(tiers[t], &shape, &after);
        res->tier_gbps_after[t] = cs == PAM_OK ? after : 0;
        if (cs == PAM_OK && after > res->tier_gbps[t]) res->tier_gbps[t] = after;
    }
    for (int ts = 0; st == PAM_OK && ts < n_steps; ts++) {
        double other_s = 0;
        for (int t = 0; t < n_tiers; t++) {
            if (res->tier_host[t]) continue;
            double secs = dev_bytes[(size_t)ts * 8 + (size_t)t] / (res->tier_gbps[t] * 1e9);
            if (secs > other_s) other_s = secs;
        }
        sum_bound += (host_secs[ts] > other_s ? host_secs[ts] : other_s) * 1e3;
    }
    free(dev_bytes);
    free(host_secs);
    bkv_run_free(&r);
    if (st != PAM_OK) return st;
    res->ran = 1;
    double n = (double)n_steps;
    res->step_ms = (double)total_ns / 1e6 / n;
    res->cpu_ms_step = (double)total_cpu_ns / 1e6 / n;
    res->tokens_per_second = (double)n_seqs * n * 1e9 / (double)(total_ns > 0 ? total_ns : 1);
    res->bound_ms = sum_bound / n;
    for (int t = 0; t < n_tiers && t < 8; t++)
        res->tier_busy[t] = tier_spec[t] && busy_ms[t] >= 0 ? busy_ms[t] / ((double)total_ns / 1e6) : -1;
    for (int t = 0; t < n_tiers; t++) {
        res->bytes_step[t] = sum_bytes[t] / n;
        res->attend_ms_step[t] = sum_ms[t] / n;
        res->blocks[t] = sum_blocks[t] / n;
    }
    res->migrations_step = sum_mig / n;
    res->migration_bytes_step = sum_mig_bytes / n;
    res->staged_bytes_step = sum_staged / n;
    return PAM_OK;
}

/* ---- plot --------------------------------------------------------------- */

static const char *const bkv_colors[8] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                          "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};

/* One panel: a line per tier of series[step * 8 + tier] over the steps. */
static void bkv_svg_panel(FILE *f, double x0, double y0, double w, double h, const char *title, const double *series,
                          const bkv_result *r, double scale) {
    double ymax = 0;
    for (int s = 0; s < r->n_series; s++)
        for (int t = 0; t < r->n_tiers; t++)
            if (series[s * 8 + t] * scale > ymax) ymax = series[s * 8 + t] * scale;
    if (ymax <= 0) ymax = 1;
    double pl = 60, pr = 10, pt = 24, pb = 30; /* padding: axis labels and title */
    double px = x0 + pl, py = y0 + pt, pw = w - pl - pr, ph = h - pt - pb;
    int n = r->n_series;
    double dx = n > 1 ? pw / (n - 1) : 0;
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"13\">%s</text>\n", px, y0 + 15, title);
    /* warmup steps, untimed */
    if (n > 1)
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#eeeeee\"/>\n", px, py,
                dx * (r->warmup - 0.5 < n - 1 ? r->warmup - 0.5 : n - 1), ph);
    for (int g = 0; g <= 4; g++) {
        double y = py + ph - ph * g / 4.0;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#cccccc\"/>\n", px, y, px + pw, y);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" text-anchor=\"end\">%.4g</text>\n", px - 4, y + 3,
                ymax * g / 4.0);
    }
    for (int s = 0; s < n; s += (n > 20 ? n / 10 : 1))
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" text-anchor=\"middle\">%d</text>\n", px + dx * s,
                py + ph + 14, s);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" text-anchor=\"middle\">step</text>\n", px + pw / 2,
            py + ph + 27);
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#000000\"/>\n", px,
            py, pw, ph);
    for (int t = 0; t < r->n_tiers; t++) {
        fprintf(f, "<polyline fill=\"none\" stroke-width=\"2\" stroke=\"%s\" points=\"", bkv_colors[t]);
        for (int s = 0; s < n; s++)
            fprintf(f, "%s%.1f,%.1f", s ? " " : "", px + dx * s, py + ph - ph * series[s * 8 + t] * scale / ymax);
        fprintf(f, "\"/>\n");
    }
}

static void bkv_xml_text(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '<') fputs("&lt;", f);
        else if (*s == '>') fputs("&gt;", f);
        else if (*s == '&') fputs("&amp;", f);
        else if ((unsigned char)*s >= 0x20) fputc(*s, f);
    }
}

/* Tier occupancy and bytes read per step, one row of two panels per policy. */
static pam_status bkv_write_svg(const char *path, const bkv_result *res, int n_res) {
    int rows = 0;
    for (int i = 0; i < n_res; i++) rows += res[i].ran;
    double W = 980, rowh = 270, head = 30;
    FILE *f = fopen(path, "w");
    if (!f) return PAM_ERR(PAM_ERR_IO, "cannot write the plot '%s'", path);
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"#ffffff\"/>\n"
            "<text x=\"10\" y=\"20\" font-size=\"15\">pam bench kv: tier occupancy and traffic per step "
            "(grey: untimed warmup)</text>\n",
            W, head + rowh * (rows > 0 ? rows : 1));
    int row = 0;
    for (int i = 0; i < n_res; i++) {
        const bkv_result *r = &res[i];
        if (!r->ran) continue;
        double y0 = head + rowh * row++;
        char title[96];
        snprintf(title, sizeof title, "%s: blocks per tier", r->name);
        bkv_svg_panel(f, 0, y0, 440, 230, title, r->s_blocks, r, 1.0);
        snprintf(title, sizeof title, "%s: MB read per tier per step", r->name);
        bkv_svg_panel(f, 440, y0, 440, 230, title, r->s_bytes, r, 1e-6);
        for (int t = 0; t < r->n_tiers; t++) {
            double ly = y0 + 40 + 16 * t;
            fprintf(f, "<rect x=\"890\" y=\"%.1f\" width=\"12\" height=\"4\" fill=\"%s\"/>\n", ly - 4, bkv_colors[t]);
            fprintf(f, "<text x=\"906\" y=\"%.1f\" font-size=\"10\">", ly);
            bkv_xml_text(f, r->tier_name[t]);
            fprintf(f, "</text>\n");
        }
    }
    fprintf(f, "</svg>\n");
    if (fclose(f) != 0) return PAM_ERR(PAM_ERR_IO, "cannot write the plot '%s'", path);
    return PAM_OK;
}

/* ---- output ------------------------------------------------------------- */

/* The fastest tier's share of the bytes attention read per step. */
static double bkv_fast_share(const bkv_result *r) {
    double all = 0;
    for (int t = 0; t < r->n_tiers; t++) all += r->bytes_step[t];
    return all > 0 ? r->bytes_step[0] / all : 0.0;
}

static void bkv_json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') putchar('\\');
        if ((unsigned char)*s >= 0x20) putchar(*s);
    }
    putchar('"');
}

static void bkv_print_json(const bkv_opts *o, const bkv_result *res, int n_res, int threads, double bw,
                           double ratio) {
    printf("[");
    for (int i = 0; i < n_res; i++) {
        const bkv_result *r = &res[i];
        printf("%s\n  {\"policy\": \"%s\", \"ran\": %s, \"seqs\": %ld, \"depth\": %ld, \"steps\": %ld, "
               "\"threads\": %d, \"bandwidth_gbps\": %.4f",
               i ? "," : "", r->name, r->ran ? "true" : "false", o->n_seqs, o->depth,
               o->n_steps, threads, bw);
        if (!r->ran) {
            printf(", \"note\": ");
            bkv_json_string(r->note);
            printf("}");
            continue;
        }
        printf(", \"tokens_per_second\": %.4f, \"step_ms\": %.4f, \"bound_ms\": %.4f, \"fraction_of_bound\": %.4f, "
               "\"migrations_per_step\": %.2f, \"migration_bytes_per_step\": %.0f, \"migration_failures\": %llu, "
               "\"staged_bytes_per_step\": %.0f, \"cpu_ms_per_step\": %.4f",
               r->tokens_per_second, r->step_ms, r->bound_ms, r->bound_ms / r->step_ms, r->migrations_step,
               r->migration_bytes_step, (unsigned long long)r->migration_failures, r->staged_bytes_step,
               r->cpu_ms_step);
        printf(", \"fastest_tier_share\": %.4f", bkv_fast_share(r));
        if (r->policy == PAM_KV_POLICY_PAM && ratio > 0) printf(", \"speedup_vs_offload\": %.4f", ratio);
        printf(", \"tiers\": [");
        for (int t = 0; t < r->n_tiers; t++) {
            printf("%s{\"name\": ", t ? ", " : "");
            bkv_json_string(r->tier_name[t]);
            printf(", \"read_gbps\": %.4f, \"blocks\": %.1f, \"bytes_read_per_step\": %.0f, \"attend_ms_per_step\": "
                   "%.4f",
                   r->tier_gbps[t], r->blocks[t], r->bytes_step[t], r->attend_ms_step[t]);
            if (!r->tier_host[t])
                printf(", \"read_gbps_before\": %.4f, \"read_gbps_after\": %.4f", r->tier_gbps_before[t],
                       r->tier_gbps_after[t]);
            if (r->tier_busy[t] >= 0) printf(", \"device_busy_fraction\": %.4f", r->tier_busy[t]);
            printf("}");
        }
        printf("]}");
    }
    printf("\n]\n");
}

static void bkv_print_table(const bkv_result *res, int n_res, double ratio) {
    printf("| policy   |    tok/s | ms / step | bound ms | of bound | migr / step | MB migr / step | MB staged / step |\n"
           "|----------|----------|-----------|----------|----------|-------------|----------------|------------------|\n");
    for (int i = 0; i < n_res; i++) {
        const bkv_result *r = &res[i];
        if (!r->ran) {
            printf("| %-8s | %s |\n", r->name, r->note);
            continue;
        }
        printf("| %-8s | %8.2f | %9.2f | %8.2f | %7.1f%% | %11.1f | %14.2f | %16.2f |\n", r->name,
               r->tokens_per_second, r->step_ms, r->bound_ms, 100.0 * r->bound_ms / r->step_ms, r->migrations_step,
               r->migration_bytes_step / 1e6, r->staged_bytes_step / 1e6);
    }
    printf("\n| policy   | tier                 |   GB/s | before / after |   blocks | MB read / step | "
           "of read | attend ms / step | bytes/bw ms | disk busy |\n"
           "|----------|----------------------|--------|----------------|----------|----------------|---------|"
           "------------------|-------------|-----------|\n");
    for (int i = 0; i < n_res; i++) {
        const bkv_result *r = &res[i];
        for (int t = 0; r->ran && t < r->n_tiers; t++) {
            char ba[32] = "";
            char busy[16] = "";
            if (!r->tier_host[t]) snprintf(ba, sizeof ba, "%.2f / %.2f", r->tier_gbps_before[t], r->tier_gbps_after[t]);
            if (r->tier_busy[t] >= 0) snprintf(busy, sizeof busy, "%.1f%%", 100.0 * r->tier_busy[t]);
            double all = 0;
            for (int u = 0; u < r->n_tiers; u++) all += r->bytes_step[u];
            printf("| %-8s | %-20.20s | %6.2f | %14s | %8.0f | %14.2f | %6.1f%% | %16.2f | %11.2f | %9s |\n",
                   r->name, r->tier_name[t], r->tier_gbps[t], ba, r->blocks[t], r->bytes_step[t] / 1e6,
                   all > 0 ? 100.0 * r->bytes_step[t] / all : 0.0, r->attend_ms_step[t], r->bytes_step[t] / (r->tier_gbps[t] * 1e9) * 1e3,
                   busy);
        }
    }
    if (ratio > 0) printf("\npam / offload: %.2fx\n", ratio);
    const bkv_result *sp = NULL, *ex = NULL;
    for (int i = 0; i < n_res; i++) {
        if (res[i].ran && !strcmp(res[i].name, "pam")) sp = &res[i];
        if (res[i].ran && !strcmp(res[i].name, "pam-exact")) ex = &res[i];
    }
    if (sp && ex) printf("pam (sparse) / pam-exact: %.2fx\n", sp->tokens_per_second / ex->tokens_per_second);
    const bkv_result *stat = NULL;
    int multi = 0;
    for (int i = 0; i < n_res; i++) {
        if (res[i].ran && !strcmp(res[i].name, "pam-static")) stat = &res[i];
        if (res[i].ran && res[i].n_tiers > 1) multi = 1;
    }
    if (multi) {
        printf("fastest tier's share of the bytes read:");
        for (int i = 0; i < n_res; i++)
            if (res[i].ran && res[i].n_tiers > 1) printf(" %s %.1f%%", res[i].name, 100.0 * bkv_fast_share(&res[i]));
        printf("\n");
    }
    if (sp && stat && bkv_fast_share(stat) > 0)
        printf("pam / pam-static, fastest tier's share: %.2fx\n", bkv_fast_share(sp) / bkv_fast_share(stat));
    fflush(stdout);
}

int pam_cli_bench_kv(int argc, char **argv) {
    const char *model_path = NULL;
    long n_threads = 0;
    bkv_opts o = {.block_tokens = 16, .n_seqs = 4, .depth = 16384, .n_steps = 16,
                  .bw_mib = (long)(PAM_MEMBW_DEFAULT_BYTES >> 20), .budget_mib = 0, .warmup = BKV_WARMUP};
    const char *replay_path = NULL;
    bkv_parse_policies("pam,offload,single", &o);
    pam_args a;
    pam_args_init(&a, argc, argv, "pam bench kv");
    while (pam_args_next(&a)) {
        if (pam_args_is(&a, "-h", "--help")) {
            bkv_usage(stdout);
            return 0;
        } else if (pam_args_is(&a, "-m", "--model")) {
            model_path = pam_args_value(&a);
        } else if (pam_args_is(&a, "-t", "--threads")) {
            pam_args_long(&a, 1, 1024, &n_threads);
        } else if (pam_args_is(&a, NULL, "--kv-tier")) {
            const char *v = pam_args_value(&a);
            if (v && o.n_specs == BKV_MAX_SPECS) {
                fprintf(stderr, "pam bench kv: at most %d --kv-tier flags\n", BKV_MAX_SPECS);
                a.failed = 1;
            } else if (v) {
                o.specs[o.n_specs++] = v;
            }
        } else if (pam_args_is(&a, NULL, "--single-tier")) {
            o.single_spec = pam_args_value(&a);
        } else if (pam_args_is(&a, NULL, "--kv-block")) {
            pam_args_long(&a, 1, 4096, &o.block_tokens);
        } else if (pam_args_is(&a, NULL, "--policy")) {
            const char *v = pam_args_value(&a);
            if (v && !bkv_parse_policies(v, &o)) {
                fprintf(stderr, "pam bench kv: --policy expects a comma-separated list of pam, offload, single, pam-nora "
                                "(each once), got '%s'\n", v);
                a.failed = 1;
            }
        } else if (pam_args_is(&a, NULL, "--seqs")) {
            pam_args_long(&a, 1, BKV_MAX_SEQS, &o.n_seqs);
        } else if (pam_args_is(&a, NULL, "--depth")) {
            pam_args_long(&a, 0, 1L << 24, &o.depth);
        } else if (pam_args_is(&a, "-n", "--steps")) {
            pam_args_long(&a, 1, 1L << 20, &o.n_steps);
        } else if (pam_args_is(&a, NULL, "--warmup")) {
            pam_args_long(&a, 0, 1L << 20, &o.warmup);
        } else if (pam_args_is(&a, NULL, "--kv-replay")) {
            replay_path = pam_args_value(&a);
        } else if (pam_args_is(&a, NULL, "--budget-mib")) {
            pam_args_long(&a, 1, 1L << 30, &o.budget_mib);
        } else if (pam_args_is(&a, NULL, "--trace")) {
            o.trace_path = pam_args_value(&a);
        } else if (pam_args_is(&a, NULL, "--svg")) {
            o.svg_path = pam_args_value(&a);
        } else if (pam_args_is(&a, NULL, "--bw-mib")) {
            pam_args_long(&a, 1, 1L << 20, &o.bw_mib);
        } else if (pam_args_is(&a, NULL, "--json")) {
            o.json = 1;
        } else if (pam_args_is(&a, NULL, "--sequential")) {
            o.sequential = 1;
        } else if (pam_args_is(&a, NULL, "--kv-sparse")) {
            const char *v = pam_args_value(&a);
            if (v && pam_kv_sparse_parse(v, &o.sparse) != PAM_OK) {
                fprintf(stderr, "pam bench kv: --kv-sparse: %s\n", pam_last_error());
                a.failed = 1;
            }
        } else {
            pam_args_unknown(&a);
        }
    }
    if (a.n_positional > 0) {
        fprintf(stderr, "pam bench kv: unexpected argument '%s' (the model goes after -m)\n", a.positional[0]);
        a.failed = 1;
    }
    if (!a.failed && !model_path) {
        fprintf(stderr, "pam bench kv: no model given: pass a GGUF file with -m MODEL.gguf\n"
                        "(`pam gen-model --shape llama-3.2-1b --type q8_0 -o MODEL.gguf` writes one)\n");
        a.failed = 1;
    }
    if (a.failed) {
        fprintf(stderr, "run `pam bench kv --help` for the options\n");
        return 2;
    }

    int rc = 1;
    pam_model *model = NULL;
    pam_pool *pool = NULL;
    pam_loctrace *replay = NULL;
    float *logits = NULL;
    FILE *trace = NULL;
    bkv_result res[BKV_MAX_POLICIES];
    memset(res, 0, sizeof res);
    int n_res = 0;
    FILE *info = o.json ? stderr : stdout;
    if (pam_model_load(model_path, &model) != PAM_OK) {
        fprintf(stderr, "pam bench kv: cannot load '%s': %s\n", model_path, pam_last_error());
        goto done;
    }
    if (pam_pool_create((int)n_threads, &pool) != PAM_OK) {
        fprintf(stderr, "pam bench kv: %s\n", pam_last_error());
        goto done;
    }
    if (replay_path) {
        if (pam_loctrace_load(replay_path, &replay) != PAM_OK) {
            fprintf(stderr, "pam bench kv: --kv-replay: %s\n", pam_last_error());
            goto done;
        }
        o.replay = replay;
    }
    const pam_model_hparams *hp = pam_model_get_hparams(model);
    logits = malloc((size_t)o.n_seqs * (size_t)hp->n_vocab * sizeof(float));
    if (!logits) {
        fprintf(stderr, "pam bench kv: out of memory\n");
        goto done;
    }
    if (o.trace_path && !(trace = fopen(o.trace_path, "w"))) {
        fprintf(stderr, "pam bench kv: cannot write the trace '%s'\n", o.trace_path);
        goto done;
    }
    double bw = 0;
    if (pam_membw_read_gbps(pool, (size_t)o.bw_mib << 20, 5, &bw) != PAM_OK) {
        fprintf(stderr, "pam bench kv: bandwidth measurement failed: %s\n", pam_last_error());
        goto done;
    }
    int threads = pam_pool_n_threads(pool);
    double kv_gb = (double)o.n_seqs * (double)(o.depth + o.warmup + o.n_steps) * hp->n_layer * hp->n_head_kv *
                   hp->head_dim * 4 / 1e9;
    fprintf(info, "model: %s (%d layers, %d/%d heads, head dim %d), weights %.1f MB per token\n", model_path,
            hp->n_layer, hp->n_head, hp->n_head_kv, hp->head_dim, (double)pam_model_weight_bytes(model) / 1e6);
    fprintf(info, "sequences: %ld at depth %ld, %.2f GB of f16 KV; block %ld tokens; %ld timed steps after %d warmup\n",
            o.n_seqs, o.depth, kv_gb, o.block_tokens, o.n_steps, (int)o.warmup);
    fprintf(info, "threads: %d, isa: %s, memory read bandwidth: %.2f GB/s (best of 5 over %ld MiB)\n\n", threads,
            pam_cpu_isa(), bw, o.bw_mib);
    if (o.sparse.tokens > 0)
        fprintf(info, "sparse attention: at most %d tokens per sequence and layer (runs named -exact: exact)\n\n",
                (int)o.sparse.tokens);
    else if (o.sparse.frac > 0.0f)
        fprintf(info, "sparse attention: at most %.4g%% of the context per sequence and layer (runs named -exact: "
                      "exact)\n\n",
                100.0 * o.sparse.frac);
    if (replay)
        fprintf(info,
                "replay: %s (%d layers, block %d, context %d, %d chunks): which blocks are hot follows the trace; "
                "reads and arithmetic are real\n\n",
                replay_path, (int)pam_loctrace_n_layer(replay), (int)pam_loctrace_block_tokens(replay),
                (int)pam_loctrace_ctx(replay), (int)pam_loctrace_n_chunks(replay));
    fflush(info);
    for (int i = 0; i < o.n_policies; i++) {
        if (bkv_policy(model, pool, &o, i, bw, trace, logits, &res[n_res]) != PAM_OK) {
            fprintf(stderr, "pam bench kv: policy %s: %s\n", o.names[i], pam_last_error());
            n_res++;
            goto done;
        }
        n_res++;
    }
    double ratio = 0;
    const bkv_result *rp = NULL, *ro = NULL;
    for (int i = 0; i < n_res; i++) {
        if (res[i].ran && !strcmp(res[i].name, "pam")) rp = &res[i];
        if (res[i].ran && !strcmp(res[i].name, "offload")) ro = &res[i];
    }
    if (rp && ro) ratio = rp->tokens_per_second / ro->tokens_per_second;
    if (o.json)
        bkv_print_json(&o, res, n_res, threads, bw, ratio);
    else
        bkv_print_table(res, n_res, ratio);
    if (o.svg_path && bkv_write_svg(o.svg_path, res, n_res) != PAM_OK) {
        fprintf(stderr, "pam bench kv: %s\n", pam_last_error());
        goto done;
    }
    rc = 0;
done:
    if (trace && fclose(trace) != 0 && rc == 0) {
        fprintf(stderr, "pam bench kv: cannot write the trace '%s'\n", o.trace_path);
        rc = 1;
    }
    for (int i = 0; i < BKV_MAX_POLICIES; i++) {
        free(res[i].s_blocks);
        free(res[i].s_bytes);
    }
    free(logits);
    pam_loctrace_free(replay);
    pam_pool_destroy(pool);
    pam_model_free(model);
    return rc;
}
