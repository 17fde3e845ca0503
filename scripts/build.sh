#!/usr/bin/env bash
# Builds fbmm and its LD_PRELOAD shim, and puts the shim next to the fbmm
# executable (where `fbmm run` looks first). Usage: scripts/build.sh [debug|release]
set -eu -o pipefail
cd "$(dirname "$0")/.."
config=${1:-debug}
swift build -c "$config" 2>&1 | grep -vE '^\[[0-9]+/[0-9]+\]|^Building|^Compiling|^Write|^Emitting|^Linking|^Fetching|^Cloning|^Computing|^Working copy|^Creating' || true
swift build -c "$config" >/dev/null   # fail loudly if the build failed
make -s -C shim all test-programs   # test-programs: the semantics and probe programs the integration tests run
bin=$(swift build -c "$config" --show-bin-path)
cp shim/build/libfbmm-shim.so "$bin/libfbmm-shim.so"
make -s -C Benchmarks/workloads && cp Benchmarks/workloads/.build/fbmm-workload "$bin/fbmm-workload"   # for `fbmm bench`
echo "$bin/fbmm"
