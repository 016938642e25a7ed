#!/usr/bin/env bash
# The reference model's SAE result table (docs/results/ref-gpt2-table.md):
# a balanced dump of blocks.2 of models/ref-gpt2 over its training corpus, six SAEs at 16x on
# blocks.2.hook_resid_pre, their metrics on the held-out text, and the source purity of SAE
# features against the MLP neurons of blocks.2.mlp.hook_post.
#
#   scripts/lm/result_table.sh [CORPUS_DIR] [WORK_DIR]
#
# CORPUS_DIR holds train.jsonl and train.tokens.npz of scripts/lm/build_corpus.py (built into
# WORK_DIR/corpus when absent). WORK_DIR (default /work/table-work) receives the dumps, runs,
# evaluations, WORK_DIR/table.md and WORK_DIR/purity.json; steps whose output exists are skipped.
# Environment: SAE (the sae binary, default build/tools/sae), THREADS (2), PER_SOURCE (tokens
# per source, 300000), MAX_TOKENS (2100000), EVAL_WINDOWS (held-out windows per source for the
# model evaluations, 24), L1_A / L1_B (the standard SAEs' L1 coefficients, 10 and 20).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
corpus=${1:-}
work=${2:-/work/table-work}
sae=${SAE:-$repo/build/tools/sae}
threads=${THREADS:-2}
per_source=${PER_SOURCE:-300000}
max_tokens=${MAX_TOKENS:-2100000}
eval_windows=${EVAL_WINDOWS:-24}
l1_a=${L1_A:-10}
l1_b=${L1_B:-20}
py=/usr/bin/python3
helper=$repo/scripts/lm/purity.py
model=models/ref-gpt2
hook=blocks.2.hook_resid_pre
mlp=blocks.2.mlp.hook_post
sources=(man-en man-fr man-de man-es bible python c)
batch=4096

mkdir -p "$work/runs" "$work/eval" "$work/logs"
timings=$work/timings.tsv
: >"$timings"
step() {  # step NAME COMMAND...: run it, log its output, record its wall time
  local name=$1 start=$SECONDS
  shift
  echo "== $name" >&2
  "$@" >"$work/logs/$name.out" 2>"$work/logs/$name.err" ||
    { echo "failed: $name (see $work/logs/$name.err)" >&2; exit 1; }
  printf '%s\t%d\n' "$name" $((SECONDS - start)) >>"$timings"
}

# 1. Corpus and one text file per source, each capped at PER_SOURCE tokens.
if [[ -z $corpus ]]; then
  corpus=$work/corpus
  [[ -f $corpus/train.jsonl ]] || step corpus "$py" scripts/lm/build_corpus.py --out "$corpus"
fi
texts=()
for s in "${sources[@]}"; do texts+=("$work/texts/$s.txt"); done
[[ -f ${texts[-1]} ]] || step texts "$py" "$helper" texts "$corpus" "$work/texts" --tokens "$per_source"

# 2. Dumps: training text (balanced) and the held-out samples, both hooks in one pass.
[[ -f $work/dump/dump.json ]] || step dump "$sae" dump --model "$model" --hook "$hook" --hook "$mlp" \
  --text "${texts[@]}" --context 128 --max-tokens "$max_tokens" --threads "$threads" --quiet \
  --out "$work/dump"
[[ -f $work/heldout/dump.json ]] || step dump-heldout "$sae" dump --model "$model" --hook "$hook" \
  --hook "$mlp" --text "$model"/heldout/*.txt --context 128 --threads "$threads" --quiet \
  --out "$work/heldout"
"$py" - "$work/dump" <<'EOF'
import json, sys
import numpy as np
d = sys.argv[1]
s = np.bincount(np.load(d + "/sources.npy"))
files = json.load(open(d + "/dump.json"))["files"]
for f, n in zip(files, s):
    print(f"{f['path']}\t{n} rows\t{n / s.sum():.3f}")
EOF

# Held-out ids for the model evaluations: EVAL_WINDOWS windows of each source.
ids=$work/heldout-ids.npy
if [[ ! -f $ids ]]; then
  tok=()
  for s in "${sources[@]}"; do
    "$sae" tokenize --model "$model" --text "$model/heldout/$s.txt" --out "$work/heldout-$s.npy" \
      >/dev/null
    tok+=("$work/heldout-$s.npy")
  done
  "$py" "$helper" ids "${tok[@]}" --windows "$eval_windows" --context 128 --out "$ids"
fi
eval_batches=$(((${#sources[@]} * eval_windows + 7) / 8))

# 3. Training: about every training row once (1% is held out by sae train).
rows=$("$py" -c "import json,sys; print(json.load(open(sys.argv[1]))['rows'])" "$work/dump/dump.json")
steps=$((rows * 99 / 100 / batch))
runs=(topk16 topk32 topk64 "standard-l1-$l1_a" "standard-l1-$l1_b" jumprelu batchtopk32)
declare -A label flags
label[topk16]="TopK k=16";               flags[topk16]="--arch topk --k 16"
label[topk32]="TopK k=32";               flags[topk32]="--arch topk --k 32"
label[topk64]="TopK k=64";               flags[topk64]="--arch topk --k 64"
label[standard-l1-$l1_a]="standard L1 $l1_a"; flags[standard-l1-$l1_a]="--arch standard --l1 $l1_a"
label[standard-l1-$l1_b]="standard L1 $l1_b"; flags[standard-l1-$l1_b]="--arch standard --l1 $l1_b"
label[jumprelu]="JumpReLU";              flags[jumprelu]="--arch jumprelu"
label[batchtopk32]="BatchTopK k=32";     flags[batchtopk32]="--arch batchtopk --k 32"

rows_held=("$work"/heldout/"$hook"/shard-*.npy)
rows_train=("$work"/dump/"$hook"/shard-*.npy)
: >"$work/runs.tsv"
for r in "${runs[@]}"; do
  run=$work/runs/$r
  # shellcheck disable=SC2086  # flags[] holds several words
  [[ -f $run/sae_weights.safetensors ]] || step "train-$r" "$sae" train \
    --data "$work/dump/$hook" ${flags[$r]} --expansion 16 --steps "$steps" --batch "$batch" \
    --threads "$threads" --quiet --out "$run"
  # 4. Metrics on the held-out dump, CE / KL with the SAE spliced into the model, and
  #    per-feature top rows over the training dump (for purity; its "dead" is over 2.1 M rows).
  [[ -f $work/eval/$r.json ]] || step "eval-$r" "$sae" eval --sae "$run" --data "${rows_held[@]}" \
    --threads "$threads"
  [[ -f $work/eval/$r.json ]] || cp "$work/logs/eval-$r.out" "$work/eval/$r.json"
  [[ -f $work/eval/$r.model.json ]] || step "model-eval-$r" "$sae" eval --sae "$run" \
    --model "$model" --hook "$hook" --tokens "$ids" --context 128 --batches "$eval_batches" \
    --threads "$threads" --quiet
  [[ -f $work/eval/$r.model.json ]] || cp "$work/logs/model-eval-$r.out" "$work/eval/$r.model.json"
  [[ -f $work/eval/$r.features.json ]] || step "features-$r" "$sae" eval --sae "$run" \
    --data "${rows_train[@]}" --features "$work/eval/$r.features.json" --top-n 50 \
    --threads "$threads"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "${label[$r]}" "$work/eval/$r.json" \
    "$work/eval/$r.model.json" "$run/metrics.jsonl" "$work/eval/$r.features.json" >>"$work/runs.tsv"
done
"$py" "$helper" table "$work/runs.tsv" --out "$work/table.md"

# 5. Purity: 200 random alive features of each TopK SAE vs the 512 MLP neurons.
[[ -f $work/eval/neurons.json ]] || step neurons "$py" "$helper" neurons "$work/dump" "$mlp" \
  --top-n 50 --out "$work/eval/neurons.json"
"$py" "$helper" purity "$work/dump" "$work/eval/topk32.features.json" \
  "$work/eval/topk16.features.json" "$work/eval/topk64.features.json" "$work/eval/neurons.json" \
  --labels "TopK k=32" "TopK k=16" "TopK k=64" "MLP neurons" --sample 200 --seed 0 \
  --vocab "$model" --snippets 5 --out "$work/purity.json" | tee "$work/purity.txt"
cat "$timings"
