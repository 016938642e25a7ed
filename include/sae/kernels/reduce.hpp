/// @file reduce.hpp
/// @brief Reductions whose result does not depend on how the compiler vectorises them.
#pragma once

#include <sae/core/types.hpp>

namespace sae::kernels {

/// @brief Sum of x[i]^2 over `n` values, in double, in a fixed order: eight running sums over
/// the positions i mod 8 (which the compiler can keep in vector registers), combined pairwise,
/// then the tail. The result is the same whether or not and however widely the loop is
/// vectorised. NaN or infinity when a value is one (or, for double input, when the sum
/// overflows).
template <typename Scalar>
double sumOfSquares(const Scalar* x, Index n) {
  double acc[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  Index i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) {
      const double v = static_cast<double>(x[i + j]);
      acc[j] += v * v;
    }
  }
  double sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < n; ++i) {
    const double v = static_cast<double>(x[i]);
    sum += v * v;
  }
  return sum;
}

}  // namespace sae::kernels
