/// @file run_report.hpp
/// @brief The run report: one self-contained HTML page (inline CSS and SVG, no script, no
/// network) from a training run folder — every training metric against the step (loss terms,
/// L0, explained variance, dead fraction, lr, coefficients, tokens/s) with the held-out
/// evaluations on the same axes, the final feature-density histogram and the configuration.
///
/// Reads from the run folder (trainer.hpp describes it):
/// - `metrics.jsonl` (required): training lines (numbers at the top level and in the `losses`
///   and `coefficients` objects) and held-out lines (`"eval": true`);
/// - `train_config.json`, `cfg.json` (optional: shown as tables);
/// - `sparsity.safetensors` (optional: log10(density + 1e-10) per latent, as SAELens writes
///   it; a latent at or below -10 is counted as dead).
/// A run still in progress (no final SAE yet) gets a report of what it has.
#pragma once

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <sae/core/error.hpp>
#include <sae/eval/feature_stats.hpp>
#include <sae/io/atomic_write.hpp>
#include <sae/io/saelens.hpp>
#include <sae/report/html.hpp>
#include <sae/report/svg.hpp>

namespace sae::report {

/// @brief The curves of a run: per metric name ("l0", "losses.mse_loss", ...), its training
/// and held-out points (step, value).
struct RunMetrics {
  struct Curve {
    std::vector<double> steps, values;            ///< Training points.
    std::vector<double> eval_steps, eval_values;  ///< Held-out points.
  };
  std::map<std::string, Curve> curves;
  std::size_t training_lines = 0;
  std::size_t eval_lines = 0;
};

namespace detail {

inline bool readJsonFile(const std::string& path, nlohmann::json& out) {
  std::ifstream in(path);
  if (!in) return false;
  try {
    out = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(path + ": not valid JSON (" + e.what() + ")");
  }
  return true;
}

inline void addPoint(std::vector<double>& xs, std::vector<double>& ys, double x,
                     const nlohmann::json& v) {
  if (!v.is_number()) return;  // JSON null (a NaN written by the trainer) is left out
  xs.push_back(x);
  ys.push_back(v.get<double>());
}

}  // namespace detail

/// @brief Reads `path` (a metrics.jsonl). Throws IoError when it cannot be read, FormatError
/// naming the line for a line that is not a JSON object with a numeric `step`, and for a file
/// with no metrics lines.
inline RunMetrics readRunMetrics(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw IoError(path + ": cannot read the run's metrics (not a training run folder?)");
  RunMetrics m;
  std::string line;
  std::size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      throw FormatError(path + ": line " + std::to_string(number) + " is not valid JSON");
    }
    if (!j.is_object() || !j.contains("step") || !j["step"].is_number())
      throw FormatError(path + ": line " + std::to_string(number) +
                        " is not a metrics object with a numeric \"step\"");
    const double step = j["step"].get<double>();
    const bool eval = j.value("eval", false) == true;
    (eval ? m.eval_lines : m.training_lines) += 1;
    auto add = [&](const std::string& name, const nlohmann::json& v) {
      RunMetrics::Curve& c = m.curves[name];
      if (eval)
        detail::addPoint(c.eval_steps, c.eval_values, step, v);
      else
        detail::addPoint(c.steps, c.values, step, v);
    };
    for (const auto& [k, v] : j.items()) {
      if (k == "step" || k == "eval" || k == "tokens" || k == "rows") continue;
      if (v.is_object()) {
        for (const auto& [k2, v2] : v.items()) add(k + "." + k2, v2);
      } else if (v.is_number() || v.is_null()) {
        add(k, v);
      }
    }
  }
  if (in.bad()) throw IoError(path + ": read error");
  if (m.training_lines + m.eval_lines == 0)
    throw FormatError(path + ": no metrics lines yet (the run has not logged a step)");
  return m;
}

namespace detail {

inline const char* kReportCss = R"CSS(
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;max-width:1240px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.sub{color:#666;margin-bottom:16px}.grid-charts{display:flex;flex-wrap:wrap;gap:12px}
svg.chart{background:#fff;border:1px solid #e4e4e4;border-radius:4px}
.chart-title{font-weight:600;font-size:13px}.tick{font-size:11px;fill:#555}
.tick.y{text-anchor:end;dominant-baseline:middle}.tick.x{text-anchor:middle}
.axis-label{font-size:11px;fill:#555;text-anchor:middle}.grid{stroke:#eee}
.frame{fill:none;stroke:#bbb}.line{fill:none;stroke-width:1.6}
.line.train{stroke:#1f77b4}.line.heldout{stroke:#d62728;stroke-dasharray:4 2}
.pt.train{fill:#1f77b4}.pt.heldout{fill:#d62728}.pt:hover{r:5}
.legend{font-size:12px}.legend.train{fill:#1f77b4}.legend.heldout{fill:#d62728}
.bar{fill:#2ca02c}.bar:hover{fill:#1a6d1a}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #e4e4e4;padding:3px 8px;text-align:left}
th{background:#f6f6f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.tables{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}
)CSS";

inline std::string configTable(const std::string& id, const nlohmann::json& j) {
  std::string o = "<table id=\"" + id + "\"><tr><th>key</th><th>value</th></tr>";
  for (const auto& [k, v] : j.items())
    o += "<tr><td>" + escapeHtml(k) + "</td><td>" +
         escapeHtml(v.is_string() ? v.get<std::string>() : v.dump()) + "</td></tr>";
  return o + "</table>";
}

inline std::string chartId(const std::string& metric) {
  std::string id = "chart-";
  for (char c : metric) id += (std::isalnum(static_cast<unsigned char>(c)) ? c : '-');
  return id;
}

}  // namespace detail

/// @brief The log10-density histogram of `latents` features as a bar chart (element id
/// "density-histogram"): a first bar of the features that never fired (with any below 10^-10,
/// which a sparsity file cannot tell from 0), then DensityHistogram's 20 bins of half a decade.
inline std::string renderDensityHistogram(const eval::DensityHistogram& h, Index latents) {
  BarChart bars;
  bars.id = "density-histogram";
  bars.title = "features by log10 density (" + std::to_string(latents) + " latents, " +
               std::to_string(h.dead + h.below_range) + " dead)";
  bars.x_label = "log10 density (first bar: never fired)";
  bars.labels.push_back("dead");
  bars.values.push_back(double(h.dead + h.below_range));
  for (int i = 0; i < eval::DensityHistogram::kBins; ++i) {
    bars.labels.push_back(formatNumber(eval::DensityHistogram::edge(i), 3));
    bars.values.push_back(double(h.counts[std::size_t(i)]));
  }
  return renderBarChart(bars);
}

/// @brief The report page of run folder `dir` (see the file comment). Throws as
/// readRunMetrics() for the metrics, FormatError for a config that is not JSON or a sparsity
/// file that cannot be read.
inline std::string runReportHtml(const std::string& dir) {
  const RunMetrics m = readRunMetrics(dir + "/metrics.jsonl");
  nlohmann::json train_cfg, sae_cfg;
  const bool has_train_cfg = detail::readJsonFile(dir + "/train_config.json", train_cfg);
  const bool has_sae_cfg = detail::readJsonFile(dir + "/" + io::kSaeCfgFilename, sae_cfg);

  std::string title = "run " + dir;
  std::string summary;
  if (has_sae_cfg && sae_cfg.is_object()) {
    auto str = [&](const char* k) {
      return sae_cfg.contains(k)
                 ? (sae_cfg[k].is_string() ? sae_cfg[k].get<std::string>() : sae_cfg[k].dump())
                 : std::string("?");
    };
    summary = str("architecture") + " SAE, d_in " + str("d_in") + ", d_sae " + str("d_sae") +
              ", hook " + str("hook_name");
  } else {
    summary = "no final SAE yet (cfg.json is written when training ends)";
  }
  double last_step = 0;
  for (const auto& [name, c] : m.curves)
    if (!c.steps.empty()) last_step = std::max(last_step, c.steps.back());

  std::string o = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">";
  o += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">";
  o += "<title>" + escapeHtml(title) + "</title><style>" + detail::kReportCss +
       "</style></head><body>";
  o += "<h1>" + escapeHtml(title) + "</h1><div class=\"sub\" id=\"summary\">" +
       escapeHtml(summary) + " &middot; " + std::to_string(m.training_lines) + " training lines, " +
       std::to_string(m.eval_lines) + " held-out evaluations, last step " +
       formatNumber(last_step, 12) + "</div>";

  // Curves: the headline metrics first, then the rest in name order.
  const std::vector<std::string> first = {"mse", "explained_variance", "l0", "dead_fraction",
                                          "lr",  "tokens_per_second"};
  std::vector<std::string> order;
  for (const auto& n : first)
    if (m.curves.count(n)) order.push_back(n);
  for (const auto& [n, c] : m.curves)
    if (std::find(first.begin(), first.end(), n) == first.end()) order.push_back(n);
  o += "<h2>Training curves</h2><div class=\"grid-charts\" id=\"curves\">";
  for (const std::string& n : order) {
    const RunMetrics::Curve& c = m.curves.at(n);
    if (c.steps.empty() && c.eval_steps.empty()) continue;
    LineChart chart;
    chart.id = detail::chartId(n);
    chart.title = n;
    chart.x_label = "step";
    if (!c.steps.empty()) chart.series.push_back({"training", "train", c.steps, c.values});
    if (!c.eval_steps.empty())
      chart.series.push_back({"held-out", "heldout", c.eval_steps, c.eval_values});
    o += renderLineChart(chart);
  }
  o += "</div>";

  o += "<h2>Feature density</h2>";
  if (std::filesystem::exists(dir + "/" + io::kSparsityFilename)) {
    const Eigen::VectorXd log_density = io::readSparsity(dir);
    eval::DensityHistogram h;
    for (Eigen::Index i = 0; i < log_density.size(); ++i) {
      const double v = log_density[i];
      if (!std::isfinite(v))
        throw FormatError(dir + "/" + io::kSparsityFilename + ": latent " + std::to_string(i) +
                          " has a non-finite log density");
      h.add(v <= -10.0 + 1e-6 ? 0.0 : std::pow(10.0, v));
    }
    o += renderDensityHistogram(h, Index(log_density.size()));
  } else {
    o += "<p id=\"density-missing\">No sparsity.safetensors yet: the density histogram is drawn "
         "from the final SAE.</p>";
  }

  o += "<h2>Configuration</h2><div class=\"tables\">";
  if (has_train_cfg && train_cfg.is_object())
    o += "<div><h3>train_config.json</h3>" + detail::configTable("train-config", train_cfg) +
         "</div>";
  if (has_sae_cfg && sae_cfg.is_object())
    o += "<div><h3>cfg.json</h3>" + detail::configTable("sae-config", sae_cfg) + "</div>";
  o += "</div></body></html>\n";
  return o;
}

/// @brief Writes the report of run `dir` to `out` atomically (temp file + rename).
inline void writeRunReport(const std::string& dir, const std::string& out) {
  io::writeTextFile(out, runReportHtml(dir));
}

}  // namespace sae::report
