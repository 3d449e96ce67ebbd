/* Locality traces: where a real model's attention mass went, block by block,
 * at every step of a teacher-forced pass (`pam locality --trace-out`), and
 * its replay onto another cache's sequences (`pam bench kv --kv-replay`),
 * whose random weights have no locality of their own (DESIGN.md §2.4, §2.7).
 *
 * File format (little-endian), docs/KV.md "Locality traces":
 *   header, 32 bytes: magic "PAMLOCT1", then u32 n_layer, block_tokens,
 *     ctx, n_chunks, and u64 FNV-1a 64 of the payload;
 *   payload: for chunk c = 0..n_chunks-1, step t = 0..ctx-1, layer
 *     l = 0..n_layer-1: nb(t) = t / block_tokens + 1 u16 values, block b's
 *     share of the layer's attention mass (mean over its query heads) for
 *     the query at position t of the chunk, in units of 1/65535.
 * Nothing else: the size is fixed by the header, so a truncated or padded
 * file, or one whose checksum differs, is refused.
 *
 * Replay (pam_loctrace_map): a call of sequence s, layer l over n_pos
 * positions in nb blocks takes the trace record of
 *   layer  l mod n_layer,
 *   chunk  (s + l / n_layer) mod n_chunks  (layers past the trace's use the
 *          next chunks, so they do not all repeat layer 0's pattern),
 *   step   ctx/2 + (n_pos - 1) mod (ctx - ctx/2)  (the trace's context at
 *          least half full; consecutive positions replay consecutive steps),
 * and maps its blocks onto the nb blocks keeping the sink and the recent
 * window: block 0 gets the trace's first block, block nb-1 its last (the
 * one holding the query), and the blocks between share the trace's middle
 * blocks in proportion, each trace block's mass spread over the part of
 * [1, nb-1) its share of [1, ntb-1) covers. The result sums to 1 and depends
 * on (s, l, n_pos, nb) only. */
#ifndef PAM_KV_LOCTRACE_H
#define PAM_KV_LOCTRACE_H

#include <stdint.h>
#include <stdio.h>

#include "core/status.h"

typedef struct pam_loctrace pam_loctrace;

/* Writing: create, then for every chunk, step and layer in file order one
 * pam_loctrace_add of nb(t) masses (non-negative; quantised), then
 * pam_loctrace_finish, which writes the header with the checksum. */
typedef struct pam_loctrace_writer pam_loctrace_writer;
pam_status pam_loctrace_writer_open(const char *path, int32_t n_layer, int32_t block_tokens, int32_t ctx,
                                    int32_t n_chunks, pam_loctrace_writer **out);
/* The record of (chunk, step, layer) next in file order; nb must be nb(t). */
pam_status pam_loctrace_add(pam_loctrace_writer *w, const float *mass, int32_t nb);
/* Writes the header; PAM_ERR_INVALID when fewer records than promised were
 * added. Frees w either way. */
pam_status pam_loctrace_finish(pam_loctrace_writer *w);
/* Frees w without finishing (on an error elsewhere); the file is left
 * without a valid header. */
void pam_loctrace_writer_abort(pam_loctrace_writer *w);

/* Reading: the whole file into memory, checked (magic, sizes, checksum). */
pam_status pam_loctrace_load(const char *path, pam_loctrace **out);
void pam_loctrace_free(pam_loctrace *t);
int32_t pam_loctrace_n_layer(const pam_loctrace *t);
int32_t pam_loctrace_block_tokens(const pam_loctrace *t);
int32_t pam_loctrace_ctx(const pam_loctrace *t);
int32_t pam_loctrace_n_chunks(const pam_loctrace *t);
/* Record (chunk, step, layer) as floats (the quantised values / 65535) into
 * mass[0..nb(step)-1]; returns nb(step), or 0 when out of range. */
int32_t pam_loctrace_record(const pam_loctrace *t, int32_t chunk, int32_t step, int32_t layer, float *mass);
/* The replayed mass of a call (header comment) into mass[0..nb-1]. */
void pam_loctrace_map(const pam_loctrace *t, int32_t seq, int32_t layer, int32_t n_pos, float *mass, int64_t nb);

#endif
