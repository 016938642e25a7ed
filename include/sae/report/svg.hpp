/// @file svg.hpp
/// @brief Inline SVG charts written in C++: a line chart of series against a common x (the
/// training curves) and a bar chart (histograms). No JavaScript: the page is static, every
/// point carries a `<title>` that the browser shows on hover.
///
/// Coordinates: a plot area of `width x height` CSS pixels inside margins for the axis labels;
/// x and y map linearly from the data range (widened to "nice" tick values, see niceTicks())
/// to the plot area, y upwards.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <sae/report/html.hpp>

namespace sae::report {

/// @brief About `target` evenly spaced round tick values (steps of 1, 2 or 5 x 10^k) whose
/// first is <= lo and last >= hi. lo == hi is widened to a unit-sized range around the value.
inline std::vector<double> niceTicks(double lo, double hi, int target = 5) {
  if (!(std::isfinite(lo) && std::isfinite(hi))) return {0.0, 1.0};
  if (hi < lo) std::swap(lo, hi);
  if (hi == lo) {
    const double pad = lo == 0 ? 1.0 : std::abs(lo) * 0.5;
    lo -= pad;
    hi += pad;
  }
  const double raw = (hi - lo) / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double frac = raw / mag;
  const double step = (frac <= 1.0 ? 1.0 : frac <= 2.0 ? 2.0 : frac <= 5.0 ? 5.0 : 10.0) * mag;
  const double first = std::floor(lo / step + 1e-9) * step;
  const double last = std::ceil(hi / step - 1e-9) * step;
  std::vector<double> ticks;
  for (int i = 0;; ++i) {
    const double t = first + i * step;
    // Round away the accumulated error so that labels read 0.3, not 0.30000000000000004.
    ticks.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
    if (t >= last - step * 1e-9) break;
  }
  return ticks;
}

/// @brief One curve of a line chart: points (xs[i], ys[i]); non-finite y values are left out.
struct Series {
  std::string name;       ///< Legend text.
  std::string css_class;  ///< Class of its polyline and points ("train", "heldout").
  std::vector<double> xs;
  std::vector<double> ys;
};

/// @brief A line chart: `series` against a shared x axis.
struct LineChart {
  std::string id;       ///< Element id of the `<svg>` (unique in the page).
  std::string title;    ///< Heading above the plot.
  std::string x_label;  ///< Axis label under the plot.
  std::vector<Series> series;
  int width = 520;   ///< Plot area, CSS pixels.
  int height = 180;  ///< Plot area, CSS pixels.
};

namespace detail {

inline std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}

// Margins of the plot area inside the SVG.
inline constexpr int kLeft = 64, kRight = 16, kTop = 28, kBottom = 40;

// The opening of a chart: the <svg> element, its title and heading, and the horizontal grid
// lines with their labels at `yt` (py maps a value to its y pixel).
template <typename YPixel>
std::string openSvg(const std::string& id, const std::string& title, int W, int H, int width,
                    const std::vector<double>& yt, YPixel py) {
  std::string o;
  o += "<svg class=\"chart\" id=\"" + escapeHtml(id) + "\" xmlns=\"http://www.w3.org/2000/svg\" ";
  o += "width=\"" + std::to_string(W) + "\" height=\"" + std::to_string(H) + "\" viewBox=\"0 0 " +
       std::to_string(W) + " " + std::to_string(H) + "\" role=\"img\">";
  o += "<title>" + escapeHtml(title) + "</title>";
  o += "<text class=\"chart-title\" x=\"" + std::to_string(kLeft) + "\" y=\"18\">" +
       escapeHtml(title) + "</text>";
  for (double t : yt) {
    const std::string y = num(py(t));
    o += "<line class=\"grid\" x1=\"" + std::to_string(kLeft) + "\" x2=\"" +
         std::to_string(kLeft + width) + "\" y1=\"" + y + "\" y2=\"" + y + "\"/>";
    o += "<text class=\"tick y\" x=\"" + std::to_string(kLeft - 6) + "\" y=\"" + y + "\">" +
         formatNumber(t) + "</text>";
  }
  return o;
}

// The frame around the plot area and the x axis label under it (H: the SVG's height).
inline std::string frameAndAxisLabel(int width, int height, int H, const std::string& x_label) {
  return "<rect class=\"frame\" x=\"" + std::to_string(kLeft) + "\" y=\"" + std::to_string(kTop) +
         "\" width=\"" + std::to_string(width) + "\" height=\"" + std::to_string(height) +
         "\"/><text class=\"axis-label\" x=\"" + std::to_string(kLeft + width / 2) + "\" y=\"" +
         std::to_string(H - 6) + "\">" + escapeHtml(x_label) + "</text>";
}

}  // namespace detail

/// @brief The chart as an `<svg>` element: axes with tick labels, one `<polyline>` per series
/// (attribute `data-points` = its number of points) and a `<circle>` per point whose `<title>`
/// reads "series: y at x", and a legend.
inline std::string renderLineChart(const LineChart& c) {
  using detail::num;
  double xlo = std::numeric_limits<double>::infinity(), xhi = -xlo, ylo = xlo, yhi = -xlo;
  for (const Series& s : c.series)
    for (std::size_t i = 0; i < s.xs.size() && i < s.ys.size(); ++i) {
      if (!std::isfinite(s.ys[i]) || !std::isfinite(s.xs[i])) continue;
      xlo = std::min(xlo, s.xs[i]);
      xhi = std::max(xhi, s.xs[i]);
      ylo = std::min(ylo, s.ys[i]);
      yhi = std::max(yhi, s.ys[i]);
    }
  const std::vector<double> xt = niceTicks(xlo, xhi, 6), yt = niceTicks(ylo, yhi, 4);
  const double x0 = xt.front(), x1 = xt.back(), y0 = yt.front(), y1 = yt.back();
  const int W = c.width + detail::kLeft + detail::kRight;
  const int H = c.height + detail::kTop + detail::kBottom;
  auto px = [&](double x) { return detail::kLeft + (x - x0) / (x1 - x0) * c.width; };
  auto py = [&](double y) { return detail::kTop + (1.0 - (y - y0) / (y1 - y0)) * c.height; };

  std::string o = detail::openSvg(c.id, c.title, W, H, c.width, yt, py);
  for (double t : xt) {
    const std::string x = num(px(t));
    o += "<text class=\"tick x\" x=\"" + x + "\" y=\"" +
         std::to_string(detail::kTop + c.height + 16) + "\">" + formatNumber(t, 6) + "</text>";
  }
  o += detail::frameAndAxisLabel(c.width, c.height, H, c.x_label);
  int legend_x = detail::kLeft + c.width;
  for (auto it = c.series.rbegin(); it != c.series.rend(); ++it) {
    const Series& s = *it;
    std::string points, dots;
    std::size_t n = 0;
    for (std::size_t i = 0; i < s.xs.size() && i < s.ys.size(); ++i) {
      if (!std::isfinite(s.ys[i]) || !std::isfinite(s.xs[i])) continue;
      const std::string x = num(px(s.xs[i])), y = num(py(s.ys[i]));
      points += (n ? " " : "") + x + "," + y;
      dots += "<circle class=\"pt " + escapeHtml(s.css_class) + "\" cx=\"" + x + "\" cy=\"" + y +
              "\" r=\"2.5\"><title>" + escapeHtml(s.name) + ": " + formatNumber(s.ys[i], 6) +
              " at " + escapeHtml(c.x_label) + " " + formatNumber(s.xs[i], 10) +
              "</title></circle>";
      ++n;
    }
    o += "<polyline class=\"line " + escapeHtml(s.css_class) + "\" data-points=\"" +
         std::to_string(n) + "\" points=\"" + points + "\"/>" + dots;
    legend_x -= 8 * static_cast<int>(s.name.size()) + 24;
    o += "<text class=\"legend " + escapeHtml(s.css_class) + "\" x=\"" + std::to_string(legend_x) +
         "\" y=\"18\">&#9679; " + escapeHtml(s.name) + "</text>";
  }
  o += "</svg>";
  return o;
}

/// @brief A bar chart: one bar per label (e.g. a histogram's bins).
struct BarChart {
  std::string id;
  std::string title;
  std::string x_label;
  std::vector<std::string> labels;  ///< Under each bar (every few are drawn when crowded).
  std::vector<double> values;       ///< Bar heights (>= 0).
  int width = 520;
  int height = 180;
};

/// @brief The chart as an `<svg>` element with one `<rect class="bar">` per value, whose
/// `<title>` reads "label: value".
inline std::string renderBarChart(const BarChart& c) {
  using detail::num;
  double hi = 0;
  for (double v : c.values)
    if (std::isfinite(v)) hi = std::max(hi, v);
  const std::vector<double> yt = niceTicks(0.0, hi > 0 ? hi : 1.0, 4);
  const double y1 = yt.back();
  const int W = c.width + detail::kLeft + detail::kRight;
  const int H = c.height + detail::kTop + detail::kBottom;
  const std::size_t n = c.values.size();
  const double bw = n ? double(c.width) / double(n) : 0.0;
  auto py = [&](double y) { return detail::kTop + (1.0 - y / y1) * c.height; };

  std::string o = detail::openSvg(c.id, c.title, W, H, c.width, yt, py);
  const std::size_t label_every = std::max<std::size_t>(1, (n + 9) / 10);
  for (std::size_t i = 0; i < n; ++i) {
    const double v = std::isfinite(c.values[i]) ? std::max(0.0, c.values[i]) : 0.0;
    const double x = detail::kLeft + bw * double(i);
    const std::string label = i < c.labels.size() ? c.labels[i] : std::string();
    o += "<rect class=\"bar\" x=\"" + num(x + 1) + "\" y=\"" + num(py(v)) + "\" width=\"" +
         num(std::max(1.0, bw - 2)) + "\" height=\"" + num(py(0) - py(v)) + "\"><title>" +
         escapeHtml(label) + ": " + formatNumber(v, 10) + "</title></rect>";
    if (i % label_every == 0)
      o += "<text class=\"tick x\" x=\"" + num(x + bw / 2) + "\" y=\"" +
           std::to_string(detail::kTop + c.height + 16) + "\">" + escapeHtml(label) + "</text>";
  }
  o += detail::frameAndAxisLabel(c.width, c.height, H, c.x_label);
  o += "</svg>";
  return o;
}

}  // namespace sae::report
