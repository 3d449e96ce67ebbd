/* Remote KV tier fetch rate against redis-benchmark's GET throughput for
 * values of one block's size, on the same cluster, side by side in one run.
 *
 *   bench_kv_remote --seed 127.0.0.1:7000 [--layers 24 --kv-heads 2 --head-dim 64
 *                    --block 16 --blocks 512 --rounds 5 --hmac 1]
 *
 * Writes --blocks blocks (every layer) through the tier, then fetches the
 * whole chain --rounds times the way admission does (pipelined MGETs of 16
 * or more blocks, verified: key echo, fingerprint, checksum, HMAC; decoded
 * to f32) and reports the sustained values/s over those fetches (one value =
 * one block of one layer) and MB/s. Alternately with it (three times each,
 * best of each kept) it runs redis-benchmark --cluster (SET to fill, then
 * GET) with -d of the same value size: 3 clients (one per master) with a
 * pipeline of 16 (about the tier's own pattern), and once 50 clients
 * without pipelining (redis-benchmark's default), and prints the ratios.
 * The HMAC key is a fixed test key (the cost is what is measured); --hmac 0
 * measures without the HMAC (checksum only). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/timing.h"
#include "kv/kv_remote.h"

static pam_status nop_sink(void *ctx, int32_t block, int32_t layer, const float *k, const float *v) {
    (void)block, (void)layer;
    *(volatile float *)ctx += k[0] + v[0];
    return PAM_OK;
}

static void cpu_model(char *out, size_t cap) {
    snprintf(out, cap, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10)) {
            const char *c = strchr(line, ':');
            if (c) snprintf(out, cap, "%s", c + 2);
            out[strcspn(out, "\n")] = 0;
            break;
        }
    fclose(f);
}

/* redis-benchmark's GET requests/s, or -1. */
static double redis_benchmark_get(const char *host, int port, uint64_t bytes, int clients, int pipeline, int n,
                                  int keyspace) {
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "redis-benchmark -h %s -p %d --cluster -t set,get -d %llu -n %d -r %d -c %d -P %d -q 2>/dev/null | tr '\\r' '\\n'",
             host, port, (unsigned long long)bytes, n, keyspace, clients, pipeline);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char line[512];
    double get = -1;
    while (fgets(line, sizeof line, p)) {
        const char *g = strstr(line, "GET: ");
        if (g && strstr(line, "requests per second")) get = atof(g + 5);
    }
    pclose(p);
    return get;
}

int main(int argc, char **argv) {
    const char *seed = "127.0.0.1:7000";
    pam_kv_shape shape = {.n_layer = 24, .n_head_kv = 2, .head_dim = 64, .block_tokens = 16};
    int n_blocks = 512, rounds = 5, hmac = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--seed")) seed = argv[i + 1];
        else if (!strcmp(argv[i], "--layers")) shape.n_layer = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--kv-heads")) shape.n_head_kv = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--head-dim")) shape.head_dim = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--block")) shape.block_tokens = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--blocks")) n_blocks = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rounds")) rounds = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--hmac")) hmac = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "bench_kv_remote: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (n_blocks < 1 || rounds < 1 || shape.n_layer < 1) {
        fprintf(stderr, "bench_kv_remote: bad sizes\n");
        return 2;
    }
    const char *keyfile = "bench_kv_remote.key";
    FILE *kf = fopen(keyfile, "w");
    if (!kf) return 1;
    fputs("bench-hmac-key-0123456789abcdef", kf);
    fclose(kf);
    char url[256];
    snprintf(url, sizeof url, "redis://%s", seed);
    pam_kv_remote_config cfg = {.url = url, .shape = shape, .hmac_key_file = hmac ? keyfile : NULL, .timeout_ms = 2000,
                                .queue_values = n_blocks * shape.n_layer + 1};
    memset(cfg.fingerprint, 0xb5, 32);
    pam_kv_remote *r = NULL;
    if (pam_kv_remote_open(&cfg, &r) != PAM_OK) {
        fprintf(stderr, "bench_kv_remote: %s\n", pam_last_error());
        return 1;
    }
    size_t row = (size_t)shape.n_head_kv * (size_t)shape.head_dim, nf = (size_t)shape.block_tokens * row;
    float *k = malloc(nf * sizeof *k), *v = malloc(nf * sizeof *v);
    int32_t *tok = malloc((size_t)n_blocks * (size_t)shape.block_tokens * sizeof *tok);
    uint8_t(*keys)[32] = malloc((size_t)n_blocks * sizeof *keys);
    if (!k || !v || !tok || !keys) return 1;
    for (size_t i = 0; i < nf; i++) k[i] = (float)(i % 97) * 0.01f, v[i] = (float)(i % 89) * -0.02f;
    for (int i = 0; i < n_blocks * shape.block_tokens; i++) tok[i] = (int32_t)((i * 2654435761u) % 32000u);
    pam_kv_remote_chain(r, NULL, tok, n_blocks, keys);
    int64_t t0 = pam_time_ns();
    for (int b = 0; b < n_blocks; b++)
        for (int l = 0; l < shape.n_layer; l++) pam_kv_remote_put(r, keys[b], b ? keys[b - 1] : NULL, l, k, v);
    pam_kv_remote_flush(r);
    double put_s = (double)(pam_time_ns() - t0) * 1e-9;
    uint64_t vb = pam_kv_remote_value_bytes(r);
    double values = (double)n_blocks * shape.n_layer;
    char host[128];
    snprintf(host, sizeof host, "%s", seed);
    char *colon = strrchr(host, ':');
    int port = colon ? atoi(colon + 1) : 7000;
    if (colon) *colon = 0;
    /* redis-benchmark: enough requests that its millisecond clock does not
     * quantise the rate (20000 requests take about 0.25 s), over at most
     * 20000 keys (they fit the cluster's maxmemory: no GET finds its key
     * evicted) */
    int n = (int)values * rounds < 100000 ? 100000 : (int)values * rounds;
    int keyspace = n < 20000 ? n : 20000;
    /* The machine may be shared: the two are measured alternately, three
     * times, and the best of each is kept; a fetch measurement is the
     * sustained rate over its --rounds fetches of the whole chain (as
     * redis-benchmark's is over all its requests). rb1: one client per
     * master with a pipeline of 16 (about the tier's own pattern: a fetch
     * round trip keeps 16 MGETs in flight over the masters); rb50: 50
     * clients without pipelining (redis-benchmark's default). */
    float acc = 0;
    double best = 1e30, rb1 = -1, rb50 = -1;
    for (int rep = 0; rep < 3; rep++) {
        t0 = pam_time_ns();
        for (int i = 0; i < rounds; i++) {
            int got = pam_kv_remote_fetch(r, (const uint8_t(*)[32])keys, 0, n_blocks, nop_sink, &acc);
            if (got != n_blocks) {
                fprintf(stderr, "bench_kv_remote: fetched %d of %d blocks (maxmemory too small?)\n", got, n_blocks);
                return 1;
            }
        }
        double s = (double)(pam_time_ns() - t0) * 1e-9 / rounds;
        if (s < best) best = s;
        double a = redis_benchmark_get(host, port, vb, 3, 16, n, keyspace);
        if (a > rb1) rb1 = a;
    }
    rb50 = redis_benchmark_get(host, port, vb, 50, 1, n, keyspace);
    double fetch_rate = values / best;
    char cpu[256];
    cpu_model(cpu, sizeof cpu);
    printf("CPU: %s\n", cpu);
    printf("cluster seed %s, value %llu bytes (one block of one layer: %d tokens x %d KV heads x %d dims, f16 K+V, "
           "header%s)\n",
           seed, (unsigned long long)vb, shape.block_tokens, shape.n_head_kv, shape.head_dim, hmac ? ", HMAC" : ", no HMAC");
    printf("%-52s %12s %10s %8s\n", "measurement", "values/s", "MB/s", "ratio");
    printf("%-52s %12.0f %10.1f %8s\n", "pam remote tier: pipelined fetch + verify + decode", fetch_rate,
           fetch_rate * (double)vb / 1e6, "1.00");
    printf("%-52s %12.0f %10.1f %8s\n", "pam remote tier: asynchronous writes (SET)", values / put_s,
           values / put_s * (double)vb / 1e6, "-");
    if (rb1 > 0)
        printf("%-52s %12.0f %10.1f %8.2f\n", "redis-benchmark GET, 3 clients, pipeline 16", rb1,
               rb1 * (double)vb / 1e6, fetch_rate / rb1);
    else
        printf("redis-benchmark (3 clients) did not run\n");
    if (rb50 > 0)
        printf("%-52s %12.0f %10.1f %8.2f\n", "redis-benchmark GET, 50 clients, no pipeline", rb50,
               rb50 * (double)vb / 1e6, fetch_rate / rb50);
    else
        printf("redis-benchmark (50 clients) did not run\n");
    printf("(ratio = pam fetch rate / redis-benchmark GET rate; best of 3 runs of each, measured alternately: a fetch\n"
           " run is %d fetches of %d blocks, a redis-benchmark run %d GETs over %d keys)\n",
           rounds, n_blocks, n, keyspace);
    pam_kv_remote_close(r);
    remove(keyfile);
    free(k);
    free(v);
    free(tok);
    free(keys);
    return 0;
}
