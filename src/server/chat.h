/* Chat templates: the prompt text for a list of messages, in the format of
 * the model's family. The family is detected from the GGUF's
 * tokenizer.chat_template (a Jinja template we do not execute) by markers:
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

#include <stddef.h>

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

#endif
