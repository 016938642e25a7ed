// Kernels against plain dense reference computations.
#include <algorithm>
#include <numeric>
#include <vector>

#include <catch2/catch.hpp>

#include <sae/core/rng.hpp>
#include <sae/kernels/sparse.hpp>
#include <sae/kernels/topk.hpp>

namespace {

using sae::Index;
using Mat = sae::RowMatrix<double>;

Mat randomMatrix(Index rows, Index cols, std::uint64_t seed) {
  sae::Rng rng(seed);
  Mat m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = rng.normal();
  return m;
}

sae::IndexMatrix randomIndices(Index rows, Index k, Index n, std::uint64_t seed) {
  sae::Rng rng(seed);
  sae::IndexMatrix idx(rows, k);
  for (Index i = 0; i < idx.size(); ++i) idx.data()[i] = std::int32_t(rng.below(std::uint64_t(n)));
  return idx;
}

}  // namespace

TEST_CASE("selectTopK picks the k largest in descending order, ties by position",
          "[kernels][topk]") {
  const std::vector<double> s{0.5, 3.0, -1.0, 3.0, 2.0, 0.5, 7.0};
  std::vector<std::int32_t> idx(4);
  std::vector<double> val(4);
  sae::kernels::selectTopK(s.data(), static_cast<const std::int32_t*>(nullptr), 7, 4, idx.data(),
                           val.data());
  CHECK(idx == std::vector<std::int32_t>{6, 1, 3, 4});
  CHECK(val == std::vector<double>{7.0, 3.0, 3.0, 2.0});

  // Among candidates only; positions refer to the full row.
  const std::vector<std::int32_t> cand{0, 2, 5};
  std::vector<std::int32_t> cidx(2);
  std::vector<double> cval(2);
  sae::kernels::selectTopK(s.data(), cand.data(), 3, 2, cidx.data(), cval.data());
  CHECK(cidx == std::vector<std::int32_t>{0, 5});
  CHECK(cval == std::vector<double>{0.5, 0.5});

  // k equal to the count: a full descending sort.
  std::vector<std::int32_t> all(7);
  std::vector<double> allv(7);
  sae::kernels::selectTopK(s.data(), static_cast<const std::int32_t*>(nullptr), 7, 7, all.data(),
                           allv.data());
  CHECK(all == std::vector<std::int32_t>{6, 1, 3, 4, 0, 5, 2});
}

TEST_CASE("rowTopK agrees with sorting every row", "[kernels][topk]") {
  const Mat s = randomMatrix(57, 300, 1);
  sae::IndexMatrix idx(57, 9);
  Mat val(57, 9);
  sae::kernels::rowTopK<double>(s, 9, idx, val);
  for (Index r = 0; r < s.rows(); ++r) {
    std::vector<Index> order(300);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](Index a, Index b) { return s(r, a) > s(r, b); });
    for (Index j = 0; j < 9; ++j) {
      CHECK(idx(r, j) == order[j]);
      CHECK(val(r, j) == s(r, order[j]));
    }
  }
}

TEST_CASE("gatherDecode and gatherDot equal their dense forms", "[kernels][sparse]") {
  const Index B = 40, k = 6, n = 50, d = 13;
  const auto idx = randomIndices(B, k, n, 2);
  const Mat coef = randomMatrix(B, k, 3), table = randomMatrix(n, d, 4),
            left = randomMatrix(B, d, 5);
  const sae::Vector<double> bias = randomMatrix(d, 1, 6);
  Mat dense = Mat::Zero(B, n);
  for (Index b = 0; b < B; ++b)
    for (Index j = 0; j < k; ++j) dense(b, idx(b, j)) += coef(b, j);
  Mat want = dense * table;
  want.rowwise() += bias.transpose();
  Mat got(B, d);
  sae::kernels::gatherDecode<double>(idx, coef, table, bias, got);
  CHECK((got - want).cwiseAbs().maxCoeff() < 1e-12);
  sae::kernels::gatherDecode<double>(idx, coef, table, sae::Vector<double>(), got);
  CHECK((got - dense * table).cwiseAbs().maxCoeff() < 1e-12);

  Mat dots(B, k);
  sae::kernels::gatherDot<double>(left, idx, table, dots);
  const Mat all = left * table.transpose();
  for (Index b = 0; b < B; ++b)
    for (Index j = 0; j < k; ++j) CHECK(dots(b, j) == Approx(all(b, idx(b, j))).epsilon(1e-12));
}

TEST_CASE("LatentBuckets groups entries by latent in input order", "[kernels][sparse]") {
  sae::IndexMatrix a(2, 3), b(1, 2);
  a << 4, 1, 4, 0, 4, 2;
  b << 1, 3;
  sae::kernels::LatentBuckets buckets;
  buckets.build(6, {&a, &b});
  REQUIRE(buckets.numLatents() == 6);
  auto bucket = [&](Index i) {
    return std::vector<std::int32_t>(buckets.entries().begin() + buckets.begin(i),
                                     buckets.entries().begin() + buckets.end(i));
  };
  // Entry ids: a row-major 0..5, then b 6..7.
  CHECK(bucket(0) == std::vector<std::int32_t>{3});
  CHECK(bucket(1) == std::vector<std::int32_t>{1, 6});
  CHECK(bucket(2) == std::vector<std::int32_t>{5});
  CHECK(bucket(3) == std::vector<std::int32_t>{7});
  CHECK(bucket(4) == std::vector<std::int32_t>{0, 2, 4});
  CHECK(bucket(5).empty());
}

TEST_CASE("accumulateByLatent equals the dense transposed product, for any thread count",
          "[kernels][sparse]") {
  const Index B = 64, k = 5, n = 70, d = 11;
  const auto idx = randomIndices(B, k, n, 7);
  const Mat coef = randomMatrix(B, k, 8), source = randomMatrix(B, d, 9);
  sae::kernels::LatentBuckets buckets;
  buckets.build(n, {&idx});
  std::vector<std::int32_t> row(std::size_t(B * k));
  for (Index b = 0; b < B; ++b)
    for (Index j = 0; j < k; ++j) row[std::size_t(b * k + j)] = std::int32_t(b);
  Mat dense = Mat::Zero(B, n);
  for (Index b = 0; b < B; ++b)
    for (Index j = 0; j < k; ++j) dense(b, idx(b, j)) += coef(b, j);
  const Mat want = dense.transpose() * source;
  const sae::Vector<double> want_bias = dense.colwise().sum().transpose();

  auto run = [&](int threads) {
    sae::setThreads(threads);
    Mat out = Mat::Constant(n, d, 1.0);  // accumulates onto what is there
    sae::Vector<double> bias = sae::Vector<double>::Zero(n);
    sae::kernels::accumulateByLatent<double>(buckets, row.data(), coef.data(), source, out,
                                             bias.data());
    sae::setThreads(0);
    return std::make_pair(out, bias);
  };
  const auto one = run(1), two = run(2);
  CHECK((one.first - (want.array() + 1.0).matrix()).cwiseAbs().maxCoeff() < 1e-12);
  CHECK((one.second - want_bias).cwiseAbs().maxCoeff() < 1e-12);
  CHECK(one.first == two.first);  // one writer per latent, fixed order: bitwise equal
  CHECK(one.second == two.second);
}

TEST_CASE("rowNorms and addBiasRelu", "[kernels]") {
  const Mat m = randomMatrix(9, 7, 10);
  sae::Vector<double> norms(9);
  sae::kernels::rowNorms<double>(m, norms);
  for (Index i = 0; i < 9; ++i) CHECK(norms[i] == Approx(std::sqrt(m.row(i).squaredNorm())));
  Mat pre = m, act(9, 7);
  const sae::Vector<double> bias = randomMatrix(7, 1, 11);
  sae::kernels::addBiasRelu<double>(pre, bias, act);
  for (Index r = 0; r < 9; ++r)
    for (Index c = 0; c < 7; ++c) {
      CHECK(pre(r, c) == m(r, c) + bias[c]);
      CHECK(act(r, c) == std::max(0.0, m(r, c) + bias[c]));
    }
}
