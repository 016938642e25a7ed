// SAELens's downstream metrics (CE-loss recovered, KL divergence; sae/lm/model_eval.hpp).
//
// - Through the hook interface alone, with a hand-made two-layer MLP "model" whose logits and
//   cross-entropies are worked out by hand below (zero ablation gives uniform logits, so its CE
//   is log V exactly).
// - On the tiny GPT-2 against an independent computation: the three runs made here with the
//   engine's own hooks, the SAE's forward row by row, and CE / KL written out in double.
// - The special-token masking: positions holding BOS (first or mid-window) are not averaged,
//   their activations are not replaced by the SAE, and the counts say so.
// - `sae eval --model --tokens` gives the library's numbers; its bad input fails cleanly.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sae/io/npy.hpp>
#include <sae/io/saelens.hpp>
#include <sae/lm/gpt2.hpp>
#include <sae/lm/model_eval.hpp>
#include <sae/models/standard.hpp>
#include <sae/models/topk.hpp>
#include <sae/runtime/sae.hpp>
#include <support/cli_runner.hpp>
#include <support/test_support.hpp>

namespace sae_test_model_eval {

namespace {

using sae::Index;
using sae::RowMatrix;
using sae::lm::TokenMatrix;
using sae::test::checkCliFails;
using sae::test::lmDataPath;
using sae::test::runCliOk;
using sae::test::TempDir;

// log(sum(exp(l))) - l[target], in double, written out.
double crossEntropy(const std::vector<double>& logits, int target) {
  double s = 0;
  for (double l : logits) s += std::exp(l);
  return std::log(s) - logits[std::size_t(target)];
}

// KL(softmax(p) || softmax(q)) in double, written out.
double kl(const std::vector<double>& p, const std::vector<double>& q) {
  double sp = 0, sq = 0;
  for (double v : p) sp += std::exp(v);
  for (double v : q) sq += std::exp(v);
  double out = 0;
  for (std::size_t i = 0; i < p.size(); ++i) {
    const double pi = std::exp(p[i]) / sp;
    out += pi * (std::log(pi) - (q[i] - std::log(sq)));
  }
  return out;
}

// ---- A hand-made engine: logits = relu(E[token] W1) W2, hook between the two layers. ----
// Vocabulary 4 (token 3 is "BOS", the special id), width 2.
//   E  = [1 0; 0 1; 1 1; 2 -1],  W1 = I,  so h(0) = (1,0), h(1) = (0,1), h(2) = (1,1), h(3) = (2,0)
//   W2 = [2 0 1 -1; 0 2 1 0],    so logits(0) = (2,0,1,-1), logits(1) = (0,2,1,0),
//                                   logits(2) = (2,2,2,-1), logits(3) = (4,0,2,-2).
// Zero ablation of h gives logits 0: uniform, CE log 4 at every position.
// The "SAE" (standard, W_enc = I, W_dec = I/2, biases 0) halves h, so the SAE run's logits are
// half the clean ones at every non-special position.
const double kW2[2][4] = {{2, 0, 1, -1}, {0, 2, 1, 0}};
const double kE[4][2] = {{1, 0}, {0, 1}, {1, 1}, {2, -1}};

sae::lm::HookedRun mlpEngine() {
  return
      [](const TokenMatrix& tokens, const sae::lm::ActivationHook* hook, RowMatrix<float>& logits) {
        const Index rows = tokens.size();
        RowMatrix<float> h(rows, 2);
        for (Index b = 0; b < tokens.rows(); ++b)
          for (Index t = 0; t < tokens.cols(); ++t)
            for (int j = 0; j < 2; ++j)
              h(b * tokens.cols() + t, j) = float(std::max(0.0, kE[tokens(b, t)][j]));
        if (hook != nullptr) (*hook)(h, tokens);
        logits.resize(rows, 4);
        for (Index r = 0; r < rows; ++r)
          for (int v = 0; v < 4; ++v)
            logits(r, v) = float(h(r, 0) * kW2[0][v] + h(r, 1) * kW2[1][v]);
      };
}

sae::Sae<float> halvingSae() {
  sae::SaeConfig cfg;
  cfg.d_in = 2;
  cfg.d_sae = 2;
  sae::StandardSAE<float> m(cfg, 1);
  m.parameters().colMajor("W_enc").setIdentity();
  m.parameters().rowMajor("W_dec") = 0.5f * RowMatrix<float>::Identity(2, 2);
  m.parameters().flat("b_enc").setZero();
  m.parameters().flat("b_dec").setZero();
  return sae::Sae<float>(m);
}

// The tiny GPT-2 (vocab 101, n_embd 32, 2 layers, n_positions 16, BOS 100).
const std::string& tinyModel() {
  static const std::string dir = lmDataPath("tiny-gpt2");
  return dir;
}

sae::TopKSAE<float> tinySae(Index d_in) {
  sae::SaeConfig cfg;
  cfg.d_in = d_in;
  cfg.d_sae = 64;
  cfg.k = 4;
  sae::TopKSAE<float> m(cfg, 7);
  sae::test::perturb(m, 11, 0.2);
  return m;
}

TokenMatrix randomTokens(Index batch, Index seq, std::uint64_t seed, int bos) {
  sae::Rng rng(seed);
  TokenMatrix t(batch, seq);
  for (Index b = 0; b < batch; ++b)
    for (Index s = 0; s < seq; ++s) t(b, s) = std::int32_t(rng.below(100));
  if (bos >= 0)
    for (Index b = 0; b < batch; ++b) t(b, 0) = bos;
  return t;
}

std::vector<double> rowOf(const RowMatrix<float>& m, Index r) {
  std::vector<double> v(std::size_t(m.cols()));
  for (Index c = 0; c < m.cols(); ++c) v[std::size_t(c)] = m(r, c);
  return v;
}

// The metrics of `batches` computed independently: the engine's own hooks for the three runs,
// the SAE model's encode/decode per non-special row, CE and KL written out.
struct Reference {
  double ce[3] = {0, 0, 0}, kl[2] = {0, 0};
  std::int64_t ce_n = 0, kl_n = 0;
};

Reference reference(sae::lm::Gpt2Model& model, const std::string& hook,
                    const sae::TopKSAE<float>& m, const std::vector<TokenMatrix>& batches,
                    int special) {
  Reference ref;
  for (const TokenMatrix& tokens : batches) {
    const Index T = tokens.cols();
    RowMatrix<float> logits[3];
    model.forward(tokens, {}, &logits[0]);
    sae::lm::HookList splice;
    splice.add(hook, [&](sae::lm::HookActivation& a) {
      for (Index r = 0; r < a.value.rows(); ++r) {
        if (tokens(r / T, r % T) == special) continue;
        const RowMatrix<float> x = a.value.row(r);
        a.value.row(r) = m.decode(m.encode(x)).row(0);
      }
      return sae::lm::HookAction::Continue;
    });
    model.forward(tokens, splice, &logits[1]);
    sae::lm::HookList ablate;
    ablate.add(hook, [](sae::lm::HookActivation& a) {
      a.value.setZero();
      return sae::lm::HookAction::Continue;
    });
    model.forward(tokens, ablate, &logits[2]);
    for (Index b = 0; b < tokens.rows(); ++b)
      for (Index t = 0; t < T; ++t) {
        if (tokens(b, t) == special) continue;
        const Index r = b * T + t;
        const std::vector<double> p = rowOf(logits[0], r);
        if (t + 1 < T) {
          for (int i = 0; i < 3; ++i)
            ref.ce[i] += crossEntropy(rowOf(logits[i], r), tokens(b, t + 1));
          ++ref.ce_n;
        }
        ref.kl[0] += kl(p, rowOf(logits[1], r));
        ref.kl[1] += kl(p, rowOf(logits[2], r));
        ++ref.kl_n;
      }
  }
  for (double& v : ref.ce) v /= double(ref.ce_n);
  for (double& v : ref.kl) v /= double(ref.kl_n);
  return ref;
}

}  // namespace

TEST_CASE("downstream metrics through the hook interface of a hand-made MLP engine",
          "[lm][model_eval]") {
  sae::Sae<float> sae = halvingSae();
  // One window: BOS 0 1 2 1 BOS 0. Non-special positions t = 1, 2, 3, 4, 6; the last one
  // (t = 6) predicts nothing, so the CE averages t = 1..4 and the KL t = 1..4 and 6.
  TokenMatrix tokens(1, 7);
  tokens << 3, 0, 1, 2, 1, 3, 0;
  const std::vector<std::vector<double>> clean = {
      {2, 0, 1, -1}, {0, 2, 1, 0}, {2, 2, 2, -1}, {4, 0, 2, -2}};
  auto half = [](std::vector<double> v) {
    for (double& x : v) x *= 0.5;
    return v;
  };
  const std::vector<double> uniform(4, 0.0);
  // Next tokens of t = 1..4: 1, 2, 1, 3 (the next token may be special: only the position's
  // own token decides).
  const int own[4] = {0, 1, 2, 1}, next[4] = {1, 2, 1, 3};
  double ce_clean = 0, ce_sae = 0, kl_sae = 0, kl_abl = 0;
  for (int i = 0; i < 4; ++i) {
    ce_clean += crossEntropy(clean[std::size_t(own[i])], next[i]);
    ce_sae += crossEntropy(half(clean[std::size_t(own[i])]), next[i]);
  }
  ce_clean /= 4;
  ce_sae /= 4;
  for (int tok : {0, 1, 2, 1, 0}) {
    kl_sae += kl(clean[std::size_t(tok)], half(clean[std::size_t(tok)]));
    kl_abl += kl(clean[std::size_t(tok)], uniform);
  }
  kl_sae /= 5;
  kl_abl /= 5;
  // By hand: CE(logits (2,0,1,-1), target 1) = log(e^2 + 1 + e + e^-1) - 0 = 2.4401896...
  CHECK(crossEntropy(clean[0], 1) == Approx(2.4401896).epsilon(1e-7));

  const sae::lm::DownstreamMetrics m = sae::lm::evaluateDownstream(mlpEngine(), sae, {tokens}, {3});
  CHECK(m.sequences == 1);
  CHECK(m.tokens == 7);
  CHECK(m.ce_positions == 4);
  CHECK(m.kl_positions == 5);
  CHECK(m.ce_loss_with_ablation == Approx(std::log(4.0)).epsilon(1e-12));
  CHECK(m.ce_loss_without_sae == Approx(ce_clean).epsilon(1e-7));
  CHECK(m.ce_loss_with_sae == Approx(ce_sae).epsilon(1e-7));
  CHECK(m.kl_div_with_sae == Approx(kl_sae).epsilon(1e-6));
  CHECK(m.kl_div_with_ablation == Approx(kl_abl).epsilon(1e-6));
  CHECK(m.ce_loss_score ==
        Approx((std::log(4.0) - ce_sae) / (std::log(4.0) - ce_clean)).epsilon(1e-6));
  CHECK(m.kl_div_score == Approx((kl_abl - kl_sae) / kl_abl).epsilon(1e-6));
  CHECK(m.ce_loss_score > 0.0);
  CHECK(m.ce_loss_score < 1.0);

  // An exact SAE (W_dec = I) recovers everything: score 1, KL 0.
  sae::SaeConfig cfg;
  cfg.d_in = 2;
  cfg.d_sae = 2;
  sae::StandardSAE<float> exact(cfg, 1);
  exact.parameters().colMajor("W_enc").setIdentity();
  exact.parameters().rowMajor("W_dec").setIdentity();
  exact.parameters().flat("b_enc").setZero();
  exact.parameters().flat("b_dec").setZero();
  sae::Sae<float> identity(exact);
  const auto e = sae::lm::evaluateDownstream(mlpEngine(), identity, {tokens}, {3});
  CHECK(e.ce_loss_score == Approx(1.0).epsilon(1e-12));
  CHECK(e.kl_div_with_sae == Approx(0.0).margin(1e-12));
  CHECK(e.kl_div_score == Approx(1.0).epsilon(1e-12));
}

TEST_CASE("the SAE splice replaces non-special rows by the SAE's forward only",
          "[lm][model_eval]") {
  const sae::TopKSAE<float> m = tinySae(32);
  sae::Sae<float> sae(m);
  TokenMatrix tokens = randomTokens(2, 5, 4, 100);
  tokens(1, 3) = 100;
  RowMatrix<float> a = sae::test::randomBatch<float>(10, 32, 5, 1.0);
  const RowMatrix<float> before = a;
  sae::lm::SaeSplice splice(sae, {100});
  splice(a, tokens);
  for (Index r = 0; r < 10; ++r) {
    const bool special = tokens(r / 5, r % 5) == 100;
    const RowMatrix<float> x = before.row(r);
    const RowMatrix<float> want = special ? x : m.decode(m.encode(x));
    // The facade's batched decode may round differently from the model's one-row call.
    CHECK(RowMatrix<float>(a.row(r)).isApprox(want, 1e-5f));
    if (special) CHECK(RowMatrix<float>(a.row(r)) == x);
  }
  CHECK(splice.reconstruction().tokens() == 7);  // 10 rows, 3 of them BOS

  // A width the SAE does not read is a ConfigError naming both widths.
  RowMatrix<float> wrong(10, 16);
  CHECK_THROWS_WITH(splice(wrong, tokens), Catch::Contains("d_in = 32") && Catch::Contains("16"));
}

TEST_CASE("downstream metrics of the tiny GPT-2 equal an independent computation",
          "[lm][model_eval]") {
  sae::lm::Gpt2Model model = sae::lm::Gpt2Model::load(tinyModel());
  const std::string hook =
      GENERATE(std::string("blocks.1.hook_resid_pre"), std::string("blocks.0.hook_mlp_out"));
  const sae::TopKSAE<float> m = tinySae(32);
  sae::Sae<float> sae(m);
  // Two batches of different lengths, BOS first, one BOS in the middle of a window.
  std::vector<TokenMatrix> batches = {randomTokens(3, 16, 21, 100), randomTokens(2, 9, 22, 100)};
  batches[0](1, 7) = 100;
  const Reference ref = reference(model, hook, m, batches, 100);

  const sae::lm::DownstreamMetrics got =
      sae::lm::evaluateDownstream(sae::lm::gpt2Run(model, hook), sae, batches, {100});
  CHECK(got.sequences == 5);
  CHECK(got.tokens == 3 * 16 + 2 * 9);
  // Non-special positions: 3 * 15 - 1 (the mid-window BOS) + 2 * 8; those predicting: minus
  // the last of each window.
  CHECK(got.kl_positions == 3 * 15 - 1 + 2 * 8);
  CHECK(got.ce_positions == 3 * 14 - 1 + 2 * 7);
  CHECK(got.kl_positions == ref.kl_n);
  CHECK(got.ce_positions == ref.ce_n);
  // The clean and ablation runs are the same float computation (1e-9); the SAE run differs by
  // the facade's float rounding of the decode (1e-6).
  CHECK(got.ce_loss_without_sae == Approx(ref.ce[0]).epsilon(1e-9));
  CHECK(got.ce_loss_with_sae == Approx(ref.ce[1]).epsilon(1e-6));
  CHECK(got.ce_loss_with_ablation == Approx(ref.ce[2]).epsilon(1e-9));
  CHECK(got.kl_div_with_sae == Approx(ref.kl[0]).epsilon(1e-5));
  CHECK(got.kl_div_with_ablation == Approx(ref.kl[1]).epsilon(1e-7));
  CHECK(got.ce_loss_score ==
        Approx((ref.ce[2] - ref.ce[1]) / (ref.ce[2] - ref.ce[0])).epsilon(1e-5));
  CHECK(got.kl_div_score == Approx((ref.kl[1] - ref.kl[0]) / ref.kl[1]).epsilon(1e-5));
  // A random SAE is worse than the clean model and the ablation changes something.
  CHECK(got.ce_loss_with_ablation != Approx(got.ce_loss_without_sae));
  CHECK(got.kl_div_with_sae > 0.0);

  // Without special tokens every position counts, and BOS rows go through the SAE too.
  const auto all = sae::lm::evaluateDownstream(sae::lm::gpt2Run(model, hook), sae, batches, {});
  CHECK(all.kl_positions == 3 * 16 + 2 * 9);
  CHECK(all.ce_positions == 3 * 15 + 2 * 8);
  CHECK(all.kl_div_with_sae != Approx(got.kl_div_with_sae));

  // An unknown hook name is a ConfigError naming it.
  CHECK_THROWS_AS(sae::lm::gpt2Run(model, "blocks.7.hook_resid_pre"), sae::ConfigError);
}

TEST_CASE("sae eval --model gives the library's metrics; bad input fails cleanly",
          "[cli][lm][model_eval]") {
  TempDir dir("cli_model_eval");
  const std::string hook = "blocks.1.hook_resid_pre";
  const sae::TopKSAE<float> m = tinySae(32);
  sae::io::SaeLensSaveOptions so;
  so.metadata["hook_name"] = hook;
  const std::string run = dir.file("sae");
  sae::io::saveSaeLens(m, run, so);
  std::vector<std::int32_t> ids(100);
  sae::Rng rng(31);
  for (auto& id : ids) id = static_cast<std::int32_t>(rng.below(100));
  ids[40] = 100;  // an end of text in the middle
  sae::io::writeNpyInt32(dir.file("ids.npy"), ids);

  const auto r = runCliOk({"eval", "--sae", run, "--model", tinyModel(), "--tokens",
                           dir.file("ids.npy"), "--context", "12", "--batch-size", "4"});
  const nlohmann::json j = nlohmann::json::parse(r.out);
  CHECK(r.err.find("eval: batch") != std::string::npos);  // the progress line
  CHECK(j.at("hook_name") == hook);
  CHECK(j.at("context_size") == 12);
  CHECK(j.at("special_tokens") == nlohmann::json::array({100}));

  // The same windows by hand: BOS + 11 ids each (9 full ones, then one of BOS + 1 id).
  std::vector<TokenMatrix> batches;
  TokenMatrix full(9, 12);
  for (Index w = 0; w < 9; ++w) {
    full(w, 0) = 100;
    for (Index t = 1; t < 12; ++t) full(w, t) = ids[std::size_t(w * 11 + t - 1)];
  }
  batches.push_back(full.topRows(4));
  batches.push_back(full.middleRows(4, 4));
  batches.push_back(full.bottomRows(1));
  TokenMatrix last(1, 2);
  last << 100, ids[99];
  batches.push_back(last);
  sae::lm::Gpt2Model model = sae::lm::Gpt2Model::load(tinyModel());
  sae::Sae<float> sae(m);
  const auto want = sae::lm::evaluateDownstream(sae::lm::gpt2Run(model, hook), sae, batches, {100});
  CHECK(j.at("sequences") == 10);
  CHECK(j.at("tokens") == 9 * 12 + 2);
  CHECK(j.at("ce_positions") == want.ce_positions);
  CHECK(j.at("kl_positions") == want.kl_positions);
  CHECK(j.at("rows") == 99);  // every id but the BOS at 40; the window BOS are not counted
  for (const char* key :
       {"ce_loss_without_sae", "ce_loss_with_sae", "ce_loss_with_ablation", "ce_loss_score",
        "kl_div_with_sae", "kl_div_with_ablation", "kl_div_score"}) {
    const double w = key == std::string("ce_loss_without_sae")     ? want.ce_loss_without_sae
                     : key == std::string("ce_loss_with_sae")      ? want.ce_loss_with_sae
                     : key == std::string("ce_loss_with_ablation") ? want.ce_loss_with_ablation
                     : key == std::string("ce_loss_score")         ? want.ce_loss_score
                     : key == std::string("kl_div_with_sae")       ? want.kl_div_with_sae
                     : key == std::string("kl_div_with_ablation")  ? want.kl_div_with_ablation
                                                                   : want.kl_div_score;
    INFO(key);  // the program is built with other flags: float rounding of the forward differs
    CHECK(j.at(key).get<double>() == Approx(w).epsilon(1e-5));
  }
  // --batches caps the number of batches.
  const auto capped = nlohmann::json::parse(
      runCliOk({"eval", "--sae", run, "--model", tinyModel(), "--tokens", dir.file("ids.npy"),
                "--context", "12", "--batch-size", "4", "--batches", "1", "--quiet"})
          .out);
  CHECK(capped.at("sequences") == 4);

  const std::string ids_path = dir.file("ids.npy");
  checkCliFails({"eval", "--sae", run, "--model", tinyModel(), "--tokens", ids_path, "--hook",
                 "blocks.0.hook_resid_pre"},
                "disagrees with the hook");
  checkCliFails({"eval", "--sae", run, "--model", tinyModel(), "--tokens", ids_path, "--hook",
                 "blocks.9.hook_resid_pre", "--force"},
                "blocks.9.hook_resid_pre");
  checkCliFails({"eval", "--sae", run, "--model", tinyModel(), "--tokens", ids_path, "--hook",
                 "blocks.0.mlp.hook_post", "--force"},
                "has width 128");
  checkCliFails(
      {"eval", "--sae", run, "--model", tinyModel(), "--tokens", ids_path, "--context", "17"},
      "--context 17");
  checkCliFails(
      {"eval", "--sae", run, "--model", tinyModel(), "--tokens", ids_path, "--data", ids_path},
      "--data");
  std::vector<std::int32_t> bad = ids;
  bad[5] = 101;
  sae::io::writeNpyInt32(dir.file("bad.npy"), bad);
  checkCliFails({"eval", "--sae", run, "--model", tinyModel(), "--tokens", dir.file("bad.npy"),
                 "--context", "12"},
                "token id 101 at index 5");
  // --force evaluates at another hook of the same width.
  const auto forced = nlohmann::json::parse(
      runCliOk({"eval", "--sae", run, "--model", tinyModel(), "--tokens", ids_path, "--hook",
                "blocks.0.hook_resid_post", "--force", "--quiet", "--context", "12"})
          .out);
  CHECK(forced.at("hook_name") == "blocks.0.hook_resid_post");
}

}  // namespace sae_test_model_eval
