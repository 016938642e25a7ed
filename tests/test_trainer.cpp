// Trainer: bitwise-identical resume for every architecture and option, divergence handling,
// initialisation and normalisation options, feature recovery on synthetic data.
#include <cmath>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <support/test_support.hpp>

#include <sae/io/saelens.hpp>
#include <sae/sae.hpp>
#include <sae/train/batch_source.hpp>
#include <sae/train/trainer.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_trainer {

namespace {

using sae::Index;
using sae::test::readFile;
using Source = sae::train::SyntheticSource<float>;

// Not created: the trainer creates its out_dir.
std::string tempDir(const std::string& name) {
  return sae::test::scratchDir("trainer", name, false);
}

sae::eval::SyntheticOptions smallData() {
  sae::eval::SyntheticOptions o;
  o.d_in = 16;
  o.n_features = 48;
  o.expected_active = 3;
  return o;
}

sae::train::TrainerConfig smallConfig(const std::string& arch, const std::string& out) {
  sae::train::TrainerConfig c;
  c.architecture = arch;
  c.d_sae = 64;
  c.k = 4;
  c.batch_size = 64;
  c.total_steps = 40;
  c.lr = 2e-3;
  c.lr_warmup_steps = 5;
  c.lr_decay_steps = 8;
  c.l1_warmup_steps = 10;
  c.l1_coefficient = 0.5;
  c.dead_feature_window = 6;  // so AuxK is active
  c.feature_sampling_window = 7;
  c.log_every = 9;
  c.eval_every = 11;
  c.eval_rows = 100;
  c.out_dir = out;
  c.seed = 5;
  return c;
}

template <typename Arch>
void checkResumeIdentical(sae::train::TrainerConfig cfg, const std::string& name) {
  using Trainer = sae::train::Trainer<float, Arch, Source>;
  cfg.out_dir = tempDir(name + "_full");
  Source src_a(smallData(), cfg.seed, cfg.batch_size);
  Trainer a(cfg, src_a);
  a.initialize();
  const auto ra = a.train();
  REQUIRE(ra.completed);

  const std::string full_dir = cfg.out_dir;
  cfg.out_dir = tempDir(name + "_split");
  {
    Source src_b(smallData(), cfg.seed, cfg.batch_size);
    Trainer b(cfg, src_b);
    b.initialize();
    const auto rb = b.train(17);
    REQUIRE_FALSE(rb.completed);
    REQUIRE(rb.step == 17);
  }
  // A fresh process-like state: new source, new trainer, resume from the latest checkpoint.
  Source src_c(smallData(), cfg.seed, cfg.batch_size);
  Trainer c(cfg, src_c);
  const auto latest = c.latestCheckpoint();
  REQUIRE(latest);
  c.resume(*latest);
  REQUIRE(c.step() == 17);
  const auto rc = c.train();
  REQUIRE(rc.completed);

  const auto& pa = a.model().parameters().flat();
  const auto& pc = c.model().parameters().flat();
  REQUIRE(pa.size() == pc.size());
  CHECK(std::memcmp(pa.data(), pc.data(), sizeof(float) * std::size_t(pa.size())) == 0);
  const auto& ma = a.optimizer().firstMoment().flat();
  const auto& mc = c.optimizer().firstMoment().flat();
  CHECK(std::memcmp(ma.data(), mc.data(), sizeof(float) * std::size_t(ma.size())) == 0);
  CHECK(a.deadLatents().stepsSinceFired() == c.deadLatents().stepsSinceFired());
  // Non-trainable buffers (BatchTopK's topk_threshold) continue bit for bit as well.
  const auto& ba = a.model().buffers().flat();
  const auto& bc = c.model().buffers().flat();
  REQUIRE(ba.size() == bc.size());
  for (Index i = 0; i < ba.size(); ++i) {
    CHECK(std::memcmp(&ba[i], &bc[i], sizeof(double)) == 0);
    CHECK(ba[i] > 0);  // it moved from its start
  }
  CHECK(readFile(full_dir + "/sae_weights.safetensors") ==
        readFile(cfg.out_dir + "/sae_weights.safetensors"));
  CHECK(readFile(full_dir + "/sparsity.safetensors") ==
        readFile(cfg.out_dir + "/sparsity.safetensors"));
  CHECK(readFile(full_dir + "/cfg.json") == readFile(cfg.out_dir + "/cfg.json"));
}

}  // namespace

TEST_CASE("Resumed training is bitwise identical to an uninterrupted run", "[Trainer]") {
  SECTION("topk") { checkResumeIdentical<sae::TopKArch>(smallConfig("topk", ""), "topk"); }
  SECTION("standard") {
    checkResumeIdentical<sae::StandardArch>(smallConfig("standard", ""), "standard");
  }
  SECTION("gated") { checkResumeIdentical<sae::GatedArch>(smallConfig("gated", ""), "gated"); }
  SECTION("jumprelu, step mode with the pre-activation loss") {
    auto cfg = smallConfig("jumprelu", "");
    cfg.l0_coefficient = 0.05;
    cfg.pre_act_loss_coefficient = 0.1;
    checkResumeIdentical<sae::JumpReLUArch>(cfg, "jumprelu_step");
  }
  SECTION("jumprelu, tanh mode") {
    auto cfg = smallConfig("jumprelu", "");
    cfg.l0_coefficient = 0.05;
    cfg.jumprelu_sparsity_loss_mode = "tanh";
    checkResumeIdentical<sae::JumpReLUArch>(cfg, "jumprelu_tanh");
  }
  SECTION("batchtopk: the EMA threshold is checkpointed") {
    auto cfg = smallConfig("batchtopk", "");
    cfg.topk_threshold_lr = 0.05;
    checkResumeIdentical<sae::BatchTopKArch>(cfg, "batchtopk");
  }
  SECTION("matryoshka_batchtopk") {
    auto cfg = smallConfig("matryoshka_batchtopk", "");
    cfg.matryoshka_widths = {8, 24, 64};
    checkResumeIdentical<sae::MatryoshkaBatchTopKArch>(cfg, "matryoshka");
  }
  SECTION("topk with every option: geometric median, unit norm, input normalisation") {
    auto cfg = smallConfig("topk", "");
    cfg.b_dec_init = "geometric_median";
    cfg.init_sample_rows = 200;
    cfg.decoder_unit_norm = true;
    cfg.normalize_activations = "expected_average_only_in";
    cfg.norm_estimate_batches = 3;
    cfg.lr_scheduler = "cosine";
    cfg.checkpoint_every = 10;
    checkResumeIdentical<sae::TopKArch>(cfg, "options");
  }
}

TEST_CASE("Checkpoints are kept up to keep_checkpoints", "[Trainer]") {
  auto cfg = smallConfig("topk", tempDir("keep"));
  cfg.checkpoint_every = 4;
  cfg.keep_checkpoints = 2;
  Source src(smallData(), cfg.seed, cfg.batch_size);
  sae::train::Trainer<float, sae::TopKArch, Source> t(cfg, src);
  t.initialize();
  REQUIRE(t.train().completed);
  int files = 0;
  for (std::int64_t s = 1; s <= cfg.total_steps; ++s) {
    std::ifstream f(cfg.out_dir + "/checkpoints/step_" +
                    std::string(9 - std::to_string(s).size(), '0') + std::to_string(s) +
                    ".safetensors");
    if (f) ++files;
  }
  CHECK(files == 2);
  CHECK(*t.latestCheckpoint() == cfg.out_dir + "/checkpoints/step_000000040.safetensors");
}

namespace {

// Synthetic data with one overflowing batch: the loss becomes infinite at that step.
struct PoisonedSource : Source {
  PoisonedSource(std::int64_t bad) : Source(smallData(), 5, 64), m_bad(bad) {}
  void next(sae::RowMatrix<float>& batch) {
    const bool poison = position().at("batches").get<std::int64_t>() == m_bad;
    Source::next(batch);
    if (poison) batch(3, 2) = 3e38f;
  }
  std::int64_t m_bad;
};

}  // namespace

TEST_CASE("A non-finite loss stops training, names the step, keeps the last checkpoint",
          "[Trainer]") {
  auto cfg = smallConfig("standard", tempDir("nan"));
  cfg.checkpoint_every = 10;
  PoisonedSource src(23);
  sae::train::Trainer<float, sae::StandardArch, PoisonedSource> t(cfg, src);
  t.initialize();
  try {
    t.train();
    FAIL("no error");
  } catch (const sae::NumericError& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("step 23") != std::string::npos);
    CHECK(msg.find("step_000000020.safetensors") != std::string::npos);
  }
  const auto latest = t.latestCheckpoint();
  REQUIRE(latest);
  CHECK(*latest == cfg.out_dir + "/checkpoints/step_000000020.safetensors");
  const sae::train::Checkpoint ck(*latest);  // verifies
  CHECK(ck.state().at("step") == 20);
  std::ifstream final_weights(cfg.out_dir + "/sae_weights.safetensors");
  CHECK_FALSE(final_weights);
}

TEST_CASE("Geometric median (Weiszfeld) resists outliers", "[Trainer]") {
  Eigen::MatrixXd x(5, 2);
  x << 0, 0, 1, 0, 0, 1, 1, 1, 100, 100;
  const Eigen::VectorXd m = sae::train::detail::geometricMedian(x);
  // Inside the unit square, where the unit vectors towards the points sum to zero.
  CHECK(m[0] > 0.5);
  CHECK(m[0] < 1.0);
  CHECK(m[1] == Approx(m[0]).epsilon(1e-6));
  Eigen::VectorXd g = Eigen::VectorXd::Zero(2);
  for (Index r = 0; r < x.rows(); ++r)
    g += (x.row(r).transpose() - m) / (x.row(r).transpose() - m).norm();
  CHECK(g.norm() < 1e-4);
  const Eigen::VectorXd mean = x.colwise().mean().transpose();
  CHECK(mean[0] > 20);
}

TEST_CASE("Initialisation and normalisation options", "[Trainer]") {
  auto cfg = smallConfig("topk", tempDir("init"));
  cfg.total_steps = 20;
  cfg.b_dec_init = "mean";
  cfg.init_sample_rows = 128;
  cfg.decoder_unit_norm = true;
  cfg.normalize_activations = "expected_average_only_in";
  cfg.norm_estimate_batches = 4;
  Source src(smallData(), cfg.seed, cfg.batch_size);
  sae::train::Trainer<float, sae::TopKArch, Source> t(cfg, src);
  t.initialize();

  // s = sqrt(d_in) / mean ||x|| over the first 4 batches, which the source yields again.
  Source probe(smallData(), cfg.seed, cfg.batch_size);
  sae::RowMatrix<float> x;
  double norms = 0, rows = 0;
  Eigen::VectorXd sum = Eigen::VectorXd::Zero(16);
  for (int b = 0; b < 4; ++b) {
    probe.next(x);
    norms += x.cast<double>().rowwise().norm().sum();
    rows += double(x.rows());
  }
  const double s = std::sqrt(16.0) / (norms / rows);
  CHECK(t.inputScale() == Approx(s).epsilon(1e-12));
  Source probe2(smallData(), cfg.seed, cfg.batch_size);
  for (int b = 0; b < 2; ++b) {
    probe2.next(x);
    sum += x.cast<double>().colwise().sum().transpose();
  }
  const Eigen::VectorXd mean = sum / 128.0 * s;
  const auto b_dec = t.model().parameters().flat("b_dec");
  for (Index i = 0; i < 16; ++i) CHECK(double(b_dec[i]) == Approx(mean[i]).margin(1e-5));

  REQUIRE(t.train().completed);
  const auto W = t.model().parameters().rowMajor("W_dec");
  for (Index i = 0; i < W.rows(); ++i) CHECK(double(W.row(i).norm()) == Approx(1.0).epsilon(1e-5));

  // The saved SAE works on raw activations: the scale is folded into its weights.
  const auto loaded = sae::io::loadSaeLens<float>(cfg.out_dir);
  const auto& saved = std::get<sae::TopKSAE<float>>(loaded.model);
  Source data(smallData(), 99, 50);
  data.next(x);
  const sae::RowMatrix<float> want =
      t.model().forward(x * float(t.inputScale())) / float(t.inputScale());
  const sae::RowMatrix<float> got = saved.forward(x);
  CHECK((got - want).cwiseAbs().maxCoeff() <= 1e-4f * std::max(1.0f, want.cwiseAbs().maxCoeff()));
  CHECK(loaded.config.normalize_activations == "none");
}

TEST_CASE("The trainer recovers synthetic features (MMCS >= 0.9)", "[Trainer]") {
  sae::eval::SyntheticOptions o;
  o.d_in = 32;
  o.n_features = 64;
  o.expected_active = 3;
  auto cfg = smallConfig("topk", tempDir("mmcs"));
  cfg.d_sae = 128;
  cfg.k = 4;
  cfg.batch_size = 256;
  cfg.total_steps = 500;
  cfg.lr = 3e-3;
  cfg.lr_decay_steps = 100;
  cfg.dead_feature_window = 50;
  cfg.log_every = 100;
  cfg.eval_every = 0;
  Source src(o, 1, cfg.batch_size);
  sae::train::Trainer<float, sae::TopKArch, Source> t(cfg, src);
  t.initialize();
  const auto r = t.train();
  REQUIRE(r.completed);
  const double mmcs = sae::eval::meanMaxCosineSimilarity(src.directions(),
                                                         t.model().parameters().rowMajor("W_dec"));
  INFO("MMCS " << mmcs << ", final " << r.final_metrics.dump());
  CHECK(mmcs >= 0.9);
  CHECK(r.final_metrics.at("explained_variance").get<double>() > 0.8);
}

TEST_CASE("TrainerConfig validation and JSON round trip", "[Trainer]") {
  sae::train::TrainerConfig c;
  c.out_dir = "x";
  c.lr = 1e-3;
  c.seed = 42;
  sae::train::TrainerConfig d;
  d.updateFromJson(c.toJson(), "test");
  CHECK(d.toJson() == c.toJson());
  CHECK_THROWS_WITH(d.updateFromJson({{"bogus", 1}}, "cfg.json"),
                    Catch::Contains("cfg.json: unknown field 'bogus'"));
  CHECK_THROWS_WITH(d.updateFromJson({{"lr", "fast"}}, "cfg.json"),
                    Catch::Contains("field 'lr' has the wrong type"));
  c.architecture = "relu";
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("architecture must be standard, gated, topk"));
  c.architecture = "jumprelu";
  c.validate();
  c.jumprelu_sparsity_loss_mode = "l1";
  CHECK_THROWS_WITH(c.validate(), "jumprelu_sparsity_loss_mode must be step or tanh, found 'l1'");
  c.jumprelu_sparsity_loss_mode = "tanh";
  c.jumprelu_bandwidth = 0;
  CHECK_THROWS_WITH(c.validate(), "jumprelu_bandwidth must be positive, found 0");
  c.jumprelu_bandwidth = 0.1;
  c.l0_coefficient = -2;
  CHECK_THROWS_WITH(c.validate(), "l0_coefficient must be finite and >= 0, found -2");
  c.l0_coefficient = 3;
  c.pre_act_loss_coefficient = 0.25;
  c.jumprelu_tanh_scale = 2;
  c.jumprelu_init_threshold = -0.5;
  const sae::SaeConfig sc = c.saeConfig(8);
  CHECK(sc.l0_coefficient == 3);
  CHECK(sc.jumprelu_bandwidth == 0.1);
  CHECK(sc.sparsity_loss_mode == sae::SaeConfig::SparsityLossMode::Tanh);
  CHECK(sc.jumprelu_tanh_scale == 2);
  CHECK(sc.jumprelu_init_threshold == -0.5);
  CHECK(sc.pre_act_loss_coefficient == 0.25);
  sae::train::TrainerConfig e;
  e.updateFromJson(c.toJson(), "test");
  CHECK(e.toJson() == c.toJson());
  CHECK(e.jumprelu_sparsity_loss_mode == "tanh");
}

TEST_CASE("JumpReLU training lowers the loss and L0 falls far below d_sae", "[Trainer]") {
  sae::eval::SyntheticOptions o;
  o.d_in = 32;
  o.n_features = 64;
  o.expected_active = 3;
  for (const char* mode : {"step", "tanh"}) {
    INFO("mode " << mode);
    auto cfg = smallConfig("jumprelu", tempDir(std::string("jumprelu_") + mode));
    cfg.d_sae = 128;
    cfg.batch_size = 256;
    cfg.total_steps = 300;
    cfg.lr = 3e-3;
    cfg.lr_decay_steps = 60;
    cfg.l1_warmup_steps = 30;
    cfg.l0_coefficient = 0.1;
    cfg.jumprelu_sparsity_loss_mode = mode;
    cfg.pre_act_loss_coefficient = 1e-3;
    cfg.dead_feature_window = 50;
    cfg.log_every = 10;
    cfg.eval_every = 0;
    Source src(o, 1, cfg.batch_size);
    sae::train::Trainer<float, sae::JumpReLUArch, Source> t(cfg, src);
    t.initialize();
    const auto r = t.train();
    REQUIRE(r.completed);
    // metrics.jsonl: the first and last logged windows.
    std::ifstream in(cfg.out_dir + "/metrics.jsonl");
    std::vector<nlohmann::json> lines;
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      if (j.contains("losses")) lines.push_back(j);
    }
    REQUIRE(lines.size() == 30);
    const auto& first = lines.front();
    const auto& last = lines.back();
    INFO("first " << first.dump() << "\nlast " << last.dump() << "\nfinal "
                  << r.final_metrics.dump());
    CHECK(first.at("losses").contains("l0_loss"));
    CHECK(first.at("losses").contains("pre_act_loss"));
    CHECK(first.at("coefficients").at("l0_coefficient").get<double>() < cfg.l0_coefficient);
    CHECK(last.at("coefficients").at("l0_coefficient").get<double>() == cfg.l0_coefficient);
    CHECK(last.at("mse").get<double>() < 0.5 * first.at("mse").get<double>());
    CHECK(first.at("l0").get<double>() > 20);
    CHECK(last.at("l0").get<double>() < 12);
    CHECK(r.final_metrics.at("l0").get<double>() < 12);
    CHECK(r.final_metrics.at("explained_variance").get<double>() > 0.7);
    // The thresholds rose from their initial 0.01, and the decoder found the features.
    CHECK(t.model().parameters().flat("threshold").maxCoeff() > 0.1f);
    CHECK(sae::eval::meanMaxCosineSimilarity(src.directions(),
                                             t.model().parameters().rowMajor("W_dec")) > 0.8);
  }
}

}  // namespace sae_test_trainer
