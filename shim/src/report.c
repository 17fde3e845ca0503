/*
 * The word to the user when a program's memory did not go where they asked.
 *
 * `fbmm run` execs the program, so the program's pid is the pid fbmm run
 * had; it passes that pid in FBMM_REPORT. The process with that pid (not
 * its children, which have other pids, nor fork children of it) says on
 * stderr, even without --verbose:
 *   - the first time it falls back to anonymous memory, and why;
 *   - at exit, when less than half of its resident memory (and at least
 *     REPORT_FLOOR of it) was in the mount: how much, where the rest is
 *     (its brk heap, other anonymous mappings) and the fix.
 * Only while fd 2 is the file it was when the program started (a daemon
 * that closed stderr and opened a file of its own as fd 2 gets nothing
 * written into that file). Everything else the shim says stays behind
 * --verbose. Only system calls and stack buffers: the exit report runs
 * from a destructor, perhaps while other threads still allocate.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shim.h"
#include "sys.h"

/* Programs this small are not worth a line (a shell, `true`). */
#define REPORT_FLOOR_KB (16 * 1024)

static pid_t report_pid;
/* What fd 2 was when the shim started: a daemon that closed its stderr and
 * opened a file of its own as fd 2 must never get our line in that file. */
static dev_t stderr_dev;
static ino_t stderr_ino;
static int stderr_known;
/* Bytes of anonymous mappings left to the kernel for being under
 * --min-size, by size class (2^i <= len < 2^(i+1)): at exit they name the
 * --min-size that would redirect them (ruby 3.1 maps each 16 KiB GC heap
 * page itself, as a 32 KiB mmap it trims). */
static uint64_t small_bytes[64];
static char first_fallback[200];
static int fallback_said;

void fbmm_report_load(void)
{
    const char *v = getenv("FBMM_REPORT");
    long pid = v && *v ? strtol(v, NULL, 10) : 0;
    if (pid > 0) report_pid = (pid_t)pid;
    struct stat st;
    if (sys_fstat(2, &st) == 0) {
        stderr_dev = st.st_dev;
        stderr_ino = st.st_ino;
        stderr_known = 1;
    }
}

/* Says `text` on stderr if fd 2 is still the stderr the program started
 * with (every message of the shim goes through here). */
void fbmm_stderr_write(const char *text, size_t n)
{
    struct stat st;
    if (!stderr_known || sys_fstat(2, &st) != 0 || st.st_dev != stderr_dev || st.st_ino != stderr_ino) return;
    int saved = errno;
    ssize_t r = write(2, text, n);
    (void)r;
    errno = saved;
}

static int reporting(void)
{
    return report_pid && report_pid == getpid();
}

/* Called for every message the shim has: remembers the first fallback and
 * says it, once, in the reporting process. */
void fbmm_report_message(const char *text, size_t n)
{
    static const char prefix[] = "fbmm: falling back";
    if (n < sizeof prefix - 1 || memcmp(text, prefix, sizeof prefix - 1) != 0) return;
    if (!__atomic_exchange_n(&fallback_said, 1, __ATOMIC_RELAXED)) {
        size_t k = n < sizeof first_fallback ? n : sizeof first_fallback - 1;
        memcpy(first_fallback, text, k);
        while (k && (first_fallback[k - 1] == '\n')) k--;
        first_fallback[k] = 0;
        if (reporting() && !fbmm_cfg.verbose) fbmm_stderr_write(text, n);
    }
}

void fbmm_report_small_mmap(size_t len)
{
    if (report_pid && len) __atomic_add_fetch(&small_bytes[63 - __builtin_clzl(len)], len, __ATOMIC_RELAXED);
}

/* The size class that most of the small mappings' bytes came from. */
static int busiest_small_class(uint64_t *bytes)
{
    int best = -1;
    *bytes = 0;
    for (int i = 0; i < 64; i++) {
        uint64_t b = __atomic_load_n(&small_bytes[i], __ATOMIC_RELAXED);
        if (b > *bytes) { *bytes = b; best = i; }
    }
    return best;
}

/* "32K", "2M" */
static char *size_text(char *buf, uint64_t v)
{
    int mb = v >= (1 << 20) && v % (1 << 20) == 0;
    fbmm_utoa(buf, mb ? v >> 20 : (v + 1023) >> 10);
    size_t n = strlen(buf);
    buf[n++] = mb ? 'M' : 'K';
    buf[n] = 0;
    return buf;
}

/* Line-by-line reader over a /proc file, with a fixed buffer. */
struct lines {
    int fd;
    char buf[4096];
    size_t have, at;
};

static const char *next_line(struct lines *l)
{
    for (;;) {
        char *nl = memchr(l->buf + l->at, '\n', l->have - l->at);
        if (nl) {
            *nl = 0;
            const char *line = l->buf + l->at;
            l->at = (size_t)(nl - l->buf) + 1;
            return line;
        }
        memmove(l->buf, l->buf + l->at, l->have - l->at);
        l->have -= l->at;
        l->at = 0;
        if (l->have == sizeof l->buf) l->have = 0;  /* an over-long line: drop it */
        ssize_t r = read(l->fd, l->buf + l->have, sizeof l->buf - 1 - l->have);
        if (r <= 0) return NULL;
        l->have += (size_t)r;
    }
}

static uint64_t field_kb(const char *line, const char *key)
{
    size_t k = strlen(key);
    if (strncmp(line, key, k) != 0) return UINT64_MAX;
    return strtoull(line + k, NULL, 10);
}

/* RssAnon and RssShmem from /proc/self/status; the Rss of [heap] from
 * smaps. The shim's memory is shared file memory (RssShmem). */
static int usage(uint64_t *anon, uint64_t *shmem, uint64_t *heap)
{
    struct lines l = { .fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC) };
    if (l.fd < 0) return -1;
    *anon = *shmem = *heap = 0;
    for (const char *s; (s = next_line(&l));) {
        uint64_t v;
        if ((v = field_kb(s, "RssAnon:")) != UINT64_MAX) *anon = v;
        if ((v = field_kb(s, "RssShmem:")) != UINT64_MAX) *shmem = v;
    }
    sys_close(l.fd);
    l = (struct lines){ .fd = open("/proc/self/smaps", O_RDONLY | O_CLOEXEC) };
    if (l.fd < 0) return 0;
    int in_heap = 0;
    for (const char *s; (s = next_line(&l));) {
        size_t n = strlen(s);
        if (n > 7 && !strcmp(s + n - 7, " [heap]")) in_heap = 1;
        else if (in_heap && field_kb(s, "Rss:") != UINT64_MAX) {
            *heap = field_kb(s, "Rss:");
            break;
        }
    }
    sys_close(l.fd);
    return 0;
}

/* "12.3M" from KiB. */
static char *mib(char *buf, uint64_t kb)
{
    char d[24];
    fbmm_utoa(buf, kb / 1024);
    size_t n = strlen(buf);
    buf[n++] = '.';
    fbmm_utoa(d, (kb % 1024) * 10 / 1024);
    buf[n++] = d[0];
    buf[n++] = 'M';
    buf[n] = 0;
    return buf;
}

__attribute__((destructor)) static void report_at_exit(void)
{
    if (!reporting() || !fbmm_cfg.active) return;
    uint64_t anon, shmem, heap;
    if (usage(&anon, &shmem, &heap) < 0) return;
    uint64_t total = anon + shmem;
    if (total < REPORT_FLOOR_KB || shmem * 2 >= total) return;
    char pct[24], in[24], all[24], h[24], sz[24], sz2[24], cur[24], msg[700];
    fbmm_utoa(pct, shmem * 100 / total);
    const char *name = program_invocation_short_name;
    const char *parts[20] = { "fbmm: ", name, ": ", pct, "% of its resident memory was in the mount (",
                              mib(in, shmem), " of ", mib(all, total), ")" };
    int k = 9;
    if (fallback_said) {
        /* "fbmm: falling back to anonymous memory[ for ...]: WHY" */
        const char *why = strstr(first_fallback, ": ");
        why = why ? strstr(why + 2, ": ") : NULL;
        parts[k++] = ": it fell back to anonymous memory (";
        parts[k++] = why ? why + 2 : first_fallback + 6;
        parts[k++] = ")";
    } else if (heap * 2 >= anon) {
        parts[k++] = "; ";
        parts[k++] = mib(h, heap);
        parts[k++] = " in its brk heap, where glibc keeps small blocks: --allocator jemalloc or mimalloc moves them too";
    } else {
        uint64_t small;
        int cls = busiest_small_class(&small);
        uint64_t at = cls >= 0 ? (uint64_t)1 << cls : 0;
        if (at < fbmm_page) at = fbmm_page;
        if (cls >= 0 && small / 1024 * 4 >= anon) {
            parts[k++] = "; ";
            parts[k++] = mib(h, small / 1024);
            parts[k++] = " was mapped in pieces of ";
            parts[k++] = size_text(sz, at);
            parts[k++] = "-";
            parts[k++] = size_text(sz2, at * 2);
            parts[k++] = ", under --min-size ";
            parts[k++] = size_text(cur, fbmm_cfg.min_size);
            parts[k++] = ": --min-size ";
            parts[k++] = sz;
            parts[k++] = " redirects them (each a mapping of its own)";
        } else {
            parts[k++] = "; the rest is in mappings under --min-size or made before the shim loaded: try a smaller --min-size";
        }
    }
    size_t n = fbmm_join(msg, sizeof msg - 1, parts, (size_t)k);
    msg[n++] = '\n';
    fbmm_stderr_write(msg, n);
}
