// Finite-difference checks of every analytic gradient, in double precision.
//
// For each architecture, every scalar of every parameter is perturbed by +-eps and the centred
// difference of the total loss is compared with backward(). Each check is repeated with the
// coefficients of the extra loss terms switched off and on, so each term's gradient is checked
// (total = mse + c * term is linear in c). Points are drawn away from the kinks of ReLU, the
// TopK / AuxK selection boundaries and the gate: the test asserts that margin first.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include <sae/sae.hpp>
#include <support/test_support.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_gradients {

namespace {

using sae::test::perturb;
using sae::test::randomBatch;

using sae::Index;
using Mat = sae::RowMatrix<double>;

constexpr double kStep = 1e-5;
constexpr double kMargin = 1e-3;  // distance to any kink, >> kStep * |d pre / d param|

// Smallest distance of any pre-activation to a kink of the architecture, from a dense
// recomputation of the forward pass.
double kinkMargin(const sae::StandardSAE<double>& m, const Mat& x, const sae::TrainOptions&) {
  const auto& p = m.parameters();
  Mat xc = x.rowwise() - p.flat("b_dec").transpose();
  Mat h = xc * p.colMajor("W_enc");
  h.rowwise() += p.flat("b_enc").transpose();
  return h.cwiseAbs().minCoeff();
}

double kinkMargin(const sae::GatedSAE<double>& m, const Mat& x, const sae::TrainOptions&) {
  const auto& p = m.parameters();
  Mat xc = x.rowwise() - p.flat("b_dec").transpose();
  Mat P = xc * p.colMajor("W_enc");
  Mat gate = P.rowwise() + p.flat("b_gate").transpose();
  Mat mag = P.array().rowwise() * p.flat("r_mag").array().exp().transpose();
  mag.rowwise() += p.flat("b_mag").transpose();
  return std::min(gate.cwiseAbs().minCoeff(), mag.cwiseAbs().minCoeff());
}

double kinkMargin(const sae::TopKSAE<double>& m, const Mat& x, const sae::TrainOptions& opts) {
  const auto& p = m.parameters();
  const auto& cfg = m.config();
  Mat xc = x.rowwise() - p.flat("b_dec").transpose();
  Mat h = xc * p.colMajor("W_enc");
  h.rowwise() += p.flat("b_enc").transpose();
  const sae::Vector<double> n = m.decoderNorms();
  double margin = std::numeric_limits<double>::infinity();
  for (Index b = 0; b < h.rows(); ++b) {
    std::vector<double> all, dead;
    for (Index i = 0; i < h.cols(); ++i) {
      const double s = cfg.rescale_acts_by_decoder_norm ? h(b, i) * n[i] : h(b, i);
      all.push_back(s);
      if (opts.dead_mask && (*opts.dead_mask)[i]) dead.push_back(s);
      margin = std::min(margin, std::abs(h(b, i)));  // relu kink of the selected values
    }
    std::sort(all.rbegin(), all.rend());
    margin = std::min(margin, all[cfg.k - 1] - all[cfg.k]);
    const Index half = cfg.d_in / 2;
    const Index k_aux = std::min<Index>(half, dead.size());
    std::sort(dead.rbegin(), dead.rend());
    if (k_aux > 0 && k_aux < Index(dead.size()))
      margin = std::min(margin, dead[k_aux - 1] - dead[k_aux]);
  }
  return margin;
}

// AuxK with the residual (x - y) frozen at `resid`, as SAELens detaches it, recomputed densely
// from the parameters: the function whose gradient backward() returns for the AuxK term.
double frozenAuxK(const sae::TopKSAE<double>& m, const Mat& x, const sae::TrainOptions& opts,
                  const Mat& resid) {
  const auto& p = m.parameters();
  const auto& cfg = m.config();
  if (!opts.dead_mask) return 0.0;
  std::vector<Index> dead;
  for (Index i = 0; i < cfg.d_sae; ++i)
    if ((*opts.dead_mask)[i]) dead.push_back(i);
  const Index half = cfg.d_in / 2;
  if (dead.empty() || half == 0) return 0.0;
  const Index k_aux = std::min<Index>(half, dead.size());
  const double s = std::min(double(dead.size()) / double(half), 1.0);
  Mat xc = x.rowwise() - p.flat("b_dec").transpose();
  Mat h = xc * p.colMajor("W_enc");
  h.rowwise() += p.flat("b_enc").transpose();
  const sae::Vector<double> n = m.decoderNorms();
  const auto W_dec = p.rowMajor("W_dec");
  double total = 0;
  for (Index b = 0; b < x.rows(); ++b) {
    std::vector<Index> order = dead;
    auto score = [&](Index i) {
      return cfg.rescale_acts_by_decoder_norm ? h(b, i) * n[i] : h(b, i);
    };
    std::sort(order.begin(), order.end(), [&](Index a, Index c) { return score(a) > score(c); });
    sae::RowMatrix<double> e = sae::RowMatrix<double>::Zero(1, cfg.d_in);
    for (Index j = 0; j < k_aux; ++j) e += h(b, order[j]) * W_dec.row(order[j]);
    total += (e - resid.row(b)).squaredNorm();
  }
  return cfg.aux_loss_coefficient * s * total / double(x.rows());
}

// The loss whose finite differences backward() must match: the total, except that TopK's AuxK
// residual is held at its value at the current parameters (it is detached in training).
template <typename Model>
struct CheckedLoss {
  double operator()(const Model& m, const Mat& x, const sae::TrainOptions& opts) const {
    return m.loss(x, opts).total();
  }
};

template <>
struct CheckedLoss<sae::TopKSAE<double>> {
  Mat resid;
  double operator()(const sae::TopKSAE<double>& m, const Mat& x,
                    const sae::TrainOptions& opts) const {
    return m.loss(x, opts)["mse_loss"] + frozenAuxK(m, x, opts, resid);
  }
};

template <typename W, typename = void>
struct HasSparsePath : std::false_type {};
template <typename W>
struct HasSparsePath<W, std::void_t<decltype(W::sparse_threshold)>> : std::true_type {};

// `sparse`: force the dense (false) or the sparse (true) kernels where the architecture has both.
template <typename Model>
void checkGradients(Model& model, const Mat& x, const sae::TrainOptions& opts,
                    bool sparse = false) {
  REQUIRE(kinkMargin(model, x, opts) > kMargin);
  auto grads = model.makeGradients();
  typename Model::Workspace ws;
  if constexpr (HasSparsePath<typename Model::Workspace>::value) {
    ws.sparse_threshold = sparse ? 1.1 : 0.0;
    model.loss(x, opts, ws);
    REQUIRE(ws.used_sparse == sparse);
  }
  const auto terms = model.backward(x, grads, opts, ws);
  CheckedLoss<Model> f;
  if constexpr (std::is_same<Model, sae::TopKSAE<double>>::value) {
    f.resid = x - ws.reconstruction;
    // The dense reference agrees with the model's own AuxK value.
    CHECK(frozenAuxK(model, x, opts, f.resid) ==
          Approx(terms["auxiliary_reconstruction_loss"]).epsilon(1e-12).margin(1e-15));
  }
  auto& params = model.parameters();
  for (const auto& entry : params.entries()) {
    auto value = params.flat(entry.name);
    const auto analytic = grads.flat(entry.name);
    double worst = 0;
    for (Index i = 0; i < value.size(); ++i) {
      const double saved = value[i];
      value[i] = saved + kStep;
      const double up = f(model, x, opts);
      value[i] = saved - kStep;
      const double down = f(model, x, opts);
      value[i] = saved;
      const double numeric = (up - down) / (2 * kStep);
      const double err = std::abs(numeric - analytic[i]) /
                         std::max({std::abs(numeric), std::abs(analytic[i]), 1e-3});
      worst = std::max(worst, err);
    }
    INFO("parameter " << entry.name);
    CHECK(worst < 1e-6);
    // The gradient is not trivially zero.
    CHECK(analytic.cwiseAbs().maxCoeff() > 1e-6);
  }
}

// Draws parameters until every point is safely away from the kinks.
template <typename Model>
Model makeModel(const sae::SaeConfig& cfg, const Mat& x, const sae::TrainOptions& opts,
                double scale) {
  for (std::uint64_t seed = 1; seed < 200; ++seed) {
    Model m(cfg, seed);
    perturb(m, 1000 + seed, scale);
    if (kinkMargin(m, x, opts) > kMargin) return m;
  }
  FAIL("no parameter draw away from the kinks");
  return Model(cfg);
}

}  // namespace

TEST_CASE("Standard SAE gradients match finite differences", "[gradients][StandardSAE]") {
  const Mat x = randomBatch(5, 6, 11);
  for (double lp : {1.0, 2.0}) {
    for (double c : {0.0, 0.7, 3.0}) {
      for (bool apply : {true, false}) {
        sae::SaeConfig cfg;
        cfg.d_in = 6;
        cfg.d_sae = 10;
        cfg.l1_coefficient = c;
        cfg.lp_norm = lp;
        cfg.apply_b_dec_to_input = apply;
        for (double warm : {1.0, 0.25}) {
          sae::TrainOptions opts;
          opts.sparsity_scale = warm;
          auto m = makeModel<sae::StandardSAE<double>>(cfg, x, opts, 0.3);
          for (bool sparse : {false, true}) {
            INFO("lp " << lp << " c " << c << " apply_b_dec " << apply << " warm " << warm
                       << " sparse " << sparse);
            checkGradients(m, x, opts, sparse);
          }
        }
      }
    }
  }
}

TEST_CASE("Gated SAE gradients match finite differences", "[gradients][GatedSAE]") {
  const Mat x = randomBatch(5, 6, 12);
  for (double c : {0.0, 1.5}) {
    for (bool apply : {true, false}) {
      sae::SaeConfig cfg;
      cfg.d_in = 6;
      cfg.d_sae = 10;
      cfg.l1_coefficient = c;
      cfg.apply_b_dec_to_input = apply;
      sae::TrainOptions opts;
      auto m = makeModel<sae::GatedSAE<double>>(cfg, x, opts, 0.3);
      for (bool sparse : {false, true}) {
        INFO("c " << c << " apply_b_dec " << apply << " sparse " << sparse);
        checkGradients(m, x, opts, sparse);
      }
    }
  }
}

TEST_CASE("TopK SAE gradients match finite differences, with and without AuxK",
          "[gradients][TopKSAE]") {
  const Mat x = randomBatch(5, 6, 13);
  sae::LatentMask few = sae::LatentMask::Zero(12), many = sae::LatentMask::Zero(12);
  few[2] = few[7] = 1;                            // 2 dead < d_in / 2: k_aux = 2
  for (Index i = 0; i < 12; i += 2) many[i] = 1;  // 6 dead >= 3: k_aux = 3, scale 1
  const std::vector<const sae::LatentMask*> masks{nullptr, &few, &many};
  for (const sae::LatentMask* mask : masks) {
    for (bool rescale : {true, false}) {
      for (double c_aux : {0.0, 0.5, 2.0}) {
        sae::SaeConfig cfg;
        cfg.d_in = 6;
        cfg.d_sae = 12;
        cfg.k = 3;
        cfg.rescale_acts_by_decoder_norm = rescale;
        cfg.aux_loss_coefficient = c_aux;
        sae::TrainOptions opts;
        opts.dead_mask = mask;
        auto m = makeModel<sae::TopKSAE<double>>(cfg, x, opts, 0.3);
        INFO("rescale " << rescale << " c_aux " << c_aux << " dead mask "
                        << (mask ? mask->cast<int>().sum() : 0));
        checkGradients(m, x, opts);
      }
    }
  }
}

}  // namespace sae_test_gradients
