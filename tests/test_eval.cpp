// Metrics, synthetic data and dead-latent tracking.
#include <cmath>

#include <catch2/catch.hpp>

#include <sae/eval/metrics.hpp>
#include <sae/eval/synthetic.hpp>
#include <sae/train/dead_latents.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_eval {

using sae::Index;
using Mat = sae::RowMatrix<double>;

TEST_CASE("ReconstructionMetrics: MSE and explained variance over several batches",
          "[eval][metrics]") {
  // x rows (1, 2), (3, 4), (5, 0): mean (3, 2); E||x||^2 = (5 + 25 + 25) / 3 = 55/3,
  // ||E x||^2 = 13, variance 16/3. Errors: rows off by (1, 0), (0, 0), (0, 2): mse 5/3.
  Mat x1(2, 2), y1(2, 2), x2(1, 2), y2(1, 2);
  x1 << 1, 2, 3, 4;
  y1 << 2, 2, 3, 4;
  x2 << 5, 0;
  y2 << 5, 2;
  sae::eval::ReconstructionMetrics m;
  m.add<double>(x1, y1);
  m.add<double>(x2, y2);
  CHECK(m.tokens() == 3);
  CHECK(m.mse() == Approx(5.0 / 3.0));
  CHECK(m.variance() == Approx(16.0 / 3.0));
  CHECK(m.explainedVariance() == Approx(1.0 - (5.0 / 3.0) / (16.0 / 3.0)));
  CHECK(m.fvu() == Approx((5.0 / 3.0) / (16.0 / 3.0)));
  CHECK_THROWS_AS(m.add<double>(Mat::Zero(2, 3), Mat::Zero(2, 3)), sae::ConfigError);
  CHECK_THROWS_AS(m.add<double>(Mat::Zero(2, 2), Mat::Zero(1, 2)), sae::ConfigError);
  m.reset();
  CHECK(m.tokens() == 0);
}

TEST_CASE("FiringStats: L0, density and dead fraction from sparse and dense codes",
          "[eval][metrics]") {
  sae::SparseCodes<float> s;
  s.d_sae = 4;
  s.indices.resize(2, 2);
  s.values.resize(2, 2);
  s.indices << 0, 2, 2, 1;
  s.values << 1.0f, 0.5f, 2.0f, 0.0f;  // the zero does not count as firing
  sae::eval::FiringStats f(4);
  f.add(s);
  sae::DenseCodes<float> d;
  d.values = sae::RowMatrix<float>::Zero(2, 4);
  d.values(0, 0) = 1;
  d.values(1, 0) = 1;
  d.values(1, 2) = 3;
  f.add(d);
  CHECK(f.tokens() == 4);
  CHECK(f.l0() == Approx(6.0 / 4.0));
  const Eigen::VectorXd density = f.density();
  CHECK(density[0] == Approx(3.0 / 4.0));
  CHECK(density[1] == 0.0);
  CHECK(density[2] == Approx(3.0 / 4.0));
  CHECK(density[3] == 0.0);
  CHECK(f.deadFraction() == Approx(0.5));
}

TEST_CASE("meanMaxCosineSimilarity", "[eval][metrics]") {
  Mat truth(2, 2), learned(3, 2);
  truth << 1, 0, 0, 2;
  learned << 0, -5, 3, 3, 2, 0;  // best for (1,0): (2,0) -> 1; for (0,1): (3,3) -> 1/sqrt(2)
  CHECK(sae::eval::meanMaxCosineSimilarity(truth, learned) ==
        Approx((1.0 + 1.0 / std::sqrt(2.0)) / 2.0));
  CHECK_THROWS_AS(sae::eval::meanMaxCosineSimilarity(truth, Mat::Zero(2, 3)), sae::ConfigError);
}

TEST_CASE("SyntheticFeatures: unit directions, sparse firing, deterministic", "[eval][synthetic]") {
  sae::eval::SyntheticOptions o;
  o.d_in = 8;
  o.n_features = 32;
  o.expected_active = 2;
  o.noise = 0;
  o.min_magnitude = 1;
  o.max_magnitude = 1;
  sae::eval::SyntheticFeatures<double> a(o, 1), b(o, 1), c(o, 2);
  for (Index i = 0; i < 32; ++i) CHECK(a.directions().row(i).norm() == Approx(1.0));
  const Mat xa = a.sample(2000), xb = b.sample(2000), xc = c.sample(2000);
  CHECK(xa == xb);
  CHECK(xa != xc);
  // With magnitude 1 and no noise, each row is a 0/1 combination of directions: recover the
  // number active by least squares on the 32 directions is not unique (32 > 8), so check the
  // mean squared norm instead: E||x||^2 = E[#active] + cross terms with mean 0 = 2.
  CHECK(xa.rowwise().squaredNorm().mean() == Approx(2.0).epsilon(0.1));
  o.expected_active = 0;
  CHECK_THROWS_AS(sae::eval::SyntheticFeatures<double>(o, 1), sae::ConfigError);
}

TEST_CASE("DeadLatentTracker marks latents dead after a window without firing", "[train][dead]") {
  sae::train::DeadLatentTracker t(3, 2);
  sae::SparseCodes<float> c;
  c.d_sae = 3;
  c.indices.resize(1, 1);
  c.values.resize(1, 1);
  c.indices << 0;
  c.values << 1.0f;
  t.update(c);  // steps since: 0, 1, 1
  CHECK(t.deadCount() == 0);
  c.indices << 1;
  t.update(c);  // 1, 0, 2
  CHECK(t.mask() == (sae::LatentMask(3) << 0, 0, 1).finished());
  c.values << 0.0f;  // a zero activation is not firing
  t.update(c);       // 2, 1, 3
  CHECK(t.mask() == (sae::LatentMask(3) << 1, 0, 1).finished());
  CHECK(t.deadFraction() == Approx(2.0 / 3.0));
  CHECK_THROWS_AS(sae::train::DeadLatentTracker(3, 0), sae::ConfigError);
  sae::SparseCodes<float> wrong = c;
  wrong.d_sae = 4;
  CHECK_THROWS_AS(t.update(wrong), sae::ConfigError);
}

}  // namespace sae_test_eval
