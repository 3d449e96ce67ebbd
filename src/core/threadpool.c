/* Persistent worker pool.
 *
 * A job is published as one 64-bit atomic `state` = generation << 32 | next
 * task index. Even generations are open jobs; the caller first moves to an
 * odd ("closed") generation, then writes the job's fields (fn, ctx,
 * n_tasks), then opens the next even generation. Tasks are claimed with a
 * compare-and-swap that also checks the generation, so a worker holding
 * fields of one job can never claim a task of another: fields are only
 * rewritten while the generation is odd, where no claim succeeds.
 *
 * The caller waits for tasks *completed* (`done`), never for workers to
 * acknowledge, and runs tasks itself. On a busy machine a descheduled worker
 * therefore costs at most the task it holds, not a scheduler time slice per
 * job (decode issues hundreds of small jobs per token).
 *
 * Workers spin briefly for the next job, then sleep on a condition variable. */
#include "core/threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/status.h"

struct pam_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    _Atomic uint64_t state; /* generation << 32 | next task */
    atomic_int stop;
    atomic_int n_sleeping;
    /* Job fields, written only while the generation is odd. A worker that
     * slept through a job may read them while they are rewritten; its claim
     * then fails, so the value is never used. Release/acquire on them makes
     * a worker that sees new fields also see the closed generation. */
    _Atomic(pam_task_fn) fn;
    _Atomic(void *) ctx;
    _Atomic int64_t n_tasks;
    _Atomic int64_t done;
};

typedef struct {
    pam_pool *pool;
    int id;
} worker_arg;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Runs tasks of generation gen until none is left; returns when the job has
 * no unclaimed task or the generation moved on. */
static void run_tasks(pam_pool *p, uint32_t gen, pam_task_fn fn, void *ctx, int64_t n_tasks, int id) {
    uint64_t s = atomic_load_explicit(&p->state, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(s >> 32) != gen) return;
        uint32_t t = (uint32_t)s;
        if ((int64_t)t >= n_tasks) return;
        if (atomic_compare_exchange_weak_explicit(&p->state, &s, s + 1, memory_order_acq_rel,
                                                  memory_order_acquire)) {
            fn(ctx, t, id);
            atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
            s = atomic_load_explicit(&p->state, memory_order_acquire);
        }
    }
}

static void *worker_main(void *arg) {
    worker_arg wa = *(worker_arg *)arg;
    free(arg);
    pam_pool *p = wa.pool;
    uint32_t seen = 0;
    for (;;) {
        uint32_t gen = seen;
        for (int spin = 0; spin < 4000; spin++) {
            gen = (uint32_t)(atomic_load_explicit(&p->state, memory_order_acquire) >> 32);
            if ((gen != seen && !(gen & 1)) || atomic_load_explicit(&p->stop, memory_order_relaxed)) break;
            cpu_relax();
        }
        if ((gen == seen || (gen & 1)) && !atomic_load(&p->stop)) {
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->n_sleeping, 1);
            while (((gen = (uint32_t)(atomic_load(&p->state) >> 32)) == seen || (gen & 1)) && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->n_sleeping, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) break;
        seen = gen;
        /* Fields read here belong to `gen` whenever a claim in run_tasks
         * succeeds (see the invariant at the top). */
        pam_task_fn fn = atomic_load_explicit(&p->fn, memory_order_acquire);
        void *ctx = atomic_load_explicit(&p->ctx, memory_order_acquire);
        int64_t n_tasks = atomic_load_explicit(&p->n_tasks, memory_order_acquire);
        run_tasks(p, gen, fn, ctx, n_tasks, wa.id);
    }
    return NULL;
}

pam_status pam_pool_create(int n_threads, pam_pool **out) {
    *out = NULL;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > 1024) return PAM_ERR(PAM_ERR_INVALID, "thread count %d too large", n_threads);
    pam_pool *p = calloc(1, sizeof *p);
    if (!p) return PAM_ERR(PAM_ERR_NOMEM, "thread pool");
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    atomic_init(&p->state, 0);
    atomic_init(&p->stop, 0);
    atomic_init(&p->n_sleeping, 0);
    atomic_init(&p->done, 0);
    atomic_init(&p->fn, NULL);
    atomic_init(&p->ctx, NULL);
    atomic_init(&p->n_tasks, 0);
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    if (!p->threads) {
        free(p);
        return PAM_ERR(PAM_ERR_NOMEM, "thread pool");
    }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (wa) {
            wa->pool = p;
            wa->id = i;
        }
        if (!wa || pthread_create(&p->threads[i], NULL, worker_main, wa) != 0) {
            free(wa);
            p->n_threads = i; /* destroy joins only the started ones */
            pam_pool_destroy(p);
            return PAM_ERR(PAM_ERR_NOMEM, "cannot start worker thread %d", i);
        }
    }
    *out = p;
    return PAM_OK;
}

void pam_pool_destroy(pam_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    free(p);
}

int pam_pool_n_threads(const pam_pool *p) { return p ? p->n_threads : 1; }

void pam_pool_run(pam_pool *p, pam_task_fn fn, void *ctx, int64_t n_tasks) {
    if (n_tasks <= 0) return;
    if (!p || p->n_threads == 1 || n_tasks == 1) {
        for (int64_t t = 0; t < n_tasks; t++) fn(ctx, t, 0);
        return;
    }
    /* Close the previous generation before touching the fields: from here
     * until the new one opens, every claim fails. */
    uint32_t gen = (uint32_t)(atomic_load_explicit(&p->state, memory_order_relaxed) >> 32) + 1;
    atomic_store_explicit(&p->state, (uint64_t)gen << 32, memory_order_seq_cst);
    atomic_store_explicit(&p->fn, fn, memory_order_release);
    atomic_store_explicit(&p->ctx, ctx, memory_order_release);
    atomic_store_explicit(&p->n_tasks, n_tasks, memory_order_release);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    gen++;
    atomic_store_explicit(&p->state, (uint64_t)gen << 32, memory_order_release);
    if (atomic_load(&p->n_sleeping) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    run_tasks(p, gen, fn, ctx, n_tasks, 0);
    /* Only tasks that other threads are running right now remain. */
    for (unsigned spin = 0; atomic_load_explicit(&p->done, memory_order_acquire) < n_tasks; spin++) {
        if (spin < 100000)
            cpu_relax();
        else
            sched_yield();
    }
}
