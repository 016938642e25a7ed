/// @file standard.hpp
/// @brief The standard SAE: ReLU encoder and a decoder-norm-weighted Lp sparsity penalty.
///
/// Bricken et al., "Towards Monosemanticity" (2023) and Conerly et al., "Circuits Updates,
/// April 2024" (the decoder-norm-weighted L1 that SAELens trains by default).
///
/// ```
/// xc = x - b_dec (if apply_b_dec_to_input);  h = xc W_enc + b_enc;  f = relu(h)
/// y  = f W_dec + b_dec
/// mse_loss = mean_b sum_j (y - x)^2
/// l1_loss  = l1_coefficient * mean_b || f * n ||_p,   n_i = ||W_dec[i, :]||
/// ```
#pragma once

#include <cmath>

#include <sae/kernels/sparse.hpp>
#include <sae/models/sparse_autoencoder.hpp>

namespace sae {

/// @brief Activation policy of the standard (ReLU + Lp) SAE, for ActivationArch.
struct StandardActivation {
  static constexpr const char* kName = "standard";

  template <typename S>
  struct Scratch {
    Vector<S> row_lp;  ///< ||f_b * n||_p per row.
  };

  static void validate(const SaeConfig&) {}

  template <typename S>
  static void addParameters(ParameterSet<S>&, const SaeConfig&) {}

  template <typename S>
  static void initialize(ParameterSet<S>&, const SaeConfig&, Rng&) {}

  /// f = relu(h), fused with h = pre + b_enc.
  template <typename S>
  static void activate(const ParameterSet<S>& p, const SaeConfig&, RowMatrix<S>& pre,
                       RowMatrix<S>& f) {
    kernels::addBiasRelu<S>(pre, p.flat("b_enc"), f);
  }

  /// l1_loss = c * mean_b ||f_b * n||_p, c = l1_coefficient * sparsity_scale.
  template <typename S>
  static void addPenalties(const ParameterSet<S>&, const SaeConfig& cfg, const TrainOptions& opts,
                           const detail::DenseWorkspace<S>& ws, Scratch<S>& scratch,
                           LossTerms<S>& terms) {
    const auto& f = ws.codes.values;
    const Index B = f.rows();
    const double lp = cfg.lp_norm;
    scratch.row_lp.resize(B);
    SAE_PRAGMA_OMP(parallel for schedule(static))
    for (Index b = 0; b < B; ++b) {
      const auto v = f.row(b).cwiseProduct(ws.norms.transpose());
      if (lp == 1.0) {
        scratch.row_lp[b] = v.sum();  // every entry is >= 0
      } else if (lp == 2.0) {
        scratch.row_lp[b] = v.norm();
      } else {
        scratch.row_lp[b] = S(std::pow(double(v.array().pow(S(lp)).sum()), 1.0 / lp));
      }
    }
    double penalty = 0;
    for (Index b = 0; b < B; ++b) penalty += double(scratch.row_lp[b]);
    const double coef = cfg.l1_coefficient * opts.sparsity_scale;
    terms.add("l1_loss", S(coef * penalty / double(B)));
  }

  /// d ||v||_p / d v_i = v_i^(p-1) / ||v||_p^(p-1) for v = f * n >= 0, and 0 where v_i = 0
  /// (torch's subgradient); so d penalty / d f_i = coef dv_i n_i, d penalty / d n_i =
  /// coef dv_i f_i (coef = c / B).
  template <typename S>
  struct Lp {
    const RowMatrix<S>& f;
    const Vector<S>& norms;
    const Vector<S>& row_lp;
    S coef;
    double lp;

    S dv(Index b, Index i) const {
      return lp == 1.0 ? S(1) : S(std::pow(double(f(b, i) * norms[i] / row_lp[b]), lp - 1.0));
    }
    /// d loss / d h from d mse / d f: relu passes it where f > 0.
    S operator()(Index b, Index i, S g) const {
      return f(b, i) > S(0) ? g + coef * dv(b, i) * norms[i] : S(0);
    }
  };

  template <typename S>
  static Lp<S> gradientRule(const ParameterSet<S>&, const SaeConfig& cfg, const TrainOptions& opts,
                            const detail::DenseWorkspace<S>& ws, const Scratch<S>& scratch) {
    const S coef = S(cfg.l1_coefficient * opts.sparsity_scale / double(ws.codes.values.rows()));
    return Lp<S>{ws.codes.values, ws.norms, scratch.row_lp, coef, cfg.lp_norm};
  }

  template <typename S>
  static void penaltyGradient(const ParameterSet<S>& p, const SaeConfig& cfg,
                              const TrainOptions& opts, const detail::DenseWorkspace<S>& ws,
                              const Scratch<S>& scratch, Vector<S>& d_norms, ParameterSet<S>&) {
    const Lp<S> rule = gradientRule(p, cfg, opts, ws, scratch);
    const auto& f = ws.codes.values;
    if (ws.used_sparse) {
      const kernels::CsrPattern& pat = ws.pattern;
      for (Index e = 0; e < pat.nnz(); ++e) {
        const Index b = pat.row[e], i = pat.latent[e];
        d_norms[i] += rule.coef * rule.dv(b, i) * f(b, i);
      }
    } else if (cfg.lp_norm == 1.0) {
      d_norms = rule.coef * f.colwise().sum().transpose();
    } else {
      for (Index b = 0; b < f.rows(); ++b)
        for (Index i = 0; i < f.cols(); ++i)
          if (f(b, i) > S(0)) d_norms[i] += rule.coef * rule.dv(b, i) * f(b, i);
    }
  }
};

/// @brief Architecture policy of the standard (ReLU + Lp) SAE; see SparseAutoencoder.
using StandardArch = ActivationArch<StandardActivation>;

/// @brief Standard ReLU SAE with decoder-norm-weighted L1 (SAELens "standard").
template <typename Scalar>
using StandardSAE = SparseAutoencoder<Scalar, StandardArch>;

}  // namespace sae
