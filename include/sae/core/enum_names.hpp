/// @file enum_names.hpp
/// @brief Names of the library's option enums, one table per enum: printing, parsing with an
/// error that lists the valid names, the choices of a command-line flag, and JSON.
///
/// An enum takes part by specialising EnumNames with its table (the first name of a value is
/// the one written; further names of the same value are accepted when parsing):
/// ```
/// template <> struct EnumNames<LrDecay> {
///   static constexpr std::pair<LrDecay, const char*> table[] = {
///       {LrDecay::Constant, "constant"}, {LrDecay::Cosine, "cosine"}, ...};
/// };
/// ```
/// JSON reads and writes the name (nlohmann::adl_serializer below), so a file holds the same
/// strings as before the enum.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <sae/core/error.hpp>

namespace sae {

/// @brief The name table of enum `E` (specialise it; see the file comment).
template <typename E>
struct EnumNames;

namespace detail {

template <typename E, typename = void>
struct HasEnumNames : std::false_type {};
template <typename E>
struct HasEnumNames<E, std::void_t<decltype(EnumNames<E>::table)>> : std::true_type {};

/// @brief The name of `e` in `table` (the first listed), "?" when it has none.
template <typename E, std::size_t N>
constexpr const char* findName(const std::pair<E, const char*> (&table)[N], E e) {
  for (const auto& entry : table)
    if (entry.first == e) return entry.second;
  return "?";
}

}  // namespace detail

/// @brief The name `e` is written as.
template <typename E>
constexpr const char* enumName(E e) {
  return detail::findName(EnumNames<E>::table, e);
}

/// @brief The names of `E`, each value once (its written name), in table order.
template <typename E>
std::vector<std::string> enumNames() {
  std::vector<std::string> out;
  for (const auto& [value, name] : EnumNames<E>::table)
    if (std::string_view(enumName(value)) == name) out.emplace_back(name);
  return out;
}

/// @brief The names of `E` for messages: "a, b or c".
template <typename E>
std::string enumNameList() {
  const std::vector<std::string> names = enumNames<E>();
  std::string out;
  for (std::size_t i = 0; i < names.size(); ++i)
    out += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
  return out;
}

/// @brief Sets `out` to the value named `name` and returns true; false for an unknown name.
template <typename E>
bool tryParseEnum(std::string_view name, E& out) {
  for (const auto& [value, n] : EnumNames<E>::table)
    if (name == n) {
      out = value;
      return true;
    }
  return false;
}

/// @brief The value named `name`.
/// @throws ConfigError "<what> must be a, b or c, found 'x'".
template <typename E>
E parseEnum(std::string_view name, std::string_view what) {
  E out{};
  require(tryParseEnum(name, out), what, " must be ", enumNameList<E>(), ", found '", name, "'");
  return out;
}

/// @brief A setting of enum type `E` that can also be given by name (a configuration field).
///
/// Holds a value of `E`; assigning a name parses it. A name that is not one of `E`'s is kept
/// as given and reported by check() (so a configuration can be filled first and validated
/// once, with the field named in the message); value() of such a setting throws the same error.
template <typename E>
class NamedEnum {
 public:
  NamedEnum(E value = E{}) : m_value(value) {}          // NOLINT: implicit, as the enum itself
  NamedEnum(const char* name) { assign(name); }         // NOLINT: implicit, to assign names
  NamedEnum(const std::string& name) { assign(name); }  // NOLINT

  /// @brief The value; ConfigError when an unknown name was given.
  E value() const {
    check("the value");
    return m_value;
  }
  operator E() const { return value(); }  // NOLINT: implicit, as the enum itself

  /// @brief The name of the value, or the unknown name as given.
  std::string name() const { return m_valid ? enumName(m_value) : m_invalid; }

  /// @brief True unless an unknown name was given.
  bool valid() const { return m_valid; }

  /// @brief Throws ConfigError "<field> must be a, b or c, found 'x'" for an unknown name.
  void check(std::string_view field) const {
    require(m_valid, field, " must be ", enumNameList<E>(), ", found '", m_invalid, "'");
  }

  friend bool operator==(const NamedEnum& a, E b) { return a.m_valid && a.m_value == b; }
  friend bool operator!=(const NamedEnum& a, E b) { return !(a == b); }
  friend bool operator==(const NamedEnum& a, std::string_view b) { return a.name() == b; }
  friend bool operator!=(const NamedEnum& a, std::string_view b) { return !(a == b); }
  friend bool operator==(const NamedEnum& a, const char* b) { return a.name() == b; }
  friend bool operator!=(const NamedEnum& a, const char* b) { return !(a == b); }
  friend bool operator==(const NamedEnum& a, const NamedEnum& b) { return a.name() == b.name(); }
  friend bool operator!=(const NamedEnum& a, const NamedEnum& b) { return !(a == b); }

 private:
  void assign(std::string_view name) {
    m_valid = tryParseEnum(name, m_value);
    m_invalid = m_valid ? std::string() : std::string(name);
  }

  E m_value{};
  bool m_valid = true;
  std::string m_invalid;
};

/// JSON: a NamedEnum is its name (an unknown name is refused when read).
template <typename E>
void to_json(nlohmann::json& j, const NamedEnum<E>& e) {
  j = e.name();
}
template <typename E>
void from_json(const nlohmann::json& j, NamedEnum<E>& e) {
  e = NamedEnum<E>(parseEnum<E>(j.get<std::string>(), "the value"));
}

}  // namespace sae

/// JSON: an enum with an EnumNames table is its name, not its number (a name of another enum,
/// or of none, is a ConfigError listing the names; a non-string is a nlohmann type error).
template <typename E>
struct nlohmann::adl_serializer<E, std::enable_if_t<sae::detail::HasEnumNames<E>::value>> {
  static void to_json(nlohmann::json& j, E e) { j = sae::enumName(e); }
  static void from_json(const nlohmann::json& j, E& e) {
    e = sae::parseEnum<E>(j.get<std::string>(), "the value");
  }
};
