/// @file density_window.hpp
/// @brief FeatureDensityWindow: per-latent firing frequency over windows of training steps
/// (SAELens's `feature_sampling_window`), saved with the final SAE as `sparsity.safetensors`.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/models/codes.hpp>

namespace sae {
namespace eval {

/// @brief Per-latent firing counts over a window of steps (SAELens's feature sampling window).
///
/// Each window of `window` steps ends with its density (firing count / tokens per latent)
/// kept as the last complete one; density() reports it, or the current window's before the
/// first completes. The state (counts(), last(), scalars()) goes into checkpoints; restore()
/// takes it back after checking it.
class FeatureDensityWindow {
 public:
  /// @param d_sae  number of latents (> 0).
  /// @param window steps per window (>= 1).
  FeatureDensityWindow(Index d_sae, std::int64_t window)
      : m_counts(Eigen::VectorXd::Zero(d_sae)),
        m_last(Eigen::VectorXd::Zero(d_sae)),
        m_window(window) {
    require(d_sae > 0, "FeatureDensityWindow: d_sae must be positive, found ", d_sae);
    require(window >= 1, "FeatureDensityWindow: window must be >= 1, found ", window);
  }

  /// @brief Records one step's codes (DenseCodes, SparseCodes or CsrCodes).
  template <typename Codes>
  void update(const Codes& codes) {
    require(codes.latents() == m_counts.size(), "FeatureDensityWindow: codes have ",
            codes.latents(), " latents, expected ", m_counts.size());
    forEachActive(codes, [&](Index, Index latent, auto) { m_counts[latent] += 1; });
    finishStep(codes.rows());
  }

  /// @brief Records one step from its firing counts per latent over `rows` tokens (a
  /// data-parallel run's counts and rows summed over its ranks).
  void update(const Eigen::VectorXd& fired, Index rows) {
    require(fired.size() == m_counts.size(), "FeatureDensityWindow: ", fired.size(),
            " firing counts, expected ", m_counts.size());
    m_counts += fired;
    finishStep(rows);
  }

  /// @brief Ends a step of `rows` tokens; closes the window after `window` steps.
  void finishStep(Index rows) {
    m_tokens += double(rows);
    if (++m_steps >= m_window) {
      m_last = m_counts / m_tokens;
      m_has_last = true;
      m_counts.setZero();
      m_tokens = 0;
      m_steps = 0;
    }
  }

  /// @brief Density of the last complete window, or of the current one before the first.
  Eigen::VectorXd density() const {
    if (m_has_last) return m_last;
    return m_tokens > 0 ? Eigen::VectorXd(m_counts / m_tokens)
                        : Eigen::VectorXd::Zero(m_counts.size());
  }

  std::int64_t window() const { return m_window; }
  /// @brief State for checkpoints: [counts, last], and (tokens, steps, has_last) as JSON.
  nlohmann::json scalars() const {
    return {{"tokens", m_tokens}, {"steps", m_steps}, {"has_last", m_has_last}};
  }
  /// @brief Firing counts of the current window (checkpoint state).
  const Eigen::VectorXd& counts() const { return m_counts; }
  /// @brief Density of the last complete window, zeros before the first (checkpoint state).
  const Eigen::VectorXd& last() const { return m_last; }

  /// @brief Restores the state saved from counts(), last() and scalars(). Checks it first and
  /// changes nothing when it is invalid: FormatError naming the field (sizes other than d_sae,
  /// missing or mistyped scalars, negative or non-integer counts, counts above the tokens seen,
  /// densities outside [0, 1], a step count outside [0, window)).
  void restore(const Eigen::VectorXd& counts, const Eigen::VectorXd& last,
               const nlohmann::json& s) {
    const Index d_sae = m_counts.size();
    check(counts.size() == d_sae, "counts has ", counts.size(),
          " entries, expected d_sae = ", d_sae);
    check(last.size() == d_sae, "last has ", last.size(), " entries, expected d_sae = ", d_sae);
    check(s.is_object(), "scalars are not a JSON object: ", s.dump());
    for (const char* key : {"tokens", "steps", "has_last"})
      check(s.contains(key), "scalars have no '", key, "'");
    check(s.at("tokens").is_number(), "tokens is not a number: ", s.at("tokens").dump());
    check(s.at("steps").is_number_integer(), "steps is not an integer: ", s.at("steps").dump());
    check(s.at("has_last").is_boolean(), "has_last is not a boolean: ", s.at("has_last").dump());
    const double tokens = s.at("tokens").get<double>();
    const std::int64_t steps = s.at("steps").get<std::int64_t>();
    const bool has_last = s.at("has_last").get<bool>();
    check(std::isfinite(tokens) && tokens >= 0 && tokens == std::floor(tokens),
          "tokens must be a whole number >= 0, found ", tokens);
    check(steps >= 0 && steps < m_window, "steps ", steps, " outside [0, window = ", m_window, ")");
    for (Index i = 0; i < d_sae; ++i) {
      const double c = counts[i], l = last[i];
      check(std::isfinite(c) && c >= 0 && c == std::floor(c) && c <= tokens, "counts[", i,
            "] = ", c, " is not a whole number in [0, tokens = ", tokens, "]");
      check(std::isfinite(l) && l >= 0 && l <= 1, "last[", i, "] = ", l, " is outside [0, 1]");
      check(has_last || l == 0, "last[", i, "] = ", l, " but no window has completed");
    }
    m_counts = counts;
    m_last = last;
    m_tokens = tokens;
    m_steps = steps;
    m_has_last = has_last;
  }

 private:
  template <typename... Parts>
  static void check(bool ok, const Parts&... parts) {
    if (!ok) throw FormatError(sae::detail::concat("feature density window: ", parts...));
  }

  Eigen::VectorXd m_counts, m_last;
  double m_tokens = 0;
  std::int64_t m_steps = 0, m_window;
  bool m_has_last = false;
};

}  // namespace eval
}  // namespace sae
