/* The persistent journal backend of the remote tier (--kv-persist; see
 * kv_remote.h): values appended to one file per model fingerprint, an
 * in-memory index rebuilt from the file at open. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/status.h"
#include "core/timing.h"
#include "kv/kv_remote_int.h"

static size_t idx_slot(const pam_kv_remote *r, const uint8_t key[32], int32_t layer) {
    uint64_t h;
    memcpy(&h, key, 8); /* the chain key is a SHA-256: its bytes are uniform */
    h ^= (uint64_t)(uint32_t)layer * 0x9E3779B97F4A7C15ull;
    return (size_t)(h % r->idx_cap);
}

/* mu held. The entry of (key, layer), or NULL. */
static idx_ent *idx_find(pam_kv_remote *r, const uint8_t key[32], int32_t layer) {
    if (!r->idx_cap) return NULL;
    for (size_t i = idx_slot(r, key, layer);; i = (i + 1) % r->idx_cap) {
        idx_ent *e = &r->idx[i];
        if (!e->used) return NULL;
        if (e->layer == layer && !memcmp(e->key, key, 32)) return e;
    }
}

/* mu held. 0 when out of memory (the record is then simply not indexed). */
static int idx_put(pam_kv_remote *r, const uint8_t key[32], int32_t layer, uint64_t off) {
    if (2 * (r->idx_n + 1) > r->idx_cap) {
        size_t cap = r->idx_cap ? 2 * r->idx_cap : 1024;
        idx_ent *old = r->idx, *n = calloc(cap, sizeof *n);
        if (!n) return 0;
        size_t old_cap = r->idx_cap;
        r->idx = n;
        r->idx_cap = cap;
        for (size_t i = 0; i < old_cap; i++)
            if (old[i].used) {
                size_t j = idx_slot(r, old[i].key, old[i].layer);
                while (n[j].used) j = (j + 1) % cap;
                n[j] = old[i];
            }
        free(old);
    }
    idx_ent *e = idx_find(r, key, layer);
    if (!e) {
        size_t j = idx_slot(r, key, layer);
        while (r->idx[j].used) j = (j + 1) % r->idx_cap;
        e = &r->idx[j];
        memcpy(e->key, key, 32);
        e->layer = layer;
        e->used = 1;
        r->idx_n++;
    }
    e->off = off;
    return 1;
}

/* Rebuilds the index from the journal: every whole record that verifies is
 * indexed, a record that does not is counted and skipped, and a torn tail
 * (a partial record from a write cut short) is cut off. */
static pam_status file_recover(pam_kv_remote *r, const char *path) {
    uint8_t *val = malloc(r->value_bytes);
    if (!val) return PAM_ERR(PAM_ERR_NOMEM, "persisted KV");
    uint64_t off = 0, good = 0, bad = 0;
    for (;; off += r->value_bytes) {
        ssize_t got = pread(r->fd, val, r->value_bytes, (off_t)off);
        if (got != (ssize_t)r->value_bytes) break;
        int32_t layer = (int32_t)get_u32(val + 80);
        int why = layer >= 0 && layer < r->shape.n_layer ? pam_kvr_verify(r, val + 48, layer, val, r->value_bytes)
                                                         : PAM_KV_REJECT_FORMAT;
        if (why < 0 && idx_put(r, val + 48, layer, off)) {
            good++;
        } else if (why >= 0) {
            r->st.rejects[why]++;
            bad++;
        }
    }
    free(val);
    struct stat sb;
    if (fstat(r->fd, &sb) == 0 && (uint64_t)sb.st_size > off) {
        fprintf(stderr, "pam: persisted KV: %s: ignored a torn tail of %llu bytes\n", path,
                (unsigned long long)((uint64_t)sb.st_size - off));
        if (ftruncate(r->fd, (off_t)off) != 0)
            return PAM_ERR(PAM_ERR_IO, "persisted KV: cannot cut the torn tail of %s: %s", path, strerror(errno));
    }
    r->end = off;
    if (good || bad)
        fprintf(stderr, "pam: persisted KV: %s: recovered %llu block layers, skipped %llu unusable records\n", path,
                (unsigned long long)good, (unsigned long long)bad);
    return PAM_OK;
}

/* Other models' journals in dir are left alone, and said so. */
static void file_note_foreign(const char *dir, const char *mine) {
    DIR *d = opendir(dir);
    if (!d) return;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (!strncmp(e->d_name, "pam-kv-", 7) && strcmp(e->d_name, mine)) n++;
    closedir(d);
    if (n)
        fprintf(stderr, "pam: persisted KV: %s holds %d journal(s) of another model or key setting; not used\n", dir, n);
}

/* Writer thread: appends the values not journaled yet. A failed append
 * (ENOSPC, EIO) is undone, reported once, and ends journaling for this run:
 * what is on disk stays whole and serving goes on. */
void pam_kvr_journal_write(pam_kv_remote *r, put_item *batch, int n) {
    uint64_t ok = 0, bad = 0, dropped = 0;
    for (int i = 0; i < n; i++) {
        uint8_t *val = batch[i].val;
        const uint8_t *key = val + 48;
        int32_t layer = (int32_t)get_u32(val + 80);
        pthread_mutex_lock(&r->mu);
        int skip = idx_find(r, key, layer) != NULL, failed = r->write_failed, inj = 0;
        int full = r->end + r->value_bytes > r->max_bytes;
        if (!skip && !failed && !full) inj = r->inject_errno, r->inject_errno = 0;
        pthread_mutex_unlock(&r->mu);
        if (skip) continue; /* already journaled */
        if (failed || full) {
            dropped++;
            continue;
        }
        pam_kvr_seal(r, val);
        ssize_t w = inj ? -1 : pwrite(r->fd, val, r->value_bytes, (off_t)r->end);
        int err = inj ? inj : errno;
        if (w != (ssize_t)r->value_bytes) {
            if (ftruncate(r->fd, (off_t)r->end) != 0) { /* the recovery cuts it then */
            }
            fprintf(stderr, "pam: warning: persisted KV: cannot append to the journal (%s); serving goes on without persistence\n",
                    w < 0 ? strerror(err) : "short write");
            pthread_mutex_lock(&r->mu);
            r->write_failed = 1;
            pthread_mutex_unlock(&r->mu);
            bad++;
            continue;
        }
        pthread_mutex_lock(&r->mu);
        idx_put(r, key, layer, r->end);
        r->end += r->value_bytes;
        pthread_mutex_unlock(&r->mu);
        ok++;
    }
    for (int i = 0; i < n; i++) free(batch[i].val);
    pthread_mutex_lock(&r->mu);
    r->st.put_values += ok;
    r->st.put_errors += bad;
    r->st.put_dropped += dropped;
    r->st.bytes_written += ok * r->value_bytes;
    pthread_mutex_unlock(&r->mu);
}

int32_t pam_kvr_journal_fetch(pam_kv_remote *r, const uint8_t (*keys)[32], int32_t first, int32_t n_blocks,
                              pam_kv_remote_sink sink, void *ctx) {
    int32_t L = r->shape.n_layer, done = 0;
    uint64_t bytes = 0, miss = 0, io = 0, hit = 0, rej[PAM_KV_REJECT_N] = {0};
    int64_t t0 = pam_time_ns();
    for (int32_t b = first; b < first + n_blocks; b++) {
        int stop = 0;
        for (int32_t l = 0; l < L && !stop; l++) {
            pthread_mutex_lock(&r->mu);
            idx_ent *e = idx_find(r, keys[b], l);
            uint64_t off = e ? e->off : 0;
            pthread_mutex_unlock(&r->mu);
            uint8_t *val = r->fbuf + (size_t)l * r->value_bytes;
            if (!e) {
                miss++;
                stop = 1;
            } else if (pread(r->fd, val, r->value_bytes, (off_t)off) != (ssize_t)r->value_bytes) {
                io++;
                stop = 1;
            } else {
                bytes += r->value_bytes;
                int why = pam_kvr_verify(r, keys[b], l, val, r->value_bytes);
                if (why >= 0) rej[why]++, stop = 1;
            }
        }
        for (int32_t l = 0; l < L && !stop; l++) {
            pam_kvr_decode(r, r->fbuf + (size_t)l * r->value_bytes, r->fk, r->fv);
            if (sink(ctx, b, l, r->fk, r->fv) != PAM_OK) stop = 1;
        }
        if (stop) break;
        hit++;
        done++;
    }
    pthread_mutex_lock(&r->mu);
    pam_kvr_lat_observe(r, (double)(pam_time_ns() - t0) * 1e-9);
    r->st.bytes_read += bytes;
    r->st.hit_blocks += hit;
    r->st.miss_blocks += miss;
    r->st.io_errors += io;
    for (int k = 0; k < PAM_KV_REJECT_N; k++) r->st.rejects[k] += rej[k];
    pthread_mutex_unlock(&r->mu);
    return done;
}

void pam_kv_remote_inject_write_error(pam_kv_remote *r, int err) {
    pthread_mutex_lock(&r->mu);
    r->inject_errno = err;
    pthread_mutex_unlock(&r->mu);
}
pam_status pam_kvr_journal_open(pam_kv_remote *r, const char *dir) {
    /* one journal per model fingerprint and key setting: another model's
     * blocks are never even read */
    char name[64], fph[17], path[4200];
    pam_kvr_hex(r->fp, 8, fph);
    snprintf(name, sizeof name, "pam-kv-%s-%s.log", fph, r->hkey_len ? "signed" : "plain");
    if (strlen(dir) > 4000) return PAM_ERR(PAM_ERR_INVALID, "persisted KV: directory name too long");
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return PAM_ERR(PAM_ERR_IO, "persisted KV: cannot create '%s': %s", dir, strerror(errno));
    snprintf(path, sizeof path, "%s/%s", dir, name);
    r->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (r->fd < 0) return PAM_ERR(PAM_ERR_IO, "persisted KV: cannot open '%s': %s", path, strerror(errno));
    r->fbuf = malloc((size_t)r->shape.n_layer * r->value_bytes);
    if (!r->fbuf) return PAM_ERR(PAM_ERR_NOMEM, "persisted KV");
    file_note_foreign(dir, name);
    return file_recover(r, path);
}

void pam_kvr_journal_close(pam_kv_remote *r) {
    if (r->fd >= 0) {
        /* a clean shutdown makes the journal durable; after a crash the
         * recovery keeps what reached the file */
        fdatasync(r->fd);
        close(r->fd);
        r->fd = -1;
    }
    free(r->idx);
    free(r->fbuf);
    r->idx = NULL;
    r->fbuf = NULL;
}
