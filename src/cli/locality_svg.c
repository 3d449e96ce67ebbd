/* The `pam locality` picture: per-layer heatmaps of where each step's
 * attention mass goes (the first chunk), how much of a step's mass each
 * predictor captures by budget, how concentrated each layer is, and how
 * stable its hot set stays. Plain SVG 1.1, no scripts or external files. */
#include <math.h>
#include <stdio.h>

#include "cli/locality.h"

#define W 1120
#define PAD 40

static const char *const pred_color[LOC_N_PRED] = {"#111111", "#e6550d", "#9ecae1", "#4292c6",
                                                   "#08519c", "#31a354", "#6a51a3", "#d62728"};
static const char *const pred_dash[LOC_N_PRED] = {"6,3", "", "", "", "", "", "2,2", ""};
static const char *const layer_color[8] = {"#1b9e77", "#d95f02", "#7570b3", "#e7298a",
                                           "#66a61e", "#e6ab02", "#a6761d", "#666666"};

/* viridis, five stops, t in [0, 1] */
static void viridis(double t, int *r, int *g, int *b) {
    static const double st[5][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    double x = t * 4;
    int i = (int)x;
    if (i > 3) i = 3;
    double f = x - i;
    *r = (int)(st[i][0] + f * (st[i + 1][0] - st[i][0]) + 0.5);
    *g = (int)(st[i][1] + f * (st[i + 1][1] - st[i][1]) + 0.5);
    *b = (int)(st[i][2] + f * (st[i + 1][2] - st[i][2]) + 0.5);
}

static void text(FILE *f, double x, double y, int size, const char *anchor, const char *weight, const char *s) {
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"%d\" text-anchor=\"%s\" font-weight=\"%s\">%s</text>\n", x, y,
            size, anchor, weight, s);
}

/* Heatmaps: x = step, y = block (the sink at the bottom), colour = log10 of
 * the block's share of the step's mass (mean over heads). */
static void heatmaps(FILE *f, const loc_report *r, double y0, double h) {
    int L = r->n_layer;
    double gap = 16, w = (W - 2 * PAD - gap * (L - 1) - 60) / L;
    int T = r->ctx, NB = r->n_blocks, bin = 1;
    while (T / bin > 160) bin *= 2;
    int cols = (T + bin - 1) / bin;
    double cw = w / cols, chh = h / NB;
    for (int l = 0; l < L; l++) {
        double x0 = PAD + l * (w + gap);
        char s[64];
        snprintf(s, sizeof s, "layer %d", l);
        text(f, x0 + w / 2, y0 - 6, 12, "middle", "bold", s);
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#f4f4f4\"/>\n", x0, y0, w, h);
        for (int c = 0; c < cols; c++)
            for (int b = 0; b < NB; b++) {
                double m = 0;
                int n = 0;
                for (int t = c * bin; t < (c + 1) * bin && t < T; t++)
                    if (t / r->block_tokens >= b) m += r->heat[((size_t)l * T + t) * NB + b], n++;
                if (!n) continue;
                m /= n;
                int R, G, B;
                viridis((log10(m > 1e-4 ? m : 1e-4) + 4) / 4, &R, &G, &B);
                fprintf(f, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"#%02x%02x%02x\"/>\n",
                        x0 + c * cw, y0 + h - (b + 1) * chh, cw + 0.3, chh + 0.3, R, G, B);
            }
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#333\"/>\n", x0,
                y0, w, h);
        snprintf(s, sizeof s, "step (token) 0..%d", T - 1);
        text(f, x0 + w / 2, y0 + h + 14, 10, "middle", "normal", s);
        if (l == 0) {
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" text-anchor=\"middle\" "
                       "transform=\"rotate(-90 %.1f %.1f)\">block (sink at bottom)</text>\n",
                    x0 - 8, y0 + h / 2, x0 - 8, y0 + h / 2);
        }
    }
    /* colour bar */
    double bx = W - PAD - 40, bw = 12;
    for (int i = 0; i < 40; i++) {
        int R, G, B;
        viridis(i / 39.0, &R, &G, &B);
        fprintf(f, "<rect x=\"%.1f\" y=\"%.2f\" width=\"%.1f\" height=\"%.2f\" fill=\"#%02x%02x%02x\"/>\n", bx,
                y0 + h - (i + 1) * h / 40, bw, h / 40 + 0.3, R, G, B);
    }
    const char *lab[5] = {"0.01%", "0.1%", "1%", "10%", "100%"};
    for (int i = 0; i < 5; i++) text(f, bx + bw + 3, y0 + h - i * h / 4 + 4, 9, "start", "normal", lab[i]);
    text(f, bx + 6, y0 - 6, 10, "middle", "normal", "mass");
}

static void axes(FILE *f, double x0, double y0, double w, double h, const char *title, const char *xlab) {
    text(f, x0 + w / 2, y0 - 8, 12, "middle", "bold", title);
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#333\"/>\n", x0, y0, w,
            h);
    for (int i = 0; i <= 4; i++) {
        double y = y0 + h - i * h / 4;
        char s[32];
        snprintf(s, sizeof s, "%d%%", i * 25);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", x0, y, x0 + w, y);
        text(f, x0 - 4, y + 3, 9, "end", "normal", s);
    }
    text(f, x0 + w / 2, y0 + h + 26, 10, "middle", "normal", xlab);
}

/* Captured share of a step's mass against the budget, one line per predictor. */
static void capture_chart(FILE *f, const loc_report *r, double x0, double y0, double w, double h) {
    axes(f, x0, y0, w, h, "mass captured with a budget of blocks", "budget (share of blocks, log scale)");
    double lx[LOC_N_BUD];
    for (int i = 0; i < LOC_N_BUD; i++) {
        lx[i] = x0 + 10 + (w - 20) * i / (LOC_N_BUD - 1);
        char s[32];
        snprintf(s, sizeof s, "%g%%", loc_budget_pct[i]);
        text(f, lx[i], y0 + h + 13, 9, "middle", "normal", s);
    }
    for (int p = 0; p < LOC_N_PRED; p++) {
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" stroke-dasharray=\"%s\" points=\"",
                pred_color[p], pred_dash[p]);
        for (int i = 0; i < LOC_N_BUD; i++) fprintf(f, "%.1f,%.1f ", lx[i], y0 + h - h * r->overall.cap[p][i]);
        fprintf(f, "\"/>\n");
        for (int i = 0; i < LOC_N_BUD; i++)
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"%s\"/>\n", lx[i],
                    y0 + h - h * r->overall.cap[p][i], pred_color[p]);
    }
    /* legend, right of the chart */
    for (int p = 0; p < LOC_N_PRED; p++) {
        double ly = y0 + 10 + p * 15;
        fprintf(f,
                "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\" "
                "stroke-dasharray=\"%s\"/>\n",
                x0 + w + 8, ly, x0 + w + 26, ly, pred_color[p], pred_dash[p]);
        char s[64];
        snprintf(s, sizeof s, "%s %.0f%%", loc_pred_names[p], 100 * r->overall.cap[p][2]);
        text(f, x0 + w + 30, ly + 3, 10, "start", "normal", s);
    }
    text(f, x0 + w + 8, y0 + 10 + LOC_N_PRED * 15 + 4, 9, "start", "normal", "(value at 25%)");
}

/* Per layer: share of mass in the top 10% of blocks, the sink, the recent window. */
static void concentration_chart(FILE *f, const loc_report *r, double x0, double y0, double w, double h) {
    axes(f, x0, y0, w, h, "where the mass is, per layer", "layer");
    static const char *const col[3] = {"#3182bd", "#fd8d3c", "#74c476"};
    static const char *const name[3] = {"top 10% of blocks", "sink (block 0)", "2 newest blocks"};
    int L = r->n_layer;
    double gw = w / (L + 1), bw = gw / 4;
    for (int l = 0; l <= L; l++) {
        const loc_stats *s = l < L ? &r->layers[l] : &r->overall;
        double v[3] = {s->top[2], s->sink, s->recent};
        double gx = x0 + gw * l + gw / 8;
        for (int k = 0; k < 3; k++)
            fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/>\n", gx + k * bw,
                    y0 + h - h * v[k], bw - 1, h * v[k], col[k]);
        char t[32];
        if (l < L)
            snprintf(t, sizeof t, "%d", l);
        else
            snprintf(t, sizeof t, "all");
        text(f, gx + 1.5 * bw, y0 + h + 13, 9, "middle", "normal", t);
    }
    for (int k = 0; k < 3; k++) { /* legend in a row under the axis */
        double lx = x0 - 20 + k * (w / 3 + 12);
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"10\" height=\"10\" fill=\"%s\"/>\n", lx, y0 + h + 36,
                col[k]);
        text(f, lx + 13, y0 + h + 45, 9, "start", "normal", name[k]);
    }
}

/* Per layer: Jaccard overlap of the top-10% sets of step t and t+d. */
static void stability_chart(FILE *f, const loc_report *r, double x0, double y0, double w, double h) {
    axes(f, x0, y0, w, h, "hot-set stability (top 10%)", "steps ahead (Jaccard of t and t+d)");
    double lx[LOC_N_LAG];
    for (int i = 0; i < LOC_N_LAG; i++) {
        lx[i] = x0 + 14 + (w - 28) * i / (LOC_N_LAG - 1);
        char s[32];
        snprintf(s, sizeof s, "+%d", loc_lags[i]);
        text(f, lx[i], y0 + h + 13, 9, "middle", "normal", s);
    }
    for (int l = 0; l < r->n_layer; l++) {
        const char *c = layer_color[l % 8];
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", c);
        for (int i = 0; i < LOC_N_LAG; i++) {
            double v = isnan(r->layers[l].jac[i]) ? 0 : r->layers[l].jac[i];
            fprintf(f, "%.1f,%.1f ", lx[i], y0 + h - h * v);
        }
        fprintf(f, "\"/>\n");
        char s[32];
        snprintf(s, sizeof s, "layer %d", l);
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"10\" height=\"3\" fill=\"%s\"/>\n", x0 + w - 62,
                y0 + 14 + l * 13 - 4, c);
        text(f, x0 + w - 48, y0 + 14 + l * 13, 10, "start", "normal", s);
    }
}

int loc_write_svg(FILE *f, const loc_report *r) {
    double hh = 170, y_heat = 70, y_charts = y_heat + hh + 70, ch = 200;
    double H = y_charts + ch + 66;
    fprintf(f,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%.0f\" viewBox=\"0 0 %d %.0f\" "
            "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            W, H, W, H);
    char s[512];
    snprintf(s, sizeof s, "Attention locality: %d layers, %d KV blocks of %d tokens, %ld chunks of %d tokens", r->n_layer,
             r->n_blocks, r->block_tokens, r->n_chunks, r->ctx);
    text(f, PAD, 24, 16, "start", "bold", s);
    snprintf(s, sizeof s,
             "Top: each block's share of the attention mass at every step of the first chunk (mean over heads). "
             "Below: means over steps with at least %d blocks, all chunks.",
             r->min_blocks);
    text(f, PAD, 44, 11, "start", "normal", s);
    heatmaps(f, r, y_heat, hh);
    capture_chart(f, r, PAD + 10, y_charts, 300, ch);
    concentration_chart(f, r, PAD + 470, y_charts, 270, ch);
    stability_chart(f, r, PAD + 790, y_charts, 250, ch);
    fprintf(f, "</svg>\n");
    return ferror(f) ? -1 : 0;
}
