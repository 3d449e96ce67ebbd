/* GGUF reader (versions 2 and 3). The file is mapped read-only; every size,
 * count, string length, tensor shape and offset is validated against the
 * file before use, so a truncated or corrupt file yields PAM_ERR_FORMAT (or
 * PAM_ERR_UNSUPPORTED for an unknown tensor type) with a message naming the
 * offending key/tensor — never an out-of-bounds read.
 *
 * Strings (pam_gguf_str) point into the mapping and are NOT NUL-terminated.
 * Keys and tensor names are returned as NUL-terminated copies. */
#ifndef PAM_MODEL_GGUF_H
#define PAM_MODEL_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "pam.h"

typedef enum pam_gguf_type {
    PAM_GGUF_UINT8 = 0,
    PAM_GGUF_INT8 = 1,
    PAM_GGUF_UINT16 = 2,
    PAM_GGUF_INT16 = 3,
    PAM_GGUF_UINT32 = 4,
    PAM_GGUF_INT32 = 5,
    PAM_GGUF_FLOAT32 = 6,
    PAM_GGUF_BOOL = 7,
    PAM_GGUF_STRING = 8,
    PAM_GGUF_ARRAY = 9,
    PAM_GGUF_UINT64 = 10,
    PAM_GGUF_INT64 = 11,
    PAM_GGUF_FLOAT64 = 12,
    PAM_GGUF_TYPE_COUNT = 13,
} pam_gguf_type;

#define PAM_GGUF_DEFAULT_ALIGNMENT 32
#define PAM_GGUF_MAX_DIMS 4

typedef struct pam_gguf pam_gguf;

typedef struct pam_gguf_str {
    const char *ptr; /* not NUL-terminated */
    uint64_t len;
} pam_gguf_str;

typedef struct pam_gguf_value pam_gguf_value;
struct pam_gguf_value {
    pam_gguf_type type;
    union {
        uint64_t u64; /* UINT8/16/32/64 */
        int64_t i64;  /* INT8/16/32/64 */
        double f64;   /* FLOAT32/64 */
        int b;        /* BOOL */
        pam_gguf_str str;
        struct {
            pam_gguf_type type; /* element type */
            uint64_t n;
            /* Scalar element types: the packed little-endian elements as
             * stored in the file (may be unaligned; use the accessors). */
            const void *data;
            /* STRING and ARRAY element types: n parsed values; else NULL. */
            pam_gguf_value *items;
        } arr;
    } v;
};

typedef struct pam_gguf_tensor {
    const char *name;
    uint32_t n_dims;
    int64_t ne[PAM_GGUF_MAX_DIMS]; /* ne[0] is the contiguous (row) dimension; unused dims are 1 */
    uint32_t type;                 /* pam_dtype */
    uint64_t offset;               /* relative to the data section */
    const void *data;              /* inside the mapping, bounds-checked */
    size_t n_bytes;
} pam_gguf_tensor;

/* Maps the file. */
pam_status pam_gguf_open(const char *path, pam_gguf **out);
/* Parses a caller-owned buffer that must outlive the pam_gguf (fuzzing, tests). */
pam_status pam_gguf_open_buffer(const void *data, size_t size, pam_gguf **out);
void pam_gguf_close(pam_gguf *g);

uint32_t pam_gguf_version(const pam_gguf *g);
size_t pam_gguf_alignment(const pam_gguf *g);
size_t pam_gguf_data_offset(const pam_gguf *g);
size_t pam_gguf_file_size(const pam_gguf *g);
const char *pam_gguf_type_name(pam_gguf_type t);

int64_t pam_gguf_n_kv(const pam_gguf *g);
const char *pam_gguf_kv_key(const pam_gguf *g, int64_t i);
const pam_gguf_value *pam_gguf_kv_value(const pam_gguf *g, int64_t i);
const pam_gguf_value *pam_gguf_find(const pam_gguf *g, const char *key); /* NULL if absent */

/* Typed getters: PAM_ERR_NOT_FOUND if the key is absent, PAM_ERR_FORMAT if it
 * has an incompatible type or value (message names key and types).
 * get_u64 accepts any integer type holding a non-negative value; get_i64 any
 * integer type that fits; get_f64 float or integer types. */
pam_status pam_gguf_get_u64(const pam_gguf *g, const char *key, uint64_t *out);
pam_status pam_gguf_get_i64(const pam_gguf *g, const char *key, int64_t *out);
pam_status pam_gguf_get_f64(const pam_gguf *g, const char *key, double *out);
pam_status pam_gguf_get_bool(const pam_gguf *g, const char *key, int *out);
pam_status pam_gguf_get_str(const pam_gguf *g, const char *key, pam_gguf_str *out);
/* An array whose elements have type elem (PAM_GGUF_TYPE_COUNT accepts any). */
pam_status pam_gguf_get_arr(const pam_gguf *g, const char *key, pam_gguf_type elem,
                            const pam_gguf_value **out);
/* Element i of a scalar array, converted. i must be < arr->v.arr.n. */
double pam_gguf_arr_f64(const pam_gguf_value *arr, uint64_t i);
int64_t pam_gguf_arr_i64(const pam_gguf_value *arr, uint64_t i);

int64_t pam_gguf_n_tensors(const pam_gguf *g);
const pam_gguf_tensor *pam_gguf_tensor_at(const pam_gguf *g, int64_t i);
const pam_gguf_tensor *pam_gguf_find_tensor(const pam_gguf *g, const char *name); /* NULL if absent */

/* ---- Writer ------------------------------------------------------------
 * Builds a GGUF v3 file in memory-light fashion: metadata is copied, tensor
 * data is borrowed until pam_gguf_writer_write() returns. The file is written
 * to PATH.tmp and renamed, so a failure never leaves a half-written PATH. */
typedef struct pam_gguf_writer pam_gguf_writer;

pam_status pam_gguf_writer_create(pam_gguf_writer **out);
void pam_gguf_writer_destroy(pam_gguf_writer *w);
/* Also records general.alignment when it differs from the default. */
pam_status pam_gguf_writer_set_alignment(pam_gguf_writer *w, uint32_t alignment);
pam_status pam_gguf_writer_add_u32(pam_gguf_writer *w, const char *key, uint32_t v);
pam_status pam_gguf_writer_add_i32(pam_gguf_writer *w, const char *key, int32_t v);
pam_status pam_gguf_writer_add_u64(pam_gguf_writer *w, const char *key, uint64_t v);
pam_status pam_gguf_writer_add_f32(pam_gguf_writer *w, const char *key, float v);
pam_status pam_gguf_writer_add_bool(pam_gguf_writer *w, const char *key, int v);
pam_status pam_gguf_writer_add_str(pam_gguf_writer *w, const char *key, const char *v);
/* Array of n scalars of type elem, packed little-endian in data. */
pam_status pam_gguf_writer_add_arr(pam_gguf_writer *w, const char *key, pam_gguf_type elem,
                                   const void *data, uint64_t n);
pam_status pam_gguf_writer_add_arr_str(pam_gguf_writer *w, const char *key,
                                       const char *const *strs, uint64_t n);
/* Any value, including nested arrays (copied deeply). */
pam_status pam_gguf_writer_add_value(pam_gguf_writer *w, const char *key, const pam_gguf_value *v);
pam_status pam_gguf_writer_add_tensor(pam_gguf_writer *w, const char *name, uint32_t type,
                                      uint32_t n_dims, const int64_t *ne, const void *data,
                                      size_t n_bytes);
pam_status pam_gguf_writer_write(pam_gguf_writer *w, const char *path);

#endif
