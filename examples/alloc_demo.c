/* alloc_demo: allocates memory the ways programs do (malloc, calloc, mmap),
 * touches it, and prints on which NUMA node each page of it is, as the kernel
 * reports it (move_pages with nodes == NULL only asks, moves nothing), and
 * what backs it (its line in /proc/self/maps). Run it natively and under
 * `fbmm run` to see the mount's policy at work:
 *
 *   cc -O2 -Wall -o /tmp/alloc_demo examples/alloc_demo.c
 *   /tmp/alloc_demo 64                                # native: anonymous memory
 *   fbmm run --mount /mnt/mem -- /tmp/alloc_demo 64   # in the mount
 *   /tmp/alloc_demo 64 30   # hold the memory 30 s (meanwhile: fbmm stat, fbmm migrate)
 *
 * No libnuma: the raw system call, so it builds wherever a C compiler does.
 * Usage: alloc_demo [MiB per allocation, default 64] [seconds to hold, default 0]
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_NODES 64

/* Pages of [p, p+len) per node; pages that are not present count as -1 (index MAX_NODES). */
static void report(const char *what, void *p, size_t len) {
    long page = sysconf(_SC_PAGESIZE);
    size_t n = len / (size_t)page;
    void **pages = malloc(n * sizeof *pages);
    int *status = malloc(n * sizeof *status);
    long counts[MAX_NODES + 1] = {0};
    if (!pages || !status) { perror("malloc"); exit(1); }
    for (size_t i = 0; i < n; i++) pages[i] = (char *)p + i * (size_t)page;
    if (syscall(SYS_move_pages, 0, (unsigned long)n, pages, NULL, status, 0) != 0) {
        perror("move_pages");
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        counts[status[i] >= 0 && status[i] < MAX_NODES ? status[i] : MAX_NODES]++;
    printf("%-8s %6zu MiB at %p:", what, len >> 20, p);
    for (int node = 0; node < MAX_NODES; node++)
        if (counts[node]) printf("  node %d: %ld pages", node, counts[node]);
    if (counts[MAX_NODES]) printf("  not present: %ld", counts[MAX_NODES]);
    printf("\n");

    /* What backs it: the mapping's line in /proc/self/maps. */
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[512];
    while (maps && fgets(line, sizeof line, maps)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && (unsigned long)p >= lo && (unsigned long)p < hi) {
            char *path = strchr(line, '/');
            printf("         backed by: %s", path ? path : "anonymous memory\n");
            break;
        }
    }
    if (maps) fclose(maps);
    free(pages);
    free(status);
}

int main(int argc, char **argv) {
    size_t len = (size_t)(argc > 1 ? atol(argv[1]) : 64) << 20;
    int hold = argc > 2 ? atoi(argv[2]) : 0;
    if (len == 0) { fprintf(stderr, "usage: alloc_demo [MiB] [seconds]\n"); return 2; }

    char *m = malloc(len);            /* large: glibc would mmap it; the shim redirects it */
    char *c = calloc(1, len);         /* must read as zero wherever it comes from */
    char *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (!m || !c || a == MAP_FAILED) { perror("alloc"); return 1; }
    for (size_t i = 0; i < len; i++)
        if (c[i]) { fprintf(stderr, "calloc memory is not zero at %zu\n", i); return 1; }
    memset(m, 1, len);
    memset(c, 2, len);
    memset(a, 3, len);

    printf("pid %d\n", (int)getpid());
    report("malloc", m, len);
    report("calloc", c, len);
    report("mmap", a, len);
    fflush(stdout);
    if (hold > 0) {
        sleep((unsigned)hold);
        printf("after %d s:\n", hold);
        report("malloc", m, len);
        report("mmap", a, len);
    }
    free(m);
    free(c);
    munmap(a, len);
    return 0;
}
