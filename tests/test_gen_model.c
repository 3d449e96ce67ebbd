/* model/gen_model: random-weight models in real shapes. The tiny shape is
 * written in every type, loaded and run; variants exercise qwen2 biases and
 * Llama-3 rope factors; the real shapes are checked through their tensor
 * lists (parameter counts of the published models) without writing 1 GB. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "model/gen_model.h"
#include "model/gguf.h"
#include "model/model.h"
#include "util/test_util.h"

static char g_path[4096];
static const char *tmp_path(const char *name) {
    snprintf(g_path, sizeof g_path, "%s", pam_test_tmp(name));
    return g_path;
}

static const pam_gen_model_tensor *find(const pam_gen_model_tensor *t, int64_t n, const char *name) {
    for (int64_t i = 0; i < n; i++)
        if (!strcmp(t[i].name, name)) return &t[i];
    return NULL;
}

/* Loads path, checks the hyperparameters against s, runs a prompt and one
 * decode step and checks the logits are finite and not all equal. */
static void load_and_run(const char *path, const pam_gen_model_shape *s, pam_dtype type) {
    pam_model *m = NULL;
    assert_int_equal(pam_model_load(path, &m), PAM_OK);
    const pam_model_hparams *hp = pam_model_get_hparams(m);
    assert_string_equal(hp->arch, s->arch);
    assert_int_equal(hp->n_embd, s->n_embd);
    assert_int_equal(hp->n_layer, s->n_layer);
    assert_int_equal(hp->n_head, s->n_head);
    assert_int_equal(hp->n_head_kv, s->n_head_kv);
    assert_int_equal(hp->head_dim, s->head_dim);
    assert_int_equal(hp->n_ff, s->n_ff);
    assert_int_equal(hp->n_vocab, s->n_vocab);
    assert_int_equal(hp->n_ctx_train, s->n_ctx_train);
    assert_float_equal(hp->rms_eps, s->rms_eps, 0);
    assert_float_equal(hp->rope_theta, s->rope_theta, 0);
    assert_int_equal(hp->rope_llama3, s->llama3_rope);

    const pam_gguf *g = pam_model_gguf(m);
    uint64_t ft;
    assert_int_equal(pam_gguf_get_u64(g, "general.file_type", &ft), PAM_OK);
    assert_int_equal((int)ft, pam_gen_model_file_type(type));
    const pam_gguf_tensor *q = pam_gguf_find_tensor(g, "blk.0.attn_q.weight");
    assert_non_null(q);
    assert_int_equal(q->type, type);
    assert_int_equal(pam_gguf_find_tensor(g, "output.weight") == NULL, s->tied_output);
    assert_int_equal(pam_gguf_find_tensor(g, "blk.0.attn_k.bias") != NULL, s->qkv_bias);

    pam_pool *pool;
    pam_ctx *ctx;
    assert_int_equal(pam_pool_create(2, &pool), PAM_OK);
    assert_int_equal(pam_ctx_create(m, 64, pool, &ctx), PAM_OK);
    float *logits = malloc((size_t)hp->n_vocab * sizeof(float));
    int32_t prompt[] = {1, 300 % hp->n_vocab, 5, 270, 7, 2};
    assert_int_equal(pam_forward(ctx, prompt, 6, 0, logits, 0), PAM_OK);
    int32_t next = 261;
    assert_int_equal(pam_forward(ctx, &next, 1, 6, logits, 0), PAM_OK);
    int varied = 0;
    for (int32_t i = 0; i < hp->n_vocab; i++) {
        assert_true(isfinite(logits[i]));
        if (logits[i] != logits[0]) varied = 1;
    }
    assert_true(varied);
    free(logits);
    pam_ctx_free(ctx);
    pam_pool_destroy(pool);
    pam_model_free(m);
}

static void test_tiny_each_type(void **state) {
    const pam_gen_model_shape *s = pam_gen_model_shape_find("tiny");
    assert_non_null(s);
    pam_dtype types[] = {PAM_DT_F16, PAM_DT_Q8_0, PAM_DT_Q4_0};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        const char *path = tmp_path("gen-tiny.gguf");
        assert_int_equal(pam_gen_model_write(s, types[i], 7, NULL, path), PAM_OK);
        load_and_run(path, s, types[i]);
    }
}

static void test_variants(void **state) {
    /* qwen2: biases, tied output, NeoX rope. */
    pam_gen_model_shape s = *pam_gen_model_shape_find("tiny");
    s.arch = "qwen2";
    s.qkv_bias = 1;
    s.tied_output = 1;
    s.rms_eps = 1e-6f;
    s.rope_theta = 1000000.0f;
    const char *path = tmp_path("gen-qwen2.gguf");
    assert_int_equal(pam_gen_model_write(&s, PAM_DT_Q8_0, 3, NULL, path), PAM_OK);
    load_and_run(path, &s, PAM_DT_Q8_0);

    /* Llama-3: rope_freqs.weight, tied output, head_dim != n_embd / n_head. */
    s = *pam_gen_model_shape_find("tiny");
    s.llama3_rope = 1;
    s.tied_output = 1;
    s.head_dim = 32;
    s.rope_theta = 500000.0f;
    path = tmp_path("gen-llama3.gguf");
    assert_int_equal(pam_gen_model_write(&s, PAM_DT_Q4_0, 3, NULL, path), PAM_OK);
    load_and_run(path, &s, PAM_DT_Q4_0);
}

static void test_deterministic(void **state) {
    /* Same seed: same bytes, whatever the thread count; another seed differs. */
    const pam_gen_model_shape *s = pam_gen_model_shape_find("tiny");
    pam_pool *pool;
    assert_int_equal(pam_pool_create(3, &pool), PAM_OK);
    size_t n1, n2, n3;
    assert_int_equal(pam_gen_model_write(s, PAM_DT_Q4_0, 11, NULL, tmp_path("gen-det.gguf")), PAM_OK);
    char *a = pam_test_read_file(g_path, &n1);
    assert_int_equal(pam_gen_model_write(s, PAM_DT_Q4_0, 11, pool, tmp_path("gen-det.gguf")), PAM_OK);
    char *b = pam_test_read_file(g_path, &n2);
    assert_int_equal(pam_gen_model_write(s, PAM_DT_Q4_0, 12, pool, tmp_path("gen-det.gguf")), PAM_OK);
    char *c = pam_test_read_file(g_path, &n3);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1);
    assert_int_equal(n1, n3);
    assert_memory_not_equal(a, c, n1);
    free(a);
    free(b);
    free(c);
    pam_pool_destroy(pool);
}

static int cmp_str(const void *x, const void *y) { return strcmp(*(char *const *)x, *(char *const *)y); }

static void test_vocab_distinct(void **state) {
    /* The largest vocabulary (Qwen's) on a tiny body: all pieces distinct,
     * special ids and the byte tokens where an SPM vocabulary has them. */
    pam_gen_model_shape s = *pam_gen_model_shape_find("tiny");
    s.n_vocab = pam_gen_model_shape_find("qwen2.5-0.5b")->n_vocab;
    s.n_layer = 1;
    const char *path = tmp_path("gen-vocab.gguf");
    assert_int_equal(pam_gen_model_write(&s, PAM_DT_Q4_0, 1, NULL, path), PAM_OK);
    pam_gguf *g;
    assert_int_equal(pam_gguf_open(path, &g), PAM_OK);
    const pam_gguf_value *tok;
    assert_int_equal(pam_gguf_get_arr(g, "tokenizer.ggml.tokens", PAM_GGUF_STRING, &tok), PAM_OK);
    assert_int_equal(tok->v.arr.n, (uint64_t)s.n_vocab);
    char **strs = malloc((size_t)s.n_vocab * sizeof *strs);
    for (int32_t i = 0; i < s.n_vocab; i++) {
        const pam_gguf_str *p = &tok->v.arr.items[i].v.str;
        strs[i] = malloc(p->len + 1);
        memcpy(strs[i], p->ptr, p->len);
        strs[i][p->len] = '\0';
    }
    assert_string_equal(strs[0], "<unk>");
    assert_string_equal(strs[1], "<s>");
    assert_string_equal(strs[2], "</s>");
    assert_string_equal(strs[3 + 0x0a], "<0x0A>");
    assert_string_equal(strs[258], "<0xFF>");
    qsort(strs, (size_t)s.n_vocab, sizeof *strs, cmp_str);
    for (int32_t i = 1; i < s.n_vocab; i++) assert_true(strcmp(strs[i - 1], strs[i]) != 0);
    for (int32_t i = 0; i < s.n_vocab; i++) free(strs[i]);
    free(strs);
    uint64_t v;
    assert_int_equal(pam_gguf_get_u64(g, "tokenizer.ggml.bos_token_id", &v), PAM_OK);
    assert_int_equal(v, 1);
    assert_int_equal(pam_gguf_get_u64(g, "tokenizer.ggml.eos_token_id", &v), PAM_OK);
    assert_int_equal(v, 2);
    pam_gguf_close(g);
}

static int64_t n_params(const pam_gen_model_tensor *t, int64_t n) {
    int64_t p = 0;
    for (int64_t i = 0; i < n; i++)
        if (strcmp(t[i].name, "rope_freqs.weight")) p += t[i].ne[0] * t[i].ne[1];
    return p;
}

static void check_shape(const char *name, pam_dtype type, int64_t want_params, int64_t want_tensors) {
    const pam_gen_model_shape *s = pam_gen_model_shape_find(name);
    assert_non_null(s);
    pam_gen_model_tensor *t;
    int64_t n;
    assert_int_equal(pam_gen_model_tensors(s, type, &t, &n), PAM_OK);
    assert_int_equal(n, want_tensors);
    /* Parameter counts of the published checkpoints. */
    assert_int_equal(n_params(t, n), want_params);
    int64_t qd = (int64_t)s->n_head * s->head_dim, kvd = (int64_t)s->n_head_kv * s->head_dim;
    const pam_gen_model_tensor *x = find(t, n, "token_embd.weight");
    assert_non_null(x);
    assert_int_equal(x->ne[0], s->n_embd);
    assert_int_equal(x->ne[1], s->n_vocab);
    assert_int_equal(x->type, type);
    char buf[64];
    snprintf(buf, sizeof buf, "blk.%d.attn_k.weight", s->n_layer - 1);
    assert_non_null(x = find(t, n, buf));
    assert_int_equal(x->ne[0], s->n_embd);
    assert_int_equal(x->ne[1], kvd);
    assert_non_null(x = find(t, n, "blk.0.attn_output.weight"));
    assert_int_equal(x->ne[0], qd);
    assert_int_equal(x->ne[1], s->n_embd);
    assert_non_null(x = find(t, n, "blk.0.ffn_down.weight"));
    assert_int_equal(x->ne[0], s->n_ff);
    assert_int_equal(x->ne[1], s->n_embd);
    assert_int_equal(x->type, type);
    size_t row;
    assert_int_equal(pam_dtype_row_bytes(type, s->n_ff, &row), PAM_OK);
    assert_int_equal(x->n_bytes, row * (size_t)s->n_embd);
    assert_non_null(x = find(t, n, "blk.0.ffn_norm.weight"));
    assert_int_equal(x->n_dims, 1);
    assert_int_equal(x->type, PAM_DT_F32);
    assert_int_equal(find(t, n, "output.weight") == NULL, s->tied_output);
    assert_non_null(find(t, n, "output_norm.weight"));
    x = find(t, n, "blk.0.attn_q.bias");
    assert_int_equal(x != NULL, s->qkv_bias);
    if (x) {
        assert_int_equal(x->ne[0], qd);
        assert_int_equal(x->n_dims, 1);
    }
    x = find(t, n, "rope_freqs.weight");
    assert_int_equal(x != NULL, s->llama3_rope);
    if (x) assert_int_equal(x->ne[0], s->head_dim / 2);
    free(t);
}

static void test_real_shapes(void **state) {
    check_shape("tinyllama-1.1b", PAM_DT_Q8_0, 1100048384, 1 + 22 * 9 + 2);
    check_shape("llama-3.2-1b", PAM_DT_F16, 1235814400, 2 + 16 * 9 + 1);
    check_shape("qwen2.5-0.5b", PAM_DT_Q4_0, 494032768, 1 + 24 * 12 + 1);
    assert_null(pam_gen_model_shape_find("llama-7b"));
    assert_null(pam_gen_model_shape_find(NULL));
}

static void test_llama3_factors(void **state) {
    /* Llama-3.2-1B's config: theta 500000, head_dim 64, factor 32, low 1,
     * high 4, original context 8192. High frequencies keep factor 1, low ones
     * get 32, the band between is smooth and increasing. */
    float f[32];
    pam_gen_model_llama3_factors(500000.0f, 64, 32.0f, 1.0f, 4.0f, 8192, f);
    assert_float_equal(f[0], 1.0f, 0);
    assert_float_equal(f[31], 32.0f, 0);
    int n_one = 0, n_mid = 0;
    for (int i = 0; i < 32; i++) {
        if (i) assert_true(f[i] >= f[i - 1]);
        n_one += f[i] == 1.0f;
        n_mid += f[i] > 1.0f && f[i] < 32.0f;
        /* Wavelength 2*pi*theta^(2i/64) decides the band. */
        double wavelen = 2 * M_PI * pow(500000.0, 2.0 * i / 64);
        if (wavelen < 2048 * 0.999) assert_float_equal(f[i], 1.0f, 0);
        if (wavelen > 8192 * 1.001) assert_float_equal(f[i], 32.0f, 0);
    }
    assert_true(n_one > 0 && n_mid > 0);
}

static void test_bad_inputs(void **state) {
    const pam_gen_model_shape *tiny = pam_gen_model_shape_find("tiny");
    pam_gen_model_tensor *t = NULL;
    int64_t n = -1;
    assert_int_equal(pam_gen_model_tensors(tiny, PAM_DT_Q5_0, &t, &n), PAM_ERR_UNSUPPORTED);
    assert_null(t);
    assert_int_equal(n, 0);
    /* Q4_K is offered, but tiny's 64-wide rows are not whole 256-element blocks */
    assert_int_equal(pam_gen_model_tensors(tiny, PAM_DT_Q4_K, &t, &n), PAM_ERR_INVALID);
    assert_null(t);
    pam_gen_model_shape s = *tiny;
    s.n_embd = 48; /* not a multiple of the 32-element blocks */
    assert_int_equal(pam_gen_model_tensors(&s, PAM_DT_Q8_0, &t, &n), PAM_ERR_INVALID);
    assert_int_equal(pam_gen_model_tensors(&s, PAM_DT_F16, &t, &n), PAM_OK);
    free(t);
    s = *tiny;
    s.n_head_kv = 3;
    assert_int_equal(pam_gen_model_tensors(&s, PAM_DT_F16, &t, &n), PAM_ERR_INVALID);
    s = *tiny;
    s.n_vocab = 100;
    assert_int_equal(pam_gen_model_write(&s, PAM_DT_F16, 1, NULL, tmp_path("gen-bad.gguf")), PAM_ERR_INVALID);
    assert_int_equal(pam_gen_model_write(tiny, PAM_DT_F16, 1, NULL, "/nonexistent-dir/x.gguf"), PAM_ERR_IO);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_each_type), cmocka_unit_test(test_variants),
        cmocka_unit_test(test_deterministic),  cmocka_unit_test(test_vocab_distinct),
        cmocka_unit_test(test_real_shapes),    cmocka_unit_test(test_llama3_factors),
        cmocka_unit_test(test_bad_inputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
