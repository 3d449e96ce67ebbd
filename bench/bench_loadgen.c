/* Load generator for OpenAI-compatible servers (pam serve, llama-server):
 * streaming POST /v1/completions over loopback, closed loop (N clients, each
 * sends its next request when the previous ends) or open loop (Poisson
 * arrivals at a set rate). Bounded by a request count and a duration.
 * Reports requests/s, output tokens/s, TTFT and TPOT p50/p99. Every request
 * sends the same prompt (servers may reuse its prefix), or with --unique one
 * numbered per request, so no two share a prefix beyond BOS.
 *
 *   bench_loadgen --port 8080 --clients 8 --requests 64 --max-tokens 128
 *   bench_loadgen --port 8080 --rate 4 --requests 64 --duration 60
 *
 * Tokens per request come from the final usage object (stream_options
 * include_usage); TTFT is send -> first token event, TPOT is (last token
 * event - first) / (tokens - 1). Only 127.0.0.1 / ::1 are accepted. */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct result {
    int ok;
    int tokens;
    double ttft_s, tpot_s, total_s;
} result;

static struct {
    const char *host, *model, *prompt, *path;
    int port, clients, max_requests, max_tokens;
    int unique; /* --unique: each prompt starts with its request number, so none shares a prefix */
    double rate, duration_s;
    double t0;
    pthread_mutex_t mu;
    int next; /* requests started */
    result *res;
} G;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int take_slot(void) {
    pthread_mutex_lock(&G.mu);
    int i = -1;
    if (G.next < G.max_requests && now_s() - G.t0 < G.duration_s) i = G.next++;
    pthread_mutex_unlock(&G.mu);
    return i;
}

/* Escapes s for a JSON string. */
static void json_escape(const char *s, char *out, size_t cap) {
    size_t o = 0;
    for (; *s && o + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') out[o++] = '\\', out[o++] = (char)c;
        else if (c < 0x20) o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
        else out[o++] = (char)c;
    }
    out[o] = '\0';
}

/* One streaming request; times the token events. */
static void run_one(result *r) {
    memset(r, 0, sizeof *r);
    int fd = -1;
    struct sockaddr_in a4 = {0};
    a4.sin_family = AF_INET;
    a4.sin_port = htons((uint16_t)G.port);
    inet_pton(AF_INET, G.host, &a4.sin_addr);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return;
    struct timeval tv = {120, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&a4, sizeof a4) != 0) {
        close(fd);
        return;
    }
    char *esc = malloc(65536), *body = malloc(70000), *reqbuf = malloc(72000);
    if (G.unique) {
        char *p = malloc(strlen(G.prompt) + 32);
        sprintf(p, "%d. %s", (int)(r - G.res) + 1, G.prompt);
        json_escape(p, esc, 65536);
        free(p);
    } else {
        json_escape(G.prompt, esc, 65536);
    }
    int bl = snprintf(body, 70000,
                      "{\"model\":\"%s\",\"prompt\":\"%s\",\"max_tokens\":%d,\"temperature\":0,\"ignore_eos\":true,"
                      "\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
                      G.model, esc, G.max_tokens);
    int rl = snprintf(reqbuf, 72000,
                      "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                      "Connection: close\r\n\r\n%s",
                      G.path, G.host, G.port, bl, body);
    double t_send = now_s(), t_first = 0, t_last = 0;
    ssize_t sent = send(fd, reqbuf, (size_t)rl, MSG_NOSIGNAL);
    free(esc);
    free(body);
    free(reqbuf);
    if (sent != rl) {
        close(fd);
        return;
    }
    /* Read everything, noting when each "data: {" event arrives. Chunked
     * framing is skipped by scanning the decoded byte stream for events. */
    size_t cap = 1 << 16, len = 0, scan = 0;
    char *buf = malloc(cap);
    int status = 0, events = 0;
    for (;;) {
        if (len + 4096 > cap) buf = realloc(buf, cap *= 2);
        ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
        if (n <= 0) break;
        len += (size_t)n;
        buf[len] = '\0';
        double t = now_s();
        if (!status && strstr(buf, "\r\n")) sscanf(buf, "HTTP/%*s %d", &status);
        char *p;
        while ((p = strstr(buf + scan, "data: {")) != NULL) {
            char *end = strstr(p, "\n\n");
            if (!end) break;
            /* A token event carries text; the usage-only event does not. */
            int has_text = strstr(p, "\"text\":\"") && !strstr(p, "\"text\":\"\"") && strstr(p, "\"text\":\"") < end;
            if (!has_text) {
                char *c = strstr(p, "\"content\":\"");
                has_text = c && c < end && c[11] != '"';
            }
            if (has_text) {
                if (!t_first) t_first = t;
                t_last = t;
                events++;
            }
            char *u = strstr(p, "\"completion_tokens\":");
            if (u && u < end) r->tokens = atoi(u + 20);
            scan = (size_t)(end - buf) + 2;
        }
    }
    close(fd);
    r->total_s = now_s() - t_send;
    r->ok = status == 200 && strstr(buf, "data: [DONE]") != NULL && r->tokens > 0 && t_first > 0;
    r->ttft_s = t_first - t_send;
    r->tpot_s = r->tokens > 1 ? (t_last - t_first) / (r->tokens - 1) : 0;
    free(buf);
}

static void *closed_client(void *arg) {
    int i;
    while ((i = take_slot()) >= 0) run_one(&G.res[i]);
    return arg;
}

static void *open_request(void *arg) {
    run_one((result *)arg);
    return NULL;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, int n, double p) {
    if (n == 0) return 0;
    int k = (int)ceil(p / 100.0 * n) - 1;
    return v[k < 0 ? 0 : k >= n ? n - 1 : k];
}

int main(int argc, char **argv) {
    G.host = "127.0.0.1";
    G.port = 8080;
    G.model = "model";
    G.path = "/v1/completions";
    G.prompt = "Once upon a time, there was a little girl named Lily. She loved to play outside.";
    G.clients = 8;
    G.max_requests = 64;
    G.max_tokens = 128;
    G.duration_s = 120;
    unsigned seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--unique")) {
            G.unique = 1;
            continue;
        }
        if (!v) goto usage;
        if (!strcmp(a, "--host")) G.host = v;
        else if (!strcmp(a, "--port")) G.port = atoi(v);
        else if (!strcmp(a, "--model")) G.model = v;
        else if (!strcmp(a, "--prompt")) G.prompt = v;
        else if (!strcmp(a, "--clients")) G.clients = atoi(v);
        else if (!strcmp(a, "--rate")) G.rate = atof(v);
        else if (!strcmp(a, "--requests")) G.max_requests = atoi(v);
        else if (!strcmp(a, "--max-tokens")) G.max_tokens = atoi(v);
        else if (!strcmp(a, "--duration")) G.duration_s = atof(v);
        else if (!strcmp(a, "--seed")) seed = (unsigned)atoi(v);
        else goto usage;
        i++;
    }
    if (strcmp(G.host, "127.0.0.1") != 0) {
        fprintf(stderr, "bench_loadgen: loopback only (--host 127.0.0.1)\n");
        return 2;
    }
    if (G.clients < 1 || G.clients > 1024 || G.max_requests < 1 || G.max_requests > 100000 || G.max_tokens < 1 ||
        G.duration_s <= 0 || G.rate < 0 || strlen(G.prompt) > 16000)
        goto usage;
    pthread_mutex_init(&G.mu, NULL);
    G.res = calloc((size_t)G.max_requests, sizeof *G.res);
    G.t0 = now_s();
    int n_started;
    if (G.rate > 0) {
        /* Open loop: Poisson arrivals, one thread per request. */
        pthread_t *th = calloc((size_t)G.max_requests, sizeof *th);
        int n = 0;
        double t_next = G.t0;
        srand(seed);
        while (n < G.max_requests && now_s() - G.t0 < G.duration_s) {
            double wait = t_next - now_s();
            if (wait > 0) {
                struct timespec ts = {(time_t)wait, (long)((wait - floor(wait)) * 1e9)};
                nanosleep(&ts, NULL);
            }
            if (pthread_create(&th[n], NULL, open_request, &G.res[n]) != 0) break;
            n++;
            double u = (rand() + 1.0) / ((double)RAND_MAX + 2.0);
            t_next += -log(u) / G.rate;
        }
        for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
        free(th);
        n_started = n;
    } else {
        pthread_t *th = calloc((size_t)G.clients, sizeof *th);
        for (int i = 0; i < G.clients; i++) pthread_create(&th[i], NULL, closed_client, NULL);
        for (int i = 0; i < G.clients; i++) pthread_join(th[i], NULL);
        free(th);
        n_started = G.next;
    }
    double wall = now_s() - G.t0;
    double *ttft = malloc(sizeof(double) * (size_t)(n_started + 1)), *tpot = malloc(sizeof(double) * (size_t)(n_started + 1));
    int ok = 0;
    long tokens = 0;
    for (int i = 0; i < n_started; i++) {
        if (!G.res[i].ok) continue;
        ttft[ok] = G.res[i].ttft_s;
        tpot[ok] = G.res[i].tpot_s;
        tokens += G.res[i].tokens;
        ok++;
    }
    qsort(ttft, (size_t)ok, sizeof *ttft, cmp_d);
    qsort(tpot, (size_t)ok, sizeof *tpot, cmp_d);
    if (G.rate > 0) printf("mode: open loop, %.2f req/s arrivals\n", G.rate);
    else printf("mode: closed loop, %d clients\n", G.clients);
    printf("requests: %d ok, %d failed, in %.2f s\n", ok, n_started - ok, wall);
    printf("throughput: %.2f req/s, %.1f output tok/s\n", ok / wall, (double)tokens / wall);
    printf("TTFT ms: p50 %.1f p99 %.1f\n", pct(ttft, ok, 50) * 1e3, pct(ttft, ok, 99) * 1e3);
    printf("TPOT ms: p50 %.2f p99 %.2f\n", pct(tpot, ok, 50) * 1e3, pct(tpot, ok, 99) * 1e3);
    free(ttft);
    free(tpot);
    free(G.res);
    return ok == n_started ? 0 : 1;
usage:
    fprintf(stderr,
            "usage: bench_loadgen [--port N] [--model ID] [--prompt TEXT] [--unique] [--max-tokens N]\n"
            "                     [--clients N | --rate REQ_PER_S] [--requests N] [--duration S] [--seed N]\n");
    return 2;
}
