/// @file registry.hpp
/// @brief The one list of architectures, and everything derived from it: the variant of any
/// model (`AnyModel<Scalar>`), construction by name, dispatch from a name to a type, the names
/// for option lists and messages, and each architecture's traits.
///
/// Adding an architecture is its policy header plus one entry in `Architectures` below; the
/// trainer, the program's `--arch` choices and dispatch, validation and the file readers and
/// writers all follow this list. What differs between architectures is asked of the policy
/// through `ArchitectureTraits` (optional members of the policy, with defaults), never by
/// comparing names.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <sae/core/error.hpp>
#include <sae/models/batchtopk.hpp>
#include <sae/models/gated.hpp>
#include <sae/models/jumprelu.hpp>
#include <sae/models/matryoshka.hpp>
#include <sae/models/sparse_autoencoder.hpp>
#include <sae/models/standard.hpp>
#include <sae/models/topk.hpp>

namespace sae {

/// @brief A list of architecture policies (a type list; no values).
template <typename... Archs>
struct ArchitectureList {
  static constexpr std::size_t size = sizeof...(Archs);
};

/// @brief Every architecture the library trains, in the order of option lists and messages.
using Architectures = ArchitectureList<StandardArch, GatedArch, TopKArch, JumpReLUArch,
                                       BatchTopKArch, MatryoshkaBatchTopKArch>;

/// @brief A value standing for architecture `Arch_` (what dispatch hands to its callback).
template <typename Arch_>
struct ArchTag {
  using Arch = Arch_;
};

namespace detail {

template <typename Arch, typename = void>
struct UsesK : std::false_type {};
template <typename Arch>
struct UsesK<Arch, std::void_t<decltype(Arch::kUsesK)>> : std::bool_constant<Arch::kUsesK> {};

template <typename Arch, typename = void>
struct UsesWidths : std::false_type {};
template <typename Arch>
struct UsesWidths<Arch, std::void_t<decltype(Arch::kUsesWidths)>>
    : std::bool_constant<Arch::kUsesWidths> {};

template <typename Arch, typename = void>
struct SavedArchName {
  static constexpr const char* value = Arch::kName;
};
template <typename Arch>
struct SavedArchName<Arch, std::void_t<decltype(Arch::kSavedAs)>> {
  static constexpr const char* value = Arch::kSavedAs;
};

}  // namespace detail

/// @brief What the rest of the library asks of an architecture, read off its policy.
///
/// A policy may declare (each optional):
///   - `static constexpr bool kUsesK = true`: it selects k latents per token (k,
///     rescale_acts_by_decoder_norm and the AuxK loss apply; default false);
///   - `static constexpr bool kUsesWidths = true`: it is trained on nested prefixes of its
///     latents, `matryoshka_widths` (default false);
///   - `static constexpr const char* kSavedAs`: the SAELens architecture its inference form is
///     written as, when that is another one (BatchTopK is saved as JumpReLU; default kName).
template <typename Arch>
struct ArchitectureTraits {
  /// SAELens's name ("standard", "topk", "batchtopk"...).
  static constexpr const char* name = Arch::kName;
  /// Selects k latents per token (the TopK family).
  static constexpr bool uses_k = detail::UsesK<Arch>::value;
  /// Trained on nested prefixes of its latents (matryoshka_widths).
  static constexpr bool uses_widths = detail::UsesWidths<Arch>::value;
  /// SAELens architecture of the saved inference SAE.
  static constexpr const char* saved_as = detail::SavedArchName<Arch>::value;
  /// Files of this architecture can be read back as it (its inference form is itself).
  static constexpr bool loadable = std::string_view(saved_as) == std::string_view(name);
};

namespace detail {

template <typename List>
struct ArchListOps;

template <typename... Archs>
struct ArchListOps<ArchitectureList<Archs...>> {
  template <typename F>
  static void forEach(F&& f) {
    (f(ArchTag<Archs>{}), ...);
  }
};

template <typename List>
struct FirstOf;
template <typename First, typename... Rest>
struct FirstOf<ArchitectureList<First, Rest...>> {
  using type = First;
};

template <typename Scalar, typename List>
struct VariantOf;
template <typename Scalar, typename... Archs>
struct VariantOf<Scalar, ArchitectureList<Archs...>> {
  using type = std::variant<SparseAutoencoder<Scalar, Archs>...>;
};

template <template <typename> class Wrap, typename Scalar, typename List>
struct WrappedVariantOf;
template <template <typename> class Wrap, typename Scalar, typename... Archs>
struct WrappedVariantOf<Wrap, Scalar, ArchitectureList<Archs...>> {
  using type = std::variant<Wrap<SparseAutoencoder<Scalar, Archs>>...>;
};

/// The architectures of `List` whose files read back as themselves.
template <typename List, typename Out = ArchitectureList<>>
struct LoadableOf;
template <typename... Done>
struct LoadableOf<ArchitectureList<>, ArchitectureList<Done...>> {
  using type = ArchitectureList<Done...>;
};
template <typename First, typename... Rest, typename... Done>
struct LoadableOf<ArchitectureList<First, Rest...>, ArchitectureList<Done...>> {
  using type = typename LoadableOf<
      ArchitectureList<Rest...>,
      std::conditional_t<ArchitectureTraits<First>::loadable, ArchitectureList<Done..., First>,
                         ArchitectureList<Done...>>>::type;
};

}  // namespace detail

/// @brief The architectures whose SAE files read back as themselves (the ones the file readers
/// produce; BatchTopK and Matryoshka are saved as JumpReLU).
using LoadableArchitectures = typename detail::LoadableOf<Architectures>::type;

/// @brief Calls `f(ArchTag<Arch>{})` for every architecture of `List`, in order.
template <typename List = Architectures, typename F>
void forEachArchitecture(F&& f) {
  detail::ArchListOps<List>::forEach(std::forward<F>(f));
}

/// @brief The names of the architectures of `List`, in order.
template <typename List = Architectures>
std::vector<std::string> architectureNames() {
  std::vector<std::string> names;
  forEachArchitecture<List>([&](auto tag) { names.emplace_back(decltype(tag)::Arch::kName); });
  return names;
}

/// @brief ArchitectureTraits of one architecture, as values.
struct ArchitectureInfo {
  const char* name = "";
  bool uses_k = false;
  bool uses_widths = false;
  const char* saved_as = "";
  bool loadable = false;
};

/// @brief The traits of architecture `Arch` as an ArchitectureInfo.
template <typename Arch>
constexpr ArchitectureInfo architectureInfoOf() {
  using T = ArchitectureTraits<Arch>;
  return ArchitectureInfo{T::name, T::uses_k, T::uses_widths, T::saved_as, T::loadable};
}

/// @brief The names of the architectures of `List` for which `keep(info)` holds, as one line
/// for messages: "standard, gated, topk" (`last` = ", "), or "standard, gated or topk"
/// (`last` = " or ").
template <typename List = Architectures, typename Keep>
std::string architectureNameList(const char* last, Keep keep) {
  std::vector<std::string> names;
  forEachArchitecture<List>([&](auto tag) {
    const ArchitectureInfo info = architectureInfoOf<typename decltype(tag)::Arch>();
    if (keep(info)) names.emplace_back(info.name);
  });
  std::string out;
  for (std::size_t i = 0; i < names.size(); ++i)
    out += (i == 0 ? "" : i + 1 == names.size() ? last : ", ") + names[i];
  return out;
}

/// @brief The names of `List` as one line for messages (see above), all of them.
template <typename List = Architectures>
std::string architectureNameList(const char* last = ", ") {
  return architectureNameList<List>(last, [](const ArchitectureInfo&) { return true; });
}

/// @brief True when `name` is an architecture of `List`.
template <typename List = Architectures>
bool isArchitecture(std::string_view name) {
  bool found = false;
  forEachArchitecture<List>([&](auto tag) { found = found || name == decltype(tag)::Arch::kName; });
  return found;
}

/// @brief Calls `f(ArchTag<Arch>{})` for the architecture of `List` named `name` and returns
/// what it returns (every call of `f` must return the same type).
/// @throws ConfigError naming the architectures of `List` when there is none of that name.
template <typename List = Architectures, typename F>
decltype(auto) visitArchitecture(std::string_view name, F&& f) {
  using First = decltype(std::declval<F&>()(ArchTag<typename detail::FirstOf<List>::type>{}));
  if constexpr (std::is_void_v<First>) {
    bool found = false;
    forEachArchitecture<List>([&](auto tag) {
      if (!found && name == decltype(tag)::Arch::kName) {
        found = true;
        f(tag);
      }
    });
    require(found, "unknown architecture '", name, "' (supported: ", architectureNameList<List>(),
            ")");
  } else {
    std::optional<First> out;
    forEachArchitecture<List>([&](auto tag) {
      if (!out && name == decltype(tag)::Arch::kName) out.emplace(f(tag));
    });
    require(out.has_value(), "unknown architecture '", name,
            "' (supported: ", architectureNameList<List>(), ")");
    return First(std::move(*out));
  }
}

/// @brief A model of any architecture of `List` (the runtime choice at the edge: a variant,
/// never a virtual call inside a kernel).
template <typename Scalar, typename List = Architectures>
using AnyModel = typename detail::VariantOf<Scalar, List>::type;

/// @brief `Wrap<Model>` for the model of any architecture of `List` (a model held together
/// with per-architecture state, such as its workspace).
template <template <typename> class Wrap, typename Scalar, typename List = Architectures>
using AnyWrappedModel = typename detail::WrappedVariantOf<Wrap, Scalar, List>::type;

/// @brief A model of architecture `name` with every parameter zero.
/// @throws ConfigError naming the architectures of `List` for an unknown name, or the config's
/// own error when `cfg` does not suit the architecture.
template <typename Scalar, typename List = Architectures>
AnyModel<Scalar, List> makeModel(std::string_view name, const SaeConfig& cfg) {
  return visitArchitecture<List>(name, [&](auto tag) {
    return AnyModel<Scalar, List>(SparseAutoencoder<Scalar, typename decltype(tag)::Arch>(cfg));
  });
}

/// @brief The traits of the architecture named `name` (ConfigError for an unknown one).
inline ArchitectureInfo architectureInfo(std::string_view name) {
  return visitArchitecture(
      name, [](auto tag) { return architectureInfoOf<typename decltype(tag)::Arch>(); });
}

}  // namespace sae
