/// @file model_eval.hpp
/// @brief An SAE judged inside its language model: SAELens's model-performance metrics
/// (CE-loss recovered and KL divergence), through a hook interface any engine can provide.
///
/// The metrics are those of SAELens 6 (`sae_lens/evals.py`, `get_recons_loss` and
/// `get_downstream_reconstruction_metrics` with special tokens ignored). For each batch of token
/// windows the model runs three times:
/// - clean;
/// - with the SAE: at the hook point, the SAE's full forward (its input normalisation,
///   apply_b_dec_to_input, the architecture's activation) replaces the activation of every
///   token that is not special; special tokens keep theirs;
/// - with zero ablation: the hook activation is zero at every token, special ones too.
///
/// Per token, over the positions whose own token is not special:
/// - cross-entropy: position t predicting token t+1, `-log softmax(logits_t)[token_{t+1}]`
///   (the last position of a window predicts nothing);
/// - KL(P_clean || P_run), summed over the vocabulary (every position, the last one included).
///
/// Each metric is the mean of its per-token values over every evaluated batch, and
/// - `ce_loss_score` = (CE_ablation - CE_sae) / (CE_ablation - CE_clean),
/// - `kl_div_score` = (KL_ablation - KL_sae) / KL_ablation.
///
/// The hook interface is one function (HookedRun): run the model on `tokens [batch, seq]`,
/// call the given hook (when there is one) once with the activation at the hook point as a
/// writable `[batch * seq, d]` block of rows (batch-major: row `b * seq + t`), and write the
/// logits `[batch * seq, vocab]`. gpt2Run() makes one for Gpt2Model; an engine of any other
/// family needs only these few lines (tests/test_model_eval.cpp has a hand-made two-layer one).
///
/// Numerics: logits are float; log-softmax, cross-entropy and KL are computed in double, per
/// token (a probability that underflows contributes 0 to the KL, where SAELens's float32
/// `p * log p` would give NaN), and summed in a fixed order, so the result does not depend on
/// the number of threads.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/eval/metrics.hpp>
#include <sae/lm/gpt2.hpp>
#include <sae/lm/hooks.hpp>
#include <sae/runtime/sae.hpp>

namespace sae::lm {

/// @brief The activation at the hook point, in place: `[batch * seq, d]`, rows batch-major.
using ActivationRef = Eigen::Ref<RowMatrix<float>>;

/// @brief A hook of the interface: reads or overwrites the activation of the batch whose
/// tokens are given.
using ActivationHook = std::function<void(ActivationRef activation, const TokenMatrix& tokens)>;

/// @brief The hook interface: runs the model on `tokens [batch, seq]`, calls `hook` (unless
/// null) once with the hook point's activation, and resizes and fills `logits`
/// `[batch * seq, vocab]`.
using HookedRun = std::function<void(const TokenMatrix& tokens, const ActivationHook* hook,
                                     RowMatrix<float>& logits)>;

/// @brief The HookedRun of a GPT-2 model at hook point `hook_name` (TransformerLens's name;
/// an unknown one is a ConfigError listing the valid names). The model must outlive it.
inline HookedRun gpt2Run(Gpt2Model& model, const std::string& hook_name) {
  parseHookName(hook_name, static_cast<int>(model.config().n_layer));
  return [&model, hook_name](const TokenMatrix& tokens, const ActivationHook* hook,
                             RowMatrix<float>& logits) {
    HookList hooks;
    if (hook != nullptr)
      hooks.add(hook_name, [hook, &tokens](HookActivation& a) {
        (*hook)(a.value, tokens);
        return HookAction::Continue;
      });
    model.forward(tokens, hooks, &logits);
  };
}

/// @brief SAELens's downstream metrics, under SAELens's names, and what they were computed on.
struct DownstreamMetrics {
  static constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  double ce_loss_without_sae = kNaN;
  double ce_loss_with_sae = kNaN;
  double ce_loss_with_ablation = kNaN;
  double ce_loss_score = kNaN;
  double kl_div_with_sae = kNaN;
  double kl_div_with_ablation = kNaN;
  double kl_div_score = kNaN;
  std::int64_t sequences = 0;     ///< Windows evaluated.
  std::int64_t tokens = 0;        ///< Their tokens, special ones included.
  std::int64_t ce_positions = 0;  ///< Positions averaged for the cross-entropy.
  std::int64_t kl_positions = 0;  ///< Positions averaged for the KL divergence.
};

/// @brief Per-token cross-entropy and KL of batches, accumulated in double (see the file
/// comment for which positions count).
class DownstreamAccumulator {
 public:
  /// @param special token ids that are not evaluated (GPT-2: 50256, its BOS, EOS and PAD).
  explicit DownstreamAccumulator(std::vector<std::int32_t> special = {})
      : m_special(std::move(special)) {}

  /// @brief True when `token` is one of the special ids.
  bool isSpecial(std::int32_t token) const {
    return std::find(m_special.begin(), m_special.end(), token) != m_special.end();
  }
  const std::vector<std::int32_t>& special() const { return m_special; }

  /// @brief Adds one batch: its tokens and the logits of its clean, SAE and ablation runs,
  /// each `[batch * seq, vocab]`. The logits are overwritten (with their log-softmax).
  void add(const TokenMatrix& tokens, RowMatrix<float>& clean, RowMatrix<float>& with_sae,
           RowMatrix<float>& ablated) {
    const Index B = tokens.rows(), T = tokens.cols(), rows = B * T;
    for (const RowMatrix<float>* l : {&clean, &with_sae, &ablated})
      require(l->rows() == rows && l->cols() == clean.cols() && clean.cols() > 0,
              "downstream metrics: logits of shape [", l->rows(), ", ", l->cols(),
              "] for a batch of ", B, " x ", T, " tokens");
    const Index V = clean.cols();
    for (Index b = 0; b < B; ++b)
      for (Index t = 0; t < T; ++t)
        require(tokens(b, t) >= 0 && tokens(b, t) < V, "downstream metrics: token ", tokens(b, t),
                " outside a vocabulary of ", V);
    m_row.assign(static_cast<std::size_t>(rows) * 5, 0.0);
    // Per row: CE clean, CE sae, CE ablation, KL sae, KL ablation.
#pragma omp parallel for schedule(static)
    for (Index r = 0; r < rows; ++r) {
      const Index b = r / T, t = r % T;
      double* out = &m_row[static_cast<std::size_t>(r) * 5];
      if (isSpecial(tokens(b, t))) continue;
      auto p = clean.row(r), q = with_sae.row(r), z = ablated.row(r);
      const double lse_p = logSumExp(p), lse_q = logSumExp(q), lse_z = logSumExp(z);
      if (t + 1 < T) {
        const Index next = tokens(b, t + 1);
        out[0] = lse_p - double(p(next));
        out[1] = lse_q - double(q(next));
        out[2] = lse_z - double(z(next));
      }
      double kl_q = 0, kl_z = 0;
      for (Index v = 0; v < V; ++v) {
        const double lp = double(p(v)) - lse_p;
        const double pv = std::exp(lp);
        if (pv == 0.0) continue;
        kl_q += pv * (lp - (double(q(v)) - lse_q));
        kl_z += pv * (lp - (double(z(v)) - lse_z));
      }
      out[3] = kl_q;
      out[4] = kl_z;
    }
    for (Index r = 0; r < rows; ++r) {
      const Index b = r / T, t = r % T;
      if (isSpecial(tokens(b, t))) continue;
      const double* v = &m_row[static_cast<std::size_t>(r) * 5];
      if (t + 1 < T) {
        for (int i = 0; i < 3; ++i) m_sum[i] += v[i];
        ++m_ce;
      }
      m_sum[3] += v[3];
      m_sum[4] += v[4];
      ++m_kl;
    }
    m_sequences += B;
    m_tokens += rows;
  }

  /// @brief The metrics so far (NaN where nothing was counted).
  DownstreamMetrics result() const {
    DownstreamMetrics m;
    m.sequences = m_sequences;
    m.tokens = m_tokens;
    m.ce_positions = m_ce;
    m.kl_positions = m_kl;
    if (m_ce > 0) {
      m.ce_loss_without_sae = m_sum[0] / double(m_ce);
      m.ce_loss_with_sae = m_sum[1] / double(m_ce);
      m.ce_loss_with_ablation = m_sum[2] / double(m_ce);
      m.ce_loss_score = (m.ce_loss_with_ablation - m.ce_loss_with_sae) /
                        (m.ce_loss_with_ablation - m.ce_loss_without_sae);
    }
    if (m_kl > 0) {
      m.kl_div_with_sae = m_sum[3] / double(m_kl);
      m.kl_div_with_ablation = m_sum[4] / double(m_kl);
      m.kl_div_score = (m.kl_div_with_ablation - m.kl_div_with_sae) / m.kl_div_with_ablation;
    }
    return m;
  }

 private:
  template <typename Row>
  static double logSumExp(const Row& x) {
    const double mx = double(x.maxCoeff());
    double s = 0;
    for (Index v = 0; v < x.size(); ++v) s += std::exp(double(x(v)) - mx);
    return mx + std::log(s);
  }

  std::vector<std::int32_t> m_special;
  std::vector<double> m_row;
  double m_sum[5] = {0, 0, 0, 0, 0};
  std::int64_t m_ce = 0, m_kl = 0, m_sequences = 0, m_tokens = 0;
};

/// @brief The SAE replacement of SAELens's `standard_replacement_hook`: the SAE's forward
/// (sae::Sae, normalisation included) replaces the rows of non-special tokens; special rows
/// are left as they are. Also accumulates the reconstruction and sparsity metrics of the rows
/// it replaces. The Sae must outlive it.
class SaeSplice {
 public:
  SaeSplice(Sae<float>& sae, std::vector<std::int32_t> special, std::string hook = "the hook")
      : m_sae(sae), m_special(std::move(special)), m_hook(std::move(hook)), m_firing(sae.dSae()) {}

  void operator()(ActivationRef a, const TokenMatrix& tokens) {
    if (a.cols() != m_sae.dIn())
      throw ConfigError(sae::detail::concat("the SAE expects d_in = ", m_sae.dIn(), " but ", m_hook,
                                            " has width ", a.cols()));
    require(a.rows() == tokens.size(), "SaeSplice: ", a.rows(), " activation rows for ",
            tokens.size(), " tokens");
    m_rows.clear();
    for (Index r = 0; r < a.rows(); ++r)
      if (std::find(m_special.begin(), m_special.end(), tokens.data()[r]) == m_special.end())
        m_rows.push_back(r);
    const Index n = static_cast<Index>(m_rows.size());
    if (n == 0) return;
    m_in.resize(n, a.cols());
    for (Index i = 0; i < n; ++i) m_in.row(i) = a.row(m_rows[std::size_t(i)]);
    m_sae.encode(m_in, m_codes);
    m_sae.decode(m_codes, m_out);
    m_recon.add<float>(m_in, m_out);
    std::visit([&](const auto& c) { m_firing.add(c); }, m_codes.variant());
    for (Index i = 0; i < n; ++i) a.row(m_rows[std::size_t(i)]) = m_out.row(i);
  }

  /// @brief MSE and explained variance of the replaced rows.
  const eval::ReconstructionMetrics& reconstruction() const { return m_recon; }
  /// @brief L0 and firing counts of the replaced rows.
  const eval::FiringStats& firing() const { return m_firing; }

 private:
  Sae<float>& m_sae;
  std::vector<std::int32_t> m_special;
  std::string m_hook;
  std::vector<Index> m_rows;
  RowMatrix<float> m_in, m_out;
  Sae<float>::Codes m_codes;
  eval::ReconstructionMetrics m_recon;
  eval::FiringStats m_firing;
};

/// @brief SAELens's zero ablation: the hook activation is zero at every token.
inline void zeroAblate(ActivationRef a, const TokenMatrix&) { a.setZero(); }

/// @brief Runs `run` three times per batch (clean, `replace`, zero ablation) and adds the
/// logits to `acc`. `replace` is the hook that splices the SAE in (a SaeSplice, or any hook).
inline void addDownstreamBatch(const HookedRun& run, const ActivationHook& replace,
                               const TokenMatrix& tokens, DownstreamAccumulator& acc,
                               RowMatrix<float>& clean, RowMatrix<float>& with_sae,
                               RowMatrix<float>& ablated) {
  const ActivationHook ablate = zeroAblate;
  run(tokens, nullptr, clean);
  run(tokens, &replace, with_sae);
  run(tokens, &ablate, ablated);
  acc.add(tokens, clean, with_sae, ablated);
}

/// @brief SAELens's downstream metrics of `sae` at the hook `run` calls, over `batches` of
/// token windows (each `[batch, seq]`; lengths may differ between batches), with the tokens of
/// `special` not evaluated. `progress(done, total)`, when given, is called after each batch.
inline DownstreamMetrics evaluateDownstream(
    const HookedRun& run, Sae<float>& sae, const std::vector<TokenMatrix>& batches,
    const std::vector<std::int32_t>& special,
    const std::function<void(std::size_t, std::size_t)>& progress = {}) {
  DownstreamAccumulator acc(special);
  SaeSplice splice(sae, special);
  const ActivationHook replace = [&splice](ActivationRef a, const TokenMatrix& t) { splice(a, t); };
  RowMatrix<float> clean, with_sae, ablated;
  for (std::size_t i = 0; i < batches.size(); ++i) {
    addDownstreamBatch(run, replace, batches[i], acc, clean, with_sae, ablated);
    if (progress) progress(i + 1, batches.size());
  }
  return acc.result();
}

}  // namespace sae::lm
