/* GGUF v3 writer.
 *
 * Metadata values are deep-copied when added; tensor data is borrowed until
 * pam_gguf_writer_write() returns. Offsets are assigned at write time (the
 * alignment may change after tensors are added). Layout, as llama.cpp writes
 * it: header, metadata in insertion order, tensor infos in insertion order,
 * padding to the alignment, then each tensor's bytes padded to the alignment.
 *
 * The file is built in PATH.tmp, fsync'd and renamed over PATH, so PATH is
 * either the old file or the complete new one; on any failure the temporary
 * file is removed. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/status.h"
#include "kernels/dtype.h"
#include "model/gguf.h"

/* Same bound as the reader, so whatever we write we can read back. */
#define GGUF_W_MAX_DEPTH 8
#define GGUF_W_BUF_BYTES (1u << 16)

typedef struct gguf_wkv {
    char *key;
    pam_gguf_value value; /* owns every string, payload and item list */
} gguf_wkv;

typedef struct gguf_wtensor {
    char *name;
    uint32_t type;
    uint32_t n_dims;
    int64_t ne[PAM_GGUF_MAX_DIMS];
    const void *data;
    size_t n_bytes;
} gguf_wtensor;

struct pam_gguf_writer {
    uint32_t alignment;
    gguf_wkv *kv;
    int64_t n_kv, cap_kv;
    gguf_wtensor *tensors;
    int64_t n_tensors, cap_tensors;
};

/* Buffered output to a file descriptor; the first error sticks. */
typedef struct gguf_out {
    int fd;
    const char *path;
    uint8_t *buf;
    size_t n;
    uint64_t pos; /* bytes emitted so far, for padding */
    pam_status st;
} gguf_out;

static size_t gguf_w_scalar_size(pam_gguf_type t) {
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

/* ---- value ownership ---------------------------------------------------------- */

static void gguf_w_value_free(pam_gguf_value *v) {
    if (v->type == PAM_GGUF_STRING) {
        free((char *)v->v.str.ptr);
    } else if (v->type == PAM_GGUF_ARRAY) {
        free((void *)v->v.arr.data);
        if (v->v.arr.items) {
            for (uint64_t i = 0; i < v->v.arr.n; i++) gguf_w_value_free(&v->v.arr.items[i]);
            free(v->v.arr.items);
        }
    }
    memset(v, 0, sizeof *v);
}

/* Validates src and copies it into dst (zeroed by the caller). On failure dst
 * holds whatever was copied so far, which gguf_w_value_free() releases. */
static pam_status gguf_w_value_copy(const char *key, const pam_gguf_value *src, int depth, pam_gguf_value *dst) {
    if ((unsigned)src->type >= PAM_GGUF_TYPE_COUNT)
        return PAM_ERR(PAM_ERR_INVALID, "key '%s': invalid value type %d", key, (int)src->type);
    dst->type = src->type;
    if (src->type == PAM_GGUF_STRING) {
        if (src->v.str.len && !src->v.str.ptr) return PAM_ERR(PAM_ERR_INVALID, "key '%s': NULL string", key);
        if (src->v.str.len >= SIZE_MAX) return PAM_ERR(PAM_ERR_INVALID, "key '%s': string too long", key);
        char *p = malloc((size_t)src->v.str.len + 1);
        if (!p) return PAM_ERR(PAM_ERR_NOMEM, "key '%s': string of %llu bytes", key, (unsigned long long)src->v.str.len);
        if (src->v.str.len) memcpy(p, src->v.str.ptr, (size_t)src->v.str.len);
        p[src->v.str.len] = '\0';
        dst->v.str.ptr = p;
        dst->v.str.len = src->v.str.len;
        return PAM_OK;
    }
    if (src->type == PAM_GGUF_BOOL) {
        if (src->v.b != 0 && src->v.b != 1)
            return PAM_ERR(PAM_ERR_INVALID, "key '%s': bool value %d (must be 0 or 1)", key, src->v.b);
        dst->v.b = src->v.b;
        return PAM_OK;
    }
    if (src->type != PAM_GGUF_ARRAY) {
        dst->v = src->v;
        return PAM_OK;
    }
    if (depth >= GGUF_W_MAX_DEPTH)
        return PAM_ERR(PAM_ERR_INVALID, "key '%s': arrays nested deeper than %d levels", key, GGUF_W_MAX_DEPTH);
    pam_gguf_type et = src->v.arr.type;
    uint64_t n = src->v.arr.n;
    if ((unsigned)et >= PAM_GGUF_TYPE_COUNT)
        return PAM_ERR(PAM_ERR_INVALID, "key '%s': invalid array element type %d", key, (int)et);
    dst->v.arr.type = et;
    size_t es = gguf_w_scalar_size(et);
    if (es) {
        if (n > SIZE_MAX / es) return PAM_ERR(PAM_ERR_INVALID, "key '%s': array of %llu elements is too large", key, (unsigned long long)n);
        if (n && !src->v.arr.data) return PAM_ERR(PAM_ERR_INVALID, "key '%s': NULL array data", key);
        const uint8_t *sp = src->v.arr.data;
        if (et == PAM_GGUF_BOOL)
            for (uint64_t i = 0; i < n; i++)
                if (sp[i] > 1)
                    return PAM_ERR(PAM_ERR_INVALID, "key '%s': bool element %llu is %u (must be 0 or 1)", key,
                                   (unsigned long long)i, sp[i]);
        void *p = malloc(n ? (size_t)n * es : 1);
        if (!p) return PAM_ERR(PAM_ERR_NOMEM, "key '%s': array of %llu elements", key, (unsigned long long)n);
        if (n) memcpy(p, sp, (size_t)n * es);
        dst->v.arr.data = p;
        dst->v.arr.n = n;
        return PAM_OK;
    }
    if (n > SIZE_MAX / sizeof(pam_gguf_value))
        return PAM_ERR(PAM_ERR_INVALID, "key '%s': array of %llu elements is too large", key, (unsigned long long)n);
    if (n == 0) return PAM_OK;
    if (!src->v.arr.items) return PAM_ERR(PAM_ERR_INVALID, "key '%s': NULL array items", key);
    dst->v.arr.items = calloc((size_t)n, sizeof *dst->v.arr.items);
    if (!dst->v.arr.items) return PAM_ERR(PAM_ERR_NOMEM, "key '%s': array of %llu values", key, (unsigned long long)n);
    dst->v.arr.n = n;
    for (uint64_t i = 0; i < n; i++) {
        if (src->v.arr.items[i].type != et)
            return PAM_ERR(PAM_ERR_INVALID, "key '%s': element %llu has type %s in an array of %s", key,
                           (unsigned long long)i, pam_gguf_type_name(src->v.arr.items[i].type), pam_gguf_type_name(et));
        PAM_TRY(gguf_w_value_copy(key, &src->v.arr.items[i], depth + 1, &dst->v.arr.items[i]));
    }
    return PAM_OK;
}

/* ---- building -------------------------------------------------------------------- */

pam_status pam_gguf_writer_create(pam_gguf_writer **out) {
    if (!out) return PAM_ERR(PAM_ERR_INVALID, "pam_gguf_writer_create: NULL out");
    pam_gguf_writer *w = calloc(1, sizeof *w);
    if (!w) return PAM_ERR(PAM_ERR_NOMEM, "gguf writer");
    w->alignment = PAM_GGUF_DEFAULT_ALIGNMENT;
    *out = w;
    return PAM_OK;
}

void pam_gguf_writer_destroy(pam_gguf_writer *w) {
    if (!w) return;
    for (int64_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        gguf_w_value_free(&w->kv[i].value);
    }
    free(w->kv);
    for (int64_t i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
    free(w->tensors);
    free(w);
}

static gguf_wkv *gguf_w_find_kv(pam_gguf_writer *w, const char *key) {
    for (int64_t i = 0; i < w->n_kv; i++)
        if (!strcmp(w->kv[i].key, key)) return &w->kv[i];
    return NULL;
}

/* Appends key with a deep copy of v; the writer is unchanged on failure. */
static pam_status gguf_w_add(pam_gguf_writer *w, const char *key, const pam_gguf_value *v) {
    if (!w || !key || !v) return PAM_ERR(PAM_ERR_INVALID, "gguf writer: NULL argument");
    if (!*key) return PAM_ERR(PAM_ERR_INVALID, "gguf writer: empty key");
    if (gguf_w_find_kv(w, key)) return PAM_ERR(PAM_ERR_INVALID, "duplicate key '%s'", key);
    if (w->n_kv == w->cap_kv) {
        int64_t cap = w->cap_kv ? w->cap_kv * 2 : 16;
        gguf_wkv *kv = realloc(w->kv, (size_t)cap * sizeof *kv);
        if (!kv) return PAM_ERR(PAM_ERR_NOMEM, "gguf writer: %lld keys", (long long)cap);
        w->kv = kv;
        w->cap_kv = cap;
    }
    gguf_wkv e = {0};
    e.key = strdup(key);
    if (!e.key) return PAM_ERR(PAM_ERR_NOMEM, "key '%s'", key);
    pam_status st = gguf_w_value_copy(key, v, 0, &e.value);
    if (st != PAM_OK) {
        gguf_w_value_free(&e.value);
        free(e.key);
        return st;
    }
    w->kv[w->n_kv++] = e;
    return PAM_OK;
}

pam_status pam_gguf_writer_set_alignment(pam_gguf_writer *w, uint32_t alignment) {
    if (!w) return PAM_ERR(PAM_ERR_INVALID, "gguf writer: NULL writer");
    if (alignment == 0 || (alignment & (alignment - 1)))
        return PAM_ERR(PAM_ERR_INVALID, "gguf writer: alignment %u is not a nonzero power of two", alignment);
    gguf_wkv *e = gguf_w_find_kv(w, "general.alignment");
    if (e) {
        if (e->value.type != PAM_GGUF_UINT32)
            return PAM_ERR(PAM_ERR_INVALID, "key 'general.alignment' already added with type %s",
                           pam_gguf_type_name(e->value.type));
        e->value.v.u64 = alignment;
    } else if (alignment != PAM_GGUF_DEFAULT_ALIGNMENT) {
        pam_gguf_value v = {.type = PAM_GGUF_UINT32, .v.u64 = alignment};
        PAM_TRY(gguf_w_add(w, "general.alignment", &v));
    }
    w->alignment = alignment;
    return PAM_OK;
}

pam_status pam_gguf_writer_add_u32(pam_gguf_writer *w, const char *key, uint32_t v) {
    /* The key that sets the alignment must agree with the layout we write. */
    if (w && key && !strcmp(key, "general.alignment")) {
        if (gguf_w_find_kv(w, key)) return PAM_ERR(PAM_ERR_INVALID, "duplicate key '%s'", key);
        PAM_TRY(pam_gguf_writer_set_alignment(w, v));
        if (gguf_w_find_kv(w, key)) return PAM_OK; /* set_alignment recorded it */
    }
    pam_gguf_value val = {.type = PAM_GGUF_UINT32, .v.u64 = v};
    return gguf_w_add(w, key, &val);
}

pam_status pam_gguf_writer_add_i32(pam_gguf_writer *w, const char *key, int32_t v) {
    pam_gguf_value val = {.type = PAM_GGUF_INT32, .v.i64 = v};
    return gguf_w_add(w, key, &val);
}

pam_status pam_gguf_writer_add_u64(pam_gguf_writer *w, const char *key, uint64_t v) {
    pam_gguf_value val = {.type = PAM_GGUF_UINT64, .v.u64 = v};
    return gguf_w_add(w, key, &val);
}

pam_status pam_gguf_writer_add_f32(pam_gguf_writer *w, const char *key, float v) {
    pam_gguf_value val = {.type = PAM_GGUF_FLOAT32, .v.f64 = v};
    return gguf_w_add(w, key, &val);
}

pam_status pam_gguf_writer_add_bool(pam_gguf_writer *w, const char *key, int v) {
    pam_gguf_value val = {.type = PAM_GGUF_BOOL, .v.b = v != 0};
    return gguf_w_add(w, key, &val);
}

pam_status pam_gguf_writer_add_str(pam_gguf_writer *w, const char *key, const char *v) {
    if (!v) return PAM_ERR(PAM_ERR_INVALID, "key '%s': NULL string", key ? key : "(null)");
    pam_gguf_value val = {.type = PAM_GGUF_STRING, .v.str = {v, strlen(v)}};
    return gguf_w_add(w, key, &val);
}

pam_status pam_gguf_writer_add_arr(pam_gguf_writer *w, const char *key, pam_gguf_type elem, const void *data,
                                   uint64_t n) {
    if (!gguf_w_scalar_size(elem))
        return PAM_ERR(PAM_ERR_INVALID, "key '%s': add_arr needs a scalar element type, got %s",
                       key ? key : "(null)", pam_gguf_type_name(elem));
    pam_gguf_value val = {.type = PAM_GGUF_ARRAY, .v.arr = {.type = elem, .n = n, .data = data}};
    return gguf_w_add(w, key, &val);
}

pam_status pam_gguf_writer_add_arr_str(pam_gguf_writer *w, const char *key, const char *const *strs, uint64_t n) {
    if (n && !strs) return PAM_ERR(PAM_ERR_INVALID, "key '%s': NULL string array", key ? key : "(null)");
    if (n > SIZE_MAX / sizeof(pam_gguf_value))
        return PAM_ERR(PAM_ERR_INVALID, "key '%s': too many strings", key ? key : "(null)");
    /* A borrowed view; gguf_w_add deep-copies it. */
    pam_gguf_value *items = n ? malloc((size_t)n * sizeof *items) : NULL;
    if (n && !items) return PAM_ERR(PAM_ERR_NOMEM, "key '%s': %llu strings", key ? key : "(null)", (unsigned long long)n);
    for (uint64_t i = 0; i < n; i++) {
        if (!strs[i]) {
            free(items);
            return PAM_ERR(PAM_ERR_INVALID, "key '%s': string %llu is NULL", key ? key : "(null)", (unsigned long long)i);
        }
        items[i] = (pam_gguf_value){.type = PAM_GGUF_STRING, .v.str = {strs[i], strlen(strs[i])}};
    }
    pam_gguf_value val = {.type = PAM_GGUF_ARRAY, .v.arr = {.type = PAM_GGUF_STRING, .n = n, .items = items}};
    pam_status st = gguf_w_add(w, key, &val);
    free(items);
    return st;
}

pam_status pam_gguf_writer_add_value(pam_gguf_writer *w, const char *key, const pam_gguf_value *v) {
    if (v && v->type == PAM_GGUF_UINT32 && key && !strcmp(key, "general.alignment"))
        return pam_gguf_writer_add_u32(w, key, (uint32_t)v->v.u64);
    return gguf_w_add(w, key, v);
}

pam_status pam_gguf_writer_add_tensor(pam_gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                                      const int64_t *ne, const void *data, size_t n_bytes) {
    if (!w || !name || !ne) return PAM_ERR(PAM_ERR_INVALID, "gguf writer: NULL argument");
    if (!*name) return PAM_ERR(PAM_ERR_INVALID, "gguf writer: empty tensor name");
    if (n_dims < 1 || n_dims > PAM_GGUF_MAX_DIMS)
        return PAM_ERR(PAM_ERR_INVALID, "tensor '%s': n_dims %u out of range 1..%d", name, n_dims, PAM_GGUF_MAX_DIMS);
    if (!pam_dtype_get(type)) return PAM_ERR(PAM_ERR_INVALID, "tensor '%s': unknown tensor type id %u", name, type);
    int64_t dims[PAM_GGUF_MAX_DIMS] = {1, 1, 1, 1};
    for (uint32_t d = 0; d < n_dims; d++) {
        if (ne[d] <= 0)
            return PAM_ERR(PAM_ERR_INVALID, "tensor '%s': dimension %u has size %lld", name, d, (long long)ne[d]);
        dims[d] = ne[d];
    }
    size_t row, want;
    pam_status st = pam_dtype_row_bytes(type, dims[0], &row);
    if (st != PAM_OK) return PAM_ERR(PAM_ERR_INVALID, "tensor '%s': %s", name, pam_last_error());
    int64_t n_elems = dims[0];
    if (__builtin_mul_overflow((size_t)dims[1], (size_t)dims[2], &want) ||
        __builtin_mul_overflow(want, (size_t)dims[3], &want) || __builtin_mul_overflow(want, row, &want) ||
        __builtin_mul_overflow(n_elems, dims[1], &n_elems) || __builtin_mul_overflow(n_elems, dims[2], &n_elems) ||
        __builtin_mul_overflow(n_elems, dims[3], &n_elems))
        return PAM_ERR(PAM_ERR_INVALID, "tensor '%s': size overflows", name);
    if (n_bytes != want)
        return PAM_ERR(PAM_ERR_INVALID, "tensor '%s': %zu bytes given, %s of this shape needs %zu", name, n_bytes,
                       pam_dtype_name(type), want);
    if (!data) return PAM_ERR(PAM_ERR_INVALID, "tensor '%s': NULL data", name);
    for (int64_t i = 0; i < w->n_tensors; i++)
        if (!strcmp(w->tensors[i].name, name)) return PAM_ERR(PAM_ERR_INVALID, "duplicate tensor name '%s'", name);
    if (w->n_tensors == w->cap_tensors) {
        int64_t cap = w->cap_tensors ? w->cap_tensors * 2 : 16;
        gguf_wtensor *t = realloc(w->tensors, (size_t)cap * sizeof *t);
        if (!t) return PAM_ERR(PAM_ERR_NOMEM, "gguf writer: %lld tensors", (long long)cap);
        w->tensors = t;
        w->cap_tensors = cap;
    }
    char *copy = strdup(name);
    if (!copy) return PAM_ERR(PAM_ERR_NOMEM, "tensor '%s'", name);
    gguf_wtensor *t = &w->tensors[w->n_tensors++];
    *t = (gguf_wtensor){.name = copy, .type = type, .n_dims = n_dims, .data = data, .n_bytes = n_bytes};
    memcpy(t->ne, dims, sizeof dims);
    return PAM_OK;
}

/* ---- output ------------------------------------------------------------------------ */

static void gguf_out_raw(gguf_out *o, const void *p, size_t n) {
    const uint8_t *s = p;
    while (n && o->st == PAM_OK) {
        ssize_t k = write(o->fd, s, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            o->st = PAM_ERR(PAM_ERR_IO, "%s: write: %s", o->path, k < 0 ? strerror(errno) : "no progress");
            return;
        }
        s += k;
        n -= (size_t)k;
    }
}

static void gguf_out_flush(gguf_out *o) {
    gguf_out_raw(o, o->buf, o->n);
    o->n = 0;
}

static void gguf_out_bytes(gguf_out *o, const void *p, size_t n) {
    if (o->st != PAM_OK) return;
    o->pos += n;
    if (n >= GGUF_W_BUF_BYTES) { /* big tensor data goes straight out */
        gguf_out_flush(o);
        gguf_out_raw(o, p, n);
        return;
    }
    if (o->n + n > GGUF_W_BUF_BYTES) gguf_out_flush(o);
    memcpy(o->buf + o->n, p, n);
    o->n += n;
}

static void gguf_out_le(gguf_out *o, uint64_t v, int bytes) {
    uint8_t b[8];
    for (int i = 0; i < bytes; i++) b[i] = (uint8_t)(v >> (8 * i));
    gguf_out_bytes(o, b, (size_t)bytes);
}

static void gguf_out_str(gguf_out *o, const char *p, uint64_t len) {
    gguf_out_le(o, len, 8);
    gguf_out_bytes(o, p, (size_t)len);
}

static void gguf_out_pad(gguf_out *o, size_t alignment) {
    static const uint8_t zeros[64];
    size_t pad = (alignment - o->pos % alignment) % alignment;
    while (pad) {
        size_t k = pad < sizeof zeros ? pad : sizeof zeros;
        gguf_out_bytes(o, zeros, k);
        pad -= k;
    }
}

static void gguf_out_value(gguf_out *o, const pam_gguf_value *v, int with_type) {
    if (with_type) gguf_out_le(o, (uint32_t)v->type, 4);
    switch (v->type) {
    case PAM_GGUF_UINT8:
    case PAM_GGUF_INT8: gguf_out_le(o, v->v.u64, 1); break;
    case PAM_GGUF_UINT16:
    case PAM_GGUF_INT16: gguf_out_le(o, v->v.u64, 2); break;
    case PAM_GGUF_UINT32:
    case PAM_GGUF_INT32: gguf_out_le(o, v->v.u64, 4); break;
    case PAM_GGUF_UINT64:
    case PAM_GGUF_INT64: gguf_out_le(o, v->v.u64, 8); break;
    case PAM_GGUF_BOOL: gguf_out_le(o, (uint64_t)v->v.b, 1); break;
    case PAM_GGUF_FLOAT32: {
        float f = (float)v->v.f64;
        uint32_t bits;
        memcpy(&bits, &f, sizeof bits);
        gguf_out_le(o, bits, 4);
        break;
    }
    case PAM_GGUF_FLOAT64: {
        uint64_t bits;
        memcpy(&bits, &v->v.f64, sizeof bits);
        gguf_out_le(o, bits, 8);
        break;
    }
    case PAM_GGUF_STRING: gguf_out_str(o, v->v.str.ptr, v->v.str.len); break;
    case PAM_GGUF_ARRAY: {
        gguf_out_le(o, (uint32_t)v->v.arr.type, 4);
        gguf_out_le(o, v->v.arr.n, 8);
        size_t es = gguf_w_scalar_size(v->v.arr.type);
        if (es) {
            /* Payload was copied from packed little-endian input: write as is. */
            gguf_out_bytes(o, v->v.arr.data, (size_t)v->v.arr.n * es);
        } else {
            /* Nested arrays are written without a per-element type tag. */
            for (uint64_t i = 0; i < v->v.arr.n; i++) gguf_out_value(o, &v->v.arr.items[i], 0);
        }
        break;
    }
    default: break;
    }
}

static pam_status gguf_w_emit(const pam_gguf_writer *w, gguf_out *o) {
    gguf_out_bytes(o, "GGUF", 4);
    gguf_out_le(o, 3, 4);
    gguf_out_le(o, (uint64_t)w->n_tensors, 8);
    gguf_out_le(o, (uint64_t)w->n_kv, 8);
    for (int64_t i = 0; i < w->n_kv; i++) {
        gguf_out_str(o, w->kv[i].key, strlen(w->kv[i].key));
        gguf_out_value(o, &w->kv[i].value, 1);
    }
    uint64_t offset = 0;
    for (int64_t i = 0; i < w->n_tensors; i++) {
        const gguf_wtensor *t = &w->tensors[i];
        gguf_out_str(o, t->name, strlen(t->name));
        gguf_out_le(o, t->n_dims, 4);
        for (uint32_t d = 0; d < t->n_dims; d++) gguf_out_le(o, (uint64_t)t->ne[d], 8);
        gguf_out_le(o, t->type, 4);
        gguf_out_le(o, offset, 8);
        offset += t->n_bytes;
        offset += (w->alignment - offset % w->alignment) % w->alignment;
    }
    gguf_out_pad(o, w->alignment);
    for (int64_t i = 0; i < w->n_tensors; i++) {
        gguf_out_bytes(o, w->tensors[i].data, w->tensors[i].n_bytes);
        gguf_out_pad(o, w->alignment);
    }
    gguf_out_flush(o);
    return o->st;
}

pam_status pam_gguf_writer_write(pam_gguf_writer *w, const char *path) {
    if (!w || !path) return PAM_ERR(PAM_ERR_INVALID, "pam_gguf_writer_write: NULL argument");
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 5);
    uint8_t *buf = malloc(GGUF_W_BUF_BYTES);
    if (!tmp || !buf) {
        free(tmp);
        free(buf);
        return PAM_ERR(PAM_ERR_NOMEM, "gguf writer buffers");
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    pam_status st = PAM_OK;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        st = PAM_ERR(PAM_ERR_IO, "%s: %s", tmp, strerror(errno));
        goto done;
    }
    gguf_out o = {.fd = fd, .path = tmp, .buf = buf, .st = PAM_OK};
    st = gguf_w_emit(w, &o);
    if (st == PAM_OK && fsync(fd) != 0) st = PAM_ERR(PAM_ERR_IO, "%s: fsync: %s", tmp, strerror(errno));
    if (close(fd) != 0 && st == PAM_OK) st = PAM_ERR(PAM_ERR_IO, "%s: close: %s", tmp, strerror(errno));
    if (st == PAM_OK && rename(tmp, path) != 0)
        st = PAM_ERR(PAM_ERR_IO, "rename %s -> %s: %s", tmp, path, strerror(errno));
    if (st != PAM_OK) unlink(tmp);
done:
    free(tmp);
    free(buf);
    return st;
}
