/// @file topk.hpp
/// @brief Per-row top-k selection.
#pragma once

#include <cstdint>

#include <sae/core/config.hpp>
#include <sae/core/types.hpp>

namespace sae {
namespace kernels {

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
  if (k <= 0) return;
  Index filled = 0;
  for (Index j = 0; j < count; ++j) {
    const std::int32_t pos = candidates ? candidates[j] : static_cast<std::int32_t>(j);
    const Scalar v = scores[pos];
    if (filled == k && !(v > out_value[k - 1])) continue;
    // Insertion into the sorted prefix; equal values stay behind earlier positions.
    Index i = filled < k ? filled++ : k - 1;
    while (i > 0 && v > out_value[i - 1]) {
      out_value[i] = out_value[i - 1];
      out_index[i] = out_index[i - 1];
      --i;
    }
    out_value[i] = v;
    out_index[i] = pos;
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
