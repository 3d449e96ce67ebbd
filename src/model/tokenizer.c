/* Tokenizers from GGUF metadata, following llama.cpp's llama-vocab.cpp so
 * that ids match it exactly:
 *  - special-token partition first (tokenizer_st_partition): control and
 *    unknown tokens are split out only with parse_special, user-defined
 *    tokens always; longer tokens first;
 *  - SPM: "▁"-escaped text, UTF-8 characters as symbols, bigram merges by
 *    highest score through a heap (O(n log n)), byte fallback <0xNN>;
 *  - BPE: pre-tokenizer split (tokenizer_pre.c), GPT-2 byte-to-unicode
 *    mapping, merges by lowest rank through a heap, per-byte fallback.
 * Deliberate differences from llama.cpp, all on input it does not define:
 * invalid UTF-8 bytes are single symbols (SPM: byte tokens; BPE: their own
 * byte-level symbol) instead of U+FFFD; a missing byte token yields unk
 * instead of an exception; an unknown tokenizer.ggml.pre name uses the
 * "default" pre-tokenizer instead of failing to load; the per-model
 * lstrip/rstrip attributes llama.cpp sets on some special tokens (phi-3,
 * jina) are not applied.
 *
 * Invariant: the tokenizer is immutable after pam_tokenizer_from_gguf, so
 * any number of threads may encode/decode with it concurrently. */
#include "model/tokenizer.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "core/status.h"
#include "core/vec.h"
#include "model/tokenizer_pre.h"

enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

/* ---- hash map over byte strings (open addressing, FNV-1a) -------------- */

typedef struct {
    const char *key; /* NULL = empty slot */
    uint32_t len;
    uint32_t hash;
    int32_t val;
} hslot;

typedef struct {
    hslot *slots;
    size_t mask;
} hmap;

static uint32_t fnv_step(uint32_t h, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}
#define FNV_INIT 2166136261u

static pam_status hmap_init(hmap *m, size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap *= 2;
    m->slots = calloc(cap, sizeof *m->slots);
    if (!m->slots) return PAM_ERR(PAM_ERR_NOMEM, "tokenizer: cannot allocate a %zu-slot table", cap);
    m->mask = cap - 1;
    return PAM_OK;
}

/* Inserts key -> val; an existing key keeps its value unless overwrite. */
static void hmap_put(hmap *m, const char *key, uint32_t len, int32_t val, int overwrite) {
    uint32_t h = fnv_step(FNV_INIT, key, len);
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        hslot *s = &m->slots[i];
        if (!s->key) {
            *s = (hslot){key, len, h, val};
            return;
        }
        if (s->hash == h && s->len == len && memcmp(s->key, key, len) == 0) {
            if (overwrite) s->val = val;
            return;
        }
    }
}

static int32_t hmap_get(const hmap *m, const char *key, size_t len) {
    uint32_t h = fnv_step(FNV_INIT, key, len);
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        const hslot *s = &m->slots[i];
        if (!s->key) return -1;
        if (s->hash == h && s->len == len && memcmp(s->key, key, len) == 0) return s->val;
    }
}

/* Merge keys are stored as left 0xFF right: 0xFF never occurs in UTF-8, so
 * the pair is unambiguous and can be looked up without building the key. */
static int32_t hmap_get_pair(const hmap *m, const char *l, size_t nl, const char *r, size_t nr) {
    const char sep = (char)0xFF;
    uint32_t h = fnv_step(fnv_step(fnv_step(FNV_INIT, l, nl), &sep, 1), r, nr);
    size_t len = nl + 1 + nr;
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        const hslot *s = &m->slots[i];
        if (!s->key) return -1;
        if (s->hash == h && s->len == len && memcmp(s->key, l, nl) == 0 && s->key[nl] == sep &&
            memcmp(s->key + nl + 1, r, nr) == 0)
            return s->val;
    }
}

/* ---- the tokenizer ------------------------------------------------------ */

struct pam_tokenizer {
    pam_tok_kind kind;
    pam_tok_pre pre;
    int32_t n_vocab;
    const char **text; /* NUL-terminated copies in blob */
    uint32_t *text_len;
    float *score;
    uint8_t *type;
    char *blob;
    hmap vocab;
    hmap merges;
    char *merge_blob;
    /* What each token prints as (token_bytes), precomputed. */
    char *dec_blob;
    size_t *dec_off; /* n_vocab + 1 */
    int32_t bos, eos, unk, eot, eom, pad;
    int add_bos, add_eos, add_space_prefix, ignore_merges;
    int32_t byte_id[256]; /* SPM byte fallback tokens, -1 if none */
    int32_t *special;     /* partition candidates, longest text first */
    size_t n_special;
    int32_t *eog;
    size_t n_eog;
};

typedef struct {
    int32_t *v;
    size_t n, cap;
    int oom;
} ivec;

static void iv_push(ivec *s, int32_t x) {
    if (s->oom) return;
    if (pam_vec_grow((void **)&s->v, &s->cap, s->n, sizeof *s->v, 64) != 0) {
        s->oom = 1;
        return;
    }
    s->v[s->n++] = x;
}

/* GPT-2's byte <-> unicode table: printable bytes map to themselves, the
 * other 68 to U+0100.. in byte order. */
static uint32_t gpt2_byte_to_cp(unsigned b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) return b;
    unsigned k = 0;
    for (unsigned x = 0; x < b; x++)
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) k++;
    return 256 + k;
}

typedef struct {
    unsigned char enc[256][2]; /* UTF-8 of the mapped code point */
    unsigned char enc_len[256];
    int16_t dec[512]; /* code point -> byte, -1 if not in the table */
} gpt2_bytes;

static gpt2_bytes g_bytes;
static int g_bytes_ready; /* written once before any tokenizer exists; see below */

static void gpt2_bytes_init(void) {
    /* Idempotent and deterministic, so a racing double init writes the same
     * values; it runs from pam_tokenizer_from_gguf before first use. */
    if (g_bytes_ready) return;
    for (int i = 0; i < 512; i++) g_bytes.dec[i] = -1;
    for (unsigned b = 0; b < 256; b++) {
        uint32_t cp = gpt2_byte_to_cp(b);
        g_bytes.dec[cp] = (int16_t)b;
        if (cp < 0x80) {
            g_bytes.enc[b][0] = (unsigned char)cp;
            g_bytes.enc_len[b] = 1;
        } else {
            g_bytes.enc[b][0] = (unsigned char)(0xC0 | (cp >> 6));
            g_bytes.enc[b][1] = (unsigned char)(0x80 | (cp & 0x3F));
            g_bytes.enc_len[b] = 2;
        }
    }
    g_bytes_ready = 1;
}

static int is_eog_text(const char *s, size_t n) {
    static const char *const names[] = {
        "<|eot_id|>",  "<|im_end|>",   "<|end|>",          "<end_of_turn>", "<|endoftext|>",
        "<EOT>",       "_<EOT>",       "<｜end▁of▁sentence｜>", "<|end_of_text|>", "<end_of_utterance>",
        "<|eom_id|>",  "<|return|>",   "<|call|>",
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i]) == n && memcmp(names[i], s, n) == 0) return 1;
    return 0;
}

static int parse_byte_token(const char *s, size_t n) {
    /* "<0xNN>" */
    if (n != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static pam_status get_id(const pam_gguf *g, const char *key, int32_t n_vocab, int32_t *id) {
    uint64_t v;
    pam_status st = pam_gguf_get_u64(g, key, &v);
    if (st == PAM_ERR_NOT_FOUND) return PAM_OK; /* keep the default */
    if (st != PAM_OK) return PAM_ERR(PAM_ERR_FORMAT, "tokenizer: %s: %s", key, pam_last_error());
    /* llama.cpp warns and keeps the default for an id outside the vocab. */
    if (v < (uint64_t)n_vocab) *id = (int32_t)v;
    return PAM_OK;
}

static pam_status get_flag(const pam_gguf *g, const char *key, int *flag) {
    int v;
    pam_status st = pam_gguf_get_bool(g, key, &v);
    if (st == PAM_ERR_NOT_FOUND) return PAM_OK;
    if (st != PAM_OK) return PAM_ERR(PAM_ERR_FORMAT, "tokenizer: %s: %s", key, pam_last_error());
    *flag = v != 0;
    return PAM_OK;
}

static size_t decode_token(const pam_tokenizer *tk, int32_t id, char *dst);

static int cmp_special(const void *a, const void *b, void *ctx) {
    const pam_tokenizer *tk = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (tk->text_len[x] != tk->text_len[y]) return tk->text_len[x] > tk->text_len[y] ? -1 : 1;
    return x < y ? -1 : x > y;
}

static pam_status build(const pam_gguf *g, pam_tokenizer *tk) {
    pam_gguf_str model;
    pam_status st = pam_gguf_get_str(g, "tokenizer.ggml.model", &model);
    if (st == PAM_ERR_NOT_FOUND) return PAM_ERR(PAM_ERR_FORMAT, "tokenizer: tokenizer.ggml.model is missing");
    if (st != PAM_OK) return PAM_ERR(PAM_ERR_FORMAT, "tokenizer: tokenizer.ggml.model: %s", pam_last_error());
    if (model.len == 5 && memcmp(model.ptr, "llama", 5) == 0)
        tk->kind = PAM_TOK_SPM;
    else if (model.len == 4 && memcmp(model.ptr, "gpt2", 4) == 0)
        tk->kind = PAM_TOK_BPE;
    else
        return PAM_ERR(PAM_ERR_UNSUPPORTED, "tokenizer: model '%.*s' is not supported (only llama, gpt2)",
                       (int)(model.len > 64 ? 64 : model.len), model.ptr);

    const pam_gguf_value *toks, *scores = NULL, *types = NULL, *merges = NULL;
    st = pam_gguf_get_arr(g, "tokenizer.ggml.tokens", PAM_GGUF_STRING, &toks);
    if (st != PAM_OK)
        return PAM_ERR(PAM_ERR_FORMAT, "tokenizer: tokenizer.ggml.tokens must be an array of strings: %s",
                       pam_last_error());
    uint64_t n = toks->v.arr.n;
    if (n == 0 || n > INT32_MAX) return PAM_ERR(PAM_ERR_FORMAT, "tokenizer: bad vocabulary size %llu", (unsigned long long)n);
    tk->n_vocab = (int32_t)n;

    st = pam_gguf_get_arr(g, "tokenizer.ggml.scores", PAM_GGUF_TYPE_COUNT, &scores);
    if (st == PAM_ERR_NOT_FOUND)
        scores = NULL;
    else if (st != PAM_OK || (scores->v.arr.type != PAM_GGUF_FLOAT32 && scores->v.arr.type != PAM_GGUF_FLOAT64) ||
             scores->v.arr.n != n)
        return PAM_ERR(PAM_ERR_FORMAT, "tokenizer: tokenizer.ggml.scores must be %llu floats",
                       (unsigned long long)n);
    st = pam_gguf_get_arr(g, "tokenizer.ggml.token_type", PAM_GGUF_TYPE_COUNT, &types);
    if (st == PAM_ERR_NOT_FOUND)
        types = NULL;
    else if (st != PAM_OK || types->v.arr.type == PAM_GGUF_STRING || types->v.arr.type == PAM_GGUF_ARRAY ||
             types->v.arr.type == PAM_GGUF_FLOAT32 || types->v.arr.type == PAM_GGUF_FLOAT64 ||
             types->v.arr.type == PAM_GGUF_BOOL || types->v.arr.n != n)
        return PAM_ERR(PAM_ERR_FORMAT, "tokenizer: tokenizer.ggml.token_type must be %llu integers",
                       (unsigned long long)n);
    if (tk->kind == PAM_TOK_BPE) {
        st = pam_gguf_get_arr(g, "tokenizer.ggml.merges", PAM_GGUF_STRING, &merges);
        if (st != PAM_OK)
            return PAM_ERR(PAM_ERR_FORMAT, "tokenizer: tokenizer.ggml.merges must be an array of strings: %s",
                           pam_last_error());
    }

    /* Token texts. */
    size_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t l = toks->v.arr.items[i].v.str.len;
        if (l > UINT32_MAX / 4) return PAM_ERR(PAM_ERR_FORMAT, "tokenizer: token %llu is too long", (unsigned long long)i);
        total += l + 1;
    }
    tk->text = malloc(n * sizeof *tk->text);
    tk->text_len = malloc(n * sizeof *tk->text_len);
    tk->score = malloc(n * sizeof *tk->score);
    tk->type = malloc(n);
    tk->blob = malloc(total);
    tk->dec_off = malloc((n + 1) * sizeof *tk->dec_off);
    if (!tk->text || !tk->text_len || !tk->score || !tk->type || !tk->blob || !tk->dec_off)
        return PAM_ERR(PAM_ERR_NOMEM, "tokenizer: out of memory for %llu tokens", (unsigned long long)n);
    PAM_TRY(hmap_init(&tk->vocab, n));
    char *p = tk->blob;
    for (uint64_t i = 0; i < n; i++) {
        const pam_gguf_str *s = &toks->v.arr.items[i].v.str;
        if (s->len) memcpy(p, s->ptr, s->len);
        p[s->len] = 0;
        tk->text[i] = p;
        tk->text_len[i] = (uint32_t)s->len;
        tk->score[i] = scores ? (float)pam_gguf_arr_f64(scores, i) : 0.0f;
        int64_t t = types ? pam_gguf_arr_i64(types, i) : TT_NORMAL;
        tk->type[i] = t >= 0 && t <= 6 ? (uint8_t)t : 0;
        /* Later duplicates win, as in llama.cpp's token_to_id map. */
        if (s->len > 0) hmap_put(&tk->vocab, p, (uint32_t)s->len, (int32_t)i, 1);
        p += s->len + 1;
    }

    /* Merges: "left right", split at the first space after the first byte. */
    if (merges) {
        uint64_t nm = merges->v.arr.n;
        if (nm > INT32_MAX) return PAM_ERR(PAM_ERR_FORMAT, "tokenizer: too many merges");
        size_t mt = 0;
        for (uint64_t i = 0; i < nm; i++) mt += merges->v.arr.items[i].v.str.len + 1;
        tk->merge_blob = malloc(mt ? mt : 1);
        if (!tk->merge_blob) return PAM_ERR(PAM_ERR_NOMEM, "tokenizer: out of memory for merges");
        PAM_TRY(hmap_init(&tk->merges, nm));
        char *q = tk->merge_blob;
        for (uint64_t i = 0; i < nm; i++) {
            const pam_gguf_str *s = &merges->v.arr.items[i].v.str;
            const char *sp = s->len > 1 ? memchr(s->ptr + 1, ' ', s->len - 1) : NULL;
            if (!sp) continue;
            size_t nl = (size_t)(sp - s->ptr);
            memcpy(q, s->ptr, s->len);
            q[nl] = (char)0xFF;
            /* The first occurrence of a pair keeps its rank (emplace). */
            hmap_put(&tk->merges, q, (uint32_t)s->len, (int32_t)i, 0);
            q += s->len;
        }
    }

    /* Special ids and flags. */
    tk->bos = tk->eos = tk->unk = tk->eot = tk->eom = tk->pad = -1;
    if (tk->kind == PAM_TOK_SPM) {
        /* llama.cpp's defaults for SentencePiece vocabularies. */
        if (n > 2) tk->bos = 1, tk->eos = 2, tk->unk = 0;
        tk->add_bos = 1;
        tk->add_space_prefix = 1;
    }
    PAM_TRY(get_id(g, "tokenizer.ggml.bos_token_id", tk->n_vocab, &tk->bos));
    PAM_TRY(get_id(g, "tokenizer.ggml.eos_token_id", tk->n_vocab, &tk->eos));
    PAM_TRY(get_id(g, "tokenizer.ggml.unknown_token_id", tk->n_vocab, &tk->unk));
    PAM_TRY(get_id(g, "tokenizer.ggml.padding_token_id", tk->n_vocab, &tk->pad));
    PAM_TRY(get_id(g, "tokenizer.ggml.eot_token_id", tk->n_vocab, &tk->eot));
    PAM_TRY(get_id(g, "tokenizer.ggml.eom_token_id", tk->n_vocab, &tk->eom));

    if (tk->kind == PAM_TOK_BPE) {
        pam_gguf_str pre = {"default", 7};
        st = pam_gguf_get_str(g, "tokenizer.ggml.pre", &pre);
        if (st != PAM_OK && st != PAM_ERR_NOT_FOUND)
            return PAM_ERR(PAM_ERR_FORMAT, "tokenizer: tokenizer.ggml.pre: %s", pam_last_error());
        if (st == PAM_ERR_NOT_FOUND) pre = (pam_gguf_str){"default", 7};
        int known;
        tk->pre = pam_tok_pre_from_name(pre.ptr, pre.len, &known);
        /* Unknown names: the "default" splitter (gpt-2 regex plus digit and
         * punctuation splits) rather than refusing the model; merges still
         * produce valid, if possibly different, tokenisations. */
        if (tk->pre == PAM_TOK_PRE_LLAMA3) {
            tk->add_bos = 1;
            tk->ignore_merges = !(pre.len == 9 && memcmp(pre.ptr, "smaug-bpe", 9) == 0);
        }
    }
    PAM_TRY(get_flag(g, "tokenizer.ggml.add_bos_token", &tk->add_bos));
    PAM_TRY(get_flag(g, "tokenizer.ggml.add_eos_token", &tk->add_eos));
    PAM_TRY(get_flag(g, "tokenizer.ggml.add_space_prefix", &tk->add_space_prefix));
    if (tk->kind == PAM_TOK_BPE) tk->add_space_prefix = 0;

    /* Byte fallback ids (SPM): <0xNN>, else the byte itself as a token. */
    for (int b = 0; b < 256; b++) {
        static const char hex[] = "0123456789ABCDEF";
        char buf[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
        int32_t id = hmap_get(&tk->vocab, buf, 6);
        if (id < 0) {
            char c = (char)b;
            id = hmap_get(&tk->vocab, &c, 1);
        }
        tk->byte_id[b] = id;
    }

    /* Special-token partition candidates and end-of-generation tokens. */
    size_t ns = 0, ne = 0;
    for (int32_t i = 0; i < tk->n_vocab; i++) {
        uint8_t t = tk->type[i];
        if ((t == TT_CONTROL || t == TT_USER || t == TT_UNKNOWN) && tk->text_len[i] > 0) ns++;
        if (is_eog_text(tk->text[i], tk->text_len[i])) ne++;
    }
    tk->special = malloc((ns ? ns : 1) * sizeof *tk->special);
    tk->eog = malloc((ne + 3) * sizeof *tk->eog);
    if (!tk->special || !tk->eog) return PAM_ERR(PAM_ERR_NOMEM, "tokenizer: out of memory");
    for (int32_t i = 0; i < tk->n_vocab; i++) {
        uint8_t t = tk->type[i];
        if ((t == TT_CONTROL || t == TT_USER || t == TT_UNKNOWN) && tk->text_len[i] > 0) tk->special[tk->n_special++] = i;
        if (is_eog_text(tk->text[i], tk->text_len[i])) tk->eog[tk->n_eog++] = i;
    }
    qsort_r(tk->special, tk->n_special, sizeof *tk->special, cmp_special, tk);
    if (tk->eos >= 0) tk->eog[tk->n_eog++] = tk->eos;
    if (tk->eot >= 0) tk->eog[tk->n_eog++] = tk->eot;
    if (tk->eom >= 0) tk->eog[tk->n_eog++] = tk->eom;

    /* Printable bytes of every token. Decoding never grows a token. */
    tk->dec_blob = malloc(total);
    if (!tk->dec_blob) return PAM_ERR(PAM_ERR_NOMEM, "tokenizer: out of memory");
    size_t at = 0;
    for (int32_t i = 0; i < tk->n_vocab; i++) {
        tk->dec_off[i] = at;
        at += decode_token(tk, i, tk->dec_blob + at);
    }
    tk->dec_off[tk->n_vocab] = at;
    return PAM_OK;
}

/* Writes what token id prints as; at most text_len[id] bytes. */
static size_t decode_token(const pam_tokenizer *tk, int32_t id, char *dst) {
    const char *s = tk->text[id];
    size_t n = tk->text_len[id], w = 0;
    switch (tk->type[id]) {
    case TT_USER: memcpy(dst, s, n); return n;
    case TT_BYTE:
        if (tk->kind == PAM_TOK_SPM) {
            int b = parse_byte_token(s, n);
            if (b >= 0) {
                dst[0] = (char)b;
                return 1;
            }
        }
        break; /* a malformed byte token prints as a normal one */
    case TT_NORMAL: break;
    default: return 0; /* control, unknown, unused, undefined */
    }
    if (tk->kind == PAM_TOK_SPM) {
        for (size_t i = 0; i < n;) {
            if (i + 3 <= n && memcmp(s + i, "\xE2\x96\x81", 3) == 0) {
                dst[w++] = ' ';
                i += 3;
            } else {
                dst[w++] = s[i++];
            }
        }
        return w;
    }
    /* Byte-level: each code point of the table stands for one byte; any
     * other code point is kept as its UTF-8. */
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
        if (k <= 0) {
            dst[w++] = s[i++];
            continue;
        }
        if (c < 512 && g_bytes.dec[c] >= 0)
            dst[w++] = (char)g_bytes.dec[c];
        else {
            memcpy(dst + w, s + i, (size_t)k);
            w += (size_t)k;
        }
        i += (size_t)k;
    }
    return w;
}

void pam_tokenizer_free(pam_tokenizer *tk) {
    if (!tk) return;
    free(tk->text);
    free(tk->text_len);
    free(tk->score);
    free(tk->type);
    free(tk->blob);
    free(tk->vocab.slots);
    free(tk->merges.slots);
    free(tk->merge_blob);
    free(tk->dec_blob);
    free(tk->dec_off);
    free(tk->special);
    free(tk->eog);
    free(tk);
}

pam_status pam_tokenizer_from_gguf(const pam_gguf *g, pam_tokenizer **out) {
    if (!g || !out) return PAM_ERR(PAM_ERR_INVALID, "tokenizer: NULL argument");
    gpt2_bytes_init();
    pam_tokenizer *tk = calloc(1, sizeof *tk);
    if (!tk) return PAM_ERR(PAM_ERR_NOMEM, "tokenizer: out of memory");
    pam_status st = build(g, tk);
    if (st != PAM_OK) {
        pam_tokenizer_free(tk);
        return st;
    }
    *out = tk;
    return PAM_OK;
}

pam_tok_kind pam_tokenizer_kind(const pam_tokenizer *tk) { return tk->kind; }
int32_t pam_tokenizer_n_vocab(const pam_tokenizer *tk) { return tk->n_vocab; }
int32_t pam_tokenizer_bos(const pam_tokenizer *tk) { return tk->bos; }
int32_t pam_tokenizer_eos(const pam_tokenizer *tk) { return tk->eos; }
int pam_tokenizer_add_bos(const pam_tokenizer *tk) { return tk->add_bos && tk->bos >= 0; }

int pam_tokenizer_is_eog(const pam_tokenizer *tk, int32_t id) {
    for (size_t i = 0; i < tk->n_eog; i++)
        if (tk->eog[i] == id) return 1;
    return 0;
}

const char *pam_tokenizer_piece(const pam_tokenizer *tk, int32_t id) {
    if (id < 0 || id >= tk->n_vocab) return NULL;
    return tk->text[id];
}

/* ---- merge heap ---------------------------------------------------------- */

typedef struct {
    double key; /* SPM: -score, BPE: rank; smaller pops first */
    int left, right;
    size_t size;
} bigram;

typedef struct {
    bigram *v;
    size_t n, cap;
    int oom;
} bheap;

static int bg_less(const bigram *a, const bigram *b) {
    return a->key < b->key || (a->key == b->key && a->left < b->left);
}

static void heap_push(bheap *h, bigram x) {
    if (h->oom) return;
    if (h->n == h->cap) {
        size_t nc = h->cap ? h->cap * 2 : 64;
        bigram *nv = realloc(h->v, nc * sizeof *nv);
        if (!nv) {
            h->oom = 1;
            return;
        }
        h->v = nv;
        h->cap = nc;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bg_less(&x, &h->v[p])) break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = x;
}

static bigram heap_pop(bheap *h) {
    bigram top = h->v[0], x = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && bg_less(&h->v[c + 1], &h->v[c])) c++;
        if (!bg_less(&h->v[c], &x)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n) h->v[i] = x;
    return top;
}

typedef struct {
    int prev, next;
    size_t off, n;
} symbol;

/* Length of the UTF-8 character at s (1 for an invalid byte). */
static size_t utf8_char_len(const char *s, size_t avail) {
    utf8proc_int32_t c;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)avail, &c);
    return k > 0 ? (size_t)k : 1;
}

typedef void (*try_bigram_fn)(const pam_tokenizer *tk, const char *buf, const symbol *sym, int l, int r,
                              bheap *h);

/* Repeatedly merges the best adjacent pair (the heap's order, set by `try`:
 * SPM by score, BPE by merge rank) over the linked symbols 0..ns-1. Shared by
 * both encoders; on allocation failure h->oom is set and the caller fails. */
static void merge_symbols(const pam_tokenizer *tk, const char *buf, symbol *sym, int ns, bheap *h,
                          try_bigram_fn try) {
    for (int i = 1; i < ns; i++) try(tk, buf, sym, i - 1, i, h);
    while (h->n > 0 && !h->oom) {
        bigram bg = heap_pop(h);
        symbol *l = &sym[bg.left], *r = &sym[bg.right];
        /* Stale entries: a side was merged away or grew since. */
        if (l->n == 0 || r->n == 0 || l->n + r->n != bg.size) continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = bg.left;
        try(tk, buf, sym, l->prev, bg.left, h);
        try(tk, buf, sym, bg.left, l->next, h);
    }
}

/* ---- SPM ----------------------------------------------------------------- */

static void spm_try_bigram(const pam_tokenizer *tk, const char *buf, const symbol *sym, int l, int r, bheap *h) {
    if (l < 0 || r < 0) return;
    size_t n = sym[l].n + sym[r].n;
    int32_t id = hmap_get(&tk->vocab, buf + sym[l].off, n);
    if (id < 0) return;
    heap_push(h, (bigram){-(double)tk->score[id], l, r, n});
}

static pam_status spm_encode(const pam_tokenizer *tk, const char *text, size_t len, int prefix, ivec *out) {
    /* Escape: optional leading "▁", every ' ' -> "▁". */
    size_t cap = 3 + 3 * len;
    char *buf = malloc(cap);
    symbol *sym = malloc((cap) * sizeof *sym);
    bheap h = {0};
    pam_status st = PAM_OK;
    if (!buf || !sym) {
        st = PAM_ERR(PAM_ERR_NOMEM, "tokenizer: out of memory for %zu bytes", len);
        goto done;
    }
    size_t n = 0;
    if (prefix) memcpy(buf, "\xE2\x96\x81", 3), n = 3;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ')
            memcpy(buf + n, "\xE2\x96\x81", 3), n += 3;
        else
            buf[n++] = text[i];
    }
    int ns = 0;
    for (size_t off = 0; off < n;) {
        size_t k = utf8_char_len(buf + off, n - off);
        sym[ns] = (symbol){ns - 1, off + k == n ? -1 : ns + 1, off, k};
        ns++;
        off += k;
    }
    merge_symbols(tk, buf, sym, ns, &h, spm_try_bigram);
    if (h.oom) {
        st = PAM_ERR(PAM_ERR_NOMEM, "tokenizer: out of memory");
        goto done;
    }
    for (int i = ns ? 0 : -1; i != -1; i = sym[i].next) {
        int32_t id = hmap_get(&tk->vocab, buf + sym[i].off, sym[i].n);
        if (id >= 0) {
            iv_push(out, id);
            continue;
        }
        for (size_t j = 0; j < sym[i].n; j++) {
            int32_t b = tk->byte_id[(unsigned char)buf[sym[i].off + j]];
            if (b < 0) b = tk->unk;
            if (b >= 0) iv_push(out, b);
        }
    }
done:
    free(buf);
    free(sym);
    free(h.v);
    return st;
}

/* ---- BPE ----------------------------------------------------------------- */

static void bpe_try_bigram(const pam_tokenizer *tk, const char *buf, const symbol *sym, int l, int r, bheap *h) {
    if (l < 0 || r < 0) return;
    int32_t rank = hmap_get_pair(&tk->merges, buf + sym[l].off, sym[l].n, buf + sym[r].off, sym[r].n);
    if (rank < 0) return;
    heap_push(h, (bigram){(double)rank, l, r, sym[l].n + sym[r].n});
}

static pam_status bpe_encode(const pam_tokenizer *tk, const char *text, size_t len, ivec *out) {
    size_t *pieces = NULL, n_pieces = 0;
    PAM_TRY(pam_tok_pre_split(tk->pre, text, len, &pieces, &n_pieces));
    char *buf = malloc(2 * len + 1);
    symbol *sym = malloc((len + 1) * sizeof *sym);
    bheap h = {0};
    pam_status st = PAM_OK;
    if (!buf || !sym) {
        st = PAM_ERR(PAM_ERR_NOMEM, "tokenizer: out of memory for %zu bytes", len);
        goto done;
    }
    size_t at = 0;
    for (size_t pi = 0; pi < n_pieces; pi++) {
        const unsigned char *w = (const unsigned char *)text + at;
        size_t wl = pieces[pi], n = 0;
        at += wl;
        /* Byte-level: one symbol per input byte. */
        int ns = 0;
        for (size_t i = 0; i < wl; i++) {
            memcpy(buf + n, g_bytes.enc[w[i]], g_bytes.enc_len[w[i]]);
            sym[ns] = (symbol){ns - 1, i + 1 == wl ? -1 : ns + 1, n, g_bytes.enc_len[w[i]]};
            n += g_bytes.enc_len[w[i]];
            ns++;
        }
        if (tk->ignore_merges) {
            int32_t id = hmap_get(&tk->vocab, buf, n);
            if (id >= 0) {
                iv_push(out, id);
                continue;
            }
        }
        h.n = 0;
        merge_symbols(tk, buf, sym, ns, &h, bpe_try_bigram);
        if (h.oom) {
            st = PAM_ERR(PAM_ERR_NOMEM, "tokenizer: out of memory");
            goto done;
        }
        for (int i = 0; i < ns; i++) {
            if (sym[i].n == 0) continue;
            const char *s = buf + sym[i].off;
            int32_t id = hmap_get(&tk->vocab, s, sym[i].n);
            if (id >= 0) {
                iv_push(out, id);
                continue;
            }
            /* As llama.cpp: each byte of the mapped text on its own. */
            for (size_t j = 0; j < sym[i].n; j++) {
                int32_t b = hmap_get(&tk->vocab, s + j, 1);
                if (b >= 0) iv_push(out, b);
            }
        }
    }
done:
    free(pieces);
    free(buf);
    free(sym);
    free(h.v);
    return st;
}

/* ---- special-token partition ----------------------------------------- */

typedef struct {
    int32_t token; /* -1: raw text [off, off + len) */
    size_t off, len;
} fragment;

typedef struct {
    fragment *v;
    size_t n, cap;
    int oom;
} fvec;

static void fv_push(fvec *f, fragment x) {
    if (f->oom) return;
    if (pam_vec_grow((void **)&f->v, &f->cap, f->n, sizeof *f->v, 16) != 0) {
        f->oom = 1;
        return;
    }
    f->v[f->n++] = x;
}

static pam_status partition(const pam_tokenizer *tk, const char *text, size_t len, int parse_special, fvec *frags) {
    fvec tmp = {0};
    fv_push(frags, (fragment){-1, 0, len});
    /* Vocabularies carry thousands of special tokens (deepseek: 2400); a
     * token whose first byte is absent from the text cannot match. */
    uint8_t present[256] = {0};
    for (size_t i = 0; i < len; i++) present[(unsigned char)text[i]] = 1;
    for (size_t si = 0; si < tk->n_special && !frags->oom; si++) {
        int32_t id = tk->special[si];
        uint8_t t = tk->type[id];
        if (!parse_special && (t == TT_CONTROL || t == TT_UNKNOWN)) continue;
        const char *pat = tk->text[id];
        size_t pl = tk->text_len[id];
        if (pl > len || !present[(unsigned char)pat[0]]) continue;
        int any = 0;
        for (size_t i = 0; i < frags->n && !any; i++)
            any = frags->v[i].token < 0 && frags->v[i].len >= pl &&
                  memmem(text + frags->v[i].off, frags->v[i].len, pat, pl) != NULL;
        if (!any) continue;
        tmp.n = 0;
        for (size_t i = 0; i < frags->n; i++) {
            fragment f = frags->v[i];
            if (f.token >= 0) {
                fv_push(&tmp, f);
                continue;
            }
            size_t pos = f.off, end = f.off + f.len;
            for (;;) {
                const char *m = end - pos >= pl ? memmem(text + pos, end - pos, pat, pl) : NULL;
                if (!m) break;
                size_t mo = (size_t)(m - text);
                if (mo > pos) fv_push(&tmp, (fragment){-1, pos, mo - pos});
                fv_push(&tmp, (fragment){id, 0, 0});
                pos = mo + pl;
            }
            if (end > pos) fv_push(&tmp, (fragment){-1, pos, end - pos});
        }
        fvec sw = *frags;
        *frags = tmp;
        tmp = sw;
        if (frags->oom || tmp.oom) frags->oom = 1;
    }
    free(tmp.v);
    if (frags->oom) return PAM_ERR(PAM_ERR_NOMEM, "tokenizer: out of memory");
    return PAM_OK;
}

pam_status pam_tokenizer_encode(const pam_tokenizer *tk, const char *text, size_t len, int add_bos,
                                int parse_special, int32_t *out, size_t cap, size_t *n_out) {
    if (!tk || (!text && len) || (!out && cap) || !n_out) return PAM_ERR(PAM_ERR_INVALID, "tokenizer: NULL argument");
    ivec ids = {0};
    fvec frags = {0};
    pam_status st = PAM_OK;
    if (add_bos && tk->bos >= 0) iv_push(&ids, tk->bos);
    if (len > 0) {
        st = partition(tk, text, len, parse_special, &frags);
        int prev_special = 1; /* SPM: a text fragment after a special token gets the dummy prefix */
        for (size_t i = 0; i < frags.n && st == PAM_OK; i++) {
            fragment f = frags.v[i];
            if (f.token >= 0) {
                iv_push(&ids, f.token);
                prev_special = 1;
                continue;
            }
            if (tk->kind == PAM_TOK_SPM) {
                st = spm_encode(tk, text + f.off, f.len, tk->add_space_prefix && prev_special, &ids);
                prev_special = 0;
            } else {
                st = bpe_encode(tk, text + f.off, f.len, &ids);
            }
        }
    }
    if (st == PAM_OK && ids.oom) st = PAM_ERR(PAM_ERR_NOMEM, "tokenizer: out of memory");
    if (st == PAM_OK) {
        *n_out = ids.n;
        if (ids.n && cap) memcpy(out, ids.v, (ids.n < cap ? ids.n : cap) * sizeof *out);
        if (ids.n > cap) st = PAM_ERR(PAM_ERR_RANGE, "tokenizer: %zu tokens do not fit in %zu", ids.n, cap);
    }
    free(ids.v);
    free(frags.v);
    return st;
}

pam_status pam_tokenizer_token_bytes(const pam_tokenizer *tk, int32_t id, char *buf, size_t cap, size_t *len_out) {
    if (!tk || !len_out || (!buf && cap)) return PAM_ERR(PAM_ERR_INVALID, "tokenizer: NULL argument");
    if (id < 0 || id >= tk->n_vocab)
        return PAM_ERR(PAM_ERR_RANGE, "tokenizer: token id %d outside the vocabulary (%d)", id, tk->n_vocab);
    size_t n = tk->dec_off[id + 1] - tk->dec_off[id];
    if (n && cap) memcpy(buf, tk->dec_blob + tk->dec_off[id], n < cap ? n : cap);
    *len_out = n;
    return PAM_OK;
}

/* ---- streaming detokenizer ---------------------------------------------- */

void pam_detok_init(pam_detok *d, const pam_tokenizer *tk) {
    memset(d, 0, sizeof *d);
    d->tk = tk;
    d->at_start = 1;
}

/* Expected length of the sequence led by b; 0 if b cannot lead one. */
static int utf8_need(unsigned char b) {
    if (b < 0x80) return 1;
    if (b >= 0xC2 && b <= 0xDF) return 2;
    if (b >= 0xE0 && b <= 0xEF) return 3;
    if (b >= 0xF0 && b <= 0xF4) return 4;
    return 0;
}

/* Whether s[0..n) (n <= need) can still be the start of a valid sequence. */
static int utf8_prefix_ok(const unsigned char *s, int n) {
    for (int i = 1; i < n; i++) {
        unsigned char lo = 0x80, hi = 0xBF;
        if (i == 1) {
            if (s[0] == 0xE0) lo = 0xA0;
            if (s[0] == 0xED) hi = 0x9F;
            if (s[0] == 0xF0) lo = 0x90;
            if (s[0] == 0xF4) hi = 0x8F;
        }
        if (s[i] < lo || s[i] > hi) return 0;
    }
    return 1;
}

typedef struct {
    char *out;
    size_t cap, n;
} sink;

/* Keeps room for the NUL; output past cap is dropped. */
static void sink_put(sink *k, const void *p, size_t n) {
    if (k->cap == 0 || k->n + n > k->cap - 1) return;
    memcpy(k->out + k->n, p, n);
    k->n += n;
}

static void detok_shift(pam_detok *d, int k) {
    memmove(d->pending, d->pending + k, (size_t)(d->n_pending - k));
    d->n_pending -= k;
}

/* Emits complete characters from pending; invalid bytes as U+FFFD. */
static void detok_drain(pam_detok *d, sink *k) {
    while (d->n_pending > 0) {
        int need = utf8_need(d->pending[0]);
        if (need == 0 || !utf8_prefix_ok(d->pending, d->n_pending < need ? d->n_pending : need)) {
            sink_put(k, "\xEF\xBF\xBD", 3);
            detok_shift(d, 1);
            continue;
        }
        if (d->n_pending < need) return; /* continues in a later token */
        sink_put(k, d->pending, (size_t)need);
        detok_shift(d, need);
    }
}

size_t pam_detok_push(pam_detok *d, int32_t id, char *out, size_t cap) {
    sink k = {out, cap, 0};
    const pam_tokenizer *tk = d->tk;
    if (tk && id >= 0 && id < tk->n_vocab) {
        const unsigned char *s = (const unsigned char *)tk->dec_blob + tk->dec_off[id];
        size_t n = tk->dec_off[id + 1] - tk->dec_off[id];
        if (n > 0 && d->at_start) {
            /* SentencePiece decode drops the dummy-prefix space once. */
            if (tk->kind == PAM_TOK_SPM && tk->add_space_prefix && s[0] == ' ') s++, n--;
            d->at_start = 0;
        }
        for (size_t i = 0; i < n; i++) {
            if (d->n_pending == 0 && s[i] < 0x80) { /* ASCII fast path */
                size_t j = i;
                while (j < n && s[j] < 0x80) j++;
                sink_put(&k, s + i, j - i);
                i = j - 1;
                continue;
            }
            d->pending[d->n_pending++] = s[i];
            detok_drain(d, &k);
        }
    }
    if (cap > 0) out[k.n] = 0;
    return k.n;
}

size_t pam_detok_flush(pam_detok *d, char *out, size_t cap) {
    sink k = {out, cap, 0};
    if (d->n_pending > 0) {
        /* Only a valid but unfinished sequence can be pending. */
        sink_put(&k, "\xEF\xBF\xBD", 3);
        d->n_pending = 0;
    }
    if (cap > 0) out[k.n] = 0;
    return k.n;
}
