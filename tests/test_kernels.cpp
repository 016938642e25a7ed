// Kernels against plain dense reference computations.
#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <sae/core/rng.hpp>
#include <sae/kernels/gemm.hpp>
#include <sae/kernels/reduce.hpp>
#include <sae/kernels/sparse.hpp>
#include <sae/kernels/topk.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_kernels {

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

TEST_CASE("sumByLatent equals zeroing then accumulateByLatent, bitwise", "[kernels][sparse]") {
  const Index B = 40, k = 4, n = 90, d = 13;  // n > B * k / 2: some buckets stay empty
  const auto idx = randomIndices(B, k, n, 21);
  const Mat coef = randomMatrix(B, k, 22), source = randomMatrix(B, d, 23);
  sae::kernels::LatentBuckets buckets;
  buckets.build(n, {&idx});
  std::vector<std::int32_t> row(std::size_t(B * k));
  for (Index e = 0; e < B * k; ++e) row[std::size_t(e)] = std::int32_t(e / k);
  Mat want = Mat::Zero(n, d);
  sae::Vector<double> want_bias = sae::Vector<double>::Zero(n);
  sae::kernels::accumulateByLatent<double>(buckets, row.data(), coef.data(), source, want,
                                           want_bias.data());
  Mat out = Mat::Constant(n, d, 7.0);  // overwritten, empty buckets included
  sae::Vector<double> bias = sae::Vector<double>::Constant(n, 7.0);
  sae::kernels::sumByLatent<double>(buckets, row.data(), coef.data(), source, out, bias.data());
  CHECK(out == want);
  CHECK(bias == want_bias);
  Index empty = 0;
  for (Index i = 0; i < n; ++i) empty += buckets.begin(i) == buckets.end(i);
  CHECK(empty > 0);
}

TEST_CASE("selectTopKFused (float) equals selectTopK on the materialised scores",
          "[kernels][topk]") {
  // Lengths around the 64-wide vector blocks and the 16-wide tail; values drawn from a small
  // set so that ties are frequent (ties keep the lower position).
  sae::Rng rng(31);
  for (const Index n : {Index(5), Index(63), Index(64), Index(200), Index(1000), Index(4099)}) {
    for (const Index k : {Index(1), Index(3), Index(32), n}) {
      if (k > n) continue;
      for (const bool scaled : {false, true}) {
        std::vector<float> pre(n), bias(n), scale(n), score(n);
        for (Index i = 0; i < n; ++i) {
          pre[i] = float(rng.below(9)) - 4.0f;
          bias[i] = float(rng.below(3)) * 0.5f;
          scale[i] = 0.5f + float(rng.below(3));
          score[i] = scaled ? (pre[i] + bias[i]) * scale[i] : pre[i] + bias[i];
        }
        std::vector<std::int32_t> want_idx(k), idx(k);
        std::vector<float> want_val(k), val(k);
        sae::kernels::selectTopK(score.data(), static_cast<const std::int32_t*>(nullptr), n, k,
                                 want_idx.data(), want_val.data());
        sae::kernels::selectTopKFused(pre.data(), bias.data(), scaled ? scale.data() : nullptr, n,
                                      k, idx.data(), val.data());
        INFO("n " << n << " k " << k << " scaled " << scaled);
        CHECK(idx == want_idx);
        CHECK(val == want_val);
      }
    }
  }
  // Increasing scores: every block has candidates, and the k-th value rises on every one.
  const Index n = 777, k = 40;
  std::vector<float> pre(n), bias(n, 0.0f);
  for (Index i = 0; i < n; ++i) pre[i] = float(i);
  std::vector<std::int32_t> idx(k);
  std::vector<float> val(k);
  sae::kernels::selectTopKFused(pre.data(), bias.data(), static_cast<const float*>(nullptr), n, k,
                                idx.data(), val.data());
  for (Index j = 0; j < k; ++j) CHECK(idx[j] == std::int32_t(n - 1 - j));
}

namespace {

template <typename M>
void fillRandom(M& m, std::uint64_t seed) {
  sae::Rng rng(seed);
  for (Index c = 0; c < m.cols(); ++c)
    for (Index r = 0; r < m.rows(); ++r) m(r, c) = float(rng.normal());
}

// |got - want| <= tol * (|a| |b|)(i, j): the float rounding bound of a dot product of length K,
// with K * 2^-24 <= tol for any summation order.
template <typename Got, typename A, typename B>
double worstRelativeError(const Got& got, const sae::RowMatrix<double>& want, const A& a,
                          const B& b) {
  const sae::RowMatrix<double> bound =
      a.template cast<double>().cwiseAbs() * b.template cast<double>().cwiseAbs();
  double worst = 0;
  for (Index r = 0; r < want.rows(); ++r)
    for (Index c = 0; c < want.cols(); ++c)
      worst = std::max(worst, std::abs(double(got(r, c)) - want(r, c)) / bound(r, c));
  return worst;
}

}  // namespace

TEST_CASE("gemm equals the double-precision product for every operand layout", "[kernels][gemm]") {
  using RowF = sae::RowMatrix<float>;
  using ColF = sae::ColMatrix<float>;
  // Large enough for oneDNN (when the build has it), with odd sizes; and a small product that
  // always stays on Eigen.
  for (const auto& dims : {std::array<Index, 3>{300, 257, 130}, std::array<Index, 3>{7, 5, 9}}) {
    const Index M = dims[0], N = dims[1], K = dims[2];
    RowF a_row(M, K);
    ColF a_col(M, K);
    RowF b_row(K, N);
    ColF b_col(K, N);
    fillRandom(a_row, 41);
    a_col = a_row;
    fillRandom(b_row, 42);
    b_col = b_row;
    const sae::RowMatrix<double> want = a_row.cast<double>() * b_row.cast<double>();
    const double tol = double(K) * 6e-8;
    INFO("M " << M << " N " << N << " K " << K);

    // Row- and column-major operands, transposes, outputs of either order and a block.
    RowF c1;
    sae::kernels::gemm(c1, a_row, b_row);
    CHECK(worstRelativeError(c1, want, a_row, b_row) <= tol);
    ColF c2;
    sae::kernels::gemm(c2, a_col, b_col);
    CHECK(worstRelativeError(c2, want, a_row, b_row) <= tol);
    RowF c3;
    const RowF a_t = a_row.transpose(), b_t = b_row.transpose();
    sae::kernels::gemm(c3, a_t.transpose(), b_t.transpose());
    CHECK(worstRelativeError(c3, want, a_row, b_row) <= tol);
    // Column-major output from a column-major and a row-major input, the layout of the
    // encoder gradient xc^T grad_h (oneDNN runs it as the transposed problem).
    ColF c4(M, N);
    sae::kernels::gemm(c4, a_col, b_row);
    CHECK(worstRelativeError(c4, want, a_row, b_row) <= tol);
    RowF big = RowF::Constant(M + 3, N + 5, 9.0f);
    sae::kernels::gemm(big.block(1, 2, M, N), a_row, b_col);
    CHECK(worstRelativeError(big.block(1, 2, M, N), want, a_row, b_row) <= tol);
    CHECK(big(0, 0) == 9.0f);  // outside the block: untouched
    CHECK(big(M + 2, N + 4) == 9.0f);

    // Accumulate: c += a b.
    RowF acc = RowF::Constant(M, N, 1.0f);
    sae::kernels::gemm(acc, a_row, b_row, /*accumulate=*/true);
    const sae::RowMatrix<double> want_acc = (want.array() + 1.0).matrix();
    CHECK((acc.cast<double>() - want_acc).cwiseAbs().maxCoeff() <=
          tol * (a_row.cwiseAbs() * b_row.cwiseAbs()).maxCoeff() + 1e-6);

    // The same call twice: the same bits (a cached primitive, fixed summation order).
    RowF again;
    sae::kernels::gemm(again, a_row, b_row);
    CHECK(again == c1);
  }
  // Where the product goes: oneDNN only for large float products of a oneDNN build.
  RowF a(300, 130), b(130, 257), c(300, 257);
  const std::string impl = sae::kernels::gemmImplementation(c, a, b);
  if (sae::kernels::onednnGemmAvailable()) {
    CHECK(impl.rfind("brg:", 0) == 0);
  } else {
    CHECK(impl == "eigen");
  }
  RowF sa(7, 9), sb(9, 5), sc(7, 5);
  CHECK(sae::kernels::gemmImplementation(sc, sa, sb) == "eigen");
  CHECK_THROWS_WITH(sae::kernels::gemm(c.topRows(10), a, b), Catch::Contains("do not fit"));
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

TEST_CASE("sumOfSquares adds in its documented order, for every length", "[kernels]") {
  sae::Rng rng(11, 0);
  for (const Index n : {0, 1, 7, 8, 9, 16, 31, 1000}) {
    std::vector<float> x(static_cast<std::size_t>(n));
    for (float& v : x) v = float(rng.normal());
    // Running sums over i mod 8 for the whole blocks of 8, combined (0+4)+(1+5), (2+6)+(3+7),
    // then the tail in order.
    double acc[8] = {};
    const Index whole = n / 8 * 8;
    for (Index i = 0; i < whole; ++i) acc[i % 8] += double(x[i]) * double(x[i]);
    double expected =
        ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (Index i = whole; i < n; ++i) expected += double(x[i]) * double(x[i]);
    CHECK(sae::kernels::sumOfSquares(x.data(), n) == expected);
    long double exact = 0;
    for (const float v : x) exact += (long double)v * (long double)v;
    CHECK(double(exact) == Approx(expected).epsilon(1e-14));
  }
  const double with_nan[3] = {1.0, std::nan(""), 2.0};
  CHECK(std::isnan(sae::kernels::sumOfSquares(with_nan, 3)));
  const double huge[2] = {1e200, 1e200};
  CHECK(std::isinf(sae::kernels::sumOfSquares(huge, 2)));
}

}  // namespace sae_test_kernels
