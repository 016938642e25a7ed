// `sae eval`: reconstruction and sparsity metrics of an SAE on activation files, and with
// --features the per-feature statistics.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include <sae/eval/density_decades.hpp>
#include <sae/io/activation_files.hpp>
#include <sae/io/atomic_write.hpp>
#include <sae/io/npy.hpp>

#if SAE_CLI_HAS_LM
#include <sae/lm/attribution.hpp>
#include <sae/lm/gpt2.hpp>
#include <sae/lm/tokenizer.hpp>
#endif

#include "common.hpp"

namespace sae_cli {

constexpr const char* kAbout =
    "Reconstruction and sparsity metrics of an SAE on activation files, as JSON";

namespace {

// `sae eval --features`: where to write the per-feature statistics and with what.
struct FeatureArgs {
  std::string out;                     // OUT.json; empty = no feature statistics
  Index top_n = 20;                    // top activations kept per feature
  std::vector<std::string> token_ids;  // integer .npy files, one id per activation row
};

struct EvalOptions {
  InferenceOptions in;
  Index max_rows = 0;
  FeatureArgs features;
  ModelEvalArgs model;
};

// The token ids of --token-ids: the integer .npy files concatenated in order (each flattened in
// C order), cut to the first `rows` ids, as the FeatureStatistics::toJson TokenIds concept.
class TokenIdFiles {
 public:
  explicit TokenIdFiles(const std::vector<std::string>& paths) {
    for (const auto& p : paths) {
      m_files.push_back(std::make_unique<sae::io::NpyIntegerReader>(p));
      m_first.push_back(m_total);
      m_total += m_files.back()->size();
      m_names += (m_names.empty() ? "" : ", ") + p;
    }
    m_size = m_total;
  }
  Index total() const { return m_total; }
  const std::string& names() const { return m_names; }
  void limit(Index rows) { m_size = std::min(rows, m_total); }
  Index size() const { return m_size; }
  std::int64_t operator[](Index row) const {
    const auto at = std::upper_bound(m_first.begin(), m_first.end(), row) - m_first.begin() - 1;
    return (*m_files[std::size_t(at)])[row - m_first[std::size_t(at)]];
  }

 private:
  std::vector<std::unique_ptr<sae::io::NpyIntegerReader>> m_files;
  std::vector<Index> m_first;
  Index m_total = 0, m_size = 0;
  std::string m_names;
};

// The density histogram as `sae eval` prints it: [{"bucket": label, "latents": count}...].
ojson densityHistogram(const Eigen::VectorXd& density) {
  const auto decades = sae::eval::DensityDecades::of(density);
  ojson hist = ojson::array();
  for (std::size_t i = 0; i < decades.counts.size(); ++i)
    hist.push_back(
        {{"bucket", sae::eval::DensityDecades::kLabels[i]}, {"latents", decades.counts[i]}});
  return hist;
}

#if SAE_CLI_HAS_LM
// `sae eval --features --model DIR`: per feature, the 10 top and bottom tokens of its direct
// logit effect W_dec[f] . W_U ("top_logits" / "bottom_logits": [{token, text, value}...]; text
// when DIR has GPT-2's tokenizer files).
void addFeatureLogits(ojson& fj, const std::string& dir, const sae::Sae<float>& sae) {
  const sae::lm::Gpt2Model model = sae::lm::Gpt2Model::load(dir);
  std::unique_ptr<sae::lm::Gpt2Tokenizer> tok;
  if (std::ifstream(dir + "/vocab.json") || std::ifstream(dir + "/encoder.json"))
    tok = std::make_unique<sae::lm::Gpt2Tokenizer>(sae::lm::Gpt2Tokenizer::fromDirectory(dir));
  const std::vector<sae::lm::FeatureLogits> logits = sae::lm::featureLogits(model, sae, 10);
  auto list = [&](const std::vector<sae::lm::TokenValue>& tv) {
    ojson a = ojson::array();
    for (const auto& t : tv) {
      ojson e = {{"token", t.token}};
      if (tok) e["text"] = tok->decode(&t.token, 1);  // may cut a character: dumped lossily
      e["value"] = t.value;
      a.push_back(std::move(e));
    }
    return a;
  };
  for (auto& f : fj["features"]) {
    const auto& l = logits.at(f.at("feature").get<std::size_t>());
    f["top_logits"] = list(l.top);
    f["bottom_logits"] = list(l.bottom);
  }
  fj["summary"]["model"] = dir;
}
#endif

}  // namespace

int runEval(const EvalOptions& o, const CLI::App&) {
  const bool in_model = !o.model.text.empty() || !o.model.tokens.empty();
  if (in_model) {
    if (!o.in.data.empty())
      throw sae::ConfigError(
          "give --data (activation files) or --text / --tokens with --model "
          "(the SAE in its model), not both");
    if (!o.features.out.empty())
      throw sae::ConfigError("--features reads activation files: give --data");
    std::printf("%s\n", evaluateInModel(o.in, o.model).dump(2).c_str());
    return 0;
  }
  if (o.in.data.empty())
    throw sae::ConfigError(
        "give the activations as --data FILE..., or the SAE's model as "
        "--model DIR with --text FILE... or --tokens ids.npy");
  if (!o.model.model.empty() && o.features.out.empty())
    throw sae::ConfigError(
        "--model with --data adds the features' top and bottom logits to --features: give "
        "--features OUT.json, or --text / --tokens to evaluate the SAE in its model");
  const bool bf16 = o.in.prepare();
  const FeatureArgs& fa = o.features;
  const auto loaded = sae::io::loadSae<float>(o.in.sae);
  const sae::io::ActivationFiles files(expandDumpFolders(o.in.data));
  checkWidth(loaded, files.cols(), o.in.sae);
  const sae::ActivationNormalizer normalizer = loaded.normalizer();
  const Index d_sae = loaded.config.sae_cfg.d_sae;
  const Index N = o.max_rows > 0 ? std::min(o.max_rows, files.rows()) : files.rows();
  sae::eval::ReconstructionMetrics recon;
  sae::eval::FiringStats firing(d_sae);
  // Feature statistics: rows are read in file order (no shuffling), so row b of the pass is
  // row b of the concatenated --data files, and of the --token-ids files. Everything is checked
  // and the output file opened before the pass, so that a bad path fails at once.
  std::unique_ptr<sae::eval::FeatureStatistics> features;
  std::unique_ptr<TokenIdFiles> ids;
  std::unique_ptr<sae::io::AtomicFileWriter> features_out;
  if (!fa.out.empty()) {
    features = std::make_unique<sae::eval::FeatureStatistics>(d_sae, fa.top_n);
    if (!fa.token_ids.empty()) {
      ids = std::make_unique<TokenIdFiles>(fa.token_ids);
      if (ids->total() != files.rows() && ids->total() != N)
        throw sae::ConfigError(ids->names() + ": " + std::to_string(ids->total()) +
                               " token ids, but the activation files have " +
                               std::to_string(files.rows()) + " rows" +
                               (N != files.rows() ? " (" + std::to_string(N) + " evaluated)" : "") +
                               "; give exactly one token id per activation row, in the same order");
      ids->limit(N);
    }
    features_out = std::make_unique<sae::io::AtomicFileWriter>(fa.out);
  }
  RowMatrix<float> x, raw;
  sae::NormalizationStats stats;
  for (Index b = 0; b < N; b += o.in.batch) {
    const Index n = std::min(o.in.batch, N - b);
    raw.resize(n, files.cols());
    files.readRows<float>(b, b + n, raw);
    x = raw;
    normalizer.normalize(x, stats);
    std::visit(
        [&](const auto& model) {
          const auto codes = encodeChunk(model, x, bf16);
          RowMatrix<float> y = model.decode(codes);
          normalizer.denormalize(y, stats);
          recon.add<float>(raw, y);
          firing.add(codes);
          if (features) features->add(codes, b);
        },
        loaded.model);
  }
  ojson out;
  out["sae"] = o.in.sae;
  out["architecture"] = loaded.config.architecture;
  out["rows"] = recon.tokens();
  out["mse"] = recon.mse();
  out["explained_variance"] = recon.explainedVariance();
  out["fvu"] = recon.fvu();
  out["l0"] = firing.l0();
  out["dead_fraction"] = firing.deadFraction();
  out["density_histogram"] = densityHistogram(firing.density());
  if (features) {
    ojson fj = ids ? features->toJson(*ids, ids->names()) : features->toJson();
    fj["summary"]["sae"] = o.in.sae;
    fj["summary"]["data"] = o.in.data;
    if (ids) fj["summary"]["token_id_files"] = fa.token_ids;
#if SAE_CLI_HAS_LM
    if (!o.model.model.empty()) addFeatureLogits(fj, o.model.model, sae::Sae<float>(loaded));
#endif
    const std::string text = fj.dump(-1, ' ', false, ojson::error_handler_t::replace) + "\n";
    features_out->write(text.data(), text.size());
    features_out->commit();
    std::fprintf(stderr, "%s eval: feature statistics of %lld rows x %lld features -> %s\n", kProg,
                 static_cast<long long>(N), static_cast<long long>(d_sae), fa.out.c_str());
  }
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}

Command registerEval(CLI::App& app) {
  auto [cmd, sub, o] = newCommand(app, "eval", kAbout, runEval);
  o.in.add(sub, "SAE folder or Gemma Scope params.npz", /*data_optional=*/SAE_CLI_HAS_LM != 0);
  sub.add_option("--max-rows", o.max_rows, "use at most this many rows (0: all)")
      ->check(CLI::NonNegativeNumber);
  auto* feat = sub.add_option("--features", o.features.out,
                              "also write per-feature statistics (firing frequency, mean / max "
                              "activation, top rows, log10-density histogram) to this JSON file");
  sub.add_option("--top-n", o.features.top_n, "--features: top activations kept per feature")
      ->check(CLI::Range(Index(0), sae::eval::FeatureStatistics::kMaxTopN))
      ->needs(feat);
  sub.add_option("--token-ids", o.features.token_ids,
                 "--features: integer .npy files with one token id per activation row, in "
                 "the order of --data")
      ->check(CLI::ExistingFile)
      ->needs(feat);
#if SAE_CLI_HAS_LM
  ModelEvalArgs& m = o.model;
  auto* model = sub.add_option("--model", m.model,
                               "GPT-2 folder: evaluate the SAE spliced into it at its hook "
                               "(CE-loss recovered and KL divergence, as SAELens computes them) "
                               "over --text or --tokens; with --data and --features, each "
                               "feature's top and bottom logits (W_dec[f] . W_U)")
                    ->check(CLI::ExistingDirectory);
  sub.add_option("--hook", m.hook, "--model: hook point (default: the SAE's metadata.hook_name)")
      ->needs(model);
  auto* text = sub.add_option("--text", m.text, "--model: UTF-8 text files to evaluate on")
                   ->check(CLI::ExistingFile)
                   ->needs(model);
  sub.add_option("--tokens", m.tokens, "--model: 1-D integer .npy of token ids to evaluate on")
      ->check(CLI::ExistingFile)
      ->needs(model)
      ->excludes(text);
  sub.add_option("--context", m.context, "--model: tokens per window, BOS included")
      ->capture_default_str()
      ->needs(model);
  sub.add_flag("--prepend-bos,!--no-prepend-bos", m.prepend_bos,
               "--model: start each window with <|endoftext|> (special: never scored)")
      ->needs(model);
  sub.add_option("--batches", m.batches, "--model: at most this many batches (0: every window)")
      ->check(CLI::NonNegativeNumber)
      ->needs(model);
  sub.add_option("--batch-size", m.batch_size, "--model: windows per batch")
      ->capture_default_str()
      ->check(CLI::PositiveNumber)
      ->needs(model);
  sub.add_flag("--force", m.force, "--model: allow a --hook other than the SAE's own")
      ->needs(model);
  sub.add_flag("--quiet", m.quiet, "--model: no progress line")->needs(model);
#endif
  return cmd;
}

}  // namespace sae_cli
