// `sae attribute`: direct logit attribution of an SAE's features at one position of a prompt
// (sae/lm/attribution.hpp): act_f * (W_dec[f] . W_U[:, target]) for the active features, and
// each listed feature's direct logit effect W_dec[f] . W_U (top and bottom tokens).
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <sae/lm/attribution.hpp>
#include <sae/lm/gpt2.hpp>
#include <sae/lm/tokenizer.hpp>
#include <sae/runtime/sae.hpp>

#include "common.hpp"
#include "lm_inputs.hpp"

namespace sae_cli {

namespace {

struct AttributeOptions {
  std::string sae;
  std::string model;
  std::string hook;
  bool force = false;
  std::string prompt;
  bool prepend_bos = true;
  std::string target;
  std::int64_t target_id = -1;
  std::int64_t position = -1;
  Index top = 10;
  bool json = false;
};

constexpr const char* kAbout =
    "direct logit attribution of SAE features at one position of a prompt (direct path only: "
    "no final LayerNorm scale, no later layers)";

ojson tokenList(const std::vector<sae::lm::TokenValue>& tokens, const sae::lm::Gpt2Tokenizer& tok,
                const char* key) {
  ojson a = ojson::array();
  for (const auto& t : tokens)
    a.push_back({{"token", t.token}, {"text", tok.decode(&t.token, 1)}, {key, t.value}});
  return a;
}

int runAttribute(const AttributeOptions& o, const CLI::App& sub) {
  const bool by_text = sub.count("--target") > 0, by_id = sub.count("--target-id") > 0;
  if (by_text && by_id) throw sae::ConfigError("give --target or --target-id, not both");
  if (o.top < 1) throw sae::ConfigError("--top must be >= 1");
  sae::lm::Gpt2Model model = sae::lm::Gpt2Model::load(o.model);
  const sae::lm::Gpt2Config& cfg = model.config();
  const sae::lm::Gpt2Tokenizer tok = sae::lm::Gpt2Tokenizer::fromDirectory(o.model);
  const auto loaded = sae::io::loadSae<float>(o.sae);
  const std::string hook =
      resolveSaeHook(loaded, o.sae, o.hook, o.force, o.model, cfg.n_layer, cfg.n_embd);
  if (sae::lm::hookWidth(sae::lm::parseHookName(hook, int(cfg.n_layer)), cfg.n_embd) != cfg.n_embd)
    throw sae::ConfigError("attribution needs a hook of width d_model (the residual stream); " +
                           hook + " is not");
  const std::vector<std::int32_t> ids = promptIds(o.prompt, tok, o.prepend_bos);
  const Index n = static_cast<Index>(ids.size());
  if (n > cfg.n_positions)
    throw sae::ConfigError("the prompt is " + std::to_string(n) +
                           " tokens, longer than the model's context of " +
                           std::to_string(cfg.n_positions) + " (n_positions)");
  const Index pos = o.position < 0 ? n - 1 : static_cast<Index>(o.position);
  if (pos >= n)
    throw sae::ConfigError("--position " + std::to_string(o.position) +
                           " is outside the prompt's " + std::to_string(n) + " tokens [0, " +
                           std::to_string(n) + ")");

  sae::Vector<float> x;
  sae::lm::HookList hooks;
  hooks.addReader(hook,
                  [&](const sae::lm::HookActivation& a) { x = a.value.row(pos).transpose(); });
  RowMatrix<float> logits;
  model.forward(ids.data(), 1, n, hooks, &logits);
  const sae::Vector<float> next = logits.row(pos).transpose();

  std::int32_t target = 0;
  if (by_id) {
    if (o.target_id < 0 || o.target_id >= cfg.vocab_size)
      throw sae::ConfigError("--target-id " + std::to_string(o.target_id) +
                             " is outside the vocabulary [0, " + std::to_string(cfg.vocab_size) +
                             ")");
    target = static_cast<std::int32_t>(o.target_id);
  } else if (by_text) {
    const std::vector<std::int32_t> t = tok.encode(o.target, "--target");
    if (t.size() != 1) {
      std::string list;
      for (std::int32_t id : t) list += (list.empty() ? "" : ", ") + std::to_string(id);
      throw sae::ConfigError("--target '" + o.target + "' is " + std::to_string(t.size()) +
                             " tokens [" + list +
                             "], not one: give one token (GPT-2 tokens "
                             "often start with a space) or --target-id");
    }
    target = t[0];
  } else {
    target = sae::lm::topTokens(next, 1)[0].token;
  }

  sae::Sae<float> sae(loaded);
  const std::vector<sae::lm::FeatureAttribution> all =
      sae::lm::attributeLogit(model, sae, x, target);
  double total = 0.0;
  for (const auto& a : all) total += a.contribution;
  const std::size_t shown = std::min<std::size_t>(all.size(), static_cast<std::size_t>(o.top));
  const sae::steer::DecoderUnits units = sae::lm::decoderUnits(sae);

  ojson out;
  out["sae"] = o.sae;
  out["model"] = o.model;
  out["hook_name"] = hook;
  out["prompt"] = o.prompt;
  out["prompt_ids"] = ids;
  out["position"] = pos;
  out["token_at_position"] = ids[static_cast<std::size_t>(pos)];
  out["target"] = target;
  out["target_text"] = tok.decode(&target, 1);
  out["target_logit"] = next[target];
  out["active_features"] = all.size();
  out["total_contribution"] = total;
  out["features"] = ojson::array();
  for (std::size_t i = 0; i < shown; ++i) {
    const auto& a = all[i];
    const sae::Vector<float> effect =
        sae::lm::directLogitEffect(model, sae::lm::decoderRowInHookUnits(sae, a.feature, units));
    out["features"].push_back(
        {{"feature", a.feature},
         {"activation", a.activation},
         {"dla", a.dla},
         {"contribution", a.contribution},
         {"top_logits", tokenList(sae::lm::topTokens(effect, 5), tok, "effect")},
         {"bottom_logits", tokenList(sae::lm::topTokens(effect, 5, false), tok, "effect")}});
  }
  if (o.json) {
    std::printf("%s\n", out.dump(2, ' ', false, ojson::error_handler_t::replace).c_str());
    return 0;
  }
  std::printf(
      "target %d %s (logit %.4f) at position %lld of %lld; %zu active features, total "
      "direct contribution %.6g\n",
      target, out["target_text"].dump(-1, ' ', false, ojson::error_handler_t::replace).c_str(),
      double(next[target]), static_cast<long long>(pos), static_cast<long long>(n), all.size(),
      total);
  std::printf("%8s %12s %12s %14s  top / bottom direct-effect tokens\n", "feature", "activation",
              "dla", "contribution");
  for (const auto& f : out["features"]) {
    std::string top, bottom;
    for (const auto& t : f["top_logits"])
      top += " " + t["text"].dump(-1, ' ', false, ojson::error_handler_t::replace);
    for (const auto& t : f["bottom_logits"])
      bottom += " " + t["text"].dump(-1, ' ', false, ojson::error_handler_t::replace);
    std::printf("%8lld %12.5g %12.5g %14.6g  +%s / -%s\n",
                static_cast<long long>(f["feature"].get<Index>()), f["activation"].get<double>(),
                f["dla"].get<double>(), f["contribution"].get<double>(), top.c_str(),
                bottom.c_str());
  }
  return 0;
}

}  // namespace

Command registerAttribute(CLI::App& app) {
  auto [cmd, sub, o] = newCommand<AttributeOptions>(app, "attribute", kAbout, runAttribute);
  sub.add_option("--sae", o.sae, "SAE folder (any format sae::io::loadSae reads)")->required();
  sub.add_option("--model", o.model,
                 "GPT-2 model folder (config.json, model.safetensors, vocab.json + merges.txt)")
      ->required()
      ->check(CLI::ExistingDirectory);
  sub.add_option("--hook", o.hook, "hook point (default: the SAE's cfg.json hook_name)");
  sub.add_flag("--force", o.force, "use --hook even when the SAE's cfg.json names another");
  sub.add_option("--prompt", o.prompt, "the text")->required();
  sub.add_flag("--prepend-bos,!--no-prepend-bos", o.prepend_bos,
               "start the prompt with <|endoftext|> (default: on)");
  sub.add_option("--target", o.target, "the logit's token, as text that is exactly one token");
  sub.add_option("--target-id", o.target_id, "the logit's token id");
  sub.add_option("--position", o.position, "position in the prompt, BOS included (default: last)");
  sub.add_option("--top", o.top, "features listed")->capture_default_str();
  sub.add_flag("--json", o.json, "print JSON");
  return cmd;
}

}  // namespace sae_cli
