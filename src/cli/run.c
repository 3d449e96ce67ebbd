/* pam run: load a model, encode a prompt, stream a generation. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/args.h"
#include "cli/kv_flags.h"
#include "core/status.h"
#include "core/timing.h"
#include "engine/sampler.h"
#include "kv/kv_remote.h"
#include "kv/kvm.h"
#include "kv/tier.h"
#include "model/model.h"

static void run_usage(FILE *f) {
    fprintf(f,
            "usage: pam run -m MODEL [-p PROMPT | -f FILE] [options]\n"
            "\n"
            "  -m, --model FILE        GGUF model\n"
            "  -p, --prompt TEXT       prompt (default: empty, generation starts from BOS)\n"
            "  -f, --file FILE         read the prompt from a file\n"
            "  -n, --n-predict N       tokens to generate (default 128, -1 = until end of text or context)\n"
            "  -c, --ctx-size N        context length (default: prompt + N, at most the model's)\n"
            "  -t, --threads N         threads (default: number of CPUs)\n"
            "      --temp T            temperature, 0 = greedy (default 0.8)\n"
            "      --top-k N           top-k (default 40, 0 = off)\n"
            "      --top-p P           top-p (default 0.95, 1 = off)\n"
            "      --min-p P           min-p (default 0.05, 0 = off)\n"
            "      --repeat-penalty R  repetition penalty (default 1.0 = off)\n"
            "      --repeat-last-n N   tokens the penalty looks back (default 64)\n"
            "  -s, --seed N            sampling seed (default: random, printed)\n"
            "%s"
            "                          (without --kv-tier: one dram tier holding the whole context)\n"
            "      --no-bos            do not prepend BOS\n"
            "      --ignore-eos        keep generating past end-of-text tokens\n",
            pam_kv_flags_usage);
}

static char *read_prompt_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "pam run: cannot open prompt file '%s': %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                buf = NULL;
            }
            buf = nb;
        }
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    return buf;
}

/* --kv-persist: the prompt's full blocks (all but the last token's, which
 * must be computed for its logits) come from the journal while it has them. */
typedef struct persist_sink_ctx {
    pam_kvm *kvm;
    int32_t seq, bt;
    size_t row;
} persist_sink_ctx;

static pam_status persist_sink(void *arg, int32_t block, int32_t layer, const float *k, const float *v) {
    persist_sink_ctx *c = arg;
    for (int32_t t = 0; t < c->bt; t++)
        PAM_TRY(pam_kvm_store(c->kvm, c->seq, layer, block * c->bt + t, k + (size_t)t * c->row, v + (size_t)t * c->row));
    return PAM_OK;
}

/* The number of prompt tokens taken from the journal (whole blocks); seq
 * then holds exactly those. */
static int32_t persist_fetch(pam_kv_remote *j, pam_kvm *kvm, int32_t seq, const int32_t *ids, int32_t n_ids) {
    const pam_kv_shape *sh = pam_kvm_shape(kvm);
    int32_t bt = sh->block_tokens, want = (n_ids - 1) / bt;
    if (want <= 0) return 0;
    uint8_t(*keys)[32] = malloc((size_t)want * sizeof *keys);
    if (!keys) return 0;
    pam_kv_remote_chain(j, NULL, ids, want, keys);
    int32_t got = 0;
    if (pam_kvm_reserve(kvm, seq, want * bt) == PAM_OK) {
        persist_sink_ctx c = {kvm, seq, bt, (size_t)sh->n_head_kv * (size_t)sh->head_dim};
        got = pam_kv_remote_fetch(j, (const uint8_t(*)[32])keys, 0, want, persist_sink, &c);
    }
    free(keys);
    /* a block stored in some layers only (a failed store) is dropped; the
     * reservation goes back (the forward pass reserves what it needs) */
    if (pam_kvm_seq_truncate(kvm, seq, got * bt) != PAM_OK) return -1;
    return got * bt;
}

/* Appends the full blocks of toks (n tokens, all in seq) past the first
 * skip tokens to the journal, and marks the reused ones used. */
static void persist_publish(pam_kv_remote *j, pam_kvm *kvm, int32_t seq, const int32_t *toks, int32_t n, int32_t skip) {
    const pam_kv_shape *sh = pam_kvm_shape(kvm);
    int32_t bt = sh->block_tokens;
    size_t blk = (size_t)bt * (size_t)sh->n_head_kv * (size_t)sh->head_dim;
    float *k = malloc(blk * sizeof *k), *v = malloc(blk * sizeof *v);
    uint8_t prev[32], key[32];
    for (int32_t b = 0; k && v && b < n / bt; b++) {
        pam_kv_remote_chain(j, b ? prev : NULL, toks + (size_t)b * (size_t)bt, 1, &key);
        if (b < skip / bt) {
            pam_kv_remote_touch(j, key);
        } else {
            for (int32_t l = 0; l < sh->n_layer; l++) {
                if (pam_kvm_read_block(kvm, seq, l, b, k, v) != PAM_OK) break;
                pam_kv_remote_put(j, key, b ? prev : NULL, l, k, v);
            }
        }
        memcpy(prev, key, 32);
    }
    free(k);
    free(v);
    pam_kv_remote_flush(j);
}

int pam_cli_run(int argc, char **argv) {
    const char *model_path = NULL, *prompt = "", *prompt_file = NULL;
    long n_predict = 128, n_ctx = 0, n_threads = 0;
    int no_bos = 0, ignore_eos = 0, seed_given = 0;
    pam_kv_flags kvf;
    pam_kv_flags_init(&kvf);
    pam_sampler_params sp;
    pam_sampler_params_default(&sp);

    pam_args a;
    pam_args_init(&a, argc, argv, "pam run");
    while (pam_args_next(&a)) {
        double d;
        long v;
        if (pam_args_is(&a, "-h", "--help")) {
            run_usage(stdout);
            return 0;
        } else if (pam_args_is(&a, "-m", "--model")) {
            model_path = pam_args_value(&a);
        } else if (pam_args_is(&a, "-p", "--prompt")) {
            prompt = pam_args_value(&a);
        } else if (pam_args_is(&a, "-f", "--file")) {
            prompt_file = pam_args_value(&a);
        } else if (pam_args_is(&a, "-n", "--n-predict")) {
            pam_args_long(&a, -1, 1L << 30, &n_predict);
        } else if (pam_args_is(&a, "-c", "--ctx-size")) {
            pam_args_long(&a, 0, 1L << 24, &n_ctx);
        } else if (pam_args_is(&a, "-t", "--threads")) {
            pam_args_long(&a, 1, 1024, &n_threads);
        } else if (pam_args_is(&a, NULL, "--temp")) {
            if (pam_args_double(&a, 0, 100, &d)) sp.temp = (float)d;
        } else if (pam_args_is(&a, NULL, "--top-k")) {
            if (pam_args_long(&a, 0, 1L << 30, &v)) sp.top_k = (int32_t)v;
        } else if (pam_args_is(&a, NULL, "--top-p")) {
            if (pam_args_double(&a, 0, 1, &d)) sp.top_p = (float)d;
        } else if (pam_args_is(&a, NULL, "--min-p")) {
            if (pam_args_double(&a, 0, 1, &d)) sp.min_p = (float)d;
        } else if (pam_args_is(&a, NULL, "--repeat-penalty")) {
            if (pam_args_double(&a, 0, 100, &d)) sp.repeat_penalty = (float)d;
        } else if (pam_args_is(&a, NULL, "--repeat-last-n")) {
            if (pam_args_long(&a, 0, 1L << 20, &v)) sp.repeat_last_n = (int32_t)v;
        } else if (pam_args_is(&a, "-s", "--seed")) {
            if (pam_args_long(&a, 0, (1L << 62), &v)) {
                sp.seed = (uint64_t)v;
                seed_given = 1;
            }
        } else if (pam_kv_flags_parse(&kvf, &a)) {
            /* consumed */
        } else if (pam_args_is(&a, NULL, "--no-bos")) {
            no_bos = 1;
        } else if (pam_args_is(&a, NULL, "--ignore-eos")) {
            ignore_eos = 1;
        } else {
            pam_args_unknown(&a);
        }
    }
    if (a.n_positional > 0) {
        fprintf(stderr, "pam run: unexpected argument '%s' (the prompt goes after -p)\n", a.positional[0]);
        a.failed = 1;
    }
    /* persisted blocks are exact KV of the whole prefix: approximate
     * attention must not produce them, and an evicted block leaves a gap */
    if (!a.failed && kvf.persist_dir && (kvf.sparse.tokens > 0 || (kvf.sparse.frac > 0.0f && kvf.sparse.frac < 1.0f))) {
        fprintf(stderr, "pam run: a --kv-sparse budget below 100%% cannot go with --kv-persist\n");
        a.failed = 1;
    }
    if (!a.failed && kvf.persist_dir && kvf.evict) {
        fprintf(stderr, "pam run: --kv-evict cannot go with --kv-persist (an evicted block leaves a prefix incomplete)\n");
        a.failed = 1;
    }
    if (a.failed) {
        fprintf(stderr, "run `pam run --help` for the options\n");
        return 2;
    }
    if (!model_path) {
        fprintf(stderr, "pam run: no model given: pass a GGUF file with -m MODEL.gguf\n"
                        "(convert a llama2.c checkpoint with `pam convert CHECKPOINT.bin TOKENIZER.bin -o MODEL.gguf`)\n");
        return 2;
    }
    if (!seed_given) sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    if (pam_sampler_params_check(&sp) != PAM_OK) {
        fprintf(stderr, "pam run: %s\n", pam_last_error());
        return 2;
    }

    char *file_prompt = NULL;
    if (prompt_file) {
        file_prompt = read_prompt_file(prompt_file);
        if (!file_prompt) return 1;
        prompt = file_prompt;
    }

    int rc = 1;
    pam_model *model = NULL;
    pam_pool *pool = NULL;
    pam_ctx *ctx = NULL;
    pam_kvm *kvm = NULL;
    FILE *trace = NULL;
    pam_sampler *sampler = NULL;
    int32_t *ids = NULL, *toks = NULL;
    float *logits = NULL;
    pam_kv_remote *persist = NULL;
    int32_t reused = 0;

    int64_t t_load = pam_time_ns();
    if (pam_model_load(model_path, &model) != PAM_OK) {
        fprintf(stderr, "pam run: cannot load '%s': %s\n", model_path, pam_last_error());
        goto done;
    }
    t_load = pam_time_ns() - t_load;
    const pam_model_hparams *hp = pam_model_get_hparams(model);
    const pam_tokenizer *tk = pam_model_tokenizer(model);

    size_t len = strlen(prompt), n_ids = 0;
    size_t cap = len + 8;
    ids = malloc(cap * sizeof *ids);
    if (!ids) goto oom;
    int add_bos = !no_bos && pam_tokenizer_add_bos(tk);
    if (pam_tokenizer_encode(tk, prompt, len, add_bos, 0, ids, cap, &n_ids) != PAM_OK) {
        fprintf(stderr, "pam run: cannot tokenize the prompt: %s\n", pam_last_error());
        goto done;
    }
    if (n_ids == 0) {
        fprintf(stderr, "pam run: the prompt is empty and the model has no BOS token to start from\n");
        goto done;
    }
    int64_t want = n_ctx > 0 ? n_ctx : (n_predict < 0 ? hp->n_ctx_train : (int64_t)n_ids + n_predict);
    if (want > hp->n_ctx_train) {
        if (n_ctx > 0)
            fprintf(stderr, "pam run: warning: context %ld exceeds the model's training context %d\n", n_ctx, hp->n_ctx_train);
        else
            want = hp->n_ctx_train;
    }
    if ((int64_t)n_ids >= want) {
        fprintf(stderr, "pam run: the prompt has %zu tokens but the context holds %lld; shorten the prompt or raise -c\n",
                n_ids, (long long)want);
        goto done;
    }
    if (pam_pool_create((int)n_threads, &pool) != PAM_OK) {
        fprintf(stderr, "pam run: %s\n", pam_last_error());
        goto done;
    }
    if (kvf.remote_url) {
        fprintf(stderr, "pam run: --kv-tier remote:... is for pam serve (use --kv-persist DIR to keep a prompt's KV across runs)\n");
        goto done;
    }
    /* default: one dram tier holding the whole context (within available memory) */
    uint64_t blocks = (uint64_t)((want + kvf.block_tokens - 1) / kvf.block_tokens);
    if (pam_kv_flags_build(&kvf, hp, blocks, pool, &trace, &kvm) != PAM_OK) {
        fprintf(stderr, "pam run: KV cache: %s\n", pam_last_error());
        goto done;
    }
    pam_ctx_params cp;
    pam_ctx_params_default(&cp);
    cp.n_ctx = (int32_t)want;
    cp.kvm = kvm;
    if (pam_ctx_create_ex(model, &cp, pool, &ctx) != PAM_OK || pam_sampler_create(&sp, hp->n_vocab, &sampler) != PAM_OK) {
        fprintf(stderr, "pam run: %s\n", pam_last_error());
        goto done;
    }
    logits = malloc((size_t)hp->n_vocab * sizeof(float));
    if (!logits) goto oom;
    if (kvf.persist_dir) {
        if (pam_kv_flags_open_persist(&kvf, model, kvm, &persist) != PAM_OK) {
            fprintf(stderr, "pam run: persisted KV: %s\n", pam_last_error());
            goto done;
        }
        /* the tokens whose KV the context holds, for the blocks appended at the end */
        toks = malloc((size_t)want * sizeof *toks);
        if (!toks) goto oom;
        memcpy(toks, ids, n_ids * sizeof *toks);
        reused = persist_fetch(persist, kvm, pam_ctx_kv_seq(ctx), ids, (int32_t)n_ids);
        if (reused < 0) {
            fprintf(stderr, "pam run: persisted KV: %s\n", pam_last_error());
            goto done;
        }
    }

    fprintf(stderr, "model: %s (%s, %d layers, %d heads / %d KV heads, vocab %d), loaded in %.0f ms\n", model_path, hp->arch,
            hp->n_layer, hp->n_head, hp->n_head_kv, hp->n_vocab, (double)t_load / 1e6);
    fprintf(stderr, "threads: %d, context: %lld, seed: %llu, temp %.2f top-k %d top-p %.2f min-p %.2f\n\n",
            pam_pool_n_threads(pool), (long long)want, (unsigned long long)sp.seed, sp.temp, sp.top_k, sp.top_p,
            sp.min_p);

    pam_detok dt;
    pam_detok_init(&dt, tk);
    char out[4096];
    for (size_t i = 0; i < n_ids; i++) {
        pam_sampler_accept_prompt(sampler, ids[i]);
        size_t w = pam_detok_push(&dt, ids[i], out, sizeof out);
        fwrite(out, 1, w, stdout);
    }
    fflush(stdout);

    int64_t t0 = pam_time_ns();
    if (pam_forward(ctx, ids + reused, (int32_t)n_ids - reused, reused, logits, 0) != PAM_OK) {
        fprintf(stderr, "\npam run: %s\n", pam_last_error());
        goto done;
    }
    int64_t t_prompt = pam_time_ns() - t0;
    pam_kvm_step_end(kvm);

    /* Decode speed counts forward passes only, as llama.cpp's eval time does. */
    int32_t pos = (int32_t)n_ids;
    long n_gen = 0, n_fwd = 0;
    int64_t t_decode = 0;
    while (n_predict < 0 || n_gen < n_predict) {
        int32_t tok = pam_sampler_sample(sampler, logits);
        n_gen++;
        if (!ignore_eos && pam_tokenizer_is_eog(tk, tok)) break;
        pam_sampler_accept(sampler, tok);
        size_t w = pam_detok_push(&dt, tok, out, sizeof out);
        fwrite(out, 1, w, stdout);
        fflush(stdout);
        if (pos >= pam_ctx_n_ctx(ctx) || (n_predict >= 0 && n_gen >= n_predict)) break;
        t0 = pam_time_ns();
        if (pam_forward(ctx, &tok, 1, pos, logits, 0) != PAM_OK) {
            fprintf(stderr, "\npam run: %s\n", pam_last_error());
            goto done;
        }
        pam_kvm_step_end(kvm);
        t_decode += pam_time_ns() - t0;
        if (toks) toks[pos] = tok;
        n_fwd++;
        pos++;
    }
    size_t w = pam_detok_flush(&dt, out, sizeof out);
    fwrite(out, 1, w, stdout);
    printf("\n");
    fflush(stdout);
    fprintf(stderr, "\nprompt: %zu tokens in %.1f ms, %.1f tok/s | decode: %ld tokens in %.1f ms, %.1f tok/s\n",
            n_ids - (size_t)reused, (double)t_prompt / 1e6, (double)(n_ids - (size_t)reused) * 1e9 / (double)(t_prompt > 0 ? t_prompt : 1), n_fwd,
            (double)t_decode / 1e6, (double)n_fwd * 1e9 / (double)(t_decode > 0 ? t_decode : 1));
    if (persist) {
        persist_publish(persist, kvm, pam_ctx_kv_seq(ctx), toks, pos, reused);
        pam_kv_remote_stats js;
        pam_kv_remote_stats_get(persist, &js);
        fprintf(stderr, "kv persist: %d of %zu prompt tokens from the journal in %s, %llu blocks appended\n", reused, n_ids,
                kvf.persist_dir, (unsigned long long)(js.put_values / (uint64_t)hp->n_layer));
    }
    if (kvf.given) {
        pam_kvm_report r;
        pam_kvm_report_get(kvm, &r);
        fprintf(stderr, "kv: %llu blocks of %ld tokens, policy %s, %llu failed migrations |", (unsigned long long)r.n_blocks,
                kvf.block_tokens, pam_kv_policy_name(kvf.policy),
                (unsigned long long)r.migration_failures);
        for (int i = 0; i < r.n_tiers; i++)
            fprintf(stderr, " %s %llu/%llu", r.tiers[i].name, (unsigned long long)r.tiers[i].blocks_used,
                    (unsigned long long)r.tiers[i].blocks_capacity);
        fprintf(stderr, "\n");
    }
    rc = 0;
    goto done;
oom:
    fprintf(stderr, "pam run: out of memory\n");
done:
    pam_kv_remote_close(persist); /* compacts the journal (a clean end) */
    free(toks);
    free(logits);
    free(ids);
    pam_sampler_free(sampler);
    pam_ctx_free(ctx);
    pam_kvm_destroy(kvm);
    if (trace) fclose(trace);
    pam_pool_destroy(pool);
    pam_model_free(model);
    free(file_prompt);
    return rc;
}
