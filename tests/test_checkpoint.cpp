// Checkpoint files: round trip, checksum, truncated / corrupted / foreign files are reported
// with their name and never loaded; the latest pointer; resume refuses a bad checkpoint.
#include <fstream>
#include <string>

#include <catch2/catch.hpp>

#include <support/test_support.hpp>

#include <sae/sae.hpp>
#include <sae/train/batch_source.hpp>
#include <sae/train/checkpoint.hpp>
#include <sae/train/trainer.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_checkpoint {

namespace {

using sae::Index;
using sae::test::readFile;
using sae::test::writeBytes;

std::string tempDir(const std::string& name) { return sae::test::scratchDir("ckpt", name); }

sae::ParameterSet<float> someParams() {
  sae::SaeConfig cfg;
  cfg.d_in = 6;
  cfg.d_sae = 10;
  return sae::StandardSAE<float>(cfg, 3).parameters();
}

std::string writeOne(const std::string& dir) {
  sae::train::CheckpointWriter w;
  w.addParameters("params.", someParams());
  w.addVector("extra", Eigen::VectorXd::LinSpaced(10, 0, 9));
  const std::string path = dir + "/ck.safetensors";
  w.write(path, {{"step", 7}, {"note", "hello"}});
  return path;
}

}  // namespace

TEST_CASE("A checkpoint round-trips its tensors and state", "[Checkpoint]") {
  const std::string path = writeOne(tempDir("roundtrip"));
  const sae::train::Checkpoint ck(path);
  CHECK(ck.state().at("step") == 7);
  auto p = someParams().zerosLike();
  ck.readParameters("params.", p);
  const auto want = someParams();
  CHECK(p.flat() == want.flat());
  CHECK(ck.readVector("extra", 10) == Eigen::VectorXd::LinSpaced(10, 0, 9));
  CHECK_THROWS_WITH(ck.readVector("extra", 11), Catch::Contains("expected F64 [11]"));
  CHECK_THROWS_WITH(ck.readVector("nope", 3), Catch::Contains("missing tensor 'nope'"));
}

TEST_CASE("A corrupted checkpoint is detected and named", "[Checkpoint]") {
  const std::string dir = tempDir("corrupt");
  const std::string path = writeOne(dir);
  const std::string good = readFile(path);

  SECTION("one flipped bit in the data") {
    std::string bad = good;
    bad[bad.size() - 5] ^= 0x10;
    writeBytes(path, bad);
    CHECK_THROWS_WITH(sae::train::Checkpoint(path),
                      Catch::Contains(path) && Catch::Contains("checksum mismatch"));
  }
  SECTION("truncated (half-written)") {
    writeBytes(path, good.substr(0, good.size() / 2));
    CHECK_THROWS_AS(sae::train::Checkpoint(path), sae::FormatError);
    CHECK_THROWS_WITH(sae::train::Checkpoint(path), Catch::Contains("checkpoint " + path));
  }
  SECTION("empty") {
    writeBytes(path, "");
    CHECK_THROWS_WITH(sae::train::Checkpoint(path), Catch::Contains(path));
  }
  SECTION("a safetensors file that is not a checkpoint") {
    sae::io::SafetensorsWriter w;
    w.add("x", Eigen::VectorXf::Ones(3).eval());
    w.write(path);
    CHECK_THROWS_WITH(sae::train::Checkpoint(path), Catch::Contains("no 'format' metadata"));
  }
  SECTION("missing file") {
    CHECK_THROWS_AS(sae::train::Checkpoint(dir + "/nothing.safetensors"), sae::IoError);
  }
}

TEST_CASE("The latest pointer and pruning", "[Checkpoint]") {
  const std::string dir = tempDir("latest") + "/checkpoints";
  sae::train::CheckpointDir cd(dir, 2);
  cd.prepare();
  CHECK_FALSE(cd.latest());
  sae::train::CheckpointWriter w;
  w.addVector("v", Eigen::VectorXd::Ones(2));
  for (int s : {5, 10, 15}) cd.commit(w, {{"step", s}}, s);
  CHECK(*cd.latest() == dir + "/step_000000015.safetensors");
  CHECK_FALSE(std::ifstream(dir + "/step_000000005.safetensors"));
  CHECK(std::ifstream(dir + "/step_000000010.safetensors"));
  // A temporary file left by a killed writer is removed by prepare().
  writeBytes(dir + "/step_000000020.safetensors.tmp.123.0", "partial");
  cd.prepare();
  CHECK_FALSE(std::ifstream(dir + "/step_000000020.safetensors.tmp.123.0"));
  writeBytes(dir + "/latest", "../escape\n");
  CHECK_THROWS_AS(cd.latest(), sae::FormatError);
  writeBytes(dir + "/latest", "step_000000099.safetensors\n");
  CHECK_THROWS_WITH(cd.latest(), Catch::Contains("missing"));
}

TEST_CASE("Resume refuses a corrupted or mismatched checkpoint and changes nothing",
          "[Checkpoint]") {
  using Source = sae::train::SyntheticSource<float>;
  sae::eval::SyntheticOptions o;
  o.d_in = 8;
  o.n_features = 16;
  o.expected_active = 2;
  sae::train::TrainerConfig cfg;
  cfg.architecture = "topk";
  cfg.d_sae = 16;
  cfg.k = 2;
  cfg.batch_size = 16;
  cfg.total_steps = 10;
  cfg.out_dir = tempDir("resume");
  Source src(o, 0, cfg.batch_size);
  sae::train::Trainer<float, sae::TopKArch, Source> t(cfg, src);
  t.initialize();
  t.train(4);
  const std::string path = *t.latestCheckpoint();

  Source src2(o, 0, cfg.batch_size);
  sae::train::Trainer<float, sae::TopKArch, Source> fresh(cfg, src2);
  const auto before = fresh.model().parameters().flat().eval();
  std::string bytes = readFile(path);
  bytes[bytes.size() - 1] ^= 1;
  writeBytes(path, bytes);
  CHECK_THROWS_WITH(fresh.resume(path), Catch::Contains("checksum mismatch"));
  CHECK(fresh.step() == 0);
  CHECK(fresh.model().parameters().flat() == before);

  // Another architecture's checkpoint.
  bytes[bytes.size() - 1] ^= 1;
  writeBytes(path, bytes);
  auto gcfg = cfg;
  gcfg.architecture = "gated";
  Source src3(o, 0, cfg.batch_size);
  sae::train::Trainer<float, sae::GatedArch, Source> gated(gcfg, src3);
  CHECK_THROWS_WITH(gated.resume(path), Catch::Contains("architecture is topk, expected gated"));
}

}  // namespace sae_test_checkpoint
