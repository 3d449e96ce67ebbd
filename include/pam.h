/* PAM — Processing Across Memory: public API.
 *
 * Every fallible function returns PAM_OK (0) or a negative pam_status; the
 * message of the most recent failure on the calling thread is available from
 * pam_last_error(). Types are opaque; each create/open has a destroy/close. */
#ifndef PAM_H
#define PAM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum pam_status {
    PAM_OK = 0,
    PAM_ERR_IO = -1,          /* read/write/open failed (errno in the message) */
    PAM_ERR_NOMEM = -2,       /* allocation failed */
    PAM_ERR_FORMAT = -3,      /* malformed or truncated input file */
    PAM_ERR_UNSUPPORTED = -4, /* valid input we do not handle (arch, tensor type) */
    PAM_ERR_INVALID = -5,     /* bad argument from the caller */
    PAM_ERR_RANGE = -6,       /* value out of range (context length, token id) */
    PAM_ERR_FULL = -7,        /* a capacity (KV, queue, disk) is exhausted */
    PAM_ERR_CORRUPT = -8,     /* checksum mismatch */
    PAM_ERR_NOT_FOUND = -9,   /* missing key, tensor or file */
    PAM_ERR_CANCELLED = -10,  /* the request was cancelled */
} pam_status;

const char *pam_status_str(pam_status st);
/* Message of the last failure on this thread ("" if none). */
const char *pam_last_error(void);
/* The same message without the source location: for end users of a
 * service (an API client), while logs keep pam_last_error(). */
const char *pam_last_error_message(void);

#ifdef __cplusplus
}
#endif
#endif
