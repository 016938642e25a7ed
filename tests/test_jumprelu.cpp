// JumpReLU SAE: initialisation and names, encode against its formula, the straight-through
// threshold gradient on hand-worked cases and against an independent dense recomputation,
// central finite differences of every ordinary gradient (step and tanh modes, with and without
// the pre-activation loss and dead latents, on the dense and sparse paths), agreement of the
// two paths, and reproducibility across runs and thread counts.
//
// Finite differences cannot see a pseudo-derivative: away from h = t the loss is locally
// constant in the threshold except through the pre-activation loss. So the threshold gradient
// is checked as (its finite difference) + (the straight-through part computed by hand).
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include <sae/sae.hpp>
#include <support/test_support.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_jumprelu {

namespace {

using sae::test::perturb;
using sae::test::randomBatch;

using sae::Index;
using Mat = sae::RowMatrix<double>;
using Vec = sae::Vector<double>;
using Mode = sae::SaeConfig::SparsityLossMode;

constexpr double kStep = 1e-5;
constexpr double kMargin = 1e-3;  // distance to h = t, threshold = 0 and the window edges

// The forward pass recomputed densely from the formulas (not from the implementation).
struct Reference {
  Mat h, f, y;
  Vec t, n;
};

Reference reference(const sae::JumpReLUSAE<double>& m, const Mat& x) {
  const auto& p = m.parameters();
  Reference r;
  Mat xc = x;
  if (m.config().apply_b_dec_to_input) xc = x.rowwise() - p.flat("b_dec").transpose();
  r.h = xc * Mat(p.colMajor("W_enc"));
  r.h.rowwise() += p.flat("b_enc").transpose();
  r.t = p.flat("threshold").cwiseMax(0.0);
  r.f = Mat::Zero(r.h.rows(), r.h.cols());
  for (Index b = 0; b < r.h.rows(); ++b)
    for (Index i = 0; i < r.h.cols(); ++i)
      if (r.h(b, i) > r.t[i]) r.f(b, i) = r.h(b, i);
  const Mat W_dec = p.rowMajor("W_dec");
  r.y = r.f * W_dec;
  r.y.rowwise() += p.flat("b_dec").transpose();
  r.n = W_dec.rowwise().norm();
  return r;
}

bool inWindow(double h, double t, double eps) {
  const double u = (h - t) / eps;
  return -0.5 < u && u < 0.5;
}

// The straight-through part of d loss / d threshold:
//   sum_b K((h - t) / ε) [ -(t / ε) d loss / d f_bi  -  (step) c / (B ε) ] for threshold_i > 0,
// with d loss / d f_bi = (2 / B) (y_b - x_b) . W_dec[i]  +  (tanh) (c / B) s n_i sech^2(s f_bi
// n_i).
Vec straightThroughGradient(const sae::JumpReLUSAE<double>& m, const Mat& x,
                            const sae::TrainOptions& opts) {
  const auto& cfg = m.config();
  const Reference r = reference(m, x);
  const Mat W_dec = m.parameters().rowMajor("W_dec");
  const auto theta = m.parameters().flat("threshold");
  const double B = double(x.rows());
  const double eps = cfg.jumprelu_bandwidth;
  const double c = cfg.l0_coefficient * opts.sparsity_scale;
  const double s = cfg.jumprelu_tanh_scale;
  const bool tanh = cfg.sparsity_loss_mode == Mode::Tanh;
  Vec g = Vec::Zero(cfg.d_sae);
  for (Index i = 0; i < cfg.d_sae; ++i) {
    if (!(theta[i] > 0)) continue;
    for (Index b = 0; b < x.rows(); ++b) {
      if (!inWindow(r.h(b, i), r.t[i], eps)) continue;
      double df = (2.0 / B) * (r.y.row(b) - x.row(b)).dot(W_dec.row(i));
      if (tanh) df += (c / B) * s * r.n[i] * (1.0 - std::pow(std::tanh(s * r.f(b, i) * r.n[i]), 2));
      g[i] += -(r.t[i] / eps) * df;
      if (!tanh) g[i] += -c / (B * eps);
    }
  }
  return g;
}

// Smallest distance to a discontinuity or kink: h = t, threshold = 0, |h - t| = ε/2.
double margin(const sae::JumpReLUSAE<double>& m, const Mat& x) {
  const Reference r = reference(m, x);
  const double eps = m.config().jumprelu_bandwidth;
  double out = m.parameters().flat("threshold").cwiseAbs().minCoeff();
  for (Index b = 0; b < r.h.rows(); ++b)
    for (Index i = 0; i < r.h.cols(); ++i) {
      const double d = std::abs(r.h(b, i) - r.t[i]);
      out = std::min({out, d, std::abs(d - eps / 2)});
    }
  return out;
}

// Entries (b, i) inside the window of a positive / of a non-positive threshold.
std::pair<Index, Index> windowEntries(const sae::JumpReLUSAE<double>& m, const Mat& x) {
  const Reference r = reference(m, x);
  const auto theta = m.parameters().flat("threshold");
  Index open = 0, closed = 0;
  for (Index b = 0; b < r.h.rows(); ++b)
    for (Index i = 0; i < r.h.cols(); ++i)
      if (inWindow(r.h(b, i), r.t[i], m.config().jumprelu_bandwidth))
        ++(theta[i] > 0 ? open : closed);
  return {open, closed};
}

sae::SaeConfig gradConfig(Mode mode, double c_pre, bool apply) {
  sae::SaeConfig cfg;
  cfg.d_in = 6;
  cfg.d_sae = 10;
  cfg.l0_coefficient = 0.8;
  cfg.jumprelu_bandwidth = 0.3;
  cfg.sparsity_loss_mode = mode;
  cfg.jumprelu_tanh_scale = 2.5;
  cfg.pre_act_loss_coefficient = c_pre;
  cfg.apply_b_dec_to_input = apply;
  return cfg;
}

// Perturbed parameters with each positive threshold just below its latent's largest
// pre-activation (so the window holds entries on both sides of t) and every fourth threshold
// negative; redrawn until every entry is kMargin away from the discontinuities.
sae::JumpReLUSAE<double> makeModel(const sae::SaeConfig& cfg, const Mat& x) {
  for (std::uint64_t seed = 1; seed < 500; ++seed) {
    sae::JumpReLUSAE<double> m(cfg, seed);
    perturb(m, 1000 + seed, 0.3);
    const Reference r = reference(m, x);
    auto theta = m.parameters().flat("threshold");
    sae::Rng rng(2000 + seed);
    for (Index i = 0; i < cfg.d_sae; ++i) {
      theta[i] = i % 4 == 3 ? -0.05 - 0.1 * rng.uniform(0, 1)
                            : r.h.col(i).maxCoeff() - rng.uniform(0.02, 0.12);
    }
    if (margin(m, x) > kMargin) return m;
  }
  FAIL("no parameter draw away from the discontinuities");
  return sae::JumpReLUSAE<double>(cfg);
}

void checkGradients(sae::JumpReLUSAE<double>& m, const Mat& x, const sae::TrainOptions& opts,
                    bool sparse) {
  REQUIRE(margin(m, x) > kMargin);
  sae::JumpReLUSAE<double>::Workspace ws;
  ws.sparse_threshold = sparse ? 1.1 : 0.0;
  auto grads = m.makeGradients();
  m.backward(x, grads, opts, ws);
  REQUIRE(ws.used_sparse == sparse);
  const Vec straight = straightThroughGradient(m, x, opts);
  auto& params = m.parameters();
  for (const auto& entry : params.entries()) {
    auto value = params.flat(entry.name);
    const auto analytic = grads.flat(entry.name);
    const bool is_threshold = entry.name == "threshold";
    double worst = 0;
    for (Index i = 0; i < value.size(); ++i) {
      const double saved = value[i];
      value[i] = saved + kStep;
      const double up = m.loss(x, opts).total();
      value[i] = saved - kStep;
      const double down = m.loss(x, opts).total();
      value[i] = saved;
      double numeric = (up - down) / (2 * kStep);
      if (is_threshold) numeric += straight[i];
      const double err = std::abs(numeric - analytic[i]) /
                         std::max({std::abs(numeric), std::abs(analytic[i]), 1e-3});
      worst = std::max(worst, err);
    }
    INFO("parameter " << entry.name);
    CHECK(worst < 1e-6);
    CHECK(analytic.cwiseAbs().maxCoeff() > 1e-6);
  }
  // A non-positive threshold receives no gradient, whatever its window holds.
  for (Index i = 0; i < m.dSae(); ++i)
    if (!(params.flat("threshold")[i] > 0)) CHECK(grads.flat("threshold")[i] == 0.0);
}

// One latent reading one input: W_enc = 1, b_enc = 0, b_dec = 0, W_dec = 2 (n = 2), ε = 0.2.
sae::JumpReLUSAE<double> scalarModel(Mode mode, double theta, double c_pre) {
  sae::SaeConfig cfg;
  cfg.d_in = 1;
  cfg.d_sae = 1;
  cfg.l0_coefficient = 1.0;
  cfg.jumprelu_bandwidth = 0.2;
  cfg.sparsity_loss_mode = mode;
  cfg.jumprelu_tanh_scale = 4.0;
  cfg.pre_act_loss_coefficient = c_pre;
  sae::JumpReLUSAE<double> m(cfg);
  m.parameters().flat("W_enc")[0] = 1.0;
  m.parameters().flat("W_dec")[0] = 2.0;
  m.parameters().flat("threshold")[0] = theta;
  return m;
}

}  // namespace

TEST_CASE("JumpReLU: names, shapes and SAELens initialisation", "[JumpReLUSAE]") {
  sae::SaeConfig cfg;
  cfg.d_in = 16;
  cfg.d_sae = 64;
  cfg.jumprelu_init_threshold = 0.03;
  const sae::JumpReLUSAE<double> m(cfg, 5);
  CHECK(std::string(sae::JumpReLUSAE<float>::architecture()) == "jumprelu");
  std::vector<std::string> names;
  for (const auto& e : m.parameters().entries())
    names.push_back(e.name + sae::ParameterSet<double>::shapeString(e));
  CHECK(names == std::vector<std::string>{"W_enc[16, 64]", "b_enc[64]", "W_dec[64, 16]",
                                          "b_dec[16]", "threshold[64]"});
  const auto& p = m.parameters();
  const auto W_dec = p.rowMajor("W_dec");
  for (Index i = 0; i < 64; ++i) CHECK(W_dec.row(i).norm() == Approx(0.1).epsilon(1e-12));
  CHECK(Mat(p.colMajor("W_enc")) == Mat(W_dec.transpose()));
  CHECK(p.flat("b_enc").cwiseAbs().maxCoeff() == 0.0);
  CHECK(p.flat("b_dec").cwiseAbs().maxCoeff() == 0.0);
  CHECK(p.flat("threshold").minCoeff() == 0.03);
  CHECK(p.flat("threshold").maxCoeff() == 0.03);
  // Without a seed every parameter is zero (to be loaded).
  CHECK(sae::JumpReLUSAE<float>(cfg).parameters().flat().cwiseAbs().maxCoeff() == 0.0f);
}

TEST_CASE("JumpReLU: encode is relu(h) 1[h > relu(threshold)]; training agrees with inference",
          "[JumpReLUSAE]") {
  sae::SaeConfig cfg;
  cfg.d_in = 16;
  cfg.d_sae = 64;
  cfg.pre_act_loss_coefficient = 0.1;
  sae::JumpReLUSAE<double> m(cfg, 3);
  perturb(m, 4, 0.05);
  auto theta = m.parameters().flat("threshold");
  for (Index i = 0; i < 64; ++i) theta[i] = 0.15 * double(i % 5) - 0.2;  // -0.2 .. 0.4
  const Mat x = randomBatch<double>(40, 16, 9);
  const Reference r = reference(m, x);
  // f = relu(h) 1[h > relu(threshold)], SAELens's inference form, elementwise.
  Mat want = Mat::Zero(40, 64);
  for (Index b = 0; b < 40; ++b)
    for (Index i = 0; i < 64; ++i)
      want(b, i) = r.h(b, i) > std::max(theta[i], 0.0) ? std::max(r.h(b, i), 0.0) : 0.0;
  const auto codes = m.encode(x);
  CHECK((codes.values - want).cwiseAbs().maxCoeff() < 1e-12);
  CHECK(((codes.values.array() != 0) == (want.array() != 0)).all());
  CHECK(codes.l0() > 1.0);
  CHECK(codes.l0() < 40.0);
  const Mat y = m.decode(codes);
  CHECK((y - r.y).cwiseAbs().maxCoeff() < 1e-12);
  CHECK((m.forward(x) - y).cwiseAbs().maxCoeff() == 0.0);

  sae::LatentMask dead = sae::LatentMask::Zero(64);
  for (Index i = 0; i < 64; i += 3) dead[i] = 1;
  sae::TrainOptions opts;
  opts.dead_mask = &dead;
  opts.sparsity_scale = 0.5;
  sae::JumpReLUSAE<double>::Workspace ws;
  auto grads = m.makeGradients();
  const auto terms = m.backward(x, grads, opts, ws);
  CHECK((ws.codes.values - codes.values).cwiseAbs().maxCoeff() < 1e-12);
  CHECK((ws.reconstruction - y).cwiseAbs().maxCoeff() < 1e-12);
  REQUIRE(terms.terms().size() == 3);
  CHECK(std::string(terms.terms()[0].first) == "mse_loss");
  CHECK(std::string(terms.terms()[1].first) == "l0_loss");
  CHECK(std::string(terms.terms()[2].first) == "pre_act_loss");
  CHECK(terms["mse_loss"] == Approx((y - x).rowwise().squaredNorm().mean()).epsilon(1e-12));
  // Step mode: l0_coefficient (1) * warm-up scale * mean count of h > t.
  CHECK(terms["l0_loss"] == Approx(0.5 * codes.l0()).epsilon(1e-12));
  double pre = 0;
  for (Index b = 0; b < 40; ++b)
    for (Index i = 0; i < 64; i += 3) pre += std::max(r.t[i] - r.h(b, i), 0.0) * r.n[i];
  CHECK(pre > 0);
  CHECK(terms["pre_act_loss"] == Approx(0.1 * pre / 40).epsilon(1e-12));
  // The term is present (and zero) with no dead latent, absent with a zero coefficient.
  CHECK(m.loss(x)["pre_act_loss"] == 0.0);
  cfg.pre_act_loss_coefficient = 0;
  sae::JumpReLUSAE<double> no_pre(cfg, 3);
  CHECK_FALSE(no_pre.loss(x, opts).contains("pre_act_loss"));
}

TEST_CASE("JumpReLU: straight-through threshold gradient on hand-worked cases", "[JumpReLUSAE]") {
  // x = 0.45, 0.55 and threshold 0.5: h = x, t = 0.5, u = (h - t) / ε = -0.25 and +0.25, both
  // in the window. Row 1 inactive (f = 0, y = 0), row 2 active (f = 0.55, y = 1.1).
  // d mse / d f_b = (2 / B)(y_b - x_b) * 2 = -0.9 and 1.1; t / ε = 2.5; c / (B ε) = 2.5.
  Mat x(2, 1);
  x << 0.45, 0.55;
  sae::LatentMask dead = sae::LatentMask::Ones(1);
  for (bool sparse : {false, true}) {
    INFO("sparse " << sparse);
    auto run = [&](sae::JumpReLUSAE<double>& m, const sae::TrainOptions& opts,
                   sae::LossTerms<double>& terms) {
      sae::JumpReLUSAE<double>::Workspace ws;
      ws.sparse_threshold = sparse ? 1.1 : 0.0;
      auto g = m.makeGradients();
      terms = m.backward(x, g, opts, ws);
      REQUIRE(ws.used_sparse == sparse);
      return g;
    };
    sae::LossTerms<double> terms;
    {
      // Step: (-2.5 * -0.9 - 2.5) + (-2.5 * 1.1 - 2.5) = -0.25 - 5.25.
      auto m = scalarModel(Mode::Step, 0.5, 0.0);
      const auto g = run(m, {}, terms);
      CHECK(g.flat("threshold")[0] == Approx(-5.5).epsilon(1e-12));
      CHECK(terms["mse_loss"] == Approx((0.45 * 0.45 + 0.55 * 0.55) / 2).epsilon(1e-12));
      CHECK(terms["l0_loss"] == Approx(0.5).epsilon(1e-12));
      // d/dh only through the active row's f: b_enc gets 1.1, W_enc gets 1.1 * 0.55.
      CHECK(g.flat("b_enc")[0] == Approx(1.1).epsilon(1e-12));
      CHECK(g.flat("W_enc")[0] == Approx(1.1 * 0.55).epsilon(1e-12));
    }
    {
      // Warm-up scale 0.5 halves the step term: c / (B ε) = 1.25 per row.
      auto m = scalarModel(Mode::Step, 0.5, 0.0);
      sae::TrainOptions opts;
      opts.sparsity_scale = 0.5;
      const auto g = run(m, opts, terms);
      CHECK(g.flat("threshold")[0] == Approx(2.25 - 1.25 - 2.75 - 1.25).epsilon(1e-12));
      CHECK(terms["l0_loss"] == Approx(0.25).epsilon(1e-12));
    }
    {
      // Pre-activation loss on the dead latent: row 1 has t - h = 0.05 > 0, so the loss is
      // 1 * (0.05 * 2) / 2 and d/dt gains n / B = 1, d/dh of row 1 is -1 (b_enc 1.1 - 1).
      auto m = scalarModel(Mode::Step, 0.5, 1.0);
      sae::TrainOptions opts;
      opts.dead_mask = &dead;
      const auto g = run(m, opts, terms);
      CHECK(g.flat("threshold")[0] == Approx(-4.5).epsilon(1e-12));
      CHECK(terms["pre_act_loss"] == Approx(0.05).epsilon(1e-12));
      CHECK(g.flat("b_enc")[0] == Approx(0.1).epsilon(1e-12));
    }
    {
      // Tanh, scale 4: d loss / d f_b = d mse / d f_b + (c / B) 4 n sech^2(4 f_b n):
      // row 1 (f = 0): -0.9 + 4 = 3.1; row 2 (4 f n = 4.4): 1.1 + 4 sech^2(4.4).
      auto m = scalarModel(Mode::Tanh, 0.5, 0.0);
      const auto g = run(m, {}, terms);
      const double sech2 = 1.0 / std::pow(std::cosh(4.4), 2);
      CHECK(g.flat("threshold")[0] == Approx(-2.5 * (3.1 + 1.1 + 4 * sech2)).epsilon(1e-12));
      CHECK(terms["l0_loss"] == Approx(std::tanh(4.4) / 2).epsilon(1e-12));
      CHECK(g.flat("b_enc")[0] == Approx(1.1 + 4 * sech2).epsilon(1e-12));
    }
  }
  {
    // threshold -0.5: t = 0, x = 0.02 (active) and -0.03 (inactive), both in the window, yet
    // the threshold gets no gradient (relu'(-0.5) = 0) even with the pre-activation loss.
    Mat xs(2, 1);
    xs << 0.02, -0.03;
    for (Mode mode : {Mode::Step, Mode::Tanh}) {
      auto m = scalarModel(mode, -0.5, 1.0);
      sae::TrainOptions opts;
      opts.dead_mask = &dead;
      auto g = m.makeGradients();
      const auto terms = m.backward(xs, g, opts);
      CHECK(g.flat("threshold")[0] == 0.0);
      CHECK(m.encode(xs).values(0, 0) == 0.02);
      CHECK(m.encode(xs).values(1, 0) == 0.0);
      CHECK(terms["pre_act_loss"] == Approx(0.03 * 2 / 2).epsilon(1e-12));
    }
  }
}

TEST_CASE("JumpReLU gradients: finite differences and the straight-through threshold term",
          "[JumpReLUSAE][gradients]") {
  const Mat x = randomBatch<double>(8, 6, 17);
  sae::LatentMask dead = sae::LatentMask::Zero(10);
  dead[1] = dead[3] = dead[6] = 1;  // latent 3 has a negative threshold
  for (Mode mode : {Mode::Step, Mode::Tanh}) {
    for (double c_pre : {0.0, 0.7}) {
      for (bool with_dead : {false, true}) {
        for (bool apply : {true, false}) {
          const auto cfg = gradConfig(mode, c_pre, apply);
          sae::TrainOptions opts;
          opts.dead_mask = with_dead ? &dead : nullptr;
          opts.sparsity_scale = apply ? 1.0 : 0.6;
          auto m = makeModel(cfg, x);
          const auto [open, closed] = windowEntries(m, x);
          REQUIRE(open >= 5);  // the straight-through term is exercised
          REQUIRE(closed >= 1);
          for (bool sparse : {false, true}) {
            INFO("mode " << (mode == Mode::Step ? "step" : "tanh") << " pre_act " << c_pre
                         << " dead " << with_dead << " apply_b_dec " << apply << " sparse "
                         << sparse);
            checkGradients(m, x, opts, sparse);
          }
        }
      }
    }
  }
}

TEST_CASE("JumpReLU gives the same results on its sparse and dense paths", "[JumpReLUSAE]") {
  for (Mode mode : {Mode::Step, Mode::Tanh}) {
    sae::SaeConfig cfg;
    cfg.d_in = 24;
    cfg.d_sae = 200;
    cfg.l0_coefficient = 0.8;
    cfg.sparsity_loss_mode = mode;
    cfg.pre_act_loss_coefficient = 0.3;
    cfg.jumprelu_bandwidth = 0.1;
    sae::JumpReLUSAE<double> m(cfg, 41);
    perturb(m, 42, 0.02);
    m.parameters().flat("threshold").setConstant(0.6);
    for (Index i = 0; i < 200; i += 50) m.parameters().flat("threshold")[i] = -0.1;
    const Mat x = randomBatch<double>(90, 24, 43, 2.0);
    sae::LatentMask dead = sae::LatentMask::Zero(200);
    dead[5] = dead[77] = 1;
    sae::TrainOptions opts;
    opts.dead_mask = &dead;

    sae::JumpReLUSAE<double>::Workspace dense, sparse, automatic;
    dense.sparse_threshold = 0.0;
    sparse.sparse_threshold = 1.1;
    auto gd = m.makeGradients(), gs = m.makeGradients(), ga = m.makeGradients();
    const auto td = m.backward(x, gd, opts, dense);
    const auto ts = m.backward(x, gs, opts, sparse);
    m.backward(x, ga, opts, automatic);
    CHECK_FALSE(dense.used_sparse);
    CHECK(sparse.used_sparse);
    const double cells = 90.0 * 200.0;
    const double density = double(sparse.pattern.nnz()) / cells;
    INFO("density of f " << density << ", extra entries " << sparse.extra.nnz());
    CHECK(density > 0.005);
    CHECK(density < 0.05);
    CHECK(sparse.extra.nnz() > 0);
    CHECK(automatic.used_sparse ==
          (double(sparse.pattern.nnz() + sparse.extra.nnz()) < 0.05 * cells));
    REQUIRE(td.terms().size() == 3);
    for (std::size_t i = 0; i < td.terms().size(); ++i)
      CHECK(ts.terms()[i].second == Approx(td.terms()[i].second).epsilon(1e-12));
    CHECK(td["pre_act_loss"] > 0);
    CHECK((dense.codes.values - sparse.codes.values).cwiseAbs().maxCoeff() == 0.0);
    CHECK((dense.reconstruction - sparse.reconstruction).cwiseAbs().maxCoeff() < 1e-12);
    for (const auto& e : gd.entries()) {
      INFO("gradient " << e.name);
      const double scale = std::max(1e-12, gd.flat(e.name).cwiseAbs().maxCoeff());
      CHECK(scale > 1e-6);
      CHECK((gd.flat(e.name) - gs.flat(e.name)).cwiseAbs().maxCoeff() <= 1e-12 * scale);
    }
  }
}

TEST_CASE("JumpReLU training steps are bitwise reproducible, and 1 and 2 threads agree",
          "[JumpReLUSAE][determinism]") {
  sae::SaeConfig cfg;
  cfg.d_in = 48;
  cfg.d_sae = 384;
  cfg.pre_act_loss_coefficient = 0.2;
  sae::JumpReLUSAE<float> m(cfg, 31);
  perturb(m, 32, 0.02);
  const auto x = randomBatch<float>(300, 48, 33);
  sae::LatentMask dead = sae::LatentMask::Zero(384);
  for (Index i = 0; i < 384; i += 3) dead[i] = 1;
  for (Mode mode : {Mode::Step, Mode::Tanh}) {
    for (double threshold : {0.0, 1.1}) {
      sae::SaeConfig c = cfg;
      c.sparsity_loss_mode = mode;
      sae::JumpReLUSAE<float> model(c);
      model.parameters().flat() = m.parameters().flat();
      sae::TrainOptions opts;
      opts.dead_mask = &dead;
      auto run = [&](int threads) {
        sae::setThreads(threads);
        sae::JumpReLUSAE<float>::Workspace ws;
        ws.sparse_threshold = threshold;
        auto g = model.makeGradients();
        const auto t = model.backward(x, g, opts, ws);
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
  }
}

TEST_CASE("JumpReLU configuration errors", "[JumpReLUSAE][errors]") {
  sae::SaeConfig cfg;
  cfg.d_in = 4;
  cfg.d_sae = 8;
  cfg.jumprelu_bandwidth = 0;
  CHECK_THROWS_WITH(sae::JumpReLUSAE<float>(cfg), "jumprelu_bandwidth must be positive, found 0");
  cfg.jumprelu_bandwidth = 0.05;
  cfg.l0_coefficient = -1;
  CHECK_THROWS_WITH(sae::JumpReLUSAE<float>(cfg),
                    "l0_coefficient must be finite and >= 0, found -1");
  cfg.l0_coefficient = 1;
  cfg.pre_act_loss_coefficient = std::numeric_limits<double>::infinity();
  CHECK_THROWS_AS(sae::JumpReLUSAE<float>(cfg), sae::ConfigError);
  cfg.pre_act_loss_coefficient = 0;
  cfg.jumprelu_init_threshold = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(sae::JumpReLUSAE<float>(cfg, 1), sae::ConfigError);
}

}  // namespace sae_test_jumprelu
