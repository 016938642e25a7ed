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
#include <sae/io/mapped_file.hpp>

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

/// @brief Copies an array's element type, byte order, storage order and shape from `from`
/// (a parsed header or an array's description) to `to` (a view or a description), with the
/// flattened `[rows, cols]` given.
template <typename Target, typename Source>
void copyArrayLayout(Target& to, const Source& from, Index rows, Index cols) {
  to.dtype = from.dtype;
  to.order = from.order;
  to.fortran = from.fortran;
  to.shape = from.shape;
  to.rows = rows;
  to.cols = cols;
}

/// @brief Fortran-order element offsets of the first column of rows [begin, begin + n) of the
/// flattened view of an array of `shape`: element (r, k) lives at offset(r) + k * rows, where
/// offset(r) is the offset of the leading multi-index of row r (rows flatten in C order).
inline std::vector<Index> fortranRowOffsets(const std::vector<Index>& shape, Index begin, Index n) {
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
  return offset;
}

/// @brief The runs of consecutive offsets in `offset`, as (first index, length): rows of a
/// Fortran-order array whose columns can be read in one piece.
inline std::vector<std::pair<Index, Index>> consecutiveRuns(const std::vector<Index>& offset) {
  const Index n = static_cast<Index>(offset.size());
  std::vector<std::pair<Index, Index>> runs;
  for (Index i = 0; i < n;) {
    Index len = 1;
    while (i + len < n &&
           offset[static_cast<std::size_t>(i + len)] == offset[static_cast<std::size_t>(i)] + len) {
      ++len;
    }
    runs.emplace_back(i, len);
    i += len;
  }
  return runs;
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
    static_assert(kFloatOrDouble<Scalar>, "rows are read into float or double matrices");
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

  /// @brief The whole array as a `[rows, cols]` matrix.
  template <typename Scalar>
  RowMatrix<Scalar> readAll() const {
    RowMatrix<Scalar> m(rows, cols);
    readRows<Scalar>(0, rows, m);
    return m;
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
    const std::vector<Index> offset = fortranRowOffsets(shape, begin, n);
    const std::vector<std::pair<Index, Index>> runs = consecutiveRuns(offset);
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

/// @brief A memory-mapped file holding one dense array, read as a `[rows, cols]` matrix: what
/// the readers of single-array files (NpyReader, RawReader) share. The reader's constructor
/// maps the file and fills the view.
class MappedArray {
 public:
  /// @brief Path the reader was opened with.
  const std::string& path() const noexcept { return m_file.path(); }
  /// @brief Rows of the flattened view.
  Index rows() const noexcept { return m_view.rows; }
  /// @brief Columns of the flattened view (the last dimension).
  Index cols() const noexcept { return m_view.cols; }
  /// @brief Element type.
  DType dtype() const noexcept { return m_view.dtype; }
  /// @brief Byte order of the elements (Little for one-byte types).
  ByteOrder byteOrder() const noexcept { return m_view.order; }

  /// @brief Converts rows [begin, end) of the flattened view into `out`.
  /// @tparam Scalar float or double.
  /// @param begin First row. @param end One past the last row.
  /// @param out Output of exactly `end - begin` rows and cols() columns (may be a block of a
  ///        larger row-major matrix). Throws ConfigError for a bad range or output size.
  template <typename Scalar>
  void readRows(Index begin, Index end, Eigen::Ref<RowMatrix<Scalar>> out) const {
    m_view.readRows<Scalar>(begin, end, out);
  }

  /// @brief The whole array as a `[rows, cols]` matrix.
  template <typename Scalar>
  RowMatrix<Scalar> readAll() const {
    return m_view.readAll<Scalar>();
  }

 protected:
  /// Maps `path` (IoError when it cannot be opened or mapped).
  explicit MappedArray(const std::string& path) : m_file(path) {}

  MappedFile m_file;
  ArrayView m_view;
};

}  // namespace sae::io::detail
