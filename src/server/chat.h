/* Chat templates: the prompt text for a list of messages.
 *
 * A pam_chat_template is either the model's own Jinja template (the GGUF's
 * tokenizer.chat_template, or a file given by the user) run by server/jinja.c
 * as Hugging Face's apply_chat_template runs it, or one of the built-in
 * family formats below, which serve models without a template (or a template
 * our interpreter cannot parse).
 *
 * Built-in families are detected from a template's text by markers:
 *   "<|start_header_id|>"      Llama-3
 *   "<|im_start|>"             ChatML (Qwen, many fine-tunes)
 *   "[INST]" with "<<SYS>>"    Llama-2
 *   "[INST]" without           Mistral
 *   "<|user|>"                 Zephyr
 * anything else (or no template): the fallback
 *   "{system}\n\nUser: {content}\nAssistant: {content}\n...Assistant:"
 * for which "\nUser:" is added as a stop string. BOS is not written: the
 * tokenizer adds it when the vocabulary asks for it. */
#ifndef PAM_SERVER_CHAT_H
#define PAM_SERVER_CHAT_H

#include <jansson.h>
#include <stddef.h>

#include "pam.h"

typedef enum pam_chat_family {
    PAM_CHAT_FALLBACK = 0,
    PAM_CHAT_LLAMA3,
    PAM_CHAT_CHATML,
    PAM_CHAT_LLAMA2,
    PAM_CHAT_MISTRAL,
    PAM_CHAT_ZEPHYR,
} pam_chat_family;

typedef struct pam_chat_msg {
    const char *role; /* system, user, assistant (developer is treated as system) */
    const char *content;
} pam_chat_msg;

/* tmpl may be NULL. */
pam_chat_family pam_chat_detect(const char *tmpl, size_t len);
const char *pam_chat_family_name(pam_chat_family f);
/* Parses "llama3", "chatml", "llama2", "mistral", "zephyr", "fallback"; -1 if unknown. */
int pam_chat_family_from_name(const char *name);
/* The prompt (malloc'd, NUL-terminated) or NULL when out of memory. */
char *pam_chat_render(pam_chat_family f, const pam_chat_msg *msgs, int n_msgs);
/* A stop string the family needs beyond end-of-generation tokens, or NULL. */
const char *pam_chat_stop(pam_chat_family f);

typedef struct pam_chat_template pam_chat_template;

/* A built-in family as a template; NULL when out of memory. */
pam_chat_template *pam_chat_template_builtin(pam_chat_family f);
/* A Jinja template. bos_token and eos_token are the variables the template
 * sees (NULL: ""). strip_bos: the tokenizer adds BOS itself, so a rendered
 * prompt that starts with bos_token loses it (as llama.cpp does), and the
 * model does not see two. On a parse error returns PAM_ERR_INVALID with
 * jinja2's message in err. */
pam_status pam_chat_template_jinja(const char *src, size_t len, const char *bos_token, const char *eos_token,
                                   int strip_bos, pam_chat_template **out, char *err, size_t err_cap);
void pam_chat_template_free(pam_chat_template *t);
int pam_chat_template_is_jinja(const pam_chat_template *t);
/* The built-in family (PAM_CHAT_FALLBACK for a Jinja template). */
pam_chat_family pam_chat_template_family(const pam_chat_template *t);
/* "jinja" or the family's name. */
const char *pam_chat_template_name(const pam_chat_template *t);
/* A stop string the template needs beyond end-of-generation tokens, or NULL. */
const char *pam_chat_template_stop(const pam_chat_template *t);

/* Renders messages (a JSON array of message objects, each with a string
 * "role" and a string or null "content"; a Jinja template also sees every
 * other member, such as tool_calls). vars: more variables for a Jinja
 * template (tools, enable_thinking, ...), may be NULL; a built-in family
 * ignores them and always adds the generation prompt. Returns PAM_OK with
 * the prompt (malloc'd) in *out, PAM_ERR_INVALID with the template's error
 * (e.g. "TemplateError: System role not supported") in err, or
 * PAM_ERR_NOMEM. */
pam_status pam_chat_template_apply(const pam_chat_template *t, const json_t *messages, const json_t *vars,
                                   int add_generation_prompt, char **out, char *err, size_t err_cap);

#endif
