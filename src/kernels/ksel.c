/* The chooser keeps, per kernel, one chosen variant per ISA setting (each
 * forced level, and the free choice) in atomic pointers: a kernel call after
 * the first is one load. Choosing happens under one global mutex, so two
 * threads asking at once time the variants once and agree on the result.
 *
 * The cache is a small text file per CPU model:
 *   pam-ksel 1
 *   cpu <model string>
 *   <kernel> <setting> <variant>      (setting: auto, scalar, avx2, avx512)
 * Anything else (a bad header, another model, a malformed line) makes the
 * whole file count as absent; it is then rewritten after timing. Writes go to
 * a temporary file renamed into place, so readers never see half a file. */
#include "kernels/ksel.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/status.h"

#define N_SETTINGS (PAM_ISA_COUNT + 1) /* forced levels, then the free choice */
#define SETTING_AUTO PAM_ISA_COUNT
#define NAME_MAX_LEN 48
#define CACHE_MAX 256
/* Timing: rounds x (at least this much CPU time per variant and round). */
#define TIME_ROUNDS 5
#define TIME_SLICE_NS 2000000ll

typedef struct {
    const pam_ksel_kernel *k;
    _Atomic(const pam_ksel_variant *) choice[N_SETTINGS];
    _Atomic(const pam_ksel_variant *) forced;
    const char *how[N_SETTINGS];
} kentry;

typedef struct {
    char kernel[NAME_MAX_LEN], setting[8], variant[NAME_MAX_LEN];
} cache_line;

/* Recursive: a kernel's timing run may itself use another chosen kernel
 * (e.g. an attention workload calling the matvec), whose first choice then
 * happens inside this one's. */
static pthread_mutex_t g_mu;
static pthread_once_t g_mu_once = PTHREAD_ONCE_INIT;

static void mu_init(void) {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&g_mu, &a);
    pthread_mutexattr_destroy(&a);
}

static void lock(void) {
    pthread_once(&g_mu_once, mu_init);
    pthread_mutex_lock(&g_mu);
}

static void unlock(void) { pthread_mutex_unlock(&g_mu); }
static kentry g_k[PAM_KSEL_MAX_KERNELS];
static atomic_int g_n;
/* cache contents (under g_mu) */
static int g_cache_loaded;
static cache_line g_cache[CACHE_MAX];
static int g_cache_n;
static char g_path[4096];

static const char *setting_name(int s) { return s == SETTING_AUTO ? "auto" : pam_cpu_isa_name((pam_isa)s); }

static int valid_name(const char *s) {
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n >= NAME_MAX_LEN) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
              c == '-'))
            return 0;
    }
    return 1;
}

int pam_ksel_register(const pam_ksel_kernel *k) {
    if (!k || !valid_name(k->name) || !k->variants || k->n_variants < 1 || !k->run)
        return PAM_ERR(PAM_ERR_INVALID, "ksel: bad kernel description");
    for (int i = 0; i < k->n_variants; i++)
        if (!valid_name(k->variants[i].name) || (int)k->variants[i].isa < 0 || k->variants[i].isa >= PAM_ISA_COUNT)
            return PAM_ERR(PAM_ERR_INVALID, "ksel: kernel %s: bad variant %d", k->name, i);
    lock();
    int n = atomic_load(&g_n);
    for (int i = 0; i < n; i++)
        if (strcmp(g_k[i].k->name, k->name) == 0) {
            unlock();
            return i;
        }
    if (n == PAM_KSEL_MAX_KERNELS) {
        unlock();
        return PAM_ERR(PAM_ERR_NOMEM, "ksel: more than %d kernels", PAM_KSEL_MAX_KERNELS);
    }
    kentry *e = &g_k[n];
    e->k = k;
    for (int s = 0; s < N_SETTINGS; s++) {
        atomic_store(&e->choice[s], NULL);
        e->how[s] = "";
    }
    atomic_store(&e->forced, NULL);
    atomic_store(&g_n, n + 1); /* published after the entry is complete */
    unlock();
    return n;
}

int pam_ksel_count(void) { return atomic_load(&g_n); }

const char *pam_ksel_name(int id) { return id >= 0 && id < atomic_load(&g_n) ? g_k[id].k->name : NULL; }

int pam_ksel_find(const char *name) {
    int n = atomic_load(&g_n);
    for (int i = 0; name && i < n; i++)
        if (strcmp(g_k[i].k->name, name) == 0) return i;
    return -1;
}

static int can_run(const pam_ksel_variant *v) {
    return v->isa <= pam_cpu_detect() && (!v->usable || v->usable());
}

int pam_ksel_can_run(const pam_ksel_variant *v) { return v && can_run(v); }

int pam_ksel_n_variants(int id) { return id >= 0 && id < atomic_load(&g_n) ? g_k[id].k->n_variants : 0; }

const pam_ksel_variant *pam_ksel_variant_at(int id, int i) {
    return i >= 0 && i < pam_ksel_n_variants(id) ? &g_k[id].k->variants[i] : NULL;
}

/* ---- cache file ---------------------------------------------------------- */

static uint64_t fnv1a(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

/* Directory of the cache, "" if none can be named. */
static void cache_dir(char *dir, size_t cap) {
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    dir[0] = 0;
    if (xdg && xdg[0] == '/')
        snprintf(dir, cap, "%s/pam", xdg);
    else if (home && home[0])
        snprintf(dir, cap, "%s/.cache/pam", home);
}

static void set_path(void) {
    char dir[4000];
    cache_dir(dir, sizeof dir);
    if (dir[0])
        snprintf(g_path, sizeof g_path, "%s/kernels-%016llx.txt", dir, (unsigned long long)fnv1a(pam_cpu_model()));
    else
        g_path[0] = 0;
}

const char *pam_ksel_cache_path(void) {
    lock();
    set_path();
    unlock();
    return g_path;
}

/* Reads the cache into g_cache; any defect leaves it empty. */
static void cache_load(void) {
    g_cache_loaded = 1;
    g_cache_n = 0;
    set_path();
    FILE *f = g_path[0] ? fopen(g_path, "r") : NULL;
    if (!f) return;
    char line[512], want[256];
    int ok = fgets(line, sizeof line, f) && strcmp(line, "pam-ksel 1\n") == 0;
    snprintf(want, sizeof want, "cpu %s\n", pam_cpu_model());
    ok = ok && fgets(line, sizeof line, f) && strcmp(line, want) == 0;
    while (ok && fgets(line, sizeof line, f)) {
        cache_line c;
        char extra[2];
        if (g_cache_n == CACHE_MAX || strchr(line, '\n') == NULL ||
            sscanf(line, "%47s %7s %47s %1s", c.kernel, c.setting, c.variant, extra) != 3 || !valid_name(c.kernel) ||
            !valid_name(c.variant)) {
            ok = 0;
            break;
        }
        int known = 0;
        for (int s = 0; s < N_SETTINGS; s++) known |= strcmp(c.setting, setting_name(s)) == 0;
        if (!known) {
            ok = 0;
            break;
        }
        g_cache[g_cache_n++] = c;
    }
    fclose(f);
    if (!ok) g_cache_n = 0;
}

static const cache_line *cache_get(const char *kernel, const char *setting) {
    for (int i = 0; i < g_cache_n; i++)
        if (strcmp(g_cache[i].kernel, kernel) == 0 && strcmp(g_cache[i].setting, setting) == 0) return &g_cache[i];
    return NULL;
}

static void mkdir_p(const char *dir) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", dir);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            (void)mkdir(tmp, 0755);
            *p = '/';
        }
    (void)mkdir(tmp, 0755);
}

/* Records a choice and rewrites the file; failures only lose the cache. */
static void cache_put(const char *kernel, const char *setting, const char *variant) {
    cache_line *c = (cache_line *)cache_get(kernel, setting);
    if (!c && g_cache_n < CACHE_MAX) c = &g_cache[g_cache_n++];
    if (!c) return;
    snprintf(c->kernel, sizeof c->kernel, "%s", kernel);
    snprintf(c->setting, sizeof c->setting, "%s", setting);
    snprintf(c->variant, sizeof c->variant, "%s", variant);
    if (!g_path[0]) return;
    char dir[4096], tmp[4200];
    snprintf(dir, sizeof dir, "%s", g_path);
    char *slash = strrchr(dir, '/');
    if (!slash) return;
    *slash = 0;
    mkdir_p(dir);
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", g_path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    int ok = fprintf(f, "pam-ksel 1\ncpu %s\n", pam_cpu_model()) > 0;
    for (int i = 0; ok && i < g_cache_n; i++)
        ok = fprintf(f, "%s %s %s\n", g_cache[i].kernel, g_cache[i].setting, g_cache[i].variant) > 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, g_path) != 0) unlink(tmp);
}

/* ---- choosing ------------------------------------------------------------ */

static int64_t thread_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

/* Index into cand of the fastest, by the best per-call time of each over
 * TIME_ROUNDS interleaved rounds. */
static int time_candidates(const pam_ksel_kernel *k, void *ctx, const pam_ksel_variant *const *cand, int n) {
    double best[PAM_ISA_COUNT * 8], warm[PAM_ISA_COUNT * 8], fastest_warm = 1e300;
    for (int i = 0; i < n; i++) {
        best[i] = 1e300;
        int64_t t0 = thread_ns();
        k->run(ctx, cand[i]->impl); /* warm: caches, pages, frequency */
        warm[i] = (double)(thread_ns() - t0);
        if (warm[i] < fastest_warm) fastest_warm = warm[i];
    }
    for (int r = 0; r < TIME_ROUNDS; r++)
        for (int i = 0; i < n; i++) {
            /* far behind already (e.g. scalar beside SIMD): cannot win, skip */
            if (warm[i] > 8 * fastest_warm + 1e5) continue;
            int64_t calls = 0, t0 = thread_ns(), t;
            do {
                k->run(ctx, cand[i]->impl);
                calls++;
                t = thread_ns();
            } while (t - t0 < TIME_SLICE_NS);
            double per = (double)(t - t0) / (double)calls;
            if (per < best[i]) best[i] = per;
        }
    int pick = 0;
    for (int i = 1; i < n; i++)
        if (best[i] < best[pick]) pick = i;
    return pick;
}

/* Under g_mu. */
static const pam_ksel_variant *choose(kentry *e, int setting) {
    const pam_ksel_kernel *k = e->k;
    const pam_ksel_variant *cand[PAM_ISA_COUNT * 8];
    int n = 0;
    if (setting == SETTING_AUTO) {
        for (int i = 0; i < k->n_variants && n < (int)(sizeof cand / sizeof cand[0]); i++)
            if (can_run(&k->variants[i])) cand[n++] = &k->variants[i];
    } else {
        /* the forced level's variants, else the highest lower level's */
        for (int lvl = setting; lvl >= 0 && n == 0; lvl--)
            for (int i = 0; i < k->n_variants && n < (int)(sizeof cand / sizeof cand[0]); i++)
                if ((int)k->variants[i].isa == lvl && can_run(&k->variants[i])) cand[n++] = &k->variants[i];
    }
    if (n == 0) { /* cannot happen with a scalar variant; take the first rather than fail */
        e->how[setting] = "only";
        return &k->variants[0];
    }
    if (n == 1) {
        e->how[setting] = "only";
        return cand[0];
    }
    if (!g_cache_loaded) cache_load();
    const cache_line *c = cache_get(k->name, setting_name(setting));
    for (int i = 0; c && i < n; i++)
        if (strcmp(cand[i]->name, c->variant) == 0) {
            e->how[setting] = "cached";
            return cand[i];
        }
    void *ctx = k->setup ? k->setup() : NULL;
    if (k->setup && !ctx) {
        e->how[setting] = "untimed";
        return cand[0];
    }
    const pam_ksel_variant *v = cand[time_candidates(k, ctx, cand, n)];
    if (k->teardown) k->teardown(ctx);
    e->how[setting] = "timed";
    cache_put(k->name, setting_name(setting), v->name);
    return v;
}

const pam_ksel_variant *pam_ksel_choice(int id) {
    if (id < 0 || id >= atomic_load(&g_n)) return NULL;
    kentry *e = &g_k[id];
    const pam_ksel_variant *f = atomic_load_explicit(&e->forced, memory_order_acquire);
    if (f) return f;
    const int setting = pam_cpu_isa_forced() ? (int)pam_cpu_isa_level() : SETTING_AUTO;
    const pam_ksel_variant *v = atomic_load_explicit(&e->choice[setting], memory_order_acquire);
    if (v) return v;
    lock();
    v = atomic_load(&e->choice[setting]);
    if (!v) {
        v = choose(e, setting);
        atomic_store_explicit(&e->choice[setting], v, memory_order_release);
    }
    unlock();
    return v;
}

pam_status pam_ksel_force(int id, const char *variant) {
    if (id < 0 || id >= atomic_load(&g_n)) return PAM_ERR(PAM_ERR_INVALID, "ksel: no kernel %d", id);
    kentry *e = &g_k[id];
    if (!variant) {
        atomic_store(&e->forced, NULL);
        return PAM_OK;
    }
    for (int i = 0; i < e->k->n_variants; i++) {
        const pam_ksel_variant *v = &e->k->variants[i];
        if (strcmp(v->name, variant) != 0) continue;
        if (!can_run(v))
            return PAM_ERR(PAM_ERR_UNSUPPORTED, "ksel: %s: this CPU cannot run variant %s", e->k->name, variant);
        atomic_store(&e->forced, v);
        return PAM_OK;
    }
    return PAM_ERR(PAM_ERR_INVALID, "ksel: %s has no variant '%s'", e->k->name, variant);
}

const char *pam_ksel_how(int id) {
    if (id < 0 || id >= atomic_load(&g_n)) return "";
    kentry *e = &g_k[id];
    if (atomic_load(&e->forced)) return "forced";
    const int setting = pam_cpu_isa_forced() ? (int)pam_cpu_isa_level() : SETTING_AUTO;
    lock();
    const char *h = e->how[setting];
    unlock();
    return h;
}

void pam_ksel_forget(void) {
    lock();
    int n = atomic_load(&g_n);
    for (int i = 0; i < n; i++)
        for (int s = 0; s < N_SETTINGS; s++) {
            atomic_store(&g_k[i].choice[s], NULL);
            g_k[i].how[s] = "";
        }
    g_cache_loaded = 0;
    g_cache_n = 0;
    unlock();
}
