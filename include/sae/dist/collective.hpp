/// @file collective.hpp
/// @brief Collective: what a data-parallel training run needs from its communication library
/// (rank, size, an ordered sum, gathers, a broadcast), as an interface the Trainer can hold
/// without depending on MPI; mpi.hpp implements it over MPI.
///
/// Every call is collective: all ranks make the same calls in the same order, with the same
/// sizes. The sums are *ordered*: element i of the result is
/// `((x_0[i] + x_1[i]) + x_2[i]) + ... + x_{N-1}[i]` (x_r: rank r's input), computed once and
/// copied to every rank, so the result is bitwise the same on every rank and from run to run,
/// whatever algorithm the library picks for its collectives.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace sae::dist {

/// @brief Traffic of a Collective's sums since construction (or the last reset): what one rank
/// sent and the wall time it spent inside the calls (waiting for slower ranks included).
struct TrafficStats {
  std::uint64_t bytes_sent = 0;  ///< Bytes this rank sent to others.
  double seconds = 0;            ///< Wall time inside the sums.
  std::int64_t calls = 0;        ///< Sums made.
};

/// @brief The collectives of a data-parallel run (see the file comment).
class Collective {
 public:
  virtual ~Collective() = default;
  /// @brief This process's rank, in [0, size()).
  virtual int rank() const = 0;
  /// @brief Number of ranks.
  virtual int size() const = 0;
  /// @brief Ordered elementwise sum of `n` floats across ranks, in place.
  virtual void sum(float* data, std::size_t n) = 0;
  /// @brief Ordered elementwise sum of `n` doubles across ranks, in place.
  virtual void sum(double* data, std::size_t n) = 0;
  /// @brief Every rank's `value`, indexed by rank.
  virtual std::vector<std::uint64_t> gather(std::uint64_t value) = 0;
  /// @brief Every rank's `text`, indexed by rank.
  virtual std::vector<std::string> gather(const std::string& text) = 0;
  /// @brief Rank 0's `bytes` bytes at `data`, copied into `data` on every rank.
  virtual void broadcast(void* data, std::size_t bytes) = 0;
  /// @brief The traffic of the sums so far.
  virtual TrafficStats traffic() const = 0;
};

/// @brief 64-bit checksum of `bytes` bytes (FNV-1a over 8-byte words, then a final mix), for
/// comparing replicas' weights: equal data give equal sums; any change of a word changes it
/// with overwhelming probability.
inline std::uint64_t checksum(const void* data, std::size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  std::uint64_t h = 0xcbf29ce484222325ULL;
  std::size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    std::uint64_t w = 0;
    for (int b = 0; b < 8; ++b) w |= std::uint64_t(p[i + std::size_t(b)]) << (8 * b);
    h = (h ^ w) * 0x100000001b3ULL;
  }
  for (; i < bytes; ++i) h = (h ^ p[i]) * 0x100000001b3ULL;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  return h;
}

}  // namespace sae::dist
