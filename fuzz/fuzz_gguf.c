/* libFuzzer target for the GGUF reader: parse arbitrary bytes, then touch
 * every key, value, array element and tensor byte the reader hands out, and
 * feed the parsed file back through the writer's validation. The input is
 * copied to an exact-size heap buffer so ASan flags any read past its end.
 *
 *   ./fuzz_gguf -max_total_time=60 fuzz/seeds/fuzz_gguf   (seeds: tests/test_gguf.c) */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t g_sink;

static uint64_t walk_value(const pam_gguf_value *v) {
    uint64_t h = (uint64_t)v->type;
    switch (v->type) {
    case PAM_GGUF_STRING:
        for (uint64_t i = 0; i < v->v.str.len; i++) h = h * 31 + (uint8_t)v->v.str.ptr[i];
        break;
    case PAM_GGUF_ARRAY:
        for (uint64_t i = 0; i < v->v.arr.n; i++) {
            if (v->v.arr.items) h += walk_value(&v->v.arr.items[i]);
            else h += (uint64_t)pam_gguf_arr_i64(v, i) + (pam_gguf_arr_f64(v, i) > 0);
        }
        break;
    default: h += v->v.u64; break;
    }
    return h;
}

static uint64_t walk(const pam_gguf *g) {
    uint64_t h = pam_gguf_version(g) + pam_gguf_alignment(g) + pam_gguf_data_offset(g) + pam_gguf_file_size(g);
    for (int64_t i = 0; i < pam_gguf_n_kv(g); i++) {
        const char *key = pam_gguf_kv_key(g, i);
        const pam_gguf_value *v = pam_gguf_kv_value(g, i);
        if (pam_gguf_find(g, key) != v) abort();
        h += strlen(key) + walk_value(v);
        uint64_t u;
        int64_t s;
        double f;
        int b;
        pam_gguf_str str;
        const pam_gguf_value *arr;
        if (pam_gguf_get_u64(g, key, &u) == PAM_OK) h += u;
        if (pam_gguf_get_i64(g, key, &s) == PAM_OK) h += (uint64_t)s;
        if (pam_gguf_get_f64(g, key, &f) == PAM_OK) h += f > 0;
        if (pam_gguf_get_bool(g, key, &b) == PAM_OK) h += (uint64_t)b;
        if (pam_gguf_get_str(g, key, &str) == PAM_OK) h += str.len;
        if (pam_gguf_get_arr(g, key, PAM_GGUF_TYPE_COUNT, &arr) == PAM_OK) h += arr->v.arr.n;
    }
    for (int64_t i = 0; i < pam_gguf_n_tensors(g); i++) {
        const pam_gguf_tensor *t = pam_gguf_tensor_at(g, i);
        if (pam_gguf_find_tensor(g, t->name) != t) abort();
        const uint8_t *p = t->data;
        /* first, middle and last byte: enough for ASan to check the range ends */
        if (t->n_bytes) h += p[0] + p[t->n_bytes / 2] + p[t->n_bytes - 1];
    }
    if (pam_gguf_find(g, "no.such.key") || pam_gguf_find_tensor(g, "no.such.tensor")) h++;
    return h;
}

/* Whatever the reader accepts, the writer's validation must accept too. */
static void rewrite(const pam_gguf *g) {
    pam_gguf_writer *w;
    if (pam_gguf_writer_create(&w) != PAM_OK) return;
    for (int64_t i = 0; i < pam_gguf_n_kv(g); i++)
        if (pam_gguf_writer_add_value(w, pam_gguf_kv_key(g, i), pam_gguf_kv_value(g, i)) != PAM_OK) abort();
    for (int64_t i = 0; i < pam_gguf_n_tensors(g); i++) {
        const pam_gguf_tensor *t = pam_gguf_tensor_at(g, i);
        if (pam_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, t->n_bytes) != PAM_OK)
            abort();
    }
    pam_gguf_writer_destroy(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) return 0;
    memcpy(copy, data, size);
    pam_gguf *g = NULL;
    if (pam_gguf_open_buffer(copy, size, &g) == PAM_OK) {
        g_sink += walk(g);
        rewrite(g);
        pam_gguf_close(g);
    }
    free(copy);
    return 0;
}
