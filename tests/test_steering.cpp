// Feature steering and ablation (sae::steer), for every architecture: FeatureEditor against an
// independent computation (encode, edit the dense codes by hand, x + decode(f') - decode(f)) and
// against the closed form x + sum_i (f'_i - f_i) s_i W_dec[i, :]; bitwise no-ops; in-place edits of
// the caller's buffer; row selections; the output scale of normalised SAEs; decoder directions;
// argument validation.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include <sae/io/npy.hpp>
#include <sae/io/saelens.hpp>
#include <sae/sae.hpp>

#include <support/test_support.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_steering {

// The exception type and its exact message.
#define CHECK_THROWS_MESSAGE_AS(expr, message, type) \
  CHECK_THROWS_MATCHES(expr, type, Catch::Matchers::Message(message))

namespace {

using sae::test::randomBatch;

using sae::Index;
using sae::RowMatrix;
using sae::steer::EditList;
using sae::steer::FeatureEdit;
using sae::steer::RowSelection;

constexpr Index kDin = 6;
constexpr Index kSae = 12;
constexpr Index kRows = 5;
constexpr Index kDead = kSae - 1;  // a latent that never fires (bias -100)

template <typename Model_, bool Rescale_>
struct Case {
  using Model = Model_;
  static constexpr bool kRescale = Rescale_;
};

// A small model with biases and decoder row norms far from the initialisation's (norms in
// [0.3, 1.3], so that dividing by them matters), and latent kDead switched off.
template <typename Model>
Model makeModel(bool rescale) {
  using S = typename Model::Scalar;
  sae::SaeConfig cfg;
  cfg.d_in = kDin;
  cfg.d_sae = kSae;
  cfg.k = 4;
  cfg.rescale_acts_by_decoder_norm = rescale;
  Model m(cfg, 7);
  sae::Rng rng(11);
  auto& p = m.parameters();
  auto W_dec = p.rowMajor("W_dec");
  for (Index i = 0; i < kSae; ++i) W_dec.row(i) *= S(rng.uniform(3.0, 13.0));
  auto W_enc = p.colMajor("W_enc");
  for (Index i = 0; i < W_enc.size(); ++i) W_enc.data()[i] *= S(rng.uniform(2.0, 6.0));
  for (const auto& e : p.entries()) {
    if (e.name == "W_enc" || e.name == "W_dec") continue;
    auto v = p.flat(e.name);
    for (Index i = 0; i < v.size(); ++i) v[i] = S(0.1 * rng.normal());
  }
  for (const char* gate : {"b_enc", "b_gate"})
    if (p.contains(gate)) p.flat(gate)[kDead] = S(-100);
  return m;
}

// Dense [rows, d_sae] code matrix as the model's Codes type.
template <typename Model>
typename Model::Codes codesFromDense(const RowMatrix<typename Model::Scalar>& f) {
  using S = typename Model::Scalar;
  typename Model::Codes codes;
  if constexpr (std::is_same<typename Model::Codes, sae::DenseCodes<S>>::value) {
    codes.values = f;
  } else {
    codes.d_sae = f.cols();
    codes.indices.resize(f.rows(), f.cols());
    for (Index b = 0; b < f.rows(); ++b)
      for (Index i = 0; i < f.cols(); ++i) codes.indices(b, i) = static_cast<std::int32_t>(i);
    codes.values = f;
  }
  return codes;
}

template <typename Model>
RowMatrix<typename Model::Scalar> denseCodes(const Model& m,
                                             const RowMatrix<typename Model::Scalar>& x) {
  return m.encode(x).toDense();
}

// The edit list applied by hand to dense codes, on the rows flagged in `rows` (all if empty).
template <typename S>
RowMatrix<S> editByHand(const RowMatrix<S>& f, const EditList& edits,
                        const std::vector<bool>& rows = {}) {
  RowMatrix<S> g = f;
  for (Index b = 0; b < f.rows(); ++b) {
    if (!rows.empty() && !rows[static_cast<std::size_t>(b)]) continue;
    for (const auto& e : edits) {
      S& v = g(b, e.feature);
      switch (e.op) {
        case sae::steer::EditOp::Set:
          v = S(e.value);
          break;
        case sae::steer::EditOp::Add:
          v = v + S(e.value);
          break;
        case sae::steer::EditOp::Multiply:
          v = v * S(e.value);
          break;
        case sae::steer::EditOp::Zero:
          v = 0;
          break;
      }
    }
  }
  return g;
}

// Independent computation: x + decode(f') - decode(f).
template <typename Model>
RowMatrix<typename Model::Scalar> viaDecode(const Model& m,
                                            const RowMatrix<typename Model::Scalar>& x,
                                            const EditList& edits,
                                            const std::vector<bool>& rows = {}) {
  const auto f = denseCodes(m, x);
  const auto g = editByHand(f, edits, rows);
  return x + m.decode(codesFromDense<Model>(g)) - m.decode(codesFromDense<Model>(f));
}

// Closed form: x + sum_i (f'_i - f_i) s_i W_dec[i, :], s_i = 1 / ||W_dec[i, :]|| for TopK with
// rescale_acts_by_decoder_norm, 1 otherwise (the architecture headers' formulas).
template <typename Model>
RowMatrix<typename Model::Scalar> closedForm(const Model& m,
                                             const RowMatrix<typename Model::Scalar>& x,
                                             const EditList& edits) {
  using S = typename Model::Scalar;
  const auto f = denseCodes(m, x);
  const auto g = editByHand(f, edits);
  const auto W = m.parameters().rowMajor("W_dec");
  const bool divide =
      std::string(Model::architecture()) == "topk" && m.config().rescale_acts_by_decoder_norm;
  RowMatrix<S> out = x;
  for (Index b = 0; b < x.rows(); ++b)
    for (Index i = 0; i < kSae; ++i) {
      const S s = divide ? S(1) / W.row(i).norm() : S(1);
      out.row(b) += (g(b, i) - f(b, i)) * s * W.row(i);
    }
  return out;
}

template <typename S>
double maxAbsDiff(const RowMatrix<S>& a, const RowMatrix<S>& b) {
  return double((a - b).cwiseAbs().maxCoeff());
}

template <typename S>
bool bitwiseEqual(const RowMatrix<S>& a, const RowMatrix<S>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(S) * std::size_t(a.size())) == 0;
}

// A latent active in at least two rows and inactive in at least one, if the batch has one,
// else any latent active somewhere.
template <typename S>
Index pickActive(const RowMatrix<S>& f) {
  Index fallback = -1;
  for (Index i = 0; i < f.cols(); ++i) {
    const Index on = (f.col(i).array() != S(0)).count();
    if (on >= 2 && on < f.rows()) return i;
    if (on > 0 && fallback < 0) fallback = i;
  }
  return fallback;
}

}  // namespace

TEMPLATE_TEST_CASE("FeatureEditor: Zero / Set / Add / Multiply equal x + decode(f') - decode(f)",
                   "[steering]", (Case<sae::StandardSAE<double>, false>),
                   (Case<sae::GatedSAE<double>, false>), (Case<sae::JumpReLUSAE<double>, false>),
                   (Case<sae::TopKSAE<double>, false>), (Case<sae::TopKSAE<double>, true>)) {
  using Model = typename TestType::Model;
  const Model m = makeModel<Model>(TestType::kRescale);
  const RowMatrix<double> x = randomBatch<double>(kRows, kDin, 3);
  const RowMatrix<double> f = denseCodes(m, x);
  const Index a = pickActive(f);
  REQUIRE(a >= 0);
  REQUIRE(f.col(kDead).cwiseAbs().maxCoeff() == 0.0);
  // A second active latent different from a.
  Index a2 = -1;
  for (Index i = 0; i < kSae && a2 < 0; ++i)
    if (i != a && f.col(i).cwiseAbs().maxCoeff() > 0) a2 = i;
  REQUIRE(a2 >= 0);
  Index other = 0;  // a third latent, active or not
  while (other == a || other == a2 || other == kDead) ++other;

  const std::vector<EditList> lists = {
      {FeatureEdit::zero(a)},
      {FeatureEdit::set(a, 0.7)},
      {FeatureEdit::set(kDead, 0.5)},  // an inactive latent: adds its direction everywhere
      {FeatureEdit::add(a, -0.3)},
      {FeatureEdit::multiply(a, 2.5)},
      {FeatureEdit::multiply(a2, -1.5), FeatureEdit::add(other, 0.25), FeatureEdit::zero(a),
       FeatureEdit::set(kDead, 1.25)},
  };
  sae::steer::FeatureEditor<Model> editor(m);
  CHECK(editor.units() == (TestType::kRescale ? sae::steer::DecoderUnits::DividedByNorm
                                              : sae::steer::DecoderUnits::Plain));
  for (std::size_t l = 0; l < lists.size(); ++l) {
    INFO("edit list " << l);
    editor.setEdits(lists[l]);
    RowMatrix<double> got = x;
    editor.apply(got);
    CHECK(maxAbsDiff(got, viaDecode(m, x, lists[l])) <= 1e-12);
    CHECK(maxAbsDiff(got, closedForm(m, x, lists[l])) <= 1e-12);
    CHECK(maxAbsDiff(got, x) > 1e-3);  // the edit did something
    // The codes the editor saw are the model's.
    CHECK(maxAbsDiff<double>(editor.codes().toDense(), f) == 0.0);
    // edited() returns the same as apply() on a copy.
    CHECK(bitwiseEqual<double>(editor.edited(x), got));
  }
}

TEMPLATE_TEST_CASE("FeatureEditor: Zero removes exactly the latent's decoder term", "[steering]",
                   (Case<sae::StandardSAE<double>, false>), (Case<sae::GatedSAE<double>, false>),
                   (Case<sae::JumpReLUSAE<double>, false>), (Case<sae::TopKSAE<double>, false>),
                   (Case<sae::TopKSAE<double>, true>)) {
  using Model = typename TestType::Model;
  const Model m = makeModel<Model>(TestType::kRescale);
  const RowMatrix<double> x = randomBatch<double>(kRows, kDin, 4);
  const RowMatrix<double> f = denseCodes(m, x);
  const auto W = m.parameters().rowMajor("W_dec");
  for (Index i = 0; i < kSae; ++i) {
    if (f.col(i).cwiseAbs().maxCoeff() == 0) continue;
    INFO("latent " << i);
    sae::steer::FeatureEditor<Model> editor(m, {FeatureEdit::zero(i)});
    RowMatrix<double> got = x;
    editor.apply(got);
    const double s = TestType::kRescale ? 1.0 / W.row(i).norm() : 1.0;
    for (Index b = 0; b < kRows; ++b) {
      // x - x' is f_i s_i W_dec[i, :] on rows where i fires; other rows are not touched.
      const RowMatrix<double> removed = x.row(b) - got.row(b);
      const RowMatrix<double> term = f(b, i) * s * W.row(i);
      CHECK(maxAbsDiff(removed, term) <= 1e-12);
      if (f(b, i) == 0) CHECK(bitwiseEqual<double>(got.row(b), x.row(b)));
    }
    CHECK(maxAbsDiff(got, viaDecode(m, x, {FeatureEdit::zero(i)})) <= 1e-12);
  }
}

TEMPLATE_TEST_CASE("FeatureEditor: edits that change no code leave the buffer bitwise unchanged",
                   "[steering]", (Case<sae::StandardSAE<double>, false>),
                   (Case<sae::GatedSAE<double>, false>), (Case<sae::JumpReLUSAE<double>, false>),
                   (Case<sae::TopKSAE<double>, false>), (Case<sae::TopKSAE<double>, true>),
                   (Case<sae::TopKSAE<float>, true>)) {
  using Model = typename TestType::Model;
  using S = typename Model::Scalar;
  const Model m = makeModel<Model>(TestType::kRescale);
  const RowMatrix<S> x = randomBatch<S>(kRows, kDin, 5);
  EditList unchanged;
  for (Index i = 0; i < kDead; ++i)
    unchanged.push_back(i % 2 ? FeatureEdit::multiply(i, 1.0) : FeatureEdit::add(i, 0.0));
  unchanged.push_back(FeatureEdit::zero(kDead));  // never fires
  for (const EditList& edits : {EditList{}, unchanged, EditList{FeatureEdit::multiply(kDead, 7)}}) {
    sae::steer::FeatureEditor<Model> editor(m, edits);
    RowMatrix<S> got = x;
    editor.apply(got);
    CHECK(bitwiseEqual(got, x));
  }
  // Zero of a latent leaves the rows where it does not fire bitwise unchanged (TopK: rows
  // where it is outside the top k).
  const RowMatrix<S> f = denseCodes(m, x);
  const Index a = pickActive(f);
  REQUIRE(a >= 0);
  sae::steer::FeatureEditor<Model> editor(
      m, {FeatureEdit::zero(a), FeatureEdit::multiply(a + 1 == kDead ? 0 : a + 1, 1.0)});
  RowMatrix<S> got = x;
  editor.apply(got);
  for (Index b = 0; b < kRows; ++b)
    CHECK(bitwiseEqual<S>(got.row(b), x.row(b)) == (f(b, a) == S(0)));
}

TEST_CASE("FeatureEditor: float TopK agrees with the double computation", "[steering]") {
  const auto md = makeModel<sae::TopKSAE<double>>(true);
  sae::TopKSAE<float> mf(md.config());
  mf.parameters().flat() = md.parameters().flat().cast<float>();
  const RowMatrix<float> x = randomBatch<float>(kRows, kDin, 6);
  const RowMatrix<float> f = denseCodes(mf, x);
  const Index a = pickActive(f);
  const EditList edits = {FeatureEdit::multiply(a, 3.0), FeatureEdit::set(kDead, 2.0)};
  sae::steer::FeatureEditor<sae::TopKSAE<float>> editor(mf, edits);
  RowMatrix<float> got = x;
  editor.apply(got);
  CHECK(maxAbsDiff(got, viaDecode(mf, x, edits)) <= 1e-5);
  // The double model on the same (float-valued) input selects the same latents here.
  const RowMatrix<double> xd = x.cast<double>();
  CHECK(maxAbsDiff<double>(got.cast<double>(), viaDecode(md, xd, edits)) <= 1e-4);
}

TEST_CASE("FeatureEditor: the raw-buffer path edits the caller's memory in place", "[steering]") {
  using Model = sae::TopKSAE<double>;
  const Model m = makeModel<Model>(true);
  const RowMatrix<double> x = randomBatch<double>(kRows, kDin, 7);
  const EditList edits = {FeatureEdit::zero(pickActive(denseCodes(m, x))),
                          FeatureEdit::set(kDead, 0.5)};
  const RowMatrix<double> want = viaDecode(m, x, edits);
  sae::steer::FeatureEditor<Model> editor(m, edits);

  SECTION("contiguous buffer") {
    std::vector<double> buffer(x.data(), x.data() + x.size());
    const double* before = buffer.data();
    editor.apply(buffer.data(), kRows, kDin);
    CHECK(buffer.data() == before);
    const Eigen::Map<const RowMatrix<double>> got(buffer.data(), kRows, kDin);
    CHECK(maxAbsDiff<double>(got, want) <= 1e-12);
  }
  SECTION("rows padded in the caller's buffer (outer stride), through Eigen::Map") {
    const Index stride = kDin + 3;
    std::vector<double> buffer(std::size_t(kRows * stride), -42.0);
    Eigen::Map<RowMatrix<double>, 0, Eigen::OuterStride<>> map(buffer.data(), kRows, kDin,
                                                               Eigen::OuterStride<>(stride));
    map = x;
    editor.apply(map);
    CHECK(maxAbsDiff<double>(map, want) <= 1e-12);
    for (Index b = 0; b < kRows; ++b)
      for (Index j = kDin; j < stride; ++j) CHECK(buffer[std::size_t(b * stride + j)] == -42.0);
  }
  SECTION("a block of rows of a larger matrix") {
    RowMatrix<double> big = RowMatrix<double>::Constant(kRows + 2, kDin, 9.0);
    big.middleRows(1, kRows) = x;
    editor.apply(big.middleRows(1, kRows));
    CHECK(maxAbsDiff<double>(big.middleRows(1, kRows), want) <= 1e-12);
    CHECK((big.row(0).array() == 9.0).all());
    CHECK((big.row(kRows + 1).array() == 9.0).all());
  }
  SECTION("zero rows is a no-op") {
    editor.apply(nullptr, 0, kDin);
    CHECK_THROWS_AS(editor.apply(nullptr, 2, kDin), sae::ConfigError);
  }
}

TEMPLATE_TEST_CASE("FeatureEditor: row selections edit only the chosen token positions",
                   "[steering]", (Case<sae::StandardSAE<double>, false>),
                   (Case<sae::TopKSAE<double>, true>)) {
  using Model = typename TestType::Model;
  const Model m = makeModel<Model>(TestType::kRescale);
  const RowMatrix<double> x = randomBatch<double>(kRows, kDin, 8);
  const EditList edits = {FeatureEdit::set(kDead, 0.75),
                          FeatureEdit::multiply(pickActive(denseCodes(m, x)), 0.0)};
  sae::steer::FeatureEditor<Model> editor(m, edits);
  const std::vector<Index> ids = {1, 3, 4};
  const std::vector<std::uint8_t> mask = {0, 1, 0, 1, 1};
  const std::vector<bool> chosen = {false, true, false, true, true};
  const RowMatrix<double> want = viaDecode(m, x, edits, chosen);
  for (const RowSelection& sel : {RowSelection::indices(ids), RowSelection::mask(mask)}) {
    RowMatrix<double> got = x;
    editor.apply(got, sel);
    CHECK(maxAbsDiff(got, want) <= 1e-12);
    for (Index b : {Index(0), Index(2)}) CHECK(bitwiseEqual<double>(got.row(b), x.row(b)));
    CHECK(editor.codes().rows() == 3);
  }
  RowMatrix<double> got = x;
  editor.apply(got, RowSelection::range(1, 2));
  CHECK(maxAbsDiff(got, viaDecode(m, x, edits, {false, true, true, false, false})) <= 1e-12);
  CHECK(bitwiseEqual<double>(got.bottomRows(2), x.bottomRows(2)));
  CHECK(bitwiseEqual<double>(got.topRows(1), x.topRows(1)));
  // An empty selection changes nothing.
  got = x;
  editor.apply(got, RowSelection::range(2, 0));
  CHECK(bitwiseEqual(got, x));
}

TEMPLATE_TEST_CASE("FeatureEditor::applyScaled: SAE on layer-normed inputs", "[steering]",
                   (Case<sae::StandardSAE<double>, false>), (Case<sae::TopKSAE<double>, true>)) {
  using Model = typename TestType::Model;
  const Model m = makeModel<Model>(TestType::kRescale);
  RowMatrix<double> x = randomBatch<double>(kRows, kDin, 9);
  x.array() = 3.0 * x.array() + 1.5;  // far from normalised
  // SAELens layer_norm: x_n = (x - mean) / (std + 1e-5) in, y * std + mean out (unbiased std).
  RowMatrix<double> xn(kRows, kDin);
  sae::Vector<double> sd(kRows);
  for (Index b = 0; b < kRows; ++b) {
    const double mean = x.row(b).mean();
    const auto centred = (x.row(b).array() - mean).matrix();
    sd[b] = std::sqrt(centred.squaredNorm() / double(kDin - 1));
    xn.row(b) = centred / (sd[b] + 1e-5);
  }
  const EditList edits = {FeatureEdit::zero(pickActive(denseCodes(m, xn))),
                          FeatureEdit::set(kDead, 0.4)};
  // Independent: N_out(decode(f')) - N_out(decode(f)) with f = encode(N_in(x)).
  const RowMatrix<double> f = denseCodes(m, xn);
  const RowMatrix<double> g = editByHand(f, edits);
  const RowMatrix<double> dy =
      m.decode(codesFromDense<Model>(g)) - m.decode(codesFromDense<Model>(f));
  RowMatrix<double> want = x;
  for (Index b = 0; b < kRows; ++b) want.row(b) += sd[b] * dy.row(b);

  sae::steer::FeatureEditor<Model> editor(m, edits);
  RowMatrix<double> got = x;
  editor.applyScaled(xn, got, sd);
  CHECK(maxAbsDiff(got, want) <= 1e-11);
  // With a selection, only the chosen rows.
  got = x;
  const std::vector<Index> ids = {0, 2};
  editor.applyScaled(xn, got, sd, RowSelection::indices(ids));
  for (Index b = 0; b < kRows; ++b) {
    if (b == 0 || b == 2)
      CHECK(maxAbsDiff<double>(got.row(b), want.row(b)) <= 1e-11);
    else
      CHECK(bitwiseEqual<double>(got.row(b), x.row(b)));
  }
  sae::Vector<double> bad = sd;
  bad[1] = std::numeric_limits<double>::infinity();
  CHECK_THROWS_MESSAGE_AS(editor.applyScaled(xn, got, bad),
                          "steering: output_scale[1] is not finite (inf)", sae::ConfigError);
  CHECK_THROWS_AS(editor.applyScaled(xn, got, sd.head(3)), sae::ConfigError);
  CHECK_THROWS_AS(editor.applyScaled(xn.topRows(3), got, sd), sae::ConfigError);
}

TEST_CASE("FeatureEditor::applyScaled reproduces SAELens's layer_norm SAE", "[steering]") {
  // SAELens fixture infer_standard_layernorm: encode((x - mean) / (std + 1e-5)) and decode
  // y * std + mean. Zeroing latents must give x - std (sum of their f_i W_dec[i, :]) with
  // SAELens's own feature activations, and zeroing all of them x - sae_out + std b_dec + mean.
  const std::string dir = sae::test::fixturesRoot() + "/infer_standard_layernorm";
  const auto loaded = sae::io::loadSaeLens<double>(dir + "/sae");
  REQUIRE(loaded.config.normalize_activations == "layer_norm");
  const auto& m = std::get<sae::StandardSAE<double>>(loaded.model);
  const RowMatrix<double> x = sae::io::readNpy<double>(dir + "/x.npy");
  const RowMatrix<double> acts = sae::io::readNpy<double>(dir + "/feature_acts.npy");
  const RowMatrix<double> sae_out = sae::io::readNpy<double>(dir + "/sae_out.npy");
  const Index B = x.rows(), d_in = x.cols(), d_sae = m.dSae();
  RowMatrix<double> xn(B, d_in);
  sae::Vector<double> sd(B), mean(B);
  for (Index b = 0; b < B; ++b) {
    mean[b] = x.row(b).mean();
    const auto centred = (x.row(b).array() - mean[b]).matrix();
    sd[b] = std::sqrt(centred.squaredNorm() / double(d_in - 1));
    xn.row(b) = centred / (sd[b] + 1e-5);
  }
  const auto W = m.parameters().rowMajor("W_dec");
  const auto b_dec = m.parameters().flat("b_dec");
  const double tol = 1e-5 * std::max(1.0, double(x.cwiseAbs().maxCoeff()));

  EditList all;
  for (Index i = 0; i < d_sae; ++i) all.push_back(FeatureEdit::zero(i));
  sae::steer::FeatureEditor<sae::StandardSAE<double>> editor(m, all);
  RowMatrix<double> got = x;
  editor.applyScaled(xn, got, sd);
  RowMatrix<double> want = x - sae_out;
  for (Index b = 0; b < B; ++b) want.row(b).array() += sd[b] * b_dec.transpose().array() + mean[b];
  CHECK(maxAbsDiff(got, want) <= tol);

  Index checked = 0;
  for (Index i = 0; i < d_sae && checked < 4; ++i) {
    if (acts.col(i).maxCoeff() == 0) continue;
    ++checked;
    INFO("latent " << i);
    editor.setEdits({FeatureEdit::zero(i)});
    got = x;
    editor.applyScaled(xn, got, sd);
    want = x;
    for (Index b = 0; b < B; ++b) want.row(b) -= sd[b] * acts(b, i) * W.row(i);
    CHECK(maxAbsDiff(got, want) <= tol);
  }
  CHECK(checked == 4);
}

TEST_CASE("FeatureEditor: decoder units are found from the model's decode", "[steering]") {
  CHECK(sae::steer::FeatureEditor<sae::TopKSAE<double>>(makeModel<sae::TopKSAE<double>>(true))
            .units() == sae::steer::DecoderUnits::DividedByNorm);
  CHECK(sae::steer::FeatureEditor<sae::TopKSAE<double>>(makeModel<sae::TopKSAE<double>>(false))
            .units() == sae::steer::DecoderUnits::Plain);
  // A standard SAE ignores rescale_acts_by_decoder_norm in decode: the probe sees Plain.
  const auto m = makeModel<sae::StandardSAE<double>>(true);
  sae::steer::FeatureEditor<sae::StandardSAE<double>> editor(m, {FeatureEdit::set(kDead, 1.0)});
  CHECK(editor.units() == sae::steer::DecoderUnits::Plain);
  const RowMatrix<double> x = randomBatch<double>(2, kDin, 10);
  RowMatrix<double> got = x;
  editor.apply(got);
  const auto W = m.parameters().rowMajor("W_dec");
  for (Index b = 0; b < 2; ++b)
    CHECK(maxAbsDiff<double>(got.row(b) - x.row(b), W.row(kDead)) <= 1e-14);
}

TEMPLATE_TEST_CASE("decoderDirection and addDirection", "[steering]", sae::StandardSAE<double>,
                   sae::TopKSAE<double>) {
  const TestType m = makeModel<TestType>(true);
  const auto W = m.parameters().rowMajor("W_dec");
  for (Index i : {Index(0), Index(5), kDead}) {
    const sae::Vector<double> d = sae::steer::decoderDirection(m, i);
    REQUIRE(d.size() == kDin);
    for (Index j = 0; j < kDin; ++j) CHECK(d[j] == W(i, j));
    const sae::Vector<double> u = sae::steer::unitDecoderDirection(m, i);
    CHECK(u.norm() == Approx(1.0).epsilon(1e-14));
    for (Index j = 0; j < kDin; ++j) CHECK(u[j] == Approx(W(i, j) / W.row(i).norm()));
  }
  CHECK_THROWS_MESSAGE_AS(sae::steer::decoderDirection(m, kSae),
                          "steering: feature 12 out of range [0, 12)", sae::ConfigError);
  CHECK_THROWS_AS(sae::steer::unitDecoderDirection(m, -1), sae::ConfigError);
  TestType zeroed = m;
  zeroed.parameters().rowMajor("W_dec").row(2).setZero();
  CHECK_THROWS_AS(sae::steer::unitDecoderDirection(zeroed, 2), sae::ConfigError);

  const RowMatrix<double> x = randomBatch<double>(kRows, kDin, 11);
  RowMatrix<double> got = x;
  sae::steer::addDirection(got, m, 3, 2.5);
  for (Index b = 0; b < kRows; ++b)
    for (Index j = 0; j < kDin; ++j) CHECK(got(b, j) == Approx(x(b, j) + 2.5 * W(3, j)));
  // A unit direction on the selected rows only, through the editor and a raw buffer.
  got = x;
  const std::vector<Index> ids = {0, 4};
  const sae::Vector<double> u = sae::steer::unitDecoderDirection(m, 3);
  sae::steer::addDirection(Eigen::Map<RowMatrix<double>>(got.data(), kRows, kDin), u, -1.0,
                           RowSelection::indices(ids));
  for (Index b = 0; b < kRows; ++b)
    for (Index j = 0; j < kDin; ++j)
      CHECK(got(b, j) == Approx(x(b, j) - (b == 0 || b == 4 ? u[j] : 0.0)));
  sae::steer::FeatureEditor<TestType> editor(m);
  got = x;
  editor.addDirection(got, 3, 2.5, RowSelection::range(4, 1));
  CHECK(bitwiseEqual<double>(got.topRows(4), x.topRows(4)));
  for (Index j = 0; j < kDin; ++j) CHECK(got(4, j) == Approx(x(4, j) + 2.5 * W(3, j)));
  // A row vector works as a direction too.
  got = x;
  sae::steer::addDirection(got, W.row(3), 1.0);
  for (Index j = 0; j < kDin; ++j) CHECK(got(1, j) == Approx(x(1, j) + W(3, j)));

  CHECK_THROWS_AS(sae::steer::addDirection(got, m, kSae, 1.0), sae::ConfigError);
  CHECK_THROWS_AS(sae::steer::addDirection(got, m, 0, std::nan("")), sae::ConfigError);
  CHECK_THROWS_AS(sae::steer::addDirection(got, sae::Vector<double>::Ones(kDin + 1), 1.0),
                  sae::ConfigError);
  RowMatrix<double> wide(2, kDin + 1);
  CHECK_THROWS_AS(sae::steer::addDirection(wide, m, 0, 1.0), sae::ConfigError);
}

TEST_CASE("Edit lists and row selections are validated", "[steering]") {
  using Model = sae::StandardSAE<double>;
  const Model m = makeModel<Model>(false);
  sae::steer::FeatureEditor<Model> editor(m);
  CHECK_THROWS_MESSAGE_AS(editor.setEdits({FeatureEdit::zero(1), FeatureEdit::set(12, 1.0)}),
                          "steering edit 1 (Set feature 12 to 1): feature id out of range [0, 12)",
                          sae::ConfigError);
  CHECK_THROWS_MESSAGE_AS(editor.setEdits({FeatureEdit::add(-1, 2.0)}),
                          "steering edit 0 (Add 2 to feature -1): feature id out of range [0, 12)",
                          sae::ConfigError);
  CHECK_THROWS_MESSAGE_AS(editor.setEdits({FeatureEdit::multiply(3, std::nan(""))}),
                          "steering edit 0 (Multiply feature 3 by nan): value is not finite",
                          sae::ConfigError);
  CHECK_THROWS_AS(editor.setEdits({FeatureEdit::set(3, std::numeric_limits<double>::infinity())}),
                  sae::ConfigError);
  CHECK_THROWS_MESSAGE_AS(
      editor.setEdits({FeatureEdit::zero(4), FeatureEdit::set(2, 1.0), FeatureEdit::add(4, 1.0)}),
      "steering edits 0 and 2 both change feature 4; give each latent one edit", sae::ConfigError);
  CHECK_THROWS_AS(sae::steer::FeatureEditor<Model>(m, {FeatureEdit::zero(99)}), sae::ConfigError);
  // A failed setEdits keeps the old list.
  editor.setEdits({FeatureEdit::zero(2)});
  CHECK_THROWS(editor.setEdits({FeatureEdit::zero(20)}));
  REQUIRE(editor.edits().size() == 1);
  CHECK(editor.edits()[0].feature == 2);
  // Finite in double, not in float.
  sae::SaeConfig cfg = m.config();
  sae::StandardSAE<float> mf(cfg, 1);
  CHECK_THROWS_AS(
      sae::steer::FeatureEditor<sae::StandardSAE<float>>(mf, {FeatureEdit::set(0, 1e300)}),
      sae::ConfigError);
  CHECK_THROWS_WITH(
      sae::steer::FeatureEditor<sae::StandardSAE<float>>(mf, {FeatureEdit::set(0, 1e300)}),
      Catch::Contains("steering edit 0 (Set feature 0 to 1") &&
          Catch::Contains("e+300): value is not finite in the model's scalar type"));

  RowMatrix<double> x = randomBatch<double>(kRows, kDin, 12);
  RowMatrix<double> narrow(kRows, kDin - 1);
  CHECK_THROWS_MESSAGE_AS(editor.apply(narrow),
                          "steering: the hidden state has 5 columns, expected d_in = 6",
                          sae::ConfigError);
  const std::vector<Index> out_of_range = {1, 5};
  CHECK_THROWS_MESSAGE_AS(editor.apply(x, RowSelection::indices(out_of_range)),
                          "row selection: entry 1 is row 5, outside the batch's 5 rows",
                          sae::ConfigError);
  const std::vector<Index> unsorted = {3, 1};
  CHECK_THROWS_MESSAGE_AS(editor.apply(x, RowSelection::indices(unsorted)),
                          "row selection: entry 1 (row 1) does not follow entry 0 (row 3); indices "
                          "must be strictly increasing",
                          sae::ConfigError);
  const std::vector<Index> repeated = {2, 2};
  CHECK_THROWS_AS(editor.apply(x, RowSelection::indices(repeated)), sae::ConfigError);
  const std::vector<std::uint8_t> short_mask = {1, 0};
  CHECK_THROWS_MESSAGE_AS(editor.apply(x, RowSelection::mask(short_mask)),
                          "row selection: the mask has 2 entries, the batch has 5 rows",
                          sae::ConfigError);
  CHECK_THROWS_MESSAGE_AS(editor.apply(x, RowSelection::range(3, 4)),
                          "row selection: range [3, 7) is outside the batch's 5 rows",
                          sae::ConfigError);
  // A non-finite activation is reported by the model's encode and nothing is written.
  x(2, 3) = std::numeric_limits<double>::quiet_NaN();
  const RowMatrix<double> before = x;
  CHECK_THROWS_AS(editor.apply(x), sae::NumericError);
  CHECK(x.row(0) == before.row(0));
}

TEST_CASE("FeatureEditor: an edit that overflows writes nothing", "[steering]") {
  // float: f * 1e38 overflows for any f > 3.4.
  sae::StandardSAE<float> m(makeModel<sae::StandardSAE<double>>(false).config());
  m.parameters().flat() =
      makeModel<sae::StandardSAE<double>>(false).parameters().flat().cast<float>();
  RowMatrix<float> x = 50.0f * randomBatch<float>(kRows, kDin, 13);
  const RowMatrix<float> f = denseCodes(m, x);
  Index big = -1;
  for (Index i = 0; i < kSae; ++i)
    if (f.col(i).maxCoeff() > 4.0f) big = i;
  REQUIRE(big >= 0);
  sae::steer::FeatureEditor<sae::StandardSAE<float>> editor(
      m, {FeatureEdit::set(kDead, 1.0), FeatureEdit::multiply(big, 1e38)});
  const RowMatrix<float> before = x;
  CHECK_THROWS_AS(editor.apply(x), sae::NumericError);
  CHECK(bitwiseEqual(x, before));
}

}  // namespace sae_test_steering
