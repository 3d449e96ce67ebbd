/* libFuzzer target for the tokenizer. The first input byte picks the
 * vocabulary and options, the rest is text: encode it (with and without
 * parse_special), check the ids are in range and that decoding gives the
 * text back, then read the same bytes as token ids and stream them through
 * the detokenizer, checking every chunk is whole UTF-8. The text is copied to
 * an exact-size heap buffer so ASan flags any read past its end.
 *
 * Vocabularies come from $PAM_SHARED_DIR/models/vocab (default ../shared):
 *   ./fuzz_tokenizer -max_total_time=60 fuzz/seeds/fuzz_tokenizer */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "model/gguf.h"
#include "model/tokenizer.h"
#include "pam.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const k_names[] = {"llama-spm", "gpt-2", "deepseek-llm"};
#define N_VOCABS 3
static pam_gguf *g_gguf[N_VOCABS];
static pam_tokenizer *g_tok[N_VOCABS];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    const char *dir = getenv("PAM_SHARED_DIR");
    if (!dir) dir = "../shared";
    for (int i = 0; i < N_VOCABS; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/models/vocab/ggml-vocab-%s.gguf", dir, k_names[i]);
        if (pam_gguf_open(path, &g_gguf[i]) != PAM_OK || pam_tokenizer_from_gguf(g_gguf[i], &g_tok[i]) != PAM_OK) {
            fprintf(stderr, "fuzz_tokenizer: cannot load %s: %s (set PAM_SHARED_DIR)\n", path, pam_last_error());
            exit(1);
        }
    }
    return 0;
}

static void check_chunk(const char *s, size_t n) {
    for (size_t k = 0; k < n;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t r = utf8proc_iterate((const utf8proc_uint8_t *)s + k, (utf8proc_ssize_t)(n - k), &c);
        if (r <= 0) abort();
        k += (size_t)r;
    }
    if (s[n] != 0) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int which = data[0] % N_VOCABS, add_bos = (data[0] >> 2) & 1;
    const pam_tokenizer *tk = g_tok[which];
    size_t len = size - 1;
    char *text = malloc(len ? len : 1);
    memcpy(text, data + 1, len);

    size_t cap = len + 2, n;
    int32_t *ids = malloc(cap * sizeof *ids);
    for (int special = 0; special < 2; special++) {
        if (pam_tokenizer_encode(tk, text, len, add_bos, special, ids, cap, &n) != PAM_OK) abort();
        if (n > cap) abort();
        char *dec = malloc(4 * len + 64);
        size_t at = 0;
        for (size_t i = 0; i < n; i++) {
            if (ids[i] < 0 || ids[i] >= pam_tokenizer_n_vocab(tk)) abort();
            size_t l;
            if (pam_tokenizer_token_bytes(tk, ids[i], dec + at, 4 * len + 64 - at, &l) != PAM_OK) abort();
            at += l;
            if (at > 4 * len + 64) abort();
        }
        /* Without special tokens the decoded text is the input (SPM: after
         * the dummy-prefix space). deepseek-llm is exempt: bytes UTF-8 never
         * uses alias user-defined tokens there, and a literal "▁" in SPM
         * input is indistinguishable from an escaped space. */
        if (!special && which != 2 && !(which == 0 && memmem(text, len, "\xE2\x96\x81", 3))) {
            size_t skip = pam_tokenizer_kind(tk) == PAM_TOK_SPM && len > 0;
            if (at != len + skip || (skip && dec[0] != ' ') || memcmp(dec + skip, text, len) != 0) abort();
        }
        free(dec);
    }
    free(ids);

    /* The same bytes as ids: token_bytes and streaming detokenization. */
    pam_detok d;
    pam_detok_init(&d, tk);
    char out[4096];
    for (size_t i = 0; i + 2 <= len; i += 2) {
        int32_t id = (int32_t)((uint32_t)(uint8_t)text[i] | (uint32_t)(uint8_t)text[i + 1] << 8);
        id = id * 3 % (pam_tokenizer_n_vocab(tk) + 2) - 1; /* includes -1 and n_vocab */
        size_t w = pam_detok_push(&d, id, out, sizeof out);
        check_chunk(out, w);
        size_t l;
        pam_status st = pam_tokenizer_token_bytes(tk, id, out, sizeof out, &l);
        if ((id < 0 || id >= pam_tokenizer_n_vocab(tk)) != (st == PAM_ERR_RANGE)) abort();
        (void)pam_tokenizer_piece(tk, id);
        (void)pam_tokenizer_is_eog(tk, id);
    }
    check_chunk(out, pam_detok_flush(&d, out, sizeof out));
    free(text);
    return 0;
}
