// `mpirun -np 2 sae train`, as a user runs it: the README's command on synthetic data against
// one process, a run on files killed by SIGKILL of one rank (the others end within seconds, the
// run resumes from its last checkpoint under 2 ranks and ends bitwise as an uninterrupted one),
// and the refusals. The launcher's path comes from CMake (SAE_MPIRUN_PATH).
#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include <sae/io/npy.hpp>

#include <support/cli_runner.hpp>
#include <support/test_support.hpp>

namespace sae_test_cli_mpi {

namespace {

using sae::test::CliResult;
using sae::test::readFile;

std::vector<std::string> mpirun(const std::vector<std::string>& args) {
  std::vector<std::string> full = {"-np", "2", "--oversubscribe", sae::test::cliPath(), "train"};
  full.insert(full.end(), args.begin(), args.end());
  return full;
}

CliResult runMpi(const std::vector<std::string>& args) {
  static int n = 0;
  const std::string base = sae::test::scratchDir("cli_mpi", "io" + std::to_string(n++), false);
  CliResult r;
  r.status = sae::test::waitCli(
      sae::test::spawnProgram(SAE_MPIRUN_PATH, mpirun(args), base + ".out", base + ".err"));
  r.out = readFile(base + ".out");
  r.err = readFile(base + ".err");
  return r;
}

// The last JSON line of stdout holding `key`.
nlohmann::json lineWith(const std::string& out, const std::string& key) {
  nlohmann::json found;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] != '{') continue;
    const auto j = nlohmann::json::parse(line);
    if (j.contains(key)) found = j;
  }
  return found;
}

// The pid of the process whose command line holds `marker` and whose environment says it is
// OpenMPI rank `rank`; -1 when there is none (yet).
pid_t rankPid(const std::string& marker, int rank) {
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return -1;
  pid_t found = -1;
  const std::string want = "OMPI_COMM_WORLD_RANK=" + std::to_string(rank);
  while (dirent* e = ::readdir(proc)) {
    const std::string name = e->d_name;
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream cmd("/proc/" + name + "/cmdline", std::ios::binary);
    std::string cmdline((std::istreambuf_iterator<char>(cmd)), std::istreambuf_iterator<char>());
    if (cmdline.find(marker) == std::string::npos) continue;
    if (cmdline.rfind(SAE_MPIRUN_PATH, 0) == 0) continue;  // the launcher itself
    std::ifstream env("/proc/" + name + "/environ", std::ios::binary);
    std::string environ_text((std::istreambuf_iterator<char>(env)),
                             std::istreambuf_iterator<char>());
    for (std::size_t at = 0; at < environ_text.size();) {
      const std::size_t end = environ_text.find('\0', at);
      if (environ_text.compare(at, end - at, want) == 0) found = pid_t(std::stol(name));
      if (end == std::string::npos) break;
      at = end + 1;
    }
    if (found > 0) break;
  }
  ::closedir(proc);
  return found;
}

// Rows of a fixed random-looking pattern, [rows, 8].
void writeActivations(const std::string& path, sae::Index rows) {
  sae::RowMatrix<float> m(rows, 8);
  for (sae::Index r = 0; r < rows; ++r)
    for (sae::Index c = 0; c < 8; ++c)
      m(r, c) = float(std::sin(0.37 * double(r * 8 + c)) * (1 + (r + c) % 3));
  sae::io::writeNpy(path, m);
}

}  // namespace

TEST_CASE("mpirun -np 2 sae train: the README's run on synthetic data, as one process does") {
  const std::string dir = sae::test::scratchDir("cli_mpi", "synthetic");
  const std::vector<std::string> flags = {
      "--steps", "200", "--batch", "256", "--log-every", "50", "--seed", "3", "--checkpoint-every",
      "100"};
  auto with = [&](const std::string& out) {
    std::vector<std::string> a = flags;
    a.insert(a.end(), {"--out", out});
    return a;
  };
  const CliResult two = runMpi(with(dir + "/two"));
  INFO("stderr: " << two.err);
  REQUIRE(two.status == 0);
  std::vector<std::string> one_args = {"train"};
  for (const auto& a : with(dir + "/one")) one_args.push_back(a);
  const CliResult one = sae::test::runCliOk(one_args);

  const nlohmann::json s2 = lineWith(two.out, "explained_variance");
  const nlohmann::json s1 = lineWith(one.out, "explained_variance");
  REQUIRE(s2.is_object());
  CHECK(s2.at("ranks") == 2);
  CHECK(s2.at("sum_megabytes_per_step").get<double>() > 0);
  // The summary is printed once (by rank 0).
  CHECK(std::count(two.out.begin(), two.out.end(), '\n') == 2);  // summary + mmcs
  const double ev2 = s2.at("explained_variance"), ev1 = s1.at("explained_variance");
  INFO("explained variance: 2 ranks " << ev2 << ", one process " << ev1);
  CHECK(ev1 > 0.5);
  CHECK(std::abs(ev2 - ev1) <= 0.01 * ev1);
  CHECK(std::abs(s2.at("l0").get<double>() - s1.at("l0").get<double>()) <=
        0.01 * s1.at("l0").get<double>());
  CHECK(two.err.find("2 ranks: per step, rank 0 sent") != std::string::npos);
  CHECK(std::filesystem::exists(dir + "/two/sae_weights.safetensors"));
  // The run was checkpointed (at step 100 and at the end).
  CHECK(std::filesystem::exists(dir + "/two/checkpoints/latest"));
}

TEST_CASE("killing one rank ends the run within seconds; it resumes bitwise under 2 ranks") {
  const std::string dir = sae::test::scratchDir("cli_mpi", "kill");
  writeActivations(dir + "/acts.npy", 6000);
  auto args = [&](const std::string& out) {
    return std::vector<std::string>{"--data",
                                    dir + "/acts.npy",
                                    "--steps",
                                    "4000",
                                    "--batch",
                                    "64",
                                    "--d-sae",
                                    "32",
                                    "--k",
                                    "4",
                                    "--checkpoint-every",
                                    "100",
                                    "--log-every",
                                    "500",
                                    "--threads",
                                    "1",
                                    "--quiet",
                                    "--out",
                                    out};
  };
  const CliResult full = runMpi(args(dir + "/full"));
  INFO("stderr: " << full.err);
  REQUIRE(full.status == 0);

  const std::string out = dir + "/killed";
  const pid_t launcher = sae::test::spawnProgram(SAE_MPIRUN_PATH, mpirun(args(out)),
                                                 dir + "/killed.out", dir + "/killed.err");
  // Find rank 1, wait for the first checkpoint, then SIGKILL rank 1.
  const auto t0 = std::chrono::steady_clock::now();
  pid_t victim = -1;
  while (victim <= 0 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60)) {
    victim = rankPid(out, 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  REQUIRE(victim > 0);
  while (!std::filesystem::exists(out + "/checkpoints/latest") &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  REQUIRE(::kill(victim, SIGKILL) == 0);
  const auto killed_at = std::chrono::steady_clock::now();
  const int status = sae::test::waitCli(launcher);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - killed_at).count();
  const std::string said = readFile(dir + "/killed.out") + readFile(dir + "/killed.err");
  INFO("mpirun said: " << said);
  CHECK(status != 0);
  CHECK(seconds < 10);
  CHECK(said.find("rank 1") != std::string::npos);  // the launcher names the dead rank
  // Unless it finished first, the run stopped before the end; it resumes under 2 ranks.
  CHECK_FALSE(std::filesystem::exists(out + "/sae_weights.safetensors"));
  const CliResult resumed = runMpi({"--out", out, "--resume", "--quiet"});
  INFO("resume stderr: " << resumed.err);
  REQUIRE(resumed.status == 0);
  CHECK(readFile(out + "/sae_weights.safetensors") ==
        readFile(dir + "/full/sae_weights.safetensors"));

  // One process cannot resume a checkpoint of 2 ranks.
  sae::test::checkCliFails({"train", "--out", out, "--resume", "--steps", "5000", "--quiet"},
                           "resume it with the same number (mpirun -np 2)");
}

TEST_CASE("mpirun -np 2 sae train refuses a batch it cannot split and the BatchTopK family") {
  const std::string dir = sae::test::scratchDir("cli_mpi", "refused");
  const CliResult odd = runMpi({"--batch", "255", "--steps", "2", "--out", dir + "/odd"});
  CHECK(odd.status != 0);
  CHECK(odd.err.find("the batch of 255 tokens (the global batch, --batch) is not a multiple of "
                     "the 2 ranks") != std::string::npos);
  const CliResult b = runMpi({"--arch", "batchtopk", "--steps", "2", "--out", dir + "/b"});
  CHECK(b.status != 0);
  CHECK(b.err.find("batchtopk selects its latents across the whole batch") != std::string::npos);
}

}  // namespace sae_test_cli_mpi
