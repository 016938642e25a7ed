#!/usr/bin/env bash
# Quick start: builds the library's programs and tests (not the benchmarks) and runs the suite.
#
#   ./scripts/test.sh [--sanitize] [ctest options...]
#
# Default: Release build with warnings as errors in build/ (or $SAE_BUILD_DIR), all tests.
# --sanitize: RelWithDebInfo build with AddressSanitizer + UndefinedBehaviorSanitizer in
#   build-asan/ (or $SAE_ASAN_BUILD_DIR), the test files as one unity unit; all tests except
#   the packaging ones (label `cmake`), which build their own uninstrumented consumer projects.
# Further options go to ctest, e.g. `./scripts/test.sh -R core`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=deps.sh source-path=SCRIPTDIR
source "$root/scripts/deps.sh"

sanitize=0
ctest_args=()
for arg in "$@"; do
  case "$arg" in
    --sanitize) sanitize=1 ;;
    -h | --help)
      sed -n '2,12s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    *) ctest_args+=("$arg") ;;
  esac
done

jobs="$(nproc 2>/dev/null || echo 2)"
if ((sanitize)); then
  build_dir="${SAE_ASAN_BUILD_DIR:-$root/build-asan}"
  # -Og -g1 (line tables for the stack traces, no full debug info): the build dominates CI, and
  # with the sanitizers GCC 12 compiles -Og in about half the time of -O1 (test_trainer.cpp:
  # 73 s vs 138 s) for tests that run about 20% longer (7.1 s vs 6.0 s).
  configure=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-Og -g1 -DNDEBUG"
    "-DSAE_SANITIZE=address,undefined" -DSAE_WARNINGS_AS_ERRORS=OFF -DSAE_BUILD_BENCHMARKS=OFF
    -DSAE_UNITY_ONE_BATCH=ON)
  ctest_args=(-LE '^cmake$' "${ctest_args[@]}")
  # Stop at the first report, with a stack trace; options already set by the caller win.
  export ASAN_OPTIONS="halt_on_error=1:print_stacktrace=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
else
  build_dir="${SAE_BUILD_DIR:-$root/build}"
  configure=(-DCMAKE_BUILD_TYPE=Release -DSAE_WARNINGS_AS_ERRORS=ON -DSAE_SANITIZE=)
fi

cmake -S "$root" -B "$build_dir" "${configure[@]}"
cmake --build "$build_dir" -j "$jobs"
cd "$build_dir"
ctest --output-on-failure --no-tests=error -j "$jobs" "${ctest_args[@]}"
