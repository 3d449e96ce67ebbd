/* GGUF reader and writer: round trips, llama.cpp-written files, and a wide
 * set of corrupt inputs that must fail cleanly with a message. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernels/dtype.h"
#include "model/gguf.h"
#include "util/test_util.h"

/* ---- a tiny byte builder for hand-written files ---------------------------- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
} buf;

static void b_bytes(buf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void b_u8(buf *b, uint8_t v) { b_bytes(b, &v, 1); }
static void b_u32(buf *b, uint32_t v) {
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    b_bytes(b, x, 4);
}
static void b_u64(buf *b, uint64_t v) {
    b_u32(b, (uint32_t)v);
    b_u32(b, (uint32_t)(v >> 32));
}
static void b_str(buf *b, const char *s) {
    b_u64(b, strlen(s));
    b_bytes(b, s, strlen(s));
}
static void b_pad(buf *b, size_t align) {
    while (b->n % align) b_u8(b, 0);
}
static void b_header(buf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    b_bytes(b, "GGUF", 4);
    b_u32(b, version);
    b_u64(b, n_tensors);
    b_u64(b, n_kv);
}
/* Tensor info for a 1-D F32 tensor of n elements at offset. */
static void b_tensor_f32(buf *b, const char *name, uint64_t n, uint64_t offset) {
    b_str(b, name);
    b_u32(b, 1);
    b_u64(b, n);
    b_u32(b, PAM_DT_F32);
    b_u64(b, offset);
}

static pam_status open_buf(const buf *b, pam_gguf **g) { return pam_gguf_open_buffer(b->p, b->n, g); }

/* Asserts that parsing b fails with code and that the message mentions needle. */
static void expect_fail(const buf *b, pam_status code, const char *needle) {
    pam_gguf *g = NULL;
    pam_status st = open_buf(b, &g);
    if (st != code || (needle && !strstr(pam_last_error(), needle)))
        fail_msg("expected status %d with '%s', got %d: %s", code, needle ? needle : "", st, pam_last_error());
    assert_null(g);
}

/* ---- hand-written files ------------------------------------------------------ */

/* v2 and v3 share the layout; a v2 file with one key and one tensor. */
static void test_read_handwritten_v2(void **state) {
    buf b = {0};
    b_header(&b, 2, 1, 2);
    b_str(&b, "general.name");
    b_u32(&b, PAM_GGUF_STRING);
    b_str(&b, "tiny");
    b_str(&b, "x.count");
    b_u32(&b, PAM_GGUF_INT32);
    b_u32(&b, (uint32_t)-7);
    b_tensor_f32(&b, "w", 4, 0);
    b_pad(&b, 32);
    size_t data_at = b.n;
    float vals[4] = {1, 2, 3, 4};
    b_bytes(&b, vals, sizeof vals);

    pam_gguf *g;
    assert_int_equal(open_buf(&b, &g), PAM_OK);
    assert_int_equal(pam_gguf_version(g), 2);
    assert_int_equal(pam_gguf_alignment(g), 32);
    assert_int_equal(pam_gguf_data_offset(g), data_at);
    assert_int_equal(pam_gguf_n_kv(g), 2);
    assert_string_equal(pam_gguf_kv_key(g, 0), "general.name");
    pam_gguf_str s;
    assert_int_equal(pam_gguf_get_str(g, "general.name", &s), PAM_OK);
    assert_int_equal(s.len, 4);
    assert_memory_equal(s.ptr, "tiny", 4);
    int64_t i64;
    uint64_t u64;
    double f64;
    assert_int_equal(pam_gguf_get_i64(g, "x.count", &i64), PAM_OK);
    assert_int_equal(i64, -7);
    assert_int_equal(pam_gguf_get_u64(g, "x.count", &u64), PAM_ERR_FORMAT);
    assert_int_equal(pam_gguf_get_f64(g, "x.count", &f64), PAM_OK);
    assert_true(f64 == -7.0);
    assert_int_equal(pam_gguf_get_str(g, "x.count", &s), PAM_ERR_FORMAT);
    assert_non_null(strstr(pam_last_error(), "x.count"));
    assert_int_equal(pam_gguf_get_u64(g, "missing", &u64), PAM_ERR_NOT_FOUND);
    assert_null(pam_gguf_find(g, "missing"));
    assert_int_equal(pam_gguf_n_tensors(g), 1);
    const pam_gguf_tensor *t = pam_gguf_find_tensor(g, "w");
    assert_non_null(t);
    assert_ptr_equal(t, pam_gguf_tensor_at(g, 0));
    assert_int_equal(t->n_dims, 1);
    assert_int_equal(t->ne[0], 4);
    assert_int_equal(t->ne[1], 1);
    assert_int_equal(t->n_bytes, 16);
    assert_memory_equal(t->data, vals, 16);
    assert_null(pam_gguf_find_tensor(g, "v"));
    pam_gguf_close(g);
    free(b.p);
}

static void test_bad_magic_and_version(void **state) {
    buf b = {0};
    b_bytes(&b, "GGML", 4);
    b_u32(&b, 3);
    b_u64(&b, 0);
    b_u64(&b, 0);
    expect_fail(&b, PAM_ERR_FORMAT, "bad magic");
    b.n = 0;
    b_header(&b, 1, 0, 0);
    expect_fail(&b, PAM_ERR_UNSUPPORTED, "version 1");
    b.n = 0;
    b_header(&b, 99, 0, 0);
    expect_fail(&b, PAM_ERR_UNSUPPORTED, "version 99");
    b.n = 0;
    expect_fail(&b, PAM_ERR_FORMAT, "empty");
    free(b.p);
}

static void test_open_missing_path(void **state) {
    pam_gguf *g = NULL;
    const char *path = pam_test_tmp("definitely-not-here.gguf");
    remove(path);
    assert_int_equal(pam_gguf_open(path, &g), PAM_ERR_IO);
    assert_null(g);
    assert_non_null(strstr(pam_last_error(), path));
}


/* ---- writer -> reader round trips ---------------------------------------------- */

static int file_exists(const char *path) { return access(path, F_OK) == 0; }

/* Writes w to a scratch file named name and opens it. */
static pam_gguf *write_and_open(pam_gguf_writer *w, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s", pam_test_tmp(name));
    if (pam_gguf_writer_write(w, path) != PAM_OK) fail_msg("write %s: %s", path, pam_last_error());
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    assert_false(file_exists(tmp));
    pam_gguf *g;
    if (pam_gguf_open(path, &g) != PAM_OK) fail_msg("open %s: %s", path, pam_last_error());
    return g;
}

static void check_str(pam_gguf_str s, const char *want) {
    assert_int_equal(s.len, strlen(want));
    assert_memory_equal(s.ptr, want, s.len);
}

static void test_roundtrip_metadata(void **state) {
    pam_gguf_writer *w;
    assert_int_equal(pam_gguf_writer_create(&w), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_u32(w, "s.u32", 4000000000u), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_i32(w, "s.i32", -123456), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_u64(w, "s.u64", UINT64_MAX - 5), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_f32(w, "s.f32", 1.5e-5f), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_bool(w, "s.true", 7), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_bool(w, "s.false", 0), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_str(w, "s.str", "h\xc3\xa9llo \"world\"\n"), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_str(w, "s.empty", ""), PAM_OK);
    /* The remaining scalar types go through add_value. */
    pam_gguf_value v = {.type = PAM_GGUF_UINT8, .v.u64 = 255};
    assert_int_equal(pam_gguf_writer_add_value(w, "s.u8", &v), PAM_OK);
    v = (pam_gguf_value){.type = PAM_GGUF_INT8, .v.i64 = -128};
    assert_int_equal(pam_gguf_writer_add_value(w, "s.i8", &v), PAM_OK);
    v = (pam_gguf_value){.type = PAM_GGUF_UINT16, .v.u64 = 65535};
    assert_int_equal(pam_gguf_writer_add_value(w, "s.u16", &v), PAM_OK);
    v = (pam_gguf_value){.type = PAM_GGUF_INT16, .v.i64 = -32768};
    assert_int_equal(pam_gguf_writer_add_value(w, "s.i16", &v), PAM_OK);
    v = (pam_gguf_value){.type = PAM_GGUF_INT64, .v.i64 = INT64_MIN};
    assert_int_equal(pam_gguf_writer_add_value(w, "s.i64", &v), PAM_OK);
    v = (pam_gguf_value){.type = PAM_GGUF_FLOAT64, .v.f64 = -2.718281828459045};
    assert_int_equal(pam_gguf_writer_add_value(w, "s.f64", &v), PAM_OK);

    /* Arrays of every scalar type. */
    uint8_t a_u8[] = {0, 1, 255};
    int8_t a_i8[] = {-128, 0, 127};
    uint16_t a_u16[] = {0, 65535};
    int16_t a_i16[] = {-32768, 32767, -1};
    uint32_t a_u32[] = {1, 4000000000u};
    int32_t a_i32[] = {-5, 0, 2147483647};
    uint64_t a_u64[] = {UINT64_MAX, 3};
    int64_t a_i64[] = {INT64_MIN, -1, INT64_MAX};
    float a_f32[] = {0.5f, -1e30f, 3.25f};
    double a_f64[] = {1e300, -0.125};
    uint8_t a_bool[] = {1, 0, 1, 1};
    assert_int_equal(pam_gguf_writer_add_arr(w, "a.u8", PAM_GGUF_UINT8, a_u8, 3), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_arr(w, "a.i8", PAM_GGUF_INT8, a_i8, 3), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_arr(w, "a.u16", PAM_GGUF_UINT16, a_u16, 2), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_arr(w, "a.i16", PAM_GGUF_INT16, a_i16, 3), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_arr(w, "a.u32", PAM_GGUF_UINT32, a_u32, 2), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_arr(w, "a.i32", PAM_GGUF_INT32, a_i32, 3), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_arr(w, "a.u64", PAM_GGUF_UINT64, a_u64, 2), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_arr(w, "a.i64", PAM_GGUF_INT64, a_i64, 3), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_arr(w, "a.f32", PAM_GGUF_FLOAT32, a_f32, 3), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_arr(w, "a.f64", PAM_GGUF_FLOAT64, a_f64, 2), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_arr(w, "a.bool", PAM_GGUF_BOOL, a_bool, 4), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_arr(w, "a.empty", PAM_GGUF_INT32, NULL, 0), PAM_OK);
    const char *strs[] = {"<unk>", "", "\xe2\x96\x81the"};
    assert_int_equal(pam_gguf_writer_add_arr_str(w, "a.str", strs, 3), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_arr(w, "a.bad", PAM_GGUF_STRING, strs, 3), PAM_ERR_INVALID);

    /* Array of arrays of strings: [["a", "bc"], [], ["d"]]. */
    pam_gguf_value s_a[2] = {{.type = PAM_GGUF_STRING, .v.str = {"a", 1}}, {.type = PAM_GGUF_STRING, .v.str = {"bc", 2}}};
    pam_gguf_value s_d[1] = {{.type = PAM_GGUF_STRING, .v.str = {"d", 1}}};
    pam_gguf_value inner[3] = {
        {.type = PAM_GGUF_ARRAY, .v.arr = {.type = PAM_GGUF_STRING, .n = 2, .items = s_a}},
        {.type = PAM_GGUF_ARRAY, .v.arr = {.type = PAM_GGUF_STRING, .n = 0}},
        {.type = PAM_GGUF_ARRAY, .v.arr = {.type = PAM_GGUF_STRING, .n = 1, .items = s_d}},
    };
    pam_gguf_value outer = {.type = PAM_GGUF_ARRAY, .v.arr = {.type = PAM_GGUF_ARRAY, .n = 3, .items = inner}};
    assert_int_equal(pam_gguf_writer_add_value(w, "n.strs", &outer), PAM_OK);
    /* Array of arrays of arrays of int32: [[[1, 2]], [[3], [4, 5, 6]]]. */
    int32_t i12[] = {1, 2}, i3[] = {3}, i456[] = {4, 5, 6};
    pam_gguf_value l2a[1] = {{.type = PAM_GGUF_ARRAY, .v.arr = {.type = PAM_GGUF_INT32, .n = 2, .data = i12}}};
    pam_gguf_value l2b[2] = {{.type = PAM_GGUF_ARRAY, .v.arr = {.type = PAM_GGUF_INT32, .n = 1, .data = i3}},
                             {.type = PAM_GGUF_ARRAY, .v.arr = {.type = PAM_GGUF_INT32, .n = 3, .data = i456}}};
    pam_gguf_value l1[2] = {{.type = PAM_GGUF_ARRAY, .v.arr = {.type = PAM_GGUF_ARRAY, .n = 1, .items = l2a}},
                            {.type = PAM_GGUF_ARRAY, .v.arr = {.type = PAM_GGUF_ARRAY, .n = 2, .items = l2b}}};
    pam_gguf_value l0 = {.type = PAM_GGUF_ARRAY, .v.arr = {.type = PAM_GGUF_ARRAY, .n = 2, .items = l1}};
    assert_int_equal(pam_gguf_writer_add_value(w, "n.ints", &l0), PAM_OK);
    /* An element whose type disagrees with the array's is refused. */
    pam_gguf_value wrong[1] = {{.type = PAM_GGUF_INT32, .v.i64 = 1}};
    pam_gguf_value bad = {.type = PAM_GGUF_ARRAY, .v.arr = {.type = PAM_GGUF_STRING, .n = 1, .items = wrong}};
    assert_int_equal(pam_gguf_writer_add_value(w, "n.bad", &bad), PAM_ERR_INVALID);
    /* Duplicates are refused and leave the writer as it was. */
    assert_int_equal(pam_gguf_writer_add_u32(w, "s.u32", 1), PAM_ERR_INVALID);
    assert_non_null(strstr(pam_last_error(), "s.u32"));

    pam_gguf *g = write_and_open(w, "roundtrip_meta.gguf");
    pam_gguf_writer_destroy(w);

    assert_int_equal(pam_gguf_version(g), 3);
    assert_int_equal(pam_gguf_n_tensors(g), 0);
    assert_int_equal(pam_gguf_n_kv(g), 29);
    assert_string_equal(pam_gguf_kv_key(g, 0), "s.u32"); /* insertion order */
    assert_string_equal(pam_gguf_kv_key(g, 28), "n.ints");
    assert_null(pam_gguf_kv_key(g, 29));
    assert_null(pam_gguf_find(g, "n.bad"));
    uint64_t u;
    int64_t i;
    double f;
    int b;
    pam_gguf_str s;
    assert_int_equal(pam_gguf_get_u64(g, "s.u32", &u), PAM_OK);
    assert_int_equal(u, 4000000000u);
    assert_int_equal(pam_gguf_find(g, "s.u32")->type, PAM_GGUF_UINT32);
    assert_int_equal(pam_gguf_get_i64(g, "s.i32", &i), PAM_OK);
    assert_int_equal(i, -123456);
    assert_int_equal(pam_gguf_get_u64(g, "s.u64", &u), PAM_OK);
    assert_true(u == UINT64_MAX - 5);
    assert_int_equal(pam_gguf_get_i64(g, "s.u64", &i), PAM_ERR_FORMAT);
    assert_int_equal(pam_gguf_get_f64(g, "s.f32", &f), PAM_OK);
    assert_true(f == (double)1.5e-5f);
    assert_int_equal(pam_gguf_get_bool(g, "s.true", &b), PAM_OK);
    assert_int_equal(b, 1);
    assert_int_equal(pam_gguf_get_bool(g, "s.false", &b), PAM_OK);
    assert_int_equal(b, 0);
    assert_int_equal(pam_gguf_get_bool(g, "s.u32", &b), PAM_ERR_FORMAT);
    assert_int_equal(pam_gguf_get_str(g, "s.str", &s), PAM_OK);
    check_str(s, "h\xc3\xa9llo \"world\"\n");
    assert_int_equal(pam_gguf_get_str(g, "s.empty", &s), PAM_OK);
    assert_int_equal(s.len, 0);
    assert_int_equal(pam_gguf_get_u64(g, "s.u8", &u), PAM_OK);
    assert_int_equal(u, 255);
    assert_int_equal(pam_gguf_get_i64(g, "s.i8", &i), PAM_OK);
    assert_int_equal(i, -128);
    assert_int_equal(pam_gguf_get_u64(g, "s.u16", &u), PAM_OK);
    assert_int_equal(u, 65535);
    assert_int_equal(pam_gguf_get_i64(g, "s.i16", &i), PAM_OK);
    assert_int_equal(i, -32768);
    assert_int_equal(pam_gguf_get_i64(g, "s.i64", &i), PAM_OK);
    assert_true(i == INT64_MIN);
    assert_int_equal(pam_gguf_get_f64(g, "s.f64", &f), PAM_OK);
    assert_true(f == -2.718281828459045);

    const pam_gguf_value *a;
#define CHECK_ARR(key, T, want, conv)                                                          \
    do {                                                                                     \
        assert_int_equal(pam_gguf_get_arr(g, key, T, &a), PAM_OK);                           \
        assert_int_equal(a->v.arr.n, sizeof want / sizeof want[0]);                            \
        assert_memory_equal(a->v.arr.data, want, sizeof want);                                 \
        for (uint64_t k = 0; k < a->v.arr.n; k++) assert_true(conv(a, k) == want[k]);         \
    } while (0)
    CHECK_ARR("a.u8", PAM_GGUF_UINT8, a_u8, pam_gguf_arr_i64);
    CHECK_ARR("a.i8", PAM_GGUF_INT8, a_i8, pam_gguf_arr_i64);
    CHECK_ARR("a.u16", PAM_GGUF_UINT16, a_u16, pam_gguf_arr_i64);
    CHECK_ARR("a.i16", PAM_GGUF_INT16, a_i16, pam_gguf_arr_i64);
    CHECK_ARR("a.u32", PAM_GGUF_UINT32, a_u32, pam_gguf_arr_i64);
    CHECK_ARR("a.i32", PAM_GGUF_INT32, a_i32, pam_gguf_arr_i64);
    CHECK_ARR("a.i64", PAM_GGUF_INT64, a_i64, pam_gguf_arr_i64);
    CHECK_ARR("a.f32", PAM_GGUF_FLOAT32, a_f32, pam_gguf_arr_f64);
    CHECK_ARR("a.f64", PAM_GGUF_FLOAT64, a_f64, pam_gguf_arr_f64);
    CHECK_ARR("a.bool", PAM_GGUF_BOOL, a_bool, pam_gguf_arr_i64);
#undef CHECK_ARR
    assert_int_equal(pam_gguf_get_arr(g, "a.u64", PAM_GGUF_UINT64, &a), PAM_OK);
    assert_memory_equal(a->v.arr.data, a_u64, sizeof a_u64);
    assert_true(pam_gguf_arr_f64(a, 1) == 3.0);
    assert_int_equal(pam_gguf_get_arr(g, "a.empty", PAM_GGUF_TYPE_COUNT, &a), PAM_OK);
    assert_int_equal(a->v.arr.n, 0);
    assert_int_equal(pam_gguf_get_arr(g, "a.str", PAM_GGUF_STRING, &a), PAM_OK);
    assert_int_equal(a->v.arr.n, 3);
    for (int k = 0; k < 3; k++) check_str(a->v.arr.items[k].v.str, strs[k]);

    assert_int_equal(pam_gguf_get_arr(g, "n.strs", PAM_GGUF_ARRAY, &a), PAM_OK);
    assert_int_equal(a->v.arr.n, 3);
    assert_int_equal(a->v.arr.items[0].v.arr.type, PAM_GGUF_STRING);
    assert_int_equal(a->v.arr.items[0].v.arr.n, 2);
    check_str(a->v.arr.items[0].v.arr.items[1].v.str, "bc");
    assert_int_equal(a->v.arr.items[1].v.arr.n, 0);
    check_str(a->v.arr.items[2].v.arr.items[0].v.str, "d");
    assert_int_equal(pam_gguf_get_arr(g, "n.ints", PAM_GGUF_ARRAY, &a), PAM_OK);
    const pam_gguf_value *lvl2 = &a->v.arr.items[1];
    assert_int_equal(lvl2->v.arr.type, PAM_GGUF_ARRAY);
    assert_int_equal(lvl2->v.arr.n, 2);
    assert_int_equal(lvl2->v.arr.items[1].v.arr.n, 3);
    assert_int_equal(pam_gguf_arr_i64(&lvl2->v.arr.items[1], 2), 6);
    assert_int_equal(pam_gguf_arr_i64(&a->v.arr.items[0].v.arr.items[0], 1), 2);
    pam_gguf_close(g);
}

/* Tensors of several types and shapes; data and offsets survive the trip. */
static void roundtrip_tensors(uint32_t alignment, const char *name) {
    pam_gguf_writer *w;
    assert_int_equal(pam_gguf_writer_create(&w), PAM_OK);
    if (alignment != PAM_GGUF_DEFAULT_ALIGNMENT) assert_int_equal(pam_gguf_writer_set_alignment(w, alignment), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_str(w, "general.architecture", "llama"), PAM_OK);
    pam_test_rng rng = {alignment};
    uint8_t *bytes = malloc(20000);
    for (int k = 0; k < 20000; k++) bytes[k] = (uint8_t)pam_test_rng_u64(&rng);
    struct {
        const char *name;
        uint32_t type, n_dims;
        int64_t ne[4];
        size_t n_bytes;
    } specs[] = {
        {"token_embd.weight", PAM_DT_F32, 2, {7, 3, 1, 1}, 7 * 3 * 4},
        {"blk.0.attn_q.weight", PAM_DT_Q8_0, 2, {64, 5, 1, 1}, 2 * 34 * 5},
        {"blk.0.attn_norm.weight", PAM_DT_F16, 1, {5, 1, 1, 1}, 10},
        {"blk.0.ffn_up.weight", PAM_DT_Q4_K, 3, {256, 2, 3, 1}, 144 * 6},
        {"x4", PAM_DT_BF16, 4, {2, 3, 4, 5}, 2 * 120},
    };
    int n = (int)(sizeof specs / sizeof specs[0]);
    size_t at = 0;
    for (int k = 0; k < n; k++) {
        assert_int_equal(pam_gguf_writer_add_tensor(w, specs[k].name, specs[k].type, specs[k].n_dims, specs[k].ne,
                                                    bytes + at, specs[k].n_bytes),
                         PAM_OK);
        at += specs[k].n_bytes;
    }
    pam_gguf *g = write_and_open(w, name);
    pam_gguf_writer_destroy(w);
    assert_int_equal(pam_gguf_alignment(g), alignment);
    assert_int_equal(pam_gguf_data_offset(g) % alignment, 0);
    uint64_t u;
    if (alignment != PAM_GGUF_DEFAULT_ALIGNMENT) {
        assert_int_equal(pam_gguf_get_u64(g, "general.alignment", &u), PAM_OK);
        assert_int_equal(u, alignment);
    } else {
        assert_null(pam_gguf_find(g, "general.alignment"));
    }
    assert_int_equal(pam_gguf_n_tensors(g), n);
    at = 0;
    uint64_t expect_off = 0;
    for (int k = 0; k < n; k++) {
        const pam_gguf_tensor *t = pam_gguf_find_tensor(g, specs[k].name);
        assert_non_null(t);
        assert_ptr_equal(t, pam_gguf_tensor_at(g, k));
        assert_string_equal(t->name, specs[k].name);
        assert_int_equal(t->type, specs[k].type);
        assert_int_equal(t->n_dims, specs[k].n_dims);
        for (int d = 0; d < 4; d++) assert_int_equal(t->ne[d], specs[k].ne[d]);
        assert_int_equal(t->n_bytes, specs[k].n_bytes);
        assert_int_equal(t->offset, expect_off);
        assert_memory_equal(t->data, bytes + at, t->n_bytes);
        at += specs[k].n_bytes;
        expect_off += (specs[k].n_bytes + alignment - 1) / alignment * alignment;
    }
    /* Like llama.cpp, the last tensor is padded too. */
    assert_int_equal(pam_gguf_file_size(g), pam_gguf_data_offset(g) + expect_off);
    pam_gguf_close(g);
    free(bytes);
}

static void test_roundtrip_tensors_align32(void **state) { roundtrip_tensors(32, "roundtrip_t32.gguf"); }
static void test_roundtrip_tensors_align64(void **state) { roundtrip_tensors(64, "roundtrip_t64.gguf"); }
static void test_roundtrip_tensors_align8(void **state) { roundtrip_tensors(8, "roundtrip_t8.gguf"); }

static void test_writer_rejects_bad_input(void **state) {
    pam_gguf_writer *w;
    assert_int_equal(pam_gguf_writer_create(&w), PAM_OK);
    float data[8] = {0};
    int64_t ne[2] = {4, 2};
    assert_int_equal(pam_gguf_writer_add_tensor(w, "t", PAM_DT_F32, 2, ne, data, 32), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_tensor(w, "t", PAM_DT_F32, 2, ne, data, 32), PAM_ERR_INVALID);
    assert_non_null(strstr(pam_last_error(), "duplicate tensor name 't'"));
    assert_int_equal(pam_gguf_writer_add_tensor(w, "u", PAM_DT_F32, 2, ne, data, 31), PAM_ERR_INVALID);
    assert_int_equal(pam_gguf_writer_add_tensor(w, "u", PAM_DT_F16, 2, ne, data, 32), PAM_ERR_INVALID);
    assert_int_equal(pam_gguf_writer_add_tensor(w, "u", PAM_DT_Q8_0, 2, ne, data, 32), PAM_ERR_INVALID);
    assert_int_equal(pam_gguf_writer_add_tensor(w, "u", 4, 2, ne, data, 32), PAM_ERR_INVALID);
    assert_int_equal(pam_gguf_writer_add_tensor(w, "u", PAM_DT_F32, 0, ne, data, 32), PAM_ERR_INVALID);
    assert_int_equal(pam_gguf_writer_add_tensor(w, "u", PAM_DT_F32, 5, ne, data, 32), PAM_ERR_INVALID);
    int64_t neg[2] = {4, -2};
    assert_int_equal(pam_gguf_writer_add_tensor(w, "u", PAM_DT_F32, 2, neg, data, 32), PAM_ERR_INVALID);
    assert_int_equal(pam_gguf_writer_set_alignment(w, 0), PAM_ERR_INVALID);
    assert_int_equal(pam_gguf_writer_set_alignment(w, 48), PAM_ERR_INVALID);
    assert_int_equal(pam_gguf_writer_add_str(w, "k", "v"), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_i32(w, "k", 1), PAM_ERR_INVALID);
    assert_int_equal(pam_gguf_writer_add_str(w, "", "v"), PAM_ERR_INVALID);
    pam_gguf_value bad_bool = {.type = PAM_GGUF_BOOL, .v.b = 2};
    assert_int_equal(pam_gguf_writer_add_value(w, "b", &bad_bool), PAM_ERR_INVALID);
    /* Arrays nested past the reader's depth limit are refused. */
    pam_gguf_value levels[10];
    levels[9] = (pam_gguf_value){.type = PAM_GGUF_ARRAY, .v.arr = {.type = PAM_GGUF_INT32, .n = 0}};
    for (int k = 8; k >= 0; k--)
        levels[k] = (pam_gguf_value){.type = PAM_GGUF_ARRAY, .v.arr = {.type = PAM_GGUF_ARRAY, .n = 1, .items = &levels[k + 1]}};
    assert_int_equal(pam_gguf_writer_add_value(w, "deep", &levels[0]), PAM_ERR_INVALID);
    assert_int_equal(pam_gguf_writer_add_value(w, "deep8", &levels[2]), PAM_OK);

    /* The failed calls above left no trace: one tensor, keys k and deep8. */
    pam_gguf *g = write_and_open(w, "writer_rejects.gguf");
    assert_int_equal(pam_gguf_n_tensors(g), 1);
    assert_int_equal(pam_gguf_n_kv(g), 2);
    pam_gguf_close(g);

    /* Unwritable destination: PAM_ERR_IO naming the path. */
    const char *bad = "/nonexistent-dir-for-pam-test/x.gguf";
    assert_int_equal(pam_gguf_writer_write(w, bad), PAM_ERR_IO);
    assert_non_null(strstr(pam_last_error(), "nonexistent-dir-for-pam-test"));
    pam_gguf_writer_destroy(w);
}

/* A write that runs out of room (here: the file size limit, which fails
 * write() with EFBIG much like a full disk gives ENOSPC) reports PAM_ERR_IO,
 * removes the temporary file and leaves the previous PATH untouched. */
static void test_writer_write_failure_keeps_old_file(void **state) {
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s", pam_test_tmp("write_fail.gguf"));
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs("old contents", f);
    fclose(f);

    pam_gguf_writer *w;
    assert_int_equal(pam_gguf_writer_create(&w), PAM_OK);
    size_t n = 1 << 20;
    float *data = calloc(n, sizeof *data);
    int64_t ne[1] = {(int64_t)n};
    assert_int_equal(pam_gguf_writer_add_tensor(w, "big", PAM_DT_F32, 1, ne, data, n * sizeof *data), PAM_OK);

    struct rlimit old;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = {100000, old.rlim_max};
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    pam_status st = pam_gguf_writer_write(w, path);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, old_handler);

    assert_int_equal(st, PAM_ERR_IO);
    assert_non_null(strstr(pam_last_error(), "write"));
    assert_false(file_exists(tmp));
    size_t size;
    char *back = pam_test_read_file(path, &size);
    assert_non_null(back);
    assert_string_equal(back, "old contents");
    free(back);
    pam_gguf_writer_destroy(w);
    free(data);
}


/* ---- corrupt files ------------------------------------------------------------------ */

/* A small valid file from the writer: metadata of several kinds and two
 * tensors whose byte counts are multiples of 32, so the file ends exactly
 * where the last tensor's data ends and every truncation cuts something. */
static uint8_t *make_valid_file(size_t *size) {
    pam_gguf_writer *w;
    assert_int_equal(pam_gguf_writer_create(&w), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_str(w, "general.architecture", "llama"), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_u32(w, "llama.block_count", 2), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_f32(w, "llama.rope.freq_base", 10000.0f), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_bool(w, "x.flag", 1), PAM_OK);
    const char *toks[] = {"<unk>", "<s>", "</s>", "a"};
    assert_int_equal(pam_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", toks, 4), PAM_OK);
    int32_t types[] = {2, 3, 3, 1};
    assert_int_equal(pam_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", PAM_GGUF_INT32, types, 4), PAM_OK);
    pam_gguf_value s_a[1] = {{.type = PAM_GGUF_STRING, .v.str = {"ab", 2}}};
    pam_gguf_value inner[1] = {{.type = PAM_GGUF_ARRAY, .v.arr = {.type = PAM_GGUF_STRING, .n = 1, .items = s_a}}};
    pam_gguf_value outer = {.type = PAM_GGUF_ARRAY, .v.arr = {.type = PAM_GGUF_ARRAY, .n = 1, .items = inner}};
    assert_int_equal(pam_gguf_writer_add_value(w, "x.nested", &outer), PAM_OK);
    float a[16], b[8];
    for (int k = 0; k < 16; k++) a[k] = (float)k;
    for (int k = 0; k < 8; k++) b[k] = -(float)k;
    int64_t ne_a[2] = {8, 2}, ne_b[1] = {8};
    assert_int_equal(pam_gguf_writer_add_tensor(w, "a", PAM_DT_F32, 2, ne_a, a, sizeof a), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_tensor(w, "b", PAM_DT_F32, 1, ne_b, b, sizeof b), PAM_OK);
    const char *path = pam_test_tmp("corrupt_base.gguf");
    assert_int_equal(pam_gguf_writer_write(w, path), PAM_OK);
    pam_gguf_writer_destroy(w);
    uint8_t *data = (uint8_t *)pam_test_read_file(path, size);
    assert_non_null(data);
    return data;
}

static void test_truncated_at_every_length(void **state) {
    size_t size;
    uint8_t *full = make_valid_file(&size);
    pam_gguf *g;
    assert_int_equal(pam_gguf_open_buffer(full, size, &g), PAM_OK);
    const pam_gguf_tensor *last = pam_gguf_tensor_at(g, 1);
    assert_int_equal(pam_gguf_data_offset(g) + last->offset + last->n_bytes, size);
    pam_gguf_close(g);
    for (size_t n = 0; n < size; n++) {
        /* A fresh exact-size copy so ASan catches any read past n. */
        uint8_t *cut = malloc(n ? n : 1);
        memcpy(cut, full, n);
        g = NULL;
        pam_status st = pam_gguf_open_buffer(cut, n, &g);
        if (st != PAM_ERR_FORMAT) fail_msg("truncated at %zu of %zu: status %d (%s)", n, size, st, pam_last_error());
        assert_null(g);
        assert_true(strlen(pam_last_error()) > 0);
        free(cut);
    }
    free(full);
}

/* Header + one key of the given raw type with raw value bytes. */
static void one_kv(buf *b, const char *key, uint32_t type) {
    b->n = 0;
    b_header(b, 3, 0, 1);
    b_str(b, key);
    b_u32(b, type);
}

static void test_corrupt_metadata(void **state) {
    buf b = {0};
    /* Absurd counts are refused before anything is allocated. */
    b_header(&b, 3, 0, 1ULL << 62);
    expect_fail(&b, PAM_ERR_FORMAT, "metadata count 4611686018427387904");
    b.n = 0;
    b_header(&b, 3, 1ULL << 62, 0);
    expect_fail(&b, PAM_ERR_FORMAT, "tensor count");
    b.n = 0;
    b_header(&b, 3, UINT64_MAX, UINT64_MAX);
    expect_fail(&b, PAM_ERR_FORMAT, "count");

    /* String length past the end, in a value and in a key. */
    one_kv(&b, "general.name", PAM_GGUF_STRING);
    b_u64(&b, 9999999);
    b_bytes(&b, "abc", 3);
    expect_fail(&b, PAM_ERR_FORMAT, "key 'general.name': string length 9999999 exceeds file size");
    one_kv(&b, "general.name", PAM_GGUF_STRING);
    b_u64(&b, 1ULL << 62);
    expect_fail(&b, PAM_ERR_FORMAT, "general.name");
    b.n = 0;
    b_header(&b, 3, 0, 1);
    b_u64(&b, UINT64_MAX);
    b_bytes(&b, "key-and-a-few-more-bytes", 24);
    expect_fail(&b, PAM_ERR_FORMAT, "key length");

    /* Unknown value and element types. */
    one_kv(&b, "k", 13);
    b_u32(&b, 0);
    expect_fail(&b, PAM_ERR_FORMAT, "invalid value type 13");
    one_kv(&b, "k", 0xffffffffu);
    b_u32(&b, 0);
    expect_fail(&b, PAM_ERR_FORMAT, "invalid value type");
    one_kv(&b, "k", PAM_GGUF_ARRAY);
    b_u32(&b, 77);
    b_u64(&b, 0);
    expect_fail(&b, PAM_ERR_FORMAT, "invalid array element type 77");

    /* Absurd array counts for every kind of element. */
    uint32_t elems[] = {PAM_GGUF_UINT8, PAM_GGUF_FLOAT64, PAM_GGUF_STRING, PAM_GGUF_ARRAY};
    for (int k = 0; k < 4; k++) {
        one_kv(&b, "tokenizer.ggml.tokens", PAM_GGUF_ARRAY);
        b_u32(&b, elems[k]);
        b_u64(&b, 1ULL << 62);
        b_u64(&b, 0);
        expect_fail(&b, PAM_ERR_FORMAT, "key 'tokenizer.ggml.tokens': array of 4611686018427387904");
    }
    /* A count that fits the bytes left but whose elements run out. */
    one_kv(&b, "k", PAM_GGUF_ARRAY);
    b_u32(&b, PAM_GGUF_STRING);
    b_u64(&b, 3);
    b_str(&b, "x");
    b_u64(&b, 100);
    expect_fail(&b, PAM_ERR_FORMAT, "exceeds file size");

    /* Bool other than 0/1, scalar and in an array. */
    one_kv(&b, "b", PAM_GGUF_BOOL);
    b_u8(&b, 2);
    expect_fail(&b, PAM_ERR_FORMAT, "bool value 2");
    one_kv(&b, "b", PAM_GGUF_ARRAY);
    b_u32(&b, PAM_GGUF_BOOL);
    b_u64(&b, 3);
    b_bytes(&b, "\x01\x00\xff", 3);
    expect_fail(&b, PAM_ERR_FORMAT, "bool array element 2");

    /* Nesting: 8 levels are fine, 9 are not. */
    for (int depth = 8; depth <= 9; depth++) {
        one_kv(&b, "deep", PAM_GGUF_ARRAY);
        for (int k = 0; k < depth - 1; k++) {
            b_u32(&b, PAM_GGUF_ARRAY);
            b_u64(&b, 1);
        }
        b_u32(&b, PAM_GGUF_INT32);
        b_u64(&b, 1);
        b_u32(&b, 42);
        if (depth == 8) {
            pam_gguf *g;
            assert_int_equal(open_buf(&b, &g), PAM_OK);
            const pam_gguf_value *v = pam_gguf_find(g, "deep");
            for (int k = 0; k < 7; k++) v = &v->v.arr.items[0];
            assert_int_equal(pam_gguf_arr_i64(v, 0), 42);
            pam_gguf_close(g);
        } else {
            expect_fail(&b, PAM_ERR_FORMAT, "nested deeper than 8");
        }
    }

    /* A NUL inside a key. */
    b.n = 0;
    b_header(&b, 3, 0, 1);
    b_u64(&b, 3);
    b_bytes(&b, "a\0b", 3);
    b_u32(&b, PAM_GGUF_UINT8);
    b_u8(&b, 1);
    expect_fail(&b, PAM_ERR_FORMAT, "NUL");

    /* An empty key. */
    one_kv(&b, "", PAM_GGUF_UINT8);
    b_u8(&b, 1);
    expect_fail(&b, PAM_ERR_FORMAT, "empty");

    /* Duplicate key. */
    b.n = 0;
    b_header(&b, 3, 0, 2);
    for (int k = 0; k < 2; k++) {
        b_str(&b, "general.name");
        b_u32(&b, PAM_GGUF_UINT8);
        b_u8(&b, 1);
    }
    expect_fail(&b, PAM_ERR_FORMAT, "duplicate key 'general.name'");

    /* Bad alignments: 0, 3, and the wrong type. */
    uint32_t aligns[] = {0, 3, 96};
    for (int k = 0; k < 3; k++) {
        one_kv(&b, "general.alignment", PAM_GGUF_UINT32);
        b_u32(&b, aligns[k]);
        expect_fail(&b, PAM_ERR_FORMAT, "general.alignment");
    }
    one_kv(&b, "general.alignment", PAM_GGUF_UINT64);
    b_u64(&b, 32);
    expect_fail(&b, PAM_ERR_FORMAT, "expected uint32");

    /* Big-endian files are recognised and refused. */
    b.n = 0;
    b_bytes(&b, "GGUF\0\0\0\3", 8);
    b_u64(&b, 0);
    b_u64(&b, 0);
    expect_fail(&b, PAM_ERR_UNSUPPORTED, "big-endian");
    free(b.p);
}

/* Header + one tensor info with full control over its fields, followed by
 * padding and data_bytes of data. */
static void one_tensor(buf *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t offset,
                       size_t data_bytes) {
    b->n = 0;
    b_header(b, 3, 1, 0);
    b_str(b, name);
    b_u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++) b_u64(b, ne[d]);
    b_u32(b, type);
    b_u64(b, offset);
    b_pad(b, 32);
    for (size_t k = 0; k < data_bytes; k++) b_u8(b, (uint8_t)k);
}

static void test_corrupt_tensors(void **state) {
    buf b = {0};
    uint64_t ne4[5] = {4, 1, 1, 1, 1};
    one_tensor(&b, "w", 1, ne4, PAM_DT_F32, 0, 16);
    pam_gguf *g;
    assert_int_equal(open_buf(&b, &g), PAM_OK); /* the baseline is valid */
    pam_gguf_close(g);

    one_tensor(&b, "w", 0, ne4, PAM_DT_F32, 0, 16);
    expect_fail(&b, PAM_ERR_FORMAT, "tensor 'w': n_dims 0");
    one_tensor(&b, "w", 5, ne4, PAM_DT_F32, 0, 16);
    expect_fail(&b, PAM_ERR_FORMAT, "tensor 'w': n_dims 5");
    uint64_t zero[2] = {4, 0};
    one_tensor(&b, "w", 2, zero, PAM_DT_F32, 0, 16);
    expect_fail(&b, PAM_ERR_FORMAT, "dimension 1 has size 0");
    uint64_t neg[2] = {(uint64_t)-4, 1};
    one_tensor(&b, "w", 2, neg, PAM_DT_F32, 0, 16);
    expect_fail(&b, PAM_ERR_FORMAT, "dimension 0 has size -4");
    uint64_t ovf[3] = {1ULL << 32, 1ULL << 32, 1ULL << 32};
    one_tensor(&b, "w", 3, ovf, PAM_DT_F32, 0, 16);
    expect_fail(&b, PAM_ERR_FORMAT, "overflows");
    uint64_t ovf_bytes[2] = {1ULL << 40, 1ULL << 22}; /* 2^62 elements fit int64, 2^64 bytes do not */
    one_tensor(&b, "w", 2, ovf_bytes, PAM_DT_F32, 0, 16);
    expect_fail(&b, PAM_ERR_FORMAT, "overflows");
    uint64_t part[1] = {33};
    one_tensor(&b, "w", 1, part, PAM_DT_Q8_0, 0, 64);
    expect_fail(&b, PAM_ERR_FORMAT, "tensor 'w'");
    one_tensor(&b, "w", 1, ne4, 4, 0, 16); /* retired ggml type id */
    expect_fail(&b, PAM_ERR_UNSUPPORTED, "tensor 'w': unknown tensor type id 4");
    one_tensor(&b, "w", 1, ne4, 1000, 0, 16);
    expect_fail(&b, PAM_ERR_UNSUPPORTED, "unknown tensor type id 1000");
    one_tensor(&b, "w", 1, ne4, PAM_DT_F32, 0, 15);
    expect_fail(&b, PAM_ERR_FORMAT, "past the end of the file");
    one_tensor(&b, "w", 1, ne4, PAM_DT_F32, 32, 16);
    expect_fail(&b, PAM_ERR_FORMAT, "past the end of the file");
    one_tensor(&b, "w", 1, ne4, PAM_DT_F32, UINT64_MAX - 31, 16);
    expect_fail(&b, PAM_ERR_FORMAT, "tensor 'w'");
    one_tensor(&b, "w", 1, ne4, PAM_DT_F32, 4, 64);
    expect_fail(&b, PAM_ERR_FORMAT, "offset 4 is not a multiple of the alignment 32");
    uint64_t huge[1] = {1ULL << 40};
    one_tensor(&b, "w", 1, huge, PAM_DT_F32, 0, 16);
    expect_fail(&b, PAM_ERR_FORMAT, "past the end");

    /* Duplicate tensor names. */
    b.n = 0;
    b_header(&b, 3, 2, 0);
    b_tensor_f32(&b, "w", 8, 0);
    b_tensor_f32(&b, "w", 8, 32);
    b_pad(&b, 32);
    for (int k = 0; k < 64; k++) b_u8(&b, 0);
    expect_fail(&b, PAM_ERR_FORMAT, "duplicate tensor name 'w'");
    free(b.p);
}

/* Every accessor on every entry, so ASan sees any bad pointer the parser let through. */
static uint64_t walk_value(const pam_gguf_value *v) {
    uint64_t h = (uint64_t)v->type;
    if (v->type == PAM_GGUF_STRING) {
        for (uint64_t k = 0; k < v->v.str.len; k++) h = h * 31 + (uint8_t)v->v.str.ptr[k];
    } else if (v->type == PAM_GGUF_ARRAY) {
        for (uint64_t k = 0; k < v->v.arr.n; k++) {
            if (v->v.arr.items) h += walk_value(&v->v.arr.items[k]);
            else h += (uint64_t)pam_gguf_arr_i64(v, k) + (uint64_t)(pam_gguf_arr_f64(v, k) != 0);
        }
    }
    return h;
}

static uint64_t walk(const pam_gguf *g) {
    uint64_t h = pam_gguf_version(g) + pam_gguf_alignment(g) + pam_gguf_data_offset(g);
    for (int64_t i = 0; i < pam_gguf_n_kv(g); i++) {
        const char *key = pam_gguf_kv_key(g, i);
        h += strlen(key) + walk_value(pam_gguf_kv_value(g, i));
        assert_ptr_equal(pam_gguf_find(g, key), pam_gguf_kv_value(g, i));
    }
    for (int64_t i = 0; i < pam_gguf_n_tensors(g); i++) {
        const pam_gguf_tensor *t = pam_gguf_tensor_at(g, i);
        assert_ptr_equal(pam_gguf_find_tensor(g, t->name), t);
        const uint8_t *p = t->data;
        assert_true(p + t->n_bytes <= p + pam_gguf_file_size(g));
        if (t->n_bytes) h += p[0] + p[t->n_bytes - 1];
    }
    return h;
}

static void test_bit_flips_never_crash(void **state) {
    size_t size;
    uint8_t *full = make_valid_file(&size);
    uint8_t *mut = malloc(size);
    pam_test_rng rng = {12345};
    int n_ok = 0, n_err = 0;
    for (int iter = 0; iter < 4000; iter++) {
        memcpy(mut, full, size);
        int n_flips = 1 + (int)(pam_test_rng_u64(&rng) % 4);
        for (int k = 0; k < n_flips; k++) {
            uint64_t r = pam_test_rng_u64(&rng);
            /* Mostly the metadata/tensor-info region, where parsing happens. */
            size_t at = (size_t)(r % (iter % 2 ? size : size / 2 + 1));
            if ((r >> 40) % 4 == 0) mut[at] = (uint8_t)(r >> 48); /* whole byte */
            else mut[at] ^= (uint8_t)(1u << ((r >> 32) % 8));
        }
        pam_gguf *g = NULL;
        pam_status st = pam_gguf_open_buffer(mut, size, &g);
        if (st == PAM_OK) {
            (void)walk(g);
            pam_gguf_close(g);
            n_ok++;
        } else {
            assert_true(st == PAM_ERR_FORMAT || st == PAM_ERR_UNSUPPORTED || st == PAM_ERR_NOMEM);
            assert_null(g);
            n_err++;
        }
    }
    /* Both outcomes occur, or the mutation is not exercising anything. */
    assert_true(n_ok > 100);
    assert_true(n_err > 100);
    free(mut);
    free(full);
}

/* ---- files written by llama.cpp ------------------------------------------------ */

static void check_vocab(const char *rel, const char *model, uint64_t min_tokens, uint64_t max_tokens) {
    pam_gguf *g;
    const char *path = pam_test_shared(rel);
    if (pam_gguf_open(path, &g) != PAM_OK) fail_msg("%s: %s", path, pam_last_error());
    assert_int_equal(pam_gguf_version(g), 3);
    pam_gguf_str s;
    assert_int_equal(pam_gguf_get_str(g, "tokenizer.ggml.model", &s), PAM_OK);
    assert_int_equal(s.len, strlen(model));
    assert_memory_equal(s.ptr, model, s.len);
    const pam_gguf_value *tok;
    assert_int_equal(pam_gguf_get_arr(g, "tokenizer.ggml.tokens", PAM_GGUF_STRING, &tok), PAM_OK);
    assert_in_range(tok->v.arr.n, min_tokens, max_tokens);
    assert_non_null(tok->v.arr.items);
    assert_int_equal(tok->v.arr.items[0].type, PAM_GGUF_STRING);
    assert_int_equal(pam_gguf_get_arr(g, "tokenizer.ggml.tokens", PAM_GGUF_INT32, &tok), PAM_ERR_FORMAT);
    /* Every key is findable through the index. */
    for (int64_t i = 0; i < pam_gguf_n_kv(g); i++)
        assert_ptr_equal(pam_gguf_find(g, pam_gguf_kv_key(g, i)), pam_gguf_kv_value(g, i));
    pam_gguf_close(g);
}

static void test_llamacpp_vocab_files(void **state) {
    check_vocab("models/vocab/ggml-vocab-llama-spm.gguf", "llama", 32000, 32000);
    check_vocab("models/vocab/ggml-vocab-phi-3.gguf", "llama", 32000, 32100);
    check_vocab("models/vocab/ggml-vocab-gpt-2.gguf", "gpt2", 50000, 50300);
    check_vocab("models/vocab/ggml-vocab-deepseek-llm.gguf", "gpt2", 100000, 103000);

    /* llama-spm carries per-token scores (float32) and types (int32). */
    pam_gguf *g;
    assert_int_equal(pam_gguf_open(pam_test_shared("models/vocab/ggml-vocab-llama-spm.gguf"), &g), PAM_OK);
    const pam_gguf_value *scores, *types;
    assert_int_equal(pam_gguf_get_arr(g, "tokenizer.ggml.scores", PAM_GGUF_FLOAT32, &scores), PAM_OK);
    assert_int_equal(pam_gguf_get_arr(g, "tokenizer.ggml.token_type", PAM_GGUF_INT32, &types), PAM_OK);
    assert_int_equal(scores->v.arr.n, 32000);
    assert_int_equal(types->v.arr.n, 32000);
    /* <unk>=2 (UNKNOWN), <s>=3 (CONTROL), byte tokens <0x00>... = 6 (BYTE) */
    assert_int_equal(pam_gguf_arr_i64(types, 0), 2);
    assert_int_equal(pam_gguf_arr_i64(types, 1), 3);
    assert_int_equal(pam_gguf_arr_i64(types, 3), 6);
    const pam_gguf_value *tok;
    assert_int_equal(pam_gguf_get_arr(g, "tokenizer.ggml.tokens", PAM_GGUF_STRING, &tok), PAM_OK);
    assert_int_equal(tok->v.arr.items[1].v.str.len, 3);
    assert_memory_equal(tok->v.arr.items[1].v.str.ptr, "<s>", 3);
    pam_gguf_close(g);
}

/* ---- fuzz seeds ---------------------------------------------------------------------- */

/* Builds the seed corpus for fuzz/fuzz_gguf.c: a few tiny valid files, each
 * checked to parse. With PAM_GGUF_SEED_DIR set (e.g. fuzz/seeds/fuzz_gguf)
 * they are written there; otherwise under the build's scratch folder. */
static void seed_path(char *out, size_t cap, const char *name) {
    const char *dir = getenv("PAM_GGUF_SEED_DIR");
    if (dir && *dir) snprintf(out, cap, "%s/%s", dir, name);
    else snprintf(out, cap, "%s", pam_test_tmp(name));
}

static void seed_check(const char *path) {
    size_t size;
    uint8_t *data = (uint8_t *)pam_test_read_file(path, &size);
    assert_non_null(data);
    assert_true(size < 4096);
    pam_gguf *g;
    if (pam_gguf_open_buffer(data, size, &g) != PAM_OK) fail_msg("%s: %s", path, pam_last_error());
    (void)walk(g);
    pam_gguf_close(g);
    free(data);
}

static void seed_write_buf(const char *name, const buf *b) {
    char path[4096];
    seed_path(path, sizeof path, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b->p, 1, b->n, f), b->n);
    assert_int_equal(fclose(f), 0);
    seed_check(path);
}

static void seed_write(const char *name, pam_gguf_writer *w) {
    char path[4096];
    seed_path(path, sizeof path, name);
    if (pam_gguf_writer_write(w, path) != PAM_OK) fail_msg("%s: %s", path, pam_last_error());
    pam_gguf_writer_destroy(w);
    seed_check(path);
}

static void test_fuzz_seeds(void **state) {
    buf b = {0};
    b_header(&b, 3, 0, 0);
    seed_write_buf("empty_v3.gguf", &b);

    b.n = 0;
    b_header(&b, 2, 1, 1);
    b_str(&b, "general.name");
    b_u32(&b, PAM_GGUF_STRING);
    b_str(&b, "v2");
    b_tensor_f32(&b, "w", 4, 0);
    b_pad(&b, 32);
    for (int k = 0; k < 16; k++) b_u8(&b, (uint8_t)k);
    seed_write_buf("v2_one_tensor.gguf", &b);
    free(b.p);

    size_t size;
    uint8_t *base = make_valid_file(&size);
    b = (buf){.p = base, .n = size, .cap = size};
    seed_write_buf("llama_like.gguf", &b);
    free(base);

    /* Every metadata type, arrays of each, nested arrays. */
    pam_gguf_writer *w;
    assert_int_equal(pam_gguf_writer_create(&w), PAM_OK);
    for (int t = 0; t < PAM_GGUF_TYPE_COUNT; t++) {
        char key[32];
        snprintf(key, sizeof key, "s.%s", pam_gguf_type_name((pam_gguf_type)t));
        pam_gguf_value v = {.type = (pam_gguf_type)t};
        if (t == PAM_GGUF_STRING) v.v.str = (pam_gguf_str){"text", 4};
        else if (t == PAM_GGUF_ARRAY) v.v.arr.type = PAM_GGUF_UINT8;
        else if (t == PAM_GGUF_BOOL) v.v.b = 1;
        else if (t == PAM_GGUF_FLOAT32 || t == PAM_GGUF_FLOAT64) v.v.f64 = 0.5;
        else v.v.u64 = 7;
        assert_int_equal(pam_gguf_writer_add_value(w, key, &v), PAM_OK);
        uint8_t raw[16] = {1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0};
        size_t es = t == PAM_GGUF_BOOL || t <= PAM_GGUF_INT8 ? 1
                    : t <= PAM_GGUF_INT16                     ? 2
                    : t <= PAM_GGUF_FLOAT32                   ? 4
                                                              : 8;
        snprintf(key, sizeof key, "a.%s", pam_gguf_type_name((pam_gguf_type)t));
        if (t != PAM_GGUF_STRING && t != PAM_GGUF_ARRAY)
            assert_int_equal(pam_gguf_writer_add_arr(w, key, (pam_gguf_type)t, raw, 16 / es), PAM_OK);
    }
    const char *strs[] = {"<unk>", "<s>", "\xe2\x96\x81hi"};
    assert_int_equal(pam_gguf_writer_add_arr_str(w, "a.string", strs, 3), PAM_OK);
    pam_gguf_value s_a[2] = {{.type = PAM_GGUF_STRING, .v.str = {"a", 1}}, {.type = PAM_GGUF_STRING, .v.str = {"bc", 2}}};
    pam_gguf_value inner[2] = {{.type = PAM_GGUF_ARRAY, .v.arr = {.type = PAM_GGUF_STRING, .n = 2, .items = s_a}},
                               {.type = PAM_GGUF_ARRAY, .v.arr = {.type = PAM_GGUF_STRING, .n = 0}}};
    pam_gguf_value outer = {.type = PAM_GGUF_ARRAY, .v.arr = {.type = PAM_GGUF_ARRAY, .n = 2, .items = inner}};
    assert_int_equal(pam_gguf_writer_add_value(w, "a.array", &outer), PAM_OK);
    seed_write("all_types.gguf", w);

    /* Quantized tensors at a custom alignment. */
    assert_int_equal(pam_gguf_writer_create(&w), PAM_OK);
    assert_int_equal(pam_gguf_writer_set_alignment(w, 64), PAM_OK);
    static uint8_t data[1024];
    for (int k = 0; k < 1024; k++) data[k] = (uint8_t)(k * 7);
    int64_t ne_q8[2] = {32, 3}, ne_q4k[1] = {256}, ne_f16[3] = {2, 2, 2};
    assert_int_equal(pam_gguf_writer_add_tensor(w, "q8", PAM_DT_Q8_0, 2, ne_q8, data, 3 * 34), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_tensor(w, "q4k", PAM_DT_Q4_K, 1, ne_q4k, data, 144), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_tensor(w, "f16", PAM_DT_F16, 3, ne_f16, data, 16), PAM_OK);
    seed_write("quant_align64.gguf", w);
}

/* ---- pam inspect ----------------------------------------------------------------- */

/* Runs `pam inspect ARG` (stdout and stderr together); returns its exit status. */
static int run_inspect(const char *arg, char *out, size_t cap) {
    const char *bin = getenv("PAM_BIN");
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' inspect '%s' 2>&1", bin, arg);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_inspect_cli(void **state) {
    if (!getenv("PAM_BIN")) skip(); /* set by CTest */
    size_t cap = 1 << 20;
    char *out = malloc(cap);

    assert_int_equal(run_inspect(pam_test_shared("models/vocab/ggml-vocab-llama-spm.gguf"), out, cap), 0);
    assert_non_null(strstr(out, "version:     3"));
    assert_non_null(strstr(out, "alignment:   32"));
    assert_non_null(strstr(out, "tokenizer.ggml.tokens"));
    assert_non_null(strstr(out, "[32000 x string] \"<unk>\", \"<s>\", \"</s>\","));
    assert_non_null(strstr(out, ", ...\n"));
    assert_non_null(strstr(out, "tokenizer.ggml.add_bos_token            bool     true"));

    /* A file with tensors, escaped strings and nested arrays. */
    pam_gguf_writer *w;
    assert_int_equal(pam_gguf_writer_create(&w), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_str(w, "general.name", "say \"hi\"\n\x01"), PAM_OK);
    pam_gguf_value s_a[1] = {{.type = PAM_GGUF_STRING, .v.str = {"ab", 2}}};
    pam_gguf_value inner[1] = {{.type = PAM_GGUF_ARRAY, .v.arr = {.type = PAM_GGUF_STRING, .n = 1, .items = s_a}}};
    pam_gguf_value outer = {.type = PAM_GGUF_ARRAY, .v.arr = {.type = PAM_GGUF_ARRAY, .n = 1, .items = inner}};
    assert_int_equal(pam_gguf_writer_add_value(w, "x.nested", &outer), PAM_OK);
    uint8_t q[2 * 34] = {0};
    float f[3] = {0};
    int64_t ne_q[2] = {32, 2}, ne_f[1] = {3};
    assert_int_equal(pam_gguf_writer_add_tensor(w, "blk.0.attn_q.weight", PAM_DT_Q8_0, 2, ne_q, q, sizeof q), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_tensor(w, "norm", PAM_DT_F32, 1, ne_f, f, sizeof f), PAM_OK);
    char path[4096];
    snprintf(path, sizeof path, "%s", pam_test_tmp("inspect.gguf"));
    assert_int_equal(pam_gguf_writer_write(w, path), PAM_OK);
    pam_gguf_writer_destroy(w);
    assert_int_equal(run_inspect(path, out, cap), 0);
    assert_non_null(strstr(out, "\"say \\\"hi\\\"\\n\\x01\""));
    assert_non_null(strstr(out, "[1 x array] ([1 x string] \"ab\")"));
    assert_non_null(strstr(out, "blk.0.attn_q.weight  Q8_0     [32, 2]"));
    assert_non_null(strstr(out, "norm                 F32      [3]"));
    assert_non_null(strstr(out, "totals: 2 tensors, 67 elements, 80 bytes"));

    /* Errors: exit status 1 and a message naming the problem. */
    assert_int_equal(run_inspect(pam_test_tmp("no-such-file.gguf"), out, cap), 1);
    assert_non_null(strstr(out, "No such file"));
    assert_int_equal(run_inspect(pam_test_shared("models/vocab/PROVENANCE.md"), out, cap), 1);
    assert_non_null(strstr(out, "not a GGUF file (bad magic)"));
    size_t size;
    char *data = pam_test_read_file(path, &size);
    const char *cut = pam_test_tmp("inspect_truncated.gguf");
    FILE *fo = fopen(cut, "wb");
    fwrite(data, 1, size - 24, fo); /* into norm's 12 bytes, past its 20 of padding */
    fclose(fo);
    free(data);
    assert_int_equal(run_inspect(cut, out, cap), 1);
    assert_non_null(strstr(out, "past the end of the file"));
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_handwritten_v2),
        cmocka_unit_test(test_bad_magic_and_version),
        cmocka_unit_test(test_open_missing_path),
        cmocka_unit_test(test_llamacpp_vocab_files),
        cmocka_unit_test(test_roundtrip_metadata),
        cmocka_unit_test(test_roundtrip_tensors_align32),
        cmocka_unit_test(test_roundtrip_tensors_align64),
        cmocka_unit_test(test_roundtrip_tensors_align8),
        cmocka_unit_test(test_writer_rejects_bad_input),
        cmocka_unit_test(test_writer_write_failure_keeps_old_file),
        cmocka_unit_test(test_truncated_at_every_length),
        cmocka_unit_test(test_corrupt_metadata),
        cmocka_unit_test(test_corrupt_tensors),
        cmocka_unit_test(test_bit_flips_never_crash),
        cmocka_unit_test(test_inspect_cli),
        cmocka_unit_test(test_fuzz_seeds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
