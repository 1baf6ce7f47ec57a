#!/usr/bin/env bash
# scripts/test.sh - THE test command: installs what is missing, builds with ASan + UBSan, and runs
# every test (unit and end-to-end) through CTest. Exits with CTest's status.
#
# Idempotent and runnable from any directory. Reuses build-sanitize/ between runs, so a second
# run only rebuilds what changed.
#
# The tests run on the Sanitize build. An optimised build (build-release/) is compiled too, for
# its warnings only; running the end-to-end tests twice does not fit CI's time budget.
#
# Environment: JOBS (build parallelism, default: number of cores), CTEST_ARGS (extra arguments,
# e.g. CTEST_ARGS='-R unit' to run the unit tests only).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

scripts/install-deps.sh

# Fuzz targets (libFuzzer needs clang): a short, fixed-seed run of each over its seeds, so a
# parser change that crashes on known inputs fails here. Run first: the closing ctest line of
# this script is the main suite's. Long campaigns: tests/fuzz/CMakeLists.txt.
cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DMG_FUZZ=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build-fuzz -j"${JOBS:-$(nproc)}" --target fuzz_host fuzz_routes fuzz_h2server fuzz_dbrow fuzz_rreply fuzz_upstream \
  fuzz_proxyproto fuzz_realip fuzz_ubj
ctest --test-dir build-fuzz --output-on-failure -R '^fuzz\.' --timeout 300

# The optimiser sees more (format truncation, maybe-uninitialized): the shipped binaries must build
# warning-free with -O2 too. Compile only; the tests run on the sanitizer build below.
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMG_WERROR=ON -DBUILD_TESTING=OFF >/dev/null
cmake --build build-release -j"${JOBS:-$(nproc)}" --target modelgate modelgate-runtime

BUILD=build-sanitize
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Sanitize -DMG_WERROR=ON
cmake --build "$BUILD" -j"${JOBS:-$(nproc)}"

# UBSan already stops at the first report (-fno-sanitize-recover); make it say where.
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

rc=0
# shellcheck disable=SC2086 # CTEST_ARGS is a list of arguments on purpose
ctest --test-dir "$BUILD" --output-on-failure -j2 --timeout 600 ${CTEST_ARGS:-} || rc=$?
exit "$rc"
