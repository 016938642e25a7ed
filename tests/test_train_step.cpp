// The trainer's parts: forEachActive over every codes type, FeatureDensityWindow (and its
// checked restore), TrainStep on its own and against the Trainer, and the Trainer's callbacks.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <support/test_support.hpp>

#include <sae/sae.hpp>
#include <sae/train/batch_source.hpp>
#include <sae/train/trainer.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_train_step {

namespace {

using sae::Index;
using Entry = std::tuple<Index, Index, float>;
using Source = sae::train::SyntheticSource<float>;

template <typename Codes>
std::vector<Entry> entries(const Codes& codes) {
  std::vector<Entry> out;
  sae::forEachActive(
      codes, [&](Index row, Index latent, float value) { out.emplace_back(row, latent, value); });
  return out;
}

// Row 0 fires latents 3 (2.5) and 1 (0.5); row 1 nothing; row 2 latent 0 (1.0); zeros stored
// in places must not be visited.
sae::SparseCodes<float> sparseExample() {
  sae::SparseCodes<float> c;
  c.d_sae = 4;
  c.indices.resize(3, 2);
  c.values.resize(3, 2);
  c.indices << 3, 1, 2, 0, 0, 2;
  c.values << 2.5f, 0.5f, 0.0f, 0.0f, 1.0f, 0.0f;
  return c;
}

sae::CsrCodes<float> csrExample() {
  sae::CsrCodes<float> c;
  c.d_sae = 4;
  c.pattern.row_start = {0, 2, 3, 5};
  c.pattern.latent = {1, 3, 2, 0, 2};
  c.pattern.row = {0, 0, 1, 2, 2};
  c.values = {0.5f, 2.5f, 0.0f, 1.0f, 0.0f};
  return c;
}

sae::DenseCodes<float> denseExample() {
  sae::DenseCodes<float> c;
  c.values.resize(3, 4);
  c.values << 0, 0.5f, 0, 2.5f, 0, 0, 0, 0, 1.0f, 0, 0, 0;
  return c;
}

}  // namespace

TEST_CASE("forEachActive visits the non-zero entries of every codes type", "[forEachActive]") {
  SECTION("SparseCodes: row by row, in stored order") {
    CHECK(entries(sparseExample()) == std::vector<Entry>{{0, 3, 2.5f}, {0, 1, 0.5f}, {2, 0, 1.0f}});
  }
  SECTION("CsrCodes: row by row, by increasing latent") {
    CHECK(entries(csrExample()) == std::vector<Entry>{{0, 1, 0.5f}, {0, 3, 2.5f}, {2, 0, 1.0f}});
  }
  SECTION("DenseCodes: row by row, by increasing latent") {
    CHECK(entries(denseExample()) == std::vector<Entry>{{0, 1, 0.5f}, {0, 3, 2.5f}, {2, 0, 1.0f}});
  }
  SECTION("empty codes visit nothing") {
    CHECK(entries(sae::SparseCodes<float>{}).empty());
    CHECK(entries(sae::CsrCodes<float>{}).empty());
    CHECK(entries(sae::DenseCodes<float>{}).empty());
  }
  SECTION("its consumers agree on the three forms") {
    sae::eval::FiringStats a(4), b(4), c(4);
    a.add(sparseExample());
    b.add(csrExample());
    c.add(denseExample());
    CHECK(a.density() == b.density());
    CHECK(a.density() == c.density());
    CHECK(a.l0() == Approx(1.0));  // 3 firings over 3 rows
    sae::train::DeadLatentTracker ta(4, 1), tb(4, 1), tc(4, 1);
    ta.update(sparseExample());
    tb.update(csrExample());
    tc.update(denseExample());
    const sae::LatentMask only_2 = (sae::LatentMask(4) << 0, 0, 1, 0).finished();
    CHECK(ta.mask() == only_2);
    CHECK(tb.mask() == only_2);
    CHECK(tc.mask() == only_2);
    sae::eval::FeatureStatistics sa(4, 2), sb(4, 2), sc(4, 2);
    sa.add(sparseExample(), 10);
    sb.add(csrExample(), 10);
    sc.add(denseExample(), 10);
    CHECK(sa.toJson() == sb.toJson());
    CHECK(sa.toJson() == sc.toJson());
    CHECK(sb.firingCount(3) == 1);
    CHECK(sb.maxActivation(3) == 2.5);
    CHECK(sb.topActivations(0) == std::vector<sae::eval::TopActivation>{{1.0, 12}});
  }
}

TEST_CASE("FeatureDensityWindow: densities per window", "[FeatureDensityWindow]") {
  sae::eval::FeatureDensityWindow w(4, 2);
  w.update(sparseExample());  // latents 0, 1, 3 fire once over 3 rows
  // Before the first window completes: the current window's density.
  CHECK(w.density() == (Eigen::VectorXd(4) << 1.0 / 3, 1.0 / 3, 0, 1.0 / 3).finished());
  w.update(denseExample());  // the same again: window of 6 rows, 2 firings of 0, 1, 3
  CHECK(w.density() == (Eigen::VectorXd(4) << 2.0 / 6, 2.0 / 6, 0, 2.0 / 6).finished());
  CHECK(w.counts() == Eigen::VectorXd::Zero(4));  // a new window began
  sae::SparseCodes<float> wide = sparseExample();
  wide.d_sae = 5;
  CHECK_THROWS_AS(w.update(wide), sae::ConfigError);
  CHECK_THROWS_AS(sae::eval::FeatureDensityWindow(4, 0), sae::ConfigError);
}

TEST_CASE("FeatureDensityWindow: restore takes back a saved state and rejects a corrupt one",
          "[FeatureDensityWindow]") {
  sae::eval::FeatureDensityWindow saved(4, 3);
  for (int s = 0; s < 4; ++s) saved.update(csrExample());  // one window done, one step into
  sae::eval::FeatureDensityWindow w(4, 3);
  w.restore(saved.counts(), saved.last(), saved.scalars());
  CHECK(w.density() == saved.density());
  CHECK(w.scalars() == saved.scalars());
  w.update(csrExample());
  saved.update(csrExample());
  CHECK(w.counts() == saved.counts());

  const Eigen::VectorXd counts = saved.counts(), last = saved.last();
  const nlohmann::json scalars = saved.scalars();  // tokens 6, steps 2, has_last true
  REQUIRE(scalars == nlohmann::json({{"tokens", 6.0}, {"steps", 2}, {"has_last", true}}));
  sae::eval::FeatureDensityWindow fresh(4, 3);
  auto rejects = [&](const Eigen::VectorXd& c, const Eigen::VectorXd& l, const nlohmann::json& s,
                     const std::string& message) {
    CHECK_THROWS_WITH(fresh.restore(c, l, s),
                      Catch::Contains("feature density window") && Catch::Contains(message));
    // Nothing changed.
    CHECK(fresh.counts() == Eigen::VectorXd::Zero(4));
    CHECK(fresh.scalars() == nlohmann::json({{"tokens", 0.0}, {"steps", 0}, {"has_last", false}}));
  };
  rejects(Eigen::VectorXd::Zero(3), last, scalars, "counts has 3 entries, expected d_sae = 4");
  rejects(counts, Eigen::VectorXd::Zero(5), scalars, "last has 5 entries");
  Eigen::VectorXd bad = counts;
  bad[1] = -1;
  rejects(bad, last, scalars, "counts[1] = -1");
  bad[1] = 7;  // more firings than the 6 tokens of the window
  rejects(bad, last, scalars, "counts[1] = 7");
  bad[1] = 0.5;
  rejects(bad, last, scalars, "counts[1] = 0.5");
  bad = last;
  bad[2] = 1.5;
  rejects(counts, bad, scalars, "last[2] = 1.5 is outside [0, 1]");
  bad[2] = std::nan("");
  rejects(counts, bad, scalars, "last[2]");
  nlohmann::json s = scalars;
  s["steps"] = 3;
  rejects(counts, last, s, "steps 3 outside [0, window = 3)");
  s = scalars;
  s["tokens"] = -6.0;
  rejects(counts, last, s, "tokens must be a whole number >= 0");
  s = scalars;
  s.erase("has_last");
  rejects(counts, last, s, "no 'has_last'");
  s = scalars;
  s["steps"] = "2";
  rejects(counts, last, s, "steps is not an integer");
  s = scalars;
  s["has_last"] = false;  // but last holds a window's densities
  rejects(counts, last, s, "but no window has completed");
  rejects(counts, last, nlohmann::json::array(), "not a JSON object");
}

namespace {

std::string tempDir(const std::string& name) {
  return sae::test::scratchDir("train_step", name, false);
}

sae::eval::SyntheticOptions toyData() {
  sae::eval::SyntheticOptions o;
  o.d_in = 16;
  o.n_features = 48;
  o.expected_active = 3;
  return o;
}

// 30 steps with a warm-up, a decay, logs, evaluations and checkpoints.
sae::train::TrainerConfig toyConfig(const std::string& arch, const std::string& out) {
  sae::train::TrainerConfig c;
  c.updateFromJson({{"architecture", arch},
                    {"d_sae", 64},
                    {"k", 4},
                    {"batch_size", 64},
                    {"total_steps", 30},
                    {"lr", 2e-3},
                    {"lr_warmup_steps", 4},
                    {"lr_decay_steps", 6},
                    {"l1_warmup_steps", 8},
                    {"l1_coefficient", 0.5},
                    {"dead_feature_window", 5},
                    {"feature_sampling_window", 7},
                    {"log_every", 7},
                    {"eval_every", 10},
                    {"eval_rows", 64},
                    {"checkpoint_every", 12},
                    {"out_dir", out},
                    {"seed", 3}},
                   "toy config");
  return c;
}

// Bitwise equality; empty buffers (an architecture without buffers) are equal without a memcmp
// of their null pointers.
template <typename A, typename B>
bool sameBits(const A& a, const B& b) {
  if (a.size() != b.size()) return false;
  return a.size() == 0 ||
         std::memcmp(a.data(), b.data(), sizeof(a[0]) * std::size_t(a.size())) == 0;
}

// Drives a TrainStep as the Trainer does (no b_dec init, no input scaling) for `steps` steps.
template <typename Arch>
void driveStep(sae::train::TrainStep<float, Arch>& step, const sae::train::TrainerConfig& cfg,
               std::int64_t steps, std::vector<double>* losses = nullptr) {
  Source src(toyData(), cfg.seed, cfg.batch_size);
  const sae::LrSchedule schedule = cfg.schedule();
  sae::CoefficientWarmup warmup;
  warmup.warmup_steps = cfg.l1_warmup_steps;
  sae::RowMatrix<float> x;
  for (std::int64_t t = 0; t < steps; ++t) {
    src.next(x);
    const auto& terms = step.run(x, schedule.lrAt(t), warmup.scaleAt(t));
    if (losses) losses->push_back(double(terms["mse_loss"]));
  }
}

template <typename Arch>
void checkStepMatchesTrainer(const std::string& arch) {
  auto cfg = toyConfig(arch, tempDir("match_" + arch));
  Source src(toyData(), cfg.seed, cfg.batch_size);
  sae::train::Trainer<float, Arch, Source> trainer(cfg, src);
  trainer.initialize();
  REQUIRE(trainer.train(20).step == 20);

  sae::train::TrainStep<float, Arch> step(cfg.saeConfig(src.dIn()), cfg.stepOptions(), cfg.seed);
  driveStep(step, cfg, 20);
  CHECK(sameBits(step.model().parameters().flat(), trainer.model().parameters().flat()));
  CHECK(
      sameBits(step.optimizer().secondMoment().flat(), trainer.optimizer().secondMoment().flat()));
  CHECK(sameBits(step.model().buffers().flat(), trainer.model().buffers().flat()));
  CHECK(step.deadLatents().stepsSinceFired() == trainer.deadLatents().stepsSinceFired());
  CHECK(step.optimizer().stepCount() == 20);
}

}  // namespace

TEST_CASE("TrainStep on its own: the loss goes down on a toy problem", "[TrainStep]") {
  auto cfg = toyConfig("topk", "");
  cfg.total_steps = 200;
  cfg.lr_decay_steps = 0;
  sae::train::TrainStep<float, sae::TopKArch> step(cfg.saeConfig(16), cfg.stepOptions(), 11);
  std::vector<double> mse;
  driveStep(step, cfg, 200, &mse);
  double first = 0, last = 0;
  for (int i = 0; i < 10; ++i) {
    first += mse[std::size_t(i)] / 10;
    last += mse[mse.size() - 1 - std::size_t(i)] / 10;
  }
  INFO("mean MSE of the first 10 steps " << first << ", of the last 10 " << last);
  CHECK(last < 0.5 * first);
  CHECK(step.lossTerms().contains("auxiliary_reconstruction_loss"));
  CHECK(step.codes().rows() == cfg.batch_size);
  CHECK(step.reconstruction().rows() == cfg.batch_size);

  // reset(seed) starts again: the same steps give the same bits.
  const sae::Vector<float> params = step.model().parameters().flat();
  step.reset(11);
  CHECK(step.optimizer().stepCount() == 0);
  CHECK(step.deadLatents().deadCount() == 0);
  driveStep(step, cfg, 200);
  CHECK(sameBits(step.model().parameters().flat(), params));
}

TEST_CASE("TrainStep gives bitwise the Trainer's steps for the same seed", "[TrainStep]") {
  SECTION("topk") { checkStepMatchesTrainer<sae::TopKArch>("topk"); }
  SECTION("standard") { checkStepMatchesTrainer<sae::StandardArch>("standard"); }
  SECTION("batchtopk") { checkStepMatchesTrainer<sae::BatchTopKArch>("batchtopk"); }
}

TEST_CASE("TrainStep: backward and apply are the two halves of run", "[TrainStep]") {
  // Two replicas on the same batch whose gradients are averaged between backward and apply
  // (what an all-reduce does) take the step of one replica alone.
  auto cfg = toyConfig("topk", "");
  cfg.decoder_unit_norm = true;
  const sae::SaeConfig sc = cfg.saeConfig(16);
  sae::train::TrainStep<float, sae::TopKArch> one(sc, cfg.stepOptions(), 2),
      a(sc, cfg.stepOptions(), 2), b(sc, cfg.stepOptions(), 2);
  Source src(toyData(), 9, cfg.batch_size);
  sae::RowMatrix<float> x;
  for (int t = 0; t < 5; ++t) {
    src.next(x);
    one.run(x, 1e-3, 1.0);
    a.backward(x, 1.0);
    b.backward(x, 1.0);
    CHECK(sameBits(a.gradients().flat(), b.gradients().flat()));
    a.gradients().flat() = (a.gradients().flat() + b.gradients().flat()) / 2.0f;
    b.gradients().flat() = a.gradients().flat();
    a.apply(1e-3);
    b.apply(1e-3);
  }
  CHECK(sameBits(a.model().parameters().flat(), one.model().parameters().flat()));
  CHECK(sameBits(b.model().parameters().flat(), one.model().parameters().flat()));
  // Decoder rows stay unit-norm.
  CHECK(one.model().decoderNorms().isApproxToConstant(1.0f, 1e-5f));

  // A non-finite loss is reported by backward and changes nothing.
  const sae::Vector<float> before = one.model().parameters().flat();
  x(0, 0) = std::numeric_limits<float>::infinity();
  CHECK_THROWS_AS(one.run(x, 1e-3, 1.0), sae::NumericError);
  CHECK(sameBits(one.model().parameters().flat(), before));
  sae::train::StepOptions no_window;
  no_window.dead_feature_window = 0;
  using Step = sae::train::TrainStep<float, sae::TopKArch>;
  CHECK_THROWS_AS(Step(sc, no_window, 2), sae::ConfigError);
}

namespace {

// Records every event it is told about.
struct Recorder {
  std::vector<std::int64_t> steps, logs, evaluations, checkpoint_steps;
  std::vector<std::string> checkpoints;
  std::vector<double> log_mse;
  int ends = 0;
  sae::train::TrainResult end_result;

  void onStep(const sae::train::TrainProgress& p) {
    steps.push_back(p.step);
    CHECK(p.total_steps == 30);
    CHECK(p.batch_size == 64);
    CHECK(p.seconds >= 0);
  }
  void onLog(const sae::train::TrainProgress& p, const nlohmann::json& line) {
    logs.push_back(line.at("step").get<std::int64_t>());
    log_mse.push_back(line.at("mse").get<double>());
    CHECK(p.step == logs.back());
    REQUIRE(p.last_log != nullptr);
    CHECK(*p.last_log == line);
  }
  void onEvaluation(const sae::train::TrainProgress&, const nlohmann::json& m) {
    evaluations.push_back(m.at("step").get<std::int64_t>());
  }
  void onCheckpoint(const sae::train::TrainProgress& p, const std::string& path) {
    checkpoints.push_back(path);
    checkpoint_steps.push_back(p.step);
  }
  void onEnd(const sae::train::TrainProgress&, const sae::train::TrainResult& r) {
    ++ends;
    end_result = r;
  }
};

// Stops the run after step `at` (ensmallen's convention: true ends the optimisation).
struct StopAt {
  std::int64_t at;
  bool onStep(const sae::train::TrainProgress& p) { return p.step >= at; }
};

// Only onEnd.
struct EndOnly {
  bool ended = false;
  void onEnd(const sae::train::TrainProgress&, const sae::train::TrainResult&) { ended = true; }
};

// No member at all.
struct Nothing {};

std::vector<nlohmann::json> metricsLines(const std::string& out_dir) {
  std::ifstream in(out_dir + "/metrics.jsonl");
  std::vector<nlohmann::json> lines;
  std::string line;
  while (std::getline(in, line)) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

}  // namespace

TEST_CASE("Callbacks see every step, log line, evaluation and checkpoint", "[Trainer][callbacks]") {
  auto cfg = toyConfig("topk", tempDir("callbacks"));
  Source src(toyData(), cfg.seed, cfg.batch_size);
  sae::train::Trainer<float, sae::TopKArch, Source> t(cfg, src);
  t.initialize();
  Recorder rec;
  EndOnly end_only;
  Nothing nothing;
  const auto r = t.train(-1, rec, end_only, nothing);
  REQUIRE(r.completed);
  CHECK_FALSE(r.stopped);

  std::vector<std::int64_t> every(30);
  for (std::size_t i = 0; i < every.size(); ++i) every[i] = std::int64_t(i) + 1;
  CHECK(rec.steps == every);
  // What metrics.jsonl holds, line for line: training lines at 7, 14, 21, 28 and 30, held-out
  // evaluations at 10 and 20 and the final one at 30.
  std::vector<std::int64_t> logs, evaluations;
  std::vector<double> mse;
  for (const auto& line : metricsLines(cfg.out_dir)) {
    if (line.contains("eval")) {
      evaluations.push_back(line.at("step").get<std::int64_t>());
    } else {
      logs.push_back(line.at("step").get<std::int64_t>());
      mse.push_back(line.at("mse").get<double>());
    }
  }
  CHECK(logs == std::vector<std::int64_t>{7, 14, 21, 28, 30});
  CHECK(rec.logs == logs);
  CHECK(rec.log_mse == mse);
  CHECK(evaluations == std::vector<std::int64_t>{10, 20, 30});
  CHECK(rec.evaluations == evaluations);
  CHECK(rec.checkpoint_steps == std::vector<std::int64_t>{12, 24, 30});
  REQUIRE(rec.checkpoints.size() == 3);
  CHECK(rec.checkpoints[0] == cfg.out_dir + "/checkpoints/step_000000012.safetensors");
  CHECK(rec.checkpoints.back() == *t.latestCheckpoint());
  CHECK(rec.ends == 1);
  CHECK(rec.end_result.completed);
  CHECK(rec.end_result.checkpoint == r.checkpoint);
  CHECK(end_only.ended);
}

TEST_CASE("A callback stops the run early; the run resumes bitwise from there",
          "[Trainer][callbacks]") {
  auto cfg = toyConfig("topk", tempDir("stop_full"));
  Source src_a(toyData(), cfg.seed, cfg.batch_size);
  sae::train::Trainer<float, sae::TopKArch, Source> a(cfg, src_a);
  a.initialize();
  REQUIRE(a.train().completed);

  cfg.out_dir = tempDir("stop_split");
  {
    Source src_b(toyData(), cfg.seed, cfg.batch_size);
    sae::train::Trainer<float, sae::TopKArch, Source> b(cfg, src_b);
    b.initialize();
    Recorder rec;
    const auto r = b.train(-1, StopAt{17}, rec);
    CHECK(r.stopped);
    CHECK_FALSE(r.completed);
    CHECK(r.step == 17);
    CHECK(b.step() == 17);
    CHECK(rec.steps.back() == 17);
    // The checkpoint at 12, then the one written on stopping.
    CHECK(rec.checkpoint_steps == std::vector<std::int64_t>{12, 17});
    CHECK(r.checkpoint == cfg.out_dir + "/checkpoints/step_000000017.safetensors");
    CHECK(rec.ends == 1);
    CHECK(rec.end_result.stopped);
  }
  Source src_c(toyData(), cfg.seed, cfg.batch_size);
  sae::train::Trainer<float, sae::TopKArch, Source> c(cfg, src_c);
  c.resume(*c.latestCheckpoint());
  REQUIRE(c.step() == 17);
  REQUIRE(c.train().completed);
  CHECK(sameBits(a.model().parameters().flat(), c.model().parameters().flat()));
  CHECK(sae::test::readFile(a.config().out_dir + "/sae_weights.safetensors") ==
        sae::test::readFile(cfg.out_dir + "/sae_weights.safetensors"));
}

}  // namespace sae_test_train_step

namespace sae_test_train_step {

TEST_CASE("bf16 training for every architecture of the registry", "[TrainStep][bf16]") {
  // Every architecture accepts precision bf16 (the encoder product in bf16); the training it
  // gives follows the fp32 run closely (bf16 keeps 8 bits of mantissa).
  sae::forEachArchitecture([](auto tag) {
    using Arch = typename decltype(tag)::Arch;
    const std::string name = Arch::kName;
    INFO(name);
    auto cfg = toyConfig(name, "");
    if (sae::ArchitectureTraits<Arch>::uses_widths) cfg.matryoshka_widths = {16, 64};
    cfg.precision = sae::Precision::Bf16;
    if (!sae::kernels::bf16Available()) {
      CHECK_THROWS_WITH(cfg.validate(), sae::kernels::kBf16Unavailable);
      return;
    }
    cfg.out_dir = "unused";
    CHECK_NOTHROW(cfg.validate());
    REQUIRE(cfg.stepOptions().bf16_encoder);
    sae::train::TrainStep<float, Arch> bf16(cfg.saeConfig(16), cfg.stepOptions(), 5);
    cfg.precision = "fp32";
    sae::train::TrainStep<float, Arch> fp32(cfg.saeConfig(16), cfg.stepOptions(), 5);
    std::vector<double> a, b;
    driveStep(bf16, cfg, 40, &a);
    driveStep(fp32, cfg, 40, &b);
    for (std::size_t t = 0; t < a.size(); ++t) {
      INFO("step " << t);
      CHECK(a[t] == Approx(b[t]).epsilon(0.05));
    }
    // and the bf16 path was taken: not the same bits as fp32
    CHECK_FALSE(sameBits(bf16.model().parameters().flat(), fp32.model().parameters().flat()));
  });
}

}  // namespace sae_test_train_step
