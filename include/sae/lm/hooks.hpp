/// @file hooks.hpp
/// @brief Hook points of a GPT-2-family forward, with TransformerLens's names, and hooks: callbacks
/// that read or overwrite the activation at a hook point in place.
///
/// Names (TransformerLens's `HookedTransformer`): `hook_embed`, `hook_pos_embed`, then per block l
/// `blocks.{l}.hook_resid_pre`, `.hook_attn_out`, `.hook_resid_mid`, `.mlp.hook_pre`,
/// `.mlp.hook_post`, `.hook_mlp_out`, `.hook_resid_post`, and `ln_final.hook_normalized`.
///
/// A hook gets a HookActivation: an `Eigen::Map` over the engine's own `[rows, width]` buffer
/// (rows are the tokens of the batch, batch-major: row `b * seq + t`), which it may read
/// (capture), overwrite (replace, steer) or leave alone, and returns HookAction::Stop to end the
/// forward right after it (nothing later is computed: SAELens's `stop_at_layer`).
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <sae/core/error.hpp>
#include <sae/core/types.hpp>

namespace sae::lm {

/// @brief The kinds of hook point, in the order a forward reaches them within a block.
enum class HookPoint {
  Embed,              ///< `hook_embed`: the token embedding, [rows, d_model].
  PosEmbed,           ///< `hook_pos_embed`: the position embedding, [rows, d_model].
  ResidPre,           ///< `blocks.l.hook_resid_pre`: the residual stream entering block l.
  AttnOut,            ///< `blocks.l.hook_attn_out`: what attention writes, [rows, d_model].
  ResidMid,           ///< `blocks.l.hook_resid_mid`: resid_pre + attn_out.
  MlpPre,             ///< `blocks.l.mlp.hook_pre`: the MLP's pre-activation, [rows, 4 d_model].
  MlpPost,            ///< `blocks.l.mlp.hook_post`: gelu_new(mlp.hook_pre), [rows, 4 d_model].
  MlpOut,             ///< `blocks.l.hook_mlp_out`: what the MLP writes, [rows, d_model].
  ResidPost,          ///< `blocks.l.hook_resid_post`: resid_mid + mlp_out.
  LnFinalNormalized,  ///< `ln_final.hook_normalized`: the final LayerNorm's output.
};

/// @brief One hook point of a model: its kind and block (-1 for the points outside blocks).
struct HookId {
  HookPoint point = HookPoint::ResidPre;
  int layer = -1;
  friend bool operator==(const HookId& a, const HookId& b) {
    return a.point == b.point && a.layer == b.layer;
  }
  friend bool operator!=(const HookId& a, const HookId& b) { return !(a == b); }
};

namespace detail {
struct HookSuffix {
  HookPoint point;
  const char* suffix;
};
inline constexpr HookSuffix kBlockHooks[] = {
    {HookPoint::ResidPre, "hook_resid_pre"},   {HookPoint::AttnOut, "hook_attn_out"},
    {HookPoint::ResidMid, "hook_resid_mid"},   {HookPoint::MlpPre, "mlp.hook_pre"},
    {HookPoint::MlpPost, "mlp.hook_post"},     {HookPoint::MlpOut, "hook_mlp_out"},
    {HookPoint::ResidPost, "hook_resid_post"},
};
}  // namespace detail

/// @brief TransformerLens's name of a hook point.
inline std::string hookName(const HookId& id) {
  switch (id.point) {
    case HookPoint::Embed:
      return "hook_embed";
    case HookPoint::PosEmbed:
      return "hook_pos_embed";
    case HookPoint::LnFinalNormalized:
      return "ln_final.hook_normalized";
    default:
      break;
  }
  for (const auto& h : detail::kBlockHooks)
    if (h.point == id.point) return "blocks." + std::to_string(id.layer) + "." + h.suffix;
  return "?";
}

/// @brief Every hook point of a model with `n_layer` blocks, in forward order.
inline std::vector<HookId> hookPoints(int n_layer) {
  std::vector<HookId> out{{HookPoint::Embed, -1}, {HookPoint::PosEmbed, -1}};
  for (int l = 0; l < n_layer; ++l)
    for (const auto& h : detail::kBlockHooks) out.push_back({h.point, l});
  out.push_back({HookPoint::LnFinalNormalized, -1});
  return out;
}

/// @brief The hook point named `name` in a model with `n_layer` blocks. An unknown name is a
/// ConfigError that lists the valid names (in the compact form `blocks.{0..L-1}.X`).
inline HookId parseHookName(const std::string& name, int n_layer) {
  for (const HookId& id : hookPoints(n_layer))
    if (hookName(id) == name) return id;
  std::string valid = "hook_embed, hook_pos_embed";
  for (const auto& h : detail::kBlockHooks)
    valid += std::string(", blocks.{0..") + std::to_string(n_layer - 1) + "}." + h.suffix;
  valid += ", ln_final.hook_normalized";
  throw ConfigError("unknown hook point '" + name + "' for a model with " +
                    std::to_string(n_layer) + " blocks; valid names: " + valid);
}

/// @brief Width of a hook point's activation: 4 d_model for the MLP's inside, d_model otherwise.
inline Index hookWidth(const HookId& id, Index d_model) {
  return id.point == HookPoint::MlpPre || id.point == HookPoint::MlpPost ? 4 * d_model : d_model;
}

/// @brief What a hook is given: the activation in place, and where it is.
struct HookActivation {
  /// `[rows, width]` over the engine's buffer: rows are tokens, batch-major (`b * seq + t`).
  /// Writing into it changes the rest of the forward.
  Eigen::Map<RowMatrix<float>> value;
  HookId id;                ///< The hook point.
  const std::string& name;  ///< Its TransformerLens name.
  Index batch = 0;          ///< Sequences in the call.
  Index seq = 0;            ///< Tokens per sequence in this call.
  Index position = 0;       ///< Position of the first of them (> 0 for cached generation steps).
};

/// @brief What the forward does after a hook.
enum class HookAction {
  Continue,  ///< Go on.
  Stop,      ///< End the forward now: nothing after this hook is computed, no logits.
};

/// @brief The hooks of one forward: any number, several on one point run in the order added.
class HookList {
 public:
  using Function = std::function<HookAction(HookActivation&)>;

  /// @brief Adds a hook that may read, overwrite, or stop. The name is checked by the model's
  /// forward (an unknown one is a ConfigError listing the valid names).
  HookList& add(std::string name, Function fn) {
    m_hooks.push_back({std::move(name), std::move(fn)});
    return *this;
  }

  /// @brief Adds a hook that only reads and lets the forward go on.
  template <typename Reader>
  HookList& addReader(std::string name, Reader reader) {
    return add(std::move(name), [reader = std::move(reader)](HookActivation& a) mutable {
      reader(static_cast<const HookActivation&>(a));
      return HookAction::Continue;
    });
  }

  bool empty() const noexcept { return m_hooks.empty(); }
  std::size_t size() const noexcept { return m_hooks.size(); }
  void clear() noexcept { m_hooks.clear(); }

  struct Entry {
    std::string name;
    Function fn;
  };
  const std::vector<Entry>& entries() const noexcept { return m_hooks; }

 private:
  std::vector<Entry> m_hooks;
};

}  // namespace sae::lm
