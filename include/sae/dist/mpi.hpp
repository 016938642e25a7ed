/// @file mpi.hpp
/// @brief MpiCollective: the Collective of collective.hpp over MPI (OpenMPI or any MPI-3
/// library), and MpiSession, the process's MPI_Init / MPI_Finalize.
///
/// Needs `<mpi.h>` and linking with MPI (CMake: target sae::mpi, option SAE_USE_MPI).
///
/// ## The ordered sum
/// MPI_Allreduce leaves the order of the additions to the library, whose algorithm may change
/// with the message size, the number of ranks or a tuning parameter, and with it the rounding.
/// sum() fixes the order instead, with two data movements that do no arithmetic:
/// 1. the buffer is cut into size() chunks; MPI_Alltoallv sends chunk c of every rank to rank
///    c (a reduce-scatter's traffic);
/// 2. rank c adds the size() copies of its chunk in rank order 0, 1, ..., N-1;
/// 3. MPI_Allgatherv copies every summed chunk to every rank (an all-gather's traffic).
/// Each rank sends 2 (N-1)/N of the buffer, the same bytes as a ring all-reduce, and the
/// result is bitwise identical on every rank and from run to run. Long buffers go through in
/// segments of kSegmentElements, so the extra memory is one segment's receive buffer.
///
/// Errors: the communicator's error handler is MPI_ERRORS_RETURN and a failing call throws
/// sae::IoError naming the call and MPI's message. A rank that dies makes `mpirun` end the
/// others (OpenMPI's default), so no rank waits forever for a dead peer.
#pragma once

// The C API only: OpenMPI's and MPICH's deprecated C++ bindings do not compile cleanly.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include <sae/core/error.hpp>
#include <sae/dist/collective.hpp>

namespace sae::dist {

namespace detail {

/// Throws IoError for an MPI error code (MPI_SUCCESS passes).
inline void checkMpi(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(code, text, &len);
  throw IoError(sae::detail::concat(call, " failed: ", std::string(text, std::size_t(len))));
}

template <typename T>
MPI_Datatype mpiType() {
  if constexpr (std::is_same_v<T, float>) return MPI_FLOAT;
  if constexpr (std::is_same_v<T, double>) return MPI_DOUBLE;
  if constexpr (std::is_same_v<T, std::uint64_t>) return MPI_UINT64_T;
  if constexpr (std::is_same_v<T, char>) return MPI_CHAR;
}

}  // namespace detail

/// @brief MPI_Init_thread (MPI_THREAD_FUNNELED: only the main thread calls MPI) for the
/// lifetime of the object; MPI_Finalize when it ends. A process makes at most one.
class MpiSession {
 public:
  MpiSession(int* argc = nullptr, char*** argv = nullptr) {
    int provided = 0;
    detail::checkMpi(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided),
                     "MPI_Init_thread");
  }
  ~MpiSession() { MPI_Finalize(); }
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  /// @brief Ends every rank of MPI_COMM_WORLD with `code` (after an error on one rank: its
  /// peers may be waiting in a collective it will never join).
  [[noreturn]] static void abort(int code) {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::abort();
  }

  /// @brief True when this process was started by an MPI launcher (mpirun / mpiexec / srun),
  /// judged from the environment variables OpenMPI, PMIx, MPICH and Slurm's PMI set.
  static bool launched() {
    for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"})
      if (std::getenv(v) != nullptr) return true;
    return false;
  }

  /// @brief Ranks of this job on this machine (OpenMPI's OMPI_COMM_WORLD_LOCAL_SIZE), 1 when
  /// unknown: `sae train` divides the cores among them.
  static int localSize() {
    const char* v = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    const int n = v != nullptr ? std::atoi(v) : 1;
    return n > 0 ? n : 1;
  }
};

/// @brief The Collective over an MPI communicator (default MPI_COMM_WORLD); see the file
/// comment for the ordered sum.
class MpiCollective final : public Collective {
 public:
  /// Elements per segment of a sum (4 Mi: 16 MiB of floats).
  static constexpr std::size_t kSegmentElements = std::size_t(1) << 22;

  explicit MpiCollective(MPI_Comm comm = MPI_COMM_WORLD) : m_comm(comm) {
    detail::checkMpi(MPI_Comm_set_errhandler(m_comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    detail::checkMpi(MPI_Comm_rank(m_comm, &m_rank), "MPI_Comm_rank");
    detail::checkMpi(MPI_Comm_size(m_comm, &m_size), "MPI_Comm_size");
  }

  int rank() const override { return m_rank; }
  int size() const override { return m_size; }
  void sum(float* data, std::size_t n) override { orderedSum(data, n); }
  void sum(double* data, std::size_t n) override { orderedSum(data, n); }

  std::vector<std::uint64_t> gather(std::uint64_t value) override {
    std::vector<std::uint64_t> out(static_cast<std::size_t>(m_size));
    detail::checkMpi(MPI_Allgather(&value, 1, MPI_UINT64_T, out.data(), 1, MPI_UINT64_T, m_comm),
                     "MPI_Allgather");
    return out;
  }

  std::vector<std::string> gather(const std::string& text) override {
    require(text.size() <= std::size_t(1) << 30, "MpiCollective::gather: text of ", text.size(),
            " bytes is too long");
    const std::vector<std::uint64_t> lengths = gather(std::uint64_t(text.size()));
    std::vector<int> counts(static_cast<std::size_t>(m_size)),
        displs(static_cast<std::size_t>(m_size));
    std::uint64_t total = 0;
    for (std::size_t r = 0; r < lengths.size(); ++r) {
      counts[r] = int(lengths[r]);
      displs[r] = int(total);
      total += lengths[r];
      require(total <= std::uint64_t(1) << 30, "MpiCollective::gather: texts too long");
    }
    std::vector<char> all(std::size_t(total) + 1);
    detail::checkMpi(MPI_Allgatherv(text.data(), int(text.size()), MPI_CHAR, all.data(),
                                    counts.data(), displs.data(), MPI_CHAR, m_comm),
                     "MPI_Allgatherv");
    std::vector<std::string> out;
    for (std::size_t r = 0; r < lengths.size(); ++r)
      out.emplace_back(all.data() + displs[r], std::size_t(counts[r]));
    return out;
  }

  void broadcast(void* data, std::size_t bytes) override {
    auto* p = static_cast<char*>(data);
    for (std::size_t done = 0; done < bytes;) {
      const std::size_t n = std::min<std::size_t>(bytes - done, std::size_t(1) << 30);
      detail::checkMpi(MPI_Bcast(p + done, int(n), MPI_BYTE, 0, m_comm), "MPI_Bcast");
      done += n;
    }
  }

  TrafficStats traffic() const override { return m_traffic; }

 private:
  template <typename T>
  void orderedSum(T* data, std::size_t n) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::size_t N = static_cast<std::size_t>(m_size);
    if (N > 1) {
      std::vector<int> counts(N), displs(N), rcounts(N), rdispls(N);
      for (std::size_t start = 0; start < n; start += kSegmentElements) {
        const std::size_t len = std::min(kSegmentElements, n - start);
        for (std::size_t c = 0; c < N; ++c) {
          displs[c] = int(c * len / N);
          counts[c] = int((c + 1) * len / N) - displs[c];
        }
        const int mine = counts[std::size_t(m_rank)];
        for (std::size_t r = 0; r < N; ++r) {
          rcounts[r] = mine;
          rdispls[r] = int(r) * mine;
        }
        std::vector<T>& recv = buffer<T>();
        recv.resize(N * std::size_t(mine));
        T* seg = data + start;
        detail::checkMpi(
            MPI_Alltoallv(seg, counts.data(), displs.data(), detail::mpiType<T>(), recv.data(),
                          rcounts.data(), rdispls.data(), detail::mpiType<T>(), m_comm),
            "MPI_Alltoallv");
        T* out = seg + displs[std::size_t(m_rank)];
        // In rank order: out = ((x_0 + x_1) + x_2) + ..., one vectorisable pass per rank.
        std::copy(recv.begin(), recv.begin() + mine, out);
        for (std::size_t r = 1; r < N; ++r) {
          const T* in = recv.data() + r * std::size_t(mine);
          for (int i = 0; i < mine; ++i) out[i] += in[i];
        }
        detail::checkMpi(MPI_Allgatherv(MPI_IN_PLACE, 0, detail::mpiType<T>(), seg, counts.data(),
                                        displs.data(), detail::mpiType<T>(), m_comm),
                         "MPI_Allgatherv");
        // Alltoallv: every chunk but its own; Allgatherv: its own to each of the others.
        m_traffic.bytes_sent += (std::uint64_t(len) - std::uint64_t(mine) +
                                 std::uint64_t(N - 1) * std::uint64_t(mine)) *
                                sizeof(T);
      }
    }
    m_traffic.seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++m_traffic.calls;
  }

  template <typename T>
  std::vector<T>& buffer() {
    if constexpr (std::is_same_v<T, float>)
      return m_float_buffer;
    else
      return m_double_buffer;
  }

  MPI_Comm m_comm;
  int m_rank = 0, m_size = 1;
  std::vector<float> m_float_buffer;
  std::vector<double> m_double_buffer;
  TrafficStats m_traffic;
};

}  // namespace sae::dist
