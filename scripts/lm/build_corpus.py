#!/usr/bin/python3
"""Builds the reference GPT-2's training corpus from installed Debian packages.

Sources, one label each: English, French, German and Spanish man pages rendered to plain text
(man-en, man-fr, man-de, man-es), the King James Bible one document per chapter (bible), the
Python standard library (python) and C headers (c). File lists are sorted and sampled with a
fixed seed, so a run on the same packages gives the same corpus. Each source is capped at
--chars characters; documents are split into train and held-out (--heldout, at least
--min-heldout documents per source).

Writes OUT/train.jsonl and OUT/heldout.jsonl ({"source", "path", "text"} per line) and
OUT/train.tokens.npz / OUT/heldout.tokens.npz (GPT-2 token ids of the documents, concatenated:
`ids` int32, `offsets` int64 [n_docs + 1], `sources` int32 index into `names`), then prints the
per-source table and writes it to OUT/table.json.

    /usr/bin/python3 scripts/lm/build_corpus.py --out /work/corpus
"""

import argparse
import glob
import gzip
import json
import os
import random
import re
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt2_bpe import Gpt2Bpe  # noqa: E402

SOURCES = ("man-en", "man-fr", "man-de", "man-es", "bible", "python", "c")
# Debian package that provides each source (for the error when it is missing).
PACKAGES = {
    "man-en": "manpages",
    "man-fr": "manpages-fr",
    "man-de": "manpages-de",
    "man-es": "manpages-es",
    "bible": "bible-kjv-text",
    "python": "libpython3.11-stdlib",
    "c": "libc6-dev",
}
MIN_CHARS = 400  # documents shorter than this (".so" stubs, empty pages) are dropped
MAX_DOC_CHARS = 60000  # longer documents keep their beginning, so one file cannot fill a source
ENV = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")


def need(condition, source, what):
    if not condition:
        sys.exit(f"build_corpus.py: {what} not found for source {source}: "
                 f"apt-get install {PACKAGES[source]}")


def unique_files(paths):
    """Sorted regular files, each real file once (man sections hold many symlinks)."""
    seen = set()
    out = []
    for path in sorted(paths):
        real = os.path.realpath(path)
        if os.path.isfile(real) and real not in seen:
            seen.add(real)
            out.append(path)
    return out


# ------------------------------------------------------------------ man pages


def man_files(source):
    if source == "man-en":
        pattern = "/usr/share/man/man[1-8]/*"
    else:
        pattern = f"/usr/share/man/{source[4:]}/man[1-8]/*"
    files = unique_files(glob.glob(pattern))
    need(files, source, f"man pages ({pattern})")
    need(subprocess.run(["which", "man"], capture_output=True).returncode == 0, source, "man")
    return files


def is_so_stub(path):
    """True for pages that only include another page (".so man1/foo.1")."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(200)
    except OSError:
        return True
    return head.lstrip().startswith(b".so ")


def render_man(path):
    """The page as plain UTF-8 text without the header and footer lines, or None."""
    try:
        rendered = subprocess.run(
            ["man", "-l", "-Tutf8", path],
            capture_output=True,
            env=ENV,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return None
    if rendered.returncode != 0 or not rendered.stdout:
        return None
    plain = subprocess.run(["col", "-bx"], input=rendered.stdout, capture_output=True, env=ENV)
    if plain.returncode != 0:
        return None
    lines = plain.stdout.decode("utf-8", errors="replace").split("\n")
    # Drop the header (first non-blank line) and the footer (last non-blank line).
    body = [i for i, line in enumerate(lines) if line.strip()]
    if len(body) < 3:
        return None
    text = "\n".join(line.rstrip() for line in lines[body[0] + 1 : body[-1]])
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"
    return text


def man_documents(source, files):
    for path in files:
        if is_so_stub(path):
            continue
        text = render_man(path)
        if text is not None:
            yield path, text


# ------------------------------------------------------------------ the Bible


def bible_documents(source, chapters):
    for name, text in chapters:
        yield f"bible-kjv-text:{name}", text


def bible_chapters():
    """[(\"Genesis 1\", text), ...]: the KJV from the `bible` program, one entry per chapter."""
    need(subprocess.run(["which", "bible"], capture_output=True).returncode == 0, "bible", "bible")
    out = subprocess.run(
        ["bible", "-l80", "Genesis1:1-Revelation22:21"], capture_output=True, env=ENV
    )
    need(out.returncode == 0 and out.stdout, "bible", "the KJV text (bible program)")
    text = out.stdout.decode("utf-8", errors="replace")
    header = re.compile(r"^((?:[1-3] )?[A-Z][A-Za-z ]*? \d+)$", re.M)
    parts = header.split(text)
    # parts: [prefix, title, body, title, body, ...]
    chapters = []
    for title, body in zip(parts[1::2], parts[2::2]):
        chapters.append((title, f"{title}\n\n{body.strip(chr(10))}\n"))
    need(len(chapters) == 1189, "bible", f"1189 chapters (found {len(chapters)})")
    return chapters


# ------------------------------------------------------------------ source code


def python_files(source):
    root = "/usr/lib/python3.11"
    files = []
    for path in glob.glob(f"{root}/**/*.py", recursive=True):
        rel = os.path.relpath(path, root).split(os.sep)
        if any(p in ("site-packages", "dist-packages") for p in rel):
            continue
        if any(p in ("test", "tests", "idle_test") or p.startswith("test_") for p in rel):
            continue
        files.append(path)
    files = unique_files(files)
    need(files, source, f"Python sources ({root})")
    return files


def c_files(source):
    files = unique_files(glob.glob("/usr/include/**/*.h", recursive=True))
    need(files, source, "C headers (/usr/include)")
    return files


def file_documents(source, files):
    for path in files:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
        yield path, text


# ------------------------------------------------------------------ assembly


def collect(source, rng, cap):
    """Documents of one source, in sampled order, until `cap` characters."""
    if source == "bible":
        items = bible_chapters()
        make = bible_documents
    elif source.startswith("man-"):
        items = man_files(source)
        make = man_documents
    elif source == "python":
        items = python_files(source)
        make = file_documents
    else:
        items = c_files(source)
        make = file_documents
    rng.shuffle(items)
    docs = []
    total = 0
    for path, text in make(source, items):
        text = text.replace("\r\n", "\n").replace("\x00", "")
        if len(text.strip()) < MIN_CHARS:
            continue
        text = text[:MAX_DOC_CHARS]
        docs.append({"source": source, "path": path, "text": text})
        total += len(text)
        if total >= cap:
            break
    return docs


def write_split(out_dir, split, docs, bpe):
    """Writes SPLIT.jsonl and SPLIT.tokens.npz; returns per-source (docs, chars, tokens)."""
    stats = {s: [0, 0, 0] for s in SOURCES}
    ids = []
    offsets = [0]
    sources = []
    with open(os.path.join(out_dir, f"{split}.jsonl"), "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
            tokens = bpe.encode(doc["text"])
            ids.extend(tokens)
            offsets.append(len(ids))
            sources.append(SOURCES.index(doc["source"]))
            entry = stats[doc["source"]]
            entry[0] += 1
            entry[1] += len(doc["text"])
            entry[2] += len(tokens)
    np.savez(
        os.path.join(out_dir, f"{split}.tokens.npz"),
        ids=np.array(ids, dtype=np.int32),
        offsets=np.array(offsets, dtype=np.int64),
        sources=np.array(sources, dtype=np.int32),
        names=np.array(SOURCES),
    )
    return stats


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/work/corpus", help="output folder (outside the repo)")
    parser.add_argument("--chars", type=int, default=2_000_000, help="characters per source")
    parser.add_argument("--heldout", type=float, default=0.03, help="held-out fraction")
    parser.add_argument("--min-heldout", type=int, default=4, help="held-out documents per source")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()

    os.makedirs(args.out, exist_ok=True)
    bpe = Gpt2Bpe()
    train, heldout = [], []
    for index, source in enumerate(SOURCES):
        rng = random.Random(args.seed * 100 + index)
        docs = collect(source, rng, args.chars)
        n_held = max(args.min_heldout, round(args.heldout * len(docs)))
        if len(docs) < 2 * n_held:
            sys.exit(f"build_corpus.py: only {len(docs)} documents for {source}")
        # Documents are already in random order: the first ones are held out.
        heldout += docs[:n_held]
        train += docs[n_held:]
        print(f"{source}: {len(docs)} documents", file=sys.stderr, flush=True)

    table = {}
    for split, docs in (("train", train), ("heldout", heldout)):
        for source, (n, chars, tokens) in write_split(args.out, split, docs, bpe).items():
            table.setdefault(source, {})[split] = {"documents": n, "chars": chars, "tokens": tokens}
    with open(os.path.join(args.out, "table.json"), "w") as f:
        json.dump(table, f, indent=2)
        f.write("\n")

    print(f"{'source':8} {'train docs':>10} {'chars':>10} {'tokens':>9}   "
          f"{'held docs':>9} {'chars':>8} {'tokens':>7}")
    for source in SOURCES:
        t, h = table[source]["train"], table[source]["heldout"]
        print(f"{source:8} {t['documents']:>10} {t['chars']:>10} {t['tokens']:>9}   "
              f"{h['documents']:>9} {h['chars']:>8} {h['tokens']:>7}")
    totals = [sum(table[s][sp][k] for s in SOURCES) for sp in ("train", "heldout")
              for k in ("documents", "chars", "tokens")]
    print(f"{'total':8} {totals[0]:>10} {totals[1]:>10} {totals[2]:>9}   "
          f"{totals[3]:>9} {totals[4]:>8} {totals[5]:>7}")


if __name__ == "__main__":
    main()
