// fuse_probe: checks that a FUSE filesystem can be mounted and read where it
// runs (the test guest). Mounts a one-file libfuse3 filesystem on a fresh
// directory under /tmp (or argv[1]), reads the file through the kernel,
// unmounts. Exit 0 when it works, 1 when it does not, 2 when /dev/fuse is
// missing.
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *greeting = "hello from fbmm's guest fuse probe\n";

static int p_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    (void)fi;
    memset(st, 0, sizeof *st);
    if (strcmp(path, "/") == 0) { st->st_mode = S_IFDIR | 0755; st->st_nlink = 2; return 0; }
    if (strcmp(path, "/hello") == 0) { st->st_mode = S_IFREG | 0444; st->st_nlink = 1; st->st_size = (off_t)strlen(greeting); return 0; }
    return -ENOENT;
}
static int p_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
                     struct fuse_file_info *fi, enum fuse_readdir_flags flags) {
    (void)off; (void)fi; (void)flags;
    if (strcmp(path, "/") != 0) return -ENOENT;
    fill(buf, ".", NULL, 0, 0); fill(buf, "..", NULL, 0, 0); fill(buf, "hello", NULL, 0, 0);
    return 0;
}
static int p_open(const char *path, struct fuse_file_info *fi) {
    if (strcmp(path, "/hello") != 0) return -ENOENT;
    if ((fi->flags & O_ACCMODE) != O_RDONLY) return -EACCES;
    return 0;
}
static int p_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)fi;
    if (strcmp(path, "/hello") != 0) return -ENOENT;
    size_t len = strlen(greeting);
    if ((size_t)off >= len) return 0;
    if (off + size > len) size = len - (size_t)off;
    memcpy(buf, greeting + off, size);
    return (int)size;
}
static const struct fuse_operations ops = {
    .getattr = p_getattr, .readdir = p_readdir, .open = p_open, .read = p_read,
};

int main(int argc, char **argv) {
    int fd = open("/dev/fuse", O_RDWR);
    if (fd < 0) { printf("FAIL open /dev/fuse: %s\n", strerror(errno)); return 2; }
    close(fd);
    printf("ok   /dev/fuse opens\n");

    char tmpl[] = "/tmp/fbmm-fuse-probe.XXXXXX";
    const char *mnt = argc > 1 ? argv[1] : mkdtemp(tmpl);
    if (!mnt) { perror("mkdtemp"); return 1; }
    struct stat before;
    if (stat(mnt, &before) != 0) { perror(mnt); return 1; }

    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        char *fargv[] = {argv[0], "-f", "-s", (char *)mnt, NULL};
        _exit(fuse_main(4, fargv, &ops, NULL));
    }
    // Wait for the mount: the directory's device changes.
    int mounted = 0;
    for (int i = 0; i < 200 && !mounted; i++) {
        struct stat now;
        if (stat(mnt, &now) == 0 && now.st_dev != before.st_dev) mounted = 1;
        else { struct timespec ts = {0, 50 * 1000 * 1000}; nanosleep(&ts, NULL); }
        int ws;
        if (!mounted && waitpid(pid, &ws, WNOHANG) == pid) { printf("FAIL fuse_main exited before mounting\n"); return 1; }
    }
    int failures = 0;
    printf("%s FUSE mount on %s\n", mounted ? "ok  " : "FAIL", mnt);
    failures += !mounted;
    if (mounted) {
        char path[512], buf[256] = {0};
        snprintf(path, sizeof path, "%s/hello", mnt);
        int f = open(path, O_RDONLY);
        ssize_t n = f >= 0 ? read(f, buf, sizeof buf - 1) : -1;
        if (f >= 0) close(f);
        int ok = n == (ssize_t)strlen(greeting) && strcmp(buf, greeting) == 0;
        printf("%s read %s through the kernel (%zd bytes)\n", ok ? "ok  " : "FAIL", path, n);
        failures += !ok;
        if (umount2(mnt, 0) != 0) {
            printf("FAIL umount %s: %s\n", mnt, strerror(errno));
            failures++;
            kill(pid, SIGTERM);
        }
    } else {
        kill(pid, SIGTERM);
    }
    int ws;
    waitpid(pid, &ws, 0);
    if (argc <= 1) rmdir(mnt);
    printf("fuse_probe: %s\n", failures ? "FAILED" : "all checks passed");
    return failures ? 1 : 0;
}
