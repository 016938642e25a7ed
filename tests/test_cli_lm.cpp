// `sae tokenize` through the program: the ids of the committed multilingual text equal the
// reference implementation's (tests/data/lm/tokenizer_ids.json, from the npm package
// gpt-3-encoder), files are concatenated with --prepend-bos separators, and bad input (invalid
// UTF-8, empty corpus, a folder without tokenizer files, an unwritable output) fails cleanly
// with no output written.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sae/io/npy.hpp>
#include <support/cli_runner.hpp>
#include <support/test_support.hpp>

namespace sae_test_cli_lm {

namespace {

using sae::test::checkCliFails;
using sae::test::lmDataPath;
using sae::test::readFile;
using sae::test::runCliOk;
using sae::test::TempDir;
using Ids = std::vector<std::int64_t>;
namespace fs = std::filesystem;

const std::string& tokenizerDir() {
  static const std::string dir = lmDataPath("gpt2-tokenizer");
  return dir;
}

// The reference ids of the whole text, and of its lines (each encoded alone).
const nlohmann::json& reference() {
  static const nlohmann::json j = nlohmann::json::parse(readFile(lmDataPath("tokenizer_ids.json")));
  return j;
}

void writeBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
  REQUIRE(out.good());
}

}  // namespace

TEST_CASE("sae tokenize writes the reference ids of the multilingual text", "[cli][lm]") {
  TempDir dir("cli_tokenize");
  const std::string out = dir.file("ids.npy");
  const auto r = runCliOk({"tokenize", "--model", tokenizerDir(), "--text",
                           lmDataPath("tokenizer_text.txt"), "--out", out, "--quiet"});
  const Ids ids = sae::io::readNpyIntegers(out);
  CHECK(ids == reference().at("text").get<Ids>());
  CHECK(sae::io::NpyIntegerReader(out).dtype() == sae::io::DType::I32);
  const nlohmann::json summary = nlohmann::json::parse(r.out);
  CHECK(summary.at("tokens").get<std::size_t>() == ids.size());
  CHECK(summary.at("files").at(0).at("tokens").get<std::size_t>() == ids.size());
  CHECK(r.err.empty());  // --quiet
}

TEST_CASE("sae tokenize concatenates files, each after <|endoftext|> with --prepend-bos",
          "[cli][lm]") {
  TempDir dir("cli_tokenize_bos");
  // Two lines of the text as two files; the reference has each line encoded alone.
  const nlohmann::json& lines = reference().at("lines");
  REQUIRE(lines.size() >= 3);
  writeBytes(dir.file("a.txt"), lines.at(0).at("text").get<std::string>());
  writeBytes(dir.file("b.txt"), lines.at(2).at("text").get<std::string>());
  writeBytes(dir.file("empty.txt"), "");
  const std::string out = dir.file("ids.npy");
  const auto r =
      runCliOk({"tokenize", "--model", tokenizerDir(), "--text", dir.file("a.txt"),
                dir.file("empty.txt"), dir.file("b.txt"), "--prepend-bos", "--out", out});
  Ids expected = {50256};
  for (const auto& id : lines.at(0).at("ids")) expected.push_back(id.get<std::int64_t>());
  expected.push_back(50256);  // the empty file: its separator only
  expected.push_back(50256);
  for (const auto& id : lines.at(2).at("ids")) expected.push_back(id.get<std::int64_t>());
  CHECK(sae::io::readNpyIntegers(out) == expected);
  CHECK(r.err.find("empty.txt: 0 bytes, 1 tokens") != std::string::npos);

  // <|endoftext|> in the text: seven ordinary tokens, or 50256 with --special-tokens.
  writeBytes(dir.file("eot.txt"), "one<|endoftext|>two");
  runCliOk({"tokenize", "--model", tokenizerDir(), "--text", dir.file("eot.txt"), "--out", out,
            "--special-tokens", "--quiet"});
  CHECK(sae::io::readNpyIntegers(out) == Ids{505, 50256, 11545});
  runCliOk({"tokenize", "--model", tokenizerDir(), "--text", dir.file("eot.txt"), "--out", out,
            "--quiet"});
  CHECK(sae::io::readNpyIntegers(out).size() == 2 + 7);
}

TEST_CASE("sae tokenize: bad input fails cleanly and writes nothing", "[cli][lm][bad]") {
  TempDir dir("cli_tokenize_bad");
  const std::string out = dir.file("ids.npy");
  // Invalid UTF-8: the file and the byte offset are named.
  writeBytes(dir.file("bad.txt"), std::string("caf\xc3\xa9 ok \xff rest"));
  checkCliFails({"tokenize", "--quiet", "--model", tokenizerDir(), "--text", dir.file("bad.txt"),
                 "--out", out},
                "bad.txt");
  checkCliFails({"tokenize", "--quiet", "--model", tokenizerDir(), "--text", dir.file("bad.txt"),
                 "--out", out},
                "byte offset 9");
  // Nothing to write.
  writeBytes(dir.file("empty.txt"), "");
  checkCliFails({"tokenize", "--quiet", "--model", tokenizerDir(), "--text", dir.file("empty.txt"),
                 "--out", out},
                "no tokens");
  // A folder without tokenizer files.
  fs::create_directories(dir.file("no_tokenizer"));
  writeBytes(dir.file("ok.txt"), "Hello world");
  checkCliFails({"tokenize", "--quiet", "--model", dir.file("no_tokenizer"), "--text",
                 dir.file("ok.txt"), "--out", out},
                "vocab.json");
  // An output folder that does not exist.
  checkCliFails({"tokenize", "--quiet", "--model", tokenizerDir(), "--text", dir.file("ok.txt"),
                 "--out", dir.file("missing/ids.npy")},
                dir.file("missing/ids.npy"));
  CHECK_FALSE(fs::exists(out));
  CHECK_FALSE(fs::exists(dir.file("missing")));
}

}  // namespace sae_test_cli_lm
