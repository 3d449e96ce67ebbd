/* Per-ISA dot kernels behind pam_vec_dot (private to kernels/). Each has the
 * pam_vec_dot_fn shape: (row of weights, activations in the vec-dot type, n).
 * The *_avx2 ones may only be called when pam_cpu_detect() >= PAM_ISA_AVX2,
 * the *_avx512 ones when it is PAM_ISA_AVX512.
 *
 * The *_avx512y/yp/r/p ones are further AVX-512 variants (quant.c registers
 * them with the chooser, kernels/ksel.h).
 *
 * The multi-row (dot4), prepared-activation and tiled (pam_tile_*) kernels
 * that quant.c pairs with a single-row kernel must give, for every output,
 * that kernel's bits: they repeat its floating-point operations in its order
 * and only share loads, integer work and unpacking between rows and tokens
 * (test_matmul checks every pairing). */
#ifndef PAM_KERNELS_QUANT_ISA_H
#define PAM_KERNELS_QUANT_ISA_H

#include <stddef.h>
#include <stdint.h>

float pam_dot_f32_ref(const void *row, const void *act, int64_t n);
float pam_dot_f16_ref(const void *row, const void *act, int64_t n);
float pam_dot_bf16_ref(const void *row, const void *act, int64_t n);
float pam_dot_q8_0_ref(const void *row, const void *act, int64_t n);
float pam_dot_q4_0_ref(const void *row, const void *act, int64_t n);
float pam_dot_q4_K_ref(const void *row, const void *act, int64_t n);
float pam_dot_q6_K_ref(const void *row, const void *act, int64_t n);

float pam_dot_f32_avx2(const void *row, const void *act, int64_t n);
float pam_dot_f16_avx2(const void *row, const void *act, int64_t n);
float pam_dot_bf16_avx2(const void *row, const void *act, int64_t n);
float pam_dot_q8_0_avx2(const void *row, const void *act, int64_t n);
float pam_dot_q4_0_avx2(const void *row, const void *act, int64_t n);
float pam_dot_q4_K_avx2(const void *row, const void *act, int64_t n);
float pam_dot_q6_K_avx2(const void *row, const void *act, int64_t n);

/* Four rows, as the AVX-512 ones below. */
void pam_dot4_q8_0_avx2(const void *row, size_t row_bytes, const void *act, int64_t n, float out[4]);
void pam_dot4_q4_0_avx2(const void *row, size_t row_bytes, const void *act, int64_t n, float out[4]);

float pam_dot_f32_avx512(const void *row, const void *act, int64_t n);
float pam_dot_f16_avx512(const void *row, const void *act, int64_t n);
float pam_dot_bf16_avx512(const void *row, const void *act, int64_t n);
float pam_dot_q8_0_avx512(const void *row, const void *act, int64_t n);
float pam_dot_q4_0_avx512(const void *row, const void *act, int64_t n);
float pam_dot_q4_K_avx512(const void *row, const void *act, int64_t n);
float pam_dot_q6_K_avx512(const void *row, const void *act, int64_t n);
/* Four rows row, row + row_bytes, ... against the same activations; out[r]
 * is bit-identical to the single-row kernel of the same ISA on row r. */
void pam_dot4_q8_0_avx512(const void *row, size_t row_bytes, const void *act, int64_t n, float out[4]);
void pam_dot4_q4_0_avx512(const void *row, size_t row_bytes, const void *act, int64_t n, float out[4]);

/* The same results as the Q8_0/Q4_0 ones above, bit for bit, with the
 * integer work in 256-bit vectors (faster where 512-bit operations are split
 * in two); the tiled kernels of the AVX-512 level serve both. */
float pam_dot_q8_0_avx512y(const void *row, const void *act, int64_t n);
float pam_dot_q4_0_avx512y(const void *row, const void *act, int64_t n);
void pam_dot4_q8_0_avx512y(const void *row, size_t row_bytes, const void *act, int64_t n, float out[4]);
void pam_dot4_q4_0_avx512y(const void *row, size_t row_bytes, const void *act, int64_t n, float out[4]);

/* The same over activations prepared once per product (pam_vec_prep). */
size_t pam_prep_bytes_q8_0_avx512y(int64_t n);
size_t pam_prep_bytes_q4_0_avx512y(int64_t n);
void pam_prep_q8_0_avx512y(const void *act, int64_t n, void *dst);
void pam_prep_q4_0_avx512y(const void *act, int64_t n, void *dst);
float pam_dot_prep_q8_0_avx512y(const void *row, const void *prepared, int64_t n);
float pam_dot_prep_q4_0_avx512y(const void *row, const void *prepared, int64_t n);

/* Q6_K with vpdpwssd: bit-identical to pam_dot_q6_K_avx512. */
float pam_dot_q6_K_avx512p(const void *row, const void *act, int64_t n);
void pam_tile_q6_K_avx512p(const void *W, size_t row_bytes, int64_t rows, const void *act, size_t act_bytes,
                           int64_t n_tok, int64_t cols, float *Y, int64_t ldy, void *scratch);

/* Four float rows; bit-identical to the single-row AVX-512 kernels. */
void pam_dot4_f32_avx512(const void *row, size_t row_bytes, const void *act, int64_t n, float out[4]);
void pam_dot4_f16_avx512(const void *row, size_t row_bytes, const void *act, int64_t n, float out[4]);
void pam_dot4_bf16_avx512(const void *row, size_t row_bytes, const void *act, int64_t n, float out[4]);

/* Q4_K with in-lane scale shuffles: its own rounding, its own tiled kernel. */
float pam_dot_q4_K_avx512p(const void *row, const void *act, int64_t n);
void pam_tile_q4_K_avx512p(const void *W, size_t row_bytes, int64_t rows, const void *act, size_t act_bytes,
                           int64_t n_tok, int64_t cols, float *Y, int64_t ldy, void *scratch);

/* Q8_0 quantisers byte-identical to the reference one (for activations). */
void pam_quantize_q8_0_avx2(const float *x, void *dst, int64_t n);
void pam_quantize_q8_0_avx512(const float *x, void *dst, int64_t n);

/* Tiled kernels behind pam_vec_tile_select (see quant.h), and their scratch. */
size_t pam_tile_scratch_avx2(int64_t cols);
#define PAM_TILE_DECL(NAME)                                                                          \
    void NAME(const void *W, size_t row_bytes, int64_t rows, const void *act, size_t act_bytes,     \
              int64_t n_tok, int64_t cols, float *Y, int64_t ldy, void *scratch);
PAM_TILE_DECL(pam_tile_f32_avx2)
PAM_TILE_DECL(pam_tile_f16_avx2)
PAM_TILE_DECL(pam_tile_bf16_avx2)
PAM_TILE_DECL(pam_tile_q4_K_avx2)
PAM_TILE_DECL(pam_tile_q6_K_avx2)
PAM_TILE_DECL(pam_tile_f32_avx512)
PAM_TILE_DECL(pam_tile_f16_avx512)
PAM_TILE_DECL(pam_tile_bf16_avx512)
PAM_TILE_DECL(pam_tile_q4_K_avx512)
PAM_TILE_DECL(pam_tile_q6_K_avx512)
#undef PAM_TILE_DECL
void pam_tile_q8_0_avx2(const void *W, size_t row_bytes, int64_t rows, const void *act, size_t act_bytes,
                        int64_t n_tok, int64_t cols, float *Y, int64_t ldy, void *scratch);
void pam_tile_q4_0_avx2(const void *W, size_t row_bytes, int64_t rows, const void *act, size_t act_bytes,
                        int64_t n_tok, int64_t cols, float *Y, int64_t ldy, void *scratch);
size_t pam_tile_scratch_avx512(int64_t cols);
/* Their activations: each block's 32 bytes ^ 0x80, then the scales as floats. */
size_t pam_tile_act_bytes_avx512(int64_t cols);
void pam_tile_prep_act_avx512(const void *act, int64_t cols, void *dst);
void pam_tile_q8_0_avx512(const void *W, size_t row_bytes, int64_t rows, const void *act, size_t act_bytes,
                          int64_t n_tok, int64_t cols, float *Y, int64_t ldy, void *scratch);
void pam_tile_q4_0_avx512(const void *W, size_t row_bytes, int64_t rows, const void *act, size_t act_bytes,
                          int64_t n_tok, int64_t cols, float *Y, int64_t ldy, void *scratch);

#endif
