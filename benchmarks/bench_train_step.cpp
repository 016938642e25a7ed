// Times full training steps (forward, loss, backward, clip, Adam) of one architecture.
//
//   bench_train_step --arch topk --d-in 768 --d-sae 24576 --batch 4096 --k 32 --threads 2
//
// Prints ms/step, tokens/s and GFLOP/s counting useful FLOPs as DESIGN.md section 5 does
// (2 per multiply-add): dense step 12 B d n; TopK step 2 B d n + 8 B k d (also BatchTopK's and
// Matryoshka's: k per token on average; Matryoshka uses 4 levels, d_sae / 8, / 4, / 2, d_sae).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include <sae/sae.hpp>

namespace {

struct Options {
  std::string arch = "topk";
  sae::Index d_in = 768, d_sae = 24576, batch = 4096, k = 32;
  int steps = 5, warmup = 1, threads = 0;
};

template <typename Model>
int run(const Options& o) {
  sae::SaeConfig cfg;
  cfg.d_in = o.d_in;
  cfg.d_sae = o.d_sae;
  cfg.k = o.k;
  cfg.rescale_acts_by_decoder_norm = true;
  cfg.matryoshka_widths = {o.d_sae / 8, o.d_sae / 4, o.d_sae / 2, o.d_sae};
  Model model(cfg, 1);
  sae::Rng rng(2);
  sae::RowMatrix<float> x(o.batch, o.d_in);
  for (sae::Index i = 0; i < x.size(); ++i) x.data()[i] = float(rng.normal());
  auto grads = model.makeGradients();
  sae::Adam<float> adam(model.parameters());
  typename Model::Workspace ws;
  sae::LatentMask dead = sae::LatentMask::Zero(o.d_sae);
  sae::TrainOptions opts;
  opts.dead_mask = &dead;
  std::vector<double> times;
  for (int s = 0; s < o.warmup + o.steps; ++s) {
    const auto t0 = std::chrono::steady_clock::now();
    model.backward(x, grads, opts, ws);
    adam.step(model.parameters(), grads, adam.options().lr, sae::clipCoefficient(grads, 1.0));
    model.updateBuffers(ws);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s >= o.warmup) times.push_back(dt);
  }
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];
  const double B = double(o.batch), d = double(o.d_in), n = double(o.d_sae), k = double(o.k);
  const bool sparse = o.arch == "topk" || o.arch == "batchtopk" || o.arch == "matryoshka_batchtopk";
  const double flops = sparse ? 2 * B * d * n + 8 * B * k * d : 12 * B * d * n;
  std::printf(
      "arch %s d_in %ld d_sae %ld batch %ld k %ld threads %d: %.1f ms/step, %.0f tokens/s, "
      "%.1f GFLOP/s (median of %d)\n",
      o.arch.c_str(), long(o.d_in), long(o.d_sae), long(o.batch), long(o.k), sae::maxThreads(),
      median * 1e3, B / median, flops / median * 1e-9, o.steps);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Time SAE training steps."};
  app.add_option("--arch", o.arch, "standard, gated, topk, batchtopk or matryoshka_batchtopk")
      ->check(CLI::IsMember({"standard", "gated", "topk", "batchtopk", "matryoshka_batchtopk"}))
      ->capture_default_str();
  app.add_option("--d-in", o.d_in)->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--d-sae", o.d_sae)->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--batch", o.batch)->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--k", o.k)->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--steps", o.steps, "timed steps")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--warmup", o.warmup, "untimed steps first")->capture_default_str();
  app.add_option("--threads", o.threads, "0: OpenMP default")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (o.threads > 0) sae::setThreads(o.threads);
  try {
    if (o.arch == "topk") return run<sae::TopKSAE<float>>(o);
    if (o.arch == "batchtopk") return run<sae::BatchTopKSAE<float>>(o);
    if (o.arch == "matryoshka_batchtopk") return run<sae::MatryoshkaBatchTopKSAE<float>>(o);
    if (o.arch == "gated") return run<sae::GatedSAE<float>>(o);
    return run<sae::StandardSAE<float>>(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_train_step: %s\n", e.what());
    return 1;
  }
}
