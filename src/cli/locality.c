/* pam locality: where the attention mass of a real model on a real text
 * goes, block by block (DESIGN.md §2.4, §2.7).
 *
 * A teacher-forced pass (chunks of CTX tokens, each from an empty cache
 * starting with BOS, as `pam perplexity`) runs through the paged KV manager
 * with one dram tier; its observer hands over every stored key and, after
 * each attention call, each block's share of every head's attention mass,
 * the by-product PAMattention already computes. From these, per layer and
 * per KV head, at every step with at least MIN_BLOCKS blocks:
 *  - concentration: the share of mass in the top 1/5/10/25% of blocks, in
 *    the first block (the sink) and in the recent window (two newest blocks);
 *  - stability: Jaccard overlap of the top-10% block sets of steps t, t+d;
 *  - prediction: the share of step t's mass captured by the k blocks a
 *    predictor picks from what is known before step t's scores (budget k a
 *    share of the blocks): the oracle (step t's own top k), recency (the k
 *    newest), the importance EMA of past steps' mass at decays 0.5, 0.9,
 *    0.99, the key-summary bound (kv/ksum.h: per-block per-channel key
 *    min/max against step t's query), and the EMA or bound after the sink
 *    and recent window are taken first, as a sparse attention would.
 * --trace-out writes the layer-level mass of every step (kv/loctrace.h) for
 * `pam bench kv --kv-replay`. */
#include "cli/locality.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/kv_flags.h"
#include "cli/text_tokens.h"
#include "core/status.h"
#include "kv/ksum.h"
#include "kv/kvm.h"
#include "kv/loctrace.h"
#include "model/model.h"

#define MIN_BLOCKS 8
#define RECENT_BLOCKS 2

const double loc_top_pct[LOC_N_TOP] = {1, 5, 10, 25};
const int loc_lags[LOC_N_LAG] = {1, 16, 64};
const double loc_budget_pct[LOC_N_BUD] = {6.25, 12.5, 25, 50};
const char *const loc_pred_names[LOC_N_PRED] = {"oracle",  "recency", "ema0.5",     "ema0.9",
                                                "ema0.99", "bound",   "sr+ema0.9", "sr+bound"};
enum { P_ORACLE, P_RECENCY, P_EMA05, P_EMA09, P_EMA099, P_BOUND, P_SR_EMA, P_SR_BOUND };
static const double ema_decay[3] = {0.5, 0.9, 0.99};

static void loc_usage(FILE *f) {
    fprintf(f,
            "usage: pam locality -m MODEL -f TEXT [-c CTX] [options]\n"
            "\n"
            "Teacher-forced pass over TEXT recording each KV block's share of the attention\n"
            "mass per layer and KV head at every step: concentration, sink and recent-window\n"
            "shares, hot-set stability, and how much of each step's mass the importance EMA,\n"
            "recency, the key-summary bound and the oracle capture with a budget of blocks.\n"
            "\n"
            "  -m, --model FILE        GGUF model\n"
            "  -f, --file FILE         text (at least CTX tokens)\n"
            "  -c, --ctx-size N        tokens per chunk (default: the model's context)\n"
            "      --kv-block N        tokens per KV block (default 16)\n"
            "      --chunks N          analyse only the first N chunks (default all)\n"
            "  -t, --threads N         threads (default: number of CPUs)\n"
            "      --json              print one JSON object instead of the tables\n"
            "      --svg FILE          also draw the results as an SVG picture\n"
            "      --trace-out FILE    also write each step's per-block mass of every layer (the\n"
            "                          mean over its heads), for pam bench kv --kv-replay\n");
}

/* Observer state for one chunk. */
typedef struct loc_obs {
    int32_t L, G, grp, hd, bt, T, NB;
    float scale;
    float *keys;     /* [L][T][G*hd] */
    float *smn, *smx; /* finalized block summaries [L][NB][G*hd] */
    int32_t *n_final; /* per layer: blocks whose summary is final */
    float *mass;     /* [L][T][G][NB]: mass of block b, mean over the group's heads */
    float *bound;    /* [L][T][G][NB]: bound of q·k over the group's heads, times scale */
    float *tmn, *tmx; /* partial-block summary scratch [G*hd] */
    int bad;
} loc_obs;

static void obs_store(void *user, int32_t seq, int32_t layer, int32_t pos, const float *k) {
    loc_obs *o = user;
    (void)seq;
    if (pos >= o->T) {
        o->bad = 1;
        return;
    }
    size_t kvd = (size_t)o->G * o->hd;
    memcpy(o->keys + ((size_t)layer * o->T + pos) * kvd, k, kvd * sizeof(float));
}

static void summarize(const loc_obs *o, int32_t layer, int32_t from, int32_t to, float *mn, float *mx) {
    int32_t kvd = o->G * o->hd;
    pam_ksum_reset(mn, mx, kvd);
    for (int32_t p = from; p < to; p++) pam_ksum_add(mn, mx, o->keys + ((size_t)layer * o->T + p) * kvd, kvd);
}

static void obs_attend(void *user, int32_t seq, int32_t layer, int32_t n_pos, const float *q, int32_t n_head,
                       const float *mass, int64_t n_blocks) {
    loc_obs *o = user;
    (void)seq;
    int32_t t = n_pos - 1;
    if (t >= o->T || n_blocks > o->NB || n_head != o->G * o->grp) {
        o->bad = 1;
        return;
    }
    int32_t kvd = o->G * o->hd, nb = (int32_t)n_blocks;
    /* blocks that are complete at step t get their final summary once */
    int32_t full = n_pos / o->bt;
    for (int32_t b = o->n_final[layer]; b < full; b++)
        summarize(o, layer, b * o->bt, (b + 1) * o->bt, o->smn + ((size_t)layer * o->NB + b) * kvd,
                  o->smx + ((size_t)layer * o->NB + b) * kvd);
    if (full > o->n_final[layer]) o->n_final[layer] = full;
    for (int32_t b = 0; b < nb; b++) {
        const float *mn, *mx;
        if (b < full) {
            mn = o->smn + ((size_t)layer * o->NB + b) * kvd;
            mx = o->smx + ((size_t)layer * o->NB + b) * kvd;
        } else { /* the block being written: only positions up to t */
            summarize(o, layer, b * o->bt, n_pos, o->tmn, o->tmx);
            mn = o->tmn;
            mx = o->tmx;
        }
        for (int32_t g = 0; g < o->G; g++) {
            size_t at = (((size_t)layer * o->T + t) * o->G + g) * o->NB + b;
            float s = 0;
            for (int32_t h = 0; h < o->grp; h++) s += mass[(size_t)b * n_head + g * o->grp + h];
            o->mass[at] = s / (float)o->grp;
            o->bound[at] = o->scale * pam_ksum_bound_group(q + (size_t)g * o->grp * o->hd, o->grp, mn + g * o->hd,
                                                           mx + g * o->hd, o->hd);
        }
    }
}

/* Picks k blocks of nb by score (higher first; ties go to the newer block),
 * after the forced ones (first n_forced of forced[]); sel gets 0/1 flags. */
static void pick(const double *score, int32_t nb, int32_t k, const int32_t *forced, int n_forced, int32_t *idx,
                 unsigned char *sel) {
    memset(sel, 0, (size_t)nb);
    int32_t got = 0;
    for (int i = 0; i < n_forced && got < k; i++)
        if (!sel[forced[i]]) sel[forced[i]] = 1, got++;
    if (got >= k) return;
    int32_t n = 0;
    for (int32_t b = 0; b < nb; b++)
        if (!sel[b]) idx[n++] = b;
    /* partial selection sort: k is small next to nb only for small budgets,
     * and nb is at most CTX / block */
    for (int32_t i = 0; i < n && got < k; i++) {
        int32_t best = i;
        for (int32_t j = i + 1; j < n; j++) {
            double a = score[idx[j]], c = score[idx[best]];
            if (a > c || (a == c && idx[j] > idx[best])) best = j;
        }
        int32_t tmp = idx[i];
        idx[i] = idx[best];
        idx[best] = tmp;
        sel[idx[i]] = 1;
        got++;
    }
}

static int32_t budget_blocks(double pct, int32_t nb) {
    int32_t k = (int32_t)ceil(pct / 100.0 * nb - 1e-9);
    return k < 1 ? 1 : k > nb ? nb : k;
}

/* Scratch for analyze_unit. */
typedef struct loc_scratch {
    double *score, *ema; /* [NB], [3][NB] */
    int32_t *idx;
    unsigned char *sel, *hot; /* [NB], [T][NB] */
    float *sorted;            /* [NB] */
} loc_scratch;

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* Accumulates one chunk of one unit: mass[t*NB + b], bound score[t*NB + b]. */
static void analyze_unit(loc_stats *st, const float *mass, const float *bnd, int32_t T, int32_t NB, int32_t bt,
                         loc_scratch *w) {
    memset(w->ema, 0, 3 * (size_t)NB * sizeof(double));
    memset(w->hot, 0, (size_t)T * NB);
    for (int32_t t = 0; t < T; t++) {
        int32_t nb = t / bt + 1;
        const float *m = mass + (size_t)t * NB;
        int measured = nb >= MIN_BLOCKS;
        if (measured) {
            st->n_steps += 1;
            memcpy(w->sorted, m, (size_t)nb * sizeof(float));
            qsort(w->sorted, (size_t)nb, sizeof(float), cmp_desc);
            for (int i = 0; i < LOC_N_TOP; i++) {
                int32_t k = budget_blocks(loc_top_pct[i], nb);
                double s = 0;
                for (int32_t j = 0; j < k; j++) s += w->sorted[j];
                st->top[i] += s;
            }
            st->sink += m[0];
            double rc = 0;
            for (int32_t b = nb - RECENT_BLOCKS; b < nb; b++) rc += b >= 0 ? m[b] : 0;
            st->recent += rc;
            /* hot set: the top 10% of this step */
            for (int32_t b = 0; b < nb; b++) w->score[b] = m[b];
            pick(w->score, nb, budget_blocks(10, nb), NULL, 0, w->idx, w->hot + (size_t)t * NB);
            int32_t forced[3] = {nb - 1, 0, nb - 2};
            for (int p = 0; p < LOC_N_PRED; p++) {
                for (int32_t b = 0; b < nb; b++) {
                    double s;
                    switch (p) {
                    case P_ORACLE: s = m[b]; break;
                    case P_RECENCY: s = b; break;
                    case P_EMA05: s = w->ema[b]; break;
                    case P_EMA09: case P_SR_EMA: s = w->ema[NB + b]; break;
                    case P_EMA099: s = w->ema[2 * NB + b]; break;
                    default: s = bnd[(size_t)t * NB + b]; break;
                    }
                    w->score[b] = s;
                }
                int nf = p == P_SR_EMA || p == P_SR_BOUND ? 1 + RECENT_BLOCKS : 0;
                for (int i = 0; i < LOC_N_BUD; i++) {
                    pick(w->score, nb, budget_blocks(loc_budget_pct[i], nb), forced, nf, w->idx, w->sel);
                    double c = 0;
                    for (int32_t b = 0; b < nb; b++) c += w->sel[b] ? m[b] : 0;
                    st->cap[p][i] += c;
                }
            }
        }
        /* importance EMA after the step, as the KV manager's step end */
        for (int d = 0; d < 3; d++)
            for (int32_t b = 0; b < nb; b++)
                w->ema[(size_t)d * NB + b] = ema_decay[d] * w->ema[(size_t)d * NB + b] + (1 - ema_decay[d]) * m[b];
    }
    for (int i = 0; i < LOC_N_LAG; i++) {
        int d = loc_lags[i];
        for (int32_t t = 0; t + d < T; t++) {
            if (t / bt + 1 < MIN_BLOCKS) continue;
            const unsigned char *a = w->hot + (size_t)t * NB, *b = w->hot + (size_t)(t + d) * NB;
            int inter = 0, uni = 0;
            for (int32_t j = 0; j < NB; j++) inter += a[j] && b[j], uni += a[j] || b[j];
            if (uni) st->jac[i] += (double)inter / uni, st->n_jac[i] += 1;
        }
    }
}

static void stats_finish(loc_stats *s) {
    double n = s->n_steps > 0 ? s->n_steps : 1;
    for (int i = 0; i < LOC_N_TOP; i++) s->top[i] /= n;
    s->sink /= n;
    s->recent /= n;
    for (int i = 0; i < LOC_N_LAG; i++) s->jac[i] = s->n_jac[i] > 0 ? s->jac[i] / s->n_jac[i] : NAN;
    for (int p = 0; p < LOC_N_PRED; p++)
        for (int i = 0; i < LOC_N_BUD; i++) s->cap[p][i] /= n;
}

/* Mean of finished stats (the overall row: every layer weighs the same). */
static void stats_mean(loc_stats *out, const loc_stats *in, int n) {
    memset(out, 0, sizeof *out);
    for (int u = 0; u < n; u++) {
        out->n_steps += in[u].n_steps;
        for (int i = 0; i < LOC_N_TOP; i++) out->top[i] += in[u].top[i] / n;
        out->sink += in[u].sink / n;
        out->recent += in[u].recent / n;
        for (int i = 0; i < LOC_N_LAG; i++) out->jac[i] += in[u].jac[i] / n, out->n_jac[i] += in[u].n_jac[i];
        for (int p = 0; p < LOC_N_PRED; p++)
            for (int i = 0; i < LOC_N_BUD; i++) out->cap[p][i] += in[u].cap[p][i] / n;
    }
}

static void json_stats(FILE *f, const loc_stats *s) {
    fprintf(f, "{\"steps\": %.0f, \"top_share\": {", s->n_steps);
    for (int i = 0; i < LOC_N_TOP; i++) fprintf(f, "%s\"%g\": %.6f", i ? ", " : "", loc_top_pct[i], s->top[i]);
    fprintf(f, "}, \"sink\": %.6f, \"recent\": %.6f, \"jaccard_top10\": {", s->sink, s->recent);
    for (int i = 0; i < LOC_N_LAG; i++) fprintf(f, "%s\"%d\": %.6f", i ? ", " : "", loc_lags[i], s->jac[i]);
    fprintf(f, "}, \"capture\": {");
    for (int p = 0; p < LOC_N_PRED; p++) {
        fprintf(f, "%s\"%s\": [", p ? ", " : "", loc_pred_names[p]);
        for (int i = 0; i < LOC_N_BUD; i++) fprintf(f, "%s%.6f", i ? ", " : "", s->cap[p][i]);
        fprintf(f, "]");
    }
    fprintf(f, "}}");
}

static void print_json(const loc_report *r) {
    printf("{\"model\": \"%s\", \"ctx\": %d, \"kv_block\": %d, \"chunks\": %ld, \"text_tokens\": %zu, "
           "\"min_blocks\": %d, \"recent_blocks\": %d, \"budgets_pct\": [",
           r->model, r->ctx, r->block_tokens, r->n_chunks, r->text_tokens, r->min_blocks, r->recent_blocks);
    for (int i = 0; i < LOC_N_BUD; i++) printf("%s%g", i ? ", " : "", loc_budget_pct[i]);
    printf("], \"overall\": ");
    json_stats(stdout, &r->overall);
    printf(", \"layers\": [");
    for (int l = 0; l < r->n_layer; l++) {
        printf("%s{\"layer\": %d, \"stats\": ", l ? ", " : "", l);
        json_stats(stdout, &r->layers[l]);
        printf(", \"kv_heads\": [");
        for (int g = 0; g < r->n_head_kv; g++) {
            printf("%s", g ? ", " : "");
            json_stats(stdout, &r->kv_heads[(size_t)l * r->n_head_kv + g]);
        }
        printf("]}");
    }
    printf("]}\n");
}

static void table_row(const char *name, const loc_stats *s) {
    printf("%-8s", name);
    for (int i = 0; i < LOC_N_TOP; i++) printf(" %6.1f%%", 100 * s->top[i]);
    printf(" %6.1f%% %6.1f%%", 100 * s->sink, 100 * s->recent);
    for (int i = 0; i < LOC_N_LAG; i++) printf(" %6.3f", s->jac[i]);
    printf("\n");
}

static void print_tables(const loc_report *r) {
    printf("attention locality: %s, %ld chunks of %d tokens, blocks of %d tokens, steps with >= %d blocks\n\n",
           r->model, r->n_chunks, r->ctx, r->block_tokens, r->min_blocks);
    printf("share of attention mass (layer: mean over heads)         hot-set Jaccard (top 10%%)\n");
    printf("%-8s %7s %7s %7s %7s %7s %7s %6s %6s %6s\n", "layer", "top1%", "top5%", "top10%", "top25%", "sink",
           "recent", "t+1", "t+16", "t+64");
    char name[32];
    for (int l = 0; l < r->n_layer; l++) {
        snprintf(name, sizeof name, "%d", l);
        table_row(name, &r->layers[l]);
    }
    table_row("all", &r->overall);
    printf("\nper KV head (mean over the query heads of its group)\n");
    for (int l = 0; l < r->n_layer; l++)
        for (int g = 0; g < r->n_head_kv; g++) {
            snprintf(name, sizeof name, "%d.%d", l, g);
            table_row(name, &r->kv_heads[(size_t)l * r->n_head_kv + g]);
        }
    printf("\nshare of a step's mass in the blocks each predictor picks beforehand, by budget (share of blocks)\n");
    printf("(layer level; sr+: sink and the %d newest blocks first; bound: key-summary bound with the step's query)\n",
           r->recent_blocks);
    printf("%-11s", "predictor");
    for (int i = 0; i < LOC_N_BUD; i++) printf(" %7g%%", loc_budget_pct[i]);
    printf("   | per KV head:");
    for (int i = 0; i < LOC_N_BUD; i++) printf(" %6g%%", loc_budget_pct[i]);
    printf("\n");
    loc_stats kvh;
    stats_mean(&kvh, r->kv_heads, r->n_layer * r->n_head_kv);
    for (int p = 0; p < LOC_N_PRED; p++) {
        printf("%-11s", loc_pred_names[p]);
        for (int i = 0; i < LOC_N_BUD; i++) printf(" %7.1f%%", 100 * r->overall.cap[p][i]);
        printf("   |             ");
        for (int i = 0; i < LOC_N_BUD; i++) printf(" %6.1f%%", 100 * kvh.cap[p][i]);
        printf("\n");
    }
}

int pam_cli_locality(int argc, char **argv) {
    const char *model_path = NULL, *text_path = NULL, *svg_path = NULL, *trace_out = NULL;
    long n_ctx = 0, block = 16, max_chunks = -1, n_threads = 0;
    int json = 0;
    pam_args a;
    pam_args_init(&a, argc, argv, "pam locality");
    while (pam_args_next(&a)) {
        if (pam_args_is(&a, "-h", "--help")) {
            loc_usage(stdout);
            return 0;
        } else if (pam_args_is(&a, "-m", "--model")) {
            model_path = pam_args_value(&a);
        } else if (pam_args_is(&a, "-f", "--file")) {
            text_path = pam_args_value(&a);
        } else if (pam_args_is(&a, "-c", "--ctx-size")) {
            pam_args_long(&a, 1, 1L << 20, &n_ctx);
        } else if (pam_args_is(&a, NULL, "--kv-block")) {
            pam_args_long(&a, 1, 4096, &block);
        } else if (pam_args_is(&a, NULL, "--chunks")) {
            pam_args_long(&a, 1, 1L << 30, &max_chunks);
        } else if (pam_args_is(&a, "-t", "--threads")) {
            pam_args_long(&a, 1, 1024, &n_threads);
        } else if (pam_args_is(&a, NULL, "--json")) {
            json = 1;
        } else if (pam_args_is(&a, NULL, "--svg")) {
            svg_path = pam_args_value(&a);
        } else if (pam_args_is(&a, NULL, "--trace-out")) {
            trace_out = pam_args_value(&a);
        } else {
            pam_args_unknown(&a);
        }
    }
    if (a.n_positional > 0) {
        fprintf(stderr, "pam locality: unexpected argument '%s' (the text goes after -f)\n", a.positional[0]);
        a.failed = 1;
    }
    if (!a.failed && (!model_path || !text_path)) {
        fprintf(stderr, "pam locality: %s\n", !model_path ? "no model given: pass a GGUF file with -m MODEL.gguf"
                                                          : "no text given: pass a text file with -f TEXT");
        a.failed = 1;
    }
    if (a.failed) {
        fprintf(stderr, "run `pam locality --help` for the options\n");
        return 2;
    }

    int rc = 1;
    pam_model *model = NULL;
    pam_pool *pool = NULL;
    pam_kvm *kvm = NULL;
    FILE *trace = NULL, *svg = NULL;
    int32_t *ids = NULL, *chunk = NULL;
    size_t n_ids = 0;
    loc_obs o = {0};
    loc_scratch w = {0};
    float *um = NULL, *ub = NULL, *heat = NULL, *chunk_mass = NULL;
    pam_loctrace_writer *lt = NULL;
    loc_stats *layers = NULL, *kvh = NULL;

    if (pam_model_load(model_path, &model) != PAM_OK) {
        fprintf(stderr, "pam locality: cannot load '%s': %s\n", model_path, pam_last_error());
        goto done;
    }
    const pam_model_hparams *hp = pam_model_get_hparams(model);
    const pam_tokenizer *tk = pam_model_tokenizer(model);
    if (n_ctx == 0) n_ctx = hp->n_ctx_train;
    if (n_ctx > hp->n_ctx_train) {
        fprintf(stderr, "pam locality: -c %ld exceeds the model's context of %d tokens\n", n_ctx, hp->n_ctx_train);
        rc = 2;
        goto done;
    }
    if (n_ctx < MIN_BLOCKS * block) {
        fprintf(stderr, "pam locality: -c %ld holds fewer than %d blocks of %ld tokens: nothing to measure\n", n_ctx,
                MIN_BLOCKS, block);
        rc = 2;
        goto done;
    }
    int add_bos = pam_tokenizer_add_bos(tk) && pam_tokenizer_bos(tk) >= 0;
    if (pam_cli_text_tokens(text_path, tk, add_bos, &ids, &n_ids) != PAM_OK) {
        fprintf(stderr, "pam locality: %s\n", pam_last_error());
        goto done;
    }
    if ((long)n_ids < n_ctx) {
        fprintf(stderr, "pam locality: the text has %zu tokens, fewer than one chunk of %ld\n", n_ids, n_ctx);
        rc = 2;
        goto done;
    }
    long n_chunks = (long)n_ids / n_ctx;
    if (max_chunks > 0 && max_chunks < n_chunks) n_chunks = max_chunks;
    if (svg_path && !(svg = fopen(svg_path, "w"))) {
        fprintf(stderr, "pam locality: cannot write '%s'\n", svg_path);
        goto done;
    }
    if (pam_pool_create((int)n_threads, &pool) != PAM_OK) {
        fprintf(stderr, "pam locality: %s\n", pam_last_error());
        goto done;
    }
    pam_kv_flags kvf;
    pam_kv_flags_init(&kvf);
    kvf.block_tokens = block;
    kvf.policy = PAM_KV_POLICY_SINGLE;
    if (pam_kv_flags_build(&kvf, hp, (uint64_t)((n_ctx + block - 1) / block), pool, &trace, &kvm) != PAM_OK) {
        fprintf(stderr, "pam locality: KV cache: %s\n", pam_last_error());
        goto done;
    }
    o.L = hp->n_layer;
    o.G = hp->n_head_kv;
    o.grp = hp->n_head / hp->n_head_kv;
    o.hd = hp->head_dim;
    o.bt = (int32_t)block;
    o.T = (int32_t)n_ctx;
    o.NB = (int32_t)((n_ctx + block - 1) / block);
    o.scale = 1.0f / sqrtf((float)hp->head_dim);
    size_t kvd = (size_t)o.G * o.hd, cells = (size_t)o.L * o.T * o.G * o.NB;
    o.keys = malloc((size_t)o.L * o.T * kvd * sizeof(float));
    o.smn = malloc((size_t)o.L * o.NB * kvd * sizeof(float));
    o.smx = malloc((size_t)o.L * o.NB * kvd * sizeof(float));
    o.n_final = calloc((size_t)o.L, sizeof(int32_t));
    o.mass = malloc(cells * sizeof(float));
    o.bound = malloc(cells * sizeof(float));
    o.tmn = malloc(kvd * sizeof(float));
    o.tmx = malloc(kvd * sizeof(float));
    w.score = malloc((size_t)o.NB * sizeof(double));
    w.ema = malloc(3 * (size_t)o.NB * sizeof(double));
    w.idx = malloc((size_t)o.NB * sizeof(int32_t));
    w.sel = malloc((size_t)o.NB);
    w.hot = malloc((size_t)o.T * o.NB);
    w.sorted = malloc((size_t)o.NB * sizeof(float));
    um = malloc((size_t)o.T * o.NB * sizeof(float));
    ub = malloc((size_t)o.T * o.NB * sizeof(float));
    heat = calloc((size_t)o.L * o.T * o.NB, sizeof(float));
    layers = calloc((size_t)o.L, sizeof *layers);
    kvh = calloc((size_t)o.L * o.G, sizeof *kvh);
    chunk = malloc((size_t)n_ctx * sizeof *chunk);
    if (!o.keys || !o.smn || !o.smx || !o.n_final || !o.mass || !o.bound || !o.tmn || !o.tmx || !w.score || !w.ema ||
        !w.idx || !w.sel || !w.hot || !w.sorted || !um || !ub || !heat || !layers || !kvh || !chunk) {
        fprintf(stderr, "pam locality: out of memory (%ld tokens of context over %d layers)\n", n_ctx, o.L);
        goto done;
    }
    if (trace_out) {
        chunk_mass = malloc((size_t)o.L * o.T * o.NB * sizeof(float));
        if (!chunk_mass) {
            fprintf(stderr, "pam locality: out of memory (trace of %ld tokens over %d layers)\n", n_ctx, o.L);
            goto done;
        }
        if (pam_loctrace_writer_open(trace_out, o.L, o.bt, o.T, (int32_t)n_chunks, &lt) != PAM_OK) {
            fprintf(stderr, "pam locality: %s\n", pam_last_error());
            goto done;
        }
    }
    pam_kvm_observer obs = {.user = &o, .on_store = obs_store, .on_attend = obs_attend};
    pam_kvm_set_observer(kvm, &obs);

    for (long c = 0; c < n_chunks; c++) {
        memcpy(chunk, ids + (size_t)c * (size_t)n_ctx, (size_t)n_ctx * sizeof *chunk);
        if (add_bos) chunk[0] = pam_tokenizer_bos(tk);
        memset(o.n_final, 0, (size_t)o.L * sizeof(int32_t));
        pam_ctx *ctx = NULL;
        pam_ctx_params cp;
        pam_ctx_params_default(&cp);
        cp.n_ctx = (int32_t)n_ctx;
        cp.kvm = kvm;
        pam_status st = pam_ctx_create_ex(model, &cp, pool, &ctx);
        if (st == PAM_OK) st = pam_forward(ctx, chunk, (int32_t)n_ctx, 0, NULL, 0);
        if (st == PAM_OK) st = pam_kvm_step_end(kvm);
        pam_ctx_free(ctx);
        if (st != PAM_OK || o.bad) {
            fprintf(stderr, "pam locality: chunk %ld: %s\n", c + 1,
                    st != PAM_OK ? pam_last_error() : "the KV manager reported attention of an unexpected shape");
            goto done;
        }
        for (int32_t l = 0; l < o.L; l++) {
            /* layer level: mean over KV heads of the group means; the bound
             * score of a block is its best over the KV heads, each relative
             * to that head's best block (heads' scores are not comparable) */
            for (int32_t t = 0; t < o.T; t++) {
                int32_t nb = t / o.bt + 1;
                for (int32_t b = 0; b < o.NB; b++) um[(size_t)t * o.NB + b] = 0, ub[(size_t)t * o.NB + b] = -INFINITY;
                for (int32_t g = 0; g < o.G; g++) {
                    const float *m = o.mass + (((size_t)l * o.T + t) * o.G + g) * o.NB;
                    const float *bd = o.bound + (((size_t)l * o.T + t) * o.G + g) * o.NB;
                    float top = -INFINITY;
                    for (int32_t b = 0; b < nb; b++) top = bd[b] > top ? bd[b] : top;
                    for (int32_t b = 0; b < nb; b++) {
                        um[(size_t)t * o.NB + b] += m[b] / (float)o.G;
                        float rel = bd[b] - top;
                        if (rel > ub[(size_t)t * o.NB + b]) ub[(size_t)t * o.NB + b] = rel;
                    }
                }
            }
            analyze_unit(&layers[l], um, ub, o.T, o.NB, o.bt, &w);
            if (c == 0) memcpy(heat + (size_t)l * o.T * o.NB, um, (size_t)o.T * o.NB * sizeof(float));
            if (chunk_mass) memcpy(chunk_mass + (size_t)l * o.T * o.NB, um, (size_t)o.T * o.NB * sizeof(float));
            for (int32_t g = 0; g < o.G; g++) {
                for (int32_t t = 0; t < o.T; t++) {
                    size_t at = (((size_t)l * o.T + t) * o.G + g) * o.NB;
                    memcpy(um + (size_t)t * o.NB, o.mass + at, (size_t)o.NB * sizeof(float));
                    memcpy(ub + (size_t)t * o.NB, o.bound + at, (size_t)o.NB * sizeof(float));
                }
                analyze_unit(&kvh[(size_t)l * o.G + g], um, ub, o.T, o.NB, o.bt, &w);
            }
        }
        /* the trace's order: step, then layer */
        for (int32_t t = 0; lt && t < o.T; t++) {
            for (int32_t l = 0; l < o.L; l++) {
                if (pam_loctrace_add(lt, chunk_mass + ((size_t)l * o.T + t) * o.NB, t / o.bt + 1) != PAM_OK) {
                    fprintf(stderr, "pam locality: %s\n", pam_last_error());
                    goto done;
                }
            }
        }
        if (!json) fprintf(stderr, "\rchunk %ld/%ld", c + 1, n_chunks);
    }
    if (!json) fprintf(stderr, "\n");
    if (lt) {
        pam_status ts = pam_loctrace_finish(lt);
        lt = NULL;
        if (ts != PAM_OK) {
            fprintf(stderr, "pam locality: %s\n", pam_last_error());
            goto done;
        }
    }
    for (int32_t l = 0; l < o.L; l++) stats_finish(&layers[l]);
    for (int32_t u = 0; u < o.L * o.G; u++) stats_finish(&kvh[u]);
    loc_report r = {.model = model_path,
                    .text = text_path,
                    .n_layer = o.L,
                    .n_head = hp->n_head,
                    .n_head_kv = o.G,
                    .block_tokens = o.bt,
                    .ctx = o.T,
                    .min_blocks = MIN_BLOCKS,
                    .recent_blocks = RECENT_BLOCKS,
                    .n_chunks = n_chunks,
                    .text_tokens = n_ids,
                    .layers = layers,
                    .kv_heads = kvh,
                    .n_blocks = o.NB,
                    .heat = heat};
    stats_mean(&r.overall, layers, o.L);
    if (json)
        print_json(&r);
    else
        print_tables(&r);
    if (svg) {
        int bad = loc_write_svg(svg, &r) != 0;
        bad |= fclose(svg) != 0;
        svg = NULL;
        if (bad) {
            fprintf(stderr, "pam locality: writing '%s' failed\n", svg_path);
            goto done;
        }
    }
    rc = 0;
done:
    if (svg) fclose(svg);
    free(o.keys), free(o.smn), free(o.smx), free(o.n_final), free(o.mass), free(o.bound), free(o.tmn), free(o.tmx);
    free(w.score), free(w.ema), free(w.idx), free(w.sel), free(w.hot), free(w.sorted);
    free(um), free(ub), free(heat), free(layers), free(kvh), free(chunk), free(ids), free(chunk_mass);
    pam_loctrace_writer_abort(lt);
    pam_kvm_destroy(kvm);
    if (trace) fclose(trace);
    pam_pool_destroy(pool);
    pam_model_free(model);
    return rc;
}
