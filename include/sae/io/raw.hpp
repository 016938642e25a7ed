/// @file raw.hpp
/// @brief Headerless binary dumps of a row-major `[rows, cols]` array: RawReader and writeRaw().
///
/// A raw file is just the elements, row after row (what `tensor.numpy().tofile(path)` writes).
/// The element type, byte order and column count come from the caller; the number of rows is
/// the file size divided by the size of one row, which must divide it exactly.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>

#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/io/array_view.hpp>
#include <sae/io/atomic_write.hpp>
#include <sae/io/dtype.hpp>
#include <sae/io/mapped_file.hpp>

namespace sae::io {

/// @brief Memory-mapped reader of a raw row-major dump with a known dtype and column count.
class RawReader {
 public:
  /// @brief Opens `path` and infers the row count from its size.
  /// @param path The file; IoError when it cannot be opened or mapped.
  /// @param dtype Element type (F32, F64, F16, BF16, U8 or Bool).
  /// @param cols Elements per row; ConfigError unless positive.
  /// @param order Byte order of multi-byte elements (little-endian by default).
  /// Throws FormatError when the file size is not a whole number of rows.
  RawReader(const std::string& path, DType dtype, Index cols, ByteOrder order = ByteOrder::Little)
      : m_file(path) {
    require(cols > 0, path, ": RawReader needs a positive column count, found ", cols);
    std::int64_t rowBytes = 0;
    require(detail::checkedMul(cols, static_cast<std::int64_t>(dtypeSize(dtype)), rowBytes), path,
            ": RawReader: ", cols, " columns of ", dtypeName(dtype),
            " are more bytes than fit in 64 bits");
    const std::uint64_t size = m_file.size();
    const std::uint64_t row = static_cast<std::uint64_t>(rowBytes);
    if (size % row != 0) {
      throw FormatError(sae::detail::concat(
          path, ": file size ", size, " bytes is not a multiple of the row size ", row, " bytes (",
          cols, " columns of ", dtypeName(dtype), "): remainder ", size % row, " bytes"));
    }
    m_view.where = path;
    m_view.data = size > 0 ? m_file.data() : nullptr;
    m_view.dtype = dtype;
    m_view.order = order;
    m_view.rows = static_cast<Index>(size / row);
    m_view.cols = cols;
    m_view.shape = {m_view.rows, cols};
  }

  /// @brief Path the reader was opened with.
  const std::string& path() const noexcept { return m_file.path(); }
  /// @brief Number of rows (file size / row size).
  Index rows() const noexcept { return m_view.rows; }
  /// @brief Number of columns, as given.
  Index cols() const noexcept { return m_view.cols; }
  /// @brief Element type, as given.
  DType dtype() const noexcept { return m_view.dtype; }
  /// @brief Byte order, as given.
  ByteOrder byteOrder() const noexcept { return m_view.order; }

  /// @brief Converts rows [begin, end) into `out` (`end - begin` by cols()).
  /// @tparam Scalar float or double. ConfigError for a bad range or output size.
  template <typename Scalar>
  void readRows(Index begin, Index end, Eigen::Ref<RowMatrix<Scalar>> out) const {
    m_view.readRows<Scalar>(begin, end, out);
  }

  /// @brief The whole file as a `[rows, cols]` matrix.
  template <typename Scalar>
  RowMatrix<Scalar> readAll() const {
    RowMatrix<Scalar> m(rows(), cols());
    readRows<Scalar>(0, rows(), m);
    return m;
  }

 private:
  MappedFile m_file;
  detail::ArrayView m_view;
};

/// @brief Writes a matrix as a raw row-major little-endian dump, atomically.
/// @param path Destination; IoError naming it on failure.
/// @param m Matrix or expression of float or double.
/// @param as Element type to store: F32, F64 or BF16 (defaults to the matrix's own type).
template <typename Derived>
void writeRaw(const std::string& path, const Eigen::MatrixBase<Derived>& m,
              DType as = std::is_same_v<typename Derived::Scalar, float> ? DType::F32
                                                                         : DType::F64) {
  using Scalar = typename Derived::Scalar;
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                "writeRaw writes float or double matrices");
  require(as == DType::F32 || as == DType::F64 || as == DType::BF16, path,
          ": writeRaw stores F32, F64 or BF16, not ", dtypeName(as));
  const Eigen::Ref<const RowMatrix<Scalar>> mat(m.derived());
  AtomicFileWriter w(path);
  if (mat.outerStride() == mat.cols()) {
    w.writeElements(mat.data(), mat.size(), as);
  } else {
    for (Index r = 0; r < mat.rows(); ++r) w.writeElements(mat.row(r).data(), mat.cols(), as);
  }
  w.commit();
}

}  // namespace sae::io
