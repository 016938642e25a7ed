// Tests of the streaming and listing pieces of io: NpyStreamWriter (the same bytes as writeNpy,
// nothing at the path before commit), SafetensorsWriter's int32 / int64 tensors with
// SafetensorsFile::readIntegers, and listNpz over the numpy-written archives of tests/data/io
// (see generate.py for their contents).
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <support/test_support.hpp>

#include <sae/io/atomic_write.hpp>
#include <sae/io/npy.hpp>
#include <sae/io/npz.hpp>
#include <sae/io/safetensors.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_io_writers {

using sae::Index;
using sae::RowMatrix;
using sae::io::DType;
using sae::io::NpyStreamWriter;
using namespace sae::test;

namespace {
std::string tempDir(const std::string& name) { return scratchDir("io_writers", name); }
}  // namespace

TEST_CASE("NpyStreamWriter writes the bytes writeNpy writes for the whole matrix",
          "[NpyStreamWriter]") {
  const std::string dir = tempDir("same");
  const RowMatrix<float> m = expectedMatrix<float>(7, 5);
  sae::io::writeNpy(dir + "/whole.npy", m);
  {
    NpyStreamWriter w(dir + "/stream.npy", 5);
    w.append(m.topRows(3));
    w.append(m.middleRows(3, 0));
    w.append(m.bottomRows(4));
    CHECK(w.rows() == 7);
    CHECK_FALSE(std::filesystem::exists(dir + "/stream.npy"));
    w.commit();
  }
  CHECK(readBytes(dir + "/stream.npy") == readBytes(dir + "/whole.npy"));
  const sae::io::NpyReader r(dir + "/stream.npy");
  CHECK(r.shape() == std::vector<Index>{7, 5});
  CHECK(sae::io::readNpy<float>(dir + "/stream.npy") == m);

  // Doubles, stored as <f8 or converted to <f4.
  const RowMatrix<double> md = expectedMatrix<double>(2, 3);
  NpyStreamWriter w8(dir + "/f8.npy", 3, DType::F64);
  w8.append(md);
  w8.commit();
  CHECK(sae::io::NpyReader(dir + "/f8.npy").descr() == "<f8");
  CHECK(sae::io::readNpy<double>(dir + "/f8.npy") == md);
  NpyStreamWriter w4(dir + "/f4.npy", 3);
  w4.append(md);
  w4.commit();
  CHECK(readBytes(dir + "/f4.npy") == [&] {
    sae::io::writeNpy(dir + "/f4_whole.npy", md.cast<float>());
    return readBytes(dir + "/f4_whole.npy");
  }());
}

TEST_CASE("NpyStreamWriter stores float16 as <f2, rounded to nearest", "[NpyStreamWriter]") {
  const std::string dir = tempDir("f2");
  // Values exact in binary16 come back exactly; others rounded to the nearest half.
  RowMatrix<float> m(3, 4);
  m << 0.5f, -1.25f, 1024.0f, 65504.0f,     //
      0.0f, -0.0f, 6.103515625e-05f, 3.0f,  //
      1.0f + 1.0f / 4096.0f, 0.1f, -2.0f, 7.0f;
  NpyStreamWriter w(dir + "/h.npy", 4, DType::F16);
  w.append(m.topRows(2));
  w.append(m.bottomRows(1));
  w.commit();
  const sae::io::NpyReader r(dir + "/h.npy");
  CHECK(r.descr() == "<f2");
  CHECK(r.shape() == std::vector<Index>{3, 4});
  const RowMatrix<float> back = sae::io::readNpy<float>(dir + "/h.npy");
  CHECK(back.topRows(2) == m.topRows(2));
  CHECK(back(2, 0) == 1.0f);                          // 1 + 2^-12 rounds to even: 1
  CHECK(std::abs(back(2, 1) - 0.1f) <= 0.1f / 2048);  // half's relative step 2^-11
  CHECK(back.rightCols(2).bottomRows(1) == m.rightCols(2).bottomRows(1));
}

TEST_CASE("NpyInt32StreamWriter writes what writeNpyInt32 writes, in chunks", "[NpyStreamWriter]") {
  const std::string dir = tempDir("i4stream");
  const std::vector<std::int32_t> v = {5, -1, 2147483647, -2147483647 - 1, 0, 50256, 3};
  {
    sae::io::NpyInt32StreamWriter w(dir + "/s.npy");
    w.append(v.data(), 2);
    w.append(v.data() + 2, 0);
    w.append(v.data() + 2, 5);
    CHECK(w.size() == 7);
    CHECK_FALSE(std::filesystem::exists(dir + "/s.npy"));
    w.commit();
  }
  sae::io::writeNpyInt32(dir + "/whole.npy", v);
  CHECK(readBytes(dir + "/s.npy") == readBytes(dir + "/whole.npy"));
  CHECK(sae::io::readNpyIntegers(dir + "/s.npy") == std::vector<std::int64_t>(v.begin(), v.end()));
  {
    sae::io::NpyInt32StreamWriter abandoned(dir + "/gone.npy");
    abandoned.append(v.data(), 3);
  }
  CHECK_FALSE(std::filesystem::exists(dir + "/gone.npy"));
}

TEST_CASE("NpyStreamWriter: no rows, bad rows, no commit", "[NpyStreamWriter][bad]") {
  const std::string dir = tempDir("edge");
  {
    NpyStreamWriter w(dir + "/empty.npy", 4);
    w.commit();
  }
  CHECK(sae::io::NpyReader(dir + "/empty.npy").shape() == std::vector<Index>{0, 4});
  {
    NpyStreamWriter w(dir + "/abandoned.npy", 4);
    w.append(RowMatrix<float>::Ones(2, 4));
    CHECK_THROWS_WITH(w.append(RowMatrix<float>::Ones(1, 3)),
                      Catch::Contains(dir + "/abandoned.npy: rows of 3 columns appended to an "
                                            "array of 4 columns"));
  }
  CHECK_FALSE(std::filesystem::exists(dir + "/abandoned.npy"));
  // No temporary file left behind: the folder holds empty.npy only.
  CHECK(std::distance(std::filesystem::directory_iterator(dir), {}) == 1);
  CHECK_THROWS_WITH(NpyStreamWriter(dir + "/x.npy", 2, DType::BF16),
                    Catch::Contains("NpyStreamWriter stores F32, F64 or F16, not bfloat16"));
  CHECK_THROWS_AS(NpyStreamWriter(dir + "/no/such/dir/x.npy", 2), sae::IoError);
}

TEST_CASE("SafetensorsWriter stores int32 / int64 tensors as I32 / I64, little-endian",
          "[safetensors]") {
  const std::string path = tempDir("ints") + "/ints.safetensors";
  const std::vector<std::int32_t> a = {-2, 0, 7, 2147483647, -2147483647 - 1, 1};
  const std::vector<std::int64_t> b = {std::int64_t(1) << 40, -1, 3};
  const std::vector<float> c = {0.5f};
  sae::io::SafetensorsWriter w;
  w.add("a", {2, 3}, a.data());
  w.add("b", {3}, b.data());
  w.add("c", {1}, c.data());
  w.write(path);

  const sae::io::SafetensorsFile f(path);
  CHECK(f.info("a").dtype == "I32");
  CHECK(f.info("a").shape == std::vector<Index>{2, 3});
  CHECK(f.info("b").dtype == "I64");
  CHECK(f.info("a").end - f.info("a").begin == 24);
  CHECK(f.info("b").end - f.info("b").begin == 24);
  // -2 as a little-endian int32: fe ff ff ff; 2^40 as int64: 00 00 00 00 00 01 00 00.
  const std::vector<char> bytes = readBytes(path);
  const std::size_t at = f.info("a").fileOffset, bt = f.info("b").fileOffset;
  CHECK(std::vector<unsigned char>(bytes.begin() + long(at), bytes.begin() + long(at) + 4) ==
        std::vector<unsigned char>{0xfe, 0xff, 0xff, 0xff});
  CHECK(std::vector<unsigned char>(bytes.begin() + long(bt), bytes.begin() + long(bt) + 8) ==
        std::vector<unsigned char>{0, 0, 0, 0, 0, 1, 0, 0});
  CHECK(f.readIntegers("a") == std::vector<std::int64_t>(a.begin(), a.end()));
  CHECK(f.readIntegers("b") == b);
  CHECK_THROWS_WITH(f.readIntegers("c"),
                    Catch::Contains(path + ": tensor 'c' has dtype F32, not an integer dtype"));
  CHECK_THROWS_WITH(f.readIntegers("d"), Catch::Contains("no tensor named 'd'"));
}

TEST_CASE("listNpz lists every member, compressed and non-array ones included", "[npz]") {
  const auto named = sae::io::listNpz(dataPath("npz_named.npz"));
  REQUIRE(named.size() == 4);
  CHECK(named[0].name == "a");
  CHECK(named[0].member == "a.npy");
  CHECK(named[0].npy);
  CHECK_FALSE(named[0].compressed);
  CHECK(named[0].descr == "<f4");
  CHECK(named[0].shape == std::vector<Index>{3, 5});
  CHECK_FALSE(named[0].fortran);
  CHECK(named[1].descr == "<f8");
  CHECK(named[1].shape == std::vector<Index>{4});
  CHECK(named[2].descr == ">f2");
  CHECK(named[2].shape == std::vector<Index>{2, 3, 4});
  CHECK(named[3].name == "d");
  CHECK(named[3].fortran);

  const auto compressed = sae::io::listNpz(dataPath("npz_compressed.npz"));
  REQUIRE(compressed.size() == 1);
  CHECK(compressed[0].name == "a");
  CHECK(compressed[0].compressed);
  CHECK_FALSE(compressed[0].npy);

  const auto extra = sae::io::listNpz(dataPath("npz_extra_member.npz"));
  REQUIRE(extra.size() == 2);
  CHECK(extra[0].npy);
  CHECK(extra[1].name == "notes.txt");
  CHECK_FALSE(extra[1].npy);

  const auto zip64 = sae::io::listNpz(dataPath("npz_zip64.npz"));
  REQUIRE(zip64.size() == 2);
  CHECK(zip64[1].name == "b");
  CHECK(zip64[1].shape == std::vector<Index>{4});
}

TEST_CASE("listNpz names the archive and the problem of a broken one", "[npz][bad]") {
  for (const char* name : {"npz_bad_cd_sig.npz", "npz_bad_not_zip.npz", "npz_bad_truncated.npz",
                           "npz_bad_member_npy.npz", "npz_bad_duplicate.npz"}) {
    const std::string path = dataPath(name);
    INFO(path);
    CHECK_THROWS_AS(sae::io::listNpz(path), sae::FormatError);
    CHECK_THROWS_WITH(sae::io::listNpz(path), Catch::StartsWith(path + ": "));
  }
  CHECK_THROWS_WITH(sae::io::listNpz(dataPath("npz_bad_member_npy.npz")),
                    Catch::Contains("member '"));
  CHECK_THROWS_AS(sae::io::listNpz(dataPath("no_such.npz")), sae::IoError);
}

TEST_CASE("writeTextFile replaces a file whole, or leaves it and names the path", "[atomic]") {
  TempDir dir("write_text");
  const std::string path = dir.file("cfg.json");
  sae::io::writeTextFile(path, "{\"a\": 1}\n");
  sae::io::writeTextFile(path, "{}\n");
  std::ifstream in(path, std::ios::binary);
  CHECK(std::string(std::istreambuf_iterator<char>(in), {}) == "{}\n");
  CHECK(dir.entries() == std::vector<std::string>{"cfg.json"});  // no temporary file left
  sae::io::writeTextFile(path, "");
  CHECK(std::filesystem::file_size(path) == 0);
  const std::string missing = dir.file("no_such_dir/cfg.json");
  CHECK_THROWS_WITH(sae::io::writeTextFile(missing, "x"), Catch::Contains(missing));
  CHECK_THROWS_AS(sae::io::writeTextFile(missing, "x"), sae::IoError);
}

TEST_CASE("writeNpyInt32 writes a 1-D <i4 array that reads back exactly", "[npy]") {
  TempDir dir("npy_int32");
  const std::vector<std::int32_t> ids = {0, 1, -1, 50256, 2147483647, -2147483647 - 1};
  sae::io::writeNpyInt32(dir.file("ids.npy"), ids);
  const sae::io::NpyIntegerReader r(dir.file("ids.npy"));
  CHECK(r.dtype() == DType::I32);
  CHECK(sae::io::readNpyIntegers(dir.file("ids.npy")) ==
        std::vector<std::int64_t>(ids.begin(), ids.end()));
  // numpy's bytes: the 128-byte preamble, then each value little-endian.
  const std::string bytes = readFile(dir.file("ids.npy"));
  REQUIRE(bytes.size() == 128 + 4 * ids.size());
  CHECK(bytes.compare(0, 6, "\x93NUMPY") == 0);
  CHECK(bytes.find("'descr': '<i4'") != std::string::npos);
  CHECK(bytes.find("'shape': (6,)") != std::string::npos);
  CHECK(bytes.compare(128 + 12, 4, std::string("\x50\xc4\x00\x00", 4)) == 0);  // 50256
  sae::io::writeNpyInt32(dir.file("empty.npy"), std::vector<std::int32_t>{});
  CHECK(sae::io::readNpyIntegers(dir.file("empty.npy")).empty());
  CHECK_THROWS_WITH(sae::io::writeNpyInt32(dir.file("no_dir/ids.npy"), ids),
                    Catch::Contains(dir.file("no_dir/ids.npy")));
}

}  // namespace sae_test_io_writers
