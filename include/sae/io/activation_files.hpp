/// @file activation_files.hpp
/// @brief ActivationFiles: the rows of several activation files (.npy, or a tensor of a
/// .safetensors file) as one `[total_rows, d_in]` matrix, read in order by row range (what
/// `sae encode` and `sae eval` read; training streams through activation_stream.hpp instead).
#pragma once

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/io/npy.hpp>
#include <sae/io/safetensors.hpp>

namespace sae::io {

/// @brief Rows of activation files (.npy, or the 2-D tensor of a .safetensors file) read
/// in order, as one `[total_rows, d_in]` matrix. N-D arrays flatten their leading dimensions.
class ActivationFiles {
 public:
  /// @param paths       the files, in order; every one must have the same number of columns.
  /// @param tensor_name safetensors: which tensor; empty = the only one with 2+ dimensions.
  explicit ActivationFiles(const std::vector<std::string>& paths, std::string tensor_name = {}) {
    require(!paths.empty(), "no activation files given");
    for (const auto& path : paths) {
      File f;
      f.path = path;
      if (endsWith(path, ".npy")) {
        f.npy = std::make_unique<NpyReader>(path);
        f.rows = f.npy->rows();
        f.cols = f.npy->cols();
        if (f.npy->shape().size() < 2)
          throw FormatError(sae::detail::concat(path,
                                                ": expected activations [tokens, d_in], found a ",
                                                f.npy->shape().size(), "-D array"));
      } else if (endsWith(path, ".safetensors")) {
        f.st = std::make_unique<SafetensorsFile>(path);
        f.tensor = tensor_name.empty() ? onlyMatrix(*f.st) : tensor_name;
        const TensorInfo& t = f.st->info(f.tensor);
        if (t.shape.size() < 2)
          throw FormatError(sae::detail::concat(path, ": tensor '", f.tensor,
                                                "' is not [tokens, d_in] (shape has ",
                                                t.shape.size(), " dimensions)"));
        f.rows = t.rows;
        f.cols = t.cols;
      } else {
        throw ConfigError(sae::detail::concat(
            path, ": unsupported activation file type (expected .npy or .safetensors)"));
      }
      if (!m_files.empty() && f.cols != m_files.front().cols)
        throw FormatError(sae::detail::concat(path, ": rows have ", f.cols, " columns, but ",
                                              m_files.front().path, " has ", m_files.front().cols));
      f.first = m_rows;
      m_rows += f.rows;
      m_files.push_back(std::move(f));
    }
    require(m_rows > 0, "the activation files hold no rows");
  }

  Index rows() const { return m_rows; }
  Index cols() const { return m_files.front().cols; }

  /// @brief Copies rows [begin, end) (across files) into `out`, which has end - begin rows.
  template <typename Scalar>
  void readRows(Index begin, Index end, Eigen::Ref<RowMatrix<Scalar>> out) const {
    require(begin >= 0 && begin <= end && end <= m_rows, "rows [", begin, ", ", end,
            ") out of range [0, ", m_rows, ")");
    Index at = begin;
    for (const auto& f : m_files) {
      if (at >= end) break;
      if (at >= f.first + f.rows) continue;
      const Index lo = at - f.first;
      const Index hi = std::min(f.rows, end - f.first);
      auto block = out.middleRows(at - begin, hi - lo);
      if (f.npy)
        f.npy->readRows<Scalar>(lo, hi, block);
      else
        f.st->readRows<Scalar>(f.tensor, lo, hi, block);
      at += hi - lo;
    }
  }

 private:
  struct File {
    std::string path, tensor;
    std::unique_ptr<NpyReader> npy;
    std::unique_ptr<SafetensorsFile> st;
    Index rows = 0, cols = 0, first = 0;
  };

  static bool endsWith(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() &&
           s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
  }

  static std::string onlyMatrix(const SafetensorsFile& f) {
    std::string found;
    for (const auto& name : f.names()) {
      if (f.info(name).shape.size() >= 2) {
        if (!found.empty())
          throw FormatError(sae::detail::concat(f.path(), ": several tensors with 2+ dimensions ('",
                                                found, "', '", name, "'); name the one to use"));
        found = name;
      }
    }
    if (found.empty())
      throw FormatError(sae::detail::concat(f.path(), ": no tensor with 2 or more dimensions"));
    return found;
  }

  std::vector<File> m_files;
  Index m_rows = 0;
};

}  // namespace sae::io
