/// @file html.hpp
/// @brief The pieces of the library's HTML pages: escaping of text and attribute values and
/// number formatting for labels.
///
/// Every string that comes from a file (token text, hook names, config values) goes through
/// escapeHtml() before it is written into a page, so that a corpus holding `<script>` renders
/// as text.
#pragma once

#include <cmath>
#include <cstdio>
#include <string>

namespace sae::report {

/// @brief `text` with `& < > " '` replaced by character references: safe both as element text
/// and inside a double- or single-quoted attribute value.
inline std::string escapeHtml(const std::string& text) {
  std::string out;
  out.reserve(text.size() + text.size() / 8);
  for (const char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

/// @brief A number for a label or a table cell: up to `digits` significant digits (%g), "nan"
/// / "inf" / "-inf" spelled out.
inline std::string formatNumber(double v, int digits = 4) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.*g", digits, v);
  return buf;
}

}  // namespace sae::report
