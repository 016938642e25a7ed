// Every SAE format the library reads and writes: SAELens folders (SAELens 6 and pre-6.0
// configs, float32 / float64 / float16 / bfloat16 weights, every normalize_activations mode),
// EleutherAI sparsify folders, Gemma Scope params.npz; conversions between them; broken
// inputs; the input / output normalisation; float16 rounding.
//
// The folders in tests/data/formats were written by tests/data/formats/generate.py (Python
// standard library only). Each holds x.npy and the feature activations and reconstruction of x
// that the generator computed in float64 from the published forward pass of the format, from
// the weights as stored; its rows keep every pre-activation 2e-3 away from a discontinuity.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <variant>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <support/test_support.hpp>

#include <sae/io/npy.hpp>
#include <sae/io/sae_formats.hpp>
#include <sae/sae.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_formats {

using sae::Index;
using sae::RowMatrix;
using sae::io::DType;
using sae::io::SaeFormat;
using sae::test::TempDir;

namespace {

std::string formatsPath(const std::string& name) {
  return std::string(SAE_TEST_DATA_DIR) + "/formats/" + name;
}

// The folder of a case: x.npy, feature_acts.npy and sae_out.npy live beside params.npz.
std::string caseFolder(const std::string& path) {
  const std::string suffix = "/params.npz";
  return path.size() > suffix.size() &&
                 path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0
             ? path.substr(0, path.size() - suffix.size())
             : path;
}

// |got - want| <= tol * max(1, |want|) for every element; reports the worst.
template <typename A>
void checkClose(const std::string& what, const RowMatrix<A>& got, const RowMatrix<double>& want,
                double tol) {
  INFO(what);
  REQUIRE(got.rows() == want.rows());
  REQUIRE(got.cols() == want.cols());
  double worst = 0;
  for (Index i = 0; i < got.size(); ++i)
    worst = std::max(worst, std::abs(double(got.data()[i]) - want.data()[i]) /
                                std::max(1.0, std::abs(want.data()[i])));
  INFO("worst relative difference " << worst);
  CHECK(worst <= tol);
}

template <typename A>
Index nonZeroMismatches(const RowMatrix<A>& got, const RowMatrix<double>& want) {
  Index n = 0;
  for (Index i = 0; i < got.size(); ++i) n += (got.data()[i] != 0) != (want.data()[i] != 0);
  return n;
}

// The loaded SAE reproduces the generator's values of the case in `folder`: in double to
// 1e-12, in float with the same firing latents and to 1e-5 of the largest value.
void checkAgainstExpected(const sae::io::LoadedSae<double>& d, const sae::io::LoadedSae<float>& f,
                          const std::string& folder) {
  const auto x = sae::io::readNpy<double>(folder + "/x.npy");
  const auto want_f = sae::io::readNpy<double>(folder + "/feature_acts.npy");
  const auto want_y = sae::io::readNpy<double>(folder + "/sae_out.npy");
  const RowMatrix<double> fd = d.encodeDense(x);
  CHECK(nonZeroMismatches(fd, want_f) == 0);
  checkClose("feature_acts, double", fd, want_f, 1e-12);
  checkClose("sae_out, double", d.forward(x), want_y, 1e-12);

  const RowMatrix<float> xf = x.cast<float>();
  const RowMatrix<float> ff = f.encodeDense(xf);
  CHECK(nonZeroMismatches(ff, want_f) == 0);
  const double scale_f = std::max(1.0, want_f.cwiseAbs().maxCoeff());
  const double scale_y = std::max(1.0, want_y.cwiseAbs().maxCoeff());
  CHECK((ff.cast<double>() - want_f).cwiseAbs().maxCoeff() <= 1e-5 * scale_f);
  CHECK((f.forward(xf).cast<double>() - want_y).cwiseAbs().maxCoeff() <= 1e-5 * scale_y);
}

struct Case {
  std::string path;
  SaeFormat format;
  std::string architecture;
  std::string dtype;  // storage dtype
  std::string normalize;
  bool apply_b_dec;
  Index d_sae;
  Index k;  // 0: not topk
};

const std::vector<Case>& cases() {
  static const std::vector<Case> c = {
      {"saelens_standard_f32", SaeFormat::SaeLens, "standard", "float32", "none", true, 10, 0},
      {"saelens_gated_f16", SaeFormat::SaeLens, "gated", "float16", "none", true, 10, 0},
      {"saelens_topk_bf16", SaeFormat::SaeLens, "topk", "bfloat16", "none", true, 10, 3},
      {"saelens_jumprelu_f64", SaeFormat::SaeLens, "jumprelu", "float64", "none", false, 10, 0},
      {"saelens_standard_constant_norm", SaeFormat::SaeLens, "standard", "float32",
       "constant_norm_rescale", true, 10, 0},
      {"saelens_topk_layer_norm", SaeFormat::SaeLens, "topk", "float32", "layer_norm", true, 10, 3},
      {"saelens_jumprelu_expected_avg", SaeFormat::SaeLens, "jumprelu", "float32",
       "expected_average_only_in", true, 10, 0},
      {"saelens_jumprelu_log_threshold", SaeFormat::SaeLens, "jumprelu", "float32", "none", true,
       10, 0},
      {"saelens_legacy_relu", SaeFormat::SaeLens, "standard", "float32", "none", true, 10, 0},
      {"saelens_legacy_topk", SaeFormat::SaeLens, "topk", "float32", "none", true, 10, 3},
      {"saelens_legacy_noarch_topk", SaeFormat::SaeLens, "topk", "float32",
       "expected_average_only_in", true, 10, 3},
      {"sparsify_topk", SaeFormat::Sparsify, "topk", "float32", "none", true, 12, 3},
      {"sparsify_multi/layers.0", SaeFormat::Sparsify, "topk", "bfloat16", "none", true, 10, 2},
      {"sparsify_multi/layers.1.mlp", SaeFormat::Sparsify, "topk", "float32", "none", true, 10, 3},
      {"gemma_scope", SaeFormat::GemmaScope, "jumprelu", "float32", "none", false, 10, 0},
      {"gemma_scope/params.npz", SaeFormat::GemmaScope, "jumprelu", "float32", "none", false, 10,
       0},
  };
  return c;
}

std::string readText(const std::string& path) { return sae::test::readFile(path); }

nlohmann::json readJson(const std::string& path) { return nlohmann::json::parse(readText(path)); }

}  // namespace

TEST_CASE("Every committed SAE reproduces the generator's values", "[formats]") {
  for (const Case& c : cases()) {
    INFO(c.path);
    const std::string path = formatsPath(c.path);
    CHECK(sae::io::detectSaeFormat(path) == c.format);
    const sae::io::SaeDescription desc = sae::io::describeSae(path);
    CHECK(desc.format == c.format);
    CHECK(desc.config.architecture == c.architecture);
    CHECK(desc.storage_dtype == c.dtype);
    CHECK(desc.config.normalize_activations == c.normalize);
    CHECK(desc.config.sae_cfg.apply_b_dec_to_input == c.apply_b_dec);
    CHECK(desc.config.sae_cfg.d_in == 6);
    CHECK(desc.config.sae_cfg.d_sae == c.d_sae);
    CHECK(desc.config.sae_cfg.k == c.k);
    const auto d = sae::io::loadSae<double>(path);
    const auto f = sae::io::loadSae<float>(path);
    CHECK(d.format == c.format);
    CHECK(d.storage_dtype == c.dtype);
    CHECK(d.config.architecture == c.architecture);
    checkAgainstExpected(d, f, caseFolder(path));
  }
}

TEST_CASE("Gemma Scope archives with w_enc / w_dec names hold the same SAE", "[formats]") {
  const auto a = sae::io::loadSae<double>(formatsPath("gemma_scope_w_names/params.npz"));
  const auto b = sae::io::loadSae<double>(formatsPath("gemma_scope"));
  const auto& ma = std::get<sae::JumpReLUSAE<double>>(a.model);
  const auto& mb = std::get<sae::JumpReLUSAE<double>>(b.model);
  CHECK(ma.parameters().flat() == mb.parameters().flat());
  bool noted = false;
  for (const auto& n : a.config.notes) noted = noted || n.find("w_enc") != std::string::npos;
  CHECK(noted);
}

TEST_CASE("Pre-6.0 SAELens configs: renamed fields, metadata and notes", "[formats]") {
  auto hasNote = [](const sae::io::SaeLensConfig& c, const std::string& text) {
    for (const auto& n : c.notes)
      if (n.find(text) != std::string::npos) return true;
    return false;
  };
  const auto relu = sae::io::describeSae(formatsPath("saelens_legacy_relu")).config;
  CHECK(relu.architecture == "standard");
  CHECK(relu.metadata.at("hook_name") == "blocks.2.hook_resid_pre");
  CHECK(relu.metadata.at("hook_layer") == 2);
  CHECK(relu.metadata.at("model_name") == "gpt2-small");
  CHECK(relu.metadata.at("sae_lens_training_version") == "2.1.3");
  CHECK(hasNote(relu, "pre-6.0 SAELens config"));
  CHECK(hasNote(relu, "'hook_point' read as metadata.hook_name"));
  CHECK(hasNote(relu, "no 'architecture' field: read as standard"));
  CHECK(hasNote(relu, "normalize_activations false read as 'none'"));
  CHECK(hasNote(relu, "'scaling_factor' (finetuning_scaling_factor) folded into the rows"));

  const auto topk = sae::io::describeSae(formatsPath("saelens_legacy_topk")).config;
  CHECK(topk.architecture == "topk");
  CHECK(topk.sae_cfg.k == 3);
  CHECK_FALSE(topk.sae_cfg.rescale_acts_by_decoder_norm);
  CHECK(hasNote(topk, "architecture 'standard' with activation_fn 'topk': read as topk"));
  CHECK(hasNote(topk, "'scaling_factor' is all ones: ignored"));

  const auto noarch = sae::io::describeSae(formatsPath("saelens_legacy_noarch_topk")).config;
  CHECK(noarch.architecture == "topk");
  CHECK(hasNote(noarch, "normalize_activations true read as 'expected_average_only_in'"));

  const auto log = sae::io::describeSae(formatsPath("saelens_jumprelu_log_threshold"));
  CHECK(hasNote(log.config, "'log_threshold'"));
  const auto hookz = sae::io::describeSae(formatsPath("saelens_jumprelu_expected_avg"));
  CHECK(hookz.config.reshape_activations == "hook_z");

  // A SAELens 6 config has no notes.
  CHECK(sae::io::describeSae(formatsPath("saelens_standard_f32")).config.notes.empty());
}

TEST_CASE("describeSae lists the stored tensors and the sparsity file", "[formats]") {
  const auto d = sae::io::describeSae(formatsPath("saelens_standard_f32"));
  CHECK(d.weights_path == formatsPath("saelens_standard_f32/sae_weights.safetensors"));
  CHECK(d.sparsity_path == formatsPath("saelens_standard_f32/sparsity.safetensors"));
  REQUIRE(d.tensors.size() == 4);
  CHECK(d.tensors[0].name == "W_dec");
  CHECK(d.tensors[0].dtype == "F32");
  CHECK(d.tensors[0].shape == std::vector<Index>{10, 6});
  CHECK(sae::io::readSparsity(d.path).size() == 10);

  const auto s = sae::io::describeSae(formatsPath("sparsify_topk"));
  std::vector<std::string> names;
  for (const auto& t : s.tensors) names.push_back(t.name);
  CHECK(names == std::vector<std::string>{"W_dec", "b_dec", "encoder.bias", "encoder.weight"});
  const auto g = sae::io::describeSae(formatsPath("gemma_scope"));
  CHECK(g.weights_path == formatsPath("gemma_scope/params.npz"));
  CHECK(g.tensors.size() == 5);
  CHECK(g.tensors[0].dtype == "<f4");

  // A path naming a file of the folder stands for the folder.
  CHECK(sae::io::describeSae(formatsPath("sparsify_topk/cfg.json")).path ==
        formatsPath("sparsify_topk"));
}

TEST_CASE("A folder of several SAEs names its subfolders", "[formats]") {
  const std::string run = formatsPath("sparsify_multi");
  CHECK(sae::io::saeSubfolders(run) == std::vector<std::string>{"layers.0", "layers.1.mlp"});
  const std::string want = run +
                           ": no SAE here (no cfg.json with weights, no params.npz), but 2 "
                           "subfolders hold one: layers.0, layers.1.mlp; load one of them, e.g. " +
                           run + "/layers.0";
  CHECK_THROWS_WITH(sae::io::loadSae<float>(run), want);
  CHECK_THROWS_AS(sae::io::loadSae<float>(run), sae::FormatError);
  CHECK_THROWS_WITH(sae::io::describeSae(run), want);
}

TEST_CASE("Broken inputs are reported with what was found", "[formats][bad]") {
  struct Bad {
    std::string path;
    std::string message;  // a part of the message
  };
  const std::vector<Bad> bad = {
      {"bad/missing_tensor",
       "sae_weights.safetensors: missing tensor 'b_enc' for a standard SAE (tensors present: "
       "W_dec, W_enc, b_dec)"},
      {"bad/wrong_shape",
       "sae_weights.safetensors: tensor 'W_dec' has shape [6, 10], expected [10, 6] (W_dec, "
       "from cfg.json)"},
      {"bad/extra_tensor",
       "sae_weights.safetensors: unexpected tensor 'b_gate' for a standard SAE (expected: W_enc, "
       "b_enc, W_dec, b_dec)"},
      {"bad/unknown_arch",
       "cfg.json: unsupported architecture 'crosscoder' (supported: standard, gated, topk, "
       "jumprelu)"},
      {"bad/batchtopk_arch", "save_inference_model writes it as a jumprelu SAE"},
      {"bad/tensor_dtype",
       "sae_weights.safetensors: tensor 'W_enc' has dtype I32; SAE weights must be float32, "
       "float64, float16 or bfloat16"},
      {"bad/cfg_dtype",
       "cfg.json: unsupported dtype 'float8_e4m3fn' (supported: float32, float64, float16, "
       "bfloat16)"},
      {"bad/normalize_unknown",
       "cfg.json: unsupported normalize_activations 'batch_norm' (supported: none, "
       "expected_average_only_in, constant_norm_rescale, layer_norm)"},
      {"bad/k_too_large", "cfg.json: k (11) exceeds d_sae (10)"},
      {"bad/truncated", "run past the end of the data section"},
      {"bad/legacy_tanh",
       "cfg.json: activation function 'tanh-relu' (activation_fn_str) cannot be represented"},
      {"bad/scaling_no_flag",
       "tensor 'scaling_factor' is not all ones, but cfg.json does not set "
       "finetuning_scaling_factor: true"},
      {"bad/sparsify_skip", "cfg.json: skip_connection: true cannot be represented as a TopK SAE"},
      {"bad/sparsify_w_skip_only",
       "sae.safetensors: tensor 'W_skip' (a skip connection) cannot be represented"},
      {"bad/sparsify_transcode", "cfg.json: transcode: true cannot be represented"},
      {"bad/sparsify_groupmax", "cfg.json: activation 'groupmax' cannot be represented"},
      {"bad/sparsify_num_latents",
       "sae.safetensors: tensor 'encoder.weight' has shape [10, 6], expected [12, 6] (W_enc, "
       "from cfg.json)"},
      {"bad/gemma_missing_threshold",
       "params.npz: missing tensor 'threshold' for a jumprelu SAE (tensors present: W_dec, "
       "W_enc, b_dec, b_enc)"},
      {"bad/gemma_compressed", "np.savez_compressed"},
      {"bad/gemma_int_threshold",
       "params.npz: tensor 'threshold' has dtype |u1; SAE weights must be float32"},
  };
  for (const Bad& b : bad) {
    INFO(b.path);
    CHECK_THROWS_AS(sae::io::loadSae<float>(formatsPath(b.path)), sae::FormatError);
    CHECK_THROWS_WITH(sae::io::loadSae<float>(formatsPath(b.path)), Catch::Contains(b.message));
    CHECK_THROWS_WITH(sae::io::describeSae(formatsPath(b.path)), Catch::Contains(b.message));
  }
  // Values are only checked once read.
  CHECK_NOTHROW(sae::io::describeSae(formatsPath("bad/nan_weight")));
  CHECK_THROWS_AS(sae::io::loadSae<float>(formatsPath("bad/nan_weight")), sae::NumericError);
  CHECK_THROWS_WITH(sae::io::loadSae<double>(formatsPath("bad/nan_weight")),
                    Catch::EndsWith("sae_weights.safetensors: tensor 'W_dec' has a non-finite "
                                    "value (nan) at flat index 16"));
  CHECK_THROWS_AS(sae::io::loadSae<float>(formatsPath("bad/missing_weights")), sae::IoError);
  CHECK_THROWS_WITH(sae::io::loadSae<float>(formatsPath("bad/missing_weights")),
                    Catch::EndsWith("missing_weights/sae_weights.safetensors: missing (the SAE "
                                    "folder has cfg.json but no weights)"));

  TempDir tmp("formats_bad");
  CHECK_THROWS_AS(sae::io::loadSae<float>(tmp.path()), sae::FormatError);
  CHECK_THROWS_WITH(sae::io::loadSae<float>(tmp.path()),
                    tmp.path() +
                        ": no SAE found (expected cfg.json with sae_weights.safetensors "
                        "(SAELens) or sae.safetensors (sparsify), or a Gemma Scope params.npz)");
  CHECK_THROWS_AS(sae::io::loadSae<float>(tmp.file("none")), sae::IoError);
  CHECK_THROWS_WITH(sae::io::loadSae<float>(tmp.file("none")), Catch::Contains("not a directory"));
  sae::test::writeBytes(tmp.file("notes.txt"), std::string("hello"));
  CHECK_THROWS_WITH(sae::io::loadSae<float>(tmp.file("notes.txt")),
                    Catch::StartsWith(tmp.file("notes.txt") + ": not an SAE"));
}

TEST_CASE("Conversions between formats keep the SAE's function", "[formats][convert]") {
  TempDir tmp("formats_convert");
  int n = 0;
  for (const Case& c : cases()) {
    INFO(c.path);
    const std::string folder = caseFolder(formatsPath(c.path));
    const auto src = sae::io::loadSae<double>(formatsPath(c.path));
    // Into SAELens, in float64: the same values as the source (to summation order).
    const std::string saelens = tmp.file("saelens" + std::to_string(n));
    sae::io::SaeLensSaveOptions o;
    o.dtype = DType::F64;
    sae::io::saveSaeLens(src, saelens, o);
    const auto back_d = sae::io::loadSaeLens<double>(saelens);
    const auto back_f = sae::io::loadSaeLens<float>(saelens);
    CHECK(back_d.config.architecture == c.architecture);
    CHECK(back_d.config.normalize_activations == c.normalize);
    CHECK(back_d.config.notes.empty());  // a SAELens 6 folder now
    CHECK(back_d.storage_dtype == "float64");
    checkAgainstExpected(back_d, back_f, folder);
    const nlohmann::json cfg = readJson(saelens + "/cfg.json");
    CHECK(cfg.at("dtype") == "float64");
    CHECK(cfg.at("metadata").at("sae_lens_version") == "6.18.0");
    // TopK into sparsify and back.
    if (c.architecture == "topk" && c.normalize != "layer_norm") {
      const std::string sparsify = tmp.file("sparsify" + std::to_string(n));
      sae::io::SparsifySaveOptions so;
      so.dtype = DType::F64;
      sae::io::saveSparsify(src, sparsify, so);
      CHECK(sae::io::detectSaeFormat(sparsify) == SaeFormat::Sparsify);
      checkAgainstExpected(sae::io::loadSae<double>(sparsify), sae::io::loadSae<float>(sparsify),
                           folder);
      const nlohmann::json scfg = readJson(sparsify + "/cfg.json");
      CHECK(scfg.at("d_in") == 6);
      CHECK(scfg.at("num_latents") == c.d_sae);
      CHECK(scfg.at("k") == c.k);
      CHECK(scfg.at("activation") == "topk");
      CHECK(scfg.at("transcode") == false);
    }
    ++n;
  }
  // The legacy run fields reach the SAELens 6 metadata.
  const nlohmann::json legacy = readJson(tmp.file("saelens8") + "/cfg.json");
  CHECK(legacy.at("metadata").at("hook_name") == "blocks.2.hook_resid_pre");
}

TEST_CASE("saveSaeLens stores each dtype and says so in cfg.json", "[formats][convert]") {
  TempDir tmp("formats_dtype");
  const auto src = sae::io::loadSae<double>(formatsPath("saelens_jumprelu_f64"));
  const auto& model = std::get<sae::JumpReLUSAE<double>>(src.model);
  struct Want {
    DType dtype;
    const char* cfg;
    const char* tensor;
    double rel;  // half a unit in the last place
  };
  for (const Want w : {Want{DType::F64, "float64", "F64", 0.0},
                       Want{DType::F32, "float32", "F32", std::ldexp(1.0, -24)},
                       Want{DType::F16, "float16", "F16", std::ldexp(1.0, -11)},
                       Want{DType::BF16, "bfloat16", "BF16", std::ldexp(1.0, -8)}}) {
    INFO(w.cfg);
    const std::string dir = tmp.file(w.cfg);
    sae::io::SaeLensSaveOptions o;
    o.dtype = w.dtype;
    sae::io::saveSaeLens(src, dir, o);
    CHECK(readJson(dir + "/cfg.json").at("dtype") == w.cfg);
    const sae::io::SafetensorsFile file(dir + "/sae_weights.safetensors");
    for (const auto& name : file.names()) CHECK(file.info(name).dtype == w.tensor);
    const auto back = sae::io::loadSaeLens<double>(dir);
    CHECK(back.storage_dtype == w.cfg);
    const auto& got = std::get<sae::JumpReLUSAE<double>>(back.model);
    for (const auto& e : model.parameters().entries()) {
      const auto a = model.parameters().flat(e.name);
      const auto b = got.parameters().flat(e.name);
      for (Index i = 0; i < a.size(); ++i) {
        INFO(e.name << "[" << i << "] = " << a[i] << " stored as " << b[i]);
        // Normal range of every type here: |v| > 2^-14.
        if (std::abs(a[i]) > std::ldexp(1.0, -14)) {
          CHECK(std::abs(b[i] - a[i]) <= w.rel * std::abs(a[i]));
        } else {
          CHECK(std::abs(b[i] - a[i]) <= std::ldexp(1.0, -25));
        }
      }
    }
  }
}

TEST_CASE("Rewriting a folder in its own dtype keeps every weight bit", "[formats][convert]") {
  TempDir tmp("formats_same_dtype");
  for (const char* name : {"saelens_topk_bf16", "saelens_gated_f16", "saelens_jumprelu_f64"}) {
    INFO(name);
    const auto src = sae::io::loadSae<double>(formatsPath(name));
    sae::io::SaeLensSaveOptions o;
    REQUIRE(sae::io::parseTorchDType(src.storage_dtype, o.dtype));
    sae::io::saveSaeLens(src, tmp.file(name), o);
    const sae::io::SafetensorsFile a(formatsPath(name) + "/sae_weights.safetensors");
    const sae::io::SafetensorsFile b(tmp.file(name) + "/sae_weights.safetensors");
    REQUIRE(a.names() == b.names());
    for (const auto& t : a.names()) {
      CHECK(b.info(t).dtype == a.info(t).dtype);
      CHECK(b.read<double>(t) == a.read<double>(t));
    }
  }
}

TEST_CASE("Saving what a format cannot hold is refused", "[formats][convert]") {
  TempDir tmp("formats_refuse");
  const auto gated = sae::io::loadSae<float>(formatsPath("saelens_gated_f16"));
  CHECK_THROWS_WITH(
      sae::io::saveSparsify(gated, tmp.file("a")),
      Catch::Contains("sparsify stores TopK SAEs only") && Catch::Contains("is a gated SAE"));
  const auto ln = sae::io::loadSae<float>(formatsPath("saelens_topk_layer_norm"));
  CHECK_THROWS_WITH(
      sae::io::saveSparsify(ln, tmp.file("b")),
      Catch::Contains("sparsify has no input normalisation") && Catch::Contains("layer_norm"));
  sae::SaeConfig c;
  c.d_in = 4;
  c.d_sae = 6;
  c.k = 2;
  c.apply_b_dec_to_input = false;
  CHECK_THROWS_WITH(sae::io::saveSparsify(sae::TopKSAE<float>(c, 1), tmp.file("c")),
                    Catch::Contains("sparsify always subtracts b_dec"));
  sae::StandardSAE<float> big(c, 1);
  big.parameters().flat("W_enc")[5] = 1e5f;
  sae::io::SaeLensSaveOptions o;
  o.dtype = DType::F16;
  CHECK_THROWS_WITH(sae::io::saveSaeLens(big, tmp.file("d"), o),
                    Catch::Contains("parameter 'W_enc' has a value of magnitude 100000, beyond "
                                    "the range of float16"));
  o.dtype = DType::U8;
  CHECK_THROWS_WITH(sae::io::saveSaeLens(big, tmp.file("e"), o), Catch::Contains("not uint8"));
  o.dtype = DType::F32;
  o.normalize_activations = "batch_norm";
  CHECK_THROWS_WITH(sae::io::saveSaeLens(big, tmp.file("f"), o),
                    Catch::Contains("unknown normalize_activations 'batch_norm'"));
  // Nothing was written by the refused calls.
  CHECK(tmp.entries().empty());
}

TEST_CASE("ActivationNormalizer matches SAELens's formulas on hand-computed rows",
          "[formats][normalization]") {
  using sae::ActivationNormalizer;
  using sae::NormalizeActivations;
  RowMatrix<double> x(2, 4);
  x << 1, 2, 3, 4, 3, 0, 4, 0;
  SECTION("layer_norm: (x - mean) / (unbiased std + 1e-5), out y * std + mean") {
    const ActivationNormalizer n(NormalizeActivations::LayerNorm);
    RowMatrix<double> xn = x;
    sae::NormalizationStats s;
    n.normalize(xn, s);
    // Row 0: mean 2.5, unbiased variance (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3.
    const double sd0 = std::sqrt(5.0 / 3.0);
    CHECK(xn(0, 0) == Approx(-1.5 / (sd0 + 1e-5)).epsilon(1e-15));
    CHECK(xn(0, 3) == Approx(1.5 / (sd0 + 1e-5)).epsilon(1e-15));
    // Row 1: mean 1.75, variance (1.5625 + 3.0625 + 5.0625 + 3.0625) / 3 = 12.75 / 3.
    const double sd1 = std::sqrt(12.75 / 3.0);
    CHECK(xn(1, 2) == Approx(2.25 / (sd1 + 1e-5)).epsilon(1e-15));
    RowMatrix<double> y(2, 4);
    y << 1, -1, 0.5, 0, 2, 0, 0, 1;
    n.denormalize(y, s);
    CHECK(y(0, 0) == Approx(sd0 + 2.5).epsilon(1e-15));
    CHECK(y(0, 3) == Approx(2.5).epsilon(1e-15));
    CHECK(y(1, 0) == Approx(2 * sd1 + 1.75).epsilon(1e-15));
  }
  SECTION("constant_norm_rescale: x sqrt(d) / ||x||, out y ||x|| / sqrt(d)") {
    const ActivationNormalizer n(NormalizeActivations::ConstantNormRescale);
    RowMatrix<double> xn = x;
    sae::NormalizationStats s;
    n.normalize(xn, s);
    // Row 1 has norm 5: c = 2 / 5.
    CHECK(xn(1, 0) == Approx(1.2).epsilon(1e-15));
    CHECK(xn(1, 2) == Approx(1.6).epsilon(1e-15));
    CHECK(xn.row(0).norm() == Approx(2.0).epsilon(1e-15));
    RowMatrix<double> y = RowMatrix<double>::Ones(2, 4);
    n.denormalize(y, s);
    CHECK(y(1, 3) == Approx(2.5).epsilon(1e-15));
    CHECK(y(0, 0) == Approx(std::sqrt(30.0) / 2).epsilon(1e-15));
  }
  SECTION("expected_average_only_in: identity, or a given unfolded scale") {
    RowMatrix<double> xn = x;
    sae::NormalizationStats s;
    const ActivationNormalizer id(NormalizeActivations::ExpectedAverageOnlyIn);
    CHECK(id.isIdentity());
    id.normalize(xn, s);
    CHECK(xn == x);
    const ActivationNormalizer scaled(NormalizeActivations::ExpectedAverageOnlyIn, 2.0);
    CHECK_FALSE(scaled.isIdentity());
    scaled.normalize(xn, s);
    CHECK(xn == 2.0 * x);
    RowMatrix<double> y = x;
    scaled.denormalize(y, s);
    CHECK(y == 0.5 * x);
    CHECK_THROWS_WITH(ActivationNormalizer(NormalizeActivations::LayerNorm, 2.0),
                      Catch::Contains("a scale applies to expected_average_only_in only"));
  }
  SECTION("rows that cannot be normalised") {
    RowMatrix<double> z = x;
    z.row(1).setZero();
    sae::NormalizationStats s;
    CHECK_THROWS_AS(ActivationNormalizer(NormalizeActivations::ConstantNormRescale).normalize(z, s),
                    sae::NumericError);
    CHECK_THROWS_WITH(
        ActivationNormalizer(NormalizeActivations::ConstantNormRescale).normalize(z, s),
        "input row 1 cannot be normalised (constant_norm_rescale): its norm is zero or its "
        "values overflow");
    RowMatrix<double> bad = x;
    bad(0, 1) = std::numeric_limits<double>::quiet_NaN();
    CHECK_THROWS_WITH(ActivationNormalizer(NormalizeActivations::LayerNorm).normalize(bad, s),
                      "input row 0 has a non-finite value");
    RowMatrix<double> one = RowMatrix<double>::Ones(3, 1);
    CHECK_THROWS_AS(ActivationNormalizer(NormalizeActivations::LayerNorm).normalize(one, s),
                    sae::ConfigError);
    RowMatrix<double> y(1, 4);
    CHECK_THROWS_WITH(ActivationNormalizer(NormalizeActivations::LayerNorm).denormalize(y, s),
                      Catch::Contains("statistics of 3 rows for a reconstruction of 1 rows"));
  }
}

TEST_CASE("doubleToHalf rounds once, to nearest even", "[formats][dtype]") {
  using sae::io::doubleToHalf;
  CHECK(doubleToHalf(1.0) == 0x3c00);
  CHECK(doubleToHalf(-2.0) == 0xc000);
  CHECK(doubleToHalf(0.0) == 0x0000);
  CHECK(doubleToHalf(-0.0) == 0x8000);
  CHECK(doubleToHalf(65504.0) == 0x7bff);                     // largest half
  CHECK(doubleToHalf(65519.99) == 0x7bff);                    // below the midpoint to 2^16
  CHECK(doubleToHalf(65520.0) == 0x7c00);                     // the midpoint: ties to infinity
  CHECK(doubleToHalf(-1e300) == 0xfc00);                      // -infinity
  CHECK(doubleToHalf(std::ldexp(1.0, -24)) == 0x0001);        // smallest subnormal
  CHECK(doubleToHalf(std::ldexp(1.0, -25)) == 0x0000);        // half of it: tie to even (0)
  CHECK(doubleToHalf(std::ldexp(1.5, -24)) == 0x0002);        // 1.5 units: tie to 2
  CHECK(doubleToHalf(std::ldexp(2.5, -24)) == 0x0002);        // 2.5 units: tie to 2
  CHECK(doubleToHalf(std::ldexp(1023.5, -24)) == 0x0400);     // rounds up to the smallest normal
  CHECK(doubleToHalf(1.0 + std::ldexp(1.0, -11)) == 0x3c00);  // tie: even significand 1.0
  CHECK(doubleToHalf(1.0 + std::ldexp(3.0, -11)) == 0x3c02);  // tie: even significand ...10
  CHECK(doubleToHalf(1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40)) == 0x3c01);  // above
  CHECK((doubleToHalf(std::numeric_limits<double>::quiet_NaN()) & 0x7fff) > 0x7c00);
  // Every finite half, and infinity, comes back as itself.
  int mismatches = 0;
  for (unsigned b = 0; b < 65536; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    if ((bits & 0x7fff) > 0x7c00) continue;  // NaN
    mismatches += doubleToHalf(double(sae::io::halfToFloat(bits))) != bits;
  }
  CHECK(mismatches == 0);
}

}  // namespace sae_test_formats
