// The `sae` program, driven as a user would: end-to-end training on synthetic superposition data
// and reload, SIGKILL at a random step then --resume (byte-identical result), SIGTERM, a
// corrupted checkpoint, encode / eval / info, and the bad-input paths of every subcommand.
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>
#include <chrono>
#include <csignal>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <support/cli_runner.hpp>
#include <support/test_support.hpp>

#include <sae/io/codes_file.hpp>
#include <sae/io/npy.hpp>
#include <sae/io/saelens.hpp>
#include <sae/sae.hpp>
#include <sae/train/batch_source.hpp>
#include <sae/train/checkpoint.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_cli {

namespace {

using sae::Index;
using sae::test::readFile;

std::string tempDir(const std::string& name) { return sae::test::scratchDir("cli", name); }

bool exists(const std::string& path) { return bool(std::ifstream(path)); }

using sae::test::checkCliFails;
using sae::test::CliResult;
using sae::test::runCli;
using sae::test::spawnCli;
using sae::test::waitCli;

// Small synthetic problem shared by the tests (kept small for the sanitizer builds).
const std::vector<std::string> kSmall = {"--arch",
                                         "topk",
                                         "--k",
                                         "4",
                                         "--d-sae",
                                         "128",
                                         "--batch",
                                         "256",
                                         "--lr",
                                         "0.003",
                                         "--seed",
                                         "3",
                                         "--synthetic-d-in",
                                         "32",
                                         "--synthetic-features",
                                         "64",
                                         "--synthetic-active",
                                         "3",
                                         "--threads",
                                         "1",
                                         "--quiet"};

std::vector<std::string> cat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

TEST_CASE("sae train on synthetic data recovers the features; the saved SAE reloads", "[cli]") {
  const std::string dir = tempDir("e2e");
  const CliResult r = runCli(cat({"train", "--out", dir + "/run", "--steps", "500", "--lr-decay",
                                  "100", "--dead-window", "50"},
                                 kSmall));
  INFO(r.err);
  REQUIRE(r.status == 0);
  for (const char* f : {"cfg.json", "sae_weights.safetensors", "sparsity.safetensors",
                        "metrics.jsonl", "train_config.json", "checkpoints/latest"})
    CHECK(exists(dir + "/run/" + f));

  // Reload with the SAELens reader; score against the generator's true directions.
  const auto loaded = sae::io::loadSaeLens<float>(dir + "/run");
  const auto& model = std::get<sae::TopKSAE<float>>(loaded.model);
  sae::eval::SyntheticOptions o;
  o.d_in = 32;
  o.n_features = 64;
  o.expected_active = 3;
  sae::train::SyntheticSource<float> data(o, 3, 2048);
  const double mmcs =
      sae::eval::meanMaxCosineSimilarity(data.directions(), model.parameters().rowMajor("W_dec"));
  INFO("MMCS " << mmcs);
  CHECK(mmcs >= 0.9);
  const auto x = data.holdout(2048);
  sae::eval::ReconstructionMetrics m;
  m.add<float>(x, model.forward(x));
  INFO("explained variance " << m.explainedVariance());
  CHECK(m.explainedVariance() > 0.8);

  // The metrics file has one JSON object per line with the documented keys.
  std::ifstream in(dir + "/run/metrics.jsonl");
  std::string line;
  int lines = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    CHECK(j.contains("step"));
    if (!j.value("eval", false)) {
      for (const char* key : {"mse", "l0", "explained_variance", "dead_fraction", "lr",
                              "coefficients", "tokens_per_second"})
        CHECK(j.contains(key));
    }
    ++lines;
  }
  CHECK(lines >= 5);

  // encode / eval / info on the trained SAE and an .npy file of activations.
  sae::io::writeNpy(dir + "/acts.npy", x.topRows(300));
  const CliResult enc = runCli({"encode", "--sae", dir + "/run", "--data", dir + "/acts.npy",
                                "--out", dir + "/codes.safetensors", "--batch", "128"});
  INFO(enc.err);
  REQUIRE(enc.status == 0);
  const sae::io::SafetensorsFile codes(dir + "/codes.safetensors");
  CHECK(codes.info("indices").shape == std::vector<Index>{300, 4});
  CHECK(codes.info("indices").dtype == "I32");
  CHECK(codes.info("values").shape == std::vector<Index>{300, 4});
  const sae::RowMatrix<float> vals = codes.read<float>("values");
  const auto want = model.encode(x.topRows(300));
  CHECK(vals == want.values);

  const CliResult dense = runCli({"encode", "--sae", dir + "/run", "--data", dir + "/acts.npy",
                                  "--out", dir + "/codes.npy", "--dense"});
  REQUIRE(dense.status == 0);
  const auto dmat = sae::io::readNpy<float>(dir + "/codes.npy");
  CHECK(dmat == want.toDense());
  // The sparse file reads back through the library's codes-file reader.
  const sae::io::CodesFile codes_file(dir + "/codes.safetensors");
  CHECK(codes_file.k() == 4);
  CHECK(codes_file.architecture() == "topk");
  CHECK(codes_file.toDense() == want.toDense());

  const CliResult ev = runCli({"eval", "--sae", dir + "/run", "--data", dir + "/acts.npy"});
  INFO(ev.err);
  REQUIRE(ev.status == 0);
  const auto j = nlohmann::json::parse(ev.out);
  CHECK(j.at("rows") == 300);
  CHECK(j.at("l0").get<double>() == Approx(want.l0()));
  CHECK(j.at("explained_variance").get<double>() > 0.7);
  CHECK(j.contains("density_histogram"));
  CHECK(j.contains("dead_fraction"));

  const CliResult info = runCli({"info", dir + "/run"});
  REQUIRE(info.status == 0);
  CHECK(info.out.find("\"W_enc\"") != std::string::npos);
  CHECK(info.out.find("\"topk\"") != std::string::npos);
  const CliResult info_npy = runCli({"info", dir + "/acts.npy"});
  REQUIRE(info_npy.status == 0);
  CHECK(nlohmann::json::parse(info_npy.out).at("shape") == nlohmann::json({300, 32}));
  const CliResult info_st = runCli({"info", dir + "/codes.safetensors"});
  REQUIRE(info_st.status == 0);
  CHECK(info_st.out.find("\"indices\"") != std::string::npos);

  // Training on the user's own .npy file.
  sae::io::writeNpy(dir + "/train.npy", data.holdout(3000));
  const CliResult rf = runCli({"train", "--data", dir + "/train.npy", "--arch", "standard",
                               "--expansion", "2", "--batch", "128", "--steps", "30", "--holdout",
                               "0.1", "--out", dir + "/run_npy", "--quiet", "--threads", "2"});
  INFO(rf.err);
  CHECK(rf.status == 0);
  CHECK(exists(dir + "/run_npy/sae_weights.safetensors"));
  const auto cfg_npy = sae::io::readSaeLensConfig(dir + "/run_npy");
  CHECK(cfg_npy.sae_cfg.d_sae == 64);
}

TEST_CASE("sae train --arch jumprelu: its flags reach the run; the SAE folder holds the threshold",
          "[cli]") {
  const std::string dir = tempDir("jumprelu");
  const std::vector<std::string> args = {"train",
                                         "--out",
                                         dir + "/run",
                                         "--arch",
                                         "jumprelu",
                                         "--d-sae",
                                         "128",
                                         "--batch",
                                         "256",
                                         "--lr",
                                         "0.003",
                                         "--seed",
                                         "3",
                                         "--synthetic-d-in",
                                         "32",
                                         "--synthetic-features",
                                         "64",
                                         "--synthetic-active",
                                         "3",
                                         "--threads",
                                         "1",
                                         "--quiet",
                                         "--steps",
                                         "300",
                                         "--lr-decay",
                                         "60",
                                         "--l1-warmup",
                                         "30",
                                         "--dead-window",
                                         "50",
                                         "--l0-coefficient",
                                         "0.1",
                                         "--jumprelu-mode",
                                         "tanh",
                                         "--jumprelu-bandwidth",
                                         "0.06",
                                         "--jumprelu-tanh-scale",
                                         "5",
                                         "--jumprelu-init-threshold",
                                         "0.02",
                                         "--pre-act-loss-coefficient",
                                         "0.001"};
  const CliResult r = runCli(args);
  INFO(r.err);
  REQUIRE(r.status == 0);
  const auto tc = nlohmann::json::parse(readFile(dir + "/run/train_config.json"));
  CHECK(tc.at("architecture") == "jumprelu");
  CHECK(tc.at("l0_coefficient") == 0.1);
  CHECK(tc.at("jumprelu_sparsity_loss_mode") == "tanh");
  CHECK(tc.at("jumprelu_bandwidth") == 0.06);
  CHECK(tc.at("jumprelu_tanh_scale") == 5.0);
  CHECK(tc.at("jumprelu_init_threshold") == 0.02);
  CHECK(tc.at("pre_act_loss_coefficient") == 0.001);
  CHECK(tc.at("l1_warmup_steps") == 30);

  // cfg.json names the architecture; the weights are SAELens's jumprelu tensors.
  const auto cfg = nlohmann::json::parse(readFile(dir + "/run/cfg.json"));
  CHECK(cfg.at("architecture") == "jumprelu");
  CHECK(cfg.at("d_sae") == 128);
  const sae::io::SafetensorsFile w(dir + "/run/sae_weights.safetensors");
  CHECK(w.names() == std::vector<std::string>{"W_dec", "W_enc", "b_dec", "b_enc", "threshold"});
  CHECK(w.info("threshold").shape == std::vector<Index>{128});

  // The saved SAE reconstructs held-out data sparsely.
  sae::SaeConfig c;
  c.d_in = 32;
  c.d_sae = 128;
  sae::JumpReLUSAE<float> model(c);
  for (const auto& e : model.parameters().entries())
    model.parameters().assignRowMajor(e.name, w.read<float>(e.name));
  CHECK(model.parameters().flat("threshold").maxCoeff() > 0.1f);
  sae::eval::SyntheticOptions o;
  o.d_in = 32;
  o.n_features = 64;
  o.expected_active = 3;
  sae::train::SyntheticSource<float> data(o, 3, 2048);
  const auto x = data.holdout(2048);
  sae::eval::ReconstructionMetrics m;
  const auto codes = model.encode(x);
  m.add<float>(x, model.decode(codes));
  INFO("explained variance " << m.explainedVariance() << ", L0 " << codes.l0());
  CHECK(m.explainedVariance() > 0.7);
  CHECK(codes.l0() < 12);
  CHECK(codes.l0() > 1);
  const auto summary = nlohmann::json::parse(r.out.substr(0, r.out.find('\n')));
  CHECK(summary.at("l0").get<double>() < 12);

  // Each logged line has the JumpReLU terms and the warmed-up coefficient.
  std::ifstream in(dir + "/run/metrics.jsonl");
  std::string line;
  int logged = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (!j.contains("losses")) continue;
    ++logged;
    CHECK(j.at("losses").contains("l0_loss"));
    CHECK(j.at("losses").contains("pre_act_loss"));
    CHECK(j.at("coefficients").at("l0_coefficient").get<double>() <= 0.1);
  }
  CHECK(logged == 3);

  checkCliFails({"train", "--out", dir + "/run", "--resume", "--l0-coefficient", "2"},
                "--l0-coefficient cannot be changed when resuming");
  checkCliFails({"train", "--out", dir + "/r2", "--arch", "jumprelu", "--jumprelu-mode", "l1"},
                "--jumprelu-mode");
  checkCliFails({"train", "--out", dir + "/r2", "--arch", "jumprelu", "--jumprelu-bandwidth", "0"},
                "--jumprelu-bandwidth");
  checkCliFails(
      {"train", "--out", dir + "/r2", "--arch", "jumprelu", "--pre-act-loss-coefficient", "-1"},
      "--pre-act-loss-coefficient");
}

namespace {

// Arguments of the interrupted runs, and an uninterrupted reference run (trained once).
// Checkpoints are fsync'ed, so they are kept few.
const std::vector<std::string> kResumeArgs =
    cat({"--steps", "1000", "--checkpoint-every", "50"}, kSmall);

const std::string& referenceRun() {
  static const std::string dir = [] {
    const std::string d = tempDir("reference") + "/full";
    const CliResult full = runCli(cat({"train", "--out", d}, kResumeArgs));
    INFO(full.err);
    REQUIRE(full.status == 0);
    return d;
  }();
  return dir;
}

// Starts a run, waits for its first checkpoint plus `delay_ms`, sends `sig`; returns the status.
int interruptRun(const std::string& out, int sig, int delay_ms) {
  const pid_t pid =
      spawnCli(cat({"train", "--out", out}, kResumeArgs), out + ".stdout", out + ".stderr");
  const auto t0 = std::chrono::steady_clock::now();
  while (!exists(out + "/checkpoints/latest") &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(300))
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
  ::kill(pid, sig);
  return waitCli(pid);
}

}  // namespace

TEST_CASE("SIGKILL at a random step, then --resume: byte-identical final SAE", "[cli]") {
  const std::string full = referenceRun();
  std::string out;
  std::mt19937 gen(std::random_device{}());
  int st = 0, delay_ms = 0;
  // Kill at a random moment after the first checkpoint; retry sooner if the run finished first.
  for (int attempt = 0, max_delay = 300; attempt < 4; ++attempt, max_delay /= 4) {
    out = tempDir("kill" + std::to_string(attempt)) + "/run";
    delay_ms = std::uniform_int_distribution<int>(0, max_delay)(gen);
    st = interruptRun(out, SIGKILL, delay_ms);
    if (st == 1000 + SIGKILL) break;
  }
  INFO("killed " << delay_ms << " ms after the first checkpoint, status " << st);
  CHECK(st == 1000 + SIGKILL);
  if (st == 1000 + SIGKILL) CHECK_FALSE(exists(out + "/sae_weights.safetensors"));
  const sae::train::Checkpoint ck(*sae::train::CheckpointDir(out + "/checkpoints").latest());
  const auto killed_at = ck.state().at("step").get<std::int64_t>();
  INFO("resuming from step " << killed_at);
  const CliResult resumed = runCli({"train", "--out", out, "--resume", "--quiet"});
  INFO(resumed.err);
  REQUIRE(resumed.status == 0);
  CHECK(readFile(out + "/sae_weights.safetensors") == readFile(full + "/sae_weights.safetensors"));
  CHECK(readFile(out + "/sparsity.safetensors") == readFile(full + "/sparsity.safetensors"));
  CHECK(readFile(out + "/cfg.json") == readFile(full + "/cfg.json"));
}

TEST_CASE("SIGTERM writes a checkpoint and exits 143; the resumed run matches", "[cli]") {
  const std::string full = referenceRun();
  const std::string out = tempDir("term") + "/run";
  const int st = interruptRun(out, SIGTERM, 50);
  const std::string err = readFile(out + ".stderr");
  INFO(err);
  if (st == 143) {
    CHECK(err.find("stopped by SIGTERM") != std::string::npos);
    CHECK(err.find("--resume") != std::string::npos);
  } else {
    CHECK(st == 0);  // finished before the signal arrived
  }
  const CliResult r = runCli({"train", "--out", out, "--resume", "--quiet"});
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK(readFile(out + "/sae_weights.safetensors") == readFile(full + "/sae_weights.safetensors"));
}

TEST_CASE("--resume accepts the run's original command line unchanged", "[cli]") {
  const std::string full = referenceRun();
  const std::string out = tempDir("same_flags") + "/run";
  const int st = interruptRun(out, SIGTERM, 50);
  CHECK((st == 143 || st == 0));
  // Every flag of the first command repeated, plus --resume.
  const CliResult r = runCli(cat({"train", "--out", out, "--resume"}, kResumeArgs));
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK(readFile(out + "/sae_weights.safetensors") == readFile(full + "/sae_weights.safetensors"));
  CHECK(readFile(out + "/cfg.json") == readFile(full + "/cfg.json"));
}

TEST_CASE("--resume refuses a changed value, naming the flag and both values", "[cli]") {
  const std::string out = tempDir("changed") + "/run";
  const CliResult r = runCli(cat({"train", "--out", out, "--steps", "60"}, kSmall));
  INFO(r.err);
  REQUIRE(r.status == 0);
  const std::vector<std::string> resume = {"train", "--out", out, "--resume", "--quiet"};
  checkCliFails(cat(resume, {"--k", "8"}),
                "--k cannot be changed when resuming (the run has k = 4, the command line "
                "gives 8)");
  checkCliFails(cat(resume, {"--seed", "4", "--k", "4"}),
                "--seed cannot be changed when resuming (the run has seed = 3, the command "
                "line gives 4)");
  checkCliFails(cat(resume, {"--arch", "gated"}),
                "--arch cannot be changed when resuming (the run has architecture = \"topk\", "
                "the command line gives \"gated\")");
  checkCliFails(cat(resume, {"--steps", "50"}),
                "--steps cannot be lowered when resuming (the run has total_steps = 60, the "
                "command line gives 50)");
  checkCliFails(cat(resume, {"--synthetic-d-in", "16"}),
                "--synthetic-d-in cannot be changed when resuming");
  checkCliFails(cat(resume, {"--data", out + "/cfg.json"}),
                "--data cannot be changed when resuming");
  // The finished run is left as it was.
  const auto summary = nlohmann::json::parse(r.out.substr(0, r.out.find('\n')));
  CHECK(summary.at("steps") == 60);
}

TEST_CASE("--resume with a larger --steps or --tokens extends a finished run", "[cli]") {
  const std::string dir = tempDir("extend");
  const CliResult first = runCli(cat({"train", "--out", dir + "/run", "--steps", "100"}, kSmall));
  INFO(first.err);
  REQUIRE(first.status == 0);
  const CliResult extended =
      runCli(cat({"train", "--out", dir + "/run", "--resume", "--steps", "160"}, kSmall));
  INFO(extended.err);
  REQUIRE(extended.status == 0);
  const auto summary = nlohmann::json::parse(extended.out.substr(0, extended.out.find('\n')));
  CHECK(summary.at("steps") == 160);
  // The metrics go on to the new end: the last logged step is 160.
  std::ifstream in(dir + "/run/metrics.jsonl");
  std::int64_t last = 0;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("step")) last = std::max(last, j.at("step").get<std::int64_t>());
  }
  CHECK(last == 160);
  const sae::train::Checkpoint ck(*sae::train::CheckpointDir(dir + "/run/checkpoints").latest());
  CHECK(ck.state().at("step") == 160);
  CHECK(ck.state().at("config").at("total_steps") == 160);
  // train_config.json describes the resumed run.
  CHECK(nlohmann::json::parse(readFile(dir + "/run/train_config.json")).at("total_steps") == 160);

  // --tokens: 256 tokens per step, 51200 tokens = 200 steps.
  const CliResult by_tokens =
      runCli(cat({"train", "--out", dir + "/run", "--resume", "--tokens", "51200"}, kSmall));
  INFO(by_tokens.err);
  REQUIRE(by_tokens.status == 0);
  CHECK(nlohmann::json::parse(by_tokens.out.substr(0, by_tokens.out.find('\n'))).at("steps") ==
        200);
  const auto loaded = sae::io::loadSaeLens<float>(dir + "/run");
  CHECK(loaded.config.sae_cfg.d_sae == 128);
}

TEST_CASE("A corrupted checkpoint is reported and not loaded", "[cli]") {
  const std::string out = tempDir("corrupt") + "/run";
  REQUIRE(interruptRun(out, SIGKILL, 0) != 0);
  const auto latest = sae::train::CheckpointDir(out + "/checkpoints").latest();
  REQUIRE(latest);
  std::string bytes = readFile(*latest);
  bytes[bytes.size() / 2] ^= 0x40;
  std::ofstream(*latest, std::ios::binary | std::ios::trunc) << bytes;
  checkCliFails({"train", "--out", out, "--resume"}, "checksum mismatch");
  checkCliFails({"train", "--out", out, "--resume"}, *latest);
  // Half-written: truncated to half its size.
  std::ofstream(*latest, std::ios::binary | std::ios::trunc) << bytes.substr(0, bytes.size() / 2);
  checkCliFails({"train", "--out", out, "--resume"}, "corrupt or incomplete");
  CHECK_FALSE(exists(out + "/sae_weights.safetensors"));
}

TEST_CASE("Every subcommand has --help", "[cli]") {
  for (const char* sub : {"train", "encode", "eval", "info"}) {
    const CliResult r = runCli({sub, "--help"});
    INFO(sub);
    CHECK(r.status == 0);
    CHECK(r.out.find("--") != std::string::npos);
  }
  CHECK(runCli({"--help"}).status == 0);
}

TEST_CASE("Bad inputs give one line on stderr and a non-zero status", "[cli]") {
  const std::string dir = tempDir("bad");
  // A small SAE and data files for the checks.
  sae::SaeConfig c;
  c.d_in = 8;
  c.d_sae = 16;
  c.k = 2;
  sae::io::saveSaeLens(sae::TopKSAE<float>(c, 0), dir + "/sae");
  sae::io::writeNpy(dir + "/d8.npy", sae::RowMatrix<float>::Random(10, 8).eval());
  sae::io::writeNpy(dir + "/d5.npy", sae::RowMatrix<float>::Random(10, 5).eval());
  std::ofstream(dir + "/garbage.npy") << "not a numpy file at all";
  std::ofstream(dir + "/garbage.safetensors") << "xx";

  checkCliFails({}, "");
  checkCliFails({"frobnicate"}, "sae");
  checkCliFails({"train"}, "--out");
  checkCliFails({"train", "--out", dir + "/r", "--arch", "relu"}, "--arch");
  checkCliFails({"train", "--out", dir + "/r", "--steps", "-5"}, "--steps");
  checkCliFails({"train", "--out", dir + "/r", "--bogus"}, "bogus");
  checkCliFails({"train", "--out", dir + "/r", "--data", dir + "/missing.npy"}, "missing.npy");
  checkCliFails({"train", "--out", dir + "/r", "--data", dir + "/garbage.npy", "--quiet"},
                "garbage.npy");
  checkCliFails({"train", "--out", dir + "/r", "--data", dir + "/d8.npy", "--data", dir + "/d5.npy",
                 "--quiet"},
                "d_in 5");
  checkCliFails({"train", "--out", dir + "/r", "--arch", "topk", "--k", "100", "--d-sae", "50",
                 "--steps", "1", "--quiet"},
                "k must be <= d_sae");
  checkCliFails({"train", "--out", dir + "/nothing", "--resume"}, "no checkpoint");
  checkCliFails({"train", "--out", dir + "/r", "--d-sae", "8", "--expansion", "2"}, "excludes");
  std::ofstream(dir + "/bad.json") << "{\"lr\": \"fast\"}";
  checkCliFails({"train", "--out", dir + "/r", "--config", dir + "/bad.json"}, "'lr'");

  checkCliFails(
      {"encode", "--sae", dir + "/sae", "--data", dir + "/d5.npy", "--out", dir + "/c.safetensors"},
      "expects d_in = 8");
  checkCliFails({"encode", "--sae", dir + "/nosae", "--data", dir + "/d8.npy", "--out",
                 dir + "/c.safetensors"},
                "not a directory");
  checkCliFails(
      {"encode", "--sae", dir + "/sae", "--data", dir + "/d8.npy", "--out", dir + "/c.bin"},
      ".safetensors");
  checkCliFails({"encode", "--sae", dir + "/sae", "--data", dir + "/d8.npy", "--out",
                 dir + "/nodir/c.safetensors"},
                "nodir");
  checkCliFails({"encode", "--sae", dir + "/sae", "--out", dir + "/c.safetensors"}, "--data");
  checkCliFails({"eval", "--sae", dir + "/sae", "--data", dir + "/d5.npy"}, "expects d_in = 8");
  checkCliFails({"eval", "--sae", dir + "/sae", "--data", dir + "/garbage.npy"}, "garbage.npy");
  checkCliFails({"eval", "--sae", dir, "--data", dir + "/d8.npy"}, "cfg.json");
  checkCliFails({"info", dir + "/missing.npy"}, "missing.npy");
  checkCliFails({"info", dir + "/garbage.npy"}, "garbage.npy");
  checkCliFails({"info", dir + "/garbage.safetensors"}, "garbage.safetensors");
  checkCliFails({"info", dir + "/bad.json"}, "unsupported file type");
  checkCliFails({"info", dir}, "cfg.json");
  checkCliFails({"info"}, "path");
}

namespace {

// An integer .npy file written byte by byte: numpy's preamble, then little-endian elements of
// `bytes` bytes each.
void writeIntNpy(const std::string& path, const std::string& descr, const std::vector<Index>& shape,
                 const std::vector<std::int64_t>& values, int bytes) {
  std::string data = sae::io::detail::npyPreamble(descr, shape);
  for (const std::int64_t v : values)
    for (int i = 0; i < bytes; ++i)
      data += static_cast<char>((static_cast<std::uint64_t>(v) >> (8 * i)) & 0xff);
  sae::test::writeBytes(path, data);
}

// A 3-D float32 .npy [a, b, c] (the CLI flattens it to a * b rows of c).
void writeNpy3(const std::string& path, const sae::RowMatrix<float>& rows, Index a, Index b) {
  const std::string pre = sae::io::detail::npyPreamble("<f4", {a, b, rows.cols()});
  sae::io::AtomicFileWriter w(path);
  w.write(pre.data(), pre.size());
  w.writeElements(rows.data(), rows.size(), sae::io::DType::F32);
  w.commit();
}

std::int64_t tokenOf(Index row) { return (row * 7919) % 50000 + 3; }

}  // namespace

TEST_CASE("sae eval --features: statistics match a brute-force count over the encoded rows",
          "[cli][features]") {
  const std::string dir = tempDir("features");
  sae::SaeConfig c;
  c.d_in = 8;
  c.d_sae = 24;
  c.k = 3;
  sae::io::saveSaeLens(sae::TopKSAE<float>(c, 5), dir + "/topk");
  sae::io::saveSaeLens(sae::StandardSAE<float>(c, 5), dir + "/standard");
  // 77 rows: a [4, 10, 8] file then a [37, 8] file; token ids [4, 10] int32 then [37] uint16.
  std::mt19937 gen(11);
  std::normal_distribution<float> normal;
  sae::RowMatrix<float> x(77, 8);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = normal(gen);
  writeNpy3(dir + "/a.npy", x.topRows(40), 4, 10);
  sae::io::writeNpy(dir + "/b.npy", x.bottomRows(37));
  std::vector<std::int64_t> ids_a, ids_b;
  for (Index r = 0; r < 77; ++r) (r < 40 ? ids_a : ids_b).push_back(tokenOf(r));
  writeIntNpy(dir + "/ids_a.npy", "<i4", {4, 10}, ids_a, 4);
  writeIntNpy(dir + "/ids_b.npy", "<u2", {37}, ids_b, 2);
  const std::vector<std::string> data = {"--data",       dir + "/a.npy", "--data",
                                         dir + "/b.npy", "--batch",      "16"};
  const std::vector<std::string> token_ids = {"--token-ids", dir + "/ids_a.npy", "--token-ids",
                                              dir + "/ids_b.npy"};

  for (const char* arch : {"topk", "standard"}) {
    INFO(arch);
    const std::string sae_dir = dir + "/" + arch;
    const std::string out = dir + "/" + arch + "_features.json";
    const CliResult r = runCli(
        cat(cat({"eval", "--sae", sae_dir, "--features", out, "--top-n", "4"}, data), token_ids));
    INFO(r.err);
    REQUIRE(r.status == 0);
    // The metrics on stdout are those of a plain eval.
    const CliResult plain = runCli(cat({"eval", "--sae", sae_dir}, data));
    REQUIRE(plain.status == 0);
    CHECK(r.out == plain.out);

    // Encode with the library, in the CLI's batches of 16 rows, into one dense matrix.
    const auto loaded = sae::io::loadSaeLens<float>(sae_dir);
    sae::RowMatrix<float> dense(77, 24);
    for (Index b = 0; b < 77; b += 16) {
      const Index n = std::min<Index>(16, 77 - b);
      std::visit(
          [&](const auto& model) {
            const sae::RowMatrix<float> xb = x.middleRows(b, n);
            dense.middleRows(b, n) = model.encode(xb).toDense();
          },
          loaded.model);
    }

    const auto j = nlohmann::json::parse(readFile(out));
    const auto& summary = j.at("summary");
    CHECK(summary.at("tokens") == 77);
    CHECK(summary.at("d_sae") == 24);
    CHECK(summary.at("top_n") == 4);
    CHECK(summary.at("token_ids") == true);
    CHECK(summary.at("sae") == sae_dir);
    const auto& features = j.at("features");
    REQUIRE(features.size() == 24);
    std::int64_t dead = 0, fired = 0;
    for (Index f = 0; f < 24; ++f) {
      INFO("feature " << f);
      // Brute force: every firing row, sorted by value (descending), then row.
      std::vector<std::pair<double, Index>> firing;
      double sum = 0;
      for (Index row = 0; row < 77; ++row)
        if (dense(row, f) != 0.0f) {
          firing.emplace_back(dense(row, f), row);
          sum += dense(row, f);
        }
      std::sort(firing.begin(), firing.end(), [](const auto& p, const auto& q) {
        return p.first != q.first ? p.first > q.first : p.second < q.second;
      });
      const auto& fj = features[std::size_t(f)];
      CHECK(fj.at("feature") == f);
      const auto count = std::int64_t(firing.size());
      CHECK(fj.at("firing_count") == count);
      CHECK(fj.at("frequency").get<double>() == Approx(double(count) / 77.0));
      CHECK(fj.at("mean_activation").get<double>() == Approx(sum / 77.0));
      dead += count == 0;
      fired += count;
      if (count == 0) {
        CHECK(fj.at("max_activation").is_null());
        CHECK(fj.at("top_rows").empty());
        continue;
      }
      CHECK(fj.at("max_activation").get<double>() == firing.front().first);
      CHECK(fj.at("mean_firing_activation").get<double>() == Approx(sum / double(count)));
      std::vector<Index> rows;
      std::vector<double> values;
      std::vector<std::int64_t> tokens;
      for (std::size_t i = 0; i < std::min<std::size_t>(4, firing.size()); ++i) {
        values.push_back(firing[i].first);
        rows.push_back(firing[i].second);
        tokens.push_back(tokenOf(firing[i].second));
      }
      CHECK(fj.at("top_rows").get<std::vector<Index>>() == rows);
      CHECK(fj.at("top_values").get<std::vector<double>>() == values);
      CHECK(fj.at("top_token_ids").get<std::vector<std::int64_t>>() == tokens);
    }
    CHECK(summary.at("dead") == dead);
    CHECK(summary.at("mean_l0").get<double>() == Approx(double(fired) / 77.0));
    CHECK(fired > 0);
  }

  // Without token ids, and on the first 50 rows (the 77 ids still line up with them).
  const std::string out50 = dir + "/first50.json";
  const CliResult r50 = runCli(
      cat(cat({"eval", "--sae", dir + "/topk", "--features", out50, "--max-rows", "50"}, data),
          token_ids));
  INFO(r50.err);
  REQUIRE(r50.status == 0);
  const auto j50 = nlohmann::json::parse(readFile(out50));
  CHECK(j50.at("summary").at("tokens") == 50);
  for (const auto& fj : j50.at("features")) {
    const auto rows = fj.at("top_rows").get<std::vector<Index>>();
    const auto tokens = fj.at("top_token_ids").get<std::vector<std::int64_t>>();
    REQUIRE(rows.size() == tokens.size());
    for (std::size_t i = 0; i < rows.size(); ++i) {
      CHECK(rows[i] < 50);
      CHECK(tokens[i] == tokenOf(rows[i]));
    }
  }
  const std::string plain_out = dir + "/no_ids.json";
  REQUIRE(runCli(cat({"eval", "--sae", dir + "/topk", "--features", plain_out}, data)).status == 0);
  const auto jp = nlohmann::json::parse(readFile(plain_out));
  CHECK(jp.at("summary").at("token_ids") == false);
  CHECK(jp.at("summary").at("top_n") == 20);
  CHECK_FALSE(jp.at("features")[0].contains("top_token_ids"));

  // Bad inputs: one line on stderr naming the problem; no output file left behind.
  writeIntNpy(dir + "/ids_short.npy", "<i8", {36}, std::vector<std::int64_t>(36, 1), 8);
  const std::string bad_out = dir + "/bad.json";
  auto features = [&](std::vector<std::string> extra) {
    return cat(cat({"eval", "--sae", dir + "/topk", "--features", bad_out}, data), extra);
  };
  checkCliFails(
      features({"--token-ids", dir + "/ids_a.npy", "--token-ids", dir + "/ids_short.npy"}),
      dir + "/ids_a.npy, " + dir +
          "/ids_short.npy: 76 token ids, but the activation "
          "files have 77 rows");
  checkCliFails(features({"--token-ids", dir + "/ids_a.npy", "--max-rows", "60"}),
                "40 token ids, but the activation files have 77 rows (60 evaluated)");
  checkCliFails(features({"--token-ids", dir + "/b.npy"}),
                dir + "/b.npy: invalid npy header at byte 20: unsupported dtype '<f4' for integer");
  checkCliFails(features({"--token-ids", dir + "/missing.npy"}), "missing.npy");
  checkCliFails(features({"--top-n", "-1"}), "--top-n");
  CHECK_FALSE(exists(bad_out));
  checkCliFails(cat({"eval", "--sae", dir + "/topk", "--top-n", "3"}, data), "--features");
  checkCliFails(cat({"eval", "--sae", dir + "/topk", "--features", dir + "/nodir/f.json"}, data),
                dir + "/nodir/f.json");
}

TEST_CASE("sae train --arch matryoshka_batchtopk: its flags reach the run; saved as jumprelu",
          "[cli]") {
  const std::string dir = tempDir("matryoshka");
  std::vector<std::string> args = {"train",
                                   "--out",
                                   dir + "/run",
                                   "--arch",
                                   "matryoshka_batchtopk",
                                   "--d-sae",
                                   "64",
                                   "--k",
                                   "3",
                                   "--matryoshka-widths",
                                   "8,24,64",
                                   "--topk-threshold-lr",
                                   "0.05",
                                   "--batch",
                                   "128",
                                   "--steps",
                                   "40",
                                   "--lr",
                                   "0.003",
                                   "--synthetic-d-in",
                                   "16",
                                   "--synthetic-features",
                                   "32",
                                   "--log-every",
                                   "40",
                                   "--threads",
                                   "1",
                                   "--quiet"};
  const CliResult r = runCli(args);
  INFO(r.err);
  REQUIRE(r.status == 0);
  const auto tc = nlohmann::json::parse(readFile(dir + "/run/train_config.json"));
  CHECK(tc.at("architecture") == "matryoshka_batchtopk");
  CHECK(tc.at("k") == 3);
  CHECK(tc.at("matryoshka_widths") == nlohmann::json::array({8, 24, 64}));
  CHECK(tc.at("topk_threshold_lr") == 0.05);
  const auto cfg = nlohmann::json::parse(readFile(dir + "/run/cfg.json"));
  CHECK(cfg.at("architecture") == "jumprelu");
  CHECK(cfg.at("metadata").at("training_architecture") == "matryoshka_batchtopk");
  // The saved threshold is the run's last EMA value, the same for every latent.
  std::ifstream in(dir + "/run/metrics.jsonl");
  nlohmann::json last;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("losses")) last = j;
  }
  REQUIRE(last.contains("topk_threshold"));
  CHECK(last.at("losses").contains("inner_mse_loss_8"));
  CHECK(last.at("losses").contains("inner_mse_loss_24"));
  CHECK(last.at("l0").get<double>() == Approx(3.0));
  const sae::io::SafetensorsFile w(dir + "/run/sae_weights.safetensors");
  CHECK(w.names() == std::vector<std::string>{"W_dec", "W_enc", "b_dec", "b_enc", "threshold"});
  const auto threshold = w.read<float>("threshold");
  CHECK(threshold.size() == 64);
  CHECK(threshold.minCoeff() > 0.0f);
  CHECK(threshold.cwiseEqual(float(last.at("topk_threshold").get<double>())).all());

  // Widths that do not end at d_sae are refused with SAELens's rule in the message.
  args[2] = dir + "/bad";
  args[10] = "8,24";
  const CliResult bad = runCli(args);
  CHECK(bad.status == 1);
  CHECK(bad.err.find("the last of matryoshka_widths must equal d_sae = 64, found 24") !=
        std::string::npos);
}

}  // namespace sae_test_cli
