/* Locality traces: writer, reader and replay mapping (format and mapping in
 * kv/loctrace.h). */
#include "kv/loctrace.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LT_MAGIC "PAMLOCT1"
#define LT_HEADER 32
#define LT_FNV_OFFSET 0xcbf29ce484222325ULL
#define LT_FNV_PRIME 0x100000001b3ULL
/* the largest trace accepted: 1 GiB of payload */
#define LT_MAX_PAYLOAD (1ull << 30)

struct pam_loctrace_writer {
    FILE *f;
    char *path;
    int32_t n_layer, bt, ctx, n_chunks;
    int64_t chunk, step, layer; /* the next record */
    uint64_t fnv;
    uint16_t *buf;
};

struct pam_loctrace {
    int32_t n_layer, bt, ctx, n_chunks;
    uint64_t step_values; /* values of one chunk: n_layer * sum_t nb(t) */
    uint16_t *data;
    uint64_t n_values;
};

static int64_t lt_nb(int32_t t, int32_t bt) { return (int64_t)t / bt + 1; }

/* Values before step t of a chunk, per layer: sum_{u<t} nb(u). */
static uint64_t lt_prefix(int32_t t, int32_t bt) {
    /* steps u in [k*bt, (k+1)*bt) have nb = k + 1 */
    uint64_t full = (uint64_t)t / (uint64_t)bt, rem = (uint64_t)t % (uint64_t)bt;
    return (uint64_t)bt * full * (full + 1) / 2 + rem * (full + 1);
}

static uint64_t lt_fnv(uint64_t h, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * LT_FNV_PRIME;
    return h;
}

static void lt_put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t lt_get32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static pam_status lt_check_dims(int64_t n_layer, int64_t bt, int64_t ctx, int64_t n_chunks, uint64_t *n_values) {
    if (n_layer < 1 || n_layer > 4096 || bt < 1 || bt > 4096 || ctx < 1 || ctx > (1 << 24) || n_chunks < 1 ||
        n_chunks > (1 << 24))
        return PAM_ERR(PAM_ERR_INVALID, "locality trace: bad dimensions (%lld layers, block %lld, ctx %lld, %lld chunks)",
                       (long long)n_layer, (long long)bt, (long long)ctx, (long long)n_chunks);
    uint64_t per_chunk = (uint64_t)n_layer * lt_prefix((int32_t)ctx, (int32_t)bt);
    if (per_chunk * (uint64_t)n_chunks > LT_MAX_PAYLOAD / 2)
        return PAM_ERR(PAM_ERR_INVALID, "locality trace: %llu values exceed the limit of %llu",
                       (unsigned long long)(per_chunk * (uint64_t)n_chunks), LT_MAX_PAYLOAD / 2);
    *n_values = per_chunk * (uint64_t)n_chunks;
    return PAM_OK;
}

pam_status pam_loctrace_writer_open(const char *path, int32_t n_layer, int32_t block_tokens, int32_t ctx,
                                    int32_t n_chunks, pam_loctrace_writer **out) {
    *out = NULL;
    uint64_t nv = 0;
    PAM_TRY(lt_check_dims(n_layer, block_tokens, ctx, n_chunks, &nv));
    pam_loctrace_writer *w = calloc(1, sizeof *w);
    if (!w) return PAM_ERR(PAM_ERR_NOMEM, "locality trace writer");
    w->path = malloc(strlen(path) + 1);
    w->buf = malloc((size_t)lt_nb(ctx - 1, block_tokens) * sizeof *w->buf);
    if (!w->path || !w->buf) {
        pam_loctrace_writer_abort(w);
        return PAM_ERR(PAM_ERR_NOMEM, "locality trace writer");
    }
    strcpy(w->path, path);
    w->f = fopen(path, "wb");
    if (!w->f) {
        pam_loctrace_writer_abort(w);
        return PAM_ERR(PAM_ERR_IO, "cannot write the locality trace '%s'", path);
    }
    w->n_layer = n_layer;
    w->bt = block_tokens;
    w->ctx = ctx;
    w->n_chunks = n_chunks;
    w->fnv = LT_FNV_OFFSET;
    /* the header is written last, when the checksum is known */
    uint8_t zero[LT_HEADER] = {0};
    if (fwrite(zero, 1, LT_HEADER, w->f) != LT_HEADER) {
        pam_loctrace_writer_abort(w);
        return PAM_ERR(PAM_ERR_IO, "cannot write the locality trace '%s'", path);
    }
    *out = w;
    return PAM_OK;
}

pam_status pam_loctrace_add(pam_loctrace_writer *w, const float *mass, int32_t nb) {
    if (w->chunk >= w->n_chunks) return PAM_ERR(PAM_ERR_INVALID, "locality trace: more records than the header holds");
    int64_t want = lt_nb((int32_t)w->step, w->bt);
    if (nb != want)
        return PAM_ERR(PAM_ERR_INVALID, "locality trace: step %lld has %lld blocks, got %d", (long long)w->step,
                       (long long)want, (int)nb);
    for (int32_t b = 0; b < nb; b++) {
        float x = mass[b];
        if (!(x >= 0.0f)) x = 0.0f; /* NaN and negatives: no mass */
        if (x > 1.0f) x = 1.0f;
        uint16_t v = (uint16_t)lrintf(x * 65535.0f);
        uint8_t le[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
        memcpy(&w->buf[b], le, 2);
    }
    size_t bytes = (size_t)nb * 2;
    w->fnv = lt_fnv(w->fnv, (const uint8_t *)w->buf, bytes);
    if (fwrite(w->buf, 1, bytes, w->f) != bytes)
        return PAM_ERR(PAM_ERR_IO, "cannot write the locality trace '%s'", w->path);
    if (++w->layer == w->n_layer) {
        w->layer = 0;
        if (++w->step == w->ctx) {
            w->step = 0;
            w->chunk++;
        }
    }
    return PAM_OK;
}

pam_status pam_loctrace_finish(pam_loctrace_writer *w) {
    pam_status st = PAM_OK;
    if (w->chunk != w->n_chunks) {
        st = PAM_ERR(PAM_ERR_INVALID, "locality trace: %lld of %d chunks written", (long long)w->chunk,
                     (int)w->n_chunks);
    } else {
        uint8_t h[LT_HEADER];
        memcpy(h, LT_MAGIC, 8);
        lt_put32(h + 8, (uint32_t)w->n_layer);
        lt_put32(h + 12, (uint32_t)w->bt);
        lt_put32(h + 16, (uint32_t)w->ctx);
        lt_put32(h + 20, (uint32_t)w->n_chunks);
        lt_put32(h + 24, (uint32_t)w->fnv);
        lt_put32(h + 28, (uint32_t)(w->fnv >> 32));
        if (fseek(w->f, 0, SEEK_SET) != 0 || fwrite(h, 1, LT_HEADER, w->f) != LT_HEADER)
            st = PAM_ERR(PAM_ERR_IO, "cannot write the locality trace '%s'", w->path);
    }
    if (fclose(w->f) != 0 && st == PAM_OK) st = PAM_ERR(PAM_ERR_IO, "cannot write the locality trace '%s'", w->path);
    w->f = NULL;
    pam_loctrace_writer_abort(w);
    return st;
}

void pam_loctrace_writer_abort(pam_loctrace_writer *w) {
    if (!w) return;
    if (w->f) fclose(w->f);
    free(w->path);
    free(w->buf);
    free(w);
}

pam_status pam_loctrace_load(const char *path, pam_loctrace **out) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return PAM_ERR(PAM_ERR_IO, "cannot open the locality trace '%s'", path);
    uint8_t h[LT_HEADER];
    if (fread(h, 1, LT_HEADER, f) != LT_HEADER || memcmp(h, LT_MAGIC, 8) != 0) {
        fclose(f);
        return PAM_ERR(PAM_ERR_CORRUPT, "'%s' is not a locality trace (pam locality --trace-out writes them)", path);
    }
    uint64_t nv = 0;
    pam_status st = lt_check_dims(lt_get32(h + 8), lt_get32(h + 12), lt_get32(h + 16), lt_get32(h + 20), &nv);
    if (st != PAM_OK) {
        fclose(f);
        return PAM_ERR(st, "'%s': %s", path, pam_last_error());
    }
    pam_loctrace *t = calloc(1, sizeof *t);
    uint8_t *raw = malloc((size_t)nv * 2 + 1);
    if (!t || !raw) {
        fclose(f);
        free(t);
        free(raw);
        return PAM_ERR(PAM_ERR_NOMEM, "locality trace '%s': %llu values", path, (unsigned long long)nv);
    }
    size_t got = fread(raw, 1, (size_t)nv * 2 + 1, f);
    fclose(f);
    uint64_t sum = (uint64_t)lt_get32(h + 24) | (uint64_t)lt_get32(h + 28) << 32;
    if (got != (size_t)nv * 2) {
        free(t);
        free(raw);
        return PAM_ERR(PAM_ERR_CORRUPT, "locality trace '%s': %s (%zu bytes of payload, the header says %llu)", path,
                       got < (size_t)nv * 2 ? "truncated" : "trailing bytes", got, (unsigned long long)nv * 2);
    }
    if (lt_fnv(LT_FNV_OFFSET, raw, (size_t)nv * 2) != sum) {
        free(t);
        free(raw);
        return PAM_ERR(PAM_ERR_CORRUPT, "locality trace '%s': checksum mismatch", path);
    }
    t->n_layer = (int32_t)lt_get32(h + 8);
    t->bt = (int32_t)lt_get32(h + 12);
    t->ctx = (int32_t)lt_get32(h + 16);
    t->n_chunks = (int32_t)lt_get32(h + 20);
    t->step_values = (uint64_t)t->n_layer * lt_prefix(t->ctx, t->bt);
    t->n_values = nv;
    /* decode in place: little-endian bytes to host u16 */
    t->data = (uint16_t *)(void *)raw;
    for (uint64_t i = 0; i < nv; i++) {
        uint16_t v = (uint16_t)(raw[2 * i] | raw[2 * i + 1] << 8);
        memcpy(raw + 2 * i, &v, 2);
    }
    *out = t;
    return PAM_OK;
}

void pam_loctrace_free(pam_loctrace *t) {
    if (!t) return;
    free(t->data);
    free(t);
}

int32_t pam_loctrace_n_layer(const pam_loctrace *t) { return t->n_layer; }
int32_t pam_loctrace_block_tokens(const pam_loctrace *t) { return t->bt; }
int32_t pam_loctrace_ctx(const pam_loctrace *t) { return t->ctx; }
int32_t pam_loctrace_n_chunks(const pam_loctrace *t) { return t->n_chunks; }

static const uint16_t *lt_at(const pam_loctrace *t, int32_t chunk, int32_t step, int32_t layer) {
    uint64_t off = (uint64_t)chunk * t->step_values + (uint64_t)t->n_layer * lt_prefix(step, t->bt) +
                   (uint64_t)layer * (uint64_t)lt_nb(step, t->bt);
    return t->data + off;
}

int32_t pam_loctrace_record(const pam_loctrace *t, int32_t chunk, int32_t step, int32_t layer, float *mass) {
    if (chunk < 0 || chunk >= t->n_chunks || step < 0 || step >= t->ctx || layer < 0 || layer >= t->n_layer) return 0;
    const uint16_t *v = lt_at(t, chunk, step, layer);
    int32_t nb = (int32_t)lt_nb(step, t->bt);
    for (int32_t b = 0; b < nb; b++) mass[b] = (float)v[b] / 65535.0f;
    return nb;
}

void pam_loctrace_map(const pam_loctrace *t, int32_t seq, int32_t layer, int32_t n_pos, float *mass, int64_t nb) {
    if (nb <= 0) return;
    int32_t half = t->ctx / 2, span = t->ctx - half;
    int32_t tl = layer % t->n_layer;
    int32_t chunk = (int32_t)(((int64_t)seq + layer / t->n_layer) % t->n_chunks);
    int32_t step = half + (int32_t)((n_pos > 0 ? n_pos - 1 : 0) % span);
    const uint16_t *v = lt_at(t, chunk, step, tl);
    int64_t ntb = lt_nb(step, t->bt);
    double total = 0;
    for (int64_t b = 0; b < ntb; b++) total += v[b];
    double inv = total > 0 ? 1.0 / total : 0.0;
    for (int64_t b = 0; b < nb; b++) mass[b] = 0.0f;
    if (total <= 0) { /* no mass recorded: uniform, as random weights give */
        for (int64_t b = 0; b < nb; b++) mass[b] = (float)(1.0 / (double)nb);
        return;
    }
    if (nb == 1) {
        mass[0] = 1.0f;
        return;
    }
    mass[0] = (float)(v[0] * inv);
    if (ntb == 1) return; /* all the mass is the sink's (and the query's own) */
    mass[nb - 1] += (float)(v[ntb - 1] * inv);
    int64_t M = ntb - 2, N = nb - 2;
    if (M <= 0) return;
    if (N <= 0) { /* no middle here: the recent block takes the trace's middle */
        double mid = 0;
        for (int64_t i = 1; i <= M; i++) mid += v[i];
        mass[nb - 1] += (float)(mid * inv);
        return;
    }
    /* interval [0, M*N): trace middle block i covers [i*N, (i+1)*N), bench
     * middle block j covers [j*M, (j+1)*M); overlaps in integers, exact */
    int64_t i = 0, j = 0;
    while (i < M && j < N) {
        int64_t lo_i = i * N, hi_i = lo_i + N, lo_j = j * M, hi_j = lo_j + M;
        int64_t lo = lo_i > lo_j ? lo_i : lo_j, hi = hi_i < hi_j ? hi_i : hi_j;
        if (hi > lo) mass[1 + j] += (float)((double)v[1 + i] * inv * (double)(hi - lo) / (double)N);
        if (hi_i <= hi_j) i++;
        else j++;
    }
}
