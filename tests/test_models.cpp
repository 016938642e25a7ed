// Behaviour of the model template and its architectures: initialisation, encode/decode
// consistency, the sparse TopK path against a dense reference, determinism across runs, tiles
// and thread counts, and argument validation.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include <sae/sae.hpp>
#include <support/test_support.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_models {

namespace {

using sae::test::perturb;
using sae::test::randomBatch;

using sae::Index;

sae::SaeConfig smallConfig(Index k = 0) {
  sae::SaeConfig cfg;
  cfg.d_in = 16;
  cfg.d_sae = 64;
  cfg.k = k;
  return cfg;
}

}  // namespace

TEMPLATE_TEST_CASE("SAELens initialisation: tied weights, decoder rows of norm 0.1, zero biases",
                   "[models][init]", sae::StandardSAE<double>, sae::GatedSAE<double>,
                   sae::TopKSAE<double>) {
  const TestType m(smallConfig(4), 5);
  const auto& p = m.parameters();
  const auto W_dec = p.rowMajor("W_dec");
  for (Index i = 0; i < W_dec.rows(); ++i) CHECK(W_dec.row(i).norm() == Approx(0.1).epsilon(1e-12));
  CHECK(sae::RowMatrix<double>(p.colMajor("W_enc")) == sae::RowMatrix<double>(W_dec.transpose()));
  for (const auto& e : p.entries())
    if (e.name != "W_enc" && e.name != "W_dec") CHECK(p.flat(e.name).cwiseAbs().maxCoeff() == 0.0);
  // Kaiming-uniform entries before scaling: all directions, no two rows equal.
  CHECK(W_dec.minCoeff() < 0);
  CHECK(W_dec.maxCoeff() > 0);
  CHECK((W_dec.row(0) - W_dec.row(1)).norm() > 1e-3);
  const TestType same(smallConfig(4), 5), other(smallConfig(4), 6);
  CHECK(same.parameters().flat() == p.flat());
  CHECK(other.parameters().flat() != p.flat());
}

TEST_CASE("Parameter names and shapes follow SAELens", "[models]") {
  auto names = [](const auto& m) {
    std::vector<std::string> out;
    for (const auto& e : m.parameters().entries())
      out.push_back(e.name + sae::ParameterSet<float>::shapeString(e));
    return out;
  };
  CHECK(names(sae::StandardSAE<float>(smallConfig())) ==
        std::vector<std::string>{"W_enc[16, 64]", "b_enc[64]", "W_dec[64, 16]", "b_dec[16]"});
  CHECK(names(sae::TopKSAE<float>(smallConfig(4))) ==
        std::vector<std::string>{"W_enc[16, 64]", "b_enc[64]", "W_dec[64, 16]", "b_dec[16]"});
  CHECK(names(sae::GatedSAE<float>(smallConfig())) ==
        std::vector<std::string>{"W_enc[16, 64]", "b_gate[64]", "b_mag[64]", "r_mag[64]",
                                 "W_dec[64, 16]", "b_dec[16]"});
  CHECK(std::string(sae::TopKSAE<float>::architecture()) == "topk");
  CHECK(std::string(sae::GatedSAE<float>::architecture()) == "gated");
  CHECK(std::string(sae::StandardSAE<float>::architecture()) == "standard");
}

TEMPLATE_TEST_CASE("forward equals decode(encode) and the training pass agrees with inference",
                   "[models]", sae::StandardSAE<double>, sae::GatedSAE<double>,
                   sae::TopKSAE<double>) {
  TestType m(smallConfig(4), 3);
  perturb(m, 4, 0.05);
  const auto x = randomBatch<double>(40, 16, 9);
  const auto codes = m.encode(x);
  const sae::RowMatrix<double> y = m.decode(codes);
  CHECK((m.forward(x) - y).cwiseAbs().maxCoeff() == 0.0);

  typename TestType::Workspace ws;
  auto grads = m.makeGradients();
  const auto terms = m.backward(x, grads, {}, ws);
  CHECK((ws.reconstruction - y).cwiseAbs().maxCoeff() < 1e-12);
  CHECK((ws.codes.toDense() - codes.toDense()).cwiseAbs().maxCoeff() < 1e-12);
  // The MSE term is the mean over rows of the summed squared error.
  const double mse = (y - x).rowwise().squaredNorm().mean();
  CHECK(terms["mse_loss"] == Approx(mse).epsilon(1e-12));
  const auto again = m.loss(x);
  REQUIRE(again.terms().size() == terms.terms().size());
  for (std::size_t i = 0; i < terms.terms().size(); ++i) {
    CHECK(std::string(again.terms()[i].first) == terms.terms()[i].first);
    CHECK(again.terms()[i].second == terms.terms()[i].second);
  }
  double sum = 0;
  for (const auto& t : terms.terms()) sum += t.second;
  CHECK(terms.total() == sum);
  CHECK(terms["total"] == sum);
  CHECK_THROWS_WITH(terms["l0_loss"],
                    Catch::StartsWith("no loss term named 'l0_loss' (have: mse_loss"));
}

TEST_CASE("TopK encode matches a dense reference selection", "[models][TopKSAE]") {
  for (bool rescale : {false, true}) {
    auto cfg = smallConfig(5);
    cfg.rescale_acts_by_decoder_norm = rescale;
    sae::TopKSAE<float> m(cfg, 11);
    perturb(m, 12, 0.05);
    const auto x = randomBatch<float>(33, 16, 13);
    const auto& p = m.parameters();
    sae::RowMatrix<float> h = (x.rowwise() - p.flat("b_dec").transpose()) * p.colMajor("W_enc");
    h.rowwise() += p.flat("b_enc").transpose();
    const sae::Vector<float> n = m.decoderNorms();
    const auto codes = m.encode(x);
    REQUIRE(codes.indices.rows() == 33);
    REQUIRE(codes.indices.cols() == 5);
    for (Index b = 0; b < 33; ++b) {
      std::vector<Index> order(64);
      std::iota(order.begin(), order.end(), 0);
      auto score = [&](Index i) { return rescale ? h(b, i) * n[i] : h(b, i); };
      std::stable_sort(order.begin(), order.end(),
                       [&](Index a, Index c) { return score(a) > score(c); });
      for (Index j = 0; j < 5; ++j) {
        CHECK(codes.indices(b, j) == order[j]);
        CHECK(codes.values(b, j) == Approx(std::max(score(order[j]), 0.0f)).epsilon(1e-5));
      }
    }
    // Decoding the sparse codes equals the dense product with f / n.
    sae::RowMatrix<float> dense = codes.toDense();
    if (rescale) dense = dense.array().rowwise() / n.transpose().array();
    sae::RowMatrix<float> want = dense * p.rowMajor("W_dec");
    want.rowwise() += p.flat("b_dec").transpose();
    CHECK((m.decode(codes) - want).cwiseAbs().maxCoeff() < 1e-5);
  }
}

TEST_CASE("TopK training results do not depend on the tile size", "[models][TopKSAE]") {
  auto cfg = smallConfig(4);
  cfg.rescale_acts_by_decoder_norm = true;
  sae::TopKSAE<double> m(cfg, 21);
  perturb(m, 22, 0.05);
  const auto x = randomBatch<double>(50, 16, 23);
  sae::LatentMask dead = sae::LatentMask::Zero(64);
  for (Index i = 0; i < 64; i += 5) dead[i] = 1;
  sae::TrainOptions opts;
  opts.dead_mask = &dead;
  sae::TopKSAE<double>::Workspace big, small;
  small.tile_rows = 7;
  auto g1 = m.makeGradients(), g2 = m.makeGradients();
  const auto t1 = m.backward(x, g1, opts, big);
  const auto t2 = m.backward(x, g2, opts, small);
  // Same selections; sums may differ in rounding only (Eigen picks its product kernel by size).
  CHECK(big.codes.indices == small.codes.indices);
  CHECK(big.aux_index == small.aux_index);
  CHECK(t1.total() == Approx(t2.total()).epsilon(1e-13));
  CHECK(t1["auxiliary_reconstruction_loss"] > 0);
  CHECK((g1.flat() - g2.flat()).cwiseAbs().maxCoeff() <= 1e-13 * g1.flat().cwiseAbs().maxCoeff());
}

TEMPLATE_TEST_CASE("Training steps are bitwise reproducible, and 1 and 2 threads agree",
                   "[models][determinism]", sae::StandardSAE<float>, sae::GatedSAE<float>,
                   sae::TopKSAE<float>) {
  sae::SaeConfig cfg;
  cfg.d_in = 48;
  cfg.d_sae = 384;
  cfg.k = 8;
  cfg.rescale_acts_by_decoder_norm = true;
  TestType m(cfg, 31);
  perturb(m, 32, 0.02);
  const auto x = randomBatch<float>(700, 48, 33);
  sae::LatentMask dead = sae::LatentMask::Zero(384);
  for (Index i = 0; i < 384; i += 3) dead[i] = 1;
  sae::TrainOptions opts;
  opts.dead_mask = &dead;

  auto run = [&](int threads) {
    sae::setThreads(threads);
    auto g = m.makeGradients();
    const auto t = m.backward(x, g, opts);
    sae::setThreads(0);
    return std::make_pair(t.total(), sae::Vector<float>(g.flat()));
  };
  const int most = std::max(2, sae::maxThreads());
  const auto a = run(most), b = run(most);
  CHECK(a.first == b.first);
  CHECK(a.second == b.second);
  const auto one = run(1), two = run(2);
  CHECK(one.first == Approx(two.first).epsilon(1e-5));
  const float scale = std::max(1.0f, one.second.cwiseAbs().maxCoeff());
  CHECK((one.second - two.second).cwiseAbs().maxCoeff() <= 1e-5f * scale);
}

TEST_CASE("Invalid configurations raise ConfigError with a clear message", "[models][errors]") {
  auto cfg = smallConfig(4);
  cfg.d_in = 0;
  CHECK_THROWS_WITH(sae::StandardSAE<float>(cfg), "d_in must be positive, found 0");
  cfg = smallConfig(0);
  CHECK_THROWS_WITH(sae::TopKSAE<float>(cfg), "k must be >= 1, found 0");
  cfg = smallConfig(65);
  CHECK_THROWS_WITH(sae::TopKSAE<float>(cfg), "k must be <= d_sae = 64, found 65");
  cfg = smallConfig();
  cfg.l1_coefficient = -1;
  CHECK_THROWS_WITH(sae::StandardSAE<float>(cfg),
                    "l1_coefficient must be finite and >= 0, found -1");
  cfg = smallConfig(4);
  cfg.aux_loss_coefficient = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(sae::TopKSAE<float>(cfg), sae::ConfigError);
  cfg = smallConfig();
  cfg.lp_norm = 0.5;
  CHECK_THROWS_WITH(sae::StandardSAE<float>(cfg), "lp_norm must be >= 1, found 0.5");
  cfg = smallConfig();
  cfg.d_sae = -3;
  CHECK_THROWS_AS(sae::GatedSAE<double>(cfg), sae::ConfigError);
}

TEST_CASE("Invalid inputs raise errors naming the problem", "[models][errors]") {
  sae::TopKSAE<float> m(smallConfig(4), 1);
  auto x = randomBatch<float>(8, 16, 2);
  CHECK_THROWS_WITH(m.encode(randomBatch<float>(8, 15, 2)),
                    "input batch has 15 columns, expected d_in = 16");
  CHECK_THROWS_WITH(m.encode(sae::RowMatrix<float>(0, 16)), "input batch has no rows");
  x(3, 7) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_AS(m.encode(x), sae::NumericError);
  CHECK_THROWS_WITH(m.loss(x), "input batch has a non-finite value (nan) at row 3, column 7");
  x(3, 7) = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(m.loss(x), "input batch has a non-finite value (inf) at row 3, column 7");
  x(3, 7) = 0;

  sae::LatentMask wrong = sae::LatentMask::Zero(10);
  sae::TrainOptions opts;
  opts.dead_mask = &wrong;
  CHECK_THROWS_WITH(m.loss(x, opts), "dead-latent mask has 10 entries, expected d_sae = 64");
  opts = {};
  opts.sparsity_scale = -1;
  CHECK_THROWS_AS(m.loss(x, opts), sae::ConfigError);

  sae::GatedSAE<float> other(smallConfig(), 1);
  auto g = other.makeGradients();
  CHECK_THROWS_WITH(m.backward(x, g),
                    "gradient set does not match the model's parameters (use makeGradients())");
  sae::SparseCodes<float> codes = m.encode(x);
  codes.d_sae = 32;
  CHECK_THROWS_WITH(m.decode(codes), "codes have 32 latents, expected d_sae = 64");
}

TEMPLATE_TEST_CASE("Standard and gated SAEs give the same results on their sparse and dense paths",
                   "[models][sparse]", sae::StandardSAE<double>, sae::GatedSAE<double>) {
  sae::SaeConfig cfg;
  cfg.d_in = 24;
  cfg.d_sae = 200;
  cfg.l1_coefficient = 0.8;
  TestType m(cfg, 41);
  perturb(m, 42, 0.02);
  // Negative encoder biases make the codes sparse (a few percent active).
  const char* bias = std::is_same<TestType, sae::GatedSAE<double>>::value ? "b_gate" : "b_enc";
  m.parameters().flat(bias).array() -= 0.25;
  const auto x = randomBatch<double>(90, 24, 43);

  typename TestType::Workspace dense, sparse, automatic;
  dense.sparse_threshold = 0.0;
  sparse.sparse_threshold = 1.1;
  auto gd = m.makeGradients(), gs = m.makeGradients(), ga = m.makeGradients();
  const auto td = m.backward(x, gd, {}, dense);
  const auto ts = m.backward(x, gs, {}, sparse);
  m.backward(x, ga, {}, automatic);
  CHECK_FALSE(dense.used_sparse);
  CHECK(sparse.used_sparse);
  const double density = double((dense.codes.values.array() > 0).count()) / (90.0 * 200.0);
  INFO("density of f " << density);
  CHECK(density > 0.005);
  CHECK(density < 0.2);
  CHECK(automatic.used_sparse == (sparse.pattern.nnz() < 0.05 * 90 * 200));

  for (std::size_t i = 0; i < td.terms().size(); ++i)
    CHECK(ts.terms()[i].second == Approx(td.terms()[i].second).epsilon(1e-12));
  CHECK((dense.reconstruction - sparse.reconstruction).cwiseAbs().maxCoeff() < 1e-12);
  for (const auto& e : gd.entries()) {
    INFO("gradient " << e.name);
    const double scale = std::max(1e-12, gd.flat(e.name).cwiseAbs().maxCoeff());
    CHECK((gd.flat(e.name) - gs.flat(e.name)).cwiseAbs().maxCoeff() <= 1e-12 * scale);
  }
}

}  // namespace sae_test_models
