// What the language-model subcommands (dump, eval --model) share: the token ids of an input
// file (a text file tokenised, or an integer .npy checked against the vocabulary).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <sae/io/mapped_file.hpp>
#include <sae/io/npy.hpp>
#include <sae/lm/hooks.hpp>
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

/// The hook the SAE in `loaded` was trained on, from its cfg.json metadata (SAELens 6:
/// metadata.hook_name), or empty.
inline std::string configuredHook(const sae::io::LoadedSae<float>& loaded) {
  const auto& m = loaded.config.metadata;
  if (m.is_object() && m.contains("hook_name") && m.at("hook_name").is_string())
    return m.at("hook_name").get<std::string>();
  return "";
}

/// The hook an SAE runs at: `given` (--hook), or the SAE's own; a --hook other than the SAE's
/// own is a ConfigError unless `force`. The name is checked against a model of `n_layer`
/// blocks (an unknown one lists the valid names) and the hook's width against the SAE's d_in.
inline std::string resolveSaeHook(const sae::io::LoadedSae<float>& loaded,
                                  const std::string& sae_dir, const std::string& given, bool force,
                                  const std::string& model_dir, Index n_layer, Index d_model) {
  const std::string own = configuredHook(loaded);
  const std::string hook = given.empty() ? own : given;
  if (hook.empty())
    throw sae::ConfigError(sae_dir +
                           " does not say which hook it reads (no metadata.hook_name in "
                           "its cfg.json): give --hook");
  if (!given.empty() && !own.empty() && own != given && !force)
    throw sae::ConfigError("--hook " + given + " disagrees with the hook of " + sae_dir + " (" +
                           own + " in its cfg.json); give --force to use it there anyway");
  const sae::lm::HookId id = sae::lm::parseHookName(hook, static_cast<int>(n_layer));
  const Index width = sae::lm::hookWidth(id, d_model);
  if (width != loaded.dIn())
    throw sae::ConfigError("the SAE in " + sae_dir +
                           " expects d_in = " + std::to_string(loaded.dIn()) + " but " + hook +
                           " of " + model_dir + " has width " + std::to_string(width));
  return hook;
}

/// The ids of a --prompt: its tokens, after BOS unless `prepend_bos` is false. An empty prompt
/// is a ConfigError.
inline std::vector<std::int32_t> promptIds(const std::string& prompt,
                                           const sae::lm::Gpt2Tokenizer& tok, bool prepend_bos) {
  if (prompt.empty()) throw sae::ConfigError("--prompt is empty");
  std::vector<std::int32_t> ids;
  if (prepend_bos) ids.push_back(tok.eotId());
  const std::vector<std::int32_t> body = tok.encode(prompt, "--prompt");
  ids.insert(ids.end(), body.begin(), body.end());
  if (ids.empty()) throw sae::ConfigError("--prompt has no tokens");
  return ids;
}

}  // namespace sae_cli
