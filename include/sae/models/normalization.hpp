/// @file normalization.hpp
/// @brief ActivationNormalizer: the per-row input / output processing of SAELens's
/// `normalize_activations` setting, applied on the way in and undone on the way out.
///
/// What SAELens's inference SAE does for each mode (sae_lens/saes/sae.py,
/// `_setup_activation_normalization`, `process_sae_in`, `decode`), per row x of `[tokens, d_in]`:
/// ```
/// none                      x' = x                                y_out = y
/// expected_average_only_in  x' = x                                y_out = y
///      (training scales the data by a dataset-wide factor s and folds it into the weights at
///       the end; an inference SAE does nothing at run time. A known s that was not folded can
///       be given here: x' = s x, y_out = y / s, which equals folding it.)
/// constant_norm_rescale     c = sqrt(d_in) / ||x||;  x' = c x;    y_out = y / c
/// layer_norm                mu = mean_j x_j;  sigma = sqrt(sum_j (x_j - mu)^2 / (d_in - 1));
///                           x' = (x - mu) / (sigma + 1e-5);       y_out = y sigma + mu (no eps)
/// ```
/// then `sae_in = x' - b_dec` (if apply_b_dec_to_input), encode, decode to y, and y_out is the
/// reconstruction in the units of x. Every mode is `x' = (x - mean) * in_scale`,
/// `y_out = y * out_scale + mean` with per-row numbers kept in NormalizationStats, so a
/// reconstruction is undone with the statistics of the same rows. The statistics are computed
/// in double.
#pragma once

#include <cmath>
#include <limits>
#include <string>
#include <string_view>

#include <sae/core/config.hpp>
#include <sae/core/enum_names.hpp>
#include <sae/core/error.hpp>
#include <sae/core/types.hpp>

namespace sae {

/// @brief SAELens's `normalize_activations` modes.
enum class NormalizeActivations {
  None,                   ///< "none"
  ExpectedAverageOnlyIn,  ///< "expected_average_only_in" (folded into the weights)
  ConstantNormRescale,    ///< "constant_norm_rescale"
  LayerNorm               ///< "layer_norm"
};

/// SAELens's names of the modes.
template <>
struct EnumNames<NormalizeActivations> {
  static constexpr std::pair<NormalizeActivations, const char*> table[] = {
      {NormalizeActivations::None, "none"},
      {NormalizeActivations::ExpectedAverageOnlyIn, "expected_average_only_in"},
      {NormalizeActivations::ConstantNormRescale, "constant_norm_rescale"},
      {NormalizeActivations::LayerNorm, "layer_norm"}};
};

/// The names of the modes, for messages.
inline constexpr const char* kNormalizeActivationsNames =
    "none, expected_average_only_in, constant_norm_rescale, layer_norm";

/// @brief SAELens's name of a mode.
inline const char* normalizeActivationsName(NormalizeActivations m) { return enumName(m); }

/// @brief The mode named `name`; false when the name is not one of SAELens's four.
inline bool parseNormalizeActivations(std::string_view name, NormalizeActivations& out) {
  return tryParseEnum(name, out);
}

/// @brief Per-row numbers of one normalize() call: x' = (x - mean) * in_scale,
/// y_out = y * out_scale + mean.
struct NormalizationStats {
  Eigen::VectorXd mean;       ///< Subtracted on the way in, added back on the way out.
  Eigen::VectorXd in_scale;   ///< Multiplies the centred input.
  Eigen::VectorXd out_scale;  ///< Multiplies the reconstruction.

  /// @brief Number of rows described.
  Index rows() const { return mean.size(); }
};

/// @brief Applies and undoes SAELens's `normalize_activations` (see the file comment).
class ActivationNormalizer {
 public:
  /// Added to the standard deviation in layer_norm (SAELens's eps; not used on the way out).
  static constexpr double kLayerNormEps = 1e-5;

  /// @param mode  the SAELens mode.
  /// @param scale expected_average_only_in only: a norm scaling factor s that is not folded
  ///              into the weights (x' = s x); 1 (the default) is what an inference SAE does.
  explicit ActivationNormalizer(NormalizeActivations mode = NormalizeActivations::None,
                                double scale = 1.0)
      : m_mode(mode), m_scale(scale) {
    require(std::isfinite(scale) && scale > 0,
            "ActivationNormalizer: the scale must be finite and > 0, found ", scale);
    require(scale == 1.0 || mode == NormalizeActivations::ExpectedAverageOnlyIn,
            "ActivationNormalizer: a scale applies to expected_average_only_in only, not to ",
            normalizeActivationsName(mode));
  }

  NormalizeActivations mode() const { return m_mode; }
  double scale() const { return m_scale; }

  /// @brief True when normalize() and denormalize() leave the data unchanged.
  bool isIdentity() const {
    return m_mode == NormalizeActivations::None ||
           (m_mode == NormalizeActivations::ExpectedAverageOnlyIn && m_scale == 1.0);
  }

  /// @brief Normalises each row of `x` in place and records its numbers in `stats`.
  /// @throws ConfigError for layer_norm with fewer than 2 columns; NumericError for a row
  /// that cannot be normalised (a zero row under constant_norm_rescale, non-finite values).
  template <typename Scalar>
  void normalize(RowMatrix<Scalar>& x, NormalizationStats& stats) const {
    const Index rows = x.rows();
    const Index d = x.cols();
    stats.mean.setZero(rows);
    stats.in_scale.setOnes(rows);
    stats.out_scale.setOnes(rows);
    if (isIdentity()) return;
    if (m_mode == NormalizeActivations::LayerNorm)
      require(d >= 2,
              "layer_norm needs at least 2 columns (an unbiased standard deviation), found ", d);
    bool bad = false;
    SAE_PRAGMA_OMP(parallel for schedule(static) reduction(|| : bad))
    for (Index r = 0; r < rows; ++r) {
      double mean = 0, in = 1, out = 1;
      if (m_mode == NormalizeActivations::ExpectedAverageOnlyIn) {
        in = m_scale;
        out = 1.0 / m_scale;
      } else if (m_mode == NormalizeActivations::ConstantNormRescale) {
        double sq = 0;
        for (Index j = 0; j < d; ++j) sq += double(x(r, j)) * double(x(r, j));
        const double norm = std::sqrt(sq);
        in = std::sqrt(double(d)) / norm;
        out = norm / std::sqrt(double(d));
      } else {
        for (Index j = 0; j < d; ++j) mean += double(x(r, j));
        mean /= double(d);
        double sq = 0;
        for (Index j = 0; j < d; ++j) sq += (double(x(r, j)) - mean) * (double(x(r, j)) - mean);
        const double sigma = std::sqrt(sq / double(d - 1));
        in = 1.0 / (sigma + kLayerNormEps);
        out = sigma;
      }
      if (!std::isfinite(mean) || !std::isfinite(in) || !std::isfinite(out) || !(in > 0)) {
        stats.in_scale[r] = std::numeric_limits<double>::quiet_NaN();  // reported below
        bad = true;
        continue;
      }
      stats.mean[r] = mean;
      stats.in_scale[r] = in;
      stats.out_scale[r] = out;
      for (Index j = 0; j < d; ++j) x(r, j) = Scalar((double(x(r, j)) - mean) * in);
    }
    if (bad) {
      Index r = 0;
      while (!std::isnan(stats.in_scale[r])) ++r;  // the first failed row, left unchanged
      if (!x.row(r).allFinite())
        throw NumericError(detail::concat("input row ", r, " has a non-finite value"));
      throw NumericError(detail::concat("input row ", r, " cannot be normalised (",
                                        normalizeActivationsName(m_mode),
                                        "): its norm is zero or its values overflow"));
    }
  }

  /// @brief Undoes normalize() on reconstructions `y` of the same rows, in place.
  /// @throws ConfigError when `stats` describes a different number of rows.
  template <typename Scalar>
  void denormalize(RowMatrix<Scalar>& y, const NormalizationStats& stats) const {
    require(stats.rows() == y.rows(), "denormalize: statistics of ", stats.rows(),
            " rows for a reconstruction of ", y.rows(), " rows");
    if (isIdentity()) return;
    const Index rows = y.rows();
    SAE_PRAGMA_OMP(parallel for schedule(static))
    for (Index r = 0; r < rows; ++r) {
      for (Index j = 0; j < y.cols(); ++j)
        y(r, j) = Scalar(double(y(r, j)) * stats.out_scale[r] + stats.mean[r]);
    }
  }

 private:
  NormalizeActivations m_mode;
  double m_scale;
};

}  // namespace sae
