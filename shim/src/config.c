/*
 * Environment parsing and diagnostics. Messages are written with write(2)
 * because stdio may allocate and may not be usable yet (we run under malloc).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/auxv.h>
#include <unistd.h>

#include "shim.h"

/* 128 KiB: glibc's default M_MMAP_THRESHOLD. A block that large already costs
 * glibc an mmap and a munmap, so redirecting it adds only the hole punch on
 * free; smaller blocks would turn cheap heap allocations into system calls
 * and VMAs. Small objects reach the mount through --allocator instead. */
#define DEFAULT_MIN_SIZE (128u * 1024u)
/* Freed large malloc blocks kept mapped for reuse, at most this many bytes
 * (glibc keeps up to 64 MiB of freed heap at its largest trim threshold). */
#define DEFAULT_CACHE_MAX (64ul << 20)

struct fbmm_config fbmm_cfg;
size_t fbmm_page = 4096;

char *fbmm_utoa(char *buf, uint64_t v)
{
    char tmp[21];
    int n = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    for (int i = 0; i < n; i++) buf[i] = tmp[n - 1 - i];
    buf[n] = 0;
    return buf;
}

int fbmm_parse_size(const char *s, size_t *out)
{
    if (!s || *s < '0' || *s > '9') return -1;
    uint64_t v = 0;
    while (*s >= '0' && *s <= '9') {
        if (v > (UINT64_MAX - 9) / 10) return -1;
        v = v * 10 + (uint64_t)(*s++ - '0');
    }
    unsigned shift = 0;
    switch (*s) {
    case 'k': case 'K': shift = 10; s++; break;
    case 'm': case 'M': shift = 20; s++; break;
    case 'g': case 'G': shift = 30; s++; break;
    case 't': case 'T': shift = 40; s++; break;
    }
    if (shift && (*s == 'i' || *s == 'I')) s++;
    if (*s == 'b' || *s == 'B') s++;
    if (*s) return -1;
    if (shift && v > (UINT64_MAX >> shift)) return -1;
    *out = (size_t)(v << shift);
    return 0;
}

static int env_flag(const char *name)
{
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0 && strcasecmp(v, "no") != 0 &&
           strcasecmp(v, "false") != 0;
}

void fbmm_config_load(void)
{
    unsigned long pg = getauxval(AT_PAGESZ);
    if (pg) fbmm_page = pg;

    fbmm_report_load();  /* first: it records what stderr is, before anything is said */
    fbmm_cfg.verbose = env_flag("FBMM_VERBOSE");
    fbmm_cfg.strict = env_flag("FBMM_STRICT");
    /* FBMM_PREZERO=0: this process does not use the mount's pre-zeroed pool. */
    const char *pz = getenv("FBMM_PREZERO");
    fbmm_cfg.no_pool = pz && *pz && !env_flag("FBMM_PREZERO");
    fbmm_cfg.min_size = DEFAULT_MIN_SIZE;

    const char *ms = getenv("FBMM_MIN_SIZE");
    if (ms && *ms) {
        size_t v;
        if (fbmm_parse_size(ms, &v) == 0)
            fbmm_cfg.min_size = v;
        else
            fbmm_say("ignoring FBMM_MIN_SIZE=", ms, " (not a size; using 128K)");
    }
    fbmm_cfg.cache_max = DEFAULT_CACHE_MAX;
    const char *mc = getenv("FBMM_MALLOC_CACHE");
    if (mc && *mc) {
        size_t v;
        if (fbmm_parse_size(mc, &v) == 0)
            fbmm_cfg.cache_max = v;
        else
            fbmm_say("ignoring FBMM_MALLOC_CACHE=", mc, " (not a size; using 64M)");
    }
    /* A region is at least one page; 0 would redirect every malloc(1). */
    if (fbmm_cfg.min_size < fbmm_page) fbmm_cfg.min_size = fbmm_page;

    const char *m = getenv("FBMM_MOUNT");
    if (m && *m) {
        size_t n = strlen(m);
        if (n >= sizeof fbmm_cfg.mount) {
            fbmm_say("FBMM_MOUNT is too long; shim disabled", NULL, NULL);
            return;
        }
        memcpy(fbmm_cfg.mount, m, n + 1);
        fbmm_cfg.active = 1;
    }
}

size_t fbmm_join(char *buf, size_t cap, const char *const *parts, size_t count)
{
    size_t n = 0;
    for (size_t i = 0; i < count; i++)
        for (const char *p = parts[i]; p && *p && n + 1 < cap; p++) buf[n++] = *p;
    if (cap) buf[n] = 0;
    return n;
}

void fbmm_say(const char *a, const char *b, const char *c)
{
    char buf[512];
    const char *parts[] = { "fbmm: ", a, b, c, "\n" };
    size_t n = fbmm_join(buf, sizeof buf, parts, sizeof parts / sizeof *parts);
    /* A fallback is remembered, and said in the process fbmm run started
     * even without --verbose (report.c). */
    fbmm_report_message(buf, n);
    if (fbmm_cfg.verbose) fbmm_stderr_write(buf, n);
}

void fbmm_say_once(int *once, const char *a, const char *b, const char *c)
{
    if (__atomic_exchange_n(once, 1, __ATOMIC_RELAXED)) return;
    fbmm_say(a, b, c);
}
