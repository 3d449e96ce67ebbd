/* Internals shared by the remote tier (kv_remote.c: the value format, the
 * Redis Cluster backend, the writer thread) and its persistent journal
 * backend (kv_journal.c). Not a public interface. */
#ifndef PAM_KV_KV_REMOTE_INT_H
#define PAM_KV_KV_REMOTE_INT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "kv/kv_remote.h"
#include "kv/redis_cluster.h"

#define HDR_BYTES 144
#define MAC_BYTES 32
#define VERSION 2u
#define FLAG_HMAC 1u
/* Blocks per pipelined fetch round trip: about FETCH_VALUES values (one
 * per block and layer) in flight, between 16 and FETCH_BATCH blocks. Fewer
 * leave the nodes idle between round trips; many more only grow buffers. */
#define FETCH_BATCH 64
#define FETCH_VALUES 384
#define PUT_BATCH 64   /* values per pipelined write */
static const char MAGIC[8] = {'P', 'A', 'M', 'K', 'V', 'R', '0', '1'};

/* One block of the journal: where its layers' records are, the block it
 * continues (its parent in the prefix chain; zeros for a first block) and
 * when it was last used (a clock of the tier: appends, fetches, touches;
 * at open, a record's position in the file, which compaction writes in
 * order of use). */
typedef struct jblock {
    uint8_t key[32], parent[32];
    uint64_t stamp;
    uint64_t *off; /* n_layer offsets; JOFF_NONE where the layer is absent */
    int32_t have;  /* layers present */
    int32_t used;
} jblock;
#define JOFF_NONE UINT64_MAX

typedef struct put_item {
    char key[PAM_KV_REMOTE_KEY_MAX];
    uint8_t *val; /* value_bytes */
} put_item;

struct pam_kv_remote {
    pam_kv_shape shape;
    uint8_t fp[32];
    uint8_t hkey[256];
    int hkey_len; /* 0: no HMAC */
    /* HMAC-SHA256 keyed once (re-keying and fetching the algorithm per
     * value cost a fifth of the MAC): one for sealing (the writer thread),
     * one for verifying (open, then the fetching thread) */
    struct evp_mac_st *mac;
    struct evp_mac_ctx_st *mac_seal, *mac_verify;
    size_t row;   /* floats per token row */
    size_t payload, value_bytes;
    pam_rc *rd, *wr; /* fetch (caller's thread) and writer connections; NULL for a file */

    /* file backend (--kv-persist): an append-only journal of values */
    int is_file, fd, write_failed;
    int recovered;         /* the index was rebuilt whole: close may compact */
    int inject_errno;      /* test hook: the next journal write (append or compaction) fails with it */
    uint64_t end, max_bytes; /* journal bytes (whole records), cap */
    jblock *idx;           /* under mu: chain key -> block */
    size_t idx_cap, idx_n;
    uint64_t clock;        /* under mu: the last stamp given */
    uint64_t recovered_bad; /* records recovery could not use */
    uint64_t recovered_hmac; /* of them, signed with another key (or unsigned) */
    char *jpath, *tmppath; /* the journal, and compaction's temporary file */
    uint8_t *fbuf;         /* fetch: n_layer values (fetch thread only) */

    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv, idle_cv;
    put_item *q;
    int32_t q_cap, q_head, q_len, in_flight;
    int stop;

    /* Redis fetch: a receiver thread runs a batch's round trip (on rd)
     * while the fetching thread checks and decodes the batch before it */
    pthread_t rx_thread;
    int rx_started;
    pthread_mutex_t rx_mu;
    pthread_cond_t rx_cv;
    pam_rc_cmd *rx_cmds; /* under rx_mu */
    int rx_n, rx_state, rx_stop; /* rx_state: 0 idle, 1 asked, 2 done */
    double rx_dt;        /* the last round trip's seconds */

    /* fetch scratch (fetch thread only) */
    float *fk, *fv;
    pam_kv_remote_stats st; /* under mu */
    int down;               /* under mu: the last exchange got no answer (warned once per outage) */
    char url[256];
};

static inline void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint32_t get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = v << 8 | p[i];
    return v;
}
static inline uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* kv_remote.c: the value format (see kv_remote.h) and the latency histogram. */
void pam_kvr_hex(const uint8_t *p, int n, char *out);
/* Checksum and HMAC into a value whose header and payload are filled. */
void pam_kvr_seal(const pam_kv_remote *r, uint8_t *val);
/* -1 when the value read for (key, layer) is usable, else its reject reason. */
int pam_kvr_verify(const pam_kv_remote *r, const uint8_t key[32], int32_t layer, const uint8_t *val, size_t len);
void pam_kvr_decode(const pam_kv_remote *r, const uint8_t *val, float *k, float *v);
/* mu held. */
void pam_kvr_lat_observe(pam_kv_remote *r, double s);

/* kv_journal.c: the file backend. open: creates dir, opens this model's
 * journal and rebuilds the index; close: makes it durable and frees it;
 * write: the writer thread's batch (frees the values); fetch: as
 * pam_kv_remote_fetch; touch: marks a block used. Close compacts the
 * journal first (see kv_remote.h). */
pam_status pam_kvr_journal_open(pam_kv_remote *r, const char *dir);
void pam_kvr_journal_close(pam_kv_remote *r);
void pam_kvr_journal_write(pam_kv_remote *r, put_item *batch, int n);
int32_t pam_kvr_journal_fetch(pam_kv_remote *r, const uint8_t (*keys)[32], int32_t first, int32_t n_blocks,
                              pam_kv_remote_sink sink, void *ctx);
void pam_kvr_journal_touch(pam_kv_remote *r, const uint8_t key[32]);

#endif
