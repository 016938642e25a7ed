/// @file topk.hpp
/// @brief Per-row top-k selection, plain and fused with the encoder's bias and rescale; exact
/// top-K over a whole batch (BatchTopK), streamed from several threads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <sae/core/config.hpp>
#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/kernels/sparse.hpp>

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
namespace detail {

#if defined(__AVX512F__)
/// selectTopKFused() for float on AVX-512: four blocks of 16 scores at a time are compared
/// with the current k-th value in mask registers, and only the lanes above it are inserted (in
/// increasing position, as the portable loop does), so a full list costs a few instructions per
/// 16 scores. Returns the end of the part it handled (a multiple of 64).
template <bool kScaled>
inline Index selectTopKFusedAvx512(const float* pre, const float* bias, const float* scale, Index n,
                                   Index k, Index& filled, std::int32_t* out_index,
                                   float* out_value) {
  constexpr Index kStep = 64;
  const Index full = n - n % kStep;
  alignas(64) float buf[kStep];
  for (Index i = 0; i < full; i += kStep) {
    __m512 v[4];
    for (int q = 0; q < 4; ++q) {
      const Index o = i + 16 * q;
      v[q] = _mm512_add_ps(_mm512_loadu_ps(pre + o), _mm512_loadu_ps(bias + o));
      if (kScaled) v[q] = _mm512_mul_ps(v[q], _mm512_loadu_ps(scale + o));
    }
    std::uint64_t mask = ~std::uint64_t(0);
    if (filled == k) {
      const __m512 cut = _mm512_set1_ps(out_value[k - 1]);
      mask = 0;
      for (int q = 0; q < 4; ++q)
        mask |= std::uint64_t(_mm512_cmp_ps_mask(v[q], cut, _CMP_GT_OQ)) << (16 * q);
      if (mask == 0) continue;
    }
    for (int q = 0; q < 4; ++q) _mm512_store_ps(buf + 16 * q, v[q]);
    while (mask) {
      const int j = __builtin_ctzll(mask);
      mask &= mask - 1;
      insertTopK(buf[j], static_cast<std::int32_t>(i + j), k, filled, out_index, out_value);
    }
  }
  return full;
}
#endif

}  // namespace detail

/// @brief Top-k of the scores `(pre[i] + bias[i]) * scale[i]` (no scale when `scale` is null)
/// for i in [0, n), computed on the fly: the fused bias + rescale + selection of a row of
/// encoder pre-activations, with no write to the row.
///
/// The same selection and order as selectTopK() on the materialised scores. Scores are made
/// 16 at a time and a block none of whose scores can enter the current top k is skipped, so
/// the scan is vectorised and the sorted insertion runs only for the few candidates (float on
/// AVX-512: 64 at a time, with mask registers; 1.55 -> 3.2-3.6 Gscores/s on 2 threads here,
/// reading 512 x 24576 tiles from memory).
template <typename Scalar>
void selectTopKFused(const Scalar* pre, const Scalar* bias, const Scalar* scale, Index n, Index k,
                     std::int32_t* out_index, Scalar* out_value) {
  constexpr Index kBlock = 16;
  using Block = Eigen::Array<Scalar, kBlock, 1>;
  Index filled = 0;
  Index start = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<Scalar, float>) {
    start = scale ? detail::selectTopKFusedAvx512<true>(pre, bias, scale, n, k, filled, out_index,
                                                        out_value)
                  : detail::selectTopKFusedAvx512<false>(pre, bias, scale, n, k, filled, out_index,
                                                         out_value);
  }
#endif
  const Index full = start + (n - start) - (n - start) % kBlock;
  Block score;
  for (Index i = start; i < full; i += kBlock) {
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

/// @brief The `K` largest positive scores of a whole batch (BatchTopK), exactly, without
/// holding the batch's `[B, n]` scores: rows are offered one at a time, from any number of
/// threads, and each thread keeps only the candidates that can still be among the K best.
///
/// Scores are `(pre[i] + bias[i]) * scale[i]` (no scale when null), as in selectTopKFused(),
/// and only scores > 0 are candidates. The order is total: a higher score first, and equal
/// scores by lower position `b * n + i` (row-major), so the selection is deterministic and
/// independent of the thread count and of how rows are tiled.
///
/// Each thread owns a buffer of up to 2K candidates and a cutoff, its K-th best so far: a
/// score enters only when it beats the cutoff; a full buffer is cut back to its K best with
/// std::nth_element. Blocks of 16 scores whose maximum is below the cutoff are skipped after
/// one vectorised pass. finish() merges the buffers (dropping what is worse than the best of
/// the threads' K-th bests, a lower bound of the batch's K-th best) and returns the selection
/// in row-compressed form, by increasing latent within a row. Storage is reused across
/// batches: once it has grown, a selection allocates nothing.
///
/// @tparam Scalar float or double.
template <typename Scalar>
class BatchTopKSelector {
 public:
  /// A candidate: its score, the pre-activation `pre + bias` (carried along) and its position.
  struct Candidate {
    Scalar score;
    Scalar value;
    std::int64_t pos;
  };

  /// @brief Starts a selection of the `k_total` best over `threads` streams (thread indices
  /// 0 .. threads - 1 may then call offerRow() concurrently, each with its own index).
  void start(Index k_total, int threads) {
    require(k_total >= 1, "BatchTopKSelector: k_total must be >= 1, found ", k_total);
    require(threads >= 1, "BatchTopKSelector: threads must be >= 1, found ", threads);
    m_k = k_total;
    if (m_streams.size() < static_cast<std::size_t>(threads))
      m_streams.resize(static_cast<std::size_t>(threads));
    m_active = threads;
    const std::size_t cap = capacity();
    for (int t = 0; t < threads; ++t) {
      Stream& s = m_streams[static_cast<std::size_t>(t)];
      s.buffer.clear();
      s.buffer.reserve(cap);
      s.cutoff = Candidate{Scalar(0), Scalar(0), -1};  // admits exactly the scores > 0
    }
    // Merging sees at most K per stream; reserved here so that finish() does not allocate.
    m_merged.reserve(static_cast<std::size_t>(threads) * static_cast<std::size_t>(k_total));
    m_sorted.reserve(static_cast<std::size_t>(k_total));
  }

  /// @brief Offers the `n` scores of one row, whose first entry has position `first_pos`
  /// (`b * n`), from stream `thread`.
  void offerRow(int thread, const Scalar* pre, const Scalar* bias, const Scalar* scale, Index n,
                std::int64_t first_pos) {
    Stream& s = m_streams[static_cast<std::size_t>(thread)];
    constexpr Index kBlock = 16;
    using Block = Eigen::Array<Scalar, kBlock, 1>;
    const Index full = n - n % kBlock;
    Block score;
    for (Index i = 0; i < full; i += kBlock) {
      const Eigen::Map<const Block> p(pre + i), b(bias + i);
      if (scale) {
        score = (p + b) * Eigen::Map<const Block>(scale + i);
      } else {
        score = p + b;
      }
      if (score.maxCoeff() < s.cutoff.score) continue;
      for (Index j = 0; j < kBlock; ++j) consider(s, score[j], pre, bias, i + j, first_pos);
    }
    for (Index i = full; i < n; ++i) {
      const Scalar v = scale ? (pre[i] + bias[i]) * scale[i] : pre[i] + bias[i];
      consider(s, v, pre, bias, i, first_pos);
    }
  }

  /// @brief Merges the streams into the selection: the min(K, number of positive scores)
  /// best, as `pattern` (rows and latents of a `[rows, n]` batch, by increasing latent within
  /// a row) with their scores and values in the same order.
  void finish(Index rows, Index n, CsrPattern& pattern, std::vector<Scalar>& scores,
              std::vector<Scalar>& values) {
    const std::size_t K = static_cast<std::size_t>(m_k);
    // Every stream down to its K best; the best of the streams' K-th bests is a lower bound
    // of the batch's K-th best.
    bool have_bound = false;
    Candidate bound{};
    for (int t = 0; t < m_active; ++t) {
      std::vector<Candidate>& buf = m_streams[static_cast<std::size_t>(t)].buffer;
      if (buf.size() < K) continue;
      keepBest(buf, K);
      const Candidate worst = *std::max_element(buf.begin(), buf.end(), better);
      if (!have_bound || better(worst, bound)) bound = worst;
      have_bound = true;
    }
    m_merged.clear();
    for (int t = 0; t < m_active; ++t)
      for (const Candidate& c : m_streams[static_cast<std::size_t>(t)].buffer)
        if (!have_bound || !better(bound, c)) m_merged.push_back(c);
    if (m_merged.size() > K) keepBest(m_merged, K);
    m_min_score = m_merged.empty() ? Scalar(0) : m_merged.front().score;
    for (const Candidate& c : m_merged) m_min_score = std::min(m_min_score, c.score);

    // Counting sort by row, then by latent within each row.
    const std::size_t nnz = m_merged.size();
    pattern.row_start.assign(static_cast<std::size_t>(rows) + 1, 0);
    for (const Candidate& c : m_merged)
      ++pattern.row_start[static_cast<std::size_t>(c.pos / n) + 1];
    for (Index b = 0; b < rows; ++b) pattern.row_start[b + 1] += pattern.row_start[b];
    m_fill.assign(pattern.row_start.begin(), pattern.row_start.end() - 1);
    m_sorted.resize(nnz);
    for (const Candidate& c : m_merged) m_sorted[m_fill[c.pos / n]++] = c;
    pattern.latent.resize(nnz);
    pattern.row.resize(nnz);
    scores.resize(nnz);
    values.resize(nnz);
    SAE_PRAGMA_OMP(parallel for schedule(static))
    for (Index b = 0; b < rows; ++b) {
      const auto first = m_sorted.begin() + pattern.row_start[b];
      const auto last = m_sorted.begin() + pattern.row_start[b + 1];
      std::sort(first, last, [](const Candidate& x, const Candidate& y) { return x.pos < y.pos; });
      for (Index e = pattern.row_start[b]; e < pattern.row_start[b + 1]; ++e) {
        const Candidate& c = m_sorted[static_cast<std::size_t>(e)];
        pattern.latent[e] = static_cast<std::int32_t>(c.pos - std::int64_t(b) * n);
        pattern.row[e] = static_cast<std::int32_t>(b);
        scores[e] = c.score;
        values[e] = c.value;
      }
    }
  }

  /// @brief Number of entries selected by the last finish().
  Index selected() const { return static_cast<Index>(m_merged.size()); }
  /// @brief Smallest selected score of the last finish() (0 when nothing was selected).
  Scalar minScore() const { return m_min_score; }

  /// @brief `a` comes before `b`: a higher score, or an equal score at a lower position.
  static bool better(const Candidate& a, const Candidate& b) {
    return a.score > b.score || (a.score == b.score && a.pos < b.pos);
  }

 private:
  struct alignas(64) Stream {
    std::vector<Candidate> buffer;
    Candidate cutoff{};
  };

  std::size_t capacity() const { return 2 * static_cast<std::size_t>(m_k); }

  void consider(Stream& s, Scalar v, const Scalar* pre, const Scalar* bias, Index i,
                std::int64_t first_pos) {
    const Candidate c{v, pre[i] + bias[i], first_pos + i};
    if (!better(c, s.cutoff)) return;
    s.buffer.push_back(c);
    if (s.buffer.size() < capacity()) return;
    keepBest(s.buffer, static_cast<std::size_t>(m_k));
    s.cutoff = s.buffer.back();  // nth_element put the K-th best last
  }

  /// Keeps the `keep` best of `buf` (in no particular order).
  static void keepBest(std::vector<Candidate>& buf, std::size_t keep) {
    if (buf.size() <= keep) return;
    std::nth_element(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(keep - 1), buf.end(),
                     better);
    buf.resize(keep);
  }

  Index m_k = 1;
  int m_active = 0;
  std::vector<Stream> m_streams;
  std::vector<Candidate> m_merged, m_sorted;
  std::vector<Index> m_fill;
  Scalar m_min_score = 0;
};

}  // namespace kernels
}  // namespace sae
