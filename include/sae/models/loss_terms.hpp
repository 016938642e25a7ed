/// @file loss_terms.hpp
/// @brief LossTerms: the named terms of a training loss, and the interning of names made at run
/// time.
#pragma once

#include <array>
#include <cstddef>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <utility>

#include <sae/core/error.hpp>

namespace sae {

/// @brief A copy of `name` with static storage duration, the same pointer for equal names:
/// for loss-term names made at run time (Matryoshka's `inner_mse_loss_<width>`). Thread-safe;
/// each distinct name is stored once for the life of the program.
inline const char* internLossName(std::string_view name) {
  static std::mutex mutex;
  static std::set<std::string, std::less<>> names;
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = names.find(name);
  if (it == names.end()) it = names.emplace(name).first;
  return it->c_str();
}

/// @brief The terms of a loss by their SAELens names, in SAELens order, and their total.
///
/// Fixed capacity, no heap allocation: names have static storage (string literals, or
/// internLossName() for names made at run time).
template <typename Scalar>
class LossTerms {
 public:
  /// One term: its SAELens name and value.
  using Term = std::pair<const char*, Scalar>;
  static constexpr std::size_t kCapacity = 32;

  /// @brief A read-only range over the terms, in order.
  class View {
   public:
    View(const Term* b, const Term* e) : m_begin(b), m_end(e) {}
    const Term* begin() const { return m_begin; }
    const Term* end() const { return m_end; }
    std::size_t size() const { return static_cast<std::size_t>(m_end - m_begin); }
    const Term& operator[](std::size_t i) const { return m_begin[i]; }

   private:
    const Term* m_begin;
    const Term* m_end;
  };

  /// @brief Appends a term; `name` must have static storage (see internLossName()).
  void add(const char* name, Scalar value) {
    require(m_size < kCapacity, "LossTerms: more than ", kCapacity, " terms");
    m_terms[m_size++] = Term(name, value);
  }

  /// @brief Sum of the terms in order.
  Scalar total() const {
    Scalar t = 0;
    for (const auto& term : terms()) t += term.second;
    return t;
  }

  /// @brief Value of term `name` ("total" gives total()); throws ConfigError if absent.
  Scalar operator[](std::string_view name) const {
    if (name == "total") return total();
    for (const auto& term : terms())
      if (name == term.first) return term.second;
    std::string names;
    for (const auto& term : terms()) names += (names.empty() ? "" : ", ") + std::string(term.first);
    throw ConfigError(detail::concat("no loss term named '", name, "' (have: ", names, ")"));
  }

  bool contains(std::string_view name) const {
    for (const auto& term : terms())
      if (name == term.first) return true;
    return false;
  }

  View terms() const { return View(m_terms.data(), m_terms.data() + m_size); }
  void clear() { m_size = 0; }

 private:
  std::array<Term, kCapacity> m_terms{};
  std::size_t m_size = 0;
};

}  // namespace sae
