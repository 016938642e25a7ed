// Runs the built `sae` program (path SAE_CLI_PATH, given by tests/CMakeLists.txt) as a user
// would and collects its exit status, stdout and stderr.
//
// Included as <support/cli_runner.hpp>.
#pragma once

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <support/test_support.hpp>

extern char** environ;

namespace sae::test {

/// Outcome of one run of the program.
struct CliResult {
  int status = -1;  ///< Exit status; 1000 + signal when killed by a signal.
  std::string out;  ///< stdout.
  std::string err;  ///< stderr.
};

/// The path of the built program; fails the test, naming it, when it is not there.
inline const char* cliPath() {
  if (::access(SAE_CLI_PATH, X_OK) != 0) {
    FAIL("the sae program is not built: " << SAE_CLI_PATH
                                          << " (cmake --build <build dir> --target sae_cli)");
  }
  return SAE_CLI_PATH;
}

/// Starts `program args...` with stdout and stderr written to the files `out` and `err`.
inline pid_t spawnProgram(const std::string& program, const std::vector<std::string>& args,
                          const std::string& out, const std::string& err) {
  std::vector<std::string> full = {program};
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  REQUIRE(rc == 0);
  return pid;
}

/// Starts `sae args...` with stdout and stderr written to the files `out` and `err`.
inline pid_t spawnCli(const std::vector<std::string>& args, const std::string& out,
                      const std::string& err) {
  return spawnProgram(cliPath(), args, out, err);
}

/// Waits for a spawned program: its exit status, or 1000 + the signal that killed it.
inline int waitCli(pid_t pid) {
  int st = 0;
  REQUIRE(waitpid(pid, &st, 0) == pid);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 1000 + WTERMSIG(st);
}

/// Runs `sae args...` to completion.
inline CliResult runCli(const std::vector<std::string>& args) {
  static int n = 0;
  const std::string base =
      "/tmp/sae_test_cli_runner_" + std::to_string(::getpid()) + "_" + std::to_string(n++);
  const std::string out = base + ".stdout", err = base + ".stderr";
  CliResult r;
  r.status = waitCli(spawnCli(args, out, err));
  r.out = readFile(out);
  r.err = readFile(err);
  std::remove(out.c_str());
  std::remove(err.c_str());
  return r;
}

/// The command line, for messages.
inline std::string commandLine(const std::vector<std::string>& args) {
  std::string cmd = "sae";
  for (const auto& a : args) cmd += " " + a;
  return cmd;
}

/// Runs `sae args...` and requires success (status 0).
inline CliResult runCliOk(const std::vector<std::string>& args) {
  INFO(commandLine(args));
  CliResult r = runCli(args);
  INFO("stderr: " << r.err);
  REQUIRE(r.status == 0);
  return r;
}

/// Requires a clean failure: a non-zero status (not a crash) and exactly one line on stderr
/// that contains `what`.
inline void checkCliFails(const std::vector<std::string>& args, const std::string& what) {
  INFO(commandLine(args));
  const CliResult r = runCli(args);
  INFO("stderr: " << r.err);
  CHECK(r.status != 0);
  CHECK(r.status < 128);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  CHECK(r.err.find(what) != std::string::npos);
}

}  // namespace sae::test
