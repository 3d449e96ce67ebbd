/* ssd: KV blocks in one file on local disk (DESIGN.md §2.1, §2.6).
 *
 * File layout: physical slots of slot_bytes, the payload rounded up to 4 KiB,
 * so every slot is an aligned O_DIRECT extent (16 tokens x 8 KV heads x 64
 * dims of f16: exactly the 32 KiB payload). A slot holds the payload only:
 * H head runs of the tier's KV type (kernels/attnkv.h; f16: K transposed
 * [D][B], element (d, t) at d*B + t, then V [B][D]), per KV head contiguous,
 * so the attention kernel (pam_kvh_partial) streams each head straight from
 * the read buffer. ssd_head is the only place that knows this layout.
 *
 * Metadata lives in memory, per physical slot: the logical slot the copy
 * there belongs to, its n_tokens and a 64-bit checksum of the payload
 * (pam_checksum64: eight-lane multiply-accumulate, vectorised with AVX2 or
 * AVX-512, the same value at every ISA level), seeded with (logical slot,
 * n_tokens), so a copy written for another slot or length does not verify
 * either. It is recorded only once the copy's write completed, and checked
 * on every read and attend (mismatch -> PAM_ERR_CORRUPT naming the slot,
 * counted in n_errors). The file is unlinked at open and read by nobody
 * else, so the payload is all that needs to be on disk.
 *
 * Recent window: a block that is not full yet (a sequence's tail, written a
 * token at a time during decode) lives in an image in host memory, not on
 * disk, as dramq keeps its tails: each token would otherwise cost a read of
 * the old copy and a write of the whole slot, and attention over the tail
 * would wait for a fresh read queued behind every read-ahead in flight. The
 * image goes to disk, through the write path below, when the write that
 * fills the block comes. Such blocks have no physical slot (phys ==
 * SSD_NONE) and are served from memory, not verified (they were never on
 * disk), and not counted as bytes read. The images are host memory beyond
 * capacity_blocks * block_bytes: one per partially filled block. In a lossy
 * KV type (bf16, q8, q4) the image is f16 (tail_f16) and is encoded in the
 * type only when the block fills, as the dram tier keeps its tails, so the
 * newest tokens stay exact.
 *
 * Logical slots (what callers hold) map to physical slots. A write never
 * overwrites the only valid copy: it writes the new image to a free physical
 * slot and only then records its metadata, switches the mapping and frees
 * the old one, so a failed or torn write leaves the previous contents
 * readable. There is always one spare physical slot (n_phys = capacity + 1).
 *
 * Placement: free physical slots are handed out lowest first (a min-heap),
 * so blocks written one after another land in ascending adjacent slots: a
 * block written whole takes the next slot; one written token by token
 * alternates between two slots, and the copy left free is again the lowest,
 * so the next block still lands next to it; blocks written after a free fill
 * the hole in ascending order. The KV manager writes a sequence's blocks of
 * one layer in logical order when it fills a cache (pam_kvm_fill_synthetic:
 * layer by layer) and in runs of 256 tokens per layer during prefill (one
 * forward chunk), so those runs are adjacent on disk. Blocks that grow during
 * decode, or arrive by migration, land wherever a slot is free.
 *
 * The file grows lazily in chunks with fallocate when alloc needs room, so a
 * full disk (ENOSPC, EFBIG from a file size limit) is PAM_ERR_FULL at alloc,
 * never a failed write later. Invariant after a successful alloc:
 * grown_phys >= n_used + 1.
 *
 * Reads use io_uring with O_DIRECT into 4 KiB-aligned buffers. Consecutive
 * blocks of a request whose copies lie in ascending adjacent physical slots
 * are read with one I/O into adjacent buffers, up to SSD_IO_MAX bytes; each
 * block is still verified on its own, so a corrupt block fails only itself.
 * attend splits its block list into batches of about SSD_BATCH_BYTES and
 * double-buffers: the reads of batch i+1 are in flight while batch i is
 * verified and computed. Short reads (which may end anywhere in a multi-slot
 * read) are resubmitted for the remainder; EIO is PAM_ERR_IO naming the slot
 * and offset. If the filesystem refuses O_DIRECT the tier falls back to
 * buffered I/O with posix_fadvise(DONTNEED) (and says so in its name and on
 * stderr); if io_uring is unavailable, to synchronous pread.
 *
 * Read-ahead (prefetch hints): hinted blocks are read on a ring of their own
 * into up to SSD_PF_BYTES of buffers (set up at the first hint), adjacent
 * blocks again with one I/O: the buffers are entries of one array, and a
 * read takes a run of free adjacent entries (next fit from a cursor, so the
 * array is used like a ring as hints come and go). Invariant: pf_of[slot]
 * names an entry only while that entry holds, or is reading, the slot's
 * current physical copy: write and free drop it (an entry still in flight is
 * marked stale and freed when its read lands), so a block is never served
 * from an out-of-date copy even when a rewrite returns to the same physical
 * slot. attend verifies a read-ahead buffer like its own reads, and reads a
 * block itself when its read-ahead failed.
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
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fp16.h"
#include "core/status.h"
#include "core/timing.h"
#include "kernels/attention.h"
#include "kernels/checksum.h"
#include "kernels/attnkv.h"
#include "kv/tier.h"

#define SSD_MAGIC 0x4b4d4150u /* "PAMK": part of the checksum seed */
#define SSD_VERSION 2u
#define SSD_ALIGN 4096
#define SSD_IO_MAX (1u << 20)     /* bytes per read of adjacent slots (a bigger slot: one slot) */
/* An attend batch: SSD_BATCH_BYTES of blocks (two reads of SSD_IO_MAX, so two
 * to four are in flight while a batch computes), at most SSD_BATCH_MAX. */
#define SSD_BATCH_BYTES (2u << 20)
#define SSD_BATCH_MAX 64
#define SSD_GROW_BYTES (4u << 20) /* file growth step */
#define SSD_DEFAULT_GBPS 2.0      /* until the KV manager measures one */
#define SSD_PF_BYTES (128u << 20) /* read-ahead buffers: three layers of a 16k-token llama-1b sequence */
#define SSD_PF_MAX 4096           /* read-ahead entries at most */
#define SSD_NONE UINT32_MAX

/* What is known about the copy in one physical slot (meaningful while a
 * logical slot maps there). */
typedef struct ssd_meta {
    uint64_t checksum; /* of the payload, seeded with (slot, n_tokens) */
    uint32_t slot;     /* logical slot, SSD_NONE when free */
    uint32_t n_tokens;
} ssd_meta;

/* One read of adjacent slots into adjacent buffers (possibly resubmitted
 * after a short completion). */
typedef struct ssd_run {
    uint64_t off;
    uint8_t *buf;
    uint32_t len, done;
    int err; /* negative errno, or 0 */
} ssd_run;

/* One block of an attend batch. */
typedef struct ssd_blk {
    uint8_t *buf;
    uint32_t phys;
    int32_t run; /* its read in the batch's runs, or -1 */
    int32_t pf;  /* read-ahead entry whose buffer it uses, or -1 */
    int err;     /* of a read outside the runs (a failed read-ahead read again) */
    int tail;    /* served from the recent-window image */
} ssd_blk;

/* Per-attend I/O context: a ring and two sets of batch buffers. */
typedef struct ssd_io {
    struct io_uring ring;
    int ring_ok;
    uint8_t *buf[2];
    ssd_blk blk[2][SSD_BATCH_MAX];
    ssd_run run[2][SSD_BATCH_MAX];
    int n_blk[2], n_run[2], pending[2];
    uint32_t cap; /* blocks each buffer set holds */
    struct ssd_io *next;
} ssd_io;

/* One read-ahead buffer (prefetch). States: free, in flight (part of a read
 * queued on the read-ahead ring: entries head..head+run_n-1 read phys..
 * phys+run_n-1 with one I/O), ready (done, with err 0 or a negative errno).
 * An entry in flight or pinned by an attend keeps its buffer; one whose slot
 * was written or freed meanwhile is stale and becomes free when its read
 * completes. */
enum { SSD_PF_FREE = 0, SSD_PF_FLIGHT, SSD_PF_READY };
typedef struct ssd_pf {
    uint8_t *buf;
    uint32_t slot, phys;
    int state, err, pinned, stale;
    uint64_t gen;             /* the hint that asked for it last */
    uint32_t run_n, run_done; /* on the first entry of a read in flight */
} ssd_pf;

typedef struct ssd {
    pam_kv_shape sh;
    pam_kv_type type;
    size_t row, run_bytes, payload_bytes, slot_bytes; /* run: one KV head of a block */
    int tail_f16;           /* lossy type: tail images are f16, of tail_bytes */
    size_t tail_run_bytes, tail_bytes;
    float *conv;            /* tail_f16: a filled tail decoded, before encoding (write is single-threaded) */
    uint32_t batch, io_slots; /* blocks per attend batch, slots per read at most */
    int fd, direct, uring;
    char path[PATH_MAX];
    uint64_t cap, n_phys, grown_phys, n_used;
    uint32_t *phys;  /* logical -> physical, SSD_NONE until first write */
    int32_t *hi;     /* logical: tokens written */
    uint8_t *used;   /* logical: allocated */
    uint32_t *lfree; /* free logical slots */
    uint64_t n_lfree;
    ssd_meta *meta;  /* physical: the copy there */
    uint32_t *pheap; /* free physical slots below grown_phys, a min-heap */
    uint64_t n_pheap;
    uint8_t **tail;  /* logical: the image of a block not yet full, or NULL */
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
    uint32_t n_pf, n_pf_free, pf_cursor, pf_inflight; /* pf_inflight: reads, not entries */
    int32_t *pf_of; /* logical slot -> entry holding it, or -1 */
    uint64_t pf_gen;
    /* fault hook */
    _Atomic int inj_kind;
    uint64_t inj_nth;
    int inj_persistent;
    _Atomic uint64_t inj_count;
    _Atomic uint64_t bytes_read, bytes_written, n_errors, n_reads;
    _Atomic int64_t attend_ns;
} ssd;

static const pam_tier_ops ssd_ops;
static void ssd_pf_forget(ssd *s, uint32_t slot);
static int32_t ssd_pf_claim(ssd *s, uint32_t slot);
static void ssd_pf_unpin(ssd *s, uint32_t i);

/* ---- checksum ------------------------------------------------------------- */

/* The checksum of a copy of logical slot `slot` holding n_tokens tokens. The
 * seed is a bijection of (slot, n_tokens) for any 32-bit slot and n_tokens
 * below 2^32, and every lane starts from it, so equal payloads of different
 * slots or lengths get different checksums (up to hash collisions). */
static uint64_t ssd_payload_hash(const ssd *s, const uint8_t *payload, uint32_t slot, uint32_t n_tokens) {
    uint64_t seed = ((uint64_t)SSD_MAGIC << 32 | SSD_VERSION) ^ ((uint64_t)slot << 32 | n_tokens);
    return pam_checksum64(payload, s->payload_bytes, seed);
}

/* ---- fault hook ----------------------------------------------------------- */

/* Counts n events of `kind` (n > 1: one read covering several slots); 1 if
 * the nth (or, persistent, a later one) is among them. */
static int ssd_fault_n(ssd *s, pam_ssd_fault kind, uint64_t n) {
    if (atomic_load_explicit(&s->inj_kind, memory_order_acquire) != (int)kind) return 0;
    uint64_t c = atomic_fetch_add(&s->inj_count, n);
    return (c <= s->inj_nth && s->inj_nth < c + n) || (s->inj_persistent && c + n > s->inj_nth);
}
static int ssd_fault(ssd *s, pam_ssd_fault kind) { return ssd_fault_n(s, kind, 1); }

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

pam_status pam_tier_ssd_reads(pam_tier *t, uint64_t *n_reads) {
    if (!t || t->ops != &ssd_ops) return PAM_ERR(PAM_ERR_INVALID, "read count: not an ssd tier");
    *n_reads = atomic_load(&((ssd *)t->impl)->n_reads);
    return PAM_OK;
}

/* ---- low-level I/O -------------------------------------------------------- */

static uint64_t ssd_off(const ssd *s, uint32_t phys) { return (uint64_t)phys * s->slot_bytes; }

/* Applies the read fault hook to a completion of res bytes of a read that
 * asked for bytes done..len of a run of slots. EIO_READ counts every slot the
 * asked range touches and fails the whole read; SHORT_READ cuts a complete
 * read, where it can inside a slot (a short read may end anywhere). */
static int ssd_fault_read(ssd *s, int res, uint32_t done, uint32_t len) {
    uint32_t want = len - done;
    if (res > 0 && ssd_fault_n(s, PAM_SSD_FAULT_EIO_READ, (len - 1) / s->slot_bytes - done / s->slot_bytes + 1))
        return -EIO;
    if (res > 0 && (uint32_t)res == want && ssd_fault(s, PAM_SSD_FAULT_SHORT_READ)) {
        /* Keep the remainder aligned, as a real short O_DIRECT read would. */
        uint32_t step = s->direct ? SSD_ALIGN : 1;
        uint32_t part = (want / 2) / step * step;
        if ((done + part) % s->slot_bytes == 0 && part > step) part -= step;
        if (part > 0) return (int)part;
    }
    return res;
}

/* Synchronous read of n adjacent slots from phys on, with short-read
 * continuation. */
static pam_status ssd_pread_run(ssd *s, uint32_t phys, uint32_t n, uint8_t *buf) {
    uint64_t off = ssd_off(s, phys);
    uint32_t done = 0, len = n * (uint32_t)s->slot_bytes;
    while (done < len) {
        atomic_fetch_add_explicit(&s->n_reads, 1, memory_order_relaxed);
        ssize_t r = pread(s->fd, buf + done, len - done, (off_t)(off + done));
        int res = r < 0 ? -errno : (int)r;
        if (res == -EINTR) continue;
        res = ssd_fault_read(s, res, done, len);
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

/* Verifies a payload read from physical slot phys as the current copy of
 * logical slot `slot`, against the metadata recorded when it was written. */
static pam_status ssd_verify(ssd *s, uint8_t *buf, uint32_t slot, uint32_t phys) {
    if (ssd_fault(s, PAM_SSD_FAULT_CORRUPT)) buf[s->payload_bytes / 2] ^= 0x40;
    const ssd_meta *m = &s->meta[phys];
    if (m->slot != slot || m->n_tokens != (uint32_t)s->hi[slot] ||
        m->checksum != ssd_payload_hash(s, buf, slot, m->n_tokens)) {
        atomic_fetch_add_explicit(&s->n_errors, 1, memory_order_relaxed);
        return PAM_ERR(PAM_ERR_CORRUPT,
                       "ssd tier: block in slot %u (offset %llu of %s) failed its checksum", slot,
                       (unsigned long long)ssd_off(s, phys), s->path);
    }
    return PAM_OK;
}

/* ---- free physical slots: a min-heap ---------------------------------------- */

static void ssd_heap_push(ssd *s, uint32_t p) {
    uint32_t *h = s->pheap;
    uint64_t i = s->n_pheap++;
    while (i > 0 && h[(i - 1) / 2] > p) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = p;
}

static uint32_t ssd_heap_pop(ssd *s) {
    uint32_t *h = s->pheap;
    uint32_t top = h[0], last = h[--s->n_pheap];
    uint64_t n = s->n_pheap, i = 0;
    for (;;) {
        uint64_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && h[c + 1] < h[c]) c++;
        if (h[c] >= last) break;
        h[i] = h[c];
        i = c;
    }
    if (n > 0) h[i] = last;
    return top;
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
            for (uint64_t p = s->grown_phys; p < target; p++) ssd_heap_push(s, (uint32_t)p);
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

/* The copy in physical slot p is no longer needed. */
static void ssd_phys_release(ssd *s, uint32_t p) {
    s->meta[p] = (ssd_meta){.slot = SSD_NONE};
    ssd_heap_push(s, p);
}

static void ssd_free(void *impl, uint32_t slot) {
    ssd *s = impl;
    if (slot >= s->cap || !s->used[slot]) return;
    ssd_pf_forget(s, slot);
    if (s->phys[slot] != SSD_NONE) ssd_phys_release(s, s->phys[slot]);
    s->phys[slot] = SSD_NONE;
    s->used[slot] = 0;
    s->hi[slot] = 0;
    s->lfree[s->n_lfree++] = slot;
    s->n_used--;
    free(s->tail[slot]);
    s->tail[slot] = NULL;
    if (s->wbuf_slot == (int64_t)slot) s->wbuf_slot = -1;
}

static pam_status ssd_check_slot(const ssd *s, uint32_t slot) {
    if (slot >= s->cap || !s->used[slot])
        return PAM_ERR(PAM_ERR_INVALID, "ssd tier: slot %u is not allocated", slot);
    return PAM_OK;
}

/* Head h's run (K then V in the tier's KV type) in a slot image. */
static uint8_t *ssd_head(const ssd *s, uint8_t *img, int h) { return img + (size_t)h * s->run_bytes; }
/* Head h's f16 run in a tail image of a lossy type. */
static uint8_t *ssd_tail_head(const ssd *s, uint8_t *img, int h) { return img + (size_t)h * s->tail_run_bytes; }

/* A lossy type's write into a block's f16 tail image (made on the first
 * write). Still not full: done. Filled: the image decoded and encoded in the
 * type into s->wbuf, which the caller writes to disk (*img_out). */
static pam_status ssd_write_tail_f16(ssd *s, uint32_t slot, int32_t off, int32_t n, const float *k, const float *v,
                                     int32_t hi, uint8_t **img_out) {
    const int B = s->sh.block_tokens, D = s->sh.head_dim, H = s->sh.n_head_kv;
    uint8_t *tl = s->tail[slot];
    if (!tl) {
        if (posix_memalign((void **)&tl, SSD_ALIGN, s->tail_bytes) != 0)
            return PAM_ERR(PAM_ERR_NOMEM, "ssd tier: recent-window block");
        memset(tl, 0, s->tail_bytes);
        s->tail[slot] = tl;
    }
    *img_out = NULL;
    if (hi < B) {
        for (int h = 0; h < H; h++)
            pam_kvh_write(PAM_KV_F16, D, B, ssd_tail_head(s, tl, h), off, n, k + (size_t)h * D, v + (size_t)h * D,
                          s->row);
        return PAM_OK;
    }
    /* Filled: the tail's tokens and the new ones, encoded into wbuf. The
     * tail itself is left as it was until the block is on disk, so a failed
     * write keeps the previous contents. */
    float *kb = s->conv, *vb = s->conv + (size_t)B * s->row;
    for (int h = 0; h < H; h++)
        pam_kvh_read(PAM_KV_F16, D, B, ssd_tail_head(s, tl, h), B, kb + (size_t)h * D, vb + (size_t)h * D, s->row);
    memcpy(kb + (size_t)off * s->row, k, sizeof(float) * (size_t)n * s->row);
    memcpy(vb + (size_t)off * s->row, v, sizeof(float) * (size_t)n * s->row);
    s->wbuf_slot = -1;
    memset(s->wbuf, 0, s->slot_bytes);
    for (int h = 0; h < H; h++)
        pam_kvh_write(s->type, D, B, ssd_head(s, s->wbuf, h), 0, B, kb + (size_t)h * D, vb + (size_t)h * D, s->row);
    *img_out = s->wbuf;
    return PAM_OK;
}

static pam_status ssd_write(void *impl, uint32_t slot, int32_t off, int32_t n, const float *k,
                            const float *v) {
    ssd *s = impl;
    const int B = s->sh.block_tokens, D = s->sh.head_dim, H = s->sh.n_head_kv;
    PAM_TRY(ssd_check_slot(s, slot));
    if (off < 0 || n < 1 || off + n > B)
        return PAM_ERR(PAM_ERR_INVALID, "ssd tier: write of tokens %d..%d outside a %d-token block", off,
                       off + n - 1, B);
    int32_t hi = off + n > s->hi[slot] ? off + n : s->hi[slot];
    uint8_t *img = s->wbuf, *tail = s->tail[slot], *fresh = NULL;
    const int encoded = s->tail_f16 && (hi < B || tail); /* the f16 tail path: img gets the whole block */
    if (encoded) {
        /* a block not full before this write has no copy on disk */
        PAM_TRY(ssd_write_tail_f16(s, slot, off, n, k, v, hi, &img));
        if (!img) {
            ssd_pf_forget(s, slot);
            if (s->phys[slot] != SSD_NONE) ssd_phys_release(s, s->phys[slot]);
            s->phys[slot] = SSD_NONE;
            if (s->wbuf_slot == (int64_t)slot) s->wbuf_slot = -1;
            s->hi[slot] = hi;
            return PAM_OK;
        }
    } else if (hi < B && !tail) {
        /* Still not full: the block stays (or becomes) a recent-window image.
         * A new image is built aside and installed only when complete. */
        if (posix_memalign((void **)&fresh, SSD_ALIGN, s->slot_bytes) != 0)
            return PAM_ERR(PAM_ERR_NOMEM, "ssd tier: recent-window block");
        img = fresh;
    } else if (hi < B) {
        img = tail;
    } else if (tail) {
        memcpy(img, tail, s->slot_bytes);
    }
    if (encoded) {
        /* img holds the whole block already */
    } else if (!tail && s->wbuf_slot != (int64_t)slot) { /* the old image: from disk, or none */
        s->wbuf_slot = -1;
        if (s->phys[slot] != SSD_NONE && !(off == 0 && n >= s->hi[slot])) {
            pam_status st = ssd_pread_run(s, s->phys[slot], 1, img);
            if (st == PAM_OK) st = ssd_verify(s, img, slot, s->phys[slot]);
            else atomic_fetch_add_explicit(&s->n_errors, 1, memory_order_relaxed);
            if (st != PAM_OK) {
                free(fresh);
                return st;
            }
            ssd_drop_cache(s, ssd_off(s, s->phys[slot]), s->slot_bytes);
        } else {
            memset(img, 0, s->slot_bytes);
        }
    } else if (fresh) { /* the old image is in wbuf */
        memcpy(img, s->wbuf, s->slot_bytes);
    }
    /* From here img differs from the stored copy until the write succeeds. */
    if (img == s->wbuf) s->wbuf_slot = -1;
    if (!encoded)
        for (int h = 0; h < H; h++)
            pam_kvh_write(s->type, D, B, ssd_head(s, img, h), off, n, k + (size_t)h * D, v + (size_t)h * D, s->row);
    if (hi < B) {
        /* The image is the block now: an older copy on disk is dropped. */
        ssd_pf_forget(s, slot);
        if (s->phys[slot] != SSD_NONE) ssd_phys_release(s, s->phys[slot]);
        s->phys[slot] = SSD_NONE;
        if (fresh) s->tail[slot] = fresh;
        if (s->wbuf_slot == (int64_t)slot) s->wbuf_slot = -1;
        s->hi[slot] = hi;
        return PAM_OK;
    }
    uint64_t sum = ssd_payload_hash(s, img, slot, (uint32_t)hi);

    if (s->n_pheap == 0) /* cannot happen while grown_phys >= n_used + 1 */
        return PAM_ERR(PAM_ERR_FULL, "ssd tier: no free physical slot");
    uint32_t p = s->pheap[0]; /* the lowest free slot; taken only once written */
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
    /* The new copy is on disk: record it, switch, then release the old one. */
    ssd_pf_forget(s, slot);
    (void)ssd_heap_pop(s);
    s->meta[p] = (ssd_meta){.checksum = sum, .slot = slot, .n_tokens = (uint32_t)hi};
    if (s->phys[slot] != SSD_NONE) ssd_phys_release(s, s->phys[slot]);
    s->phys[slot] = p;
    s->hi[slot] = hi;
    s->wbuf_slot = slot;
    free(s->tail[slot]); /* full and on disk: the window moves on */
    s->tail[slot] = NULL;
    atomic_fetch_add_explicit(&s->bytes_written, s->slot_bytes, memory_order_relaxed);
    return PAM_OK;
}

static pam_status ssd_read(void *impl, uint32_t slot, int32_t n, float *k, float *v) {
    ssd *s = impl;
    const int D = s->sh.head_dim, H = s->sh.n_head_kv;
    PAM_TRY(ssd_check_slot(s, slot));
    if (n < 1 || n > s->hi[slot])
        return PAM_ERR(PAM_ERR_INVALID, "ssd tier: read of %d tokens from a block holding %d", n, s->hi[slot]);
    uint8_t *img = s->tail[slot];
    pam_status st = PAM_OK;
    int32_t pf = img ? -1 : ssd_pf_claim(s, slot);
    if (pf >= 0) { /* read ahead (offload hints the blocks it copies) */
        img = s->pf[pf].buf;
        st = ssd_verify(s, img, slot, s->phys[slot]);
    } else if (!img) {
        if (posix_memalign((void **)&img, SSD_ALIGN, s->slot_bytes) != 0)
            return PAM_ERR(PAM_ERR_NOMEM, "ssd tier: read buffer");
        st = ssd_pread_run(s, s->phys[slot], 1, img);
        if (st == PAM_OK) st = ssd_verify(s, img, slot, s->phys[slot]);
        else atomic_fetch_add_explicit(&s->n_errors, 1, memory_order_relaxed);
        if (st == PAM_OK) {
            ssd_drop_cache(s, ssd_off(s, s->phys[slot]), s->slot_bytes);
            atomic_fetch_add_explicit(&s->bytes_read, s->slot_bytes, memory_order_relaxed);
        }
    }
    if (st == PAM_OK) {
        const int f16 = s->tail_f16 && img == s->tail[slot];
        for (int h = 0; h < H; h++)
            pam_kvh_read(f16 ? PAM_KV_F16 : s->type, D, s->sh.block_tokens,
                         f16 ? ssd_tail_head(s, img, h) : ssd_head(s, img, h), n, k + (size_t)h * D, v + (size_t)h * D,
                         s->row);
    }
    if (pf >= 0) {
        pthread_mutex_lock(&s->pf_lock);
        ssd_pf_unpin(s, (uint32_t)pf);
        pthread_mutex_unlock(&s->pf_lock);
    } else if (img != s->tail[slot]) {
        free(img);
    }
    return st;
}

/* ---- read-ahead (prefetch) ------------------------------------------------- */

/* A buffer that reads land in: 2 MiB-aligned and backed by huge pages where
 * the kernel agrees, so a 1 MiB O_DIRECT read is a single segment (in 4 KiB
 * pages it is 256, more than a virtio disk's 254 per request, and is split
 * in two), and pinning its pages for the DMA is cheaper. Freed with free(). */
static uint8_t *ssd_io_alloc(size_t bytes) {
    const size_t huge = (size_t)2 << 20;
    uint8_t *p = NULL;
    if (bytes >= huge) {
        size_t len = (bytes + huge - 1) & ~(huge - 1);
        if (posix_memalign((void **)&p, huge, len) != 0) return NULL;
        (void)madvise(p, len, MADV_HUGEPAGE); /* a hint: 4 KiB pages work too */
        return p;
    }
    return posix_memalign((void **)&p, SSD_ALIGN, bytes) == 0 ? p : NULL;
}

/* Sets up the read-ahead buffers and ring at the first hint (pf_lock held).
 * Tiers that never get a hint (tests, migration-only use) pay nothing. */
static void ssd_pf_setup(ssd *s) {
    uint64_t n = SSD_PF_BYTES / s->slot_bytes;
    if (n > SSD_PF_MAX) n = SSD_PF_MAX;
    if (n > s->cap) n = s->cap;
    if (n < 1) n = 1;
    atomic_store(&s->pf_init, -1);
    s->pf_mem = ssd_io_alloc((size_t)n * s->slot_bytes);
    s->pf = calloc((size_t)n, sizeof *s->pf);
    s->pf_of = malloc((size_t)s->cap * sizeof *s->pf_of);
    if (!s->pf_mem || !s->pf || !s->pf_of || io_uring_queue_init((unsigned)n, &s->pf_ring, 0) != 0) {
        free(s->pf_mem);
        free(s->pf);
        free(s->pf_of);
        s->pf_mem = NULL, s->pf = NULL, s->pf_of = NULL;
        return;
    }
    for (uint64_t i = 0; i < s->cap; i++) s->pf_of[i] = -1;
    s->n_pf = (uint32_t)n;
    for (uint32_t i = 0; i < s->n_pf; i++) s->pf[i].buf = s->pf_mem + (size_t)i * s->slot_bytes;
    s->n_pf_free = s->n_pf;
    s->pf_cursor = 0;
    atomic_store(&s->pf_init, 1);
}

/* Entry i becomes free (pf_lock held; not in flight). */
static void ssd_pf_release(ssd *s, uint32_t i) {
    ssd_pf *e = &s->pf[i];
    if (s->pf_of[e->slot] == (int32_t)i) s->pf_of[e->slot] = -1;
    e->state = SSD_PF_FREE;
    e->pinned = 0;
    e->stale = 0;
    s->n_pf_free++;
}

/* Up to `want` free adjacent entries, the first at *first (pf_lock held):
 * the first free entry from the cursor on (wrapping), and as many free ones
 * after it as there are; 0 when none is free. */
static uint32_t ssd_pf_grab(ssd *s, uint32_t want, uint32_t *first) {
    if (s->n_pf_free == 0) return 0;
    uint32_t i = s->pf_cursor;
    while (s->pf[i].state != SSD_PF_FREE) i = i + 1 == s->n_pf ? 0 : i + 1;
    uint32_t n = 1;
    while (n < want && i + n < s->n_pf && s->pf[i + n].state == SSD_PF_FREE) n++;
    *first = i;
    s->pf_cursor = i + n == s->n_pf ? 0 : i + n;
    return n;
}

/* Queues (the rest of) the read of the entries from `head` on; 0 if the ring
 * has no room. */
static int ssd_pf_sqe(ssd *s, uint32_t head) {
    ssd_pf *e = &s->pf[head];
    struct io_uring_sqe *sqe = io_uring_get_sqe(&s->pf_ring);
    if (!sqe) {
        io_uring_submit(&s->pf_ring);
        sqe = io_uring_get_sqe(&s->pf_ring);
    }
    if (!sqe) return 0;
    io_uring_prep_read(sqe, s->fd, e->buf + e->run_done, (unsigned)(e->run_n * s->slot_bytes - e->run_done),
                       ssd_off(s, e->phys) + e->run_done);
    io_uring_sqe_set_data64(sqe, head);
    atomic_fetch_add_explicit(&s->n_reads, 1, memory_order_relaxed);
    return 1;
}

/* One completion of the read-ahead ring (pf_lock held). */
static void ssd_pf_complete(ssd *s, struct io_uring_cqe *cqe) {
    uint32_t head = (uint32_t)io_uring_cqe_get_data64(cqe);
    int res = cqe->res;
    io_uring_cqe_seen(&s->pf_ring, cqe);
    ssd_pf *h = &s->pf[head];
    uint32_t len = h->run_n * (uint32_t)s->slot_bytes;
    int wanted = 0; /* an entry of the read is still wanted */
    for (uint32_t k = 0; k < h->run_n; k++) wanted |= !s->pf[head + k].stale;
    if (res == -EINTR || res == -EAGAIN) {
        if (wanted && ssd_pf_sqe(s, head)) {
            io_uring_submit(&s->pf_ring);
            return;
        }
    } else {
        res = ssd_fault_read(s, res, h->run_done, len);
        if (res > 0) {
            atomic_fetch_add_explicit(&s->bytes_read, (uint64_t)res, memory_order_relaxed);
            h->run_done += (uint32_t)res;
            if (h->run_done < len && wanted && ssd_pf_sqe(s, head)) { /* short read: the rest */
                io_uring_submit(&s->pf_ring);
                return;
            }
        }
    }
    s->pf_inflight--;
    int err = h->run_done == len ? 0 : res < 0 ? res : -ENODATA;
    if (err && wanted) atomic_fetch_add_explicit(&s->n_errors, 1, memory_order_relaxed);
    uint32_t n = h->run_n, got = h->run_done;
    for (uint32_t k = 0; k < n; k++) {
        ssd_pf *e = &s->pf[head + k];
        e->state = SSD_PF_READY;
        /* entries the read covered before it failed are good */
        e->err = got >= (k + 1) * s->slot_bytes ? 0 : err ? err : -ENODATA;
        if (e->stale && !e->pinned) ssd_pf_release(s, head + k);
    }
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

/* read: the slot's read-ahead entry once its read landed, pinned (unpin
 * under pf_lock when done), or -1 (none, or its read failed: the caller
 * reads the block itself). */
static int32_t ssd_pf_claim(ssd *s, uint32_t slot) {
    if (atomic_load(&s->pf_init) <= 0) return -1;
    pthread_mutex_lock(&s->pf_lock);
    ssd_pf_poll(s);
    int32_t k = s->pf_of[slot];
    if (k >= 0) {
        ssd_pf *e = &s->pf[k];
        if (e->stale || e->phys != s->phys[slot]) {
            k = -1;
        } else {
            e->pinned++;
            if (!ssd_pf_wait(s, (uint32_t)k) || e->err) {
                ssd_pf_unpin(s, (uint32_t)k);
                k = -1;
            }
        }
    }
    pthread_mutex_unlock(&s->pf_lock);
    return k;
}

/* Hinted block b can be read ahead: it has a copy and no entry yet. */
static int ssd_pf_wanted(const ssd *s, const pam_tier_block *blk) {
    uint32_t slot = blk->slot;
    return slot < s->cap && s->used[slot] && s->phys[slot] != SSD_NONE && s->pf_of[slot] < 0;
}

/* Starts reading the hinted blocks into free read-ahead buffers, in order,
 * as far as buffers last; blocks in ascending adjacent physical slots with
 * one read each run (up to io_slots). What an older hint (two or more back)
 * read and no attend took is dropped first: hints that were wrong cost their
 * reads but never hold buffers for long. The reads are queued in groups,
 * taking the lock per group, so attend calls of other threads are never
 * held up for long by a hint running beside them. */
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
    int64_t b = 0;
    while (b < n_blocks && !full) {
        int64_t group_end = b + SSD_PF_GROUP;
        int queued = 0;
        pthread_mutex_lock(&s->pf_lock);
        while (b < n_blocks && b < group_end) {
            uint32_t slot = blocks[b].slot;
            if (slot < s->cap && s->used[slot] && s->pf_of[slot] >= 0) {
                s->pf[s->pf_of[slot]].gen = g;
                b++;
                continue;
            }
            if (!ssd_pf_wanted(s, &blocks[b])) {
                b++;
                continue;
            }
            /* The run: following blocks in the next physical slots. */
            uint32_t p0 = s->phys[slot], want = 1;
            while (want < s->io_slots && b + want < n_blocks && ssd_pf_wanted(s, &blocks[b + want]) &&
                   s->phys[blocks[b + want].slot] == p0 + want)
                want++;
            uint32_t head;
            uint32_t n = ssd_pf_grab(s, want, &head);
            if (n == 0) {
                full = 1;
                break;
            }
            for (uint32_t k = 0; k < n; k++) {
                ssd_pf *e = &s->pf[head + k];
                e->slot = blocks[b + k].slot;
                e->phys = p0 + k;
                e->err = 0;
                e->pinned = 0;
                e->stale = 0;
                e->gen = g;
                e->state = SSD_PF_FLIGHT;
            }
            s->pf[head].run_n = n;
            s->pf[head].run_done = 0;
            if (!ssd_pf_sqe(s, head)) {
                for (uint32_t k = 0; k < n; k++) s->pf[head + k].state = SSD_PF_FREE;
                s->pf_cursor = head;
                full = 1;
                break;
            }
            s->n_pf_free -= n;
            for (uint32_t k = 0; k < n; k++) s->pf_of[blocks[b + k].slot] = (int32_t)(head + k);
            s->pf_inflight++;
            queued++;
            b += n;
        }
        if (queued) io_uring_submit(&s->pf_ring);
        pthread_mutex_unlock(&s->pf_lock);
    }
}

/* Attend: the read-ahead entries of a batch's blocks, pinned (-1: none). */
static void ssd_pf_take(ssd *s, ssd_io *io, int set, const pam_tier_block *blocks, int64_t b0, int nb) {
    for (int i = 0; i < nb; i++) io->blk[set][i].pf = -1;
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
        io->blk[set][i].pf = k;
    }
    pthread_mutex_unlock(&s->pf_lock);
}

/* Attend: waits for the batch's read-ahead entries; a failed one is read
 * synchronously into the batch's own buffer instead. */
static void ssd_pf_wait_set(ssd *s, ssd_io *io, int set) {
    int fallback = 0;
    if (atomic_load(&s->pf_init) <= 0) return;
    pthread_mutex_lock(&s->pf_lock);
    for (int i = 0; i < io->n_blk[set]; i++) {
        ssd_blk *k = &io->blk[set][i];
        if (k->pf < 0) continue;
        if (ssd_pf_wait(s, (uint32_t)k->pf) && s->pf[k->pf].err == 0) continue;
        ssd_pf_unpin(s, (uint32_t)k->pf);
        k->pf = -2; /* read below, outside the lock */
        fallback = 1;
    }
    pthread_mutex_unlock(&s->pf_lock);
    for (int i = 0; fallback && i < io->n_blk[set]; i++) {
        ssd_blk *k = &io->blk[set][i];
        if (k->pf != -2) continue;
        k->pf = -1;
        k->buf = io->buf[set] + (size_t)i * s->slot_bytes;
        pam_status st = ssd_pread_run(s, k->phys, 1, k->buf);
        k->err = st == PAM_OK ? 0 : -EIO;
        if (st == PAM_OK) atomic_fetch_add_explicit(&s->bytes_read, s->slot_bytes, memory_order_relaxed);
    }
}

/* Attend: the batch is computed (or abandoned); its entries are free. */
static void ssd_pf_drop_set(ssd *s, ssd_io *io, int set) {
    if (atomic_load(&s->pf_init) <= 0) return;
    pthread_mutex_lock(&s->pf_lock);
    for (int i = 0; i < io->n_blk[set]; i++)
        if (io->blk[set][i].pf >= 0) {
            ssd_pf_unpin(s, (uint32_t)io->blk[set][i].pf);
            io->blk[set][i].pf = -1;
        }
    pthread_mutex_unlock(&s->pf_lock);
}

/* ---- attend: batched, double-buffered reads -------------------------------- */

static void ssd_io_put(ssd *s, ssd_io *io) {
    pthread_mutex_lock(&s->io_lock);
    io->next = s->io_free;
    s->io_free = io;
    pthread_mutex_unlock(&s->io_lock);
}

/* An I/O context whose buffer sets hold at least `need` blocks each: the
 * KV manager's attend calls are a few blocks, a calibration pass thousands,
 * so the buffers grow to what a thread asks for (up to a batch). */
static ssd_io *ssd_io_get(ssd *s, uint32_t need) {
    pthread_mutex_lock(&s->io_lock);
    ssd_io *io = s->io_free;
    if (io) s->io_free = io->next;
    pthread_mutex_unlock(&s->io_lock);
    if (!io) {
        io = calloc(1, sizeof *io);
        if (!io) return NULL;
        if (s->uring) io->ring_ok = io_uring_queue_init(2 * SSD_BATCH_MAX, &io->ring, 0) == 0;
    }
    if (io->cap < need) {
        for (int i = 0; i < 2; i++) {
            free(io->buf[i]);
            io->buf[i] = ssd_io_alloc(need * s->slot_bytes);
        }
        io->cap = io->buf[0] && io->buf[1] ? need : 0;
        if (!io->cap) { /* back to the pool without buffers */
            free(io->buf[0]);
            free(io->buf[1]);
            io->buf[0] = io->buf[1] = NULL;
            ssd_io_put(s, io);
            return NULL;
        }
    }
    return io;
}

static void ssd_io_destroy(ssd_io *io) {
    if (io->ring_ok) io_uring_queue_exit(&io->ring);
    free(io->buf[0]);
    free(io->buf[1]);
    free(io);
}

static void ssd_sqe_read(ssd *s, ssd_io *io, int set, int i) {
    ssd_run *r = &io->run[set][i];
    struct io_uring_sqe *sqe = io_uring_get_sqe(&io->ring);
    if (!sqe) { /* not expected: each run owns at most one of 2*SSD_BATCH_MAX entries */
        io_uring_submit(&io->ring);
        sqe = io_uring_get_sqe(&io->ring);
    }
    io_uring_prep_read(sqe, s->fd, r->buf + r->done, r->len - r->done, r->off + r->done);
    io_uring_sqe_set_data64(sqe, (uint64_t)(set * SSD_BATCH_MAX + i));
    atomic_fetch_add_explicit(&s->n_reads, 1, memory_order_relaxed);
}

/* Starts the reads of blocks [b0, b0+nb) into buffer set `set`: blocks not
 * read ahead, in runs of ascending adjacent physical slots (up to io_slots),
 * each run one read into the adjacent buffers of its blocks. Without a ring
 * the reads complete here, synchronously. */
static void ssd_submit(ssd *s, ssd_io *io, int set, const pam_tier_block *blocks, int64_t b0, int nb) {
    io->pending[set] = 0;
    io->n_blk[set] = nb;
    io->n_run[set] = 0;
    ssd_pf_take(s, io, set, blocks, b0, nb);
    int cur = -1; /* the run block i-1 is in */
    for (int i = 0; i < nb; i++) {
        ssd_blk *k = &io->blk[set][i];
        k->phys = s->phys[blocks[b0 + i].slot];
        k->err = 0;
        k->run = -1;
        k->tail = s->tail[blocks[b0 + i].slot] != NULL;
        if (k->tail) { /* recent window: in memory, nothing to read */
            k->buf = s->tail[blocks[b0 + i].slot];
            cur = -1;
            continue;
        }
        if (k->pf >= 0) { /* read ahead: its buffer, once the read lands */
            k->buf = s->pf[k->pf].buf;
            cur = -1;
            continue;
        }
        k->buf = io->buf[set] + (size_t)i * s->slot_bytes;
        ssd_run *r = cur >= 0 ? &io->run[set][cur] : NULL;
        if (r && r->len / s->slot_bytes < s->io_slots && ssd_off(s, k->phys) == r->off + r->len) {
            r->len += (uint32_t)s->slot_bytes; /* the block's buffer follows the run's */
        } else {
            cur = io->n_run[set]++;
            r = &io->run[set][cur];
            *r = (ssd_run){.off = ssd_off(s, k->phys), .buf = k->buf, .len = (uint32_t)s->slot_bytes};
        }
        k->run = cur;
    }
    for (int i = 0; i < io->n_run[set]; i++) {
        ssd_run *r = &io->run[set][i];
        if (io->ring_ok) {
            ssd_sqe_read(s, io, set, i);
            io->pending[set]++;
        } else {
            pam_status st = ssd_pread_run(s, (uint32_t)(r->off / s->slot_bytes), r->len / (uint32_t)s->slot_bytes,
                                          r->buf);
            r->err = st == PAM_OK ? 0 : -EIO;
        }
    }
    if (io->ring_ok && io->n_run[set] > 0) io_uring_submit(&io->ring);
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
                for (int i = 0; i < io->n_run[st]; i++)
                    if (io->run[st][i].done < io->run[st][i].len && !io->run[st][i].err)
                        io->run[st][i].err = rc;
            io->pending[0] = io->pending[1] = 0;
            return;
        }
        uint64_t ud = io_uring_cqe_get_data64(cqe);
        int res = cqe->res;
        io_uring_cqe_seen(&io->ring, cqe);
        int rs = (int)(ud / SSD_BATCH_MAX), ri = (int)(ud % SSD_BATCH_MAX);
        ssd_run *r = &io->run[rs][ri];
        if (res == -EINTR || res == -EAGAIN) {
            ssd_sqe_read(s, io, rs, ri);
            io_uring_submit(&io->ring);
            continue;
        }
        res = ssd_fault_read(s, res, r->done, r->len);
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
    const int64_t BS = s->batch;
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
    /* kernel scratch, one block's partial, the query of every KV head prepared for the type */
    const size_t sc_floats = pam_kvh_scratch_floats(s->type, nq, D, B);
    const size_t qbytes = (pam_kvh_query_bytes(s->type, nq, D) + 15) & ~(size_t)15;
    pam_kvh_query *qr = malloc(sizeof *qr * 2 * (size_t)H); /* [H] the type's, [H] f16 for tail images */
    float *sc = qr ? malloc(sizeof(float) * (sc_floats + 2 * (size_t)nq + (size_t)nq * D) + qbytes * (size_t)H) : NULL;
    if (!sc) free(qr);
    ssd_io *io = sc ? ssd_io_get(s, (uint32_t)(r->n_blocks < BS ? r->n_blocks : BS)) : NULL;
    if (!io) {
        free(sc);
        return PAM_ERR(PAM_ERR_NOMEM, "ssd tier: attention buffers");
    }
    float *bm = sc + sc_floats, *bl = bm + nq, *bo = bl + nq;
    for (int h = 0; h < H; h++) {
        pam_kvh_query_init(&qr[h], s->type, r->q + (size_t)h * nq * D, nq, D, r->scale,
                           (uint8_t *)(bo + (size_t)nq * D) + (size_t)h * qbytes);
        pam_kvh_query_init(&qr[H + h], PAM_KV_F16, r->q + (size_t)h * nq * D, nq, D, r->scale, NULL);
    }
    int64_t n_batches = (r->n_blocks + BS - 1) / BS, n_from_pf = 0;
    pam_status st = PAM_OK;
    io->n_blk[0] = io->n_blk[1] = 0;
    io->n_run[0] = io->n_run[1] = 0;
    /* With a ring, batch 0 starts now and batch i+1 while batch i computes;
     * without one, each batch is read synchronously when its turn comes. */
    if (io->ring_ok) ssd_submit(s, io, 0, r->blocks, 0, (int)(r->n_blocks < BS ? r->n_blocks : BS));
    for (int64_t bi = 0; bi < n_batches; bi++) {
        int set = (int)(bi & 1);
        int64_t b0 = bi * BS;
        int nb = (int)(r->n_blocks - b0 < BS ? r->n_blocks - b0 : BS);
        if (bi + 1 < n_batches && st == PAM_OK) {
            int64_t b1 = b0 + BS;
            int nb1 = (int)(r->n_blocks - b1 < BS ? r->n_blocks - b1 : BS);
            if (io->ring_ok) ssd_submit(s, io, set ^ 1, r->blocks, b1, nb1);
        }
        if (io->ring_ok) ssd_wait(s, io, set);
        else if (st == PAM_OK) ssd_submit(s, io, set, r->blocks, b0, nb);
        ssd_pf_wait_set(s, io, set);
        for (int i = 0; i < nb && st == PAM_OK; i++) {
            ssd_blk *k = &io->blk[set][i];
            uint32_t slot = r->blocks[b0 + i].slot;
            n_from_pf += k->pf >= 0 || k->tail;
            int err = k->run >= 0 ? io->run[set][k->run].err : k->err;
            if (err) {
                atomic_fetch_add_explicit(&s->n_errors, 1, memory_order_relaxed);
                st = PAM_ERR(PAM_ERR_IO, "ssd tier: read of slot %u at offset %llu of %s: %s", slot,
                             (unsigned long long)ssd_off(s, k->phys), s->path, strerror(-err));
                break;
            }
            if (!k->tail) st = ssd_verify(s, k->buf, slot, k->phys);
            if (st != PAM_OK) break;
            int n = r->blocks[b0 + i].n_tokens;
            int64_t b = b0 + i;
            const int f16 = k->tail && s->tail_f16;
            for (int h = 0; h < H; h++) {
                pam_kvh_partial(f16 ? &qr[H + h] : &qr[h], f16 ? ssd_tail_head(s, k->buf, h) : ssd_head(s, k->buf, h), B,
                                n, bm, bl, bo, sc);
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
            if (s->phys[r->blocks[b].slot] != SSD_NONE)
                ssd_drop_cache(s, ssd_off(s, s->phys[r->blocks[b].slot]), s->slot_bytes);
    ssd_io_put(s, io);
    free(sc);
    free(qr);
    if (st == PAM_OK)
        atomic_fetch_add_explicit(&s->bytes_read, (uint64_t)(r->n_blocks - n_from_pf) * s->slot_bytes,
                                  memory_order_relaxed); /* read-ahead counted its own reads; tails are not read */
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
    free(s->pf_of);
    pthread_mutex_destroy(&s->pf_lock);
    if (s->fd >= 0) close(s->fd);
    free(s->phys);
    free(s->hi);
    free(s->used);
    free(s->lfree);
    free(s->meta);
    free(s->pheap);
    free(s->wbuf);
    if (s->tail)
        for (uint64_t i = 0; i < s->cap; i++) free(s->tail[i]);
    free(s->tail);
    free(s->conv);
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
    return pam_tier_ssd_open_type(shape, PAM_KV_F16, dir, capacity_bytes, flags, out);
}

pam_status pam_tier_ssd_open_type(const pam_kv_shape *shape, pam_kv_type type, const char *dir,
                                  uint64_t capacity_bytes, unsigned flags, pam_tier **out) {
    *out = NULL;
    const int B = shape->block_tokens, D = shape->head_dim, H = shape->n_head_kv;
    if (B < 1 || D < 1 || H < 1) return PAM_ERR(PAM_ERR_INVALID, "ssd tier: bad shape");
    pam_status tst = pam_kvh_check(type, D, B);
    if (tst != PAM_OK) return PAM_ERR(tst, "ssd tier: %s", pam_last_error());
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
    s->type = type;
    s->row = (size_t)H * (size_t)D;
    s->run_bytes = pam_kvh_bytes(type, D, B);
    s->payload_bytes = (size_t)H * s->run_bytes;
    s->tail_f16 = type == PAM_KV_BF16 || type == PAM_KV_Q8 || type == PAM_KV_Q4;
    s->tail_run_bytes = pam_kvh_bytes(PAM_KV_F16, D, B);
    s->tail_bytes = (size_t)H * s->tail_run_bytes;
    s->slot_bytes = (s->payload_bytes + SSD_ALIGN - 1) & ~(size_t)(SSD_ALIGN - 1);
    s->io_slots = (uint32_t)(SSD_IO_MAX / s->slot_bytes); /* a read may be one bigger slot */
    if (s->io_slots < 1) s->io_slots = 1;
    s->batch = (uint32_t)(SSD_BATCH_BYTES / s->slot_bytes);
    if (s->batch < 1) s->batch = 1;
    if (s->batch > SSD_BATCH_MAX) s->batch = SSD_BATCH_MAX;
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
    s->meta = malloc(sizeof(ssd_meta) * s->n_phys);
    s->pheap = malloc(sizeof(uint32_t) * s->n_phys);
    s->tail = calloc(s->cap, sizeof *s->tail);
    if (posix_memalign((void **)&s->wbuf, SSD_ALIGN, s->slot_bytes) != 0) s->wbuf = NULL;
    if (s->tail_f16) s->conv = malloc(sizeof(float) * 2 * (size_t)B * s->row);
    if (!s->phys || !s->hi || !s->used || !s->lfree || !s->meta || !s->pheap || !s->tail || !s->wbuf ||
        (s->tail_f16 && !s->conv)) {
        ssd_close(s);
        free(t);
        return PAM_ERR(PAM_ERR_NOMEM, "ssd tier: tables for %llu blocks", (unsigned long long)capacity_bytes);
    }
    for (uint64_t i = 0; i < s->cap; i++) {
        s->lfree[i] = (uint32_t)(s->cap - 1 - i);
        s->phys[i] = SSD_NONE;
    }
    for (uint64_t i = 0; i < s->n_phys; i++) s->meta[i] = (ssd_meta){.slot = SSD_NONE};
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
        int rc = io_uring_queue_init(2 * SSD_BATCH_MAX, &ring, 0);
        if (rc == 0) {
            io_uring_queue_exit(&ring);
            s->uring = 1;
        } else {
            fprintf(stderr, "pam: ssd tier: io_uring unavailable (%s); using synchronous reads\n", strerror(-rc));
        }
    }
    t->ops = &ssd_ops;
    t->impl = s;
    snprintf(t->name, sizeof t->name, "ssd:%.40s%s%s%s%s", dir, s->direct ? "" : "+buffered",
             s->uring ? "" : "+sync", type == PAM_KV_F16 ? "" : ":", type == PAM_KV_F16 ? "" : pam_kv_type_name(type));
    t->capacity_blocks = s->cap;
    t->block_bytes = s->slot_bytes;
    t->read_gbps = SSD_DEFAULT_GBPS;
    t->exact = type == PAM_KV_F16 || type == PAM_KV_F32;
    t->kv_type = type;
    *out = t;
    return PAM_OK;
}

pam_status pam_tier_ssd_open(const pam_kv_shape *shape, const char *dir, uint64_t capacity_bytes,
                             pam_tier **out) {
    return pam_tier_ssd_open_ex(shape, dir, capacity_bytes, 0, out);
}
