// fp32 vs bf16 mixed precision (kernels/bf16_matmul.hpp) for the TopK SAE.
//
//   bench_bf16                       # big config, 1 and 2 threads, then the accuracy run
//   bench_bf16 --threads 2 --steps 5 --accuracy-steps 0
//
// 1. Speed: full TopK training steps (forward, loss, backward, clip, Adam) at d_in 768,
//    d_sae 24576, batch 4096, k 32, fp32 and bf16 interleaved step by step (the machine is
//    shared: compare the two columns of one run), plus the encoder GEMM alone over the batch
//    (Eigen fp32 vs oneDNN bf16, GFLOP/s) and the per-step refresh of the bf16 weight copy.
// 2. Accuracy: the same short training run on synthetic data (eval/synthetic.hpp, as
//    examples/train_toy.cpp) in both precisions, from the same seed and batches; prints the
//    final MSE and explained variance of each on held-out rows (evaluated in fp32).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include <sae/sae.hpp>

namespace {

using Clock = std::chrono::steady_clock;
using sae::Index;

double seconds(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

struct Options {
  Index d_in = 768, d_sae = 24576, batch = 4096, k = 32, tile_rows = 512;
  int steps = 3, warmup = 1;
  std::string threads = "1,2";
  // Accuracy run.
  std::int64_t acc_steps = 600;
  Index acc_d_in = 128, acc_features = 1024, acc_d_sae = 2048, acc_k = 16, acc_batch = 1024;
  double acc_lr = 1e-3;
};

sae::SaeConfig topkConfig(Index d_in, Index d_sae, Index k) {
  sae::SaeConfig cfg;
  cfg.d_in = d_in;
  cfg.d_sae = d_sae;
  cfg.k = k;
  cfg.rescale_acts_by_decoder_norm = true;
  cfg.aux_loss_coefficient = 1.0 / 32;
  return cfg;
}

void speed(const Options& o, int threads) {
  sae::setThreads(threads);
  const auto cfg = topkConfig(o.d_in, o.d_sae, o.k);
  sae::TopKSAE<float> model(cfg, 1);
  sae::Rng rng(2);
  sae::RowMatrix<float> x(o.batch, o.d_in);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = float(rng.normal());
  auto grads = model.makeGradients();
  sae::Adam<float> adam(model.parameters());
  sae::LatentMask dead = sae::LatentMask::Zero(o.d_sae);
  sae::TrainOptions opts;
  opts.dead_mask = &dead;
  sae::TopKSAE<float>::Workspace ws32, ws16;
  ws32.tile_rows = ws16.tile_rows = o.tile_rows;
  ws16.bf16_encoder = true;

  // Whole steps, fp32 and bf16 alternating.
  std::vector<double> t32, t16;
  for (int s = 0; s < o.warmup + o.steps; ++s) {
    for (int precision = 0; precision < 2; ++precision) {
      auto& ws = precision == 0 ? ws32 : ws16;
      const auto t0 = Clock::now();
      model.backward(x, grads, opts, ws);
      sae::clipGradNorm(grads, 1.0);
      adam.step(model.parameters(), grads);
      const double dt = seconds(t0);
      if (s >= o.warmup) (precision == 0 ? t32 : t16).push_back(dt);
    }
  }

  // The encoder product alone, over the batch in tiles, and the weight refresh.
  const auto W_enc = model.parameters().colMajor("W_enc");
  sae::RowMatrix<float> tile(std::min(o.tile_rows, o.batch), o.d_sae);
  std::vector<double> g32, g16, conv;
  sae::kernels::Bf16MatmulFor<float> mm;
  for (int s = 0; s < o.warmup + o.steps; ++s) {
    auto t0 = Clock::now();
    for (Index r0 = 0; r0 < o.batch; r0 += tile.rows()) {
      const Index rows = std::min(tile.rows(), o.batch - r0);
      tile.topRows(rows).noalias() = x.middleRows(r0, rows) * W_enc;
    }
    const double e32 = seconds(t0);
    t0 = Clock::now();
    mm.setWeights(W_enc);
    const double c = seconds(t0);
    t0 = Clock::now();
    for (Index r0 = 0; r0 < o.batch; r0 += tile.rows()) {
      const Index rows = std::min(tile.rows(), o.batch - r0);
      mm.multiply(x.middleRows(r0, rows), tile.topRows(rows));
    }
    const double e16 = seconds(t0);
    if (s < o.warmup) continue;
    g32.push_back(e32);
    g16.push_back(e16);
    conv.push_back(c);
  }
  const double flops = 2.0 * double(o.batch) * double(o.d_in) * double(o.d_sae);
  const double m32 = median(t32), m16 = median(t16);
  std::printf(
      "threads %d | step fp32 %7.1f ms (%6.0f tokens/s) | step bf16 %7.1f ms (%6.0f tokens/s) | "
      "speed-up %.2fx\n",
      sae::maxThreads(), m32 * 1e3, double(o.batch) / m32, m16 * 1e3, double(o.batch) / m16,
      m32 / m16);
  std::printf(
      "          | encoder GEMM fp32 Eigen %6.1f ms (%4.0f GFLOP/s) | bf16 oneDNN %6.1f ms "
      "(%4.0f GFLOP/s, %s) | W_enc -> bf16 %.1f ms\n",
      median(g32) * 1e3, flops / median(g32) * 1e-9, median(g16) * 1e3, flops / median(g16) * 1e-9,
      mm.implementation(tile.rows()).c_str(), median(conv) * 1e3);
  std::fflush(stdout);
}

struct AccuracyResult {
  double mse = 0, explained_variance = 0, train_mse = 0, train_ev = 0, mmcs = 0, seconds = 0;
};

AccuracyResult trainSynthetic(const Options& o, bool bf16) {
  sae::eval::SyntheticOptions data_opts;
  data_opts.d_in = o.acc_d_in;
  data_opts.n_features = o.acc_features;
  const std::uint64_t seed = 7;
  sae::eval::SyntheticFeatures<float> data(data_opts, seed);
  const sae::RowMatrix<float> holdout = data.sample(4 * o.acc_batch);
  const auto cfg = topkConfig(o.acc_d_in, o.acc_d_sae, o.acc_k);
  sae::TopKSAE<float> model(cfg, seed + 1);
  auto grads = model.makeGradients();
  sae::AdamOptions adam_opts;
  adam_opts.lr = o.acc_lr;
  sae::Adam<float> adam(model.parameters(), adam_opts);
  sae::LrSchedule schedule;
  schedule.lr = o.acc_lr;
  schedule.total_steps = o.acc_steps;
  schedule.warmup_steps = std::min<std::int64_t>(100, o.acc_steps / 10);
  schedule.decay_steps = o.acc_steps / 5;
  schedule.validate();
  sae::train::DeadLatentTracker dead(cfg.d_sae, 250);
  sae::TopKSAE<float>::Workspace ws;
  ws.bf16_encoder = bf16;
  sae::RowMatrix<float> x;
  sae::eval::ReconstructionMetrics window;
  const auto t0 = Clock::now();
  for (std::int64_t step = 0; step < o.acc_steps; ++step) {
    data.sample(o.acc_batch, x);
    sae::TrainOptions opts;
    opts.dead_mask = &dead.mask();
    const auto terms = model.backward(x, grads, opts, ws);
    if (!std::isfinite(terms.total())) throw sae::NumericError("loss is not finite");
    sae::clipGradNorm(grads, 1.0);
    adam.step(model.parameters(), grads, schedule.lrAt(step));
    dead.update(ws.codes);
    if (step >= o.acc_steps - 50) window.add<float>(x, ws.reconstruction);
  }
  AccuracyResult r;
  r.seconds = seconds(t0);
  r.train_mse = window.mse();
  r.train_ev = window.explainedVariance();
  sae::eval::ReconstructionMetrics eval;
  eval.add<float>(holdout, model.forward(holdout));  // fp32 inference for both
  r.mse = eval.mse();
  r.explained_variance = eval.explainedVariance();
  r.mmcs =
      sae::eval::meanMaxCosineSimilarity(data.directions(), model.parameters().rowMajor("W_dec"));
  return r;
}

void accuracy(const Options& o) {
  std::printf(
      "\naccuracy: TopK d_in %ld, d_sae %ld, k %ld, synthetic %ld features, batch %ld, %ld steps, "
      "threads %d; held-out %ld rows evaluated in fp32\n",
      long(o.acc_d_in), long(o.acc_d_sae), long(o.acc_k), long(o.acc_features), long(o.acc_batch),
      long(o.acc_steps), sae::maxThreads(), long(4 * o.acc_batch));
  std::printf("%-6s %12s %10s %14s %12s %8s %8s\n", "", "held-out MSE", "expl.var",
              "train MSE (50)", "train e.v.", "MMCS", "seconds");
  AccuracyResult res[2];
  for (int p = 0; p < 2; ++p) {
    res[p] = trainSynthetic(o, p == 1);
    std::printf("%-6s %12.6f %10.6f %14.6f %12.6f %8.4f %8.1f\n", p == 0 ? "fp32" : "bf16",
                res[p].mse, res[p].explained_variance, res[p].train_mse, res[p].train_ev,
                res[p].mmcs, res[p].seconds);
    std::fflush(stdout);
  }
  std::printf("bf16 - fp32: held-out MSE %+.2f%%, explained variance %+.6f, MMCS %+.4f\n",
              100.0 * (res[1].mse / res[0].mse - 1.0),
              res[1].explained_variance - res[0].explained_variance, res[1].mmcs - res[0].mmcs);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"TopK training step and accuracy, fp32 vs bf16 mixed precision."};
  app.add_option("--d-in", o.d_in)->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--d-sae", o.d_sae)->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--batch", o.batch)->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--k", o.k)->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--tile-rows", o.tile_rows, "rows of pre-activations per encoder product")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--steps", o.steps, "timed steps per precision (0: skip the speed part)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--warmup", o.warmup, "untimed steps first")->capture_default_str();
  app.add_option("--threads", o.threads, "comma-separated thread counts")->capture_default_str();
  app.add_option("--accuracy-steps", o.acc_steps, "steps of the accuracy run (0: skip it)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--accuracy-d-sae", o.acc_d_sae)->capture_default_str();
  app.add_option("--accuracy-batch", o.acc_batch)->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (!sae::kernels::bf16Available()) {
    std::fprintf(stderr, "bench_bf16: %s\n", sae::kernels::kBf16Unavailable);
    return 1;
  }
  try {
    std::vector<int> thread_counts;
    std::stringstream ss(o.threads);
    for (std::string item; std::getline(ss, item, ',');) thread_counts.push_back(std::stoi(item));
    std::printf("TopK d_in %ld, d_sae %ld, batch %ld, k %ld, tile rows %ld\n", long(o.d_in),
                long(o.d_sae), long(o.batch), long(o.k), long(o.tile_rows));
    if (o.steps > 0)
      for (int t : thread_counts) speed(o, t);
    if (o.acc_steps > 0) accuracy(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_bf16: %s\n", e.what());
    return 1;
  }
  return 0;
}
