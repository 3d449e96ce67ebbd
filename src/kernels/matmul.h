/* Matrix products over rows of any supported weight type, split across the
 * thread pool by output rows (chunks of whole cache lines of output, so no
 * two threads write one line). Each output element is one pam_vec_dot over a
 * whole row, so a result never depends on the batch size n or the thread
 * count (DESIGN.md §2.9). W is row-major: rows x cols elements of `type`. */
#ifndef PAM_KERNELS_MATMUL_H
#define PAM_KERNELS_MATMUL_H

#include <stdint.h>

#include "core/threadpool.h"
#include "kernels/dtype.h"

/* Several products sharing one input X (e.g. q/k/v, or gate/up), run as one
 * pool job: fewer barriers per token, same results as separate calls. */
typedef struct pam_mm {
    pam_dtype type;
    const void *W;
    int64_t rows;
    float *Y;
} pam_mm;
void pam_matmul_multi(pam_pool *pool, const pam_mm *mm, int n_mm, int64_t cols, const float *X, int64_t n);

/* y[r] = dot(W[r,:], x) for r < rows. */
void pam_matvec(pam_pool *pool, pam_dtype type, const void *W, int64_t rows, int64_t cols,
                const float *x, float *y);
/* Y[i*rows + r] = dot(W[r,:], X[i*cols : (i+1)*cols]) for i < n. */
void pam_matmul(pam_pool *pool, pam_dtype type, const void *W, int64_t rows, int64_t cols,
                const float *X, int64_t n, float *Y);

#endif
