/* The simulated hardware (DESIGN.md §3a): devices, links, the GPU, the
 * reduction units, and which devices each system uses. A plain parameter
 * record: the defaults are a JSON document (every number with its public
 * source next to it) parsed by the same loader as a user's file, so
 * `pam sim --dump-config` prints exactly what a run uses and a user can copy
 * it, change it and pass it back with --config.
 *
 * Units are in the names: GB = 1e9 bytes, gbps = GB/s, pj = picojoules,
 * w = watts, us = microseconds. Per-device numbers are per physical part (one
 * HBM stack, one DIMM, one SSD); `count` says how many parts the system has,
 * and every aggregate is count x per-part. */
#ifndef PAM_SIM_SIM_CONFIG_H
#define PAM_SIM_SIM_CONFIG_H

#include "pam.h"

#define PAM_SIM_NAME 32
#define PAM_SIM_MAX_DEVICES 12
#define PAM_SIM_MAX_LINKS 8
#define PAM_SIM_MAX_TIERS 4

typedef struct pam_sim_device {
    char name[PAM_SIM_NAME];
    /* how it reaches the GPU: "gpu" (the GPU's own memory), "host" (the host
     * memory bus, then the host link), or a link name (then the host link) */
    char attach[PAM_SIM_NAME];
    double count;
    double capacity_gb;        /* per part */
    double ext_gbps;           /* per part: read bandwidth at its external interface */
    double int_gbps;           /* per part: internal bandwidth available to its PIM units (0: none) */
    double pim_units;          /* per part (0: no PIM) */
    double pim_gmacs_per_unit; /* f16 multiply-accumulates per second per unit, 1e9 */
    double read_pj_per_bit;    /* an internal read (array to the PIM units / the device's edge) */
    double io_pj_per_bit;      /* the device's external interface, on top of the internal read */
    double pim_mac_pj;         /* one PIM MAC */
    double static_w;           /* per part, whenever the system is up */
} pam_sim_device;

typedef struct pam_sim_link {
    char name[PAM_SIM_NAME];
    double count;      /* parallel instances (e.g. one x16 link per GPU) */
    double gbps;       /* per instance, one direction */
    double pj_per_bit; /* both ends' PHYs */
    double latency_us; /* one transfer's fixed cost (DMA set-up, flight) */
} pam_sim_link;

typedef struct pam_sim_gpu {
    double count;
    double tflops;    /* dense f16 tensor throughput per GPU, 1e12 FLOP/s */
    double attn_tflops; /* the same for decode attention's kernels */
    double mac_pj;    /* energy per MAC */
    double static_w;  /* per GPU */
    double reserve_gb; /* per GPU: activations, workspace (not KV, not weights) */
    /* 1: the GPU is the only compute engine, so the PIM tiers' attention
     * and the copies run on it one after another (a CPU-only machine whose
     * "PIM" tiers are its own cores); 0: devices compute at once */
    double shared_compute;
} pam_sim_gpu;

typedef struct pam_sim_ru {
    double gops;     /* merge operations per second, 1e9, all reduction units together */
    double op_pj;    /* per operation */
    double static_w; /* all units together */
} pam_sim_ru;

typedef enum pam_sim_system_kind {
    PAM_SIM_GPU = 0,
    PAM_SIM_OFFLOAD = 1,
    PAM_SIM_PAM = 2,
    PAM_SIM_N_KINDS = 3,
} pam_sim_system_kind;

typedef struct pam_sim_config {
    pam_sim_gpu gpu;
    pam_sim_ru ru;
    pam_sim_device dev[PAM_SIM_MAX_DEVICES];
    int n_dev;
    pam_sim_link link[PAM_SIM_MAX_LINKS];
    int n_link;
    char host_link[PAM_SIM_NAME]; /* host <-> GPU */
    char peer_link[PAM_SIM_NAME]; /* GPU <-> GPU (tensor-parallel all-reduce) */
    /* devices of each system kind, fastest first (indices into dev) */
    int tiers[PAM_SIM_N_KINDS][PAM_SIM_MAX_TIERS];
    int n_tiers[PAM_SIM_N_KINDS];
    /* KV in blocks of block_tokens tokens of one sequence (all layers): the
     * scheduler's unit. */
    double block_tokens;
    double kv_bytes_per_elem;    /* 2: f16 K/V */
    double migrate_gb_per_step;  /* the scheduler's migration budget per step */
    double schedule_every;       /* steps between scheduler runs (budget scales with it) */
    double max_batch;            /* continuous batching: sequences decoded together at most */
    char *json;                  /* the document this was loaded from (pretty-printed; owned) */
} pam_sim_config;

/* The built-in defaults (DGX-H100-class host with HBM3(-PIM), DDR5(-PIM),
 * NVMe(-PIM) and PCIe 5). Free with pam_sim_config_free. */
pam_status pam_sim_config_default(pam_sim_config *cfg);
/* Parses a JSON document (the --dump-config format). Every field is
 * required; an unknown device or link name, a negative number or a missing
 * field is PAM_ERR_FORMAT with a message naming it. */
pam_status pam_sim_config_parse(const char *text, pam_sim_config *cfg);
pam_status pam_sim_config_load(const char *path, pam_sim_config *cfg);
void pam_sim_config_free(pam_sim_config *cfg);

int pam_sim_config_find_device(const pam_sim_config *cfg, const char *name);
int pam_sim_config_find_link(const pam_sim_config *cfg, const char *name);
const char *pam_sim_kind_name(pam_sim_system_kind k);

#endif
