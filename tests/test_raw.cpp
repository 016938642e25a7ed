// Tests of the raw binary reader and writer.
//
// raw_f32.bin and raw_f16_be.bin (written by tests/data/io/generate.py) hold the 6 x 4 matrix
// v(r, c) = (c even ? 1 : -1) * (10 r + c + 0.25), restated in expectedValue()
// (tests/support/test_support.hpp).
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <support/test_support.hpp>

#include <sae/io/raw.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_raw {

using sae::Index;
using sae::RowMatrix;
using sae::io::ByteOrder;
using sae::io::DType;
using sae::io::RawReader;
using namespace sae::test;
namespace fs = std::filesystem;

TEMPLATE_TEST_CASE("RawReader infers rows and reads f32 and big-endian f16 dumps", "[raw]", float,
                   double) {
  const RawReader f32(dataPath("raw_f32.bin"), DType::F32, 4);
  CHECK(f32.rows() == 6);
  CHECK(f32.cols() == 4);
  CHECK(f32.dtype() == DType::F32);
  CHECK(f32.byteOrder() == ByteOrder::Little);
  CHECK(f32.template readAll<TestType>() == expectedMatrix<TestType>(6, 4));

  const RawReader f16(dataPath("raw_f16_be.bin"), DType::F16, 4, ByteOrder::Big);
  CHECK(f16.rows() == 6);
  CHECK(f16.template readAll<TestType>() == expectedMatrix<TestType>(6, 4));

  RowMatrix<TestType> part(3, 4);
  f32.template readRows<TestType>(2, 5, part);
  CHECK(part == expectedMatrix<TestType>(3, 4, 2));

  // The same bytes seen with 8 columns: row r holds matrix rows 2r and 2r+1.
  const RawReader wide(dataPath("raw_f32.bin"), DType::F32, 8);
  CHECK(wide.rows() == 3);
  const RowMatrix<TestType> w = wide.template readAll<TestType>();
  CHECK(w.row(1).head(4) == expectedMatrix<TestType>(1, 4, 2));
  CHECK(w.row(1).tail(4) == expectedMatrix<TestType>(1, 4, 3));
}

TEST_CASE("RawReader: an empty file has zero rows", "[raw]") {
  TempDir tmp("raw");
  std::ofstream(tmp.file("empty.bin")).close();
  const RawReader r(tmp.file("empty.bin"), DType::BF16, 16);
  CHECK(r.rows() == 0);
  CHECK(r.cols() == 16);
  CHECK(r.readAll<float>().rows() == 0);
}

TEST_CASE("RawReader: bad sizes, columns, ranges and paths", "[raw][bad]") {
  const std::string bad = dataPath("raw_bad_size.bin");
  CHECK_THROWS_AS(RawReader(bad, DType::F32, 4), sae::FormatError);
  CHECK_THROWS_WITH(RawReader(bad, DType::F32, 4),
                    bad +
                        ": file size 99 bytes is not a multiple of the row size 16 bytes (4 "
                        "columns of float32): remainder 3 bytes");
  CHECK_THROWS_WITH(RawReader(bad, DType::F64, 3),
                    bad +
                        ": file size 99 bytes is not a multiple of the row size 24 bytes (3 "
                        "columns of float64): remainder 3 bytes");

  const std::string good = dataPath("raw_f32.bin");
  CHECK_THROWS_AS(RawReader(good, DType::F32, 0), sae::ConfigError);
  CHECK_THROWS_WITH(RawReader(good, DType::F32, 0),
                    good + ": RawReader needs a positive column count, found 0");
  CHECK_THROWS_WITH(RawReader(good, DType::F32, -4),
                    good + ": RawReader needs a positive column count, found -4");
  CHECK_THROWS_AS(RawReader(good, DType::F64, Index(1) << 62), sae::ConfigError);
  CHECK_THROWS_WITH(RawReader(good, DType::F64, Index(1) << 62),
                    good +
                        ": RawReader: 4611686018427387904 columns of float64 are more bytes "
                        "than fit in 64 bits");

  const RawReader r(good, DType::F32, 4);
  RowMatrix<float> out(2, 4);
  CHECK_THROWS_AS(r.readRows<float>(5, 7, out), sae::ConfigError);
  CHECK_THROWS_WITH(r.readRows<float>(5, 7, out),
                    good + ": readRows range [5, 7) is out of bounds for 6 rows");
  CHECK_THROWS_WITH(r.readRows<float>(0, 3, out), good + ": readRows output is 2x4, expected 3x4");

  const std::string missing = dataPath("missing.bin");
  CHECK_THROWS_AS(RawReader(missing, DType::F32, 4), sae::IoError);
  CHECK_THROWS_WITH(RawReader(missing, DType::F32, 4),
                    missing + ": cannot open for reading: No such file or directory");
  const std::string dir = dataPath("");
  CHECK_THROWS_AS(RawReader(dir, DType::F32, 4), sae::IoError);
  CHECK_THROWS_WITH(RawReader(dir, DType::F32, 4), dir + ": cannot map: Is a directory");
}

TEST_CASE("writeRaw round-trips F32, F64 and BF16", "[raw][write]") {
  TempDir tmp("raw");
  const RowMatrix<double> m = expectedMatrix<double>(5, 3);
  sae::io::writeRaw(tmp.file("d.bin"), m);
  CHECK(fs::file_size(tmp.file("d.bin")) == 5 * 3 * 8);
  CHECK(RawReader(tmp.file("d.bin"), DType::F64, 3).readAll<double>() == m);

  sae::io::writeRaw(tmp.file("f.bin"), m.cast<float>());
  CHECK(fs::file_size(tmp.file("f.bin")) == 5 * 3 * 4);
  CHECK(RawReader(tmp.file("f.bin"), DType::F32, 3).readAll<double>() == m);

  // All values of v on a 5 x 3 grid have at most 8 significant bits: exact in bfloat16.
  sae::io::writeRaw(tmp.file("b.bin"), m, DType::BF16);
  CHECK(fs::file_size(tmp.file("b.bin")) == 5 * 3 * 2);
  CHECK(RawReader(tmp.file("b.bin"), DType::BF16, 3).readAll<double>() == m);

  // A strided block.
  sae::io::writeRaw(tmp.file("blk.bin"), m.block(1, 1, 3, 2).cast<float>());
  CHECK(RawReader(tmp.file("blk.bin"), DType::F32, 2).readAll<double>() == m.block(1, 1, 3, 2));

  CHECK_THROWS_AS(sae::io::writeRaw(tmp.file("h.bin"), m, DType::F16), sae::ConfigError);
  CHECK_THROWS_WITH(sae::io::writeRaw(tmp.file("h.bin"), m, DType::F16),
                    tmp.file("h.bin") + ": writeRaw stores F32, F64 or BF16, not float16");
  const std::string missing = tmp.file("nodir/x.bin");
  CHECK_THROWS_AS(sae::io::writeRaw(missing, m), sae::IoError);
  CHECK_THROWS_WITH(sae::io::writeRaw(missing, m), Catch::StartsWith(missing + ": "));
  for (const auto& name : tmp.entries()) CHECK(name.find(".tmp.") == std::string::npos);
  CHECK_FALSE(fs::exists(tmp.file("h.bin")));
}

TEST_CASE("MappedFile maps regular files, handles empty ones and moves", "[raw][MappedFile]") {
  TempDir tmp("raw");
  std::ofstream(tmp.file("empty.bin")).close();
  const sae::io::MappedFile empty(tmp.file("empty.bin"));
  CHECK(empty.empty());
  CHECK(empty.size() == 0);
  CHECK(empty.data() == nullptr);
  CHECK(empty.path() == tmp.file("empty.bin"));

  {
    std::ofstream out(tmp.file("abc.bin"), std::ios::binary);
    out << "abc";
  }
  sae::io::MappedFile a(tmp.file("abc.bin"));
  REQUIRE(a.size() == 3);
  CHECK(std::string(reinterpret_cast<const char*>(a.data()), 3) == "abc");
  sae::io::MappedFile b(std::move(a));
  CHECK(b.size() == 3);
  CHECK(b.data()[2] == 'c');
  CHECK(a.data() == nullptr);  // NOLINT(bugprone-use-after-move): moved-from state is defined
  CHECK(a.size() == 0);
  a = std::move(b);
  CHECK(a.size() == 3);
  CHECK(a.data()[0] == 'a');
}

}  // namespace sae_test_raw
