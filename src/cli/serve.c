/* pam serve: the engine behind an OpenAI-compatible HTTP server. SIGTERM or
 * SIGINT drains (new requests get 503, running ones finish) and exits 0. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/kv_flags.h"
#include "core/status.h"
#include "engine/engine.h"
#include "model/model.h"
#include "server/chat.h"
#include "server/server.h"

static void serve_usage(FILE *f) {
    fprintf(f,
            "usage: pam serve -m MODEL [--host ADDR] [--port N] [--parallel N] [options]\n"
            "\n"
            "  -m, --model FILE        GGUF model\n"
            "      --host ADDR         address to listen on (default 127.0.0.1)\n"
            "      --port N            port (default 8080; 0 = any free port, printed)\n"
            "  -np, --parallel N       sequences decoded together (default 4)\n"
            "  -c, --ctx-size N        longest sequence, prompt + output (default: the model's, at most 4096)\n"
            "  -t, --threads N         compute threads (default: number of CPUs)\n"
            "      --alias NAME        model id in the API (default: the model's file name)\n"
            "%s"
            "                          (default: one dram tier of --parallel x --ctx-size tokens)\n"
            "      --queue N           requests waiting for a slot before 503 (default 256)\n"
            "      --prefill-chunk N   prompt tokens per batched step (default 256)\n"
            "      --no-warmup         skip the startup pass that touches every weight\n"
            "      --prefill-burst N   per-step prompt budget while requests wait for their first\n"
            "                          token, oldest first (default 2048; <= chunk: off)\n"
            "      --no-prefix-cache   do not reuse cached prompt prefixes\n"
            "      --chat-template F   a built-in format: llama3, chatml, llama2, mistral, zephyr\n"
            "                          or fallback (default: the model's tokenizer.chat_template)\n"
            "      --chat-template-file FILE  a Jinja chat template to use instead of the model's\n"
            "      --max-body BYTES    largest request body (default 1048576)\n"
            "      --timeout S         close a connection idle for S seconds (default 600)\n"
            "      --max-connections N open connections at once (default 8192)\n"
            "      --conn-per-client N open connections from one IP address (default: no limit)\n"
            "\n"
            "Endpoints: POST /v1/completions, POST /v1/chat/completions, POST /apply-template,\n"
            "GET /v1/models, GET /health, GET /metrics. See docs/SERVING.md.\n",
            pam_kv_flags_usage);
}

/* The whole file as a NUL-terminated string, or NULL with a message. */
static char *read_template_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "pam serve: cannot open --chat-template-file '%s'\n", path);
        return NULL;
    }
    size_t cap = 1 << 16, n = 0, got;
    char *buf = malloc(cap);
    while (buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 == cap) {
            if (cap >= (size_t)16 << 20) {
                fprintf(stderr, "pam serve: --chat-template-file '%s' is larger than 16 MiB\n", path);
                free(buf);
                buf = NULL;
                break;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) free(buf);
            buf = nb;
            cap *= 2;
        }
    }
    if (buf && ferror(f)) {
        fprintf(stderr, "pam serve: cannot read --chat-template-file '%s'\n", path);
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    return buf;
}

/* One prompt pass and one decode step on a throwaway context before the port
 * opens: the weights are memory-mapped, so without it the first step pays
 * for faulting every page in, and the first burst of clients sees that as
 * time to first token. */
static pam_status serve_warmup(const pam_model *m, pam_pool *pool) {
    enum { N = 8 };
    pam_ctx *c = NULL;
    pam_status st = pam_ctx_create(m, 2 * N, pool, &c);
    if (st != PAM_OK) return st;
    float *logits = malloc((size_t)pam_model_get_hparams(m)->n_vocab * sizeof *logits);
    int32_t tok[N] = {0};
    if (!logits) st = PAM_ERR(PAM_ERR_NOMEM, "warmup logits");
    if (st == PAM_OK) st = pam_forward(c, tok, N, 0, logits, 0);
    if (st == PAM_OK) st = pam_forward(c, tok, 1, N, logits, 0);
    free(logits);
    pam_ctx_free(c);
    return st;
}

int pam_cli_serve(int argc, char **argv) {
    const char *model_path = NULL, *alias = NULL, *host = "127.0.0.1", *chat_template_file = NULL;
    char *chat_template = NULL;
    long timeout_s = 600, max_conn = 8192, conn_per_client = 0;
    long port = 8080, n_par = 4, n_ctx = 0, n_threads = 0, n_queue = 256, chunk = 256, max_body = 1 << 20;
    long burst = 2048, warmup = 1;
    int prefix_cache = 1, chat_family = -1;
    pam_kv_flags kvf;
    pam_kv_flags_init(&kvf);
    pam_args a;
    pam_args_init(&a, argc, argv, "pam serve");
    while (pam_args_next(&a)) {
        if (pam_args_is(&a, "-h", "--help")) {
            serve_usage(stdout);
            return 0;
        } else if (pam_args_is(&a, "-m", "--model")) {
            model_path = pam_args_value(&a);
        } else if (pam_args_is(&a, NULL, "--host")) {
            host = pam_args_value(&a);
        } else if (pam_args_is(&a, NULL, "--port")) {
            pam_args_long(&a, 0, 65535, &port);
        } else if (pam_args_is(&a, "-np", "--parallel")) {
            pam_args_long(&a, 1, 1024, &n_par);
        } else if (pam_args_is(&a, "-c", "--ctx-size")) {
            pam_args_long(&a, 0, 1L << 24, &n_ctx);
        } else if (pam_args_is(&a, "-t", "--threads")) {
            pam_args_long(&a, 1, 1024, &n_threads);
        } else if (pam_args_is(&a, NULL, "--alias")) {
            alias = pam_args_value(&a);
        } else if (pam_args_is(&a, NULL, "--queue")) {
            pam_args_long(&a, 0, 1L << 20, &n_queue);
        } else if (pam_args_is(&a, NULL, "--prefill-chunk")) {
            pam_args_long(&a, 1, 1L << 16, &chunk);
        } else if (pam_args_is(&a, NULL, "--no-warmup")) {
            warmup = 0;
        } else if (pam_args_is(&a, NULL, "--prefill-burst")) {
            pam_args_long(&a, 0, 1L << 16, &burst);
        } else if (pam_args_is(&a, NULL, "--max-body")) {
            pam_args_long(&a, 64, 1L << 30, &max_body);
        } else if (pam_args_is(&a, NULL, "--timeout")) {
            pam_args_long(&a, 1, 1L << 20, &timeout_s);
        } else if (pam_args_is(&a, NULL, "--max-connections")) {
            pam_args_long(&a, 1, 1L << 20, &max_conn);
        } else if (pam_args_is(&a, NULL, "--conn-per-client")) {
            pam_args_long(&a, 0, 1L << 20, &conn_per_client);
        } else if (pam_args_is(&a, NULL, "--no-prefix-cache")) {
            prefix_cache = 0;
        } else if (pam_args_is(&a, NULL, "--chat-template")) {
            const char *t = pam_args_value(&a);
            if (t && (chat_family = pam_chat_family_from_name(t)) < 0) {
                fprintf(stderr, "pam serve: unknown --chat-template '%s'\n", t);
                a.failed = 1;
            }
        } else if (pam_args_is(&a, NULL, "--chat-template-file")) {
            chat_template_file = pam_args_value(&a);
        } else if (pam_kv_flags_parse(&kvf, &a)) {
            /* consumed */
        } else {
            pam_args_unknown(&a);
        }
    }
    if (a.n_positional > 0) {
        fprintf(stderr, "pam serve: unexpected argument '%s'\n", a.positional[0]);
        a.failed = 1;
    }
    /* Shared and persistent prefix blocks are keyed without the sparse budget:
     * approximate KV must not reach them (requests with their own budget
     * never enter the prefix cache; a sparse default would). */
    int sparse_default = kvf.sparse.tokens > 0 || (kvf.sparse.frac > 0.0f && kvf.sparse.frac < 1.0f);
    if (!a.failed && (kvf.remote_url || kvf.persist_dir) && sparse_default) {
        fprintf(stderr, "pam serve: a --kv-sparse default below 100%% cannot go with --kv-tier remote: or --kv-persist "
                        "(use --kv-sparse 100%% and per-request budgets)\n");
        a.failed = 1;
    }
    if (!a.failed && (kvf.remote_url || kvf.persist_dir) && kvf.evict) {
        fprintf(stderr, "pam serve: --kv-evict cannot go with --kv-tier remote: or --kv-persist (an evicted block "
                        "leaves a prefix incomplete)\n");
        a.failed = 1;
    }
    if (a.failed) {
        fprintf(stderr, "run `pam serve --help` for the options\n");
        return 2;
    }
    if (!model_path) {
        fprintf(stderr, "pam serve: no model given: pass a GGUF file with -m MODEL.gguf\n");
        return 2;
    }

    /* Signals go to this thread only (sigwait below): block them before any
     * thread starts so every thread inherits the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc = 1;
    pam_model *model = NULL;
    pam_pool *pool = NULL;
    pam_engine *engine = NULL;
    pam_server *server = NULL;
    pam_kvm *kvm = NULL;
    pam_kv_remote *remote = NULL, *persist = NULL;
    FILE *trace = NULL;
    if (pam_model_load(model_path, &model) != PAM_OK) {
        fprintf(stderr, "pam serve: cannot load '%s': %s\n", model_path, pam_last_error());
        goto done;
    }
    const pam_model_hparams *hp = pam_model_get_hparams(model);
    if (n_ctx == 0) n_ctx = hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
    pam_engine_params ep;
    pam_engine_params_default(&ep);
    ep.n_slots = (int32_t)n_par;
    ep.n_ctx = (int32_t)n_ctx;
    ep.n_queue = (int32_t)n_queue;
    ep.prefill_chunk = (int32_t)chunk;
    ep.prefill_burst = (int32_t)burst;
    ep.prefix_cache = prefix_cache;
    if (pam_pool_create((int)n_threads, &pool) != PAM_OK) {
        fprintf(stderr, "pam serve: %s\n", pam_last_error());
        goto done;
    }
    if (warmup && serve_warmup(model, pool) != PAM_OK) {
        fprintf(stderr, "pam serve: warmup: %s\n", pam_last_error());
        goto done;
    }
    /* default: one dram tier for every slot's whole context, plus one block
     * per slot for the copy-on-write of a partially reused prefix block */
    uint64_t per_slot = (uint64_t)((n_ctx + kvf.block_tokens - 1) / kvf.block_tokens) + 1;
    if (pam_kv_flags_build(&kvf, hp, (uint64_t)n_par * per_slot, pool, &trace, &kvm) != PAM_OK) {
        fprintf(stderr, "pam serve: KV cache: %s\n", pam_last_error());
        goto done;
    }
    ep.kvm = kvm;
    if (pam_kv_flags_open_remote(&kvf, model, kvm, &remote) != PAM_OK) {
        fprintf(stderr, "pam serve: remote KV: %s\n", pam_last_error());
        goto done;
    }
    ep.remote = remote;
    if (pam_kv_flags_open_persist(&kvf, model, kvm, &persist) != PAM_OK) {
        fprintf(stderr, "pam serve: persisted KV: %s\n", pam_last_error());
        goto done;
    }
    ep.persist = persist;
    if (pam_engine_create(model, pool, &ep, &engine) != PAM_OK) {
        fprintf(stderr, "pam serve: %s\n", pam_last_error());
        goto done;
    }
    const char *base = strrchr(model_path, '/');
    base = base ? base + 1 : model_path;
    pam_server_params sp;
    pam_server_params_default(&sp);
    sp.host = host;
    sp.port = (int)port;
    sp.alias = alias ? alias : base;
    sp.max_body_bytes = (size_t)max_body;
    sp.timeout_s = (int)timeout_s;
    sp.max_connections = (int)max_conn;
    sp.max_conn_per_client = (int)conn_per_client;
    sp.chat_family = chat_family;
    if (chat_template_file) {
        if (!(chat_template = read_template_file(chat_template_file))) goto done;
        sp.chat_template = chat_template;
    }
    if (pam_server_start(engine, model, &sp, &server) != PAM_OK) {
        fprintf(stderr, "pam serve: %s\n", pam_last_error());
        goto done;
    }
    fprintf(stderr, "pam serve: model '%s' (%s, %d layers, vocab %d), %ld slots, context %ld, %d threads, chat template %s\n",
            sp.alias, hp->arch, hp->n_layer, hp->n_vocab, n_par, n_ctx, pam_pool_n_threads(pool),
            pam_server_chat_template_desc(server));
    fprintf(stderr, "pam serve: KV cache: %d tier(s), blocks of %ld tokens, policy %s:", pam_kvm_n_tiers(kvm),
            kvf.block_tokens, pam_kv_policy_name(kvf.policy));
    for (int i = 0; i < pam_kvm_n_tiers(kvm); i++) {
        const pam_tier *t = pam_kvm_tier(kvm, i);
        fprintf(stderr, " %s %.1f MiB", t->name, (double)(t->capacity_blocks * t->block_bytes) / (1024.0 * 1024.0));
    }
    fprintf(stderr, "\n");
    if (remote) fprintf(stderr, "pam serve: remote KV tier on %s\n", kvf.remote_url);
    if (persist) fprintf(stderr, "pam serve: persistent KV journal in %s\n", kvf.persist_dir);
    fprintf(stderr, "pam serve: listening on http://%s%s%s:%d\n", strchr(host, ':') ? "[" : "", host,
            strchr(host, ':') ? "]" : "", pam_server_port(server));

    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "pam serve: %s: draining running requests\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    pam_server_drain(server);
    fprintf(stderr, "pam serve: drained, exiting\n");
    rc = 0;
done:
    pam_server_stop(server);
    pam_engine_destroy(engine);
    pam_kv_remote_close(remote);
    pam_kv_remote_close(persist);
    pam_kvm_destroy(kvm);
    if (trace) fclose(trace);
    pam_pool_destroy(pool);
    pam_model_free(model);
    free(chat_template);
    return rc;
}
