/* pam bench: decode speed at several KV depths and prefill speed, each set
 * against the machine's memory read bandwidth measured in the same run.
 *
 * Decode at depth D: a context of D + N + 1 positions whose first D KV
 * entries are synthetic (pam_ctx_fill_synthetic), 2 untimed warmup steps at
 * positions D and D+1, then N timed single-token steps at positions D..D+N-1
 * (each overwrites what the warmup left there), each producing the logits of
 * its token. Only pam_forward is timed; the logits are checked finite after
 * every step, outside the timed region.
 *
 * Bytes a decode step at position p reads: every weight matrix once
 * (pam_model_weight_bytes, which counts the output matrix), the KV entries
 * 0..p (pam_ctx_kv_bytes_at) and one row of token_embd. bytes_per_token is
 * their mean over the N steps; achieved_gbps = bytes_per_token * tok/s / 1e9.
 *
 * Prefill: P random token ids at positions 0..P-1 in one pam_forward call,
 * logits for the last one. bytes_per_token = (weights + KV of all P
 * positions) / P, the least traffic the pass can cause; prefill is compute
 * bound, so its fraction of the bandwidth is low by nature. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "core/status.h"
#include "core/timing.h"
#include "kernels/cpu.h"
#include "kernels/ksel.h"
#include "kernels/quant.h"
#include "kernels/membw.h"
#include "model/model.h"

#define BENCH_MAX_DEPTHS 32
#define BENCH_WARMUP_STEPS 2
#define BENCH_SEED 1234

typedef struct bench_record {
    const char *test;
    int32_t depth;
    int32_t n_tokens;
    double tokens_per_second;
    double bytes_per_token;
} bench_record;

typedef struct bench_opts {
    int32_t depths[BENCH_MAX_DEPTHS];
    int n_depths;
    long n_decode, n_prompt, reps;
    int json;
    pam_dtype kv_type;
} bench_opts;

static void bench_usage(FILE *f) {
    fprintf(f,
            "usage: pam bench -m MODEL [options]\n"
            "\n"
            "Decode tokens/s at each KV depth and prefill tokens/s, with the bytes each token\n"
            "reads and the fraction of the memory bandwidth measured at the start.\n"
            "\n"
            "  -m, --model FILE      GGUF model (`pam gen-model` writes random-weight ones)\n"
            "  -t, --threads N       threads (default: number of CPUs)\n"
            "  -d, --depth LIST      comma-separated KV depths (default 0,1024,4096,16384,32768)\n"
            "  -n, --n-decode N      timed decode steps per depth (default 32)\n"
            "  -p, --prompt N        prefill prompt length, 0 = skip (default 512)\n"
            "  -r, --reps R          repetitions of each measurement, mean reported (default 1)\n"
            "      --bw-mib N        buffer for the bandwidth measurement in MiB (default %zu)\n"
            "      --kv-type T       KV cache element type: f16 (default) or f32\n"
            "      --json            print a JSON array of records instead of a table\n",
            PAM_MEMBW_DEFAULT_BYTES >> 20);
}

static int bench_parse_depths(const char *s, bench_opts *o) {
    o->n_depths = 0;
    while (s && *s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 0 || v > (1L << 24) || (*end && *end != ',') || o->n_depths == BENCH_MAX_DEPTHS)
            return 0;
        o->depths[o->n_depths++] = (int32_t)v;
        s = *end ? end + 1 : end;
    }
    return o->n_depths > 0;
}

static uint64_t bench_rng(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static pam_status bench_check_logits(const float *logits, int32_t n_vocab, const char *what, int32_t pos) {
    for (int32_t i = 0; i < n_vocab; i++)
        if (!isfinite(logits[i]))
            return PAM_ERR(PAM_ERR_CORRUPT, "%s at position %d: logit %d is not finite", what, pos, i);
    return PAM_OK;
}

/* Bytes of one row of token_embd (what the embedding lookup reads). */
static uint64_t bench_embd_row_bytes(const pam_model *m) {
    const pam_gguf_tensor *t = pam_gguf_find_tensor(pam_model_gguf(m), "token_embd.weight");
    size_t row = 0;
    if (!t || pam_dtype_row_bytes(t->type, t->ne[0], &row) != PAM_OK) return 0;
    return row;
}

static pam_status bench_decode(const pam_model *m, pam_pool *pool, const bench_opts *o, int32_t depth,
                               float *logits, bench_record *rec) {
    const pam_model_hparams *hp = pam_model_get_hparams(m);
    int32_t n = (int32_t)o->n_decode;
    pam_ctx *ctx = NULL;
    PAM_TRY(pam_ctx_create_ex(m, &(pam_ctx_params){.n_ctx = depth + n + 1, .kv_type = o->kv_type, .kv_seq = -1}, pool, &ctx));
    pam_status st = pam_ctx_fill_synthetic(ctx, depth, BENCH_SEED + (uint64_t)depth);
    uint64_t rng = BENCH_SEED ^ (uint64_t)depth;
    for (int w = 0; st == PAM_OK && w < BENCH_WARMUP_STEPS; w++) {
        int32_t tok = (int32_t)(bench_rng(&rng) % (uint64_t)hp->n_vocab);
        st = pam_forward(ctx, &tok, 1, depth + w, logits, 0);
        if (st == PAM_OK) st = bench_check_logits(logits, hp->n_vocab, "decode warmup", depth + w);
    }
    int64_t total_ns = 0;
    for (long r = 0; st == PAM_OK && r < o->reps; r++) {
        for (int32_t i = 0; st == PAM_OK && i < n; i++) {
            int32_t tok = (int32_t)(bench_rng(&rng) % (uint64_t)hp->n_vocab);
            int64_t t0 = pam_time_ns();
            st = pam_forward(ctx, &tok, 1, depth + i, logits, 0);
            total_ns += pam_time_ns() - t0;
            if (st == PAM_OK) st = bench_check_logits(logits, hp->n_vocab, "decode", depth + i);
        }
    }
    if (st == PAM_OK) {
        double kv = 0;
        for (int32_t i = 0; i < n; i++) kv += (double)pam_ctx_kv_bytes_at(ctx, depth + i);
        rec->test = "decode";
        rec->depth = depth;
        rec->n_tokens = n;
        rec->tokens_per_second = (double)n * (double)o->reps * 1e9 / (double)(total_ns > 0 ? total_ns : 1);
        rec->bytes_per_token = (double)pam_model_weight_bytes(m) + (double)bench_embd_row_bytes(m) + kv / n;
    }
    pam_ctx_free(ctx);
    return st;
}

static pam_status bench_prefill(const pam_model *m, pam_pool *pool, const bench_opts *o, float *logits,
                                bench_record *rec) {
    const pam_model_hparams *hp = pam_model_get_hparams(m);
    int32_t n = (int32_t)o->n_prompt;
    int32_t *toks = malloc((size_t)n * sizeof *toks);
    if (!toks) return PAM_ERR(PAM_ERR_NOMEM, "prefill: %d tokens", n);
    uint64_t rng = BENCH_SEED;
    for (int32_t i = 0; i < n; i++) toks[i] = (int32_t)(bench_rng(&rng) % (uint64_t)hp->n_vocab);
    pam_ctx *ctx = NULL;
    pam_status st = pam_ctx_create_ex(m, &(pam_ctx_params){.n_ctx = n, .kv_type = o->kv_type, .kv_seq = -1}, pool, &ctx);
    int64_t total_ns = 0;
    for (long r = 0; st == PAM_OK && r < o->reps; r++) {
        int64_t t0 = pam_time_ns();
        st = pam_forward(ctx, toks, n, 0, logits, 0);
        total_ns += pam_time_ns() - t0;
        if (st == PAM_OK) st = bench_check_logits(logits, hp->n_vocab, "prefill", n - 1);
    }
    if (st == PAM_OK) {
        rec->test = "prefill";
        rec->depth = 0;
        rec->n_tokens = n;
        rec->tokens_per_second = (double)n * (double)o->reps * 1e9 / (double)(total_ns > 0 ? total_ns : 1);
        rec->bytes_per_token =
            ((double)pam_model_weight_bytes(m) + (double)pam_ctx_kv_bytes_at(ctx, n - 1)) / (double)n;
    }
    pam_ctx_free(ctx);
    free(toks);
    return st;
}

static void bench_print(const bench_record *r, int threads, double bw, int json, int first) {
    double gbps = r->bytes_per_token * r->tokens_per_second / 1e9;
    if (json) {
        printf("%s\n  {\"test\": \"%s\", \"depth\": %d, \"n_tokens\": %d, \"threads\": %d, \"tokens_per_second\": %.4f, "
               "\"bytes_per_token\": %.0f, \"achieved_gbps\": %.4f, \"bandwidth_gbps\": %.4f, "
               "\"fraction_of_bandwidth\": %.4f}",
               first ? "" : ",", r->test, r->depth, r->n_tokens, threads, r->tokens_per_second, r->bytes_per_token,
               gbps, bw, gbps / bw);
    } else {
        printf("| %-7s | %6d | %7d | %9.2f | %10.1f | %7.2f | %6.1f%% |\n", r->test, r->depth, threads,
               r->tokens_per_second, r->bytes_per_token / 1e6, gbps, 100.0 * gbps / bw);
    }
    fflush(stdout);
}

int pam_cli_bench(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "kv")) return pam_cli_bench_kv(argc - 1, argv + 1);
    const char *model_path = NULL;
    long n_threads = 0, bw_mib = (long)(PAM_MEMBW_DEFAULT_BYTES >> 20);
    bench_opts o = {.depths = {0, 1024, 4096, 16384, 32768}, .n_depths = 5, .n_decode = 32, .n_prompt = 512, .reps = 1,
                   .kv_type = PAM_DT_F16};
    pam_args a;
    pam_args_init(&a, argc, argv, "pam bench");
    while (pam_args_next(&a)) {
        if (pam_args_is(&a, "-h", "--help")) {
            bench_usage(stdout);
            return 0;
        } else if (pam_args_is(&a, "-m", "--model")) {
            model_path = pam_args_value(&a);
        } else if (pam_args_is(&a, "-t", "--threads")) {
            pam_args_long(&a, 1, 1024, &n_threads);
        } else if (pam_args_is(&a, NULL, "--kv-type")) {
            const char *t = pam_args_value(&a);
            if (t && !strcmp(t, "f16"))
                o.kv_type = PAM_DT_F16;
            else if (t && !strcmp(t, "f32"))
                o.kv_type = PAM_DT_F32;
            else if (t) {
                fprintf(stderr, "pam bench: --kv-type must be f16 or f32, got '%s'\n", t);
                a.failed = 1;
            }
        } else if (pam_args_is(&a, "-d", "--depth")) {
            const char *v = pam_args_value(&a);
            if (v && !bench_parse_depths(v, &o)) {
                fprintf(stderr, "pam bench: --depth expects up to %d comma-separated integers in [0, %ld], got '%s'\n",
                        BENCH_MAX_DEPTHS, 1L << 24, v);
                a.failed = 1;
            }
        } else if (pam_args_is(&a, "-n", "--n-decode")) {
            pam_args_long(&a, 1, 1L << 20, &o.n_decode);
        } else if (pam_args_is(&a, "-p", "--prompt")) {
            pam_args_long(&a, 0, 1L << 20, &o.n_prompt);
        } else if (pam_args_is(&a, "-r", "--reps")) {
            pam_args_long(&a, 1, 1000, &o.reps);
        } else if (pam_args_is(&a, NULL, "--bw-mib")) {
            pam_args_long(&a, 1, 1L << 20, &bw_mib);
        } else if (pam_args_is(&a, NULL, "--json")) {
            o.json = 1;
        } else {
            pam_args_unknown(&a);
        }
    }
    if (a.n_positional > 0) {
        fprintf(stderr, "pam bench: unexpected argument '%s' (the model goes after -m)\n", a.positional[0]);
        a.failed = 1;
    }
    if (!a.failed && !model_path) {
        fprintf(stderr, "pam bench: no model given: pass a GGUF file with -m MODEL.gguf\n"
                        "(`pam gen-model --shape tinyllama-1.1b --type q8_0 -o MODEL.gguf` writes one)\n");
        a.failed = 1;
    }
    if (a.failed) {
        fprintf(stderr, "run `pam bench --help` for the options\n");
        return 2;
    }

    int rc = 1;
    pam_model *model = NULL;
    pam_pool *pool = NULL;
    float *logits = NULL;
    FILE *info = o.json ? stderr : stdout;
    if (pam_model_load(model_path, &model) != PAM_OK) {
        fprintf(stderr, "pam bench: cannot load '%s': %s\n", model_path, pam_last_error());
        goto done;
    }
    if (pam_pool_create((int)n_threads, &pool) != PAM_OK) {
        fprintf(stderr, "pam bench: %s\n", pam_last_error());
        goto done;
    }
    const pam_model_hparams *hp = pam_model_get_hparams(model);
    int threads = pam_pool_n_threads(pool);
    logits = malloc((size_t)hp->n_vocab * sizeof(float));
    if (!logits) {
        fprintf(stderr, "pam bench: out of memory\n");
        goto done;
    }
    double bw = 0;
    if (pam_membw_read_gbps(pool, (size_t)bw_mib << 20, 5, &bw) != PAM_OK) {
        fprintf(stderr, "pam bench: bandwidth measurement failed: %s\n", pam_last_error());
        goto done;
    }
    fprintf(info, "model: %s (%s, %d layers, embd %d, %d/%d heads, ff %d, vocab %d), weights %.1f MB per token\n",
            model_path, hp->arch, hp->n_layer, hp->n_embd, hp->n_head, hp->n_head_kv, hp->n_ff, hp->n_vocab,
            (double)pam_model_weight_bytes(model) / 1e6);
    /* the per-machine kernel choice, made now if this is the first run here */
    pam_vec_kernels_register();
    fprintf(info, "cpu: %s\nkernels:", pam_cpu_model());
    for (int k = 0; k < pam_ksel_count(); k++) {
        const pam_ksel_variant *v = pam_ksel_choice(k); /* before asking how it was chosen */
        fprintf(info, " %s=%s(%s)", pam_ksel_name(k), v->name, pam_ksel_how(k));
    }
    fprintf(info, "\n");
    fprintf(info, "threads: %d, isa: %s, memory read bandwidth: %.2f GB/s (best of 5 over %ld MiB)\n\n", threads,
            pam_cpu_isa(), bw, bw_mib);
    if (o.json)
        printf("[");
    else
        printf("| test    |  depth | threads |     tok/s | MB / token |    GB/s | of bw   |\n"
               "|---------|--------|---------|-----------|------------|---------|---------|\n");
    int first = 1;
    for (int i = 0; i < o.n_depths; i++) {
        bench_record rec;
        if (bench_decode(model, pool, &o, o.depths[i], logits, &rec) != PAM_OK) {
            fprintf(stderr, "pam bench: decode at depth %d: %s\n", o.depths[i], pam_last_error());
            goto done;
        }
        bench_print(&rec, threads, bw, o.json, first);
        first = 0;
    }
    if (o.n_prompt > 0) {
        bench_record rec;
        if (bench_prefill(model, pool, &o, logits, &rec) != PAM_OK) {
            fprintf(stderr, "pam bench: prefill of %ld tokens: %s\n", o.n_prompt, pam_last_error());
            goto done;
        }
        bench_print(&rec, threads, bw, o.json, first);
    }
    if (o.json) printf("\n]\n");
    rc = 0;
done:
    free(logits);
    pam_pool_destroy(pool);
    pam_model_free(model);
    return rc;
}
