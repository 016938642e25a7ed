// Tests of the sparse-codes file (CodesFileWriter, CodesFile): the layout `sae encode` writes
// (the tensors, dtypes, shapes and metadata of the file comment, checked through the plain
// safetensors reader), the round trip, and files broken one field at a time, with their
// messages.
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include <support/test_support.hpp>

#include <sae/io/codes_file.hpp>
#include <sae/io/safetensors.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_codes_file {

using namespace sae::io;
using sae::Index, sae::IndexMatrix, sae::RowMatrix;

namespace {

std::string tempDir(const std::string& name) { return sae::test::scratchDir("codes", name); }

// A codes file written tensor by tensor, to break one thing at a time.
struct RawCodes {
  std::map<std::string, std::string> meta = {
      {"format", "csr"}, {"d_sae", "4"}, {"rows", "2"}, {"architecture", "standard"}};
  std::vector<std::int32_t> indices = {0, 3, 1};
  std::vector<std::int64_t> offsets = {0, 2, 3};
  std::vector<float> values = {1.5f, -2.0f, 0.25f};

  std::string write(const std::string& path) const {
    SafetensorsWriter w;
    w.add("indices", {Index(indices.size())}, indices.data());
    w.add("row_offsets", {Index(offsets.size())}, offsets.data());
    w.add("values", {Index(values.size())}, values.data());
    for (const auto& [k, v] : meta) w.setMetadata(k, v);
    w.write(path);
    return path;
  }
};

}  // namespace

TEST_CASE("CodesFileWriter: TopK rows in chunks give the topk layout", "[codes_file]") {
  const std::string path = tempDir("topk") + "/codes.safetensors";
  CodesFileWriter w(6, "topk");
  IndexMatrix i1(2, 2), i2(1, 2);
  i1 << 5, 0, 2, 3;
  i2 << 1, 4;
  RowMatrix<float> v1(2, 2), v2(1, 2);
  v1 << 1.0f, 0.5f, 2.0f, 0.0f;
  v2 << 3.0f, 0.125f;
  w.addTopK(i1, v1);
  w.addTopK(i2, v2);
  CHECK(w.rows() == 3);
  w.write(path);

  // The layout, through the plain safetensors reader.
  const SafetensorsFile f(path);
  CHECK(f.names() == std::vector<std::string>{"indices", "values"});
  CHECK(f.info("indices").dtype == "I32");
  CHECK(f.info("indices").shape == std::vector<Index>{3, 2});
  CHECK(f.info("values").dtype == "F32");
  CHECK(f.info("values").shape == std::vector<Index>{3, 2});
  CHECK(f.metadata() ==
        std::map<std::string, std::string>{
            {"architecture", "topk"}, {"d_sae", "6"}, {"format", "topk"}, {"rows", "3"}});
  CHECK(f.readIntegers("indices") == std::vector<std::int64_t>{5, 0, 2, 3, 1, 4});

  const CodesFile c(path);
  CHECK(c.layout() == CodesLayout::TopK);
  CHECK(c.rows() == 3);
  CHECK(c.dSae() == 6);
  CHECK(c.k() == 2);
  CHECK(c.nnz() == 6);
  CHECK(c.architecture() == "topk");
  CHECK(c.rowBegin(2) == 4);
  CHECK(c.rowEnd(2) == 6);
  CHECK(c.latent(4) == 1);
  CHECK(c.value(5) == 0.125f);
  RowMatrix<float> dense = RowMatrix<float>::Zero(3, 6);
  dense(0, 5) = 1.0f;
  dense(0, 0) = 0.5f;
  dense(1, 2) = 2.0f;
  dense(2, 1) = 3.0f;
  dense(2, 4) = 0.125f;
  CHECK(c.toDense() == dense);
}

TEST_CASE("CodesFileWriter: dense rows keep their non-zero entries (csr layout)", "[codes_file]") {
  const std::string path = tempDir("csr") + "/codes.safetensors";
  CodesFileWriter w(4, "gated");
  RowMatrix<float> a(2, 4), b(1, 4);
  a << 0.0f, 1.5f, 0.0f, -2.0f,  //
      0.0f, 0.0f, 0.0f, 0.0f;
  b << 0.75f, 0.0f, 0.0f, 0.0f;
  w.addDense(a);
  w.addDense(b);
  w.write(path);

  const SafetensorsFile f(path);
  CHECK(f.names() == std::vector<std::string>{"indices", "row_offsets", "values"});
  CHECK(f.info("row_offsets").dtype == "I64");
  CHECK(f.readIntegers("indices") == std::vector<std::int64_t>{1, 3, 0});
  CHECK(f.readIntegers("row_offsets") == std::vector<std::int64_t>{0, 2, 2, 3});
  CHECK(f.read<float>("values") == (RowMatrix<float>(1, 3) << 1.5f, -2.0f, 0.75f).finished());
  CHECK(f.metadata().at("format") == "csr");
  CHECK(f.metadata().at("rows") == "3");

  const CodesFile c(path);
  CHECK(c.layout() == CodesLayout::Csr);
  CHECK(c.k() == 0);
  CHECK(c.nnz() == 3);
  CHECK(c.rowBegin(1) == c.rowEnd(1));
  RowMatrix<float> dense(3, 4);
  dense << a, b;
  CHECK(c.toDense() == dense);
}

TEST_CASE("CodesFileWriter: no rows is an empty csr file", "[codes_file]") {
  const std::string path = tempDir("empty") + "/codes.safetensors";
  CodesFileWriter(3, "jumprelu").write(path);
  const CodesFile c(path);
  CHECK(c.layout() == CodesLayout::Csr);
  CHECK(c.rows() == 0);
  CHECK(c.nnz() == 0);
  CHECK(SafetensorsFile(path).readIntegers("row_offsets") == std::vector<std::int64_t>{0});
}

TEST_CASE("CodesFileWriter refuses mixed layouts, a changing k and bad ids", "[codes_file][bad]") {
  CodesFileWriter w(4, "topk");
  IndexMatrix i(1, 2);
  i << 0, 1;
  RowMatrix<float> v = RowMatrix<float>::Ones(1, 2);
  w.addTopK(i, v);
  CHECK_THROWS_WITH(w.addDense(RowMatrix<float>::Zero(1, 4)),
                    Catch::Contains("TopK and dense rows cannot be mixed"));
  IndexMatrix i3(1, 3);
  i3 << 0, 1, 2;
  CHECK_THROWS_WITH(w.addTopK(i3, RowMatrix<float>::Ones(1, 3)),
                    Catch::Contains("TopK rows of k = 3 after rows of k = 2"));
  i << 0, 4;
  CHECK_THROWS_WITH(w.addTopK(i, v), Catch::Contains("latent id 4 outside [0, 4)"));
  CHECK_THROWS_WITH(w.addTopK(i, RowMatrix<float>::Ones(2, 2)),
                    Catch::Contains("indices are 1x2 but values 2x2"));
  CodesFileWriter d(4, "standard");
  CHECK_THROWS_WITH(d.addDense(RowMatrix<float>::Zero(1, 5)),
                    Catch::Contains("dense rows have 5 columns, expected d_sae = 4"));
  CHECK_THROWS_WITH(CodesFileWriter(0, "topk"), Catch::Contains("d_sae must be positive"));
}

TEST_CASE("CodesFile: the hand-written good file reads", "[codes_file]") {
  const std::string path = RawCodes().write(tempDir("raw_good") + "/c.safetensors");
  const CodesFile c(path);
  CHECK(c.rows() == 2);
  CHECK(c.architecture() == "standard");
  RowMatrix<float> dense = RowMatrix<float>::Zero(2, 4);
  dense(0, 0) = 1.5f;
  dense(0, 3) = -2.0f;
  dense(1, 1) = 0.25f;
  CHECK(c.toDense() == dense);
}

TEST_CASE("CodesFile names the file and the problem of a broken file", "[codes_file][bad]") {
  const std::string dir = tempDir("bad");
  int n = 0;
  auto fails = [&](const RawCodes& raw, const std::string& what) {
    const std::string path = raw.write(dir + "/" + std::to_string(n++) + ".safetensors");
    INFO(what);
    CHECK_THROWS_AS(CodesFile(path), sae::FormatError);
    CHECK_THROWS_WITH(CodesFile(path), Catch::StartsWith(path + ": not a valid codes file: ") &&
                                           Catch::Contains(what));
  };
  // One field broken at a time, and the message naming it.
  const std::vector<std::pair<std::function<void(RawCodes&)>, std::string>> cases = {
      {[](RawCodes& r) { r.meta.erase("format"); }, "metadata has no 'format'"},
      {[](RawCodes& r) { r.meta["format"] = "coo"; },
       "metadata 'format' is 'coo', expected 'topk' or 'csr'"},
      {[](RawCodes& r) { r.meta["d_sae"] = "4x"; },
       "metadata 'd_sae' is '4x', expected a non-negative integer"},
      {[](RawCodes& r) { r.meta["d_sae"] = "0"; }, "metadata 'd_sae' = 0 is not in [1, 2^31]"},
      {[](RawCodes& r) { r.meta["rows"] = "-2"; }, "metadata 'rows' is '-2'"},
      {[](RawCodes& r) { r.meta["rows"] = "99999999999999999999"; },
       "metadata 'rows' is '99999999999999999999'"},
      {[](RawCodes& r) { r.meta["rows"] = "5"; }, "'row_offsets' has shape [3], expected [6]"},
      {[](RawCodes& r) { r.meta["format"] = "topk"; },
       "tensors are indices, row_offsets, values, expected indices, values"},
      {[](RawCodes& r) {
         r.indices = {0, 4, 1};
       },
       "row 0 has latent id 4 outside [0, 4)"},
      {[](RawCodes& r) {
         r.indices = {3, 0, 1};
       },
       "row 0 has latent ids out of order (3 then 0)"},
      {[](RawCodes& r) {
         r.offsets = {0, 3, 2};
       },
       "row_offsets decrease at row 1 (3 then 2)"},
      {[](RawCodes& r) {
         r.offsets = {1, 2, 3};
       },
       "row_offsets[0] is 1, expected 0"},
      {[](RawCodes& r) {
         r.offsets = {0, 1, 2};
       },
       "row_offsets end at 2, but there are 3 entries"},
      {[](RawCodes& r) {
         r.values = {1.0f, 2.0f};
       },
       "'values' has shape [2], expected [3]"},
      {[](RawCodes& r) { r.meta.erase("architecture"); }, "metadata has no 'architecture'"},
  };
  for (const auto& [mutate, what] : cases) {
    RawCodes r;
    mutate(r);
    fails(r, what);
  }

  // TopK files: a wrong dtype, shape and a repeated latent.
  auto topk = [&](const std::vector<std::int32_t>& ids, Index rows, Index k, bool f64) {
    const std::string path = dir + "/" + std::to_string(n++) + ".safetensors";
    SafetensorsWriter w;
    const std::vector<float> v(ids.size(), 1.0f);
    w.add("indices", {rows, k}, ids.data());
    w.add("values", {rows, k}, v.data(), f64 ? sae::io::DType::F64 : sae::io::DType::F32);
    w.setMetadata("format", "topk");
    w.setMetadata("d_sae", "8");
    w.setMetadata("rows", "2");
    w.setMetadata("architecture", "topk");
    w.write(path);
    return path;
  };
  CHECK_THROWS_WITH(CodesFile(topk({0, 1, 2, 3}, 2, 2, true)),
                    Catch::Contains("'values' has dtype F64, expected F32"));
  CHECK_THROWS_WITH(CodesFile(topk({0, 1, 2, 3}, 1, 4, false)),
                    Catch::Contains("'indices' has shape [1, 4], expected [2, k]"));
  CHECK_THROWS_WITH(CodesFile(topk({}, 2, 0, false)), Catch::Contains("k must be positive"));
  CHECK_THROWS_WITH(CodesFile(topk({0, 1, 5, 5}, 2, 2, false)),
                    Catch::Contains("row 1 has latent id 5 twice"));
  CHECK_NOTHROW(CodesFile(topk({0, 1, 5, 4}, 2, 2, false)));
  CHECK_THROWS_AS(CodesFile(dir + "/missing.safetensors"), sae::IoError);
}

}  // namespace sae_test_codes_file
