/// @file sparse_autoencoder.hpp
/// @brief SparseAutoencoder: one model template for every architecture, parameterised by an
/// architecture policy (see StandardArch, GatedArch, TopKArch), and what the policies share.
///
/// ## Writing a new architecture
///
/// Most architectures are an activation of the pre-activations plus penalty terms:
/// `f = act(xc W_enc + b_enc)`, `y = f W_dec + b_dec`, loss = mse_loss + penalties. For those,
/// write an activation policy and use `SparseAutoencoder<S, ActivationArch<MyActivation>>`:
/// ```
/// struct MyActivation {
///   static constexpr const char* kName = "my_arch";
///   template <typename S> struct Scratch {};            // kept from forward to backward
///   static void validate(const SaeConfig&);             // its options
///   template <typename S> static void addParameters(ParameterSet<S>&, const SaeConfig&);
///   template <typename S> static void initialize(ParameterSet<S>&, const SaeConfig&, Rng&);
///   template <typename S> static void activate(p, cfg, RowMatrix<S>& pre, RowMatrix<S>& f);
///   template <typename S> static void addPenalties(p, cfg, opts, ws, scratch, terms);
///   template <typename S> static Rule gradientRule(p, cfg, opts, ws, scratch);
///   template <typename S> static void penaltyGradient(p, cfg, opts, ws, scratch, d_norms, g);
/// };
/// ```
/// ActivationArch documents each member and checks it with a static_assert; it supplies the
/// parameters W_enc, b_enc, W_dec, b_dec, the centring (apply_b_dec_to_input), the encoder
/// product in fp32 or bf16, the choice of sparse or dense kernels, decode, mse_loss, and the
/// gradients of W_enc, W_dec, b_enc and b_dec from the policy's d loss / d h. StandardActivation
/// (standard.hpp) is the library's own example; tests/test_policies.cpp defines a squared-ReLU
/// SAE in the test file. An architecture with another shape (several decodes as gated, codes
/// kept sparse as TopK) implements the full interface of SparseAutoencoder's `Arch_` itself,
/// using the shared pieces here (DenseWorkspace, centerAndEncode, decodeDense, decodeSparse,
/// setDecoderBiasGradient, ...).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include <sae/core/config.hpp>
#include <sae/core/error.hpp>
#include <sae/core/parameters.hpp>
#include <sae/core/rng.hpp>
#include <sae/core/types.hpp>
#include <sae/kernels/bf16_matmul.hpp>
#include <sae/kernels/gemm.hpp>
#include <sae/kernels/sparse.hpp>
#include <sae/models/sae_config.hpp>

namespace sae {
namespace detail {

/// Throws ConfigError / NumericError unless `x` is a finite `[tokens, d_in]` batch.
template <typename Scalar>
void checkBatch(const ConstBatchRef<Scalar>& x, Index d_in) {
  require(x.rows() > 0, "input batch has no rows");
  require(x.cols() == d_in, "input batch has ", x.cols(), " columns, expected d_in = ", d_in);
  // x - x is 0 for finite x and NaN otherwise: a sum that vectorises, parallel over rows.
  bool finite = true;
  SAE_PRAGMA_OMP(parallel for schedule(static) reduction(&& : finite))
  for (Index r = 0; r < x.rows(); ++r) {
    Scalar acc = 0;
    for (Index c = 0; c < x.cols(); ++c) acc += x(r, c) - x(r, c);
    finite = finite && acc == Scalar(0);
  }
  if (!finite) {
    for (Index r = 0; r < x.rows(); ++r)
      for (Index c = 0; c < x.cols(); ++c)
        if (!std::isfinite(x(r, c)))
          throw NumericError(concat("input batch has a non-finite value (", x(r, c), ") at row ", r,
                                    ", column ", c));
  }
}

/// xc = x - b_dec when apply_b_dec_to_input, else a copy of x.
template <typename Scalar>
void centerInput(const ConstBatchRef<Scalar>& x, const ParameterSet<Scalar>& params,
                 const SaeConfig& cfg, RowMatrix<Scalar>& xc) {
  if (cfg.apply_b_dec_to_input) {
    const auto b_dec = params.flat("b_dec");
    xc.noalias() = x.rowwise() - b_dec.transpose();
  } else {
    xc = x;
  }
}

/// SAELens initialisation of the weights every architecture shares: W_dec drawn
/// kaiming-uniform (torch's default gain sqrt(2), fan_in = d_in), each row then scaled to
/// norm decoder_init_norm, W_enc = W_dec^T; biases stay zero.
template <typename Scalar>
void initializeTiedWeights(ParameterSet<Scalar>& params, const SaeConfig& cfg, Rng& rng) {
  auto W_dec = params.rowMajor("W_dec");
  const double bound = std::sqrt(2.0) * std::sqrt(3.0 / double(cfg.d_in));
  for (Index i = 0; i < W_dec.rows(); ++i) {
    for (Index j = 0; j < W_dec.cols(); ++j) W_dec(i, j) = Scalar(rng.uniform(-bound, bound));
    const Scalar norm = W_dec.row(i).norm();
    // A zero row has probability 0 but would make the scaling NaN: redraw the first entry.
    if (norm == Scalar(0)) W_dec(i, 0) = Scalar(bound);
    W_dec.row(i) *= Scalar(cfg.decoder_init_norm) / W_dec.row(i).norm();
  }
  params.colMajor("W_enc") = W_dec.transpose();
}

/// Adds the decoder-norm term of a penalty: dW_dec[i, :] += dn[i] * W_dec[i, :] / n_i.
template <typename Scalar>
void addDecoderNormGradient(const Eigen::Ref<const RowMatrix<Scalar>>& W_dec,
                            const Vector<Scalar>& norms, const Vector<Scalar>& d_norms,
                            Eigen::Ref<RowMatrix<Scalar>> gW_dec) {
  const Index n = W_dec.rows();
  SAE_PRAGMA_OMP(parallel for schedule(static))
  for (Index i = 0; i < n; ++i) {
    if (norms[i] > Scalar(0)) gW_dec.row(i) += (d_norms[i] / norms[i]) * W_dec.row(i);
  }
}

/// Below this fraction of entries carrying a value or a gradient, the architectures with dense
/// codes (standard, gated, JumpReLU) decode and take gradients with the sparse kernels (the
/// encoder product stays dense); see benchmarks/.
constexpr double kSparseThreshold = 0.05;

/// @brief What every architecture's workspace holds for the input side: the centred batch, the
/// decoder norms and the bf16 encoder product.
template <typename S>
struct EncoderScratch {
  RowMatrix<S> xc;  ///< centred input.
  Vector<S> norms;  ///< decoder row norms n.
  /// Encoder product in bf16 with fp32 accumulation, on AMX where the CPU has it (float
  /// only; ConfigError without oneDNN). The bf16 copy of W_enc is refreshed on every call.
  bool bf16_encoder = false;
  kernels::Bf16MatmulFor<S> bf16;  // bf16 copy of W_enc and the oneDNN GEMM
};

/// @brief The workspace of an architecture with dense codes `[B, d_sae]` (standard, gated,
/// JumpReLU); each adds its own scratch.
template <typename S>
struct DenseWorkspace : EncoderScratch<S> {
  DenseCodes<S> codes;          ///< f, `[B, d_sae]`.
  RowMatrix<S> reconstruction;  ///< y, `[B, d_in]`.
  RowMatrix<S> pre;             ///< pre-activations (what the architecture keeps of them).
  RowMatrix<S> grad_y;          ///< d loss / d y.
  /// Below this fraction of active entries, decode and gradients use sparse kernels (the
  /// encoder product stays dense); 0 forces dense, 1 forces sparse.
  double sparse_threshold = kSparseThreshold;
  bool used_sparse = false;        ///< Whether the last forward took the sparse path.
  kernels::CsrPattern pattern;     // active (b, i)
  kernels::LatentBuckets buckets;  // pattern's entries grouped by latent
};

/// The encoder product pre = xc W_enc of the dense architectures: in bf16 (fp32 accumulation)
/// when `bf16` is set, refreshing the bf16 copy of W_enc first; otherwise kernels::gemm().
template <typename Scalar, typename Bf16>
void encoderProduct(const ParameterSet<Scalar>& params, const RowMatrix<Scalar>& xc,
                    RowMatrix<Scalar>& pre, bool bf16, Bf16& bf16_matmul) {
  if (bf16) {
    pre.resize(xc.rows(), params.colMajor("W_enc").cols());
    bf16_matmul.setWeights(params.colMajor("W_enc"));
    bf16_matmul.multiply(xc, pre);
  } else {
    kernels::gemm(pre, xc, params.colMajor("W_enc"));
  }
}

/// ws.xc = the centred batch and ws.pre = ws.xc W_enc (fp32 or bf16, see encoderProduct()).
template <typename S>
void centerAndEncode(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                     DenseWorkspace<S>& ws) {
  centerInput(x, p, cfg, ws.xc);
  encoderProduct(p, ws.xc, ws.pre, ws.bf16_encoder, ws.bf16);
}

/// Whether `active` of the B * d_sae entries are few enough for the sparse path.
template <typename S>
bool takeSparsePath(const DenseWorkspace<S>& ws, Index active, Index B, Index d_sae) {
  return double(active) / (double(B) * double(d_sae)) < ws.sparse_threshold;
}

/// Dense decode: out = f W_dec + b_dec (standard and gated codes).
template <typename Scalar>
void denseDecode(const ParameterSet<Scalar>& params, const RowMatrix<Scalar>& f,
                 RowMatrix<Scalar>& out) {
  kernels::gemm(out, f, params.rowMajor("W_dec"));
  out.rowwise() += params.flat("b_dec").transpose();
}

/// @brief The codes type and decode() (y = f W_dec + b_dec) of the architectures with dense
/// codes, a base of their policies.
struct DenseCodesArch {
  template <typename S>
  using Codes = DenseCodes<S>;

  template <typename S>
  static void decode(const ParameterSet<S>& p, const SaeConfig&, const DenseCodes<S>& codes,
                     RowMatrix<S>& out) {
    denseDecode(p, codes.values, out);
  }
};

/// out = f W_dec + b_dec: over the entries of `pattern` when `sparse` (their values of f
/// gathered into `coef`, in the pattern's order), else as a dense product.
template <typename S>
void decodeDense(const ParameterSet<S>& p, const RowMatrix<S>& f, bool sparse,
                 const kernels::CsrPattern& pattern, std::vector<S>& coef, RowMatrix<S>& out) {
  if (!sparse) {
    denseDecode(p, f, out);
    return;
  }
  const Index nnz = pattern.nnz();
  coef.resize(static_cast<std::size_t>(nnz));
  for (Index e = 0; e < nnz; ++e) coef[e] = f(pattern.row[e], pattern.latent[e]);
  const auto W_dec = p.rowMajor("W_dec");
  out.resize(f.rows(), W_dec.cols());
  kernels::csrDecode<S>(pattern, coef.data(), W_dec, p.flat("b_dec"), out);
}

/// The gradient of W_enc `[d_in, d_sae]` (column-major) seen as the row-major `[d_sae, d_in]`
/// matrix the per-latent kernels write.
template <typename S>
Eigen::Map<RowMatrix<S>> encoderGradientRows(ParameterSet<S>& g) {
  auto W_enc = g.colMajor("W_enc");
  return Eigen::Map<RowMatrix<S>>(W_enc.data(), W_enc.cols(), W_enc.rows());
}

/// d loss / d b_dec: `dy_sum` (the column sums of d loss / d y over every reconstruction
/// b_dec is added to), minus W_enc `dh_sum` when apply_b_dec_to_input (b_dec is then
/// subtracted from the input; `dh_sum` = the column sums of d loss / d (xc W_enc)).
template <typename S, typename DySum, typename DhSum>
void setDecoderBiasGradient(const ParameterSet<S>& p, const SaeConfig& cfg, const DySum& dy_sum,
                            const DhSum& dh_sum, ParameterSet<S>& g) {
  auto gb_dec = g.flat("b_dec");
  gb_dec = dy_sum;
  if (cfg.apply_b_dec_to_input) gb_dec.noalias() -= p.colMajor("W_enc") * dh_sum;
}

/// d mse_loss / d y = (2 / B) (y - x) into `out` (B = the batch's rows).
template <typename S, typename Out>
void squaredErrorGradient(const RowMatrix<S>& y, const ConstBatchRef<S>& x, Out&& out) {
  out.noalias() = (S(2) / S(x.rows())) * (y - x);
}

/// Scratch of the rescaled decode (decoder norms and the decoder inputs f / n), one per
/// thread: decode(codes, out) takes no workspace, and after its first call at a batch shape
/// it allocates nothing. The norms are recomputed on every call, so changed weights are seen.
template <typename S>
struct RescaledDecodeScratch {
  Vector<S> norms;       // n, [d_sae]
  RowMatrix<S> u;        // SparseCodes: [B, k] decoder inputs
  std::vector<S> u_csr;  // CsrCodes: one decoder input per entry
};

/// This thread's scratch, with the decoder norms of `W_dec` computed into it.
template <typename S>
RescaledDecodeScratch<S>& rescaledDecodeScratch(const Eigen::Ref<const RowMatrix<S>>& W_dec) {
  thread_local RescaledDecodeScratch<S> scratch;
  scratch.norms.resize(W_dec.rows());
  kernels::rowNorms<S>(W_dec, scratch.norms);
  return scratch;
}

/// The decode of codes kept sparse (TopK's SparseCodes, BatchTopK's CsrCodes):
/// out = sum over the entries of (f / n^r) W_dec[i, :] + b_dec, r = rescale_acts_by_decoder_norm.
template <typename S>
void decodeSparse(const ParameterSet<S>& p, const SaeConfig& cfg, const SparseCodes<S>& codes,
                  RowMatrix<S>& out) {
  const auto W_dec = p.rowMajor("W_dec");
  out.resize(codes.rows(), cfg.d_in);
  if (!cfg.rescale_acts_by_decoder_norm) {
    kernels::gatherDecode<S>(codes.indices, codes.values, W_dec, p.flat("b_dec"), out);
    return;
  }
  RescaledDecodeScratch<S>& s = rescaledDecodeScratch<S>(W_dec);
  s.u.resize(codes.values.rows(), codes.values.cols());
  for (Index b = 0; b < s.u.rows(); ++b)
    for (Index j = 0; j < s.u.cols(); ++j)
      s.u(b, j) = codes.values(b, j) / s.norms[codes.indices(b, j)];
  kernels::gatherDecode<S>(codes.indices, s.u, W_dec, p.flat("b_dec"), out);
}
template <typename S>
void decodeSparse(const ParameterSet<S>& p, const SaeConfig& cfg, const CsrCodes<S>& codes,
                  RowMatrix<S>& out) {
  const auto W_dec = p.rowMajor("W_dec");
  out.resize(codes.rows(), cfg.d_in);
  if (!cfg.rescale_acts_by_decoder_norm) {
    kernels::csrDecode<S>(codes.pattern, codes.values.data(), W_dec, p.flat("b_dec"), out);
    return;
  }
  RescaledDecodeScratch<S>& s = rescaledDecodeScratch<S>(W_dec);
  s.u_csr.resize(codes.values.size());
  for (Index e = 0; e < codes.nnz(); ++e)
    s.u_csr[e] = codes.values[e] / s.norms[codes.pattern.latent[e]];
  kernels::csrDecode<S>(codes.pattern, s.u_csr.data(), W_dec, p.flat("b_dec"), out);
}

/// True when the architecture policy declares non-trainable buffers (`addBuffers`).
template <typename Arch, typename = void>
struct HasBuffers : std::false_type {};
template <typename Arch>
struct HasBuffers<Arch, std::void_t<decltype(Arch::addBuffers(std::declval<ParameterSet<double>&>(),
                                                              std::declval<const SaeConfig&>()))>>
    : std::true_type {};

/// True when the architecture policy declares the Codes and Workspace templates.
template <typename Arch, typename = void>
struct HasCodesAndWorkspace : std::false_type {};
template <typename Arch>
struct HasCodesAndWorkspace<Arch, std::void_t<typename Arch::template Codes<double>,
                                              typename Arch::template Workspace<double>>>
    : std::true_type {};

/// Mean over rows of the squared error, summed over columns; accumulated in double.
template <typename Scalar>
double meanSquaredError(const Eigen::Ref<const RowMatrix<Scalar>>& a,
                        const ConstBatchRef<Scalar>& b) {
  double s = 0;
  for (Index r = 0; r < a.rows(); ++r) s += double((a.row(r) - b.row(r)).squaredNorm());
  return s / double(a.rows());
}

}  // namespace detail

/// @brief A sparse autoencoder of architecture `Arch_` over scalar type `Scalar_`.
///
/// Parameters use SAELens names and logical shapes (`W_enc [d_in, d_sae]`,
/// `W_dec [d_sae, d_in]`, `b_enc`, `b_dec`, plus the architecture's own) and live in one
/// ParameterSet; `W_enc` is stored column-major so that each latent's encoder weights are
/// contiguous.
///
/// @tparam Scalar_ float (training, inference) or double (gradient checks, reference).
/// @tparam Arch_ architecture policy. It must provide:
///   - `static constexpr const char* kName`: the SAELens architecture name;
///   - `template <typename S> using Codes`: DenseCodes<S> or SparseCodes<S>;
///   - `template <typename S> struct Workspace` with members `codes` (Codes<S>) and
///     `reconstruction` (RowMatrix<S>), reused across calls;
///   - `static void validate(const SaeConfig&)`;
///   - `template <typename S> static void addParameters(ParameterSet<S>&, const SaeConfig&)`;
///   - `template <typename S> static void initialize(ParameterSet<S>&, const SaeConfig&, Rng&)`;
///   - `template <typename S> static void encode(const ParameterSet<S>&, const SaeConfig&,
///      const ConstBatchRef<S>&, Codes<S>&, Workspace<S>&)`: inference, with the workspace's
///      buffers as scratch (and its `bf16_encoder` setting);
///   - `template <typename S> static void decode(const ParameterSet<S>&, const SaeConfig&,
///      const Codes<S>&, RowMatrix<S>&)`;
///   - `template <typename S> static void forward(const ParameterSet<S>&, const SaeConfig&,
///      const ConstBatchRef<S>&, const TrainOptions&, Workspace<S>&, LossTerms<S>&)`:
///      training forward pass and loss terms;
///   - `template <typename S> static void backward(const ParameterSet<S>&, const SaeConfig&,
///      const ConstBatchRef<S>&, const TrainOptions&, Workspace<S>&, ParameterSet<S>&)`:
///      gradients of the total loss after forward(), written (not added) to the set.
///
/// A policy with non-trainable state (torch's buffers, such as BatchTopK's EMA threshold)
/// also provides:
///   - `static void addBuffers(ParameterSet<double>&, const SaeConfig&)`: declares them;
///   - `template <typename S> static void updateBuffers(ParameterSet<double>&, const SaeConfig&,
///      const Workspace<S>&)`: advances them from the last training forward pass;
/// and its `encode` takes the buffers after the parameters: `encode(const ParameterSet<S>&,
/// const ParameterSet<double>&, const SaeConfig&, const ConstBatchRef<S>&, Codes<S>&)`.
template <typename Scalar_, typename Arch_>
class SparseAutoencoder {
  static_assert(std::is_floating_point<Scalar_>::value,
                "SparseAutoencoder: Scalar_ must be float or double");
  static_assert(std::is_convertible<decltype(Arch_::kName), const char*>::value,
                "SparseAutoencoder: Arch_ must declare static constexpr const char* kName");
  static_assert(detail::HasCodesAndWorkspace<Arch_>::value,
                "SparseAutoencoder: Arch_ must declare template <typename S> using Codes and "
                "template <typename S> struct Workspace (ActivationArch supplies both)");

 public:
  using Scalar = Scalar_;
  using Arch = Arch_;
  using Matrix = RowMatrix<Scalar>;
  using Codes = typename Arch::template Codes<Scalar>;
  using Workspace = typename Arch::template Workspace<Scalar>;
  /// True when the architecture has non-trainable buffers (see buffers()).
  static constexpr bool kHasBuffers = detail::HasBuffers<Arch>::value;

  /// @brief A model with every parameter zero (to be filled, e.g. from a file).
  explicit SparseAutoencoder(const SaeConfig& cfg) : m_cfg(cfg) {
    validateConfig(m_cfg);
    declareParameters(m_params, m_cfg);
    if constexpr (kHasBuffers) Arch::addBuffers(m_buffers, m_cfg);
  }

  /// @brief The parameters a model of config `cfg` has (SAELens names, logical shapes,
  /// layouts), in model order, without allocating them: what a file must hold.
  /// @throws ConfigError when `cfg` does not suit the architecture.
  static std::vector<ParameterInfo> parameterLayout(const SaeConfig& cfg) {
    validateConfig(cfg);
    ParameterSet<Scalar> p = ParameterSet<Scalar>::layoutOnly();
    declareParameters(p, cfg);
    return p.entries();
  }

  /// @brief A model with SAELens's initialisation drawn from `seed`.
  SparseAutoencoder(const SaeConfig& cfg, std::uint64_t seed) : SparseAutoencoder(cfg) {
    Rng rng(seed);
    detail::initializeTiedWeights(m_params, m_cfg, rng);
    Arch::initialize(m_params, m_cfg, rng);
  }

  /// @brief SAELens's name of the architecture ("standard", "gated", "topk").
  static constexpr const char* architecture() { return Arch::kName; }

  const SaeConfig& config() const { return m_cfg; }
  Index dIn() const { return m_cfg.d_in; }
  Index dSae() const { return m_cfg.d_sae; }

  /// @brief All parameters by SAELens name.
  ParameterSet<Scalar>& parameters() { return m_params; }
  const ParameterSet<Scalar>& parameters() const { return m_params; }

  /// @brief Non-trainable state by SAELens name (torch's buffers; BatchTopK's
  /// `topk_threshold`), in double precision; empty for most architectures.
  ///
  /// Buffers are not parameters: backward() gives them no gradient, and gradient clipping and
  /// the optimizer never see them. They change only through updateBuffers(), and the Trainer
  /// saves and restores them with each checkpoint.
  ParameterSet<double>& buffers() { return m_buffers; }
  const ParameterSet<double>& buffers() const { return m_buffers; }

  /// @brief Advances the buffers from the training forward pass whose results `ws` holds
  /// (after loss() or backward()); does nothing for an architecture without buffers. The
  /// Trainer calls it once per step, as SAELens updates its buffers in every training forward.
  void updateBuffers(const Workspace& ws) {
    if constexpr (kHasBuffers) Arch::updateBuffers(m_buffers, m_cfg, ws);
  }

  /// @brief A zero set shaped like the parameters, for backward().
  ParameterSet<Scalar> makeGradients() const { return m_params.zerosLike(); }

  /// @brief Feature activations of a batch `[tokens, d_in]`.
  Codes encode(const ConstBatchRef<Scalar>& x) const {
    Codes codes;
    encode(x, codes);
    return codes;
  }
  /// @brief Feature activations of a batch into `codes` (reusing its storage).
  void encode(const ConstBatchRef<Scalar>& x, Codes& codes) const {
    Workspace ws;
    encode(x, codes, ws);
  }
  /// @brief Feature activations of a batch into `codes`, with `ws` as scratch: once `codes` and
  /// `ws` have grown to the batch size, nothing is allocated (for an inference engine's
  /// per-layer hook; kernels::gemm()'s oneDNN products aside, see README). With
  /// `ws.bf16_encoder` set (float models, oneDNN builds), the encoder product runs in bf16
  /// with fp32 accumulation, on AMX where the CPU has it; the bf16 copy of W_enc is made on
  /// every call, so changed weights are always seen. The same codes as encode(x) in fp32.
  void encode(const ConstBatchRef<Scalar>& x, Codes& codes, Workspace& ws) const {
    detail::checkBatch(x, m_cfg.d_in);
    if constexpr (kHasBuffers) {
      Arch::encode(m_params, m_buffers, m_cfg, x, codes, ws);
    } else {
      Arch::encode(m_params, m_cfg, x, codes, ws);
    }
  }

  /// @brief Reconstruction `[tokens, d_in]` from feature activations.
  Matrix decode(const Codes& codes) const {
    Matrix out;
    decode(codes, out);
    return out;
  }
  /// @brief Reconstruction into `out`, resized to `[tokens, d_in]` (its storage is reused).
  void decode(const Codes& codes, Matrix& out) const {
    require(codes.latents() == m_cfg.d_sae, "codes have ", codes.latents(),
            " latents, expected d_sae = ", m_cfg.d_sae);
    Arch::decode(m_params, m_cfg, codes, out);
  }

  /// @brief decode(encode(x)).
  Matrix forward(const ConstBatchRef<Scalar>& x) const { return decode(encode(x)); }

  /// @brief Training loss terms of a batch (no gradients).
  LossTerms<Scalar> loss(const ConstBatchRef<Scalar>& x, const TrainOptions& opts = {}) const {
    Workspace ws;
    return loss(x, opts, ws);
  }
  /// @brief Training loss terms; `ws` keeps the codes and the reconstruction afterwards.
  LossTerms<Scalar> loss(const ConstBatchRef<Scalar>& x, const TrainOptions& opts,
                         Workspace& ws) const {
    checkStep(x, opts);
    LossTerms<Scalar> terms;
    Arch::forward(m_params, m_cfg, x, opts, ws, terms);
    return terms;
  }

  /// @brief Loss terms and the gradient of their total with respect to every parameter.
  ///
  /// @param x      batch `[tokens, d_in]`.
  /// @param grads  overwritten with the gradients (shape it with makeGradients()).
  /// @param opts   dead-latent mask (TopK AuxK) and sparsity-coefficient scale.
  /// @param ws     scratch reused across steps; holds codes and reconstruction afterwards.
  LossTerms<Scalar> backward(const ConstBatchRef<Scalar>& x, ParameterSet<Scalar>& grads,
                             const TrainOptions& opts, Workspace& ws) const {
    require(grads.sameLayout(m_params),
            "gradient set does not match the model's parameters (use makeGradients())");
    LossTerms<Scalar> terms = loss(x, opts, ws);
    Arch::backward(m_params, m_cfg, x, opts, ws, grads);
    return terms;
  }
  LossTerms<Scalar> backward(const ConstBatchRef<Scalar>& x, ParameterSet<Scalar>& grads,
                             const TrainOptions& opts = {}) const {
    Workspace ws;
    return backward(x, grads, opts, ws);
  }

  /// @brief Euclidean norms of the decoder rows, `[d_sae]`.
  Vector<Scalar> decoderNorms() const {
    Vector<Scalar> n(m_cfg.d_sae);
    kernels::rowNorms<Scalar>(m_params.rowMajor("W_dec"), n);
    return n;
  }

 private:
  static void validateConfig(const SaeConfig& cfg) {
    cfg.validateCommon();
    Arch::validate(cfg);
  }

  /// W_enc, then the architecture's parameters (the order of files and checkpoints).
  static void declareParameters(ParameterSet<Scalar>& p, const SaeConfig& cfg) {
    p.add("W_enc", {cfg.d_in, cfg.d_sae}, Layout::ColMajor);
    Arch::addParameters(p, cfg);
  }

  void checkStep(const ConstBatchRef<Scalar>& x, const TrainOptions& opts) const {
    detail::checkBatch(x, m_cfg.d_in);
    require(std::isfinite(opts.sparsity_scale) && opts.sparsity_scale >= 0,
            "sparsity_scale must be finite and >= 0, found ", opts.sparsity_scale);
    if (opts.dead_mask)
      require(opts.dead_mask->size() == m_cfg.d_sae, "dead-latent mask has ",
              opts.dead_mask->size(), " entries, expected d_sae = ", m_cfg.d_sae);
  }

  SaeConfig m_cfg;
  ParameterSet<Scalar> m_params;
  ParameterSet<double> m_buffers;
};

namespace detail {

// The members an activation policy of ActivationArch must have (see there), each as the
// expression that uses it; DetectedOp<Op, A> is true when Op<A> is well-formed.
template <template <typename> class Op, typename A, typename = void>
struct DetectedOp : std::false_type {};
template <template <typename> class Op, typename A>
struct DetectedOp<Op, A, std::void_t<Op<A>>> : std::true_type {};

template <typename A>
using PolicyName = std::enable_if_t<std::is_convertible<decltype(A::kName), const char*>::value>;
template <typename A>
using PolicyValidate = decltype(A::validate(std::declval<const SaeConfig&>()));
template <typename A>
using PolicyAddParameters = decltype(A::template addParameters<double>(
    std::declval<ParameterSet<double>&>(), std::declval<const SaeConfig&>()));
template <typename A>
using PolicyInitialize = decltype(A::template initialize<double>(
    std::declval<ParameterSet<double>&>(), std::declval<const SaeConfig&>(), std::declval<Rng&>()));
template <typename A>
using PolicyScratch = typename A::template Scratch<double>;
template <typename A>
using PolicyActivate = decltype(A::template activate<double>(
    std::declval<const ParameterSet<double>&>(), std::declval<const SaeConfig&>(),
    std::declval<RowMatrix<double>&>(), std::declval<RowMatrix<double>&>()));
// The members below also take the policy's Scratch (checked first).
template <typename A>
using PolicyAddPenalties = decltype(A::template addPenalties<double>(
    std::declval<const ParameterSet<double>&>(), std::declval<const SaeConfig&>(),
    std::declval<const TrainOptions&>(), std::declval<const DenseWorkspace<double>&>(),
    std::declval<PolicyScratch<A>&>(), std::declval<LossTerms<double>&>()));
template <typename A>
using PolicyGradientRule = std::enable_if_t<std::is_convertible<
    decltype(A::template gradientRule<double>(
        std::declval<const ParameterSet<double>&>(), std::declval<const SaeConfig&>(),
        std::declval<const TrainOptions&>(), std::declval<const DenseWorkspace<double>&>(),
        std::declval<const PolicyScratch<A>&>())(Index(0), Index(0), double(0))),
    double>::value>;
template <typename A>
using PolicyPenaltyGradient = decltype(A::template penaltyGradient<double>(
    std::declval<const ParameterSet<double>&>(), std::declval<const SaeConfig&>(),
    std::declval<const TrainOptions&>(), std::declval<const DenseWorkspace<double>&>(),
    std::declval<const PolicyScratch<A>&>(), std::declval<Vector<double>&>(),
    std::declval<ParameterSet<double>&>()));

/// The members of an activation policy, in the order they are checked.
enum class ActivationPolicyMember {
  none,
  kName,
  validate,
  addParameters,
  initialize,
  Scratch,
  activate,
  addPenalties,
  gradientRule,
  penaltyGradient
};

/// The first member activation policy `A` lacks (or whose signature does not fit), or none.
template <typename A>
constexpr ActivationPolicyMember missingActivationMember() {
  constexpr bool present[] = {
      DetectedOp<PolicyName, A>::value,          DetectedOp<PolicyValidate, A>::value,
      DetectedOp<PolicyAddParameters, A>::value, DetectedOp<PolicyInitialize, A>::value,
      DetectedOp<PolicyScratch, A>::value,       DetectedOp<PolicyActivate, A>::value};
  for (int m = 0; m < 6; ++m)
    if (!present[m]) return ActivationPolicyMember(m + 1);
  if constexpr (DetectedOp<PolicyScratch, A>::value) {
    constexpr bool uses_scratch[] = {DetectedOp<PolicyAddPenalties, A>::value,
                                     DetectedOp<PolicyGradientRule, A>::value,
                                     DetectedOp<PolicyPenaltyGradient, A>::value};
    for (int m = 0; m < 3; ++m)
      if (!uses_scratch[m]) return ActivationPolicyMember(m + 7);
  }
  return ActivationPolicyMember::none;
}

/// Instantiated with the member an activation policy lacks: the compiler's message then names
/// it (`ActivationPolicyLacks<ActivationPolicyMember::activate>`); ActivationArch's
/// documentation gives each member's signature.
template <ActivationPolicyMember Missing>
struct ActivationPolicyLacks {
  static_assert(Missing == ActivationPolicyMember::none,
                "ActivationArch: the activation policy lacks the member named in "
                "ActivationPolicyLacks<...> (or its signature does not fit; see ActivationArch)");
  static constexpr bool value = true;
};
}  // namespace detail

/// @brief The architecture policy of an SAE whose codes are an activation of the
/// pre-activations, `f = act(xc W_enc + b_enc)`, with penalty terms: everything but the
/// activation and the penalties is done here, once for all such architectures.
///
/// Parameters `W_enc`, `b_enc`, `W_dec`, `b_dec`, then the activation's own. Codes are dense
/// (DenseCodes); decode, d mse / d f and the gradients of W_dec, W_enc, b_enc, b_dec take the
/// sparse kernels below `Workspace::sparse_threshold` of active entries (f > 0), dense
/// products otherwise.
///
/// @tparam Activation_ the activation policy; it must provide (S the scalar type):
///   - `static constexpr const char* kName`: the architecture's name;
///   - `static void validate(const SaeConfig&)`: its options (throw ConfigError);
///   - `template <typename S> static void addParameters(ParameterSet<S>&, const SaeConfig&)`:
///     its extra parameters (added after b_dec; may add none);
///   - `template <typename S> static void initialize(ParameterSet<S>&, const SaeConfig&, Rng&)`:
///     their initial values (the shared weights are already drawn);
///   - `template <typename S> struct Scratch`: what its penalties keep between forward and
///     backward (may be empty); it becomes a base of the Workspace;
///   - `template <typename S> static void activate(const ParameterSet<S>&, const SaeConfig&,
///      RowMatrix<S>& pre, RowMatrix<S>& f)`: `pre` holds xc W_enc; leave h = pre + b_enc in
///     it and write f = act(h) >= 0 into `f` (already `[B, d_sae]`). The entries with f > 0 are
///     the active ones: the only ones that decode and pass gradient;
///   - `template <typename S> static void addPenalties(const ParameterSet<S>&, const SaeConfig&,
///      const TrainOptions&, const detail::DenseWorkspace<S>&, Scratch<S>&, LossTerms<S>&)`:
///     adds its loss terms after mse_loss (the workspace holds f in `codes`, the decoder norms
///     n in `norms`);
///   - `template <typename S> static Rule gradientRule(...)`, same arguments but a const
///     Scratch and no LossTerms: a callable `S rule(Index b, Index i, S g)` giving
///     d loss / d h_bi from g = d mse / d f_bi (0 where the entry is not active); it may read
///     f, but not h (on the dense path the pre-activation buffer then holds the gradient);
///   - `template <typename S> static void penaltyGradient(const ParameterSet<S>&,
///      const SaeConfig&, const TrainOptions&, const detail::DenseWorkspace<S>&,
///      const Scratch<S>&, Vector<S>& d_norms, ParameterSet<S>& g)`: adds d penalties / d n_i to
///     `d_norms` (zero on entry; the chain rule into W_dec is done here) and writes the
///     gradients of its extra parameters into `g`.
/// `used_sparse` and `pattern` in the workspace tell which path the step took.
template <typename Activation_>
struct ActivationArch : detail::DenseCodesArch {
  using Activation = Activation_;
  static_assert(
      detail::ActivationPolicyLacks<detail::missingActivationMember<Activation>()>::value);

  static constexpr const char* kName = Activation::kName;

  /// @brief The shared dense workspace, the activation's Scratch, and the per-entry buffers
  /// of the sparse path. `pre` holds h after a forward pass (then, on the dense path of a
  /// backward pass, d loss / d h).
  template <typename S>
  struct Workspace : detail::DenseWorkspace<S>, Activation::template Scratch<S> {
    std::vector<S> coef;  // per active entry: f, then d loss / d h
    Vector<S> d_norms;    // d penalties / d n
  };

  static void validate(const SaeConfig& cfg) { Activation::validate(cfg); }

  template <typename S>
  static void addParameters(ParameterSet<S>& p, const SaeConfig& cfg) {
    p.add("b_enc", {cfg.d_sae});
    p.add("W_dec", {cfg.d_sae, cfg.d_in});
    p.add("b_dec", {cfg.d_in});
    Activation::addParameters(p, cfg);
  }

  template <typename S>
  static void initialize(ParameterSet<S>& p, const SaeConfig& cfg, Rng& rng) {
    Activation::initialize(p, cfg, rng);
  }

  template <typename S>
  static void encode(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                     Codes<S>& codes, Workspace<S>& ws) {
    detail::centerAndEncode(p, cfg, x, ws);
    codes.values.resize(x.rows(), cfg.d_sae);
    Activation::activate(p, cfg, ws.pre, codes.values);
  }

  template <typename S>
  static void forward(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                      const TrainOptions& opts, Workspace<S>& ws, LossTerms<S>& terms) {
    const Index B = x.rows();
    encode(p, cfg, x, ws.codes, ws);
    const auto& f = ws.codes.values;
    ws.pattern.template buildPositive<S>(f);
    ws.used_sparse = detail::takeSparsePath(ws, ws.pattern.nnz(), B, cfg.d_sae);
    detail::decodeDense(p, f, ws.used_sparse, ws.pattern, ws.coef, ws.reconstruction);
    ws.norms.resize(cfg.d_sae);
    kernels::rowNorms<S>(p.rowMajor("W_dec"), ws.norms);
    terms.add("mse_loss", S(detail::meanSquaredError<S>(ws.reconstruction, x)));
    Activation::addPenalties(p, cfg, opts, ws, ws, terms);
  }

  template <typename S>
  static void backward(const ParameterSet<S>& p, const SaeConfig& cfg, const ConstBatchRef<S>& x,
                       const TrainOptions& opts, Workspace<S>& ws, ParameterSet<S>& g) {
    detail::squaredErrorGradient(ws.reconstruction, x, ws.grad_y);
    const auto& f = ws.codes.values;
    const Index B = x.rows();
    const Index n = cfg.d_sae;
    const auto W_dec = p.rowMajor("W_dec");
    const auto rule = Activation::gradientRule(p, cfg, opts, ws, ws);
    auto gW_dec = g.rowMajor("W_dec");
    auto gb_enc = g.flat("b_enc");
    ws.d_norms.setZero(n);
    if (ws.used_sparse) {
      // Only the active entries carry gradient.
      const kernels::CsrPattern& pat = ws.pattern;
      const Index nnz = pat.nnz();
      ws.buckets.build(n, pat.latent.data(), nnz);
      kernels::sumByLatent<S>(ws.buckets, pat.row.data(), ws.coef.data(), ws.grad_y, gW_dec);
      Activation::penaltyGradient(p, cfg, opts, ws, ws, ws.d_norms, g);
      // coef becomes d mse / d f, then d loss / d h.
      kernels::csrDot<S>(ws.grad_y, pat, W_dec, ws.coef.data());
      SAE_PRAGMA_OMP(parallel for schedule(static))
      for (Index e = 0; e < nnz; ++e) ws.coef[e] = rule(pat.row[e], pat.latent[e], ws.coef[e]);
      auto gW_enc_t = detail::encoderGradientRows(g);
      kernels::sumByLatent<S>(ws.buckets, pat.row.data(), ws.coef.data(), ws.xc, gW_enc_t,
                              gb_enc.data());
    } else {
      RowMatrix<S>& grad_h = ws.pre;
      kernels::gemm(grad_h, ws.grad_y, W_dec.transpose());
      SAE_PRAGMA_OMP(parallel for schedule(static))
      for (Index b = 0; b < B; ++b)
        for (Index i = 0; i < n; ++i) grad_h(b, i) = rule(b, i, grad_h(b, i));
      Activation::penaltyGradient(p, cfg, opts, ws, ws, ws.d_norms, g);
      kernels::gemm(gW_dec, f.transpose(), ws.grad_y);
      kernels::gemm(g.colMajor("W_enc"), ws.xc.transpose(), grad_h);
      gb_enc = grad_h.colwise().sum().transpose();
    }
    detail::addDecoderNormGradient<S>(W_dec, ws.norms, ws.d_norms, gW_dec);
    detail::setDecoderBiasGradient(p, cfg, ws.grad_y.colwise().sum().transpose(), gb_enc, g);
  }
};

}  // namespace sae
