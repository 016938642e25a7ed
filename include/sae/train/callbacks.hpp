/// @file callbacks.hpp
/// @brief Observers of a training run (after ensmallen's callbacks): objects passed to
/// Trainer::train() that are told about each step, metrics line, evaluation, checkpoint and the
/// end of the call. The library draws nothing itself; a program shows progress with a callback
/// (the `sae` program's TerminalProgress, tools/sae/progress.hpp).
///
/// A callback is any object; it defines only the members it needs, each optional:
/// - `onStep(const TrainProgress&)` after every step; may return bool: true stops the run
///   (as ensmallen's callbacks do: a checkpoint is written, as when a signal stops it);
/// - `onLog(const TrainProgress&, const nlohmann::json& line)` for each line written to
///   metrics.jsonl during training (every log_every steps);
/// - `onEvaluation(const TrainProgress&, const nlohmann::json& metrics)` for each held-out
///   evaluation (every eval_every steps, and the final one);
/// - `onCheckpoint(const TrainProgress&, const std::string& path)` after each checkpoint;
/// - `onEnd(const TrainProgress&, const TrainResult&)` when train() returns normally.
/// Members are called on the callback as passed (a const object gets only its const members).
/// Callbacks observe: what they do never changes the run's numbers.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include <nlohmann/json.hpp>

namespace sae::train {

/// @brief How a call to Trainer::train() ended.
struct TrainResult {
  std::int64_t step = 0;         ///< Steps completed.
  bool completed = false;        ///< Reached total_steps (final SAE saved).
  int signal = 0;                ///< Non-zero: stopped by this signal (checkpoint written).
  bool stopped = false;          ///< Stopped by a callback's onStep (checkpoint written).
  std::string checkpoint;        ///< Last checkpoint written.
  double tokens_per_second = 0;  ///< Over this call.
  nlohmann::json final_metrics;  ///< Held-out (or last-window) metrics at the end.
};

/// @brief Where a run stands, as the callbacks see it.
struct TrainProgress {
  std::int64_t step = 0;         ///< Steps done (the step just finished, counted from 1).
  std::int64_t first_step = 0;   ///< Step at which this call to train() began.
  std::int64_t until = 0;        ///< Step at which this call stops.
  std::int64_t total_steps = 0;  ///< Steps of the whole run.
  std::int64_t batch_size = 0;   ///< Tokens per step.
  double seconds = 0;            ///< Wall time since this call to train() began.
  double lr = 0;                 ///< Learning rate of the last step.
  double loss = 0;               ///< Total loss of the last step's batch.
  /// The last metrics line written (null before the first of this run).
  const nlohmann::json* last_log = nullptr;
};

namespace detail {

// The events: each call is well-formed only when the callback has that member (SFINAE on the
// return type), so a callback defines only what it needs.
inline constexpr auto kOnStep = [](auto& c, const TrainProgress& p) -> decltype(c.onStep(p)) {
  return c.onStep(p);
};
inline constexpr auto kOnLog = [](auto& c, const TrainProgress& p,
                                  const nlohmann::json& line) -> decltype(c.onLog(p, line)) {
  return c.onLog(p, line);
};
inline constexpr auto kOnEvaluation =
    [](auto& c, const TrainProgress& p,
       const nlohmann::json& metrics) -> decltype(c.onEvaluation(p, metrics)) {
  return c.onEvaluation(p, metrics);
};
inline constexpr auto kOnCheckpoint = [](auto& c, const TrainProgress& p, const std::string& path)
    -> decltype(c.onCheckpoint(p, path)) { return c.onCheckpoint(p, path); };
inline constexpr auto kOnEnd = [](auto& c, const TrainProgress& p,
                                  const TrainResult& r) -> decltype(c.onEnd(p, r)) {
  return c.onEnd(p, r);
};

/// Tells callback `c` about `event` when it has the member; true when it returned true (a
/// request to stop, read from onStep only).
template <typename Event, typename C, typename... Args>
bool notify(const Event& event, C& c, const Args&... args) {
  if constexpr (std::is_invocable_v<const Event&, C&, const Args&...>) {
    using R = std::invoke_result_t<const Event&, C&, const Args&...>;
    static_assert(std::is_void_v<R> || std::is_same_v<R, bool>,
                  "a training callback's members (onStep, onLog, onEvaluation, onCheckpoint, "
                  "onEnd) must return void or bool");
    if constexpr (std::is_same_v<R, bool>) {
      return event(c, args...);
    } else {
      event(c, args...);
      return false;
    }
  } else {
    return false;
  }
}

}  // namespace detail

}  // namespace sae::train
