/*
 * A private tmpfs instance for the daemon's file memory, and a guard that
 * turns a SIGBUS in the daemon's lasting mappings of programs' files into
 * a flag instead of a crash.
 *
 * Why a tmpfs instance rather than memfds: a tmpfs mount honours its own
 * huge= option whatever /sys/kernel/mm/transparent_hugepage/shmem_enabled
 * says (that knob governs the kernel's internal shm mount, where memfds
 * live), and its size= is enforced by the kernel whoever allocates, even a
 * program writing through a descriptor it was handed. The new mount API
 * (fsopen/fsconfig/fsmount, 5.2) makes one with no mount point anywhere: it
 * lives as long as the daemon holds the mount fd (and files opened on it).
 *
 * Why the guard: files on a tmpfs mount cannot be sealed (only memfds made
 * with MFD_ALLOW_SEALING can), so a program holding its arena's descriptor
 * can shrink it under the daemon's pre-zeroed pool mappings. The daemon's
 * touch of such a page raises SIGBUS; the guard maps a scratch page there,
 * marks the region hit, and the pool retires that arena.
 */
#ifndef FBMM_TMPFS_H
#define FBMM_TMPFS_H

#include <stddef.h>
#include <stdint.h>

/* A detached tmpfs with `options` ("size=1G,huge=advise", comma-separated
 * KEY=VALUE, each given to fsconfig). Returns the mount fd, or -1 with errno
 * (ENOSYS: no new mount API; EPERM: not root); *bad names the option the
 * kernel refused (or NULL). */
int fbmm_tmpfs_mount(const char *options, const char **bad);
/* A new file on the instance that keeps its name (written to name[64]), so
 * the daemon can close its descriptor while the file is idle and open it
 * again by name (the instance is mounted nowhere and its root is 0700, so
 * only the daemon reaches the name); unlinkat(mount_fd, name) frees it.
 * Returns the fd or -1 with errno. */
int fbmm_tmpfs_named_file(int mount_fd, char name[64]);

/* Installs the SIGBUS guard (once). */
int fbmm_guard_install(void);
/* Guards [start, start+len): returns a slot (>= 0) or -1 when all are used. */
int fbmm_guard_add(void *start, size_t len);
void fbmm_guard_remove(int slot);
/* Whether a SIGBUS hit the slot's region since it was added. */
int fbmm_guard_hit(int slot);

#endif
