// placement_probe: checks, on a multi-node NUMA machine (the test guest), the
// kernel facts fbmm's placement relies on (see /work/shared/DESIGN.md):
//   1. a memfd mapped MAP_SHARED by one process ("daemon") and mbind()-ed range
//      by range (shmem shared policy) places the pages that ANOTHER process
//      ("app", a forked child with its own MAP_SHARED mapping of the memfd)
//      faults in, per range, whatever the app's own task policy says;
//      an un-mbind()-ed range follows the app's task policy instead;
//   2. lseek(SEEK_DATA/SEEK_HOLE) on the memfd finds the populated ranges;
//   3. after MADV_POPULATE_READ on its own mapping, the daemon can migrate
//      pages the app has mapped with move_pages(MPOL_MF_MOVE_ALL); the app
//      sees its data intact and the pages on the new nodes (move_pages with
//      nodes=NULL, in the app).
// Prints one line per check; exit 0 when all hold, 1 on any mismatch, 2 when
// the machine cannot run the probe (fewer than 2 NUMA nodes, syscall missing).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/mempolicy.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MPOL_MF_MOVE_ALL
#define MPOL_MF_MOVE_ALL (1 << 2)
#endif

#define RANGE_PAGES 64
#define MAX_NODES 64

static long page;
static int failures;

static long sys_mbind(void *addr, unsigned long len, int mode, const unsigned long *mask,
                      unsigned long maxnode, unsigned flags) {
    return syscall(SYS_mbind, addr, len, mode, mask, maxnode, flags);
}
static long sys_set_mempolicy(int mode, const unsigned long *mask, unsigned long maxnode) {
    return syscall(SYS_set_mempolicy, mode, mask, maxnode);
}
static long sys_move_pages(pid_t pid, unsigned long count, void **pages, const int *nodes,
                           int *status, int flags) {
    return syscall(SYS_move_pages, pid, count, pages, nodes, status, flags);
}

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "ok  " : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
    if (!ok) failures++;
}

// Nodes with memory, from /sys/devices/system/node/has_memory ("0-2" or "0,2").
static int memory_nodes(int *out) {
    FILE *f = fopen("/sys/devices/system/node/has_memory", "r");
    if (!f) f = fopen("/sys/devices/system/node/online", "r");
    if (!f) return 0;
    char buf[256];
    int n = 0;
    if (fgets(buf, sizeof buf, f)) {
        char *s = buf;
        while (*s && *s != '\n' && n < MAX_NODES) {
            char *end;
            long a = strtol(s, &end, 10), b = a;
            if (end == s) break;
            if (*end == '-') { s = end + 1; b = strtol(s, &end, 10); }
            for (long i = a; i <= b && n < MAX_NODES; i++) out[n++] = (int)i;
            s = end;
            if (*s == ',') s++;
        }
    }
    fclose(f);
    return n;
}

// Per-page node of [addr, addr+npages) in the calling process; -errno for
// pages that are not present.
static void query_nodes(char *addr, int npages, int *status) {
    void **pages = calloc(npages, sizeof *pages);
    for (int i = 0; i < npages; i++) pages[i] = addr + (long)i * page;
    if (sys_move_pages(0, npages, pages, NULL, status, 0) != 0) {
        perror("move_pages(query)");
        for (int i = 0; i < npages; i++) status[i] = -9999;
    }
    free(pages);
}

// How many pages of a range are on `want`; describes the rest in `why`.
static int count_on(const int *status, int npages, int want, char *why, size_t whylen) {
    int good = 0, other = -1000, nother = 0;
    for (int i = 0; i < npages; i++) {
        if (status[i] == want) good++;
        else { nother++; other = status[i]; }
    }
    if (nother) snprintf(why, whylen, " (%d pages elsewhere, e.g. %d)", nother, other);
    else why[0] = 0;
    return good;
}

static uint64_t pattern(long pageno, int round) { return 0xfb33000000000000ull ^ ((uint64_t)round << 40) ^ (uint64_t)pageno; }

static void fill(char *addr, long npages, int round) {
    for (long i = 0; i < npages; i++) {
        uint64_t *p = (uint64_t *)(addr + i * page);
        for (size_t w = 0; w < (size_t)page / 8; w += 64) p[w] = pattern(i, round) + w;
    }
}
static long verify(const char *addr, long npages, int round) {
    long bad = 0;
    for (long i = 0; i < npages; i++) {
        const uint64_t *p = (const uint64_t *)(addr + i * page);
        for (size_t w = 0; w < (size_t)page / 8; w += 64)
            if (p[w] != pattern(i, round) + w) { bad++; break; }
    }
    return bad;
}

static void xwrite(int fd, char c) { if (write(fd, &c, 1) != 1) { perror("pipe write"); exit(2); } }
static char xread(int fd) { char c = 0; if (read(fd, &c, 1) != 1) { perror("pipe read"); exit(2); } return c; }

int main(void) {
    page = sysconf(_SC_PAGESIZE);
    setvbuf(stdout, NULL, _IOLBF, 0);
    int nodes[MAX_NODES];
    int nn = memory_nodes(nodes);
    printf("placement_probe: %d memory node(s):", nn);
    for (int i = 0; i < nn; i++) printf(" %d", nodes[i]);
    printf("\n");
    if (nn < 2) {
        fprintf(stderr, "placement_probe: needs at least 2 NUMA nodes with memory (run it in the guest: scripts/guest/run.sh)\n");
        return 2;
    }

    // Layout of the memfd: one range per memory node, mbind()-ed to it; then
    // one range without a shared policy; then a hole nobody touches.
    int nranges = nn + 1;
    long data_pages = (long)nranges * RANGE_PAGES;
    long total_pages = data_pages + RANGE_PAGES;
    size_t len = (size_t)total_pages * page;
    size_t rlen = (size_t)RANGE_PAGES * page;
    int task_node = nodes[nn - 1];  // the app's own (task) policy: the last node

    int fd = memfd_create("fbmm-placement-probe", MFD_CLOEXEC);
    if (fd < 0) { perror("memfd_create"); return 2; }
    if (ftruncate(fd, (off_t)len) != 0) { perror("ftruncate"); return 2; }

    // The "daemon" (this process): its own mapping, policy per range.
    char *d = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (d == MAP_FAILED) { perror("mmap"); return 2; }
    for (int r = 0; r < nn; r++) {
        unsigned long mask[MAX_NODES / (8 * sizeof(unsigned long)) + 1] = {0};
        mask[nodes[r] / (8 * sizeof(unsigned long))] |= 1ul << (nodes[r] % (8 * sizeof(unsigned long)));
        long rc = sys_mbind(d + r * rlen, rlen, MPOL_BIND, mask, MAX_NODES + 1, 0);
        check(rc == 0, "daemon mbind(MPOL_BIND, node %d) on pages %ld-%ld of its MAP_SHARED memfd mapping%s%s",
              nodes[r], (long)r * RANGE_PAGES, (long)(r + 1) * RANGE_PAGES - 1, rc ? ": " : "", rc ? strerror(errno) : "");
    }

    int to_app[2], to_daemon[2];
    if (pipe(to_app) || pipe(to_daemon)) { perror("pipe"); return 2; }
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 2; }
    if (pid == 0) {
        // The "app": its own MAP_SHARED mapping of the same memfd; its own
        // task policy prefers another node than the ranges' shared policies.
        close(to_app[1]); close(to_daemon[0]);
        munmap(d, len);  // only touch memory through its own mapping
        unsigned long mask[MAX_NODES / (8 * sizeof(unsigned long)) + 1] = {0};
        mask[task_node / (8 * sizeof(unsigned long))] |= 1ul << (task_node % (8 * sizeof(unsigned long)));
        if (sys_set_mempolicy(MPOL_PREFERRED, mask, MAX_NODES + 1) != 0) perror("set_mempolicy");
        char *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (a == MAP_FAILED) { perror("app mmap"); _exit(2); }
        fill(a, data_pages, 1);
        int *st = calloc(total_pages, sizeof *st);
        char why[128];
        query_nodes(a, (int)data_pages, st);
        for (int r = 0; r < nn; r++) {
            int good = count_on(st + r * RANGE_PAGES, RANGE_PAGES, nodes[r], why, sizeof why);
            check(good == RANGE_PAGES, "app (pid %d, task policy preferred=%d) faulted range %d: %d/%d pages on node %d (daemon's shared policy)%s",
                  getpid(), task_node, r, good, RANGE_PAGES, nodes[r], why);
        }
        int good = count_on(st + nn * RANGE_PAGES, RANGE_PAGES, task_node, why, sizeof why);
        check(good == RANGE_PAGES, "app faulted range %d (no shared policy): %d/%d pages on node %d (app's task policy)%s",
              nn, good, RANGE_PAGES, task_node, why);
        xwrite(to_daemon[1], 'T');  // touched
        xread(to_app[0]);           // daemon has migrated
        long bad = verify(a, data_pages, 1);
        check(bad == 0, "app reads its data intact after the daemon's migration (%ld bad pages of %ld)", bad, data_pages);
        query_nodes(a, (int)data_pages, st);
        for (int r = 0; r < nranges; r++) {
            int want = nodes[(r + 1) % nn];
            good = count_on(st + r * RANGE_PAGES, RANGE_PAGES, want, why, sizeof why);
            check(good == RANGE_PAGES, "app sees range %d migrated: %d/%d pages on node %d%s", r, good, RANGE_PAGES, want, why);
        }
        // The app keeps writing into migrated pages; the daemon must see it.
        fill(a, data_pages, 2);
        munmap(a, len);
        xwrite(to_daemon[1], 'W');
        _exit(failures ? 1 : 0);
    }
    close(to_app[0]); close(to_daemon[1]);
    if (xread(to_daemon[0]) != 'T') { fprintf(stderr, "app died before touching\n"); return 1; }

    // SEEK_DATA / SEEK_HOLE: data up to data_pages, then the untouched hole.
    off_t data = lseek(fd, 0, SEEK_DATA), hole = lseek(fd, 0, SEEK_HOLE);
    check(data == 0 && hole == (off_t)data_pages * page,
          "daemon lseek on the memfd: SEEK_DATA=%lld SEEK_HOLE=%lld (want 0 and %lld)",
          (long long)data, (long long)hole, (long long)data_pages * page);

    // The daemon has no PTEs yet (the app faulted every page): move_pages
    // needs them, MADV_POPULATE_READ maps the existing pages without allocating.
    int *st = calloc(total_pages, sizeof *st);
    query_nodes(d, (int)data_pages, st);
    int absent = 0;
    for (long i = 0; i < data_pages; i++) absent += st[i] == -ENOENT;
    printf("info daemon before MADV_POPULATE_READ: %d/%ld pages not mapped in the daemon (move_pages status -ENOENT)\n", absent, data_pages);
    int prc = madvise(d, (size_t)data_pages * page, MADV_POPULATE_READ);
    check(prc == 0, "daemon MADV_POPULATE_READ over the data ranges%s%s", prc ? ": " : "", prc ? strerror(errno) : "");

    // Migrate every range to the next node (the un-policied one to node[0]).
    void **pages = calloc(data_pages, sizeof *pages);
    int *to = calloc(data_pages, sizeof *to);
    for (long i = 0; i < data_pages; i++) {
        pages[i] = d + i * page;
        to[i] = nodes[((i / RANGE_PAGES) + 1) % nn];
    }
    long mrc = sys_move_pages(0, data_pages, pages, to, st, MPOL_MF_MOVE_ALL);
    int moved = 0, errs = 0, firsterr = 0;
    for (long i = 0; i < data_pages; i++) {
        if (st[i] == to[i]) moved++;
        else if (!errs++) firsterr = st[i];
    }
    check(mrc == 0 && moved == data_pages,
          "daemon move_pages(MPOL_MF_MOVE_ALL) of pages the app has mapped: rc %ld, %d/%ld moved (%d not, first status %d)",
          mrc, moved, data_pages, errs, firsterr);
    xwrite(to_app[1], 'M');
    xread(to_daemon[0]);
    long bad = verify(d, data_pages, 2);
    check(bad == 0, "daemon reads the app's later writes through its own mapping (%ld bad pages)", bad);

    int ws;
    if (waitpid(pid, &ws, 0) != pid) { perror("waitpid"); return 1; }
    if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0) {
        printf("FAIL app process exited with status %d\n", WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws));
        failures++;
    }
    printf("placement_probe: %s\n", failures ? "FAILED" : "all checks passed");
    return failures ? 1 : 0;
}
