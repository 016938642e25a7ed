/// @file parameters.hpp
/// @brief ParameterSet: named tensors stored in one contiguous buffer.
///
/// A model's parameters, its gradients and an optimizer's moment estimates all share one
/// layout: a list of named tensors (SAELens names and logical shapes, e.g. `W_enc [d_in, d_sae]`)
/// packed into a single flat vector. Element-wise work such as Adam or the global gradient norm
/// is then one loop over one buffer, and files map onto names 1:1.
///
/// A 2-D tensor is stored either row-major or column-major (see Layout); its logical shape is
/// the same either way. Storage order is an internal choice made for speed (`W_enc` is
/// column-major so that the weights of one latent are contiguous); rowMajorCopy() and
/// assignRowMajor() convert to and from the row-major order that files use.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <sae/core/error.hpp>
#include <sae/core/types.hpp>

namespace sae {

/// Physical storage order of a 2-D tensor inside a ParameterSet.
enum class Layout { RowMajor, ColMajor };

/// @brief One named tensor of a ParameterSet.
struct ParameterInfo {
  std::string name;          ///< SAELens name, e.g. "W_enc".
  std::vector<Index> shape;  ///< Logical shape: one or two dimensions.
  Layout layout;             ///< Storage order (meaningful for 2-D tensors only).
  Index offset;              ///< First element in the flat buffer.
  Index size;                ///< Number of elements.

  Index rows() const { return shape.size() == 2 ? shape[0] : 1; }
  Index cols() const { return shape.size() == 2 ? shape[1] : shape[0]; }
};

/// @brief Named tensors in one contiguous buffer.
/// @tparam Scalar_ float or double.
template <typename Scalar_>
class ParameterSet {
 public:
  using Scalar = Scalar_;
  using FlatMap = Eigen::Map<Vector<Scalar>>;
  using ConstFlatMap = Eigen::Map<const Vector<Scalar>>;

  ParameterSet() = default;

  /// @brief A set that records the tensors added to it (names, shapes, layouts, offsets) but
  /// holds no values: what a model of a config consists of, without allocating it (for
  /// checking a file's tensors before reading them). Its data accessors throw ConfigError.
  static ParameterSet layoutOnly() {
    ParameterSet p;
    p.m_layout_only = true;
    return p;
  }

  /// @brief Appends a zero-initialised tensor of the given logical shape (1 or 2 dimensions).
  void add(std::string name, std::vector<Index> shape, Layout layout = Layout::RowMajor) {
    require(shape.size() == 1 || shape.size() == 2, "parameter '", name,
            "': expected 1 or 2 dimensions, found ", shape.size());
    require(!contains(name), "parameter '", name, "' added twice");
    Index size = 1;
    for (Index d : shape) {
      require(d > 0, "parameter '", name, "': every dimension must be positive, found ", d);
      size *= d;
    }
    const Index offset = m_entries.empty() ? 0 : m_entries.back().offset + m_entries.back().size;
    m_entries.push_back(ParameterInfo{std::move(name), std::move(shape), layout, offset, size});
    if (m_layout_only) return;
    m_data.conservativeResize(offset + size);
    m_data.segment(offset, size).setZero();
  }

  /// @brief True when a tensor of that name exists.
  bool contains(std::string_view name) const { return find(name) != nullptr; }

  /// @brief Description of tensor `name`; throws ConfigError listing the names that exist.
  const ParameterInfo& info(std::string_view name) const {
    const ParameterInfo* p = find(name);
    if (p == nullptr) {
      std::string names;
      for (const auto& e : m_entries) names += (names.empty() ? "" : ", ") + e.name;
      throw ConfigError(detail::concat("no parameter named '", name, "' (have: ", names, ")"));
    }
    return *p;
  }

  /// @brief All tensors, in the order they were added.
  const std::vector<ParameterInfo>& entries() const { return m_entries; }

  /// @brief Total number of scalars.
  Index size() const {
    return m_entries.empty() ? 0 : m_entries.back().offset + m_entries.back().size;
  }

  /// @brief The whole buffer.
  FlatMap flat() {
    checkStorage();
    return FlatMap(m_data.data(), m_data.size());
  }
  ConstFlatMap flat() const {
    checkStorage();
    return ConstFlatMap(m_data.data(), m_data.size());
  }

  /// @brief Tensor `name` as a flat vector in storage order.
  FlatMap flat(std::string_view name) {
    const ParameterInfo& e = dataInfo(name);
    return FlatMap(m_data.data() + e.offset, e.size);
  }
  ConstFlatMap flat(std::string_view name) const {
    const ParameterInfo& e = dataInfo(name);
    return ConstFlatMap(m_data.data() + e.offset, e.size);
  }

  /// @brief A 2-D row-major tensor as a matrix.
  Eigen::Map<RowMatrix<Scalar>> rowMajor(std::string_view name) {
    const ParameterInfo& e = matrixInfo(name, Layout::RowMajor);
    return Eigen::Map<RowMatrix<Scalar>>(m_data.data() + e.offset, e.shape[0], e.shape[1]);
  }
  Eigen::Map<const RowMatrix<Scalar>> rowMajor(std::string_view name) const {
    const ParameterInfo& e = matrixInfo(name, Layout::RowMajor);
    return Eigen::Map<const RowMatrix<Scalar>>(m_data.data() + e.offset, e.shape[0], e.shape[1]);
  }

  /// @brief A 2-D column-major tensor as a matrix.
  Eigen::Map<ColMatrix<Scalar>> colMajor(std::string_view name) {
    const ParameterInfo& e = matrixInfo(name, Layout::ColMajor);
    return Eigen::Map<ColMatrix<Scalar>>(m_data.data() + e.offset, e.shape[0], e.shape[1]);
  }
  Eigen::Map<const ColMatrix<Scalar>> colMajor(std::string_view name) const {
    const ParameterInfo& e = matrixInfo(name, Layout::ColMajor);
    return Eigen::Map<const ColMatrix<Scalar>>(m_data.data() + e.offset, e.shape[0], e.shape[1]);
  }

  /// @brief Copy of tensor `name` in row-major order, as `[rows, cols]` (`[1, n]` for 1-D).
  RowMatrix<Scalar> rowMajorCopy(std::string_view name) const {
    const ParameterInfo& e = dataInfo(name);
    if (e.shape.size() == 2 && e.layout == Layout::ColMajor) return colMajor(name);
    return Eigen::Map<const RowMatrix<Scalar>>(m_data.data() + e.offset, e.rows(), e.cols());
  }

  /// @brief Overwrites tensor `name` from row-major values of its logical shape
  /// (`[1, n]` or `[n, 1]` accepted for 1-D tensors).
  void assignRowMajor(std::string_view name, const Eigen::Ref<const RowMatrix<Scalar>>& values) {
    const ParameterInfo& e = dataInfo(name);
    const bool vector_ok = e.shape.size() == 1 && values.size() == e.size &&
                           (values.rows() == 1 || values.cols() == 1);
    const bool matrix_ok =
        e.shape.size() == 2 && values.rows() == e.shape[0] && values.cols() == e.shape[1];
    require(vector_ok || matrix_ok, "parameter '", e.name, "': expected shape ", shapeString(e),
            ", found [", values.rows(), ", ", values.cols(), "]");
    if (e.shape.size() == 2 && e.layout == Layout::ColMajor) {
      colMajor(name) = values;
    } else {
      Scalar* dst = m_data.data() + e.offset;
      for (Index r = 0; r < values.rows(); ++r)
        for (Index c = 0; c < values.cols(); ++c) *dst++ = values(r, c);
    }
  }

  /// @brief A set with the same tensors and layout, all zeros (for gradients, Adam moments).
  ParameterSet zerosLike() const {
    ParameterSet out = *this;
    out.m_data.setZero();
    return out;
  }

  /// @brief True when `other` has the same names, shapes and layouts in the same order.
  bool sameLayout(const ParameterSet& other) const {
    if (m_entries.size() != other.m_entries.size()) return false;
    for (std::size_t i = 0; i < m_entries.size(); ++i) {
      const auto& a = m_entries[i];
      const auto& b = other.m_entries[i];
      if (a.name != b.name || a.shape != b.shape || a.layout != b.layout) return false;
    }
    return true;
  }

  /// @brief Sets every scalar to zero.
  void setZero() { m_data.setZero(); }

  /// @brief "[d_in, d_sae]"-style rendering of a tensor's shape.
  static std::string shapeString(const ParameterInfo& e) {
    std::string s = "[";
    for (std::size_t i = 0; i < e.shape.size(); ++i)
      s += (i ? ", " : "") + std::to_string(e.shape[i]);
    return s + "]";
  }

 private:
  const ParameterInfo* find(std::string_view name) const {
    for (const auto& e : m_entries)
      if (e.name == name) return &e;
    return nullptr;
  }

  void checkStorage() const {
    require(!m_layout_only, "this parameter set describes a layout only and holds no values");
  }

  const ParameterInfo& dataInfo(std::string_view name) const {
    checkStorage();
    return info(name);
  }

  const ParameterInfo& matrixInfo(std::string_view name, Layout layout) const {
    const ParameterInfo& e = dataInfo(name);
    require(e.shape.size() == 2, "parameter '", e.name, "' is not a matrix");
    require(e.layout == layout, "parameter '", e.name, "' is stored ",
            e.layout == Layout::RowMajor ? "row-major" : "column-major");
    return e;
  }

  std::vector<ParameterInfo> m_entries;
  Vector<Scalar> m_data;
  bool m_layout_only = false;
};

}  // namespace sae
