/* pam convert: llama2.c checkpoint + tokenizer -> GGUF, then a one-line
 * summary read back from the written file (which also proves it parses). */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "cli/cli.h"
#include "model/convert.h"
#include "model/gguf.h"

static void convert_usage(FILE *f) {
    fprintf(f,
            "usage: pam convert CHECKPOINT.bin TOKENIZER.bin -o OUT.gguf [--type TYPE]\n"
            "\n"
            "Converts a llama2.c checkpoint (legacy .bin) and its tokenizer to a GGUF file\n"
            "with architecture \"llama\", loadable by pam and llama.cpp.\n"
            "\n"
            "  -o, --output PATH  file to write (written to PATH.tmp, then renamed)\n"
            "  --type TYPE        f32 (default), f16, bf16, q8_0, q4_0, q4_k, q6_k.\n"
            "                     Norms stay f32; a matrix whose rows are not whole\n"
            "                     quantisation blocks is kept in f16 (k-quants: q8_0 first).\n"
            "  -h, --help         this text\n");
}

static const struct {
    const char *name;
    pam_dtype type;
} k_types[] = {
    {"f32", PAM_DT_F32},   {"f16", PAM_DT_F16},   {"bf16", PAM_DT_BF16}, {"q8_0", PAM_DT_Q8_0},
    {"q4_0", PAM_DT_Q4_0}, {"q4_k", PAM_DT_Q4_K}, {"q6_k", PAM_DT_Q6_K},
};

static int parse_type(const char *s, pam_dtype *out) {
    for (size_t i = 0; i < sizeof k_types / sizeof k_types[0]; i++)
        if (!strcasecmp(s, k_types[i].name)) {
            *out = k_types[i].type;
            return 1;
        }
    return 0;
}

/* Prints what was written; counts matrices that could not take the requested
 * type, since a silent fallback would surprise. */
static int print_summary(const char *path, pam_dtype want) {
    pam_gguf *g;
    if (pam_gguf_open(path, &g) != PAM_OK) {
        fprintf(stderr, "pam convert: reading back %s: %s\n", path, pam_last_error());
        return 1;
    }
    uint64_t layers = 0, dim = 0, vocab = 0;
    pam_gguf_get_u64(g, "llama.block_count", &layers);
    pam_gguf_get_u64(g, "llama.embedding_length", &dim);
    pam_gguf_get_u64(g, "llama.vocab_size", &vocab);
    int64_t n = pam_gguf_n_tensors(g), n_by_type[PAM_DT_COUNT] = {0};
    for (int64_t i = 0; i < n; i++) {
        const pam_gguf_tensor *t = pam_gguf_tensor_at(g, i);
        if (t->n_dims >= 2 && t->type != (uint32_t)want && t->type < PAM_DT_COUNT) n_by_type[t->type]++;
    }
    printf("pam convert: wrote %s: llama, %llu layers, dim %llu, vocab %llu, %lld tensors, %s, %.2f MiB",
           path, (unsigned long long)layers, (unsigned long long)dim, (unsigned long long)vocab, (long long)n,
           pam_dtype_name(want), (double)pam_gguf_file_size(g) / (1024.0 * 1024.0));
    const char *sep = " (";
    for (uint32_t ty = 0; ty < PAM_DT_COUNT; ty++) {
        if (!n_by_type[ty]) continue;
        printf("%s%lld matrices in %s", sep, (long long)n_by_type[ty], pam_dtype_name(ty));
        sep = ", ";
    }
    if (sep[0] == ',') printf(": rows not whole %s blocks)", pam_dtype_name(want));
    printf("\n");
    pam_gguf_close(g);
    return 0;
}

int pam_cli_convert(int argc, char **argv) {
    const char *in[2] = {NULL, NULL}, *out = NULL;
    int n_in = 0;
    pam_dtype type = PAM_DT_F32;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            convert_usage(stdout);
            return 0;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output") || !strcmp(a, "--type") || !strcmp(a, "-t")) {
            int is_out = a[1] == 'o' || !strcmp(a, "--output");
            if (i + 1 >= argc) {
                fprintf(stderr, "pam convert: %s needs a value\n", a);
                return 1;
            }
            const char *v = argv[++i];
            if (is_out) {
                out = v;
            } else if (!parse_type(v, &type)) {
                fprintf(stderr, "pam convert: unknown type '%s' (f32, f16, bf16, q8_0, q4_0, q4_k, q6_k)\n", v);
                return 1;
            }
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "pam convert: unknown option '%s'\n", a);
            convert_usage(stderr);
            return 1;
        } else if (n_in < 2) {
            in[n_in++] = a;
        } else {
            fprintf(stderr, "pam convert: unexpected argument '%s'\n", a);
            return 1;
        }
    }
    if (n_in != 2 || !out) {
        fprintf(stderr, "pam convert: need CHECKPOINT.bin, TOKENIZER.bin and -o OUT.gguf\n");
        convert_usage(stderr);
        return 1;
    }
    if (pam_convert_llama2c(in[0], in[1], out, type) != PAM_OK) {
        fprintf(stderr, "pam convert: %s\n", pam_last_error());
        return 1;
    }
    return print_summary(out, type);
}
