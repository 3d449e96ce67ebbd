/* Key summaries of KV blocks (DESIGN.md §2.7, Quest-style): for one KV head
 * of one block, the per-channel minimum and maximum of its keys. From the
 * summary alone, an upper bound of q·k over every key of the block follows:
 * sum over channels of max(q_c·min_c, q_c·max_c). Sparse attention ranks
 * blocks by this bound; `pam locality` measures how well it predicts where
 * attention mass goes.
 *
 * A summary is two arrays of head_dim floats (min, then max); summaries of
 * several KV heads lie one after the other. */
#ifndef PAM_KV_KSUM_H
#define PAM_KV_KSUM_H

#include <stdint.h>

/* Empty summary of n channels: min = +inf, max = -inf (the bound of an empty
 * summary is -inf: no key can score). */
void pam_ksum_reset(float *mn, float *mx, int32_t n);
/* Widens the summary of n channels by one key row k. */
void pam_ksum_add(float *mn, float *mx, const float *k, int32_t n);

/* Upper bound of q·k for every k with mn <= k <= mx channel-wise (head_dim
 * channels). Products of floats are exact in double and floating-point
 * addition is monotone, so the result (rounded up to float) is >= the dot
 * product of q with any covered key summed in double in channel order, and
 * so >= the exact dot product up to that sum's rounding (about 1e-16 of
 * sum |q_c k_c|). A kernel's float dot product may exceed the exact value by
 * its own rounding (about 1e-7 relative): rank by the bound, never compare
 * it with a score to decide correctness. */
float pam_ksum_bound(const float *q, const float *mn, const float *mx, int32_t head_dim);

/* The same sum in float, eight lanes then the lanes in order (so the order,
 * and the result, depend on head_dim only): fast enough to rank every block
 * of a context for each query (sparse attention), and an upper bound up to
 * float rounding (about 1e-6 of sum |q_c k_c|). The summary must not be
 * empty. */
float pam_ksum_bound_fast(const float *q, const float *mn, const float *mx, int32_t head_dim);

/* The bound over the n_q query heads that share one KV head (grouped-query
 * attention): the largest per-head bound. q holds n_q rows of head_dim. */
float pam_ksum_bound_group(const float *q, int32_t n_q, const float *mn, const float *mx, int32_t head_dim);

#endif
