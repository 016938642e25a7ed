/// @file trainer.hpp
/// @brief Trainer: the run of an SAE's training on a batch source — data, SAELens's schedules,
/// initialisation options, input normalisation, feature-density sampling, metrics, held-out
/// evaluation, checkpoints with bitwise-identical resume, signal handling, observers
/// (callbacks.hpp) and the final SAE saved in SAELens's format — around the step (step.hpp:
/// model, gradients, Adam, clipping, dead latents, buffers).
///
/// Run folder `out_dir`:
/// - `cfg.json`, `sae_weights.safetensors`, `sparsity.safetensors`: the final SAE
///   (`sae_lens.SAE.load_from_disk(out_dir)` loads it; BatchTopK and Matryoshka BatchTopK are
///   saved as JumpReLU, as SAELens does);
/// - `train_config.json`: the TrainerConfig of the run;
/// - `metrics.jsonl`: one JSON object per logged step (and per evaluation);
/// - `checkpoints/step_*.safetensors` + `checkpoints/latest`: see checkpoint.hpp.
///
/// Determinism: every piece of state that influences training (parameters, Adam m, v and t,
/// the step, the data-source position, the dead-latent counters, the feature-density window,
/// the input scale and the model's buffers such as BatchTopK's `topk_threshold`, as
/// `buffers.<name>`) is saved in each checkpoint, so a run resumed from a
/// checkpoint ends bitwise identical to an uninterrupted run with the same seed and threads.
///
/// ## Data parallel (setCollective)
/// A Trainer given a dist::Collective of N > 1 ranks is one replica of a data-parallel run:
/// every rank runs the same Trainer on its own disjoint share of the data (its source yields
/// batch_size / N rows per step; batch_size is the global batch), and between backward() and
/// apply() of each step
/// - the gradients are summed across ranks in rank order (Collective::sum, bitwise the same on
///   every rank) and divided by N: the gradient of the global batch's mean loss;
/// - the firing counts per latent are summed, so the dead-latent counters (AuxK), the feature
///   density window and L0 see the global batch; the loss terms are averaged for the logs;
/// - every rank applies the same Adam step, so the replicas stay identical: a checksum of the
///   parameters and Adam moments is compared at every log step and checkpoint, and a mismatch
///   stops the run with NumericError naming the rank;
/// - a stop (signal or callback) on any rank is agreed on by all before the next step.
/// Rank 0 alone writes files (train_config.json, metrics.jsonl, checkpoints with every rank's
/// source position and the number of ranks, the final SAE) and runs the held-out evaluation;
/// the others read the checkpoint to resume, so the run folder must be visible to every rank
/// (one machine, or a shared filesystem). A checkpoint resumes only under the same number of
/// ranks. The BatchTopK family, whose selection spans the whole batch, is refused.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <sae/core/enum_names.hpp>
#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/dist/collective.hpp>
#include <sae/eval/density_window.hpp>
#include <sae/eval/metrics.hpp>
#include <sae/io/atomic_write.hpp>
#include <sae/io/saelens.hpp>
#include <sae/models/registry.hpp>
#include <sae/optim/adam.hpp>
#include <sae/optim/clip.hpp>
#include <sae/optim/schedule.hpp>
#include <sae/train/callbacks.hpp>
#include <sae/train/checkpoint.hpp>
#include <sae/train/dead_latents.hpp>
#include <sae/train/step.hpp>

namespace sae::train {

/// @brief How a field of a run's checkpoint may differ from the command line that resumes it.
enum class ResumeRule {
  Fixed,    ///< Must equal the checkpoint's value (it shapes the trained model).
  Free,     ///< May change; the new value applies from the resumed step on.
  MayGrow,  ///< May stay or grow, never shrink (total_steps: extends a finished run).
};

/// @brief One serialised field of TrainerConfig, as SAE_TRAIN_FIELDS lists it.
struct TrainField {
  const char* name;  ///< JSON key (train_config.json, checkpoints).
  const char* flag;  ///< `sae train` flag; "" when the field has none.
  ResumeRule rule;   ///< What resuming allows.
  /// Flag check: "", ">0", ">=0", "[lo,hi]" or "{a,b,...}" (the choices). Enum fields
  /// (NamedEnum) take their choices from their EnumNames, `architecture` from the registry.
  const char* check;
  const char* help;  ///< Flag help text.
};

/// The serialised fields of TrainerConfig, one X(name, flag, resume rule, check, help) each:
/// the JSON key, the `sae train` flag ("" for none), the ResumeRule, the flag's value check
/// (see TrainField) and its help; SAE_TRAIN_NO_FLAG(X, name) is a field without a flag (fixed on
/// resume). The JSON files, the CLI's flags and the resume checks are all derived from this
/// list.
// (clang-format is not stable on this X-macro list.)
// clang-format off
#define SAE_TRAIN_NO_FLAG(X, name) X(name, "", Fixed, "", "")
#define SAE_TRAIN_FIELDS(X) \
  X(architecture, "--arch", Fixed, "", "architecture (default topk)") \
  X(k, "--k", Fixed, ">0", \
    "topk: latents per token; batchtopk, matryoshka_batchtopk: per token on average over the " \
    "batch (default 32)") \
  X(d_sae, "--d-sae", Fixed, ">0", "number of latents") \
  X(expansion_factor, "--expansion", Fixed, ">0", "d_sae = expansion * d_in (default 8)") \
  X(batch_size, "--batch", Fixed, ">0", "tokens per step (default 4096)") \
  X(total_steps, "--steps", MayGrow, ">0", "training steps (default 1000)") \
  X(lr, "--lr", Fixed, ">0", "peak learning rate (default 3e-4)") \
  X(l1_coefficient, "--l1", Fixed, ">=0", "standard / gated: L1 coefficient (default 5)") \
  X(aux_loss_coefficient, "--aux", Fixed, ">=0", \
    "topk, batchtopk, matryoshka: AuxK coefficient (default 1/32)") \
  X(l0_coefficient, "--l0-coefficient", Fixed, ">=0", \
    "jumprelu: L0 coefficient (default 1; warmed up by --l1-warmup)") \
  X(jumprelu_bandwidth, "--jumprelu-bandwidth", Fixed, ">0", \
    "jumprelu: width of the threshold's straight-through window (default 0.05)") \
  X(jumprelu_sparsity_loss_mode, "--jumprelu-mode", Fixed, "", \
    "jumprelu: L0 penalty, step (count of active latents, default) or tanh (sum of " \
    "tanh(scale * f * ||W_dec row||))") \
  X(jumprelu_tanh_scale, "--jumprelu-tanh-scale", Fixed, ">0", \
    "jumprelu: scale inside tanh in tanh mode (default 4)") \
  X(jumprelu_init_threshold, "--jumprelu-init-threshold", Fixed, "", \
    "jumprelu: initial threshold of every latent (default 0.01)") \
  X(pre_act_loss_coefficient, "--pre-act-loss-coefficient", Fixed, ">=0", \
    "jumprelu: coefficient of the pre-activation loss pulling dead latents towards their " \
    "threshold (default 0: off)") \
  X(topk_threshold_lr, "--topk-threshold-lr", Fixed, "[1e-12,1]", \
    "batchtopk, matryoshka_batchtopk: rate of the moving average that becomes the saved " \
    "JumpReLU threshold (default 0.01)") \
  X(matryoshka_widths, "--matryoshka-widths", Fixed, ">0", \
    "matryoshka_batchtopk: nested prefix widths, comma-separated, strictly increasing, the " \
    "last equal to d_sae (e.g. 256,1024,4096)") \
  X(seed, "--seed", Fixed, "", "random seed (default 0)") \
  X(threads, "--threads", Free, ">=0", "threads (0: all; same threads = same bits)") \
  X(precision, "--precision", Fixed, "", \
    "encoder product: fp32 (default) or bf16 (bf16 inputs, fp32 accumulation; needs oneDNN)") \
  X(out_dir, "--out", Free, "", "run folder") \
  X(lr_scheduler, "--lr-scheduler", Fixed, "", \
    "learning-rate shape after warm-up") \
  X(lr_warmup_steps, "--lr-warmup", Fixed, ">=0", "learning-rate warm-up steps") \
  X(lr_decay_steps, "--lr-decay", Fixed, ">=0", "final linear decay steps") \
  X(l1_warmup_steps, "--l1-warmup", Fixed, ">=0", "sparsity-coefficient warm-up steps") \
  X(dead_feature_window, "--dead-window", Fixed, ">0", \
    "steps without firing = dead (default 1000)") \
  X(b_dec_init, "--b-dec-init", Fixed, "{zeros,mean,geometric_median}", "b_dec initialisation") \
  X(normalize_activations, "--normalize", Fixed, "{none,expected_average_only_in}", \
    "input normalisation (expected_average_only_in: train on s*x with s = sqrt(d_in)/E||x||, " \
    "folded back into the saved weights)") \
  X(decoder_unit_norm, "--unit-norm-decoder", Fixed, "", \
    "unit-norm decoder rows, gradient parallel to them removed (OpenAI recipe)") \
  X(log_every, "--log-every", Free, ">0", "steps between metrics lines (default 100)") \
  X(eval_every, "--eval-every", Free, ">=0", "steps between held-out evaluations") \
  X(checkpoint_every, "--checkpoint-every", Free, ">=0", "steps between checkpoints") \
  X(keep_checkpoints, "--keep-checkpoints", Free, ">0", "checkpoints kept (default 3)") \
  X(data, "--data", Fixed, "", \
    "activation shards [tokens, d_in]: .npy, .npz, .safetensors files, directories or glob " \
    "patterns (streamed, shuffled)") \
  SAE_TRAIN_NO_FLAG(X, rescale_acts_by_decoder_norm) SAE_TRAIN_NO_FLAG(X, apply_b_dec_to_input) \
  SAE_TRAIN_NO_FLAG(X, lp_norm) SAE_TRAIN_NO_FLAG(X, adam_beta1) SAE_TRAIN_NO_FLAG(X, adam_beta2) \
  SAE_TRAIN_NO_FLAG(X, adam_eps) SAE_TRAIN_NO_FLAG(X, max_grad_norm) \
  SAE_TRAIN_NO_FLAG(X, feature_sampling_window) SAE_TRAIN_NO_FLAG(X, init_sample_rows) \
  SAE_TRAIN_NO_FLAG(X, norm_estimate_batches) SAE_TRAIN_NO_FLAG(X, eval_rows)
// clang-format on

/// @brief Settings of a training run (serialised into every checkpoint and train_config.json).
struct TrainerConfig {
  /// "standard", "gated", "topk", "jumprelu", "batchtopk" or "matryoshka_batchtopk".
  std::string architecture = "topk";
  Index d_sae = 0;                           ///< Latents (0: expansion_factor * d_in).
  double expansion_factor = 8.0;             ///< d_sae / d_in when d_sae is 0.
  Index k = 32;                              ///< TopK family: latents per token (on average).
  bool rescale_acts_by_decoder_norm = true;  ///< TopK family: SAELens flag.
  bool apply_b_dec_to_input = true;          ///< SAELens flag.
  double l1_coefficient = 5.0;               ///< Standard, gated: sparsity coefficient.
  double lp_norm = 1.0;                      ///< Standard: p of the penalty.
  double aux_loss_coefficient = 1.0 / 32;    ///< TopK family: AuxK coefficient.

  // JumpReLU (SAELens names and defaults); l1_warmup_steps warms up l0_coefficient.
  double l0_coefficient = 1.0;       ///< Weight of the L0 term.
  double jumprelu_bandwidth = 0.05;  ///< Rectangle-kernel width.
  /// JumpReLU's L0 penalty: "step" or "tanh".
  NamedEnum<SaeConfig::SparsityLossMode> jumprelu_sparsity_loss_mode =
      SaeConfig::SparsityLossMode::Step;
  double jumprelu_tanh_scale = 4.0;       ///< Scale inside tanh (tanh mode).
  double jumprelu_init_threshold = 0.01;  ///< Initial threshold.
  double pre_act_loss_coefficient = 0.0;  ///< Pre-activation loss (0: off).

  // BatchTopK and Matryoshka BatchTopK (SAELens names and defaults).
  double topk_threshold_lr = 0.01;  ///< Rate of the EMA of the inference threshold.
  /// Matryoshka: nested prefix widths, strictly increasing, the last equal to d_sae.
  std::vector<Index> matryoshka_widths;

  Index batch_size = 4096;          ///< Tokens per step.
  std::int64_t total_steps = 1000;  ///< Training steps.
  std::uint64_t seed = 0;           ///< Initialisation and data seed.

  double lr = 3e-4;  ///< Peak learning rate.
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;
  NamedEnum<LrDecay> lr_scheduler = LrDecay::Constant;  ///< "constant", "cosine" or "linear".
  std::int64_t lr_warmup_steps = 0;                     ///< Linear learning-rate warm-up.
  std::int64_t lr_decay_steps = 0;                      ///< Final linear decay to 0.
  std::int64_t l1_warmup_steps = 0;  ///< Coefficient warm-up (sparsity coefficient).
  double max_grad_norm = 1.0;        ///< Global gradient-norm clip; 0 disables it.

  std::int64_t dead_feature_window = 1000;      ///< Steps without firing = dead (AuxK).
  std::int64_t feature_sampling_window = 2000;  ///< Steps per feature-density window.

  std::string b_dec_init = "zeros";            ///< "zeros", "mean" or "geometric_median".
  Index init_sample_rows = 8192;               ///< Rows used by the mean / geometric median.
  bool decoder_unit_norm = false;              ///< OpenAI / EleutherAI unit-norm decoder recipe.
  std::string normalize_activations = "none";  ///< "none" or "expected_average_only_in".
  Index norm_estimate_batches = 10;            ///< Batches used to estimate the input scale.

  std::int64_t log_every = 100;       ///< Steps between metrics lines.
  std::int64_t eval_every = 0;        ///< Steps between held-out evaluations (0: end only).
  Index eval_rows = 4096;             ///< Held-out rows per evaluation.
  std::int64_t checkpoint_every = 0;  ///< Steps between checkpoints (0: end only).
  int keep_checkpoints = 3;           ///< Checkpoints kept.
  std::string out_dir;                ///< Run folder.
  nlohmann::json data = nlohmann::json::object();  ///< Description of the data (for resume).
  int threads = 0;  ///< Threads of the run (0: default); same threads = same bits on resume.
  /// "fp32" or "bf16" (the encoder product; bf16 needs oneDNN).
  NamedEnum<Precision> precision = Precision::Fp32;

  /// @brief The registry's traits of `architecture` (ConfigError for an unknown one).
  ArchitectureInfo architectureTraits() const { return architectureInfo(architecture); }

  /// @brief True when the architecture selects k latents per token (topk, batchtopk,
  /// matryoshka_batchtopk: k, rescale and AuxK apply); false for an unknown architecture.
  bool usesK() const { return isArchitecture(architecture) && architectureTraits().uses_k; }

  /// @brief Throws ConfigError naming the first invalid field.
  void validate() const {
    require(isArchitecture(architecture), "architecture must be ", architectureNameList(" or "),
            ", found '", architecture, "'");
    require(batch_size > 0, "batch size must be positive, found ", batch_size);
    require(total_steps > 0, "steps must be positive, found ", total_steps);
    require(d_sae >= 0, "d_sae must be >= 0, found ", d_sae);
    require(d_sae > 0 || (std::isfinite(expansion_factor) && expansion_factor > 0),
            "expansion factor must be positive, found ", expansion_factor);
    require(std::isfinite(max_grad_norm) && max_grad_norm >= 0,
            "max_grad_norm must be >= 0, found ", max_grad_norm);
    require(dead_feature_window >= 1, "dead_feature_window must be >= 1, found ",
            dead_feature_window);
    require(feature_sampling_window >= 1, "feature_sampling_window must be >= 1, found ",
            feature_sampling_window);
    require(b_dec_init == "zeros" || b_dec_init == "mean" || b_dec_init == "geometric_median",
            "b_dec_init must be zeros, mean or geometric_median, found '", b_dec_init, "'");
    require(init_sample_rows > 0, "init_sample_rows must be positive, found ", init_sample_rows);
    require(normalize_activations == "none" || normalize_activations == "expected_average_only_in",
            "normalize_activations must be none or expected_average_only_in, found '",
            normalize_activations, "'");
    require(norm_estimate_batches > 0, "norm_estimate_batches must be positive, found ",
            norm_estimate_batches);
    require(log_every > 0, "log_every must be positive, found ", log_every);
    require(eval_every >= 0, "eval_every must be >= 0, found ", eval_every);
    require(eval_rows >= 0, "eval_rows must be >= 0, found ", eval_rows);
    require(checkpoint_every >= 0, "checkpoint_every must be >= 0, found ", checkpoint_every);
    require(keep_checkpoints >= 1, "keep_checkpoints must be >= 1, found ", keep_checkpoints);
    require(!out_dir.empty(), "an output directory is required");
    schedule().validate();
    if (usesK()) require(k > 0, "k must be positive, found ", k);
    require(std::isfinite(topk_threshold_lr) && topk_threshold_lr > 0 && topk_threshold_lr <= 1,
            "topk_threshold_lr must be in (0, 1], found ", topk_threshold_lr);
    if (architectureTraits().uses_widths)
      require(!matryoshka_widths.empty(), architecture,
              " needs matryoshka_widths (e.g. --matryoshka-widths 128,512,2048 ending at d_sae)");
    else
      require(matryoshka_widths.empty(), "matryoshka_widths is for ",
              architectureNameList(" or ", [](const ArchitectureInfo& a) { return a.uses_widths; }),
              " only, not ", architecture);
    jumprelu_sparsity_loss_mode.check("jumprelu_sparsity_loss_mode");
    SaeConfig::checkJumpReLU(l0_coefficient, pre_act_loss_coefficient, jumprelu_bandwidth,
                             jumprelu_tanh_scale, jumprelu_init_threshold);
    precision.check("precision");
    if (precision == Precision::Bf16) require(kernels::bf16Available(), kernels::kBf16Unavailable);
  }

  /// @brief The SAE shape and hyperparameters for inputs of width `d_in`.
  SaeConfig saeConfig(Index d_in) const {
    SaeConfig c;
    c.d_in = d_in;
    c.d_sae = d_sae > 0 ? d_sae : Index(std::llround(expansion_factor * double(d_in)));
    c.k = usesK() ? k : 0;
    c.rescale_acts_by_decoder_norm = usesK() && rescale_acts_by_decoder_norm;
    c.sparsity_loss_mode = jumprelu_sparsity_loss_mode.value();
    // The fields SaeConfig has under the same name.
    // clang-format off
#define SAE_COPY_FIELD(name) c.name = name;
    SAE_COPY_FIELD(apply_b_dec_to_input) SAE_COPY_FIELD(l1_coefficient) SAE_COPY_FIELD(lp_norm)
    SAE_COPY_FIELD(aux_loss_coefficient) SAE_COPY_FIELD(l0_coefficient)
    SAE_COPY_FIELD(jumprelu_bandwidth) SAE_COPY_FIELD(jumprelu_tanh_scale)
    SAE_COPY_FIELD(jumprelu_init_threshold) SAE_COPY_FIELD(pre_act_loss_coefficient)
    SAE_COPY_FIELD(topk_threshold_lr) SAE_COPY_FIELD(matryoshka_widths)
#undef SAE_COPY_FIELD
    return c;
    // clang-format on
  }

  /// @brief The learning-rate schedule.
  LrSchedule schedule() const {
    lr_scheduler.check("lr_scheduler");
    LrSchedule s;
    std::tie(s.lr, s.total_steps, s.warmup_steps, s.decay_steps, s.decay) =
        std::make_tuple(lr, total_steps, lr_warmup_steps, lr_decay_steps, lr_scheduler.value());
    return s;
  }

  AdamOptions adamOptions() const {
    AdamOptions a;
    std::tie(a.lr, a.beta1, a.beta2, a.eps) = std::make_tuple(lr, adam_beta1, adam_beta2, adam_eps);
    return a;
  }

  /// @brief Calls `f(field, value)` for every field of SAE_TRAIN_FIELDS, in its order, with
  /// `value` a reference to this config's member.
  template <typename F>
  void forEachField(F&& f) {
    visitFields(*this, *this, [&f](const TrainField& t, auto& v, const auto&) { f(t, v); });
  }

  /// @brief As above, read-only.
  template <typename F>
  void forEachField(F&& f) const {
    visitFields(*this, *this, [&f](const TrainField& t, const auto& v, const auto&) { f(t, v); });
  }

  /// @brief Calls `f(field, mine, theirs)` for every field, with this config's member and
  /// `other`'s.
  template <typename F>
  void forEachFieldWith(const TrainerConfig& other, F&& f) {
    visitFields(*this, other, f);
  }

  /// @brief The fields of SAE_TRAIN_FIELDS, in its order.
  static std::vector<TrainField> fields() {
    std::vector<TrainField> out;
    TrainerConfig c;
    c.forEachField([&out](const TrainField& f, const auto&) { out.push_back(f); });
    return out;
  }

  /// @brief The configuration of a resumed run: `run` (read from its checkpoint) with the
  /// fields named in `given` taken from `requested` as their ResumeRule allows.
  ///
  /// @param given Field name -> what set it on the command line (a flag, named in messages).
  /// A Fixed field must equal the run's; a MayGrow field may equal or exceed it; a Free field
  /// is taken as given. Otherwise ConfigError "<flag> cannot be changed when resuming (the run
  /// has <field> = <run's>, the command line gives <requested>)".
  static TrainerConfig resumed(const TrainerConfig& run, const TrainerConfig& requested,
                               const std::map<std::string, std::string>& given) {
    TrainerConfig out = run;
    out.forEachFieldWith(requested, [&given](const TrainField& f, auto& mine, const auto& theirs) {
      const auto it = given.find(f.name);
      if (it == given.end() || mine == theirs) return;
      const bool grows = f.rule == ResumeRule::MayGrow && mine < theirs;
      if (f.rule == ResumeRule::Fixed || (f.rule == ResumeRule::MayGrow && !grows)) {
        throw ConfigError(sae::detail::concat(
            it->second, " cannot be ", f.rule == ResumeRule::MayGrow ? "lowered" : "changed",
            " when resuming (the run has ", f.name, " = ", nlohmann::json(mine).dump(),
            ", the command line gives ", nlohmann::json(theirs).dump(), ")"));
      }
      mine = theirs;
    });
    return out;
  }

  /// @brief The settings of the run's TrainStep (Adam, clipping, unit-norm decoder, dead-latent
  /// window, bf16 encoder).
  StepOptions stepOptions() const {
    StepOptions s;
    s.adam = adamOptions();
    s.max_grad_norm = max_grad_norm;
    s.decoder_unit_norm = decoder_unit_norm;
    s.dead_feature_window = dead_feature_window;
    s.bf16_encoder = precision == Precision::Bf16;
    return s;
  }

  nlohmann::json toJson() const {
    nlohmann::json j;
    forEachField([&j](const TrainField& f, const auto& value) { j[f.name] = value; });
    return j;
  }

  /// @brief Reads the fields present in `j` (others keep their value); ConfigError naming an
  /// unknown or mistyped field.
  void updateFromJson(const nlohmann::json& j, const std::string& where) {
    require(j.is_object(), where, ": expected a JSON object");
    for (const auto& [key, value] : j.items()) {
      bool known = false;
      forEachField([&](const TrainField& f, auto& field) {
        if (key != f.name) return;
        known = true;
        try {
          field = value.get<std::decay_t<decltype(field)>>();
        } catch (const nlohmann::json::exception&) {
          throw ConfigError(sae::detail::concat(where, ": field '", key, "' has the wrong type (",
                                                value.dump(), ")"));
        }
      });
      if (!known) throw ConfigError(sae::detail::concat(where, ": unknown field '", key, "'"));
    }
  }

 private:
  template <typename Self, typename F>
  static void visitFields(Self& self, const TrainerConfig& other, F&& f) {
#define SAE_TRAIN_FIELD(name, flag, rule, check, help) \
  f(TrainField{#name, flag, ResumeRule::rule, check, help}, self.name, other.name);
    SAE_TRAIN_FIELDS(SAE_TRAIN_FIELD)
#undef SAE_TRAIN_FIELD
  }
};
#undef SAE_TRAIN_FIELDS
#undef SAE_TRAIN_NO_FLAG

namespace detail {

/// Set by the signal handler; read between steps.
inline volatile std::sig_atomic_t g_stop_signal = 0;

extern "C" inline void onStopSignal(int sig) { g_stop_signal = sig; }

/// Geometric median of the rows (Weiszfeld's algorithm), starting from the mean.
inline Eigen::VectorXd geometricMedian(const Eigen::MatrixXd& x, int max_iter = 100,
                                       double tol = 1e-7) {
  Eigen::VectorXd y = x.colwise().mean().transpose();
  for (int it = 0; it < max_iter; ++it) {
    Eigen::VectorXd num = Eigen::VectorXd::Zero(x.cols());
    double den = 0;
    for (Index r = 0; r < x.rows(); ++r) {
      const double d = std::max((x.row(r).transpose() - y).norm(), 1e-12);
      num += x.row(r).transpose() / d;
      den += 1.0 / d;
    }
    const Eigen::VectorXd next = num / den;
    const double moved = (next - y).norm();
    y = next;
    if (moved <= tol * std::max(1.0, y.norm())) break;
  }
  return y;
}

}  // namespace detail

/// @brief Installs SIGINT / SIGTERM handlers that only record the signal (async-signal-safe);
/// the Trainer checks it between steps. Restores the previous handlers when destroyed.
class StopSignalGuard {
 public:
  StopSignalGuard() {
    detail::g_stop_signal = 0;
    struct sigaction sa {};
    sa.sa_handler = detail::onStopSignal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &m_old_int);
    sigaction(SIGTERM, &sa, &m_old_term);
  }
  ~StopSignalGuard() {
    sigaction(SIGINT, &m_old_int, nullptr);
    sigaction(SIGTERM, &m_old_term, nullptr);
  }
  StopSignalGuard(const StopSignalGuard&) = delete;
  StopSignalGuard& operator=(const StopSignalGuard&) = delete;

 private:
  struct sigaction m_old_int {
  }, m_old_term{};
};

/// @brief Trains a SparseAutoencoder<Scalar, Arch> on a batch source (see batch_source.hpp):
/// the run around a TrainStep (step.hpp). The Trainer owns the data, the learning-rate and
/// coefficient schedules, the input scale, the feature-density window, metrics, held-out
/// evaluation, checkpoints and the final save; each step is TrainStep::backward() then
/// TrainStep::apply().
///
/// @tparam Scalar float (or double).
/// @tparam Arch   StandardArch, GatedArch, TopKArch, JumpReLUArch, BatchTopKArch or
///                MatryoshkaBatchTopKArch.
/// @tparam Source a BatchSource over Scalar.
template <typename Scalar, typename Arch, typename Source>
class Trainer {
 public:
  using Step = TrainStep<Scalar, Arch>;
  using Model = typename Step::Model;

  /// @param cfg    run settings (validated; the architecture must be Arch's).
  /// @param source the data; the trainer reads, seeks and keeps a reference to it.
  Trainer(const TrainerConfig& cfg, Source& source)
      : m_cfg(cfg),
        m_source(source),
        m_step(checkedConfig(cfg, source.dIn()), cfg.stepOptions(), cfg.seed),
        m_density(m_step.model().dSae(), cfg.feature_sampling_window),
        m_ckdir(cfg.out_dir + "/checkpoints", cfg.keep_checkpoints) {}

  const TrainerConfig& config() const { return m_cfg; }
  Model& model() { return m_step.model(); }
  const Model& model() const { return m_step.model(); }
  /// @brief The step this run drives (model, gradients, Adam, dead latents).
  const Step& trainStep() const { return m_step; }
  std::int64_t step() const { return m_t; }
  /// @brief Inputs are multiplied by this before training (expected_average_only_in).
  double inputScale() const { return m_scale; }
  const DeadLatentTracker& deadLatents() const { return m_step.deadLatents(); }
  const Adam<Scalar>& optimizer() const { return m_step.optimizer(); }
  const eval::FeatureDensityWindow& featureDensity() const { return m_density; }

  /// @brief Stop (with a checkpoint) on SIGINT / SIGTERM (the caller installs
  /// StopSignalGuard); default off.
  void setHandleSignals(bool on) { m_handle_signals = on; }

  /// @brief Makes this trainer one replica of a data-parallel run over `collective` (see "Data
  /// parallel" in the file comment; nullptr or one rank: a single-process run). Call it before
  /// initialize() or resume(), on every rank; the collective must outlive the trainer.
  /// @throws ConfigError when batch_size is not a multiple of the ranks, or for the BatchTopK
  /// family.
  void setCollective(dist::Collective* collective) {
    if (collective != nullptr && collective->size() > 1) {
      const int n = collective->size();
      require(!std::is_base_of_v<sae::detail::BatchTopKFamily, Arch>, Arch::kName,
              " selects its latents across the whole batch, which data-parallel training "
              "does not do yet: train it in one process (found ",
              n, " ranks)");
      require(m_cfg.batch_size % n == 0, "the batch of ", m_cfg.batch_size,
              " tokens (the global batch, --batch) is not a multiple of the ", n, " ranks");
    }
    m_comm = collective;
  }

  /// @brief Rank of this replica (0 without a collective).
  int rank() const { return m_comm != nullptr ? m_comm->rank() : 0; }
  /// @brief Ranks of the run (1 without a collective).
  int ranks() const { return m_comm != nullptr ? m_comm->size() : 1; }

  /// @brief Starts a new run: creates the run folder, initialises the model (SAELens
  /// initialisation from the seed, then the b_dec / unit-norm / normalisation options).
  void initialize() {
    if (leader()) {
      makeDirectories(m_cfg.out_dir);
      m_ckdir.prepare();
      io::writeTextFile(m_cfg.out_dir + "/train_config.json", m_cfg.toJson().dump(2) + "\n");
      io::writeTextFile(metricsPath(), "");
    }
    m_step.reset(m_cfg.seed);
    Model& model = m_step.model();
    const nlohmann::json start = m_source.position();
    if (m_cfg.normalize_activations == "expected_average_only_in") {
      double norm_sum = 0;
      std::int64_t rows = 0;
      for (Index b = 0; b < m_cfg.norm_estimate_batches; ++b) {
        m_source.next(m_x);
        norm_sum += m_x.template cast<double>().rowwise().norm().sum();
        rows += m_x.rows();
      }
      const double mean_norm = norm_sum / double(rows);
      require(mean_norm > 0 && std::isfinite(mean_norm),
              "cannot normalise the inputs: their mean norm is ", mean_norm);
      m_scale = std::sqrt(double(model.dIn())) / mean_norm;
      m_source.seek(start);
    }
    if (m_cfg.b_dec_init != "zeros") {
      Eigen::MatrixXd sample(0, model.dIn());
      while (sample.rows() < m_cfg.init_sample_rows) {
        m_source.next(m_x);
        const Index take = std::min<Index>(m_x.rows(), m_cfg.init_sample_rows - sample.rows());
        sample.conservativeResize(sample.rows() + take, Eigen::NoChange);
        sample.bottomRows(take) = m_x.topRows(take).template cast<double>() * m_scale;
      }
      m_source.seek(start);
      const Eigen::VectorXd b = m_cfg.b_dec_init == "mean"
                                    ? Eigen::VectorXd(sample.colwise().mean().transpose())
                                    : detail::geometricMedian(sample);
      model.parameters().flat("b_dec") = b.cast<Scalar>();
    }
    if (distributed()) {
      // The estimates above come from each rank's own data: all ranks start from rank 0's.
      auto params = model.parameters().flat();
      m_comm->broadcast(params.data(), std::size_t(params.size()) * sizeof(Scalar));
      m_comm->broadcast(&m_scale, sizeof m_scale);
    }
    m_t = 0;
  }

  /// @brief Restores the state of the checkpoint at `path` (verified first; nothing is
  /// changed when it is invalid). The architecture and shapes must match this trainer's.
  /// (An `rng` entry, written by earlier versions and never used, is ignored.)
  void resume(const std::string& path) {
    const Checkpoint ck(path);
    const Model& model = m_step.model();
    auto need = [&](const char* key) -> const nlohmann::json& { return stateField(ck, key); };
    try {
      const std::string arch = need("architecture").template get<std::string>();
      if (arch != Arch::kName)
        ck.fail(sae::detail::concat("architecture is ", arch, ", expected ", Arch::kName));
      const Index d_in = need("d_in").template get<Index>(),
                  d_sae = need("d_sae").template get<Index>();
      if (d_in != model.dIn() || d_sae != model.dSae())
        ck.fail(sae::detail::concat("shape d_in ", d_in, ", d_sae ", d_sae, ", expected d_in ",
                                    model.dIn(), ", d_sae ", model.dSae()));
      auto params = model.parameters();
      ck.readParameters("params.", params);
      auto m = model.parameters().zerosLike(), v = m;
      ck.readParameters("adam.m.", m);
      ck.readParameters("adam.v.", v);
      auto buffers = model.buffers();
      ck.readParameters("buffers.", buffers);
      const Eigen::VectorXd dead = ck.readVector("dead.steps_since_fired", d_sae);
      const Eigen::VectorXd counts = ck.readVector("density.counts", d_sae);
      const Eigen::VectorXd last = ck.readVector("density.last", d_sae);
      const std::int64_t step = need("step").template get<std::int64_t>();
      const std::int64_t adam_step = need("adam_step").template get<std::int64_t>();
      const double scale = need("input_scale").template get<double>();
      const int world = ck.state().value("world_size", 1);
      if (world != ranks())
        ck.fail(sae::detail::concat(
            "it was written by a run of ", world, world == 1 ? " process" : " ranks",
            " and is resumed with ", ranks(), "; resume it with the same number (",
            world == 1 ? std::string("without mpirun") : sae::detail::concat("mpirun -np ", world),
            ")"));
      const nlohmann::json position =
          world == 1 ? need("source_position") : need("source_positions").at(std::size_t(rank()));
      if (step < 0 || step > m_cfg.total_steps)
        ck.fail(sae::detail::concat("step ", step, " outside [0, ", m_cfg.total_steps, "]"));
      eval::FeatureDensityWindow density = m_density;
      try {
        density.restore(counts, last, need("density"));
      } catch (const FormatError& e) {
        ck.fail(e.what());
      }
      // Everything read and checked: apply.
      m_source.seek(position);
      m_step.restore(params, buffers, adam_step, m, v, dead.cast<std::int64_t>());
      m_density = std::move(density);
      m_scale = scale;
      m_t = step;
    } catch (const nlohmann::json::exception& e) {
      ck.fail(sae::detail::concat("malformed state: ", e.what()));
    }
    m_last_checkpoint = path;
    if (leader()) {
      m_ckdir.prepare();
      truncateMetrics();
      // The configuration of the resumed run (a longer total_steps, changed free fields).
      io::writeTextFile(m_cfg.out_dir + "/train_config.json", m_cfg.toJson().dump(2) + "\n");
    }
    if (distributed()) verifyReplicas("after resuming");
  }

  /// @brief Newest checkpoint of the run folder (via checkpoints/latest), if any.
  std::optional<std::string> latestCheckpoint() const { return m_ckdir.latest(); }

  /// @brief Trains until step `until` (default, or < 0: total_steps), a signal (when
  /// handled), a callback's onStep returning true, or an error. At total_steps writes the
  /// final checkpoint and the SAELens folder.
  /// @param callbacks observers of the run (see callbacks.hpp), each defining any of onStep,
  ///        onLog, onEvaluation, onCheckpoint, onEnd.
  /// @throws NumericError naming the step when the loss or a gradient is not finite (no
  /// checkpoint is written, so the last good one stays intact).
  template <typename... Callbacks>
  TrainResult train(std::int64_t until = -1, Callbacks&&... callbacks) {
    if (until < 0 || until > m_cfg.total_steps) until = m_cfg.total_steps;
    const LrSchedule schedule = m_cfg.schedule();
    CoefficientWarmup warmup;
    warmup.warmup_steps = m_cfg.l1_warmup_steps;
    const auto t0 = Clock::now();
    const std::int64_t first_step = m_t;
    auto t_log = t0;
    std::int64_t tokens_since_log = 0;
    TrainResult result;
    TrainProgress progress;
    progress.first_step = first_step;
    progress.until = until;
    progress.total_steps = m_cfg.total_steps;
    progress.batch_size = m_cfg.batch_size;
    auto now = [&]() -> const TrainProgress& {
      progress.step = m_t;
      progress.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
      progress.last_log = m_last_line.is_null() ? nullptr : &m_last_line;
      return progress;
    };
    auto checkpoint = [&] {
      result.checkpoint = saveCheckpoint();
      (detail::notify(detail::kOnCheckpoint, callbacks, now(), result.checkpoint), ...);
    };
    eval::ReconstructionMetrics recon;
    eval::FiringStats firing(m_step.model().dSae());

    const bool parallel = distributed();
    const Index local_rows = m_cfg.batch_size / ranks();
    while (m_t < until) {
      // (Several ranks agree on a stop after each step, below.)
      if (!parallel && m_handle_signals && detail::g_stop_signal != 0) {
        result.signal = int(detail::g_stop_signal);
        break;
      }
      const std::int64_t t = m_t;
      m_source.next(m_x);
      if (parallel)
        require(m_x.rows() == local_rows, "rank ", rank(), "'s data source gave ", m_x.rows(),
                " rows, expected batch_size / ranks = ", local_rows);
      if (m_scale != 1.0) m_x *= Scalar(m_scale);
      const double sparsity_scale = warmup.scaleAt(t);
      const double lr = schedule.lrAt(t);
      try {
        m_step.backward(m_x, sparsity_scale);
        if (parallel) reduceStep();  // the global batch's gradients, firing counts, loss terms
        m_step.apply(lr, parallel ? &m_fired : nullptr);
      } catch (const NumericError& e) {
        throw NumericError(sae::detail::concat(
            "training diverged at step ", t, ": ", e.what(), "; stopped without saving",
            m_last_checkpoint.empty()
                ? std::string()
                : "; the last good checkpoint " + m_last_checkpoint + " is intact"));
      }
      if (parallel)
        m_density.update(m_fired, m_cfg.batch_size);
      else
        m_density.update(m_step.codes());
      ++m_t;
      const LossTerms<Scalar>& terms = parallel ? m_terms : m_step.lossTerms();
      progress.lr = lr;
      progress.loss = double(terms.total());

      // Metrics: they never feed back into training.
      recon.add<Scalar>(m_x, m_step.reconstruction());
      if (parallel)
        firing.add(m_fired, m_cfg.batch_size);
      else
        firing.add(m_step.codes());
      tokens_since_log += m_cfg.batch_size;
      if (m_t % m_cfg.log_every == 0 || m_t == m_cfg.total_steps) {
        if (parallel) {
          verifyReplicas(sae::detail::concat("at step ", m_t));
          Eigen::VectorXd sums = recon.pack(m_step.model().dIn());
          m_comm->sum(sums.data(), std::size_t(sums.size()));
          recon = eval::ReconstructionMetrics::unpack(sums);
        }
        const auto t_now = Clock::now();
        const double secs = std::chrono::duration<double>(t_now - t_log).count();
        nlohmann::json line = {
            {"step", m_t},        {"tokens", m_t * m_cfg.batch_size},
            {"mse", recon.mse()}, {"explained_variance", recon.explainedVariance()},
            {"l0", firing.l0()},  {"dead_fraction", m_step.deadLatents().deadFraction()},
            {"lr", lr},           {"tokens_per_second", secs > 0 ? tokens_since_log / secs : 0.0}};
        nlohmann::json losses = nlohmann::json::object();
        for (const auto& [name, value] : terms.terms()) losses[name] = double(value);
        line["losses"] = losses;
        line["coefficients"] = coefficients(sparsity_scale);
        const ParameterSet<double>& buffers = m_step.model().buffers();
        for (const auto& e : buffers.entries())  // BatchTopK: topk_threshold
          if (e.size == 1) line[e.name] = buffers.flat(e.name)[0];
        appendMetrics(line);
        m_last_line = line;
        (detail::notify(detail::kOnLog, callbacks, now(), m_last_line), ...);
        recon.reset();
        firing.reset();
        t_log = t_now;
        tokens_since_log = 0;
      }
      if (leader() && m_cfg.eval_every > 0 && m_t % m_cfg.eval_every == 0 &&
          m_t < m_cfg.total_steps) {
        const nlohmann::json metrics = evaluate();
        appendMetrics(metrics);
        (detail::notify(detail::kOnEvaluation, callbacks, now(), metrics), ...);
      }
      if (m_cfg.checkpoint_every > 0 && m_t % m_cfg.checkpoint_every == 0 &&
          m_t < m_cfg.total_steps)
        checkpoint();
      bool stop = false;
      ((stop = detail::notify(detail::kOnStep, callbacks, now()) || stop), ...);
      if (parallel) {
        // One vote per rank: bit 0 a callback's stop, the signal number above it.
        const int sig = m_handle_signals ? int(detail::g_stop_signal) : 0;
        int agreed_sig = 0;
        for (const std::uint64_t v : m_comm->gather((std::uint64_t(sig) << 1) | (stop ? 1 : 0))) {
          stop = stop || (v & 1) != 0;
          agreed_sig = std::max(agreed_sig, int(v >> 1));
        }
        if (agreed_sig != 0 && m_t < until) {
          result.signal = agreed_sig;
          break;
        }
      }
      if (stop && m_t < until) {
        result.stopped = true;
        break;
      }
    }
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    result.tokens_per_second =
        secs > 0 ? double(m_t - first_step) * double(m_cfg.batch_size) / secs : 0.0;
    result.step = m_t;
    if (result.signal != 0 || m_t < m_cfg.total_steps) {
      if (m_t > first_step || m_last_checkpoint.empty()) checkpoint();
      result.checkpoint = m_last_checkpoint;
    } else {
      checkpoint();
      if (leader()) {
        result.final_metrics = evaluate();
        result.final_metrics["tokens_per_second"] = result.tokens_per_second;
        appendMetrics(result.final_metrics);
        (detail::notify(detail::kOnEvaluation, callbacks, now(), result.final_metrics), ...);
        saveFinal();
      }
      result.completed = true;
    }
    (detail::notify(detail::kOnEnd, callbacks, now(), result), ...);
    return result;
  }

  /// @brief Writes a checkpoint of the current state; returns its path.
  std::string saveCheckpoint() {
    const Model& model = m_step.model();
    const Adam<Scalar>& adam = m_step.optimizer();
    nlohmann::json positions = nlohmann::json::array();
    if (distributed()) {
      verifyReplicas(sae::detail::concat("before the checkpoint of step ", m_t));
      for (const std::string& p : m_comm->gather(m_source.position().dump()))
        positions.push_back(nlohmann::json::parse(p));
      if (!leader()) {
        // Rank 0 writes; every rank learns the path.
        m_last_checkpoint = m_comm->gather(std::string()).front();
        return m_last_checkpoint;
      }
    }
    CheckpointWriter w;
    w.addParameters("params.", model.parameters());
    w.addParameters("adam.m.", adam.firstMoment());
    w.addParameters("adam.v.", adam.secondMoment());
    w.addParameters("buffers.", model.buffers());
    w.addVector("dead.steps_since_fired",
                m_step.deadLatents().stepsSinceFired().template cast<double>());
    w.addVector("density.counts", m_density.counts());
    w.addVector("density.last", m_density.last());
    nlohmann::json state = {
        {"architecture", Arch::kName},    {"d_in", model.dIn()},
        {"d_sae", model.dSae()},          {"step", m_t},
        {"adam_step", adam.stepCount()},  {"input_scale", m_scale},
        {"density", m_density.scalars()}, {"source_position", m_source.position()},
        {"config", m_cfg.toJson()}};
    if (distributed()) {
      state["world_size"] = ranks();
      state["source_positions"] = positions;
    }
    m_last_checkpoint = m_ckdir.commit(w, state, m_t);
    if (distributed()) m_comm->gather(m_last_checkpoint);
    return m_last_checkpoint;
  }

  /// @brief Held-out metrics (MSE, explained variance, L0, dead fraction) of the current model
  /// on up to eval_rows rows of source.holdout(); falls back to the last logged window.
  nlohmann::json evaluate() const {
    const Model& model = m_step.model();
    const double dead_fraction = m_step.deadLatents().deadFraction();
    nlohmann::json out = {{"eval", true}, {"step", m_t}};
    RowMatrix<Scalar> rows =
        m_cfg.eval_rows > 0 ? m_source.holdout(m_cfg.eval_rows) : RowMatrix<Scalar>();
    if (rows.rows() == 0) {
      out["eval"] = false;
      for (const char* key : {"mse", "explained_variance", "l0"})
        if (m_last_line.contains(key)) out[key] = m_last_line[key];
      out["dead_fraction"] = dead_fraction;
      return out;
    }
    if (m_scale != 1.0) rows *= Scalar(m_scale);
    eval::ReconstructionMetrics recon;
    eval::FiringStats firing(model.dSae());
    typename Model::Codes codes;
    for (Index b = 0; b < rows.rows(); b += m_cfg.batch_size) {
      const Index n = std::min<Index>(m_cfg.batch_size, rows.rows() - b);
      const auto block = rows.middleRows(b, n);
      model.encode(block, codes);
      const RowMatrix<Scalar> y = model.decode(codes);
      recon.add<Scalar>(block, y);
      firing.add(codes);
    }
    out["rows"] = rows.rows();
    out["mse"] = recon.mse();
    out["explained_variance"] = recon.explainedVariance();
    out["l0"] = firing.l0();
    out["dead_fraction"] = dead_fraction;
    return out;
  }

  /// @brief Saves the SAE in SAELens's format into out_dir, with the input scale folded in.
  void saveFinal() const {
    io::SaeLensSaveOptions o;
    o.input_scale = m_scale;
    o.feature_density = m_density.density();
    o.metadata = {{"trained_with", "sae (C++)"},
                  {"training_steps", m_t},
                  {"training_tokens", m_t * m_cfg.batch_size},
                  {"seed", m_cfg.seed},
                  {"normalize_activations_in_training", m_cfg.normalize_activations},
                  {"input_scale_folded", m_scale}};
    // The hook the data came from, when the data description knows it (`sae dump` folders).
    if (m_cfg.data.is_object() && m_cfg.data.contains("hook_name") &&
        m_cfg.data.at("hook_name").is_string())
      o.metadata["hook_name"] = m_cfg.data.at("hook_name");
    io::saveSaeLens(m_step.model(), m_cfg.out_dir, o);
  }

  std::string metricsPath() const { return m_cfg.out_dir + "/metrics.jsonl"; }

  /// @brief Compares a checksum of every rank's parameters, buffers and Adam moments with
  /// rank 0's; NumericError naming the first rank that differs (on every rank). No-op without
  /// several ranks.
  void verifyReplicas(const std::string& when) {
    if (!distributed()) return;
    const Adam<Scalar>& adam = m_step.optimizer();
    auto hashOf = [](const auto& set) {
      const auto flat = set.flat();
      return dist::checksum(flat.data(), std::size_t(flat.size()) * sizeof(flat[0]));
    };
    const std::uint64_t mine = hashOf(m_step.model().parameters()) ^
                               (hashOf(m_step.model().buffers()) * 3) ^
                               (hashOf(adam.firstMoment()) * 5) ^ (hashOf(adam.secondMoment()) * 7);
    const std::vector<std::uint64_t> all = m_comm->gather(mine);
    for (std::size_t r = 1; r < all.size(); ++r)
      if (all[r] != all[0])
        throw NumericError(sae::detail::concat(
            "the replicas diverged ", when, ": rank ", r,
            "'s weights differ from rank 0's (checksums ", all[r], " and ", all[0],
            "); stopped without saving",
            m_last_checkpoint.empty()
                ? std::string()
                : "; the last good checkpoint " + m_last_checkpoint + " is intact"));
  }

  /// @brief Traffic of the run's collective (zeros without one).
  dist::TrafficStats traffic() const {
    return m_comm != nullptr ? m_comm->traffic() : dist::TrafficStats{};
  }

 private:
  using Clock = std::chrono::steady_clock;

  bool distributed() const { return m_comm != nullptr && m_comm->size() > 1; }
  bool leader() const { return rank() == 0; }

  /// Data parallel, between backward() and apply(): the gradients summed over the ranks and
  /// divided by their number (each rank's are of its mean loss over batch_size / N rows, so
  /// this is the gradient of the global batch's mean), and in one more sum the firing counts
  /// per latent (m_fired) and the loss terms (averaged into m_terms).
  void reduceStep() {
    const Scalar inv = Scalar(1) / Scalar(ranks());
    auto g = m_step.gradients().flat();
    m_comm->sum(g.data(), std::size_t(g.size()));
    g *= inv;
    const Index d_sae = m_step.model().dSae();
    const LossTerms<Scalar>& local = m_step.lossTerms();
    const auto named = local.terms();
    m_small.setZero(d_sae + Index(named.size()));
    forEachActive(m_step.codes(), [&](Index, Index latent, auto) { m_small[latent] += 1; });
    for (std::size_t i = 0; i < named.size(); ++i)
      m_small[d_sae + Index(i)] = double(named[i].second);
    m_comm->sum(m_small.data(), std::size_t(m_small.size()));
    m_fired = m_small.head(d_sae);
    m_terms = LossTerms<Scalar>();
    for (std::size_t i = 0; i < named.size(); ++i)
      m_terms.add(named[i].first, Scalar(m_small[d_sae + Index(i)] / double(ranks())));
  }

  static const nlohmann::json& stateField(const Checkpoint& ck, const char* key) {
    if (!ck.state().contains(key)) ck.fail(sae::detail::concat("state has no '", key, "'"));
    return ck.state().at(key);
  }

  static SaeConfig checkedConfig(const TrainerConfig& cfg, Index d_in) {
    cfg.validate();
    require(cfg.architecture == Arch::kName, "trainer for ", Arch::kName, " given architecture '",
            cfg.architecture, "'");
    require(d_in > 0, "the data source has no columns");
    return cfg.saeConfig(d_in);
  }

  nlohmann::json coefficients(double scale) const {
    const SaeConfig& c = m_step.model().config();
    if constexpr (ArchitectureTraits<Arch>::uses_k)
      return {{"aux_loss_coefficient", c.aux_loss_coefficient}};
    else if constexpr (std::is_same_v<Arch, JumpReLUArch>)
      return {{"l0_coefficient", c.l0_coefficient * scale},
              {"pre_act_loss_coefficient", c.pre_act_loss_coefficient}};
    else
      return {{"l1_coefficient", c.l1_coefficient * scale}};
  }

  void appendMetrics(const nlohmann::json& line) const {
    if (!leader()) return;  // data parallel: rank 0 writes the metrics
    std::ofstream out(metricsPath(), std::ios::app);
    if (!out) throw IoError(metricsPath() + ": cannot append");
    out << line.dump() << "\n";
  }

  /// After a resume: drop the lines a killed run wrote past the checkpoint's step.
  void truncateMetrics() const {
    std::ifstream in(metricsPath());
    std::string kept, line;
    while (std::getline(in, line)) {
      try {
        const auto j = nlohmann::json::parse(line);
        if (j.value("step", std::int64_t(0)) > m_t) continue;
      } catch (const nlohmann::json::exception&) {
        continue;  // a line cut by the kill
      }
      kept += line + "\n";
    }
    io::writeTextFile(metricsPath(), kept);
  }

  TrainerConfig m_cfg;
  Source& m_source;
  Step m_step;
  eval::FeatureDensityWindow m_density;
  CheckpointDir m_ckdir;
  double m_scale = 1.0;
  std::int64_t m_t = 0;  ///< Steps done.
  RowMatrix<Scalar> m_x;
  nlohmann::json m_last_line;
  std::string m_last_checkpoint;
  bool m_handle_signals = false;
  dist::Collective* m_comm = nullptr;  // data parallel: see setCollective()
  Eigen::VectorXd m_fired, m_small;    // the step's global firing counts; the sum's buffer
  LossTerms<Scalar> m_terms;           // the step's loss terms averaged over the ranks
};

}  // namespace sae::train
