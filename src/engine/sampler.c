/* Token sampler.
 *
 * State: the parameters, a ring of the last repeat_last_n accepted tokens,
 * per-token counts of the generated tokens (only with a frequency or presence
 * penalty) with the list of the distinct ones, a private copy of the logit
 * bias, a xoshiro256** generator, and scratch buffers sized once for the
 * vocabulary (penalised logits, candidates, a per-token mark) so sampling a
 * token never allocates. Invariant between calls: every entry of `mark` is 0.
 *
 * Candidates are kept in "rank order": higher logit first, equal logits by
 * lower id. Every stage that cuts the list (top-k, top-p) relies on it, which
 * makes the result independent of the order in which ties were found. */
#include "engine/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"

/* History beyond this is almost certainly a units mistake (bytes vs tokens)
 * and would cost memory for nothing. */
#define PAM_SAMPLER_MAX_LAST_N (1 << 20)

typedef struct {
    float logit;
    int32_t id;
} pam_cand;

struct pam_sampler {
    pam_sampler_params p;
    int32_t n_vocab;
    float *work;    /* [n_vocab] logits after the repetition penalty */
    pam_cand *cand; /* [n_vocab] */
    double *prob;   /* [n_vocab] */
    uint8_t *mark;  /* [n_vocab] distinct-token marks for the penalty */
    int32_t *hist;  /* ring of the last repeat_last_n accepted tokens */
    int32_t n_hist;
    int32_t hist_head; /* next slot to write */
    pam_logit_bias *bias; /* [p.n_logit_bias], or NULL */
    int32_t *count;       /* [n_vocab] generated occurrences, or NULL without frequency/presence penalty */
    int32_t *seen;        /* the distinct generated ids (n_seen of them) */
    int32_t n_seen;
    uint64_t rng[4];
};

void pam_sampler_params_default(pam_sampler_params *p) {
    p->temp = 0.8f;
    p->top_k = 40;
    p->top_p = 0.95f;
    p->min_p = 0.05f;
    p->repeat_penalty = 1.0f;
    p->repeat_last_n = 64;
    p->frequency_penalty = 0.0f;
    p->presence_penalty = 0.0f;
    p->logit_bias = NULL;
    p->n_logit_bias = 0;
    p->seed = 0;
}

pam_status pam_sampler_params_check(const pam_sampler_params *p) {
    if (!p) return PAM_ERR(PAM_ERR_INVALID, "sampler params: NULL");
    /* Written as negated ranges so NaN is rejected too. */
    if (!(p->temp >= 0.0f) || isinf(p->temp))
        return PAM_ERR(PAM_ERR_INVALID, "temperature must be a finite number >= 0 (got %g)", (double)p->temp);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return PAM_ERR(PAM_ERR_INVALID, "top-p must be in (0, 1] (got %g)", (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return PAM_ERR(PAM_ERR_INVALID, "min-p must be in [0, 1] (got %g)", (double)p->min_p);
    if (!(p->repeat_penalty > 0.0f) || isinf(p->repeat_penalty))
        return PAM_ERR(PAM_ERR_INVALID, "repeat penalty must be a finite number > 0 (got %g)",
                       (double)p->repeat_penalty);
    if (p->repeat_last_n < 0 || p->repeat_last_n > PAM_SAMPLER_MAX_LAST_N)
        return PAM_ERR(PAM_ERR_INVALID, "repeat-last-n must be in [0, %d] (got %d)", PAM_SAMPLER_MAX_LAST_N,
                       (int)p->repeat_last_n);
    if (!isfinite(p->frequency_penalty))
        return PAM_ERR(PAM_ERR_INVALID, "frequency penalty must be finite (got %g)", (double)p->frequency_penalty);
    if (!isfinite(p->presence_penalty))
        return PAM_ERR(PAM_ERR_INVALID, "presence penalty must be finite (got %g)", (double)p->presence_penalty);
    if (p->n_logit_bias < 0 || (p->n_logit_bias > 0 && !p->logit_bias))
        return PAM_ERR(PAM_ERR_INVALID, "logit bias: %d entries", (int)p->n_logit_bias);
    for (int32_t i = 0; i < p->n_logit_bias; i++) {
        if (p->logit_bias[i].id < 0)
            return PAM_ERR(PAM_ERR_INVALID, "logit bias: token id %d is negative", (int)p->logit_bias[i].id);
        /* -inf is a ban like -100; +inf or NaN would poison the softmax. */
        if (isnan(p->logit_bias[i].bias) || p->logit_bias[i].bias == INFINITY)
            return PAM_ERR(PAM_ERR_INVALID, "logit bias of token %d must be a number < +inf (got %g)",
                           (int)p->logit_bias[i].id, (double)p->logit_bias[i].bias);
    }
    return PAM_OK;
}

/* ---- PRNG: xoshiro256**, seeded through splitmix64 ---------------------- */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t s[4]) {
    uint64_t result = rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

static void seed_rng(pam_sampler *s) {
    uint64_t sm = s->p.seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&sm);
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(pam_sampler *s) { return (double)(xoshiro_next(s->rng) >> 11) * 0x1.0p-53; }

/* ---- lifecycle ---------------------------------------------------------- */

pam_status pam_sampler_create(const pam_sampler_params *p, int32_t n_vocab, pam_sampler **out) {
    PAM_TRY(pam_sampler_params_check(p));
    if (n_vocab <= 0) return PAM_ERR(PAM_ERR_INVALID, "sampler: vocabulary size must be > 0 (got %d)", (int)n_vocab);
    for (int32_t i = 0; i < p->n_logit_bias; i++)
        if (p->logit_bias[i].id >= n_vocab)
            return PAM_ERR(PAM_ERR_RANGE, "logit bias: token id %d out of range (vocabulary of %d)",
                           (int)p->logit_bias[i].id, (int)n_vocab);
    pam_sampler *s = calloc(1, sizeof *s);
    if (!s) return PAM_ERR(PAM_ERR_NOMEM, "sampler: out of memory");
    s->p = *p;
    s->p.logit_bias = NULL; /* the caller's; s->bias is ours */
    s->n_vocab = n_vocab;
    size_t n = (size_t)n_vocab;
    s->work = malloc(n * sizeof *s->work);
    s->cand = malloc(n * sizeof *s->cand);
    s->prob = malloc(n * sizeof *s->prob);
    s->mark = calloc(n, 1);
    s->hist = malloc(((size_t)p->repeat_last_n + 1) * sizeof *s->hist);
    int ok = s->work && s->cand && s->prob && s->mark && s->hist;
    if (ok && p->n_logit_bias > 0) {
        ok = (s->bias = malloc((size_t)p->n_logit_bias * sizeof *s->bias)) != NULL;
        if (ok) memcpy(s->bias, p->logit_bias, (size_t)p->n_logit_bias * sizeof *s->bias);
    }
    if (ok && (p->frequency_penalty != 0.0f || p->presence_penalty != 0.0f)) {
        s->count = calloc(n, sizeof *s->count);
        s->seen = malloc(n * sizeof *s->seen);
        ok = s->count && s->seen;
    }
    if (!ok) {
        pam_sampler_free(s);
        return PAM_ERR(PAM_ERR_NOMEM, "sampler: out of memory for a vocabulary of %d", (int)n_vocab);
    }
    seed_rng(s);
    *out = s;
    return PAM_OK;
}

void pam_sampler_free(pam_sampler *s) {
    if (!s) return;
    free(s->work);
    free(s->cand);
    free(s->prob);
    free(s->mark);
    free(s->hist);
    free(s->bias);
    free(s->count);
    free(s->seen);
    free(s);
}

void pam_sampler_accept_prompt(pam_sampler *s, int32_t token) {
    /* An id outside the vocabulary cannot be penalised; keeping it would only
     * push a real token out of the window. */
    if (!s || s->p.repeat_last_n <= 0 || token < 0 || token >= s->n_vocab) return;
    s->hist[s->hist_head] = token;
    s->hist_head = (s->hist_head + 1) % s->p.repeat_last_n;
    if (s->n_hist < s->p.repeat_last_n) s->n_hist++;
}

void pam_sampler_accept(pam_sampler *s, int32_t token) {
    if (!s || token < 0 || token >= s->n_vocab) return;
    pam_sampler_accept_prompt(s, token);
    if (s->count && s->count[token]++ == 0) s->seen[s->n_seen++] = token;
}

/* Forgets the history and the counts and reseeds, so a reset sampler
 * repeats its first run. */
void pam_sampler_reset(pam_sampler *s) {
    if (!s) return;
    s->n_hist = 0;
    s->hist_head = 0;
    for (int32_t i = 0; i < s->n_seen; i++) s->count[s->seen[i]] = 0;
    s->n_seen = 0;
    seed_rng(s);
}

/* ---- stages ------------------------------------------------------------- */

static void apply_bias(pam_sampler *s) {
    for (int32_t i = 0; i < s->p.n_logit_bias; i++) {
        const pam_logit_bias *b = &s->bias[i];
        s->work[b->id] = b->bias <= PAM_LOGIT_BIAS_BAN ? -INFINITY : s->work[b->id] + b->bias;
    }
}

/* OpenAI's frequency and presence penalties over the generated tokens. */
static void apply_frequency_presence(pam_sampler *s) {
    for (int32_t i = 0; i < s->n_seen; i++) {
        int32_t t = s->seen[i];
        s->work[t] -= (float)s->count[t] * s->p.frequency_penalty + s->p.presence_penalty;
    }
}

static void apply_penalty(pam_sampler *s) {
    float pen = s->p.repeat_penalty;
    if (pen == 1.0f || s->n_hist == 0) return;
    /* Once per distinct token, however often it occurs in the window. */
    for (int32_t i = 0; i < s->n_hist; i++) {
        int32_t t = s->hist[i];
        if (s->mark[t]) continue;
        s->mark[t] = 1;
        float l = s->work[t];
        s->work[t] = l > 0.0f ? l / pen : l * pen;
    }
    for (int32_t i = 0; i < s->n_hist; i++) s->mark[s->hist[i]] = 0;
}

/* a ranks before b */
static int cand_before(pam_cand a, pam_cand b) { return a.logit > b.logit || (a.logit == b.logit && a.id < b.id); }

static int cand_cmp(const void *pa, const void *pb) {
    const pam_cand *a = pa, *b = pb;
    if (cand_before(*a, *b)) return -1;
    if (cand_before(*b, *a)) return 1;
    return 0;
}

/* Min-heap on rank: the root is the worst of the kept candidates. */
static void heap_sift_down(pam_cand *h, int32_t n, int32_t i) {
    for (;;) {
        int32_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && cand_before(h[w], h[l])) w = l;
        if (r < n && cand_before(h[w], h[r])) w = r;
        if (w == i) return;
        pam_cand t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

/* Moves the k best of the n candidates to the front, in rank order, in
 * O(n log k) rather than sorting a 128k vocabulary for 40 survivors. The
 * rest stay behind them (unordered), so the array remains a permutation and
 * the selection can be repeated with a larger k. */
static void select_top_k(pam_cand *c, int32_t n, int32_t k) {
    if (k < n) {
        for (int32_t i = k / 2 - 1; i >= 0; i--) heap_sift_down(c, k, i);
        for (int32_t i = k; i < n; i++) {
            if (cand_before(c[i], c[0])) {
                pam_cand t = c[0];
                c[0] = c[i];
                c[i] = t;
                heap_sift_down(c, k, 0);
            }
        }
    } else {
        k = n;
    }
    qsort(c, (size_t)k, sizeof *c, cand_cmp);
}

static int32_t argmax(const float *x, int32_t n) {
    int32_t best = 0;
    /* A NaN logit never wins; if all are NaN, token 0 stands. */
    while (best < n - 1 && isnan(x[best])) best++;
    for (int32_t i = best + 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

int32_t pam_sampler_sample(pam_sampler *s, const float *logits) {
    int32_t nv = s->n_vocab;
    memcpy(s->work, logits, (size_t)nv * sizeof *s->work);
    apply_bias(s);
    apply_penalty(s);
    apply_frequency_presence(s);

    if (s->p.temp <= 0.0f) return argmax(s->work, nv);

    /* Candidates: tokens with a finite logit. -inf (masked) tokens have zero
     * probability and would turn the softmax into NaN if all were masked. */
    pam_cand *c = s->cand;
    int32_t n = 0;
    float mx = -INFINITY;
    for (int32_t i = 0; i < nv; i++) {
        float l = s->work[i];
        if (isfinite(l)) {
            c[n++] = (pam_cand){l, i};
            mx = l > mx ? l : mx;
        }
    }
    if (n == 0) return argmax(s->work, nv); /* nothing drawable: stay deterministic */

    /* Invariant below: c[0..n) is in rank order whenever sorted is set, and
     * the best candidate (logit mx) is always kept. */
    int sorted = 0;
    if (s->p.top_k > 0 && s->p.top_k < n) {
        select_top_k(c, n, s->p.top_k);
        n = s->p.top_k;
        sorted = 1;
    }

    /* top-p's probabilities are normalised over the candidates it is given,
     * so take the denominator before min-p thins them out. */
    int use_top_p = s->p.top_p < 1.0f && n > 1;
    double top_p_target = 0.0;
    if (use_top_p) {
        double sum = 0.0;
        for (int32_t i = 0; i < n; i++) sum += exp((double)c[i].logit - mx);
        top_p_target = (double)s->p.top_p * sum;
    }

    /* min-p: p_i < min_p * p_max  <=>  l_i < l_max + log(min_p). Both top-p
     * and min-p keep a prefix of the ranking, so applying min-p first gives
     * the same set as the documented order, and leaves less to sort. */
    if (s->p.min_p > 0.0f && n > 1) {
        double cut = (double)mx + log((double)s->p.min_p);
        int32_t m = 0;
        for (int32_t i = 0; i < n; i++)
            if ((double)c[i].logit >= cut) c[m++] = c[i];
        n = m;
    }

    if (use_top_p && n > 1) {
        /* The nucleus is usually small: select a growing top-k until its mass
         * reaches the target, and sort everything only when it is not. */
        int32_t k = 64;
        while (!sorted) {
            if (k >= n / 4) {
                qsort(c, (size_t)n, sizeof *c, cand_cmp);
                sorted = 1;
                break;
            }
            select_top_k(c, n, k);
            double mass = 0.0;
            for (int32_t i = 0; i < k; i++) mass += exp((double)c[i].logit - mx);
            if (mass >= top_p_target) {
                n = k;
                sorted = 1;
            }
            k *= 4;
        }
        double cum = 0.0;
        for (int32_t i = 0; i < n; i++) {
            cum += exp((double)c[i].logit - mx);
            if (cum >= top_p_target) {
                n = i + 1;
                break;
            }
        }
    }

    /* Temperature, softmax and the draw in double: the tail of a 128k
     * vocabulary would otherwise vanish into float rounding. */
    double inv_t = 1.0 / (double)s->p.temp, sum = 0.0;
    for (int32_t i = 0; i < n; i++) sum += s->prob[i] = exp(((double)c[i].logit - mx) * inv_t);
    double u = rng_uniform(s) * sum, cum = 0.0;
    int32_t last = 0;
    for (int32_t i = 0; i < n; i++) {
        if (s->prob[i] <= 0.0) continue;
        last = i;
        cum += s->prob[i];
        if (u < cum) return c[i].id;
    }
    return c[last].id; /* u landed on the rounding slack at the top */
}

/* ---- log-probabilities -------------------------------------------------- */

void pam_logprobs(const float *logits, int32_t n_vocab, int32_t id, int32_t k, pam_token_logprob *out) {
    if (k < 0) k = 0;
    if (k > PAM_MAX_TOP_LOGPROBS) k = PAM_MAX_TOP_LOGPROBS;
    memset(out, 0, sizeof *out);
    out->id = id;
    out->text_off = -1;
    /* Rank order as in sampling (higher logit, then lower id), so top[0] is
     * the greedy token. The kept list is sorted; most logits fail the first
     * comparison with its worst entry. */
    pam_cand top[PAM_MAX_TOP_LOGPROBS];
    int32_t nt = 0;
    double mx = -INFINITY;
    for (int32_t i = 0; i < n_vocab; i++) {
        float l = logits[i];
        if (!(l > -INFINITY)) continue; /* -inf and NaN: probability 0 */
        if (l > mx) mx = l;
        pam_cand c = {l, i};
        if (k == 0 || (nt == k && !cand_before(c, top[k - 1]))) continue;
        int32_t j = nt < k ? nt++ : k - 1;
        while (j > 0 && cand_before(c, top[j - 1])) {
            top[j] = top[j - 1];
            j--;
        }
        top[j] = c;
    }
    if (mx == -INFINITY) { /* nothing has probability: every log-probability is -inf */
        out->logprob = -INFINITY;
        return;
    }
    double sum = 0.0;
    for (int32_t i = 0; i < n_vocab; i++)
        if (logits[i] > -INFINITY) sum += exp((double)logits[i] - mx);
    double lse = mx + log(sum);
    float l = id >= 0 && id < n_vocab ? logits[id] : NAN;
    out->logprob = l > -INFINITY ? (float)((double)l - lse) : -INFINITY;
    out->n_top = nt;
    for (int32_t i = 0; i < nt; i++) out->top[i] = (pam_logprob_top){top[i].id, (float)((double)top[i].logit - lse)};
}

void pam_sampler_logprobs(const pam_sampler *s, int32_t id, int32_t k, pam_token_logprob *out) {
    pam_logprobs(s->work, s->n_vocab, id, k, out);
}
