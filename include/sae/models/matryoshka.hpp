/// @file matryoshka.hpp
/// @brief The Matryoshka BatchTopK SAE: a BatchTopK SAE trained to reconstruct the input from
/// every nested prefix of its latents, so that early latents learn general features.
///
/// Bussmann, Nabeshima, Karvonen and Nanda, "Learning Multi-Level Features with Matryoshka
/// Sparse Autoencoders" (2025), in SAELens's form (`MatryoshkaBatchTopKTrainingSAE`,
/// sae_lens/saes/matryoshka_batchtopk_sae.py). With widths w_1 < ... < w_L = d_sae
/// (`matryoshka_widths`) and the BatchTopK selection f of batchtopk.hpp:
/// ```
/// y_l = sum_{i < w_l} (f_i / n_i^r) W_dec[i, :] + b_dec      (every level adds b_dec)
/// mse_loss                      = mean_b sum_j (y_L - x)^2    (y_L = y, the full SAE)
/// auxiliary_reconstruction_loss = AuxK of the full SAE, as TopK's
/// inner_mse_loss_<w_l>          = mean_b sum_j (y_l - x)^2,   l = 1 .. L-1
/// total = mse_loss + auxiliary_reconstruction_loss + sum of the inner losses
/// ```
/// Nothing is detached in the inner losses: each trains the decoder rows and b_dec it uses and,
/// through f, the encoder. The selection, the EMA `topk_threshold`, inference (encode()) and
/// the conversion to a JumpReLU SAE are BatchTopK's. SAELens's optional per-level AuxK
/// (`use_matryoshka_aux_loss`, off by default) is not implemented.
#pragma once

#include <sae/core/error.hpp>
#include <sae/models/batchtopk.hpp>

namespace sae {

/// @brief Architecture policy of the Matryoshka BatchTopK SAE (SAELens
/// "matryoshka_batchtopk"); see SparseAutoencoder and the file comment.
struct MatryoshkaBatchTopKArch : detail::BatchTopKFamily {
  static constexpr const char* kName = "matryoshka_batchtopk";
  static constexpr bool kUsesWidths = true;  ///< See ArchitectureTraits (registry.hpp).

  /// Most levels: the loss has one term per level plus mse_loss and AuxK.
  static constexpr Index kMaxLevels = Index(LossTerms<float>::kCapacity) - 2;

  /// k as BatchTopK; matryoshka_widths positive, strictly increasing, the last equal to
  /// d_sae, at most kMaxLevels of them.
  static void validate(const SaeConfig& cfg) {
    detail::validateK(cfg);
    const auto& w = cfg.matryoshka_widths;
    require(!w.empty(),
            "matryoshka_widths must not be empty (the last width must be d_sae = ", cfg.d_sae, ")");
    require(Index(w.size()) <= kMaxLevels, "matryoshka_widths has ", w.size(), " levels, at most ",
            kMaxLevels, " are supported");
    for (std::size_t l = 0; l < w.size(); ++l) {
      require(w[l] > 0, "matryoshka_widths must be positive, found ", w[l], " at position ", l);
      if (l > 0)
        require(w[l] > w[l - 1], "matryoshka_widths must be strictly increasing, found ", w[l - 1],
                " then ", w[l], " at position ", l);
    }
    require(w.back() == cfg.d_sae, "the last of matryoshka_widths must equal d_sae = ", cfg.d_sae,
            ", found ", w.back(), " (append ", cfg.d_sae, " as the last level)");
  }

  template <typename S>
  static void forward(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                      const TrainOptions& opts, Workspace<S>& ws, LossTerms<S>& terms) {
    forwardLevels(p, cfg, x, opts, ws, terms, levels(cfg));
  }

  template <typename S>
  static void backward(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                       const TrainOptions&, Workspace<S>& ws, ParameterSet<S>& g) {
    backwardLevels(p, cfg, x, ws, g, levels(cfg));
  }

 private:
  static detail::BatchTopKLevels levels(const SaeConfig& cfg) {
    return {cfg.matryoshka_widths.data(), Index(cfg.matryoshka_widths.size())};
  }
};

/// @brief Matryoshka BatchTopK SAE (SAELens "matryoshka_batchtopk").
template <typename Scalar>
using MatryoshkaBatchTopKSAE = SparseAutoencoder<Scalar, MatryoshkaBatchTopKArch>;

}  // namespace sae
