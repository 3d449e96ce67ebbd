/* llama2.c checkpoint + tokenizer -> GGUF.
 *
 * Every input is validated before the output is touched: the checkpoint's
 * size must be exactly what its header implies (with or without the legacy
 * freq_cis tables), and the tokenizer must hold exactly vocab_size entries.
 * The writer then produces PATH.tmp and renames it, so a failure at any point
 * leaves no output (and never a half-written one).
 *
 * Weights are written with llama.cpp's names and shapes. llama2.c already
 * rotates adjacent pairs (2i, 2i+1), the layout GGUF "llama" weights use, so
 * wq/wk are copied without the q/k permutation llama.cpp applies to HF
 * checkpoints. The checkpoint is mapped, and F32 tensors are handed to the
 * writer straight from the mapping. */
#include "model/convert.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fp16.h"
#include "core/status.h"
#include "kernels/quant.h"
#include "model/gguf.h"

/* llama_ftype values for general.file_type. */
enum {
    FTYPE_ALL_F32 = 0,
    FTYPE_MOSTLY_F16 = 1,
    FTYPE_MOSTLY_Q4_0 = 2,
    FTYPE_MOSTLY_Q8_0 = 7,
    FTYPE_MOSTLY_Q4_K_S = 14,
    FTYPE_MOSTLY_Q6_K = 18,
    FTYPE_MOSTLY_BF16 = 32,
};

/* SentencePiece token types (llama_token_type). */
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_BYTE = 6 };

#define L2C_HEADER_BYTES 28

typedef struct {
    int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
} l2c_config;

typedef struct {
    const void *data;
    size_t size;
} mapped_file;

typedef struct {
    char **pieces;
    float *scores;
    int32_t *types;
    int32_t n;
} l2c_vocab;

/* What the conversion owns until the writer has written. */
typedef struct {
    pam_gguf_writer *w;
    pam_dtype want;
    void **bufs;
    size_t n_bufs, cap_bufs;
} conv_ctx;

static pam_status map_file(const char *path, const char *what, mapped_file *out) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return PAM_ERR(PAM_ERR_IO, "%s %s: %s", what, path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return PAM_ERR(PAM_ERR_IO, "%s %s: %s", what, path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return PAM_ERR(PAM_ERR_IO, "%s %s: not a regular file", what, path);
    }
    out->size = (size_t)st.st_size;
    out->data = NULL;
    if (out->size > 0) {
        void *p = mmap(NULL, out->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            return PAM_ERR(PAM_ERR_IO, "%s %s: mmap: %s", what, path, strerror(e));
        }
        out->data = p;
    }
    close(fd);
    return PAM_OK;
}

static void unmap_file(mapped_file *m) {
    if (m->data) munmap((void *)m->data, m->size);
    m->data = NULL;
}

static int32_t le_i32(const uint8_t *p) {
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    int32_t v;
    memcpy(&v, &u, 4);
    return v;
}

static float le_f32(const uint8_t *p) { return pam_bits_f32((uint32_t)le_i32(p)); }

/* Saturating, so an absurd header yields a size mismatch rather than a wrap. */
static uint64_t sat_mul(uint64_t a, uint64_t b) { return a && b > UINT64_MAX / a ? UINT64_MAX : a * b; }
static uint64_t sat_add(uint64_t a, uint64_t b) { return b > UINT64_MAX - a ? UINT64_MAX : a + b; }

static pam_status check_config(const l2c_config *c, const char *path) {
    if (c->dim <= 0 || c->hidden_dim <= 0 || c->n_layers <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 ||
        c->vocab_size == 0 || c->vocab_size == INT32_MIN || c->seq_len <= 0)
        return PAM_ERR(PAM_ERR_FORMAT,
                       "checkpoint %s: not a llama2.c checkpoint (header dim %d, hidden_dim %d, n_layers %d, "
                       "n_heads %d, n_kv_heads %d, vocab_size %d, seq_len %d)",
                       path, c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size,
                       c->seq_len);
    if (c->dim % c->n_heads != 0)
        return PAM_ERR(PAM_ERR_FORMAT, "checkpoint %s: n_heads %d does not divide dim %d", path, c->n_heads, c->dim);
    if (c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads != 0)
        return PAM_ERR(PAM_ERR_FORMAT, "checkpoint %s: n_kv_heads %d does not divide n_heads %d", path,
                       c->n_kv_heads, c->n_heads);
    if ((c->dim / c->n_heads) % 2 != 0)
        return PAM_ERR(PAM_ERR_FORMAT, "checkpoint %s: head size %d is odd; RoPE needs pairs", path,
                       c->dim / c->n_heads);
    return PAM_OK;
}

/* Offsets (in floats, after the header) of each weight array. */
typedef struct {
    uint64_t token_embd, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, end_weights, freq_floats,
        wcls_floats;
} l2c_layout;

static l2c_layout layout_of(const l2c_config *c) {
    uint64_t dim = (uint64_t)c->dim, hid = (uint64_t)c->hidden_dim, L = (uint64_t)c->n_layers;
    uint64_t vocab = (uint64_t)(c->vocab_size < 0 ? -(int64_t)c->vocab_size : c->vocab_size);
    uint64_t kv_dim = dim / (uint64_t)c->n_heads * (uint64_t)c->n_kv_heads;
    uint64_t head = dim / (uint64_t)c->n_heads;
    l2c_layout l;
    uint64_t o = 0;
    l.token_embd = o, o = sat_add(o, sat_mul(vocab, dim));
    l.rms_att = o, o = sat_add(o, sat_mul(L, dim));
    l.wq = o, o = sat_add(o, sat_mul(L, sat_mul(dim, dim)));
    l.wk = o, o = sat_add(o, sat_mul(L, sat_mul(dim, kv_dim)));
    l.wv = o, o = sat_add(o, sat_mul(L, sat_mul(dim, kv_dim)));
    l.wo = o, o = sat_add(o, sat_mul(L, sat_mul(dim, dim)));
    l.rms_ffn = o, o = sat_add(o, sat_mul(L, dim));
    l.w1 = o, o = sat_add(o, sat_mul(L, sat_mul(dim, hid)));
    l.w2 = o, o = sat_add(o, sat_mul(L, sat_mul(hid, dim)));
    l.w3 = o, o = sat_add(o, sat_mul(L, sat_mul(dim, hid)));
    l.rms_final = o, o = sat_add(o, dim);
    l.end_weights = o;
    l.freq_floats = sat_mul((uint64_t)c->seq_len, head); /* real and imaginary halves */
    l.wcls_floats = c->vocab_size < 0 ? sat_mul(vocab, dim) : 0;
    return l;
}

static uint64_t floats_to_bytes(uint64_t n) { return sat_add(L2C_HEADER_BYTES, sat_mul(n, 4)); }

/* ---- tokenizer ---------------------------------------------------------- */

static void vocab_free(l2c_vocab *v) {
    if (v->pieces)
        for (int32_t i = 0; i < v->n; i++) free(v->pieces[i]);
    free(v->pieces);
    free(v->scores);
    free(v->types);
    memset(v, 0, sizeof *v);
}

static int is_byte_piece(const uint8_t *s, int32_t len) {
    static const char hex[] = "0123456789ABCDEF";
    return len == 6 && !memcmp(s, "<0x", 3) && strchr(hex, s[3]) && strchr(hex, s[4]) && s[3] && s[4] &&
           s[5] == '>';
}

/* SentencePiece stores a space as U+2581 ("▁"); llama2.c's export turned it
 * back into ' ', which the GGUF "llama" tokenizer would never match. */
static char *escape_spaces(const uint8_t *s, int32_t len) {
    size_t n = 0;
    for (int32_t i = 0; i < len; i++) n += s[i] == ' ' ? 3 : 1;
    char *out = malloc(n + 1);
    if (!out) return NULL;
    size_t o = 0;
    for (int32_t i = 0; i < len; i++) {
        if (s[i] == ' ') {
            memcpy(out + o, "\xe2\x96\x81", 3);
            o += 3;
        } else {
            out[o++] = (char)s[i];
        }
    }
    out[o] = '\0';
    return out;
}

static pam_status read_vocab(const char *path, int32_t n_vocab, l2c_vocab *v) {
    mapped_file m;
    PAM_TRY(map_file(path, "tokenizer", &m));
    const uint8_t *p = m.data;
    size_t size = m.size, pos = 4;
    pam_status st = PAM_OK;
    memset(v, 0, sizeof *v);
    if (size < 4) {
        st = PAM_ERR(PAM_ERR_FORMAT, "tokenizer %s: %zu bytes, too short for a llama2.c tokenizer", path, size);
        goto done;
    }
    if (le_i32(p) <= 0) {
        st = PAM_ERR(PAM_ERR_FORMAT, "tokenizer %s: max_token_length %d is not positive", path, le_i32(p));
        goto done;
    }
    v->pieces = calloc((size_t)n_vocab, sizeof *v->pieces);
    v->scores = malloc((size_t)n_vocab * sizeof *v->scores);
    v->types = malloc((size_t)n_vocab * sizeof *v->types);
    if (!v->pieces || !v->scores || !v->types) {
        st = PAM_ERR(PAM_ERR_NOMEM, "tokenizer %s: out of memory for %d tokens", path, n_vocab);
        goto done;
    }
    v->n = n_vocab;
    for (int32_t i = 0; i < n_vocab; i++) {
        if (size - pos < 8) {
            st = PAM_ERR(PAM_ERR_FORMAT,
                         "tokenizer %s: ends at token %d of %d (truncated, or a vocabulary smaller than the "
                         "checkpoint's vocab_size %d)",
                         path, i, n_vocab, n_vocab);
            goto done;
        }
        float score = le_f32(p + pos);
        int32_t len = le_i32(p + pos + 4);
        pos += 8;
        if (len < 0 || (size_t)len > size - pos) {
            st = PAM_ERR(PAM_ERR_FORMAT, "tokenizer %s: token %d has length %d but %zu bytes remain (truncated?)",
                         path, i, len, size - pos);
            goto done;
        }
        const uint8_t *s = p + pos;
        pos += (size_t)len;
        if (memchr(s, 0, (size_t)len)) {
            st = PAM_ERR(PAM_ERR_FORMAT, "tokenizer %s: token %d contains a NUL byte", path, i);
            goto done;
        }
        /* llama2.c's export writes BOS/EOS as "\n<s>\n" and "\n</s>\n";
         * llama.cpp's llama2.c converter names ids 0..2 canonically. */
        int32_t type;
        if (i == 0) {
            s = (const uint8_t *)"<unk>", len = 5, type = TT_UNKNOWN;
        } else if (i == 1) {
            s = (const uint8_t *)"<s>", len = 3, type = TT_CONTROL;
        } else if (i == 2) {
            s = (const uint8_t *)"</s>", len = 4, type = TT_CONTROL;
        } else if (len == 0) {
            type = TT_CONTROL;
        } else if (is_byte_piece(s, len)) {
            type = TT_BYTE;
        } else {
            type = TT_NORMAL;
        }
        v->pieces[i] = escape_spaces(s, len);
        if (!v->pieces[i]) {
            st = PAM_ERR(PAM_ERR_NOMEM, "tokenizer %s: out of memory", path);
            goto done;
        }
        v->scores[i] = score;
        v->types[i] = type;
    }
    if (pos != size)
        st = PAM_ERR(PAM_ERR_FORMAT,
                     "tokenizer %s: %zu bytes left after %d tokens; its vocabulary is larger than the "
                     "checkpoint's vocab_size %d",
                     path, size - pos, n_vocab, n_vocab);
done:
    unmap_file(&m);
    if (st != PAM_OK) vocab_free(v);
    return st;
}

/* ---- tensors ------------------------------------------------------------ */

/* The type a 2-D tensor with rows of ne0 elements gets. K-quants fall back to
 * Q8_0 (as llama.cpp falls back to a 32-block type), and anything whose row
 * is not whole blocks to F16, like llama.cpp's converters. */
static pam_dtype pick_type(pam_dtype want, int64_t ne0) {
    if ((want == PAM_DT_Q4_K || want == PAM_DT_Q6_K) && ne0 % PAM_QK_K != 0) want = PAM_DT_Q8_0;
    if ((want == PAM_DT_Q8_0 || want == PAM_DT_Q4_0) && ne0 % PAM_QK8_0 != 0) want = PAM_DT_F16;
    return want;
}

static pam_status ctx_keep(conv_ctx *cx, void *buf) {
    if (cx->n_bufs == cx->cap_bufs) {
        size_t cap = cx->cap_bufs ? cx->cap_bufs * 2 : 32;
        void **nb = realloc(cx->bufs, cap * sizeof *nb);
        if (!nb) {
            free(buf);
            return PAM_ERR(PAM_ERR_NOMEM, "convert: out of memory");
        }
        cx->bufs = nb;
        cx->cap_bufs = cap;
    }
    cx->bufs[cx->n_bufs++] = buf;
    return PAM_OK;
}

/* src holds ne1 rows of ne0 floats (4-byte aligned, from the mapping). */
static pam_status add_tensor(conv_ctx *cx, const char *name, const float *src, int64_t ne0, int64_t ne1) {
    int64_t ne[2] = {ne0, ne1};
    uint32_t n_dims = ne1 > 1 ? 2 : 1;
    pam_dtype type = n_dims == 1 ? PAM_DT_F32 : pick_type(cx->want, ne0);
    if (type == PAM_DT_F32)
        return pam_gguf_writer_add_tensor(cx->w, name, PAM_DT_F32, n_dims, ne, src,
                                          (size_t)ne0 * (size_t)ne1 * sizeof(float));
    size_t row_bytes;
    PAM_TRY(pam_dtype_row_bytes(type, ne0, &row_bytes));
    size_t n_bytes = row_bytes * (size_t)ne1;
    uint8_t *dst = malloc(n_bytes ? n_bytes : 1);
    if (!dst) return PAM_ERR(PAM_ERR_NOMEM, "convert: out of memory for tensor %s (%zu bytes)", name, n_bytes);
    PAM_TRY(ctx_keep(cx, dst));
    for (int64_t r = 0; r < ne1; r++) {
        const float *x = src + r * ne0;
        uint8_t *y = dst + (size_t)r * row_bytes;
        switch (type) {
        case PAM_DT_F16:
            for (int64_t i = 0; i < ne0; i++) {
                pam_f16 h = pam_f32_to_f16(x[i]);
                memcpy(y + 2 * i, &h, 2);
            }
            break;
        case PAM_DT_BF16:
            for (int64_t i = 0; i < ne0; i++) {
                pam_bf16 h = pam_f32_to_bf16(x[i]);
                memcpy(y + 2 * i, &h, 2);
            }
            break;
        default: pam_quantize_row(type, x, y, ne0); break;
        }
    }
    return pam_gguf_writer_add_tensor(cx->w, name, type, n_dims, ne, dst, n_bytes);
}

static pam_status add_weights(conv_ctx *cx, const l2c_config *c, const float *f, const l2c_layout *l,
                              int has_freq) {
    int64_t dim = c->dim, hid = c->hidden_dim;
    int64_t vocab = c->vocab_size < 0 ? -(int64_t)c->vocab_size : c->vocab_size;
    int64_t kv_dim = dim / c->n_heads * c->n_kv_heads;
    char name[96];
    PAM_TRY(add_tensor(cx, "token_embd.weight", f + l->token_embd, dim, vocab));
    for (int64_t i = 0; i < c->n_layers; i++) {
#define BLK(suffix) (snprintf(name, sizeof name, "blk.%lld." suffix, (long long)i), name)
        PAM_TRY(add_tensor(cx, BLK("attn_norm.weight"), f + l->rms_att + i * dim, dim, 1));
        PAM_TRY(add_tensor(cx, BLK("attn_q.weight"), f + l->wq + i * dim * dim, dim, dim));
        PAM_TRY(add_tensor(cx, BLK("attn_k.weight"), f + l->wk + i * dim * kv_dim, dim, kv_dim));
        PAM_TRY(add_tensor(cx, BLK("attn_v.weight"), f + l->wv + i * dim * kv_dim, dim, kv_dim));
        PAM_TRY(add_tensor(cx, BLK("attn_output.weight"), f + l->wo + i * dim * dim, dim, dim));
        PAM_TRY(add_tensor(cx, BLK("ffn_norm.weight"), f + l->rms_ffn + i * dim, dim, 1));
        PAM_TRY(add_tensor(cx, BLK("ffn_gate.weight"), f + l->w1 + i * dim * hid, dim, hid));
        PAM_TRY(add_tensor(cx, BLK("ffn_down.weight"), f + l->w2 + i * hid * dim, hid, dim));
        PAM_TRY(add_tensor(cx, BLK("ffn_up.weight"), f + l->w3 + i * dim * hid, dim, hid));
#undef BLK
    }
    PAM_TRY(add_tensor(cx, "output_norm.weight", f + l->rms_final, dim, 1));
    if (c->vocab_size < 0) {
        uint64_t wcls = l->end_weights + (has_freq ? l->freq_floats : 0);
        PAM_TRY(add_tensor(cx, "output.weight", f + wcls, dim, vocab));
    }
    return PAM_OK;
}

static uint32_t file_type_of(pam_dtype t) {
    switch (t) {
    case PAM_DT_F16: return FTYPE_MOSTLY_F16;
    case PAM_DT_BF16: return FTYPE_MOSTLY_BF16;
    case PAM_DT_Q8_0: return FTYPE_MOSTLY_Q8_0;
    case PAM_DT_Q4_0: return FTYPE_MOSTLY_Q4_0;
    /* Every eligible matrix in Q4_K, as llama.cpp's Q4_K_S would mostly be. */
    case PAM_DT_Q4_K: return FTYPE_MOSTLY_Q4_K_S;
    case PAM_DT_Q6_K: return FTYPE_MOSTLY_Q6_K;
    default: return FTYPE_ALL_F32;
    }
}

/* general.name: the checkpoint's file name without directory and extension. */
static char *name_stem(const char *path) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strrchr(base, '.');
    size_t n = dot && dot != base ? (size_t)(dot - base) : strlen(base);
    char *s = malloc(n + 1);
    if (!s) return NULL;
    memcpy(s, base, n);
    s[n] = '\0';
    return s;
}

static pam_status add_metadata(pam_gguf_writer *w, const l2c_config *c, const l2c_vocab *v, const char *name,
                               pam_dtype out_type) {
    uint32_t vocab = (uint32_t)v->n;
    PAM_TRY(pam_gguf_writer_add_str(w, "general.architecture", "llama"));
    PAM_TRY(pam_gguf_writer_add_str(w, "general.name", name));
    PAM_TRY(pam_gguf_writer_add_u32(w, "general.file_type", file_type_of(out_type)));
    PAM_TRY(pam_gguf_writer_add_u32(w, "llama.vocab_size", vocab));
    PAM_TRY(pam_gguf_writer_add_u32(w, "llama.context_length", (uint32_t)c->seq_len));
    PAM_TRY(pam_gguf_writer_add_u32(w, "llama.embedding_length", (uint32_t)c->dim));
    PAM_TRY(pam_gguf_writer_add_u32(w, "llama.feed_forward_length", (uint32_t)c->hidden_dim));
    PAM_TRY(pam_gguf_writer_add_u32(w, "llama.block_count", (uint32_t)c->n_layers));
    PAM_TRY(pam_gguf_writer_add_u32(w, "llama.attention.head_count", (uint32_t)c->n_heads));
    PAM_TRY(pam_gguf_writer_add_u32(w, "llama.attention.head_count_kv", (uint32_t)c->n_kv_heads));
    PAM_TRY(pam_gguf_writer_add_u32(w, "llama.rope.dimension_count", (uint32_t)(c->dim / c->n_heads)));
    PAM_TRY(pam_gguf_writer_add_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f));
    PAM_TRY(pam_gguf_writer_add_f32(w, "llama.rope.freq_base", 10000.0f));
    PAM_TRY(pam_gguf_writer_add_str(w, "tokenizer.ggml.model", "llama"));
    PAM_TRY(pam_gguf_writer_add_str(w, "tokenizer.ggml.pre", "default"));
    PAM_TRY(pam_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->pieces, vocab));
    PAM_TRY(pam_gguf_writer_add_arr(w, "tokenizer.ggml.scores", PAM_GGUF_FLOAT32, v->scores, vocab));
    PAM_TRY(pam_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", PAM_GGUF_INT32, v->types, vocab));
    PAM_TRY(pam_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 1));
    PAM_TRY(pam_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 2));
    PAM_TRY(pam_gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", 0));
    PAM_TRY(pam_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", 1));
    PAM_TRY(pam_gguf_writer_add_bool(w, "tokenizer.ggml.add_eos_token", 0));
    PAM_TRY(pam_gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", 1));
    return PAM_OK;
}

static pam_status check_out_type(pam_dtype t) {
    switch (t) {
    case PAM_DT_F32:
    case PAM_DT_F16:
    case PAM_DT_BF16:
    case PAM_DT_Q8_0:
    case PAM_DT_Q4_0:
    case PAM_DT_Q4_K:
    case PAM_DT_Q6_K: return PAM_OK;
    default:
        return PAM_ERR(PAM_ERR_UNSUPPORTED, "convert: output type %s is not supported (F32, F16, BF16, Q8_0, "
                       "Q4_0, Q4_K, Q6_K are)", pam_dtype_name(t));
    }
}

pam_status pam_convert_llama2c(const char *checkpoint_path, const char *tokenizer_path, const char *out_path,
                               pam_dtype out_type) {
    if (!checkpoint_path || !tokenizer_path || !out_path)
        return PAM_ERR(PAM_ERR_INVALID, "convert: NULL path");
    PAM_TRY(check_out_type(out_type));

    mapped_file ck;
    PAM_TRY(map_file(checkpoint_path, "checkpoint", &ck));
    l2c_vocab voc = {0};
    conv_ctx cx = {0};
    char *stem = NULL;
    pam_status st = PAM_OK;

    if (ck.size < L2C_HEADER_BYTES) {
        st = PAM_ERR(PAM_ERR_FORMAT, "checkpoint %s: %zu bytes, too short for a llama2.c header", checkpoint_path,
                     ck.size);
        goto done;
    }
    const uint8_t *hp = ck.data;
    l2c_config c = {le_i32(hp), le_i32(hp + 4), le_i32(hp + 8), le_i32(hp + 12),
                    le_i32(hp + 16), le_i32(hp + 20), le_i32(hp + 24)};
    if ((st = check_config(&c, checkpoint_path)) != PAM_OK) goto done;
    l2c_layout lay = layout_of(&c);
    uint64_t without = floats_to_bytes(sat_add(lay.end_weights, lay.wcls_floats));
    uint64_t with = floats_to_bytes(sat_add(sat_add(lay.end_weights, lay.freq_floats), lay.wcls_floats));
    int has_freq;
    if ((uint64_t)ck.size == with) {
        has_freq = 1;
    } else if ((uint64_t)ck.size == without) {
        has_freq = 0;
    } else {
        st = PAM_ERR(PAM_ERR_FORMAT,
                     "checkpoint %s: %zu bytes, but its header (dim %d, hidden_dim %d, n_layers %d, n_heads %d, "
                     "n_kv_heads %d, vocab_size %d, seq_len %d) implies %llu bytes (%llu without the freq_cis "
                     "tables)",
                     checkpoint_path, ck.size, c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads,
                     c.vocab_size, c.seq_len, (unsigned long long)with, (unsigned long long)without);
        goto done;
    }
    int32_t n_vocab = c.vocab_size < 0 ? -c.vocab_size : c.vocab_size;
    if ((st = read_vocab(tokenizer_path, n_vocab, &voc)) != PAM_OK) goto done;
    if (!(stem = name_stem(checkpoint_path))) {
        st = PAM_ERR(PAM_ERR_NOMEM, "convert: out of memory");
        goto done;
    }

    cx.want = out_type;
    if ((st = pam_gguf_writer_create(&cx.w)) != PAM_OK) goto done;
    if ((st = add_metadata(cx.w, &c, &voc, stem, out_type)) != PAM_OK) goto done;
    const float *f = (const float *)((const uint8_t *)ck.data + L2C_HEADER_BYTES);
    if ((st = add_weights(&cx, &c, f, &lay, has_freq)) != PAM_OK) goto done;
    st = pam_gguf_writer_write(cx.w, out_path);

done:
    if (cx.w) pam_gguf_writer_destroy(cx.w);
    for (size_t i = 0; i < cx.n_bufs; i++) free(cx.bufs[i]);
    free(cx.bufs);
    free(stem);
    vocab_free(&voc);
    unmap_file(&ck);
    return st;
}
