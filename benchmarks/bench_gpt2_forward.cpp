// GPT-2 engine benchmark (sae::lm::Gpt2Model): forward throughput with logits and up to a middle
// layer's hook_resid_pre (the `sae dump` case: early stop, no logits), GFLOP/s, the time split
// of one forward by part, and generation ms per token with and without the KV cache.
//
//   bench_gpt2_forward (--model DIR | --random small|gpt2-small [--random-dir DIR])
//                      [--batch 8] [--context 128] [--iters 5] [--warmup 1] [--threads 2]
//                      [--precision fp32|bf16] [--layer L] [--generate 32] [--prompt 16]
//                      [--json FILE]
//
// --random writes a GPT-2 folder with random weights (GPT-2's initialisation: N(0, 0.02), the
// residual projections N(0, 0.02 / sqrt(2 n_layer)), wpe N(0, 0.01), LayerNorms 1 and 0) into
// --random-dir (kept) or a temporary folder (removed at the end). small: 4 layers, d 128,
// 4 heads, vocab 50257, context 128 (the reference model's shape); gpt2-small: 12 layers, d 768,
// 12 heads, vocab 50257, n_positions 1024 (124M parameters).
//
// FLOPs per token (2 per multiply-add): per block 24 d^2 + 4 d T (T: the context; the causal
// half is not subtracted, as usual), the unembedding 2 d vocab. Times are the median of --iters
// timed calls after --warmup untimed ones (generation: one timed run of prompt + --generate
// greedy tokens, after a warm-up run). Tokens are uniform random ids.
//
// The split by part comes from hooks on every hook point that read the clock (one extra
// function call per point and layer): embed (to resid_pre of block 0), attention (ln_1, QKV,
// attention, c_proj: resid_pre -> attn_out), mlp_in (ln_2, c_fc: resid_mid -> mlp.hook_pre),
// gelu, mlp_out (c_proj: mlp.hook_post -> hook_mlp_out), residual adds (the rest inside blocks),
// final (ln_f and the unembedding).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <sae/core/config.hpp>
#include <sae/core/rng.hpp>
#include <sae/io/safetensors.hpp>
#include <sae/kernels/gemm.hpp>
#include <sae/lm/gpt2.hpp>

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using sae::Index;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Shape {
  Index d, layers, heads, vocab, positions;
};

Shape shapeNamed(const std::string& name) {
  if (name == "small") return {128, 4, 4, 50257, 128};
  if (name == "gpt2-small") return {768, 12, 12, 50257, 1024};
  throw sae::ConfigError("--random must be small or gpt2-small, not '" + name + "'");
}

/// Writes config.json and model.safetensors of a GPT-2 with random weights into `dir`.
void writeRandomFolder(const std::string& dir, const Shape& s, std::uint64_t seed) {
  fs::create_directories(dir);
  nlohmann::json cfg = {{"model_type", "gpt2"},
                        {"architectures", {"GPT2LMHeadModel"}},
                        {"n_embd", s.d},
                        {"n_layer", s.layers},
                        {"n_head", s.heads},
                        {"n_positions", s.positions},
                        {"n_ctx", s.positions},
                        {"vocab_size", s.vocab},
                        {"layer_norm_epsilon", 1e-5},
                        {"activation_function", "gelu_new"},
                        {"bos_token_id", 50256},
                        {"eos_token_id", 50256}};
  std::ofstream(fs::path(dir) / "config.json") << cfg.dump(2) << "\n";

  sae::Rng rng(seed, 0x62656e6368ULL);
  std::vector<std::vector<float>> store;
  sae::io::SafetensorsWriter w;
  auto add = [&](const std::string& name, std::vector<Index> shape, double std, double fill) {
    Index n = 1;
    for (Index x : shape) n *= x;
    store.emplace_back(static_cast<std::size_t>(n));
    auto& v = store.back();
    for (auto& x : v) x = static_cast<float>(std > 0 ? std * rng.normal() : fill);
    w.add(name, std::move(shape), v.data());
  };
  store.reserve(static_cast<std::size_t>(4 + 12 * s.layers));
  const Index d = s.d;
  const double proj_std = 0.02 / std::sqrt(2.0 * static_cast<double>(s.layers));
  add("wte.weight", {s.vocab, d}, 0.02, 0);
  add("wpe.weight", {s.positions, d}, 0.01, 0);
  for (Index l = 0; l < s.layers; ++l) {
    const std::string h = "h." + std::to_string(l) + ".";
    add(h + "ln_1.weight", {d}, 0, 1);
    add(h + "ln_1.bias", {d}, 0, 0);
    add(h + "attn.c_attn.weight", {d, 3 * d}, 0.02, 0);
    add(h + "attn.c_attn.bias", {3 * d}, 0, 0);
    add(h + "attn.c_proj.weight", {d, d}, proj_std, 0);
    add(h + "attn.c_proj.bias", {d}, 0, 0);
    add(h + "ln_2.weight", {d}, 0, 1);
    add(h + "ln_2.bias", {d}, 0, 0);
    add(h + "mlp.c_fc.weight", {d, 4 * d}, 0.02, 0);
    add(h + "mlp.c_fc.bias", {4 * d}, 0, 0);
    add(h + "mlp.c_proj.weight", {4 * d, d}, proj_std, 0);
    add(h + "mlp.c_proj.bias", {d}, 0, 0);
  }
  add("ln_f.weight", {d}, 0, 1);
  add("ln_f.bias", {d}, 0, 0);
  w.setMetadata("format", "pt");
  w.write((fs::path(dir) / "model.safetensors").string());
}

template <typename F>
std::vector<double> timeCalls(int warmup, int iters, F&& f) {
  for (int i = 0; i < warmup; ++i) f();
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    const auto t0 = Clock::now();
    f();
    t.push_back(since(t0));
  }
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir, random_shape, random_dir, precision = "fp32", json_path;
  Index batch = 8, context = 128, prompt_len = 16;
  int iters = 5, warmup = 1, threads = 2, layer = -1, generate = 32;
  CLI::App app("GPT-2 forward / generation benchmark (sae::lm::Gpt2Model)");
  auto* model_opt = app.add_option("--model", model_dir, "Hugging Face GPT-2 folder");
  auto* random_opt =
      app.add_option("--random", random_shape, "Random-weight model: small or gpt2-small");
  model_opt->excludes(random_opt);
  app.add_option("--random-dir", random_dir,
                 "Where --random writes its folder (kept; default: a temporary folder)");
  app.add_option("--batch", batch, "Sequences per forward");
  app.add_option("--context", context, "Tokens per sequence");
  app.add_option("--iters", iters, "Timed calls (the median is reported; 0: only write --random)");
  app.add_option("--warmup", warmup, "Untimed calls first");
  app.add_option("--threads", threads, "OpenMP threads");
  app.add_option("--precision", precision, "fp32 or bf16 (setBf16)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_option("--layer", layer,
                 "Block whose hook_resid_pre ends the early-stop forward "
                 "(default n_layer / 2)");
  app.add_option("--generate", generate, "Tokens to generate (0: skip generation)");
  app.add_option("--prompt", prompt_len, "Prompt length of the generation");
  app.add_option("--json", json_path, "Also write the results as JSON");
  CLI11_PARSE(app, argc, argv);
  if (model_dir.empty() == random_shape.empty()) {
    std::fprintf(stderr, "bench_gpt2_forward: give --model DIR or --random small|gpt2-small\n");
    return 2;
  }

  bool remove_dir = false;
  try {
    sae::setThreads(threads);
    std::string dir = model_dir;
    std::string label = model_dir;
    if (!random_shape.empty()) {
      const Shape s = shapeNamed(random_shape);
      if (random_dir.empty()) {
        random_dir = (fs::temp_directory_path() /
                      ("sae_bench_gpt2_" + random_shape + "_" + std::to_string(::getpid())))
                         .string();
        remove_dir = true;
      }
      const auto t0 = Clock::now();
      writeRandomFolder(random_dir, s, 1234);
      std::printf("wrote random %s model to %s in %.1f s\n", random_shape.c_str(),
                  random_dir.c_str(), since(t0));
      dir = random_dir;
      label = "random " + random_shape;
    }
    if (iters < 1) {  // --iters 0: only write the --random folder (scripts/bench_lm.sh)
      if (remove_dir) fs::remove_all(random_dir);
      return 0;
    }

    auto t0 = Clock::now();
    auto model = sae::lm::Gpt2Model::load(dir);
    const double load_s = since(t0);
    if (precision == "bf16") model.setBf16(true);
    const auto& c = model.config();
    if (context > c.n_positions) context = c.n_positions;
    if (layer < 0) layer = static_cast<int>(c.n_layer / 2);
    if (layer >= c.n_layer) layer = static_cast<int>(c.n_layer - 1);
    const double d = static_cast<double>(c.n_embd);
    const double T = static_cast<double>(context);
    const double block_flops = 24 * d * d + 4 * d * T;
    const double unembed_flops = 2 * d * static_cast<double>(c.vocab_size);
    const double full_flops = static_cast<double>(c.n_layer) * block_flops + unembed_flops;
    const double stop_flops = static_cast<double>(layer) * block_flops;
    std::printf(
        "model %s: %lld layers, d %lld, %lld heads, vocab %lld, %.1fM parameters, loaded in "
        "%.2f s\n",
        label.c_str(), static_cast<long long>(c.n_layer), static_cast<long long>(c.n_embd),
        static_cast<long long>(c.n_head), static_cast<long long>(c.vocab_size),
        static_cast<double>(c.parameterCount()) / 1e6, load_s);
    std::printf(
        "batch %lld x context %lld, %d threads, %s, unembedding GEMM on %s\n",
        static_cast<long long>(batch), static_cast<long long>(context), threads, precision.c_str(),
        sae::kernels::gemmUsesOnednn<float>(batch * context, c.vocab_size, c.n_embd) ? "oneDNN"
                                                                                     : "Eigen");

    sae::Rng rng(7, 1);
    sae::lm::TokenMatrix tokens(batch, context);
    for (Index i = 0; i < tokens.size(); ++i)
      tokens.data()[i] =
          static_cast<std::int32_t>(rng.uniform() * static_cast<double>(c.vocab_size - 1));
    const double ntok = static_cast<double>(batch * context);

    sae::RowMatrix<float> logits;
    const auto full_t = timeCalls(warmup, iters, [&] { model.forward(tokens, {}, &logits); });
    const double full_s = median(full_t);

    sae::lm::HookList stop;
    const std::string stop_name = "blocks." + std::to_string(layer) + ".hook_resid_pre";
    stop.add(stop_name, [](sae::lm::HookActivation&) { return sae::lm::HookAction::Stop; });
    const auto stop_t = timeCalls(warmup, iters, [&] { model.forward(tokens, stop, nullptr); });
    const double stop_s = median(stop_t);

    // The split of one forward by part, from clock-reading hooks.
    std::map<std::string, double> split;
    {
      sae::lm::HookList clocks;
      Clock::time_point last;
      std::string part = "embed";
      auto mark = [&](const std::string& next) {
        const auto now = Clock::now();
        split[part] += std::chrono::duration<double>(now - last).count();
        last = now;
        part = next;
      };
      for (const auto& id : sae::lm::hookPoints(static_cast<int>(c.n_layer))) {
        std::string next;
        switch (id.point) {
          case sae::lm::HookPoint::Embed:
          case sae::lm::HookPoint::PosEmbed:
            continue;
          case sae::lm::HookPoint::ResidPre:
            next = "attention";
            break;
          case sae::lm::HookPoint::AttnOut:
          case sae::lm::HookPoint::MlpOut:
            next = "residual adds";
            break;
          case sae::lm::HookPoint::ResidMid:
            next = "mlp_in";
            break;
          case sae::lm::HookPoint::MlpPre:
            next = "gelu";
            break;
          case sae::lm::HookPoint::MlpPost:
            next = "mlp_out";
            break;
          case sae::lm::HookPoint::ResidPost:
            next = "residual adds";
            break;
          case sae::lm::HookPoint::LnFinalNormalized:
            next = "final";
            break;
        }
        clocks.addReader(sae::lm::hookName(id),
                         [&mark, next](const sae::lm::HookActivation&) { mark(next); });
      }
      for (int rep = 0; rep < std::max(1, iters); ++rep) {
        if (rep == 0) split.clear();
        part = "embed";
        last = Clock::now();
        model.forward(tokens, clocks, &logits);
        mark("");
      }
      for (auto& [k, v] : split) v /= std::max(1, iters);
      split.erase("");
    }
    // Ordered as the forward reaches them.
    const std::vector<std::string> parts = {"embed",   "attention",     "mlp_in", "gelu",
                                            "mlp_out", "residual adds", "final"};

    double gen_cached_ms = 0, gen_recompute_ms = 0;
    if (generate > 0) {
      prompt_len = std::min<Index>(prompt_len, c.n_positions - generate);
      std::vector<std::int32_t> prompt(static_cast<std::size_t>(prompt_len));
      for (auto& t : prompt)
        t = static_cast<std::int32_t>(rng.uniform() * static_cast<double>(c.vocab_size - 1));
      sae::lm::Gpt2Sampling greedy;
      auto run = [&](bool cache) {
        greedy.use_cache = cache;
        const auto t = timeCalls(warmup > 0 ? 1 : 0, 1,
                                 [&] { (void)model.generate(prompt, generate, greedy); });
        return median(t) * 1e3 / generate;
      };
      gen_cached_ms = run(true);
      gen_recompute_ms = run(false);
    }

    const double full_tps = ntok / full_s, stop_tps = ntok / stop_s;
    std::printf("\n%-34s %12s %10s %10s\n", "", "tokens/s", "ms/call", "GFLOP/s");
    std::printf("%-34s %12.0f %10.2f %10.1f\n", "forward with logits", full_tps, full_s * 1e3,
                full_flops * ntok / full_s / 1e9);
    std::printf("%-34s %12.0f %10.2f %10.1f\n", ("to " + stop_name + " (stop)").c_str(), stop_tps,
                stop_s * 1e3, stop_flops * ntok / stop_s / 1e9);
    std::printf("\nsplit of one forward with logits (clock hooks), ms:\n");
    double total = 0;
    for (const auto& p : parts) total += split[p];
    for (const auto& p : parts)
      std::printf("  %-16s %8.2f  %5.1f%%\n", p.c_str(), split[p] * 1e3,
                  total > 0 ? 100 * split[p] / total : 0.0);
    if (generate > 0) {
      std::printf("\ngeneration, prompt %lld + %d tokens, greedy, batch 1:\n",
                  static_cast<long long>(prompt_len), generate);
      std::printf("  KV cache          %8.2f ms/token\n", gen_cached_ms);
      std::printf("  full recompute    %8.2f ms/token (%.1fx the cached)\n", gen_recompute_ms,
                  gen_recompute_ms / gen_cached_ms);
    }

    if (!json_path.empty()) {
      nlohmann::json j = {{"engine", "sae"},
                          {"model", label},
                          {"precision", precision},
                          {"threads", threads},
                          {"batch", batch},
                          {"context", context},
                          {"iters", iters},
                          {"layer", layer},
                          {"full_tokens_per_s", full_tps},
                          {"full_ms", full_s * 1e3},
                          {"full_gflops", full_flops * ntok / full_s / 1e9},
                          {"stop_tokens_per_s", stop_tps},
                          {"stop_ms", stop_s * 1e3},
                          {"stop_gflops", stop_flops * ntok / stop_s / 1e9},
                          {"full_times_s", full_t},
                          {"stop_times_s", stop_t}};
      for (const auto& p : parts) j["split_ms"][p] = split[p] * 1e3;
      if (generate > 0) {
        j["generate"] = {{"prompt", prompt_len},
                         {"tokens", generate},
                         {"cached_ms_per_token", gen_cached_ms},
                         {"recompute_ms_per_token", gen_recompute_ms}};
      }
      std::ofstream(json_path) << j.dump(2) << "\n";
    }
    if (remove_dir) fs::remove_all(random_dir);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpt2_forward: %s\n", e.what());
    if (remove_dir) fs::remove_all(random_dir);
    return 1;
  }
}
