// Tests of Gpt2Tokenizer (include/sae/lm/tokenizer.hpp).
//
// Reference ids: tests/data/lm/tokenizer_ids.json, written by tests/data/lm/make_tokenizer_ids.js
// with the npm package gpt-3-encoder (a JavaScript port of GPT-2's encoder.py) from the text
// tests/data/lm/tokenizer_text.txt, pseudo-random strings, and the cases where GPT-2's pattern
// and the package's disagree (U+0085, U+FEFF; README.md there). Malformed tokenizer files are
// small files written into a temporary directory.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <support/test_support.hpp>

#include <sae/core/rng.hpp>
#include <sae/lm/tokenizer.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_lm_tokenizer {

using sae::lm::Gpt2Tokenizer;
using namespace sae::test;
using Catch::Matchers::Contains;
using Catch::Matchers::Equals;
using Ids = std::vector<std::int32_t>;
namespace fs = std::filesystem;

/// GPT-2's tokenizer, loaded once.
const Gpt2Tokenizer& gpt2() {
  static const Gpt2Tokenizer t = Gpt2Tokenizer::fromDirectory(lmDataPath("gpt2-tokenizer"));
  return t;
}

/// The reference ids.
const nlohmann::json& reference() {
  static const nlohmann::json j = nlohmann::json::parse(readFile(lmDataPath("tokenizer_ids.json")));
  return j;
}

/// The bytes of a string of code points, UTF-8 encoded.
std::string utf8(const std::vector<std::uint32_t>& cps) {
  std::string s;
  for (std::uint32_t cp : cps) sae::lm::detail::appendUtf8(s, cp);
  return s;
}

// ------------------------------------------------------------------------------- the files

TEST_CASE("GPT-2's tokenizer files load with GPT-2's sizes and every vocab.json entry",
          "[Gpt2Tokenizer]") {
  const Gpt2Tokenizer& t = gpt2();
  CHECK(t.vocabSize() == 50257);
  CHECK(t.mergeCount() == 50000);
  CHECK(t.eotId() == 50256);
  CHECK(t.idToToken(50256) == "<|endoftext|>");
  CHECK(t.idToBytes(50256) == "<|endoftext|>");
  CHECK(t.tokenToId("<|endoftext|>") == 50256);
  CHECK_FALSE(t.tokenToId("no such token").has_value());
  // Every entry, read with nlohmann/json as an independent parser.
  const nlohmann::json vocab =
      nlohmann::json::parse(readFile(lmDataPath("gpt2-tokenizer/vocab.json")));
  REQUIRE(vocab.size() == 50257);
  std::size_t mismatches = 0;
  for (const auto& [token, id] : vocab.items()) {
    const auto got = t.tokenToId(token);
    if (!got || *got != id.get<int>() || t.idToToken(id.get<int>()) != token) ++mismatches;
  }
  CHECK(mismatches == 0);
  // " the" is one token, spelled with the space byte's symbol U+0120.
  CHECK(t.idToBytes(*t.tokenToId("\xC4\xA0the")) == " the");
}

TEST_CASE("Gpt2Tokenizer loads the npm / OpenAI names encoder.json + vocab.bpe too",
          "[Gpt2Tokenizer]") {
  TempDir dir("lm_tokenizer");
  fs::copy_file(lmDataPath("gpt2-tokenizer/vocab.json"), dir.file("encoder.json"));
  fs::copy_file(lmDataPath("gpt2-tokenizer/merges.txt"), dir.file("vocab.bpe"));
  const Gpt2Tokenizer t = Gpt2Tokenizer::fromDirectory(dir.path());
  CHECK(t.vocabSize() == 50257);
  const std::string text = readFile(lmDataPath("tokenizer_text.txt"));
  CHECK(t.encode(text) == gpt2().encode(text));
  const Gpt2Tokenizer f = Gpt2Tokenizer::fromFiles(dir.file("encoder.json"), dir.file("vocab.bpe"));
  CHECK(f.mergeCount() == 50000);
}

// ------------------------------------------------------------------------------- reference ids

TEST_CASE("encode gives gpt-3-encoder's ids for the text, each line and random strings",
          "[Gpt2Tokenizer]") {
  const Gpt2Tokenizer& t = gpt2();
  const nlohmann::json& ref = reference();
  const std::string text = readFile(lmDataPath("tokenizer_text.txt"));
  CHECK(t.encode(text, "tokenizer_text.txt") == ref.at("text").get<Ids>());
  REQUIRE(ref.at("lines").size() == 36);
  for (const auto& line : ref.at("lines")) {
    const std::string s = line.at("text");
    INFO("line: " << s);
    CHECK(t.encode(s) == line.at("ids").get<Ids>());
  }
  REQUIRE(ref.at("random").size() == 400);
  for (const auto& r : ref.at("random")) {
    const std::string s = r.at("text");
    INFO("string: " << nlohmann::json(s).dump());
    CHECK(t.encode(s) == r.at("ids").get<Ids>());
  }
}

TEST_CASE("decode of the reference ids gives the text back", "[Gpt2Tokenizer]") {
  const std::string text = readFile(lmDataPath("tokenizer_text.txt"));
  CHECK(gpt2().decode(reference().at("text").get<Ids>()) == text);
}

TEST_CASE("U+0085 is white space and U+FEFF is not, as in GPT-2 (not as in gpt-3-encoder)",
          "[Gpt2Tokenizer]") {
  const Gpt2Tokenizer& t = gpt2();
  for (const auto& c : reference().at("splits")) {
    const std::string s = c.at("text");
    INFO("string: " << nlohmann::json(s).dump());
    CHECK(t.pretokenize(s) == c.at("pieces").get<std::vector<std::string>>());
    CHECK(t.encode(s) == c.at("ids").get<Ids>());
  }
}

TEST_CASE("The pattern's white space is Unicode's White_Space property", "[Gpt2Tokenizer]") {
  // PropList.txt (Unicode 15): the 25 code points of White_Space, which Python's `regex`
  // module (GPT-2's encoder.py) takes for \s.
  const std::vector<std::uint32_t> whiteSpace = {
      0x09,   0x0A,   0x0B,   0x0C,   0x0D,   0x20,   0x85,   0xA0,   0x1680,
      0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008,
      0x2009, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000};
  // After "a ", a white-space character ends the space's piece; any other character joins it.
  CHECK(gpt2().pretokenize("a  b") == std::vector<std::string>{"a", " ", " b"});
  for (std::uint32_t cp : whiteSpace) {
    INFO("U+" << std::hex << cp);
    if (cp == ' ') continue;  // a space joins the letter after it
    const std::string c = utf8({cp});
    CHECK(gpt2().pretokenize("a " + c + "b") == std::vector<std::string>{"a", " ", c, "b"});
  }
  // Not White_Space: the information separators (Python's str.isspace() has them), the
  // Mongolian vowel separator (a space before Unicode 6.3), zero-width space, BOM, NUL.
  for (std::uint32_t cp : {0x1Cu, 0x1Du, 0x1Eu, 0x1Fu, 0x180Eu, 0x200Bu, 0xFEFFu, 0x00u}) {
    INFO("U+" << std::hex << cp);
    const std::string c = utf8({cp});
    CHECK(gpt2().pretokenize("a " + c + "b") == std::vector<std::string>{"a", " " + c, "b"});
  }
}

TEST_CASE("Pre-tokenisation cuts contractions, letters, numbers and spaces as GPT-2",
          "[Gpt2Tokenizer]") {
  using V = std::vector<std::string>;
  const Gpt2Tokenizer& t = gpt2();
  CHECK(t.pretokenize("don't I'LL we've") == V{"don", "'t", " I", "'", "LL", " we", "'ve"});
  CHECK(t.pretokenize("a   b") == V{"a", "  ", " b"});
  CHECK(t.pretokenize("x  \n\n  y") == V{"x", "  \n\n ", " y"});
  CHECK(t.pretokenize("end  ") == V{"end", "  "});
  CHECK(t.pretokenize("12345 abc123") == V{"12345", " abc", "123"});
  CHECK(t.pretokenize(" ?!.. ,") == V{" ?!..", " ,"});
}

// ------------------------------------------------------------------------------- special token

TEST_CASE("<|endoftext|> is ordinary text unless encodeWithSpecial is asked", "[Gpt2Tokenizer]") {
  const Gpt2Tokenizer& t = gpt2();
  const Ids plain = t.encode("<|endoftext|>");
  CHECK(plain.size() > 1);
  CHECK(std::find(plain.begin(), plain.end(), 50256) == plain.end());
  CHECK(t.decode(plain) == "<|endoftext|>");
  for (const auto& c : reference().at("special")) {
    const std::string s = c.at("text");
    INFO("string: " << nlohmann::json(s).dump());
    CHECK(t.encodeWithSpecial(s) == c.at("ids").get<Ids>());
    CHECK(t.decode(t.encodeWithSpecial(s)) == s);
  }
  CHECK(t.decode(Ids{t.eotId()}) == "<|endoftext|>");
}

// ------------------------------------------------------------------------------- round trips

TEST_CASE("decode(encode(s)) == s for the text, empty strings and random valid UTF-8",
          "[Gpt2Tokenizer]") {
  const Gpt2Tokenizer& t = gpt2();
  const std::string text = readFile(lmDataPath("tokenizer_text.txt"));
  CHECK(t.decode(t.encode(text)) == text);
  CHECK(t.encode("").empty());
  CHECK(t.encodeWithSpecial("").empty());
  CHECK(t.pretokenize("").empty());
  CHECK(t.decode(Ids{}).empty());
  CHECK(t.decode(nullptr, 0).empty());

  sae::Rng rng(20240315);
  const auto in = [&](std::uint32_t lo, std::uint32_t hi) {
    return lo + static_cast<std::uint32_t>(rng.below(hi - lo + 1));
  };
  const std::uint32_t spaceSet[] = {' ', '\t', '\n', '\r', 0x85, 0xA0, 0x3000};
  int failures = 0;
  for (int n = 0; n < 2000; ++n) {
    std::vector<std::uint32_t> cps;
    const std::uint32_t len = in(1, 48);
    for (std::uint32_t i = 0; i < len; ++i) {
      std::uint32_t cp = 0;
      switch (rng.below(6)) {
        case 0:
        case 1:
          cp = in(0, 0x7F);
          break;
        case 2:
          cp = in(0x80, 0x7FF);
          break;
        case 3:
          cp = in(0x800, 0xFFFF);
          break;
        case 4:
          cp = in(0x10000, 0x10FFFF);
          break;
        default:
          cp = spaceSet[rng.below(7)];
          break;
      }
      if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;  // surrogates are not characters
      cps.push_back(cp);
    }
    const std::string s = utf8(cps);
    if (t.decode(t.encode(s)) != s) {
      if (++failures <= 5) FAIL_CHECK("round trip failed for " << nlohmann::json(s).dump());
    }
  }
  CHECK(failures == 0);
}

TEST_CASE("Long pieces and long inputs encode and round trip", "[Gpt2Tokenizer]") {
  const Gpt2Tokenizer& t = gpt2();
  for (const auto& r : reference().at("long")) {
    const std::string s = r.at("text");
    INFO("string: " << nlohmann::json(s).dump());
    CHECK(t.encode(s) == r.at("ids").get<Ids>());
  }
  // 200000 a's: 500 times the ids of 400 a's (which are 100 times "aaaa", GPT-2's longest
  // token of a's). 200000 spaces: no merge joins two spaces, so each is its own token.
  const Ids a400 = reference().at("long").at(0).at("ids").get<Ids>();
  Ids a200k;
  for (int k = 0; k < 500; ++k) a200k.insert(a200k.end(), a400.begin(), a400.end());
  const std::string as(200000, 'a'), spaces(200000, ' ');
  CHECK(t.encode(as) == a200k);
  const Ids s300 = reference().at("long").at(1).at("ids").get<Ids>();
  REQUIRE(s300 == Ids(300, s300.at(0)));
  CHECK(t.encode(spaces) == Ids(200000, s300.at(0)));
  for (const std::string& s :
       {as, spaces, std::string(100000, '\n') + "x", std::string(50000, '!') + "9999"}) {
    CHECK(t.decode(t.encode(s)) == s);
  }
}

TEST_CASE("Concurrent encode calls agree with one another", "[Gpt2Tokenizer]") {
  const Gpt2Tokenizer& t = gpt2();
  const std::string text = readFile(lmDataPath("tokenizer_text.txt"));
  const Ids want = reference().at("text").get<Ids>();
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20; ++i) wrong += t.encode(text) != want;
    });
  }
  for (auto& th : threads) th.join();
  CHECK(wrong == 0);
}

// ------------------------------------------------------------------------------- bad input

TEST_CASE("Invalid UTF-8 is a FormatError naming the source and the byte offset",
          "[Gpt2Tokenizer]") {
  const Gpt2Tokenizer& t = gpt2();
  using sae::FormatError;
  CHECK_THROWS_AS(t.encode("abc\xFF"), FormatError);
  CHECK_THROWS_WITH(t.encode("abc\xFF", "corpus.txt"),
                    Contains("corpus.txt: invalid UTF-8 at byte offset 3: "));
  CHECK_THROWS_WITH(t.encode("abc\xFF"), Contains("encode: invalid UTF-8 at byte offset 3"));
  // Truncated sequence, stray continuation byte, overlong form, surrogate, beyond U+10FFFF.
  CHECK_THROWS_WITH(t.encode("h\xC3\xA9llo\xC3"), Contains("at byte offset 6"));
  CHECK_THROWS_WITH(t.encode("ok \x80"), Contains("at byte offset 3"));
  CHECK_THROWS_WITH(t.encode("\xC0\x80"), Contains("at byte offset 0"));
  CHECK_THROWS_WITH(t.encode("xy\xED\xA0\x80"), Contains("at byte offset 2"));
  CHECK_THROWS_WITH(t.encode("\xF4\x90\x80\x80"), Contains("at byte offset 0"));
  // The offset counts from the start of the whole input, also after special tokens.
  CHECK_THROWS_WITH(t.encodeWithSpecial("<|endoftext|>ab\xFE", "f.txt"),
                    Contains("f.txt: invalid UTF-8 at byte offset 15"));
  CHECK_THROWS_WITH(t.pretokenize("\xFE"), Contains("at byte offset 0"));
}

TEST_CASE("decode and idToToken reject unknown ids, naming them", "[Gpt2Tokenizer]") {
  const Gpt2Tokenizer& t = gpt2();
  CHECK_THROWS_AS(t.decode(Ids{15496, 50257}), sae::ConfigError);
  CHECK_THROWS_WITH(t.decode(Ids{15496, 50257}),
                    Equals("decode: token id 50257 at position 1 is outside the vocabulary "
                           "[0, 50257)"));
  CHECK_THROWS_WITH(t.decode(Ids{-1}), Contains("token id -1 at position 0"));
  CHECK_THROWS_WITH(t.idToToken(50257), Contains("idToToken: token id 50257"));
  CHECK_THROWS_WITH(t.idToBytes(-3), Contains("idToBytes: token id -3"));
}

// A small tokenizer: GPT-2's 256 byte symbols (ids 0 .. 255 of its vocab.json) and the merges
// "Ġ t" -> "Ġt", "h e" -> "he", "Ġt he" -> "Ġthe".
struct SmallFiles {
  std::vector<std::pair<std::string, int>> vocab;
  std::vector<std::string> merges = {"#version: 0.2", "\xC4\xA0 t", "h e", "\xC4\xA0t he"};
  SmallFiles() {
    const nlohmann::json gpt2Vocab =
        nlohmann::json::parse(readFile(lmDataPath("gpt2-tokenizer/vocab.json")));
    for (const auto& [token, id] : gpt2Vocab.items()) {
      if (id.get<int>() < 256) vocab.emplace_back(token, id.get<int>());
    }
    REQUIRE(vocab.size() == 256);
    vocab.emplace_back("\xC4\xA0t", 256);
    vocab.emplace_back("he", 257);
    vocab.emplace_back("\xC4\xA0the", 258);
    vocab.emplace_back("<|endoftext|>", 259);
  }
  std::string vocabJson() const {
    std::string s = "{";
    for (std::size_t i = 0; i < vocab.size(); ++i) {
      if (i) s += ", ";
      s += nlohmann::json(vocab[i].first).dump() + ": " + std::to_string(vocab[i].second);
    }
    return s + "}";
  }
  std::string mergesTxt() const {
    std::string s;
    for (const auto& m : merges) s += m + "\n";
    return s;
  }
};

/// Writes the vocabulary and merges into `dir` and loads them.
Gpt2Tokenizer loadSmall(const TempDir& dir, const std::string& vocab, const std::string& merges) {
  writeBytes(dir.file("vocab.json"), vocab);
  writeBytes(dir.file("merges.txt"), merges);
  return Gpt2Tokenizer::fromDirectory(dir.path());
}

TEST_CASE("A small vocabulary's BPE follows the merge ranks", "[Gpt2Tokenizer]") {
  TempDir dir("lm_tokenizer");
  const SmallFiles f;
  const Gpt2Tokenizer t = loadSmall(dir, f.vocabJson(), f.mergesTxt());
  CHECK(t.vocabSize() == 260);
  CHECK(t.mergeCount() == 3);
  CHECK(t.eotId() == 259);
  // GPT-2's byte ids: 't' 83, 'h' 71, 'e' 68, 'x' 87, 'Ġ' (space) 220.
  CHECK(t.encode(" the") == Ids{258});
  CHECK(t.encode("the") == Ids{83, 257});
  CHECK(t.encode(" thehe") == Ids{258, 257});
  CHECK(t.encode(" thex the") == Ids{258, 87, 258});
  CHECK(t.encode(" tx") == Ids{256, 87});
  CHECK(t.encode("hhee") == Ids{71, 257, 68});
  // Without the version line, and with CRLF line ends, the same merges.
  const Gpt2Tokenizer u = loadSmall(dir, f.vocabJson(), "\xC4\xA0 t\r\nh e\r\n\xC4\xA0t he");
  CHECK(u.encode(" thehe") == Ids{258, 257});
}

TEST_CASE("A moved-from tokenizer is a ConfigError, the moved-to one works", "[Gpt2Tokenizer]") {
  TempDir dir("lm_tokenizer");
  const SmallFiles f;
  Gpt2Tokenizer a = loadSmall(dir, f.vocabJson(), f.mergesTxt());
  const Gpt2Tokenizer b = std::move(a);
  CHECK(b.encode(" the") == Ids{258});
  CHECK_THROWS_AS(a.encode(" the"), sae::ConfigError);  // NOLINT(bugprone-use-after-move)
}

TEST_CASE("Missing tokenizer files are IoErrors naming them", "[Gpt2Tokenizer]") {
  TempDir dir("lm_tokenizer");
  CHECK_THROWS_AS(Gpt2Tokenizer::fromDirectory(dir.path()), sae::IoError);
  CHECK_THROWS_WITH(
      Gpt2Tokenizer::fromDirectory(dir.path()),
      Contains(dir.path() + ": no tokenizer files: expected vocab.json + merges.txt"));
  writeBytes(dir.file("vocab.json"), SmallFiles().vocabJson());
  CHECK_THROWS_AS(Gpt2Tokenizer::fromDirectory(dir.path()), sae::IoError);
  CHECK_THROWS_WITH(Gpt2Tokenizer::fromDirectory(dir.path()),
                    Equals(dir.file("merges.txt") + ": cannot open the file for reading"));
  CHECK_THROWS_WITH(Gpt2Tokenizer::fromFiles(dir.file("none.json"), dir.file("merges.txt")),
                    Equals(dir.file("none.json") + ": cannot open the file for reading"));
}

TEST_CASE("Malformed vocab.json files are FormatErrors naming the file, line and column",
          "[Gpt2Tokenizer]") {
  TempDir dir("lm_tokenizer");
  const SmallFiles f;
  const std::string merges = f.mergesTxt();
  const std::string file = dir.file("vocab.json");
  const auto fails = [&](const std::string& vocab, const std::string& what) {
    INFO("vocab.json: " << vocab.substr(0, 200));
    CHECK_THROWS_AS(loadSmall(dir, vocab, merges), sae::FormatError);
    CHECK_THROWS_WITH(loadSmall(dir, vocab, merges), Equals(file + ": " + what));
  };
  const std::string good = f.vocabJson();
  const std::string body = good.substr(1, good.size() - 2);  // the entries without the braces
  fails("",
        "line 1, column 1: expected '{' opening the vocabulary object, found the end of the "
        "file");
  fails("[1, 2]", "line 1, column 1: expected '{' opening the vocabulary object");
  fails("{\n  \"a\": 1,\n  \"b\" 2}", "line 3, column 7: expected ':' after the key");
  fails("{\"a\": 1,}", "line 1, column 9: expected a string key (a token)");
  fails("{\"a\": 1",
        "line 1, column 8: expected ',' or '}' after an entry, found the end of the "
        "file");
  fails("{\"a\": 1.5}",
        "line 1, column 7: expected an integer token id, found a number with a "
        "fraction or exponent");
  fails("{\"a\": \"1\"}", "line 1, column 7: expected an integer token id");
  fails("{\"a", "line 1, column 4: unterminated string");
  fails("{\"a\\q\": 1}", "line 1, column 4: invalid escape '\\q'");
  fails("{\"\xFF\": 0}", "line 1, column 3: invalid UTF-8 in a string");
  fails("{\"a\": 0} x", "line 1, column 10: unexpected text after the vocabulary object");
  // Ids out of range (the ids of n tokens are 0 .. n-1), duplicated ids and tokens.
  fails("{" + body + ", \"zz\": 300}",
        "line 1, column " + std::to_string(body.size() + 10) +
            ": token id 300 of 'zz' is out of range: the ids of a vocabulary of 261 tokens are "
            "0 .. 260");
  fails("{\"x\": -1}",
        "line 1, column 7: token id -1 of 'x' is out of range: the ids of a vocabulary of 1 "
        "tokens are 0 .. 0");
  fails("{\"a\": 0, \"b\": 0}",
        "line 1, column 15: token id 0 of 'b' is already the id of 'a' (line 1, column 7)");
  fails("{\"a\": 0, \"a\": 1}", "line 1, column 10: duplicate token 'a' (first with id 0)");
  // A character outside the byte-level alphabet (a plain space is spelled U+0120 there).
  fails("{" + body + ", \"a b\": 260}",
        "line 1, column " + std::to_string(body.size() + 4) +
            ": token 'a b' holds the character U+0020, which is not in GPT-2's byte-level "
            "alphabet");
  fails("{\"\": 0}", "line 1, column 2: empty token");
  // A byte symbol or <|endoftext|> missing.
  SmallFiles noByte = f;
  noByte.vocab.erase(noByte.vocab.begin());  // "!" (byte 0x21), id 0
  for (auto& [token, id] : noByte.vocab) --id;
  fails(noByte.vocabJson(), "the byte-level symbol '!' (byte 0x21) is not in the vocabulary");
  SmallFiles noEot = f;
  noEot.vocab.pop_back();
  fails(noEot.vocabJson(), "the token '<|endoftext|>' is not in the vocabulary");
}

TEST_CASE("Malformed merges.txt files are FormatErrors naming the file and line",
          "[Gpt2Tokenizer]") {
  TempDir dir("lm_tokenizer");
  const SmallFiles f;
  const std::string vocab = f.vocabJson();
  const std::string file = dir.file("merges.txt");
  const auto fails = [&](const std::vector<std::string>& lines, const std::string& what) {
    std::string merges;
    for (const auto& l : lines) merges += l + "\n";
    INFO("merges.txt: " << merges);
    CHECK_THROWS_AS(loadSmall(dir, vocab, merges), sae::FormatError);
    CHECK_THROWS_WITH(loadSmall(dir, vocab, merges), Equals(file + ": " + what));
  };
  const std::string sp = "\xC4\xA0";  // the space byte's symbol
  fails({"#version: 0.2", "h"}, "line 2: expected two tokens separated by one space, found 'h'");
  fails({"#version: 0.2", "h e x"},
        "line 2: expected two tokens separated by one space, found 'h e x'");
  fails({"h e", "", sp + " t"}, "line 2: expected two tokens separated by one space, found ''");
  fails({"h  e"}, "line 1: expected two tokens separated by one space, found 'h  e'");
  fails({"h e", " h"}, "line 2: expected two tokens separated by one space, found ' h'");
  fails({"h e", "#version: 0.2"}, "line 2: the first token '#version:' is not in the vocabulary");
  fails({"x y"}, "line 1: the merge result 'xy' is not in the vocabulary");
  fails({"#version: 0.2", "h e", sp + " t", "h e"},
        "line 4: the merge result 'he' is already made by line 2 (repeated merge)");
  fails({sp + "t he", sp + " t", "h e"},
        "line 1: the first token '" + sp +
            "t' is neither a byte symbol nor the result of an earlier merge (merges must be "
            "listed in creation order)");
}

}  // namespace sae_test_lm_tokenizer
