/* Errors are values: every fallible call returns PAM_OK (0) or a negative
 * pam_status, and records a human-readable message (with file:line) in a
 * thread-local buffer that pam_last_error() returns. A failed call leaves the
 * state it was given as it was. */
#ifndef PAM_CORE_STATUS_H
#define PAM_CORE_STATUS_H

#include "pam.h"

#if defined(__GNUC__)
#define PAM_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define PAM_PRINTF(a, b)
#endif

/* Records the message and returns code, so callers write
 *   return PAM_ERR(PAM_ERR_FORMAT, "tensor %s: bad offset", name); */
pam_status pam_error_set(pam_status code, const char *file, int line, const char *fmt, ...)
    PAM_PRINTF(4, 5);
#define PAM_ERR(code, ...) pam_error_set((code), __FILE__, __LINE__, __VA_ARGS__)

/* Propagate a failure unchanged (the message already names the cause). */
#define PAM_TRY(expr)                  \
    do {                               \
        pam_status _st = (expr);       \
        if (_st != PAM_OK) return _st; \
    } while (0)

void pam_error_clear(void);

#endif
