/* Block formats (bit-exact with ggml's block_q8_0, block_q4_0, block_q4_K,
 * block_q6_K), dequantisation, reference quantisers and dot products.
 *
 * Every fast path has a readable `_ref` twin that is always compiled: it is
 * the test oracle and the portable fallback. Kernels are pure: pointers and
 * shapes in, numbers out. */
#ifndef PAM_KERNELS_QUANT_H
#define PAM_KERNELS_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "core/fp16.h"
#include "kernels/dtype.h"

typedef struct {
    pam_f16 d;
    int8_t qs[PAM_QK8_0];
} pam_block_q8_0;

typedef struct {
    pam_f16 d;
    uint8_t qs[PAM_QK4_0 / 2]; /* low nibbles: elements 0..15, high nibbles: 16..31 */
} pam_block_q4_0;

typedef struct {
    pam_f16 d;
    pam_f16 dmin;
    uint8_t scales[PAM_K_SCALE_SIZE]; /* 8 x (6-bit scale, 6-bit min) packed */
    uint8_t qs[PAM_QK_K / 2];
} pam_block_q4_K;

typedef struct {
    uint8_t ql[PAM_QK_K / 2];
    uint8_t qh[PAM_QK_K / 4];
    int8_t scales[PAM_QK_K / 16];
    pam_f16 d;
} pam_block_q6_K;

/* Activations for the integer dot products of K-quants (ggml's block_q8_K). */
typedef struct {
    float d;
    int8_t qs[PAM_QK_K];
    int16_t bsums[PAM_QK_K / 16];
} pam_block_q8_K;

_Static_assert(sizeof(pam_block_q8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(pam_block_q4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(pam_block_q4_K) == 144, "q4_K layout");
_Static_assert(sizeof(pam_block_q6_K) == 210, "q6_K layout");
_Static_assert(sizeof(pam_block_q8_K) == 292, "q8_K layout");

/* n must be a multiple of the type's block size; type must be supported. */
void pam_dequantize_row(pam_dtype type, const void *src, float *dst, int64_t n);
/* Reference quantisers: same rounding and scale choice as ggml's
 * quantize_row_*_ref, so blocks are byte-identical to llama.cpp's. */
void pam_quantize_row(pam_dtype type, const float *src, void *dst, int64_t n);

/* Activation type the integer path of a weight type uses (PAM_DT_Q8_0 for
 * Q8_0/Q4_0, PAM_DT_Q8_K for Q4_K/Q6_K, PAM_DT_F32 for float types). */
pam_dtype pam_vec_dot_type(pam_dtype weight_type);
/* Quantises activations x (n elements) into the vec-dot type of weight_type. */
void pam_quantize_activations(pam_dtype weight_type, const float *x, void *dst, int64_t n);
/* dot(row of weight_type, activations already in vec-dot type) over n
 * elements. Reduction order depends only on n. */
float pam_vec_dot(pam_dtype weight_type, const void *row, const void *act, int64_t n);
float pam_vec_dot_ref(pam_dtype weight_type, const void *row, const void *act, int64_t n);

/* The kernel pam_vec_dot would call for weight_type: the per-machine choice
 * of kernel "matvec.<type>" (kernels/ksel.h), within the forced ISA level if
 * there is one (kernels/cpu.h); for loops over many rows. Never NULL for a
 * supported type. The multi-row and tiled kernels below belong to the same
 * chosen variant. */
typedef float (*pam_vec_dot_fn)(const void *row, const void *act, int64_t n);
pam_vec_dot_fn pam_vec_dot_select(pam_dtype weight_type);
/* Four consecutive rows (row_bytes apart) against the same activations in
 * one pass, sharing the activation loads: out[r] is bit-identical to what
 * pam_vec_dot_select(weight_type) gives for row r. NULL when the chosen
 * kernel has no such form (then loop the single-row one). */
typedef void (*pam_vec_dot4_fn)(const void *row, size_t row_bytes, const void *act, int64_t n,
                                float out[4]);
pam_vec_dot4_fn pam_vec_dot4_select(pam_dtype weight_type);
/* Single rows against activations prepared once per product: the per-block
 * activation work (shared by every row) is done by prep, once per token, and
 * dot then costs per row what a multi-row kernel costs, while reading the
 * rows as one stream. dot's result is bit-identical to what
 * pam_vec_dot_select(weight_type) gives. prep's dst: bytes(n) bytes, 64-byte
 * aligned. NULL when the chosen kernel has no such form. */
typedef struct pam_vec_prep {
    size_t (*bytes)(int64_t n);
    void (*prep)(const void *act, int64_t n, void *dst);
    float (*dot)(const void *row, const void *prepared, int64_t n);
} pam_vec_prep;
const pam_vec_prep *pam_vec_prep_select(pam_dtype weight_type);
/* Many rows against many tokens (prefill). For r < rows <= PAM_TILE_ROWS
 * and t < n_tok, Y[t * ldy + r] = dot(row r of W, token t of act) bit-
 * identical to what pam_vec_dot_select(weight_type) gives, but with each
 * weight load shared by several tokens. act holds n_tok tokens act_bytes
 * apart in the form pam_vec_tile_prep_act writes (the tile kernels only
 * accept that form). scratch: pam_vec_tile_scratch_bytes(weight_type, cols)
 * bytes, any alignment, private to the call (may be NULL when that is 0).
 * NULL when the chosen kernel has no tiled form for weight_type. */
#define PAM_TILE_ROWS 32
typedef void (*pam_vec_tile_fn)(const void *W, size_t row_bytes, int64_t rows, const void *act,
                                size_t act_bytes, int64_t n_tok, int64_t cols, float *Y, int64_t ldy,
                                void *scratch);
pam_vec_tile_fn pam_vec_tile_select(pam_dtype weight_type);
size_t pam_vec_tile_scratch_bytes(pam_dtype weight_type, int64_t cols);
/* The form the tile kernel of weight_type reads one token's activations in:
 * pam_vec_tile_prep_act writes it to dst (pam_vec_tile_act_bytes(weight_type,
 * cols) bytes) from activations as pam_quantize_activations wrote them.
 * pam_vec_tile_act_bytes is 0 when the tile reads them as they are (then
 * pam_vec_tile_prep_act is a plain copy). */
size_t pam_vec_tile_act_bytes(pam_dtype weight_type, int64_t cols);
void pam_vec_tile_prep_act(pam_dtype weight_type, const void *act, int64_t cols, void *dst);
/* Bytes of n activations in the vec-dot type of weight_type (n as for
 * pam_quantize_activations). */
size_t pam_activation_bytes(pam_dtype weight_type, int64_t n);

/* Registers the matvec kernels with the chooser (done on first use anyway;
 * pam bench calls it to list them), and the chooser id of weight_type's
 * kernel, -1 for a type without one. */
void pam_vec_kernels_register(void);
int pam_vec_kernel_id(pam_dtype weight_type);

#endif
