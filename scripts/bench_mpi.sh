#!/usr/bin/env bash
# Data-parallel `sae train` over MPI on this machine (loopback, shared memory): throughput of
#   1 rank  x 1 thread    (the baseline)
#   2 ranks x 1 thread    (mpirun -np 2; target >= 1.8x the baseline)
#   1 rank  x 2 threads   (the same two cores used by OpenMP instead)
# on the issue's configuration, TopK d_in 768, d_sae 24576, global batch 8192, k 32, trained
# from a .npy file of Gaussian rows (steps x batch of them, written first with numpy), each rank
# streaming its own half; and for the 2-rank run what rank 0 sent per step and the time it
# spent in the sums (waiting for the other rank included). --synthetic trains on the built-in
# synthetic data instead, which every rank makes whole (0.13 s a step at this width) before
# taking its half. Prints the load average first: compare runs made on a quiet machine.
#
#   ./scripts/bench_mpi.sh [--steps 8] [--d-sae 24576] [--batch 8192] [--synthetic]
#
# Needs the `sae` program built with MPI in build/ (./scripts/test.sh builds it; CMake says
# "data-parallel training over MPI: ON"), mpirun (openmpi-bin) and python3 with numpy. Works
# in a temporary folder.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sae="${SAE_PROGRAM:-$root/build/tools/sae}"
steps=8
d_sae=24576
batch=8192
synthetic=0
while (($# > 0)); do
  case "$1" in
    --steps) steps="$2"; shift 2 ;;
    --d-sae) d_sae="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --synthetic) synthetic=1; shift ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "bench_mpi.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
if [[ ! -x "$sae" ]]; then
  echo "bench_mpi.sh: $sae not found: build the program first (./scripts/test.sh)" >&2
  exit 1
fi
if ! command -v mpirun >/dev/null 2>&1; then
  echo "bench_mpi.sh: mpirun not found: apt-get install openmpi-bin libopenmpi-dev" >&2
  exit 1
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

flags=(--d-sae "$d_sae" --batch "$batch" --k 32 --steps "$steps" --log-every "$steps" --quiet)
if ((synthetic)); then
  flags+=(--synthetic-d-in 768)
  data="built-in synthetic data"
else
  /usr/bin/python3 - "$work/acts.npy" "$((steps * batch))" <<'EOF'
import sys
import numpy as np
rows = np.random.default_rng(0).standard_normal((int(sys.argv[2]), 768), dtype=np.float32)
np.save(sys.argv[1], rows)
EOF
  flags+=(--data "$work/acts.npy")
  data="$((steps * batch)) Gaussian rows from a .npy"
fi
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
echo "TopK d_in 768, d_sae $d_sae, global batch $batch, k 32, $steps steps, $data"

# One run: its name, the launcher's words (may be empty), the threads; prints tokens/s.
run() {
  local name="$1" launcher="$2" threads="$3"
  # shellcheck disable=SC2086  # the launcher is words on purpose
  $launcher "$sae" train "${flags[@]}" --threads "$threads" --out "$work/$name" >"$work/$name.json"
  /usr/bin/python3 - "$work/$name.json" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
s = next(l for l in lines if "tokens_per_second" in l)
extra = ""
if "ranks" in s:
    extra = (f"  sums: {s['sum_megabytes_per_step']:.1f} MB sent, "
             f"{s['sum_seconds_per_step']:.3f} s per step")
print(f"{s['tokens_per_second']:.1f}{extra}")
EOF
}

one="$(run one "" 1)"
two="$(run two "mpirun -np 2 --oversubscribe" 1)"
threads="$(run threads "" 2)"
/usr/bin/python3 - "$one" "$two" "$threads" <<'EOF'
import sys
one, two, threads = (a.split()[0] for a in sys.argv[1:4])
rest = sys.argv[2].split(None, 1)[1] if len(sys.argv[2].split(None, 1)) > 1 else ""
one, two, threads = float(one), float(two), float(threads)
print(f"1 rank  x 1 thread   {one:9.1f} tok/s")
print(f"2 ranks x 1 thread   {two:9.1f} tok/s   {two / one:.2f}x the baseline "
      f"(target 1.8x), {two / threads:.2f}x 1 rank x 2 threads  {rest}")
print(f"1 rank  x 2 threads  {threads:9.1f} tok/s   {threads / one:.2f}x the baseline")
EOF
