// Tests of the optimizer component: Adam / AdamW, gradient clipping, learning-rate and
// coefficient schedules.
//
// Expected values come from an independent plain-double implementation of the textbook
// formulas (written below, not shared with the library) or were worked out by hand; the
// working is in the comments.
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include <sae/core/config.hpp>
#include <sae/core/parameters.hpp>
#include <sae/core/rng.hpp>
#include <sae/optim/adam.hpp>
#include <sae/optim/clip.hpp>
#include <sae/optim/schedule.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_optim {

using sae::Index;
using sae::Layout;

namespace {

/// Absolute tolerance of a parameter / moment compared with the double reference.
template <typename T>
constexpr double tolerance() {
  return std::is_same_v<T, float> ? 2e-6 : 1e-13;
}

/// A small set with a column-major matrix, a vector and a row-major matrix.
template <typename T>
sae::ParameterSet<T> smallSet() {
  sae::ParameterSet<T> s;
  s.add("W_enc", {3, 4}, Layout::ColMajor);
  s.add("b_enc", {4});
  s.add("W_dec", {4, 3}, Layout::RowMajor);
  return s;
}

/// A set of 150250 scalars: large enough for the parallel paths.
template <typename T>
sae::ParameterSet<T> largeSet() {
  sae::ParameterSet<T> s;
  s.add("W_enc", {300, 250}, Layout::ColMajor);
  s.add("b_enc", {250});
  s.add("W_dec", {250, 300}, Layout::RowMajor);
  return s;
}

/// A one-scalar set.
template <typename T>
sae::ParameterSet<T> scalarSet(T value) {
  sae::ParameterSet<T> s;
  s.add("p", {1});
  s.flat()[0] = value;
  return s;
}

/// Adam/AdamW exactly as written in the papers and torch docs, in plain double.
struct ReferenceAdam {
  double lr, beta1, beta2, eps, weight_decay;
  std::vector<double> p, m, v;
  int t = 0;

  void step(const std::vector<double>& g) {
    ++t;
    for (std::size_t i = 0; i < p.size(); ++i) {
      p[i] *= 1.0 - lr * weight_decay;
      m[i] = beta1 * m[i] + (1.0 - beta1) * g[i];
      v[i] = beta2 * v[i] + (1.0 - beta2) * g[i] * g[i];
      const double m_hat = m[i] / (1.0 - std::pow(beta1, t));
      const double v_hat = v[i] / (1.0 - std::pow(beta2, t));
      p[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
    }
  }
};

/// Gradient of element i at step k: varied signs and sizes, and some exact zeros.
double testGradient(std::size_t i, int k) {
  if (i % 5 == 0 && k % 2 == 0) return 0.0;
  return std::sin(0.7 * static_cast<double>(i) + 1.3 * k) * (1.0 + 0.1 * static_cast<double>(i));
}

template <typename T>
bool bitwiseEqual(const sae::ParameterSet<T>& a, const sae::ParameterSet<T>& b) {
  return a.size() == b.size() &&
         std::memcmp(a.flat().data(), b.flat().data(), sizeof(T) * a.size()) == 0;
}

}  // namespace

// ------------------------------------------------------------------------------------- Adam

TEMPLATE_TEST_CASE("Adam and AdamW follow the formula over several steps", "[optim][Adam]", float,
                   double) {
  using T = TestType;
  for (const double weight_decay : {0.0, 0.05}) {
    CAPTURE(weight_decay);
    sae::AdamOptions opt;
    opt.lr = 1e-2;
    opt.beta1 = 0.8;  // not the defaults, and several steps, so that both betas matter
    opt.beta2 = 0.9;
    opt.eps = 1e-3;  // large enough to change the result
    opt.weight_decay = weight_decay;

    auto params = smallSet<T>();
    const auto n = static_cast<std::size_t>(params.size());
    ReferenceAdam ref{opt.lr, opt.beta1, opt.beta2, opt.eps, opt.weight_decay, {}, {}, {}};
    ref.m.assign(n, 0.0);
    ref.v.assign(n, 0.0);
    for (std::size_t i = 0; i < n; ++i) {
      // Values exactly representable in float, so both precisions start from the same point.
      const double p0 = 0.25 * static_cast<double>(i % 7) - 0.75;
      params.flat()[static_cast<Index>(i)] = static_cast<T>(p0);
      ref.p.push_back(p0);
    }

    sae::Adam<T> adam(params, opt);
    auto grads = params.zerosLike();
    for (int k = 0; k < 6; ++k) {
      std::vector<double> g(n);
      for (std::size_t i = 0; i < n; ++i) {
        // Round through T so that the reference sees the gradient the optimizer sees.
        const T gi = static_cast<T>(testGradient(i, k));
        grads.flat()[static_cast<Index>(i)] = gi;
        g[i] = static_cast<double>(gi);
      }
      adam.step(params, grads);
      ref.step(g);
    }

    CHECK(adam.stepCount() == 6);
    for (std::size_t i = 0; i < n; ++i) {
      const auto ii = static_cast<Index>(i);
      CAPTURE(i);
      CHECK(static_cast<double>(params.flat()[ii]) == Approx(ref.p[i]).margin(tolerance<T>()));
      CHECK(static_cast<double>(adam.firstMoment().flat()[ii]) ==
            Approx(ref.m[i]).margin(tolerance<T>()));
      CHECK(static_cast<double>(adam.secondMoment().flat()[ii]) ==
            Approx(ref.v[i]).margin(tolerance<T>()));
    }
  }
}

TEMPLATE_TEST_CASE("Adam on one scalar, worked by hand", "[optim][Adam]", float, double) {
  using T = TestType;
  // beta1 = beta2 = 0.5, lr = 0.1, eps = 0, p0 = 1, gradients 1, -1, 2.
  //  t=1: m = 0.5, v = 0.5, 1-b^1 = 0.5: m_hat = 1, v_hat = 1        -> p = 1 - 0.1 = 0.9
  //  t=2: m = 0.25 - 0.5 = -0.25, v = 0.25 + 0.5 = 0.75, 1-b^2 = 0.75:
  //       m_hat = -1/3, v_hat = 1                                     -> p = 0.9 + 0.1/3
  //  t=3: m = -0.125 + 1 = 0.875, v = 0.375 + 2 = 2.375, 1-b^3 = 0.875:
  //       m_hat = 1, v_hat = 19/7                  -> p = 0.9 + 0.1/3 - 0.1 sqrt(7/19)
  //                                                     = 0.93333333 - 0.06069770 = 0.87263564
  sae::AdamOptions opt;
  opt.lr = 0.1;
  opt.beta1 = 0.5;
  opt.beta2 = 0.5;
  opt.eps = 0.0;
  auto p = scalarSet<T>(T(1));
  auto g = scalarSet<T>(T(0));
  sae::Adam<T> adam(p, opt);
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-15;

  g.flat()[0] = T(1);
  adam.step(p, g);
  CHECK(static_cast<double>(p.flat()[0]) == Approx(0.9).margin(tol));
  CHECK(static_cast<double>(adam.firstMoment().flat()[0]) == Approx(0.5).margin(tol));
  CHECK(static_cast<double>(adam.secondMoment().flat()[0]) == Approx(0.5).margin(tol));

  g.flat()[0] = T(-1);
  adam.step(p, g);
  CHECK(static_cast<double>(p.flat()[0]) == Approx(0.9333333333333333).margin(tol));
  CHECK(static_cast<double>(adam.firstMoment().flat()[0]) == Approx(-0.25).margin(tol));
  CHECK(static_cast<double>(adam.secondMoment().flat()[0]) == Approx(0.75).margin(tol));

  g.flat()[0] = T(2);
  adam.step(p, g);
  CHECK(static_cast<double>(p.flat()[0]) == Approx(0.8726356354666449).margin(tol));
  CHECK(adam.stepCount() == 3);
}

TEST_CASE("Adam adds eps after the bias correction", "[optim][Adam]") {
  // The fixtures' settings: lr = 1e-3, beta1 = 0.9, beta2 = 0.99, eps = 1e-3; p = 0.5,
  // g = -0.002, t = 1. m_hat = g, v_hat = g^2, so p = 0.5 + 1e-3 * 0.002 / (0.002 + 0.001)
  // = 0.5 + 6.666...e-4. (eps added to the uncorrected sqrt(v) = 0.0002 would instead give
  // 0.5 + 1e-3 * 0.0002 / 0.0012 = 0.5 + 1.666...e-4.)
  sae::AdamOptions opt;
  opt.lr = 1e-3;
  opt.beta1 = 0.9;
  opt.beta2 = 0.99;
  opt.eps = 1e-3;
  auto p = scalarSet<double>(0.5);
  auto g = scalarSet<double>(-0.002);
  sae::Adam<double> adam(p, opt);
  adam.step(p, g);
  CHECK(p.flat()[0] == Approx(0.5006666666666667).margin(1e-15));
}

TEST_CASE("AdamW decay is decoupled from the gradient", "[optim][Adam]") {
  SECTION("zero gradient: only the decay acts") {
    // lr = 0.1, weight_decay = 0.5: each step multiplies p by 1 - 0.05 = 0.95; m = v = 0 so
    // the Adam term is 0 / (0 + eps) = 0. p: 2 -> 1.9 -> 1.805.
    sae::AdamOptions opt;
    opt.lr = 0.1;
    opt.weight_decay = 0.5;
    auto p = scalarSet<double>(2.0);
    auto g = scalarSet<double>(0.0);
    sae::Adam<double> adam(p, opt);
    adam.step(p, g);
    CHECK(p.flat()[0] == Approx(1.9).margin(1e-15));
    adam.step(p, g);
    CHECK(p.flat()[0] == Approx(1.805).margin(1e-15));
  }
  SECTION("decay, then the normalised step") {
    // lr = 0.1, weight_decay = 0.1, eps = 0, p = 1, g = 0.5 at t = 1:
    // p = 1 * (1 - 0.01) - 0.1 * 0.5 / |0.5| = 0.99 - 0.1 = 0.89.
    // (Adam with L2 decay would use g + 0.1 p = 0.6 and give 1 - 0.1 = 0.9.)
    sae::AdamOptions opt;
    opt.lr = 0.1;
    opt.eps = 0.0;
    opt.weight_decay = 0.1;
    auto p = scalarSet<double>(1.0);
    auto g = scalarSet<double>(0.5);
    sae::Adam<double> adam(p, opt);
    adam.step(p, g);
    CHECK(p.flat()[0] == Approx(0.89).margin(1e-15));
  }
}

TEST_CASE("Adam::step with an explicit learning rate", "[optim][Adam]") {
  // eps = 0, t = 1: p = 1 - lr * g / |g| = 1 - 0.5 with the explicit lr, not options().lr.
  sae::AdamOptions opt;
  opt.lr = 0.1;
  opt.eps = 0.0;
  auto p = scalarSet<double>(1.0);
  auto g = scalarSet<double>(3.0);
  sae::Adam<double> adam(p, opt);
  adam.step(p, g, 0.5);
  CHECK(p.flat()[0] == Approx(0.5).margin(1e-15));
  CHECK(adam.options().lr == 0.1);
  CHECK_THROWS_WITH(adam.step(p, g, -0.5), "Adam::step: lr must be finite and >= 0, found -0.5");
  CHECK_THROWS_AS(adam.step(p, g, std::numeric_limits<double>::infinity()), sae::ConfigError);
  CHECK(adam.stepCount() == 1);
}

TEST_CASE("Adam rejects mismatched layouts", "[optim][Adam]") {
  auto params = smallSet<double>();
  sae::Adam<double> adam(params, sae::AdamOptions{});

  sae::ParameterSet<double> wrong_shape;
  wrong_shape.add("W_enc", {3, 5}, Layout::ColMajor);
  wrong_shape.add("b_enc", {4});
  wrong_shape.add("W_dec", {4, 3}, Layout::RowMajor);
  CHECK_THROWS_AS(adam.step(params, wrong_shape), sae::ConfigError);
  CHECK_THROWS_WITH(adam.step(params, wrong_shape),
                    "Adam::step: the layout of the gradients does not match the optimizer's: "
                    "tensor 0: expected 'W_enc' [3, 4] column-major, found 'W_enc' [3, 5] "
                    "column-major");

  sae::ParameterSet<double> wrong_order;
  wrong_order.add("W_enc", {3, 4}, Layout::RowMajor);
  wrong_order.add("b_enc", {4});
  wrong_order.add("W_dec", {4, 3}, Layout::RowMajor);
  CHECK_THROWS_WITH(adam.step(wrong_order, params.zerosLike()),
                    "Adam::step: the layout of the parameters does not match the optimizer's: "
                    "tensor 0: expected 'W_enc' [3, 4] column-major, found 'W_enc' [3, 4] "
                    "row-major");

  sae::ParameterSet<double> fewer;
  fewer.add("W_enc", {3, 4}, Layout::ColMajor);
  fewer.add("b_enc", {4});
  CHECK_THROWS_WITH(adam.step(params, fewer),
                    "Adam::step: the layout of the gradients does not match the optimizer's: "
                    "expected 3 tensors, found 2");

  CHECK_THROWS_WITH(adam.setState(1, params, fewer),
                    "Adam::setState: the layout of the second moment does not match the "
                    "optimizer's: expected 3 tensors, found 2");
  // Nothing changed on failure.
  CHECK(adam.stepCount() == 0);
}

TEST_CASE("AdamOptions are validated", "[optim][Adam]") {
  const auto params = smallSet<float>();
  const auto make = [&](auto edit) {
    sae::AdamOptions o;
    edit(o);
    return sae::Adam<float>(params, o);
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(make([](sae::AdamOptions& o) { o.lr = -1.0; }),
                    "AdamOptions: lr must be finite and >= 0, found -1");
  CHECK_THROWS_WITH(make([](sae::AdamOptions& o) { o.beta1 = 1.0; }),
                    "AdamOptions: beta1 must be in [0, 1), found 1");
  CHECK_THROWS_WITH(make([](sae::AdamOptions& o) { o.beta2 = -0.5; }),
                    "AdamOptions: beta2 must be in [0, 1), found -0.5");
  CHECK_THROWS_WITH(make([&](sae::AdamOptions& o) { o.eps = nan; }),
                    "AdamOptions: eps must be finite and >= 0, found nan");
  CHECK_THROWS_WITH(make([&](sae::AdamOptions& o) { o.weight_decay = inf; }),
                    "AdamOptions: weight_decay must be finite and >= 0, found inf");
  CHECK_THROWS_AS(make([&](sae::AdamOptions& o) { o.lr = nan; }), sae::ConfigError);
  CHECK_THROWS_AS(make([&](sae::AdamOptions& o) { o.beta2 = 1.5; }), sae::ConfigError);
  CHECK_NOTHROW(make([](sae::AdamOptions& o) {
    o.lr = 0.0;
    o.beta1 = 0.0;
    o.eps = 0.0;
  }));

  sae::Adam<float> adam(params, sae::AdamOptions{});
  sae::AdamOptions bad;
  bad.beta1 = 2.0;
  CHECK_THROWS_AS(adam.setOptions(bad), sae::ConfigError);
  CHECK(adam.options().beta1 == 0.9);  // unchanged
  sae::AdamOptions good;
  good.lr = 1e-3;
  adam.setOptions(good);
  CHECK(adam.options().lr == 1e-3);
}

TEST_CASE("Adam state round-trips through setState", "[optim][Adam]") {
  auto params = smallSet<double>();
  for (Index i = 0; i < params.size(); ++i) params.flat()[i] = 0.1 * static_cast<double>(i);
  auto grads = params.zerosLike();
  sae::AdamOptions opt;
  opt.lr = 1e-2;
  sae::Adam<double> a(params, opt);
  for (int k = 0; k < 3; ++k) {
    for (Index i = 0; i < grads.size(); ++i)
      grads.flat()[i] = testGradient(static_cast<std::size_t>(i), k);
    a.step(params, grads);
  }

  sae::Adam<double> b(params, opt);
  b.setState(a.stepCount(), a.firstMoment(), a.secondMoment());
  CHECK(b.stepCount() == 3);
  auto params_b = params;
  for (Index i = 0; i < grads.size(); ++i)
    grads.flat()[i] = testGradient(static_cast<std::size_t>(i), 3);
  a.step(params, grads);
  b.step(params_b, grads);
  CHECK(bitwiseEqual(params, params_b));
  CHECK(bitwiseEqual(a.secondMoment(), b.secondMoment()));

  CHECK_THROWS_WITH(b.setState(-1, a.firstMoment(), a.secondMoment()),
                    "Adam::setState: the step count must be >= 0, found -1");
  auto negative_v = a.secondMoment();
  negative_v.flat()[2] = -1.0;
  CHECK_THROWS_WITH(b.setState(4, a.firstMoment(), negative_v),
                    "Adam::setState: the second moment must be finite and >= 0");
  auto nan_m = a.firstMoment();
  nan_m.flat()[0] = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH(b.setState(4, nan_m, a.secondMoment()),
                    "Adam::setState: the first moment has non-finite values");

  b.reset();
  CHECK(b.stepCount() == 0);
  CHECK(b.firstMoment().flat().isZero(0.0));
  CHECK(b.secondMoment().flat().isZero(0.0));
}

TEMPLATE_TEST_CASE("Adam and the gradient norm are bitwise identical for 1, 2 and 3 threads",
                   "[optim][Adam][clip][threads]", float, double) {
#if SAE_HAS_OPENMP
  using T = TestType;
  auto start = largeSet<T>();
  sae::Rng rng(1234);
  for (Index i = 0; i < start.size(); ++i) start.flat()[i] = static_cast<T>(rng.normal());
  std::vector<sae::ParameterSet<T>> grads;
  for (int k = 0; k < 3; ++k) {
    auto g = start.zerosLike();
    for (Index i = 0; i < g.size(); ++i) g.flat()[i] = static_cast<T>(0.01 * rng.normal());
    grads.push_back(g);
  }
  sae::AdamOptions opt;
  opt.weight_decay = 0.01;

  const int saved = omp_get_max_threads();
  const auto run = [&](int threads, double& norm) {
    omp_set_num_threads(threads);
    auto params = start;
    sae::Adam<T> adam(params, opt);
    for (auto g : grads) {
      norm = sae::clipGradNorm(g, 0.05);
      adam.step(params, g);
    }
    return params;
  };
  double norm1 = 0, norm2 = 0, norm3 = 0;
  const auto p1 = run(1, norm1);
  const auto p2 = run(2, norm2);
  const auto p3 = run(3, norm3);
  omp_set_num_threads(saved);

  CHECK(bitwiseEqual(p1, p2));
  CHECK(bitwiseEqual(p1, p3));
  CHECK(std::memcmp(&norm1, &norm2, sizeof(double)) == 0);
  CHECK(std::memcmp(&norm1, &norm3, sizeof(double)) == 0);
  CHECK_FALSE(bitwiseEqual(p1, start));
#else
  WARN("built without OpenMP: nothing to compare");
#endif
}

TEMPLATE_TEST_CASE("Adam with clipCoefficient folded in equals clipGradNorm then Adam",
                   "[optim][Adam][clip]", float, double) {
  using T = TestType;
  const auto start = largeSet<T>();
  sae::Rng rng(77);
  auto params0 = start;
  for (Index i = 0; i < params0.size(); ++i) params0.flat()[i] = static_cast<T>(rng.normal());
  auto g = start.zerosLike();
  for (Index i = 0; i < g.size(); ++i) g.flat()[i] = static_cast<T>(0.01 * rng.normal());
  const double norm = sae::globalGradNorm(g);
  for (const double max_norm : {0.5 * norm, 2.0 * norm}) {  // clipped, then not clipped
    auto p_ref = params0, p_fused = params0;
    sae::Adam<T> ref(p_ref), fused(p_fused);
    for (int step = 0; step < 3; ++step) {
      auto g_ref = g;
      const double n_ref = sae::clipGradNorm(g_ref, max_norm);
      ref.step(p_ref, g_ref, 1e-3);
      double n_fused = 0;
      const double coef = sae::clipCoefficient(g, max_norm, &n_fused);
      fused.step(p_fused, g, 1e-3, coef);
      CHECK(n_fused == n_ref);
      CHECK(coef ==
            (max_norm < norm ? Approx(max_norm / (norm + 1e-6)).epsilon(1e-12) : Approx(1.0)));
    }
    INFO("max_norm " << max_norm << " (norm " << norm << ")");
    if (max_norm > norm) {
      CHECK(bitwiseEqual(p_fused, p_ref));  // a scale of exactly 1
    } else {
      // The same update to rounding: each step moves a parameter by about lr.
      const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
      CHECK((p_fused.flat() - p_ref.flat()).cwiseAbs().maxCoeff() <= tol);
      CHECK_FALSE(bitwiseEqual(p_fused, params0));
    }
  }
  // The unscaled gradients are left as they were.
  auto g_copy = g;
  sae::clipCoefficient(g_copy, 1e-9);
  CHECK(bitwiseEqual(g_copy, g));
  sae::Adam<T> adam(params0);
  auto p = params0;
  CHECK_THROWS_WITH(adam.step(p, g, 1e-3, -1.0),
                    "Adam::step: grad_scale must be finite and >= 0, found -1");
  CHECK_THROWS_AS(sae::clipCoefficient(g, 0.0), sae::ConfigError);
}

// ------------------------------------------------------------------------------- clipping

namespace {

/// Gradients {3, 4} and {12}: global norm sqrt(9 + 16 + 144) = 13.
template <typename T>
sae::ParameterSet<T> norm13() {
  sae::ParameterSet<T> g;
  g.add("a", {1, 2});
  g.add("b", {1});
  g.flat()[0] = T(3);
  g.flat()[1] = T(4);
  g.flat()[2] = T(12);
  return g;
}

}  // namespace

TEMPLATE_TEST_CASE("globalGradNorm is one L2 norm over all tensors", "[optim][clip]", float,
                   double) {
  using T = TestType;
  // Per-tensor norms would be 5 and 12; the global norm is 13.
  CHECK(sae::globalGradNorm(norm13<T>()) == 13.0);

  // Across many chunks: 150250 ones sum exactly, so the norm is the correctly rounded
  // sqrt(150250).
  auto ones = largeSet<T>();
  ones.flat().setOnes();
  CHECK(sae::globalGradNorm(ones) == std::sqrt(150250.0));
  // 0.5^2 = 0.25 summed 150250 times is 37562.5, exact in double.
  ones.flat().setConstant(T(-0.5));
  CHECK(sae::globalGradNorm(ones) == std::sqrt(37562.5));

  CHECK(sae::globalGradNorm(sae::ParameterSet<T>{}) == 0.0);
}

TEMPLATE_TEST_CASE("clipGradNorm scales only when max_norm / (N + 1e-6) < 1", "[optim][clip]",
                   float, double) {
  using T = TestType;
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-15;

  SECTION("c < 1: every gradient is scaled by c") {
    // max_norm = 1: c = 1 / (13 + 1e-6); returns 13.
    auto g = norm13<T>();
    CHECK(sae::clipGradNorm(g, 1.0) == 13.0);
    const double c = 1.0 / (13.0 + 1e-6);
    CHECK(static_cast<double>(g.flat()[0]) == Approx(3.0 * c).margin(tol));
    CHECK(static_cast<double>(g.flat()[1]) == Approx(4.0 * c).margin(tol));
    CHECK(static_cast<double>(g.flat()[2]) == Approx(12.0 * c).margin(tol));
    CHECK(sae::globalGradNorm(g) == Approx(1.0).margin(1e-6));
  }
  SECTION("c >= 1: nothing changes") {
    auto g = norm13<T>();
    CHECK(sae::clipGradNorm(g, 20.0) == 13.0);
    CHECK(bitwiseEqual(g, norm13<T>()));
  }
  SECTION("the 1e-6 of torch") {
    // max_norm = N = 13: c = 13 / 13.000001 = 0.99999992 < 1, so torch still scales:
    // 3 -> 3 * 13 / (13 + 1e-6) = 2.99999976923...
    auto g = norm13<T>();
    sae::clipGradNorm(g, 13.0);
    CHECK(static_cast<double>(g.flat()[0]) == Approx(2.9999997692307874).margin(tol));
    CHECK(static_cast<double>(g.flat()[0]) < 3.0);
    // max_norm = N + 1e-6: c = 1 exactly, not < 1: unchanged.
    auto h = norm13<T>();
    sae::clipGradNorm(h, 13.0 + 1e-6);
    CHECK(bitwiseEqual(h, norm13<T>()));
  }
}

TEMPLATE_TEST_CASE("clipGradNorm rejects non-finite gradients and bad max_norm", "[optim][clip]",
                   float, double) {
  using T = TestType;
  auto g = norm13<T>();
  g.flat()[2] = std::numeric_limits<T>::quiet_NaN();
  CHECK(std::isnan(sae::globalGradNorm(g)));
  CHECK_THROWS_AS(sae::clipGradNorm(g, 1.0), sae::NumericError);
  CHECK_THROWS_WITH(sae::clipGradNorm(g, 1.0),
                    "clipGradNorm: the global gradient norm is NaN: the gradient of 'b' is NaN "
                    "at flat index 0");

  auto h = norm13<T>();
  h.flat()[1] = -std::numeric_limits<T>::infinity();
  CHECK_THROWS_WITH(sae::clipGradNorm(h, 1.0),
                    "clipGradNorm: the global gradient norm is infinite: the gradient of 'a' is "
                    "-infinity at flat index 1");
  CHECK(std::isinf(static_cast<double>(h.flat()[1])));  // left unchanged

  auto ok = norm13<T>();
  CHECK_THROWS_WITH(sae::clipGradNorm(ok, 0.0),
                    "clipGradNorm: max_norm must be finite and > 0, found 0");
  CHECK_THROWS_AS(sae::clipGradNorm(ok, -1.0), sae::ConfigError);
  CHECK_THROWS_AS(sae::clipGradNorm(ok, std::numeric_limits<double>::quiet_NaN()),
                  sae::ConfigError);
  CHECK_THROWS_AS(sae::clipGradNorm(ok, std::numeric_limits<double>::infinity()), sae::ConfigError);
  CHECK(bitwiseEqual(ok, norm13<T>()));
}

TEST_CASE("clipGradNorm in double overflow reports overflow", "[optim][clip]") {
  // 1e200^2 overflows the double sum although every gradient is finite.
  auto g = scalarSet<double>(1e200);
  CHECK_THROWS_WITH(sae::clipGradNorm(g, 1.0),
                    "clipGradNorm: the global gradient norm is infinite: the sum of squared "
                    "gradients overflowed");
}

// ------------------------------------------------------------------------------- schedules

TEST_CASE("parseLrDecay", "[optim][schedule]") {
  CHECK(sae::parseLrDecay("constant") == sae::LrDecay::Constant);
  CHECK(sae::parseLrDecay("cosine") == sae::LrDecay::Cosine);
  CHECK(sae::parseLrDecay("linear") == sae::LrDecay::Linear);
  CHECK(sae::parseLrDecay("CosineAnnealing") == sae::LrDecay::Cosine);
  CHECK(sae::parseLrDecay("Constant") == sae::LrDecay::Constant);
  CHECK_THROWS_WITH(sae::parseLrDecay("exponential"),
                    "unknown learning-rate decay 'exponential' (valid: constant, cosine, linear; "
                    "SAELens's cosineannealing is accepted for cosine)");
  CHECK_THROWS_AS(sae::parseLrDecay(""), sae::ConfigError);
  for (auto d : {sae::LrDecay::Constant, sae::LrDecay::Cosine, sae::LrDecay::Linear})
    CHECK(sae::parseLrDecay(sae::lrDecayName(d)) == d);
}

TEST_CASE("LrSchedule warm-up and constant", "[optim][schedule]") {
  sae::LrSchedule s;
  s.lr = 1.0;
  s.warmup_steps = 4;
  s.total_steps = 10;
  // SAELens warm-up is LinearLR(start 1/W, end 1, total_iters W-1): (t + 1) / W.
  CHECK(s.lrAt(0) == Approx(0.25));
  CHECK(s.lrAt(1) == Approx(0.5));
  CHECK(s.lrAt(2) == Approx(0.75));
  CHECK(s.lrAt(3) == Approx(1.0));  // last warm-up step already has the full lr
  CHECK(s.lrAt(4) == 1.0);
  CHECK(s.lrAt(9) == 1.0);
  CHECK(s.lrAt(50) == 1.0);

  s.warmup_steps = 1;  // W = 1: factor 1 at once
  CHECK(s.lrAt(0) == Approx(1.0));
  s.warmup_steps = 0;
  CHECK(s.lrAt(0) == 1.0);
}

TEST_CASE("LrSchedule constant with a decay phase", "[optim][schedule]") {
  // lr = 1, W = 2, T = 10, D = 4: decay phase starts at t = 10 - 4 = 6 from lr (constant ignores
  // lr_end), lr * (1 - i/4): t=6 -> 1, t=7 -> 0.75, t=8 -> 0.5, t=9 -> 0.25, t=10 -> 0.
  sae::LrSchedule s;
  s.lr = 1.0;
  s.warmup_steps = 2;
  s.total_steps = 10;
  s.decay_steps = 4;
  s.lr_end = 0.3;  // ignored by constant
  CHECK(s.lrAt(0) == Approx(0.5));
  CHECK(s.lrAt(1) == Approx(1.0));
  CHECK(s.lrAt(5) == 1.0);
  CHECK(s.lrAt(6) == Approx(1.0));
  CHECK(s.lrAt(7) == Approx(0.75));
  CHECK(s.lrAt(8) == Approx(0.5));
  CHECK(s.lrAt(9) == Approx(0.25));
  CHECK(s.lrAt(10) == Approx(0.0).margin(1e-15));
  CHECK(s.lrAt(20) == Approx(0.0).margin(1e-15));
}

TEST_CASE("LrSchedule cosine", "[optim][schedule]") {
  SECTION("default lr_end, no decay phase") {
    // lr = 1, lr_end unset -> 0.1, W = 2, T = 12: cosine over M = 10 steps, e = t - 2.
    //  t=2 (e=0): 1
    //  t=7 (e=5): 0.1 + 0.9 (1 + cos(pi/2)) / 2 = 0.55
    //  t=11 (e=9, last step): 0.1 + 0.45 (1 + cos(0.9 pi)) = 0.1 + 0.45 * 0.0489434837
    //                         = 0.1220245677
    sae::LrSchedule s;
    s.lr = 1.0;
    s.warmup_steps = 2;
    s.total_steps = 12;
    s.decay = sae::LrDecay::Cosine;
    CHECK(s.lrEnd() == Approx(0.1));
    CHECK(s.lrAt(0) == Approx(0.5));
    CHECK(s.lrAt(1) == Approx(1.0));
    CHECK(s.lrAt(2) == Approx(1.0));
    CHECK(s.lrAt(7) == Approx(0.55));
    CHECK(s.lrAt(11) == Approx(0.1220245677));
    CHECK(s.lrAt(12) == Approx(0.1));  // e = M: cosine reaches lr_end
  }
  SECTION("explicit lr_end and a decay phase") {
    // lr = 2, lr_end = 0.5, W = 0, T = 10, D = 4: cosine over M = 6 steps, then linear from
    // 0.5 to 0 over 4 steps.
    //  t=0: 2;  t=3: 0.5 + 1.5 (1 + cos(pi/2)) / 2 = 1.25
    //  t=5: 0.5 + 0.75 (1 + cos(5 pi / 6)) = 0.5 + 0.75 * 0.1339745962 = 0.6004809472
    //  t=6: decay starts at lr_end = 0.5;  t=8: 0.25;  t=9: 0.125
    sae::LrSchedule s;
    s.lr = 2.0;
    s.total_steps = 10;
    s.decay = sae::LrDecay::Cosine;
    s.decay_steps = 4;
    s.lr_end = 0.5;
    CHECK(s.lrAt(0) == Approx(2.0));
    CHECK(s.lrAt(3) == Approx(1.25));
    CHECK(s.lrAt(5) == Approx(0.6004809472));
    CHECK(s.lrAt(6) == Approx(0.5));
    CHECK(s.lrAt(7) == Approx(0.375));
    CHECK(s.lrAt(8) == Approx(0.25));
    CHECK(s.lrAt(9) == Approx(0.125));
  }
}

TEST_CASE("LrSchedule linear", "[optim][schedule]") {
  SECTION("decay over every step after the warm-up") {
    // lr = 1, W = 2, T = 10, decay_steps 0 -> D = 8 starting at t = 2:
    // t=0 -> 0.5, t=1 -> 1, t=2 -> 1, t=6 -> 1 - 4/8 = 0.5, t=9 -> 1 - 7/8 = 0.125.
    sae::LrSchedule s;
    s.lr = 1.0;
    s.warmup_steps = 2;
    s.total_steps = 10;
    s.decay = sae::LrDecay::Linear;
    s.lr_end = 0.0;  // ignored
    CHECK(s.decayPhaseSteps() == 8);
    CHECK(s.lrAt(0) == Approx(0.5));
    CHECK(s.lrAt(1) == Approx(1.0));
    CHECK(s.lrAt(2) == Approx(1.0));
    CHECK(s.lrAt(6) == Approx(0.5));
    CHECK(s.lrAt(9) == Approx(0.125));
  }
  SECTION("explicit decay_steps: held, then linear to 0") {
    // lr = 3, W = 0, T = 10, D = 4: 3 until t = 5, then 3 (1 - i/4): t=6 -> 3, t=8 -> 1.5.
    sae::LrSchedule s;
    s.lr = 3.0;
    s.total_steps = 10;
    s.decay = sae::LrDecay::Linear;
    s.decay_steps = 4;
    CHECK(s.lrAt(0) == 3.0);
    CHECK(s.lrAt(5) == 3.0);
    CHECK(s.lrAt(6) == Approx(3.0));
    CHECK(s.lrAt(8) == Approx(1.5));
    CHECK(s.lrAt(9) == Approx(0.75));
  }
}

TEST_CASE("LrSchedule validation", "[optim][schedule]") {
  sae::LrSchedule s;
  s.lr = 1.0;
  s.total_steps = 10;
  CHECK_NOTHROW(s.validate());
  CHECK_THROWS_WITH(s.lrAt(-1), "LrSchedule::lrAt: step must be >= 0, found -1");

  auto t = s;
  t.total_steps = 0;
  CHECK_THROWS_WITH(t.validate(), "LrSchedule: total_steps must be >= 1, found 0");
  t = s;
  t.lr = 0.0;
  CHECK_THROWS_WITH(t.validate(), "LrSchedule: lr must be finite and > 0, found 0");
  t = s;
  t.warmup_steps = 6;
  t.decay_steps = 5;
  CHECK_THROWS_WITH(t.validate(),
                    "LrSchedule: warmup_steps (6) + decay_steps (5) exceed total_steps (10)");
  CHECK_THROWS_AS(t.lrAt(0), sae::ConfigError);
  t = s;
  t.warmup_steps = -1;
  CHECK_THROWS_AS(t.validate(), sae::ConfigError);
  t = s;
  t.lr_end = -0.1;
  CHECK_THROWS_AS(t.validate(), sae::ConfigError);

  t = s;
  t.decay = sae::LrDecay::Cosine;
  t.warmup_steps = 5;
  t.decay_steps = 5;
  CHECK_THROWS_WITH(t.validate(),
                    "LrSchedule: cosine decay needs at least one step between the warm-up (5 "
                    "steps) and the decay phase (5 steps), total_steps is 10");
  t.decay_steps = 2;
  t.lr_end = 0.0;
  CHECK_THROWS_WITH(t.validate(),
                    "LrSchedule: decay_steps > 0 with lr_end = 0 would decay from 0 to 0");
  t.decay_steps = 0;
  CHECK_NOTHROW(t.validate());  // cosine to 0 without a decay phase is fine

  t = s;
  t.decay = sae::LrDecay::Linear;
  t.warmup_steps = 10;  // no step left to decay over: held at lr after the warm-up
  CHECK(t.lrAt(9) == Approx(1.0));
  CHECK(t.lrAt(10) == 1.0);
}

TEST_CASE("CoefficientWarmup", "[optim][schedule]") {
  // SAELens: value 0 at the first step, value * k / W after k scheduler steps.
  sae::CoefficientWarmup w{4};
  CHECK(w.scaleAt(0) == 0.0);
  CHECK(w.scaleAt(1) == 0.25);
  CHECK(w.scaleAt(3) == 0.75);
  CHECK(w.scaleAt(4) == 1.0);
  CHECK(w.scaleAt(1000) == 1.0);
  CHECK(w.valueAt(2.0, 2) == 1.0);
  CHECK(w.valueAt(2.0, 9) == 2.0);

  sae::CoefficientWarmup none;
  CHECK(none.scaleAt(0) == 1.0);
  CHECK(none.valueAt(5.0, 0) == 5.0);

  CHECK_THROWS_WITH(sae::CoefficientWarmup{-2}.validate(),
                    "CoefficientWarmup: warmup_steps must be >= 0, found -2");
  CHECK_THROWS_AS(w.scaleAt(-1), sae::ConfigError);
}

}  // namespace sae_test_optim
