/* Files written by llama.cpp's own quantiser (tests/data/llama-quantize, see
 * its PROVENANCE.md) load unchanged, hold byte-identical blocks to PAM's own
 * quantisation of the same weights, and give the same greedy tokens. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "model/gen_model.h"
#include "model/gguf.h"
#include "model/model.h"
#include "util/test_util.h"

#define N_GEN 24

static void greedy(const char *path, int32_t *out) {
    pam_model *m;
    if (pam_model_load(path, &m) != PAM_OK) fail_msg("load %s: %s", path, pam_last_error());
    const pam_model_hparams *hp = pam_model_get_hparams(m);
    pam_ctx *ctx;
    assert_int_equal(pam_ctx_create(m, 64, NULL, &ctx), PAM_OK);
    float *logits = malloc(sizeof(float) * (size_t)hp->n_vocab);
    int32_t tok = 1;
    for (int pos = 0; pos < N_GEN; pos++) {
        assert_int_equal(pam_forward(ctx, &tok, 1, pos, logits, 0), PAM_OK);
        int32_t best = 0;
        for (int i = 1; i < hp->n_vocab; i++)
            if (logits[i] > logits[best]) best = i;
        out[pos] = tok = best;
    }
    free(logits);
    pam_ctx_free(ctx);
    pam_model_free(m);
}

static void check_type(const char *file, pam_dtype type) {
    char src[512];
    snprintf(src, sizeof src, "%s/tests/data/llama-quantize/%s", PAM_SOURCE_DIR, file);
    pam_gen_model_shape shape = *pam_gen_model_shape_find("tiny-k");
    shape.n_layer = 1;
    char *ours = strdup(pam_test_tmp(file));
    assert_int_equal(pam_gen_model_write(&shape, type, 1, NULL, ours), PAM_OK);

    pam_gguf *a, *b;
    if (pam_gguf_open(src, &a) != PAM_OK) fail_msg("%s: %s", src, pam_last_error());
    assert_int_equal(pam_gguf_open(ours, &b), PAM_OK);
    assert_int_equal(pam_gguf_n_tensors(a), pam_gguf_n_tensors(b));
    int n_quant = 0;
    for (int64_t i = 0; i < pam_gguf_n_tensors(a); i++) {
        const pam_gguf_tensor *ta = pam_gguf_tensor_at(a, i);
        const pam_gguf_tensor *tb = pam_gguf_find_tensor(b, ta->name);
        if (!tb) fail_msg("%s: tensor %s missing from our file", file, ta->name);
        if (ta->type != tb->type)
            fail_msg("%s: %s is %s in llama.cpp's file, %s in ours", file, ta->name, pam_dtype_name(ta->type),
                     pam_dtype_name(tb->type));
        assert_int_equal(ta->ne[0], tb->ne[0]);
        assert_int_equal(ta->ne[1], tb->ne[1]);
        assert_int_equal(ta->n_bytes, tb->n_bytes);
        if (memcmp(ta->data, tb->data, ta->n_bytes) != 0)
            fail_msg("%s: tensor %s (%s) differs from PAM's quantisation", file, ta->name, pam_dtype_name(ta->type));
        n_quant += ta->type == (uint32_t)type;
    }
    assert_true(n_quant >= 7); /* every matrix is in the file's type */
    pam_gguf_close(a);
    pam_gguf_close(b);

    int32_t ta[N_GEN], tb[N_GEN];
    greedy(src, ta);
    greedy(ours, tb);
    for (int i = 0; i < N_GEN; i++)
        if (ta[i] != tb[i]) fail_msg("%s: greedy token %d: %d (llama.cpp file) vs %d (ours)", file, i, ta[i], tb[i]);
    free(ours);
}

static void test_q8_0(void **state) { check_type("tiny-k-1layer-Q8_0.gguf", PAM_DT_Q8_0); }
static void test_q4_0(void **state) { check_type("tiny-k-1layer-Q4_0.gguf", PAM_DT_Q4_0); }
static void test_q4_k(void **state) { check_type("tiny-k-1layer-Q4_K_S.gguf", PAM_DT_Q4_K); }
static void test_q6_k(void **state) { check_type("tiny-k-1layer-Q6_K.gguf", PAM_DT_Q6_K); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_q8_0),
        cmocka_unit_test(test_q4_0),
        cmocka_unit_test(test_q4_k),
        cmocka_unit_test(test_q6_k),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
