// libFuzzer harness of the .npy header parser (sae::io::detail::parseNpyHeader) and of the row
// conversion it guards: any input must either parse, with every row then readable from the
// buffer, or throw sae::Error. A crash, a sanitizer report, an allocation beyond the fuzzer's
// limit or any other exception is a finding.
#include <cstddef>
#include <cstdint>

#include <sae/core/error.hpp>
#include <sae/io/array_view.hpp>
#include <sae/io/npy.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const sae::io::detail::NpyHeader h = sae::io::detail::parseNpyHeader(data, size, "fuzz.npy");
    // Read the data back when it is small (the header promised exactly this many bytes).
    if (h.flat.elements > 0 && h.flat.elements <= 4096) {
      sae::io::detail::ArrayView v;
      v.where = "fuzz.npy";
      v.data = data + h.dataOffset;
      v.dtype = h.dtype;
      v.order = h.order;
      v.fortran = h.fortran;
      v.shape = h.shape;
      v.rows = h.flat.rows;
      v.cols = h.flat.cols;
      sae::RowMatrix<double> out(v.rows, v.cols);
      v.readRows<double>(0, v.rows, out);
    }
  } catch (const sae::Error&) {
  }
  return 0;
}
