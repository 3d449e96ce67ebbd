/* Simulated hardware: defaults with their sources, JSON load and dump.
 *
 * The defaults are built as a JSON document (value and source side by side,
 * docs/SIM.md explains each) and parsed by the same code as a user's file,
 * so there is one path from numbers to the model and --dump-config prints
 * what a run uses. */
#include "sim/sim_config.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"

static const char *const kind_names[PAM_SIM_N_KINDS] = {"gpu", "offload", "pam"};

const char *pam_sim_kind_name(pam_sim_system_kind k) {
    return k >= 0 && k < PAM_SIM_N_KINDS ? kind_names[k] : "?";
}

/* ---- defaults ------------------------------------------------------------ */

/* One parameter: value and where it comes from. */
static void put(json_t *obj, json_t *src, const char *key, double v, const char *source) {
    json_object_set_new(obj, key, json_real(v));
    if (source) json_object_set_new(src, key, json_string(source));
}

static json_t *new_part(const char *name, const char *attach, json_t **src) {
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(name));
    if (attach) json_object_set_new(o, "attach", json_string(attach));
    *src = json_object();
    return o;
}

static void end_part(json_t *arr, json_t *o, json_t *src) {
    json_object_set_new(o, "sources", src);
    json_array_append_new(arr, o);
}

#define H100 "NVIDIA H100 Tensor Core GPU datasheet (SXM5)"
#define DGX "NVIDIA DGX H100 datasheet / user guide"
#define AQB "Kwon et al., ISSCC 2021 (Samsung HBM2-PIM, Aquabolt-XL) and Lee et al., ISCA 2021"
#define HRZ "Horowitz, ISSCC 2014, 'Computing's energy problem' (45 nm)"
#define FGD "O'Connor et al., MICRO 2017 (Fine-Grained DRAM): HBM2 about 3.9 pJ/bit per access"
#define DDR "JEDEC JESD79-5 (DDR5): 4800 MT/s x 2 x 32-bit subchannels = 38.4 GB/s per channel"
#define NVM "Samsung PM1743 (PCIe 5.0 x4 NVMe) product brief"
#define PCIE "PCI Express Base Specification 5.0: 32 GT/s per lane, 128b/130b"

static void dram_energy(json_t *o, json_t *s, int hbm) {
    if (hbm) {
        put(o, s, "read_pj_per_bit", 1.5, "estimate from " FGD ": about 1/3 of it array access (activation, column)");
        put(o, s, "io_pj_per_bit", 2.4, "estimate from " FGD ": the rest on-die data movement, TSVs and PHY");
    } else {
        put(o, s, "read_pj_per_bit", 6.0,
            "estimate: " HRZ " gives 20-40 pJ/bit for a DRAM access (DDR3); DDR5 at 1.1 V about 15, 40% array");
        put(o, s, "io_pj_per_bit", 9.0, "estimate: the other 60% of 15 pJ/bit, bus I/O and termination");
    }
}

static json_t *default_doc(void) {
    json_t *doc = json_object(), *s, *o;
    o = json_object();
    s = json_object();
    put(o, s, "count", 8, DGX ": 8 x H100 SXM5");
    put(o, s, "tflops", 989.4, H100 ": 989.4 TFLOPS dense FP16/BF16 tensor");
    put(o, s, "attn_tflops", 989.4,
        H100 ": decode attention on tensor cores (FlashInfer, FlashAttention decode kernels)");
    put(o, s, "mac_pj", 1.21, "derived from " H100 ": (700 W TDP - 100 W idle) / 494.7e12 MAC/s");
    put(o, s, "static_w", 100, "estimate: H100 SXM5 idle power including its HBM (nvidia-smi reports 70-100 W)");
    put(o, s, "reserve_gb", 8, "assumption: activations and workspace per GPU");
    put(o, s, "shared_compute", 0, "PIM devices and copies run beside the GPU");
    json_object_set_new(o, "sources", s);
    json_object_set_new(doc, "gpu", o);

    o = json_object();
    s = json_object();
    put(o, s, "gops", 512,
        "assumption: one 16-lane FP32 merge unit per DDR5 channel (16) at 2 GHz, in the memory controllers");
    put(o, s, "op_pj", 4.6, HRZ ": FP32 multiply 3.7 pJ + add 0.9 pJ");
    put(o, s, "static_w", 2, "estimate");
    json_object_set_new(o, "sources", s);
    json_object_set_new(doc, "reduction_units", o);

    json_t *links = json_array();
    o = new_part("pcie5_x16", NULL, &s);
    put(o, s, "count", 8, DGX ": one PCIe 5.0 x16 link per GPU");
    put(o, s, "gbps", 63.0, PCIE ": x16 = 63.0 GB/s per direction");
    put(o, s, "pj_per_bit", 5.5, "estimate: 32 Gb/s SerDes PHYs report 2-3 pJ/bit each end");
    put(o, s, "latency_us", 3, "estimate: DMA set-up and completion of one transfer");
    end_part(links, o, s);
    o = new_part("pcie5_x4", NULL, &s);
    put(o, s, "count", 8, "one per SSD");
    put(o, s, "gbps", 15.75, PCIE ": x4 = 15.75 GB/s per direction");
    put(o, s, "pj_per_bit", 5.5, "as pcie5_x16");
    put(o, s, "latency_us", 3, "as pcie5_x16");
    end_part(links, o, s);
    o = new_part("nvlink4", NULL, &s);
    put(o, s, "count", 8, DGX ": NVLink 4 through NVSwitch, every GPU");
    put(o, s, "gbps", 450, H100 ": 900 GB/s NVLink per GPU, both directions");
    put(o, s, "pj_per_bit", 2.0, "estimate: short-reach NVLink SerDes");
    put(o, s, "latency_us", 1, "estimate");
    end_part(links, o, s);
    o = new_part("cxl2_x16", NULL, &s);
    put(o, s, "count", 8, "assumption: one CXL 2.0 x16 port per GPU's share of memory (not used by default)");
    put(o, s, "gbps", 63.0, "CXL 2.0 Specification: runs on the PCIe 5.0 x16 PHY, 63.0 GB/s per direction");
    put(o, s, "pj_per_bit", 5.5, "as pcie5_x16");
    put(o, s, "latency_us", 1, "estimate: CXL.mem adds about 100-200 ns over local DRAM; block transfers more");
    end_part(links, o, s);
    json_object_set_new(doc, "links", links);

    json_t *devs = json_array();
    for (int pim = 0; pim <= 1; pim++) {
        o = new_part(pim ? "hbm3_pim" : "hbm3", "gpu", &s);
        put(o, s, "count", 40, H100 ": 5 active HBM3 stacks per GPU, 8 GPUs");
        put(o, s, "capacity_gb", pim ? 12 : 16,
            pim ? "derived from " AQB ": a PIM cube holds 3/4 of a plain one (6 GB vs 8 GB), so 16 GB -> 12 GB"
                : H100 ": 80 GB over 5 stacks");
        put(o, s, "ext_gbps", 670, H100 ": 3.35 TB/s over 5 stacks");
        put(o, s, "int_gbps", pim ? 2680 : 0,
            pim ? AQB ": all-bank PIM mode gives 4x the external bandwidth" : "no PIM");
        put(o, s, "pim_units", pim ? 128 : 0, pim ? AQB ": 32 PCUs per PIM die, 4 PIM dies per cube" : "no PIM");
        put(o, s, "pim_gmacs_per_unit", pim ? 10.47 : 0,
            pim ? "derived from " AQB ": a 16-lane FP16 PCU (300 MHz in HBM2: 1.2 TFLOPS per cube), clocked so it "
                  "consumes its banks' HBM3 bandwidth: 2680 GB/s / 128 units / 32 B"
                : "no PIM");
        dram_energy(o, s, 1);
        put(o, s, "pim_mac_pj", pim ? 1.5 : 0, HRZ ": FP16 multiply 1.1 pJ + add 0.4 pJ");
        put(o, s, "static_w", 0, "counted in the GPU's idle power");
        end_part(devs, o, s);
    }
    for (int pim = 0; pim <= 1; pim++) {
        o = new_part(pim ? "ddr5_pim" : "ddr5", "host", &s);
        put(o, s, "count", 32, DGX ": 2 TB of DDR5-4800 as 32 x 64 GB RDIMMs");
        put(o, s, "capacity_gb", 64, DGX);
        put(o, s, "ext_gbps", 19.2,
            DDR "; 2 sockets x 8 channels, 2 DIMMs per channel share one: 614 GB/s over 32 DIMMs");
        put(o, s, "int_gbps", pim ? 153.6 : 0,
            pim ? "4x a channel's 38.4 GB/s, as " AQB " and UPMEM (Gomez-Luna et al., IEEE Access 2022: 2560 DPUs "
                  "x 0.63 GB/s over 20 DIMMs = 4.2x DDR4-2400)"
                : "no PIM");
        put(o, s, "pim_units", pim ? 32 : 0, pim ? "assumption: one PCU per 2 banks of a 64-bank rank pair" : "no PIM");
        put(o, s, "pim_gmacs_per_unit", pim ? 4.8 : 0,
            pim ? "derived from " AQB ": a 16-lane FP16 PCU at DDR5-4800's 300 MHz core clock; 1 MAC per internal "
                  "byte, the ratio of SK hynix GDDR6-AiM (Lee et al., ISSCC 2022: 512 GMAC/s at 512 GB/s per chip)"
                : "no PIM");
        dram_energy(o, s, 0);
        put(o, s, "pim_mac_pj", pim ? 1.5 : 0, HRZ ": FP16 multiply 1.1 pJ + add 0.4 pJ");
        put(o, s, "static_w", pim ? 3.5 : 3.0,
            pim ? "estimate: RDIMM background and refresh 3 W, plus 0.5 W idle PIM logic"
                : "estimate: DDR5 RDIMM background and refresh, Micron DDR5 power calculator class");
        end_part(devs, o, s);
    }
    for (int pim = 0; pim <= 1; pim++) {
        o = new_part(pim ? "nvme_pim" : "nvme", "pcie5_x4", &s);
        put(o, s, "count", 8, DGX ": 8 x 3.84 TB NVMe U.2 cache drives");
        put(o, s, "capacity_gb", 3840, DGX);
        put(o, s, "ext_gbps", 13.0, NVM ": 13,000 MB/s sequential read");
        put(o, s, "int_gbps", pim ? 38.4 : 0,
            pim ? "ONFI 5.0 / Toggle 5.0: 2400 MT/s x 8-bit flash channels = 2.4 GB/s; 16 channels (assumption: "
                  "enterprise PCIe 5 controllers)"
                : "no PIM");
        put(o, s, "pim_units", pim ? 16 : 0, pim ? "assumption: one compute unit per flash channel" : "no PIM");
        put(o, s, "pim_gmacs_per_unit", pim ? 32 : 0,
            pim ? "derived: 512 GMAC/s per drive, about the Xilinx KU15P of the Samsung SmartSSD (1968 DSPs x 300 "
                  "MHz = 590 GMAC/s)"
                : "no PIM");
        put(o, s, "read_pj_per_bit", 25,
            "estimate: NAND page read (about 25 us at 25 mA, 2.7 V per 16 KiB page = 13 pJ/bit) + channel I/O and "
            "ECC");
        put(o, s, "io_pj_per_bit", 165,
            "derived from " NVM ": (25 W active - 5 W idle) / 13 GB/s = 190 pJ/bit, less the internal read");
        put(o, s, "pim_mac_pj", pim ? 5.0 : 0, "estimate: an FPGA DSP MAC costs 3-5x " HRZ "'s 1.5 pJ FP16 MAC");
        put(o, s, "static_w", pim ? 7.0 : 5.0, pim ? NVM ": 5 W idle, plus 2 W idle compute (estimate)" : NVM ": 5 W idle");
        end_part(devs, o, s);
    }
    json_object_set_new(doc, "devices", devs);
    json_object_set_new(doc, "host_link", json_string("pcie5_x16"));
    json_object_set_new(doc, "peer_link", json_string("nvlink4"));

    json_t *sys = json_object();
    json_object_set_new(sys, "gpu", json_pack("[s]", "hbm3"));
    json_object_set_new(sys, "offload", json_pack("[sss]", "hbm3", "ddr5", "nvme"));
    json_object_set_new(sys, "pam", json_pack("[sss]", "hbm3_pim", "ddr5_pim", "nvme_pim"));
    json_object_set_new(doc, "systems", sys);

    o = json_object();
    s = json_object();
    put(o, s, "block_tokens", 256, "the scheduler's unit: 256 tokens of one sequence, all layers");
    put(o, s, "bytes_per_elem", 2, "f16 K/V");
    put(o, s, "migrate_gb_per_step", 1.0, "assumption: the scheduler's migration budget per step");
    put(o, s, "schedule_every", 8, "steps between scheduler runs (the budget scales with it)");
    put(o, s, "max_batch", 512, "assumption: continuous batching limit");
    json_object_set_new(o, "sources", s);
    json_object_set_new(doc, "kv", o);
    return doc;
}

/* ---- parsing ------------------------------------------------------------- */

static pam_status get_num(json_t *obj, const char *where, const char *key, double *out) {
    json_t *v = json_object_get(obj, key);
    if (!v || !json_is_number(v)) return PAM_ERR(PAM_ERR_FORMAT, "sim config: %s: '%s' missing or not a number", where, key);
    double x = json_number_value(v);
    if (!isfinite(x) || x < 0) return PAM_ERR(PAM_ERR_FORMAT, "sim config: %s: '%s' must be >= 0, got %g", where, key, x);
    *out = x;
    return PAM_OK;
}

static pam_status get_name(json_t *obj, const char *where, const char *key, char *out) {
    json_t *v = json_object_get(obj, key);
    if (!v || !json_is_string(v)) return PAM_ERR(PAM_ERR_FORMAT, "sim config: %s: '%s' missing or not a string", where, key);
    const char *s = json_string_value(v);
    if (!*s || strlen(s) >= PAM_SIM_NAME)
        return PAM_ERR(PAM_ERR_FORMAT, "sim config: %s: '%s' must be 1 to %d characters", where, key, PAM_SIM_NAME - 1);
    strcpy(out, s);
    return PAM_OK;
}

int pam_sim_config_find_device(const pam_sim_config *cfg, const char *name) {
    for (int i = 0; i < cfg->n_dev; i++)
        if (!strcmp(cfg->dev[i].name, name)) return i;
    return -1;
}

int pam_sim_config_find_link(const pam_sim_config *cfg, const char *name) {
    for (int i = 0; i < cfg->n_link; i++)
        if (!strcmp(cfg->link[i].name, name)) return i;
    return -1;
}

static pam_status parse_doc(json_t *doc, pam_sim_config *c) {
    if (!json_is_object(doc)) return PAM_ERR(PAM_ERR_FORMAT, "sim config: the document must be a JSON object");
    json_t *o = json_object_get(doc, "gpu");
    if (!json_is_object(o)) return PAM_ERR(PAM_ERR_FORMAT, "sim config: 'gpu' missing");
    PAM_TRY(get_num(o, "gpu", "count", &c->gpu.count));
    PAM_TRY(get_num(o, "gpu", "tflops", &c->gpu.tflops));
    PAM_TRY(get_num(o, "gpu", "attn_tflops", &c->gpu.attn_tflops));
    PAM_TRY(get_num(o, "gpu", "mac_pj", &c->gpu.mac_pj));
    PAM_TRY(get_num(o, "gpu", "static_w", &c->gpu.static_w));
    PAM_TRY(get_num(o, "gpu", "reserve_gb", &c->gpu.reserve_gb));
    PAM_TRY(get_num(o, "gpu", "shared_compute", &c->gpu.shared_compute));
    if (c->gpu.count < 1 || c->gpu.tflops <= 0 || c->gpu.attn_tflops <= 0)
        return PAM_ERR(PAM_ERR_FORMAT, "sim config: gpu: count must be >= 1, tflops and attn_tflops > 0");
    o = json_object_get(doc, "reduction_units");
    if (!json_is_object(o)) return PAM_ERR(PAM_ERR_FORMAT, "sim config: 'reduction_units' missing");
    PAM_TRY(get_num(o, "reduction_units", "gops", &c->ru.gops));
    PAM_TRY(get_num(o, "reduction_units", "op_pj", &c->ru.op_pj));
    PAM_TRY(get_num(o, "reduction_units", "static_w", &c->ru.static_w));

    json_t *arr = json_object_get(doc, "links");
    if (!json_is_array(arr) || json_array_size(arr) > PAM_SIM_MAX_LINKS)
        return PAM_ERR(PAM_ERR_FORMAT, "sim config: 'links' must be an array of at most %d", PAM_SIM_MAX_LINKS);
    c->n_link = 0;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *l = json_array_get(arr, i);
        pam_sim_link *k = &c->link[c->n_link];
        char where[64];
        snprintf(where, sizeof where, "links[%zu]", i);
        if (!json_is_object(l)) return PAM_ERR(PAM_ERR_FORMAT, "sim config: %s is not an object", where);
        PAM_TRY(get_name(l, where, "name", k->name));
        snprintf(where, sizeof where, "link %s", k->name);
        PAM_TRY(get_num(l, where, "count", &k->count));
        PAM_TRY(get_num(l, where, "gbps", &k->gbps));
        PAM_TRY(get_num(l, where, "pj_per_bit", &k->pj_per_bit));
        PAM_TRY(get_num(l, where, "latency_us", &k->latency_us));
        if (k->count <= 0 || k->gbps <= 0) return PAM_ERR(PAM_ERR_FORMAT, "sim config: %s: count and gbps must be > 0", where);
        if (pam_sim_config_find_link(c, k->name) >= 0)
            return PAM_ERR(PAM_ERR_FORMAT, "sim config: link '%s' defined twice", k->name);
        c->n_link++;
    }
    PAM_TRY(get_name(doc, "top level", "host_link", c->host_link));
    PAM_TRY(get_name(doc, "top level", "peer_link", c->peer_link));
    if (pam_sim_config_find_link(c, c->host_link) < 0)
        return PAM_ERR(PAM_ERR_FORMAT, "sim config: host_link '%s' is not a defined link", c->host_link);
    if (pam_sim_config_find_link(c, c->peer_link) < 0)
        return PAM_ERR(PAM_ERR_FORMAT, "sim config: peer_link '%s' is not a defined link", c->peer_link);

    arr = json_object_get(doc, "devices");
    if (!json_is_array(arr) || json_array_size(arr) == 0 || json_array_size(arr) > PAM_SIM_MAX_DEVICES)
        return PAM_ERR(PAM_ERR_FORMAT, "sim config: 'devices' must be an array of 1 to %d", PAM_SIM_MAX_DEVICES);
    c->n_dev = 0;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *d = json_array_get(arr, i);
        pam_sim_device *v = &c->dev[c->n_dev];
        char where[64];
        snprintf(where, sizeof where, "devices[%zu]", i);
        if (!json_is_object(d)) return PAM_ERR(PAM_ERR_FORMAT, "sim config: %s is not an object", where);
        PAM_TRY(get_name(d, where, "name", v->name));
        snprintf(where, sizeof where, "device %s", v->name);
        PAM_TRY(get_name(d, where, "attach", v->attach));
        if (strcmp(v->attach, "gpu") && strcmp(v->attach, "host") && pam_sim_config_find_link(c, v->attach) < 0)
            return PAM_ERR(PAM_ERR_FORMAT, "sim config: %s: attach '%s' is neither gpu, host nor a defined link", where,
                           v->attach);
        PAM_TRY(get_num(d, where, "count", &v->count));
        PAM_TRY(get_num(d, where, "capacity_gb", &v->capacity_gb));
        PAM_TRY(get_num(d, where, "ext_gbps", &v->ext_gbps));
        PAM_TRY(get_num(d, where, "int_gbps", &v->int_gbps));
        PAM_TRY(get_num(d, where, "pim_units", &v->pim_units));
        PAM_TRY(get_num(d, where, "pim_gmacs_per_unit", &v->pim_gmacs_per_unit));
        PAM_TRY(get_num(d, where, "read_pj_per_bit", &v->read_pj_per_bit));
        PAM_TRY(get_num(d, where, "io_pj_per_bit", &v->io_pj_per_bit));
        PAM_TRY(get_num(d, where, "pim_mac_pj", &v->pim_mac_pj));
        PAM_TRY(get_num(d, where, "static_w", &v->static_w));
        if (v->count <= 0 || v->ext_gbps <= 0)
            return PAM_ERR(PAM_ERR_FORMAT, "sim config: %s: count and ext_gbps must be > 0", where);
        if (v->pim_units > 0 && (v->int_gbps <= 0 || v->pim_gmacs_per_unit <= 0))
            return PAM_ERR(PAM_ERR_FORMAT, "sim config: %s: PIM units need int_gbps and pim_gmacs_per_unit > 0", where);
        if (pam_sim_config_find_device(c, v->name) >= 0)
            return PAM_ERR(PAM_ERR_FORMAT, "sim config: device '%s' defined twice", v->name);
        c->n_dev++;
    }

    json_t *sys = json_object_get(doc, "systems");
    if (!json_is_object(sys)) return PAM_ERR(PAM_ERR_FORMAT, "sim config: 'systems' missing");
    for (int k = 0; k < PAM_SIM_N_KINDS; k++) {
        json_t *list = json_object_get(sys, kind_names[k]);
        if (!json_is_array(list) || json_array_size(list) == 0 || json_array_size(list) > PAM_SIM_MAX_TIERS)
            return PAM_ERR(PAM_ERR_FORMAT, "sim config: systems.%s must list 1 to %d devices, fastest first",
                           kind_names[k], PAM_SIM_MAX_TIERS);
        c->n_tiers[k] = 0;
        for (size_t i = 0; i < json_array_size(list); i++) {
            json_t *n = json_array_get(list, i);
            int d = json_is_string(n) ? pam_sim_config_find_device(c, json_string_value(n)) : -1;
            if (d < 0) return PAM_ERR(PAM_ERR_FORMAT, "sim config: systems.%s[%zu] is not a defined device", kind_names[k], i);
            for (int j = 0; j < c->n_tiers[k]; j++)
                if (c->tiers[k][j] == d)
                    return PAM_ERR(PAM_ERR_FORMAT, "sim config: systems.%s lists '%s' twice", kind_names[k], c->dev[d].name);
            c->tiers[k][c->n_tiers[k]++] = d;
        }
        if (strcmp(c->dev[c->tiers[k][0]].attach, "gpu") != 0)
            return PAM_ERR(PAM_ERR_FORMAT, "sim config: systems.%s: the first device must be the GPU's memory (attach gpu)",
                           kind_names[k]);
    }

    o = json_object_get(doc, "kv");
    if (!json_is_object(o)) return PAM_ERR(PAM_ERR_FORMAT, "sim config: 'kv' missing");
    PAM_TRY(get_num(o, "kv", "block_tokens", &c->block_tokens));
    PAM_TRY(get_num(o, "kv", "bytes_per_elem", &c->kv_bytes_per_elem));
    PAM_TRY(get_num(o, "kv", "migrate_gb_per_step", &c->migrate_gb_per_step));
    PAM_TRY(get_num(o, "kv", "schedule_every", &c->schedule_every));
    PAM_TRY(get_num(o, "kv", "max_batch", &c->max_batch));
    if (c->block_tokens < 1 || c->block_tokens > 1 << 20 || c->kv_bytes_per_elem <= 0 || c->schedule_every < 1 ||
        c->max_batch < 1 || c->max_batch > 1 << 20)
        return PAM_ERR(PAM_ERR_FORMAT,
                       "sim config: kv: block_tokens in [1, 2^20], bytes_per_elem > 0, schedule_every >= 1, "
                       "max_batch in [1, 2^20]");
    return PAM_OK;
}

static pam_status from_doc(json_t *doc, pam_sim_config *cfg) {
    pam_sim_config c;
    memset(&c, 0, sizeof c);
    pam_status st = parse_doc(doc, &c);
    if (st != PAM_OK) return st;
    c.json = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    if (!c.json) return PAM_ERR(PAM_ERR_NOMEM, "sim config: dump");
    *cfg = c;
    return PAM_OK;
}

pam_status pam_sim_config_default(pam_sim_config *cfg) {
    json_t *doc = default_doc();
    if (!doc) return PAM_ERR(PAM_ERR_NOMEM, "sim config: defaults");
    pam_status st = from_doc(doc, cfg);
    json_decref(doc);
    return st;
}

pam_status pam_sim_config_parse(const char *text, pam_sim_config *cfg) {
    json_error_t e;
    json_t *doc = json_loads(text, 0, &e);
    if (!doc) return PAM_ERR(PAM_ERR_FORMAT, "sim config: line %d: %s", e.line, e.text);
    pam_status st = from_doc(doc, cfg);
    json_decref(doc);
    return st;
}

pam_status pam_sim_config_load(const char *path, pam_sim_config *cfg) {
    json_error_t e;
    json_t *doc = json_load_file(path, 0, &e);
    if (!doc) {
        FILE *f = fopen(path, "r");
        if (!f) return PAM_ERR(PAM_ERR_IO, "sim config: cannot open '%s'", path);
        fclose(f);
        return PAM_ERR(PAM_ERR_FORMAT, "sim config '%s': line %d: %s", path, e.line, e.text);
    }
    pam_status st = from_doc(doc, cfg);
    json_decref(doc);
    return st;
}

void pam_sim_config_free(pam_sim_config *cfg) {
    if (!cfg) return;
    free(cfg->json);
    cfg->json = NULL;
}
