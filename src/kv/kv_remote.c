/* Remote KV tier on Redis Cluster (see kv_remote.h): the value format, the
 * writer thread, the cluster backend; the journal backend is kv_journal.c. */
#include "kv/kv_remote.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fp16.h"
#include "core/status.h"
#include "core/timing.h"
#include "kernels/checksum.h"
#include "kernels/cpu.h"
#include "kv/kv_remote_int.h"
#include "kv/redis_cluster.h"

/* mu held: notes whether the cluster answered, warning once when it stops
 * and once when it comes back (no flood of messages during an outage). */
static void note_reachable(pam_kv_remote *r, int ok) {
    if (ok && r->down)
        fprintf(stderr, "pam: remote KV: %s answers again\n", r->url);
    else if (!ok && !r->down)
        fprintf(stderr, "pam: warning: remote KV: %s does not answer; computing instead of fetching until it does\n",
                r->url);
    r->down = !ok;
}

const char *pam_kv_remote_reject_name(pam_kv_remote_reject r) {
    static const char *n[PAM_KV_REJECT_N] = {"truncated", "oversized", "format", "foreign", "key", "checksum", "hmac"};
    return r >= 0 && r < PAM_KV_REJECT_N ? n[r] : "?";
}


void pam_kvr_hex(const uint8_t *p, int n, char *out) {
    static const char d[] = "0123456789abcdef";
    for (int i = 0; i < n; i++) {
        out[2 * i] = d[p[i] >> 4];
        out[2 * i + 1] = d[p[i] & 15];
    }
    out[2 * n] = 0;
}

void pam_kv_remote_key(const pam_kv_remote *r, const uint8_t key[32], int32_t layer, char *out) {
    char f[17], c[33];
    pam_kvr_hex(r->fp, 8, f);
    pam_kvr_hex(key, 16, c);
    snprintf(out, PAM_KV_REMOTE_KEY_MAX, "pam:{%s.%s}:%d", f, c, (int)layer);
}

uint64_t pam_kv_remote_value_bytes(const pam_kv_remote *r) { return r->value_bytes; }

void pam_kv_remote_chain(const pam_kv_remote *r, const uint8_t *prev0, const int32_t *tok, int32_t n_blocks,
                         uint8_t (*keys)[32]) {
    uint8_t prev[32] = {0};
    if (prev0) memcpy(prev, prev0, 32);
    size_t bt = (size_t)r->shape.block_tokens;
    uint8_t *buf = malloc(32 + bt * 4);
    for (int32_t b = 0; b < n_blocks && buf; b++) {
        memcpy(buf, prev, 32);
        for (size_t i = 0; i < bt; i++) put_u32(buf + 32 + 4 * i, (uint32_t)tok[(size_t)b * bt + i]);
        SHA256(buf, 32 + bt * 4, keys[b]);
        memcpy(prev, keys[b], 32);
    }
    free(buf);
}

/* f16 <-> f32 of a payload. Every f16 is exact in f32 and the values the
 * tier encodes came from f16 tiers, so the F16C instructions (used when the
 * CPU has them: decoding dominates a fetch's CPU time) and the portable
 * conversion give the same bits. */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
__attribute__((target("avx,f16c"))) static void from_f16_f16c(const uint8_t *src, float *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * i))));
    for (; i < n; i++) {
        pam_f16 h;
        memcpy(&h, src + 2 * i, 2);
        dst[i] = pam_f16_to_f32(h);
    }
}
__attribute__((target("avx,f16c"))) static void to_f16_f16c(const float *src, uint8_t *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + 2 * i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) {
        pam_f16 h = pam_f32_to_f16(src[i]);
        memcpy(dst + 2 * i, &h, 2);
    }
}
static int have_f16c(void) {
    static int cached = -1;
    /* the AVX2 level includes F16C (clang's __builtin_cpu_supports has no "f16c") */
    if (cached < 0) cached = pam_cpu_detect() >= PAM_ISA_AVX2;
    return cached;
}
#else
static int have_f16c(void) { return 0; }
static void from_f16_f16c(const uint8_t *src, float *dst, size_t n) { (void)src, (void)dst, (void)n; }
static void to_f16_f16c(const float *src, uint8_t *dst, size_t n) { (void)src, (void)dst, (void)n; }
#endif

static void from_f16(const uint8_t *src, float *dst, size_t n) {
    if (have_f16c()) {
        from_f16_f16c(src, dst, n);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        pam_f16 h;
        memcpy(&h, src + 2 * i, 2);
        dst[i] = pam_f16_to_f32(h);
    }
}

static void to_f16(const float *src, uint8_t *dst, size_t n) {
    if (have_f16c()) {
        to_f16_f16c(src, dst, n);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        pam_f16 h = pam_f32_to_f16(src[i]);
        memcpy(dst + 2 * i, &h, 2);
    }
}

/* Fills the header (except the checksum) and the f16 payload. */
static void encode(const pam_kv_remote *r, const uint8_t key[32], const uint8_t *parent, int32_t layer, const float *k,
                   const float *v, uint8_t *val) {
    memcpy(val, MAGIC, 8);
    put_u32(val + 8, VERSION);
    put_u32(val + 12, r->hkey_len ? FLAG_HMAC : 0);
    memcpy(val + 16, r->fp, 32);
    memcpy(val + 48, key, 32);
    put_u32(val + 80, (uint32_t)layer);
    put_u32(val + 84, (uint32_t)r->shape.block_tokens);
    put_u32(val + 88, (uint32_t)r->shape.n_head_kv);
    put_u32(val + 92, (uint32_t)r->shape.head_dim);
    put_u64(val + 96, r->payload);
    if (parent)
        memcpy(val + 112, parent, 32);
    else
        memset(val + 112, 0, 32);
    size_t n = r->payload / 4;
    uint8_t *pk = val + HDR_BYTES, *pv = pk + r->payload / 2;
    to_f16(k, pk, n);
    to_f16(v, pv, n);
}

/* HMAC-SHA256 of n bytes at p with the context's key into out (32 bytes). */
static int mac_of(EVP_MAC_CTX *c, const uint8_t *p, size_t n, uint8_t *out) {
    size_t len = 0;
    return EVP_MAC_init(c, NULL, 0, NULL) == 1 && EVP_MAC_update(c, p, n) == 1 &&
           EVP_MAC_final(c, out, &len, MAC_BYTES) == 1 && len == MAC_BYTES;
}

/* Checksum and HMAC (the writer thread's share of the work). */
void pam_kvr_seal(const pam_kv_remote *r, uint8_t *val) {
    put_u64(val + 104, pam_checksum64(val + HDR_BYTES, r->payload, 0));
    if (r->hkey_len && !mac_of(r->mac_seal, val, HDR_BYTES + r->payload, val + HDR_BYTES + r->payload))
        memset(val + HDR_BYTES + r->payload, 0, MAC_BYTES); /* fails verification: never used */
}

/* -1 when the value is usable, else the reject reason. */
int pam_kvr_verify(const pam_kv_remote *r, const uint8_t key[32], int32_t layer, const uint8_t *val, size_t len) {
    if (len > r->value_bytes) return PAM_KV_REJECT_OVERSIZED;
    if (len < HDR_BYTES) return PAM_KV_REJECT_TRUNCATED;
    if (memcmp(val, MAGIC, 8) || get_u32(val + 8) != VERSION || get_u32(val + 84) != (uint32_t)r->shape.block_tokens ||
        get_u32(val + 88) != (uint32_t)r->shape.n_head_kv || get_u32(val + 92) != (uint32_t)r->shape.head_dim ||
        get_u64(val + 96) != r->payload)
        return PAM_KV_REJECT_FORMAT;
    if (memcmp(val + 16, r->fp, 32)) return PAM_KV_REJECT_FOREIGN;
    if (memcmp(val + 48, key, 32) || get_u32(val + 80) != (uint32_t)layer) return PAM_KV_REJECT_KEY;
    uint32_t flags = get_u32(val + 12);
    if ((flags & FLAG_HMAC) != (r->hkey_len ? FLAG_HMAC : 0u)) return PAM_KV_REJECT_HMAC;
    if (len < r->value_bytes) return PAM_KV_REJECT_TRUNCATED;
    /* the checksum first: damage is told apart from a value signed with
     * another key (the HMAC covers the checksum too) */
    if (get_u64(val + 104) != pam_checksum64(val + HDR_BYTES, r->payload, 0)) return PAM_KV_REJECT_CHECKSUM;
    if (r->hkey_len) {
        uint8_t mac[MAC_BYTES];
        if (!mac_of(r->mac_verify, val, HDR_BYTES + r->payload, mac) ||
            CRYPTO_memcmp(mac, val + HDR_BYTES + r->payload, MAC_BYTES))
            return PAM_KV_REJECT_HMAC;
    }
    return -1;
}

void pam_kvr_decode(const pam_kv_remote *r, const uint8_t *val, float *k, float *v) {
    size_t n = r->payload / 4;
    const uint8_t *pk = val + HDR_BYTES, *pv = pk + r->payload / 2;
    from_f16(pk, k, n);
    from_f16(pv, v, n);
}

void pam_kvr_lat_observe(pam_kv_remote *r, double s) {
    int i = 0;
    while (i < PAM_KV_REMOTE_LAT_BUCKETS && s > r->st.lat_le[i]) i++;
    r->st.lat_count[i]++;
    r->st.lat_sum += s;
    r->st.lat_n++;
}

/* ---- writer thread ---- */

static void *writer_main(void *arg) {
    pam_kv_remote *r = arg;
    put_item batch[PUT_BATCH];
    pam_rc_cmd cmds[PUT_BATCH];
    const char *argv[PUT_BATCH][3];
    size_t argl[PUT_BATCH][3];
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->stop && r->q_len == 0) pthread_cond_wait(&r->cv, &r->mu);
        if (r->q_len == 0) break;
        int n = 0;
        while (n < PUT_BATCH && r->q_len > 0) {
            batch[n++] = r->q[r->q_head];
            r->q_head = (r->q_head + 1) % r->q_cap;
            r->q_len--;
        }
        r->in_flight = n;
        pthread_mutex_unlock(&r->mu);
        if (r->is_file) {
            pam_kvr_journal_write(r, batch, n);
            pthread_mutex_lock(&r->mu);
            r->in_flight = 0;
            if (r->q_len == 0) pthread_cond_broadcast(&r->idle_cv);
            continue;
        }
        for (int i = 0; i < n; i++) {
            pam_kvr_seal(r, batch[i].val);
            argv[i][0] = "SET";
            argv[i][1] = batch[i].key;
            argv[i][2] = (const char *)batch[i].val;
            argl[i][0] = 3;
            argl[i][1] = strlen(batch[i].key);
            argl[i][2] = r->value_bytes;
            cmds[i] = (pam_rc_cmd){.argc = 3, .argv = argv[i], .argvlen = argl[i]};
        }
        pam_rc_exec(r->wr, cmds, n);
        uint64_t ok = 0, bad = 0;
        for (int i = 0; i < n; i++) {
            redisReply *rep = cmds[i].reply;
            if (cmds[i].st == PAM_OK && rep && rep->type == REDIS_REPLY_STATUS)
                ok++;
            else
                bad++;
            pam_rc_reply_free(rep);
            free(batch[i].val);
        }
        pthread_mutex_lock(&r->mu);
        r->st.put_values += ok;
        r->st.put_errors += bad;
        note_reachable(r, bad == 0);
        r->st.bytes_written += ok * r->value_bytes;
        r->in_flight = 0;
        if (r->q_len == 0) pthread_cond_broadcast(&r->idle_cv);
    }
    pthread_cond_broadcast(&r->idle_cv);
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

int pam_kv_remote_put(pam_kv_remote *r, const uint8_t key[32], const uint8_t *parent, int32_t layer, const float *k,
                      const float *v) {
    pthread_mutex_lock(&r->mu);
    int full = r->q_len == r->q_cap || r->stop;
    if (full) r->st.put_dropped++;
    pthread_mutex_unlock(&r->mu);
    if (full) return 0;
    uint8_t *val = malloc(r->value_bytes);
    if (!val) return 0;
    put_item it;
    pam_kv_remote_key(r, key, layer, it.key);
    encode(r, key, parent, layer, k, v, val);
    it.val = val;
    pthread_mutex_lock(&r->mu);
    if (r->q_len == r->q_cap) {
        r->st.put_dropped++;
        pthread_mutex_unlock(&r->mu);
        free(val);
        return 0;
    }
    r->q[(r->q_head + r->q_len) % r->q_cap] = it;
    r->q_len++;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return 1;
}

void pam_kv_remote_touch(pam_kv_remote *r, const uint8_t key[32]) {
    if (r->is_file) pam_kvr_journal_touch(r, key);
}

void pam_kv_remote_flush(pam_kv_remote *r) {
    pthread_mutex_lock(&r->mu);
    while (r->q_len > 0 || r->in_flight > 0) pthread_cond_wait(&r->idle_cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
}

/* ---- receiver thread ---- */

static void *rx_main(void *arg) {
    pam_kv_remote *r = arg;
    pthread_mutex_lock(&r->rx_mu);
    for (;;) {
        while (r->rx_state != 1 && !r->rx_stop) pthread_cond_wait(&r->rx_cv, &r->rx_mu);
        if (r->rx_state != 1) break;
        pam_rc_cmd *cmds = r->rx_cmds;
        int n = r->rx_n;
        pthread_mutex_unlock(&r->rx_mu);
        int64_t t0 = pam_time_ns();
        pam_rc_exec(r->rd, cmds, n);
        double dt = (double)(pam_time_ns() - t0) * 1e-9;
        pthread_mutex_lock(&r->rx_mu);
        r->rx_dt = dt;
        r->rx_state = 2;
        pthread_cond_broadcast(&r->rx_cv);
    }
    pthread_mutex_unlock(&r->rx_mu);
    return NULL;
}

static void rx_start(pam_kv_remote *r, pam_rc_cmd *cmds, int n) {
    pthread_mutex_lock(&r->rx_mu);
    r->rx_cmds = cmds;
    r->rx_n = n;
    r->rx_state = 1;
    pthread_cond_broadcast(&r->rx_cv);
    pthread_mutex_unlock(&r->rx_mu);
}

/* The round trip's seconds, once its replies are in. */
static double rx_wait(pam_kv_remote *r) {
    pthread_mutex_lock(&r->rx_mu);
    while (r->rx_state != 2) pthread_cond_wait(&r->rx_cv, &r->rx_mu);
    r->rx_state = 0;
    double dt = r->rx_dt;
    pthread_mutex_unlock(&r->rx_mu);
    return dt;
}

/* ---- fetch ---- */

/* One pipelined batch: an MGET of every layer of each of nb blocks. */
typedef struct fetch_buf {
    char (*names)[PAM_KV_REMOTE_KEY_MAX];
    const char **argv;
    size_t *argl;
    pam_rc_cmd cmds[FETCH_BATCH];
} fetch_buf;

static void fetch_prep(pam_kv_remote *r, fetch_buf *f, const uint8_t (*keys)[32], int32_t b0, int nb) {
    int32_t L = r->shape.n_layer;
    for (int i = 0; i < nb; i++) {
        const char **a = f->argv + (size_t)i * (size_t)(L + 1);
        size_t *al = f->argl + (size_t)i * (size_t)(L + 1);
        a[0] = "MGET";
        al[0] = 4;
        for (int32_t l = 0; l < L; l++) {
            char *nm = f->names[(size_t)i * (size_t)L + (size_t)l];
            pam_kv_remote_key(r, keys[b0 + i], l, nm);
            a[1 + l] = nm;
            al[1 + l] = strlen(nm);
        }
        f->cmds[i] = (pam_rc_cmd){.argc = L + 1, .argv = a, .argvlen = al};
    }
}

int32_t pam_kv_remote_fetch(pam_kv_remote *r, const uint8_t (*keys)[32], int32_t first, int32_t n_blocks,
                            pam_kv_remote_sink sink, void *ctx) {
    int32_t L = r->shape.n_layer, done = 0, end = first + n_blocks;
    pthread_mutex_lock(&r->mu);
    r->st.lookups++;
    pthread_mutex_unlock(&r->mu);
    if (r->is_file) return pam_kvr_journal_fetch(r, keys, first, n_blocks, sink, ctx);
    if (n_blocks <= 0) return 0;
    int batch = FETCH_VALUES / L < 16 ? 16 : FETCH_VALUES / L > FETCH_BATCH ? FETCH_BATCH : FETCH_VALUES / L;
    fetch_buf fb[2];
    int stop = 0;
    for (int i = 0; i < 2; i++) {
        fb[i].names = malloc((size_t)FETCH_BATCH * (size_t)L * sizeof *fb[i].names);
        fb[i].argv = malloc((size_t)FETCH_BATCH * (size_t)(L + 1) * sizeof *fb[i].argv);
        fb[i].argl = malloc((size_t)FETCH_BATCH * (size_t)(L + 1) * sizeof *fb[i].argl);
        if (!fb[i].names || !fb[i].argv || !fb[i].argl) stop = 1;
    }
    /* The next batch's round trip is under way while this one is checked
     * and decoded: the cluster and the network work while the CPU does.
     * (When this batch ends the fetch, the next one's replies are dropped.) */
    int cur = 0;
    int32_t b0 = first;
    int nb = end - b0 < batch ? (int)(end - b0) : batch;
    if (!stop) {
        fetch_prep(r, &fb[cur], keys, b0, nb);
        rx_start(r, fb[cur].cmds, nb);
    }
    while (!stop) {
        double dt = rx_wait(r);
        int32_t nb0 = b0 + nb;
        int nn = end - nb0 < batch ? (int)(end - nb0) : batch;
        if (nn > 0) {
            fetch_prep(r, &fb[1 - cur], keys, nb0, nn);
            rx_start(r, fb[1 - cur].cmds, nn);
        }
        pam_rc_cmd *cmds = fb[cur].cmds;
        uint64_t bytes = 0, rej[PAM_KV_REJECT_N] = {0}, io = 0, miss = 0, hit = 0;
        for (int i = 0; i < nb; i++) {
            redisReply *rep = cmds[i].reply;
            if (stop) {
                pam_rc_reply_free(rep);
                continue;
            }
            if (cmds[i].st != PAM_OK || !rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != (size_t)L) {
                io++;
                stop = 1;
                pam_rc_reply_free(rep);
                continue;
            }
            for (int32_t l = 0; l < L && !stop; l++) {
                redisReply *e = rep->element[l];
                if (e->type != REDIS_REPLY_STRING) {
                    miss++;
                    stop = 1;
                    break;
                }
                bytes += e->len;
                int why = pam_kvr_verify(r, keys[b0 + i], l, (const uint8_t *)e->str, e->len);
                if (why >= 0) {
                    rej[why]++;
                    stop = 1;
                }
            }
            for (int32_t l = 0; l < L && !stop; l++) {
                pam_kvr_decode(r, (const uint8_t *)rep->element[l]->str, r->fk, r->fv);
                if (sink(ctx, b0 + i, l, r->fk, r->fv) != PAM_OK) stop = 1;
            }
            if (!stop) {
                hit++;
                done++;
            }
            pam_rc_reply_free(rep);
        }
        pthread_mutex_lock(&r->mu);
        pam_kvr_lat_observe(r, dt);
        r->st.bytes_read += bytes;
        r->st.hit_blocks += hit;
        r->st.miss_blocks += miss;
        r->st.io_errors += io;
        note_reachable(r, io == 0);
        for (int k = 0; k < PAM_KV_REJECT_N; k++) r->st.rejects[k] += rej[k];
        pthread_mutex_unlock(&r->mu);
        if (nn <= 0) break;
        if (stop) { /* the batch under way is not wanted */
            rx_wait(r);
            for (int i = 0; i < nn; i++) pam_rc_reply_free(fb[1 - cur].cmds[i].reply);
            break;
        }
        cur = 1 - cur;
        b0 = nb0;
        nb = nn;
    }
    for (int i = 0; i < 2; i++) {
        free(fb[i].names);
        free(fb[i].argv);
        free(fb[i].argl);
    }
    return done;
}

void pam_kv_remote_stats_get(pam_kv_remote *r, pam_kv_remote_stats *out) {
    pthread_mutex_lock(&r->mu);
    *out = r->st;
    pthread_mutex_unlock(&r->mu);
}

/* ---- open / close ---- */

static pam_status read_file(const char *path, uint8_t *buf, size_t cap, size_t *len, const char *what) {
    FILE *f = fopen(path, "rb");
    if (!f) return PAM_ERR(PAM_ERR_INVALID, "remote KV: cannot read the %s file '%s': %s", what, path, strerror(errno));
    *len = fread(buf, 1, cap, f);
    int more = fgetc(f) != EOF;
    fclose(f);
    if (more) return PAM_ERR(PAM_ERR_INVALID, "remote KV: the %s file '%s' is longer than %zu bytes", what, path, cap);
    return PAM_OK;
}

/* user and password from auth_file ("USER PASSWORD" or "PASSWORD") or the
 * environment; both NULL when neither is set. */
static pam_status load_auth(const char *auth_file, char **user, char **pass) {
    *user = *pass = NULL;
    if (!auth_file) {
        const char *u = getenv("PAM_REDIS_USER"), *p = getenv("PAM_REDIS_PASSWORD");
        if (p && *p) {
            *pass = strdup(p);
            if (u && *u) *user = strdup(u);
        }
        return PAM_OK;
    }
    uint8_t buf[1024];
    size_t len = 0;
    pam_status st = read_file(auth_file, buf, sizeof buf - 1, &len, "auth");
    if (st != PAM_OK) return st;
    buf[len] = 0;
    char *line = (char *)buf;
    line[strcspn(line, "\r\n")] = 0;
    char *sp = strchr(line, ' ');
    if (sp) {
        *sp = 0;
        *user = strdup(line);
        *pass = strdup(sp + 1);
    } else if (*line) {
        *pass = strdup(line);
    }
    OPENSSL_cleanse(buf, sizeof buf);
    if (!*pass || !**pass) {
        free(*user);
        free(*pass);
        *user = *pass = NULL;
        return PAM_ERR(PAM_ERR_INVALID, "remote KV: the auth file '%s' has no password", auth_file);
    }
    return PAM_OK;
}

static void free_mac(pam_kv_remote *r) {
    EVP_MAC_CTX_free(r->mac_seal);
    EVP_MAC_CTX_free(r->mac_verify);
    EVP_MAC_free(r->mac);
}

static void free_secret(char *s) {
    if (s) OPENSSL_cleanse(s, strlen(s));
    free(s);
}

pam_status pam_kv_remote_open(const pam_kv_remote_config *cfg, pam_kv_remote **out) {
    *out = NULL;
    const char *url = cfg->url;
    int is_file = url && !strncmp(url, "file:", 5) && url[5];
    if (!is_file && (!url || strncmp(url, "redis://", 8) || !url[8]))
        return PAM_ERR(PAM_ERR_INVALID, "remote KV: want redis://HOST:PORT[,HOST:PORT...], got '%s'", url ? url : "");
    if (cfg->shape.n_layer < 1 || cfg->shape.n_head_kv < 1 || cfg->shape.head_dim < 1 || cfg->shape.block_tokens < 1)
        return PAM_ERR(PAM_ERR_INVALID, "remote KV: bad KV shape");
    pam_kv_remote *r = calloc(1, sizeof *r);
    if (!r) return PAM_ERR(PAM_ERR_NOMEM, "remote KV");
    r->is_file = is_file;
    r->fd = -1;
    r->max_bytes = cfg->max_bytes ? cfg->max_bytes : UINT64_MAX;
    r->shape = cfg->shape;
    memcpy(r->fp, cfg->fingerprint, 32);
    r->row = (size_t)cfg->shape.n_head_kv * (size_t)cfg->shape.head_dim;
    r->payload = 2 * 2 * (size_t)cfg->shape.block_tokens * r->row;
    pam_status st = PAM_OK;
    if (cfg->hmac_key_file) {
        size_t len = 0;
        st = read_file(cfg->hmac_key_file, r->hkey, sizeof r->hkey, &len, "HMAC key");
        if (st == PAM_OK && len < 16)
            st = PAM_ERR(PAM_ERR_INVALID, "remote KV: the HMAC key file '%s' holds %zu bytes; at least 16 wanted",
                         cfg->hmac_key_file, len);
        r->hkey_len = (int)len;
    }
    r->value_bytes = HDR_BYTES + r->payload + (r->hkey_len ? MAC_BYTES : 0);
    if (st == PAM_OK && r->hkey_len) {
        char digest[] = "SHA256";
        OSSL_PARAM prm[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0), OSSL_PARAM_construct_end()};
        r->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
        r->mac_seal = r->mac ? EVP_MAC_CTX_new(r->mac) : NULL;
        r->mac_verify = r->mac ? EVP_MAC_CTX_new(r->mac) : NULL;
        if (!r->mac_seal || !r->mac_verify || EVP_MAC_init(r->mac_seal, r->hkey, (size_t)r->hkey_len, prm) != 1 ||
            EVP_MAC_init(r->mac_verify, r->hkey, (size_t)r->hkey_len, prm) != 1)
            st = PAM_ERR(PAM_ERR_INVALID, "remote KV: OpenSSL offers no HMAC-SHA256");
    }
    int reach_rd = 1, reach_wr = 1;
    if (!is_file) {
        char *user = NULL, *pass = NULL;
        if (st == PAM_OK) st = load_auth(cfg->auth_file, &user, &pass);
        pam_rc_config rcc = {.seeds = url + 8, .user = user, .password = pass, .timeout_ms = cfg->timeout_ms};
        if (st == PAM_OK) st = pam_rc_open(&rcc, &r->rd, &reach_rd);
        if (st == PAM_OK) st = pam_rc_open(&rcc, &r->wr, &reach_wr);
        free_secret(user);
        free_secret(pass);
    }
    r->q_cap = cfg->queue_values > 0 ? cfg->queue_values : 8192;
    r->q = calloc((size_t)r->q_cap, sizeof *r->q);
    r->fk = malloc((size_t)cfg->shape.block_tokens * r->row * sizeof(float));
    r->fv = malloc((size_t)cfg->shape.block_tokens * r->row * sizeof(float));
    if (st == PAM_OK && (!r->q || !r->fk || !r->fv)) st = PAM_ERR(PAM_ERR_NOMEM, "remote KV");
    static const double le[PAM_KV_REMOTE_LAT_BUCKETS] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                                         0.01,   0.025,   0.05,   0.1,   0.25,   1};
    memcpy(r->st.lat_le, le, sizeof le);
    if (st == PAM_OK && is_file) st = pam_kvr_journal_open(r, url + 5);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    pthread_cond_init(&r->idle_cv, NULL);
    pthread_mutex_init(&r->rx_mu, NULL);
    pthread_cond_init(&r->rx_cv, NULL);
    if (st == PAM_OK && pthread_create(&r->thread, NULL, writer_main, r) != 0)
        st = PAM_ERR(PAM_ERR_NOMEM, "remote KV: cannot start the writer thread");
    if (st == PAM_OK && !is_file) {
        if (pthread_create(&r->rx_thread, NULL, rx_main, r) != 0) {
            st = PAM_ERR(PAM_ERR_NOMEM, "remote KV: cannot start the receiver thread");
            pthread_mutex_lock(&r->mu);
            r->stop = 1;
            pthread_cond_broadcast(&r->cv);
            pthread_mutex_unlock(&r->mu);
            pthread_join(r->thread, NULL);
        } else {
            r->rx_started = 1;
        }
    }
    if (st != PAM_OK) {
        pam_rc_close(r->rd);
        pam_rc_close(r->wr);
        pam_kvr_journal_close(r);
        pthread_mutex_destroy(&r->mu);
        pthread_cond_destroy(&r->cv);
        pthread_cond_destroy(&r->idle_cv);
        pthread_mutex_destroy(&r->rx_mu);
        pthread_cond_destroy(&r->rx_cv);
        free_mac(r);
        OPENSSL_cleanse(r->hkey, sizeof r->hkey);
        free(r->q);
        free(r->fk);
        free(r->fv);
        free(r);
        return st;
    }
    snprintf(r->url, sizeof r->url, "%s", url);
    r->down = !reach_rd;
    if (!reach_rd)
        fprintf(stderr, "pam: warning: remote KV: no node of %s answers; serving without it until it does\n", url);
    *out = r;
    return PAM_OK;
}

void pam_kv_remote_close(pam_kv_remote *r) {
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    if (r->rx_started) {
        pthread_mutex_lock(&r->rx_mu);
        r->rx_stop = 1;
        pthread_cond_broadcast(&r->rx_cv);
        pthread_mutex_unlock(&r->rx_mu);
        pthread_join(r->rx_thread, NULL);
    }
    pam_rc_close(r->rd);
    pam_rc_close(r->wr);
    pam_kvr_journal_close(r);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    pthread_cond_destroy(&r->idle_cv);
    pthread_mutex_destroy(&r->rx_mu);
    pthread_cond_destroy(&r->rx_cv);
    free_mac(r);
    OPENSSL_cleanse(r->hkey, sizeof r->hkey);
    free(r->q);
    free(r->fk);
    free(r->fv);
    free(r);
}
