// `sae generate` and `sae attribute` through the program, on the reference model
// (models/ref-gpt2) and an SAE trained on its blocks.2.hook_resid_pre (tests/data/lm/ref-sae,
// made as its README.md says).
//
// generate: without an SAE it is the engine's own greedy generate(); an edit that changes no
// code (ablating an inactive feature, steering by 0) changes nothing; steering by c W_dec[f]
// gives the logits of a forward that adds c W_dec[f] by hand, and moves them along W_dec[f] W_U;
// a feature that fires mostly on French text, steered into an English prompt, raises the
// probability of French-only next tokens (measured here, margins stated below).
//
// --clamp of an inactive feature adds v W_dec[f] / ||W_dec[f]|| (the SAE rescales by decoder norm).
//
// attribute: every active feature's activation, dla and contribution equal a computation done
// here in double, sorted by |contribution|, and their sum is (x_hat - b_dec) . W_U[:, target].
//
// eval --features --model: every feature's top and bottom logits are the largest and smallest
// entries of its direct effect (W_dec[f] / ||W_dec[f]||) . W_U, computed here in double.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sae/io/npy.hpp>
#include <sae/lm/gpt2.hpp>
#include <sae/lm/tokenizer.hpp>
#include <sae/runtime/sae.hpp>
#include <support/cli_runner.hpp>
#include <support/test_support.hpp>

namespace sae_test_cli_generate {

namespace {

using sae::test::checkCliFails;
using sae::test::lmDataPath;
using sae::test::readFile;
using sae::test::runCliOk;
using json = nlohmann::json;
using Ids = std::vector<std::int32_t>;

const std::string kHook = "blocks.2.hook_resid_pre";

const std::string& modelDir() {
  static const std::string dir = std::string(SAE_TEST_DATA_DIR) + "/../../models/ref-gpt2";
  return dir;
}
const std::string& saeDir() {
  static const std::string dir = lmDataPath("ref-sae");
  return dir;
}
sae::lm::Gpt2Model& model() {
  static sae::lm::Gpt2Model m = sae::lm::Gpt2Model::load(modelDir());
  return m;
}
const sae::lm::Gpt2Tokenizer& tokenizer() {
  static const sae::lm::Gpt2Tokenizer t = sae::lm::Gpt2Tokenizer::fromDirectory(modelDir());
  return t;
}
const sae::io::LoadedSae<float>& loadedSae() {
  static const sae::io::LoadedSae<float> s = sae::io::loadSae<float>(saeDir());
  return s;
}

Ids withBos(const std::string& text) {
  Ids ids{tokenizer().eotId()};
  const Ids body = tokenizer().encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

// W_dec [d_sae, d_in] of the test SAE, in double.
Eigen::MatrixXd decoder() {
  return sae::Sae<float>(loadedSae()).visitModel([](const auto& m) {
    return Eigen::MatrixXd(m.parameters().rowMajor("W_dec").template cast<double>());
  });
}
Eigen::VectorXd decoderBias() {
  return sae::Sae<float>(loadedSae()).visitModel([](const auto& m) {
    return Eigen::VectorXd(m.parameters().flat("b_dec").template cast<double>());
  });
}

// The hook's rows for `ids` (one sequence).
sae::RowMatrix<float> hookRows(const Ids& ids) {
  sae::RowMatrix<float> rows;
  sae::lm::HookList hooks;
  hooks.addReader(kHook, [&](const sae::lm::HookActivation& a) { rows = a.value; });
  model().forward(ids.data(), 1, static_cast<sae::Index>(ids.size()), hooks, nullptr);
  return rows;
}

// Logits of every position of `ids`, with `alpha` * direction added to every hook row by hand.
sae::RowMatrix<float> steeredLogits(const Ids& ids, const Eigen::VectorXd& direction,
                                    double alpha) {
  sae::lm::HookList hooks;
  const Eigen::RowVectorXf add = (alpha * direction).cast<float>().transpose();
  if (alpha != 0.0)
    hooks.add(kHook, [&](sae::lm::HookActivation& a) {
      for (sae::Index r = 0; r < a.value.rows(); ++r) a.value.row(r) += add;
      return sae::lm::HookAction::Continue;
    });
  sae::RowMatrix<float> logits;
  model().forward(ids.data(), 1, static_cast<sae::Index>(ids.size()), hooks, &logits);
  return logits;
}

// Softmax of one row, in double.
Eigen::VectorXd softmax(const sae::RowMatrix<float>& logits, sae::Index row) {
  const Eigen::VectorXd l = logits.row(row).transpose().cast<double>();
  const Eigen::VectorXd e = (l.array() - l.maxCoeff()).exp().matrix();
  return e / e.sum();
}

// Direct logit effect W_dec[f] . W_U over the vocabulary, in double.
Eigen::VectorXd effectOf(const Eigen::VectorXd& direction) {
  return model().tokenEmbedding().cast<double>() * direction;
}

std::vector<std::string> generateArgs(const std::string& prompt, int n) {
  return {"generate", "--model",          modelDir(),        "--prompt",
          prompt,     "--max-new-tokens", std::to_string(n), "--json"};
}

json runJson(const std::vector<std::string>& args) { return json::parse(runCliOk(args).out); }

// The same tokens and text, and the same top logits to float rounding (a hooked forward may
// round differently from an unhooked one).
void sameOutput(const json& got, const json& want) {
  CHECK(got.at("ids") == want.at("ids"));
  CHECK(got.at("text") == want.at("text"));
  REQUIRE(got.at("steps").size() == want.at("steps").size());
  for (std::size_t s = 0; s < got["steps"].size(); ++s)
    for (std::size_t i = 0; i < 5; ++i) {
      const json& g = got["steps"][s]["top_logits"][i];
      const json& w = want["steps"][s]["top_logits"][i];
      CHECK(g.at("token") == w.at("token"));
      CHECK(g.at("logit").get<double>() == Approx(w.at("logit").get<double>()).epsilon(1e-5));
    }
}

const std::string kPrompt = "The following options are supported by the command";

}  // namespace

TEST_CASE("sae generate without an SAE is the engine's greedy generate()", "[cli][lm][generate]") {
  const Ids prompt = withBos(kPrompt);
  const Ids want = model().generate(prompt, 12);
  const json j = runJson(generateArgs(kPrompt, 12));
  CHECK(j.at("prompt").get<std::string>() == kPrompt);
  CHECK(j.at("prompt_ids").get<Ids>() == prompt);
  REQUIRE(j.at("ids").get<Ids>() == want);
  CHECK(j.at("text").get<std::string>() == kPrompt + tokenizer().decode(want));
  REQUIRE(j.at("steps").size() == want.size());
  for (std::size_t s = 0; s < want.size(); ++s) {
    const json& step = j["steps"][s];
    CHECK(step.at("token").get<std::int32_t>() == want[s]);
    const json& top = step.at("top_logits");
    REQUIRE(top.size() == 5);
    CHECK(top[0].at("token").get<std::int32_t>() == want[s]);  // greedy: the top logit
    for (std::size_t i = 1; i < top.size(); ++i)
      CHECK(top[i - 1].at("logit").get<double>() >= top[i].at("logit").get<double>());
  }
  // The plain output is the same text.
  const auto plain =
      runCliOk({"generate", "--model", modelDir(), "--prompt", kPrompt, "--max-new-tokens", "12"});
  CHECK(plain.out == kPrompt + tokenizer().decode(want) + "\n");
  // Without BOS the engine sees the prompt alone.
  const Ids bare = tokenizer().encode(kPrompt);
  auto args = generateArgs(kPrompt, 4);
  args.push_back("--no-prepend-bos");
  CHECK(runJson(args).at("ids").get<Ids>() == model().generate(bare, 4));
}

TEST_CASE("sae generate: an edit that changes no code changes nothing", "[cli][lm][generate]") {
  const json plain = runJson(generateArgs(kPrompt, 8));
  Ids all = plain.at("prompt_ids").get<Ids>();
  for (std::int32_t t : plain.at("ids").get<Ids>()) all.push_back(t);
  // A feature no row of the whole sequence uses.
  sae::Sae<float> sae(loadedSae());
  const sae::RowMatrix<float> codes = [&] {
    sae::Sae<float>::Codes c;
    sae.encode(hookRows(all), c);
    return c.toDense();
  }();
  sae::Index idle = -1;
  for (sae::Index f = 0; f < codes.cols() && idle < 0; ++f)
    if ((codes.col(f).array() == 0.0f).all()) idle = f;
  REQUIRE(idle >= 0);
  auto ablate = generateArgs(kPrompt, 8);
  ablate.insert(ablate.end(), {"--sae", saeDir(), "--ablate", std::to_string(idle)});
  sameOutput(runJson(ablate), plain);
  auto zero = generateArgs(kPrompt, 8);
  zero.insert(zero.end(), {"--sae", saeDir(), "--steer", "7:0"});
  sameOutput(runJson(zero), plain);
}

TEST_CASE("sae generate --clamp of an inactive feature adds v W_dec[f] / ||W_dec[f]||",
          "[cli][lm][generate]") {
  // The SAE decodes (f / ||W_dec[f]||) W_dec[f] (rescale_acts_by_decoder_norm): setting an
  // inactive feature's code to v adds v W_dec[f] / ||W_dec[f]|| to the row, error term kept.
  const Ids prompt = withBos(kPrompt);
  const sae::Index last = static_cast<sae::Index>(prompt.size()) - 1;
  sae::Sae<float> sae(loadedSae());
  sae::Sae<float>::Codes c;
  sae.encode(hookRows(prompt), c);
  const sae::RowMatrix<float> codes = c.toDense();
  sae::Index idle = -1;
  for (sae::Index f = 0; f < codes.cols() && idle < 0; ++f)
    if ((codes.col(f).array() == 0.0f).all()) idle = f;
  REQUIRE(idle >= 0);
  const Eigen::VectorXd d = decoder().row(idle).transpose();
  auto args = generateArgs(kPrompt, 1);
  args.insert(args.end(), {"--sae", saeDir(), "--clamp", std::to_string(idle) + "=30"});
  const json j = runJson(args);
  const sae::RowMatrix<float> by_hand = steeredLogits(prompt, d / d.norm(), 30.0);
  const sae::RowMatrix<float> plain = steeredLogits(prompt, d, 0.0);
  double moved = 0.0;
  for (const json& t : j["steps"][0]["top_logits"]) {
    const std::int32_t tok = t.at("token").get<std::int32_t>();
    CHECK(t.at("logit").get<double>() == Approx(by_hand(last, tok)).margin(1e-3));
    moved = std::max(moved, std::abs(double(by_hand(last, tok) - plain(last, tok))));
  }
  CHECK(moved > 0.1);  // the clamp did change the logits
}

TEST_CASE("sae generate --steer adds c W_dec[f] and moves the logits along W_dec[f] W_U",
          "[cli][lm][generate]") {
  const sae::Index f = 3;
  const double c = 40.0;
  const Eigen::VectorXd d = decoder().row(f).transpose();
  const Ids prompt = withBos(kPrompt);
  const sae::Index last = static_cast<sae::Index>(prompt.size()) - 1;
  // Step 1's logits from the program equal a forward that adds c d by hand.
  auto args = generateArgs(kPrompt, 1);
  args.insert(args.end(), {"--sae", saeDir(), "--steer", std::to_string(f) + ":40"});
  const json j = runJson(args);
  const sae::RowMatrix<float> by_hand = steeredLogits(prompt, d, c);
  for (const json& t : j["steps"][0]["top_logits"])
    CHECK(t.at("logit").get<double>() ==
          Approx(by_hand(last, t.at("token").get<std::int32_t>())).margin(1e-3));
  // The token W_dec[f] W_U favours most gains probability.
  const Eigen::VectorXd effect = effectOf(d);
  Eigen::Index best = 0;
  effect.maxCoeff(&best);
  const double p0 = softmax(steeredLogits(prompt, d, 0.0), last)[best];
  const double p1 = softmax(by_hand, last)[best];
  INFO("token " << best << ": p unsteered " << p0 << ", steered " << p1);
  CHECK(p1 > p0 + 0.05);
  CHECK(p1 > 2 * p0);
}

TEST_CASE("sae generate: steering a French feature into English text favours French tokens",
          "[cli][lm][generate]") {
  // Per source of the held-out text, how often each feature fires (the SAE encoded here).
  const std::vector<std::string> sources = {"man-en", "man-fr", "man-de", "man-es",
                                            "bible",  "python", "c"};
  sae::Sae<float> sae(loadedSae());
  const sae::Index d_sae = sae.dSae();
  std::vector<std::vector<double>> fires(sources.size(), std::vector<double>(d_sae, 0.0));
  std::vector<std::set<std::int32_t>> vocab(sources.size());
  std::vector<double> rows(sources.size(), 0.0);
  for (std::size_t s = 0; s < sources.size(); ++s) {
    const std::string text = readFile(modelDir() + "/heldout/" + sources[s] + ".txt");
    const Ids body = tokenizer().encode(text);
    vocab[s].insert(body.begin(), body.end());
    for (std::size_t at = 0; at + 127 <= body.size(); at += 127) {
      Ids w{tokenizer().eotId()};
      w.insert(w.end(), body.begin() + std::ptrdiff_t(at), body.begin() + std::ptrdiff_t(at + 127));
      sae::Sae<float>::Codes c;
      const sae::RowMatrix<float> x = hookRows(w).bottomRows(127);
      sae.encode(x, c);
      const sae::RowMatrix<float> dense = c.toDense();
      for (sae::Index r = 0; r < dense.rows(); ++r)
        for (sae::Index f = 0; f < d_sae; ++f)
          if (dense(r, f) > 0) fires[s][std::size_t(f)] += 1;
      rows[s] += 127;
    }
  }
  // The most French-specific feature: the largest share of its firing rate (summed over the
  // sources' rates) on man-fr, among the features firing on at least 1% of French rows.
  sae::Index french = -1;
  double best_share = 0.0;
  for (sae::Index f = 0; f < d_sae; ++f) {
    double total = 0.0;
    for (std::size_t s = 0; s < sources.size(); ++s) total += fires[s][std::size_t(f)] / rows[s];
    const double fr = fires[1][std::size_t(f)] / rows[1];
    if (fr < 0.01) continue;
    if (fr / total > best_share) {
      best_share = fr / total;
      french = f;
    }
  }
  REQUIRE(french >= 0);
  INFO("French feature " << french << ": " << best_share << " of its firing rate on man-fr");
  CHECK(best_share > 0.95);

  // French-only tokens: in the French held-out text, in no other source's.
  std::vector<std::int32_t> french_only;
  for (std::int32_t t : vocab[1]) {
    bool elsewhere = false;
    for (std::size_t s = 0; s < sources.size(); ++s)
      if (s != 1 && vocab[s].count(t)) elsewhere = true;
    if (!elsewhere) french_only.push_back(t);
  }
  REQUIRE(french_only.size() > 100);

  // Their total probability at the next position of an English prompt, steered or not, from a
  // forward that adds c W_dec[f] by hand.
  const std::string english = "The following options are supported: the name of the file";
  const Ids prompt = withBos(english);
  const sae::Index last = static_cast<sae::Index>(prompt.size()) - 1;
  const Eigen::VectorXd d = decoder().row(french).transpose();
  auto mass = [&](double c) {
    const Eigen::VectorXd p = softmax(steeredLogits(prompt, d, c), last);
    double m = 0.0;
    for (std::int32_t t : french_only) m += p[t];
    return m;
  };
  // c = 40: about twice the norm of the hook's row at the last position (21.6); W_dec rows
  // have norm 1.
  const double coef = 40.0;
  const double m0 = mass(0.0), m1 = mass(coef);
  INFO("French-only mass: unsteered " << m0 << ", steered (c = " << coef << ") " << m1);
  CHECK(m1 > m0 + 0.03);
  CHECK(m1 > 3 * m0);

  // The program's steered step-1 logits are those of the forward above.
  auto args = generateArgs(english, 1);
  args.insert(args.end(), {"--sae", saeDir(), "--steer", std::to_string(french) + ":40"});
  const json j = runJson(args);
  const sae::RowMatrix<float> by_hand = steeredLogits(prompt, d, coef);
  for (const json& t : j["steps"][0]["top_logits"])
    CHECK(t.at("logit").get<double>() ==
          Approx(by_hand(last, t.at("token").get<std::int32_t>())).margin(1e-3));
}

TEST_CASE("sae attribute: contributions equal a direct computation", "[cli][lm][attribute]") {
  const std::string prompt = "The options of the command are";
  const Ids ids = withBos(prompt);
  const sae::Index last = static_cast<sae::Index>(ids.size()) - 1;
  sae::RowMatrix<float> logits;
  model().forward(ids.data(), 1, last + 1, sae::lm::HookList(), &logits);
  Eigen::Index argmax = 0;
  logits.row(last).maxCoeff(&argmax);

  const json j = runJson({"attribute", "--sae", saeDir(), "--model", modelDir(), "--prompt", prompt,
                          "--top", "100000", "--json"});
  CHECK(j.at("hook_name").get<std::string>() == kHook);
  CHECK(j.at("target").get<Eigen::Index>() == argmax);  // default: the model's own prediction
  CHECK(j.at("position").get<sae::Index>() == last);

  // By hand: the codes of the row, W_dec rows . wte[target] in double. The SAE decodes
  // (f / ||W_dec[f]||) W_dec[f] (cfg.json: rescale_acts_by_decoder_norm), so its rows in the
  // hook's units are W_dec[f] / ||W_dec[f]||.
  REQUIRE(loadedSae().config.sae_cfg.rescale_acts_by_decoder_norm);
  const sae::RowMatrix<float> x = hookRows(ids).row(last);
  sae::Sae<float> sae(loadedSae());
  sae::Sae<float>::Codes c;
  sae.encode(x, c);
  const sae::RowMatrix<float> dense = c.toDense();
  const Eigen::MatrixXd W_dec = decoder();
  const Eigen::VectorXd u = model().tokenEmbedding().row(argmax).transpose().cast<double>();
  std::map<sae::Index, double> want;
  double total = 0.0;
  for (sae::Index f = 0; f < dense.cols(); ++f)
    if (dense(0, f) != 0.0f) {
      want[f] = double(dense(0, f)) * W_dec.row(f).dot(u) / W_dec.row(f).norm();
      total += want[f];
    }
  const json& feats = j.at("features");
  REQUIRE(feats.size() == want.size());
  REQUIRE(j.at("active_features").get<std::size_t>() == want.size());
  double prev = 1e300;
  for (const json& e : feats) {
    const sae::Index f = e.at("feature").get<sae::Index>();
    REQUIRE(want.count(f) == 1);
    CHECK(e.at("activation").get<double>() == Approx(dense(0, f)).epsilon(1e-6));
    CHECK(e.at("dla").get<double>() ==
          Approx(W_dec.row(f).dot(u) / W_dec.row(f).norm()).epsilon(1e-6).margin(1e-7));
    CHECK(e.at("contribution").get<double>() == Approx(want[f]).epsilon(1e-6).margin(1e-7));
    const double mag = std::abs(e.at("contribution").get<double>());
    CHECK(mag <= prev);
    prev = mag;
    CHECK(e.at("top_logits").size() == 5);
    CHECK(e.at("bottom_logits").size() == 5);
  }
  // Their sum is (x_hat - b_dec) . W_U[:, target].
  sae::RowMatrix<float> x_hat;
  sae.forward(x, x_hat);
  const double recon = (x_hat.row(0).transpose().cast<double>() - decoderBias()).dot(u);
  CHECK(j.at("total_contribution").get<double>() == Approx(total).epsilon(1e-6));
  CHECK(total == Approx(recon).epsilon(1e-4).margin(1e-4));

  // A named target and top-5 of the direct effect of the first feature, by hand.
  const Ids the = tokenizer().encode(" the");
  REQUIRE(the.size() == 1);
  const json k = runJson({"attribute", "--sae", saeDir(), "--model", modelDir(), "--prompt", prompt,
                          "--target", " the", "--top", "3", "--json"});
  CHECK(k.at("target").get<std::int32_t>() == the[0]);
  REQUIRE(k.at("features").size() == 3);
  const sae::Index f0 = k["features"][0].at("feature").get<sae::Index>();
  const Eigen::VectorXd effect = effectOf(W_dec.row(f0).transpose() / W_dec.row(f0).norm());
  Eigen::Index top = 0;
  effect.maxCoeff(&top);
  CHECK(k["features"][0]["top_logits"][0].at("token").get<Eigen::Index>() == top);
  CHECK(k["features"][0]["top_logits"][0].at("effect").get<double>() ==
        Approx(effect[top]).epsilon(1e-4));
}

TEST_CASE("sae eval --features --model: top and bottom logits are each feature's direct effect",
          "[cli][lm][features]") {
  const std::string dir = sae::test::scratchDir("generate", "logits");
  const std::string x = dir + "/x.npy", out = dir + "/features.json";
  sae::io::writeNpy(x, hookRows(withBos("The options of the command. Les options de la commande")));
  runCliOk({"eval", "--sae", saeDir(), "--data", x, "--features", out, "--model", modelDir()});
  const json j = json::parse(readFile(out));
  CHECK(j.at("summary").at("model").get<std::string>() == modelDir());
  const json& feats = j.at("features");
  REQUIRE(feats.size() == 1024);
  const Eigen::MatrixXd W_dec = decoder();
  // 15 features spread over the dictionary, so over the library's blocks of 256 features.
  for (std::size_t f = 0; f < 1024; f += 73) {
    INFO("feature " << f);
    const json& fj = feats[f];
    REQUIRE(fj.at("feature").get<std::size_t>() == f);
    const Eigen::VectorXd effect =
        effectOf(W_dec.row(Eigen::Index(f)).transpose() / W_dec.row(Eigen::Index(f)).norm());
    std::vector<double> sorted(effect.data(), effect.data() + effect.size());
    std::sort(sorted.begin(), sorted.end());
    for (const bool top : {true, false}) {
      INFO((top ? "top_logits" : "bottom_logits"));
      const json& list = fj.at(top ? "top_logits" : "bottom_logits");
      REQUIRE(list.size() == 10);
      std::set<std::int32_t> seen;
      for (std::size_t i = 0; i < list.size(); ++i) {
        const std::int32_t t = list[i].at("token").get<std::int32_t>();
        const double v = list[i].at("value").get<double>();
        REQUIRE(t >= 0);
        REQUIRE(t < effect.size());
        CHECK(seen.insert(t).second);
        CHECK(v == Approx(effect[t]).epsilon(1e-4).margin(1e-6));
        // The i-th largest (smallest) value by hand: ties between tokens may order either way.
        const double want = top ? sorted[sorted.size() - 1 - i] : sorted[i];
        CHECK(v == Approx(want).epsilon(1e-4).margin(1e-6));
        // The token's text; a token that is part of a character is written with U+FFFD.
        const std::string text = tokenizer().decode(&t, 1);
        const json as_written =
            json::parse(json(text).dump(-1, ' ', false, json::error_handler_t::replace));
        CHECK(list[i].at("text") == as_written);
      }
    }
  }
  // A model of another width is refused, naming both widths.
  checkCliFails({"eval", "--sae", saeDir(), "--data", x, "--features", out, "--model",
                 lmDataPath("tiny-gpt2")},
                "the SAE's d_in = 128 is not the model's d_model = 32");
}

TEST_CASE("sae generate and sae attribute refuse bad input", "[cli][lm][generate]") {
  const std::string m = modelDir(), s = saeDir();
  auto gen = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = {"generate", "--model", m, "--prompt", "The file"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  checkCliFails(gen({"--sae", s, "--hook", "blocks.0.mlp.hook_pre", "--force", "--ablate", "1"}),
                "expects d_in = 128 but blocks.0.mlp.hook_pre");
  checkCliFails(gen({"--sae", s, "--hook", "blocks.9.hook_resid_pre", "--force", "--ablate", "1"}),
                "unknown hook point 'blocks.9.hook_resid_pre'");
  checkCliFails(gen({"--sae", s, "--hook", "blocks.1.hook_resid_pre", "--ablate", "1"}),
                "give --force");
  checkCliFails(gen({"--sae", s, "--ablate", "1024"}), "feature 1024 is out of range [0, 1024)");
  checkCliFails(gen({"--sae", s, "--steer", "-1:2"}), "out of range");
  checkCliFails(gen({"--sae", s, "--steer", "12:abc"}), "--steer 12:abc: 'abc' is not a number");
  checkCliFails(gen({"--sae", s, "--steer", "12:inf"}), "not a finite number");
  checkCliFails(gen({"--sae", s, "--clamp", "12=nan"}), "not a finite number");
  checkCliFails(gen({"--sae", s, "--steer", "12"}), "expected FEATURE:COEF");
  checkCliFails(gen({"--steer", "12:3"}), "give --sae");
  std::string long_prompt;
  for (int i = 0; i < 200; ++i) long_prompt += " file";
  checkCliFails({"generate", "--model", m, "--prompt", long_prompt},
                "longer than the model's context of 128");
  checkCliFails({"generate", "--model", m, "--prompt", "x", "--max-new-tokens", "200"},
                "longer than the model's context");
  checkCliFails({"generate", "--model", m, "--prompt", ""}, "--prompt is empty");
  checkCliFails(
      {"attribute", "--sae", s, "--model", m, "--prompt", "The file", "--target", " hello world"},
      "--target ' hello world' is 2 tokens");
  checkCliFails({"attribute", "--sae", s, "--model", m, "--prompt", "The file", "--position", "99"},
                "--position 99 is outside");
  checkCliFails({"attribute", "--sae", s, "--model", m, "--prompt", ""}, "--prompt is empty");
}

}  // namespace sae_test_cli_generate
