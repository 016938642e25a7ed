/// @file schedule.hpp
/// @brief Learning-rate schedule (warm-up, then constant / cosine / linear decay) and the
/// coefficient warm-up, with the semantics of SAELens's trainer.
///
/// SAELens (sae_lens/training/optim.py, `get_lr_scheduler` and `CoefficientScheduler`, used by
/// `SAETrainer` in sae_lens/training/sae_trainer.py) builds its schedule from torch schedulers
/// joined by `SequentialLR`, and steps every scheduler once after each optimizer step. Training
/// step t (0-based) therefore uses the value after t scheduler steps. LrSchedule::lrAt(t) and
/// CoefficientWarmup::scaleAt(t) give that value in closed form, equal to torch's up to rounding.
/// A schedule is a function of the step, so resuming from a checkpoint only needs the step.
#pragma once

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <sae/core/enum_names.hpp>
#include <sae/core/error.hpp>

namespace sae {

/// @brief Shape of the learning rate after the warm-up.
enum class LrDecay {
  /// Held at lr; then, when decay_steps > 0, linear from lr to 0 over the last decay_steps
  /// steps. SAELens `lr_scheduler_name="constant"`.
  Constant,
  /// Cosine from lr to lr_end over the steps between warm-up and decay phase; then, when
  /// decay_steps > 0, linear from lr_end to 0. SAELens `"cosineannealing"`.
  Cosine,
  /// Linear from lr to 0 over the last decay_steps steps (by default every step after the
  /// warm-up), held at lr before. SAELens has no scheduler of that name: this is its
  /// `"constant"` scheduler with `lr_decay_steps` = decay_steps, or = total - warm-up steps.
  Linear
};

/// The names of LrDecay in configurations (`lr_scheduler`): exactly these, unlike parseLrDecay().
template <>
struct EnumNames<LrDecay> {
  static constexpr std::pair<LrDecay, const char*> table[] = {
      {LrDecay::Constant, "constant"}, {LrDecay::Cosine, "cosine"}, {LrDecay::Linear, "linear"}};
};

/// @brief Name of a decay, as accepted by parseLrDecay().
inline const char* lrDecayName(LrDecay decay) { return enumName(decay); }

/// @brief Parses "constant", "cosine" or "linear" (any case, as SAELens lower-cases its
/// scheduler name). SAELens's own name "cosineannealing" is accepted for cosine.
/// @throws ConfigError naming the valid values.
inline LrDecay parseLrDecay(std::string_view name) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (lower == "cosineannealing") return LrDecay::Cosine;
  LrDecay decay{};
  if (tryParseEnum(lower, decay)) return decay;
  throw ConfigError(detail::concat("unknown learning-rate decay '", name,
                                   "' (valid: constant, cosine, linear; SAELens's "
                                   "cosineannealing is accepted for cosine)"));
}

/// @brief Learning rate as a function of the training step (SAELens `get_lr_scheduler`).
///
/// Three phases over total_steps steps, with W = warmup_steps, D = decayPhaseSteps() and
/// M = total_steps - W - D the main phase:
///
/// - warm-up, t < W: lr * (t + 1) / W. SAELens uses torch `LinearLR(start_factor = 1/W,
///   end_factor = 1, total_iters = W - 1)`, so the first step already has lr / W and step W - 1
///   has the full lr.
/// - main, W <= t < W + M, with e = t - W: lr (Constant, Linear), or, for Cosine,
///   lr_end + (lr - lr_end) (1 + cos(pi e / M)) / 2 (torch `CosineAnnealingLR(T_max = M,
///   eta_min = lr_end)`, which starts at lr and would reach lr_end at e = M).
/// - decay, t >= W + M, with i = t - W - M: s (1 - min(i, D) / D), a torch
///   `LinearLR(start_factor = s / lr, end_factor = 0, total_iters = D)`, where s = lr_end for
///   Cosine and s = lr for Constant and Linear (SAELens: "constant scheduler ignores lr_end, so
///   decay needs to start at lr"). The last training step has s / D; the rate reaches 0 only
///   at t = total_steps.
///
/// Steps at or past total_steps follow the same formulas (torch's schedulers stepped further).
struct LrSchedule {
  double lr = 3e-4;                   ///< Peak learning rate (SAELens `lr`), finite and > 0.
  std::int64_t warmup_steps = 0;      ///< W (SAELens `lr_warm_up_steps`), >= 0.
  std::int64_t total_steps = 0;       ///< Training steps (SAELens `total_training_steps`), >= 1.
  LrDecay decay = LrDecay::Constant;  ///< Shape after the warm-up (SAELens `lr_scheduler_name`).
  /// Length of the final linear decay to 0 (SAELens `lr_decay_steps`), >= 0. For Linear, 0
  /// means every step after the warm-up.
  std::int64_t decay_steps = 0;
  /// End of the cosine and start of its decay phase (SAELens `lr_end`); unset means lr / 10,
  /// SAELens's default. Ignored by Constant and Linear.
  std::optional<double> lr_end;

  /// @brief lr_end, or its default lr / 10.
  double lrEnd() const { return lr_end ? *lr_end : lr / 10.0; }

  /// @brief D: length of the final linear decay phase.
  std::int64_t decayPhaseSteps() const {
    if (decay == LrDecay::Linear && decay_steps == 0) return total_steps - warmup_steps;
    return decay_steps;
  }

  /// @brief Throws ConfigError naming the first invalid field.
  void validate() const {
    require(std::isfinite(lr) && lr > 0.0, "LrSchedule: lr must be finite and > 0, found ", lr);
    require(total_steps >= 1, "LrSchedule: total_steps must be >= 1, found ", total_steps);
    require(warmup_steps >= 0, "LrSchedule: warmup_steps must be >= 0, found ", warmup_steps);
    require(decay_steps >= 0, "LrSchedule: decay_steps must be >= 0, found ", decay_steps);
    require(warmup_steps + decay_steps <= total_steps, "LrSchedule: warmup_steps (", warmup_steps,
            ") + decay_steps (", decay_steps, ") exceed total_steps (", total_steps, ")");
    if (lr_end) {
      require(std::isfinite(*lr_end) && *lr_end >= 0.0,
              "LrSchedule: lr_end must be finite and >= 0, found ", *lr_end);
    }
    if (decay == LrDecay::Cosine) {
      // torch's CosineAnnealingLR divides by T_max = total - warm-up - decay steps.
      require(total_steps - warmup_steps - decay_steps >= 1,
              "LrSchedule: cosine decay needs at least one step between the warm-up (",
              warmup_steps, " steps) and the decay phase (", decay_steps,
              " steps), total_steps is ", total_steps);
      // Mirrors SAELens's ValueError "Cannot have decay_steps with lr_end=0.0".
      require(decay_steps == 0 || lrEnd() > 0.0,
              "LrSchedule: decay_steps > 0 with lr_end = 0 would decay from 0 to 0");
    }
  }

  /// @brief Learning rate of training step `step` (0-based); see the class description.
  /// @throws ConfigError when the schedule is invalid or `step` < 0.
  double lrAt(std::int64_t step) const {
    validate();
    require(step >= 0, "LrSchedule::lrAt: step must be >= 0, found ", step);
    if (step < warmup_steps)
      return lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
    const std::int64_t d = decayPhaseSteps();
    const std::int64_t decay_start = total_steps - d;
    if (d == 0 || step < decay_start) {
      if (decay != LrDecay::Cosine) return lr;
      const double e = static_cast<double>(step - warmup_steps);
      const double m = static_cast<double>(decay_start - warmup_steps);
      const double pi = 3.14159265358979323846;
      const double end = lrEnd();
      return end + (lr - end) * (1.0 + std::cos(pi * e / m)) / 2.0;
    }
    const double start = decay == LrDecay::Cosine ? lrEnd() : lr;
    const double i = static_cast<double>(std::min(step - decay_start, d));
    return start * (1.0 - i / static_cast<double>(d));
  }
};

/// @brief Linear warm-up of a loss coefficient (l1, l0...) from 0 to its value (SAELens
/// `CoefficientScheduler`, configured by a coefficient's `warm_up_steps`).
///
/// SAELens starts the coefficient at 0 when warm_up_steps > 0 and, after the k-th scheduler
/// step, sets it to value * k / W until k reaches W. Training step t (0-based) therefore uses
/// value * min(t, W) / W: the first step has coefficient 0 and step W the full value.
struct CoefficientWarmup {
  std::int64_t warmup_steps = 0;  ///< W, >= 0; 0 disables the warm-up.

  /// @brief Throws ConfigError when warmup_steps < 0.
  void validate() const {
    require(warmup_steps >= 0, "CoefficientWarmup: warmup_steps must be >= 0, found ",
            warmup_steps);
  }

  /// @brief Factor applied to the coefficient at training step `step`: min(step, W) / W, or 1
  /// when W = 0.
  double scaleAt(std::int64_t step) const {
    validate();
    require(step >= 0, "CoefficientWarmup::scaleAt: step must be >= 0, found ", step);
    if (step >= warmup_steps) return 1.0;
    return static_cast<double>(step) / static_cast<double>(warmup_steps);
  }

  /// @brief The coefficient at training step `step`, computed as SAELens does
  /// (value * (step / W) during the warm-up, value after it).
  double valueAt(double value, std::int64_t step) const { return value * scaleAt(step); }
};

}  // namespace sae
