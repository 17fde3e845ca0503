/*
 * fork(): the child must get a private copy of our MAP_SHARED memory that
 * stands for private anonymous memory, and keep sharing what stands for
 * shared anonymous memory (P_SHARED pieces).
 *
 * Shared pieces: the kernel already gave the child a MAP_SHARED mapping of
 * the parent's file at the same addresses, which is exactly the sharing of
 * MAP_SHARED|MAP_ANONYMOUS memory. The child leaves them mapped, flags them
 * P_FOREIGN (not its file: never punched, its offsets never reused, never
 * extended in place) and the parent flags its own P_KEEP: natively shared
 * anonymous memory lives until its last mapping goes, and the shim cannot
 * know when that is, so once a process forked with a shared piece nobody
 * punches its range again; its memory stays allocated until the arena file
 * itself goes away (the last mapping of the memfd, in whichever process).
 * MADV_REMOVE (the kernel's, on the mapping) still frees it for all.
 *
 * Done with pthread_atfork handlers rather than a fork() wrapper, so that
 * every fork that runs them (fork(), daemon(), libc-internal forks) is
 * covered; posix_spawn and vfork run none of them and cost nothing extra.
 *
 *  prepare (parent): take the lock, so that the region table is consistent
 *      in the child and no thread of the parent can punch or remap our
 *      memory until the child has its copy; open a pipe.
 *  child: open the child's own arena file (new broker request), size it like
 *      the parent's, copy the data ranges of every piece (SEEK_DATA/HOLE, in
 *      the kernel with copy_file_range) and map the new backing MAP_FIXED
 *      over the same addresses with the same protections. If that fails,
 *      copy into MAP_FIXED private anonymous memory instead: never share.
 *      When the parent's backing cannot be read through its descriptor (the
 *      program closed it behind libc's back: fds.c keeps every other way
 *      out), each piece is copied from the live mapping, which the child
 *      inherited at the same addresses, into a scratch mapping moved into
 *      place. Then tell the parent through the pipe.
 *  parent: wait for the child's byte (or EOF if it died), release the lock.
 *      So fork() returns only once the child's copy is complete, and no later
 *      write by the forking thread can be seen by the child.
 *
 * Our prepare handler must run after those of an allocator preloaded after
 * us (jemalloc takes its locks there and calls our mmap with them held).
 * Prepare handlers run in reverse order of registration, and we register at
 * our first entry point, which comes before jemalloc's pthread_atfork call
 * (its init maps memory first).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shim.h"
#include "sys.h"

static int fork_locked;
static int fork_cow;
static int fork_pipe[2] = { -1, -1 };

/* Copies the data ranges of [off, off+len) of `from` into the file `to` at
 * the same offsets, or, if to < 0, into memory at `mem` (mapped writable). */
static int copy_data(int from, int to, char *mem, uint64_t off, uint64_t len)
{
    uint64_t pos = off, end = off + len;
    while (pos < end) {
        off_t d = lseek(from, (off_t)pos, SEEK_DATA);
        if (d < 0) return errno == ENXIO ? 0 : -1;  /* ENXIO: only holes left */
        if ((uint64_t)d >= end) break;
        off_t h = lseek(from, d, SEEK_HOLE);
        if (h < 0) return -1;
        uint64_t stop = (uint64_t)h < end ? (uint64_t)h : end;
        while ((uint64_t)d < stop) {
            ssize_t n;
            if (to >= 0) {
                loff_t in = d, out = d;
                n = copy_file_range(from, &in, to, &out, (size_t)(stop - (uint64_t)d), 0);
            } else {
                n = pread(from, mem + ((uint64_t)d - off), (size_t)(stop - (uint64_t)d), d);
            }
            if (n <= 0) {
                if (n < 0 && errno == EINTR) continue;
                return -1;
            }
            d += n;
        }
        pos = stop;
    }
    return 0;
}

/* Copies piece p from its live mapping (the parent's file, still mapped in
 * the child at the same addresses) into dst: for when the child cannot read
 * the parent's backing through a descriptor. */
static int copy_live(const struct fbmm_piece *p, char *dst)
{
    if (!(p->prot & PROT_READ) && sys_mprotect((void *)p->addr, p->len, PROT_READ) < 0) return -1;
    fbmm_copy_sparse((const char *)p->addr, dst, p->len);
    return 0;
}

/* Fills the scratch mapping m (zero) with the data of piece p: from the
 * parent's backing `from` if readable, else from the live mapping. */
static int fill(const struct fbmm_piece *p, int from, char *m)
{
    if (from >= 0 && copy_data(from, -1, m, p->off, p->len) == 0) return 0;
    return copy_live(p, m);
}

/* Moves the filled scratch mapping m over piece p (replacing the parent's
 * mapping there in one step) with p's protection. */
static int place(void *m, const struct fbmm_piece *p)
{
    if (sys_mremap(m, p->len, p->len, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)p->addr) == MAP_FAILED)
        return -1;
    if (p->prot != (PROT_READ | PROT_WRITE)) sys_mprotect((void *)p->addr, p->len, (int)p->prot);
    return 0;
}

/* Replaces piece p with a private anonymous copy. `from`: the parent's
 * backing, or -1 when it cannot be read (copy from the live mapping). */
static int copy_to_anon(const struct fbmm_piece *p, int from)
{
    if (p->flags & P_WIPEFORK)
        return sys_mmap((void *)p->addr, p->len, (int)p->prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                        -1, 0) == MAP_FAILED ? -1 : 0;
    void *m = sys_mmap(NULL, p->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return -1;
    if (fill(p, from, m) < 0 || place(m, p) < 0) {
        sys_munmap(m, p->len);
        return -1;
    }
    return 0;
}

/* Replaces piece p with a mapping of the new arena `to` holding a copy (at
 * the same file offsets). */
static int copy_to_file(const struct fbmm_piece *p, int from, int to)
{
    /* Wipe-on-fork: the new file's range is a hole, so it reads zero. In
     * the kernel (copy_file_range, data ranges only) when we can. */
    if ((p->flags & P_WIPEFORK) || (from >= 0 && copy_data(from, to, NULL, p->off, p->len) == 0))
        return sys_mmap((void *)p->addr, p->len, (int)p->prot, MAP_SHARED | MAP_FIXED, to,
                        (off_t)p->off) == MAP_FAILED ? -1 : 0;
    /* copy_file_range refused (older kernel, other file systems), or the
     * parent's backing is unreadable: copy through a scratch mapping of the
     * new file, then move it into place. */
    void *m = sys_mmap(NULL, p->len, PROT_READ | PROT_WRITE, MAP_SHARED, to, (off_t)p->off);
    if (m == MAP_FAILED) return -1;
    if (fill(p, from, m) < 0 || place(m, p) < 0) {
        sys_munmap(m, p->len);
        return -1;
    }
    return 0;
}

static void child_fixup(void)
{
    /* Before anything else opens a descriptor: are ours still ours? (A raw
     * close by the program, which no interposer sees, may have handed the
     * numbers to its own files; those are forgotten here.) */
    int from = -1;
    if (fbmm_arena.state == ARENA_READY) {
        fbmm_arena_name_ok();
        if (fbmm_arena_fd_ok() && !fbmm_cow_linked()) from = fbmm_arena.mem_fd;
    }
    struct fbmm_arena old = fbmm_arena;
    int any = 0;
    fbmm_pool_child(0);       /* the parent's pool is not ours to touch */
    fbmm_cache_drop_child(0);  /* freed blocks: not worth a copy */
    /* Shared anonymous memory stays the parent's file, shared: leave it
     * mapped (the kernel copied the mapping), never punch or reuse it. */
    for (size_t i = 0; i < fbmm_rt_n;) {
        struct fbmm_piece *p = fbmm_rt_at(i);
        if (!(p->flags & P_SHARED)) { i++; continue; }
        if (p->flags & P_DONTFORK) {  /* the kernel did not copy it */
            fbmm_rt_remove(i, 1);
            continue;
        }
        p->flags = (p->flags | P_KEEP | P_FOREIGN) & ~P_WIPEFORK;
        i++;
    }
    for (size_t i = 0; i < fbmm_rt_n; i++) any |= !(fbmm_rt_at(i)->flags & (P_ANON | P_SHARED));
    if (old.state != ARENA_READY || !any) {
        /* Nothing of the parent's file is mapped here: start afresh. */
        if (old.state == ARENA_READY) fbmm_arena_close(&old);
        memset(&fbmm_arena, 0, sizeof fbmm_arena);
        fbmm_off_reset();
        fbmm_pool_child(1);
        return;
    }
    if (from < 0 && !fbmm_cow_linked()) {
        static int once;
        fbmm_say_once(&once, "fork child: the parent's arena descriptor is gone; ",
                      "copying from the live mappings", NULL);
    }

    struct fbmm_arena neu;
    int ok = fbmm_arena_open(&neu) == 0;
    if (ok && neu.size < old.size) {
        struct stat st;
        ok = ftruncate(neu.name_fd, (off_t)old.size) == 0 &&
             sys_fstat(neu.mem_fd, &st) == 0 && (uint64_t)st.st_size >= old.size;
        if (ok) neu.size = old.size;
        else fbmm_arena_close(&neu);
    }
    if (!ok) fbmm_note_fallback("fork child: ", neu.reason[0] ? neu.reason : "cannot size its arena");

    for (size_t i = 0; i < fbmm_rt_n;) {
        struct fbmm_piece *p = fbmm_rt_at(i);
        if (p->flags & (P_ANON | P_SHARED)) { i++; continue; }
        if (p->flags & P_DONTFORK) {
            /* The kernel did not copy this mapping into the child. */
            if (p->flags & P_HEAD) fbmm_heads_del(p->addr);
            if (ok) fbmm_off_free(p->off, p->len);  /* a hole in the new file */
            fbmm_rt_remove(i, 1);
            continue;
        }
        if (ok && copy_to_file(p, from, neu.mem_fd) == 0) { i++; continue; }
        if (copy_to_anon(p, from) < 0) {
            /* Leave no mapping that could share memory with the parent. */
            sys_mmap((void *)p->addr, p->len, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
            fbmm_say("fork child: could not copy a region; it is now inaccessible", NULL, NULL);
        }
        /* A failed copy_to_file may have left data in the new file: the
         * offsets go back only as holes, so that reuse reads zero. */
        if (ok && fallocate(neu.mem_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)p->off,
                            (off_t)p->len) == 0)
            fbmm_off_free(p->off, p->len);
        if (p->flags & P_HEAD) {
            p->flags = P_HEAD | P_ANON;  /* free() must still recognise it */
            i++;
        } else {
            fbmm_rt_remove(i, 1);       /* plain anonymous memory now */
        }
    }
    fbmm_arena_close(&old);
    if (ok) {
        fbmm_arena = neu;
    } else {
        memset(&fbmm_arena, 0, sizeof fbmm_arena);
        fbmm_arena.state = ARENA_FAILED;
        fbmm_arena.name_fd = fbmm_arena.mem_fd = -1;
        fbmm_off_reset();
        fbmm_pool_child(1);
    }
}

static void prepare(void)
{
    if (!fbmm_cfg.active || fbmm_depth) return;
    int saved = errno;
    fbmm_lock();
    fbmm_mag_flush_all();  /* parent and child go on with empty magazines */
    fork_locked = 1;
    fork_pipe[0] = fork_pipe[1] = -1;
    /* Copy-on-write: nothing to wait for; the child fills lazily. */
    fork_cow = fbmm_rt_n && fbmm_cow_prepare();
    if (!fork_cow && fbmm_rt_n && fbmm_arena.state == ARENA_READY && pipe2(fork_pipe, O_CLOEXEC) < 0)
        fork_pipe[0] = fork_pipe[1] = -1;
    errno = saved;
}

static void parent(void)
{
    if (!fork_locked) return;
    int saved = errno;
    /* A child may map our shared pieces now: never punch them again. */
    for (size_t i = 0; i < fbmm_rt_n; i++)
        if (fbmm_rt_at(i)->flags & P_SHARED) fbmm_rt_at(i)->flags |= P_KEEP;
    if (fork_cow) fbmm_cow_parent();
    if (fork_pipe[1] >= 0) {
        char c;
        sys_close(fork_pipe[1]);
        while (read(fork_pipe[0], &c, 1) < 0 && errno == EINTR) {}
        sys_close(fork_pipe[0]);
    }
    fork_locked = 0;
    fbmm_unlock();
    errno = saved;
}

static void child(void)
{
    if (!fork_locked) return;
    int saved = errno;
    if (fork_pipe[0] >= 0) sys_close(fork_pipe[0]);
    fbmm_mag_child();
    if (!fork_cow || !fbmm_cow_child()) child_fixup();
    if (fork_pipe[1] >= 0) {
        ssize_t r = write(fork_pipe[1], "", 1);
        (void)r;
        sys_close(fork_pipe[1]);
    }
    fork_locked = 0;
    fbmm_lock_reset_child();
    errno = saved;
}

void fbmm_fork_register(void)
{
    pthread_atfork(prepare, parent, child);
}
