#!/usr/bin/env bash
# Benchmark suite: builds bench_suite (Release) and prints one table of training-step and
# encode throughput for every architecture, with the PyTorch peer side by side.
#
#   ./scripts/bench.sh [bench_suite options...]
#
#   ./scripts/bench.sh --quick               # smoke run, 1-2 minutes
#   ./scripts/bench.sh                       # full run, 10-15 minutes on an idle 2-core machine
#   ./scripts/bench.sh --configs big --archs topk --threads 2 --json bench.json
#
# Builds in build/ (or $SAE_BUILD_DIR). The peer is benchmarks/peer/torch_sae_step.py in this
# checkout (--peer-script PATH), run with /usr/bin/python3 when python3-torch is installed
# (--no-peer skips it). `./scripts/bench.sh --help` lists every option of bench_suite.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=deps.sh source-path=SCRIPTDIR
source "$root/scripts/deps.sh"

build_dir="${SAE_BUILD_DIR:-$root/build}"
jobs="$(nproc 2>/dev/null || echo 2)"

# Build output goes to stderr, so that stdout carries only the table.
{
  cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DSAE_WARNINGS_AS_ERRORS=ON \
    -DSAE_SANITIZE= -DSAE_BUILD_BENCHMARKS=ON
  cmake --build "$build_dir" --target bench_suite -j "$jobs"
} >&2

exec "$build_dir/benchmarks/bench_suite" "$@"
