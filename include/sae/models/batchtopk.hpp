/// @file batchtopk.hpp
/// @brief The BatchTopK SAE: keep the k·B largest activations of a whole batch of B tokens
/// (k per token on average), with AuxK; after training, a JumpReLU SAE whose threshold is an
/// exponential moving average learned during training.
///
/// Bussmann, Leask and Nanda, "BatchTopK Sparse Autoencoders" (2024), in SAELens's form
/// (`BatchTopKTrainingSAE`, sae_lens/saes/batchtopk_sae.py):
/// ```
/// xc = x - b_dec;  h = xc W_enc + b_enc;  p = h * n^r   (r = rescale_acts_by_decoder_norm)
/// S = the k*B largest relu(p) over the whole batch (all B * d_sae entries at once)
/// f = relu(p) on S, 0 elsewhere;  y = (f / n^r) W_dec + b_dec
/// mse_loss = mean_b sum_j (y - x)^2
/// auxiliary_reconstruction_loss = AuxK exactly as TopK's (per row, among the dead latents)
/// topk_threshold <- (1 - topk_threshold_lr) * topk_threshold + topk_threshold_lr * min_S f
///     after every training forward pass that selects a positive f (0 at the start, double)
/// ```
/// Choices where SAELens leaves room:
/// - Only positive activations are selected: when fewer than k*B entries of relu(p) are
///   positive, SAELens's torch.topk also picks zeros, which carry neither value nor gradient.
///   Equal values are taken by lower position b * d_sae + i (torch leaves ties unspecified),
///   so the selection is deterministic for every thread count.
/// - `k` is an integer here (SAELens allows a float k, taking int(k * B) entries).
/// - encode() is the inference function, one token at a time: f = p * 1[p > relu(topk_threshold)]
///   with f in the units of p, decoded as f / n^r. This is exactly what the JumpReLU SAE that
///   SAELens saves computes (toJumpReLU() makes it); SAELens's training class would instead
///   batch-top-k whatever batch it is given. The training selection of a batch is in the
///   workspace after loss() / backward(): `ws.codes`.
/// - For inference and saving, toJumpReLU() converts the model as SAELens's
///   `save_inference_model` does.
///
/// The threshold is not a parameter but a buffer (SparseAutoencoder::buffers(),
/// `topk_threshold`, shape [1], double): no gradient, clipping or optimizer touches it; it
/// advances in updateBuffers() (the Trainer calls it once per step) and is checkpointed.
///
/// The training path never holds the `[B, d_sae]` activations: pre-activations are made a tile
/// of rows at a time and streamed into kernels::BatchTopKSelector, which keeps only candidates
/// for the batch's top k*B; decode and gradients touch the selected entries only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include <sae/core/config.hpp>
#include <sae/kernels/sparse.hpp>
#include <sae/kernels/topk.hpp>
#include <sae/models/jumprelu.hpp>
#include <sae/models/sparse_autoencoder.hpp>
#include <sae/models/topk.hpp>

namespace sae {
namespace detail {

/// Nested prefix widths of the decoder: each level reconstructs from latents [0, widths[l]).
/// BatchTopK has one level (d_sae); Matryoshka has matryoshka_widths.
struct BatchTopKLevels {
  const Index* widths;  ///< Increasing, the last equal to d_sae.
  Index count;          ///< Number of levels, >= 1.
};

/// @brief What BatchTopK and Matryoshka BatchTopK share: everything but the name, validation
/// and the levels of the loss (see BatchTopKArch and MatryoshkaBatchTopKArch).
struct BatchTopKFamily {
  static constexpr bool kUsesK = true;  ///< See ArchitectureTraits (registry.hpp).
  /// Saved for inference as a JumpReLU SAE (the EMA threshold as every latent's threshold).
  static constexpr const char* kSavedAs = "jumprelu";
  /// Name of the buffer holding the EMA threshold (SAELens's `topk_threshold`).
  static constexpr const char* kThresholdName = "topk_threshold";

  template <typename S>
  using Codes = CsrCodes<S>;

  template <typename S>
  struct Workspace : TopKFamilyScratch<S> {
    Codes<S> codes;               ///< The batch's selection (b, i, f), by row then latent.
    RowMatrix<S> reconstruction;  ///< y, `[B, d_in]`.
    double min_activation = 0;    ///< Smallest selected f of the last forward (EMA input).
    Index selected = 0;           ///< Number of entries selected by the last forward.

    kernels::BatchTopKSelector<S> selector;
    std::vector<S> u;                       // per entry: decoder input h = f / n^r
    std::vector<std::int32_t> all_latents;  // per entry, then per AuxK entry: latent
    std::vector<Index> named_widths;        // widths inner_names were made for
    std::vector<const char*> inner_names;   // inner_mse_loss_<width>
  };

  template <typename S>
  static void addParameters(ParameterSet<S>& p, const SaeConfig& cfg) {
    addTopKFamilyParameters(p, cfg);
  }

  template <typename S>
  static void initialize(ParameterSet<S>&, const SaeConfig&, Rng&) {}

  static void addBuffers(ParameterSet<double>& buffers, const SaeConfig&) {
    buffers.add(kThresholdName, {1});
  }

  /// @brief The EMA threshold of a model's buffers.
  static double threshold(const ParameterSet<double>& buffers) {
    return buffers.flat(kThresholdName)[0];
  }

  /// One EMA step from the last forward (no change when it selected nothing).
  template <typename S>
  static void updateBuffers(ParameterSet<double>& buffers, const SaeConfig& cfg,
                            const Workspace<S>& ws) {
    if (ws.selected == 0) return;
    auto t = buffers.flat(kThresholdName);
    const double lr = cfg.topk_threshold_lr;
    t[0] = (1 - lr) * t[0] + lr * ws.min_activation;
  }

  /// Inference: f = p * 1[p > relu(topk_threshold)] per token, in row-compressed form.
  template <typename S>
  static void encode(const ParameterSet<S>& p, const ParameterSet<double>& buffers,
                     const SaeConfig& cfg, const ConstBatchRef<S>& x, Codes<S>& codes,
                     Workspace<S>& ws) {
    const Index B = x.rows();
    const Index n = cfg.d_sae;
    centerInput(x, p, cfg, ws.xc);
    ws.norms.resize(n);
    if (cfg.rescale_acts_by_decoder_norm) kernels::rowNorms<S>(p.rowMajor("W_dec"), ws.norms);
    const S* bias = p.flat("b_enc").data();
    const S* scale = cfg.rescale_acts_by_decoder_norm ? ws.norms.data() : nullptr;
    const S t = S(std::max(threshold(buffers), 0.0));
    auto score = [&](const S* pre, Index i) {
      return scale ? (pre[i] + bias[i]) * scale[i] : pre[i] + bias[i];
    };
    kernels::CsrPattern& pat = codes.pattern;
    codes.d_sae = n;
    pat.row_start.assign(static_cast<std::size_t>(B) + 1, 0);
    pat.latent.clear();
    pat.row.clear();
    codes.values.clear();
    forEachEncoderTile(p, B, n, ws, [&](Index r0, Index rows) {
      SAE_PRAGMA_OMP(parallel for schedule(static))
      for (Index r = 0; r < rows; ++r) {
        const S* pre = ws.tile.row(r).data();
        Index count = 0;
        for (Index i = 0; i < n; ++i) count += score(pre, i) > t;
        pat.row_start[static_cast<std::size_t>(r0 + r) + 1] = count;
      }
      for (Index b = r0; b < r0 + rows; ++b) pat.row_start[b + 1] += pat.row_start[b];
      const std::size_t total = static_cast<std::size_t>(pat.row_start[r0 + rows]);
      pat.latent.resize(total);
      pat.row.resize(total);
      codes.values.resize(total);
      SAE_PRAGMA_OMP(parallel for schedule(static))
      for (Index r = 0; r < rows; ++r) {
        const S* pre = ws.tile.row(r).data();
        Index e = pat.row_start[r0 + r];
        for (Index i = 0; i < n; ++i) {
          const S v = score(pre, i);
          if (!(v > t)) continue;
          pat.latent[e] = static_cast<std::int32_t>(i);
          pat.row[e] = static_cast<std::int32_t>(r0 + r);
          codes.values[e] = v;
          ++e;
        }
      }
    });
  }

  template <typename S>
  static void decode(const ParameterSet<S>& p, const SaeConfig& cfg, const Codes<S>& codes,
                     RowMatrix<S>& out) {
    decodeSparse(p, cfg, codes, out);
  }

  /// The batch's top k*B (into ws.codes and ws.u) and the AuxK selection, a tile at a time.
  template <typename S>
  static void select(const ParameterSet<S>& p, const SaeConfig& cfg, Index k_aux,
                     Workspace<S>& ws) {
    const Index B = ws.xc.rows();
    const Index n = cfg.d_sae;
    const S* bias = p.flat("b_enc").data();
    const S* scale = cfg.rescale_acts_by_decoder_norm ? ws.norms.data() : nullptr;
    ws.selector.start(cfg.k * B, maxThreads());
    forEachEncoderTile(p, B, n, ws, [&](Index r0, Index rows) {
      SAE_PRAGMA_OMP(parallel for schedule(static))
      for (Index r = 0; r < rows; ++r) {
        const Index b = r0 + r;
        const S* pre = ws.tile.row(r).data();  // xc W_enc, without b_enc
        ws.selector.offerRow(threadIndex(), pre, bias, scale, n, std::int64_t(b) * n);
        selectAuxRow(pre, bias, scale, k_aux, b, ws);
      }
    });
    ws.codes.d_sae = n;
    ws.selector.finish(B, n, ws.codes.pattern, ws.codes.values, ws.u);
    ws.selected = ws.selector.selected();
    ws.min_activation = double(ws.selector.minScore());
  }

  /// Training forward pass: mse_loss, auxiliary_reconstruction_loss, then one
  /// inner_mse_loss_<width> per level but the last (SAELens's order). The inner
  /// reconstructions stay in the top (levels - 1) * B rows of ws.stacked.
  template <typename S>
  static void forwardLevels(const ParameterSet<S>& p, const SaeConfig& cfg,
                            const ConstBatchRef<S>& x, const TrainOptions& opts, Workspace<S>& ws,
                            LossTerms<S>& terms, BatchTopKLevels lv) {
    const Index B = x.rows();
    const Index L = lv.count;
    prepareTopKFamily(p, cfg, x, ws);
    const Index k_aux = planAuxK(cfg, opts, B, ws);
    select(p, cfg, k_aux, ws);
    ws.stacked.resize((L + 1) * B, cfg.d_in);
    ws.reconstruction.resize(B, cfg.d_in);
    decodeLevels(p, lv, ws);
    terms.add("mse_loss", S(meanSquaredError<S>(ws.reconstruction, x)));
    const double aux = auxResidualLoss(p, x, ws.reconstruction, k_aux, (L + 1) * B, ws);
    terms.add("auxiliary_reconstruction_loss", S(aux));
    nameInnerLosses(lv, ws);
    for (Index l = 0; l + 1 < L; ++l)
      terms.add(ws.inner_names[l], S(meanSquaredError<S>(ws.stacked.middleRows(l * B, B), x)));
  }

  /// Gradients of the total of forwardLevels()'s terms.
  template <typename S>
  static void backwardLevels(const ParameterSet<S>& p, const SaeConfig& cfg,
                             const ConstBatchRef<S>& x, Workspace<S>& ws, ParameterSet<S>& g,
                             BatchTopKLevels lv) {
    const Index B = x.rows();
    const Index L = lv.count;
    const S two_over_b = S(2) / S(B);
    // Block l of stacked becomes G_l = sum over levels m >= l of d loss / d y_m: the gradient
    // reaching a latent of level l (it is decoded into every reconstruction from l on).
    squaredErrorGradient(ws.reconstruction, x, ws.stacked.middleRows((L - 1) * B, B));
    for (Index l = L - 2; l >= 0; --l) {
      auto block = ws.stacked.middleRows(l * B, B);
      block = two_over_b * (block - x) + ws.stacked.middleRows((l + 1) * B, B);
    }
    auxBackward(p, B, ws);

    const kernels::CsrPattern& pat = ws.codes.pattern;
    const Index nnz = pat.nnz();
    const Index k_aux = ws.aux_index.cols();
    const std::size_t total = static_cast<std::size_t>(nnz + B * k_aux);
    resizeEntries(total, ws);
    ws.all_latents.resize(total);
    const auto W_dec = p.rowMajor("W_dec");
    SAE_PRAGMA_OMP(parallel for schedule(static))
    for (Index b = 0; b < B; ++b) {
      Index l = 0;
      for (Index e = pat.row_start[b]; e < pat.row_start[b + 1]; ++e) {
        const Index i = pat.latent[e];
        while (i >= lv.widths[l]) ++l;
        const Index src = l * B + b;
        ws.dec_row[e] = static_cast<std::int32_t>(src);
        ws.dec_coef[e] = ws.u[e];
        ws.enc_row[e] = static_cast<std::int32_t>(b);
        // Selected entries have p > 0, so h > 0 and relu passes the gradient.
        ws.enc_coef[e] = ws.stacked.row(src).dot(W_dec.row(i));
        ws.all_latents[e] = pat.latent[e];
      }
    }
    std::copy(ws.aux_index.data(), ws.aux_index.data() + B * k_aux, ws.all_latents.begin() + nnz);
    ws.buckets.build(cfg.d_sae, ws.all_latents.data(), static_cast<Index>(total));
    fillAuxEntries(static_cast<std::size_t>(nnz), B, ws);
    scatterTopKFamilyGradients(p, cfg, B, ws, g);
  }

 private:
  /// y of every level from the selection, one row at a time: the running sum over latents in
  /// increasing order is copied out at each level's width. Inner levels go to the top blocks
  /// of ws.stacked, the last one to ws.reconstruction.
  template <typename S>
  static void decodeLevels(const ParameterSet<S>& p, BatchTopKLevels lv, Workspace<S>& ws) {
    const Index B = ws.reconstruction.rows();
    const Index L = lv.count;
    const auto W_dec = p.rowMajor("W_dec");
    const auto b_dec = p.flat("b_dec");
    const kernels::CsrPattern& pat = ws.codes.pattern;
    SAE_PRAGMA_OMP(parallel for schedule(static))
    for (Index b = 0; b < B; ++b) {
      auto level = [&](Index l) {
        return l + 1 < L ? ws.stacked.row(l * B + b) : ws.reconstruction.row(b);
      };
      Index l = 0;
      level(0) = b_dec.transpose();
      for (Index e = pat.row_start[b]; e < pat.row_start[b + 1]; ++e) {
        const Index i = pat.latent[e];
        for (; i >= lv.widths[l]; ++l) level(l + 1) = level(l);
        level(l).noalias() += ws.u[e] * W_dec.row(i);
      }
      for (; l + 1 < L; ++l) level(l + 1) = level(l);
    }
  }

  /// SAELens's names of the inner losses, made once per set of widths.
  template <typename S>
  static void nameInnerLosses(BatchTopKLevels lv, Workspace<S>& ws) {
    const Index inner = lv.count - 1;
    if (static_cast<Index>(ws.named_widths.size()) == inner &&
        std::equal(ws.named_widths.begin(), ws.named_widths.end(), lv.widths))
      return;
    ws.named_widths.assign(lv.widths, lv.widths + inner);
    ws.inner_names.clear();
    for (Index l = 0; l < inner; ++l)
      ws.inner_names.push_back(internLossName("inner_mse_loss_" + std::to_string(lv.widths[l])));
  }
};

}  // namespace detail

/// @brief Architecture policy of the BatchTopK SAE (SAELens "batchtopk"); see
/// SparseAutoencoder and the file comment.
struct BatchTopKArch : detail::BatchTopKFamily {
  static constexpr const char* kName = "batchtopk";

  static void validate(const SaeConfig& cfg) { detail::validateK(cfg); }

  template <typename S>
  static void forward(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                      const TrainOptions& opts, Workspace<S>& ws, LossTerms<S>& terms) {
    forwardLevels(p, cfg, x, opts, ws, terms, detail::BatchTopKLevels{&cfg.d_sae, 1});
  }

  template <typename S>
  static void backward(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                       const TrainOptions&, Workspace<S>& ws, ParameterSet<S>& g) {
    backwardLevels(p, cfg, x, ws, g, detail::BatchTopKLevels{&cfg.d_sae, 1});
  }
};

/// @brief BatchTopK SAE (SAELens "batchtopk").
template <typename Scalar>
using BatchTopKSAE = SparseAutoencoder<Scalar, BatchTopKArch>;

/// @brief The JumpReLU SAE a BatchTopK-family model is saved as (SAELens's
/// `process_state_dict_for_saving_inference` of BatchTopK, Matryoshka BatchTopK).
///
/// - `threshold` = the model's `topk_threshold` for every latent;
/// - with rescale_acts_by_decoder_norm, the decoder norms folded in as for TopK:
///   `W_enc[:, i] * n_i`, `b_enc[i] * n_i`, `W_dec[i, :] / n_i` with n_i clamped below at 1e-8
///   (SAELens's `_fold_norm_topk`), so that h' = h n = p and f' W_dec' = (f / n) W_dec;
/// - `b_dec` unchanged; the configuration keeps d_in, d_sae, apply_b_dec_to_input and
///   decoder_init_norm (k, the rescale flag and the Matryoshka widths no longer apply).
///
/// The result's encode() and decode() equal the model's (up to the rounding of the fold).
/// @tparam Arch BatchTopKArch or MatryoshkaBatchTopKArch.
template <typename Scalar, typename Arch>
JumpReLUSAE<Scalar> toJumpReLU(const SparseAutoencoder<Scalar, Arch>& model) {
  static_assert(std::is_base_of<detail::BatchTopKFamily, Arch>::value,
                "toJumpReLU: only BatchTopK-family models are saved as JumpReLU");
  SaeConfig cfg = model.config();
  cfg.k = 0;
  cfg.rescale_acts_by_decoder_norm = false;
  cfg.matryoshka_widths.clear();
  JumpReLUSAE<Scalar> out(cfg);
  const ParameterSet<Scalar>& p = model.parameters();
  ParameterSet<Scalar>& q = out.parameters();
  Eigen::MatrixXd W_enc = p.colMajor("W_enc").template cast<double>();
  Eigen::VectorXd b_enc = p.flat("b_enc").template cast<double>();
  Eigen::MatrixXd W_dec = p.rowMajor("W_dec").template cast<double>();
  if (model.config().rescale_acts_by_decoder_norm) {
    for (Index i = 0; i < cfg.d_sae; ++i) {
      const double n = std::max(W_dec.row(i).norm(), 1e-8);
      W_enc.col(i) *= n;
      b_enc[i] *= n;
      W_dec.row(i) /= n;
    }
  }
  q.colMajor("W_enc") = W_enc.cast<Scalar>();
  q.flat("b_enc") = b_enc.cast<Scalar>();
  q.rowMajor("W_dec") = W_dec.cast<Scalar>();
  q.flat("b_dec") = p.flat("b_dec");
  q.flat("threshold").setConstant(Scalar(detail::BatchTopKFamily::threshold(model.buffers())));
  return out;
}

}  // namespace sae
