/* Row-parallel matrix products.
 *
 * Activations are brought into the vec-dot type once per call. Output rows are
 * split into tasks of whole 16-row blocks (16 floats = one 64-byte line of y,
 * so two threads never write one line when y is line-aligned). Inside a task,
 * each 16-row block of W is walked once for all n tokens while it is hot in
 * cache: weights, the dominant traffic, are read from memory once per call.
 *
 * With several tokens and a tiled kernel for the type (pam_vec_tile_select),
 * tasks are whole panels of PAM_TILE_ROWS rows instead: a panel stays in L2
 * (Q8_0/Q4_0: repacked once into per-thread scratch) while every token
 * passes over it, several tokens per weight load; the activations are also
 * brought once into the tile kernel's own form (pam_vec_tile_prep_act).
 *
 * Kernels with a prepared-activation form (pam_vec_prep_select) get each
 * token's shared activation work done once per call, then read the rows one
 * at a time (one stream, which DRAM prefetching handles best).
 *
 * Invariant: Y[i*rows + r] is exactly one pam_vec_dot over row r and token i
 * (the tiled kernels reproduce its arithmetic bit for bit), so it is
 * bit-identical whatever n, the thread count or the chunking. */
#include "kernels/matmul.h"

#include <math.h>
#include <stdalign.h>
#include <stdint.h>
#include <stdlib.h>

#include "kernels/quant.h"

#define ROW_BLOCK 16
/* Tasks per thread: enough slack for dynamic claiming to even out stragglers.
 * Tiled products are compute bound and claim whole panels, so they split
 * finer: a thread left idle by the last task waits for less of the product. */
#define TASKS_PER_THREAD 4
#define TILE_TASKS_PER_THREAD 16
/* Activations up to this size live on the stack (decode: n = 1). */
#define STACK_ACT_BYTES 16384
/* Fewest tokens for which the tiled kernels (and their repacking) pay. */
#define TILE_MIN_N 4

typedef struct {
    pam_vec_dot_fn dot;
    pam_vec_dot4_fn dot4; /* NULL if none */
    const pam_vec_prep *prep; /* rows path over prepared activations, NULL if none */
    uint8_t *prepared;        /* n tokens, prep_bytes apart (64-byte multiples) */
    size_t prep_bytes;
    pam_vec_tile_fn tile; /* NULL unless used for this call */
    uint8_t *scratch;     /* tile: scratch_bytes per thread */
    size_t scratch_bytes;
    uint8_t *tile_act;    /* tile: n tokens in its own form, tile_act_bytes apart (NULL: reads act) */
    size_t tile_act_bytes;
    const uint8_t *W;
    size_t row_bytes;
    const uint8_t *act; /* n tokens, act_bytes apart */
    size_t act_bytes;
    int64_t rows, cols, n, chunk_rows;
    float *Y;
    /* quantisation phase */
    pam_dtype type;
    const float *X;
    uint8_t *act_out;
} mm_job;

static void quantize_task(void *ctx, int64_t i, int thread) {
    mm_job *j = ctx;
    pam_quantize_activations(j->type, j->X + i * j->cols, j->act_out + (size_t)i * j->act_bytes,
                             j->cols);
    if (j->tile_act)
        pam_vec_tile_prep_act(j->type, j->act_out + (size_t)i * j->act_bytes, j->cols,
                              j->tile_act + (size_t)i * j->tile_act_bytes);
    if (j->prep)
        j->prep->prep(j->act_out + (size_t)i * j->act_bytes, j->cols, j->prepared + (size_t)i * j->prep_bytes);
}

static void tile_task(void *ctx, int64_t task, int thread) {
    const mm_job *j = ctx;
    int64_t r0 = task * j->chunk_rows;
    int64_t r1 = r0 + j->chunk_rows < j->rows ? r0 + j->chunk_rows : j->rows;
    for (int64_t r = r0; r < r1; r += PAM_TILE_ROWS) {
        int64_t nr = r1 - r < PAM_TILE_ROWS ? r1 - r : PAM_TILE_ROWS;
        uint8_t *scratch = j->scratch ? j->scratch + (size_t)thread * j->scratch_bytes : NULL;
        if (j->tile_act)
            j->tile(j->W + (size_t)r * j->row_bytes, j->row_bytes, nr, j->tile_act, j->tile_act_bytes, j->n, j->cols,
                    j->Y + r, j->rows, scratch);
        else
            j->tile(j->W + (size_t)r * j->row_bytes, j->row_bytes, nr, j->act, j->act_bytes, j->n, j->cols, j->Y + r,
                    j->rows, scratch);
    }
}

static void rows_task(void *ctx, int64_t task, int thread) {
    const mm_job *j = ctx;
    int64_t r0 = task * j->chunk_rows;
    int64_t r1 = r0 + j->chunk_rows < j->rows ? r0 + j->chunk_rows : j->rows;
    for (int64_t rb = r0; rb < r1; rb += ROW_BLOCK) {
        int64_t re = rb + ROW_BLOCK < r1 ? rb + ROW_BLOCK : r1;
        for (int64_t i = 0; i < j->n; i++) {
            const uint8_t *a = j->act + (size_t)i * j->act_bytes;
            float *y = j->Y + i * j->rows;
            int64_t r = rb;
            if (j->prep) { /* bit-identical to dot, row by row */
                const uint8_t *p = j->prepared + (size_t)i * j->prep_bytes;
                for (; r < re; r++) y[r] = j->prep->dot(j->W + (size_t)r * j->row_bytes, p, j->cols);
            }
            if (j->dot4) /* bit-identical to dot row by row, so n and chunking still do not matter */
                for (; r + 4 <= re; r += 4) j->dot4(j->W + (size_t)r * j->row_bytes, j->row_bytes, a, j->cols, y + r);
            for (; r < re; r++) y[r] = j->dot(j->W + (size_t)r * j->row_bytes, a, j->cols);
        }
    }
}

/* Prepares one product: activations quantised (into stack_act when they fit,
 * else *heap_act), tile scratch, task split. Returns the number of tasks, or
 * 0 when there is nothing to run (Y is then NaN on a bad shape or failed
 * allocation, made loud rather than silently left as stale output). */
static int64_t mm_setup(mm_job *j, pam_pool *pool, pam_dtype type, const void *W, int64_t rows, int64_t cols,
                        const float *X, int64_t n, float *Y, uint8_t *stack_act, size_t stack_bytes,
                        uint8_t **heap_act, pam_task_fn *task) {
    *heap_act = NULL;
    if (rows <= 0 || n <= 0) return 0;
    size_t row_bytes;
    if (cols < 0 || pam_dtype_row_bytes(type, cols, &row_bytes) != PAM_OK || !pam_dtype_get(type)->supported) {
        /* Shapes are validated when a model loads; a bad one here is a bug. */
        for (int64_t i = 0; i < rows * n; i++) Y[i] = NAN;
        return 0;
    }
    *j = (mm_job){
        .dot = pam_vec_dot_select(type),
        .dot4 = pam_vec_dot4_select(type),
        .W = W,
        .row_bytes = row_bytes,
        .act_bytes = pam_activation_bytes(type, cols),
        .rows = rows,
        .cols = cols,
        .n = n,
        .Y = Y,
        .type = type,
        .X = X,
    };
    int n_threads = pool ? pam_pool_n_threads(pool) : 1;
    if (n >= TILE_MIN_N && (j->tile = pam_vec_tile_select(type)) != NULL) {
        j->scratch_bytes = (pam_vec_tile_scratch_bytes(type, cols) + 63) & ~(size_t)63;
        j->tile_act_bytes = (pam_vec_tile_act_bytes(type, cols) + 63) & ~(size_t)63;
        if (j->tile_act_bytes) j->tile_act = aligned_alloc(64, j->tile_act_bytes * (size_t)n);
        if (j->scratch_bytes) j->scratch = malloc(j->scratch_bytes * (size_t)n_threads);
        if ((j->tile_act_bytes && !j->tile_act) || (j->scratch_bytes && !j->scratch)) { /* rows path: neither */
            free(j->tile_act);
            free(j->scratch);
            j->tile_act = NULL;
            j->scratch = NULL;
            j->tile = NULL;
        }
    }
    if (!j->tile && (j->prep = pam_vec_prep_select(type)) != NULL) {
        j->prep_bytes = (j->prep->bytes(cols) + 63) & ~(size_t)63;
        j->prepared = aligned_alloc(64, j->prep_bytes * (size_t)n);
        if (!j->prepared) j->prep = NULL; /* the plain rows path needs nothing */
    }
    if (pam_vec_dot_type(type) == PAM_DT_F32) {
        j->act = (const uint8_t *)X; /* the float kernels read x as it is */
    } else {
        size_t total = j->act_bytes * (size_t)n;
        if (total <= stack_bytes) {
            j->act_out = stack_act;
        } else {
            *heap_act = malloc(total);
            if (!*heap_act) {
                free(j->scratch);
                j->scratch = NULL;
                free(j->tile_act);
                j->tile_act = NULL;
                free(j->prepared);
                j->prepared = NULL;
                for (int64_t i = 0; i < rows * n; i++) Y[i] = NAN;
                return 0;
            }
            j->act_out = *heap_act;
        }
        if (n > 1)
            pam_pool_run(pool, quantize_task, j, n);
        else
            quantize_task(j, 0, 0);
        j->act = j->act_out;
    }
    int64_t block = j->tile ? PAM_TILE_ROWS : ROW_BLOCK;
    int64_t n_blocks = (rows + block - 1) / block;
    int64_t want_tasks = (int64_t)n_threads * (j->tile ? TILE_TASKS_PER_THREAD : TASKS_PER_THREAD);
    int64_t blocks_per_task = (n_blocks + want_tasks - 1) / want_tasks;
    if (blocks_per_task < 1) blocks_per_task = 1;
    j->chunk_rows = blocks_per_task * block;
    *task = j->tile ? tile_task : rows_task;
    return (rows + j->chunk_rows - 1) / j->chunk_rows;
}

void pam_matmul(pam_pool *pool, pam_dtype type, const void *W, int64_t rows, int64_t cols,
                const float *X, int64_t n, float *Y) {
    pam_mm one = {type, W, rows, Y};
    pam_matmul_multi(pool, &one, 1, cols, X, n);
}

#define MM_MAX 4

typedef struct {
    mm_job *jobs;
    pam_task_fn fn[MM_MAX];
    int64_t first[MM_MAX + 1]; /* task index where each product starts */
    int n_mm;
} multi_job;

static void multi_task(void *ctx, int64_t task, int thread) {
    const multi_job *mj = ctx;
    int k = 0;
    while (task >= mj->first[k + 1]) k++;
    mj->fn[k](&mj->jobs[k], task - mj->first[k], thread);
}

void pam_matmul_multi(pam_pool *pool, const pam_mm *mm, int n_mm, int64_t cols, const float *X, int64_t n) {
    if (n_mm > MM_MAX) { /* larger groups: in slices, same results */
        for (int k = 0; k < n_mm; k += MM_MAX)
            pam_matmul_multi(pool, mm + k, n_mm - k < MM_MAX ? n_mm - k : MM_MAX, cols, X, n);
        return;
    }
    mm_job jobs[MM_MAX];
    uint8_t *heap[MM_MAX] = {NULL};
    alignas(64) uint8_t stack_act[MM_MAX][STACK_ACT_BYTES];
    multi_job mj = {.jobs = jobs, .n_mm = n_mm};
    mj.first[0] = 0;
    for (int k = 0; k < n_mm; k++) {
        jobs[k].scratch = NULL;
        jobs[k].tile_act = NULL;
        jobs[k].prepared = NULL;
        int64_t nt = mm_setup(&jobs[k], pool, mm[k].type, mm[k].W, mm[k].rows, cols, X, n, mm[k].Y, stack_act[k],
                              sizeof stack_act[k], &heap[k], &mj.fn[k]);
        mj.first[k + 1] = mj.first[k] + nt;
    }
    int64_t total = mj.first[n_mm];
    int n_threads = pool ? pam_pool_n_threads(pool) : 1;
    /* One pool job for all products: one barrier instead of n_mm. Each
     * output is still one dot over its row, so results are unchanged. */
    if (n_threads == 1 || total == 1)
        for (int64_t t = 0; t < total; t++) multi_task(&mj, t, 0);
    else if (total > 0)
        pam_pool_run(pool, multi_task, &mj, total);
    for (int k = 0; k < n_mm; k++) {
        free(heap[k]);
        free(jobs[k].scratch);
        free(jobs[k].tile_act);
        free(jobs[k].prepared);
    }
}

void pam_matvec(pam_pool *pool, pam_dtype type, const void *W, int64_t rows, int64_t cols,
                const float *x, float *y) {
    pam_matmul(pool, type, W, rows, cols, x, 1, y);
}
