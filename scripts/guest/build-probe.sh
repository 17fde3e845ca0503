#!/usr/bin/env bash
# Builds the guest probes of Tests/guest into Tests/guest/build (or $1).
#   placement_probe  needs only cc and libc
#   fuse_probe       needs libfuse3-dev (pkg-config fuse3); skipped, with a
#                    note, when it is missing
set -eu
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
src=$root/Tests/guest
out=${1:-$src/build}
mkdir -p "$out"
CC=${CC:-cc}
CFLAGS=${CFLAGS:--O2 -g -Wall -Wextra}
# shellcheck disable=SC2086
$CC $CFLAGS -o "$out/placement_probe" "$src/placement_probe.c"
if pkg-config --exists fuse3 2>/dev/null; then
    # shellcheck disable=SC2086,SC2046
    $CC $CFLAGS $(pkg-config --cflags fuse3) -o "$out/fuse_probe" "$src/fuse_probe.c" $(pkg-config --libs fuse3)
else
    rm -f "$out/fuse_probe"
    echo "build-probe: libfuse3-dev missing, fuse_probe not built" >&2
fi
