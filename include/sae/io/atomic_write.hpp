/// @file atomic_write.hpp
/// @brief AtomicFileWriter: writes a file so that readers see either the old file or the whole
/// new one, never a partial write.
///
/// The data goes to a temporary file in the same directory (`<path>.tmp.<pid>.<n>`), which is
/// flushed to disk (fsync) and then renamed over `path`; rename within one file system is atomic
/// on POSIX. On any failure the temporary file is removed and an IoError naming `path` is
/// thrown; an existing file at `path` is left untouched. The new file gets mode 0666 minus the
/// umask; a symbolic link at `path` is replaced by the file, not followed.
#pragma once

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sae/core/config.hpp>
#include <sae/core/error.hpp>
#include <sae/io/dtype.hpp>
#include <sae/io/mapped_file.hpp>

namespace sae::io {

/// @brief Writes `path` atomically through a temporary file; see the file comment.
///
/// Usage: construct, write(), commit(). Destroying the writer without commit() (an exception
/// on the way) removes the temporary file and leaves `path` as it was.
class AtomicFileWriter {
 public:
  /// @brief Creates the temporary file next to `path`.
  /// @param path Final file name. Throws IoError naming it when the temporary file cannot be
  ///        created (missing or unwritable directory...).
  explicit AtomicFileWriter(std::string path) : m_path(std::move(path)) {
    static std::atomic<unsigned> counter{0};
    for (int attempt = 0; attempt < 100; ++attempt) {
      m_temp = sae::detail::concat(m_path, ".tmp.", ::getpid(), ".", counter.fetch_add(1));
      m_fd = ::open(m_temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (m_fd >= 0) return;
      if (errno != EEXIST) break;
    }
    const int err = errno;
    throw IoError(sae::detail::concat(m_path, ": cannot create the temporary file '", m_temp,
                                      "': ", detail::errnoText(err)));
  }

  /// @brief Removes the temporary file unless commit() succeeded.
  ~AtomicFileWriter() { discard(); }

  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  /// @brief Appends `n` bytes.
  void write(const void* data, std::size_t n) {
    writeAt(nullptr, data, n);
    m_written += n;
  }

  /// @brief Replaces `n` bytes already written, from byte `offset` on (a header fixed up once
  /// the data are known). IoError naming `path` when the range goes past what was written.
  void overwrite(std::uint64_t offset, const void* data, std::size_t n) {
    if (offset > m_written || n > m_written - offset) fail("cannot overwrite past the end", EINVAL);
    writeAt(&offset, data, n);
  }

  /// @brief Appends `n` floats or doubles as little-endian elements of `as` (F32, F64, F16, BF16).
  template <typename Scalar>
  void writeElements(const Scalar* data, Index n, DType as) {
    constexpr bool sameType = std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>;
    static_assert(sameType, "writers take float or double data");
    if (n <= 0) return;
    const bool direct = kNativeByteOrder == ByteOrder::Little &&
                        ((as == DType::F32 && std::is_same_v<Scalar, float>) ||
                         (as == DType::F64 && std::is_same_v<Scalar, double>));
    if (direct) {
      write(data, static_cast<std::size_t>(n) * sizeof(Scalar));
      return;
    }
    constexpr Index kChunk = Index(1) << 15;
    const std::size_t isz = dtypeSize(as);
    m_buffer.resize(static_cast<std::size_t>(std::min(n, kChunk)) * isz);
    for (Index first = 0; first < n; first += kChunk) {
      const Index len = std::min(kChunk, n - first);
      detail::encodeLittleEndian(data + first, as, len, m_buffer.data());
      write(m_buffer.data(), static_cast<std::size_t>(len) * isz);
    }
  }

  /// @brief Flushes the data to disk and renames the temporary file to `path`.
  /// Throws IoError naming `path` on failure (the temporary file is then removed).
  void commit() {
    if (::fsync(m_fd) != 0) fail("cannot sync the temporary file", errno);
    const int fd = std::exchange(m_fd, -1);
    if (::close(fd) != 0) fail("cannot close the temporary file", errno);
    if (::rename(m_temp.c_str(), m_path.c_str()) != 0) {
      fail("cannot rename the temporary file over it", errno);
    }
    m_committed = true;
    syncDirectory();
  }

  /// @brief Final file name.
  const std::string& path() const noexcept { return m_path; }

  /// @brief Name of the temporary file being written.
  const std::string& tempPath() const noexcept { return m_temp; }

  /// @brief Bytes written so far.
  std::uint64_t bytesWritten() const noexcept { return m_written; }

 private:
  // Writes all `n` bytes: appended when `offset` is null, else from *offset on (advanced).
  void writeAt(std::uint64_t* offset, const void* data, std::size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    while (n > 0) {
      const std::size_t chunk = std::min<std::size_t>(n, std::size_t(1) << 30);
      const ssize_t k =
          offset ? ::pwrite(m_fd, p, chunk, static_cast<off_t>(*offset)) : ::write(m_fd, p, chunk);
      if (k < 0) {
        if (errno == EINTR) continue;
        fail("cannot write", errno);
      }
      if (k == 0) fail("cannot write", EIO);
      p += k;
      n -= static_cast<std::size_t>(k);
      if (offset) *offset += static_cast<std::uint64_t>(k);
    }
  }

  [[noreturn]] void fail(const char* what, int err) {
    const std::string temp = m_temp;
    discard();
    throw IoError(
        sae::detail::concat(m_path, ": ", what, " ('", temp, "'): ", detail::errnoText(err)));
  }

  void discard() noexcept {
    if (m_fd >= 0) ::close(m_fd);
    m_fd = -1;
    if (!m_committed && !m_temp.empty()) ::unlink(m_temp.c_str());
    m_temp.clear();
  }

  // Best effort: makes the rename itself durable. The new file is complete either way.
  void syncDirectory() const noexcept {
    const std::size_t slash = m_path.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "." : m_path.substr(0, slash + 1);
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    (void)::fsync(fd);
    ::close(fd);
  }

  std::string m_path;
  std::string m_temp;
  int m_fd = -1;
  bool m_committed = false;
  std::uint64_t m_written = 0;
  std::vector<unsigned char> m_buffer;
};

/// @brief Writes `text` to `path` atomically (a temporary file renamed over it).
/// @throws IoError naming `path` when it cannot be written.
inline void writeTextFile(const std::string& path, const std::string& text) {
  AtomicFileWriter w(path);
  w.write(text.data(), text.size());
  w.commit();
}

}  // namespace sae::io
