/* STREAM-like read bandwidth (see membw.h).
 *
 * Word i of the buffer holds i, so the sum of any pass is known in advance
 * (n(n-1)/2 mod 2^64) and checked. The buffer is cut into more chunks than
 * threads so that the pool's dynamic claiming keeps every thread busy to the
 * end of a pass. */
#include "kernels/membw.h"

#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "core/timing.h"
#include "kernels/cpu.h"

#define MEMBW_CHUNKS_PER_THREAD 8
#define MEMBW_PAGE 4096
#define MEMBW_MIN_BYTES ((size_t)64 << 10)

uint64_t pam_membw_sum_ref(const uint64_t *p, size_t n) {
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (size_t i = 0; i < n; i += 4) {
        a0 += p[i];
        a1 += p[i + 1];
        a2 += p[i + 2];
        a3 += p[i + 3];
    }
    return a0 + a1 + a2 + a3;
}

typedef struct membw_job {
    uint64_t *buf;
    size_t n_words;
    int64_t n_chunks;
    int use_avx2;
    uint64_t *sums; /* [n_chunks] */
} membw_job;

static void membw_chunk(const membw_job *j, int64_t c, size_t *lo, size_t *hi) {
    /* Chunk bounds on multiples of 32 words (256 bytes), the loop's stride. */
    size_t units = j->n_words / 32;
    *lo = units * (size_t)c / (size_t)j->n_chunks * 32;
    *hi = units * (size_t)(c + 1) / (size_t)j->n_chunks * 32;
}

static void membw_fill_task(void *ctx, int64_t c, int thread) {
    const membw_job *j = ctx;
    size_t lo, hi;
    membw_chunk(j, c, &lo, &hi);
    for (size_t i = lo; i < hi; i++) j->buf[i] = i;
}

static void membw_read_task(void *ctx, int64_t c, int thread) {
    const membw_job *j = ctx;
    size_t lo, hi;
    membw_chunk(j, c, &lo, &hi);
    j->sums[c] = j->use_avx2 ? pam_membw_sum_avx2(j->buf + lo, hi - lo) : pam_membw_sum_ref(j->buf + lo, hi - lo);
}

pam_status pam_membw_read_gbps(pam_pool *pool, size_t bytes, int reps, double *gbps) {
    *gbps = 0;
    if (reps < 1) return PAM_ERR(PAM_ERR_INVALID, "bandwidth: %d repetitions", reps);
    bytes = bytes / MEMBW_PAGE * MEMBW_PAGE;
    if (bytes < MEMBW_MIN_BYTES)
        return PAM_ERR(PAM_ERR_INVALID, "bandwidth: buffer of %zu bytes is below %zu", bytes, MEMBW_MIN_BYTES);
    membw_job j = {.n_words = bytes / sizeof(uint64_t),
                   .n_chunks = (int64_t)(pool ? pam_pool_n_threads(pool) : 1) * MEMBW_CHUNKS_PER_THREAD,
                   .use_avx2 = pam_cpu_isa_level() >= PAM_ISA_AVX2};
    j.buf = aligned_alloc(MEMBW_PAGE, bytes);
    j.sums = calloc((size_t)j.n_chunks, sizeof *j.sums);
    if (!j.buf || !j.sums) {
        free(j.buf);
        free(j.sums);
        return PAM_ERR(PAM_ERR_NOMEM, "bandwidth: buffer of %zu MiB", bytes >> 20);
    }
    pam_pool_run(pool, membw_fill_task, &j, j.n_chunks);
    uint64_t n = j.n_words, want = (n % 2 == 0) ? (n / 2) * (n - 1) : n * ((n - 1) / 2);
    int64_t best_ns = INT64_MAX;
    pam_status st = PAM_OK;
    for (int r = 0; r < reps && st == PAM_OK; r++) {
        int64_t t0 = pam_time_ns();
        pam_pool_run(pool, membw_read_task, &j, j.n_chunks);
        int64_t dt = pam_time_ns() - t0;
        uint64_t sum = 0;
        for (int64_t c = 0; c < j.n_chunks; c++) sum += j.sums[c];
        if (sum != want)
            st = PAM_ERR(PAM_ERR_CORRUPT, "bandwidth: pass %d summed to %llu, expected %llu", r,
                         (unsigned long long)sum, (unsigned long long)want);
        if (dt < best_ns) best_ns = dt;
    }
    free(j.buf);
    free(j.sums);
    if (st != PAM_OK) return st;
    *gbps = (double)bytes / (double)(best_ns > 0 ? best_ns : 1);
    return PAM_OK;
}
