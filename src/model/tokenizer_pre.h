/* Pre-tokenizers for byte-level BPE: split text into the pieces that BPE
 * merges never cross. Each kind reproduces the regex (or sequence of regexes)
 * that llama.cpp applies for that tokenizer.ggml.pre name, implemented as
 * hand-written scanners over Unicode categories (utf8proc) instead of a regex
 * engine. Invalid UTF-8 bytes are classified as U+FFFD (as llama.cpp does)
 * but keep their original byte in the piece, so decoding stays byte-exact. */
#ifndef PAM_MODEL_TOKENIZER_PRE_H
#define PAM_MODEL_TOKENIZER_PRE_H

#include <stddef.h>
#include <stdint.h>

#include "pam.h"

typedef enum pam_tok_pre {
    PAM_TOK_PRE_DEFAULT = 0,  /* llama.cpp's "default": punctuation runs, gpt-2, digits, digit triples */
    PAM_TOK_PRE_GPT2,         /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
    PAM_TOK_PRE_LLAMA3,       /* Llama-3: letters with one leading non-letter, \p{N}{1,3}, ... */
    PAM_TOK_PRE_QWEN2,        /* as LLAMA3 with single digits */
    PAM_TOK_PRE_DEEPSEEK_LLM, /* six regexes applied in sequence */
    PAM_TOK_PRE_DIGITS_GPT2,  /* \p{N} then gpt-2 (starcoder, smollm, command-r, ...) */
} pam_tok_pre;

/* Maps a tokenizer.ggml.pre name; *known is set to 0 for names we do not
 * recognise (the result is then PAM_TOK_PRE_DEFAULT). */
pam_tok_pre pam_tok_pre_from_name(const char *name, size_t len, int *known);

/* Splits text[0, len) into consecutive pieces covering it. On success
 * *pieces (malloc'ed, caller frees) holds *n_pieces byte lengths, all > 0. */
pam_status pam_tok_pre_split(pam_tok_pre pre, const char *text, size_t len, size_t **pieces,
                             size_t *n_pieces);

/* Category tests shared with the tokenizer (llama.cpp's definitions). */
int pam_tok_cpt_is_whitespace(uint32_t cp);

#endif
