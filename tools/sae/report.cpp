// `sae report RUN`: the run report of a training run folder, one self-contained HTML page
// (sae/report/run_report.hpp): curves of every metric against the step with the held-out
// evaluations, the final density histogram and the configuration.
#include <cstdio>
#include <string>

#include <sae/report/run_report.hpp>

#include "common.hpp"

namespace sae_cli {

namespace {

constexpr const char* kAbout =
    "HTML report of a training run folder: metric curves, density histogram, configuration";

struct ReportOptions {
  std::string run;
  std::string out;  // empty: RUN/report.html
};

int runReport(const ReportOptions& o, const CLI::App&) {
  const std::string out = o.out.empty() ? o.run + "/report.html" : o.out;
  sae::report::writeRunReport(o.run, out);
  std::printf("%s\n", out.c_str());
  return 0;
}

}  // namespace

Command registerReport(CLI::App& app) {
  auto [cmd, sub, o] = newCommand(app, "report", kAbout, runReport);
  sub.add_option("run", o.run, "training run folder (with metrics.jsonl)")
      ->required()
      ->check(CLI::ExistingDirectory);
  sub.add_option("--out", o.out, "HTML file to write (default RUN/report.html)");
  return cmd;
}

}  // namespace sae_cli
