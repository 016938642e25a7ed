/// @file gpt2.hpp
/// @brief Gpt2Model: a GPT-2-family language model in C++ (Hugging Face folders, F32 / F16 /
/// BF16), with TransformerLens's hook points, batched causal attention and a KV cache for
/// generation.
///
/// **Loading.** `Gpt2Model::load(dir)` reads `dir/config.json` (`n_embd`, `n_layer`, `n_head`,
/// `n_positions` or `n_ctx`, `vocab_size`, `layer_norm_epsilon`, `activation_function`, which
/// must be `gelu_new`) and `dir/model.safetensors` with GPT-2's tensor names, bare or with the
/// `transformer.` prefix of GPT2LMHeadModel checkpoints: `wte.weight [vocab, d]`,
/// `wpe.weight [n_positions, d]`, per block `h.{i}.ln_1.{weight,bias} [d]`,
/// `h.{i}.attn.c_attn.{weight [d, 3d], bias [3d]}`, `h.{i}.attn.c_proj.{weight [d, d], bias}`,
/// `h.{i}.ln_2.*`, `h.{i}.mlp.c_fc.{weight [d, 4d], bias}`, `h.{i}.mlp.c_proj.{weight [4d, d],
/// bias}`, `ln_f.{weight,bias}`. Linear layers are Conv1D: y = x W + b with W `[in, out]`. The
/// unembedding is tied to `wte` (an `lm_head.weight` is accepted only when equal to it); the
/// `attn.bias` / `attn.masked_bias` buffers are ignored. Every config value, tensor name, shape
/// and dtype is checked before any weight is read, and every weight must be finite; problems are
/// FormatError / IoError naming the file and the tensor.
///
/// **Hook values.** With `Gpt2LoadOptions::tl_processing` (the default), hooks see the values of
/// TransformerLens's `HookedTransformer.from_pretrained` (`fold_ln`, `center_writing_weights`,
/// `center_unembed`), on which SAELens SAEs are trained: every write into the residual stream is
/// centred (its mean over d_model removed), so `hook_embed`, `hook_pos_embed`, `hook_attn_out`,
/// `hook_mlp_out` and `hook_resid_*` are the Hugging Face values minus their per-token mean;
/// `mlp.hook_pre` / `mlp.hook_post` are the Hugging Face values; `ln_final.hook_normalized` is
/// (x - mean) / sqrt(var + eps), the final LayerNorm's weight and bias being folded into the
/// unembedding. Centring changes no logit: every reader of the residual stream is a LayerNorm,
/// which removes the mean. Without it, hooks see Hugging Face's values (and
/// `ln_final.hook_normalized` includes ln_f's weight and bias).
///
/// **Logits** are Hugging Face's (TransformerLens's `center_unembed` logits differ from them by
/// a per-token constant, which no softmax sees).
///
/// **Cost.** Per token and block: 24 d^2 FLOPs in four products (QKV, attention output, MLP in
/// and out, through kernels::gemm: oneDNN when available, or Bf16Matmul with setBf16(true)),
/// plus 4 d L for attention over L positions; the unembedding 2 d vocab per token. A forward
/// without logits and whose last hook is in block l stops after that hook. Buffers grow to the
/// largest call and are reused: a warm forward or generation step allocates nothing.
///
/// Not thread-safe: one call at a time per Gpt2Model (each call is OpenMP-parallel inside).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <sae/core/config.hpp>
#include <sae/core/error.hpp>
#include <sae/core/rng.hpp>
#include <sae/core/types.hpp>
#include <sae/io/safetensors.hpp>
#include <sae/kernels/bf16_matmul.hpp>
#include <sae/kernels/gemm.hpp>
#include <sae/lm/hooks.hpp>

namespace sae::lm {

/// Token ids `[batch, seq]`, row-major.
using TokenMatrix = Eigen::Matrix<std::int32_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// @brief A GPT-2 config.json's values.
struct Gpt2Config {
  Index n_embd = 0;       ///< d_model.
  Index n_layer = 0;      ///< Blocks.
  Index n_head = 0;       ///< Attention heads (n_embd divisible by it).
  Index n_positions = 0;  ///< Longest window.
  Index vocab_size = 0;   ///< Tokens.
  double layer_norm_epsilon = 1e-5;
  /// `bos_token_id` of config.json (50256 for GPT-2), -1 when it has none.
  std::int64_t bos_token_id = -1;

  Index headDim() const { return n_embd / n_head; }
  /// Parameters (the tied unembedding counted once): 124,439,808 for GPT-2 small.
  std::int64_t parameterCount() const {
    const std::int64_t d = n_embd;
    const std::int64_t block =
        4 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d);
    return (std::int64_t(vocab_size) + n_positions) * d + n_layer * block + 2 * d;
  }

  /// @brief Reads and checks a Hugging Face GPT-2 config.json; errors name `path` and the key.
  static Gpt2Config fromFile(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw IoError("cannot open GPT-2 config '" + path + "'");
    nlohmann::json j;
    try {
      in >> j;
    } catch (const nlohmann::json::exception& e) {
      throw FormatError(path + ": invalid JSON: " + e.what());
    }
    return fromJson(j, path);
  }

  /// @brief The config of a parsed config.json (`source` names it in errors).
  static Gpt2Config fromJson(const nlohmann::json& j, const std::string& source) {
    auto fail = [&](const std::string& what) -> FormatError {
      return FormatError(source + ": " + what);
    };
    if (!j.is_object()) throw fail("the config is not a JSON object");
    if (j.contains("model_type") &&
        !(j["model_type"].is_string() && j["model_type"].get<std::string>() == "gpt2"))
      throw fail("model_type is " + j["model_type"].dump() + ", expected \"gpt2\"");
    auto integer = [&](const char* key, const char* alt, std::int64_t lo,
                       std::int64_t hi) -> Index {
      const char* used = key;
      if (!j.contains(key) && alt != nullptr && j.contains(alt)) used = alt;
      if (!j.contains(used)) throw fail(std::string("missing key '") + key + "'");
      const auto& v = j[used];
      if (!v.is_number_integer())
        throw fail(std::string("'") + used + "' must be an integer, found " + v.dump());
      const auto x = v.get<std::int64_t>();
      if (x < lo || x > hi)
        throw fail(std::string("'") + used + "' = " + std::to_string(x) + " is outside [" +
                   std::to_string(lo) + ", " + std::to_string(hi) + "]");
      return static_cast<Index>(x);
    };
    Gpt2Config c;
    c.n_embd = integer("n_embd", nullptr, 1, 65536);
    c.n_layer = integer("n_layer", nullptr, 1, 1024);
    c.n_head = integer("n_head", nullptr, 1, 4096);
    c.n_positions = integer("n_positions", "n_ctx", 1, 1 << 20);
    c.vocab_size = integer("vocab_size", nullptr, 1, 1 << 24);
    if (c.n_embd % c.n_head != 0)
      throw fail("n_embd " + std::to_string(c.n_embd) + " is not divisible by n_head " +
                 std::to_string(c.n_head));
    if (j.contains("layer_norm_epsilon")) {
      const auto& e = j["layer_norm_epsilon"];
      if (!e.is_number() || !(e.get<double>() > 0.0) || !std::isfinite(e.get<double>()))
        throw fail("'layer_norm_epsilon' must be a positive number, found " + e.dump());
      c.layer_norm_epsilon = e.get<double>();
    }
    if (j.contains("bos_token_id") && !j["bos_token_id"].is_null())
      c.bos_token_id = integer("bos_token_id", nullptr, 0, c.vocab_size - 1);
    if (j.contains("activation_function")) {
      const auto& a = j["activation_function"];
      if (!a.is_string() || a.get<std::string>() != "gelu_new")
        throw fail("activation_function " + a.dump() +
                   " is not supported (GPT-2's is \"gelu_new\")");
    }
    for (const char* key :
         {"n_inner", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"}) {
      if (!j.contains(key) || j[key].is_null() || j[key] == false) continue;
      if (std::string(key) == "n_inner" && j[key].is_number_integer() &&
          j[key].get<std::int64_t>() == 4 * c.n_embd)
        continue;
      throw fail(std::string("'") + key + "' = " + j[key].dump() + " is not supported");
    }
    return c;
  }
};

/// @brief How Gpt2Model::load prepares the model.
struct Gpt2LoadOptions {
  /// Hooks see TransformerLens's values (centred residual writes, see the file comment).
  bool tl_processing = true;
  /// Run the big products in bf16 (fp32 accumulation) through oneDNN; needs oneDNN.
  bool bf16 = false;
};

/// @brief How Gpt2Model::generate picks tokens.
struct Gpt2Sampling {
  double temperature = 0.0;      ///< 0: greedy (argmax); otherwise softmax(logits / temperature).
  Index top_k = 0;               ///< With temperature > 0: sample among the k largest (0: all).
  std::uint64_t seed = 0;        ///< Seed of the sampler.
  std::int32_t stop_token = -1;  ///< Stop after generating this token (-1: never).
  bool use_cache = true;         ///< KV cache; false recomputes the whole window per token.
};

namespace detail {

/// A grow-only float buffer viewed as a row-major matrix.
struct GrowBuffer {
  std::vector<float> data;
  Eigen::Map<RowMatrix<float>> view(Index rows, Index cols) {
    const auto need = static_cast<std::size_t>(rows * cols);
    if (data.size() < need) data.resize(need);
    return Eigen::Map<RowMatrix<float>>(data.data(), rows, cols);
  }
};

/// A Conv1D layer: W [in, out] (stored column-major: each output's weights contiguous), b [out].
struct Linear {
  ColMatrix<float> W;
  Vector<float> b;
#if SAE_HAS_ONEDNN
  std::unique_ptr<kernels::Bf16Matmul> bf16;
#endif

  /// out = x W, without the bias: the callers add it in their fused row passes.
  template <typename In, typename Out>
  void multiply(const In& x, Out&& out) {
#if SAE_HAS_ONEDNN
    if (bf16) {
      bf16->multiply(x, out);
    } else {
      kernels::gemm(out, x, W);
    }
#else
    kernels::gemm(out, x, W);
#endif
  }
};

struct Block {
  Vector<float> ln1_w, ln1_b, ln2_w, ln2_b;
  Linear attn, proj, fc, out;
};

/// The hooks of one call, resolved to hook points.
struct ResolvedHook {
  HookId id;
  const HookList::Entry* entry;
  int order;  // position of the point in forward order
};

inline int hookOrder(const HookId& id) {
  switch (id.point) {
    case HookPoint::Embed:
      return 0;
    case HookPoint::PosEmbed:
      return 1;
    case HookPoint::LnFinalNormalized:
      return std::numeric_limits<int>::max();
    default:
      return 2 + id.layer * 7 +
             (static_cast<int>(id.point) - static_cast<int>(HookPoint::ResidPre));
  }
}

}  // namespace detail

/// @brief A GPT-2-family model: weights, hook dispatch, and reusable buffers.
class Gpt2Model {
 public:
  /// @brief Loads a Hugging Face GPT-2 folder (config.json + model.safetensors).
  static Gpt2Model load(const std::string& dir, const Gpt2LoadOptions& options = {}) {
    namespace fs = std::filesystem;
    if (!fs::is_directory(dir)) throw IoError("GPT-2 model folder '" + dir + "' does not exist");
    Gpt2Model m;
    m.m_config = Gpt2Config::fromFile((fs::path(dir) / "config.json").string());
    m.m_tl = options.tl_processing;
    const std::string weights = (fs::path(dir) / "model.safetensors").string();
    if (!fs::exists(weights)) {
      std::string hint;
      if (fs::exists(fs::path(dir) / "pytorch_model.bin"))
        hint =
            " (the folder has pytorch_model.bin: save it as safetensors, e.g. with "
            "model.save_pretrained(dir, safe_serialization=True))";
      throw IoError("GPT-2 weights '" + weights + "' do not exist" + hint);
    }
    m.readWeights(io::SafetensorsFile(weights));
    if (options.bf16) m.setBf16(true);
    return m;
  }

  const Gpt2Config& config() const noexcept { return m_config; }
  bool tlProcessing() const noexcept { return m_tl; }
  bool bf16() const noexcept { return m_bf16; }

  /// @brief Token embedding `wte [vocab, d]` (also the unembedding: logits = final · wteᵀ).
  const RowMatrix<float>& tokenEmbedding() const noexcept { return m_wte; }
  /// @brief Position embedding `wpe [n_positions, d]`.
  const RowMatrix<float>& positionEmbedding() const noexcept { return m_wpe; }
  /// @brief The final LayerNorm's weight and bias.
  const Vector<float>& finalNormWeight() const noexcept { return m_lnf_w; }
  const Vector<float>& finalNormBias() const noexcept { return m_lnf_b; }

  /// @brief Runs the big products in bf16 (oneDNN, AMX where the CPU has it) or back in fp32.
  void setBf16(bool on) {
#if SAE_HAS_ONEDNN
    for (auto& blk : m_blocks) {
      for (detail::Linear* lin : {&blk.attn, &blk.proj, &blk.fc, &blk.out}) {
        if (on) {
          lin->bf16 = std::make_unique<kernels::Bf16Matmul>();
          lin->bf16->setWeights(lin->W);
        } else {
          lin->bf16.reset();
        }
      }
    }
    if (on) {
      m_unembed_bf16 = std::make_unique<kernels::Bf16Matmul>();
      m_unembed_bf16->setWeights(m_wte.transpose());
    } else {
      m_unembed_bf16.reset();
    }
    m_bf16 = on;
#else
    if (on) throw ConfigError("bf16 needs oneDNN, which this build does not have");
#endif
  }

  /// @brief The forward of `tokens [batch, seq]`.
  /// @param hooks   Hooks to run (names checked; an unknown one is a ConfigError listing the
  ///                valid names).
  /// @param logits  When given, resized to `[batch * seq, vocab]` (rows batch-major) and filled,
  ///                unless a hook stops the forward. Without it the forward ends after the last
  ///                hook.
  /// @return true when a hook stopped the forward.
  bool forward(const TokenMatrix& tokens, const HookList& hooks = HookList(),
               RowMatrix<float>* logits = nullptr) {
    return forward(tokens.data(), tokens.rows(), tokens.cols(), hooks, logits);
  }

  /// @brief As above with tokens `[batch, seq]` row-major in the caller's memory.
  bool forward(const std::int32_t* tokens, Index batch, Index seq, const HookList& hooks,
               RowMatrix<float>* logits) {
    resolveHooks(hooks);
    checkTokens(tokens, batch, seq, 0);
    prepareCache(batch, seq, seq);
    if (logits != nullptr) logits->resize(batch * seq, m_config.vocab_size);
    return run(tokens, batch, seq, 0, logits != nullptr ? Logits::All : Logits::None,
               logits != nullptr ? logits->data() : nullptr);
  }

  /// @brief Generates up to `max_new` tokens after `prompt` (batch 1); returns the new ids.
  ///
  /// With the KV cache, the prompt runs once and each new token is one position of work; hooks
  /// then see the prompt's rows in the first call and one row per later call (position given in
  /// HookActivation::position). prompt + max_new must fit in n_positions.
  std::vector<std::int32_t> generate(const std::vector<std::int32_t>& prompt, Index max_new,
                                     const Gpt2Sampling& sampling = Gpt2Sampling(),
                                     const HookList& hooks = HookList()) {
    const Index n = static_cast<Index>(prompt.size());
    if (n == 0) throw ConfigError("generate: the prompt is empty");
    if (max_new < 0) throw ConfigError("generate: max_new must be >= 0");
    if (n + max_new > m_config.n_positions)
      throw ConfigError(sae::detail::concat("generate: the prompt (", n, " tokens) plus ", max_new,
                                            " new tokens is longer than the model's n_positions ",
                                            m_config.n_positions));
    if (!(sampling.temperature >= 0.0) || !std::isfinite(sampling.temperature))
      throw ConfigError("generate: the temperature must be a finite number >= 0");
    if (sampling.top_k < 0) throw ConfigError("generate: top_k must be >= 0");
    resolveHooks(hooks);
    checkTokens(prompt.data(), 1, n, 0);
    std::vector<std::int32_t> seq(prompt);
    seq.reserve(static_cast<std::size_t>(n + max_new));
    std::vector<std::int32_t> out;
    out.reserve(static_cast<std::size_t>(max_new));
    Rng rng(sampling.seed, 0x67656eULL);
    m_last_logits.resize(m_config.vocab_size);
    for (Index step = 0; step < max_new; ++step) {
      bool stopped = false;
      if (sampling.use_cache) {
        if (step == 0) {
          prepareCache(1, n + max_new, n);
          stopped = run(seq.data(), 1, n, 0, Logits::Last, m_last_logits.data());
        } else {
          stopped = run(&seq.back(), 1, 1, n + step - 1, Logits::Last, m_last_logits.data());
        }
      } else {
        const Index len = static_cast<Index>(seq.size());
        prepareCache(1, len, len);
        stopped = run(seq.data(), 1, len, 0, Logits::Last, m_last_logits.data());
      }
      if (stopped) throw ConfigError("generate: a hook stopped the forward; no token to sample");
      const std::int32_t next = sample(sampling, rng);
      seq.push_back(next);
      out.push_back(next);
      if (next == sampling.stop_token) break;
    }
    return out;
  }

  /// @brief The logits of the last position of the last generate() step, `[vocab]`.
  const Vector<float>& lastLogits() const noexcept { return m_last_logits; }

 private:
  enum class Logits { None, All, Last };

  Gpt2Model() = default;

  // ---------------------------------------------------------------- loading

  void readWeights(const io::SafetensorsFile& file) {
    const Gpt2Config& c = m_config;
    const Index d = c.n_embd;
    const std::string& path = file.path();
    std::string prefix;
    if (file.contains("wte.weight")) {
      prefix = "";
    } else if (file.contains("transformer.wte.weight")) {
      prefix = "transformer.";
    } else {
      throw FormatError(path +
                        ": no tensor 'wte.weight' (nor 'transformer.wte.weight'): not a "
                        "GPT-2 checkpoint");
    }
    // Every expected tensor with its shape; checked before anything is read.
    std::vector<std::pair<std::string, std::vector<Index>>> expected = {
        {"wte.weight", {c.vocab_size, d}},
        {"wpe.weight", {c.n_positions, d}},
        {"ln_f.weight", {d}},
        {"ln_f.bias", {d}}};
    for (Index l = 0; l < c.n_layer; ++l) {
      const std::string h = "h." + std::to_string(l) + ".";
      const std::vector<std::pair<std::string, std::vector<Index>>> block = {
          {h + "ln_1.weight", {d}},
          {h + "ln_1.bias", {d}},
          {h + "attn.c_attn.weight", {d, 3 * d}},
          {h + "attn.c_attn.bias", {3 * d}},
          {h + "attn.c_proj.weight", {d, d}},
          {h + "attn.c_proj.bias", {d}},
          {h + "ln_2.weight", {d}},
          {h + "ln_2.bias", {d}},
          {h + "mlp.c_fc.weight", {d, 4 * d}},
          {h + "mlp.c_fc.bias", {4 * d}},
          {h + "mlp.c_proj.weight", {4 * d, d}},
          {h + "mlp.c_proj.bias", {d}}};
      expected.insert(expected.end(), block.begin(), block.end());
    }
    auto shapeText = [](const std::vector<Index>& s) {
      std::string t = "[";
      for (std::size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
      return t + "]";
    };
    std::vector<std::string> known;
    for (const auto& [name, shape] : expected) {
      const std::string full = prefix + name;
      if (!file.contains(full))
        throw FormatError(path + ": missing tensor '" + full + "' (expected shape " +
                          shapeText(shape) + ")");
      const io::TensorInfo& info = file.info(full);
      if (info.shape != shape)
        throw FormatError(path + ": tensor '" + full + "' has shape " + shapeText(info.shape) +
                          ", config.json implies " + shapeText(shape));
      if (info.dtype != "F32" && info.dtype != "F16" && info.dtype != "BF16")
        throw FormatError(path + ": tensor '" + full + "' has dtype " + info.dtype +
                          "; GPT-2 weights must be F32, F16 or BF16");
      known.push_back(full);
    }
    std::sort(known.begin(), known.end());
    bool has_lm_head = false;
    for (const std::string& name : file.names()) {
      if (std::binary_search(known.begin(), known.end(), name)) continue;
      const bool buffer =
          name.size() > 10 && (name.compare(name.size() - 10, 10, ".attn.bias") == 0 ||
                               name.find(".attn.masked_bias") != std::string::npos);
      if (buffer && name.rfind(prefix + "h.", 0) == 0) continue;
      if (name == "lm_head.weight") {
        has_lm_head = true;
        continue;
      }
      throw FormatError(path + ": unexpected tensor '" + name + "' in a GPT-2 checkpoint");
    }

    auto read = [&](const std::string& name) {
      RowMatrix<float> t = file.read<float>(prefix + name);
      if (!t.allFinite())
        throw FormatError(path + ": tensor '" + prefix + name + "' holds NaN or infinity");
      return t;
    };
    auto vec = [&](const std::string& name) -> Vector<float> { return read(name).transpose(); };
    auto linear = [&](const std::string& name, detail::Linear& lin) {
      lin.W = read(name + ".weight");  // [in, out], now column-major
      lin.b = vec(name + ".bias");
    };
    m_wte = read("wte.weight");
    m_wpe = read("wpe.weight");
    m_lnf_w = vec("ln_f.weight");
    m_lnf_b = vec("ln_f.bias");
    m_blocks.resize(static_cast<std::size_t>(c.n_layer));
    for (Index l = 0; l < c.n_layer; ++l) {
      const std::string h = "h." + std::to_string(l) + ".";
      detail::Block& b = m_blocks[static_cast<std::size_t>(l)];
      b.ln1_w = vec(h + "ln_1.weight");
      b.ln1_b = vec(h + "ln_1.bias");
      b.ln2_w = vec(h + "ln_2.weight");
      b.ln2_b = vec(h + "ln_2.bias");
      linear(h + "attn.c_attn", b.attn);
      linear(h + "attn.c_proj", b.proj);
      linear(h + "mlp.c_fc", b.fc);
      linear(h + "mlp.c_proj", b.out);
    }
    if (has_lm_head) {
      const io::TensorInfo& info = file.info("lm_head.weight");
      if (info.shape != std::vector<Index>{c.vocab_size, d} ||
          file.read<float>("lm_head.weight") != m_wte)
        throw FormatError(path +
                          ": 'lm_head.weight' differs from the token embedding; only "
                          "GPT-2's tied unembedding is supported");
    }
  }

  // ---------------------------------------------------------------- checks and setup

  void checkTokens(const std::int32_t* tokens, Index batch, Index seq, Index position) const {
    if (batch < 1 || seq < 1)
      throw ConfigError(
          sae::detail::concat("GPT-2 forward: empty token batch [", batch, ", ", seq, "]"));
    if (position + seq > m_config.n_positions)
      throw ConfigError(sae::detail::concat("GPT-2 forward: a window of ", position + seq,
                                            " tokens is longer than the model's n_positions ",
                                            m_config.n_positions));
    for (Index i = 0; i < batch * seq; ++i) {
      if (tokens[i] < 0 || tokens[i] >= m_config.vocab_size)
        throw ConfigError(sae::detail::concat(
            "GPT-2 forward: token id ", tokens[i], " at [", i / seq, ", ", i % seq,
            "] is outside the vocabulary [0, ", m_config.vocab_size, ")"));
    }
  }

  /// Resolves hook names to hook points; the same names as the last call's are not parsed
  /// again (so that a warm forward allocates nothing).
  void resolveHooks(const HookList& hooks) {
    const auto& entries = hooks.entries();
    bool same = entries.size() == m_hooks.size();
    for (std::size_t i = 0; same && i < entries.size(); ++i)
      same = m_hook_names[i] == entries[i].name;
    if (same) {
      for (std::size_t i = 0; i < entries.size(); ++i) m_hooks[i].entry = &entries[i];
      return;
    }
    m_hooks.clear();
    m_hook_names.clear();
    m_last_order = -1;
    for (const auto& e : entries) {
      const HookId id = parseHookName(e.name, static_cast<int>(m_config.n_layer));
      const int order = detail::hookOrder(id);
      m_hooks.push_back({id, &e, order});
      m_hook_names.push_back(e.name);
      m_last_order = std::max(m_last_order, order);
    }
  }

  /// Sizes the KV cache for `batch` sequences of up to `capacity` positions, and the attention
  /// scores for calls of up to `seq` new positions.
  void prepareCache(Index batch, Index capacity, Index seq) {
    m_cache_batch = batch;
    m_cache_capacity = capacity;
    const Index d = m_config.n_embd;
    const auto threads = static_cast<std::size_t>(maxThreads());
    if (m_scores.size() < threads) m_scores.resize(threads);
    for (auto& s : m_scores) s.view(seq, capacity);
    m_keys.resize(static_cast<std::size_t>(m_config.n_layer));
    m_values.resize(static_cast<std::size_t>(m_config.n_layer));
    for (Index l = 0; l < m_config.n_layer; ++l) {
      m_keys[static_cast<std::size_t>(l)].view(batch * capacity, d);
      m_values[static_cast<std::size_t>(l)].view(batch * capacity, d);
    }
  }

  // ---------------------------------------------------------------- the forward

  /// Runs the hooks at `id` on `value`; true when one asks to stop, or when this was the last
  /// hooked point and nothing after it is wanted.
  template <typename Value>
  bool hookPoint(HookId id, Value& value, Index batch, Index seq, Index position, Logits want) {
    bool stop = false;
    int order = -1;
    for (const auto& h : m_hooks) {
      if (h.id != id) continue;
      order = h.order;
      HookActivation act{Eigen::Map<RowMatrix<float>>(value.data(), value.rows(), value.cols()),
                         id,
                         h.entry->name,
                         batch,
                         seq,
                         position};
      if (h.entry->fn(act) == HookAction::Stop) {
        stop = true;
        m_stopped_by_hook = true;
      }
    }
    return stop || (want == Logits::None && order >= 0 && order == m_last_order);
  }

  template <typename M>
  static void centreRows(M& x) {
    const Index rows = x.rows();
    SAE_PRAGMA_OMP(parallel for schedule(static) if (rows * x.cols() >= 65536))
    for (Index r = 0; r < rows; ++r) x.row(r).array() -= x.row(r).mean();
  }

  /// out = (x - mean) / sqrt(var + eps) [* w + b when w is given].
  template <typename In, typename Out>
  void layerNorm(const In& x, Out& out, const Vector<float>* w, const Vector<float>* b) const {
    const Index rows = x.rows();
    const Index d = x.cols();
    const float eps = static_cast<float>(m_config.layer_norm_epsilon);
    SAE_PRAGMA_OMP(parallel for schedule(static) if (rows * d >= 65536))
    for (Index r = 0; r < rows; ++r) {
      const float mean = x.row(r).mean();
      const float var = (x.row(r).array() - mean).square().sum() / static_cast<float>(d);
      const float inv = 1.0f / std::sqrt(var + eps);
      if (w != nullptr) {
        out.row(r) =
            (((x.row(r).array() - mean) * inv) * w->transpose().array() + b->transpose().array())
                .matrix();
      } else {
        out.row(r) = ((x.row(r).array() - mean) * inv).matrix();
      }
    }
  }

  /// Causal attention of the `seq` new positions (from `position`) of each sequence over the
  /// cached keys and values 0 .. position + seq - 1 of block l; qkv [batch * seq, 3d] is the QKV
  /// product without its bias, which is added here (in the same pass as the copy of the keys
  /// and values into the cache).
  ///
  /// Each (sequence, head) task takes its queries in chunks of kQueryChunk rows: a chunk's
  /// scores cover only the keys its last query sees, so the masked upper triangle is mostly
  /// not computed (at 128 positions, 62% of the full products' work).
  template <typename Qkv, typename Z>
  void attention(Index l, Qkv& qkv, const Vector<float>& bias, Z& z, Index batch, Index seq,
                 Index position) {
    const Index d = m_config.n_embd;
    const Index H = m_config.n_head;
    const Index hd = m_config.headDim();
    const Index len = position + seq;
    const Index rows = batch * seq;
    auto keys = m_keys[static_cast<std::size_t>(l)].view(m_cache_batch * m_cache_capacity, d);
    auto values = m_values[static_cast<std::size_t>(l)].view(m_cache_batch * m_cache_capacity, d);
    const Index cap = m_cache_capacity;
    SAE_PRAGMA_OMP(parallel for schedule(static) if (rows * d >= 65536))
    for (Index r = 0; r < rows; ++r) {
      qkv.row(r) += bias.transpose();
      const Index dst = (r / seq) * cap + position + r % seq;
      keys.row(dst) = qkv.row(r).segment(d, d);
      values.row(dst) = qkv.row(r).segment(2 * d, d);
    }
    // The per-thread score buffers were sized by prepareCache (seq x capacity covers a chunk).
    const Index chunk = std::min(seq, kQueryChunk);
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    const Index tasks = batch * H;
    SAE_PRAGMA_OMP(parallel for schedule(dynamic, 1) if (tasks > 1 && seq * len * hd >= 4096))
    for (Index task = 0; task < tasks; ++task) {
      const Index b = task / H;
      const Index h = task % H;
      for (Index i0 = 0; i0 < seq; i0 += chunk) {
        const Index n = std::min(chunk, seq - i0);
        const Index vis = position + i0 + n;  // keys seen by the chunk's last query
        auto scores = m_scores[static_cast<std::size_t>(threadIndex())].view(n, vis);
        const auto q = qkv.block(b * seq + i0, h * hd, n, hd);
        const auto k = keys.block(b * cap, h * hd, vis, hd);
        const auto v = values.block(b * cap, h * hd, vis, hd);
        scores.noalias() = q * k.transpose();
        for (Index i = 0; i < n; ++i) {
          const Index visible = position + i0 + i + 1;
          auto row = scores.row(i).head(visible).array();
          row *= scale;
          const float mx = row.maxCoeff();
          row = (row - mx).exp();
          row *= 1.0f / row.sum();
          if (visible < vis) scores.row(i).tail(vis - visible).setZero();
        }
        z.block(b * seq + i0, h * hd, n, hd).noalias() = scores * v;
      }
    }
  }

  /// Query rows per chunk of attention().
  static constexpr Index kQueryChunk = 32;

  bool hooked(const HookId& id) const {
    for (const auto& h : m_hooks)
      if (h.id == id) return true;
    return false;
  }

  /// The row pass after a product that writes into the residual stream, fused where no hook
  /// needs the value in between: tmp += bias, centred (TransformerLens); [hook `write`];
  /// resid += tmp; [hooks `at_resid`]; ln = LayerNorm(resid) * w + b when w is given. Returns
  /// true when a hook stopped the forward.
  template <typename Tmp, typename Resid, typename Ln, typename At>
  bool residualWrite(Tmp& tmp, const Vector<float>& bias, HookId write, Resid& resid,
                     std::initializer_list<HookId> at_resid, Ln& ln, const Vector<float>* w,
                     const Vector<float>* b, At&& at) {
    const bool fuse_add = !hooked(write);
    bool fuse_ln = w != nullptr;
    for (const HookId& id : at_resid) fuse_ln = fuse_ln && !hooked(id);
    const Index rows = tmp.rows();
    const Index d = tmp.cols();
    const bool tl = m_tl;
    SAE_PRAGMA_OMP(parallel for schedule(static) if (rows * d >= 65536))
    for (Index r = 0; r < rows; ++r) {
      auto t = tmp.row(r).array();
      t += bias.transpose().array();
      if (tl) t -= t.mean();
      if (fuse_add) {
        resid.row(r) += tmp.row(r);
        if (fuse_ln) layerNormRow(resid.row(r), ln.row(r), *w, *b);
      }
    }
    if (!fuse_add) {
      if (at(write, tmp)) return true;
      SAE_PRAGMA_OMP(parallel for schedule(static) if (rows * d >= 65536))
      for (Index r = 0; r < rows; ++r) {
        resid.row(r) += tmp.row(r);
        if (fuse_ln) layerNormRow(resid.row(r), ln.row(r), *w, *b);
      }
    }
    if (!fuse_ln) {
      for (const HookId& id : at_resid)
        if (at(id, resid)) return true;
      if (w != nullptr) layerNorm(resid, ln, w, b);
    }
    return false;
  }

  /// out = (x - mean) / sqrt(var + eps) * w + b, one row.
  template <typename In, typename Out>
  void layerNormRow(const In& x, Out&& out, const Vector<float>& w, const Vector<float>& b) const {
    const float d = static_cast<float>(x.size());
    const float mean = x.sum() / d;
    const float var = (x.array() - mean).square().sum() / d;
    const float inv = 1.0f / std::sqrt(var + static_cast<float>(m_config.layer_norm_epsilon));
    out = (((x.array() - mean) * inv) * w.transpose().array() + b.transpose().array()).matrix();
  }

  /// x = gelu_new(x + bias) in one pass; with `split`, x += bias first and the GELU after
  /// `between` (the mlp.hook_pre hook), which returns true to stop.
  template <typename M, typename Between>
  static bool biasGelu(M& x, const Vector<float>& bias, bool split, Between&& between) {
    const Index rows = x.rows();
    constexpr float c = 0.7978845608028654f;  // sqrt(2 / pi)
    if (split) {
      SAE_PRAGMA_OMP(parallel for schedule(static) if (rows * x.cols() >= 65536))
      for (Index r = 0; r < rows; ++r) x.row(r) += bias.transpose();
      if (between()) return true;
    }
    SAE_PRAGMA_OMP(parallel for schedule(static) if (rows * x.cols() >= 65536))
    for (Index r = 0; r < rows; ++r) {
      auto a = x.row(r).array();
      if (!split) a += bias.transpose().array();
      a = 0.5f * a * (1.0f + (c * (a + 0.044715f * a.cube())).tanh());
    }
    return false;
  }

  /// The forward of `seq` positions from `position` of `batch` sequences (whose earlier
  /// positions are in the cache). Returns true when a hook stopped it.
  bool run(const std::int32_t* tokens, Index batch, Index seq, Index position, Logits want,
           float* logits) {
    m_stopped_by_hook = false;
    const Index d = m_config.n_embd;
    const Index rows = batch * seq;
    auto resid = m_resid.view(rows, d);
    auto tmp = m_tmp.view(rows, d);
    auto ln = m_ln.view(rows, d);
    auto qkv = m_qkv.view(rows, 3 * d);
    auto z = m_z.view(rows, d);
    auto hidden = m_hidden.view(rows, 4 * d);
    auto at = [&](HookId id, auto& value) {
      return hookPoint(id, value, batch, seq, position, want);
    };

    SAE_PRAGMA_OMP(parallel for schedule(static) if (rows * d >= 65536))
    for (Index r = 0; r < rows; ++r) {
      resid.row(r) = m_wte.row(tokens[r]);
      tmp.row(r) = m_wpe.row(position + r % seq);
    }
    if (m_tl) {
      centreRows(resid);
      centreRows(tmp);
    }
    if (at({HookPoint::Embed, -1}, resid)) return m_stopped_by_hook;
    if (at({HookPoint::PosEmbed, -1}, tmp)) return m_stopped_by_hook;
    resid += tmp;

    // ln holds block l's ln_1 output when ln_ready (fused into the previous block's last pass).
    bool ln_ready = false;
    for (Index l = 0; l < m_config.n_layer; ++l) {
      detail::Block& blk = m_blocks[static_cast<std::size_t>(l)];
      const int layer = static_cast<int>(l);
      if (!ln_ready) {
        if (at({HookPoint::ResidPre, layer}, resid)) return m_stopped_by_hook;
        layerNorm(resid, ln, &blk.ln1_w, &blk.ln1_b);
      }
      blk.attn.multiply(ln, qkv);
      attention(l, qkv, blk.attn.b, z, batch, seq, position);
      blk.proj.multiply(z, tmp);
      if (residualWrite(tmp, blk.proj.b, {HookPoint::AttnOut, layer}, resid,
                        {{HookPoint::ResidMid, layer}}, ln, &blk.ln2_w, &blk.ln2_b, at))
        return m_stopped_by_hook;
      blk.fc.multiply(ln, hidden);
      const HookId pre{HookPoint::MlpPre, layer};
      if (biasGelu(hidden, blk.fc.b, hooked(pre), [&] { return at(pre, hidden); }))
        return m_stopped_by_hook;
      if (at({HookPoint::MlpPost, layer}, hidden)) return m_stopped_by_hook;
      blk.out.multiply(hidden, tmp);
      const bool last = l + 1 == m_config.n_layer;
      detail::Block* next = last ? nullptr : &m_blocks[static_cast<std::size_t>(l + 1)];
      const HookId post{HookPoint::ResidPost, layer};
      const HookId next_pre{HookPoint::ResidPre, layer + 1};
      if (residualWrite(tmp, blk.out.b, {HookPoint::MlpOut, layer}, resid,
                        last ? std::initializer_list<HookId>{post}
                             : std::initializer_list<HookId>{post, next_pre},
                        ln, last ? nullptr : &next->ln1_w, last ? nullptr : &next->ln1_b, at))
        return m_stopped_by_hook;
      // residualWrite ran the hooks at resid_post and the next resid_pre, then the next ln_1.
      ln_ready = !last;
    }
    if (want == Logits::None && m_last_order < std::numeric_limits<int>::max()) return false;

    // ln_final: TransformerLens's hook value is the normalised residual, its weight and bias
    // folded into the unembedding.
    if (m_tl) {
      layerNorm(resid, ln, nullptr, nullptr);
      if (at({HookPoint::LnFinalNormalized, -1}, ln)) return m_stopped_by_hook;
      const Index n = ln.rows();
      SAE_PRAGMA_OMP(parallel for schedule(static) if (n * d >= 65536))
      for (Index r = 0; r < n; ++r)
        ln.row(r) = (ln.row(r).array() * m_lnf_w.transpose().array() + m_lnf_b.transpose().array())
                        .matrix();
    } else {
      layerNorm(resid, ln, &m_lnf_w, &m_lnf_b);
      if (at({HookPoint::LnFinalNormalized, -1}, ln)) return m_stopped_by_hook;
    }
    if (want == Logits::None) return false;
    const Index V = m_config.vocab_size;
    if (want == Logits::All) {
      Eigen::Map<RowMatrix<float>> out(logits, rows, V);
      unembed(ln, out);
    } else {
      Eigen::Map<RowMatrix<float>> out(logits, 1, V);
      unembed(ln.bottomRows(1), out);
    }
    return false;
  }

  template <typename In, typename Out>
  void unembed(const In& x, Out&& out) {
#if SAE_HAS_ONEDNN
    if (m_unembed_bf16) {
      m_unembed_bf16->multiply(x, out);
      return;
    }
#endif
    kernels::gemm(out, x, m_wte.transpose());
  }

  std::int32_t sample(const Gpt2Sampling& s, Rng& rng) {
    const Index V = m_config.vocab_size;
    const float* logits = m_last_logits.data();
    if (s.temperature == 0.0) {
      Index best = 0;
      for (Index i = 1; i < V; ++i)
        if (logits[i] > logits[best]) best = i;
      return static_cast<std::int32_t>(best);
    }
    m_order.resize(static_cast<std::size_t>(V));
    for (Index i = 0; i < V; ++i)
      m_order[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i);
    const Index k = s.top_k > 0 ? std::min(s.top_k, V) : V;
    auto greater = [&](std::int32_t a, std::int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    };
    if (k < V) std::nth_element(m_order.begin(), m_order.begin() + k, m_order.end(), greater);
    std::sort(m_order.begin(), m_order.begin() + k, greater);
    const double top = logits[m_order[0]];
    double total = 0.0;
    m_probs.resize(static_cast<std::size_t>(k));
    for (Index i = 0; i < k; ++i) {
      m_probs[static_cast<std::size_t>(i)] =
          std::exp((logits[m_order[static_cast<std::size_t>(i)]] - top) / s.temperature);
      total += m_probs[static_cast<std::size_t>(i)];
    }
    double u = rng.uniform() * total;
    for (Index i = 0; i < k; ++i) {
      u -= m_probs[static_cast<std::size_t>(i)];
      if (u < 0.0) return m_order[static_cast<std::size_t>(i)];
    }
    return m_order[static_cast<std::size_t>(k - 1)];
  }

  Gpt2Config m_config;
  bool m_tl = true;
  bool m_bf16 = false;
  RowMatrix<float> m_wte, m_wpe;
  Vector<float> m_lnf_w, m_lnf_b;
  std::vector<detail::Block> m_blocks;
#if SAE_HAS_ONEDNN
  std::unique_ptr<kernels::Bf16Matmul> m_unembed_bf16;
#endif

  // Per call.
  std::vector<detail::ResolvedHook> m_hooks;
  std::vector<std::string> m_hook_names;
  int m_last_order = -1;
  bool m_stopped_by_hook = false;
  detail::GrowBuffer m_resid, m_tmp, m_ln, m_qkv, m_z, m_hidden;
  std::vector<detail::GrowBuffer> m_keys, m_values, m_scores;
  Index m_cache_batch = 0, m_cache_capacity = 0;
  Vector<float> m_last_logits;
  std::vector<std::int32_t> m_order;
  std::vector<double> m_probs;
};

}  // namespace sae::lm
