/* gups: GUPS-style random updates with a hot set, reporting where the hot set is.
 *
 *   gups SIZE_MIB HOT_MIB HOT_OFFSET_MIB SECONDS FAST_NODE [MOVE_AT_S MOVE_OFFSET_MIB [read]]
 *
 * Allocates a SIZE_MIB table with malloc (under `fbmm run` the shim puts it in
 * the mount), writes it once, then does random 8-byte read-modify-write
 * updates: 90% inside the hot set [HOT_OFFSET, HOT_OFFSET+HOT) of the table,
 * 10% anywhere; with `read`, random 8-byte reads instead (a read-only hot
 * set, which a tracker that sees writes only never finds). At MOVE_AT_S seconds the hot set moves to MOVE_OFFSET_MIB.
 * Every second it prints one line:
 *   t=SECONDS phase=P hot_fast=PCT table_fast=PCT mups=M
 * where hot_fast is the share of the current hot set's pages on FAST_NODE
 * (move_pages with nodes=NULL: the app asks the kernel itself) and mups the
 * million updates per second of that second. Ends with "done".
 */
#define _GNU_SOURCE
#include <numaif.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Share (percent) of the pages of [p, p+len) on node `fast`. */
static double on_node(char *p, size_t len, int fast) {
    long page = sysconf(_SC_PAGESIZE);
    size_t n = len / page;
    void **pages = malloc(n * sizeof *pages);
    int *status = malloc(n * sizeof *status);
    for (size_t i = 0; i < n; i++) pages[i] = p + i * page;
    size_t count = 0;
    if (syscall(SYS_move_pages, 0, n, pages, NULL, status, 0) == 0)
        for (size_t i = 0; i < n; i++) count += status[i] == fast;
    free(pages);
    free(status);
    return n ? 100.0 * count / n : 0;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: gups SIZE_MIB HOT_MIB HOT_OFFSET_MIB SECONDS FAST_NODE [MOVE_AT_S MOVE_OFFSET_MIB [read]]\n");
        return 2;
    }
    size_t size = (size_t)atol(argv[1]) << 20, hot = (size_t)atol(argv[2]) << 20;
    size_t hot_off = (size_t)atol(argv[3]) << 20;
    double seconds = atof(argv[4]);
    int fast = atoi(argv[5]);
    double move_at = argc > 7 ? atof(argv[6]) : -1;
    size_t move_off = argc > 7 ? (size_t)atol(argv[7]) << 20 : 0;
    int reads = argc > 8 && !strcmp(argv[8], "read");
    volatile uint64_t sink = 0;
    if (hot_off + hot > size || move_off + hot > size) { fprintf(stderr, "hot set outside the table\n"); return 2; }
    uint64_t *table = malloc(size);
    if (!table) { perror("malloc"); return 1; }
    size_t words = size / 8, hot_words = hot / 8;
    for (size_t i = 0; i < words; i++) table[i] = i;
    uint64_t x = 88172645463325252ull, updates = 0;
    const uint64_t threshold = (uint64_t)(0.9 * (double)UINT64_MAX);
    int phase = 1;
    double start = now(), next = start + 1, last = start;
    uint64_t last_updates = 0;
    for (;;) {
        size_t hot_first = hot_off / 8;
        for (int k = 0; k < 8192; k++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            uint64_t r = x * 0x2545F4914F6CDD1Dull;
            size_t index = (x < threshold) ? hot_first + (size_t)(r % hot_words) : (size_t)(r % words);
            if (reads) sink += table[index];
            else table[index] ^= r;
        }
        updates += 8192;
        double t = now();
        if (t >= next) {
            printf("t=%.1f phase=%d hot_fast=%.1f table_fast=%.1f mups=%.2f\n", t - start, phase,
                   on_node((char *)table + hot_off, hot, fast), on_node((char *)table, size, fast),
                   (updates - last_updates) / (t - last) / 1e6);
            fflush(stdout);
            last = t; last_updates = updates;
            next += 1;
            if (move_at >= 0 && phase == 1 && t - start >= move_at) { hot_off = move_off; phase = 2; }
            if (t - start >= seconds) break;
        }
    }
    printf("done\n");
    return 0;
}
