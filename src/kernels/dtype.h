/* Tensor element types, numbered as in GGUF/ggml so files written by
 * llama.cpp's tools load unchanged. Every type a GGUF file may name is listed
 * (so `pam inspect` can size any tensor); `supported` marks the types the
 * kernels compute with. */
#ifndef PAM_KERNELS_DTYPE_H
#define PAM_KERNELS_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#include "pam.h"

typedef enum pam_dtype {
    PAM_DT_F32 = 0,
    PAM_DT_F16 = 1,
    PAM_DT_Q4_0 = 2,
    PAM_DT_Q4_1 = 3,
    PAM_DT_Q5_0 = 6,
    PAM_DT_Q5_1 = 7,
    PAM_DT_Q8_0 = 8,
    PAM_DT_Q8_1 = 9,
    PAM_DT_Q2_K = 10,
    PAM_DT_Q3_K = 11,
    PAM_DT_Q4_K = 12,
    PAM_DT_Q5_K = 13,
    PAM_DT_Q6_K = 14,
    PAM_DT_Q8_K = 15,
    PAM_DT_BF16 = 30,
    PAM_DT_COUNT = 40, /* upper bound of ids in the table */
} pam_dtype;

#define PAM_QK8_0 32
#define PAM_QK4_0 32
#define PAM_QK_K 256
#define PAM_K_SCALE_SIZE 12

typedef struct pam_dtype_info {
    const char *name;
    int32_t block_elems; /* elements per block */
    int32_t block_bytes; /* bytes per block */
    int supported;       /* computed on by the kernels */
} pam_dtype_info;

/* NULL for an id that no GGUF writer uses. */
const pam_dtype_info *pam_dtype_get(uint32_t type);
const char *pam_dtype_name(uint32_t type); /* "?" when unknown */
/* Bytes of a row of n elements; PAM_ERR_FORMAT if n is not a whole number of
 * blocks, PAM_ERR_UNSUPPORTED for an unknown type, PAM_ERR_RANGE on overflow. */
pam_status pam_dtype_row_bytes(uint32_t type, int64_t n, size_t *out);

#endif
