// Tests of Gpt2Model (include/sae/lm/gpt2.hpp) and its hooks (include/sae/lm/hooks.hpp).
//
// Expected values: tests/data/lm/tiny-gpt2*/expected.safetensors, written by
// tests/data/lm/make_tiny_gpt2.py with an independent GPT-2 in PyTorch (scripts/lm/gpt2_torch.py),
// in float64, from the weights as stored (F32, F16 with the `transformer.` prefix and the mask
// buffers, BF16): the first logits of every row, each row's log-sum-exp and next-token logit, and
// TransformerLens's value at every hook point. Broken checkpoints are copies of tiny-gpt2 with one
// thing changed, written into a temporary directory.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <support/test_support.hpp>

#include <sae/io/safetensors.hpp>
#include <sae/lm/gpt2.hpp>

namespace sae_test_lm_gpt2 {

using namespace sae;
using namespace sae::test;
using Catch::Matchers::Contains;
using lm::Gpt2Model;
using lm::HookAction;
using lm::HookActivation;
using lm::HookList;
using lm::TokenMatrix;
namespace fs = std::filesystem;

/// Largest |a - b| over the largest |b| (at least 1): the relative error of a whole tensor.
template <typename A, typename B>
double relativeError(const A& a, const B& b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  const double scale = std::max(1.0, static_cast<double>(b.cwiseAbs().maxCoeff()));
  return static_cast<double>((a - b).cwiseAbs().maxCoeff()) / scale;
}

struct Expected {
  TokenMatrix tokens;
  RowMatrix<float> logits_head, logsumexp, logit_next;
  io::SafetensorsFile file;
  explicit Expected(const std::string& folder) : Expected(folder + "/expected.safetensors", 0) {}
  Expected(const std::string& path, int) : file(path) {
    const io::TensorInfo& t = file.info("tokens");
    const auto ids = file.readIntegers("tokens");
    tokens.resize(t.shape[0], t.shape[1]);
    for (Index i = 0; i < tokens.size(); ++i)
      tokens.data()[i] = static_cast<std::int32_t>(ids[static_cast<std::size_t>(i)]);
    logits_head = file.read<float>("logits_head");
    logsumexp = file.read<float>("logsumexp");
    logit_next = file.read<float>("logit_next");
  }
  RowMatrix<float> hook(const std::string& name) const { return file.read<float>("hook." + name); }
};

/// The logits checks: the first columns, each row's log-sum-exp, the next token's logit.
void checkLogits(const RowMatrix<float>& logits, const Expected& e, double tol) {
  const Index rows = logits.rows();
  REQUIRE(rows == e.tokens.size());
  CHECK(relativeError(logits.leftCols(e.logits_head.cols()), e.logits_head) < tol);
  RowMatrix<float> lse(1, rows), next(1, rows);
  for (Index r = 0; r < rows; ++r) {
    const float mx = logits.row(r).maxCoeff();
    lse(0, r) = mx + std::log((logits.row(r).array() - mx).exp().sum());
    const Index b = r / e.tokens.cols(), t = r % e.tokens.cols();
    const Index following = t + 1 < e.tokens.cols() ? e.tokens(b, t + 1) : e.tokens(b, 0);
    next(0, r) = logits(r, following);
  }
  CHECK(relativeError(lse, e.logsumexp) < tol);
  CHECK(relativeError(next, e.logit_next) < tol);
}

/// Captures every hook point of a forward into `out` (name -> [rows, width]).
HookList captureAll(const Gpt2Model& m, std::map<std::string, RowMatrix<float>>& out) {
  HookList hooks;
  for (const lm::HookId& id : lm::hookPoints(static_cast<int>(m.config().n_layer))) {
    hooks.addReader(lm::hookName(id), [&out](const HookActivation& a) { out[a.name] = a.value; });
  }
  return hooks;
}

TEST_CASE("Gpt2Config reads a Hugging Face config.json and the model its tensors", "[lm][gpt2]") {
  const Gpt2Model m = Gpt2Model::load(lmDataPath("tiny-gpt2"));
  const lm::Gpt2Config& c = m.config();
  CHECK(c.n_embd == 32);
  CHECK(c.n_layer == 2);
  CHECK(c.n_head == 4);
  CHECK(c.n_positions == 16);
  CHECK(c.vocab_size == 101);
  CHECK(c.layer_norm_epsilon == 1e-5);
  // The parameter count is that of the tensors in the file.
  io::SafetensorsFile f(lmDataPath("tiny-gpt2") + "/model.safetensors");
  std::int64_t stored = 0;
  for (const auto& name : f.names()) stored += f.info(name).rows * f.info(name).cols;
  CHECK(c.parameterCount() == stored);
  // GPT-2 small's shape: the published count.
  lm::Gpt2Config small;
  small.n_embd = 768;
  small.n_layer = 12;
  small.n_head = 12;
  small.n_positions = 1024;
  small.vocab_size = 50257;
  CHECK(small.parameterCount() == 124439808);
}

TEST_CASE("Gpt2Model logits and TransformerLens hook values match PyTorch (F32, F16, BF16)",
          "[lm][gpt2]") {
  for (const char* folder : {"tiny-gpt2", "tiny-gpt2-f16", "tiny-gpt2-bf16"}) {
    INFO(folder);
    const std::string dir = lmDataPath(folder);
    Gpt2Model m = Gpt2Model::load(dir);
    const Expected e(dir);
    std::map<std::string, RowMatrix<float>> got;
    RowMatrix<float> logits;
    CHECK_FALSE(m.forward(e.tokens, captureAll(m, got), &logits));
    checkLogits(logits, e, 1e-4);
    REQUIRE(got.size() == 2 + 7 * 2 + 1);
    for (const auto& [name, value] : got) {
      INFO(name);
      CHECK(relativeError(value, e.hook(name)) < 1e-4);
    }
    // TransformerLens's residual stream is centred: every row of every write has zero mean.
    for (const char* name : {"blocks.0.hook_resid_pre", "blocks.1.hook_attn_out",
                             "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"}) {
      INFO(name);
      CHECK(got[name].rowwise().mean().cwiseAbs().maxCoeff() < 1e-5f);
    }
  }
}

TEST_CASE("The reference model (models/ref-gpt2) matches PyTorch on held-out text",
          "[lm][gpt2][reference]") {
  // F16 weights of the committed model; expected values from scripts/lm/write_expected.py
  // (float64 PyTorch on BOS + 31 tokens of the French man-page and Python held-out samples).
  const std::string dir = std::string(SAE_TEST_DATA_DIR) + "/../../models/ref-gpt2";
  Gpt2Model m = Gpt2Model::load(dir);
  CHECK(m.config().vocab_size == 50257);
  CHECK(m.config().bos_token_id == 50256);
  const Expected e(lmDataPath("ref-gpt2-expected.safetensors"), 0);
  REQUIRE(e.tokens(0, 0) == 50256);
  std::map<std::string, RowMatrix<float>> got;
  RowMatrix<float> logits;
  m.forward(e.tokens, captureAll(m, got), &logits);
  checkLogits(logits, e, 1e-4);
  REQUIRE(got.size() == 2 + 7 * 4 + 1);
  for (const auto& [name, value] : got) {
    INFO(name);
    CHECK(relativeError(value, e.hook(name)) < 1e-4);
  }
  // A trained model predicts held-out text far better than chance (ln 50257 = 10.8 nats).
  double ce = 0.0;
  const Index T = e.tokens.cols();
  for (Index b = 0; b < e.tokens.rows(); ++b)
    for (Index t = 0; t + 1 < T; ++t) {
      const Index r = b * T + t;
      ce += e.logsumexp(0, r) - logits(r, e.tokens(b, t + 1));
    }
  ce /= static_cast<double>(e.tokens.rows() * (T - 1));
  CHECK(ce < 8.0);  // measured 6.17 (the first tokens of a document are the hardest)
}

TEST_CASE("Without TransformerLens processing hooks see Hugging Face's values", "[lm][gpt2]") {
  const std::string dir = lmDataPath("tiny-gpt2");
  lm::Gpt2LoadOptions raw;
  raw.tl_processing = false;
  Gpt2Model m = Gpt2Model::load(dir, raw);
  const Expected e(dir);
  std::map<std::string, RowMatrix<float>> got;
  RowMatrix<float> logits;
  m.forward(e.tokens, captureAll(m, got), &logits);
  checkLogits(logits, e, 1e-4);  // centring changes no logit
  // The residual stream is not centred, and centring it gives TransformerLens's values.
  const RowMatrix<float>& resid = got["blocks.1.hook_resid_mid"];
  CHECK(resid.rowwise().mean().cwiseAbs().maxCoeff() > 1e-3f);
  RowMatrix<float> centred = resid.colwise() - resid.rowwise().mean();
  CHECK(relativeError(centred, e.hook("blocks.1.hook_resid_mid")) < 1e-4);
  // Inside the MLP the values are the same either way.
  CHECK(relativeError(got["blocks.0.mlp.hook_post"], e.hook("blocks.0.mlp.hook_post")) < 1e-4);
  // ln_final.hook_normalized includes ln_f's weight and bias here.
  RowMatrix<float> folded = e.hook("ln_final.hook_normalized");
  for (Index r = 0; r < folded.rows(); ++r)
    folded.row(r) = (folded.row(r).array() * m.finalNormWeight().transpose().array() +
                     m.finalNormBias().transpose().array())
                        .matrix();
  CHECK(relativeError(got["ln_final.hook_normalized"], folded) < 1e-4);
}

TEST_CASE("Gpt2Model: a batch gives each sequence's own values", "[lm][gpt2]") {
  const std::string dir = lmDataPath("tiny-gpt2");
  Gpt2Model m = Gpt2Model::load(dir);
  const Expected e(dir);
  RowMatrix<float> all, one;
  m.forward(e.tokens, HookList(), &all);
  const Index T = e.tokens.cols();
  for (Index b = 0; b < e.tokens.rows(); ++b) {
    TokenMatrix row = e.tokens.row(b);
    m.forward(row, HookList(), &one);
    CHECK(relativeError(one, all.middleRows(b * T, T)) < 1e-5);
  }
  // A shorter window gives the first positions of the longer one (causality).
  TokenMatrix prefix = e.tokens.leftCols(5);
  m.forward(prefix, HookList(), &one);
  for (Index b = 0; b < e.tokens.rows(); ++b)
    CHECK(relativeError(one.middleRows(b * 5, 5), all.middleRows(b * T, 5)) < 1e-5);
}

TEST_CASE("Hooks: replacing an activation changes the rest of the forward", "[lm][gpt2]") {
  const std::string dir = lmDataPath("tiny-gpt2");
  Gpt2Model m = Gpt2Model::load(dir);
  const Expected e(dir);
  TokenMatrix a = e.tokens.topRows(1), b = e.tokens.middleRows(1, 1);
  RowMatrix<float> logits_a, logits_b, spliced;
  m.forward(a, HookList(), &logits_a);
  m.forward(b, HookList(), &logits_b);
  REQUIRE(relativeError(logits_a, logits_b) > 0.1);

  // Splicing b's residual stream after block 0 into a's forward gives b's logits: nothing of a
  // reaches the rest of the model any more.
  RowMatrix<float> resid_b;
  HookList capture;
  capture.addReader("blocks.0.hook_resid_post",
                    [&](const HookActivation& h) { resid_b = h.value; });
  m.forward(b, capture, nullptr);
  REQUIRE(resid_b.rows() == b.cols());
  HookList splice;
  splice.add("blocks.1.hook_resid_pre", [&](HookActivation& h) {
    h.value = resid_b;
    return HookAction::Continue;
  });
  m.forward(a, splice, &spliced);
  CHECK(relativeError(spliced, logits_b) < 1e-5);

  // A residual of any mean: adding a per-token constant changes no logit (LayerNorm removes it).
  HookList shift;
  shift.add("blocks.0.hook_resid_mid", [](HookActivation& h) {
    for (Index r = 0; r < h.value.rows(); ++r) h.value.row(r).array() += 3.0f * float(r + 1);
    return HookAction::Continue;
  });
  m.forward(a, shift, &spliced);
  CHECK(relativeError(spliced, logits_a) < 1e-4);

  // Zero-ablating the MLP output of block 1 changes the logits by exactly its unembedded
  // contribution through ln_final: checked against the logits computed by hand from the hooked
  // residual.
  RowMatrix<float> normalized;
  HookList ablate;
  ablate.add("blocks.1.hook_mlp_out", [](HookActivation& h) {
    h.value.setZero();
    return HookAction::Continue;
  });
  ablate.addReader("ln_final.hook_normalized",
                   [&](const HookActivation& h) { normalized = h.value; });
  m.forward(a, ablate, &spliced);
  CHECK(relativeError(spliced, logits_a) > 1e-3);
  RowMatrix<float> by_hand(normalized.rows(), m.config().vocab_size);
  for (Index r = 0; r < normalized.rows(); ++r) {
    const Vector<float> x = (normalized.row(r).transpose().array() * m.finalNormWeight().array() +
                             m.finalNormBias().array())
                                .matrix();
    by_hand.row(r) = (m.tokenEmbedding() * x).transpose();
  }
  CHECK(relativeError(spliced, by_hand) < 1e-5);

  // Several hooks on one point run in the order added, each seeing the previous one's write.
  std::vector<float> seen;
  HookList chain;
  chain.add("hook_pos_embed", [](HookActivation& h) {
    h.value.setConstant(2.0f);
    return HookAction::Continue;
  });
  chain.addReader("hook_pos_embed",
                  [&](const HookActivation& h) { seen.push_back(h.value(0, 0)); });
  m.forward(a, chain, nullptr);
  REQUIRE(seen.size() == 1);
  CHECK(seen[0] == 2.0f);
}

TEST_CASE("Hooks: stopping the forward early", "[lm][gpt2]") {
  const std::string dir = lmDataPath("tiny-gpt2");
  Gpt2Model m = Gpt2Model::load(dir);
  const Expected e(dir);
  int later = 0;
  RowMatrix<float> mid;
  HookList hooks;
  hooks.add("blocks.0.hook_resid_mid", [&](HookActivation& h) {
    mid = h.value;
    CHECK(h.batch == e.tokens.rows());
    CHECK(h.seq == e.tokens.cols());
    CHECK(h.position == 0);
    CHECK(h.id.layer == 0);
    return HookAction::Stop;
  });
  hooks.addReader("blocks.1.hook_resid_pre", [&](const HookActivation&) { ++later; });
  RowMatrix<float> logits = RowMatrix<float>::Constant(1, 1, 42.0f);
  CHECK(m.forward(e.tokens, hooks, &logits));
  CHECK(later == 0);
  CHECK(relativeError(mid, e.hook("blocks.0.hook_resid_mid")) < 1e-4);
  // Without logits the forward ends after the last hook on its own, and says no hook stopped it.
  HookList only;
  only.addReader("blocks.0.hook_attn_out", [&](const HookActivation& h) { mid = h.value; });
  CHECK_FALSE(m.forward(e.tokens, only, nullptr));
  CHECK(relativeError(mid, e.hook("blocks.0.hook_attn_out")) < 1e-4);
}

TEST_CASE("Gpt2Model::generate: KV cache, greedy and seeded sampling", "[lm][gpt2]") {
  Gpt2Model m = Gpt2Model::load(lmDataPath("tiny-gpt2"));
  const std::vector<std::int32_t> prompt = {5, 17, 99, 3};
  lm::Gpt2Sampling greedy;
  const auto cached = m.generate(prompt, 10, greedy);
  REQUIRE(cached.size() == 10);
  // Greedy decoding by hand: the argmax of the full forward's last row, token after token.
  std::vector<std::int32_t> seq = prompt;
  RowMatrix<float> logits;
  for (int i = 0; i < 10; ++i) {
    TokenMatrix t(1, static_cast<Index>(seq.size()));
    for (Index j = 0; j < t.cols(); ++j) t(0, j) = seq[static_cast<std::size_t>(j)];
    m.forward(t, HookList(), &logits);
    Index best = 0;
    logits.row(logits.rows() - 1).maxCoeff(&best);
    CHECK(cached[static_cast<std::size_t>(i)] == best);
    seq.push_back(static_cast<std::int32_t>(best));
  }
  lm::Gpt2Sampling recompute = greedy;
  recompute.use_cache = false;
  CHECK(m.generate(prompt, 10, recompute) == cached);

  // Seeded sampling: reproducible, the same with and without the cache, changed by the seed,
  // and top_k 1 is greedy.
  lm::Gpt2Sampling s;
  s.temperature = 1.0;
  s.top_k = 20;
  s.seed = 11;
  const auto first = m.generate(prompt, 12, s);
  CHECK(m.generate(prompt, 12, s) == first);
  lm::Gpt2Sampling s_nocache = s;
  s_nocache.use_cache = false;
  CHECK(m.generate(prompt, 12, s_nocache) == first);
  bool differs = false;
  for (std::uint64_t seed = 12; seed < 16 && !differs; ++seed) {
    lm::Gpt2Sampling other = s;
    other.seed = seed;
    differs = m.generate(prompt, 12, other) != first;
  }
  CHECK(differs);
  lm::Gpt2Sampling k1 = s;
  k1.top_k = 1;
  CHECK(m.generate(prompt, 10, k1) == cached);
  // A stop token ends generation after it.
  lm::Gpt2Sampling stop = greedy;
  stop.stop_token = cached[2];
  const auto stopped = m.generate(prompt, 10, stop);
  CHECK(stopped.size() <= 3);
  CHECK(stopped.back() == cached[2]);

  // Hooks during cached generation: the prompt's rows first, then one row per step, with its
  // position; a steering hook changes the tokens.
  std::vector<Index> positions, rows;
  HookList watch;
  watch.addReader("blocks.1.hook_resid_pre", [&](const HookActivation& h) {
    positions.push_back(h.position);
    rows.push_back(h.value.rows());
  });
  m.generate(prompt, 4, greedy, watch);
  CHECK(positions == std::vector<Index>{0, 4, 5, 6});
  CHECK(rows == std::vector<Index>{4, 1, 1, 1});
  HookList steer;
  const Vector<float> direction = m.tokenEmbedding().row(cached[0] == 7 ? 8 : 7).transpose();
  steer.add("blocks.1.hook_resid_post", [&](HookActivation& h) {
    for (Index r = 0; r < h.value.rows(); ++r) h.value.row(r) += 50.0f * direction.transpose();
    return HookAction::Continue;
  });
  CHECK(m.generate(prompt, 10, greedy, steer) != cached);

  CHECK_THROWS_WITH(m.generate({}, 3), Contains("prompt is empty"));
  CHECK_THROWS_WITH(m.generate(prompt, 13), Contains("longer than the model's n_positions 16"));
}

TEST_CASE("Gpt2Model: bad calls are clear errors", "[lm][gpt2]") {
  Gpt2Model m = Gpt2Model::load(lmDataPath("tiny-gpt2"));
  TokenMatrix t = TokenMatrix::Constant(2, 4, 1);
  HookList unknown;
  unknown.addReader("blocks.2.hook_resid_pre", [](const HookActivation&) {});
  CHECK_THROWS_WITH(m.forward(t, unknown),
                    Contains("unknown hook point 'blocks.2.hook_resid_pre'") &&
                        Contains("blocks.{0..1}.hook_resid_pre") &&
                        Contains("ln_final.hook_normalized"));
  HookList misspelt;
  misspelt.addReader("blocks.0.hook_resid", [](const HookActivation&) {});
  CHECK_THROWS_WITH(m.forward(t, misspelt), Contains("unknown hook point"));
  t(1, 2) = 101;
  CHECK_THROWS_WITH(m.forward(t), Contains("token id 101 at [1, 2] is outside the vocabulary"));
  t(1, 2) = -1;
  CHECK_THROWS_WITH(m.forward(t), Contains("token id -1"));
  TokenMatrix long_window = TokenMatrix::Zero(1, 17);
  CHECK_THROWS_WITH(m.forward(long_window),
                    Contains("17 tokens is longer than the model's n_positions 16"));
  CHECK_THROWS_WITH(m.forward(TokenMatrix(0, 4)), Contains("empty token batch"));
}

// ------------------------------------------------------------------ broken checkpoints

/// A copy of tiny-gpt2 in `dir`, with its tensors passed through `edit` and its config through
/// `edit_config`.
void writeVariant(const std::string& dir,
                  const std::function<void(std::map<std::string, RowMatrix<float>>&,
                                           std::map<std::string, std::vector<Index>>&)>& edit,
                  const std::function<void(nlohmann::json&)>& edit_config = {}) {
  const std::string src = lmDataPath("tiny-gpt2");
  io::SafetensorsFile f(src + "/model.safetensors");
  std::map<std::string, RowMatrix<float>> tensors;
  std::map<std::string, std::vector<Index>> shapes;
  for (const auto& name : f.names()) {
    tensors[name] = f.read<float>(name);
    shapes[name] = f.info(name).shape;
  }
  if (edit) edit(tensors, shapes);
  io::SafetensorsWriter w;
  for (const auto& [name, t] : tensors) w.add(name, shapes[name], t.data());
  fs::create_directories(dir);
  w.write(dir + "/model.safetensors");
  nlohmann::json cfg = nlohmann::json::parse(readFile(src + "/config.json"));
  if (edit_config) edit_config(cfg);
  writeBytes(dir + "/config.json", cfg.dump(2));
}

TEST_CASE("Gpt2Model::load: broken folders are errors naming the file and the tensor",
          "[lm][gpt2]") {
  TempDir tmp("gpt2");
  int n = 0;
  auto fails = [&](const auto& edit, const auto& edit_config) {
    const std::string dir = tmp.file("v" + std::to_string(n++));
    writeVariant(dir, edit, edit_config);
    std::string message;
    try {
      Gpt2Model::load(dir);
    } catch (const Error& e) {
      message = e.what();
    }
    return message;
  };
  using Tensors = std::map<std::string, RowMatrix<float>>;
  using Shapes = std::map<std::string, std::vector<Index>>;
  auto noConfig = [](nlohmann::json&) {};
  auto noTensors = [](Tensors&, Shapes&) {};

  // The copy itself loads.
  CHECK(fails(noTensors, noConfig).empty());

  std::string msg = fails([](Tensors& t, Shapes&) { t.erase("h.1.mlp.c_fc.bias"); }, noConfig);
  CHECK_THAT(msg, Contains("model.safetensors") && Contains("missing tensor 'h.1.mlp.c_fc.bias'"));

  msg = fails(
      [](Tensors& t, Shapes& s) {
        t["h.0.attn.c_attn.weight"] = RowMatrix<float>::Zero(96, 32);
        s["h.0.attn.c_attn.weight"] = {96, 32};
      },
      noConfig);
  CHECK_THAT(msg, Contains("'h.0.attn.c_attn.weight' has shape [96, 32], config.json implies "
                           "[32, 96]"));

  msg = fails([](Tensors& t, Shapes&) { t["wpe.weight"](3, 4) = std::nanf(""); }, noConfig);
  CHECK_THAT(msg, Contains("'wpe.weight' holds NaN or infinity"));

  msg = fails(
      [](Tensors& t, Shapes& s) {
        t["h.0.attn.c_attn.extra"] = RowMatrix<float>::Zero(1, 3);
        s["h.0.attn.c_attn.extra"] = {3};
      },
      noConfig);
  CHECK_THAT(msg, Contains("unexpected tensor 'h.0.attn.c_attn.extra'"));

  msg = fails(
      [](Tensors& t, Shapes& s) {
        t["lm_head.weight"] = t["wte.weight"];
        t["lm_head.weight"](0, 0) += 1.0f;
        s["lm_head.weight"] = s["wte.weight"];
      },
      noConfig);
  CHECK_THAT(msg, Contains("'lm_head.weight' differs from the token embedding"));
  // An lm_head equal to wte is fine.
  CHECK(fails(
            [](Tensors& t, Shapes& s) {
              t["lm_head.weight"] = t["wte.weight"];
              s["lm_head.weight"] = s["wte.weight"];
            },
            noConfig)
            .empty());

  // A config that disagrees with the weights.
  msg = fails(noTensors, [](nlohmann::json& c) { c["n_layer"] = 3; });
  CHECK_THAT(msg, Contains("missing tensor 'h.2.ln_1.weight'"));
  msg = fails(noTensors, [](nlohmann::json& c) {
    c["vocab_size"] = 100;
    c["bos_token_id"] = 99;
  });
  CHECK_THAT(msg, Contains("'wte.weight' has shape [101, 32], config.json implies [100, 32]"));
  msg = fails(noTensors, [](nlohmann::json& c) { c["n_head"] = 5; });
  CHECK_THAT(msg, Contains("config.json") && Contains("n_embd 32 is not divisible by n_head 5"));
  msg = fails(noTensors, [](nlohmann::json& c) { c["activation_function"] = "relu"; });
  CHECK_THAT(msg, Contains("activation_function \"relu\" is not supported"));
  msg = fails(noTensors, [](nlohmann::json& c) { c.erase("n_embd"); });
  CHECK_THAT(msg, Contains("missing key 'n_embd'"));
  msg = fails(noTensors, [](nlohmann::json& c) { c["n_embd"] = "32"; });
  CHECK_THAT(msg, Contains("'n_embd' must be an integer"));
  msg = fails(noTensors, [](nlohmann::json& c) { c["n_positions"] = -4; });
  CHECK_THAT(msg, Contains("'n_positions' = -4 is outside"));
  msg = fails(noTensors, [](nlohmann::json& c) { c["model_type"] = "llama"; });
  CHECK_THAT(msg, Contains("model_type is \"llama\""));
  msg = fails(noTensors, [](nlohmann::json& c) { c["layer_norm_epsilon"] = 0; });
  CHECK_THAT(msg, Contains("'layer_norm_epsilon' must be a positive number"));

  // Files that are not there or not readable as GPT-2.
  const std::string bad_json = tmp.file("json");
  writeVariant(bad_json, noTensors);
  writeBytes(bad_json + "/config.json", std::string("{\"n_embd\": 32,"));
  CHECK_THROWS_WITH(Gpt2Model::load(bad_json), Contains("config.json") && Contains("invalid JSON"));
  const std::string no_weights = tmp.file("nobin");
  writeVariant(no_weights, noTensors);
  fs::remove(no_weights + "/model.safetensors");
  writeBytes(no_weights + "/pytorch_model.bin", std::string("x"));
  CHECK_THROWS_WITH(Gpt2Model::load(no_weights),
                    Contains("model.safetensors' do not exist") && Contains("pytorch_model.bin"));
  CHECK_THROWS_WITH(Gpt2Model::load(tmp.file("absent")), Contains("does not exist"));
  const std::string truncated = tmp.file("trunc");
  writeVariant(truncated, noTensors);
  fs::resize_file(truncated + "/model.safetensors",
                  fs::file_size(truncated + "/model.safetensors") - 100);
  CHECK_THROWS_AS(Gpt2Model::load(truncated), FormatError);
  const std::string other = tmp.file("other");
  writeVariant(other, [](Tensors& t, Shapes& s) {
    t["embed.weight"] = t["wte.weight"];
    s["embed.weight"] = s["wte.weight"];
    t.erase("wte.weight");
  });
  CHECK_THROWS_WITH(Gpt2Model::load(other), Contains("no tensor 'wte.weight'"));
}

}  // namespace sae_test_lm_gpt2
