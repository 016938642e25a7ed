// The feature dashboard (sae/report/dashboard_data.hpp, dashboard.hpp) and `sae dashboard`:
// - the data of a hand-made dump and SAE whose every activation is known (W_enc = I): top
//   contexts with their window boundaries, interval counts and samples, histograms, sources,
//   decoder-cosine neighbours, independence of the batch size;
// - the files: the table, the lazy data files, HTML escaping of a corpus holding <script>;
// - bad input: a dump whose width is not the SAE's d_in, missing or short row files, feature
//   lists out of range;
// - with chromium: the page opened from file:// with no console errors, the table sorted and a
//   feature opened by clicks (a driver script), and screenshots of the reference SAE's
//   dashboard on the reference model (the README's pictures), whose logits are checked against
//   the direct logit effect computed here.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sae/io/npy.hpp>
#include <sae/io/saelens.hpp>
#include <sae/lm/attribution.hpp>
#include <sae/lm/gpt2.hpp>
#include <sae/lm/tokenizer.hpp>
#include <sae/report/dashboard.hpp>

#include <support/browser.hpp>
#include <support/cli_runner.hpp>
#include <support/test_support.hpp>

namespace sae_test_dashboard {

namespace {

namespace fs = std::filesystem;
using sae::Index;
using sae::RowMatrix;
using sae::test::checkCliFails;
using sae::test::lmDataPath;
using sae::test::readFile;
using sae::test::runCliOk;
using sae::test::scratchDir;
using json = nlohmann::json;

constexpr Index kRows = 60, kWindow = 10, kD = 4;
const char* const kHook = "blocks.0.hook_resid_pre";

// The hand-made data: rows in windows of 10 (positions 1..10), rows 0-29 from a.txt, 30-59 from
// b.txt. Feature 0 fires on rows r = 0 mod 7 with 1 + r / 10; feature 1 on every row of b.txt
// with 0.5; feature 2 only on row kScriptRow (the token "<" of "<script>") with 3; feature 3
// never (its input is negative).
struct HandData {
  std::vector<std::int32_t> tokens, positions, sources;
  RowMatrix<float> x;
  Index script_row = -1;
};

const sae::lm::Gpt2Tokenizer& tokenizer() {
  static const auto tok = sae::lm::Gpt2Tokenizer::fromDirectory(lmDataPath("gpt2-tokenizer"));
  return tok;
}

HandData handData() {
  HandData d;
  const std::string text =
      "The quick brown fox jumps over the lazy dog and the cat. Le renard brun saute par-dessus "
      "le chien. <script>alert(1)</script> & \"quotes\" 'too' over the lazy dog again and again "
      "until the end of the text, and then some more words.";
  const std::vector<std::int32_t> ids = tokenizer().encode(text);
  REQUIRE(ids.size() >= std::size_t(kRows));
  d.tokens.assign(ids.begin(), ids.begin() + kRows);
  d.x = RowMatrix<float>::Zero(kRows, kD);
  for (Index r = 0; r < kRows; ++r) {
    d.positions.push_back(static_cast<std::int32_t>(1 + r % kWindow));
    d.sources.push_back(r < 30 ? 0 : 1);
    if (r % 7 == 0) d.x(r, 0) = 1.0f + float(r) / 10.0f;
    if (r >= 30) d.x(r, 1) = 0.5f;
    d.x(r, 3) = -1.0f;
    if (d.script_row < 0 && tokenizer().idToBytes(d.tokens[std::size_t(r)]) == " <")
      d.script_row = r;
  }
  REQUIRE(d.script_row >= 0);
  d.x(d.script_row, 2) = 3.0f;
  return d;
}

// Writes `d` as a `sae dump` folder (one hook, one shard) of width `width` (extra columns 0).
void writeDump(const std::string& dir, const HandData& d, Index width = kD) {
  fs::create_directories(dir + "/" + kHook);
  RowMatrix<float> x = RowMatrix<float>::Zero(kRows, width);
  x.leftCols(std::min(width, kD)) = d.x.leftCols(std::min(width, kD));
  sae::io::writeNpy(dir + "/" + kHook + "/shard-00000.npy", x);
  sae::io::writeNpyInt32(dir + "/tokens.npy", d.tokens.data(), kRows);
  sae::io::writeNpyInt32(dir + "/positions.npy", d.positions.data(), kRows);
  sae::io::writeNpyInt32(dir + "/sources.npy", d.sources.data(), kRows);
  const json meta = {
      {"format", "sae-dump"},
      {"rows", kRows},
      {"files", {{{"path", "corpus/a.txt"}}, {{"path", "corpus/b.txt"}}}},
      {"hooks",
       {{{"name", kHook}, {"width", width}, {"folder", kHook}, {"shards", {"shard-00000.npy"}}}}}};
  sae::test::writeBytes(dir + "/dump.json", meta.dump(2));
}

// A standard SAE with W_enc = I (codes = relu(x)) and decoder rows e0, e1, (e0 + e1) / sqrt 2,
// e3: the decoder cosines of feature 2 with 0 and 1 are 1 / sqrt 2, all others 0.
void writeSae(const std::string& dir) {
  sae::SaeConfig c;
  c.d_in = kD;
  c.d_sae = kD;
  sae::StandardSAE<float> m(c, 0);
  const RowMatrix<float> eye = RowMatrix<float>::Identity(kD, kD);
  RowMatrix<float> dec = eye;
  dec.row(2) << float(M_SQRT1_2), float(M_SQRT1_2), 0.0f, 0.0f;
  m.parameters().assignRowMajor("W_enc", eye);
  m.parameters().assignRowMajor("W_dec", dec);
  m.parameters().assignRowMajor("b_enc", RowMatrix<float>::Zero(1, kD));
  m.parameters().assignRowMajor("b_dec", RowMatrix<float>::Zero(1, kD));
  sae::io::SaeLensSaveOptions o;
  o.metadata["hook_name"] = kHook;
  sae::io::saveSaeLens(m, dir, o);
}

// The hand data, its dump and SAE under `name`.
struct Fixture {
  HandData d = handData();
  std::string dir, dump, sae;
  explicit Fixture(const std::string& name) : dir(scratchDir("dashboard", name)) {
    dump = dir + "/dump";
    sae = dir + "/sae";
    writeDump(dump, d);
    writeSae(sae);
  }
};

std::vector<Index> allOf(const sae::eval::FeatureStatistics& st) {
  std::vector<Index> v;
  for (Index f = 0; f < st.dSae(); ++f) v.push_back(f);
  return v;
}

sae::report::DashboardData gather(const Fixture& fx, Index batch, Index before = 3,
                                  Index after = 2) {
  const auto loaded = sae::io::loadSae<float>(fx.sae);
  const auto rows = sae::report::readDumpRows(fx.dump);
  const sae::io::ActivationFiles files(rows.shardsOf(""));
  sae::report::DashboardOptions o;
  o.top_n = 5;
  o.intervals = 4;
  o.interval_samples = 2;
  o.before = before;
  o.after = after;
  o.histogram_bins = 6;
  o.neighbours = 3;
  o.batch = batch;
  return sae::report::gatherDashboard(loaded, files, rows, allOf, o);
}

std::size_t countOf(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// The text between `open` and the next `close` after it ("" when absent).
std::string between(const std::string& s, const std::string& open, const std::string& close) {
  const std::size_t a = s.find(open);
  if (a == std::string::npos) return "";
  const std::size_t b = s.find(close, a + open.size());
  return b == std::string::npos ? "" : s.substr(a + open.size(), b - a - open.size());
}

// The JSON of data file `path` (saeDashboard.addChunk(N, {...});).
json chunkJson(const std::string& path) {
  const std::string s = readFile(path);
  const std::size_t a = s.find(", "), b = s.rfind(");");
  REQUIRE(a != std::string::npos);
  REQUIRE(b != std::string::npos);
  return json::parse(s.substr(a + 2, b - a - 2));
}

}  // namespace

TEST_CASE("validUtf8 keeps well-formed text and replaces every bad byte", "[dashboard]") {
  using sae::report::validUtf8;
  const std::string r = "\xEF\xBF\xBD";
  CHECK(validUtf8("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80") ==
        "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");
  CHECK(validUtf8("a\xC3") == "a" + r);                   // cut character
  CHECK(validUtf8("\xC0\xAF") == r + r);                  // overlong '/'
  CHECK(validUtf8("\xED\xA0\x80") == r + r + r);          // a surrogate
  CHECK(validUtf8("\xF4\x90\x80\x80") == r + r + r + r);  // past U+10FFFF
  CHECK(validUtf8("\x80x") == r + "x");                   // stray continuation byte
}

TEST_CASE("dashboard data: contexts, intervals, histograms, sources and neighbours",
          "[dashboard]") {
  const Fixture fx("data");
  const auto data = gather(fx, 4096);
  REQUIRE(data.features.size() == 4);
  const auto& st = data.stats;
  CHECK(st.tokens() == kRows);
  CHECK(st.firingCount(0) == 9);  // rows 0, 7, ..., 56
  CHECK(st.firingCount(1) == 30);
  CHECK(st.firingCount(2) == 1);
  CHECK(st.firingCount(3) == 0);
  CHECK(st.maxActivation(0) == Approx(6.6));

  // Feature 0's top contexts: rows 56, 49, 42, 35, 28, each with up to 3 rows before and 2
  // after inside its window of 10 (windows start at rows 0, 10, 20, ...).
  const auto& f0 = data.features[0];
  REQUIRE(f0.top.size() == 5);
  const std::int64_t want_rows[] = {56, 49, 42, 35, 28};
  for (std::size_t i = 0; i < 5; ++i) {
    const auto& c = f0.top[i];
    const std::int64_t r = want_rows[i], start = r - r % kWindow, end = start + kWindow - 1;
    INFO("row " << r);
    CHECK(c.example == r);
    CHECK(c.first == std::max(start, r - 3));
    CHECK(c.first + std::int64_t(c.acts.size()) - 1 == std::min(end, r + 2));
    for (std::size_t t = 0; t < c.acts.size(); ++t)
      CHECK(c.acts[t] == fx.d.x(c.first + std::int64_t(t), 0));
  }
  // Row 28 is 8th of its window (20..29): 3 before, and only 1 after (29).
  CHECK(f0.top[4].acts.size() == 5);

  // Intervals of (0, 6.6] in 4: (0, 1.65] holds 1.0, 1.7 is in the second; values 1 + r / 10.
  std::vector<std::int64_t> want_counts(4, 0);
  for (Index r = 0; r < kRows; r += 7)
    ++want_counts[std::size_t(std::min(3, int(std::floor((1.0 + r / 10.0) / 6.6 * 4))))];
  CHECK(f0.interval_counts == want_counts);
  CHECK(want_counts == std::vector<std::int64_t>{1, 3, 2, 3});
  for (std::size_t iv = 0; iv < 4; ++iv) {
    CHECK(f0.intervals[iv].size() == std::min<std::size_t>(2, std::size_t(want_counts[iv])));
    for (const auto& c : f0.intervals[iv]) {
      const double v = fx.d.x(c.example, 0);
      CHECK(v > 6.6 * double(iv) / 4 - 1e-6);
      CHECK(v <= 6.6 * double(iv + 1) / 4 + 1e-6);
    }
  }
  std::int64_t hist_total = 0;
  for (auto h : f0.histogram) hist_total += h;
  CHECK(hist_total == 9);
  CHECK(f0.histogram.back() >= 1);  // the max itself is in the last bin

  // Feature 1 fires on b.txt only; its constant activation puts every firing in the top
  // interval and bin; ties in the top list go to the lower row.
  const auto& f1 = data.features[1];
  CHECK(f1.source_counts == std::vector<std::int64_t>{0, 30});
  CHECK(f1.interval_counts == std::vector<std::int64_t>{0, 0, 0, 30});
  CHECK(f1.histogram.back() == 30);
  CHECK(f1.top.front().example == 30);
  CHECK(f0.source_counts == std::vector<std::int64_t>{5, 4});

  // Feature 2: one firing; its context shows the token before and after.
  const auto& f2 = data.features[2];
  REQUIRE(f2.top.size() == 1);
  CHECK(f2.top[0].example == fx.d.script_row);
  CHECK(f2.top[0].acts[std::size_t(fx.d.script_row - f2.top[0].first)] == 3.0f);

  // Decoder cosines: 2 is closest to 0 and 1 (1 / sqrt 2); ties go to the lower index.
  REQUIRE(f2.nearest.size() == 3);
  CHECK(f2.nearest[0].first == 0);
  CHECK(f2.nearest[0].second == Approx(M_SQRT1_2));
  CHECK(f2.nearest[1].first == 1);
  CHECK(f2.nearest[2].first == 3);
  CHECK(f2.nearest[2].second == Approx(0.0).margin(1e-7));
  CHECK(data.features[0].nearest[0].first == 2);
  CHECK(data.features[3].top.empty());
  CHECK(data.explained_variance < 1.0);  // the decoder is not the inverse of the encoder

  // Batches of 7 rows give the same samples and contexts (the sample is a hash of the row).
  const auto small = gather(fx, 7);
  for (std::size_t f = 0; f < 4; ++f)
    for (std::size_t iv = 0; iv < 4; ++iv) {
      REQUIRE(small.features[f].intervals[iv].size() == data.features[f].intervals[iv].size());
      for (std::size_t k = 0; k < data.features[f].intervals[iv].size(); ++k) {
        CHECK(small.features[f].intervals[iv][k].example ==
              data.features[f].intervals[iv][k].example);
        CHECK(small.features[f].intervals[iv][k].acts == data.features[f].intervals[iv][k].acts);
      }
    }
}

TEST_CASE("dashboard files: the table, the lazy data files and escaped corpus text",
          "[dashboard]") {
  const Fixture fx("files");
  const auto data = gather(fx, 4096);
  const auto rows = sae::report::readDumpRows(fx.dump);
  sae::report::DashboardPage page;
  page.title = "hand <SAE>";
  page.card = {{"hook", "<b>" + std::string(kHook) + "</b>"}};
  page.token_text = [](std::int32_t id) { return tokenizer().idToBytes(id); };
  page.chunk = 3;
  const std::string out = fx.dir + "/out";
  fs::create_directories(out + "/data");
  sae::test::writeBytes(out + "/data/features-00009.js", "stale");
  const auto files = sae::report::writeDashboard(data, rows, page, out);
  CHECK(files.data_files == 2);  // features 0-2, then 3
  CHECK(!fs::exists(out + "/data/features-00009.js"));
  const std::string html = readFile(out + "/index.html");
  CHECK(html.find("<title>hand &lt;SAE&gt;</title>") != std::string::npos);
  CHECK(html.find("&lt;b&gt;blocks.0.hook_resid_pre&lt;/b&gt;") != std::string::npos);
  CHECK(html.find("data-features=\"4\"") != std::string::npos);

  // The table's JSON: one row per feature [f, density, max, mean, source, tokens, chunk], and
  // no '<' inside the script element that holds it.
  const std::string table_text =
      between(html, "<script type=\"application/json\" id=\"sae-table-data\">", "</script>");
  CHECK(table_text.find('<') == std::string::npos);
  const json table = json::parse(table_text);
  REQUIRE(table.size() == 4);
  CHECK(table[1][0] == 1);
  CHECK(table[1][1].get<double>() == Approx(0.5));
  CHECK(table[1][4] == 1);                // b.txt
  CHECK(table[2][5] == "\xE2\x90\xA3<");  // " <", its blank shown
  CHECK(table[3][2].is_null());           // feature 3 never fired
  CHECK(table[3][6] == 1);

  // Feature 2's panel: its data file holds the contexts (token ids and activations), the token
  // texts, and the static HTML with the markup of the corpus escaped.
  const std::string chunk0 = readFile(out + "/data/features-00000.js");
  CHECK(chunk0.find('<') == std::string::npos);  // markup and corpus text alike are \u003c
  CHECK(chunk0.find("\\u003c") != std::string::npos);
  const json c0 = chunkJson(out + "/data/features-00000.js");
  const json& f2 = c0["features"]["2"];
  REQUIRE(f2["top"].size() == 1);
  const json& ctx = f2["top"][0];
  CHECK(ctx["row"] == fx.d.script_row);
  const std::int64_t x = ctx["x"];
  // Activations as [offset, value] pairs of the non-zero ones: here only the example's.
  CHECK(ctx["a"] == json::array({json::array({x, 3.0})}));
  CHECK(c0["tokens"][std::to_string(ctx["t"][std::size_t(x)].get<int>())] == " <");
  CHECK(f2["intervals"].size() == 4);
  const std::string panel = f2["html"];
  CHECK(panel.find("data-feature=\"2\"") != std::string::npos);
  CHECK(panel.find("<a href=\"#feature-0\">0</a>") != std::string::npos);  // nearest
  CHECK(panel.find("Interval 2.25 &ndash; 3: 1 firings (100%)") != std::string::npos);
  CHECK(countOf(panel, "<rect class=\"bar\"") == 6);
  const std::string dead = chunkJson(out + "/data/features-00001.js")["features"]["3"]["html"];
  CHECK(dead.find("never fired on the 60 rows") != std::string::npos);
}

TEST_CASE("dashboard input errors name the file and the problem", "[dashboard]") {
  const Fixture fx("errors");
  const auto loaded = sae::io::loadSae<float>(fx.sae);
  auto gatherWith = [&](const std::string& dump, auto select) {
    const auto rows = sae::report::readDumpRows(dump);
    const sae::io::ActivationFiles files(rows.shardsOf(""));
    return sae::report::gatherDashboard(loaded, files, rows, select, {});
  };
  // A width other than d_in.
  const std::string wide = fx.dir + "/wide";
  writeDump(wide, fx.d, 5);
  CHECK_THROWS_WITH(gatherWith(wide, allOf),
                    Catch::Contains("have 5 columns, but the SAE expects d_in = 4"));
  // Selections out of range or repeated.
  CHECK_THROWS_WITH(gatherWith(fx.dump,
                               [](const auto&) {
                                 return std::vector<Index>{1, 4};
                               }),
                    Catch::Contains("feature 4 is out of range: the SAE has 4 features"));
  CHECK_THROWS_WITH(gatherWith(fx.dump,
                               [](const auto&) {
                                 return std::vector<Index>{1, 1};
                               }),
                    Catch::Contains("feature 1 is selected twice"));
  // Row files: missing, short, a source index past the files.
  const std::string missing = fx.dir + "/missing";
  writeDump(missing, fx.d);
  fs::remove(missing + "/tokens.npy");
  CHECK_THROWS_WITH(sae::report::readDumpRows(missing), Catch::Contains(missing + "/tokens.npy"));
  const std::string short_dump = fx.dir + "/short";
  writeDump(short_dump, fx.d);
  sae::io::writeNpyInt32(short_dump + "/positions.npy", fx.d.positions.data(), kRows - 1);
  CHECK_THROWS_WITH(
      sae::report::readDumpRows(short_dump),
      Catch::Contains("positions.npy: 59 rows, but") && Catch::Contains("says the dump has 60"));
  const std::string bad_source = fx.dir + "/bad_source";
  writeDump(bad_source, fx.d);
  std::vector<std::int32_t> s = fx.d.sources;
  s[7] = 2;
  sae::io::writeNpyInt32(bad_source + "/sources.npy", s.data(), kRows);
  CHECK_THROWS_WITH(sae::report::readDumpRows(bad_source),
                    Catch::Contains("source index 2 at row 7 is outside [0, 1]"));
  CHECK_THROWS_WITH(sae::report::readDumpRows(fx.dir), Catch::Contains(fx.dir + "/dump.json"));
}

TEST_CASE("sae dashboard builds the folder and rejects bad input", "[dashboard][cli]") {
  const Fixture fx("cli");
  const std::string out = fx.dir + "/out";
  const auto r = runCliOk({"dashboard", "--sae", fx.sae, "--data", fx.dump, "--tokenizer",
                           lmDataPath("gpt2-tokenizer"), "--top-by", "density", "--n", "2",
                           "--quiet", "--out", out});
  const json summary = json::parse(r.out);
  CHECK(summary["features"] == 2);
  CHECK(summary["rows"] == kRows);
  const json table =
      json::parse(between(readFile(out + "/index.html"), "id=\"sae-table-data\">", "</script>"));
  REQUIRE(table.size() == 2);
  CHECK(table[0][0] == 1);  // the densest first
  CHECK(table[1][0] == 0);
  const std::string html = readFile(out + "/index.html");
  CHECK(html.find("<dd>" + std::string(kHook) + "</dd>") != std::string::npos);
  CHECK(html.find("<dt>L0</dt><dd>0.66667</dd>") != std::string::npos);  // 40 firings / 60 rows

  // --eval: the CE-loss score `sae eval --model` printed goes on the card; a JSON without any
  // of its keys is an error.
  const std::string eval = fx.dir + "/eval.json";
  sae::test::writeBytes(eval, R"({"ce_loss_score": 0.98765, "kl_div_score": 0.5, "l0": 3})");
  runCliOk(
      {"dashboard", "--sae", fx.sae, "--data", fx.dump, "--eval", eval, "--quiet", "--out", out});
  const std::string card = between(readFile(out + "/index.html"), "id=\"sae-card\">", "</dl>");
  CHECK(card.find("<dt>ce_loss_score (eval.json)</dt><dd>0.98765</dd>") != std::string::npos);
  CHECK(card.find("<dt>kl_div_score (eval.json)</dt><dd>0.5</dd>") != std::string::npos);
  sae::test::writeBytes(eval, R"({"rows": 3})");
  checkCliFails({"dashboard", "--sae", fx.sae, "--data", fx.dump, "--eval", eval, "--out", out},
                eval + ": --eval expects the JSON `sae eval` prints");

  // The Neuronpedia export: SAEDashboard's batch layout, feature 1's top list and intervals.
  const std::string np = fx.dir + "/np";
  const auto r2 = runCliOk({"dashboard", "--sae", fx.sae, "--data", fx.dump, "--tokenizer",
                            lmDataPath("gpt2-tokenizer"), "--features", "1,2", "--neuronpedia", np,
                            "--np-model-id", "hand", "--contexts", "3", "--quiet", "--out", out});
  CHECK(json::parse(r2.out)["neuronpedia_files"] == 1);
  const json batch = json::parse(readFile(np + "/batch-0.json"));
  CHECK(batch["model_id"] == "hand");
  CHECK(batch["layer"] == 0);
  CHECK(batch["sae_set"] == "sae");
  REQUIRE(batch["features"].size() == 2);
  const json& n1 = batch["features"][0];
  CHECK(n1["feature_index"] == 1);
  CHECK(n1["frac_nonzero"].get<double>() == Approx(0.5));
  CHECK(n1["pos_str"].empty());  // no --model: no logits
  CHECK(n1["correlated_features_indices"].empty());
  // 3 top contexts, then 5 samples of the top interval (the other 9 intervals are empty).
  REQUIRE(n1["activations"].size() == 8);
  const json& a0 = n1["activations"][0];
  CHECK(a0["bin_min"] == -1);
  CHECK(a0["bin_max"] == 0.5);
  CHECK(a0["bin_contains"] == -1);
  CHECK(a0["values"].size() == a0["tokens"].size());
  const json& a3 = n1["activations"][3];
  CHECK(a3["bin_min"] == 0.45);
  CHECK(a3["bin_max"] == 0.5);
  CHECK(a3["bin_contains"] == 1.0);
  std::int64_t heights = 0;
  for (const auto& h : n1["freq_hist_data_bar_heights"]) heights += h.get<std::int64_t>();
  CHECK(heights == 30);
  const json& n2 = batch["features"][1];
  CHECK(n2["activations"][0]["tokens"].dump().find("\" <\"") != std::string::npos);

  const std::string wide = fx.dir + "/wide";
  writeDump(wide, fx.d, 6);
  checkCliFails({"dashboard", "--sae", fx.sae, "--data", wide, "--out", out},
                "have 6 columns, but the SAE in " + fx.sae + " expects d_in = 4");
  checkCliFails(
      {"dashboard", "--sae", fx.sae, "--data", fx.dump, "--features", "1,9", "--out", out},
      "--features: feature 9 is out of range: the SAE in " + fx.sae + " has 4 features");
  checkCliFails(
      {"dashboard", "--sae", fx.sae, "--data", fx.dump, "--features", "1,,2", "--out", out},
      "--features 1,,2: empty item");
  checkCliFails(
      {"dashboard", "--sae", fx.sae, "--data", fx.dump, "--features", "3-1", "--out", out},
      "range 3-1 is empty");
  const std::string missing = fx.dir + "/missing";
  writeDump(missing, fx.d);
  fs::remove(missing + "/tokens.npy");
  checkCliFails({"dashboard", "--sae", fx.sae, "--data", missing, "--out", out},
                missing + "/tokens.npy");
  std::vector<std::int32_t> big = fx.d.tokens;
  big[3] = 60000;
  const std::string oov = fx.dir + "/oov";
  writeDump(oov, fx.d);
  sae::io::writeNpyInt32(oov + "/tokens.npy", big.data(), kRows);
  checkCliFails({"dashboard", "--sae", fx.sae, "--data", oov, "--tokenizer",
                 lmDataPath("gpt2-tokenizer"), "--out", out},
                "token id 60000 at row 3 is outside the tokenizer's vocabulary");
  checkCliFails({"dashboard", "--sae", fx.sae, "--data", fx.dump, "--out", "/proc/nope"},
                "/proc/nope/data");
}

#ifdef SAE_CHROMIUM_PATH
namespace {

// Runs `driver` (a script appended to a copy of `index`, in its folder) in chromium until the
// page is idle for the virtual time budget; returns the DOM.
std::string driven(const std::string& index, const std::string& driver, std::string& log) {
  const std::string dir = fs::path(index).parent_path().string();
  std::string html = readFile(index);
  const std::size_t at = html.rfind("</body>");
  REQUIRE(at != std::string::npos);
  sae::test::writeBytes(dir + "/driver.js", driver);
  html.insert(at, "<script src=\"driver.js\"></script>");
  const std::string copy = dir + "/index-driven.html";
  sae::test::writeBytes(copy, html);
  return sae::test::chromium(copy, "--virtual-time-budget=10000 --dump-dom", log);
}

// The ids of the table's rows, in order, as "a,b,c".
std::string rowOrder(const std::string& dom) {
  const std::string body = between(dom, "<tbody>", "</tbody>");
  std::string out;
  const std::regex tr("<tr data-feature=\"(\\d+)\"");
  for (auto it = std::sregex_iterator(body.begin(), body.end(), tr); it != std::sregex_iterator();
       ++it)
    out += (out.empty() ? "" : ",") + (*it)[1].str();
  return out;
}

// Clicks the header `key` (`clicks` times), records the order, then opens feature `f` by its
// link and marks the body when its panel has its contexts.
std::string driverScript(int key, int clicks, Index f) {
  return "window.addEventListener('load', function () {\n"
         "  var th = document.querySelector('th[data-key=\"" +
         std::to_string(key) +
         "\"]');\n"
         "  for (var i = 0; i < " +
         std::to_string(clicks) +
         "; i++) th.click();\n"
         "  var order = [];\n"
         "  document.querySelectorAll('#features tbody tr').forEach(function (tr) {\n"
         "    order.push(tr.getAttribute('data-feature')); });\n"
         "  document.body.setAttribute('data-sorted', order.join(','));\n"
         "  document.querySelector('#features a[href=\"#feature-" +
         std::to_string(f) +
         "\"]').click();\n"
         "  (function wait() {\n"
         "    if (document.querySelector('section.feature[data-feature=\"" +
         std::to_string(f) +
         "\"] .ctx')) document.body.setAttribute('data-driver', 'done');\n"
         "    else setTimeout(wait, 20);\n"
         "  })();\n"
         "});\n";
}

}  // namespace

TEST_CASE("the dashboard in headless chromium: no errors, sorting, a feature opened",
          "[dashboard][browser]") {
  const Fixture fx("browser");
  const std::string out = fx.dir + "/out";
  runCliOk({"dashboard", "--sae", fx.sae, "--data", fx.dump, "--tokenizer",
            lmDataPath("gpt2-tokenizer"), "--before", "3", "--after", "2", "--quiet", "--out",
            out});
  std::string log;
  const std::string dom = sae::test::chromium(out + "/index.html", "--dump-dom", log);
  INFO("chromium stderr: " << log);
  CHECK(log.find(":CONSOLE") == std::string::npos);
  // Densest first by default: 1 (30 rows), 0 (9), 2 (1), 3 (never).
  CHECK(rowOrder(dom) == "1,0,2,3");
  CHECK(dom.find("1\xE2\x80\x93"
                 "4 of 4 features") != std::string::npos);
  CHECK(countOf(between(dom, "id=\"density-histogram\"", "</svg>"), "<rect class=\"bar\"") == 21);

  // Sort by max activation (descending, never-fired last), then open feature 2.
  const std::string d1 = driven(out + "/index.html", driverScript(2, 1, 2), log);
  CHECK(log.find(":CONSOLE") == std::string::npos);
  CHECK(d1.find("data-sorted=\"0,2,1,3\"") != std::string::npos);
  REQUIRE(d1.find("data-driver=\"done\"") != std::string::npos);
  const std::string panel =
      between(d1, "<section class=\"feature\" data-feature=\"2\">", "</section>");
  REQUIRE(!panel.empty());
  // Its one top context: the highlighted token is the corpus's "<", as text, and the corpus's
  // <script> never became an element.
  const std::string top = between(panel, "data-group=\"top\">", "</div></div>");
  std::smatch m;
  REQUIRE(std::regex_search(top, m, std::regex("<span class=\"tok on max\"[^>]*>([^<]*)</span>")));
  CHECK(m[1].str() == " &lt;");
  CHECK(countOf(top, "class=\"tok on") == 1);
  const Index at = fx.d.script_row % kWindow;  // up to 3 tokens before, 2 after, in its window
  CHECK(countOf(top, "class=\"tok") ==
        std::size_t(std::min<Index>(3, at) + 1 + std::min<Index>(2, kWindow - 1 - at)));
  CHECK(top.find("script") != std::string::npos);
  CHECK(d1.find("<script>alert") == std::string::npos);
  // Sorting ascending (a second click): never-fired first.
  const std::string d2 = driven(out + "/index.html", driverScript(2, 2, 0), log);
  CHECK(d2.find("data-sorted=\"3,1,2,0\"") != std::string::npos);
  CHECK(d2.find("data-driver=\"done\"") != std::string::npos);
}

TEST_CASE("the reference SAE's dashboard on the reference model, with screenshots",
          "[dashboard][browser]") {
  const std::string model = std::string(SAE_TEST_DATA_DIR) + "/../../models/ref-gpt2";
  const std::string dir = scratchDir("dashboard", "reference");
  const std::string dump = dir + "/dump", out = dir + "/out";
  std::vector<std::string> args = {
      "dump",    "--model", model, "--hook", "blocks.2.hook_resid_pre", "--context", "128",
      "--quiet", "--out",   dump,  "--text"};
  for (const char* s : {"man-en", "man-fr", "man-de", "python"})
    args.push_back(model + "/heldout/" + s + ".txt");
  runCliOk(args);
  const std::string sae = lmDataPath("ref-sae");
  runCliOk({"dashboard", "--sae", sae, "--data", dump, "--model", model, "--quiet", "--out", out});

  // Feature 388 (French, the README of ref-sae): man-fr.txt is its top source, and its logit
  // panel lists the top tokens of its direct logit effect computed here.
  const json c = chunkJson(out + "/data/features-00006.js");
  const std::string panel = c["features"]["388"]["html"];
  const std::string sources = between(panel, "<table class=\"sources\"><tbody><tr><td>", "</td>");
  CHECK(sources == "man-fr.txt");
  const auto gpt2 = sae::lm::Gpt2Model::load(model);
  const sae::Sae<float> s = sae::Sae<float>::load(sae);
  const auto units = sae::lm::decoderUnits(s);
  const auto effect =
      sae::lm::directLogitEffect(gpt2, sae::lm::decoderRowInHookUnits(s, 388, units));
  const auto best = sae::lm::topTokens(effect, 1, true)[0];
  const auto tok = sae::lm::Gpt2Tokenizer::fromDirectory(model);
  const std::string first_logit =
      between(panel,
              "<table class=\"logits top\"><thead><tr><th>promoted</th><th>effect</th></tr>"
              "</thead><tbody><tr><td class=\"t\">",
              "</td>");
  CHECK(first_logit == sae::report::escapeHtml(sae::report::detail::visibleToken(
                           sae::report::validUtf8(tok.idToBytes(best.token)))));

  std::string log;
  const std::string shot = dir + "/index.png";
  (void)sae::test::chromium(out + "/index.html", "--screenshot='" + shot + "'", log, "1280,1300");
  CHECK(log.find(":CONSOLE") == std::string::npos);
  sae::test::keepScreenshot(shot, "dashboard.png");
  // The feature page: the page opened at #feature-388 by a copy that sets the hash.
  std::string html = readFile(out + "/index.html");
  html.insert(html.rfind("</body>"), "<script>location.hash = '#feature-388';</script>");
  sae::test::writeBytes(out + "/feature-388.html", html);
  const std::string fshot = dir + "/feature.png";
  (void)sae::test::chromium(out + "/feature-388.html",
                            "--virtual-time-budget=10000 --screenshot='" + fshot + "'", log,
                            "1280,1500");
  CHECK(log.find(":CONSOLE") == std::string::npos);
  sae::test::keepScreenshot(fshot, "dashboard-feature.png");
}
#endif

}  // namespace sae_test_dashboard
