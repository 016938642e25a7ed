/// @file sae_formats.hpp
/// @brief One entry point for every SAE format: loadSae() / describeSae() pick the reader
/// from what a path holds.
///
/// | path holds                                   | format       | reader           |
/// |----------------------------------------------|--------------|------------------|
/// | `cfg.json` + `sae_weights.safetensors`       | SAELens      | loadSaeLens()    |
/// | `cfg.json` + `sae.safetensors`               | sparsify     | loadSparsify()   |
/// | `params.npz` (or the path is an `.npz` file) | Gemma Scope  | loadGemmaScope() |
///
/// A path naming one of those files inside its folder (`.../cfg.json`,
/// `.../sae_weights.safetensors`, `.../sae.safetensors`) stands for the folder. A folder that
/// holds no SAE itself but has subfolders that do (a sparsify run with one folder per
/// hookpoint, a release with one per layer) is an error that lists those subfolders.
#pragma once

#include <algorithm>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include <sae/core/error.hpp>
#include <sae/io/gemma_scope.hpp>
#include <sae/io/loaded_sae.hpp>
#include <sae/io/saelens.hpp>
#include <sae/io/sparsify.hpp>

namespace sae::io {

namespace detail {

/// The format of the SAE directly in folder `dir`; false when there is none.
inline bool folderFormat(const std::string& dir, SaeFormat& out) {
  if (isRegularFile(joinPath(dir, kSaeWeightsFilename))) {
    out = SaeFormat::SaeLens;
  } else if (isRegularFile(joinPath(dir, kSparsifyWeightsFilename))) {
    out = SaeFormat::Sparsify;
  } else if (isRegularFile(joinPath(dir, kGemmaScopeFilename))) {
    out = SaeFormat::GemmaScope;
  } else {
    return false;
  }
  return true;
}

/// The folder a path stands for: itself, or the folder of an SAE file named inside it.
inline std::string saeFolderOf(const std::string& path) {
  const std::string name = std::filesystem::path(path).filename().string();
  if (isRegularFile(path) && (name == kSaeCfgFilename || name == kSaeWeightsFilename ||
                              name == kSparsifyWeightsFilename)) {
    const std::string parent = std::filesystem::path(path).parent_path().string();
    return parent.empty() ? "." : parent;
  }
  return path;
}

}  // namespace detail

/// @brief The immediate subfolders of `dir` that hold an SAE of any format, sorted by name.
inline std::vector<std::string> saeSubfolders(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    SaeFormat f;
    std::error_code ec2;
    if (e.is_directory(ec2) && detail::folderFormat(e.path().string(), f))
      out.push_back(e.path().filename().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

/// @brief The format of the SAE at `path` (see the file comment).
/// @throws IoError when the path does not exist; FormatError when it holds no SAE, listing
/// the subfolders that do when there are any.
inline SaeFormat detectSaeFormat(const std::string& path) {
  using sae::detail::concat;
  const std::string p = detail::saeFolderOf(path);
  if (detail::isRegularFile(p)) {
    if (std::filesystem::path(p).extension() == ".npz") return SaeFormat::GemmaScope;
    throw FormatError(concat(p, ": not an SAE (expected a folder with ", kSaeCfgFilename, " and ",
                             kSaeWeightsFilename, " or ", kSparsifyWeightsFilename,
                             ", or a Gemma Scope ", kGemmaScopeFilename, ")"));
  }
  if (!detail::isDirectory(p))
    throw IoError(concat(p, ": not a directory (expected an SAE folder or a Gemma Scope ",
                         kGemmaScopeFilename, "): no such file or directory"));
  SaeFormat f;
  if (detail::folderFormat(p, f)) return f;
  const std::vector<std::string> subs = saeSubfolders(p);
  if (!subs.empty())
    throw FormatError(concat(p, ": no SAE here (no ", kSaeCfgFilename, " with weights, no ",
                             kGemmaScopeFilename, "), but ", subs.size(),
                             subs.size() == 1 ? " subfolder holds one: " : " subfolders hold one: ",
                             detail::nameList(subs), "; load one of them, e.g. ",
                             detail::joinPath(p, subs.front())));
  // A config without weights: let the format's reader name the missing file.
  if (detail::isRegularFile(detail::joinPath(p, kSaeCfgFilename))) {
    const std::string text = detail::readTextFile(detail::joinPath(p, kSaeCfgFilename));
    return text.find("\"architecture\"") == std::string::npos &&
                   text.find("\"num_latents\"") != std::string::npos
               ? SaeFormat::Sparsify
               : SaeFormat::SaeLens;
  }
  throw FormatError(concat(p, ": no SAE found (expected ", kSaeCfgFilename, " with ",
                           kSaeWeightsFilename, " (SAELens) or ", kSparsifyWeightsFilename,
                           " (sparsify), or a Gemma Scope ", kGemmaScopeFilename, ")"));
}

namespace detail {

/// fn(source) for the checked weight source (description, weight plan, open file) of the SAE
/// of format `format` in folder `dir`.
template <typename Fn>
decltype(auto) withSaeSource(SaeFormat format, const std::string& dir, Fn&& fn) {
  switch (format) {
    case SaeFormat::Sparsify:
      return fn(openSparsify(dir));
    case SaeFormat::GemmaScope:
      return fn(openGemmaScope(dir));
    case SaeFormat::SaeLens:
      break;
  }
  return fn(openSaeLens(dir));
}

}  // namespace detail

/// @brief Checks the SAE at `path`, of any format, without reading its weights.
/// @throws as loadSae().
inline SaeDescription describeSae(const std::string& path) {
  const std::string p = detail::saeFolderOf(path);
  return detail::withSaeSource(detectSaeFormat(p), p, [](const auto& src) { return src.desc; });
}

/// @brief Loads the SAE at `path`, of any format (see the file comment).
/// @tparam Scalar float or double.
/// @throws IoError, FormatError or NumericError naming the file and the problem.
template <typename Scalar>
LoadedSae<Scalar> loadSae(const std::string& path) {
  const std::string p = detail::saeFolderOf(path);
  return detail::withSaeSource(detectSaeFormat(p), p,
                               [](const auto& src) { return detail::assembleSae<Scalar>(src); });
}

}  // namespace sae::io
