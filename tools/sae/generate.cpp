// `sae generate`: text from a GPT-2 model, greedy or sampled, optionally with an SAE's features
// steered (--steer f:c adds c W_dec[f] to the hook's activation at every position), clamped
// (--clamp f=v) or ablated (--ablate f) through the feature editor (sae::Sae::edit, error term
// kept).
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
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

struct GenerateOptions {
  std::string model;
  std::string prompt;
  Index max_new = 32;
  double temperature = 0.0;
  Index top_k = 0;
  std::uint64_t seed = 0;
  bool prepend_bos = true;
  bool json = false;
  std::string sae;
  std::string hook;
  bool force = false;
  std::vector<std::string> steer, clamp, ablate;
};

constexpr const char* kAbout =
    "generate text from a GPT-2 model, optionally steering, clamping or ablating SAE features";

// A feature index: the whole of `s` an integer in [0, d_sae).
Index parseFeature(const std::string& s, Index d_sae, const std::string& flag,
                   const std::string& arg) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || end != s.c_str() + s.size() || errno != 0)
    throw sae::ConfigError(flag + " " + arg + ": '" + s + "' is not a feature index");
  if (v < 0 || v >= d_sae)
    throw sae::ConfigError(flag + " " + arg + ": feature " + s + " is out of range [0, " +
                           std::to_string(d_sae) + ")");
  return static_cast<Index>(v);
}

// A finite number: the whole of `s`.
double parseNumber(const std::string& s, const std::string& flag, const std::string& arg) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size())
    throw sae::ConfigError(flag + " " + arg + ": '" + s + "' is not a number");
  if (!std::isfinite(v))
    throw sae::ConfigError(flag + " " + arg + ": '" + s + "' is not a finite number");
  return v;
}

// "F<sep>V" split at the first `sep`.
std::pair<std::string, std::string> splitPair(const std::string& arg, char sep,
                                              const std::string& flag, const char* form) {
  const std::size_t at = arg.find(sep);
  if (at == std::string::npos) throw sae::ConfigError(flag + " " + arg + ": expected " + form);
  return {arg.substr(0, at), arg.substr(at + 1)};
}

struct Steering {
  Index feature;
  float coefficient;
};

int runGenerate(const GenerateOptions& o, const CLI::App&) {
  const bool edits_given = !o.steer.empty() || !o.clamp.empty() || !o.ablate.empty();
  if (edits_given && o.sae.empty())
    throw sae::ConfigError(
        "--steer, --clamp and --ablate need the SAE whose features they name: "
        "give --sae (and --hook unless its cfg.json names one)");
  if (!o.sae.empty() && !edits_given)
    throw sae::ConfigError("--sae is given but no --steer, --clamp or --ablate");
  if (o.max_new < 0) throw sae::ConfigError("--max-new-tokens must be >= 0");
  if (!(o.temperature >= 0.0) || !std::isfinite(o.temperature))
    throw sae::ConfigError("--temperature must be a finite number >= 0");
  if (o.top_k < 0) throw sae::ConfigError("--top-k must be >= 0");

  sae::lm::Gpt2Model model = sae::lm::Gpt2Model::load(o.model);
  const sae::lm::Gpt2Config& cfg = model.config();
  const sae::lm::Gpt2Tokenizer tok = sae::lm::Gpt2Tokenizer::fromDirectory(o.model);
  const std::vector<std::int32_t> prompt = promptIds(o.prompt, tok, o.prepend_bos);
  const Index n = static_cast<Index>(prompt.size());
  if (n + o.max_new > cfg.n_positions)
    throw sae::ConfigError("the prompt is " + std::to_string(n) + " tokens; with " +
                           std::to_string(o.max_new) +
                           " new tokens it is longer than the model's context of " +
                           std::to_string(cfg.n_positions) + " (n_positions)");

  // The SAE and its edits, run by one hook on every row the forward gives it.
  sae::lm::HookList hooks;
  std::optional<sae::Sae<float>> sae;
  std::vector<Steering> steering;
  sae::steer::EditList edits;
  std::vector<sae::Vector<float>> directions;
  if (!o.sae.empty()) {
    const auto loaded = sae::io::loadSae<float>(o.sae);
    const std::string hook =
        resolveSaeHook(loaded, o.sae, o.hook, o.force, o.model, cfg.n_layer, cfg.n_embd);
    sae.emplace(loaded);
    const Index d_sae = sae->dSae();
    for (const std::string& a : o.steer) {
      const auto [f, c] = splitPair(a, ':', "--steer", "FEATURE:COEF");
      const Index feature = parseFeature(f, d_sae, "--steer", a);
      steering.push_back({feature, static_cast<float>(parseNumber(c, "--steer", a))});
      // W_dec[f] as stored, in the SAE's units, as SAELens's steering adds it (for an SAE with
      // normalize_activations, those are its normalised units: no rescaling is applied).
      directions.push_back(sae->visitModel([&](const auto& m) {
        return sae::Vector<float>(m.parameters().rowMajor("W_dec").row(feature).transpose());
      }));
    }
    for (const std::string& a : o.clamp) {
      const auto [f, v] = splitPair(a, '=', "--clamp", "FEATURE=VALUE");
      edits.push_back(sae::steer::FeatureEdit::set(parseFeature(f, d_sae, "--clamp", a),
                                                   parseNumber(v, "--clamp", a)));
    }
    for (const std::string& a : o.ablate)
      edits.push_back(sae::steer::FeatureEdit::zero(parseFeature(a, d_sae, "--ablate", a)));
    hooks.add(hook, [&](sae::lm::HookActivation& act) {
      if (!edits.empty()) sae->edit(act.value, edits);
      for (std::size_t i = 0; i < steering.size(); ++i)
        sae::steer::addDirection(act.value, directions[i], steering[i].coefficient);
      return sae::lm::HookAction::Continue;
    });
  }

  sae::lm::Gpt2Sampling sampling;
  sampling.temperature = o.temperature;
  sampling.top_k = o.top_k;
  sampling.seed = o.seed;
  const std::vector<std::int32_t> ids = model.generate(prompt, o.max_new, sampling, hooks);
  const std::string text = o.prompt + tok.decode(ids);
  if (!o.json) {
    std::printf("%s\n", text.c_str());
    return 0;
  }

  // The logits of each step: one forward of the whole sequence with the same hooks (they act
  // on every row, so row n - 1 + s holds what step s chose from, to rounding).
  ojson out;
  out["prompt"] = o.prompt;
  out["prompt_ids"] = prompt;
  out["ids"] = ids;
  out["text"] = text;
  out["steps"] = ojson::array();
  if (!ids.empty()) {
    std::vector<std::int32_t> all(prompt);
    all.insert(all.end(), ids.begin(), ids.end() - 1);
    RowMatrix<float> logits;
    model.forward(all.data(), 1, static_cast<Index>(all.size()), hooks, &logits);
    for (std::size_t s = 0; s < ids.size(); ++s) {
      const sae::Vector<float> row = logits.row(n - 1 + static_cast<Index>(s)).transpose();
      ojson step;
      step["token"] = ids[s];
      step["text"] = tok.decode(&ids[s], 1);
      step["top_logits"] = ojson::array();
      for (const sae::lm::TokenValue& t : sae::lm::topTokens(row, 5))
        step["top_logits"].push_back(
            {{"token", t.token}, {"text", tok.decode(&t.token, 1)}, {"logit", t.value}});
      out["steps"].push_back(std::move(step));
    }
  }
  std::printf("%s\n", out.dump(2, ' ', false, ojson::error_handler_t::replace).c_str());
  return 0;
}

}  // namespace

Command registerGenerate(CLI::App& app) {
  auto [cmd, sub, o] = newCommand<GenerateOptions>(app, "generate", kAbout, runGenerate);
  sub.add_option("--model", o.model,
                 "GPT-2 model folder (config.json, model.safetensors, vocab.json + merges.txt)")
      ->required()
      ->check(CLI::ExistingDirectory);
  sub.add_option("--prompt", o.prompt, "the text to continue")->required();
  sub.add_option("--max-new-tokens", o.max_new, "tokens to generate")->capture_default_str();
  sub.add_option("--temperature", o.temperature, "0: greedy; otherwise sample softmax(logits/T)")
      ->capture_default_str();
  sub.add_option("--top-k", o.top_k, "with --temperature: sample among the k largest (0: all)")
      ->capture_default_str();
  sub.add_option("--seed", o.seed, "seed of the sampler")->capture_default_str();
  sub.add_flag("--prepend-bos,!--no-prepend-bos", o.prepend_bos,
               "start the prompt with <|endoftext|> (default: on)");
  sub.add_flag("--json", o.json,
               "print {prompt, prompt_ids (BOS included), ids, text, steps: [{token, text, "
               "top_logits}]}");
  sub.add_option("--sae", o.sae, "SAE whose features --steer / --clamp / --ablate name");
  sub.add_option("--hook", o.hook, "hook point of the SAE (default: its cfg.json's hook_name)");
  sub.add_flag("--force", o.force, "use --hook even when the SAE's cfg.json names another");
  sub.add_option("--steer", o.steer,
                 "FEATURE:COEF: add COEF * W_dec[FEATURE] (as stored) to the hook's activation at "
                 "every position; repeatable");
  sub.add_option("--clamp", o.clamp,
                 "FEATURE=VALUE: set the feature's code to VALUE at every position (error term "
                 "kept); repeatable");
  sub.add_option("--ablate", o.ablate,
                 "FEATURE: set the feature's code to 0 at every position (error term kept); "
                 "repeatable");
  return cmd;
}

}  // namespace sae_cli
