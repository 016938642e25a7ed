/// @file sparse.hpp
/// @brief Kernels over sparse codes: gather-decode, gather-dot, bucketing by latent and
/// bucketed row accumulation (no atomics, deterministic), decoder row norms, bias + ReLU.
///
/// A sparse code of a batch is a list of entries (row b, latent i, coefficient). Decoding
/// gathers the decoder rows of each entry; gradients of weights scatter back by latent. The
/// scatter is made race-free and deterministic by a counting sort of the entries by latent
/// (LatentBuckets): each latent's output row is then written by exactly one thread, summing its
/// entries in a fixed order.
#pragma once

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <vector>

#include <sae/core/config.hpp>
#include <sae/core/types.hpp>

namespace sae {
namespace kernels {

namespace detail {

/// A decoded row starts as the bias, or zero when the bias is empty.
template <typename Row, typename Bias>
inline void startRow(Row& o, const Bias& bias) {
  if (bias.size() > 0) {
    o = bias.transpose();
  } else {
    o.setZero();
  }
}

}  // namespace detail

/// @brief out[b, :] = bias + sum_j coef[b, j] * table[index[b, j], :] (bias may be empty).
///
/// @param index  `[B, k]` latent per entry.
/// @param coef   `[B, k]` coefficient per entry.
/// @param table  `[n, d]` row-major (decoder rows).
/// @param bias   `[d]` or size 0 for none.
/// @param out    `[B, d]`, overwritten.
template <typename Scalar>
void gatherDecode(const Eigen::Ref<const IndexMatrix>& index,
                  const Eigen::Ref<const RowMatrix<Scalar>>& coef,
                  const Eigen::Ref<const RowMatrix<Scalar>>& table,
                  const Eigen::Ref<const Vector<Scalar>>& bias, Eigen::Ref<RowMatrix<Scalar>> out) {
  const Index rows = index.rows();
  const Index k = index.cols();
  SAE_PRAGMA_OMP(parallel for schedule(static))
  for (Index b = 0; b < rows; ++b) {
    auto o = out.row(b);
    detail::startRow(o, bias);
    for (Index j = 0; j < k; ++j) o.noalias() += coef(b, j) * table.row(index(b, j));
  }
}

/// @brief out[b, j] = dot(left[b, :], table[index[b, j], :]).
template <typename Scalar>
void gatherDot(const Eigen::Ref<const RowMatrix<Scalar>>& left,
               const Eigen::Ref<const IndexMatrix>& index,
               const Eigen::Ref<const RowMatrix<Scalar>>& table,
               Eigen::Ref<RowMatrix<Scalar>> out) {
  const Index rows = index.rows();
  const Index k = index.cols();
  SAE_PRAGMA_OMP(parallel for schedule(static))
  for (Index b = 0; b < rows; ++b) {
    for (Index j = 0; j < k; ++j) out(b, j) = left.row(b).dot(table.row(index(b, j)));
  }
}

/// @brief Entries of a sparse code grouped by latent (a counting sort, CSR layout).
///
/// Entry e of the input list (row-major order over a `[B, k]` index matrix, possibly several
/// matrices appended) lands in bucket `latent(e)`; inside a bucket entries keep input order.
class LatentBuckets {
 public:
  /// @brief Groups the entries of the given index matrices (appended in order) by latent.
  /// Entry ids run over the first matrix row-major, then the second, and so on.
  void build(Index num_latents, std::initializer_list<const IndexMatrix*> parts) {
    m_start.assign(static_cast<std::size_t>(num_latents) + 1, 0);
    Index total = 0;
    for (const IndexMatrix* p : parts) total += p->size();
    m_entries.resize(static_cast<std::size_t>(total));
    for (const IndexMatrix* p : parts)
      for (Index e = 0; e < p->size(); ++e) ++m_start[static_cast<std::size_t>(p->data()[e]) + 1];
    for (Index i = 0; i < num_latents; ++i) m_start[i + 1] += m_start[i];
    m_fill.assign(m_start.begin(), m_start.end() - 1);
    std::int32_t base = 0;
    for (const IndexMatrix* p : parts) {
      for (Index e = 0; e < p->size(); ++e)
        m_entries[m_fill[p->data()[e]]++] = base + static_cast<std::int32_t>(e);
      base += static_cast<std::int32_t>(p->size());
    }
  }

  /// @brief Groups `count` entries whose latents are `latents[0..count)`; entry id = position.
  void build(Index num_latents, const std::int32_t* latents, Index count) {
    m_start.assign(static_cast<std::size_t>(num_latents) + 1, 0);
    m_entries.resize(static_cast<std::size_t>(count));
    for (Index e = 0; e < count; ++e) ++m_start[static_cast<std::size_t>(latents[e]) + 1];
    for (Index i = 0; i < num_latents; ++i) m_start[i + 1] += m_start[i];
    m_fill.assign(m_start.begin(), m_start.end() - 1);
    for (Index e = 0; e < count; ++e)
      m_entries[m_fill[latents[e]]++] = static_cast<std::int32_t>(e);
  }

  /// @brief Room for `count` entries, so that later builds of up to that many do not allocate.
  void reserve(Index count) { m_entries.reserve(static_cast<std::size_t>(count)); }

  Index numLatents() const { return static_cast<Index>(m_start.size()) - 1; }
  /// First position in entries() of latent i's bucket; the bucket ends at begin(i + 1).
  Index begin(Index i) const { return m_start[static_cast<std::size_t>(i)]; }
  Index end(Index i) const { return m_start[static_cast<std::size_t>(i) + 1]; }
  /// Entry ids, grouped by latent.
  const std::vector<std::int32_t>& entries() const { return m_entries; }

 private:
  std::vector<Index> m_start;
  std::vector<Index> m_fill;
  std::vector<std::int32_t> m_entries;
};

namespace detail {

/// accumulateByLatent() (kOverwrite false) and sumByLatent() (true).
template <bool kOverwrite, typename Scalar>
void byLatent(const LatentBuckets& buckets, const std::int32_t* row, const Scalar* coef,
              const Eigen::Ref<const RowMatrix<Scalar>>& source, Eigen::Ref<RowMatrix<Scalar>> out,
              Scalar* bias_out) {
  const Index n = buckets.numLatents();
  const std::int32_t* ids = buckets.entries().data();
  SAE_PRAGMA_OMP(parallel for schedule(dynamic, 64))
  for (Index i = 0; i < n; ++i) {
    const Index e0 = buckets.begin(i);
    const Index e1 = buckets.end(i);
    auto o = out.row(i);
    if (kOverwrite) o.setZero();
    Scalar bias_sum = 0;
    for (Index p = e0; p < e1; ++p) {
      const std::int32_t e = ids[p];
      o.noalias() += coef[e] * source.row(row[e]);
      bias_sum += coef[e];
    }
    if (bias_out) bias_out[i] = kOverwrite ? bias_sum : bias_out[i] + bias_sum;
  }
}

}  // namespace detail

/// @brief out[i, :] += sum over entries e in bucket i of coef[e] * source[row[e], :].
///
/// Also, when `bias_out` is non-null, bias_out[i] += sum of coef[e] over the bucket.
/// Parallel over latents; each output row is written by one thread in bucket order, so the
/// result is bitwise reproducible for every thread count.
///
/// @param buckets  entries grouped by latent (ids index `row` and `coef`).
/// @param row      row of `source` per entry id.
/// @param coef     coefficient per entry id.
/// @param source   `[R, d]` row-major.
/// @param out      `[n, d]` row-major (pass a transposed map for column-major weights).
template <typename Scalar>
void accumulateByLatent(const LatentBuckets& buckets, const std::int32_t* row, const Scalar* coef,
                        const Eigen::Ref<const RowMatrix<Scalar>>& source,
                        Eigen::Ref<RowMatrix<Scalar>> out, Scalar* bias_out = nullptr) {
  detail::byLatent<false, Scalar>(buckets, row, coef, source, out, bias_out);
}

/// @brief accumulateByLatent() into a fresh output: out[i, :] = the sum (0 for an empty
/// bucket), bias_out[i] = the coefficient sum; bitwise equal to zeroing out and bias_out first,
/// without the separate pass over `out`.
template <typename Scalar>
void sumByLatent(const LatentBuckets& buckets, const std::int32_t* row, const Scalar* coef,
                 const Eigen::Ref<const RowMatrix<Scalar>>& source,
                 Eigen::Ref<RowMatrix<Scalar>> out, Scalar* bias_out = nullptr) {
  detail::byLatent<true, Scalar>(buckets, row, coef, source, out, bias_out);
}

/// @brief The non-zero pattern of a dense `[B, n]` matrix in row-compressed form: the
/// entries of row b are positions [rowStart[b], rowStart[b + 1]) of `latent` and `row`.
struct CsrPattern {
  std::vector<Index> row_start;      ///< B + 1 offsets.
  std::vector<std::int32_t> latent;  ///< Column (latent) of each entry.
  std::vector<std::int32_t> row;     ///< Row of each entry.

  Index nnz() const { return static_cast<Index>(latent.size()); }
  Index rows() const { return static_cast<Index>(row_start.size()) - 1; }

  /// @brief Pattern of the entries of `m` that are > 0, in row-major order.
  template <typename Scalar>
  void buildPositive(const Eigen::Ref<const RowMatrix<Scalar>>& m) {
    buildWhere(m.rows(), m.cols(), [&m](Index b, Index i) { return m(b, i) > Scalar(0); });
  }

  /// @brief Pattern of the entries (b, i) of a `[rows, cols]` grid for which `keep(b, i)` is
  /// true, in row-major order. `keep` is called twice per entry, from several threads.
  template <typename Keep>
  void buildWhere(Index rows, Index cols, const Keep& keep) {
    row_start.assign(static_cast<std::size_t>(rows) + 1, 0);
    SAE_PRAGMA_OMP(parallel for schedule(static))
    for (Index b = 0; b < rows; ++b) {
      Index count = 0;
      for (Index i = 0; i < cols; ++i) count += keep(b, i) ? 1 : 0;
      row_start[static_cast<std::size_t>(b) + 1] = count;
    }
    for (Index b = 0; b < rows; ++b) row_start[b + 1] += row_start[b];
    latent.resize(static_cast<std::size_t>(row_start[rows]));
    row.resize(static_cast<std::size_t>(row_start[rows]));
    SAE_PRAGMA_OMP(parallel for schedule(static))
    for (Index b = 0; b < rows; ++b) {
      Index e = row_start[b];
      for (Index i = 0; i < cols; ++i) {
        if (keep(b, i)) {
          latent[e] = static_cast<std::int32_t>(i);
          row[e] = static_cast<std::int32_t>(b);
          ++e;
        }
      }
    }
  }
};

/// @brief out[b, :] = bias + sum over the entries e of row b of coef[e] * table[latent[e], :]
/// (bias may be empty).
template <typename Scalar>
void csrDecode(const CsrPattern& pattern, const Scalar* coef,
               const Eigen::Ref<const RowMatrix<Scalar>>& table,
               const Eigen::Ref<const Vector<Scalar>>& bias, Eigen::Ref<RowMatrix<Scalar>> out) {
  const Index rows = pattern.rows();
  SAE_PRAGMA_OMP(parallel for schedule(static))
  for (Index b = 0; b < rows; ++b) {
    auto o = out.row(b);
    detail::startRow(o, bias);
    for (Index e = pattern.row_start[b]; e < pattern.row_start[b + 1]; ++e)
      o.noalias() += coef[e] * table.row(pattern.latent[e]);
  }
}

/// @brief out[e] = dot(left[row[e], :], table[latent[e], :]) for every entry.
template <typename Scalar>
void csrDot(const Eigen::Ref<const RowMatrix<Scalar>>& left, const CsrPattern& pattern,
            const Eigen::Ref<const RowMatrix<Scalar>>& table, Scalar* out) {
  const Index rows = pattern.rows();
  SAE_PRAGMA_OMP(parallel for schedule(static))
  for (Index b = 0; b < rows; ++b) {
    for (Index e = pattern.row_start[b]; e < pattern.row_start[b + 1]; ++e)
      out[e] = left.row(b).dot(table.row(pattern.latent[e]));
  }
}

/// @brief Euclidean norm of every row of `m` into `out`.
template <typename Scalar>
void rowNorms(const Eigen::Ref<const RowMatrix<Scalar>>& m, Eigen::Ref<Vector<Scalar>> out) {
  const Index rows = m.rows();
  SAE_PRAGMA_OMP(parallel for schedule(static))
  for (Index i = 0; i < rows; ++i) out[i] = m.row(i).norm();
}

/// @brief Fused bias + ReLU: pre[b, :] += bias; act[b, :] = max(pre[b, :], 0).
template <typename Scalar>
void addBiasRelu(Eigen::Ref<RowMatrix<Scalar>> pre, const Eigen::Ref<const Vector<Scalar>>& bias,
                 Eigen::Ref<RowMatrix<Scalar>> act) {
  const Index rows = pre.rows();
  SAE_PRAGMA_OMP(parallel for schedule(static))
  for (Index b = 0; b < rows; ++b) {
    pre.row(b) += bias.transpose();
    act.row(b) = pre.row(b).cwiseMax(Scalar(0));
  }
}

}  // namespace kernels
}  // namespace sae
