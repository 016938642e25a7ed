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

  template <typename S>
  struct Workspace {
    Codes<S> codes;               ///< f, `[B, d_sae]`.
    RowMatrix<S> reconstruction;  ///< y, `[B, d_in]`.
    RowMatrix<S> xc;              ///< centred input.
    RowMatrix<S> pre;             ///< h, then its gradient.
    RowMatrix<S> grad_y;          ///< d loss / d y.
    Vector<S> norms;              ///< decoder row norms n.
    Vector<S> row_lp;             ///< ||f_b * n||_p per row.
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
                     Codes<S>& codes) {
    RowMatrix<S> xc;
    detail::centerInput(x, p, cfg, xc);
    RowMatrix<S> pre;
    pre.noalias() = xc * p.colMajor("W_enc");
    codes.values.resize(x.rows(), cfg.d_sae);
    kernels::addBiasRelu<S>(pre, p.flat("b_enc"), codes.values);
  }

  template <typename S>
  static void decode(const ParameterSet<S>& p, const SaeConfig&, const Codes<S>& codes,
                     RowMatrix<S>& out) {
    out.noalias() = codes.values * p.rowMajor("W_dec");
    out.rowwise() += p.flat("b_dec").transpose();
  }

  template <typename S>
  static void forward(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                      const TrainOptions& opts, Workspace<S>& ws, LossTerms<S>& terms) {
    const auto W_dec = p.rowMajor("W_dec");
    detail::centerInput(x, p, cfg, ws.xc);
    ws.pre.noalias() = ws.xc * p.colMajor("W_enc");
    ws.codes.values.resize(x.rows(), cfg.d_sae);
    kernels::addBiasRelu<S>(ws.pre, p.flat("b_enc"), ws.codes.values);
    decode(p, cfg, ws.codes, ws.reconstruction);

    ws.norms.resize(cfg.d_sae);
    kernels::rowNorms<S>(W_dec, ws.norms);
    const double coef = cfg.l1_coefficient * opts.sparsity_scale;
    const double lp = cfg.lp_norm;
    const Index B = x.rows();
    ws.row_lp.resize(B);
    double penalty = 0;
    for (Index b = 0; b < B; ++b) {
      const auto v = ws.codes.values.row(b).cwiseProduct(ws.norms.transpose());
      S norm;
      if (lp == 1.0) {
        norm = v.sum();  // every entry is >= 0
      } else if (lp == 2.0) {
        norm = v.norm();
      } else {
        norm = S(std::pow(double(v.array().pow(S(lp)).sum()), 1.0 / lp));
      }
      ws.row_lp[b] = norm;
      penalty += double(norm);
    }
    terms.add("mse_loss", S(detail::meanSquaredError<S>(ws.reconstruction, x)));
    terms.add("l1_loss", S(coef * penalty / double(B)));
  }

  template <typename S>
  static void backward(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                       const TrainOptions& opts, Workspace<S>& ws, ParameterSet<S>& g) {
    const Index B = x.rows();
    const auto W_dec = p.rowMajor("W_dec");
    const auto& f = ws.codes.values;
    const S scale = S(2) / S(B);
    ws.grad_y.noalias() = scale * (ws.reconstruction - x);

    auto gW_dec = g.rowMajor("W_dec");
    auto gW_enc = g.colMajor("W_enc");
    auto gb_enc = g.flat("b_enc");
    auto gb_dec = g.flat("b_dec");

    // d loss / d f = grad_y W_dec^T + d penalty / d f, then masked by relu'(h) into ws.pre.
    const S coef = S(cfg.l1_coefficient * opts.sparsity_scale / double(B));
    const double lp = cfg.lp_norm;
    RowMatrix<S>& grad_h = ws.pre;  // h is only needed for its sign, which f also gives
    grad_h.noalias() = ws.grad_y * W_dec.transpose();
    // d ||v||_p / d v_i = v_i^(p-1) / ||v||_p^(p-1) for v = f * n >= 0, and 0 where v_i = 0
    // (torch's subgradient); so d penalty / d f_i = coef dv_i n_i, d penalty / d n_i = coef dv_i
    // f_i.
    auto dv = [&](Index b, Index i) {
      return lp == 1.0 ? S(1) : S(std::pow(double(f(b, i) * ws.norms[i] / ws.row_lp[b]), lp - 1.0));
    };
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
    Vector<S> d_norms;
    if (lp == 1.0) {
      d_norms = coef * f.colwise().sum().transpose();
    } else {
      d_norms = Vector<S>::Zero(cfg.d_sae);
      for (Index b = 0; b < B; ++b)
        for (Index i = 0; i < cfg.d_sae; ++i)
          if (f(b, i) > S(0)) d_norms[i] += coef * dv(b, i) * f(b, i);
    }
    gW_dec.noalias() = f.transpose() * ws.grad_y;
    detail::addDecoderNormGradient<S>(W_dec, ws.norms, d_norms, gW_dec);
    gW_enc.noalias() = ws.xc.transpose() * grad_h;
    gb_enc = grad_h.colwise().sum().transpose();
    gb_dec = ws.grad_y.colwise().sum().transpose();
    if (cfg.apply_b_dec_to_input) gb_dec.noalias() -= p.colMajor("W_enc") * gb_enc;
  }
};

/// @brief Standard ReLU SAE with decoder-norm-weighted L1 (SAELens "standard").
template <typename Scalar>
using StandardSAE = SparseAutoencoder<Scalar, StandardArch>;

}  // namespace sae
