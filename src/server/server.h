/* OpenAI-compatible HTTP server over an engine (libmicrohttpd's epoll event
 * loop; a connection waiting on the engine is suspended, so idle and
 * waiting connections cost no thread).
 *
 *   POST /v1/completions, /v1/chat/completions   (stream: true -> SSE)
 *   POST /apply-template                          (llama-server's: the chat prompt)
 *   GET  /v1/models, /health, /metrics
 *
 * Bodies over max_body_bytes are refused with 413 from Content-Length before
 * they are read, or as soon as a chunked body passes the limit. A full queue
 * gives 503 with Retry-After. A client that goes away cancels its request.
 * pam_server_drain() makes new requests get 503 and waits for the running
 * ones; pam_server_stop() then closes the listener and joins connections. */
#ifndef PAM_SERVER_SERVER_H
#define PAM_SERVER_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "model/model.h"
#include "pam.h"
#include "server/chat.h"

typedef struct pam_server_params {
    const char *host;      /* IPv4 or IPv6 literal; default 127.0.0.1 */
    int port;              /* 0: any free port (see pam_server_port) */
    const char *alias;     /* model id in the API */
    size_t max_body_bytes; /* default 1 MiB */
    int max_connections;   /* default 8192 */
    int max_conn_per_client; /* connections from one IP address; 0: no limit (default) */
    int timeout_s;         /* an idle connection is closed after this; default 600 */
    int chat_family;       /* -1: the model's tokenizer.chat_template (see below) */
    const char *chat_template; /* Jinja source that overrides both (NULL: none) */
} pam_server_params;

void pam_server_params_default(pam_server_params *p);

typedef struct pam_server pam_server;

pam_status pam_server_start(pam_engine *e, const pam_model *m, const pam_server_params *p, pam_server **out);
int pam_server_port(const pam_server *s);
pam_chat_family pam_server_chat_family(const pam_server *s);
/* Which chat template the server applies and where it comes from. */
const char *pam_server_chat_template_desc(const pam_server *s);
void pam_server_drain(pam_server *s);
void pam_server_stop(pam_server *s);

#endif
