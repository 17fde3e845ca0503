// placement_app: an application whose memory placement the guest harness checks.
//
// Run under the shim (`fbmm run --strict --mount M -- placement_app`), it reads
// commands, one per line, on stdin and answers each with one JSON line on
// stdout, so a harness (Tests/guest/placement.sh, through a bash coproc) can run
// `fbmm stat --json` or `fbmm migrate` while this process holds its memory.
//
//   alloc MIB [malloc|mmap]  allocate a buffer (malloc, or an anonymous private
//                            mmap), write a pattern on every page, then report
//                            where its pages are
//   check IDX|all [OFF LEN]  where the pages of buffer IDX (or of all buffers,
//                            or of the byte range [OFF, OFF+LEN) of IDX) are,
//                            and whether the pattern is intact
//   busy IDX                 start a thread that keeps reading and writing
//                            every page of IDX (to migrate under load)
//   stop                     stop it; it reports its passes and errors
//   info                     pid and the files of the mount this process has open
//   free IDX                 free buffer IDX
//   quit                     exit 0
//
// Page nodes come from move_pages(pid 0, nodes=NULL): the kernel's view from
// inside this process. A reply looks like
//   {"op":"alloc","buf":0,"bytes":67108864,"pages":16384,"nodes":{"1":16384},
//    "absent":0,"intact":true,"bad_pages":0,"file_offset":0,
//    "mapped":"/memfd:placement_app.123.0 (deleted)"}
// `mapped` is the file /proc/self/maps shows for the buffer (empty for plain
// anonymous memory: then the shim did not redirect it); `file_offset` is the
// buffer's offset in that file, for `fbmm migrate --offset`.
//
// Options: --max-nodes N (default 64). Exit status 0 after `quit` or EOF,
// 2 on a bad command line; a failed command answers {"op":...,"error":"..."}.
//
// Plain C11 + libc + raw syscalls (no libnuma), so it builds anywhere.
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <dirent.h>
#include "../shim/rawfd.h"

#define MAX_BUFFERS 64
#define MAX_NODES 64
#define LINE 64            // pattern words: the first word of every 64-byte line
#define COUNTER_OFFSET 4088 // the busy thread's counter: the last word of a page

struct buffer {
    unsigned char *base;
    size_t bytes;
    int is_mmap;
    int live;
};

static struct buffer buffers[MAX_BUFFERS];
static int nbuffers;
static long page_size;

static uint64_t pattern(int buf, size_t page, size_t line) {
    uint64_t x = ((uint64_t)(buf + 1) << 56) ^ ((uint64_t)page * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)line << 40);
    return x | 1; // never zero: a page that came back zeroed is caught
}

static void write_pattern(int idx) {
    struct buffer *b = &buffers[idx];
    size_t pages = b->bytes / (size_t)page_size;
    for (size_t p = 0; p < pages; p++) {
        unsigned char *page = b->base + p * (size_t)page_size;
        for (size_t l = 0; l < (size_t)page_size / LINE; l++) ((volatile uint64_t *)(page + l * LINE))[0] = pattern(idx, p, l);
        *(volatile uint64_t *)(page + COUNTER_OFFSET) = 0;
    }
}

// Pages of buffer idx whose pattern (or busy counter, when expect_counter >= 0) is wrong.
static size_t verify_pattern(int idx, size_t first, size_t count, int64_t expect_counter) {
    struct buffer *b = &buffers[idx];
    size_t bad = 0;
    for (size_t p = first; p < first + count; p++) {
        const unsigned char *page = b->base + p * (size_t)page_size;
        int ok = 1;
        for (size_t l = 0; l < (size_t)page_size / LINE; l++)
            if (((const volatile uint64_t *)(page + l * LINE))[0] != pattern(idx, p, l)) { ok = 0; break; }
        if (expect_counter >= 0 && *(const volatile uint64_t *)(page + COUNTER_OFFSET) != (uint64_t)expect_counter) ok = 0;
        bad += !ok;
    }
    return bad;
}

static int max_nodes = MAX_NODES;

// Counts pages of [addr, addr + pages*page) per node with move_pages(nodes=NULL).
static int count_nodes(unsigned char *addr, size_t pages, size_t *per_node, size_t *absent) {
    enum { BATCH = 4096 };
    void *ptrs[BATCH];
    int status[BATCH];
    for (size_t done = 0; done < pages;) {
        size_t n = pages - done < BATCH ? pages - done : BATCH;
        for (size_t i = 0; i < n; i++) ptrs[i] = addr + (done + i) * (size_t)page_size;
        long rc = syscall(SYS_move_pages, 0, (unsigned long)n, ptrs, NULL, status, 0);
        if (rc < 0) return -errno;
        for (size_t i = 0; i < n; i++) {
            if (status[i] >= 0 && status[i] < max_nodes) per_node[status[i]]++;
            else (*absent)++;
        }
        done += n;
    }
    return 0;
}

// The file /proc/self/maps shows for addr, and addr's offset in it.
static void mapping_of(const void *addr, char *path, size_t pathlen, unsigned long long *offset) {
    path[0] = 0;
    *offset = 0;
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f) return;
    char line[4096 + 256];
    while (fgets(line, sizeof line, f)) {
        unsigned long long start, end, off;
        int n = 0;
        if (sscanf(line, "%llx-%llx %*s %llx %*s %*s%n", &start, &end, &off, &n) < 3) continue;
        if ((uintptr_t)addr < start || (uintptr_t)addr >= end) continue;
        const char *p = line + n;
        while (*p == ' ' || *p == '\t') p++;
        snprintf(path, pathlen, "%s", p);
        path[strcspn(path, "\n")] = 0;
        *offset = off + ((uintptr_t)addr - start);
        break;
    }
    fclose(f);
}

static void json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

static void print_nodes(const size_t *per_node) {
    printf("\"nodes\":{");
    int first = 1;
    for (int n = 0; n < max_nodes; n++) {
        if (!per_node[n]) continue;
        printf("%s\"%d\":%zu", first ? "" : ",", n, per_node[n]);
        first = 0;
    }
    printf("}");
}

static void reply_error(const char *op, const char *fmt, const char *detail) {
    printf("{\"op\":");
    json_string(op);
    printf(",\"error\":");
    char text[512];
    snprintf(text, sizeof text, fmt, detail);
    json_string(text);
    printf("}\n");
    fflush(stdout);
}

// One report over buffer idx's pages [first, first+count), or all live buffers (idx < 0).
static void report(const char *op, int idx, size_t first, size_t count, int64_t expect_counter) {
    size_t per_node[MAX_NODES] = {0}, absent = 0, pages = 0, bad = 0;
    size_t bytes = 0;
    int lo = idx < 0 ? 0 : idx, hi = idx < 0 ? nbuffers : idx + 1;
    char err[128] = "";
    for (int i = lo; i < hi; i++) {
        struct buffer *b = &buffers[i];
        if (!b->live) continue;
        size_t f = idx < 0 ? 0 : first;
        size_t c = idx < 0 ? b->bytes / (size_t)page_size : count;
        int rc = count_nodes(b->base + f * (size_t)page_size, c, per_node, &absent);
        if (rc < 0) snprintf(err, sizeof err, "move_pages: %s", strerror(-rc));
        bad += verify_pattern(i, f, c, idx < 0 ? -1 : expect_counter);
        pages += c;
        bytes += c * (size_t)page_size;
    }
    if (err[0]) { reply_error(op, "%s", err); return; }
    printf("{\"op\":");
    json_string(op);
    printf(",\"buf\":%d,\"bytes\":%zu,\"pages\":%zu,", idx, bytes, pages);
    print_nodes(per_node);
    printf(",\"absent\":%zu,\"intact\":%s,\"bad_pages\":%zu", absent, bad ? "false" : "true", bad);
    if (idx >= 0) {
        char path[4096];
        unsigned long long offset;
        mapping_of(buffers[idx].base + first * (size_t)page_size, path, sizeof path, &offset);
        printf(",\"file_offset\":%llu,\"mapped\":", offset);
        json_string(path);
    }
    printf("}\n");
    fflush(stdout);
}

// ---- the busy thread --------------------------------------------------------
static pthread_t busy_thread;
static atomic_int busy_stop;
static int busy_running = 0, busy_idx = -1;
static uint64_t busy_passes, busy_errors;

static void *busy_main(void *arg) {
    (void)arg;
    struct buffer *b = &buffers[busy_idx];
    size_t pages = b->bytes / (size_t)page_size;
    uint64_t pass = *(volatile uint64_t *)(b->base + COUNTER_OFFSET); // passes of an earlier busy run
    do { // at least one whole pass, however soon `stop` comes
        for (size_t p = 0; p < pages; p++) {
            unsigned char *page = b->base + p * (size_t)page_size;
            volatile uint64_t *counter = (volatile uint64_t *)(page + COUNTER_OFFSET);
            if (*counter != pass) busy_errors++;
            if (((volatile uint64_t *)page)[0] != pattern(busy_idx, p, 0)) busy_errors++;
            *counter = pass + 1;
        }
        pass++;
    } while (!atomic_load(&busy_stop));
    busy_passes = pass;
    return NULL;
}

// ---- commands ---------------------------------------------------------------
static int parse_index(const char *s, int allow_all) {
    if (allow_all && s && strcmp(s, "all") == 0) return -1;
    if (!s) return -2;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < 0 || v >= nbuffers || !buffers[v].live) return -2;
    return (int)v;
}

static int command(char *line) {
    char *save = NULL;
    char *op = strtok_r(line, " \t\r\n", &save);
    if (!op) return 0;
    char *a1 = strtok_r(NULL, " \t\r\n", &save);
    char *a2 = strtok_r(NULL, " \t\r\n", &save);
    char *a3 = strtok_r(NULL, " \t\r\n", &save);

    if (strcmp(op, "quit") == 0) {
        printf("{\"op\":\"quit\"}\n");
        fflush(stdout);
        return 1;
    }
    if (strcmp(op, "info") == 0) {
        const char *mount = getenv("FBMM_MOUNT");
        printf("{\"op\":\"info\",\"pid\":%d,\"mount\":", (int)getpid());
        json_string(mount ? mount : "");
        printf(",\"files\":[");
        int first = 1;
        /* The shim's arena descriptor: libc's readdir does not list it
         * (the shim hides its descriptors), the bare system call does. */
        int fds[4096], nfd = raw_self_fds(fds, 4096);
        size_t mlen = mount ? strlen(mount) : 0;
        for (int i = 0; mlen && i < nfd; i++) {
            char link[300], target[PATH_MAX];
            snprintf(link, sizeof link, "/proc/self/fd/%d", fds[i]);
            ssize_t n = readlink(link, target, sizeof target - 1);
            if (n <= 0) continue;
            target[n] = 0;
            if (strncmp(target, mount, mlen) != 0 || target[mlen] != '/') continue;
            if (!first) putchar(',');
            json_string(target);
            first = 0;
        }
        printf("]}\n");
        fflush(stdout);
        return 0;
    }
    if (strcmp(op, "alloc") == 0) {
        char *end = NULL;
        double mib = a1 ? strtod(a1, &end) : 0;
        if (!a1 || *end || mib <= 0) { reply_error(op, "alloc wants a size in MiB, not '%s'", a1 ? a1 : ""); return 0; }
        if (nbuffers >= MAX_BUFFERS) { reply_error(op, "%s", "too many buffers"); return 0; }
        size_t bytes = ((size_t)(mib * 1048576.0) + (size_t)page_size - 1) / (size_t)page_size * (size_t)page_size;
        int use_mmap = a2 && strcmp(a2, "mmap") == 0;
        if (a2 && !use_mmap && strcmp(a2, "malloc") != 0) { reply_error(op, "alloc: unknown kind '%s'", a2); return 0; }
        void *p;
        if (use_mmap) {
            p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) p = NULL;
        } else {
            // Page-aligned, so every page of the buffer is the buffer's alone.
            if (posix_memalign(&p, (size_t)page_size, bytes) != 0) p = NULL;
        }
        if (!p) { reply_error(op, "allocation failed: %s", strerror(errno)); return 0; }
        int idx = nbuffers++;
        buffers[idx] = (struct buffer){ .base = p, .bytes = bytes, .is_mmap = use_mmap, .live = 1 };
        write_pattern(idx);
        report(op, idx, 0, bytes / (size_t)page_size, 0);
        return 0;
    }
    if (strcmp(op, "check") == 0) {
        int idx = parse_index(a1, 1);
        if (idx == -2) { reply_error(op, "check: no buffer '%s'", a1 ? a1 : ""); return 0; }
        if (idx < 0) { report(op, -1, 0, 0, -1); return 0; }
        size_t pages = buffers[idx].bytes / (size_t)page_size, first = 0, count = pages;
        if (a2) {
            unsigned long long off = strtoull(a2, NULL, 0), len = a3 ? strtoull(a3, NULL, 0) : buffers[idx].bytes - off;
            if (off % (size_t)page_size || len % (size_t)page_size || off + len > buffers[idx].bytes || len == 0) {
                reply_error(op, "check: range %s is not page-aligned inside the buffer", a2);
                return 0;
            }
            first = off / (size_t)page_size;
            count = len / (size_t)page_size;
        }
        int64_t counter = (busy_idx == idx && !busy_running) ? (int64_t)busy_passes : (busy_idx == idx ? -1 : 0);
        report(op, idx, first, count, counter);
        return 0;
    }
    if (strcmp(op, "busy") == 0) {
        int idx = parse_index(a1, 0);
        if (idx < 0) { reply_error(op, "busy: no buffer '%s'", a1 ? a1 : ""); return 0; }
        if (busy_running) { reply_error(op, "%s", "busy: already running"); return 0; }
        busy_idx = idx;
        busy_passes = busy_errors = 0;
        atomic_store(&busy_stop, 0);
        int rc = pthread_create(&busy_thread, NULL, busy_main, NULL);
        if (rc) { reply_error(op, "pthread_create: %s", strerror(rc)); return 0; }
        busy_running = 1;
        printf("{\"op\":\"busy\",\"buf\":%d}\n", idx);
        fflush(stdout);
        return 0;
    }
    if (strcmp(op, "stop") == 0) {
        if (!busy_running) { reply_error(op, "%s", "stop: no busy thread"); return 0; }
        atomic_store(&busy_stop, 1);
        pthread_join(busy_thread, NULL);
        busy_running = 0;
        printf("{\"op\":\"stop\",\"buf\":%d,\"passes\":%" PRIu64 ",\"errors\":%" PRIu64 "}\n", busy_idx, busy_passes, busy_errors);
        fflush(stdout);
        return 0;
    }
    if (strcmp(op, "free") == 0) {
        int idx = parse_index(a1, 0);
        if (idx < 0 || (busy_running && idx == busy_idx)) { reply_error(op, "free: no (idle) buffer '%s'", a1 ? a1 : ""); return 0; }
        if (buffers[idx].is_mmap) munmap(buffers[idx].base, buffers[idx].bytes);
        else free(buffers[idx].base);
        buffers[idx].live = 0;
        printf("{\"op\":\"free\",\"buf\":%d}\n", idx);
        fflush(stdout);
        return 0;
    }
    reply_error(op, "unknown command '%s'", op);
    return 0;
}

int main(int argc, char **argv) {
    page_size = sysconf(_SC_PAGESIZE);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--max-nodes") == 0 && i + 1 < argc) {
            max_nodes = atoi(argv[++i]);
            if (max_nodes < 1 || max_nodes > MAX_NODES) max_nodes = MAX_NODES;
        } else {
            fprintf(stderr, "usage: %s [--max-nodes N]  (commands on stdin: alloc, check, busy, stop, info, free, quit)\n", argv[0]);
            return 2;
        }
    }
    char line[1024];
    while (fgets(line, sizeof line, stdin)) {
        if (command(line)) break;
    }
    if (busy_running) {
        atomic_store(&busy_stop, 1);
        pthread_join(busy_thread, NULL);
    }
    return 0;
}
