/// @file codes_file.hpp
/// @brief The sparse-codes file `sae encode` writes: CodesFileWriter (rows added chunk by
/// chunk) and CodesFile (a reader that validates the whole file).
///
/// A codes file is a `.safetensors` file whose `__metadata__` holds `format` ("topk" or "csr"),
/// `d_sae` (latents), `rows` (tokens) and `architecture` (of the SAE that encoded them), with
/// the tensors, in this order:
/// - `format = topk` (TopK codes, k latents per row): `indices` I32 `[rows, k]` and `values`
///   F32 `[rows, k]`, row r's k latent ids and activations;
/// - `format = csr` (every other architecture, the non-zero activations of each row in
///   increasing latent order): `indices` I32 `[nnz]`, `row_offsets` I64 `[rows + 1]` and
///   `values` F32 `[nnz]`; row r's entries are `[row_offsets[r], row_offsets[r + 1])`.
///
/// The reader trusts nothing in the file: the metadata numbers are parsed strictly, every
/// tensor's dtype and shape are checked against them, the offsets must start at 0, never
/// decrease and end at nnz, and every latent id must lie in [0, d_sae) (in increasing order
/// within a CSR row, distinct within a TopK row). Messages name the file and the problem.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/io/safetensors.hpp>

namespace sae::io {

/// @brief Layout of the codes of a codes file (see the file comment).
enum class CodesLayout { TopK, Csr };

/// @brief Writes a codes file (see the file comment) from rows added in chunks.
///
/// The layout is fixed by the first chunk: addTopK() rows give `format = topk`, addDense()
/// rows give `format = csr`; mixing them, or TopK chunks of different k, is a ConfigError. The
/// rows are kept in memory (as compact ids and values) until write(), which writes the file
/// atomically. A writer given no rows writes an empty CSR file.
class CodesFileWriter {
 public:
  /// @param d_sae Number of latents (> 0). @param architecture Recorded in the metadata.
  CodesFileWriter(Index d_sae, std::string architecture)
      : m_d_sae(d_sae), m_architecture(std::move(architecture)) {
    require(d_sae > 0, "CodesFileWriter: d_sae must be positive, found ", d_sae);
    m_offsets.push_back(0);
  }

  /// @brief Appends TopK rows: `indices` and `values` both `[n, k]`, ids in [0, d_sae).
  void addTopK(const Eigen::Ref<const IndexMatrix>& indices,
               const Eigen::Ref<const RowMatrix<float>>& values) {
    require(indices.rows() == values.rows() && indices.cols() == values.cols(),
            "CodesFileWriter: indices are ", indices.rows(), "x", indices.cols(), " but values ",
            values.rows(), "x", values.cols());
    fixLayout(CodesLayout::TopK);
    if (m_rows == 0) m_k = indices.cols();
    require(indices.cols() == m_k, "CodesFileWriter: TopK rows of k = ", indices.cols(),
            " after rows of k = ", m_k);
    for (Index r = 0; r < indices.rows(); ++r) {
      for (Index j = 0; j < m_k; ++j) {
        const std::int32_t id = indices(r, j);
        require(id >= 0 && id < m_d_sae, "CodesFileWriter: latent id ", id, " outside [0, ",
                m_d_sae, ")");
        m_indices.push_back(id);
        m_values.push_back(values(r, j));
      }
    }
    m_rows += indices.rows();
  }

  /// @brief Appends rows given densely (`[n, d_sae]`); their non-zero entries are kept (CSR).
  void addDense(const Eigen::Ref<const RowMatrix<float>>& dense) {
    require(dense.cols() == m_d_sae, "CodesFileWriter: dense rows have ", dense.cols(),
            " columns, expected d_sae = ", m_d_sae);
    fixLayout(CodesLayout::Csr);
    for (Index r = 0; r < dense.rows(); ++r) {
      for (Index i = 0; i < m_d_sae; ++i) {
        const float v = dense(r, i);
        if (v != 0.0f) {
          m_indices.push_back(static_cast<std::int32_t>(i));
          m_values.push_back(v);
        }
      }
      m_offsets.push_back(static_cast<std::int64_t>(m_indices.size()));
    }
    m_rows += dense.rows();
  }

  /// @brief Rows added so far.
  Index rows() const noexcept { return m_rows; }

  /// @brief Writes the file atomically (IoError naming `path` on failure).
  void write(const std::string& path) const {
    SafetensorsWriter w;
    const Index nnz = static_cast<Index>(m_indices.size());
    if (m_layout == CodesLayout::TopK) {
      w.add("indices", {m_rows, m_k}, m_indices.data());
      w.add("values", {m_rows, m_k}, m_values.data());
    } else {
      w.add("indices", {nnz}, m_indices.data());
      w.add("row_offsets", {m_rows + 1}, m_offsets.data());
      w.add("values", {nnz}, m_values.data());
    }
    w.setMetadata("format", m_layout == CodesLayout::TopK ? "topk" : "csr");
    w.setMetadata("d_sae", std::to_string(m_d_sae));
    w.setMetadata("rows", std::to_string(m_rows));
    w.setMetadata("architecture", m_architecture);
    w.write(path);
  }

 private:
  void fixLayout(CodesLayout layout) {
    if (!m_has_layout) {
      m_layout = layout;
      m_has_layout = true;
    }
    require(m_layout == layout, "CodesFileWriter: TopK and dense rows cannot be mixed in one file");
  }

  Index m_d_sae;
  std::string m_architecture;
  CodesLayout m_layout = CodesLayout::Csr;
  bool m_has_layout = false;
  Index m_rows = 0, m_k = 0;
  std::vector<std::int32_t> m_indices;
  std::vector<float> m_values;
  std::vector<std::int64_t> m_offsets;
};

/// @brief Reads and validates a codes file (see the file comment) into memory.
///
/// @code
/// const sae::io::CodesFile codes("codes.safetensors");
/// for (Index r = 0; r < codes.rows(); ++r)
///   for (Index e = codes.rowBegin(r); e < codes.rowEnd(r); ++e)
///     use(codes.latent(e), codes.value(e));
/// @endcode
class CodesFile {
 public:
  /// @brief Opens, reads and validates `path`. IoError when it cannot be opened, FormatError
  /// "<path>: <problem>" for anything malformed.
  explicit CodesFile(const std::string& path) : m_path(path) {
    const SafetensorsFile f(path);
    const std::string format = meta(f, "format");
    if (format == "topk") {
      m_layout = CodesLayout::TopK;
    } else if (format != "csr") {
      fail("metadata 'format' is '" + format + "', expected 'topk' or 'csr'");
    }
    m_d_sae = number(f, "d_sae");
    if (m_d_sae <= 0 || m_d_sae > (Index(1) << 31)) {
      fail(sae::detail::concat("metadata 'd_sae' = ", m_d_sae, " is not in [1, 2^31]"));
    }
    m_rows = number(f, "rows");
    m_architecture = meta(f, "architecture");
    const std::vector<std::string> expected =
        m_layout == CodesLayout::TopK
            ? std::vector<std::string>{"indices", "values"}
            : std::vector<std::string>{"indices", "row_offsets", "values"};
    if (f.names() != expected) {
      fail("tensors are " + detail::nameList(f.names()) + ", expected " +
           detail::nameList(expected));
    }
    const TensorInfo& ii = f.info("indices");
    const TensorInfo& vi = f.info("values");
    checkDType(ii, "I32");
    checkDType(vi, "F32");
    if (m_layout == CodesLayout::TopK) {
      if (ii.shape.size() != 2 || ii.shape[0] != m_rows) {
        fail(sae::detail::concat("'indices' has shape ", shapeText(ii.shape), ", expected [",
                                 m_rows, ", k]"));
      }
      m_k = ii.shape[1];
      if (m_k <= 0) fail("'indices' has shape " + shapeText(ii.shape) + ": k must be positive");
      checkShape(vi, {m_rows, m_k});
    } else {
      if (ii.shape.size() != 1) {
        fail("'indices' has shape " + shapeText(ii.shape) + ", expected [nnz]");
      }
      checkShape(vi, ii.shape);
      const TensorInfo& oi = f.info("row_offsets");
      checkDType(oi, "I64");
      checkShape(oi, {m_rows + 1});
    }
    const std::vector<std::int64_t> ids = f.readIntegers("indices");
    m_latents.assign(ids.begin(), ids.end());
    const RowMatrix<float> values = f.read<float>("values");
    m_values.assign(values.data(), values.data() + values.size());
    const Index nnz = static_cast<Index>(ids.size());
    if (m_layout == CodesLayout::TopK) {
      m_offsets.resize(static_cast<std::size_t>(m_rows + 1));
      for (Index r = 0; r <= m_rows; ++r) m_offsets[std::size_t(r)] = r * m_k;
    } else {
      m_offsets = f.readIntegers("row_offsets");
      if (m_offsets.front() != 0) {
        fail(sae::detail::concat("row_offsets[0] is ", m_offsets.front(), ", expected 0"));
      }
      for (Index r = 0; r < m_rows; ++r) {
        if (m_offsets[std::size_t(r + 1)] < m_offsets[std::size_t(r)]) {
          fail(sae::detail::concat("row_offsets decrease at row ", r, " (",
                                   m_offsets[std::size_t(r)], " then ",
                                   m_offsets[std::size_t(r + 1)], ")"));
        }
      }
      if (m_offsets.back() != nnz) {
        fail(sae::detail::concat("row_offsets end at ", m_offsets.back(), ", but there are ", nnz,
                                 " entries"));
      }
    }
    checkLatents(ids);
  }

  /// @brief Path the file was opened with.
  const std::string& path() const noexcept { return m_path; }
  /// @brief TopK (`[rows, k]`) or CSR.
  CodesLayout layout() const noexcept { return m_layout; }
  /// @brief Rows (tokens).
  Index rows() const noexcept { return m_rows; }
  /// @brief Number of latents of the SAE.
  Index dSae() const noexcept { return m_d_sae; }
  /// @brief Latents per row of a TopK file (0 for CSR).
  Index k() const noexcept { return m_k; }
  /// @brief Architecture recorded by the writer.
  const std::string& architecture() const noexcept { return m_architecture; }
  /// @brief Number of stored entries.
  Index nnz() const noexcept { return static_cast<Index>(m_latents.size()); }
  /// @brief First entry of row `r` (rows() for the end).
  Index rowBegin(Index r) const { return static_cast<Index>(m_offsets[std::size_t(r)]); }
  /// @brief One past the last entry of row `r`.
  Index rowEnd(Index r) const { return static_cast<Index>(m_offsets[std::size_t(r + 1)]); }
  /// @brief Latent id of entry `e`.
  std::int32_t latent(Index e) const { return m_latents[std::size_t(e)]; }
  /// @brief Activation of entry `e`.
  float value(Index e) const { return m_values[std::size_t(e)]; }

  /// @brief The dense `[rows, d_sae]` matrix (allocates; for inspection and tests).
  RowMatrix<float> toDense() const {
    RowMatrix<float> out = RowMatrix<float>::Zero(m_rows, m_d_sae);
    for (Index r = 0; r < m_rows; ++r)
      for (Index e = rowBegin(r); e < rowEnd(r); ++e) out(r, latent(e)) = value(e);
    return out;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw FormatError(m_path + ": not a valid codes file: " + what);
  }

  std::string meta(const SafetensorsFile& f, const std::string& key) const {
    const auto it = f.metadata().find(key);
    if (it == f.metadata().end()) fail("metadata has no '" + key + "'");
    return it->second;
  }

  // A metadata number: decimal digits only, at most 18 of them.
  Index number(const SafetensorsFile& f, const std::string& key) const {
    const std::string text = meta(f, key);
    if (text.empty() || text.size() > 18 ||
        !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      fail("metadata '" + key + "' is '" + text + "', expected a non-negative integer");
    }
    return static_cast<Index>(std::stoll(text));
  }

  static std::string shapeText(const std::vector<Index>& shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }

  void checkDType(const TensorInfo& t, const char* dtype) const {
    if (t.dtype != dtype) fail("'" + t.name + "' has dtype " + t.dtype + ", expected " + dtype);
  }

  void checkShape(const TensorInfo& t, const std::vector<Index>& shape) const {
    if (t.shape != shape) {
      fail("'" + t.name + "' has shape " + shapeText(t.shape) + ", expected " + shapeText(shape));
    }
  }

  void checkLatents(const std::vector<std::int64_t>& ids) const {
    std::vector<std::int64_t> row;
    for (Index r = 0; r < m_rows; ++r) {
      row.assign(ids.begin() + rowBegin(r), ids.begin() + rowEnd(r));
      for (std::size_t j = 0; j < row.size(); ++j) {
        if (row[j] < 0 || row[j] >= m_d_sae) {
          fail(sae::detail::concat("row ", r, " has latent id ", row[j], " outside [0, ", m_d_sae,
                                   ")"));
        }
        if (m_layout == CodesLayout::Csr && j > 0 && row[j] <= row[j - 1]) {
          fail(sae::detail::concat("row ", r, " has latent ids out of order (", row[j - 1],
                                   " then ", row[j], ")"));
        }
      }
      if (m_layout == CodesLayout::TopK) {
        std::sort(row.begin(), row.end());
        const auto dup = std::adjacent_find(row.begin(), row.end());
        if (dup != row.end()) {
          fail(sae::detail::concat("row ", r, " has latent id ", *dup, " twice"));
        }
      }
    }
  }

  std::string m_path;
  CodesLayout m_layout = CodesLayout::Csr;
  Index m_rows = 0, m_d_sae = 0, m_k = 0;
  std::string m_architecture;
  std::vector<std::int32_t> m_latents;
  std::vector<float> m_values;
  std::vector<std::int64_t> m_offsets;
};

}  // namespace sae::io
