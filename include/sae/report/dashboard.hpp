/// @file dashboard.hpp
/// @brief The feature dashboard as files: `index.html` (the SAE's card, the log-density
/// histogram and a sortable, searchable table of the features, with the page's styles and its
/// small script inline) and `data/features-NNNNN.js`, one file per `chunk` features, loaded by
/// a `<script>` element when one of its features is opened (lazy: a 16k-feature dashboard opens
/// at the size of its table). Everything opens from `file://` with no network.
///
/// Who draws what: the charts (density and activation histograms) are inline SVG written in C++
/// (svg.hpp), as is each feature panel's static part (facts, logits, sources, nearest features);
/// the script only sorts, filters and pages the table, loads a feature's data file and lays out
/// its contexts as one `<span class="tok">` per token, whose text it sets with `textContent`
/// (token text is never parsed as HTML) and whose `title` shows the activation on hover.
/// Strings written by C++ go through escapeHtml(); JSON embedded in the page has every `<`
/// written as `\u003c`, so no token can close the `<script>` element that holds it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <sae/core/error.hpp>
#include <sae/io/atomic_write.hpp>
#include <sae/report/dashboard_data.hpp>
#include <sae/report/html.hpp>
#include <sae/report/run_report.hpp>
#include <sae/report/svg.hpp>

namespace sae::report {

/// @brief A token and a score (a direct logit effect).
struct TokenScore {
  std::int32_t token = 0;
  float value = 0;
};

/// @brief What the page says besides the gathered data.
struct DashboardPage {
  std::string title = "SAE feature dashboard";
  /// The SAE's card: (label, value) rows in order (architecture, d_in, d_sae, hook, L0, ...).
  std::vector<std::pair<std::string, std::string>> card;
  /// Text of a token id as UTF-8 (invalid bytes are replaced); empty: "#id".
  std::function<std::string(std::int32_t)> token_text;
  /// Per selected feature (same order as DashboardData::features): its top and bottom tokens
  /// by direct logit effect. Empty: no logit panels.
  std::vector<std::pair<std::vector<TokenScore>, std::vector<TokenScore>>> logits;
  Index chunk = 64;  ///< Features per data file.
};

/// @brief `s` as valid UTF-8: every byte that does not start a well-formed sequence (overlong
/// forms, surrogates and code points past U+10FFFF included) becomes U+FFFD.
inline std::string validUtf8(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned c = p[i];
    std::size_t len = 0;
    unsigned cp = 0;
    if (c < 0x80) {
      len = 1;
      cp = c;
    } else if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    }
    bool ok = len > 0 && i + len <= n;
    for (std::size_t k = 1; ok && k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) ok = false;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if (ok && len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ok = false;
    if (ok && len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ok = false;
    if (ok) {
      out.append(s, i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

namespace detail {

// nlohmann::json, not ordered_json: an ordered_json object looks keys up linearly, quadratic in
// the thousands of tokens and features of a data file.
using ojson = nlohmann::json;

// JSON for a page or a script file: valid UTF-8 (bad bytes replaced) and no '<' (written \u003c,
// which only occurs inside strings), so it can sit inside a <script> element.
inline std::string scriptJson(const ojson& j) {
  const std::string s = j.dump(-1, ' ', false, ojson::error_handler_t::replace);
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    if (c == '<')
      out += "\\u003c";
    else
      out += c;
  }
  return out;
}

// A value rounded to `digits` significant digits, for compact JSON.
inline double rounded(double v, int digits = 4) {
  if (v == 0 || !std::isfinite(v)) return v;
  return std::stod(formatNumber(v, digits));
}

inline std::string tokenTextOf(const DashboardPage& page, std::int32_t id) {
  return page.token_text ? validUtf8(page.token_text(id)) : "#" + std::to_string(id);
}

inline std::string sourceLabel(const std::string& path) {
  return std::filesystem::path(path).filename().string();
}

inline std::string percent(double part, double whole) {
  return whole > 0 ? formatNumber(100.0 * part / whole, 3) + "%" : "0%";
}

// Token text with its blanks made visible, for a list of tokens: space as U+2423 (open box),
// line feed as U+21B5, tab as U+2192.
inline std::string visibleToken(const std::string& t) {
  std::string out;
  for (const char c : t) {
    if (c == ' ')
      out += "\xE2\x90\xA3";
    else if (c == '\n')
      out += "\xE2\x86\xB5";
    else if (c == '\t')
      out += "\xE2\x86\x92";
    else
      out += c;
  }
  return out;
}

// The static part of one feature's panel.
inline std::string featurePanelHtml(const DashboardData& data, const DumpRows& rows,
                                    const DashboardPage& page, std::size_t i,
                                    const std::vector<std::int32_t>& slot_of) {
  const FeatureData& fd = data.features[i];
  const eval::FeatureStatistics& st = data.stats;
  const Index f = fd.feature;
  const std::int64_t count = st.firingCount(f);
  const double mx = st.maxActivation(f);
  std::string o;
  o += "<section class=\"feature\" data-feature=\"" + std::to_string(f) + "\">";
  o += "<p class=\"back\"><a href=\"#\">&larr; all features</a></p>";
  o += "<h2>Feature " + std::to_string(f) + "</h2>";
  o += "<dl class=\"facts\">";
  auto fact = [&](const std::string& k, const std::string& v) {
    o += "<div><dt>" + escapeHtml(k) + "</dt><dd>" + escapeHtml(v) + "</dd></div>";
  };
  fact("density", formatNumber(st.frequency(f), 4));
  fact("fires on", std::to_string(count) + " of " + std::to_string(st.tokens()) + " rows");
  fact("max activation", formatNumber(mx, 5));
  fact("mean firing activation", formatNumber(st.meanFiringActivation(f), 5));
  o += "</dl>";
  if (count == 0) {
    o += "<p class=\"dead\">This feature never fired on the " + std::to_string(st.tokens()) +
         " rows of the dump.</p></section>";
    return o;
  }
  o += "<div class=\"panels\">";
  {
    BarChart h;
    h.id = "activation-histogram-" + std::to_string(f);
    h.title = "activations where it fires (" + std::to_string(count) + ")";
    h.x_label = "activation";
    const int bins = static_cast<int>(fd.histogram.size());
    for (int b = 0; b < bins; ++b) {
      h.labels.push_back(formatNumber(mx * b / bins, 3));
      h.values.push_back(static_cast<double>(fd.histogram[static_cast<std::size_t>(b)]));
    }
    h.width = 380;
    h.height = 120;
    o += "<div class=\"panel\">" + renderBarChart(h) + "</div>";
  }
  if (i < page.logits.size()) {
    auto table = [&](const char* cls, const char* head, const std::vector<TokenScore>& ts) {
      o += "<table class=\"logits " + std::string(cls) + "\"><thead><tr><th>" + head +
           "</th><th>effect</th></tr></thead><tbody>";
      for (const TokenScore& t : ts)
        o += "<tr><td class=\"t\">" + escapeHtml(visibleToken(tokenTextOf(page, t.token))) +
             "</td><td>" + formatNumber(t.value, 4) + "</td></tr>";
      o += "</tbody></table>";
    };
    o += "<div class=\"panel\"><h3>Direct logit effect W<sub>dec</sub>[f]&middot;W<sub>U</sub></h3>"
         "<div class=\"pair\">";
    table("top", "promoted", page.logits[i].first);
    table("bottom", "suppressed", page.logits[i].second);
    o += "</div></div>";
  }
  {
    o += "<div class=\"panel\"><h3>Sources</h3><table class=\"sources\"><tbody>";
    std::vector<std::size_t> order(fd.source_counts.size());
    for (std::size_t s = 0; s < order.size(); ++s) order[s] = s;
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return fd.source_counts[a] > fd.source_counts[b];
    });
    for (const std::size_t s : order) {
      if (fd.source_counts[s] == 0) continue;
      o += "<tr><td>" + escapeHtml(sourceLabel(rows.source_names[s])) + "</td><td>" +
           std::to_string(fd.source_counts[s]) + "</td><td>" +
           percent(double(fd.source_counts[s]), double(count)) + "</td></tr>";
    }
    o += "</tbody></table></div>";
  }
  if (!fd.nearest.empty()) {
    o += "<div class=\"panel\"><h3>Nearest by decoder cosine</h3><table class=\"nearest\"><tbody>";
    for (const auto& [g, c] : fd.nearest) {
      const std::string id = std::to_string(g);
      const bool shown = slot_of[static_cast<std::size_t>(g)] >= 0;
      o += "<tr><td>" + (shown ? "<a href=\"#feature-" + id + "\">" + id + "</a>" : id) +
           "</td><td>" + formatNumber(c, 3) + "</td></tr>";
    }
    o += "</tbody></table></div>";
  }
  o += "</div>";
  o += "<h3>Top activations</h3><div class=\"contexts\" data-group=\"top\"></div>";
  o += "<h3>Activation intervals</h3><p class=\"note\">(0, max] cut into " +
       std::to_string(fd.intervals.size()) +
       " equal intervals, highest first; contexts sampled uniformly from each.</p>";
  for (std::size_t iv = fd.intervals.size(); iv-- > 0;) {
    const double lo = mx * double(iv) / double(fd.intervals.size());
    const double hi = mx * double(iv + 1) / double(fd.intervals.size());
    o += "<h4>Interval " + formatNumber(lo, 4) + " &ndash; " + formatNumber(hi, 4) + ": " +
         std::to_string(fd.interval_counts[iv]) + " firings (" +
         percent(double(fd.interval_counts[iv]), double(count)) + ")</h4>";
    o += "<div class=\"contexts\" data-group=\"i" + std::to_string(iv) + "\"></div>";
  }
  o += "</section>";
  return o;
}

inline ojson contextJson(const Context& c, const DumpRows& rows,
                         std::map<std::int32_t, int>& used) {
  ojson t = ojson::array(), a = ojson::array();
  for (std::size_t k = 0; k < c.acts.size(); ++k) {
    const std::int32_t id = rows.tokens[static_cast<std::size_t>(c.first) + k];
    used[id] = 1;
    t.push_back(id);
    if (c.acts[k] != 0) a.push_back(ojson::array({k, rounded(c.acts[k])}));
  }
  const auto first = static_cast<std::size_t>(c.first);
  return {{"row", c.example},
          {"s", rows.sources[first]},
          {"x", c.example - c.first},
          {"t", std::move(t)},
          {"a", std::move(a)}};
}

// The page's styles.
inline constexpr const char* kDashboardCss = R"css(
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1180px;padding:16px 24px;color:#1d232a}
h1{font-size:22px;margin:4px 0 12px}h2{font-size:18px;margin:8px 0}h3{font-size:15px;margin:16px 0 6px}
h4{font-size:13px;margin:10px 0 4px;color:#444;font-weight:600}
.card{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;background:#f5f7fa;
border:1px solid #dde3ea;border-radius:6px;padding:10px 14px;max-width:720px}
.card dt{color:#555}.card dd{margin:0;font-family:ui-monospace,monospace;word-break:break-all}
svg.chart{font:11px system-ui,sans-serif}.chart-title{font-weight:600}
.grid{stroke:#e3e7ec}.frame{fill:none;stroke:#9aa4ae}.bar{fill:#e6550d}.bar:hover{fill:#a63603}
.tick.y{text-anchor:end;dominant-baseline:middle}.tick.x{text-anchor:middle}.axis-label{text-anchor:middle}
.toolbar{display:flex;gap:12px;align-items:center;margin:8px 0}
#search{padding:4px 8px;width:280px}
table{border-collapse:collapse}th,td{padding:2px 8px;text-align:left}
#features{width:100%}#features th{cursor:pointer;user-select:none;border-bottom:2px solid #ccd3da;white-space:nowrap}
#features th[aria-sort=ascending]::after{content:" \25B2"}#features th[aria-sort=descending]::after{content:" \25BC"}
#features td{border-bottom:1px solid #eef1f4;font-variant-numeric:tabular-nums}
#features td.tokens,td.t,.tok{font-family:ui-monospace,monospace;white-space:pre}
#features tr:hover{background:#fff4ec}
.facts{display:flex;gap:24px;margin:4px 0 8px}.facts dt{color:#555;font-size:12px}.facts dd{margin:0;font-weight:600}
.panels{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.panel{border:1px solid #e3e7ec;border-radius:6px;padding:6px 10px}.panel h3{margin:2px 0 6px}
.pair{display:flex;gap:12px}.logits td:last-child,.sources td:nth-child(n+2),.nearest td:last-child{text-align:right}
.contexts .ctx{font:13px/1.9 ui-monospace,monospace;border-bottom:1px solid #f0f2f4;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.ctx .src{display:inline-block;width:150px;color:#778;font:11px system-ui,sans-serif;overflow:hidden;vertical-align:middle}
.tok{border-radius:2px;padding:1px 0}.tok.max{outline:2px solid #1d232a;font-weight:700}
.note{color:#666;font-size:12px}.dead{color:#a00}#panel-error{color:#a00}
)css";

// The page's script: the table (sort, search, pages), the lazy feature files, the contexts.
inline constexpr const char* kDashboardJs = R"js(
(function () {
  'use strict';
  var meta = JSON.parse(document.getElementById('sae-meta').textContent);
  var rows = JSON.parse(document.getElementById('sae-table-data').textContent);
  var byFeature = {};
  rows.forEach(function (r) { byFeature[r[0]] = r; });
  var chunks = {}, wanted = null, state = {key: 1, desc: true, q: '', page: 0};
  var table = document.getElementById('features'), tbody = table.querySelector('tbody');
  var view = document.getElementById('table-view'), panel = document.getElementById('feature-view');
  function fmt(v, d) { return v === null ? '' : (v === 0 ? '0' : Number(v).toPrecision(d)); }
  function cell(tr, text, cls) {
    var td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }
  function filtered() {
    var q = state.q.toLowerCase();
    var out = q === '' ? rows.slice() : rows.filter(function (r) {
      return String(r[0]) === q || meta.sources[r[4]].toLowerCase().indexOf(q) >= 0 ||
        r[5].toLowerCase().indexOf(q) >= 0;
    });
    var k = state.key, s = state.desc ? -1 : 1;
    out.sort(function (a, b) {
      var x = k === 4 ? meta.sources[a[4]] : a[k], y = k === 4 ? meta.sources[b[4]] : b[k];
      if (x === null) x = -Infinity;
      if (y === null) y = -Infinity;
      return x < y ? -s : x > y ? s : a[0] - b[0];
    });
    return out;
  }
  function drawTable() {
    var list = filtered(), size = meta.page_size;
    var pages = Math.max(1, Math.ceil(list.length / size));
    state.page = Math.min(state.page, pages - 1);
    var first = state.page * size, part = list.slice(first, first + size);
    tbody.textContent = '';
    part.forEach(function (r) {
      var tr = document.createElement('tr');
      tr.setAttribute('data-feature', r[0]);
      var td = document.createElement('td'), a = document.createElement('a');
      a.href = '#feature-' + r[0];
      a.textContent = r[0];
      td.appendChild(a);
      tr.appendChild(td);
      cell(tr, fmt(r[1], 3));
      cell(tr, fmt(r[2], 4));
      cell(tr, fmt(r[3], 4));
      cell(tr, r[1] > 0 ? meta.sources[r[4]] : '');
      cell(tr, r[5], 'tokens');
      tbody.appendChild(tr);
    });
    table.querySelectorAll('th').forEach(function (th) {
      var k = Number(th.getAttribute('data-key'));
      if (k === state.key) th.setAttribute('aria-sort', state.desc ? 'descending' : 'ascending');
      else th.removeAttribute('aria-sort');
    });
    document.getElementById('page-info').textContent = list.length === 0 ? 'no features match' :
      (first + 1) + '\u2013' + (first + part.length) + ' of ' + list.length + ' features';
    document.getElementById('prev').disabled = state.page === 0;
    document.getElementById('next').disabled = state.page >= pages - 1;
    table.setAttribute('data-rows', list.length);
  }
  table.querySelectorAll('th').forEach(function (th) {
    th.addEventListener('click', function () {
      var k = Number(th.getAttribute('data-key'));
      if (k === state.key) state.desc = !state.desc;
      else { state.key = k; state.desc = k !== 0 && k !== 4 && k !== 5; }
      state.page = 0;
      drawTable();
    });
  });
  document.getElementById('search').addEventListener('input', function (e) {
    state.q = e.target.value.trim();
    state.page = 0;
    drawTable();
  });
  document.getElementById('prev').addEventListener('click', function () { state.page--; drawTable(); });
  document.getElementById('next').addEventListener('click', function () { state.page++; drawTable(); });

  function drawContexts(box, list, chunk, max) {
    list.forEach(function (c) {
      var line = document.createElement('div');
      line.className = 'ctx';
      var src = document.createElement('span');
      src.className = 'src';
      src.textContent = meta.sources[c.s] + ' row ' + c.row;
      line.appendChild(src);
      var acts = c.t.map(function () { return 0; });
      c.a.forEach(function (p) { acts[p[0]] = p[1]; });
      c.t.forEach(function (id, k) {
        var span = document.createElement('span'), v = acts[k];
        span.className = 'tok' + (v > 0 ? ' on' : '') + (k === c.x ? ' max' : '');
        span.textContent = chunk.tokens[id].replace(/\n/g, '\u21b5').replace(/\t/g, '\u2192');
        span.title = JSON.stringify(chunk.tokens[id]) + ': ' + v;
        span.setAttribute('data-act', v);
        if (v > 0 && max > 0)
          span.style.backgroundColor = 'rgba(230,85,13,' + Math.min(1, 0.15 + 0.85 * v / max).toFixed(3) + ')';
        line.appendChild(span);
      });
      box.appendChild(line);
    });
  }
  function showFeature(f) {
    var r = byFeature[f];
    view.hidden = true;
    panel.hidden = false;
    if (!r) { panel.innerHTML = '<p id="panel-error">Feature ' + f + ' is not in this dashboard. <a href="#">Back</a></p>'; return; }
    var data = chunks[r[6]];
    if (!data) {
      wanted = f;
      panel.innerHTML = '<p class="note">Loading feature ' + f + '\u2026</p>';
      var s = document.createElement('script'), name = String(r[6]);
      while (name.length < 5) name = '0' + name;
      s.src = 'data/features-' + name + '.js';
      s.onerror = function () {
        panel.innerHTML = '<p id="panel-error">Cannot load ' + s.src + ': keep the data folder beside index.html.</p>';
      };
      document.head.appendChild(s);
      return;
    }
    var d = data.features[f];
    panel.innerHTML = d.html;
    panel.querySelectorAll('.contexts').forEach(function (box) {
      var g = box.getAttribute('data-group');
      drawContexts(box, g === 'top' ? d.top : d.intervals[Number(g.slice(1))], data, r[2]);
    });
    document.title = 'Feature ' + f + ' \u2013 ' + meta.title;
    window.scrollTo(0, 0);
  }
  function route() {
    var m = /^#feature-(\d+)$/.exec(location.hash);
    if (m) { showFeature(Number(m[1])); return; }
    panel.hidden = true;
    view.hidden = false;
    document.title = meta.title;
  }
  window.saeDashboard = {
    addChunk: function (n, data) {
      chunks[n] = data;
      if (wanted !== null && byFeature[wanted] && byFeature[wanted][6] === n) {
        var f = wanted;
        wanted = null;
        showFeature(f);
      }
    }
  };
  window.addEventListener('hashchange', route);
  drawTable();
  route();
})();
)js";

// The three most frequent tokens among a feature's top contexts' example rows (ties: the first
// seen), blanks made visible, two spaces apart.
inline std::string topTokensText(const FeatureData& fd, const DumpRows& rows,
                                 const DashboardPage& page) {
  std::vector<std::pair<std::int32_t, int>> seen;
  for (const Context& c : fd.top) {
    const std::int32_t id = rows.tokens[static_cast<std::size_t>(c.example)];
    auto it = std::find_if(seen.begin(), seen.end(), [&](const auto& p) { return p.first == id; });
    if (it == seen.end())
      seen.emplace_back(id, 1);
    else
      ++it->second;
  }
  std::stable_sort(seen.begin(), seen.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  std::string out;
  for (std::size_t k = 0; k < seen.size() && k < 3; ++k)
    out += (k ? "  " : "") + visibleToken(tokenTextOf(page, seen[k].first));
  return out;
}

}  // namespace detail

/// @brief What writeDashboard() wrote.
struct DashboardFiles {
  std::string index;  ///< index.html.
  std::size_t data_files = 0;
  std::uintmax_t bytes = 0;  ///< All files together.
};

/// @brief Creates folder `out` and `out`/data if needed and checks that a file can be written
/// there (so that a bad output path fails before the work). IoError naming the path.
inline void prepareDashboardFolder(const std::string& out) {
  namespace fs = std::filesystem;
  const fs::path data_dir = fs::path(out) / "data";
  std::error_code ec;
  fs::create_directories(data_dir, ec);
  if (ec || !fs::is_directory(data_dir))
    throw IoError(data_dir.string() + ": cannot create the dashboard folder" +
                  (ec ? ": " + ec.message() : std::string()));
  io::writeTextFile((data_dir / ".write-test").string(), "");
  fs::remove(data_dir / ".write-test", ec);
}

/// @brief Writes the dashboard of `data` into folder `out` (created if needed): index.html and
/// data/features-NNNNN.js (every earlier data/features-*.js removed first). Each file is written
/// atomically, index.html last. IoError naming the path when a file cannot be written.
inline DashboardFiles writeDashboard(const DashboardData& data, const DumpRows& rows,
                                     const DashboardPage& page, const std::string& out) {
  namespace fs = std::filesystem;
  using detail::ojson;
  require(page.chunk > 0, "dashboard: chunk must be positive");
  require(page.logits.empty() || page.logits.size() == data.features.size(),
          "dashboard: ", page.logits.size(), " logit lists for ", data.features.size(),
          " features");
  const fs::path dir(out), data_dir = fs::path(out) / "data";
  prepareDashboardFolder(out);
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(data_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("features-", 0) == 0 && e.path().extension() == ".js") fs::remove(e.path(), ec);
  }
  const eval::FeatureStatistics& st = data.stats;
  std::vector<std::int32_t> slot_of(static_cast<std::size_t>(st.dSae()), -1);
  for (std::size_t i = 0; i < data.features.size(); ++i)
    slot_of[static_cast<std::size_t>(data.features[i].feature)] = static_cast<std::int32_t>(i);

  DashboardFiles result;
  ojson table = ojson::array();
  const std::size_t F = data.features.size(), C = static_cast<std::size_t>(page.chunk);
  for (std::size_t first = 0; first < F; first += C) {
    const std::size_t chunk = first / C;
    std::map<std::int32_t, int> used;
    ojson feats = ojson::object();
    for (std::size_t i = first; i < std::min(F, first + C); ++i) {
      const FeatureData& fd = data.features[i];
      const Index f = fd.feature;
      ojson top = ojson::array(), intervals = ojson::array();
      for (const Context& c : fd.top) top.push_back(detail::contextJson(c, rows, used));
      for (const auto& group : fd.intervals) {
        ojson g = ojson::array();
        for (const Context& c : group) g.push_back(detail::contextJson(c, rows, used));
        intervals.push_back(std::move(g));
      }
      feats[std::to_string(f)] = {{"html", detail::featurePanelHtml(data, rows, page, i, slot_of)},
                                  {"top", std::move(top)},
                                  {"intervals", std::move(intervals)}};
      std::size_t top_source = 0;
      for (std::size_t s = 1; s < fd.source_counts.size(); ++s)
        if (fd.source_counts[s] > fd.source_counts[top_source]) top_source = s;
      const bool fired = st.firingCount(f) > 0;
      table.push_back(ojson::array(
          {f, st.frequency(f),
           fired ? ojson(detail::rounded(st.maxActivation(f), 5)) : ojson(nullptr),
           fired ? ojson(detail::rounded(st.meanFiringActivation(f), 5)) : ojson(nullptr),
           top_source, detail::topTokensText(fd, rows, page), chunk}));
    }
    ojson tokens = ojson::object();
    for (const auto& [id, unused] : used) {
      (void)unused;
      tokens.emplace(std::to_string(id), detail::tokenTextOf(page, id));
    }
    char name[40];
    std::snprintf(name, sizeof name, "features-%05zu.js", chunk);
    const std::string body =
        "saeDashboard.addChunk(" + std::to_string(chunk) + ", " +
        detail::scriptJson({{"tokens", std::move(tokens)}, {"features", std::move(feats)}}) +
        ");\n";
    io::writeTextFile((data_dir / name).string(), body);
    result.bytes += body.size();
    ++result.data_files;
  }

  ojson sources = ojson::array();
  for (const std::string& s : rows.source_names) sources.push_back(detail::sourceLabel(s));
  const ojson meta = {
      {"title", page.title}, {"sources", sources}, {"page_size", 100}, {"features", F}};
  std::string h;
  h += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">";
  h += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">";
  h += "<title>" + escapeHtml(page.title) + "</title><style>" + detail::kDashboardCss +
       "</style></head><body>";
  h += "<div id=\"table-view\"><h1>" + escapeHtml(page.title) +
       "</h1><dl class=\"card\" id=\"sae-card\">";
  for (const auto& [k, v] : page.card)
    h += "<dt>" + escapeHtml(k) + "</dt><dd>" + escapeHtml(v) + "</dd>";
  h += "</dl>";
  h += "<h3>Feature density</h3>" + renderDensityHistogram(st.densityHistogram(), st.dSae());
  h += "<h3>Features</h3><div class=\"toolbar\"><input id=\"search\" type=\"search\" "
       "placeholder=\"feature id, token or source\" aria-label=\"search features\">"
       "<button id=\"prev\" type=\"button\">&larr; previous</button><span id=\"page-info\"></span>"
       "<button id=\"next\" type=\"button\">next &rarr;</button></div>";
  h += "<table id=\"features\" data-features=\"" + std::to_string(F) +
       "\"><thead><tr><th data-key=\"0\">feature</th><th data-key=\"1\">density</th>"
       "<th data-key=\"2\">max activation</th><th data-key=\"3\">mean firing activation</th>"
       "<th data-key=\"4\">top source</th><th data-key=\"5\">top tokens</th></tr></thead>"
       "<tbody></tbody></table>";
  h += "<noscript><p>The table and the feature pages need JavaScript.</p></noscript></div>";
  h += "<div id=\"feature-view\" hidden></div>";
  h +=
      "<script type=\"application/json\" id=\"sae-meta\">" + detail::scriptJson(meta) + "</script>";
  h += "<script type=\"application/json\" id=\"sae-table-data\">" + detail::scriptJson(table) +
       "</script>";
  h += "<script>" + std::string(detail::kDashboardJs) + "</script></body></html>\n";
  const std::string index = (dir / "index.html").string();
  io::writeTextFile(index, h);
  result.index = index;
  result.bytes += h.size();
  return result;
}

/// @brief The batch fields of a Neuronpedia export (SAEDashboard's NeuronpediaDashboardBatch).
struct NeuronpediaExport {
  std::string model_id;          ///< "model_id", e.g. "gpt2-small".
  int layer = 0;                 ///< "layer".
  std::string sae_set;           ///< "sae_set", e.g. "res-jb".
  Index n_tokens_in_prompt = 0;  ///< Tokens per window.
  Index n_prompts_total = 0;     ///< Windows the statistics cover.
  std::string dataset;           ///< What the windows are (the dump's files).
  Index batch = 128;             ///< Features per batch file.
};

/// @brief Writes the data of a dashboard as SAEDashboard's Neuronpedia batch files,
/// `dir`/batch-N.json (atomic each): {"model_id", "layer", "sae_set", "features": [...]} with,
/// per feature, the fields of NeuronpediaDashboardFeature:
///   - filled: feature_index, frac_nonzero (density), freq_hist_data_bar_values (bin centres) and
///     freq_hist_data_bar_heights (firing counts) of the activation histogram, pos_str /
///     pos_values / neg_str / neg_values (the logits, when the page has them), n_prompts_total,
///     n_tokens_in_prompt, dataset, and activations: the top contexts (bin_min -1, bin_max the
///     max activation, bin_contains -1, as SAEDashboard writes its "TOP ACTIVATIONS" group),
///     then the interval samples (bin_min, bin_max, bin_contains = the interval's share of the
///     firings), each with its tokens as text and the feature's activation on each (3 decimals);
///   - empty lists (not computed here): neuron_alignment_*, correlated_neurons_*,
///     correlated_features_* (SAEDashboard's are activation correlations, not the decoder
///     cosines this dashboard shows), logits_hist_data_*, decoder_weights_dist.
/// Returns the number of files written. IoError naming the path when one cannot be written.
inline std::size_t writeNeuronpediaBatches(const DashboardData& data, const DumpRows& rows,
                                           const DashboardPage& page, const NeuronpediaExport& np,
                                           const std::string& dir) {
  namespace fs = std::filesystem;
  using detail::ojson;
  require(np.batch > 0, "neuronpedia export: batch must be positive");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir))
    throw IoError(dir + ": cannot create the Neuronpedia export folder" +
                  (ec ? ": " + ec.message() : std::string()));
  const eval::FeatureStatistics& st = data.stats;
  auto r3 = [](double v) { return std::round(v * 1000.0) / 1000.0; };
  auto activation = [&](const Context& c, double lo, double hi, double contains) {
    ojson tokens = ojson::array(), values = ojson::array();
    for (std::size_t k = 0; k < c.acts.size(); ++k) {
      tokens.push_back(
          detail::tokenTextOf(page, rows.tokens[static_cast<std::size_t>(c.first) + k]));
      values.push_back(r3(c.acts[k]));
    }
    return ojson{{"bin_min", lo},
                 {"bin_max", hi},
                 {"bin_contains", contains},
                 {"tokens", std::move(tokens)},
                 {"values", std::move(values)}};
  };
  auto logitList = [&](const std::vector<TokenScore>& ts, ojson& str, ojson& val) {
    for (const TokenScore& t : ts) {
      str.push_back(detail::tokenTextOf(page, t.token));
      val.push_back(r3(t.value));
    }
  };
  const std::size_t F = data.features.size(), B = static_cast<std::size_t>(np.batch);
  std::size_t files = 0;
  for (std::size_t first = 0; first < F; first += B, ++files) {
    ojson features = ojson::array();
    for (std::size_t i = first; i < std::min(F, first + B); ++i) {
      const FeatureData& fd = data.features[i];
      const double mx = st.maxActivation(fd.feature);
      const double count = static_cast<double>(st.firingCount(fd.feature));
      ojson f = ojson::object();
      f["feature_index"] = fd.feature;
      for (const char* k :
           {"neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
            "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson",
            "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson",
            "logits_hist_data_bar_heights", "logits_hist_data_bar_values", "decoder_weights_dist"})
        f[k] = ojson::array();
      ojson pos_str = ojson::array(), pos_val = ojson::array(), neg_str = ojson::array(),
            neg_val = ojson::array();
      if (i < page.logits.size()) {
        logitList(page.logits[i].first, pos_str, pos_val);
        logitList(page.logits[i].second, neg_str, neg_val);
      }
      f["pos_str"] = std::move(pos_str);
      f["pos_values"] = std::move(pos_val);
      f["neg_str"] = std::move(neg_str);
      f["neg_values"] = std::move(neg_val);
      f["frac_nonzero"] = st.frequency(fd.feature);
      ojson centres = ojson::array(), heights = ojson::array();
      const std::size_t bins = fd.histogram.size();
      for (std::size_t b = 0; b < bins; ++b) {
        centres.push_back(r3(mx * (double(b) + 0.5) / double(bins)));
        heights.push_back(fd.histogram[b]);
      }
      f["freq_hist_data_bar_values"] = std::move(centres);
      f["freq_hist_data_bar_heights"] = std::move(heights);
      f["n_prompts_total"] = np.n_prompts_total;
      f["n_tokens_in_prompt"] = np.n_tokens_in_prompt;
      f["dataset"] = np.dataset;
      ojson acts = ojson::array();
      for (const Context& c : fd.top) acts.push_back(activation(c, -1, r3(mx), -1));
      const std::size_t I = fd.intervals.size();
      for (std::size_t iv = I; iv-- > 0;)
        for (const Context& c : fd.intervals[iv])
          acts.push_back(activation(c, r3(mx * double(iv) / double(I)),
                                    r3(mx * double(iv + 1) / double(I)),
                                    count > 0 ? double(fd.interval_counts[iv]) / count : 0.0));
      f["activations"] = std::move(acts);
      features.push_back(std::move(f));
    }
    const ojson batch = {{"model_id", np.model_id},
                         {"layer", np.layer},
                         {"sae_set", np.sae_set},
                         {"features", std::move(features)}};
    io::writeTextFile((fs::path(dir) / ("batch-" + std::to_string(files) + ".json")).string(),
                      batch.dump(-1, ' ', false, ojson::error_handler_t::replace) + "\n");
  }
  return files;
}

}  // namespace sae::report
