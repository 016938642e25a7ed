// Feature steering and ablation with a trained SAE, on synthetic activations whose true
// features are known.
//
// Trains a small TopK SAE for a few seconds, finds the latent whose decoder row best matches
// one true feature direction, then edits a batch in which that feature is present:
//   - ablation (Zero): what the SAE attributes to the latent is removed, so the feature's
//     component along its true direction (nearly) disappears, while the SAE's reconstruction
//     error and every other latent stay as they were;
//   - clamping (Set) and scaling (Multiply) of the latent's code;
//   - additive steering: a multiple of the latent's unit decoder direction is added.
// Each edit goes through the raw-pointer API an inference engine's per-layer callback would use:
// one editor, the hidden-state buffer edited in place. Every result is compared with its closed
// form from the codes and the decoder cosine.
//
//   steer_features                  # defaults: 64 true features in 48 dimensions, d_sae 128
//   steer_features --check          # exit 1 unless ablation removes > 90% of the component
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <vector>

#include <CLI/CLI.hpp>

#include <sae/sae.hpp>

namespace {

using sae::Index;

// Mean over rows of <x_b, direction>.
double meanProjection(const sae::RowMatrix<float>& x, const sae::Vector<float>& direction) {
  return double((x * direction).mean());
}

// Mean over rows of the norm of the part of y_b - x_b orthogonal to the unit vector `truth`:
// how much an edit changed anything other than the feature's own direction.
double orthogonalChange(const sae::RowMatrix<float>& x, const sae::RowMatrix<float>& y,
                        const sae::Vector<float>& truth) {
  double total = 0;
  for (Index b = 0; b < x.rows(); ++b) {
    const sae::Vector<float> d = (y.row(b) - x.row(b)).transpose();
    total += double((d - d.dot(truth) * truth).norm());
  }
  return total / double(x.rows());
}

}  // namespace

int main(int argc, char** argv) {
  sae::eval::SyntheticOptions data_opts;
  data_opts.d_in = 48;
  data_opts.n_features = 64;
  data_opts.expected_active = 3;
  sae::SaeConfig cfg;
  cfg.d_sae = 128;
  cfg.k = 6;
  cfg.rescale_acts_by_decoder_norm = true;
  cfg.aux_loss_coefficient = 1.0 / 32;
  std::int64_t steps = 2000, batch = 256, tokens = 256, feature = 0;
  std::uint64_t seed = 0;
  double lr = 1e-3, magnitude = 1.0, clamp = 3.0, alpha = 2.0;
  int threads = 1;
  bool check = false;

  CLI::App app{"Ablate, clamp and steer a feature of a TopK SAE trained on synthetic data."};
  app.add_option("--steps", steps, "training steps")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--batch", batch, "tokens per training step")
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
  app.add_option("--d-sae", cfg.d_sae, "SAE latents")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--k", cfg.k, "latents kept per token")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--tokens", tokens, "tokens in the edited batch")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--feature", feature, "true feature to edit")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--magnitude", magnitude, "activation of the true feature in the edited batch")
      ->capture_default_str();
  app.add_option("--clamp", clamp, "value the latent is clamped to")->capture_default_str();
  app.add_option("--alpha", alpha, "additive steering coefficient (unit direction)")
      ->capture_default_str();
  app.add_option("--lr", lr, "Adam learning rate")->capture_default_str();
  app.add_option("--seed", seed, "random seed (data and initialisation)")->capture_default_str();
  app.add_option("--threads", threads, "threads (0: OpenMP default; the toy sizes run best on 1)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--check", check,
               "exit with status 1 unless ablation removes > 90% of the feature's component and "
               "every edit matches its closed form");
  CLI11_PARSE(app, argc, argv);

  try {
    cfg.d_in = data_opts.d_in;
    sae::require(magnitude > 0 && std::isfinite(magnitude), "--magnitude must be positive, found ",
                 magnitude);
    sae::require(feature < data_opts.n_features, "--feature must be below ", data_opts.n_features,
                 ", found ", feature);
    sae::setThreads(threads);

    // 1. Train (as in train_toy.cpp, shorter).
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
    sae::train::DeadLatentTracker dead(cfg.d_sae, 250);
    sae::TopKSAE<float>::Workspace ws;
    sae::RowMatrix<float> x;
    const auto start = std::chrono::steady_clock::now();
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
    }
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double mmcs =
        sae::eval::meanMaxCosineSimilarity(data.directions(), model.parameters().rowMajor("W_dec"));
    std::printf(
        "trained a TopK SAE (d_in %ld, d_sae %ld, k %ld) for %ld steps in %.1f s; "
        "MMCS with the %ld true features: %.3f\n",
        long(cfg.d_in), long(cfg.d_sae), long(cfg.k), long(steps), secs, long(data_opts.n_features),
        mmcs);

    // 2. The latent that matches true feature `feature` best.
    const sae::Vector<float> truth = data.directions().row(feature).transpose();
    Index latent = 0;
    double best = -2;
    for (Index i = 0; i < cfg.d_sae; ++i) {
      const sae::Vector<float> d = sae::steer::decoderDirection(model, i);
      const double c = double(d.dot(truth) / d.norm());
      if (c > best) best = c, latent = i;
    }
    const sae::Vector<float> unit = sae::steer::unitDecoderDirection(model, latent);
    std::printf("true feature %ld <-> latent %ld (decoder cosine %.4f)\n\n", long(feature),
                long(latent), best);

    // 3. A batch where the feature is present: synthetic tokens plus `magnitude` * truth. The
    // feature's component of a token is its projection on `truth` minus that of the same token
    // before the feature was added (the other features overlap `truth` a little).
    const sae::RowMatrix<float> base = data.sample(tokens);
    sae::RowMatrix<float> hidden = base;
    hidden.rowwise() += float(magnitude) * truth.transpose();
    const sae::RowMatrix<float> original = hidden;
    const double p_base = meanProjection(base, truth);
    const auto codes = model.encode(original).toDense();
    const double code = double(codes.col(latent).mean());
    std::printf(
        "batch of %ld tokens, each with feature %ld added at %.2f: latent %ld fires on "
        "%.0f%%, mean code %.3f\n\n",
        long(tokens), long(feature), magnitude, long(latent),
        100.0 * double((codes.col(latent).array() > 0).count()) / double(tokens), code);

    // Each edit changes the component by (new code - code) * cosine on every token, so the
    // mean component after it is known in closed form from the codes alone.
    std::printf("%-32s %10s %10s %10s\n", "edit", "component", "expected", "off-axis");
    std::printf("%-32s %10.4f %10.4f %10s\n", "none", meanProjection(original, truth) - p_base,
                magnitude, "");
    double worst_error = 0;  // largest |component - expected|
    auto report = [&](const char* name, double expected) {
      const double c = meanProjection(hidden, truth) - p_base;
      std::printf("%-32s %10.4f %10.4f %10.4f\n", name, c, expected,
                  orthogonalChange(original, hidden, truth));
      worst_error = std::max(worst_error, std::abs(c - expected));
      return c;
    };
    // The per-layer callback pattern: the hidden state is a raw buffer [tokens, d_in] owned by
    // the caller, edited in place.
    sae::steer::FeatureEditor<sae::TopKSAE<float>> editor(model);
    auto edit = [&](const char* name, const sae::steer::EditList& edits, double expected) {
      hidden = original;
      editor.setEdits(edits);
      editor.apply(hidden.data(), hidden.rows(), hidden.cols());
      return report(name, expected);
    };
    char name[64];
    const double c_ablate =
        edit("ablate (Zero)", {sae::steer::FeatureEdit::zero(latent)}, magnitude - code * best);
    std::snprintf(name, sizeof name, "clamp (Set %.2f)", clamp);
    edit(name, {sae::steer::FeatureEdit::set(latent, clamp)}, magnitude + (clamp - code) * best);
    edit("double (Multiply 2)", {sae::steer::FeatureEdit::multiply(latent, 2.0)},
         magnitude + code * best);
    hidden = original;
    sae::steer::addDirection(Eigen::Map<sae::RowMatrix<float>>(hidden.data(), tokens, cfg.d_in),
                             unit, float(alpha));
    std::snprintf(name, sizeof name, "steer (+%.2f unit direction)", alpha);
    report(name, magnitude + alpha * best);

    const double removed = 1.0 - c_ablate / magnitude;
    std::printf(
        "\ncomponent: mean projection on the true direction minus the tokens' own before the "
        "feature was added\n(expected: from the codes and the decoder cosine); off-axis: mean norm "
        "of the change orthogonal to it.\nAblation removed %.1f%% of the feature's component: the "
        "SAE encodes it at %.3f on average,\nand the rest is the SAE's reconstruction error, "
        "which the edit keeps.\n",
        100 * removed, code);
    if (check) {
      bool ok = true;
      if (!(removed > 0.9)) {
        std::fprintf(stderr, "steer_features: ablation removed only %.1f%% of the component\n",
                     100 * removed);
        ok = false;
      }
      if (!(worst_error <= 1e-3 * std::max(1.0, std::abs(clamp) + std::abs(alpha)))) {
        std::fprintf(stderr, "steer_features: an edit is %.3g away from its closed form\n",
                     worst_error);
        ok = false;
      }
      if (!ok) return 1;
      std::printf("check passed\n");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "steer_features: %s\n", e.what());
    return 2;
  }
  return 0;
}
