/// @file topk.hpp
/// @brief Per-row top-k selection, plain and fused with the encoder's bias and rescale.
#pragma once

#include <cstdint>

#include <sae/core/config.hpp>
#include <sae/core/types.hpp>

namespace sae {
namespace kernels {
namespace detail {

/// Inserts (v, pos) into the descending list of `filled` <= k entries if it belongs there;
/// an equal value goes behind the entries already present.
template <typename Scalar>
inline void insertTopK(Scalar v, std::int32_t pos, Index k, Index& filled, std::int32_t* out_index,
                       Scalar* out_value) {
  if (filled == k && !(v > out_value[k - 1])) return;
  Index i = filled < k ? filled++ : k - 1;
  while (i > 0 && v > out_value[i - 1]) {
    out_value[i] = out_value[i - 1];
    out_index[i] = out_index[i - 1];
    --i;
  }
  out_value[i] = v;
  out_index[i] = pos;
}

}  // namespace detail

/// @brief Selects the `k` largest of `count` scores, optionally among a candidate list.
///
/// Results are written in descending order of value; ties keep the lower position first, so
/// the selection is deterministic. `k` must be at most `count`.
///
/// @param scores      the scores (a row of pre-activations).
/// @param candidates  when non-null, the positions to consider (`count` of them); the scores
///                    read are `scores[candidates[j]]` and the indices written are positions.
/// @param count       number of scores (or candidates) to consider.
/// @param k           number to select.
/// @param out_index   k positions (into `scores`).
/// @param out_value   k values.
template <typename Scalar>
void selectTopK(const Scalar* scores, const std::int32_t* candidates, Index count, Index k,
                std::int32_t* out_index, Scalar* out_value) {
  Index filled = 0;
  for (Index j = 0; j < count; ++j) {
    const std::int32_t pos = candidates ? candidates[j] : static_cast<std::int32_t>(j);
    detail::insertTopK(scores[pos], pos, k, filled, out_index, out_value);
  }
}

/// @brief Top-k of the scores `(pre[i] + bias[i]) * scale[i]` (no scale when `scale` is null)
/// for i in [0, n), computed on the fly: the fused bias + rescale + selection of a row of
/// encoder pre-activations, with no write to the row.
///
/// The same selection and order as selectTopK() on the materialised scores. Scores are made
/// 16 at a time and a block whose maximum cannot enter the current top k is skipped, so the
/// scan is vectorised and the sorted insertion runs only for the few candidates.
template <typename Scalar>
void selectTopKFused(const Scalar* pre, const Scalar* bias, const Scalar* scale, Index n, Index k,
                     std::int32_t* out_index, Scalar* out_value) {
  constexpr Index kBlock = 16;
  using Block = Eigen::Array<Scalar, kBlock, 1>;
  Index filled = 0;
  const Index full = n - n % kBlock;
  Block score;
  for (Index i = 0; i < full; i += kBlock) {
    const Eigen::Map<const Block> p(pre + i), b(bias + i);
    if (scale) {
      score = (p + b) * Eigen::Map<const Block>(scale + i);
    } else {
      score = p + b;
    }
    if (filled == k && !(score.maxCoeff() > out_value[k - 1])) continue;
    for (Index j = 0; j < kBlock; ++j)
      detail::insertTopK(score[j], static_cast<std::int32_t>(i + j), k, filled, out_index,
                         out_value);
  }
  for (Index i = full; i < n; ++i) {
    const Scalar v = scale ? (pre[i] + bias[i]) * scale[i] : pre[i] + bias[i];
    detail::insertTopK(v, static_cast<std::int32_t>(i), k, filled, out_index, out_value);
  }
}

/// @brief selectTopKFused() restricted to the positions in `candidates` (`count` of them).
template <typename Scalar>
void selectTopKFusedAmong(const Scalar* pre, const Scalar* bias, const Scalar* scale,
                          const std::int32_t* candidates, Index count, Index k,
                          std::int32_t* out_index, Scalar* out_value) {
  Index filled = 0;
  for (Index j = 0; j < count; ++j) {
    const std::int32_t i = candidates[j];
    const Scalar v = scale ? (pre[i] + bias[i]) * scale[i] : pre[i] + bias[i];
    detail::insertTopK(v, i, k, filled, out_index, out_value);
  }
}

/// @brief Top-k of every row of `scores` (`[rows, n]`), in parallel over rows.
///
/// @param scores   row-major scores.
/// @param k        number to select per row, 1 <= k <= n.
/// @param indices  `[rows, k]` output positions, descending by value.
/// @param values   `[rows, k]` output values.
template <typename Scalar>
void rowTopK(const Eigen::Ref<const RowMatrix<Scalar>>& scores, Index k,
             Eigen::Ref<IndexMatrix> indices, Eigen::Ref<RowMatrix<Scalar>> values) {
  const Index rows = scores.rows();
  SAE_PRAGMA_OMP(parallel for schedule(static))
  for (Index r = 0; r < rows; ++r) {
    selectTopK(scores.row(r).data(), static_cast<const std::int32_t*>(nullptr), scores.cols(), k,
               indices.row(r).data(), values.row(r).data());
  }
}

}  // namespace kernels
}  // namespace sae
