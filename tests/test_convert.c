/* model/convert: stories260K (llama2.c) -> GGUF, read back with the GGUF
 * reader and compared with the checkpoint's own bytes; variants of the
 * checkpoint layout; corrupt inputs fail cleanly and leave no file. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/fp16.h"
#include "core/status.h"
#include "kernels/quant.h"
#include "model/convert.h"
#include "model/gguf.h"
#include "util/test_util.h"

enum { DIM = 64, HID = 172, NL = 5, NH = 8, NKV = 4, VOCAB = 512, SEQ = 512, KV_DIM = 32, HEAD = 8 };

/* Float offsets (after the 28-byte header) in the llama2.c layout. */
enum {
    OFF_EMB = 0,
    OFF_RMS_ATT = OFF_EMB + VOCAB * DIM,
    OFF_WQ = OFF_RMS_ATT + NL * DIM,
    OFF_WK = OFF_WQ + NL * DIM * DIM,
    OFF_WV = OFF_WK + NL * KV_DIM * DIM,
    OFF_WO = OFF_WV + NL * KV_DIM * DIM,
    OFF_RMS_FFN = OFF_WO + NL * DIM * DIM,
    OFF_W1 = OFF_RMS_FFN + NL * DIM,
    OFF_W2 = OFF_W1 + NL * HID * DIM,
    OFF_W3 = OFF_W2 + NL * DIM * HID,
    OFF_RMS_FINAL = OFF_W3 + NL * HID * DIM,
    OFF_END = OFF_RMS_FINAL + DIM,
    FREQ_FLOATS = SEQ * HEAD,
};

typedef struct {
    char *ck;
    size_t ck_size;
    char *tok;
    size_t tok_size;
} inputs;

/* pam_test_shared and pam_test_tmp reuse one buffer; keep our own copies. */
static char g_ck_path[4096];
static const char *ck_path(void) {
    snprintf(g_ck_path, sizeof g_ck_path, "%s", pam_test_shared("models/stories260K/stories260K.bin"));
    return g_ck_path;
}

static char g_tok_path[4096];
static const char *tok_path(void) {
    snprintf(g_tok_path, sizeof g_tok_path, "%s", pam_test_shared("models/stories260K/tok512.bin"));
    return g_tok_path;
}

static inputs load_inputs(void) {
    inputs in;
    in.ck = pam_test_read_file(ck_path(), &in.ck_size);
    assert_non_null(in.ck);
    in.tok = pam_test_read_file(tok_path(), &in.tok_size);
    assert_non_null(in.tok);
    assert_int_equal(in.ck_size, 28 + 4 * (OFF_END + FREQ_FLOATS));
    return in;
}

static void free_inputs(inputs *in) {
    free(in->ck);
    free(in->tok);
}

static const float *ck_floats(const inputs *in) { return (const float *)(in->ck + 28); }

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static int exists(const char *path) { return access(path, F_OK) == 0; }

/* Output path and its ".tmp" sibling, both absent. */
static void fresh_out(const char *name, char *out, size_t cap) {
    snprintf(out, cap, "%s", pam_test_tmp(name));
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    remove(out);
    remove(tmp);
}

static void assert_no_output(const char *out) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    assert_false(exists(out));
    assert_false(exists(tmp));
}

static uint64_t get_u(const pam_gguf *g, const char *key) {
    uint64_t v = 0;
    assert_int_equal(pam_gguf_get_u64(g, key, &v), PAM_OK);
    return v;
}

static void assert_str(const pam_gguf *g, const char *key, const char *want) {
    pam_gguf_str s;
    assert_int_equal(pam_gguf_get_str(g, key, &s), PAM_OK);
    assert_int_equal(s.len, strlen(want));
    assert_memory_equal(s.ptr, want, s.len);
}

static void assert_piece(const pam_gguf_value *toks, uint64_t i, const char *want) {
    const pam_gguf_value *v = &toks->v.arr.items[i];
    assert_int_equal(v->type, PAM_GGUF_STRING);
    if (v->v.str.len != strlen(want) || memcmp(v->v.str.ptr, want, v->v.str.len) != 0)
        fail_msg("token %llu: got '%.*s', want '%s'", (unsigned long long)i, (int)v->v.str.len, v->v.str.ptr, want);
}

static const pam_gguf_tensor *tensor(const pam_gguf *g, const char *name, uint32_t type, int64_t ne0, int64_t ne1) {
    const pam_gguf_tensor *t = pam_gguf_find_tensor(g, name);
    if (!t) fail_msg("tensor %s missing", name);
    if (t->type != type) fail_msg("tensor %s: type %s, want %s", name, pam_dtype_name(t->type), pam_dtype_name(type));
    assert_int_equal(t->n_dims, ne1 > 1 ? 2 : 1);
    assert_int_equal(t->ne[0], ne0);
    assert_int_equal(t->ne[1], ne1);
    return t;
}

/* An F32 tensor whose bytes are exactly the checkpoint's floats at off. */
static void assert_f32_tensor(const pam_gguf *g, const inputs *in, const char *name, int64_t ne0, int64_t ne1,
                              size_t off) {
    const pam_gguf_tensor *t = tensor(g, name, PAM_DT_F32, ne0, ne1);
    assert_int_equal(t->n_bytes, (size_t)(ne0 * ne1) * 4);
    assert_memory_equal(t->data, ck_floats(in) + off, t->n_bytes);
}

static void check_metadata(const pam_gguf *g, const inputs *in, uint32_t file_type) {
    assert_str(g, "general.architecture", "llama");
    assert_str(g, "general.name", "stories260K");
    assert_int_equal(get_u(g, "general.file_type"), file_type);
    assert_int_equal(get_u(g, "llama.context_length"), SEQ);
    assert_int_equal(get_u(g, "llama.embedding_length"), DIM);
    assert_int_equal(get_u(g, "llama.feed_forward_length"), HID);
    assert_int_equal(get_u(g, "llama.block_count"), NL);
    assert_int_equal(get_u(g, "llama.attention.head_count"), NH);
    assert_int_equal(get_u(g, "llama.attention.head_count_kv"), NKV);
    assert_int_equal(get_u(g, "llama.rope.dimension_count"), HEAD);
    assert_int_equal(get_u(g, "llama.vocab_size"), VOCAB);
    double f;
    assert_int_equal(pam_gguf_get_f64(g, "llama.attention.layer_norm_rms_epsilon", &f), PAM_OK);
    assert_true(fabs(f - 1e-5) < 1e-9);
    assert_int_equal(pam_gguf_find(g, "llama.attention.layer_norm_rms_epsilon")->type, PAM_GGUF_FLOAT32);
    assert_int_equal(pam_gguf_get_f64(g, "llama.rope.freq_base", &f), PAM_OK);
    assert_true(f == 10000.0);
    assert_int_equal(pam_gguf_find(g, "llama.block_count")->type, PAM_GGUF_UINT32);

    assert_str(g, "tokenizer.ggml.model", "llama");
    assert_str(g, "tokenizer.ggml.pre", "default");
    assert_int_equal(get_u(g, "tokenizer.ggml.bos_token_id"), 1);
    assert_int_equal(get_u(g, "tokenizer.ggml.eos_token_id"), 2);
    assert_int_equal(get_u(g, "tokenizer.ggml.unknown_token_id"), 0);
    int b;
    assert_int_equal(pam_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b), PAM_OK);
    assert_true(b);
    assert_int_equal(pam_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &b), PAM_OK);
    assert_false(b);
    assert_int_equal(pam_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &b), PAM_OK);
    assert_true(b);

    const pam_gguf_value *toks, *scores, *types;
    assert_int_equal(pam_gguf_get_arr(g, "tokenizer.ggml.tokens", PAM_GGUF_STRING, &toks), PAM_OK);
    assert_int_equal(pam_gguf_get_arr(g, "tokenizer.ggml.scores", PAM_GGUF_FLOAT32, &scores), PAM_OK);
    assert_int_equal(pam_gguf_get_arr(g, "tokenizer.ggml.token_type", PAM_GGUF_INT32, &types), PAM_OK);
    assert_int_equal(toks->v.arr.n, VOCAB);
    assert_int_equal(scores->v.arr.n, VOCAB);
    assert_int_equal(types->v.arr.n, VOCAB);
    /* The tokenizer file names BOS/EOS "\n<s>\n" and "\n</s>\n"; the GGUF
     * uses SentencePiece's names. */
    assert_piece(toks, 0, "<unk>");
    assert_piece(toks, 1, "<s>");
    assert_piece(toks, 2, "</s>");
    assert_piece(toks, 3, "<0x00>");
    assert_piece(toks, 13, "<0x0A>");
    assert_piece(toks, 258, "<0xFF>");
    assert_piece(toks, 259, "\xe2\x96\x81t"); /* " t" */
    assert_piece(toks, 260, "he");
    assert_piece(toks, 265, "\xe2\x96\x81the");
    assert_int_equal(pam_gguf_arr_i64(types, 0), 2);
    assert_int_equal(pam_gguf_arr_i64(types, 1), 3);
    assert_int_equal(pam_gguf_arr_i64(types, 2), 3);
    for (int i = 3; i < 259; i++) assert_int_equal(pam_gguf_arr_i64(types, (uint64_t)i), 6);
    for (int i = 259; i < VOCAB; i++) assert_int_equal(pam_gguf_arr_i64(types, (uint64_t)i), 1);

    /* Every piece and score against the tokenizer file itself. */
    const uint8_t *p = (const uint8_t *)in->tok + 4;
    for (int i = 0; i < VOCAB; i++) {
        float score;
        int32_t len;
        memcpy(&score, p, 4);
        memcpy(&len, p + 4, 4);
        p += 8;
        assert_true(pam_gguf_arr_f64(scores, (uint64_t)i) == (double)score);
        if (i >= 3) {
            char want[64];
            size_t o = 0;
            for (int32_t k = 0; k < len; k++) {
                if (p[k] == ' ') {
                    memcpy(want + o, "\xe2\x96\x81", 3);
                    o += 3;
                } else {
                    want[o++] = (char)p[k];
                }
            }
            want[o] = 0;
            assert_piece(toks, (uint64_t)i, want);
            assert_null(memchr(toks->v.arr.items[i].v.str.ptr, ' ', toks->v.arr.items[i].v.str.len));
        }
        p += len;
    }
}

static void test_convert_f32(void **state) {
    inputs in = load_inputs();
    char out[4096];
    fresh_out("stories260K-f32.gguf", out, sizeof out);
    assert_int_equal(pam_convert_llama2c(ck_path(), tok_path(), out, PAM_DT_F32), PAM_OK);
    assert_true(exists(out));
    pam_gguf *g;
    assert_int_equal(pam_gguf_open(out, &g), PAM_OK);
    check_metadata(g, &in, 0);

    assert_int_equal(pam_gguf_n_tensors(g), 2 + 9 * NL);
    assert_null(pam_gguf_find_tensor(g, "output.weight")); /* shared classifier */
    assert_f32_tensor(g, &in, "token_embd.weight", DIM, VOCAB, OFF_EMB);
    assert_f32_tensor(g, &in, "output_norm.weight", DIM, 1, OFF_RMS_FINAL);
    for (int l = 0; l < NL; l++) {
        char name[64];
#define T(suffix) (snprintf(name, sizeof name, "blk.%d." suffix, l), name)
        assert_f32_tensor(g, &in, T("attn_norm.weight"), DIM, 1, OFF_RMS_ATT + (size_t)l * DIM);
        /* q and k unpermuted: llama2.c already rotates adjacent pairs. */
        assert_f32_tensor(g, &in, T("attn_q.weight"), DIM, DIM, OFF_WQ + (size_t)l * DIM * DIM);
        assert_f32_tensor(g, &in, T("attn_k.weight"), DIM, KV_DIM, OFF_WK + (size_t)l * DIM * KV_DIM);
        assert_f32_tensor(g, &in, T("attn_v.weight"), DIM, KV_DIM, OFF_WV + (size_t)l * DIM * KV_DIM);
        assert_f32_tensor(g, &in, T("attn_output.weight"), DIM, DIM, OFF_WO + (size_t)l * DIM * DIM);
        assert_f32_tensor(g, &in, T("ffn_norm.weight"), DIM, 1, OFF_RMS_FFN + (size_t)l * DIM);
        assert_f32_tensor(g, &in, T("ffn_gate.weight"), DIM, HID, OFF_W1 + (size_t)l * DIM * HID);
        assert_f32_tensor(g, &in, T("ffn_down.weight"), HID, DIM, OFF_W2 + (size_t)l * DIM * HID);
        assert_f32_tensor(g, &in, T("ffn_up.weight"), DIM, HID, OFF_W3 + (size_t)l * DIM * HID);
#undef T
    }
    /* Spot check against a hand-computed offset: embedding row 7, element 5. */
    const pam_gguf_tensor *emb = pam_gguf_find_tensor(g, "token_embd.weight");
    float want;
    memcpy(&want, in.ck + 28 + 4 * (7 * DIM + 5), 4);
    float got;
    memcpy(&got, (const char *)emb->data + 4 * (7 * DIM + 5), 4);
    assert_true(got == want && want != 0.0f);
    pam_gguf_close(g);
    free_inputs(&in);
}

static void test_convert_f16_and_q8_0(void **state) {
    inputs in = load_inputs();
    const float *f = ck_floats(&in);
    char out[4096];

    fresh_out("stories260K-f16.gguf", out, sizeof out);
    assert_int_equal(pam_convert_llama2c(ck_path(), tok_path(), out, PAM_DT_F16), PAM_OK);
    pam_gguf *g;
    assert_int_equal(pam_gguf_open(out, &g), PAM_OK);
    check_metadata(g, &in, 1);
    const pam_gguf_tensor *t = tensor(g, "blk.2.ffn_down.weight", PAM_DT_F16, HID, DIM);
    for (size_t i = 0; i < (size_t)HID * DIM; i++) {
        pam_f16 h;
        memcpy(&h, (const char *)t->data + 2 * i, 2);
        assert_int_equal(h, pam_f32_to_f16(f[OFF_W2 + 2 * (size_t)DIM * HID + i]));
    }
    tensor(g, "token_embd.weight", PAM_DT_F16, DIM, VOCAB);
    assert_f32_tensor(g, &in, "blk.2.ffn_norm.weight", DIM, 1, OFF_RMS_FFN + 2 * DIM);
    pam_gguf_close(g);

    fresh_out("stories260K-bf16.gguf", out, sizeof out);
    assert_int_equal(pam_convert_llama2c(ck_path(), tok_path(), out, PAM_DT_BF16), PAM_OK);
    assert_int_equal(pam_gguf_open(out, &g), PAM_OK);
    assert_int_equal(get_u(g, "general.file_type"), 32);
    t = tensor(g, "blk.0.attn_k.weight", PAM_DT_BF16, DIM, KV_DIM);
    for (size_t i = 0; i < (size_t)DIM * KV_DIM; i++) {
        pam_bf16 h;
        memcpy(&h, (const char *)t->data + 2 * i, 2);
        assert_int_equal(h, pam_f32_to_bf16(f[OFF_WK + i]));
    }
    pam_gguf_close(g);

    fresh_out("stories260K-q8_0.gguf", out, sizeof out);
    assert_int_equal(pam_convert_llama2c(ck_path(), tok_path(), out, PAM_DT_Q8_0), PAM_OK);
    assert_int_equal(pam_gguf_open(out, &g), PAM_OK);
    check_metadata(g, &in, 7);
    /* Rows of 64 quantise; rows of 172 (ffn_down) are not whole blocks of 32
     * and stay F16; norms stay F32. */
    t = tensor(g, "blk.4.attn_q.weight", PAM_DT_Q8_0, DIM, DIM);
    assert_int_equal(t->n_bytes, (size_t)DIM * (DIM / 32) * 34);
    float row[DIM];
    const float *src = f + OFF_WQ + 4 * (size_t)DIM * DIM;
    for (int r = 0; r < DIM; r++) {
        pam_dequantize_row(PAM_DT_Q8_0, (const char *)t->data + (size_t)r * 2 * 34, row, DIM);
        float amax = 0;
        for (int i = 0; i < DIM; i++) amax = fmaxf(amax, fabsf(src[r * DIM + i]));
        for (int i = 0; i < DIM; i++) assert_true(fabsf(row[i] - src[r * DIM + i]) <= amax / 127.0f * 0.6f + 1e-7f);
    }
    /* Bit-exact with the reference quantiser on one row. */
    pam_block_q8_0 blk[DIM / 32];
    pam_quantize_row(PAM_DT_Q8_0, src + 3 * DIM, blk, DIM);
    assert_memory_equal(blk, (const char *)t->data + 3 * sizeof blk, sizeof blk);
    tensor(g, "token_embd.weight", PAM_DT_Q8_0, DIM, VOCAB);
    tensor(g, "blk.0.ffn_gate.weight", PAM_DT_Q8_0, DIM, HID);
    tensor(g, "blk.0.ffn_down.weight", PAM_DT_F16, HID, DIM);
    tensor(g, "blk.0.attn_norm.weight", PAM_DT_F32, DIM, 1);
    tensor(g, "output_norm.weight", PAM_DT_F32, DIM, 1);
    pam_gguf_close(g);

    fresh_out("stories260K-q4_0.gguf", out, sizeof out);
    assert_int_equal(pam_convert_llama2c(ck_path(), tok_path(), out, PAM_DT_Q4_0), PAM_OK);
    assert_int_equal(pam_gguf_open(out, &g), PAM_OK);
    assert_int_equal(get_u(g, "general.file_type"), 2);
    tensor(g, "blk.1.attn_v.weight", PAM_DT_Q4_0, DIM, KV_DIM);
    tensor(g, "blk.1.ffn_down.weight", PAM_DT_F16, HID, DIM);
    pam_gguf_close(g);

    /* Unsupported output type: nothing written. */
    fresh_out("stories260K-q5.gguf", out, sizeof out);
    assert_int_equal(pam_convert_llama2c(ck_path(), tok_path(), out, PAM_DT_Q5_0), PAM_ERR_UNSUPPORTED);
    assert_no_output(out);
    free_inputs(&in);
}

/* A checkpoint without the legacy freq_cis tables, and ones with a separate
 * classifier (negative vocab_size), with and without those tables. */
static void test_convert_layout_variants(void **state) {
    inputs in = load_inputs();
    const size_t weights_bytes = 28 + 4 * (size_t)OFF_END, freq_bytes = 4 * (size_t)FREQ_FLOATS;
    const size_t cls_floats = (size_t)VOCAB * DIM;
    float *cls = malloc(cls_floats * 4);
    for (size_t i = 0; i < cls_floats; i++) cls[i] = (float)i * 0.001f - 3.0f;
    char *buf = malloc(weights_bytes + freq_bytes + cls_floats * 4);
    char ck[4096], out[4096];

    for (int variant = 0; variant < 3; variant++) {
        int with_freq = variant != 0, separate = variant != 1;
        size_t n = weights_bytes;
        memcpy(buf, in.ck, weights_bytes);
        if (with_freq) {
            memcpy(buf + n, in.ck + weights_bytes, freq_bytes);
            n += freq_bytes;
        }
        if (separate) {
            int32_t neg = -VOCAB;
            memcpy(buf + 20, &neg, 4);
            memcpy(buf + n, cls, cls_floats * 4);
            n += cls_floats * 4;
        }
        snprintf(ck, sizeof ck, "%s", pam_test_tmp("variant.bin"));
        write_file(ck, buf, n);
        fresh_out("variant.gguf", out, sizeof out);
        if (pam_convert_llama2c(ck, tok_path(), out, PAM_DT_F32) != PAM_OK)
            fail_msg("variant %d: %s", variant, pam_last_error());
        pam_gguf *g;
        assert_int_equal(pam_gguf_open(out, &g), PAM_OK);
        assert_str(g, "general.name", "variant");
        assert_int_equal(get_u(g, "llama.vocab_size"), VOCAB);
        assert_f32_tensor(g, &in, "blk.4.ffn_up.weight", DIM, HID, OFF_W3 + 4 * (size_t)DIM * HID);
        assert_f32_tensor(g, &in, "output_norm.weight", DIM, 1, OFF_RMS_FINAL);
        if (separate) {
            assert_int_equal(pam_gguf_n_tensors(g), 3 + 9 * NL);
            const pam_gguf_tensor *t = tensor(g, "output.weight", PAM_DT_F32, DIM, VOCAB);
            assert_memory_equal(t->data, cls, cls_floats * 4);
        } else {
            assert_int_equal(pam_gguf_n_tensors(g), 2 + 9 * NL);
            assert_null(pam_gguf_find_tensor(g, "output.weight"));
        }
        pam_gguf_close(g);
    }
    free(buf);
    free(cls);
    free_inputs(&in);
}

/* Runs a conversion expected to fail with code and a message containing
 * word, and checks that no output (nor its temporary) appeared. */
static void expect_fail(const char *ck, const char *tok, pam_status code, const char *word) {
    char out[4096];
    fresh_out("bad.gguf", out, sizeof out);
    pam_status st = pam_convert_llama2c(ck, tok, out, PAM_DT_F32);
    if (st != code) fail_msg("want %d, got %d: %s", code, st, pam_last_error());
    if (!strstr(pam_last_error(), word)) fail_msg("message '%s' lacks '%s'", pam_last_error(), word);
    assert_no_output(out);
}

static void write_header(char *buf, int32_t dim, int32_t hid, int32_t nl, int32_t nh, int32_t nkv, int32_t vocab,
                         int32_t seq) {
    int32_t h[7] = {dim, hid, nl, nh, nkv, vocab, seq};
    memcpy(buf, h, sizeof h);
}

static void test_convert_bad_inputs(void **state) {
    inputs in = load_inputs();
    char ck[4096], tok[4096];
    snprintf(ck, sizeof ck, "%s", pam_test_tmp("bad.bin"));
    snprintf(tok, sizeof tok, "%s", pam_test_tmp("bad-tok.bin"));

    /* Missing files. */
    char missing[4096];
    snprintf(missing, sizeof missing, "%s", pam_test_tmp("does-not-exist.bin"));
    expect_fail(missing, tok_path(), PAM_ERR_IO, "does-not-exist.bin");
    snprintf(missing, sizeof missing, "%s", pam_test_tmp("no-tokenizer.bin"));
    expect_fail(ck_path(), missing, PAM_ERR_IO, "no-tokenizer.bin");

    /* Truncated checkpoint: by one float, and to half a header. */
    write_file(ck, in.ck, in.ck_size - 4);
    expect_fail(ck, tok_path(), PAM_ERR_FORMAT, "1056536 bytes");
    expect_fail(ck, tok_path(), PAM_ERR_FORMAT, "implies 1056540 bytes (1040156 without");
    write_file(ck, in.ck, 12);
    expect_fail(ck, tok_path(), PAM_ERR_FORMAT, "too short");
    write_file(ck, in.ck, 0);
    expect_fail(ck, tok_path(), PAM_ERR_FORMAT, "too short");
    /* One float too many. */
    char *big = malloc(in.ck_size + 4);
    memcpy(big, in.ck, in.ck_size);
    memset(big + in.ck_size, 0, 4);
    write_file(ck, big, in.ck_size + 4);
    expect_fail(ck, tok_path(), PAM_ERR_FORMAT, "implies");
    free(big);

    /* Header values that cannot describe a model. */
    char *c = malloc(in.ck_size);
    memcpy(c, in.ck, in.ck_size);
    write_header(c, DIM, HID, NL, NH, NKV, 500, SEQ); /* wrong vocab: size no longer matches */
    write_file(ck, c, in.ck_size);
    expect_fail(ck, tok_path(), PAM_ERR_FORMAT, "vocab_size 500");
    write_header(c, 0, HID, NL, NH, NKV, VOCAB, SEQ);
    write_file(ck, c, in.ck_size);
    expect_fail(ck, tok_path(), PAM_ERR_FORMAT, "dim 0");
    write_header(c, DIM, HID, NL, 3, 3, VOCAB, SEQ);
    write_file(ck, c, in.ck_size);
    expect_fail(ck, tok_path(), PAM_ERR_FORMAT, "n_heads 3 does not divide dim 64");
    write_header(c, DIM, HID, NL, NH, 3, VOCAB, SEQ);
    write_file(ck, c, in.ck_size);
    expect_fail(ck, tok_path(), PAM_ERR_FORMAT, "n_kv_heads 3 does not divide n_heads 8");
    write_header(c, DIM, HID, NL, NH, 16, VOCAB, SEQ);
    write_file(ck, c, in.ck_size);
    expect_fail(ck, tok_path(), PAM_ERR_FORMAT, "n_kv_heads 16");
    write_header(c, 1 << 30, INT32_MAX, INT32_MAX, 1, 1, VOCAB, SEQ); /* sizes overflow */
    write_file(ck, c, in.ck_size);
    expect_fail(ck, tok_path(), PAM_ERR_FORMAT, "implies");
    write_header(c, DIM, -HID, NL, NH, NKV, VOCAB, SEQ);
    write_file(ck, c, in.ck_size);
    expect_fail(ck, tok_path(), PAM_ERR_FORMAT, "hidden_dim -172");
    free(c);

    /* Consistent tiny checkpoints whose vocab disagrees with the tokenizer:
     * dim 8, hidden 16, 1 layer, 2 heads, 1 kv head, seq 4. */
    for (int k = 0; k < 2; k++) {
        int32_t vocab = k == 0 ? 600 : 300;
        size_t floats = (size_t)vocab * 8 + 8 + 64 + 2 * 32 + 64 + 8 + 3 * 128 + 8;
        char *tiny = calloc(1, 28 + 4 * floats);
        write_header(tiny, 8, 16, 1, 2, 1, vocab, 4);
        write_file(ck, tiny, 28 + 4 * floats);
        expect_fail(ck, tok_path(), PAM_ERR_FORMAT, k == 0 ? "ends at token 512 of 600" : "larger than");
        free(tiny);
    }

    /* Truncated tokenizer: inside a token's bytes, inside a score, empty. */
    write_file(tok, in.tok, 3000);
    expect_fail(ck_path(), tok, PAM_ERR_FORMAT, "tokenizer");
    write_file(tok, in.tok, 4 + 8 + 5 + 3);
    expect_fail(ck_path(), tok, PAM_ERR_FORMAT, "token 1");
    write_file(tok, in.tok, in.tok_size - 1);
    expect_fail(ck_path(), tok, PAM_ERR_FORMAT, "token 511");
    write_file(tok, in.tok, 2);
    expect_fail(ck_path(), tok, PAM_ERR_FORMAT, "too short");
    /* A negative token length. */
    char *t = malloc(in.tok_size);
    memcpy(t, in.tok, in.tok_size);
    int32_t neg = -5;
    memcpy(t + 8, &neg, 4);
    write_file(tok, t, in.tok_size);
    expect_fail(ck_path(), tok, PAM_ERR_FORMAT, "length -5");
    free(t);

    /* A failed conversion leaves an existing output as it was. */
    char out[4096];
    snprintf(out, sizeof out, "%s", pam_test_tmp("keep.gguf"));
    write_file(out, "old", 3);
    write_file(ck, in.ck, in.ck_size - 4);
    assert_int_equal(pam_convert_llama2c(ck, tok_path(), out, PAM_DT_F32), PAM_ERR_FORMAT);
    size_t n;
    char *kept = pam_test_read_file(out, &n);
    assert_non_null(kept);
    assert_int_equal(n, 3);
    assert_memory_equal(kept, "old", 3);
    free(kept);
    free_inputs(&in);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_convert_f32),
        cmocka_unit_test(test_convert_f16_and_q8_0),
        cmocka_unit_test(test_convert_layout_variants),
        cmocka_unit_test(test_convert_bad_inputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
