#!/usr/bin/python3
"""GPT-2's byte-level BPE tokenizer in Python, exact, for the reference model's scripts.

Reads Hugging Face's `vocab.json` and `merges.txt`. The text is cut with GPT-2's
pre-tokenisation pattern (Python's `regex` module, Debian package python3-regex, as GPT-2's own
encoder does), each piece's UTF-8 bytes are mapped to printable characters with the
byte-to-unicode table, and merges are applied lowest rank first. Results are cached per piece.

    /usr/bin/python3 scripts/lm/gpt2_bpe.py --check      # compare with tests/data/lm ids
    /usr/bin/python3 scripts/lm/gpt2_bpe.py FILE...      # print the token ids of files
"""

import argparse
import json
import os
import sys

try:
    import regex
except ImportError:
    sys.exit("gpt2_bpe.py: the Python module 'regex' is missing: apt-get install python3-regex")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_DIR = os.path.join(REPO, "tests", "data", "lm", "gpt2-tokenizer")
ENDOFTEXT = "<|endoftext|>"
PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


def bytes_to_unicode():
    """GPT-2's table from each byte to a printable character (printable Latin-1 bytes map to
    themselves, the others to U+0100 onwards in byte order)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {}
    extra = 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


class Gpt2Bpe:
    """encode(text) -> list of ids; decode(ids) -> text."""

    def __init__(self, folder=DEFAULT_DIR):
        vocab_path = os.path.join(folder, "vocab.json")
        merges_path = os.path.join(folder, "merges.txt")
        for path in (vocab_path, merges_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"GPT-2 tokenizer file not found: {path}")
        with open(vocab_path, encoding="utf-8") as f:
            self.encoder = json.load(f)
        self.decoder = {i: s for s, i in self.encoder.items()}
        with open(merges_path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        # The first line is a "#version" comment (merges such as "# $" also start with "#");
        # blank lines carry no merge.
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        pairs = [tuple(line.split(" ")) for line in lines if line]
        self.ranks = {pair: rank for rank, pair in enumerate(pairs)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.cache = {}

    def _bpe(self, word):
        """Token ids of one pre-tokenised piece (already mapped to byte characters)."""
        parts = list(word)
        while len(parts) > 1:
            best = None
            best_rank = None
            for i in range(len(parts) - 1):
                rank = self.ranks.get((parts[i], parts[i + 1]))
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = i, rank
            if best is None:
                break
            # Merge every occurrence of the best pair, left to right, as GPT-2 does.
            first, second = parts[best], parts[best + 1]
            merged = []
            i = 0
            while i < len(parts):
                if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return [self.encoder[p] for p in parts]

    def _encode_ordinary(self, text):
        ids = []
        for piece in PATTERN.findall(text):
            cached = self.cache.get(piece)
            if cached is None:
                mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
                cached = self._bpe(mapped)
                self.cache[piece] = cached
            ids.extend(cached)
        return ids

    def encode(self, text, special=False):
        """Token ids of text; with special=True, "<|endoftext|>" is the single token 50256."""
        if not special:
            return self._encode_ordinary(text)
        ids = []
        for i, chunk in enumerate(text.split(ENDOFTEXT)):
            if i:
                ids.append(self.encoder[ENDOFTEXT])
            ids.extend(self._encode_ordinary(chunk))
        return ids

    def decode(self, ids):
        data = bytes(self.byte_decoder[c] for i in ids for c in self.decoder[i])
        return data.decode("utf-8", errors="replace")


def check(bpe, ids_path):
    """Compares encode() with the reference ids of tests/data/lm/tokenizer_ids.json."""
    with open(ids_path, encoding="utf-8") as f:
        ref = json.load(f)
    with open(os.path.join(os.path.dirname(ids_path), "tokenizer_text.txt"), encoding="utf-8") as f:
        text = f.read()
    cases = [("text", text, ref["text"], False)]
    for group in ("lines", "random", "splits", "long"):
        cases += [(group, c["text"], c["ids"], False) for c in ref[group]]
    cases += [("special", c["text"], c["ids"], True) for c in ref["special"]]
    failures = 0
    for group, sample, expected, special in cases:
        got = bpe.encode(sample, special=special)
        if got != expected:
            failures += 1
            print(f"MISMATCH [{group}] {sample[:60]!r}")
            print(f"  expected {expected[:20]}\n  got      {got[:20]}")
        elif bpe.decode(got) != sample:
            failures += 1
            print(f"ROUND TRIP [{group}] {sample[:60]!r}")
    print(f"gpt2_bpe check: {len(cases) - failures}/{len(cases)} cases match ({ids_path})")
    return failures == 0


def main():
    parser = argparse.ArgumentParser(description="Exact GPT-2 BPE tokenizer (Python).")
    parser.add_argument("files", nargs="*", help="text files whose token ids to print")
    parser.add_argument(
        "--tokenizer", default=DEFAULT_DIR, help="folder of vocab.json + merges.txt"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare with tests/data/lm/tokenizer_ids.json and exit non-zero on a mismatch",
    )
    args = parser.parse_args()
    bpe = Gpt2Bpe(args.tokenizer)
    if args.check:
        ids_path = os.path.join(REPO, "tests", "data", "lm", "tokenizer_ids.json")
        sys.exit(0 if check(bpe, ids_path) else 1)
    if not args.files:
        parser.error("give files to tokenise, or --check")
    for path in args.files:
        with open(path, encoding="utf-8") as f:
            print(" ".join(map(str, bpe.encode(f.read()))))


if __name__ == "__main__":
    main()
