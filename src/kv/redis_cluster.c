/* Redis Cluster protocol over hiredis (see redis_cluster.h). */
#include "kv/redis_cluster.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/status.h"
#include "core/timing.h"

#define N_SLOTS 16384
#define MAX_NODES 64
#define MAX_ROUNDS 4
/* A node that refused or timed out is not tried again before this: a dead
 * master must cost its slots a fast miss, not a timeout per command. */
#define DOWN_BACKOFF_NS 500000000ll
#define REFRESH_MIN_NS 100000000ll

typedef struct rc_node {
    char host[64];
    int port;
    redisContext *c;
    int64_t down_until;
} rc_node;

struct pam_rc {
    rc_node nodes[MAX_NODES];
    int n_nodes, n_seeds; /* seeds are nodes[0..n_seeds) */
    int16_t slots[N_SLOTS]; /* node index, -1 unknown */
    char *user, *password;
    int timeout_ms;
    int64_t last_refresh;
    pam_rc_stats st;
};

static uint16_t crc16(const char *p, size_t n) {
    uint16_t crc = 0;
    for (size_t i = 0; i < n; i++) {
        crc ^= (uint16_t)((uint8_t)p[i] << 8);
        for (int b = 0; b < 8; b++) crc = (uint16_t)(crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1);
    }
    return crc;
}

uint32_t pam_rc_slot(const char *key, size_t len) {
    const char *o = memchr(key, '{', len);
    if (o) {
        size_t s = (size_t)(o - key) + 1;
        const char *c = memchr(key + s, '}', len - s);
        if (c && c > key + s) return crc16(key + s, (size_t)(c - key - s)) & (N_SLOTS - 1);
    }
    return crc16(key, len) & (N_SLOTS - 1);
}

static int node_find(pam_rc *rc, const char *host, size_t hlen, int port) {
    for (int i = 0; i < rc->n_nodes; i++)
        if (rc->nodes[i].port == port && strlen(rc->nodes[i].host) == hlen && !memcmp(rc->nodes[i].host, host, hlen))
            return i;
    if (rc->n_nodes == MAX_NODES || hlen == 0 || hlen >= sizeof rc->nodes[0].host) return -1;
    rc_node *n = &rc->nodes[rc->n_nodes];
    memset(n, 0, sizeof *n);
    memcpy(n->host, host, hlen);
    n->port = port;
    return rc->n_nodes++;
}

/* "host:port" -> node index (added if new), -1 if malformed. */
static int node_parse(pam_rc *rc, const char *s, size_t len) {
    const char *colon = NULL;
    for (size_t i = len; i > 0; i--)
        if (s[i - 1] == ':') {
            colon = s + i - 1;
            break;
        }
    if (!colon) return -1;
    int port = 0;
    for (const char *p = colon + 1; p < s + len; p++) {
        if (*p < '0' || *p > '9' || port > 65535) return -1;
        port = port * 10 + (*p - '0');
    }
    if (port < 1 || port > 65535) return -1;
    return node_find(rc, s, (size_t)(colon - s), port);
}

static void node_drop(pam_rc *rc, rc_node *n, int64_t now) {
    if (n->c) redisFree(n->c);
    n->c = NULL;
    n->down_until = now + DOWN_BACKOFF_NS;
    rc->st.errors++;
}

static redisContext *node_conn(pam_rc *rc, rc_node *n) {
    if (n->c) return n->c;
    int64_t now = pam_time_ns();
    if (now < n->down_until) return NULL;
    struct timeval tv = {rc->timeout_ms / 1000, (rc->timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(n->host, n->port, tv);
    if (!c || c->err || redisSetTimeout(c, tv) != REDIS_OK) {
        if (c) redisFree(c);
        n->down_until = now + DOWN_BACKOFF_NS;
        rc->st.errors++;
        return NULL;
    }
    if (rc->password) {
        redisReply *r = rc->user ? redisCommand(c, "AUTH %s %s", rc->user, rc->password)
                                 : redisCommand(c, "AUTH %s", rc->password);
        int ok = r && r->type == REDIS_REPLY_STATUS;
        if (r) freeReplyObject(r);
        if (!ok) {
            /* the reason is not printed: it could echo part of the secret */
            redisFree(c);
            n->down_until = now + DOWN_BACKOFF_NS;
            rc->st.errors++;
            return NULL;
        }
    }
    n->c = c;
    rc->st.reconnects++;
    return c;
}

/* Loads the slot map from the first node that answers CLUSTER SLOTS (known
 * masters first, then the seeds). 1 on success. */
static int refresh(pam_rc *rc) {
    int64_t now = pam_time_ns();
    rc->last_refresh = now;
    for (int i = 0; i < rc->n_nodes; i++) {
        rc_node *n = &rc->nodes[i];
        redisContext *c = node_conn(rc, n);
        if (!c) continue;
        redisReply *r = redisCommand(c, "CLUSTER SLOTS");
        if (!r) {
            node_drop(rc, n, now);
            continue;
        }
        if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
            freeReplyObject(r);
            continue;
        }
        int16_t map[N_SLOTS];
        for (int s = 0; s < N_SLOTS; s++) map[s] = -1;
        for (size_t k = 0; k < r->elements; k++) {
            redisReply *e = r->element[k];
            if (e->type != REDIS_REPLY_ARRAY || e->elements < 3) continue;
            redisReply *lo = e->element[0], *hi = e->element[1], *m = e->element[2];
            if (lo->type != REDIS_REPLY_INTEGER || hi->type != REDIS_REPLY_INTEGER || m->type != REDIS_REPLY_ARRAY ||
                m->elements < 2 || m->element[0]->type != REDIS_REPLY_STRING || m->element[1]->type != REDIS_REPLY_INTEGER)
                continue;
            int idx = node_find(rc, m->element[0]->str, m->element[0]->len, (int)m->element[1]->integer);
            if (idx < 0) continue;
            for (long long s = lo->integer; s <= hi->integer && s < N_SLOTS; s++)
                if (s >= 0) map[s] = (int16_t)idx;
        }
        freeReplyObject(r);
        memcpy(rc->slots, map, sizeof map);
        rc->st.refreshes++;
        return 1;
    }
    return 0;
}

pam_status pam_rc_open(const pam_rc_config *cfg, pam_rc **out, int *reachable) {
    *out = NULL;
    if (!cfg->seeds || !*cfg->seeds) return PAM_ERR(PAM_ERR_INVALID, "redis: no seed nodes given");
    pam_rc *rc = calloc(1, sizeof *rc);
    if (!rc) return PAM_ERR(PAM_ERR_NOMEM, "redis client");
    rc->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 200;
    for (const char *s = cfg->seeds; *s;) {
        size_t len = strcspn(s, ",");
        if (node_parse(rc, s, len) < 0) {
            free(rc);
            return PAM_ERR(PAM_ERR_INVALID, "redis: bad seed node '%.*s' (want HOST:PORT)", (int)len, s);
        }
        s += len;
        if (*s == ',') s++;
    }
    rc->n_seeds = rc->n_nodes;
    if ((cfg->user && !(rc->user = strdup(cfg->user))) || (cfg->password && !(rc->password = strdup(cfg->password)))) {
        pam_rc_close(rc);
        return PAM_ERR(PAM_ERR_NOMEM, "redis client");
    }
    for (int s = 0; s < N_SLOTS; s++) rc->slots[s] = -1;
    *reachable = refresh(rc);
    *out = rc;
    return PAM_OK;
}

void pam_rc_close(pam_rc *rc) {
    if (!rc) return;
    for (int i = 0; i < rc->n_nodes; i++)
        if (rc->nodes[i].c) redisFree(rc->nodes[i].c);
    if (rc->password) {
        /* the secret does not outlive the client in freed memory */
        volatile char *p = rc->password;
        while (*p) *p++ = 0;
    }
    free(rc->password);
    free(rc->user);
    free(rc);
}

void pam_rc_reply_free(void *reply) {
    if (reply) freeReplyObject(reply);
}

void pam_rc_stats_get(const pam_rc *rc, pam_rc_stats *out) { *out = rc->st; }

/* "MOVED 3999 127.0.0.1:6381" / "ASK ...": the target node, or -1. */
static int redirect_target(pam_rc *rc, const redisReply *r, int *is_ask, uint32_t *slot) {
    if (r->type != REDIS_REPLY_ERROR) return -1;
    int ask = !strncmp(r->str, "ASK ", 4);
    if (!ask && strncmp(r->str, "MOVED ", 6)) return -1;
    const char *p = r->str + (ask ? 4 : 6);
    char *end;
    unsigned long s = strtoul(p, &end, 10);
    if (end == p || *end != ' ' || s >= N_SLOTS) return -1;
    *is_ask = ask;
    *slot = (uint32_t)s;
    return node_parse(rc, end + 1, strlen(end + 1));
}

static int transient(const redisReply *r) {
    return r->type == REDIS_REPLY_ERROR &&
           (!strncmp(r->str, "TRYAGAIN", 8) || !strncmp(r->str, "CLUSTERDOWN", 11) || !strncmp(r->str, "LOADING", 7));
}

pam_status pam_rc_exec(pam_rc *rc, pam_rc_cmd *cmds, int n) {
    /* target node per command (-1: by slot), ASKING wanted */
    int *target = malloc((size_t)(n > 0 ? n : 1) * sizeof *target);
    uint8_t *asking = calloc((size_t)(n > 0 ? n : 1), 1), *pending = malloc((size_t)(n > 0 ? n : 1));
    if (!target || !asking || !pending) {
        free(target);
        free(asking);
        free(pending);
        return PAM_ERR(PAM_ERR_NOMEM, "redis batch");
    }
    for (int i = 0; i < n; i++) {
        cmds[i].reply = NULL;
        cmds[i].st = PAM_ERR_IO;
        target[i] = -1;
        pending[i] = 1;
    }
    for (int round = 0; round < MAX_ROUNDS; round++) {
        int left = 0, need_refresh = 0;
        for (int i = 0; i < n; i++) {
            if (!pending[i]) continue;
            if (target[i] < 0) {
                uint32_t s = pam_rc_slot(cmds[i].argv[1], cmds[i].argvlen[1]);
                target[i] = rc->slots[s];
            }
            if (target[i] < 0) need_refresh = 1;
            left++;
        }
        if (!left) break;
        if (need_refresh && pam_time_ns() - rc->last_refresh >= REFRESH_MIN_NS && refresh(rc)) {
            for (int i = 0; i < n; i++)
                if (pending[i] && target[i] < 0)
                    target[i] = rc->slots[pam_rc_slot(cmds[i].argv[1], cmds[i].argvlen[1])];
        }
        int redirected = 0;
        /* Send to every node first, then read: the nodes work in parallel
         * and one batch costs about one round trip, not one per node. */
        uint8_t sent[MAX_NODES] = {0};
        for (int ni = 0; ni < rc->n_nodes; ni++) {
            int any = 0;
            for (int i = 0; i < n && !any; i++) any = pending[i] && target[i] == ni;
            if (!any) continue;
            rc_node *node = &rc->nodes[ni];
            redisContext *c = node_conn(rc, node);
            int ok = c != NULL;
            for (int i = 0; i < n && ok; i++) {
                if (!pending[i] || target[i] != ni) continue;
                if (asking[i] && redisAppendCommand(c, "ASKING") != REDIS_OK) ok = 0;
                if (ok && redisAppendCommandArgv(c, cmds[i].argc, (const char **)cmds[i].argv, cmds[i].argvlen) != REDIS_OK)
                    ok = 0;
            }
            for (int done = 0; ok && !done;)
                if (redisBufferWrite(c, &done) != REDIS_OK) ok = 0;
            sent[ni] = (uint8_t)(ok ? 1 : 2);
        }
        for (int ni = 0; ni < rc->n_nodes; ni++) {
            if (!sent[ni]) continue;
            rc_node *node = &rc->nodes[ni];
            redisContext *c = node->c;
            int sent_ok = sent[ni] == 1 && c != NULL;
            for (int i = 0; i < n; i++) {
                if (!pending[i] || target[i] != ni) continue;
                redisReply *r = NULL;
                if (sent_ok && asking[i]) {
                    if (redisGetReply(c, (void **)&r) != REDIS_OK) sent_ok = 0;
                    if (r) freeReplyObject(r);
                    r = NULL;
                }
                if (sent_ok && redisGetReply(c, (void **)&r) != REDIS_OK) sent_ok = 0, r = NULL;
                asking[i] = 0;
                if (!sent_ok || !r) {
                    /* connection broken or timed out: later commands of this
                     * node cannot be matched to replies any more */
                    if (node->c) node_drop(rc, node, pam_time_ns());
                    target[i] = -1;
                    need_refresh = 1;
                    continue;
                }
                int ask = 0;
                uint32_t slot = 0;
                int to = redirect_target(rc, r, &ask, &slot);
                if (to >= 0) {
                    freeReplyObject(r);
                    if (ask) {
                        rc->st.ask++;
                        asking[i] = 1;
                    } else {
                        rc->st.moved++;
                        rc->slots[slot] = (int16_t)to;
                    }
                    target[i] = to;
                    redirected = 1;
                    continue;
                }
                if (transient(r)) {
                    freeReplyObject(r);
                    target[i] = -1;
                    need_refresh = 1;
                    continue;
                }
                cmds[i].reply = r;
                cmds[i].st = PAM_OK;
                pending[i] = 0;
            }
        }
        if (need_refresh && !redirected && pam_time_ns() - rc->last_refresh >= REFRESH_MIN_NS) refresh(rc);
    }
    pam_status st = PAM_OK;
    for (int i = 0; i < n && st == PAM_OK; i++)
        if (cmds[i].st != PAM_OK) st = PAM_ERR(PAM_ERR_IO, "redis: no answer for a command (cluster unreachable or failing over)");
    free(target);
    free(asking);
    free(pending);
    return st;
}
