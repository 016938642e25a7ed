/// @file gemm.hpp
/// @brief The large fp32 products (encoder forward, dense backward) at BLAS speed: routed to
/// oneDNN's fp32 matmul when the build has it, to Eigen's own GEMM otherwise.
///
/// gemm(c, a, b) computes `c = a b` (or `c += a b`) for any Eigen matrices with direct access
/// (matrices, Maps, blocks, their transposes; either storage order). A float product with every
/// dimension >= kGemmMinDim and at least kGemmMinFlops FLOPs goes to a oneDNN matmul primitive
/// made once per shape, layout, accumulate flag and thread count and kept (per calling thread),
/// so in the steady state nothing is allocated; every other product (double, small, or a build
/// without oneDNN) is Eigen's `c.noalias() = a * b`.
///
/// Why oneDNN and not EIGEN_USE_BLAS + OpenBLAS: measured on the 2-core Sapphire Rapids machine
/// (M 4096, K 768, N 24576, the TopK encoder product), 2 threads: Eigen 3.4 225 GFLOP/s,
/// OpenBLAS 0.3.21 (pthreads) 305, oneDNN 2.6 fp32 (`brg:avx512_core`) 317; 1 thread 129 / 154
/// / 166. oneDNN is already the optional bf16 dependency, runs on the same OpenMP threads as
/// our kernels (OpenBLAS's pthread pool competes with spinning OpenMP workers on 2 cores), and
/// is routed per call site instead of redefining every Eigen product of the program (which
/// EIGEN_USE_BLAS does, for users' own code in the same target too).
///
/// Results: deterministic for a given thread count; they differ from Eigen's in the last bits
/// (another summation order), as two BLAS libraries do.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include <sae/core/config.hpp>
#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/kernels/onednn.hpp>

namespace sae {
namespace kernels {

/// @brief Products with a dimension below this stay on Eigen (oneDNN's per-call cost is a few
/// microseconds; Eigen's small-product paths are as fast there).
constexpr Index kGemmMinDim = 16;
/// @brief Products of fewer FLOPs (2 per multiply-add) stay on Eigen.
constexpr double kGemmMinFlops = 1 << 24;

/// @brief Heap blocks oneDNN 2.6 allocates per primitive execution, at most (its C++ wrapper's
/// argument vector and the library's argument map): the only allocations of a training step
/// whose products run on oneDNN (tests/test_allocations.cpp checks it).
constexpr long kOnednnExecuteAllocations = 8;

/// @brief True when this build routes large float products to oneDNN.
constexpr bool onednnGemmAvailable() { return SAE_HAS_ONEDNN != 0; }

/// @brief Strides of an Eigen direct-access expression, in elements: {row stride, column
/// stride}.
template <typename Xpr>
std::pair<Index, Index> strides(const Xpr& m) {
  constexpr bool row_major = (int(std::decay_t<Xpr>::Flags) & Eigen::RowMajorBit) != 0;
  return row_major ? std::make_pair(Index(m.outerStride()), Index(m.innerStride()))
                   : std::make_pair(Index(m.innerStride()), Index(m.outerStride()));
}

#if SAE_HAS_ONEDNN
namespace detail {

/// A 2-D fp32 operand as oneDNN sees it: dims and strides.
struct GemmLayout {
  Index rows = 0, cols = 0, rs = 0, cs = 0;
  bool operator==(const GemmLayout& o) const {
    return rows == o.rows && cols == o.cols && rs == o.rs && cs == o.cs;
  }
};

/// One cached fp32 matmul primitive with its memory objects (handles set per call).
struct GemmPrimitive {
  GemmLayout a, b, c;
  bool accumulate = false;
  int threads = 0;
  bool usable = false;   // false: oneDNN offered only its reference kernel; use Eigen instead
  bool swapped = false;  // computes c^T = b^T a^T (src b, weights a)
  dnnl::matmul matmul;
  dnnl::memory src, wei, dst, scratch;
  std::unordered_map<int, dnnl::memory> args;
  std::string impl;
};

/// Per-thread cache of primitives, engine and stream. Bounded: a program that keeps changing
/// shapes recycles the oldest entry.
class GemmCache {
 public:
  static GemmCache& local() {
    thread_local GemmCache cache;
    return cache;
  }

  GemmPrimitive& get(const GemmLayout& a, const GemmLayout& b, const GemmLayout& c,
                     bool accumulate) {
    const int threads = maxThreads();
    for (auto& e : m_entries)
      if (e->a == a && e->b == b && e->c == c && e->accumulate == accumulate &&
          e->threads == threads)
        return *e;
    if (!m_engine) {
      m_engine = dnnl::engine(dnnl::engine::kind::cpu, 0);
      m_stream = dnnl::stream(m_engine);
    }
    auto e = std::make_unique<GemmPrimitive>();
    e->a = a;
    e->b = b;
    e->c = c;
    e->accumulate = accumulate;
    e->threads = threads;
    // oneDNN's fast kernels want the output and the weights in some layouts only; where it
    // offers its reference kernel, the transposed problem c^T = b^T a^T often has a fast one.
    if (!make(*e, a, b, c, accumulate, false))
      make(*e, transposed(b), transposed(a), transposed(c), accumulate, true);
    if (m_entries.size() >= kCapacity) m_entries.erase(m_entries.begin());
    m_entries.push_back(std::move(e));
    return *m_entries.back();
  }

  void run(GemmPrimitive& e, const float* a, const float* b, float* c) {
    e.scratch.set_data_handle(m_scratch.data());
    e.src.set_data_handle(const_cast<float*>(e.swapped ? b : a));
    e.wei.set_data_handle(const_cast<float*>(e.swapped ? a : b));
    e.dst.set_data_handle(c);
    e.matmul.execute(m_stream, e.args);
    m_stream.wait();
    executions().fetch_add(1, std::memory_order_relaxed);
  }

  /// Products run through oneDNN by every thread's cache, since the start of the program.
  static std::atomic<std::size_t>& executions() {
    static std::atomic<std::size_t> count{0};
    return count;
  }

  std::size_t size() const { return m_entries.size(); }

 private:
  static GemmLayout transposed(const GemmLayout& m) { return {m.cols, m.rows, m.cs, m.rs}; }

  /// Makes the primitive for src a, weights b, dst c; true when oneDNN has a fast kernel.
  bool make(GemmPrimitive& e, const GemmLayout& a, const GemmLayout& b, const GemmLayout& c,
            bool accumulate, bool swapped) {
    using Dims = dnnl::memory::dims;
    const auto f32 = dnnl::memory::data_type::f32;
    const dnnl::memory::desc a_md({a.rows, a.cols}, f32, Dims{a.rs, a.cs});
    const dnnl::memory::desc b_md({b.rows, b.cols}, f32, Dims{b.rs, b.cs});
    const dnnl::memory::desc c_md({c.rows, c.cols}, f32, Dims{c.rs, c.cs});
    dnnl::primitive_attr attr;
    // Our own scratchpad, grown to the largest primitive's and kept: with the library's,
    // oneDNN allocates it on every execution.
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (accumulate) {
      dnnl::post_ops ops;
      ops.append_sum(1.0f);
      attr.set_post_ops(ops);
    }
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), attr, m_engine);
    e.impl = pd.impl_info_str();
    e.usable = e.impl.find("ref") == std::string::npos;
    if (!e.usable) return false;
    e.swapped = swapped;
    e.matmul = dnnl::matmul(pd);
    e.src = dnnl::memory(a_md, m_engine, DNNL_MEMORY_NONE);
    e.wei = dnnl::memory(b_md, m_engine, DNNL_MEMORY_NONE);
    e.dst = dnnl::memory(c_md, m_engine, DNNL_MEMORY_NONE);
    const dnnl::memory::desc scratch_md = pd.scratchpad_desc();
    if (scratch_md.get_size() > m_scratch.size()) m_scratch.resize(scratch_md.get_size());
    e.scratch = dnnl::memory(scratch_md, m_engine, DNNL_MEMORY_NONE);
    e.args = {{DNNL_ARG_SRC, e.src},
              {DNNL_ARG_WEIGHTS, e.wei},
              {DNNL_ARG_DST, e.dst},
              {DNNL_ARG_SCRATCHPAD, e.scratch}};
    return true;
  }

  static constexpr std::size_t kCapacity = 32;
  dnnl::engine m_engine;
  dnnl::stream m_stream;
  std::vector<std::unique_ptr<GemmPrimitive>> m_entries;
  std::vector<std::uint8_t> m_scratch;  // shared by the primitives (one runs at a time)
};

template <typename Xpr>
GemmLayout layoutOf(const Xpr& m) {
  const auto s = strides(m);
  return {Index(m.rows()), Index(m.cols()), s.first, s.second};
}

}  // namespace detail
#endif  // SAE_HAS_ONEDNN

/// @brief Number of products gemm() has run through oneDNN in this program (0 without it).
inline std::size_t gemmExecutions() {
#if SAE_HAS_ONEDNN
  return detail::GemmCache::executions().load();
#else
  return 0;
#endif
}

/// @brief True when gemm() would run this product (float, [M, K] x [K, N]) through oneDNN.
template <typename Scalar>
constexpr bool gemmUsesOnednn(Index M, Index N, Index K) {
  return onednnGemmAvailable() && std::is_same_v<Scalar, float> && M >= kGemmMinDim &&
         N >= kGemmMinDim && K >= kGemmMinDim &&
         2.0 * double(M) * double(N) * double(K) >= kGemmMinFlops;
}

/// @brief `c = a b`, or `c += a b` when `accumulate`; c must not alias a or b.
///
/// @param c  `[M, N]`: a matrix (resized to that shape) or a Map / block of that shape (any
///           storage order and strides).
/// @param a  `[M, K]` direct-access expression (matrix, Map, block, transpose of one).
/// @param b  `[K, N]` likewise.
template <typename Dst, typename Lhs, typename Rhs>
void gemm(Dst&& c, const Lhs& a, const Rhs& b, bool accumulate = false) {
  using Scalar = typename std::decay_t<Dst>::Scalar;
  static_assert(
      std::is_same_v<Scalar, typename Lhs::Scalar> && std::is_same_v<Scalar, typename Rhs::Scalar>,
      "gemm: operands of one scalar type");
  using Plain = std::decay_t<Dst>;
  if constexpr (std::is_base_of_v<Eigen::PlainObjectBase<Plain>, Plain>)
    c.resize(a.rows(), b.cols());
  require(c.rows() == a.rows() && c.cols() == b.cols() && a.cols() == b.rows(), "gemm: shapes [",
          c.rows(), ", ", c.cols(), "] = [", a.rows(), ", ", a.cols(), "] x [", b.rows(), ", ",
          b.cols(), "] do not fit");
#if SAE_HAS_ONEDNN
  if constexpr (std::is_same_v<Scalar, float>) {
    if (gemmUsesOnednn<float>(a.rows(), b.cols(), a.cols())) {
      auto& cache = detail::GemmCache::local();
      auto& prim =
          cache.get(detail::layoutOf(a), detail::layoutOf(b), detail::layoutOf(c), accumulate);
      if (prim.usable) {
        cache.run(prim, a.data(), b.data(), c.data());
        return;
      }
    }
  }
#endif
  if (accumulate) {
    c.noalias() += a * b;
  } else {
    c.noalias() = a * b;
  }
}

/// @brief oneDNN's name of the kernel gemm() uses for this product, "eigen" when it is not
/// routed to oneDNN (for benchmarks and tests).
template <typename Dst, typename Lhs, typename Rhs>
std::string gemmImplementation(const Dst& c, const Lhs& a, const Rhs& b) {
#if SAE_HAS_ONEDNN
  using Scalar = typename Dst::Scalar;
  if (gemmUsesOnednn<Scalar>(a.rows(), b.cols(), a.cols())) {
    auto& prim = detail::GemmCache::local().get(detail::layoutOf(a), detail::layoutOf(b),
                                                detail::layoutOf(c), false);
    return prim.usable ? prim.impl : std::string("eigen (oneDNN offered ") + prim.impl + ")";
  }
#else
  (void)c;
  (void)a;
  (void)b;
#endif
  return "eigen";
}

}  // namespace kernels
}  // namespace sae
