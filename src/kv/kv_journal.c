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

static size_t idx_slot(const pam_kv_remote *r, const uint8_t key[32]) {
    uint64_t h;
    memcpy(&h, key, 8); /* the chain key is a SHA-256: its bytes are uniform */
    return (size_t)(h % r->idx_cap);
}

/* mu held. The block of key, or NULL. */
static jblock *idx_find(pam_kv_remote *r, const uint8_t key[32]) {
    if (!r->idx_cap) return NULL;
    for (size_t i = idx_slot(r, key);; i = (i + 1) % r->idx_cap) {
        jblock *e = &r->idx[i];
        if (!e->used) return NULL;
        if (!memcmp(e->key, key, 32)) return e;
    }
}

/* mu held. Records layer of block key (continuing parent) at off, stamped
 * with stamp. 0 when out of memory (the record is then simply not indexed). */
static int idx_put(pam_kv_remote *r, const uint8_t key[32], const uint8_t parent[32], int32_t layer, uint64_t off,
                   uint64_t stamp) {
    if (2 * (r->idx_n + 1) > r->idx_cap) {
        size_t cap = r->idx_cap ? 2 * r->idx_cap : 1024;
        jblock *old = r->idx, *n = calloc(cap, sizeof *n);
        if (!n) return 0;
        size_t old_cap = r->idx_cap;
        r->idx = n;
        r->idx_cap = cap;
        for (size_t i = 0; i < old_cap; i++)
            if (old[i].used) {
                size_t j = idx_slot(r, old[i].key);
                while (n[j].used) j = (j + 1) % cap;
                n[j] = old[i];
            }
        free(old);
    }
    jblock *e = idx_find(r, key);
    if (!e) {
        uint64_t *offs = malloc((size_t)r->shape.n_layer * sizeof *offs);
        if (!offs) return 0;
        for (int32_t l = 0; l < r->shape.n_layer; l++) offs[l] = JOFF_NONE;
        size_t j = idx_slot(r, key);
        while (r->idx[j].used) j = (j + 1) % r->idx_cap;
        e = &r->idx[j];
        memcpy(e->key, key, 32);
        memcpy(e->parent, parent, 32);
        e->off = offs;
        e->have = 0;
        e->stamp = 0;
        e->used = 1;
        r->idx_n++;
    }
    if (e->off[layer] == JOFF_NONE) e->have++;
    e->off[layer] = off;
    if (stamp > e->stamp) e->stamp = stamp;
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
        if (why < 0 && idx_put(r, val + 48, val + 112, layer, off, off / r->value_bytes + 1)) {
            good++;
        } else if (why >= 0) {
            r->st.rejects[why]++;
            bad++;
            if (why == PAM_KV_REJECT_HMAC) r->recovered_hmac++;
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
    r->clock = off / r->value_bytes;
    r->recovered_bad = bad;
    r->recovered = 1;
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
    for (struct dirent *e; (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        if (!strncmp(e->d_name, "pam-kv-", 7) && len > 4 && !strcmp(e->d_name + len - 4, ".log") &&
            strcmp(e->d_name, mine))
            n++;
    }
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
        jblock *have = idx_find(r, key);
        int skip = have && have->off[layer] != JOFF_NONE, failed = r->write_failed, inj = 0;
        /* a block is begun only when all its layers fit (one missing
         * layers is of no use); the layers of a begun block have their room */
        int32_t room = have ? r->shape.n_layer - layer : r->shape.n_layer;
        int full = r->end + (uint64_t)room * r->value_bytes > r->max_bytes;
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
        idx_put(r, key, val + 112, layer, r->end, ++r->clock);
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
            jblock *e = idx_find(r, keys[b]);
            uint64_t off = e ? e->off[l] : JOFF_NONE;
            pthread_mutex_unlock(&r->mu);
            uint8_t *val = r->fbuf + (size_t)l * r->value_bytes;
            if (off == JOFF_NONE) {
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
        pam_kvr_journal_touch(r, keys[b]);
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

void pam_kvr_journal_touch(pam_kv_remote *r, const uint8_t key[32]) {
    pthread_mutex_lock(&r->mu);
    jblock *e = idx_find(r, key);
    if (e) e->stamp = ++r->clock;
    pthread_mutex_unlock(&r->mu);
}

void pam_kv_remote_inject_write_error(pam_kv_remote *r, int err) {
    pthread_mutex_lock(&r->mu);
    r->inject_errno = err;
    pthread_mutex_unlock(&r->mu);
}
pam_status pam_kvr_journal_open(pam_kv_remote *r, const char *dir) {
    /* one journal per model fingerprint and key setting: another model's
     * blocks are never even read */
    char name[64], fph[17];
    pam_kvr_hex(r->fp, 8, fph);
    snprintf(name, sizeof name, "pam-kv-%s-%s.log", fph, r->hkey_len ? "signed" : "plain");
    if (strlen(dir) > 4000) return PAM_ERR(PAM_ERR_INVALID, "persisted KV: directory name too long");
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return PAM_ERR(PAM_ERR_IO, "persisted KV: cannot create '%s': %s", dir, strerror(errno));
    size_t plen = strlen(dir) + strlen(name) + 2;
    r->jpath = malloc(plen);
    r->tmppath = malloc(plen + 4);
    if (!r->jpath || !r->tmppath) return PAM_ERR(PAM_ERR_NOMEM, "persisted KV");
    snprintf(r->jpath, plen, "%s/%s", dir, name);
    snprintf(r->tmppath, plen + 4, "%s.tmp", r->jpath);
    /* a compaction that did not finish: the journal itself is whole (the
     * rename never happened), its unfinished copy goes */
    if (unlink(r->tmppath) == 0)
        fprintf(stderr, "pam: persisted KV: removed %s, left by a compaction that did not finish\n", r->tmppath);
    r->fd = open(r->jpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (r->fd < 0) return PAM_ERR(PAM_ERR_IO, "persisted KV: cannot open '%s': %s", r->jpath, strerror(errno));
    r->fbuf = malloc((size_t)r->shape.n_layer * r->value_bytes);
    if (!r->fbuf) return PAM_ERR(PAM_ERR_NOMEM, "persisted KV");
    file_note_foreign(dir, name);
    return file_recover(r, r->jpath);
}

/* ---- compaction ---- */

typedef struct cblock {
    jblock *b;
    int32_t parent; /* index in the array; -1: a first block; -2: its parent is not in the journal */
    int32_t depth;  /* -1: not known yet; -2: unusable (layers missing, or its chain is broken) */
    uint64_t eff;   /* the newest stamp of it and its descendants */
} cblock;

static int cb_by_depth_desc(const void *a, const void *b) {
    const cblock *x = *(cblock *const *)a, *y = *(cblock *const *)b;
    return (x->depth < y->depth) - (x->depth > y->depth);
}

/* Most recently used first; a parent before its children (the same eff,
 * a smaller depth). */
static int cb_by_use(const void *a, const void *b) {
    const cblock *x = *(cblock *const *)a, *y = *(cblock *const *)b;
    if (x->eff != y->eff) return x->eff > y->eff ? -1 : 1;
    return (x->depth > y->depth) - (x->depth < y->depth);
}

/* The depth of block i (0 for a first block), or -2 when it cannot be used:
 * a layer missing, or an ancestor missing or unusable. Iterative, chains can
 * be long; stack holds as many entries as there are blocks. */
static int32_t cb_depth(cblock *cb, int32_t i, int32_t *stack) {
    int32_t top = 0, j = i;
    while (cb[j].depth == -1) {
        cb[j].depth = -3; /* on the stack: meeting it again would be a cycle */
        stack[top++] = j;
        if (cb[j].parent < 0) break;
        j = cb[j].parent;
    }
    if (top == 0) return cb[i].depth;
    int32_t last = stack[top - 1], d;
    if (cb[last].parent == -1)
        d = -1; /* a first block: depth 0 */
    else if (cb[last].parent == -2)
        d = -2;
    else
        d = cb[cb[last].parent].depth == -3 ? -2 : cb[cb[last].parent].depth;
    while (top > 0) {
        d = d == -2 ? -2 : d + 1;
        cb[stack[--top]].depth = d;
    }
    return cb[i].depth;
}

/* Writes the kept blocks' records to the temporary file, oldest use first
 * (so the next open's stamps, the records' positions, keep the order), then
 * makes it durable and renames it over the journal. Any failure removes
 * the temporary file and leaves the journal as it was. */
static pam_status compact_write(pam_kv_remote *r, cblock **keep, size_t n_keep) {
    int32_t L = r->shape.n_layer;
    int fd = open(r->tmppath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return PAM_ERR(PAM_ERR_IO, "cannot create %s: %s", r->tmppath, strerror(errno));
    pam_status st = PAM_OK;
    uint64_t out = 0;
    for (size_t k = n_keep; k-- > 0 && st == PAM_OK;) {
        const jblock *b = keep[k]->b;
        for (int32_t l = 0; l < L && st == PAM_OK; l++) {
            if (pread(r->fd, r->fbuf, r->value_bytes, (off_t)b->off[l]) != (ssize_t)r->value_bytes) {
                st = PAM_ERR(PAM_ERR_IO, "cannot read %s: %s", r->jpath, strerror(errno));
                break;
            }
            int inj = r->inject_errno;
            r->inject_errno = 0;
            ssize_t w = inj ? -1 : pwrite(fd, r->fbuf, r->value_bytes, (off_t)out);
            if (w != (ssize_t)r->value_bytes)
                st = PAM_ERR(PAM_ERR_IO, "cannot write %s: %s", r->tmppath,
                             w < 0 ? strerror(inj ? inj : errno) : "short write");
            out += r->value_bytes;
        }
    }
    if (st == PAM_OK && fdatasync(fd) != 0)
        st = PAM_ERR(PAM_ERR_IO, "cannot sync %s: %s", r->tmppath, strerror(errno));
    if (close(fd) != 0 && st == PAM_OK) st = PAM_ERR(PAM_ERR_IO, "cannot close %s: %s", r->tmppath, strerror(errno));
    if (st == PAM_OK && rename(r->tmppath, r->jpath) != 0)
        st = PAM_ERR(PAM_ERR_IO, "cannot rename %s: %s", r->tmppath, strerror(errno));
    if (st != PAM_OK) {
        unlink(r->tmppath);
        return st;
    }
    /* the rename itself made durable */
    char *dir = strdup(r->jpath);
    if (dir) {
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
        free(dir);
    }
    return PAM_OK;
}

/* Clean shutdown (the writer thread has stopped): rewrites the journal
 * without the records no fetch can use and, past three quarters of
 * max_bytes, without the least recently used prefix chains, so the next run
 * has room for new prefixes. */
static void compact(pam_kv_remote *r) {
    if (r->recovered_hmac) {
        /* most likely the wrong key file: those records are whole, and the
         * right key makes them usable again */
        fprintf(stderr,
                "pam: persisted KV: %s holds %llu records signed with another key; not compacted (run with the key "
                "they were signed with, or remove the journal)\n",
                r->jpath, (unsigned long long)r->recovered_hmac);
        return;
    }
    size_t n = r->idx_n;
    int32_t L = r->shape.n_layer;
    uint64_t blk_bytes = (uint64_t)L * r->value_bytes;
    uint64_t budget = UINT64_MAX;
    if (r->max_bytes != UINT64_MAX && r->end > r->max_bytes / 4 * 3) budget = r->max_bytes / 4 * 3;
    cblock *cb = calloc(n ? n : 1, sizeof *cb);
    cblock **order = calloc(n ? n : 1, sizeof *order);
    size_t *slot_of = calloc(r->idx_cap ? r->idx_cap : 1, sizeof *slot_of);
    int32_t *stack = calloc(n ? n : 1, sizeof *stack);
    if (!cb || !order || !slot_of || !stack) goto out;
    size_t m = 0;
    for (size_t i = 0; i < r->idx_cap; i++)
        if (r->idx[i].used) {
            slot_of[i] = m;
            cb[m++].b = &r->idx[i];
        }
    static const uint8_t zero[32];
    for (size_t i = 0; i < m; i++) {
        jblock *b = cb[i].b;
        if (!memcmp(b->parent, zero, 32)) {
            cb[i].parent = -1;
        } else {
            jblock *p = idx_find(r, b->parent);
            cb[i].parent = p ? (int32_t)slot_of[p - r->idx] : -2;
        }
        cb[i].depth = b->have == L ? -1 : -2;
        cb[i].eff = b->stamp;
    }
    size_t n_ok = 0;
    for (size_t i = 0; i < m; i++)
        if (cb_depth(cb, (int32_t)i, stack) >= 0) order[n_ok++] = &cb[i];
    /* a parent is as recent as its most recent descendant: children first */
    qsort(order, n_ok, sizeof *order, cb_by_depth_desc);
    for (size_t i = 0; i < n_ok; i++)
        if (order[i]->parent >= 0 && cb[order[i]->parent].eff < order[i]->eff) cb[order[i]->parent].eff = order[i]->eff;
    qsort(order, n_ok, sizeof *order, cb_by_use);
    /* keep the most recent while they fit; a block whose parent was not kept
     * is useless (fetches walk a chain from its first block) */
    uint8_t *kept = calloc(m ? m : 1, 1);
    if (!kept) goto out;
    size_t n_keep = 0;
    uint64_t keep_bytes = 0;
    for (size_t i = 0; i < n_ok; i++) {
        cblock *c = order[i];
        if (c->parent >= 0 && !kept[c->parent]) continue;
        if (keep_bytes + blk_bytes > budget) break;
        kept[c - cb] = 1;
        order[n_keep++] = c;
        keep_bytes += blk_bytes;
    }
    free(kept);
    if (keep_bytes == r->end) goto out; /* nothing to drop */
    pam_status st = compact_write(r, order, n_keep);
    if (st == PAM_OK)
        fprintf(stderr,
                "pam: persisted KV: compacted %s: kept %zu blocks (%llu bytes), dropped %llu bytes (%zu unusable "
                "or unreachable blocks, %zu least recently used, %llu rejected records)\n",
                r->jpath, n_keep, (unsigned long long)keep_bytes, (unsigned long long)(r->end - keep_bytes),
                m - n_ok, n_ok - n_keep, (unsigned long long)r->recovered_bad);
    else
        fprintf(stderr, "pam: warning: persisted KV: compaction failed (%s); the journal is left as it was\n",
                pam_last_error());
out:
    free(cb);
    free(order);
    free(slot_of);
    free(stack);
}

void pam_kvr_journal_close(pam_kv_remote *r) {
    if (r->fd >= 0) {
        if (r->recovered) compact(r);
        /* a clean shutdown makes the journal durable (a compacted one is
         * already); after a crash the recovery keeps what reached the file */
        fdatasync(r->fd);
        close(r->fd);
        r->fd = -1;
    }
    for (size_t i = 0; i < r->idx_cap; i++) free(r->idx[i].off);
    free(r->idx);
    free(r->fbuf);
    free(r->jpath);
    free(r->tmppath);
    r->idx = NULL;
    r->fbuf = NULL;
    r->jpath = r->tmppath = NULL;
}
