/* ssd: KV blocks in one file on local disk (DESIGN.md §2.1, §2.6).
 *
 * File layout: physical slots of slot_bytes (a multiple of 4 KiB, so every
 * slot is an aligned O_DIRECT extent). A slot holds a 64-byte header
 *   {magic, version, checksum, logical slot, n_tokens, shape}
 * then f16 K [H][B][D] and f16 V [H][B][D]: per KV head contiguous, so the f16
 * attention kernel streams each head's rows straight from the read buffer.
 * The checksum (64-bit, four-lane multiply-rotate hash) covers the header
 * after the checksum field and the whole payload; it is verified on every
 * read and attend (mismatch -> PAM_ERR_CORRUPT, counted in n_errors).
 *
 * Logical slots (what callers hold) map to physical slots. A write never
 * overwrites the only valid copy: it builds the new slot image, writes it to
 * a free physical slot and only then switches the mapping and frees the old
 * one, so a failed or torn write leaves the previous contents readable.
 * There is always one spare physical slot (n_phys = capacity + 1).
 *
 * The file grows lazily in chunks with fallocate when alloc needs room, so a
 * full disk (ENOSPC, EFBIG from a file size limit) is PAM_ERR_FULL at alloc,
 * never a failed write later. Invariant after a successful alloc:
 * grown_phys >= n_used + 1.
 *
 * Reads use io_uring with O_DIRECT into 4 KiB-aligned buffers. attend splits
 * its block list into batches and double-buffers: the reads of batch i+1 are
 * in flight while batch i is verified and computed. Short reads are
 * resubmitted for the remainder; EIO is PAM_ERR_IO naming the offset. If the
 * filesystem refuses O_DIRECT the tier falls back to buffered I/O with
 * posix_fadvise(DONTNEED) (and says so in its name and on stderr); if
 * io_uring is unavailable, to synchronous pread.
 *
 * Read-ahead (prefetch hints): hinted blocks are read on a ring of their own
 * into up to SSD_PF_BYTES of buffers (set up at the first hint). Invariant:
 * pf_of[slot] names an entry only while that entry holds, or is reading, the
 * slot's current physical copy: write and free drop it (an entry still in
 * flight is marked stale and freed when its read lands), so a block is never
 * served from an out-of-date copy even when a rewrite returns to the same
 * physical slot. attend verifies a read-ahead buffer like its own reads,
 * and reads a block itself when its read-ahead failed.
 *
 * Threads: alloc/free/write/read/stats come from one thread at a time and not
 * during attend or prefetch; attend may run on several threads at once (each
 * takes its own ring and buffers from a small pool under a mutex), and beside
 * one prefetch; pf_lock guards the read-ahead state and its ring. */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fp16.h"
#include "core/status.h"
#include "core/timing.h"
#include "kernels/attention.h"
#include "kv/tier.h"

#define SSD_MAGIC 0x4b4d4150u /* "PAMK" */
#define SSD_VERSION 1u
#define SSD_HDR 64
#define SSD_ALIGN 4096
#define SSD_BATCH 8                /* blocks per read batch in attend */
#define SSD_GROW_BYTES (4u << 20)  /* file growth step */
#define SSD_DEFAULT_GBPS 2.0       /* until the KV manager measures one */
#define SSD_PF_BYTES (128u << 20)  /* read-ahead buffers: three layers of a 16k-token llama-1b sequence */
#define SSD_PF_MAX 4096            /* read-ahead entries at most */
#define SSD_NONE UINT32_MAX

typedef struct ssd_hdr {
    uint32_t magic, version;
    uint64_t checksum; /* over bytes 16..SSD_HDR+payload */
    uint32_t slot, n_tokens;
    int32_t n_head_kv, head_dim, block_tokens;
    uint8_t pad[SSD_HDR - 36];
} ssd_hdr;
_Static_assert(sizeof(ssd_hdr) == SSD_HDR, "ssd header is 64 bytes");

/* One in-flight read (possibly resubmitted after a short completion). */
typedef struct ssd_req {
    uint64_t off;
    uint8_t *buf;
    uint32_t len, done;
    int err;    /* negative errno, or 0 */
    int32_t pf; /* read-ahead entry whose buffer this is, or -1 */
} ssd_req;

/* Per-attend I/O context: a ring and two sets of SSD_BATCH slot buffers. */
typedef struct ssd_io {
    struct io_uring ring;
    int ring_ok;
    uint8_t *buf[2];
    ssd_req req[2][SSD_BATCH];
    int pending[2];
    int n_req[2];
    struct ssd_io *next;
} ssd_io;

/* One read-ahead buffer (prefetch). States: free (on the free stack), in
 * flight (a read of (slot, phys) is queued on the read-ahead ring), ready
 * (done, with err 0 or a negative errno). An entry in flight or pinned by an
 * attend keeps its buffer; one whose slot was written or freed meanwhile is
 * stale and goes back to the free stack when its read completes. */
enum { SSD_PF_FREE = 0, SSD_PF_FLIGHT, SSD_PF_READY };
typedef struct ssd_pf {
    uint8_t *buf;
    uint32_t slot, phys;
    uint32_t done;
    int state, err, pinned, stale;
    uint64_t gen; /* the hint that asked for it last */
} ssd_pf;

typedef struct ssd {
    pam_kv_shape sh;
    size_t row, payload_bytes, slot_bytes;
    int fd, direct, uring;
    char path[PATH_MAX];
    uint64_t cap, n_phys, grown_phys, n_used;
    uint32_t *phys;  /* logical -> physical, SSD_NONE until first write */
    int32_t *hi;     /* logical: tokens written */
    uint8_t *used;   /* logical: allocated */
    uint32_t *lfree; /* free logical slots */
    uint64_t n_lfree;
    uint32_t *pfree; /* free physical slots below grown_phys */
    uint64_t n_pfree;
    uint8_t *wbuf;      /* one slot image, aligned: the write path's buffer */
    int64_t wbuf_slot;  /* logical slot whose current image wbuf holds, or -1 */
    pthread_mutex_t io_lock;
    ssd_io *io_free;
    /* read-ahead: set up at the first prefetch; pf_lock guards all of it
     * (attend threads harvest completions of pf_ring under it) */
    pthread_mutex_t pf_lock;
    _Atomic int pf_init; /* 0: not yet, 1: ready, -1: unavailable (no ring, no memory) */
    struct io_uring pf_ring;
    uint8_t *pf_mem;
    ssd_pf *pf;
    uint32_t n_pf, n_pf_free, pf_inflight;
    uint32_t *pf_stack;
    int32_t *pf_of; /* logical slot -> entry holding it, or -1 */
    uint64_t pf_gen;
    /* fault hook */
    _Atomic int inj_kind;
    uint64_t inj_nth;
    int inj_persistent;
    _Atomic uint64_t inj_count;
    _Atomic uint64_t bytes_read, bytes_written, n_errors;
    _Atomic int64_t attend_ns;
} ssd;

static const pam_tier_ops ssd_ops;
static void ssd_pf_forget(ssd *s, uint32_t slot);

/* ---- checksum ------------------------------------------------------------- */

#define H_P1 0x9E3779B185EBCA87ull
#define H_P2 0xC2B2AE3D27D4EB4Full
#define H_P3 0x165667B19E3779F9ull
#define H_P4 0x85EBCA77C2B2AE63ull
#define H_P5 0x27D4EB2F165667C5ull

static inline uint64_t h_rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t h_round(uint64_t acc, uint64_t in) {
    return h_rotl(acc + in * H_P2, 31) * H_P1;
}
static inline uint64_t h_load(const uint8_t *p) {
    uint64_t x;
    memcpy(&x, p, 8);
    return x;
}

/* Each step of every lane is a bijection of that lane's state, so any change
 * to a single 32-byte stripe (a flipped byte, a torn sector) always changes
 * the result. */
static uint64_t ssd_hash(const uint8_t *p, size_t n, uint64_t seed) {
    uint64_t v1 = seed + H_P1 + H_P2, v2 = seed + H_P2, v3 = seed, v4 = seed - H_P1;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        v1 = h_round(v1, h_load(p + i));
        v2 = h_round(v2, h_load(p + i + 8));
        v3 = h_round(v3, h_load(p + i + 16));
        v4 = h_round(v4, h_load(p + i + 24));
    }
    uint64_t h = h_rotl(v1, 1) + h_rotl(v2, 7) + h_rotl(v3, 12) + h_rotl(v4, 18);
    h += (uint64_t)n;
    for (; i + 8 <= n; i += 8) h = h_rotl(h ^ h_round(0, h_load(p + i)), 27) * H_P1 + H_P4;
    for (; i < n; i++) h = h_rotl(h ^ (p[i] * H_P5), 11) * H_P1;
    h ^= h >> 33;
    h *= H_P2;
    h ^= h >> 29;
    h *= H_P3;
    h ^= h >> 32;
    return h;
}

static uint64_t ssd_slot_hash(const ssd *s, const uint8_t *img) {
    return ssd_hash(img + 16, SSD_HDR - 16 + s->payload_bytes, SSD_MAGIC ^ ((uint64_t)SSD_VERSION << 32));
}

/* ---- fault hook ----------------------------------------------------------- */

static int ssd_fault(ssd *s, pam_ssd_fault kind) {
    if (atomic_load_explicit(&s->inj_kind, memory_order_acquire) != (int)kind) return 0;
    uint64_t n = atomic_fetch_add(&s->inj_count, 1);
    return n == s->inj_nth || (s->inj_persistent && n > s->inj_nth);
}

pam_status pam_tier_ssd_inject(pam_tier *t, pam_ssd_fault kind, uint64_t nth, int persistent) {
    if (!t || t->ops != &ssd_ops) return PAM_ERR(PAM_ERR_INVALID, "fault hook: not an ssd tier");
    ssd *s = t->impl;
    atomic_store(&s->inj_kind, PAM_SSD_FAULT_NONE);
    s->inj_nth = nth;
    s->inj_persistent = persistent;
    atomic_store(&s->inj_count, 0);
    atomic_store_explicit(&s->inj_kind, (int)kind, memory_order_release);
    return PAM_OK;
}

pam_status pam_tier_ssd_locate(pam_tier *t, uint32_t slot, char *path, size_t path_cap,
                               uint64_t *offset) {
    if (!t || t->ops != &ssd_ops) return PAM_ERR(PAM_ERR_INVALID, "locate: not an ssd tier");
    ssd *s = t->impl;
    if (slot >= s->cap || !s->used[slot] || s->phys[slot] == SSD_NONE)
        return PAM_ERR(PAM_ERR_INVALID, "ssd tier: slot %u holds no data", slot);
    snprintf(path, path_cap, "/proc/self/fd/%d", s->fd);
    *offset = (uint64_t)s->phys[slot] * s->slot_bytes;
    return PAM_OK;
}

/* ---- low-level I/O -------------------------------------------------------- */

static uint64_t ssd_off(const ssd *s, uint32_t phys) { return (uint64_t)phys * s->slot_bytes; }

/* Applies the read fault hook to a completion of `want` bytes. */
static int ssd_fault_read(ssd *s, int res, uint32_t want) {
    if (res > 0 && ssd_fault(s, PAM_SSD_FAULT_EIO_READ)) return -EIO;
    if (res > 0 && (uint32_t)res == want && ssd_fault(s, PAM_SSD_FAULT_SHORT_READ)) {
        /* Keep the remainder aligned, as a real short O_DIRECT read would. */
        uint32_t part = s->direct ? (want / 2) & ~(uint32_t)(SSD_ALIGN - 1) : want / 2;
        if (part > 0) return (int)part;
    }
    return res;
}

/* Synchronous read of one slot image with short-read continuation. */
static pam_status ssd_pread_slot(ssd *s, uint32_t phys, uint8_t *buf) {
    uint64_t off = ssd_off(s, phys);
    uint32_t done = 0, len = (uint32_t)s->slot_bytes;
    while (done < len) {
        ssize_t r = pread(s->fd, buf + done, len - done, (off_t)(off + done));
        int res = r < 0 ? -errno : (int)r;
        if (res == -EINTR) continue;
        res = ssd_fault_read(s, res, len - done);
        if (res < 0)
            return PAM_ERR(PAM_ERR_IO, "ssd tier: read of %u bytes at offset %llu of %s: %s", len - done,
                           (unsigned long long)(off + done), s->path, strerror(-res));
        if (res == 0)
            return PAM_ERR(PAM_ERR_IO, "ssd tier: unexpected end of file at offset %llu of %s",
                           (unsigned long long)(off + done), s->path);
        done += (uint32_t)res;
    }
    return PAM_OK;
}

static void ssd_drop_cache(ssd *s, uint64_t off, uint64_t len) {
    if (!s->direct) (void)posix_fadvise(s->fd, (off_t)off, (off_t)len, POSIX_FADV_DONTNEED);
}

/* Verifies a slot image read from disk: header and checksum. */
static pam_status ssd_verify(ssd *s, uint8_t *img, uint32_t slot, uint32_t phys) {
    if (ssd_fault(s, PAM_SSD_FAULT_CORRUPT)) img[SSD_HDR + s->payload_bytes / 2] ^= 0x40;
    ssd_hdr h;
    memcpy(&h, img, sizeof h);
    if (h.magic != SSD_MAGIC || h.version != SSD_VERSION || h.slot != slot ||
        h.n_tokens > (uint32_t)s->sh.block_tokens || h.checksum != ssd_slot_hash(s, img)) {
        atomic_fetch_add_explicit(&s->n_errors, 1, memory_order_relaxed);
        return PAM_ERR(PAM_ERR_CORRUPT,
                       "ssd tier: block in slot %u (offset %llu of %s) failed its checksum", slot,
                       (unsigned long long)ssd_off(s, phys), s->path);
    }
    return PAM_OK;
}

/* ---- growth and slots ----------------------------------------------------- */

static pam_status ssd_grow(ssd *s, uint64_t need_phys) {
    if (need_phys <= s->grown_phys) return PAM_OK;
    if (need_phys > s->n_phys) need_phys = s->n_phys;
    uint64_t step = SSD_GROW_BYTES / s->slot_bytes;
    if (step == 0) step = 1;
    uint64_t want = ((need_phys + step - 1) / step) * step;
    if (want > s->n_phys) want = s->n_phys;
    /* Try a whole chunk, then just what is needed: a nearly full disk still
     * yields its last slots. */
    uint64_t tries[2] = {want, need_phys};
    int err = 0;
    for (int i = 0; i < 2; i++) {
        uint64_t target = tries[i];
        if (ssd_fault(s, PAM_SSD_FAULT_ENOSPC)) {
            err = ENOSPC;
            continue;
        }
        off_t from = (off_t)ssd_off(s, (uint32_t)s->grown_phys);
        off_t len = (off_t)((target - s->grown_phys) * s->slot_bytes);
        int rc = fallocate(s->fd, 0, from, len);
        if (rc != 0 && (errno == EOPNOTSUPP || errno == ENOSYS))
            rc = ftruncate(s->fd, from + len); /* sparse: the disk fills on write instead */
        if (rc == 0) {
            for (uint64_t p = target; p > s->grown_phys; p--) s->pfree[s->n_pfree++] = (uint32_t)(p - 1);
            s->grown_phys = target;
            return PAM_OK;
        }
        err = errno;
    }
    return PAM_ERR(PAM_ERR_FULL, "ssd tier: cannot grow %s to %llu bytes: %s", s->path,
                   (unsigned long long)(need_phys * s->slot_bytes), strerror(err));
}

static pam_status ssd_alloc(void *impl, uint32_t *slot) {
    ssd *s = impl;
    if (s->n_lfree == 0)
        return PAM_ERR(PAM_ERR_FULL, "ssd tier %s full (%llu blocks)", s->path, (unsigned long long)s->cap);
    PAM_TRY(ssd_grow(s, s->n_used + 2)); /* this slot's first write + the spare */
    uint32_t l = s->lfree[--s->n_lfree];
    s->used[l] = 1;
    s->hi[l] = 0;
    s->phys[l] = SSD_NONE;
    s->n_used++;
    *slot = l;
    return PAM_OK;
}

static void ssd_free(void *impl, uint32_t slot) {
    ssd *s = impl;
    if (slot >= s->cap || !s->used[slot]) return;
    ssd_pf_forget(s, slot);
    if (s->phys[slot] != SSD_NONE) s->pfree[s->n_pfree++] = s->phys[slot];
    s->phys[slot] = SSD_NONE;
    s->used[slot] = 0;
    s->hi[slot] = 0;
    s->lfree[s->n_lfree++] = slot;
    s->n_used--;
    if (s->wbuf_slot == (int64_t)slot) s->wbuf_slot = -1;
}

static pam_status ssd_check_slot(const ssd *s, uint32_t slot) {
    if (slot >= s->cap || !s->used[slot])
        return PAM_ERR(PAM_ERR_INVALID, "ssd tier: slot %u is not allocated", slot);
    return PAM_OK;
}

static uint16_t *ssd_k(const ssd *s, uint8_t *img, int h) {
    return (uint16_t *)(img + SSD_HDR) + (size_t)h * s->sh.block_tokens * s->sh.head_dim;
}
static uint16_t *ssd_v(const ssd *s, uint8_t *img, int h) {
    return (uint16_t *)(img + SSD_HDR) + s->payload_bytes / 4 + (size_t)h * s->sh.block_tokens * s->sh.head_dim;
}

static pam_status ssd_write(void *impl, uint32_t slot, int32_t off, int32_t n, const float *k,
                            const float *v) {
    ssd *s = impl;
    const int B = s->sh.block_tokens, D = s->sh.head_dim, H = s->sh.n_head_kv;
    PAM_TRY(ssd_check_slot(s, slot));
    if (off < 0 || n < 1 || off + n > B)
        return PAM_ERR(PAM_ERR_INVALID, "ssd tier: write of tokens %d..%d outside a %d-token block", off,
                       off + n - 1, B);
    uint8_t *img = s->wbuf;
    if (s->wbuf_slot != (int64_t)slot) {
        s->wbuf_slot = -1;
        if (s->phys[slot] != SSD_NONE && !(off == 0 && n >= s->hi[slot])) {
            PAM_TRY(ssd_pread_slot(s, s->phys[slot], img));
            PAM_TRY(ssd_verify(s, img, slot, s->phys[slot]));
            ssd_drop_cache(s, ssd_off(s, s->phys[slot]), s->slot_bytes);
        } else {
            memset(img, 0, s->slot_bytes);
        }
    }
    /* From here img differs from the stored copy until the write succeeds. */
    s->wbuf_slot = -1;
    for (int t = 0; t < n; t++)
        for (int h = 0; h < H; h++) {
            const float *kr = k + (size_t)t * s->row + (size_t)h * D;
            const float *vr = v + (size_t)t * s->row + (size_t)h * D;
            uint16_t *kd = ssd_k(s, img, h) + (size_t)(off + t) * D;
            uint16_t *vd = ssd_v(s, img, h) + (size_t)(off + t) * D;
            for (int c = 0; c < D; c++) {
                kd[c] = pam_f32_to_f16(kr[c]);
                vd[c] = pam_f32_to_f16(vr[c]);
            }
        }
    int32_t hi = off + n > s->hi[slot] ? off + n : s->hi[slot];
    ssd_hdr hd;
    memset(&hd, 0, sizeof hd);
    hd.magic = SSD_MAGIC;
    hd.version = SSD_VERSION;
    hd.slot = slot;
    hd.n_tokens = (uint32_t)hi;
    hd.n_head_kv = H;
    hd.head_dim = D;
    hd.block_tokens = B;
    memcpy(img, &hd, sizeof hd);
    hd.checksum = ssd_slot_hash(s, img);
    memcpy(img, &hd, sizeof hd);

    if (s->n_pfree == 0) /* cannot happen while grown_phys >= n_used + 1 */
        return PAM_ERR(PAM_ERR_FULL, "ssd tier: no free physical slot");
    uint32_t p = s->pfree[s->n_pfree - 1];
    uint64_t foff = ssd_off(s, p);
    size_t done = 0;
    while (done < s->slot_bytes) {
        ssize_t w;
        if (ssd_fault(s, PAM_SSD_FAULT_EIO_WRITE)) {
            w = -1;
            errno = EIO;
        } else {
            w = pwrite(s->fd, img + done, s->slot_bytes - done, (off_t)(foff + done));
        }
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int e = w < 0 ? errno : EIO;
            atomic_fetch_add_explicit(&s->n_errors, 1, memory_order_relaxed);
            return PAM_ERR(PAM_ERR_IO, "ssd tier: write of slot %u at offset %llu of %s: %s", slot,
                           (unsigned long long)(foff + done), s->path, strerror(e));
        }
        done += (size_t)w;
    }
    ssd_drop_cache(s, foff, s->slot_bytes);
    /* The new copy is on disk: switch, then release the old one. */
    ssd_pf_forget(s, slot);
    s->n_pfree--;
    if (s->phys[slot] != SSD_NONE) s->pfree[s->n_pfree++] = s->phys[slot];
    s->phys[slot] = p;
    s->hi[slot] = hi;
    s->wbuf_slot = slot;
    atomic_fetch_add_explicit(&s->bytes_written, s->slot_bytes, memory_order_relaxed);
    return PAM_OK;
}

static pam_status ssd_read(void *impl, uint32_t slot, int32_t n, float *k, float *v) {
    ssd *s = impl;
    const int D = s->sh.head_dim, H = s->sh.n_head_kv;
    PAM_TRY(ssd_check_slot(s, slot));
    if (n < 1 || n > s->hi[slot])
        return PAM_ERR(PAM_ERR_INVALID, "ssd tier: read of %d tokens from a block holding %d", n, s->hi[slot]);
    uint8_t *img = NULL;
    if (posix_memalign((void **)&img, SSD_ALIGN, s->slot_bytes) != 0)
        return PAM_ERR(PAM_ERR_NOMEM, "ssd tier: read buffer");
    pam_status st = ssd_pread_slot(s, s->phys[slot], img);
    if (st == PAM_OK) st = ssd_verify(s, img, slot, s->phys[slot]);
    else atomic_fetch_add_explicit(&s->n_errors, 1, memory_order_relaxed);
    if (st == PAM_OK) {
        ssd_drop_cache(s, ssd_off(s, s->phys[slot]), s->slot_bytes);
        for (int t = 0; t < n; t++)
            for (int h = 0; h < H; h++)
                for (int c = 0; c < D; c++) {
                    k[(size_t)t * s->row + (size_t)h * D + c] = pam_f16_to_f32(ssd_k(s, img, h)[(size_t)t * D + c]);
                    v[(size_t)t * s->row + (size_t)h * D + c] = pam_f16_to_f32(ssd_v(s, img, h)[(size_t)t * D + c]);
                }
        atomic_fetch_add_explicit(&s->bytes_read, s->slot_bytes, memory_order_relaxed);
    }
    free(img);
    return st;
}

/* ---- read-ahead (prefetch) ------------------------------------------------- */

/* Sets up the read-ahead buffers and ring at the first hint (pf_lock held).
 * Tiers that never get a hint (tests, migration-only use) pay nothing. */
static void ssd_pf_setup(ssd *s) {
    uint64_t n = SSD_PF_BYTES / s->slot_bytes;
    if (n > SSD_PF_MAX) n = SSD_PF_MAX;
    if (n > s->cap) n = s->cap;
    if (n < 1) n = 1;
    atomic_store(&s->pf_init, -1);
    if (posix_memalign((void **)&s->pf_mem, SSD_ALIGN, (size_t)n * s->slot_bytes) != 0) s->pf_mem = NULL;
    s->pf = calloc((size_t)n, sizeof *s->pf);
    s->pf_stack = malloc((size_t)n * sizeof *s->pf_stack);
    s->pf_of = malloc((size_t)s->cap * sizeof *s->pf_of);
    if (!s->pf_mem || !s->pf || !s->pf_stack || !s->pf_of ||
        io_uring_queue_init((unsigned)n, &s->pf_ring, 0) != 0) {
        free(s->pf_mem);
        free(s->pf);
        free(s->pf_stack);
        free(s->pf_of);
        s->pf_mem = NULL, s->pf = NULL, s->pf_stack = NULL, s->pf_of = NULL;
        return;
    }
    for (uint64_t i = 0; i < s->cap; i++) s->pf_of[i] = -1;
    s->n_pf = (uint32_t)n;
    for (uint32_t i = 0; i < s->n_pf; i++) {
        s->pf[i].buf = s->pf_mem + (size_t)i * s->slot_bytes;
        s->pf_stack[i] = s->n_pf - 1 - i;
    }
    s->n_pf_free = s->n_pf;
    atomic_store(&s->pf_init, 1);
}

/* Entry i back to the free stack (pf_lock held; not in flight). */
static void ssd_pf_release(ssd *s, uint32_t i) {
    ssd_pf *e = &s->pf[i];
    if (s->pf_of[e->slot] == (int32_t)i) s->pf_of[e->slot] = -1;
    e->state = SSD_PF_FREE;
    e->pinned = 0;
    e->stale = 0;
    s->pf_stack[s->n_pf_free++] = i;
}

/* Queues (the rest of) entry i's read; 0 if the ring has no room. */
static int ssd_pf_sqe(ssd *s, uint32_t i) {
    ssd_pf *e = &s->pf[i];
    struct io_uring_sqe *sqe = io_uring_get_sqe(&s->pf_ring);
    if (!sqe) {
        io_uring_submit(&s->pf_ring);
        sqe = io_uring_get_sqe(&s->pf_ring);
    }
    if (!sqe) return 0;
    io_uring_prep_read(sqe, s->fd, e->buf + e->done, (unsigned)(s->slot_bytes - e->done),
                       ssd_off(s, e->phys) + e->done);
    io_uring_sqe_set_data64(sqe, i);
    return 1;
}

/* One completion of the read-ahead ring (pf_lock held). */
static void ssd_pf_complete(ssd *s, struct io_uring_cqe *cqe) {
    uint32_t i = (uint32_t)io_uring_cqe_get_data64(cqe);
    int res = cqe->res;
    io_uring_cqe_seen(&s->pf_ring, cqe);
    ssd_pf *e = &s->pf[i];
    if (res == -EINTR || res == -EAGAIN) {
        if (!e->stale && ssd_pf_sqe(s, i)) {
            io_uring_submit(&s->pf_ring);
            return;
        }
    } else {
        res = ssd_fault_read(s, res, (uint32_t)(s->slot_bytes - e->done));
        if (res > 0) {
            atomic_fetch_add_explicit(&s->bytes_read, (uint64_t)res, memory_order_relaxed);
            e->done += (uint32_t)res;
            if (e->done < s->slot_bytes && !e->stale && ssd_pf_sqe(s, i)) { /* short read: the rest */
                io_uring_submit(&s->pf_ring);
                return;
            }
        }
    }
    s->pf_inflight--;
    e->state = SSD_PF_READY;
    e->err = e->done == s->slot_bytes ? 0 : res < 0 ? res : -ENODATA;
    if (e->err && !e->stale) atomic_fetch_add_explicit(&s->n_errors, 1, memory_order_relaxed);
    if (e->stale && !e->pinned) ssd_pf_release(s, i);
}

static void ssd_pf_poll(ssd *s) {
    struct io_uring_cqe *cqe;
    while (s->pf_inflight > 0 && io_uring_peek_cqe(&s->pf_ring, &cqe) == 0) ssd_pf_complete(s, cqe);
}

/* Waits until entry i is no longer in flight (pf_lock held). 0 if the ring
 * failed: the entry stays in flight, the caller reads the block itself. */
static int ssd_pf_wait(ssd *s, uint32_t i) {
    while (s->pf[i].state == SSD_PF_FLIGHT) {
        struct io_uring_cqe *cqe;
        int rc = io_uring_wait_cqe(&s->pf_ring, &cqe);
        if (rc == -EINTR) continue;
        if (rc < 0) return 0;
        ssd_pf_complete(s, cqe);
    }
    return 1;
}

/* An attend is done with entry i (pf_lock held): a block is read once per
 * hint, so the buffer is free again (or once its read lands). */
static void ssd_pf_unpin(ssd *s, uint32_t i) {
    ssd_pf *e = &s->pf[i];
    if (--e->pinned > 0) return;
    if (e->state == SSD_PF_FLIGHT) {
        e->stale = 1;
        if (s->pf_of[e->slot] == (int32_t)i) s->pf_of[e->slot] = -1;
    } else {
        ssd_pf_release(s, i);
    }
}

/* The slot is written or freed: what was read ahead for it is out of date. */
static void ssd_pf_forget(ssd *s, uint32_t slot) {
    if (atomic_load(&s->pf_init) <= 0) return;
    pthread_mutex_lock(&s->pf_lock);
    int32_t i = s->pf_of[slot];
    if (i >= 0) {
        ssd_pf *e = &s->pf[i];
        s->pf_of[slot] = -1;
        e->stale = 1;
        if (e->state != SSD_PF_FLIGHT && !e->pinned) ssd_pf_release(s, (uint32_t)i);
    }
    pthread_mutex_unlock(&s->pf_lock);
}

/* Starts reading the hinted blocks into free read-ahead buffers, in order,
 * as far as buffers last. What an older hint (two or more back) read and no
 * attend took is dropped first: hints that were wrong cost their reads but
 * never hold buffers for long. The reads are queued in groups, taking the
 * lock per group, so attend calls of other threads are never held up for
 * long by a hint running beside them. */
#define SSD_PF_GROUP 64
static void ssd_prefetch(void *impl, const pam_tier_block *blocks, int64_t n_blocks) {
    ssd *s = impl;
    if (!s->uring) return;
    pthread_mutex_lock(&s->pf_lock);
    if (atomic_load(&s->pf_init) == 0) ssd_pf_setup(s);
    if (atomic_load(&s->pf_init) < 0) {
        pthread_mutex_unlock(&s->pf_lock);
        return;
    }
    ssd_pf_poll(s);
    uint64_t g = ++s->pf_gen;
    for (uint32_t i = 0; i < s->n_pf; i++) {
        ssd_pf *e = &s->pf[i];
        if (e->state == SSD_PF_READY && !e->pinned && e->gen + 1 < g) ssd_pf_release(s, i);
    }
    pthread_mutex_unlock(&s->pf_lock);
    int full = 0;
    for (int64_t b0 = 0; b0 < n_blocks && !full; b0 += SSD_PF_GROUP) {
        int64_t b1 = b0 + SSD_PF_GROUP < n_blocks ? b0 + SSD_PF_GROUP : n_blocks;
        int queued = 0;
        pthread_mutex_lock(&s->pf_lock);
        for (int64_t b = b0; b < b1; b++) {
            uint32_t slot = blocks[b].slot;
            if (slot >= s->cap || !s->used[slot] || s->phys[slot] == SSD_NONE) continue;
            if (s->pf_of[slot] >= 0) {
                s->pf[s->pf_of[slot]].gen = g;
                continue;
            }
            if (s->n_pf_free == 0) {
                full = 1;
                break;
            }
            uint32_t i = s->pf_stack[--s->n_pf_free];
            ssd_pf *e = &s->pf[i];
            e->slot = slot;
            e->phys = s->phys[slot];
            e->done = 0;
            e->err = 0;
            e->pinned = 0;
            e->stale = 0;
            e->gen = g;
            if (!ssd_pf_sqe(s, i)) {
                s->pf_stack[s->n_pf_free++] = i;
                full = 1;
                break;
            }
            e->state = SSD_PF_FLIGHT;
            s->pf_of[slot] = (int32_t)i;
            s->pf_inflight++;
            queued++;
        }
        if (queued) io_uring_submit(&s->pf_ring);
        pthread_mutex_unlock(&s->pf_lock);
    }
}

/* Attend: the read-ahead entries of a batch's blocks, pinned (-1: none). */
static void ssd_pf_take(ssd *s, ssd_io *io, int set, const pam_tier_block *blocks, int64_t b0, int nb) {
    for (int i = 0; i < nb; i++) io->req[set][i].pf = -1;
    if (atomic_load(&s->pf_init) <= 0) return;
    pthread_mutex_lock(&s->pf_lock);
    ssd_pf_poll(s);
    for (int i = 0; i < nb; i++) {
        uint32_t slot = blocks[b0 + i].slot;
        int32_t k = s->pf_of[slot];
        if (k < 0) continue;
        ssd_pf *e = &s->pf[k];
        if (e->stale || e->phys != s->phys[slot]) continue;
        if (e->state == SSD_PF_READY && e->err) { /* failed: read it the usual way */
            if (!e->pinned) ssd_pf_release(s, (uint32_t)k);
            continue;
        }
        e->pinned++;
        io->req[set][i].pf = k;
    }
    pthread_mutex_unlock(&s->pf_lock);
}

/* Attend: waits for the batch's read-ahead entries; a failed one is read
 * synchronously into the batch's own buffer instead. */
static void ssd_pf_wait_set(ssd *s, ssd_io *io, int set) {
    int fallback = 0;
    pthread_mutex_lock(&s->pf_lock);
    for (int i = 0; i < io->n_req[set]; i++) {
        ssd_req *r = &io->req[set][i];
        if (r->pf < 0) continue;
        if (ssd_pf_wait(s, (uint32_t)r->pf) && s->pf[r->pf].err == 0) {
            continue;
        }
        ssd_pf_unpin(s, (uint32_t)r->pf);
        r->pf = -2; /* read below, outside the lock */
        fallback = 1;
    }
    pthread_mutex_unlock(&s->pf_lock);
    for (int i = 0; fallback && i < io->n_req[set]; i++) {
        ssd_req *r = &io->req[set][i];
        if (r->pf != -2) continue;
        r->pf = -1;
        r->buf = io->buf[set] + (size_t)i * s->slot_bytes;
        pam_status st = ssd_pread_slot(s, (uint32_t)(r->off / s->slot_bytes), r->buf);
        r->err = st == PAM_OK ? 0 : -EIO;
        if (st == PAM_OK) atomic_fetch_add_explicit(&s->bytes_read, s->slot_bytes, memory_order_relaxed);
    }
}

/* Attend: the batch is computed (or abandoned); its entries are free. */
static void ssd_pf_drop_set(ssd *s, ssd_io *io, int set) {
    if (atomic_load(&s->pf_init) <= 0) return;
    pthread_mutex_lock(&s->pf_lock);
    for (int i = 0; i < io->n_req[set]; i++)
        if (io->req[set][i].pf >= 0) {
            ssd_pf_unpin(s, (uint32_t)io->req[set][i].pf);
            io->req[set][i].pf = -1;
        }
    pthread_mutex_unlock(&s->pf_lock);
}

/* ---- attend: batched, double-buffered reads -------------------------------- */

static ssd_io *ssd_io_get(ssd *s) {
    pthread_mutex_lock(&s->io_lock);
    ssd_io *io = s->io_free;
    if (io) s->io_free = io->next;
    pthread_mutex_unlock(&s->io_lock);
    if (io) return io;
    io = calloc(1, sizeof *io);
    if (!io) return NULL;
    for (int i = 0; i < 2; i++)
        if (posix_memalign((void **)&io->buf[i], SSD_ALIGN, SSD_BATCH * s->slot_bytes) != 0) {
            free(io->buf[0]);
            free(io);
            return NULL;
        }
    if (s->uring) io->ring_ok = io_uring_queue_init(2 * SSD_BATCH, &io->ring, 0) == 0;
    return io;
}

static void ssd_io_destroy(ssd_io *io) {
    if (io->ring_ok) io_uring_queue_exit(&io->ring);
    free(io->buf[0]);
    free(io->buf[1]);
    free(io);
}

static void ssd_io_put(ssd *s, ssd_io *io) {
    pthread_mutex_lock(&s->io_lock);
    io->next = s->io_free;
    s->io_free = io;
    pthread_mutex_unlock(&s->io_lock);
}

static void ssd_sqe_read(ssd *s, ssd_io *io, int set, int i) {
    ssd_req *r = &io->req[set][i];
    struct io_uring_sqe *sqe = io_uring_get_sqe(&io->ring);
    if (!sqe) { /* not expected: each request owns at most one of 2*SSD_BATCH entries */
        io_uring_submit(&io->ring);
        sqe = io_uring_get_sqe(&io->ring);
    }
    io_uring_prep_read(sqe, s->fd, r->buf + r->done, r->len - r->done, r->off + r->done);
    io_uring_sqe_set_data64(sqe, (uint64_t)(set * SSD_BATCH + i));
}

/* Starts the reads of blocks [b0, b0+nb) into buffer set `set`. Without a
 * ring the reads complete here, synchronously. */
static void ssd_submit(ssd *s, ssd_io *io, int set, const pam_tier_block *blocks, int64_t b0, int nb) {
    io->pending[set] = 0;
    io->n_req[set] = nb;
    ssd_pf_take(s, io, set, blocks, b0, nb);
    for (int i = 0; i < nb; i++) {
        ssd_req *r = &io->req[set][i];
        uint32_t slot = blocks[b0 + i].slot;
        r->off = ssd_off(s, s->phys[slot]);
        r->buf = io->buf[set] + (size_t)i * s->slot_bytes;
        r->len = (uint32_t)s->slot_bytes;
        r->done = 0;
        r->err = 0;
        if (r->pf >= 0) { /* read ahead: its buffer, once the read lands */
            r->buf = s->pf[r->pf].buf;
            r->done = r->len;
        } else if (io->ring_ok) {
            ssd_sqe_read(s, io, set, i);
            io->pending[set]++;
        } else {
            pam_status st = ssd_pread_slot(s, s->phys[slot], r->buf);
            r->err = st == PAM_OK ? 0 : -EIO;
        }
    }
    if (io->ring_ok && nb > 0) io_uring_submit(&io->ring);
}

/* Waits until every read of `set` is complete (handling completions of the
 * other set on the way). */
static void ssd_wait(ssd *s, ssd_io *io, int set) {
    while (io->pending[set] > 0) {
        struct io_uring_cqe *cqe;
        int rc = io_uring_wait_cqe(&io->ring, &cqe);
        if (rc == -EINTR) continue;
        if (rc < 0) { /* the ring itself failed: fail everything outstanding */
            for (int st = 0; st < 2; st++)
                for (int i = 0; i < SSD_BATCH; i++)
                    if (io->req[st][i].done < io->req[st][i].len && !io->req[st][i].err)
                        io->req[st][i].err = rc;
            io->pending[0] = io->pending[1] = 0;
            return;
        }
        uint64_t ud = io_uring_cqe_get_data64(cqe);
        int res = cqe->res;
        io_uring_cqe_seen(&io->ring, cqe);
        int rs = (int)(ud / SSD_BATCH), ri = (int)(ud % SSD_BATCH);
        ssd_req *r = &io->req[rs][ri];
        if (res == -EINTR || res == -EAGAIN) {
            ssd_sqe_read(s, io, rs, ri);
            io_uring_submit(&io->ring);
            continue;
        }
        res = ssd_fault_read(s, res, r->len - r->done);
        if (res <= 0) {
            r->err = res < 0 ? res : -ENODATA;
            io->pending[rs]--;
            continue;
        }
        r->done += (uint32_t)res;
        if (r->done < r->len) { /* short read: ask for the rest */
            ssd_sqe_read(s, io, rs, ri);
            io_uring_submit(&io->ring);
            continue;
        }
        io->pending[rs]--;
    }
}

static pam_status ssd_attend(void *impl, const pam_tier_attn *r) {
    ssd *s = impl;
    const int B = s->sh.block_tokens, D = s->sh.head_dim, H = s->sh.n_head_kv;
    if (r->n_head <= 0 || r->n_head % H != 0)
        return PAM_ERR(PAM_ERR_INVALID, "ssd tier: %d query heads for %d KV heads", r->n_head, H);
    const int nq = r->n_head / H;
    for (int64_t b = 0; b < r->n_blocks; b++) {
        uint32_t slot = r->blocks[b].slot;
        if (slot >= s->cap || !s->used[slot] || r->blocks[b].n_tokens < 1 ||
            r->blocks[b].n_tokens > s->hi[slot])
            return PAM_ERR(PAM_ERR_INVALID, "ssd tier: attend over %d tokens of slot %u (holds %d)",
                           r->blocks[b].n_tokens, slot, slot < s->cap ? s->hi[slot] : 0);
    }
    int64_t t0 = pam_time_ns();
    for (int g = 0; g < r->n_head; g++) {
        r->m[g] = -INFINITY;
        r->l[g] = 0.0f;
    }
    memset(r->o, 0, sizeof(float) * (size_t)r->n_head * (size_t)D);
    if (r->n_blocks == 0) return PAM_OK;
    float *sc = malloc(sizeof(float) * ((size_t)nq * B + 2 * (size_t)nq + (size_t)nq * D));
    ssd_io *io = sc ? ssd_io_get(s) : NULL;
    if (!io) {
        free(sc);
        return PAM_ERR(PAM_ERR_NOMEM, "ssd tier: attention buffers");
    }
    float *bm = sc + (size_t)nq * B, *bl = bm + nq, *bo = bl + nq;
    int64_t n_batches = (r->n_blocks + SSD_BATCH - 1) / SSD_BATCH, n_from_pf = 0;
    pam_status st = PAM_OK;
    io->n_req[0] = io->n_req[1] = 0;
    /* With a ring, batch 0 starts now and batch i+1 while batch i computes;
     * without one, each batch is read synchronously when its turn comes. */
    if (io->ring_ok) ssd_submit(s, io, 0, r->blocks, 0, (int)(r->n_blocks < SSD_BATCH ? r->n_blocks : SSD_BATCH));
    for (int64_t bi = 0; bi < n_batches; bi++) {
        int set = (int)(bi & 1);
        int64_t b0 = bi * SSD_BATCH;
        int nb = (int)(r->n_blocks - b0 < SSD_BATCH ? r->n_blocks - b0 : SSD_BATCH);
        if (bi + 1 < n_batches && st == PAM_OK) {
            int64_t b1 = b0 + SSD_BATCH;
            int nb1 = (int)(r->n_blocks - b1 < SSD_BATCH ? r->n_blocks - b1 : SSD_BATCH);
            if (io->ring_ok) ssd_submit(s, io, set ^ 1, r->blocks, b1, nb1);
        }
        if (io->ring_ok) ssd_wait(s, io, set);
        else if (st == PAM_OK) ssd_submit(s, io, set, r->blocks, b0, nb);
        ssd_pf_wait_set(s, io, set);
        for (int i = 0; i < nb && st == PAM_OK; i++) {
            ssd_req *q = &io->req[set][i];
            uint32_t slot = r->blocks[b0 + i].slot;
            n_from_pf += q->pf >= 0;
            if (q->err) {
                atomic_fetch_add_explicit(&s->n_errors, 1, memory_order_relaxed);
                st = PAM_ERR(PAM_ERR_IO, "ssd tier: read of slot %u at offset %llu of %s: %s", slot,
                             (unsigned long long)q->off, s->path, strerror(-q->err));
                break;
            }
            st = ssd_verify(s, q->buf, slot, s->phys[slot]);
            if (st != PAM_OK) break;
            int n = r->blocks[b0 + i].n_tokens;
            int64_t b = b0 + i;
            for (int h = 0; h < H; h++) {
                pam_attn_partial_f16(r->q + (size_t)h * nq * D, nq, D, r->scale, ssd_k(s, q->buf, h),
                                     ssd_v(s, q->buf, h), (size_t)D, n, bm, bl, bo, sc);
                if (r->blk_m && r->blk_l)
                    for (int g = 0; g < nq; g++) {
                        r->blk_m[b * r->n_head + h * nq + g] = bm[g];
                        r->blk_l[b * r->n_head + h * nq + g] = bl[g];
                    }
                pam_attn_merge(nq, D, r->m + h * nq, r->l + h * nq, r->o + (size_t)h * nq * D, bm, bl, bo);
            }
        }
        ssd_pf_drop_set(s, io, set);
        if (st != PAM_OK) {
            /* Drain the other set before the buffers go back to the pool. */
            if (io->ring_ok) ssd_wait(s, io, set ^ 1);
            ssd_pf_drop_set(s, io, set ^ 1);
            break;
        }
    }
    if (!s->direct)
        for (int64_t b = 0; b < r->n_blocks; b++)
            ssd_drop_cache(s, ssd_off(s, s->phys[r->blocks[b].slot]), s->slot_bytes);
    ssd_io_put(s, io);
    free(sc);
    if (st == PAM_OK)
        atomic_fetch_add_explicit(&s->bytes_read, (uint64_t)(r->n_blocks - n_from_pf) * s->slot_bytes,
                                  memory_order_relaxed); /* read-ahead counted its own reads */
    atomic_fetch_add_explicit(&s->attend_ns, pam_time_ns() - t0, memory_order_relaxed);
    return st;
}

static void ssd_stats(void *impl, pam_tier_stats *out) {
    ssd *s = impl;
    out->blocks_used = s->n_used;
    out->blocks_capacity = s->cap;
    out->bytes_read = atomic_load(&s->bytes_read);
    out->bytes_written = atomic_load(&s->bytes_written);
    out->n_errors = atomic_load(&s->n_errors);
    out->attend_ns = atomic_load(&s->attend_ns);
}

static void ssd_close(void *impl) {
    ssd *s = impl;
    if (!s) return;
    while (s->io_free) {
        ssd_io *io = s->io_free;
        s->io_free = io->next;
        ssd_io_destroy(io);
    }
    pthread_mutex_destroy(&s->io_lock);
    if (atomic_load(&s->pf_init) > 0) {
        /* reads still in flight write into pf_mem: wait for them first */
        while (s->pf_inflight > 0) {
            struct io_uring_cqe *cqe;
            int rc = io_uring_wait_cqe(&s->pf_ring, &cqe);
            if (rc == -EINTR) continue;
            if (rc < 0) break;
            ssd_pf_complete(s, cqe);
        }
        io_uring_queue_exit(&s->pf_ring);
        if (s->pf_inflight > 0) s->pf_mem = NULL; /* the ring failed: leak rather than free a DMA target */
    }
    free(s->pf_mem);
    free(s->pf);
    free(s->pf_stack);
    free(s->pf_of);
    pthread_mutex_destroy(&s->pf_lock);
    if (s->fd >= 0) close(s->fd);
    free(s->phys);
    free(s->hi);
    free(s->used);
    free(s->lfree);
    free(s->pfree);
    free(s->wbuf);
    free(s);
}

static const pam_tier_ops ssd_ops = {
    .kind = "ssd",
    .alloc = ssd_alloc,
    .free = ssd_free,
    .write = ssd_write,
    .read = ssd_read,
    .attend = ssd_attend,
    .stats = ssd_stats,
    .close = ssd_close,
    .prefetch = ssd_prefetch,
};

/* Creates the file (unlinked at once: nothing is left behind if the process
 * dies) and decides between O_DIRECT and buffered I/O with one aligned probe
 * write and read. */
static pam_status ssd_open_file(ssd *s, const char *dir, unsigned flags) {
    char tmpl[PATH_MAX];
    if (snprintf(tmpl, sizeof tmpl, "%s/pam-kv-XXXXXX", dir) >= (int)sizeof tmpl)
        return PAM_ERR(PAM_ERR_INVALID, "ssd tier: directory path too long");
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return PAM_ERR(PAM_ERR_IO, "ssd tier: cannot create directory %s: %s", dir, strerror(errno));
    int tfd = mkstemp(tmpl);
    if (tfd < 0) return PAM_ERR(PAM_ERR_IO, "ssd tier: cannot create a file in %s: %s", dir, strerror(errno));
    snprintf(s->path, sizeof s->path, "%s", tmpl);
    s->direct = 0;
    if (!(flags & PAM_SSD_BUFFERED)) {
        int dfd = open(tmpl, O_RDWR | O_DIRECT | O_CLOEXEC);
        if (dfd >= 0) {
            /* Some filesystems accept the flag at open and refuse the I/O. */
            uint8_t *probe = NULL;
            int ok = posix_memalign((void **)&probe, SSD_ALIGN, SSD_ALIGN) == 0;
            if (ok) {
                memset(probe, 0, SSD_ALIGN);
                ok = pwrite(dfd, probe, SSD_ALIGN, 0) == SSD_ALIGN && pread(dfd, probe, SSD_ALIGN, 0) == SSD_ALIGN;
            }
            int e = errno;
            free(probe);
            if (ok) {
                close(tfd);
                tfd = dfd;
                s->direct = 1;
            } else {
                close(dfd);
                fprintf(stderr, "pam: ssd tier: %s refuses O_DIRECT I/O (%s); using buffered I/O with posix_fadvise(DONTNEED)\n",
                        dir, strerror(e));
            }
        } else {
            fprintf(stderr, "pam: ssd tier: %s refuses O_DIRECT (%s); using buffered I/O with posix_fadvise(DONTNEED)\n",
                    dir, strerror(errno));
        }
    }
    unlink(tmpl);
    s->fd = tfd;
    return PAM_OK;
}

pam_status pam_tier_ssd_open_ex(const pam_kv_shape *shape, const char *dir, uint64_t capacity_bytes,
                                unsigned flags, pam_tier **out) {
    *out = NULL;
    const int B = shape->block_tokens, D = shape->head_dim, H = shape->n_head_kv;
    if (B < 1 || D < 1 || H < 1) return PAM_ERR(PAM_ERR_INVALID, "ssd tier: bad shape");
    if (!dir || !*dir) return PAM_ERR(PAM_ERR_INVALID, "ssd tier: no directory given");
    ssd *s = calloc(1, sizeof *s);
    pam_tier *t = calloc(1, sizeof *t);
    if (!s || !t) {
        free(s);
        free(t);
        return PAM_ERR(PAM_ERR_NOMEM, "ssd tier");
    }
    s->fd = -1;
    pthread_mutex_init(&s->io_lock, NULL);
    pthread_mutex_init(&s->pf_lock, NULL);
    s->sh = *shape;
    s->row = (size_t)H * (size_t)D;
    s->payload_bytes = 2 * (size_t)B * s->row * sizeof(uint16_t);
    s->slot_bytes = (SSD_HDR + s->payload_bytes + SSD_ALIGN - 1) & ~(size_t)(SSD_ALIGN - 1);
    s->cap = capacity_bytes / s->slot_bytes;
    if (s->cap > UINT32_MAX - 2) s->cap = UINT32_MAX - 2;
    s->wbuf_slot = -1;
    if (s->cap == 0) {
        size_t sb = s->slot_bytes;
        ssd_close(s);
        free(t);
        return PAM_ERR(PAM_ERR_INVALID, "ssd tier: %llu bytes hold no block of %zu bytes",
                       (unsigned long long)capacity_bytes, sb);
    }
    s->n_phys = s->cap + 1;
    s->phys = malloc(sizeof(uint32_t) * s->cap);
    s->hi = calloc(s->cap, sizeof(int32_t));
    s->used = calloc(s->cap, 1);
    s->lfree = malloc(sizeof(uint32_t) * s->cap);
    s->pfree = malloc(sizeof(uint32_t) * s->n_phys);
    if (posix_memalign((void **)&s->wbuf, SSD_ALIGN, s->slot_bytes) != 0) s->wbuf = NULL;
    if (!s->phys || !s->hi || !s->used || !s->lfree || !s->pfree || !s->wbuf) {
        ssd_close(s);
        free(t);
        return PAM_ERR(PAM_ERR_NOMEM, "ssd tier: tables for %llu blocks", (unsigned long long)capacity_bytes);
    }
    for (uint64_t i = 0; i < s->cap; i++) {
        s->lfree[i] = (uint32_t)(s->cap - 1 - i);
        s->phys[i] = SSD_NONE;
    }
    s->n_lfree = s->cap;
    pam_status st = ssd_open_file(s, dir, flags);
    if (st != PAM_OK) {
        ssd_close(s);
        free(t);
        return st;
    }
    s->uring = 0;
    if (!(flags & PAM_SSD_NO_URING)) {
        struct io_uring ring;
        int rc = io_uring_queue_init(2 * SSD_BATCH, &ring, 0);
        if (rc == 0) {
            io_uring_queue_exit(&ring);
            s->uring = 1;
        } else {
            fprintf(stderr, "pam: ssd tier: io_uring unavailable (%s); using synchronous reads\n", strerror(-rc));
        }
    }
    t->ops = &ssd_ops;
    t->impl = s;
    snprintf(t->name, sizeof t->name, "ssd:%.40s%s%s", dir, s->direct ? "" : "+buffered",
             s->uring ? "" : "+sync");
    t->capacity_blocks = s->cap;
    t->block_bytes = s->slot_bytes;
    t->read_gbps = SSD_DEFAULT_GBPS;
    t->exact = 1;
    *out = t;
    return PAM_OK;
}

pam_status pam_tier_ssd_open(const pam_kv_shape *shape, const char *dir, uint64_t capacity_bytes,
                             pam_tier **out) {
    return pam_tier_ssd_open_ex(shape, dir, capacity_bytes, 0, out);
}
