/* hotset: a known hot set in a memfd mapping, for measuring access trackers.
 *
 *   hotset SIZE_MIB HOT_MIB HOT_OFFSET_MIB SECONDS MODE [HOT_SHARE]
 *
 * Maps a memfd ("hotset") of SIZE_MIB shared, writes every page once, prints
 * one line "pid=P pages=N hot=FIRST-LAST" (file page indices, LAST exclusive)
 * and then, for SECONDS, does GUPS-style random 8-byte updates: HOT_SHARE
 * (default 0.9) of them inside the hot set, the rest anywhere. MODE is
 * "write" (read-modify-write, what GUPS does) or "read" (loads only: what
 * soft-dirty cannot see). Ends with "updates_per_second=X".
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: hotset SIZE_MIB HOT_MIB HOT_OFFSET_MIB SECONDS write|read [HOT_SHARE]\n");
        return 2;
    }
    size_t size = (size_t)atol(argv[1]) << 20, hot = (size_t)atol(argv[2]) << 20, hot_off = (size_t)atol(argv[3]) << 20;
    double seconds = atof(argv[4]);
    int reads = strcmp(argv[5], "read") == 0;
    double share = argc > 6 ? atof(argv[6]) : 0.9;
    if (hot_off + hot > size) { fprintf(stderr, "hot set outside the table\n"); return 2; }
    int fd = memfd_create("hotset", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)size) != 0) { perror("memfd"); return 1; }
    uint64_t *table = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (table == MAP_FAILED) { perror("mmap"); return 1; }
    size_t words = size / 8, hot_words = hot / 8, hot_first = hot_off / 8;
    for (size_t i = 0; i < words; i += 512) table[i] = i;
    long page = sysconf(_SC_PAGESIZE);
    printf("pid=%d pages=%zu hot=%zu-%zu\n", getpid(), size / page, hot_off / page, (hot_off + hot) / page);
    fflush(stdout);
    uint64_t x = 88172645463325252ull, sum = 0, updates = 0;
    uint64_t threshold = (uint64_t)(share * (double)UINT64_MAX);
    double start = now(), end = start + seconds;
    while (now() < end) {
        for (int k = 0; k < 4096; k++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            uint64_t r = x * 0x2545F4914F6CDD1Dull;
            size_t index = (x < threshold) ? hot_first + (size_t)(r % hot_words) : (size_t)(r % words);
            if (reads) sum += table[index]; else table[index] ^= r;
        }
        updates += 4096;
    }
    printf("updates_per_second=%.0f checksum=%llu\n", updates / (now() - start), (unsigned long long)(sum & 1));
    return 0;
}
