/* Model shapes, attention locality and request streams for the simulator. */
#include "sim/sim_workload.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "model/gguf.h"

/* Real sizes from each model's published config.json (Hugging Face):
 * Qwen/Qwen2.5-32B, meta-llama/Meta-Llama-3-70B, facebook/opt-175b (the
 * OPT paper, Zhang et al. 2022, table 1), meta-llama/Meta-Llama-3-8B. */
static const pam_sim_shape builtin[] = {
    {.name = "qwen2.5-32b", .n_layer = 64, .d_model = 5120, .n_head = 40, .n_head_kv = 8, .head_dim = 128,
     .d_ff = 27648, .n_vocab = 152064, .gated_ffn = 1},
    {.name = "llama-3-70b", .n_layer = 80, .d_model = 8192, .n_head = 64, .n_head_kv = 8, .head_dim = 128,
     .d_ff = 28672, .n_vocab = 128256, .gated_ffn = 1},
    {.name = "opt-175b", .n_layer = 96, .d_model = 12288, .n_head = 96, .n_head_kv = 96, .head_dim = 128,
     .d_ff = 49152, .n_vocab = 50272, .gated_ffn = 0},
    {.name = "llama-3-8b", .n_layer = 32, .d_model = 4096, .n_head = 32, .n_head_kv = 8, .head_dim = 128,
     .d_ff = 14336, .n_vocab = 128256, .gated_ffn = 1},
};

const char *pam_sim_shape_names(void) { return "qwen2.5-32b, llama-3-70b, opt-175b, llama-3-8b"; }

void pam_sim_shape_finish(pam_sim_shape *s, double bytes_per_param) {
    double d = s->d_model, qd = (double)s->n_head * s->head_dim, kvd = (double)s->n_head_kv * s->head_dim;
    double attn = 2 * d * qd + 2 * d * kvd;
    double ffn = (s->gated_ffn ? 3.0 : 2.0) * d * s->d_ff;
    s->params = s->n_layer * (attn + ffn) + (double)s->n_vocab * d; /* + the output head */
    s->weight_bytes = s->params * bytes_per_param;
}

pam_status pam_sim_shape_builtin(const char *name, pam_sim_shape *out) {
    for (size_t i = 0; i < sizeof builtin / sizeof builtin[0]; i++) {
        if (!strcmp(builtin[i].name, name)) {
            *out = builtin[i];
            pam_sim_shape_finish(out, 2.0);
            return PAM_OK;
        }
    }
    return PAM_ERR(PAM_ERR_NOT_FOUND, "sim: unknown model '%s' (built in: %s; or a GGUF file)", name,
                   pam_sim_shape_names());
}

static pam_status gguf_int(const pam_gguf *g, const char *arch, const char *key, int required, int *out) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    uint64_t v;
    pam_status st = pam_gguf_get_u64(g, full, &v);
    if (st == PAM_ERR_NOT_FOUND && !required) return PAM_OK;
    if (st != PAM_OK) return st;
    if (v == 0 || v > (1u << 24)) return PAM_ERR(PAM_ERR_FORMAT, "sim: GGUF key %s = %llu is out of range", full, (unsigned long long)v);
    *out = (int)v;
    return PAM_OK;
}

pam_status pam_sim_shape_gguf(const char *path, pam_sim_shape *out) {
    pam_gguf *g = NULL;
    PAM_TRY(pam_gguf_open(path, &g));
    pam_sim_shape s;
    memset(&s, 0, sizeof s);
    pam_gguf_str arch;
    pam_status st = pam_gguf_get_str(g, "general.architecture", &arch);
    char a[32] = "";
    if (st == PAM_OK && (arch.len == 0 || arch.len >= sizeof a)) st = PAM_ERR(PAM_ERR_FORMAT, "sim: bad general.architecture");
    if (st == PAM_OK) {
        memcpy(a, arch.ptr, arch.len);
        a[arch.len] = 0;
    }
    if (st == PAM_OK) st = gguf_int(g, a, "block_count", 1, &s.n_layer);
    if (st == PAM_OK) st = gguf_int(g, a, "embedding_length", 1, &s.d_model);
    if (st == PAM_OK) st = gguf_int(g, a, "attention.head_count", 1, &s.n_head);
    s.n_head_kv = s.n_head;
    if (st == PAM_OK) st = gguf_int(g, a, "attention.head_count_kv", 0, &s.n_head_kv);
    if (st == PAM_OK) st = gguf_int(g, a, "feed_forward_length", 1, &s.d_ff);
    if (st == PAM_OK) {
        s.head_dim = s.d_model / s.n_head;
        st = gguf_int(g, a, "attention.key_length", 0, &s.head_dim);
    }
    if (st == PAM_OK && s.n_head % s.n_head_kv != 0)
        st = PAM_ERR(PAM_ERR_FORMAT, "sim: %d heads are not a multiple of %d KV heads", s.n_head, s.n_head_kv);
    const pam_gguf_value *toks = NULL;
    if (st == PAM_OK && pam_gguf_get_arr(g, "tokenizer.ggml.tokens", PAM_GGUF_TYPE_COUNT, &toks) == PAM_OK)
        s.n_vocab = (int)toks->v.arr.n;
    if (st == PAM_OK) {
        s.gated_ffn = 1;
        const char *base = strrchr(path, '/');
        snprintf(s.name, sizeof s.name, "%s", base ? base + 1 : path);
        pam_sim_shape_finish(&s, 2.0);
        /* the file's own bytes: what a decode step reads (quantised or not),
         * less the input embedding, which is only looked up, unless it is
         * also the output head (tied) */
        double bytes = 0, embd = 0;
        int has_output = 0;
        for (int64_t i = 0; i < pam_gguf_n_tensors(g); i++) {
            const pam_gguf_tensor *t = pam_gguf_tensor_at(g, i);
            bytes += (double)t->n_bytes;
            if (!strcmp(t->name, "token_embd.weight")) embd = (double)t->n_bytes;
            if (!strcmp(t->name, "output.weight")) has_output = 1;
        }
        if (bytes > 0) s.weight_bytes = bytes - (has_output ? embd : 0);
    }
    pam_gguf_close(g);
    if (st == PAM_OK) *out = s;
    return st;
}

double pam_sim_shape_kv_bytes_per_token(const pam_sim_shape *s, double bytes_per_elem) {
    return 2.0 * s->n_layer * s->n_head_kv * s->head_dim * bytes_per_elem;
}

/* ---- locality ------------------------------------------------------------ */

static void loc_normalise(pam_sim_locality *l) {
    double sum = 0;
    for (int i = 0; i < PAM_SIM_LOC_BINS; i++) sum += l->q[i];
    double mean = sum / PAM_SIM_LOC_BINS;
    for (int i = 0; i < PAM_SIM_LOC_BINS; i++) l->q[i] = mean > 0 ? l->q[i] / mean : 1.0;
}

void pam_sim_locality_default(pam_sim_locality *l) {
    /* quantile u gets (1 - u)^-0.6: the hottest 10% of blocks take about
     * half the mass, the coldest half about a fifth */
    for (int i = 0; i < PAM_SIM_LOC_BINS; i++) l->q[i] = pow(1.0 - (i + 0.5) / PAM_SIM_LOC_BINS, -0.6);
    loc_normalise(l);
    snprintf(l->source, sizeof l->source, "built-in power law (1-u)^-0.6");
}

void pam_sim_locality_uniform(pam_sim_locality *l) {
    for (int i = 0; i < PAM_SIM_LOC_BINS; i++) l->q[i] = 1.0;
    snprintf(l->source, sizeof l->source, "uniform");
}

pam_status pam_sim_locality_trace(const char *path, pam_sim_locality *l) {
    FILE *f = fopen(path, "r");
    if (!f) return PAM_ERR(PAM_ERR_IO, "sim: cannot open the trace '%s'", path);
    double count[10] = {0};
    char *line = NULL;
    size_t cap = 0;
    long n = 0, lineno = 0;
    pam_status st = PAM_OK;
    while (st == PAM_OK && getline(&line, &cap, f) > 0) {
        lineno++;
        if (line[strspn(line, " \t\r\n")] == 0) continue;
        json_error_t e;
        json_t *o = json_loads(line, 0, &e);
        json_t *h = o ? json_object_get(o, "importance_hist") : NULL;
        if (!h || !json_is_array(h) || json_array_size(h) != 10) {
            st = PAM_ERR(PAM_ERR_FORMAT, "sim: trace '%s' line %ld: not a --kv-trace record (no importance_hist of 10)",
                         path, lineno);
        } else {
            for (int i = 0; i < 10; i++) {
                json_t *v = json_array_get(h, (size_t)i);
                if (!json_is_integer(v) || json_integer_value(v) < 0) {
                    st = PAM_ERR(PAM_ERR_FORMAT, "sim: trace '%s' line %ld: importance_hist[%d] is not a count", path,
                                 lineno, i);
                    break;
                }
                count[i] += (double)json_integer_value(v);
            }
            n++;
        }
        json_decref(o);
    }
    free(line);
    fclose(f);
    if (st != PAM_OK) return st;
    double total = 0, mass = 0;
    /* bin i holds [10^-(i+1), 10^-i): its geometric centre stands for it */
    double val[10];
    for (int i = 0; i < 10; i++) {
        val[i] = i < 9 ? pow(10.0, -(i + 0.5)) : 1e-10;
        total += count[i];
        mass += count[i] * val[i];
    }
    if (n == 0 || total <= 0 || mass <= 0) return PAM_ERR(PAM_ERR_FORMAT, "sim: trace '%s' has no blocks", path);
    /* quantile bins, coldest first: bin 9 (below 1e-9) up to bin 0 */
    for (int j = 0; j < PAM_SIM_LOC_BINS; j++) {
        double target = (j + 0.5) / PAM_SIM_LOC_BINS * total, cum = 0;
        int b = 9;
        for (; b > 0; b--) {
            cum += count[b];
            if (cum > target) break;
        }
        l->q[j] = val[b];
    }
    /* ratios to the mean of the profile itself, so its mean is exactly 1 */
    loc_normalise(l);
    const char *base = strrchr(path, '/');
    snprintf(l->source, sizeof l->source, "trace %s (%ld steps)", base ? base + 1 : path, n);
    return PAM_OK;
}

double pam_sim_locality_at(const pam_sim_locality *l, double u) {
    int i = (int)(u * PAM_SIM_LOC_BINS);
    if (i < 0) i = 0;
    if (i >= PAM_SIM_LOC_BINS) i = PAM_SIM_LOC_BINS - 1;
    return l->q[i];
}

/* ---- random numbers ------------------------------------------------------ */

uint64_t pam_sim_rng(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

double pam_sim_rng_unit(uint64_t *s) { return (double)(pam_sim_rng(s) >> 11) * (1.0 / 9007199254740992.0); }

int64_t pam_sim_rng_length(uint64_t *s, double mean) {
    double x = mean * (0.5 + pam_sim_rng_unit(s));
    return x < 1 ? 1 : (int64_t)llround(x);
}

double pam_sim_rng_exp(uint64_t *s, double rate) { return -log(1.0 - pam_sim_rng_unit(s)) / rate; }
