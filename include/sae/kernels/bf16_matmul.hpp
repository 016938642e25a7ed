/// @file bf16_matmul.hpp
/// @brief bf16 mixed-precision GEMM for the encoder (fp32 master weights, bf16 copies for the
/// product, fp32 accumulation and output), as PyTorch's CPU autocast does, through oneDNN.
///
/// Always available: the fp32 -> bf16 conversion (round to nearest, ties to even; the same bits
/// as io::floatToBfloat16() in io/dtype.hpp, subnormals kept, NaN quieted) in a form compilers
/// vectorise, and bf16Available(). Only when the build defines `SAE_HAS_ONEDNN=1` (CMake option
/// SAE_USE_ONEDNN, on when oneDNN is found): the class Bf16Matmul.
///
/// oneDNN picks its kernel by CPU at run time: AMX tiles (`brg:avx512_core_amx`) where the CPU
/// and kernel expose them, AVX512-BF16 dot products (`brg:avx512_core_bf16`) otherwise, and a
/// slower emulation below that; Bf16Matmul::implementation() names the one in use.
///
/// Measured with benchmarks/bench_bf16 (2026-12-02, the 2-core Sapphire Rapids machine with
/// AMX, 2 threads): oneDNN runs `brg:avx512_core_amx_bf16`, the encoder GEMM at 1,086 GFLOP/s
/// (fp32 Eigen 194), the whole TopK step at 13,400 tokens/s (fp32 6,100: 2.2x); held-out MSE
/// +0.17% after the same 600-step run. Earlier figures (2026-11-22, a shared 2-core machine
/// reporting "AMD EPYC" with AVX512-BF16 and no AMX, so oneDNN ran `brg:avx512_core_bf16`):
/// - speed, TopK d_in 768 / d_sae 24576 / batch 4096 / k 32: encoder GEMM 2.6-3.5x faster than
///   Eigen fp32 (bf16 167-350 GFLOP/s vs fp32 50-114, noisy), whole step 1.9-2.6x; refreshing
///   the bf16 copy of W_enc (19M elements) costs 3.5-19 ms per step, under 2% of the step.
///   On small shapes (d_sae of a few hundred) oneDNN's per-call overhead makes bf16 slower.
/// - accuracy, the same 600-step synthetic TopK run (d_in 128, d_sae 2048, k 16, batch 1024)
///   in both precisions, held-out rows evaluated in fp32: MSE 1.9515 (fp32) vs 1.9560 (bf16,
///   +0.23%), explained variance 0.64114 vs 0.64030, MMCS 0.6549 vs 0.6527. One step at a
///   fixed point (tests/test_bf16.cpp): loss within 1e-6 relative, 99.8% of the selected
///   latents identical, gradient cosine 0.9995.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include <sae/core/config.hpp>
#include <sae/core/enum_names.hpp>
#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/kernels/onednn.hpp>

namespace sae {

/// @brief Precision of the encoder product, the GEMM that dominates encoding and training.
enum class Precision {
  Fp32,  ///< fp32 throughout.
  Bf16   ///< bf16 inputs, fp32 accumulation (oneDNN; AMX where the CPU has it).
};

/// The names of Precision ("fp32", "bf16": `sae train / encode / eval --precision`).
template <>
struct EnumNames<Precision> {
  static constexpr std::pair<Precision, const char*> table[] = {{Precision::Fp32, "fp32"},
                                                                {Precision::Bf16, "bf16"}};
};

namespace kernels {

/// @brief True when this build has the bf16 GEMM (it was compiled with oneDNN).
constexpr bool bf16Available() { return SAE_HAS_ONEDNN != 0; }

/// @brief The message of the ConfigError raised when bf16 is requested without oneDNN.
constexpr const char* kBf16Unavailable =
    "bf16 precision needs oneDNN: rebuild with libdnnl-dev installed";

/// @brief Rounds `n` floats to bfloat16 bits, to nearest with ties to even (NaN quieted).
///
/// Mask arithmetic instead of a branch, so GCC and Clang vectorise the loop; bit-identical to
/// io::floatToBfloat16() (the tests compare them on special values and random bits). Unlike the
/// AVX512-BF16 instruction `vcvtneps2bf16`, subnormal inputs are rounded, not flushed to zero.
inline void floatToBf16(const float* src, std::uint16_t* dst, Index n) {
  for (Index i = 0; i < n; ++i) {
    std::uint32_t u;
    std::memcpy(&u, src + i, sizeof u);
    const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const std::uint32_t quiet = (u >> 16) | 0x0040u;
    const std::uint32_t is_nan = 0u - static_cast<std::uint32_t>((u & 0x7fffffffu) > 0x7f800000u);
    dst[i] = static_cast<std::uint16_t>((quiet & is_nan) | (rounded & ~is_nan));
  }
}

/// @brief Widens `n` bfloat16 values to float (exact).
inline void bf16ToFloat(const std::uint16_t* src, float* dst, Index n) {
  for (Index i = 0; i < n; ++i) {
    const std::uint32_t u = static_cast<std::uint32_t>(src[i]) << 16;
    std::memcpy(dst + i, &u, sizeof u);
  }
}

#if SAE_HAS_ONEDNN

/// @brief `out = x W` with x and W rounded to bfloat16 and fp32 accumulation and output.
///
/// Holds a bf16 copy of a weight matrix `W [K, N]` (refreshed from the fp32 master by
/// setWeights(), which the caller runs after every change of W, e.g. once per training step
/// after the optimizer update) and a reused bf16 buffer for the input rows. multiply() converts
/// a row tile `x [M, K]` and runs a oneDNN matmul whose fp32 result is written straight into the
/// caller's row-major `out [M, N]` (any row stride).
///
/// oneDNN primitives are made on first use of a shape (M, row stride of out, thread count) and
/// kept: a batch cut into tiles needs two (full tiles and the last, shorter one). In the steady
/// state nothing is allocated. oneDNN runs on OpenMP in Debian's build and follows
/// sae::setThreads() / omp_set_num_threads(); a thread-count change makes new primitives.
///
/// Not thread-safe: one object per concurrent user (it lives in the model's Workspace).
class Bf16Matmul {
 public:
  static constexpr bool available() { return true; }

  Bf16Matmul() = default;
  Bf16Matmul(const Bf16Matmul&) = delete;
  Bf16Matmul& operator=(const Bf16Matmul&) = delete;
  Bf16Matmul(Bf16Matmul&&) = default;
  Bf16Matmul& operator=(Bf16Matmul&&) = default;

  /// @brief Rounds `W [K, N]` (column-major: `[N, K]` row-major in memory, as `W_enc`) to the
  /// bf16 copy used by later multiply() calls. Parallel over columns; about 3 bytes moved per
  /// element. A shape change drops the cached primitives.
  void setWeights(const Eigen::Ref<const ColMatrix<float>>& W) {
    const Index K = W.rows(), N = W.cols();
    require(K > 0 && N > 0, "Bf16Matmul::setWeights: empty weight matrix [", K, ", ", N, "]");
    if (K != m_K || N != m_N) {
      m_K = K;
      m_N = N;
      m_weights.assign(static_cast<std::size_t>(K * N), 0);
      m_cache.clear();
      m_weights_mem = dnnl::memory();
    }
    std::uint16_t* w = m_weights.data();
    const float* src = W.data();
    const Index ld = W.outerStride();
    SAE_PRAGMA_OMP(parallel for schedule(static))
    for (Index j = 0; j < N; ++j) floatToBf16(src + j * ld, w + j * K, K);
  }

  /// @brief The bf16 copy of W: element (k, n) at `weights()[n * K + k]`.
  const std::vector<std::uint16_t>& weights() const { return m_weights; }
  Index rows() const { return m_K; }  ///< K of the weights set last.
  Index cols() const { return m_N; }  ///< N of the weights set last.

  /// @brief `out = bf16(x) bf16(W)`, accumulated and written in fp32.
  /// @param x    `[M, K]` row-major fp32 rows (any row stride), M >= 1.
  /// @param out  `[M, N]` row-major fp32 (any row stride), overwritten.
  void multiply(const Eigen::Ref<const RowMatrix<float>>& x, Eigen::Ref<RowMatrix<float>> out) {
    require(m_K > 0, "Bf16Matmul::multiply: setWeights() was not called");
    const Index M = x.rows();
    require(M > 0 && x.cols() == m_K && out.rows() == M && out.cols() == m_N,
            "Bf16Matmul::multiply: shapes x [", M, ", ", x.cols(), "] and out [", out.rows(), ", ",
            out.cols(), "] do not fit weights [", m_K, ", ", m_N, "]");
    const std::size_t need = static_cast<std::size_t>(M * m_K);
    if (m_input.size() < need) m_input.resize(need);
    std::uint16_t* in = m_input.data();
    const Index K = m_K;
    if (M * K >= 65536) {
      SAE_PRAGMA_OMP(parallel for schedule(static))
      for (Index r = 0; r < M; ++r) floatToBf16(x.row(r).data(), in + r * K, K);
    } else {
      for (Index r = 0; r < M; ++r) floatToBf16(x.row(r).data(), in + r * K, K);
    }
    Entry& e = entry(M, out.outerStride());
    e.src.set_data_handle(in);
    e.dst.set_data_handle(out.data());
    e.matmul.execute(m_stream, e.args);
    m_stream.wait();
  }

  /// @brief oneDNN's name of the kernel used for M-row tiles ("brg:avx512_core_amx", ...),
  /// making the primitive if needed; empty before setWeights().
  std::string implementation(Index M) {
    if (m_K == 0) return std::string();
    return entry(M, m_N).impl;
  }

  /// @brief Primitives made so far (one per tile shape and thread count).
  std::size_t cachedPrimitives() const { return m_cache.size(); }

 private:
  using Dims = dnnl::memory::dims;
  using DataType = dnnl::memory::data_type;
  using Tag = dnnl::memory::format_tag;

  struct Entry {
    Index M = 0, ld = 0;
    int threads = 0;
    dnnl::matmul matmul;
    dnnl::memory src, dst;
    std::unordered_map<int, dnnl::memory> args;
    std::string impl;
  };

  Entry& entry(Index M, Index ld) {
    const int threads = maxThreads();
    for (Entry& e : m_cache)
      if (e.M == M && e.ld == ld && e.threads == threads) return e;
    if (!m_engine) {
      m_engine = dnnl::engine(dnnl::engine::kind::cpu, 0);
      m_stream = dnnl::stream(m_engine);
    }
    const dnnl::memory::desc w_md({m_K, m_N}, DataType::bf16, Tag::ba);
    if (!m_weights_mem) m_weights_mem = dnnl::memory(w_md, m_engine, m_weights.data());
    const dnnl::memory::desc src_md({M, m_K}, DataType::bf16, Tag::ab);
    const dnnl::memory::desc dst_md({M, m_N}, DataType::f32, Dims{ld, 1});
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src_md, w_md, dst_md), m_engine);
    Entry e;
    e.M = M;
    e.ld = ld;
    e.threads = threads;
    e.matmul = dnnl::matmul(pd);
    e.src = dnnl::memory(src_md, m_engine, DNNL_MEMORY_NONE);
    e.dst = dnnl::memory(dst_md, m_engine, DNNL_MEMORY_NONE);
    e.args = {{DNNL_ARG_SRC, e.src}, {DNNL_ARG_WEIGHTS, m_weights_mem}, {DNNL_ARG_DST, e.dst}};
    e.impl = pd.impl_info_str();
    m_cache.push_back(std::move(e));
    return m_cache.back();
  }

  Index m_K = 0, m_N = 0;
  std::vector<std::uint16_t> m_weights;  // [N, K] row-major bf16 = W [K, N] column-major
  std::vector<std::uint16_t> m_input;    // [M, K] row-major bf16, grown on demand
  dnnl::engine m_engine;
  dnnl::stream m_stream;
  dnnl::memory m_weights_mem;
  std::vector<Entry> m_cache;
};

#endif  // SAE_HAS_ONEDNN

namespace detail {

/// Placeholder of Bf16MatmulFor when there is no bf16 GEMM for `Scalar`: every use throws
/// ConfigError, so requesting bf16 fails loudly instead of silently running fp32.
template <typename Scalar>
struct Bf16MatmulUnavailable {
  static constexpr bool available() { return false; }
  [[noreturn]] static void fail() {
    if (!bf16Available()) throw ConfigError(kBf16Unavailable);
    throw ConfigError("bf16 precision is available for float models only");
  }
  template <typename W>
  void setWeights(const W&) {
    fail();
  }
  template <typename X, typename Out>
  void multiply(const X&, Out&&) {
    fail();
  }
};

}  // namespace detail

/// @brief Bf16Matmul for float when the build has oneDNN; otherwise a placeholder whose
/// setWeights() / multiply() throw ConfigError (kBf16Unavailable without oneDNN).
#if SAE_HAS_ONEDNN
template <typename Scalar>
using Bf16MatmulFor = std::conditional_t<std::is_same_v<Scalar, float>, Bf16Matmul,
                                         detail::Bf16MatmulUnavailable<Scalar>>;
#else
template <typename Scalar>
using Bf16MatmulFor = detail::Bf16MatmulUnavailable<Scalar>;
#endif

}  // namespace kernels
}  // namespace sae
