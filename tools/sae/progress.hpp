// TerminalProgress: the `sae` program's view of a training run, a Trainer callback (see
// sae/train/callbacks.hpp). On a terminal it redraws one progress line on stderr (step,
// tokens per second, time left, the last logged metrics) at most four times a second; on
// anything else it prints one summary line per metrics line. Quiet, it prints nothing.
#pragma once

#include <unistd.h>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include <sae/train/callbacks.hpp>

namespace sae_cli {

/// @brief "m:ss" or "h:mm:ss" for a duration in seconds; "--:--" when unknown (negative or
/// not finite).
inline std::string formatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  const long s = long(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
  return buf;
}

/// @brief Progress of a training run on stderr (a Trainer callback).
class TerminalProgress {
 public:
  /// @param quiet print nothing.
  explicit TerminalProgress(bool quiet = false)
      : m_quiet(quiet), m_tty(!quiet && ::isatty(2) != 0) {}

  /// Redraws the progress line (terminal only), at most every 0.25 s and at the last step.
  void onStep(const sae::train::TrainProgress& p) {
    if (!m_tty) return;
    const auto now = Clock::now();
    if (m_drawn && std::chrono::duration<double>(now - m_t_draw).count() < 0.25 &&
        p.step != p.until)
      return;
    draw(p);
    m_t_draw = now;
    m_drawn = true;
  }

  /// One summary line per metrics line (not on a terminal, where the progress line shows it).
  void onLog(const sae::train::TrainProgress&, const nlohmann::json& l) {
    if (m_quiet || m_tty) return;
    std::fprintf(stderr, "step %lld  mse %.5g  L0 %.2f  expl.var %.4f  dead %.3f  lr %.2e\n",
                 static_cast<long long>(l["step"].get<std::int64_t>()), l["mse"].get<double>(),
                 l["l0"].get<double>(), l["explained_variance"].get<double>(),
                 l["dead_fraction"].get<double>(), l["lr"].get<double>());
  }

  /// Ends the progress line.
  void onEnd(const sae::train::TrainProgress&, const sae::train::TrainResult&) {
    if (m_tty && m_drawn) std::fprintf(stderr, "\n");
  }

 private:
  using Clock = std::chrono::steady_clock;

  static void draw(const sae::train::TrainProgress& p) {
    const double steps_per_s = p.seconds > 0 ? double(p.step - p.first_step) / p.seconds : 0;
    const double eta = steps_per_s > 0 ? double(p.total_steps - p.step) / steps_per_s : -1;
    std::string metrics;
    if (p.last_log) {
      const nlohmann::json& l = *p.last_log;
      char buf[160];
      std::snprintf(buf, sizeof buf, " | mse %.4g  L0 %.1f  ev %.3f  dead %.3f",
                    l["mse"].get<double>(), l["l0"].get<double>(),
                    l["explained_variance"].get<double>(), l["dead_fraction"].get<double>());
      metrics = buf;
    }
    std::fprintf(stderr, "\r\033[K step %lld/%lld (%.0f%%) | %.0f tok/s | ETA %s%s",
                 static_cast<long long>(p.step), static_cast<long long>(p.total_steps),
                 100.0 * double(p.step) / double(p.total_steps), steps_per_s * double(p.batch_size),
                 formatDuration(eta).c_str(), metrics.c_str());
    std::fflush(stderr);
  }

  bool m_quiet, m_tty;
  bool m_drawn = false;
  Clock::time_point m_t_draw{};
};

}  // namespace sae_cli
