// `sae tokenize`: text files to GPT-2 token ids (a 1-D int32 .npy), with the tokenizer files of a
// model folder (Hugging Face's vocab.json + merges.txt, or encoder.json + vocab.bpe).
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <sae/io/mapped_file.hpp>
#include <sae/io/npy.hpp>
#include <sae/lm/tokenizer.hpp>

#include "common.hpp"

namespace sae_cli {

namespace {

constexpr const char* kAbout =
    "Text files (UTF-8) to GPT-2 token ids, written as a 1-D int32 .npy: the files' ids one after "
    "the other, each preceded by <|endoftext|> (50256) with --prepend-bos";

struct TokenizeOptions {
  std::string model;
  std::vector<std::string> text;
  std::string out;
  bool prepend_bos = false;
  bool special = false;
  bool quiet = false;
};

int runTokenize(const TokenizeOptions& o, const CLI::App&) {
  // A missing output folder is found before the corpus is read, not after.
  const std::string out_dir = std::filesystem::path(o.out).parent_path().string();
  if (!out_dir.empty() && !isDir(out_dir))
    throw sae::IoError(o.out + ": cannot write: the folder " + out_dir + " does not exist");
  const auto tok = sae::lm::Gpt2Tokenizer::fromDirectory(o.model);
  std::vector<std::int32_t> ids;
  ojson files = ojson::array();
  for (const std::string& path : o.text) {
    // The file mapped, not copied; its bytes are checked as UTF-8 by the tokenizer, which names
    // the file and the offset of a bad byte.
    const sae::io::MappedFile file(path);
    const std::string_view text(reinterpret_cast<const char*>(file.data()), file.size());
    const std::size_t before = ids.size();
    if (o.prepend_bos) ids.push_back(tok.eotId());
    const std::vector<std::int32_t> file_ids =
        o.special ? tok.encodeWithSpecial(text, path) : tok.encode(text, path);
    ids.insert(ids.end(), file_ids.begin(), file_ids.end());
    const std::size_t count = ids.size() - before;
    files.push_back({{"file", path}, {"bytes", file.size()}, {"tokens", count}});
    if (!o.quiet)
      std::fprintf(stderr, "%s tokenize: %s: %zu bytes, %zu tokens\n", kProg, path.c_str(),
                   file.size(), count);
  }
  if (ids.size() == (o.prepend_bos ? o.text.size() : 0))
    throw sae::ConfigError("no tokens: every text file is empty (" + std::to_string(o.text.size()) +
                           (o.text.size() == 1 ? " file)" : " files)"));
  sae::io::writeNpyInt32(o.out, ids);
  ojson out;
  out["out"] = o.out;
  out["tokens"] = ids.size();
  out["prepend_bos"] = o.prepend_bos;
  out["special_tokens"] = o.special;
  out["files"] = files;
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace

Command registerTokenize(CLI::App& app) {
  auto [cmd, sub, o] = newCommand<TokenizeOptions>(app, "tokenize", kAbout, runTokenize);
  sub.add_option("--model", o.model,
                 "model folder with the tokenizer files (vocab.json + merges.txt, or "
                 "encoder.json + vocab.bpe)")
      ->required()
      ->check(CLI::ExistingDirectory);
  sub.add_option("--text", o.text, "UTF-8 text files, tokenised one after the other")
      ->required()
      ->check(CLI::ExistingFile);
  sub.add_option("--out", o.out, "the ids, a 1-D int32 .npy (written atomically)")->required();
  sub.add_flag("--prepend-bos", o.prepend_bos,
               "put <|endoftext|> (50256) before each file's ids, as GPT-2 separates documents");
  sub.add_flag("--special-tokens", o.special,
               "read a literal <|endoftext|> in the text as token 50256 (default: as text)");
  sub.add_flag("--quiet", o.quiet, "no per-file line on stderr");
  return cmd;
}

}  // namespace sae_cli
