#include "core/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char g_msg[1024];
static _Thread_local char g_text[900]; /* the message without its source location */
static _Thread_local pam_status g_code;

pam_status pam_error_set(pam_status code, const char *file, int line, const char *fmt, ...) {
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    /* Format into a local buffer first: callers may pass pam_last_error() as
     * an argument to wrap an earlier failure with context. */
    char buf[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    snprintf(g_msg, sizeof g_msg, "%.900s (%.64s:%d)", buf, base, line);
    memcpy(g_text, buf, sizeof g_text);
    g_code = code;
    return code;
}

void pam_error_clear(void) {
    g_msg[0] = '\0';
    g_text[0] = '\0';
    g_code = PAM_OK;
}

const char *pam_last_error(void) { return g_msg[0] ? g_msg : pam_status_str(g_code); }

const char *pam_last_error_message(void) { return g_text[0] ? g_text : pam_status_str(g_code); }

const char *pam_status_str(pam_status st) {
    switch (st) {
    case PAM_OK: return "ok";
    case PAM_ERR_IO: return "I/O error";
    case PAM_ERR_NOMEM: return "out of memory";
    case PAM_ERR_FORMAT: return "malformed file";
    case PAM_ERR_UNSUPPORTED: return "unsupported";
    case PAM_ERR_INVALID: return "invalid argument";
    case PAM_ERR_RANGE: return "out of range";
    case PAM_ERR_FULL: return "capacity exhausted";
    case PAM_ERR_CORRUPT: return "data corrupted";
    case PAM_ERR_NOT_FOUND: return "not found";
    case PAM_ERR_CANCELLED: return "cancelled";
    }
    return "unknown error";
}
