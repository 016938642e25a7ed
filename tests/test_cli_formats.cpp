// The `sae` program on SAEs of every format: `sae encode`, `sae eval`, `sae convert` and
// `sae info` on the committed SAELens, sparsify and Gemma Scope test SAEs. Expected values come
// from tests/data/formats/generate.py (see test_formats.cpp) and the SAELens fixtures (see their
// README).
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <support/cli_runner.hpp>
#include <support/test_support.hpp>

#include <sae/io/npy.hpp>
#include <sae/io/safetensors.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_cli_formats {

using sae::Index;
using sae::RowMatrix;
using sae::test::checkCliFails;
using sae::test::runCli;
using sae::test::runCliOk;
using sae::test::TempDir;

namespace {

std::string formatsPath(const std::string& name) {
  return std::string(SAE_TEST_DATA_DIR) + "/formats/" + name;
}

bool exists(const std::string& p) { return std::filesystem::exists(p); }

// The same firing latents, and |got - want| <= 1e-5 max(1, max |want|) (the README's check).
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

// `sae encode --dense` of x.npy in `data_dir` with the SAE `sae`, against feature_acts.npy.
void checkEncode(const std::string& sae, const std::string& data_dir, const TempDir& tmp) {
  INFO("sae " << sae);
  const std::string out = tmp.file("codes.npy");
  runCliOk({"encode", "--sae", sae, "--data", data_dir + "/x.npy", "--out", out, "--dense"});
  checkFeatureActs(sae::io::readNpy<float>(out),
                   sae::io::readNpy<double>(data_dir + "/feature_acts.npy"));
}

nlohmann::json info(const std::string& path) {
  return nlohmann::json::parse(runCliOk({"info", path}).out);
}

}  // namespace

TEST_CASE("sae encode reads every format", "[encode]") {
  TempDir tmp("cli_encode_formats");
  for (const char* c : {"saelens_gated_f16", "saelens_topk_bf16", "saelens_standard_constant_norm",
                        "saelens_legacy_relu", "sparsify_topk", "sparsify_multi/layers.0"})
    checkEncode(formatsPath(c), formatsPath(c), tmp);
  checkEncode(formatsPath("gemma_scope/params.npz"), formatsPath("gemma_scope"), tmp);
  checkCliFails(
      {"encode", "--sae", formatsPath("sparsify_multi"), "--data",
       formatsPath("sparsify_multi/layers.0/x.npy"), "--out", tmp.file("c.npy"), "--dense"},
      "2 subfolders hold one: layers.0, layers.1.mlp");
}

TEST_CASE("sae eval undoes layer_norm on the reconstruction", "[encode]") {
  const std::string dir = sae::test::fixturesRoot() + "/infer_standard_layernorm";
  const auto r = runCliOk({"eval", "--sae", dir + "/sae", "--data", dir + "/x.npy"});
  const auto j = nlohmann::json::parse(r.out);
  const auto x = sae::io::readNpy<double>(dir + "/x.npy");
  const auto y = sae::io::readNpy<double>(dir + "/sae_out.npy");
  const double mse = (x - y).rowwise().squaredNorm().mean();
  CHECK(j.at("mse").get<double>() == Approx(mse).epsilon(1e-4));
}

TEST_CASE("sae convert writes SAELens and sparsify folders that encode the same", "[convert]") {
  TempDir tmp("cli_convert");
  struct Src {
    std::string sae, data, arch, src_format;
  };
  const std::vector<Src> sources = {
      {formatsPath("saelens_topk_bf16"), formatsPath("saelens_topk_bf16"), "topk", "saelens"},
      {formatsPath("saelens_gated_f16"), formatsPath("saelens_gated_f16"), "gated", "saelens"},
      {formatsPath("saelens_legacy_relu"), formatsPath("saelens_legacy_relu"), "standard",
       "saelens"},
      {formatsPath("sparsify_topk"), formatsPath("sparsify_topk"), "topk", "sparsify"},
      {formatsPath("gemma_scope/params.npz"), formatsPath("gemma_scope"), "jumprelu",
       "gemma_scope"},
  };
  int n = 0;
  for (const Src& s : sources) {
    INFO(s.sae);
    const std::string dst = tmp.file("out" + std::to_string(n++));
    const auto r = runCliOk({"convert", s.sae, dst});
    const auto j = nlohmann::json::parse(r.out);
    CHECK(j.at("src_format") == s.src_format);
    CHECK(j.at("format") == "saelens");
    CHECK(j.at("architecture") == s.arch);
    const auto i = info(dst);
    CHECK(i.at("format") == "saelens");
    CHECK(i.at("architecture") == s.arch);
    CHECK_FALSE(i.contains("notes"));
    checkEncode(dst, s.data, tmp);
    if (s.arch == "topk") {
      const std::string sp = dst + "_sparsify";
      runCliOk({"convert", s.sae, sp, "--to", "sparsify", "--dtype", "float64"});
      CHECK(info(sp).at("format") == "sparsify");
      CHECK(info(sp).at("dtype") == "float64");
      checkEncode(sp, s.data, tmp);
      const std::string back = dst + "_back";
      runCliOk({"convert", sp, back});
      checkEncode(back, s.data, tmp);
    }
  }
  // The source's dtype is kept by default; --dtype chooses another.
  CHECK(info(tmp.file("out0")).at("dtype") == "bfloat16");
  runCliOk({"convert", formatsPath("saelens_topk_bf16"), tmp.file("f16"), "--dtype", "float16"});
  const auto f16 = info(tmp.file("f16"));
  CHECK(f16.at("dtype") == "float16");
  CHECK(f16.at("saelens_config").at("dtype") == "float16");
  for (const auto& t : f16.at("tensors")) CHECK(t.at("dtype") == "F16");
  // The SAELens sparsity file comes along.
  runCliOk({"convert", formatsPath("saelens_standard_f32"), tmp.file("with_sparsity")});
  CHECK(sae::test::readFile(tmp.file("with_sparsity/sparsity.safetensors")) ==
        sae::test::readFile(formatsPath("saelens_standard_f32/sparsity.safetensors")));
}

TEST_CASE("sae convert refuses to overwrite without --force, and to lose information",
          "[convert]") {
  TempDir tmp("cli_convert_refuse");
  const std::string dst = tmp.file("sae");
  runCliOk({"convert", formatsPath("saelens_topk_layer_norm"), dst});
  const std::string before = sae::test::readFile(dst + "/sae_weights.safetensors");
  checkCliFails({"convert", formatsPath("saelens_gated_f16"), dst},
                dst + ": already exists; pass --force to overwrite it");
  CHECK(sae::test::readFile(dst + "/sae_weights.safetensors") == before);
  // --force overwrites; files of the other format are removed.
  runCliOk({"convert", formatsPath("sparsify_topk"), dst, "--to", "sparsify", "--force"});
  CHECK(exists(dst + "/sae.safetensors"));
  CHECK_FALSE(exists(dst + "/sae_weights.safetensors"));
  CHECK(info(dst).at("format") == "sparsify");
  runCliOk({"convert", formatsPath("saelens_standard_f32"), dst, "--force"});
  CHECK_FALSE(exists(dst + "/sae.safetensors"));
  CHECK(exists(dst + "/sparsity.safetensors"));
  runCliOk({"convert", formatsPath("saelens_gated_f16"), dst, "--force"});
  CHECK_FALSE(exists(dst + "/sparsity.safetensors"));  // not the gated SAE's
  CHECK(info(dst).at("architecture") == "gated");

  checkCliFails({"convert", formatsPath("saelens_gated_f16"), tmp.file("sp"), "--to", "sparsify"},
                "sparsify stores TopK SAEs only");
  checkCliFails(
      {"convert", formatsPath("saelens_topk_layer_norm"), tmp.file("sp"), "--to", "sparsify"},
      "sparsify has no input normalisation");
  CHECK_FALSE(exists(tmp.file("sp")));
  for (const auto& e : std::filesystem::directory_iterator(tmp.path()))
    CHECK(e.path().filename().string().find(".tmp.") == std::string::npos);
  checkCliFails({"convert", formatsPath("saelens_gated_f16"), tmp.file("x"), "--dtype", "int8"},
                "--dtype");
  checkCliFails({"convert", formatsPath("saelens_gated_f16"), tmp.file("x"), "--to", "onnx"},
                "--to");
  checkCliFails({"convert", formatsPath("sparsify_multi"), tmp.file("x")}, "layers.1.mlp");
  checkCliFails({"convert", formatsPath("bad/missing_tensor"), tmp.file("x")},
                "missing tensor 'b_enc'");
  checkCliFails({"convert", formatsPath("saelens_gated_f16")}, "dst");
}

TEST_CASE("sae info shows format, architecture, shapes, dtype and normalisation", "[info]") {
  struct Want {
    std::string path, format, arch, dtype, normalize;
    Index d_sae;
  };
  const std::vector<Want> wants = {
      {"saelens_standard_f32", "saelens", "standard", "float32", "none", 10},
      {"saelens_gated_f16", "saelens", "gated", "float16", "none", 10},
      {"saelens_topk_bf16", "saelens", "topk", "bfloat16", "none", 10},
      {"saelens_jumprelu_f64", "saelens", "jumprelu", "float64", "none", 10},
      {"saelens_standard_constant_norm", "saelens", "standard", "float32", "constant_norm_rescale",
       10},
      {"saelens_topk_layer_norm", "saelens", "topk", "float32", "layer_norm", 10},
      {"saelens_legacy_noarch_topk", "saelens", "topk", "float32", "expected_average_only_in", 10},
      {"sparsify_topk", "sparsify", "topk", "float32", "none", 12},
      {"sparsify_multi/layers.0", "sparsify", "topk", "bfloat16", "none", 10},
      {"gemma_scope/params.npz", "gemma_scope", "jumprelu", "float32", "none", 10},
      {"gemma_scope", "gemma_scope", "jumprelu", "float32", "none", 10},
  };
  for (const Want& w : wants) {
    INFO(w.path);
    const auto j = info(formatsPath(w.path));
    CHECK(j.at("format") == w.format);
    CHECK(j.at("architecture") == w.arch);
    CHECK(j.at("dtype") == w.dtype);
    CHECK(j.at("normalize_activations") == w.normalize);
    CHECK(j.at("d_in") == 6);
    CHECK(j.at("d_sae") == w.d_sae);
    CHECK(j.at("tensors").size() >= 4);
    CHECK(j.contains("apply_b_dec_to_input"));
    if (w.arch == "topk") CHECK(j.contains("k"));
  }
  const auto legacy = info(formatsPath("saelens_legacy_relu"));
  CHECK(legacy.at("notes").size() >= 3);
  CHECK(legacy.at("saelens_config").at("metadata").at("hook_name") == "blocks.2.hook_resid_pre");
  CHECK(info(formatsPath("saelens_standard_f32")).at("sparsity").size() == 1);
  // A plain archive is still shown as one.
  CHECK(info(std::string(SAE_TEST_DATA_DIR) + "/io/npz_named.npz").at("format") == "npz");
  checkCliFails({"info", formatsPath("sparsify_multi")},
                "2 subfolders hold one: layers.0, layers.1.mlp");
  checkCliFails({"info", formatsPath("bad/sparsify_transcode")}, "transcode: true");
}

}  // namespace sae_test_cli_formats
