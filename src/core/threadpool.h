/* Persistent worker pool. pam_pool_run() hands n_tasks independent tasks to
 * the workers and the calling thread and returns when all are done. Tasks are
 * claimed dynamically; anything reduced across tasks must therefore combine
 * results in task order (never thread order) so that outputs do not depend on
 * the thread count (DESIGN.md §2.9). */
#ifndef PAM_CORE_THREADPOOL_H
#define PAM_CORE_THREADPOOL_H

#include <stdint.h>

#include "pam.h"

typedef struct pam_pool pam_pool;

/* task: index in [0, n_tasks); thread: in [0, n_threads), for per-thread scratch. */
typedef void (*pam_task_fn)(void *ctx, int64_t task, int thread);

/* n_threads <= 0 picks the number of online CPUs. */
pam_status pam_pool_create(int n_threads, pam_pool **out);
void pam_pool_destroy(pam_pool *pool);
int pam_pool_n_threads(const pam_pool *pool);
/* pool may be NULL: runs everything on the caller. Not reentrant. */
void pam_pool_run(pam_pool *pool, pam_task_fn fn, void *ctx, int64_t n_tasks);

#endif
