#!/usr/bin/env bash
# Installs everything fbmm needs to build, run and test on Debian 12, as root:
# the C libraries (libfuse3, libnuma), FUSE's tools, the real programs the
# tests run under the shim, and (unless FBMM_NO_GUEST=1) the multi-node guest.
# The Swift toolchain itself is expected on PATH (swift 6.1 or newer).
# Idempotent and quiet when everything is already there.
set -eu -o pipefail
export DEBIAN_FRONTEND=noninteractive
say() { echo "setup: $*" >&2; }
[ "$(id -u)" = 0 ] || { say "run as root (apt-get install, FUSE mounts)"; exit 1; }
command -v swift >/dev/null || { say "swift is not on PATH: install the Swift 6 toolchain first"; exit 1; }

want=(libfuse3-dev fuse3 libnuma-dev numactl pkg-config gcc make libc6-dev
      stress-ng sqlite3 python3 attr psmisc jq libjemalloc2 libmimalloc2.0 coreutils
      postgresql    # postgresql: SharedAnonTests runs a server under the shim
      libpython3.11-testsuite       # CPythonSuiteTests runs test_subprocess and test_os under the shim
      python3-prometheus-client curl    # ObservabilityTests parse `fbmm stat --prometheus` and scrape -o metrics
      librsvg2-bin python3-pil)         # BenchTests render chart.svg (rsvg-convert) and look at its pixels
missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -e /dev/fuse ] || { say "/dev/fuse is missing: FUSE is not available on this machine"; exit 1; }

if [ "${FBMM_NO_GUEST:-0}" != 1 ]; then
    bash "$(dirname "$0")/guest/setup.sh"
fi
