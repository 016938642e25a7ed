#!/usr/bin/env bash
# How long `sae dashboard` takes and how big its folder is, on two inputs:
#   reference  tests/data/lm/ref-sae (TopK, 1,024 features) over a `sae dump` of the reference
#              model's held-out text (models/ref-gpt2/heldout, 91k rows), logits included;
#   synthetic  16,384 features that all fire: a standard SAE with random unit encoder columns
#              and a threshold of 2.9 on Gaussian activations (d_in 128, 120,000 rows), so that
#              every feature fires on ~0.2% of the rows and gets its 20 top contexts and all
#              its interval samples (the dashboard's worst case for its width).
# Prints, per input: rows, features, seconds, size of the folder, of index.html and of the
# largest data file, and the peak RSS.
#
#   ./scripts/bench_dashboard.sh [--threads 2] [--rows 120000]
#
# Needs the `sae` program built in build/ (./scripts/test.sh builds it) and python3 with
# numpy for the synthetic input. Works in a temporary folder, removed at the end.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sae="${SAE_PROGRAM:-$root/build/tools/sae}"
threads=2
rows=120000
while (($# > 0)); do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --rows) rows="$2"; shift 2 ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "bench_dashboard.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
if [[ ! -x "$sae" ]]; then
  echo "bench_dashboard.sh: $sae not found: build the program first (./scripts/test.sh)" >&2
  exit 1
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# One measured run: name, then the dashboard's arguments.
run() {
  local name="$1"
  shift
  local out="$work/$name-dashboard"
  /usr/bin/time -f '%M' -o "$work/rss" "$sae" dashboard "$@" --threads "$threads" --quiet \
    --out "$out" >"$work/summary.json"
  local largest
  largest="$(find "$out/data" -name 'features-*.js' -printf '%s\n' | sort -n | tail -n 1)"
  /usr/bin/python3 - "$name" "$work/summary.json" "$(du -sb "$out" | cut -f1)" \
    "$(stat -c %s "$out/index.html")" "$largest" "$(cat "$work/rss")" <<'EOF'
import json, sys
name, summary, total, index, largest, rss = sys.argv[1:]
s = json.load(open(summary))
mb = lambda b: int(b) / 1e6
print(f"{name:10s} {s['rows']:>8d} rows  {s['features']:>6d} features  {s['seconds']:6.1f} s  "
      f"folder {mb(total):6.1f} MB  index.html {mb(index):5.2f} MB  largest data file "
      f"{mb(largest):5.2f} MB  peak RSS {int(rss) / 1024:6.0f} MiB")
EOF
}

model="$root/models/ref-gpt2"
"$sae" dump --model "$model" --hook blocks.2.hook_resid_pre --text "$model"/heldout/*.txt \
  --context 128 --quiet --out "$work/ref-dump" >/dev/null
run reference --sae "$root/tests/data/lm/ref-sae" --data "$work/ref-dump" --model "$model"

/usr/bin/python3 - "$work" "$rows" <<'EOF'
import json, os, struct, sys
import numpy as np
work, rows = sys.argv[1], int(sys.argv[2])
d_in, d_sae, window, threshold = 128, 16384, 128, 2.9
rng = np.random.default_rng(0)
dump = os.path.join(work, "syn-dump")
hook = "blocks.0.hook_resid_pre"
os.makedirs(os.path.join(dump, hook))
def npy(path, a):
    np.save(path, a)
npy(os.path.join(dump, hook, "shard-00000.npy"), rng.standard_normal((rows, d_in), dtype=np.float32))
npy(os.path.join(dump, "tokens.npy"), rng.integers(0, 50257, rows, dtype=np.int32))
npy(os.path.join(dump, "positions.npy"), (1 + np.arange(rows) % window).astype(np.int32))
npy(os.path.join(dump, "sources.npy"), (np.arange(rows) * 4 // rows).astype(np.int32))
json.dump({"format": "sae-dump", "rows": rows,
           "files": [{"path": f"part-{i}.txt"} for i in range(4)],
           "hooks": [{"name": hook, "width": d_in, "folder": hook, "shards": ["shard-00000.npy"]}]},
          open(os.path.join(dump, "dump.json"), "w"))
w = rng.standard_normal((d_in, d_sae)).astype(np.float32)
w /= np.linalg.norm(w, axis=0, keepdims=True)
tensors = {"W_enc": w, "W_dec": np.ascontiguousarray(w.T),
           "b_enc": np.full(d_sae, -threshold, np.float32), "b_dec": np.zeros(d_in, np.float32)}
sae = os.path.join(work, "syn-sae")
os.makedirs(sae)
header, blobs, at = {}, [], 0
for name, t in tensors.items():
    b = t.tobytes()
    header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [at, at + len(b)]}
    blobs.append(b)
    at += len(b)
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open(os.path.join(sae, "sae_weights.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
json.dump({"architecture": "standard", "d_in": d_in, "d_sae": d_sae, "dtype": "float32",
           "apply_b_dec_to_input": True, "normalize_activations": "none",
           "metadata": {"hook_name": hook, "sae_lens_version": "6.18.0"}},
          open(os.path.join(sae, "cfg.json"), "w"))
EOF
run synthetic --sae "$work/syn-sae" --data "$work/syn-dump" --tokenizer "$model"
