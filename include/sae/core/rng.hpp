/// @file rng.hpp
/// @brief A small, portable, deterministic random number generator.
///
/// The standard library's distributions differ between implementations, so the library draws
/// its numbers itself: xoshiro256** (Blackman & Vigna, 2018) seeded through SplitMix64, with
/// uniform and normal variates derived in a fixed way. The same seed gives the same stream on
/// every platform, and `Rng(seed, stream)` gives independent streams (one per thread).
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

namespace sae {

/// @brief xoshiro256** generator with uniform and normal variates.
class Rng {
 public:
  /// @brief Seeds stream `stream` of seed `seed`.
  explicit Rng(std::uint64_t seed = 0, std::uint64_t stream = 0) { reseed(seed, stream); }

  void reseed(std::uint64_t seed, std::uint64_t stream = 0) {
    std::uint64_t s = seed ^ (0x9E3779B97F4A7C15ULL * (stream + 1));
    for (auto& word : m_state) word = splitMix64(s);
    m_has_spare = false;
  }

  /// @brief Next 64 random bits.
  std::uint64_t nextU64() {
    const std::uint64_t result = rotl(m_state[1] * 5, 7) * 9;
    const std::uint64_t t = m_state[1] << 17;
    m_state[2] ^= m_state[0];
    m_state[3] ^= m_state[1];
    m_state[1] ^= m_state[2];
    m_state[0] ^= m_state[3];
    m_state[2] ^= t;
    m_state[3] = rotl(m_state[3], 45);
    return result;
  }

  /// @brief Uniform double in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(nextU64() >> 11) * 0x1.0p-53; }

  /// @brief Uniform double in [lo, hi).
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

  /// @brief Uniform integer in [0, n); n must be positive.
  std::uint64_t below(std::uint64_t n) {
    // Rejection of the low values that would bias r % n: exact and unbiased.
    const std::uint64_t threshold = (0 - n) % n;
    for (;;) {
      const std::uint64_t r = nextU64();
      if (r >= threshold) return r % n;
    }
  }

  /// @brief Standard normal variate (Marsaglia's polar method).
  double normal() {
    if (m_has_spare) {
      m_has_spare = false;
      return m_spare;
    }
    double u, v, s;
    do {
      u = 2.0 * uniform() - 1.0;
      v = 2.0 * uniform() - 1.0;
      s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    const double factor = std::sqrt(-2.0 * std::log(s) / s);
    m_spare = v * factor;
    m_has_spare = true;
    return u * factor;
  }

  /// @brief The full state, for checkpoints.
  std::array<std::uint64_t, 4> state() const { return m_state; }
  /// @brief Restores a state returned by state(); a pending normal spare is dropped.
  void setState(const std::array<std::uint64_t, 4>& s) {
    m_state = s;
    m_has_spare = false;
  }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static std::uint64_t splitMix64(std::uint64_t& x) {
    std::uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }

  std::array<std::uint64_t, 4> m_state{};
  double m_spare = 0.0;
  bool m_has_spare = false;
};

}  // namespace sae
