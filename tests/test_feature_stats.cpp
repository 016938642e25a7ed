// FeatureStatistics: hand-computed counts, means, max, top lists (ties included) and histogram
// bins; dense and sparse codes agreeing; thread-count independence and merging against a
// brute-force count; token ids and the errors of bad input.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sae/eval/feature_stats.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_feature_stats {

using sae::Index;
using sae::eval::FeatureStatistics;
using sae::eval::TopActivation;
using ojson = nlohmann::ordered_json;

namespace {

// Six rows, d_sae = 4 (columns are features):
//   row 0: 1.0   0    2.0  0
//   row 1: 3.0   0    2.0  0
//   row 2: 0     0    0.5  0
//   row 3: 3.0   0    2.0  0
//   row 4: 0.5   0    0    0
//   row 5: 3.0  -1.0  0    0
// feature 0: fires on rows 0 1 3 4 5 (5 rows), sum 10.5, max 3 (on rows 1, 3, 5);
// feature 1: fires on row 5 only, with -1 (non-zero counts as firing), sum -1, max -1;
// feature 2: fires on rows 0 1 2 3 (4 rows), sum 6.5, max 2 (on rows 0, 1, 3);
// feature 3: never fires.
sae::RowMatrix<float> handMatrix() {
  sae::RowMatrix<float> m(6, 4);
  m << 1.0f, 0, 2.0f, 0,  //
      3.0f, 0, 2.0f, 0,   //
      0, 0, 0.5f, 0,      //
      3.0f, 0, 2.0f, 0,   //
      0.5f, 0, 0, 0,      //
      3.0f, -1.0f, 0, 0;
  return m;
}

sae::DenseCodes<float> denseRows(const sae::RowMatrix<float>& m, Index first, Index n) {
  sae::DenseCodes<float> c;
  c.values = m.middleRows(first, n);
  return c;
}

// The same rows as (index, value) pairs, two per row, with explicit zero pairs (rows 2 and 4)
// that must not count as firing, and the pairs of a row in no particular order.
sae::SparseCodes<float> handSparse(Index first, Index n) {
  sae::SparseCodes<float> all;
  all.d_sae = 4;
  all.indices.resize(6, 2);
  all.values.resize(6, 2);
  all.indices << 2, 0, 0, 2, 2, 3, 0, 2, 0, 1, 0, 1;
  all.values << 2.0f, 1.0f, 3.0f, 2.0f, 0.5f, 0.0f, 3.0f, 2.0f, 0.5f, 0.0f, 3.0f, -1.0f;
  sae::SparseCodes<float> c;
  c.d_sae = 4;
  c.indices = all.indices.middleRows(first, n);
  c.values = all.values.middleRows(first, n);
  return c;
}

void checkHandStatistics(const FeatureStatistics& s) {
  CHECK(s.tokens() == 6);
  CHECK(s.rowEnd() == 6);
  CHECK(s.firingCount(0) == 5);
  CHECK(s.firingCount(1) == 1);
  CHECK(s.firingCount(2) == 4);
  CHECK(s.firingCount(3) == 0);
  CHECK(s.frequency(0) == Approx(5.0 / 6.0));
  CHECK(s.frequency(3) == 0.0);
  // Mean over all six rows, and over the firing rows only.
  CHECK(s.meanActivation(0) == Approx(10.5 / 6.0));
  CHECK(s.meanFiringActivation(0) == Approx(10.5 / 5.0));
  CHECK(s.meanActivation(1) == Approx(-1.0 / 6.0));
  CHECK(s.meanFiringActivation(1) == Approx(-1.0));
  CHECK(s.meanActivation(2) == Approx(6.5 / 6.0));
  CHECK(s.meanFiringActivation(2) == Approx(6.5 / 4.0));
  CHECK(s.meanActivation(3) == 0.0);
  CHECK(s.meanFiringActivation(3) == 0.0);
  CHECK(s.maxActivation(0) == 3.0);
  CHECK(s.maxActivation(1) == -1.0);
  CHECK(s.maxActivation(2) == 2.0);
  // Top 2: 3.0 ties on rows 1, 3, 5 -> rows 1 and 3; 2.0 ties on rows 0, 1, 3 -> rows 0 and 1.
  CHECK(s.topActivations(0) == std::vector<TopActivation>{{3.0, 1}, {3.0, 3}});
  CHECK(s.topActivations(1) == std::vector<TopActivation>{{-1.0, 5}});
  CHECK(s.topActivations(2) == std::vector<TopActivation>{{2.0, 0}, {2.0, 1}});
  CHECK(s.topActivations(3).empty());
  CHECK(s.deadCount() == 1);
  CHECK(s.meanL0() == Approx(10.0 / 6.0));
}

}  // namespace

TEST_CASE("FeatureStatistics: counts, means, max and top-N of hand-built codes",
          "[FeatureStatistics]") {
  const sae::RowMatrix<float> m = handMatrix();
  SECTION("dense codes in order") {
    FeatureStatistics s(4, 2);
    s.add(denseRows(m, 0, 3), 0);
    s.add(denseRows(m, 3, 3), 3);
    checkHandStatistics(s);
  }
  SECTION("dense codes, later rows first: the lower row still wins a tie") {
    FeatureStatistics s(4, 2);
    s.add(denseRows(m, 3, 3), 3);
    s.add(denseRows(m, 0, 3), 0);
    checkHandStatistics(s);
  }
  SECTION("sparse codes, one row per batch") {
    FeatureStatistics s(4, 2);
    for (Index r = 0; r < 6; ++r) s.add(handSparse(r, 1), r);
    checkHandStatistics(s);
  }
  SECTION("top 1 and top 0") {
    FeatureStatistics one(4, 1), none(4, 0);
    one.add(denseRows(m, 0, 6), 0);
    none.add(denseRows(m, 0, 6), 0);
    CHECK(one.topActivations(0) == std::vector<TopActivation>{{3.0, 1}});
    CHECK(one.topActivations(2) == std::vector<TopActivation>{{2.0, 0}});
    CHECK(none.topActivations(0).empty());
    CHECK(none.firingCount(0) == 5);
  }
  SECTION("an offset shifts the global rows") {
    FeatureStatistics s(4, 3);
    s.add(handSparse(0, 6), 1000);
    CHECK(s.rowEnd() == 1006);
    CHECK(s.tokens() == 6);
    CHECK(s.topActivations(0) == std::vector<TopActivation>{{3.0, 1001}, {3.0, 1003}, {3.0, 1005}});
    CHECK(s.topActivations(2) == std::vector<TopActivation>{{2.0, 1000}, {2.0, 1001}, {2.0, 1003}});
  }
}

TEST_CASE("FeatureStatistics: dense and sparse codes give identical JSON", "[FeatureStatistics]") {
  const sae::RowMatrix<float> m = handMatrix();
  FeatureStatistics dense(4, 2), sparse(4, 2);
  dense.add(denseRows(m, 0, 4), 0);
  dense.add(denseRows(m, 4, 2), 4);
  sparse.add(handSparse(0, 2), 0);
  sparse.add(handSparse(2, 4), 2);
  CHECK(dense.toJson().dump() == sparse.toJson().dump());

  const ojson j = dense.toJson();
  const ojson& sum = j.at("summary");
  CHECK(sum.at("tokens") == 6);
  CHECK(sum.at("d_sae") == 4);
  CHECK(sum.at("top_n") == 2);
  CHECK(sum.at("dead") == 1);
  CHECK(sum.at("mean_l0").get<double>() == Approx(10.0 / 6.0));
  CHECK(sum.at("token_ids") == false);
  // Densities 5/6, 1/6, 4/6, 0: log10 = -0.079, -0.778, -0.176 -> bins 19, 18, 19; one dead.
  const ojson& h = sum.at("density_histogram");
  CHECK(h.at("log10_density_edges").size() == 21);
  std::vector<std::int64_t> counts(20, 0);
  counts[18] = 1;
  counts[19] = 2;
  CHECK(h.at("counts").get<std::vector<std::int64_t>>() == counts);
  CHECK(h.at("dead") == 1);
  CHECK(h.at("below_range") == 0);

  const ojson& f = j.at("features");
  REQUIRE(f.size() == 4);
  const ojson& f0 = f[0];
  std::vector<std::string> keys;
  for (const auto& item : f0.items()) keys.push_back(item.key());
  CHECK(keys == std::vector<std::string>{"feature", "firing_count", "frequency", "log10_density",
                                         "mean_activation", "mean_firing_activation",
                                         "max_activation", "top_rows", "top_values"});
  CHECK(f0.at("feature") == 0);
  CHECK(f0.at("firing_count") == 5);
  CHECK(f0.at("frequency").get<double>() == Approx(5.0 / 6.0));
  CHECK(f0.at("log10_density").get<double>() == Approx(std::log10(5.0 / 6.0)));
  CHECK(f0.at("mean_activation").get<double>() == Approx(1.75));
  CHECK(f0.at("mean_firing_activation").get<double>() == Approx(2.1));
  CHECK(f0.at("max_activation").get<double>() == 3.0);
  CHECK(f0.at("top_rows") == ojson({1, 3}));
  CHECK(f0.at("top_values") == ojson({3.0, 3.0}));
  CHECK(f[2].at("top_rows") == ojson({0, 1}));
  // A dead feature: nulls where the value is undefined, empty lists.
  const ojson& f3 = f[3];
  CHECK(f3.at("firing_count") == 0);
  CHECK(f3.at("frequency") == 0.0);
  CHECK(f3.at("log10_density").is_null());
  CHECK(f3.at("mean_activation") == 0.0);
  CHECK(f3.at("mean_firing_activation").is_null());
  CHECK(f3.at("max_activation").is_null());
  CHECK(f3.at("top_rows").empty());
  CHECK(f3.at("top_values").empty());
}

TEST_CASE("FeatureStatistics: log10-density histogram bins", "[FeatureStatistics]") {
  using H = sae::eval::DensityHistogram;
  CHECK(H::edge(0) == -10.0);
  CHECK(H::edge(7) == -6.5);
  CHECK(H::edge(20) == 0.0);
  // log10 3e-10 = -9.52 -> bin 0; log10 9e-4 = -3.046 -> (6.954 / 0.5) = 13.9 -> bin 13;
  // log10 1 = 0 (the closed last edge) -> bin 19; below 1e-10 -> -1.
  CHECK(H::binOf(3e-10) == 0);
  CHECK(H::binOf(9e-4) == 13);
  CHECK(H::binOf(0.5) == 19);
  CHECK(H::binOf(1.0) == 19);
  CHECK(H::binOf(1e-11) == -1);
  CHECK(H::binOf(2.0) == 19);  // only with repeated rows; clamped to the last bin
  CHECK_THROWS_AS(H::binOf(0.0), sae::ConfigError);

  // 40 rows; feature f fires on the first n_f rows with n = 40, 1, 3, 20, 0, 10:
  // densities 1, 0.025, 0.075, 0.5, 0, 0.25 -> log10 0, -1.602, -1.125, -0.301, -inf, -0.602
  // -> bins 19, 16, 17, 19, dead, 18.
  const Index fires[6] = {40, 1, 3, 20, 0, 10};
  sae::DenseCodes<double> c;
  c.values = sae::RowMatrix<double>::Zero(40, 6);
  for (Index f = 0; f < 6; ++f) c.values.col(f).head(fires[f]).setConstant(0.5);
  FeatureStatistics s(6, 1);
  s.add(c, 0);
  const H h = s.densityHistogram();
  std::vector<std::int64_t> want(20, 0);
  want[16] = 1;
  want[17] = 1;
  want[18] = 1;
  want[19] = 2;
  CHECK(h.counts == want);
  CHECK(h.dead == 1);
  CHECK(h.below_range == 0);
}

namespace {

// Random codes with many ties: k = 16 distinct latents per row, values in {0, 0.5, ..., 2.5}
// (zeros do not fire).
sae::SparseCodes<float> randomSparse(Index rows, Index d_sae, std::mt19937& gen) {
  const Index k = 16;
  sae::SparseCodes<float> c;
  c.d_sae = d_sae;
  c.indices.resize(rows, k);
  c.values.resize(rows, k);
  std::vector<std::int32_t> ids(static_cast<std::size_t>(d_sae));
  for (Index r = 0; r < rows; ++r) {
    for (Index i = 0; i < d_sae; ++i) ids[static_cast<std::size_t>(i)] = std::int32_t(i);
    // Skewed: low-numbered latents fire much more often.
    for (Index j = 0; j < k; ++j) {
      const auto span = static_cast<int>(std::min<Index>(d_sae - j, 8 << (j % 8)));
      const auto pick =
          static_cast<std::size_t>(j + std::uniform_int_distribution<int>(0, span - 1)(gen));
      std::swap(ids[static_cast<std::size_t>(j)], ids[pick]);
      c.indices(r, j) = ids[static_cast<std::size_t>(j)];
      c.values(r, j) = 0.5f * float(std::uniform_int_distribution<int>(0, 5)(gen));
    }
  }
  return c;
}

// The statistics of one feature by brute force over the dense matrix.
struct Brute {
  std::int64_t count = 0;
  double sum = 0, max = 0;
  std::vector<TopActivation> top;
};

Brute bruteForce(const sae::RowMatrix<float>& m, Index f, Index top_n) {
  Brute b;
  std::vector<TopActivation> all;
  for (Index r = 0; r < m.rows(); ++r) {
    const double v = m(r, f);
    if (v == 0) continue;
    b.max = b.count == 0 ? v : std::max(b.max, v);
    ++b.count;
    b.sum += v;
    all.push_back({v, std::int64_t(r)});
  }
  std::sort(all.begin(), all.end(), [](const TopActivation& x, const TopActivation& y) {
    return x.value != y.value ? x.value > y.value : x.row < y.row;
  });
  all.resize(std::min<std::size_t>(all.size(), static_cast<std::size_t>(top_n)));
  b.top = all;
  return b;
}

}  // namespace

TEST_CASE("FeatureStatistics: same result for 1 and 2 threads, dense or sparse; merge",
          "[FeatureStatistics]") {
  // Large enough that both paths run in parallel (more than 2^14 entries per batch).
  const Index d_sae = 1500, rows = 3000, batch = 1500, top_n = 5;
  std::mt19937 gen(7);
  const sae::SparseCodes<float> codes = randomSparse(rows, d_sae, gen);
  const sae::RowMatrix<float> dense = codes.toDense();

  auto slice = [&](Index first, Index n) {
    sae::SparseCodes<float> c;
    c.d_sae = d_sae;
    c.indices = codes.indices.middleRows(first, n);
    c.values = codes.values.middleRows(first, n);
    return c;
  };
  auto run = [&](int threads, bool sparse) {
    sae::setThreads(threads);
    FeatureStatistics s(d_sae, top_n);
    for (Index b = 0; b < rows; b += batch) {
      if (sparse) {
        s.add(slice(b, batch), b);
      } else {
        sae::DenseCodes<float> c;
        c.values = dense.middleRows(b, batch);
        s.add(c, b);
      }
    }
    return s;
  };
  const int restore = sae::maxThreads();
  const FeatureStatistics s1 = run(1, true), s2 = run(2, true), d1 = run(1, false),
                          d2 = run(2, false);
  const std::string reference = s1.toJson().dump();
  CHECK(s2.toJson().dump() == reference);
  CHECK(d1.toJson().dump() == reference);
  CHECK(d2.toJson().dump() == reference);

  // Against brute force.
  Index dead = 0;
  for (Index f = 0; f < d_sae; ++f) {
    const Brute b = bruteForce(dense, f, top_n);
    INFO("feature " << f);
    REQUIRE(s2.firingCount(f) == b.count);
    REQUIRE(s2.maxActivation(f) == b.max);
    REQUIRE(s2.meanActivation(f) == Approx(b.sum / double(rows)));
    REQUIRE(s2.topActivations(f) == b.top);
    dead += b.count == 0;
  }
  CHECK(dead > 0);  // the skew leaves some latents dead
  CHECK(s2.deadCount() == dead);

  // Merging two halves, accumulated with 2 threads, gives the same counts, max and top lists.
  sae::setThreads(2);
  FeatureStatistics a(d_sae, top_n), b(d_sae, top_n);
  a.add(slice(0, batch), 0);
  b.add(slice(batch, batch), batch);
  b.merge(a);  // the later rows first: the order of merging does not matter
  CHECK(b.tokens() == rows);
  CHECK(b.rowEnd() == rows);
  for (Index f = 0; f < d_sae; ++f) {
    INFO("feature " << f);
    REQUIRE(b.firingCount(f) == s1.firingCount(f));
    REQUIRE(b.maxActivation(f) == s1.maxActivation(f));
    REQUIRE(b.meanActivation(f) == Approx(s1.meanActivation(f)));
    REQUIRE(b.topActivations(f) == s1.topActivations(f));
  }
  CHECK_THROWS_AS(b.merge(b), sae::ConfigError);
  CHECK_THROWS_AS(b.merge(FeatureStatistics(d_sae, top_n + 1)), sae::ConfigError);
  CHECK_THROWS_AS(b.merge(FeatureStatistics(d_sae + 1, top_n)), sae::ConfigError);
  sae::setThreads(restore);
}

TEST_CASE("FeatureStatistics: token ids of the top rows; a count mismatch is an error",
          "[FeatureStatistics]") {
  const sae::RowMatrix<float> m = handMatrix();
  FeatureStatistics s(4, 2);
  s.add(denseRows(m, 0, 6), 0);
  const std::vector<std::int32_t> ids = {500, 501, 502, 503, 504, 505};
  const ojson j = s.toJson(ids, "ids.npy");
  CHECK(j.at("summary").at("token_ids") == true);
  CHECK(j.at("features")[0].at("top_token_ids") == ojson({501, 503}));
  CHECK(j.at("features")[1].at("top_token_ids") == ojson({505}));
  CHECK(j.at("features")[2].at("top_token_ids") == ojson({500, 501}));
  CHECK(j.at("features")[3].at("top_token_ids").empty());

  const std::vector<std::int64_t> short_ids(5, 1), long_ids(7, 1);
  CHECK_THROWS_AS(s.toJson(short_ids, "ids.npy"), sae::ConfigError);
  CHECK_THROWS_WITH(s.toJson(short_ids, "ids.npy"),
                    "ids.npy: 5 token ids, but the activations have 6 rows; give exactly one "
                    "token id per activation row, in the same order");
  CHECK_THROWS_WITH(s.toJson(long_ids, "more.npy"),
                    "more.npy: 7 token ids, but the activations have 6 rows; give exactly one "
                    "token id per activation row, in the same order");
}

TEST_CASE("FeatureStatistics: bad input", "[FeatureStatistics]") {
  CHECK_THROWS_AS(FeatureStatistics(0, 1), sae::ConfigError);
  CHECK_THROWS_AS(FeatureStatistics(4, -1), sae::ConfigError);
  CHECK_THROWS_AS(FeatureStatistics(4, FeatureStatistics::kMaxTopN + 1), sae::ConfigError);

  FeatureStatistics s(4, 2);
  sae::DenseCodes<float> wide;
  wide.values = sae::RowMatrix<float>::Zero(2, 5);
  CHECK_THROWS_WITH(s.add(wide, 0), "codes have 5 latents, expected 4");
  const sae::RowMatrix<float> m = handMatrix();
  CHECK_THROWS_AS(s.add(denseRows(m, 0, 2), -1), sae::ConfigError);

  sae::DenseCodes<float> nan = denseRows(m, 0, 6);
  nan.values(4, 2) = std::nanf("");
  CHECK_THROWS_AS(s.add(nan, 0), sae::NumericError);
  CHECK_THROWS_WITH(s.add(nan, 10), "feature statistics: activation of feature 2 on row 14 is nan");
  sae::SparseCodes<float> sp = handSparse(0, 6);
  sp.values(1, 1) = INFINITY;
  CHECK_THROWS_AS(s.add(sp, 0), sae::NumericError);
  sp = handSparse(0, 6);
  sp.indices(3, 1) = 4;
  CHECK_THROWS_WITH(s.add(sp, 0), "sparse codes: row 3 holds latent index 4, outside [0, 4)");
  sp.indices(3, 1) = -1;
  CHECK_THROWS_AS(s.add(sp, 0), sae::ConfigError);
  sp = handSparse(0, 6);
  sp.d_sae = 5;
  CHECK_THROWS_AS(s.add(sp, 0), sae::ConfigError);
  // Nothing was added by the failed calls.
  CHECK(s.tokens() == 0);
  CHECK(s.firingCount(0) == 0);
  CHECK_THROWS_AS(s.firingCount(4), sae::ConfigError);
  CHECK_THROWS_AS(s.topActivations(-1), sae::ConfigError);
}

}  // namespace sae_test_feature_stats
