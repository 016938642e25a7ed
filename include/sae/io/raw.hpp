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
class RawReader : public detail::MappedArray {
 public:
  /// @brief Opens `path` and infers the row count from its size.
  /// @param path The file; IoError when it cannot be opened or mapped.
  /// @param dtype Element type (F32, F64, F16, BF16, U8 or Bool).
  /// @param cols Elements per row; ConfigError unless positive.
  /// @param order Byte order of multi-byte elements (little-endian by default).
  /// Throws FormatError when the file size is not a whole number of rows.
  RawReader(const std::string& path, DType dtype, Index cols, ByteOrder order = ByteOrder::Little)
      : MappedArray(path) {
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
};

/// @brief Writes a matrix as a raw row-major little-endian dump, atomically.
/// @param path Destination; IoError naming it on failure.
/// @param m Matrix or expression of float or double.
/// @param as Element type to store: F32, F64 or BF16 (defaults to the matrix's own type).
template <typename Derived>
void writeRaw(const std::string& path, const Eigen::MatrixBase<Derived>& m,
              DType as = kDTypeOf<typename Derived::Scalar>) {
  using Scalar = typename Derived::Scalar;
  static_assert(kFloatOrDouble<Scalar>, "writeRaw writes float or double matrices");
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
