/* Per-ISA bulk loops behind pam_checksum64 (private to kernels/).
 *
 * The input is cut into 64-byte stripes (the last one, if partial, is
 * zero-padded to 64 bytes; the length is mixed in at the end). Eight 64-bit
 * lanes acc[0..7]; stripe word i is d = the i-th little-endian 64-bit word,
 * x = d ^ key[i], and
 *     acc[i ^ 1] += d;  acc[i] += (x mod 2^32) * (x >> 32)
 * (a 32x32->64-bit product). The key of stripe j of a block is words
 * j..j+7 of the stripe key (it slides by one word per stripe, so equal words
 * in different stripes of a block weigh differently). After every block of
 * PAM_CSUM_BLOCK_STRIPES whole stripes the lanes are scrambled:
 *     a ^= a >> 47;  a ^= scramble_key[i];  a *= PAM_CSUM_SCRAMBLE_MUL
 * (a bijection of each lane). A trailing partial block is not scrambled; the
 * padded last stripe continues it with the next stripe's key.
 *
 * Each pam_csum_acc_* does exactly that to acc for all n bytes at p and must
 * give identical lanes (the adds within a block commute, so a vector loop
 * may sum a block's words first and add them to the neighbour lanes once).
 * The *_avx2 one may only run when pam_cpu_detect() >= PAM_ISA_AVX2, the
 * *_avx512 one when it is PAM_ISA_AVX512. */
#ifndef PAM_KERNELS_CHECKSUM_ISA_H
#define PAM_KERNELS_CHECKSUM_ISA_H

#include <stddef.h>
#include <stdint.h>

#define PAM_CSUM_LANES 8
#define PAM_CSUM_STRIPE 64        /* bytes */
#define PAM_CSUM_BLOCK_STRIPES 16 /* stripes between scrambles */
#define PAM_CSUM_BLOCK_BYTES (PAM_CSUM_BLOCK_STRIPES * PAM_CSUM_STRIPE)

/* Offsets in pam_csum_key: stripe key (PAM_CSUM_BLOCK_STRIPES + 7 words),
 * then scramble, initial and final keys of 8 words each. */
#define PAM_CSUM_KEY_STRIPE 0
#define PAM_CSUM_KEY_SCRAMBLE (PAM_CSUM_BLOCK_STRIPES + 7)
#define PAM_CSUM_KEY_INIT (PAM_CSUM_KEY_SCRAMBLE + 8)
#define PAM_CSUM_KEY_FINAL (PAM_CSUM_KEY_INIT + 8)
#define PAM_CSUM_KEY_WORDS (PAM_CSUM_KEY_FINAL + 8)

#define PAM_CSUM_SCRAMBLE_MUL 0x5701ce26fe6ab4e7ull /* odd */

extern const uint64_t pam_csum_key[PAM_CSUM_KEY_WORDS];

void pam_csum_acc_ref(uint64_t acc[PAM_CSUM_LANES], const uint8_t *p, size_t n);
void pam_csum_acc_avx2(uint64_t acc[PAM_CSUM_LANES], const uint8_t *p, size_t n);
void pam_csum_acc_avx512(uint64_t acc[PAM_CSUM_LANES], const uint8_t *p, size_t n);

#endif
