#include "kernels/dtype.h"

#include "core/status.h"

/* Sizes from ggml's type traits; ids 4, 5 and 31..33 were retired upstream. */
static const pam_dtype_info k_types[PAM_DT_COUNT] = {
    [0] = {"F32", 1, 4, 1},
    [1] = {"F16", 1, 2, 1},
    [2] = {"Q4_0", 32, 18, 1},
    [3] = {"Q4_1", 32, 20, 0},
    [6] = {"Q5_0", 32, 22, 0},
    [7] = {"Q5_1", 32, 24, 0},
    [8] = {"Q8_0", 32, 34, 1},
    [9] = {"Q8_1", 32, 36, 0},
    [10] = {"Q2_K", 256, 84, 0},
    [11] = {"Q3_K", 256, 110, 0},
    [12] = {"Q4_K", 256, 144, 1},
    [13] = {"Q5_K", 256, 176, 0},
    [14] = {"Q6_K", 256, 210, 1},
    [15] = {"Q8_K", 256, 292, 0},
    [16] = {"IQ2_XXS", 256, 66, 0},
    [17] = {"IQ2_XS", 256, 74, 0},
    [18] = {"IQ3_XXS", 256, 98, 0},
    [19] = {"IQ1_S", 256, 50, 0},
    [20] = {"IQ4_NL", 32, 18, 0},
    [21] = {"IQ3_S", 256, 110, 0},
    [22] = {"IQ2_S", 256, 82, 0},
    [23] = {"IQ4_XS", 256, 136, 0},
    [24] = {"I8", 1, 1, 0},
    [25] = {"I16", 1, 2, 0},
    [26] = {"I32", 1, 4, 0},
    [27] = {"I64", 1, 8, 0},
    [28] = {"F64", 1, 8, 0},
    [29] = {"IQ1_M", 256, 56, 0},
    [30] = {"BF16", 1, 2, 1},
    [34] = {"TQ1_0", 256, 54, 0},
    [35] = {"TQ2_0", 256, 66, 0},
    [39] = {"MXFP4", 32, 17, 0},
};

const pam_dtype_info *pam_dtype_get(uint32_t type) {
    if (type >= PAM_DT_COUNT || !k_types[type].name) return NULL;
    return &k_types[type];
}

const char *pam_dtype_name(uint32_t type) {
    const pam_dtype_info *ti = pam_dtype_get(type);
    return ti ? ti->name : "?";
}

pam_status pam_dtype_row_bytes(uint32_t type, int64_t n, size_t *out) {
    const pam_dtype_info *ti = pam_dtype_get(type);
    if (!ti) return PAM_ERR(PAM_ERR_UNSUPPORTED, "unknown tensor type %u", type);
    if (n < 0 || n % ti->block_elems != 0)
        return PAM_ERR(PAM_ERR_FORMAT, "%s row of %lld elements is not a whole number of %d-element blocks",
                       ti->name, (long long)n, ti->block_elems);
    uint64_t blocks = (uint64_t)(n / ti->block_elems);
    if (blocks > SIZE_MAX / (uint64_t)ti->block_bytes)
        return PAM_ERR(PAM_ERR_RANGE, "%s row of %lld elements overflows", ti->name, (long long)n);
    *out = (size_t)(blocks * (uint64_t)ti->block_bytes);
    return PAM_OK;
}
