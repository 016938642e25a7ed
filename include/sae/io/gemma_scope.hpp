/// @file gemma_scope.hpp
/// @brief Load Gemma Scope SAEs: a `params.npz` archive (`np.savez`) holding `W_enc [d_in,
/// d_sae]`, `W_dec [d_sae, d_in]`, `b_enc [d_sae]`, `b_dec [d_in]` and `threshold [d_sae]`.
///
/// Gemma Scope SAEs are JumpReLU SAEs: `h = x W_enc + b_enc`, `f = h * 1[h > threshold]`
/// (thresholds are positive), `y = f W_dec + b_dec`. The input is used as it is: b_dec is
/// not subtracted first (SAELens's Gemma Scope loader sets apply_b_dec_to_input to false), and
/// there is no normalisation. Some archives name the weights `w_enc` / `w_dec`; SAELens renames
/// `w_*` to `W_*`, and so does this reader.
///
/// SAELens additionally rescales the weights of Gemma Scope's *embedding* SAEs by sqrt(d_in),
/// chosen by the folder name of the release; that release-specific adjustment is not made
/// here (the weights are used as stored).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <sae/core/error.hpp>
#include <sae/io/loaded_sae.hpp>
#include <sae/io/npz.hpp>

namespace sae::io {

/// File name of a Gemma Scope SAE inside its folder.
inline constexpr const char* kGemmaScopeFilename = "params.npz";

namespace detail {

/// A Gemma Scope archive, checked: description, weight plan and the open archive.
using GemmaScopeSource = WeightSource<NpzFile>;

inline GemmaScopeSource openGemmaScope(const std::string& path) {
  using sae::detail::concat;
  const std::string file_path = isDirectory(path) ? joinPath(path, kGemmaScopeFilename) : path;
  if (!isRegularFile(file_path))
    throw IoError(
        concat(file_path, ": missing (expected a Gemma Scope ", kGemmaScopeFilename, ")"));
  NpzFile file(file_path);
  WeightPlan plan;
  for (const char* p : {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}) {
    std::string source = p;
    if (!file.contains(source) && source[0] == 'W') source[0] = 'w';
    if (!file.contains(source)) source = p;  // reported as missing by checkWeightPlan
    plan.bindings.push_back({p, source, TensorTransform::Copy});
  }
  const TensorBinding& enc = plan.bindings[0];
  if (!file.contains(enc.source))
    throw FormatError(concat(file_path,
                             ": missing array 'W_enc' for a Gemma Scope SAE (arrays "
                             "present: ",
                             nameList(file.names()), ")"));
  const NpzArrayInfo& w = file.info(enc.source);
  if (w.shape.size() != 2 || w.shape[0] <= 0 || w.shape[1] <= 0 || w.shape[1] > Index(INT32_MAX))
    throw FormatError(concat(file_path, ": array '", enc.source, "' has shape ", shapeText(w.shape),
                             ", expected [d_in, d_sae]"));
  SaeLensConfig cfg;
  cfg.architecture = "jumprelu";
  cfg.sae_cfg.d_in = w.shape[0];
  cfg.sae_cfg.d_sae = w.shape[1];
  cfg.sae_cfg.apply_b_dec_to_input = false;
  cfg.normalize_activations = "none";
  cfg.notes.push_back(
      "Gemma Scope params.npz: a JumpReLU SAE, b_dec not subtracted from the input");
  if (enc.source != enc.param) cfg.notes.push_back("arrays w_enc / w_dec read as W_enc / W_dec");

  return checkedSource(SaeFormat::GemmaScope, path, file_path, std::move(file), std::move(plan),
                       std::move(cfg), "the shape of W_enc", false);
}

}  // namespace detail

/// @brief Loads a Gemma Scope `params.npz` (or a folder holding one) as a JumpReLU SAE.
/// @tparam Scalar float or double.
/// @throws IoError (missing file), FormatError (not an uncompressed npz, missing / misshapen /
/// extra array, non-float dtype), NumericError (a non-finite weight).
template <typename Scalar>
LoadedSae<Scalar> loadGemmaScope(const std::string& path) {
  return detail::assembleSae<Scalar>(detail::openGemmaScope(path));
}

}  // namespace sae::io
