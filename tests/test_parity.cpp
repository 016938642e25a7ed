// Parity with SAELens: the reference values in tests/data/saelens (or $SAE_FIXTURES_DIR/saelens)
// were produced by SAELens's own code; see that folder's README. Every shape, k and coefficient is
// read from the fixture files.
//
// Training cases (float64): loss terms, feature activations, reconstruction, the gradient of
// every parameter, one Adam step, and one clip-then-Adam step, to 1e-10 relative.
// Inference cases (float32 / bfloat16 weights): encode and decode of SAELens-saved SAEs.
#include <cstdlib>
#include <fstream>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sae/io/npy.hpp>
#include <sae/io/saelens.hpp>
#include <sae/io/safetensors.hpp>
#include <sae/sae.hpp>
#include <support/test_support.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_parity {

namespace {

using sae::Index;
using json = nlohmann::ordered_json;

using sae::test::fixtureDir;

// Keeps the keys in file order (losses.json lists its terms in SAELens's order).
json readJson(const std::string& path) {
  std::ifstream in(path);
  if (!in) FAIL("cannot open " << path);
  return json::parse(in);
}

// |got - want| <= tol * max(1, |want|) element-wise; reports the worst element.
template <typename A, typename B>
void requireClose(const std::string& what, const Eigen::MatrixBase<A>& got,
                  const Eigen::MatrixBase<B>& want, double tol) {
  INFO(what);
  REQUIRE(got.rows() == want.rows());
  REQUIRE(got.cols() == want.cols());
  double worst = 0;
  for (Index r = 0; r < got.rows(); ++r)
    for (Index c = 0; c < got.cols(); ++c) {
      const double w = double(want(r, c));
      worst = std::max(worst, std::abs(double(got(r, c)) - w) / std::max(1.0, std::abs(w)));
    }
  INFO("worst relative difference " << worst);
  CHECK(worst <= tol);
}

sae::SaeConfig trainingConfig(const json& cfg) {
  sae::SaeConfig c;
  c.d_in = cfg.at("d_in").get<Index>();
  c.d_sae = cfg.at("d_sae").get<Index>();
  if (!cfg.at("k").is_null()) c.k = cfg.at("k").get<Index>();
  if (!cfg.at("l1_coefficient").is_null()) c.l1_coefficient = cfg.at("l1_coefficient");
  if (!cfg.at("lp_norm").is_null()) c.lp_norm = cfg.at("lp_norm");
  if (!cfg.at("aux_loss_coefficient").is_null())
    c.aux_loss_coefficient = cfg.at("aux_loss_coefficient");
  if (!cfg.at("rescale_acts_by_decoder_norm").is_null())
    c.rescale_acts_by_decoder_norm = cfg.at("rescale_acts_by_decoder_norm");
  if (!cfg.at("l0_coefficient").is_null()) c.l0_coefficient = cfg.at("l0_coefficient");
  if (!cfg.at("jumprelu_bandwidth").is_null()) c.jumprelu_bandwidth = cfg.at("jumprelu_bandwidth");
  if (!cfg.at("jumprelu_sparsity_loss_mode").is_null()) {
    const std::string mode = cfg.at("jumprelu_sparsity_loss_mode");
    REQUIRE((mode == "step" || mode == "tanh"));
    c.sparsity_loss_mode = mode == "step" ? sae::SaeConfig::SparsityLossMode::Step
                                          : sae::SaeConfig::SparsityLossMode::Tanh;
  }
  if (!cfg.at("pre_act_loss_coefficient").is_null())
    c.pre_act_loss_coefficient = cfg.at("pre_act_loss_coefficient");
  c.apply_b_dec_to_input = cfg.at("apply_b_dec_to_input");
  REQUIRE(cfg.at("normalize_activations") == "none");
  return c;
}

template <typename Scalar>
void loadParameters(sae::ParameterSet<Scalar>& params, const std::string& path) {
  const sae::io::SafetensorsFile file(path);
  std::vector<std::string> want, have = file.names();
  for (const auto& e : params.entries()) want.push_back(e.name);
  std::sort(want.begin(), want.end());
  std::sort(have.begin(), have.end());
  REQUIRE(have == want);
  for (const auto& e : params.entries()) params.assignRowMajor(e.name, file.read<Scalar>(e.name));
}

template <typename Scalar>
void compareParameters(const std::string& what, const sae::ParameterSet<Scalar>& got,
                       const std::string& path, double tol) {
  const sae::io::SafetensorsFile file(path);
  REQUIRE(file.names().size() == got.entries().size());
  for (const auto& e : got.entries())
    requireClose(what + " " + e.name, got.rowMajorCopy(e.name), file.read<double>(e.name), tol);
}

template <typename W, typename = void>
struct HasSparsePath : std::false_type {};
template <typename W>
struct HasSparsePath<W, std::void_t<decltype(W::sparse_threshold)>> : std::true_type {};

enum class Path { Default, Dense, Sparse };

// `path`: where the architecture has dense and sparse kernels, force one of them.
template <typename Model>
void runTrainingCase(const std::string& name, Path path = Path::Default) {
  const std::string dir = fixtureDir(name);
  const json cfg = readJson(dir + "/config.json");
  REQUIRE(cfg.at("architecture") == Model::architecture());
  Model model(trainingConfig(cfg));
  loadParameters(model.parameters(), dir + "/params.safetensors");
  const auto x = sae::io::readNpy<double>(dir + "/x.npy");
  const sae::LatentMask dead = sae::io::readNpyMask(dir + "/dead_mask.npy");
  sae::TrainOptions opts;
  opts.dead_mask = &dead;

  typename Model::Workspace ws;
  if constexpr (HasSparsePath<typename Model::Workspace>::value) {
    if (path != Path::Default) ws.sparse_threshold = path == Path::Sparse ? 1.1 : 0.0;
  }
  auto grads = model.makeGradients();
  const auto terms = model.backward(x, grads, opts, ws);
  if constexpr (HasSparsePath<typename Model::Workspace>::value) {
    if (path != Path::Default) REQUIRE(ws.used_sparse == (path == Path::Sparse));
  }
  constexpr double tol = 1e-10;

  // Loss terms: the same names in the same order, then the total.
  const json losses = readJson(dir + "/losses.json");
  std::vector<std::string> want_names;
  for (const auto& item : losses.items())
    if (item.key() != "total") want_names.push_back(item.key());
  std::vector<std::string> got_names;
  for (const auto& t : terms.terms()) got_names.push_back(t.first);
  CHECK(got_names == want_names);
  for (const auto& item : losses.items()) {
    const double want = item.value();
    INFO("loss " << item.key());
    CHECK(std::abs(terms[item.key()] - want) <= tol * std::max(1.0, std::abs(want)));
  }
  requireClose("feature_acts", ws.codes.toDense(),
               sae::io::readNpy<double>(dir + "/feature_acts.npy"), tol);
  requireClose("sae_out", ws.reconstruction, sae::io::readNpy<double>(dir + "/sae_out.npy"), tol);
  compareParameters("gradient", grads, dir + "/grads.safetensors", tol);

  sae::AdamOptions adam_opts;
  adam_opts.lr = cfg.at("adam").at("lr");
  adam_opts.beta1 = cfg.at("adam").at("beta1");
  adam_opts.beta2 = cfg.at("adam").at("beta2");
  adam_opts.eps = cfg.at("adam").at("eps");
  {
    auto params = model.parameters();
    sae::Adam<double> adam(params, adam_opts);
    adam.step(params, grads);
    compareParameters("adam", params, dir + "/params_after_adam.safetensors", tol);
  }
  {
    auto params = model.parameters();
    auto clipped = grads;
    const double norm = sae::clipGradNorm(clipped, cfg.at("max_grad_norm").get<double>());
    const json stats = readJson(dir + "/stats.json");
    CHECK(norm == Approx(stats.at("grad_global_norm").get<double>()).epsilon(1e-12));
    sae::Adam<double> adam(params, adam_opts);
    adam.step(params, clipped);
    compareParameters("clipped adam", params, dir + "/params_after_clipped_adam.safetensors", tol);
  }
}

// Inference: the SAELens folder read by the library's SAELens reader (weights float32, or
// bfloat16 widened exactly), float32 input; normalize_activations applied in and out by the
// loaded SAE, as SAELens's encode and decode(encode(x)) do.
template <typename Model>
void runInferenceCase(const std::string& name) {
  const std::string dir = fixtureDir(name);
  const json cfg = readJson(dir + "/sae/cfg.json");
  const auto loaded = sae::io::loadSaeLens<float>(dir + "/sae");
  REQUIRE(std::holds_alternative<Model>(loaded.model));
  CHECK(loaded.config.architecture == cfg.at("architecture").get<std::string>());
  CHECK(loaded.config.normalize_activations == cfg.at("normalize_activations").get<std::string>());
  CHECK(loaded.dIn() == cfg.at("d_in").get<Index>());
  CHECK(loaded.dSae() == cfg.at("d_sae").get<Index>());
  const auto x = sae::io::readNpy<float>(dir + "/x.npy");
  const auto want_f = sae::io::readNpy<float>(dir + "/feature_acts.npy");
  const auto want_y = sae::io::readNpy<float>(dir + "/sae_out.npy");
  const sae::RowMatrix<float> f = loaded.encodeDense(x);
  // The same set of firing latents, exactly; values and outputs to float rounding.
  REQUIRE(f.rows() == want_f.rows());
  REQUIRE(f.cols() == want_f.cols());
  Index mismatched = 0;
  for (Index i = 0; i < f.size(); ++i)
    mismatched += (f.data()[i] != 0.0f) != (want_f.data()[i] != 0.0f);
  CHECK(mismatched == 0);
  const double tol_f = 1e-5 * std::max(1.0f, want_f.cwiseAbs().maxCoeff());
  const double tol_y = 1e-5 * std::max(1.0f, want_y.cwiseAbs().maxCoeff());
  CHECK((f - want_f).cwiseAbs().maxCoeff() <= tol_f);
  CHECK((loaded.forward(x) - want_y).cwiseAbs().maxCoeff() <= tol_y);
}

}  // namespace

TEST_CASE("parity: train_standard", "[parity][StandardSAE]") {
  runTrainingCase<sae::StandardSAE<double>>("train_standard");
}
TEST_CASE("parity: train_topk", "[parity][TopKSAE]") {
  runTrainingCase<sae::TopKSAE<double>>("train_topk");
}
TEST_CASE("parity: train_topk_few_dead", "[parity][TopKSAE]") {
  runTrainingCase<sae::TopKSAE<double>>("train_topk_few_dead");
}
TEST_CASE("parity: train_topk_no_dead", "[parity][TopKSAE]") {
  runTrainingCase<sae::TopKSAE<double>>("train_topk_no_dead");
}
TEST_CASE("parity: train_gated", "[parity][GatedSAE]") {
  runTrainingCase<sae::GatedSAE<double>>("train_gated");
}
TEST_CASE("parity: train_jumprelu, dense and sparse paths", "[parity][JumpReLUSAE]") {
  SECTION("default") { runTrainingCase<sae::JumpReLUSAE<double>>("train_jumprelu"); }
  SECTION("dense") { runTrainingCase<sae::JumpReLUSAE<double>>("train_jumprelu", Path::Dense); }
  SECTION("sparse") { runTrainingCase<sae::JumpReLUSAE<double>>("train_jumprelu", Path::Sparse); }
}
TEST_CASE("parity: infer_standard", "[parity][StandardSAE]") {
  runInferenceCase<sae::StandardSAE<float>>("infer_standard");
}
TEST_CASE("parity: infer_standard_no_bdec_in", "[parity][StandardSAE]") {
  runInferenceCase<sae::StandardSAE<float>>("infer_standard_no_bdec_in");
}
TEST_CASE("parity: infer_topk", "[parity][TopKSAE]") {
  runInferenceCase<sae::TopKSAE<float>>("infer_topk");
}
TEST_CASE("parity: infer_topk_bf16", "[parity][TopKSAE]") {
  runInferenceCase<sae::TopKSAE<float>>("infer_topk_bf16");
}
TEST_CASE("parity: infer_gated", "[parity][GatedSAE]") {
  runInferenceCase<sae::GatedSAE<float>>("infer_gated");
}
TEST_CASE("parity: infer_standard_layernorm", "[parity][StandardSAE]") {
  runInferenceCase<sae::StandardSAE<float>>("infer_standard_layernorm");
}
TEST_CASE("parity: infer_jumprelu", "[parity][JumpReLUSAE]") {
  runInferenceCase<sae::JumpReLUSAE<float>>("infer_jumprelu");
}
TEST_CASE("parity: infer_batchtopk (saved by SAELens as jumprelu)", "[parity][JumpReLUSAE]") {
  runInferenceCase<sae::JumpReLUSAE<float>>("infer_batchtopk");
}

}  // namespace sae_test_parity
