/* `pam inspect MODEL`: header, every metadata key with its type and value,
 * and the tensor table with totals. Long arrays and long strings are
 * abbreviated; strings are escaped so control bytes cannot upset a terminal. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "kernels/dtype.h"
#include "model/gguf.h"

#define INSPECT_MAX_ELEMS 8        /* array elements shown before "..." */
#define INSPECT_MAX_STR_BYTES 160  /* string bytes shown before "..." */

static void print_str(pam_gguf_str s) {
    uint64_t n = s.len;
    if (n > INSPECT_MAX_STR_BYTES) {
        n = INSPECT_MAX_STR_BYTES;
        /* Do not cut a UTF-8 sequence in half. */
        while (n > 0 && ((uint8_t)s.ptr[n] & 0xC0) == 0x80) n--;
    }
    putchar('"');
    for (uint64_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s.ptr[i];
        switch (c) {
        case '"': fputs("\\\"", stdout); break;
        case '\\': fputs("\\\\", stdout); break;
        case '\n': fputs("\\n", stdout); break;
        case '\r': fputs("\\r", stdout); break;
        case '\t': fputs("\\t", stdout); break;
        default:
            if (c < 0x20 || c == 0x7f) printf("\\x%02x", c);
            else putchar(c);
        }
    }
    putchar('"');
    if (n < s.len) printf("... (%" PRIu64 " bytes)", s.len);
}

static void print_value(const pam_gguf_value *v);

static void print_array(const pam_gguf_value *v) {
    uint64_t n = v->v.arr.n;
    printf("[%" PRIu64 " x %s]", n, pam_gguf_type_name(v->v.arr.type));
    uint64_t shown = n < INSPECT_MAX_ELEMS ? n : INSPECT_MAX_ELEMS;
    for (uint64_t i = 0; i < shown; i++) {
        fputs(i ? ", " : " ", stdout);
        if (v->v.arr.items) {
            if (v->v.arr.type == PAM_GGUF_ARRAY) putchar('(');
            print_value(&v->v.arr.items[i]);
            if (v->v.arr.type == PAM_GGUF_ARRAY) putchar(')');
        } else if (v->v.arr.type == PAM_GGUF_FLOAT32 || v->v.arr.type == PAM_GGUF_FLOAT64) {
            printf("%.9g", pam_gguf_arr_f64(v, i));
        } else if (v->v.arr.type == PAM_GGUF_BOOL) {
            fputs(pam_gguf_arr_i64(v, i) ? "true" : "false", stdout);
        } else if (v->v.arr.type == PAM_GGUF_UINT64) {
            /* arr_i64 returns the bits of values above INT64_MAX wrapped */
            printf("%" PRIu64, (uint64_t)pam_gguf_arr_i64(v, i));
        } else {
            printf("%" PRId64, pam_gguf_arr_i64(v, i));
        }
    }
    if (shown < n) fputs(", ...", stdout);
}

static void print_value(const pam_gguf_value *v) {
    switch (v->type) {
    case PAM_GGUF_UINT8:
    case PAM_GGUF_UINT16:
    case PAM_GGUF_UINT32:
    case PAM_GGUF_UINT64: printf("%" PRIu64, v->v.u64); break;
    case PAM_GGUF_INT8:
    case PAM_GGUF_INT16:
    case PAM_GGUF_INT32:
    case PAM_GGUF_INT64: printf("%" PRId64, v->v.i64); break;
    case PAM_GGUF_FLOAT32: printf("%.9g", v->v.f64); break;
    case PAM_GGUF_FLOAT64: printf("%.17g", v->v.f64); break;
    case PAM_GGUF_BOOL: fputs(v->v.b ? "true" : "false", stdout); break;
    case PAM_GGUF_STRING: print_str(v->v.str); break;
    case PAM_GGUF_ARRAY: print_array(v); break;
    default: fputs("?", stdout); break;
    }
}

static void print_shape(const pam_gguf_tensor *t, char *buf, size_t size) {
    size_t at = 0;
    at += (size_t)snprintf(buf, size, "[");
    for (uint32_t d = 0; d < t->n_dims && at < size; d++)
        at += (size_t)snprintf(buf + at, size - at, "%s%" PRId64, d ? ", " : "", t->ne[d]);
    if (at < size) snprintf(buf + at, size - at, "]");
}

static void human_bytes(double bytes, char *buf, size_t size) {
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024 && u < 4) {
        bytes /= 1024;
        u++;
    }
    snprintf(buf, size, u ? "%.2f %s" : "%.0f %s", bytes, units[u]);
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: pam inspect MODEL.gguf\n"
            "\n"
            "Prints the GGUF header, every metadata key with its type and value\n"
            "(long arrays and strings abbreviated), and the tensor table.\n");
}

int pam_cli_inspect(int argc, char **argv) {
    if (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        usage(stdout);
        return 0;
    }
    if (argc != 2 || argv[1][0] == '-') {
        usage(stderr);
        return 2;
    }
    const char *path = argv[1];
    pam_gguf *g;
    if (pam_gguf_open(path, &g) != PAM_OK) {
        fprintf(stderr, "pam inspect: %s\n", pam_last_error());
        return 1;
    }

    char hb[64];
    human_bytes((double)pam_gguf_file_size(g), hb, sizeof hb);
    printf("file:        %s\n", path);
    printf("size:        %zu bytes (%s)\n", pam_gguf_file_size(g), hb);
    printf("version:     %u\n", pam_gguf_version(g));
    printf("alignment:   %zu\n", pam_gguf_alignment(g));
    printf("data offset: %zu\n", pam_gguf_data_offset(g));

    int64_t n_kv = pam_gguf_n_kv(g);
    int key_w = 0;
    for (int64_t i = 0; i < n_kv; i++) {
        int len = (int)strlen(pam_gguf_kv_key(g, i));
        if (len > key_w && len <= 48) key_w = len;
    }
    printf("\nmetadata (%" PRId64 " keys):\n", n_kv);
    for (int64_t i = 0; i < n_kv; i++) {
        const pam_gguf_value *v = pam_gguf_kv_value(g, i);
        printf("  %-*s  %-7s  ", key_w, pam_gguf_kv_key(g, i), pam_gguf_type_name(v->type));
        print_value(v);
        putchar('\n');
    }

    int64_t n_t = pam_gguf_n_tensors(g);
    int name_w = 4;
    for (int64_t i = 0; i < n_t; i++) {
        int len = (int)strlen(pam_gguf_tensor_at(g, i)->name);
        if (len > name_w && len <= 64) name_w = len;
    }
    printf("\ntensors (%" PRId64 "):\n", n_t);
    if (n_t) printf("  %5s  %-*s  %-7s  %-24s  %12s  %12s\n", "#", name_w, "name", "type", "shape", "offset", "bytes");
    uint64_t total_bytes = 0, total_elems = 0;
    int64_t per_type[PAM_DT_COUNT] = {0};
    uint64_t per_type_bytes[PAM_DT_COUNT] = {0};
    for (int64_t i = 0; i < n_t; i++) {
        const pam_gguf_tensor *t = pam_gguf_tensor_at(g, i);
        char shape[128];
        print_shape(t, shape, sizeof shape);
        printf("  %5" PRId64 "  %-*s  %-7s  %-24s  %12" PRIu64 "  %12zu\n", i, name_w, t->name,
               pam_dtype_name(t->type), shape, t->offset, t->n_bytes);
        total_bytes += t->n_bytes;
        total_elems += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
        if (t->type < PAM_DT_COUNT) {
            per_type[t->type]++;
            per_type_bytes[t->type] += t->n_bytes;
        }
    }
    human_bytes((double)total_bytes, hb, sizeof hb);
    printf("\ntotals: %" PRId64 " tensors, %" PRIu64 " elements, %" PRIu64 " bytes of tensor data (%s)\n", n_t,
           total_elems, total_bytes, hb);
    for (uint32_t ty = 0; ty < PAM_DT_COUNT; ty++) {
        if (!per_type[ty]) continue;
        human_bytes((double)per_type_bytes[ty], hb, sizeof hb);
        printf("  %-7s %6" PRId64 " tensors  %s\n", pam_dtype_name(ty), per_type[ty], hb);
    }
    pam_gguf_close(g);
    return 0;
}
