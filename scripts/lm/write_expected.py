#!/usr/bin/python3
"""Writes the expected values of the reference GPT-2 for the C++ engine's test.

Reads the committed models/ref-gpt2/ (F16 weights, upcast: what the C++ engine computes in
float), tokenises the beginning of two held-out samples of different sources
(models/ref-gpt2/heldout/SOURCE.txt), and writes gpt2_torch.write_expected's file, computed in
float64, for tokens I32 [2, 32]: BOS + 31 tokens of each sample.

    /usr/bin/python3 scripts/lm/write_expected.py
"""

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import gpt2_torch  # noqa: E402
from gpt2_bpe import Gpt2Bpe  # noqa: E402

SEQ = 32


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.path.join(REPO, "models", "ref-gpt2"))
    parser.add_argument(
        "--out", default=os.path.join(REPO, "tests", "data", "lm", "ref-gpt2-expected.safetensors")
    )
    parser.add_argument(
        "--sources",
        nargs=2,
        default=["man-fr", "python"],
        help="the two held-out samples (models/ref-gpt2/heldout/SOURCE.txt)",
    )
    args = parser.parse_args()

    torch.set_num_threads(1)
    bpe = Gpt2Bpe(args.model)
    rows = []
    for source in args.sources:
        path = os.path.join(args.model, "heldout", f"{source}.txt")
        if not os.path.isfile(path):
            sys.exit(f"write_expected.py: {path} not found (train_reference.py writes it)")
        with open(path, encoding="utf-8") as f:
            ids = bpe.encode(f.read())
        if len(ids) < SEQ - 1:
            sys.exit(f"write_expected.py: {path} has fewer than {SEQ - 1} tokens")
        rows.append([gpt2_torch.BOS] + ids[: SEQ - 1])
    tokens = torch.tensor(rows, dtype=torch.int64)
    model = gpt2_torch.load_hf_folder(args.model, dtype=torch.float64)
    gpt2_torch.write_expected(args.out, model, tokens)
    print(f"{args.out}: tokens {list(tokens.shape)}, {os.path.getsize(args.out)} bytes")


if __name__ == "__main__":
    main()
