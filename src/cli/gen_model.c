/* pam gen-model: write a random-weight GGUF in the shape of a real model. */
#include <stdio.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "core/timing.h"
#include "model/gen_model.h"

static void gen_model_usage(FILE *f) {
    fprintf(f,
            "usage: pam gen-model --shape SHAPE --type TYPE -o OUT.gguf [options]\n"
            "\n"
            "Writes a model with random weights and the exact tensor shapes and metadata of a\n"
            "real one, for benchmarks (llama.cpp loads it too). The vocabulary is a synthetic\n"
            "SentencePiece one of the real size, which does not change speed.\n"
            "\n"
            "  -s, --shape SHAPE   %s\n"
            "      --type TYPE     f32, f16, bf16, q8_0, q4_0, q4_k or q6_k (norms and biases stay F32)\n"
            "  -o, --output FILE   output GGUF\n"
            "      --seed N        random seed (default 1)\n"
            "      --layers N      override the number of layers (quick tests)\n"
            "  -t, --threads N     threads (default: number of CPUs)\n",
            pam_gen_model_shape_names());
}

static int gen_model_parse_type(const char *s, pam_dtype *out) {
    static const struct {
        const char *name;
        pam_dtype type;
    } types[] = {{"f32", PAM_DT_F32},   {"f16", PAM_DT_F16},   {"bf16", PAM_DT_BF16}, {"q8_0", PAM_DT_Q8_0},
                 {"q4_0", PAM_DT_Q4_0}, {"q4_k", PAM_DT_Q4_K}, {"q6_k", PAM_DT_Q6_K}};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        if (!strcmp(s, types[i].name)) {
            *out = types[i].type;
            return 1;
        }
    }
    return 0;
}

int pam_cli_gen_model(int argc, char **argv) {
    const char *shape_name = NULL, *type_name = NULL, *out_path = NULL;
    long seed = 1, n_layers = 0, n_threads = 0;
    pam_args a;
    pam_args_init(&a, argc, argv, "pam gen-model");
    while (pam_args_next(&a)) {
        if (pam_args_is(&a, "-h", "--help")) {
            gen_model_usage(stdout);
            return 0;
        } else if (pam_args_is(&a, "-s", "--shape")) {
            shape_name = pam_args_value(&a);
        } else if (pam_args_is(&a, NULL, "--type")) {
            type_name = pam_args_value(&a);
        } else if (pam_args_is(&a, "-o", "--output")) {
            out_path = pam_args_value(&a);
        } else if (pam_args_is(&a, NULL, "--seed")) {
            pam_args_long(&a, 0, 1L << 62, &seed);
        } else if (pam_args_is(&a, NULL, "--layers")) {
            pam_args_long(&a, 1, 4096, &n_layers);
        } else if (pam_args_is(&a, "-t", "--threads")) {
            pam_args_long(&a, 1, 1024, &n_threads);
        } else {
            pam_args_unknown(&a);
        }
    }
    if (a.n_positional > 0) {
        fprintf(stderr, "pam gen-model: unexpected argument '%s'\n", a.positional[0]);
        a.failed = 1;
    }
    const pam_gen_model_shape *shape = NULL;
    if (!a.failed && !shape_name) {
        fprintf(stderr, "pam gen-model: no shape given: pass --shape (%s)\n", pam_gen_model_shape_names());
        a.failed = 1;
    } else if (shape_name && !(shape = pam_gen_model_shape_find(shape_name))) {
        fprintf(stderr, "pam gen-model: unknown shape '%s' (shapes: %s)\n", shape_name, pam_gen_model_shape_names());
        a.failed = 1;
    }
    pam_dtype type = PAM_DT_Q8_0;
    if (!a.failed && !type_name) {
        fprintf(stderr, "pam gen-model: no weight type given: pass --type f16, q8_0 or q4_0 (or f32, bf16, q4_k, q6_k)\n");
        a.failed = 1;
    } else if (type_name && !gen_model_parse_type(type_name, &type)) {
        fprintf(stderr, "pam gen-model: unknown type '%s' (types: f32, f16, bf16, q8_0, q4_0, q4_k, q6_k)\n", type_name);
        a.failed = 1;
    }
    if (!a.failed && !out_path) {
        fprintf(stderr, "pam gen-model: no output file given: pass -o OUT.gguf\n");
        a.failed = 1;
    }
    if (a.failed) {
        fprintf(stderr, "run `pam gen-model --help` for the options\n");
        return 2;
    }

    pam_gen_model_shape s = *shape;
    if (n_layers > 0) s.n_layer = (int32_t)n_layers;
    pam_pool *pool = NULL;
    if (pam_pool_create((int)n_threads, &pool) != PAM_OK) {
        fprintf(stderr, "pam gen-model: %s\n", pam_last_error());
        return 1;
    }
    int64_t t0 = pam_time_ns();
    pam_status st = pam_gen_model_write(&s, type, (uint64_t)seed, pool, out_path);
    double secs = (double)(pam_time_ns() - t0) / 1e9;
    pam_pool_destroy(pool);
    if (st != PAM_OK) {
        fprintf(stderr, "pam gen-model: cannot write '%s': %s\n", out_path, pam_last_error());
        return 1;
    }
    fprintf(stderr, "wrote %s: %s, %s, %d layers, %d embd, vocab %d, seed %ld, in %.1f s\n", out_path, s.name,
            type_name, s.n_layer, s.n_embd, s.n_vocab, seed, secs);
    return 0;
}
