// `sae dashboard`: the feature dashboard of an SAE over a `sae dump` folder, as a folder of
// static files (sae/report/dashboard.hpp): index.html with the SAE's card, the density
// histogram and the table of features, and one data file per 64 features with their panels.
#include <unistd.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <sae/report/dashboard.hpp>

#if SAE_CLI_HAS_LM
#include <sae/lm/attribution.hpp>
#include <sae/lm/gpt2.hpp>
#include <sae/lm/tokenizer.hpp>
#endif

#include "common.hpp"

namespace sae_cli {

namespace {

namespace fs = std::filesystem;

constexpr const char* kAbout =
    "HTML dashboard of an SAE's features over a `sae dump` folder: a sortable table, and per "
    "feature its top contexts, activation intervals, histogram, logits, sources and neighbours";

struct DashboardOptions {
  std::string sae;
  std::string data;
  std::string hook;
  std::string model;
  std::string tokenizer;
  std::string features;
  std::string top_by = "index";
  Index n = 0;
  std::string eval;
  std::string title;
  std::string neuronpedia;  // folder for SAEDashboard's Neuronpedia batch files; empty: none
  std::string np_model_id;
  std::string np_sae_set;
  sae::report::DashboardOptions gather;
  Index chunk = 64;
  int threads = 0;
  sae::Precision precision = sae::Precision::Fp32;
  bool quiet = false;
  std::string out;
};

// "3,17,40-45": feature indices in the order given (ranges inclusive).
std::vector<Index> parseFeatureList(const std::string& s) {
  std::vector<Index> out;
  std::size_t at = 0;
  auto bad = [&](const std::string& why) {
    return sae::ConfigError("--features " + s + ": " + why +
                            " (give indices and ranges, e.g. 3,17,40-45)");
  };
  while (at <= s.size()) {
    const std::size_t comma = std::min(s.find(',', at), s.size());
    const std::string item = s.substr(at, comma - at);
    if (item.empty()) throw bad("empty item");
    const std::size_t dash = item.find('-', 1);
    auto number = [&](const std::string& t) {
      if (t.empty() || t.find_first_not_of("0123456789") != std::string::npos)
        throw bad("'" + t + "' is not a feature index");
      if (t.size() > 10) throw bad("'" + t + "' is out of range");
      return static_cast<Index>(std::stoll(t));
    };
    const Index lo = number(dash == std::string::npos ? item : item.substr(0, dash));
    const Index hi = dash == std::string::npos ? lo : number(item.substr(dash + 1));
    if (hi < lo) throw bad("range " + item + " is empty");
    if (hi - lo >= (Index(1) << 26)) throw bad("range " + item + " is too long");
    for (Index f = lo; f <= hi; ++f) out.push_back(f);
    at = comma + 1;
  }
  return out;
}

// `list` after checking that every feature is below `d_sae`.
std::vector<Index> checkFeatureList(std::vector<Index> list, Index d_sae, const std::string& sae) {
  for (const Index f : list)
    if (f >= d_sae)
      throw sae::ConfigError(
          "--features: feature " + std::to_string(f) + " is out of range: the SAE in " + sae +
          " has " + std::to_string(d_sae) + " features (0 .. " + std::to_string(d_sae - 1) + ")");
  return list;
}

// The features to show, from the statistics of every feature.
std::vector<Index> selectFeatures(const DashboardOptions& o,
                                  const sae::eval::FeatureStatistics& st) {
  const Index d = st.dSae();
  if (!o.features.empty()) return checkFeatureList(parseFeatureList(o.features), d, o.sae);
  std::vector<Index> all(static_cast<std::size_t>(d));
  for (Index f = 0; f < d; ++f) all[static_cast<std::size_t>(f)] = f;
  if (o.top_by == "density")
    std::stable_sort(all.begin(), all.end(),
                     [&](Index a, Index b) { return st.firingCount(a) > st.firingCount(b); });
  else if (o.top_by == "max")
    std::stable_sort(all.begin(), all.end(),
                     [&](Index a, Index b) { return st.maxActivation(a) > st.maxActivation(b); });
  if (o.n > 0 && o.n < d) all.resize(static_cast<std::size_t>(o.n));
  return all;
}

// One progress line on stderr: redrawn on a terminal, a line every 10 s otherwise.
class PassProgress {
 public:
  explicit PassProgress(bool quiet) : m_quiet(quiet), m_tty(::isatty(2) != 0) {}
  void operator()(int pass, std::int64_t done, std::int64_t total) {
    if (m_quiet) return;
    const auto now = Clock::now();
    const bool last = done == total;
    // On a terminal: redrawn at most 4 times a second; else a line at the end of each pass
    // and every 10 s.
    const double since = std::chrono::duration<double>(now - m_drawn).count();
    if (!last && (m_tty ? pass == m_pass && since < 0.25 : since < 10.0)) return;
    static const char* const kWhat[] = {"", "statistics", "intervals and histograms", "contexts"};
    std::fprintf(
        stderr, "%s%s dashboard: pass %d/3 (%s): %lld / %lld rows  %.1f s%s", m_tty ? "\r" : "",
        kProg, pass, kWhat[pass], static_cast<long long>(done), static_cast<long long>(total),
        std::chrono::duration<double>(now - m_start).count(), m_tty && !last ? "\033[K" : "\n");
    m_pass = pass;
    m_drawn = now;
  }

 private:
  using Clock = std::chrono::steady_clock;
  bool m_quiet, m_tty;
  int m_pass = 0;
  Clock::time_point m_start = Clock::now(), m_drawn = m_start;
};

// The SAE card's "ce_loss_score" and friends from a JSON file `sae eval` printed.
void addEvalFacts(const std::string& path, std::vector<std::pair<std::string, std::string>>& card) {
  const json j = readJsonFile(path);
  bool any = false;
  for (const char* k : {"ce_loss_score", "kl_div_score", "ce_loss_with_sae", "ce_loss_without_sae",
                        "explained_variance"}) {
    if (j.is_object() && j.contains(k) && j[k].is_number()) {
      card.emplace_back(std::string(k) + " (" + fs::path(path).filename().string() + ")",
                        sae::report::formatNumber(j[k].get<double>(), 5));
      any = true;
    }
  }
  if (!any)
    throw sae::FormatError(path +
                           ": --eval expects the JSON `sae eval` prints (with ce_loss_score or "
                           "explained_variance); none of its keys were found");
}

int runDashboard(const DashboardOptions& o, const CLI::App&) {
  if (o.threads > 0) sae::setThreads(o.threads);
  if (!o.features.empty() && (o.top_by != "index" || o.n > 0))
    throw sae::ConfigError("give --features LIST, or --top-by / --n, not both");
  sae::report::DashboardOptions g = o.gather;
  if (o.precision == sae::Precision::Bf16) {
    if (!sae::kernels::bf16Available()) throw sae::ConfigError(sae::kernels::kBf16Unavailable);
    g.bf16 = true;
  }
  const auto loaded = sae::io::loadSae<float>(o.sae);
  // Everything that can be checked is checked before the passes over the data.
  if (!o.features.empty()) checkFeatureList(parseFeatureList(o.features), loaded.dSae(), o.sae);
  std::vector<std::pair<std::string, std::string>> eval_facts;
  if (!o.eval.empty()) addEvalFacts(o.eval, eval_facts);
  sae::report::prepareDashboardFolder(o.out);
  const sae::report::DumpRows rows = sae::report::readDumpRows(o.data);
  std::string hook = o.hook;
  if (hook.empty() && rows.hooks.size() > 1) {
    const auto& meta = loaded.config.metadata;
    if (meta.contains("hook_name") && meta["hook_name"].is_string())
      hook = meta["hook_name"].get<std::string>();
  }
  const sae::io::ActivationFiles files(rows.shardsOf(hook));
  if (hook.empty()) hook = rows.hooks.front().first;
  if (files.cols() != loaded.dIn())
    throw sae::ConfigError(o.data + ": the rows of hook " + hook + " have " +
                           std::to_string(files.cols()) + " columns, but the SAE in " + o.sae +
                           " expects d_in = " + std::to_string(loaded.dIn()));

  sae::report::DashboardPage page;
  page.chunk = o.chunk;
  page.title = o.title.empty() ? "Features of " + fs::path(o.sae).filename().string() : o.title;
#if SAE_CLI_HAS_LM
  std::unique_ptr<sae::lm::Gpt2Tokenizer> tok;
  std::unique_ptr<sae::lm::Gpt2Model> model;
  std::string tok_dir = o.tokenizer.empty() ? o.model : o.tokenizer;
  if (!tok_dir.empty()) {
    if (!o.tokenizer.empty() || fs::exists(tok_dir + "/vocab.json") ||
        fs::exists(tok_dir + "/encoder.json"))
      tok =
          std::make_unique<sae::lm::Gpt2Tokenizer>(sae::lm::Gpt2Tokenizer::fromDirectory(tok_dir));
  }
  if (tok) {
    const auto bad = std::find_if(rows.tokens.begin(), rows.tokens.end(),
                                  [&](std::int32_t t) { return t >= tok->vocabSize(); });
    if (bad != rows.tokens.end())
      throw sae::ConfigError(o.data + "/tokens.npy: token id " + std::to_string(*bad) + " at row " +
                             std::to_string(bad - rows.tokens.begin()) +
                             " is outside the tokenizer's vocabulary of " + tok_dir + " (" +
                             std::to_string(tok->vocabSize()) + " tokens)");
    const sae::lm::Gpt2Tokenizer* t = tok.get();
    page.token_text = [t](std::int32_t id) { return t->idToBytes(id); };
  }
  if (!o.model.empty()) {
    model = std::make_unique<sae::lm::Gpt2Model>(sae::lm::Gpt2Model::load(o.model));
    if (model->tokenEmbedding().cols() != loaded.dIn())
      throw sae::ConfigError("--model " + o.model + ": its d_model is " +
                             std::to_string(model->tokenEmbedding().cols()) +
                             " but the SAE's d_in is " + std::to_string(loaded.dIn()) +
                             " (the logit panels need an SAE on the residual stream)");
  }
#endif
  PassProgress progress(o.quiet);
  g.progress = [&progress](int pass, std::int64_t done, std::int64_t total) {
    progress(pass, done, total);
  };
  const auto t0 = std::chrono::steady_clock::now();
  const sae::report::DashboardData data = sae::report::gatherDashboard(
      loaded, files, rows,
      [&](const sae::eval::FeatureStatistics& st) { return selectFeatures(o, st); }, g);

#if SAE_CLI_HAS_LM
  if (model) {
    std::vector<Index> chosen;
    for (const auto& f : data.features) chosen.push_back(f.feature);
    const sae::Sae<float> runtime(loaded);
    const auto logits = sae::lm::featureLogits(*model, runtime, 10, chosen);
    for (const auto& l : logits) {
      std::vector<sae::report::TokenScore> top, bottom;
      for (const auto& t : l.top) top.push_back({t.token, t.value});
      for (const auto& t : l.bottom) bottom.push_back({t.token, t.value});
      page.logits.emplace_back(std::move(top), std::move(bottom));
    }
  }
#endif
  const auto& st = data.stats;
  page.card = {
      {"SAE", o.sae},
      {"architecture", loaded.config.architecture},
      {"d_in", std::to_string(loaded.dIn())},
      {"d_sae", std::to_string(loaded.dSae())},
      {"hook", hook},
      {"data", o.data + " (" + std::to_string(st.tokens()) + " rows)"},
      {"L0", sae::report::formatNumber(st.meanL0(), 5)},
      {"explained variance", sae::report::formatNumber(data.explained_variance, 5)},
      {"dead features",
       std::to_string(st.deadCount()) + " (" +
           sae::report::formatNumber(100.0 * double(st.deadCount()) / double(st.dSae()), 3) + "%)"},
      {"features shown", std::to_string(data.features.size())}};
  if (!o.model.empty()) page.card.emplace_back("model (logits)", o.model);
  page.card.insert(page.card.end(), eval_facts.begin(), eval_facts.end());
  const auto written = sae::report::writeDashboard(data, rows, page, o.out);
  std::size_t np_files = 0;
  if (!o.neuronpedia.empty()) {
    sae::report::NeuronpediaExport np;
    const auto& meta = loaded.config.metadata;
    np.model_id = o.np_model_id;
    if (np.model_id.empty() && meta.contains("model_name") && meta["model_name"].is_string())
      np.model_id = meta["model_name"].get<std::string>();
    np.sae_set = o.np_sae_set.empty() ? fs::path(o.sae).filename().string() : o.np_sae_set;
    // The layer of a TransformerLens hook name blocks.L.*.
    if (hook.rfind("blocks.", 0) == 0) np.layer = std::atoi(hook.c_str() + 7);
    np.n_tokens_in_prompt = rows.context;
    np.n_prompts_total = rows.windows;
    for (const auto& f : rows.source_names)
      np.dataset += (np.dataset.empty() ? "" : ", ") + fs::path(f).filename().string();
    np_files = sae::report::writeNeuronpediaBatches(data, rows, page, np, o.neuronpedia);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ojson summary = {{"out", written.index},   {"features", data.features.size()},
                   {"rows", st.tokens()},    {"data_files", written.data_files},
                   {"bytes", written.bytes}, {"seconds", secs}};
  if (!o.neuronpedia.empty()) summary["neuronpedia_files"] = np_files;
  std::printf("%s\n", summary.dump().c_str());
  return 0;
}

}  // namespace

Command registerDashboard(CLI::App& app) {
  auto [cmd, sub, o] = newCommand(app, "dashboard", kAbout, runDashboard);
  sub.add_option("--sae", o.sae, "SAE folder (any format `sae info` reads)")->required();
  sub.add_option("--data", o.data,
                 "`sae dump` folder: its activations, and its tokens.npy, positions.npy and "
                 "sources.npy for the text of each row")
      ->required()
      ->check(CLI::ExistingDirectory);
  sub.add_option("--hook", o.hook,
                 "the dump's hook to read (default: its only one, or the SAE's "
                 "metadata.hook_name)");
#if SAE_CLI_HAS_LM
  sub.add_option("--model", o.model,
                 "GPT-2 folder: adds each feature's top and bottom logits (W_dec[f] . W_U), and "
                 "the token text when the folder has the tokenizer's files")
      ->check(CLI::ExistingDirectory);
  sub.add_option("--tokenizer", o.tokenizer,
                 "folder with GPT-2's tokenizer files (vocab.json + merges.txt), for the token "
                 "text (default: --model's; without either, tokens show as #id)")
      ->check(CLI::ExistingDirectory);
#endif
  auto* list = sub.add_option("--features", o.features,
                              "features to show: indices and ranges, e.g. 3,17,40-45 "
                              "(default: every feature)");
  sub.add_option("--top-by", o.top_by,
                 "without --features: order the features by index, density or max activation "
                 "and keep the first --n")
      ->check(CLI::IsMember({"index", "density", "max"}))
      ->capture_default_str()
      ->excludes(list);
  sub.add_option("--n", o.n, "without --features: show this many features (0: all)")
      ->check(CLI::NonNegativeNumber)
      ->excludes(list);
  sub.add_option("--eval", o.eval,
                 "JSON printed by `sae eval` (--model: ce_loss_score, kl_div_score) for the "
                 "SAE's card")
      ->check(CLI::ExistingFile);
  auto* np = sub.add_option("--neuronpedia", o.neuronpedia,
                            "also write the data as SAEDashboard's Neuronpedia batch files "
                            "(batch-N.json) into this folder");
  sub.add_option("--np-model-id", o.np_model_id,
                 "--neuronpedia: model_id (default: the SAE's metadata.model_name)")
      ->needs(np);
  sub.add_option("--np-sae-set", o.np_sae_set,
                 "--neuronpedia: sae_set (default: the SAE folder's name)")
      ->needs(np);
  sub.add_option("--title", o.title, "page title (default: Features of <SAE folder name>)");
  sub.add_option("--contexts", o.gather.top_n, "top-activating contexts per feature")
      ->capture_default_str()
      ->check(CLI::Range(Index(0), sae::eval::FeatureStatistics::kMaxTopN));
  sub.add_option("--intervals", o.gather.intervals,
                 "equal activation intervals of (0, max] sampled per feature (sae_vis's "
                 "quantile groups)")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
  sub.add_option("--interval-samples", o.gather.interval_samples, "contexts per interval")
      ->capture_default_str()
      ->check(CLI::Range(Index(0), Index(1000)));
  sub.add_option("--before", o.gather.before, "tokens of context before the example token")
      ->capture_default_str()
      ->check(CLI::Range(Index(0), Index(1000)));
  sub.add_option("--after", o.gather.after, "tokens of context after it")
      ->capture_default_str()
      ->check(CLI::Range(Index(0), Index(1000)));
  sub.add_option("--neighbours", o.gather.neighbours, "nearest features by decoder cosine")
      ->capture_default_str()
      ->check(CLI::Range(Index(0), Index(1000)));
  sub.add_option("--chunk", o.chunk, "features per data file")
      ->capture_default_str()
      ->check(CLI::Range(Index(1), Index(100000)));
  sub.add_option("--batch", o.gather.batch, "rows per encode")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub.add_option("--threads", o.threads, "threads (0: all)")->check(CLI::NonNegativeNumber);
  addEnumOption<sae::Precision>(sub, "--precision", o.precision,
                                "fp32 (default) or bf16: the encoder product in bf16");
  sub.add_flag("--quiet", o.quiet, "no progress line");
  sub.add_option("--out", o.out, "output folder (created; index.html and data/)")->required();
  return cmd;
}

}  // namespace sae_cli
