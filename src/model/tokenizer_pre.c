/* Pre-tokenizer scanners. Each stage takes the pieces of the previous stage
 * (lengths in code points) and splits every piece independently, the way
 * llama.cpp's unicode_regex_split runs its list of regexes: a regex stage
 * emits both its matches and the unmatched gaps between them as pieces. The
 * gpt-2 and llama-3 stages are ports of llama.cpp's hand-written scanners
 * (unicode_regex_split_custom_gpt2/_llama3), so the splits agree with it
 * code point for code point; the other stages follow ECMAScript regex
 * semantics for their (simple, non-empty-matching) patterns. */
#include "model/tokenizer_pre.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "core/status.h"
#include "core/vec.h"

enum { F_LETTER = 1, F_NUMBER = 2, F_WS = 4, F_PUNCT = 8 };

typedef struct {
    const uint32_t *cp;
    const uint8_t *fl;
} pre_text;

typedef struct {
    size_t *v;
    size_t n, cap;
    int oom;
} szvec;

static void sz_push(szvec *s, size_t x) {
    if (s->oom) return;
    if (pam_vec_grow((void **)&s->v, &s->cap, s->n, sizeof *s->v, 64) != 0) {
        s->oom = 1;
        return;
    }
    s->v[s->n++] = x;
}

int pam_tok_cpt_is_whitespace(uint32_t cp) {
    /* llama.cpp's whitespace set (White_Space property), which is what its
     * \s means; std::regex would otherwise only see ASCII spaces. */
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

static uint8_t cpt_flags(uint32_t cp) {
    uint8_t f = pam_tok_cpt_is_whitespace(cp) ? F_WS : 0;
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO: f |= F_LETTER; break;
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO: f |= F_NUMBER; break;
    case UTF8PROC_CATEGORY_PC:
    case UTF8PROC_CATEGORY_PD:
    case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE:
    case UTF8PROC_CATEGORY_PI:
    case UTF8PROC_CATEGORY_PF:
    case UTF8PROC_CATEGORY_PO: f |= F_PUNCT; break;
    default: break;
    }
    return f;
}

pam_tok_pre pam_tok_pre_from_name(const char *name, size_t len, int *known) {
    static const struct {
        const char *name;
        pam_tok_pre pre;
    } table[] = {
        {"default", PAM_TOK_PRE_DEFAULT},      {"gpt-2", PAM_TOK_PRE_GPT2},
        {"phi-2", PAM_TOK_PRE_GPT2},           {"jina-es", PAM_TOK_PRE_GPT2},
        {"jina-de", PAM_TOK_PRE_GPT2},         {"jina-v1-en", PAM_TOK_PRE_GPT2},
        {"jina-v2-es", PAM_TOK_PRE_GPT2},      {"jina-v2-de", PAM_TOK_PRE_GPT2},
        {"jina-v2-code", PAM_TOK_PRE_GPT2},    {"roberta-bpe", PAM_TOK_PRE_GPT2},
        {"gigachat", PAM_TOK_PRE_GPT2},        {"llama3", PAM_TOK_PRE_LLAMA3},
        {"llama-v3", PAM_TOK_PRE_LLAMA3},      {"llama-bpe", PAM_TOK_PRE_LLAMA3},
        {"falcon3", PAM_TOK_PRE_LLAMA3},       {"pixtral", PAM_TOK_PRE_LLAMA3},
        {"smaug-bpe", PAM_TOK_PRE_LLAMA3},     {"qwen2", PAM_TOK_PRE_QWEN2},
        {"deepseek-r1-qwen", PAM_TOK_PRE_QWEN2}, {"megrez", PAM_TOK_PRE_QWEN2},
        {"deepseek-llm", PAM_TOK_PRE_DEEPSEEK_LLM}, {"starcoder", PAM_TOK_PRE_DIGITS_GPT2},
        {"refact", PAM_TOK_PRE_DIGITS_GPT2},   {"command-r", PAM_TOK_PRE_DIGITS_GPT2},
        {"smollm", PAM_TOK_PRE_DIGITS_GPT2},   {"codeshell", PAM_TOK_PRE_DIGITS_GPT2},
        {"exaone", PAM_TOK_PRE_DIGITS_GPT2},   {"minerva-7b", PAM_TOK_PRE_DIGITS_GPT2},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        if (strlen(table[i].name) == len && memcmp(table[i].name, name, len) == 0) {
            *known = 1;
            return table[i].pre;
        }
    }
    *known = 0;
    return PAM_TOK_PRE_DEFAULT;
}

/* ---- llama.cpp's custom scanners --------------------------------------- */

#define OUT_OF_RANGE 0xFFFFFFFFu

typedef struct {
    const pre_text *t;
    size_t b, e, prev_end;
    szvec *out;
} scan;

static uint32_t sc_cpt(const scan *s, size_t pos) { return pos >= s->b && pos < s->e ? s->t->cp[pos] : OUT_OF_RANGE; }
/* Out of range reads as "no category at all", which every loop stops on. */
static unsigned sc_fl(const scan *s, size_t pos) {
    return pos >= s->b && pos < s->e ? (unsigned)s->t->fl[pos] | 0x100u : 0u;
}
static size_t sc_add(scan *s, size_t end) {
    size_t len = end - s->prev_end;
    if (len > 0) sz_push(s->out, len);
    s->prev_end = end;
    return len;
}
#define IS_L(f) ((f) & F_LETTER)
#define IS_N(f) ((f) & F_NUMBER)
#define IS_WS(f) ((f) & F_WS)
/* [^\s\p{L}\p{N}] inside the piece */
#define IS_OTHER(f) (!((f) & (F_WS | F_LETTER | F_NUMBER)) && (f))

static void split_gpt2(const pre_text *t, size_t b, size_t e, szvec *out) {
    scan s = {t, b, e, b, out};
    for (size_t pos = b; pos < e;) {
        uint32_t cpt = sc_cpt(&s, pos);
        unsigned flags = sc_fl(&s, pos);
        if (cpt == '\'' && pos + 1 < e) {
            uint32_t nx = sc_cpt(&s, pos + 1);
            if (nx == 's' || nx == 't' || nx == 'm' || nx == 'd') {
                pos += sc_add(&s, pos + 2);
                continue;
            }
            if (pos + 2 < e) {
                uint32_t nn = sc_cpt(&s, pos + 2);
                if ((nx == 'r' && nn == 'e') || (nx == 'v' && nn == 'e') || (nx == 'l' && nn == 'l')) {
                    pos += sc_add(&s, pos + 3);
                    continue;
                }
            }
        }
        unsigned f2 = cpt == ' ' ? sc_fl(&s, pos + 1) : flags;
        if (IS_L(f2)) {
            pos += cpt == ' ';
            while (IS_L(f2)) f2 = sc_fl(&s, ++pos);
            sc_add(&s, pos);
            continue;
        }
        if (IS_N(f2)) {
            pos += cpt == ' ';
            while (IS_N(f2)) f2 = sc_fl(&s, ++pos);
            sc_add(&s, pos);
            continue;
        }
        if (IS_OTHER(f2)) {
            pos += cpt == ' ';
            while (IS_OTHER(f2)) f2 = sc_fl(&s, ++pos);
            sc_add(&s, pos);
            continue;
        }
        size_t n_ws = 0;
        while (IS_WS(sc_fl(&s, pos + n_ws))) n_ws++;
        if (n_ws > 1 && sc_cpt(&s, pos + n_ws) != OUT_OF_RANGE) { /* \s+(?!\S) */
            pos += n_ws - 1;
            sc_add(&s, pos);
            continue;
        }
        if (n_ws > 0) {
            pos += n_ws;
            sc_add(&s, pos);
            continue;
        }
        sc_add(&s, ++pos);
    }
}

static uint32_t ascii_lower(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

static void split_llama3(const pre_text *t, size_t b, size_t e, size_t max_digits, szvec *out) {
    scan s = {t, b, e, b, out};
    for (size_t pos = b; pos < e;) {
        uint32_t cpt = sc_cpt(&s, pos);
        unsigned flags = sc_fl(&s, pos);
        if (cpt == '\'' && pos + 1 < e) { /* (?i:'s|'t|'re|'ve|'m|'ll|'d) */
            uint32_t nx = ascii_lower(sc_cpt(&s, pos + 1));
            if (nx == 's' || nx == 't' || nx == 'm' || nx == 'd') {
                pos += sc_add(&s, pos + 2);
                continue;
            }
            if (pos + 2 < e) {
                uint32_t nn = ascii_lower(sc_cpt(&s, pos + 2));
                if ((nx == 'r' && nn == 'e') || (nx == 'v' && nn == 'e') || (nx == 'l' && nn == 'l')) {
                    pos += sc_add(&s, pos + 3);
                    continue;
                }
            }
        }
        if (!(cpt == '\r' || cpt == '\n' || IS_N(flags))) { /* [^\r\n\p{L}\p{N}]?\p{L}+ */
            if (IS_L(flags) || IS_L(sc_fl(&s, pos + 1))) {
                pos++;
                while (IS_L(sc_fl(&s, pos))) pos++;
                sc_add(&s, pos);
                continue;
            }
        }
        if (IS_N(flags)) { /* \p{N}{1,max_digits} */
            size_t ini = pos;
            while (IS_N(sc_fl(&s, pos))) {
                if (++pos - ini >= max_digits) {
                    sc_add(&s, pos);
                    ini = pos;
                }
            }
            sc_add(&s, pos);
            continue;
        }
        unsigned f2 = cpt == ' ' ? sc_fl(&s, pos + 1) : flags;
        if (!(f2 & (F_WS | F_LETTER | F_NUMBER)) && flags) { /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
            pos += cpt == ' ';
            while (IS_OTHER(f2)) f2 = sc_fl(&s, ++pos);
            uint32_t c2 = sc_cpt(&s, pos);
            while (c2 == '\r' || c2 == '\n') c2 = sc_cpt(&s, ++pos);
            sc_add(&s, pos);
            continue;
        }
        size_t n_ws = 0, last_rn = 0;
        while (IS_WS(sc_fl(&s, pos + n_ws))) {
            uint32_t c2 = sc_cpt(&s, pos + n_ws);
            if (c2 == '\r' || c2 == '\n') last_rn = pos + n_ws + 1;
            n_ws++;
        }
        if (last_rn > 0) { /* \s*[\r\n]+ */
            pos = last_rn;
            sc_add(&s, pos);
            continue;
        }
        if (n_ws > 1 && sc_cpt(&s, pos + n_ws) != OUT_OF_RANGE) {
            pos += n_ws - 1;
            sc_add(&s, pos);
            continue;
        }
        if (n_ws > 0) {
            pos += n_ws;
            sc_add(&s, pos);
            continue;
        }
        sc_add(&s, ++pos);
    }
}

/* ---- regex-like stages: matches and the gaps between them ------------- */

/* Length of the match starting at pos within [b, e), 0 if none. */
typedef size_t (*match_fn)(const pre_text *t, size_t pos, size_t b, size_t e);

static void split_matches(const pre_text *t, size_t b, size_t e, match_fn m, szvec *out) {
    size_t gap = b;
    for (size_t pos = b; pos < e;) {
        size_t n = m(t, pos, b, e);
        if (n == 0) {
            pos++;
            continue;
        }
        if (pos > gap) sz_push(out, pos - gap);
        sz_push(out, n);
        pos += n;
        gap = pos;
    }
    if (e > gap) sz_push(out, e - gap);
}

typedef struct {
    uint32_t lo, hi;
} cp_range;

/* deepseek-llm's letter class (from its tokenizer.json), sorted. */
static const cp_range k_ds_letters[] = {
    {0x0041, 0x005A},   {0x0061, 0x007A},   {0x00B5, 0x00B5},   {0x00C0, 0x00D6},   {0x00D8, 0x00F6},
    {0x00F8, 0x01BA},   {0x01BC, 0x01BF},   {0x01C4, 0x0293},   {0x0295, 0x02AF},   {0x0370, 0x0373},
    {0x0376, 0x0377},   {0x037B, 0x037D},   {0x037F, 0x037F},   {0x0386, 0x0386},   {0x0388, 0x038A},
    {0x038C, 0x038C},   {0x038E, 0x03A1},   {0x03A3, 0x03F5},   {0x03F7, 0x0481},   {0x048A, 0x052F},
    {0x0531, 0x0556},   {0x10A0, 0x10C5},   {0x13A0, 0x13F5},   {0x13F8, 0x13FD},   {0x1C90, 0x1CBA},
    {0x1CBD, 0x1CBF},   {0x1D00, 0x1D2B},   {0x1D6B, 0x1D77},   {0x1D79, 0x1D9A},   {0x1E00, 0x1F15},
    {0x1F18, 0x1F1D},   {0x1F20, 0x1F45},   {0x1F48, 0x1F4D},   {0x1F50, 0x1F57},   {0x1F59, 0x1F59},
    {0x1F5B, 0x1F5B},   {0x1F5D, 0x1F5D},   {0x1F5F, 0x1F7D},   {0x1F80, 0x1FB4},   {0x1FB6, 0x1FBC},
    {0x1FBE, 0x1FBE},   {0x1FC2, 0x1FC4},   {0x1FC6, 0x1FCC},   {0x1FD0, 0x1FD3},   {0x1FD6, 0x1FDB},
    {0x1FE0, 0x1FEC},   {0x1FF2, 0x1FF4},   {0x1FF6, 0x1FFC},   {0x2102, 0x2102},   {0x2107, 0x2107},
    {0x210A, 0x2113},   {0x2115, 0x2115},   {0x2119, 0x211D},   {0x2124, 0x2124},   {0x2126, 0x2126},
    {0x2128, 0x2128},   {0x212A, 0x212D},   {0x212F, 0x2134},   {0x2139, 0x2139},   {0x213C, 0x213F},
    {0x2145, 0x2149},   {0x214E, 0x214E},   {0x2183, 0x2184},   {0x2C00, 0x2C7B},   {0x2C7E, 0x2CE4},
    {0x2CEB, 0x2CEE},   {0x2CF2, 0x2CF3},   {0xA640, 0xA66D},   {0xA680, 0xA69B},   {0xA722, 0xA76F},
    {0xA771, 0xA787},   {0xA78B, 0xA78E},   {0xAB70, 0xABBF},   {0xFB00, 0xFB06},   {0xFB13, 0xFB17},
    {0xFF21, 0xFF3A},   {0xFF41, 0xFF5A},   {0x10400, 0x1044F}, {0x104B0, 0x104D3}, {0x104D8, 0x104FB},
    {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF}, {0x1E900, 0x1E943},
};
static const cp_range k_ds_punct[] = {
    {0x0021, 0x002F}, {0x003A, 0x007E}, {0x2018, 0x201F}, {0x3000, 0x3002}, {0xFF01, 0xFF0F}, {0xFF1A, 0xFF5E},
};
static const cp_range k_ds_cjk[] = {{0x0800, 0x9FA5}, {0xAC00, 0xD7FF}}; /* ࠀ-一 and 一-龥 overlap */

static int in_ranges(const cp_range *r, size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid].lo)
            hi = mid;
        else if (cp > r[mid].hi)
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

/* llama.cpp runs these through std::wregex after replacing non-ASCII
 * whitespace by U+000B, so no whitespace code point is ever in a class. */
static size_t ds_class_run(const pre_text *t, size_t pos, size_t e, const cp_range *r, size_t n) {
    size_t p = pos;
    while (p < e && !(t->fl[p] & F_WS) && in_ranges(r, n, t->cp[p])) p++;
    return p - pos;
}
static size_t ws_opt_class_run(const pre_text *t, size_t pos, size_t e, const cp_range *r, size_t n) {
    if ((t->fl[pos] & F_WS) && pos + 1 < e) {
        size_t k = ds_class_run(t, pos + 1, e, r, n);
        if (k) return k + 1;
    }
    return ds_class_run(t, pos, e, r, n);
}

static size_t m_crlf(const pre_text *t, size_t pos, size_t b, size_t e) {
    return t->cp[pos] == '\r' || t->cp[pos] == '\n';
}
static size_t m_ds_letters(const pre_text *t, size_t pos, size_t b, size_t e) {
    return ws_opt_class_run(t, pos, e, k_ds_letters, sizeof k_ds_letters / sizeof k_ds_letters[0]);
}
static size_t m_ds_punct(const pre_text *t, size_t pos, size_t b, size_t e) {
    return ws_opt_class_run(t, pos, e, k_ds_punct, sizeof k_ds_punct / sizeof k_ds_punct[0]);
}
static size_t m_ds_cjk(const pre_text *t, size_t pos, size_t b, size_t e) {
    return ds_class_run(t, pos, e, k_ds_cjk, sizeof k_ds_cjk / sizeof k_ds_cjk[0]);
}
static size_t m_trailing_ws(const pre_text *t, size_t pos, size_t b, size_t e) { /* \s+$ */
    size_t p = pos;
    while (p < e && (t->fl[p] & F_WS)) p++;
    return p == e ? e - pos : 0;
}
static size_t m_numbers(const pre_text *t, size_t pos, size_t b, size_t e) { /* \p{N}+ */
    size_t p = pos;
    while (p < e && (t->fl[p] & F_NUMBER)) p++;
    return p - pos;
}
static size_t m_number(const pre_text *t, size_t pos, size_t b, size_t e) { /* \p{N} */
    return (t->fl[pos] & F_NUMBER) != 0;
}
static size_t m_three_digits(const pre_text *t, size_t pos, size_t b, size_t e) { /* [0-9]{3} */
    for (size_t k = 0; k < 3; k++)
        if (pos + k >= e || t->cp[pos + k] < '0' || t->cp[pos + k] > '9') return 0;
    return 3;
}
static size_t m_punct_run(const pre_text *t, size_t pos, size_t b, size_t e) { /* [\p{P}\$\+<=>\^~\|]+ */
    size_t p = pos;
    while (p < e) {
        uint32_t c = t->cp[p];
        int ok = (t->fl[p] & F_PUNCT) ||
                 (c < 128 && c && strchr("$+<=>^~|", (int)c) != NULL);
        if (!ok) break;
        p++;
    }
    return p - pos;
}

typedef enum { ST_GPT2, ST_LLAMA3, ST_QWEN2, ST_MATCH } stage_kind;
typedef struct {
    stage_kind kind;
    match_fn m;
} stage;

static void run_stage(const pre_text *t, const stage *st, const szvec *in, szvec *out) {
    size_t b = 0;
    for (size_t i = 0; i < in->n; i++) {
        size_t e = b + in->v[i];
        switch (st->kind) {
        case ST_GPT2: split_gpt2(t, b, e, out); break;
        case ST_LLAMA3: split_llama3(t, b, e, 3, out); break;
        case ST_QWEN2: split_llama3(t, b, e, 1, out); break;
        case ST_MATCH: split_matches(t, b, e, st->m, out); break;
        }
        b = e;
    }
}

pam_status pam_tok_pre_split(pam_tok_pre pre, const char *text, size_t len, size_t **pieces,
                             size_t *n_pieces) {
    static const stage s_default[] = {
        {ST_MATCH, m_punct_run}, {ST_GPT2, NULL}, {ST_MATCH, m_numbers}, {ST_MATCH, m_three_digits}};
    static const stage s_gpt2[] = {{ST_GPT2, NULL}};
    static const stage s_llama3[] = {{ST_LLAMA3, NULL}};
    static const stage s_qwen2[] = {{ST_QWEN2, NULL}};
    static const stage s_deepseek[] = {{ST_MATCH, m_crlf},        {ST_MATCH, m_ds_letters},
                                       {ST_MATCH, m_ds_punct},    {ST_MATCH, m_trailing_ws},
                                       {ST_MATCH, m_ds_cjk},      {ST_MATCH, m_numbers}};
    static const stage s_digits_gpt2[] = {{ST_MATCH, m_number}, {ST_GPT2, NULL}};
    const stage *stages;
    size_t n_stages;
    switch (pre) {
    case PAM_TOK_PRE_GPT2: stages = s_gpt2, n_stages = 1; break;
    case PAM_TOK_PRE_LLAMA3: stages = s_llama3, n_stages = 1; break;
    case PAM_TOK_PRE_QWEN2: stages = s_qwen2, n_stages = 1; break;
    case PAM_TOK_PRE_DEEPSEEK_LLM: stages = s_deepseek, n_stages = 6; break;
    case PAM_TOK_PRE_DIGITS_GPT2: stages = s_digits_gpt2, n_stages = 2; break;
    default: stages = s_default, n_stages = 4; break;
    }

    *pieces = NULL;
    *n_pieces = 0;
    if (len == 0) return PAM_OK;
    /* Code points, their flags and byte offsets (n + 1 of them). */
    uint32_t *cp = malloc(len * sizeof *cp);
    uint8_t *fl = malloc(len);
    size_t *off = malloc((len + 1) * sizeof *off);
    szvec a = {0}, b = {0};
    pam_status st = PAM_OK;
    if (!cp || !fl || !off) {
        st = PAM_ERR(PAM_ERR_NOMEM, "pre-tokenizer: out of memory for %zu bytes", len);
        goto done;
    }
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)text + i, (utf8proc_ssize_t)(len - i), &c);
        if (k <= 0) { /* invalid byte: classify as U+FFFD, keep the byte */
            c = 0xFFFD;
            k = 1;
        }
        cp[n] = (uint32_t)c;
        fl[n] = cpt_flags((uint32_t)c);
        off[n] = i;
        n++;
        i += (size_t)k;
    }
    off[n] = len;
    pre_text t = {cp, fl};
    sz_push(&a, n);
    for (size_t s = 0; s < n_stages; s++) {
        b.n = 0;
        run_stage(&t, &stages[s], &a, &b);
        if (b.oom) break;
        szvec tmp = a;
        a = b;
        b = tmp;
    }
    if (a.oom || b.oom) {
        st = PAM_ERR(PAM_ERR_NOMEM, "pre-tokenizer: out of memory");
        goto done;
    }
    /* Code point counts -> byte lengths. */
    size_t at = 0;
    for (size_t i = 0; i < a.n; i++) {
        size_t end = at + a.v[i];
        a.v[i] = off[end] - off[at];
        at = end;
    }
    *pieces = a.v;
    *n_pieces = a.n;
    a.v = NULL;
done:
    free(a.v);
    free(b.v);
    free(cp);
    free(fl);
    free(off);
    return st;
}
