/* The simulator (src/sim/): analytic cases of the step cost model against
 * hand-computed formulas from the configured numbers (one device at its
 * roofline, a link-bound offload step, the merge cost, capacity-limited
 * batches, energy sums), the configuration's JSON round trip and errors,
 * model shapes (built in and from a GGUF), locality traces, determinism of
 * runs, and "one scheduler, two worlds": the engine's KV manager and the
 * simulator's scheduling path make the same moves on the same inputs. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "kv/kvm.h"
#include "kv/tier.h"
#include "sim/sim.h"
#include "util/ref_model.h"
#include "util/test_util.h"

#define REL(a, b) rel_eq((double)(a), (double)(b))

static int rel_eq(double a, double b) { return fabs(a - b) <= 1e-9 * fmax(fabs(a), fabs(b)); }

static void load_defaults(pam_sim_config *c) {
    if (pam_sim_config_default(c) != PAM_OK) fail_msg("defaults: %s", pam_last_error());
}

static void machine(const pam_sim_config *c, const char *model, const char *sys, pam_sim_machine *m) {
    pam_sim_shape s;
    pam_sim_system y;
    assert_int_equal(pam_sim_shape_builtin(model, &s), PAM_OK);
    assert_int_equal(pam_sim_system_parse(sys, &y), PAM_OK);
    if (pam_sim_machine_init(c, &s, &y, m) != PAM_OK) fail_msg("machine: %s", pam_last_error());
}

static int tier_of(const pam_sim_machine *m, const char *dev) {
    for (int t = 0; t < m->n_tiers; t++)
        if (!strcmp(m->cfg->dev[m->tier[t].dev].name, dev)) return t;
    fail_msg("no tier %s", dev);
    return -1;
}

/* ---- analytic cases ---------------------------------------------------- */

/* A DDR5-PIM tier holding all the KV: max(bytes / internal bandwidth,
 * MACs / PIM rate). With MHA (OPT, 0.5 MAC per f16 byte) the default DIMMs
 * (1 MAC per internal byte) are bandwidth-bound; with Llama-3-70B's 8 query
 * heads per KV head (4 MAC per byte) they are compute-bound, 4x slower. */
static void test_roofline_one_device(void **state) {
    pam_sim_config c;
    load_defaults(&c);
    int d = pam_sim_config_find_device(&c, "ddr5_pim");
    double bw = 32 * 153.6e9, macs = 32 * 32 * 4.8e9, K = 100e9;
    assert_true(REL(c.dev[d].count * c.dev[d].int_gbps * 1e9, bw));
    const char *models[2] = {"opt-175b", "llama-3-70b"};
    double mpb[2] = {0.5, 4.0};
    for (int i = 0; i < 2; i++) {
        pam_sim_machine m;
        machine(&c, models[i], "pam", &m);
        assert_true(REL(m.macs_per_kv_byte, mpb[i]));
        int t = tier_of(&m, "ddr5_pim");
        pam_sim_load ld = {.batch = 8};
        ld.kv_bytes[t] = K;
        ld.seqs_in[t] = 8;
        pam_sim_cost cost;
        pam_sim_step_cost(&m, &ld, &cost);
        double want = fmax(K / bw, K * mpb[i] / macs);
        assert_true(REL(cost.tier_s[t], want));
        assert_true(REL(cost.attn_s, want));
        assert_true(REL(cost.macs_pim, K * mpb[i]));
        /* what the scheduler sees is the same rate */
        pam_sched_tier st;
        pam_sim_machine_sched_tier(&m, t, 0, &st);
        assert_true(REL(st.read_gbps * 1e9, K / want));
    }
    /* a single-device machine (one GPU, its HBM only): the GPU's roofline */
    pam_sim_machine m;
    machine(&c, "llama-3-8b", "gpu", &m);
    pam_sim_load ld = {.batch = 1};
    ld.kv_bytes[0] = 10e9;
    pam_sim_cost cost;
    pam_sim_step_cost(&m, &ld, &cost);
    double hbm = 40 * 670e9;
    assert_true(REL(cost.gpu_attn_s, fmax(10e9 / hbm, 10e9 * 2 / (8 * 989.4e12 / 2))));
    assert_true(REL(cost.dense_s, fmax(m.shape.weight_bytes / hbm, m.shape.params / (8 * 989.4e12 / 2))));
    pam_sim_config_free(&c);
}

/* Offload with the KV in DDR: every byte crosses the host link each step;
 * the copy is layer-pipelined against the GPU's work, so a long context
 * makes the step the copy time (+ all-reduce, + one transfer latency). */
static void test_offload_link_bound(void **state) {
    pam_sim_config c;
    load_defaults(&c);
    pam_sim_machine m;
    machine(&c, "llama-3-70b", "offload", &m);
    int t = tier_of(&m, "ddr5");
    pam_sim_load ld = {.batch = 16};
    ld.kv_bytes[t] = 200e9;
    ld.seqs_in[t] = 16;
    pam_sim_cost cost;
    pam_sim_step_cost(&m, &ld, &cost);
    double link = 8 * 63.0e9, ddr = 32 * 19.2e9; /* the host link is the narrower */
    assert_true(link < ddr);
    assert_true(REL(cost.copy_s, 200e9 / link));
    assert_true(cost.copy_s > cost.dense_s + cost.attn_s);
    assert_true(REL(cost.time_s, 200e9 / link + cost.allreduce_s + 3e-6));
    int hl = pam_sim_config_find_link(&c, "pcie5_x16");
    assert_true(REL(cost.link_bytes[hl], 200e9));
    /* the GPU attends the copies out of HBM: written there, then read */
    assert_true(REL(cost.gpu_attn_s, fmax(400e9 / (40 * 670e9), 200e9 * 4 / (8 * 989.4e12 / 2))));
    /* one compute engine for everything (a CPU-only machine): the copy no
     * longer overlaps, and PIM tiers' times add up instead of overlapping */
    c.gpu.shared_compute = 1;
    pam_sim_step_cost(&m, &ld, &cost);
    assert_true(REL(cost.time_s, cost.dense_s + cost.attn_s + 200e9 / link + cost.allreduce_s + 3e-6));
    pam_sim_machine p;
    machine(&c, "llama-3-70b", "pam", &p);
    pam_sim_load l2 = {.batch = 16};
    l2.kv_bytes[1] = 50e9;
    l2.kv_bytes[2] = 5e9;
    l2.seqs_in[1] = l2.seqs_in[2] = 16;
    pam_sim_step_cost(&p, &l2, &cost);
    assert_true(REL(cost.attn_s, cost.tier_s[1] + cost.tier_s[2]));
    c.gpu.shared_compute = 0;
    pam_sim_step_cost(&p, &l2, &cost);
    assert_true(REL(cost.attn_s, fmax(cost.tier_s[1], cost.tier_s[2])));
    pam_sim_config_free(&c);
}

/* Merge: with reduction units one partial per sequence and layer crosses
 * to the GPU; without, every DIMM's partial (for its GPU's heads) does, and
 * the GPU merges. */
static void test_merge_cost(void **state) {
    pam_sim_config c;
    load_defaults(&c);
    double L = 80, S = 32, H = 64, D = 128, G = 8, parts = 32;
    double qb = H * D * 2, pb = H * (D + 2) * 4;
    for (int noru = 0; noru <= 1; noru++) {
        pam_sim_machine m;
        machine(&c, "llama-3-70b", noru ? "pam-noru" : "pam", &m);
        int t = tier_of(&m, "ddr5_pim");
        pam_sim_load ld = {.batch = S};
        ld.kv_bytes[t] = 50e9;
        ld.seqs_in[t] = S;
        pam_sim_cost cost;
        pam_sim_step_cost(&m, &ld, &cost);
        double part_bytes = L * S * parts * pb / G;
        double ops = 3 * part_bytes / 4;
        assert_true(REL(cost.merge_ops, ops));
        double to_gpu = noru ? part_bytes : L * S * pb;
        int hl = pam_sim_config_find_link(&c, "pcie5_x16");
        assert_true(REL(cost.link_bytes[hl], L * S * qb + to_gpu));
        if (noru)
            assert_true(REL(cost.merge_s, ops / (8 * 989.4e12 / 2)));
        else
            assert_true(REL(cost.merge_s, ops / 512e9));
        assert_true(REL(cost.comm_s, L * 2 * 3e-6 + (L * S * qb + to_gpu) / (8 * 63.0e9)));
    }
    pam_sim_config_free(&c);
}

/* gpu: the batch is what the HBM left after weights and reserves holds. */
static void test_capacity_limited_batch(void **state) {
    pam_sim_config c;
    load_defaults(&c);
    pam_sim_machine m;
    machine(&c, "llama-3-70b", "gpu", &m);
    double kv_token = 2.0 * 80 * 8 * 128 * 2, block = 256 * kv_token;
    double cap = 40 * 16e9 - m.shape.weight_bytes - 8 * 8e9;
    double blocks = floor(cap / block);
    double want = floor(blocks / ceil(32768.0 / 256));
    assert_true(REL(pam_sim_machine_max_batch(&m, 32768), want));
    /* a closed batch larger than that runs at that size and says so */
    pam_sim_shape s = m.shape;
    pam_sim_params p = {.cfg = &c, .shape = &s, .sys = m.sys, .batch = 1000, .context = 32768 - 48, .steps = 32,
                        .warmup = 16, .seed = 1};
    pam_sim_result r;
    assert_int_equal(pam_sim_run(&p, &r), PAM_OK);
    assert_true(r.ok);
    assert_true(REL(r.batch, want));
    assert_non_null(strstr(r.note, "capacity-limited"));
    /* OPT-175B's weights (349 GB) do not fit 8 GPUs' HBM3-PIM (480 GB) with a
     * whole sequence of 2M tokens: reported, not an error */
    pam_sim_shape o;
    assert_int_equal(pam_sim_shape_builtin("opt-175b", &o), PAM_OK);
    p.shape = &o;
    p.batch = 1;
    p.context = 1 << 20;
    assert_int_equal(pam_sim_run(&p, &r), PAM_OK);
    assert_false(r.ok);
    assert_non_null(strstr(r.note, "does not fit"));
    pam_sim_config_free(&c);
}

/* Energy: the parts add up to the total, and a dense-only step on the gpu
 * system costs exactly weights x HBM energy + MACs x GPU energy + static
 * power x time + the all-reduce's link energy. */
static void test_energy_sums(void **state) {
    pam_sim_config c;
    load_defaults(&c);
    pam_sim_machine m;
    machine(&c, "llama-3-8b", "gpu", &m);
    pam_sim_load ld = {.batch = 4};
    pam_sim_cost cost;
    pam_sim_step_cost(&m, &ld, &cost);
    double e_hbm = m.shape.weight_bytes * 8 * (1.5 + 2.4) * 1e-12;
    double e_gpu = m.shape.params * 4 * 1.21e-12 + cost.time_s * 8 * 100;
    /* 32 layers x 2 ring all-reduces of 4 x 4096 f16 activations over 8 GPUs */
    double ar_bytes = 32 * 2 * (2 * 7.0 / 8 * 4 * 4096 * 2) * 8;
    int nv = pam_sim_config_find_link(&c, "nvlink4");
    assert_true(REL(cost.link_bytes[nv], ar_bytes));
    double e_nv = ar_bytes * 8 * 2.0e-12;
    int h = pam_sim_config_find_device(&c, "hbm3");
    assert_true(REL(cost.e_dev_j[h], e_hbm));
    assert_true(REL(cost.e_gpu_j, e_gpu));
    assert_true(REL(cost.e_link_j[nv], e_nv));
    assert_true(REL(pam_sim_cost_energy(&cost), e_hbm + e_gpu + e_nv));
    /* a pam step with KV everywhere and a migration: the sum of the parts */
    machine(&c, "llama-3-70b", "pam", &m);
    pam_sim_load l2 = {.batch = 8};
    for (int t = 0; t < m.n_tiers; t++) {
        l2.kv_bytes[t] = 10e9 * (t + 1);
        l2.seqs_in[t] = 8;
        l2.new_kv_bytes[t] = 1e6;
    }
    l2.migr_bytes[1][0] = 1e9;
    pam_sim_step_cost(&m, &l2, &cost);
    double sum = cost.e_gpu_j + cost.e_ru_j;
    for (int i = 0; i < PAM_SIM_MAX_DEVICES; i++) sum += cost.e_dev_j[i];
    for (int i = 0; i < PAM_SIM_MAX_LINKS; i++) sum += cost.e_link_j[i];
    assert_true(REL(pam_sim_cost_energy(&cost), sum));
    assert_true(cost.migrate_s > 0 && cost.e_ru_j > 0);
    /* the migration: DDR read + HBM write through both interfaces + the host link */
    int hl = pam_sim_config_find_link(&c, "pcie5_x16");
    assert_true(cost.link_bytes[hl] >= 1e9);
    assert_true(REL(cost.migrate_s, 1e9 / fmin(fmin(32 * 19.2e9, 40 * 670e9), 8 * 63.0e9)));
    pam_sim_config_free(&c);
}

/* ---- configuration ------------------------------------------------------- */

static void test_config_round_trip(void **state) {
    pam_sim_config a, b;
    load_defaults(&a);
    assert_int_equal(pam_sim_config_parse(a.json, &b), PAM_OK);
    assert_int_equal(a.n_dev, b.n_dev);
    assert_int_equal(a.n_link, b.n_link);
    assert_memory_equal(a.dev, b.dev, sizeof a.dev);
    assert_memory_equal(a.link, b.link, sizeof a.link);
    assert_memory_equal(&a.gpu, &b.gpu, sizeof a.gpu);
    assert_memory_equal(a.tiers, b.tiers, sizeof a.tiers);
    assert_string_equal(a.json, b.json);
    /* every parameter of every device carries a source */
    assert_non_null(strstr(a.json, "\"sources\""));
    assert_non_null(strstr(a.json, "Horowitz"));
    pam_sim_config_free(&b);

    struct {
        const char *from, *to, *msg;
    } bad[] = {
        {"\"capacity_gb\": 16", "\"capacity_gb\": -16", "capacity_gb"},
        {"\"host_link\": \"pcie5_x16\"", "\"host_link\": \"nope\"", "host_link"},
        {"\"attach\": \"pcie5_x4\"", "\"attach\": \"usb\"", "attach"},
        {"\"ddr5_pim\",", "\"ddr6\",", "systems.pam"},
        {"\"tflops\"", "\"teraflops\"", "tflops"},
        {"\"block_tokens\": 256", "\"block_tokens\": 0", "block_tokens"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *t = malloc(strlen(a.json) + 64);
        const char *at = strstr(a.json, bad[i].from);
        if (!at) fail_msg("case %zu: '%s' not in the defaults", i, bad[i].from);
        size_t pre = (size_t)(at - a.json);
        memcpy(t, a.json, pre);
        strcpy(t + pre, bad[i].to);
        strcat(t, at + strlen(bad[i].from));
        assert_int_equal(pam_sim_config_parse(t, &b), PAM_ERR_FORMAT);
        if (!strstr(pam_last_error(), bad[i].msg)) fail_msg("case %zu: message '%s'", i, pam_last_error());
        free(t);
    }
    assert_int_equal(pam_sim_config_parse("{", &b), PAM_ERR_FORMAT);
    assert_int_equal(pam_sim_config_load("/nonexistent/sim.json", &b), PAM_ERR_IO);
    pam_sim_config_free(&a);
}

/* ---- workloads ----------------------------------------------------------- */

static void test_shapes(void **state) {
    pam_sim_shape s;
    assert_int_equal(pam_sim_shape_builtin("llama-3-70b", &s), PAM_OK);
    /* 70.6 B parameters, less the input embedding (1.05 B) */
    assert_true(fabs(s.params - 69.5e9) < 0.1e9);
    assert_true(REL(pam_sim_shape_kv_bytes_per_token(&s, 2), 327680));
    assert_int_equal(pam_sim_shape_builtin("qwen2.5-32b", &s), PAM_OK);
    assert_true(REL(pam_sim_shape_kv_bytes_per_token(&s, 2), 262144));
    assert_int_equal(pam_sim_shape_builtin("opt-175b", &s), PAM_OK);
    assert_true(fabs(s.params - 174.6e9) < 0.5e9);
    assert_int_equal(pam_sim_shape_builtin("gpt-5", &s), PAM_ERR_NOT_FOUND);
    /* from a GGUF's metadata */
    ref_model_desc d = {.arch = "llama", .n_vocab = 300, .n_embd = 64, .n_layer = 3, .n_head = 4, .n_head_kv = 2,
                        .n_ff = 96, .n_ctx = 128, .rms_eps = 1e-5f, .rope_theta = 10000, .wtype = PAM_DT_F16, .seed = 5};
    ref_weights *w;
    assert_int_equal(ref_model_generate(&d, &w), PAM_OK);
    const char *path = pam_test_tmp("sim_shape.gguf");
    assert_int_equal(ref_model_write_gguf(&d, w, path), PAM_OK);
    ref_model_free(w);
    assert_int_equal(pam_sim_shape_gguf(path, &s), PAM_OK);
    assert_int_equal(s.n_layer, 3);
    assert_int_equal(s.n_head, 4);
    assert_int_equal(s.n_head_kv, 2);
    assert_int_equal(s.head_dim, 16);
    assert_int_equal(s.d_ff, 96);
    assert_int_equal(s.n_vocab, 300);
    assert_true(s.weight_bytes > 0);
    assert_int_not_equal(pam_sim_shape_gguf(pam_test_tmp("sim_missing.gguf"), &s), PAM_OK);
}

static void test_locality_trace(void **state) {
    const char *path = pam_test_tmp("sim_trace.jsonl");
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    /* 90 blocks at 1e-3.5, 10 at 1e-0.5 (the format's bin centres) */
    fprintf(f, "{\"step\":0,\"policy\":\"pam\",\"tiers\":[],\"importance_hist\":[5,0,0,45,0,0,0,0,0,0]}\n");
    fprintf(f, "{\"step\":1,\"policy\":\"pam\",\"tiers\":[],\"importance_hist\":[5,0,0,45,0,0,0,0,0,0]}\n");
    fclose(f);
    pam_sim_locality l;
    assert_int_equal(pam_sim_locality_trace(path, &l), PAM_OK);
    double sum = 0;
    for (int i = 0; i < PAM_SIM_LOC_BINS; i++) sum += l.q[i];
    /* the profile keeps the ratios between blocks and has mean 1: the
     * scale-free rule */
    assert_true(fabs(pam_sim_locality_at(&l, 0.99) / pam_sim_locality_at(&l, 0.0) - 1000.0) < 1e-6);
    assert_true(fabs(sum / PAM_SIM_LOC_BINS - 1.0) < 1e-9);
    int hot = 0;
    for (int i = 0; i < PAM_SIM_LOC_BINS; i++) hot += l.q[i] > 1;
    assert_true(hot >= 6 && hot <= 7); /* 10% of 64 bins */
    f = fopen(path, "w");
    fprintf(f, "{\"step\":0}\n");
    fclose(f);
    assert_int_equal(pam_sim_locality_trace(path, &l), PAM_ERR_FORMAT);
    assert_non_null(strstr(pam_last_error(), "line 1"));
    assert_int_equal(pam_sim_locality_trace(pam_test_tmp("sim_none.jsonl"), &l), PAM_ERR_IO);
    pam_sim_locality_default(&l);
    sum = 0;
    for (int i = 0; i < PAM_SIM_LOC_BINS; i++) sum += l.q[i];
    assert_true(fabs(sum / PAM_SIM_LOC_BINS - 1.0) < 1e-9);
}

/* ---- runs ------------------------------------------------------------------ */

static void run_once(const pam_sim_config *c, const char *sys, double rate, uint64_t seed, pam_sim_result *r) {
    pam_sim_shape s;
    assert_int_equal(pam_sim_shape_builtin("llama-3-8b", &s), PAM_OK);
    pam_sim_params p = {.cfg = c, .shape = &s, .batch = 96, .context = 65536, .steps = 24, .warmup = 8,
                        .rate = rate, .duration_s = 20, .input_mean = 4096, .output_mean = 128, .seed = seed};
    assert_int_equal(pam_sim_system_parse(sys, &p.sys), PAM_OK);
    if (pam_sim_run(&p, r) != PAM_OK) fail_msg("run: %s", pam_last_error());
    assert_true(r->ok);
}

static void test_runs_deterministic(void **state) {
    pam_sim_config c;
    load_defaults(&c);
    const char *sys[] = {"gpu", "offload", "pam", "pam-nosched", "pam-noddrpim"};
    for (size_t i = 0; i < sizeof sys / sizeof sys[0]; i++) {
        for (int stream = 0; stream <= 1; stream++) {
            pam_sim_result a, b, x;
            run_once(&c, sys[i], stream ? 40 : 0, 7, &a);
            run_once(&c, sys[i], stream ? 40 : 0, 7, &b);
            assert_memory_equal(&a, &b, sizeof a);
            assert_true(a.tokens_per_second > 0 && a.joules_per_token > 0);
            if (stream) {
                run_once(&c, sys[i], 40, 8, &x);
                assert_true(x.requests_arrived != a.requests_arrived || x.tokens_per_second != a.tokens_per_second);
                assert_true(a.requests_done > 0 && a.requests_done <= a.requests_arrived);
            }
        }
    }
    /* 96 x 64k tokens of Llama-3-8B (825 GB) spill out of HBM: pam beats offload */
    pam_sim_result p, o;
    run_once(&c, "pam", 0, 1, &p);
    run_once(&c, "offload", 0, 1, &o);
    assert_true(p.tokens_per_second > o.tokens_per_second);
    pam_sim_config_free(&c);
}

/* ---- one scheduler, two worlds ------------------------------------------- */

/* The engine's KV manager schedules at the end of each step from its tiers
 * and the blocks' importance; the simulator's path (pam_sim_schedule) gets
 * the same tiers, placement and importances and must land every block in
 * the same tier. */
static void test_same_scheduler(void **state) {
    pam_kv_shape s = {.n_layer = 1, .n_head_kv = 2, .head_dim = 16, .block_tokens = 4};
    pam_pool *pool;
    assert_int_equal(pam_pool_create(2, &pool), PAM_OK);
    uint64_t bb = 2ull * 2 * 4 * 2 * 16;
    pam_tier *tiers[3];
    uint64_t caps[3] = {8, 12, 64};
    for (int i = 0; i < 3; i++) assert_int_equal(pam_tier_dram_open(&s, caps[i] * bb, &tiers[i]), PAM_OK);
    tiers[0]->read_gbps = 100;
    tiers[1]->read_gbps = 20;
    tiers[2]->read_gbps = 2;
    pam_kvm_config cfg = {.shape = s, .tiers = tiers, .n_tiers = 3, .policy = PAM_KV_POLICY_PAM};
    pam_kvm *kvm;
    assert_int_equal(pam_kvm_create(&cfg, pool, &kvm), PAM_OK);
    int32_t seq;
    assert_int_equal(pam_kvm_seq_create(kvm, &seq), PAM_OK);
    const int32_t n_tok = 118, n_blk = 30; /* the last block is partly full: pinned */
    assert_int_equal(pam_kvm_fill_synthetic(kvm, seq, n_tok, 11), PAM_OK);
    pam_test_rng rng = {9};
    float q[4 * 16], out[4 * 16];
    int total_moves = 0;
    for (int step = 0; step < 10; step++) {
        for (int i = 0; i < 64; i++) q[i] = (float)pam_test_rng_normal(&rng) * (1.0f + step);
        int8_t before[30], after_engine[30];
        for (int b = 0; b < n_blk; b++) before[b] = (int8_t)pam_kvm_block_tier(kvm, seq, 0, b);
        assert_int_equal(pam_kvm_attend(kvm, seq, 0, n_tok, q, 4, 0.25f, out), PAM_OK);
        assert_int_equal(pam_kvm_step_end(kvm), PAM_OK);
        /* the simulator's inputs: the same tiers, placement, importances */
        pam_sched_tier st[3];
        uint64_t used[3] = {0};
        int8_t tier[30];
        float imp[30];
        uint8_t live[30], pinned[30];
        for (int b = 0; b < n_blk; b++) {
            after_engine[b] = (int8_t)pam_kvm_block_tier(kvm, seq, 0, b);
            tier[b] = before[b];
            used[before[b]]++;
            imp[b] = pam_kvm_block_importance(kvm, seq, 0, b);
            live[b] = 1;
            pinned[b] = b == n_blk - 1;
        }
        for (int t = 0; t < 3; t++) {
            pam_tier *x = pam_kvm_tier(kvm, t);
            st[t] = (pam_sched_tier){.capacity_blocks = x->capacity_blocks, .used_blocks = used[t],
                                     .block_bytes = x->block_bytes, .read_gbps = x->read_gbps};
        }
        double moved[PAM_SIM_TIERS][PAM_SIM_TIERS] = {{0}};
        size_t n = pam_sim_schedule(st, 3, (uint32_t)n_blk, live, tier, imp, pinned, 64ull << 20, used, moved);
        total_moves += (int)n;
        for (int b = 0; b < n_blk; b++)
            if (tier[b] != after_engine[b])
                fail_msg("step %d block %d: engine put it in tier %d, the simulator in %d", step, b, after_engine[b],
                         tier[b]);
        pam_kvm_report r;
        pam_kvm_report_get(kvm, &r);
        assert_int_equal((uint64_t)n, r.migrations_step);
    }
    assert_true(total_moves > 0);
    pam_kvm_destroy(kvm);
    pam_pool_destroy(pool);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roofline_one_device),
        cmocka_unit_test(test_offload_link_bound),
        cmocka_unit_test(test_merge_cost),
        cmocka_unit_test(test_capacity_limited_batch),
        cmocka_unit_test(test_energy_sums),
        cmocka_unit_test(test_config_round_trip),
        cmocka_unit_test(test_shapes),
        cmocka_unit_test(test_locality_trace),
        cmocka_unit_test(test_runs_deterministic),
        cmocka_unit_test(test_same_scheduler),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
