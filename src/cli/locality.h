/* `pam locality` results, shared by the analysis (locality.c) and its SVG
 * picture (locality_svg.c). */
#ifndef PAM_CLI_LOCALITY_H
#define PAM_CLI_LOCALITY_H

#include <stdint.h>
#include <stdio.h>

#define LOC_N_TOP 4  /* shares of mass in the top 1, 5, 10, 25% of blocks */
#define LOC_N_LAG 3  /* hot-set Jaccard between step t and t+1, t+16, t+64 */
#define LOC_N_BUD 4  /* budgets: 6.25, 12.5, 25, 50% of the blocks */
#define LOC_N_PRED 8 /* predictors, see loc_pred_names */

extern const double loc_top_pct[LOC_N_TOP];
extern const int loc_lags[LOC_N_LAG];
extern const double loc_budget_pct[LOC_N_BUD];
extern const char *const loc_pred_names[LOC_N_PRED];

/* Means over the measured steps of one unit: a layer (mass averaged over all
 * its query heads, as the KV manager's importance is) or one KV head of a
 * layer (averaged over the query heads of its group). */
typedef struct loc_stats {
    double n_steps;
    double top[LOC_N_TOP];
    double sink, recent;
    double jac[LOC_N_LAG], n_jac[LOC_N_LAG];
    double cap[LOC_N_PRED][LOC_N_BUD];
} loc_stats;

typedef struct loc_report {
    const char *model, *text;
    int32_t n_layer, n_head, n_head_kv, block_tokens, ctx, min_blocks, recent_blocks;
    long n_chunks;
    size_t text_tokens;
    loc_stats overall;
    loc_stats *layers;   /* [n_layer] */
    loc_stats *kv_heads; /* [n_layer][n_head_kv] */
    /* the first chunk's layer-level mass, [n_layer][ctx][n_blocks], for the
     * picture (block b of step t; 0 for blocks not yet written) */
    int32_t n_blocks;
    const float *heat;
} loc_report;

/* Writes the picture (a self-contained SVG document). */
int loc_write_svg(FILE *f, const loc_report *r);

#endif
