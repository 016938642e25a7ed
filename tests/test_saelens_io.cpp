// SAELens folders: the fixtures in tests/data/saelens (written by SAELens itself) load and
// reproduce SAELens's encode / decode; save -> load round trips for every architecture; bad folders
// are reported.
#include <unistd.h>
#include <cstdlib>
#include <fstream>
#include <string>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sae/io/npy.hpp>
#include <sae/io/saelens.hpp>
#include <sae/sae.hpp>
#include <sae/train/checkpoint.hpp>
#include <support/test_support.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_saelens_io {

namespace {

using sae::Index;
using sae::RowMatrix;

using sae::test::fixtureDir;

std::string tempDir(const std::string& name) {
  const std::string dir = "/tmp/sae_test_saelens_" + std::to_string(::getpid()) + "_" + name;
  REQUIRE(std::system(("rm -rf '" + dir + "'").c_str()) == 0);
  sae::train::makeDirectories(dir);
  return dir;
}

void writeText(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

double maxRelDiff(const RowMatrix<float>& got, const RowMatrix<float>& want) {
  REQUIRE(got.rows() == want.rows());
  REQUIRE(got.cols() == want.cols());
  return double((got - want).cwiseAbs().maxCoeff()) /
         std::max(1.0, double(want.cwiseAbs().maxCoeff()));
}

}  // namespace

TEST_CASE("SAELens-written folders load and reproduce SAELens's outputs", "[SaeLensIo]") {
  for (const char* name :
       {"infer_standard", "infer_topk", "infer_gated", "infer_standard_no_bdec_in",
        "infer_topk_bf16", "infer_jumprelu", "infer_batchtopk", "infer_standard_layernorm"}) {
    INFO(name);
    const std::string dir = fixtureDir(name);
    const auto loaded = sae::io::loadSaeLens<float>(dir + "/sae");
    const nlohmann::json cfg = nlohmann::json::parse(std::ifstream(dir + "/sae/cfg.json"));
    CHECK(loaded.config.architecture == cfg.at("architecture").get<std::string>());
    CHECK(loaded.config.sae_cfg.d_in == cfg.at("d_in").get<Index>());
    CHECK(loaded.config.sae_cfg.d_sae == cfg.at("d_sae").get<Index>());
    CHECK(loaded.config.normalize_activations ==
          cfg.at("normalize_activations").get<std::string>());
    CHECK(loaded.storage_dtype == cfg.at("dtype").get<std::string>());
    CHECK(loaded.config.notes.empty());
    const auto x = sae::io::readNpy<float>(dir + "/x.npy");
    const auto acts = sae::io::readNpy<float>(dir + "/feature_acts.npy");
    const auto out = sae::io::readNpy<float>(dir + "/sae_out.npy");
    const RowMatrix<float> dense = loaded.encodeDense(x);
    CHECK(((dense.array() != 0) == (acts.array() != 0)).all());
    CHECK(maxRelDiff(dense, acts) <= 1e-5);
    CHECK(maxRelDiff(loaded.forward(x), out) <= 1e-5);
  }
}

TEST_CASE("save -> load round trip for every architecture", "[SaeLensIo]") {
  sae::SaeConfig c;
  c.d_in = 12;
  c.d_sae = 40;
  c.k = 5;
  c.rescale_acts_by_decoder_norm = true;
  RowMatrix<float> x = RowMatrix<float>::Random(20, 12) * 2.0f;
  const std::string dir = tempDir("roundtrip");

  auto check = [&](auto model, const std::string& arch) {
    INFO(arch);
    // Move parameters off their initial values (decoder norms != 1, non-zero biases).
    auto& p = model.parameters();
    Eigen::VectorXf noise = Eigen::VectorXf::Random(p.size()) * 0.05f;
    p.flat() += noise;
    sae::io::SaeLensSaveOptions o;
    o.feature_density = Eigen::VectorXd::Constant(c.d_sae, 0.01);
    o.feature_density[3] = 0;
    o.metadata = {{"note", "test"}};
    sae::io::saveSaeLens(model, dir + "/" + arch, o);
    const auto loaded = sae::io::loadSaeLens<float>(dir + "/" + arch);
    CHECK(loaded.config.architecture == arch);
    CHECK(loaded.config.metadata.at("note") == "test");
    std::visit(
        [&](const auto& m) {
          const RowMatrix<float> want = model.forward(x);
          CHECK(maxRelDiff(m.forward(x), want) <= 1e-5);
        },
        loaded.model);
    const sae::io::SafetensorsFile w(dir + "/" + arch + "/sae_weights.safetensors");
    auto names = w.names();
    CHECK(std::is_sorted(names.begin(), names.end()));
    CHECK(w.info("W_enc").shape == std::vector<Index>{12, 40});
    CHECK(w.info("W_dec").shape == std::vector<Index>{40, 12});
    CHECK(w.info("W_enc").dtype == "F32");
    const Eigen::VectorXd sp = sae::io::readSparsity(dir + "/" + arch);
    CHECK(sp[0] == Approx(-2.0));
    CHECK(sp[3] == Approx(-10.0));
  };
  check(sae::StandardSAE<float>(c, 1), "standard");
  check(sae::GatedSAE<float>(c, 1), "gated");
  check(sae::TopKSAE<float>(c, 1), "topk");
  check(sae::JumpReLUSAE<float>(c, 1), "jumprelu");

  // TopK with rescale: decoder norms are folded into the encoder (unit-norm W_dec rows).
  const sae::io::SafetensorsFile w(dir + "/topk/sae_weights.safetensors");
  const RowMatrix<float> W_dec = w.read<float>("W_dec");
  for (Index i = 0; i < W_dec.rows(); ++i) CHECK(W_dec.row(i).norm() == Approx(1.0f).epsilon(1e-5));
  const nlohmann::json cfg = nlohmann::json::parse(std::ifstream(dir + "/topk/cfg.json"));
  for (const char* key : {"architecture", "d_in", "d_sae", "dtype", "apply_b_dec_to_input",
                          "normalize_activations", "k", "rescale_acts_by_decoder_norm", "metadata"})
    CHECK(cfg.contains(key));
}

TEST_CASE("Bad SAE folders are reported", "[SaeLensIo]") {
  const std::string dir = tempDir("bad");
  SECTION("unknown architecture lists the supported ones") {
    writeText(dir + "/cfg.json", "{\"architecture\": \"crosscoder\", \"d_in\": 3, \"d_sae\": 4}");
    CHECK_THROWS_WITH(sae::io::loadSaeLens<float>(dir),
                      Catch::Contains("unsupported architecture 'crosscoder'") &&
                          Catch::Contains("standard, gated, topk, jumprelu"));
  }
  SECTION("missing folder") {
    CHECK_THROWS_AS(sae::io::loadSaeLens<float>(dir + "/none"), sae::IoError);
  }
  SECTION("missing cfg.json") {
    CHECK_THROWS_WITH(sae::io::loadSaeLens<float>(dir), Catch::Contains("cfg.json: cannot open"));
  }
  SECTION("malformed cfg.json") {
    writeText(dir + "/cfg.json", "{\"architecture\": \"standard\", \"d_in\": ");
    CHECK_THROWS_WITH(sae::io::loadSaeLens<float>(dir), Catch::Contains("not valid JSON"));
    writeText(dir + "/cfg.json", "{\"architecture\": \"standard\", \"d_in\": -3, \"d_sae\": 4}");
    CHECK_THROWS_WITH(sae::io::loadSaeLens<float>(dir),
                      Catch::Contains("'d_in' must be a positive integer"));
    writeText(dir + "/cfg.json", "{\"architecture\": \"topk\", \"d_in\": 3, \"d_sae\": 4}");
    CHECK_THROWS_WITH(sae::io::loadSaeLens<float>(dir), Catch::Contains("missing field 'k'"));
  }
  SECTION("weights that do not match the config") {
    sae::SaeConfig c;
    c.d_in = 4;
    c.d_sae = 6;
    sae::io::saveSaeLens(sae::StandardSAE<float>(c, 0), dir);
    writeText(dir + "/cfg.json", "{\"architecture\": \"standard\", \"d_in\": 5, \"d_sae\": 6}");
    CHECK_THROWS_WITH(sae::io::loadSaeLens<float>(dir),
                      Catch::Contains("tensor 'W_enc' has shape [4, 6], expected [5, 6]"));
    writeText(dir + "/cfg.json", "{\"architecture\": \"gated\", \"d_in\": 4, \"d_sae\": 6}");
    CHECK_THROWS_WITH(sae::io::loadSaeLens<float>(dir),
                      Catch::Contains("missing tensor 'b_gate' for a gated SAE (tensors present: "
                                      "W_dec, W_enc, b_dec, b_enc)"));
  }
}

}  // namespace sae_test_saelens_io
