/* The remote KV tier against a real Redis Cluster (6 nodes of Debian's
 * redis-server started by scripts/redis-cluster.sh on ports of this test's
 * own, stopped at exit): CRC16 slots and hash tags, put/fetch round trips
 * (f16 exact), a fetch stopping at the first missing block, planted bad
 * values (corrupt, truncated, oversized, bad format, foreign model, key
 * echo, wrong HMAC key) rejected and counted and never handed out, MOVED
 * and ASK redirects, AUTH (password file, ACL user from the environment,
 * wrong and missing credentials), a cluster that is down, bad
 * configuration, and a master killed (kill -9) while blocks are written
 * and read: no wrong block is ever delivered and the client follows the
 * failover to the promoted replica. */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "core/fp16.h"
#include "core/timing.h"
#include "kv/kv_remote.h"
#include "kv/redis_cluster.h"
#include "util/test_util.h"

#define BASE 7600      /* the plain cluster: 7600..7605 */
#define BASE_AUTH 7620 /* the cluster with ACL auth: 7620..7625 */
#define DEAD_PORT 7690 /* nothing listens here */

static const pam_kv_shape k_shape = {.n_layer = 3, .n_head_kv = 2, .head_dim = 8, .block_tokens = 4};
#define ROW (2 * 8)
#define BT 4
#define NL 3

static char g_dir[512], g_dir_auth[512], g_hmac[512], g_hmac2[512], g_auth[512], g_badauth[512];
static int g_auth_started;

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...) {
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    return rc == -1 ? -1 : WEXITSTATUS(rc);
}

static void stop_clusters(void) {
    sh("bash %s/scripts/redis-cluster.sh stop '%s' %d >/dev/null 2>&1", PAM_SOURCE_DIR, g_dir, BASE);
    if (g_auth_started)
        sh("REDIS_USER=pamtest REDIS_PASSWORD=pw-0123456789 bash %s/scripts/redis-cluster.sh stop '%s' %d >/dev/null 2>&1",
           PAM_SOURCE_DIR, g_dir_auth, BASE_AUTH);
}

static void on_fatal(int sig) {
    stop_clusters();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int group_setup(void **state) {
    (void)state;
    if (sh("command -v redis-server >/dev/null && command -v redis-cli >/dev/null") != 0) {
        fprintf(stderr, "test_kv_remote: redis-server and redis-cli are needed (bash scripts/setup.sh installs them)\n");
        return -1;
    }
    snprintf(g_dir, sizeof g_dir, "%s", pam_test_tmp("kv-remote-cluster"));
    snprintf(g_dir_auth, sizeof g_dir_auth, "%s", pam_test_tmp("kv-remote-cluster-auth"));
    snprintf(g_hmac, sizeof g_hmac, "%s", pam_test_tmp("kv-remote-hmac"));
    snprintf(g_hmac2, sizeof g_hmac2, "%s", pam_test_tmp("kv-remote-hmac2"));
    snprintf(g_auth, sizeof g_auth, "%s", pam_test_tmp("kv-remote-auth"));
    snprintf(g_badauth, sizeof g_badauth, "%s", pam_test_tmp("kv-remote-badauth"));
    write_file(g_hmac, "0123456789abcdef-shared-secret");
    write_file(g_hmac2, "another-key-of-another-fleet!!");
    write_file(g_auth, "pamtest pw-0123456789\n");
    write_file(g_badauth, "pamtest wrong-password\n");
    atexit(stop_clusters);
    signal(SIGABRT, on_fatal);
    signal(SIGSEGV, on_fatal);
    signal(SIGTERM, on_fatal);
    signal(SIGINT, on_fatal);
    if (sh("bash %s/scripts/redis-cluster.sh start '%s' %d >/dev/null", PAM_SOURCE_DIR, g_dir, BASE) != 0) return -1;
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    stop_clusters();
    return 0;
}

static char g_url[128];
static const char *url(int base) {
    snprintf(g_url, sizeof g_url, "redis://127.0.0.1:%d,127.0.0.1:%d", base + 1, base);
    return g_url;
}

static pam_kv_remote *open_remote(const char *u, uint8_t fp_byte, const char *hmac, const char *auth) {
    pam_kv_remote_config c = {.url = u, .shape = k_shape, .hmac_key_file = hmac, .auth_file = auth, .timeout_ms = 3000};
    memset(c.fingerprint, fp_byte, 32);
    pam_kv_remote *r = NULL;
    assert_int_equal(pam_kv_remote_open(&c, &r), PAM_OK);
    return r;
}

/* Reproducible block data: k/v rows of block b, layer l, in a stream s. */
static void block_data(uint32_t s, int32_t b, int32_t l, float *k, float *v) {
    for (int i = 0; i < BT * ROW; i++) {
        uint32_t x = s * 2654435761u ^ (uint32_t)(b * 7919 + l * 104729 + i * 31);
        x ^= x >> 13;
        x *= 0x5bd1e995u;
        x ^= x >> 15;
        k[i] = ((float)(x & 0xffff) - 32768.0f) / 4096.0f;
        v[i] = ((float)((x >> 16) & 0xffff) - 32768.0f) / 8192.0f;
    }
}

static void tokens(uint32_t s, int32_t n, int32_t *tok) {
    for (int32_t i = 0; i < n; i++) {
        uint32_t x = s * 0x9E3779B1u ^ ((uint32_t)i + 0x7F4A7C15u) * 0x85EBCA6Bu;
        x ^= x >> 16;
        x *= 0xC2B2AE35u;
        x ^= x >> 13;
        tok[i] = (int32_t)(x % 500u);
    }
}

static void put_chain(pam_kv_remote *r, uint32_t s, const uint8_t (*keys)[32], int32_t n_blocks) {
    float k[BT * ROW], v[BT * ROW];
    for (int32_t b = 0; b < n_blocks; b++)
        for (int32_t l = 0; l < NL; l++) {
            block_data(s, b, l, k, v);
            assert_int_equal(pam_kv_remote_put(r, keys[b], b ? keys[b - 1] : NULL, l, k, v), 1);
        }
    pam_kv_remote_flush(r);
}

/* The sink checks every delivered layer against the f16-rounded data it
 * should be, and that blocks and layers come in order. */
typedef struct sink_ctx {
    uint32_t s;
    int32_t next_block, next_layer, n_layers;
    int wrong;
} sink_ctx;

static pam_status sink(void *arg, int32_t block, int32_t layer, const float *k, const float *v) {
    sink_ctx *c = arg;
    float ek[BT * ROW], ev[BT * ROW];
    block_data(c->s, block, layer, ek, ev);
    if (block != c->next_block || layer != c->next_layer) c->wrong++;
    for (int i = 0; i < BT * ROW; i++)
        if (k[i] != pam_f16_to_f32(pam_f32_to_f16(ek[i])) || v[i] != pam_f16_to_f32(pam_f32_to_f16(ev[i]))) {
            c->wrong++;
            break;
        }
    c->n_layers++;
    c->next_layer = layer + 1 == NL ? 0 : layer + 1;
    if (layer + 1 == NL) c->next_block = block + 1;
    return PAM_OK;
}

static int32_t fetch(pam_kv_remote *r, uint32_t s, const uint8_t (*keys)[32], int32_t first, int32_t n, sink_ctx *c) {
    memset(c, 0, sizeof *c);
    c->s = s;
    c->next_block = first;
    int32_t got = pam_kv_remote_fetch(r, keys, first, n, sink, c);
    assert_int_equal(c->wrong, 0);
    assert_int_equal(c->n_layers, got * NL);
    return got;
}

static void chain(pam_kv_remote *r, uint32_t s, int32_t n_blocks, uint8_t (*keys)[32]) {
    int32_t tok[128 * BT];
    assert_true(n_blocks <= 128);
    tokens(s, n_blocks * BT, tok);
    pam_kv_remote_chain(r, NULL, tok, n_blocks, keys);
}

/* A plain client on the test cluster. */
static pam_rc *rc_open(int base) {
    char seeds[64];
    snprintf(seeds, sizeof seeds, "127.0.0.1:%d", base);
    pam_rc_config c = {.seeds = seeds, .timeout_ms = 3000};
    pam_rc *rc = NULL;
    int reach = 0;
    assert_int_equal(pam_rc_open(&c, &rc, &reach), PAM_OK);
    assert_true(reach);
    return rc;
}

/* One command through the cluster client; the reply (caller frees). */
static redisReply *cmd(pam_rc *rc, int argc, const char **argv, const size_t *len) {
    size_t l[8];
    for (int i = 0; i < argc; i++) l[i] = len ? len[i] : strlen(argv[i]);
    pam_rc_cmd c = {.argc = argc, .argv = argv, .argvlen = l};
    assert_int_equal(pam_rc_exec(rc, &c, 1), PAM_OK);
    return c.reply;
}

/* ---- tests ---- */

static void test_slots(void **state) {
    (void)state;
    assert_int_equal(pam_rc_slot("123456789", 9), 12739); /* CRC16/XMODEM check value 0x31C3 */
    const char *a = "{user1000}.following", *b2 = "{user1000}.followers";
    assert_int_equal(pam_rc_slot(a, strlen(a)), pam_rc_slot(b2, strlen(b2)));
    assert_int_equal(pam_rc_slot("user1000", 8), pam_rc_slot(a, strlen(a)));
    /* an empty tag does not count: the whole key is hashed */
    assert_int_equal(pam_rc_slot("foo{}{bar}", 10), 8363);
    assert_int_equal(pam_rc_slot("foo{{bar}}zap", 13), pam_rc_slot("{bar", 4));
    /* one block's layers share a slot; blocks spread */
    pam_kv_remote *r = open_remote(url(BASE), 1, NULL, NULL);
    uint8_t keys[8][32];
    chain(r, 1, 8, keys);
    char k0[PAM_KV_REMOTE_KEY_MAX], k1[PAM_KV_REMOTE_KEY_MAX];
    int distinct = 0;
    uint32_t first = 0;
    for (int bi = 0; bi < 8; bi++) {
        pam_kv_remote_key(r, keys[bi], 0, k0);
        pam_kv_remote_key(r, keys[bi], NL - 1, k1);
        assert_int_equal(pam_rc_slot(k0, strlen(k0)), pam_rc_slot(k1, strlen(k1)));
        if (bi == 0) first = pam_rc_slot(k0, strlen(k0));
        else distinct |= pam_rc_slot(k0, strlen(k0)) != first;
    }
    assert_true(distinct);
    pam_kv_remote_close(r);
}

static void test_round_trip(void **state) {
    (void)state;
    pam_kv_remote *r = open_remote(url(BASE), 2, g_hmac, NULL);
    uint8_t keys[80][32];
    chain(r, 2, 80, keys);
    put_chain(r, 2, keys, 77); /* more than one fetch round trip (64 blocks of 3 layers) */
    sink_ctx c;
    assert_int_equal(fetch(r, 2, (const uint8_t(*)[32])keys, 0, 80, &c), 77);
    assert_int_equal(fetch(r, 2, (const uint8_t(*)[32])keys, 5, 10, &c), 10);
    pam_kv_remote_stats st;
    pam_kv_remote_stats_get(r, &st);
    assert_int_equal(st.hit_blocks, 87);
    assert_int_equal(st.miss_blocks, 1);
    assert_int_equal(st.put_values, 77 * NL);
    assert_int_equal(st.bytes_written, 77 * NL * pam_kv_remote_value_bytes(r));
    assert_int_equal(st.lat_n, 3);
    for (int k = 0; k < PAM_KV_REJECT_N; k++) assert_int_equal(st.rejects[k], 0);
    /* a chain whose tokens differ in one block has other keys from there on */
    int32_t tok[8 * BT];
    tokens(2, 8 * BT, tok);
    tok[3 * BT + 1] ^= 1;
    uint8_t other[8][32];
    pam_kv_remote_chain(r, NULL, tok, 8, other);
    assert_memory_equal(other[2], keys[2], 32);
    assert_memory_not_equal(other[3], keys[3], 32);
    assert_memory_not_equal(other[7], keys[7], 32);
    assert_int_equal(fetch(r, 2, (const uint8_t(*)[32])other, 0, 8, &c), 3);
    /* the incremental chain equals the whole one */
    uint8_t inc[32];
    pam_kv_remote_chain(r, keys[4], tok + 5 * BT, 1, &inc);
    assert_memory_equal(inc, keys[5], 32);
    pam_kv_remote_close(r);
}

/* The next batch's round trip runs while this one is checked: a long chain
 * comes whole and in order, and a chain that ends in the first batch drops
 * the batch under way, counts nothing of it and leaves the tier ready. */
static void test_overlapped_batches(void **state) {
    (void)state;
    pam_kv_remote *r = open_remote(url(BASE), 9, g_hmac, NULL);
    uint8_t keys[128][32];
    chain(r, 9, 128, keys);
    put_chain(r, 9, keys, 128);
    sink_ctx c;
    assert_int_equal(fetch(r, 9, (const uint8_t(*)[32])keys, 0, 128, &c), 128);
    int32_t tok[128 * BT];
    tokens(9, 128 * BT, tok);
    tok[3 * BT] ^= 1;
    uint8_t other[128][32];
    pam_kv_remote_chain(r, NULL, tok, 128, other);
    assert_int_equal(fetch(r, 9, (const uint8_t(*)[32])other, 0, 128, &c), 3);
    pam_kv_remote_stats st;
    pam_kv_remote_stats_get(r, &st);
    assert_int_equal(st.hit_blocks, 131);
    assert_int_equal(st.miss_blocks, 1);
    assert_int_equal(st.lat_n, 3);
    assert_int_equal(fetch(r, 9, (const uint8_t(*)[32])keys, 60, 10, &c), 10);
    pam_kv_remote_close(r);
}

/* Plants a changed copy of the value of (block 0, layer `layer`) under the
 * key of (block 0, layer `to_layer`), then expects block 0 to be rejected
 * for `why` and nothing delivered. */
typedef enum { CORRUPT, TRUNCATE, OVERSIZE, BADMAGIC, FOREIGN, MOVEKEY } tamper;

static void plant(pam_rc *rc, pam_kv_remote *r, const uint8_t key[32], tamper how) {
    char name[PAM_KV_REMOTE_KEY_MAX], to[PAM_KV_REMOTE_KEY_MAX];
    pam_kv_remote_key(r, key, 1, name);
    pam_kv_remote_key(r, key, how == MOVEKEY ? 2 : 1, to);
    const char *get[2] = {"GET", name};
    redisReply *rep = cmd(rc, 2, get, NULL);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    size_t len = rep->len;
    char *val = malloc(len + 16);
    memcpy(val, rep->str, len);
    pam_rc_reply_free(rep);
    switch (how) {
    case CORRUPT: val[144 + 37] ^= 0x10; break;
    case TRUNCATE: len -= 40; break;
    case OVERSIZE: memcpy(val + len, "0123456789", 10), len += 10; break;
    case BADMAGIC: val[3] = 'X'; break;
    case FOREIGN: val[16 + 20] ^= 1; break;
    case MOVEKEY: break;
    }
    const char *set[3] = {"SET", to, val};
    size_t lens[3] = {3, strlen(to), len};
    rep = cmd(rc, 3, set, lens);
    assert_int_equal(rep->type, REDIS_REPLY_STATUS);
    pam_rc_reply_free(rep);
    free(val);
}

static void test_planted_values(void **state) {
    (void)state;
    static const struct {
        tamper how;
        pam_kv_remote_reject why;
    } cases[] = {
        {CORRUPT, PAM_KV_REJECT_CHECKSUM}, {TRUNCATE, PAM_KV_REJECT_TRUNCATED}, {OVERSIZE, PAM_KV_REJECT_OVERSIZED},
        {BADMAGIC, PAM_KV_REJECT_FORMAT},  {FOREIGN, PAM_KV_REJECT_FOREIGN},    {MOVEKEY, PAM_KV_REJECT_KEY},
    };
    pam_rc *rc = rc_open(BASE);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        pam_kv_remote *r = open_remote(url(BASE), 3, g_hmac, NULL);
        uint32_t s = 100 + (uint32_t)i;
        uint8_t keys[4][32];
        chain(r, s, 4, keys);
        put_chain(r, s, keys, 4);
        sink_ctx c;
        assert_int_equal(fetch(r, s, (const uint8_t(*)[32])keys, 0, 4, &c), 4);
        plant(rc, r, keys[2], cases[i].how);
        /* blocks before the bad one are used, the bad one and later ones are not */
        assert_int_equal(fetch(r, s, (const uint8_t(*)[32])keys, 0, 4, &c), 2);
        assert_int_equal(c.n_layers, 2 * NL);
        assert_int_equal(fetch(r, s, (const uint8_t(*)[32])keys, 2, 2, &c), 0);
        pam_kv_remote_stats st;
        pam_kv_remote_stats_get(r, &st);
        for (int k = 0; k < PAM_KV_REJECT_N; k++)
            assert_int_equal(st.rejects[k], k == (int)cases[i].why ? 2u : 0u);
        pam_kv_remote_close(r);
    }
    pam_rc_close(rc);
}

static void test_hmac_and_models(void **state) {
    (void)state;
    pam_kv_remote *mine = open_remote(url(BASE), 4, g_hmac, NULL);
    pam_kv_remote *intruder = open_remote(url(BASE), 4, g_hmac2, NULL); /* same model, another key */
    pam_kv_remote *unsigned_ = open_remote(url(BASE), 4, NULL, NULL);  /* same model, no key */
    pam_kv_remote *other = open_remote(url(BASE), 5, g_hmac, NULL);     /* another model */
    uint8_t keys[3][32], okeys[3][32];
    chain(mine, 7, 3, keys);
    /* the intruder plants values under the keys this fleet reads */
    put_chain(intruder, 7, keys, 3);
    sink_ctx c;
    assert_int_equal(fetch(mine, 7, (const uint8_t(*)[32])keys, 0, 3, &c), 0);
    put_chain(unsigned_, 7, keys, 3);
    assert_int_equal(fetch(mine, 7, (const uint8_t(*)[32])keys, 0, 3, &c), 0);
    pam_kv_remote_stats st;
    pam_kv_remote_stats_get(mine, &st);
    assert_int_equal(st.rejects[PAM_KV_REJECT_HMAC], 2);
    assert_int_equal(st.hit_blocks, 0);
    /* the reader without a key refuses signed values too (it cannot check them) */
    put_chain(mine, 7, keys, 3);
    assert_int_equal(fetch(unsigned_, 7, (const uint8_t(*)[32])keys, 0, 3, &c), 0);
    assert_int_equal(fetch(mine, 7, (const uint8_t(*)[32])keys, 0, 3, &c), 3);
    /* another model's blocks live under other keys: a miss, not a reject */
    chain(other, 8, 3, okeys);
    put_chain(other, 8, okeys, 3);
    assert_int_equal(fetch(other, 8, (const uint8_t(*)[32])okeys, 0, 3, &c), 3);
    pam_kv_remote_stats_get(mine, &st);
    uint64_t miss0 = st.miss_blocks;
    assert_int_equal(fetch(mine, 7, (const uint8_t(*)[32])okeys, 0, 3, &c), 0);
    pam_kv_remote_stats_get(mine, &st);
    assert_int_equal(st.miss_blocks, miss0 + 1);
    pam_kv_remote_close(mine);
    pam_kv_remote_close(intruder);
    pam_kv_remote_close(unsigned_);
    pam_kv_remote_close(other);
}

/* The node id of the master on port (CLUSTER MYID). */
static void node_id(int port, char *out) {
    char c[128];
    snprintf(c, sizeof c, "redis-cli -p %d cluster myid", port);
    FILE *p = popen(c, "r");
    assert_non_null(p);
    assert_non_null(fgets(out, 64, p));
    out[strcspn(out, "\r\n")] = 0;
    pclose(p);
}

/* The port of the live master serving key's slot (the others answer MOVED). */
static int slot_port(int base, const char *key) {
    for (int p = base; p < base + 6; p++)
        if (sh("redis-cli -p %d role 2>/dev/null | head -1 | grep -q master && "
               "! redis-cli -p %d exists '%s' 2>&1 | grep -q MOVED",
               p, p, key) == 0)
            return p;
    return -1;
}

/* A slot migrating from one master to another, as redis-cli reshard does
 * it: while it migrates, a key the source does not hold is asked of the
 * target (ASK); once it has moved, the source answers MOVED and the client's
 * map follows. */
static void test_redirects(void **state) {
    (void)state;
    pam_rc *rc = rc_open(BASE);
    const char *key = NULL;
    char buf[32];
    uint32_t slot = 0;
    int from = -1;
    for (int i = 0; i < 1000 && !key; i++) {
        snprintf(buf, sizeof buf, "moved-%d", i);
        slot = pam_rc_slot(buf, strlen(buf));
        if (sh("[ \"$(redis-cli -c -p %d cluster countkeysinslot %u)\" = 0 ]", BASE, slot) == 0) key = buf;
    }
    assert_non_null(key);
    from = slot_port(BASE, key);
    assert_true(from > 0);
    int to = -1;
    for (int p = BASE; p < BASE + 6 && to < 0; p++)
        if (p != from && sh("redis-cli -p %d role | head -1 | grep -q master", p) == 0) to = p;
    assert_true(to > 0);
    char from_id[64], to_id[64];
    node_id(from, from_id);
    node_id(to, to_id);

    assert_int_equal(sh("[ \"$(redis-cli -p %d cluster setslot %u importing %s)\" = OK ]", to, slot, from_id), 0);
    assert_int_equal(sh("[ \"$(redis-cli -p %d cluster setslot %u migrating %s)\" = OK ]", from, slot, to_id), 0);
    const char *get[2] = {"GET", key};
    redisReply *rep = cmd(rc, 2, get, NULL);
    assert_int_equal(rep->type, REDIS_REPLY_NIL);
    pam_rc_reply_free(rep);
    pam_rc_stats st;
    pam_rc_stats_get(rc, &st);
    assert_true(st.ask >= 1);
    assert_int_equal(st.moved, 0);

    /* the target first (it bumps its config epoch), then the source and the rest */
    assert_int_equal(sh("[ \"$(redis-cli -p %d cluster setslot %u node %s)\" = OK ]", to, slot, to_id), 0);
    assert_int_equal(sh("[ \"$(redis-cli -p %d cluster setslot %u node %s)\" = OK ]", from, slot, to_id), 0);
    const char *set[3] = {"SET", key, "v1"};
    rep = cmd(rc, 3, set, NULL);
    assert_int_equal(rep->type, REDIS_REPLY_STATUS);
    pam_rc_reply_free(rep);
    pam_rc_stats_get(rc, &st);
    assert_true(st.moved >= 1);
    assert_int_equal(sh("[ \"$(redis-cli -p %d get %s)\" = v1 ]", to, key), 0);
    /* the map followed: no further redirect */
    uint64_t moved = st.moved;
    rep = cmd(rc, 2, get, NULL);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    pam_rc_reply_free(rep);
    pam_rc_stats_get(rc, &st);
    assert_int_equal(st.moved, moved);
    pam_rc_close(rc);
}

static void test_cluster_down(void **state) {
    (void)state;
    char u[64];
    snprintf(u, sizeof u, "redis://127.0.0.1:%d", DEAD_PORT);
    int64_t t0 = pam_time_ns();
    pam_kv_remote *r = open_remote(u, 6, NULL, NULL);
    uint8_t keys[4][32];
    chain(r, 9, 4, keys);
    float k[BT * ROW], v[BT * ROW];
    block_data(9, 0, 0, k, v);
    assert_int_equal(pam_kv_remote_put(r, keys[0], NULL, 0, k, v), 1);
    pam_kv_remote_flush(r);
    sink_ctx c;
    for (int i = 0; i < 20; i++) assert_int_equal(fetch(r, 9, (const uint8_t(*)[32])keys, 0, 4, &c), 0);
    pam_kv_remote_stats st;
    pam_kv_remote_stats_get(r, &st);
    assert_int_equal(st.io_errors, 20);
    assert_int_equal(st.put_errors, 1);
    pam_kv_remote_close(r);
    /* refused connections fail fast: no timeout per call */
    assert_true(pam_time_ns() - t0 < 20ll * 1000000000ll);
}

static void test_bad_config(void **state) {
    (void)state;
    pam_kv_remote_config c = {.url = "redis:/127.0.0.1:1", .shape = k_shape};
    pam_kv_remote *r = NULL;
    assert_int_equal(pam_kv_remote_open(&c, &r), PAM_ERR_INVALID);
    assert_non_null(strstr(pam_last_error(), "redis://"));
    c.url = "redis://127.0.0.1";
    assert_int_equal(pam_kv_remote_open(&c, &r), PAM_ERR_INVALID);
    c.url = "redis://127.0.0.1:99999";
    assert_int_equal(pam_kv_remote_open(&c, &r), PAM_ERR_INVALID);
    c.url = "redis://127.0.0.1:7600";
    c.hmac_key_file = "/nonexistent/key";
    assert_int_equal(pam_kv_remote_open(&c, &r), PAM_ERR_INVALID);
    assert_non_null(strstr(pam_last_error(), "HMAC key"));
    const char *short_key = pam_test_tmp("kv-remote-shortkey");
    write_file(short_key, "tooshort");
    c.hmac_key_file = short_key;
    assert_int_equal(pam_kv_remote_open(&c, &r), PAM_ERR_INVALID);
    assert_non_null(strstr(pam_last_error(), "at least 16"));
    c.hmac_key_file = NULL;
    const char *empty = pam_test_tmp("kv-remote-emptyauth");
    write_file(empty, "\n");
    c.auth_file = empty;
    assert_int_equal(pam_kv_remote_open(&c, &r), PAM_ERR_INVALID);
    assert_null(r);
}

static void test_auth(void **state) {
    (void)state;
    g_auth_started = 1;
    assert_int_equal(sh("REDIS_USER=pamtest REDIS_PASSWORD=pw-0123456789 bash %s/scripts/redis-cluster.sh start '%s' %d >/dev/null",
                        PAM_SOURCE_DIR, g_dir_auth, BASE_AUTH),
                     0);
    uint8_t keys[2][32];
    sink_ctx c;
    /* the auth file */
    pam_kv_remote *r = open_remote(url(BASE_AUTH), 8, g_hmac, g_auth);
    chain(r, 11, 2, keys);
    put_chain(r, 11, keys, 2);
    assert_int_equal(fetch(r, 11, (const uint8_t(*)[32])keys, 0, 2, &c), 2);
    pam_kv_remote_close(r);
    /* the environment */
    setenv("PAM_REDIS_USER", "pamtest", 1);
    setenv("PAM_REDIS_PASSWORD", "pw-0123456789", 1);
    r = open_remote(url(BASE_AUTH), 8, g_hmac, NULL);
    assert_int_equal(fetch(r, 11, (const uint8_t(*)[32])keys, 0, 2, &c), 2);
    pam_kv_remote_close(r);
    unsetenv("PAM_REDIS_USER");
    unsetenv("PAM_REDIS_PASSWORD");
    /* wrong or no credentials: nothing is read or written, nothing fails */
    const char *wrong[2] = {g_badauth, NULL};
    for (int i = 0; i < 2; i++) {
        r = open_remote(url(BASE_AUTH), 8, g_hmac, wrong[i]);
        assert_int_equal(fetch(r, 11, (const uint8_t(*)[32])keys, 0, 2, &c), 0);
        pam_kv_remote_stats st;
        pam_kv_remote_stats_get(r, &st);
        assert_int_equal(st.hit_blocks, 0);
        assert_true(st.io_errors >= 1);
        pam_kv_remote_close(r);
    }
    sh("REDIS_USER=pamtest REDIS_PASSWORD=pw-0123456789 bash %s/scripts/redis-cluster.sh stop '%s' %d >/dev/null",
       PAM_SOURCE_DIR, g_dir_auth, BASE_AUTH);
    g_auth_started = 0;
}

/* A master dies (kill -9) while chains are written and read: every fetch
 * delivers only right blocks (the sink checks), and once a replica is
 * promoted the client writes and reads the dead master's slots again. */
static void test_failover(void **state) {
    (void)state;
    pam_kv_remote *r = open_remote(url(BASE), 10, g_hmac, NULL);
    enum { NCH = 24, NB = 6 };
    uint8_t keys[NCH][NB][32];
    for (uint32_t s = 0; s < NCH; s++) chain(r, 1000 + s, NB, keys[s]);
    for (uint32_t s = 0; s < NCH; s++) put_chain(r, 1000 + s, keys[s], NB);
    sink_ctx c;
    for (uint32_t s = 0; s < NCH; s++) assert_int_equal(fetch(r, 1000 + s, (const uint8_t(*)[32])keys[s], 0, NB, &c), NB);
    /* the master of the first chain's first block dies */
    char name[PAM_KV_REMOTE_KEY_MAX];
    pam_kv_remote_key(r, keys[0][0], 0, name);
    int victim = slot_port(BASE, name);
    assert_true(victim > 0);
    assert_int_equal(sh("kill -9 $(cat '%s/%d/redis.pid')", g_dir, victim), 0);
    /* keep using the cluster until it has recovered: the dead master's data
     * is read from the promoted replica and a new chain (spread over every
     * master) is written and read back whole (the node timeout is 2 s) */
    int64_t t0 = pam_time_ns();
    int recovered = 0;
    uint32_t round = 0;
    while (!recovered && pam_time_ns() - t0 < 30ll * 1000000000ll) {
        for (uint32_t s = 0; s < NCH; s++) fetch(r, 1000 + s, (const uint8_t(*)[32])keys[s], 0, NB, &c);
        uint8_t nk[NB][32];
        uint32_t ns = 5000 + round++;
        chain(r, ns, NB, nk);
        put_chain(r, ns, nk, NB);
        recovered = fetch(r, 1000, (const uint8_t(*)[32])keys[0], 0, NB, &c) == NB &&
                    fetch(r, ns, (const uint8_t(*)[32])nk, 0, NB, &c) == NB;
        if (!recovered) usleep(100000);
    }
    assert_true(recovered);
    assert_true(round > 1); /* the failover was seen, not missed */
    pam_kv_remote_stats st;
    pam_kv_remote_stats_get(r, &st);
    for (int k = 0; k < PAM_KV_REJECT_N; k++) assert_int_equal(st.rejects[k], 0);
    pam_kv_remote_close(r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slots),           cmocka_unit_test(test_round_trip), cmocka_unit_test(test_planted_values),
        cmocka_unit_test(test_overlapped_batches),
        cmocka_unit_test(test_hmac_and_models), cmocka_unit_test(test_redirects),  cmocka_unit_test(test_cluster_down),
        cmocka_unit_test(test_bad_config),      cmocka_unit_test(test_auth),       cmocka_unit_test(test_failover),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
