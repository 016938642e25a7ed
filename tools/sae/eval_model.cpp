// `sae eval --model`: an SAE spliced into its GPT-2 model at its hook point, with SAELens's
// model-performance metrics (CE-loss recovered, KL divergence; sae/lm/model_eval.hpp) and the
// reconstruction and sparsity metrics of the hook's activations, over token windows of text
// files or token ids.
#include <unistd.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <sae/eval/density_decades.hpp>
#include <sae/lm/gpt2.hpp>
#include <sae/lm/model_eval.hpp>
#include <sae/lm/tokenizer.hpp>

#include "common.hpp"
#include "lm_inputs.hpp"
#include "progress.hpp"

namespace sae_cli {

namespace {

// Windows of `context` tokens (BOS first when `bos` >= 0) cut from each file's ids in order,
// grouped into batches of at most `batch_size` windows of one length: a file's shorter last
// window goes with the others of its length.
std::vector<sae::lm::TokenMatrix> makeBatches(const std::vector<std::vector<std::int32_t>>& files,
                                              Index context, std::int64_t bos, Index batch_size,
                                              Index max_batches) {
  const Index body = context - (bos >= 0 ? 1 : 0);
  std::map<Index, std::vector<std::vector<std::int32_t>>> by_length;
  std::vector<std::vector<std::int32_t>> full;
  for (const auto& ids : files)
    for (std::size_t start = 0; start < ids.size(); start += std::size_t(body)) {
      const std::size_t n = std::min(std::size_t(body), ids.size() - start);
      std::vector<std::int32_t> w;
      if (bos >= 0) w.push_back(static_cast<std::int32_t>(bos));
      w.insert(w.end(), ids.begin() + std::ptrdiff_t(start),
               ids.begin() + std::ptrdiff_t(start + n));
      if (w.size() < 2) continue;  // one token predicts nothing
      (Index(w.size()) == context ? full : by_length[Index(w.size())]).push_back(std::move(w));
    }
  std::vector<sae::lm::TokenMatrix> out;
  auto pack = [&](const std::vector<std::vector<std::int32_t>>& ws) {
    for (std::size_t i = 0; i < ws.size(); i += std::size_t(batch_size)) {
      if (max_batches > 0 && Index(out.size()) >= max_batches) return;
      const std::size_t n = std::min(std::size_t(batch_size), ws.size() - i);
      sae::lm::TokenMatrix m(Index(n), Index(ws[i].size()));
      for (std::size_t b = 0; b < n; ++b)
        for (std::size_t t = 0; t < ws[i].size(); ++t) m(Index(b), Index(t)) = ws[i + b][t];
      out.push_back(std::move(m));
    }
  };
  pack(full);
  for (auto it = by_length.rbegin(); it != by_length.rend(); ++it) pack(it->second);
  return out;
}

// One progress line on stderr, redrawn on a terminal, every 10 s otherwise.
class BatchProgress {
 public:
  explicit BatchProgress(bool quiet) : m_quiet(quiet), m_tty(!quiet && ::isatty(2) != 0) {}
  void operator()(std::size_t done, std::size_t total, std::int64_t tokens) {
    if (m_quiet) return;
    const auto now = Clock::now();
    const bool last = done == total;
    if (!last && std::chrono::duration<double>(now - m_drawn).count() < (m_tty ? 0.25 : 10.0))
      return;
    m_drawn = now;
    const double elapsed = std::chrono::duration<double>(now - m_start).count();
    const double left = done > 0 ? elapsed * double(total - done) / double(done) : -1.0;
    std::fprintf(stderr, "%s%s eval: batch %zu / %zu, %.0f tokens/s (3 forwards each), %s %s%s",
                 m_tty ? "\r" : "", kProg, done, total,
                 elapsed > 0 ? double(tokens) / elapsed : 0.0, last ? "took" : "ETA",
                 formatDuration(last ? elapsed : left).c_str(),
                 m_tty ? (last ? "\n" : "  ") : "\n");
  }

 private:
  using Clock = std::chrono::steady_clock;
  bool m_quiet, m_tty;
  Clock::time_point m_start = Clock::now();
  Clock::time_point m_drawn = Clock::now() - std::chrono::hours(1);
};

// JSON number, or null for NaN / infinity (JSON has neither).
ojson number(double v) { return std::isfinite(v) ? ojson(v) : ojson(nullptr); }

}  // namespace

ojson evaluateInModel(const InferenceOptions& in, const ModelEvalArgs& a) {
  const bool bf16 = in.prepare();
  if (a.text.empty() == a.tokens.empty())
    throw sae::ConfigError(
        "--model needs the evaluation tokens as --text FILE... or --tokens "
        "ids.npy (one of them)");
  const auto loaded = sae::io::loadSae<float>(in.sae);
  sae::lm::Gpt2LoadOptions load;
  load.bf16 = bf16;
  sae::lm::Gpt2Model model = sae::lm::Gpt2Model::load(a.model, load);
  const sae::lm::Gpt2Config& cfg = model.config();

  // The hook: --hook, or the SAE's own; they must agree unless --force.
  const std::string hook =
      resolveSaeHook(loaded, in.sae, a.hook, a.force, a.model, cfg.n_layer, cfg.n_embd);
  if (a.context < 2 || a.context > cfg.n_positions)
    throw sae::ConfigError("--context " + std::to_string(a.context) + " must be in [2, " +
                           std::to_string(cfg.n_positions) + "] (the model's n_positions)");

  // Tokens, windows and the special ids (BOS / EOS / PAD are one id in GPT-2).
  const bool is_text = !a.text.empty();
  std::unique_ptr<sae::lm::Gpt2Tokenizer> tok;
  if (is_text)
    tok = std::make_unique<sae::lm::Gpt2Tokenizer>(sae::lm::Gpt2Tokenizer::fromDirectory(a.model));
  const std::int64_t bos_id = tok ? tok->eotId() : cfg.bos_token_id;
  if (a.prepend_bos && (bos_id < 0 || bos_id >= cfg.vocab_size))
    throw sae::ConfigError(
        bos_id < 0 ? a.model + "/config.json has no bos_token_id: give --no-prepend-bos"
                   : "the BOS id " + std::to_string(bos_id) + " is outside the model's vocabulary");
  std::vector<std::int32_t> special;
  if (bos_id >= 0 && bos_id < cfg.vocab_size) special.push_back(static_cast<std::int32_t>(bos_id));
  std::vector<std::vector<std::int32_t>> ids;
  for (const std::string& p : is_text ? a.text : std::vector<std::string>{a.tokens})
    ids.push_back(readTokenIds(p, is_text, tok.get(), cfg.vocab_size));
  const std::vector<sae::lm::TokenMatrix> batches =
      makeBatches(ids, a.context, a.prepend_bos ? bos_id : -1, a.batch_size, a.batches);
  if (batches.empty())
    throw sae::ConfigError("no window of at least two tokens in the input (" +
                           std::to_string(ids.size()) + " files)");

  sae::Sae<float> sae(loaded);
  if (bf16) sae.setBf16(true);
  sae::lm::DownstreamAccumulator acc(special);
  sae::lm::SaeSplice splice(sae, special, hook);
  const sae::lm::ActivationHook replace =
      [&splice](sae::lm::ActivationRef x, const sae::lm::TokenMatrix& t) { splice(x, t); };
  const sae::lm::HookedRun run = sae::lm::gpt2Run(model, hook);
  RowMatrix<float> clean, with_sae, ablated;
  BatchProgress progress(a.quiet);
  std::int64_t tokens = 0;
  for (std::size_t i = 0; i < batches.size(); ++i) {
    sae::lm::addDownstreamBatch(run, replace, batches[i], acc, clean, with_sae, ablated);
    tokens += batches[i].size();
    progress(i + 1, batches.size(), tokens);
  }
  const sae::lm::DownstreamMetrics m = acc.result();
  if (m.ce_positions == 0)
    throw sae::ConfigError("every evaluated position holds a special token: nothing to score");

  ojson out;
  out["sae"] = in.sae;
  out["architecture"] = loaded.config.architecture;
  out["model"] = a.model;
  out["hook_name"] = hook;
  out["context_size"] = a.context;
  out["prepend_bos"] = a.prepend_bos;
  out["special_tokens"] = special;
  out["sequences"] = m.sequences;
  out["tokens"] = m.tokens;
  out["rows"] = splice.reconstruction().tokens();
  out["mse"] = splice.reconstruction().mse();
  out["explained_variance"] = splice.reconstruction().explainedVariance();
  out["fvu"] = splice.reconstruction().fvu();
  out["l0"] = splice.firing().l0();
  out["dead_fraction"] = splice.firing().deadFraction();
  out["ce_positions"] = m.ce_positions;
  out["ce_loss_without_sae"] = number(m.ce_loss_without_sae);
  out["ce_loss_with_sae"] = number(m.ce_loss_with_sae);
  out["ce_loss_with_ablation"] = number(m.ce_loss_with_ablation);
  out["ce_loss_score"] = number(m.ce_loss_score);
  out["kl_positions"] = m.kl_positions;
  out["kl_div_with_sae"] = number(m.kl_div_with_sae);
  out["kl_div_with_ablation"] = number(m.kl_div_with_ablation);
  out["kl_div_score"] = number(m.kl_div_score);
  return out;
}

}  // namespace sae_cli
