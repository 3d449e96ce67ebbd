/* Memory read bandwidth, measured STREAM-style: a buffer far larger than the
 * last-level cache is written once (which also places its pages), then every
 * thread of the pool sums its share with wide loads; the best of several
 * repetitions counts. This is the ceiling a memory-bound decode step is
 * compared against (DESIGN.md §5). */
#ifndef PAM_KERNELS_MEMBW_H
#define PAM_KERNELS_MEMBW_H

#include <stddef.h>
#include <stdint.h>

#include "core/threadpool.h"
#include "pam.h"

/* Default buffer: several times the largest last-level caches of current
 * server CPUs. */
#define PAM_MEMBW_DEFAULT_BYTES ((size_t)2 << 30)

/* Reads `bytes` (rounded down to whole 4 KiB pages, at least 64 KiB) with all
 * threads of pool, reps >= 1 times; *gbps receives the best rate in 1e9
 * bytes/s. Every pass is checked against the known sum of the buffer, so a
 * compiler or a kernel cannot skip the reads. PAM_ERR_NOMEM if the buffer
 * cannot be allocated, PAM_ERR_INVALID for bad arguments. */
pam_status pam_membw_read_gbps(pam_pool *pool, size_t bytes, int reps, double *gbps);

/* Wrapping sum of n 64-bit words (n a multiple of 32, p 64-byte aligned). */
uint64_t pam_membw_sum_ref(const uint64_t *p, size_t n);
uint64_t pam_membw_sum_avx2(const uint64_t *p, size_t n); /* needs PAM_ISA_AVX2 */

#endif
