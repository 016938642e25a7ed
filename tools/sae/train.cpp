// `sae train`: the flags of the TrainerConfig fields (from SAE_TRAIN_FIELDS), the data
// options, fresh runs and --resume.
#include <algorithm>
#include <csignal>
#include <cstdio>
#include <exception>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <sae/io/activation_stream.hpp>
#include <sae/report/run_report.hpp>
#include <sae/train/batch_source.hpp>
#include <sae/train/checkpoint.hpp>
#include <sae/train/trainer.hpp>
#if SAE_HAS_MPI
#include <sae/dist/mpi.hpp>
#endif

#include "common.hpp"
#include "progress.hpp"

namespace sae_cli {

constexpr const char* kAbout =
    "Train an SAE. Without --data, on built-in synthetic superposition data. The final SAE is "
    "saved in SAELens's format in --out (cfg.json, sae_weights.safetensors, "
    "sparsity.safetensors); checkpoints go to --out/checkpoints. --resume continues the run "
    "in --out: repeating its flags is allowed, changing them is refused except where noted, "
    "and a larger --steps / --tokens extends a finished run.";

namespace {

using sae::train::TrainerConfig;
using sae::train::TrainField;

struct TrainOptions {
  std::string config_file;
  TrainerConfig flags;            ///< The values of the field flags (see SAE_TRAIN_FIELDS).
  std::vector<std::string> data;  ///< --data
  std::int64_t tokens = 0;        ///< --tokens
  double holdout = 0;             ///< --holdout
  std::string tensor;             ///< --tensor
  Index synth_d_in = 64, synth_features = 256;
  double synth_active = 5, synth_noise = 0.01;
  bool resume = false, quiet = false;
  bool report = false;  // --report: RUN/report.html at each checkpoint and at the end
};

// The CLI11 check a field's `check` text names (see sae::train::TrainField).
void applyCheck(CLI::Option* opt, const std::string& check) {
  if (check.empty()) return;
  if (check == ">0") {
    opt->check(CLI::PositiveNumber);
  } else if (check == ">=0") {
    opt->check(CLI::NonNegativeNumber);
  } else if (check.front() == '[') {
    const std::size_t comma = check.find(',');
    opt->check(
        CLI::Range(std::stod(check.substr(1, comma - 1)), std::stod(check.substr(comma + 1))));
  } else {
    std::vector<std::string> choices;
    std::stringstream in(check.substr(1, check.size() - 2));
    for (std::string c; std::getline(in, c, ',');) choices.push_back(c);
    opt->check(CLI::IsMember(choices));
  }
}

template <typename T>
struct IsNamedEnum : std::false_type {};
template <typename E>
struct IsNamedEnum<sae::NamedEnum<E>> : std::true_type {
  using Enum = E;
};

// The flag of one TrainerConfig field: a switch for a bool, a comma-separated list for a
// vector, an option otherwise. The data field's flag (--data) takes file names: see below.
template <typename T>
void addFieldFlag(CLI::App& sub, const TrainField& f, T& value) {
  const std::string help = std::string(f.help) + (f.rule == sae::train::ResumeRule::Free &&
                                                          std::string(f.name) != "out_dir"
                                                      ? " (may change on --resume)"
                                                      : "");
  if constexpr (std::is_same_v<T, bool>) {
    sub.add_flag(f.flag, value, help);
  } else if constexpr (IsNamedEnum<T>::value) {
    addEnumOption<typename IsNamedEnum<T>::Enum>(sub, f.flag, value, help);
  } else if constexpr (!std::is_same_v<T, json>) {
    CLI::Option* opt = sub.add_option(f.flag, value, help);
    if constexpr (!std::is_same_v<T, std::string> && std::is_class_v<T>) opt->delimiter(',');
    applyCheck(opt, f.check);
  }
}

// --report: refreshes RUN/report.html after each checkpoint. A report that cannot be written
// is a warning, not the end of the run (the checkpoint is already on disk).
struct ReportRefresh {
  std::string run;
  bool enabled = false;
  void write() const {
    if (!enabled) return;
    try {
      sae::report::writeRunReport(run, run + "/report.html");
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s train: warning: report not written: %s\n", kProg,
                   oneLine(e.what()).c_str());
    }
  }
  void onCheckpoint(const sae::train::TrainProgress&, const std::string&) const { write(); }
};

// The ranks of a data-parallel run: under an MPI launcher (mpirun -np N sae train ...), MPI is
// initialised and every rank trains on its share of the data; otherwise one process.
struct Ranks {
  sae::dist::Collective* comm = nullptr;
  int rank = 0, size = 1;
  bool leader() const { return rank == 0; }
};

Ranks startRanks() {
#if SAE_HAS_MPI
  if (sae::dist::MpiSession::launched()) {
    static sae::dist::MpiSession session;  // MPI_Finalize when the program ends
    static sae::dist::MpiCollective world;
    return Ranks{&world, world.rank(), world.size()};
  }
#endif
  return Ranks{};
}

template <typename Arch, typename Source, typename Report>
int runTrainer(const TrainerConfig& cfg, Source& source, const Ranks& ranks, bool resume,
               bool quiet, bool html, Report report) {
  sae::train::Trainer<float, Arch, Source> trainer(cfg, source);
  trainer.setHandleSignals(true);
  trainer.setCollective(ranks.comm);
  quiet = quiet || !ranks.leader();  // rank 0 speaks for the run
  html = html && ranks.leader();
  if (resume) {
    const auto latest = trainer.latestCheckpoint();
    if (!latest) throw sae::IoError(cfg.out_dir + "/checkpoints: no checkpoint to resume from");
    trainer.resume(*latest);
    if (!quiet)
      std::fprintf(stderr, "%s train: resuming from %s (step %lld of %lld)\n", kProg,
                   latest->c_str(), static_cast<long long>(trainer.step()),
                   static_cast<long long>(cfg.total_steps));
  } else {
    trainer.initialize();
  }
  sae::train::StopSignalGuard guard;
  TerminalProgress progress(quiet);
  const ReportRefresh refresh{cfg.out_dir, html};
  const std::int64_t first_step = trainer.step();
  const sae::train::TrainResult r = trainer.train(-1, progress, refresh);
  refresh.write();
  // Data parallel: what rank 0 sent and waited for in the sums, per step.
  const sae::dist::TrafficStats traffic = trainer.traffic();
  const double steps = double(std::max<std::int64_t>(1, r.step - first_step));
  const double mb_per_step = double(traffic.bytes_sent) / 1e6 / steps;
  const double sum_seconds = traffic.seconds / steps;
  if (ranks.size > 1 && !quiet)
    std::fprintf(stderr,
                 "%s train: %d ranks: per step, rank 0 sent %.1f MB and spent %.3f s in the sums "
                 "of gradients and counts\n",
                 kProg, ranks.size, mb_per_step, sum_seconds);
  if (r.signal != 0) {
    if (!ranks.leader()) return 128 + r.signal;
    std::fprintf(stderr,
                 "%s train: stopped by %s at step %lld; checkpoint %s written; continue with "
                 "`sae train --out %s --resume`\n",
                 kProg, r.signal == SIGINT ? "SIGINT" : "SIGTERM", static_cast<long long>(r.step),
                 r.checkpoint.c_str(), cfg.out_dir.c_str());
    return 128 + r.signal;
  }
  if (!ranks.leader()) return 0;
  json summary = r.final_metrics;
  summary["out"] = cfg.out_dir;
  summary["steps"] = r.step;
  if (ranks.size > 1) {
    summary["ranks"] = ranks.size;
    summary["sum_megabytes_per_step"] = mb_per_step;
    summary["sum_seconds_per_step"] = sum_seconds;
  }
  std::printf("%s\n", summary.dump().c_str());
  report(trainer);
  return 0;
}

template <typename Source>
int dispatchArch(const TrainerConfig& cfg, Source& source, const Ranks& ranks, bool resume,
                 bool quiet, bool html, const sae::RowMatrix<float>* truth) {
  auto mmcs = [truth](const auto& trainer) {
    if (!truth) return;
    const double v =
        sae::eval::meanMaxCosineSimilarity(*truth, trainer.model().parameters().rowMajor("W_dec"));
    std::printf("{\"mmcs\": %.6f}\n", v);
  };
  return sae::visitArchitecture(cfg.architecture, [&](auto tag) {
    return runTrainer<typename decltype(tag)::Arch>(cfg, source, ranks, resume, quiet, html, mmcs);
  });
}

// The configuration the command line describes, and which fields it set (field -> the flag
// or --config entry that set it, for the resume messages).
TrainerConfig requestedConfig(const TrainOptions& o, const CLI::App& sub,
                              std::map<std::string, std::string>& given) {
  TrainerConfig cfg;
  if (!o.config_file.empty()) {
    json j = readJsonFile(o.config_file);
    if (j.is_object() && j.contains("data") && j.at("data").is_array()) {
      json d = {{"kind", "files"}, {"paths", j.at("data")}};
      j["data"] = d;
    }
    cfg.updateFromJson(j, o.config_file);
    for (const auto& [key, value] : j.items()) given[key] = "--config field '" + key + "'";
  }
  cfg.forEachFieldWith(o.flags, [&](const TrainField& f, auto& mine, const auto& flag_value) {
    if (*f.flag == '\0' || std::string(f.name) == "data" || sub.count(f.flag) == 0) return;
    mine = flag_value;
    given[f.name] = f.flag;
  });
  if (sub.count("--expansion")) {
    cfg.d_sae = 0;
    given["d_sae"] = "--expansion";
  }
  if (sub.count("--tokens")) {
    cfg.total_steps = (o.tokens + cfg.batch_size - 1) / cfg.batch_size;
    given["total_steps"] = "--tokens";
  }
  if (!o.data.empty()) {
    cfg.data = {
        {"kind", "files"}, {"paths", expandDumpFolders(o.data, true)}, {"holdout", o.holdout}};
    if (!o.tensor.empty()) cfg.data["tensor"] = o.tensor;
    // Activations of `sae dump`: the saved cfg.json names their hook (metadata.hook_name).
    const std::string hook = dumpedHook(o.data);
    if (!hook.empty()) cfg.data["hook_name"] = hook;
    given["data"] = "--data";
  } else if (!cfg.data.contains("kind")) {
    cfg.data = {{"kind", "synthetic"},
                {"d_in", o.synth_d_in},
                {"features", o.synth_features},
                {"active", o.synth_active},
                {"noise", o.synth_noise}};
    for (const char* flag : {"--synthetic-d-in", "--synthetic-features", "--synthetic-active"})
      if (sub.count(flag)) given["data"] = flag;
  }
  if (sub.count("--holdout") && cfg.data.value("kind", "") == "files") {
    cfg.data["holdout"] = o.holdout;
    if (!given.count("data")) given["data"] = "--holdout";
  }
  return cfg;
}

// The data of the run, this rank's share of it, and the training.
int trainOnRanks(const TrainOptions& o, const TrainerConfig& cfg, const Ranks& ranks) {
  int threads = cfg.threads;
#if SAE_HAS_MPI
  // Threads 0 (all cores) under mpirun: the cores of the machine shared among its ranks.
  if (threads == 0 && ranks.size > 1)
    threads =
        std::max(1, int(std::thread::hardware_concurrency()) / sae::dist::MpiSession::localSize());
#endif
  sae::setThreads(threads);
  // (A batch that is not a multiple of the ranks is refused by Trainer::setCollective.)

  const std::string kind = cfg.data.value("kind", "");
  if (kind == "synthetic") {
    sae::eval::SyntheticOptions so;
    so.d_in = cfg.data.value("d_in", Index(64));
    so.n_features = cfg.data.value("features", Index(256));
    so.expected_active = cfg.data.value("active", 5.0);
    so.noise = cfg.data.value("noise", 0.01);
    sae::train::SyntheticSource<float> source(so, cfg.seed, cfg.batch_size);
    if (ranks.size == 1)
      return dispatchArch(cfg, source, ranks, o.resume, o.quiet, o.report, &source.directions());
    // Every rank makes the global batch and trains on its rows: the batches of one process.
    sae::train::RankSlice<sae::train::SyntheticSource<float>> slice(source, ranks.rank, ranks.size);
    return dispatchArch(cfg, slice, ranks, o.resume, o.quiet, o.report, &source.directions());
  }
  if (kind == "files") {
    sae::io::StreamOptions so;
    so.batch_size = cfg.batch_size / ranks.size;
    so.seed = cfg.seed;
    so.holdout_fraction = cfg.data.value("holdout", 0.0);
    so.tensor_name = cfg.data.value("tensor", std::string());
    so.part = ranks.rank;  // each rank streams its own blocks of the shards
    so.parts = ranks.size;
    const auto paths = cfg.data.at("paths").get<std::vector<std::string>>();
    sae::train::StreamSource<sae::io::ActivationStream<float>> source(paths, so);
    return dispatchArch(cfg, source, ranks, o.resume, o.quiet, o.report, nullptr);
  }
  throw sae::ConfigError("unknown data kind '" + kind + "' in the configuration");
}

}  // namespace

int runTrain(const TrainOptions& o, const CLI::App& sub) {
  std::map<std::string, std::string> given;
  const TrainerConfig requested = requestedConfig(o, sub, given);
  TrainerConfig cfg;
  if (o.resume) {
    // The run's own configuration, from its newest checkpoint; the command line may repeat it
    // and change what the fields' resume rules allow.
    const std::string out = requested.out_dir;
    sae::train::CheckpointDir dir(out + "/checkpoints");
    const auto latest = dir.latest();
    if (!latest) throw sae::IoError(out + "/checkpoints: no checkpoint to resume from");
    const sae::train::Checkpoint ck(*latest);
    if (!ck.state().contains("config")) ck.fail("state has no 'config'");
    TrainerConfig run;
    run.updateFromJson(ck.state().at("config"), *latest);
    cfg = TrainerConfig::resumed(run, requested, given);
    cfg.validate();
  } else {
    cfg = requested;
    cfg.validate();
    if (isDir(cfg.out_dir + "/checkpoints")) {
      sae::train::CheckpointDir dir(cfg.out_dir + "/checkpoints");
      if (dir.latest())
        throw sae::ConfigError(cfg.out_dir +
                               " already holds a run with checkpoints; pass --resume to continue "
                               "it or choose another --out");
    }
  }
  const Ranks ranks = startRanks();
  try {
    return trainOnRanks(o, cfg, ranks);
  } catch (const std::exception& e) {
    if (ranks.size == 1) throw;
    // The other ranks may be waiting in a sum this rank will never join: end them all.
    std::fprintf(stderr, "%s train: rank %d: %s\n", kProg, ranks.rank, oneLine(e.what()).c_str());
    std::fflush(stderr);
#if SAE_HAS_MPI
    sae::dist::MpiSession::abort(1);
#endif
    throw;
  }
}

Command registerTrain(CLI::App& app) {
  auto [cmd, sub, o] = newCommand(app, "train", kAbout, runTrain);
  sub.add_option("--config", o.config_file,
                 "JSON file of training settings (the fields of train_config.json); flags "
                 "override it")
      ->check(CLI::ExistingFile);
  // (Structured bindings cannot be captured in C++17: named again for the lambda.)
  o.flags.forEachField([&train = sub, &opts = o](const TrainField& f, auto& value) {
    if (*f.flag == '\0') return;
    if (std::string(f.name) == "data") {
      train.add_option(f.flag, opts.data, f.help);
      return;
    }
    addFieldFlag(train, f, value);
    if (std::string(f.name) == "total_steps")
      train.add_option("--tokens", opts.tokens, "training tokens (steps = tokens / batch)")
          ->check(CLI::PositiveNumber)
          ->excludes(f.flag);
  });
  sub.get_option("--arch")->check(CLI::IsMember(sae::architectureNames()));
  sub.get_option("--expansion")->excludes("--d-sae");
  sub.get_option("--out")->required();
  sub.add_flag("--resume", o.resume, "continue the run in --out from its latest checkpoint");
  sub.add_option("--holdout", o.holdout, "fraction of the data held out for evaluation")
      ->check(CLI::Range(0.0, 0.99));
  sub.add_option("--tensor", o.tensor, "safetensors data: name of the activation tensor");
  sub.add_option("--synthetic-d-in", o.synth_d_in, "synthetic data: width (default 64)")
      ->check(CLI::PositiveNumber);
  sub.add_option("--synthetic-features", o.synth_features,
                 "synthetic data: true features (default 256)")
      ->check(CLI::PositiveNumber);
  sub.add_option("--synthetic-active", o.synth_active,
                 "synthetic data: mean features per token (default 5)")
      ->check(CLI::PositiveNumber);
  sub.add_flag("--quiet", o.quiet, "no progress output");
  sub.add_flag("--report", o.report,
               "write RUN/report.html (sae report) at each checkpoint and at the end");
  return cmd;
}

}  // namespace sae_cli
