/// @file saelens.hpp
/// @brief Save and load SAEs in SAELens's on-disk format (a folder with `cfg.json`,
/// `sae_weights.safetensors` and optionally `sparsity.safetensors`), so that
/// `sae_lens.SAE.load_from_disk(DIR)` reads what this library writes and vice versa.
///
/// Facts of the format mirrored here (SAELens 6, `save_inference_model` and its constants):
/// - file names `cfg.json`, `sae_weights.safetensors`, `sparsity.safetensors`;
/// - cfg.json holds `architecture` ("standard", "gated", "topk", "jumprelu"), `d_in`, `d_sae`,
///   `dtype`
///   ("float32", "float64", "float16", "bfloat16"; SAELens also writes "torch.float32"...),
///   `device`, `apply_b_dec_to_input`, `normalize_activations` ("none",
///   "expected_average_only_in", "constant_norm_rescale", "layer_norm"; see
///   models/normalization.hpp for what each does), `reshape_activations`, `metadata{...}` with
///   `sae_lens_version` (SAELens parses a config without a version >= 6.0 as a pre-6.0 one),
///   and for topk `k` and `rescale_acts_by_decoder_norm`;
/// - weight tensors under SAELens names in row-major order (`W_enc [d_in, d_sae]`,
///   `W_dec [d_sae, d_in]`, `b_enc`, `b_dec`; gated: `b_gate`, `b_mag`, `r_mag`, no `b_enc`;
///   jumprelu: `threshold`), stored in name order, all in the dtype of cfg.json. A JumpReLU
///   training checkpoint of SAELens < 6.48 holds `log_threshold` instead (threshold = exp);
///   a BatchTopK / Matryoshka SAE is saved for inference as a jumprelu SAE;
/// - a TopK SAE with rescale_acts_by_decoder_norm is saved with the decoder norms folded in
///   (`W_enc * n`, `b_enc * n`, `W_dec / n`), which leaves its function unchanged;
/// - a BatchTopK or Matryoshka BatchTopK SAE is saved as the JumpReLU SAE of toJumpReLU()
///   (`architecture` "jumprelu", `threshold` = its `topk_threshold`), with
///   `metadata.training_architecture` naming what was trained;
/// - `sparsity.safetensors` holds one tensor `sparsity [d_sae]`: log10 of each latent's firing
///   frequency plus 1e-10.
///
/// Pre-6.0 configs (SAELens 0.x - 5.x, as its `handle_pre_6_0_config` and the 3.x-5.x `SAE`
/// class read them) are read too: `hook_point` / `hook_point_layer` / `hook_point_head_index`
/// for the `hook_*` names, which go to `metadata` with the other top-level run fields;
/// `activation_fn_str` or `activation_fn` ("relu"; "topk" with `activation_fn_kwargs.k`, which
/// makes a "standard" or architecture-less SAE a TopK one; anything else, such as "tanh-relu",
/// cannot be represented); a missing `architecture` (standard); a boolean
/// `normalize_activations` (true = expected_average_only_in); and the decoder-input scale of
/// `finetuning_scaling_factor` (a `scaling_factor` or `finetuning_scaling_factor` tensor:
/// dropped when all ones, as SAELens does, else folded into the rows of W_dec). A
/// `reshape_activations` of "hook_z" only flattens `[..., n_heads, d_head]` inputs, which are
/// given here already flat as `[tokens, n_heads * d_head]`.
#pragma once

#include <sys/stat.h>
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/io/atomic_write.hpp>
#include <sae/io/dtype.hpp>
#include <sae/io/loaded_sae.hpp>
#include <sae/io/safetensors.hpp>
#include <sae/models/batchtopk.hpp>
#include <sae/models/matryoshka.hpp>
#include <sae/models/normalization.hpp>
#include <sae/models/sparse_autoencoder.hpp>

namespace sae::io {

/// File names inside an SAELens SAE folder.
inline constexpr const char* kSaeCfgFilename = "cfg.json";
inline constexpr const char* kSaeWeightsFilename = "sae_weights.safetensors";
inline constexpr const char* kSparsityFilename = "sparsity.safetensors";
/// Name of the tensor of `sparsity.safetensors`.
inline constexpr const char* kSparsityTensorName = "sparsity";

/// @brief The DType of a torch dtype name as configs write it ("float32", "torch.bfloat16",
/// "float", "half"...); false for a name that is not a floating-point type SAEs are stored in.
inline bool parseTorchDType(std::string name, DType& out) {
  if (name.rfind("torch.", 0) == 0) name = name.substr(6);
  if (name == "float32" || name == "float") {
    out = DType::F32;
  } else if (name == "float64" || name == "double") {
    out = DType::F64;
  } else if (name == "float16" || name == "half") {
    out = DType::F16;
  } else if (name == "bfloat16") {
    out = DType::BF16;
  } else {
    return false;
  }
  return true;
}

namespace detail {

/// The SAELens version a config was written by ("" when it says none): top-level
/// `sae_lens_version`, then `metadata` / `meta`, as SAELens looks for it.
inline std::string saeLensVersion(const nlohmann::ordered_json& j) {
  auto get = [](const nlohmann::ordered_json& o) -> std::string {
    if (o.is_object() && o.contains("sae_lens_version") && o.at("sae_lens_version").is_string())
      return o.at("sae_lens_version").get<std::string>();
    return "";
  };
  std::string v = get(j);
  for (const char* key : {"metadata", "meta"})
    if (v.empty() && j.contains(key)) v = get(j.at(key));
  return v;
}

/// Leading integer of a version string; -1 when there is none.
inline int majorVersion(const std::string& v) {
  if (v.empty() || v[0] < '0' || v[0] > '9') return -1;
  return std::atoi(v.c_str());
}

/// The run fields a pre-6.0 config keeps at top level and SAELens 6 keeps in `metadata`,
/// with the older names renamed.
inline void collectLegacyMetadata(const nlohmann::ordered_json& j, nlohmann::ordered_json& meta,
                                  std::vector<std::string>& notes) {
  static const std::pair<const char*, const char*> kFields[] = {
      {"model_name", "model_name"},
      {"model_class_name", "model_class_name"},
      {"hook_name", "hook_name"},
      {"hook_point", "hook_name"},
      {"hook_layer", "hook_layer"},
      {"hook_point_layer", "hook_layer"},
      {"hook_head_index", "hook_head_index"},
      {"hook_point_head_index", "hook_head_index"},
      {"model_from_pretrained_kwargs", "model_from_pretrained_kwargs"},
      {"prepend_bos", "prepend_bos"},
      {"exclude_special_tokens", "exclude_special_tokens"},
      {"neuronpedia_id", "neuronpedia_id"},
      {"context_size", "context_size"},
      {"seqpos_slice", "seqpos_slice"},
      {"dataset_path", "dataset_path"},
      {"dataset_trust_remote_code", "dataset_trust_remote_code"},
      {"sae_lens_training_version", "sae_lens_training_version"},
  };
  for (const auto& [from, to] : kFields) {
    if (!j.contains(from) || meta.contains(to)) continue;
    meta[to] = j.at(from);
    if (std::string(from) != to)
      notes.push_back(sae::detail::concat("'", from, "' read as metadata.", to));
  }
}

}  // namespace detail

/// @brief Parses the text of an SAELens cfg.json (SAELens 6, or pre-6.0: see the file
/// comment); `where` names it in errors.
/// @throws FormatError for malformed JSON, a missing or mistyped field, an unsupported
/// architecture, activation function, dtype or normalisation (listing the supported ones).
inline SaeLensConfig parseSaeLensConfig(const std::string& text, const std::string& where) {
  using sae::detail::concat;
  const nlohmann::ordered_json j = detail::parseJsonObject(text, where);
  SaeLensConfig c;
  const std::string version = detail::saeLensVersion(j);
  const bool legacy = detail::majorVersion(version) < 6;
  if (legacy)
    c.notes.push_back(version.empty()
                          ? "pre-6.0 SAELens config (no sae_lens_version)"
                          : concat("pre-6.0 SAELens config (sae_lens_version ", version, ")"));

  // Activation function of pre-6.0 configs.
  std::string act = "relu";
  std::string act_key;
  for (const char* key : {"activation_fn", "activation_fn_str"}) {
    if (j.contains(key) && !j.at(key).is_null()) {
      act = detail::stringField(j, key, "relu", where);
      act_key = key;
    }
  }

  // Architecture.
  if (j.contains("architecture") && !j.at("architecture").is_null()) {
    c.architecture = detail::stringField(j, "architecture", "", where);
  } else {
    c.architecture = act == "topk" ? "topk" : "standard";
    c.notes.push_back(concat("no 'architecture' field: read as ", c.architecture));
  }
  if (act == "topk" && c.architecture == "standard") {
    c.architecture = "topk";
    c.notes.push_back("architecture 'standard' with " + act_key + " 'topk': read as topk");
  }
  const std::string arch = c.architecture;
  if (!isArchitecture<LoadableArchitectures>(arch)) {
    std::string hint;
    if (isArchitecture(arch))
      hint =
          concat("; this is a training checkpoint: SAELens's save_inference_model writes it as a ",
                 architectureInfo(arch).saved_as, " SAE");
    throw FormatError(concat(where, ": unsupported architecture '", arch,
                             "' (supported: ", loadableArchitectureNames(), ")", hint));
  }
  if (act != "relu" && act != "topk")
    throw FormatError(concat(where, ": activation function '", act, "' (", act_key,
                             ") cannot be represented (supported: relu; topk with "
                             "activation_fn_kwargs.k)"));
  if (act == "topk" && arch != "topk")
    throw FormatError(concat(where, ": ", act_key, " 'topk' with architecture '", arch,
                             "' cannot be represented (topk needs architecture topk or standard)"));

  c.sae_cfg.d_in = detail::positiveIntField(j, "d_in", where);
  c.sae_cfg.d_sae = detail::positiveIntField(j, "d_sae", where);
  c.sae_cfg.apply_b_dec_to_input = detail::boolField(j, "apply_b_dec_to_input", true, where);
  if (architectureInfo(arch).uses_k) {
    if (j.contains("k") && !j.at("k").is_null()) {
      c.sae_cfg.k = detail::positiveInt(j.at("k"), "k", where);
    } else if (j.contains("activation_fn_kwargs") && j.at("activation_fn_kwargs").is_object() &&
               j.at("activation_fn_kwargs").contains("k")) {
      c.sae_cfg.k = detail::positiveInt(j.at("activation_fn_kwargs").at("k"),
                                        "activation_fn_kwargs.k", where);
    } else {
      throw FormatError(concat(where, ": missing field 'k' (or, pre-6.0, activation_fn_kwargs.k)"));
    }
    if (c.sae_cfg.k > c.sae_cfg.d_sae)
      throw FormatError(
          concat(where, ": k (", c.sae_cfg.k, ") exceeds d_sae (", c.sae_cfg.d_sae, ")"));
    c.sae_cfg.rescale_acts_by_decoder_norm =
        detail::boolField(j, "rescale_acts_by_decoder_norm", false, where);
  }

  const std::string dtype = detail::stringField(j, "dtype", "float32", where);
  DType dt{};
  if (!parseTorchDType(dtype, dt))
    throw FormatError(concat(where, ": unsupported dtype '", dtype,
                             "' (supported: float32, float64, float16, bfloat16)"));
  c.dtype = dtypeName(dt);

  if (j.contains("normalize_activations") && j.at("normalize_activations").is_boolean()) {
    const bool on = j.at("normalize_activations").get<bool>();
    c.normalize_activations = on ? "expected_average_only_in" : "none";
    c.notes.push_back(concat("normalize_activations ", on ? "true" : "false", " read as '",
                             c.normalize_activations, "'"));
  } else {
    c.normalize_activations = detail::stringField(j, "normalize_activations", "none", where);
    NormalizeActivations m;
    if (!parseNormalizeActivations(c.normalize_activations, m))
      throw FormatError(concat(where, ": unsupported normalize_activations '",
                               c.normalize_activations,
                               "' (supported: ", kNormalizeActivationsNames, ")"));
  }
  c.reshape_activations = detail::stringField(j, "reshape_activations", "none", where);
  if (c.reshape_activations != "none" && c.reshape_activations != "hook_z")
    throw FormatError(concat(where, ": unsupported reshape_activations '", c.reshape_activations,
                             "' (supported: none, hook_z)"));
  c.finetuning_scaling_factor = detail::boolField(j, "finetuning_scaling_factor", false, where);

  for (const char* key : {"metadata", "meta"}) {
    if (j.contains(key) && j.at(key).is_object()) {
      c.metadata = j.at(key);
      break;
    }
  }
  detail::collectLegacyMetadata(j, c.metadata, c.notes);
  return c;
}

/// @brief Reads `dir/cfg.json`.
/// @throws IoError when the folder or file is missing, FormatError when it is malformed.
inline SaeLensConfig readSaeLensConfig(const std::string& dir) {
  if (!detail::isDirectory(dir))
    throw IoError(sae::detail::concat(dir, ": not a directory (expected an SAE folder with ",
                                      kSaeCfgFilename, " and ", kSaeWeightsFilename, ")"));
  const std::string path = detail::joinPath(dir, kSaeCfgFilename);
  return parseSaeLensConfig(detail::readTextFile(path, " (missing SAE config)"), path);
}

namespace detail {

/// An SAELens folder, checked: description, weight plan and the open weights file.
using SaeLensSource = WeightSource<SafetensorsFile>;

inline SaeLensSource openSaeLens(const std::string& dir) {
  using sae::detail::concat;
  SaeLensConfig cfg = readSaeLensConfig(dir);
  const std::string weights = joinPath(dir, kSaeWeightsFilename);
  if (!isRegularFile(weights))
    throw IoError(
        concat(weights, ": missing (the SAE folder has ", kSaeCfgFilename, " but no weights)"));
  SafetensorsFile file(weights);
  WeightPlan plan = WeightPlan::identity(cfg.architecture, cfg.sae_cfg);
  if (cfg.architecture == "jumprelu" && !file.contains("threshold") &&
      file.contains("log_threshold")) {
    for (auto& b : plan.bindings)
      if (b.param == "threshold") b = {"threshold", "log_threshold", TensorTransform::Exp};
    cfg.notes.push_back("tensor 'log_threshold' (SAELens < 6.48 training) read as threshold = exp");
  }

  // Pre-6.0 decoder-input scale (finetuning_scaling_factor).
  for (const char* name : {"scaling_factor", "finetuning_scaling_factor"}) {
    if (!file.contains(name)) continue;
    const TensorInfo& t = file.info(name);
    DType dt{};
    if (t.shape != std::vector<Index>{cfg.sae_cfg.d_sae} || !floatDType(file, name, dt))
      throw FormatError(concat(weights, ": tensor '", name, "' (", t.dtype, " ", shapeText(t.shape),
                               ") must be a float tensor [d_sae] = [", cfg.sae_cfg.d_sae, "]"));
    const RowMatrix<double> s = readFinite<double>(file, name);
    if ((s.array() == 1.0).all()) {
      plan.ignored.push_back(name);
      cfg.notes.push_back(concat("tensor '", name, "' is all ones: ignored"));
      continue;
    }
    if (!cfg.finetuning_scaling_factor)
      throw FormatError(concat(weights, ": tensor '", name,
                               "' is not all ones, but cfg.json does not set "
                               "finetuning_scaling_factor: true"));
    if (!plan.decoder_row_scale.empty())
      throw FormatError(concat(weights, ": both '", plan.decoder_row_scale, "' and '", name,
                               "' scale the decoder input"));
    if (architectureInfo(cfg.architecture).uses_k && cfg.sae_cfg.rescale_acts_by_decoder_norm)
      throw FormatError(concat(weights, ": a decoder-input scale '", name,
                               "' with rescale_acts_by_decoder_norm cannot be represented"));
    plan.decoder_row_scale = name;
    cfg.notes.push_back(
        concat("tensor '", name, "' (finetuning_scaling_factor) folded into the rows of W_dec"));
  }

  SaeLensSource src = checkedSource(SaeFormat::SaeLens, dir, weights, std::move(file),
                                    std::move(plan), std::move(cfg), kSaeCfgFilename, true);
  const std::string sparsity = joinPath(dir, kSparsityFilename);
  if (isRegularFile(sparsity)) src.desc.sparsity_path = sparsity;
  return src;
}

}  // namespace detail

/// @brief Loads an SAE folder written by SAELens (6 or earlier) or by saveSaeLens().
/// @tparam Scalar float or double (weights stored as F32, F64, F16 or BF16 are widened).
/// @throws IoError (missing folder or file), FormatError (malformed config, unsupported
/// architecture, missing / extra / misshapen tensor, non-float dtype), NumericError (a
/// non-finite weight).
template <typename Scalar>
LoadedSae<Scalar> loadSaeLens(const std::string& dir) {
  return detail::assembleSae<Scalar>(detail::openSaeLens(dir));
}

/// @brief Options of saveSaeLens().
struct SaeLensSaveOptions {
  /// The model was trained on `input_scale * x` (expected_average_only_in normalisation):
  /// fold the scale into the weights so the saved SAE works on raw activations (SAELens's
  /// fold_activation_norm_scaling_factor: W_enc * s, W_dec / s, b_dec / s).
  double input_scale = 1.0;
  /// Extra fields of cfg.json's `metadata` object (`sae_lens_version` is always set to
  /// kSaeLensFormatVersion, the format written).
  nlohmann::ordered_json metadata = nlohmann::ordered_json::object();
  /// Per-latent firing frequency; when non-empty, sparsity.safetensors is written with its
  /// log10 (+1e-10) as SAELens does.
  Eigen::VectorXd feature_density;
  /// Alternatively, the log10 sparsity itself (as readSparsity() returns it), written as is.
  Eigen::VectorXd log_sparsity;
  /// Storage type of the weights: F32 (default), F64, F16 or BF16; cfg.json's dtype follows.
  DType dtype = DType::F32;
  /// cfg.json's normalize_activations (one of kNormalizeActivationsNames).
  std::string normalize_activations = "none";
  /// cfg.json's reshape_activations ("none" or "hook_z").
  std::string reshape_activations = "none";
  /// TopK with rescale_acts_by_decoder_norm: fold the decoder norms into the encoder before
  /// writing, as SAELens's save_inference_model does (true, the default, for a trained model).
  /// Either way the function is the same: cfg.json keeps rescale_acts_by_decoder_norm. The
  /// saveSaeLens() overload for a loaded SAE writes its weights as read (false), so that
  /// rewriting a folder in its own dtype changes nothing.
  bool fold_decoder_norms = true;
};

namespace detail {

/// True when `v` (>= 0) stays finite once stored as `t`.
inline bool representable(double v, DType t) {
  switch (t) {
    case DType::F16:
      return std::isfinite(halfToFloat(doubleToHalf(v)));
    case DType::BF16:
      return std::isfinite(bfloat16ToFloat(doubleToBfloat16(v)));
    case DType::F32:
      return std::isfinite(static_cast<float>(v));
    default:
      return std::isfinite(v);
  }
}

/// Checks that every tensor is finite and fits the storage type; ConfigError naming it.
inline void checkStorable(const std::vector<std::pair<std::string, RowMatrix<double>>>& tensors,
                          DType dtype, const std::string& dir) {
  for (const auto& [name, m] : tensors) {
    require(m.allFinite(), dir, ": parameter '", name, "' has a non-finite value");
    const double peak = m.size() ? m.cwiseAbs().maxCoeff() : 0.0;
    require(representable(peak, dtype), dir, ": parameter '", name, "' has a value of magnitude ",
            peak, ", beyond the range of ", dtypeName(dtype));
  }
}

/// Creates `dir` (one level) unless it exists; IoError otherwise.
inline void makeDirectory(const std::string& dir) {
  if (!isDirectory(dir) && ::mkdir(dir.c_str(), 0777) != 0 && !isDirectory(dir))
    throw IoError(sae::detail::concat(dir, ": cannot create the directory: ", errnoText(errno)));
}

/// Writes `tensors` (sorted by name) as a safetensors file stored as `dtype`.
inline void writeTensors(std::vector<std::pair<std::string, RowMatrix<double>>>& tensors,
                         const std::vector<std::vector<Index>>& shapes, DType dtype,
                         const std::string& path) {
  std::vector<std::size_t> order(tensors.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](std::size_t a, std::size_t b) { return tensors[a].first < tensors[b].first; });
  SafetensorsWriter w;
  for (const std::size_t i : order)
    w.add(tensors[i].first, shapes[i], tensors[i].second.data(), dtype);
  w.write(path);
}

}  // namespace detail

/// @brief Writes `model` as an SAELens SAE folder `dir` (created when missing): cfg.json,
/// sae_weights.safetensors (in options.dtype) and, with a density, sparsity.safetensors.
/// Each file is written atomically, cfg.json last.
/// @throws ConfigError for bad options, a non-finite weight or one beyond the dtype's range;
/// IoError when a file cannot be written.
template <typename Scalar, typename Arch>
void saveSaeLens(const SparseAutoencoder<Scalar, Arch>& model, const std::string& dir,
                 const SaeLensSaveOptions& options = {}) {
  if constexpr (std::is_base_of_v<sae::detail::BatchTopKFamily, Arch>) {
    SaeLensSaveOptions o = options;
    if (!o.metadata.contains("training_architecture"))
      o.metadata["training_architecture"] = Arch::kName;
    saveSaeLens(toJumpReLU(model), dir, o);
    return;
  }
  const double s = options.input_scale;
  require(std::isfinite(s) && s > 0, "saveSaeLens: input_scale must be finite and > 0, found ", s);
  const DType dtype = options.dtype;
  require(dtype == DType::F32 || dtype == DType::F64 || dtype == DType::F16 || dtype == DType::BF16,
          "saveSaeLens: weights are stored as float32, float64, float16 or bfloat16, not ",
          dtypeName(dtype));
  NormalizeActivations mode;
  require(parseNormalizeActivations(options.normalize_activations, mode),
          "saveSaeLens: unknown normalize_activations '", options.normalize_activations,
          "' (supported: ", kNormalizeActivationsNames, ")");
  require(options.reshape_activations == "none" || options.reshape_activations == "hook_z",
          "saveSaeLens: unknown reshape_activations '", options.reshape_activations,
          "' (supported: none, hook_z)");
  const SaeConfig& c = model.config();
  require(options.feature_density.size() == 0 || options.feature_density.size() == c.d_sae,
          "saveSaeLens: feature density has ", options.feature_density.size(),
          " entries, expected d_sae = ", c.d_sae);
  require(options.log_sparsity.size() == 0 || options.log_sparsity.size() == c.d_sae,
          "saveSaeLens: log sparsity has ", options.log_sparsity.size(),
          " entries, expected d_sae = ", c.d_sae);

  const auto& params = model.parameters();
  std::vector<std::pair<std::string, RowMatrix<double>>> tensors;
  std::vector<std::vector<Index>> shapes;
  for (const auto& e : params.entries()) {
    tensors.emplace_back(e.name, params.rowMajorCopy(e.name).template cast<double>());
    shapes.push_back(e.shape);
  }
  auto tensor = [&](const std::string& name) -> RowMatrix<double>& {
    for (auto& t : tensors)
      if (t.first == name) return t.second;
    throw ConfigError("saveSaeLens: no tensor " + name);
  };
  if (s != 1.0) {
    tensor("W_enc") *= s;
    tensor("W_dec") /= s;
    tensor("b_dec") /= s;
  }
  if (ArchitectureTraits<Arch>::uses_k && c.rescale_acts_by_decoder_norm &&
      options.fold_decoder_norms) {
    detail::foldDecoderNorms(tensor("W_enc"), tensor("b_enc"), tensor("W_dec"));
  }
  detail::checkStorable(tensors, dtype, dir);
  detail::makeDirectory(dir);
  detail::writeTensors(tensors, shapes, dtype, detail::joinPath(dir, kSaeWeightsFilename));

  if (options.feature_density.size() > 0 || options.log_sparsity.size() > 0) {
    Eigen::VectorXf log_density(c.d_sae);
    for (Index i = 0; i < c.d_sae; ++i)
      log_density[i] = options.feature_density.size() > 0
                           ? float(std::log10(options.feature_density[i] + 1e-10))
                           : float(options.log_sparsity[i]);
    SafetensorsWriter sw;
    sw.add(kSparsityTensorName, log_density);
    sw.write(detail::joinPath(dir, kSparsityFilename));
  }

  SaeLensConfig cfg;
  cfg.architecture = Arch::kName;
  cfg.sae_cfg = c;
  cfg.dtype = dtypeName(dtype);
  cfg.normalize_activations = options.normalize_activations;
  cfg.reshape_activations = options.reshape_activations;
  cfg.metadata = options.metadata.is_object() ? options.metadata : nlohmann::ordered_json::object();
  cfg.metadata["sae_lens_version"] = kSaeLensFormatVersion;
  writeTextFile(detail::joinPath(dir, kSaeCfgFilename), cfg.toJson().dump(2) + "\n");
}

/// @brief Writes a loaded SAE (of any source format) as an SAELens folder, keeping its
/// normalize_activations, reshape_activations and metadata (`options.metadata` adds to it),
/// and its weights as read (no decoder-norm folding).
template <typename Scalar>
void saveSaeLens(const LoadedSae<Scalar>& sae, const std::string& dir,
                 const SaeLensSaveOptions& options = {}) {
  SaeLensSaveOptions o = options;
  o.fold_decoder_norms = false;
  o.normalize_activations = sae.config.normalize_activations;
  o.reshape_activations = sae.config.reshape_activations;
  o.metadata = sae.config.metadata;
  if (options.metadata.is_object())
    for (const auto& [k, v] : options.metadata.items()) o.metadata[k] = v;
  std::visit([&](const auto& model) { saveSaeLens(model, dir, o); }, sae.model);
}

/// @brief Reads sparsity.safetensors of an SAE folder: log10 feature density per latent.
/// @throws IoError when missing, FormatError when it has no `sparsity` tensor.
inline Eigen::VectorXd readSparsity(const std::string& dir) {
  const SafetensorsFile f(detail::joinPath(dir, kSparsityFilename));
  const RowMatrix<double> m = f.read<double>(kSparsityTensorName);
  return Eigen::Map<const Eigen::VectorXd>(m.data(), m.size());
}

}  // namespace sae::io
