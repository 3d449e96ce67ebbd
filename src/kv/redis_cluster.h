/* A Redis Cluster client over hiredis (Debian's libhiredis-dev has no
 * cluster support and Debian packages no maintained C cluster client, so the
 * cluster protocol lives here): the slot map comes from CLUSTER SLOTS on any
 * reachable node (seeds first), keys map to slots by CRC16 with `{...}` hash
 * tags, commands are pipelined per node, MOVED updates the map and retries,
 * ASK retries once at the named node after ASKING, a broken connection is
 * dropped and reconnected on a later call, and every connect and command has
 * a timeout. Commands go to masters only (replicas may lag behind; after a
 * failover the promoted replica is found through MOVED or a map refresh).
 *
 * Authentication: AUTH with a user and password (Redis 6 ACL) or a password
 * alone, given by the caller (never logged). No TLS: hiredis 0.14 has none.
 *
 * Thread safety: one thread at a time per pam_rc (hiredis contexts are not
 * shared); use one pam_rc per thread. */
#ifndef PAM_KV_REDIS_CLUSTER_H
#define PAM_KV_REDIS_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#include "pam.h"

typedef struct pam_rc pam_rc;

typedef struct pam_rc_config {
    const char *seeds;    /* "host:port[,host:port...]" */
    const char *user;     /* NULL: AUTH with the password alone */
    const char *password; /* NULL: no AUTH */
    int timeout_ms;       /* connect and command timeout; <= 0: 200 */
} pam_rc_config;

/* One command of a batch. argv[1] is the key that routes it (every key of a
 * multi-key command must share its slot). reply is a hiredis redisReply* the
 * caller frees with pam_rc_reply_free, or NULL when st != PAM_OK. */
typedef struct pam_rc_cmd {
    int argc;
    const char *const *argv;
    const size_t *argvlen;
    void *reply;
    pam_status st;
} pam_rc_cmd;

typedef struct pam_rc_stats {
    uint64_t moved, ask, reconnects, refreshes, errors;
} pam_rc_stats;

/* Parses the seeds and tries to load the slot map. PAM_ERR_INVALID for a
 * malformed seed list. When no node answers the client is still made (its
 * later calls retry) and *reachable is 0. */
pam_status pam_rc_open(const pam_rc_config *cfg, pam_rc **out, int *reachable);
void pam_rc_close(pam_rc *rc);

/* Runs the commands, pipelined per node, following redirects (a few rounds
 * at most). Each command's st says how it ended: PAM_OK (reply set, which
 * may be a Redis nil or error reply other than a redirect), PAM_ERR_IO (the
 * node could not be reached or timed out). Returns PAM_OK when every command
 * got a reply, else the first failure. */
pam_status pam_rc_exec(pam_rc *rc, pam_rc_cmd *cmds, int n);
void pam_rc_reply_free(void *reply);

/* Hash slot of a key (CRC16/XMODEM mod 16384 of the hash tag if any). */
uint32_t pam_rc_slot(const char *key, size_t len);
void pam_rc_stats_get(const pam_rc *rc, pam_rc_stats *out);

#endif
