/* The remote KV tier (DESIGN.md §2.11): full prefix blocks in Redis Cluster,
 * shared by every PAM instance serving the same model. A capacity and
 * sharing tier, not a compute tier: blocks are written asynchronously (a
 * writer thread) once complete, fetched in pipelined batches at admission
 * after a local prefix-cache miss, decoded into the KV manager, and used
 * only after they prove what they are. A miss, a rejected value or an
 * unreachable cluster only costs recomputation.
 *
 * Keys: "pam:{F.C}:L" with F = 16 hex digits of the model fingerprint, C = 32
 * hex digits of the block's chain key (SHA-256 over the previous block's
 * chain key and this block's token ids) and L the layer: the hash tag puts
 * one block's layers in one slot, so a block is one MGET on one node.
 *
 * Value: a 144-byte little-endian header (magic "PAMKVR01", version 2, flags,
 * the full 32-byte fingerprint, the full 32-byte chain key, layer, block
 * tokens, KV heads, head dim, payload bytes, 64-bit checksum of the payload,
 * the 32-byte chain key of the block this one continues, zeros for a first
 * block: what lets the journal keep whole prefix chains when it compacts),
 * the payload (f16 K rows then f16 V rows of the block's tokens), and, when
 * an HMAC key is configured, HMAC-SHA256 over header and payload. A value is
 * rejected (and counted by reason) when it is truncated or oversized, its
 * header is malformed or of another shape, its fingerprint is not ours
 * (foreign model), its chain key or layer differs from the key it was read
 * under (key echo), its checksum fails, or its HMAC is missing or wrong.
 *
 * Eviction is Redis's: run the cluster with maxmemory and an LRU policy
 * (allkeys-lru); PAM never deletes keys.
 *
 * Fetches are pipelined one batch ahead: the tier's receiver thread runs
 * the next batch's round trip while the fetching thread checks and decodes
 * the current batch (a batch after the first missing or rejected block is
 * dropped unread by the sink).
 *
 * Thread safety: put may be called from any one thread, fetch from one
 * thread (they use separate connections); stats from any thread. */
#ifndef PAM_KV_KV_REMOTE_H
#define PAM_KV_KV_REMOTE_H

#include <stdint.h>

#include "kv/tier.h"
#include "pam.h"

#define PAM_KV_REMOTE_LAT_BUCKETS 12
#define PAM_KV_REMOTE_KEY_MAX 96

typedef enum pam_kv_remote_reject {
    PAM_KV_REJECT_TRUNCATED = 0,
    PAM_KV_REJECT_OVERSIZED,
    PAM_KV_REJECT_FORMAT,   /* bad magic, version or shape */
    PAM_KV_REJECT_FOREIGN,  /* another model's fingerprint */
    PAM_KV_REJECT_KEY,      /* chain key or layer differs from the key read */
    PAM_KV_REJECT_CHECKSUM,
    PAM_KV_REJECT_HMAC,
    PAM_KV_REJECT_N
} pam_kv_remote_reject;

const char *pam_kv_remote_reject_name(pam_kv_remote_reject r); /* "truncated", ... */

typedef struct pam_kv_remote_config {
    const char *url;            /* "redis://HOST:PORT[,HOST:PORT...]" */
    pam_kv_shape shape;
    uint8_t fingerprint[32];    /* model identity (weights, tokenizer, KV type, block size) */
    const char *auth_file;      /* "USER PASSWORD" or "PASSWORD" on its first line; NULL: the
                                   environment (PAM_REDIS_USER, PAM_REDIS_PASSWORD) or no AUTH */
    const char *hmac_key_file;  /* NULL: no HMAC; else >= 16 bytes of key */
    int timeout_ms;             /* per connect and command; <= 0: 200 */
    int32_t queue_values;       /* pending writes at most (one per block and layer); <= 0: 8192 */
    uint64_t max_bytes;         /* file journal: stop appending past this; 0: no limit */
} pam_kv_remote_config;

typedef struct pam_kv_remote_stats {
    uint64_t lookups;        /* fetch calls */
    uint64_t hit_blocks;     /* blocks fetched, verified and delivered */
    uint64_t miss_blocks;    /* blocks asked for and absent (the fetch stops at the first) */
    uint64_t bytes_read, bytes_written;
    uint64_t put_values, put_dropped, put_errors;
    uint64_t io_errors;      /* batches that got no answer */
    uint64_t rejects[PAM_KV_REJECT_N];
    double lat_le[PAM_KV_REMOTE_LAT_BUCKETS]; /* seconds, +Inf implicit */
    uint64_t lat_count[PAM_KV_REMOTE_LAT_BUCKETS + 1]; /* per bucket, last is +Inf */
    double lat_sum;
    uint64_t lat_n;          /* fetch round trips (one pipelined batch each) */
} pam_kv_remote_stats;

typedef struct pam_kv_remote pam_kv_remote;

/* url "file:DIR" opens the persistent local journal instead (--kv-persist,
 * DESIGN.md §2.10): the same values (header, f16 payload, checksum, HMAC
 * when keyed) appended to DIR/pam-kv-<fingerprint>-<signed|plain>.log by the
 * writer thread, indexed in memory by (chain key, layer); at open the index
 * is rebuilt from the journal: every whole record that verifies is used,
 * others are counted as rejects, a torn tail is cut off. Journals of other
 * models in DIR are left alone and reported. A failed append (ENOSPC, EIO)
 * is undone, warned about once and ends journaling for the run. Appends
 * stop at max_bytes. Close compacts: when the journal holds records no
 * fetch can use (rejected, duplicate, a block missing layers or whose
 * parent chain is gone) or, with max_bytes, more than three quarters of
 * it, the journal is rewritten (a temporary file, fsync, rename, so a crash
 * at any point leaves the old or the new journal whole; a leftover
 * temporary file is removed at open) with the most recently used whole
 * prefix chains that fit three quarters of max_bytes, parents always kept
 * with their children. A failed rewrite leaves the old journal as it was,
 * and a journal holding records signed with another key (a wrong key file,
 * most likely) is not compacted.
 *
 * PAM_ERR_INVALID for a malformed URL, an unreadable auth or key file or a
 * short key. An unreachable cluster is not an error: a warning is printed
 * and the tier keeps trying later. */
pam_status pam_kv_remote_open(const pam_kv_remote_config *cfg, pam_kv_remote **out);
/* Sends what is queued (bounded by the timeout), then closes. */
void pam_kv_remote_close(pam_kv_remote *r);

/* Chain keys of n_blocks full blocks of tok following the block whose key
 * is prev (NULL: tok starts at position 0). */
void pam_kv_remote_chain(const pam_kv_remote *r, const uint8_t *prev, const int32_t *tok, int32_t n_blocks,
                         uint8_t (*keys)[32]);

/* Queues one layer of one full block (k, v: block_tokens rows of
 * n_head_kv*head_dim f32) for an asynchronous write; parent is the chain key
 * of the block it continues (NULL for a prompt's first block). 0 when the
 * queue is full (dropped and counted), 1 when queued. */
int pam_kv_remote_put(pam_kv_remote *r, const uint8_t key[32], const uint8_t *parent, int32_t layer, const float *k,
                      const float *v);
/* Notes that a block the caller holds locally was used again (the file
 * journal's least-recently-used order; nothing for Redis, whose own LRU
 * sees reads). */
void pam_kv_remote_touch(pam_kv_remote *r, const uint8_t key[32]);
/* Waits until the queue is empty (tests, benchmarks). */
void pam_kv_remote_flush(pam_kv_remote *r);

/* Receives one verified layer of block `block` (rows as in put). A failure
 * stops the fetch. */
typedef pam_status (*pam_kv_remote_sink)(void *ctx, int32_t block, int32_t layer, const float *k, const float *v);
/* Fetches blocks keys[first], keys[first+1], ... up to n_blocks in
 * pipelined batches; each block whose every layer verifies goes to sink
 * (layers in order), stopping at the first block that is missing, rejected
 * or unreachable. Returns the number of blocks delivered. */
int32_t pam_kv_remote_fetch(pam_kv_remote *r, const uint8_t (*keys)[32], int32_t first, int32_t n_blocks,
                            pam_kv_remote_sink sink, void *ctx);

/* The Redis key of a (chain key, layer) and the bytes a value has (tests
 * plant values with them). out must hold PAM_KV_REMOTE_KEY_MAX bytes. */
void pam_kv_remote_key(const pam_kv_remote *r, const uint8_t key[32], int32_t layer, char *out);
uint64_t pam_kv_remote_value_bytes(const pam_kv_remote *r);

void pam_kv_remote_stats_get(pam_kv_remote *r, pam_kv_remote_stats *out);
/* Test hook (file journal): the next write (an append, or compaction's at
 * close) fails with errno err. */
void pam_kv_remote_inject_write_error(pam_kv_remote *r, int err);

#endif
