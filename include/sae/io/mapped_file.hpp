/// @file mapped_file.hpp
/// @brief MappedFile: a read-only memory mapping of a whole file (POSIX mmap).
///
/// Readers map a file once and copy/convert only the rows they are asked for, so a 50 GB
/// activation dump costs address space, not 50 GB of memory: the kernel pages data in on demand
/// and can drop clean pages again under memory pressure.
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <string>
#include <system_error>
#include <utility>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sae/core/error.hpp>

namespace sae::io {

namespace detail {

/// The text of an errno value ("No such file or directory"), thread-safe.
inline std::string errnoText(int err) { return std::generic_category().message(err); }

/// Closes a file descriptor when it goes out of scope.
class FdGuard {
 public:
  explicit FdGuard(int fd) : m_fd(fd) {}
  ~FdGuard() {
    if (m_fd >= 0) ::close(m_fd);
  }
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  int get() const { return m_fd; }

 private:
  int m_fd;
};

}  // namespace detail

/// @brief Read-only memory mapping of a regular file; move-only (RAII).
///
/// An empty file is valid: size() is 0 and data() is nullptr. The mapping is private and
/// read-only; if another process truncates the file while it is mapped, touching the lost pages
/// raises SIGBUS (a limitation of every mmap-based reader).
class MappedFile {
 public:
  /// @brief Maps `path`.
  /// @param path File to map. Throws IoError naming the path and the system's reason when it
  ///        cannot be opened, is not a regular file (a directory, a FIFO) or cannot be mapped.
  explicit MappedFile(std::string path) : m_path(std::move(path)) {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer; it is then
    // rejected below as not a regular file. It has no effect on regular files.
    const int fd = ::open(m_path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) fail("cannot open for reading", errno);
    detail::FdGuard guard(fd);
    struct stat st {};
    if (::fstat(fd, &st) != 0) fail("cannot stat", errno);
    if (S_ISDIR(st.st_mode)) fail("cannot map", EISDIR);
    if (!S_ISREG(st.st_mode)) {
      throw IoError(sae::detail::concat(m_path, ": cannot map: not a regular file"));
    }
    if (st.st_size <= 0) return;  // empty file: nothing to map
    m_size = static_cast<std::size_t>(st.st_size);
    void* p = ::mmap(nullptr, m_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      m_size = 0;
      fail("cannot map", errno);
    }
    m_data = static_cast<const unsigned char*>(p);
  }

  ~MappedFile() { unmap(); }

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  MappedFile(MappedFile&& other) noexcept
      : m_path(std::move(other.m_path)),
        m_data(std::exchange(other.m_data, nullptr)),
        m_size(std::exchange(other.m_size, 0)) {}

  MappedFile& operator=(MappedFile&& other) noexcept {
    if (this != &other) {
      unmap();
      m_path = std::move(other.m_path);
      m_data = std::exchange(other.m_data, nullptr);
      m_size = std::exchange(other.m_size, 0);
    }
    return *this;
  }

  /// @brief First byte of the file, nullptr for an empty file.
  const unsigned char* data() const noexcept { return m_data; }

  /// @brief Size of the file in bytes.
  std::uint64_t size() const noexcept { return m_size; }

  /// @brief True for an empty file.
  bool empty() const noexcept { return m_size == 0; }

  /// @brief The path the file was opened with.
  const std::string& path() const noexcept { return m_path; }

 private:
  [[noreturn]] void fail(const char* what, int err) const {
    throw IoError(sae::detail::concat(m_path, ": ", what, ": ", detail::errnoText(err)));
  }

  void unmap() noexcept {
    if (m_data != nullptr) ::munmap(const_cast<unsigned char*>(m_data), m_size);
    m_data = nullptr;
    m_size = 0;
  }

  std::string m_path;
  const unsigned char* m_data = nullptr;
  std::size_t m_size = 0;
};

}  // namespace sae::io
