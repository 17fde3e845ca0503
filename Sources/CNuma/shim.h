/* libnuma: mbind, move_pages, get_mempolicy and the MPOL_* constants. */
#include <numa.h>
#include <numaif.h>
