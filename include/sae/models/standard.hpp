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

/// @brief Architecture policy of the standard (ReLU + L1) SAE; see SparseAutoencoder.
struct StandardArch {
  static constexpr const char* kName = "standard";

  template <typename S>
  using Codes = DenseCodes<S>;

  /// Workspace: pre holds h, then (dense path) its gradient; pattern the active (b, i).
  template <typename S>
  struct Workspace : detail::DenseWorkspace<S> {
    Vector<S> row_lp;     ///< ||f_b * n||_p per row.
    std::vector<S> coef;  // per active entry: f, then d loss / d h
  };

  static void validate(const SaeConfig&) {}

  template <typename S>
  static void addParameters(ParameterSet<S>& p, const SaeConfig& cfg) {
    p.add("b_enc", {cfg.d_sae});
    p.add("W_dec", {cfg.d_sae, cfg.d_in});
    p.add("b_dec", {cfg.d_in});
  }

  template <typename S>
  static void initialize(ParameterSet<S>&, const SaeConfig&, Rng&) {}

  template <typename S>
  static void encode(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                     Codes<S>& codes, Workspace<S>& ws) {
    detail::centerAndEncode(p, cfg, x, ws);
    codes.values.resize(x.rows(), cfg.d_sae);
    kernels::addBiasRelu<S>(ws.pre, p.flat("b_enc"), codes.values);
  }

  template <typename S>
  static void decode(const ParameterSet<S>& p, const SaeConfig&, const Codes<S>& codes,
                     RowMatrix<S>& out) {
    detail::denseDecode(p, codes.values, out);
  }

  template <typename S>
  static void forward(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                      const TrainOptions& opts, Workspace<S>& ws, LossTerms<S>& terms) {
    const auto W_dec = p.rowMajor("W_dec");
    const Index B = x.rows();
    detail::centerAndEncode(p, cfg, x, ws);
    ws.codes.values.resize(B, cfg.d_sae);
    kernels::addBiasRelu<S>(ws.pre, p.flat("b_enc"), ws.codes.values);
    const auto& f = ws.codes.values;

    ws.pattern.template buildPositive<S>(f);
    ws.used_sparse = detail::takeSparsePath(ws, ws.pattern.nnz(), B, cfg.d_sae);
    detail::decodeDense(p, f, ws.used_sparse, ws.pattern, ws.coef, ws.reconstruction);

    ws.norms.resize(cfg.d_sae);
    kernels::rowNorms<S>(W_dec, ws.norms);
    const double lp = cfg.lp_norm;
    ws.row_lp.resize(B);
    SAE_PRAGMA_OMP(parallel for schedule(static))
    for (Index b = 0; b < B; ++b) {
      const auto v = f.row(b).cwiseProduct(ws.norms.transpose());
      if (lp == 1.0) {
        ws.row_lp[b] = v.sum();  // every entry is >= 0
      } else if (lp == 2.0) {
        ws.row_lp[b] = v.norm();
      } else {
        ws.row_lp[b] = S(std::pow(double(v.array().pow(S(lp)).sum()), 1.0 / lp));
      }
    }
    double penalty = 0;
    for (Index b = 0; b < B; ++b) penalty += double(ws.row_lp[b]);
    const double coef = cfg.l1_coefficient * opts.sparsity_scale;
    terms.add("mse_loss", S(detail::meanSquaredError<S>(ws.reconstruction, x)));
    terms.add("l1_loss", S(coef * penalty / double(B)));
  }

  template <typename S>
  static void backward(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                       const TrainOptions& opts, Workspace<S>& ws, ParameterSet<S>& g) {
    const Index B = x.rows();
    const auto W_dec = p.rowMajor("W_dec");
    const auto& f = ws.codes.values;
    detail::squaredErrorGradient(ws.reconstruction, x, ws.grad_y);

    auto gW_dec = g.rowMajor("W_dec");
    auto gb_enc = g.flat("b_enc");
    // d ||v||_p / d v_i = v_i^(p-1) / ||v||_p^(p-1) for v = f * n >= 0, and 0 where v_i = 0
    // (torch's subgradient); so d penalty / d f_i = coef dv_i n_i, d penalty / d n_i = coef dv_i
    // f_i.
    const S coef = S(cfg.l1_coefficient * opts.sparsity_scale / double(B));
    const double lp = cfg.lp_norm;
    auto dv = [&](Index b, Index i) {
      return lp == 1.0 ? S(1) : S(std::pow(double(f(b, i) * ws.norms[i] / ws.row_lp[b]), lp - 1.0));
    };
    Vector<S> d_norms = Vector<S>::Zero(cfg.d_sae);

    if (ws.used_sparse) {
      // Only the active entries carry gradient: f > 0 there and relu'(h) = 1.
      const kernels::CsrPattern& pat = ws.pattern;
      const Index nnz = pat.nnz();
      ws.buckets.build(cfg.d_sae, pat.latent.data(), nnz);
      kernels::sumByLatent<S>(ws.buckets, pat.row.data(), ws.coef.data(), ws.grad_y, gW_dec);
      for (Index e = 0; e < nnz; ++e) {
        const Index b = pat.row[e], i = pat.latent[e];
        d_norms[i] += coef * dv(b, i) * f(b, i);
      }
      // coef becomes d loss / d h.
      kernels::csrDot<S>(ws.grad_y, pat, W_dec, ws.coef.data());
      SAE_PRAGMA_OMP(parallel for schedule(static))
      for (Index e = 0; e < nnz; ++e)
        ws.coef[e] += coef * dv(pat.row[e], pat.latent[e]) * ws.norms[pat.latent[e]];
      auto gW_enc_t = detail::encoderGradientRows(g);
      kernels::sumByLatent<S>(ws.buckets, pat.row.data(), ws.coef.data(), ws.xc, gW_enc_t,
                              gb_enc.data());
    } else {
      RowMatrix<S>& grad_h = ws.pre;  // h is only needed for its sign, which f also gives
      kernels::gemm(grad_h, ws.grad_y, W_dec.transpose());
      SAE_PRAGMA_OMP(parallel for schedule(static))
      for (Index b = 0; b < B; ++b) {
        for (Index i = 0; i < cfg.d_sae; ++i) {
          if (f(b, i) > S(0)) {
            grad_h(b, i) += coef * dv(b, i) * ws.norms[i];
          } else {
            grad_h(b, i) = S(0);
          }
        }
      }
      if (lp == 1.0) {
        d_norms = coef * f.colwise().sum().transpose();
      } else {
        for (Index b = 0; b < B; ++b)
          for (Index i = 0; i < cfg.d_sae; ++i)
            if (f(b, i) > S(0)) d_norms[i] += coef * dv(b, i) * f(b, i);
      }
      kernels::gemm(gW_dec, f.transpose(), ws.grad_y);
      kernels::gemm(g.colMajor("W_enc"), ws.xc.transpose(), grad_h);
      gb_enc = grad_h.colwise().sum().transpose();
    }
    detail::addDecoderNormGradient<S>(W_dec, ws.norms, d_norms, gW_dec);
    detail::setDecoderBiasGradient(p, cfg, ws.grad_y.colwise().sum().transpose(), gb_enc, g);
  }
};

/// @brief Standard ReLU SAE with decoder-norm-weighted L1 (SAELens "standard").
template <typename Scalar>
using StandardSAE = SparseAutoencoder<Scalar, StandardArch>;

}  // namespace sae
