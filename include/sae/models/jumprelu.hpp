/// @file jumprelu.hpp
/// @brief The JumpReLU SAE: a ReLU with a learned threshold per latent, trained on an L0
/// penalty through straight-through pseudo-derivatives.
///
/// Rajamanoharan et al., "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU Sparse
/// Autoencoders" (2024), with the tanh penalty and the pre-activation loss of Anthropic's
/// "Circuits Updates, January 2025", in SAELens's form (>= 6.48: the raw threshold θ is the
/// trained parameter and t = relu(θ) is used everywhere):
/// ```
/// xc = x - b_dec (if apply_b_dec_to_input);  h = xc W_enc + b_enc;  t = relu(threshold)
/// f = h * 1[h > t];  y = f W_dec + b_dec
/// mse_loss     = mean_b sum_j (y - x)^2
/// l0_loss      = c * mean_b sum_i 1[h_i > t_i]                           (step mode)
///              = c * mean_b sum_i tanh(jumprelu_tanh_scale * f_i * n_i)   (tanh mode)
///                c = l0_coefficient * sparsity_scale,  n_i = ||W_dec[i, :]||
/// pre_act_loss = pre_act_loss_coefficient * mean_b sum_i relu(t_i - h_i) dead_i n_i
///                (a term only when pre_act_loss_coefficient > 0; 0 when nothing is dead)
/// ```
/// Pseudo-derivatives, with ε = jumprelu_bandwidth and the rectangle K(u) = 1[-1/2 < u < 1/2]:
/// ```
/// through f:          d f / d h = 1[h > t],  d f / d t = -(t / ε) K((h - t) / ε)
/// through step l0:    d / d h = 0,           d 1[h > t] / d t = -(1 / ε) K((h - t) / ε)
/// pre_act_loss, tanh: ordinary derivatives (also through n into W_dec)
/// into the parameter: d L / d threshold_i = d L / d t_i * 1[threshold_i > 0]
/// ```
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <sae/kernels/sparse.hpp>
#include <sae/models/sparse_autoencoder.hpp>

namespace sae {

/// @brief Architecture policy of the JumpReLU SAE; see SparseAutoencoder.
struct JumpReLUArch : detail::DenseCodesArch {
  static constexpr const char* kName = "jumprelu";

  /// Workspace: pre holds h; pattern the active (b, i), h > t. The sparse path is taken
  /// below `sparse_threshold` of entries carrying a value or a gradient (active, inside the
  /// threshold's rectangle window, or under the pre-activation loss).
  template <typename S>
  struct Workspace : detail::DenseWorkspace<S> {
    RowMatrix<S> grad_f;              ///< dense path: d mse / d f, then d loss / d h.
    Vector<S> t;                      ///< relu(threshold).
    Vector<S> d_t, d_norms;           ///< d loss / d t (already masked by threshold > 0), / d n.
    Vector<S> grad_h_sum;             ///< sum over rows of d loss / d h.
    Eigen::VectorXd row_l0, row_pre;  // per-row partial sums of the penalties
    std::vector<std::int32_t> dead;   // dead latent ids (pre-activation loss)
    // Built on the sparse path only (stale after a dense step):
    kernels::CsrPattern extra;  // inactive (b, i) in the window or under the pre-act loss
    std::vector<S> coef;        // per active entry: f
    std::vector<S> act_gh, act_gt, act_dn;  // per active entry: d/dh, d/dt, d/dn
    std::vector<S> ext_gh, ext_gt, ext_dn;  // per extra entry: the same
    kernels::LatentBuckets extra_buckets;
  };

  static void validate(const SaeConfig&) {}

  template <typename S>
  static void addParameters(ParameterSet<S>& p, const SaeConfig& cfg) {
    p.add("b_enc", {cfg.d_sae});
    p.add("W_dec", {cfg.d_sae, cfg.d_in});
    p.add("b_dec", {cfg.d_in});
    p.add("threshold", {cfg.d_sae});
  }

  /// SAELens: every threshold starts at jumprelu_init_threshold (b_enc stays 0).
  template <typename S>
  static void initialize(ParameterSet<S>& p, const SaeConfig& cfg, Rng&) {
    p.flat("threshold").setConstant(S(cfg.jumprelu_init_threshold));
  }

  /// ws.pre = xc W_enc becomes h = xc W_enc + b_enc, f = h 1[h > t] goes into `f`,
  /// t = relu(threshold) into ws.t.
  template <typename S>
  static void activate(const ParameterSet<S>& p, Workspace<S>& ws, RowMatrix<S>& f) {
    RowMatrix<S>& pre = ws.pre;
    const Index B = pre.rows();
    const auto b_enc = p.flat("b_enc");
    const Index n = b_enc.size();
    ws.t = p.flat("threshold").cwiseMax(S(0));
    const Vector<S>& t = ws.t;
    f.resize(B, n);
    SAE_PRAGMA_OMP(parallel for schedule(static))
    for (Index b = 0; b < B; ++b) {
      S* h = pre.row(b).data();
      S* out = f.row(b).data();
      for (Index i = 0; i < n; ++i) {
        h[i] += b_enc[i];
        out[i] = h[i] > t[i] ? h[i] : S(0);
      }
    }
  }

  template <typename S>
  static void encode(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                     Codes<S>& codes, Workspace<S>& ws) {
    detail::centerAndEncode(p, cfg, x, ws);
    activate<S>(p, ws, codes.values);
  }

  /// Constants of the per-entry gradient of one step.
  template <typename S>
  struct EntryRule {
    S eps;         // ε, the bandwidth
    S step_t;      // step mode: d l0 / d 1[h > t] per entry, c / B; else 0
    S tanh_scale;  // tanh mode: jumprelu_tanh_scale; else 0
    S tanh_coef;   // tanh mode: c / B * jumprelu_tanh_scale; else 0
    S pre_coef;    // pre_act_loss_coefficient / B (0: no pre-activation loss)

    /// Whether (h - t) / ε lies strictly inside (-1/2, 1/2) (computed as SAELens does).
    bool inWindow(S h, S t) const {
      const S u = (h - t) / eps;
      return u > S(-0.5) && u < S(0.5);
    }
  };

  template <typename S>
  static EntryRule<S> entryRule(const SaeConfig& cfg, const TrainOptions& opts, Index B) {
    const double c = cfg.l0_coefficient * opts.sparsity_scale / double(B);
    const bool tanh = cfg.sparsity_loss_mode == SaeConfig::SparsityLossMode::Tanh;
    EntryRule<S> r;
    r.eps = S(cfg.jumprelu_bandwidth);
    r.step_t = tanh ? S(0) : S(c);
    r.tanh_scale = tanh ? S(cfg.jumprelu_tanh_scale) : S(0);
    r.tanh_coef = tanh ? S(c * cfg.jumprelu_tanh_scale) : S(0);
    r.pre_coef = S(cfg.pre_act_loss_coefficient / double(B));
    return r;
  }

  /// Gradient contributions of one entry (b, i).
  ///
  /// @param h, f, t  pre-activation, activation and relu(threshold_i);
  /// @param g        d mse / d f_bi (only read when the entry is active or in the window);
  /// @param n        decoder norm n_i;
  /// @param open     threshold_i > 0 (the threshold receives gradient);
  /// @param pre_act  latent i is dead and the pre-activation loss is on.
  /// Outputs d loss / d h (gh), d loss / d t (gt, 0 unless open), d loss / d n (dn).
  template <typename S>
  static void entryGradient(const EntryRule<S>& r, S h, S f, S t, S g, S n, bool open, bool pre_act,
                            S& gh, S& gt, S& dn) {
    const bool active = h > t;
    gh = S(0);
    gt = S(0);
    dn = S(0);
    const bool window = open && r.inWindow(h, t);
    if (active || window) {
      S gf = g;  // d loss / d f
      if (r.tanh_coef != S(0)) {
        const S th = std::tanh(r.tanh_scale * f * n);
        const S sech2 = S(1) - th * th;
        gf += r.tanh_coef * n * sech2;
        dn += r.tanh_coef * f * sech2;
      }
      if (active) gh = gf;
      if (window) gt = -(t / r.eps) * gf - r.step_t / r.eps;
    }
    if (pre_act && t > h) {
      gh -= r.pre_coef * n;
      if (open) gt += r.pre_coef * n;
      dn += r.pre_coef * (t - h);
    }
  }

  /// Number of entries (b, i) of a `[rows, cols]` grid with `keep(b, i)`.
  template <typename Keep>
  static Index countWhere(Index rows, Index cols, const Keep& keep) {
    Index count = 0;
    SAE_PRAGMA_OMP(parallel for schedule(static) reduction(+ : count))
    for (Index b = 0; b < rows; ++b)
      for (Index i = 0; i < cols; ++i) count += keep(b, i) ? 1 : 0;
    return count;
  }

  /// Room for `active` and `extra` entries in every per-entry buffer, with headroom (twice the
  /// need, at most `cap`) so that sizes that drift from step to step stop reallocating.
  template <typename S>
  static void reserveEntries(Workspace<S>& ws, Index active, Index extra, Index cap) {
    auto room = [cap](Index need) { return static_cast<std::size_t>(std::min(cap, 2 * need)); };
    if (static_cast<std::size_t>(active) > ws.coef.capacity()) {
      const std::size_t r = room(active);
      for (auto* v : {&ws.pattern.latent, &ws.pattern.row}) v->reserve(r);
      for (auto* v : {&ws.coef, &ws.act_gh, &ws.act_gt, &ws.act_dn}) v->reserve(r);
      ws.buckets.reserve(Index(r));
    }
    if (static_cast<std::size_t>(extra) > ws.ext_gh.capacity()) {
      const std::size_t r = room(extra);
      for (auto* v : {&ws.extra.latent, &ws.extra.row}) v->reserve(r);
      for (auto* v : {&ws.ext_gh, &ws.ext_gt, &ws.ext_dn}) v->reserve(r);
      ws.extra_buckets.reserve(Index(r));
    }
  }

  template <typename S>
  static void forward(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                      const TrainOptions& opts, Workspace<S>& ws, LossTerms<S>& terms) {
    const auto W_dec = p.rowMajor("W_dec");
    const auto theta = p.flat("threshold");
    const Index B = x.rows();
    const Index n = cfg.d_sae;
    detail::centerAndEncode(p, cfg, x, ws);
    activate<S>(p, ws, ws.codes.values);
    const auto& f = ws.codes.values;
    ws.norms.resize(n);
    kernels::rowNorms<S>(W_dec, ws.norms);

    ws.dead.reserve(static_cast<std::size_t>(n));
    ws.dead.clear();
    const bool pre_on = cfg.pre_act_loss_coefficient > 0;
    if (pre_on && opts.dead_mask)
      for (Index i = 0; i < n; ++i)
        if ((*opts.dead_mask)[i]) ws.dead.push_back(static_cast<std::int32_t>(i));

    // The sparse path needs the active entries and the inactive ones that still carry
    // gradient: inside the window of a positive threshold (d f / d t, d l0 / d t) or under the
    // pre-activation loss. Counted first; the patterns are built only for the sparse path.
    const auto& t = ws.t;
    const auto& h = ws.pre;
    const EntryRule<S> rule = entryRule<S>(cfg, opts, B);
    const LatentMask* dead = pre_on ? opts.dead_mask : nullptr;
    auto carries = [&](Index b, Index i) {
      const S hv = h(b, i);
      if (hv > t[i]) return false;
      return (theta[i] > S(0) && rule.inWindow(hv, t[i])) || (dead && (*dead)[i] && t[i] > hv);
    };
    auto active = [&](Index b, Index i) { return f(b, i) > S(0); };
    const double cells = double(B) * double(n);
    const Index nnz = countWhere(B, n, active);
    ws.used_sparse = detail::takeSparsePath(ws, nnz, B, n);
    if (ws.used_sparse) {
      const Index nnz_extra = countWhere(B, n, carries);
      ws.used_sparse = detail::takeSparsePath(ws, nnz + nnz_extra, B, n);
      if (ws.used_sparse) {
        reserveEntries(ws, nnz, nnz_extra,
                       Index(std::min(cells, std::ceil(ws.sparse_threshold * cells))));
        ws.pattern.template buildPositive<S>(f);
        ws.extra.buildWhere(B, n, carries);
      }
    }
    detail::decodeDense(p, f, ws.used_sparse, ws.pattern, ws.coef, ws.reconstruction);
    terms.add("mse_loss", S(detail::meanSquaredError<S>(ws.reconstruction, x)));

    // l0_loss: the count of active entries, or the tanh penalty over them (tanh(0) = 0).
    const double c = cfg.l0_coefficient * opts.sparsity_scale;
    double l0 = 0;
    if (cfg.sparsity_loss_mode == SaeConfig::SparsityLossMode::Step) {
      l0 = double(nnz);
    } else {
      const S scale = S(cfg.jumprelu_tanh_scale);
      ws.row_l0.resize(B);
      SAE_PRAGMA_OMP(parallel for schedule(static))
      for (Index b = 0; b < B; ++b) {
        double s = 0;
        const S* fb = f.row(b).data();
        for (Index i = 0; i < n; ++i)
          if (fb[i] > S(0)) s += double(std::tanh(scale * fb[i] * ws.norms[i]));
        ws.row_l0[b] = s;
      }
      l0 = ws.row_l0.sum();
    }
    terms.add("l0_loss", S(c * l0 / double(B)));

    if (pre_on) {
      double pre = 0;
      if (!ws.dead.empty()) {
        ws.row_pre.resize(B);
        SAE_PRAGMA_OMP(parallel for schedule(static))
        for (Index b = 0; b < B; ++b) {
          double s = 0;
          for (const std::int32_t i : ws.dead) {
            const S gap = ws.t[i] - ws.pre(b, i);
            if (gap > S(0)) s += double(gap * ws.norms[i]);
          }
          ws.row_pre[b] = s;
        }
        pre = ws.row_pre.sum();
      }
      terms.add("pre_act_loss", S(cfg.pre_act_loss_coefficient * pre / double(B)));
    }
  }

  template <typename S>
  static void backward(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                       const TrainOptions& opts, Workspace<S>& ws, ParameterSet<S>& g) {
    const Index B = x.rows();
    const Index n = cfg.d_sae;
    const auto W_dec = p.rowMajor("W_dec");
    const auto theta = p.flat("threshold");
    const auto& f = ws.codes.values;
    const EntryRule<S> rule = entryRule<S>(cfg, opts, B);
    const LatentMask* dead = cfg.pre_act_loss_coefficient > 0 ? opts.dead_mask : nullptr;
    detail::squaredErrorGradient(ws.reconstruction, x, ws.grad_y);
    ws.d_t.resize(n);
    ws.d_norms.resize(n);
    ws.grad_h_sum.resize(n);

    auto gW_dec = g.rowMajor("W_dec");
    if (ws.used_sparse) {
      backwardSparse(p, cfg, rule, dead, ws, g);
    } else {
      kernels::gemm(ws.grad_f, ws.grad_y, W_dec.transpose());
      // Blocks of latents in parallel: each latent's sums run over the rows in order, so the
      // result does not depend on the thread count. grad_f becomes d loss / d h.
      constexpr Index kBlock = 64;
      const Index blocks = (n + kBlock - 1) / kBlock;
      SAE_PRAGMA_OMP(parallel for schedule(dynamic, 1))
      for (Index blk = 0; blk < blocks; ++blk) {
        const Index i0 = blk * kBlock;
        const Index m = std::min(kBlock, n - i0);
        S dt[kBlock], dn[kBlock], gs[kBlock];
        std::fill(dt, dt + m, S(0));
        std::fill(dn, dn + m, S(0));
        std::fill(gs, gs + m, S(0));
        bool open[kBlock], pre_act[kBlock];
        for (Index j = 0; j < m; ++j) {
          open[j] = theta[i0 + j] > S(0);
          pre_act[j] = dead && (*dead)[i0 + j];
        }
        for (Index b = 0; b < B; ++b) {
          const S* h = ws.pre.row(b).data() + i0;
          const S* fv = f.row(b).data() + i0;
          S* gr = ws.grad_f.row(b).data() + i0;
          for (Index j = 0; j < m; ++j) {
            const Index i = i0 + j;
            S gh, gt, d;
            entryGradient(rule, h[j], fv[j], ws.t[i], gr[j], ws.norms[i], open[j], pre_act[j], gh,
                          gt, d);
            gr[j] = gh;
            gs[j] += gh;
            dt[j] += gt;
            dn[j] += d;
          }
        }
        for (Index j = 0; j < m; ++j) {
          ws.d_t[i0 + j] = dt[j];
          ws.d_norms[i0 + j] = dn[j];
          ws.grad_h_sum[i0 + j] = gs[j];
        }
      }
      kernels::gemm(gW_dec, f.transpose(), ws.grad_y);
      kernels::gemm(g.colMajor("W_enc"), ws.xc.transpose(), ws.grad_f);
    }
    detail::addDecoderNormGradient<S>(W_dec, ws.norms, ws.d_norms, gW_dec);
    g.flat("b_enc") = ws.grad_h_sum;
    g.flat("threshold") = ws.d_t;
    detail::setDecoderBiasGradient(p, cfg, ws.grad_y.colwise().sum().transpose(), ws.grad_h_sum, g);
  }

  /// Backward over the active entries and the inactive ones that carry gradient only.
  template <typename S>
  static void backwardSparse(const ParameterSet<S>& p, const SaeConfig& cfg,
                             const EntryRule<S>& rule, const LatentMask* dead, Workspace<S>& ws,
                             ParameterSet<S>& g) {
    const auto W_dec = p.rowMajor("W_dec");
    const auto theta = p.flat("threshold");
    const Index n = cfg.d_sae;
    const kernels::CsrPattern& act = ws.pattern;
    const kernels::CsrPattern& ext = ws.extra;
    const Index nnz = act.nnz();
    const Index nnz_ext = ext.nnz();
    ws.act_gh.resize(static_cast<std::size_t>(nnz));
    ws.act_gt.resize(static_cast<std::size_t>(nnz));
    ws.act_dn.resize(static_cast<std::size_t>(nnz));
    ws.ext_gh.resize(static_cast<std::size_t>(nnz_ext));
    ws.ext_gt.resize(static_cast<std::size_t>(nnz_ext));
    ws.ext_dn.resize(static_cast<std::size_t>(nnz_ext));

    // d mse / d f of the active entries, then their contributions.
    kernels::csrDot<S>(ws.grad_y, act, W_dec, ws.act_gh.data());
    SAE_PRAGMA_OMP(parallel for schedule(static))
    for (Index e = 0; e < nnz; ++e) {
      const Index b = act.row[e], i = act.latent[e];
      entryGradient(rule, ws.pre(b, i), ws.coef[e], ws.t[i], ws.act_gh[e], ws.norms[i],
                    theta[i] > S(0), false, ws.act_gh[e], ws.act_gt[e], ws.act_dn[e]);
    }
    // Inactive entries: d mse / d f only where the window needs it (f = 0 there).
    SAE_PRAGMA_OMP(parallel for schedule(static))
    for (Index b = 0; b < ext.rows(); ++b) {
      for (Index e = ext.row_start[b]; e < ext.row_start[b + 1]; ++e) {
        const Index i = ext.latent[e];
        const S h = ws.pre(b, i);
        const bool open = theta[i] > S(0);
        const S gf = open && rule.inWindow(h, ws.t[i]) ? ws.grad_y.row(b).dot(W_dec.row(i)) : S(0);
        entryGradient(rule, h, S(0), ws.t[i], gf, ws.norms[i], open, dead && (*dead)[i],
                      ws.ext_gh[e], ws.ext_gt[e], ws.ext_dn[e]);
      }
    }

    ws.buckets.build(n, act.latent.data(), nnz);
    ws.extra_buckets.build(n, ext.latent.data(), nnz_ext);
    const std::int32_t* ids = ws.buckets.entries().data();
    const std::int32_t* ext_ids = ws.extra_buckets.entries().data();
    SAE_PRAGMA_OMP(parallel for schedule(dynamic, 64))
    for (Index i = 0; i < n; ++i) {
      S dt = 0, dn = 0, gs = 0;
      for (Index q = ws.buckets.begin(i); q < ws.buckets.end(i); ++q) {
        const std::int32_t e = ids[q];
        dt += ws.act_gt[e];
        dn += ws.act_dn[e];
        gs += ws.act_gh[e];
      }
      for (Index q = ws.extra_buckets.begin(i); q < ws.extra_buckets.end(i); ++q) {
        const std::int32_t e = ext_ids[q];
        dt += ws.ext_gt[e];
        dn += ws.ext_dn[e];
        gs += ws.ext_gh[e];
      }
      ws.d_t[i] = dt;
      ws.d_norms[i] = dn;
      ws.grad_h_sum[i] = gs;
    }

    auto gW_dec = g.rowMajor("W_dec");
    kernels::sumByLatent<S>(ws.buckets, act.row.data(), ws.coef.data(), ws.grad_y, gW_dec);
    auto gW_enc_t = detail::encoderGradientRows(g);
    kernels::sumByLatent<S>(ws.buckets, act.row.data(), ws.act_gh.data(), ws.xc, gW_enc_t);
    kernels::accumulateByLatent<S>(ws.extra_buckets, ext.row.data(), ws.ext_gh.data(), ws.xc,
                                   gW_enc_t);
  }
};

/// @brief JumpReLU SAE (SAELens "jumprelu").
template <typename Scalar>
using JumpReLUSAE = SparseAutoencoder<Scalar, JumpReLUArch>;

}  // namespace sae
