/* The persistent KV journal (--kv-persist, a "file:DIR" pam_kv_remote):
 * blocks written, closed and found again after a reopen (f16 exact); a
 * torn tail (a write cut short by a crash) ignored and cut off, every whole
 * record before it recovered; a corrupt record skipped and counted, never
 * delivered; another model's journal and a signed journal kept apart;
 * ENOSPC and EIO on append (injected) and a real file size limit (EFBIG
 * mid-record): the journal stays whole, a clear warning, appends stop,
 * what was written before is recovered; the size cap; no
 * duplicate records; bad directories. Compaction at close: unusable
 * records and broken chains dropped, the least recently used chains
 * dropped past 3/4 of the cap (parents kept before children, the order of
 * use carried across restarts), a leftover temporary file removed at open,
 * and ENOSPC, EIO and a real file size limit during the rewrite leaving the
 * old journal byte for byte. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/fp16.h"
#include "kv/kv_remote.h"
#include "util/test_util.h"

static const pam_kv_shape k_shape = {.n_layer = 3, .n_head_kv = 2, .head_dim = 8, .block_tokens = 4};
#define ROW (2 * 8)
#define BT 4
#define NL 3

static char g_dir[512], g_key[512];

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void fresh_dir(const char *name) {
    snprintf(g_dir, sizeof g_dir, "%s", pam_test_tmp(name));
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    assert_int_equal(system(cmd), 0);
}

static pam_kv_remote *open_j(uint8_t fp, const char *key, uint64_t max_bytes) {
    char url[600];
    snprintf(url, sizeof url, "file:%s", g_dir);
    pam_kv_remote_config c = {.url = url, .shape = k_shape, .hmac_key_file = key, .max_bytes = max_bytes};
    memset(c.fingerprint, fp, 32);
    pam_kv_remote *r = NULL;
    assert_int_equal(pam_kv_remote_open(&c, &r), PAM_OK);
    return r;
}

/* The journal file of fingerprint byte fp. */
static const char *journal(uint8_t fp, int signed_) {
    static char path[700];
    char hx[17];
    for (int i = 0; i < 8; i++) snprintf(hx + 2 * i, 3, "%02x", fp);
    snprintf(path, sizeof path, "%s/pam-kv-%s-%s.log", g_dir, hx, signed_ ? "signed" : "plain");
    return path;
}

static long file_size(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 ? (long)sb.st_size : -1;
}

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

static void chain(pam_kv_remote *r, uint32_t s, int32_t n, uint8_t (*keys)[32]) {
    int32_t tok[64 * BT];
    for (int32_t i = 0; i < n * BT; i++) tok[i] = (int32_t)((s * 131u + (uint32_t)i * 7u) % 1000u);
    pam_kv_remote_chain(r, NULL, tok, n, keys);
}

static void put_chain(pam_kv_remote *r, uint32_t s, const uint8_t (*keys)[32], int32_t n) {
    float k[BT * ROW], v[BT * ROW];
    for (int32_t b = 0; b < n; b++)
        for (int32_t l = 0; l < NL; l++) {
            block_data(s, b, l, k, v);
            assert_int_equal(pam_kv_remote_put(r, keys[b], b ? keys[b - 1] : NULL, l, k, v), 1);
        }
    pam_kv_remote_flush(r);
}

typedef struct sink_ctx {
    uint32_t s;
    int layers, wrong;
} sink_ctx;

static pam_status sink(void *arg, int32_t block, int32_t layer, const float *k, const float *v) {
    sink_ctx *c = arg;
    float ek[BT * ROW], ev[BT * ROW];
    block_data(c->s, block, layer, ek, ev);
    for (int i = 0; i < BT * ROW; i++)
        if (k[i] != pam_f16_to_f32(pam_f32_to_f16(ek[i])) || v[i] != pam_f16_to_f32(pam_f32_to_f16(ev[i]))) {
            c->wrong++;
            break;
        }
    c->layers++;
    return PAM_OK;
}

static int32_t fetch(pam_kv_remote *r, uint32_t s, const uint8_t (*keys)[32], int32_t n) {
    sink_ctx c = {.s = s};
    int32_t got = pam_kv_remote_fetch(r, keys, 0, n, sink, &c);
    assert_int_equal(c.wrong, 0);
    assert_int_equal(c.layers, got * NL);
    return got;
}

static void test_reopen(void **state) {
    (void)state;
    fresh_dir("kv-persist-reopen");
    pam_kv_remote *r = open_j(1, NULL, 0);
    uint8_t keys[10][32];
    chain(r, 1, 10, keys);
    put_chain(r, 1, (const uint8_t(*)[32])keys, 8);
    assert_int_equal(fetch(r, 1, (const uint8_t(*)[32])keys, 10), 8);
    put_chain(r, 1, (const uint8_t(*)[32])keys, 8); /* already there: no second record */
    pam_kv_remote_stats st;
    pam_kv_remote_stats_get(r, &st);
    assert_int_equal(st.put_values, 8 * NL);
    long vb = (long)pam_kv_remote_value_bytes(r);
    pam_kv_remote_close(r);
    assert_int_equal(file_size(journal(1, 0)), 8 * NL * vb);

    r = open_j(1, NULL, 0);
    assert_int_equal(fetch(r, 1, (const uint8_t(*)[32])keys, 10), 8);
    pam_kv_remote_stats_get(r, &st);
    assert_int_equal(st.hit_blocks, 8);
    assert_int_equal(st.miss_blocks, 1);
    /* appends continue after the recovered records */
    put_chain(r, 1, (const uint8_t(*)[32])keys, 10);
    pam_kv_remote_close(r);
    r = open_j(1, NULL, 0);
    assert_int_equal(fetch(r, 1, (const uint8_t(*)[32])keys, 10), 10);
    pam_kv_remote_close(r);
}

static void test_torn_tail_and_corrupt_record(void **state) {
    (void)state;
    fresh_dir("kv-persist-torn");
    pam_kv_remote *r = open_j(2, NULL, 0);
    uint8_t keys[6][32];
    chain(r, 2, 6, keys);
    put_chain(r, 2, (const uint8_t(*)[32])keys, 6);
    long vb = (long)pam_kv_remote_value_bytes(r);
    pam_kv_remote_close(r);
    const char *path = journal(2, 0);
    /* a crash in the middle of the last record's write */
    assert_int_equal(truncate(path, 6 * NL * vb - 100), 0);
    r = open_j(2, NULL, 0);
    assert_int_equal(file_size(path), (6 * NL - 1) * vb);
    assert_int_equal(fetch(r, 2, (const uint8_t(*)[32])keys, 6), 5); /* block 5 lost its last layer */
    pam_kv_remote_close(r);

    /* a flipped payload byte in block 2, layer 1 (record 7): that block is
     * never delivered, the records around it are */
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    uint8_t byte;
    off_t off = 7 * vb + 144 + 40;
    assert_int_equal(pread(fd, &byte, 1, off), 1);
    byte ^= 0x20;
    assert_int_equal(pwrite(fd, &byte, 1, off), 1);
    close(fd);
    r = open_j(2, NULL, 0);
    pam_kv_remote_stats st;
    pam_kv_remote_stats_get(r, &st);
    assert_int_equal(st.rejects[PAM_KV_REJECT_CHECKSUM], 1);
    assert_int_equal(fetch(r, 2, (const uint8_t(*)[32])keys, 6), 2);
    /* the block is written again, and found after the next restart */
    put_chain(r, 2, (const uint8_t(*)[32])keys, 6);
    assert_int_equal(fetch(r, 2, (const uint8_t(*)[32])keys, 6), 6);
    pam_kv_remote_close(r);
    r = open_j(2, NULL, 0);
    assert_int_equal(fetch(r, 2, (const uint8_t(*)[32])keys, 6), 6);
    pam_kv_remote_close(r);
}

static void test_models_and_keys(void **state) {
    (void)state;
    fresh_dir("kv-persist-models");
    pam_kv_remote *r = open_j(3, NULL, 0);
    uint8_t keys[3][32];
    chain(r, 3, 3, keys);
    put_chain(r, 3, (const uint8_t(*)[32])keys, 3);
    pam_kv_remote_close(r);
    /* another model: its own journal, none of these blocks */
    r = open_j(4, NULL, 0);
    assert_int_equal(fetch(r, 3, (const uint8_t(*)[32])keys, 3), 0);
    pam_kv_remote_close(r);
    assert_true(file_size(journal(3, 0)) > 0);
    assert_int_equal(file_size(journal(4, 0)), 0);
    /* a journal renamed to pose as another model's: every record is foreign */
    char from[700];
    snprintf(from, sizeof from, "%s", journal(3, 0));
    assert_int_equal(rename(from, journal(4, 0)), 0);
    r = open_j(4, NULL, 0);
    pam_kv_remote_stats st;
    pam_kv_remote_stats_get(r, &st);
    assert_int_equal(st.rejects[PAM_KV_REJECT_FOREIGN], 3 * NL);
    assert_int_equal(fetch(r, 3, (const uint8_t(*)[32])keys, 3), 0);
    pam_kv_remote_close(r);
    /* signed journals are apart from plain ones */
    snprintf(g_key, sizeof g_key, "%s", pam_test_tmp("kv-persist-key"));
    write_file(g_key, "0123456789abcdef0123");
    r = open_j(5, g_key, 0);
    put_chain(r, 3, (const uint8_t(*)[32])keys, 3);
    pam_kv_remote_close(r);
    r = open_j(5, NULL, 0);
    assert_int_equal(fetch(r, 3, (const uint8_t(*)[32])keys, 3), 0);
    pam_kv_remote_close(r);
    r = open_j(5, g_key, 0);
    assert_int_equal(fetch(r, 3, (const uint8_t(*)[32])keys, 3), 3);
    pam_kv_remote_close(r);
    assert_true(file_size(journal(5, 1)) > 0);
    /* another key: every record rejected, none used, and none compacted
     * away (the right key makes them usable again) */
    long signed_size = file_size(journal(5, 1));
    write_file(g_key, "another-key-0123456789");
    r = open_j(5, g_key, 0);
    pam_kv_remote_stats st2;
    pam_kv_remote_stats_get(r, &st2);
    assert_int_equal(st2.rejects[PAM_KV_REJECT_HMAC], 3 * NL);
    assert_int_equal(fetch(r, 3, (const uint8_t(*)[32])keys, 3), 0);
    pam_kv_remote_close(r);
    assert_int_equal(file_size(journal(5, 1)), signed_size);
    write_file(g_key, "0123456789abcdef0123");
    r = open_j(5, g_key, 0);
    assert_int_equal(fetch(r, 3, (const uint8_t(*)[32])keys, 3), 3);
    pam_kv_remote_close(r);
}

static void test_write_errors(void **state) {
    (void)state;
    static const int errs[] = {ENOSPC, EIO};
    for (int e = 0; e < 2; e++) {
        fresh_dir(e ? "kv-persist-eio" : "kv-persist-enospc");
        pam_kv_remote *r = open_j(6, NULL, 0);
        uint8_t keys[4][32];
        chain(r, 6, 4, keys);
        put_chain(r, 6, (const uint8_t(*)[32])keys, 2);
        pam_kv_remote_inject_write_error(r, errs[e]);
        put_chain(r, 6, (const uint8_t(*)[32])keys, 4);
        pam_kv_remote_stats st;
        pam_kv_remote_stats_get(r, &st);
        assert_int_equal(st.put_values, 2 * NL);
        assert_int_equal(st.put_errors, 1);
        assert_int_equal(st.put_dropped, 2 * NL - 1); /* journaling stopped */
        /* reads go on */
        assert_int_equal(fetch(r, 6, (const uint8_t(*)[32])keys, 4), 2);
        long vb = (long)pam_kv_remote_value_bytes(r);
        pam_kv_remote_close(r);
        assert_int_equal(file_size(journal(6, 0)), 2 * NL * vb);
        r = open_j(6, NULL, 0);
        assert_int_equal(fetch(r, 6, (const uint8_t(*)[32])keys, 4), 2);
        pam_kv_remote_close(r);
    }
}

/* A real limit: the file size limit (RLIMIT_FSIZE, SIGXFSZ ignored, so the
 * append fails with EFBIG part way through a record) in a child process;
 * the journal keeps only whole records and the parent recovers them. */
static void test_real_file_limit(void **state) {
    (void)state;
    fresh_dir("kv-persist-fsize");
    pam_kv_remote *r = open_j(8, NULL, 0);
    uint8_t keys[4][32];
    chain(r, 8, 4, keys);
    long vb = (long)pam_kv_remote_value_bytes(r);
    pam_kv_remote_close(r);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {.rlim_cur = (rlim_t)(2 * NL * vb + vb / 2), .rlim_max = RLIM_INFINITY};
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0) _exit(3);
        pam_kv_remote *c = open_j(8, NULL, 0);
        float k[BT * ROW], v[BT * ROW];
        for (int32_t b = 0; b < 4; b++)
            for (int32_t l = 0; l < NL; l++) {
                block_data(8, b, l, k, v);
                pam_kv_remote_put(c, keys[b], b ? keys[b - 1] : NULL, l, k, v);
            }
        pam_kv_remote_flush(c);
        pam_kv_remote_stats st;
        pam_kv_remote_stats_get(c, &st);
        pam_kv_remote_close(c);
        _exit(st.put_values == 2 * NL && st.put_errors == 1 ? 0 : 4);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(file_size(journal(8, 0)), 2 * NL * vb);
    r = open_j(8, NULL, 0);
    assert_int_equal(fetch(r, 8, (const uint8_t(*)[32])keys, 4), 2);
    pam_kv_remote_close(r);
}

static void test_cap_and_bad_dirs(void **state) {
    (void)state;
    fresh_dir("kv-persist-cap");
    pam_kv_remote *r = open_j(7, NULL, 0);
    uint64_t vb = pam_kv_remote_value_bytes(r);
    pam_kv_remote_close(r);
    r = open_j(7, NULL, 2 * NL * vb + 10);
    uint8_t keys[4][32];
    chain(r, 7, 4, keys);
    put_chain(r, 7, (const uint8_t(*)[32])keys, 4);
    pam_kv_remote_stats st;
    pam_kv_remote_stats_get(r, &st);
    assert_int_equal(st.put_values, 2 * NL);
    assert_int_equal(st.put_dropped, 2 * NL);
    assert_int_equal(fetch(r, 7, (const uint8_t(*)[32])keys, 4), 2);
    pam_kv_remote_close(r);
    /* a directory that cannot be made */
    const char *f = pam_test_tmp("kv-persist-notadir");
    write_file(f, "x");
    char url[600];
    snprintf(url, sizeof url, "file:%s/sub", f);
    pam_kv_remote_config c = {.url = url, .shape = k_shape};
    pam_kv_remote *bad = NULL;
    assert_int_equal(pam_kv_remote_open(&c, &bad), PAM_ERR_IO);
    assert_non_null(strstr(pam_last_error(), "cannot create"));
    assert_null(bad);
}

static uint8_t *read_all(const char *path, long *len) {
    *len = file_size(path);
    assert_true(*len >= 0);
    uint8_t *buf = malloc((size_t)*len + 1);
    assert_non_null(buf);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fread(buf, 1, (size_t)*len, f), (size_t)*len);
    fclose(f);
    return buf;
}

/* Flips one payload byte of record rec. */
static void corrupt_record(const char *path, long vb, long rec) {
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    uint8_t byte;
    off_t off = rec * vb + 144 + 40;
    assert_int_equal(pread(fd, &byte, 1, off), 1);
    byte ^= 0x20;
    assert_int_equal(pwrite(fd, &byte, 1, off), 1);
    close(fd);
}

static const char *tmp_of(const char *path) {
    static char t[720];
    snprintf(t, sizeof t, "%s.tmp", path);
    return t;
}

/* A rejected record makes its block unusable and its descendants
 * unreachable: the close after the recovery drops all of them. */
static void test_compact_unusable(void **state) {
    (void)state;
    fresh_dir("kv-persist-compact");
    pam_kv_remote *r = open_j(9, NULL, 0);
    uint8_t keys[6][32];
    chain(r, 9, 6, keys);
    put_chain(r, 9, (const uint8_t(*)[32])keys, 6);
    long vb = (long)pam_kv_remote_value_bytes(r);
    pam_kv_remote_close(r); /* nothing to drop: left as it is */
    const char *path = journal(9, 0);
    assert_int_equal(file_size(path), 6 * NL * vb);
    corrupt_record(path, vb, 2 * NL + 1);
    r = open_j(9, NULL, 0);
    pam_kv_remote_stats st;
    pam_kv_remote_stats_get(r, &st);
    assert_int_equal(st.rejects[PAM_KV_REJECT_CHECKSUM], 1);
    pam_kv_remote_close(r);
    assert_int_equal(file_size(path), 2 * NL * vb);
    assert_int_equal(file_size(tmp_of(path)), -1);
    r = open_j(9, NULL, 0);
    pam_kv_remote_stats_get(r, &st);
    assert_int_equal(st.rejects[PAM_KV_REJECT_CHECKSUM], 0);
    assert_int_equal(fetch(r, 9, (const uint8_t(*)[32])keys, 6), 2);
    pam_kv_remote_close(r);
}

/* Past 3/4 of the cap the least recently used chains go, a parent never
 * before its children, and the order of use survives a restart. */
static void test_compact_lru(void **state) {
    (void)state;
    fresh_dir("kv-persist-lru");
    pam_kv_remote *r = open_j(10, NULL, 0);
    uint64_t vb = pam_kv_remote_value_bytes(r);
    pam_kv_remote_close(r);
    uint64_t cap = 10 * NL * vb; /* 10 blocks; compaction keeps 7 */
    r = open_j(10, NULL, cap);
    uint8_t a[4][32], b[6][32], c[3][32];
    chain(r, 10, 4, a);
    chain(r, 11, 6, b);
    chain(r, 12, 3, c);
    put_chain(r, 10, (const uint8_t(*)[32])a, 4);
    put_chain(r, 11, (const uint8_t(*)[32])b, 6);
    /* A's first two blocks used again: the newest; then B's (B5, appended
     * last, is the newest block of B but goes before its parents) */
    assert_int_equal(fetch(r, 10, (const uint8_t(*)[32])a, 2), 2);
    pam_kv_remote_close(r);
    const char *path = journal(10, 0);
    assert_int_equal(file_size(path), 7 * NL * (long)vb);
    r = open_j(10, NULL, cap);
    /* under 3/4 of the cap and nothing unusable: a close leaves it */
    pam_kv_remote_close(r);
    assert_int_equal(file_size(path), 7 * NL * (long)vb);
    r = open_j(10, NULL, cap);
    put_chain(r, 12, (const uint8_t(*)[32])c, 3); /* the journal is full again */
    pam_kv_remote_stats st;
    pam_kv_remote_stats_get(r, &st);
    assert_int_equal(st.put_values, 3 * NL);
    pam_kv_remote_close(r);
    /* C (newest), then A0 A1, then B0 B1 of the order the last compaction
     * wrote */
    assert_int_equal(file_size(path), 7 * NL * (long)vb);
    r = open_j(10, NULL, cap);
    assert_int_equal(fetch(r, 12, (const uint8_t(*)[32])c, 3), 3);
    assert_int_equal(fetch(r, 10, (const uint8_t(*)[32])a, 4), 2);
    assert_int_equal(fetch(r, 11, (const uint8_t(*)[32])b, 6), 2);
    pam_kv_remote_close(r);
}

/* A crash during compaction leaves its temporary file: the next open
 * removes it and uses the journal. */
static void test_compact_leftover(void **state) {
    (void)state;
    fresh_dir("kv-persist-leftover");
    pam_kv_remote *r = open_j(11, NULL, 0);
    uint8_t keys[3][32];
    chain(r, 13, 3, keys);
    put_chain(r, 13, (const uint8_t(*)[32])keys, 3);
    pam_kv_remote_close(r);
    const char *path = journal(11, 0);
    write_file(tmp_of(path), "half of a compacted journal");
    r = open_j(11, NULL, 0);
    assert_int_equal(file_size(tmp_of(path)), -1);
    assert_int_equal(fetch(r, 13, (const uint8_t(*)[32])keys, 3), 3);
    pam_kv_remote_close(r);
}

/* ENOSPC and EIO while compaction writes: the old journal stays byte for
 * byte, no temporary file is left, and the next clean close compacts. */
static void test_compact_write_errors(void **state) {
    (void)state;
    static const int errs[] = {ENOSPC, EIO};
    for (int e = 0; e < 2; e++) {
        fresh_dir(e ? "kv-persist-compact-eio" : "kv-persist-compact-enospc");
        pam_kv_remote *r = open_j(12, NULL, 0);
        uint8_t keys[4][32];
        chain(r, 14, 4, keys);
        put_chain(r, 14, (const uint8_t(*)[32])keys, 4);
        long vb = (long)pam_kv_remote_value_bytes(r);
        pam_kv_remote_close(r);
        const char *path = journal(12, 0);
        corrupt_record(path, vb, 3 * NL);
        long len0, len1;
        uint8_t *before = read_all(path, &len0);
        r = open_j(12, NULL, 0);
        assert_int_equal(fetch(r, 14, (const uint8_t(*)[32])keys, 4), 3);
        pam_kv_remote_inject_write_error(r, errs[e]);
        pam_kv_remote_close(r);
        uint8_t *after = read_all(path, &len1);
        assert_int_equal(len1, len0);
        assert_memory_equal(after, before, (size_t)len0);
        assert_int_equal(file_size(tmp_of(path)), -1);
        free(before);
        free(after);
        r = open_j(12, NULL, 0);
        assert_int_equal(fetch(r, 14, (const uint8_t(*)[32])keys, 4), 3);
        pam_kv_remote_close(r);
        assert_int_equal(file_size(path), 3 * NL * vb);
    }
}

/* A real limit during compaction (RLIMIT_FSIZE below what it keeps, in a
 * child): the rewrite fails part way, the journal is untouched. */
static void test_compact_real_limit(void **state) {
    (void)state;
    fresh_dir("kv-persist-compact-fsize");
    pam_kv_remote *r = open_j(13, NULL, 0);
    uint8_t keys[5][32];
    chain(r, 15, 5, keys);
    put_chain(r, 15, (const uint8_t(*)[32])keys, 5);
    long vb = (long)pam_kv_remote_value_bytes(r);
    pam_kv_remote_close(r);
    const char *path = journal(13, 0);
    corrupt_record(path, vb, 4 * NL + 2);
    long len0, len1;
    uint8_t *before = read_all(path, &len0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {.rlim_cur = (rlim_t)(NL * vb + vb / 2), .rlim_max = RLIM_INFINITY};
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0) _exit(3);
        pam_kv_remote *c = open_j(13, NULL, 0);
        pam_kv_remote_close(c);
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    uint8_t *after = read_all(path, &len1);
    assert_int_equal(len1, len0);
    assert_memory_equal(after, before, (size_t)len0);
    assert_int_equal(file_size(tmp_of(path)), -1);
    free(before);
    free(after);
    r = open_j(13, NULL, 0);
    assert_int_equal(fetch(r, 15, (const uint8_t(*)[32])keys, 5), 4);
    pam_kv_remote_close(r);
    assert_int_equal(file_size(path), 4 * NL * vb);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reopen),      cmocka_unit_test(test_torn_tail_and_corrupt_record),
        cmocka_unit_test(test_models_and_keys), cmocka_unit_test(test_write_errors),
        cmocka_unit_test(test_real_file_limit), cmocka_unit_test(test_cap_and_bad_dirs),
        cmocka_unit_test(test_compact_unusable), cmocka_unit_test(test_compact_lru),
        cmocka_unit_test(test_compact_leftover), cmocka_unit_test(test_compact_write_errors),
        cmocka_unit_test(test_compact_real_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
