/// @file metrics.hpp
/// @brief Reconstruction and sparsity metrics, accumulated in double over any number of batches.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/models/codes.hpp>

namespace sae {
namespace eval {

/// @brief Running reconstruction metrics over batches.
///
/// explained variance = 1 - E||x - x_hat||^2 / (E||x||^2 - ||E x||^2), as in DESIGN.md section 4:
/// the denominator is the total variance of the data around its mean over every token seen.
class ReconstructionMetrics {
 public:
  /// @brief Adds a batch of inputs and their reconstructions (same shape).
  template <typename Scalar>
  void add(const Eigen::Ref<const RowMatrix<Scalar>>& x,
           const Eigen::Ref<const RowMatrix<Scalar>>& x_hat) {
    require(x.rows() == x_hat.rows() && x.cols() == x_hat.cols(), "reconstruction has shape [",
            x_hat.rows(), ", ", x_hat.cols(), "], expected the input's [", x.rows(), ", ", x.cols(),
            "]");
    if (m_sum.size() == 0) m_sum = Eigen::VectorXd::Zero(x.cols());
    require(m_sum.size() == x.cols(), "batch has ", x.cols(), " columns, earlier batches had ",
            m_sum.size());
    for (Index r = 0; r < x.rows(); ++r) {
      const auto xr = x.row(r).template cast<double>();
      m_sum += xr.transpose();
      m_sq += xr.squaredNorm();
      m_err += (x_hat.row(r).template cast<double>() - xr).squaredNorm();
    }
    m_tokens += x.rows();
  }

  std::int64_t tokens() const { return m_tokens; }
  /// @brief Mean over tokens of the summed squared error (SAELens's mse_loss).
  double mse() const { return m_tokens ? m_err / double(m_tokens) : 0.0; }
  /// @brief Total variance per token: E||x||^2 - ||E x||^2.
  double variance() const {
    if (!m_tokens) return 0.0;
    const double n = double(m_tokens);
    return m_sq / n - (m_sum / n).squaredNorm();
  }
  /// @brief 1 - mse / variance (0 when the data have no variance).
  double explainedVariance() const {
    const double v = variance();
    return v > 0 ? 1.0 - mse() / v : 0.0;
  }
  /// @brief Fraction of variance unexplained, 1 - explainedVariance().
  double fvu() const { return 1.0 - explainedVariance(); }
  void reset() { *this = ReconstructionMetrics(); }

  /// @brief The running sums as one vector, `[sum of x (d_in values), sum of ||x||^2, sum of
  /// squared errors, tokens]` (zeros before the first batch): sums of these over data-parallel
  /// ranks are the sums of the whole batch (see unpack()).
  Eigen::VectorXd pack(Index d_in) const {
    require(m_sum.size() == 0 || m_sum.size() == d_in, "ReconstructionMetrics::pack: d_in ", d_in,
            ", the batches had ", m_sum.size(), " columns");
    Eigen::VectorXd v = Eigen::VectorXd::Zero(d_in + 3);
    if (m_sum.size() > 0) v.head(d_in) = m_sum;
    v[d_in] = m_sq;
    v[d_in + 1] = m_err;
    v[d_in + 2] = double(m_tokens);
    return v;
  }

  /// @brief The metrics of the sums `v` made by pack().
  static ReconstructionMetrics unpack(const Eigen::VectorXd& v) {
    require(v.size() >= 3, "ReconstructionMetrics::unpack: ", v.size(), " values");
    ReconstructionMetrics m;
    const Index d_in = v.size() - 3;
    m.m_sum = v.head(d_in);
    m.m_sq = v[d_in];
    m.m_err = v[d_in + 1];
    m.m_tokens = std::int64_t(v[d_in + 2]);
    return m;
  }

 private:
  Eigen::VectorXd m_sum;
  double m_sq = 0, m_err = 0;
  std::int64_t m_tokens = 0;
};

/// @brief Firing counts per latent over batches: L0 and feature density.
class FiringStats {
 public:
  explicit FiringStats(Index d_sae = 0) : m_counts(Eigen::VectorXd::Zero(d_sae)) {}

  /// @brief Adds the codes of a batch (DenseCodes, SparseCodes or CsrCodes).
  template <typename Codes>
  void add(const Codes& codes) {
    checkWidth(codes.latents());
    forEachActive(codes, [&](Index, Index latent, auto) { m_counts[latent] += 1; });
    m_tokens += codes.rows();
  }

  /// @brief Adds one batch from its firing counts per latent over `rows` tokens (a
  /// data-parallel run's counts and rows summed over its ranks).
  void add(const Eigen::VectorXd& fired, Index rows) {
    checkWidth(fired.size());
    m_counts += fired;
    m_tokens += rows;
  }

  std::int64_t tokens() const { return m_tokens; }
  /// @brief Mean number of active latents per token.
  double l0() const { return m_tokens ? m_counts.sum() / double(m_tokens) : 0.0; }
  /// @brief Fraction of tokens on which each latent fired.
  Eigen::VectorXd density() const {
    return m_tokens ? Eigen::VectorXd(m_counts / double(m_tokens))
                    : Eigen::VectorXd::Zero(m_counts.size());
  }
  /// @brief Fraction of latents that never fired.
  double deadFraction() const {
    return m_counts.size() ? double((m_counts.array() == 0).count()) / double(m_counts.size())
                           : 0.0;
  }
  void reset() {
    m_counts.setZero();
    m_tokens = 0;
  }

 private:
  void checkWidth(Index d_sae) {
    if (m_counts.size() == 0) m_counts = Eigen::VectorXd::Zero(d_sae);
    require(m_counts.size() == d_sae, "codes have ", d_sae, " latents, expected ", m_counts.size());
  }

  Eigen::VectorXd m_counts;
  std::int64_t m_tokens = 0;
};

/// @brief Mean over the rows of `truth` of the largest cosine similarity with any row of
/// `learned` (MMCS), the usual score of feature recovery on synthetic data.
template <typename A, typename B>
double meanMaxCosineSimilarity(const Eigen::MatrixBase<A>& truth,
                               const Eigen::MatrixBase<B>& learned) {
  require(truth.cols() == learned.cols(), "feature dictionaries have ", truth.cols(), " and ",
          learned.cols(), " columns");
  require(truth.rows() > 0 && learned.rows() > 0, "feature dictionaries must not be empty");
  Eigen::MatrixXd t = truth.template cast<double>();
  Eigen::MatrixXd l = learned.template cast<double>();
  t.rowwise().normalize();
  for (Index i = 0; i < l.rows(); ++i) {
    const double n = l.row(i).norm();
    if (n > 0) l.row(i) /= n;
  }
  const Eigen::MatrixXd cos = t * l.transpose();
  return cos.rowwise().maxCoeff().mean();
}

}  // namespace eval
}  // namespace sae
