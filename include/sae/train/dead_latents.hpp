/// @file dead_latents.hpp
/// @brief Dead-latent tracking: a latent is dead when it has not fired for a window of steps.
#pragma once

#include <cstdint>

#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/models/codes.hpp>

namespace sae::train {

/// @brief Counts, per latent, the training steps since it last fired (SAELens's
/// `dead_feature_window`): a latent is dead once that count reaches the window. The mask feeds
/// TopK's AuxK loss through sae::TrainOptions::dead_mask.
class DeadLatentTracker {
 public:
  /// @param d_sae   number of latents.
  /// @param window  steps without firing after which a latent counts as dead (>= 1).
  DeadLatentTracker(Index d_sae, std::int64_t window)
      : m_steps_since(Eigen::Matrix<std::int64_t, Eigen::Dynamic, 1>::Zero(d_sae)),
        m_mask(LatentMask::Zero(d_sae)),
        m_window(window) {
    require(d_sae > 0, "DeadLatentTracker: d_sae must be positive, found ", d_sae);
    require(window >= 1, "DeadLatentTracker: window must be >= 1, found ", window);
  }

  /// @brief Records one step's codes (which latents fired) and updates the mask.
  template <typename Codes>
  void update(const Codes& codes) {
    require(codes.latents() == m_mask.size(), "DeadLatentTracker: codes have ", codes.latents(),
            " latents, expected ", m_mask.size());
    m_steps_since.array() += 1;
    forEachActive(codes, [&](Index, Index latent, auto) { m_steps_since[latent] = 0; });
    for (Index i = 0; i < m_mask.size(); ++i) m_mask[i] = m_steps_since[i] >= m_window ? 1 : 0;
  }

  /// @brief Records one step from its firing counts per latent (`fired[i]` > 0: latent i fired;
  /// a data-parallel run's counts summed over its ranks) and updates the mask.
  void updateFromCounts(const Eigen::VectorXd& fired) {
    require(fired.size() == m_mask.size(), "DeadLatentTracker: ", fired.size(),
            " firing counts, expected ", m_mask.size());
    for (Index i = 0; i < m_mask.size(); ++i) {
      m_steps_since[i] = fired[i] > 0 ? 0 : m_steps_since[i] + 1;
      m_mask[i] = m_steps_since[i] >= m_window ? 1 : 0;
    }
  }

  /// @brief 1 for each latent dead now.
  const LatentMask& mask() const { return m_mask; }
  /// @brief Number of dead latents.
  Index deadCount() const { return Index(m_mask.cast<Index>().sum()); }
  double deadFraction() const { return double(deadCount()) / double(m_mask.size()); }
  std::int64_t window() const { return m_window; }
  /// @brief Steps since each latent last fired (for checkpoints).
  const Eigen::Matrix<std::int64_t, Eigen::Dynamic, 1>& stepsSinceFired() const {
    return m_steps_since;
  }
  /// @brief Restores counters saved from stepsSinceFired() (checkpoint resume) and the mask.
  void setStepsSinceFired(const Eigen::Matrix<std::int64_t, Eigen::Dynamic, 1>& steps) {
    require(steps.size() == m_steps_since.size(), "DeadLatentTracker: ", steps.size(),
            " counters given, expected d_sae = ", m_steps_since.size());
    require(steps.size() == 0 || steps.minCoeff() >= 0, "DeadLatentTracker: counters must be >= 0");
    m_steps_since = steps;
    for (Index i = 0; i < m_mask.size(); ++i) m_mask[i] = m_steps_since[i] >= m_window ? 1 : 0;
  }

 private:
  Eigen::Matrix<std::int64_t, Eigen::Dynamic, 1> m_steps_since;
  LatentMask m_mask;
  std::int64_t m_window;
};

}  // namespace sae::train
