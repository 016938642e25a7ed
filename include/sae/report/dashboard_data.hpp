/// @file dashboard_data.hpp
/// @brief What a feature dashboard shows, gathered from an SAE and a `sae dump` folder: the
/// dump's row files (DumpRows), and DashboardData, filled in three passes over the activations:
///
///  1. every row: FeatureStatistics (firing counts, max, mean firing activation, the top-N
///     rows), the reconstruction's explained variance and L0;
///  2. every row, for the selected features only: the activation histogram over (0, max], the
///     firing counts in `intervals` equal-width intervals of (0, max] (sae_vis's "quantile
///     groups", which it labels "interval a - b, contains p%") with up to `interval_samples`
///     rows sampled uniformly from each interval, and the firing counts per source file;
///  3. only the rows of the contexts shown (each example row with `before` tokens before it and
///     `after` after it, inside its own window): their codes, so that every token of a context
///     carries the feature's activation there.
///
/// The interval samples are the rows of smallest hash(feature, row) among the interval's
/// firings: a uniform sample that depends on neither the batch size nor the thread count.
/// Nearest features are by cosine of the decoder rows W_dec[f] (one product of the selected
/// rows against all of W_dec, in blocks).
///
/// Costs: passes 1 and 2 encode every row (pass 1 also decodes, for the explained variance);
/// pass 3 encodes the union of the context rows, at most every row. Memory: FeatureStatistics'
/// O(d_sae * top_n), O(features * (intervals * samples + bins + sources)) for pass 2, and the
/// selected features' codes on the context rows for pass 3.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include <sae/core/config.hpp>
#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/eval/feature_stats.hpp>
#include <sae/eval/metrics.hpp>
#include <sae/io/activation_files.hpp>
#include <sae/io/activation_stream.hpp>
#include <sae/io/loaded_sae.hpp>
#include <sae/io/npy.hpp>
#include <sae/models/codes.hpp>

namespace sae::report {

/// @brief The row files of a `sae dump` folder: each activation row's token, its position in its
/// window and its source file, and the hook folders' shard files.
struct DumpRows {
  std::string dir;                        ///< The dump folder.
  std::vector<std::int32_t> tokens;       ///< tokens.npy: the token of each row.
  std::vector<std::int32_t> positions;    ///< positions.npy: its position in its window.
  std::vector<std::int32_t> sources;      ///< sources.npy: index into source_names.
  std::vector<std::string> source_names;  ///< dump.json "files"[i].path.
  Index context = 0;  ///< dump.json "context": tokens per window, BOS included (0: not given).
  Index windows = 0;  ///< Sum of dump.json "files"[i].windows (0: not given).
  /// dump.json "hooks": name and shard files (paths inside the dump folder).
  std::vector<std::pair<std::string, std::vector<std::string>>> hooks;

  Index rows() const { return static_cast<Index>(tokens.size()); }

  /// @brief The shard files of hook `name` (its full paths), or of the only hook when `name`
  /// is empty. ConfigError naming the dump's hooks when there is no such hook, or when `name`
  /// is empty and the dump has several.
  std::vector<std::string> shardsOf(const std::string& name) const {
    std::string names;
    for (const auto& h : hooks) names += (names.empty() ? "" : ", ") + h.first;
    const auto* found =
        static_cast<const std::pair<std::string, std::vector<std::string>>*>(nullptr);
    if (name.empty()) {
      if (hooks.size() != 1)
        throw ConfigError(sae::detail::concat(dir, " holds ", hooks.size(), " hooks (", names,
                                              "): name the SAE's hook"));
      found = &hooks.front();
    } else {
      for (const auto& h : hooks)
        if (h.first == name) found = &h;
      if (!found)
        throw ConfigError(
            sae::detail::concat(dir, " has no hook ", name, " (it holds ", names, ")"));
    }
    return found->second;
  }
};

namespace detail {

inline std::vector<std::int32_t> readRowFile(const std::string& path, const char* what,
                                             std::int64_t lo, std::int64_t hi) {
  const io::NpyIntegerReader r(path);
  std::vector<std::int32_t> out(static_cast<std::size_t>(r.size()));
  for (Index i = 0; i < r.size(); ++i) {
    const std::int64_t v = r[i];
    if (v < lo || v > hi)
      throw FormatError(sae::detail::concat(path, ": ", what, " ", v, " at row ", i,
                                            " is outside [", lo, ", ", hi, "]"));
    out[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(v);
  }
  return out;
}

}  // namespace detail

/// @brief Reads a `sae dump` folder's dump.json, tokens.npy, positions.npy and sources.npy,
/// checking that the three row files have the same length, the row count of dump.json, and that
/// every source index names one of its files. Errors name the file.
inline DumpRows readDumpRows(const std::string& dir) {
  using json = nlohmann::json;
  DumpRows d;
  d.dir = dir;
  const std::string meta_path = dir + "/dump.json";
  json meta;
  {
    std::ifstream in(meta_path);
    if (!in)
      throw IoError(meta_path + ": cannot open (is " + dir + " a folder written by `sae dump`?)");
    try {
      meta = json::parse(in);
    } catch (const json::exception& e) {
      throw FormatError(meta_path + ": not valid JSON: " + e.what());
    }
  }
  std::int64_t rows = 0;
  try {
    rows = meta.at("rows").get<std::int64_t>();
    for (const auto& f : meta.at("files")) {
      d.source_names.push_back(f.at("path").get<std::string>());
      if (f.contains("windows")) d.windows += f.at("windows").get<Index>();
    }
    if (meta.contains("context")) d.context = meta.at("context").get<Index>();
    for (const auto& h : meta.at("hooks")) {
      std::vector<std::string> shards;
      const std::string folder = h.at("folder").get<std::string>();
      for (const auto& s : h.at("shards"))
        shards.push_back(dir + "/" + folder + "/" + s.get<std::string>());
      d.hooks.emplace_back(h.at("name").get<std::string>(), std::move(shards));
    }
  } catch (const json::exception& e) {
    throw FormatError(meta_path + ": not a `sae dump` description: " + e.what());
  }
  if (d.source_names.empty()) throw FormatError(meta_path + ": the dump names no source files");
  const std::int64_t big = std::numeric_limits<std::int32_t>::max();
  d.tokens = detail::readRowFile(dir + "/tokens.npy", "token id", 0, big);
  d.positions = detail::readRowFile(dir + "/positions.npy", "position", 0, big);
  d.sources = detail::readRowFile(dir + "/sources.npy", "source index", 0,
                                  static_cast<std::int64_t>(d.source_names.size()) - 1);
  auto check = [&](const std::vector<std::int32_t>& v, const char* name) {
    if (static_cast<std::int64_t>(v.size()) != rows)
      throw FormatError(sae::detail::concat(dir, "/", name, ": ", v.size(), " rows, but ",
                                            meta_path, " says the dump has ", rows));
  };
  check(d.tokens, "tokens.npy");
  check(d.positions, "positions.npy");
  check(d.sources, "sources.npy");
  return d;
}

/// @brief How much a dashboard shows, and how its data is gathered.
struct DashboardOptions {
  Index top_n = 20;            ///< Top-activating contexts per feature.
  int intervals = 10;          ///< Equal-width activation intervals of (0, max] (sae_vis: 10).
  Index interval_samples = 5;  ///< Contexts sampled per interval (sae_vis: 5).
  Index before = 10;           ///< Tokens of context before the example token.
  Index after = 4;             ///< Tokens of context after it.
  int histogram_bins = 20;     ///< Bins of the activation histogram over (0, max].
  Index neighbours = 8;        ///< Nearest features by decoder cosine.
  Index batch = 4096;          ///< Rows per encode.
  bool bf16 = false;           ///< Encoder product in bf16 (the caller checked availability).
  /// Called as progress(pass, done, total) after each batch (pass 1, 2 or 3); may be empty.
  std::function<void(int, std::int64_t, std::int64_t)> progress;
};

/// @brief A row of a feature with its activation there.
struct Example {
  std::int64_t row = 0;
  double value = 0;
};

/// @brief One context shown: rows [first, first + size) of one window, the example row among
/// them, and the feature's activation on each.
struct Context {
  std::int64_t first = 0;
  std::int64_t example = 0;
  std::vector<float> acts;
};

/// @brief Everything a feature's panel shows except the logits (which need the model).
struct FeatureData {
  Index feature = 0;
  std::vector<Context> top;                      ///< Top contexts, best first.
  std::vector<std::int64_t> interval_counts;     ///< Firings per interval, lowest first.
  std::vector<std::vector<Context>> intervals;   ///< Samples per interval, by activation.
  std::vector<std::int64_t> histogram;           ///< Firings per bin of (0, max].
  std::vector<std::int64_t> source_counts;       ///< Firings per source file.
  std::vector<std::pair<Index, float>> nearest;  ///< (feature, decoder cosine), closest first.
};

/// @brief The data of a dashboard: statistics of every feature and the panels of the selected.
struct DashboardData {
  eval::FeatureStatistics stats{1, 0};
  double explained_variance = 0;
  std::vector<FeatureData> features;  ///< The selected features, in the order given.
};

namespace detail {

// The interval (or histogram bin) of value v in (0, max] split into n equal parts.
inline int partOf(double v, double max, int n) {
  if (!(max > 0)) return 0;
  const int i = static_cast<int>(std::floor(v / max * n));
  return std::clamp(i, 0, n - 1);
}

}  // namespace detail

namespace detail {

// gatherDashboard() with the model in its own type: one workspace and one codes holder for
// every batch of the three passes.
template <typename Model, typename Select>
DashboardData gatherWith(const Model& m, const ActivationNormalizer& normalizer,
                         const io::ActivationFiles& files, const DumpRows& rows, Select&& select,
                         const DashboardOptions& o) {
  const Index d_sae = m.config().d_sae, N = files.rows();
  typename Model::Workspace ws;
  ws.bf16_encoder = o.bf16;
  typename Model::Codes codes;
  auto forEachBatch = [&](int pass, auto&& fn) {
    RowMatrix<float> raw, x;
    NormalizationStats st;
    for (Index b = 0; b < N; b += o.batch) {
      const Index n = std::min(o.batch, N - b);
      raw.resize(n, files.cols());
      files.readRows<float>(b, b + n, raw);
      x = raw;
      normalizer.normalize(x, st);
      fn(b, raw, x, st);
      if (o.progress) o.progress(pass, b + n, N);
    }
  };

  DashboardData out;
  out.stats = eval::FeatureStatistics(d_sae, o.top_n);
  eval::ReconstructionMetrics recon;
  RowMatrix<float> y;
  forEachBatch(1, [&](Index b, const RowMatrix<float>& raw, const RowMatrix<float>& x,
                      NormalizationStats& st) {
    m.encode(x, codes, ws);
    m.decode(codes, y);
    normalizer.denormalize(y, st);
    recon.add<float>(raw, y);
    out.stats.add(codes, b);
  });
  out.explained_variance = recon.explainedVariance();

  const std::vector<Index> chosen = select(static_cast<const eval::FeatureStatistics&>(out.stats));
  std::vector<std::int32_t> slot(static_cast<std::size_t>(d_sae), -1);
  for (std::size_t i = 0; i < chosen.size(); ++i) {
    const Index f = chosen[i];
    if (f < 0 || f >= d_sae)
      throw ConfigError(sae::detail::concat("feature ", f, " is out of range: the SAE has ", d_sae,
                                            " features (0 .. ", d_sae - 1, ")"));
    if (slot[static_cast<std::size_t>(f)] >= 0)
      throw ConfigError(sae::detail::concat("feature ", f, " is selected twice"));
    slot[static_cast<std::size_t>(f)] = static_cast<std::int32_t>(i);
  }
  const std::size_t F = chosen.size(), I = static_cast<std::size_t>(o.intervals);
  const std::size_t S = rows.source_names.size(), K = static_cast<std::size_t>(o.interval_samples);
  out.features.resize(F);
  std::vector<double> maxv(F);
  for (std::size_t i = 0; i < F; ++i) {
    FeatureData& fd = out.features[i];
    fd.feature = chosen[i];
    fd.interval_counts.assign(I, 0);
    fd.intervals.resize(I);
    fd.histogram.assign(static_cast<std::size_t>(o.histogram_bins), 0);
    fd.source_counts.assign(S, 0);
    maxv[i] = out.stats.maxActivation(chosen[i]);
  }

  // Pass 2: histograms, interval counts, source counts and the interval samples (per feature
  // and interval a max-heap on the hash keeps the K smallest).
  struct Sample {
    std::uint64_t key;
    std::int64_t row;
    double value;
    bool operator<(const Sample& s) const { return key < s.key || (key == s.key && row < s.row); }
  };
  std::vector<std::vector<Sample>> heaps(F * I);
  if (F > 0) {
    forEachBatch(2, [&](Index b, const RowMatrix<float>&, const RowMatrix<float>& x,
                        NormalizationStats&) {
      m.encode(x, codes, ws);
      forEachActive(codes, [&](Index r, Index f, auto v) {
        const std::int32_t s = slot[static_cast<std::size_t>(f)];
        if (s < 0 || v == 0) return;
        const std::size_t i = static_cast<std::size_t>(s);
        const double val = static_cast<double>(v), mx = maxv[i];
        FeatureData& fd = out.features[i];
        const std::int64_t row = b + r;
        ++fd.histogram[static_cast<std::size_t>(detail::partOf(val, mx, o.histogram_bins))];
        const auto iv = static_cast<std::size_t>(detail::partOf(val, mx, o.intervals));
        ++fd.interval_counts[iv];
        ++fd.source_counts[static_cast<std::size_t>(rows.sources[static_cast<std::size_t>(row)])];
        if (K == 0) return;
        const Sample smp{
            io::detail::hashKey(static_cast<std::uint64_t>(row), static_cast<std::uint64_t>(f)),
            row, val};
        std::vector<Sample>& h = heaps[i * I + iv];
        if (h.size() < K) {
          h.push_back(smp);
          std::push_heap(h.begin(), h.end());
        } else if (smp < h.front()) {
          std::pop_heap(h.begin(), h.end());
          h.back() = smp;
          std::push_heap(h.begin(), h.end());
        }
      });
    });
  }

  // The context of an example row: the rows of its window within [row - before, row + after].
  auto contextOf = [&](std::int64_t row) {
    const auto at = [&](std::int64_t r) { return static_cast<std::size_t>(r); };
    std::int64_t lo = row, hi = row;
    while (lo > 0 && row - lo < o.before && rows.sources[at(lo - 1)] == rows.sources[at(row)] &&
           std::int64_t(rows.positions[at(lo - 1)]) ==
               std::int64_t(rows.positions[at(row)]) - (row - lo + 1))
      --lo;
    while (hi + 1 < N && hi - row < o.after && rows.sources[at(hi + 1)] == rows.sources[at(row)] &&
           std::int64_t(rows.positions[at(hi + 1)]) ==
               std::int64_t(rows.positions[at(row)]) + (hi + 1 - row))
      ++hi;
    Context c;
    c.first = lo;
    c.example = row;
    c.acts.assign(static_cast<std::size_t>(hi - lo + 1), 0.0f);
    return c;
  };
  std::vector<std::int64_t> needed;
  for (std::size_t i = 0; i < F; ++i) {
    FeatureData& fd = out.features[i];
    for (const eval::TopActivation& a : out.stats.topActivations(fd.feature))
      fd.top.push_back(contextOf(a.row));
    for (std::size_t iv = 0; iv < I; ++iv) {
      std::vector<Sample> h = heaps[i * I + iv];
      std::sort(h.begin(), h.end(), [](const Sample& a, const Sample& b) {
        return a.value > b.value || (a.value == b.value && a.row < b.row);
      });
      for (const Sample& s : h) fd.intervals[iv].push_back(contextOf(s.row));
    }
    auto note = [&](const Context& c) {
      for (std::size_t t = 0; t < c.acts.size(); ++t) needed.push_back(c.first + std::int64_t(t));
    };
    for (const Context& c : fd.top) note(c);
    for (const auto& group : fd.intervals)
      for (const Context& c : group) note(c);
  }
  std::sort(needed.begin(), needed.end());
  needed.erase(std::unique(needed.begin(), needed.end()), needed.end());

  // Pass 3: the selected features' codes on the context rows (CSR over `needed`).
  std::vector<std::int64_t> start(needed.size() + 1, 0);
  std::vector<std::pair<std::int32_t, float>> pairs;
  {
    RowMatrix<float> raw, x;
    NormalizationStats st;
    for (std::size_t b = 0; b < needed.size(); b += static_cast<std::size_t>(o.batch)) {
      const std::size_t n = std::min(static_cast<std::size_t>(o.batch), needed.size() - b);
      raw.resize(static_cast<Index>(n), files.cols());
      for (std::size_t i = 0; i < n;) {
        std::size_t j = i + 1;
        while (j < n && needed[b + j] == needed[b + j - 1] + 1) ++j;
        auto block = raw.middleRows(static_cast<Index>(i), static_cast<Index>(j - i));
        files.readRows<float>(needed[b + i], needed[b + i] + std::int64_t(j - i), block);
        i = j;
      }
      x = raw;
      normalizer.normalize(x, st);
      m.encode(x, codes, ws);
      std::vector<std::vector<std::pair<std::int32_t, float>>> per(n);
      forEachActive(codes, [&](Index r, Index f, auto v) {
        const std::int32_t s = slot[static_cast<std::size_t>(f)];
        if (s >= 0 && v != 0) per[static_cast<std::size_t>(r)].emplace_back(s, float(v));
      });
      for (std::size_t r = 0; r < n; ++r) {
        std::sort(per[r].begin(), per[r].end());
        pairs.insert(pairs.end(), per[r].begin(), per[r].end());
        start[b + r + 1] = static_cast<std::int64_t>(pairs.size());
      }
      if (o.progress) o.progress(3, static_cast<std::int64_t>(b + n), std::int64_t(needed.size()));
    }
  }
  auto actAt = [&](std::int32_t s, std::int64_t row) {
    const auto it = std::lower_bound(needed.begin(), needed.end(), row);
    const auto k = static_cast<std::size_t>(it - needed.begin());
    const auto p0 = pairs.begin() + start[k], p1 = pairs.begin() + start[k + 1];
    const auto q =
        std::lower_bound(p0, p1, std::make_pair(s, -std::numeric_limits<float>::infinity()));
    return q != p1 && q->first == s ? q->second : 0.0f;
  };
  for (std::size_t i = 0; i < F; ++i) {
    FeatureData& fd = out.features[i];
    auto fill = [&](Context& c) {
      for (std::size_t t = 0; t < c.acts.size(); ++t)
        c.acts[t] = actAt(static_cast<std::int32_t>(i), c.first + std::int64_t(t));
    };
    for (Context& c : fd.top) fill(c);
    for (auto& group : fd.intervals)
      for (Context& c : group) fill(c);
  }

  // Nearest features by decoder cosine: selected rows against all rows, in blocks.
  if (o.neighbours > 0 && F > 0 && d_sae > 1) {
    RowMatrix<float> dec = m.parameters().rowMajorCopy("W_dec");
    for (Index f = 0; f < d_sae; ++f) {
      const float n = dec.row(f).norm();
      if (n > 0) dec.row(f) /= n;
    }
    const Index block = 512, keep = std::min<Index>(o.neighbours, d_sae - 1);
    RowMatrix<float> sel, cos;
    for (std::size_t first = 0; first < F; first += std::size_t(block)) {
      const std::size_t n = std::min(std::size_t(block), F - first);
      sel.resize(Index(n), dec.cols());
      for (std::size_t i = 0; i < n; ++i) sel.row(Index(i)) = dec.row(chosen[first + i]);
      cos.noalias() = sel * dec.transpose();
      SAE_PRAGMA_OMP(parallel for schedule(dynamic))
      for (Index i = 0; i < Index(n); ++i) {
        const Index self = chosen[first + std::size_t(i)];
        std::vector<Index> idx;
        idx.reserve(std::size_t(d_sae));
        for (Index g = 0; g < d_sae; ++g)
          if (g != self) idx.push_back(g);
        const float* c = cos.data() + i * d_sae;
        auto closer = [&](Index a, Index b) { return c[a] > c[b] || (c[a] == c[b] && a < b); };
        std::partial_sort(idx.begin(), idx.begin() + keep, idx.end(), closer);
        auto& near = out.features[first + std::size_t(i)].nearest;
        for (Index k = 0; k < keep; ++k)
          near.emplace_back(idx[std::size_t(k)], c[idx[std::size_t(k)]]);
      }
    }
  }
  return out;
}

}  // namespace detail

/// @brief Gathers a dashboard's data over the activation rows of `files` (row r is row r of
/// `rows`), see the file comment. `select` picks the features to show from the statistics of
/// pass 1 (called once; each index must be in [0, d_sae), no repeats).
/// @throws ConfigError when the files' width is not the SAE's d_in, when their row count is not
/// the dump's, or for a bad selection.
template <typename Select>
DashboardData gatherDashboard(const io::LoadedSae<float>& sae, const io::ActivationFiles& files,
                              const DumpRows& rows, Select&& select, const DashboardOptions& o) {
  const Index N = files.rows();
  if (files.cols() != sae.dIn())
    throw ConfigError(sae::detail::concat("the activations of ", rows.dir, " have ", files.cols(),
                                          " columns, but the SAE expects d_in = ", sae.dIn()));
  if (N != rows.rows())
    throw ConfigError(sae::detail::concat("the activations of ", rows.dir, " have ", N,
                                          " rows, but its tokens.npy has ", rows.rows()));
  require(N > 0, rows.dir, ": the dump has no rows");
  require(o.top_n >= 0 && o.intervals > 0 && o.interval_samples >= 0 && o.before >= 0 &&
              o.after >= 0 && o.histogram_bins > 0 && o.neighbours >= 0 && o.batch > 0,
          "dashboard: bad options");
  const ActivationNormalizer normalizer = sae.normalizer();
  return std::visit(
      [&](const auto& m) { return detail::gatherWith(m, normalizer, files, rows, select, o); },
      sae.model);
}

}  // namespace sae::report
