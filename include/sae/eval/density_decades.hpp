/// @file density_decades.hpp
/// @brief The log10 feature-density histogram of `sae eval`: latents counted by decade of
/// their firing frequency.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>

#include <Eigen/Core>

namespace sae::eval {

/// @brief Latents per decade of firing frequency (the fraction of tokens where a latent fires).
///
/// Eight buckets, in order: dead (density 0), then log10(density) in [-inf, -6), [-6, -5),
/// [-5, -4), [-4, -3), [-3, -2), [-2, -1) and [-1, 0] (labels "dead", "<1e-6", "1e-6..1e-5",
/// ..., "1e-2..1e-1", ">=1e-1").
struct DensityDecades {
  static constexpr std::size_t kBuckets = 8;  ///< Number of buckets.
  /// Bucket labels, as `sae eval` prints them.
  static constexpr std::array<const char*, kBuckets> kLabels = {
      "dead",       "<1e-6",      "1e-6..1e-5", "1e-5..1e-4",
      "1e-4..1e-3", "1e-3..1e-2", "1e-2..1e-1", ">=1e-1"};
  std::array<std::int64_t, kBuckets> counts{};  ///< Latents in each bucket.

  /// @brief The bucket of one density: 0 for density <= 0 (dead), else by its log10.
  static std::size_t bucketOf(double density) {
    if (!(density > 0)) return 0;
    const double l = std::log10(density);
    if (l < -6) return 1;
    if (l >= -1) return 7;
    return std::min<std::size_t>(7, 2 + static_cast<std::size_t>(std::floor(l + 6)));
  }

  /// @brief Counts the latents of `density` (one firing frequency per latent).
  static DensityDecades of(const Eigen::Ref<const Eigen::VectorXd>& density) {
    DensityDecades d;
    for (Eigen::Index i = 0; i < density.size(); ++i) ++d.counts[bucketOf(density[i])];
    return d;
  }
};

}  // namespace sae::eval
