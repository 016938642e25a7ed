// Parity of the `sae` program with SAELens: `sae encode` on every infer_* fixture folder's sae/
// and x.npy gives SAELens's feature activations (feature_acts.npy) with the README's check: the
// same firing latents exactly, and |got - want| <= 1e-5 max(1, max |want|). Dense output
// (--dense, float32 .npy), and the default sparse output rebuilt into the same matrix.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <support/cli_runner.hpp>
#include <support/test_support.hpp>

#include <sae/io/npy.hpp>
#include <sae/io/safetensors.hpp>
#include <sae/kernels/bf16_matmul.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_cli_parity {

using sae::Index;
using sae::RowMatrix;
using sae::test::runCliOk;
using sae::test::TempDir;

namespace {

// The same firing latents, and |got - want| <= 1e-5 max(1, max |want|).
void checkFeatureActs(const RowMatrix<float>& got, const RowMatrix<double>& want) {
  REQUIRE(got.rows() == want.rows());
  REQUIRE(got.cols() == want.cols());
  Index mismatched = 0;
  for (Index i = 0; i < got.size(); ++i)
    mismatched += (got.data()[i] != 0.0f) != (want.data()[i] != 0.0);
  CHECK(mismatched == 0);
  const double tol = 1e-5 * std::max(1.0, want.cwiseAbs().maxCoeff());
  CHECK((got.cast<double>() - want).cwiseAbs().maxCoeff() <= tol);
}

bool exists(const std::string& p) { return std::filesystem::exists(p); }

}  // namespace

TEST_CASE("sae encode reproduces SAELens's feature activations on every infer_* fixture",
          "[parity]") {
  TempDir tmp("cli_parity");
  const std::vector<std::string> names = {"infer_standard",           "infer_standard_no_bdec_in",
                                          "infer_standard_layernorm", "infer_topk",
                                          "infer_topk_bf16",          "infer_gated",
                                          "infer_jumprelu",           "infer_batchtopk"};
  for (const auto& name : names) {
    INFO(name);
    const std::string dir = sae::test::fixturesRoot() + "/" + name;
    REQUIRE(exists(dir + "/x.npy"));
    const std::string dense = tmp.file(name + ".npy");
    runCliOk({"encode", "--sae", dir + "/sae", "--data", dir + "/x.npy", "--out", dense, "--dense",
              "--batch", "7"});
    const RowMatrix<float> got = sae::io::readNpy<float>(dense);
    checkFeatureActs(got, sae::io::readNpy<double>(dir + "/feature_acts.npy"));

    // The sparse output holds the same activations (same row chunks: the encoder product's
    // rounding may depend on how many rows it is given).
    const std::string sparse = tmp.file(name + ".safetensors");
    runCliOk({"encode", "--sae", dir + "/sae", "--data", dir + "/x.npy", "--out", sparse, "--batch",
              "7"});
    const sae::io::SafetensorsFile codes(sparse);
    RowMatrix<float> rebuilt = RowMatrix<float>::Zero(got.rows(), got.cols());
    // indices (I32) and row_offsets (I64) are read from the file's bytes.
    const auto& ti = codes.info("indices");
    const auto& tv = codes.info("values");
    REQUIRE(ti.dtype == "I32");
    const std::string bytes = sae::test::readFile(sparse);
    auto i32 = [&](std::uint64_t at) {
      std::int32_t v;
      std::memcpy(&v, bytes.data() + at, 4);
      return v;
    };
    const RowMatrix<float> values = codes.read<float>("values");
    if (codes.contains("row_offsets")) {  // CSR
      const auto& to = codes.info("row_offsets");
      for (Index r = 0; r < got.rows(); ++r) {
        std::int64_t b = 0, e = 0;
        std::memcpy(&b, bytes.data() + to.fileOffset + 8 * r, 8);
        std::memcpy(&e, bytes.data() + to.fileOffset + 8 * (r + 1), 8);
        for (std::int64_t j = b; j < e; ++j) rebuilt(r, i32(ti.fileOffset + 4 * j)) = values(0, j);
      }
    } else {  // [rows, k]
      REQUIRE(tv.shape.size() == 2);
      for (Index r = 0; r < got.rows(); ++r)
        for (Index j = 0; j < tv.shape[1]; ++j)
          rebuilt(r, i32(ti.fileOffset + 4 * (r * tv.shape[1] + j))) = values(r, j);
    }
    CHECK(rebuilt == got);
  }
}

TEST_CASE("sae encode --precision bf16 stays close to SAELens's feature activations",
          "[parity][bf16]") {
  TempDir tmp("cli_parity_bf16");
  const std::string dir = sae::test::fixturesRoot() + "/infer_topk";
  const std::string dense = tmp.file("bf16.npy");
  const std::vector<std::string> args = {"encode",       "--sae", dir + "/sae", "--data",
                                         dir + "/x.npy", "--out", dense,        "--dense",
                                         "--precision",  "bf16"};
  if (!sae::kernels::bf16Available()) {
    sae::test::checkCliFails(args, "bf16 precision needs oneDNN");
    return;
  }
  runCliOk(args);
  const RowMatrix<float> got = sae::io::readNpy<float>(dense);
  const RowMatrix<double> want = sae::io::readNpy<double>(dir + "/feature_acts.npy");
  REQUIRE(got.rows() == want.rows());
  REQUIRE(got.cols() == want.cols());
  // bf16 inputs (8 mantissa bits), fp32 accumulation: where both fire, within a few percent;
  // a latent at the edge of the top k may swap.
  const auto cmp = sae::test::compareFiring(got, want);
  INFO("firing in both " << cmp.both << " of " << cmp.either);
  CHECK(cmp.agreement() >= 0.9);
  CHECK(cmp.relative_error < 0.03);
  CHECK(cmp.relative_error > 0);  // bf16 did run: the fp32 output matches to 1e-5

  // eval takes the same flag.
  const sae::test::CliResult r =
      runCliOk({"eval", "--sae", dir + "/sae", "--data", dir + "/x.npy", "--precision", "bf16"});
  CHECK(r.out.find("explained_variance") != std::string::npos);
}

}  // namespace sae_test_cli_parity
