// BatchTopK and Matryoshka BatchTopK: the batch-wide selection kernel against a brute-force
// sort, selection semantics on hand-built cases, the EMA threshold, inference encode, the
// Matryoshka loss terms against an independent dense recomputation, finite-difference
// gradients in double (with AuxK), determinism across thread counts, and validation.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <variant>
#include <vector>

#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <support/test_support.hpp>

#include <sae/io/saelens.hpp>
#include <sae/io/safetensors.hpp>
#include <sae/sae.hpp>
#include <sae/train/batch_source.hpp>
#include <sae/train/trainer.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_batchtopk {

namespace {

using sae::test::perturb;
using sae::test::randomBatch;

using sae::Index;
using Mat = sae::RowMatrix<double>;

// ------------------------------------------------------------------ dense reference
//
// An independent recomputation of the training losses with plain loops over dense matrices:
// every score of the batch is sorted at once (higher first, equal scores by lower position
// b * d_sae + i), the k * B best positive ones are kept, and each nested width decodes its
// prefix of latents.

struct DenseResult {
  Mat f;                    // [B, d_sae] feature activations (in units of p)
  Mat y;                    // full reconstruction
  std::vector<Mat> inner;   // reconstruction of each width but the last
  double mse = 0, aux = 0;  // mse_loss, auxiliary_reconstruction_loss
  std::vector<double> inner_mse;
  double min_f = 0;  // smallest selected activation
  Index selected = 0;
  double margin = std::numeric_limits<double>::infinity();  // distance to any selection change
};

// `frozen`: the AuxK residual x - y held fixed (SAELens detaches it); null = from this pass.
DenseResult denseReference(const sae::ParameterSet<double>& p, const sae::SaeConfig& cfg,
                           const Mat& x, const std::vector<Index>& widths,
                           const sae::LatentMask* dead, const Mat* frozen) {
  const Index B = x.rows(), d = cfg.d_in, n = cfg.d_sae;
  const Mat W_enc = p.rowMajorCopy("W_enc");  // [d, n]
  const Mat W_dec = p.rowMajorCopy("W_dec");  // [n, d]
  const Mat b_enc = p.rowMajorCopy("b_enc");
  const Mat b_dec = p.rowMajorCopy("b_dec");
  std::vector<double> norm(n, 0.0);
  for (Index i = 0; i < n; ++i) {
    for (Index j = 0; j < d; ++j) norm[i] += W_dec(i, j) * W_dec(i, j);
    norm[i] = std::sqrt(norm[i]);
  }
  const bool r = cfg.rescale_acts_by_decoder_norm;
  Mat h(B, n), s(B, n);
  for (Index b = 0; b < B; ++b)
    for (Index i = 0; i < n; ++i) {
      double acc = b_enc(0, i);
      for (Index j = 0; j < d; ++j)
        acc += (x(b, j) - (cfg.apply_b_dec_to_input ? b_dec(0, j) : 0.0)) * W_enc(j, i);
      h(b, i) = acc;
      s(b, i) = r ? acc * norm[i] : acc;
    }
  DenseResult out;
  // Batch-wide selection.
  std::vector<std::tuple<double, Index>> all;  // (score, position)
  for (Index b = 0; b < B; ++b)
    for (Index i = 0; i < n; ++i) {
      out.margin = std::min(out.margin, std::abs(s(b, i)));
      if (s(b, i) > 0) all.emplace_back(s(b, i), b * n + i);
    }
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& c) {
    return std::get<0>(a) > std::get<0>(c) ||
           (std::get<0>(a) == std::get<0>(c) && std::get<1>(a) < std::get<1>(c));
  });
  const Index K = cfg.k * B;
  if (Index(all.size()) > K)
    out.margin = std::min(out.margin, std::get<0>(all[K - 1]) - std::get<0>(all[K]));
  out.f = Mat::Zero(B, n);
  out.selected = std::min<Index>(K, all.size());
  out.min_f = out.selected ? std::get<0>(all[out.selected - 1]) : 0.0;
  for (Index e = 0; e < out.selected; ++e) {
    const Index pos = std::get<1>(all[e]);
    out.f(pos / n, pos % n) = std::get<0>(all[e]);
  }
  // Every width decodes its prefix, b_dec included.
  auto decodePrefix = [&](Index w) {
    Mat y(B, d);
    for (Index b = 0; b < B; ++b)
      for (Index j = 0; j < d; ++j) {
        double acc = b_dec(0, j);
        for (Index i = 0; i < w; ++i)
          if (out.f(b, i) != 0) acc += (r ? out.f(b, i) / norm[i] : out.f(b, i)) * W_dec(i, j);
        y(b, j) = acc;
      }
    return y;
  };
  auto meanSq = [&](const Mat& y) {
    double total = 0;
    for (Index b = 0; b < B; ++b)
      for (Index j = 0; j < d; ++j) total += (y(b, j) - x(b, j)) * (y(b, j) - x(b, j));
    return total / double(B);
  };
  out.y = decodePrefix(n);
  out.mse = meanSq(out.y);
  for (std::size_t l = 0; l + 1 < widths.size(); ++l) {
    out.inner.push_back(decodePrefix(widths[l]));
    out.inner_mse.push_back(meanSq(out.inner.back()));
  }
  // AuxK, per row among the dead latents: raw scores, decoded as h, no b_dec.
  std::vector<Index> dead_ids;
  if (dead)
    for (Index i = 0; i < n; ++i)
      if ((*dead)[i]) dead_ids.push_back(i);
  const Index half = d / 2;
  if (!dead_ids.empty() && cfg.aux_loss_coefficient > 0) {
    const Index k_aux = std::min<Index>(half, dead_ids.size());
    const double scale = std::min(double(dead_ids.size()) / double(half), 1.0);
    double total = 0;
    for (Index b = 0; b < B; ++b) {
      std::vector<Index> order = dead_ids;
      std::stable_sort(order.begin(), order.end(),
                       [&](Index a, Index c) { return s(b, a) > s(b, c); });
      if (k_aux < Index(order.size()))
        out.margin = std::min(out.margin, s(b, order[k_aux - 1]) - s(b, order[k_aux]));
      for (Index j = 0; j < d; ++j) {
        double e = 0;
        for (Index a = 0; a < k_aux; ++a) e += h(b, order[a]) * W_dec(order[a], j);
        const double resid = frozen ? (*frozen)(b, j) : x(b, j) - out.y(b, j);
        total += (e - resid) * (e - resid);
      }
    }
    out.aux = cfg.aux_loss_coefficient * scale * total / double(B);
  }
  return out;
}

template <typename Model>
std::vector<Index> widthsOf(const Model& m) {
  if (std::string(Model::architecture()) == "matryoshka_batchtopk")
    return m.config().matryoshka_widths;
  return {m.dSae()};
}

double denseTotal(const DenseResult& r) {
  double t = r.mse + r.aux;
  for (double v : r.inner_mse) t += v;
  return t;
}

// Hand-built model: W_enc = identity (d_in = d_sae), W_dec = diag(norms), zero biases, so
// h = x and p = x * n (rescale) or x.
sae::BatchTopKSAE<double> identityModel(Index k, const std::vector<double>& norms, bool rescale,
                                        double threshold_lr = 0.01) {
  sae::SaeConfig cfg;
  cfg.d_in = cfg.d_sae = Index(norms.size());
  cfg.k = k;
  cfg.rescale_acts_by_decoder_norm = rescale;
  cfg.topk_threshold_lr = threshold_lr;
  sae::BatchTopKSAE<double> m(cfg);
  auto& p = m.parameters();
  p.colMajor("W_enc").setIdentity();
  auto W_dec = p.rowMajor("W_dec");
  W_dec.setZero();
  for (std::size_t i = 0; i < norms.size(); ++i) W_dec(Index(i), Index(i)) = norms[i];
  return m;
}

// (row, latent, value) triples of codes, in storage order.
std::vector<std::tuple<Index, Index, double>> entries(const sae::CsrCodes<double>& c) {
  std::vector<std::tuple<Index, Index, double>> out;
  for (Index e = 0; e < c.nnz(); ++e)
    out.emplace_back(c.pattern.row[e], c.pattern.latent[e], c.values[e]);
  return out;
}

using Entries = std::vector<std::tuple<Index, Index, double>>;

}  // namespace

// ------------------------------------------------------------------ kernel

TEST_CASE("BatchTopKSelector: the exact top K of a batch, ties by position, any partition",
          "[batchtopk][kernels]") {
  sae::Rng rng(3);
  const Index B = 9, n = 37;
  // Scores on a coarse grid so that many are equal; a third are <= 0.
  Mat pre(B, n);
  for (Index i = 0; i < pre.size(); ++i) pre.data()[i] = std::floor(rng.normal() * 3.0) / 2.0;
  const sae::Vector<double> bias = sae::Vector<double>::Zero(n);
  std::vector<std::pair<double, Index>> positive;
  for (Index b = 0; b < B; ++b)
    for (Index i = 0; i < n; ++i)
      if (pre(b, i) > 0) positive.emplace_back(pre(b, i), b * n + i);
  std::sort(positive.begin(), positive.end(), [](const auto& a, const auto& c) {
    return a.first > c.first || (a.first == c.first && a.second < c.second);
  });
  for (Index K : {Index(1), Index(5), Index(40), Index(positive.size()), Index(B * n)}) {
    const Index want_count = std::min<Index>(K, positive.size());
    std::vector<Index> want;
    for (Index e = 0; e < want_count; ++e) want.push_back(positive[e].second);
    std::sort(want.begin(), want.end());
    for (int threads : {1, 2, 4}) {
      sae::kernels::BatchTopKSelector<double> sel;
      sel.start(K, threads);
      // Rows dealt to the streams out of order.
      for (Index b = B - 1; b >= 0; --b)
        sel.offerRow(int(b % threads), pre.row(b).data(), bias.data(), nullptr, n, b * n);
      sae::kernels::CsrPattern pat;
      std::vector<double> scores, values;
      sel.finish(B, n, pat, scores, values);
      INFO("K " << K << " threads " << threads);
      REQUIRE(sel.selected() == want_count);
      std::vector<Index> got;
      for (Index b = 0; b < B; ++b)
        for (Index e = pat.row_start[b]; e < pat.row_start[b + 1]; ++e) {
          CHECK(pat.row[e] == b);
          if (e > pat.row_start[b]) CHECK(pat.latent[e] > pat.latent[e - 1]);
          got.push_back(b * n + pat.latent[e]);
          CHECK(scores[e] == pre(b, pat.latent[e]));
          CHECK(values[e] == pre(b, pat.latent[e]));
        }
      CHECK(got == want);
      CHECK(sel.minScore() == positive[want_count - 1].first);
    }
  }
}

// ------------------------------------------------------------------ selection semantics

TEST_CASE("BatchTopK selects the k*B largest activations of the whole batch",
          "[batchtopk][BatchTopKSAE]") {
  // h = x. Scores: row 0 = 3, -1, 2, 2; row 1 = 5, 0.5, 2, 1. k = 2, B = 2: the 4 largest are
  // 5, 3 and two of the three 2s: those at the lowest positions, (0, 2) and (0, 3).
  auto m = identityModel(2, {1, 1, 1, 1}, false);
  Mat x(2, 4);
  x << 3, -1, 2, 2, 5, 0.5, 2, 1;
  sae::BatchTopKSAE<double>::Workspace ws;
  const auto terms = m.loss(x, {}, ws);
  CHECK(entries(ws.codes) == Entries{{0, 0, 3.0}, {0, 2, 2.0}, {0, 3, 2.0}, {1, 0, 5.0}});
  CHECK(ws.codes.pattern.row_start == std::vector<Index>{0, 3, 4});
  CHECK(ws.selected == 4);
  CHECK(ws.min_activation == 2.0);
  // y = f (W_dec = I): errors are the unselected entries: row 0: -1; row 1: 0.5, 2, 1.
  CHECK(terms["mse_loss"] == Approx((1.0 + 0.25 + 4.0 + 1.0) / 2.0).epsilon(1e-14));
  CHECK(terms["auxiliary_reconstruction_loss"] == 0.0);
  CHECK(terms.terms().size() == 2);

  // k = 4 asks for 8 of 8 entries, but only 7 are positive: the 7 are taken.
  auto m4 = identityModel(4, {1, 1, 1, 1}, false);
  m4.loss(x, {}, ws);
  CHECK(ws.selected == 7);
  CHECK(ws.min_activation == 0.5);
  CHECK(ws.codes.l0() == 3.5);
}

TEST_CASE("BatchTopK with rescale selects on h * n and decodes f / n",
          "[batchtopk][BatchTopKSAE]") {
  // n = (2, 1, 0.5, 1): scores row 0 = 6, -1, 1, 2; row 1 = 10, 0.5, 1, 1. The 4 largest:
  // 10, 6, 2 (0, 3), then the 1s at (0, 2), (1, 2), (1, 3): the first by position is (0, 2).
  auto m = identityModel(2, {2, 1, 0.5, 1}, true);
  Mat x(2, 4);
  x << 3, -1, 2, 2, 5, 0.5, 2, 1;
  sae::BatchTopKSAE<double>::Workspace ws;
  const auto terms = m.loss(x, {}, ws);
  CHECK(entries(ws.codes) == Entries{{0, 0, 6.0}, {0, 2, 1.0}, {0, 3, 2.0}, {1, 0, 10.0}});
  // Decoded: (f / n) W_dec = h on the selected latents (W_dec diagonal with n).
  Mat y(2, 4);
  y << 6, 0, 1, 2, 10, 0, 0, 0;
  CHECK((ws.reconstruction - y).cwiseAbs().maxCoeff() < 1e-14);
  CHECK((m.decode(ws.codes) - y).cwiseAbs().maxCoeff() < 1e-14);
  CHECK(terms["mse_loss"] == Approx((9 + 1 + 1 + 0 + 25 + 0.25 + 4 + 1) / 2.0).epsilon(1e-14));
}

TEST_CASE("BatchTopK threshold: EMA of the smallest selected activation, only in updateBuffers",
          "[batchtopk][BatchTopKSAE]") {
  auto model = identityModel(1, {1, 1, 1}, false, 0.25);
  CHECK(model.buffers().flat("topk_threshold")[0] == 0.0);
  CHECK(model.parameters().contains("topk_threshold") == false);
  sae::BatchTopKSAE<double>::Workspace ws;

  Mat x1(2, 3);  // k * B = 2: selects 4 and 2
  x1 << 4, 1, -1, 2, 0.5, -3;
  model.loss(x1, {}, ws);
  CHECK(model.buffers().flat("topk_threshold")[0] == 0.0);  // loss() alone changes nothing
  model.updateBuffers(ws);
  CHECK(model.buffers().flat("topk_threshold")[0] == 0.25 * 2.0);

  Mat x2(2, 3);  // selects 7 and 3
  x2 << 7, 1, 3, -1, -2, 0.25;
  auto grads = model.makeGradients();
  model.backward(x2, grads, {}, ws);
  model.updateBuffers(ws);
  CHECK(model.buffers().flat("topk_threshold")[0] == 0.75 * 0.5 + 0.25 * 3.0);  // 1.125

  Mat x3(2, 3);  // nothing positive: no update
  x3 << -1, -2, -3, -4, -5, -6;
  model.loss(x3, {}, ws);
  CHECK(ws.selected == 0);
  model.updateBuffers(ws);
  CHECK(model.buffers().flat("topk_threshold")[0] == 1.125);
}

TEST_CASE("BatchTopK inference encode: p above the EMA threshold, per token",
          "[batchtopk][BatchTopKSAE]") {
  auto m = identityModel(2, {2, 1, 0.5, 1}, true);
  Mat x(2, 4);
  x << 3, -1, 2, 2, 5, 0.5, 2, 1;  // p: row 0 = 6, -1, 1, 2; row 1 = 10, 0.5, 1, 1
  m.buffers().flat("topk_threshold")[0] = 1.0;
  const auto codes = m.encode(x);
  CHECK(entries(codes) == Entries{{0, 0, 6.0}, {0, 3, 2.0}, {1, 0, 10.0}});
  m.buffers().flat("topk_threshold")[0] = 0.75;
  CHECK(entries(m.encode(x)) ==
        Entries{{0, 0, 6.0}, {0, 2, 1.0}, {0, 3, 2.0}, {1, 0, 10.0}, {1, 2, 1.0}, {1, 3, 1.0}});
  // Each row is encoded on its own: the same codes one token at a time.
  const Mat both = m.encode(x).toDense();
  for (Index b = 0; b < 2; ++b) CHECK(m.encode(x.row(b)).toDense() == both.row(b));
  // A negative buffer value acts as 0 (JumpReLU's relu(threshold)): every p > 0.
  m.buffers().flat("topk_threshold")[0] = -1.0;
  CHECK(m.encode(x).nnz() == 7);
  Mat y(2, 4);
  y << 6, 0, 1, 2, 10, 0.5, 1, 1;  // (f / n) W_dec = h * n = p on the diagonal
  CHECK((m.decode(m.encode(x)) - y).cwiseAbs().maxCoeff() < 1e-14);
}

// ------------------------------------------------------------------ losses

TEST_CASE("Matryoshka loss terms match a dense recomputation, in SAELens's order",
          "[batchtopk][MatryoshkaBatchTopKSAE]") {
  const Mat x = randomBatch(7, 6, 21);
  sae::LatentMask dead = sae::LatentMask::Zero(20);
  for (Index i = 1; i < 20; i += 3) dead[i] = 1;
  for (bool rescale : {true, false}) {
    for (bool apply : {true, false}) {
      sae::SaeConfig cfg;
      cfg.d_in = 6;
      cfg.d_sae = 20;
      cfg.k = 3;
      cfg.rescale_acts_by_decoder_norm = rescale;
      cfg.apply_b_dec_to_input = apply;
      cfg.aux_loss_coefficient = 0.7;
      cfg.matryoshka_widths = {2, 5, 13, 20};
      sae::MatryoshkaBatchTopKSAE<double> m(cfg, 4);
      perturb(m, 40, 0.3);
      sae::TrainOptions opts;
      opts.dead_mask = &dead;
      sae::MatryoshkaBatchTopKSAE<double>::Workspace ws;
      const auto terms = m.loss(x, opts, ws);
      const DenseResult ref =
          denseReference(m.parameters(), cfg, x, cfg.matryoshka_widths, &dead, nullptr);
      INFO("rescale " << rescale << " apply_b_dec " << apply);
      REQUIRE(ref.margin > 1e-9);
      const std::vector<std::string> names = {"mse_loss", "auxiliary_reconstruction_loss",
                                              "inner_mse_loss_2", "inner_mse_loss_5",
                                              "inner_mse_loss_13"};
      REQUIRE(terms.terms().size() == names.size());
      for (std::size_t t = 0; t < names.size(); ++t) CHECK(terms.terms()[t].first == names[t]);
      CHECK(terms["mse_loss"] == Approx(ref.mse).epsilon(1e-12));
      CHECK(terms["auxiliary_reconstruction_loss"] == Approx(ref.aux).epsilon(1e-12));
      CHECK(ref.aux > 0);
      for (std::size_t l = 0; l < 3; ++l)
        CHECK(terms[names[2 + l]] == Approx(ref.inner_mse[l]).epsilon(1e-12));
      CHECK(terms.total() == Approx(denseTotal(ref)).epsilon(1e-12));
      CHECK((ws.codes.toDense() - ref.f).cwiseAbs().maxCoeff() < 1e-12);
      CHECK((ws.reconstruction - ref.y).cwiseAbs().maxCoeff() < 1e-12);
      CHECK(ws.selected == ref.selected);
      CHECK(ws.min_activation == Approx(ref.min_f).epsilon(1e-14));
      // The levels really reconstruct differently (no term is a copy of another).
      std::vector<double> all = ref.inner_mse;
      all.push_back(ref.mse);
      for (std::size_t a = 0; a < all.size(); ++a)
        for (std::size_t c = a + 1; c < all.size(); ++c) CHECK(std::abs(all[a] - all[c]) > 1e-3);
    }
  }
}

TEST_CASE("Matryoshka with one level is BatchTopK", "[batchtopk][MatryoshkaBatchTopKSAE]") {
  const Mat x = randomBatch(6, 5, 22);
  sae::SaeConfig cfg;
  cfg.d_in = 5;
  cfg.d_sae = 15;
  cfg.k = 2;
  cfg.rescale_acts_by_decoder_norm = true;
  sae::BatchTopKSAE<double> plain(cfg, 9);
  perturb(plain, 10, 0.2);
  cfg.matryoshka_widths = {15};
  sae::MatryoshkaBatchTopKSAE<double> nested(cfg);
  nested.parameters() = plain.parameters();
  auto g1 = plain.makeGradients(), g2 = nested.makeGradients();
  const auto t1 = plain.backward(x, g1);
  const auto t2 = nested.backward(x, g2);
  REQUIRE(t2.terms().size() == 2);
  CHECK(t1.total() == t2.total());
  CHECK(g1.flat() == g2.flat());
}

// ------------------------------------------------------------------ gradients

namespace {

constexpr double kStep = 1e-5;
constexpr double kMargin = 1e-3;

template <typename Model>
Model gradientModel(const sae::SaeConfig& cfg, const Mat& x, const sae::LatentMask* dead) {
  for (std::uint64_t seed = 1; seed < 300; ++seed) {
    Model m(cfg, seed);
    perturb(m, 500 + seed, 0.3);
    if (denseReference(m.parameters(), cfg, x, widthsOf(m), dead, nullptr).margin > kMargin)
      return m;
  }
  FAIL("no parameter draw away from the selection boundaries");
  return Model(cfg);
}

// Central differences of the dense reference's total (AuxK residual frozen at the current
// point, as SAELens detaches it) against backward().
template <typename Model>
void checkGradients(Model& m, const Mat& x, const sae::LatentMask* dead) {
  const auto widths = widthsOf(m);
  sae::TrainOptions opts;
  opts.dead_mask = dead;
  auto grads = m.makeGradients();
  typename Model::Workspace ws;
  const auto terms = m.backward(x, grads, opts, ws);
  const DenseResult at = denseReference(m.parameters(), m.config(), x, widths, dead, nullptr);
  REQUIRE(at.margin > kMargin);
  CHECK(terms.total() == Approx(denseTotal(at)).epsilon(1e-12));
  const Mat frozen = x - at.y;
  auto& params = m.parameters();
  for (const auto& entry : params.entries()) {
    auto value = params.flat(entry.name);
    const auto analytic = grads.flat(entry.name);
    double worst = 0;
    for (Index i = 0; i < value.size(); ++i) {
      const double saved = value[i];
      value[i] = saved + kStep;
      const double up = denseTotal(denseReference(params, m.config(), x, widths, dead, &frozen));
      value[i] = saved - kStep;
      const double down = denseTotal(denseReference(params, m.config(), x, widths, dead, &frozen));
      value[i] = saved;
      const double numeric = (up - down) / (2 * kStep);
      worst = std::max(worst, std::abs(numeric - analytic[i]) /
                                  std::max({std::abs(numeric), std::abs(analytic[i]), 1e-3}));
    }
    INFO("parameter " << entry.name);
    CHECK(worst < 1e-6);
    CHECK(analytic.cwiseAbs().maxCoeff() > 1e-6);
  }
}

}  // namespace

TEMPLATE_TEST_CASE("BatchTopK-family gradients match finite differences, with and without AuxK",
                   "[batchtopk][gradients]", sae::BatchTopKSAE<double>,
                   sae::MatryoshkaBatchTopKSAE<double>) {
  const Mat x = randomBatch(5, 6, 23);
  sae::LatentMask few = sae::LatentMask::Zero(12), many = sae::LatentMask::Zero(12);
  few[2] = few[9] = 1;                            // 2 dead < d_in / 2: k_aux = 2, scale 2/3
  for (Index i = 0; i < 12; i += 2) many[i] = 1;  // 6 dead >= 3: k_aux = 3, scale 1
  const std::vector<const sae::LatentMask*> masks{nullptr, &few, &many};
  for (const sae::LatentMask* mask : masks) {
    for (bool rescale : {true, false}) {
      for (bool apply : {true, false}) {
        sae::SaeConfig cfg;
        cfg.d_in = 6;
        cfg.d_sae = 12;
        cfg.k = 2;
        cfg.rescale_acts_by_decoder_norm = rescale;
        cfg.apply_b_dec_to_input = apply;
        cfg.aux_loss_coefficient = 0.5;
        cfg.matryoshka_widths = {3, 7, 12};
        auto m = gradientModel<TestType>(cfg, x, mask);
        INFO("rescale " << rescale << " apply_b_dec " << apply << " dead "
                        << (mask ? mask->template cast<int>().sum() : 0));
        checkGradients(m, x, mask);
      }
    }
  }
}

// ------------------------------------------------------------------ determinism, validation

// `expr` throws sae::ConfigError with exactly `message`.
#define CHECK_CONFIG_ERROR(expr, message)    \
  do {                                       \
    CHECK_THROWS_AS(expr, sae::ConfigError); \
    CHECK_THROWS_WITH(expr, message);        \
  } while (false)

TEMPLATE_TEST_CASE("BatchTopK-family training steps are identical for every thread count and tile",
                   "[batchtopk]", sae::BatchTopKSAE<float>, sae::MatryoshkaBatchTopKSAE<float>) {
  sae::SaeConfig cfg;
  cfg.d_in = 24;
  cfg.d_sae = 96;
  cfg.k = 5;
  cfg.rescale_acts_by_decoder_norm = true;
  cfg.matryoshka_widths = {16, 40, 96};
  TestType m(cfg, 2);
  perturb(m, 3, 0.05);
  sae::RowMatrix<float> x = randomBatch(70, 24, 4).cast<float>();
  sae::LatentMask dead = sae::LatentMask::Zero(96);
  for (Index i = 0; i < 96; i += 5) dead[i] = 1;
  sae::TrainOptions opts;
  opts.dead_mask = &dead;
  const int saved = sae::maxThreads();
  std::vector<sae::ParameterSet<float>> grads;
  std::vector<double> totals, minima;
  for (int threads : {1, 2, 3}) {
    for (Index tile : {Index(512), Index(9)}) {
      sae::setThreads(threads);
      typename TestType::Workspace ws;
      ws.tile_rows = tile;
      auto g = m.makeGradients();
      totals.push_back(m.backward(x, g, opts, ws).total());
      minima.push_back(ws.min_activation);
      grads.push_back(g);
    }
  }
  sae::setThreads(saved);
  for (std::size_t r = 1; r < grads.size(); ++r) {
    CHECK(totals[r] == totals[0]);
    CHECK(minima[r] == minima[0]);
    CHECK(grads[r].flat() == grads[0].flat());
  }
}

TEST_CASE("BatchTopK-family configuration errors", "[batchtopk][validation]") {
  sae::SaeConfig cfg;
  cfg.d_in = 4;
  cfg.d_sae = 16;
  cfg.k = 0;
  CHECK_CONFIG_ERROR(sae::BatchTopKSAE<float>(cfg), "k must be >= 1, found 0");
  cfg.k = 17;
  CHECK_CONFIG_ERROR(sae::BatchTopKSAE<float>(cfg), "k must be <= d_sae = 16, found 17");
  cfg.k = 2;
  CHECK_NOTHROW(sae::BatchTopKSAE<float>(cfg));
  CHECK_CONFIG_ERROR(sae::MatryoshkaBatchTopKSAE<float>(cfg),
                     "matryoshka_widths must not be empty (the last width must be d_sae = 16)");
  cfg.matryoshka_widths = {4, 4, 16};
  CHECK_CONFIG_ERROR(sae::MatryoshkaBatchTopKSAE<float>(cfg),
                     "matryoshka_widths must be strictly increasing, found 4 then 4 at position 1");
  cfg.matryoshka_widths = {0, 8, 16};
  CHECK_CONFIG_ERROR(sae::MatryoshkaBatchTopKSAE<float>(cfg),
                     "matryoshka_widths must be positive, found 0 at position 0");
  cfg.matryoshka_widths = {4, 8};
  CHECK_CONFIG_ERROR(
      sae::MatryoshkaBatchTopKSAE<float>(cfg),
      "the last of matryoshka_widths must equal d_sae = 16, found 8 (append 16 as the last level)");
  cfg.matryoshka_widths = {4, 8, 32};
  CHECK_THROWS_AS(sae::MatryoshkaBatchTopKSAE<float>(cfg), sae::ConfigError);
  cfg.d_sae = 64;
  cfg.matryoshka_widths.clear();
  for (Index w = 2; w <= 64; w += 2) cfg.matryoshka_widths.push_back(w);
  CHECK_CONFIG_ERROR(sae::MatryoshkaBatchTopKSAE<float>(cfg),
                     "matryoshka_widths has 32 levels, at most 30 are supported");
  cfg.matryoshka_widths = {4, 8, 64};
  CHECK_NOTHROW(sae::MatryoshkaBatchTopKSAE<float>(cfg));
  cfg.topk_threshold_lr = 0.0;
  CHECK_CONFIG_ERROR(sae::MatryoshkaBatchTopKSAE<float>(cfg),
                     "topk_threshold_lr must be in (0, 1], found 0");
}

TEMPLATE_TEST_CASE("BatchTopK-family bf16 encoder: a step close to fp32, or a clear error",
                   "[batchtopk][bf16]", sae::BatchTopKSAE<float>,
                   sae::MatryoshkaBatchTopKSAE<float>) {
  sae::SaeConfig cfg;
  cfg.d_in = 32;
  cfg.d_sae = 256;
  cfg.k = 6;
  cfg.rescale_acts_by_decoder_norm = true;
  cfg.matryoshka_widths = {32, 256};
  TestType m(cfg, 5);
  perturb(m, 6, 0.02);
  const sae::RowMatrix<float> x = randomBatch(300, 32, 7).cast<float>();
  typename TestType::Workspace ws32, ws16;
  ws32.tile_rows = ws16.tile_rows = 128;
  ws16.bf16_encoder = true;
  auto g32 = m.makeGradients(), g16 = m.makeGradients();
  if (!sae::kernels::bf16Available()) {
    CHECK_THROWS_WITH(m.backward(x, g16, {}, ws16),
                      "bf16 precision needs oneDNN: rebuild with libdnnl-dev installed");
    return;
  }
  const double t32 = m.backward(x, g32, {}, ws32).total();
  const double t16 = m.backward(x, g16, {}, ws16).total();
  CHECK(t16 == Approx(t32).epsilon(1e-2));
  REQUIRE(ws16.selected == ws32.selected);
  // Most selected entries are the same (bf16 rounding moves only near-ties).
  const sae::RowMatrix<float> d32 = ws32.codes.toDense(), d16 = ws16.codes.toDense();
  const Index both = ((d32.array() != 0.0f) && (d16.array() != 0.0f)).count();
  CHECK(double(both) > 0.95 * double(ws32.selected));
}

// ------------------------------------------------------------------ codes consumers

namespace {

// Rows of (latent, value) pairs as CsrCodes.
sae::CsrCodes<float> csr(Index d_sae, const std::vector<std::vector<std::pair<int, float>>>& rows) {
  sae::CsrCodes<float> c;
  c.d_sae = d_sae;
  c.pattern.row_start = {0};
  for (std::size_t b = 0; b < rows.size(); ++b) {
    for (const auto& [latent, value] : rows[b]) {
      c.pattern.latent.push_back(latent);
      c.pattern.row.push_back(std::int32_t(b));
      c.values.push_back(value);
    }
    c.pattern.row_start.push_back(Index(c.values.size()));
  }
  return c;
}

}  // namespace

TEST_CASE("CsrCodes: dense form, L0, firing statistics and dead latents", "[batchtopk][codes]") {
  // Row 0 fires 0 and 2, row 1 nothing, row 2 fires 2 (latent 3 stored with a zero value).
  const auto c = csr(4, {{{0, 1.5f}, {2, 0.5f}}, {}, {{2, 2.0f}, {3, 0.0f}}});
  CHECK(c.rows() == 3);
  CHECK(c.nnz() == 4);
  sae::RowMatrix<float> dense(3, 4);
  dense << 1.5f, 0, 0.5f, 0, 0, 0, 0, 0, 0, 0, 2.0f, 0;
  CHECK(c.toDense() == dense);
  CHECK(c.l0() == Approx(1.0));
  sae::eval::FiringStats f(4);
  f.add(c);
  CHECK(f.tokens() == 3);
  CHECK(f.l0() == Approx(1.0));
  CHECK(f.density()[0] == Approx(1.0 / 3.0));
  CHECK(f.density()[2] == Approx(2.0 / 3.0));
  CHECK(f.density()[3] == 0.0);
  sae::train::DeadLatentTracker t(4, 2);
  t.update(c);                      // steps since: 0, 1, 0, 1
  t.update(csr(4, {{{1, 1.0f}}}));  // 1, 0, 1, 2
  CHECK(t.mask() == (sae::LatentMask(4) << 0, 0, 0, 1).finished());
}

// ------------------------------------------------------------------ export as JumpReLU

namespace {

// A model with decoder norms far from 1 (so that folding them matters), a batch, and an EMA
// threshold in the widest gap of the middle half of the batch's positive scores p (so that
// rounding cannot move an entry across it).
template <typename Model>
Model exportModel(bool rescale, bool apply, sae::RowMatrix<typename Model::Scalar>& x) {
  using S = typename Model::Scalar;
  sae::SaeConfig cfg;
  cfg.d_in = 8;
  cfg.d_sae = 24;
  cfg.k = 3;
  cfg.rescale_acts_by_decoder_norm = rescale;
  cfg.apply_b_dec_to_input = apply;
  cfg.matryoshka_widths = {6, 24};
  Model m(cfg, 7);
  perturb(m, 8, 0.2);
  auto W_dec = m.parameters().rowMajor("W_dec");
  for (Index i = 0; i < cfg.d_sae; ++i) W_dec.row(i) *= S(0.5 + 0.1 * double(i));
  x = randomBatch(40, 8, 9).cast<S>();
  const auto& p = m.parameters();
  const Mat W_dec_d = p.rowMajor("W_dec").template cast<double>();
  Mat h = x.template cast<double>();
  if (apply) h.rowwise() -= p.flat("b_dec").transpose().template cast<double>();
  h = (h * p.colMajor("W_enc").template cast<double>()).eval();
  h.rowwise() += p.flat("b_enc").transpose().template cast<double>();
  std::vector<double> positive;
  for (Index b = 0; b < h.rows(); ++b)
    for (Index i = 0; i < h.cols(); ++i) {
      const double v = rescale ? h(b, i) * W_dec_d.row(i).norm() : h(b, i);
      if (v > 0) positive.push_back(v);
    }
  std::sort(positive.begin(), positive.end());
  double theta = 0, gap = 0;
  for (std::size_t j = positive.size() / 4; j < 3 * positive.size() / 4; ++j)
    if (positive[j + 1] - positive[j] > gap) {
      gap = positive[j + 1] - positive[j];
      theta = 0.5 * (positive[j] + positive[j + 1]);
    }
  REQUIRE(gap > 1e-3);
  m.buffers().flat("topk_threshold")[0] = theta;
  return m;
}

// `jr` (a JumpReLU SAE) encodes and decodes `x` as `m` does, to `tol` relative.
template <typename Model, typename JumpReLU>
void checkSameFunction(const Model& m, const JumpReLU& jr,
                       const sae::RowMatrix<typename Model::Scalar>& x, double tol) {
  using S = typename Model::Scalar;
  const sae::RowMatrix<S> want = m.encode(x).toDense();
  const sae::RowMatrix<S> got = jr.encode(x).values;
  CHECK(((want.array() != S(0)) == (got.array() != S(0))).all());
  CHECK((want.array() != S(0)).count() > 20);
  CHECK((want.array() == S(0)).count() > 20);
  CHECK((got - want).cwiseAbs().maxCoeff() < tol * std::max<S>(1, want.cwiseAbs().maxCoeff()));
  const sae::RowMatrix<S> y_want = m.decode(m.encode(x));
  const sae::RowMatrix<S> y_got = jr.decode(jr.encode(x));
  CHECK((y_got - y_want).cwiseAbs().maxCoeff() <
        tol * std::max<S>(1, y_want.cwiseAbs().maxCoeff()));
}

}  // namespace

TEMPLATE_TEST_CASE("toJumpReLU: the JumpReLU SAE encodes and decodes as the BatchTopK model",
                   "[batchtopk][export]", sae::BatchTopKSAE<double>,
                   sae::MatryoshkaBatchTopKSAE<double>, sae::BatchTopKSAE<float>) {
  using S = typename TestType::Scalar;
  const double tol = std::is_same<S, double>::value ? 1e-12 : 2e-5;
  for (bool rescale : {true, false}) {
    for (bool apply : {true, false}) {
      sae::RowMatrix<S> x;
      const TestType m = exportModel<TestType>(rescale, apply, x);
      const double theta = m.buffers().flat("topk_threshold")[0];
      const auto jr = sae::toJumpReLU(m);
      INFO("rescale " << rescale << " apply_b_dec " << apply);
      CHECK(std::string(jr.architecture()) == "jumprelu");
      CHECK(jr.parameters().flat("threshold").cwiseEqual(S(theta)).all());
      if (rescale) {
        const auto n = jr.decoderNorms();
        CHECK((n.array() - S(1)).abs().maxCoeff() < tol);
      } else {
        CHECK(jr.parameters().rowMajor("W_dec") == m.parameters().rowMajor("W_dec"));
      }
      checkSameFunction(m, jr, x, tol);
    }
  }
}

TEMPLATE_TEST_CASE("A BatchTopK-family SAE round-trips through SAELens's folder as jumprelu",
                   "[batchtopk][export][saelens]", sae::BatchTopKSAE<float>,
                   sae::MatryoshkaBatchTopKSAE<float>) {
  for (bool rescale : {true, false}) {
    sae::RowMatrix<float> x;
    const TestType m = exportModel<TestType>(rescale, true, x);
    const std::string dir = sae::test::scratchDir(
        "batchtopk", std::string(TestType::architecture()) + (rescale ? "_rescale" : "_plain"));
    sae::io::saveSaeLens(m, dir);
    const auto cfg = nlohmann::json::parse(sae::test::readFile(dir + "/cfg.json"));
    CHECK(cfg.at("architecture") == "jumprelu");
    CHECK(cfg.at("metadata").at("training_architecture") == TestType::architecture());
    const auto loaded = sae::io::loadSaeLens<float>(dir);
    INFO("rescale " << rescale);
    REQUIRE(std::holds_alternative<sae::JumpReLUSAE<float>>(loaded.model));
    const auto& jr = std::get<sae::JumpReLUSAE<float>>(loaded.model);
    CHECK(jr.parameters()
              .flat("threshold")
              .cwiseEqual(float(m.buffers().flat("topk_threshold")[0]))
              .all());
    checkSameFunction(m, jr, x, 2e-5);
  }
}

// ------------------------------------------------------------------ trainer

TEMPLATE_TEST_CASE(
    "BatchTopK-family training: the loss falls, L0 is k, the run is saved as "
    "JumpReLU with the EMA threshold",
    "[batchtopk][Trainer]", sae::BatchTopKArch, sae::MatryoshkaBatchTopKArch) {
  using Source = sae::train::SyntheticSource<float>;
  const std::string arch = TestType::kName;
  sae::eval::SyntheticOptions o;
  o.d_in = 32;
  o.n_features = 64;
  o.expected_active = 3;
  sae::train::TrainerConfig cfg;
  cfg.architecture = arch;
  cfg.d_sae = 128;
  cfg.k = 4;
  if (arch == "matryoshka_batchtopk") cfg.matryoshka_widths = {16, 48, 128};
  cfg.batch_size = 256;
  cfg.total_steps = 300;
  cfg.lr = 3e-3;
  cfg.lr_decay_steps = 60;
  cfg.dead_feature_window = 50;
  cfg.log_every = 10;
  cfg.eval_rows = 2000;
  cfg.seed = 3;
  cfg.out_dir = sae::test::scratchDir("batchtopk", arch + "_train", false);
  Source src(o, 1, cfg.batch_size);
  sae::train::Trainer<float, TestType, Source> t(cfg, src);
  t.initialize();
  const auto r = t.train();
  REQUIRE(r.completed);
  const nlohmann::json fm = r.final_metrics;
  std::ifstream in(cfg.out_dir + "/metrics.jsonl");
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("losses")) lines.push_back(j);
  }
  REQUIRE(lines.size() == 30);
  const auto& first = lines.front();
  const auto& last = lines.back();
  INFO("first " << first.dump() << "\nlast " << last.dump() << "\nfinal " << fm.dump());
  CHECK(last.at("mse").get<double>() < 0.3 * first.at("mse").get<double>());
  // Training selects k * B entries per batch: L0 is k on average.
  CHECK(first.at("l0").get<double>() == Approx(4.0));
  CHECK(last.at("l0").get<double>() == Approx(4.0));
  CHECK(last.at("losses").contains("auxiliary_reconstruction_loss"));
  if (arch == "matryoshka_batchtopk") {
    CHECK(last.at("losses").contains("inner_mse_loss_16"));
    CHECK(last.at("losses").contains("inner_mse_loss_48"));
  }
  const double theta = t.model().buffers().flat("topk_threshold")[0];
  CHECK(last.at("topk_threshold").get<double>() == theta);
  CHECK(theta > 0.05);
  // Held-out evaluation runs the inference encoder (threshold): about k per token too.
  CHECK(fm.at("l0").get<double>() > 2.0);
  CHECK(fm.at("l0").get<double>() < 8.0);
  CHECK(fm.at("explained_variance").get<double>() > 0.7);
  CHECK(sae::eval::meanMaxCosineSimilarity(src.directions(),
                                           t.model().parameters().rowMajor("W_dec")) > 0.7);

  // The SAELens folder holds the JumpReLU SAE of toJumpReLU().
  const auto cfg_json = nlohmann::json::parse(sae::test::readFile(cfg.out_dir + "/cfg.json"));
  CHECK(cfg_json.at("architecture") == "jumprelu");
  CHECK(cfg_json.at("metadata").at("training_architecture") == arch);
  CHECK_FALSE(cfg_json.contains("k"));
  const sae::io::SafetensorsFile w(cfg.out_dir + "/sae_weights.safetensors");
  const auto jr = sae::toJumpReLU(t.model());
  for (const char* name : {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}) {
    INFO(name);
    const sae::RowMatrix<float> got = w.read<float>(name);
    const sae::RowMatrix<float> want = jr.parameters().rowMajorCopy(name);
    REQUIRE(got.size() == want.size());
    CHECK(std::equal(got.data(), got.data() + got.size(), want.data()));
  }
  CHECK(w.read<float>("threshold").cwiseEqual(float(theta)).all());
}

TEST_CASE("TrainerConfig: BatchTopK-family fields", "[batchtopk][Trainer]") {
  sae::train::TrainerConfig c;
  c.out_dir = "x";
  c.architecture = "batchtopk";
  c.validate();
  c.topk_threshold_lr = 0;
  CHECK_THROWS_WITH(c.validate(), "topk_threshold_lr must be in (0, 1], found 0");
  c.topk_threshold_lr = 0.2;
  c.matryoshka_widths = {8, 64};
  CHECK_THROWS_WITH(c.validate(),
                    "matryoshka_widths is for matryoshka_batchtopk only, not batchtopk");
  c.architecture = "matryoshka_batchtopk";
  c.validate();
  c.k = 0;
  CHECK_THROWS_WITH(c.validate(), "k must be positive, found 0");
  c.k = 6;
  const sae::SaeConfig sc = c.saeConfig(16);
  CHECK(sc.k == 6);
  CHECK(sc.rescale_acts_by_decoder_norm);
  CHECK(sc.topk_threshold_lr == 0.2);
  CHECK(sc.matryoshka_widths == std::vector<Index>{8, 64});
  sae::train::TrainerConfig e;
  e.updateFromJson(c.toJson(), "test");
  CHECK(e.toJson() == c.toJson());
  c.matryoshka_widths.clear();
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("matryoshka_batchtopk needs matryoshka_widths"));
}

}  // namespace sae_test_batchtopk
