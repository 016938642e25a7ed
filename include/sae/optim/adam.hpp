/// @file adam.hpp
/// @brief Adam and AdamW over a ParameterSet, with torch.optim.Adam / AdamW semantics.
///
/// The optimizer keeps its first and second moment estimates in two ParameterSets with the
/// layout of the parameters (ParameterSet::zerosLike()), so one step is a single element-wise
/// loop over three flat buffers. The update is the one of `torch.optim.Adam` (Kingma & Ba, 2015,
/// "Adam: A Method for Stochastic Optimization") and, with a weight decay, of `torch.optim.AdamW`
/// (Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization"):
///
/// ```
/// t <- t + 1
/// p <- p * (1 - lr * weight_decay)                       (AdamW only; skipped when wd = 0)
/// m <- beta1 m + (1 - beta1) g
/// v <- beta2 v + (1 - beta2) g^2
/// p <- p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
/// ```
///
/// eps is added after the bias correction of v, as torch does. The arithmetic follows torch's
/// own evaluation order (`m.lerp_(g, 1 - beta1)`, `v.mul_(beta2).addcmul_(g, g, 1 - beta2)`,
/// `denom = sqrt(v) / sqrt(1 - beta2^t) + eps`, `p.addcdiv_(m, denom, -lr / (1 - beta1^t))`),
/// all in the parameters' scalar type, so results agree with torch to the last few bits.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include <sae/core/config.hpp>
#include <sae/core/error.hpp>
#include <sae/core/parameters.hpp>

namespace sae {

/// @brief Hyperparameters of Adam / AdamW. Defaults are SAELens's (torch's, with lr 3e-4).
struct AdamOptions {
  double lr = 3e-4;           ///< Learning rate used by Adam::step(params, grads).
  double beta1 = 0.9;         ///< Decay of the first moment, in [0, 1).
  double beta2 = 0.999;       ///< Decay of the second moment, in [0, 1).
  double eps = 1e-8;          ///< Added to the bias-corrected sqrt(v); >= 0.
  double weight_decay = 0.0;  ///< Decoupled (AdamW) weight decay; 0 gives plain Adam.

  /// @brief Throws ConfigError naming the first invalid field and its value.
  void validate() const {
    require(std::isfinite(lr) && lr >= 0.0, "AdamOptions: lr must be finite and >= 0, found ", lr);
    require(std::isfinite(beta1) && beta1 >= 0.0 && beta1 < 1.0,
            "AdamOptions: beta1 must be in [0, 1), found ", beta1);
    require(std::isfinite(beta2) && beta2 >= 0.0 && beta2 < 1.0,
            "AdamOptions: beta2 must be in [0, 1), found ", beta2);
    require(std::isfinite(eps) && eps >= 0.0, "AdamOptions: eps must be finite and >= 0, found ",
            eps);
    require(std::isfinite(weight_decay) && weight_decay >= 0.0,
            "AdamOptions: weight_decay must be finite and >= 0, found ", weight_decay);
  }
};

/// @brief Adam (AdamW when AdamOptions::weight_decay > 0) over the tensors of a ParameterSet.
///
/// The state (step count, first and second moments) is shaped once, from the parameter set
/// given to the constructor; every later call checks that the parameters and gradients have
/// that layout. step() allocates nothing and runs one OpenMP loop with a static schedule. The
/// update is element-wise, so its result does not depend on the number of threads.
///
/// @tparam Scalar_ float or double: the scalar type of parameters, gradients and moments.
template <typename Scalar_>
class Adam {
 public:
  using Scalar = Scalar_;
  using Parameters = ParameterSet<Scalar>;

  /// Below this many scalars a step runs on one thread (thread start-up would dominate).
  static constexpr Index kParallelMinSize = Index(1) << 15;

  /// @brief Creates a fresh optimizer (t = 0, zero moments) for parameters laid out as `like`.
  /// @param like    the parameters (or anything with their layout); only the layout is used.
  /// @param options hyperparameters; validated, ConfigError when invalid.
  explicit Adam(const Parameters& like, const AdamOptions& options = AdamOptions{})
      : m_options(options), m_m(like.zerosLike()), m_v(like.zerosLike()) {
    m_options.validate();
  }

  /// @brief One update with the learning rate of options().
  /// @param params parameters, updated in place.
  /// @param grads  gradients of the loss, same layout as `params`.
  void step(Parameters& params, const Parameters& grads) { step(params, grads, m_options.lr); }

  /// @brief One update with an explicit learning rate (from a schedule, see LrSchedule).
  /// @param params parameters, updated in place.
  /// @param grads  gradients of the loss, same layout as `params`.
  /// @param lr     learning rate of this step, finite and >= 0; options().lr is left unchanged.
  void step(Parameters& params, const Parameters& grads, double lr) {
    step(params, grads, lr, 1.0);
  }

  /// @brief One update from the gradients times `grad_scale` (rounded to Scalar), without
  /// writing the scaled gradients: with clipCoefficient() (optim/clip.hpp), clipGradNorm()
  /// followed by step(params, grads, lr) in one pass over the gradients fewer (equal to
  /// rounding; bitwise at grad_scale 1).
  /// @param grad_scale finite and >= 0; 1 leaves the gradients as they are (exactly).
  void step(Parameters& params, const Parameters& grads, double lr, double grad_scale) {
    require(std::isfinite(lr) && lr >= 0.0, "Adam::step: lr must be finite and >= 0, found ", lr);
    require(std::isfinite(grad_scale) && grad_scale >= 0.0,
            "Adam::step: grad_scale must be finite and >= 0, found ", grad_scale);
    checkLayout("Adam::step", "the parameters", params);
    checkLayout("Adam::step", "the gradients", grads);

    ++m_step;
    const double t = static_cast<double>(m_step);
    const double beta1 = m_options.beta1;
    const double beta2 = m_options.beta2;
    const double bias_correction1 = 1.0 - std::pow(beta1, t);
    const double bias_correction2 = 1.0 - std::pow(beta2, t);

    // Loop constants, rounded to Scalar once as torch does with its Python-float scalars.
    const Scalar neg_step_size = static_cast<Scalar>(-(lr / bias_correction1));
    const Scalar bc2_sqrt = static_cast<Scalar>(std::sqrt(bias_correction2));
    const Scalar eps = static_cast<Scalar>(m_options.eps);
    const Scalar b2 = static_cast<Scalar>(beta2);
    const Scalar one_minus_b2 = static_cast<Scalar>(1.0 - beta2);
    // torch's lerp(m, g, w) is m + w (g - m) for |w| < 0.5 and g - (g - m)(1 - w) otherwise.
    const Scalar w1 = static_cast<Scalar>(1.0 - beta1);
    const Scalar one_minus_w1 = Scalar(1) - w1;
    const bool lerp_from_start = std::abs(w1) < Scalar(0.5);
    // Decoupled weight decay (torch.optim.AdamW); exactly 1 when weight_decay is 0.
    const Scalar decay = static_cast<Scalar>(1.0 - lr * m_options.weight_decay);
    const Scalar gs = static_cast<Scalar>(grad_scale);  // x * 1 == x: no change at 1

    Scalar* const p = params.flat().data();
    const Scalar* const g = grads.flat().data();
    Scalar* const m = m_m.flat().data();
    Scalar* const v = m_v.flat().data();
    const Index n = params.size();

    // Element-wise, so every thread count gives the same bits. GCC vectorises this loop only
    // with -fno-math-errno; otherwise std::sqrt keeps a scalar path that may set errno (about
    // 5x slower: 108 vs 21 ms per step for 37.7M floats on one AVX-512 core).
    SAE_PRAGMA_OMP(parallel for simd schedule(simd : static) if (n >= kParallelMinSize))
    for (Index i = 0; i < n; ++i) {
      const Scalar gi = g[i] * gs;
      const Scalar mi = lerp_from_start ? m[i] + w1 * (gi - m[i]) : gi - (gi - m[i]) * one_minus_w1;
      const Scalar vi = v[i] * b2 + one_minus_b2 * gi * gi;
      const Scalar denom = std::sqrt(vi) / bc2_sqrt + eps;
      m[i] = mi;
      v[i] = vi;
      p[i] = p[i] * decay + neg_step_size * mi / denom;
    }
  }

  /// @brief Number of steps taken (torch's `state["step"]`).
  std::int64_t stepCount() const { return m_step; }

  /// @brief First moment estimate m (torch's `exp_avg`), in the parameters' layout.
  const Parameters& firstMoment() const { return m_m; }

  /// @brief Second moment estimate v (torch's `exp_avg_sq`), in the parameters' layout.
  const Parameters& secondMoment() const { return m_v; }

  /// @brief Restores a state saved from stepCount(), firstMoment() and secondMoment().
  /// @param step step count, >= 0.
  /// @param m    first moment, same layout as the optimizer's parameters.
  /// @param v    second moment, same layout, every value finite and >= 0.
  void setState(std::int64_t step, const Parameters& m, const Parameters& v) {
    require(step >= 0, "Adam::setState: the step count must be >= 0, found ", step);
    checkLayout("Adam::setState", "the first moment", m);
    checkLayout("Adam::setState", "the second moment", v);
    require(m.flat().allFinite(), "Adam::setState: the first moment has non-finite values");
    require(v.flat().allFinite() && (v.size() == 0 || v.flat().minCoeff() >= Scalar(0)),
            "Adam::setState: the second moment must be finite and >= 0");
    m_step = step;
    m_m.flat() = m.flat();
    m_v.flat() = v.flat();
  }

  /// @brief Forgets all state: t = 0 and zero moments (the options are kept).
  void reset() {
    m_step = 0;
    m_m.setZero();
    m_v.setZero();
  }

  /// @brief The hyperparameters.
  const AdamOptions& options() const { return m_options; }

  /// @brief Replaces the hyperparameters (validated first; the state is kept, as when a torch
  /// param_group is edited between steps).
  void setOptions(const AdamOptions& options) {
    options.validate();
    m_options = options;
  }

 private:
  /// Throws ConfigError when `other` does not have the layout of the optimizer's state.
  void checkLayout(const char* where, const char* what, const Parameters& other) const {
    if (m_m.sameLayout(other)) return;
    throw ConfigError(
        detail::concat(where, ": the layout of ", what,
                       " does not match the optimizer's: ", layoutMismatch(m_m, other)));
  }

  /// Names the first difference between the layouts `want` and `got`.
  static std::string layoutMismatch(const Parameters& want, const Parameters& got) {
    const auto& a = want.entries();
    const auto& b = got.entries();
    // The storage order is shown for matrices, and for vectors when it is the difference.
    const auto describe = [](const ParameterInfo& e, bool show_layout) {
      return detail::concat(
          "'", e.name, "' ", Parameters::shapeString(e),
          show_layout ? (e.layout == Layout::RowMajor ? " row-major" : " column-major") : "");
    };
    for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
      if (a[i].name != b[i].name || a[i].shape != b[i].shape || a[i].layout != b[i].layout) {
        const bool show_layout =
            a[i].shape.size() == 2 || b[i].shape.size() == 2 || a[i].layout != b[i].layout;
        return detail::concat("tensor ", i, ": expected ", describe(a[i], show_layout), ", found ",
                              describe(b[i], show_layout));
      }
    }
    return detail::concat("expected ", a.size(), " tensors, found ", b.size());
  }

  AdamOptions m_options;
  std::int64_t m_step = 0;
  Parameters m_m;
  Parameters m_v;
};

}  // namespace sae
