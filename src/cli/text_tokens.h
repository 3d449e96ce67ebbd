/* Reading a text file and tokenizing it whole, for the commands that
 * evaluate a model on a text (`pam perplexity`, `pam locality`). */
#ifndef PAM_CLI_TEXT_TOKENS_H
#define PAM_CLI_TEXT_TOKENS_H

#include <stddef.h>
#include <stdint.h>

#include "model/tokenizer.h"
#include "pam.h"

/* Tokenizes the file at path as one text (BOS first when add_bos and the
 * vocabulary has one; special-token text is not parsed, as llama.cpp's
 * perplexity tool does). *ids (malloc'd, caller frees) receives *n ids. */
pam_status pam_cli_text_tokens(const char *path, const pam_tokenizer *tk, int add_bos, int32_t **ids, size_t *n);

#endif
