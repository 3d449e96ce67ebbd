/* OpenAI-format response pieces and the tokenizer endpoints (see oai.h). */
#include "server/oai.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

json_t *pam_oai_text(const char *p, size_t n) {
    json_t *j = json_stringn(p ? p : "", p ? n : 0);
    if (j) return j;
    char *clean = malloc(3 * n + 1);
    if (!clean) return json_string("");
    size_t o = 0;
    for (size_t k = 0; k < n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t r = utf8proc_iterate((const utf8proc_uint8_t *)p + k, (utf8proc_ssize_t)(n - k), &cp);
        if (r > 0 && cp != 0) {
            memcpy(clean + o, p + k, (size_t)r);
            o += (size_t)r;
            k += (size_t)r;
        } else {
            memcpy(clean + o, "\xEF\xBF\xBD", 3);
            o += 3;
            k++;
        }
    }
    j = json_stringn(clean, o);
    free(clean);
    return j ? j : json_string("");
}

size_t pam_oai_utf8_chars(const char *p, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)p[i] & 0xC0) != 0x80;
    return c;
}

size_t pam_oai_token_text(const pam_tokenizer *tk, int32_t id, char *buf, size_t cap) {
    size_t n = 0;
    if (pam_tokenizer_token_bytes(tk, id, buf, cap, &n) != PAM_OK) return 0;
    if (n > 0) return n;
    const char *piece = pam_tokenizer_piece(tk, id);
    if (!piece) return 0;
    n = strlen(piece);
    memcpy(buf, piece, n < cap ? n : cap);
    return n;
}

/* ---- log-probabilities ---------------------------------------------------- */

#define TOKEN_CAP 1024

static json_t *lp_number(float x) { return json_real(isfinite(x) ? (double)x : -9999.0); }

/* The token as a JSON string: its text if that is UTF-8; else (legacy)
 * "bytes:\xNN..." or (chat) the text with U+FFFD. */
static json_t *token_string(const pam_oai_lp *l, const char *b, size_t n) {
    json_t *j = json_stringn(b, n);
    if (j || l->kind == PAM_API_CHAT) return j ? j : pam_oai_text(b, n);
    char s[6 + 4 * TOKEN_CAP + 1];
    size_t o = (size_t)snprintf(s, sizeof s, "bytes:");
    for (size_t i = 0; i < n; i++) o += (size_t)snprintf(s + o, sizeof s - o, "\\x%02x", (unsigned char)b[i]);
    return json_stringn(s, o);
}

static json_t *byte_array(const char *b, size_t n) {
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++) json_array_append_new(a, json_integer((unsigned char)b[i]));
    return a;
}

/* {"token","logprob","bytes"} of the chat format. */
static json_t *chat_entry(const pam_oai_lp *l, int32_t id, float logprob) {
    char b[TOKEN_CAP];
    size_t n = pam_oai_token_text(l->tk, id, b, sizeof b);
    if (n > sizeof b) n = sizeof b;
    return json_pack("{s:o,s:o,s:o}", "token", token_string(l, b, n), "logprob", lp_number(logprob), "bytes",
                     byte_array(b, n));
}

void pam_oai_lp_init(pam_oai_lp *l, pam_api_kind kind, const pam_tokenizer *tk) {
    memset(l, 0, sizeof *l);
    l->kind = kind;
    l->tk = tk;
}

static int lp_ensure(pam_oai_lp *l) {
    if (l->kind == PAM_API_CHAT) {
        if (!l->content) l->content = json_array();
        return l->content ? 0 : -1;
    }
    if (!l->tokens) {
        l->tokens = json_array();
        l->token_logprobs = json_array();
        l->top_logprobs = json_array();
        l->text_offset = json_array();
    }
    return l->tokens && l->token_logprobs && l->top_logprobs && l->text_offset ? 0 : -1;
}

int pam_oai_lp_add(pam_oai_lp *l, const pam_token_logprob *e, size_t char_off, int is_first) {
    if (lp_ensure(l)) return -1;
    if (l->kind == PAM_API_CHAT) {
        json_t *ent = chat_entry(l, e->id, e->logprob);
        json_t *top = json_array();
        for (int32_t i = 0; top && i < e->n_top; i++)
            json_array_append_new(top, chat_entry(l, e->top[i].id, e->top[i].logprob));
        if (!ent || !top) {
            json_decref(ent);
            json_decref(top);
            return -1;
        }
        json_object_set_new(ent, "top_logprobs", top);
        return json_array_append_new(l->content, ent);
    }
    char b[TOKEN_CAP];
    size_t n = pam_oai_token_text(l->tk, e->id, b, sizeof b);
    if (n > sizeof b) n = sizeof b;
    int rc = json_array_append_new(l->tokens, token_string(l, b, n));
    rc |= json_array_append_new(l->text_offset, json_integer((json_int_t)char_off));
    if (is_first) {
        rc |= json_array_append_new(l->token_logprobs, json_null());
        return rc | json_array_append_new(l->top_logprobs, json_null());
    }
    rc |= json_array_append_new(l->token_logprobs, lp_number(e->logprob));
    /* The k most likely, then the chosen token if it is not among them (its
     * log-probability is then at most theirs, so the order holds). Tokens
     * with the same text keep the higher value. */
    json_t *top = json_object();
    int chosen_in = 0;
    for (int32_t i = 0; top && i <= e->n_top; i++) {
        int32_t id = i < e->n_top ? e->top[i].id : e->id;
        float lp = i < e->n_top ? e->top[i].logprob : e->logprob;
        if (i == e->n_top && chosen_in) break;
        if (id == e->id) chosen_in = 1;
        n = pam_oai_token_text(l->tk, id, b, sizeof b);
        if (n > sizeof b) n = sizeof b;
        json_t *key = token_string(l, b, n);
        if (key && !json_object_get(top, json_string_value(key)))
            json_object_set_new(top, json_string_value(key), lp_number(lp));
        json_decref(key);
    }
    return rc | (top ? json_array_append_new(l->top_logprobs, top) : -1);
}

int pam_oai_lp_pending(const pam_oai_lp *l) {
    return l->kind == PAM_API_CHAT ? l->content && json_array_size(l->content) > 0
                                   : l->tokens && json_array_size(l->tokens) > 0;
}

json_t *pam_oai_lp_take(pam_oai_lp *l) {
    if (lp_ensure(l)) return NULL;
    json_t *o;
    if (l->kind == PAM_API_CHAT) {
        o = json_pack("{s:o,s:n}", "content", l->content, "refusal");
        l->content = NULL;
    } else {
        o = json_pack("{s:o,s:o,s:o,s:o}", "tokens", l->tokens, "token_logprobs", l->token_logprobs, "top_logprobs",
                      l->top_logprobs, "text_offset", l->text_offset);
        l->tokens = l->token_logprobs = l->top_logprobs = l->text_offset = NULL;
    }
    return o;
}

void pam_oai_lp_free(pam_oai_lp *l) {
    json_decref(l->content);
    json_decref(l->tokens);
    json_decref(l->token_logprobs);
    json_decref(l->top_logprobs);
    json_decref(l->text_offset);
    memset(l, 0, sizeof *l);
}

/* ---- /tokenize and /detokenize -------------------------------------------- */

static int bad(pam_api_error *err, const char *param, const char *msg) {
    pam_api_error_set(err, 400, "invalid_request_error", NULL, param, "%s", msg);
    return -1;
}

static json_t *load_object(const char *body, size_t len, pam_api_error *err) {
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        pam_api_error_set(err, 400, "invalid_request_error", NULL, NULL, "malformed JSON at line %d column %d: %s",
                          jerr.line, jerr.column, jerr.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        bad(err, NULL, "the request body must be a JSON object");
        return NULL;
    }
    return root;
}

static int opt_bool(json_t *root, const char *key, int dflt, int *out, pam_api_error *err) {
    json_t *v = json_object_get(root, key);
    *out = dflt;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) {
        pam_api_error_set(err, 400, "invalid_request_error", NULL, key, "'%s' must be a boolean", key);
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

int pam_oai_tokenize(const pam_tokenizer *tk, const char *body, size_t len, char **out, pam_api_error *err) {
    memset(err, 0, sizeof *err);
    *out = NULL;
    json_t *root = load_object(body, len, err);
    if (!root) return -1;
    int rc = -1, add_special, parse_special, with_pieces;
    int32_t *ids = NULL;
    json_t *content = json_object_get(root, "content");
    if (!json_is_string(content)) {
        bad(err, "content", "'content' must be a string");
        goto done;
    }
    if (opt_bool(root, "add_special", 0, &add_special, err) || opt_bool(root, "parse_special", 1, &parse_special, err) ||
        opt_bool(root, "with_pieces", 0, &with_pieces, err))
        goto done;
    const char *text = json_string_value(content);
    size_t tl = json_string_length(content), cap = tl + 8, n = 0;
    int bos = add_special && pam_tokenizer_add_bos(tk);
    for (int attempt = 0; attempt < 2; attempt++) {
        free(ids);
        ids = malloc(cap * sizeof *ids);
        pam_status st = ids ? pam_tokenizer_encode(tk, text, tl, bos, parse_special, ids, cap, &n) : PAM_ERR_NOMEM;
        if (st == PAM_OK) break;
        if (st != PAM_ERR_RANGE || attempt == 1) {
            pam_api_error_set(err, 500, "server_error", NULL, NULL, "cannot tokenize the content");
            goto done;
        }
        cap = n;
    }
    json_t *toks = json_array();
    for (size_t i = 0; toks && i < n; i++) {
        if (!with_pieces) {
            json_array_append_new(toks, json_integer(ids[i]));
            continue;
        }
        char b[TOKEN_CAP];
        size_t bl = pam_oai_token_text(tk, ids[i], b, sizeof b);
        if (bl > sizeof b) bl = sizeof b;
        json_t *piece = json_stringn(b, bl);
        if (!piece) piece = byte_array(b, bl); /* not UTF-8 alone: llama-server gives the bytes */
        json_array_append_new(toks, json_pack("{s:i,s:o}", "id", (int)ids[i], "piece", piece));
    }
    json_t *resp = toks ? json_pack("{s:o}", "tokens", toks) : NULL;
    *out = resp ? json_dumps(resp, JSON_COMPACT) : NULL;
    json_decref(resp);
    if (!*out) {
        pam_api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        goto done;
    }
    rc = 0;
done:
    free(ids);
    json_decref(root);
    return rc;
}

int pam_oai_detokenize(const pam_tokenizer *tk, const char *body, size_t len, char **out, pam_api_error *err) {
    memset(err, 0, sizeof *err);
    *out = NULL;
    json_t *root = load_object(body, len, err);
    if (!root) return -1;
    int rc = -1;
    char *text = NULL;
    json_t *toks = json_object_get(root, "tokens");
    if (!json_is_array(toks)) {
        bad(err, "tokens", "'tokens' must be an array of token ids");
        goto done;
    }
    int32_t nv = pam_tokenizer_n_vocab(tk);
    size_t n = json_array_size(toks), cap = 256, tl = 0;
    text = malloc(cap);
    for (size_t i = 0; text && i < n; i++) {
        json_t *t = json_array_get(toks, i);
        if (!json_is_integer(t) || json_integer_value(t) < 0 || json_integer_value(t) >= nv) {
            pam_api_error_set(err, 400, "invalid_request_error", NULL, "tokens",
                              "tokens[%zu] must be a token id in [0, %d)", i, (int)nv);
            goto done;
        }
        char b[TOKEN_CAP];
        size_t bl = pam_oai_token_text(tk, (int32_t)json_integer_value(t), b, sizeof b);
        if (bl > sizeof b) bl = sizeof b;
        if (tl + bl + 1 > cap) {
            while (tl + bl + 1 > cap) cap *= 2;
            char *nt = realloc(text, cap);
            if (!nt) {
                pam_api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
                goto done;
            }
            text = nt;
        }
        memcpy(text + tl, b, bl);
        tl += bl;
    }
    json_t *resp = text ? json_pack("{s:o}", "content", pam_oai_text(text, tl)) : NULL;
    *out = resp ? json_dumps(resp, JSON_COMPACT) : NULL;
    json_decref(resp);
    if (!*out) {
        pam_api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        goto done;
    }
    rc = 0;
done:
    free(text);
    json_decref(root);
    return rc;
}
