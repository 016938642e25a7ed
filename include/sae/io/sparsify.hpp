/// @file sparsify.hpp
/// @brief Load and save SAEs in EleutherAI sparsify's on-disk format: a folder with
/// `cfg.json` and `sae.safetensors` (one folder per hookpoint; a training run saves several
/// side by side, e.g. `layers.0/`, `layers.1.mlp/`).
///
/// Facts of the format mirrored here (sparsify's `SparseCoder` and `SparseCoderConfig`, and
/// the older `Sae` / `SaeConfig` of the same project):
/// - cfg.json: the coder's config plus `d_in`: `activation` ("topk"; "groupmax" is another
///   activation), `expansion_factor`, `num_latents` (0: d_in * expansion_factor), `k`,
///   `normalize_decoder`, `multi_topk`, `skip_connection`, `transcode` (and `signed` in early
///   versions);
/// - sae.safetensors: `encoder.weight [num_latents, d_in]` and `encoder.bias [num_latents]`
///   (a torch Linear), `W_dec [num_latents, d_in]`, `b_dec [d_in]`, and `W_skip [d_in, d_in]`
///   with skip_connection;
/// - encode: `relu((x - b_dec) encoder.weight^T + encoder.bias)`, then the k largest per row
///   (a transcoder does not subtract b_dec); decode: `acts W_dec + b_dec` (+ `x W_skip^T`).
///
/// That is SAELens's TopK SAE with W_enc = encoder.weight^T, b_enc = encoder.bias,
/// apply_b_dec_to_input, no normalisation and no decoder-norm rescaling, which is what this
/// reader builds. `normalize_decoder` (a training constraint) and `multi_topk` (a training
/// loss) do not change inference and are only reported. What has no TopK SAE equivalent is
/// refused with a message: activation groupmax, skip connections (`W_skip`), transcoders
/// (their output predicts another activation), signed activations, and the embed_skip /
/// gram_lookup variants of some forks.
#pragma once

#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/io/atomic_write.hpp>
#include <sae/io/dtype.hpp>
#include <sae/io/loaded_sae.hpp>
#include <sae/io/saelens.hpp>
#include <sae/io/safetensors.hpp>
#include <sae/models/topk.hpp>

namespace sae::io {

/// File names inside a sparsify folder.
inline constexpr const char* kSparsifyCfgFilename = "cfg.json";
inline constexpr const char* kSparsifyWeightsFilename = "sae.safetensors";

/// @brief Parses the text of a sparsify cfg.json into an SaeLensConfig (architecture topk);
/// `where` names it in errors.
/// @throws FormatError for malformed JSON, missing or mistyped fields, and settings that have
/// no TopK SAE equivalent (see the file comment).
inline SaeLensConfig parseSparsifyConfig(const std::string& text, const std::string& where) {
  using sae::detail::concat;
  const nlohmann::ordered_json j = detail::parseJsonObject(text, where);
  SaeLensConfig c;
  c.architecture = "topk";
  const std::string activation = detail::stringField(j, "activation", "topk", where);
  if (activation != "topk")
    throw FormatError(concat(where, ": activation '", activation,
                             "' cannot be represented (a TopK SAE needs activation topk)"));
  static const std::pair<const char*, const char*> kRefused[] = {
      {"transcode",
       "a transcoder predicts another activation than its input; it is not an autoencoder"},
      {"skip_connection", "the skip connection W_skip adds x W_skip^T to the output"},
      {"signed", "signed activations keep negative values"},
      {"embed_skip", "the embedding skip connection needs the model's embeddings"},
      {"gram_lookup", "the n-gram lookup needs a table outside the folder"},
  };
  for (const auto& [key, why] : kRefused)
    if (detail::boolField(j, key, false, where))
      throw FormatError(
          concat(where, ": ", key, ": true cannot be represented as a TopK SAE (", why, ")"));
  c.sae_cfg.d_in = detail::positiveIntField(j, "d_in", where);
  Index num_latents = 0;
  if (j.contains("num_latents") && !j.at("num_latents").is_null() &&
      !(j.at("num_latents").is_number_integer() && j.at("num_latents").get<std::int64_t>() == 0))
    num_latents = detail::positiveInt(j.at("num_latents"), "num_latents", where);
  if (num_latents == 0) {
    const Index expansion = j.contains("expansion_factor")
                                ? detail::positiveIntField(j, "expansion_factor", where)
                                : 32;  // sparsify's default
    num_latents = c.sae_cfg.d_in * expansion;
    if (num_latents > Index(INT32_MAX))
      throw FormatError(concat(where, ": d_in * expansion_factor = ", num_latents,
                               " latents do not fit in 32 bits"));
  }
  c.sae_cfg.d_sae = num_latents;
  c.sae_cfg.k = j.contains("k") ? detail::positiveIntField(j, "k", where) : 32;
  if (c.sae_cfg.k > c.sae_cfg.d_sae)
    throw FormatError(concat(where, ": k (", c.sae_cfg.k, ") exceeds the number of latents (",
                             c.sae_cfg.d_sae, ")"));
  c.sae_cfg.apply_b_dec_to_input = true;
  c.sae_cfg.rescale_acts_by_decoder_norm = false;
  if (detail::boolField(j, "multi_topk", false, where))
    c.notes.push_back("multi_topk: a training loss, ignored at inference");
  if (detail::boolField(j, "normalize_decoder", true, where))
    c.notes.push_back("normalize_decoder: a training constraint, nothing to do at inference");
  c.notes.push_back("sparsify encoder.weight [d_sae, d_in] read as W_enc (transposed)");
  return c;
}

namespace detail {

/// A sparsify folder, checked: description, weight plan and the open weights file.
using SparsifySource = WeightSource<SafetensorsFile>;

inline WeightPlan sparsifyPlan() {
  WeightPlan p;
  p.bindings = {{"W_enc", "encoder.weight", TensorTransform::Transpose},
                {"b_enc", "encoder.bias", TensorTransform::Copy},
                {"W_dec", "W_dec", TensorTransform::Copy},
                {"b_dec", "b_dec", TensorTransform::Copy}};
  return p;
}

inline SparsifySource openSparsify(const std::string& dir) {
  using sae::detail::concat;
  if (!isDirectory(dir))
    throw IoError(concat(dir, ": not a directory (expected a sparsify folder with ",
                         kSparsifyCfgFilename, " and ", kSparsifyWeightsFilename, ")"));
  const std::string cfg_path = joinPath(dir, kSparsifyCfgFilename);
  SaeLensConfig cfg =
      parseSparsifyConfig(readTextFile(cfg_path, " (missing sparsify config)"), cfg_path);
  const std::string weights = joinPath(dir, kSparsifyWeightsFilename);
  if (!isRegularFile(weights))
    throw IoError(concat(weights, ": missing (the sparsify folder has ", kSparsifyCfgFilename,
                         " but no weights)"));
  SafetensorsFile file(weights);
  if (file.contains("W_skip"))
    throw FormatError(concat(weights,
                             ": tensor 'W_skip' (a skip connection) cannot be "
                             "represented as a TopK SAE"));
  WeightPlan plan = sparsifyPlan();
  return checkedSource(SaeFormat::Sparsify, dir, weights, std::move(file), std::move(plan),
                       std::move(cfg), kSparsifyCfgFilename, false);
}

}  // namespace detail

/// @brief Loads a sparsify folder (`cfg.json` + `sae.safetensors`) as a TopK SAE.
/// @tparam Scalar float or double.
/// @throws IoError (missing folder or file), FormatError (malformed config or weights, a
/// setting with no TopK equivalent), NumericError (a non-finite weight).
template <typename Scalar>
LoadedSae<Scalar> loadSparsify(const std::string& dir) {
  return detail::assembleSae<Scalar>(detail::openSparsify(dir));
}

/// @brief Options of saveSparsify().
struct SparsifySaveOptions {
  /// Storage type of the weights: F32 (default), F64, F16 or BF16.
  DType dtype = DType::F32;
};

/// @brief Writes a TopK SAE as a sparsify folder `dir` (created when missing): `cfg.json` and
/// `sae.safetensors`, each atomically. With rescale_acts_by_decoder_norm the decoder norms are
/// folded into the encoder first (as saveSaeLens does; sparsify has no rescaling), which
/// leaves the function unchanged. `normalize_decoder` is written true when every decoder row
/// then has unit norm.
/// @throws ConfigError when the SAE has no sparsify equivalent (not TopK, b_dec not subtracted
/// from the input) or a weight does not fit the dtype; IoError when a file cannot be written.
template <typename Scalar>
void saveSparsify(const TopKSAE<Scalar>& model, const std::string& dir,
                  const SparsifySaveOptions& options = {}) {
  const SaeConfig& c = model.config();
  const DType dtype = options.dtype;
  require(dtype == DType::F32 || dtype == DType::F64 || dtype == DType::F16 || dtype == DType::BF16,
          "saveSparsify: weights are stored as float32, float64, float16 or bfloat16, not ",
          dtypeName(dtype));
  require(c.apply_b_dec_to_input,
          "saveSparsify: sparsify always subtracts b_dec from the input; this SAE does not "
          "(apply_b_dec_to_input false)");
  const auto& p = model.parameters();
  RowMatrix<double> W_enc = p.rowMajorCopy("W_enc").template cast<double>();
  RowMatrix<double> b_enc = p.rowMajorCopy("b_enc").template cast<double>();
  RowMatrix<double> W_dec = p.rowMajorCopy("W_dec").template cast<double>();
  const RowMatrix<double> b_dec = p.rowMajorCopy("b_dec").template cast<double>();
  if (c.rescale_acts_by_decoder_norm) detail::foldDecoderNorms(W_enc, b_enc, W_dec);
  bool unit = true;
  for (Index i = 0; i < W_dec.rows(); ++i) unit = unit && std::abs(W_dec.row(i).norm() - 1) < 1e-4;
  std::vector<std::pair<std::string, RowMatrix<double>>> tensors = {
      {"encoder.weight", W_enc.transpose()},
      {"encoder.bias", b_enc},
      {"W_dec", W_dec},
      {"b_dec", b_dec}};
  const std::vector<std::vector<Index>> shapes = {
      {c.d_sae, c.d_in}, {c.d_sae}, {c.d_sae, c.d_in}, {c.d_in}};
  detail::checkStorable(tensors, dtype, dir);
  detail::makeDirectory(dir);
  detail::writeTensors(tensors, shapes, dtype, detail::joinPath(dir, kSparsifyWeightsFilename));

  nlohmann::ordered_json cfg;
  cfg["activation"] = "topk";
  cfg["expansion_factor"] = std::max<Index>(1, c.d_sae / c.d_in);
  cfg["normalize_decoder"] = unit;
  cfg["num_latents"] = c.d_sae;
  cfg["k"] = c.k;
  cfg["multi_topk"] = false;
  cfg["skip_connection"] = false;
  cfg["transcode"] = false;
  cfg["d_in"] = c.d_in;
  writeTextFile(detail::joinPath(dir, kSparsifyCfgFilename), cfg.dump() + "\n");
}

/// @brief Writes a loaded SAE as a sparsify folder; it must be a TopK SAE whose
/// normalize_activations is the identity at inference.
/// @throws ConfigError naming what has no sparsify equivalent.
template <typename Scalar>
void saveSparsify(const LoadedSae<Scalar>& sae, const std::string& dir,
                  const SparsifySaveOptions& options = {}) {
  const auto* topk = std::get_if<TopKSAE<Scalar>>(&sae.model);
  require(topk != nullptr, "saveSparsify: sparsify stores TopK SAEs only; ", sae.path, " is a ",
          sae.config.architecture, " SAE");
  require(sae.normalizer().isIdentity(), "saveSparsify: sparsify has no input normalisation; ",
          sae.path, " uses normalize_activations '", sae.config.normalize_activations, "'");
  saveSparsify(*topk, dir, options);
}

}  // namespace sae::io
