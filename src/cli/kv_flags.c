/* --kv-* flags: parsing and building the KV manager (see kv_flags.h). */
#include "cli/kv_flags.h"

#include <errno.h>
#include <string.h>

#include "core/status.h"
#include "kv/tier.h"

const char pam_kv_flags_usage[] =
    "      --kv-tier SPEC      paged, tiered KV: add a tier, fastest first (repeatable, up to 8):\n"
    "                          dram:SIZE, dramq:int8:SIZE, dramq:int4:SIZE, ssd:DIR:SIZE (SIZE e.g. 2GiB)\n"
    "      --kv-type T         what the dram and ssd tiers store: f16 (default), bf16, q8, q4,\n"
    "                          or f32 (exact reference); dramq tiers keep their own encoding\n"
    "      --kv-block N        tokens per KV block (default 16)\n"
    "      --kv-policy P       pam (default: attention in every tier, blocks migrate by importance),\n"
    "                          offload (copy slow-tier blocks to the fastest tier before attention),\n"
    "                          single (everything in the first tier)\n"
    "      --kv-trace FILE     write one JSON line per step (per-tier blocks, bytes, time, migrations)\n"
    "      --kv-sparse B       sparse attention (approximate): attend at most B tokens per sequence and\n"
    "                          layer, or B% of the context (e.g. 25%): the sink, the recent window, the\n"
    "                          fastest tier's blocks, then the blocks of highest key-summary bound\n"
    "      --kv-evict          when every tier is full, drop a sequence's least important blocks\n"
    "                          (never the first one or the recent window) instead of stopping\n";

void pam_kv_flags_init(pam_kv_flags *f) {
    memset(f, 0, sizeof *f);
    f->block_tokens = 16;
    f->type = PAM_KV_F16;
    f->policy = PAM_KV_POLICY_PAM;
}

const char *pam_kv_policy_name(pam_kv_policy p) {
    return p == PAM_KV_POLICY_OFFLOAD ? "offload" : p == PAM_KV_POLICY_SINGLE ? "single" : "pam";
}

int pam_kv_flags_parse(pam_kv_flags *f, pam_args *a) {
    if (pam_args_is(a, NULL, "--kv-tier")) {
        const char *t = pam_args_value(a);
        if (t && f->n_specs == PAM_KV_FLAGS_MAX_TIERS) {
            fprintf(stderr, "%s: at most %d --kv-tier options\n", a->cmd, PAM_KV_FLAGS_MAX_TIERS);
            a->failed = 1;
        } else if (t) {
            f->specs[f->n_specs++] = t;
        }
    } else if (pam_args_is(a, NULL, "--kv-type")) {
        const char *t = pam_args_value(a);
        if (t && pam_kv_type_parse(t, &f->type) != PAM_OK) {
            fprintf(stderr, "%s: --kv-type: %s\n", a->cmd, pam_last_error());
            a->failed = 1;
        }
    } else if (pam_args_is(a, NULL, "--kv-block")) {
        pam_args_long(a, 1, 4096, &f->block_tokens);
    } else if (pam_args_is(a, NULL, "--kv-policy")) {
        const char *t = pam_args_value(a);
        if (t && !strcmp(t, "pam"))
            f->policy = PAM_KV_POLICY_PAM;
        else if (t && !strcmp(t, "offload"))
            f->policy = PAM_KV_POLICY_OFFLOAD;
        else if (t && !strcmp(t, "single"))
            f->policy = PAM_KV_POLICY_SINGLE;
        else if (t) {
            fprintf(stderr, "%s: --kv-policy must be pam, offload or single, got '%s'\n", a->cmd, t);
            a->failed = 1;
        }
    } else if (pam_args_is(a, NULL, "--kv-trace")) {
        f->trace_path = pam_args_value(a);
    } else if (pam_args_is(a, NULL, "--kv-sparse")) {
        const char *t = pam_args_value(a);
        if (t && pam_kv_sparse_parse(t, &f->sparse) != PAM_OK) {
            fprintf(stderr, "%s: --kv-sparse: %s\n", a->cmd, pam_last_error());
            a->failed = 1;
        } else if (t) {
            f->sparse_given = 1;
        }
    } else if (pam_args_is(a, NULL, "--kv-evict")) {
        f->evict = 1;
    } else {
        return 0;
    }
    f->given = 1;
    return 1;
}

pam_status pam_kv_flags_build(const pam_kv_flags *f, const pam_model_hparams *hp, uint64_t default_blocks_per_layer,
                              pam_pool *pool, FILE **trace, pam_kvm **out) {
    *out = NULL;
    *trace = NULL;
    FILE *tf = NULL;
    if (f->trace_path && !(tf = fopen(f->trace_path, "w")))
        return PAM_ERR(PAM_ERR_IO, "cannot write the KV trace '%s': %s", f->trace_path, strerror(errno));
    pam_kvm_config kc = {.shape = {hp->n_layer, hp->n_head_kv, hp->head_dim, (int32_t)f->block_tokens},
                         .policy = f->policy,
                         .trace = tf,
                         .sparse = f->sparse,
                         .sparse_allow = f->sparse_given,
                         .evict = f->evict};
    pam_tier *tiers[PAM_KV_FLAGS_MAX_TIERS];
    int n_open = 0;
    pam_status st = PAM_OK;
    for (; n_open < f->n_specs; n_open++)
        if ((st = pam_tier_open_spec_type(&kc.shape, f->specs[n_open], f->type, &tiers[n_open])) != PAM_OK) break;
    if (st == PAM_OK && f->n_specs == 0) st = pam_kvh_check(f->type, hp->head_dim, (int)f->block_tokens);
    if (st == PAM_OK && f->n_specs == 0) {
        uint64_t block_bytes =
            (uint64_t)hp->n_head_kv * (uint64_t)pam_kvh_bytes(f->type, hp->head_dim, (int)f->block_tokens);
        st = pam_tier_open_default_type(&kc.shape, f->type, (uint64_t)hp->n_layer * default_blocks_per_layer * block_bytes,
                                        &tiers[0]);
        if (st == PAM_OK) n_open = 1;
    }
    if (st == PAM_OK) {
        kc.tiers = tiers;
        kc.n_tiers = n_open;
        st = pam_kvm_create(&kc, pool, out);
    }
    if (st != PAM_OK) {
        for (int i = 0; i < n_open; i++) pam_tier_close(tiers[i]);
        if (tf) fclose(tf);
        return st;
    }
    *trace = tf;
    return PAM_OK;
}
