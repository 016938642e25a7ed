/// @file array_view.hpp
/// @brief Internals shared by the array readers: the flattened `[rows, cols]` view of a dense
/// N-D array inside a mapped file, checked shape arithmetic, and row reading with conversion.
///
/// Every reader presents its array as a matrix: the last dimension is the columns and all
/// leading dimensions flatten into rows in C order (`[batch, seq, d]` -> `[batch*seq, d]`); a 1-D
/// array of n elements is one row `[1, n]` and a 0-D array is `[1, 1]`. The array itself may be
/// stored in C or Fortran order.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <sae/core/config.hpp>
#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/io/dtype.hpp>

namespace sae::io::detail {

/// `a * b` into `out`; false when it overflows (or a factor is negative).
inline bool checkedMul(std::int64_t a, std::int64_t b, std::int64_t& out) {
  if (a < 0 || b < 0) return false;
  return !__builtin_mul_overflow(a, b, &out);
}

/// Formats a shape as numpy does, "(3, 4)" / "(7,)", or as a list, "[3, 4]".
inline std::string shapeString(const std::vector<Index>& shape, bool pythonTuple) {
  std::string s = pythonTuple ? "(" : "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (pythonTuple && shape.size() == 1) s += ",";
  s += pythonTuple ? ")" : "]";
  return s;
}

/// Sizes derived from a shape with checked arithmetic.
struct FlatShape {
  Index rows = 1;          ///< Product of the leading dimensions (1 for 0-D and 1-D).
  Index cols = 1;          ///< Last dimension (1 for 0-D).
  Index elements = 1;      ///< rows * cols.
  std::int64_t bytes = 0;  ///< elements * item size.
};

/// @brief Flattens a shape of non-negative dimensions (already checked by the caller) to
/// `[rows, cols]`. Throws FormatError `"<where>: shape ... has more elements than fit in 64 bits"`
/// (or more bytes) when a product overflows: sizes read from a file are untrusted.
inline FlatShape flattenShape(const std::vector<Index>& shape, DType dtype,
                              const std::string& where, bool pythonTuple) {
  FlatShape f;
  const std::size_t nd = shape.size();
  for (std::size_t i = 0; i + 1 < nd; ++i) {
    if (!checkedMul(f.rows, shape[i], f.rows)) {
      throw FormatError(sae::detail::concat(where, ": shape ", shapeString(shape, pythonTuple),
                                            " has more elements than fit in 64 bits"));
    }
  }
  f.cols = nd == 0 ? 1 : shape[nd - 1];
  if (!checkedMul(f.rows, f.cols, f.elements)) {
    throw FormatError(sae::detail::concat(where, ": shape ", shapeString(shape, pythonTuple),
                                          " has more elements than fit in 64 bits"));
  }
  if (!checkedMul(f.elements, static_cast<std::int64_t>(dtypeSize(dtype)), f.bytes)) {
    throw FormatError(sae::detail::concat(where, ": shape ", shapeString(shape, pythonTuple),
                                          " of ", dtypeName(dtype),
                                          " needs more bytes than fit in 64 bits"));
  }
  return f;
}

/// @brief A dense array inside a mapped file, seen as a `[rows, cols]` matrix.
/// The owner has checked that `data` holds `rows * cols` elements.
struct ArrayView {
  std::string where;                    ///< File (and tensor) named in messages.
  const unsigned char* data = nullptr;  ///< First element (nullptr when there are none).
  DType dtype = DType::F32;
  ByteOrder order = ByteOrder::Little;
  bool fortran = false;      ///< Column-major (Fortran) storage of the N-D array.
  std::vector<Index> shape;  ///< Shape as stored.
  Index rows = 0;
  Index cols = 0;

  /// @brief Converts rows [begin, end) into `out` (`end - begin` by `cols`).
  /// Throws ConfigError for a range outside [0, rows] or an output of the wrong size.
  template <typename Scalar>
  void readRows(Index begin, Index end, Eigen::Ref<RowMatrix<Scalar>> out) const {
    static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                  "rows are read into float or double matrices");
    if (begin < 0 || end < begin || end > rows) {
      throw ConfigError(sae::detail::concat(where, ": readRows range [", begin, ", ", end,
                                            ") is out of bounds for ", rows, " rows"));
    }
    const Index n = end - begin;
    if (out.rows() != n || out.cols() != cols) {
      throw ConfigError(sae::detail::concat(where, ": readRows output is ", out.rows(), "x",
                                            out.cols(), ", expected ", n, "x", cols));
    }
    if (n == 0 || cols == 0) return;
    if (fortran) {
      readFortran<Scalar>(begin, n, out);
    } else {
      readC<Scalar>(begin, n, out);
    }
  }

 private:
  template <typename Scalar>
  void readC(Index begin, Index n, Eigen::Ref<RowMatrix<Scalar>>& out) const {
    const Index isz = static_cast<Index>(dtypeSize(dtype));
    const unsigned char* src = data + begin * cols * isz;
    Scalar* dst = out.data();
    const DType t = dtype;
    const ByteOrder o = order;
    if (out.outerStride() == cols) {
      // One contiguous block: convert it in chunks, in parallel when it is large.
      constexpr Index kChunk = Index(1) << 16;
      const Index total = n * cols;
      const Index chunks = (total + kChunk - 1) / kChunk;
      SAE_PRAGMA_OMP(parallel for schedule(static) if (chunks >= 8))
      for (Index c = 0; c < chunks; ++c) {
        const Index first = c * kChunk;
        convertElements(src + first * isz, t, o, std::min(kChunk, total - first), dst + first);
      }
    } else {
      const Index stride = out.outerStride();
      const Index c = cols;
      SAE_PRAGMA_OMP(parallel for schedule(static) if (n * c >= (Index(1) << 19)))
      for (Index r = 0; r < n; ++r) convertElements(src + r * c * isz, t, o, c, dst + r * stride);
    }
  }

  template <typename Scalar>
  void readFortran(Index begin, Index n, Eigen::Ref<RowMatrix<Scalar>>& out) const {
    // Element (r, k) of the flattened view lives at offset(r) + k * rows, where offset(r) is the
    // Fortran-order offset of the leading multi-index of row r (rows flatten in C order).
    const std::size_t lead = shape.empty() ? 0 : shape.size() - 1;
    std::vector<Index> offset(static_cast<std::size_t>(n));
    std::vector<Index> idx(lead);
    for (Index i = 0; i < n; ++i) {
      Index r = begin + i;
      Index off = 0;
      Index stride = 1;
      for (std::size_t d = lead; d-- > 0;) {
        idx[d] = r % shape[d];
        r /= shape[d];
      }
      for (std::size_t d = 0; d < lead; ++d) {
        off += idx[d] * stride;
        stride *= shape[d];
      }
      offset[static_cast<std::size_t>(i)] = off;
    }
    // Rows whose offsets are consecutive form runs that convert in one call per column.
    std::vector<std::pair<Index, Index>> runs;  // (first row, length)
    for (Index i = 0; i < n;) {
      Index len = 1;
      while (i + len < n && offset[static_cast<std::size_t>(i + len)] ==
                                offset[static_cast<std::size_t>(i)] + len) {
        ++len;
      }
      runs.emplace_back(i, len);
      i += len;
    }
    const Index isz = static_cast<Index>(dtypeSize(dtype));
    Vector<Scalar> column(n);
    for (Index k = 0; k < cols; ++k) {
      for (const auto& [first, len] : runs) {
        const Index elem = offset[static_cast<std::size_t>(first)] + k * rows;
        convertElements(data + elem * isz, dtype, order, len, column.data() + first);
      }
      out.col(k) = column;
    }
  }
};

}  // namespace sae::io::detail
