/* Text file -> token ids (see text_tokens.h). */
#include "cli/text_tokens.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"

static pam_status read_all(const char *path, char **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return PAM_ERR(PAM_ERR_IO, "cannot open the text '%s': %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0, got;
    char *buf = malloc(cap);
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) free(buf);
            buf = nb;
        }
    }
    int err = ferror(f);
    fclose(f);
    if (!buf) return PAM_ERR(PAM_ERR_NOMEM, "reading '%s': out of memory", path);
    if (err) {
        free(buf);
        return PAM_ERR(PAM_ERR_IO, "cannot read the text '%s'", path);
    }
    *out = buf;
    *len = n;
    return PAM_OK;
}

pam_status pam_cli_text_tokens(const char *path, const pam_tokenizer *tk, int add_bos, int32_t **ids, size_t *n) {
    char *text = NULL;
    size_t len = 0;
    PAM_TRY(read_all(path, &text, &len));
    /* Nearly every token covers a byte or more; the encoder says if not. */
    size_t cap = len + 8;
    int32_t *buf = NULL;
    pam_status st;
    for (;;) {
        int32_t *nb = realloc(buf, cap * sizeof *buf);
        if (!nb) {
            st = PAM_ERR(PAM_ERR_NOMEM, "tokenizing '%s': out of memory", path);
            break;
        }
        buf = nb;
        st = pam_tokenizer_encode(tk, text, len, add_bos, 0, buf, cap, n);
        if (st != PAM_ERR_RANGE || *n <= cap) break;
        cap = *n;
    }
    free(text);
    if (st != PAM_OK) {
        free(buf);
        return st;
    }
    *ids = buf;
    return PAM_OK;
}
