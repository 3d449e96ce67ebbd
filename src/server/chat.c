/* Chat templates for the common families (see chat.h). Each renders what
 * the family's reference Jinja template renders for plain text messages with
 * add_generation_prompt set, minus the BOS text. */
#include "server/chat.h"

#include <stdlib.h>
#include <string.h>

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
