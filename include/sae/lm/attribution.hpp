/// @file attribution.hpp
/// @brief Direct logit attribution of SAE features: what a feature's decoder direction, written
/// into the residual stream, does to the logits through the unembedding alone.
///
/// With the unembedding tied to the token embedding (W_U = wteᵀ, `[d_model, vocab]`), the
/// direct logit effect of a direction d `[d_model]` is dᵀ W_U = wte d `[vocab]`. For an SAE at a
/// residual hook, feature f at one position contributes act_f · (W_dec[f] · W_U[:, t]) to the
/// logit of token t, and the contributions of the active features add up to
/// (reconstruction - b_dec) · W_U[:, t].
///
/// What this leaves out: the final LayerNorm (its per-token scale 1 / sigma and its centring;
/// its weight and bias are in the engine's logits but not here), and everything the later
/// layers do with the direction (attention, MLPs): it is the direct path only, as in
/// TransformerLens's `logit_attrs` without the LayerNorm scale.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/lm/gpt2.hpp>
#include <sae/runtime/sae.hpp>
#include <sae/steer/steering.hpp>

namespace sae::lm {

/// @brief The direct logit effect of `direction` `[d_model]`: direction · W_U[:, t] for every
/// token t, with W_U = wteᵀ (GPT-2's tied unembedding), as a `[vocab]` vector.
/// @throws ConfigError when the direction's size is not the model's d_model.
inline Vector<float> directLogitEffect(const Gpt2Model& model, const Vector<float>& direction) {
  const RowMatrix<float>& wte = model.tokenEmbedding();
  if (direction.size() != wte.cols())
    throw ConfigError(sae::detail::concat("directLogitEffect: the direction has ", direction.size(),
                                          " entries, the model's d_model is ", wte.cols()));
  Vector<float> out = wte * direction;
  return out;
}

/// @brief A token and its value (a logit, or a direct logit effect).
struct TokenValue {
  std::int32_t token = 0;
  float value = 0.0f;
};

/// @brief The `n` tokens of largest value in `values` (`largest`), or of smallest, best first;
/// ties go to the smaller id. `n` is clipped to the vocabulary.
inline std::vector<TokenValue> topTokens(const Vector<float>& values, Index n,
                                         bool largest = true) {
  std::vector<std::int32_t> order(static_cast<std::size_t>(values.size()));
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<std::int32_t>(i);
  const std::size_t k = static_cast<std::size_t>(std::max<Index>(0, std::min(n, values.size())));
  auto before = [&](std::int32_t a, std::int32_t b) {
    const float va = values[a], vb = values[b];
    if (va != vb) return largest ? va > vb : va < vb;
    return a < b;
  };
  std::partial_sort(order.begin(), order.begin() + std::ptrdiff_t(k), order.end(), before);
  std::vector<TokenValue> out(k);
  for (std::size_t i = 0; i < k; ++i) out[i] = {order[i], values[order[i]]};
  return out;
}

/// @brief One active feature's share of a logit.
struct FeatureAttribution {
  Index feature = 0;          ///< The latent.
  double activation = 0.0;    ///< Its code at the position (what SAELens's encode gives).
  double dla = 0.0;           ///< Its decoder row in the hook's units, · W_U[:, target].
  double contribution = 0.0;  ///< activation · dla.
};

/// @brief How the SAE's decode scales a code: by 1, or by 1 / ||W_dec[f]|| (TopK with
/// rescale_acts_by_decoder_norm).
inline steer::DecoderUnits decoderUnits(const Sae<float>& sae) {
  return sae.visitModel([](const auto& m) { return steer::detail::probeDecoderUnits(m); });
}

/// @brief The decoder row of feature `f` in the units of the hook: W_dec[f], divided by its
/// norm for a TopK SAE with rescale_acts_by_decoder_norm, times `out_scale` (the factor the SAE's
/// normalize_activations multiplies the reconstruction by; 1 without normalisation).
/// `units` is how the SAE decodes (steer::detail::probeDecoderUnits; decoderUnits()).
inline Vector<float> decoderRowInHookUnits(const Sae<float>& sae, Index feature,
                                           steer::DecoderUnits units, double out_scale = 1.0) {
  if (feature < 0 || feature >= sae.dSae())
    throw ConfigError(
        sae::detail::concat("feature ", feature, " is out of range [0, ", sae.dSae(), ")"));
  return sae.visitModel([&](const auto& m) {
    Vector<float> row = m.parameters().rowMajor("W_dec").row(feature).transpose();
    double s = out_scale;
    if (units == steer::DecoderUnits::DividedByNorm) {
      const double n = row.norm();
      if (n > 0) s /= n;
    }
    row *= static_cast<float>(s);
    return row;
  });
}

/// @brief Direct logit attribution of the SAE's features to the logit of `target`, for one
/// hook activation `x` `[d_in]` (a residual-stream row, d_in = d_model): encodes x with `sae`
/// and, for every active feature f, returns {f, act_f, dla_f, act_f · dla_f} with
/// dla_f = decoderRowInHookUnits(f) · W_U[:, target], sorted by |contribution|, largest first
/// (ties: smaller feature first). Their sum is (reconstruction - decoded zero codes) · W_U[:,
/// target], i.e. (x̂ - b_dec) · W_U[:, target] without normalisation. See the file comment for
/// what the direct path leaves out.
/// @throws ConfigError for a width other than the model's d_model or a target outside the
/// vocabulary.
inline std::vector<FeatureAttribution> attributeLogit(const Gpt2Model& model, Sae<float>& sae,
                                                      const Vector<float>& x, std::int32_t target) {
  const RowMatrix<float>& wte = model.tokenEmbedding();
  if (x.size() != wte.cols() || sae.dIn() != wte.cols())
    throw ConfigError(sae::detail::concat("attributeLogit: the activation has ", x.size(),
                                          " entries and the SAE d_in = ", sae.dIn(),
                                          "; the model's d_model is ", wte.cols()));
  if (target < 0 || target >= wte.rows())
    throw ConfigError(sae::detail::concat("attributeLogit: target token ", target,
                                          " is outside the vocabulary [0, ", wte.rows(), ")"));
  RowMatrix<float> row = x.transpose();
  Sae<float>::Codes codes;
  sae.encode(row, codes);
  const double out_scale = codes.hasStatistics() ? double(codes.outScale()[0]) : 1.0;
  const RowMatrix<float> dense = codes.toDense();
  const steer::DecoderUnits units = decoderUnits(sae);
  std::vector<FeatureAttribution> out;
  for (Index f = 0; f < dense.cols(); ++f) {
    const double a = dense(0, f);
    if (a == 0.0) continue;
    const Vector<float> d = decoderRowInHookUnits(sae, f, units, out_scale);
    const double dla = d.cast<double>().dot(wte.row(target).transpose().cast<double>());
    out.push_back({f, a, dla, a * dla});
  }
  std::sort(out.begin(), out.end(), [](const FeatureAttribution& p, const FeatureAttribution& q) {
    const double a = std::abs(p.contribution), b = std::abs(q.contribution);
    return a != b ? a > b : p.feature < q.feature;
  });
  return out;
}

/// @brief The top and bottom tokens of one feature's direct logit effect.
struct FeatureLogits {
  std::vector<TokenValue> top;     ///< The `n` largest entries of W_dec[f] · W_U, largest first.
  std::vector<TokenValue> bottom;  ///< The `n` smallest, smallest first.
};

/// @brief For the features `features` of `sae` (in that order), the top and bottom `n` tokens
/// of their direct logit effect decoderRowInHookUnits(f) · W_U (SAELens dashboards' "logit"
/// panels), computed as one product [block, d_model] x [d_model, vocab] per block of `block`
/// features (the whole [features, vocab] matrix is never held).
/// @throws ConfigError when the SAE's d_in is not the model's d_model (the direct effect reads
/// a residual-stream direction), or for a feature out of range.
inline std::vector<FeatureLogits> featureLogits(const Gpt2Model& model, const Sae<float>& sae,
                                                Index n, const std::vector<Index>& features,
                                                Index block = 256) {
  const RowMatrix<float>& wte = model.tokenEmbedding();
  if (sae.dIn() != wte.cols())
    throw ConfigError(sae::detail::concat(
        "logits of features: the SAE's d_in = ", sae.dIn(), " is not the model's d_model = ",
        wte.cols(), " (the direct logit effect needs a residual-stream SAE)"));
  require(n >= 0 && block > 0, "featureLogits: n must be >= 0 and block > 0");
  const steer::DecoderUnits units = decoderUnits(sae);
  const Index count = static_cast<Index>(features.size());
  std::vector<FeatureLogits> out(features.size());
  RowMatrix<float> dirs, effect;
  for (Index first = 0; first < count; first += block) {
    const Index b = std::min(block, count - first);
    dirs.resize(b, wte.cols());
    for (Index i = 0; i < b; ++i)
      dirs.row(i) = decoderRowInHookUnits(sae, features[static_cast<std::size_t>(first + i)], units)
                        .transpose();
    effect.noalias() = dirs * wte.transpose();
#pragma omp parallel for schedule(dynamic)
    for (Index i = 0; i < b; ++i) {
      const Vector<float> e = effect.row(i).transpose();
      FeatureLogits& f = out[static_cast<std::size_t>(first + i)];
      f.top = topTokens(e, n, true);
      f.bottom = topTokens(e, n, false);
    }
  }
  return out;
}

/// @brief featureLogits() of every feature of `sae`, in index order.
inline std::vector<FeatureLogits> featureLogits(const Gpt2Model& model, const Sae<float>& sae,
                                                Index n, Index block = 256) {
  std::vector<Index> all(static_cast<std::size_t>(sae.dSae()));
  for (Index f = 0; f < sae.dSae(); ++f) all[static_cast<std::size_t>(f)] = f;
  return featureLogits(model, sae, n, all, block);
}

}  // namespace sae::lm
