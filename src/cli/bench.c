/* pam bench: decode speed at several KV depths and prefill speed, each set
 * against the machine's memory read bandwidth measured in the same run.
 *
 * The KV cache is what `pam run` and `pam serve` use: a KV manager built
 * from the same --kv-* flags (default: one dram tier of --kv-type), one per
 * depth, so tiers start empty each time.
 *
 * Decode at depth D with batch B: B sequences of that manager whose first D
 * KV positions are synthetic (pam_ctx_fill_synthetic, through the manager),
 * 2 untimed warmup steps at positions D and D+1, then N timed steps at
 * positions D..D+N-1 (each overwrites what the warmup left there). A step is
 * one pam_forward_batch over the B sequences' tokens (weights read once)
 * followed by pam_kvm_step_end, as the serving engine runs it; both are
 * timed. Logits are checked finite after every step, outside the timed
 * region. tok/s counts the B tokens of every step.
 *
 * Bytes a step at position p reads: every weight matrix once
 * (pam_model_weight_bytes, which counts the output matrix), each sequence's
 * KV entries 0..p in the encoding of the tier holding them
 * (pam_ctx_kv_bytes_at) and one row of token_embd per token. bytes_per_step
 * is their mean over the N steps; achieved_gbps = bytes_per_step * steps/s
 * / 1e9; bytes_per_token = bytes_per_step / B. cpu_ms_per_step (JSON) is
 * the process CPU time of a timed step: on a shared machine wall time also
 * measures other jobs.
 *
 * Prefill: P random token ids of one sequence at positions 0..P-1 in one
 * pam_forward call (the step), logits for the last one. bytes_per_step =
 * weights + KV of all P positions, the least traffic the pass can cause;
 * prefill is compute bound, so its fraction of the bandwidth is low by
 * nature. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/kv_flags.h"
#include "core/status.h"
#include "core/timing.h"
#include "kernels/cpu.h"
#include "kernels/ksel.h"
#include "kernels/quant.h"
#include "kernels/membw.h"
#include "kv/kvm.h"
#include "model/model.h"

#define BENCH_MAX_DEPTHS 32
#define BENCH_MAX_BATCH 256
#define BENCH_WARMUP_STEPS 2
#define BENCH_SEED 1234

typedef struct bench_record {
    const char *test;
    int32_t depth;
    int32_t batch;
    int32_t n_tokens;         /* per sequence */
    int32_t tokens_per_step;  /* decode: the batch; prefill: the prompt (one pass) */
    double tokens_per_second; /* all sequences together */
    double bytes_per_step;
    double cpu_ms_per_step; /* process CPU time (all threads) per timed step */
} bench_record;

typedef struct bench_opts {
    int32_t depths[BENCH_MAX_DEPTHS];
    int n_depths;
    long n_decode, n_prompt, reps, batch;
    int json;
    pam_kv_flags kvf;
} bench_opts;

static void bench_usage(FILE *f) {
    fprintf(f,
            "usage: pam bench -m MODEL [options]\n"
            "       pam bench kv [options]     (the KV manager alone: see pam bench kv --help)\n"
            "\n"
            "Decode tokens/s at each KV depth and prefill tokens/s, with the bytes each step\n"
            "reads and the fraction of the memory bandwidth measured at the start. The KV\n"
            "cache is the one pam run and pam serve use, built from the same --kv-* options.\n"
            "\n"
            "  -m, --model FILE        GGUF model (`pam gen-model` writes random-weight ones)\n"
            "  -t, --threads N         threads (default: number of CPUs)\n"
            "  -d, --depth LIST        comma-separated KV depths (default 0,1024,4096,16384,32768)\n"
            "  -b, --batch N           sequences decoded together at each depth, one batched\n"
            "                          forward pass per step (default 1, at most %d)\n"
            "  -n, --n-decode N        timed decode steps per depth (default 32)\n"
            "  -p, --prompt N          prefill prompt length, 0 = skip (default 512)\n"
            "  -r, --reps R            repetitions of each measurement, mean reported (default 1)\n"
            "      --bw-mib N          buffer for the bandwidth measurement in MiB (default %zu)\n"
            "      --json              print a JSON array of records instead of a table\n"
            "%s",
            BENCH_MAX_BATCH, PAM_MEMBW_DEFAULT_BYTES >> 20, pam_kv_flags_usage);
}

/* CPU time of the whole process: on a machine shared with other jobs, wall
 * time also measures them; this measures only us (idle pool workers spin
 * briefly before they sleep, so it is an upper bound on the work). */
static int64_t bench_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
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

/* A KV manager from the --kv-* flags with room for n_seqs sequences of
 * n_pos positions (the default dram tier is sized to that). */
static pam_status bench_kvm(const pam_model_hparams *hp, pam_pool *pool, const bench_opts *o, int32_t n_seqs,
                            int32_t n_pos, FILE **trace, pam_kvm **kvm) {
    uint64_t per_seq = (uint64_t)(((int64_t)n_pos + o->kvf.block_tokens - 1) / o->kvf.block_tokens);
    return pam_kv_flags_build(&o->kvf, hp, (uint64_t)n_seqs * per_seq, pool, trace, kvm);
}

static pam_status bench_check_batch(const float *logits, int32_t n, int32_t n_vocab, const char *what, int32_t pos) {
    for (int32_t i = 0; i < n; i++) PAM_TRY(bench_check_logits(logits + (size_t)i * n_vocab, n_vocab, what, pos));
    return PAM_OK;
}

static pam_status bench_decode(const pam_model *m, pam_pool *pool, const bench_opts *o, int32_t depth,
                               float *logits, bench_record *rec) {
    const pam_model_hparams *hp = pam_model_get_hparams(m);
    int32_t n = (int32_t)o->n_decode, B = (int32_t)o->batch;
    int32_t n_ctx = depth + (n > BENCH_WARMUP_STEPS ? n : BENCH_WARMUP_STEPS);
    pam_ctx *ctx[BENCH_MAX_BATCH] = {0};
    int32_t tok[BENCH_MAX_BATCH], pos[BENCH_MAX_BATCH];
    FILE *trace = NULL;
    pam_kvm *kvm = NULL;
    PAM_TRY(bench_kvm(hp, pool, o, B, n_ctx, &trace, &kvm));
    pam_status st = PAM_OK;
    for (int32_t b = 0; st == PAM_OK && b < B; b++) {
        pam_ctx_params cp;
        pam_ctx_params_default(&cp);
        cp.n_ctx = n_ctx;
        cp.kvm = kvm;
        st = pam_ctx_create_ex(m, &cp, pool, &ctx[b]);
        if (st == PAM_OK) st = pam_ctx_fill_synthetic(ctx[b], depth, BENCH_SEED + (uint64_t)depth + 7919u * (uint64_t)b);
    }
    uint64_t rng = BENCH_SEED ^ (uint64_t)depth;
    for (int w = 0; st == PAM_OK && w < BENCH_WARMUP_STEPS; w++) {
        for (int32_t b = 0; b < B; b++) {
            tok[b] = (int32_t)(bench_rng(&rng) % (uint64_t)hp->n_vocab);
            pos[b] = depth + w;
        }
        st = pam_forward_batch(ctx, tok, pos, B, logits);
        if (st == PAM_OK) st = pam_kvm_step_end(kvm);
        if (st == PAM_OK) st = bench_check_batch(logits, B, hp->n_vocab, "decode warmup", depth + w);
    }
    int64_t total_ns = 0, cpu_ns = 0;
    for (long r = 0; st == PAM_OK && r < o->reps; r++) {
        for (int32_t i = 0; st == PAM_OK && i < n; i++) {
            for (int32_t b = 0; b < B; b++) {
                tok[b] = (int32_t)(bench_rng(&rng) % (uint64_t)hp->n_vocab);
                pos[b] = depth + i;
            }
            int64_t t0 = pam_time_ns(), c0 = bench_cpu_ns();
            st = pam_forward_batch(ctx, tok, pos, B, logits);
            if (st == PAM_OK) st = pam_kvm_step_end(kvm);
            total_ns += pam_time_ns() - t0;
            cpu_ns += bench_cpu_ns() - c0;
            if (st == PAM_OK) st = bench_check_batch(logits, B, hp->n_vocab, "decode", depth + i);
        }
    }
    if (st == PAM_OK) {
        double kv = 0;
        for (int32_t i = 0; i < n; i++)
            for (int32_t b = 0; b < B; b++) kv += (double)pam_ctx_kv_bytes_at(ctx[b], depth + i);
        rec->test = "decode";
        rec->depth = depth;
        rec->batch = B;
        rec->tokens_per_step = B;
        rec->n_tokens = n;
        rec->tokens_per_second = (double)n * (double)B * (double)o->reps * 1e9 / (double)(total_ns > 0 ? total_ns : 1);
        rec->cpu_ms_per_step = (double)cpu_ns / 1e6 / ((double)n * (double)o->reps);
        rec->bytes_per_step =
            (double)pam_model_weight_bytes(m) + (double)B * (double)bench_embd_row_bytes(m) + kv / n;
    }
    for (int32_t b = 0; b < B; b++) pam_ctx_free(ctx[b]);
    pam_kvm_destroy(kvm);
    if (trace) fclose(trace);
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
    FILE *trace = NULL;
    pam_kvm *kvm = NULL;
    pam_ctx *ctx = NULL;
    pam_status st = bench_kvm(hp, pool, o, 1, n, &trace, &kvm);
    if (st == PAM_OK) {
        pam_ctx_params cp;
        pam_ctx_params_default(&cp);
        cp.n_ctx = n;
        cp.kvm = kvm;
        st = pam_ctx_create_ex(m, &cp, pool, &ctx);
    }
    int64_t total_ns = 0, cpu_ns = 0;
    for (long r = 0; st == PAM_OK && r < o->reps; r++) {
        int64_t t0 = pam_time_ns(), c0 = bench_cpu_ns();
        st = pam_forward(ctx, toks, n, 0, logits, 0);
        if (st == PAM_OK) st = pam_kvm_step_end(kvm);
        total_ns += pam_time_ns() - t0;
        cpu_ns += bench_cpu_ns() - c0;
        if (st == PAM_OK) st = bench_check_logits(logits, hp->n_vocab, "prefill", n - 1);
    }
    if (st == PAM_OK) {
        rec->test = "prefill";
        rec->depth = 0;
        rec->batch = 1;
        rec->tokens_per_step = n;
        rec->n_tokens = n;
        rec->tokens_per_second = (double)n * (double)o->reps * 1e9 / (double)(total_ns > 0 ? total_ns : 1);
        rec->cpu_ms_per_step = (double)cpu_ns / 1e6 / (double)o->reps;
        rec->bytes_per_step = (double)pam_model_weight_bytes(m) + (double)pam_ctx_kv_bytes_at(ctx, n - 1);
    }
    pam_ctx_free(ctx);
    pam_kvm_destroy(kvm);
    if (trace) fclose(trace);
    free(toks);
    return st;
}

static void bench_print(const bench_record *r, int threads, double bw, int json, int first) {
    double steps = r->tokens_per_second / r->tokens_per_step;
    double gbps = r->bytes_per_step * steps / 1e9;
    if (json) {
        printf("%s\n  {\"test\": \"%s\", \"depth\": %d, \"batch\": %d, \"n_tokens\": %d, \"threads\": %d, "
               "\"tokens_per_second\": %.4f, \"bytes_per_step\": %.0f, \"bytes_per_token\": %.0f, "
               "\"achieved_gbps\": %.4f, \"bandwidth_gbps\": %.4f, \"fraction_of_bandwidth\": %.4f, "
               "\"cpu_ms_per_step\": %.4f}",
               first ? "" : ",", r->test, r->depth, r->batch, r->n_tokens, threads, r->tokens_per_second,
               r->bytes_per_step, r->bytes_per_step / r->tokens_per_step, gbps, bw, gbps / bw, r->cpu_ms_per_step);
    } else {
        printf("| %-7s | %6d | %5d | %7d | %9.2f | %9.1f | %7.2f | %6.1f%% |\n", r->test, r->depth, r->batch, threads,
               r->tokens_per_second, r->bytes_per_step / 1e6, gbps, 100.0 * gbps / bw);
    }
    fflush(stdout);
}

int pam_cli_bench(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "kv")) return pam_cli_bench_kv(argc - 1, argv + 1);
    const char *model_path = NULL;
    long n_threads = 0, bw_mib = (long)(PAM_MEMBW_DEFAULT_BYTES >> 20);
    bench_opts o = {.depths = {0, 1024, 4096, 16384, 32768}, .n_depths = 5, .n_decode = 32, .n_prompt = 512, .reps = 1,
                   .batch = 1};
    pam_kv_flags_init(&o.kvf);
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
        } else if (pam_args_is(&a, "-b", "--batch")) {
            pam_args_long(&a, 1, BENCH_MAX_BATCH, &o.batch);
        } else if (pam_kv_flags_parse(&o.kvf, &a)) {
            /* consumed */
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
    if (o.kvf.remote_url || o.kvf.persist_dir) {
        fprintf(stderr, "pam bench: --kv-tier remote:... and --kv-persist are for pam serve (they hold shared prefixes)\n");
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
    logits = malloc((size_t)o.batch * (size_t)hp->n_vocab * sizeof(float));
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
    fprintf(info, "threads: %d, isa: %s, memory read bandwidth: %.2f GB/s (best of 5 over %ld MiB)\n", threads,
            pam_cpu_isa(), bw, bw_mib);
    fprintf(info, "kv: blocks of %ld tokens, policy %s, tiers:", o.kvf.block_tokens, pam_kv_policy_name(o.kvf.policy));
    for (int i = 0; i < o.kvf.n_specs; i++) fprintf(info, " %s", o.kvf.specs[i]);
    fprintf(info, "%s\n\n", o.kvf.n_specs ? "" : " dram (default, sized to each depth)");
    if (o.json)
        printf("[");
    else
        printf("| test    |  depth | batch | threads |     tok/s | MB / step |    GB/s | of bw   |\n"
               "|---------|--------|-------|---------|-----------|-----------|---------|---------|\n");
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
