/// @file topk.hpp
/// @brief The TopK SAE: keep the k largest pre-activations per token, with the AuxK loss that
/// revives dead latents.
///
/// Gao et al., "Scaling and Evaluating Sparse Autoencoders" (2024), in SAELens's form:
/// ```
/// xc = x - b_dec;  h = xc W_enc + b_enc;  p = h * n^r   (r = rescale_acts_by_decoder_norm)
/// S = the k largest p per row;  f_i = relu(p_i) on S, 0 elsewhere;  y = (f / n^r) W_dec + b_dec
/// mse_loss = mean_b sum_j (y - x)^2
/// auxiliary_reconstruction_loss (AuxK), D = dead latents, half = d_in / 2 (integer):
///   k_aux = min(half, |D|);  s = min(|D| / half, 1);  A = the k_aux largest p among D per row
///   e = sum_{i in A} (p_i / n_i^r) W_dec[i, :]   (no b_dec, no ReLU)
///   aux = aux_loss_coefficient * s * mean_b || e - (x - y) ||^2,  (x - y) held constant
/// ```
/// The training path never builds a dense `[tokens, d_sae]` matrix: pre-activations are made
/// a tile of rows at a time, reduced to k (and k_aux) entries per row, and every later product
/// (decode, gradients of W_dec, W_enc, b_enc) works on the selected entries only.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include <sae/kernels/bf16_matmul.hpp>
#include <sae/kernels/gemm.hpp>
#include <sae/kernels/sparse.hpp>
#include <sae/kernels/topk.hpp>
#include <sae/models/sparse_autoencoder.hpp>

namespace sae {
namespace detail {

/// @brief Scratch shared by the TopK family (TopK, BatchTopK, Matryoshka BatchTopK): the
/// tiled encoder product, the AuxK selection and the sparse gradient scatter.
template <typename S>
struct TopKFamilyScratch : EncoderScratch<S> {
  Index tile_rows = 512;           ///< Rows of pre-activations made at once.
  RowMatrix<S> tile;               // [tile_rows, d_sae] pre-activations of one tile
  std::vector<std::int32_t> dead;  // dead latent ids
  IndexMatrix aux_index;           // [B, k_aux]
  RowMatrix<S> aux_h;              // [B, k_aux] h of the AuxK latents
  RowMatrix<S> aux_p;              // [B, k_aux] selection scores (scratch)
  /// Rows the decoder gradient is gathered from: d loss / d y blocks of B rows on top, the
  /// AuxK residual (forward), then its gradient (backward), in the last B rows.
  RowMatrix<S> stacked;
  RowMatrix<S> grad_h_aux;                     // [B, k_aux]
  kernels::LatentBuckets buckets;              // entries grouped by latent
  std::vector<std::int32_t> dec_row, enc_row;  // per entry: row of `stacked`, row of xc
  std::vector<S> dec_coef, enc_coef;           // per entry: decoder input, d loss / d h
  double aux_scale = 0;                        // s * aux_loss_coefficient of the last forward
};

/// Centres the batch and computes the decoder row norms.
template <typename S>
void prepareTopKFamily(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                       TopKFamilyScratch<S>& ws) {
  centerInput(x, p, cfg, ws.xc);
  ws.norms.resize(cfg.d_sae);
  kernels::rowNorms<S>(p.rowMajor("W_dec"), ws.norms);
}

/// AuxK sizes from the dead mask (DESIGN.md section 4): fills ws.dead and ws.aux_scale, shapes
/// the AuxK matrices for B rows and returns k_aux (0: the term is exactly zero).
template <typename S>
Index planAuxK(const SaeConfig& cfg, const TrainOptions& opts, Index B, TopKFamilyScratch<S>& ws) {
  ws.dead.clear();
  if (opts.dead_mask)
    for (Index i = 0; i < cfg.d_sae; ++i)
      if ((*opts.dead_mask)[i]) ws.dead.push_back(static_cast<std::int32_t>(i));
  const Index n_dead = static_cast<Index>(ws.dead.size());
  const Index half = cfg.d_in / 2;
  Index k_aux = 0;
  ws.aux_scale = 0;
  if (n_dead > 0 && half > 0 && cfg.aux_loss_coefficient > 0) {
    k_aux = std::min(half, n_dead);
    ws.aux_scale = cfg.aux_loss_coefficient * std::min(double(n_dead) / double(half), 1.0);
  }
  ws.aux_index.resize(B, k_aux);
  ws.aux_h.resize(B, k_aux);
  ws.aux_p.resize(B, k_aux);
  return k_aux;
}

/// The encoder product a tile of rows at a time: for each tile [r0, r0 + rows) of the batch,
/// puts xc W_enc (without b_enc) of those rows in the top rows of ws.tile (fp32, or bf16 with
/// the bf16 weights refreshed once) and calls fn(r0, rows).
template <typename S, typename Fn>
void forEachEncoderTile(const ParameterSet<S>& p, Index B, Index d_sae, TopKFamilyScratch<S>& ws,
                        Fn&& fn) {
  const Index T = std::max<Index>(1, std::min(ws.tile_rows, B));
  ws.tile.resize(T, d_sae);
  if (ws.bf16_encoder) ws.bf16.setWeights(p.colMajor("W_enc"));
  for (Index r0 = 0; r0 < B; r0 += T) {
    const Index rows = std::min(T, B - r0);
    if (ws.bf16_encoder)
      ws.bf16.multiply(ws.xc.middleRows(r0, rows), ws.tile.topRows(rows));
    else
      kernels::gemm(ws.tile.topRows(rows), ws.xc.middleRows(r0, rows), p.colMajor("W_enc"));
    fn(r0, rows);
  }
}

/// AuxK selection of batch row b from its pre-activations `pre` (without b_enc): the k_aux
/// largest scores among the dead latents, with their h.
template <typename S>
void selectAuxRow(const S* pre, const S* bias, const S* scale, Index k_aux, Index b,
                  TopKFamilyScratch<S>& ws) {
  if (k_aux == 0) return;
  std::int32_t* aidx = ws.aux_index.row(b).data();
  kernels::selectTopKFusedAmong(pre, bias, scale, ws.dead.data(),
                                static_cast<Index>(ws.dead.size()), k_aux, aidx,
                                ws.aux_p.row(b).data());
  for (Index j = 0; j < k_aux; ++j) ws.aux_h(b, j) = pre[aidx[j]] + bias[aidx[j]];
}

/// The AuxK residual e - (x - y) into the last B rows of ws.stacked (`stacked_rows` rows in
/// all), and the AuxK loss (0 when k_aux is 0).
template <typename S>
double auxResidualLoss(const ParameterSet<S>& p, const ConstBatchRef<S>& x,
                       const RowMatrix<S>& reconstruction, Index k_aux, Index stacked_rows,
                       TopKFamilyScratch<S>& ws) {
  const Index B = x.rows();
  ws.stacked.resize(stacked_rows, x.cols());
  if (k_aux == 0) return 0.0;
  auto resid = ws.stacked.bottomRows(B);
  kernels::gatherDecode<S>(ws.aux_index, ws.aux_h, p.rowMajor("W_dec"), Vector<S>(), resid);
  resid += reconstruction - x;
  double aux = 0;
  for (Index b = 0; b < B; ++b) aux += double(resid.row(b).squaredNorm());
  return aux * ws.aux_scale / double(B);
}

/// AuxK backward: the residual rows become d aux / d e, ws.grad_h_aux gets d aux / d h.
template <typename S>
void auxBackward(const ParameterSet<S>& p, Index B, TopKFamilyScratch<S>& ws) {
  const Index k_aux = ws.aux_index.cols();
  ws.grad_h_aux.resize(B, k_aux);
  if (k_aux == 0) return;
  auto grad_e = ws.stacked.bottomRows(B);
  grad_e *= S(2 * ws.aux_scale / double(B));
  kernels::gatherDot<S>(grad_e, ws.aux_index, p.rowMajor("W_dec"), ws.grad_h_aux);
}

/// Shapes the per-entry arrays for `total` entries.
template <typename S>
void resizeEntries(std::size_t total, TopKFamilyScratch<S>& ws) {
  ws.dec_row.resize(total);
  ws.enc_row.resize(total);
  ws.dec_coef.resize(total);
  ws.enc_coef.resize(total);
}

/// The AuxK entries (row b, j) as entries first + b * k_aux + j: decoder input h from the
/// last B rows of stacked, d aux / d h onto row b of xc.
template <typename S>
void fillAuxEntries(std::size_t first, Index B, TopKFamilyScratch<S>& ws) {
  const Index k_aux = ws.aux_index.cols();
  const auto aux_row0 = static_cast<std::int32_t>(ws.stacked.rows() - B);
  SAE_PRAGMA_OMP(parallel for schedule(static))
  for (Index b = 0; b < B; ++b) {
    for (Index j = 0; j < k_aux; ++j) {
      const std::size_t e = first + static_cast<std::size_t>(b * k_aux + j);
      ws.dec_row[e] = aux_row0 + static_cast<std::int32_t>(b);
      ws.dec_coef[e] = ws.aux_h(b, j);
      ws.enc_row[e] = static_cast<std::int32_t>(b);
      ws.enc_coef[e] = ws.grad_h_aux(b, j);
    }
  }
}

/// Gradients of W_dec, W_enc, b_enc and b_dec from the entries (ws.buckets grouped by latent):
/// W_dec[i] gets dec_coef * stacked[dec_row] and W_enc[:, i], b_enc[i] get enc_coef *
/// xc[enc_row] over latent i's entries; b_dec gets the column sums of the first B rows of
/// stacked (every reconstruction's d loss / d y), minus W_enc d b_enc when b_dec is subtracted
/// from the input.
template <typename S>
void scatterTopKFamilyGradients(const ParameterSet<S>& p, const SaeConfig& cfg, Index B,
                                TopKFamilyScratch<S>& ws, ParameterSet<S>& g) {
  auto gW_dec = g.rowMajor("W_dec");
  kernels::sumByLatent<S>(ws.buckets, ws.dec_row.data(), ws.dec_coef.data(), ws.stacked, gW_dec);
  // The column-major gradient of W_enc [d_in, d_sae] is a row-major [d_sae, d_in] matrix.
  auto gW_enc_t = encoderGradientRows(g);
  auto gb_enc = g.flat("b_enc");
  kernels::sumByLatent<S>(ws.buckets, ws.enc_row.data(), ws.enc_coef.data(), ws.xc, gW_enc_t,
                          gb_enc.data());
  setDecoderBiasGradient(p, cfg, ws.stacked.topRows(B).colwise().sum().transpose(), gb_enc, g);
}

/// Parameters of the TopK family: b_enc, W_dec, b_dec (after W_enc).
template <typename S>
void addTopKFamilyParameters(ParameterSet<S>& p, const SaeConfig& cfg) {
  p.add("b_enc", {cfg.d_sae});
  p.add("W_dec", {cfg.d_sae, cfg.d_in});
  p.add("b_dec", {cfg.d_in});
}

/// k in [1, d_sae].
inline void validateK(const SaeConfig& cfg) {
  require(cfg.k >= 1, "k must be >= 1, found ", cfg.k);
  require(cfg.k <= cfg.d_sae, "k must be <= d_sae = ", cfg.d_sae, ", found ", cfg.k);
}

}  // namespace detail

/// @brief Architecture policy of the TopK SAE; see SparseAutoencoder.
struct TopKArch {
  static constexpr const char* kName = "topk";
  static constexpr bool kUsesK = true;  ///< See ArchitectureTraits (registry.hpp).

  template <typename S>
  using Codes = SparseCodes<S>;

  template <typename S>
  struct Workspace : detail::TopKFamilyScratch<S> {
    Codes<S> codes;               ///< k (latent, f) pairs per token.
    RowMatrix<S> reconstruction;  ///< y, `[B, d_in]`.
    RowMatrix<S> h_sel;           // [B, k] h of the selected latents
    RowMatrix<S> u;               // [B, k] decoder input relu(h)
    RowMatrix<S> grad_h;          // [B, k] d loss / d h of the selected latents
  };

  static void validate(const SaeConfig& cfg) { detail::validateK(cfg); }

  template <typename S>
  static void addParameters(ParameterSet<S>& p, const SaeConfig& cfg) {
    detail::addTopKFamilyParameters(p, cfg);
  }

  template <typename S>
  static void initialize(ParameterSet<S>&, const SaeConfig&, Rng&) {}

  /// Pre-activations a tile at a time, top-k per row. Fills codes (f), and when `train` is
  /// set also h_sel, u and the AuxK selection (k_aux latents among ws.dead).
  template <typename S>
  static void select(const ParameterSet<S>& p, const SaeConfig& cfg, Index k_aux, Workspace<S>& ws,
                     bool train) {
    const Index B = ws.xc.rows();
    const Index n = cfg.d_sae;
    const Index k = cfg.k;
    const S* bias = p.flat("b_enc").data();
    const S* scale = cfg.rescale_acts_by_decoder_norm ? ws.norms.data() : nullptr;
    ws.codes.d_sae = n;
    ws.codes.indices.resize(B, k);
    ws.codes.values.resize(B, k);
    if (train) {
      ws.h_sel.resize(B, k);
      ws.u.resize(B, k);
    }
    detail::forEachEncoderTile(p, B, n, ws, [&](Index r0, Index rows) {
      SAE_PRAGMA_OMP(parallel for schedule(static))
      for (Index t = 0; t < rows; ++t) {
        const Index b = r0 + t;
        const S* pre = ws.tile.row(t).data();  // xc W_enc, without b_enc
        std::int32_t* idx = ws.codes.indices.row(b).data();
        S* val = ws.codes.values.row(b).data();
        kernels::selectTopKFused(pre, bias, scale, n, k, idx, val);
        for (Index j = 0; j < k; ++j) val[j] = std::max(val[j], S(0));
        if (!train) continue;
        for (Index j = 0; j < k; ++j) {
          const S h = pre[idx[j]] + bias[idx[j]];
          ws.h_sel(b, j) = h;
          ws.u(b, j) = std::max(h, S(0));
        }
        detail::selectAuxRow(pre, bias, scale, k_aux, b, ws);
      }
    });
  }

  template <typename S>
  static void encode(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                     Codes<S>& codes, Workspace<S>& ws) {
    detail::centerInput(x, p, cfg, ws.xc);
    ws.norms.resize(cfg.d_sae);
    if (cfg.rescale_acts_by_decoder_norm) kernels::rowNorms<S>(p.rowMajor("W_dec"), ws.norms);
    select(p, cfg, 0, ws, false);
    std::swap(codes, ws.codes);  // both keep their storage for the next call
  }

  template <typename S>
  static void decode(const ParameterSet<S>& p, const SaeConfig& cfg, const Codes<S>& codes,
                     RowMatrix<S>& out) {
    detail::decodeSparse(p, cfg, codes, out);
  }

  template <typename S>
  static void forward(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                      const TrainOptions& opts, Workspace<S>& ws, LossTerms<S>& terms) {
    const Index B = x.rows();
    detail::prepareTopKFamily(p, cfg, x, ws);
    const Index k_aux = detail::planAuxK(cfg, opts, B, ws);
    select(p, cfg, k_aux, ws, true);
    ws.reconstruction.resize(B, cfg.d_in);
    kernels::gatherDecode<S>(ws.codes.indices, ws.u, p.rowMajor("W_dec"), p.flat("b_dec"),
                             ws.reconstruction);
    terms.add("mse_loss", S(detail::meanSquaredError<S>(ws.reconstruction, x)));
    const double aux = detail::auxResidualLoss(p, x, ws.reconstruction, k_aux, 2 * B, ws);
    terms.add("auxiliary_reconstruction_loss", S(aux));
  }

  template <typename S>
  static void backward(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                       const TrainOptions&, Workspace<S>& ws, ParameterSet<S>& g) {
    const Index B = x.rows();
    const Index k = cfg.k;
    const Index k_aux = ws.aux_index.cols();

    auto grad_y = ws.stacked.topRows(B);
    detail::squaredErrorGradient(ws.reconstruction, x, grad_y);
    ws.grad_h.resize(B, k);
    kernels::gatherDot<S>(grad_y, ws.codes.indices, p.rowMajor("W_dec"), ws.grad_h);
    ws.grad_h = (ws.h_sel.array() > S(0)).select(ws.grad_h, S(0));
    detail::auxBackward(p, B, ws);
    if (k_aux > 0) {
      ws.buckets.build(cfg.d_sae, {&ws.codes.indices, &ws.aux_index});
    } else {
      ws.buckets.build(cfg.d_sae, {&ws.codes.indices});
    }

    // Per-entry rows and coefficients: main entries first (b * k + j), then AuxK entries.
    detail::resizeEntries(static_cast<std::size_t>(B * (k + k_aux)), ws);
    SAE_PRAGMA_OMP(parallel for schedule(static))
    for (Index b = 0; b < B; ++b) {
      for (Index j = 0; j < k; ++j) {
        const std::size_t e = static_cast<std::size_t>(b * k + j);
        ws.dec_row[e] = static_cast<std::int32_t>(b);
        ws.dec_coef[e] = ws.u(b, j);
        ws.enc_row[e] = static_cast<std::int32_t>(b);
        ws.enc_coef[e] = ws.grad_h(b, j);
      }
    }
    detail::fillAuxEntries(static_cast<std::size_t>(B * k), B, ws);
    detail::scatterTopKFamilyGradients(p, cfg, B, ws, g);
  }
};

/// @brief TopK SAE (SAELens "topk").
template <typename Scalar>
using TopKSAE = SparseAutoencoder<Scalar, TopKArch>;

}  // namespace sae
