/* GGUF reader.
 *
 * Invariants once pam_gguf_open*() succeeds:
 *  - every pam_gguf_str, array payload and tensor data pointer lies inside
 *    [base, base + size);
 *  - keys and tensor names are unique, NUL-free, NUL-terminated copies;
 *  - every tensor's offset is a multiple of the alignment and its bytes end
 *    at or before the end of the file.
 *
 * Parsing never trusts a count: before allocating room for n things we check
 * that the bytes left in the file could hold n of the smallest encoding of
 * such a thing, so a 100-byte file cannot make us allocate gigabytes. */
#include "model/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/status.h"
#include "kernels/dtype.h"

/* Deeper nesting than this is almost certainly hostile: real files use at
 * most one level (arrays of strings/numbers). Bounds the parser's recursion. */
#define GGUF_MAX_DEPTH 8

/* Smallest on-disk encodings, used to bound counts before allocating. */
#define GGUF_MIN_KV_BYTES 13     /* key length (8) + type (4) + a uint8 value (1) */
#define GGUF_MIN_TENSOR_BYTES 32 /* name length (8) + n_dims (4) + ne[0] (8) + type (4) + offset (8) */
#define GGUF_MIN_ARRAY_BYTES 12  /* element type (4) + count (8) */

typedef struct gguf_kv {
    char *key;
    pam_gguf_value value;
} gguf_kv;

/* Open-addressing hash index: slots hold entry index + 1, 0 means empty. */
typedef struct gguf_index {
    int64_t *slots;
    uint64_t mask;
} gguf_index;

struct pam_gguf {
    const uint8_t *base;
    size_t size;
    int mapped;
    uint32_t version;
    size_t alignment;
    size_t data_offset;
    int64_t n_kv;
    gguf_kv *kv;
    int64_t n_tensors;
    pam_gguf_tensor *tensors;
    gguf_index kv_index;
    gguf_index tensor_index;
};

/* Read cursor; `where` names the key or tensor being parsed for messages. */
typedef struct gguf_cursor {
    const uint8_t *base;
    size_t size;
    size_t pos;
    char where[256];
} gguf_cursor;

static size_t gguf_scalar_size(pam_gguf_type t) {
    switch (t) {
    case PAM_GGUF_UINT8:
    case PAM_GGUF_INT8:
    case PAM_GGUF_BOOL: return 1;
    case PAM_GGUF_UINT16:
    case PAM_GGUF_INT16: return 2;
    case PAM_GGUF_UINT32:
    case PAM_GGUF_INT32:
    case PAM_GGUF_FLOAT32: return 4;
    case PAM_GGUF_UINT64:
    case PAM_GGUF_INT64:
    case PAM_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

const char *pam_gguf_type_name(pam_gguf_type t) {
    static const char *const names[PAM_GGUF_TYPE_COUNT] = {
        "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
        "bool",  "string", "array", "uint64", "int64", "float64",
    };
    return (unsigned)t < PAM_GGUF_TYPE_COUNT ? names[t] : "?";
}

/* ---- little-endian loads (the mapping may be unaligned) ---------------- */

static uint16_t gguf_le16(const uint8_t *p) { return (uint16_t)(p[0] | (uint16_t)p[1] << 8); }
static uint32_t gguf_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t gguf_le64(const uint8_t *p) { return (uint64_t)gguf_le32(p) | (uint64_t)gguf_le32(p + 4) << 32; }

static size_t gguf_left(const gguf_cursor *c) { return c->size - c->pos; }

static pam_status gguf_need(const gguf_cursor *c, size_t n, const char *what) {
    if (n > gguf_left(c))
        return PAM_ERR(PAM_ERR_FORMAT, "%s: truncated: %s needs %zu bytes at offset %zu, file has %zu",
                       c->where, what, n, c->pos, c->size);
    return PAM_OK;
}

static pam_status gguf_read_u32(gguf_cursor *c, const char *what, uint32_t *out) {
    PAM_TRY(gguf_need(c, 4, what));
    *out = gguf_le32(c->base + c->pos);
    c->pos += 4;
    return PAM_OK;
}

static pam_status gguf_read_u64(gguf_cursor *c, const char *what, uint64_t *out) {
    PAM_TRY(gguf_need(c, 8, what));
    *out = gguf_le64(c->base + c->pos);
    c->pos += 8;
    return PAM_OK;
}

static pam_status gguf_read_str(gguf_cursor *c, const char *what, pam_gguf_str *out) {
    uint64_t len;
    PAM_TRY(gguf_read_u64(c, what, &len));
    if (len > gguf_left(c))
        return PAM_ERR(PAM_ERR_FORMAT, "%s: %s length %llu exceeds file size (%zu bytes left at offset %zu)",
                       c->where, what, (unsigned long long)len, gguf_left(c), c->pos);
    out->ptr = (const char *)c->base + c->pos;
    out->len = len;
    c->pos += (size_t)len;
    return PAM_OK;
}

/* NUL-terminated copy of a key or tensor name. NUL bytes inside are rejected
 * because callers compare names with strcmp; empty names because the writer
 * refuses them too, so whatever we read can be written back. */
static pam_status gguf_copy_name(const gguf_cursor *c, pam_gguf_str s, const char *what, char **out) {
    if (s.len == 0) return PAM_ERR(PAM_ERR_FORMAT, "%s at offset %zu is empty", what, c->pos);
    if (memchr(s.ptr, 0, (size_t)s.len))
        return PAM_ERR(PAM_ERR_FORMAT, "%s at offset %zu contains a NUL byte", what, c->pos - (size_t)s.len);
    char *p = malloc((size_t)s.len + 1);
    if (!p) return PAM_ERR(PAM_ERR_NOMEM, "%s: %llu bytes", what, (unsigned long long)s.len + 1);
    memcpy(p, s.ptr, (size_t)s.len);
    p[s.len] = '\0';
    *out = p;
    return PAM_OK;
}

/* ---- name index ---------------------------------------------------------- */

static uint64_t gguf_hash(const char *s) {
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ULL;
    return h;
}

static pam_status gguf_index_init(gguf_index *ix, int64_t n) {
    uint64_t cap = 8;
    while (cap < (uint64_t)n * 2) cap <<= 1;
    ix->slots = calloc(cap, sizeof *ix->slots);
    if (!ix->slots) return PAM_ERR(PAM_ERR_NOMEM, "name index of %llu slots", (unsigned long long)cap);
    ix->mask = cap - 1;
    return PAM_OK;
}

/* Returns the index of the entry named `name`, or -1; name_at(i) gives entry
 * i's name. With insert_at >= 0, inserts it when absent. */
typedef const char *(*gguf_name_fn)(const pam_gguf *g, int64_t i);

static int64_t gguf_index_lookup(const pam_gguf *g, const gguf_index *ix, gguf_name_fn name_at,
                                 const char *name, int64_t insert_at) {
    if (!ix->slots) return -1;
    for (uint64_t h = gguf_hash(name) & ix->mask;; h = (h + 1) & ix->mask) {
        int64_t s = ix->slots[h];
        if (s == 0) {
            if (insert_at >= 0) ix->slots[h] = insert_at + 1;
            return -1;
        }
        if (!strcmp(name_at(g, s - 1), name)) return s - 1;
    }
}

static const char *gguf_kv_name(const pam_gguf *g, int64_t i) { return g->kv[i].key; }
static const char *gguf_tensor_name(const pam_gguf *g, int64_t i) { return g->tensors[i].name; }

/* ---- values ---------------------------------------------------------------- */

static void gguf_value_free(pam_gguf_value *v) {
    if (v->type != PAM_GGUF_ARRAY || !v->v.arr.items) return;
    for (uint64_t i = 0; i < v->v.arr.n; i++) gguf_value_free(&v->v.arr.items[i]);
    free(v->v.arr.items);
    v->v.arr.items = NULL;
}

static pam_status gguf_read_value(gguf_cursor *c, pam_gguf_type type, int depth, pam_gguf_value *out);

/* Array body: element type, count, elements. On failure `out` may hold a
 * partly filled item list; gguf_value_free() releases it. */
static pam_status gguf_read_array(gguf_cursor *c, int depth, pam_gguf_value *out) {
    out->type = PAM_GGUF_ARRAY;
    out->v.arr.items = NULL;
    out->v.arr.data = NULL;
    out->v.arr.n = 0;
    if (depth >= GGUF_MAX_DEPTH)
        return PAM_ERR(PAM_ERR_FORMAT, "%s: arrays nested deeper than %d levels at offset %zu", c->where,
                       GGUF_MAX_DEPTH, c->pos);
    uint32_t et;
    uint64_t n;
    PAM_TRY(gguf_read_u32(c, "array element type", &et));
    if (et >= PAM_GGUF_TYPE_COUNT)
        return PAM_ERR(PAM_ERR_FORMAT, "%s: invalid array element type %u at offset %zu", c->where, et,
                       c->pos - 4);
    PAM_TRY(gguf_read_u64(c, "array length", &n));
    out->v.arr.type = (pam_gguf_type)et;
    size_t esize = gguf_scalar_size((pam_gguf_type)et);
    size_t min_bytes = esize ? esize : et == PAM_GGUF_STRING ? 8 : GGUF_MIN_ARRAY_BYTES;
    if (n > gguf_left(c) / min_bytes)
        return PAM_ERR(PAM_ERR_FORMAT, "%s: array of %llu x %s exceeds file size (%zu bytes left at offset %zu)",
                       c->where, (unsigned long long)n, pam_gguf_type_name((pam_gguf_type)et), gguf_left(c),
                       c->pos);
    if (esize) {
        const uint8_t *p = c->base + c->pos;
        if (et == PAM_GGUF_BOOL) {
            for (uint64_t i = 0; i < n; i++)
                if (p[i] > 1)
                    return PAM_ERR(PAM_ERR_FORMAT, "%s: bool array element %llu has value %u (must be 0 or 1)",
                                   c->where, (unsigned long long)i, p[i]);
        }
        out->v.arr.data = p;
        out->v.arr.n = n;
        c->pos += (size_t)n * esize;
        return PAM_OK;
    }
    if (n == 0) return PAM_OK;
    out->v.arr.items = calloc((size_t)n, sizeof *out->v.arr.items);
    if (!out->v.arr.items)
        return PAM_ERR(PAM_ERR_NOMEM, "%s: array of %llu values", c->where, (unsigned long long)n);
    out->v.arr.n = n; /* zeroed items are safe to free */
    for (uint64_t i = 0; i < n; i++) PAM_TRY(gguf_read_value(c, (pam_gguf_type)et, depth + 1, &out->v.arr.items[i]));
    return PAM_OK;
}

static pam_status gguf_read_value(gguf_cursor *c, pam_gguf_type type, int depth, pam_gguf_value *out) {
    memset(out, 0, sizeof *out);
    out->type = type;
    if (type == PAM_GGUF_ARRAY) return gguf_read_array(c, depth, out);
    if (type == PAM_GGUF_STRING) return gguf_read_str(c, "string", &out->v.str);
    size_t size = gguf_scalar_size(type);
    if (!size) return PAM_ERR(PAM_ERR_FORMAT, "%s: invalid value type %u", c->where, (unsigned)type);
    PAM_TRY(gguf_need(c, size, pam_gguf_type_name(type)));
    const uint8_t *p = c->base + c->pos;
    switch (type) {
    case PAM_GGUF_UINT8: out->v.u64 = p[0]; break;
    case PAM_GGUF_INT8: out->v.i64 = (int8_t)p[0]; break;
    case PAM_GGUF_UINT16: out->v.u64 = gguf_le16(p); break;
    case PAM_GGUF_INT16: out->v.i64 = (int16_t)gguf_le16(p); break;
    case PAM_GGUF_UINT32: out->v.u64 = gguf_le32(p); break;
    case PAM_GGUF_INT32: out->v.i64 = (int32_t)gguf_le32(p); break;
    case PAM_GGUF_UINT64: out->v.u64 = gguf_le64(p); break;
    case PAM_GGUF_INT64: out->v.i64 = (int64_t)gguf_le64(p); break;
    case PAM_GGUF_FLOAT32: {
        uint32_t bits = gguf_le32(p);
        float f;
        memcpy(&f, &bits, sizeof f);
        out->v.f64 = f;
        break;
    }
    case PAM_GGUF_FLOAT64: {
        uint64_t bits = gguf_le64(p);
        memcpy(&out->v.f64, &bits, sizeof out->v.f64);
        break;
    }
    case PAM_GGUF_BOOL:
        if (p[0] > 1)
            return PAM_ERR(PAM_ERR_FORMAT, "%s: bool value %u at offset %zu (must be 0 or 1)", c->where, p[0],
                           c->pos);
        out->v.b = p[0];
        break;
    default: break;
    }
    c->pos += size;
    return PAM_OK;
}

/* ---- header, metadata, tensor infos ---------------------------------------- */

/* g->n_kv counts the entries parsed so far, which own their allocations. */
static pam_status gguf_parse_kv(pam_gguf *g, gguf_cursor *c, int64_t n_kv) {
    for (int64_t i = 0; i < n_kv; i++) {
        snprintf(c->where, sizeof c->where, "metadata entry %lld", (long long)i);
        pam_gguf_str ks;
        PAM_TRY(gguf_read_str(c, "key", &ks));
        gguf_kv *kv = &g->kv[i];
        PAM_TRY(gguf_copy_name(c, ks, c->where, &kv->key));
        g->n_kv = i + 1;
        snprintf(c->where, sizeof c->where, "key '%.200s'", kv->key);
        uint32_t type;
        PAM_TRY(gguf_read_u32(c, "value type", &type));
        if (type >= PAM_GGUF_TYPE_COUNT)
            return PAM_ERR(PAM_ERR_FORMAT, "%s: invalid value type %u", c->where, type);
        PAM_TRY(gguf_read_value(c, (pam_gguf_type)type, 0, &kv->value));
        if (gguf_index_lookup(g, &g->kv_index, gguf_kv_name, kv->key, i) >= 0)
            return PAM_ERR(PAM_ERR_FORMAT, "duplicate key '%.200s'", kv->key);
    }
    return PAM_OK;
}

static pam_status gguf_parse_alignment(pam_gguf *g) {
    g->alignment = PAM_GGUF_DEFAULT_ALIGNMENT;
    const pam_gguf_value *v = pam_gguf_find(g, "general.alignment");
    if (!v) return PAM_OK;
    if (v->type != PAM_GGUF_UINT32)
        return PAM_ERR(PAM_ERR_FORMAT, "key 'general.alignment': type %s, expected uint32",
                       pam_gguf_type_name(v->type));
    uint64_t a = v->v.u64;
    if (a == 0 || (a & (a - 1)))
        return PAM_ERR(PAM_ERR_FORMAT, "key 'general.alignment': %llu is not a nonzero power of two",
                       (unsigned long long)a);
    g->alignment = (size_t)a;
    return PAM_OK;
}

static pam_status gguf_parse_tensor_info(pam_gguf *g, gguf_cursor *c, int64_t i) {
    pam_gguf_tensor *t = &g->tensors[i];
    snprintf(c->where, sizeof c->where, "tensor %lld", (long long)i);
    pam_gguf_str ns;
    PAM_TRY(gguf_read_str(c, "tensor name", &ns));
    char *name;
    PAM_TRY(gguf_copy_name(c, ns, c->where, &name));
    t->name = name;
    g->n_tensors = i + 1; /* tensor i now owns its name */
    snprintf(c->where, sizeof c->where, "tensor '%.200s'", t->name);
    if (gguf_index_lookup(g, &g->tensor_index, gguf_tensor_name, t->name, i) >= 0)
        return PAM_ERR(PAM_ERR_FORMAT, "duplicate tensor name '%.200s'", t->name);
    PAM_TRY(gguf_read_u32(c, "n_dims", &t->n_dims));
    if (t->n_dims < 1 || t->n_dims > PAM_GGUF_MAX_DIMS)
        return PAM_ERR(PAM_ERR_FORMAT, "%s: n_dims %u out of range 1..%d", c->where, t->n_dims, PAM_GGUF_MAX_DIMS);
    int64_t n_elems = 1;
    for (int d = 0; d < PAM_GGUF_MAX_DIMS; d++) {
        t->ne[d] = 1;
        if ((uint32_t)d >= t->n_dims) continue;
        uint64_t ne;
        PAM_TRY(gguf_read_u64(c, "shape", &ne));
        if (ne == 0 || ne > (uint64_t)INT64_MAX)
            return PAM_ERR(PAM_ERR_FORMAT, "%s: dimension %d has size %lld (must be positive)", c->where, d,
                           (long long)ne);
        t->ne[d] = (int64_t)ne;
        if (__builtin_mul_overflow(n_elems, t->ne[d], &n_elems))
            return PAM_ERR(PAM_ERR_FORMAT, "%s: element count overflows int64", c->where);
    }
    PAM_TRY(gguf_read_u32(c, "tensor type", &t->type));
    PAM_TRY(gguf_read_u64(c, "tensor offset", &t->offset));
    if (!pam_dtype_get(t->type))
        return PAM_ERR(PAM_ERR_UNSUPPORTED, "%s: unknown tensor type id %u", c->where, t->type);
    size_t row_bytes;
    pam_status st = pam_dtype_row_bytes(t->type, t->ne[0], &row_bytes);
    if (st == PAM_ERR_RANGE) st = PAM_ERR_FORMAT;
    if (st != PAM_OK) return PAM_ERR(st, "%s: %s", c->where, pam_last_error());
    size_t n_rows, n_bytes;
    if (__builtin_mul_overflow((size_t)t->ne[1], (size_t)t->ne[2], &n_rows) ||
        __builtin_mul_overflow(n_rows, (size_t)t->ne[3], &n_rows) ||
        __builtin_mul_overflow(n_rows, row_bytes, &n_bytes))
        return PAM_ERR(PAM_ERR_FORMAT, "%s: byte size overflows", c->where);
    t->n_bytes = n_bytes;
    return PAM_OK;
}

static pam_status gguf_place_tensors(pam_gguf *g) {
    for (int64_t i = 0; i < g->n_tensors; i++) {
        pam_gguf_tensor *t = &g->tensors[i];
        if (t->offset % g->alignment)
            return PAM_ERR(PAM_ERR_FORMAT, "tensor '%.200s': offset %llu is not a multiple of the alignment %zu",
                           t->name, (unsigned long long)t->offset, g->alignment);
        size_t avail = g->size > g->data_offset ? g->size - g->data_offset : 0;
        if (t->offset > avail || t->n_bytes > avail - (size_t)t->offset)
            return PAM_ERR(PAM_ERR_FORMAT,
                           "tensor '%.200s': data [%llu, +%zu) lies past the end of the file (data section "
                           "at %zu, file %zu bytes)",
                           t->name, (unsigned long long)t->offset, t->n_bytes, g->data_offset, g->size);
        t->data = g->base + g->data_offset + t->offset;
    }
    return PAM_OK;
}

static pam_status gguf_parse(pam_gguf *g) {
    gguf_cursor c = {.base = g->base, .size = g->size, .pos = 0};
    snprintf(c.where, sizeof c.where, "header");
    if (g->size == 0) return PAM_ERR(PAM_ERR_FORMAT, "empty file");
    if (g->size < 4 || memcmp(g->base, "GGUF", 4)) return PAM_ERR(PAM_ERR_FORMAT, "not a GGUF file (bad magic)");
    c.pos = 4;
    PAM_TRY(gguf_read_u32(&c, "version", &g->version));
    if (g->version == 1)
        return PAM_ERR(PAM_ERR_UNSUPPORTED, "GGUF version 1 is not supported (only versions 2 and 3)");
    if (g->version != 2 && g->version != 3) {
        /* A byte-swapped small version means a big-endian file. */
        uint32_t sw = __builtin_bswap32(g->version);
        if (sw >= 1 && sw <= 3) return PAM_ERR(PAM_ERR_UNSUPPORTED, "big-endian GGUF files are not supported");
        return PAM_ERR(PAM_ERR_UNSUPPORTED, "GGUF version %u is not supported (only versions 2 and 3)",
                       g->version);
    }
    uint64_t n_tensors, n_kv;
    PAM_TRY(gguf_read_u64(&c, "tensor count", &n_tensors));
    PAM_TRY(gguf_read_u64(&c, "metadata count", &n_kv));
    if (n_kv > gguf_left(&c) / GGUF_MIN_KV_BYTES)
        return PAM_ERR(PAM_ERR_FORMAT, "header: metadata count %llu exceeds what the file size (%zu) can hold",
                       (unsigned long long)n_kv, g->size);
    if (n_tensors > gguf_left(&c) / GGUF_MIN_TENSOR_BYTES)
        return PAM_ERR(PAM_ERR_FORMAT, "header: tensor count %llu exceeds what the file size (%zu) can hold",
                       (unsigned long long)n_tensors, g->size);

    g->kv = calloc(n_kv ? (size_t)n_kv : 1, sizeof *g->kv);
    g->tensors = calloc(n_tensors ? (size_t)n_tensors : 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) return PAM_ERR(PAM_ERR_NOMEM, "metadata/tensor tables");
    PAM_TRY(gguf_index_init(&g->kv_index, (int64_t)n_kv));
    PAM_TRY(gguf_index_init(&g->tensor_index, (int64_t)n_tensors));

    PAM_TRY(gguf_parse_kv(g, &c, (int64_t)n_kv));
    PAM_TRY(gguf_parse_alignment(g));

    for (int64_t i = 0; i < (int64_t)n_tensors; i++) PAM_TRY(gguf_parse_tensor_info(g, &c, i));

    size_t pad = (g->alignment - c.pos % g->alignment) % g->alignment;
    g->data_offset = c.pos + pad; /* c.pos <= size, so this cannot overflow for any real size */
    if (g->data_offset < c.pos) return PAM_ERR(PAM_ERR_FORMAT, "data section offset overflows");
    return gguf_place_tensors(g);
}

static void gguf_free_tables(pam_gguf *g) {
    if (g->kv) {
        for (int64_t i = 0; i < g->n_kv; i++) {
            free(g->kv[i].key);
            gguf_value_free(&g->kv[i].value);
        }
    }
    free(g->kv);
    if (g->tensors)
        for (int64_t i = 0; i < g->n_tensors; i++) free((char *)g->tensors[i].name);
    free(g->tensors);
    free(g->kv_index.slots);
    free(g->tensor_index.slots);
}

static pam_status gguf_open_mem(const void *data, size_t size, int mapped, pam_gguf **out) {
    pam_gguf *g = calloc(1, sizeof *g);
    if (!g) return PAM_ERR(PAM_ERR_NOMEM, "gguf handle");
    g->base = data;
    g->size = size;
    pam_status st = gguf_parse(g);
    if (st != PAM_OK) {
        gguf_free_tables(g);
        free(g);
        return st;
    }
    g->mapped = mapped;
    *out = g;
    return PAM_OK;
}

pam_status pam_gguf_open_buffer(const void *data, size_t size, pam_gguf **out) {
    if (!out || (!data && size)) return PAM_ERR(PAM_ERR_INVALID, "pam_gguf_open_buffer: NULL argument");
    static const uint8_t empty[1];
    return gguf_open_mem(data ? data : empty, size, 0, out);
}

pam_status pam_gguf_open(const char *path, pam_gguf **out) {
    if (!path || !out) return PAM_ERR(PAM_ERR_INVALID, "pam_gguf_open: NULL argument");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return PAM_ERR(PAM_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return PAM_ERR(PAM_ERR_IO, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return PAM_ERR(PAM_ERR_IO, "%s: not a regular file", path);
    }
    if (sb.st_size == 0) {
        close(fd);
        return PAM_ERR(PAM_ERR_FORMAT, "%s: empty file", path);
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        close(fd);
        return PAM_ERR(PAM_ERR_IO, "%s: file too large to map", path);
    }
    size_t size = (size_t)sb.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file alive */
    if (map == MAP_FAILED) return PAM_ERR(PAM_ERR_IO, "%s: mmap: %s", path, strerror(e));
    pam_status st = gguf_open_mem(map, size, 1, out);
    if (st != PAM_OK) {
        munmap(map, size);
        /* Prefix the path; drop the inner " (file:line)" so it is not doubled. */
        char msg[900];
        snprintf(msg, sizeof msg, "%s", pam_last_error());
        char *loc = strrchr(msg, '(');
        if (loc && loc > msg && loc[-1] == ' ' && strchr(loc, ':') && msg[strlen(msg) - 1] == ')') loc[-1] = '\0';
        return PAM_ERR(st, "%s: %s", path, msg);
    }
    return PAM_OK;
}

void pam_gguf_close(pam_gguf *g) {
    if (!g) return;
    gguf_free_tables(g);
    if (g->mapped) munmap((void *)g->base, g->size);
    free(g);
}

/* ---- accessors --------------------------------------------------------------- */

uint32_t pam_gguf_version(const pam_gguf *g) { return g->version; }
size_t pam_gguf_alignment(const pam_gguf *g) { return g->alignment; }
size_t pam_gguf_data_offset(const pam_gguf *g) { return g->data_offset; }
size_t pam_gguf_file_size(const pam_gguf *g) { return g->size; }
int64_t pam_gguf_n_kv(const pam_gguf *g) { return g->n_kv; }

const char *pam_gguf_kv_key(const pam_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_kv ? g->kv[i].key : NULL;
}

const pam_gguf_value *pam_gguf_kv_value(const pam_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_kv ? &g->kv[i].value : NULL;
}

const pam_gguf_value *pam_gguf_find(const pam_gguf *g, const char *key) {
    if (!key) return NULL;
    int64_t i = gguf_index_lookup(g, &g->kv_index, gguf_kv_name, key, -1);
    return i >= 0 ? &g->kv[i].value : NULL;
}

int64_t pam_gguf_n_tensors(const pam_gguf *g) { return g->n_tensors; }

const pam_gguf_tensor *pam_gguf_tensor_at(const pam_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const pam_gguf_tensor *pam_gguf_find_tensor(const pam_gguf *g, const char *name) {
    if (!name) return NULL;
    int64_t i = gguf_index_lookup(g, &g->tensor_index, gguf_tensor_name, name, -1);
    return i >= 0 ? &g->tensors[i] : NULL;
}

static int gguf_is_uint(pam_gguf_type t) {
    return t == PAM_GGUF_UINT8 || t == PAM_GGUF_UINT16 || t == PAM_GGUF_UINT32 || t == PAM_GGUF_UINT64;
}
static int gguf_is_int(pam_gguf_type t) {
    return t == PAM_GGUF_INT8 || t == PAM_GGUF_INT16 || t == PAM_GGUF_INT32 || t == PAM_GGUF_INT64;
}

static pam_status gguf_lookup(const pam_gguf *g, const char *key, const pam_gguf_value **out) {
    *out = pam_gguf_find(g, key);
    if (!*out) return PAM_ERR(PAM_ERR_NOT_FOUND, "key '%s' not found", key ? key : "(null)");
    return PAM_OK;
}

pam_status pam_gguf_get_u64(const pam_gguf *g, const char *key, uint64_t *out) {
    const pam_gguf_value *v;
    PAM_TRY(gguf_lookup(g, key, &v));
    if (gguf_is_uint(v->type)) {
        *out = v->v.u64;
        return PAM_OK;
    }
    if (gguf_is_int(v->type)) {
        if (v->v.i64 < 0) return PAM_ERR(PAM_ERR_FORMAT, "key '%s': negative value %lld", key, (long long)v->v.i64);
        *out = (uint64_t)v->v.i64;
        return PAM_OK;
    }
    return PAM_ERR(PAM_ERR_FORMAT, "key '%s': type %s, expected an unsigned integer", key,
                   pam_gguf_type_name(v->type));
}

pam_status pam_gguf_get_i64(const pam_gguf *g, const char *key, int64_t *out) {
    const pam_gguf_value *v;
    PAM_TRY(gguf_lookup(g, key, &v));
    if (gguf_is_int(v->type)) {
        *out = v->v.i64;
        return PAM_OK;
    }
    if (gguf_is_uint(v->type)) {
        if (v->v.u64 > (uint64_t)INT64_MAX)
            return PAM_ERR(PAM_ERR_FORMAT, "key '%s': value %llu does not fit int64", key,
                           (unsigned long long)v->v.u64);
        *out = (int64_t)v->v.u64;
        return PAM_OK;
    }
    return PAM_ERR(PAM_ERR_FORMAT, "key '%s': type %s, expected an integer", key, pam_gguf_type_name(v->type));
}

pam_status pam_gguf_get_f64(const pam_gguf *g, const char *key, double *out) {
    const pam_gguf_value *v;
    PAM_TRY(gguf_lookup(g, key, &v));
    if (v->type == PAM_GGUF_FLOAT32 || v->type == PAM_GGUF_FLOAT64) *out = v->v.f64;
    else if (gguf_is_uint(v->type)) *out = (double)v->v.u64;
    else if (gguf_is_int(v->type)) *out = (double)v->v.i64;
    else return PAM_ERR(PAM_ERR_FORMAT, "key '%s': type %s, expected a number", key, pam_gguf_type_name(v->type));
    return PAM_OK;
}

pam_status pam_gguf_get_bool(const pam_gguf *g, const char *key, int *out) {
    const pam_gguf_value *v;
    PAM_TRY(gguf_lookup(g, key, &v));
    if (v->type != PAM_GGUF_BOOL)
        return PAM_ERR(PAM_ERR_FORMAT, "key '%s': type %s, expected bool", key, pam_gguf_type_name(v->type));
    *out = v->v.b;
    return PAM_OK;
}

pam_status pam_gguf_get_str(const pam_gguf *g, const char *key, pam_gguf_str *out) {
    const pam_gguf_value *v;
    PAM_TRY(gguf_lookup(g, key, &v));
    if (v->type != PAM_GGUF_STRING)
        return PAM_ERR(PAM_ERR_FORMAT, "key '%s': type %s, expected string", key, pam_gguf_type_name(v->type));
    *out = v->v.str;
    return PAM_OK;
}

pam_status pam_gguf_get_arr(const pam_gguf *g, const char *key, pam_gguf_type elem, const pam_gguf_value **out) {
    const pam_gguf_value *v;
    PAM_TRY(gguf_lookup(g, key, &v));
    if (v->type != PAM_GGUF_ARRAY)
        return PAM_ERR(PAM_ERR_FORMAT, "key '%s': type %s, expected array", key, pam_gguf_type_name(v->type));
    if (elem != PAM_GGUF_TYPE_COUNT && v->v.arr.type != elem)
        return PAM_ERR(PAM_ERR_FORMAT, "key '%s': array of %s, expected array of %s", key,
                       pam_gguf_type_name(v->v.arr.type), pam_gguf_type_name(elem));
    *out = v;
    return PAM_OK;
}

/* Raw little-endian bits of scalar element i; 0 if i or the array is unusable. */
static int gguf_arr_elem(const pam_gguf_value *arr, uint64_t i, uint64_t *bits) {
    if (!arr || arr->type != PAM_GGUF_ARRAY || i >= arr->v.arr.n || !arr->v.arr.data) return 0;
    size_t es = gguf_scalar_size(arr->v.arr.type);
    if (!es) return 0;
    const uint8_t *p = (const uint8_t *)arr->v.arr.data + i * es;
    switch (es) {
    case 1: *bits = p[0]; break;
    case 2: *bits = gguf_le16(p); break;
    case 4: *bits = gguf_le32(p); break;
    default: *bits = gguf_le64(p); break;
    }
    return 1;
}

int64_t pam_gguf_arr_i64(const pam_gguf_value *arr, uint64_t i) {
    uint64_t b;
    if (!gguf_arr_elem(arr, i, &b)) return 0;
    switch (arr->v.arr.type) {
    case PAM_GGUF_INT8: return (int8_t)b;
    case PAM_GGUF_INT16: return (int16_t)b;
    case PAM_GGUF_INT32: return (int32_t)b;
    case PAM_GGUF_FLOAT32:
    case PAM_GGUF_FLOAT64: {
        double d = pam_gguf_arr_f64(arr, i);
        if (!(d > -9.2e18 && d < 9.2e18)) return 0; /* NaN or out of int64 range */
        return (int64_t)d;
    }
    default: return (int64_t)b; /* unsigned types and bool */
    }
}

double pam_gguf_arr_f64(const pam_gguf_value *arr, uint64_t i) {
    uint64_t b;
    if (!gguf_arr_elem(arr, i, &b)) return 0.0;
    switch (arr->v.arr.type) {
    case PAM_GGUF_FLOAT32: {
        uint32_t b32 = (uint32_t)b;
        float f;
        memcpy(&f, &b32, sizeof f);
        return f;
    }
    case PAM_GGUF_FLOAT64: {
        double d;
        memcpy(&d, &b, sizeof d);
        return d;
    }
    case PAM_GGUF_INT8:
    case PAM_GGUF_INT16:
    case PAM_GGUF_INT32:
    case PAM_GGUF_INT64: return (double)pam_gguf_arr_i64(arr, i);
    default: return (double)b;
    }
}
