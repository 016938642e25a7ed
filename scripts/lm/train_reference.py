#!/usr/bin/python3
"""Trains the reference GPT-2 on the corpus of build_corpus.py and writes a Hugging Face folder.

The model is scripts/lm/gpt2_torch.py's GPT2 (GPT-2's architecture, full vocabulary). Training
windows are BOS followed by 127 tokens of one document (a document's tokens cut into chunks of
128: the window's inputs are BOS + the first 127, its targets all 128), shuffled with a fixed
seed; AdamW with linear warm-up and cosine decay, weight decay on matrices only; one torch
thread. A checkpoint goes to --checkpoint every --checkpoint-minutes, and --resume continues
from it.

At the end, OUT gets config.json, model.safetensors (F16), vocab.json + merges.txt, and
training.json with the held-out loss per source computed from the F16 weights upcast to F32.

    /usr/bin/python3 scripts/lm/train_reference.py --corpus /work/corpus --steps 3000
"""

import argparse
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import gpt2_torch  # noqa: E402

CTX = 128
# Set before the process starts: one OpenBLAS thread, and glibc keeping freed memory instead of
# returning each step's large logits buffers to the kernel (3x faster here, measured).
ENVIRONMENT = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MALLOC_MMAP_THRESHOLD_": str(1 << 32),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 36),
}
IGNORE = -100  # target of padding positions (short last chunks)


def load_windows(path):
    """(inputs [N, CTX] int64, targets [N, CTX] int64, source index [N], source names)."""
    if not os.path.isfile(path):
        sys.exit(f"train_reference.py: {path} not found; run scripts/lm/build_corpus.py first")
    data = np.load(path)
    ids, offsets, doc_sources = data["ids"], data["offsets"], data["sources"]
    inputs, targets, sources = [], [], []
    for doc in range(len(offsets) - 1):
        tokens = ids[offsets[doc] : offsets[doc + 1]]
        for start in range(0, len(tokens), CTX):
            chunk = tokens[start : start + CTX]
            target = np.full(CTX, IGNORE, dtype=np.int64)
            target[: len(chunk)] = chunk
            inp = np.full(CTX, gpt2_torch.BOS, dtype=np.int64)
            inp[1 : len(chunk)] = chunk[: len(chunk) - 1]
            inputs.append(inp)
            targets.append(target)
            sources.append(doc_sources[doc])
    names = [str(n) for n in data["names"]]
    return (
        torch.from_numpy(np.stack(inputs)),
        torch.from_numpy(np.stack(targets)),
        np.array(sources),
        names,
    )


def write_heldout_samples(corpus, out, size):
    """OUT/heldout/SOURCE.txt: whole held-out documents of each source, then the beginning of
    the next one, up to `size` characters; and OUT/heldout/README.md naming them."""
    folder = os.path.join(out, "heldout")
    os.makedirs(folder, exist_ok=True)
    samples = {}
    with open(os.path.join(corpus, "heldout.jsonl"), encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            texts, paths = samples.setdefault(doc["source"], ([], []))
            room = size - sum(len(t) + 1 for t in texts)
            if room > 200:
                texts.append(doc["text"][:room])
                paths.append(doc["path"] + ("" if len(doc["text"]) <= room else " (beginning)"))
    lines = [
        "# Held-out samples of the reference GPT-2's corpus",
        "",
        "Each file holds held-out documents of one source of `scripts/lm/build_corpus.py`",
        "(never seen in training), separated by a blank line, in the corpus's order; the last",
        "one may be cut. Their origins, as built on this machine:",
        "",
    ]
    for source in sorted(samples):
        texts, paths = samples[source]
        with open(os.path.join(folder, f"{source}.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(texts))
        lines.append(f"* `{source}.txt`: " + ", ".join(f"`{p}`" for p in paths))
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def learning_rate(step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    floor = args.lr * args.min_lr_ratio
    return floor + 0.5 * (args.lr - floor) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def loss_of(model, inputs, targets):
    logits = model(inputs)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE
    )


def heldout_losses(model, inputs, targets, sources, names, batch):
    """Mean next-token cross-entropy per source over the held-out windows, and its token count."""
    total = {n: [0.0, 0] for n in names}
    with torch.no_grad():
        for begin in range(0, len(inputs), batch):
            x, y = inputs[begin : begin + batch], targets[begin : begin + batch]
            logits = model(x)
            ce = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                y.reshape(-1),
                ignore_index=IGNORE,
                reduction="none",
            ).reshape(y.shape)
            valid = y != IGNORE
            for row in range(len(x)):
                entry = total[names[sources[begin + row]]]
                entry[0] += float(ce[row][valid[row]].sum())
                entry[1] += int(valid[row].sum())
    return {n: {"loss": s / c, "tokens": c} for n, (s, c) in total.items() if c}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="/work/corpus", help="build_corpus.py's output")
    parser.add_argument("--out", default=os.path.join(REPO, "models", "ref-gpt2"))
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps")
    parser.add_argument("--batch", type=int, default=16, help="windows per step")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr / peak lr")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--checkpoint", default="/work/ckpt/ref-gpt2.pt")
    parser.add_argument("--checkpoint-minutes", type=float, default=4.0)
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument(
        "--stop-after-minutes",
        type=float,
        default=0.0,
        help="safety: end training early after this wall time (0: never); recorded if used",
    )
    parser.add_argument(
        "--eval-windows", type=int, default=64, help="held-out windows per source to evaluate"
    )
    parser.add_argument("--sample-chars", type=int, default=30000, help="per held-out sample")
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    inputs, targets, _, _ = load_windows(os.path.join(args.corpus, "train.tokens.npz"))
    h_inputs, h_targets, h_sources, names = load_windows(
        os.path.join(args.corpus, "heldout.tokens.npz")
    )
    # The first --eval-windows held-out windows of each source (the held-out documents are in
    # random order already).
    keep = np.concatenate(
        [np.flatnonzero(h_sources == i)[: args.eval_windows] for i in range(len(names))]
    )
    h_inputs, h_targets, h_sources = h_inputs[keep], h_targets[keep], h_sources[keep]
    print(f"{len(inputs)} train windows, {len(h_inputs)} held-out windows", flush=True)
    write_heldout_samples(args.corpus, args.out, args.sample_chars)

    cfg = {
        "n_embd": args.n_embd,
        "n_layer": args.n_layer,
        "n_head": args.n_head,
        "n_positions": CTX,
        "vocab_size": 50257,
        "layer_norm_epsilon": 1e-5,
    }
    model = gpt2_torch.GPT2(cfg)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(inputs), generator=generator)
    step, cursor, epoch, elapsed, last_loss = 0, 0, 0, 0.0, float("nan")
    if args.resume:
        state = torch.load(args.checkpoint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        order, step, cursor, epoch, elapsed = (
            state["order"],
            state["step"],
            state["cursor"],
            state["epoch"],
            state["elapsed"],
        )
        print(f"resumed at step {step}", flush=True)

    def save_checkpoint():
        os.makedirs(os.path.dirname(args.checkpoint), exist_ok=True)
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "order": order,
            "step": step,
            "cursor": cursor,
            "epoch": epoch,
            "elapsed": elapsed,
            "args": vars(args),
        }
        torch.save(state, args.checkpoint + ".tmp")
        os.replace(args.checkpoint + ".tmp", args.checkpoint)

    model.train()
    start = time.time() - elapsed
    last_save = time.time()
    window_time, window_tokens = time.time(), 0
    recent = []
    stopped_early = False
    while step < args.steps:
        if args.stop_after_minutes and time.time() - start > args.stop_after_minutes * 60:
            stopped_early = True
            print(f"stopping early at step {step} (--stop-after-minutes)", flush=True)
            break
        if cursor + args.batch > len(order):
            order = torch.randperm(len(inputs), generator=generator)
            cursor, epoch = 0, epoch + 1
        index = order[cursor : cursor + args.batch]
        cursor += args.batch
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        loss = loss_of(model, inputs[index], targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        recent.append(float(loss))
        window_tokens += args.batch * CTX
        if step % args.log_every == 0 or step == args.steps:
            now = time.time()
            rate = window_tokens / (now - window_time)
            per_step = (now - start) / step
            last_loss = sum(recent) / len(recent)
            print(
                f"step {step}/{args.steps} loss {last_loss:.4f}"
                f" lr {learning_rate(step - 1, args):.2e} {rate:.0f} tok/s epoch {epoch}"
                f" ETA {(args.steps - step) * per_step / 60:.1f} min",
                flush=True,
            )
            window_time, window_tokens, recent = now, 0, []
        if time.time() - last_save > args.checkpoint_minutes * 60:
            elapsed = time.time() - start
            save_checkpoint()
            last_save = time.time()
    elapsed = time.time() - start
    save_checkpoint()

    # The Hugging Face folder: F16 weights, the tokenizer files.
    gpt2_torch.save_hf_folder(model, args.out, dtype=torch.float16)
    tokenizer = os.path.join(REPO, "tests", "data", "lm", "gpt2-tokenizer")
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(os.path.join(tokenizer, name), os.path.join(args.out, name))

    # Held-out loss of what was written: F16 weights read back, upcast to F32.
    written = gpt2_torch.load_hf_folder(args.out, dtype=torch.float32).eval()
    losses = heldout_losses(written, h_inputs, h_targets, h_sources, names, 32)
    table_path = os.path.join(args.corpus, "table.json")
    with open(table_path) as f:
        corpus_table = json.load(f)
    report = {
        "corpus": corpus_table,
        "config": gpt2_torch.hf_config(cfg),
        "parameters": sum(p.numel() for p in model.parameters()),
        "hyper_parameters": {
            k: getattr(args, k)
            for k in (
                "steps",
                "batch",
                "lr",
                "min_lr_ratio",
                "warmup",
                "weight_decay",
                "seed",
                "eval_windows",
            )
        }
        | {"context": CTX, "optimizer": "AdamW betas (0.9, 0.95), grad clip 1.0", "threads": 1},
        "steps_done": step,
        "stopped_early": stopped_early,
        "tokens_seen": step * args.batch * CTX,
        "epochs": round(step * args.batch / len(inputs), 3),
        "wall_time_seconds": round(elapsed, 1),
        "final_train_loss": round(last_loss, 4),
        "final_train_loss_note": f"mean over the last {args.log_every} steps",
        "heldout_loss": {n: round(v["loss"], 4) for n, v in losses.items()},
        "heldout_tokens": {n: v["tokens"] for n, v in losses.items()},
        "heldout_note": "mean next-token cross-entropy (nats) over the held-out windows "
        "(BOS + 127 tokens; the first eval_windows windows of each source), F16 weights "
        "upcast to F32",
    }
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(json.dumps(report["heldout_loss"], indent=2))
    print(f"wall time {elapsed / 60:.1f} min, final train loss {last_loss:.4f}")


if __name__ == "__main__":
    if any(os.environ.get(k) != v for k, v in ENVIRONMENT.items()):
        os.execve(sys.executable, [sys.executable] + sys.argv, os.environ | ENVIRONMENT)
    main()
