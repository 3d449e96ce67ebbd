/* --kv-* flags: parsing and building the KV manager (see kv_flags.h). */
#include "cli/kv_flags.h"

#include <errno.h>
#include <string.h>

#include <openssl/evp.h>

#include "core/status.h"
#include "kv/tier.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

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
    "                          (never the first one or the recent window) instead of stopping\n"
    "      --kv-place P        pam policy's placement: importance (default), recency (newest blocks\n"
    "                          fastest) or static (blocks stay where written); for measurements\n"
    "      --kv-tier remote:redis://HOST:PORT[,HOST:PORT...]\n"
    "                          share full prefix blocks through a Redis Cluster (seed nodes; see docs/KV.md)\n"
    "      --kv-remote-auth FILE  Redis AUTH: 'USER PASSWORD' or 'PASSWORD' on the first line\n"
    "                          (default: PAM_REDIS_USER / PAM_REDIS_PASSWORD from the environment)\n"
    "      --kv-remote-hmac-key FILE  HMAC-SHA256 key (>= 16 bytes) signing and checking every remote value\n"
    "      --kv-remote-timeout MS  remote connect and command timeout (default 200)\n"
    "      --kv-persist DIR    keep full prefix blocks in a journal under DIR across restarts and runs\n"
    "      --kv-persist-max SIZE  journal size cap: appends stop at SIZE, a clean exit keeps the most recently\n"
    "                          used prefixes within 3/4 of it (default: no limit)\n";

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
        } else if (t && !strncmp(t, "remote:", 7)) {
            if (f->remote_url) {
                fprintf(stderr, "%s: at most one remote KV tier\n", a->cmd);
                a->failed = 1;
            }
            f->remote_url = t + 7;
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
    } else if (pam_args_is(a, NULL, "--kv-place")) {
        const char *t = pam_args_value(a);
        if (t && !strcmp(t, "importance"))
            f->place = PAM_KV_PLACE_IMPORTANCE;
        else if (t && !strcmp(t, "recency"))
            f->place = PAM_KV_PLACE_RECENCY;
        else if (t && !strcmp(t, "static"))
            f->place = PAM_KV_PLACE_STATIC;
        else if (t) {
            fprintf(stderr, "%s: --kv-place must be importance, recency or static, got '%s'\n", a->cmd, t);
            a->failed = 1;
        }
    } else if (pam_args_is(a, NULL, "--kv-remote-auth")) {
        f->remote_auth = pam_args_value(a);
    } else if (pam_args_is(a, NULL, "--kv-remote-hmac-key")) {
        f->remote_hmac_key = pam_args_value(a);
    } else if (pam_args_is(a, NULL, "--kv-persist")) {
        f->persist_dir = pam_args_value(a);
    } else if (pam_args_is(a, NULL, "--kv-persist-max")) {
        const char *t = pam_args_value(a);
        if (t && pam_parse_size(t, &f->persist_max) != PAM_OK) {
            fprintf(stderr, "%s: --kv-persist-max: %s\n", a->cmd, pam_last_error());
            a->failed = 1;
        }
    } else if (pam_args_is(a, NULL, "--kv-remote-timeout")) {
        pam_args_long(a, 1, 60000, &f->remote_timeout_ms);
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
                         .evict = f->evict,
                         .place = f->place};
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

static void sha_u64(EVP_MD_CTX *c, uint64_t v) {
    uint8_t b[8];
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (8 * i));
    EVP_DigestUpdate(c, b, 8);
}

void pam_kv_fingerprint(const pam_model *m, const pam_kvm *kvm, uint8_t out[32]) {
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    if (!c || EVP_DigestInit_ex(c, EVP_sha256(), NULL) != 1) {
        /* no digest: a fingerprint nobody else has, so nothing is shared */
        memset(out, 0xff, 32);
        EVP_MD_CTX_free(c);
        return;
    }
    EVP_DigestUpdate(c, "pam-kv-fingerprint-1", 20);
    const pam_gguf *g = pam_model_gguf(m);
    int64_t nt = pam_gguf_n_tensors(g);
    sha_u64(c, (uint64_t)nt);
    for (int64_t i = 0; i < nt; i++) {
        const pam_gguf_tensor *t = pam_gguf_tensor_at(g, i);
        EVP_DigestUpdate(c, t->name, strlen(t->name) + 1);
        for (int d = 0; d < PAM_GGUF_MAX_DIMS; d++) sha_u64(c, (uint64_t)t->ne[d]);
        sha_u64(c, t->type);
        sha_u64(c, t->n_bytes);
        const uint8_t *p = t->data;
        const size_t S = 64u << 10;
        if (t->n_bytes <= (1u << 20)) {
            EVP_DigestUpdate(c, p, t->n_bytes);
        } else {
            EVP_DigestUpdate(c, p, S);
            EVP_DigestUpdate(c, p + (t->n_bytes / 2 - S / 2), S);
            EVP_DigestUpdate(c, p + (t->n_bytes - S), S);
        }
    }
    const pam_tokenizer *tk = pam_model_tokenizer(m);
    int32_t nv = pam_tokenizer_n_vocab(tk);
    sha_u64(c, (uint64_t)pam_tokenizer_kind(tk));
    sha_u64(c, (uint64_t)(int64_t)pam_tokenizer_bos(tk));
    sha_u64(c, (uint64_t)(int64_t)pam_tokenizer_eos(tk));
    sha_u64(c, (uint64_t)pam_tokenizer_add_bos(tk));
    sha_u64(c, (uint64_t)nv);
    for (int32_t i = 0; i < nv; i++) {
        const char *piece = pam_tokenizer_piece(tk, i);
        if (piece) EVP_DigestUpdate(c, piece, strlen(piece) + 1);
        else EVP_DigestUpdate(c, "", 1);
    }
    const pam_kv_shape *ks = pam_kvm_shape(kvm);
    sha_u64(c, (uint64_t)ks->n_layer);
    sha_u64(c, (uint64_t)ks->n_head_kv);
    sha_u64(c, (uint64_t)ks->head_dim);
    sha_u64(c, (uint64_t)ks->block_tokens);
    int lossy = 0;
    for (int i = 0; i < pam_kvm_n_tiers(kvm); i++) {
        const pam_tier *t = pam_kvm_tier((pam_kvm *)kvm, i);
        /* what a tier stores (f32, f16, bf16, q8, q4) decides the values an
         * instance publishes, exact or not */
        sha_u64(c, (uint64_t)t->kv_type);
        if (t->exact) continue;
        lossy = 1;
        /* the encoding part of the name ("dramq:int8"), not its size */
        const char *colon = strrchr(t->name, ':');
        size_t len = colon && colon != strchr(t->name, ':') ? (size_t)(colon - t->name) : strlen(t->name);
        EVP_DigestUpdate(c, t->name, len);
        EVP_DigestUpdate(c, "", 1);
    }
    if (!lossy) EVP_DigestUpdate(c, "f16", 4);
    unsigned int len = 32;
    EVP_DigestFinal_ex(c, out, &len);
    EVP_MD_CTX_free(c);
}

pam_status pam_kv_flags_open_remote(const pam_kv_flags *f, const pam_model *m, pam_kvm *kvm, pam_kv_remote **out) {
    *out = NULL;
    if (!f->remote_url) {
        if (f->remote_auth || (f->remote_hmac_key && !f->persist_dir))
            return PAM_ERR(PAM_ERR_INVALID, "--kv-remote-auth and --kv-remote-hmac-key need --kv-tier remote:... (or --kv-persist)");
        return PAM_OK;
    }
    pam_kv_remote_config rc = {.url = f->remote_url,
                               .shape = *pam_kvm_shape(kvm),
                               .auth_file = f->remote_auth,
                               .hmac_key_file = f->remote_hmac_key,
                               .timeout_ms = (int)f->remote_timeout_ms};
    pam_kv_fingerprint(m, kvm, rc.fingerprint);
    return pam_kv_remote_open(&rc, out);
}

pam_status pam_kv_flags_open_persist(const pam_kv_flags *f, const pam_model *m, pam_kvm *kvm, pam_kv_remote **out) {
    *out = NULL;
    if (!f->persist_dir) return PAM_OK;
    char url[4200];
    if (snprintf(url, sizeof url, "file:%s", f->persist_dir) >= (int)sizeof url)
        return PAM_ERR(PAM_ERR_INVALID, "--kv-persist: directory name too long");
    pam_kv_remote_config rc = {.url = url,
                               .shape = *pam_kvm_shape(kvm),
                               .hmac_key_file = f->remote_hmac_key,
                               .max_bytes = f->persist_max};
    pam_kv_fingerprint(m, kvm, rc.fingerprint);
    return pam_kv_remote_open(&rc, out);
}
