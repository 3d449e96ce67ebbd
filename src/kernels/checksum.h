/* 64-bit block checksum for data at rest in the KV tiers: fast enough to be
 * the first touch of freshly read data (tens of GB/s per core with AVX2 or
 * AVX-512), seeded, any length. Not a cryptographic hash and not persisted:
 * values are defined on little-endian hosts and may change between versions.
 *
 * Every ISA level (PAM_ISA, pam_cpu_set_isa) returns the same value for the
 * same (bytes, n, seed), so a checksum taken under one level verifies under
 * any other. */
#ifndef PAM_KERNELS_CHECKSUM_H
#define PAM_KERNELS_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

/* Checksum of the n bytes at p (any alignment; p may be NULL when n is 0),
 * seeded with seed: different seeds give unrelated values for equal bytes. */
uint64_t pam_checksum64(const void *p, size_t n, uint64_t seed);

#endif
