// Tests of the .npy reader and writer, the dtype conversions and the atomic file writer.
//
// The files in tests/data/io were written by tests/data/io/generate.py. Their values follow the
// formula documented there, v(r, c) = (c even ? 1 : -1) * (10 r + c + 0.25), which expectedValue()
// (tests/support/test_support.hpp) restates; nothing here is derived from the reader's own output.
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <support/test_support.hpp>

#include <sae/io/npy.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_npy {

using sae::Index;
using sae::RowMatrix;
using sae::io::ByteOrder;
using sae::io::DType;
using sae::io::NpyReader;
using namespace sae::test;
namespace fs = std::filesystem;

namespace {

/// Independent reference decoding of binary16 bits: (-1)^s * 2^(e-15) * (1 + m/1024), etc.
double referenceHalf(std::uint16_t bits) {
  const int sign = bits >> 15;
  const int exponent = (bits >> 10) & 0x1f;
  const int mantissa = bits & 0x3ff;
  double value;
  if (exponent == 0) {
    value = std::ldexp(static_cast<double>(mantissa), -24);
  } else if (exponent == 31) {
    value = mantissa == 0 ? std::numeric_limits<double>::infinity()
                          : std::numeric_limits<double>::quiet_NaN();
  } else {
    value = std::ldexp(1.0 + mantissa / 1024.0, exponent - 15);
  }
  return sign ? -value : value;
}

/// Independent reference decoding of bfloat16 bits: 8-bit exponent (bias 127), 7-bit mantissa.
double referenceBfloat16(std::uint16_t bits) {
  const int sign = bits >> 15;
  const int exponent = (bits >> 7) & 0xff;
  const int mantissa = bits & 0x7f;
  double value;
  if (exponent == 0) {
    value = std::ldexp(static_cast<double>(mantissa), -133);
  } else if (exponent == 255) {
    value = mantissa == 0 ? std::numeric_limits<double>::infinity()
                          : std::numeric_limits<double>::quiet_NaN();
  } else {
    value = std::ldexp(1.0 + mantissa / 128.0, exponent - 127);
  }
  return sign ? -value : value;
}

}  // namespace

// ------------------------------------------------------------------------------------ dtypes

TEST_CASE("halfToFloat matches a reference decoding for all 65536 bit patterns", "[npy][dtype]") {
  int mismatches = 0;
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    if (!sameValue(sae::io::halfToFloat(bits), referenceHalf(bits))) ++mismatches;
  }
  CHECK(mismatches == 0);
  // A few named values, spelled out.
  CHECK(sae::io::halfToFloat(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(sae::io::halfToFloat(0x03ff) == 1023.0f * std::ldexp(1.0f, -24));
  CHECK(sae::io::halfToFloat(0x0400) == std::ldexp(1.0f, -14));  // smallest normal
  CHECK(sae::io::halfToFloat(0x7bff) == 65504.0f);
  CHECK(sae::io::halfToFloat(0x3555) == 0.333251953125f);
  CHECK(std::isinf(sae::io::halfToFloat(0xfc00)));
  CHECK(sae::io::halfToFloat(0xfc00) < 0);
  CHECK(std::isnan(sae::io::halfToFloat(0x7e00)));
  CHECK(std::signbit(sae::io::halfToFloat(0x8000)));
}

TEST_CASE("bfloat16ToFloat matches a reference decoding for all 65536 bit patterns",
          "[npy][dtype]") {
  int mismatches = 0;
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    if (!sameValue(sae::io::bfloat16ToFloat(bits), referenceBfloat16(bits))) ++mismatches;
  }
  CHECK(mismatches == 0);
}

TEST_CASE("float and double round to bfloat16 to nearest even", "[npy][dtype]") {
  using sae::io::doubleToBfloat16;
  using sae::io::floatToBfloat16;
  CHECK(floatToBfloat16(1.0f) == 0x3f80);
  CHECK(floatToBfloat16(-2.0f) == 0xc000);
  CHECK(floatToBfloat16(1.0f + std::ldexp(1.0f, -8)) == 0x3f80);      // tie -> even (down)
  CHECK(floatToBfloat16(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82);  // tie -> even (up)
  CHECK(floatToBfloat16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)) == 0x3f81);
  CHECK(floatToBfloat16(std::numeric_limits<float>::max()) == 0x7f80);  // overflows to inf
  CHECK(floatToBfloat16(-std::numeric_limits<float>::infinity()) == 0xff80);
  CHECK(floatToBfloat16(-0.0f) == 0x8000);
  CHECK(floatToBfloat16(std::numeric_limits<float>::denorm_min()) == 0x0000);
  const std::uint16_t nan = floatToBfloat16(std::numeric_limits<float>::quiet_NaN());
  CHECK((nan & 0x7f80) == 0x7f80);
  CHECK((nan & 0x007f) != 0);
  // Every finite bfloat16 survives widening and rounding back.
  int mismatches = 0;
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    if ((bits & 0x7f80) == 0x7f80) continue;
    if (floatToBfloat16(sae::io::bfloat16ToFloat(bits)) != bits) ++mismatches;
    if (doubleToBfloat16(sae::io::bfloat16ToFloat(bits)) != bits) ++mismatches;
  }
  CHECK(mismatches == 0);
  // Double rounding: 1 + 2^-8 + 2^-40 is just above the tie between 0x3f80 and 0x3f81; a
  // double -> float -> bfloat16 path lands exactly on the tie and wrongly picks 0x3f80.
  const double justAboveTie = 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40);
  CHECK(floatToBfloat16(static_cast<float>(justAboveTie)) == 0x3f80);
  CHECK(doubleToBfloat16(justAboveTie) == 0x3f81);
  CHECK(doubleToBfloat16(-justAboveTie) == 0xbf81);
  CHECK(doubleToBfloat16(1.0 + std::ldexp(1.0, -8)) == 0x3f80);  // an exact tie stays even
  CHECK(doubleToBfloat16(1e300) == 0x7f80);
  CHECK(doubleToBfloat16(1e-300) == 0x0000);
  CHECK(doubleToBfloat16(-1e-300) == 0x8000);
}

// ------------------------------------------------------------------------------------ reading

TEMPLATE_TEST_CASE("NpyReader reads f4/f8/f2 in both byte orders, C order", "[npy]", float,
                   double) {
  struct Case {
    const char* file;
    DType dtype;
    ByteOrder order;
    const char* descr;
  };
  const Case cases[] = {
      {"f4_le_c.npy", DType::F32, ByteOrder::Little, "<f4"},
      {"f4_be_c.npy", DType::F32, ByteOrder::Big, ">f4"},
      {"f8_le_c.npy", DType::F64, ByteOrder::Little, "<f8"},
      {"f8_be_c.npy", DType::F64, ByteOrder::Big, ">f8"},
      {"f2_le_c.npy", DType::F16, ByteOrder::Little, "<f2"},
      {"f2_be_c.npy", DType::F16, ByteOrder::Big, ">f2"},
  };
  for (const auto& c : cases) {
    INFO(c.file);
    const NpyReader r(dataPath(c.file));
    CHECK(r.rows() == 3);
    CHECK(r.cols() == 5);
    CHECK(r.shape() == std::vector<Index>{3, 5});
    CHECK(r.dtype() == c.dtype);
    CHECK(r.byteOrder() == c.order);
    CHECK(r.descr() == c.descr);
    CHECK_FALSE(r.fortranOrder());
    CHECK(r.version() == 1);
    CHECK(r.dataOffset() % 64 == 0);  // numpy aligns the data
    CHECK(r.template readAll<TestType>() == expectedMatrix<TestType>(3, 5));
    CHECK(sae::io::readNpy<TestType>(dataPath(c.file)) == expectedMatrix<TestType>(3, 5));
  }
}

TEMPLATE_TEST_CASE("NpyReader reads Fortran-order 2-D and 3-D arrays", "[npy]", float, double) {
  const NpyReader f2d(dataPath("f4_le_fortran.npy"));
  CHECK(f2d.fortranOrder());
  CHECK(f2d.shape() == std::vector<Index>{3, 5});
  CHECK(f2d.template readAll<TestType>() == expectedMatrix<TestType>(3, 5));
  CHECK(sae::io::readNpy<TestType>(dataPath("f8_be_fortran.npy")) ==
        expectedMatrix<TestType>(3, 5));

  for (const char* file : {"f8_3d_fortran.npy", "f2_3d_fortran_be.npy", "f4_3d_c.npy"}) {
    INFO(file);
    const NpyReader r(dataPath(file));
    CHECK(r.shape() == std::vector<Index>{2, 3, 4});
    CHECK(r.rows() == 6);
    CHECK(r.cols() == 4);
    CHECK(r.template readAll<TestType>() == expectedMatrix<TestType>(6, 4));
    // Every sub-range, including ranges that cross the boundary of the first dimension.
    for (Index b = 0; b <= 6; ++b) {
      for (Index e = b; e <= 6; ++e) {
        RowMatrix<TestType> part(e - b, 4);
        r.template readRows<TestType>(b, e, part);
        CHECK(part == expectedMatrix<TestType>(e - b, 4, b));
      }
    }
  }
}

TEST_CASE("NpyReader: 1-D arrays are one row, 0-D one element, zero rows are fine", "[npy]") {
  const NpyReader r(dataPath("f4_1d.npy"));
  CHECK(r.shape() == std::vector<Index>{7});
  CHECK(r.rows() == 1);
  CHECK(r.cols() == 7);
  CHECK(sae::io::readNpy<float>(dataPath("f4_1d.npy")) == expectedMatrix<float>(1, 7));

  const NpyReader s(dataPath("scalar.npy"));
  CHECK(s.shape().empty());
  CHECK(s.rows() == 1);
  CHECK(s.cols() == 1);
  CHECK(s.readAll<double>()(0, 0) == 2.5);

  const NpyReader z(dataPath("empty_rows.npy"));
  CHECK(z.shape() == std::vector<Index>{0, 4});
  CHECK(z.rows() == 0);
  CHECK(z.cols() == 4);
  CHECK(z.readAll<float>().size() == 0);
}

TEST_CASE("NpyReader reads format versions 2.0 and 3.0", "[npy]") {
  const NpyReader v2(dataPath("v2_f4.npy"));
  CHECK(v2.version() == 2);
  CHECK(v2.readAll<float>() == expectedMatrix<float>(3, 5));
  const NpyReader v3(dataPath("v3_f8.npy"));
  CHECK(v3.version() == 3);
  CHECK(v3.readAll<double>() == expectedMatrix<double>(3, 5));
}

TEST_CASE("npy header keys in any order, double quotes and long suffixes", "[npy]") {
  const NpyReader r(dataPath("keys_reordered.npy"));
  CHECK(r.shape() == std::vector<Index>{3, 5});
  CHECK(r.readAll<float>() == expectedMatrix<float>(3, 5));
}

TEST_CASE("float16 special values decode exactly in both byte orders", "[npy][dtype]") {
  // Bit patterns from generate.py (F16_SPECIAL), decoded by hand.
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<double> want = {0.0,
                                    -0.0,
                                    std::ldexp(1.0, -24),
                                    1023 * std::ldexp(1.0, -24),
                                    std::ldexp(1.0, -14),
                                    1.0,
                                    -2.0,
                                    65504.0,
                                    inf,
                                    -inf,
                                    std::numeric_limits<double>::quiet_NaN(),
                                    -std::ldexp(1.0, -24),
                                    1365.0 / 4096.0};
  for (const char* file : {"f2_special.npy", "f2_special_be.npy"}) {
    INFO(file);
    const RowMatrix<double> got = sae::io::readNpy<double>(dataPath(file));
    REQUIRE(got.rows() == 1);
    REQUIRE(got.cols() == static_cast<Index>(want.size()));
    for (Index i = 0; i < got.cols(); ++i) {
      INFO("element " << i);
      CHECK(sameValue(got(0, i), want[static_cast<std::size_t>(i)]));
    }
  }
}

TEST_CASE("readNpyMask reads |u1, <u1 and |b1 masks", "[npy]") {
  for (const char* file : {"mask_u1.npy", "mask_b1.npy", "mask_u1_lt.npy"}) {
    INFO(file);
    const sae::LatentMask m = sae::io::readNpyMask(dataPath(file));
    REQUIRE(m.size() == 10);
    for (Index i = 0; i < 10; ++i) CHECK(m(i) == (i % 3 == 0 ? 1 : 0));
  }
  const NpyReader b(dataPath("mask_b1.npy"));
  CHECK(b.dtype() == DType::Bool);
  CHECK(b.readAll<float>() == (RowMatrix<float>(1, 10) << 1, 0, 0, 1, 0, 0, 1, 0, 0, 1).finished());
}

TEST_CASE("readRows writes into blocks and checks its range and output size", "[npy]") {
  const NpyReader r(dataPath("f4_le_c.npy"));
  RowMatrix<double> big = RowMatrix<double>::Constant(4, 9, -1.0);
  r.readRows<double>(1, 3, big.block(1, 2, 2, 5));  // outer stride 9 != 5 columns
  CHECK(big.block(1, 2, 2, 5) == expectedMatrix<double>(2, 5, 1));
  CHECK(big(0, 0) == -1.0);
  CHECK(big(3, 8) == -1.0);
  CHECK((big.block(1, 0, 2, 2).array() == -1.0).all());

  RowMatrix<float> out(2, 5);
  const std::string p = dataPath("f4_le_c.npy");
  CHECK_THROWS_AS(r.readRows<float>(2, 4, out), sae::ConfigError);
  CHECK_THROWS_WITH(r.readRows<float>(2, 4, out),
                    p + ": readRows range [2, 4) is out of bounds for 3 rows");
  CHECK_THROWS_WITH(r.readRows<float>(-1, 1, out),
                    p + ": readRows range [-1, 1) is out of bounds for 3 rows");
  CHECK_THROWS_WITH(r.readRows<float>(2, 1, out),
                    p + ": readRows range [2, 1) is out of bounds for 3 rows");
  CHECK_THROWS_AS(r.readRows<float>(0, 1, out), sae::ConfigError);
  CHECK_THROWS_WITH(r.readRows<float>(0, 1, out), p + ": readRows output is 2x5, expected 1x5");
  RowMatrix<float> wide(2, 6);
  CHECK_THROWS_WITH(r.readRows<float>(0, 2, wide), p + ": readRows output is 2x6, expected 2x5");
  RowMatrix<float> none(0, 5);
  r.readRows<float>(3, 3, none);  // an empty range at the end is fine
}

TEST_CASE("NaN and infinity are passed through by readRows", "[npy]") {
  const NpyReader r(dataPath("f2_special.npy"));
  const RowMatrix<float> m = r.readAll<float>();
  CHECK(std::isinf(m(0, 8)));
  CHECK(std::isnan(m(0, 10)));
}

TEST_CASE("the npy header parser handles the Python literal subset", "[npy][parser]") {
  using sae::io::detail::PyLiteralParser;
  using sae::io::detail::PyValue;
  const std::string path = "h.npy";
  auto parse = [&](const std::string& text) {
    return PyLiteralParser(text, 10, path).parseDocument();
  };

  const PyValue d = parse(
      "{ 'a' : ( ) , \"b\": (5,), u'c': (7), 'd': [1, -2,], 'e': None, 'f': 1.5e-3, "
      "'g': 'x\\'y', 'h': True, }  \n ");
  REQUIRE(d.kind == PyValue::Kind::Dict);
  CHECK(d.keys == std::vector<std::string>{"a", "b", "c", "d", "e", "f", "g", "h"});
  CHECK(d.items[0].kind == PyValue::Kind::Tuple);
  CHECK(d.items[0].items.empty());
  CHECK(d.items[1].kind == PyValue::Kind::Tuple);  // (5,) is a 1-tuple
  REQUIRE(d.items[1].items.size() == 1);
  CHECK(d.items[1].items[0].integer == 5);
  CHECK(d.items[2].kind == PyValue::Kind::Int);  // (7) is just 7
  CHECK(d.items[2].integer == 7);
  CHECK(d.items[3].kind == PyValue::Kind::List);
  REQUIRE(d.items[3].items.size() == 2);
  CHECK(d.items[3].items[1].integer == -2);
  CHECK(d.items[4].kind == PyValue::Kind::None);
  CHECK(d.items[5].kind == PyValue::Kind::Float);
  CHECK(d.items[5].text == "1.5e-3");
  CHECK(d.items[6].text == "x'y");
  CHECK(d.items[7].boolean);
  CHECK(d.keyAt[1] == 10 + 14);  // byte offsets count from the start of the file

  const auto error = [&](const std::string& text) {
    try {
      parse(text);
    } catch (const sae::FormatError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string at = "h.npy: malformed npy header at byte ";
  CHECK(error("{1: 2}") == at + "11: dict keys must be strings, found an int");
  CHECK(error("{'a': 1,,}") == at + "18: expected a value, found ','");
  CHECK(error("{'a': 1 'b': 2}") == at + "18: expected ',' or '}' in a dict, found '''");
  CHECK(error("(1 2)") == at + "13: expected ',' or ')' in a tuple, found '2'");
  CHECK(error("[1, 2") == at + "15: expected ',' or ']' in a list, found the end of the header");
  CHECK(error("") == at + "10: expected a value, found the end of the header");
  CHECK(error("1.2.3") == at + "10: invalid number '1.2.3'");
  CHECK(error("-") == at + "10: invalid number '-'");
  CHECK(error("'a\nb'") == at + "10: unterminated string");
  CHECK(error("{\x01}") == at + "11: expected a value, found byte 0x01");
  CHECK(error("9223372036854775807") == "no error");
  CHECK(error("9223372036854775808") ==
        at + "10: integer 9223372036854775808 does not fit in 64 bits");
  CHECK(error(std::string(16, '[') + std::string(16, ']')) == "no error");
  CHECK(error(std::string(17, '[') + std::string(17, ']')) ==
        at + "26: nesting deeper than 16 levels");
}

// ------------------------------------------------------------------------------------ bad input

TEST_CASE("npy: open failures are IoError naming the path and the reason", "[npy][bad]") {
  const std::string missing = dataPath("does_not_exist.npy");
  CHECK_THROWS_AS(NpyReader(missing), sae::IoError);
  CHECK_THROWS_WITH(NpyReader(missing),
                    missing + ": cannot open for reading: No such file or directory");
  const std::string dir = dataPath("");
  CHECK_THROWS_AS(NpyReader(dir), sae::IoError);
  CHECK_THROWS_WITH(NpyReader(dir), dir + ": cannot map: Is a directory");
  CHECK_THROWS_AS(sae::io::readNpyMask(missing), sae::IoError);
  // A FIFO is refused at once (opening it for reading must not wait for a writer).
  TempDir tmp("npy");
  const std::string fifo = tmp.file("fifo.npy");
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  CHECK_THROWS_AS(NpyReader(fifo), sae::IoError);
  CHECK_THROWS_WITH(NpyReader(fifo), fifo + ": cannot map: not a regular file");
}

TEST_CASE("npy: every malformed file is a FormatError with a precise message", "[npy][bad]") {
  const std::string supported =
      "(supported: '<f4', '>f4', '<f8', '>f8', '<f2', '>f2', '|u1', '<u1', '|b1')";
  struct Case {
    const char* file;
    std::string message;  // after "<path>: "
  };
  const Case cases[] = {
      {"bad_empty.npy", "empty file: expected an npy file of at least 10 bytes"},
      {"bad_short.npy", "truncated npy preamble: expected at least 10 bytes, found 4"},
      {"bad_magic.npy",
       "not an npy file: bad magic at offset 0: expected 93 4e 55 4d 50 59 (\\x93NUMPY), "
       "found 93 4e 55 4d 50 58"},
      {"bad_version.npy",
       "unsupported npy format version 4.0 at offset 6 (supported: 1.0, 2.0, 3.0)"},
      {"bad_truncated_preamble_v2.npy",
       "truncated npy preamble: expected at least 12 bytes for version 2.0, found 11"},
      {"bad_header_past_end.npy",
       "header length 1000 at offset 8 runs past the end of the file: expected at least 1010 "
       "bytes, found 69"},
      {"bad_dict_colon.npy",
       "malformed npy header at byte 19: expected ':' after a dict key, found '''"},
      {"bad_dict_unterminated_string.npy", "malformed npy header at byte 20: unterminated string"},
      {"bad_dict_unclosed.npy",
       "malformed npy header at byte 68: expected a value, found the end of the header"},
      {"bad_dict_trailing.npy",
       "malformed npy header at byte 70: unexpected text after the value: 'x'"},
      {"bad_dict_deep.npy", "malformed npy header at byte 35: nesting deeper than 16 levels"},
      {"bad_dict_name.npy", "malformed npy header at byte 44: unexpected name 'false'"},
      {"bad_not_dict.npy", "invalid npy header at byte 10: expected a dict, found a tuple"},
      {"bad_missing_shape.npy", "invalid npy header at byte 10: missing key 'shape'"},
      {"bad_duplicate_key.npy", "invalid npy header at byte 51: duplicate key 'descr'"},
      {"bad_unknown_key.npy",
       "invalid npy header at byte 68: unknown key 'foo' (expected 'descr', 'fortran_order' and "
       "'shape')"},
      {"bad_dtype.npy", "invalid npy header at byte 20: unsupported dtype '<i4' " + supported},
      {"bad_structured.npy",
       "invalid npy header at byte 20: 'descr' must be a string, found a list (structured dtypes "
       "are not supported)"},
      {"bad_fortran_type.npy",
       "invalid npy header at byte 44: 'fortran_order' must be True or False, found an int"},
      {"bad_shape_negative.npy",
       "invalid npy header at byte 61: 'shape' entry 0 is -3; shape entries must be non-negative "
       "integers"},
      {"bad_shape_float.npy",
       "invalid npy header at byte 61: 'shape' entry 0 is 3.5; shape entries must be "
       "non-negative integers"},
      {"bad_shape_string.npy",
       "invalid npy header at byte 61: 'shape' entry 0 is a string; shape entries must be "
       "non-negative integers"},
      {"bad_shape_list.npy",
       "invalid npy header at byte 60: 'shape' must be a tuple, found a list"},
      {"bad_shape_overflow.npy",
       "shape (1099511627776, 1099511627776) has more elements than fit in 64 bits"},
      {"bad_shape_bytes_overflow.npy",
       "shape (2147483648, 2147483648) of float64 needs more bytes than fit in 64 bits"},
      {"bad_int_too_large.npy",
       "malformed npy header at byte 61: integer 99999999999999999999 does not fit in 64 bits"},
      {"bad_truncated_data.npy",
       "truncated data: expected 60 bytes after the header at offset 69, found 20 (shape (3, 5), "
       "dtype '<f4')"},
      {"bad_trailing_data.npy",
       "trailing data: expected 60 bytes after the header at offset 69, found 64 (shape (3, 5), "
       "dtype '<f4')"},
  };
  for (const auto& c : cases) {
    const std::string path = dataPath(c.file);
    INFO(c.file);
    CHECK_THROWS_AS(NpyReader(path), sae::FormatError);
    CHECK_THROWS_WITH(NpyReader(path), path + ": " + c.message);
    CHECK_THROWS_AS(sae::io::readNpy<float>(path), sae::FormatError);
    CHECK_THROWS_AS(sae::io::readNpyMask(path), sae::FormatError);
  }
}

TEST_CASE("readNpyMask rejects non-mask dtypes and shapes", "[npy][bad]") {
  const std::string f4 = dataPath("f4_le_c.npy");
  CHECK_THROWS_AS(sae::io::readNpyMask(f4), sae::FormatError);
  CHECK_THROWS_WITH(sae::io::readNpyMask(f4),
                    f4 + ": expected a mask of dtype '|u1' or '|b1', found '<f4'");
  const std::string m2 = dataPath("bad_mask_2d.npy");
  CHECK_THROWS_AS(sae::io::readNpyMask(m2), sae::FormatError);
  CHECK_THROWS_WITH(sae::io::readNpyMask(m2), m2 + ": expected a 1-D mask, found shape (2, 3)");
}

TEST_CASE("npy: truncated and mutated files throw sae::Error and never crash", "[npy][fuzz]") {
  TempDir tmp("npy");
  const std::string target = tmp.file("fuzz.npy");
  auto attempt = [&](const std::vector<char>& bytes) {
    writeBytes(target, bytes);
    try {
      const NpyReader r(target);
      const RowMatrix<double> m = r.readAll<double>();
      CHECK(m.rows() == r.rows());
      return true;
    } catch (const sae::Error&) {
      return false;
    }
  };
  XorShift64 next(0x9e3779b97f4a7c15ULL);
  for (const char* file :
       {"f4_le_c.npy", "f8_3d_fortran.npy", "v2_f4.npy", "keys_reordered.npy", "mask_b1.npy"}) {
    INFO(file);
    const std::vector<char> good = readBytes(dataPath(file));
    REQUIRE(attempt(good));
    for (std::size_t n = 0; n < good.size(); ++n) {
      INFO("truncated to " << n << " bytes");
      CHECK_FALSE(attempt(std::vector<char>(good.begin(), good.begin() + n)));
    }
    for (int i = 0; i < 400; ++i) {
      std::vector<char> bad = good;
      const int flips = 1 + static_cast<int>(next() % 3);
      for (int f = 0; f < flips; ++f) {
        // Mostly in the preamble and header, where the parser works.
        const std::size_t limit =
            next() % 4 == 0 ? bad.size() : std::min<std::size_t>(bad.size(), 128);
        bad[next() % limit] = static_cast<char>(next() & 0xff);
      }
      attempt(bad);  // either outcome is fine; only sae::Error may escape
    }
  }
}

// ------------------------------------------------------------------------------------ writing

TEST_CASE("writeNpy round-trips float and double matrices", "[npy][write]") {
  TempDir tmp("npy");
  const RowMatrix<float> f = expectedMatrix<float>(4, 3);
  sae::io::writeNpy(tmp.file("f.npy"), f);
  const NpyReader rf(tmp.file("f.npy"));
  CHECK(rf.version() == 1);
  CHECK(rf.descr() == "<f4");
  CHECK_FALSE(rf.fortranOrder());
  CHECK(rf.shape() == std::vector<Index>{4, 3});
  CHECK(rf.dataOffset() == 128);
  CHECK(rf.readAll<float>() == f);

  // The files are byte for byte what numpy's np.save writes (the committed files).
  sae::io::writeNpy(tmp.file("f4.npy"), expectedMatrix<float>(3, 5));
  CHECK(readBytes(tmp.file("f4.npy")) == readBytes(dataPath("f4_le_c.npy")));
  sae::io::writeNpy(tmp.file("f8.npy"), expectedMatrix<double>(3, 5));
  CHECK(readBytes(tmp.file("f8.npy")) == readBytes(dataPath("f8_le_c.npy")));
  sae::io::writeNpy(tmp.file("e.npy"), RowMatrix<float>(0, 4));
  CHECK(readBytes(tmp.file("e.npy")) == readBytes(dataPath("empty_rows.npy")));
  sae::io::writeNpyVector(tmp.file("v.npy"), expectedMatrix<float>(1, 7).row(0));
  CHECK(readBytes(tmp.file("v.npy")) == readBytes(dataPath("f4_1d.npy")));
  sae::LatentMask mask(10);
  for (Index i = 0; i < 10; ++i) mask(i) = i % 3 == 0 ? 1 : 0;
  sae::io::writeNpyMask(tmp.file("m.npy"), mask);
  CHECK(readBytes(tmp.file("m.npy")) == readBytes(dataPath("mask_u1.npy")));

  // A column-major expression is written in C order.
  const sae::ColMatrix<double> d = expectedMatrix<double>(3, 5).transpose();
  sae::io::writeNpy(tmp.file("d.npy"), d * 2.0);
  const NpyReader rd(tmp.file("d.npy"));
  CHECK(rd.descr() == "<f8");
  CHECK(rd.shape() == std::vector<Index>{5, 3});
  CHECK(rd.readAll<double>() == RowMatrix<double>(expectedMatrix<double>(3, 5).transpose() * 2.0));

  // A block with an outer stride.
  const RowMatrix<float> big = expectedMatrix<float>(6, 8);
  sae::io::writeNpy(tmp.file("block.npy"), big.block(2, 1, 3, 4));
  CHECK(sae::io::readNpy<float>(tmp.file("block.npy")) == RowMatrix<float>(big.block(2, 1, 3, 4)));
}

TEST_CASE("writeNpy of a large matrix reads back in ranges", "[npy][write]") {
  TempDir tmp("npy");
  RowMatrix<float> m(1500, 700);
  for (Index r = 0; r < m.rows(); ++r) {
    for (Index c = 0; c < m.cols(); ++c) m(r, c) = static_cast<float>(r * 1000 + c);
  }
  sae::io::writeNpy(tmp.file("big.npy"), m);
  const NpyReader r(tmp.file("big.npy"));
  CHECK(r.readAll<float>() == m);
  CHECK(r.readAll<double>() == m.cast<double>());
  RowMatrix<float> part(333, 700);
  r.readRows<float>(1000, 1333, part);
  CHECK(part == m.middleRows(1000, 333));
}

TEST_CASE("writeNpyVector and writeNpyMask write 1-D arrays", "[npy][write]") {
  TempDir tmp("npy");
  sae::Vector<double> v(5);
  v << 1.5, -2.0, 0.0, 3.25, 1e-300;
  sae::io::writeNpyVector(tmp.file("v.npy"), v);
  const NpyReader rv(tmp.file("v.npy"));
  CHECK(rv.shape() == std::vector<Index>{5});
  CHECK(rv.readAll<double>() == v.transpose());
  sae::io::writeNpyVector(tmp.file("row.npy"), v.transpose().cast<float>());
  CHECK(NpyReader(tmp.file("row.npy")).shape() == std::vector<Index>{5});
  CHECK_THROWS_AS(sae::io::writeNpyVector(tmp.file("m.npy"), RowMatrix<float>(2, 2)),
                  sae::ConfigError);
  CHECK_THROWS_WITH(sae::io::writeNpyVector(tmp.file("m.npy"), RowMatrix<float>(2, 2)),
                    tmp.file("m.npy") + ": writeNpyVector needs a vector, found a 2x2 matrix");
  CHECK_FALSE(fs::exists(tmp.file("m.npy")));

  sae::LatentMask mask(7);
  mask << 1, 0, 0, 1, 1, 0, 1;
  sae::io::writeNpyMask(tmp.file("mask.npy"), mask);
  CHECK(NpyReader(tmp.file("mask.npy")).descr() == "|u1");
  CHECK(sae::io::readNpyMask(tmp.file("mask.npy")) == mask);
}

TEST_CASE("writes are atomic: failures throw IoError naming the path and leave nothing behind",
          "[npy][write]") {
  TempDir tmp("npy");
  const RowMatrix<float> m = expectedMatrix<float>(2, 2);

  // Missing directory: the temporary file cannot be created.
  const std::string missing = tmp.file("no_such_dir/x.npy");
  CHECK_THROWS_AS(sae::io::writeNpy(missing, m), sae::IoError);
  CHECK_THROWS_WITH(
      sae::io::writeNpy(missing, m),
      Catch::StartsWith(missing + ": cannot create the temporary file '" + missing + ".tmp.") &&
          Catch::EndsWith("': No such file or directory"));

  // The destination is a directory: everything succeeds up to the rename, which fails; the
  // temporary file must be removed.
  fs::create_directory(tmp.file("occupied.npy"));
  const std::string occupied = tmp.file("occupied.npy");
  CHECK_THROWS_AS(sae::io::writeNpy(occupied, m), sae::IoError);
  CHECK_THROWS_WITH(sae::io::writeNpy(occupied, m),
                    Catch::StartsWith(occupied + ": cannot rename the temporary file over it") &&
                        Catch::EndsWith("Is a directory"));
  CHECK(tmp.entries() == std::vector<std::string>{"occupied.npy"});

  // An unwritable directory (root bypasses permissions, so only check as another user).
  if (::geteuid() != 0) {
    fs::create_directory(tmp.file("ro"));
    fs::permissions(tmp.file("ro"), fs::perms::owner_read | fs::perms::owner_exec);
    const std::string ro = tmp.file("ro/x.npy");
    CHECK_THROWS_AS(sae::io::writeNpy(ro, m), sae::IoError);
    CHECK_THROWS_WITH(sae::io::writeNpy(ro, m),
                      Catch::StartsWith(ro + ": ") && Catch::EndsWith("Permission denied"));
    fs::permissions(tmp.file("ro"), fs::perms::owner_all);
    CHECK(fs::is_empty(tmp.file("ro")));
  }

  // Overwriting replaces the file whole; no temporary files remain after success.
  sae::io::writeNpy(tmp.file("x.npy"), m);
  sae::io::writeNpy(tmp.file("x.npy"), RowMatrix<float>(expectedMatrix<float>(3, 1)));
  CHECK(sae::io::readNpy<float>(tmp.file("x.npy")) == expectedMatrix<float>(3, 1));
  for (const auto& name : tmp.entries()) CHECK(name.find(".tmp.") == std::string::npos);
}

TEST_CASE("AtomicFileWriter discards the temporary file when not committed", "[npy][write]") {
  TempDir tmp("npy");
  std::string temp;
  {
    sae::io::AtomicFileWriter w(tmp.file("a.bin"));
    temp = w.tempPath();
    w.write("abc", 3);
    CHECK(fs::exists(temp));
    CHECK(w.bytesWritten() == 3);
  }
  CHECK_FALSE(fs::exists(temp));
  CHECK_FALSE(fs::exists(tmp.file("a.bin")));
  CHECK(tmp.entries().empty());
}

// ------------------------------------------------------------------------------------ integers

namespace {

/// Elements of `bytes` bytes each, two's complement, in the given byte order (written by shifts,
/// independently of the library's decoding).
std::string intBytes(const std::vector<std::int64_t>& values, int bytes, bool bigEndian = false) {
  std::string out;
  for (const std::int64_t v : values) {
    const auto u = static_cast<std::uint64_t>(v);
    for (int i = 0; i < bytes; ++i) {
      const int shift = 8 * (bigEndian ? bytes - 1 - i : i);
      out += static_cast<char>((u >> shift) & 0xff);
    }
  }
  return out;
}

/// An npy file: numpy's preamble for `descr` and `shape` (Fortran order when asked), then `data`.
std::string npyFile(const std::string& descr, const std::vector<Index>& shape, bool fortran,
                    const std::string& data) {
  std::string pre = sae::io::detail::npyPreamble(descr, shape);
  if (fortran) pre.replace(pre.find("False"), 5, "True ");
  return pre + data;
}

}  // namespace

TEST_CASE("NpyIntegerReader reads integer arrays exactly, in C order", "[npy][integers]") {
  TempDir tmp("npy_int");
  auto read = [&](const std::string& name, const std::string& bytes) {
    writeBytes(tmp.file(name), bytes);
    return sae::io::readNpyIntegers(tmp.file(name));
  };
  using V = std::vector<std::int64_t>;
  const V i4 = {-5, 0, 7, 2147483647, -2147483647 - 1, 42};
  CHECK(read("i4.npy", npyFile("<i4", {2, 3}, false, intBytes(i4, 4))) == i4);
  const V i8 = {1, -2, std::int64_t(1) << 40, std::numeric_limits<std::int64_t>::min()};
  CHECK(read("i8_be.npy", npyFile(">i8", {4}, false, intBytes(i8, 8, true))) == i8);
  CHECK(read("i1.npy", npyFile("|i1", {3}, false, intBytes({-128, -1, 127}, 1))) ==
        V{-128, -1, 127});
  CHECK(read("u1.npy", npyFile("|u1", {2}, false, intBytes({255, 3}, 1))) == V{255, 3});
  CHECK(read("u2.npy", npyFile("<u2", {2}, false, intBytes({65535, 1}, 2))) == V{65535, 1});
  CHECK(read("i2_be.npy", npyFile(">i2", {2}, false, intBytes({-300, 300}, 2, true))) ==
        V{-300, 300});
  CHECK(read("u4.npy", npyFile("<u4", {2}, false, intBytes({4294967295, 50257}, 4))) ==
        V{4294967295, 50257});
  CHECK(read("u8.npy", npyFile("<u8", {1}, false, intBytes({9007199254740993}, 8))) ==
        V{9007199254740993});  // 2^53 + 1: exact, no trip through double
  CHECK(read("empty.npy", npyFile("<i4", {0, 5}, false, "")).empty());

  // Fortran order: element (r, c) = 10 r + c of a [2, 3] array is stored column by column.
  CHECK(read("f2.npy", npyFile("<i2", {2, 3}, true, intBytes({0, 10, 1, 11, 2, 12}, 2))) ==
        V{0, 1, 2, 10, 11, 12});
  // [2, 3, 2] in Fortran order: (i, j, k) = 100 i + 10 j + k at storage index i + 2 j + 6 k.
  V stored(12), c_order;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 2; ++k) {
        stored[static_cast<std::size_t>(i + 2 * j + 6 * k)] = 100 * i + 10 * j + k;
        c_order.push_back(100 * i + 10 * j + k);
      }
  CHECK(read("f3.npy", npyFile("<i8", {2, 3, 2}, true, intBytes(stored, 8))) == c_order);

  const sae::io::NpyIntegerReader r(tmp.file("f3.npy"));
  CHECK(r.size() == 12);
  CHECK(r.shape() == std::vector<Index>{2, 3, 2});
  CHECK(r.dtype() == DType::I64);
  CHECK(r.descr() == "<i8");
  CHECK(r.fortranOrder());
  CHECK(r[5] == 21);  // (0, 2, 1)
  CHECK_THROWS_WITH(r[12], tmp.file("f3.npy") + ": element 12 is out of range [0, 12)");
  CHECK_THROWS_AS(r[-1], sae::ConfigError);
}

TEST_CASE("NpyIntegerReader rejects non-integer data and uint64 beyond int64", "[npy][integers]") {
  TempDir tmp("npy_int_bad");
  const std::string f4 = tmp.file("f4.npy");
  writeBytes(f4, npyFile("<f4", {2}, false, std::string(8, '\0')));
  CHECK_THROWS_AS(sae::io::NpyIntegerReader(f4), sae::FormatError);
  CHECK_THROWS_WITH(sae::io::NpyIntegerReader(f4),
                    f4 + ": invalid npy header at byte 20: unsupported dtype '<f4' for integer "
                         "data (supported: '|i1', '<i2', '<i4', '<i8', '|u1', '<u2', '<u4', "
                         "'<u8', and '>' for big-endian)");
  const std::string b1 = tmp.file("b1.npy");
  writeBytes(b1, npyFile("|b1", {2}, false, std::string(2, '\1')));
  CHECK_THROWS_AS(sae::io::NpyIntegerReader(b1), sae::FormatError);
  const std::string pipe4 = tmp.file("pipe4.npy");
  writeBytes(pipe4, npyFile("|i4", {1}, false, std::string(4, '\0')));
  CHECK_THROWS_AS(sae::io::NpyIntegerReader(pipe4), sae::FormatError);
  const std::string truncated = tmp.file("truncated.npy");
  writeBytes(truncated, npyFile("<i4", {3}, false, intBytes({1, 2}, 4)));
  CHECK_THROWS_AS(sae::io::NpyIntegerReader(truncated), sae::FormatError);

  const std::string big = tmp.file("u8_big.npy");
  writeBytes(
      big, npyFile("<u8", {2}, false, intBytes({1, std::numeric_limits<std::int64_t>::min()}, 8)));
  const sae::io::NpyIntegerReader r(big);
  CHECK(r[0] == 1);
  CHECK_THROWS_WITH(r[1], big +
                              ": element 1 (9223372036854775808) does not fit in a signed "
                              "64-bit integer");
  CHECK_THROWS_AS(r.readAll(), sae::FormatError);
  // The real-valued reader still refuses integer arrays.
  writeBytes(tmp.file("i4.npy"), npyFile("<i4", {1}, false, intBytes({1}, 4)));
  CHECK_THROWS_AS(NpyReader(tmp.file("i4.npy")), sae::FormatError);
}

TEST_CASE("Integer elements convert to float / double", "[npy][integers]") {
  // Big-endian int16 -300, 300 and little-endian uint32 4294967295 (exact in double).
  const std::string be = intBytes({-300, 300}, 2, true);
  double out[2];
  sae::io::detail::convertElements(reinterpret_cast<const unsigned char*>(be.data()), DType::I16,
                                   ByteOrder::Big, 2, out);
  CHECK(out[0] == -300.0);
  CHECK(out[1] == 300.0);
  const std::string u4 = intBytes({4294967295}, 4);
  sae::io::detail::convertElements(reinterpret_cast<const unsigned char*>(u4.data()), DType::U32,
                                   ByteOrder::Little, 1, out);
  CHECK(out[0] == 4294967295.0);
  CHECK(sae::io::dtypeSize(DType::I64) == 8);
  CHECK(std::string(sae::io::dtypeName(DType::U16)) == "uint16");
  CHECK(sae::io::dtypeIsInteger(DType::I8));
  CHECK_FALSE(sae::io::dtypeIsInteger(DType::Bool));
  CHECK_FALSE(sae::io::dtypeIsInteger(DType::F32));
}

// ------------------------------------------------------------------------------------ fixtures

TEST_CASE("SAELens fixture .npy files have the shapes the README states", "[npy][fixtures]") {
  const std::string root = fixturesRoot();
  REQUIRE(fs::exists(root));
  // README: d_in = 16, d_sae = 64, B = 32; train_topk dead = every 3rd latent (22 dead).
  const sae::LatentMask dead = sae::io::readNpyMask(root + "/train_topk/dead_mask.npy");
  CHECK(NpyReader(root + "/train_topk/dead_mask.npy").descr() == "|u1");
  REQUIRE(dead.size() == 64);
  CHECK(dead.cast<int>().sum() == 22);
  for (Index i = 0; i < 64; ++i) CHECK(dead(i) == (i % 3 == 0 ? 1 : 0));

  const NpyReader x(root + "/train_topk/x.npy");
  CHECK(x.descr() == "<f8");
  CHECK(x.shape() == std::vector<Index>{32, 16});
  const NpyReader acts(root + "/train_topk/feature_acts.npy");
  CHECK(acts.shape() == std::vector<Index>{32, 64});
  const NpyReader xf(root + "/infer_topk_bf16/x.npy");
  CHECK(xf.descr() == "<f4");
  CHECK(xf.shape() == std::vector<Index>{32, 16});
  CHECK(xf.readAll<float>().allFinite());
}

}  // namespace sae_test_npy
