/* Decode kernel throughput: matvec of a rows x cols matrix (default
 * 4096 x 4096) for every weight type, every variant of its kernel this CPU
 * can run (kernels/ksel.h) and the variant the per-machine chooser picked,
 * at 1..max threads, as GB/s of weight bytes read, beside a plain read of the
 * same bytes (the bandwidth ceiling) and each as a percentage of it. Each call
 * works on the next of several copies of the matrix, together >= 256 MiB, so
 * weights stream from DRAM as in decode even when one matrix would fit in the
 * last-level cache. The CPU model and the chosen variants come first.
 *
 * Then prefill: pam_matmul over 64 tokens, as GMAC/s per level and thread
 * count (compute-bound: each weight panel is reused by all tokens).
 *
 * Then KV attention: one layer's attention of one query token through the
 * dram tier in each KV type (f16, f32, bf16, q8, q4) and the dramq tier
 * (int8, int4) side by side, as GB/s of block bytes attended, the time
 * relative to the dram f16 tier, and the share of a plain read of the same
 * bytes at the same thread count (below); before that, each KV type's
 * kernel on one block in cache, in CPU time.
 *
 * Then the ssd tier's block checksum: pam_checksum64 per ISA level beside the
 * hash it replaced, over 32 KiB blocks hot in cache and streamed from a
 * buffer far larger than the caches, as GB/s on one thread.
 *
 * Usage: bench_kernels [rows cols [max_threads [seconds_per_point [what]]]]
 * with what = all (default), decode, prefill, kv, kvhot (only the cached
 * kernels of kv) or csum.
 * Every level's output is checked against pam_vec_dot_ref before timing. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/threadpool.h"
#include "core/timing.h"
#include "kernels/checksum.h"
#include "kernels/cpu.h"
#include "kernels/ksel.h"
#include "kernels/matmul.h"
#include "kernels/membw.h"
#include "kernels/quant.h"
#include "kv/tier.h"

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static float rnd(void) { /* roughly N(0,1): sum of 4 uniforms, scaled */
    float s = 0;
    for (int i = 0; i < 4; i++) {
        g_rng ^= g_rng << 13;
        g_rng ^= g_rng >> 7;
        g_rng ^= g_rng << 17;
        s += (float)(g_rng >> 40) / (float)(1 << 24) - 0.5f;
    }
    return s * 1.7f;
}

/* The bandwidth ceiling: sum of 64-bit words, split like the matvec. */
typedef struct {
    const uint64_t *p;
    int64_t n_words, chunk;
    uint64_t sums[64];
} read_job;

static void read_task(void *ctx, int64_t t, int thread) {
    read_job *j = ctx;
    int64_t a = t * j->chunk, b = a + j->chunk < j->n_words ? a + j->chunk : j->n_words;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int64_t i = a; i + 4 <= b; i += 4) {
        s0 += j->p[i];
        s1 += j->p[i + 1];
        s2 += j->p[i + 2];
        s3 += j->p[i + 3];
    }
    j->sums[t & 63] += s0 ^ s1 ^ s2 ^ s3;
}

static double now_s(void) { return (double)pam_time_ns() * 1e-9; }

/* CPU time of this thread: the hot-cache runs are single-threaded, and this
 * leaves out time the thread spent descheduled on a busy machine. */
static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Mean seconds per call over a run of at least `secs`. */
static double time_read(pam_pool *pool, read_job *j, double secs) {
    int n_tasks = pam_pool_n_threads(pool) * 4;
    j->chunk = (j->n_words + n_tasks - 1) / n_tasks;
    pam_pool_run(pool, read_task, j, n_tasks);
    int iters = 0;
    double t0 = now_s(), t;
    do {
        pam_pool_run(pool, read_task, j, n_tasks);
        iters++;
        t = now_s();
    } while (t - t0 < secs);
    return (t - t0) / iters;
}

/* Best seconds per call over a run of at least `secs`, each call on the
 * next of n_copies equal buffers (together far larger than the last-level
 * cache, so every call streams from DRAM as decode does). The best call,
 * not the mean, so time the thread spent descheduled on a busy machine
 * counts less. */

/* One thread runs every task on the calling thread: it is timed in that
 * thread's CPU time, which a busy machine does not inflate. */
static double (*clock_for(pam_pool *pool))(void) { return pam_pool_n_threads(pool) == 1 ? cpu_s : now_s; }

static double time_read_copies(pam_pool *pool, read_job *j, int n_copies, double secs) {
    int n_tasks = pam_pool_n_threads(pool) * 4;
    j->chunk = (j->n_words + n_tasks - 1) / n_tasks;
    const uint64_t *base = j->p;
    double (*clk)(void) = clock_for(pool);
    pam_pool_run(pool, read_task, j, n_tasks);
    double best = 1e30, t0 = now_s(), t = t0;
    for (int c = 0; t - t0 < secs; c = (c + 1) % n_copies) {
        j->p = base + (size_t)c * (size_t)j->n_words;
        double a = clk();
        pam_pool_run(pool, read_task, j, n_tasks);
        best = fmin(best, clk() - a);
        t = now_s();
    }
    j->p = base;
    return best;
}

static double time_matvec(pam_pool *pool, pam_dtype type, const void *W, size_t bytes, int n_copies, int64_t rows,
                          int64_t cols, const float *x, float *y, double secs) {
    double (*clk)(void) = clock_for(pool);
    pam_matvec(pool, type, W, rows, cols, x, y);
    double best = 1e30, t0 = now_s(), t = t0;
    for (int c = 0; t - t0 < secs; c = (c + 1) % n_copies) {
        double a = clk();
        pam_matvec(pool, type, (const uint8_t *)W + (size_t)c * bytes, rows, cols, x, y);
        best = fmin(best, clk() - a);
        t = now_s();
    }
    return best;
}

/* Kernel speed with the weights hot in cache (the first 512 KiB of W,
 * activations quantised once): what the dot costs in arithmetic alone. If
 * this is far above the DRAM read rate, the matvec is bandwidth-bound. */
static volatile float g_sink; /* keeps the hot-cache dots from being optimised away */

static double time_hot(pam_dtype type, const void *W, size_t row_bytes, int64_t cols, const void *act,
                       double secs, int64_t *n_rows_out) {
    int64_t n_rows = (int64_t)((512 << 10) / row_bytes);
    if (n_rows < 1) n_rows = 1;
    *n_rows_out = n_rows;
    pam_vec_dot_fn dot = pam_vec_dot_select(type);
    pam_vec_dot4_fn dot4 = pam_vec_dot4_select(type); /* as pam_matvec uses them */
    const pam_vec_prep *prep = pam_vec_prep_select(type);
    void *prepared = prep ? aligned_alloc(64, (prep->bytes(cols) + 63) & ~(size_t)63) : NULL;
    if (prepared) prep->prep(act, cols, prepared); /* once per product, as pam_matvec does */
    float out[4];
    int iters = 0;
    double t0 = cpu_s(), t;
    do {
        float s = 0;
        int64_t r = 0;
        if (prepared)
            for (; r < n_rows; r++) s += prep->dot((const uint8_t *)W + (size_t)r * row_bytes, prepared, cols);
        if (dot4)
            for (; r + 4 <= n_rows; r += 4) {
                dot4((const uint8_t *)W + (size_t)r * row_bytes, row_bytes, act, cols, out);
                s += out[0] + out[1] + out[2] + out[3];
            }
        for (; r < n_rows; r++) s += dot((const uint8_t *)W + (size_t)r * row_bytes, act, cols);
        g_sink += s;
        iters++;
        t = cpu_s();
    } while (t - t0 < secs);
    free(prepared);
    return (t - t0) / iters;
}

/* Prefill: pam_matmul over n_tok tokens (weights stay in cache across the
 * tokens of a panel, so this measures arithmetic), as GMAC/s; best of 3.
 * One thread is timed in CPU time (all work runs on the calling thread). */
static double time_matmul(pam_pool *pool, pam_dtype type, const void *W, int64_t rows, int64_t cols,
                          const float *X, int64_t n_tok, float *Y, double secs) {
    double best = 1e30;
    for (int round = 0; round < 3; round++) {
        double (*clock)(void) = pam_pool_n_threads(pool) == 1 ? cpu_s : now_s;
        int iters = 0;
        double t0 = clock(), t;
        do {
            pam_matmul(pool, type, W, rows, cols, X, n_tok, Y);
            iters++;
            t = clock();
        } while (t - t0 < secs);
        best = fmin(best, (t - t0) / iters);
    }
    return (double)rows * (double)cols * (double)n_tok * 1e-9 / best;
}

/* ---- KV attention through the tiers ---------------------------------------
 * One layer of a Llama-3-8B-like model (8 KV heads of 128, 32 query heads,
 * GQA 4:1, 16-token blocks), the context written once into a dram (f16) and
 * two dramq (int8, int4) tiers, then attended by one query token: the work of
 * one decode step per layer. A small context (hot in cache: the kernels'
 * arithmetic) and a large one (streams from DRAM). With several threads the
 * blocks are cut into one contiguous run per thread (as the KV manager's
 * pieces are). Every ISA level's output is checked against the scalar level's
 * and the quantised tiers' against the dram tier's before timing. */
enum { KV_HEADS = 8, KV_HD = 128, KV_NQ = 32, KV_BT = 16 };

typedef struct kv_job {
    pam_tier *t;
    const float *q;
    const pam_tier_block *blocks;
    int64_t n_blocks, per_task;
    float m[16][KV_NQ], l[16][KV_NQ], o[16][KV_NQ * KV_HD];
    pam_status st[16];
} kv_job;

static void kv_task(void *ctx, int64_t task, int thread) {
    kv_job *j = ctx;
    int64_t b0 = task * j->per_task, nb = j->n_blocks - b0 < j->per_task ? j->n_blocks - b0 : j->per_task;
    pam_tier_attn req = {.q = j->q, .n_head = KV_NQ, .scale = 1.0f / sqrtf((float)KV_HD), .blocks = j->blocks + b0,
                         .n_blocks = nb, .m = j->m[task], .l = j->l[task], .o = j->o[task]};
    j->st[task] = nb > 0 ? pam_tier_attend(j->t, &req) : PAM_OK;
}

static double time_kv(pam_pool *pool, kv_job *j, double secs) {
    int n_tasks = pam_pool_n_threads(pool);
    j->per_task = (j->n_blocks + n_tasks - 1) / n_tasks;
    pam_pool_run(pool, kv_task, j, n_tasks);
    int iters = 0;
    double t0 = now_s(), t;
    do {
        pam_pool_run(pool, kv_task, j, n_tasks);
        iters++;
        t = now_s();
    } while (t - t0 < secs);
    return (t - t0) / iters;
}

/* Normalised output of a one-task run, max |a - b| / max |b|. */
static double kv_rel_err(const kv_job *a, const float *b) {
    double num = 0, den = 0;
    for (int g = 0; g < KV_NQ; g++)
        for (int d = 0; d < KV_HD; d++) {
            double x = a->o[0][g * KV_HD + d] / a->l[0][g], y = b[g * KV_HD + d];
            num = fmax(num, fabs(x - y));
            den = fmax(den, fabs(y));
        }
    return num / (den > 0 ? den : 1);
}

/* "model name" of /proc/cpuinfo (kernels/cpu.h), or "unknown". */
static void cpu_model(char *out, size_t cap) { snprintf(out, cap, "%s", pam_cpu_model()); }

static int bench_kv(pam_pool **pools, int max_threads, double secs) {
    const int best = (int)pam_cpu_detect();
    const int64_t ctxs[] = {512, 32768};
    enum { N_KV_TIERS = 7 };
    const char *names[N_KV_TIERS] = {"dram", "dram:f32", "dram:bf16", "dram:q8", "dram:q4", "dramq:int8", "dramq:int4"};
    const int dramq_bits[N_KV_TIERS] = {0, 0, 0, 0, 0, 8, 4};
    const pam_kv_type types[N_KV_TIERS] = {PAM_KV_F16, PAM_KV_F32, PAM_KV_BF16, PAM_KV_Q8, PAM_KV_Q4, 0, 0};
    /* output vs the f16 tier's on N(0,1) data (tests bound q8/int8 3e-2, q4/int4 3e-1), and each ISA level
     * vs the scalar level: float rounding, and for q8/q4 a 7-bit softmax weight that rounds the other way */
    const double tols[N_KV_TIERS] = {0, 1e-3, 3e-2, 5e-2, 5e-1, 5e-2, 5e-1};
    const double isa_tols[N_KV_TIERS] = {1e-4, 1e-4, 1e-4, 1e-3, 1e-3, 1e-4, 1e-4};
    const pam_kv_shape shape = {.n_layer = 1, .n_head_kv = KV_HEADS, .head_dim = KV_HD, .block_tokens = KV_BT};
    const size_t row = (size_t)KV_HEADS * KV_HD;
    char model[256];
    cpu_model(model, sizeof model);
    printf("\n# KV attention on %s, one layer, one query token: %d KV heads x %d, %d query heads,\n"
           "# %d-token blocks; GB/s of block bytes attended (mean of >= %.2f s, best of 2), the time of the\n"
           "# dram f16 tier at the same ISA and thread count / this tier's, and the best level's rate as a\n"
           "# share of a plain read of the same bytes (the read: 64-bit sums over a buffer of that size)\n",
           model, KV_HEADS, KV_HD, KV_NQ, KV_BT, secs);
    printf("%-6s %-11s %7s %3s %7s", "ctx", "tier", "MB", "thr", "read");
    for (int isa = 0; isa <= best; isa++) printf(" %9s", pam_cpu_isa_name((pam_isa)isa));
    for (int isa = 0; isa <= best; isa++) printf(" %6s/dram", pam_cpu_isa_name((pam_isa)isa));
    printf(" %6s\n", "%read");
    float *q = malloc(sizeof(float) * KV_NQ * KV_HD), *want = malloc(sizeof(float) * KV_NQ * KV_HD);
    kv_job *job = malloc(sizeof *job);
    read_job *rj = calloc(1, sizeof *rj);
    if (!q || !want || !job || !rj) return 1;
    for (int i = 0; i < KV_NQ * KV_HD; i++) q[i] = rnd();
    int failed = 0;
    for (size_t ci = 0; ci < sizeof ctxs / sizeof ctxs[0] && !failed; ci++) {
        const int64_t n_tok = ctxs[ci], n_blocks = n_tok / KV_BT;
        float *K = malloc(sizeof(float) * (size_t)n_tok * row), *V = malloc(sizeof(float) * (size_t)n_tok * row);
        pam_tier_block *blocks = malloc(sizeof *blocks * (size_t)n_blocks);
        if (!K || !V || !blocks) return 1;
        for (size_t i = 0; i < (size_t)n_tok * row; i++) {
            K[i] = rnd();
            V[i] = rnd();
        }
        double dram_s[17][PAM_ISA_COUNT];
        for (int ti = 0; ti < N_KV_TIERS && !failed; ti++) {
            pam_tier *t = NULL;
            pam_status st = PAM_OK;
            uint64_t cap = 2 * (uint64_t)n_blocks * 2 * KV_BT * row * 4; /* twice the f32 bytes */
            if (dramq_bits[ti]) st = pam_tier_dramq_open(&shape, dramq_bits[ti], cap, &t);
            else st = pam_tier_dram_open_type(&shape, types[ti], cap, &t);
            for (int64_t b = 0; st == PAM_OK && b < n_blocks; b++) {
                blocks[b].n_tokens = KV_BT;
                st = pam_tier_alloc(t, &blocks[b].slot);
                if (st == PAM_OK)
                    st = pam_tier_write(t, blocks[b].slot, 0, KV_BT, K + (size_t)b * KV_BT * row,
                                        V + (size_t)b * KV_BT * row);
            }
            if (st != PAM_OK) {
                fprintf(stderr, "%s: %s\n", names[ti], pam_last_error());
                return 1;
            }
            *job = (kv_job){.t = t, .q = q, .blocks = blocks, .n_blocks = n_blocks};
            /* check: every level against the scalar level, and against dram */
            float *lvl0 = malloc(sizeof(float) * KV_NQ * KV_HD);
            for (int isa = 0; isa <= best && !failed; isa++) {
                pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)isa));
                job->per_task = n_blocks;
                kv_task(job, 0, 0);
                if (job->st[0] != PAM_OK) {
                    fprintf(stderr, "%s: %s\n", names[ti], pam_last_error());
                    failed = 1;
                    break;
                }
                if (isa == 0) {
                    for (int i = 0; i < KV_NQ * KV_HD; i++) lvl0[i] = job->o[0][i] / job->l[0][i / KV_HD];
                    if (ti == 0) memcpy(want, lvl0, sizeof(float) * KV_NQ * KV_HD);
                }
                double e0 = kv_rel_err(job, lvl0), ed = kv_rel_err(job, want);
                if (!(e0 <= isa_tols[ti]) || !(ed <= tols[ti] + 1e-4)) {
                    fprintf(stderr, "%s %s ctx %lld: rel error %.3g vs scalar level, %.3g vs dram\n", names[ti],
                            pam_cpu_isa(), (long long)n_tok, e0, ed);
                    failed = 1;
                }
            }
            free(lvl0);
            const uint64_t bytes = (uint64_t)n_blocks * t->block_bytes;
            double mb = (double)bytes / (1 << 20);
            /* the plain read of as many bytes */
            rj->n_words = (int64_t)(bytes / 8);
            uint64_t *buf = malloc((size_t)rj->n_words * 8);
            if (!buf) return 1;
            for (int64_t i = 0; i < rj->n_words; i++) buf[i] = (uint64_t)i * 0x9e3779b97f4a7c15ull;
            rj->p = buf;
            for (int th = 1; th <= max_threads && !failed; th++) {
                double s[PAM_ISA_COUNT], rd = 1e30;
                for (int isa = 0; isa <= best; isa++) s[isa] = 1e30;
                for (int round = 0; round < 2; round++) {
                    rd = fmin(rd, time_read(pools[th], rj, secs));
                    for (int isa = best; isa >= 0; isa--) {
                        pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)isa));
                        s[isa] = fmin(s[isa], time_kv(pools[th], job, secs));
                    }
                }
                if (ti == 0) memcpy(dram_s[th], s, sizeof s);
                double best_s = 1e30;
                for (int isa = 0; isa <= best; isa++) best_s = fmin(best_s, s[isa]);
                printf("%-6lld %-11s %7.1f %3d %7.2f", (long long)n_tok, names[ti], mb, th, (double)bytes * 1e-9 / rd);
                for (int isa = 0; isa <= best; isa++) printf(" %9.2f", (double)bytes * 1e-9 / s[isa]);
                for (int isa = 0; isa <= best; isa++) printf(" %11.2f", dram_s[th][isa] / s[isa]);
                printf(" %5.0f%%\n", 100.0 * rd / best_s);
                fflush(stdout);
            }
            free(buf);
            for (int64_t b = 0; b < n_blocks; b++) pam_tier_free(t, blocks[b].slot);
            pam_tier_close(t);
        }
        free(K);
        free(V);
        free(blocks);
    }
    pam_cpu_set_isa(NULL);
    free(q);
    free(want);
    free(job);
    free(rj);
    return failed;
}

/* The kernel of each KV type on one block held in cache, in this thread's
 * CPU time (a busy machine's other work does not enter): the arithmetic
 * each type costs per block and KV head, the bound a streamed run can
 * reach at best. */
static int bench_kv_hot(double secs) {
    enum { HOT_B = 16 };
    const int nq = KV_NQ / KV_HEADS, best = (int)pam_cpu_detect();
    char model[256];
    cpu_model(model, sizeof model);
    printf("\n# KV attention kernels on one cached block on %s: %d tokens x %d channels, %d query heads\n"
           "# per KV head, one thread; ns per block and head of this thread's CPU time (best of 3 x %.2f s),\n"
           "# GB/s of the block's bytes, and the f16 kernel's time at the same level / this one's\n",
           model, HOT_B, KV_HD, nq, secs);
    printf("%-5s %6s", "type", "bytes");
    for (int isa = 0; isa <= best; isa++) printf(" %9s %7s", pam_cpu_isa_name((pam_isa)isa), "GB/s");
    for (int isa = 0; isa <= best; isa++) printf(" %6s/f16", pam_cpu_isa_name((pam_isa)isa));
    printf("\n");
    float *q = malloc(sizeof(float) * (size_t)nq * KV_HD), *k = malloc(sizeof(float) * HOT_B * KV_HD);
    float *v = malloc(sizeof(float) * HOT_B * KV_HD), *o = malloc(sizeof(float) * (size_t)nq * KV_HD);
    float m[KV_NQ], l[KV_NQ];
    if (!q || !k || !v || !o) return 1;
    for (int i = 0; i < nq * KV_HD; i++) q[i] = rnd();
    for (int i = 0; i < HOT_B * KV_HD; i++) {
        k[i] = rnd();
        v[i] = rnd();
    }
    double f16_ns[PAM_ISA_COUNT] = {0};
    const pam_kv_type order[] = {PAM_KV_F16, PAM_KV_F32, PAM_KV_BF16, PAM_KV_Q8, PAM_KV_Q4};
    for (int ti = 0; ti < PAM_KV_TYPE_COUNT; ti++) {
        const pam_kv_type type = order[ti];
        const size_t bytes = pam_kvh_bytes(type, KV_HD, HOT_B);
        void *run = malloc(bytes), *qbuf = malloc(pam_kvh_query_bytes(type, nq, KV_HD) + 16);
        float *scratch = malloc(sizeof(float) * pam_kvh_scratch_floats(type, nq, KV_HD, HOT_B));
        if (!run || !qbuf || !scratch) return 1;
        pam_kvh_write(type, KV_HD, HOT_B, run, 0, HOT_B, k, v, KV_HD);
        pam_kvh_query qr;
        pam_kvh_query_init(&qr, type, q, nq, KV_HD, 1.0f / sqrtf((float)KV_HD), qbuf);
        printf("%-5s %6zu", pam_kv_type_name(type), bytes);
        double ns[PAM_ISA_COUNT] = {0};
        for (int isa = 0; isa <= best; isa++) {
            pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)isa));
            ns[isa] = 1e30;
            for (int rep = 0; rep < 3; rep++) {
                long iters = 0;
                double t0 = cpu_s(), t;
                do {
                    for (int i = 0; i < 256; i++) pam_kvh_partial(&qr, run, HOT_B, HOT_B, m, l, o, scratch);
                    iters += 256;
                    t = cpu_s();
                } while (t - t0 < secs);
                ns[isa] = fmin(ns[isa], (t - t0) * 1e9 / (double)iters);
            }
            g_sink += o[0];
            printf(" %9.1f %7.2f", ns[isa], (double)bytes / ns[isa]);
        }
        if (type == PAM_KV_F16) memcpy(f16_ns, ns, sizeof ns);
        for (int isa = 0; isa <= best; isa++) printf(" %10.2f", f16_ns[isa] / ns[isa]);
        printf("\n");
        free(run);
        free(qbuf);
        free(scratch);
    }
    pam_cpu_set_isa(NULL);
    free(q);
    free(k);
    free(v);
    free(o);
    return 0;
}

/* ---- block checksum ---------------------------------------------------------
 * The ssd tier checksums every 32 KiB payload it writes and verifies it on
 * every read, the first touch of freshly read data. pam_checksum64 at each
 * ISA level against the hash it replaced (old_hash below, the tier's own
 * four-lane multiply-rotate hash, kept here only for comparison), over one
 * block hot in L1 and over CSUM_STREAM_BYTES of blocks read once each (a
 * seed per block, as the tier seeds with its slot), beside a plain read of
 * the same buffer. One thread, CPU time, best of 2 rounds of >= secs. */
#define CSUM_BLOCK ((size_t)32 << 10)
#define CSUM_STREAM_BYTES ((size_t)512 << 20)

#define OH_P1 0x9E3779B185EBCA87ull
#define OH_P2 0xC2B2AE3D27D4EB4Full
#define OH_P3 0x165667B19E3779F9ull
#define OH_P4 0x85EBCA77C2B2AE63ull
#define OH_P5 0x27D4EB2F165667C5ull

static inline uint64_t oh_rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t oh_round(uint64_t acc, uint64_t in) { return oh_rotl(acc + in * OH_P2, 31) * OH_P1; }
static inline uint64_t oh_load(const uint8_t *p) {
    uint64_t x;
    memcpy(&x, p, 8);
    return x;
}

static uint64_t old_hash(const void *data, size_t n, uint64_t seed) {
    const uint8_t *p = data;
    uint64_t v1 = seed + OH_P1 + OH_P2, v2 = seed + OH_P2, v3 = seed, v4 = seed - OH_P1;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        v1 = oh_round(v1, oh_load(p + i));
        v2 = oh_round(v2, oh_load(p + i + 8));
        v3 = oh_round(v3, oh_load(p + i + 16));
        v4 = oh_round(v4, oh_load(p + i + 24));
    }
    uint64_t h = oh_rotl(v1, 1) + oh_rotl(v2, 7) + oh_rotl(v3, 12) + oh_rotl(v4, 18);
    h += (uint64_t)n;
    for (; i + 8 <= n; i += 8) h = oh_rotl(h ^ oh_round(0, oh_load(p + i)), 27) * OH_P1 + OH_P4;
    for (; i < n; i++) h = oh_rotl(h ^ (p[i] * OH_P5), 11) * OH_P1;
    h ^= h >> 33;
    h *= OH_P2;
    h ^= h >> 29;
    h *= OH_P3;
    h ^= h >> 32;
    return h;
}

static volatile uint64_t g_csum_sink;

/* Seconds per byte of hashing `bytes` at buf block by block (fn NULL: a
 * plain read of the buffer), repeated to at least 8 MiB between clock reads. */
static double time_csum(uint64_t (*fn)(const void *, size_t, uint64_t), const uint8_t *buf, size_t bytes,
                        double secs) {
    const int avx2 = pam_cpu_detect() >= PAM_ISA_AVX2;
    const size_t reps = bytes >= ((size_t)8 << 20) ? 1 : ((size_t)8 << 20) / bytes;
    double best = 1e30;
    for (int round = 0; round < 2; round++) {
        int64_t iters = 0;
        double t0 = cpu_s(), t;
        do {
            uint64_t s = 0;
            for (size_t r = 0; r < reps; r++) {
                if (fn)
                    for (size_t off = 0; off < bytes; off += CSUM_BLOCK) s += fn(buf + off, CSUM_BLOCK, off + r);
                else if (avx2)
                    s += pam_membw_sum_avx2((const uint64_t *)(const void *)buf, bytes / 8);
                else
                    s += pam_membw_sum_ref((const uint64_t *)(const void *)buf, bytes / 8);
            }
            g_csum_sink += s;
            iters++;
            t = cpu_s();
        } while (t - t0 < secs);
        best = fmin(best, (t - t0) / (double)iters / (double)(reps * bytes));
    }
    return best;
}

static int bench_csum(double secs) {
    const int best = (int)pam_cpu_detect();
    uint8_t *buf = aligned_alloc(4096, CSUM_STREAM_BYTES);
    if (!buf) {
        fprintf(stderr, "csum: no memory for %zu MiB\n", CSUM_STREAM_BYTES >> 20);
        return 1;
    }
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < CSUM_STREAM_BYTES; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(buf + i, &x, 8);
    }
    /* every level agrees with the scalar one before timing */
    for (size_t off = 0; off < 64 * CSUM_BLOCK; off += CSUM_BLOCK + 4093) {
        pam_cpu_set_isa("scalar");
        uint64_t want = pam_checksum64(buf + off, CSUM_BLOCK - off % 97, off);
        for (int isa = 1; isa <= best; isa++) {
            pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)isa));
            if (pam_checksum64(buf + off, CSUM_BLOCK - off % 97, off) != want) {
                fprintf(stderr, "csum: %s differs from scalar at offset %zu\n", pam_cpu_isa(), off);
                free(buf);
                return 1;
            }
        }
    }
    printf("\n# block checksum of %zu KiB blocks, one thread, GB/s (CPU time, best of 2 x >= %.2f s): the old\n"
           "# ssd tier hash, pam_checksum64 per ISA level, and a plain read of the same bytes\n",
           CSUM_BLOCK >> 10, secs);
    printf("%-7s %7s %9s %9s", "case", "MB", "read", "old");
    for (int isa = 0; isa <= best; isa++) printf(" %9s", pam_cpu_isa_name((pam_isa)isa));
    printf(" %9s\n", "best/old");
    for (int stream = 0; stream < 2; stream++) {
        size_t bytes = stream ? CSUM_STREAM_BYTES : CSUM_BLOCK;
        double rd = time_csum(NULL, buf, bytes, secs), old = time_csum(old_hash, buf, bytes, secs);
        double lvl[PAM_ISA_COUNT];
        for (int isa = best; isa >= 0; isa--) {
            pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)isa));
            lvl[isa] = time_csum(pam_checksum64, buf, bytes, secs);
        }
        printf("%-7s %7.2f %9.1f %9.1f", stream ? "stream" : "hot", (double)bytes / (1 << 20), 1e-9 / rd,
               1e-9 / old);
        for (int isa = 0; isa <= best; isa++) printf(" %9.1f", 1e-9 / lvl[isa]);
        printf(" %9.2f\n", old / lvl[best]);
        fflush(stdout);
    }
    pam_cpu_set_isa(NULL);
    free(buf);
    return 0;
}

int main(int argc, char **argv) {
    int64_t rows = argc > 2 ? atoll(argv[1]) : 4096, cols = argc > 2 ? atoll(argv[2]) : 4096;
    int max_threads = argc > 3 ? atoi(argv[3]) : 2;
    double secs = argc > 4 ? atof(argv[4]) : 0.3;
    const char *what = argc > 5 ? argv[5] : "all";
    const int all = strcmp(what, "all") == 0;
    const int do_decode = all || strcmp(what, "decode") == 0, do_prefill = all || strcmp(what, "prefill") == 0;
    const int do_kv = all || strcmp(what, "kv") == 0, do_csum = all || strcmp(what, "csum") == 0;
    const int do_kv_hot = do_kv || strcmp(what, "kvhot") == 0;
    if (rows <= 0 || cols <= 0 || cols % 256 || max_threads < 1 || max_threads > 16 ||
        !(do_decode || do_prefill || do_kv_hot || do_csum)) {
        fprintf(stderr, "usage: bench_kernels [rows cols(multiple of 256) [max_threads [secs "
                        "[all|decode|prefill|kv|kvhot|csum]]]]\n");
        return 2;
    }
    const pam_dtype types[] = {PAM_DT_F32,  PAM_DT_F16,  PAM_DT_BF16, PAM_DT_Q8_0,
                               PAM_DT_Q4_0, PAM_DT_Q4_K, PAM_DT_Q6_K};
    const int n_types = (int)(sizeof types / sizeof types[0]);
    const int best = (int)pam_cpu_detect();
    /* the chooser's variants: the union of their names, in registration order */
    pam_vec_kernels_register();
    const char *vnames[8];
    int n_vn = 0;
    for (int ti = 0; ti < n_types; ti++) {
        int id = pam_vec_kernel_id(types[ti]);
        for (int v = 0; v < pam_ksel_n_variants(id); v++) {
            const pam_ksel_variant *kv = pam_ksel_variant_at(id, v);
            int seen = !pam_ksel_can_run(kv);
            for (int k = 0; k < n_vn; k++) seen |= strcmp(vnames[k], kv->name) == 0;
            if (!seen && n_vn < 8) vnames[n_vn++] = kv->name;
        }
    }
    printf("# cpu: %s\n# chosen matvec variants:", pam_cpu_model());
    for (int ti = 0; ti < n_types; ti++) {
        int id = pam_vec_kernel_id(types[ti]);
        const pam_ksel_variant *kv = pam_ksel_choice(id);
        printf(" %s=%s(%s)", pam_dtype_name(types[ti]), kv->name, pam_ksel_how(id));
    }
    printf("\n# cache: %s\n", pam_ksel_cache_path());
    printf("# matvec %lld x %lld, detected ISA %s, best call of >= %.2f s per point, best of 2 rounds;\n"
           "# each call reads the next of several copies of the matrix (>= 256 MiB together, past the\n"
           "# last-level cache, as decode streams its weights); read: a plain read of the same bytes;\n"
           "# 1 thread in thread CPU time, more threads in wall time\n",
           (long long)rows, (long long)cols, pam_cpu_isa_name((pam_isa)best), secs);

    float *src = malloc((size_t)rows * (size_t)cols * sizeof *src);
    float *x = malloc((size_t)cols * sizeof *x), *y = malloc((size_t)rows * sizeof *y);
    float *want = malloc((size_t)rows * sizeof *want);
    size_t max_bytes = (size_t)rows * (size_t)cols * 4;
    const size_t stream_bytes = (size_t)256 << 20;
    size_t w_alloc = (do_decode ? stream_bytes : 0) + max_bytes;
    void *W = aligned_alloc(64, (w_alloc + 63) & ~(size_t)63);
    void *act = malloc(pam_activation_bytes(PAM_DT_F32, cols));
    if (!src || !x || !y || !want || !W || !act) return 1;
    for (int64_t i = 0; i < rows * cols; i++) src[i] = rnd();
    for (int64_t i = 0; i < cols; i++) x[i] = rnd();

    pam_pool *pools[17] = {0};
    for (int t = 1; t <= max_threads; t++)
        if (pam_pool_create(t, &pools[t]) != PAM_OK) return 1;

    if (do_decode) {
        printf("%-5s %7s %3s %9s", "type", "MB", "thr", "read");
        for (int v = 0; v < n_vn; v++) printf(" %9s", vnames[v]);
        printf(" %9s", "chosen");
        for (int v = 1; v < n_vn; v++) printf(" %9s%%", vnames[v]);
        printf(" %9s%%\n", "chosen");
    }

    int failed = 0;
    for (int ti = 0; ti < n_types && do_decode; ti++) {
        pam_dtype type = types[ti];
        const int id = pam_vec_kernel_id(type);
        size_t row_bytes = 0;
        pam_dtype_row_bytes(type, cols, &row_bytes);
        size_t bytes = row_bytes * (size_t)rows;
        int n_copies = (int)((stream_bytes + bytes - 1) / bytes);
        if (n_copies < 1) n_copies = 1;
        for (int64_t r = 0; r < rows; r++)
            pam_quantize_row(type, src + r * cols, (uint8_t *)W + (size_t)r * row_bytes, cols);
        for (int c = 1; c < n_copies; c++) memcpy((uint8_t *)W + (size_t)c * bytes, W, bytes);
        const pam_ksel_variant *chosen = pam_ksel_choice(id);

        /* check every variant against the reference before timing it */
        pam_quantize_activations(type, x, act, cols);
        double amax = 0;
        for (int64_t r = 0; r < rows; r++) {
            want[r] = pam_vec_dot_ref(type, (uint8_t *)W + (size_t)r * row_bytes, act, cols);
            amax = fmax(amax, fabs(want[r]));
        }
        int has[8] = {0};
        for (int v = 0; v < n_vn; v++) {
            if (pam_ksel_force(id, vnames[v]) != PAM_OK) continue;
            has[v] = 1;
            pam_matvec(pools[max_threads], type, W, rows, cols, x, y);
            for (int64_t r = 0; r < rows; r++)
                if (!(fabs(y[r] - want[r]) <= 1e-5 * amax + 1e-6)) {
                    fprintf(stderr, "%s %s row %lld: %g vs ref %g\n", pam_dtype_name(type), vnames[v], (long long)r,
                            y[r], want[r]);
                    failed = 1;
                    break;
                }
        }
        pam_ksel_force(id, NULL);

        read_job rj = {.p = W, .n_words = (int64_t)(bytes / 8)};
        for (int t = 1; t <= max_threads; t++) {
            double best_s[8], read_s = 1e30, chosen_s = 1e30;
            for (int k = 0; k < 8; k++) best_s[k] = 1e30;
            /* scalar is timed once at 1 thread only: it is far from bandwidth */
            for (int round = 0; round < 2; round++) {
                read_s = fmin(read_s, time_read_copies(pools[t], &rj, n_copies, secs));
                for (int v = n_vn - 1; v >= 0; v--) {
                    if (!has[v] || (v == 0 && (t > 1 || round > 0))) continue;
                    pam_ksel_force(id, vnames[v]);
                    best_s[v] = fmin(best_s[v], time_matvec(pools[t], type, W, bytes, n_copies, rows, cols, x, y, secs));
                }
                pam_ksel_force(id, NULL);
                chosen_s = fmin(chosen_s, time_matvec(pools[t], type, W, bytes, n_copies, rows, cols, x, y, secs));
            }
            double gb = (double)bytes * 1e-9;
            printf("%-5s %7.1f %3d %9.1f", pam_dtype_name(type), (double)bytes / (1 << 20), t, gb / read_s);
            for (int v = 0; v < n_vn; v++)
                if (best_s[v] < 1e30)
                    printf(" %9.1f", gb / best_s[v]);
                else
                    printf(" %9s", "-");
            printf(" %9s", chosen->name);
            for (int v = 1; v < n_vn; v++)
                if (best_s[v] < 1e30)
                    printf(" %9.0f%%", 100.0 * read_s / best_s[v]);
                else
                    printf(" %10s", "-");
            printf(" %9.0f%%\n", 100.0 * read_s / chosen_s);
            fflush(stdout);
        }
        /* hot-cache kernel rate, 1 thread */
        double hot[8];
        int64_t hot_rows = 1;
        for (int v = 0; v < n_vn; v++) hot[v] = 1e30;
        for (int round = 0; round < 3; round++)
            for (int v = n_vn - 1; v >= 0; v--) {
                if (!has[v]) continue;
                pam_ksel_force(id, vnames[v]);
                hot[v] = fmin(hot[v], time_hot(type, W, row_bytes, cols, act, secs / 2, &hot_rows));
            }
        pam_ksel_force(id, NULL);
        printf("%-5s %7.1f %3s %9s", pam_dtype_name(type), (double)(row_bytes * (size_t)hot_rows) / (1 << 20),
               "hot", "-");
        for (int v = 0; v < n_vn; v++)
            if (has[v])
                printf(" %9.1f", (double)(row_bytes * (size_t)hot_rows) * 1e-9 / hot[v]);
            else
                printf(" %9s", "-");
        printf("\n");
    }

    /* prefill: matmul with PREFILL_N tokens, every level, 1..max threads */
    enum { PREFILL_N = 64 };
    float *X = malloc((size_t)PREFILL_N * (size_t)cols * sizeof *X);
    float *Y = malloc((size_t)PREFILL_N * (size_t)rows * sizeof *Y);
    if (!X || !Y) return 1;
    for (int64_t i = 0; i < PREFILL_N * cols; i++) X[i] = rnd();
    if (do_prefill) {
        printf("\n# prefill: matmul %lld x %lld with %d tokens, GMAC/s (best of 3 x %.2f s)\n", (long long)rows,
               (long long)cols, PREFILL_N, secs);
        printf("%-5s %3s", "type", "thr");
        for (int isa = 0; isa <= best; isa++) printf(" %9s", pam_cpu_isa_name((pam_isa)isa));
        for (int isa = PAM_ISA_AVX2 + 1; isa <= best; isa++) printf(" %6s/avx2", pam_cpu_isa_name((pam_isa)isa));
        printf("\n");
    }
    for (int ti = 0; ti < n_types && do_prefill; ti++) {
        pam_dtype type = types[ti];
        size_t row_bytes = 0;
        pam_dtype_row_bytes(type, cols, &row_bytes);
        for (int64_t r = 0; r < rows; r++)
            pam_quantize_row(type, src + r * cols, (uint8_t *)W + (size_t)r * row_bytes, cols);
        /* check first: every token of the matmul equals its own matvec, bit for bit */
        for (int isa = 0; isa <= best; isa++) {
            pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)isa));
            pam_matmul(pools[max_threads], type, W, rows, cols, X, PREFILL_N, Y);
            for (int64_t i = 0; i < PREFILL_N; i += 7) {
                pam_matvec(NULL, type, W, rows, cols, X + i * cols, y);
                if (memcmp(y, Y + i * rows, sizeof(float) * (size_t)rows) != 0) {
                    fprintf(stderr, "%s %s: matmul token %lld differs from its matvec\n", pam_dtype_name(type),
                            pam_cpu_isa(), (long long)i);
                    failed = 1;
                    break;
                }
            }
        }
        for (int t = 1; t <= max_threads; t++) {
            printf("%-5s %3d", pam_dtype_name(type), t);
            double rate[PAM_ISA_COUNT] = {0};
            for (int isa = 0; isa <= best; isa++) {
                pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)isa));
                if (isa == 0 && t > 1) {
                    printf(" %9s", "-");
                } else {
                    rate[isa] = time_matmul(pools[t], type, W, rows, cols, X, PREFILL_N, Y, secs / 3);
                    printf(" %9.2f", rate[isa]);
                }
                fflush(stdout);
            }
            for (int isa = PAM_ISA_AVX2 + 1; isa <= best; isa++) printf(" %11.2f", rate[isa] / rate[PAM_ISA_AVX2]);
            printf("\n");
        }
    }
    free(X);
    free(Y);
    if (do_kv_hot && !failed) failed = bench_kv_hot(secs / 3);
    if (do_kv && !failed) failed = bench_kv(pools, max_threads, secs);
    if (do_csum && !failed) failed = bench_csum(secs);
    pam_cpu_set_isa(NULL);
    for (int t = 1; t <= max_threads; t++) pam_pool_destroy(pools[t]);
    free(src);
    free(x);
    free(y);
    free(want);
    free(W);
    free(act);
    return failed;
}
