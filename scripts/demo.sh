#!/usr/bin/env bash
# Quick start: builds the toy training example (Release) and runs it.
#
#   ./scripts/demo.sh [train_toy options...]
#
# The arguments are passed on to train_toy. SAE_BUILD_DIR sets the build folder (default: build/
# in the source tree).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=deps.sh source-path=SCRIPTDIR
source "$root/scripts/deps.sh"

build_dir="${SAE_BUILD_DIR:-$root/build}"
jobs="$(nproc 2>/dev/null || echo 2)"

cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build_dir" --target train_toy -j "$jobs"
exec "$build_dir/examples/train_toy" "$@"
