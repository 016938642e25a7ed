// bf16 mixed precision (kernels/bf16_matmul.hpp): the fp32 -> bf16 rounding against the scalar
// reference floatToBfloat16(), the oneDNN product against an fp32 product of the bf16-rounded
// inputs, and a TopK training step in bf16 against the fp32 reference. Without oneDNN the same
// program checks that asking for bf16 throws ConfigError.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <support/test_support.hpp>

#include <sae/core/rng.hpp>
#include <sae/io/dtype.hpp>
#include <sae/kernels/bf16_matmul.hpp>
#include <sae/sae.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_bf16 {

namespace {

using sae::Index;

float fromBits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

sae::RowMatrix<float> randomRows(Index rows, Index cols, std::uint64_t seed) {
  sae::Rng rng(seed);
  sae::RowMatrix<float> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = float(rng.normal());
  return m;
}

sae::SaeConfig topkConfig(Index d_in, Index d_sae, Index k) {
  sae::SaeConfig cfg;
  cfg.d_in = d_in;
  cfg.d_sae = d_sae;
  cfg.k = k;
  cfg.rescale_acts_by_decoder_norm = true;
  cfg.aux_loss_coefficient = 1.0 / 32;
  return cfg;
}

// A float model of each architecture with SAELens's initialisation; BatchTopK with a threshold
// that keeps a few percent of the latents.
template <typename Model>
Model encodeTestModel() {
  sae::SaeConfig cfg = topkConfig(64, 512, 16);
  Model model(cfg, 5);
  if constexpr (Model::kHasBuffers)
    model.buffers().flat()[0] = 0.02;  // scores ~ N(0, 0.01): ~2% fire
  return model;
}

}  // namespace

TEMPLATE_TEST_CASE("encode with a workspace equals encode, and reuses its storage",
                   "[bf16][encode]", sae::StandardSAE<float>, sae::GatedSAE<float>,
                   sae::TopKSAE<float>, sae::JumpReLUSAE<float>, sae::BatchTopKSAE<float>) {
  const auto model = encodeTestModel<TestType>();
  const sae::RowMatrix<float> x = randomRows(200, 64, 6), x2 = randomRows(200, 64, 7);
  typename TestType::Workspace ws;
  typename TestType::Codes codes;
  model.encode(x, codes, ws);
  CHECK(codes.toDense() == model.encode(x).toDense());
  model.encode(x2, codes, ws);  // a second batch through the same workspace
  CHECK(codes.toDense() == model.encode(x2).toDense());
}

TEST_CASE("floatToBf16 rounds like floatToBfloat16 on special values", "[bf16]") {
  std::vector<float> v = {0.0f,
                          -0.0f,
                          1.0f,
                          -1.0f,
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN(),
                          fromBits(0x7f800001u),  // signalling NaN: quieted
                          fromBits(0xff812345u),  // negative NaN with payload
                          std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::lowest(),
                          std::numeric_limits<float>::min(),
                          std::numeric_limits<float>::denorm_min(),
                          fromBits(0x00008000u),   // subnormal exactly at a tie: to even (0)
                          fromBits(0x00018000u),   // subnormal tie: to even (up)
                          fromBits(0x3f808000u),   // 1 + 2^-8: tie, down to even
                          fromBits(0x3f818000u),   // tie, up to even
                          fromBits(0x3f808001u),   // just above the tie: up
                          fromBits(0x3f807fffu),   // just below the tie: down
                          fromBits(0x7f7f8000u),   // rounds up to infinity
                          fromBits(0x7f7f7fffu)};  // stays finite
  std::vector<std::uint16_t> out(v.size());
  sae::kernels::floatToBf16(v.data(), out.data(), Index(v.size()));
  for (std::size_t i = 0; i < v.size(); ++i) {
    INFO("input bits " << std::hex << sae::io::detail::bitCast<std::uint32_t>(v[i]));
    CHECK(out[i] == sae::io::floatToBfloat16(v[i]));
  }
  CHECK(out[13] == 0x0000u);
  CHECK(out[14] == 0x0002u);
  CHECK(out[15] == 0x3f80u);
  CHECK(out[16] == 0x3f82u);
  CHECK(out[19] == 0x7f80u);
  CHECK(std::isnan(sae::io::bfloat16ToFloat(out[7])));

  // Random bit patterns (every exponent, both signs) and the round trip of bf16 values.
  sae::Rng rng(5);
  std::vector<float> r(1 << 16);
  for (auto& x : r) x = fromBits(std::uint32_t(rng.below(std::uint64_t(1) << 32)));
  std::vector<std::uint16_t> rb(r.size());
  sae::kernels::floatToBf16(r.data(), rb.data(), Index(r.size()));
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < r.size(); ++i) mismatches += rb[i] != sae::io::floatToBfloat16(r[i]);
  CHECK(mismatches == 0);
  std::vector<float> back(r.size());
  sae::kernels::bf16ToFloat(rb.data(), back.data(), Index(rb.size()));
  std::vector<std::uint16_t> again(r.size());
  sae::kernels::floatToBf16(back.data(), again.data(), Index(back.size()));
  CHECK(again == rb);
}

#if SAE_HAS_ONEDNN

namespace {

/// Rounds every element to bf16 and back: the values the bf16 GEMM multiplies.
template <typename Mat>
Mat roundedToBf16(const Mat& m) {
  Mat out(m.rows(), m.cols());
  for (Index i = 0; i < m.size(); ++i)
    out.data()[i] = sae::io::bfloat16ToFloat(sae::io::floatToBfloat16(m.data()[i]));
  return out;
}

}  // namespace

TEST_CASE("Bf16Matmul equals an fp32 product of the bf16-rounded inputs", "[bf16]") {
  STATIC_REQUIRE(sae::kernels::Bf16Matmul::available());
  const Index K = 96, N = 200;
  const sae::ColMatrix<float> W = randomRows(K, N, 1);
  sae::kernels::Bf16Matmul mm;
  mm.setWeights(W);
  REQUIRE(mm.rows() == K);
  REQUIRE(mm.cols() == N);
  const sae::ColMatrix<float> Wr = roundedToBf16(W);
  for (Index n = 0; n < N; n += 37)
    for (Index k = 0; k < K; k += 11)
      CHECK(sae::io::bfloat16ToFloat(mm.weights()[std::size_t(n * K + k)]) == Wr(k, n));

  const sae::RowMatrix<float> x = randomRows(130, K, 2);
  const Eigen::MatrixXd ref =
      roundedToBf16(x).cast<double>() * Wr.cast<double>();  // the exact product, nearly
  const double scale = ref.cwiseAbs().maxCoeff();
  // Row tiles of 64 over 130 rows: two full tiles and a short last one (2 rows), written into a
  // [64, N] tile as TopK's select() does, plus an output with a row stride wider than N.
  sae::RowMatrix<float> tile(64, N);
  for (Index r0 = 0; r0 < x.rows(); r0 += 64) {
    const Index rows = std::min<Index>(64, x.rows() - r0);
    tile.setConstant(std::numeric_limits<float>::quiet_NaN());
    mm.multiply(x.middleRows(r0, rows), tile.topRows(rows));
    const double err =
        (tile.topRows(rows).cast<double>() - ref.middleRows(r0, rows)).cwiseAbs().maxCoeff();
    INFO("tile at row " << r0 << " of " << rows << " rows");
    CHECK(err <= 1e-5 * scale);
    if (rows < 64) CHECK(std::isnan(tile(rows, 0)));  // rows below the tile's are untouched
  }
  sae::RowMatrix<float> wide(130, N + 24);
  mm.multiply(x, wide.leftCols(N));
  CHECK((wide.leftCols(N).cast<double>() - ref).cwiseAbs().maxCoeff() <= 1e-5 * scale);
  // Shapes seen: 64 and 2 rows with row stride N, 130 rows with row stride N + 24.
  CHECK(mm.cachedPrimitives() == 3);
  mm.multiply(x.topRows(64), tile);
  CHECK(mm.cachedPrimitives() == 3);
  CHECK(!mm.implementation(64).empty());

  // New weights of the same shape are used by the cached primitives.
  const sae::ColMatrix<float> W2 = 2 * W;
  mm.setWeights(W2);
  mm.multiply(x.topRows(64), tile);
  CHECK((tile.cast<double>() - 2 * ref.topRows(64)).cwiseAbs().maxCoeff() <= 2e-5 * scale);

  sae::RowMatrix<float> bad(64, N + 1);
  CHECK_THROWS_AS(mm.multiply(x.topRows(64), bad), sae::ConfigError);
}

TEST_CASE("A bf16 TopK training step matches fp32", "[bf16][TopKSAE]") {
  const Index d_in = 64, d_sae = 512, k = 16, B = 300;
  const auto cfg = topkConfig(d_in, d_sae, k);
  sae::TopKSAE<float> model(cfg, 3);
  const sae::RowMatrix<float> x = randomRows(B, d_in, 4);
  sae::LatentMask dead = sae::LatentMask::Zero(d_sae);
  for (Index i = 0; i < d_sae; i += 5) dead[i] = 1;  // exercise AuxK too
  sae::TrainOptions opts;
  opts.dead_mask = &dead;

  sae::TopKSAE<float>::Workspace ws32, ws16;
  ws32.tile_rows = ws16.tile_rows = 128;  // 300 rows: tiles of 128, 128 and a short 44
  ws16.bf16_encoder = true;
  auto g32 = model.makeGradients(), g16 = model.makeGradients();
  const auto t32 = model.backward(x, g32, opts, ws32);
  const auto t16 = model.backward(x, g16, opts, ws16);
  CHECK(t16.total() == Approx(t32.total()).epsilon(1e-2));
  CHECK(t16["mse_loss"] == Approx(t32["mse_loss"]).epsilon(1e-2));

  // Agreement of the selected latent sets, row by row.
  Index same = 0;
  for (Index b = 0; b < B; ++b) {
    std::set<std::int32_t> a(ws32.codes.indices.row(b).data(),
                             ws32.codes.indices.row(b).data() + k);
    for (Index j = 0; j < k; ++j) same += Index(a.count(ws16.codes.indices(b, j)));
  }
  const double agreement = double(same) / double(B * k);
  INFO("selection agreement " << agreement);
  CHECK(agreement >= 0.95);
  // Gradients: same direction, close norm.
  const auto &a = g32.flat(), &c = g16.flat();
  const double cosine = double(a.dot(c)) / (double(a.norm()) * double(c.norm()));
  INFO("gradient cosine " << cosine);
  CHECK(cosine >= 0.98);

  // The default stays fp32: a workspace without the flag gives the fp32 result bit for bit.
  sae::TopKSAE<float>::Workspace ws_default;
  ws_default.tile_rows = 128;
  auto g_default = model.makeGradients();
  const auto t_default = model.backward(x, g_default, opts, ws_default);
  CHECK(t_default.total() == t32.total());
}

TEMPLATE_TEST_CASE("bf16 encode matches fp32 encode", "[bf16][encode]", sae::StandardSAE<float>,
                   sae::GatedSAE<float>, sae::TopKSAE<float>, sae::JumpReLUSAE<float>,
                   sae::BatchTopKSAE<float>) {
  const auto model = encodeTestModel<TestType>();
  const sae::RowMatrix<float> x = randomRows(300, 64, 8);
  const sae::RowMatrix<float> want = model.encode(x).toDense();
  typename TestType::Workspace ws;
  ws.bf16_encoder = true;
  typename TestType::Codes codes;
  model.encode(x, codes, ws);
  const sae::RowMatrix<float> got = codes.toDense();
  REQUIRE(got.rows() == want.rows());
  REQUIRE(got.cols() == want.cols());
  // bf16 keeps 8 bits of mantissa: where both precisions fire, values within about 1% of
  // fp32; a few latents near the threshold (TopK: the k-th value) fire in one only.
  const auto cmp = sae::test::compareFiring(got, want);
  const double rel = cmp.relative_error;
  INFO(TestType::architecture() << ": relative error " << rel << ", firing agreement "
                                << cmp.agreement() << " of " << cmp.either);
  CHECK(cmp.both > 100);
  CHECK(rel < 0.03);
  CHECK(cmp.agreement() >= 0.9);
  CHECK(rel > 0);  // the bf16 product did run: fp32 would agree exactly
}

TEST_CASE("bf16 is refused for double models", "[bf16][TopKSAE]") {
  const auto cfg = topkConfig(8, 32, 4);
  sae::TopKSAE<double> model(cfg, 1);
  sae::TopKSAE<double>::Workspace ws;
  ws.bf16_encoder = true;
  const sae::RowMatrix<double> x = randomRows(5, 8, 2).cast<double>();
  auto g = model.makeGradients();
  CHECK_THROWS_WITH(model.backward(x, g, {}, ws),
                    "bf16 precision is available for float models only");
}

#else  // no oneDNN

TEST_CASE("bf16 without oneDNN throws ConfigError", "[bf16][TopKSAE]") {
  STATIC_REQUIRE(!sae::kernels::bf16Available());
  const auto cfg = topkConfig(8, 32, 4);
  sae::TopKSAE<float> model(cfg, 1);
  sae::TopKSAE<float>::Workspace ws;
  ws.bf16_encoder = true;
  const sae::RowMatrix<float> x = randomRows(5, 8, 2);
  auto g = model.makeGradients();
  CHECK_THROWS_AS(model.backward(x, g, {}, ws), sae::ConfigError);
  CHECK_THROWS_WITH(model.backward(x, g, {}, ws),
                    "bf16 precision needs oneDNN: rebuild with libdnnl-dev installed");
  sae::StandardSAE<float> standard(cfg, 1);
  sae::StandardSAE<float>::Workspace sws;
  sws.bf16_encoder = true;
  sae::DenseCodes<float> codes;
  CHECK_THROWS_AS(standard.encode(x, codes, sws), sae::ConfigError);
}

#endif

}  // namespace sae_test_bf16
