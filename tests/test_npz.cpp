// Tests of the .npz reader (NpzFile, readNpz).
//
// The archives in tests/data/io were written by numpy's np.savez / np.savez_compressed from
// tests/data/io/generate.py (the zip64 one by hand there, and checked with zipfile + np.load).
// Their arrays follow the formula documented in generate.py,
// v(r, c) = (c even ? 1 : -1) * (10 r + c + 0.25), restated by expectedValue()
// (tests/support/test_support.hpp).
//
// Byte offsets in the expected messages follow from the layout np.savez writes for one (3, 5)
// float32 array "a": the local header at 0 (30 bytes + the name "a.npy" + a 20-byte zip64 extra
// field that np.savez always adds), the npy image at 55 (a 128-byte header + 60 data bytes),
// the central directory at 243 (one 51-byte entry), the end record at 294, 316 bytes in all.
// The hand-built zip64 archive of the same array has a 79-byte directory entry (24 bytes of
// zip64 values), then the 56-byte zip64 end record at 322, its locator at 378 and the end record
// at 398.
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <support/test_support.hpp>

#include <sae/io/npz.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_npz {

using sae::Index;
using sae::RowMatrix;
using sae::io::ByteOrder;
using sae::io::DType;
using sae::io::NpzFile;
using namespace sae::test;

// ------------------------------------------------------------------------------------ reading

TEMPLATE_TEST_CASE("NpzFile reads the arrays np.savez wrote, by name", "[npz]", float, double) {
  const std::string path = dataPath("npz_named.npz");
  const NpzFile npz(path);
  CHECK(npz.path() == path);
  CHECK(npz.names() == std::vector<std::string>{"a", "b", "c", "d"});
  CHECK(npz.contains("a"));
  CHECK_FALSE(npz.contains("a.npy"));
  CHECK_FALSE(npz.contains("e"));

  // a: (3, 5) <f4, C order.
  const auto& a = npz.info("a");
  CHECK(a.name == "a");
  CHECK(a.member == "a.npy");
  CHECK(a.descr == "<f4");
  CHECK(a.dtype == DType::F32);
  CHECK(a.order == ByteOrder::Little);
  CHECK_FALSE(a.fortran);
  CHECK(a.shape == std::vector<Index>{3, 5});
  CHECK(a.rows == 3);
  CHECK(a.cols == 5);
  CHECK(a.memberOffset == 55);  // 30-byte local header + "a.npy" + 20-byte zip64 extra
  CHECK(a.memberSize == 188);   // 128-byte npy header + 60 data bytes
  CHECK(a.dataOffset == 55 + 128);
  CHECK(npz.read<TestType>("a") == expectedMatrix<TestType>(3, 5));

  // b: (4,) <f8, one row.
  CHECK(npz.info("b").shape == std::vector<Index>{4});
  CHECK(npz.read<TestType>("b") == expectedMatrix<TestType>(1, 4));

  // c: (2, 3, 4) >f2, leading dimensions flattened into 6 rows.
  const auto& c = npz.info("c");
  CHECK(c.descr == ">f2");
  CHECK(c.dtype == DType::F16);
  CHECK(c.order == ByteOrder::Big);
  CHECK(c.shape == std::vector<Index>{2, 3, 4});
  CHECK(npz.read<TestType>("c") == expectedMatrix<TestType>(6, 4));

  // d: (3, 5) <f8 in Fortran order.
  CHECK(npz.info("d").fortran);
  CHECK(npz.read<TestType>("d") == expectedMatrix<TestType>(3, 5));

  CHECK(sae::io::readNpz<TestType>(path, "c") == expectedMatrix<TestType>(6, 4));
}

TEST_CASE("NpzFile reads row ranges into blocks and checks them", "[npz]") {
  const NpzFile npz(dataPath("npz_named.npz"));
  RowMatrix<float> out = RowMatrix<float>::Constant(4, 6, -1.0f);
  npz.readRows<float>("c", 2, 5, out.block(1, 1, 3, 4));
  CHECK(out.block(1, 1, 3, 4) == expectedMatrix<float>(3, 4, 2));
  CHECK(out.row(0) == RowMatrix<float>::Constant(1, 6, -1.0f));
  CHECK(out.col(0) == RowMatrix<float>::Constant(4, 1, -1.0f));
  RowMatrix<double> d(2, 5);
  npz.readRows<double>("d", 1, 3, d);  // Fortran order
  CHECK(d == expectedMatrix<double>(2, 5, 1));
  RowMatrix<float> wrong(2, 3);
  const std::string path = dataPath("npz_named.npz");
  CHECK_THROWS_AS(npz.readRows<float>("a", 0, 2, wrong), sae::ConfigError);
  CHECK_THROWS_WITH(npz.readRows<float>("a", 0, 2, wrong),
                    path + ": array 'a': readRows output is 2x3, expected 2x5");
  CHECK_THROWS_AS(npz.readRows<float>("a", 2, 4, wrong), sae::ConfigError);
  CHECK_THROWS_WITH(npz.readRows<float>("a", 2, 4, wrong),
                    path + ": array 'a': readRows range [2, 4) is out of bounds for 3 rows");
}

TEST_CASE("NpzFile: positional names, data descriptors, non-array members, zip64", "[npz]") {
  // np.savez(f, x, y) names the arrays arr_0, arr_1.
  const NpzFile positional(dataPath("npz_positional.npz"));
  CHECK(positional.names() == std::vector<std::string>{"arr_0", "arr_1"});
  CHECK(positional.read<float>("arr_0") == expectedMatrix<float>(2, 3));
  CHECK(positional.read<double>("arr_1") == expectedMatrix<double>(4, 2));

  // Written to a pipe: flag bit 3, sizes only in the central directory and a data descriptor.
  const NpzFile unseekable(dataPath("npz_unseekable.npz"));
  CHECK(unseekable.names() == std::vector<std::string>{"a"});
  CHECK(unseekable.read<float>("a") == expectedMatrix<float>(3, 5));

  // A member that is not an .npy file is not an array.
  const NpzFile extra(dataPath("npz_extra_member.npz"));
  CHECK(extra.names() == std::vector<std::string>{"a"});
  CHECK(extra.read<double>("a") == expectedMatrix<double>(3, 5));

  // zip64 end records and extra fields (np.savez writes them beyond 4 GiB).
  const NpzFile zip64(dataPath("npz_zip64.npz"));
  CHECK(zip64.names() == std::vector<std::string>{"a", "b"});
  CHECK(zip64.info("a").dataOffset == 55 + 128);
  CHECK(zip64.read<float>("a") == expectedMatrix<float>(3, 5));
  CHECK(zip64.read<double>("b") == expectedMatrix<double>(1, 4));
}

// ------------------------------------------------------------------------------------ bad input

TEST_CASE("npz: a missing array name lists the arrays present", "[npz][bad]") {
  const std::string path = dataPath("npz_named.npz");
  const NpzFile npz(path);
  const std::string message = path + ": no array named 'acts' (arrays present: a, b, c, d)";
  CHECK_THROWS_AS(npz.info("acts"), sae::FormatError);
  CHECK_THROWS_WITH(npz.info("acts"), message);
  CHECK_THROWS_AS(npz.read<float>("acts"), sae::FormatError);
  CHECK_THROWS_WITH(npz.read<float>("acts"), message);
  CHECK_THROWS_WITH(sae::io::readNpz<float>(path, "acts"), message);
}

TEST_CASE("npz: a compressed archive names np.savez_compressed", "[npz][bad]") {
  const std::string path = dataPath("npz_compressed.npz");
  CHECK_THROWS_AS(NpzFile(path), sae::FormatError);
  CHECK_THROWS_WITH(NpzFile(path),
                    path +
                        ": member 'a.npy' is compressed (deflate, zip method 8); archives written "
                        "by np.savez_compressed are not supported: only uncompressed members "
                        "(np.savez) can be memory-mapped; re-save the arrays with np.savez");
}

TEST_CASE("npz: open failures are IoError naming the path and the reason", "[npz][bad]") {
  const std::string missing = dataPath("does_not_exist.npz");
  CHECK_THROWS_AS(NpzFile(missing), sae::IoError);
  CHECK_THROWS_WITH(NpzFile(missing),
                    missing + ": cannot open for reading: No such file or directory");
}

TEST_CASE("npz: every malformed archive is a FormatError with a precise message", "[npz][bad]") {
  struct Case {
    const char* file;
    std::string message;  // after "<path>: "
  };
  const Case cases[] = {
      {"npz_bad_empty.npz", "empty file: expected a zip archive (npz)"},
      {"npz_bad_short.npz",
       "not a zip archive (npz): 4 bytes, shorter than the 22-byte end-of-central-directory "
       "record"},
      // An .npy file (188 bytes) is not a zip archive.
      {"npz_bad_not_zip.npz",
       "not a zip archive (npz): no end-of-central-directory record (signature 50 4b 05 06) in "
       "the last 188 bytes; the file is truncated or not a zip"},
      // The last 10 bytes cut off: the end record is incomplete.
      {"npz_bad_truncated.npz",
       "not a zip archive (npz): no end-of-central-directory record (signature 50 4b 05 06) in "
       "the last 306 bytes; the file is truncated or not a zip"},
      {"npz_bad_local_sig.npz",
       "bad local header signature of entry 'a.npy' at offset 0: expected 50 4b 03 04, found 51 "
       "4b 03 04"},
      {"npz_bad_cd_sig.npz",
       "bad central directory entry signature at offset 243 (entry 0): expected 50 4b 01 02, "
       "found 51 4b 01 02"},
      {"npz_bad_cd_offset.npz",
       "central directory (offset 100000, 51 bytes) is out of range: it must end by offset 294 "
       "of 316 bytes"},
      {"npz_bad_entry_count.npz",
       "central directory of 51 bytes at offset 243 cannot hold the 50 entries the end record "
       "announces"},
      {"npz_bad_local_offset.npz",
       "local header of entry 'a.npy' at offset 233 is out of range: local headers must end "
       "before the central directory at offset 243"},
      {"npz_bad_name_mismatch.npz",
       "local header at offset 0 names 'b.npy', but the central directory names 'a.npy'"},
      {"npz_bad_method_mismatch.npz",
       "local header of entry 'a.npy' at offset 0 gives method 8, the central directory 0"},
      {"npz_bad_encrypted.npz", "entry 'a.npy' is encrypted; encrypted archives are not supported"},
      {"npz_bad_multidisk.npz",
       "multi-disk (split) zip archives are not supported (end-of-central-directory record at "
       "offset 294)"},
      {"npz_bad_data_past_cd.npz",
       "data of entry 'a.npy' (offset 55, 100000 bytes) runs past the start of the central "
       "directory at offset 243"},
      {"npz_bad_stored_sizes.npz",
       "stored entry 'a.npy' has compressed size 188 but uncompressed size 10"},
      {"npz_bad_zip64_missing.npz",
       "the end-of-central-directory record at offset 294 defers to a zip64 record, but there is "
       "no zip64 locator before it"},
      {"npz_bad_zip64_locator.npz",
       "zip64 end-of-central-directory record at offset 1099511627776 (from the locator at offset "
       "378) is out of range: it must end before the locator"},
      {"npz_bad_zip64_extra.npz",
       "zip64 extra field of entry 'a.npy' at offset 294 is too short: 8 bytes do not hold every "
       "field marked 0xffffffff in the entry"},
      // zipfile.writestr adds no extra field: the member starts at 30 + 5 = 35; its npy image
      // lacks the last 8 of its 60 data bytes.
      {"npz_bad_member_npy.npz",
       "member 'a.npy' at offset 35: truncated data: expected 60 bytes after the header at offset "
       "128, found 52 (shape (3, 5), dtype '<f4')"},
      {"npz_bad_duplicate.npz", "duplicate entry 'a.npy' in the central directory"},
  };
  for (const auto& c : cases) {
    const std::string path = dataPath(c.file);
    INFO(c.file);
    CHECK_THROWS_AS(NpzFile(path), sae::FormatError);
    CHECK_THROWS_WITH(NpzFile(path), path + ": " + c.message);
    CHECK_THROWS_AS(sae::io::readNpz<float>(path, "a"), sae::FormatError);
  }
}

TEST_CASE("npz: truncated and mutated archives throw sae::Error and never crash", "[npz][fuzz]") {
  TempDir tmp("npz");
  const std::string target = tmp.file("fuzz.npz");
  auto attempt = [&](const std::vector<char>& bytes) {
    writeBytes(target, bytes);
    try {
      const NpzFile npz(target);
      for (const auto& name : npz.names()) {
        const RowMatrix<double> m = npz.read<double>(name);
        CHECK(m.rows() == npz.info(name).rows);
      }
      return true;
    } catch (const sae::Error&) {
      return false;
    }
  };
  XorShift64 next(0x9e3779b97f4a7c15ULL);
  for (const char* file : {"npz_named.npz", "npz_zip64.npz", "npz_unseekable.npz"}) {
    INFO(file);
    const std::vector<char> good = readBytes(dataPath(file));
    REQUIRE(attempt(good));
    for (std::size_t n = 0; n < good.size(); ++n) {
      INFO("truncated to " << n << " bytes");
      CHECK_FALSE(attempt(std::vector<char>(good.begin(), good.begin() + n)));
    }
    for (int i = 0; i < 1000; ++i) {
      std::vector<char> bad = good;
      const int flips = 1 + static_cast<int>(next() % 3);
      for (int f = 0; f < flips; ++f) bad[next() % bad.size()] = static_cast<char>(next() & 0xff);
      attempt(bad);  // either outcome is fine; only sae::Error may escape
    }
  }
}

}  // namespace sae_test_npz
