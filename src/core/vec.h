/* Growable arrays: one doubling-growth helper shared by the typed vectors of
 * the modules (token ids, fragments, offsets), so growth and out-of-memory
 * handling live in one place. */
#ifndef PAM_CORE_VEC_H
#define PAM_CORE_VEC_H

#include <stddef.h>
#include <stdlib.h>

/* Makes room for one more element in *buf (count n, capacity *cap, elements
 * of elem bytes; first allocation holds min_cap). Returns 0, or -1 with *buf
 * and *cap unchanged when memory runs out. */
static inline int pam_vec_grow(void **buf, size_t *cap, size_t n, size_t elem, size_t min_cap) {
    if (n < *cap) return 0;
    size_t nc = *cap ? *cap * 2 : min_cap;
    void *nb = realloc(*buf, nc * elem);
    if (!nb) return -1;
    *buf = nb;
    *cap = nc;
    return 0;
}

#endif
