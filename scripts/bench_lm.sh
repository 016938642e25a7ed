#!/usr/bin/env bash
# GPT-2 engine speed beside PyTorch: builds bench_gpt2_forward (Release), then runs it and the
# PyTorch peer (benchmarks/peer/torch_gpt2_forward.py, with /usr/bin/python3) one after the
# other on the same folders: a random model of the reference model's shape (small), a random
# GPT-2-small-shaped model (124M), and models/ref-gpt2 when it exists. Prints one table with
# the ratios ours / PyTorch (fp32 against fp32, bf16 against amp-bf16).
#
#   ./scripts/bench_lm.sh [--threads 2] [--batch 8] [--big-batch 4] [--context 128] [--iters 3]
#                         [--quick]
#
# --batch is for the small models, --big-batch for GPT-2 small (which also generates 16 tokens
# instead of 32). Generation: prompt 16, greedy, one timed run after a warm-up one.
# About 5-10 minutes on a 2-core machine. Builds in build-bench/ (or $SAE_BUILD_DIR) with -j1
# (or $SAE_BUILD_JOBS). The random folders go to a temporary directory, removed at the end;
# the JSON of every run is kept in $SAE_BENCH_OUT (default: that directory, so removed too).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${SAE_BUILD_DIR:-$root/build-bench}"
jobs="${SAE_BUILD_JOBS:-1}"
python="/usr/bin/python3"
threads=2
batch=8
context=128
iters=3
generate=32
big_batch=4
big_generate=16
shapes=(small gpt2-small)

while (($# > 0)); do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --big-batch) big_batch="$2"; shift 2 ;;
    --context) context="$2"; shift 2 ;;
    --iters) iters="$2"; shift 2 ;;
    --quick) iters=1; generate=8; shapes=(small); shift ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "bench_lm.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done

if ! "$python" -c "import torch" 2>/dev/null; then
  echo "bench_lm.sh: $python has no torch (apt-get install python3-torch)" >&2
  exit 1
fi

{
  cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DSAE_WARNINGS_AS_ERRORS=ON \
    -DSAE_SANITIZE= -DSAE_BUILD_BENCHMARKS=ON -DSAE_BUILD_TESTS=OFF -DSAE_BUILD_EXAMPLES=OFF \
    -DSAE_BUILD_TOOLS=OFF
  cmake --build "$build_dir" --target bench_gpt2_forward -j "$jobs"
} >&2
bench="$build_dir/benchmarks/bench_gpt2_forward"
peer="$root/benchmarks/peer/torch_gpt2_forward.py"

work="$(mktemp -d "${TMPDIR:-/tmp}/sae_bench_lm.XXXXXX")"
trap 'rm -rf "$work"' EXIT
out="${SAE_BENCH_OUT:-$work}"
mkdir -p "$out"

echo "machine: $(nproc) cores; $(uptime)" >&2
top -bn1 | head -12 >&2

run_pair() { # name folder batch generate
  local name="$1" dir="$2" p
  local common=(--batch "$3" --context "$context" --iters "$iters" --warmup 1
    --threads "$threads" --generate "$4")
  for p in fp32 bf16; do
    echo "== $name: ours $p" >&2
    "$bench" --model "$dir" --precision "$p" "${common[@]}" --json "$out/$name.ours.$p.json" >&2
    local tp=fp32
    [[ "$p" == bf16 ]] && tp=amp-bf16
    echo "== $name: torch $tp" >&2
    "$python" "$peer" --model "$dir" --dtype "$tp" "${common[@]}" \
      --json "$out/$name.torch.$p.json" >/dev/null
  done
}

names=()
for shape in "${shapes[@]}"; do
  "$bench" --random "$shape" --random-dir "$work/random-$shape" --iters 0 --warmup 0 \
    --generate 0 >&2
  # GPT-2 small: half the batch and generation, to keep the whole run near 10 minutes.
  if [[ "$shape" == gpt2-small ]]; then
    run_pair "random-$shape" "$work/random-$shape" "$big_batch" "$big_generate"
  else
    run_pair "random-$shape" "$work/random-$shape" "$batch" "$generate"
  fi
  names+=("random-$shape")
done
if [[ -f "$root/models/ref-gpt2/config.json" ]]; then
  run_pair ref-gpt2 "$root/models/ref-gpt2" "$batch" "$generate"
  names+=(ref-gpt2)
fi

echo "load after the runs: $(uptime)" >&2
"$python" - "$out" "${names[@]}" <<'EOF'
import json, sys
out, names = sys.argv[1], sys.argv[2:]
rows = [("forward+logits tok/s", "full_tokens_per_s", True),
        ("to mid resid_pre tok/s", "stop_tokens_per_s", True),
        ("gen KV cache ms/tok", ("generate", "cached_ms_per_token"), False),
        ("gen recompute ms/tok", ("generate", "recompute_ms_per_token"), False)]
def get(j, key):
    if isinstance(key, tuple):
        return j.get(key[0], {}).get(key[1])
    return j.get(key)
print(f"{'model':<18} {'prec':<5} {'measure':<24} {'ours':>10} {'torch':>10} {'ratio':>7}")
for name in names:
    for p in ("fp32", "bf16"):
        ours = json.load(open(f"{out}/{name}.ours.{p}.json"))
        peer = json.load(open(f"{out}/{name}.torch.{p}.json"))
        for label, key, higher in rows:
            a, b = get(ours, key), get(peer, key)
            if a is None or b is None:
                continue
            ratio = a / b if higher else b / a
            print(f"{name:<18} {p:<5} {label:<24} {a:>10.1f} {b:>10.1f} {ratio:>6.2f}x")
print("ratio: how many times faster ours is (tokens/s ours / torch; ms torch / ours);"
      " bf16 rows: ours setBf16(true) against torch amp-bf16 (autocast)")
EOF
