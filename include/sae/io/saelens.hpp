/// @file saelens.hpp
/// @brief Save and load SAEs in SAELens's on-disk format (a folder with `cfg.json`,
/// `sae_weights.safetensors` and optionally `sparsity.safetensors`), so that
/// `sae_lens.SAE.load_from_disk(DIR)` reads what this library writes and vice versa.
///
/// Facts of the format mirrored here (SAELens 6, `save_inference_model` and its constants):
/// - file names `cfg.json`, `sae_weights.safetensors`, `sparsity.safetensors`;
/// - cfg.json holds `architecture` ("standard", "gated", "topk" are supported here), `d_in`,
///   `d_sae`, `dtype`, `device`, `apply_b_dec_to_input`, `normalize_activations`,
///   `reshape_activations`, `metadata{...}`, and for topk `k` and
///   `rescale_acts_by_decoder_norm`;
/// - weight tensors under SAELens names in row-major order (`W_enc [d_in, d_sae]`,
///   `W_dec [d_sae, d_in]`, `b_enc`, `b_dec`; gated: `b_gate`, `b_mag`, `r_mag`, no `b_enc`),
///   stored in name order;
/// - a TopK SAE with rescale_acts_by_decoder_norm is saved with the decoder norms folded in
///   (`W_enc * n`, `b_enc * n`, `W_dec / n`), which leaves its function unchanged;
/// - a BatchTopK or Matryoshka BatchTopK SAE is saved as the JumpReLU SAE of toJumpReLU()
///   (`architecture` "jumprelu", `threshold` = its `topk_threshold`), with
///   `metadata.training_architecture` naming what was trained;
/// - `sparsity.safetensors` holds one tensor `sparsity [d_sae]`: log10 of each latent's firing
///   frequency plus 1e-10.
#pragma once

#include <sys/stat.h>
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/io/atomic_write.hpp>
#include <sae/io/safetensors.hpp>
#include <sae/models/batchtopk.hpp>
#include <sae/models/gated.hpp>
#include <sae/models/matryoshka.hpp>
#include <sae/models/sparse_autoencoder.hpp>
#include <sae/models/standard.hpp>
#include <sae/models/topk.hpp>

namespace sae::io {

/// File names inside an SAELens SAE folder.
inline constexpr const char* kSaeCfgFilename = "cfg.json";
inline constexpr const char* kSaeWeightsFilename = "sae_weights.safetensors";
inline constexpr const char* kSparsityFilename = "sparsity.safetensors";
/// Name of the tensor of `sparsity.safetensors`.
inline constexpr const char* kSparsityTensorName = "sparsity";

/// @brief The fields of an SAELens `cfg.json` that this library uses.
struct SaeLensConfig {
  std::string architecture;                    ///< "standard", "gated" or "topk".
  SaeConfig sae_cfg;                           ///< d_in, d_sae, k, the two flags.
  std::string dtype = "float32";               ///< dtype of the weights as written.
  std::string normalize_activations = "none";  ///< "none" or "layer_norm".
  nlohmann::ordered_json metadata = nlohmann::ordered_json::object();  ///< `metadata{}`.

  /// @brief The cfg.json object written by saveSaeLens.
  nlohmann::ordered_json toJson() const {
    nlohmann::ordered_json j;
    j["architecture"] = architecture;
    j["d_in"] = sae_cfg.d_in;
    j["d_sae"] = sae_cfg.d_sae;
    j["dtype"] = dtype;
    j["device"] = "cpu";
    j["apply_b_dec_to_input"] = sae_cfg.apply_b_dec_to_input;
    j["normalize_activations"] = normalize_activations;
    j["reshape_activations"] = "none";
    if (architecture == "topk") {
      j["k"] = sae_cfg.k;
      j["rescale_acts_by_decoder_norm"] = sae_cfg.rescale_acts_by_decoder_norm;
    }
    j["metadata"] = metadata;
    return j;
  }
};

namespace detail {

inline bool isDirectory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

inline bool isRegularFile(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

inline std::string joinPath(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}

inline const nlohmann::ordered_json& field(const nlohmann::ordered_json& j, const char* name,
                                           const std::string& where) {
  if (!j.contains(name))
    throw FormatError(sae::detail::concat(where, ": missing field '", name, "'"));
  return j.at(name);
}

inline Index positiveIntField(const nlohmann::ordered_json& j, const char* name,
                              const std::string& where) {
  const auto& v = field(j, name, where);
  if (!v.is_number_integer() || v.get<std::int64_t>() <= 0)
    throw FormatError(sae::detail::concat(where, ": field '", name,
                                          "' must be a positive integer, found ", v.dump()));
  return v.get<Index>();
}

inline bool boolField(const nlohmann::ordered_json& j, const char* name, bool fallback,
                      const std::string& where) {
  if (!j.contains(name) || j.at(name).is_null()) return fallback;
  if (!j.at(name).is_boolean())
    throw FormatError(sae::detail::concat(where, ": field '", name,
                                          "' must be true or false, found ", j.at(name).dump()));
  return j.at(name).get<bool>();
}

/// Tensor names of an architecture, in the order the model adds them after W_enc.
inline std::vector<std::string> saeTensorNames(const std::string& arch) {
  if (arch == "gated") return {"W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec"};
  return {"W_enc", "b_enc", "W_dec", "b_dec"};
}

}  // namespace detail

/// @brief Parses the text of an SAELens cfg.json; `where` names it in errors.
/// @throws FormatError for malformed JSON, a missing or mistyped field, or an architecture
/// other than standard, gated and topk.
inline SaeLensConfig parseSaeLensConfig(const std::string& text, const std::string& where) {
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(sae::detail::concat(where, ": not valid JSON: ", e.what()));
  }
  if (!j.is_object())
    throw FormatError(
        sae::detail::concat(where, ": expected a JSON object, found ", j.type_name()));
  SaeLensConfig c;
  const auto& arch = detail::field(j, "architecture", where);
  if (!arch.is_string())
    throw FormatError(
        sae::detail::concat(where, ": field 'architecture' must be a string, found ", arch.dump()));
  c.architecture = arch.get<std::string>();
  if (c.architecture != "standard" && c.architecture != "gated" && c.architecture != "topk")
    throw FormatError(sae::detail::concat(where, ": unsupported architecture '", c.architecture,
                                          "' (supported: standard, gated, topk)"));
  c.sae_cfg.d_in = detail::positiveIntField(j, "d_in", where);
  c.sae_cfg.d_sae = detail::positiveIntField(j, "d_sae", where);
  c.sae_cfg.apply_b_dec_to_input = detail::boolField(j, "apply_b_dec_to_input", true, where);
  if (c.architecture == "topk") {
    c.sae_cfg.k = detail::positiveIntField(j, "k", where);
    if (c.sae_cfg.k > c.sae_cfg.d_sae)
      throw FormatError(sae::detail::concat(where, ": k (", c.sae_cfg.k, ") exceeds d_sae (",
                                            c.sae_cfg.d_sae, ")"));
    c.sae_cfg.rescale_acts_by_decoder_norm =
        detail::boolField(j, "rescale_acts_by_decoder_norm", false, where);
  }
  if (j.contains("dtype") && j.at("dtype").is_string()) c.dtype = j.at("dtype").get<std::string>();
  if (j.contains("normalize_activations") && !j.at("normalize_activations").is_null()) {
    const auto& n = j.at("normalize_activations");
    if (!n.is_string())
      throw FormatError(sae::detail::concat(
          where, ": field 'normalize_activations' must be a string, found ", n.dump()));
    c.normalize_activations = n.get<std::string>();
    if (c.normalize_activations != "none" && c.normalize_activations != "layer_norm")
      throw FormatError(sae::detail::concat(where, ": unsupported normalize_activations '",
                                            c.normalize_activations,
                                            "' (supported: none, layer_norm)"));
  }
  if (j.contains("reshape_activations") && j.at("reshape_activations").is_string() &&
      j.at("reshape_activations").get<std::string>() != "none")
    throw FormatError(sae::detail::concat(where, ": unsupported reshape_activations '",
                                          j.at("reshape_activations").get<std::string>(),
                                          "' (supported: none)"));
  if (j.contains("metadata") && j.at("metadata").is_object()) c.metadata = j.at("metadata");
  return c;
}

/// @brief Reads `dir/cfg.json`.
/// @throws IoError when the folder or file is missing, FormatError when it is malformed.
inline SaeLensConfig readSaeLensConfig(const std::string& dir) {
  if (!detail::isDirectory(dir))
    throw IoError(sae::detail::concat(dir, ": not a directory (expected an SAE folder with ",
                                      kSaeCfgFilename, " and ", kSaeWeightsFilename, ")"));
  const std::string path = detail::joinPath(dir, kSaeCfgFilename);
  std::ifstream in(path);
  if (!in) throw IoError(sae::detail::concat(path, ": cannot open (missing SAE config)"));
  std::ostringstream text;
  text << in.rdbuf();
  return parseSaeLensConfig(text.str(), path);
}

/// @brief An SAE of any supported architecture (runtime choice at the edge, see STYLE.md).
template <typename Scalar>
using AnySae = std::variant<StandardSAE<Scalar>, GatedSAE<Scalar>, TopKSAE<Scalar>>;

/// @brief An SAE loaded from an SAELens folder, with its config.
template <typename Scalar>
struct LoadedSae {
  SaeLensConfig config;
  AnySae<Scalar> model;
};

namespace detail {

template <typename Scalar, typename Arch>
void loadWeightsInto(SparseAutoencoder<Scalar, Arch>& model, const SafetensorsFile& file) {
  auto& params = model.parameters();
  std::vector<std::string> expected;
  for (const auto& e : params.entries()) expected.push_back(e.name);
  for (const auto& name : file.names()) {
    if (std::find(expected.begin(), expected.end(), name) == expected.end())
      throw FormatError(sae::detail::concat(file.path(), ": unexpected tensor '", name, "' for a ",
                                            Arch::kName, " SAE (expected: ", nameList(expected),
                                            ")"));
  }
  for (const auto& e : params.entries()) {
    const TensorInfo& t = file.info(e.name);  // FormatError listing the names when missing
    if (t.shape != e.shape)
      throw FormatError(sae::detail::concat(file.path(), ": tensor '", e.name, "' has shape ",
                                            shapeString(t.shape, false), ", expected ",
                                            shapeString(e.shape, false), " from cfg.json"));
    params.assignRowMajor(e.name, file.read<Scalar>(e.name));
  }
}

}  // namespace detail

/// @brief Loads an SAE folder written by SAELens or by saveSaeLens().
/// @tparam Scalar float or double (weights stored as F32, F64, F16 or BF16 are widened).
/// @throws IoError (missing folder or file), FormatError (malformed config, unknown
/// architecture, missing / extra / misshapen tensor).
template <typename Scalar>
LoadedSae<Scalar> loadSaeLens(const std::string& dir) {
  SaeLensConfig cfg = readSaeLensConfig(dir);
  const std::string weights = detail::joinPath(dir, kSaeWeightsFilename);
  if (!detail::isRegularFile(weights))
    throw IoError(sae::detail::concat(weights, ": missing (the SAE folder has ", kSaeCfgFilename,
                                      " but no weights)"));
  const SafetensorsFile file(weights);
  auto load = [&](auto model) -> AnySae<Scalar> {
    detail::loadWeightsInto(model, file);
    return AnySae<Scalar>(std::move(model));
  };
  if (cfg.architecture == "standard") return {cfg, load(StandardSAE<Scalar>(cfg.sae_cfg))};
  if (cfg.architecture == "gated") return {cfg, load(GatedSAE<Scalar>(cfg.sae_cfg))};
  return {cfg, load(TopKSAE<Scalar>(cfg.sae_cfg))};
}

/// @brief Options of saveSaeLens().
struct SaeLensSaveOptions {
  /// The model was trained on `input_scale * x` (expected_average_only_in normalisation):
  /// fold the scale into the weights so the saved SAE works on raw activations (SAELens's
  /// fold_activation_norm_scaling_factor: W_enc * s, W_dec / s, b_dec / s).
  double input_scale = 1.0;
  /// Extra fields of cfg.json's `metadata` object.
  nlohmann::ordered_json metadata = nlohmann::ordered_json::object();
  /// Per-latent firing frequency; when non-empty, sparsity.safetensors is written with its
  /// log10 (+1e-10) as SAELens does.
  Eigen::VectorXd feature_density;
};

/// @brief Writes `model` as an SAELens SAE folder `dir` (created when missing): cfg.json,
/// sae_weights.safetensors (float32) and, with a density, sparsity.safetensors. Each file is
/// written atomically.
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
  if (!detail::isDirectory(dir) && ::mkdir(dir.c_str(), 0777) != 0 && !detail::isDirectory(dir))
    throw IoError(
        sae::detail::concat(dir, ": cannot create the directory: ", detail::errnoText(errno)));
  const double s = options.input_scale;
  require(std::isfinite(s) && s > 0, "saveSaeLens: input_scale must be finite and > 0, found ", s);
  const auto& params = model.parameters();
  std::vector<std::pair<std::string, RowMatrix<float>>> tensors;
  for (const auto& e : params.entries())
    tensors.emplace_back(e.name, params.rowMajorCopy(e.name).template cast<float>());
  auto tensor = [&](const std::string& name) -> RowMatrix<float>& {
    for (auto& t : tensors)
      if (t.first == name) return t.second;
    throw ConfigError("saveSaeLens: no tensor " + name);
  };
  if (s != 1.0) {
    tensor("W_enc") *= float(s);
    tensor("W_dec") /= float(s);
    tensor("b_dec") /= float(s);
  }
  const SaeConfig& c = model.config();
  if (std::string(Arch::kName) == "topk" && c.rescale_acts_by_decoder_norm) {
    RowMatrix<float>& W_dec = tensor("W_dec");
    RowMatrix<float>& W_enc = tensor("W_enc");
    RowMatrix<float>& b_enc = tensor("b_enc");
    for (Index i = 0; i < W_dec.rows(); ++i) {
      const float n = W_dec.row(i).norm();
      if (!(n > 0)) continue;
      W_dec.row(i) /= n;
      W_enc.col(i) *= n;
      b_enc(0, i) *= n;
    }
  }
  std::sort(tensors.begin(), tensors.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  SafetensorsWriter w;
  for (const auto& [name, m] : tensors) {
    const ParameterInfo& e = params.info(name);
    w.add(name, e.shape, m.data());
  }
  w.write(detail::joinPath(dir, kSaeWeightsFilename));

  if (options.feature_density.size() > 0) {
    require(options.feature_density.size() == c.d_sae, "saveSaeLens: feature density has ",
            options.feature_density.size(), " entries, expected d_sae = ", c.d_sae);
    Eigen::VectorXf log_density(c.d_sae);
    for (Index i = 0; i < c.d_sae; ++i)
      log_density[i] = float(std::log10(options.feature_density[i] + 1e-10));
    SafetensorsWriter sw;
    sw.add(kSparsityTensorName, log_density);
    sw.write(detail::joinPath(dir, kSparsityFilename));
  }

  SaeLensConfig cfg;
  cfg.architecture = Arch::kName;
  cfg.sae_cfg = c;
  cfg.metadata = options.metadata;
  const std::string text = cfg.toJson().dump(2) + "\n";
  AtomicFileWriter cw(detail::joinPath(dir, kSaeCfgFilename));
  cw.write(text.data(), text.size());
  cw.commit();
}

/// @brief Reads sparsity.safetensors of an SAE folder: log10 feature density per latent.
/// @throws IoError when missing, FormatError when it has no `sparsity` tensor.
inline Eigen::VectorXd readSparsity(const std::string& dir) {
  const SafetensorsFile f(detail::joinPath(dir, kSparsityFilename));
  const RowMatrix<double> m = f.read<double>(kSparsityTensorName);
  return Eigen::Map<const Eigen::VectorXd>(m.data(), m.size());
}

}  // namespace sae::io
