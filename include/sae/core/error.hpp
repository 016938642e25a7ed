/// @file error.hpp
/// @brief The exception hierarchy of the library.
///
/// Every error the library raises derives from sae::Error. Messages name the thing at fault
/// (the argument, the file and byte offset) and the expected versus found value.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace sae {

/// @brief Base of every exception thrown by the library.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

/// @brief An invalid argument or configuration (mismatched dimensions, k out of range...).
class ConfigError : public Error {
 public:
  explicit ConfigError(const std::string& what) : Error(what) {}
};

/// @brief A file could not be opened, read or written.
class IoError : public Error {
 public:
  explicit IoError(const std::string& what) : Error(what) {}
};

/// @brief A file's contents are malformed or unsupported.
class FormatError : public Error {
 public:
  explicit FormatError(const std::string& what) : Error(what) {}
};

/// @brief A NaN or infinity where finite numbers are required (input data, a diverging loss).
class NumericError : public Error {
 public:
  explicit NumericError(const std::string& what) : Error(what) {}
};

namespace detail {

/// Concatenates its arguments with operator<< into a string.
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  os.precision(17);
  (os << ... << std::forward<Args>(args));
  return os.str();
}

}  // namespace detail

/// @brief Throws ConfigError with the concatenated message when `cond` is false.
template <typename... Args>
void require(bool cond, Args&&... args) {
  if (!cond) throw ConfigError(detail::concat(std::forward<Args>(args)...));
}

}  // namespace sae
