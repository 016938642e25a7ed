// What the language-model subcommands (dump, eval --model) share: the token ids of an input
// file (a text file tokenised, or an integer .npy checked against the vocabulary).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <sae/io/mapped_file.hpp>
#include <sae/io/npy.hpp>
#include <sae/lm/tokenizer.hpp>

#include "common.hpp"

namespace sae_cli {

/// The token ids of `path`: a UTF-8 text file tokenised with `tok` (`is_text`), or a 1-D
/// integer .npy whose ids are checked to be in [0, vocab) (FormatError naming the file, the
/// index and the id otherwise).
inline std::vector<std::int32_t> readTokenIds(const std::string& path, bool is_text,
                                              const sae::lm::Gpt2Tokenizer* tok, Index vocab) {
  if (is_text) {
    const sae::io::MappedFile file(path);
    const std::string_view text(reinterpret_cast<const char*>(file.data()), file.size());
    return tok->encode(text, path);
  }
  const sae::io::NpyIntegerReader reader(path);
  if (reader.shape().size() != 1)
    throw sae::FormatError(path + ": token ids must be a 1-D array (as `sae tokenize` writes), " +
                           "found " + std::to_string(reader.shape().size()) + " dimensions");
  const std::vector<std::int64_t> raw = reader.readAll();
  std::vector<std::int32_t> ids(raw.size());
  for (std::size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] < 0 || raw[i] >= vocab)
      throw sae::FormatError(path + ": token id " + std::to_string(raw[i]) + " at index " +
                             std::to_string(i) + " is outside the model's vocabulary [0, " +
                             std::to_string(vocab) + ")");
    ids[i] = static_cast<std::int32_t>(raw[i]);
  }
  return ids;
}

}  // namespace sae_cli
