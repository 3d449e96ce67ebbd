/* --kv-tier specs and the default tier.
 *   dram[:SIZE]            KV of the given type (default f16) in host memory
 *                          (no size: the default sizing)
 *   dramq:int8|int4:SIZE   quantised KV in host memory
 *   ssd:DIR:SIZE           blocks of the given type in a file under DIR (DIR may contain ':';
 *                          the size is what follows the last one)
 * Sizes: plain bytes or a number (fractions allowed) with K/M/G/T or
 * KiB/MiB/GiB/TiB, all binary. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/status.h"
#include "kv/tier.h"

pam_status pam_parse_size(const char *s, uint64_t *out) {
    if (!s || !*s) return PAM_ERR(PAM_ERR_INVALID, "size: empty (expected e.g. 2GiB, 512MiB, 4096)");
    const char *p = s;
    uint64_t whole = 0;
    int digits = 0;
    while (isdigit((unsigned char)*p)) {
        unsigned d = (unsigned)(*p - '0');
        if (whole > (UINT64_MAX - d) / 10) return PAM_ERR(PAM_ERR_INVALID, "size '%s': too large", s);
        whole = whole * 10 + d;
        p++;
        digits++;
    }
    /* Fraction kept as numerator/denominator so 1.5GiB is exact. */
    uint64_t frac = 0, frac_den = 1;
    if (*p == '.') {
        p++;
        while (isdigit((unsigned char)*p)) {
            if (frac_den <= UINT64_MAX / 100) {
                frac = frac * 10 + (uint64_t)(*p - '0');
                frac_den *= 10;
            }
            p++;
            digits++;
        }
    }
    if (digits == 0) return PAM_ERR(PAM_ERR_INVALID, "size '%s': expected a number (e.g. 2GiB)", s);
    static const struct {
        const char *suffix;
        int shift;
    } units[] = {{"", 0},    {"B", 0},    {"K", 10},   {"KiB", 10}, {"M", 20},
                 {"MiB", 20}, {"G", 30},  {"GiB", 30}, {"T", 40},   {"TiB", 40}};
    int shift = -1;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strcmp(p, units[i].suffix) == 0) shift = units[i].shift;
    if (shift < 0)
        return PAM_ERR(PAM_ERR_INVALID, "size '%s': unknown unit '%s' (use KiB, MiB, GiB, TiB or bytes)", s, p);
    if (shift < 64 && whole > (UINT64_MAX >> shift))
        return PAM_ERR(PAM_ERR_INVALID, "size '%s': too large", s);
    uint64_t bytes = whole << shift;
    if (frac) {
        /* frac/frac_den < 1, frac_den <= 1e18, shift <= 40: compute in long double */
        long double extra = (long double)frac / (long double)frac_den * (long double)(1ull << shift);
        if ((long double)(UINT64_MAX - bytes) < extra) return PAM_ERR(PAM_ERR_INVALID, "size '%s': too large", s);
        bytes += (uint64_t)extra;
    }
    if (bytes == 0) return PAM_ERR(PAM_ERR_INVALID, "size '%s': must be more than zero", s);
    *out = bytes;
    return PAM_OK;
}

pam_status pam_tier_open_default(const pam_kv_shape *shape, uint64_t want_bytes, pam_tier **out) {
    return pam_tier_open_default_type(shape, PAM_KV_F16, want_bytes, out);
}

pam_status pam_tier_open_default_type(const pam_kv_shape *shape, pam_kv_type type, uint64_t want_bytes,
                                      pam_tier **out) {
    *out = NULL;
    long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    uint64_t avail = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
    /* Half of what is free now: the weights, activations and the rest of the
     * machine need the other half. */
    uint64_t bytes = avail / 2;
    if (want_bytes > 0 && (bytes == 0 || want_bytes < bytes)) bytes = want_bytes;
    if (bytes == 0)
        return PAM_ERR(PAM_ERR_FULL, "default KV tier: cannot tell how much memory is available; give --kv-tier dram:SIZE");
    return pam_tier_dram_open_type(shape, type, bytes, out);
}

pam_status pam_tier_open_spec(const pam_kv_shape *shape, const char *spec, pam_tier **out) {
    return pam_tier_open_spec_type(shape, spec, PAM_KV_F16, out);
}

pam_status pam_tier_open_spec_type(const pam_kv_shape *shape, const char *spec, pam_kv_type type, pam_tier **out) {
    *out = NULL;
    if (!spec || !*spec)
        return PAM_ERR(PAM_ERR_INVALID, "--kv-tier: empty spec (expected dram:SIZE, dramq:int8:SIZE or ssd:DIR:SIZE)");
    const char *colon = strchr(spec, ':');
    size_t kind_len = colon ? (size_t)(colon - spec) : strlen(spec);
    const char *rest = colon ? colon + 1 : NULL;
    uint64_t bytes = 0;
    if (kind_len == 4 && strncmp(spec, "dram", 4) == 0) {
        if (!rest) return pam_tier_open_default_type(shape, type, 0, out);
        pam_status st = pam_parse_size(rest, &bytes);
        if (st != PAM_OK)
            return PAM_ERR(PAM_ERR_INVALID, "--kv-tier %s: %s (expected dram:SIZE)", spec, pam_last_error());
        return pam_tier_dram_open_type(shape, type, bytes, out);
    }
    if (kind_len == 5 && strncmp(spec, "dramq", 5) == 0) {
        int bits = 0;
        const char *sz = rest ? strchr(rest, ':') : NULL;
        if (rest && strncmp(rest, "int8:", 5) == 0) bits = 8;
        else if (rest && strncmp(rest, "int4:", 5) == 0) bits = 4;
        if (!bits || !sz)
            return PAM_ERR(PAM_ERR_INVALID, "--kv-tier %s: expected dramq:int8:SIZE or dramq:int4:SIZE", spec);
        pam_status st = pam_parse_size(sz + 1, &bytes);
        if (st != PAM_OK) return PAM_ERR(PAM_ERR_INVALID, "--kv-tier %s: %s", spec, pam_last_error());
        return pam_tier_dramq_open(shape, bits, bytes, out);
    }
    if (kind_len == 3 && strncmp(spec, "ssd", 3) == 0) {
        const char *last = rest ? strrchr(rest, ':') : NULL;
        if (!last || last == rest)
            return PAM_ERR(PAM_ERR_INVALID, "--kv-tier %s: expected ssd:DIR:SIZE (e.g. ssd:/var/tmp/pam-kv:64GiB)", spec);
        pam_status st = pam_parse_size(last + 1, &bytes);
        if (st != PAM_OK) return PAM_ERR(PAM_ERR_INVALID, "--kv-tier %s: %s", spec, pam_last_error());
        char dir[PATH_MAX];
        size_t n = (size_t)(last - rest);
        if (n >= sizeof dir) return PAM_ERR(PAM_ERR_INVALID, "--kv-tier %s: directory path too long", spec);
        memcpy(dir, rest, n);
        dir[n] = '\0';
        return pam_tier_ssd_open_type(shape, type, dir, bytes, 0, out);
    }
    return PAM_ERR(PAM_ERR_INVALID, "--kv-tier %s: unknown tier '%.*s' (known: dram, dramq, ssd)", spec,
                   (int)kind_len, spec);
}
