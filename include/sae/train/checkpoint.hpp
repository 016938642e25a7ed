/// @file checkpoint.hpp
/// @brief Training checkpoints: one safetensors file per checkpoint with a checksum, written
/// atomically, plus a `latest` pointer file; loading verifies everything before use.
///
/// File layout: tensors under prefixed names (`params.W_enc`, `adam.m.W_enc`,
/// `adam.v.W_enc`, ... in row-major file order and the parameters' own dtype, F32 or F64;
/// extra state vectors such as dead-latent counters as F64), and in `__metadata__`:
/// - `format`: "sae-checkpoint-1";
/// - `state`: a JSON document (step, configuration, RNG state, data-source position, ...);
/// - `checksum`: "fnv1a64:<16 hex digits>", FNV-1a 64 over the bytes of the data section
///   followed by the bytes of `state`.
///
/// A truncated, half-written or altered file fails the header validation of the safetensors
/// reader or the checksum, and is reported with its name; it is never loaded.
#pragma once

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <sae/core/error.hpp>
#include <sae/core/parameters.hpp>
#include <sae/core/types.hpp>
#include <sae/io/atomic_write.hpp>
#include <sae/io/mapped_file.hpp>
#include <sae/io/safetensors.hpp>

namespace sae::train {

/// Value of the `format` metadata entry of a checkpoint file.
inline constexpr const char* kCheckpointFormat = "sae-checkpoint-1";

namespace detail {

/// FNV-1a 64-bit hash, continued from `h`.
inline std::uint64_t fnv1a64(const unsigned char* data, std::size_t n,
                             std::uint64_t h = 0xcbf29ce484222325ULL) {
  for (std::size_t i = 0; i < n; ++i) {
    h ^= data[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

inline std::string hex64(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

inline bool makeDirectory(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) return S_ISDIR(st.st_mode);
  return ::mkdir(path.c_str(), 0777) == 0 || errno == EEXIST;
}

}  // namespace detail

/// @brief Creates `path` and its missing parents; IoError naming it on failure.
inline void makeDirectories(const std::string& path) {
  std::string partial;
  std::size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    partial = path.substr(0, pos);
    if (partial.empty()) continue;
    if (!detail::makeDirectory(partial))
      throw IoError(sae::detail::concat(
          partial, ": cannot create the directory: ", io::detail::errnoText(errno)));
  }
}

/// @brief Collects the tensors and state of one checkpoint and writes the file.
class CheckpointWriter {
 public:
  /// @brief Adds every tensor of `set` as `<prefix><name>` in row-major order.
  template <typename Scalar>
  void addParameters(const std::string& prefix, const ParameterSet<Scalar>& set) {
    for (const auto& e : set.entries()) {
      const RowMatrix<Scalar> m = set.rowMajorCopy(e.name);
      addBytes(prefix + e.name, e.shape, m.data(), m.size());
    }
  }

  /// @brief Adds a vector of doubles (stored F64) as `name` with shape `[n]`.
  void addVector(const std::string& name, const Eigen::VectorXd& v) {
    addBytes(name, {v.size()}, v.data(), v.size());
  }

  /// @brief Writes the checkpoint atomically (temporary file, fsync, rename).
  void write(const std::string& path, const nlohmann::json& state) const {
    static_assert(io::kNativeByteOrder == io::ByteOrder::Little,
                  "checkpoints assume a little-endian host");
    const std::string text = state.dump();
    std::uint64_t h = 0xcbf29ce484222325ULL;
    for (const auto& t : m_tensors) h = detail::fnv1a64(t.bytes.data(), t.bytes.size(), h);
    h = detail::fnv1a64(reinterpret_cast<const unsigned char*>(text.data()), text.size(), h);
    io::SafetensorsWriter w;
    for (const auto& t : m_tensors) {
      if (t.is_double)
        w.add(t.name, t.shape, reinterpret_cast<const double*>(t.bytes.data()), io::DType::F64);
      else
        w.add(t.name, t.shape, reinterpret_cast<const float*>(t.bytes.data()), io::DType::F32);
    }
    w.setMetadata("format", kCheckpointFormat);
    w.setMetadata("state", text);
    w.setMetadata("checksum", "fnv1a64:" + detail::hex64(h));
    w.write(path);
  }

 private:
  struct Tensor {
    std::string name;
    std::vector<Index> shape;
    bool is_double;
    std::vector<unsigned char> bytes;
  };

  template <typename Scalar>
  void addBytes(const std::string& name, std::vector<Index> shape, const Scalar* data, Index n) {
    static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                  "checkpoint tensors are float or double");
    Tensor t{name, std::move(shape), std::is_same_v<Scalar, double>, {}};
    t.bytes.resize(static_cast<std::size_t>(n) * sizeof(Scalar));
    if (n > 0) std::memcpy(t.bytes.data(), data, t.bytes.size());
    m_tensors.push_back(std::move(t));
  }

  std::vector<Tensor> m_tensors;
};

/// @brief A verified checkpoint file: its state and tensors.
class Checkpoint {
 public:
  /// @brief Opens `path` and verifies the header, the format tag and the checksum.
  /// @throws IoError when it cannot be read, FormatError (naming the file and the problem)
  /// when it is truncated, malformed or corrupted.
  explicit Checkpoint(const std::string& path) : m_path(path) {
    try {
      m_file = std::make_unique<io::SafetensorsFile>(path);
    } catch (const FormatError& e) {
      throw FormatError(
          sae::detail::concat("checkpoint ", path, " is corrupt or incomplete: ", e.what()));
    }
    const auto& meta = m_file->metadata();
    auto get = [&](const char* key) -> const std::string& {
      const auto it = meta.find(key);
      if (it == meta.end()) fail(sae::detail::concat("no '", key, "' metadata entry"));
      return it->second;
    };
    if (get("format") != kCheckpointFormat)
      fail(sae::detail::concat("format is '", get("format"), "', expected '", kCheckpointFormat,
                               "'"));
    const std::string& text = get("state");
    const std::string& want = get("checksum");
    const io::MappedFile mapped(path);
    const std::uint64_t off = m_file->dataOffset();
    std::uint64_t h = detail::fnv1a64(mapped.data() + off, mapped.size() - off);
    h = detail::fnv1a64(reinterpret_cast<const unsigned char*>(text.data()), text.size(), h);
    const std::string got = "fnv1a64:" + detail::hex64(h);
    if (got != want)
      fail(sae::detail::concat("checksum mismatch (stored ", want, ", computed ", got,
                               "): the file is corrupted"));
    try {
      m_state = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      fail(sae::detail::concat("the state metadata is not valid JSON: ", e.what()));
    }
  }

  const std::string& path() const { return m_path; }
  /// @brief The JSON state written with the checkpoint.
  const nlohmann::json& state() const { return m_state; }

  /// @brief Reads the tensors `<prefix><name>` into `set`, checking every name and shape.
  template <typename Scalar>
  void readParameters(const std::string& prefix, ParameterSet<Scalar>& set) const {
    for (const auto& e : set.entries()) {
      const std::string name = prefix + e.name;
      if (!m_file->contains(name)) fail(sae::detail::concat("missing tensor '", name, "'"));
      const io::TensorInfo& t = m_file->info(name);
      const char* want = std::is_same_v<Scalar, float> ? "F32" : "F64";
      if (t.shape != e.shape || t.dtype != want)
        fail(sae::detail::concat("tensor '", name, "' is ", t.dtype, " ",
                                 io::detail::shapeString(t.shape, false), ", expected ", want, " ",
                                 ParameterSet<Scalar>::shapeString(e)));
      set.assignRowMajor(e.name, m_file->read<Scalar>(name));
    }
  }

  /// @brief Reads the F64 vector `name`, which must have `size` entries.
  Eigen::VectorXd readVector(const std::string& name, Index size) const {
    if (!m_file->contains(name)) fail(sae::detail::concat("missing tensor '", name, "'"));
    const io::TensorInfo& t = m_file->info(name);
    if (t.shape != std::vector<Index>{size} || t.dtype != "F64")
      fail(sae::detail::concat("tensor '", name, "' is ", t.dtype, " ",
                               io::detail::shapeString(t.shape, false), ", expected F64 [", size,
                               "]"));
    const RowMatrix<double> m = m_file->read<double>(name);
    return Eigen::Map<const Eigen::VectorXd>(m.data(), m.size());
  }

  /// @brief Throws FormatError naming the checkpoint file.
  [[noreturn]] void fail(const std::string& what) const {
    throw FormatError(sae::detail::concat("checkpoint ", m_path, ": ", what));
  }

 private:
  std::string m_path;
  std::unique_ptr<io::SafetensorsFile> m_file;
  nlohmann::json m_state;
};

/// @brief The checkpoint folder of a run: `step_<000000123>.safetensors` files and a `latest`
/// pointer file naming the newest complete one.
class CheckpointDir {
 public:
  /// @param dir  the folder (created by prepare()).
  /// @param keep how many checkpoints to keep (>= 1); older ones are deleted after each commit.
  explicit CheckpointDir(std::string dir, int keep = 3) : m_dir(std::move(dir)), m_keep(keep) {
    require(keep >= 1, "keep_checkpoints must be >= 1, found ", keep);
  }

  const std::string& dir() const { return m_dir; }

  /// @brief Creates the folder and removes temporary files left by an interrupted write.
  void prepare() const {
    makeDirectories(m_dir);
    for (const auto& name : list())
      if (name.find(".tmp.") != std::string::npos) ::unlink((m_dir + "/" + name).c_str());
  }

  /// @brief Path of the checkpoint of `step`.
  std::string pathFor(std::int64_t step) const {
    char buf[64];
    std::snprintf(buf, sizeof buf, "step_%09lld.safetensors", static_cast<long long>(step));
    return m_dir + "/" + buf;
  }

  /// @brief Writes `writer` as the checkpoint of `step`, then points `latest` at it and
  /// deletes the checkpoints beyond the newest `keep`. Returns the file's path.
  std::string commit(const CheckpointWriter& writer, const nlohmann::json& state,
                     std::int64_t step) const {
    const std::string path = pathFor(step);
    writer.write(path, state);
    io::writeTextFile(m_dir + "/latest", path.substr(m_dir.size() + 1) + "\n");
    std::vector<std::string> steps;
    for (const auto& n : list())
      if (n.rfind("step_", 0) == 0 && n.size() > 12 &&
          n.compare(n.size() - 12, 12, ".safetensors") == 0)
        steps.push_back(n);
    std::sort(steps.begin(), steps.end());
    for (std::size_t i = 0; i + std::size_t(m_keep) < steps.size(); ++i)
      if (m_dir + "/" + steps[i] != path) ::unlink((m_dir + "/" + steps[i]).c_str());
    return path;
  }

  /// @brief Path of the newest checkpoint according to `latest`, or nothing when there is
  /// no `latest` file. IoError / FormatError when it names a missing file or is malformed.
  std::optional<std::string> latest() const {
    std::ifstream in(m_dir + "/latest");
    if (!in) return std::nullopt;
    std::string name;
    std::getline(in, name);
    if (name.empty() || name.find('/') != std::string::npos)
      throw FormatError(sae::detail::concat(m_dir, "/latest: malformed pointer '", name, "'"));
    const std::string path = m_dir + "/" + name;
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
      throw IoError(sae::detail::concat(m_dir, "/latest names ", name, ", which is missing"));
    return path;
  }

 private:
  std::vector<std::string> list() const {
    std::vector<std::string> out;
    DIR* d = ::opendir(m_dir.c_str());
    if (!d) return out;
    while (const dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n != "." && n != "..") out.push_back(n);
    }
    ::closedir(d);
    return out;
  }

  std::string m_dir;
  int m_keep;
};

}  // namespace sae::train
