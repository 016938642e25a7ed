// libFuzzer harness of the .npz (zip) parser (sae::io::detail::parseNpz: end records, zip64,
// central directory, local headers, then each member's npy header) and of reading the arrays it
// finds: any input must either parse, with every small array then readable from the buffer, or
// throw sae::Error.
#include <cstddef>
#include <cstdint>
#include <vector>

#include <sae/core/error.hpp>
#include <sae/io/array_view.hpp>
#include <sae/io/npz.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const std::vector<sae::io::NpzArrayInfo> arrays =
        sae::io::detail::parseNpz(data, size, "fuzz.npz");
    for (const auto& a : arrays) {
      if (a.rows * a.cols <= 0 || a.rows * a.cols > 4096) continue;
      sae::io::detail::ArrayView v;
      v.where = "fuzz.npz";
      v.data = data + a.dataOffset;
      v.dtype = a.dtype;
      v.order = a.order;
      v.fortran = a.fortran;
      v.shape = a.shape;
      v.rows = a.rows;
      v.cols = a.cols;
      sae::RowMatrix<float> out(v.rows, v.cols);
      v.readRows<float>(0, v.rows, out);
    }
  } catch (const sae::Error&) {
  }
  return 0;
}
