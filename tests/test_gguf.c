/* GGUF reader and writer: round trips, llama.cpp-written files, and a wide
 * set of corrupt inputs that must fail cleanly with a message. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/dtype.h"
#include "model/gguf.h"
#include "util/test_util.h"

/* ---- a tiny byte builder for hand-written files ---------------------------- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
} buf;

static void b_bytes(buf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void b_u8(buf *b, uint8_t v) { b_bytes(b, &v, 1); }
static void b_u32(buf *b, uint32_t v) {
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    b_bytes(b, x, 4);
}
static void b_u64(buf *b, uint64_t v) {
    b_u32(b, (uint32_t)v);
    b_u32(b, (uint32_t)(v >> 32));
}
static void b_str(buf *b, const char *s) {
    b_u64(b, strlen(s));
    b_bytes(b, s, strlen(s));
}
static void b_pad(buf *b, size_t align) {
    while (b->n % align) b_u8(b, 0);
}
static void b_header(buf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    b_bytes(b, "GGUF", 4);
    b_u32(b, version);
    b_u64(b, n_tensors);
    b_u64(b, n_kv);
}
/* Tensor info for a 1-D F32 tensor of n elements at offset. */
static void b_tensor_f32(buf *b, const char *name, uint64_t n, uint64_t offset) {
    b_str(b, name);
    b_u32(b, 1);
    b_u64(b, n);
    b_u32(b, PAM_DT_F32);
    b_u64(b, offset);
}

static pam_status open_buf(const buf *b, pam_gguf **g) { return pam_gguf_open_buffer(b->p, b->n, g); }

/* Asserts that parsing b fails with code and that the message mentions needle. */
static void expect_fail(const buf *b, pam_status code, const char *needle) {
    pam_gguf *g = NULL;
    pam_status st = open_buf(b, &g);
    if (st != code || (needle && !strstr(pam_last_error(), needle)))
        fail_msg("expected status %d with '%s', got %d: %s", code, needle ? needle : "", st, pam_last_error());
    assert_null(g);
}

/* ---- hand-written files ------------------------------------------------------ */

/* v2 and v3 share the layout; a v2 file with one key and one tensor. */
static void test_read_handwritten_v2(void **state) {
    buf b = {0};
    b_header(&b, 2, 1, 2);
    b_str(&b, "general.name");
    b_u32(&b, PAM_GGUF_STRING);
    b_str(&b, "tiny");
    b_str(&b, "x.count");
    b_u32(&b, PAM_GGUF_INT32);
    b_u32(&b, (uint32_t)-7);
    b_tensor_f32(&b, "w", 4, 0);
    b_pad(&b, 32);
    size_t data_at = b.n;
    float vals[4] = {1, 2, 3, 4};
    b_bytes(&b, vals, sizeof vals);

    pam_gguf *g;
    assert_int_equal(open_buf(&b, &g), PAM_OK);
    assert_int_equal(pam_gguf_version(g), 2);
    assert_int_equal(pam_gguf_alignment(g), 32);
    assert_int_equal(pam_gguf_data_offset(g), data_at);
    assert_int_equal(pam_gguf_n_kv(g), 2);
    assert_string_equal(pam_gguf_kv_key(g, 0), "general.name");
    pam_gguf_str s;
    assert_int_equal(pam_gguf_get_str(g, "general.name", &s), PAM_OK);
    assert_int_equal(s.len, 4);
    assert_memory_equal(s.ptr, "tiny", 4);
    int64_t i64;
    uint64_t u64;
    double f64;
    assert_int_equal(pam_gguf_get_i64(g, "x.count", &i64), PAM_OK);
    assert_int_equal(i64, -7);
    assert_int_equal(pam_gguf_get_u64(g, "x.count", &u64), PAM_ERR_FORMAT);
    assert_int_equal(pam_gguf_get_f64(g, "x.count", &f64), PAM_OK);
    assert_true(f64 == -7.0);
    assert_int_equal(pam_gguf_get_str(g, "x.count", &s), PAM_ERR_FORMAT);
    assert_non_null(strstr(pam_last_error(), "x.count"));
    assert_int_equal(pam_gguf_get_u64(g, "missing", &u64), PAM_ERR_NOT_FOUND);
    assert_null(pam_gguf_find(g, "missing"));
    assert_int_equal(pam_gguf_n_tensors(g), 1);
    const pam_gguf_tensor *t = pam_gguf_find_tensor(g, "w");
    assert_non_null(t);
    assert_ptr_equal(t, pam_gguf_tensor_at(g, 0));
    assert_int_equal(t->n_dims, 1);
    assert_int_equal(t->ne[0], 4);
    assert_int_equal(t->ne[1], 1);
    assert_int_equal(t->n_bytes, 16);
    assert_memory_equal(t->data, vals, 16);
    assert_null(pam_gguf_find_tensor(g, "v"));
    pam_gguf_close(g);
    free(b.p);
}

static void test_bad_magic_and_version(void **state) {
    buf b = {0};
    b_bytes(&b, "GGML", 4);
    b_u32(&b, 3);
    b_u64(&b, 0);
    b_u64(&b, 0);
    expect_fail(&b, PAM_ERR_FORMAT, "bad magic");
    b.n = 0;
    b_header(&b, 1, 0, 0);
    expect_fail(&b, PAM_ERR_UNSUPPORTED, "version 1");
    b.n = 0;
    b_header(&b, 99, 0, 0);
    expect_fail(&b, PAM_ERR_UNSUPPORTED, "version 99");
    b.n = 0;
    expect_fail(&b, PAM_ERR_FORMAT, "empty");
    free(b.p);
}

static void test_open_missing_path(void **state) {
    pam_gguf *g = NULL;
    const char *path = pam_test_tmp("definitely-not-here.gguf");
    remove(path);
    assert_int_equal(pam_gguf_open(path, &g), PAM_ERR_IO);
    assert_null(g);
    assert_non_null(strstr(pam_last_error(), path));
}

/* ---- files written by llama.cpp ------------------------------------------------ */

static void check_vocab(const char *rel, const char *model, uint64_t min_tokens, uint64_t max_tokens) {
    pam_gguf *g;
    const char *path = pam_test_shared(rel);
    if (pam_gguf_open(path, &g) != PAM_OK) fail_msg("%s: %s", path, pam_last_error());
    assert_int_equal(pam_gguf_version(g), 3);
    pam_gguf_str s;
    assert_int_equal(pam_gguf_get_str(g, "tokenizer.ggml.model", &s), PAM_OK);
    assert_int_equal(s.len, strlen(model));
    assert_memory_equal(s.ptr, model, s.len);
    const pam_gguf_value *tok;
    assert_int_equal(pam_gguf_get_arr(g, "tokenizer.ggml.tokens", PAM_GGUF_STRING, &tok), PAM_OK);
    assert_in_range(tok->v.arr.n, min_tokens, max_tokens);
    assert_non_null(tok->v.arr.items);
    assert_int_equal(tok->v.arr.items[0].type, PAM_GGUF_STRING);
    assert_int_equal(pam_gguf_get_arr(g, "tokenizer.ggml.tokens", PAM_GGUF_INT32, &tok), PAM_ERR_FORMAT);
    /* Every key is findable through the index. */
    for (int64_t i = 0; i < pam_gguf_n_kv(g); i++)
        assert_ptr_equal(pam_gguf_find(g, pam_gguf_kv_key(g, i)), pam_gguf_kv_value(g, i));
    pam_gguf_close(g);
}

static void test_llamacpp_vocab_files(void **state) {
    check_vocab("models/vocab/ggml-vocab-llama-spm.gguf", "llama", 32000, 32000);
    check_vocab("models/vocab/ggml-vocab-phi-3.gguf", "llama", 32000, 32100);
    check_vocab("models/vocab/ggml-vocab-gpt-2.gguf", "gpt2", 50000, 50300);
    check_vocab("models/vocab/ggml-vocab-deepseek-llm.gguf", "gpt2", 100000, 103000);

    /* llama-spm carries per-token scores (float32) and types (int32). */
    pam_gguf *g;
    assert_int_equal(pam_gguf_open(pam_test_shared("models/vocab/ggml-vocab-llama-spm.gguf"), &g), PAM_OK);
    const pam_gguf_value *scores, *types;
    assert_int_equal(pam_gguf_get_arr(g, "tokenizer.ggml.scores", PAM_GGUF_FLOAT32, &scores), PAM_OK);
    assert_int_equal(pam_gguf_get_arr(g, "tokenizer.ggml.token_type", PAM_GGUF_INT32, &types), PAM_OK);
    assert_int_equal(scores->v.arr.n, 32000);
    assert_int_equal(types->v.arr.n, 32000);
    /* <unk>=2 (UNKNOWN), <s>=3 (CONTROL), byte tokens <0x00>... = 6 (BYTE) */
    assert_int_equal(pam_gguf_arr_i64(types, 0), 2);
    assert_int_equal(pam_gguf_arr_i64(types, 1), 3);
    assert_int_equal(pam_gguf_arr_i64(types, 3), 6);
    const pam_gguf_value *tok;
    assert_int_equal(pam_gguf_get_arr(g, "tokenizer.ggml.tokens", PAM_GGUF_STRING, &tok), PAM_OK);
    assert_int_equal(tok->v.arr.items[1].v.str.len, 3);
    assert_memory_equal(tok->v.arr.items[1].v.str.ptr, "<s>", 3);
    pam_gguf_close(g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_handwritten_v2),
        cmocka_unit_test(test_bad_magic_and_version),
        cmocka_unit_test(test_open_missing_path),
        cmocka_unit_test(test_llamacpp_vocab_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
