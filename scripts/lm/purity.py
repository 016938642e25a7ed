#!/usr/bin/python3
"""Helpers of scripts/lm/result_table.sh: source texts, source purity, the result table.

Subcommands:

  texts CORPUS OUT --tokens N
      One text file per source of CORPUS/train.jsonl (documents joined by a blank line), each
      capped at about N GPT-2 tokens (whole documents in corpus order, the last one cut), so
      that a dump of the seven files is balanced across sources. Token counts come from
      CORPUS/train.tokens.npz. Prints the tokens and documents written per source.

  neurons DUMP HOOK --top-n 50 --out FILE.json
      Top-n rows of every unit of DUMP/HOOK (e.g. the MLP neurons of blocks.2.mlp.hook_post),
      computed from the dump's .npy shards, as {"features": [{"feature", "top_rows",
      "top_values"}]}, the layout of `sae eval --features`.

  purity DUMP STATS.json [STATS.json ...] --labels NAME ... --sample 200 --seed 0
      --vocab MODEL_DIR --snippets 5 --out FILE.json
      Source purity of each feature's top rows (the largest share of one source among them,
      sources from DUMP/sources.npy): mean, median and count >= 0.9 over a random sample of
      alive features (all units when --sample is 0) and over every alive feature, against the
      base rate (the largest source's share of the dump's rows). With --snippets, prints the
      most pure, most frequent sampled features of the first STATS file with their top contexts
      (tokens.npy and positions.npy of the dump, decoded with MODEL_DIR's tokenizer).

  ids FILE.npy ... --windows 24 --context 128 --out ids.npy
      The first windows * (context - 1) token ids of each file, concatenated: with BOS
      prepended, every window of `sae eval --model --tokens ids.npy` is then one source's, and
      the first batches cover every source equally.

  table RUNS_TSV --out table.md
      The markdown result table from a tab-separated file of
      name, arch label, eval.json, model-eval.json, metrics.jsonl, features.json.
"""

import argparse
import glob
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def cmd_texts(a):
    z = np.load(os.path.join(a.corpus, "train.tokens.npz"))
    names = [str(n) for n in z["names"]]
    offsets = z["offsets"]
    doc_tokens = np.diff(offsets)
    doc_sources = z["sources"]
    docs = {n: [] for n in names}
    with open(os.path.join(a.corpus, "train.jsonl"), encoding="utf-8") as f:
        for i, line in enumerate(f):
            d = json.loads(line)
            if names[doc_sources[i]] != d["source"]:
                sys.exit(f"purity.py: train.jsonl line {i + 1} is {d['source']}, "
                         f"train.tokens.npz says {names[doc_sources[i]]}")
            docs[d["source"]].append((d["text"], int(doc_tokens[i])))
    if sum(len(v) for v in docs.values()) != len(doc_tokens):
        sys.exit("purity.py: train.jsonl and train.tokens.npz disagree on the document count")
    os.makedirs(a.out, exist_ok=True)
    for name in names:
        parts, have = [], 0
        for text, n in docs[name]:
            if have >= a.tokens:
                break
            if have + n > a.tokens:  # cut the last document by its share of characters
                text = text[: max(1, int(len(text) * (a.tokens - have) / n))]
                n = a.tokens - have
            parts.append(text)
            have += n
        with open(os.path.join(a.out, name + ".txt"), "w", encoding="utf-8") as f:
            f.write("\n\n".join(parts))
        print(f"{name}\t{len(parts)} documents\t~{have} tokens")


def shards(dump, hook):
    files = sorted(glob.glob(os.path.join(dump, hook, "shard-*.npy")))
    if not files:
        sys.exit(f"purity.py: no .npy shards in {os.path.join(dump, hook)}")
    return files


def cmd_neurons(a):
    best_v = best_r = None
    base = 0
    for path in shards(a.dump, a.hook):
        x = np.load(path, mmap_mode="r").astype(np.float32)
        n = x.shape[0]
        rows = np.arange(base, base + n, dtype=np.int64)
        if best_v is None:
            v, r = x, np.broadcast_to(rows[:, None], x.shape)
        else:
            v = np.concatenate([best_v, x], axis=0)
            r = np.concatenate([best_r, np.broadcast_to(rows[:, None], x.shape)], axis=0)
        k = min(a.top_n, v.shape[0])
        idx = np.argpartition(-v, k - 1, axis=0)[:k]
        best_v = np.take_along_axis(v, idx, axis=0)
        best_r = np.take_along_axis(r, idx, axis=0)
        base += n
    order = np.argsort(-best_v, axis=0, kind="stable")
    best_v = np.take_along_axis(best_v, order, axis=0)
    best_r = np.take_along_axis(best_r, order, axis=0)
    feats = [{"feature": j, "firing_count": None,
              "top_rows": best_r[:, j].tolist(), "top_values": best_v[:, j].tolist()}
             for j in range(best_v.shape[1])]
    with open(a.out, "w") as f:
        json.dump({"summary": {"tokens": base, "d_sae": best_v.shape[1], "top_n": a.top_n,
                               "data": os.path.join(a.dump, a.hook)},
                   "features": feats}, f)
    print(f"{a.out}: top {a.top_n} rows of {best_v.shape[1]} units over {base} rows")


def purity_of(feature, sources, n_sources, top_n):
    rows = np.asarray(feature["top_rows"][:top_n], dtype=np.int64)
    if rows.size < top_n:
        return None
    counts = np.bincount(sources[rows], minlength=n_sources)
    return counts.max() / rows.size, int(counts.argmax())


def summarize(values):
    v = np.asarray(values)
    return {"n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)),
            "ge_0.9": int((v >= 0.9).sum()), "ge_0.9_share": float((v >= 0.9).mean())}


def context(tokens, positions, row, bpe, before=12, after=3):
    start = row - min(int(positions[row]), before)
    end = row + 1
    while end < len(positions) and end <= row + after and positions[end] > positions[row]:
        end += 1
    left = bpe.decode(tokens[start:row].tolist())
    mid = bpe.decode([int(tokens[row])])
    right = bpe.decode(tokens[row + 1:end].tolist())
    s = f"{left}[[{mid}]]{right}"
    return " ".join(s.split())  # newlines and runs of spaces as one space


def cmd_purity(a):
    dump = json.load(open(os.path.join(a.dump, "dump.json")))
    names = [os.path.splitext(os.path.basename(f["file"] if isinstance(f, dict) and "file" in f
                                                else f.get("path", "")))[0]
             for f in dump.get("inputs", dump.get("files", []))]
    sources = np.load(os.path.join(a.dump, "sources.npy"))
    n_sources = int(sources.max()) + 1
    if len(names) != n_sources:
        names = [str(i) for i in range(n_sources)]
    share = np.bincount(sources, minlength=n_sources) / sources.size
    rng = np.random.default_rng(a.seed)
    result = {"rows": int(sources.size), "sources": names,
              "source_share": dict(zip(names, map(float, share))),
              "base_rate": float(share.max()), "top_n": a.top_n, "sets": {}}
    labels = a.labels or [os.path.basename(p) for p in a.stats]
    first_sample = None
    for label, path in zip(labels, a.stats):
        feats = json.load(open(path))["features"]
        alive = [f for f in feats
                 if f.get("firing_count") is None or f["firing_count"] >= a.top_n]
        pur = {f["feature"]: purity_of(f, sources, n_sources, a.top_n) for f in alive}
        alive = [f for f in alive if pur[f["feature"]] is not None]
        if a.sample and len(alive) > a.sample:
            pick = sorted(rng.choice(len(alive), a.sample, replace=False).tolist())
            sample = [alive[i] for i in pick]
        else:
            sample = alive
        if first_sample is None:
            first_sample = (label, sample, pur)
        by_source = np.bincount([pur[f["feature"]][1] for f in sample
                                 if pur[f["feature"]][0] >= 0.9], minlength=n_sources)
        result["sets"][label] = {
            "features": len(feats), "alive_with_top_n": len(alive),
            "sample": summarize([pur[f["feature"]][0] for f in sample]),
            "all_alive": summarize([pur[f["feature"]][0] for f in alive]),
            "pure_by_source": dict(zip(names, map(int, by_source)))}
        s = result["sets"][label]["sample"]
        print(f"{label}: {s['n']} units, purity mean {s['mean']:.3f} median {s['median']:.3f}, "
              f">= 0.9: {s['ge_0.9']} ({100 * s['ge_0.9_share']:.0f}%)")
    print(f"base rate (largest source share of rows): {result['base_rate']:.3f}")
    if a.snippets and first_sample is not None:
        from gpt2_bpe import Gpt2Bpe
        bpe = Gpt2Bpe(a.vocab)
        tokens = np.load(os.path.join(a.dump, "tokens.npy"))
        positions = np.load(os.path.join(a.dump, "positions.npy"))
        label, sample, pur = first_sample
        pure = [f for f in sample if pur[f["feature"]][0] >= 0.98]
        # prefer features whose top rows are not all one token (more than a token detector)
        pure.sort(key=lambda f: (-len(set(tokens[f["top_rows"][:a.top_n]].tolist())),
                                 f["feature"]))
        chosen, seen_src = [], set()
        for f in pure:  # one per source first, then any
            if pur[f["feature"]][1] not in seen_src:
                chosen.append(f)
                seen_src.add(pur[f["feature"]][1])
        for f in pure:
            if f not in chosen:
                chosen.append(f)
        snippets = []
        for f in chosen[: a.snippets]:
            p, src = pur[f["feature"]]
            ctx = [context(tokens, positions, r, bpe) for r in f["top_rows"][:a.contexts]]
            snippets.append({"set": label, "feature": f["feature"], "purity": float(p),
                             "source": names[src],
                             "distinct_top_tokens": len(set(
                                 tokens[f["top_rows"][:a.top_n]].tolist())),
                             "contexts": ctx})
            print(f"\n{label} feature {f['feature']}: {100 * p:.0f}% {names[src]}")
            for c in ctx:
                print(f"    {c}")
        result["snippets"] = snippets
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1, ensure_ascii=False)


def last_tokens_per_sec(metrics):
    """The run's tokens/s: the last metrics line's (the final summary, over the whole run)."""
    rate = float("nan")
    with open(metrics) as f:
        for line in f:
            d = json.loads(line)
            if d.get("tokens_per_second"):
                rate = float(d["tokens_per_second"])
    return rate


def cmd_ids(a):
    parts = []
    for path in a.files:
        ids = np.load(path).reshape(-1)
        n = a.windows * (a.context - 1)
        if ids.size < n:
            sys.exit(f"purity.py: {path} has {ids.size} tokens, fewer than {n}")
        parts.append(ids[:n].astype(np.int32))
        print(f"{path}\t{n} of {ids.size} tokens")
    np.save(a.out, np.concatenate(parts))


def cmd_table(a):
    lines = ["| architecture | L0 | explained variance | dead fraction | ce_loss_score "
             "| kl_div_score | train tokens/s | "
             "dead (training rows) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    with open(a.runs) as f:
        for line in f:
            if not line.strip():
                continue
            name, label, ev_path, model_path, metrics, feat_path = line.rstrip("\n").split("\t")
            summ = json.load(open(feat_path))["summary"]
            dead_train = summ["dead"] / summ["d_sae"]
            ev = json.load(open(ev_path))
            md = json.load(open(model_path))

            def get(d, *keys):
                for k in keys:
                    if k in d:
                        return d[k]
                for v in d.values():
                    if isinstance(v, dict):
                        r = get(v, *keys)
                        if r is not None:
                            return r
                return None
            l0 = get(ev, "l0", "mean_l0")
            fve = get(ev, "explained_variance")
            dead = get(ev, "dead_fraction", "dead_features_fraction")
            ce = get(md, "ce_loss_score")
            kl = get(md, "kl_div_score")
            tps = last_tokens_per_sec(metrics)
            lines.append(f"| {label} | {l0:.1f} | {fve:.3f} | {dead:.3f} | {ce:.3f} | "
                         f"{kl:.3f} | {tps:,.0f} | {dead_train:.3f} |")
    text = "\n".join(lines) + "\n"
    with open(a.out, "w") as f:
        f.write(text)
    print(text, end="")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("texts")
    t.add_argument("corpus")
    t.add_argument("out")
    t.add_argument("--tokens", type=int, default=300000)
    n = sub.add_parser("neurons")
    n.add_argument("dump")
    n.add_argument("hook")
    n.add_argument("--top-n", type=int, default=50)
    n.add_argument("--out", required=True)
    u = sub.add_parser("purity")
    u.add_argument("dump")
    u.add_argument("stats", nargs="+")
    u.add_argument("--labels", nargs="*")
    u.add_argument("--top-n", type=int, default=50)
    u.add_argument("--sample", type=int, default=200)
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--vocab", default="models/ref-gpt2")
    u.add_argument("--snippets", type=int, default=5)
    u.add_argument("--contexts", type=int, default=4)
    u.add_argument("--out")
    i = sub.add_parser("ids")
    i.add_argument("files", nargs="+")
    i.add_argument("--windows", type=int, default=24)
    i.add_argument("--context", type=int, default=128)
    i.add_argument("--out", required=True)
    b = sub.add_parser("table")
    b.add_argument("runs")
    b.add_argument("--out", required=True)
    a = p.parse_args()
    {"texts": cmd_texts, "ids": cmd_ids, "neurons": cmd_neurons, "purity": cmd_purity, "table": cmd_table}[a.cmd](a)


if __name__ == "__main__":
    main()
