/// @file gated.hpp
/// @brief The gated SAE: a gate path deciding which latents fire and a magnitude path, sharing
/// encoder directions.
///
/// Rajamanoharan et al., "Improving Dictionary Learning with Gated Sparse Autoencoders" (2024),
/// in SAELens's form (the auxiliary term trains W_dec and b_dec too, unlike the paper):
/// ```
/// xc = x - b_dec;  P = xc W_enc
/// pi_gate = P + b_gate;  pi_mag = P * exp(r_mag) + b_mag   (W_enc column i times exp(r_mag_i))
/// f = 1[pi_gate > 0] * relu(pi_mag);  y = f W_dec + b_dec
/// mse_loss = mean_b sum_j (y - x)^2
/// l1_loss  = l1_coefficient * mean_b sum_i relu(pi_gate)_i n_i
/// auxiliary_reconstruction_loss = mean_b || relu(pi_gate) W_dec + b_dec - x ||^2
/// ```
/// The Heaviside gate passes no gradient.
#pragma once

#include <sae/kernels/sparse.hpp>
#include <sae/models/sparse_autoencoder.hpp>

namespace sae {

/// @brief Architecture policy of the gated SAE; see SparseAutoencoder.
struct GatedArch : detail::DenseCodesArch {
  static constexpr const char* kName = "gated";

  template <typename S>
  struct Workspace : detail::DenseWorkspace<S> {  // pre: P = xc W_enc; pattern: open gates
    RowMatrix<S> gate;                            ///< relu(pi_gate).
    RowMatrix<S> aux_reconstruction;
    RowMatrix<S> grad_aux;
    RowMatrix<S> grad_f, grad_gate;
    Vector<S> exp_r_mag;
    std::vector<S> coef_f, coef_gate, grad_mag, grad_pre;
  };

  static void validate(const SaeConfig&) {}

  template <typename S>
  static void addParameters(ParameterSet<S>& p, const SaeConfig& cfg) {
    p.add("b_gate", {cfg.d_sae});
    p.add("b_mag", {cfg.d_sae});
    p.add("r_mag", {cfg.d_sae});
    p.add("W_dec", {cfg.d_sae, cfg.d_in});
    p.add("b_dec", {cfg.d_in});
  }

  template <typename S>
  static void initialize(ParameterSet<S>&, const SaeConfig&, Rng&) {}

  /// f from P = xc W_enc (`pre`); also relu(pi_gate) when `gate` is non-null.
  template <typename S>
  static void activate(const ParameterSet<S>& p, const RowMatrix<S>& pre,
                       const Vector<S>& exp_r_mag, RowMatrix<S>& f, RowMatrix<S>* gate) {
    const auto b_gate = p.flat("b_gate");
    const auto b_mag = p.flat("b_mag");
    const Index B = pre.rows();
    const Index n = pre.cols();
    f.resize(B, n);
    if (gate) gate->resize(B, n);
    SAE_PRAGMA_OMP(parallel for schedule(static))
    for (Index b = 0; b < B; ++b) {
      for (Index i = 0; i < n; ++i) {
        const S pi_gate = pre(b, i) + b_gate[i];
        const S pi_mag = pre(b, i) * exp_r_mag[i] + b_mag[i];
        f(b, i) = pi_gate > S(0) && pi_mag > S(0) ? pi_mag : S(0);
        if (gate) (*gate)(b, i) = pi_gate > S(0) ? pi_gate : S(0);
      }
    }
  }

  template <typename S>
  static void encode(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                     Codes<S>& codes, Workspace<S>& ws) {
    detail::centerAndEncode(p, cfg, x, ws);
    ws.exp_r_mag = p.flat("r_mag").array().exp();
    activate<S>(p, ws.pre, ws.exp_r_mag, codes.values, nullptr);
  }

  template <typename S>
  static void forward(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                      const TrainOptions& opts, Workspace<S>& ws, LossTerms<S>& terms) {
    detail::centerAndEncode(p, cfg, x, ws);
    ws.exp_r_mag = p.flat("r_mag").array().exp();
    activate<S>(p, ws.pre, ws.exp_r_mag, ws.codes.values, &ws.gate);
    const Index B = x.rows();
    ws.pattern.template buildPositive<S>(ws.gate);
    ws.used_sparse = detail::takeSparsePath(ws, ws.pattern.nnz(), B, cfg.d_sae);
    detail::decodeDense(p, ws.codes.values, ws.used_sparse, ws.pattern, ws.coef_f,
                        ws.reconstruction);
    detail::decodeDense(p, ws.gate, ws.used_sparse, ws.pattern, ws.coef_gate,
                        ws.aux_reconstruction);

    const auto W_dec = p.rowMajor("W_dec");
    ws.norms.resize(cfg.d_sae);
    kernels::rowNorms<S>(W_dec, ws.norms);
    const double coef = cfg.l1_coefficient * opts.sparsity_scale;
    double penalty = 0;
    for (Index b = 0; b < x.rows(); ++b)
      penalty += double(ws.gate.row(b).dot(ws.norms.transpose()));
    terms.add("mse_loss", S(detail::meanSquaredError<S>(ws.reconstruction, x)));
    terms.add("l1_loss", S(coef * penalty / double(x.rows())));
    terms.add("auxiliary_reconstruction_loss",
              S(detail::meanSquaredError<S>(ws.aux_reconstruction, x)));
  }

  template <typename S>
  static void backward(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                       const TrainOptions& opts, Workspace<S>& ws, ParameterSet<S>& g) {
    detail::squaredErrorGradient(ws.reconstruction, x, ws.grad_y);
    detail::squaredErrorGradient(ws.aux_reconstruction, x, ws.grad_aux);
    const S coef = S(cfg.l1_coefficient * opts.sparsity_scale / double(x.rows()));
    if (ws.used_sparse) {
      backwardSparse(p, cfg, coef, ws, g);
      return;
    }
    const Index B = x.rows();
    const Index n = cfg.d_sae;
    const auto W_dec = p.rowMajor("W_dec");
    kernels::gemm(ws.grad_f, ws.grad_y, W_dec.transpose());
    kernels::gemm(ws.grad_gate, ws.grad_aux, W_dec.transpose());

    // grad_f becomes d/d pi_mag, grad_gate d/d pi_gate.
    const auto b_gate = p.flat("b_gate");
    const auto b_mag = p.flat("b_mag");
    SAE_PRAGMA_OMP(parallel for schedule(static))
    for (Index b = 0; b < B; ++b) {
      for (Index i = 0; i < n; ++i) {
        const S pi_gate = ws.pre(b, i) + b_gate[i];
        const S pi_mag = ws.pre(b, i) * ws.exp_r_mag[i] + b_mag[i];
        const bool open = pi_gate > S(0);
        const S g_mag = open && pi_mag > S(0) ? ws.grad_f(b, i) : S(0);
        const S g_gate = open ? ws.grad_gate(b, i) + coef * ws.norms[i] : S(0);
        ws.grad_f(b, i) = g_mag;
        ws.grad_gate(b, i) = g_gate;
      }
    }
    auto gb_mag = g.flat("b_mag");
    auto gr_mag = g.flat("r_mag");
    gb_mag = ws.grad_f.colwise().sum().transpose();
    // d/d r_mag_i = sum_b g_mag_bi P_bi exp(r_mag_i)
    gr_mag = ws.grad_f.cwiseProduct(ws.pre).colwise().sum().transpose().cwiseProduct(ws.exp_r_mag);
    g.flat("b_gate") = ws.grad_gate.colwise().sum().transpose();
    // d/dP = g_gate + g_mag exp(r_mag), in place.
    SAE_PRAGMA_OMP(parallel for schedule(static))
    for (Index b = 0; b < B; ++b)
      ws.grad_gate.row(b) += ws.grad_f.row(b).cwiseProduct(ws.exp_r_mag.transpose());

    auto gW_dec = g.rowMajor("W_dec");
    kernels::gemm(gW_dec, ws.codes.values.transpose(), ws.grad_y);
    kernels::gemm(gW_dec, ws.gate.transpose(), ws.grad_aux, /*accumulate=*/true);
    const Vector<S> d_norms = coef * ws.gate.colwise().sum().transpose();
    detail::addDecoderNormGradient<S>(W_dec, ws.norms, d_norms, gW_dec);

    auto gW_enc = g.colMajor("W_enc");
    kernels::gemm(gW_enc, ws.xc.transpose(), ws.grad_gate);
    detail::setDecoderBiasGradient(
        p, cfg, (ws.grad_y.colwise().sum() + ws.grad_aux.colwise().sum()).transpose(),
        ws.grad_gate.colwise().sum().transpose(), g);
  }

  /// Backward over the open gates only (f is zero wherever the gate is closed).
  template <typename S>
  static void backwardSparse(const ParameterSet<S>& p, const SaeConfig& cfg, S coef,
                             Workspace<S>& ws, ParameterSet<S>& g) {
    const auto W_dec = p.rowMajor("W_dec");
    const kernels::CsrPattern& pat = ws.pattern;
    const Index nnz = pat.nnz();
    const Index n = cfg.d_sae;
    ws.grad_mag.resize(static_cast<std::size_t>(nnz));
    ws.grad_pre.resize(static_cast<std::size_t>(nnz));
    kernels::csrDot<S>(ws.grad_y, pat, W_dec, ws.grad_mag.data());
    kernels::csrDot<S>(ws.grad_aux, pat, W_dec, ws.grad_pre.data());
    // grad_mag: d/d pi_mag (zero where the magnitude is not positive); grad_pre: d/d pi_gate.
    SAE_PRAGMA_OMP(parallel for schedule(static))
    for (Index e = 0; e < nnz; ++e) {
      if (!(ws.coef_f[e] > S(0))) ws.grad_mag[e] = S(0);
      ws.grad_pre[e] += coef * ws.norms[pat.latent[e]];
    }
    ws.buckets.build(n, pat.latent.data(), nnz);
    auto gb_mag = g.flat("b_mag");
    auto gr_mag = g.flat("r_mag");
    auto gb_gate = g.flat("b_gate");
    Vector<S> d_norms(n);
    const std::int32_t* ids = ws.buckets.entries().data();
    SAE_PRAGMA_OMP(parallel for schedule(dynamic, 64))
    for (Index i = 0; i < n; ++i) {
      S sum_mag = 0, sum_rmag = 0, sum_gate = 0, sum_open = 0;
      for (Index q = ws.buckets.begin(i); q < ws.buckets.end(i); ++q) {
        const std::int32_t e = ids[q];
        sum_mag += ws.grad_mag[e];
        sum_rmag += ws.grad_mag[e] * ws.pre(pat.row[e], i);
        sum_gate += ws.grad_pre[e];
        sum_open += ws.coef_gate[e];
      }
      gb_mag[i] = sum_mag;
      gr_mag[i] = sum_rmag * ws.exp_r_mag[i];
      gb_gate[i] = sum_gate;
      d_norms[i] = coef * sum_open;
    }
    // grad_pre becomes d/dP = d/d pi_gate + d/d pi_mag exp(r_mag).
    SAE_PRAGMA_OMP(parallel for schedule(static))
    for (Index e = 0; e < nnz; ++e) ws.grad_pre[e] += ws.grad_mag[e] * ws.exp_r_mag[pat.latent[e]];

    auto gW_dec = g.rowMajor("W_dec");
    kernels::sumByLatent<S>(ws.buckets, pat.row.data(), ws.coef_f.data(), ws.grad_y, gW_dec);
    kernels::accumulateByLatent<S>(ws.buckets, pat.row.data(), ws.coef_gate.data(), ws.grad_aux,
                                   gW_dec);
    detail::addDecoderNormGradient<S>(W_dec, ws.norms, d_norms, gW_dec);

    auto gW_enc_t = detail::encoderGradientRows(g);
    Vector<S> g_pre_sum = Vector<S>::Zero(n);
    kernels::sumByLatent<S>(ws.buckets, pat.row.data(), ws.grad_pre.data(), ws.xc, gW_enc_t,
                            g_pre_sum.data());
    detail::setDecoderBiasGradient(
        p, cfg, (ws.grad_y.colwise().sum() + ws.grad_aux.colwise().sum()).transpose(), g_pre_sum,
        g);
  }
};

/// @brief Gated SAE (SAELens "gated").
template <typename Scalar>
using GatedSAE = SparseAutoencoder<Scalar, GatedArch>;

}  // namespace sae
