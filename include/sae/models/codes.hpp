/// @file codes.hpp
/// @brief The feature codes of an SAE (DenseCodes, SparseCodes, CsrCodes) and forEachActive(),
/// the one loop over the active entries of any of them.
#pragma once

#include <cstddef>
#include <vector>

#include <sae/core/types.hpp>
#include <sae/kernels/sparse.hpp>

namespace sae {

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

/// True for SparseCodes<S> (k pairs per row), false for the other codes types.
template <typename Codes>
inline constexpr bool isSparseCodes = false;
template <typename Scalar>
inline constexpr bool isSparseCodes<SparseCodes<Scalar>> = true;

/// @brief Calls `fn(row, latent, value)` for each active entry (value != 0) of `codes`, row by
/// row; within a row in stored order (SparseCodes: decreasing value; CsrCodes: increasing
/// latent; DenseCodes: increasing latent). The one loop every consumer of codes (firing counts,
/// dead latents, densities) goes through, whatever the codes type.
template <typename Scalar, typename Fn>
void forEachActive(const DenseCodes<Scalar>& codes, Fn&& fn) {
  const Index rows = codes.values.rows(), latents = codes.values.cols();
  for (Index b = 0; b < rows; ++b) {
    const Scalar* row = codes.values.data() + b * latents;
    for (Index i = 0; i < latents; ++i)
      if (row[i] != Scalar(0)) fn(b, i, row[i]);
  }
}

/// @copydoc forEachActive(const DenseCodes<Scalar>&, Fn&&)
template <typename Scalar, typename Fn>
void forEachActive(const SparseCodes<Scalar>& codes, Fn&& fn) {
  for (Index b = 0; b < codes.indices.rows(); ++b)
    for (Index j = 0; j < codes.indices.cols(); ++j)
      if (codes.values(b, j) != Scalar(0)) fn(b, Index(codes.indices(b, j)), codes.values(b, j));
}

/// @copydoc forEachActive(const DenseCodes<Scalar>&, Fn&&)
template <typename Scalar, typename Fn>
void forEachActive(const CsrCodes<Scalar>& codes, Fn&& fn) {
  for (Index e = 0; e < codes.nnz(); ++e) {
    const Scalar v = codes.values[static_cast<std::size_t>(e)];
    if (v != Scalar(0)) fn(Index(codes.pattern.row[e]), Index(codes.pattern.latent[e]), v);
  }
}

}  // namespace sae
