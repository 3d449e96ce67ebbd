/* Prometheus text exposition (format 0.0.4) of the engine's and the HTTP
 * layer's counters. */
#ifndef PAM_SERVER_METRICS_H
#define PAM_SERVER_METRICS_H

#include <stdint.h>

#include "engine/engine.h"

typedef struct pam_http_counters {
    uint64_t by_status[6];  /* 1xx..5xx responses, index status / 100 */
    uint64_t bad_request;   /* 400 */
    uint64_t queue_full;    /* 503 from a full queue or draining */
    uint64_t too_large;     /* 413 */
    uint64_t disconnects;   /* clients gone before their request finished */
    uint64_t streams;       /* streaming responses started */
} pam_http_counters;

/* malloc'd text. */
char *pam_metrics_render(const pam_engine_stats *st, const pam_http_counters *h);

#endif
