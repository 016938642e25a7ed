/// @file sae.hpp
/// @brief sae::Sae: the one type an inference engine embeds. It owns an SAE of any
/// architecture, its input normalisation, a workspace and scratch codes, and gives encode,
/// decode, reconstruction and feature edits on the caller's buffers, with no heap allocation
/// once warm.
///
/// ```
/// auto sae = sae::Sae<float>::load("path/to/sae");   // any folder loadSae() reads
/// sae::Sae<float>::Codes codes;                       // kept across calls
/// sae.encode(x, codes);                               // the architecture's own codes
/// sae.forward(x, x_hat);                              // reconstruction, in the units of x
/// sae.edit(hidden, {sae::steer::FeatureEdit::zero(1234)});  // in place, error term kept
/// ```
///
/// Every call applies the SAE's normalize_activations on the way in and undoes it on the way
/// out, as SAELens's `encode` / `decode(encode(x))` do: encode() and forward() give SAELens's
/// numbers for raw activations, and edit() adds out_scale_b * (decode(f') - decode(f)) to row b
/// (SAELens layer_norm: the row's standard deviation), so that only the edited features change
/// in the units of the hidden state.
///
/// Warm calls (the same batch size as the previous call of the same method, the same codes
/// holder) allocate nothing: the model runs in the Sae's workspace, the codes reuse their
/// storage, the normalisation statistics and the edit kernel's scratch are kept. The exceptions
/// are inside the library's kernels and are documented there: oneDNN's argument maps for large
/// products (README, Performance), and the TopK-family decode with
/// rescale_acts_by_decoder_norm (its decoder norms).
#pragma once

#include <string>
#include <type_traits>
#include <utility>
#include <variant>

#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/io/loaded_sae.hpp>
#include <sae/io/sae_formats.hpp>
#include <sae/kernels/bf16_matmul.hpp>
#include <sae/models/batchtopk.hpp>
#include <sae/models/normalization.hpp>
#include <sae/models/registry.hpp>
#include <sae/runtime/codes.hpp>
#include <sae/steer/steering.hpp>

namespace sae {
namespace detail {

/// A model of one architecture with its workspace and how its decode scales codes.
template <typename Model>
struct HeldSae {
  Model model;
  typename Model::Workspace ws;
  steer::DecoderUnits units;

  explicit HeldSae(Model m) : model(std::move(m)), units(steer::detail::probeDecoderUnits(model)) {}
};

/// The architectures an Sae holds, each with its workspace.
template <typename Scalar>
using AnyHeldSae = AnyWrappedModel<HeldSae, Scalar>;

}  // namespace detail

/// @brief An SAE ready to run inside an inference engine: load or wrap it once, then call
/// encode(), decode(), forward() and edit() from the engine's hook (see the file comment).
///
/// Holds any architecture of the library (standard, gated, JumpReLU, TopK, BatchTopK,
/// Matryoshka BatchTopK) without the caller naming it, the input normalisation of the SAE
/// (SAELens's normalize_activations, see ActivationNormalizer), one workspace and the edit
/// kernel's scratch. Not thread-safe: one Sae per thread (they may share nothing mutable, so
/// load one per thread or copy the model). Movable, not copyable.
///
/// @tparam Scalar_ float (inference; bf16 encoder available) or double.
template <typename Scalar_>
class Sae {
  static_assert(std::is_floating_point<Scalar_>::value, "Sae: Scalar_ must be float or double");

 public:
  using Scalar = Scalar_;
  /// The codes holder encode() fills and decode() reads (keep one per hook).
  using Codes = AnyCodes<Scalar>;

  /// @brief Loads the SAE at `path`: any folder or file io::loadSae() reads (SAELens, sparsify,
  /// Gemma Scope, this library's own saved runs), with its normalize_activations.
  /// @throws IoError, FormatError, NumericError or ConfigError naming the file and the problem.
  static Sae load(const std::string& path) { return Sae(io::loadSae<Scalar>(path)); }

  /// @brief The SAE a reader produced, with the normalisation its config names.
  explicit Sae(const io::LoadedSae<Scalar>& loaded)
      : m_held(std::visit([](const auto& m) { return hold(m); }, loaded.model)),
        m_normalizer(loaded.normalizer()) {}

  /// @brief Wraps a model of any architecture (copied in), with the input normalisation it
  /// was trained with (default: none).
  template <typename Arch>
  explicit Sae(SparseAutoencoder<Scalar, Arch> model,
               ActivationNormalizer normalizer = ActivationNormalizer())
      : m_held(hold(std::move(model))), m_normalizer(normalizer) {}

  /// @brief SAELens's name of the architecture ("standard", "gated", "jumprelu", "topk",
  /// "batchtopk", "matryoshka_batchtopk").
  const char* architecture() const {
    return std::visit([](const auto& h) { return h.model.architecture(); }, m_held);
  }
  /// @brief Width of the activations.
  Index dIn() const { return config().d_in; }
  /// @brief Number of latents.
  Index dSae() const { return config().d_sae; }
  /// @brief The model's configuration.
  const SaeConfig& config() const {
    return std::visit([](const auto& h) -> const SaeConfig& { return h.model.config(); }, m_held);
  }
  /// @brief The input normalisation applied inside every call.
  const ActivationNormalizer& normalizer() const { return m_normalizer; }

  /// @brief The model as `Model` (e.g. TopKSAE<float>), or null when it has another
  /// architecture; for reading its parameters.
  template <typename Model>
  const Model* modelAs() const {
    const auto* h = std::get_if<detail::HeldSae<Model>>(&m_held);
    return h ? &h->model : nullptr;
  }
  /// @brief Calls fn(model) with the model in its own type; returns what fn returns.
  template <typename Fn>
  decltype(auto) visitModel(Fn&& fn) const {
    return std::visit([&](const auto& h) -> decltype(auto) { return fn(h.model); }, m_held);
  }

  /// @brief Runs the encoder product in bf16 with fp32 accumulation (on AMX where the CPU has
  /// it), or back in fp32. Every architecture supports it; the fp32 weights stay the model's.
  /// @throws ConfigError for a double SAE, or when the build has no oneDNN.
  void setBf16(bool on) {
    if (on) {
      if (!std::is_same<Scalar, float>::value)
        throw ConfigError(
            "Sae::setBf16: the bf16 encoder product is for float SAEs, this one is double");
      if (!kernels::bf16Available())
        throw ConfigError(sae::detail::concat("Sae::setBf16: ", kernels::kBf16Unavailable));
    }
    std::visit([&](auto& h) { h.ws.bf16_encoder = on; }, m_held);
  }
  /// @brief Whether the encoder product runs in bf16 (setBf16()).
  bool bf16() const {
    return std::visit([](const auto& h) { return h.ws.bf16_encoder; }, m_held);
  }

  /// @brief Feature codes of raw activations `x` `[tokens, d_in]` (normalised inside) into
  /// `codes`, in the architecture's own form, with the normalisation statistics decode()
  /// needs. Nothing is allocated once `codes` has grown to the batch size.
  /// @throws ConfigError for a wrong width or an empty batch; NumericError for a non-finite
  /// value or a row the normalisation cannot handle.
  void encode(const ConstBatchRef<Scalar>& x, Codes& codes) {
    checkWidth(x.cols(), "the input");
    std::visit(
        [&](auto& h) {
          auto& c = codes.template emplace<typename std::decay_t<decltype(h.model)>::Codes>();
          codes.m_has_statistics = !m_normalizer.isIdentity();
          if (!codes.m_has_statistics) {
            h.model.encode(x, c, h.ws);
            return;
          }
          m_input = x;
          m_normalizer.normalize(m_input, m_stats);
          h.model.encode(m_input, c, h.ws);
          codes.m_mean = m_stats.mean.template cast<Scalar>();
          codes.m_out_scale = m_stats.out_scale.template cast<Scalar>();
        },
        m_held);
  }

  /// @brief Reconstruction of `codes` into `out`, resized to `[tokens, d_in]`: in the units of
  /// the encoded input when the codes carry normalisation statistics (encode() gives them),
  /// in the SAE's own units otherwise.
  /// @throws ConfigError when the codes are not of the architecture's form or width.
  void decode(const Codes& codes, RowMatrix<Scalar>& out) {
    std::visit(
        [&](const auto& h) {
          using ModelCodes = typename std::decay_t<decltype(h.model)>::Codes;
          const ModelCodes* c = codes.template get<ModelCodes>();
          if (c == nullptr)
            throw ConfigError(sae::detail::concat("Sae::decode: the codes are ", codes.kind(),
                                                  " codes; the ", architecture(), " SAE's are ",
                                                  detail::codesKindName(ModelCodes())));
          h.model.decode(*c, out);
        },
        m_held);
    if (!codes.hasStatistics()) return;
    require(codes.mean().size() == out.rows(), "Sae::decode: normalisation statistics of ",
            codes.mean().size(), " rows for codes of ", out.rows());
    for (Index r = 0; r < out.rows(); ++r)
      out.row(r).array() = out.row(r).array() * codes.outScale()[r] + codes.mean()[r];
  }
  /// @brief decode() into a buffer of the caller's, already `[tokens, d_in]` (a Map of the
  /// engine's memory, a block of rows).
  void decode(const Codes& codes, Eigen::Ref<RowMatrix<Scalar>> out) {
    checkOutput(out, codes.rows());
    decode(codes, m_output);
    out = m_output;
  }

  /// @brief Reconstruction decode(encode(x)) of raw activations `x` into `out`, resized to
  /// `[tokens, d_in]`, in the units of `x` (normalisation undone).
  void forward(const ConstBatchRef<Scalar>& x, RowMatrix<Scalar>& out) {
    encode(x, m_codes);
    decode(m_codes, out);
  }
  /// @brief forward() into a buffer of the caller's, already `[tokens, d_in]`.
  void forward(const ConstBatchRef<Scalar>& x, Eigen::Ref<RowMatrix<Scalar>> out) {
    checkOutput(out, x.rows());
    encode(x, m_codes);
    decode(m_codes, out);
  }

  /// @brief Applies `edits` to the selected rows of `hidden` `[tokens, d_in]` in place:
  /// hidden += decode(f') - decode(f) in the units of `hidden`, where f are the codes of the
  /// (normalised) rows and f' the edited ones. The SAE's error term is kept; rows whose codes
  /// the edits leave unchanged are not written (no edits: bitwise unchanged).
  /// @throws ConfigError naming a bad edit or selection (nothing written); NumericError for a
  /// non-finite input or change (nothing written).
  void edit(steer::BatchRef<Scalar> hidden, const steer::EditList& edits,
            const steer::RowSelection& rows = steer::RowSelection::all()) {
    checkWidth(hidden.cols(), "the hidden state");
    const Index B = hidden.rows();
    rows.validate(B);
    m_kernel.validate(edits, dSae());
    if (edits.empty() || B == 0) return;
    const Index selected = m_kernel.selectRows(rows, B);
    if (selected == 0) return;
    std::visit(
        [&](auto& h) {
          auto& c =
              m_edit_codes.template emplace<typename std::decay_t<decltype(h.model)>::Codes>();
          const Scalar* scale = nullptr;
          if (m_kernel.allRows() && m_normalizer.isIdentity()) {
            h.model.encode(hidden, c, h.ws);
          } else {
            RowMatrix<Scalar>& in = m_kernel.gather(hidden, selected);
            if (!m_normalizer.isIdentity()) {
              m_normalizer.normalize(in, m_stats);
              m_scale = m_stats.out_scale.template cast<Scalar>();
              scale = m_scale.data();
            }
            h.model.encode(in, c, h.ws);
          }
          m_kernel.apply(h.model.parameters().rowMajor("W_dec"), h.units, edits, c, scale, hidden);
        },
        m_held);
  }
  /// @brief edit() of a row-major buffer of `rows` x `d_in` values (no copy of it).
  void edit(Scalar* data, Index rows, Index d_in, const steer::EditList& edits,
            const steer::RowSelection& selection = steer::RowSelection::all()) {
    require(rows >= 0 && d_in >= 0, "Sae::edit: buffer shape [", rows, ", ", d_in, "] is negative");
    require(data != nullptr || rows == 0, "Sae::edit: null buffer of ", rows, " rows");
    Eigen::Map<RowMatrix<Scalar>> map(data, rows, rows == 0 ? dIn() : d_in);
    edit(map, edits, selection);
  }

 private:
  template <typename Model>
  static detail::AnyHeldSae<Scalar> hold(Model model) {
    static_assert(std::is_constructible<detail::AnyHeldSae<Scalar>, detail::HeldSae<Model>>::value,
                  "Sae: the model is not one of the library's architectures (standard, gated, "
                  "jumprelu, topk, batchtopk, matryoshka_batchtopk) over the Sae's Scalar");
    return detail::HeldSae<Model>(std::move(model));
  }

  void checkWidth(Index cols, const char* what) const {
    require(cols == dIn(), "Sae (", architecture(), "): ", what, " has ", cols,
            " columns, expected d_in = ", dIn());
  }
  void checkOutput(const Eigen::Ref<RowMatrix<Scalar>>& out, Index rows) const {
    require(out.rows() == rows && out.cols() == dIn(), "Sae (", architecture(),
            "): the output buffer is [", out.rows(), ", ", out.cols(), "], expected [", rows, ", ",
            dIn(), "]");
  }

  detail::AnyHeldSae<Scalar> m_held;
  ActivationNormalizer m_normalizer;
  NormalizationStats m_stats;  // of the last normalised rows
  RowMatrix<Scalar> m_input;   // normalised input of encode()
  RowMatrix<Scalar> m_output;  // reconstruction of the buffer overloads
  Vector<Scalar> m_scale;      // edit(): output scale per encoded row
  Codes m_codes;               // forward()'s codes
  Codes m_edit_codes;          // edit()'s codes
  steer::detail::EditKernel<Scalar> m_kernel;
};

}  // namespace sae
