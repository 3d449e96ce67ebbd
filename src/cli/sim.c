/* pam sim: the PAM hardware simulated, driven by the engine's scheduler
 * (src/sim/, docs/SIM.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "core/status.h"
#include "sim/sim.h"

#define SIM_MAX_SYSTEMS 8

static void sim_usage(FILE *f) {
    fprintf(f,
            "usage: pam sim [options]\n"
            "\n"
            "Simulates serving on GPUs with processing-in-memory in HBM, DDR and SSD (pam), against\n"
            "KV offloading over PCIe (offload) and all KV in GPU memory (gpu); KV placement by the\n"
            "engine's own scheduler. Parameters and their sources: --dump-config, docs/SIM.md.\n"
            "\n"
            "  --config FILE       hardware (the --dump-config format; default: built in)\n"
            "  --dump-config       print the hardware configuration as JSON and exit\n"
            "  --model NAME|GGUF   %s, or a GGUF file's shape (default llama-3-70b)\n"
            "  --systems LIST      comma-separated: %s\n"
            "                      (default gpu,offload,pam)\n"
            "  --batch N           closed batch: sequences decoded together (default 64)\n"
            "  --context N         closed batch: tokens of context each (default 32768)\n"
            "  --steps N           closed batch: timed steps (default 32, after --warmup, default 16)\n"
            "  --rate R            a request stream instead: Poisson arrivals per second\n"
            "  --duration S        simulated seconds of the stream (default 60)\n"
            "  --input-mean N      prompt tokens, uniform in [N/2, 3N/2] (default 1024)\n"
            "  --output-mean N     output tokens, likewise (default 256)\n"
            "  --seed N            request stream and block importance seed (default 1)\n"
            "  --trace FILE        importance from a --kv-trace file (default: a built-in profile)\n"
            "  --json              print a JSON array of records instead of tables\n"
            "  --svg FILE          plots: throughput vs batch and vs context, energy breakdown\n",
            pam_sim_shape_names(), pam_sim_system_names());
}

typedef struct sim_opts {
    const char *config, *model, *trace, *svg;
    pam_sim_system systems[SIM_MAX_SYSTEMS];
    int n_systems, json, dump;
    long batch, context, steps, warmup, seed;
    double rate, duration, input_mean, output_mean;
} sim_opts;

static int sim_parse_systems(const char *s, sim_opts *o) {
    o->n_systems = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (o->n_systems == SIM_MAX_SYSTEMS) return 0;
        if (pam_sim_system_parse(tok, &o->systems[o->n_systems]) != PAM_OK) return 0;
        for (int i = 0; i < o->n_systems; i++)
            if (!strcmp(o->systems[i].name, tok)) return 0;
        o->n_systems++;
    }
    return o->n_systems > 0;
}

static void sim_params(const sim_opts *o, const pam_sim_config *cfg, const pam_sim_shape *shape,
                       const pam_sim_locality *loc, const pam_sim_system *sys, pam_sim_params *p) {
    memset(p, 0, sizeof *p);
    p->cfg = cfg;
    p->shape = shape;
    p->locality = loc;
    p->sys = *sys;
    p->batch = o->batch;
    p->context = o->context;
    p->steps = o->steps;
    p->warmup = o->warmup;
    p->rate = o->rate;
    p->duration_s = o->duration;
    p->input_mean = o->input_mean;
    p->output_mean = o->output_mean;
    p->seed = (uint64_t)o->seed;
}

/* ---- output ---------------------------------------------------------------- */

static void json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') putchar('\\');
        if ((unsigned char)*s >= 0x20) putchar(*s);
    }
    putchar('"');
}

static void print_json(const sim_opts *o, const pam_sim_config *cfg, const pam_sim_shape *shape, const pam_sim_result *r,
                       int n) {
    printf("[");
    for (int i = 0; i < n; i++) {
        const pam_sim_result *x = &r[i];
        printf("%s\n  {\"model\": ", i ? "," : "");
        json_str(x->model);
        printf(", \"system\": ");
        json_str(x->system);
        printf(", \"weight_bytes\": %.0f, \"params\": %.0f, \"kv_bytes_per_token\": %.0f", shape->weight_bytes, shape->params,
               pam_sim_shape_kv_bytes_per_token(shape, cfg->kv_bytes_per_elem));
        printf(", \"mode\": \"%s\", \"seed\": %ld, \"ok\": %s, \"note\": ", o->rate > 0 ? "stream" : "batch", o->seed,
               x->ok ? "true" : "false");
        json_str(x->note);
        printf(", \"tokens_per_second\": %.6g, \"tpot_ms\": %.6g, \"joules_per_token\": %.6g, \"batch\": %.6g, "
               "\"context\": %.6g, \"max_batch\": %.6g",
               x->tokens_per_second, x->tpot_ms, x->joules_per_token, x->batch, x->context, x->max_batch);
        if (o->rate > 0)
            printf(", \"ttft_ms\": %.6g, \"requests_arrived\": %.0f, \"requests_done\": %.0f, \"sim_seconds\": %.6g",
                   x->ttft_ms, x->requests_arrived, x->requests_done, x->sim_seconds);
        printf(", \"steps\": %.0f, \"step_ms\": {\"dense\": %.6g, \"attention\": %.6g, \"comm\": %.6g, \"merge\": %.6g, "
               "\"allreduce\": %.6g, \"copy\": %.6g, \"migrate\": %.6g, \"prefill\": %.6g}",
               x->steps, x->dense_s * 1e3, x->attn_s * 1e3, x->comm_s * 1e3, x->merge_s * 1e3, x->allreduce_s * 1e3,
               x->copy_s * 1e3, x->migrate_s * 1e3, x->prefill_s * 1e3);
        printf(", \"gpu_busy\": %.6g, \"tiers\": [", x->gpu_busy);
        for (int t = 0; t < x->n_tiers; t++) {
            printf("%s{\"device\": ", t ? ", " : "");
            json_str(x->tier_name[t]);
            printf(", \"busy\": %.6g, \"kv_share\": %.6g}", x->tier_busy[t], x->tier_kv_share[t]);
        }
        printf("], \"energy_per_token_j\": {\"gpu\": %.6g, \"reduction_units\": %.6g", x->e_gpu, x->e_ru);
        for (int d = 0; d < cfg->n_dev; d++)
            if (x->e_dev[d] > 0) {
                printf(", ");
                json_str(cfg->dev[d].name);
                printf(": %.6g", x->e_dev[d]);
            }
        for (int l = 0; l < cfg->n_link; l++)
            if (x->e_link[l] > 0) {
                printf(", ");
                json_str(cfg->link[l].name);
                printf(": %.6g", x->e_link[l]);
            }
        printf("}, \"migrations\": %.0f, \"migrated_gb\": %.6g}", x->migrations, x->migrated_gb);
    }
    printf("\n]\n");
}

static void print_table(const sim_opts *o, const pam_sim_config *cfg, const pam_sim_result *r, int n) {
    printf("| system         |     tok/s | TPOT ms |    J/tok | batch | max batch | context | dense ms | attn ms | "
           "comm ms | copy ms | migr ms |%s\n",
           o->rate > 0 ? " TTFT ms | done |" : "");
    printf("|----------------|-----------|---------|----------|-------|-----------|---------|----------|---------|"
           "---------|---------|---------|%s\n",
           o->rate > 0 ? "---------|------|" : "");
    for (int i = 0; i < n; i++) {
        const pam_sim_result *x = &r[i];
        if (!x->ok) {
            printf("| %-14s | %s |\n", x->system, x->note);
            continue;
        }
        printf("| %-14s | %9.1f | %7.2f | %8.3f | %5.0f | %9.0f | %7.0f | %8.2f | %7.2f | %7.2f | %7.2f | %7.2f |",
               x->system, x->tokens_per_second, x->tpot_ms, x->joules_per_token, x->batch, x->max_batch, x->context,
               x->dense_s * 1e3, x->attn_s * 1e3, x->comm_s * 1e3, x->copy_s * 1e3, x->migrate_s * 1e3);
        if (o->rate > 0) printf(" %7.1f | %4.0f |", x->ttft_ms, x->requests_done);
        if (x->note[0]) printf(" %s", x->note);
        printf("\n");
    }
    printf("\n| system         | device     | KV share | busy  |\n|----------------|------------|----------|-------|\n");
    for (int i = 0; i < n; i++) {
        const pam_sim_result *x = &r[i];
        if (!x->ok) continue;
        printf("| %-14s | %-10s |          | %4.0f%% |\n", x->system, "GPU", 100 * x->gpu_busy);
        for (int t = 0; t < x->n_tiers; t++)
            printf("| %-14s | %-10s | %7.1f%% | %4.0f%% |\n", x->system, x->tier_name[t], 100 * x->tier_kv_share[t],
                   100 * x->tier_busy[t]);
    }
    printf("\nenergy per token (J): gpu, reduction units, devices, links\n");
    for (int i = 0; i < n; i++) {
        const pam_sim_result *x = &r[i];
        if (!x->ok) continue;
        printf("  %-14s gpu %.4f  ru %.4f", x->system, x->e_gpu, x->e_ru);
        for (int d = 0; d < cfg->n_dev; d++)
            if (x->e_dev[d] > 0) printf("  %s %.4f", cfg->dev[d].name, x->e_dev[d]);
        for (int l = 0; l < cfg->n_link; l++)
            if (x->e_link[l] > 0) printf("  %s %.4f", cfg->link[l].name, x->e_link[l]);
        printf("\n");
    }
    fflush(stdout);
}

/* ---- plots ------------------------------------------------------------------ */

static const char *sim_colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
                                   "#7f7f7f", "#17becf", "#bcbd22", "#393b79", "#637939"};

#define SIM_SWEEP 8

/* A line panel on log2 x, y from 0: one line per system. */
static void svg_lines(FILE *f, double x0, double y0, double w, double h, const char *title, const char *xlabel,
                      const double *xs, int nx, double ys[][SIM_SWEEP], const sim_opts *o) {
    double ymax = 0;
    for (int s = 0; s < o->n_systems; s++)
        for (int i = 0; i < nx; i++)
            if (ys[s][i] > ymax) ymax = ys[s][i];
    if (ymax <= 0) ymax = 1;
    double pl = 70, pr = 10, pt = 26, pb = 34, px = x0 + pl, py = y0 + pt, pw = w - pl - pr, ph = h - pt - pb;
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"13\">%s</text>\n", px, y0 + 16, title);
    for (int g = 0; g <= 4; g++) {
        double y = py + ph - ph * g / 4.0;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#cccccc\"/>\n", px, y, px + pw, y);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" text-anchor=\"end\">%.*f</text>\n", px - 4, y + 3,
                ymax >= 100 ? 0 : 2, ymax * g / 4.0);
    }
    double dx = nx > 1 ? pw / (nx - 1) : 0;
    for (int i = 0; i < nx; i++)
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" text-anchor=\"middle\">%.0f</text>\n", px + dx * i,
                py + ph + 14, xs[i]);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" text-anchor=\"middle\">%s</text>\n", px + pw / 2,
            py + ph + 28, xlabel);
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#000000\"/>\n", px,
            py, pw, ph);
    for (int s = 0; s < o->n_systems; s++) {
        fprintf(f, "<polyline fill=\"none\" stroke-width=\"2\" stroke=\"%s\" points=\"", sim_colors[s]);
        for (int i = 0; i < nx; i++)
            fprintf(f, "%s%.1f,%.1f", i ? " " : "", px + dx * i, py + ph - ph * ys[s][i] / ymax);
        fprintf(f, "\"/>\n");
        for (int i = 0; i < nx; i++)
            if (ys[s][i] > 0)
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", px + dx * i,
                        py + ph - ph * ys[s][i] / ymax, sim_colors[s]);
    }
}

static pam_status write_svg(const sim_opts *o, const pam_sim_config *cfg, const pam_sim_shape *shape,
                            const pam_sim_locality *loc, const pam_sim_result *res) {
    /* sweeps: batch at the given context, context at the given batch (closed batches) */
    double bx[SIM_SWEEP], cx[SIM_SWEEP], by[SIM_MAX_SYSTEMS][SIM_SWEEP], cy[SIM_MAX_SYSTEMS][SIM_SWEEP];
    sim_opts so = *o;
    so.rate = 0;
    if (so.steps > 8) so.steps = 8;
    if (so.warmup > 8) so.warmup = 8;
    /* halvings of the given batch and context, at most SIM_SWEEP distinct points */
    int nb = 0, nc = 0;
    for (long b = o->batch; b >= 1 && nb < SIM_SWEEP; b /= 2) bx[nb++] = (double)b;
    for (long x = o->context >= 16 ? o->context : 16; x >= 16 && nc < SIM_SWEEP; x /= 2) cx[nc++] = (double)x;
    for (int i = 0; i < nb / 2; i++) {
        double t = bx[i];
        bx[i] = bx[nb - 1 - i];
        bx[nb - 1 - i] = t;
    }
    for (int i = 0; i < nc / 2; i++) {
        double t = cx[i];
        cx[i] = cx[nc - 1 - i];
        cx[nc - 1 - i] = t;
    }
    for (int s = 0; s < o->n_systems; s++) {
        for (int i = 0; i < SIM_SWEEP; i++) {
            by[s][i] = cy[s][i] = 0;
            if (i >= nb && i >= nc) continue;
            pam_sim_params p;
            pam_sim_result r;
            if (i < nb) {
                so.batch = (long)bx[i];
                so.context = o->context;
                sim_params(&so, cfg, shape, loc, &o->systems[s], &p);
                PAM_TRY(pam_sim_run(&p, &r));
                by[s][i] = r.ok ? r.tokens_per_second : 0;
            }
            if (i < nc) {
                so.batch = o->batch;
                so.context = (long)cx[i];
                sim_params(&so, cfg, shape, loc, &o->systems[s], &p);
                PAM_TRY(pam_sim_run(&p, &r));
                cy[s][i] = r.ok ? r.tokens_per_second : 0;
            }
        }
    }
    FILE *f = fopen(o->svg, "w");
    if (!f) return PAM_ERR(PAM_ERR_IO, "cannot write the plot '%s'", o->svg);
    double W = 1000, H = 640;
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"#ffffff\"/>\n"
            "<text x=\"10\" y=\"20\" font-size=\"15\">pam sim: %s</text>\n",
            W, H, shape->name);
    char title[128];
    snprintf(title, sizeof title, "tokens/s vs batch (context %ld; capped at what fits)", o->context);
    svg_lines(f, 0, 30, 480, 290, title, "batch", bx, nb, by, o);
    snprintf(title, sizeof title, "tokens/s vs context (batch %ld, capped at what fits)", o->batch);
    svg_lines(f, 500, 30, 480, 290, title, "context tokens", cx, nc, cy, o);
    for (int s = 0; s < o->n_systems; s++) {
        fprintf(f, "<rect x=\"%d\" y=\"330\" width=\"12\" height=\"6\" fill=\"%s\"/>\n", 70 + 115 * s, sim_colors[s]);
        fprintf(f, "<text x=\"%d\" y=\"337\" font-size=\"11\">%s</text>\n", 86 + 115 * s, o->systems[s].name);
    }
    /* energy per token: one stacked bar per system */
    double emax = 0;
    for (int s = 0; s < o->n_systems; s++)
        if (res[s].ok && res[s].joules_per_token > emax) emax = res[s].joules_per_token;
    if (emax <= 0) emax = 1;
    double px = 70, py = 380, pw = 600, ph = 220, bw = pw / (o->n_systems * 1.5 + 0.5);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"13\">energy per token (J), by device and link (batch %ld, "
            "context %ld)</text>\n", px, py - 12, o->batch, o->context);
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#000000\"/>\n", px,
            py, pw, ph);
    for (int g = 0; g <= 4; g++)
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" text-anchor=\"end\">%.3g</text>\n", px - 4,
                py + ph - ph * g / 4.0 + 3, emax * g / 4.0);
    /* parts: gpu, ru, each device, each link */
    int n_parts = 2 + cfg->n_dev + cfg->n_link;
    for (int s = 0; s < o->n_systems; s++) {
        const pam_sim_result *r = &res[s];
        double x = px + bw * (0.5 + 1.5 * s), y = py + ph;
        for (int k = 0; r->ok && k < n_parts; k++) {
            double v = k == 0 ? r->e_gpu : k == 1 ? r->e_ru : k < 2 + cfg->n_dev ? r->e_dev[k - 2] : r->e_link[k - 2 - cfg->n_dev];
            double hh = ph * v / emax;
            if (hh <= 0) continue;
            y -= hh;
            fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/>\n", x, y, bw, hh,
                    sim_colors[k % 12]);
        }
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"9\" text-anchor=\"middle\">%s</text>\n", x + bw / 2,
                py + ph + 14, o->systems[s].name);
    }
    for (int k = 0; k < n_parts; k++) {
        const char *name = k == 0 ? "GPU" : k == 1 ? "reduction units" : k < 2 + cfg->n_dev ? cfg->dev[k - 2].name
                                                                                          : cfg->link[k - 2 - cfg->n_dev].name;
        fprintf(f, "<rect x=\"700\" y=\"%d\" width=\"12\" height=\"8\" fill=\"%s\"/>\n", 378 + 16 * k,
                sim_colors[k % 12]);
        fprintf(f, "<text x=\"716\" y=\"%d\" font-size=\"11\">%s</text>\n", 386 + 16 * k, name);
    }
    fprintf(f, "</svg>\n");
    if (fclose(f) != 0) return PAM_ERR(PAM_ERR_IO, "cannot write the plot '%s'", o->svg);
    return PAM_OK;
}

int pam_cli_sim(int argc, char **argv) {
    sim_opts o = {.model = "llama-3-70b", .batch = 64, .context = 32768, .steps = 32, .warmup = 16, .seed = 1,
                  .duration = 60, .input_mean = 1024, .output_mean = 256};
    sim_parse_systems("gpu,offload,pam", &o);
    pam_args a;
    pam_args_init(&a, argc, argv, "pam sim");
    while (pam_args_next(&a)) {
        if (pam_args_is(&a, "-h", "--help")) {
            sim_usage(stdout);
            return 0;
        } else if (pam_args_is(&a, NULL, "--config")) {
            o.config = pam_args_value(&a);
        } else if (pam_args_is(&a, NULL, "--dump-config")) {
            o.dump = 1;
        } else if (pam_args_is(&a, "-m", "--model")) {
            o.model = pam_args_value(&a);
        } else if (pam_args_is(&a, NULL, "--systems")) {
            const char *v = pam_args_value(&a);
            if (v && !sim_parse_systems(v, &o)) {
                fprintf(stderr, "pam sim: --systems expects a comma-separated list of %s (each once, at most %d), "
                                "got '%s'\n", pam_sim_system_names(), SIM_MAX_SYSTEMS, v);
                a.failed = 1;
            }
        } else if (pam_args_is(&a, NULL, "--batch")) {
            pam_args_long(&a, 1, 1L << 20, &o.batch);
        } else if (pam_args_is(&a, NULL, "--context")) {
            pam_args_long(&a, 0, 1L << 26, &o.context);
        } else if (pam_args_is(&a, NULL, "--steps")) {
            pam_args_long(&a, 1, 1L << 20, &o.steps);
        } else if (pam_args_is(&a, NULL, "--warmup")) {
            pam_args_long(&a, 0, 1L << 20, &o.warmup);
        } else if (pam_args_is(&a, NULL, "--rate")) {
            pam_args_double(&a, 1e-6, 1e7, &o.rate);
        } else if (pam_args_is(&a, NULL, "--duration")) {
            pam_args_double(&a, 1e-3, 1e7, &o.duration);
        } else if (pam_args_is(&a, NULL, "--input-mean")) {
            pam_args_double(&a, 1, 1 << 24, &o.input_mean);
        } else if (pam_args_is(&a, NULL, "--output-mean")) {
            pam_args_double(&a, 1, 1 << 24, &o.output_mean);
        } else if (pam_args_is(&a, NULL, "--seed")) {
            pam_args_long(&a, 0, 0x7fffffffL, &o.seed);
        } else if (pam_args_is(&a, NULL, "--trace")) {
            o.trace = pam_args_value(&a);
        } else if (pam_args_is(&a, NULL, "--json")) {
            o.json = 1;
        } else if (pam_args_is(&a, NULL, "--svg")) {
            o.svg = pam_args_value(&a);
        } else {
            pam_args_unknown(&a);
        }
    }
    if (a.n_positional > 0) {
        fprintf(stderr, "pam sim: unexpected argument '%s'\n", a.positional[0]);
        a.failed = 1;
    }
    if (a.failed) {
        fprintf(stderr, "run `pam sim --help` for the options\n");
        return 2;
    }
    pam_sim_config cfg;
    memset(&cfg, 0, sizeof cfg);
    pam_status st = o.config ? pam_sim_config_load(o.config, &cfg) : pam_sim_config_default(&cfg);
    if (st != PAM_OK) {
        fprintf(stderr, "pam sim: %s\n", pam_last_error());
        return 1;
    }
    if (o.dump) {
        printf("%s\n", cfg.json);
        pam_sim_config_free(&cfg);
        return 0;
    }
    int rc = 1;
    pam_sim_shape shape;
    pam_sim_locality loc;
    pam_sim_result res[SIM_MAX_SYSTEMS];
    st = pam_sim_shape_builtin(o.model, &shape);
    /* not a built-in name: a GGUF file, if there is one by that name */
    if (st == PAM_ERR_NOT_FOUND && access(o.model, F_OK) == 0) st = pam_sim_shape_gguf(o.model, &shape);
    if (st != PAM_OK) {
        fprintf(stderr, "pam sim: %s\n", pam_last_error());
        goto done;
    }
    if (o.trace)
        st = pam_sim_locality_trace(o.trace, &loc);
    else
        pam_sim_locality_default(&loc);
    if (st != PAM_OK) {
        fprintf(stderr, "pam sim: %s\n", pam_last_error());
        goto done;
    }
    FILE *info = o.json ? stderr : stdout;
    fprintf(info, "model: %s (%d layers, %d/%d heads, head dim %d, FFN %d), weights %.1f GB, KV %.1f KiB per token\n",
            shape.name, shape.n_layer, shape.n_head, shape.n_head_kv, shape.head_dim, shape.d_ff,
            shape.weight_bytes / 1e9, pam_sim_shape_kv_bytes_per_token(&shape, cfg.kv_bytes_per_elem) / 1024);
    if (o.rate > 0)
        fprintf(info, "stream: %.6g requests/s for %.6g s, prompts ~%.0f, outputs ~%.0f tokens, seed %ld; locality: %s\n\n",
                o.rate, o.duration, o.input_mean, o.output_mean, o.seed, loc.source);
    else
        fprintf(info, "closed batch: %ld sequences at context %ld, %ld timed steps after %ld; locality: %s\n\n", o.batch,
                o.context, o.steps, o.warmup, loc.source);
    fflush(info);
    for (int i = 0; i < o.n_systems; i++) {
        pam_sim_params p;
        sim_params(&o, &cfg, &shape, &loc, &o.systems[i], &p);
        if (pam_sim_run(&p, &res[i]) != PAM_OK) {
            fprintf(stderr, "pam sim: %s: %s\n", o.systems[i].name, pam_last_error());
            goto done;
        }
    }
    if (o.json)
        print_json(&o, &cfg, &shape, res, o.n_systems);
    else
        print_table(&o, &cfg, res, o.n_systems);
    if (o.svg && write_svg(&o, &cfg, &shape, &loc, res) != PAM_OK) {
        fprintf(stderr, "pam sim: %s\n", pam_last_error());
        goto done;
    }
    rc = 0;
done:
    pam_sim_config_free(&cfg);
    return rc;
}
