/// @file feature_stats.hpp
/// @brief FeatureStatistics: per-feature firing frequency, mean and max activation, the top-N
/// activating rows and a log10-density histogram of a trained SAE over a dataset, accumulated
/// batch by batch from its codes, with a JSON report.
///
/// A feature *fires* on a row when its activation there is non-zero (as in FiringStats; a TopK
/// pair whose value is 0 does not fire). Rows are identified by their *global* index, which the
/// caller passes as the offset of each batch; token ids (optional) are looked up by that index.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <sae/core/config.hpp>
#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/models/sae_config.hpp>

namespace sae {
namespace eval {

/// @brief One entry of a feature's top list: an activation and the global row it occurred on.
struct TopActivation {
  double value = 0;      ///< The activation (a float code widened exactly to double).
  std::int64_t row = 0;  ///< Global row index (batch offset + row in the batch).

  friend bool operator==(const TopActivation& a, const TopActivation& b) {
    return a.value == b.value && a.row == b.row;
  }
};

/// @brief The order of top lists: larger activation first; on equal activations the lower row
/// first. It is a strict total order on distinct rows, so a top list does not depend on the
/// order in which rows were seen.
inline bool ranksBefore(const TopActivation& a, const TopActivation& b) {
  return a.value > b.value || (a.value == b.value && a.row < b.row);
}

/// @brief Histogram of log10 feature densities (density = firing count / tokens).
///
/// kBins bins of width kBinWidth cover [kLow, kHigh] = [-10, 0]: bin i holds the features with
/// edge(i) <= log10(density) < edge(i + 1), the last bin also log10(density) = 0 (density 1).
/// Numerically the bin is floor((log10(density) - kLow) / kBinWidth). Features that never fired
/// (density 0, log10 = -inf) are counted in `dead`, not in a bin; features with
/// 0 < density < 1e-10 (possible past 10^10 tokens) in `below_range`.
struct DensityHistogram {
  static constexpr double kLow = -10.0;     ///< First edge (log10 density).
  static constexpr double kHigh = 0.0;      ///< Last edge.
  static constexpr double kBinWidth = 0.5;  ///< Width of a bin, in decades.
  static constexpr int kBins = 20;          ///< (kHigh - kLow) / kBinWidth.
  std::vector<std::int64_t> counts;         ///< kBins features counts.
  std::int64_t dead = 0;                    ///< Features with density 0.
  std::int64_t below_range = 0;             ///< Features with 0 < density < 10^kLow.

  DensityHistogram() : counts(kBins, 0) {}

  /// @brief Lower edge of bin `i` (edge(kBins) = kHigh).
  static double edge(int i) { return kLow + kBinWidth * i; }

  /// @brief Bin of a positive density: 0 .. kBins - 1 (densities >= 1 in the last), or -1
  /// below 10^kLow.
  static int binOf(double density) {
    require(density > 0, "density must be positive, found ", density);
    const double l = std::log10(density);
    if (l < kLow) return -1;
    return std::min(kBins - 1, static_cast<int>(std::floor((l - kLow) / kBinWidth)));
  }

  /// @brief Counts one feature of density `density` (0 = dead).
  void add(double density) {
    if (density == 0) {
      ++dead;
      return;
    }
    const int b = binOf(density);
    if (b < 0) {
      ++below_range;
    } else {
      ++counts[static_cast<std::size_t>(b)];
    }
  }
};

/// @brief Per-feature statistics of SAE codes over any number of batches.
///
/// Per feature i, over the T rows added:
///   - firing count c_i (rows where the activation is non-zero) and frequency c_i / T;
///   - mean activation over **all** rows, s_i / T (zeros included), and mean activation over
///     the **firing** rows, s_i / c_i, where s_i is the sum of the activations in double;
///   - max activation (the largest firing activation);
///   - the top-N (activation, global row) pairs in ranksBefore() order (ties: lower row first),
///     kept in a bounded min-heap per feature.
///
/// Cost: add() is O(nnz + d_sae) per batch for SparseCodes (a counting sort of the non-zero
/// pairs by feature) and O(rows * d_sae) for DenseCodes (every entry is looked at once); a
/// top-list update is O(log N) and only happens when an activation beats the feature's current
/// N-th. Memory is O(d_sae * N) plus the sparse batch's non-zeros. Both kinds of code are
/// processed feature by feature in increasing row order, in parallel over blocks of features
/// (each feature is owned by one thread), so the result is bit-identical for any thread count,
/// and DenseCodes and SparseCodes holding the same activations give identical results.
///
/// Rows added should be distinct (the accumulator does not check). merge() combines two
/// accumulators over disjoint rows: counts, max and top lists are exactly those of one
/// accumulator fed both; sums may differ in the last bits (a different summation order).
class FeatureStatistics {
 public:
  /// Largest accepted top_n (a bound on the memory d_sae * top_n).
  static constexpr Index kMaxTopN = 10000;

  /// @param d_sae Number of latents (> 0).
  /// @param top_n Activations kept per feature (0 .. kMaxTopN; 0 keeps no top lists).
  explicit FeatureStatistics(Index d_sae, Index top_n = 20) : m_d_sae(d_sae), m_top_n(top_n) {
    require(d_sae > 0 && d_sae <= Index(std::numeric_limits<std::int32_t>::max()),
            "feature statistics: d_sae must be in [1, 2^31), found ", d_sae);
    require(top_n >= 0 && top_n <= kMaxTopN, "feature statistics: top_n must be in [0, ", kMaxTopN,
            "], found ", top_n);
    reset();
  }

  /// @brief Adds a batch of sparse codes (SparseCodes or CsrCodes) whose row b is global row
  /// `row_offset + b`. Throws ConfigError for a wrong d_sae, a latent index out of [0, d_sae)
  /// or a bad offset, and NumericError for a non-finite activation (before changing anything).
  template <typename Codes>
  void add(const Codes& codes, std::int64_t row_offset) {
    const Index rows = codes.rows();
    require(codes.latents() == m_d_sae, "codes have ", codes.latents(), " latents, expected ",
            m_d_sae);
    checkLatentIds(codes);
    checkRows(rows, row_offset);
    // Counting sort of the firing pairs by feature (forEachActive goes row by row, so rows stay
    // in increasing order per feature); the first pass also checks every activation.
    m_start.assign(static_cast<std::size_t>(m_d_sae) + 1, 0);
    forEachActive(codes, [&](Index b, Index f, auto v) {
      checkFinite(v, f, row_offset + b);
      ++m_start[static_cast<std::size_t>(f) + 1];
    });
    for (Index f = 0; f < m_d_sae; ++f) m_start[f + 1] += m_start[f];
    m_entries.resize(static_cast<std::size_t>(m_start.back()));
    m_fill.assign(m_start.begin(), m_start.end() - 1);
    forEachActive(codes, [&](Index b, Index f, auto v) {
      auto& at = m_fill[static_cast<std::size_t>(f)];
      m_entries[static_cast<std::size_t>(at++)] = {static_cast<double>(v), row_offset + b};
    });
    const Index blocks = (m_d_sae + kBlock - 1) / kBlock;
    const std::int64_t work = m_start.back() + m_d_sae;
    SAE_PRAGMA_OMP(parallel for schedule(static) if (work >= kParallelWork))
    for (Index blk = 0; blk < blocks; ++blk) {
      const Index end = std::min(m_d_sae, (blk + 1) * kBlock);
      for (Index f = blk * kBlock; f < end; ++f)
        for (std::int64_t e = m_start[f]; e < m_start[f + 1]; ++e)
          record(f, m_entries[static_cast<std::size_t>(e)]);
    }
    commitRows(rows, row_offset);
  }

  /// @brief Adds a batch of dense codes `[rows, d_sae]` whose row b is global row
  /// `row_offset + b`. Errors as for sparse codes. (Not through forEachActive: it scans the
  /// dense matrix in parallel over blocks of features, with no sorted copy of the entries.)
  template <typename Scalar>
  void add(const DenseCodes<Scalar>& codes, std::int64_t row_offset) {
    const RowMatrix<Scalar>& values = codes.values;
    const Index rows = values.rows();
    require(values.cols() == m_d_sae, "codes have ", values.cols(), " latents, expected ", m_d_sae);
    checkRows(rows, row_offset);
    if (!values.allFinite()) {
      for (Index b = 0; b < rows; ++b)
        for (Index f = 0; f < m_d_sae; ++f) checkFinite(values(b, f), f, row_offset + b);
    }
    const Index blocks = (m_d_sae + kBlock - 1) / kBlock;
    const std::int64_t work = rows * m_d_sae;
    SAE_PRAGMA_OMP(parallel for schedule(static) if (work >= kParallelWork))
    for (Index blk = 0; blk < blocks; ++blk) {
      const Index first = blk * kBlock, end = std::min(m_d_sae, first + kBlock);
      for (Index b = 0; b < rows; ++b) {
        const Scalar* row = values.data() + b * m_d_sae;
        for (Index f = first; f < end; ++f)
          if (row[f] != Scalar(0)) record(f, {static_cast<double>(row[f]), row_offset + b});
      }
    }
    commitRows(rows, row_offset);
  }

  /// @brief Adds the statistics of `other` (same d_sae and top_n), gathered over other rows.
  void merge(const FeatureStatistics& other) {
    require(&other != this, "feature statistics: cannot merge an accumulator into itself");
    require(other.m_d_sae == m_d_sae && other.m_top_n == m_top_n,
            "feature statistics: cannot merge d_sae ", other.m_d_sae, ", top_n ", other.m_top_n,
            " into d_sae ", m_d_sae, ", top_n ", m_top_n);
    const Index blocks = (m_d_sae + kBlock - 1) / kBlock;
    SAE_PRAGMA_OMP(parallel for schedule(static) if (m_d_sae * (m_top_n + 1) >= kParallelWork))
    for (Index blk = 0; blk < blocks; ++blk) {
      const Index end = std::min(m_d_sae, (blk + 1) * kBlock);
      for (Index f = blk * kBlock; f < end; ++f) {
        const std::int64_t c = other.m_count[f];
        if (c == 0) continue;
        m_max[f] = m_count[f] == 0 ? other.m_max[f] : std::max(m_max[f], other.m_max[f]);
        m_count[f] += c;
        m_sum[f] += other.m_sum[f];
        const TopActivation* h = &other.m_top[static_cast<std::size_t>(f * m_top_n)];
        for (Index i = 0; i < other.m_top_size[f]; ++i) offer(f, h[i]);
      }
    }
    m_tokens += other.m_tokens;
    m_row_end = std::max(m_row_end, other.m_row_end);
  }

  /// @brief Forgets every row added.
  void reset() {
    const auto d = static_cast<std::size_t>(m_d_sae);
    m_count.assign(d, 0);
    m_sum.assign(d, 0.0);
    m_max.assign(d, 0.0);
    m_top.assign(d * static_cast<std::size_t>(m_top_n), TopActivation());
    m_top_size.assign(d, 0);
    m_tokens = 0;
    m_row_end = 0;
  }

  Index dSae() const { return m_d_sae; }
  Index topN() const { return m_top_n; }
  /// @brief Rows added.
  std::int64_t tokens() const { return m_tokens; }
  /// @brief One past the largest global row added (= tokens() when the batches tile [0, T)).
  std::int64_t rowEnd() const { return m_row_end; }

  /// @brief Rows on which feature `f` fired.
  std::int64_t firingCount(Index f) const { return m_count[checked(f)]; }
  /// @brief Firing count / tokens (0 before any row).
  double frequency(Index f) const {
    return m_tokens ? double(m_count[checked(f)]) / double(m_tokens) : 0.0;
  }
  /// @brief Mean activation over all rows, zeros included: sum / tokens (0 before any row).
  double meanActivation(Index f) const {
    return m_tokens ? m_sum[checked(f)] / double(m_tokens) : 0.0;
  }
  /// @brief Mean activation over the rows where the feature fired: sum / firing count
  /// (0 for a feature that never fired).
  double meanFiringActivation(Index f) const {
    const auto i = checked(f);
    return m_count[i] ? m_sum[i] / double(m_count[i]) : 0.0;
  }
  /// @brief Largest firing activation (0 for a feature that never fired).
  double maxActivation(Index f) const { return m_max[checked(f)]; }
  /// @brief The top list of feature `f`, best first (ranksBefore order), at most topN() long.
  std::vector<TopActivation> topActivations(Index f) const {
    const auto i = checked(f);
    const TopActivation* h = m_top.data() + i * static_cast<std::size_t>(m_top_n);
    std::vector<TopActivation> out(h, h + m_top_size[i]);
    std::sort(out.begin(), out.end(), ranksBefore);
    return out;
  }

  /// @brief Features that never fired.
  Index deadCount() const {
    return Index(std::count(m_count.begin(), m_count.end(), std::int64_t(0)));
  }
  /// @brief Mean number of firing features per row.
  double meanL0() const {
    std::int64_t total = 0;
    for (const std::int64_t c : m_count) total += c;
    return m_tokens ? double(total) / double(m_tokens) : 0.0;
  }
  /// @brief The log10-density histogram of the features.
  DensityHistogram densityHistogram() const {
    DensityHistogram h;
    for (Index f = 0; f < m_d_sae; ++f) h.add(frequency(f));
    return h;
  }

  /// @brief The statistics as JSON, without token ids. Schema:
  /// @code
  /// {"summary": {"tokens": T, "d_sae": D, "top_n": N, "dead": dead features,
  ///              "mean_l0": mean firing features per row, "token_ids": false,
  ///              "density_histogram": {"log10_density_edges": [-10, -9.5, ..., 0] (21),
  ///                                    "counts": [20 feature counts],
  ///                                    "dead": features with density 0,
  ///                                    "below_range": features with 0 < density < 1e-10}},
  ///  "features": [{"feature": i, "firing_count": c, "frequency": c / T,
  ///                "log10_density": log10(c / T) or null when c = 0,
  ///                "mean_activation": sum / T (over all rows),
  ///                "mean_firing_activation": sum / c (over firing rows) or null,
  ///                "max_activation": largest activation or null,
  ///                "top_rows": [global rows, best first], "top_values": [activations]}, ...]}
  /// @endcode
  nlohmann::ordered_json toJson() const {
    return buildJson(false, [](Index) { return std::int64_t(0); });
  }

  /// @brief The statistics as JSON with token ids: as toJson(), with "token_ids": true in the
  /// summary and a "top_token_ids" array (ids[row] for each top row) per feature.
  /// @tparam TokenIds Anything with `size()` and `operator[](Index)` giving an integer: a
  ///         std::vector, an Eigen vector, io::NpyIntegerReader.
  /// @param ids One token id per global row: `ids.size()` must equal rowEnd().
  /// @param source What the ids are, for the error message (a file name).
  /// Throws ConfigError naming `source` and both counts when the sizes differ.
  template <typename TokenIds>
  nlohmann::ordered_json toJson(const TokenIds& ids,
                                const std::string& source = "token ids") const {
    const auto n = static_cast<std::int64_t>(ids.size());
    if (n != m_row_end) {
      throw ConfigError(sae::detail::concat(
          source, ": ", n, " token ids, but the activations have ", m_row_end,
          " rows; give exactly one token id per activation row, in the same order"));
    }
    return buildJson(true, [&ids](Index row) { return static_cast<std::int64_t>(ids[row]); });
  }

 private:
  static constexpr Index kBlock = 64;                     // features per parallel work item
  static constexpr std::int64_t kParallelWork = 1 << 14;  // entries below which one thread runs

  std::size_t checked(Index f) const {
    require(f >= 0 && f < m_d_sae, "feature ", f, " is outside [0, ", m_d_sae, ")");
    return static_cast<std::size_t>(f);
  }

  void checkRows(Index rows, std::int64_t row_offset) const {
    require(row_offset >= 0, "feature statistics: row offset must be >= 0, found ", row_offset);
    require(row_offset <= std::numeric_limits<std::int64_t>::max() - rows,
            "feature statistics: row offset ", row_offset, " + ", rows, " rows overflows");
  }

  /// Every stored latent index in [0, d_sae) (zero activations included), and SparseCodes'
  /// values shaped as its indices.
  template <typename Codes>
  void checkLatentIds(const Codes& codes) const {
    auto check = [&](Index row, std::int64_t f) {
      if (f < 0 || f >= m_d_sae)
        throw ConfigError(sae::detail::concat("sparse codes: row ", row, " holds latent index ", f,
                                              ", outside [0, ", m_d_sae, ")"));
    };
    if constexpr (isSparseCodes<Codes>) {
      const Index rows = codes.indices.rows(), k = codes.indices.cols();
      require(codes.values.rows() == rows && codes.values.cols() == k, "sparse codes: values are [",
              codes.values.rows(), ", ", codes.values.cols(), "] but indices are [", rows, ", ", k,
              "]");
      for (Index b = 0; b < rows; ++b)
        for (Index j = 0; j < k; ++j) check(b, codes.indices(b, j));
    } else {
      const kernels::CsrPattern& p = codes.pattern;
      require(p.row.size() == p.latent.size() && codes.values.size() == p.latent.size(),
              "sparse codes: ", p.latent.size(), " latents, ", p.row.size(), " rows and ",
              codes.values.size(), " values");
      for (std::size_t e = 0; e < p.latent.size(); ++e) check(p.row[e], p.latent[e]);
    }
  }

  template <typename Scalar>
  static void checkFinite(Scalar v, Index feature, std::int64_t row) {
    if (!std::isfinite(v))
      throw NumericError(sae::detail::concat("feature statistics: activation of feature ", feature,
                                             " on row ", row, " is ", v));
  }

  void commitRows(Index rows, std::int64_t row_offset) {
    m_tokens += rows;
    if (rows > 0) m_row_end = std::max(m_row_end, row_offset + rows);
  }

  // One firing activation of feature f (called by f's owner thread only, rows in order).
  void record(Index f, const TopActivation& a) {
    const auto i = static_cast<std::size_t>(f);
    m_max[i] = m_count[i] == 0 ? a.value : std::max(m_max[i], a.value);
    ++m_count[i];
    m_sum[i] += a.value;
    offer(f, a);
  }

  // Top-N update: the heap's front is the entry that ranks last.
  void offer(Index f, const TopActivation& a) {
    if (m_top_n == 0) return;
    const auto i = static_cast<std::size_t>(f);
    TopActivation* h = m_top.data() + i * static_cast<std::size_t>(m_top_n);
    Index& n = m_top_size[i];
    if (n < m_top_n) {
      h[n++] = a;
      std::push_heap(h, h + n, ranksBefore);
    } else if (ranksBefore(a, h[0])) {
      std::pop_heap(h, h + n, ranksBefore);
      h[n - 1] = a;
      std::push_heap(h, h + n, ranksBefore);
    }
  }

  template <typename Lookup>
  nlohmann::ordered_json buildJson(bool with_ids, Lookup tokenOf) const {
    using ojson = nlohmann::ordered_json;
    const DensityHistogram hist = densityHistogram();
    ojson edges = ojson::array();
    for (int i = 0; i <= DensityHistogram::kBins; ++i) edges.push_back(DensityHistogram::edge(i));
    ojson summary;
    summary["tokens"] = m_tokens;
    summary["d_sae"] = m_d_sae;
    summary["top_n"] = m_top_n;
    summary["dead"] = deadCount();
    summary["mean_l0"] = meanL0();
    summary["token_ids"] = with_ids;
    summary["density_histogram"] = {{"log10_density_edges", edges},
                                    {"counts", hist.counts},
                                    {"dead", hist.dead},
                                    {"below_range", hist.below_range}};
    ojson features = ojson::array();
    for (Index f = 0; f < m_d_sae; ++f) {
      const std::int64_t c = m_count[static_cast<std::size_t>(f)];
      ojson j;
      j["feature"] = f;
      j["firing_count"] = c;
      j["frequency"] = frequency(f);
      j["log10_density"] = c ? ojson(std::log10(frequency(f))) : ojson(nullptr);
      j["mean_activation"] = meanActivation(f);
      j["mean_firing_activation"] = c ? ojson(meanFiringActivation(f)) : ojson(nullptr);
      j["max_activation"] = c ? ojson(maxActivation(f)) : ojson(nullptr);
      ojson rows = ojson::array(), values = ojson::array(), tokens = ojson::array();
      for (const TopActivation& a : topActivations(f)) {
        rows.push_back(a.row);
        values.push_back(a.value);
        if (with_ids) tokens.push_back(tokenOf(Index(a.row)));
      }
      j["top_rows"] = std::move(rows);
      j["top_values"] = std::move(values);
      if (with_ids) j["top_token_ids"] = std::move(tokens);
      features.push_back(std::move(j));
    }
    ojson out;
    out["summary"] = std::move(summary);
    out["features"] = std::move(features);
    return out;
  }

  Index m_d_sae, m_top_n;
  std::int64_t m_tokens = 0, m_row_end = 0;
  std::vector<std::int64_t> m_count;
  std::vector<double> m_sum, m_max;
  std::vector<TopActivation> m_top;  // d_sae heaps of capacity top_n
  std::vector<Index> m_top_size;
  // Scratch of the sparse path, kept between batches.
  std::vector<std::int64_t> m_start, m_fill;
  std::vector<TopActivation> m_entries;
};

}  // namespace eval
}  // namespace sae
