/// @file codes.hpp
/// @brief AnyCodes: the feature codes of an SAE of any architecture, in the architecture's own
/// form (DenseCodes, SparseCodes or CsrCodes), in one holder that sae::Sae fills and reads and
/// that a caller keeps across calls so that its storage is reused.
#pragma once

#include <cstddef>
#include <type_traits>
#include <utility>
#include <variant>

#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/models/sae_config.hpp>

namespace sae {

template <typename Scalar_>
class Sae;

namespace detail {

/// Name of a codes type, for messages: "dense", "sparse" (k per token), "csr".
template <typename Scalar>
const char* codesKindName(const DenseCodes<Scalar>&) {
  return "dense";
}
template <typename Scalar>
const char* codesKindName(const SparseCodes<Scalar>&) {
  return "sparse";
}
template <typename Scalar>
const char* codesKindName(const CsrCodes<Scalar>&) {
  return "csr";
}

}  // namespace detail

/// @brief Feature codes of a batch, as the architecture of the SAE that encoded them keeps
/// them, with the per-row numbers of the input normalisation needed to decode them back into
/// the units of the input.
///
/// - DenseCodes (standard, gated, JumpReLU): `[tokens, d_sae]`;
/// - SparseCodes (TopK): k (latent, value) pairs per token;
/// - CsrCodes (BatchTopK, Matryoshka BatchTopK): a variable number per token, row-compressed.
///
/// Keep one holder per hook and pass it to every Sae::encode(): once it has grown to the batch
/// size its storage is reused and nothing is allocated. Values are the SAE's feature
/// activations (what SAELens's `encode` returns for the same input).
///
/// @tparam Scalar_ float or double.
template <typename Scalar_>
class AnyCodes {
 public:
  using Scalar = Scalar_;
  /// The three forms a model's codes take.
  using Variant = std::variant<DenseCodes<Scalar>, SparseCodes<Scalar>, CsrCodes<Scalar>>;

  /// @brief Empty dense codes (no rows).
  AnyCodes() = default;
  /// @brief Holds codes made elsewhere (a model's encode()); they decode in the SAE's own
  /// (normalised) units, as no normalisation statistics come with them.
  template <typename Codes, typename = std::enable_if_t<std::is_constructible_v<Variant, Codes>>>
  explicit AnyCodes(Codes codes) : m_codes(std::move(codes)) {}

  /// @brief Number of tokens.
  Index rows() const {
    return std::visit([](const auto& c) { return c.rows(); }, m_codes);
  }
  /// @brief Number of latents (d_sae).
  Index latents() const {
    return std::visit([](const auto& c) { return c.latents(); }, m_codes);
  }
  /// @brief Mean number of non-zero activations per token.
  double l0() const {
    return std::visit([](const auto& c) { return c.l0(); }, m_codes);
  }
  /// @brief The dense `[tokens, d_sae]` matrix (allocates; for inspection and export).
  RowMatrix<Scalar> toDense() const {
    return std::visit([](const auto& c) { return RowMatrix<Scalar>(c.toDense()); }, m_codes);
  }
  /// @brief "dense", "sparse" or "csr": the form held.
  const char* kind() const {
    return std::visit([](const auto& c) { return detail::codesKindName(c); }, m_codes);
  }

  /// @brief The codes as `Codes` (DenseCodes<Scalar>, SparseCodes<Scalar>, CsrCodes<Scalar>),
  /// or null when they are held in another form.
  template <typename Codes>
  const Codes* get() const {
    return std::get_if<Codes>(&m_codes);
  }
  /// @brief The held codes, whatever their form (for std::visit).
  const Variant& variant() const { return m_codes; }

  /// @brief True when the codes carry normalisation statistics (encoded by an Sae whose
  /// normalize_activations is not the identity): decoding them undoes the normalisation.
  bool hasStatistics() const { return m_has_statistics; }
  /// @brief Per encoded row, the number added back on decode (statistics only).
  const Vector<Scalar>& mean() const { return m_mean; }
  /// @brief Per encoded row, the factor the reconstruction is multiplied by (statistics only).
  const Vector<Scalar>& outScale() const { return m_out_scale; }

 private:
  friend class Sae<Scalar>;

  /// The codes as `Codes`, switching the form held when needed (the only allocation of a
  /// holder that moves to another architecture).
  template <typename Codes>
  Codes& emplace() {
    if (Codes* c = std::get_if<Codes>(&m_codes)) return *c;
    return m_codes.template emplace<Codes>();
  }

  Variant m_codes;
  bool m_has_statistics = false;
  Vector<Scalar> m_mean;       // [rows] with statistics
  Vector<Scalar> m_out_scale;  // [rows] with statistics
};

}  // namespace sae
