/* pam perplexity: perplexity of a model on a text, by llama.cpp's
 * llama-perplexity method, and with --kl-divergence the distance of the
 * chosen KV configuration from the exact path (f32 KV in one dram tier).
 *
 * Method (llama.cpp tools/perplexity): the whole text is tokenized once
 * (BOS first when the vocabulary adds one) and cut into non-overlapping
 * chunks of CTX tokens; each chunk is evaluated from an empty cache with its
 * first token replaced by BOS; only the second half is scored: the logits at
 * positions CTX/2 .. CTX-2 against the tokens that follow them. PPL =
 * exp(mean NLL) and its standard error is PPL * sqrt(var(NLL) / (N - 1)). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/kv_flags.h"
#include "cli/text_tokens.h"
#include "core/status.h"
#include "core/timing.h"
#include "kv/kvm.h"
#include "model/model.h"

static void ppl_usage(FILE *f) {
    fprintf(f,
            "usage: pam perplexity -m MODEL -f TEXT [-c CTX] [options]\n"
            "\n"
            "Perplexity by llama.cpp's llama-perplexity method: chunks of CTX tokens,\n"
            "each from an empty cache starting with BOS, the second half of each scored.\n"
            "\n"
            "  -m, --model FILE        GGUF model\n"
            "  -f, --file FILE         text to evaluate (at least 2*CTX tokens)\n"
            "  -c, --ctx-size N        tokens per chunk (default 512 or the model's context if smaller)\n"
            "  -b, --batch-size N      tokens per forward pass (default CTX: one pass per chunk;\n"
            "                          1 decodes token by token with a KV step between tokens)\n"
            "      --chunks N          evaluate only the first N chunks (default all)\n"
            "  -t, --threads N         threads (default: number of CPUs)\n"
            "      --kl-divergence     also run the exact path (f32 KV in one dram tier) and report\n"
            "                          mean KL divergence, top-1 agreement and PPL / PPL(exact)\n"
            "      --json              print one JSON object instead of the text report\n"
            "%s"
            "                          (any --kv-* option selects the paged cache; default one dram tier\n"
            "                          holding one chunk)\n",
            pam_kv_flags_usage);
}

/* Sums over scored tokens, as llama.cpp's kl_divergence_result. */
typedef struct ppl_sums {
    double nll, nll2;
    double nll_base, nll_base2, nll_nll_base;
    double kld, kld2, kld_max;
    double p_diff2;
    long same_top, count;
} ppl_sums;

/* log-sum-exp of a row (max in float and sum in double, as llama.cpp),
 * and the first index of its maximum. */
static double row_lse(const float *x, int32_t n, int32_t *argmax) {
    float mx = x[0];
    int32_t im = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > mx) mx = x[i], im = i;
    double s = 0;
    for (int32_t i = 0; i < n; i++) s += exp((double)x[i] - mx);
    *argmax = im;
    return (double)mx + log(s);
}

static void score_row(ppl_sums *s, const float *x, const float *base, int32_t n_vocab, int32_t tok) {
    int32_t am, am_b = 0;
    double lse = row_lse(x, n_vocab, &am);
    double nll = lse - x[tok];
    s->nll += nll;
    s->nll2 += nll * nll;
    s->count++;
    if (!base) return;
    double lse_b = row_lse(base, n_vocab, &am_b);
    double nll_b = lse_b - base[tok];
    s->nll_base += nll_b;
    s->nll_base2 += nll_b * nll_b;
    s->nll_nll_base += nll * nll_b;
    /* KL(base || this) = sum_i p_base(i) (log p_base(i) - log p(i)) */
    double kl = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        double lb = base[i] - lse_b;
        kl += exp(lb) * (lb - (x[i] - lse));
    }
    if (kl < 0) kl = 0; /* rounding of two near-identical distributions */
    s->kld += kl;
    s->kld2 += kl * kl;
    if (kl > s->kld_max) s->kld_max = kl;
    double dp = exp(-nll) - exp(-nll_b);
    s->p_diff2 += dp * dp;
    s->same_top += am == am_b;
}

/* Mean and its standard error from sums (llama.cpp's mean_and_uncertainty). */
static void mean_unc(double sum, double sum2, long n, double *mean, double *unc) {
    *mean = n > 0 ? sum / (double)n : 0;
    double v = n > 0 ? sum2 / (double)n - *mean * *mean : 0;
    *unc = v > 0 && n > 1 ? sqrt(v / (double)(n - 1)) : 0;
}

typedef struct ppl_result {
    double ppl, ppl_unc;
    double ppl_base, ppl_base_unc;
    double ratio, ratio_unc, kl, kl_unc, kl_max, top1, top1_unc, rms_dp;
} ppl_result;

static void finish(const ppl_sums *s, int kl, ppl_result *r) {
    double m, u, mb, ub;
    memset(r, 0, sizeof *r);
    mean_unc(s->nll, s->nll2, s->count, &m, &u);
    r->ppl = exp(m);
    r->ppl_unc = r->ppl * u;
    if (!kl) return;
    mean_unc(s->nll_base, s->nll_base2, s->count, &mb, &ub);
    r->ppl_base = exp(mb);
    r->ppl_base_unc = r->ppl_base * ub;
    double n = (double)s->count;
    double cov = s->count > 1 ? (s->nll_nll_base / n - m * mb) / (n - 1) : 0;
    double lr = m - mb, lr_var = u * u + ub * ub - 2 * cov;
    r->ratio = exp(lr);
    r->ratio_unc = r->ratio * (lr_var > 0 ? sqrt(lr_var) : 0);
    mean_unc(s->kld, s->kld2, s->count, &r->kl, &r->kl_unc);
    r->kl_max = s->kld_max;
    r->top1 = s->count > 0 ? (double)s->same_top / n : 0;
    r->top1_unc = s->count > 1 ? sqrt(r->top1 * (1 - r->top1) / (n - 1)) : 0;
    r->rms_dp = s->count > 0 ? sqrt(s->p_diff2 / n) : 0;
}

typedef struct ppl_opts {
    const char *model_path, *text_path;
    long n_ctx, n_batch, n_chunks, n_threads;
    int kl, json;
    pam_kv_flags kvf;
} ppl_opts;

/* Runs one chunk through ctx (and base, the exact path, when not NULL) in
 * passes of n_batch tokens, scoring the second half into s. */
static pam_status eval_chunk(pam_ctx *ctx, pam_ctx *base, pam_kvm *kvm, const int32_t *toks, int32_t n_ctx,
                             int32_t n_batch, int32_t n_vocab, float *lg, float *lg_base, ppl_sums *s) {
    int32_t first = n_ctx / 2;
    for (int32_t p = 0; p < n_ctx; p += n_batch) {
        int32_t nb = n_ctx - p < n_batch ? n_ctx - p : n_batch;
        PAM_TRY(pam_forward(ctx, toks + p, nb, p, lg, 1));
        if (kvm) PAM_TRY(pam_kvm_step_end(kvm));
        if (base) PAM_TRY(pam_forward(base, toks + p, nb, p, lg_base, 1));
        for (int32_t i = 0; i < nb; i++) {
            int32_t at = p + i;
            if (at < first || at + 1 >= n_ctx) continue;
            score_row(s, lg + (size_t)i * n_vocab, base ? lg_base + (size_t)i * n_vocab : NULL, n_vocab, toks[at + 1]);
        }
    }
    return PAM_OK;
}

static int parse(int argc, char **argv, ppl_opts *o) {
    memset(o, 0, sizeof *o);
    o->n_chunks = -1;
    pam_kv_flags_init(&o->kvf);
    pam_args a;
    pam_args_init(&a, argc, argv, "pam perplexity");
    while (pam_args_next(&a)) {
        if (pam_args_is(&a, "-h", "--help")) {
            ppl_usage(stdout);
            return 0;
        } else if (pam_args_is(&a, "-m", "--model")) {
            o->model_path = pam_args_value(&a);
        } else if (pam_args_is(&a, "-f", "--file")) {
            o->text_path = pam_args_value(&a);
        } else if (pam_args_is(&a, "-c", "--ctx-size")) {
            pam_args_long(&a, 4, 1L << 24, &o->n_ctx);
        } else if (pam_args_is(&a, "-b", "--batch-size")) {
            pam_args_long(&a, 1, 1L << 24, &o->n_batch);
        } else if (pam_args_is(&a, NULL, "--chunks")) {
            pam_args_long(&a, 1, 1L << 30, &o->n_chunks);
        } else if (pam_args_is(&a, "-t", "--threads")) {
            pam_args_long(&a, 1, 1024, &o->n_threads);
        } else if (pam_args_is(&a, NULL, "--kl-divergence")) {
            o->kl = 1;
        } else if (pam_args_is(&a, NULL, "--json")) {
            o->json = 1;
        } else if (pam_kv_flags_parse(&o->kvf, &a)) {
            /* consumed */
        } else {
            pam_args_unknown(&a);
        }
    }
    if (a.n_positional > 0) {
        fprintf(stderr, "pam perplexity: unexpected argument '%s' (the text goes after -f)\n", a.positional[0]);
        a.failed = 1;
    }
    if (!a.failed && (!o->model_path || !o->text_path)) {
        fprintf(stderr, "pam perplexity: %s\n", !o->model_path ? "no model given: pass a GGUF file with -m MODEL.gguf"
                                                               : "no text given: pass a text file with -f TEXT");
        a.failed = 1;
    }
    if (a.failed) {
        fprintf(stderr, "run `pam perplexity --help` for the options\n");
        return 2;
    }
    return -1;
}

static void print_text(const ppl_opts *o, const ppl_result *r, long n_chunks, long count) {
    printf("Final estimate: PPL = %.4f +/- %.5f (%ld chunks of %ld tokens, %ld tokens scored)\n", r->ppl, r->ppl_unc,
           n_chunks, o->n_ctx, count);
    if (!o->kl) return;
    printf("\n====== against the exact path (f32 KV in one dram tier) ======\n");
    printf("Mean PPL(Q)                   : %10.6f ± %10.6f\n", r->ppl, r->ppl_unc);
    printf("Mean PPL(base)                : %10.6f ± %10.6f\n", r->ppl_base, r->ppl_base_unc);
    printf("Mean PPL(Q)/PPL(base)         : %10.6f ± %10.6f\n", r->ratio, r->ratio_unc);
    printf("Mean    KLD: %10.6f ± %10.6f\n", r->kl, r->kl_unc);
    printf("Maximum KLD: %10.6f\n", r->kl_max);
    printf("RMS Δp    : %6.3f %%\n", 100.0 * r->rms_dp);
    printf("Same top p: %6.3f ± %5.3f %%\n", 100.0 * r->top1, 100.0 * r->top1_unc);
}

static void print_json(const ppl_opts *o, const ppl_result *r, long n_chunks, long count, size_t n_text) {
    printf("{\"ppl\": %.6f, \"ppl_stderr\": %.6f, \"n_tokens\": %ld, \"n_chunks\": %ld, \"ctx\": %ld, "
           "\"text_tokens\": %zu, \"kv\": \"%s\"",
           r->ppl, r->ppl_unc, count, n_chunks, o->n_ctx, n_text, o->kvf.given ? "paged" : "default");
    if (o->kl)
        printf(", \"ppl_base\": %.6f, \"ppl_base_stderr\": %.6f, \"ppl_ratio\": %.6f, \"ppl_ratio_stderr\": %.6f, "
               "\"kl_mean\": %.8f, \"kl_stderr\": %.8f, \"kl_max\": %.8f, \"top1_agreement\": %.6f, "
               "\"top1_stderr\": %.6f, \"rms_dp\": %.6f",
               r->ppl_base, r->ppl_base_unc, r->ratio, r->ratio_unc, r->kl, r->kl_unc, r->kl_max, r->top1, r->top1_unc,
               r->rms_dp);
    printf("}\n");
}

int pam_cli_perplexity(int argc, char **argv) {
    ppl_opts o;
    int prc = parse(argc, argv, &o);
    if (prc >= 0) return prc;

    int rc = 1;
    pam_model *model = NULL;
    pam_pool *pool = NULL;
    pam_kvm *kvm = NULL;
    FILE *trace = NULL;
    int32_t *ids = NULL, *chunk = NULL;
    float *lg = NULL, *lg_base = NULL;
    size_t n_ids = 0;
    ppl_sums sums = {0};

    if (pam_model_load(o.model_path, &model) != PAM_OK) {
        fprintf(stderr, "pam perplexity: cannot load '%s': %s\n", o.model_path, pam_last_error());
        goto done;
    }
    const pam_model_hparams *hp = pam_model_get_hparams(model);
    const pam_tokenizer *tk = pam_model_tokenizer(model);
    if (o.n_ctx == 0) o.n_ctx = hp->n_ctx_train < 512 ? hp->n_ctx_train : 512; /* llama.cpp's default */
    if (o.n_batch == 0 || o.n_batch > o.n_ctx) o.n_batch = o.n_ctx;
    if (o.n_ctx > hp->n_ctx_train) {
        fprintf(stderr, "pam perplexity: -c %ld exceeds the model's context of %d tokens\n", o.n_ctx, hp->n_ctx_train);
        rc = 2;
        goto done;
    }
    int add_bos = pam_tokenizer_add_bos(tk) && pam_tokenizer_bos(tk) >= 0;
    if (pam_cli_text_tokens(o.text_path, tk, add_bos, &ids, &n_ids) != PAM_OK) {
        fprintf(stderr, "pam perplexity: %s\n", pam_last_error());
        goto done;
    }
    if ((long)n_ids < 2 * o.n_ctx) {
        fprintf(stderr, "pam perplexity: the text has %zu tokens; a context of %ld needs at least %ld (2*CTX)\n", n_ids,
                o.n_ctx, 2 * o.n_ctx);
        rc = 2;
        goto done;
    }
    long n_chunks = (long)n_ids / o.n_ctx;
    if (o.n_chunks > 0 && o.n_chunks < n_chunks) n_chunks = o.n_chunks;

    if (pam_pool_create((int)o.n_threads, &pool) != PAM_OK) {
        fprintf(stderr, "pam perplexity: %s\n", pam_last_error());
        goto done;
    }
    if (o.kvf.given) {
        uint64_t blocks = (uint64_t)((o.n_ctx + o.kvf.block_tokens - 1) / o.kvf.block_tokens);
        if (pam_kv_flags_build(&o.kvf, hp, blocks, pool, &trace, &kvm) != PAM_OK) {
            fprintf(stderr, "pam perplexity: KV cache: %s\n", pam_last_error());
            goto done;
        }
    }
    size_t row = (size_t)hp->n_vocab * (size_t)o.n_batch;
    chunk = malloc((size_t)o.n_ctx * sizeof *chunk);
    lg = malloc(row * sizeof *lg);
    if (o.kl) lg_base = malloc(row * sizeof *lg_base);
    if (!chunk || !lg || (o.kl && !lg_base)) {
        fprintf(stderr, "pam perplexity: out of memory\n");
        goto done;
    }
    if (!o.json)
        fprintf(stderr, "perplexity: %zu tokens, %ld chunks of %ld, batch %ld, %d threads, KV %s%s\n", n_ids, n_chunks,
                o.n_ctx, o.n_batch, pam_pool_n_threads(pool), o.kvf.given ? "paged" : "default",
                o.kl ? ", against the exact path" : "");
    int64_t t0 = pam_time_ns();
    for (long c = 0; c < n_chunks; c++) {
        memcpy(chunk, ids + (size_t)c * (size_t)o.n_ctx, (size_t)o.n_ctx * sizeof *chunk);
        if (add_bos) chunk[0] = pam_tokenizer_bos(tk);
        pam_ctx *ctx = NULL, *base = NULL;
        pam_ctx_params cp;
        pam_ctx_params_default(&cp);
        cp.n_ctx = (int32_t)o.n_ctx;
        cp.kvm = kvm;
        pam_status st = pam_ctx_create_ex(model, &cp, pool, &ctx);
        if (st == PAM_OK && o.kl) st = pam_ctx_create(model, (int32_t)o.n_ctx, pool, &base);
        if (st == PAM_OK)
            st = eval_chunk(ctx, base, kvm, chunk, (int32_t)o.n_ctx, (int32_t)o.n_batch, hp->n_vocab, lg, lg_base,
                            &sums);
        pam_ctx_free(base);
        pam_ctx_free(ctx);
        if (st != PAM_OK) {
            fprintf(stderr, "%spam perplexity: chunk %ld: %s\n", o.json ? "" : "\n", c + 1, pam_last_error());
            goto done;
        }
        if (!o.json) {
            fprintf(stderr, "[%ld]%.4f,", c + 1, exp(sums.nll / (double)sums.count));
            fflush(stderr);
        }
    }
    double secs = (double)(pam_time_ns() - t0) / 1e9;
    ppl_result r;
    finish(&sums, o.kl, &r);
    if (o.json) {
        print_json(&o, &r, n_chunks, sums.count, n_ids);
    } else {
        fprintf(stderr, "\n%.2f s, %.0f tokens/s%s\n", secs, (double)(n_chunks * o.n_ctx) / (secs > 0 ? secs : 1),
                o.kl ? " (both paths)" : "");
        print_text(&o, &r, n_chunks, sums.count);
    }
    rc = 0;
done:
    free(lg_base);
    free(lg);
    free(chunk);
    free(ids);
    pam_kvm_destroy(kvm);
    if (trace) fclose(trace);
    pam_pool_destroy(pool);
    pam_model_free(model);
    return rc;
}
