// What the subcommands of the `sae` program share: the Command each register function returns,
// the option groups of several subcommands, and small file helpers.
#pragma once

#include <sys/stat.h>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <sae/sae.hpp>

#ifndef SAE_CLI_HAS_LM
#define SAE_CLI_HAS_LM 0  // 1 when the build has the language-model part (sae::lm)
#endif

namespace sae_cli {

using sae::Index;
using sae::RowMatrix;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

constexpr const char* kProg = "sae";

/// A subcommand: its parser, and what runs it once the command line is parsed (the exit status).
struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;
};

/// A new subcommand: its Command, its parser and its options (owned by the Command).
template <typename Options>
struct NewCommand {
  Command cmd;
  CLI::App& sub;
  Options& o;
};

/// @brief Adds subcommand `name` to `app`, with a new Options that `run` runs once the command
/// line is parsed (the subcommand's parser at hand, for which flags were given).
template <typename Options>
NewCommand<Options> newCommand(CLI::App& app, const char* name, const char* about,
                               int (*run)(const Options&, const CLI::App&)) {
  auto o = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand(name, about);
  return {Command{sub, [o, sub, run] { return run(*o, *sub); }}, *sub, *o};
}

Command registerTrain(CLI::App& app);
Command registerEncode(CLI::App& app);
Command registerEval(CLI::App& app);
Command registerInfo(CLI::App& app);
Command registerConvert(CLI::App& app);
Command registerReport(CLI::App& app);
Command registerDashboard(CLI::App& app);
Command registerTokenize(CLI::App& app);   // with SAE_CLI_HAS_LM
Command registerDump(CLI::App& app);       // with SAE_CLI_HAS_LM
Command registerGenerate(CLI::App& app);   // with SAE_CLI_HAS_LM
Command registerAttribute(CLI::App& app);  // with SAE_CLI_HAS_LM

inline bool isDir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

inline bool endsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

inline json readJsonFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw sae::IoError(path + ": cannot open");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw sae::FormatError(path + ": not valid JSON: " + e.what());
  }
}

/// @brief --data paths with each `sae dump` folder (one holding dump.json) replaced by the shard
/// files of its hook, in row order; a dump of several hooks must be named with its hook's
/// subfolder. Other paths are kept as they are; other folders too when `plain_folders` (training
/// streams every shard of a folder), else they are an error.
inline std::vector<std::string> expandDumpFolders(const std::vector<std::string>& paths,
                                                  bool plain_folders = false) {
  std::vector<std::string> out;
  for (const std::string& p : paths) {
    const std::string meta_path = p + "/dump.json";
    if (!isDir(p) || !std::filesystem::exists(meta_path)) {
      if (isDir(p) && !plain_folders)
        throw sae::ConfigError(p +
                               " is a folder without dump.json: give activation files (.npy, "
                               ".safetensors) or a `sae dump` folder as --data");
      out.push_back(p);
      continue;
    }
    const json meta = readJsonFile(meta_path);
    std::string folder;
    std::vector<std::string> shards;
    try {
      const json& hooks = meta.at("hooks");
      if (hooks.size() != 1) {
        std::string names;
        for (const auto& h : hooks)
          names += (names.empty() ? "" : ", ") + p + "/" + h.at("folder").get<std::string>();
        throw sae::ConfigError(p + " is a `sae dump` folder of " + std::to_string(hooks.size()) +
                               " hooks: give one of them as --data (" + names + ")");
      }
      folder = hooks[0].at("folder").get<std::string>();
      shards = hooks[0].at("shards").get<std::vector<std::string>>();
    } catch (const json::exception& e) {
      throw sae::FormatError(meta_path + ": not a `sae dump` description: " + e.what());
    }
    if (shards.empty()) throw sae::ConfigError(meta_path + ": the dump has no shards");
    for (const std::string& s : shards) out.push_back(p + "/" + folder + "/" + s);
  }
  return out;
}

/// The hook point the `--data` paths were dumped from, when every one of them is a `sae dump`
/// folder of one hook or a hook folder inside a dump (DUMP/<hook name>) and they agree; else "".
inline std::string dumpedHook(const std::vector<std::string>& paths) {
  std::string hook;
  for (std::string p : paths) {
    while (p.size() > 1 && p.back() == '/') p.pop_back();
    std::string name;
    if (!isDir(p)) return "";
    const std::string here = p + "/dump.json";
    const std::size_t slash = p.find_last_of('/');
    const std::string parent = slash == std::string::npos ? "." : p.substr(0, slash);
    const std::string base = slash == std::string::npos ? p : p.substr(slash + 1);
    try {
      if (std::ifstream(here)) {
        const json meta = readJsonFile(here);
        if (meta.at("hooks").size() != 1) return "";
        name = meta.at("hooks")[0].at("name").get<std::string>();
      } else if (std::ifstream(parent + "/dump.json")) {
        const json meta = readJsonFile(parent + "/dump.json");
        for (const auto& h : meta.at("hooks"))
          if (h.at("folder").get<std::string>() == base) name = h.at("name").get<std::string>();
      }
    } catch (const json::exception&) {
      return "";  // not a dump description: the data just has no known hook
    }
    if (name.empty() || (!hook.empty() && hook != name)) return "";
    hook = name;
  }
  return hook;
}

/// `s` with its line breaks replaced by spaces (error messages are one line).
inline std::string oneLine(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

/// An option whose value is one of enum E's names (sae/core/enum_names.hpp): the names are
/// the choices CLI11 checks and shows; `value` is an E or a sae::NamedEnum<E>.
template <typename E, typename Value>
CLI::Option* addEnumOption(CLI::App& sub, const std::string& flag, Value& value,
                           const std::string& help) {
  return sub
      .add_option_function<std::string>(
          flag, [&value, flag](const std::string& s) { value = sae::parseEnum<E>(s, flag); }, help)
      ->check(CLI::IsMember(sae::enumNames<E>()));
}

/// The options of the subcommands that run an SAE over activation files (encode, eval).
struct InferenceOptions {
  std::string sae;
  std::vector<std::string> data;
  Index batch = 4096;
  int threads = 0;
  sae::Precision precision = sae::Precision::Fp32;

  /// Registers --sae (with `sae_help`), --data (required unless `data_optional`), --batch,
  /// --threads and --precision on `sub`.
  void add(CLI::App& sub, const std::string& sae_help, bool data_optional = false) {
    sub.add_option("--sae", sae, sae_help)->required();
    auto* d = sub.add_option("--data", data, "activation files")->check(CLI::ExistingPath);
    if (!data_optional) d->required();
    sub.add_option("--batch", batch, "rows per chunk")->check(CLI::PositiveNumber);
    sub.add_option("--threads", threads, "threads (0: all)")->check(CLI::NonNegativeNumber);
    addEnumOption<sae::Precision>(sub, "--precision", precision,
                                  "fp32 (default) or bf16: the encoder product in bf16 with fp32 "
                                  "accumulation (oneDNN; AMX where the CPU has it)");
  }

  /// Applies --threads; returns true for --precision bf16 (ConfigError when this build has no
  /// bf16 GEMM).
  bool prepare() const {
    if (threads > 0) sae::setThreads(threads);
    if (precision != sae::Precision::Bf16) return false;
    if (!sae::kernels::bf16Available()) throw sae::ConfigError(sae::kernels::kBf16Unavailable);
    return true;
  }
};

/// The options of `sae eval --model` (the SAE spliced into its language model).
struct ModelEvalArgs {
  std::string model;              ///< --model: GPT-2 folder
  std::string hook;               ///< --hook (default: the SAE's metadata.hook_name)
  std::vector<std::string> text;  ///< --text files
  std::string tokens;             ///< --tokens ids.npy
  Index context = 128;            ///< --context: tokens per window, BOS included
  bool prepend_bos = true;        ///< --no-prepend-bos turns it off
  Index batches = 0;              ///< --batches: at most this many batches (0: all windows)
  Index batch_size = 8;           ///< --batch-size: windows per batch
  bool force = false;             ///< --force: a --hook other than the SAE's own
  bool quiet = false;             ///< --quiet: no progress line
};

/// `sae eval --model`: SAELens's downstream metrics and the hook's reconstruction metrics, as
/// the JSON object `sae eval` prints (eval_model.cpp; with SAE_CLI_HAS_LM).
ojson evaluateInModel(const InferenceOptions& in, const ModelEvalArgs& args);

/// ConfigError unless the data have the SAE's input width.
inline void checkWidth(const sae::io::LoadedSae<float>& m, Index cols, const std::string& sae_dir) {
  if (cols != m.config.sae_cfg.d_in)
    throw sae::ConfigError("the data have " + std::to_string(cols) + " columns but the SAE in " +
                           sae_dir + " expects d_in = " + std::to_string(m.config.sae_cfg.d_in));
}

/// The codes of one chunk, the encoder product in bf16 when asked (--precision bf16).
template <typename Model>
typename Model::Codes encodeChunk(const Model& model, const RowMatrix<float>& x, bool bf16) {
  typename Model::Workspace ws;
  ws.bf16_encoder = bf16;
  typename Model::Codes codes;
  model.encode(x, codes, ws);
  return codes;
}

}  // namespace sae_cli
