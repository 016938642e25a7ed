/// @file clip.hpp
/// @brief Global gradient-norm clipping, as `torch.nn.utils.clip_grad_norm_`.
///
/// SAELens's trainer calls `clip_grad_norm_(sae.parameters(), 1.0)` between `backward()` and
/// `optimizer.step()` on every step: one L2 norm over every scalar of every parameter's
/// gradient (not one norm per tensor), and all gradients scaled by the same factor when that
/// norm is too large.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <sae/core/config.hpp>
#include <sae/core/error.hpp>
#include <sae/core/parameters.hpp>
#include <sae/kernels/reduce.hpp>

namespace sae {

namespace detail {

/// Elements per partial sum of globalGradNorm(). The chunking, not the thread count, fixes the
/// order of the floating-point additions.
inline constexpr Index kGradNormChunk = Index(1) << 14;
/// Below this many scalars, gradient scaling runs on one thread.
inline constexpr Index kGradScaleParallelMin = Index(1) << 15;

/// Describes why the gradient norm is not finite: the first non-finite gradient, or overflow.
template <typename Scalar>
std::string nonFiniteGradient(const ParameterSet<Scalar>& grads) {
  for (const ParameterInfo& e : grads.entries()) {
    const auto g = grads.flat(e.name);
    for (Index i = 0; i < e.size; ++i) {
      if (!std::isfinite(g[i])) {
        const char* what = std::isnan(g[i]) ? "NaN" : (g[i] > 0 ? "+infinity" : "-infinity");
        return concat("the gradient of '", e.name, "' is ", what, " at flat index ", i);
      }
    }
  }
  return "the sum of squared gradients overflowed";
}

}  // namespace detail

/// @brief L2 norm of all gradients together: sqrt of the sum of g^2 over every scalar of every
/// tensor, accumulated in double.
///
/// The buffer is cut into fixed chunks of detail::kGradNormChunk elements whose partial sums
/// are computed in parallel and added in chunk order, so the result is bitwise the same for
/// any number of threads. A NaN or infinite gradient gives a NaN or infinite result.
/// @tparam Scalar float or double.
/// @param grads the gradients.
template <typename Scalar>
double globalGradNorm(const ParameterSet<Scalar>& grads) {
  const Scalar* const g = grads.flat().data();
  const Index n = grads.size();
  const Index chunks = (n + detail::kGradNormChunk - 1) / detail::kGradNormChunk;
  // Kept per thread so that steady-state training steps do not allocate.
  // The calling thread's buffer; the workers write into it through `out`.
  thread_local std::vector<double> partial;
  partial.resize(static_cast<std::size_t>(chunks));
  double* const out = partial.data();
  SAE_PRAGMA_OMP(parallel for schedule(static) if (chunks > 1))
  for (Index c = 0; c < chunks; ++c) {
    const Index begin = c * detail::kGradNormChunk;
    out[c] = kernels::sumOfSquares(g + begin, std::min(detail::kGradNormChunk, n - begin));
  }
  double total = 0.0;
  for (const double s : partial) total += s;
  return std::sqrt(total);
}

/// @brief The factor clipGradNorm() scales the gradients by, without scaling them: with
/// N = globalGradNorm(grads) and c = max_norm / (N + 1e-6), c when c < 1 and 1 otherwise.
///
/// For a fused update: `Adam::step(params, grads, lr, clipCoefficient(grads, 1.0))` computes
/// `clipGradNorm(grads, 1.0)` then `Adam::step(params, grads, lr)` without the pass that writes
/// the scaled gradients (one read and one write of every gradient fewer); the same values to
/// rounding (the compiler may fuse the scaling into the next subtraction), the same bits when
/// nothing is clipped.
/// @param grads    the gradients (unchanged).
/// @param max_norm largest allowed norm, finite and > 0; ConfigError otherwise.
/// @param norm     when non-null, receives N.
/// @throws NumericError when N is NaN or infinite (a non-finite gradient, or overflow).
template <typename Scalar>
double clipCoefficient(const ParameterSet<Scalar>& grads, double max_norm, double* norm = nullptr) {
  require(std::isfinite(max_norm) && max_norm > 0.0,
          "clipGradNorm: max_norm must be finite and > 0, found ", max_norm);
  const double n = globalGradNorm(grads);
  if (!std::isfinite(n)) {
    throw NumericError(detail::concat("clipGradNorm: the global gradient norm is ",
                                      std::isnan(n) ? "NaN" : "infinite", ": ",
                                      detail::nonFiniteGradient(grads)));
  }
  if (norm) *norm = n;
  const double coef = max_norm / (n + 1e-6);
  return coef < 1.0 ? coef : 1.0;
}

/// @brief Clips the gradients to a global L2 norm, as `torch.nn.utils.clip_grad_norm_`.
///
/// With N = globalGradNorm(grads) and c = max_norm / (N + 1e-6): when c < 1 every gradient is
/// multiplied by c, otherwise nothing changes. The 1e-6 is torch's, so a norm exactly equal to
/// max_norm is still scaled, by max_norm / (max_norm + 1e-6).
/// @tparam Scalar float or double.
/// @param grads    the gradients, scaled in place.
/// @param max_norm largest allowed norm, finite and > 0 (SAELens uses 1.0); ConfigError otherwise.
/// @return N, the norm before clipping (what torch returns).
/// @throws NumericError when N is NaN or infinite (a non-finite gradient, or overflow); the
/// gradients are then left unchanged.
template <typename Scalar>
double clipGradNorm(ParameterSet<Scalar>& grads, double max_norm) {
  double norm = 0;
  const double coef = clipCoefficient(grads, max_norm, &norm);
  if (coef < 1.0) {
    const Scalar c = static_cast<Scalar>(coef);
    Scalar* const g = grads.flat().data();
    const Index n = grads.size();
    SAE_PRAGMA_OMP(parallel for simd schedule(simd : static) if (n >= detail::kGradScaleParallelMin))
    for (Index i = 0; i < n; ++i) g[i] *= c;
  }
  return norm;
}

}  // namespace sae
