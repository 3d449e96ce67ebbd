/* kernels/checksum: every ISA level returns the scalar reference's value for
 * any length and alignment; a flipped bit, a changed byte, a swapped pair of
 * 8-byte words or a zeroed 4 KiB sector changes the checksum, at many
 * positions of random data; so do the seed and the length (also where only
 * zero bytes differ); single-bit changes avalanche. */
#include <stdlib.h>
#include <string.h>

#include "kernels/checksum.h"
#include "kernels/cpu.h"
#include "util/test_util.h"

#define BLOCK (32 << 10) /* one ssd tier payload */

static int n_isas(void) { return (int)pam_cpu_detect() + 1; }

static void set_isa(int isa) { assert_int_equal(pam_cpu_set_isa(pam_cpu_isa_name((pam_isa)isa)), PAM_OK); }

static uint8_t *random_bytes(size_t n, uint64_t seed) {
    uint8_t *p = malloc(n ? n : 1);
    assert_non_null(p);
    pam_test_rng r = {seed};
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(pam_test_rng_u64(&r) >> 56);
    return p;
}

static size_t rnd_below(pam_test_rng *r, size_t n) { return (size_t)(pam_test_rng_u64(r) % n); }

/* Value under every level: all equal to the scalar one. */
static uint64_t agree(const uint8_t *p, size_t n, uint64_t seed) {
    set_isa(PAM_ISA_SCALAR);
    uint64_t want = pam_checksum64(p, n, seed);
    for (int isa = 1; isa < n_isas(); isa++) {
        set_isa(isa);
        uint64_t got = pam_checksum64(p, n, seed);
        if (got != want) fail_msg("%s: n %zu seed %llx: %016llx, scalar %016llx", pam_cpu_isa(), n,
                                  (unsigned long long)seed, (unsigned long long)got, (unsigned long long)want);
    }
    return want;
}

static void test_isas_agree(void **state) {
    const size_t cap = 70000;
    uint8_t *buf = random_bytes(cap + 64, 1);
    /* Every length 0..1100 (the first block boundary is 1024) at offsets 0 and 13. */
    for (size_t n = 0; n <= 1100; n++) {
        agree(buf, n, n);
        agree(buf + 13, n, ~(uint64_t)n);
    }
    /* Random lengths 0..5000 at random offsets and seeds. */
    pam_test_rng r = {2};
    for (int i = 0; i < 3000; i++) {
        size_t n = rnd_below(&r, 5001), off = rnd_below(&r, 64);
        agree(buf + off, n, pam_test_rng_u64(&r));
    }
    /* Around multiples of the block and stripe, and long inputs. */
    const size_t lens[] = {2047, 2048, 2049, 15 * 1024 + 63, 16 * 1024, BLOCK - 1, BLOCK, BLOCK + 1, BLOCK + 1000,
                           65536, cap};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++)
        for (size_t off = 0; off < 64; off += 7) agree(buf + off, lens[i], 0x1234 + off);
    /* Repeatable, and NULL with length 0. */
    for (int isa = 0; isa < n_isas(); isa++) {
        set_isa(isa);
        assert_true(pam_checksum64(buf, BLOCK, 5) == pam_checksum64(buf, BLOCK, 5));
        assert_true(pam_checksum64(NULL, 0, 5) == pam_checksum64(buf, 0, 5));
    }
    /* Zeros and all-ones, where the keyed products degenerate most easily. */
    memset(buf, 0, cap);
    for (size_t n = 0; n <= 3000; n += 61) agree(buf, n, 0);
    memset(buf, 0xff, cap);
    for (size_t n = 0; n <= 3000; n += 61) agree(buf, n, 0);
    assert_int_equal(pam_cpu_set_isa(NULL), PAM_OK);
    free(buf);
}

/* Each corruption of a random buffer of n bytes changes the checksum under
 * every level. */
static void check_corruptions(size_t n, uint64_t data_seed, int rounds) {
    uint8_t *p = random_bytes(n, data_seed);
    const uint64_t seed = 0x4b4d415000000002ull ^ data_seed;
    pam_test_rng r = {data_seed * 31 + 7};
    for (int isa = 0; isa < n_isas(); isa++) {
        set_isa(isa);
        const uint64_t good = pam_checksum64(p, n, seed);
        /* Single bit flips: every bit of the first and last 64 bytes, then random ones. */
        for (size_t i = 0; i < 2 * 64 * 8 + (size_t)rounds; i++) {
            size_t bit = i < 512 ? i : i < 1024 ? (n - 64) * 8 + (i - 512) : rnd_below(&r, n * 8);
            p[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            uint64_t h = pam_checksum64(p, n, seed);
            p[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            if (h == good) fail_msg("%s: n %zu: flipping bit %zu is not detected", pam_cpu_isa(), n, bit);
        }
        /* A byte replaced by any other value. */
        for (int i = 0; i < rounds; i++) {
            size_t at = rnd_below(&r, n);
            uint8_t old = p[at];
            p[at] = (uint8_t)(old + 1 + rnd_below(&r, 255));
            uint64_t h = pam_checksum64(p, n, seed);
            p[at] = old;
            if (h == good) fail_msg("%s: n %zu: changing byte %zu is not detected", pam_cpu_isa(), n, at);
        }
        /* Two different 8-byte words swapped: neighbours, the same lane in
         * other stripes of the block (8, 16, ... words on), and anywhere. */
        size_t n_words = n / 8;
        for (int i = 0; i < rounds; i++) {
            size_t a = rnd_below(&r, n_words), b;
            switch (i % 4) {
            case 0: b = a ^ 1; break;
            case 1: b = (a + 8 * (1 + rnd_below(&r, 15))) % n_words; break;
            case 2: b = (a + 1 + rnd_below(&r, 200)) % n_words; break;
            default: b = rnd_below(&r, n_words); break;
            }
            if (b >= n_words || memcmp(p + 8 * a, p + 8 * b, 8) == 0) continue;
            uint8_t wa[8], wb[8];
            memcpy(wa, p + 8 * a, 8);
            memcpy(wb, p + 8 * b, 8);
            memcpy(p + 8 * a, wb, 8);
            memcpy(p + 8 * b, wa, 8);
            uint64_t h = pam_checksum64(p, n, seed);
            memcpy(p + 8 * a, wa, 8);
            memcpy(p + 8 * b, wb, 8);
            if (h == good) fail_msg("%s: n %zu: swapping words %zu and %zu is not detected", pam_cpu_isa(), n, a, b);
        }
        /* Every whole 4 KiB sector zeroed, then a sector's worth zeroed at odd offsets. */
        uint8_t *save = malloc(4096);
        assert_non_null(save);
        for (size_t at = 0; at + 4096 <= n; at += 4096) {
            memcpy(save, p + at, 4096);
            memset(p + at, 0, 4096);
            uint64_t h = pam_checksum64(p, n, seed);
            memcpy(p + at, save, 4096);
            if (h == good) fail_msg("%s: n %zu: zeroed sector at %zu is not detected", pam_cpu_isa(), n, at);
        }
        for (int i = 0; i < rounds / 8 && n > 4096; i++) {
            size_t at = rnd_below(&r, n - 4096 + 1);
            memcpy(save, p + at, 4096);
            memset(p + at, 0, 4096);
            uint64_t h = pam_checksum64(p, n, seed);
            memcpy(p + at, save, 4096);
            if (h == good) fail_msg("%s: n %zu: 4096 zero bytes at %zu are not detected", pam_cpu_isa(), n, at);
        }
        free(save);
        assert_true(pam_checksum64(p, n, seed) == good);
    }
    assert_int_equal(pam_cpu_set_isa(NULL), PAM_OK);
    free(p);
}

static void test_detects_corruption(void **state) {
    check_corruptions(BLOCK, 3, 4000);          /* the ssd tier's payload */
    check_corruptions(3 * 4096 + 100, 4, 1000); /* a partial block and a padded last stripe */
    check_corruptions(200, 5, 1000);            /* shorter than a block */
}

/* Seeds and lengths: (slot, n_tokens) seeds one apart, lengths that differ
 * only by zero bytes (the padded last stripe), empty input. */
static void test_seed_and_length(void **state) {
    uint8_t *p = random_bytes(BLOCK + 64, 6);
    uint8_t *z = calloc(4096, 1);
    assert_non_null(z);
    for (int isa = 0; isa < n_isas(); isa++) {
        set_isa(isa);
        const uint64_t base = 0x4b4d415000000002ull;
        for (uint32_t slot = 0; slot < 64; slot++)
            for (uint32_t nt = 15; nt <= 16; nt++) {
                uint64_t s = base ^ ((uint64_t)slot << 32 | nt);
                uint64_t h = pam_checksum64(p, BLOCK, s);
                assert_true(h != pam_checksum64(p, BLOCK, s ^ 1));
                assert_true(h != pam_checksum64(p, BLOCK, s ^ ((uint64_t)1 << 32)));
                assert_true(h != pam_checksum64(p, BLOCK, s + ((uint64_t)1 << 63)));
            }
        for (int b = 0; b < 64; b++) {
            uint64_t s = (uint64_t)1 << b;
            assert_true(pam_checksum64(NULL, 0, 0) != pam_checksum64(NULL, 0, s));
            assert_true(pam_checksum64(p, 100, 0) != pam_checksum64(p, 100, s));
        }
        /* Trailing zeros: n and n + k bytes of a buffer ending in zeros. */
        for (size_t n = 0; n < 300; n++) {
            uint64_t h = pam_checksum64(z, n, 9);
            assert_true(h != pam_checksum64(z, n + 1, 9));
            assert_true(h != pam_checksum64(z, n + 64, 9));
        }
        memset(p + 1000, 0, 200);
        for (size_t n = 1000; n < 1199; n++) assert_true(pam_checksum64(p, n, 9) != pam_checksum64(p, n + 1, 9));
        /* A prefix of the data is not the data. */
        assert_true(pam_checksum64(p, BLOCK, 9) != pam_checksum64(p, BLOCK - 4096, 9));
    }
    assert_int_equal(pam_cpu_set_isa(NULL), PAM_OK);
    free(p);
    free(z);
}

/* One flipped input or seed bit flips each output bit about half the time:
 * over 64 x 256 trials the mean number of flipped output bits stays near 32
 * and no output bit is stuck or always flipped. */
static void test_avalanche(void **state) {
    const size_t lens[] = {8, 64, 200, 4096};
    pam_test_rng r = {11};
    uint8_t *p = random_bytes(4096, 12);
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        size_t n = lens[li];
        for (int what = 0; what < 2; what++) { /* 0: data bits, 1: seed bits */
            unsigned counts[64] = {0};
            unsigned total = 0, trials = 0;
            for (int t = 0; t < 256; t++) {
                for (size_t i = 0; i < n; i++) p[i] = (uint8_t)pam_test_rng_u64(&r);
                uint64_t seed = pam_test_rng_u64(&r), h0 = pam_checksum64(p, n, seed);
                for (int k = 0; k < 64; k++) {
                    uint64_t h;
                    if (what == 0) {
                        size_t bit = rnd_below(&r, n * 8);
                        p[bit / 8] ^= (uint8_t)(1u << (bit % 8));
                        h = pam_checksum64(p, n, seed);
                        p[bit / 8] ^= (uint8_t)(1u << (bit % 8));
                    } else {
                        h = pam_checksum64(p, n, seed ^ ((uint64_t)1 << k));
                    }
                    uint64_t d = h ^ h0;
                    total += (unsigned)__builtin_popcountll(d);
                    for (int b = 0; b < 64; b++) counts[b] += (unsigned)(d >> b & 1);
                    trials++;
                }
            }
            double mean = (double)total / trials;
            const char *src = what ? "seed" : "data";
            if (mean < 31.0 || mean > 33.0) fail_msg("n %zu %s: mean %.3f flipped bits", n, src, mean);
            for (int b = 0; b < 64; b++) {
                double f = (double)counts[b] / trials;
                if (f < 0.45 || f > 0.55) fail_msg("n %zu %s: output bit %d flips %.3f", n, src, b, f);
            }
        }
    }
    free(p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_isas_agree),
        cmocka_unit_test(test_detects_corruption),
        cmocka_unit_test(test_seed_and_length),
        cmocka_unit_test(test_avalanche),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
