/// @file step.hpp
/// @brief TrainStep: one optimisation step of an SAE — the model, its gradients, Adam, global
/// gradient-norm clipping, the unit-norm decoder option, dead-latent tracking (AuxK) and the
/// model's buffers — with no data, schedule, files or metrics (those are the Trainer's, see
/// trainer.hpp).
///
/// A step is two calls, composed by run():
/// - backward(x, sparsity_scale): forward pass, loss terms and the gradients into gradients();
/// - apply(lr): decoder-gradient projection (unit-norm option), clipping, the Adam update,
///   decoder renormalisation, the buffers (BatchTopK's threshold) and the dead-latent counters.
/// Between the two, gradients() holds this step's gradients: the place where a data-parallel
/// run averages them across its ranks before every replica applies them (Trainer with a
/// dist::Collective).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include <sae/core/error.hpp>
#include <sae/core/parameters.hpp>
#include <sae/core/types.hpp>
#include <sae/models/sae_config.hpp>
#include <sae/models/sparse_autoencoder.hpp>
#include <sae/optim/adam.hpp>
#include <sae/optim/clip.hpp>
#include <sae/train/dead_latents.hpp>

namespace sae::train {

namespace detail {

/// True when a workspace has a `bf16_encoder` switch (the encoder product in bf16).
template <typename W, typename = void>
struct HasBf16Encoder : std::false_type {};
template <typename W>
struct HasBf16Encoder<W, std::void_t<decltype(std::declval<W&>().bf16_encoder = true)>>
    : std::true_type {};

}  // namespace detail

/// @brief Settings of a TrainStep (TrainerConfig::stepOptions() makes them from a run's
/// config).
struct StepOptions {
  AdamOptions adam;                         ///< Adam's hyperparameters (lr: the default).
  double max_grad_norm = 1.0;               ///< Global gradient-norm clip; 0 disables it.
  bool decoder_unit_norm = false;           ///< OpenAI / EleutherAI unit-norm decoder recipe.
  std::int64_t dead_feature_window = 1000;  ///< Steps without firing = dead (AuxK).
  bool bf16_encoder = false;                ///< TopK family: encoder product in bf16.

  /// @brief Throws ConfigError naming the first invalid field.
  void validate() const {
    adam.validate();
    require(std::isfinite(max_grad_norm) && max_grad_norm >= 0,
            "max_grad_norm must be >= 0, found ", max_grad_norm);
    require(dead_feature_window >= 1, "dead_feature_window must be >= 1, found ",
            dead_feature_window);
  }
};

/// @brief One training step of a SparseAutoencoder<Scalar, Arch>: model, gradients, Adam,
/// clipping, unit-norm decoder, dead latents and buffers, reusing its buffers across steps.
///
/// The same seed, batches, learning rates and sparsity scales give bitwise the steps of the
/// Trainer (which drives one of these).
///
/// @tparam Scalar float (or double).
/// @tparam Arch   an architecture policy (StandardArch, TopKArch, ...).
template <typename Scalar, typename Arch>
class TrainStep {
 public:
  using Model = SparseAutoencoder<Scalar, Arch>;
  using Workspace = typename Model::Workspace;
  using Codes = typename Model::Codes;

  /// @param cfg  the SAE's shape and hyperparameters.
  /// @param opts the step's settings (validated).
  /// @param seed SAELens initialisation of the model (as reset(seed)).
  TrainStep(const SaeConfig& cfg, const StepOptions& opts, std::uint64_t seed)
      : m_opts(checked(opts)),
        m_model(cfg, seed),
        m_grads(m_model.makeGradients()),
        m_adam(m_model.parameters(), opts.adam),
        m_dead(m_model.dSae(), opts.dead_feature_window) {
    if constexpr (detail::HasBf16Encoder<Workspace>::value)
      m_ws.bf16_encoder = opts.bf16_encoder;
    else
      require(!opts.bf16_encoder, "bf16_encoder is not available for the ", Arch::kName,
              " architecture");
    if (m_opts.decoder_unit_norm) normalizeDecoder();
  }

  /// @brief Starts again: the model initialised from `seed` (decoder rows normalised with
  /// decoder_unit_norm), Adam at t = 0 with zero moments, no latent dead.
  void reset(std::uint64_t seed) {
    m_model = Model(m_model.config(), seed);
    if (m_opts.decoder_unit_norm) normalizeDecoder();
    m_adam.reset();
    m_dead = DeadLatentTracker(m_model.dSae(), m_opts.dead_feature_window);
  }

  /// @brief One step on batch `x` `[tokens, d_in]`: backward(x, sparsity_scale) then
  /// apply(lr). Returns the loss terms of the batch before the update.
  /// @throws NumericError when the loss or the gradient norm is not finite (the parameters
  /// are then unchanged).
  const LossTerms<Scalar>& run(const ConstBatchRef<Scalar>& x, double lr,
                               double sparsity_scale = 1.0) {
    backward(x, sparsity_scale);
    apply(lr);
    return m_terms;
  }

  /// @brief The first half of a step: forward pass and loss terms of `x`, the gradients of
  /// their total into gradients(). Parameters, Adam and the dead-latent counters are not
  /// changed. @throws NumericError naming the terms when the loss is not finite.
  const LossTerms<Scalar>& backward(const ConstBatchRef<Scalar>& x, double sparsity_scale = 1.0) {
    TrainOptions opts;
    opts.dead_mask = &m_dead.mask();
    opts.sparsity_scale = sparsity_scale;
    m_terms = m_model.backward(x, m_grads, opts, m_ws);
    if (!std::isfinite(double(m_terms.total()))) {
      std::string detail_terms;
      for (const auto& [name, value] : m_terms.terms())
        detail_terms += sae::detail::concat(detail_terms.empty() ? "" : ", ", name, " = ", value);
      throw NumericError(sae::detail::concat("the loss is not finite (", detail_terms, ")"));
    }
    return m_terms;
  }

  /// @brief The second half of a step, from gradients() as they are now: the decoder-gradient
  /// projection (decoder_unit_norm), clipping to max_grad_norm (folded into the Adam update),
  /// the Adam update with learning rate `lr`, the decoder renormalisation (decoder_unit_norm),
  /// the buffers and the dead-latent counters from the codes of the last backward() or, when
  /// `fired` is given, from those firing counts per latent (a data-parallel run's, summed over
  /// its ranks: see Trainer::setCollective()).
  /// @throws NumericError when the gradient norm is not finite (nothing is changed).
  void apply(double lr, const Eigen::VectorXd* fired = nullptr) {
    if (m_opts.decoder_unit_norm) removeParallelDecoderGradient();
    const double grad_scale =
        m_opts.max_grad_norm > 0 ? clipCoefficient(m_grads, m_opts.max_grad_norm) : 1.0;
    m_adam.step(m_model.parameters(), m_grads, lr, grad_scale);
    if (m_opts.decoder_unit_norm) normalizeDecoder();
    m_model.updateBuffers(m_ws);  // BatchTopK: the EMA threshold, from this step's selection
    if (fired != nullptr)
      m_dead.updateFromCounts(*fired);
    else
      m_dead.update(m_ws.codes);
  }

  /// @brief Puts back a saved state (checkpoint resume): parameters, buffers, Adam's step and
  /// moments, the dead-latent counters. Everything is checked before anything changes.
  void restore(const ParameterSet<Scalar>& params, const ParameterSet<double>& buffers,
               std::int64_t adam_step, const ParameterSet<Scalar>& m, const ParameterSet<Scalar>& v,
               const Eigen::Matrix<std::int64_t, Eigen::Dynamic, 1>& steps_since_fired) {
    require(params.sameLayout(m_model.parameters()),
            "TrainStep::restore: the parameters do not match the model's");
    require(buffers.sameLayout(m_model.buffers()),
            "TrainStep::restore: the buffers do not match the model's");
    DeadLatentTracker dead(m_model.dSae(), m_opts.dead_feature_window);
    dead.setStepsSinceFired(steps_since_fired);
    Adam<Scalar> adam(m_model.parameters(), m_opts.adam);
    adam.setState(adam_step, m, v);
    m_model.parameters().flat() = params.flat();
    m_model.buffers().flat() = buffers.flat();
    m_adam = std::move(adam);
    m_dead = std::move(dead);
  }

  /// @brief Rows of W_dec scaled to norm 1 (zero rows stay zero).
  void normalizeDecoder() {
    auto W = m_model.parameters().rowMajor("W_dec");
    for (Index i = 0; i < W.rows(); ++i) {
      const Scalar n = W.row(i).norm();
      if (n > Scalar(0)) W.row(i) /= n;
    }
  }

  const StepOptions& options() const { return m_opts; }
  Model& model() { return m_model; }
  const Model& model() const { return m_model; }
  /// @brief The gradients of the last backward(); apply() reads them (and may be preceded by
  /// averaging them across replicas).
  ParameterSet<Scalar>& gradients() { return m_grads; }
  const ParameterSet<Scalar>& gradients() const { return m_grads; }
  const Adam<Scalar>& optimizer() const { return m_adam; }
  const DeadLatentTracker& deadLatents() const { return m_dead; }
  /// @brief Loss terms of the last backward().
  const LossTerms<Scalar>& lossTerms() const { return m_terms; }
  /// @brief Codes of the batch of the last backward().
  const Codes& codes() const { return m_ws.codes; }
  /// @brief Reconstruction of the batch of the last backward().
  const RowMatrix<Scalar>& reconstruction() const { return m_ws.reconstruction; }

 private:
  static const StepOptions& checked(const StepOptions& opts) {
    opts.validate();
    return opts;
  }

  /// OpenAI / EleutherAI: d W_dec[i] -= (d W_dec[i] . w_i) w_i for unit rows w_i.
  void removeParallelDecoderGradient() {
    auto W = m_model.parameters().rowMajor("W_dec");
    auto G = m_grads.rowMajor("W_dec");
    for (Index i = 0; i < W.rows(); ++i) {
      const Scalar n2 = W.row(i).squaredNorm();
      if (n2 > Scalar(0)) G.row(i) -= (G.row(i).dot(W.row(i)) / n2) * W.row(i);
    }
  }

  StepOptions m_opts;
  Model m_model;
  ParameterSet<Scalar> m_grads;
  Adam<Scalar> m_adam;
  DeadLatentTracker m_dead;
  Workspace m_ws;
  LossTerms<Scalar> m_terms;
};

}  // namespace sae::train
