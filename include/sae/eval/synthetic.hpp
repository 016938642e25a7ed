/// @file synthetic.hpp
/// @brief Synthetic activations with known ground-truth features in superposition.
///
/// Each token is a sparse sum of `n_features` random unit directions in R^d_in (more features
/// than dimensions: superposition), each firing independently with probability
/// `expected_active / n_features` with a magnitude drawn uniformly from
/// [min_magnitude, max_magnitude], plus isotropic Gaussian noise. An SAE trained on it should
/// recover the directions; meanMaxCosineSimilarity() scores how well.
#pragma once

#include <cmath>
#include <cstdint>

#include <sae/core/error.hpp>
#include <sae/core/rng.hpp>
#include <sae/core/types.hpp>

namespace sae {
namespace eval {

/// @brief Settings of SyntheticFeatures.
struct SyntheticOptions {
  Index d_in = 64;               ///< Width of the activations.
  Index n_features = 256;        ///< Number of ground-truth features.
  double expected_active = 5.0;  ///< Mean number of features firing per token.
  double min_magnitude = 0.5;    ///< Smallest activation of a firing feature.
  double max_magnitude = 1.5;    ///< Largest activation of a firing feature.
  double noise = 0.01;           ///< Standard deviation of the added Gaussian noise.

  void validate() const {
    require(d_in > 0, "synthetic data: d_in must be positive, found ", d_in);
    require(n_features > 0, "synthetic data: n_features must be positive, found ", n_features);
    require(expected_active > 0 && expected_active <= double(n_features),
            "synthetic data: expected_active must be in (0, n_features], found ", expected_active);
    require(std::isfinite(min_magnitude) && std::isfinite(max_magnitude) && min_magnitude >= 0 &&
                max_magnitude >= min_magnitude,
            "synthetic data: need 0 <= min_magnitude <= max_magnitude, found ", min_magnitude,
            " and ", max_magnitude);
    require(std::isfinite(noise) && noise >= 0, "synthetic data: noise must be >= 0, found ",
            noise);
  }
};

/// @brief A deterministic stream of synthetic activation batches.
/// @tparam Scalar float or double.
template <typename Scalar>
class SyntheticFeatures {
 public:
  /// @brief Draws the feature directions from `seed`; batches continue the same stream.
  SyntheticFeatures(const SyntheticOptions& options, std::uint64_t seed)
      : m_options(options), m_rng(seed, 0) {
    m_options.validate();
    m_directions.resize(options.n_features, options.d_in);
    for (Index i = 0; i < m_directions.rows(); ++i) {
      double norm = 0;
      do {
        for (Index j = 0; j < m_directions.cols(); ++j) m_directions(i, j) = Scalar(m_rng.normal());
        norm = double(m_directions.row(i).norm());
      } while (norm == 0);
      m_directions.row(i) /= Scalar(norm);
    }
  }

  const SyntheticOptions& options() const { return m_options; }
  /// @brief Ground-truth feature directions, `[n_features, d_in]`, unit rows.
  const RowMatrix<Scalar>& directions() const { return m_directions; }

  /// @brief Fills `out` with `rows` new tokens.
  void sample(Index rows, RowMatrix<Scalar>& out) { sample(m_rng, rows, out); }

  /// @brief Fills `out` with `rows` tokens drawn from `rng` (the directions are this object's;
  /// the stream is the caller's).
  void sample(Rng& rng, Index rows, RowMatrix<Scalar>& out) const {
    require(rows > 0, "synthetic data: rows must be positive, found ", rows);
    out.resize(rows, m_options.d_in);
    const double p = m_options.expected_active / double(m_options.n_features);
    const double span = m_options.max_magnitude - m_options.min_magnitude;
    for (Index b = 0; b < rows; ++b) {
      auto row = out.row(b);
      for (Index j = 0; j < row.size(); ++j) row[j] = Scalar(m_options.noise * rng.normal());
      for (Index i = 0; i < m_options.n_features; ++i) {
        if (rng.uniform() < p) {
          const double magnitude = m_options.min_magnitude + span * rng.uniform();
          row += Scalar(magnitude) * m_directions.row(i);
        }
      }
    }
  }

  /// @brief `rows` new tokens.
  RowMatrix<Scalar> sample(Index rows) {
    RowMatrix<Scalar> out;
    sample(rows, out);
    return out;
  }

 private:
  SyntheticOptions m_options;
  Rng m_rng;
  RowMatrix<Scalar> m_directions;
};

}  // namespace eval
}  // namespace sae
