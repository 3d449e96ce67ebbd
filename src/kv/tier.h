/* A KV tier: one memory device holding KV blocks in its own encoding, with a
 * compute engine that runs partial attention over the blocks it holds
 * (DESIGN.md §2.1, §2.3). Every tier is one ops struct plus a context
 * pointer; callers go through the thin wrappers in kv/tier.c only, so a
 * fault-injecting tier can wrap any other, and adding a tier touches no
 * attention or scheduler code (kv/tier_registry.c lists the implementations).
 *
 * A block holds `block_tokens` consecutive tokens of ONE layer, all KV heads,
 * K and V. Within a tier a block lives in a slot (uint32). Rows passed in and
 * out are f32, n_head_kv*head_dim floats per token, heads contiguous.
 *
 * Ownership: the tier owns its slots' storage; pam_tier_close frees it all.
 * Thread safety: alloc/free/write/read/stats are called by one thread at a
 * time per tier (the KV manager serialises them); attend may be called
 * concurrently from several threads on disjoint block lists, and concurrently
 * with attend calls of other tiers. */
#ifndef PAM_KV_TIER_H
#define PAM_KV_TIER_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/attnkv.h"
#include "pam.h"

typedef struct pam_kv_shape {
    int32_t n_layer;
    int32_t n_head_kv;
    int32_t head_dim;
    int32_t block_tokens; /* default 16 */
} pam_kv_shape;

typedef struct pam_tier_stats {
    uint64_t blocks_used;
    uint64_t blocks_capacity;
    uint64_t bytes_read;    /* by attend and read, cumulative */
    uint64_t bytes_written; /* by write, cumulative */
    uint64_t n_errors;      /* failed I/O, checksum mismatches */
    int64_t attend_ns;      /* cumulative time inside attend */
} pam_tier_stats;

/* One block in an attention request. */
typedef struct pam_tier_block {
    uint32_t slot;
    int32_t n_tokens; /* valid tokens in the block, 1..block_tokens */
} pam_tier_block;

/* Partial attention of one query token (all n_head query heads) over a list
 * of blocks of one layer, in list order (= logical order within the list).
 * Query head h reads KV head h / (n_head / n_head_kv).
 * Outputs, per query head: m (max score), l (sum exp(s - m)), o (unnormalised
 * sum exp(s - m) v), folded over the blocks in list order. If blk_m/blk_l are
 * not NULL the tier also writes, per block b and query head h,
 * blk_m[b*n_head+h] = max score in the block and blk_l[...] = sum exp(s - that
 * max): the by-product the importance score is computed from. */
typedef struct pam_tier_attn {
    const float *q; /* n_head * head_dim */
    int32_t n_head;
    float scale;
    const pam_tier_block *blocks;
    int64_t n_blocks;
    float *m, *l, *o;
    float *blk_m, *blk_l;
} pam_tier_attn;

typedef struct pam_tier_ops {
    const char *kind; /* "dram", "dramq", "ssd", ... */
    /* PAM_ERR_FULL when no slot is free. */
    pam_status (*alloc)(void *impl, uint32_t *slot);
    void (*free)(void *impl, uint32_t slot);
    /* Stores tokens off..off+n-1 of the block; other tokens are untouched.
     * On failure the slot's previous contents stay valid. */
    pam_status (*write)(void *impl, uint32_t slot, int32_t off, int32_t n, const float *k,
                        const float *v);
    /* Decodes the first n tokens of the block to f32 (used by migration).
     * Verifies integrity where the tier can (ssd: checksum -> PAM_ERR_CORRUPT). */
    pam_status (*read)(void *impl, uint32_t slot, int32_t n, float *k, float *v);
    pam_status (*attend)(void *impl, const pam_tier_attn *req);
    void (*stats)(void *impl, pam_tier_stats *out);
    void (*close)(void *impl);
    /* Optional (NULL: no-op). A hint that attend will soon be asked for these
     * blocks: a tier whose reads are slow (ssd) may start reading them now
     * into buffers of its own, so the I/O overlaps the caller's other work.
     * It never changes a result: a later write or free of a slot drops what
     * was read ahead for it, a block not read ahead (the tier's buffers were
     * full, the read failed) is read by attend as usual, and what is read
     * ahead but never asked for is dropped after a later hint. May run
     * concurrently with attend calls of the tier (never with alloc, free,
     * write, read or another prefetch). */
    void (*prefetch)(void *impl, const pam_tier_block *blocks, int64_t n_blocks);
} pam_tier_ops;

typedef struct pam_tier {
    const pam_tier_ops *ops;
    void *impl;
    char name[64];            /* e.g. "dram", "dramq:int8", "ssd:/var/tmp/pam-kv" */
    uint64_t capacity_blocks; /* slots available */
    uint64_t block_bytes;     /* bytes one block occupies (and attend reads) in this tier */
    double read_gbps;         /* measured (or configured) read bandwidth */
    int exact;                /* 1 if the tier stores K/V with no lossy encoding beyond its kv_type (f16, f32) */
    pam_kv_type kv_type;      /* element type of a raw-KV tier (dram, ssd); f16 for dramq */
} pam_tier;

/* Thin wrappers: the only way callers reach a tier. */
pam_status pam_tier_alloc(pam_tier *t, uint32_t *slot);
void pam_tier_free(pam_tier *t, uint32_t slot);
pam_status pam_tier_write(pam_tier *t, uint32_t slot, int32_t off, int32_t n, const float *k, const float *v);
pam_status pam_tier_read(pam_tier *t, uint32_t slot, int32_t n, float *k, float *v);
pam_status pam_tier_attend(pam_tier *t, const pam_tier_attn *req);
/* ops->prefetch, or nothing when the tier has none. */
void pam_tier_prefetch(pam_tier *t, const pam_tier_block *blocks, int64_t n_blocks);
void pam_tier_stats_get(pam_tier *t, pam_tier_stats *out);
/* Measures the rate (GB/s of block bytes) at which the tier's own attend
 * streams up to max_bytes of its blocks (written with synthetic K/V, freed
 * afterwards; the best of at least 5 passes and 200 ms, and for a tier with
 * prefetch also of 5 passes that hint the whole list first; passes so big
 * that these take over 3 s stop there, after one of each), sets t->read_gbps
 * and returns it in *gbps. This is the
 * bandwidth the scheduler and the bound of `pam bench kv` use: it includes
 * the tier's I/O pattern (ssd: O_DIRECT batches) and its decode work. */
pam_status pam_tier_calibrate(pam_tier *t, const pam_kv_shape *shape, uint64_t max_bytes, double *gbps);
/* Closes and frees the tier (t itself is freed too). */
void pam_tier_close(pam_tier *t);

/* ---- Implementations (kv/tier_dram.c, tier_dramq.c, tier_ssd.c, tier_fault.c) ---- */

/* KV types of the tiers that hold raw KV (dram, ssd): pam_kv_type, with
 * pam_kv_type_parse ("f32|f16|bf16|q8|q4", also "q8_0"/"q4_0") and
 * pam_kv_type_name, from kernels/attnkv.h, which also defines each type's
 * block layout and attention kernels. f16 is the default; f32 is the exact
 * reference. */

/* K/V of the given type in host memory, laid out per (block, kv head) for
 * streaming reads. PAM_ERR_INVALID if the type cannot hold the shape (q8
 * needs head_dim % 4 == 0, q4 % 8, bf16 % 2). The tier is named "dram" for
 * f16 and "dram:TYPE" otherwise; exact for f16 and f32. */
pam_status pam_tier_dram_open_type(const pam_kv_shape *shape, pam_kv_type type, uint64_t capacity_bytes,
                                   pam_tier **out);
/* pam_tier_dram_open_type with f16. */
pam_status pam_tier_dram_open(const pam_kv_shape *shape, uint64_t capacity_bytes, pam_tier **out);
/* int8 (bits 8) or int4 (bits 4) KIVI-style: K quantised per channel, V per
 * token, group scales; tokens of a block not yet full stay f16. */
pam_status pam_tier_dramq_open(const pam_kv_shape *shape, int bits, uint64_t capacity_bytes, pam_tier **out);
/* Blocks in a preallocated file under dir, io_uring + O_DIRECT, checksummed
 * (the checksums in memory), adjacent blocks read together. */
pam_status pam_tier_ssd_open(const pam_kv_shape *shape, const char *dir, uint64_t capacity_bytes, pam_tier **out);

/* Fault injection wrapper (tests): forwards to inner, failing the chosen
 * operation. Takes ownership of inner. */
typedef enum pam_fault_op {
    PAM_FAULT_NONE = 0,
    PAM_FAULT_ALLOC,  /* alloc returns PAM_ERR_FULL (like ENOSPC while growing) */
    PAM_FAULT_WRITE,  /* write returns PAM_ERR_IO (EIO) */
    PAM_FAULT_READ,   /* read returns PAM_ERR_IO */
    PAM_FAULT_ATTEND, /* attend returns PAM_ERR_IO */
} pam_fault_op;
typedef struct pam_fault_plan {
    pam_fault_op op;
    uint64_t nth;   /* fail the nth call of op (0-based) ... */
    int persistent; /* ... and every later one when set */
} pam_fault_plan;
pam_status pam_tier_fault_wrap(pam_tier *inner, const pam_fault_plan *plan, pam_tier **out);

/* Parses one --kv-tier spec: "dram:2GiB", "dramq:int8:4GiB", "dramq:int4:4GiB",
 * "ssd:/var/tmp/pam-kv:64GiB" and opens the tier. Sizes accept KiB/MiB/GiB/TiB
 * and plain bytes. Clear PAM_ERR_INVALID messages for malformed specs. */
pam_status pam_tier_open_spec(const pam_kv_shape *shape, const char *spec, pam_tier **out);
/* Same, with the KV type the raw-KV tiers (dram, ssd) store; dramq keeps its
 * own encoding and ignores it. pam_tier_open_spec is this with f16. */
pam_status pam_tier_open_spec_type(const pam_kv_shape *shape, const char *spec, pam_kv_type type, pam_tier **out);

/* ---- Additions (kv/tier_ssd.c, tier_spec.c) ---- */

/* ssd open flags: force the fallbacks the tier otherwise picks only when the
 * platform refuses (tests use them to cover those paths everywhere). */
#define PAM_SSD_BUFFERED 1u /* no O_DIRECT: buffered I/O + posix_fadvise(DONTNEED) */
#define PAM_SSD_NO_URING 2u /* no io_uring: synchronous pread, no overlap */
pam_status pam_tier_ssd_open_ex(const pam_kv_shape *shape, const char *dir, uint64_t capacity_bytes,
                                unsigned flags, pam_tier **out);
/* The ssd tier storing the given KV type (the open functions above: f16). */
pam_status pam_tier_ssd_open_type(const pam_kv_shape *shape, pam_kv_type type, const char *dir,
                                  uint64_t capacity_bytes, unsigned flags, pam_tier **out);

/* Test hook at the ssd tier's I/O layer: from the nth event of that kind on
 * (0-based; every later one too when persistent), EIO_READ completes a read
 * with EIO (events: slots read; a read of several adjacent slots counts each
 * slot it asks for, and fails as a whole), EIO_WRITE fails a write with EIO,
 * SHORT_READ completes a read with fewer bytes than asked, ending inside a
 * slot where it can (the tier must resubmit the rest), ENOSPC fails the
 * growth of the file, CORRUPT flips a byte of a block after it was read
 * (events: blocks verified). PAM_ERR_INVALID if t is not an ssd tier. */
typedef enum pam_ssd_fault {
    PAM_SSD_FAULT_NONE = 0,
    PAM_SSD_FAULT_EIO_READ,
    PAM_SSD_FAULT_EIO_WRITE,
    PAM_SSD_FAULT_SHORT_READ,
    PAM_SSD_FAULT_ENOSPC,
    PAM_SSD_FAULT_CORRUPT,
} pam_ssd_fault;
pam_status pam_tier_ssd_inject(pam_tier *t, pam_ssd_fault kind, uint64_t nth, int persistent);
/* Where a slot's bytes live on disk (tests flip bytes there): a path that
 * opens the tier's file and the byte offset of the block's payload (its head
 * runs, K then V each; block_bytes from there belong to it). The checksum and the other
 * metadata are kept in memory, so any byte of the payload that changes on
 * disk fails the block's next read with PAM_ERR_CORRUPT. */
pam_status pam_tier_ssd_locate(pam_tier *t, uint32_t slot, char *path, size_t path_cap,
                               uint64_t *offset);
/* Read I/Os the ssd tier has issued so far (attend, read-ahead, read and the
 * reads of partial writes): a read of several adjacent slots counts once,
 * the resubmitted rest of a short read once more. Tests check with it that
 * adjacent blocks are read together. */
pam_status pam_tier_ssd_reads(pam_tier *t, uint64_t *n_reads);

/* "2GiB", "512MiB", "64K", "1.5GiB", "4096": KiB/MiB/GiB/TiB (or K/M/G/T,
 * binary) and plain bytes. PAM_ERR_INVALID with a message for anything else,
 * zero, or overflow. */
pam_status pam_parse_size(const char *s, uint64_t *out);
/* The default KV tier: dram sized from available memory (half of what the
 * OS reports available), capped to want_bytes when want_bytes > 0. */
pam_status pam_tier_open_default(const pam_kv_shape *shape, uint64_t want_bytes, pam_tier **out);
/* The default tier storing the given KV type. */
pam_status pam_tier_open_default_type(const pam_kv_shape *shape, pam_kv_type type, uint64_t want_bytes,
                                      pam_tier **out);

#endif
