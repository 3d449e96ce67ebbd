/* pam sim: the PAM hardware simulated (DESIGN.md §3a).
 *
 * A machine is a system (gpu, offload, pam or an ablation of pam) over the
 * configured devices, instantiated for one model. A run decodes either a
 * closed batch at a given context or a seeded request stream, step by step:
 * each step's time and energy come from pam_sim_step_cost (a roofline per
 * device and link, below), and KV placement and migration come from the
 * engine's own scheduler (kv/sched.c, pam_sched_plan) fed with the devices'
 * capacities and attention rates; the moves it plans cost simulated
 * bandwidth and energy.
 *
 * Dataflow per system (one decode step; B sequences, K_t KV bytes in tier t):
 *  - dense layers on the GPUs: max(weights / HBM bandwidth, MACs / GPU
 *    rate), plus the tensor-parallel all-reduces over the peer link;
 *  - gpu: all KV in HBM, attended by the GPU;
 *  - offload: KV outside HBM crosses the host link to the GPU every step,
 *    layer-pipelined against the GPU's work: step = max(dense + GPU
 *    attention, copies);
 *  - pam: each tier with PIM computes (m, l, o) partials over its own KV at
 *    max(K_t / internal bandwidth, MACs / PIM rate), all tiers at once; q goes
 *    out and partials come back over the links; reduction units near the
 *    host memory merge the host tiers' partials so one partial per sequence
 *    and layer reaches the GPU (without them every device's partial does).
 *    The HBM tier's KV is attended by its PIM units or the GPU, whichever is
 *    faster for the model's grouped-query factor. A tier without PIM (an
 *    ablation) is copied to the GPU as in offload.
 * Migrations run between steps over the links between the two tiers.
 * Everything is deterministic: the same inputs and seed give the same bits. */
#ifndef PAM_SIM_SIM_H
#define PAM_SIM_SIM_H

#include <stdint.h>

#include "kv/sched.h"
#include "pam.h"
#include "sim/sim_config.h"
#include "sim/sim_workload.h"

enum {
    PAM_SIM_NO_SCHED = 1,    /* static placement: fastest tier with room, never moved */
    PAM_SIM_NO_LOCALITY = 2, /* every block equally important */
    PAM_SIM_NO_SSD_PIM = 4,  /* the SSD tier's KV is copied to the GPU */
    PAM_SIM_NO_DDR_PIM = 8,  /* the DDR tier's KV is copied to the GPU */
    PAM_SIM_NO_RU = 16,      /* partials merged on the GPU */
};

typedef struct pam_sim_system {
    char name[PAM_SIM_NAME];
    pam_sim_system_kind kind;
    unsigned flags;
} pam_sim_system;

/* gpu, offload, pam, pam-nosched, pam-nolocality, pam-nossdpim,
 * pam-noddrpim, pam-noru. */
pam_status pam_sim_system_parse(const char *name, pam_sim_system *out);
const char *pam_sim_system_names(void);

#define PAM_SIM_TIERS PAM_SIM_MAX_TIERS

typedef struct pam_sim_tier {
    int dev;           /* index into cfg->dev */
    int host;          /* 0: the GPU's own memory */
    int pim;           /* attention computed in the device */
    int ssd, ddr;      /* which ablation switch applies (by attach: a link, or host) */
    double cap_bytes;  /* for KV */
    double ext_gbps, int_gbps, pim_gmacs; /* aggregates over the device's parts */
    double path_gbps;  /* device to GPU, the slowest link on the way */
    int attach_link;   /* link index, or -1 */
    double attn_gbps;  /* KV bytes per second its attention gets through (what the scheduler sees) */
    int hbm_on_pim;    /* tier 0 only: its PIM beats the GPU for this model */
} pam_sim_tier;

typedef struct pam_sim_machine {
    const pam_sim_config *cfg;
    pam_sim_shape shape;
    pam_sim_system sys;
    pam_sim_tier tier[PAM_SIM_TIERS];
    int n_tiers;
    int host_link, peer_link;
    double kv_per_token;      /* bytes, all layers */
    double macs_per_kv_byte;  /* grouped-query factor / bytes per element */
    double block_bytes;       /* one scheduler block */
    double gpu_macs;          /* MAC/s, all GPUs: dense layers */
    double gpu_attn_macs;     /* MAC/s, all GPUs: attention */
    double hbm_gbps;          /* HBM external, all stacks */
} pam_sim_machine;

/* PAM_ERR_FULL when the weights do not fit the GPUs' memory. */
pam_status pam_sim_machine_init(const pam_sim_config *cfg, const pam_sim_shape *shape, const pam_sim_system *sys,
                                pam_sim_machine *m);
/* Sequences of n_tokens (KV reserved up front, as the engine admits) that
 * fit all the machine's tiers together. */
double pam_sim_machine_max_batch(const pam_sim_machine *m, double n_tokens);
/* What kv/sched.c sees of tier t holding used_blocks blocks. */
void pam_sim_machine_sched_tier(const pam_sim_machine *m, int t, uint64_t used_blocks, pam_sched_tier *out);

/* One step's inputs. */
typedef struct pam_sim_load {
    double batch;
    double kv_bytes[PAM_SIM_TIERS]; /* resident KV the step attends, per tier */
    double seqs_in[PAM_SIM_TIERS];  /* sequences with KV in the tier */
    double new_kv_bytes[PAM_SIM_TIERS]; /* written this step (new tokens, prefill) */
    double prefill_tokens, prefill_macs; /* admitted this step */
    double migr_bytes[PAM_SIM_TIERS][PAM_SIM_TIERS]; /* [from][to] */
} pam_sim_load;

typedef struct pam_sim_cost {
    double time_s;
    double dense_s, attn_s, comm_s, merge_s, allreduce_s, copy_s, migrate_s, prefill_s;
    double tier_s[PAM_SIM_TIERS]; /* each tier's attention (PIM or copy) time */
    double gpu_attn_s;
    double e_gpu_j, e_ru_j;
    double e_dev_j[PAM_SIM_MAX_DEVICES]; /* dynamic + static */
    double e_link_j[PAM_SIM_MAX_LINKS];
    double link_bytes[PAM_SIM_MAX_LINKS];
    double macs_pim, merge_ops;
} pam_sim_cost;

void pam_sim_step_cost(const pam_sim_machine *m, const pam_sim_load *ld, pam_sim_cost *c);
double pam_sim_cost_energy(const pam_sim_cost *c);

/* The simulator's half of "one scheduler, two worlds": hands the live
 * blocks (tier, importance, pinned) to pam_sched_plan with the given tiers
 * and budget, applies the moves in order to tier[], used[] and
 * moved_blocks[from][to], and returns how many it applied. ids are block
 * indices. */
size_t pam_sim_schedule(const pam_sched_tier *tiers, int n_tiers, uint32_t n_blocks, const uint8_t *live,
                        int8_t *tier, const float *imp, const uint8_t *pinned, uint64_t budget, uint64_t *used,
                        double moved_blocks[PAM_SIM_TIERS][PAM_SIM_TIERS]);

typedef struct pam_sim_params {
    const pam_sim_config *cfg;
    const pam_sim_shape *shape;
    const pam_sim_locality *locality; /* NULL: the built-in profile */
    pam_sim_system sys;
    /* closed batch (rate 0): batch sequences at context tokens, warmup
     * untimed steps then steps timed ones */
    int64_t batch, context, steps, warmup;
    /* a stream (rate > 0): Poisson arrivals for duration_s simulated
     * seconds, input and output lengths uniform around their means */
    double rate, duration_s, input_mean, output_mean;
    uint64_t seed;
} pam_sim_params;

typedef struct pam_sim_result {
    char model[64], system[PAM_SIM_NAME];
    int ok;
    char note[192];
    double batch, context, max_batch;
    double tokens_per_second, tpot_ms, joules_per_token, ttft_ms;
    double steps, sim_seconds, requests_done, requests_arrived;
    /* mean seconds per step */
    double dense_s, attn_s, comm_s, merge_s, allreduce_s, copy_s, migrate_s, prefill_s;
    int n_tiers;
    char tier_name[PAM_SIM_TIERS][PAM_SIM_NAME];
    double tier_busy[PAM_SIM_TIERS];     /* fraction of the time its attention ran */
    double tier_kv_share[PAM_SIM_TIERS]; /* of the KV bytes, mean over steps */
    double gpu_busy;
    /* joules per output token */
    double e_gpu, e_ru, e_dev[PAM_SIM_MAX_DEVICES], e_link[PAM_SIM_MAX_LINKS];
    double migrations, migrated_gb;
} pam_sim_result;

pam_status pam_sim_run(const pam_sim_params *p, pam_sim_result *r);

#endif
