/* One conformance suite run against every KV tier (dram, dramq int8/int4,
 * ssd with O_DIRECT + io_uring, buffered, synchronous, and a fault-wrapped
 * tier): allocation until PAM_ERR_FULL, write/read round trips including
 * partial writes, attention against a float64 oracle (f16 tiers within 1e-4;
 * quantised tiers within bounds recorded per format), the per-block
 * by-products, stats, and concurrent attend. Then the ssd tier's faults (EIO
 * on read and write, short reads, ENOSPC while growing, a flipped byte or a
 * stale copy on disk, checksums taken and verified at different ISA
 * levels), its placement and multi-block reads, read-ahead, the fault
 * wrapper, and --kv-tier spec parsing. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/fp16.h"
#include "kernels/cpu.h"
#include "kv/tier.h"
#include "util/ref_model.h"
#include "util/test_util.h"

/* Back to the level the process started with: PAM_ISA when it forces one
 * (the suite also runs under PAM_ISA=avx2 and scalar), else the detected
 * best. pam_cpu_set_isa(NULL) would always pick the detected best. */
static void restore_isa(void) {
    const char *env = getenv("PAM_ISA");
    assert_int_equal(pam_cpu_set_isa(env && *env ? env : NULL), PAM_OK);
}


/* 2 KV heads of 64, 4 query heads (GQA 2:1), 16-token blocks. */
static const pam_kv_shape k_shape = {.n_layer = 2, .n_head_kv = 2, .head_dim = 64, .block_tokens = 16};
#define N_HEAD 4
#define ROW (2 * 64)
#define BT 16
#define HD 64

static const char *ssd_dir(void) { return pam_test_tmp("tiers-ssd"); }

static pam_status open_dram(uint64_t cap, pam_tier **t) { return pam_tier_dram_open(&k_shape, cap, t); }
static pam_status open_q8(uint64_t cap, pam_tier **t) { return pam_tier_dramq_open(&k_shape, 8, cap, t); }
static pam_status open_q4(uint64_t cap, pam_tier **t) { return pam_tier_dramq_open(&k_shape, 4, cap, t); }
static pam_status open_ssd(uint64_t cap, pam_tier **t) { return pam_tier_ssd_open(&k_shape, ssd_dir(), cap, t); }
static pam_status open_ssd_buf(uint64_t cap, pam_tier **t) {
    return pam_tier_ssd_open_ex(&k_shape, ssd_dir(), cap, PAM_SSD_BUFFERED, t);
}
static pam_status open_ssd_sync(uint64_t cap, pam_tier **t) {
    return pam_tier_ssd_open_ex(&k_shape, ssd_dir(), cap, PAM_SSD_NO_URING, t);
}
static pam_status open_dram_f32(uint64_t cap, pam_tier **t) { return pam_tier_dram_open_type(&k_shape, PAM_KV_F32, cap, t); }
static pam_status open_dram_bf16(uint64_t cap, pam_tier **t) { return pam_tier_dram_open_type(&k_shape, PAM_KV_BF16, cap, t); }
static pam_status open_dram_q8(uint64_t cap, pam_tier **t) { return pam_tier_dram_open_type(&k_shape, PAM_KV_Q8, cap, t); }
static pam_status open_dram_q4(uint64_t cap, pam_tier **t) { return pam_tier_dram_open_type(&k_shape, PAM_KV_Q4, cap, t); }
static pam_status open_ssd_bf16(uint64_t cap, pam_tier **t) {
    return pam_tier_ssd_open_type(&k_shape, PAM_KV_BF16, ssd_dir(), cap, 0, t);
}
static pam_status open_ssd_q8(uint64_t cap, pam_tier **t) {
    return pam_tier_ssd_open_type(&k_shape, PAM_KV_Q8, ssd_dir(), cap, 0, t);
}
static pam_status open_fault_none(uint64_t cap, pam_tier **t) {
    pam_tier *inner;
    pam_status st = pam_tier_ssd_open(&k_shape, ssd_dir(), cap, &inner);
    if (st != PAM_OK) return st;
    pam_fault_plan plan = {.op = PAM_FAULT_NONE};
    return pam_tier_fault_wrap(inner, &plan, t);
}

typedef struct tier_kind {
    const char *label;
    pam_status (*open)(uint64_t cap, pam_tier **t);
    int bits;         /* 16 for f16 tiers */
    double attn_tol;  /* attention output vs float64 on the original data */
    double dec_tol;   /* ... and on the tier's decoded data, output and by-products (0: 1e-4) */
} tier_kind;

/* Quantised bounds: max |o - o_ref| / max |o_ref| of the normalised attention
 * output on N(0,1) keys and values with 16-token blocks, measured around
 * 0.006 (int8) and 0.09 (int4); the bounds leave about 3x headroom. The KV
 * types bf16, q8 and q4 of dram and ssd also round q (bf16, int8) and the
 * softmax weights (bf16, 7 bits), so against their own decoded data they
 * agree to those roundings, not to f32's: measured about 0.002 (bf16) and
 * 0.009 (q8, q4), the by-products (m, l) 0.004 (bf16) and 0.01 (q8, q4);
 * 3x headroom again. */
static const tier_kind k_kinds[] = {
    {"dram", open_dram, 16, 1e-4, 0},
    {"dramq:int8", open_q8, 8, 2e-2, 0},
    {"dramq:int4", open_q4, 4, 3e-1, 0},
    {"ssd", open_ssd, 16, 1e-4, 0},
    {"ssd+buffered", open_ssd_buf, 16, 1e-4, 0},
    {"ssd+sync", open_ssd_sync, 16, 1e-4, 0},
    {"fault(ssd)", open_fault_none, 16, 1e-4, 0},
    {"dram:f32", open_dram_f32, 16, 1e-4, 0},
    {"dram:bf16", open_dram_bf16, 8, 2e-2, 1.2e-2},
    {"dram:q8", open_dram_q8, 8, 3e-2, 3e-2},
    {"dram:q4", open_dram_q4, 4, 3e-1, 3e-2},
    {"ssd:bf16", open_ssd_bf16, 8, 2e-2, 1.2e-2},
    {"ssd:q8", open_ssd_q8, 8, 3e-2, 3e-2},
};
#define N_KINDS (int)(sizeof k_kinds / sizeof k_kinds[0])

static pam_tier *open_kind(const tier_kind *k, uint64_t cap) {
    pam_tier *t = NULL;
    pam_status st = k->open(cap, &t);
    if (st != PAM_OK) fprintf(stderr, "%s: %s\n", k->label, pam_last_error());
    assert_int_equal(st, PAM_OK);
    assert_non_null(t);
    return t;
}

/* Random rows rounded to f16 so f16 tiers store them exactly. */
static void rand_rows(pam_test_rng *r, float *x, int n_tok) {
    for (int i = 0; i < n_tok * ROW; i++) x[i] = pam_f16_to_f32(pam_f32_to_f16((float)pam_test_rng_normal(r)));
}

/* ---- float64 oracle ------------------------------------------------------- */

/* Partial attention (m, l, o unnormalised) of query head g over tokens
 * [t0, t0+n) of K/V rows (token-major, ROW floats per token). */
static void ref_partial(const float *q, const float *K, const float *V, int t0, int n, int g, double scale,
                        double *m, double *l, double *o) {
    int h = g / (N_HEAD / k_shape.n_head_kv);
    double s[1024];
    *m = -INFINITY;
    for (int t = 0; t < n; t++) {
        double acc = 0;
        for (int d = 0; d < HD; d++) acc += (double)q[g * HD + d] * K[(size_t)(t0 + t) * ROW + h * HD + d];
        s[t] = acc * scale;
        if (s[t] > *m) *m = s[t];
    }
    *l = 0;
    for (int d = 0; d < HD; d++) o[d] = 0;
    for (int t = 0; t < n; t++) {
        double p = exp(s[t] - *m);
        *l += p;
        for (int d = 0; d < HD; d++) o[d] += p * V[(size_t)(t0 + t) * ROW + h * HD + d];
    }
}

/* A context of n_blocks blocks, the last one holding last_n tokens. */
typedef struct ctx {
    pam_tier *t;
    int n_blocks;
    pam_tier_block blocks[64];
    float *K, *V; /* token-major, all tokens of all blocks in order */
    int n_tok;
} ctx;

static void ctx_fill(ctx *c, pam_tier *t, int n_blocks, int last_n, pam_test_rng *r) {
    c->t = t;
    c->n_blocks = n_blocks;
    c->n_tok = (n_blocks - 1) * BT + last_n;
    c->K = malloc(sizeof(float) * (size_t)c->n_tok * ROW);
    c->V = malloc(sizeof(float) * (size_t)c->n_tok * ROW);
    assert_true(c->K && c->V);
    rand_rows(r, c->K, c->n_tok);
    rand_rows(r, c->V, c->n_tok);
    for (int b = 0; b < n_blocks; b++) {
        int n = b == n_blocks - 1 ? last_n : BT;
        assert_int_equal(pam_tier_alloc(t, &c->blocks[b].slot), PAM_OK);
        c->blocks[b].n_tokens = n;
        /* Write in two pieces: partial writes must compose. */
        int first = n > 3 ? 3 : n;
        const float *k = c->K + (size_t)b * BT * ROW, *v = c->V + (size_t)b * BT * ROW;
        assert_int_equal(pam_tier_write(t, c->blocks[b].slot, 0, first, k, v), PAM_OK);
        if (n > first)
            assert_int_equal(pam_tier_write(t, c->blocks[b].slot, first, n - first, k + first * ROW, v + first * ROW),
                             PAM_OK);
    }
}

static void ctx_free(ctx *c) {
    for (int b = 0; b < c->n_blocks; b++) pam_tier_free(c->t, c->blocks[b].slot);
    free(c->K);
    free(c->V);
}

typedef struct attn_out {
    float m[N_HEAD], l[N_HEAD], o[N_HEAD * HD];
    float blk_m[64 * N_HEAD], blk_l[64 * N_HEAD];
} attn_out;

static pam_status run_attend(pam_tier *t, const float *q, const pam_tier_block *blocks, int n, attn_out *a) {
    pam_tier_attn req = {.q = q, .n_head = N_HEAD, .scale = 1.0f / 8.0f, .blocks = blocks, .n_blocks = n,
                         .m = a->m, .l = a->l, .o = a->o, .blk_m = a->blk_m, .blk_l = a->blk_l};
    return pam_tier_attend(t, &req);
}

/* Max relative error of the normalised output and of l, and of blk_m/blk_l,
 * against the oracle over K/V (which may be the original data or what the
 * tier decodes). */
static void check_attn(const ctx *c, const float *q, const float *K, const float *V, const attn_out *a,
                       double *out_err, double *blk_err) {
    double o_ref[N_HEAD * HD], o_all[HD];
    float o_norm[N_HEAD * HD];
    double be = 0;
    for (int g = 0; g < N_HEAD; g++) {
        double m, l;
        ref_partial(q, K, V, 0, c->n_tok, g, 1.0 / 8.0, &m, &l, o_all);
        for (int d = 0; d < HD; d++) {
            o_ref[g * HD + d] = o_all[d] / l;
            o_norm[g * HD + d] = a->o[g * HD + d] / a->l[g];
        }
        /* m, l are defined up to the shared max: compare l * e^m. */
        be = fmax(be, fabs((double)a->l[g] * exp((double)a->m[g] - m) - l) / l);
        for (int b = 0; b < c->n_blocks; b++) {
            double bm, bl, bo[HD];
            ref_partial(q, K, V, b * BT, c->blocks[b].n_tokens, g, 1.0 / 8.0, &bm, &bl, bo);
            be = fmax(be, fabs(a->blk_m[b * N_HEAD + g] - bm) / fmax(1.0, fabs(bm)));
            be = fmax(be, fabs(a->blk_l[b * N_HEAD + g] - bl) / bl);
        }
    }
    *out_err = ref_rel_err(o_norm, o_ref, N_HEAD * HD);
    *blk_err = be;
}

/* ---- conformance ---------------------------------------------------------- */

static void test_alloc_until_full(void **state) {
    const tier_kind *k = *state;
    pam_tier *t = open_kind(k, 256 << 10);
    uint64_t cap = t->capacity_blocks;
    assert_true(cap >= 4 && cap <= (256u << 10) / 1024);
    assert_true(t->block_bytes * cap <= 256u << 10);
    uint32_t *slots = malloc(sizeof(uint32_t) * (cap + 1));
    uint8_t *seen = calloc(cap, 1);
    for (uint64_t i = 0; i < cap; i++) {
        assert_int_equal(pam_tier_alloc(t, &slots[i]), PAM_OK);
        assert_true(slots[i] < cap);
        assert_false(seen[slots[i]]);
        seen[slots[i]] = 1;
    }
    assert_int_equal(pam_tier_alloc(t, &slots[cap]), PAM_ERR_FULL);
    assert_true(strstr(pam_last_error(), "full") != NULL);
    pam_tier_stats s;
    pam_tier_stats_get(t, &s);
    assert_int_equal(s.blocks_used, cap);
    assert_int_equal(s.blocks_capacity, cap);
    pam_tier_free(t, slots[1]);
    assert_int_equal(pam_tier_alloc(t, &slots[cap]), PAM_OK);
    assert_int_equal(slots[cap], slots[1]);
    for (uint64_t i = 0; i < cap; i++) pam_tier_free(t, slots[i]);
    pam_tier_stats_get(t, &s);
    assert_int_equal(s.blocks_used, 0);
    free(slots);
    free(seen);
    pam_tier_close(t);
}

static void test_write_read(void **state) {
    const tier_kind *k = *state;
    pam_tier *t = open_kind(k, 1 << 20);
    pam_test_rng r = {42};
    float K[BT * ROW], V[BT * ROW], k2[BT * ROW], v2[BT * ROW];
    rand_rows(&r, K, BT);
    rand_rows(&r, V, BT);
    uint32_t slot;
    assert_int_equal(pam_tier_alloc(t, &slot), PAM_OK);
    /* Tokens 0..9 in pieces: a block that is not full reads back exactly
     * everywhere (dramq, and dram and ssd in a lossy KV type, keep it in f16
     * until it fills; the test data is f16-rounded). */
    assert_int_equal(pam_tier_write(t, slot, 0, 4, K, V), PAM_OK);
    assert_int_equal(pam_tier_write(t, slot, 4, 6, K + 4 * ROW, V + 4 * ROW), PAM_OK);
    assert_int_equal(pam_tier_read(t, slot, 10, k2, v2), PAM_OK);
    assert_memory_equal(k2, K, sizeof(float) * 10 * ROW);
    assert_memory_equal(v2, V, sizeof(float) * 10 * ROW);
    /* Overwrite one token: the others are untouched. */
    float kx[ROW], vx[ROW];
    rand_rows(&r, kx, 1);
    rand_rows(&r, vx, 1);
    memcpy(K + 3 * ROW, kx, sizeof kx);
    memcpy(V + 3 * ROW, vx, sizeof vx);
    assert_int_equal(pam_tier_write(t, slot, 3, 1, kx, vx), PAM_OK);
    assert_int_equal(pam_tier_read(t, slot, 10, k2, v2), PAM_OK);
    assert_memory_equal(k2, K, sizeof(float) * 10 * ROW);
    assert_memory_equal(v2, V, sizeof(float) * 10 * ROW);
    /* Fill the block. */
    assert_int_equal(pam_tier_write(t, slot, 10, 6, K + 10 * ROW, V + 10 * ROW), PAM_OK);
    assert_int_equal(pam_tier_read(t, slot, BT, k2, v2), PAM_OK);
    double max_err = 0, max_abs = 0;
    for (int i = 0; i < BT * ROW; i++) {
        max_err = fmax(max_err, fmax(fabs(k2[i] - K[i]), fabs(v2[i] - V[i])));
        max_abs = fmax(max_abs, fmax(fabs(K[i]), fabs(V[i])));
    }
    if (k->bits == 16) {
        assert_true(max_err == 0.0);
    } else {
        /* Half a quantisation step of the widest range, plus f16 rounding of
         * the (min, scale) pair. */
        double bound = 0.5 * 2 * max_abs / ((1 << k->bits) - 1) * 1.05 + 2e-3 * max_abs;
        printf("  %s: block round trip max abs error %.4g (bound %.4g)\n", k->label, max_err, bound);
        assert_true(max_err <= bound);
        assert_true(max_err > 0.0); /* it really is quantised */
    }
    /* Invalid writes are refused and change nothing. */
    assert_int_equal(pam_tier_write(t, slot, 15, 2, K, V), PAM_ERR_INVALID);
    assert_int_equal(pam_tier_write(t, slot, -1, 1, K, V), PAM_ERR_INVALID);
    float k3[BT * ROW], v3[BT * ROW];
    assert_int_equal(pam_tier_read(t, slot, BT, k3, v3), PAM_OK);
    assert_memory_equal(k3, k2, sizeof k3);
    assert_memory_equal(v3, v2, sizeof v3);
    pam_tier_stats s;
    pam_tier_stats_get(t, &s);
    assert_true(s.bytes_written > 0);
    assert_true(s.bytes_read > 0);
    assert_int_equal(s.n_errors, 0);
    pam_tier_free(t, slot);
    pam_tier_close(t);
}

static void test_attend(void **state) {
    const tier_kind *k = *state;
    pam_tier *t = open_kind(k, 2 << 20);
    pam_test_rng r = {7};
    ctx c;
    ctx_fill(&c, t, 7, 9, &r);
    float q[N_HEAD * HD];
    for (int i = 0; i < N_HEAD * HD; i++) q[i] = (float)pam_test_rng_normal(&r);
    pam_tier_stats s0, s1;
    pam_tier_stats_get(t, &s0);
    attn_out a;
    assert_int_equal(run_attend(t, q, c.blocks, c.n_blocks, &a), PAM_OK);
    pam_tier_stats_get(t, &s1);
    assert_true(s1.bytes_read - s0.bytes_read >= (uint64_t)(c.n_blocks - 1) * t->block_bytes);
    assert_true(s1.attend_ns >= s0.attend_ns);

    double err, blk_err;
    check_attn(&c, q, c.K, c.V, &a, &err, &blk_err);
    if (k->bits == 16) {
        assert_true(err <= 1e-4);
        assert_true(blk_err <= 1e-4);
    } else {
        /* Against the tier's own decoded data the kernels must agree to
         * f32 rounding: attention computes over exactly what read returns. */
        float *Kd = malloc(sizeof(float) * (size_t)c.n_tok * ROW), *Vd = malloc(sizeof(float) * (size_t)c.n_tok * ROW);
        for (int b = 0; b < c.n_blocks; b++)
            assert_int_equal(pam_tier_read(t, c.blocks[b].slot, c.blocks[b].n_tokens, Kd + (size_t)b * BT * ROW,
                                           Vd + (size_t)b * BT * ROW),
                             PAM_OK);
        double derr, dblk;
        check_attn(&c, q, Kd, Vd, &a, &derr, &dblk);
        const double dtol = k->dec_tol > 0 ? k->dec_tol : 1e-4;
        printf("  %s: attention rel error %.4g vs f16 data (bound %.3g), %.3g (by-products %.3g) vs its decoded data "
               "(bound %.3g)\n",
               k->label, err, k->attn_tol, derr, dblk, dtol);
        assert_true(derr <= dtol);
        assert_true(dblk <= dtol);
        assert_true(err <= k->attn_tol);
        /* The same at every ISA level the CPU has: each kernel computes over
         * the codes, the decoded values are the common reference. */
        for (int isa = 0; isa <= (int)pam_cpu_detect(); isa++) {
            assert_int_equal(pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)isa)), PAM_OK);
            attn_out ai;
            assert_int_equal(run_attend(t, q, c.blocks, c.n_blocks, &ai), PAM_OK);
            check_attn(&c, q, Kd, Vd, &ai, &derr, &dblk);
            if (!(derr <= dtol && dblk <= dtol))
                fail_msg("%s at %s: %.3g, blocks %.3g vs its decoded data", k->label, pam_cpu_isa(), derr, dblk);
        }
        restore_isa();
        free(Kd);
        free(Vd);
    }
    /* blk_m/blk_l are optional: without them the result is the same. */
    attn_out b2;
    pam_tier_attn req = {.q = q, .n_head = N_HEAD, .scale = 1.0f / 8.0f, .blocks = c.blocks,
                         .n_blocks = c.n_blocks, .m = b2.m, .l = b2.l, .o = b2.o};
    assert_int_equal(pam_tier_attend(t, &req), PAM_OK);
    assert_memory_equal(b2.o, a.o, sizeof a.o);
    assert_memory_equal(b2.l, a.l, sizeof a.l);
    /* A block list split in two and merged gives the whole (the tier folds
     * in list order, so this is what the KV manager relies on). */
    attn_out h1, h2;
    assert_int_equal(run_attend(t, q, c.blocks, 3, &h1), PAM_OK);
    assert_int_equal(run_attend(t, q, c.blocks + 3, c.n_blocks - 3, &h2), PAM_OK);
    for (int g = 0; g < N_HEAD; g++) {
        double mx = fmax(h1.m[g], h2.m[g]);
        double l = h1.l[g] * exp(h1.m[g] - mx) + h2.l[g] * exp(h2.m[g] - mx);
        for (int d = 0; d < HD; d++) {
            double o = (h1.o[g * HD + d] * exp(h1.m[g] - mx) + h2.o[g * HD + d] * exp(h2.m[g] - mx)) / l;
            assert_true(fabs(o - a.o[g * HD + d] / a.l[g]) <= 1e-4);
        }
    }
    /* Empty list: the identity of the merge. */
    attn_out e;
    assert_int_equal(run_attend(t, q, c.blocks, 0, &e), PAM_OK);
    for (int g = 0; g < N_HEAD; g++) {
        assert_true(isinf(e.m[g]) && e.m[g] < 0);
        assert_true(e.l[g] == 0.0f);
    }
    ctx_free(&c);
    pam_tier_close(t);
}

/* Concurrent attend from several threads on disjoint block lists gives the
 * single-thread results (run under TSan in CI). */
typedef struct conc_job {
    pam_tier *t;
    const float *q;
    const pam_tier_block *blocks;
    int n;
    attn_out out;
    pam_status st;
} conc_job;

static void *conc_main(void *arg) {
    conc_job *j = arg;
    for (int rep = 0; rep < 4 && j->st == PAM_OK; rep++) j->st = run_attend(j->t, j->q, j->blocks, j->n, &j->out);
    return NULL;
}

static void test_concurrent_attend(void **state) {
    const tier_kind *k = *state;
    pam_tier *t = open_kind(k, 4 << 20);
    pam_test_rng r = {99};
    ctx c;
    ctx_fill(&c, t, 40, BT, &r);
    float q[N_HEAD * HD];
    for (int i = 0; i < N_HEAD * HD; i++) q[i] = (float)pam_test_rng_normal(&r);
    enum { NT = 4 };
    conc_job jobs[NT];
    attn_out want[NT];
    for (int i = 0; i < NT; i++) {
        jobs[i] = (conc_job){.t = t, .q = q, .blocks = c.blocks + i * 10, .n = 10, .st = PAM_OK};
        assert_int_equal(run_attend(t, q, jobs[i].blocks, 10, &want[i]), PAM_OK);
    }
    pthread_t th[NT];
    for (int i = 0; i < NT; i++) assert_int_equal(pthread_create(&th[i], NULL, conc_main, &jobs[i]), 0);
    for (int i = 0; i < NT; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < NT; i++) {
        assert_int_equal(jobs[i].st, PAM_OK);
        assert_memory_equal(jobs[i].out.o, want[i].o, sizeof want[i].o);
        assert_memory_equal(jobs[i].out.l, want[i].l, sizeof want[i].l);
        assert_memory_equal(jobs[i].out.blk_l, want[i].blk_l, sizeof(float) * 10 * N_HEAD);
    }
    ctx_free(&c);
    pam_tier_close(t);
}

/* dramq with other shapes: odd block sizes (int4 channel rows padded to a
 * byte, parameters realigned), head sizes that take the reference, AVX2-only
 * and AVX-512 paths, and MHA to GQA 8:1. Full blocks (quantised), attended
 * over all and over fewer tokens than they hold, at every ISA level against
 * float64 attention over what read decodes. */
static void test_dramq_shapes(void **state) {
    (void)state;
    const struct {
        int bt, hd, heads, n_q;
    } shapes[] = {{5, 6, 3, 3}, {7, 64, 1, 8}, {4, 128, 2, 8}, {8, 40, 2, 2}, {16, 96, 1, 1}};
    pam_test_rng r = {31};
    for (int bits = 4; bits <= 8; bits += 4)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            const int bt = shapes[si].bt, hd = shapes[si].hd, H = shapes[si].heads, nq = shapes[si].n_q;
            const size_t row = (size_t)H * hd;
            pam_kv_shape sh = {.n_layer = 1, .n_head_kv = H, .head_dim = hd, .block_tokens = bt};
            pam_tier *t;
            assert_int_equal(pam_tier_dramq_open(&sh, bits, 1 << 20, &t), PAM_OK);
            enum { NB = 3 };
            float *K = malloc(sizeof(float) * NB * bt * row), *V = malloc(sizeof(float) * NB * bt * row);
            float *Kd = malloc(sizeof(float) * NB * bt * row), *Vd = malloc(sizeof(float) * NB * bt * row);
            float *q = malloc(sizeof(float) * (size_t)nq * row), *o = malloc(sizeof(float) * (size_t)nq * row);
            float m[64], l[64];
            assert_true(K && V && Kd && Vd && q && o);
            for (size_t i = 0; i < NB * bt * row; i++) {
                K[i] = (float)pam_test_rng_normal(&r);
                V[i] = (float)pam_test_rng_normal(&r);
            }
            for (size_t i = 0; i < (size_t)nq * row; i++) q[i] = (float)pam_test_rng_normal(&r);
            pam_tier_block blocks[NB];
            for (int b = 0; b < NB; b++) {
                assert_int_equal(pam_tier_alloc(t, &blocks[b].slot), PAM_OK);
                assert_int_equal(pam_tier_write(t, blocks[b].slot, 0, bt, K + (size_t)b * bt * row, V + (size_t)b * bt * row),
                                 PAM_OK);
                assert_int_equal(pam_tier_read(t, blocks[b].slot, bt, Kd + (size_t)b * bt * row, Vd + (size_t)b * bt * row),
                                 PAM_OK);
                blocks[b].n_tokens = b == 1 ? bt - 1 - (bt > 4) : bt; /* fewer tokens than the block holds */
            }
            for (int isa = 0; isa <= (int)pam_cpu_detect(); isa++) {
                assert_int_equal(pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)isa)), PAM_OK);
                const int n_head = nq * H;
                pam_tier_attn req = {.q = q, .n_head = n_head, .scale = 0.3f, .blocks = blocks, .n_blocks = NB,
                                     .m = m, .l = l, .o = o};
                assert_int_equal(pam_tier_attend(t, &req), PAM_OK);
                for (int g = 0; g < n_head; g++) {
                    const int h = g / nq;
                    double s[NB * 16], mx = -INFINITY, sum = 0, num = 0, den = 0;
                    int n = 0;
                    for (int b = 0; b < NB; b++)
                        for (int j = 0; j < blocks[b].n_tokens; j++, n++) {
                            const float *kr = Kd + ((size_t)b * bt + (size_t)j) * row + (size_t)h * hd;
                            double acc = 0;
                            for (int d = 0; d < hd; d++) acc += (double)q[(size_t)g * hd + d] * kr[d];
                            s[n] = 0.3 * acc;
                            mx = fmax(mx, s[n]);
                        }
                    for (int d = 0; d < hd; d++) {
                        double od = 0;
                        n = 0;
                        sum = 0;
                        for (int b = 0; b < NB; b++)
                            for (int j = 0; j < blocks[b].n_tokens; j++, n++) {
                                double p = exp(s[n] - mx);
                                sum += p;
                                od += p * Vd[((size_t)b * bt + (size_t)j) * row + (size_t)h * hd + (size_t)d];
                            }
                        num = fmax(num, fabs(o[(size_t)g * hd + d] / l[g] - od / sum));
                        den = fmax(den, fabs(od / sum));
                    }
                    if (!(num <= 1e-5 * den + 1e-6))
                        fail_msg("int%d block %d head_dim %d n_q %d at %s: head %d error %.3g of %.3g", bits, bt, hd,
                                 nq, pam_cpu_isa(), g, num, den);
                }
            }
            restore_isa();
            for (int b = 0; b < NB; b++) pam_tier_free(t, blocks[b].slot);
            pam_tier_close(t);
            free(K);
            free(V);
            free(Kd);
            free(Vd);
            free(q);
            free(o);
        }
}

/* ---- ssd faults ----------------------------------------------------------- */

static pam_tier *ssd_open_flags(unsigned flags, uint64_t cap) {
    pam_tier *t = NULL;
    pam_status st = pam_tier_ssd_open_ex(&k_shape, ssd_dir(), cap, flags, &t);
    if (st != PAM_OK) fprintf(stderr, "%s\n", pam_last_error());
    assert_int_equal(st, PAM_OK);
    return t;
}

static const unsigned k_ssd_flags[] = {0, PAM_SSD_BUFFERED, PAM_SSD_NO_URING};

static void test_ssd_eio_read(void **state) {
    (void)state;
    for (int f = 0; f < 3; f++) {
        pam_tier *t = ssd_open_flags(k_ssd_flags[f], 2 << 20);
        pam_test_rng r = {5};
        ctx c;
        ctx_fill(&c, t, 20, 5, &r); /* more than two read batches */
        float q[N_HEAD * HD];
        for (int i = 0; i < N_HEAD * HD; i++) q[i] = (float)pam_test_rng_normal(&r);
        attn_out good, a;
        assert_int_equal(run_attend(t, q, c.blocks, c.n_blocks, &good), PAM_OK);
        /* Fail each of the first reads in turn, in the first, second and third batch. */
        for (uint64_t nth = 0; nth < (uint64_t)c.n_blocks; nth += 3) {
            assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_EIO_READ, nth, 0), PAM_OK);
            pam_status st = run_attend(t, q, c.blocks, c.n_blocks, &a);
            if (st != PAM_ERR_IO) fprintf(stderr, "flags %u, read %llu: %d\n", k_ssd_flags[f], (unsigned long long)nth, st);
            assert_int_equal(st, PAM_ERR_IO);
            assert_non_null(strstr(pam_last_error(), "Input/output error"));
            /* Transient: the next attend succeeds with the same result. */
            assert_int_equal(run_attend(t, q, c.blocks, c.n_blocks, &a), PAM_OK);
            assert_memory_equal(a.o, good.o, sizeof a.o);
        }
        float k2[BT * ROW], v2[BT * ROW];
        assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_EIO_READ, 0, 1), PAM_OK);
        assert_int_equal(pam_tier_read(t, c.blocks[0].slot, BT, k2, v2), PAM_ERR_IO);
        assert_int_equal(run_attend(t, q, c.blocks, c.n_blocks, &a), PAM_ERR_IO);
        assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_NONE, 0, 0), PAM_OK);
        pam_tier_stats s;
        pam_tier_stats_get(t, &s);
        assert_true(s.n_errors >= 3);
        ctx_free(&c);
        pam_tier_close(t);
    }
}

static void test_ssd_short_reads(void **state) {
    (void)state;
    for (int f = 0; f < 3; f++) {
        pam_tier *t = ssd_open_flags(k_ssd_flags[f], 2 << 20);
        pam_test_rng r = {6};
        ctx c;
        ctx_fill(&c, t, 19, 11, &r);
        float q[N_HEAD * HD];
        for (int i = 0; i < N_HEAD * HD; i++) q[i] = (float)pam_test_rng_normal(&r);
        attn_out good, a;
        assert_int_equal(run_attend(t, q, c.blocks, c.n_blocks, &good), PAM_OK);
        /* Every read comes back short: the rest is asked for again. */
        assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_SHORT_READ, 0, 1), PAM_OK);
        assert_int_equal(run_attend(t, q, c.blocks, c.n_blocks, &a), PAM_OK);
        assert_memory_equal(a.o, good.o, sizeof a.o);
        assert_memory_equal(a.blk_m, good.blk_m, sizeof(float) * (size_t)c.n_blocks * N_HEAD);
        float k2[BT * ROW], v2[BT * ROW];
        assert_int_equal(pam_tier_read(t, c.blocks[2].slot, BT, k2, v2), PAM_OK);
        assert_memory_equal(k2, c.K + 2 * BT * ROW, sizeof k2);
        /* A partial write reads the slot first: also through short reads. */
        assert_int_equal(pam_tier_write(t, c.blocks[4].slot, 5, 1, c.K, c.V), PAM_OK);
        assert_int_equal(pam_tier_read(t, c.blocks[4].slot, BT, k2, v2), PAM_OK);
        assert_memory_equal(k2 + 5 * ROW, c.K, sizeof(float) * ROW);
        assert_memory_equal(k2, c.K + 4 * BT * ROW, sizeof(float) * 5 * ROW);
        assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_NONE, 0, 0), PAM_OK);
        ctx_free(&c);
        pam_tier_close(t);
    }
}

static void test_ssd_eio_write_keeps_old(void **state) {
    (void)state;
    pam_tier *t = ssd_open_flags(0, 1 << 20);
    pam_test_rng r = {8};
    float K[BT * ROW], V[BT * ROW], K2[BT * ROW], V2[BT * ROW], k[BT * ROW], v[BT * ROW];
    rand_rows(&r, K, BT);
    rand_rows(&r, V, BT);
    rand_rows(&r, K2, BT);
    rand_rows(&r, V2, BT);
    uint32_t slot;
    assert_int_equal(pam_tier_alloc(t, &slot), PAM_OK);
    assert_int_equal(pam_tier_write(t, slot, 0, BT, K, V), PAM_OK);
    /* Whole-block and partial rewrites both fail cleanly. */
    assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_EIO_WRITE, 0, 1), PAM_OK);
    assert_int_equal(pam_tier_write(t, slot, 0, BT, K2, V2), PAM_ERR_IO);
    assert_non_null(strstr(pam_last_error(), "Input/output error"));
    assert_int_equal(pam_tier_write(t, slot, 2, 3, K2, V2), PAM_ERR_IO);
    assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_NONE, 0, 0), PAM_OK);
    assert_int_equal(pam_tier_read(t, slot, BT, k, v), PAM_OK);
    assert_memory_equal(k, K, sizeof k);
    assert_memory_equal(v, V, sizeof v);
    /* A fresh slot whose first write failed holds nothing. */
    uint32_t s2;
    assert_int_equal(pam_tier_alloc(t, &s2), PAM_OK);
    assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_EIO_WRITE, 0, 0), PAM_OK);
    assert_int_equal(pam_tier_write(t, s2, 0, BT, K2, V2), PAM_ERR_IO);
    assert_int_equal(pam_tier_read(t, s2, 1, k, v), PAM_ERR_INVALID);
    assert_int_equal(pam_tier_write(t, s2, 0, BT, K2, V2), PAM_OK);
    assert_int_equal(pam_tier_read(t, s2, BT, k, v), PAM_OK);
    assert_memory_equal(k, K2, sizeof k);
    /* A recent-window block whose filling write fails keeps its tokens. */
    uint32_t s3;
    assert_int_equal(pam_tier_alloc(t, &s3), PAM_OK);
    assert_int_equal(pam_tier_write(t, s3, 0, BT - 1, K, V), PAM_OK);
    assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_EIO_WRITE, 0, 0), PAM_OK);
    assert_int_equal(pam_tier_write(t, s3, BT - 1, 1, K2, V2), PAM_ERR_IO);
    assert_int_equal(pam_tier_read(t, s3, BT - 1, k, v), PAM_OK);
    assert_memory_equal(k, K, sizeof(float) * (BT - 1) * ROW);
    assert_int_equal(pam_tier_read(t, s3, BT, k, v), PAM_ERR_INVALID);
    assert_int_equal(pam_tier_write(t, s3, BT - 1, 1, K2, V2), PAM_OK);
    assert_int_equal(pam_tier_read(t, s3, BT, k, v), PAM_OK);
    assert_memory_equal(k, K, sizeof(float) * (BT - 1) * ROW);
    assert_memory_equal(k + (BT - 1) * ROW, K2, sizeof(float) * ROW);
    pam_tier_free(t, slot);
    pam_tier_free(t, s2);
    pam_tier_free(t, s3);
    pam_tier_close(t);
}

static void flip_byte(pam_tier *t, uint32_t slot, uint64_t at) {
    char path[128];
    uint64_t off;
    assert_int_equal(pam_tier_ssd_locate(t, slot, path, sizeof path, &off), PAM_OK);
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    unsigned char b;
    assert_int_equal(pread(fd, &b, 1, (off_t)(off + at)), 1);
    b ^= 0x10;
    assert_int_equal(pwrite(fd, &b, 1, (off_t)(off + at)), 1);
    assert_int_equal(fsync(fd), 0);
    close(fd);
}

/* A block that is not full lives in memory (the recent window): appending
 * tokens reads and writes nothing on disk, attention over it reads nothing,
 * and the write that fills it puts it on disk, where it is read and verified
 * like any other. Results equal a dram tier's at every stage. */
static void test_ssd_recent_window(void **state) {
    (void)state;
    for (int f = 0; f < 3; f++) {
        pam_tier *t = ssd_open_flags(k_ssd_flags[f], 2 << 20), *d = NULL;
        assert_int_equal(pam_tier_dram_open(&k_shape, 1 << 20, &d), PAM_OK);
        pam_test_rng r = {21};
        float K[3 * BT * ROW], V[3 * BT * ROW], k[BT * ROW], v[BT * ROW], q[N_HEAD * HD];
        rand_rows(&r, K, 3 * BT);
        rand_rows(&r, V, 3 * BT);
        for (int i = 0; i < N_HEAD * HD; i++) q[i] = (float)pam_test_rng_normal(&r);
        pam_tier_block bs[3], bd[3];
        for (int b = 0; b < 2; b++) { /* two full blocks on disk */
            assert_int_equal(pam_tier_alloc(t, &bs[b].slot), PAM_OK);
            assert_int_equal(pam_tier_alloc(d, &bd[b].slot), PAM_OK);
            assert_int_equal(pam_tier_write(t, bs[b].slot, 0, BT, K + b * BT * ROW, V + b * BT * ROW), PAM_OK);
            assert_int_equal(pam_tier_write(d, bd[b].slot, 0, BT, K + b * BT * ROW, V + b * BT * ROW), PAM_OK);
            bs[b].n_tokens = bd[b].n_tokens = BT;
        }
        assert_int_equal(pam_tier_alloc(t, &bs[2].slot), PAM_OK);
        assert_int_equal(pam_tier_alloc(d, &bd[2].slot), PAM_OK);
        pam_tier_stats s0, s1;
        uint64_t n0, n1;
        for (int tok = 0; tok < BT; tok++) { /* the tail grows a token at a time */
            const float *kr = K + (2 * BT + tok) * ROW, *vr = V + (2 * BT + tok) * ROW;
            pam_tier_stats_get(t, &s0);
            assert_int_equal(pam_tier_ssd_reads(t, &n0), PAM_OK);
            assert_int_equal(pam_tier_write(t, bs[2].slot, tok, 1, kr, vr), PAM_OK);
            assert_int_equal(pam_tier_write(d, bd[2].slot, tok, 1, kr, vr), PAM_OK);
            bs[2].n_tokens = bd[2].n_tokens = tok + 1;
            attn_out a, b;
            assert_int_equal(run_attend(t, q, bs + 2, 1, &a), PAM_OK); /* the tail alone: no read */
            pam_tier_stats_get(t, &s1);
            assert_int_equal(pam_tier_ssd_reads(t, &n1), PAM_OK);
            char path[256];
            uint64_t off;
            if (tok < BT - 1) {
                assert_int_equal(n1, n0);
                assert_int_equal(s1.bytes_written, s0.bytes_written);
                assert_int_equal(s1.bytes_read, s0.bytes_read);
                assert_int_equal(pam_tier_ssd_locate(t, bs[2].slot, path, sizeof path, &off), PAM_ERR_INVALID);
            } else { /* full: written once, then read from disk */
                assert_int_equal(s1.bytes_written, s0.bytes_written + t->block_bytes);
                assert_int_equal(pam_tier_ssd_locate(t, bs[2].slot, path, sizeof path, &off), PAM_OK);
            }
            assert_int_equal(run_attend(t, q, bs, 3, &a), PAM_OK);
            assert_int_equal(run_attend(d, q, bd, 3, &b), PAM_OK);
            assert_memory_equal(a.m, b.m, sizeof a.m);
            assert_memory_equal(a.l, b.l, sizeof a.l);
            assert_memory_equal(a.o, b.o, sizeof a.o);
            assert_memory_equal(a.blk_l, b.blk_l, sizeof(float) * 3 * N_HEAD);
            assert_int_equal(pam_tier_read(t, bs[2].slot, tok + 1, k, v), PAM_OK);
            assert_memory_equal(k, K + 2 * BT * ROW, sizeof(float) * (size_t)(tok + 1) * ROW);
        }
        /* On disk now: corruption there is caught. */
        flip_byte(t, bs[2].slot, 5);
        attn_out a;
        assert_int_equal(run_attend(t, q, bs, 3, &a), PAM_ERR_CORRUPT);
        for (int b = 0; b < 3; b++) {
            pam_tier_free(t, bs[b].slot);
            pam_tier_free(d, bd[b].slot);
        }
        pam_tier_close(d);
        pam_tier_close(t);
    }
}

static void test_ssd_enospc_hook(void **state) {
    (void)state;
    pam_tier *t = ssd_open_flags(0, 64 << 20);
    uint32_t slot, first;
    assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_ENOSPC, 0, 1), PAM_OK);
    assert_int_equal(pam_tier_alloc(t, &slot), PAM_ERR_FULL);
    assert_non_null(strstr(pam_last_error(), "No space left on device"));
    assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_NONE, 0, 0), PAM_OK);
    assert_int_equal(pam_tier_alloc(t, &first), PAM_OK);
    float K[BT * ROW], V[BT * ROW], k[BT * ROW], v[BT * ROW];
    pam_test_rng r = {9};
    rand_rows(&r, K, BT);
    rand_rows(&r, V, BT);
    assert_int_equal(pam_tier_write(t, first, 0, BT, K, V), PAM_OK);
    /* Allocate until the file must grow again, with the disk "full". */
    assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_ENOSPC, 0, 1), PAM_OK);
    int n = 0;
    pam_status st;
    uint32_t got[4096];
    while ((st = pam_tier_alloc(t, &got[n])) == PAM_OK) n++;
    assert_int_equal(st, PAM_ERR_FULL);
    assert_true(n > 0 && (uint64_t)n + 1 < t->capacity_blocks);
    /* What is there stays readable. */
    assert_int_equal(pam_tier_read(t, first, BT, k, v), PAM_OK);
    assert_memory_equal(k, K, sizeof k);
    assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_NONE, 0, 0), PAM_OK);
    assert_int_equal(pam_tier_alloc(t, &got[n]), PAM_OK);
    pam_tier_close(t);
}

/* A real limit: RLIMIT_FSIZE in a child process (fallocate past it fails
 * with EFBIG; SIGXFSZ is ignored so the error comes back as a value). */
static void test_ssd_file_size_limit(void **state) {
    (void)state;
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {1 << 20, 1 << 20};
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0) _exit(10);
        pam_tier *t = NULL;
        if (pam_tier_ssd_open(&k_shape, ssd_dir(), 64 << 20, &t) != PAM_OK) _exit(11);
        uint64_t per = t->block_bytes;
        int n = 0;
        uint32_t slot;
        pam_status st;
        while ((st = pam_tier_alloc(t, &slot)) == PAM_OK) n++;
        int code = 0;
        if (st != PAM_ERR_FULL) code = 12;
        else if (!strstr(pam_last_error(), "File too large")) code = 13;
        /* Every block the file could hold, less the spare. */
        else if ((uint64_t)n + 1 != (1u << 20) / per) code = 14;
        if (code) fprintf(stderr, "child: n=%d per=%llu: %s\n", n, (unsigned long long)per, pam_last_error());
        pam_tier_close(t);
        _exit(code);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}


static void test_ssd_corrupt(void **state) {
    (void)state;
    for (int f = 0; f < 3; f++) {
        pam_tier *t = ssd_open_flags(k_ssd_flags[f], 2 << 20);
        pam_test_rng r = {10};
        ctx c;
        ctx_fill(&c, t, 12, BT, &r);
        float q[N_HEAD * HD], k[BT * ROW], v[BT * ROW];
        for (int i = 0; i < N_HEAD * HD; i++) q[i] = (float)pam_test_rng_normal(&r);
        attn_out good, a;
        assert_int_equal(run_attend(t, q, c.blocks, c.n_blocks, &good), PAM_OK);
        /* A flipped byte in the payload of block 9, on disk. The blocks were
         * written one after another, so they are adjacent on disk and read
         * together: block 9 fails alone, naming its slot. */
        char want[64];
        snprintf(want, sizeof want, "slot %u ", c.blocks[9].slot);
        flip_byte(t, c.blocks[9].slot, 1000);
        assert_int_equal(run_attend(t, q, c.blocks, c.n_blocks, &a), PAM_ERR_CORRUPT);
        assert_non_null(strstr(pam_last_error(), "checksum"));
        assert_non_null(strstr(pam_last_error(), want));
        assert_int_equal(pam_tier_read(t, c.blocks[9].slot, BT, k, v), PAM_ERR_CORRUPT);
        /* The other blocks are fine. */
        assert_int_equal(run_attend(t, q, c.blocks, 9, &a), PAM_OK);
        assert_int_equal(run_attend(t, q, c.blocks + 10, 2, &a), PAM_OK);
        assert_int_equal(pam_tier_read(t, c.blocks[10].slot, BT, k, v), PAM_OK);
        assert_memory_equal(k, c.K + 10 * BT * ROW, sizeof k);
        /* The first and the last byte of a payload (K of head 0, V of the
         * last head): the checksum covers all of it. */
        flip_byte(t, c.blocks[3].slot, 0);
        assert_int_equal(pam_tier_read(t, c.blocks[3].slot, BT, k, v), PAM_ERR_CORRUPT);
        flip_byte(t, c.blocks[2].slot, t->block_bytes - 1);
        assert_int_equal(pam_tier_read(t, c.blocks[2].slot, BT, k, v), PAM_ERR_CORRUPT);
        assert_int_equal(pam_tier_write(t, c.blocks[2].slot, 0, BT, c.K + 2 * BT * ROW, c.V + 2 * BT * ROW), PAM_OK);
        /* Corruption in transit (the hook flips a byte after the read). */
        assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_CORRUPT, 1, 0), PAM_OK);
        assert_int_equal(run_attend(t, q, c.blocks + 4, 5, &a), PAM_ERR_CORRUPT);
        assert_int_equal(run_attend(t, q, c.blocks + 4, 5, &a), PAM_OK);
        /* Rewriting a corrupt block whole replaces it. */
        assert_int_equal(pam_tier_write(t, c.blocks[9].slot, 0, BT, c.K + 9 * BT * ROW, c.V + 9 * BT * ROW), PAM_OK);
        assert_int_equal(pam_tier_write(t, c.blocks[3].slot, 0, BT, c.K + 3 * BT * ROW, c.V + 3 * BT * ROW), PAM_OK);
        assert_int_equal(run_attend(t, q, c.blocks, c.n_blocks, &a), PAM_OK);
        assert_memory_equal(a.o, good.o, sizeof a.o);
        pam_tier_stats s;
        pam_tier_stats_get(t, &s);
        assert_true(s.n_errors >= 4);
        ctx_free(&c);
        pam_tier_close(t);
    }
}

/* The disk hands back an older copy of a block (a lost write) or another
 * block's bytes: the checksums kept in memory catch both. */
static void copy_bytes(const char *path, uint64_t from, uint64_t to, size_t n) {
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    unsigned char *b = malloc(n);
    assert_non_null(b);
    assert_int_equal(pread(fd, b, n, (off_t)from), (ssize_t)n);
    assert_int_equal(pwrite(fd, b, n, (off_t)to), (ssize_t)n);
    assert_int_equal(fsync(fd), 0);
    close(fd);
    free(b);
}

static void test_ssd_stale_copy(void **state) {
    (void)state;
    for (int f = 0; f < 3; f++) {
        pam_tier *t = ssd_open_flags(k_ssd_flags[f], 2 << 20);
        pam_test_rng r = {13};
        ctx c;
        ctx_fill(&c, t, 4, BT, &r);
        float k[BT * ROW], v[BT * ROW];
        char path[128];
        uint64_t old_off, new_off, other_off;
        /* Block 1 rewritten with block 0's data: its new copy is elsewhere. */
        assert_int_equal(pam_tier_ssd_locate(t, c.blocks[1].slot, path, sizeof path, &old_off), PAM_OK);
        assert_int_equal(pam_tier_write(t, c.blocks[1].slot, 0, BT, c.K, c.V), PAM_OK);
        assert_int_equal(pam_tier_ssd_locate(t, c.blocks[1].slot, path, sizeof path, &new_off), PAM_OK);
        assert_true(new_off != old_off);
        assert_int_equal(pam_tier_read(t, c.blocks[1].slot, BT, k, v), PAM_OK);
        assert_memory_equal(k, c.K, sizeof k);
        /* The old copy reappears where the new one is. */
        copy_bytes(path, old_off, new_off, t->block_bytes);
        assert_int_equal(pam_tier_read(t, c.blocks[1].slot, BT, k, v), PAM_ERR_CORRUPT);
        /* Block 3's bytes where block 2 is. */
        assert_int_equal(pam_tier_ssd_locate(t, c.blocks[3].slot, path, sizeof path, &other_off), PAM_OK);
        assert_int_equal(pam_tier_ssd_locate(t, c.blocks[2].slot, path, sizeof path, &new_off), PAM_OK);
        copy_bytes(path, other_off, new_off, t->block_bytes);
        pam_tier_block b2 = c.blocks[2];
        attn_out a;
        float q[N_HEAD * HD] = {0};
        assert_int_equal(run_attend(t, q, &b2, 1, &a), PAM_ERR_CORRUPT);
        assert_int_equal(run_attend(t, q, c.blocks + 3, 1, &a), PAM_OK);
        ctx_free(&c);
        pam_tier_close(t);
    }
}

/* Checksums taken while writing at one ISA level verify at every other (the
 * level may change between a block's write and its read), and a flipped
 * byte fails at every level. */
static void test_ssd_isa_switch(void **state) {
    (void)state;
    const int n_isa = (int)pam_cpu_detect() + 1;
    for (int w = 0; w < n_isa; w++) {
        assert_int_equal(pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)w)), PAM_OK);
        pam_tier *t = ssd_open_flags(0, 2 << 20);
        pam_test_rng r = {14 + (uint64_t)w};
        ctx c;
        ctx_fill(&c, t, 6, BT, &r);
        float q[N_HEAD * HD], k[BT * ROW], v[BT * ROW];
        for (int i = 0; i < N_HEAD * HD; i++) q[i] = (float)pam_test_rng_normal(&r);
        attn_out a;
        for (int rd = 0; rd < n_isa; rd++) {
            assert_int_equal(pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)rd)), PAM_OK);
            for (int b = 0; b < c.n_blocks; b++) {
                assert_int_equal(pam_tier_read(t, c.blocks[b].slot, BT, k, v), PAM_OK);
                assert_memory_equal(k, c.K + (size_t)b * BT * ROW, sizeof k);
            }
            assert_int_equal(run_attend(t, q, c.blocks, c.n_blocks, &a), PAM_OK);
        }
        flip_byte(t, c.blocks[4].slot, 4321);
        for (int rd = 0; rd < n_isa; rd++) {
            assert_int_equal(pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)rd)), PAM_OK);
            assert_int_equal(pam_tier_read(t, c.blocks[4].slot, BT, k, v), PAM_ERR_CORRUPT);
            assert_int_equal(run_attend(t, q, c.blocks, c.n_blocks, &a), PAM_ERR_CORRUPT);
            assert_int_equal(run_attend(t, q, c.blocks, 4, &a), PAM_OK);
        }
        ctx_free(&c);
        pam_tier_close(t);
    }
    restore_isa();
}

/* Adjacent blocks are read together: blocks written one after another get
 * ascending adjacent physical slots (again after they are freed), attend and
 * read-ahead read each run of them with one I/O (at most 1 MiB: 32 blocks
 * of 32 KiB here; attend batches of 64 blocks), with the same results as a
 * dram tier, through short reads that end inside a block, and a failed read
 * or a corrupt block in the middle of a run fails that call (a corrupt
 * block alone, by its slot). */
#define RUN_N 100
static void same_attn(const float *m1, const float *l1, const float *o1, const float *m0, const float *l0,
                      const float *o0, int nh, int hd) {
    for (int h = 0; h < nh; h++) {
        assert_true(fabsf(m1[h] - m0[h]) <= 1e-5f * (1.0f + fabsf(m0[h])));
        assert_true(fabsf(l1[h] - l0[h]) <= 1e-5f * l0[h]);
    }
    for (int i = 0; i < nh * hd; i++) assert_true(fabsf(o1[i] - o0[i]) <= 1e-5f * (1.0f + fabsf(o0[i])));
}

static void test_ssd_runs(void **state) {
    (void)state;
    const pam_kv_shape sh = {.n_layer = 1, .n_head_kv = 8, .head_dim = 64, .block_tokens = 16};
    const int row = 8 * 64, nh = 8;
    float *K = malloc(sizeof(float) * RUN_N * 16 * row), *V = malloc(sizeof(float) * RUN_N * 16 * row);
    assert_true(K && V);
    pam_test_rng r = {14};
    for (int i = 0; i < RUN_N * 16 * row; i++) {
        K[i] = pam_f16_to_f32(pam_f32_to_f16((float)pam_test_rng_normal(&r)));
        V[i] = pam_f16_to_f32(pam_f32_to_f16((float)pam_test_rng_normal(&r)));
    }
    float q[8 * 64];
    for (int i = 0; i < nh * 64; i++) q[i] = (float)pam_test_rng_normal(&r);
    static float m0[8], l0[8], o0[8 * 64], m1[8], l1[8], o1[8 * 64];
    pam_tier_block blocks[RUN_N], dblocks[RUN_N];
    pam_tier *d;
    assert_int_equal(pam_tier_dram_open(&sh, 8 << 20, &d), PAM_OK);
    for (int b = 0; b < RUN_N; b++) {
        assert_int_equal(pam_tier_alloc(d, &dblocks[b].slot), PAM_OK);
        dblocks[b].n_tokens = 16;
        assert_int_equal(pam_tier_write(d, dblocks[b].slot, 0, 16, K + (size_t)b * 16 * row, V + (size_t)b * 16 * row),
                         PAM_OK);
    }
    pam_tier_attn dref = {.q = q, .n_head = nh, .scale = 0.125f, .blocks = dblocks, .n_blocks = RUN_N,
                          .m = m0, .l = l0, .o = o0};
    assert_int_equal(pam_tier_attend(d, &dref), PAM_OK);
    for (int f = 0; f < 3; f++) {
        pam_tier *t;
        assert_int_equal(pam_tier_ssd_open_ex(&sh, ssd_dir(), 8 << 20, k_ssd_flags[f], &t), PAM_OK);
        assert_int_equal(t->block_bytes, 32768); /* the payload alone: no header page */
        for (int round = 0; round < 2; round++) {
            /* Written in two pieces each (a block that grows is rewritten). */
            for (int b = 0; b < RUN_N; b++) {
                const float *k = K + (size_t)b * 16 * row, *v = V + (size_t)b * 16 * row;
                assert_int_equal(pam_tier_alloc(t, &blocks[b].slot), PAM_OK);
                blocks[b].n_tokens = 16;
                assert_int_equal(pam_tier_write(t, blocks[b].slot, 0, 5, k, v), PAM_OK);
                assert_int_equal(pam_tier_write(t, blocks[b].slot, 5, 11, k + 5 * row, v + 5 * row), PAM_OK);
            }
            char path[128];
            uint64_t off0, off;
            assert_int_equal(pam_tier_ssd_locate(t, blocks[0].slot, path, sizeof path, &off0), PAM_OK);
            for (int b = 1; b < RUN_N; b++) {
                assert_int_equal(pam_tier_ssd_locate(t, blocks[b].slot, path, sizeof path, &off), PAM_OK);
                assert_int_equal(off, off0 + (uint64_t)b * t->block_bytes);
            }
            if (round == 1) break;
            /* Freed in logical order, then written again: ascending again. */
            for (int b = 0; b < RUN_N; b++) pam_tier_free(t, blocks[b].slot);
        }
        pam_tier_attn req = {.q = q, .n_head = nh, .scale = 0.125f, .blocks = blocks, .n_blocks = RUN_N,
                             .m = m1, .l = l1, .o = o1};
        uint64_t n0, n1;
        assert_int_equal(pam_tier_ssd_reads(t, &n0), PAM_OK);
        assert_int_equal(pam_tier_attend(t, &req), PAM_OK);
        assert_int_equal(pam_tier_ssd_reads(t, &n1), PAM_OK);
        assert_int_equal(n1 - n0, 4); /* batches of 64 and 36 blocks: reads of 32, 32, 32, 4 */
        same_attn(m1, l1, o1, m0, l0, o0, nh, 64);
        /* Every read comes back short, ending inside a block. */
        assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_SHORT_READ, 0, 1), PAM_OK);
        assert_int_equal(pam_tier_ssd_reads(t, &n0), PAM_OK);
        assert_int_equal(pam_tier_attend(t, &req), PAM_OK);
        assert_int_equal(pam_tier_ssd_reads(t, &n1), PAM_OK);
        assert_true(n1 - n0 > 4);
        same_attn(m1, l1, o1, m0, l0, o0, nh, 64);
        assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_NONE, 0, 0), PAM_OK);
        /* A failed read in the middle of a run (block 50) fails the call once. */
        assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_EIO_READ, 50, 0), PAM_OK);
        assert_int_equal(pam_tier_attend(t, &req), PAM_ERR_IO);
        assert_int_equal(pam_tier_attend(t, &req), PAM_OK);
        same_attn(m1, l1, o1, m0, l0, o0, nh, 64);
        /* A corrupt block in the middle of a run fails alone, by its slot. */
        flip_byte(t, blocks[45].slot, 12345);
        char want[64];
        snprintf(want, sizeof want, "slot %u ", blocks[45].slot);
        assert_int_equal(pam_tier_attend(t, &req), PAM_ERR_CORRUPT);
        assert_non_null(strstr(pam_last_error(), want));
        pam_tier_attn part = req;
        part.n_blocks = 45;
        assert_int_equal(pam_tier_attend(t, &part), PAM_OK);
        part.blocks = blocks + 46;
        part.n_blocks = RUN_N - 46;
        assert_int_equal(pam_tier_attend(t, &part), PAM_OK);
        assert_int_equal(pam_tier_write(t, blocks[45].slot, 0, 16, K + (size_t)45 * 16 * row, V + (size_t)45 * 16 * row),
                         PAM_OK);
        /* Read ahead: a few reads for the whole list (block 45 moved away
         * from its neighbours: 0-31, 32-44, 45, 46-77, 78-99), then attend
         * reads nothing itself (without io_uring there is no read-ahead). */
        int ahead = !(k_ssd_flags[f] & PAM_SSD_NO_URING);
        assert_int_equal(pam_tier_ssd_reads(t, &n0), PAM_OK);
        pam_tier_prefetch(t, blocks, RUN_N);
        assert_int_equal(pam_tier_attend(t, &req), PAM_OK);
        assert_int_equal(pam_tier_ssd_reads(t, &n1), PAM_OK);
        assert_int_equal(n1 - n0, ahead ? 5 : 6); /* attend: 0-31, 32-44, 45, 46-63 | 64-95, 96-99 */
        same_attn(m1, l1, o1, m0, l0, o0, nh, 64);
        /* Read ahead through short reads. */
        assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_SHORT_READ, 0, 1), PAM_OK);
        pam_tier_prefetch(t, blocks, RUN_N);
        assert_int_equal(pam_tier_attend(t, &req), PAM_OK);
        same_attn(m1, l1, o1, m0, l0, o0, nh, 64);
        assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_NONE, 0, 0), PAM_OK);
        pam_tier_stats s;
        pam_tier_stats_get(t, &s);
        assert_int_equal(s.blocks_used, RUN_N);
        pam_tier_close(t);
    }
    pam_tier_close(d);
    free(K);
    free(V);
}

/* Read-ahead hints never change a result: hinted blocks give the same bits;
 * a slot written or freed and reused after its hint is read anew; a failed
 * read-ahead is read again by attend (a lasting failure is still an error);
 * hints that no attend takes are dropped; a hint may run beside attend. */
typedef struct pf_conc {
    pam_tier *t;
    const float *q;
    const pam_tier_block *blocks;
    int n;
    const attn_out *good;
    int bad;
} pf_conc;

static void *pf_conc_main(void *arg) {
    pf_conc *c = arg;
    attn_out a;
    for (int i = 0; i < 40; i++)
        if (run_attend(c->t, c->q, c->blocks, c->n, &a) != PAM_OK || memcmp(a.o, c->good->o, sizeof a.o)) c->bad++;
    return NULL;
}

static void test_ssd_prefetch(void **state) {
    (void)state;
    for (int f = 0; f < 3; f++) {
        pam_tier *t = ssd_open_flags(k_ssd_flags[f], 2 << 20);
        pam_test_rng r = {12};
        ctx c;
        ctx_fill(&c, t, 20, 7, &r);
        float q[N_HEAD * HD];
        for (int i = 0; i < N_HEAD * HD; i++) q[i] = (float)pam_test_rng_normal(&r);
        attn_out good, a, b;
        assert_int_equal(run_attend(t, q, c.blocks, c.n_blocks, &good), PAM_OK);
        pam_tier_prefetch(t, c.blocks, c.n_blocks);
        assert_int_equal(run_attend(t, q, c.blocks, c.n_blocks, &a), PAM_OK);
        assert_memory_equal(a.o, good.o, sizeof a.o);
        assert_memory_equal(a.blk_l, good.blk_l, sizeof(float) * (size_t)c.n_blocks * N_HEAD);
        /* Hinted, then rewritten with block 6's data: attend sees the new
         * data. Written twice, so the second copy lands where the hinted
         * one was on disk (writes alternate between two places). */
        pam_tier_prefetch(t, c.blocks, c.n_blocks);
        for (int w = 0; w < 2; w++)
            assert_int_equal(pam_tier_write(t, c.blocks[5].slot, 0, BT, c.K + 6 * BT * ROW, c.V + 6 * BT * ROW),
                             PAM_OK);
        assert_int_equal(run_attend(t, q, c.blocks, c.n_blocks, &a), PAM_OK);
        assert_int_equal(run_attend(t, q, c.blocks, c.n_blocks, &b), PAM_OK); /* no hint */
        assert_memory_equal(a.o, b.o, sizeof a.o);
        assert_true(memcmp(a.o, good.o, sizeof a.o) != 0);
        /* Hinted, then freed and the slot reused for other data. */
        pam_tier_prefetch(t, c.blocks, c.n_blocks);
        uint32_t old = c.blocks[2].slot;
        pam_tier_free(t, old);
        assert_int_equal(pam_tier_alloc(t, &c.blocks[2].slot), PAM_OK);
        assert_int_equal(pam_tier_write(t, c.blocks[2].slot, 0, BT, c.K + 7 * BT * ROW, c.V + 7 * BT * ROW), PAM_OK);
        assert_int_equal(run_attend(t, q, c.blocks, c.n_blocks, &a), PAM_OK);
        assert_int_equal(run_attend(t, q, c.blocks, c.n_blocks, &b), PAM_OK);
        assert_memory_equal(a.o, b.o, sizeof a.o);
        /* Back to the original data for the rest. */
        assert_int_equal(pam_tier_write(t, c.blocks[2].slot, 0, BT, c.K + 2 * BT * ROW, c.V + 2 * BT * ROW), PAM_OK);
        assert_int_equal(pam_tier_write(t, c.blocks[5].slot, 0, BT, c.K + 5 * BT * ROW, c.V + 5 * BT * ROW), PAM_OK);
        /* One failed read-ahead: attend reads the block itself (without
         * io_uring there is no read-ahead: the failure is attend's). */
        int ahead = !(k_ssd_flags[f] & PAM_SSD_NO_URING);
        assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_EIO_READ, 3, 0), PAM_OK);
        pam_tier_prefetch(t, c.blocks, c.n_blocks);
        assert_int_equal(run_attend(t, q, c.blocks, c.n_blocks, &a), ahead ? PAM_OK : PAM_ERR_IO);
        assert_int_equal(run_attend(t, q, c.blocks, c.n_blocks, &a), PAM_OK);
        assert_memory_equal(a.o, good.o, sizeof a.o);
        /* Every read fails: still an error of attend. */
        assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_EIO_READ, 0, 1), PAM_OK);
        pam_tier_prefetch(t, c.blocks, c.n_blocks);
        assert_int_equal(run_attend(t, q, c.blocks, c.n_blocks, &a), PAM_ERR_IO);
        assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_NONE, 0, 0), PAM_OK);
        /* Hints nobody takes (more than the buffers hold over time). */
        for (int i = 0; i < 300; i++) pam_tier_prefetch(t, c.blocks + i % 10, 10);
        assert_int_equal(run_attend(t, q, c.blocks, c.n_blocks, &a), PAM_OK);
        assert_memory_equal(a.o, good.o, sizeof a.o);
        /* Hints beside attend on another thread. */
        pf_conc cc = {.t = t, .q = q, .blocks = c.blocks, .n = c.n_blocks, .good = &good};
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, pf_conc_main, &cc), 0);
        for (int i = 0; i < 200; i++) pam_tier_prefetch(t, c.blocks, c.n_blocks);
        pthread_join(th, NULL);
        assert_int_equal(cc.bad, 0);
        /* Hinted and never asked for: close waits for the reads. */
        pam_tier_prefetch(t, c.blocks, c.n_blocks);
        ctx_free(&c);
        pam_tier_close(t);
    }
}

/* tmpfs: O_DIRECT is used where the kernel supports it there, otherwise the
 * tier falls back to buffered I/O; either way it works. */
static void test_ssd_tmpfs(void **state) {
    (void)state;
    struct stat sb;
    if (stat("/dev/shm", &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        printf("  /dev/shm missing: tmpfs case not run\n");
        return;
    }
    char dir[64];
    snprintf(dir, sizeof dir, "/dev/shm/pam-tiers-%d", (int)getpid());
    pam_tier *t = NULL;
    pam_status st = pam_tier_ssd_open(&k_shape, dir, 1 << 20, &t);
    if (st != PAM_OK) { /* a full or read-only /dev/shm is the host's business */
        printf("  tmpfs case not run: %s\n", pam_last_error());
        rmdir(dir);
        return;
    }
    printf("  tmpfs tier: %s\n", t->name);
    uint32_t slot;
    float K[BT * ROW], V[BT * ROW], k[BT * ROW], v[BT * ROW];
    pam_test_rng r = {11};
    rand_rows(&r, K, BT);
    rand_rows(&r, V, BT);
    assert_int_equal(pam_tier_alloc(t, &slot), PAM_OK);
    assert_int_equal(pam_tier_write(t, slot, 0, BT, K, V), PAM_OK);
    assert_int_equal(pam_tier_read(t, slot, BT, k, v), PAM_OK);
    assert_memory_equal(k, K, sizeof k);
    pam_tier_close(t);
    rmdir(dir);
}

static void test_ssd_inject_wrong_tier(void **state) {
    (void)state;
    pam_tier *t = open_kind(&k_kinds[1], 1 << 20);
    assert_int_equal(pam_tier_ssd_inject(t, PAM_SSD_FAULT_EIO_READ, 0, 0), PAM_ERR_INVALID);
    pam_tier_close(t);
}

/* ---- fault wrapper -------------------------------------------------------- */

static void test_fault_wrapper(void **state) {
    (void)state;
    pam_tier *inner, *t;
    assert_int_equal(pam_tier_dramq_open(&k_shape, 8, 1 << 20, &inner), PAM_OK);
    pam_fault_plan plan = {.op = PAM_FAULT_ALLOC, .nth = 1};
    assert_int_equal(pam_tier_fault_wrap(inner, &plan, &t), PAM_OK);
    assert_non_null(strstr(t->name, "fault(dramq:int8)"));
    assert_int_equal(t->capacity_blocks, inner->capacity_blocks);
    uint32_t a, b;
    assert_int_equal(pam_tier_alloc(t, &a), PAM_OK);
    assert_int_equal(pam_tier_alloc(t, &b), PAM_ERR_FULL);
    assert_int_equal(pam_tier_alloc(t, &b), PAM_OK); /* once only */
    pam_tier_stats s;
    pam_tier_stats_get(t, &s);
    assert_int_equal(s.blocks_used, 2);
    assert_int_equal(s.n_errors, 1);
    pam_tier_close(t);

    /* Persistent write failure: the slot keeps what it had. */
    float K[BT * ROW], V[BT * ROW], K2[BT * ROW], k[BT * ROW], v[BT * ROW];
    pam_test_rng r = {12};
    rand_rows(&r, K, BT);
    rand_rows(&r, V, BT);
    rand_rows(&r, K2, BT);
    assert_int_equal(pam_tier_ssd_open(&k_shape, ssd_dir(), 1 << 20, &inner), PAM_OK);
    plan = (pam_fault_plan){.op = PAM_FAULT_WRITE, .nth = 1, .persistent = 1};
    assert_int_equal(pam_tier_fault_wrap(inner, &plan, &t), PAM_OK);
    assert_int_equal(pam_tier_alloc(t, &a), PAM_OK);
    assert_int_equal(pam_tier_write(t, a, 0, 8, K, V), PAM_OK);
    assert_int_equal(pam_tier_write(t, a, 0, 8, K2, V), PAM_ERR_IO);
    assert_int_equal(pam_tier_write(t, a, 0, 8, K2, V), PAM_ERR_IO);
    assert_int_equal(pam_tier_read(t, a, 8, k, v), PAM_OK);
    assert_memory_equal(k, K, sizeof(float) * 8 * ROW);
    pam_tier_close(t);

    /* Read and attend failures. */
    for (int op = PAM_FAULT_READ; op <= PAM_FAULT_ATTEND; op++) {
        assert_int_equal(pam_tier_dramq_open(&k_shape, 4, 1 << 20, &inner), PAM_OK);
        plan = (pam_fault_plan){.op = (pam_fault_op)op, .nth = 0};
        assert_int_equal(pam_tier_fault_wrap(inner, &plan, &t), PAM_OK);
        assert_int_equal(pam_tier_alloc(t, &a), PAM_OK);
        assert_int_equal(pam_tier_write(t, a, 0, BT, K, V), PAM_OK);
        float q[N_HEAD * HD] = {0};
        pam_tier_block blk = {a, BT};
        attn_out o;
        pam_status want_read = op == PAM_FAULT_READ ? PAM_ERR_IO : PAM_OK;
        pam_status want_att = op == PAM_FAULT_ATTEND ? PAM_ERR_IO : PAM_OK;
        assert_int_equal(pam_tier_read(t, a, BT, k, v), want_read);
        assert_int_equal(run_attend(t, q, &blk, 1, &o), want_att);
        assert_int_equal(pam_tier_read(t, a, BT, k, v), PAM_OK);
        assert_int_equal(run_attend(t, q, &blk, 1, &o), PAM_OK);
        pam_tier_close(t);
    }
}

/* ---- specs ---------------------------------------------------------------- */

static void test_parse_size(void **state) {
    (void)state;
    static const struct {
        const char *s;
        uint64_t v;
    } ok[] = {{"4096", 4096},           {"3B", 3},
              {"64K", 64 << 10},        {"64KiB", 64 << 10},
              {"512MiB", 512ull << 20}, {"2GiB", 2ull << 30},
              {"2G", 2ull << 30},       {"1.5GiB", 3ull << 29},
              {"1TiB", 1ull << 40},     {"0.5MiB", 1ull << 19}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        uint64_t v = 0;
        assert_int_equal(pam_parse_size(ok[i].s, &v), PAM_OK);
        assert_int_equal(v, ok[i].v);
    }
    static const char *bad[] = {"", "GiB", "1.2.3", "-1", "1 GiB", "0", "0KiB", "12XB", "1e9", "99999999999999999999",
                                "20000000TiB"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t v = 7;
        assert_int_equal(pam_parse_size(bad[i], &v), PAM_ERR_INVALID);
        assert_int_equal(v, 7);
        assert_true(strlen(pam_last_error()) > 10);
    }
}

static void test_open_spec(void **state) {
    (void)state;
    char spec[512];
    pam_tier *t;
    assert_int_equal(pam_tier_open_spec(&k_shape, "dram:1MiB", &t), PAM_OK);
    assert_string_equal(t->ops->kind, "dram");
    assert_true(t->capacity_blocks > 0 && t->capacity_blocks * t->block_bytes <= 1 << 20);
    assert_true(t->exact);
    pam_tier_close(t);
    assert_int_equal(pam_tier_open_spec(&k_shape, "dramq:int8:1MiB", &t), PAM_OK);
    assert_string_equal(t->name, "dramq:int8");
    assert_false(t->exact);
    uint64_t cap8 = t->capacity_blocks;
    pam_tier_close(t);
    assert_int_equal(pam_tier_open_spec(&k_shape, "dramq:int4:1MiB", &t), PAM_OK);
    assert_string_equal(t->name, "dramq:int4");
    assert_true(t->capacity_blocks > cap8); /* int4 blocks are smaller */
    pam_tier_close(t);
    snprintf(spec, sizeof spec, "ssd:%s:2MiB", ssd_dir());
    assert_int_equal(pam_tier_open_spec(&k_shape, spec, &t), PAM_OK);
    assert_string_equal(t->ops->kind, "ssd");
    assert_true(strncmp(t->name, "ssd:", 4) == 0);
    printf("  ssd tier in the build dir: %s (no '+buffered': O_DIRECT)\n", t->name);
    assert_int_equal(t->block_bytes % 4096, 0);
    assert_true(t->capacity_blocks * t->block_bytes <= 2 << 20);
    pam_tier_close(t);
    assert_int_equal(pam_tier_open_default(&k_shape, 1 << 20, &t), PAM_OK);
    assert_string_equal(t->ops->kind, "dram");
    assert_true(t->capacity_blocks * t->block_bytes <= 1 << 20);
    pam_tier_close(t);

    static const struct {
        const char *spec, *msg;
    } bad[] = {
        {"", "empty spec"},
        {"dram:", "dram:SIZE"},
        {"dram:0", "more than zero"},
        {"dram:12XB", "unknown unit"},
        {"dramq:int3:1MiB", "dramq:int8:SIZE"},
        {"dramq:int8", "dramq:int8:SIZE"},
        {"dramq:int8:", "size"},
        {"ssd:/tmp", "ssd:DIR:SIZE"},
        {"ssd::1MiB", "ssd:DIR:SIZE"},
        {"ssd:/tmp:lots", "expected a number"},
        {"hbm:1GiB", "unknown tier 'hbm'"},
        {"dramq:int8:1KiB", "hold no block"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        t = (pam_tier *)&t;
        pam_status st = pam_tier_open_spec(&k_shape, bad[i].spec, &t);
        if (st != PAM_ERR_INVALID || !strstr(pam_last_error(), bad[i].msg))
            fprintf(stderr, "spec '%s': %d %s\n", bad[i].spec, st, pam_last_error());
        assert_int_equal(st, PAM_ERR_INVALID);
        assert_null(t);
        assert_non_null(strstr(pam_last_error(), bad[i].msg));
    }
}

#define KIND_TESTS(fn)                                                                           \
    cmocka_unit_test_prestate(fn, (void *)&k_kinds[0]), cmocka_unit_test_prestate(fn, (void *)&k_kinds[1]), \
        cmocka_unit_test_prestate(fn, (void *)&k_kinds[2]), cmocka_unit_test_prestate(fn, (void *)&k_kinds[3]), \
        cmocka_unit_test_prestate(fn, (void *)&k_kinds[4]), cmocka_unit_test_prestate(fn, (void *)&k_kinds[5]), \
        cmocka_unit_test_prestate(fn, (void *)&k_kinds[6]), cmocka_unit_test_prestate(fn, (void *)&k_kinds[7]), \
        cmocka_unit_test_prestate(fn, (void *)&k_kinds[8]), cmocka_unit_test_prestate(fn, (void *)&k_kinds[9]), \
        cmocka_unit_test_prestate(fn, (void *)&k_kinds[10]), cmocka_unit_test_prestate(fn, (void *)&k_kinds[11]), \
        cmocka_unit_test_prestate(fn, (void *)&k_kinds[12])

/* Calibration measures a positive rate through attend and leaves the tier
 * as it found it (no slot kept). */
static void test_calibrate(void **state) {
    const tier_kind *k = *state;
    pam_tier *t = open_kind(k, 1u << 20);
    pam_tier_stats st;
    double gbps = 0;
    assert_int_equal(pam_tier_calibrate(t, &k_shape, 256u << 10, &gbps), PAM_OK);
    assert_true(gbps > 0 && isfinite(gbps));
    assert_true(t->read_gbps == gbps);
    pam_tier_stats_get(t, &st);
    assert_int_equal(st.blocks_used, 0);
    pam_tier_close(t);
}

int main(void) {
    _Static_assert(N_KINDS == 13, "KIND_TESTS lists every kind");
    const struct CMUnitTest tests[] = {
        KIND_TESTS(test_alloc_until_full),
        KIND_TESTS(test_write_read),
        KIND_TESTS(test_attend),
        KIND_TESTS(test_concurrent_attend),
        cmocka_unit_test(test_dramq_shapes),
        cmocka_unit_test(test_ssd_eio_read),
        cmocka_unit_test(test_ssd_short_reads),
        cmocka_unit_test(test_ssd_eio_write_keeps_old),
        cmocka_unit_test(test_ssd_recent_window),
        cmocka_unit_test(test_ssd_enospc_hook),
        cmocka_unit_test(test_ssd_file_size_limit),
        cmocka_unit_test(test_ssd_corrupt),
        cmocka_unit_test(test_ssd_stale_copy),
        cmocka_unit_test(test_ssd_isa_switch),
        cmocka_unit_test(test_ssd_runs),
        cmocka_unit_test(test_ssd_prefetch),
        cmocka_unit_test(test_ssd_tmpfs),
        cmocka_unit_test(test_ssd_inject_wrong_tier),
        cmocka_unit_test(test_fault_wrapper),
        cmocka_unit_test_prestate(test_calibrate, (void *)&k_kinds[0]),
        cmocka_unit_test_prestate(test_calibrate, (void *)&k_kinds[1]),
        cmocka_unit_test_prestate(test_calibrate, (void *)&k_kinds[3]),
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_open_spec),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
