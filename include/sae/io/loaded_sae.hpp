/// @file loaded_sae.hpp
/// @brief What every SAE reader produces, whatever the file format: an SaeDescription (the
/// SAE in SAELens's terms, and the tensors as stored) and a LoadedSae (the model of its
/// architecture, ready to encode, with SAELens's input / output normalisation).
///
/// The readers are in saelens.hpp (SAELens folders, including pre-6.0 configs), sparsify.hpp
/// (EleutherAI sparsify folders) and gemma_scope.hpp (Gemma Scope `params.npz`); sae_formats.hpp
/// picks the reader for a path. They share the machinery here: a reader parses its config into
/// an SaeLensConfig, checks the stored tensors against a WeightPlan (which file tensor fills
/// which parameter, and how) before reading any data, and then assembles the model.
#pragma once

#include <sys/stat.h>
#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include <sae/core/enum_names.hpp>
#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/io/dtype.hpp>
#include <sae/io/npz.hpp>
#include <sae/io/safetensors.hpp>
#include <sae/models/normalization.hpp>
#include <sae/models/registry.hpp>

namespace sae::io {

/// @brief The on-disk formats an SAE can be read from.
enum class SaeFormat {
  SaeLens,    ///< `cfg.json` + `sae_weights.safetensors` (SAELens, Neuronpedia releases)
  Sparsify,   ///< `cfg.json` + `sae.safetensors` (EleutherAI sparsify)
  GemmaScope  ///< `params.npz` (Gemma Scope JumpReLU SAEs)
};

}  // namespace sae::io

/// The names of the formats, as `sae info` prints them.
template <>
struct sae::EnumNames<sae::io::SaeFormat> {
  static constexpr std::pair<io::SaeFormat, const char*> table[] = {
      {io::SaeFormat::SaeLens, "saelens"},
      {io::SaeFormat::Sparsify, "sparsify"},
      {io::SaeFormat::GemmaScope, "gemma_scope"}};
};

namespace sae::io {

/// @brief Name of a format as `sae info` prints it: "saelens", "sparsify", "gemma_scope".
inline const char* saeFormatName(SaeFormat f) { return enumName(f); }

/// SAELens cfg.json format version this library writes (metadata.sae_lens_version). SAELens
/// reads a config without a version of at least 6.0 as a pre-6.0 one.
inline constexpr const char* kSaeLensFormatVersion = "6.18.0";

/// @brief An SAE described in SAELens's terms: the fields of a SAELens 6 `cfg.json` that
/// decide what the SAE computes. Every reader fills one, whatever the source format.
struct SaeLensConfig {
  std::string architecture;                    ///< One of LoadableArchitectures (registry.hpp).
  SaeConfig sae_cfg;                           ///< d_in, d_sae, k and the two flags.
  std::string dtype = "float32";               ///< cfg.json's dtype (of the weights as written).
  std::string normalize_activations = "none";  ///< One of kNormalizeActivationsNames.
  std::string reshape_activations = "none";    ///< "none" or "hook_z" (see saelens.hpp).
  /// Pre-6.0 SAELens: a per-latent decoder-input scale tensor is in the weights.
  bool finetuning_scaling_factor = false;
  nlohmann::ordered_json metadata = nlohmann::ordered_json::object();  ///< `metadata{}`.
  /// How the source was read, when it was not a plain SAELens 6 folder: one line per mapping
  /// (a renamed legacy field, a tensor transposed or folded...). Shown by `sae info`.
  std::vector<std::string> notes;

  /// @brief The input / output processing of normalize_activations (throws ConfigError for an
  /// unknown mode).
  ActivationNormalizer normalizer() const {
    NormalizeActivations m;
    require(parseNormalizeActivations(normalize_activations, m), "unknown normalize_activations '",
            normalize_activations, "' (supported: ", kNormalizeActivationsNames, ")");
    return ActivationNormalizer(m);
  }

  /// @brief The cfg.json object of a SAELens 6 inference SAE (what saveSaeLens writes).
  nlohmann::ordered_json toJson() const {
    nlohmann::ordered_json j;
    j["architecture"] = architecture;
    j["d_in"] = sae_cfg.d_in;
    j["d_sae"] = sae_cfg.d_sae;
    j["dtype"] = dtype;
    j["device"] = "cpu";
    j["apply_b_dec_to_input"] = sae_cfg.apply_b_dec_to_input;
    j["normalize_activations"] = normalize_activations;
    j["reshape_activations"] = reshape_activations;
    if (architectureInfo(architecture).uses_k) {
      j["k"] = sae_cfg.k;
      j["rescale_acts_by_decoder_norm"] = sae_cfg.rescale_acts_by_decoder_norm;
    }
    j["metadata"] = metadata;
    return j;
  }
};

/// @brief One tensor as stored in an SAE's weight file.
struct StoredTensor {
  std::string name;          ///< Name in the file.
  std::string dtype;         ///< As the file says: "F32", "BF16"... (safetensors), "<f4" (npz).
  std::vector<Index> shape;  ///< As stored.
};

/// @brief An SAE file or folder, checked but not read: format, config, stored tensors.
struct SaeDescription {
  SaeFormat format = SaeFormat::SaeLens;
  std::string path;                   ///< The folder (or params.npz) that was given.
  std::string weights_path;           ///< The file holding the weights.
  std::string sparsity_path;          ///< SAELens `sparsity.safetensors`, when the folder has one.
  SaeLensConfig config;               ///< The SAE in SAELens's terms.
  std::vector<StoredTensor> tensors;  ///< Every tensor of the weights file, in file order.
  /// dtype of the weights used ("float32", "float64", "float16", "bfloat16"), or "mixed".
  std::string storage_dtype;
};

/// @brief An SAE of any architecture an SAE file can hold (the registry's
/// LoadableArchitectures; runtime choice at the edge, see STYLE.md).
template <typename Scalar>
using AnySae = AnyModel<Scalar, LoadableArchitectures>;

/// @brief The architectures an SAE file can hold, for messages: "standard, gated, ...".
inline std::string loadableArchitectureNames() {
  return architectureNameList<LoadableArchitectures>();
}

/// @brief A model of architecture `architecture` with every parameter zero.
/// @throws FormatError naming the supported architectures for an unknown name.
template <typename Scalar>
AnySae<Scalar> makeSae(const std::string& architecture, const SaeConfig& cfg) {
  if (!isArchitecture<LoadableArchitectures>(architecture))
    throw FormatError(sae::detail::concat("unsupported architecture '", architecture,
                                          "' (supported: ", loadableArchitectureNames(), ")"));
  return makeModel<Scalar, LoadableArchitectures>(architecture, cfg);
}

/// @brief An SAE read from disk: its description in SAELens's terms and its model.
///
/// The model's encode() / decode() work on the normalised input (SAELens's `sae_in` before
/// b_dec); encodeDense() and forward() apply the configured normalize_activations in and out,
/// as SAELens's `encode` and `decode(encode(x))` do, so they give SAELens's numbers for raw
/// activations.
template <typename Scalar>
struct LoadedSae {
  SaeLensConfig config;                   ///< Architecture, shapes, flags, normalisation.
  AnySae<Scalar> model;                   ///< The weights, in the model of the architecture.
  SaeFormat format = SaeFormat::SaeLens;  ///< Format it was read from.
  std::string path;                       ///< Folder or file it was read from.
  std::string storage_dtype = "float32";  ///< dtype of the weights in the file (or "mixed").

  Index dIn() const { return config.sae_cfg.d_in; }
  Index dSae() const { return config.sae_cfg.d_sae; }

  /// @brief The input / output processing of config.normalize_activations.
  ActivationNormalizer normalizer() const { return config.normalizer(); }

  /// @brief Feature activations `[tokens, d_sae]` of raw activations `x` (normalised first).
  RowMatrix<Scalar> encodeDense(const ConstBatchRef<Scalar>& x) const {
    RowMatrix<Scalar> xn = x;
    NormalizationStats stats;
    normalizer().normalize(xn, stats);
    return std::visit([&](const auto& m) { return RowMatrix<Scalar>(m.encode(xn).toDense()); },
                      model);
  }

  /// @brief Reconstruction of raw activations `x`, in the units of `x`.
  RowMatrix<Scalar> forward(const ConstBatchRef<Scalar>& x) const {
    RowMatrix<Scalar> xn = x;
    NormalizationStats stats;
    const ActivationNormalizer norm = normalizer();
    norm.normalize(xn, stats);
    RowMatrix<Scalar> y = std::visit([&](const auto& m) { return m.forward(xn); }, model);
    norm.denormalize(y, stats);
    return y;
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

/// Folds the decoder norms of a TopK-family SAE into its weights (the form SAELens and
/// sparsify store): W_dec[i, :] / n_i, W_enc[:, i] * n_i, b_enc[i] * n_i for every latent with
/// n_i = ||W_dec[i, :]|| > 0, so that rescaled activations become plain ones.
/// W_enc `[d_in, d_sae]`, b_enc `[1, d_sae]`, W_dec `[d_sae, d_in]`.
inline void foldDecoderNorms(RowMatrix<double>& W_enc, RowMatrix<double>& b_enc,
                             RowMatrix<double>& W_dec) {
  for (Index i = 0; i < W_dec.rows(); ++i) {
    const double n = W_dec.row(i).norm();
    if (!(n > 0)) continue;
    W_dec.row(i) /= n;
    W_enc.col(i) *= n;
    b_enc(0, i) *= n;
  }
}

/// Reads a whole text file; IoError "<path>: cannot open<why>" when it cannot be opened.
inline std::string readTextFile(const std::string& path, const std::string& why = "") {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(sae::detail::concat(path, ": cannot open", why));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

/// Parses a JSON object; FormatError naming `where` otherwise.
inline nlohmann::ordered_json parseJsonObject(const std::string& text, const std::string& where) {
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(sae::detail::concat(where, ": not valid JSON: ", e.what()));
  }
  if (!j.is_object())
    throw FormatError(
        sae::detail::concat(where, ": expected a JSON object, found ", j.type_name()));
  return j;
}

inline const nlohmann::ordered_json& field(const nlohmann::ordered_json& j, const char* name,
                                           const std::string& where) {
  if (!j.contains(name))
    throw FormatError(sae::detail::concat(where, ": missing field '", name, "'"));
  return j.at(name);
}

inline Index positiveInt(const nlohmann::ordered_json& v, const char* name,
                         const std::string& where) {
  if (!v.is_number_integer() || v.get<std::int64_t>() <= 0 ||
      v.get<std::int64_t>() > std::int64_t(INT32_MAX))
    throw FormatError(sae::detail::concat(where, ": field '", name,
                                          "' must be a positive integer, found ", v.dump()));
  return v.get<Index>();
}

inline Index positiveIntField(const nlohmann::ordered_json& j, const char* name,
                              const std::string& where) {
  return positiveInt(field(j, name, where), name, where);
}

inline bool boolField(const nlohmann::ordered_json& j, const char* name, bool fallback,
                      const std::string& where) {
  if (!j.contains(name) || j.at(name).is_null()) return fallback;
  if (!j.at(name).is_boolean())
    throw FormatError(sae::detail::concat(where, ": field '", name,
                                          "' must be true or false, found ", j.at(name).dump()));
  return j.at(name).get<bool>();
}

/// A string field, `fallback` when missing or null; FormatError for another type.
inline std::string stringField(const nlohmann::ordered_json& j, const char* name,
                               const std::string& fallback, const std::string& where) {
  if (!j.contains(name) || j.at(name).is_null()) return fallback;
  if (!j.at(name).is_string())
    throw FormatError(sae::detail::concat(where, ": field '", name, "' must be a string, found ",
                                          j.at(name).dump()));
  return j.at(name).get<std::string>();
}

/// The parameters of an SAE of architecture `arch` and config `c` (names, logical shapes),
/// in model order, as its policy declares them; nothing is allocated.
inline std::vector<ParameterInfo> parameterLayout(const std::string& arch, const SaeConfig& c) {
  return visitArchitecture<LoadableArchitectures>(arch, [&](auto tag) {
    return SparseAutoencoder<float, typename decltype(tag)::Arch>::parameterLayout(c);
  });
}

/// "[a, b]".
inline std::string shapeText(const std::vector<Index>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

/// How a stored tensor becomes a parameter.
enum class TensorTransform {
  Copy,       ///< Same layout and values.
  Transpose,  ///< Stored as the transpose of the parameter (sparsify's encoder.weight).
  Exp         ///< The parameter is exp() of the stored values (log_threshold).
};

/// One parameter and the stored tensor it is read from.
struct TensorBinding {
  std::string param;   ///< SAELens name of the parameter.
  std::string source;  ///< Name of the tensor in the file.
  TensorTransform transform = TensorTransform::Copy;
};

/// Which stored tensor fills which parameter; every other stored tensor is an error.
struct WeightPlan {
  std::vector<TensorBinding> bindings;
  /// A stored `[d_sae]` tensor that multiplies the decoder's input (pre-6.0 SAELens
  /// finetuning_scaling_factor): folded into the rows of W_dec. Empty: none.
  std::string decoder_row_scale;
  /// Stored tensors that are read by nobody and are fine to ignore (a scaling factor of ones).
  std::vector<std::string> ignored;

  /// The plan that reads every parameter of an SAE of `arch` and `cfg` from the tensor of the
  /// same name.
  static WeightPlan identity(const std::string& arch, const SaeConfig& cfg) {
    WeightPlan p;
    for (const auto& e : parameterLayout(arch, cfg))
      p.bindings.push_back({e.name, e.name, TensorTransform::Copy});
    return p;
  }

  const TensorBinding* find(const std::string& param) const {
    for (const auto& b : bindings)
      if (b.param == param) return &b;
    return nullptr;
  }
};

/// Description of tensor `name` of a safetensors file / an npz archive.
inline StoredTensor storedTensor(const SafetensorsFile& f, const std::string& name) {
  const TensorInfo& t = f.info(name);
  return {name, t.dtype, t.shape};
}
inline StoredTensor storedTensor(const NpzFile& f, const std::string& name) {
  const NpzArrayInfo& a = f.info(name);
  return {name, a.descr, a.shape};
}

inline bool isFloatDType(DType d) {
  return d == DType::F32 || d == DType::F64 || d == DType::F16 || d == DType::BF16;
}

/// The floating-point DType of a stored tensor; false for any other element type.
inline bool floatDType(const SafetensorsFile& f, const std::string& name, DType& out) {
  const SafetensorsDType* d = findSafetensorsDType(f.info(name).dtype);
  if (d == nullptr || !d->readable || !isFloatDType(d->dtype)) return false;
  out = d->dtype;
  return true;
}
inline bool floatDType(const NpzFile& f, const std::string& name, DType& out) {
  const DType d = f.info(name).dtype;
  if (!isFloatDType(d)) return false;
  out = d;
  return true;
}

/// Every tensor of a weights file, in file order.
template <typename File>
std::vector<StoredTensor> storedTensors(const File& f) {
  std::vector<StoredTensor> out;
  for (const auto& n : f.names()) out.push_back(storedTensor(f, n));
  return out;
}

/// Checks a plan against the file before anything is read: every source present with a
/// floating-point dtype and the parameter's shape (reversed for Transpose), the scale tensor
/// `[d_sae]`, and no tensor the plan does not use. Returns the storage dtype ("mixed" when
/// the weights differ). `shapes_from` names where the expected shapes come from.
template <typename File>
std::string checkWeightPlan(const File& f, const WeightPlan& plan, const SaeLensConfig& cfg,
                            const std::string& shapes_from) {
  using sae::detail::concat;
  const std::string what = concat("a ", cfg.architecture, " SAE");
  std::vector<std::string> used;
  std::string storage;
  auto check = [&](const std::string& source, std::vector<Index> shape, const std::string& param) {
    if (!f.contains(source))
      throw FormatError(concat(f.path(), ": missing tensor '", source, "' for ", what,
                               " (tensors present: ", nameList(f.names()), ")"));
    DType dt{};
    const StoredTensor t = storedTensor(f, source);
    if (!floatDType(f, source, dt))
      throw FormatError(concat(f.path(), ": tensor '", source, "' has dtype ", t.dtype,
                               "; SAE weights must be float32, float64, float16 or bfloat16"));
    if (t.shape != shape)
      throw FormatError(concat(f.path(), ": tensor '", source, "' has shape ", shapeText(t.shape),
                               ", expected ", shapeText(shape), " (", param, ", from ", shapes_from,
                               ")"));
    const std::string name = dtypeName(dt);
    storage = storage.empty() || storage == name ? name : "mixed";
    used.push_back(source);
  };
  const std::vector<ParameterInfo> layout = parameterLayout(cfg.architecture, cfg.sae_cfg);
  for (const auto& b : plan.bindings) {
    const auto e = std::find_if(layout.begin(), layout.end(),
                                [&](const ParameterInfo& p) { return p.name == b.param; });
    if (e == layout.end())
      throw FormatError(concat(cfg.architecture, " SAEs have no parameter '", b.param, "'"));
    std::vector<Index> shape = e->shape;
    if (b.transform == TensorTransform::Transpose) std::reverse(shape.begin(), shape.end());
    check(b.source, shape, b.param);
  }
  if (!plan.decoder_row_scale.empty())
    check(plan.decoder_row_scale, {cfg.sae_cfg.d_sae}, "scale of the decoder input");
  used.insert(used.end(), plan.ignored.begin(), plan.ignored.end());
  for (const auto& name : f.names()) {
    if (std::find(used.begin(), used.end(), name) != used.end()) continue;
    std::vector<std::string> expected;
    for (const auto& b : plan.bindings) expected.push_back(b.source);
    if (!plan.decoder_row_scale.empty()) expected.push_back(plan.decoder_row_scale);
    throw FormatError(concat(f.path(), ": unexpected tensor '", name, "' for ", what,
                             " (expected: ", nameList(expected), ")"));
  }
  return storage;
}

/// Reads a stored tensor as a matrix (1-D as one row) and requires finite values.
template <typename Scalar, typename File>
RowMatrix<Scalar> readFinite(const File& f, const std::string& name) {
  RowMatrix<Scalar> m = f.template read<Scalar>(name);
  if (!m.allFinite()) {
    for (Index r = 0; r < m.rows(); ++r)
      for (Index c = 0; c < m.cols(); ++c)
        if (!std::isfinite(m(r, c)))
          throw NumericError(sae::detail::concat(f.path(), ": tensor '", name,
                                                 "' has a non-finite value (", m(r, c),
                                                 ") at flat index ", r * m.cols() + c));
  }
  return m;
}

/// An SAE source, checked: description, weight plan and the open weights file.
template <typename File>
struct WeightSource {
  SaeDescription desc;
  WeightPlan plan;
  File file;
};

/// @brief Checks `plan` against `file` (checkWeightPlan(), shapes from `shapes_from`) and
/// describes the SAE of format `format` at `path`, read from `weights_path` with `cfg`.
/// `keep_cfg_dtype` false: cfg.json's dtype becomes the storage dtype ("float32" if mixed).
template <typename File>
WeightSource<File> checkedSource(SaeFormat format, const std::string& path,
                                 const std::string& weights_path, File file, WeightPlan plan,
                                 SaeLensConfig cfg, const std::string& shapes_from,
                                 bool keep_cfg_dtype) {
  SaeDescription d;
  d.format = format;
  d.path = path;
  d.weights_path = weights_path;
  d.storage_dtype = checkWeightPlan(file, plan, cfg, shapes_from);
  d.tensors = storedTensors(file);
  if (!keep_cfg_dtype) cfg.dtype = d.storage_dtype == "mixed" ? "float32" : d.storage_dtype;
  d.config = std::move(cfg);
  return WeightSource<File>{std::move(d), std::move(plan), std::move(file)};
}

/// Builds the model of `desc` from a file checked with checkWeightPlan().
template <typename Scalar, typename File>
LoadedSae<Scalar> assembleSae(const SaeDescription& desc, const WeightPlan& plan, const File& f) {
  LoadedSae<Scalar> out{desc.config, makeSae<Scalar>(desc.config.architecture, desc.config.sae_cfg),
                        desc.format, desc.path, desc.storage_dtype};
  std::visit(
      [&](auto& model) {
        auto& params = model.parameters();
        for (const auto& e : params.entries()) {
          const TensorBinding* b = plan.find(e.name);
          if (b == nullptr)
            throw FormatError(sae::detail::concat(f.path(), ": no tensor for parameter '", e.name,
                                                  "' of ", desc.config.architecture));
          RowMatrix<Scalar> m = readFinite<Scalar>(f, b->source);
          if (b->transform == TensorTransform::Transpose) {
            const RowMatrix<Scalar> t = m.transpose();
            m = t;
          } else if (b->transform == TensorTransform::Exp) {
            m = m.array().exp().matrix();
            if (!m.allFinite())
              throw NumericError(
                  sae::detail::concat(f.path(), ": exp of tensor '", b->source, "' overflows"));
          }
          params.assignRowMajor(e.name, m);
        }
        if (!plan.decoder_row_scale.empty()) {
          const RowMatrix<Scalar> s = readFinite<Scalar>(f, plan.decoder_row_scale);
          auto W_dec = params.rowMajor("W_dec");
          for (Index i = 0; i < W_dec.rows(); ++i) W_dec.row(i) *= s(0, i);
        }
      },
      out.model);
  return out;
}

/// Builds the model of a checked source.
template <typename Scalar, typename File>
LoadedSae<Scalar> assembleSae(const WeightSource<File>& src) {
  return assembleSae<Scalar>(src.desc, src.plan, src.file);
}

}  // namespace detail
}  // namespace sae::io
