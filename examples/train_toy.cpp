// Trains a TopK SAE on synthetic activations with known ground-truth features in superposition
// and reports how well it recovers them (mean max cosine similarity, MMCS).
//
// A plain loop over the library's pieces: data -> model.backward -> clip -> Adam -> metrics.
//
//   train_toy                       # defaults: d_in 64, 256 true features, d_sae 512, k 8
//   train_toy --steps 500 --seed 3  # see --help for every option
#include <chrono>
#include <cstdio>
#include <exception>

#include <CLI/CLI.hpp>

#include <sae/sae.hpp>

int main(int argc, char** argv) {
  sae::eval::SyntheticOptions data_opts;
  sae::SaeConfig cfg;
  cfg.d_in = data_opts.d_in;
  cfg.d_sae = 512;
  cfg.k = 8;
  cfg.rescale_acts_by_decoder_norm = true;
  cfg.aux_loss_coefficient = 1.0 / 32;
  std::int64_t steps = 3000, batch = 1024, log_every = 250, dead_window = 250;
  std::uint64_t seed = 0;
  double lr = 1e-3, min_mmcs = 0;
  int threads = 0;

  CLI::App app{"Train a TopK SAE on synthetic superposition data and score feature recovery."};
  app.add_option("--steps", steps, "training steps")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--batch", batch, "tokens per step")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--d-in", data_opts.d_in, "activation width")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--features", data_opts.n_features, "ground-truth features")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--active", data_opts.expected_active, "mean features firing per token")
      ->capture_default_str();
  app.add_option("--noise", data_opts.noise, "noise standard deviation")->capture_default_str();
  app.add_option("--d-sae", cfg.d_sae, "SAE latents")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--k", cfg.k, "latents kept per token")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--lr", lr, "Adam learning rate")->capture_default_str();
  app.add_option("--seed", seed, "random seed (data and initialisation)")->capture_default_str();
  app.add_option("--threads", threads, "threads (0: OpenMP default)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--log-every", log_every, "steps between progress lines")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--dead-window", dead_window, "steps without firing before a latent is dead")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--require-mmcs", min_mmcs, "exit with status 1 if the final MMCS is below this")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  try {
    cfg.d_in = data_opts.d_in;
    if (threads > 0) sae::setThreads(threads);
    sae::eval::SyntheticFeatures<float> data(data_opts, seed);
    sae::TopKSAE<float> model(cfg, seed + 1);
    auto grads = model.makeGradients();
    sae::AdamOptions adam_opts;
    adam_opts.lr = lr;
    sae::Adam<float> adam(model.parameters(), adam_opts);
    sae::LrSchedule schedule;
    schedule.lr = lr;
    schedule.total_steps = steps;
    schedule.warmup_steps = std::min<std::int64_t>(100, steps / 10);
    schedule.decay_steps = steps / 5;
    schedule.validate();
    sae::train::DeadLatentTracker dead(cfg.d_sae, dead_window);
    sae::TopKSAE<float>::Workspace ws;
    sae::RowMatrix<float> x;
    sae::eval::ReconstructionMetrics recon;
    sae::eval::FiringStats firing(cfg.d_sae);

    std::printf(
        "TopK SAE: d_in %ld, d_sae %ld, k %ld | data: %ld features, %.1f active, noise %g"
        " | batch %ld, steps %ld, threads %d\n",
        long(cfg.d_in), long(cfg.d_sae), long(cfg.k), long(data_opts.n_features),
        data_opts.expected_active, data_opts.noise, long(batch), long(steps), sae::maxThreads());
    std::printf("%8s %10s %8s %10s %8s %10s %10s\n", "step", "mse", "L0", "expl.var", "dead", "lr",
                "tokens/s");
    const auto start = std::chrono::steady_clock::now();
    auto interval_start = start;
    for (std::int64_t step = 0; step < steps; ++step) {
      data.sample(batch, x);
      sae::TrainOptions opts;
      opts.dead_mask = &dead.mask();
      const auto terms = model.backward(x, grads, opts, ws);
      if (!std::isfinite(terms.total()))
        throw sae::NumericError("loss is not finite at step " + std::to_string(step));
      sae::clipGradNorm(grads, 1.0);
      adam.step(model.parameters(), grads, schedule.lrAt(step));
      dead.update(ws.codes);
      recon.add<float>(x, ws.reconstruction);
      firing.add(ws.codes);
      if ((step + 1) % log_every == 0 || step + 1 == steps) {
        const auto now = std::chrono::steady_clock::now();
        const double secs = std::chrono::duration<double>(now - interval_start).count();
        std::printf("%8ld %10.5f %8.2f %10.4f %8.3f %10.2e %10.0f\n", long(step + 1), recon.mse(),
                    firing.l0(), recon.explainedVariance(), dead.deadFraction(),
                    schedule.lrAt(step), double(recon.tokens()) / secs);
        recon.reset();
        firing.reset();
        interval_start = now;
      }
    }
    const double total =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double mmcs =
        sae::eval::meanMaxCosineSimilarity(data.directions(), model.parameters().rowMajor("W_dec"));
    std::printf(
        "trained %ld steps in %.1f s; mean max cosine similarity with the true features: "
        "%.4f\n",
        long(steps), total, mmcs);
    if (mmcs < min_mmcs) {
      std::fprintf(stderr, "train_toy: MMCS %.4f is below the required %.4f\n", mmcs, min_mmcs);
      return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_toy: %s\n", e.what());
    return 2;
  }
  return 0;
}
