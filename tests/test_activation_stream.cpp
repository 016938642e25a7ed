// Tests of ActivationStream and expandShardPaths.
//
// The shards are written here (writeNpy, SafetensorsWriter, writeRaw) or copied from
// tests/data/io (stream_ids.npz, written by numpy in generate.py). Every row carries a label in
// column 0 and, in the other columns, values that follow from the label:
//   row(label, c) = label            for c = 0
//                 = (c odd ? -1 : 1) * (0.25 * c + label % 4)   otherwise,
// all exact in bfloat16 for the labels used with 16-bit shards (< 256). A served row is checked
// against that formula, so a label identifies the row and proves its columns were not mixed with
// another row's. Expected sets of labels, norms and messages follow from how the shards were
// built here, never from the stream's own output.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include <support/test_support.hpp>

#include <sae/io/activation_stream.hpp>
#include <sae/io/dtype.hpp>
#include <sae/io/npy.hpp>
#include <sae/io/raw.hpp>
#include <sae/io/safetensors.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_activation_stream {

using sae::Index;
using sae::RowMatrix;
using sae::io::ActivationStream;
using sae::io::DType;
using sae::io::NanPolicy;
using sae::io::StreamOptions;
using sae::io::StreamPosition;
using namespace sae::test;
namespace fs = std::filesystem;

namespace {

double cell(double label, Index c) {
  if (c == 0) return label;
  const double base =
      0.25 * static_cast<double>(c) + static_cast<double>(static_cast<std::int64_t>(label) % 4);
  return c % 2 == 1 ? -base : base;
}

/// Rows labelled first, first + 1, ... (the formula above).
RowMatrix<double> labelled(std::int64_t first, Index rows, Index cols) {
  RowMatrix<double> m(rows, cols);
  for (Index r = 0; r < rows; ++r) {
    for (Index c = 0; c < cols; ++c) m(r, c) = cell(static_cast<double>(first + r), c);
  }
  return m;
}

/// Labels of a batch, checking that every row matches the formula for its label.
template <typename Scalar>
std::vector<std::int64_t> labelsOf(const RowMatrix<Scalar>& batch) {
  std::vector<std::int64_t> labels;
  for (Index r = 0; r < batch.rows(); ++r) {
    const double label = static_cast<double>(batch(r, 0));
    for (Index c = 1; c < batch.cols(); ++c) {
      if (static_cast<double>(batch(r, c)) != cell(label, c)) {
        FAIL("row with label " << label << " has column " << c << " = " << batch(r, c)
                               << ", expected " << cell(label, c));
      }
    }
    labels.push_back(static_cast<std::int64_t>(label));
  }
  return labels;
}

/// The first `count` labels the stream serves (whole batches, the last one cut).
template <typename Scalar>
std::vector<std::int64_t> serve(ActivationStream<Scalar>& stream, std::int64_t count) {
  std::vector<std::int64_t> out;
  RowMatrix<Scalar> batch;
  while (static_cast<std::int64_t>(out.size()) < count) {
    stream.next(batch);
    const auto labels = labelsOf(batch);
    out.insert(out.end(), labels.begin(), labels.end());
  }
  out.resize(static_cast<std::size_t>(count));
  return out;
}

std::vector<std::int64_t> range(std::int64_t first, std::int64_t n) {
  std::vector<std::int64_t> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = first + i;
  return v;
}

std::vector<std::int64_t> sorted(std::vector<std::int64_t> v) {
  std::sort(v.begin(), v.end());
  return v;
}

/// Three npy shards with labels 0..99, 100..136, 137..386 (d_in 8), in `dir`.
void writeThreeShards(const TempDir& dir) {
  sae::io::writeNpy(dir.file("s0.npy"), labelled(0, 100, 8).cast<float>());
  sae::io::writeNpy(dir.file("s1.npy"), labelled(100, 37, 8));  // float64
  sae::io::writeNpy(dir.file("s2.npy"), labelled(137, 250, 8).cast<float>());
}
constexpr std::int64_t kThreeShardRows = 387;

StreamOptions smallOptions() {
  StreamOptions o;
  o.batch_size = 10;
  o.shuffle_buffer_rows = 64;  // windows of 32 rows
  o.seed = 7;
  return o;
}

}  // namespace

// ------------------------------------------------------------------------------------ conversion

TEST_CASE("float16 conversion loops agree with halfToFloat on all inputs, both byte orders",
          "[ActivationStream]") {
  // Through the loop, both byte orders, into float and double.
  std::vector<unsigned char> le(2 * 65536);
  std::vector<unsigned char> be(2 * 65536);
  for (std::uint32_t b = 0; b < 65536; ++b) {
    le[2 * b] = be[2 * b + 1] = static_cast<unsigned char>(b & 0xff);
    le[2 * b + 1] = be[2 * b] = static_cast<unsigned char>(b >> 8);
  }
  std::vector<float> f(65536);
  std::vector<double> d(65536);
  for (const auto& [bytes, order] : {std::make_pair(&le, sae::io::ByteOrder::Little),
                                     std::make_pair(&be, sae::io::ByteOrder::Big)}) {
    sae::io::detail::convertElements(bytes->data(), DType::F16, order, 65536, f.data());
    sae::io::detail::convertElements(bytes->data(), DType::F16, order, 65536, d.data());
    int bad = 0;
    for (std::uint32_t b = 0; b < 65536; ++b) {
      const float want = sae::io::halfToFloat(static_cast<std::uint16_t>(b));
      if (std::isnan(want)) {
        bad += std::isnan(f[b]) && std::isnan(d[b]) ? 0 : 1;
      } else {
        bad += f[b] == want && std::signbit(f[b]) == std::signbit(want) &&
                       d[b] == static_cast<double>(want)
                   ? 0
                   : 1;
      }
    }
    CHECK(bad == 0);
  }
}

// ------------------------------------------------------------------------------------ epochs

TEMPLATE_TEST_CASE("every training row is served exactly once per epoch", "[ActivationStream]",
                   float, double) {
  TempDir dir("stream");
  writeThreeShards(dir);
  for (Index blockRows : {Index(0), Index(1), Index(5), Index(32)}) {
    for (bool prefetch : {false, true}) {
      INFO("block_rows " << blockRows << ", prefetch " << prefetch);
      StreamOptions o = smallOptions();
      o.block_rows = blockRows;
      o.prefetch = prefetch;
      ActivationStream<TestType> stream({dir.path()}, o);
      CHECK(stream.dIn() == 8);
      CHECK(stream.totalRows() == kThreeShardRows);
      CHECK(stream.trainingRows() == kThreeShardRows);
      CHECK(stream.epoch() == 0);
      const auto seq = serve(stream, 3 * kThreeShardRows);
      for (int e = 0; e < 3; ++e) {
        INFO("epoch " << e);
        const std::vector<std::int64_t> epoch(seq.begin() + e * kThreeShardRows,
                                              seq.begin() + (e + 1) * kThreeShardRows);
        CHECK(sorted(epoch) == range(0, kThreeShardRows));
        CHECK(epoch != range(0, kThreeShardRows));  // shuffled
      }
      // 117 batches of 10 = 1170 rows: 3 epochs of 387 and 9 rows into the fourth.
      CHECK(stream.position().batches == 117);
      CHECK(stream.epoch() == 3);
      CHECK(stream.droppedNonFinite() == 0);
      CHECK(stream.droppedOutliers() == 0);
      CHECK(stream.medianNorm() == 0.0);
    }
  }
}

TEST_CASE("epochs are shuffled differently and windows mix distant rows", "[ActivationStream]") {
  TempDir dir("stream");
  writeThreeShards(dir);
  StreamOptions o = smallOptions();
  o.block_rows = 4;  // 8 blocks of 4 rows per window, from anywhere in the 387 rows
  ActivationStream<float> stream({dir.path()}, o);
  CHECK(stream.blockRows() == 4);
  CHECK(stream.windowRows() == 32);
  CHECK(stream.windowsPerEpoch() == 13);  // 97 blocks, 8 per window
  const auto seq = serve(stream, 2 * kThreeShardRows);
  const std::vector<std::int64_t> first(seq.begin(), seq.begin() + kThreeShardRows);
  const std::vector<std::int64_t> second(seq.begin() + kThreeShardRows, seq.end());
  CHECK(first != second);
  // The first window's rows (31 or 32: one block may be the last, of 3 rows) come from 8
  // blocks spread over the dataset.
  std::set<std::int64_t> blocks;
  for (int i = 0; i < 31; ++i) blocks.insert(first[static_cast<std::size_t>(i)] / 4);
  CHECK(blocks.size() == 8);
  CHECK(*blocks.rbegin() - *blocks.begin() > 20);
}

TEST_CASE("a batch larger than the dataset spans epochs", "[ActivationStream]") {
  TempDir dir("stream");
  sae::io::writeNpy(dir.file("a.npy"), labelled(0, 7, 3).cast<float>());
  StreamOptions o;
  o.batch_size = 20;
  o.shuffle_buffer_rows = 4;  // windows of 2 rows
  ActivationStream<float> stream({dir.file("a.npy")}, o);
  RowMatrix<float> batch;
  stream.next(batch);
  REQUIRE(batch.rows() == 20);
  REQUIRE(batch.cols() == 3);
  const auto labels = labelsOf(batch);
  for (int e = 0; e < 2; ++e) {
    CHECK(sorted(std::vector<std::int64_t>(labels.begin() + 7 * e, labels.begin() + 7 * e + 7)) ==
          range(0, 7));
  }
  CHECK(stream.epoch() == 2);
  CHECK(stream.position().offset == 0);
  CHECK(stream.position().window == 3);  // 6 rows of the third epoch: windows 0-2 done
}

// ------------------------------------------------------------------------------------ determinism

TEST_CASE("the batches are a function of the seed, not of prefetch", "[ActivationStream]") {
  TempDir dir("stream");
  writeThreeShards(dir);
  auto run = [&](std::uint64_t seed, bool prefetch) {
    StreamOptions o = smallOptions();
    o.seed = seed;
    o.prefetch = prefetch;
    o.holdout_fraction = 0.1;
    ActivationStream<float> stream({dir.path()}, o);
    std::vector<RowMatrix<float>> batches(100);
    for (auto& b : batches) stream.next(b);
    return batches;
  };
  const auto a = run(1, true);
  const auto b = run(1, true);
  const auto c = run(1, false);
  const auto d = run(2, true);
  for (std::size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i] == b[i]);
    CHECK(a[i] == c[i]);
  }
  int same = 0;
  for (std::size_t i = 0; i < a.size(); ++i) same += a[i] == d[i] ? 1 : 0;
  CHECK(same == 0);
}

TEMPLATE_TEST_CASE("seek(position()) continues bit-for-bit, across epochs", "[ActivationStream]",
                   float, double) {
  TempDir dir("stream");
  writeThreeShards(dir);
  StreamOptions o = smallOptions();
  o.batch_size = 16;
  o.holdout_fraction = 0.05;
  o.block_rows = 3;
  // 90 batches of 16 = 1440 rows: almost 4 epochs of about 368 training rows.
  ActivationStream<TestType> reference({dir.path()}, o);
  std::vector<RowMatrix<TestType>> batches(90);
  std::vector<StreamPosition> positions(90);
  for (std::size_t i = 0; i < batches.size(); ++i) {
    reference.next(batches[i]);
    positions[i] = reference.position();
    CHECK(positions[i].batches == static_cast<std::int64_t>(i) + 1);
  }
  CHECK(positions.back().epoch == 3);
  // Every position at an epoch boundary or a window boundary, and some in between.
  std::vector<std::size_t> points = {0, 1, 5, 22, 23, 24, 45, 46, 60, 88};
  for (std::size_t i = 1; i < positions.size(); ++i) {
    if (positions[i].epoch != positions[i - 1].epoch || positions[i].offset == 0) {
      points.push_back(i);
    }
  }
  for (bool prefetch : {true, false}) {
    for (const std::size_t k : points) {
      INFO("resume after batch " << k + 1 << ", prefetch " << prefetch);
      StreamOptions resumed = o;
      resumed.prefetch = prefetch;
      ActivationStream<TestType> stream({dir.path()}, resumed);
      // Through JSON, as a checkpoint stores it.
      stream.seek(StreamPosition::fromJson(nlohmann::json::parse(positions[k].toJson().dump())));
      CHECK(stream.position() == positions[k]);
      RowMatrix<TestType> batch;
      for (std::size_t i = k + 1; i < batches.size(); ++i) {
        stream.next(batch);
        REQUIRE(batch == batches[i]);
        REQUIRE(stream.position() == positions[i]);
      }
    }
  }
  // Seeking a stream that is already running (back to the start).
  ActivationStream<TestType> stream({dir.path()}, o);
  RowMatrix<TestType> batch;
  for (int i = 0; i < 30; ++i) stream.next(batch);
  stream.seek(StreamPosition{});
  for (std::size_t i = 0; i < 10; ++i) {
    stream.next(batch);
    CHECK(batch == batches[i]);
  }
}

TEST_CASE("seek rejects positions outside the dataset", "[ActivationStream]") {
  TempDir dir("stream");
  writeThreeShards(dir);
  StreamOptions o = smallOptions();
  o.shuffle_buffer_rows = 86;
  o.block_rows = 43;  // 387 = 9 x 43: nine windows of one 43-row block
  ActivationStream<float> stream({dir.path()}, o);
  REQUIRE(stream.windowsPerEpoch() == 9);
  StreamPosition p;
  p.window = 9;
  CHECK_THROWS_AS(stream.seek(p), sae::ConfigError);
  CHECK_THROWS_WITH(stream.seek(p),
                    "ActivationStream::seek: window 9 is out of range: an epoch has 9 windows");
  p.window = 0;
  p.offset = -1;
  CHECK_THROWS_AS(stream.seek(p), sae::ConfigError);
  CHECK_THROWS_WITH(stream.seek(p),
                    "ActivationStream::seek: epoch, offset and batches must be non-negative, "
                    "found epoch 0, offset -1, batches 0");
  p.offset = 44;
  CHECK_THROWS_AS(stream.seek(p), sae::ConfigError);
  CHECK_THROWS_WITH(stream.seek(p),
                    "ActivationStream::seek: offset 44 is past the 43 rows of window 0 of epoch 0 "
                    "(a position of another dataset or other options?)");
  p.offset = 43;  // the end of the window: the same as the start of the next
  stream.seek(p);
  CHECK(stream.position().window == 1);
  CHECK(stream.position().offset == 0);
  CHECK_THROWS_AS(StreamPosition::fromJson(nlohmann::json{{"epoch", 1}}), sae::ConfigError);
  CHECK_THROWS_WITH(StreamPosition::fromJson(nlohmann::json{{"epoch", 1}}),
                    "StreamPosition: field 'window' must be a non-negative integer");
}

// ------------------------------------------------------------------------------------ hold-out

TEST_CASE("hold-out rows are disjoint from training, stable, and chosen per row",
          "[ActivationStream]") {
  TempDir dir("stream");
  sae::io::writeNpy(dir.file("a.npy"), labelled(0, 600, 4).cast<float>());
  sae::io::writeNpy(dir.file("b.npy"), labelled(600, 400, 4).cast<float>());
  StreamOptions o;
  o.batch_size = 32;
  o.shuffle_buffer_rows = 128;
  o.holdout_fraction = 0.2;
  o.seed = 3;
  ActivationStream<float> stream({dir.path()}, o);
  CHECK(stream.totalRows() == 1000);
  const std::int64_t training = stream.trainingRows();
  CHECK(stream.holdoutRows() == 1000 - training);
  CHECK(training > 740);  // 20% of 1000 held out: binomial, sd 12.6
  CHECK(training < 860);

  const RowMatrix<float> held = stream.holdout(1000);
  CHECK(held.rows() == 1000 - training);
  const auto heldLabels = labelsOf(held);
  CHECK(std::is_sorted(heldLabels.begin(), heldLabels.end()));  // global row order
  const auto trainLabels = serve(stream, training);
  std::vector<std::int64_t> all = heldLabels;
  all.insert(all.end(), trainLabels.begin(), trainLabels.end());
  CHECK(sorted(all) == range(0, 1000));  // disjoint, and together every row once

  // The first rows only; the same for other batch sizes and buffers; different for other seeds.
  const RowMatrix<float> first5 = stream.holdout(5);
  CHECK(first5 == held.topRows(5));
  StreamOptions other = o;
  other.batch_size = 7;
  other.shuffle_buffer_rows = 20;
  other.prefetch = false;
  CHECK(ActivationStream<float>({dir.path()}, other).holdout(1000) == held);
  other.seed = 4;
  const auto otherLabels = labelsOf(ActivationStream<float>({dir.path()}, other).holdout(1000));
  CHECK(otherLabels != heldLabels);
  CHECK(ActivationStream<float>({dir.path()}, o).holdout(0).rows() == 0);
  StreamOptions none = o;
  none.holdout_fraction = 0.0;
  const ActivationStream<float> noHoldout({dir.path()}, none);
  CHECK(noHoldout.trainingRows() == 1000);
  CHECK(noHoldout.holdout(10).rows() == 0);
  CHECK(noHoldout.holdout(10).cols() == 4);
}

// ------------------------------------------------------------------------------------ filters

TEMPLATE_TEST_CASE("the outlier filter drops exactly the planted outliers", "[ActivationStream]",
                   float, double) {
  // 1000 rows, label 1000..1999 in column 0 and zeros elsewhere, so the norm is the label;
  // five rows (the "BOS tokens") have 1e5 in every other column.
  TempDir dir("stream");
  const Index d = 6;
  RowMatrix<double> m = RowMatrix<double>::Zero(1000, d);
  const std::set<std::int64_t> planted = {1000, 1128, 1500, 1501, 1999};
  std::vector<double> norms;
  for (Index r = 0; r < 1000; ++r) {
    const std::int64_t label = 1000 + r;
    m(r, 0) = static_cast<double>(label);
    if (planted.count(label) != 0) m.row(r).tail(d - 1).setConstant(1e5);
    norms.push_back(m.row(r).norm());
  }
  sae::io::writeNpy(dir.file("a.npy"), m.topRows(300));
  sae::io::writeNpy(dir.file("b.npy"), m.bottomRows(700));
  std::sort(norms.begin(), norms.end());
  const double median = 0.5 * (norms[499] + norms[500]);  // all 1000 rows sampled

  StreamOptions o;
  o.batch_size = 50;
  o.shuffle_buffer_rows = 200;
  o.max_norm_ratio = 3.0;
  o.norm_sample_rows = 1000;
  ActivationStream<TestType> stream({dir.path()}, o);
  CHECK(stream.medianNorm() == median);
  const std::int64_t kept = 1000 - static_cast<std::int64_t>(planted.size());
  // Labels only (the other columns are not the formula's here).
  std::vector<std::int64_t> labels;
  RowMatrix<TestType> batch;
  while (static_cast<std::int64_t>(labels.size()) < 2 * kept) {
    stream.next(batch);
    for (Index r = 0; r < batch.rows(); ++r) {
      labels.push_back(static_cast<std::int64_t>(batch(r, 0)));
    }
  }
  std::vector<std::int64_t> expected;
  for (std::int64_t l = 1000; l < 2000; ++l) {
    if (planted.count(l) == 0) expected.push_back(l);
  }
  CHECK(sorted(std::vector<std::int64_t>(labels.begin(), labels.begin() + kept)) == expected);
  CHECK(sorted(std::vector<std::int64_t>(labels.begin() + kept, labels.begin() + 2 * kept)) ==
        expected);
  CHECK(stream.droppedOutliers() == 5);  // distinct rows, not once per epoch
  CHECK(stream.droppedNonFinite() == 0);

  // A sample of 10 evenly spaced rows, (i + 0.5) * 100: labels 1050, 1150, ..., 1950.
  o.norm_sample_rows = 10;
  const ActivationStream<TestType> sampled({dir.path()}, o);
  CHECK(sampled.medianNorm() == 0.5 * (1450.0 + 1550.0));
}

TEST_CASE("NaN policy Error names the file and the row", "[ActivationStream]") {
  TempDir dir("stream");
  sae::io::writeNpy(dir.file("a.npy"), labelled(0, 50, 5).cast<float>());
  RowMatrix<float> b = labelled(50, 40, 5).cast<float>();
  b(17, 3) = std::numeric_limits<float>::quiet_NaN();
  sae::io::writeNpy(dir.file("b.npy"), b);
  const std::string message = dir.file("b.npy") +
                              ": row 17 has a non-finite value (nan) in column 3; set "
                              "StreamOptions::nan_policy = NanPolicy::Skip to drop such rows";
  for (bool prefetch : {false, true}) {
    INFO("prefetch " << prefetch);
    StreamOptions o;
    o.batch_size = 8;
    o.shuffle_buffer_rows = 20;
    o.prefetch = prefetch;
    ActivationStream<float> stream({dir.path()}, o);
    RowMatrix<float> batch;
    bool thrown = false;
    StreamPosition before;
    for (int i = 0; i < 20 && !thrown; ++i) {  // 160 rows: past the NaN row within 2 epochs
      before = stream.position();
      try {
        stream.next(batch);
      } catch (const sae::NumericError& e) {
        CHECK(std::string(e.what()) == message);
        thrown = true;
      }
    }
    REQUIRE(thrown);
    CHECK(stream.position() == before);                      // unchanged by the failed batch
    CHECK_THROWS_AS(stream.next(batch), sae::NumericError);  // again, no hang
    CHECK_THROWS_WITH(stream.next(batch), message);
  }
  // Infinities too, with their sign.
  b = labelled(50, 40, 5).cast<float>();
  b(3, 0) = -std::numeric_limits<float>::infinity();
  sae::io::writeNpy(dir.file("b.npy"), b);
  StreamOptions o;
  o.batch_size = 90;
  o.prefetch = false;
  ActivationStream<float> stream({dir.path()}, o);
  RowMatrix<float> batch;
  CHECK_THROWS_WITH(stream.next(batch),
                    dir.file("b.npy") +
                        ": row 3 has a non-finite value (-inf) in column 0; set "
                        "StreamOptions::nan_policy = NanPolicy::Skip to drop such rows");
}

TEST_CASE("NaN policy Skip drops and counts the non-finite rows", "[ActivationStream]") {
  TempDir dir("stream");
  RowMatrix<float> a = labelled(0, 60, 4).cast<float>();
  a(5, 1) = std::numeric_limits<float>::quiet_NaN();
  a(6, 2) = std::numeric_limits<float>::infinity();
  a(59, 3) = -std::numeric_limits<float>::infinity();
  sae::io::writeNpy(dir.file("a.npy"), a);
  sae::io::SafetensorsWriter w;
  RowMatrix<float> b = labelled(60, 30, 4).cast<float>();
  b(0, 0) = std::numeric_limits<float>::quiet_NaN();  // label lost: row 60
  w.add("acts", b);
  w.write(dir.file("b.safetensors"));
  StreamOptions o;
  o.batch_size = 9;
  o.shuffle_buffer_rows = 16;
  o.nan_policy = NanPolicy::Skip;
  o.holdout_fraction = 0.0;
  ActivationStream<float> stream({dir.path()}, o);
  CHECK(stream.trainingRows() == 90);
  std::vector<std::int64_t> expected;
  for (std::int64_t l = 0; l < 90; ++l) {
    if (l != 5 && l != 6 && l != 59 && l != 60) expected.push_back(l);
  }
  const auto seq = serve(stream, 2 * 86);
  CHECK(sorted(std::vector<std::int64_t>(seq.begin(), seq.begin() + 86)) == expected);
  CHECK(sorted(std::vector<std::int64_t>(seq.begin() + 86, seq.end())) == expected);
  CHECK(stream.droppedNonFinite() == 4);
  CHECK(stream.droppedOutliers() == 0);
}

TEST_CASE("a stream whose rows are all dropped stops with an error", "[ActivationStream]") {
  TempDir dir("stream");
  RowMatrix<float> a = RowMatrix<float>::Constant(10, 3, std::numeric_limits<float>::quiet_NaN());
  sae::io::writeNpy(dir.file("a.npy"), a);
  StreamOptions o;
  o.batch_size = 4;
  o.shuffle_buffer_rows = 8;
  o.nan_policy = NanPolicy::Skip;
  ActivationStream<float> stream({dir.path()}, o);
  RowMatrix<float> batch;
  CHECK_THROWS_AS(stream.next(batch), sae::ConfigError);
  CHECK_THROWS_WITH(stream.next(batch),
                    "ActivationStream: a whole epoch (3 windows) yielded no rows: every training "
                    "row was dropped by the NaN policy or the outlier filter");
}

// ------------------------------------------------------------------------------------ shards

TEST_CASE("a mix of npy, npz, safetensors and raw shards", "[ActivationStream]") {
  TempDir dir("stream");
  const Index d = 4;
  // labels 0..19: npy float32; 20..31: npy float16 in Fortran order, 3-D (2, 6, 4);
  // 500..505: stream_ids.npz from numpy ("acts", plus a 1-D "labels");
  // 40..59: safetensors bfloat16 ("acts", plus a 1-D "scale"); 60..74: raw bfloat16.
  sae::io::writeNpy(dir.file("a.npy"), labelled(0, 20, d).cast<float>());
  {
    // A float16 Fortran-order 3-D array, written by hand: element (i, j, k) of shape (2, 6, 4)
    // at offset i + 2 j + 12 k holds row 6 i + j of the flattened view.
    const RowMatrix<double> rows = labelled(20, 12, d);
    std::string bytes = sae::io::detail::npyPreamble("<f2", {2, 6, 4});
    bytes.replace(bytes.find("False"), 5, "True ");
    for (Index k = 0; k < 4; ++k) {
      for (Index j = 0; j < 6; ++j) {
        for (Index i = 0; i < 2; ++i) {
          // Exact in float16: labels < 32, values k/4 + label%4: binary16 bits by hand.
          const double v = rows(6 * i + j, k);
          int exponent = 0;
          const double mant = std::frexp(std::abs(v), &exponent);  // v = mant * 2^exponent
          std::uint16_t h = 0;
          if (v != 0.0) {
            const auto frac = static_cast<std::uint16_t>((mant * 2.0 - 1.0) * 1024.0);
            h = static_cast<std::uint16_t>(((exponent - 1 + 15) << 10) | frac);
          }
          if (v < 0) h |= 0x8000;
          bytes += static_cast<char>(h & 0xff);
          bytes += static_cast<char>(h >> 8);
        }
      }
    }
    std::ofstream(dir.file("b.npy"), std::ios::binary) << bytes;
  }
  fs::copy_file(dataPath("stream_ids.npz"), dir.file("c.npz"));
  {
    sae::io::SafetensorsWriter w;
    w.add("scale", Eigen::VectorXf::Ones(4));
    w.add("acts", labelled(40, 20, d).cast<float>(), DType::BF16);
    w.write(dir.file("d.safetensors"));
  }
  sae::io::writeRaw(dir.file("e.bin"), labelled(60, 15, d).cast<float>(), DType::BF16);

  // stream_ids.npz: labels 500 + r in column 0, v(r, c) = (c even ? 1 : -1) (10 r + c + 0.25)
  // elsewhere (generate.py), so its rows are checked by that formula instead.
  StreamOptions o;
  o.batch_size = 11;
  o.shuffle_buffer_rows = 24;
  o.raw_dtype = DType::BF16;
  o.raw_cols = d;
  for (const std::string& tensor : {std::string(), std::string("acts")}) {
    INFO("tensor_name '" << tensor << "'");
    o.tensor_name = tensor;
    ActivationStream<float> stream({dir.path()}, o);
    CHECK(stream.shardPaths() ==
          std::vector<std::string>{dir.file("a.npy"), dir.file("b.npy"), dir.file("c.npz"),
                                   dir.file("d.safetensors"), dir.file("e.bin")});
    CHECK(stream.totalRows() == 20 + 12 + 6 + 20 + 15);
    std::vector<std::int64_t> labels;
    RowMatrix<float> batch;
    while (labels.size() < 73) {
      stream.next(batch);
      for (Index r = 0; r < batch.rows(); ++r) {
        const double label = batch(r, 0);
        if (label >= 500) {
          const double row = label - 500;
          for (Index c = 1; c < d; ++c) {
            CHECK(batch(r, c) == static_cast<float>((c % 2 == 0 ? 1.0 : -1.0) *
                                                    (10.0 * row + static_cast<double>(c) + 0.25)));
          }
          labels.push_back(static_cast<std::int64_t>(label));
        } else {
          const auto one = labelsOf<float>(RowMatrix<float>(batch.row(r)));
          labels.push_back(one.front());
        }
      }
    }
    labels.resize(73);
    std::vector<std::int64_t> expected = range(0, 32);
    for (std::int64_t l : range(500, 6)) expected.push_back(l);
    for (std::int64_t l : range(40, 35)) expected.push_back(l);
    CHECK(sorted(labels) == sorted(expected));
  }
}

TEST_CASE("glob patterns and directories expand to sorted shard lists", "[ActivationStream]") {
  TempDir dir("stream");
  fs::create_directories(dir.file("sub"));
  for (const char* name : {"shard_02.npy", "shard_00.npy", "shard_01.npy", "shard_10.npy"}) {
    sae::io::writeNpy(dir.file(name), labelled(0, 3, 2).cast<float>());
  }
  sae::io::writeNpy(dir.file("other.npy"), labelled(0, 5, 2).cast<float>());
  std::ofstream(dir.file("README.txt")) << "not a shard\n";
  std::ofstream(dir.file(".hidden.npy")) << "not a shard either\n";
  sae::io::writeNpy(dir.file("sub/deep.npy"), labelled(0, 3, 2).cast<float>());

  using sae::io::expandShardPaths;
  CHECK(expandShardPaths({dir.file("shard_*.npy")}) ==
        std::vector<std::string>{dir.file("shard_00.npy"), dir.file("shard_01.npy"),
                                 dir.file("shard_02.npy"), dir.file("shard_10.npy")});
  CHECK(expandShardPaths({dir.file("shard_0?.npy")}) ==
        std::vector<std::string>{dir.file("shard_00.npy"), dir.file("shard_01.npy"),
                                 dir.file("shard_02.npy")});
  CHECK(expandShardPaths({dir.file("shard_0[1-2].npy"), dir.file("other.npy")}) ==
        std::vector<std::string>{dir.file("shard_01.npy"), dir.file("shard_02.npy"),
                                 dir.file("other.npy")});
  // A directory: its shard files, not README.txt, hidden files or subdirectories.
  CHECK(expandShardPaths({dir.path()}) ==
        std::vector<std::string>{dir.file("other.npy"), dir.file("shard_00.npy"),
                                 dir.file("shard_01.npy"), dir.file("shard_02.npy"),
                                 dir.file("shard_10.npy")});
  StreamOptions o = smallOptions();
  const ActivationStream<float> stream({dir.file("shard_*.npy")}, o);
  CHECK(stream.totalRows() == 12);
  CHECK(stream.dIn() == 2);
}

// ------------------------------------------------------------------------------------ bad input

TEST_CASE("shard lists: empty directories, no matches, missing files", "[ActivationStream][bad]") {
  TempDir dir("stream");
  fs::create_directories(dir.file("empty"));
  fs::create_directories(dir.file("texts"));
  std::ofstream(dir.file("texts/notes.txt")) << "x\n";
  sae::io::writeNpy(dir.file("a.npy"), labelled(0, 3, 2).cast<float>());
  std::ofstream(dir.file("a.pt")) << "x\n";
  using sae::io::expandShardPaths;
  const std::string kinds = "(.npy, .npz, .safetensors, .bin, .raw files)";
  struct Case {
    std::vector<std::string> specs;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{}, "ActivationStream: no shards given (an empty list of paths)"},
      {{dir.file("empty")},
       "ActivationStream: the directory '" + dir.file("empty") + "' contains no shards " + kinds},
      {{dir.file("texts")},
       "ActivationStream: the directory '" + dir.file("texts") + "' contains no shards " + kinds},
      {{dir.file("*.npz")},
       "ActivationStream: the pattern '" + dir.file("*.npz") + "' matches no shards " + kinds},
      {{dir.file("a.pt")},
       "ActivationStream: '" + dir.file("a.pt") +
           "' is not a shard: the extension must be one of .npy, .npz, "
           ".safetensors, .bin, .raw"},
      {{dir.file("a.npy"), dir.path() + "/./a.npy"},
       "ActivationStream: shard '" + dir.path() + "/./a.npy' is listed twice (also as '" +
           dir.file("a.npy") + "')"},
  };
  for (const auto& c : cases) {
    INFO(c.message);
    CHECK_THROWS_AS(expandShardPaths(c.specs), sae::ConfigError);
    CHECK_THROWS_WITH(expandShardPaths(c.specs), c.message);
    CHECK_THROWS_AS(ActivationStream<float>(c.specs, StreamOptions{}), sae::ConfigError);
    CHECK_THROWS_WITH(ActivationStream<float>(c.specs, StreamOptions{}), c.message);
  }
  const std::string missing = dir.file("missing.npy");
  CHECK_THROWS_AS(expandShardPaths({missing}), sae::IoError);
  CHECK_THROWS_WITH(expandShardPaths({missing}),
                    missing + ": cannot open for reading: No such file or directory");
}

TEST_CASE("a shard with another d_in is named", "[ActivationStream][bad]") {
  TempDir dir("stream");
  sae::io::writeNpy(dir.file("a.npy"), labelled(0, 10, 8).cast<float>());
  sae::io::writeNpy(dir.file("b.npy"), labelled(10, 10, 6).cast<float>());
  sae::io::writeNpy(dir.file("c.npy"), labelled(20, 10, 8).cast<float>());
  CHECK_THROWS_AS(ActivationStream<float>({dir.path()}, StreamOptions{}), sae::ConfigError);
  CHECK_THROWS_WITH(ActivationStream<float>({dir.path()}, StreamOptions{}),
                    "ActivationStream: shard '" + dir.file("b.npy") +
                        "' has d_in 6 (shape (10, 6)), but 2 of the 3 shards have d_in 8, e.g. '" +
                        dir.file("a.npy") + "'");
  // The odd one first: still the odd one is named.
  std::filesystem::rename(dir.file("a.npy"), dir.file("d.npy"));
  CHECK_THROWS_WITH(ActivationStream<float>({dir.path()}, StreamOptions{}),
                    "ActivationStream: shard '" + dir.file("b.npy") +
                        "' has d_in 6 (shape (10, 6)), but 2 of the 3 shards have d_in 8, e.g. '" +
                        dir.file("c.npy") + "'");
}

TEST_CASE("multi-array files need one 2-D/3-D array or tensor_name", "[ActivationStream][bad]") {
  TempDir dir("stream");
  sae::io::SafetensorsWriter w;
  w.add("x", labelled(0, 4, 3).cast<float>());
  w.add("y", labelled(0, 4, 3).cast<float>());
  w.add("z", Eigen::VectorXf::Ones(3));
  w.write(dir.file("two.safetensors"));
  const std::string two = dir.file("two.safetensors");
  CHECK_THROWS_AS(ActivationStream<float>({two}, StreamOptions{}), sae::ConfigError);
  CHECK_THROWS_WITH(ActivationStream<float>({two}, StreamOptions{}),
                    two +
                        ": cannot choose the tensor to stream: 2 tensors have 2 or 3 "
                        "dimensions (x (4, 3), y (4, 3), z (3,)); set StreamOptions::tensor_name");
  StreamOptions o;
  o.tensor_name = "y";
  CHECK(ActivationStream<float>({two}, o).totalRows() == 4);
  o.tensor_name = "w";
  CHECK_THROWS_AS(ActivationStream<float>({two}, o), sae::FormatError);
  CHECK_THROWS_WITH(ActivationStream<float>({two}, o),
                    two + ": no tensor named 'w' (tensors present: x, y, z)");
  const std::string npz = dataPath("npz_named.npz");  // a (3, 5), b (4,), c (2, 3, 4), d (3, 5)
  CHECK_THROWS_WITH(ActivationStream<float>({npz}, StreamOptions{}),
                    npz +
                        ": cannot choose the array to stream: 3 arrays have 2 or 3 dimensions "
                        "(a (3, 5), b (4,), c (2, 3, 4), d (3, 5)); set "
                        "StreamOptions::tensor_name");
  o.tensor_name = "q";
  CHECK_THROWS_AS(ActivationStream<float>({npz}, o), sae::FormatError);
  CHECK_THROWS_WITH(ActivationStream<float>({npz}, o),
                    npz + ": no array named 'q' (arrays present: a, b, c, d)");
  CHECK_THROWS_AS(ActivationStream<float>({dataPath("npz_compressed.npz")}, StreamOptions{}),
                  sae::FormatError);
  // Raw shards need raw_cols.
  sae::io::writeRaw(dir.file("r.bin"), labelled(0, 4, 3).cast<float>());
  CHECK_THROWS_AS(ActivationStream<float>({dir.file("r.bin")}, StreamOptions{}), sae::ConfigError);
  CHECK_THROWS_WITH(ActivationStream<float>({dir.file("r.bin")}, StreamOptions{}),
                    "StreamOptions::raw_cols must be positive to read the raw shard '" +
                        dir.file("r.bin") + "', found 0");
  // A dataset of empty shards.
  sae::io::writeNpy(dir.file("empty.npy"), RowMatrix<float>(0, 3));
  CHECK_THROWS_AS(ActivationStream<float>({dir.file("empty.npy")}, StreamOptions{}),
                  sae::ConfigError);
  CHECK_THROWS_WITH(ActivationStream<float>({dir.file("empty.npy")}, StreamOptions{}),
                    "ActivationStream: the shards hold no rows (1 shard, all empty)");
}

TEST_CASE("options are validated, naming the field", "[ActivationStream][bad]") {
  TempDir dir("stream");
  sae::io::writeNpy(dir.file("a.npy"), labelled(0, 10, 2).cast<float>());
  struct Case {
    void (*set)(StreamOptions&);
    std::string message;
  };
  const Case cases[] = {
      {[](StreamOptions& o) { o.batch_size = 0; },
       "StreamOptions::batch_size must be positive, found 0"},
      {[](StreamOptions& o) { o.shuffle_buffer_rows = 1; },
       "StreamOptions::shuffle_buffer_rows must be at least 2 (two windows of at least one row), "
       "found 1"},
      {[](StreamOptions& o) { o.holdout_fraction = 1.0; },
       "StreamOptions::holdout_fraction must be in [0, 1), found 1"},
      {[](StreamOptions& o) { o.holdout_fraction = -0.5; },
       "StreamOptions::holdout_fraction must be in [0, 1), found -0.5"},
      {[](StreamOptions& o) { o.max_norm_ratio = -2.0; },
       "StreamOptions::max_norm_ratio must be finite and non-negative (0 = off), found -2"},
      {[](StreamOptions& o) { o.max_norm_ratio = std::numeric_limits<double>::infinity(); },
       "StreamOptions::max_norm_ratio must be finite and non-negative (0 = off), found inf"},
      {[](StreamOptions& o) { o.raw_cols = -1; },
       "StreamOptions::raw_cols must be non-negative, found -1"},
      {[](StreamOptions& o) {
         o.shuffle_buffer_rows = 100;
         o.block_rows = 51;
       },
       "StreamOptions::block_rows must be in [0, shuffle_buffer_rows / 2 = 50] (0 = automatic), "
       "found 51"},
      {[](StreamOptions& o) { o.norm_sample_rows = 0; },
       "StreamOptions::norm_sample_rows must be positive, found 0"},
      {[](StreamOptions& o) { o.holdout_fraction = 0.999999; },
       "StreamOptions::holdout_fraction 0.99999899999999997 holds out all 10 rows: no training "
       "rows remain"},
  };
  for (const auto& c : cases) {
    INFO(c.message);
    StreamOptions o;
    c.set(o);
    CHECK_THROWS_AS(ActivationStream<float>({dir.path()}, o), sae::ConfigError);
    CHECK_THROWS_WITH(ActivationStream<float>({dir.path()}, o), c.message);
  }
}

TEST_CASE("a shard truncated or deleted on disk is an IoError from next()",
          "[ActivationStream][bad]") {
  TempDir dir("stream");
  const std::string path = dir.file("a.npy");
  // 16 rows x 4 float32 after a 128-byte header: 384 bytes.
  sae::io::writeNpy(path, labelled(0, 16, 4).cast<float>());
  REQUIRE(fs::file_size(path) == 384);
  for (bool prefetch : {false, true}) {
    INFO("prefetch " << prefetch);
    sae::io::writeNpy(path, labelled(0, 16, 4).cast<float>());
    StreamOptions o;
    o.batch_size = 4;
    o.shuffle_buffer_rows = 32;
    o.block_rows = 16;  // one window, one block: the whole array in one read
    o.prefetch = prefetch;
    ActivationStream<float> stream({path}, o);
    fs::resize_file(path, 200);
    RowMatrix<float> batch;
    CHECK_THROWS_AS(stream.next(batch), sae::IoError);
    CHECK_THROWS_WITH(stream.next(batch),
                      path +
                          ": file truncated on disk: reading 256 bytes at offset 128 needs 384 "
                          "bytes, the file now has 200 (it had 384 when the stream opened it)");
    CHECK(stream.position() == StreamPosition{});
  }
  // Deleted while the prefetch thread reads ahead: its error surfaces in next().
  for (int trial = 0; trial < 5; ++trial) {
    sae::io::writeNpy(path, labelled(0, 16, 4).cast<float>());
    StreamOptions o;
    o.batch_size = 3;
    o.shuffle_buffer_rows = 16;  // windows of 8 rows: 2 per epoch
    ActivationStream<float> stream({path}, o);
    RowMatrix<float> batch;
    stream.next(batch);  // window 0 read, window 1 queued
    fs::remove(path);
    bool thrown = false;
    for (int i = 0; i < 20 && !thrown; ++i) {
      try {
        stream.next(batch);
      } catch (const sae::IoError& e) {
        CHECK(std::string(e.what()) ==
              path + ": cannot open for reading: No such file or directory");
        thrown = true;
      }
    }
    CHECK(thrown);
  }
}

TEST_CASE("streams are destroyed cleanly while the prefetch thread works", "[ActivationStream]") {
  TempDir dir("stream");
  sae::io::writeNpy(dir.file("a.npy"), labelled(0, 5000, 16).cast<float>());
  for (int i = 0; i < 20; ++i) {
    StreamOptions o;
    o.batch_size = 64;
    o.shuffle_buffer_rows = 2000;
    o.block_rows = 1;  // many small reads: a slow window
    auto stream =
        std::make_unique<ActivationStream<float>>(std::vector<std::string>{dir.path()}, o);
    RowMatrix<float> batch;
    for (int k = 0; k < i % 3; ++k) stream->next(batch);
    stream.reset();  // joins the thread, which may be mid-window
  }
  SUCCEED("no hang, no crash");
}

}  // namespace sae_test_activation_stream
