/* libfuse3's low-level API, pinned to the 3.14 ABI that Debian 12 ships. */
#define FUSE_USE_VERSION 314
#include <fuse3/fuse_lowlevel.h>
