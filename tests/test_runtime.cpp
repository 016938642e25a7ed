// sae::Sae, the inference facade (runtime/sae.hpp), for every architecture and codes type:
// encode / decode / forward against the model and against hand computations of the
// normalisation, edits against x + decode(f') - decode(f) computed by hand in double (dense
// codes, the architecture's decoder units), normalised SAEs, bf16, loading a folder written by
// saveSaeLens(), and the FeatureEditor on BatchTopK / Matryoshka (CSR) codes.
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include <sae/io/saelens.hpp>
#include <sae/runtime/sae.hpp>
#include <sae/sae.hpp>

#include <support/test_support.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_runtime {

#define CHECK_THROWS_MESSAGE_AS(expr, message, type) \
  CHECK_THROWS_MATCHES(expr, type, Catch::Matchers::Message(message))

namespace {

using sae::Index;
using sae::RowMatrix;
using sae::steer::EditList;
using sae::steer::FeatureEdit;
using sae::steer::RowSelection;
using sae::test::randomBatch;

// True for TopK, BatchTopK and Matryoshka BatchTopK (rescale_acts_by_decoder_norm applies).
template <typename Model>
constexpr bool kTopKFamily =
    std::is_same<typename Model::Arch, sae::TopKArch>::value ||
    std::is_base_of<sae::detail::BatchTopKFamily, typename Model::Arch>::value;

constexpr Index kDin = 8;   // width of the activations
constexpr Index kSae = 24;  // latents
constexpr Index kRows = 7;  // tokens of a batch

// A small model of `Model`'s architecture with every parameter perturbed away from the
// initialisation (biases non-zero, W_enc != W_dec^T, decoder norms far from 1), TopK family with
// rescale_acts_by_decoder_norm when `rescale`, BatchTopK threshold 0.2.
template <typename Model>
Model makeModel(bool rescale = true) {
  using S = typename Model::Scalar;
  sae::SaeConfig cfg;
  cfg.d_in = kDin;
  cfg.d_sae = kSae;
  cfg.k = 4;
  cfg.rescale_acts_by_decoder_norm = rescale && kTopKFamily<Model>;
  if (std::is_same<typename Model::Arch, sae::MatryoshkaBatchTopKArch>::value)
    cfg.matryoshka_widths = {6, 12, kSae};
  Model m(cfg, 5);
  sae::test::perturb(m, 9, 0.3);
  auto W_dec = m.parameters().rowMajor("W_dec");
  sae::Rng rng(13);
  for (Index i = 0; i < kSae; ++i) W_dec.row(i) *= S(rng.uniform(0.5, 3.0));
  if constexpr (Model::kHasBuffers) m.buffers().flat("topk_threshold")[0] = 0.2;
  return m;
}

// The dense codes of raw rows by the model itself (the reference for the facade's encode).
template <typename Model>
RowMatrix<double> modelCodes(const Model& m, const RowMatrix<typename Model::Scalar>& x) {
  return m.encode(x).toDense().template cast<double>();
}

// The edited code f' of a code f (the four operations, written out).
double editedCode(const FeatureEdit& e, double f) {
  if (e.op == sae::steer::EditOp::Set) return e.value;
  if (e.op == sae::steer::EditOp::Add) return f + e.value;
  if (e.op == sae::steer::EditOp::Multiply) return f * e.value;
  return 0.0;  // Zero
}

// The edit list applied by hand to every row of dense codes.
RowMatrix<double> editByHand(const RowMatrix<double>& f, const EditList& edits) {
  RowMatrix<double> g = f;
  for (const auto& e : edits)
    g.col(e.feature) = f.col(e.feature).unaryExpr([&](double v) { return editedCode(e, v); });
  return g;
}

// decode(f') - decode(f) by hand: (f' - f) diag(1 / n^r) W_dec, in double; r = 1 for the
// TopK family with rescale_acts_by_decoder_norm (the architecture headers' decode formulas).
template <typename Model>
RowMatrix<double> decodedChange(const Model& m, const RowMatrix<double>& f,
                                const RowMatrix<double>& g) {
  RowMatrix<double> W = m.parameters().rowMajor("W_dec").template cast<double>();
  if (kTopKFamily<Model> && m.config().rescale_acts_by_decoder_norm)
    for (Index i = 0; i < W.rows(); ++i) W.row(i) /= W.row(i).norm();
  return (g - f) * W;
}

// Rows normalised by hand the SAELens way, with the per-row numbers to undo it.
struct HandNormalized {
  RowMatrix<double> x;          // normalised rows
  Eigen::VectorXd mean, scale;  // y_out = y * scale + mean
};

HandNormalized normalizeByHand(const RowMatrix<double>& x, sae::NormalizeActivations mode,
                               double s = 1.0) {
  HandNormalized h{x, Eigen::VectorXd::Zero(x.rows()), Eigen::VectorXd::Ones(x.rows())};
  const double d = double(x.cols());
  for (Index r = 0; r < x.rows(); ++r) {
    if (mode == sae::NormalizeActivations::LayerNorm) {
      const double mu = x.row(r).mean();
      const double sigma = std::sqrt((x.row(r).array() - mu).square().sum() / (d - 1));
      h.x.row(r) = (x.row(r).array() - mu) / (sigma + 1e-5);
      h.mean[r] = mu;
      h.scale[r] = sigma;
    } else if (mode == sae::NormalizeActivations::ConstantNormRescale) {
      const double c = std::sqrt(d) / x.row(r).norm();
      h.x.row(r) = c * x.row(r);
      h.scale[r] = 1 / c;
    } else if (mode == sae::NormalizeActivations::ExpectedAverageOnlyIn) {
      h.x.row(r) = s * x.row(r);
      h.scale[r] = 1 / s;
    }
  }
  return h;
}

// Largest |a - b| relative to max(1, largest |b|).
double relativeError(const RowMatrix<double>& a, const RowMatrix<double>& b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  return (a - b).cwiseAbs().maxCoeff() / std::max(1.0, b.cwiseAbs().maxCoeff());
}

template <typename S>
RowMatrix<double> toDouble(const RowMatrix<S>& m) {
  return m.template cast<double>();
}

// Edits of every kind, on latents active in the batch's codes: Zero of row 0's largest code,
// Set of a latent to a value, Multiply and Add of two more.
EditList editsFor(const RowMatrix<double>& f) {
  Index top = 0;
  f.row(0).maxCoeff(&top);
  EditList edits = {FeatureEdit::zero(top)};
  std::vector<Index> others;
  for (Index i = 0; i < f.cols() && others.size() < 3; ++i)
    if (i != top && (f.col(i).array() != 0).any()) others.push_back(i);
  REQUIRE(others.size() == 3);
  edits.push_back(FeatureEdit::set(others[0], 0.75));
  edits.push_back(FeatureEdit::multiply(others[1], 2.5));
  edits.push_back(FeatureEdit::add(others[2], -0.4));
  return edits;
}

}  // namespace

#define SAE_RUNTIME_ARCHITECTURES                                                              \
  sae::StandardSAE<float>, sae::GatedSAE<float>, sae::JumpReLUSAE<float>, sae::TopKSAE<float>, \
      sae::BatchTopKSAE<float>, sae::MatryoshkaBatchTopKSAE<float>

TEMPLATE_TEST_CASE("Sae: encode, decode and forward are the model's", "[runtime]",
                   SAE_RUNTIME_ARCHITECTURES) {
  using Codes = typename TestType::Codes;
  const TestType model = makeModel<TestType>();
  sae::Sae<float> sae(model);
  CHECK(std::string(sae.architecture()) == TestType::architecture());
  CHECK(sae.dIn() == kDin);
  CHECK(sae.dSae() == kSae);
  REQUIRE(sae.modelAs<TestType>() != nullptr);
  CHECK((sae.modelAs<sae::GatedSAE<float>>() != nullptr) ==
        std::is_same<TestType, sae::GatedSAE<float>>::value);

  const RowMatrix<float> x = randomBatch<float>(kRows, kDin, 3, 2.0);
  sae::Sae<float>::Codes codes;
  for (int call = 0; call < 2; ++call) {  // the second call reuses the holder's storage
    sae.encode(x, codes);
    REQUIRE(codes.template get<Codes>() != nullptr);
    CHECK_FALSE(codes.hasStatistics());
    CHECK(codes.rows() == kRows);
    CHECK(codes.latents() == kSae);
    CHECK(toDouble(codes.toDense()) == modelCodes(model, x));
  }
  const char* kind = std::is_same<Codes, sae::DenseCodes<float>>::value    ? "dense"
                     : std::is_same<Codes, sae::SparseCodes<float>>::value ? "sparse"
                                                                           : "csr";
  CHECK(std::string(codes.kind()) == kind);
  CHECK(codes.l0() > 0);

  // decode: the model's decode of the same codes, into a matrix and into a caller's buffer.
  const RowMatrix<float> want = model.decode(model.encode(x));
  RowMatrix<float> y;
  sae.decode(codes, y);
  CHECK(y == want);
  std::vector<float> buffer(std::size_t(kRows * kDin), -1.0f);
  Eigen::Map<RowMatrix<float>> view(buffer.data(), kRows, kDin);
  sae.decode(codes, view);
  CHECK(RowMatrix<float>(view) == want);

  // forward = decode(encode(x)), into a matrix and a buffer.
  RowMatrix<float> z;
  sae.forward(x, z);
  CHECK(z == want);
  view.setConstant(-1.0f);
  sae.forward(x, view);
  CHECK(RowMatrix<float>(view) == want);

  // A matching codes holder made from the model's own codes decodes the same.
  const sae::AnyCodes<float> own(model.encode(x));
  sae.decode(own, y);
  CHECK(y == want);
}

TEST_CASE("Sae: forward of a standard SAE against the formula", "[runtime]") {
  const auto model = makeModel<sae::StandardSAE<double>>();
  sae::Sae<double> sae(model);
  const RowMatrix<double> x = randomBatch<double>(kRows, kDin, 4);
  const auto& p = model.parameters();
  const RowMatrix<double> W_enc = p.colMajor("W_enc");
  const RowMatrix<double> W_dec = p.rowMajor("W_dec");
  const Eigen::RowVectorXd b_enc = p.flat("b_enc").transpose();
  const Eigen::RowVectorXd b_dec = p.flat("b_dec").transpose();
  RowMatrix<double> f = ((x.rowwise() - b_dec) * W_enc).rowwise() + b_enc;
  f = f.cwiseMax(0.0);
  const RowMatrix<double> want = (f * W_dec).rowwise() + b_dec;
  RowMatrix<double> y;
  sae.forward(x, y);
  CHECK(relativeError(y, want) < 1e-12);
}

TEMPLATE_TEST_CASE("Sae: edit equals x + decode(f') - decode(f), every architecture", "[runtime]",
                   SAE_RUNTIME_ARCHITECTURES) {
  for (bool rescale : {false, true}) {
    if (rescale && !kTopKFamily<TestType>) continue;
    const TestType model = makeModel<TestType>(rescale);
    sae::Sae<float> sae(model);
    const RowMatrix<float> x = randomBatch<float>(kRows, kDin, 21, 2.0);
    const RowMatrix<double> f = modelCodes(model, x);
    const EditList edits = editsFor(f);
    const RowMatrix<double> want = toDouble(x) + decodedChange(model, f, editByHand(f, edits));
    REQUIRE(relativeError(want, toDouble(x)) > 1e-2);  // the edits change something

    RowMatrix<float> h = x;
    sae.edit(h, edits);
    INFO("rescale " << rescale);
    CHECK(relativeError(toDouble(h), want) < 2e-5);

    // The raw-buffer overload edits the caller's memory the same way.
    std::vector<float> buffer(x.data(), x.data() + x.size());
    sae.edit(buffer.data(), kRows, kDin, edits);
    CHECK(RowMatrix<float>(Eigen::Map<RowMatrix<float>>(buffer.data(), kRows, kDin)) == h);

    // A row selection edits those rows as the whole-batch edit does, and no other.
    const std::vector<Index> ids = {1, 4, 5};
    RowMatrix<float> s = x;
    sae.edit(s, edits, RowSelection::indices(ids));
    for (Index r = 0; r < kRows; ++r) {
      const bool chosen = r == 1 || r == 4 || r == 5;
      INFO("row " << r);
      if (chosen)  // as the whole-batch edit, to the rounding of a smaller encoder product
        CHECK(relativeError(toDouble(RowMatrix<float>(s.row(r))),
                            toDouble(RowMatrix<float>(h.row(r)))) < 1e-6);
      else
        CHECK(RowMatrix<float>(s.row(r)) == RowMatrix<float>(x.row(r)));
    }

    // No edits, or edits that change no code: bitwise unchanged.
    RowMatrix<float> u = x;
    sae.edit(u, {});
    sae.edit(u, {FeatureEdit::multiply(edits[1].feature, 1.0)});
    CHECK(u == x);
  }
}

TEMPLATE_TEST_CASE("Sae: a normalised SAE applies normalize_activations inside", "[runtime]",
                   SAE_RUNTIME_ARCHITECTURES) {
  const TestType model = makeModel<TestType>();
  struct Mode {
    sae::NormalizeActivations mode;
    double scale;
  };
  for (const Mode m : {Mode{sae::NormalizeActivations::LayerNorm, 1.0},
                       Mode{sae::NormalizeActivations::ConstantNormRescale, 1.0},
                       Mode{sae::NormalizeActivations::ExpectedAverageOnlyIn, 2.0}}) {
    INFO(sae::normalizeActivationsName(m.mode) << " scale " << m.scale);
    sae::Sae<float> sae(model, sae::ActivationNormalizer(m.mode, m.scale));
    // Raw activations far from the SAE's units: an offset and a large scale.
    const RowMatrix<float> x = (randomBatch<float>(kRows, kDin, 8, 6.0).array() + 3.0f).matrix();
    const HandNormalized hn = normalizeByHand(toDouble(x), m.mode, m.scale);
    const RowMatrix<float> xn = hn.x.cast<float>();

    // encode: the model's codes of the normalised rows.
    sae::Sae<float>::Codes codes;
    sae.encode(x, codes);
    CHECK(codes.hasStatistics());
    CHECK(relativeError(toDouble(codes.toDense()), modelCodes(model, xn)) < 1e-5);

    // forward: the model's reconstruction of the normalised rows, in the units of x.
    RowMatrix<double> want = toDouble(model.forward(xn));
    for (Index r = 0; r < kRows; ++r) want.row(r) = want.row(r).array() * hn.scale[r] + hn.mean[r];
    RowMatrix<float> y;
    sae.forward(x, y);
    CHECK(relativeError(toDouble(y), want) < 1e-5);
    sae.decode(codes, y);
    CHECK(relativeError(toDouble(y), want) < 1e-5);

    // edit: x + out_scale * (decode(f') - decode(f)) of the normalised rows' codes.
    const RowMatrix<double> f = modelCodes(model, xn);
    const EditList edits = editsFor(f);
    RowMatrix<double> change = decodedChange(model, f, editByHand(f, edits));
    for (Index r = 0; r < kRows; ++r) change.row(r) *= hn.scale[r];
    const RowMatrix<double> want_edit = toDouble(x) + change;
    RowMatrix<float> h = x;
    sae.edit(h, edits);
    CHECK(relativeError(toDouble(h), want_edit) < 2e-5);
    RowMatrix<float> s = x;
    sae.edit(s, edits, RowSelection::range(2, 3));
    // The same rows as the whole-batch edit, to the rounding of a smaller encoder product.
    CHECK(relativeError(toDouble(RowMatrix<float>(s.middleRows(2, 3))),
                        toDouble(RowMatrix<float>(h.middleRows(2, 3)))) < 1e-6);
    CHECK(RowMatrix<float>(s.topRows(2)) == RowMatrix<float>(x.topRows(2)));
  }
}

TEMPLATE_TEST_CASE("Sae: the bf16 encoder agrees with fp32, or is refused clearly", "[runtime]",
                   SAE_RUNTIME_ARCHITECTURES) {
  const TestType model = makeModel<TestType>();
  sae::Sae<float> sae(model);
  CHECK_FALSE(sae.bf16());
  if (!sae::kernels::bf16Available()) {
    CHECK_THROWS_MESSAGE_AS(
        sae.setBf16(true),
        "Sae::setBf16: bf16 precision needs oneDNN: rebuild with libdnnl-dev installed",
        sae::ConfigError);
    CHECK_FALSE(sae.bf16());
    return;
  }
  const RowMatrix<float> x = randomBatch<float>(64, kDin, 17, 2.0);
  RowMatrix<float> y32, y16;
  sae.forward(x, y32);
  sae.setBf16(true);
  CHECK(sae.bf16());
  sae.forward(x, y16);
  // bf16 keeps 8 bits of mantissa: pre-activations within ~1%, and a few selections may flip.
  const double err = (y16 - y32).norm() / y32.norm();
  INFO("relative difference of the reconstructions " << err);
  CHECK(err < 3e-2);
  CHECK(y16 != y32);  // the bf16 product did run
  sae.setBf16(false);
  sae.forward(x, y16);
  CHECK(y16 == y32);
}

TEST_CASE("Sae: bf16 is refused for a double SAE", "[runtime]") {
  sae::Sae<double> sae(makeModel<sae::TopKSAE<double>>());
  CHECK_THROWS_MESSAGE_AS(sae.setBf16(true),
                          "Sae::setBf16: the bf16 encoder product is for float SAEs, this one is "
                          "double",
                          sae::ConfigError);
  sae.setBf16(false);  // fp32 is always fine
  CHECK_FALSE(sae.bf16());
}

TEST_CASE("Sae::load reads a folder written by saveSaeLens", "[runtime]") {
  sae::test::TempDir tmp("runtime");
  const RowMatrix<float> x = (randomBatch<float>(kRows, kDin, 31, 4.0).array() - 1.0f).matrix();

  SECTION("a layer-normed TopK SAE") {
    const auto model = makeModel<sae::TopKSAE<float>>();
    sae::io::SaeLensSaveOptions opts;
    opts.normalize_activations = "layer_norm";
    sae::io::saveSaeLens(model, tmp.path(), opts);
    auto loaded = sae::Sae<float>::load(tmp.path());
    CHECK(std::string(loaded.architecture()) == "topk");
    CHECK(loaded.normalizer().mode() == sae::NormalizeActivations::LayerNorm);
    CHECK(loaded.dIn() == kDin);
    CHECK(loaded.dSae() == kSae);
    // The same function as the model with the same normalisation by hand (the saved folder
    // folds the decoder norms into the encoder: equal to rounding).
    const HandNormalized hn = normalizeByHand(toDouble(x), sae::NormalizeActivations::LayerNorm);
    RowMatrix<double> want = toDouble(model.forward(hn.x.cast<float>()));
    for (Index r = 0; r < kRows; ++r) want.row(r) = want.row(r).array() * hn.scale[r] + hn.mean[r];
    RowMatrix<float> y;
    loaded.forward(x, y);
    CHECK(relativeError(toDouble(y), want) < 1e-5);
    // And the LoadedSae constructor gives the same SAE.
    sae::Sae<float> from_loaded(sae::io::loadSae<float>(tmp.path()));
    RowMatrix<float> z;
    from_loaded.forward(x, z);
    CHECK(z == y);
  }

  SECTION("a BatchTopK SAE, saved as JumpReLU") {
    const auto model = makeModel<sae::BatchTopKSAE<float>>();
    sae::io::saveSaeLens(model, tmp.path());
    auto loaded = sae::Sae<float>::load(tmp.path() + "/cfg.json");
    CHECK(std::string(loaded.architecture()) == "jumprelu");
    sae::Sae<float>::Codes codes;
    loaded.encode(x, codes);
    CHECK(std::string(codes.kind()) == "dense");
    CHECK(relativeError(toDouble(codes.toDense()), modelCodes(model, x)) < 1e-5);
    const RowMatrix<double> f = modelCodes(model, x);
    const EditList edits = editsFor(f);
    RowMatrix<float> h = x;
    loaded.edit(h, edits);
    const RowMatrix<double> want = toDouble(x) + decodedChange(model, f, editByHand(f, edits));
    CHECK(relativeError(toDouble(h), want) < 2e-5);
  }
}

TEST_CASE("Sae: errors name the problem", "[runtime]") {
  sae::Sae<float> topk(makeModel<sae::TopKSAE<float>>());
  sae::Sae<float> standard(makeModel<sae::StandardSAE<float>>());
  const RowMatrix<float> x = randomBatch<float>(3, kDin, 2);
  sae::Sae<float>::Codes codes;
  topk.encode(x, codes);
  RowMatrix<float> y;
  CHECK_THROWS_MESSAGE_AS(standard.decode(codes, y),
                          "Sae::decode: the codes are sparse codes; the standard SAE's are dense",
                          sae::ConfigError);
  const RowMatrix<float> narrow = randomBatch<float>(3, kDin - 1, 2);
  CHECK_THROWS_MESSAGE_AS(topk.encode(narrow, codes),
                          "Sae (topk): the input has 7 columns, expected d_in = 8",
                          sae::ConfigError);
  RowMatrix<float> wide_out(3, kDin + 1);
  CHECK_THROWS_MESSAGE_AS(topk.forward(x, Eigen::Ref<RowMatrix<float>>(wide_out)),
                          "Sae (topk): the output buffer is [3, 9], expected [3, 8]",
                          sae::ConfigError);
  RowMatrix<float> h = x;
  CHECK_THROWS_MESSAGE_AS(topk.edit(h, {FeatureEdit::zero(kSae)}),
                          "steering edit 0 (Zero feature 24): feature id out of range [0, 24)",
                          sae::ConfigError);
  CHECK_THROWS_MESSAGE_AS(topk.edit(h, {FeatureEdit::zero(1)}, RowSelection::range(2, 5)),
                          "row selection: range [2, 7) is outside the batch's 3 rows",
                          sae::ConfigError);
  CHECK(h == x);
}

TEMPLATE_TEST_CASE("FeatureEditor edits BatchTopK and Matryoshka (CSR) codes", "[runtime]",
                   sae::BatchTopKSAE<float>, sae::MatryoshkaBatchTopKSAE<float>) {
  for (bool rescale : {false, true}) {
    const TestType model = makeModel<TestType>(rescale);
    const RowMatrix<float> x = randomBatch<float>(kRows, kDin, 23, 2.0);
    const RowMatrix<double> f = modelCodes(model, x);
    const EditList edits = editsFor(f);
    sae::steer::FeatureEditor<TestType> editor(model, edits);
    CHECK(editor.units() ==
          (rescale ? sae::steer::DecoderUnits::DividedByNorm : sae::steer::DecoderUnits::Plain));
    RowMatrix<float> h = x;
    editor.apply(h);
    const RowMatrix<double> want = toDouble(x) + decodedChange(model, f, editByHand(f, edits));
    INFO("rescale " << rescale);
    CHECK(relativeError(toDouble(h), want) < 2e-5);
    CHECK(toDouble(editor.codes().toDense()) == f);
  }
}

}  // namespace sae_test_runtime
