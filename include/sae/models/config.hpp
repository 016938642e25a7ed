/// @file config.hpp
/// @brief SaeConfig, training options, loss terms and feature codes shared by every architecture.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/kernels/sparse.hpp>

namespace sae {

/// @brief Shape and hyperparameters of an SAE (SAELens names where SAELens has them).
struct SaeConfig {
  Index d_in = 0;   ///< Width of the activations.
  Index d_sae = 0;  ///< Number of latents.
  Index k = 0;      ///< TopK: latents kept per token.
  /// Subtract b_dec from the input before encoding (it is always added on decode).
  bool apply_b_dec_to_input = true;
  /// TopK: select on pre-activations scaled by the decoder row norms and decode f / n.
  bool rescale_acts_by_decoder_norm = false;
  double l1_coefficient = 1.0;        ///< Standard, gated: weight of the sparsity penalty.
  double lp_norm = 1.0;               ///< Standard: p of the decoder-norm-weighted penalty.
  double aux_loss_coefficient = 1.0;  ///< TopK: weight of AuxK.
  double decoder_init_norm = 0.1;     ///< Row norm of W_dec at initialisation.

  /// JumpReLU: the sparsity penalty on the number of active latents.
  enum class SparsityLossMode {
    Step,  ///< l0_coefficient * mean_b sum_i 1[h_i > t_i], straight-through to the threshold.
    Tanh   ///< l0_coefficient * mean_b sum_i tanh(jumprelu_tanh_scale * f_i * n_i).
  };
  double l0_coefficient = 1.0;       ///< JumpReLU: weight of the L0 term.
  double jumprelu_bandwidth = 0.05;  ///< JumpReLU: rectangle-kernel width.
  SparsityLossMode sparsity_loss_mode = SparsityLossMode::Step;  ///< JumpReLU: L0 form.
  double jumprelu_tanh_scale = 4.0;                              ///< JumpReLU: tanh mode's scale.
  double jumprelu_init_threshold = 0.01;                         ///< JumpReLU: initial threshold.
  double pre_act_loss_coefficient = 0.0;  ///< JumpReLU: pre-activation loss (0: off).
  /// BatchTopK / Matryoshka: rate of the threshold's exponential moving average.
  double topk_threshold_lr = 0.01;
  /// Matryoshka: nested prefix widths, increasing, the last equal to d_sae.
  std::vector<Index> matryoshka_widths;

  /// @brief Checks the fields every architecture needs; throws ConfigError.
  void validateCommon() const {
    require(d_in > 0, "d_in must be positive, found ", d_in);
    require(d_sae > 0, "d_sae must be positive, found ", d_sae);
    require(d_sae <= Index(INT32_MAX), "d_sae must fit in 32 bits, found ", d_sae);
    checkCoefficient("l1_coefficient", l1_coefficient);
    checkCoefficient("aux_loss_coefficient", aux_loss_coefficient);
    require(std::isfinite(lp_norm) && lp_norm >= 1.0, "lp_norm must be >= 1, found ", lp_norm);
    require(std::isfinite(decoder_init_norm) && decoder_init_norm > 0,
            "decoder_init_norm must be positive, found ", decoder_init_norm);
    checkCoefficient("l0_coefficient", l0_coefficient);
    checkCoefficient("pre_act_loss_coefficient", pre_act_loss_coefficient);
    require(std::isfinite(jumprelu_bandwidth) && jumprelu_bandwidth > 0,
            "jumprelu_bandwidth must be positive, found ", jumprelu_bandwidth);
    require(std::isfinite(jumprelu_tanh_scale) && jumprelu_tanh_scale > 0,
            "jumprelu_tanh_scale must be positive, found ", jumprelu_tanh_scale);
    require(std::isfinite(jumprelu_init_threshold),
            "jumprelu_init_threshold must be finite, found ", jumprelu_init_threshold);
    require(std::isfinite(topk_threshold_lr) && topk_threshold_lr > 0 && topk_threshold_lr <= 1,
            "topk_threshold_lr must be in (0, 1], found ", topk_threshold_lr);
  }

  static void checkCoefficient(const char* name, double value) {
    require(std::isfinite(value) && value >= 0.0, name, " must be finite and >= 0, found ", value);
  }
};

/// @brief Per-step inputs of the training loss besides the batch.
struct TrainOptions {
  /// TopK: latents that count as dead for AuxK (1 = dead, size d_sae); null = none dead.
  const LatentMask* dead_mask = nullptr;
  /// Multiplier of the sparsity coefficient (coefficient warm-up), in [0, 1] normally.
  double sparsity_scale = 1.0;
};

/// @brief A copy of `name` with static storage duration, the same pointer for equal names:
/// for loss-term names made at run time (Matryoshka's `inner_mse_loss_<width>`). Thread-safe;
/// each distinct name is stored once for the life of the program.
inline const char* internLossName(std::string_view name) {
  static std::mutex mutex;
  static std::set<std::string, std::less<>> names;
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = names.find(name);
  if (it == names.end()) it = names.emplace(name).first;
  return it->c_str();
}

/// @brief The terms of a loss by their SAELens names, in SAELens order, and their total.
///
/// Fixed capacity, no heap allocation: names have static storage (string literals, or
/// internLossName() for names made at run time).
template <typename Scalar>
class LossTerms {
 public:
  /// One term: its SAELens name and value.
  using Term = std::pair<const char*, Scalar>;
  static constexpr std::size_t kCapacity = 32;

  /// @brief A read-only range over the terms, in order.
  class View {
   public:
    View(const Term* b, const Term* e) : m_begin(b), m_end(e) {}
    const Term* begin() const { return m_begin; }
    const Term* end() const { return m_end; }
    std::size_t size() const { return static_cast<std::size_t>(m_end - m_begin); }
    const Term& operator[](std::size_t i) const { return m_begin[i]; }

   private:
    const Term* m_begin;
    const Term* m_end;
  };

  /// @brief Appends a term; `name` must have static storage (see internLossName()).
  void add(const char* name, Scalar value) {
    require(m_size < kCapacity, "LossTerms: more than ", kCapacity, " terms");
    m_terms[m_size++] = Term(name, value);
  }

  /// @brief Sum of the terms in order.
  Scalar total() const {
    Scalar t = 0;
    for (const auto& term : terms()) t += term.second;
    return t;
  }

  /// @brief Value of term `name` ("total" gives total()); throws ConfigError if absent.
  Scalar operator[](std::string_view name) const {
    if (name == "total") return total();
    for (const auto& term : terms())
      if (name == term.first) return term.second;
    std::string names;
    for (const auto& term : terms()) names += (names.empty() ? "" : ", ") + std::string(term.first);
    throw ConfigError(detail::concat("no loss term named '", name, "' (have: ", names, ")"));
  }

  bool contains(std::string_view name) const {
    for (const auto& term : terms())
      if (name == term.first) return true;
    return false;
  }

  View terms() const { return View(m_terms.data(), m_terms.data() + m_size); }
  void clear() { m_size = 0; }

 private:
  std::array<Term, kCapacity> m_terms{};
  std::size_t m_size = 0;
};

/// @brief Feature activations as a dense `[tokens, d_sae]` matrix (standard, gated).
template <typename Scalar>
struct DenseCodes {
  RowMatrix<Scalar> values;

  Index rows() const { return values.rows(); }
  Index latents() const { return values.cols(); }
  const RowMatrix<Scalar>& toDense() const { return values; }
  /// @brief Mean number of non-zero activations per token.
  double l0() const {
    return values.rows() ? double((values.array() != Scalar(0)).count()) / double(values.rows())
                         : 0.0;
  }
};

/// @brief Feature activations kept sparse: k (index, value) pairs per token (TopK).
///
/// Values are SAELens's feature activations (with rescale_acts_by_decoder_norm, in units
/// scaled by the decoder row norms). Pairs are sorted by decreasing value; a value may be 0
/// when fewer than k pre-activations are positive.
template <typename Scalar>
struct SparseCodes {
  IndexMatrix indices;       ///< `[tokens, k]` latent ids.
  RowMatrix<Scalar> values;  ///< `[tokens, k]` activations.
  Index d_sae = 0;           ///< Number of latents.

  Index rows() const { return indices.rows(); }
  Index latents() const { return d_sae; }
  /// @brief The dense `[tokens, d_sae]` matrix (allocates; for inspection and export).
  RowMatrix<Scalar> toDense() const {
    RowMatrix<Scalar> out = RowMatrix<Scalar>::Zero(indices.rows(), d_sae);
    for (Index b = 0; b < indices.rows(); ++b)
      for (Index j = 0; j < indices.cols(); ++j) out(b, indices(b, j)) = values(b, j);
    return out;
  }
  double l0() const {
    return values.rows() ? double((values.array() != Scalar(0)).count()) / double(values.rows())
                         : 0.0;
  }
};

/// @brief Feature activations kept sparse with a variable number per token, row-compressed
/// (BatchTopK, Matryoshka BatchTopK).
///
/// The entries of row b are the positions [pattern.row_start[b], pattern.row_start[b + 1]) of
/// `pattern.latent`, `pattern.row` and `values`, by increasing latent. Values are SAELens's
/// feature activations (with rescale_acts_by_decoder_norm, in units scaled by the decoder row
/// norms, as for TopK).
template <typename Scalar>
struct CsrCodes {
  kernels::CsrPattern pattern;  ///< Rows and latents of the entries.
  std::vector<Scalar> values;   ///< One activation per entry.
  Index d_sae = 0;              ///< Number of latents.

  Index rows() const { return pattern.row_start.empty() ? 0 : pattern.rows(); }
  Index latents() const { return d_sae; }
  /// @brief Number of stored entries.
  Index nnz() const { return pattern.nnz(); }
  /// @brief The dense `[tokens, d_sae]` matrix (allocates; for inspection and export).
  RowMatrix<Scalar> toDense() const {
    RowMatrix<Scalar> out = RowMatrix<Scalar>::Zero(rows(), d_sae);
    for (Index e = 0; e < nnz(); ++e) out(pattern.row[e], pattern.latent[e]) = values[e];
    return out;
  }
  double l0() const {
    Index count = 0;
    for (const Scalar v : values) count += v != Scalar(0);
    return rows() ? double(count) / double(rows()) : 0.0;
  }
};

}  // namespace sae
