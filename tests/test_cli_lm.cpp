// `sae tokenize` and `sae dump` through the program.
//
// tokenize: the ids of the committed multilingual text equal the reference implementation's
// (tests/data/lm/tokenizer_ids.json, from the npm package gpt-3-encoder), files are concatenated
// with --prepend-bos separators, and bad input (invalid UTF-8, empty corpus, a folder without
// tokenizer files, an unwritable output) fails cleanly with no output written.
//
// dump: every row of every hook's shards equals the engine's own hook value for that row's
// window (computed here in-process), tokens / positions / sources say where each row comes
// from, `sae train --data` trains on the dump, and bad input fails before anything is written.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sae/io/activation_files.hpp>
#include <sae/io/npy.hpp>
#include <sae/io/safetensors.hpp>
#include <sae/lm/gpt2.hpp>
#include <sae/lm/tokenizer.hpp>
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

// ------------------------------------------------------------------ sae dump

namespace {

/// The rows of a dump's hook, all shards in order.
sae::RowMatrix<float> dumpRows(const std::string& dump, const std::string& hook) {
  const nlohmann::json meta = nlohmann::json::parse(readFile(dump + "/dump.json"));
  std::vector<std::string> paths;
  for (const auto& h : meta.at("hooks"))
    if (h.at("name") == hook)
      for (const auto& s : h.at("shards"))
        paths.push_back(dump + "/" + hook + "/" + s.get<std::string>());
  REQUIRE_FALSE(paths.empty());
  const sae::io::ActivationFiles files(paths);
  sae::RowMatrix<float> rows(files.rows(), files.cols());
  files.readRows<float>(0, files.rows(), rows);
  return rows;
}

/// The engine's value at `hook` for one window [BOS?, tokens...]: [window length, width].
sae::RowMatrix<float> hookValue(sae::lm::Gpt2Model& m, const std::vector<std::int32_t>& window,
                                const std::string& hook) {
  sae::lm::TokenMatrix t(1, static_cast<sae::Index>(window.size()));
  for (sae::Index i = 0; i < t.cols(); ++i) t(0, i) = window[static_cast<std::size_t>(i)];
  sae::RowMatrix<float> value;
  sae::lm::HookList hooks;
  hooks.addReader(hook, [&](const sae::lm::HookActivation& a) { value = a.value; });
  m.forward(t, hooks, nullptr);
  return value;
}

/// A GPT-2 with GPT-2's whole vocabulary and tokenizer files, small random weights (d 8, one
/// block, 32 positions), written into `dir`: a model that reads real text.
void writeFullVocabModel(const std::string& dir) {
  fs::create_directories(dir);
  const sae::Index V = 50257, P = 32, d = 8;
  sae::Rng rng(5);
  std::vector<std::vector<float>> keep;
  sae::io::SafetensorsWriter w;
  auto add = [&](const std::string& name, std::vector<sae::Index> shape, float scale,
                 float offset) {
    sae::Index n = 1;
    for (sae::Index s : shape) n *= s;
    keep.emplace_back(static_cast<std::size_t>(n));
    for (float& x : keep.back()) x = offset + scale * static_cast<float>(rng.normal());
    w.add(name, shape, keep.back().data());
  };
  add("wte.weight", {V, d}, 0.5f, 0.0f);
  add("wpe.weight", {P, d}, 0.3f, 0.0f);
  for (const char* ln : {"h.0.ln_1", "h.0.ln_2", "ln_f"}) {
    add(std::string(ln) + ".weight", {d}, 0.1f, 1.0f);
    add(std::string(ln) + ".bias", {d}, 0.1f, 0.0f);
  }
  add("h.0.attn.c_attn.weight", {d, 3 * d}, 0.4f, 0.0f);
  add("h.0.attn.c_attn.bias", {3 * d}, 0.1f, 0.0f);
  add("h.0.attn.c_proj.weight", {d, d}, 0.4f, 0.0f);
  add("h.0.attn.c_proj.bias", {d}, 0.1f, 0.0f);
  add("h.0.mlp.c_fc.weight", {d, 4 * d}, 0.4f, 0.0f);
  add("h.0.mlp.c_fc.bias", {4 * d}, 0.1f, 0.0f);
  add("h.0.mlp.c_proj.weight", {4 * d, d}, 0.2f, 0.0f);
  add("h.0.mlp.c_proj.bias", {d}, 0.1f, 0.0f);
  w.write(dir + "/model.safetensors");
  writeBytes(dir + "/config.json",
             R"({"model_type": "gpt2", "n_embd": 8, "n_layer": 1, "n_head": 2, "n_positions": 32,
                 "vocab_size": 50257, "layer_norm_epsilon": 1e-05,
                 "activation_function": "gelu_new", "bos_token_id": 50256})");
  for (const char* f : {"vocab.json", "merges.txt"})
    fs::copy_file(tokenizerDir() + "/" + f, dir + "/" + f);
}

std::vector<std::int32_t> readInt32(const std::string& path) {
  const Ids raw = sae::io::readNpyIntegers(path);
  CHECK(sae::io::NpyIntegerReader(path).dtype() == sae::io::DType::I32);
  return std::vector<std::int32_t>(raw.begin(), raw.end());
}

}  // namespace

TEST_CASE("sae dump writes every hook's rows with their tokens, positions and sources",
          "[cli][lm][dump]") {
  TempDir dir("cli_dump");
  const std::string model = lmDataPath("tiny-gpt2");  // vocab 101, n_positions 16, BOS 100
  std::vector<std::int32_t> ids(200);
  sae::Rng rng(3);
  for (auto& id : ids) id = static_cast<std::int32_t>(rng.below(100));
  sae::io::writeNpyInt32(dir.file("ids.npy"), ids);
  const std::string out = dir.file("dump");
  const auto r = runCliOk({"dump", "--model", model, "--tokens", dir.file("ids.npy"), "--hook",
                           "blocks.1.hook_resid_pre", "--hook", "blocks.0.mlp.hook_post",
                           "--context", "16", "--shard-rows", "64", "--batch", "3", "--out", out});
  CHECK(r.err.find("200 / 200 tokens") != std::string::npos);  // the progress line
  const nlohmann::json meta = nlohmann::json::parse(readFile(out + "/dump.json"));
  CHECK(meta.at("rows") == 200);
  CHECK(meta.at("context") == 16);
  CHECK(meta.at("prepend_bos") == true);
  CHECK(meta.at("hooks").size() == 2);
  CHECK(meta.at("hooks").at(0).at("shards").size() == 4);  // 64 + 64 + 64 + 8 rows
  CHECK(meta.at("hooks").at(1).at("width") == 128);
  CHECK(meta.at("files").at(0).at("windows") == 14);  // 13 of 15 tokens, one of 5

  // Row i is token i, at position 1 + i % 15 of its window (BOS at 0 is not dumped).
  CHECK(readInt32(out + "/tokens.npy") == ids);
  const auto positions = readInt32(out + "/positions.npy");
  const auto sources = readInt32(out + "/sources.npy");
  REQUIRE(positions.size() == 200);
  for (std::size_t i = 0; i < 200; ++i)
    CHECK(positions[i] == static_cast<std::int32_t>(1 + i % 15));
  CHECK(sources == std::vector<std::int32_t>(200, 0));

  // Every row equals the engine's value for its own window.
  sae::lm::Gpt2Model m = sae::lm::Gpt2Model::load(model);
  for (const char* hook : {"blocks.1.hook_resid_pre", "blocks.0.mlp.hook_post"}) {
    INFO(hook);
    const sae::RowMatrix<float> rows = dumpRows(out, hook);
    REQUIRE(rows.rows() == 200);
    for (std::size_t start = 0; start < 200; start += 15) {
      std::vector<std::int32_t> window = {100};
      const std::size_t n = std::min<std::size_t>(15, 200 - start);
      window.insert(window.end(), ids.begin() + static_cast<long>(start),
                    ids.begin() + static_cast<long>(start + n));
      const sae::RowMatrix<float> want = hookValue(m, window, hook);
      const sae::RowMatrix<float> got =
          rows.middleRows(static_cast<sae::Index>(start), static_cast<sae::Index>(n));
      CHECK((got - want.bottomRows(static_cast<sae::Index>(n))).cwiseAbs().maxCoeff() <= 1e-5f);
    }
  }

  // Without BOS, windows are 16 tokens and every position is dumped; --max-tokens stops early.
  const std::string raw = dir.file("raw");
  runCliOk({"dump", "--model", model, "--tokens", dir.file("ids.npy"), "--hook", "hook_embed",
            "--context", "16", "--no-prepend-bos", "--max-tokens", "40", "--quiet", "--out", raw});
  const auto raw_positions = readInt32(raw + "/positions.npy");
  REQUIRE(raw_positions.size() == 40);
  for (std::size_t i = 0; i < 40; ++i) CHECK(raw_positions[i] == static_cast<std::int32_t>(i % 16));
  const sae::RowMatrix<float> embed = dumpRows(raw, "hook_embed");
  sae::RowMatrix<float> wte_rows(40, 32);
  for (std::size_t i = 0; i < 40; ++i) {
    wte_rows.row(static_cast<sae::Index>(i)) = m.tokenEmbedding().row(ids[i]);
    wte_rows.row(static_cast<sae::Index>(i)).array() -=
        wte_rows.row(static_cast<sae::Index>(i)).mean();
  }
  CHECK((embed - wte_rows).cwiseAbs().maxCoeff() <= 1e-5f);
}

TEST_CASE("sae dump of text files, float16 and bfloat16, and sae train on a dump",
          "[cli][lm][dump]") {
  TempDir dir("cli_dump_text");
  const std::string model = dir.file("model");
  writeFullVocabModel(model);
  const std::string a = dir.file("a.txt"), b = dir.file("b.txt");
  writeBytes(a,
             "The quick brown fox jumps over the lazy dog. Le renard brun saute par-dessus "
             "le chien paresseux. Der schnelle braune Fuchs springt über den faulen Hund.");
  writeBytes(b, "int main(void) { return 0; }\n");
  const auto tok = sae::lm::Gpt2Tokenizer::fromDirectory(model);
  const auto ids_a = tok.encode(readFile(a)), ids_b = tok.encode(readFile(b));
  REQUIRE(ids_a.size() > 31);  // more than one window of context 32

  const std::string f16 = dir.file("f16");
  runCliOk({"dump", "--model", model, "--text", a, b, "--hook", "blocks.0.hook_resid_post",
            "--context", "32", "--dtype", "float16", "--quiet", "--out", f16});
  std::vector<std::int32_t> want_tokens(ids_a.begin(), ids_a.end());
  want_tokens.insert(want_tokens.end(), ids_b.begin(), ids_b.end());
  CHECK(readInt32(f16 + "/tokens.npy") == want_tokens);
  std::vector<std::int32_t> want_sources(ids_a.size(), 0);
  want_sources.resize(want_tokens.size(), 1);
  CHECK(readInt32(f16 + "/sources.npy") == want_sources);
  const nlohmann::json meta = nlohmann::json::parse(readFile(f16 + "/dump.json"));
  CHECK(meta.at("files").at(1).at("path") == b);
  CHECK(meta.at("files").at(1).at("rows") == ids_b.size());
  CHECK(meta.at("dtype") == "float16");

  // The float16 and bfloat16 shards hold the float32 values rounded.
  const std::string f32 = dir.file("f32"), bf16 = dir.file("bf16");
  runCliOk({"dump", "--model", model, "--text", a, b, "--hook", "blocks.0.hook_resid_post",
            "--context", "32", "--quiet", "--out", f32});
  runCliOk({"dump", "--model", model, "--text", a, b, "--hook", "blocks.0.hook_resid_post",
            "--context", "32", "--dtype", "bfloat16", "--quiet", "--out", bf16});
  const auto exact = dumpRows(f32, "blocks.0.hook_resid_post");
  const auto half = dumpRows(f16, "blocks.0.hook_resid_post");
  const auto brain = dumpRows(bf16, "blocks.0.hook_resid_post");
  const float scale = exact.cwiseAbs().maxCoeff();
  CHECK(exact.rows() == static_cast<sae::Index>(want_tokens.size()));
  CHECK((half - exact).cwiseAbs().maxCoeff() <= scale * 1e-3f);
  CHECK((brain - exact).cwiseAbs().maxCoeff() <= scale * 8e-3f);
  CHECK((brain - exact).cwiseAbs().maxCoeff() > 0.0f);

  // sae train reads a dump folder of one hook directly; of several hooks, through a subfolder.
  runCliOk({"train", "--data", f32, "--out", dir.file("run"), "--arch", "topk", "--k", "2",
            "--expansion", "2", "--batch", "16", "--steps", "5", "--quiet"});
  const nlohmann::json cfg = nlohmann::json::parse(readFile(dir.file("run") + "/cfg.json"));
  CHECK(cfg.at("d_in") == 8);
  // The saved SAE names the hook it was trained on (for `sae eval --model` without --hook).
  CHECK(cfg.at("metadata").at("hook_name") == "blocks.0.hook_resid_post");
  // sae eval reads the dump folder too, every row of it.
  const nlohmann::json ev =
      nlohmann::json::parse(runCliOk({"eval", "--sae", dir.file("run"), "--data", f32}).out);
  CHECK(ev.at("rows") == want_tokens.size());
  // A folder that is not a dump is named as such (training reads every shard of one instead).
  checkCliFails({"eval", "--sae", dir.file("run"), "--data", dir.file("run")},
                dir.file("run") + " is a folder without dump.json");
  const std::string two = dir.file("two");
  runCliOk({"dump", "--model", model, "--text", a, "--hook", "blocks.0.hook_resid_pre", "--hook",
            "blocks.0.mlp.hook_pre", "--context", "32", "--quiet", "--out", two});
  checkCliFails({"train", "--data", two, "--out", dir.file("run2"), "--steps", "5", "--quiet"},
                "is a `sae dump` folder of 2 hooks");
  runCliOk({"train", "--data", two + "/blocks.0.mlp.hook_pre", "--out", dir.file("run3"), "--arch",
            "topk", "--k", "2", "--expansion", "1", "--batch", "16", "--steps", "5", "--quiet"});
  const nlohmann::json cfg3 = nlohmann::json::parse(readFile(dir.file("run3") + "/cfg.json"));
  CHECK(cfg3.at("d_in") == 32);
  CHECK(cfg3.at("metadata").at("hook_name") == "blocks.0.mlp.hook_pre");
}

TEST_CASE("sae dump: bad input fails before anything is written", "[cli][lm][dump][bad]") {
  TempDir dir("cli_dump_bad");
  const std::string tiny = lmDataPath("tiny-gpt2");
  sae::io::writeNpyInt32(dir.file("ids.npy"), std::vector<std::int32_t>{1, 2, 3, 4});
  sae::io::writeNpyInt32(dir.file("big.npy"), std::vector<std::int32_t>{1, 2, 101, 4});
  const std::string out = dir.file("out");
  auto dump = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"dump", "--quiet", "--model", tiny, "--out", out};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  checkCliFails(dump({"--tokens", dir.file("ids.npy"), "--hook", "blocks.7.hook_resid_pre",
                      "--context", "8"}),
                "unknown hook point 'blocks.7.hook_resid_pre'");
  checkCliFails(dump({"--tokens", dir.file("ids.npy"), "--hook", "blocks.0.hook_resid_pre",
                      "--context", "17"}),
                "--context 17 is longer than the model's n_positions 16");
  checkCliFails(dump({"--tokens", dir.file("big.npy"), "--hook", "blocks.0.hook_resid_pre",
                      "--context", "8"}),
                "big.npy: token id 101 at index 2 is outside the model's vocabulary [0, 101)");
  checkCliFails(dump({"--hook", "blocks.0.hook_resid_pre", "--context", "8"}),
                "--text FILE... or as --tokens");
  checkCliFails(dump({"--tokens", dir.file("ids.npy"), "--hook", "hook_embed", "--hook",
                      "hook_embed", "--context", "8"}),
                "given twice");
  CHECK_FALSE(fs::exists(out));

  // Text input: invalid UTF-8 names the file and the byte; an empty corpus is an error.
  const std::string model = dir.file("model");
  writeFullVocabModel(model);
  writeBytes(dir.file("good.txt"), "Some text.");
  writeBytes(dir.file("bad.txt"), std::string("ok \xc3\x28 no"));
  writeBytes(dir.file("empty.txt"), "");
  auto textDump = [&](std::vector<std::string> files) {
    std::vector<std::string> args = {
        "dump",      "--quiet", "--model", model, "--hook", "blocks.0.hook_resid_pre",
        "--context", "16",      "--out",   out,   "--text"};
    args.insert(args.end(), files.begin(), files.end());
    return args;
  };
  checkCliFails(textDump({dir.file("good.txt"), dir.file("bad.txt")}), "bad.txt");
  checkCliFails(textDump({dir.file("good.txt"), dir.file("bad.txt")}), "byte offset 3");
  checkCliFails(textDump({dir.file("empty.txt")}), "no tokens");
  CHECK_FALSE(fs::exists(out));
  // An output folder that is not empty is never written into.
  fs::create_directories(out);
  writeBytes(out + "/keep.txt", "mine");
  checkCliFails(textDump({dir.file("good.txt")}), "exists and is not empty");
  CHECK(readFile(out + "/keep.txt") == "mine");
  CHECK_FALSE(fs::exists(out + "/dump.json"));
  // Token input with BOS needs a BOS id.
  const std::string no_bos = dir.file("no_bos");
  fs::create_directories(no_bos);
  for (const char* f : {"model.safetensors"}) fs::copy_file(tiny + "/" + f, no_bos + "/" + f);
  nlohmann::json cfg = nlohmann::json::parse(readFile(tiny + "/config.json"));
  cfg.erase("bos_token_id");
  writeBytes(no_bos + "/config.json", cfg.dump());
  checkCliFails({"dump", "--quiet", "--model", no_bos, "--tokens", dir.file("ids.npy"), "--hook",
                 "hook_embed", "--context", "8", "--out", dir.file("o2")},
                "has no bos_token_id: give --no-prepend-bos");
}

}  // namespace sae_test_cli_lm
