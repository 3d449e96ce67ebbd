/* Chat templates for the common families (see chat.h). Each renders what
 * the family's reference Jinja template renders for plain text messages with
 * add_generation_prompt set, minus the BOS text. */
#include "server/chat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/jinja.h"

typedef struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_putn(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_put(sbuf *b, const char *s) { sb_putn(b, s, strlen(s)); }

/* Llama-3's template trims each message's content. */
static void sb_put_trimmed(sbuf *b, const char *s) {
    size_t n = strlen(s);
    while (n && (s[0] == ' ' || s[0] == '\n' || s[0] == '\t' || s[0] == '\r')) s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\n' || s[n - 1] == '\t' || s[n - 1] == '\r')) n--;
    sb_putn(b, s, n);
}

static int is_system(const char *role) { return !strcmp(role, "system") || !strcmp(role, "developer"); }

static int contains(const char *s, size_t len, const char *needle) {
    return s && memmem(s, len, needle, strlen(needle)) != NULL;
}

pam_chat_family pam_chat_detect(const char *tmpl, size_t len) {
    if (contains(tmpl, len, "<|start_header_id|>")) return PAM_CHAT_LLAMA3;
    if (contains(tmpl, len, "<|im_start|>")) return PAM_CHAT_CHATML;
    if (contains(tmpl, len, "[INST]")) return contains(tmpl, len, "<<SYS>>") ? PAM_CHAT_LLAMA2 : PAM_CHAT_MISTRAL;
    if (contains(tmpl, len, "<|user|>")) return PAM_CHAT_ZEPHYR;
    return PAM_CHAT_FALLBACK;
}

static const char *const k_names[] = {"fallback", "llama3", "chatml", "llama2", "mistral", "zephyr"};

const char *pam_chat_family_name(pam_chat_family f) {
    return (unsigned)f < sizeof k_names / sizeof *k_names ? k_names[f] : "fallback";
}

int pam_chat_family_from_name(const char *name) {
    for (int i = 0; i < (int)(sizeof k_names / sizeof *k_names); i++)
        if (!strcmp(name, k_names[i])) return i;
    return -1;
}

const char *pam_chat_stop(pam_chat_family f) { return f == PAM_CHAT_FALLBACK ? "\nUser:" : NULL; }

/* Llama-2 and Mistral fold the system message into the first user turn. */
static void render_inst(sbuf *b, const pam_chat_msg *m, int n, int llama2) {
    const char *sys = NULL;
    int first_user = 1;
    for (int i = 0; i < n; i++) {
        if (is_system(m[i].role)) {
            sys = m[i].content;
            continue;
        }
        if (!strcmp(m[i].role, "user")) {
            if (!first_user) sb_put(b, llama2 ? "<s>[INST] " : "[INST] ");
            else sb_put(b, "[INST] ");
            if (first_user && sys) {
                if (llama2) {
                    sb_put(b, "<<SYS>>\n");
                    sb_put(b, sys);
                    sb_put(b, "\n<</SYS>>\n\n");
                } else {
                    sb_put(b, sys);
                    sb_put(b, "\n\n");
                }
            }
            first_user = 0;
            sb_put(b, m[i].content);
            sb_put(b, " [/INST]");
        } else {
            if (llama2) sb_put(b, " ");
            sb_put(b, m[i].content);
            sb_put(b, llama2 ? " </s>" : "</s>");
        }
    }
}

char *pam_chat_render(pam_chat_family f, const pam_chat_msg *m, int n) {
    sbuf b = {0};
    sb_put(&b, "");
    switch (f) {
    case PAM_CHAT_LLAMA3:
        for (int i = 0; i < n; i++) {
            sb_put(&b, "<|start_header_id|>");
            sb_put(&b, is_system(m[i].role) ? "system" : m[i].role);
            sb_put(&b, "<|end_header_id|>\n\n");
            sb_put_trimmed(&b, m[i].content);
            sb_put(&b, "<|eot_id|>");
        }
        sb_put(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case PAM_CHAT_CHATML:
        for (int i = 0; i < n; i++) {
            sb_put(&b, "<|im_start|>");
            sb_put(&b, is_system(m[i].role) ? "system" : m[i].role);
            sb_put(&b, "\n");
            sb_put(&b, m[i].content);
            sb_put(&b, "<|im_end|>\n");
        }
        sb_put(&b, "<|im_start|>assistant\n");
        break;
    case PAM_CHAT_LLAMA2: render_inst(&b, m, n, 1); break;
    case PAM_CHAT_MISTRAL: render_inst(&b, m, n, 0); break;
    case PAM_CHAT_ZEPHYR:
        for (int i = 0; i < n; i++) {
            sb_put(&b, is_system(m[i].role) ? "<|system|>" : !strcmp(m[i].role, "user") ? "<|user|>" : "<|assistant|>");
            sb_put(&b, "\n");
            sb_put(&b, m[i].content);
            sb_put(&b, "</s>\n");
        }
        sb_put(&b, "<|assistant|>\n");
        break;
    default:
        for (int i = 0; i < n; i++) {
            if (is_system(m[i].role)) {
                sb_put(&b, m[i].content);
                sb_put(&b, "\n\n");
            } else {
                sb_put(&b, !strcmp(m[i].role, "user") ? "User: " : "Assistant: ");
                sb_put(&b, m[i].content);
                sb_put(&b, "\n");
            }
        }
        sb_put(&b, "Assistant:");
        break;
    }
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

struct pam_chat_template {
    pam_chat_family family;
    pam_jinja *jinja; /* NULL: the built-in family */
    char *bos, *eos;
    int strip_bos;
};

pam_chat_template *pam_chat_template_builtin(pam_chat_family f) {
    pam_chat_template *t = calloc(1, sizeof *t);
    if (t) t->family = f;
    return t;
}

pam_status pam_chat_template_jinja(const char *src, size_t len, const char *bos_token, const char *eos_token,
                                   int strip_bos, pam_chat_template **out, char *err, size_t err_cap) {
    *out = NULL;
    pam_chat_template *t = calloc(1, sizeof *t);
    if (!t) return PAM_ERR_NOMEM;
    t->bos = strdup(bos_token ? bos_token : "");
    t->eos = strdup(eos_token ? eos_token : "");
    t->strip_bos = strip_bos;
    if (!t->bos || !t->eos) {
        pam_chat_template_free(t);
        return PAM_ERR_NOMEM;
    }
    pam_status st = pam_jinja_parse(src, len, &t->jinja, err, err_cap);
    if (st != PAM_OK) {
        pam_chat_template_free(t);
        return st;
    }
    *out = t;
    return PAM_OK;
}

void pam_chat_template_free(pam_chat_template *t) {
    if (!t) return;
    pam_jinja_free(t->jinja);
    free(t->bos);
    free(t->eos);
    free(t);
}

int pam_chat_template_is_jinja(const pam_chat_template *t) { return t->jinja != NULL; }
pam_chat_family pam_chat_template_family(const pam_chat_template *t) { return t->jinja ? PAM_CHAT_FALLBACK : t->family; }
const char *pam_chat_template_name(const pam_chat_template *t) {
    return t->jinja ? "jinja" : pam_chat_family_name(t->family);
}
const char *pam_chat_template_stop(const pam_chat_template *t) { return t->jinja ? NULL : pam_chat_stop(t->family); }

static pam_status apply_builtin(const pam_chat_template *t, const json_t *messages, char **out) {
    size_t n = json_array_size(messages);
    pam_chat_msg *m = calloc(n ? n : 1, sizeof *m);
    if (!m) return PAM_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        json_t *msg = json_array_get(messages, i);
        const char *role = json_string_value(json_object_get(msg, "role"));
        const char *content = json_string_value(json_object_get(msg, "content"));
        m[i].role = role ? role : "user";
        m[i].content = content ? content : "";
    }
    *out = pam_chat_render(t->family, m, (int)n);
    free(m);
    return *out ? PAM_OK : PAM_ERR_NOMEM;
}

pam_status pam_chat_template_apply(const pam_chat_template *t, const json_t *messages, const json_t *vars,
                                   int add_generation_prompt, char **out, char *err, size_t err_cap) {
    *out = NULL;
    if (err_cap) err[0] = '\0';
    if (!json_is_array(messages)) {
        snprintf(err, err_cap, "messages must be an array");
        return PAM_ERR_INVALID;
    }
    if (!t->jinja) return apply_builtin(t, messages, out);
    json_t *all = json_object();
    if (!all) return PAM_ERR_NOMEM;
    if (vars && json_is_object(vars)) json_object_update(all, (json_t *)vars);
    int rc = json_object_set(all, "messages", (json_t *)messages);
    rc |= json_object_set_new(all, "add_generation_prompt", json_boolean(add_generation_prompt));
    rc |= json_object_set_new(all, "bos_token", json_string_nocheck(t->bos));
    rc |= json_object_set_new(all, "eos_token", json_string_nocheck(t->eos));
    if (rc) {
        json_decref(all);
        return PAM_ERR_NOMEM;
    }
    size_t len = 0;
    pam_status st = pam_jinja_render(t->jinja, all, NULL, out, &len, err, err_cap);
    json_decref(all);
    if (st != PAM_OK) return st;
    size_t nb = strlen(t->bos);
    if (t->strip_bos && nb && len >= nb && !memcmp(*out, t->bos, nb)) memmove(*out, *out + nb, len - nb + 1);
    return PAM_OK;
}
