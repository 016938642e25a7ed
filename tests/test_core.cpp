// Tests of the core pieces: errors, RNG, ParameterSet.
#include <algorithm>
#include <cmath>
#include <vector>

#include <catch2/catch.hpp>

#include <sae/core/parameters.hpp>
#include <sae/core/rng.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_core {

using sae::Index;

TEST_CASE("Rng is deterministic per seed and stream", "[core][Rng]") {
  sae::Rng a(42), b(42), c(43), d(42, 1);
  std::vector<std::uint64_t> va, vb, vc, vd;
  for (int i = 0; i < 16; ++i) {
    va.push_back(a.nextU64());
    vb.push_back(b.nextU64());
    vc.push_back(c.nextU64());
    vd.push_back(d.nextU64());
  }
  CHECK(va == vb);
  CHECK(va != vc);
  CHECK(va != vd);
}

TEST_CASE("Rng uniform and normal have the right moments", "[core][Rng]") {
  sae::Rng rng(7);
  const int n = 200000;
  double su = 0, su2 = 0, sn = 0, sn2 = 0;
  for (int i = 0; i < n; ++i) {
    const double u = rng.uniform();
    REQUIRE(u >= 0.0);
    REQUIRE(u < 1.0);
    su += u;
    su2 += u * u;
    const double z = rng.normal();
    sn += z;
    sn2 += z * z;
  }
  // Standard errors: uniform mean 0.29/sqrt(n) ~ 6.5e-4, normal mean 1/sqrt(n) ~ 2.2e-3.
  CHECK(std::abs(su / n - 0.5) < 4e-3);
  CHECK(std::abs(su2 / n - 1.0 / 3.0) < 4e-3);
  CHECK(std::abs(sn / n) < 1e-2);
  CHECK(std::abs(sn2 / n - 1.0) < 2e-2);
}

TEST_CASE("Rng::below is in range and hits every value", "[core][Rng]") {
  sae::Rng rng(3);
  std::vector<int> counts(7, 0);
  for (int i = 0; i < 7000; ++i) {
    const auto v = rng.below(7);
    REQUIRE(v < 7);
    ++counts[v];
  }
  for (int c : counts) CHECK(c > 800);
}

TEST_CASE("Rng state round-trips", "[core][Rng]") {
  sae::Rng a(9);
  a.nextU64();
  const auto s = a.state();
  const auto x = a.nextU64();
  sae::Rng b;
  b.setState(s);
  CHECK(b.nextU64() == x);
}

TEST_CASE("ParameterSet packs named tensors and converts layouts", "[core][ParameterSet]") {
  sae::ParameterSet<double> p;
  p.add("W_enc", {2, 3}, sae::Layout::ColMajor);
  p.add("b_enc", {3});
  p.add("W_dec", {3, 2});
  CHECK(p.size() == 6 + 3 + 6);
  CHECK(p.info("b_enc").offset == 6);
  CHECK(p.info("W_dec").offset == 9);

  sae::RowMatrix<double> w(2, 3);
  w << 1, 2, 3, 4, 5, 6;
  p.assignRowMajor("W_enc", w);
  // Column-major storage: 1 4 2 5 3 6.
  const std::vector<double> expect{1, 4, 2, 5, 3, 6};
  for (Index i = 0; i < 6; ++i) CHECK(p.flat("W_enc")[i] == expect[i]);
  CHECK(p.colMajor("W_enc")(1, 2) == 6);
  CHECK(p.rowMajorCopy("W_enc") == w);

  sae::RowMatrix<double> b(1, 3);
  b << 7, 8, 9;
  p.assignRowMajor("b_enc", b);
  p.assignRowMajor("b_enc", sae::RowMatrix<double>(b.transpose()));
  CHECK(p.flat("b_enc")[2] == 9);

  auto z = p.zerosLike();
  CHECK(z.sameLayout(p));
  CHECK(z.flat().cwiseAbs().maxCoeff() == 0.0);
}

TEST_CASE("ParameterSet rejects bad names and shapes with clear messages", "[core][ParameterSet]") {
  sae::ParameterSet<float> p;
  p.add("W_dec", {4, 2});
  CHECK_THROWS_WITH(p.info("W_enc"), "no parameter named 'W_enc' (have: W_dec)");
  CHECK_THROWS_AS(p.add("W_dec", {1}), sae::ConfigError);
  CHECK_THROWS_AS(p.add("x", {0}), sae::ConfigError);
  CHECK_THROWS_AS(p.add("y", {1, 2, 3}), sae::ConfigError);
  CHECK_THROWS_WITH(p.assignRowMajor("W_dec", sae::RowMatrix<float>::Zero(2, 4)),
                    "parameter 'W_dec': expected shape [4, 2], found [2, 4]");
  CHECK_THROWS_WITH(p.colMajor("W_dec"), "parameter 'W_dec' is stored row-major");
}

}  // namespace sae_test_core
