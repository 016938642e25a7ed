// A new architecture in a few dozen lines: an activation policy for ActivationArch, defined
// here and nowhere in the library, trained and gradient-checked through the shared template.
//
// The policy is a squared ReLU with a plain L1 penalty on the codes:
//   f = relu(h)^2,  h = xc W_enc + b_enc;  square_l1_loss = c * mean_b sum_i f_i
// with one extra parameter per latent, a gain g_i on the codes: f = exp(log_gain_i) relu(h)^2.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <sae/sae.hpp>
#include <support/test_support.hpp>

namespace sae_test_policies {

namespace {

using sae::Index;
using Mat = sae::RowMatrix<double>;

struct SquaredReluActivation {
  static constexpr const char* kName = "squared_relu";

  template <typename S>
  struct Scratch {};

  static void validate(const sae::SaeConfig& cfg) {
    sae::require(cfg.lp_norm == 1.0, "squared_relu: lp_norm must be 1, found ", cfg.lp_norm);
  }

  template <typename S>
  static void addParameters(sae::ParameterSet<S>& p, const sae::SaeConfig& cfg) {
    p.add("log_gain", {cfg.d_sae});
  }

  template <typename S>
  static void initialize(sae::ParameterSet<S>&, const sae::SaeConfig&, sae::Rng&) {}

  template <typename S>
  static void activate(const sae::ParameterSet<S>& p, const sae::SaeConfig&, sae::RowMatrix<S>& pre,
                       sae::RowMatrix<S>& f) {
    const auto b_enc = p.flat("b_enc");
    const auto log_gain = p.flat("log_gain");
    for (Index b = 0; b < pre.rows(); ++b)
      for (Index i = 0; i < pre.cols(); ++i) {
        pre(b, i) += b_enc[i];
        const S r = pre(b, i) > S(0) ? pre(b, i) : S(0);
        f(b, i) = std::exp(log_gain[i]) * r * r;
      }
  }

  template <typename S>
  static void addPenalties(const sae::ParameterSet<S>&, const sae::SaeConfig& cfg,
                           const sae::TrainOptions& opts, const sae::detail::DenseWorkspace<S>& ws,
                           Scratch<S>&, sae::LossTerms<S>& terms) {
    const auto& f = ws.codes.values;
    terms.add("square_l1_loss",
              S(cfg.l1_coefficient * opts.sparsity_scale * f.sum() / double(f.rows())));
  }

  // d f / d h = 2 exp(log_gain) relu(h) = 2 sqrt(exp(log_gain) f): from f alone.
  template <typename S>
  struct Rule {
    const sae::RowMatrix<S>& f;
    Eigen::Ref<const sae::Vector<S>> log_gain;
    S c;
    S operator()(Index b, Index i, S g) const {
      const S fv = f(b, i);
      return fv > S(0) ? (g + c) * S(2) * std::sqrt(std::exp(log_gain[i]) * fv) : S(0);
    }
  };

  template <typename S>
  static Rule<S> gradientRule(const sae::ParameterSet<S>& p, const sae::SaeConfig& cfg,
                              const sae::TrainOptions& opts,
                              const sae::detail::DenseWorkspace<S>& ws, const Scratch<S>&) {
    const auto& f = ws.codes.values;
    return Rule<S>{f, p.flat("log_gain"),
                   S(cfg.l1_coefficient * opts.sparsity_scale / double(f.rows()))};
  }

  // d loss / d log_gain_i = sum_b (d mse / d f_bi + c) f_bi: d mse / d f from grad_y W_dec^T.
  template <typename S>
  static void penaltyGradient(const sae::ParameterSet<S>& p, const sae::SaeConfig& cfg,
                              const sae::TrainOptions& opts,
                              const sae::detail::DenseWorkspace<S>& ws, const Scratch<S>&,
                              sae::Vector<S>&, sae::ParameterSet<S>& g) {
    const auto& f = ws.codes.values;
    const sae::RowMatrix<S> d_f = ws.grad_y * p.rowMajor("W_dec").transpose();
    const S c = S(cfg.l1_coefficient * opts.sparsity_scale / double(f.rows()));
    g.flat("log_gain") = (d_f.array() + c).cwiseProduct(f.array()).colwise().sum().transpose();
  }
};

template <typename S>
using SquaredReluSAE = sae::SparseAutoencoder<S, sae::ActivationArch<SquaredReluActivation>>;

sae::SaeConfig smallConfig(double l1) {
  sae::SaeConfig cfg;
  cfg.d_in = 6;
  cfg.d_sae = 10;
  cfg.l1_coefficient = l1;
  return cfg;
}

// Smallest |h| over the batch: the kink of relu(h)^2 is at 0 (its derivative is continuous
// there, but keep the finite differences away from it anyway).
double kinkMargin(const SquaredReluSAE<double>& m, const Mat& x) {
  SquaredReluSAE<double>::Workspace ws;
  SquaredReluSAE<double>::Codes codes;
  m.encode(x, codes, ws);
  return ws.pre.cwiseAbs().minCoeff();
}

// Policies that each lack one member (or have it with a signature that does not fit).
struct WithoutName : SquaredReluActivation {
  static constexpr int kName = 0;
};
struct WithoutScratch : SquaredReluActivation {
  using Scratch = int;
};
struct WithoutActivate : SquaredReluActivation {
  static void activate() = delete;
};
struct WithBadRule : SquaredReluActivation {
  template <typename S>
  static void gradientRule(const sae::ParameterSet<S>&, const sae::SaeConfig&,
                           const sae::TrainOptions&, const sae::detail::DenseWorkspace<S>&,
                           const Scratch<S>&) {}
};
struct WithoutPenaltyGradient : SquaredReluActivation {
  static void penaltyGradient() = delete;
};

}  // namespace

TEST_CASE("A policy defined outside the library has the shared parameters and its own",
          "[ActivationArch]") {
  const SquaredReluSAE<double> m(smallConfig(0.5), 3);
  std::vector<std::string> names;
  for (const auto& e : m.parameters().entries()) names.push_back(e.name);
  CHECK(names == std::vector<std::string>{"W_enc", "b_enc", "W_dec", "b_dec", "log_gain"});
  CHECK(std::string(m.architecture()) == "squared_relu");
  sae::SaeConfig bad = smallConfig(0.5);
  bad.lp_norm = 2.0;
  CHECK_THROWS_WITH(SquaredReluSAE<double>(bad), "squared_relu: lp_norm must be 1, found 2");
}

TEST_CASE("A policy defined outside the library encodes as its activation says",
          "[ActivationArch]") {
  SquaredReluSAE<double> m(smallConfig(0.5), 3);
  sae::test::perturb(m, 7, 0.3);
  const Mat x = sae::test::randomBatch(4, 6, 5);
  const auto& p = m.parameters();
  // The reference, written out: f = exp(log_gain) relu(x W_enc + b_enc)^2 (b_dec applied to
  // the input when apply_b_dec_to_input, SAELens's default of SaeConfig).
  Mat xc = x;
  if (m.config().apply_b_dec_to_input) xc.rowwise() -= p.flat("b_dec").transpose();
  const Mat h = (xc * p.colMajor("W_enc")).rowwise() + p.flat("b_enc").transpose();
  const auto codes = m.encode(x);
  for (Index b = 0; b < x.rows(); ++b)
    for (Index i = 0; i < m.dSae(); ++i) {
      const double r = std::max(h(b, i), 0.0);
      CHECK(codes.values(b, i) == Approx(std::exp(p.flat("log_gain")[i]) * r * r).margin(1e-14));
    }
  const Mat y = (codes.values * p.rowMajor("W_dec")).rowwise() + p.flat("b_dec").transpose();
  CHECK((m.decode(codes) - y).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("A policy defined outside the library has gradients that match finite differences",
          "[ActivationArch][gradients]") {
  const Mat x = sae::test::randomBatch(5, 6, 11);
  for (double l1 : {0.0, 0.8}) {
    for (bool apply : {true, false}) {
      sae::SaeConfig cfg = smallConfig(l1);
      cfg.apply_b_dec_to_input = apply;
      SquaredReluSAE<double> m(cfg, 1);
      for (std::uint64_t seed = 1; kinkMargin(m, x) < 1e-3; ++seed) {
        REQUIRE(seed < 100);
        m = SquaredReluSAE<double>(cfg, seed);
        sae::test::perturb(m, 100 + seed, 0.3);
      }
      sae::TrainOptions opts;
      opts.sparsity_scale = 0.5;
      for (bool sparse : {false, true}) {
        INFO("l1 " << l1 << " apply_b_dec " << apply << " sparse " << sparse);
        SquaredReluSAE<double>::Workspace ws;
        ws.sparse_threshold = sparse ? 1.1 : 0.0;
        auto grads = m.makeGradients();
        const auto terms = m.backward(x, grads, opts, ws);
        REQUIRE(ws.used_sparse == sparse);
        CHECK(terms.contains("square_l1_loss") == true);
        auto& params = m.parameters();
        for (const auto& entry : params.entries()) {
          const auto analytic = grads.flat(entry.name);
          const double worst = sae::test::worstFiniteDifferenceError(
              params.flat(entry.name), analytic, [&] { return m.loss(x, opts).total(); });
          INFO("parameter " << entry.name);
          CHECK(worst < 1e-6);
          CHECK(analytic.cwiseAbs().maxCoeff() > 1e-6);
        }
      }
    }
  }
}

TEST_CASE("A policy defined outside the library trains through the shared template",
          "[ActivationArch]") {
  sae::SaeConfig cfg;
  cfg.d_in = 16;
  cfg.d_sae = 64;
  cfg.l1_coefficient = 1e-3;
  SquaredReluSAE<float> m(cfg, 2);
  sae::eval::SyntheticOptions data_opts;
  data_opts.d_in = cfg.d_in;
  data_opts.n_features = 32;
  sae::eval::SyntheticFeatures<float> data(data_opts, 9);
  const sae::RowMatrix<float> x = data.sample(256);
  auto grads = m.makeGradients();
  sae::AdamOptions adam_opts;
  adam_opts.lr = 3e-3;
  sae::Adam<float> adam(m.parameters(), adam_opts);
  SquaredReluSAE<float>::Workspace ws;
  const float first = m.loss(x).total();
  for (int step = 0; step < 300; ++step) {
    m.backward(x, grads, {}, ws);
    adam.step(m.parameters(), grads);
  }
  const float last = m.loss(x).total();
  INFO("loss " << first << " -> " << last);
  CHECK(std::isfinite(last));
  CHECK(last < 0.5f * first);
}

TEST_CASE("ActivationArch's interface check names the first member a policy lacks", "[policies]") {
  using sae::detail::missingActivationMember;
  using M = sae::detail::ActivationPolicyMember;
  STATIC_REQUIRE(missingActivationMember<SquaredReluActivation>() == M::none);
  STATIC_REQUIRE(missingActivationMember<sae::StandardActivation>() == M::none);
  STATIC_REQUIRE(missingActivationMember<WithoutName>() == M::kName);
  STATIC_REQUIRE(missingActivationMember<WithoutScratch>() == M::Scratch);
  STATIC_REQUIRE(missingActivationMember<WithoutActivate>() == M::activate);
  STATIC_REQUIRE(missingActivationMember<WithBadRule>() == M::gradientRule);
  STATIC_REQUIRE(missingActivationMember<WithoutPenaltyGradient>() == M::penaltyGradient);
}

}  // namespace sae_test_policies
