/* Tokenizers built from GGUF metadata (tokenizer.ggml.*):
 *  - "llama": SentencePiece-style BPE over scores, with byte fallback
 *    (<0xNN> tokens) and the dummy-prefix space ("▁").
 *  - "gpt2": byte-level BPE over merges, after a pre-tokenizer split chosen by
 *    tokenizer.ggml.pre ("llama-bpe"/"llama3", "qwen2", "gpt-2", "deepseek-llm", ...).
 * Encoding matches llama.cpp's tokenizer (the vocab tests in ../shared hold
 * its outputs). Decoding is byte-exact; pam_detok handles a multi-byte UTF-8
 * character split across tokens while streaming. */
#ifndef PAM_MODEL_TOKENIZER_H
#define PAM_MODEL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "model/gguf.h"
#include "pam.h"

typedef struct pam_tokenizer pam_tokenizer;

typedef enum pam_tok_kind { PAM_TOK_SPM = 1, PAM_TOK_BPE = 2 } pam_tok_kind;

pam_status pam_tokenizer_from_gguf(const pam_gguf *g, pam_tokenizer **out);
void pam_tokenizer_free(pam_tokenizer *tk);

pam_tok_kind pam_tokenizer_kind(const pam_tokenizer *tk);
int32_t pam_tokenizer_n_vocab(const pam_tokenizer *tk);
int32_t pam_tokenizer_bos(const pam_tokenizer *tk); /* -1 if none */
int32_t pam_tokenizer_eos(const pam_tokenizer *tk); /* -1 if none */
int pam_tokenizer_add_bos(const pam_tokenizer *tk); /* tokenizer.ggml.add_bos_token (default per kind) */
/* End of generation: eos, eot, or other end-of-generation control tokens. */
int pam_tokenizer_is_eog(const pam_tokenizer *tk, int32_t id);
/* The vocabulary entry as stored (e.g. "▁the", "<0x0A>", "Ġthe"); NULL if id out of range. */
const char *pam_tokenizer_piece(const pam_tokenizer *tk, int32_t id);

/* Encodes len bytes of text (need not be NUL-terminated; invalid UTF-8 is
 * handled, never read past len). add_bos prepends BOS when the vocab has one.
 * parse_special: text like "<|im_start|>" matching a control/user-defined
 * token becomes that token instead of being split.
 * Writes at most cap ids; *n_out receives the total count. If cap was too
 * small returns PAM_ERR_RANGE (call again with *n_out capacity). */
pam_status pam_tokenizer_encode(const pam_tokenizer *tk, const char *text, size_t len, int add_bos,
                                int parse_special, int32_t *out, size_t cap, size_t *n_out);

/* The bytes token id stands for when printed: byte tokens give their byte,
 * "▁" gives a space, GPT-2 byte-level symbols are unmapped; control tokens
 * give nothing. Writes at most cap bytes, *len_out gets the full length. */
pam_status pam_tokenizer_token_bytes(const pam_tokenizer *tk, int32_t id, char *buf, size_t cap,
                                     size_t *len_out);

/* Streaming detokenizer: emits only complete UTF-8 sequences; holds back the
 * bytes of a character that continues in the next token. For SPM the leading
 * space of the first emitted token after BOS is removed (as SentencePiece
 * decode does). */
typedef struct pam_detok {
    const pam_tokenizer *tk;
    unsigned char pending[8];
    int n_pending;
    int at_start;
} pam_detok;

void pam_detok_init(pam_detok *d, const pam_tokenizer *tk);
/* Appends the printable text of id to out (NUL-terminated); returns the number
 * of bytes written. out must hold at least 256 + longest piece bytes. */
size_t pam_detok_push(pam_detok *d, int32_t id, char *out, size_t cap);
/* Emits held-back bytes (invalid sequences as U+FFFD). */
size_t pam_detok_flush(pam_detok *d, char *out, size_t cap);

#endif
