/* The KV cache flags shared by `pam run`, `pam serve` and `pam bench`
 * (--kv-tier SPEC repeatable, --kv-type T, --kv-block N, --kv-policy P,
 * --kv-trace FILE, --kv-sparse BUDGET, --kv-evict) and building the KV
 * manager they describe. */
#ifndef PAM_CLI_KV_FLAGS_H
#define PAM_CLI_KV_FLAGS_H

#include <stdint.h>
#include <stdio.h>

#include "cli/args.h"
#include "core/threadpool.h"
#include "kv/kv_remote.h"
#include "kv/kvm.h"
#include "model/model.h"

#define PAM_KV_FLAGS_MAX_TIERS 8

typedef struct pam_kv_flags {
    int given; /* any --kv-* flag was on the command line */
    int n_specs;
    const char *specs[PAM_KV_FLAGS_MAX_TIERS]; /* fastest first */
    long block_tokens;
    pam_kv_type type; /* what the raw-KV tiers (dram, ssd) store; default f16 */
    pam_kv_policy policy;
    const char *trace_path;
    pam_kv_sparse sparse; /* --kv-sparse: default budget of every sequence */
    int sparse_given;     /* keep key summaries (per-request budgets allowed) */
    int evict;            /* --kv-evict */
    pam_kv_place place;   /* --kv-place */
    const char *remote_url;      /* --kv-tier remote:redis://... */
    const char *remote_auth;     /* --kv-remote-auth FILE */
    const char *remote_hmac_key; /* --kv-remote-hmac-key FILE */
    long remote_timeout_ms;      /* --kv-remote-timeout MS */
    const char *persist_dir;     /* --kv-persist DIR */
    uint64_t persist_max;        /* --kv-persist-max SIZE (0: no limit) */
} pam_kv_flags;

/* Usage lines for the flags (ends with a newline). */
extern const char pam_kv_flags_usage[];

void pam_kv_flags_init(pam_kv_flags *f);
/* If the current argument of a is one of the flags, consumes it (errors are
 * printed and set a->failed) and returns 1; otherwise returns 0. */
int pam_kv_flags_parse(pam_kv_flags *f, pam_args *a);
const char *pam_kv_policy_name(pam_kv_policy p);

/* Opens the tiers (or, with no --kv-tier, one dram tier of
 * default_blocks_per_layer blocks per layer, within available memory), the
 * trace file, and the KV manager over them. *trace gets the open trace file
 * (or NULL); the caller closes it after pam_kvm_destroy. On failure nothing
 * stays open and the error is recorded. */
pam_status pam_kv_flags_build(const pam_kv_flags *f, const pam_model_hparams *hp, uint64_t default_blocks_per_layer,
                              pam_pool *pool, FILE **trace, pam_kvm **out);

/* The model fingerprint that scopes shared and persisted KV: SHA-256 over
 * the tensors (names, shapes, types; the bytes of tensors up to 1 MiB, and
 * three 64 KiB samples of larger ones), the tokenizer (kind, special ids,
 * every piece), the KV shape and block size, and the KV encoding (f16 when
 * every tier is exact, else the lossy tiers' names). */
void pam_kv_fingerprint(const pam_model *m, const pam_kvm *kvm, uint8_t out[32]);

/* Opens the remote tier named by --kv-tier remote:... for the model and KV
 * manager (*out NULL when none was given). An unreachable cluster only
 * warns; bad flags or files are errors. */
pam_status pam_kv_flags_open_remote(const pam_kv_flags *f, const pam_model *m, pam_kvm *kvm, pam_kv_remote **out);
/* Opens the persistent journal named by --kv-persist (*out NULL without). */
pam_status pam_kv_flags_open_persist(const pam_kv_flags *f, const pam_model *m, pam_kvm *kvm, pam_kv_remote **out);

#endif
