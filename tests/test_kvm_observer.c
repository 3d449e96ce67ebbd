/* kv/kvm observer: the keys it sees are the rows stored, and the per-block
 * attention mass it reports (in logical block order, whatever tier each
 * block lives in) matches a float64 softmax over the stored f16 keys, sums to
 * one per head, and removing the observer stops the calls. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/fp16.h"
#include "kv/kvm.h"
#include "kv/tier.h"
#include "util/test_util.h"

enum { HKV = 2, GRP = 3, HD = 8, BT = 4, NPOS = 37, NH = HKV * GRP };

typedef struct seen {
    int n_store, n_attend;
    float keys[NPOS][HKV * HD];
    float mass[16 * NH];
    int64_t n_blocks;
    int32_t n_pos;
} seen;

static void on_store(void *user, int32_t seq, int32_t layer, int32_t pos, const float *k) {
    seen *s = user;
    assert_true(layer == 0 && pos >= 0 && pos < NPOS);
    (void)seq;
    memcpy(s->keys[pos], k, sizeof s->keys[pos]);
    s->n_store++;
}

static void on_attend(void *user, int32_t seq, int32_t layer, int32_t n_pos, const float *q, int32_t n_head,
                      const float *mass, int64_t n_blocks) {
    seen *s = user;
    (void)seq, (void)layer, (void)q;
    assert_int_equal(n_head, NH);
    assert_true(n_blocks <= 16);
    memcpy(s->mass, mass, (size_t)n_blocks * NH * sizeof(float));
    s->n_blocks = n_blocks;
    s->n_pos = n_pos;
    s->n_attend++;
}

static void test_observer_mass(void **state) {
    (void)state;
    pam_kv_shape sh = {1, HKV, HD, BT};
    uint64_t bb = 2ull * 2ull * BT * HKV * HD;
    pam_tier *tiers[2];
    /* a small fast tier, so blocks spread over both and pieces leave logical order */
    assert_int_equal(pam_tier_dram_open(&sh, 3 * bb, &tiers[0]), PAM_OK);
    assert_int_equal(pam_tier_dram_open(&sh, 64 * bb, &tiers[1]), PAM_OK);
    pam_kvm_config cfg = {.shape = sh, .tiers = tiers, .n_tiers = 2, .policy = PAM_KV_POLICY_PAM};
    pam_kvm *kvm;
    assert_int_equal(pam_kvm_create(&cfg, NULL, &kvm), PAM_OK);
    seen s;
    memset(&s, 0, sizeof s);
    pam_kvm_observer obs = {.user = &s, .on_store = on_store, .on_attend = on_attend};
    pam_kvm_set_observer(kvm, &obs);
    int32_t seq;
    assert_int_equal(pam_kvm_seq_create(kvm, &seq), PAM_OK);
    assert_int_equal(pam_kvm_reserve(kvm, seq, NPOS), PAM_OK);
    pam_test_rng r = {7};
    float k[NPOS][HKV * HD], v[HKV * HD], q[NH * HD], out[NH * HD];
    for (int p = 0; p < NPOS; p++) {
        for (int i = 0; i < HKV * HD; i++) k[p][i] = (float)pam_test_rng_normal(&r), v[i] = (float)pam_test_rng_normal(&r);
        assert_int_equal(pam_kvm_store(kvm, seq, 0, p, k[p], v), PAM_OK);
    }
    assert_int_equal(s.n_store, NPOS);
    assert_memory_equal(s.keys, k, sizeof k);
    /* interleave tiers: logical blocks 1 and 6 swap places with the fast tier */
    assert_int_equal(pam_kvm_block_tier(kvm, seq, 0, 1), 0);
    assert_int_equal(pam_kvm_migrate(kvm, seq, 0, 1, 1), PAM_OK);
    assert_int_equal(pam_kvm_migrate(kvm, seq, 0, 6, 0), PAM_OK);
    for (int i = 0; i < NH * HD; i++) q[i] = (float)pam_test_rng_normal(&r) * 2.0f;
    float scale = 1.0f / sqrtf((float)HD);
    for (int32_t n_pos = 1; n_pos <= NPOS; n_pos += 6) {
        assert_int_equal(pam_kvm_attend(kvm, seq, 0, n_pos, q, NH, scale, out), PAM_OK);
        int64_t nb = (n_pos + BT - 1) / BT;
        assert_int_equal(s.n_blocks, nb);
        assert_int_equal(s.n_pos, n_pos);
        for (int h = 0; h < NH; h++) {
            int g = h / GRP;
            double sc[NPOS], mx = -INFINITY, z = 0;
            for (int p = 0; p < n_pos; p++) {
                double d = 0;
                for (int c = 0; c < HD; c++)
                    d += (double)q[h * HD + c] * pam_f16_to_f32(pam_f32_to_f16(k[p][g * HD + c]));
                sc[p] = d * scale;
                mx = sc[p] > mx ? sc[p] : mx;
            }
            for (int p = 0; p < n_pos; p++) z += exp(sc[p] - mx);
            double sum = 0;
            for (int64_t b = 0; b < nb; b++) {
                double ref = 0;
                for (int p = (int)b * BT; p < n_pos && p < (b + 1) * BT; p++) ref += exp(sc[p] - mx) / z;
                double got = s.mass[b * NH + h];
                if (fabs(got - ref) > 2e-4 + 1e-3 * ref)
                    fail_msg("n_pos %d head %d block %lld: mass %.6f, reference %.6f", n_pos, h, (long long)b, got, ref);
                sum += got;
            }
            assert_true(fabs(sum - 1.0) < 1e-4);
        }
    }
    int calls = s.n_attend;
    pam_kvm_set_observer(kvm, NULL);
    assert_int_equal(pam_kvm_attend(kvm, seq, 0, NPOS, q, NH, scale, out), PAM_OK);
    assert_int_equal(s.n_attend, calls);
    pam_kvm_destroy(kvm);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_observer_mass),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
