// libFuzzer harness of the .safetensors reader (sae::io::SafetensorsFile: header length, JSON,
// entries, offsets, overlaps) and of reading the tensors it lists: any input must either open,
// with every small readable tensor then readable, or throw sae::Error.
//
// SafetensorsFile maps a file by path, so each input is written to an in-memory file
// (memfd_create) and opened as /proc/self/fd/<n>.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <sys/mman.h>
#include <unistd.h>

#include <sae/core/error.hpp>
#include <sae/io/safetensors.hpp>

namespace {

int memoryFile() {
  static const int fd = [] {
    const int f = ::memfd_create("fuzz.safetensors", MFD_CLOEXEC);
    if (f < 0) std::abort();
    return f;
  }();
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const int fd = memoryFile();
  if (::ftruncate(fd, 0) != 0) std::abort();
  for (std::size_t done = 0; done < size;) {
    const ssize_t n = ::pwrite(fd, data + done, size - done, static_cast<off_t>(done));
    if (n <= 0) std::abort();
    done += static_cast<std::size_t>(n);
  }
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  try {
    const sae::io::SafetensorsFile file(path);
    for (const auto& name : file.names()) {
      const sae::io::TensorInfo& t = file.info(name);
      if (!t.readable || t.rows * t.cols > 4096) continue;
      const sae::RowMatrix<double> m = file.read<double>(name);
      if (m.rows() != t.rows || m.cols() != t.cols) std::abort();
    }
    (void)file.metadata();
  } catch (const sae::Error&) {
  }
  return 0;
}
