/* The simulator: machines, the step cost model, and runs driven by the
 * engine's scheduler. sim.h states the dataflow each system follows; here
 * are the formulas. Conventions: bytes and seconds; rates in GB/s are
 * turned into bytes/s where used; energies in joules. */
#include "sim/sim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"

static const struct {
    const char *name;
    pam_sim_system_kind kind;
    unsigned flags;
} systems[] = {
    {"gpu", PAM_SIM_GPU, 0},
    {"offload", PAM_SIM_OFFLOAD, 0},
    {"pam", PAM_SIM_PAM, 0},
    {"pam-nosched", PAM_SIM_PAM, PAM_SIM_NO_SCHED},
    {"pam-nolocality", PAM_SIM_PAM, PAM_SIM_NO_LOCALITY},
    {"pam-nossdpim", PAM_SIM_PAM, PAM_SIM_NO_SSD_PIM},
    {"pam-noddrpim", PAM_SIM_PAM, PAM_SIM_NO_DDR_PIM},
    {"pam-noru", PAM_SIM_PAM, PAM_SIM_NO_RU},
};

const char *pam_sim_system_names(void) {
    return "gpu, offload, pam, pam-nosched, pam-nolocality, pam-nossdpim, pam-noddrpim, pam-noru";
}

pam_status pam_sim_system_parse(const char *name, pam_sim_system *out) {
    for (size_t i = 0; i < sizeof systems / sizeof systems[0]; i++) {
        if (!strcmp(systems[i].name, name)) {
            memset(out, 0, sizeof *out);
            snprintf(out->name, sizeof out->name, "%s", name);
            out->kind = systems[i].kind;
            out->flags = systems[i].flags;
            return PAM_OK;
        }
    }
    return PAM_ERR(PAM_ERR_INVALID, "sim: unknown system '%s' (one of: %s)", name, pam_sim_system_names());
}

/* ---- machines ------------------------------------------------------------ */

static double link_total(const pam_sim_config *c, int l) { return c->link[l].count * c->link[l].gbps * 1e9; }

pam_status pam_sim_machine_init(const pam_sim_config *cfg, const pam_sim_shape *shape, const pam_sim_system *sys,
                                pam_sim_machine *m) {
    memset(m, 0, sizeof *m);
    m->cfg = cfg;
    m->shape = *shape;
    m->sys = *sys;
    m->host_link = pam_sim_config_find_link(cfg, cfg->host_link);
    m->peer_link = pam_sim_config_find_link(cfg, cfg->peer_link);
    if (m->host_link < 0 || m->peer_link < 0) return PAM_ERR(PAM_ERR_INVALID, "sim: host or peer link undefined");
    if (shape->n_layer <= 0 || shape->n_head <= 0 || shape->n_head_kv <= 0 || shape->head_dim <= 0)
        return PAM_ERR(PAM_ERR_INVALID, "sim: model '%s' has an empty shape", shape->name);
    m->kv_per_token = pam_sim_shape_kv_bytes_per_token(shape, cfg->kv_bytes_per_elem);
    /* per token and layer: K and V are n_head_kv*head_dim elements each and
     * every query head does head_dim MACs against K and head_dim against V */
    m->macs_per_kv_byte = (double)shape->n_head / (shape->n_head_kv * cfg->kv_bytes_per_elem);
    m->block_bytes = cfg->block_tokens * m->kv_per_token;
    m->gpu_macs = cfg->gpu.count * cfg->gpu.tflops * 1e12 / 2;
    m->gpu_attn_macs = cfg->gpu.count * cfg->gpu.attn_tflops * 1e12 / 2;
    int k = sys->kind;
    m->n_tiers = cfg->n_tiers[k];
    for (int t = 0; t < m->n_tiers; t++) {
        pam_sim_tier *T = &m->tier[t];
        const pam_sim_device *d = &cfg->dev[cfg->tiers[k][t]];
        T->dev = cfg->tiers[k][t];
        T->host = strcmp(d->attach, "gpu") != 0;
        T->attach_link = T->host && strcmp(d->attach, "host") ? pam_sim_config_find_link(cfg, d->attach) : -1;
        T->ddr = T->host && T->attach_link < 0;
        T->ssd = T->host && T->attach_link >= 0;
        T->ext_gbps = d->count * d->ext_gbps * 1e9;
        T->int_gbps = d->count * d->int_gbps * 1e9;
        T->pim_gmacs = d->count * d->pim_units * d->pim_gmacs_per_unit * 1e9;
        T->cap_bytes = d->count * d->capacity_gb * 1e9;
        T->path_gbps = T->ext_gbps;
        if (T->host) {
            if (T->attach_link >= 0 && link_total(cfg, T->attach_link) < T->path_gbps)
                T->path_gbps = link_total(cfg, T->attach_link);
            if (link_total(cfg, m->host_link) < T->path_gbps) T->path_gbps = link_total(cfg, m->host_link);
        }
        int has_pim = d->pim_units > 0 && d->int_gbps > 0;
        T->pim = k == PAM_SIM_PAM && has_pim && !(T->ssd && (sys->flags & PAM_SIM_NO_SSD_PIM)) &&
                 !(T->ddr && (sys->flags & PAM_SIM_NO_DDR_PIM));
        double pim_rate = 0;
        if (has_pim) {
            double a = T->int_gbps, b = T->pim_gmacs / m->macs_per_kv_byte;
            pim_rate = a < b ? a : b;
        }
        if (!T->host) {
            double gpu_rate = T->ext_gbps, b = m->gpu_attn_macs / m->macs_per_kv_byte;
            if (b < gpu_rate) gpu_rate = b;
            m->hbm_gbps = T->ext_gbps;
            T->hbm_on_pim = T->pim && pim_rate > gpu_rate;
            T->pim = T->hbm_on_pim;
            T->attn_gbps = T->hbm_on_pim ? pim_rate : gpu_rate;
            double fixed = shape->weight_bytes + cfg->gpu.count * cfg->gpu.reserve_gb * 1e9;
            if (fixed >= T->cap_bytes)
                return PAM_ERR(PAM_ERR_FULL,
                               "sim: %s: the weights (%.1f GB) and reserves need more than the GPUs' %.1f GB of %s",
                               sys->name, shape->weight_bytes / 1e9, T->cap_bytes / 1e9, d->name);
            T->cap_bytes -= fixed;
        } else {
            T->attn_gbps = T->pim ? pim_rate : T->path_gbps;
        }
    }
    if (m->hbm_gbps <= 0) return PAM_ERR(PAM_ERR_INVALID, "sim: system %s has no GPU memory tier", sys->name);
    return PAM_OK;
}

double pam_sim_machine_max_batch(const pam_sim_machine *m, double n_tokens) {
    double blocks_per_seq = ceil(n_tokens / m->cfg->block_tokens), total = 0;
    for (int t = 0; t < m->n_tiers; t++) total += floor(m->tier[t].cap_bytes / m->block_bytes);
    return blocks_per_seq > 0 ? floor(total / blocks_per_seq) : 0;
}

void pam_sim_machine_sched_tier(const pam_sim_machine *m, int t, uint64_t used_blocks, pam_sched_tier *out) {
    out->capacity_blocks = (uint64_t)floor(m->tier[t].cap_bytes / m->block_bytes);
    out->used_blocks = used_blocks;
    out->block_bytes = (uint64_t)m->block_bytes;
    out->read_gbps = m->tier[t].attn_gbps / 1e9;
}

/* ---- the step cost ------------------------------------------------------- */

#define BITS 8.0

/* Energy of reading (or writing) bytes at a device, internal only or
 * through its external interface too. */
static void dev_bytes(const pam_sim_machine *m, pam_sim_cost *c, int t, double bytes, int external) {
    const pam_sim_device *d = &m->cfg->dev[m->tier[t].dev];
    c->e_dev_j[m->tier[t].dev] += bytes * BITS * (d->read_pj_per_bit + (external ? d->io_pj_per_bit : 0)) * 1e-12;
}

static void link_bytes(const pam_sim_machine *m, pam_sim_cost *c, int l, double bytes) {
    if (l < 0) return;
    c->link_bytes[l] += bytes;
    c->e_link_j[l] += bytes * BITS * m->cfg->link[l].pj_per_bit * 1e-12;
}

/* Bytes between tier t and the GPU: its attach link and the host link. */
static void path_bytes(const pam_sim_machine *m, pam_sim_cost *c, int t, double bytes) {
    if (!m->tier[t].host) return;
    link_bytes(m, c, m->tier[t].attach_link, bytes);
    link_bytes(m, c, m->host_link, bytes);
}

static double maxd(double a, double b) { return a > b ? a : b; }

void pam_sim_step_cost(const pam_sim_machine *m, const pam_sim_load *ld, pam_sim_cost *c) {
    const pam_sim_config *cfg = m->cfg;
    const pam_sim_shape *s = &m->shape;
    memset(c, 0, sizeof *c);
    double B = ld->batch, L = s->n_layer, G = cfg->gpu.count;
    const pam_sim_link *host = &cfg->link[m->host_link], *peer = &cfg->link[m->peer_link];
    double host_bw = link_total(cfg, m->host_link);
    double e_gpu_macs = 0;

    /* dense layers: weights once per step, MACs per sequence */
    double dense_macs = s->params * B;
    c->dense_s = B > 0 ? maxd(s->weight_bytes / m->hbm_gbps, dense_macs / m->gpu_macs) : 0;
    e_gpu_macs += dense_macs;
    if (B > 0) dev_bytes(m, c, 0, s->weight_bytes, 1);

    /* tensor parallel: two ring all-reduces of the activations per layer */
    if (G > 1 && B > 0) {
        double size = B * s->d_model * 2.0, per_gpu = 2 * (G - 1) / G * size;
        c->allreduce_s = L * 2 * (per_gpu / (peer->gbps * 1e9) + peer->latency_us * 1e-6);
        link_bytes(m, c, m->peer_link, L * 2 * per_gpu * G);
    }

    /* prefill of admitted requests: compute-bound on the GPUs */
    if (ld->prefill_tokens > 0) {
        double macs = s->params * ld->prefill_tokens + ld->prefill_macs;
        c->prefill_s = maxd(s->weight_bytes / m->hbm_gbps, macs / m->gpu_macs);
        e_gpu_macs += macs;
        dev_bytes(m, c, 0, s->weight_bytes, 1);
    }

    /* attention, tier by tier */
    double gpu_kv = 0, gpu_macs = 0, copied = 0, copy_s = 0;
    int host_pim = 0;
    double host_pim_seqs = 0, parts_partials = 0;
    for (int t = 0; t < m->n_tiers; t++) {
        const pam_sim_tier *T = &m->tier[t];
        const pam_sim_device *d = &cfg->dev[T->dev];
        double K = ld->kv_bytes[t], M = K * m->macs_per_kv_byte;
        if (K <= 0) continue;
        if (T->pim) {
            c->tier_s[t] = maxd(K / T->int_gbps, M / T->pim_gmacs);
            dev_bytes(m, c, t, K, 0);
            c->e_dev_j[T->dev] += M * d->pim_mac_pj * 1e-12;
            c->macs_pim += M;
            if (T->host) {
                host_pim = 1;
                host_pim_seqs = maxd(host_pim_seqs, ld->seqs_in[t]);
                /* one partial per part holding the sequence's blocks, each
                 * for its GPU's share of the heads */
                parts_partials += ld->seqs_in[t] * d->count;
            }
        } else if (!T->host) {
            gpu_kv += K;
            gpu_macs += M;
            dev_bytes(m, c, t, K, 1);
        } else {
            /* copied to the GPU (offload, or a PIM ablation): read through
             * the device's interface, over the links, written to HBM and
             * read there by the GPU's attention */
            c->tier_s[t] = K / T->path_gbps;
            copy_s = maxd(copy_s, c->tier_s[t]);
            copied += K;
            dev_bytes(m, c, t, K, 1);
            path_bytes(m, c, t, K);
            dev_bytes(m, c, 0, 2 * K, 1);
            gpu_macs += M;
        }
    }
    copy_s = maxd(copy_s, copied / host_bw);
    c->copy_s = copy_s;
    c->gpu_attn_s = maxd((gpu_kv + 2 * copied) / m->hbm_gbps, gpu_macs / m->gpu_attn_macs);
    if (!m->tier[0].pim) c->tier_s[0] = c->gpu_attn_s;
    e_gpu_macs += gpu_macs;

    /* q out to the host tiers' PIM units and partials back, per layer */
    double qb = s->n_head * s->head_dim * 2.0, pb = s->n_head * (s->head_dim + 2) * 4.0;
    double comm_bytes = 0;
    if (host_pim) {
        int ru = !(m->sys.flags & PAM_SIM_NO_RU);
        double q_bytes = L * host_pim_seqs * qb;
        double part_bytes = L * parts_partials * pb / G; /* every part: its GPU's heads */
        double to_gpu = ru ? L * host_pim_seqs * pb : part_bytes;
        comm_bytes = q_bytes + to_gpu;
        link_bytes(m, c, m->host_link, comm_bytes);
        for (int t = 1; t < m->n_tiers; t++)
            if (m->tier[t].pim && m->tier[t].attach_link >= 0 && ld->seqs_in[t] > 0)
                link_bytes(m, c, m->tier[t].attach_link,
                           L * ld->seqs_in[t] * (qb + cfg->dev[m->tier[t].dev].count * pb / G));
        /* merge: about 3 operations (rescale, add) per partial element */
        c->merge_ops = 3 * part_bytes / 4;
        if (ru) {
            c->merge_s = c->merge_ops / (cfg->ru.gops * 1e9);
            c->e_ru_j += c->merge_ops * cfg->ru.op_pj * 1e-12;
        } else {
            c->merge_s = c->merge_ops / m->gpu_macs;
            e_gpu_macs += c->merge_ops;
        }
        c->comm_s = L * 2 * host->latency_us * 1e-6 + comm_bytes / host_bw;
    }
    /* new KV (decoded tokens, prefill) written where its block lives */
    for (int t = 0; t < m->n_tiers; t++) {
        double w = ld->new_kv_bytes[t];
        if (w <= 0) continue;
        dev_bytes(m, c, t, w, 1);
        if (m->tier[t].host) {
            path_bytes(m, c, t, w);
            c->comm_s += w / m->tier[t].path_gbps;
        }
    }

    /* migrations between steps, over the links between the two tiers */
    for (int a = 0; a < m->n_tiers; a++) {
        for (int b = 0; b < m->n_tiers; b++) {
            double x = ld->migr_bytes[a][b];
            if (x <= 0 || a == b) continue;
            const pam_sim_tier *A = &m->tier[a], *Bt = &m->tier[b];
            double rate = A->ext_gbps < Bt->ext_gbps ? A->ext_gbps : Bt->ext_gbps;
            for (int e = 0; e < 2; e++) {
                const pam_sim_tier *T = e ? Bt : A;
                if (T->attach_link >= 0) {
                    link_bytes(m, c, T->attach_link, x);
                    if (link_total(cfg, T->attach_link) < rate) rate = link_total(cfg, T->attach_link);
                }
            }
            if (!A->host || !Bt->host) {
                link_bytes(m, c, m->host_link, x);
                if (host_bw < rate) rate = host_bw;
            }
            dev_bytes(m, c, a, x, 1);
            dev_bytes(m, c, b, x, 1);
            c->migrate_s += x / rate;
        }
    }

    /* composition */
    int shared = cfg->gpu.shared_compute > 0;
    double pim_s = 0;
    for (int t = 0; t < m->n_tiers; t++) {
        if (!m->tier[t].pim) continue;
        if (shared)
            pim_s += c->tier_s[t];
        else if (c->tier_s[t] > pim_s)
            pim_s = c->tier_s[t];
    }
    c->attn_s = shared ? pim_s + c->gpu_attn_s : maxd(pim_s, c->gpu_attn_s);
    double compute = c->dense_s + c->attn_s + c->comm_s + c->merge_s;
    /* copies of layer l+1 overlap layer l's compute (KV is known ahead),
     * unless the same engine does both */
    c->time_s = (shared ? compute + copy_s : maxd(compute, copy_s)) + c->allreduce_s + c->migrate_s + c->prefill_s;
    if (copied > 0) c->time_s += host->latency_us * 1e-6;

    c->e_gpu_j = e_gpu_macs * cfg->gpu.mac_pj * 1e-12 + c->time_s * G * cfg->gpu.static_w;
    for (int t = 0; t < m->n_tiers; t++) {
        const pam_sim_device *d = &cfg->dev[m->tier[t].dev];
        c->e_dev_j[m->tier[t].dev] += c->time_s * d->count * d->static_w;
    }
    if (m->sys.kind == PAM_SIM_PAM && !(m->sys.flags & PAM_SIM_NO_RU)) c->e_ru_j += c->time_s * cfg->ru.static_w;
}

double pam_sim_cost_energy(const pam_sim_cost *c) {
    double e = c->e_gpu_j + c->e_ru_j;
    for (int i = 0; i < PAM_SIM_MAX_DEVICES; i++) e += c->e_dev_j[i];
    for (int i = 0; i < PAM_SIM_MAX_LINKS; i++) e += c->e_link_j[i];
    return e;
}

/* ---- scheduling ---------------------------------------------------------- */

size_t pam_sim_schedule(const pam_sched_tier *tiers, int n_tiers, uint32_t n_blocks, const uint8_t *live,
                        int8_t *tier, const float *imp, const uint8_t *pinned, uint64_t budget, uint64_t *used,
                        double moved_blocks[PAM_SIM_TIERS][PAM_SIM_TIERS]) {
    size_t n = 0;
    for (uint32_t i = 0; i < n_blocks; i++) n += live[i] != 0;
    if (n == 0) return 0;
    pam_sched_block *blocks = malloc(n * sizeof *blocks);
    pam_sched_move *moves = malloc(n * 2 * sizeof *moves);
    size_t applied = 0;
    if (blocks && moves) {
        pam_sched_tier st[PAM_SIM_TIERS];
        for (int t = 0; t < n_tiers; t++) {
            st[t] = tiers[t];
            st[t].used_blocks = used[t];
        }
        size_t k = 0;
        for (uint32_t i = 0; i < n_blocks; i++)
            if (live[i])
                blocks[k++] = (pam_sched_block){.id = i, .tier = tier[i], .importance = imp[i], .pinned = pinned[i]};
        size_t nm = pam_sched_plan(st, n_tiers, blocks, n, budget, moves, n * 2);
        for (size_t i = 0; i < nm; i++) {
            const pam_sched_move *mv = &moves[i];
            if (mv->id >= n_blocks || !live[mv->id] || tier[mv->id] != mv->from) continue;
            tier[mv->id] = (int8_t)mv->to;
            used[mv->from]--;
            used[mv->to]++;
            moved_blocks[mv->from][mv->to] += 1;
            applied++;
        }
    }
    free(blocks);
    free(moves);
    return applied;
}

/* ---- runs ---------------------------------------------------------------- */

typedef struct sim_seq {
    uint32_t *blocks;
    int32_t n_blocks, cap_blocks;
    int64_t len, out_left, reserved_blocks;
    double arrival, first_token;
    uint64_t uid;
    int32_t in_tier[PAM_SIM_TIERS];
} sim_seq;

typedef struct sim_state {
    const pam_sim_machine *m;
    const pam_sim_params *p;
    const pam_sim_locality *loc;
    /* blocks */
    uint32_t n_ids, cap_ids, *free_ids, n_free;
    int8_t *tier;
    float *imp;
    uint8_t *pinned, *live;
    int32_t *tokens;
    int32_t *owner;
    uint64_t used[PAM_SIM_TIERS], cap[PAM_SIM_TIERS];
    double tier_tokens[PAM_SIM_TIERS];
    uint64_t reserved; /* blocks promised to admitted sequences, not yet allocated */
    /* sequences */
    sim_seq *seqs;
    int32_t n_seqs, cap_seqs;
    double moved[PAM_SIM_TIERS][PAM_SIM_TIERS];
} sim_state;

static pam_status st_grow_ids(sim_state *s) {
    if (s->n_ids < s->cap_ids) return PAM_OK;
    uint32_t nc = s->cap_ids ? s->cap_ids * 2 : 1024;
    int8_t *a = realloc(s->tier, nc);
    if (a) s->tier = a;
    float *b = realloc(s->imp, nc * sizeof *b);
    if (b) s->imp = b;
    uint8_t *c = realloc(s->pinned, nc);
    if (c) s->pinned = c;
    uint8_t *d = realloc(s->live, nc);
    if (d) s->live = d;
    int32_t *e = realloc(s->tokens, nc * sizeof *e);
    if (e) s->tokens = e;
    int32_t *f = realloc(s->owner, nc * sizeof *f);
    if (f) s->owner = f;
    uint32_t *g = realloc(s->free_ids, nc * sizeof *g);
    if (g) s->free_ids = g;
    if (!a || !b || !c || !d || !e || !f || !g) return PAM_ERR(PAM_ERR_NOMEM, "sim: blocks");
    s->cap_ids = nc;
    return PAM_OK;
}

/* A new block for sequence q: the fastest tier with room (the engine's rule). */
static pam_status st_new_block(sim_state *s, int32_t q) {
    sim_seq *sq = &s->seqs[q];
    int t = 0;
    while (t < s->m->n_tiers && s->used[t] >= s->cap[t]) t++;
    if (t == s->m->n_tiers) return PAM_ERR(PAM_ERR_FULL, "sim: no tier has room");
    uint32_t id;
    if (s->n_free) {
        id = s->free_ids[--s->n_free];
    } else {
        PAM_TRY(st_grow_ids(s));
        id = s->n_ids++;
    }
    if (sq->n_blocks == sq->cap_blocks) {
        int32_t nc = sq->cap_blocks ? sq->cap_blocks * 2 : 8;
        uint32_t *nb = realloc(sq->blocks, (size_t)nc * sizeof *nb);
        if (!nb) return PAM_ERR(PAM_ERR_NOMEM, "sim: block table");
        sq->blocks = nb;
        sq->cap_blocks = nc;
    }
    sq->blocks[sq->n_blocks] = id;
    /* importance from the locality profile: a fixed quantile per block */
    uint64_t h = sq->uid * 0x9e3779b97f4a7c15ULL + (uint64_t)sq->n_blocks * 0xbf58476d1ce4e5b9ULL + s->p->seed;
    double u = pam_sim_rng_unit(&h);
    s->imp[id] = (s->m->sys.flags & PAM_SIM_NO_LOCALITY) ? 1.0f : (float)pam_sim_locality_at(s->loc, u);
    s->tier[id] = (int8_t)t;
    s->live[id] = 1;
    s->pinned[id] = 1;
    s->tokens[id] = 0;
    s->owner[id] = q;
    s->used[t]++;
    sq->in_tier[t]++;
    sq->n_blocks++;
    if (sq->reserved_blocks > 0) {
        sq->reserved_blocks--;
        s->reserved--;
    }
    return PAM_OK;
}

/* Appends n tokens to sequence q; returns the bytes written per tier. */
static pam_status st_append(sim_state *s, int32_t q, int64_t n, double *written) {
    sim_seq *sq = &s->seqs[q];
    int64_t bt = (int64_t)s->m->cfg->block_tokens;
    while (n > 0) {
        if (sq->n_blocks == 0 || s->tokens[sq->blocks[sq->n_blocks - 1]] == bt) PAM_TRY(st_new_block(s, q));
        uint32_t id = sq->blocks[sq->n_blocks - 1];
        int64_t k = bt - s->tokens[id];
        if (k > n) k = n;
        s->tokens[id] += (int32_t)k;
        s->pinned[id] = s->tokens[id] < bt;
        s->tier_tokens[s->tier[id]] += (double)k;
        if (written) written[s->tier[id]] += (double)k * s->m->kv_per_token;
        sq->len += k;
        n -= k;
    }
    return PAM_OK;
}

static void st_free_seq(sim_state *s, int32_t q) {
    sim_seq *sq = &s->seqs[q];
    for (int32_t i = 0; i < sq->n_blocks; i++) {
        uint32_t id = sq->blocks[i];
        s->used[s->tier[id]]--;
        s->tier_tokens[s->tier[id]] -= s->tokens[id];
        s->live[id] = 0;
        s->free_ids[s->n_free++] = id;
    }
    s->reserved -= (uint64_t)sq->reserved_blocks;
    free(sq->blocks);
    /* keep the array dense: the last sequence takes this slot */
    int32_t last = --s->n_seqs;
    if (q != last) {
        s->seqs[q] = s->seqs[last];
        for (int32_t i = 0; i < s->seqs[q].n_blocks; i++) s->owner[s->seqs[q].blocks[i]] = q;
    }
}

static uint64_t st_free_blocks(const sim_state *s) {
    uint64_t f = 0;
    for (int t = 0; t < s->m->n_tiers; t++) f += s->cap[t] - s->used[t];
    return f > s->reserved ? f - s->reserved : 0;
}

/* Admission: reserves every block the request will need (engine rule). */
static pam_status st_admit(sim_state *s, uint64_t uid, int64_t prompt, int64_t out, double now, int *admitted) {
    *admitted = 0;
    int64_t bt = (int64_t)s->m->cfg->block_tokens;
    uint64_t need = (uint64_t)((prompt + out + bt - 1) / bt);
    if (s->n_seqs >= (int32_t)s->m->cfg->max_batch || need > st_free_blocks(s)) return PAM_OK;
    if (s->n_seqs == s->cap_seqs) {
        int32_t nc = s->cap_seqs ? s->cap_seqs * 2 : 64;
        sim_seq *ns = realloc(s->seqs, (size_t)nc * sizeof *ns);
        if (!ns) return PAM_ERR(PAM_ERR_NOMEM, "sim: sequences");
        s->seqs = ns;
        s->cap_seqs = nc;
    }
    sim_seq *sq = &s->seqs[s->n_seqs++];
    memset(sq, 0, sizeof *sq);
    sq->uid = uid;
    sq->out_left = out;
    sq->arrival = now;
    sq->first_token = -1;
    sq->reserved_blocks = (int64_t)need;
    s->reserved += need;
    *admitted = 1;
    return PAM_OK;
}

static void st_free_all(sim_state *s) {
    for (int32_t i = 0; i < s->n_seqs; i++) free(s->seqs[i].blocks);
    free(s->seqs);
    free(s->tier);
    free(s->imp);
    free(s->pinned);
    free(s->live);
    free(s->tokens);
    free(s->owner);
    free(s->free_ids);
}

static void st_schedule(sim_state *s, pam_sim_load *ld) {
    const pam_sim_machine *m = s->m;
    if (m->sys.kind != PAM_SIM_PAM || (m->sys.flags & PAM_SIM_NO_SCHED) || m->n_tiers < 2) return;
    pam_sched_tier st[PAM_SIM_TIERS];
    for (int t = 0; t < m->n_tiers; t++) pam_sim_machine_sched_tier(m, t, s->used[t], &st[t]);
    double moved[PAM_SIM_TIERS][PAM_SIM_TIERS] = {{0}};
    uint64_t budget = (uint64_t)(m->cfg->migrate_gb_per_step * 1e9 * m->cfg->schedule_every);
    uint64_t used[PAM_SIM_TIERS];
    memcpy(used, s->used, sizeof used);
    /* remember the tiers to move tokens and per-sequence counts */
    int8_t *old = malloc(s->n_ids ? s->n_ids : 1);
    if (!old) return; /* no moves this time: the placement stays valid */
    memcpy(old, s->tier, s->n_ids);
    size_t n = pam_sim_schedule(st, m->n_tiers, s->n_ids, s->live, s->tier, s->imp, s->pinned, budget, used, moved);
    if (n) {
        for (uint32_t id = 0; id < s->n_ids; id++) {
            if (!s->live[id] || old[id] == s->tier[id]) continue;
            s->tier_tokens[old[id]] -= s->tokens[id];
            s->tier_tokens[s->tier[id]] += s->tokens[id];
            sim_seq *sq = &s->seqs[s->owner[id]];
            sq->in_tier[old[id]]--;
            sq->in_tier[s->tier[id]]++;
            ld->migr_bytes[old[id]][s->tier[id]] += s->tokens[id] * m->kv_per_token;
        }
        memcpy(s->used, used, sizeof used);
        for (int a = 0; a < m->n_tiers; a++)
            for (int b = 0; b < m->n_tiers; b++) s->moved[a][b] += moved[a][b];
    }
    free(old);
}

static void st_load(const sim_state *s, pam_sim_load *ld) {
    ld->batch = s->n_seqs;
    for (int t = 0; t < s->m->n_tiers; t++) {
        ld->kv_bytes[t] = s->tier_tokens[t] * s->m->kv_per_token;
        ld->seqs_in[t] = 0;
    }
    for (int32_t i = 0; i < s->n_seqs; i++)
        for (int t = 0; t < s->m->n_tiers; t++) ld->seqs_in[t] += s->seqs[i].in_tier[t] > 0;
}

typedef struct sim_acc {
    double steps, time, tokens, energy;
    pam_sim_cost sum;
    double kv[PAM_SIM_TIERS], kv_total, batch, context;
    double tpot_sum, tpot_n, ttft_sum, ttft_n;
} sim_acc;

static void acc_add(sim_acc *a, const pam_sim_cost *c, const pam_sim_load *ld, const sim_state *s, double tokens) {
    a->steps++;
    a->time += c->time_s;
    a->tokens += tokens;
    a->energy += pam_sim_cost_energy(c);
    pam_sim_cost *x = &a->sum;
    x->dense_s += c->dense_s;
    x->attn_s += c->attn_s;
    x->comm_s += c->comm_s;
    x->merge_s += c->merge_s;
    x->allreduce_s += c->allreduce_s;
    x->copy_s += c->copy_s;
    x->migrate_s += c->migrate_s;
    x->prefill_s += c->prefill_s;
    x->gpu_attn_s += c->gpu_attn_s;
    x->e_gpu_j += c->e_gpu_j;
    x->e_ru_j += c->e_ru_j;
    for (int i = 0; i < PAM_SIM_MAX_DEVICES; i++) x->e_dev_j[i] += c->e_dev_j[i];
    for (int i = 0; i < PAM_SIM_MAX_LINKS; i++) x->e_link_j[i] += c->e_link_j[i];
    for (int t = 0; t < PAM_SIM_TIERS; t++) {
        x->tier_s[t] += c->tier_s[t];
        a->kv[t] += ld->kv_bytes[t];
        a->kv_total += ld->kv_bytes[t];
    }
    a->batch += ld->batch;
    double ctx = 0;
    for (int32_t i = 0; i < s->n_seqs; i++) ctx += (double)s->seqs[i].len;
    a->context += s->n_seqs ? ctx / s->n_seqs : 0;
}

static void acc_result(const sim_acc *a, const sim_state *s, pam_sim_result *r) {
    const pam_sim_machine *m = s->m;
    double n = a->steps > 0 ? a->steps : 1, tok = a->tokens > 0 ? a->tokens : 1;
    r->steps = a->steps;
    r->sim_seconds = a->time;
    r->tokens_per_second = a->time > 0 ? a->tokens / a->time : 0;
    r->tpot_ms = a->tpot_n > 0 ? a->tpot_sum / a->tpot_n * 1e3 : a->time / n * 1e3;
    r->ttft_ms = a->ttft_n > 0 ? a->ttft_sum / a->ttft_n * 1e3 : 0;
    r->joules_per_token = a->energy / tok;
    r->batch = a->batch / n;
    r->context = a->context / n;
    r->dense_s = a->sum.dense_s / n;
    r->attn_s = a->sum.attn_s / n;
    r->comm_s = a->sum.comm_s / n;
    r->merge_s = a->sum.merge_s / n;
    r->allreduce_s = a->sum.allreduce_s / n;
    r->copy_s = a->sum.copy_s / n;
    r->migrate_s = a->sum.migrate_s / n;
    r->prefill_s = a->sum.prefill_s / n;
    r->n_tiers = m->n_tiers;
    for (int t = 0; t < m->n_tiers; t++) {
        snprintf(r->tier_name[t], sizeof r->tier_name[t], "%s", m->cfg->dev[m->tier[t].dev].name);
        r->tier_busy[t] = a->time > 0 ? a->sum.tier_s[t] / a->time : 0;
        r->tier_kv_share[t] = a->kv_total > 0 ? a->kv[t] / a->kv_total : 0;
    }
    r->gpu_busy = a->time > 0 ? (a->sum.dense_s + a->sum.gpu_attn_s + a->sum.prefill_s) / a->time : 0;
    r->e_gpu = a->sum.e_gpu_j / tok;
    r->e_ru = a->sum.e_ru_j / tok;
    for (int i = 0; i < PAM_SIM_MAX_DEVICES; i++) r->e_dev[i] = a->sum.e_dev_j[i] / tok;
    for (int i = 0; i < PAM_SIM_MAX_LINKS; i++) r->e_link[i] = a->sum.e_link_j[i] / tok;
    double mv = 0;
    for (int x = 0; x < PAM_SIM_TIERS; x++)
        for (int y = 0; y < PAM_SIM_TIERS; y++) mv += s->moved[x][y];
    r->migrations = mv;
    r->migrated_gb = mv * m->block_bytes / 1e9;
}

/* One decode step of every live sequence (after any prefill ld carries). */
static pam_status st_decode(sim_state *s, pam_sim_load *ld, int schedule) {
    if (schedule) st_schedule(s, ld);
    st_load(s, ld);
    for (int32_t i = 0; i < s->n_seqs; i++) PAM_TRY(st_append(s, i, 1, ld->new_kv_bytes));
    return PAM_OK;
}

static pam_status run_closed(sim_state *s, pam_sim_result *r) {
    const pam_sim_params *p = s->p;
    const pam_sim_machine *m = s->m;
    int64_t total = p->context + p->warmup + p->steps;
    r->max_batch = pam_sim_machine_max_batch(m, (double)total);
    int64_t b = p->batch;
    if (r->max_batch < 1) {
        snprintf(r->note, sizeof r->note, "does not fit: one sequence of %lld tokens needs %.1f GB of KV",
                 (long long)total, (double)total * m->kv_per_token / 1e9);
        return PAM_OK;
    }
    if (b > (int64_t)r->max_batch) {
        snprintf(r->note, sizeof r->note, "capacity-limited: %lld of %lld sequences fit", (long long)r->max_batch,
                 (long long)p->batch);
        b = (int64_t)r->max_batch;
    }
    if (b > (int64_t)m->cfg->max_batch) {
        snprintf(r->note, sizeof r->note, "batch capped at the configured max_batch %lld", (long long)m->cfg->max_batch);
        b = (int64_t)m->cfg->max_batch;
    }
    for (int64_t i = 0; i < b; i++) {
        int ok;
        PAM_TRY(st_admit(s, (uint64_t)i, p->context, p->warmup + p->steps, 0, &ok));
        if (!ok) break;
        PAM_TRY(st_append(s, s->n_seqs - 1, p->context, NULL));
    }
    sim_acc a;
    memset(&a, 0, sizeof a);
    int every = (int)m->cfg->schedule_every;
    for (int64_t step = 0; step < p->warmup + p->steps; step++) {
        pam_sim_load ld;
        memset(&ld, 0, sizeof ld);
        PAM_TRY(st_decode(s, &ld, step % every == 0));
        pam_sim_cost c;
        pam_sim_step_cost(m, &ld, &c);
        if (step >= p->warmup) acc_add(&a, &c, &ld, s, ld.batch);
    }
    acc_result(&a, s, r);
    r->ok = 1;
    return PAM_OK;
}

typedef struct pending {
    double arrival;
    int64_t prompt, out;
    uint64_t uid;
} pending;

static pam_status run_stream(sim_state *s, pam_sim_result *r) {
    const pam_sim_params *p = s->p;
    const pam_sim_machine *m = s->m;
    uint64_t rng = p->seed * 0x2545f4914f6cdd1dULL + 1;
    r->max_batch = pam_sim_machine_max_batch(m, p->input_mean * 1.5 + p->output_mean * 1.5);
    /* the queue: a ring of arrivals not yet admitted */
    size_t qcap = 1024, qhead = 0, qn = 0;
    pending *q = malloc(qcap * sizeof *q);
    if (!q) return PAM_ERR(PAM_ERR_NOMEM, "sim: queue");
    double now = 0, next_arrival = pam_sim_rng_exp(&rng, p->rate);
    uint64_t uid = 0;
    sim_acc a;
    memset(&a, 0, sizeof a);
    int every = (int)m->cfg->schedule_every;
    int64_t step = 0;
    pam_status st = PAM_OK;
    while (st == PAM_OK && now < p->duration_s) {
        while (next_arrival <= now && next_arrival < p->duration_s) {
            if (qn == qcap) {
                pending *nq = malloc(qcap * 2 * sizeof *nq);
                if (!nq) {
                    st = PAM_ERR(PAM_ERR_NOMEM, "sim: queue");
                    break;
                }
                for (size_t i = 0; i < qn; i++) nq[i] = q[(qhead + i) % qcap];
                free(q);
                q = nq;
                qhead = 0;
                qcap *= 2;
            }
            pending *e = &q[(qhead + qn++) % qcap];
            e->arrival = next_arrival;
            e->prompt = pam_sim_rng_length(&rng, p->input_mean);
            e->out = pam_sim_rng_length(&rng, p->output_mean);
            e->uid = uid++;
            r->requests_arrived++;
            next_arrival += pam_sim_rng_exp(&rng, p->rate);
        }
        if (st != PAM_OK) break;
        pam_sim_load ld;
        memset(&ld, 0, sizeof ld);
        /* admit in arrival order while there is room; prefill them now */
        while (qn > 0) {
            pending *e = &q[qhead];
            int ok;
            st = st_admit(s, e->uid, e->prompt, e->out, e->arrival, &ok);
            if (st != PAM_OK || !ok) break;
            st = st_append(s, s->n_seqs - 1, e->prompt, ld.new_kv_bytes);
            if (st != PAM_OK) break;
            ld.prefill_tokens += (double)e->prompt;
            /* causal attention over the prompt: n^2/2 positions, 2 n_head head_dim MACs each, all layers */
            ld.prefill_macs += (double)e->prompt * (double)e->prompt * m->shape.n_head * m->shape.head_dim * m->shape.n_layer;
            qhead = (qhead + 1) % qcap;
            qn--;
        }
        if (st != PAM_OK) break;
        if (s->n_seqs == 0) {
            /* idle until the next arrival */
            now = next_arrival < p->duration_s ? next_arrival : p->duration_s;
            continue;
        }
        int32_t n_before = s->n_seqs;
        st = st_decode(s, &ld, step % every == 0);
        if (st != PAM_OK) break;
        pam_sim_cost c;
        pam_sim_step_cost(m, &ld, &c);
        now += c.time_s;
        step++;
        acc_add(&a, &c, &ld, s, n_before);
        a.tpot_sum += c.time_s * n_before;
        a.tpot_n += n_before;
        for (int32_t i = s->n_seqs - 1; i >= 0; i--) {
            sim_seq *sq = &s->seqs[i];
            if (sq->first_token < 0) {
                sq->first_token = now;
                a.ttft_sum += now - sq->arrival;
                a.ttft_n++;
            }
            if (--sq->out_left <= 0) {
                st_free_seq(s, i);
                r->requests_done++;
            }
        }
    }
    free(q);
    if (st != PAM_OK) return st;
    acc_result(&a, s, r);
    /* throughput over the simulated wall time, idle gaps included */
    r->sim_seconds = now;
    r->tokens_per_second = now > 0 ? a.tokens / now : 0;
    r->ok = 1;
    return PAM_OK;
}

pam_status pam_sim_run(const pam_sim_params *p, pam_sim_result *r) {
    memset(r, 0, sizeof *r);
    snprintf(r->model, sizeof r->model, "%s", p->shape->name);
    snprintf(r->system, sizeof r->system, "%s", p->sys.name);
    if (p->rate < 0 || (p->rate > 0 && (p->duration_s <= 0 || p->input_mean < 1 || p->output_mean < 1)) ||
        (p->rate == 0 && (p->batch < 1 || p->context < 0 || p->steps < 1 || p->warmup < 0)))
        return PAM_ERR(PAM_ERR_INVALID, "sim: bad run parameters (batch >= 1, steps >= 1; or rate, duration and "
                                        "lengths > 0)");
    pam_sim_machine m;
    pam_status st = pam_sim_machine_init(p->cfg, p->shape, &p->sys, &m);
    if (st == PAM_ERR_FULL) {
        snprintf(r->note, sizeof r->note, "does not fit: %s", pam_last_error());
        return PAM_OK;
    }
    PAM_TRY(st);
    pam_sim_locality def;
    if (!p->locality) pam_sim_locality_default(&def);
    sim_state s;
    memset(&s, 0, sizeof s);
    s.m = &m;
    s.p = p;
    s.loc = p->locality ? p->locality : &def;
    for (int t = 0; t < m.n_tiers; t++) {
        pam_sched_tier x;
        pam_sim_machine_sched_tier(&m, t, 0, &x);
        s.cap[t] = x.capacity_blocks;
    }
    st = p->rate > 0 ? run_stream(&s, r) : run_closed(&s, r);
    st_free_all(&s);
    return st;
}
