/* Random-weight GGUF models in real shapes (see gen_model.h).
 *
 * All tensor data lives in one arena that the GGUF writer borrows; rows are
 * drawn and quantised straight into it, a block of rows per pool task, so the
 * only float scratch is one row per thread. */
#include "model/gen_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "kernels/quant.h"
#include "model/gguf.h"

#define GEN_ROWS_PER_TASK 64
#define GEN_ALIGN 64

/* Llama-3.2's rope_scaling block (config.json). */
#define LLAMA3_ROPE_FACTOR 32.0f
#define LLAMA3_ROPE_LOW_FREQ 1.0f
#define LLAMA3_ROPE_HIGH_FREQ 4.0f
#define LLAMA3_ROPE_ORIG_CTX 8192

static const pam_gen_model_shape gen_shapes[] = {
    {.name = "tinyllama-1.1b", .arch = "llama", .model_name = "TinyLlama 1.1B (random weights)",
     .n_embd = 2048, .n_layer = 22, .n_head = 32, .n_head_kv = 4, .head_dim = 64, .n_ff = 5632,
     .n_vocab = 32000, .n_ctx_train = 2048, .rope_theta = 10000.0f, .rms_eps = 1e-5f},
    {.name = "llama-3.2-1b", .arch = "llama", .model_name = "Llama 3.2 1B (random weights)",
     .n_embd = 2048, .n_layer = 16, .n_head = 32, .n_head_kv = 8, .head_dim = 64, .n_ff = 8192,
     .n_vocab = 128256, .n_ctx_train = 131072, .rope_theta = 500000.0f, .rms_eps = 1e-5f,
     .tied_output = 1, .llama3_rope = 1},
    {.name = "qwen2.5-0.5b", .arch = "qwen2", .model_name = "Qwen2.5 0.5B (random weights)",
     .n_embd = 896, .n_layer = 24, .n_head = 14, .n_head_kv = 2, .head_dim = 64, .n_ff = 4864,
     .n_vocab = 151936, .n_ctx_train = 32768, .rope_theta = 1000000.0f, .rms_eps = 1e-6f,
     .tied_output = 1, .qkv_bias = 1},
    {.name = "tiny", .arch = "llama", .model_name = "tiny (random weights)", .n_embd = 64,
     .n_layer = 2, .n_head = 4, .n_head_kv = 2, .head_dim = 16, .n_ff = 192, .n_vocab = 300,
     .n_ctx_train = 1024, .rope_theta = 10000.0f, .rms_eps = 1e-5f},
    /* Rows of 256 and 512: every type, K-quants included, applies to every matrix. */
    {.name = "tiny-k", .arch = "llama", .model_name = "tiny-k (random weights)", .n_embd = 256,
     .n_layer = 2, .n_head = 4, .n_head_kv = 2, .head_dim = 64, .n_ff = 512, .n_vocab = 300,
     .n_ctx_train = 1024, .rope_theta = 10000.0f, .rms_eps = 1e-5f},
};
#define GEN_N_SHAPES ((int)(sizeof gen_shapes / sizeof gen_shapes[0]))

/* "<unk>", "<s>", "</s>", then 256 byte tokens. */
#define GEN_N_FIXED_TOKENS 259

const pam_gen_model_shape *pam_gen_model_shape_find(const char *name) {
    for (int i = 0; name && i < GEN_N_SHAPES; i++)
        if (!strcmp(gen_shapes[i].name, name)) return &gen_shapes[i];
    return NULL;
}

const char *pam_gen_model_shape_names(void) { return "llama-3.2-1b, tinyllama-1.1b, qwen2.5-0.5b, tiny, tiny-k"; }

int pam_gen_model_file_type(pam_dtype type) {
    switch (type) {
    case PAM_DT_F32: return 0;
    case PAM_DT_F16: return 1;
    case PAM_DT_Q4_0: return 2;
    case PAM_DT_Q8_0: return 7;
    case PAM_DT_Q4_K: return 14; /* Q4_K_S: every matrix Q4_K */
    case PAM_DT_Q6_K: return 18;
    case PAM_DT_BF16: return 32;
    default: return -1;
    }
}

/* ---- tensor list ---------------------------------------------------------- */

static pam_status gen_check_shape(const pam_gen_model_shape *s, pam_dtype type) {
    if (!s || !s->arch) return PAM_ERR(PAM_ERR_INVALID, "gen-model: no shape");
    if (s->n_embd <= 0 || s->n_layer <= 0 || s->n_head <= 0 || s->n_head_kv <= 0 || s->head_dim <= 0 ||
        s->n_ff <= 0 || s->n_ctx_train <= 0)
        return PAM_ERR(PAM_ERR_INVALID, "gen-model: shape '%s' has a non-positive dimension", s->name);
    if (s->n_head % s->n_head_kv != 0)
        return PAM_ERR(PAM_ERR_INVALID, "gen-model: %d heads are not a multiple of %d KV heads", s->n_head,
                       s->n_head_kv);
    if (s->head_dim % 2 != 0) return PAM_ERR(PAM_ERR_INVALID, "gen-model: head dimension %d is odd", s->head_dim);
    if (s->n_vocab < GEN_N_FIXED_TOKENS + 1)
        return PAM_ERR(PAM_ERR_INVALID, "gen-model: vocabulary %d is below the %d fixed tokens + 1", s->n_vocab,
                       GEN_N_FIXED_TOKENS);
    if (pam_gen_model_file_type(type) < 0)
        return PAM_ERR(PAM_ERR_UNSUPPORTED, "gen-model: weight type %s is not offered (use f32, f16, bf16, q8_0, q4_0, q4_k or q6_k)",
                       pam_dtype_name(type));
    const pam_dtype_info *ti = pam_dtype_get(type);
    int64_t qd = (int64_t)s->n_head * s->head_dim;
    int64_t cols[] = {s->n_embd, qd, s->n_ff};
    for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++)
        if (cols[i] % ti->block_elems != 0)
            return PAM_ERR(PAM_ERR_INVALID, "gen-model: row length %lld is not a multiple of the %s block (%d)",
                           (long long)cols[i], ti->name, ti->block_elems);
    return PAM_OK;
}

static pam_status gen_add(pam_gen_model_tensor *t, int64_t *n, const char *name, pam_gen_model_fill fill,
                          uint32_t type, int64_t ne0, int64_t ne1) {
    pam_gen_model_tensor *d = &t[(*n)++];
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name);
    d->fill = fill;
    d->type = type;
    d->ne[0] = ne0;
    d->ne[1] = ne1;
    d->n_dims = ne1 > 1 || fill == PAM_GEN_MATRIX ? 2 : 1;
    size_t row;
    PAM_TRY(pam_dtype_row_bytes(type, ne0, &row));
    d->n_bytes = row * (size_t)ne1;
    return PAM_OK;
}

pam_status pam_gen_model_tensors(const pam_gen_model_shape *s, pam_dtype type, pam_gen_model_tensor **out,
                                 int64_t *n_out) {
    *out = NULL;
    *n_out = 0;
    PAM_TRY(gen_check_shape(s, type));
    int64_t cap = 4 + (int64_t)s->n_layer * 12, n = 0;
    pam_gen_model_tensor *t = calloc((size_t)cap, sizeof *t);
    if (!t) return PAM_ERR(PAM_ERR_NOMEM, "gen-model: %lld tensor descriptors", (long long)cap);
    int64_t qd = (int64_t)s->n_head * s->head_dim, kvd = (int64_t)s->n_head_kv * s->head_dim;
    char name[48];
    pam_status st = gen_add(t, &n, "token_embd.weight", PAM_GEN_MATRIX, type, s->n_embd, s->n_vocab);
    if (st == PAM_OK && s->llama3_rope)
        st = gen_add(t, &n, "rope_freqs.weight", PAM_GEN_ROPE_FREQS, PAM_DT_F32, s->head_dim / 2, 1);
    for (int i = 0; st == PAM_OK && i < s->n_layer; i++) {
#define ADD(suffix, fill, ty, a, b)                                       \
    if (st == PAM_OK) {                                                   \
        snprintf(name, sizeof name, "blk.%d." suffix, i);                 \
        st = gen_add(t, &n, name, fill, ty, a, b);                        \
    }
        ADD("attn_norm.weight", PAM_GEN_NORM, PAM_DT_F32, s->n_embd, 1);
        ADD("attn_q.weight", PAM_GEN_MATRIX, type, s->n_embd, qd);
        ADD("attn_k.weight", PAM_GEN_MATRIX, type, s->n_embd, kvd);
        ADD("attn_v.weight", PAM_GEN_MATRIX, type, s->n_embd, kvd);
        if (s->qkv_bias) {
            ADD("attn_q.bias", PAM_GEN_BIAS, PAM_DT_F32, qd, 1);
            ADD("attn_k.bias", PAM_GEN_BIAS, PAM_DT_F32, kvd, 1);
            ADD("attn_v.bias", PAM_GEN_BIAS, PAM_DT_F32, kvd, 1);
        }
        ADD("attn_output.weight", PAM_GEN_MATRIX, type, qd, s->n_embd);
        ADD("ffn_norm.weight", PAM_GEN_NORM, PAM_DT_F32, s->n_embd, 1);
        ADD("ffn_gate.weight", PAM_GEN_MATRIX, type, s->n_embd, s->n_ff);
        ADD("ffn_up.weight", PAM_GEN_MATRIX, type, s->n_embd, s->n_ff);
        ADD("ffn_down.weight", PAM_GEN_MATRIX, type, s->n_ff, s->n_embd);
#undef ADD
    }
    if (st == PAM_OK) st = gen_add(t, &n, "output_norm.weight", PAM_GEN_NORM, PAM_DT_F32, s->n_embd, 1);
    if (st == PAM_OK && !s->tied_output) st = gen_add(t, &n, "output.weight", PAM_GEN_MATRIX, type, s->n_embd, s->n_vocab);
    if (st != PAM_OK) {
        free(t);
        return st;
    }
    *out = t;
    *n_out = n;
    return PAM_OK;
}

/* ---- values ----------------------------------------------------------------- */

void pam_gen_model_llama3_factors(float theta, int32_t head_dim, float factor, float low_freq_factor,
                                  float high_freq_factor, int32_t orig_ctx, float *out) {
    /* convert_hf_to_gguf.py computes these in float32 (torch) from Python
     * floats; the same operations in float give the same values. */
    float low_freq_wavelen = (float)orig_ctx / low_freq_factor;
    float high_freq_wavelen = (float)orig_ctx / high_freq_factor;
    for (int32_t i = 0; i < head_dim / 2; i++) {
        float freq = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
        float wavelen = (float)(2.0 * M_PI) / freq;
        if (wavelen < high_freq_wavelen) {
            out[i] = 1.0f;
        } else if (wavelen > low_freq_wavelen) {
            out[i] = factor;
        } else {
            float smooth = ((float)orig_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
            out[i] = 1.0f / ((1.0f - smooth) / factor + smooth);
        }
    }
}

static uint64_t gen_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* n uniforms in [-scale, scale), from a splitmix64 stream keyed by (seed, tensor, row). */
static void gen_uniform_row(uint64_t seed, int64_t tensor, int64_t row, float scale, float *dst, int64_t n) {
    uint64_t s = gen_mix(seed ^ gen_mix(((uint64_t)tensor << 40) ^ (uint64_t)row ^ 0x5851f42d4c957f2dULL));
    const float k = scale * (1.0f / 8388608.0f); /* 24-bit draws centred on 0 */
    int64_t i = 0;
    for (; i + 1 < n; i += 2) {
        uint64_t z = gen_mix(s += 0x9e3779b97f4a7c15ULL);
        dst[i] = (float)((int32_t)(z >> 40) - 8388608) * k;
        dst[i + 1] = (float)((int32_t)((z >> 8) & 0xffffff) - 8388608) * k;
    }
    if (i < n) {
        uint64_t z = gen_mix(s += 0x9e3779b97f4a7c15ULL);
        dst[i] = (float)((int32_t)(z >> 40) - 8388608) * k;
    }
}

typedef struct gen_job {
    const pam_gen_model_tensor *t;
    int64_t index;
    uint8_t *dst;
    size_t row_bytes;
    uint64_t seed;
    float *scratch; /* [n_threads][ne0] */
} gen_job;

static void gen_matrix_task(void *ctx, int64_t task, int thread) {
    const gen_job *j = ctx;
    int64_t cols = j->t->ne[0];
    float *row = j->scratch + (size_t)thread * (size_t)cols;
    float scale = 1.0f / sqrtf((float)cols);
    int64_t r0 = task * GEN_ROWS_PER_TASK, r1 = r0 + GEN_ROWS_PER_TASK;
    if (r1 > j->t->ne[1]) r1 = j->t->ne[1];
    for (int64_t r = r0; r < r1; r++) {
        gen_uniform_row(j->seed, j->index, r, scale, row, cols);
        pam_quantize_row((pam_dtype)j->t->type, row, j->dst + (size_t)r * j->row_bytes, cols);
    }
}

static void gen_fill_vector(const pam_gen_model_tensor *t, int64_t index, uint64_t seed, float *dst) {
    int64_t n = t->ne[0];
    switch (t->fill) {
    case PAM_GEN_NORM:
        gen_uniform_row(seed, index, 0, 0.05f, dst, n);
        for (int64_t i = 0; i < n; i++) dst[i] += 1.0f;
        break;
    case PAM_GEN_BIAS: gen_uniform_row(seed, index, 0, 0.02f, dst, n); break;
    case PAM_GEN_ROPE_FREQS:
        /* n = head_dim / 2; the theta matters and is not in the tensor list,
         * so the caller fills these. */
        break;
    case PAM_GEN_MATRIX: break;
    }
}

/* ---- tokenizer ----------------------------------------------------------------- */

/* Bijective base-26 name of k: a..z, aa..zz, aaa... */
static void gen_letters(uint32_t k, char *out) {
    char tmp[16];
    int n = 0;
    k++;
    while (k > 0 && n < (int)sizeof tmp) {
        k--;
        tmp[n++] = (char)('a' + k % 26);
        k /= 26;
    }
    for (int i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    out[n] = '\0';
}

#define GEN_PIECE_BYTES 16

static pam_status gen_add_tokenizer(pam_gguf_writer *w, int32_t n_vocab) {
    char *text = malloc((size_t)n_vocab * GEN_PIECE_BYTES);
    const char **pieces = malloc((size_t)n_vocab * sizeof *pieces);
    float *scores = malloc((size_t)n_vocab * sizeof *scores);
    int32_t *types = malloc((size_t)n_vocab * sizeof *types);
    pam_status st = PAM_OK;
    if (!text || !pieces || !scores || !types) {
        st = PAM_ERR(PAM_ERR_NOMEM, "gen-model: vocabulary of %d tokens", n_vocab);
        goto done;
    }
    /* Token types as llama.cpp numbers them. */
    enum { NORMAL = 1, UNKNOWN = 2, CONTROL = 3, BYTE = 6 };
    for (int32_t i = 0; i < n_vocab; i++) {
        char *p = text + (size_t)i * GEN_PIECE_BYTES;
        pieces[i] = p;
        scores[i] = 0.0f;
        types[i] = NORMAL;
        if (i == 0) {
            strcpy(p, "<unk>");
            types[i] = UNKNOWN;
        } else if (i < 3) {
            strcpy(p, i == 1 ? "<s>" : "</s>");
            types[i] = CONTROL;
        } else if (i < GEN_N_FIXED_TOKENS) {
            snprintf(p, GEN_PIECE_BYTES, "<0x%02X>", (unsigned)(i - 3));
            types[i] = BYTE;
        } else {
            /* "▁", the letters, then "▁" + letter groups: distinct pieces an
             * SPM tokenizer can merge into, lower scores for longer ones. */
            int32_t k = i - GEN_N_FIXED_TOKENS;
            if (k == 0) {
                strcpy(p, "\xe2\x96\x81");
            } else if (k <= 26) {
                p[0] = (char)('a' + k - 1);
                p[1] = '\0';
            } else {
                strcpy(p, "\xe2\x96\x81");
                gen_letters((uint32_t)(k - 27), p + 3);
            }
            scores[i] = -(float)k;
        }
    }
    st = pam_gguf_writer_add_str(w, "tokenizer.ggml.model", "llama");
    if (st == PAM_OK) st = pam_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", pieces, (uint64_t)n_vocab);
    if (st == PAM_OK) st = pam_gguf_writer_add_arr(w, "tokenizer.ggml.scores", PAM_GGUF_FLOAT32, scores, (uint64_t)n_vocab);
    if (st == PAM_OK) st = pam_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", PAM_GGUF_INT32, types, (uint64_t)n_vocab);
    if (st == PAM_OK) st = pam_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 1);
    if (st == PAM_OK) st = pam_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 2);
    if (st == PAM_OK) st = pam_gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    if (st == PAM_OK) st = pam_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", 1);
    if (st == PAM_OK) st = pam_gguf_writer_add_bool(w, "tokenizer.ggml.add_eos_token", 0);
done:
    free(text);
    free(pieces);
    free(scores);
    free(types);
    return st;
}

/* ---- metadata and file ----------------------------------------------------------- */

static pam_status gen_add_hparams(pam_gguf_writer *w, const pam_gen_model_shape *s, pam_dtype type) {
    char key[96];
#define ARCH_KEY(suffix) (snprintf(key, sizeof key, "%s." suffix, s->arch), key)
    PAM_TRY(pam_gguf_writer_add_str(w, "general.architecture", s->arch));
    PAM_TRY(pam_gguf_writer_add_str(w, "general.name", s->model_name ? s->model_name : s->name));
    PAM_TRY(pam_gguf_writer_add_u32(w, "general.file_type", (uint32_t)pam_gen_model_file_type(type)));
    PAM_TRY(pam_gguf_writer_add_u32(w, "general.quantization_version", 2));
    PAM_TRY(pam_gguf_writer_add_u32(w, ARCH_KEY("vocab_size"), (uint32_t)s->n_vocab));
    PAM_TRY(pam_gguf_writer_add_u32(w, ARCH_KEY("context_length"), (uint32_t)s->n_ctx_train));
    PAM_TRY(pam_gguf_writer_add_u32(w, ARCH_KEY("embedding_length"), (uint32_t)s->n_embd));
    PAM_TRY(pam_gguf_writer_add_u32(w, ARCH_KEY("block_count"), (uint32_t)s->n_layer));
    PAM_TRY(pam_gguf_writer_add_u32(w, ARCH_KEY("feed_forward_length"), (uint32_t)s->n_ff));
    PAM_TRY(pam_gguf_writer_add_u32(w, ARCH_KEY("rope.dimension_count"), (uint32_t)s->head_dim));
    PAM_TRY(pam_gguf_writer_add_u32(w, ARCH_KEY("attention.head_count"), (uint32_t)s->n_head));
    PAM_TRY(pam_gguf_writer_add_u32(w, ARCH_KEY("attention.head_count_kv"), (uint32_t)s->n_head_kv));
    if ((int64_t)s->n_head * s->head_dim != s->n_embd) {
        PAM_TRY(pam_gguf_writer_add_u32(w, ARCH_KEY("attention.key_length"), (uint32_t)s->head_dim));
        PAM_TRY(pam_gguf_writer_add_u32(w, ARCH_KEY("attention.value_length"), (uint32_t)s->head_dim));
    }
    PAM_TRY(pam_gguf_writer_add_f32(w, ARCH_KEY("attention.layer_norm_rms_epsilon"), s->rms_eps));
    PAM_TRY(pam_gguf_writer_add_f32(w, ARCH_KEY("rope.freq_base"), s->rope_theta));
#undef ARCH_KEY
    return PAM_OK;
}

pam_status pam_gen_model_write(const pam_gen_model_shape *s, pam_dtype type, uint64_t seed, pam_pool *pool,
                               const char *path) {
    pam_gen_model_tensor *t = NULL;
    int64_t n = 0;
    PAM_TRY(pam_gen_model_tensors(s, type, &t, &n));

    size_t total = 0;
    int64_t max_cols = 0;
    for (int64_t i = 0; i < n; i++) {
        total += (t[i].n_bytes + GEN_ALIGN - 1) / GEN_ALIGN * GEN_ALIGN;
        if (t[i].ne[0] > max_cols) max_cols = t[i].ne[0];
    }
    int n_threads = pool ? pam_pool_n_threads(pool) : 1;
    pam_gguf_writer *w = NULL;
    uint8_t *arena = aligned_alloc(GEN_ALIGN, total);
    float *scratch = malloc((size_t)n_threads * (size_t)max_cols * sizeof(float));
    pam_status st = PAM_OK;
    if (!arena || !scratch) {
        st = PAM_ERR(PAM_ERR_NOMEM, "gen-model: %.2f GB of tensor data", (double)total / 1e9);
        goto done;
    }
    st = pam_gguf_writer_create(&w);
    if (st == PAM_OK) st = gen_add_hparams(w, s, type);
    if (st == PAM_OK) st = gen_add_tokenizer(w, s->n_vocab);

    size_t off = 0;
    for (int64_t i = 0; st == PAM_OK && i < n; i++) {
        uint8_t *dst = arena + off;
        off += (t[i].n_bytes + GEN_ALIGN - 1) / GEN_ALIGN * GEN_ALIGN;
        if (t[i].fill == PAM_GEN_MATRIX) {
            gen_job j = {.t = &t[i], .index = i, .dst = dst, .row_bytes = t[i].n_bytes / (size_t)t[i].ne[1],
                         .seed = seed, .scratch = scratch};
            pam_pool_run(pool, gen_matrix_task, &j, (t[i].ne[1] + GEN_ROWS_PER_TASK - 1) / GEN_ROWS_PER_TASK);
        } else if (t[i].fill == PAM_GEN_ROPE_FREQS) {
            pam_gen_model_llama3_factors(s->rope_theta, s->head_dim, LLAMA3_ROPE_FACTOR, LLAMA3_ROPE_LOW_FREQ,
                                         LLAMA3_ROPE_HIGH_FREQ, LLAMA3_ROPE_ORIG_CTX, (float *)(void *)dst);
        } else {
            gen_fill_vector(&t[i], i, seed, (float *)(void *)dst);
        }
        st = pam_gguf_writer_add_tensor(w, t[i].name, t[i].type, t[i].n_dims, t[i].ne, dst, t[i].n_bytes);
    }
    if (st == PAM_OK) st = pam_gguf_writer_write(w, path);
done:
    pam_gguf_writer_destroy(w);
    free(scratch);
    free(arena);
    free(t);
    return st;
}
