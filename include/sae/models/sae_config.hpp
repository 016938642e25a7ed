/// @file sae_config.hpp
/// @brief SaeConfig and the per-step training options shared by every architecture; includes
/// the feature codes (codes.hpp) and the loss terms (loss_terms.hpp) they work with.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include <sae/core/enum_names.hpp>
#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/models/codes.hpp>
#include <sae/models/loss_terms.hpp>

namespace sae {

/// @brief Shape and hyperparameters of an SAE (SAELens names where SAELens has them).
struct SaeConfig {
  Index d_in = 0;   ///< Width of the activations.
  Index d_sae = 0;  ///< Number of latents.
  Index k = 0;      ///< TopK: latents kept per token.
  /// Subtract b_dec from the input before encoding (it is always added on decode).
  bool apply_b_dec_to_input = true;
  /// TopK: select on pre-activations scaled by the decoder row norms and decode f / n.
  bool rescale_acts_by_decoder_norm = false;
  double l1_coefficient = 1.0;        ///< Standard, gated: weight of the sparsity penalty.
  double lp_norm = 1.0;               ///< Standard: p of the decoder-norm-weighted penalty.
  double aux_loss_coefficient = 1.0;  ///< TopK: weight of AuxK.
  double decoder_init_norm = 0.1;     ///< Row norm of W_dec at initialisation.

  /// JumpReLU: the sparsity penalty on the number of active latents.
  enum class SparsityLossMode {
    Step,  ///< l0_coefficient * mean_b sum_i 1[h_i > t_i], straight-through to the threshold.
    Tanh   ///< l0_coefficient * mean_b sum_i tanh(jumprelu_tanh_scale * f_i * n_i).
  };
  double l0_coefficient = 1.0;       ///< JumpReLU: weight of the L0 term.
  double jumprelu_bandwidth = 0.05;  ///< JumpReLU: rectangle-kernel width.
  SparsityLossMode sparsity_loss_mode = SparsityLossMode::Step;  ///< JumpReLU: L0 form.
  double jumprelu_tanh_scale = 4.0;                              ///< JumpReLU: tanh mode's scale.
  double jumprelu_init_threshold = 0.01;                         ///< JumpReLU: initial threshold.
  double pre_act_loss_coefficient = 0.0;  ///< JumpReLU: pre-activation loss (0: off).
  /// BatchTopK / Matryoshka: rate of the threshold's exponential moving average.
  double topk_threshold_lr = 0.01;
  /// Matryoshka: nested prefix widths, increasing, the last equal to d_sae.
  std::vector<Index> matryoshka_widths;

  /// @brief Checks the fields every architecture needs; throws ConfigError.
  void validateCommon() const {
    require(d_in > 0, "d_in must be positive, found ", d_in);
    require(d_sae > 0, "d_sae must be positive, found ", d_sae);
    require(d_sae <= Index(INT32_MAX), "d_sae must fit in 32 bits, found ", d_sae);
    checkCoefficient("l1_coefficient", l1_coefficient);
    checkCoefficient("aux_loss_coefficient", aux_loss_coefficient);
    require(std::isfinite(lp_norm) && lp_norm >= 1.0, "lp_norm must be >= 1, found ", lp_norm);
    require(std::isfinite(decoder_init_norm) && decoder_init_norm > 0,
            "decoder_init_norm must be positive, found ", decoder_init_norm);
    checkJumpReLU(l0_coefficient, pre_act_loss_coefficient, jumprelu_bandwidth, jumprelu_tanh_scale,
                  jumprelu_init_threshold);
    require(std::isfinite(topk_threshold_lr) && topk_threshold_lr > 0 && topk_threshold_lr <= 1,
            "topk_threshold_lr must be in (0, 1], found ", topk_threshold_lr);
  }

  /// @brief ConfigError naming the first invalid JumpReLU hyperparameter (coefficients >= 0,
  /// bandwidth and tanh scale > 0, initial threshold finite).
  static void checkJumpReLU(double l0_coefficient, double pre_act_loss_coefficient,
                            double bandwidth, double tanh_scale, double init_threshold) {
    checkCoefficient("l0_coefficient", l0_coefficient);
    checkCoefficient("pre_act_loss_coefficient", pre_act_loss_coefficient);
    require(std::isfinite(bandwidth) && bandwidth > 0,
            "jumprelu_bandwidth must be positive, found ", bandwidth);
    require(std::isfinite(tanh_scale) && tanh_scale > 0,
            "jumprelu_tanh_scale must be positive, found ", tanh_scale);
    require(std::isfinite(init_threshold), "jumprelu_init_threshold must be finite, found ",
            init_threshold);
  }

  static void checkCoefficient(const char* name, double value) {
    require(std::isfinite(value) && value >= 0.0, name, " must be finite and >= 0, found ", value);
  }
};

/// The names of SaeConfig::SparsityLossMode (SAELens's `jumprelu_sparsity_loss_mode`).
template <>
struct EnumNames<SaeConfig::SparsityLossMode> {
  static constexpr std::pair<SaeConfig::SparsityLossMode, const char*> table[] = {
      {SaeConfig::SparsityLossMode::Step, "step"}, {SaeConfig::SparsityLossMode::Tanh, "tanh"}};
};

/// @brief Per-step inputs of the training loss besides the batch.
struct TrainOptions {
  /// TopK: latents that count as dead for AuxK (1 = dead, size d_sae); null = none dead.
  const LatentMask* dead_mask = nullptr;
  /// Multiplier of the sparsity coefficient (coefficient warm-up), in [0, 1] normally.
  double sparsity_scale = 1.0;
};

}  // namespace sae
